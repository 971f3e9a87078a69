//! The linear probe: a linear classifier trained on frozen features, scored on a held-out split.
//!
//! Ports the protocol of the official `main_lincls.py` (`reference/lewel-official.md` §6.1) to cached
//! features: an `fc` layer (weights N(0, 0.01), bias 0), softmax cross-entropy, no augmentation (the
//! features are fixed), the learning rate set once at the start of each epoch, evaluation every
//! `eval_every` epochs and at the last one. Protocols come as presets ([`Preset`]) whose every value
//! can be overridden.
//!
//! The result has two accuracies: the **final** one (after the last epoch: the honest number) and the
//! **best** over the evaluated epochs, which is what the official script prints as `Best Acc@1`. The
//! best is chosen on the split it is scored on, so it is optimistic; the result says so
//! (`best_is_optimistic: true`).
//!
//! Determinism: the weights are drawn from a generator keyed by the seed, and each epoch's order from
//! (seed, epoch), with no libtorch RNG involved; the same seed gives the same numbers on CPU
//! with the same number of threads (float sums depend on how a reduction is split).

use std::f64::consts::PI;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::features::{FeatureSource, ProbeData};
use super::metrics::{true_class_rank, TopK};
use super::{device_name, join, write_result_json, Progress};
use crate::data::rng::Rng;
use crate::events::{Event, EventSink};
use crate::optim::{Group, Optimizer, Rule, ZeroNorm};
use crate::schedule;
use crate::LewelError;

const TOOL: &str = "linear-probe";

/// Rows per forward pass when scoring the val split.
const EVAL_BATCH: i64 = 4096;

/// A named protocol; [`Preset::protocol`] gives its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// For small data sets (the default): the `lewel-b` recipe with a smaller batch (64), so that a few
    /// thousand items still give many steps per epoch, a matching lr (0.1, the linear scaling of 0.4 at
    /// 256) and 30 epochs with the decays at 60% and 80% (epochs 18 and 24).
    Small,
    /// The paper's LEWEL_B protocol, from EMAN and the official scripts: SGD momentum 0.9, lr 0.4,
    /// batch 256, 50 epochs, lr x0.1 at epochs 30 and 40, weight decay 0, evaluation every 5 epochs.
    LewelB,
    /// The paper's LEWEL_M protocol: LARS (eta 0.001), lr 3.2, batch 4096, 90 epochs, cosine,
    /// weight decay 0, evaluation every 5 epochs.
    LewelM,
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "small" => Ok(Preset::Small),
            "lewel-b" => Ok(Preset::LewelB),
            "lewel-m" => Ok(Preset::LewelM),
            _ => Err(format!("unknown preset {s:?}; expected small, lewel-b or lewel-m")),
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Preset::Small => "small",
            Preset::LewelB => "lewel-b",
            Preset::LewelM => "lewel-m",
        })
    }
}

/// The optimizer of the probe: SGD (`torch.optim.SGD` semantics, weight decay on the bias too), or LARS in the
/// official LEWEL form with the bias excluded from it and from wd (see [`probe_optimizer`]).
pub use crate::optim::OptimizerKind;

/// How the learning rate changes over the epochs (set once at the start of each epoch; the formulas are
/// [`crate::schedule`]'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// `lr * decay^(number of milestones <= epoch)`, epochs counted from 0 (`main_lincls.py`).
    Step,
    /// `lr * 0.5 * (1 + cos(pi * epoch / epochs))`, epochs counted from 0: the first epoch uses the full
    /// lr and the last one a small non-zero lr (`main_lincls.py --cos`).
    Cosine,
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "step" => Ok(Schedule::Step),
            "cosine" => Ok(Schedule::Cosine),
            _ => Err(format!("unknown schedule {s:?}; expected step or cosine")),
        }
    }
}

/// Every value of a probe protocol, resolved (a preset plus the user's overrides).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Protocol {
    pub preset: Preset,
    pub optimizer: OptimizerKind,
    /// Base learning rate (absolute, not scaled by the batch size).
    pub lr: f64,
    /// Momentum of SGD and LARS (0.9 in every preset).
    pub momentum: f64,
    /// L2 weight decay (0 in every preset, as in the paper).
    pub weight_decay: f64,
    /// Items per step; the last partial batch of an epoch is kept.
    pub batch_size: usize,
    pub epochs: usize,
    pub schedule: Schedule,
    /// Epochs (counted from 0) at whose start the step schedule multiplies the lr by `lr_decay`.
    pub milestones: Vec<usize>,
    /// The step schedule's factor (0.1).
    pub lr_decay: f64,
    /// LARS trust coefficient eta (0.001, as in the official LARS).
    pub lars_eta: f64,
    /// Evaluate on the val split every this many epochs (and always after the last).
    pub eval_every: usize,
    /// Standardise each feature with the mean and std of the training split (off in every preset: the
    /// paper's probe sees the raw pooled features).
    pub normalize: bool,
}

impl Preset {
    /// The protocol of this preset.
    pub fn protocol(self) -> Protocol {
        let lewel_b = Protocol {
            preset: Preset::LewelB,
            optimizer: OptimizerKind::Sgd,
            lr: 0.4,
            momentum: 0.9,
            weight_decay: 0.0,
            batch_size: 256,
            epochs: 50,
            schedule: Schedule::Step,
            milestones: vec![30, 40],
            lr_decay: 0.1,
            lars_eta: 0.001,
            eval_every: 5,
            normalize: false,
        };
        match self {
            Preset::LewelB => lewel_b,
            Preset::Small => Protocol {
                preset: Preset::Small,
                lr: 0.1,
                batch_size: 64,
                epochs: 30,
                milestones: vec![18, 24],
                eval_every: 1,
                ..lewel_b
            },
            Preset::LewelM => Protocol {
                preset: Preset::LewelM,
                optimizer: OptimizerKind::Lars,
                lr: 3.2,
                batch_size: 4096,
                epochs: 90,
                schedule: Schedule::Cosine,
                milestones: vec![],
                ..lewel_b
            },
        }
    }
}

impl Protocol {
    /// Checks the values clap cannot (exit 2 on failure).
    pub fn validate(&self) -> Result<(), LewelError> {
        let bad = |m: String| Err(LewelError::Usage(m));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr {}: must be a finite number > 0", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("--wd {}: must be a finite number >= 0", self.weight_decay));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum {}: must be in [0, 1)", self.momentum));
        }
        if self.batch_size == 0 || self.epochs == 0 || self.eval_every == 0 {
            return bad("--batch-size, --epochs and --eval-every must be >= 1".into());
        }
        if self.milestones.windows(2).any(|w| w[0] >= w[1]) {
            return bad(format!("--milestones {}: must be strictly increasing", join(&self.milestones)));
        }
        Ok(())
    }

    /// The learning rate of epoch `epoch` (counted from 0), from [`crate::schedule`].
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match self.schedule {
            Schedule::Step => {
                let milestones: Vec<u64> = self.milestones.iter().map(|&m| m as u64).collect();
                schedule::step_decay(self.lr, &milestones, self.lr_decay, epoch as u64)
            }
            Schedule::Cosine => schedule::cosine(self.lr, self.epochs as u64, epoch as u64),
        }
    }
}

/// A linear-probe run: features, protocol, seed, device, result file.
#[derive(Debug, Clone, Serialize)]
pub struct LinearConfig {
    pub train: FeatureSource,
    pub val: FeatureSource,
    pub protocol: Protocol,
    pub seed: u64,
    #[serde(serialize_with = "ser_device")]
    pub device: Device,
    /// Where to write the whole result as JSON (atomically), if anywhere.
    pub out: Option<PathBuf>,
}

fn ser_device<S: serde::Serializer>(d: &Device, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&device_name(*d))
}

/// One training epoch, as in the `epoch` event.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EpochRecord {
    /// Epochs completed (1..=epochs).
    pub epoch: usize,
    pub lr: f64,
    /// Mean cross-entropy over the epoch's training items.
    pub loss: f64,
    /// Top-1 on the training items, measured on the fly during the epoch.
    pub train_top1_pct: f64,
}

/// One evaluation on the val split, as in the `eval` event.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalRecord {
    pub epoch: usize,
    pub top1_pct: f64,
    pub top5_pct: f64,
    pub loss: f64,
}

/// The whole result of [`run`], as written by `--out`.
#[derive(Debug, Clone, Serialize)]
pub struct LinearReport {
    pub tool: &'static str,
    pub git_revision: &'static str,
    pub config: LinearConfig,
    pub n_train: usize,
    pub n_val: usize,
    pub dim: usize,
    pub classes: usize,
    pub epochs: Vec<EpochRecord>,
    pub evals: Vec<EvalRecord>,
    /// After the last epoch: the number to report.
    pub final_top1_pct: f64,
    pub final_top5_pct: f64,
    /// The evaluated epoch with the highest top-1 (the earliest on ties), as the official script reports.
    pub best_top1_pct: f64,
    pub best_top5_pct: f64,
    pub best_epoch: usize,
    /// Always true: the best epoch is chosen on the val split itself.
    pub best_is_optimistic: bool,
    pub elapsed_s: f64,
}

/// Loads the features, trains and evaluates the probe, emits `start`, `epoch`, `eval`, `end`, writes `--out`.
pub fn run(cfg: &LinearConfig, sink: &mut dyn EventSink, progress: Progress) -> Result<LinearReport> {
    cfg.protocol.validate()?;
    let t0 = Instant::now();
    let data = ProbeData::load(&cfg.train, &cfg.val)?;
    train_and_evaluate(cfg, &data, sink, progress, t0)
}

/// The training batches of one epoch: `[b, C]` features and `[b]` int64 labels, on the device.
pub trait TrainBatches {
    /// Batches per epoch.
    fn steps_per_epoch(&self) -> usize;
    /// Calls `f(x, y)` for each batch of `epoch` (counted from 0), in order.
    fn for_each(&mut self, epoch: usize, f: &mut dyn FnMut(&Tensor, &Tensor) -> Result<()>) -> Result<()>;
    /// Messages about the data met since the last call (unreadable images), for `warn` events.
    fn take_warnings(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// Cached features held as one tensor; each epoch is a permutation keyed by (seed, epoch), each batch an
/// `index_select` of it on the device (no host copies per batch).
pub struct CachedBatches {
    x: Tensor,
    y: Tensor,
    seed: u64,
    batch: usize,
    device: Device,
}

impl CachedBatches {
    pub fn new(x: Tensor, y: Tensor, seed: u64, batch_size: usize) -> Self {
        let n = x.size()[0] as usize;
        let device = x.device();
        CachedBatches { x, y, seed, batch: batch_size.min(n).max(1), device }
    }
}

impl TrainBatches for CachedBatches {
    fn steps_per_epoch(&self) -> usize {
        (self.x.size()[0] as usize).div_ceil(self.batch)
    }

    fn for_each(&mut self, epoch: usize, f: &mut dyn FnMut(&Tensor, &Tensor) -> Result<()>) -> Result<()> {
        let n = self.x.size()[0] as usize;
        let order = Tensor::from_slice(&permutation(self.seed, epoch as u64, n)).to_device(self.device);
        let mut start = 0i64;
        while (start as usize) < n {
            let b = (self.batch as i64).min(n as i64 - start);
            let idx = order.narrow(0, start, b);
            let x = self.x.index_select(0, &idx); // [b, C]
            let y = self.y.index_select(0, &idx); // [b]
            f(&x, &y)?;
            start += b;
        }
        Ok(())
    }
}

/// What the `start` event says about the training split, and its labels.
pub struct TrainSplit<'a> {
    pub features: String,
    pub labels_path: String,
    pub labels: &'a [i64],
    pub dim: usize,
}

/// [`run`] on features already in memory (`t0`: when the run started, for `elapsed_s`).
pub fn train_and_evaluate(
    cfg: &LinearConfig,
    data: &ProbeData,
    sink: &mut dyn EventSink,
    progress: Progress,
    t0: Instant,
) -> Result<LinearReport> {
    let p = &cfg.protocol;
    p.validate()?;
    let device = cfg.device;
    let mut train_x = data.train.features_tensor(device);
    let mut val_x = data.val.features_tensor(device);
    if p.normalize {
        // Statistics of the training split only, applied to both.
        let mean = train_x.mean_dim([0i64].as_slice(), true, Kind::Float); // [1, C]
        let std = train_x.std_dim([0i64].as_slice(), false, true); // [1, C]
        let std = std.where_self(&std.gt(1e-6), &std.ones_like()); // constant features stay as they are
        train_x = (&train_x - &mean) / &std;
        val_x = (&val_x - &mean) / &std;
    }
    let mut batches = CachedBatches::new(train_x, data.train.labels_tensor(device), cfg.seed, p.batch_size);
    let split = TrainSplit {
        features: data.train.features_path.display().to_string(),
        labels_path: data.train.labels_path.display().to_string(),
        labels: &data.train.labels,
        dim: data.train.dim,
    };
    train_with(cfg, &split, &mut batches, &data.val, &val_x, sink, progress, t0)
}

/// The probe on any training batches (cached or augmented on the fly), scored on `val` whose
/// features (possibly normalised) are `val_x`.
#[allow(clippy::too_many_arguments)]
pub fn train_with(
    cfg: &LinearConfig,
    train: &TrainSplit,
    batches: &mut dyn TrainBatches,
    val: &super::features::FeatureSet,
    val_x: &Tensor,
    sink: &mut dyn EventSink,
    progress: Progress,
    t0: Instant,
) -> Result<LinearReport> {
    let p = &cfg.protocol;
    p.validate()?;
    let device = cfg.device;
    let train_classes = train.labels.iter().max().map(|&m| m as usize + 1).unwrap_or(0);
    let classes = train_classes.max(val.num_classes());
    let (n_train, n_val, dim) = (train.labels.len(), val.n, train.dim);
    if val.dim != dim {
        bail!("feature widths differ: train {dim}, val {}", val.dim);
    }
    super::features::check_val_classes(
        train.labels,
        &val.labels,
        std::path::Path::new(&train.labels_path),
        &val.labels_path,
    )?;
    let protocol_json = serde_json::to_value(p)?;
    let protocol_fields = protocol_json.as_object().expect("a protocol serialises to an object");
    sink.emit(
        &Event::new(TOOL, "start")
            .str("train_features", train.features.clone())
            .str("train_labels", train.labels_path.clone())
            .str("val_features", val.features_path.display().to_string())
            .str("val_labels", val.labels_path.display().to_string())
            .int("n_train", n_train as i64)
            .int("n_val", n_val as i64)
            .int("dim", dim as i64)
            .int("classes", classes as i64)
            .merge(protocol_fields)
            .str("milestones", join(&p.milestones))
            .int("seed", cfg.seed as i64)
            .str("device", device_name(device))
            .str("git_revision", crate::GIT_REVISION),
    )?;
    if let Some(m) = p.milestones.iter().find(|&&m| m >= p.epochs && p.schedule == Schedule::Step) {
        sink.emit(&Event::new(TOOL, "warn").str(
            "message",
            format!("milestone {m} is not below --epochs {}; it never applies (set --milestones)", p.epochs),
        ))?;
    }
    let mut seen = vec![false; classes];
    for &l in train.labels {
        seen[l as usize] = true;
    }
    let unseen = val.labels.iter().filter(|&&l| !seen[l as usize]).count();
    if unseen > 0 {
        sink.emit(
            &Event::new(TOOL, "warn")
                .str("message", "some val items have a class absent from the training set; they count as wrong")
                .int("count", unseen as i64),
        )?;
    }
    let val_y = val.labels_tensor(device);

    // fc: weight [classes, C] ~ N(0, 0.01), bias [classes] = 0.
    let weight = Tensor::from_slice(&normal_init(cfg.seed, classes * dim, 0.01))
        .view([classes as i64, dim as i64])
        .to_device(device)
        .set_requires_grad(true);
    let bias = Tensor::zeros([classes as i64], (Kind::Float, device)).set_requires_grad(true);
    let mut opt = probe_optimizer(p, &weight, &bias);

    let steps_per_epoch = batches.steps_per_epoch();
    let total_steps = (steps_per_epoch * p.epochs) as u64;
    let mut epochs = Vec::new();
    let mut evals: Vec<EvalRecord> = Vec::new();
    let mut step = 0u64;
    for epoch in 0..p.epochs {
        let lr = p.lr_at(epoch);
        let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut seen_items = 0usize;
        batches.for_each(epoch, &mut |x, y| {
            let b = y.size()[0];
            let logits = x.linear(&weight, Some(&bias)); // [b, classes]
            let loss = logits.cross_entropy_for_logits(y);
            opt.zero_grad();
            loss.backward();
            tch::no_grad(|| {
                opt.step(lr);
                loss_sum += loss.detach().to_kind(Kind::Double) * b as f64;
                correct += true_class_rank(&logits.detach(), y).lt(1).sum(Kind::Int64);
            });
            seen_items += b as usize;
            step += 1;
            progress(step, total_steps);
            Ok(())
        })?;
        for message in batches.take_warnings() {
            sink.emit(&Event::new(TOOL, "warn").str("message", message))?;
        }
        let loss = loss_sum.double_value(&[]) / seen_items.max(1) as f64;
        if !loss.is_finite() {
            return Err(anyhow::Error::from(LewelError::Diverged { step, loss }).context(format!(
                "the loss of epoch {} is not finite; lower --lr, or pass --normalize for features of large \
                 magnitude",
                epoch + 1
            )));
        }
        let rec = EpochRecord {
            epoch: epoch + 1,
            lr,
            loss,
            train_top1_pct: 100.0 * correct.int64_value(&[]) as f64 / seen_items.max(1) as f64,
        };
        sink.emit(
            &Event::new(TOOL, "epoch")
                .int("epoch", rec.epoch as i64)
                .int("step", step as i64)
                .num("lr", rec.lr)
                .num("loss", rec.loss)
                .num("train_top1_pct", rec.train_top1_pct)
                .num("elapsed_s", t0.elapsed().as_secs_f64()),
        )?;
        epochs.push(rec);
        if (epoch + 1) % p.eval_every == 0 || epoch + 1 == p.epochs {
            let (acc, loss) = tch::no_grad(|| score(&weight, &bias, val_x, &val_y));
            let ev = EvalRecord { epoch: epoch + 1, top1_pct: acc.top1_pct(), top5_pct: acc.top5_pct(), loss };
            sink.emit(
                &Event::new(TOOL, "eval")
                    .int("epoch", ev.epoch as i64)
                    .num("top1_pct", ev.top1_pct)
                    .num("top5_pct", ev.top5_pct)
                    .num("loss", ev.loss)
                    .int("n_val", n_val as i64),
            )?;
            evals.push(ev);
        }
    }

    let last = *evals.last().expect("the last epoch is always evaluated");
    let mut best = evals[0];
    for e in &evals[1..] {
        if e.top1_pct > best.top1_pct {
            best = *e;
        }
    }
    let elapsed_s = t0.elapsed().as_secs_f64();
    sink.emit(
        &Event::new(TOOL, "end")
            .num("final_top1_pct", last.top1_pct)
            .num("final_top5_pct", last.top5_pct)
            .int("final_epoch", last.epoch as i64)
            .num("best_top1_pct", best.top1_pct)
            .num("best_top5_pct", best.top5_pct)
            .int("best_epoch", best.epoch as i64)
            .bool("best_is_optimistic", true)
            .str("best_chosen_on", "val")
            .int("n_val", n_val as i64)
            .num("elapsed_s", elapsed_s)
            .merge(protocol_fields)
            .str("milestones", join(&p.milestones))
            .int("seed", cfg.seed as i64),
    )?;
    let report = LinearReport {
        tool: TOOL,
        git_revision: crate::GIT_REVISION,
        config: cfg.clone(),
        n_train,
        n_val,
        dim,
        classes,
        epochs,
        evals,
        final_top1_pct: last.top1_pct,
        final_top5_pct: last.top5_pct,
        best_top1_pct: best.top1_pct,
        best_top5_pct: best.top5_pct,
        best_epoch: best.epoch,
        best_is_optimistic: true,
        elapsed_s,
    };
    if let Some(out) = &cfg.out {
        write_result_json(out, &report)?;
    }
    Ok(report)
}

/// Top-1/top-5 and mean cross-entropy of the classifier on `(x, y)`, in chunks of [`EVAL_BATCH`] rows.
fn score(weight: &Tensor, bias: &Tensor, x: &Tensor, y: &Tensor) -> (TopK, f64) {
    let n = x.size()[0];
    let mut acc = TopK::default();
    let mut loss_sum = 0.0;
    let mut start = 0;
    while start < n {
        let b = EVAL_BATCH.min(n - start);
        let logits = x.narrow(0, start, b).linear(weight, Some(bias)); // [b, classes]
        let yb = y.narrow(0, start, b);
        loss_sum += logits.cross_entropy_for_logits(&yb).double_value(&[]) * b as f64;
        acc.add_ranks(&true_class_rank(&logits, &yb));
        start += b;
    }
    (acc, loss_sum / n as f64)
}

/// The probe's optimiser over the fc layer (one [`crate::optim::Optimizer`]): with SGD one group, weight and bias,
/// both decayed (`torch.optim.SGD` applies the weight decay to every parameter; the official probe does too); with
/// LARS the weight adapted and decayed, the bias in a group of its own without either (lr inside the buffer, as
/// `utils/LARS.py`). Where a norm is 0 the LARS factor is 1 ([`ZeroNorm::Plain`], SimSiam's LARS, whose protocol
/// LEWEL_M's linear evaluation follows; the pre-training's is 0).
fn probe_optimizer(p: &Protocol, weight: &Tensor, bias: &Tensor) -> Optimizer {
    let rule =
        Rule { kind: p.optimizer, momentum: p.momentum, eta: p.lars_eta, clip: false, zero_norm: ZeroNorm::Plain };
    let (w, b) = (("fc.weight".to_string(), weight.shallow_clone()), ("fc.bias".to_string(), bias.shallow_clone()));
    match p.optimizer {
        OptimizerKind::Sgd => Optimizer::with_groups(
            rule,
            vec![Group { lr_scale: 1.0, weight_decay: p.weight_decay, lars: false }],
            vec![(w.0, w.1, 0), (b.0, b.1, 0)],
        ),
        OptimizerKind::Lars => Optimizer::with_groups(
            rule,
            vec![
                Group { lr_scale: 1.0, weight_decay: p.weight_decay, lars: true },
                Group { lr_scale: 1.0, weight_decay: 0.0, lars: false },
            ],
            vec![(w.0, w.1, 0), (b.0, b.1, 1)],
        ),
    }
}

/// The order of epoch `epoch`: a Fisher-Yates shuffle of `0..n` ([`Rng::shuffle`]) from a SplitMix64 generator
/// keyed by (seed, epoch).
pub fn permutation(seed: u64, epoch: u64, n: usize) -> Vec<i64> {
    let key = Rng::from_state(seed ^ 0x6C69_6E65_6172_0000).next_u64(); // "linear"
    let mut order: Vec<i64> = (0..n as i64).collect();
    Rng::from_state(key ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03)).shuffle(&mut order);
    order
}

/// `len` draws from N(0, std^2) (Box-Muller) from a generator keyed by the seed.
fn normal_init(seed: u64, len: usize, std: f64) -> Vec<f32> {
    let mut rng = Rng::from_state(seed ^ 0x6663_5f69_6e69_7400); // "fc_init"
    let mut uniform = || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64; // (0, 1)
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        let (u1, u2) = (uniform(), uniform());
        let r = (-2.0 * u1.ln()).sqrt() * std;
        out.push((r * (2.0 * PI * u2).cos()) as f32);
        out.push((r * (2.0 * PI * u2).sin()) as f32);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::features::FeatureSet;
    use crate::events::MemorySink;

    fn cfg(protocol: Protocol) -> LinearConfig {
        LinearConfig {
            train: FeatureSource::npy("train.npy"),
            val: FeatureSource::npy("val.npy"),
            protocol,
            seed: 7,
            device: Device::Cpu,
            out: None,
        }
    }

    /// Four classes in 6-D, linearly separable with a margin: class c has a large coordinate c.
    fn separable(n: usize, salt: u64) -> FeatureSet {
        let mut s = Rng::from_state(salt);
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let c = i % 4;
            for d in 0..6 {
                let noise = (s.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                data.push(if d == c { 2.0 } else { 0.0 } + 0.5 * noise);
            }
            labels.push(c as i64);
        }
        FeatureSet::from_parts(n, 6, data, labels).unwrap()
    }

    fn quick() -> Protocol {
        Protocol { epochs: 8, batch_size: 16, eval_every: 4, milestones: vec![5, 7], ..Preset::Small.protocol() }
    }

    #[test]
    fn learns_a_separable_set_perfectly() {
        let data = ProbeData::new(separable(96, 1), separable(40, 2)).unwrap();
        // LARS moves each weight by about lr * eta * ||w|| per step: it needs more (full-batch) steps.
        let lars = Protocol {
            optimizer: OptimizerKind::Lars,
            lr: 3.2,
            batch_size: 96,
            epochs: 100,
            eval_every: 50,
            schedule: Schedule::Cosine,
            ..quick()
        };
        for protocol in [quick(), lars] {
            let mut sink = MemorySink::default();
            let r =
                train_and_evaluate(&cfg(protocol.clone()), &data, &mut sink, &mut |_, _| {}, Instant::now()).unwrap();
            assert_eq!(r.final_top1_pct, 100.0, "{protocol:?}: {:?}", r.evals);
            assert_eq!(r.final_top5_pct, 100.0);
            assert!(r.epochs.last().unwrap().loss < r.epochs[0].loss, "{:?}", r.epochs);
            if protocol.optimizer == OptimizerKind::Lars {
                continue;
            }
            let kinds: Vec<String> = sink.events.lock().unwrap().iter().map(|e| e.kind().to_string()).collect();
            let want: Vec<&str> = [
                "start", "epoch", "epoch", "epoch", "epoch", "eval", "epoch", "epoch", "epoch", "epoch", "eval", "end",
            ]
            .to_vec();
            assert_eq!(kinds, want);
        }
    }

    #[test]
    fn same_seed_same_numbers() {
        let data = ProbeData::new(separable(50, 3), separable(20, 4)).unwrap();
        let protocol = Protocol { epochs: 3, batch_size: 8, lr: 0.5, ..quick() };
        let go = |seed| {
            let c = LinearConfig { seed, ..cfg(protocol.clone()) };
            let r = train_and_evaluate(&c, &data, &mut MemorySink::default(), &mut |_, _| {}, Instant::now()).unwrap();
            (r.epochs, r.evals)
        };
        assert_eq!(go(1), go(1));
        assert_ne!(go(1).0, go(2).0);
    }

    #[test]
    fn step_schedule_and_cosine_endpoints() {
        let b = Preset::LewelB.protocol();
        assert_eq!(b.lr_at(0), 0.4);
        assert_eq!(b.lr_at(29), 0.4);
        assert!((b.lr_at(30) - 0.04).abs() < 1e-12);
        assert!((b.lr_at(39) - 0.04).abs() < 1e-12);
        assert!((b.lr_at(40) - 0.004).abs() < 1e-12);
        assert!((b.lr_at(49) - 0.004).abs() < 1e-12);
        let m = Preset::LewelM.protocol();
        assert_eq!(m.lr_at(0), 3.2);
        assert!((m.lr_at(45) - 1.6).abs() < 1e-12);
        let last = m.lr_at(89);
        assert!(last > 0.0 && (last - 3.2 * 0.5 * (1.0 + (PI * 89.0 / 90.0).cos())).abs() < 1e-12);
        assert!(last < 0.001);
    }

    /// Sets the gradient of the leaf `w` to `g` (the loss Σ g·w).
    fn set_grad(w: &Tensor, g: &[f64]) {
        w.shallow_clone().zero_grad();
        (w * Tensor::from_slice(g)).sum(Kind::Double).backward();
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(&t.detach()).unwrap()
    }

    #[test]
    fn sgd_step_by_hand() {
        let w = Tensor::from_slice(&[1.0f64, -2.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.0f64]).set_requires_grad(true);
        let g = [0.5f64, 0.25];
        let sgd = |wd| Protocol { optimizer: OptimizerKind::Sgd, momentum: 0.9, weight_decay: wd, ..quick() };
        let mut opt = probe_optimizer(&sgd(0.1), &w, &b);
        // step 1: d = g + 0.1 w = [0.6, 0.05]; buf = d; w = w - 0.1 buf = [0.94, -2.005]
        set_grad(&w, &g);
        set_grad(&b, &[0.0]);
        opt.step(0.1);
        assert_eq!(values(&w), vec![1.0 - 0.1 * 0.6, -2.0 - 0.1 * 0.05]);
        // step 2 (wd 0, the buffers carried over): buf = 0.9 [0.6, 0.05] + [0.5, 0.25] = [1.04, 0.295]
        let mut opt2 = probe_optimizer(&sgd(0.0), &w, &b);
        opt2.load_state(&opt.state().into_iter().collect()).unwrap();
        set_grad(&w, &g);
        set_grad(&b, &[0.0]);
        opt2.step(0.1);
        let want = [0.94 - 0.1 * (0.9 * 0.6 + 0.5), -2.005 - 0.1 * (0.9 * 0.05 + 0.25)];
        let got = values(&w);
        assert!((got[0] - want[0]).abs() < 1e-12 && (got[1] - want[1]).abs() < 1e-12, "{got:?}");
    }

    #[test]
    fn lars_step_by_hand() {
        // w = [3, 4] (||w|| = 5), g = [0, 2] (||g|| = 2), wd = 0.1, eta = 0.001, lr = 2, m = 0.9
        let w = Tensor::from_slice(&[3.0f64, 4.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let g = [0.0f64, 2.0];
        let p =
            Protocol { optimizer: OptimizerKind::Lars, momentum: 0.9, weight_decay: 0.1, lars_eta: 0.001, ..quick() };
        let mut opt = probe_optimizer(&p, &w, &b);
        set_grad(&w, &g);
        set_grad(&b, &[0.5]);
        opt.step(2.0);
        let local = 0.001 * 5.0 / (2.0 + 0.1 * 5.0); // 0.002
        let d = [(0.0 + 0.1 * 3.0) * local * 2.0, (2.0 + 0.1 * 4.0) * local * 2.0];
        let got = values(&w);
        assert!((got[0] - (3.0 - d[0])).abs() < 1e-15 && (got[1] - (4.0 - d[1])).abs() < 1e-15, "{got:?}");
        // excluded parameter (the bias): plain momentum step with lr inside, no wd
        assert_eq!(values(&b)[0], 1.0 - 0.5 * 2.0);
        // second step: buf = 0.9 d + d2 with the new norms
        let w1 = got.clone();
        set_grad(&w, &g);
        set_grad(&b, &[0.5]);
        opt.step(2.0);
        let wn = (w1[0] * w1[0] + w1[1] * w1[1]).sqrt();
        let local2 = 0.001 * wn / (2.0 + 0.1 * wn);
        let d2 = [(0.1 * w1[0]) * local2 * 2.0, (2.0 + 0.1 * w1[1]) * local2 * 2.0];
        let got2 = values(&w);
        for i in 0..2 {
            assert!((got2[i] - (w1[i] - (0.9 * d[i] + d2[i]))).abs() < 1e-15, "{got2:?}");
        }
    }

    #[test]
    fn lars_at_a_zero_weight_takes_a_plain_step() {
        // the probe's LARS (SimSiam's): factor 1 at ||w|| = 0, so d = (g + wd w) lr; the pre-training's would be 0
        let w = Tensor::from_slice(&[0.0f64, 0.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.0f64]).set_requires_grad(true);
        let p = Protocol { optimizer: OptimizerKind::Lars, momentum: 0.9, weight_decay: 0.1, ..quick() };
        let mut opt = probe_optimizer(&p, &w, &b);
        set_grad(&w, &[1.0, -2.0]);
        set_grad(&b, &[0.0]);
        opt.step(0.5);
        assert_eq!(values(&w), vec![-0.5, 1.0]);
    }

    #[test]
    fn permutations_are_keyed_by_seed_and_epoch() {
        let p = permutation(1, 0, 100);
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<i64>>());
        assert_eq!(p, permutation(1, 0, 100));
        assert_ne!(p, permutation(1, 1, 100));
        assert_ne!(p, permutation(2, 0, 100));
        let w = normal_init(5, 10_001, 0.01);
        let mean = w.iter().map(|&x| x as f64).sum::<f64>() / w.len() as f64;
        let sd = (w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        assert!(mean.abs() < 1e-3 && (sd - 0.01).abs() < 5e-4, "{mean} {sd}");
    }

    #[test]
    fn bad_protocols_are_usage_errors() {
        for p in [
            Protocol { lr: 0.0, ..quick() },
            Protocol { epochs: 0, ..quick() },
            Protocol { milestones: vec![5, 3], ..quick() },
            Protocol { weight_decay: -1.0, ..quick() },
        ] {
            assert!(matches!(p.validate(), Err(LewelError::Usage(_))), "{p:?}");
        }
        assert_eq!("lewel-m".parse::<Preset>(), Ok(Preset::LewelM));
        assert!("x".parse::<Preset>().is_err());
    }
}
