//! `embed`: backbone features (global average pool, eval-mode BN) of a data set, as float32 `.npy`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use lewel::cli::CommonArgs;
use lewel::data::{DataSpec, Recipe};
use lewel::embed::{self, EmbedConfig};
use lewel::events::{EventWriter, OnClosed};

const EXAMPLE: &str = "  embed --ckpt run1/ckpt/latest --data train/ --out train.npy
  embed --ckpt run1/ckpt/latest --data val/ --out val.npy
  knn-probe --train-features train.npy --val-features val.npy | jq -c 'select(.event==\"end\")'";

/// Turn a checkpoint and a data set into a feature matrix, for the probes, retrieval or your own analysis.
///
/// Writes float32 [N, C] features to --out: row i is item i of DATA, the global average pool of the
/// online backbone with BatchNorm in eval mode (running statistics), after the evaluation transform
/// (resize the shorter side, centre crop: 256/224 for ImageNet-sized models; the training recipe's
/// for our checkpoints, 36/32 for CIFAR-stem models). When DATA has labels (class folders, list files,
/// IDX label files) they go to FEATS.labels.npy (int64 [N]), where the probes look for them.
///
/// --ckpt takes one of our checkpoints (a file, a `latest` pointer or a run folder), an exported
/// backbone, a torchvision ResNet state dict, or an official LEWEL checkpoint (checkpoint_XXXX.pth.tar).
/// An unreadable image keeps its row (the features of a blank image) and is reported as a `warn`
/// event; --strict makes it fatal.
#[derive(Debug, Parser)]
#[command(name = "embed", version, after_help = lewel::cli::help_tail(EXAMPLE))]
struct Args {
    /// The checkpoint: ours (file, `latest`, run folder), an exported backbone, or an official one.
    #[arg(long, value_name = "CKPT")]
    ckpt: PathBuf,
    /// The images (DATA): an image folder, a list file, IDX files (.gz or raw), a .npy array, or tar shards
    /// (a quoted brace pattern 'shard-{000000..000099}.tar', a list of .tar files, a folder of them; labels from .cls).
    #[arg(long, value_name = "DATA")]
    data: PathBuf,
    /// For list files: the folder their paths are relative to.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Where to write the float32 [N, C] features (.npy); labels go to FEATS.labels.npy.
    #[arg(long, value_name = "FEATS.npy")]
    out: PathBuf,
    /// The recipe whose evaluation transform to use (default: the checkpoint's training recipe, else
    /// lewel-b, or lewel-b-small for CIFAR-stem models).
    #[arg(long, value_name = "NAME")]
    recipe: Option<String>,
    /// Side of the centre crop in pixels; the resize keeps the recipe's ratio (224 -> 256).
    #[arg(long, value_name = "PX")]
    size: Option<u32>,
    /// Shorter side of the eval transform's resize in pixels (the recipe's eval_resize), applied after
    /// --size.
    #[arg(long, value_name = "PX")]
    resize: Option<u32>,
    /// Side of the eval transform's centre crop in pixels (the recipe's eval_crop), applied after
    /// --size.
    #[arg(long, value_name = "PX")]
    crop: Option<u32>,
    /// Override one recipe parameter, KEY=VALUE (eval_resize=, eval_crop=, ...); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256, value_name = "N")]
    batch_size: usize,
    /// Data worker threads (0: one per core). The output does not depend on it.
    #[arg(long, default_value_t = 0, value_name = "T")]
    threads: usize,
    /// Stop at the first unreadable image (default: keep its row, report a `warn` event).
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    common: CommonArgs,
}

fn run(args: Args) -> Result<()> {
    let device = args.common.device.resolve()?;
    let recipe = args.recipe.as_deref().map(Recipe::preset).transpose()?;
    let mut sets = Vec::new();
    if let Some(px) = args.size {
        sets.push(format!("size={px}"));
    }
    if let Some(px) = args.resize {
        sets.push(format!("eval_resize={px}"));
    }
    if let Some(px) = args.crop {
        sets.push(format!("eval_crop={px}"));
    }
    sets.extend(args.set.iter().cloned());
    let cfg = EmbedConfig {
        ckpt: args.ckpt,
        data: DataSpec { path: args.data, root: args.root, strict: args.strict },
        recipe,
        sets,
        out: args.out,
        batch_size: args.batch_size,
        threads: args.threads,
        device,
    };
    let bar = lewel::cli::progress_bar(
        args.common.quiet,
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} images, {per_sec}, ETA {eta}",
    );
    let mut sink = EventWriter::stdout("embed", OnClosed::Fail);
    let result = embed::run(&cfg, &mut sink, &mut |done, all| {
        bar.set_length(all as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    result.map(|_| ())
}

fn main() -> ExitCode {
    lewel::signals::ignore_file_size_signal();
    lewel::exit::finish("embed", run(Args::parse()))
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
