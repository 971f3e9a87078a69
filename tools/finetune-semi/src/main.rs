//! `finetune-semi`: semi-supervised fine-tuning on 1% / 10% label subsets or stratified fractions.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use lewel::cli::CommonArgs;
use lewel::run::RunDir;
use lewel::semi::{self, SemiConfig, SubsetSpec};
use lewel::train::{self, RunOptions};

const EXAMPLE: &str = "  finetune-semi --ckpt run1 --train-data train/ --subset 1percent.txt --val-data val/ \\
      --preset semi-1pct --out semi1
  finetune-semi --ckpt run1 --train-data train-images-idx3-ubyte --fraction 0.1 --seed 1 \\
      --val-data t10k-images-idx3-ubyte --preset semi-small --out semi-small
  finetune-semi --resume semi1      # after a crash or Ctrl-C: continues bit-exactly
  embed --ckpt semi1 --data val/ --out val.npy";

/// Fine-tune a pre-trained backbone and a new linear classifier on a small labelled subset.
///
/// Use finetune-semi for the paper's semi-supervised evaluation: the whole network (the online backbone of
/// --ckpt, any checkpoint embed reads, plus a classifier `fc` on its pooled features, BN in train mode) is
/// trained with SGD (momentum 0.9, weight decay on every parameter) and two learning rates, on either a
/// SimCLR subset list (--subset 1percent.txt, bare names resolved under --root) or a stratified fraction
/// of --train-data (--fraction 0.01 --seed S). Every --eval-every epochs and after the last it reports
/// top-1/top-5 on --val-data (`eval` events); RUN/result.json holds the protocol, the final and the best
/// evaluation (best_is_optimistic: chosen on val). RUN/subset.txt lists the items used (`<label> <path>`,
/// or `<label> <index>` for array data), reusable with --subset. The checkpoints in RUN/ckpt open in
/// embed, the probes and export-backbone. Ctrl-C or SIGTERM writes a checkpoint and exits 130.
///
/// Presets: semi-1pct (backbone lr 0.0001, classifier 1.0) and semi-10pct (0.01, 0.1) are the official
/// protocol: 50 epochs, x0.1 at 30 and 40, batch 256, 224 px, eval every 5; semi-small is for 32 px data on a
/// CPU: 20 epochs, x0.1 at 12 and 16, batch 64, 32 px, the 10% lrs, eval every 2. Default: semi-10pct.
#[derive(Debug, Parser)]
#[command(name = "finetune-semi", version, args_override_self = true, after_help = lewel::cli::help_tail(EXAMPLE))]
struct Args {
    /// The pre-trained checkpoint: ours (file, latest, run folder), an exported or torchvision backbone, or an
    /// official LEWEL checkpoint. Its online backbone is fine-tuned.
    #[arg(long, value_name = "CKPT", required_unless_present = "resume")]
    ckpt: Option<PathBuf>,
    /// The labelled training data (any DATA form); with --subset, the default --root when it is a folder.
    #[arg(long, value_name = "DATA", required_unless_present = "resume")]
    train_data: Option<PathBuf>,
    /// The labelled evaluation data (any DATA form).
    #[arg(long, value_name = "DATA", required_unless_present = "resume")]
    val_data: Option<PathBuf>,
    /// A subset list: SimCLR bare names (1percent.txt, CRLF ok; resolved as ROOT/<synset>/<name>), `<label>
    /// <relpath>` lines (the official .ext form), or a subset.txt of an earlier run.
    #[arg(long, value_name = "FILE", conflicts_with = "fraction")]
    subset: Option<PathBuf>,
    /// The folder list paths and bare names resolve under (an ImageFolder for SimCLR lists).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// A stratified fraction of --train-data: per class max(1, round(F * n_c)) items drawn from --seed.
    #[arg(long, value_name = "F")]
    fraction: Option<f64>,
    /// Start from a named protocol: semi-1pct, semi-10pct (default) or semi-small; the flags below override it.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Epochs (official 50).
    #[arg(long)]
    epochs: Option<u64>,
    /// Side of the training crops in px (official 224; semi-small 32); evaluation resizes to 8/7 of it and
    /// centre-crops it (32 px and below: no resize margin).
    #[arg(long, value_name = "PX")]
    size: Option<u32>,
    /// Images per step (official 256).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Base learning rate of the backbone (official 1%: 0.0001, 10%: 0.01).
    #[arg(long)]
    lr_backbone: Option<f64>,
    /// Base learning rate of the classifier fc (official 1%: 1.0, 10%: 0.1).
    #[arg(long)]
    lr_classifier: Option<f64>,
    /// Weight decay, applied to every parameter (official 1e-4).
    #[arg(long)]
    wd: Option<f64>,
    /// Epochs at which both learning rates are multiplied by 0.1 (official 30,40).
    #[arg(long, value_delimiter = ',', value_name = "E,E")]
    milestones: Option<Vec<u64>>,
    /// Evaluate on --val-data every N epochs and after the last (official 5).
    #[arg(long, value_name = "N")]
    eval_every: Option<u64>,
    /// Data worker threads (0: one per core). Results do not depend on it.
    #[arg(long, default_value_t = 0, value_name = "T")]
    threads: usize,
    /// Stop at the first unreadable image (default: replace it, and report a `warn` event).
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    run: lewel::cli::RunArgs,
    #[command(flatten)]
    amp: lewel::cli::AmpArgs,
    #[command(flatten)]
    common: CommonArgs,
}

impl Args {
    fn seed_given(&self) -> bool {
        std::env::args().any(|a| a == "--seed" || a.starts_with("--seed="))
    }

    /// Applies every flag the user gave on top of `c`.
    fn apply(&self, mut c: SemiConfig) -> SemiConfig {
        macro_rules! set {
            ($dst:expr, $src:expr) => {
                if let Some(v) = $src.clone() {
                    $dst = v;
                }
            };
        }
        set!(c.epochs, self.epochs);
        set!(c.batch_size, self.batch_size);
        set!(c.lr_backbone, self.lr_backbone);
        set!(c.lr_classifier, self.lr_classifier);
        set!(c.weight_decay, self.wd);
        set!(c.milestones, self.milestones);
        set!(c.eval_every, self.eval_every);
        if let Some(px) = self.size {
            c.size = px;
            (c.eval_resize, c.eval_crop) = semi::eval_sizes(px);
        }
        if let Some(p) = &self.ckpt {
            c.ckpt = p.clone();
        }
        if let Some(p) = &self.train_data {
            c.train = p.clone();
        }
        if let Some(p) = &self.val_data {
            c.val = p.clone();
        }
        if self.root.is_some() {
            c.root = self.root.clone();
        }
        if self.seed_given() {
            c.seed = self.common.seed;
        }
        if self.strict {
            c.strict = true;
        }
        if let Some(p) = &self.subset {
            c.subset = SubsetSpec::List { path: p.clone() };
        }
        if let Some(f) = self.fraction {
            c.subset = SubsetSpec::Fraction { fraction: f, seed: c.seed };
        }
        c
    }
}

fn run(args: Args) -> Result<()> {
    let device = args.common.device.resolve()?;
    let opts = RunOptions::from_args(device, args.threads, &args.run, &args.amp)?;
    let mut created = None;
    let (cfg, run_dir) = if let Some(dir) = &args.run.resume {
        let run_dir = RunDir::open(dir)?;
        let stored: SemiConfig = serde_json::from_value(run_dir.read_config()?["finetune_semi"].clone())
            .with_context(|| format!("{}: not a finetune-semi configuration", run_dir.config_path().display()))?;
        let wanted = args.apply(stored.clone());
        if wanted != stored {
            let (a, b) = (serde_json::to_value(&stored)?, serde_json::to_value(&wanted)?);
            let (fa, fb) = (train::flatten(&a), train::flatten(&b));
            let diff: Vec<String> = fa
                .iter()
                .filter(|(k, v)| fb.get(*k) != Some(v))
                .map(|(k, v)| format!("{k}: {v} -> {}", fb[k]))
                .collect();
            return Err(lewel::LewelError::Usage(format!(
                "--resume {}: the flags given change the run's configuration ({}); a resume continues the same run, so give no training flags or start a new --out",
                dir.display(),
                diff.join(", ")
            ))
            .into());
        }
        (stored, run_dir)
    } else {
        let mut base = semi::preset(args.preset.as_deref().unwrap_or("semi-10pct"))?;
        base.seed = args.common.seed;
        let cfg = args.apply(base);
        let out = args.run.out.as_ref().expect("clap requires --out without --resume");
        created = Some(!out.exists());
        let run_dir = RunDir::create(out)?;
        run_dir.claim_for_new_run(semi::TOOL)?;
        (cfg, run_dir)
    };

    lewel::signals::install();
    let mut sink = run_dir.event_writer(semi::TOOL)?;
    let bar = lewel::cli::progress_bar(args.common.quiet, lewel::cli::STEPS_TEMPLATE);
    let mut progress = |r: &train::StepReport| lewel::cli::show_step(&bar, r);
    let result = semi::run(&cfg, &opts, &run_dir, &mut sink, &mut progress);
    bar.finish_and_clear();
    let _ = sink.flush_copy();
    drop(sink);
    // A fresh start refused before its first step (a checkpoint or data that does not fit) leaves nothing that
    // would block the corrected command on the same --out.
    let result = match created {
        Some(created) => run_dir.forget_if_refused(semi::TOOL, created, result),
        None => result,
    };
    result.map(|_| ())
}

fn main() -> ExitCode {
    lewel::signals::ignore_file_size_signal();
    lewel::alloc::tune_for_training();
    lewel::exit::finish("finetune-semi", run(Args::parse()))
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
