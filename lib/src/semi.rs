//! Semi-supervised fine-tuning (`finetune-semi`): the whole network (the online backbone of any checkpoint plus a
//! new linear classifier on its pooled features) trained on a labelled subset, by the shared training loop
//! ([`crate::train::train_loop`]).
//!
//! Protocol of the official `main_semi.py` (`reference/lewel-official.md` §6.2): BN in train mode; SGD with
//! momentum 0.9 and weight decay 1e-4 on **every** parameter (BN and biases included); two learning rates, the
//! classifier's (`fc.*`) and the backbone's; ×0.1 at epochs 30 and 40 of 50; `DefaultTrain` (RandomResizedCrop
//! 0.08–1 + flip) for training and `DefaultVal` (resize 256, centre crop 224) for evaluation; top-1 / top-5 every
//! 5 epochs, the best over the evaluations reported (optimistic: chosen on the val split).
//!
//! NOTE(ref): the step decay multiplies both learning rates (each group keeps its own base), which is what the
//! paper's separate classifier lr means; the classifier is initialised as torchvision's `nn.Linear` (uniform
//! ±1/sqrt(fan_in) for weight and bias), since the official script does not re-initialise it.
//!
//! Subsets: a SimCLR list (`1percent.txt`: bare names resolved under `--root` by synset prefix, CRLF or LF), the
//! official `.ext` form (`<label> <relpath>`), our own `subset.txt` (`<label> <relpath>` or `<label> <index>` into
//! array data), or a stratified fraction of any labelled DATA: per class `max(1, round(fraction · n_c))` items,
//! drawn from (seed, class). `10percent.txt.ext` is not needed (nor shipped by the official repo): the bare-name
//! `10percent.txt` resolves under `--root` the same way.
//!
//! The checkpoints are ours (`RUN/ckpt/step-N.safetensors` + sidecar with `config.model`): the full LEWEL state
//! with the fine-tuned online backbone, the classifier `fc.weight` / `fc.bias`
//! ([`crate::ckpt::TASK_HEAD_PREFIX`]) and the momentum buffers; `embed`, the probes and `export-backbone` read
//! them like pre-training checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::amp::{self, Autocast, GradScaler, Precision};
use crate::ckpt;
use crate::data::dataset::{DataSpec, Dataset, FileList};
use crate::data::labelled::{default_train_recipe, LabelledLoader};
use crate::data::rng::Rng;
use crate::data::{EvalConfig, EvalLoader, LoaderConfig};
use crate::eval::metrics::{true_class_rank, TopK};
use crate::events::{Event, EventSink};
use crate::model::{Lewel, ModelConfig};
use crate::optim::{Group, Optimizer, Rule};
use crate::run::RunDir;
use crate::schedule::LrSchedule;
use crate::train::{self, BatchSource, LoopBatch, LoopConfig, RunOptions, StepCtx, StepOut, StepReport, TrainTask};
use crate::LewelError;

pub const TOOL: &str = "finetune-semi";

/// Which labelled items to train on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SubsetSpec {
    /// A list file (SimCLR bare names, `.ext` lines, or a `subset.txt` of ours).
    List { path: PathBuf },
    /// A stratified fraction of the training data, drawn from `seed`.
    Fraction { fraction: f64, seed: u64 },
    /// Every item of the training data.
    All,
}

/// Everything that defines a fine-tuning run (`RUN/config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SemiConfig {
    /// The pre-trained checkpoint (any kind `embed` reads); its online backbone is fine-tuned.
    pub ckpt: PathBuf,
    /// The model configuration, resolved from `ckpt` when the run starts.
    pub model: Option<ModelConfig>,
    /// The labelled training data (any DATA form); with a list subset, the default `root`.
    pub train: PathBuf,
    /// The folder list paths and bare names resolve under.
    pub root: Option<PathBuf>,
    pub val: PathBuf,
    pub subset: SubsetSpec,
    pub epochs: u64,
    pub batch_size: usize,
    /// Base lr of every parameter but the classifier (official 1%: 0.0001, 10%: 0.01).
    pub lr_backbone: f64,
    /// Base lr of `fc.*` (official 1%: 1.0, 10%: 0.1).
    pub lr_classifier: f64,
    pub momentum: f64,
    /// Weight decay on every parameter (official 1e-4).
    pub weight_decay: f64,
    /// Epochs at which both lrs are multiplied by `gamma`.
    pub milestones: Vec<u64>,
    pub gamma: f64,
    /// Side of the training crops (RandomResizedCrop), px.
    pub size: u32,
    /// Evaluation: resize the shorter side to this, then centre-crop `eval_crop`.
    pub eval_resize: u32,
    pub eval_crop: u32,
    /// Evaluate every N epochs and after the last.
    pub eval_every: u64,
    pub seed: u64,
    pub strict: bool,
    pub ckpt_every_epochs: u64,
    pub keep_last: usize,
}

/// The preset names.
pub const PRESETS: &[&str] = &["semi-1pct", "semi-10pct", "semi-small"];

/// A named protocol (data paths and ckpt left empty).
///
/// - `semi-1pct` / `semi-10pct`: the official scripts (§6.2): backbone lr 0.0001 / 0.01, classifier lr 1.0 / 0.1,
///   50 epochs, ×0.1 at 30 and 40, SGD momentum 0.9, wd 1e-4 on everything, batch 256, 224 px crops, evaluation at
///   256 → 224, every 5 epochs.
/// - `semi-small`: for 32 px data on a CPU (CIFAR-stem backbones of the `small-*` pre-training presets): the 10%
///   learning rates, 20 epochs, ×0.1 at 12 and 16 (the official 60% / 80% points), batch 64, 32 px crops,
///   evaluation at 32 → 32, every 2 epochs.
pub fn preset(name: &str) -> Result<SemiConfig> {
    let base = SemiConfig {
        ckpt: PathBuf::new(),
        model: None,
        train: PathBuf::new(),
        root: None,
        val: PathBuf::new(),
        subset: SubsetSpec::All,
        epochs: 50,
        batch_size: 256,
        lr_backbone: 0.0001,
        lr_classifier: 1.0,
        momentum: 0.9,
        weight_decay: 1e-4,
        milestones: vec![30, 40],
        gamma: 0.1,
        size: 224,
        eval_resize: 256,
        eval_crop: 224,
        eval_every: 5,
        seed: crate::cli::DEFAULT_SEED,
        strict: false,
        ckpt_every_epochs: 1,
        keep_last: 2,
    };
    Ok(match name {
        "semi-1pct" => base,
        "semi-10pct" => SemiConfig { lr_backbone: 0.01, lr_classifier: 0.1, ..base },
        "semi-small" => SemiConfig {
            lr_backbone: 0.01,
            lr_classifier: 0.1,
            epochs: 20,
            milestones: vec![12, 16],
            batch_size: 64,
            size: 32,
            eval_resize: 32,
            eval_crop: 32,
            eval_every: 2,
            ..base
        },
        other => {
            return Err(
                LewelError::Usage(format!("unknown --preset {other:?}; choose one of {}", PRESETS.join(", "))).into()
            )
        }
    })
}

/// The evaluation sizes that go with a crop size: 256 → 224 scaled (`size · 8/7`), or `size` itself at 32 px and
/// below (the small presets' convention).
pub fn eval_sizes(size: u32) -> (u32, u32) {
    if size <= 32 {
        (size, size)
    } else {
        (((size as f64) * 256.0 / 224.0).round() as u32, size)
    }
}

// ------------------------------------------------------------------------------------------------
// Subsets
// ------------------------------------------------------------------------------------------------

/// Stratified selection: per class `max(1, round(fraction · n_c))` (at most n_c) of the items with that label, a
/// shuffle drawn from (seed, class) deciding which; the result in ascending index order.
pub fn stratified(labels: &[i64], fraction: f64, seed: u64) -> Result<Vec<usize>, LewelError> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(LewelError::Usage(format!("--fraction {fraction}: give a value in (0, 1], e.g. 0.01")));
    }
    let mut by_class: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for (i, &l) in labels.iter().enumerate() {
        by_class.entry(l).or_default().push(i);
    }
    let mut out = Vec::new();
    for (class, mut items) in by_class {
        let n = items.len();
        let k = ((fraction * n as f64).round() as usize).clamp(1, n);
        let mut rng = Rng::from_key(&[seed, 0x5345_4D49, class as u64]); // "SEMI"
        rng.shuffle(&mut items);
        out.extend_from_slice(&items[..k]);
    }
    out.sort_unstable();
    Ok(out)
}

/// Some items of a labelled data set, in the order given.
pub struct Subset {
    inner: Arc<dyn Dataset>,
    indices: Vec<usize>,
    what: String,
}

impl Subset {
    pub fn new(inner: Arc<dyn Dataset>, indices: Vec<usize>, what: String) -> Self {
        Subset { inner, indices, what }
    }
    /// The index in the full data set of item `i`.
    pub fn source_index(&self, i: usize) -> usize {
        self.indices[i]
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn label(&self, i: usize) -> Option<i64> {
        self.inner.label(self.indices[i])
    }
    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes()
    }
    fn name(&self, i: usize) -> String {
        self.inner.name(self.indices[i])
    }
    fn load(&self, i: usize) -> Result<RgbImage> {
        self.inner.load(self.indices[i])
    }
    fn describe(&self) -> String {
        format!("{} of {}", self.what, self.inner.describe())
    }
    fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for i in &self.indices {
            h.update(i.to_le_bytes());
        }
        format!("subset-{}-{}:{}", self.indices.len(), crate::hex::short(&h.finalize()), self.inner.fingerprint())
    }
}

/// The training subset and its `subset.txt` lines (`<label> <relpath>` for files, `<label> <index>` for arrays).
pub struct OpenedSubset {
    pub data: Arc<dyn Dataset>,
    pub lines: Vec<String>,
}

fn rel(p: &str, base: Option<&Path>) -> String {
    match base.and_then(|b| Path::new(p).strip_prefix(b).ok()) {
        Some(r) => r.to_string_lossy().into_owned(),
        None => p.to_string(),
    }
}

/// Opens the training subset of `cfg` (see the module docs for the forms).
pub fn open_subset(cfg: &SemiConfig) -> Result<OpenedSubset> {
    let root = cfg.root.clone().or_else(|| cfg.train.is_dir().then(|| cfg.train.clone()));
    let need_labels = |d: &Arc<dyn Dataset>| -> Result<()> {
        if d.num_classes().is_none() {
            bail!("{}: no labels; fine-tuning needs labelled training data", d.describe());
        }
        Ok(())
    };
    let index_lines = |d: &dyn Dataset, base: Option<&Path>| -> Vec<String> {
        (0..d.len()).map(|i| format!("{} {}", d.label(i).unwrap_or(-1), rel(&d.name(i), base))).collect()
    };
    match &cfg.subset {
        SubsetSpec::All => {
            let d =
                crate::data::open(&DataSpec { path: cfg.train.clone(), root: cfg.root.clone(), strict: cfg.strict })?;
            need_labels(&d)?;
            let lines = index_lines(&*d, root.as_deref());
            Ok(OpenedSubset { data: d, lines })
        }
        SubsetSpec::Fraction { fraction, seed } => {
            let d =
                crate::data::open(&DataSpec { path: cfg.train.clone(), root: cfg.root.clone(), strict: cfg.strict })?;
            need_labels(&d)?;
            let labels: Vec<i64> = (0..d.len()).map(|i| d.label(i).unwrap_or(-1)).collect();
            let idx = stratified(&labels, *fraction, *seed)?;
            let files = d.name(0) != format!("{}[0]", cfg.train.display()) && cfg.train.is_dir();
            let lines = idx
                .iter()
                .map(|&i| {
                    let what = if files { rel(&d.name(i), root.as_deref()) } else { i.to_string() };
                    format!("{} {what}", labels[i])
                })
                .collect();
            let what = format!("a stratified {fraction} (seed {seed})");
            Ok(OpenedSubset { data: Arc::new(Subset::new(d, idx, what)), lines })
        }
        SubsetSpec::List { path } => {
            // `<label> <index>` lines (our subset.txt of array data) select items of --train-data.
            let text =
                std::fs::read_to_string(path).with_context(|| format!("could not read --subset {}", path.display()))?;
            let rows: Vec<Vec<&str>> =
                text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| l.split_whitespace().collect()).collect();
            let indexed = !cfg.train.is_dir()
                && !rows.is_empty()
                && rows.iter().all(|r| r.len() == 2 && r[0].parse::<i64>().is_ok() && r[1].parse::<usize>().is_ok());
            if indexed {
                let d = crate::data::open(&DataSpec { path: cfg.train.clone(), root: None, strict: cfg.strict })?;
                need_labels(&d)?;
                let mut idx = Vec::with_capacity(rows.len());
                for (n, r) in rows.iter().enumerate() {
                    let (label, i): (i64, usize) = (r[0].parse()?, r[1].parse()?);
                    if i >= d.len() || d.label(i) != Some(label) {
                        bail!(
                            "--subset {} line {}: item {i} of {} {}; the list belongs to other data",
                            path.display(),
                            n + 1,
                            cfg.train.display(),
                            if i >= d.len() {
                                "does not exist".to_string()
                            } else {
                                format!("has label {:?}, not {label}", d.label(i))
                            }
                        );
                    }
                    idx.push(i);
                }
                let lines = idx.iter().map(|&i| format!("{} {i}", d.label(i).unwrap_or(-1))).collect();
                let what = format!("the {} items of {}", idx.len(), path.display());
                return Ok(OpenedSubset { data: Arc::new(Subset::new(d, idx, what)), lines });
            }
            let list = FileList::from_list(path, root.as_deref())?;
            let base = root.clone().unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
            let d: Arc<dyn Dataset> = Arc::new(list);
            if d.is_empty() {
                bail!("--subset {}: no items", path.display());
            }
            let lines = index_lines(&*d, Some(&base));
            Ok(OpenedSubset { data: d, lines })
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The task
// ------------------------------------------------------------------------------------------------

struct Labelled(LabelledLoader);

impl BatchSource for Labelled {
    type Batch = (Tensor, Tensor);
    fn len(&self) -> usize {
        self.0.dataset().len()
    }
    fn item_name(&self, i: usize) -> String {
        self.0.dataset().name(i)
    }
    fn epoch(
        &self,
        epoch: u64,
        start: usize,
        _batch: usize,
    ) -> Box<dyn Iterator<Item = Result<LoopBatch<(Tensor, Tensor)>>> + '_> {
        Box::new(
            self.0.epoch(epoch, start).map(|b| {
                b.map(|b| LoopBatch { data: (b.images, b.labels), wait_s: Some(b.wait_s), skipped: b.skipped })
            }),
        )
    }
}

/// The fine-tuning state: the model (its online backbone trains), the classifier, the SGD buffers.
pub struct SemiTask<'a> {
    cfg: &'a SemiConfig,
    _vs: VarStore,
    model: Lewel,
    fc_weight: Tensor,
    fc_bias: Tensor,
    /// SGD over two groups: the backbone (`lr_backbone`) and the classifier (`lr_classifier`).
    opt: Optimizer,
    device: Device,
    val: EvalLoader,
    val_data: Arc<dyn Dataset>,
    precision: Precision,
    channels_last: bool,
    /// The fp16 loss scaler (None for fp32 and bf16).
    scaler: Option<GradScaler>,
}

/// The optimiser groups of [`semi_optimizer`].
const BACKBONE: usize = 0;
const CLASSIFIER: usize = 1;

/// torch.optim.SGD over `params` (name, tensor, [`BACKBONE`] or [`CLASSIFIER`]): momentum and weight decay on
/// every parameter, the backbone's lr from `lr_backbone` and the classifier's from `lr_classifier` (each group's
/// `lr_scale`, which the loop's schedule decays).
fn semi_optimizer(cfg: &SemiConfig, params: Vec<(String, Tensor, usize)>) -> Optimizer {
    let wd = cfg.weight_decay;
    Optimizer::with_groups(
        Rule::sgd(cfg.momentum),
        vec![
            Group { lr_scale: cfg.lr_backbone, weight_decay: wd, lars: false },
            Group { lr_scale: cfg.lr_classifier, weight_decay: wd, lars: false },
        ],
        params,
    )
}

/// torchvision's `nn.Linear` init: weight and bias ~ U(−1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with
/// a = √5), drawn from the global generator (seeded by the caller).
pub fn linear_init(classes: i64, fan_in: i64, device: Device) -> (Tensor, Tensor) {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let w = Tensor::zeros([classes, fan_in], (Kind::Float, device)).uniform_(-bound, bound);
    let b = Tensor::zeros([classes], (Kind::Float, device)).uniform_(-bound, bound);
    (w.set_requires_grad(true), b.set_requires_grad(true))
}

impl<'a> SemiTask<'a> {
    /// The parameter groups: (name, is classifier), in update order (backbone by name, then `fc.weight`, `fc.bias`).
    pub fn groups(&self) -> Vec<(String, bool)> {
        let groups = self.opt.groups();
        let mut v: Vec<(String, bool)> = groups[BACKBONE].iter().map(|n| (n.clone(), false)).collect();
        v.extend(groups[CLASSIFIER].iter().map(|n| (n.clone(), true)));
        v
    }

    fn logits(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let f = self.model.online().backbone.forward_t(x, train)?; // [b, c, h, w]
        let f = f.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, 3)?; // [b, c]
        Ok(f.matmul(&self.fc_weight.tr()) + &self.fc_bias) // [b, classes]
    }
}

impl TrainTask for SemiTask<'_> {
    type Batch = (Tensor, Tensor);

    /// The network forward runs under autocast to `--precision` (the logits are cast back to float32 for the
    /// loss); with `fp16` the step is PyTorch's GradScaler recipe (see [`crate::amp`]).
    fn train_step(&mut self, (x, y): (Tensor, Tensor), ctx: &StepCtx) -> Result<StepOut> {
        let (x, y) = (x.to_device(self.device), y.to_device(self.device));
        let x = amp::input_layout(x, self.channels_last)?;
        let autocast = Autocast::new(self.precision, self.device)?;
        let logits = amp::full_precision(&autocast.run(|| self.logits(&x, true))?)?;
        let loss_t = logits.cross_entropy_for_logits(&y);
        let loss = loss_t.to_kind(Kind::Double).double_value(&[]);
        let (lr_b, lr_c) = (ctx.lr(self.cfg.lr_backbone), ctx.lr(self.cfg.lr_classifier));
        if !loss.is_finite() {
            return Ok(StepOut { loss, lr: lr_b, fields: Vec::new(), warnings: Vec::new() });
        }
        let mut fields = vec![("lr_classifier", lr_c)];
        // each group's lr decayed from its own base (the step decay multiplies both)
        let scaling = train::backward_and_update(&loss_t, &mut self.opt, self.scaler.as_mut(), None, |opt| {
            opt.step_with(|base| ctx.lr(base))
        })?;
        fields.extend(scaling);
        Ok(StepOut { loss, lr: lr_b, fields, warnings: Vec::new() })
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = self.model.state_dict();
        s.push(("fc.weight".into(), self.fc_weight.shallow_clone()));
        s.push(("fc.bias".into(), self.fc_bias.shallow_clone()));
        s.extend(self.opt.state());
        if let Some(scaler) = &self.scaler {
            s.extend(scaler.state());
        }
        s
    }

    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
        ckpt::load_model_state(&self.model, tensors, path)?;
        tch::no_grad(|| -> Result<()> {
            for (name, dst) in [("fc.weight", &self.fc_weight), ("fc.bias", &self.fc_bias)] {
                let src = tensors.get(name).with_context(|| format!("{}: no {name}", path.display()))?;
                if src.size() != dst.size() {
                    bail!(
                        "{}: {name} is {:?}, the classifier {:?} (other classes?)",
                        path.display(),
                        src.size(),
                        dst.size()
                    );
                }
                dst.shallow_clone().copy_(src);
            }
            Ok(())
        })?;
        self.opt.load_state(tensors).with_context(|| format!("{}: optimiser state", path.display()))?;
        if let Some(scaler) = &mut self.scaler {
            scaler.load_state(tensors).with_context(|| format!("{}: loss-scaler state", path.display()))?;
        }
        Ok(())
    }

    fn evaluate(&mut self, _epoch: u64, sink: &mut dyn EventSink) -> Result<Option<Map<String, Value>>> {
        let mut acc = TopK::default();
        let mut loss_sum = 0.0;
        for b in self.val.batches() {
            let b = b?;
            for (i, why) in &b.skipped {
                sink.emit(
                    &Event::new(TOOL, "warn")
                        .str("message", format!("skipped {} (scored as a blank image): {why}", self.val_data.name(*i))),
                )?;
            }
            let labels = b.labels.context("the val data has no labels")?;
            let y = Tensor::from_slice(&labels).to_device(self.device);
            let logits = tch::no_grad(|| self.logits(&b.images.to_device(self.device), false))?;
            loss_sum += logits.cross_entropy_for_logits(&y).double_value(&[]) * labels.len() as f64;
            acc.add_ranks(&true_class_rank(&logits, &y));
        }
        let mut m = Map::new();
        m.insert("top1_pct".into(), json!(acc.top1_pct()));
        m.insert("top5_pct".into(), json!(acc.top5_pct()));
        m.insert("val_loss".into(), json!(loss_sum / acc.n.max(1) as f64));
        m.insert("n_val".into(), json!(acc.n));
        Ok(Some(m))
    }
}

/// The result (`RUN/result.json`).
#[derive(Debug, Clone, Serialize)]
pub struct SemiReport {
    pub tool: &'static str,
    pub git_revision: &'static str,
    pub protocol: SemiConfig,
    pub subset_images: usize,
    pub subset_file: PathBuf,
    pub classes: usize,
    pub n_val: usize,
    pub checkpoint: PathBuf,
    pub evals: Vec<train::EvalRecord>,
    /// The last evaluation (after the last epoch).
    pub final_top1_pct: f64,
    pub final_top5_pct: f64,
    pub final_epoch: u64,
    /// The best evaluation by top-1 (then top-5): chosen on the val split it is scored on.
    pub best_top1_pct: f64,
    pub best_top5_pct: f64,
    pub best_epoch: u64,
    pub best_chosen_on: &'static str,
    pub best_is_optimistic: bool,
}

fn num(r: &train::EvalRecord, k: &str) -> f64 {
    r.fields.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

/// Runs (or, with `opts.resume`, resumes) a fine-tuning. `cfg.model` must be set when resuming (the stored
/// configuration); a new run resolves it from `cfg.ckpt`. Writes `RUN/config.json`, `RUN/subset.txt`, the
/// checkpoints and `RUN/result.json`.
pub fn run(
    cfg: &SemiConfig,
    opts: &RunOptions,
    run_dir: &RunDir,
    sink: &mut dyn EventSink,
    progress: &mut dyn FnMut(&StepReport),
) -> Result<SemiReport> {
    if cfg.eval_every == 0 {
        return Err(LewelError::Usage("--eval-every must be at least 1".into()).into());
    }
    let opts = &train::prepare_resume(opts, run_dir, TOOL, sink)?;
    let subset = open_subset(cfg)?;
    let val_data =
        crate::data::open(&DataSpec { path: cfg.val.clone(), root: None, strict: cfg.strict }).context("--val-data")?;
    if val_data.num_classes().is_none() {
        bail!("--val-data {}: no labels", cfg.val.display());
    }
    let classes = subset.data.num_classes().unwrap_or(0).max(val_data.num_classes().unwrap_or(0));

    let device = opts.device;
    let (vs, model, mut cfg) = if opts.resume {
        let mc = cfg.model.clone().context("the stored configuration holds no model")?;
        let vs = VarStore::new(device);
        let model = Lewel::new(&vs, &mc)?;
        (vs, model, cfg.clone())
    } else {
        let m = crate::embed::open_model(&cfg.ckpt, device, TOOL, sink)?;
        let mut c = cfg.clone();
        c.model = Some(m.config().clone());
        (m.vs, m.model, c)
    };
    let mc = cfg.model.clone().expect("set above");
    cfg.model = Some(mc.clone());
    let cfg = &cfg;
    let described = json!({"train": subset.data.describe(), "train_fingerprint": subset.data.fingerprint(), "images": subset.data.len(), "val": val_data.describe(), "classes": classes});
    let subset_file = run_dir.root().join("subset.txt");
    if !opts.resume {
        run_dir.write_config(&json!({"finetune_semi": cfg, "data": described}))?;
        let mut text = subset.lines.join("\n");
        text.push('\n');
        crate::fsio::write_bytes_atomic(&subset_file, text.as_bytes())?;
    }

    tch::manual_seed(cfg.seed as i64);
    let c = model.online().backbone.out_channels();
    let (fc_weight, fc_bias) = linear_init(classes as i64, c, device);
    let mut params: Vec<(String, Tensor, usize)> = model
        .trainable()
        .into_iter()
        .filter(|(n, _)| n.starts_with("online_net.backbone."))
        .map(|(name, tensor)| (name, tensor, BACKBONE))
        .collect();
    params.push(("fc.weight".into(), fc_weight.shallow_clone(), CLASSIFIER));
    params.push(("fc.bias".into(), fc_bias.shallow_clone(), CLASSIFIER));
    let opt = semi_optimizer(cfg, params);

    let recipe = default_train_recipe(cfg.size, cfg.eval_resize, cfg.eval_crop)?;
    let lc_data = LoaderConfig {
        seed: cfg.seed,
        batch_size: cfg.batch_size,
        threads: opts.threads,
        prefetch: 2,
        shuffle: true,
        drop_last: true,
        strict: cfg.strict,
        shuffle_buffer: crate::data::shards::DEFAULT_SHUFFLE_BUFFER,
    };
    let source = Labelled(LabelledLoader::new(subset.data.clone(), recipe.clone(), lc_data)?);
    let val = EvalLoader::new(
        val_data.clone(),
        recipe.clone(),
        EvalConfig { batch_size: cfg.batch_size, threads: opts.threads, prefetch: 2, strict: cfg.strict },
    )?;
    let cfg_json = serde_json::to_value(cfg)?;
    let mut start_fields = train::flatten(&json!({"finetune_semi": cfg_json}));
    start_fields.extend(train::flatten(&json!({"data": described})));
    let lc = LoopConfig {
        tool: TOOL,
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        schedule: LrSchedule::Steps { milestones: cfg.milestones.clone(), gamma: cfg.gamma },
        seed: cfg.seed,
        ckpt_every_steps: 0,
        ckpt_every_epochs: cfg.ckpt_every_epochs,
        keep_last: cfg.keep_last,
        keep_every_epochs: 0,
        eval_every_epochs: cfg.eval_every,
        config: json!({"model": mc, "finetune_semi": cfg_json}),
        start_fields,
    };
    if opts.channels_last {
        amp::to_channels_last(model.state_dict().into_iter().map(|(_, t)| t))?;
    }
    let scaler =
        GradScaler::for_precision(opts.precision, opts.loss_scale_init, device).context("--loss-scale-init")?;
    let mut task = SemiTask {
        cfg,
        _vs: vs,
        model,
        fc_weight,
        fc_bias,
        opt,
        device,
        val,
        val_data: val_data.clone(),
        precision: opts.precision,
        channels_last: opts.channels_last,
        scaler,
    };
    let out = train::train_loop(&lc, &source, &mut task, opts, run_dir, sink, progress)?;

    let last = out.evals.last().cloned();
    let best = out
        .evals
        .iter()
        .fold(None::<&train::EvalRecord>, |b, r| match b {
            Some(b) if (num(b, "top1_pct"), num(b, "top5_pct")) >= (num(r, "top1_pct"), num(r, "top5_pct")) => Some(b),
            _ => Some(r),
        })
        .cloned();
    let pick = |r: &Option<train::EvalRecord>, k: &str| r.as_ref().map_or(0.0, |r| num(r, k));
    let report = SemiReport {
        tool: TOOL,
        git_revision: crate::GIT_REVISION,
        protocol: cfg.clone(),
        subset_images: subset.data.len(),
        subset_file,
        classes,
        n_val: val_data.len(),
        checkpoint: out.checkpoint.clone(),
        final_top1_pct: pick(&last, "top1_pct"),
        final_top5_pct: pick(&last, "top5_pct"),
        final_epoch: last.as_ref().map_or(0, |r| r.epoch),
        best_top1_pct: pick(&best, "top1_pct"),
        best_top5_pct: pick(&best, "top5_pct"),
        best_epoch: best.as_ref().map_or(0, |r| r.epoch),
        best_chosen_on: "val",
        best_is_optimistic: true,
        evals: out.evals,
    };
    if out.step >= out.total_steps {
        crate::eval::write_result_json(&run_dir.root().join("result.json"), &report)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_is_deterministic_and_counts_per_class() {
        let labels: Vec<i64> = (0..250).map(|i| (i % 7) as i64 % 3).collect(); // classes of 84, 83, 83
        let a = stratified(&labels, 0.1, 1).unwrap();
        assert_eq!(a, stratified(&labels, 0.1, 1).unwrap());
        assert_ne!(a, stratified(&labels, 0.1, 2).unwrap());
        for c in 0..3 {
            let n = labels.iter().filter(|&&l| l == c).count();
            let k = a.iter().filter(|&&i| labels[i] == c).count();
            assert_eq!(k, ((0.1 * n as f64).round() as usize).max(1), "class {c}");
        }
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        // At least one per class, however small the fraction.
        assert_eq!(stratified(&labels, 0.0001, 1).unwrap().len(), 3);
        assert!(stratified(&labels, 0.0, 1).is_err());
        assert!(stratified(&labels, 1.5, 1).is_err());
    }

    #[test]
    fn presets_follow_the_official_protocol() {
        let p1 = preset("semi-1pct").unwrap();
        assert_eq!((p1.lr_backbone, p1.lr_classifier, p1.epochs, p1.batch_size), (0.0001, 1.0, 50, 256));
        assert_eq!((p1.milestones.clone(), p1.gamma, p1.momentum, p1.weight_decay), (vec![30, 40], 0.1, 0.9, 1e-4));
        assert_eq!((p1.size, p1.eval_resize, p1.eval_crop, p1.eval_every), (224, 256, 224, 5));
        let p10 = preset("semi-10pct").unwrap();
        assert_eq!((p10.lr_backbone, p10.lr_classifier), (0.01, 0.1));
        assert!(preset("semi-5pct").is_err());
        assert_eq!(eval_sizes(224), (256, 224));
        assert_eq!(eval_sizes(32), (32, 32));
    }

    #[test]
    fn step_schedule_decays_both_groups() {
        let s = LrSchedule::Steps { milestones: vec![30, 40], gamma: 0.1 };
        assert_eq!(s.lr(1.0, 50, 29, 7, 10), 1.0);
        assert!((s.lr(1.0, 50, 30, 0, 10) - 0.1).abs() < 1e-15);
        assert!((s.lr(0.01, 50, 45, 0, 10) - 0.0001).abs() < 1e-15);
    }

    #[test]
    fn linear_init_is_torchvision_default() {
        tch::manual_seed(0);
        let (w, b) = linear_init(10, 64, Device::Cpu);
        assert_eq!((w.size(), b.size()), (vec![10, 64], vec![10]));
        let bound = 1.0 / 8.0;
        for t in [&w, &b] {
            assert!(t.abs().max().double_value(&[]) <= bound);
            assert!(t.requires_grad());
        }
        assert!(w.abs().max().double_value(&[]) > 0.9 * bound);
    }
}
