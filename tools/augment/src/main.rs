//! `augment`: two-view augmentation with the paper's recipes; writes views (.npy) and preview sheets.
//!
//! Parses flags into a [`lewel::data::augment::AugmentConfig`], runs it, maps the result to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lewel::cli::CommonArgs;
use lewel::data::augment::{run, AugmentConfig, KeepGoing};
use lewel::data::{DataSpec, Recipe};
use lewel::events::{EventWriter, OnClosed};

const EXAMPLE: &str = "  augment photos/ --recipe lewel-b --epochs 1 --out views.npy --preview grid.png
  pretrain --views views.npy --out run1";

/// Two-view augmentation with the paper's recipes; writes views (.npy) and preview sheets.
///
/// Use augment to look at what a recipe does to your images (--preview, a contact sheet of original,
/// view 1 and view 2 per row), or to pre-compute normalised view pairs that `pretrain --views` trains on
/// in file order. The same code produces the views inside `pretrain`, so the sheet shows what training
/// sees. stdout gets JSON lines (a `start` event with the resolved recipe, a `warn` event per
/// unreadable file, an `end` event with images_per_s); the progress bar goes to stderr.
#[derive(Debug, Parser)]
#[command(name = "augment", version, after_help = lewel::cli::help_tail(EXAMPLE))]
struct Args {
    /// The images: a folder (class sub-folders or flat), a list file (`<label> <path>` lines, or bare
    /// SimCLR names with --root), an MNIST IDX file (`*-images-idx3-ubyte[.gz]`) or a uint8 .npy.
    #[arg(value_name = "DATA")]
    data: PathBuf,

    /// For list files: the folder the paths are relative to (default: the list's folder). Required
    /// for bare names such as SimCLR's 1percent.txt: the folder holding the class folders.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,

    /// The recipe: lewel-b (official LEWEL_B), byol, mocov2 (LEWEL_M), or their -small variants for
    /// 32 px data (CIFAR, MNIST: blur off).
    #[arg(long, default_value = "lewel-b", value_name = "NAME")]
    recipe: String,

    /// Override one recipe parameter, KEY=VALUE; repeatable. Per-view keys take a 1 or 2 suffix for
    /// one view (blur_p2=0.0), none for both. Keys: size, eval_resize, eval_crop, mean, std, crop_scale,
    /// crop_ratio, flip_p, jitter_p, jitter=b,c,s,h, brightness, contrast, saturation, hue, grey_p,
    /// blur_p, blur_sigma=min,max, solarize_p.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,

    /// Side of the square views in pixels (default: the recipe's, 224 or 32). Same as --set size=PX.
    #[arg(long, value_name = "PX")]
    size: Option<u32>,

    /// Passes over the data; each epoch has its own order and views. Output rows = images x epochs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    epochs: u64,

    /// Worker threads (0: one per core). The output does not depend on it.
    #[arg(long, default_value_t = 0, value_name = "T")]
    threads: usize,

    /// The views file: float32 [N, 2, 3, S, S], normalised (ImageNet mean/std), plus FILE.npy.json
    /// (recipe, seed, data fingerprint). Must end in .npy. Above 2 GiB it is sharded automatically.
    #[arg(long, value_name = "FILE.npy")]
    out: Option<PathBuf>,

    /// Write the views as shards of this many rows (FILE.00000.npy, ...) with a FILE.npy.manifest.jsonl,
    /// instead of one file. Default: one file up to 2 GiB, shards of about 2 GiB above.
    #[arg(long, value_name = "ROWS")]
    shard_size: Option<usize>,

    /// Write a contact sheet PNG: one row per image of epoch 0 (original, view 1, view 2).
    #[arg(long, value_name = "FILE.png")]
    preview: Option<PathBuf>,

    /// Rows of the contact sheet.
    #[arg(long, default_value_t = 8, value_name = "N")]
    preview_rows: usize,

    /// Stop with exit 1 at the first unreadable image instead of skipping it (default: skip, report a
    /// `warn` event, and use the next image of the epoch in its place). Unreadable includes a truncated
    /// file (an interrupted download: a JPEG without its end-of-image marker, a PNG cut before IEND, a WebP
    /// shorter than its RIFF size; the reason says "truncated"); bytes after a file's end (after a JPEG's
    /// EOI) are accepted and ignored, as PIL does.
    #[arg(long)]
    strict: bool,

    /// Make every view but write nothing: measures throughput (images_per_s in the end event) or
    /// checks that every file of a data set decodes (a warn event per bad file) without the output.
    #[arg(long, conflicts_with_all = ["out", "preview", "shard_size"])]
    dry_run: bool,

    #[command(flatten)]
    common: CommonArgs,
}

fn config(args: Args) -> anyhow::Result<AugmentConfig> {
    let mut recipe = Recipe::preset(&args.recipe)?;
    if let Some(px) = args.size {
        recipe.set(&format!("size={px}"))?;
    }
    for s in &args.set {
        recipe.set(s)?;
    }
    Ok(AugmentConfig {
        data: DataSpec { path: args.data, root: args.root, strict: args.strict },
        recipe,
        epochs: args.epochs,
        seed: args.common.seed,
        threads: args.threads,
        batch_size: 32,
        out: args.out,
        shard_size: args.shard_size,
        preview: args.preview,
        preview_rows: args.preview_rows,
        strict: args.strict,
        dry_run: args.dry_run,
        progress: !args.common.quiet,
    })
}

fn main() -> ExitCode {
    lewel::signals::ignore_file_size_signal();
    let args = Args::parse();
    let mut sink = KeepGoing::new(EventWriter::stdout("augment", OnClosed::Fail));
    let result = config(args).and_then(|cfg| run(&cfg, &mut sink).map(|_| ()));
    lewel::exit::finish("augment", result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn args_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn flags_build_the_config() {
        let args = Args::parse_from([
            "augment",
            "d",
            "--recipe",
            "mocov2",
            "--size",
            "64",
            "--set",
            "blur_p2=0",
            "--out",
            "v.npy",
        ]);
        let cfg = config(args).unwrap();
        assert_eq!((cfg.recipe.size, cfg.recipe.view2.blur_p, cfg.recipe.view1.blur_p), (64, 0.0, 0.5));
        let args = Args::parse_from(["augment", "d", "--set", "nope=1"]);
        assert!(config(args).is_err());
    }
}
