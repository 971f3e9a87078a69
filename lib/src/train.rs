//! The training loop: one loop for every method and every tool, with exact resume.
//!
//! [`train_loop`] owns the schedule ([`LrSchedule`]), the events (`start`, `step`, `epoch`, `eval`,
//! `checkpoint`, `warn`, `error`, `end`), the checkpoints (save, prune, resume from the newest valid one),
//! SIGINT/SIGTERM (finish the step, checkpoint, exit 130), divergence (exit 3) and the periodic evaluation
//! (every N epochs and after the last; the records travel in the sidecars, so a resumed run keeps them). A tool
//! supplies a [`BatchSource`] (deterministic epochs from (seed, epoch, index)) and a [`TrainTask`] (the step,
//! the state, the evaluation): pre-training ([`run`], with the kNN monitor of [`crate::monitor`]) and
//! semi-supervised fine-tuning ([`crate::semi`]).
//!
//! Semantics follow the official loop (`reference/lewel-official.md` §3, §5.3): per-step linear warm-up,
//! then a cosine learning rate constant within each epoch; the EMA momentum from the 0-based global step
//! over `epochs x steps_per_epoch`, applied after the optimiser step. A checkpoint at step `s` holds the
//! state after `s` steps; resuming from it replays nothing and continues with step `s` of the same data
//! order (data order and augmentation randomness come from (seed, epoch, index)), so on the CPU the
//! losses after a resume are bit-identical to those of an uninterrupted run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{nn, Device, Kind, Tensor};

use crate::amp::{self, GradScaler, Precision};
use crate::ckpt;
use crate::events::{Event, EventSink};
use crate::model::{Lewel, ModelConfig};
use crate::optim::{OptimConfig, Optimizer};
use crate::run::RunDir;
use crate::schedule::{self, LrSchedule};
use crate::signals;
use crate::LewelError;

const TOOL: &str = "pretrain";

/// Everything that defines a pre-training run (written to `RUN/config.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PretrainConfig {
    pub model: ModelConfig,
    pub optim: OptimConfig,
    /// Base learning rate (absolute, as in the official scripts; not scaled by the batch size).
    pub lr: f64,
    /// Linear warm-up length in epochs (per step).
    pub warmup_epochs: u64,
    /// Number of epochs (passes over the data).
    pub epochs: u64,
    /// Images per step (the global batch).
    pub batch_size: usize,
    /// Base EMA momentum (the cosine schedule raises it to 1; the constant one keeps it).
    pub ema_momentum: f64,
    /// How the EMA momentum evolves: cosine (LEWEL_B, BYOL) or constant (LEWEL_M, MoCo v2).
    #[serde(default)]
    pub ema_schedule: schedule::EmaSchedule,
    pub seed: u64,
    /// Write a checkpoint every N steps (0 = only at epoch ends).
    pub ckpt_every_steps: u64,
    /// Write a checkpoint every N epochs (0 = never at epoch ends; the final one is always written).
    pub ckpt_every_epochs: u64,
    /// Keep the newest N checkpoints...
    pub keep_last: usize,
    /// ...plus those at every N-th epoch end (0 = none).
    pub keep_every_epochs: u64,
    /// The input: pre-augmented views or a data set augmented on the fly.
    pub input: Input,
    /// Initial full state (official naming), applied before step 0.
    pub init: Option<PathBuf>,
    /// The online kNN monitor (periodic evaluation), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_monitor: Option<crate::monitor::KnnMonitorConfig>,
    /// Every lengthening of the run (`pretrain --resume RUN --extend-epochs N`), oldest first; `epochs` is the
    /// newest total. Empty for a run trained as planned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extended: Vec<Extension>,
}

/// One lengthening of a run (`pretrain --resume RUN --extend-epochs N`), as `config.json` and the `start` event
/// record it. The schedules computed from the run's length (the lr's cosine, the EMA momentum's cosine, the
/// collapse watch's horizon, the final evaluation) follow `to_epochs` from `at_step` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    /// The epochs the run was planned for until then.
    pub from_epochs: u64,
    /// The new total number of epochs.
    pub to_epochs: u64,
    /// The global step of the checkpoint the lengthened run continued from (0: it had none and started over).
    pub at_step: u64,
}

impl Extension {
    /// The warning of a lengthening (a `warn` event and a line on stderr).
    pub fn note(&self) -> String {
        format!(
            "the run is extended from {} to {} epochs at step {}: the lr and EMA-momentum schedules are recomputed \
             for {} epochs from here on, so its lr and EMA curves differ from those of a run planned for {} epochs \
             from the start (the lr continues from the value a {}-epoch cosine has here, not from the end of the old one)",
            self.from_epochs, self.to_epochs, self.at_step, self.to_epochs, self.to_epochs, self.to_epochs
        )
    }
}

/// The configuration of a run lengthened to `to_epochs` in all (`pretrain --resume RUN --extend-epochs N`): `epochs`
/// becomes `to_epochs` and the lengthening is recorded in `extended`, at the step of the checkpoint a resume of
/// `run_dir` continues from (the loop loads the same one). `to_epochs` is the new total, so it must exceed the
/// run's epochs. `--max-steps` still counts global steps from the run's start.
pub fn extend(cfg: &PretrainConfig, run_dir: &RunDir, to_epochs: u64) -> Result<PretrainConfig> {
    if to_epochs <= cfg.epochs {
        return Err(LewelError::Usage(format!(
            "--extend-epochs {to_epochs}: the run in {} is planned for {} epochs already; --extend-epochs gives the \
             new total, so give more than {}",
            run_dir.root().display(),
            cfg.epochs,
            cfg.epochs
        ))
        .into());
    }
    // The checkpoint is read (and verified) once more here: a lengthening is rare, and the step recorded must be
    // the one the loop resumes from, not `latest`'s (which may be damaged).
    let at_step = ckpt::find_resumable(&run_dir.ckpt_dir()).map_or(0, |(l, _)| l.sidecar.step);
    let mut out = cfg.clone();
    out.extended.push(Extension { from_epochs: cfg.epochs, to_epochs, at_step });
    out.epochs = to_epochs;
    Ok(out)
}

/// Where the view pairs come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Input {
    /// float32 `[N,2,3,H,W]` normalised view pairs, in file order.
    Views { path: PathBuf },
    /// A data set (any DATA form), augmented on the fly with `recipe`; order and views from (seed, epoch, index).
    Data {
        path: PathBuf,
        root: Option<PathBuf>,
        recipe: Box<crate::data::Recipe>,
        /// An unreadable image stops the run (else it is replaced, and reported as a `warn` event).
        strict: bool,
        /// Tar shards: the shuffle buffer's items (see `data::shards`).
        #[serde(default = "default_shuffle_buffer")]
        shuffle_buffer: usize,
    },
}

fn default_shuffle_buffer() -> usize {
    crate::data::shards::DEFAULT_SHUFFLE_BUFFER
}

/// Settings that do not change the run's numbers (not part of the resume check).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub device: Device,
    /// Data worker threads (0: one per core); results do not depend on it.
    pub threads: usize,
    pub log_every: u64,
    /// Stop after this global step (a checkpoint is written), as if interrupted but exiting 0.
    pub max_steps: Option<u64>,
    pub resume: bool,
    /// Precision of the network forwards (`--precision`; see [`crate::amp`]). Not part of the resume check: a run
    /// may continue in another precision.
    pub precision: Precision,
    /// The first loss scale of `fp16` runs (`--loss-scale-init`; PyTorch's 2^16). A resume restores the scale.
    pub loss_scale_init: f64,
    /// Lay the 4-D weights and the input batches out channels-last (`--channels-last`).
    pub channels_last: bool,
}

impl RunOptions {
    /// The options of a training tool's flags: its run-folder group, its mixed-precision group, its data threads
    /// and the device it resolved.
    pub fn from_args(
        device: Device,
        threads: usize,
        run: &crate::cli::RunArgs,
        amp: &crate::cli::AmpArgs,
    ) -> Result<RunOptions, LewelError> {
        Ok(RunOptions {
            device,
            threads,
            log_every: run.log_every,
            max_steps: run.max_steps,
            resume: run.resume.is_some(),
            precision: amp.precision,
            loss_scale_init: amp.loss_scale_init()?,
            channels_last: amp.channels_last,
        })
    }
}

/// What the loop reports to the tool after each step (for the progress bar).
#[derive(Debug, Clone)]
pub struct StepReport {
    pub epoch: u64,
    pub epochs: u64,
    pub step: u64,
    pub total_steps: u64,
    pub loss: f64,
    pub lr: f64,
    pub images_per_s: f64,
    pub data_wait_frac: f64,
}

/// One batch of view pairs, with what the loader measured and skipped.
struct SourceBatch {
    v1: Tensor,
    v2: Tensor,
    /// Items that could not be read: (index, reason).
    skipped: Vec<(usize, String)>,
}

/// Where batches come from: pre-augmented views or a data set augmented on the fly.
enum Source {
    Views(ViewsFile),
    Data(crate::data::TwoViewLoader),
}

impl Source {
    fn open(input: &Input, cfg: &PretrainConfig, threads: usize, device: Device) -> Result<Source> {
        Ok(match input {
            Input::Views { path } => Source::Views(ViewsFile::open(path)?.pinned_for(device)),
            Input::Data { path, root, recipe, strict, shuffle_buffer } => {
                let data = crate::data::open(&crate::data::DataSpec {
                    path: path.clone(),
                    root: root.clone(),
                    strict: *strict,
                })?;
                let lc = crate::data::LoaderConfig {
                    seed: cfg.seed,
                    batch_size: cfg.batch_size,
                    threads,
                    prefetch: 2,
                    shuffle: true,
                    drop_last: true,
                    strict: *strict,
                    shuffle_buffer: *shuffle_buffer,
                };
                Source::Data(
                    crate::data::TwoViewLoader::new(data, (**recipe).clone(), lc)?
                        .with_shard(crate::dist::rank(), crate::dist::world())?
                        .pinned_for(device),
                )
            }
        })
    }

    fn len(&self) -> usize {
        match self {
            Source::Views(v) => v.len(),
            Source::Data(l) => l.dataset().len(),
        }
    }

    /// The name of item `i` (for warnings).
    fn item_name(&self, i: usize) -> String {
        match self {
            Source::Views(v) => format!("{}[{i}]", v.path.display()),
            Source::Data(l) => l.dataset().name(i),
        }
    }

    fn describe(&self) -> Value {
        match self {
            Source::Views(v) => {
                let s = v.data.size();
                serde_json::json!({"input": "views", "path": v.path.display().to_string(), "images": s[0], "size_px": s[4]})
            }
            Source::Data(l) => serde_json::json!({
                "input": "data",
                "data": l.dataset().describe(),
                "images": l.dataset().len(),
                "data_fingerprint": l.dataset().fingerprint(),
                "size_px": l.recipe().size(),
            }),
        }
    }

    /// The batches of `epoch` from step `start` on.
    fn epoch(&self, epoch: u64, start: usize, batch: usize) -> Box<dyn Iterator<Item = Result<SourceBatch>> + '_> {
        match self {
            Source::Views(v) => Box::new((start..v.len() / batch).map(move |k| {
                // this rank's contiguous slice of the global batch k
                let local = batch / crate::dist::world();
                let b = v.data.narrow(0, (k * batch + crate::dist::rank() * local) as i64, local as i64); // [b, 2, 3, h, w]
                                                                                                          // on a GPU: one asynchronous copy of the pinned block, the views split there
                let b = match v.gpu {
                    Some(d) => b.to_device_(d, Kind::Float, true, false),
                    None => b,
                };
                Ok(SourceBatch {
                    v1: b.select(1, 0).contiguous(),
                    v2: b.select(1, 1).contiguous(),
                    skipped: Vec::new(),
                })
            })),
            Source::Data(l) => {
                let gpu = l.pinned();
                Box::new(l.epoch(epoch, start).map(move |b| {
                    b.map(|b| {
                        // pinned batches (a CUDA device): asynchronous copies, queued ahead of the step's kernels
                        let (v1, v2) = match gpu {
                            Some(d) => (
                                b.v1.to_device_(d, Kind::Float, true, false),
                                b.v2.to_device_(d, Kind::Float, true, false),
                            ),
                            None => (b.v1, b.v2),
                        };
                        SourceBatch { v1, v2, skipped: b.skipped }
                    })
                }))
            }
        }
    }
}

/// Pre-augmented views from a `.npy` file, read whole into memory.
struct ViewsFile {
    path: PathBuf,
    data: Tensor, // [N, 2, 3, H, W] float32
    /// The CUDA device the batches go to, when `data` is in pinned memory (asynchronous copies).
    gpu: Option<Device>,
}

/// The largest views file kept in pinned (page-locked) host memory for asynchronous copies to a GPU.
const PIN_LIMIT_BYTES: i64 = 8 << 30;

impl ViewsFile {
    /// For a CUDA `device`: the data in pinned memory (up to [`PIN_LIMIT_BYTES`]), so each batch reaches the GPU in
    /// one asynchronous copy instead of two host copies and a blocking transfer.
    fn pinned_for(mut self, device: Device) -> Self {
        if device.is_cuda() && (self.data.numel() as i64) * 4 <= PIN_LIMIT_BYTES {
            if let Ok(p) = self.data.f_pin_memory(device) {
                self.data = p;
                self.gpu = Some(device);
            }
        }
        self
    }

    fn len(&self) -> usize {
        self.data.size()[0] as usize
    }

    fn open(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("could not read --views {}", path.display()))?;
        let npy = crate::data::npy::open_checked(&bytes[..], bytes.len() as u64)
            .with_context(|| format!("--views {} is not a .npy file", path.display()))?;
        let shape: Vec<i64> = npy.shape().iter().map(|&d| d as i64).collect();
        let dtype = npy.dtype();
        let want = "float32 [N,2,3,H,W] (normalised view pairs, as `augment --out` writes)";
        if shape.len() != 5 || shape[1] != 2 || shape[2] != 3 {
            bail!("--views {}: shape {shape:?}; expected {want}", path.display());
        }
        if dtype != npyz::DType::Plain("<f4".parse().expect("valid type string")) {
            bail!("--views {}: dtype {}; expected {want}", path.display(), dtype.descr());
        }
        if npy.order() != npyz::Order::C {
            bail!("--views {}: Fortran order; expected a C-ordered {want}", path.display());
        }
        let values: Vec<f32> = npy.into_vec().with_context(|| format!("--views {}: truncated data", path.display()))?;
        let data = Tensor::from_slice(&values).view(shape.as_slice());
        Ok(ViewsFile { path: path.to_path_buf(), data, gpu: None })
    }
}

/// Builds the model and optimiser on `device` with the config's seed.
pub fn build(cfg: &PretrainConfig, device: Device) -> Result<(nn::VarStore, Lewel, Optimizer)> {
    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let model = Lewel::new(&vs, &cfg.model)?;
    let opt = Optimizer::new(model.trainable(), &cfg.optim);
    Ok((vs, model, opt))
}

// ---------------------------------------------------------------------------------------------------------------
// The loop core, shared by `pretrain` and `finetune-semi`.
// ---------------------------------------------------------------------------------------------------------------

/// Where the loop stands at a step (given to [`TrainTask::train_step`]).
#[derive(Debug, Clone)]
pub struct StepCtx<'a> {
    /// 0-based epoch.
    pub epoch: u64,
    /// The step within the epoch.
    pub in_epoch: u64,
    pub steps_per_epoch: u64,
    /// 0-based global step (the number of steps taken before this one).
    pub step: u64,
    pub total_steps: u64,
    pub epochs: u64,
    schedule: &'a LrSchedule,
}

impl<'a> StepCtx<'a> {
    /// Global step `step` (0-based) of a run of `epochs` epochs of `steps_per_epoch` steps under `schedule`.
    pub fn at(step: u64, steps_per_epoch: u64, epochs: u64, schedule: &'a LrSchedule) -> Self {
        StepCtx {
            epoch: step / steps_per_epoch,
            in_epoch: step % steps_per_epoch,
            steps_per_epoch,
            step,
            total_steps: steps_per_epoch * epochs,
            epochs,
            schedule,
        }
    }

    /// The scheduled learning rate of this step for base lr `base`.
    pub fn lr(&self, base: f64) -> f64 {
        self.schedule.lr(base, self.epochs, self.epoch, self.in_epoch, self.steps_per_epoch)
    }
}

/// What a step reports.
#[derive(Debug, Clone)]
pub struct StepOut {
    /// The loss before the update. Non-finite: the task must not have updated anything (divergence).
    pub loss: f64,
    /// The main learning rate used (for events and the progress bar).
    pub lr: f64,
    /// Extra numbers for the `step` event (`loss_global`, `ema_momentum`...).
    pub fields: Vec<(&'static str, f64)>,
    /// Messages for `warn` events at this step (e.g. the collapse watch's), emitted whatever `--log-every`.
    pub warnings: Vec<String>,
}

/// One batch from a [`BatchSource`], with what the loader measured and skipped.
pub struct LoopBatch<B> {
    pub data: B,
    /// Seconds the loop waited for the batch (None: measure around the call).
    pub wait_s: Option<f64>,
    /// Items that could not be read: (index, reason).
    pub skipped: Vec<(usize, String)>,
}

/// The training data of a task: deterministic epochs that can start at any step.
pub trait BatchSource {
    type Batch;
    /// Items in the data set.
    fn len(&self) -> usize;
    /// Whether there are no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The name of item `i` (for warnings).
    fn item_name(&self, i: usize) -> String;
    /// The batches of `epoch` from step `start` on (a last partial batch dropped).
    fn epoch(
        &self,
        epoch: u64,
        start: usize,
        batch: usize,
    ) -> Box<dyn Iterator<Item = Result<LoopBatch<Self::Batch>>> + '_>;
}

/// What the loop trains: a model, its optimiser and its periodic evaluation.
pub trait TrainTask {
    type Batch;
    /// One step: forward, loss, and (only for a finite loss) backward and update.
    fn train_step(&mut self, batch: Self::Batch, ctx: &StepCtx) -> Result<StepOut>;
    /// Every tensor of the state to checkpoint (model and optimiser), official names.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores [`TrainTask::state`] from a checkpoint read from `path`.
    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, path: &std::path::Path) -> Result<()>;
    /// Makes every rank's state rank 0's (data parallelism; called before the first step). The default copies all
    /// of [`TrainTask::state`].
    fn broadcast_state(&mut self) -> Result<()> {
        let tensors: Vec<Tensor> = self.state().into_iter().map(|(_, t)| t).collect();
        crate::dist::broadcast_from_main(&tensors)
    }
    /// The periodic evaluation after epoch `epoch` (0-based): fields of the `eval` event, or None. It must not
    /// change the training state.
    fn evaluate(&mut self, epoch: u64, sink: &mut dyn EventSink) -> Result<Option<serde_json::Map<String, Value>>> {
        let _ = (epoch, sink);
        Ok(None)
    }
}

/// What the loop itself needs to know (the task's own settings stay in the task).
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// The tool name in events.
    pub tool: &'static str,
    pub epochs: u64,
    pub batch_size: usize,
    pub schedule: LrSchedule,
    pub seed: u64,
    /// Write a checkpoint every N steps (0 = only at epoch ends).
    pub ckpt_every_steps: u64,
    /// Write a checkpoint every N epochs (0 = never at epoch ends; the final one is always written).
    pub ckpt_every_epochs: u64,
    pub keep_last: usize,
    pub keep_every_epochs: u64,
    /// Run [`TrainTask::evaluate`] after every N-th epoch and after the last (0 = never).
    pub eval_every_epochs: u64,
    /// The sidecar's `config` (must hold `model`: a [`ModelConfig`], so the checkpoints open anywhere).
    pub config: Value,
    /// Extra fields of the `start` event.
    pub start_fields: serde_json::Map<String, Value>,
}

/// One periodic evaluation, as recorded in the checkpoints' sidecars (so a resumed run keeps them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub epoch: u64,
    pub step: u64,
    pub fields: serde_json::Map<String, Value>,
}

/// What [`train_loop`] returns.
#[derive(Debug, Clone)]
pub struct LoopOutcome {
    /// The final checkpoint.
    pub checkpoint: PathBuf,
    /// The global step reached.
    pub step: u64,
    pub total_steps: u64,
    /// Every evaluation of the run, including those before a resume.
    pub evals: Vec<EvalRecord>,
}

/// The training loop: schedule, events, checkpoints (with resume), signals, divergence and periodic evaluation,
/// for any task. See the module docs for the resume semantics.
pub fn train_loop<B>(
    lc: &LoopConfig,
    source: &dyn BatchSource<Batch = B>,
    task: &mut dyn TrainTask<Batch = B>,
    opts: &RunOptions,
    run_dir: &RunDir,
    sink: &mut dyn EventSink,
    progress: &mut dyn FnMut(&StepReport),
) -> Result<LoopOutcome> {
    let tool = lc.tool;
    if lc.batch_size == 0 {
        return Err(LewelError::Usage("--batch-size must be at least 1".into()).into());
    }
    if source.len() < lc.batch_size {
        bail!("--batch-size {} is larger than the data set ({} images); lower it", lc.batch_size, source.len());
    }
    if lc.batch_size % crate::dist::world() != 0 {
        return Err(LewelError::Usage(format!(
            "--batch-size {} (the global batch) must be a multiple of the {} processes",
            lc.batch_size,
            crate::dist::world()
        ))
        .into());
    }
    let spe = (source.len() / lc.batch_size) as u64;
    let total = spe * lc.epochs;

    let mut start_step = 0u64;
    let mut resumed_from = None;
    let mut evals: Vec<EvalRecord> = Vec::new();
    if opts.resume {
        let (loaded, skipped) = ckpt::find_resumable(&run_dir.ckpt_dir())?;
        for why in skipped {
            sink.emit(&Event::new(tool, "warn").str("message", format!("resume: {why}")))?;
        }
        task.load_state(&loaded.tensors, &loaded.path)?;
        start_step = loaded.sidecar.step;
        if let Some(v) = loaded.sidecar.info.get("evals") {
            evals = serde_json::from_value(v.clone())
                .with_context(|| format!("{}: malformed evals", ckpt::sidecar_path(&loaded.path).display()))?;
        }
        resumed_from = Some(loaded.path.display().to_string());
    }
    task.broadcast_state()?;

    let mut start = Event::new(tool, "start")
        .int("seed", lc.seed as i64)
        .str("git_revision", crate::GIT_REVISION)
        .str("device", format!("{:?}", opts.device))
        .int("processes", crate::dist::world() as i64)
        .str("precision", opts.precision.as_str())
        .bool("channels_last", opts.channels_last)
        .int("steps_per_epoch", spe as i64)
        .int("total_steps", total as i64)
        .int("start_step", start_step as i64);
    if let Some(r) = &resumed_from {
        start = start.str("resumed_from", r.clone());
    }
    sink.emit(&start.merge(&lc.start_fields))?;

    let save = |step: u64,
                epoch_end: bool,
                task: &dyn TrainTask<Batch = B>,
                evals: &[EvalRecord],
                sink: &mut dyn EventSink|
     -> Result<PathBuf> {
        let epoch = step / spe.max(1);
        if !crate::dist::is_main() {
            // rank 0 alone writes (the state is the same on every rank)
            return Ok(run_dir.ckpt_dir().join(ckpt::file_name(step)));
        }
        let mut info = serde_json::json!({"config": lc.config, "seed": lc.seed, "epoch_end": epoch_end});
        if !evals.is_empty() {
            info["evals"] = serde_json::to_value(evals)?;
        }
        let p = ckpt::save(&run_dir.ckpt_dir(), step, epoch, &task.state(), &info)?;
        let removed = ckpt::prune(&run_dir.ckpt_dir(), lc.keep_last, lc.keep_every_epochs)?;
        sink.emit(
            &Event::new(tool, "checkpoint")
                .int("step", step as i64)
                .int("epoch", epoch as i64)
                .str("path", p.display().to_string())
                .int("pruned", removed.len() as i64),
        )?;
        Ok(p)
    };

    let t0 = Instant::now();
    let mut last_saved = if resumed_from.is_some() { Some(start_step) } else { None };
    let mut last_path = None;
    let mut step = start_step;
    let mut window = Window::default();
    let stop_at = opts.max_steps.map(|m| m.min(total)).unwrap_or(total);
    // A run interrupted at the end of an epoch whose evaluation was due skipped it (it would have delayed the
    // exit); the resumed run does it first, so the record is the same as without the interruption.
    if resumed_from.is_some() && step > 0 && step % spe == 0 && lc.eval_every_epochs > 0 {
        let epoch = step / spe - 1;
        let due = (epoch + 1) % lc.eval_every_epochs == 0 || step == total;
        if due && !evals.iter().any(|r| r.epoch == epoch) {
            run_eval(tool, task, epoch, step, &mut evals, sink)?;
        }
    }
    let mut batches = source.epoch(step / spe, (step % spe) as usize, lc.batch_size);
    while step < stop_at {
        let epoch = step / spe;
        let wait0 = Instant::now();
        let batch = batches.next().context("the data ended before the epoch did")??;
        let wait_s = batch.wait_s.unwrap_or_else(|| wait0.elapsed().as_secs_f64());
        for (i, why) in &batch.skipped {
            sink.emit(
                &Event::new(tool, "warn")
                    .str("message", format!("skipped {}: {why}", source.item_name(*i)))
                    .int("index", *i as i64)
                    .int("step", step as i64),
            )?;
        }
        let ctx = StepCtx::at(step, spe, lc.epochs, &lc.schedule);
        let t_step = Instant::now();
        let out = task.train_step(batch.data, &ctx)?;
        for w in &out.warnings {
            sink.emit(&Event::new(tool, "warn").str("message", w.clone()).int("step", step as i64 + 1))?;
        }
        let loss = crate::fault::loss_at(step + 1, out.loss);
        if !loss.is_finite() {
            // numbered as the `step` events and checkpoints are: this is step `step + 1`, the last finished `step`
            let mut ev = Event::new(tool, "error")
                .str("message", "training diverged: non-finite loss")
                .int("step", step as i64 + 1)
                .int("epoch", epoch as i64);
            if let Some(l) = window.last_loss {
                ev = ev.num("last_finite_loss", l).int("last_finite_step", step as i64);
            }
            if let Some(s) = last_saved {
                ev = ev.str("last_checkpoint", run_dir.ckpt_dir().join(ckpt::file_name(s)).display().to_string());
            }
            sink.emit(&ev)?;
            return Err(LewelError::Diverged { step: step + 1, loss }.into());
        }
        let busy_s = t_step.elapsed().as_secs_f64();
        step += 1;
        window.add(loss, lc.batch_size, wait_s, busy_s);

        let report = StepReport {
            epoch,
            epochs: lc.epochs,
            step,
            total_steps: total,
            loss,
            lr: out.lr,
            images_per_s: window.images_per_s(),
            data_wait_frac: window.wait_frac(),
        };
        if opts.log_every > 0 && step % opts.log_every == 0 {
            let mut ev = Event::new(tool, "step")
                .int("step", step as i64)
                .int("epoch", epoch as i64)
                .num("loss", loss)
                .num("lr", out.lr);
            for (k, v) in &out.fields {
                ev = ev.num(k, *v);
            }
            sink.emit(
                &ev.num("step_s", busy_s)
                    .num("images_per_s", report.images_per_s)
                    .num("data_wait_frac", report.data_wait_frac),
            )?;
        }
        progress(&report);

        let epoch_end = step % spe == 0;
        if epoch_end {
            sink.emit(
                &Event::new(tool, "epoch")
                    .int("epoch", epoch as i64)
                    .int("step", step as i64)
                    .num("loss_mean", window.epoch_loss_mean())
                    .num("images_per_s", window.images_per_s())
                    .num("data_wait_frac", window.wait_frac())
                    .num("elapsed_s", t0.elapsed().as_secs_f64()),
            )?;
            window.new_epoch();
            let due = lc.eval_every_epochs > 0 && ((epoch + 1) % lc.eval_every_epochs == 0 || step == total);
            if due && !signals::requested() {
                run_eval(tool, task, epoch, step, &mut evals, sink)?;
            }
            if step < stop_at {
                batches = source.epoch(step / spe, 0, lc.batch_size);
            }
        }
        let due = (lc.ckpt_every_steps > 0 && step % lc.ckpt_every_steps == 0)
            || (epoch_end && lc.ckpt_every_epochs > 0 && (step / spe) % lc.ckpt_every_epochs == 0);
        // every rank stops at the same step (a signal may reach the ranks at different times)
        let interrupted = crate::dist::any(signals::requested())?;
        if (due || interrupted || step == stop_at) && last_saved != Some(step) {
            last_path = Some(save(step, epoch_end, &*task, &evals, sink)?);
            last_saved = Some(step);
        }
        if interrupted {
            sink.emit(&Event::new(tool, "end").str("status", "interrupted").int("step", step as i64))?;
            return Err(LewelError::Interrupted.into());
        }
    }
    let path = match last_path {
        Some(p) => p,
        // `--max-steps 0` on a fresh run: the initial state, e.g. as the random-initialisation baseline of an
        // evaluation (epoch 0, not an epoch end)
        None if step == 0 && last_saved.is_none() => save(0, false, &*task, &evals, sink)?,
        None if !crate::dist::is_main() => run_dir.ckpt_dir().join(ckpt::LATEST),
        None => ckpt::resolve(&run_dir.ckpt_dir().join(ckpt::LATEST))?,
    };
    sink.emit(
        &Event::new(tool, "end")
            .str("status", if step >= total { "finished" } else { "max-steps" })
            .int("step", step as i64)
            .str("checkpoint", path.display().to_string())
            .num("elapsed_s", t0.elapsed().as_secs_f64()),
    )?;
    Ok(LoopOutcome { checkpoint: path, step, total_steps: total, evals })
}

/// Runs the task's evaluation after `epoch`, emits the `eval` event and records it.
fn run_eval<B>(
    tool: &str,
    task: &mut dyn TrainTask<Batch = B>,
    epoch: u64,
    step: u64,
    evals: &mut Vec<EvalRecord>,
    sink: &mut dyn EventSink,
) -> Result<()> {
    let te = Instant::now();
    if let Some(fields) = task.evaluate(epoch, sink)? {
        sink.emit(
            &Event::new(tool, "eval")
                .int("epoch", epoch as i64)
                .int("step", step as i64)
                .merge(&fields)
                .num("eval_s", te.elapsed().as_secs_f64()),
        )?;
        evals.push(EvalRecord { epoch, step, fields });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Pre-training as a task of the loop.
// ---------------------------------------------------------------------------------------------------------------

impl BatchSource for Source {
    type Batch = (Tensor, Tensor);
    fn len(&self) -> usize {
        Source::len(self)
    }
    fn item_name(&self, i: usize) -> String {
        Source::item_name(self, i)
    }
    fn epoch(
        &self,
        epoch: u64,
        start: usize,
        batch: usize,
    ) -> Box<dyn Iterator<Item = Result<LoopBatch<(Tensor, Tensor)>>> + '_> {
        // The loop measures the wait around the whole call (wait_s None): the loader's own `wait_s`, the time
        // blocked on its channel, leaves out the copy of the batch into tensors, which the step also waits for.
        Box::new(
            Source::epoch(self, epoch, start, batch)
                .map(|b| b.map(|b| LoopBatch { data: (b.v1, b.v2), wait_s: None, skipped: b.skipped })),
        )
    }
}

/// The pre-training step (the loss of the method, the optimiser, the EMA of the target) and the kNN monitor.
struct PretrainTask<'a> {
    cfg: &'a PretrainConfig,
    model: Lewel,
    opt: Optimizer,
    device: Device,
    monitor: Option<crate::monitor::KnnMonitor>,
    /// Data parallelism: the BN running statistics (broadcast from rank 0 before each step, as DDP does) and
    /// the gradient averaging, overlapped with the backward pass. Empty / None on one process.
    bn_buffers: Vec<Tensor>,
    reducer: Option<crate::dist::GradReducer>,
    precision: Precision,
    channels_last: bool,
    /// The fp16 loss scaler (None for fp32 and bf16).
    scaler: Option<GradScaler>,
    /// The collapse watch (made at the first step, which knows the run's length).
    watch: Option<crate::diagnose::CollapseWatch>,
}

impl<'a> PretrainTask<'a> {
    /// The task on `opts.device`, with the mixed-precision settings of `opts`: with `channels_last` the model's
    /// 4-D weights (online and target) are laid out channels-last here, before any step or resume.
    fn new(
        cfg: &'a PretrainConfig,
        model: Lewel,
        opt: Optimizer,
        opts: &RunOptions,
        monitor: Option<crate::monitor::KnnMonitor>,
    ) -> Result<Self> {
        if opts.channels_last {
            amp::to_channels_last(model.state_dict().into_iter().map(|(_, t)| t))?;
        }
        let scaler = GradScaler::for_precision(opts.precision, opts.loss_scale_init, opts.device)
            .context("--loss-scale-init")?;
        let (bn_buffers, reducer) = if crate::dist::active() {
            let sd = model.state_dict();
            let bufs = sd.into_iter().filter(|(k, _)| k.contains(".running_")).map(|(_, t)| t).collect();
            let params: Vec<Tensor> = model.trainable().into_iter().map(|(_, t)| t).collect();
            (bufs, crate::dist::GradReducer::new(&params)?)
        } else {
            (Vec::new(), None)
        };
        Ok(PretrainTask {
            cfg,
            model,
            opt,
            device: opts.device,
            monitor,
            bn_buffers,
            reducer,
            precision: opts.precision,
            channels_last: opts.channels_last,
            scaler,
            watch: None,
        })
    }
}

impl TrainTask for PretrainTask<'_> {
    type Batch = (Tensor, Tensor);

    /// With `fp16` the step is PyTorch's GradScaler recipe: backward of the scaled loss, unscale, optimiser step
    /// unless a gradient is inf or NaN, scale update; the EMA update runs either way (official loop).
    fn train_step(&mut self, (v1, v2): (Tensor, Tensor), ctx: &StepCtx) -> Result<StepOut> {
        let (v1, v2) = (v1.to_device(self.device), v2.to_device(self.device));
        let (v1, v2) = (amp::input_layout(v1, self.channels_last)?, amp::input_layout(v2, self.channels_last)?);
        let lr = ctx.lr(self.cfg.lr);
        let m = self.cfg.ema_schedule.momentum(self.cfg.ema_momentum, ctx.step, ctx.total_steps);
        crate::dist::broadcast_from_main(&self.bn_buffers)?;
        let mut terms = self.model.forward_loss_amp(&v1, &v2, self.precision)?;
        if crate::fault::active().negated_loss {
            terms.total = -&terms.total;
        }
        let loss = terms.total.to_kind(Kind::Double).double_value(&[]);
        // the mean over the ranks (so every rank sees a divergence at the same step); identity on one process
        let entropy = terms.map_entropy_ratio.unwrap_or(f64::NAN);
        let (loss, terms_global, terms_aligned, terms_std, target_std, entropy) = if crate::dist::active() {
            let v = crate::dist::mean(&[
                loss,
                terms.global,
                terms.aligned,
                terms.collapse_std,
                terms.target_collapse_std,
                entropy,
            ])?;
            (v[0], v[1], v[2], v[3], v[4], v[5])
        } else {
            (loss, terms.global, terms.aligned, terms.collapse_std, terms.target_collapse_std, entropy)
        };
        if !loss.is_finite() {
            return Ok(StepOut { loss, lr, fields: Vec::new(), warnings: Vec::new() });
        }
        let scaling =
            backward_and_update(&terms.total, &mut self.opt, self.scaler.as_mut(), self.reducer.as_mut(), |opt| {
                opt.step(lr)
            })?;
        if !crate::fault::active().frozen_ema {
            self.model.momentum_update(m);
        }
        let mut fields = vec![
            ("loss_global", terms_global),
            ("loss_aligned", terms_aligned),
            ("ema_momentum", m),
            ("collapse_std", terms_std),
            ("target_collapse_std", target_std),
        ];
        if entropy.is_finite() {
            fields.push(("map_entropy_ratio", entropy));
        }
        let ratios = self.opt.update_ratios();
        if !ratios.is_empty() {
            let mut r = ratios.to_vec();
            r.sort_by(f64::total_cmp);
            fields.push(("update_ratio_median", r[r.len() / 2]));
            fields.push(("update_ratio_min", r[0]));
        }
        fields.extend(scaling);
        let watch = self.watch.get_or_insert_with(|| {
            crate::diagnose::CollapseWatch::new(self.cfg.model.method, self.cfg.model.proj_dim, ctx.total_steps)
        });
        let warnings = watch.observe(ctx.step + 1, loss, terms_std).into_iter().collect();
        Ok(StepOut { loss, lr, fields, warnings })
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = self.model.state_dict();
        s.extend(self.opt.state());
        if let Some(scaler) = &self.scaler {
            s.extend(scaler.state());
        }
        s
    }

    /// A checkpoint without scaler state (an fp32 or bf16 run resumed with `fp16`) starts the scaler afresh.
    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, path: &std::path::Path) -> Result<()> {
        ckpt::load_model_state(&self.model, tensors, path)?;
        self.opt.load_state(tensors).with_context(|| format!("{}: optimiser state", path.display()))?;
        if let Some(scaler) = &mut self.scaler {
            scaler.load_state(tensors).with_context(|| format!("{}: loss-scaler state", path.display()))?;
        }
        Ok(())
    }

    fn evaluate(&mut self, _epoch: u64, sink: &mut dyn EventSink) -> Result<Option<serde_json::Map<String, Value>>> {
        match &self.monitor {
            Some(m) => Ok(Some(m.evaluate(&self.model, self.device, TOOL, sink)?)),
            None => Ok(None),
        }
    }
}

/// The backward pass and the update of both training tasks (pre-training and finetune-semi): the gradients
/// zeroed, the backward pass of `loss` (scaled by the fp16 loss scaler when there is one), the gradients
/// averaged over the ranks when there is a `reducer` (while still scaled, as DDP does before GradScaler unscales:
/// every rank then finds the same infs and skips the same steps), then `update` unless the scaler finds an inf or
/// NaN gradient (PyTorch's GradScaler recipe, [`crate::amp`]). Returns the scaler's fields of the step event
/// (`loss_scale`, `skipped_steps`), none without a scaler.
pub fn backward_and_update(
    loss: &Tensor,
    opt: &mut Optimizer,
    scaler: Option<&mut GradScaler>,
    mut reducer: Option<&mut crate::dist::GradReducer>,
    update: impl FnOnce(&mut Optimizer),
) -> Result<Vec<(&'static str, f64)>> {
    opt.zero_grad();
    if let Some(r) = reducer.as_mut() {
        r.prepare()?;
    }
    match scaler {
        None => {
            loss.f_backward().map_err(crate::dist::backward_error)?;
            if let Some(r) = reducer.as_mut() {
                r.finish()?;
            }
            update(opt);
            Ok(Vec::new())
        }
        Some(scaler) => {
            let used = scaler.scale()?;
            scaler.scale_loss(loss)?.f_backward().map_err(crate::dist::backward_error)?;
            if let Some(r) = reducer.as_mut() {
                r.finish()?;
            }
            scaler.step(&opt.grads(), || update(opt))?;
            Ok(vec![("loss_scale", used), ("skipped_steps", scaler.skipped_steps() as f64)])
        }
    }
}

/// Prepares a `--resume`: deletes the temp files a killed process left in `ckpt/` (each reported as a `warn`
/// event), and, when the run stopped before its first complete checkpoint (killed during its first steps or its
/// first checkpoint write: a checkpoint file without its sidecar is an interrupted write), starts it over
/// (`resume: false`, with a `warn` event): nothing was lost, and the restarted run is the one an uninterrupted run
/// would have been. Other options are returned as they are.
pub fn prepare_resume(opts: &RunOptions, run_dir: &RunDir, tool: &str, sink: &mut dyn EventSink) -> Result<RunOptions> {
    let mut opts = opts.clone();
    if !opts.resume {
        return Ok(opts);
    }
    let dir = run_dir.ckpt_dir();
    if crate::dist::is_main() {
        // fail now, not at the first checkpoint after hours of work
        crate::fsio::ensure_writable_dir(&dir)?;
        for p in crate::fsio::remove_stale_temps(&dir) {
            sink.emit(
                &Event::new(tool, "warn")
                    .str("message", format!("resume: deleted {}, left by an interrupted write", p.display())),
            )?;
        }
    }
    // a checkpoint file without its sidecar is one whose write was interrupted (the sidecar comes second)
    if !ckpt::list(&dir)?.iter().any(|(_, p)| ckpt::sidecar_path(p).is_file()) {
        sink.emit(&Event::new(tool, "warn").str(
            "message",
            format!(
                "resume: {} holds no checkpoint yet (the run stopped before its first); starting it over",
                dir.display()
            ),
        ))?;
        opts.resume = false;
    }
    Ok(opts)
}

/// Where the values of a pre-training configuration came from: the preset (the user's or the default) or the
/// run's `config.json`, and the flags the user gave. A value that does not fit the data or another setting is
/// refused naming its source and the flag to change (a preset's queue of 4096 keys on a data set of 500 images
/// reads as `--queue-size 4096 (set by the preset small-lewelm)`, not as if the user had typed it).
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// `the preset small-lewelm`, `the default preset in1k-lewelb-eman-200ep`, `run1/config.json`; empty: unknown.
    source: String,
    /// The flags the user gave (`--queue-size`, ...).
    given: Vec<&'static str>,
}

impl Origins {
    /// Values from the preset `name` (`chosen`: named by `--preset`, else the default) under the flags `given`.
    pub fn preset(name: &str, chosen: bool, given: Vec<&'static str>) -> Origins {
        let which = if chosen { "the preset" } else { "the default preset" };
        Origins { source: format!("{which} {name}"), given }
    }

    /// Values from a resumed run's configuration.
    pub fn resumed(run_dir: &RunDir) -> Origins {
        Origins { source: format!("the run's {}", run_dir.config_path().display()), given: Vec::new() }
    }

    /// `FLAG VALUE`, then where the value came from when the user did not give the flag.
    pub fn value(&self, flag: &'static str, value: impl std::fmt::Display) -> String {
        if self.given.contains(&flag) || self.source.is_empty() {
            format!("{flag} {value}")
        } else {
            format!("{flag} {value} (set by {})", self.source)
        }
    }
}

/// The warm-up must end before the run does (else the lr never reaches `--lr`): `--warmup-epochs` 0, or fewer than
/// `--epochs`. Checked at a fresh start, before anything is written.
pub fn check_warmup(cfg: &PretrainConfig, origins: &Origins) -> Result<(), LewelError> {
    let (w, e) = (cfg.warmup_epochs, cfg.epochs);
    if w == 0 || w < e {
        return Ok(());
    }
    Err(LewelError::Usage(format!(
        "{} is not shorter than {}: the lr would still be warming up when the run ends and never reach --lr; give \
         {}, or more --epochs",
        origins.value("--warmup-epochs", w),
        origins.value("--epochs", e),
        if e <= 1 {
            "--warmup-epochs 0 (no warm-up)".to_string()
        } else {
            format!("--warmup-epochs {} or less (0: no warm-up)", e - 1)
        }
    )))
}

/// The batch and the MoCo key queue against the data: a batch no larger than the data set, and (LEWEL_M, MoCo v2)
/// a queue that holds at least the `2 x batch` keys one step enqueues and at most the images one epoch uses (a
/// longer queue would hold several keys of one image). Each refusal names where the value came from.
pub fn check_fits_data(cfg: &PretrainConfig, images: usize, origins: &Origins) -> Result<(), LewelError> {
    let batch = cfg.batch_size;
    if batch == 0 {
        return Err(LewelError::Usage(format!("{} must be at least 1", origins.value("--batch-size", batch))));
    }
    if images < batch {
        return Err(LewelError::Usage(format!(
            "{} is larger than the data set ({images} images); give --batch-size {images} or less",
            origins.value("--batch-size", batch)
        )));
    }
    if !cfg.model.method.contrastive() {
        return Ok(());
    }
    let per_epoch = images / batch * batch;
    let k = cfg.model.queue_size.max(0) as usize;
    let (queue, batch_of) = (origins.value("--queue-size", k), origins.value("--batch-size", batch));
    if k > per_epoch {
        return Err(LewelError::Usage(format!(
            "{queue} is larger than the data allows: the data set has {images} images, of which an epoch uses \
             {per_epoch} at {batch_of}; a queue that long would hold several keys of one image; give --queue-size \
             {per_epoch} or less"
        )));
    }
    if k < 2 * batch {
        return Err(LewelError::Usage(format!(
            "{queue} is smaller than the {} keys one step enqueues (both views of {batch_of}); give --queue-size {} \
             or more, or a smaller --batch-size",
            2 * batch,
            2 * batch
        )));
    }
    Ok(())
}

/// Runs (or resumes) pre-training. Returns the path of the final checkpoint. `origins` says where the
/// configuration's values came from, for the refusals of values that do not fit the data.
pub fn run(
    cfg: &PretrainConfig,
    opts: &RunOptions,
    origins: &Origins,
    run_dir: &RunDir,
    sink: &mut dyn EventSink,
    progress: &mut dyn FnMut(&StepReport),
) -> Result<PathBuf> {
    // a lengthening this resume makes (`extend`): the configuration has more of them than the folder's
    let stored = if opts.resume { Some(run_dir.read_config()?) } else { None };
    let extension = stored.as_ref().and_then(|s| {
        let before = s["pretrain"]["extended"].as_array().map_or(0, Vec::len);
        cfg.extended.get(before..).and_then(|new| new.last()).cloned()
    });
    let opts = &prepare_resume(opts, run_dir, TOOL, sink)?;
    let source = Source::open(&cfg.input, cfg, opts.threads, opts.device)?;
    check_fits_data(cfg, source.len(), origins)?;
    let spe = (source.len() / cfg.batch_size) as u64;
    let warmup_steps = cfg.warmup_epochs * spe;
    if let (false, Some(m)) = (opts.resume, opts.max_steps) {
        // --max-steps 0 is no training at all (the random backbone), not a run cut short
        if m > 0 && m < warmup_steps && m < spe * cfg.epochs {
            sink.emit(&Event::new(TOOL, "warn").str(
                "message",
                format!(
                    "--max-steps {m} stops the run inside its warm-up ({} = {warmup_steps} steps): the lr has not \
                     reached --lr {} yet; a later --resume continues the run, or give --warmup-epochs 0 for a short \
                     run at the full lr",
                    origins.value("--warmup-epochs", cfg.warmup_epochs),
                    cfg.lr
                ),
            ))?;
        }
    }
    let monitor = match &cfg.knn_monitor {
        Some(k) => Some(crate::monitor::KnnMonitor::open(k, &eval_recipe(cfg)?, opts.threads)?),
        None => None,
    };

    if let Device::Cuda(_) = opts.device {
        // fixed input shapes: let cuDNN pick its fastest kernels once (as the official main_lewel.py does)
        tch::Cuda::cudnn_set_benchmark(true);
    }
    // Data parallelism: each rank builds the model with its share of the global batch's BN slices.
    let local = local_model(&cfg.model)?;
    crate::model::batchnorm::set_sync(cfg.model.sync_bn);
    let (_vs, model, opt) = build(&PretrainConfig { model: local, ..cfg.clone() }, opts.device)?;
    if !opts.resume {
        if let Some(init) = &cfg.init {
            let tensors: HashMap<String, Tensor> = ckpt::read_safetensors(init)?.into_iter().collect();
            let counters = ckpt::load_model_state(&model, &tensors, init)?;
            if counters > 0 {
                sink.emit(&Event::new(TOOL, "warn").str("message", ckpt::counters_note(init, counters)))?;
            }
        }
    }

    let cfg_json = serde_json::to_value(cfg)?;
    let described = source.describe();
    if let Some(e) = &extension {
        sink.emit(&Event::new(TOOL, "warn").str("message", e.note()))?;
    }
    if let (true, Some(stored)) = (opts.resume, &stored) {
        if extension.is_some() && crate::dist::is_main() {
            // the data the run started with stay recorded (the check below compares against them)
            run_dir.write_config(&serde_json::json!({ "pretrain": cfg_json, "data": stored["data"] }))?;
        }
        if stored.get("data").is_some_and(|d| *d != described) {
            sink.emit(&Event::new(TOOL, "warn").str(
                "message",
                format!(
                    "the data differ from those the run started with ({} then, {} now); the resumed run is not an exact continuation",
                    stored["data"], described
                ),
            ))?;
        }
    } else if crate::dist::is_main() {
        run_dir.write_config(&serde_json::json!({ "pretrain": cfg_json, "data": described }))?;
    }
    let lc = LoopConfig {
        tool: TOOL,
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        schedule: lr_schedule(cfg),
        seed: cfg.seed,
        ckpt_every_steps: cfg.ckpt_every_steps,
        ckpt_every_epochs: cfg.ckpt_every_epochs,
        keep_last: cfg.keep_last,
        keep_every_epochs: cfg.keep_every_epochs,
        eval_every_epochs: cfg.knn_monitor.as_ref().map_or(0, |k| k.every_epochs),
        config: cfg_json.clone(),
        start_fields: {
            let mut m = flatten(&cfg_json);
            m.extend(flatten(&described));
            m
        },
    };
    let mut task = PretrainTask::new(cfg, model, opt, opts, monitor)?;
    Ok(train_loop(&lc, &source, &mut task, opts, run_dir, sink, progress)?.checkpoint)
}

/// The learning-rate schedule of a pre-training run: per-step warm-up over `warmup_epochs`, then the cosine.
fn lr_schedule(cfg: &PretrainConfig) -> LrSchedule {
    LrSchedule::WarmupCosine { warmup_epochs: cfg.warmup_epochs }
}

/// The pre-training step that `pretrain` ships, outside the loop: the golden tests (`lib/tests/golden.rs`) drive
/// it, so the values they pin are those of the code that trains. [`PretrainStep::step`] performs global step
/// `step` exactly as [`train_loop`] does in [`run`]: the views moved to the device (channels-last with `opts`),
/// the loss of the method in `opts.precision`, the backward pass and the optimiser step with the lr of the
/// config's warm-up and cosine ([`crate::schedule::lr_at`]), the fp16 loss scaler of `opts`, then the target's EMA
/// update with the momentum of `cfg.ema_schedule` over the run's `epochs x steps_per_epoch` steps. Nothing else of
/// the loop (events, checkpoints, the kNN monitor) runs.
pub struct PretrainStep<'a> {
    task: PretrainTask<'a>,
    schedule: LrSchedule,
    steps_per_epoch: u64,
}

impl<'a> PretrainStep<'a> {
    /// The step of a run of `cfg` with `steps_per_epoch` steps an epoch, on `model` and `opt` (as [`build`]
    /// makes them).
    pub fn new(
        cfg: &'a PretrainConfig,
        model: Lewel,
        opt: Optimizer,
        opts: &RunOptions,
        steps_per_epoch: u64,
    ) -> Result<Self> {
        if steps_per_epoch == 0 {
            bail!("a run needs at least one step an epoch");
        }
        Ok(PretrainStep {
            task: PretrainTask::new(cfg, model, opt, opts, None)?,
            schedule: lr_schedule(cfg),
            steps_per_epoch,
        })
    }

    /// Global step `step` (0-based) on the views `v1`, `v2`: what the loop reports of it (the loss before the
    /// update, the lr, the fields of the `step` event such as `ema_momentum`).
    pub fn step(&mut self, step: u64, v1: Tensor, v2: Tensor) -> Result<StepOut> {
        let ctx = StepCtx::at(step, self.steps_per_epoch, self.task.cfg.epochs, &self.schedule);
        self.task.train_step((v1, v2), &ctx)
    }

    /// The model being trained.
    pub fn model(&self) -> &Lewel {
        &self.task.model
    }

    /// The optimiser.
    pub fn optimizer(&self) -> &Optimizer {
        &self.task.opt
    }
}

/// The model configuration of this rank: `bn_splits` counts slices of the global batch, so each of N ranks
/// normalises `bn_splits / N` slices of its own (1 when `bn_splits` is 1: per-device BN, as DDP without SyncBN).
fn local_model(m: &ModelConfig) -> Result<ModelConfig> {
    let world = crate::dist::world() as i64;
    if world == 1 {
        return Ok(m.clone());
    }
    let splits = match m.bn_splits {
        1 => 1,
        s if s % world == 0 => s / world,
        s => {
            return Err(LewelError::Usage(format!(
                "--bn-splits {s} counts slices of the global batch: it must be 1 or a multiple of the {world} processes"
            ))
            .into())
        }
    };
    Ok(ModelConfig { bn_splits: splits, ..m.clone() })
}

/// The evaluation transform of the kNN monitor: the training recipe's (its `eval_resize` / `eval_crop`), else the
/// stem's default (`lewel-b-small` for the CIFAR stem, `lewel-b` otherwise).
fn eval_recipe(cfg: &PretrainConfig) -> Result<crate::data::Recipe> {
    match &cfg.input {
        Input::Data { recipe, .. } => Ok((**recipe).clone()),
        Input::Views { .. } => crate::data::Recipe::preset(if cfg.model.stem == crate::model::Stem::Cifar {
            "lewel-b-small"
        } else {
            "lewel-b"
        }),
    }
}

/// Flattens a JSON object one level (`model.arch`, `optim.kind`...), for the `start` event.
pub fn flatten(v: &Value) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    fn go(prefix: &str, v: &Value, out: &mut serde_json::Map<String, Value>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    go(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    go("", v, &mut out);
    out
}

/// Running throughput and loss figures.
#[derive(Default)]
struct Window {
    images: usize,
    wait_s: f64,
    busy_s: f64,
    epoch_loss_sum: f64,
    epoch_steps: u64,
    last_loss: Option<f64>,
}

impl Window {
    fn add(&mut self, loss: f64, images: usize, wait_s: f64, busy_s: f64) {
        self.images += images;
        self.wait_s += wait_s;
        self.busy_s += busy_s;
        self.epoch_loss_sum += loss;
        self.epoch_steps += 1;
        self.last_loss = Some(loss);
    }
    fn images_per_s(&self) -> f64 {
        let t = self.wait_s + self.busy_s;
        if t > 0.0 {
            self.images as f64 / t
        } else {
            0.0
        }
    }
    fn wait_frac(&self) -> f64 {
        let t = self.wait_s + self.busy_s;
        if t > 0.0 {
            self.wait_s / t
        } else {
            0.0
        }
    }
    fn epoch_loss_mean(&self) -> f64 {
        self.epoch_loss_sum / self.epoch_steps.max(1) as f64
    }
    fn new_epoch(&mut self) {
        *self = Window { last_loss: self.last_loss, ..Window::default() };
    }
}

/// The preset used when `--preset` is not given: the official recipe.
pub const DEFAULT_PRESET: &str = "in1k-lewelb-eman-200ep";

/// The names of the presets, for error messages and help.
pub const PRESETS: &[&str] = &[
    "in1k-lewelb-eman-200ep",
    "in1k-lewelb-syncbn-400ep",
    "in1k-lewelm-200ep",
    "in1k-mocov2-200ep",
    "small-lewelb",
    "small-byol",
    "small-lewelm",
    "small-mocov2",
];

/// A named configuration (the input is left as an empty views path; the tool sets it).
///
/// - `in1k-lewelb-eman-200ep`: `scripts/srun_lewelb_eman.sh` (§5.4): ResNet-50, batch 1024, LARS lr 3.6,
///   wd 1.5e-6, base momentum 0.98, 200 epochs, warm-up 10, EMAN; BN over 8 slices of 128, as the
///   official per-GPU BN on 8 GPUs.
/// - `in1k-lewelb-syncbn-400ep`: `scripts/srun_lewelb.sh`: batch 4096, lr 7.2, wd 1e-6, momentum 0.996,
///   400 epochs, EMA of parameters (LEWELB), BN over the whole batch (SyncBN).
/// - `small-lewelb` / `small-byol`: what a 2-core CPU can run, chosen by a search on held-out data
///   (`benches/learning/2026-12-07-cpu-guard-sweep`): ResNet-18, CIFAR stem, width 16, K 128, hidden 512,
///   G 4, batch 64, LARS eta 0.02 clipped at the base lr (`--lars-clip`), lr 2.0, wd 1e-5, EMA of the
///   parameters with base momentum 0.9 (cosine to 1), warm-up 1 of 10 epochs. The earlier preset (EMAN 0.996,
///   eta 0.001, lr 0.3) ended below its random backbone.
/// - `in1k-lewelm-200ep`: LEWEL_M as the paper states it (§1.9): ResNet-50, K 128, hidden 2048, G 4, SGD
///   momentum 0.9, batch 256, lr 0.06, wd 1e-4, cosine without warm-up, 200 epochs, fixed momentum 0.999 (EMA of
///   parameters, target BN in train mode with ShuffleBN), τ 0.2, queue 65536; BN over 8 slices of 32, as MoCo's
///   per-GPU BN on 8 GPUs. `in1k-mocov2-200ep`: the same recipe for the MoCo v2 baseline.
/// - `small-lewelm` / `small-mocov2`: the small-lewelb network with the LEWEL_M recipe scaled to small data as
///   MoCo's CIFAR-10 demo does: momentum 0.99, wd 5e-4, queue 4096, 8 BN slices; batch 256, lr 0.06, τ 0.2,
///   10 epochs (`docs/lewel-m.md`).
pub fn preset(name: &str) -> Result<PretrainConfig> {
    use crate::model::{Arch, EmaMode, Method, Stem};
    use crate::optim::OptimizerKind;
    use crate::schedule::EmaSchedule;
    let official = ModelConfig::default();
    let lars = |wd: f64, ema: EmaMode| OptimConfig {
        kind: OptimizerKind::Lars,
        weight_decay: wd,
        ema,
        ..OptimConfig::default()
    };
    let base = PretrainConfig {
        model: ModelConfig { bn_splits: 8, ..official.clone() },
        optim: lars(1.5e-6, EmaMode::Eman),
        lr: 3.6,
        warmup_epochs: 10,
        epochs: 200,
        batch_size: 1024,
        ema_momentum: 0.98,
        ema_schedule: EmaSchedule::Cosine,
        seed: crate::cli::DEFAULT_SEED,
        ckpt_every_steps: 0,
        ckpt_every_epochs: 1,
        keep_last: 3,
        keep_every_epochs: 20,
        input: Input::Views { path: PathBuf::new() },
        init: None,
        knn_monitor: None,
        extended: Vec::new(),
    };
    let small_model = ModelConfig {
        method: Method::LewelB,
        arch: Arch::Resnet18,
        stem: Stem::Cifar,
        width: 16,
        proj_dim: 128,
        hidden_dim: 512,
        groups: 4,
        map_scale: 1.0,
        alpha: 0.5,
        ema: EmaMode::Eman,
        bn_splits: 1,
        sync_bn: false,
        temperature: 0.2,
        queue_size: 4096,
    };
    // The held-out search of benches/learning/2026-12-07-cpu-guard-sweep: an EMA of the parameters (target BN
    // in train mode) instead of EMAN, a fast target (base momentum 0.9) and LARS with eta 0.02 clipped at
    // the base lr, so that the convolutions move (the official eta 0.001 left them at their initialisation).
    let small = PretrainConfig {
        model: ModelConfig { ema: EmaMode::Params, ..small_model.clone() },
        optim: OptimConfig { eta: 0.02, clip: true, ..lars(1e-5, EmaMode::Params) },
        lr: 2.0,
        warmup_epochs: 1,
        epochs: 10,
        batch_size: 64,
        ema_momentum: 0.9,
        keep_every_epochs: 0,
        ..base.clone()
    };
    let sgd = |wd: f64| OptimConfig {
        kind: OptimizerKind::Sgd,
        momentum: 0.9,
        weight_decay: wd,
        ema: EmaMode::Params,
        ..OptimConfig::default()
    };
    let lewelm = PretrainConfig {
        model: ModelConfig {
            method: Method::LewelM,
            proj_dim: 128,
            hidden_dim: 2048,
            ema: EmaMode::Params,
            bn_splits: 8,
            temperature: 0.2,
            queue_size: 65536,
            ..official.clone()
        },
        optim: sgd(1e-4),
        lr: 0.06,
        warmup_epochs: 0,
        epochs: 200,
        batch_size: 256,
        ema_momentum: 0.999,
        ema_schedule: EmaSchedule::Constant,
        ..base.clone()
    };
    let small_lewelm = PretrainConfig {
        model: ModelConfig { method: Method::LewelM, ema: EmaMode::Params, bn_splits: 8, ..small_model.clone() },
        optim: sgd(5e-4),
        lr: 0.06,
        warmup_epochs: 0,
        batch_size: 256,
        ema_momentum: 0.99,
        ema_schedule: EmaSchedule::Constant,
        ..small.clone()
    };
    Ok(match name {
        "in1k-lewelb-eman-200ep" => base,
        "in1k-lewelb-syncbn-400ep" => PretrainConfig {
            model: ModelConfig { ema: EmaMode::Params, bn_splits: 1, sync_bn: true, ..official },
            optim: lars(1e-6, EmaMode::Params),
            lr: 7.2,
            epochs: 400,
            batch_size: 4096,
            ema_momentum: 0.996,
            ..base
        },
        "small-lewelb" => small,
        "small-byol" => PretrainConfig { model: ModelConfig { method: Method::Byol, ..small.model.clone() }, ..small },
        "in1k-lewelm-200ep" => lewelm,
        "in1k-mocov2-200ep" => {
            PretrainConfig { model: ModelConfig { method: Method::MocoV2, ..lewelm.model }, ..lewelm }
        }
        "small-lewelm" => small_lewelm,
        "small-mocov2" => {
            PretrainConfig { model: ModelConfig { method: Method::MocoV2, ..small_lewelm.model }, ..small_lewelm }
        }
        other => {
            return Err(
                LewelError::Usage(format!("unknown --preset {other:?}; choose one of {}", PRESETS.join(", "))).into()
            )
        }
    })
}

/// The configuration keys whose values differ between two configurations (`model.lr: 0.1 -> 0.2`).
pub fn differences(a: &PretrainConfig, b: &PretrainConfig) -> Vec<String> {
    let (fa, fb) =
        (flatten(&serde_json::to_value(a).unwrap_or_default()), flatten(&serde_json::to_value(b).unwrap_or_default()));
    let mut out = Vec::new();
    for (k, va) in &fa {
        let vb = fb.get(k).cloned().unwrap_or(Value::Null);
        if *va != vb {
            out.push(format!("{k}: {va} -> {vb}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Method;

    fn moco(queue: i64, batch: usize) -> PretrainConfig {
        let mut c = preset("small-lewelm").unwrap();
        c.model.queue_size = queue;
        c.batch_size = batch;
        c
    }

    #[test]
    fn batch_and_queue_must_fit_the_data_and_name_their_source() {
        let from_preset = Origins::preset("small-lewelm", true, Vec::new());
        let err = check_fits_data(&moco(4096, 256), 1000, &from_preset).unwrap_err().to_string();
        assert!(
            err.contains("--queue-size 4096 (set by the preset small-lewelm)")
                && err.contains("1000 images")
                && err.contains("give --queue-size 768 or less"),
            "{err}"
        );
        let typed = Origins::preset("small-lewelm", true, vec!["--queue-size", "--batch-size"]);
        let err = check_fits_data(&moco(4096, 4096), 100_000, &typed).unwrap_err().to_string();
        assert!(err.contains("--queue-size 4096 is smaller") && err.contains("8192"), "{err}");
        assert!(check_fits_data(&moco(4096, 256), 50_000, &typed).is_ok());
        assert!(check_fits_data(&moco(4096, 256), 4096, &typed).is_ok());
        let err = check_fits_data(&moco(4096, 256), 100, &Origins::preset("x", false, Vec::new())).unwrap_err();
        assert!(err.to_string().contains("--batch-size 256 (set by the default preset x) is larger"), "{err}");
        // LEWEL_B has no queue: nothing to check
        let mut b = moco(4096, 4);
        b.model.method = Method::LewelB;
        assert!(check_fits_data(&b, 10, &typed).is_ok());
    }

    #[test]
    fn warmup_must_end_before_the_run() {
        let mut c = preset("small-lewelb").unwrap(); // warm-up 1 of 10 epochs
        let o = Origins::preset("small-lewelb", true, vec!["--epochs"]);
        assert!(check_warmup(&c, &o).is_ok());
        c.epochs = 1;
        let err = check_warmup(&c, &o).unwrap_err().to_string();
        assert!(err.starts_with("--warmup-epochs 1 (set by the preset small-lewelb) is not shorter than --epochs 1"));
        assert!(err.contains("give --warmup-epochs 0 (no warm-up)"), "{err}");
        (c.epochs, c.warmup_epochs) = (3, 3);
        let err = check_warmup(&c, &o).unwrap_err().to_string();
        assert!(err.contains("give --warmup-epochs 2 or less (0: no warm-up), or more --epochs"), "{err}");
        c.warmup_epochs = 0;
        assert!(check_warmup(&c, &o).is_ok());
    }
}
