//! `pretrain`: self-supervised pre-training: LEWEL_B (official), LEWEL_M, BYOL and MoCo v2.
//!
//! Planned in issue 4; until then it only explains itself and exits 1.

use std::process::ExitCode;

use lewel::stub::Planned;

const PLANNED: Planned = Planned {
    name: "pretrain",
    about: "Self-supervised pre-training: LEWEL_B (official), LEWEL_M, BYOL and MoCo v2.",
    long_about: "Use pretrain to learn a backbone from unlabeled images. It writes a run folder with config.json, events.jsonl and atomic checkpoints, and resumes exactly after an interruption.",
    example: "  pretrain images/ --preset small-lewelb --epochs 20 --out run1 | jq -c 'select(.event==\"epoch\")'
  embed --ckpt run1/ckpt/latest --data val/ --out feats.npy",
    issue: 4,
};

fn main() -> ExitCode {
    PLANNED.main()
}
