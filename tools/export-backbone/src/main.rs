//! `export-backbone`: backbone weights for torchvision, timm and detectron2; import of official LEWEL checkpoints.
//!
//! Planned in issue 8; until then it only explains itself and exits 1.

use std::process::ExitCode;

use lewel::stub::Planned;

const PLANNED: Planned = Planned {
    name: "export-backbone",
    about: "Backbone weights for torchvision, timm and detectron2; import of official LEWEL checkpoints.",
    long_about: "Use export-backbone to take a pre-trained backbone to another framework, or to bring the released LEWEL weights in.",
    example: "  export-backbone --ckpt run1/ckpt/latest --format pth --out r50.pth && python -c 'import torch; torch.load(\"r50.pth\")'",
    issue: 8,
};

fn main() -> ExitCode {
    PLANNED.main()
}
