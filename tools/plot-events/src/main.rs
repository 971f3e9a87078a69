//! `plot-events`: training curves from events.jsonl files, as a PNG or SVG picture.
//!
//! Planned in issue 9; until then it only explains itself and exits 1.

use std::process::ExitCode;

use lewel::stub::Planned;

const PLANNED: Planned = Planned {
    name: "plot-events",
    about: "Training curves from events.jsonl files, as a PNG or SVG picture.",
    long_about: "Use plot-events to see how one or several runs went (loss, lr, EMA momentum, kNN accuracy, collapse).",
    example: "  plot-events lewel/events.jsonl byol/events.jsonl --out curves.png",
    issue: 9,
};

fn main() -> ExitCode {
    PLANNED.main()
}
