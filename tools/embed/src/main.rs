//! `embed`: backbone features (global average pool, eval-mode BN) of a data set, as float32 .npy.
//!
//! Planned in issue 6; until then it only explains itself and exits 1.

use std::process::ExitCode;

use lewel::stub::Planned;

const PLANNED: Planned = Planned {
    name: "embed",
    about: "Backbone features (global average pool, eval-mode BN) of a data set, as float32 .npy.",
    long_about: "Use embed to turn a checkpoint and a data set into a feature matrix for probes, retrieval or your own analysis.",
    example: "  embed --ckpt run1/ckpt/latest --data val/ --out val.npy && knn-probe --train-features train.npy --val-features val.npy",
    issue: 6,
};

fn main() -> ExitCode {
    PLANNED.main()
}
