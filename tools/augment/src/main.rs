//! `augment`: two-view augmentation with the paper's recipes; writes views (.npy) and preview sheets.
//!
//! Planned in issue 3; until then it only explains itself and exits 1.

use std::process::ExitCode;

use lewel::stub::Planned;

const PLANNED: Planned = Planned {
    name: "augment",
    about: "Two-view augmentation with the paper's recipes; writes views (.npy) and preview sheets.",
    long_about: "Use augment to look at what a recipe does to your images (a contact sheet), or to pre-compute view pairs that `pretrain --views` trains on in file order.",
    example: "  augment photos/ --recipe lewel-b --size 224 --epochs 1 --out views.npy --preview grid.png
  pretrain --views views.npy --out run1",
    issue: 3,
};

fn main() -> ExitCode {
    PLANNED.main()
}
