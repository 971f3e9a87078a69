//! `knn-probe`: weighted kNN evaluation of cached features, sweeping k and the temperature.
//!
//! Parses the flags, builds a [`lewel::eval::knn::KnnConfig`], runs [`lewel::eval::knn::run`] and maps
//! the result to an exit code. All the work and its tests live in `lewel::eval`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use indicatif::ProgressBar;
use lewel::cli::CommonArgs;
use lewel::eval::jobs;
use lewel::eval::knn::{self, KnnConfig};
use lewel::events::{EventWriter, OnClosed};

const TOOL: &str = "knn-probe";

const LONG_ABOUT: &str = "\
Weighted k-nearest-neighbour evaluation of frozen features (the InstDisc / DINO protocol).

Use knn-probe for a fast, training-free check of a backbone: it needs no hyper-parameter search and \
takes seconds, so cron jobs and sweeps run it on every new checkpoint; use linear-probe for the \
paper's headline number. Features are L2-normalised; every val item (query) looks up its k most \
cosine-similar training items (the memory), each neighbour votes for its class with weight \
exp(cos / T), and the class with the largest vote wins (ties: the smallest label). One pass serves \
the whole (k, T) sweep.

Input: float32 [N, C] .npy features as written by `embed`, with int64 (or int32, uint8) [N] labels \
in FEATS.labels.npy next to each file unless given explicitly. Train and val must be different \
splits: the same file for both is refused (the official LEWEL kNN monitor searches a memory that \
lies inside its queries, which inflates the accuracy).

From checkpoints: --ckpt (repeatable; a folder means every complete checkpoint in it) with \
--train-data and --val-data embeds both splits with the eval transform, then sweeps the same way.

Output (stdout, JSON lines): `start` (files, sizes, classes, the sweep), one `eval` per (k, T) with \
top1_pct and top5_pct (percent), `end` with the best (k, T), and one `result` line per evaluation \
(metrics, checkpoint sha256, data fingerprints, protocol and protocol_hash), which --results \
FILE.jsonl also appends to, skipping checkpoints it already holds with the same protocol. The best point is chosen on the \
val split it is scored on, so it is optimistic; report a fixed (k, T) (k=20, T=0.07 is the usual \
one) when comparing backbones.";

const EXAMPLE: &str = "  embed --ckpt run/ckpt/latest --data train/ --out train.npy &&
  embed --ckpt run/ckpt/latest --data val/ --out val.npy &&
  knn-probe --train-features train.npy --val-features val.npy --k 20 \\
    | jq 'select(.event == \"eval\") | .top1_pct'";

/// Flags of `knn-probe`.
#[derive(Debug, Parser)]
#[command(name = TOOL, version, about = "Weighted kNN evaluation of features, sweeping k and the temperature.",
          long_about = LONG_ABOUT, after_help = lewel::cli::help_tail(EXAMPLE))]
struct Args {
    /// The memory: float32 [N, C] .npy features of the labelled training split (from `embed`).
    #[arg(long, value_name = "FEATS.npy", required_unless_present = "ckpt", conflicts_with = "ckpt")]
    train_features: Option<PathBuf>,

    /// The queries: float32 [M, C] .npy features of the validation split, never the training file.
    #[arg(long, value_name = "FEATS.npy", required_unless_present = "ckpt", conflicts_with = "ckpt")]
    val_features: Option<PathBuf>,

    #[command(flatten)]
    from_ckpt: lewel::eval::jobs::CkptArgs,

    /// Labels of the training features, an integer [N] .npy [default: TRAIN.labels.npy next to
    /// --train-features].
    #[arg(long, value_name = "LABELS.npy", conflicts_with = "ckpt")]
    train_labels: Option<PathBuf>,

    /// Labels of the validation features, an integer [M] .npy [default: VAL.labels.npy next to
    /// --val-features].
    #[arg(long, value_name = "LABELS.npy", conflicts_with = "ckpt")]
    val_labels: Option<PathBuf>,

    /// Neighbour counts k to sweep, comma-separated. 20 is the common single choice; larger k
    /// smooths the vote. A k above the training-set size uses the whole training set.
    #[arg(long, value_name = "K,...", value_delimiter = ',', default_value = "10,20,100,200")]
    k: Vec<usize>,

    /// Vote temperatures T to sweep, comma-separated (unitless, > 0). Smaller T trusts the nearest
    /// neighbours more; 0.07 is the InstDisc/DINO value.
    #[arg(long, value_name = "T,...", value_delimiter = ',', default_value = "0.07")]
    temperature: Vec<f64>,

    /// Queries per similarity matrix. Memory is about batch-size x N_train x 4 bytes (256 x 1.28M
    /// ImageNet items: 1.3 GB); lower it if the device runs out of memory.
    #[arg(long, value_name = "N", default_value_t = knn::DEFAULT_BATCH_SIZE)]
    batch_size: usize,

    /// Also write the whole result (config, every (k, T), the best) to this JSON file, atomically.
    #[arg(long, value_name = "RESULT.json")]
    out: Option<PathBuf>,

    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    lewel::signals::ignore_file_size_signal();
    let args = Args::parse();
    lewel::exit::finish(TOOL, run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    let (train, val, mode) =
        args.from_ckpt.sources(args.train_features, args.train_labels, args.val_features, args.val_labels);
    let cfg = KnnConfig {
        train,
        val,
        ks: args.k,
        temperatures: args.temperature,
        batch_size: args.batch_size,
        device: args.common.device.resolve()?,
        seed: args.common.seed,
        out: args.out,
    };
    cfg.validate()?;
    let bar = progress_bar(args.common.quiet, "queries");
    let mut sink = EventWriter::stdout(TOOL, OnClosed::Fail);
    let summary = jobs::knn(&cfg, &mode, args.from_ckpt.results.as_deref(), &mut sink, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let summary = summary?;
    if !args.common.quiet {
        if cfg.ks.len() * cfg.temperatures.len() > 1 && summary.evaluated > 0 {
            eprintln!(
                "{TOOL}: note: the best (k, T) is chosen on the val split it is scored on, so its accuracy is \
                 optimistic; compare backbones at a fixed (k, T)"
            );
        }
        eprintln!("{TOOL}: {} evaluated, {} already in --results", summary.evaluated, summary.skipped);
    }
    Ok(())
}

/// The bar, counting `unit`s (see `lewel::cli::progress_bar`).
fn progress_bar(quiet: bool, unit: &str) -> ProgressBar {
    lewel::cli::progress_bar(quiet, &format!("{{bar:40}} {{pos}}/{{len}} {unit} ({{eta}} left)"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_is_valid() {
        super::Args::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_library() {
        use clap::Parser;
        let a = super::Args::parse_from(["knn-probe", "--train-features", "a.npy", "--val-features", "b.npy"]);
        assert_eq!(a.k, lewel::eval::knn::DEFAULT_KS);
        assert_eq!(a.temperature, [lewel::eval::knn::DEFAULT_TEMPERATURE]);
    }
}
