//! `pretrain`: self-supervised pre-training (LEWEL_B, BYOL, LEWEL_M, MoCo v2) with checkpoints and exact resume.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use lewel::cli::CommonArgs;
use lewel::data::Recipe;
use lewel::model::{Arch, EmaMode, Method, Stem};
use lewel::monitor::KnnMonitorConfig;
use lewel::optim::OptimizerKind;
use lewel::run::RunDir;
use lewel::schedule::EmaSchedule;
use lewel::train::{self, Input, PretrainConfig, RunOptions};

const EXAMPLE: &str = "  augment images/ --recipe lewel-b-small --out views.npy
  pretrain --views views.npy --preset small-lewelb --epochs 20 --out run1 | jq -c 'select(.event==\"epoch\")'
  pretrain --resume run1            # after a crash or Ctrl-C: continues bit-exactly
  pretrain --resume run1 --extend-epochs 40   # a finished 20-epoch run, trained on to 40 epochs in all
  pretrain train/ --device cuda --precision bf16 --channels-last --out run2   # on a GPU
  embed --ckpt run1/ckpt/latest --data val/ --out val.npy";

/// Learn a backbone from unlabeled images with LEWEL_B (the official method), BYOL, LEWEL_M or MoCo v2.
///
/// Use pretrain to pre-train a ResNet on your own images. It writes a run folder: config.json (the
/// resolved configuration), events.jsonl (a copy of stdout: start, step, epoch, checkpoint, end
/// events) and ckpt/ (atomic safetensors checkpoints in the official naming, a .json sidecar each,
/// and a `latest` pointer). With --knn-every E it also reports the online kNN accuracy every E epochs
/// (`eval` events). Ctrl-C or SIGTERM finishes the step, writes a checkpoint and exits 130;
/// `--resume RUN` continues exactly where the run stopped.
///
/// Defaults are the official LEWEL_B ImageNet recipe (preset in1k-lewelb-eman-200ep), or the paper's
/// LEWEL_M recipe with --method lewel-m or mocov2 (in1k-lewelm-200ep, in1k-mocov2-200ep); on a CPU
/// start from --preset small-lewelb or small-lewelm (ResNet-18, CIFAR stem, width 16, 32 px).
#[derive(Debug, Parser)]
#[command(name = "pretrain", version, args_override_self = true, after_help = lewel::cli::help_tail(EXAMPLE))]
struct Args {
    /// The images (DATA): an image folder (class sub-folders or flat), a list file, IDX files (MNIST,
    /// Fashion-MNIST; .gz or raw), a .npy array, or tar shards (webdataset layout: a quoted brace pattern
    /// 'shard-{000000..000099}.tar', a list of .tar files, a folder of them); augmented on the fly with --recipe.
    data: Option<PathBuf>,

    /// For list files: the folder their paths are relative to.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,

    /// Augmentation recipe for DATA: lewel-b (official), byol, mocov2, or their -small variants for
    /// 32 px images (default: lewel-b for lewel-b/byol, mocov2 for lewel-m/mocov2; -small with
    /// the CIFAR stem).
    #[arg(long, value_name = "NAME")]
    recipe: Option<String>,

    /// Override one recipe parameter, KEY=VALUE (as `augment --set`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,

    /// Side of the views in pixels (default: the recipe's; 224, or 32 for -small recipes).
    #[arg(long, value_name = "PX")]
    size: Option<u32>,

    /// Data worker threads (0: one per core). Results do not depend on it.
    #[arg(long, default_value_t = 0, value_name = "T")]
    threads: usize,

    /// Stop at the first unreadable image (default: replace it, and report a `warn` event). Unreadable
    /// includes a truncated file (a JPEG without its end-of-image marker, a PNG cut before IEND, a WebP
    /// shorter than its RIFF size: "truncated" in the reason); bytes after a JPEG's EOI are accepted, as PIL does.
    #[arg(long)]
    strict: bool,

    /// Tar shards only: the items of the bounded shuffle buffer that follows the shuffle of the shards, as in
    /// webdataset's `shuffle(N)` (0 or 1: shards in shuffled order, items in archive order). It holds indices, not
    /// images, so a large one costs no memory, only read locality; the order stays a pure function of (seed,
    /// epoch), so --resume is exact. Default 1000, about one shard of ImageNet's usual 1,000-1,300 images.
    #[arg(long, default_value_t = lewel::data::shards::DEFAULT_SHUFFLE_BUFFER, value_name = "N")]
    shuffle_buffer: usize,

    /// Pre-augmented, normalised view pairs: float32 [N,2,3,H,W] .npy (from `augment`), read in file
    /// order, --batch-size at a time, a last partial batch dropped.
    #[arg(long, value_name = "FILE.npy", conflicts_with = "data")]
    views: Option<PathBuf>,

    /// Start from a named configuration; any flag below overrides it. in1k-lewelb-eman-200ep (default),
    /// in1k-lewelb-syncbn-400ep, in1k-lewelm-200ep (default with --method lewel-m), in1k-mocov2-200ep
    /// (default with --method mocov2), small-lewelb, small-byol, small-lewelm, small-mocov2.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,

    /// The method: lewel-b (global + aligned normalised-MSE losses with predictors), byol (global loss
    /// only), lewel-m (global InfoNCE against a key queue + aligned InfoNCE against the batch, ShuffleBN)
    /// or mocov2 (lewel-m's global loss only). All share one code path.
    #[arg(long, value_enum)]
    method: Option<MethodArg>,
    /// Backbone (torchvision v1.5 layout).
    #[arg(long, value_enum)]
    arch: Option<ArchArg>,
    /// Stem: imagenet (7x7 stride 2 + max-pool) or cifar (3x3 stride 1, no max-pool; for 32 px images).
    #[arg(long, value_enum)]
    stem: Option<StemArg>,
    /// Base width of the ResNet (64 = standard; 16 or 32 for small CPU runs).
    #[arg(long)]
    width: Option<i64>,
    /// K: output dimension of the projectors, and the number of alignment maps (official 256).
    #[arg(long)]
    proj_dim: Option<i64>,
    /// Hidden width of the projectors and predictors (official 4096).
    #[arg(long)]
    hidden_dim: Option<i64>,
    /// G: number of channel groups; K/G aligned representations (official 4).
    #[arg(long)]
    groups: Option<i64>,
    /// s: temperature of the alignment-map softmax (official 1.0; below 1 sharpens the maps).
    #[arg(long)]
    map_scale: Option<f64>,
    /// α: weight of the global loss; the aligned loss gets 1-α (official 0.5).
    #[arg(long)]
    alpha: Option<f64>,
    /// Target network: eman (EMA of the whole state incl. BN statistics, target in eval mode; official
    /// default) or params (EMA of parameters only, target BN in train mode).
    #[arg(long, value_enum)]
    ema: Option<EmaArg>,
    /// Base EMA momentum (LEWEL_B 0.98, rising to 1 along a cosine; LEWEL_M fixed 0.999).
    #[arg(long)]
    ema_momentum: Option<f64>,
    /// EMA momentum schedule: cosine (from --ema-momentum to 1 over the run; LEWEL_B, BYOL) or constant
    /// (LEWEL_M, MoCo v2).
    #[arg(long, value_enum)]
    ema_schedule: Option<EmaScheduleArg>,
    /// τ: temperature of both InfoNCE losses of lewel-m and mocov2 (paper 0.2; lower sharpens). Unused by
    /// lewel-b and byol.
    #[arg(long)]
    temperature: Option<f64>,
    /// Negative keys in the FIFO queue of lewel-m / mocov2 (default 65536, small presets 4096). Each step
    /// enqueues 2 x --batch-size keys (both views); the queue must hold at least those and at most the
    /// images one epoch uses (a preset's queue that does not fit the data is refused naming the preset). Unused
    /// by lewel-b and byol.
    #[arg(long, value_name = "K")]
    queue_size: Option<i64>,
    /// Optimiser: lars (official: trust ratio, BN and bias excluded) or sgd. LARS, per adapted weight w
    /// with gradient g at the scheduled lr: local = eta·‖w‖ / (‖g‖ + wd·‖w‖), d = (g + wd·w)·local·lr,
    /// buf = 0.9·buf + d, w -= buf. Excluded from the trust ratio and the weight decay (factor 1, wd 0):
    /// every name with `bn`, `downsample.1` or `bias`, and with --ema eman the projector/predictor BN
    /// gammas (`mlp.1`). SGD: buf = 0.9·buf + g + wd·w, w -= lr·buf (same exclusions from wd).
    #[arg(long, value_enum)]
    optimizer: Option<OptimArg>,
    /// LARS trust coefficient eta (official 0.001; small-data recipes 0.02 with --lars-clip). Must be > 0.
    #[arg(long, value_name = "ETA", allow_negative_numbers = true)]
    lars_eta: Option<f64>,
    /// Clip the LARS trust ratio at 1 relative to the lr: local becomes min(local / lr, 1), so no adapted
    /// weight moves faster than plain SGD would move it (as solo-learn's clip_lr). Off in the official
    /// code; `--lars-clip false` turns a preset's clipping off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    lars_clip: Option<bool>,
    /// Base learning rate, absolute (official 3.6 at batch 1024); warm-up then cosine.
    #[arg(long)]
    lr: Option<f64>,
    /// Weight decay (official 1.5e-6 with LARS).
    #[arg(long)]
    wd: Option<f64>,
    /// Linear warm-up epochs (per step; official 10). Must be 0 or fewer than --epochs (else the lr never
    /// reaches --lr: refused, naming the preset that set it); a --max-steps that stops inside the warm-up gets a
    /// `warn` event.
    #[arg(long)]
    warmup_epochs: Option<u64>,
    /// Epochs (official 200).
    #[arg(long)]
    epochs: Option<u64>,
    /// With --resume: lengthen the run to N epochs in all (N is the new total, not the epochs to add; more than
    /// the run's epochs). The run continues from its newest checkpoint with the lr and EMA-momentum schedules
    /// recomputed for N epochs, so their curves differ from those of a run planned for N epochs from the start
    /// (a `warn` event says so); config.json and the `start` event record the lengthening (`extended`: from_epochs,
    /// to_epochs, at_step). A later plain --resume continues the lengthened run; it can be lengthened again. Every
    /// other training flag must still agree with the run. --max-steps counts steps from the run's start.
    #[arg(long, value_name = "N", requires = "resume", conflicts_with = "epochs")]
    extend_epochs: Option<u64>,
    /// Images per step, the global batch (official 1024).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Compute BatchNorm statistics over N equal slices of the batch (8 reproduces the official per-GPU
    /// BN of 8 GPUs on one device).
    #[arg(long)]
    bn_splits: Option<i64>,
    /// SyncBatchNorm: with several processes, normalise over the whole global batch (the official 400-epoch
    /// setting) instead of each process's slice. Cannot go with --bn-splits > 1.
    #[arg(long)]
    sync_bn: bool,
    /// With several processes: seconds a process waits for the others (start-up and every exchange) before it
    /// gives up with an error.
    #[arg(long, value_name = "S", default_value_t = lewel::dist::DEFAULT_TIMEOUT_S)]
    dist_timeout: u64,
    /// A full model state (official naming, .safetensors) to start from.
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,

    /// Checkpoint every N steps (0 = only at epoch ends).
    #[arg(long, value_name = "N")]
    ckpt_every_steps: Option<u64>,
    /// Checkpoint every N epochs (default 1; the final state is always saved).
    #[arg(long, value_name = "N")]
    ckpt_every_epochs: Option<u64>,
    /// Keep the newest N checkpoints (default 3)...
    #[arg(long, value_name = "N")]
    keep_last: Option<usize>,
    /// ...plus one every N epochs (default 0: none).
    #[arg(long, value_name = "N")]
    keep_every_epochs: Option<u64>,

    /// Online kNN monitor: every E epochs (and after the last) embed --knn-train (the memory) and --knn-val (the
    /// queries) with the online backbone in eval mode, and emit an `eval` event with the weighted kNN accuracy
    /// (knn_top1_pct, knn_top5_pct). Both must be labelled and different data.
    #[arg(long, value_name = "E", requires_all = ["knn_train", "knn_val"])]
    knn_every: Option<u64>,
    /// The kNN monitor's memory: labelled DATA (an ImageFolder, a labelled list, IDX with labels).
    #[arg(long, value_name = "DATA", requires = "knn_every")]
    knn_train: Option<PathBuf>,
    /// The kNN monitor's queries: labelled DATA, not the same as --knn-train.
    #[arg(long, value_name = "DATA", requires = "knn_every")]
    knn_val: Option<PathBuf>,
    /// Neighbours of the kNN monitor (default 20; T = 0.07).
    #[arg(long, value_name = "K", requires = "knn_every")]
    knn_k: Option<usize>,

    #[command(flatten)]
    run: lewel::cli::RunArgs,

    #[command(flatten)]
    amp: lewel::cli::AmpArgs,

    #[command(flatten)]
    common: CommonArgs,
}

macro_rules! value_enum {
    ($arg:ident => $lib:ty { $($v:ident => $l:expr),* $(,)? }) => {
        #[derive(Debug, Clone, Copy, ValueEnum)]
        enum $arg { $($v),* }
        impl From<$arg> for $lib {
            fn from(a: $arg) -> $lib { match a { $($arg::$v => $l),* } }
        }
    };
}
value_enum!(MethodArg => Method {
    LewelB => Method::LewelB,
    Byol => Method::Byol,
    LewelM => Method::LewelM,
    Mocov2 => Method::MocoV2,
});
value_enum!(ArchArg => Arch { Resnet18 => Arch::Resnet18, Resnet34 => Arch::Resnet34, Resnet50 => Arch::Resnet50 });
value_enum!(StemArg => Stem { Imagenet => Stem::Imagenet, Cifar => Stem::Cifar });
value_enum!(EmaArg => EmaMode { Eman => EmaMode::Eman, Params => EmaMode::Params });
value_enum!(OptimArg => OptimizerKind { Lars => OptimizerKind::Lars, Sgd => OptimizerKind::Sgd });
value_enum!(EmaScheduleArg => EmaSchedule { Cosine => EmaSchedule::Cosine, Constant => EmaSchedule::Constant });

impl Args {
    /// Applies every flag the user gave on top of `base`.
    fn apply(&self, mut c: PretrainConfig) -> Result<PretrainConfig> {
        let m = &mut c.model;
        macro_rules! set {
            ($dst:expr, $src:expr) => {
                if let Some(v) = $src {
                    $dst = v.into();
                }
            };
        }
        set!(m.method, self.method);
        set!(m.arch, self.arch);
        set!(m.stem, self.stem);
        set!(m.width, self.width);
        set!(m.proj_dim, self.proj_dim);
        set!(m.hidden_dim, self.hidden_dim);
        set!(m.groups, self.groups);
        set!(m.map_scale, self.map_scale);
        set!(m.alpha, self.alpha);
        set!(m.ema, self.ema);
        set!(m.bn_splits, self.bn_splits);
        if self.sync_bn {
            m.sync_bn = true;
        }
        set!(m.temperature, self.temperature);
        set!(m.queue_size, self.queue_size);
        set!(c.optim.kind, self.optimizer);
        set!(c.optim.weight_decay, self.wd);
        set!(c.optim.eta, self.lars_eta);
        set!(c.optim.clip, self.lars_clip);
        c.optim.ema = c.model.ema;
        c.optim.validate()?;
        if c.optim.kind != OptimizerKind::Lars && (self.lars_eta.is_some() || self.lars_clip.is_some()) {
            return Err(lewel::LewelError::Usage(format!(
                "--lars-eta and --lars-clip apply to --optimizer lars; this run uses {}",
                serde_json::to_value(c.optim.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            ))
            .into());
        }
        set!(c.lr, self.lr);
        set!(c.ema_momentum, self.ema_momentum);
        set!(c.ema_schedule, self.ema_schedule);
        set!(c.warmup_epochs, self.warmup_epochs);
        set!(c.epochs, self.epochs);
        set!(c.batch_size, self.batch_size);
        set!(c.ckpt_every_steps, self.ckpt_every_steps);
        set!(c.ckpt_every_epochs, self.ckpt_every_epochs);
        set!(c.keep_last, self.keep_last);
        set!(c.keep_every_epochs, self.keep_every_epochs);
        if self.seed_given() {
            c.seed = self.common.seed;
        }
        if let Some(v) = &self.views {
            c.input = Input::Views { path: v.clone() };
        }
        if let Some(d) = &self.data {
            c.input = Input::Data {
                path: d.clone(),
                root: self.root.clone(),
                recipe: Box::new(self.recipe(&c)?),
                strict: self.strict,
                shuffle_buffer: self.shuffle_buffer,
            };
        }
        if let Some(i) = &self.init {
            c.init = Some(i.clone());
        }
        if let (Some(every), Some(train), Some(val)) = (self.knn_every, &self.knn_train, &self.knn_val) {
            c.knn_monitor = Some(KnnMonitorConfig {
                every_epochs: every,
                train: train.clone(),
                val: val.clone(),
                k: self.knn_k.unwrap_or(20),
                temperature: lewel::eval::knn::DEFAULT_TEMPERATURE,
                batch_size: 256,
            });
        }
        Ok(c)
    }

    /// The augmentation recipe: --recipe (default by preset), then --size and every --set.
    fn recipe(&self, c: &PretrainConfig) -> Result<Recipe> {
        // LEWEL_M and MoCo v2 use MoCo v2's augmentation (paper §4); LEWEL_B and BYOL the official one.
        let base = match c.model.method {
            Method::LewelM | Method::MocoV2 => "mocov2",
            Method::LewelB | Method::Byol => "lewel-b",
        };
        let default = if c.model.stem == Stem::Cifar { format!("{base}-small") } else { base.to_string() };
        let mut r = Recipe::preset(self.recipe.as_deref().unwrap_or(&default))?;
        if let Some(px) = self.size {
            r.set(&format!("size={px}"))?;
        }
        for kv in &self.set {
            r.set(kv)?;
        }
        r.validate()?;
        Ok(r)
    }

    /// The flags given whose values a preset also sets and that a refusal may name (see [`train::Origins`]).
    fn given(&self) -> Vec<&'static str> {
        [
            ("--batch-size", self.batch_size.is_some()),
            ("--queue-size", self.queue_size.is_some()),
            ("--warmup-epochs", self.warmup_epochs.is_some()),
            ("--epochs", self.epochs.is_some()),
            ("--bn-splits", self.bn_splits.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, given)| given.then_some(f))
        .collect()
    }

    fn seed_given(&self) -> bool {
        std::env::args().any(|a| a == "--seed" || a.starts_with("--seed="))
    }
}

fn run(args: Args) -> Result<()> {
    // Several processes (torchrun, srun, scripts/launch-local.sh): join the group first; rank 0 alone writes.
    let launch = lewel::dist::Launch::from_env()?;
    let device = match &launch {
        Some(l) => l.device(args.common.device)?,
        None => args.common.device.resolve()?,
    };
    if let Some(l) = &launch {
        lewel::dist::init(l, device, std::time::Duration::from_secs(args.dist_timeout))?;
    }
    let main = lewel::dist::is_main();
    let opts = RunOptions::from_args(device, args.threads, &args.run, &args.amp)?;
    let (cfg, run_dir) = if let Some(dir) = &args.run.resume {
        let run_dir = RunDir::open(dir)?;
        let stored: PretrainConfig = serde_json::from_value(run_dir.read_config()?["pretrain"].clone())
            .with_context(|| format!("{}: not a pretrain configuration", run_dir.config_path().display()))?;
        let wanted = args.apply(stored.clone())?;
        if wanted != stored {
            let changed = train::differences(&stored, &wanted);
            let longer = if changed.len() == 1 && wanted.epochs > stored.epochs {
                format!("; to train it further, give --extend-epochs {} instead of --epochs", wanted.epochs)
            } else {
                String::new()
            };
            return Err(lewel::LewelError::Usage(format!(
                "--resume {}: the flags given change the run's configuration ({}); a resume continues the same run, so give no training flags or start a new --out{longer}",
                dir.display(),
                changed.join(", ")
            ))
            .into());
        }
        let cfg = match args.extend_epochs {
            Some(n) => {
                let cfg = train::extend(&stored, &run_dir, n)?;
                if main {
                    if let Some(e) = cfg.extended.last() {
                        eprintln!("pretrain: warning: {}", e.note());
                    }
                }
                cfg
            }
            None => stored,
        };
        (cfg, run_dir)
    } else {
        if args.views.is_none() && args.data.is_none() {
            return Err(lewel::LewelError::Usage("give the input: DATA, or --views FILE.npy".into()).into());
        }
        let default_preset = match args.method.map(Method::from) {
            Some(Method::LewelM) => "in1k-lewelm-200ep",
            Some(Method::MocoV2) => "in1k-mocov2-200ep",
            _ => train::DEFAULT_PRESET,
        };
        let preset = args.preset.as_deref().unwrap_or(default_preset);
        let base = train::preset(preset)?;
        let mut cfg = args.apply(base)?;
        check_bn_splits(&cfg, preset, args.preset.is_some(), args.bn_splits.is_some())?;
        let origins = train::Origins::preset(preset, args.preset.is_some(), args.given());
        train::check_warmup(&cfg, &origins)?;
        if !args.seed_given() {
            cfg.seed = args.common.seed;
        }
        if let Some(k) = &cfg.knn_monitor {
            k.validate()?;
        }
        let out = args.run.out.as_ref().expect("clap requires --out without --resume");
        if !main {
            // rank 0 creates the folder (and fails alone, clearly, when it holds a run already)
            lewel::dist::barrier()?;
            let run_dir = RunDir::open(out)?;
            return train_with(&args, cfg, &origins, run_dir, opts);
        }
        let created = !out.exists();
        let run_dir = RunDir::create(out)?;
        run_dir.claim_for_new_run("pretrain")?;
        run_dir.write_config(&serde_json::json!({ "pretrain": cfg }))?;
        lewel::dist::barrier()?;
        // A start refused before its first step (a setting that does not fit the data, an unreadable input)
        // leaves nothing that would block the corrected command on the same --out.
        return run_dir.clone().forget_if_refused("pretrain", created, train_with(&args, cfg, &origins, run_dir, opts));
    };

    train_with(&args, cfg, &train::Origins::resumed(&run_dir), run_dir, opts)
}

/// The batch must split into `bn_splits` equal BN slices. The error names where the value came from: a preset the
/// user chose, the default preset (which emulates 8 GPUs' BN), or the flag.
fn check_bn_splits(cfg: &PretrainConfig, preset: &str, chosen: bool, flag: bool) -> Result<()> {
    let (b, s) = (cfg.batch_size, cfg.model.bn_splits.max(1) as usize);
    if b % s == 0 {
        return Ok(());
    }
    let origin = if flag {
        format!("--batch-size {b} is not a multiple of --bn-splits {s}")
    } else {
        let which = if chosen { format!("the preset {preset}") } else { format!("the default preset {preset}") };
        format!(
            "--batch-size {b} does not split into BN slices: {which} sets --bn-splits {s} ({s} GPUs' BN on one device)"
        )
    };
    Err(lewel::LewelError::Usage(format!("{origin}; give --bn-splits 1, or a --batch-size divisible by {s}")).into())
}

/// Trains (rank 0 with the events and the progress bar; the other ranks silent) and leaves the process group.
fn train_with(
    args: &Args,
    cfg: PretrainConfig,
    origins: &train::Origins,
    run_dir: RunDir,
    opts: RunOptions,
) -> Result<()> {
    lewel::signals::install();
    let main = lewel::dist::is_main();
    let mut writer = if main { Some(run_dir.event_writer("pretrain")?) } else { None };
    let mut discard = lewel::events::DiscardSink;
    let sink: &mut dyn lewel::events::EventSink = match writer.as_mut() {
        Some(w) => w,
        None => &mut discard,
    };
    let bar = lewel::cli::progress_bar(args.common.quiet || !main, lewel::cli::STEPS_TEMPLATE);
    let mut progress = |r: &train::StepReport| lewel::cli::show_step(&bar, r);
    let result = train::run(&cfg, &opts, origins, &run_dir, sink, &mut progress);
    bar.finish_and_clear();
    if let Some(w) = writer.as_mut() {
        let _ = w.flush_copy();
    }
    if result.is_ok() {
        lewel::dist::shutdown();
    }
    result.map(|_| ())
}

fn main() -> ExitCode {
    lewel::signals::ignore_file_size_signal();
    lewel::alloc::tune_for_training();
    lewel::exit::finish("pretrain", run(Args::parse()))
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
