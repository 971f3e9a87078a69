//! The probes' two modes end to end, with traceable results and `--results` bookkeeping.
//!
//! - cached features: `--train-features A.npy --val-features B.npy` (one evaluation);
//! - checkpoints: `--ckpt ...` (repeatable; a folder means every complete checkpoint in it) with
//!   `--train-data` and `--val-data`, features computed by the frozen backbone ([`super::onthefly`]).
//!
//! Each evaluation ends with one `result` event on stdout: a flat object with the metrics and the whole
//! protocol (see [`super::results`]). With `--results FILE.jsonl` the same line is appended to the file,
//! and an evaluation whose (checkpoint sha256, protocol hash) the file already holds is skipped with a
//! `skip` event; nothing to do is success.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use super::ckpts::{self, CkptRef};
use super::features::{check_val_classes, FeatureSource, ProbeData};
use super::knn::{self, KnnConfig, KnnReport};
use super::linear::{self, LinearConfig, LinearReport};
use super::onthefly::{self, EmbedSettings};
use super::results::{protocol_hash, sha256_file, ResultKey, ResultsFile, RESULT_EVENT};
use super::{device_name, join, Progress};
use crate::data::{open, DataSpec, Dataset};
use crate::events::{Event, EventSink};
use crate::LewelError;

/// Where the features of a run come from.
#[derive(Debug, Clone)]
pub enum Mode {
    /// The `.npy` files named in the probe's config.
    Features,
    /// Checkpoints (as given to `--ckpt`) and the labelled DATA of both splits.
    Ckpts { ckpts: Vec<PathBuf>, train: DataSpec, val: DataSpec, embed: EmbedSettings },
}

/// What a job did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub evaluated: usize,
    pub skipped: usize,
}

/// `npy:N:HASH16`: the identity of a features file and its labels.
fn features_fingerprint(features: &Path, labels: &Path, n: usize) -> Result<String> {
    let a = sha256_file(features)?;
    let b = sha256_file(labels)?;
    Ok(format!("npy:{n}:{}:{}", &a[..16], &b[..16]))
}

/// Labelled DATA of both splits, opened and checked before any checkpoint is read.
struct Splits {
    train: Arc<dyn Dataset>,
    val: Arc<dyn Dataset>,
    train_labels: Vec<i64>,
}

/// The cached-feature inputs of a probe in its protocol: each file, its fingerprint and its row count.
fn describe_features(protocol: &mut Map<String, Value>, data: &ProbeData) -> Result<()> {
    for (side, f) in [("train", &data.train), ("val", &data.val)] {
        protocol.insert(format!("{side}_features"), Value::from(f.features_path.display().to_string()));
        let fp = features_fingerprint(&f.features_path, &f.labels_path, f.n)?;
        protocol.insert(format!("{side}_fingerprint"), Value::from(fp));
        protocol.insert(format!("n_{side}"), Value::from(f.n));
    }
    Ok(())
}

fn open_splits(train: &DataSpec, val: &DataSpec) -> Result<Splits> {
    let t = open(train).with_context(|| format!("could not open --train-data {}", train.path.display()))?;
    let v = open(val).with_context(|| format!("could not open --val-data {}", val.path.display()))?;
    if t.fingerprint() == v.fingerprint() {
        return Err(LewelError::Usage(format!(
            "--train-data {} and --val-data {} hold the same items: the val items would also be in the training \
             set, which inflates the accuracy; give a held-out split",
            train.path.display(),
            val.path.display()
        ))
        .into());
    }
    let train_labels = onthefly::labels_of(&*t)?;
    let val_labels = onthefly::labels_of(&*v)?;
    check_val_classes(&train_labels, &val_labels, &train.path, &val.path)?;
    Ok(Splits { train: t, val: v, train_labels })
}

/// The data part of a protocol.
fn data_protocol(m: &mut Map<String, Value>, splits: &Splits, train: &DataSpec, val: &DataSpec, e: &EmbedSettings) {
    m.insert("train_data".into(), Value::from(train.path.display().to_string()));
    m.insert("train_fingerprint".into(), Value::from(splits.train.fingerprint()));
    m.insert("n_train".into(), Value::from(splits.train.len()));
    m.insert("val_data".into(), Value::from(val.path.display().to_string()));
    m.insert("val_fingerprint".into(), Value::from(splits.val.fingerprint()));
    m.insert("n_val".into(), Value::from(splits.val.len()));
    for (k, v) in e.describe() {
        m.insert(k, v);
    }
}

/// Opens a listed checkpoint, or `None` (with a `warn` event) when its run deleted it meanwhile: a cron job
/// evaluating a live run's folder races the run's pruning of old checkpoints, and that is no error.
pub(crate) fn open_listed(
    ck: &CkptRef,
    device: tch::Device,
    tool: &str,
    sink: &mut dyn EventSink,
) -> Result<Option<crate::embed::InferenceModel>> {
    match crate::embed::open_model(&ck.path, device, tool, sink) {
        Ok(m) => Ok(Some(m)),
        Err(e) if !ck.path.exists() => {
            sink.emit(&Event::new(tool, "warn").str(
                "message",
                format!("{} was deleted (pruned by its run) after it was listed; skipped: {e:#}", ck.path.display()),
            ))?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Bookkeeping shared by the probes (and `dense-probe`): skip, emit, append.
pub(crate) struct Ledger {
    tool: &'static str,
    file: Option<ResultsFile>,
    done: HashSet<ResultKey>,
    pub(crate) summary: Summary,
}

impl Ledger {
    pub(crate) fn new(tool: &'static str, results: Option<&Path>) -> Result<Self> {
        let file = results.map(ResultsFile::new);
        let done = match &file {
            Some(f) => f.keys()?,
            None => HashSet::new(),
        };
        Ok(Ledger { tool, file, done, summary: Summary::default() })
    }

    /// Whether this (checkpoint, protocol) is already in `--results`, without emitting anything.
    pub(crate) fn would_skip(&self, ck: Option<&CkptRef>, hash: &str) -> bool {
        self.done.contains(&(ck.map(|c| c.sha256.clone()).unwrap_or_default(), hash.to_string()))
    }

    /// Whether this (checkpoint, protocol) is already in `--results`; emits `skip` if so.
    pub(crate) fn skip(&mut self, ck: Option<&CkptRef>, hash: &str, sink: &mut dyn EventSink) -> Result<bool> {
        let key = (ck.map(|c| c.sha256.clone()).unwrap_or_default(), hash.to_string());
        if !self.done.contains(&key) {
            return Ok(false);
        }
        let mut e = Event::new(self.tool, "skip")
            .str("reason", "already in --results with the same checkpoint and protocol")
            .str("protocol_hash", hash);
        if let Some(c) = ck {
            e = e.str("ckpt", c.path.display().to_string()).str("ckpt_sha256", c.sha256.clone());
        }
        sink.emit(&e)?;
        self.summary.skipped += 1;
        Ok(true)
    }

    /// Emits the `result` line and appends it to `--results`.
    pub(crate) fn record(
        &mut self,
        ck: Option<&CkptRef>,
        protocol: &Map<String, Value>,
        hash: &str,
        details: Map<String, Value>,
        sink: &mut dyn EventSink,
    ) -> Result<()> {
        let mut e = Event::new(self.tool, RESULT_EVENT);
        match ck {
            Some(c) => {
                e = e.str("ckpt", c.path.display().to_string()).str("ckpt_sha256", c.sha256.clone());
                if let Some(s) = c.step {
                    e = e.int("ckpt_step", s as i64);
                }
                if let Some(s) = c.epoch {
                    e = e.int("ckpt_epoch", s as i64);
                }
            }
            None => e = e.str("ckpt", "none (cached features)"),
        }
        e = e.str("protocol_hash", hash).merge(protocol).merge(&details).str("git_revision", crate::GIT_REVISION);
        sink.emit(&e)?;
        let key = (ck.map(|c| c.sha256.clone()).unwrap_or_default(), hash.to_string());
        if let Some(f) = &self.file {
            f.append_unless_present(&key, e.to_line().trim_end())?;
        }
        self.done.insert(key);
        self.summary.evaluated += 1;
        Ok(())
    }
}

fn flat(v: Value) -> Map<String, Value> {
    let mut out = Map::new();
    if let Value::Object(m) = v {
        for (k, v) in m {
            let v = match v {
                Value::Array(a) => Value::from(
                    a.iter().map(|x| x.to_string().trim_matches('"').to_string()).collect::<Vec<_>>().join(","),
                ),
                Value::Null => Value::from(""),
                other => other,
            };
            out.insert(k, v);
        }
    }
    out
}

fn knn_metrics(r: &KnnReport) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("dim".into(), Value::from(r.dim));
    m.insert("classes".into(), Value::from(r.classes));
    if r.results.len() == 1 {
        m.insert("top1_pct".into(), Value::from(r.results[0].top1_pct));
        m.insert("top5_pct".into(), Value::from(r.results[0].top5_pct));
    }
    for p in &r.results {
        m.insert(format!("top1_pct_k{}_t{}", p.k, p.temperature), Value::from(p.top1_pct));
        m.insert(format!("top5_pct_k{}_t{}", p.k, p.temperature), Value::from(p.top5_pct));
    }
    m.insert("best_k".into(), Value::from(r.best.k));
    m.insert("best_temperature".into(), Value::from(r.best.temperature));
    m.insert("best_top1_pct".into(), Value::from(r.best.top1_pct));
    m.insert("best_top5_pct".into(), Value::from(r.best.top5_pct));
    m.insert("best_chosen_on".into(), Value::from("val"));
    m.insert("device".into(), Value::from(device_name(r.config.device)));
    m.insert("elapsed_s".into(), Value::from(r.elapsed_s));
    m
}

fn linear_metrics(r: &LinearReport) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("dim".into(), Value::from(r.dim));
    m.insert("classes".into(), Value::from(r.classes));
    m.insert("final_top1_pct".into(), Value::from(r.final_top1_pct));
    m.insert("final_top5_pct".into(), Value::from(r.final_top5_pct));
    m.insert("final_epoch".into(), Value::from(r.epochs.len()));
    m.insert("best_top1_pct".into(), Value::from(r.best_top1_pct));
    m.insert("best_top5_pct".into(), Value::from(r.best_top5_pct));
    m.insert("best_epoch".into(), Value::from(r.best_epoch));
    m.insert("best_is_optimistic".into(), Value::from(true));
    m.insert("device".into(), Value::from(device_name(r.config.device)));
    m.insert("elapsed_s".into(), Value::from(r.elapsed_s));
    m
}

/// The kNN probe in either mode; `cfg.train` / `cfg.val` are read in [`Mode::Features`].
pub fn knn(
    cfg: &KnnConfig,
    mode: &Mode,
    results: Option<&Path>,
    sink: &mut dyn EventSink,
    progress: Progress,
) -> Result<Summary> {
    const TOOL: &str = "knn-probe";
    cfg.validate()?;
    let mut ledger = Ledger::new(TOOL, results)?;
    let mut protocol = Map::new();
    protocol.insert("probe".into(), Value::from("knn"));
    protocol.insert("k".into(), Value::from(join(&cfg.ks)));
    protocol.insert("temperature".into(), Value::from(join(&cfg.temperatures)));
    protocol.insert("similarity".into(), Value::from("cosine, votes exp(cos/T)"));
    match mode {
        Mode::Features => {
            let t0 = Instant::now();
            let data = ProbeData::load(&cfg.train, &cfg.val)?;
            describe_features(&mut protocol, &data)?;
            let hash = protocol_hash(&protocol);
            if ledger.skip(None, &hash, sink)? {
                return Ok(ledger.summary);
            }
            let report = knn::evaluate(cfg, &data, sink, progress, t0)?;
            ledger.record(None, &protocol, &hash, knn_metrics(&report), sink)?;
        }
        Mode::Ckpts { ckpts, train, val, embed } => {
            let splits = open_splits(train, val)?;
            data_protocol(&mut protocol, &splits, train, val, embed);
            let hash = protocol_hash(&protocol);
            for ck in ckpts::expand(ckpts, TOOL, sink)? {
                if ledger.skip(Some(&ck), &hash, sink)? {
                    continue;
                }
                let t0 = Instant::now();
                let Some(model) = open_listed(&ck, cfg.device, TOOL, sink)? else { continue };
                let recipe = onthefly::eval_recipe(&model, embed)?;
                let tr = onthefly::embed_split(&model, splits.train.clone(), &recipe, embed, cfg.device, TOOL, sink)?;
                let va = onthefly::embed_split(&model, splits.val.clone(), &recipe, embed, cfg.device, TOOL, sink)?;
                let data = ProbeData::new(tr, va)?;
                let report = knn::evaluate(cfg, &data, sink, progress, t0)?;
                let mut details = knn_metrics(&report);
                details.insert("ckpt_kind".into(), Value::from(model.kind));
                details.insert("eval_transform".into(), Value::from(onthefly::describe_eval(&recipe)));
                details.insert("eval_resize_used_px".into(), Value::from(recipe.eval_resize));
                details.insert("eval_crop_used_px".into(), Value::from(recipe.eval_crop));
                ledger.record(Some(&ck), &protocol, &hash, details, sink)?;
            }
        }
    }
    Ok(ledger.summary)
}

/// The linear probe in either mode; `cfg.train` / `cfg.val` are read in [`Mode::Features`].
pub fn linear(
    cfg: &LinearConfig,
    mode: &Mode,
    threads: usize,
    results: Option<&Path>,
    sink: &mut dyn EventSink,
    progress: Progress,
) -> Result<Summary> {
    const TOOL: &str = "linear-probe";
    cfg.protocol.validate()?;
    let mut ledger = Ledger::new(TOOL, results)?;
    let mut protocol = Map::new();
    protocol.insert("probe".into(), Value::from("linear"));
    for (k, v) in flat(serde_json::to_value(&cfg.protocol)?) {
        protocol.insert(k, v);
    }
    protocol.insert("seed".into(), Value::from(cfg.seed));
    match mode {
        Mode::Features => {
            let t0 = Instant::now();
            let data = ProbeData::load(&cfg.train, &cfg.val)?;
            describe_features(&mut protocol, &data)?;
            protocol.insert("train_transform".into(), Value::from("none (cached features)"));
            let hash = protocol_hash(&protocol);
            if ledger.skip(None, &hash, sink)? {
                return Ok(ledger.summary);
            }
            let report = linear::train_and_evaluate(cfg, &data, sink, progress, t0)?;
            ledger.record(None, &protocol, &hash, linear_metrics(&report), sink)?;
        }
        Mode::Ckpts { ckpts, train, val, embed } => {
            if cfg.protocol.normalize {
                return Err(LewelError::Usage(
                    "--normalize needs cached features (its statistics are of the training features); drop it \
                     with --ckpt"
                        .into(),
                )
                .into());
            }
            let splits = open_splits(train, val)?;
            data_protocol(&mut protocol, &splits, train, val, embed);
            protocol.insert(
                "train_transform".into(),
                Value::from("random resized crop scale 0.08-1 ratio 3/4-4/3, flip p 0.5 (torchvision DefaultTrain)"),
            );
            let hash = protocol_hash(&protocol);
            for ck in ckpts::expand(ckpts, TOOL, sink)? {
                if ledger.skip(Some(&ck), &hash, sink)? {
                    continue;
                }
                let t0 = Instant::now();
                let Some(model) = open_listed(&ck, cfg.device, TOOL, sink)? else { continue };
                let recipe = onthefly::eval_recipe(&model, embed)?;
                let train_recipe = onthefly::train_recipe(&recipe)?;
                let va = onthefly::embed_split(&model, splits.val.clone(), &recipe, embed, cfg.device, TOOL, sink)?;
                let mut batches = onthefly::AugmentedBatches::new(
                    &model.model,
                    splits.train.clone(),
                    train_recipe.clone(),
                    cfg.protocol.batch_size,
                    threads,
                    cfg.seed,
                    embed.strict,
                    cfg.device,
                )?;
                let split = linear::TrainSplit {
                    features: splits.train.describe(),
                    labels_path: train.path.display().to_string(),
                    labels: &splits.train_labels,
                    dim: va.dim,
                };
                let val_x = va.features_tensor(cfg.device);
                let report = linear::train_with(cfg, &split, &mut batches, &va, &val_x, sink, progress, t0)?;
                let mut details = linear_metrics(&report);
                details.insert("ckpt_kind".into(), Value::from(model.kind));
                details.insert("eval_transform".into(), Value::from(onthefly::describe_eval(&recipe)));
                details.insert("eval_resize_used_px".into(), Value::from(recipe.eval_resize));
                details.insert("eval_crop_used_px".into(), Value::from(recipe.eval_crop));
                details.insert("train_transform_used".into(), Value::from(onthefly::describe_train(&train_recipe)));
                ledger.record(Some(&ck), &protocol, &hash, details, sink)?;
            }
        }
    }
    Ok(ledger.summary)
}

/// The flags both probes share for the checkpoint mode and the results file.
#[derive(Debug, Clone, clap::Args)]
pub struct CkptArgs {
    /// Evaluate checkpoints instead of cached features: a checkpoint file, a `latest` pointer, an
    /// exported or torchvision backbone, or a folder (a run's ckpt/, or the run) meaning every complete
    /// checkpoint in it. Repeatable. Needs --train-data and --val-data; incomplete checkpoints (no
    /// sidecar yet, wrong sha256) are skipped with a `warn` event.
    #[arg(long, value_name = "CKPT", requires_all = ["train_data", "val_data"])]
    pub ckpt: Vec<PathBuf>,

    /// With --ckpt: the labelled training images (class folders, a list file, IDX with labels).
    #[arg(long, value_name = "DATA", requires = "ckpt")]
    pub train_data: Option<PathBuf>,

    /// With --ckpt: the labelled validation images, a different split from --train-data.
    #[arg(long, value_name = "DATA", requires = "ckpt")]
    pub val_data: Option<PathBuf>,

    /// With --ckpt: shorter side of the eval transform's resize in pixels [default: the
    /// checkpoint's recipe: 256 for ImageNet-sized models, 32 for CIFAR-stem ones].
    #[arg(long, value_name = "PX", requires = "ckpt")]
    pub resize: Option<u32>,

    /// With --ckpt: side of the eval transform's centre crop in pixels [default: the checkpoint's
    /// recipe: 224, or 32]; the training crops of linear-probe have this size too.
    #[arg(long, value_name = "PX", requires = "ckpt")]
    pub crop: Option<u32>,

    /// With --ckpt: images per forward pass of the frozen backbone when embedding.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub embed_batch_size: usize,

    /// With --ckpt: data worker threads (0: one per core). The numbers do not depend on it.
    #[arg(long, value_name = "T", default_value_t = 0)]
    pub threads: usize,

    /// Append each result line to this JSON-lines file (under a lock), and skip every checkpoint it
    /// already holds a result for with the same protocol: run it from cron.
    #[arg(long, value_name = "FILE.jsonl")]
    pub results: Option<PathBuf>,

    /// With --ckpt: stop at the first unreadable image (default: a blank image, or in linear-probe's training
    /// epochs another item, takes its place, and a `warn` event names it).
    #[arg(long, requires = "ckpt")]
    pub strict: bool,
}

impl CkptArgs {
    /// The sources and the mode: cached features when no --ckpt is given.
    pub fn sources(
        &self,
        train_features: Option<PathBuf>,
        train_labels: Option<PathBuf>,
        val_features: Option<PathBuf>,
        val_labels: Option<PathBuf>,
    ) -> (FeatureSource, FeatureSource, Mode) {
        if self.ckpt.is_empty() {
            let t = FeatureSource::Npy { features: train_features.unwrap_or_default(), labels: train_labels };
            let v = FeatureSource::Npy { features: val_features.unwrap_or_default(), labels: val_labels };
            return (t, v, Mode::Features);
        }
        let (td, vd) = (self.train_data.clone().unwrap_or_default(), self.val_data.clone().unwrap_or_default());
        let mode = Mode::Ckpts {
            ckpts: self.ckpt.clone(),
            train: DataSpec { path: td.clone(), root: None, strict: self.strict },
            val: DataSpec { path: vd.clone(), root: None, strict: self.strict },
            embed: EmbedSettings {
                resize: self.resize,
                crop: self.crop,
                batch_size: self.embed_batch_size,
                threads: self.threads,
                strict: self.strict,
            },
        };
        (FeatureSource::Data { data: td }, FeatureSource::Data { data: vd }, mode)
    }
}
