//! `linear-probe`: linear classifier on frozen features, with the paper's protocols.
//!
//! Planned in issue 6; until then it only explains itself and exits 1.

use std::process::ExitCode;

use lewel::stub::Planned;

const PLANNED: Planned = Planned {
    name: "linear-probe",
    about: "Linear classifier on frozen features, with the paper's protocols.",
    long_about:
        "Use linear-probe to measure how linearly separable a backbone's features are (the paper's main evaluation).",
    example: "  linear-probe --train-features train.npy --val-features val.npy --preset lewel-b --out probe.json",
    issue: 6,
};

fn main() -> ExitCode {
    PLANNED.main()
}
