//! `linear-probe`: a linear classifier trained on frozen features, with the paper's protocols.
//!
//! Parses the flags, resolves a preset plus overrides into a [`lewel::eval::linear::Protocol`], runs
//! [`lewel::eval::linear::run`] and maps the result to an exit code. The work and its tests live in
//! `lewel::eval`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use indicatif::ProgressBar;
use lewel::cli::CommonArgs;
use lewel::eval::jobs::{self, CkptArgs};
use lewel::eval::linear::{LinearConfig, OptimizerKind, Preset, Protocol, Schedule};
use lewel::events::{EventWriter, OnClosed};

const TOOL: &str = "linear-probe";

const LONG_ABOUT: &str = "\
Linear classifier on frozen features: the paper's main evaluation of a backbone.

Use linear-probe to measure how linearly separable a backbone's features are, after `embed` has \
cached them; use knn-probe for a faster check with nothing to tune. A single fully connected layer \
(weights N(0, 0.01), bias 0) is trained with softmax cross-entropy on the training features and \
scored on the validation features, like the official main_lincls.py but without augmentation (the \
features are fixed). Input: float32 [N, C] .npy features with integer [N] labels in \
FEATS.labels.npy next to each file unless given explicitly.

From checkpoints: --ckpt (repeatable; a folder means every complete checkpoint in it) with \
--train-data and --val-data trains on random-resized crops (scale 0.08-1, ratio 3/4-4/3) with \
horizontal flips through the frozen backbone (eval-mode BN, no gradient), as the paper does, and \
scores the eval transform (resize, centre crop) of the val split.

Protocols (--protocol; every value can be overridden by its flag):
  small    (default) SGD momentum 0.9, lr 0.1, batch 64, 30 epochs, step x0.1 at epochs 18 and 24,
           wd 0, evaluation every epoch: the lewel-b recipe sized for a few thousand items
  lewel-b  the paper's LEWEL_B protocol (official scripts, after EMAN): SGD momentum 0.9, lr 0.4,
           batch 256, 50 epochs, step x0.1 at epochs 30 and 40, wd 0, evaluation every 5 epochs
  lewel-m  the paper's LEWEL_M protocol: LARS (eta 0.001, bias excluded), lr 3.2, batch 4096,
           90 epochs, cosine, wd 0, evaluation every 5 epochs

Output (stdout, JSON lines): `start` (the resolved protocol), one `epoch` per epoch (loss, lr, \
train_top1_pct), one `eval` per evaluation (top1_pct, top5_pct on the val split), and `end` with the \
FINAL accuracies (after the last epoch: the number to report) and the BEST over the evaluated epochs \
(what the official script prints), then one `result` line per evaluation (metrics, checkpoint sha256, \
data fingerprints, protocol and protocol_hash) that --results FILE.jsonl also appends to, skipping \
checkpoints it already holds with the same protocol. The best epoch is chosen on the val split itself, so it is \
optimistic (`best_is_optimistic: true`). The same --seed gives the same numbers on CPU \
with the same number of threads.";

const EXAMPLE: &str = "  embed --ckpt run/ckpt/latest --data train/ --out train.npy &&
  embed --ckpt run/ckpt/latest --data val/ --out val.npy &&
  linear-probe --train-features train.npy --val-features val.npy --protocol lewel-b --out probe.json \\
    | jq 'select(.event == \"end\") | .final_top1_pct'";

/// Flags of `linear-probe`.
#[derive(Debug, Parser)]
#[command(name = TOOL, version, about = "Linear classifier on frozen features, with the paper's protocols.",
          long_about = LONG_ABOUT, after_help = lewel::cli::help_tail(EXAMPLE))]
struct Args {
    /// Training split: float32 [N, C] .npy features (from `embed`).
    #[arg(long, value_name = "FEATS.npy", required_unless_present = "ckpt", conflicts_with = "ckpt")]
    train_features: Option<PathBuf>,

    /// Validation split: float32 [M, C] .npy features, never the training file.
    #[arg(long, value_name = "FEATS.npy", required_unless_present = "ckpt", conflicts_with = "ckpt")]
    val_features: Option<PathBuf>,

    #[command(flatten)]
    from_ckpt: CkptArgs,

    /// Labels of the training features, an integer [N] .npy [default: TRAIN.labels.npy next to
    /// --train-features].
    #[arg(long, value_name = "LABELS.npy", conflicts_with = "ckpt")]
    train_labels: Option<PathBuf>,

    /// Labels of the validation features, an integer [M] .npy [default: VAL.labels.npy next to
    /// --val-features].
    #[arg(long, value_name = "LABELS.npy", conflicts_with = "ckpt")]
    val_labels: Option<PathBuf>,

    /// The protocol to start from (see above); the flags below override its values.
    #[arg(long, alias = "preset", default_value = "small", value_parser = ["small", "lewel-b", "lewel-m"])]
    protocol: String,

    /// Base learning rate, absolute (not scaled by the batch size) [preset: small 0.1, lewel-b 0.4,
    /// lewel-m 3.2]. Lower it if the loss rises or the run diverges (exit 3).
    #[arg(long, value_name = "LR")]
    lr: Option<f64>,

    /// Training epochs [preset: small 30, lewel-b 50, lewel-m 90]. Step milestones do not move with
    /// it: set --milestones too.
    #[arg(long, value_name = "N")]
    epochs: Option<usize>,

    /// Items per step; the last partial batch of an epoch is kept [preset: small 64, lewel-b 256,
    /// lewel-m 4096]. Capped at the training-set size.
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,

    /// L2 weight decay [preset: 0 in all]. LARS excludes the bias from it.
    #[arg(long, value_name = "WD")]
    wd: Option<f64>,

    /// Epochs, counted from 0, at whose start the step schedule multiplies the lr by 0.1;
    /// comma-separated, increasing [preset: small 18,24, lewel-b 30,40].
    #[arg(long, value_name = "E,...", value_delimiter = ',')]
    milestones: Option<Vec<usize>>,

    /// Learning-rate schedule, set at the start of each epoch: step (x0.1 at each milestone) or
    /// cosine (0.5 lr (1 + cos(pi epoch / epochs)), no warm-up) [preset: small and lewel-b step,
    /// lewel-m cosine].
    #[arg(long, value_parser = ["step", "cosine"])]
    schedule: Option<String>,

    /// sgd (momentum 0.9, torch semantics) or lars (official LEWEL LARS: eta 0.001, trust ratio with
    /// wd in the denominator, lr inside the momentum; bias excluded) [preset: small and lewel-b sgd,
    /// lewel-m lars].
    #[arg(long, value_parser = ["sgd", "lars"])]
    optimizer: Option<String>,

    /// Evaluate on the val split every E epochs, and always after the last one [preset: small 1,
    /// lewel-b 5, lewel-m 5]. Evaluation is one pass over cached features: cheap.
    #[arg(long, value_name = "E")]
    eval_every: Option<usize>,

    /// Standardise every feature dimension with the mean and std of the training split (applied to
    /// both splits). Off by default, as in the paper, whose probe sees the raw pooled features; turn
    /// it on for features of large or uneven scale (raw pixels, un-normalised embeddings) or when
    /// the loss diverges.
    #[arg(long)]
    normalize: bool,

    /// Also write the whole result (resolved protocol, every epoch and evaluation, final and best
    /// accuracies) to this JSON file, atomically.
    #[arg(long, value_name = "RESULT.json")]
    out: Option<PathBuf>,

    #[command(flatten)]
    common: CommonArgs,
}

impl Args {
    /// The preset's protocol with every flag given on the command line applied.
    fn protocol(&self) -> Protocol {
        let preset: Preset = self.protocol.parse().expect("clap checked the preset");
        let mut p = preset.protocol();
        if let Some(v) = self.lr {
            p.lr = v;
        }
        if let Some(v) = self.epochs {
            p.epochs = v;
        }
        if let Some(v) = self.batch_size {
            p.batch_size = v;
        }
        if let Some(v) = self.wd {
            p.weight_decay = v;
        }
        if let Some(v) = &self.milestones {
            p.milestones = v.clone();
        }
        if let Some(v) = &self.schedule {
            p.schedule = v.parse::<Schedule>().expect("clap checked the schedule");
        }
        if let Some(v) = &self.optimizer {
            p.optimizer = v.parse::<OptimizerKind>().expect("clap checked the optimizer");
        }
        if let Some(v) = self.eval_every {
            p.eval_every = v;
        }
        p.normalize |= self.normalize;
        p
    }
}

fn main() -> ExitCode {
    lewel::signals::ignore_file_size_signal();
    let args = Args::parse();
    lewel::exit::finish(TOOL, run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    let protocol = args.protocol();
    let (train, val, mode) =
        args.from_ckpt.sources(args.train_features, args.train_labels, args.val_features, args.val_labels);
    let cfg = LinearConfig {
        protocol,
        train,
        val,
        seed: args.common.seed,
        device: args.common.device.resolve()?,
        out: args.out,
    };
    cfg.protocol.validate()?;
    let bar = progress_bar(args.common.quiet);
    let mut sink = EventWriter::stdout(TOOL, OnClosed::Fail);
    let threads = args.from_ckpt.threads;
    let results = args.from_ckpt.results.as_deref();
    let summary = jobs::linear(&cfg, &mode, threads, results, &mut sink, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let summary = summary?;
    if !args.common.quiet {
        eprintln!(
            "{TOOL}: {} evaluated, {} already in --results; report final_top1_pct (the best epoch is chosen on \
             the val split itself, so it is optimistic)",
            summary.evaluated, summary.skipped
        );
    }
    Ok(())
}

fn progress_bar(quiet: bool) -> ProgressBar {
    lewel::cli::progress_bar(quiet, "{bar:40} {pos}/{len} steps ({eta} left)")
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};
    use lewel::eval::linear::{OptimizerKind, Preset, Schedule};

    use super::Args;

    #[test]
    fn command_is_valid() {
        Args::command().debug_assert();
    }

    #[test]
    fn flags_override_the_preset() {
        let base = ["linear-probe", "--train-features", "a.npy", "--val-features", "b.npy"];
        let p = Args::parse_from(base).protocol();
        assert_eq!(p, Preset::Small.protocol());
        let p = Args::parse_from([&base[..], &["--preset", "lewel-b"]].concat()).protocol();
        assert_eq!(p, Preset::LewelB.protocol());
        let more = [
            "--protocol",
            "lewel-m",
            "--lr",
            "0.5",
            "--epochs",
            "7",
            "--batch-size",
            "32",
            "--wd",
            "0.001",
            "--milestones",
            "3,5",
            "--schedule",
            "step",
            "--optimizer",
            "sgd",
            "--eval-every",
            "2",
            "--normalize",
        ];
        let p = Args::parse_from([&base[..], &more].concat()).protocol();
        assert_eq!(p.preset, Preset::LewelM);
        assert_eq!((p.lr, p.epochs, p.batch_size, p.weight_decay), (0.5, 7, 32, 0.001));
        assert_eq!(
            (p.milestones.as_slice(), p.schedule, p.optimizer),
            (&[3, 5][..], Schedule::Step, OptimizerKind::Sgd)
        );
        assert_eq!((p.eval_every, p.normalize), (2, true));
    }
}
