//! `knn-probe`: weighted kNN evaluation of features, sweeping k and the temperature.
//!
//! Planned in issue 6; until then it only explains itself and exits 1.

use std::process::ExitCode;

use lewel::stub::Planned;

const PLANNED: Planned = Planned {
    name: "knn-probe",
    about: "Weighted kNN evaluation of features, sweeping k and the temperature.",
    long_about:
        "Use knn-probe for a fast, training-free check of a backbone; cron jobs run it on every new checkpoint.",
    example: "  knn-probe --train-features train.npy --val-features val.npy | jq .top1",
    issue: 6,
};

fn main() -> ExitCode {
    PLANNED.main()
}
