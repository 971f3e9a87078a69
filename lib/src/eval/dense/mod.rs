//! `dense-probe`: what a frozen backbone learned *where*, scored by semantic segmentation (mIoU) on its feature
//! maps, with two protocols:
//!
//! - **linear**: a 1x1-convolution classifier on the feature map ([`protocols::linear_train`]), trained with a
//!   soft-target cross-entropy against each patch's label distribution (the mask downsampled to the feature grid
//!   by area), deterministic (zero init, images in file order, SGD), scored from bilinearly upsampled logits;
//! - **knn**: training-free in-context segmentation in the manner of Hummingbird (Balažević et al., NeurIPS 2023,
//!   arXiv:2306.01667): a memory bank of training patch features with their label histograms, a top-k cosine vote
//!   with a softmax temperature for every validation patch, upsampled bilinearly ([`protocols::knn_votes`]).
//!
//! Features come from checkpoints (the eval transform, eval-mode BN, stage 4 or stages 3 and 4) or from cached
//! `[N, C, h, w]` `.npy` maps ([`inputs`]). Each (checkpoint, protocol) gives one `result` event with mIoU, pixel
//! accuracy and per-class IoU ([`metrics`]), recorded and skipped through `--results` exactly as the other probes
//! do ([`crate::eval::jobs`]).

pub mod inputs;
pub mod metrics;
pub mod preview;
pub mod protocols;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

use self::inputs::MaskedData;
use self::metrics::{Confusion, IGNORE};
use self::preview::{PreviewItem, PREVIEW_IMAGES};
use self::protocols::{DenseSplit, KnnSettings, LinearSettings};
use super::ckpts::{self, CkptRef};
use super::jobs::{open_listed, Ledger, Summary};
use super::results::{protocol_hash, sha256_file};
use super::{device_name, join, Progress};
use crate::data::Recipe;
use crate::embed::InferenceModel;
use crate::events::{Event, EventSink};
use crate::LewelError;

pub const TOOL: &str = "dense-probe";

/// Defaults of the protocols (documented in `--help`).
pub const DEFAULT_K: i64 = 20;
pub const DEFAULT_TEMPERATURE: f64 = 0.07;
pub const DEFAULT_MEMORY_SIZE: usize = 1_000_000;
pub const DEFAULT_EPOCHS: usize = 10;
pub const DEFAULT_LR: f64 = 0.1;
pub const DEFAULT_BATCH_SIZE: i64 = 16;
pub const DEFAULT_QUERY_CHUNK: i64 = 1024;
pub const DEFAULT_BANK_CHUNK: i64 = 65536;

/// A protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Linear,
    Knn,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Linear => "linear",
            Protocol::Knn => "knn",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "linear" => Ok(Protocol::Linear),
            "knn" => Ok(Protocol::Knn),
            _ => Err(format!("unknown protocol {s:?}; expected linear or knn")),
        }
    }
}

/// Where the feature maps come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Cached float32 `[N, C, h, w]` maps, masks beside them (`FEATS.masks.npy`) unless given.
    Features { train: PathBuf, train_masks: Option<PathBuf>, val: PathBuf, val_masks: Option<PathBuf> },
    /// Checkpoints and images with masks.
    Ckpts { ckpts: Vec<PathBuf>, train: DataArgs, val: DataArgs, embed: EmbedArgs },
}

/// One split of images with masks.
#[derive(Debug, Clone)]
pub struct DataArgs {
    pub path: PathBuf,
    pub masks: Option<PathBuf>,
    pub split_list: Option<PathBuf>,
}

/// How images become feature maps.
#[derive(Debug, Clone)]
pub struct EmbedArgs {
    pub resize: Option<u32>,
    pub crop: Option<u32>,
    /// Backbone stages read (`[4]` or `[3, 4]`).
    pub layers: Vec<usize>,
    pub batch_size: usize,
    pub threads: usize,
    pub strict: bool,
}

/// The whole configuration of a run.
#[derive(Debug, Clone)]
pub struct DenseConfig {
    pub protocols: Vec<Protocol>,
    pub source: Source,
    /// The class count (ids `0..classes`, 255 ignored); `None`: the largest id in the masks + 1.
    pub classes: Option<usize>,
    /// Names for the legend and the per-class keys.
    pub class_names: Option<Vec<String>>,
    pub knn: KnnSettings,
    pub linear: LinearSettings,
    pub device: Device,
    pub results: Option<PathBuf>,
    pub preview: Option<PathBuf>,
}

impl DenseConfig {
    /// Checks what the flags cannot.
    pub fn validate(&self) -> Result<(), LewelError> {
        let usage = |m: String| Err(LewelError::Usage(m));
        if self.protocols.is_empty() {
            return usage("--protocol needs at least one of linear, knn".into());
        }
        if self.knn.k < 1 || !(self.knn.temperature > 0.0 && self.knn.temperature.is_finite()) {
            return usage(format!(
                "--k must be >= 1 and --temperature > 0, got {} and {}",
                self.knn.k, self.knn.temperature
            ));
        }
        if self.knn.memory_size == 0 || self.knn.query_chunk < 1 || self.knn.bank_chunk < 1 {
            return usage("--memory-size, --query-chunk and --bank-chunk must be at least 1".into());
        }
        if self.linear.epochs == 0
            || self.linear.batch_size < 1
            || !(self.linear.lr > 0.0 && self.linear.lr.is_finite())
        {
            return usage("--epochs and --batch-size must be at least 1 and --lr > 0".into());
        }
        if let Some(k) = self.classes {
            if !(1..=255).contains(&k) {
                return usage(format!("--classes {k}: masks are uint8 ids with 255 ignored, so 1 to 255 classes"));
            }
            if let Some(n) = &self.class_names {
                if n.len() != k {
                    return usage(format!("{} class names for --classes {k}; give one name per class", n.len()));
                }
            }
        }
        if let Source::Ckpts { embed, .. } = &self.source {
            let l = &embed.layers;
            if !(l == &[4] || l == &[3, 4]) {
                return usage(format!("--layers {}: expected 4 or 3,4", join(l)));
            }
        }
        Ok(())
    }
}

/// The part of the protocol that every result shares, and each protocol's own part.
fn protocol_of(cfg: &DenseConfig, p: Protocol, data: &Map<String, Value>) -> Map<String, Value> {
    let mut m = data.clone();
    m.insert("probe".into(), Value::from(format!("dense-{}", p.name())));
    m.insert("classes_given".into(), cfg.classes.map(Value::from).unwrap_or_else(|| Value::from("auto")));
    m.insert("ignore_label".into(), Value::from(IGNORE));
    m.insert("scored_at".into(), Value::from("mask resolution, bilinearly upsampled scores, argmax"));
    match p {
        Protocol::Knn => {
            m.insert("k".into(), Value::from(cfg.knn.k));
            m.insert("temperature".into(), Value::from(cfg.knn.temperature));
            m.insert("memory_size".into(), Value::from(cfg.knn.memory_size));
            m.insert("seed".into(), Value::from(cfg.knn.seed));
            m.insert("similarity".into(), Value::from("cosine, softmax(top-k / T) over patch label histograms"));
        }
        Protocol::Linear => {
            m.insert("epochs".into(), Value::from(cfg.linear.epochs));
            m.insert("lr".into(), Value::from(cfg.linear.lr));
            m.insert("batch_size_images".into(), Value::from(cfg.linear.batch_size));
            m.insert("momentum".into(), Value::from(protocols::MOMENTUM));
            m.insert(
                "target".into(),
                Value::from("soft cross-entropy vs the mask downsampled to the grid (patch label distribution)"),
            );
            m.insert("head".into(), Value::from("1x1 conv, zero init, features standardised with train statistics"));
        }
    }
    m
}

/// The per-class key suffix of class `i`.
fn class_key(names: Option<&[String]>, i: usize) -> String {
    match names.and_then(|n| n.get(i)) {
        Some(n) => {
            let s: String = n.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
            format!("{i}_{s}")
        }
        None => i.to_string(),
    }
}

/// The metrics part of a result.
fn score_details(conf: &Confusion, names: Option<&[String]>) -> Map<String, Value> {
    let s = conf.scores();
    let mut m = Map::new();
    m.insert("miou_pct".into(), Value::from(s.miou_pct));
    m.insert("pixel_acc_pct".into(), Value::from(s.pixel_acc_pct));
    m.insert("classes".into(), Value::from(conf.classes));
    let mut absent = Vec::new();
    for (i, v) in s.iou_pct.iter().enumerate() {
        match v {
            Some(v) => {
                m.insert(format!("iou_pct_{}", class_key(names, i)), Value::from(*v));
            }
            None => absent.push(i),
        }
    }
    m.insert("classes_scored".into(), Value::from(conf.classes - absent.len()));
    m.insert("absent_classes".into(), Value::from(join(&absent)));
    m.insert("pixels_scored".into(), Value::from(s.pixels));
    m
}

/// Feature maps and masks of both splits, plus what the preview shows.
struct Splits {
    train: DenseSplit,
    val: DenseSplit,
    /// Display images of the first val items (checkpoint mode), and their names.
    shown: Vec<(String, Option<image::RgbImage>)>,
    skipped: usize,
}

/// The class count: given (ids checked by the readers), or the largest id + 1.
fn class_count(cfg: &DenseConfig, s: &Splits) -> Result<usize> {
    if let Some(k) = cfg.classes {
        return Ok(k);
    }
    let m = [inputs::max_id(&s.train.masks), inputs::max_id(&s.val.masks)].into_iter().flatten().max();
    match m {
        Some(m) => Ok(m as usize + 1),
        None => bail!("every mask pixel is {IGNORE} (ignored): nothing to learn or score"),
    }
}

/// Runs every (checkpoint, protocol) of `cfg`; returns what was evaluated and skipped.
pub fn run(cfg: &DenseConfig, sink: &mut dyn EventSink, progress: Progress) -> Result<Summary> {
    cfg.validate()?;
    let started = Instant::now();
    let mut ledger = Ledger::new(TOOL, cfg.results.as_deref())?;
    match &cfg.source {
        Source::Features { train, train_masks, val, val_masks } => {
            let t0 = Instant::now();
            if train == val {
                bail!(LewelError::Usage(format!(
                    "--train-features and --val-features are the same file {}; give a held-out split",
                    train.display()
                )));
            }
            let load = |f: &Path, m: &Option<PathBuf>| -> Result<(DenseSplit, PathBuf)> {
                let feats = inputs::read_feature_maps(f)?;
                let mp = m.clone().unwrap_or_else(|| inputs::masks_path(f));
                let masks = inputs::read_mask_array(&mp, Some(feats.size()[0] as usize))?;
                if let Some(k) = cfg.classes {
                    inputs::check_mask_ids(&masks, k, &mp)?;
                }
                Ok((
                    DenseSplit::new(feats, masks).with_context(|| format!("{} with {}", f.display(), mp.display()))?,
                    mp,
                ))
            };
            let (tr, trm) = load(train, train_masks)?;
            let (va, vam) = load(val, val_masks)?;
            if tr.dim() != va.dim() {
                bail!(
                    "{} has {} channels but {} has {}; both splits need the same backbone",
                    train.display(),
                    tr.dim(),
                    val.display(),
                    va.dim()
                );
            }
            let mut data = Map::new();
            for (side, f, m, s) in [("train", train, &trm, &tr), ("val", val, &vam, &va)] {
                data.insert(format!("{side}_features"), Value::from(f.display().to_string()));
                let fp = format!("npy-maps:{}:{}:{}", s.len(), &sha256_file(f)?[..16], &sha256_file(m)?[..16]);
                data.insert(format!("{side}_fingerprint"), Value::from(fp));
                data.insert(format!("n_{side}"), Value::from(s.len()));
            }
            let shown = (0..(va.len() as usize).min(PREVIEW_IMAGES)).map(|i| (format!("val {i}"), None)).collect();
            let splits = Splits { train: tr, val: va, shown, skipped: 0 };
            start_event(cfg, sink, &data)?;
            evaluate_all(cfg, &mut ledger, None, &data, &splits, t0, &Map::new(), sink, progress)?;
        }
        Source::Ckpts { ckpts: list, train, val, embed } => {
            let tr = MaskedData::open(&train.path, train.masks.as_deref(), train.split_list.as_deref())
                .with_context(|| format!("--train-data {}", train.path.display()))?;
            let va = MaskedData::open(&val.path, val.masks.as_deref(), val.split_list.as_deref())
                .with_context(|| format!("--val-data {}", val.path.display()))?;
            if tr.fingerprint() == va.fingerprint() {
                bail!(LewelError::Usage(format!(
                    "--train-data {} and --val-data {} hold the same images and masks; give a held-out split",
                    train.path.display(),
                    val.path.display()
                )));
            }
            let mut data = Map::new();
            for (side, d) in [("train", &tr), ("val", &va)] {
                data.insert(format!("{side}_data"), Value::from(d.path.display().to_string()));
                data.insert(format!("{side}_fingerprint"), Value::from(d.fingerprint()));
                data.insert(format!("n_{side}"), Value::from(d.len()));
            }
            let opt = |v: Option<u32>| v.map(Value::from).unwrap_or_else(|| Value::from("default"));
            data.insert("eval_resize_px".into(), opt(embed.resize));
            data.insert("eval_crop_px".into(), opt(embed.crop));
            data.insert("layers".into(), Value::from(join(&embed.layers)));
            data.insert(
                "mask_transform".into(),
                Value::from("the eval transform's resize and centre crop, nearest neighbour"),
            );
            start_event(cfg, sink, &data)?;
            for ck in ckpts::expand(list, TOOL, sink)? {
                let todo: Vec<Protocol> = cfg
                    .protocols
                    .iter()
                    .copied()
                    .filter(|&p| !ledger.would_skip(Some(&ck), &protocol_hash(&protocol_of(cfg, p, &data))))
                    .collect();
                if todo.is_empty() {
                    for &p in &cfg.protocols {
                        ledger.skip(Some(&ck), &protocol_hash(&protocol_of(cfg, p, &data)), sink)?;
                    }
                    continue;
                }
                let t0 = Instant::now();
                let Some(model) = open_listed(&ck, cfg.device, TOOL, sink)? else { continue };
                let recipe = crate::eval::onthefly::eval_recipe(
                    &model,
                    &crate::eval::onthefly::EmbedSettings {
                        resize: embed.resize,
                        crop: embed.crop,
                        batch_size: embed.batch_size,
                        threads: embed.threads,
                        strict: embed.strict,
                    },
                )?;
                let (trs, n1) = embed_split(&model, &tr, &recipe, embed, cfg, "train", sink, None)?;
                let mut shown = Vec::new();
                let (vas, n2) = embed_split(&model, &va, &recipe, embed, cfg, "val", sink, Some(&mut shown))?;
                let splits = Splits { train: trs, val: vas, shown, skipped: n1 + n2 };
                let mut extra = Map::new();
                extra.insert("ckpt_kind".into(), Value::from(model.kind));
                extra.insert("eval_transform".into(), Value::from(crate::eval::onthefly::describe_eval(&recipe)));
                extra.insert("eval_resize_used_px".into(), Value::from(recipe.eval_resize));
                extra.insert("eval_crop_used_px".into(), Value::from(recipe.eval_crop));
                evaluate_all(cfg, &mut ledger, Some(&ck), &data, &splits, t0, &extra, sink, progress)?;
            }
        }
    }
    let sum = ledger.summary.clone();
    sink.emit(
        &Event::new(TOOL, "end")
            .int("evaluated", sum.evaluated as i64)
            .int("skipped", sum.skipped as i64)
            .num("elapsed_s", started.elapsed().as_secs_f64()),
    )?;
    Ok(sum)
}

fn start_event(cfg: &DenseConfig, sink: &mut dyn EventSink, data: &Map<String, Value>) -> Result<()> {
    let names: Vec<&str> = cfg.protocols.iter().map(|p| p.name()).collect();
    sink.emit(
        &Event::new(TOOL, "start").str("protocols", names.join(",")).merge(data).str("device", device_name(cfg.device)),
    )?;
    Ok(())
}

/// Evaluates the protocols of `cfg` not yet in the ledger on one pair of splits.
#[allow(clippy::too_many_arguments)]
fn evaluate_all(
    cfg: &DenseConfig,
    ledger: &mut Ledger,
    ck: Option<&CkptRef>,
    data: &Map<String, Value>,
    s: &Splits,
    t0: Instant,
    extra: &Map<String, Value>,
    sink: &mut dyn EventSink,
    progress: Progress,
) -> Result<()> {
    let classes = class_count(cfg, s)?;
    let names = cfg.class_names.as_deref();
    let shown = s.shown.len() as i64;
    let mut preview_preds: Vec<(String, Tensor)> = Vec::new();
    for &p in &cfg.protocols {
        let protocol = protocol_of(cfg, p, data);
        let hash = protocol_hash(&protocol);
        if ledger.skip(ck, &hash, sink)? {
            continue;
        }
        let t = Instant::now();
        let mut details = Map::new();
        let conf = match p {
            Protocol::Knn => {
                let (conf, votes, bank) =
                    protocols::knn_evaluate(&s.train, &s.val, classes as i64, &cfg.knn, cfg.device, progress)?;
                details.insert("bank_patches".into(), Value::from(bank.feats.size()[0]));
                details.insert("bank_candidates".into(), Value::from(bank.candidates));
                if shown > 0 {
                    preview_preds.push(("knn".into(), protocols::predictions(&s.val, 0, shown, &votes)));
                }
                conf
            }
            Protocol::Linear => {
                let mut on_epoch = |epoch: usize, loss: f64, secs: f64| -> Result<()> {
                    let mut e =
                        Event::new(TOOL, "epoch").int("epoch", epoch as i64).num("loss", loss).num("epoch_s", secs);
                    if let Some(c) = ck {
                        e = e.str("ckpt", c.path.display().to_string());
                    }
                    sink.emit(&e)?;
                    Ok(())
                };
                let head = protocols::linear_train(
                    &s.train,
                    classes as i64,
                    &cfg.linear,
                    cfg.device,
                    &mut on_epoch,
                    progress,
                )?;
                let conf = protocols::linear_evaluate(&head, &s.val, classes as i64, cfg.device)?;
                details.insert("final_loss".into(), Value::from(*head.epoch_loss.last().unwrap_or(&0.0)));
                if shown > 0 {
                    let scores = protocols::head_scores(&head, &s.val, 0, shown, cfg.device);
                    preview_preds.push(("linear".into(), protocols::predictions(&s.val, 0, shown, &scores)));
                }
                conf
            }
        };
        details.extend(score_details(&conf, names));
        let (h, w) = s.val.grid();
        let (mh, mw) = s.val.mask_hw();
        details.insert("dim".into(), Value::from(s.val.dim()));
        details.insert("grid_h".into(), Value::from(h));
        details.insert("grid_w".into(), Value::from(w));
        details.insert("mask_h_px".into(), Value::from(mh));
        details.insert("mask_w_px".into(), Value::from(mw));
        details.insert("n_train_used".into(), Value::from(s.train.len()));
        details.insert("n_val_used".into(), Value::from(s.val.len()));
        details.insert("bad_pairs_skipped".into(), Value::from(s.skipped));
        details.insert("device".into(), Value::from(device_name(cfg.device)));
        details.insert("protocol_s".into(), Value::from(t.elapsed().as_secs_f64()));
        details.insert("elapsed_s".into(), Value::from(t0.elapsed().as_secs_f64()));
        details.extend(extra.clone());
        ledger.record(ck, &protocol, &hash, details, sink)?;
    }
    if let (Some(path), false) = (&cfg.preview, preview_preds.is_empty()) {
        let (mh, mw) = s.val.mask_hw();
        let truth = s.val.masks.narrow(0, 0, shown).contiguous();
        let ids = |t: &Tensor| Vec::<u8>::try_from(t.to_kind(Kind::Uint8).flatten(0, -1)).unwrap_or_default();
        let per = (mh * mw) as usize;
        let (t_ids, p_ids): (Vec<u8>, Vec<(String, Vec<u8>)>) =
            (ids(&truth), preview_preds.iter().map(|(n, t)| (n.clone(), ids(t))).collect());
        let items: Vec<PreviewItem> = s
            .shown
            .iter()
            .enumerate()
            .map(|(i, (name, img))| PreviewItem {
                name: name.clone(),
                image: img.clone(),
                truth: t_ids[i * per..(i + 1) * per].to_vec(),
                predictions: p_ids.iter().map(|(n, v)| (n.clone(), v[i * per..(i + 1) * per].to_vec())).collect(),
            })
            .collect();
        let names: Vec<String> = match &cfg.class_names {
            Some(n) => n.clone(),
            None => (0..classes).map(|i| format!("class {i}")).collect(),
        };
        let mut header = vec![format!("dense-probe: {} validation images, truth and predictions", items.len())];
        header.push(match ck {
            Some(c) => format!("checkpoint {}", c.path.display()),
            None => "cached feature maps".into(),
        });
        preview::write(path, header, &items, mh as usize, mw as usize, &names)
            .with_context(|| format!("could not write --preview {}", path.display()))?;
    }
    Ok(())
}

/// One split through a checkpoint: images and masks through the eval transform (bad pairs reported and skipped),
/// the frozen backbone's stage maps (combined by [`protocols::concat_stages`]); returns the split and how many pairs
/// were skipped. `shown` receives the display images of the first kept items.
#[allow(clippy::too_many_arguments)]
fn embed_split(
    model: &InferenceModel,
    data: &MaskedData,
    recipe: &Recipe,
    e: &EmbedArgs,
    cfg: &DenseConfig,
    side: &str,
    sink: &mut dyn EventSink,
    mut shown: Option<&mut Vec<(String, Option<image::RgbImage>)>>,
) -> Result<(DenseSplit, usize)> {
    let pool =
        rayon::ThreadPoolBuilder::new().num_threads(e.threads).build().context("could not start the data threads")?;
    let c = recipe.eval_crop as usize;
    let n = data.len();
    let (mut feats, mut masks) = (Vec::new(), Vec::<u8>::new());
    let mut skipped = 0;
    let mut lo = 0;
    while lo < n {
        let hi = (lo + e.batch_size.max(1)).min(n);
        let items = pool.install(|| inputs::transform_range(data, recipe, lo, hi, cfg.classes, e.strict))?;
        let mut px = Vec::new();
        let mut kept = 0;
        for (k, it) in items.into_iter().enumerate() {
            match it {
                Ok((p, m)) => {
                    if let Some(sh) = shown.as_deref_mut() {
                        if sh.len() < PREVIEW_IMAGES {
                            let img = crate::viz::sheet::unnormalise(&p, c, c, recipe.mean, recipe.std);
                            sh.push((
                                data.images.name(lo + k).rsplit('/').next().unwrap_or_default().to_string(),
                                Some(img),
                            ));
                        }
                    }
                    px.extend_from_slice(&p);
                    masks.extend_from_slice(&m);
                    kept += 1;
                }
                Err(why) => {
                    skipped += 1;
                    sink.emit(
                        &Event::new(TOOL, "warn")
                            .str("message", format!("{side} item {} skipped (bad image/mask pair): {why}", lo + k))
                            .str("split", side)
                            .int("index", (lo + k) as i64),
                    )?;
                }
            }
        }
        if kept > 0 {
            let x = inputs::batch_tensor(&px, kept, c, cfg.device);
            let maps = model.model.feature_maps(&x, &e.layers)?;
            feats.push(protocols::concat_stages(&maps)?.to_device(Device::Cpu).to_kind(Kind::Float));
        }
        lo = hi;
    }
    if feats.is_empty() {
        bail!("{}: no usable image/mask pair (all {n} skipped)", data.describe());
    }
    let nk = masks.len() / (c * c);
    let m = Tensor::from_slice(&masks).view([nk as i64, c as i64, c as i64]);
    Ok((DenseSplit::new(Tensor::cat(&feats, 0), m)?, skipped))
}

/// Parses `--class-names`: a file (one name per line) when it exists, else a comma list.
pub fn parse_class_names(arg: &str) -> Result<Vec<String>> {
    let p = Path::new(arg);
    let names: Vec<String> = if p.is_file() {
        std::fs::read_to_string(p)
            .with_context(|| format!("could not read --class-names {}", p.display()))?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        arg.split(',').map(|s| s.trim().to_string()).collect()
    };
    if names.is_empty() || names.iter().any(String::is_empty) {
        bail!(LewelError::Usage(format!("--class-names {arg}: give a file of names (one per line) or a comma list")));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_keys_and_absent_classes() {
        let mut c = Confusion::new(3);
        c.add(0, 0);
        c.add(1, 0);
        let names = vec!["Back ground".to_string(), "t-shirt".to_string(), "bag".to_string()];
        let d = score_details(&c, Some(&names));
        assert_eq!(d["iou_pct_0_back_ground"], 50.0);
        assert_eq!(d["iou_pct_1_t_shirt"], 0.0);
        assert!(!d.contains_key("iou_pct_2_bag"));
        assert_eq!(d["absent_classes"], "2");
        assert_eq!(d["classes_scored"], 2);
        let d = score_details(&c, None);
        assert!(d.contains_key("iou_pct_0") && d.contains_key("iou_pct_1"));
    }

    #[test]
    fn class_names_from_a_list_or_a_file() {
        assert_eq!(parse_class_names("a, b,c").unwrap(), vec!["a", "b", "c"]);
        assert!(parse_class_names("a,,b").is_err());
    }
}
