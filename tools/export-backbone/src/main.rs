//! `export-backbone`: backbone weights for torchvision, timm and detectron2; import of official LEWEL checkpoints.
//!
//! Parses the flags, builds a [`lewel::export::ExportConfig`], runs [`lewel::export::run`] and maps the result
//! to an exit code. The readers and writers (pickle, PyTorch zip and legacy files, detectron2 `.pkl`) and their
//! tests live in `lewel::export`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use lewel::events::{EventWriter, OnClosed};
use lewel::export::{self, ExportConfig, Format, Source, TOOL};

const LONG_ABOUT: &str = "\
Take a pre-trained backbone to another framework, or bring released LEWEL weights in.

Use export-backbone after `pretrain` to hand the ONLINE backbone (the network LEWEL evaluates) to \
torchvision, timm or detectron2 for linear evaluation, fine-tuning or detection; and use it on an \
official LEWEL checkpoint (checkpoint_XXXX.pth.tar from the released code) or a torchvision .pth to \
run embed, linear-probe, knn-probe and viz-maps on those weights, or to continue training from them \
with `pretrain --init`. Everything is read and written in Rust: no Python at run time.

Formats (--format), each written atomically:
  safetensors  the online backbone in torchvision names (conv1.weight, bn1.*, layer1.0.conv1.weight,
               layerX.0.downsample.{0,1}.*, num_batches_tracked included). Load it with
               safetensors.torch.load_file; torchvision's resnet.load_state_dict(sd, strict=False)
               then misses only fc.weight and fc.bias. timm's ResNets use the same names
               (create them with num_classes=0 to leave fc out).
  pth          the same tensors as a PyTorch zip checkpoint holding a plain dict:
               torch.load(f, weights_only=True).
  detectron2   a .pkl of numpy arrays in detectron2's names (stem.conv1.norm.*, res2..res5,
               shortcut, shortcut.norm) with __author__ and matching_heuristics: True, as MoCo's
               and InfoMin's converters write it. Use RESNETS.STRIDE_IN_1X1 False and RGB input.
  lewel        the whole model (online, target, predictors) as our checkpoint: OUT.safetensors plus
               the OUT.json sidecar, or, when OUT is not a .safetensors name, a folder OUT/ with
               step-N.safetensors and latest. Every tool's --ckpt opens it, and
               `pretrain --init OUT.safetensors` continues training from it (give pretrain the model
               flags shown in the start event).

Inputs (--ckpt, --from auto decides from the content): our checkpoint (a .safetensors with its .json \
sidecar, a `latest` pointer, a ckpt/ or run folder; sha256 checked); an official LEWEL checkpoint \
(zip or legacy PyTorch file; its state_dict's module.online_net/target_net/predictor* keys are read, \
the epoch, arch, best_acc1 numpy scalar, optimizer and scaler entries are skipped with a warn event); \
a torchvision-style ResNet state dict (.pth zip or legacy, e.g. the official extract_backbone.py \
output; fc.* is dropped); a bare .safetensors in either naming. The architecture is inferred from the \
shapes: ResNet-18/34/50, ImageNet (7x7) or CIFAR (3x3) stem, width from conv1, K and hidden width from \
the neck, method lewel-b when neck.proj_obj is there (else byol), EMA mode from the official `arch` \
(LEWELB_EMAN: eman). G (groups) is not recorded in official files: 4 unless --groups. A bare backbone \
exported as --format lewel goes into both online_net and target_net; the necks and predictors are \
freshly initialised from --seed (a warn event says so).

Output (stdout, JSON lines): `start` (input kind and container, the resolved model configuration), \
`warn` for skipped content, `end` (out, format, tensors, bytes, sha256, verified). Every file is \
written atomically. A file that does not fit lists its missing, unexpected and mis-shaped keys.";

const EXAMPLE: &str = "  export-backbone --ckpt run1/ckpt/latest --format pth --out r50.pth --verify
  python -c 'import torch, torchvision; m = torchvision.models.resnet50();
             print(m.load_state_dict(torch.load(\"r50.pth\", weights_only=True), strict=False))'
  export-backbone --ckpt checkpoint_0199.pth.tar --from official --format lewel \\
    --out lewel200.safetensors && embed --ckpt lewel200.safetensors --data val/ --out val.npy";

/// Flags of `export-backbone`.
#[derive(Debug, Parser)]
#[command(name = TOOL, version, about = "Backbone weights for torchvision, timm and detectron2; import of official LEWEL checkpoints.",
          long_about = LONG_ABOUT, after_help = lewel::cli::help_tail(EXAMPLE))]
struct Args {
    /// The input: our checkpoint (file, `latest`, ckpt/ or run folder), an official LEWEL
    /// checkpoint_XXXX.pth.tar, or a torchvision-style .pth / .safetensors.
    #[arg(long, value_name = "CKPT")]
    ckpt: PathBuf,

    /// What the input is: auto (decide from the content), official, torchvision or lewel (ours, with
    /// its sidecar). A named kind makes any other input an error.
    #[arg(long = "from", value_enum, default_value = "auto", value_name = "KIND")]
    from: FromArg,

    /// The output format: safetensors, pth, detectron2 (the online backbone) or lewel (the whole model).
    #[arg(long, value_enum, value_name = "FORMAT")]
    format: FormatArg,

    /// The output file (for --format lewel: NAME.safetensors, or a folder).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,

    /// Read the written file back (in Rust) and compare every tensor bit for bit; `end` gets
    /// `verified: true`, and a difference is an error (exit 1).
    #[arg(long)]
    verify: bool,

    /// G, channel groups of the aligned branch, for inputs that do not record it (official
    /// checkpoints, bare files) [default: the sidecar's value, else the official 4].
    #[arg(long, value_name = "G")]
    groups: Option<i64>,

    /// K of the fresh heads when the input is a bare backbone and --format is lewel [default: the
    /// official 256]. Set it to your pretrain flags (small-lewelb: 128).
    #[arg(long, value_name = "K")]
    proj_dim: Option<i64>,

    /// Hidden width of the fresh heads for a bare backbone [default: the official 4096; small-lewelb: 512].
    #[arg(long, value_name = "N")]
    hidden_dim: Option<i64>,

    /// Seed of the fresh heads of a bare backbone (--format lewel); nothing else is random.
    #[arg(long, default_value_t = lewel::cli::DEFAULT_SEED, value_name = "N")]
    seed: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FromArg {
    Auto,
    Official,
    Torchvision,
    Lewel,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Safetensors,
    Pth,
    Detectron2,
    Lewel,
}

impl Args {
    fn config(self) -> ExportConfig {
        ExportConfig {
            ckpt: self.ckpt,
            from: match self.from {
                FromArg::Auto => Source::Auto,
                FromArg::Official => Source::Official,
                FromArg::Torchvision => Source::Torchvision,
                FromArg::Lewel => Source::Lewel,
            },
            format: match self.format {
                FormatArg::Safetensors => Format::Safetensors,
                FormatArg::Pth => Format::Pth,
                FormatArg::Detectron2 => Format::Detectron2,
                FormatArg::Lewel => Format::Lewel,
            },
            out: self.out,
            verify: self.verify,
            groups: self.groups,
            proj_dim: self.proj_dim,
            hidden_dim: self.hidden_dim,
            seed: self.seed,
        }
    }
}

fn main() -> ExitCode {
    lewel::signals::ignore_file_size_signal();
    let cfg = Args::parse().config();
    let mut sink = EventWriter::stdout(TOOL, OnClosed::Fail);
    lewel::exit::finish(TOOL, export::run(&cfg, &mut sink).map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_valid() {
        Args::command().debug_assert();
    }
}
