//! `finetune-semi`: semi-supervised fine-tuning on 1% / 10% label subsets or stratified fractions.
//!
//! Planned in issue 7; until then it only explains itself and exits 1.

use std::process::ExitCode;

use lewel::stub::Planned;

const PLANNED: Planned = Planned {
    name: "finetune-semi",
    about: "Semi-supervised fine-tuning on 1% / 10% label subsets or stratified fractions.",
    long_about: "Use finetune-semi to fine-tune the whole network on a small labelled subset, as in the paper's semi-supervised evaluation.",
    example: "  finetune-semi --ckpt run1/ckpt/latest --train-data train/ --val-data val/ --preset semi-1pct --out semi1",
    issue: 7,
};

fn main() -> ExitCode {
    PLANNED.main()
}
