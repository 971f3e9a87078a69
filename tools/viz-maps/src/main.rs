//! `viz-maps`: draws the learned alignment maps over images and views.
//!
//! Planned in issue 9; until then it only explains itself and exits 1.

use std::process::ExitCode;

use lewel::stub::Planned;

const PLANNED: Planned = Planned {
    name: "viz-maps",
    about: "Draws the learned alignment maps over images and views.",
    long_about: "Use viz-maps to see where the model learns: which image regions each alignment map picks.",
    example: "  viz-maps --ckpt run1/ckpt/latest --data photos/ --maps top:8 --grid --out maps/",
    issue: 9,
};

fn main() -> ExitCode {
    PLANNED.main()
}
