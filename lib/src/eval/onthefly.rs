//! Features computed from a checkpoint instead of read from `.npy`: the eval-transform embedding of a
//! labelled split (both probes), and augmented training batches through the frozen backbone (the
//! linear probe's paper protocol).
//!
//! The backbone is frozen: BatchNorm uses its running statistics (eval mode) and no gradient flows
//! ([`crate::model::Lewel::features`]). The training augmentation is torchvision's classification
//! `DefaultTrain`, as in `main_lincls.py`: RandomResizedCrop(eval_crop, scale (0.08, 1), ratio 3/4–4/3)
//! and a horizontal flip with p 0.5, nothing else; validation uses the eval transform (resize the
//! shorter side to `eval_resize`, centre-crop `eval_crop`).

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use tch::{Device, Tensor};

use super::features::FeatureSet;
use super::linear::TrainBatches;
use crate::data::recipe::ViewRecipe;
use crate::data::{Dataset, EvalConfig, EvalLoader, LoaderConfig, Recipe, TwoViewLoader};
use crate::embed::{extract, InferenceModel};
use crate::events::{Event, EventSink};
use crate::model::Lewel;

/// How the splits are turned into features: transform overrides and the loader's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedSettings {
    /// `--resize PX`: the shorter side before the centre crop (default: the model's recipe).
    pub resize: Option<u32>,
    /// `--crop PX`: the centre crop side (default: the model's recipe).
    pub crop: Option<u32>,
    /// Images per forward pass of the frozen backbone.
    pub batch_size: usize,
    /// Data worker threads (0: one per core).
    pub threads: usize,
    /// `--strict`: an unreadable image stops the probe (else a blank image takes its place, with a `warn` event).
    pub strict: bool,
}

impl EmbedSettings {
    /// The requested part, for the protocol hash (`default` when the model's recipe decides).
    pub fn describe(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let opt = |v: Option<u32>| v.map(Value::from).unwrap_or_else(|| Value::from("default"));
        m.insert("eval_resize_px".into(), opt(self.resize));
        m.insert("eval_crop_px".into(), opt(self.crop));
        m
    }
}

/// The model's evaluation recipe with `--resize` / `--crop` applied.
pub fn eval_recipe(model: &InferenceModel, s: &EmbedSettings) -> Result<Recipe> {
    let mut r = model.default_recipe()?;
    if let Some(px) = s.resize {
        r.set(&format!("eval_resize={px}"))?;
    }
    if let Some(px) = s.crop {
        r.set(&format!("eval_crop={px}"))?;
    }
    r.validate()?;
    Ok(r)
}

/// torchvision's classification training transform on top of `eval`'s size and normalisation.
pub fn train_recipe(eval: &Recipe) -> Result<Recipe> {
    let view = ViewRecipe {
        crop_scale: [0.08, 1.0],
        crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
        flip_p: 0.5,
        jitter_p: 0.0,
        brightness: 0.0,
        contrast: 0.0,
        saturation: 0.0,
        hue: 0.0,
        grey_p: 0.0,
        blur_p: 0.0,
        blur_sigma: [0.1, 2.0],
        solarize_p: 0.0,
    };
    let r =
        Recipe { name: "default-train".into(), size: eval.eval_crop, view1: view.clone(), view2: view, ..eval.clone() };
    r.validate()?;
    Ok(r)
}

/// One line describing a transform, for results.
pub fn describe_eval(r: &Recipe) -> String {
    format!("resize shorter side {} px, centre crop {} px", r.eval_resize, r.eval_crop)
}

/// One line describing the training augmentation of [`train_recipe`].
pub fn describe_train(r: &Recipe) -> String {
    let v = &r.view1;
    format!(
        "random resized crop {} px scale {}-{} ratio {:.4}-{:.4}, flip p {}",
        r.size, v.crop_scale[0], v.crop_scale[1], v.crop_ratio[0], v.crop_ratio[1], v.flip_p
    )
}

/// The labels of every item of `data`; an error naming it when it has none.
pub fn labels_of(data: &dyn Dataset) -> Result<Vec<i64>> {
    (0..data.len())
        .map(|i| {
            data.label(i).with_context(|| {
                format!(
                    "{} has no labels (item {}); the probes need labelled data: class folders, a list file with \
                     labels, or IDX images with their labels file",
                    data.describe(),
                    data.name(i)
                )
            })
        })
        .collect()
}

/// The eval-transform features of a labelled split, as a [`FeatureSet`] named after the data.
pub fn embed_split(
    model: &InferenceModel,
    data: Arc<dyn Dataset>,
    recipe: &Recipe,
    s: &EmbedSettings,
    device: Device,
    tool: &str,
    sink: &mut dyn EventSink,
) -> Result<FeatureSet> {
    let labels = labels_of(&*data)?;
    let n = data.len();
    let loader = EvalLoader::new(
        data.clone(),
        recipe.clone(),
        EvalConfig { batch_size: s.batch_size, threads: s.threads, prefetch: 2, strict: s.strict },
    )?;
    let (feats, dim, _) = extract(&model.model, &loader, n, device, &mut |_, _| {}, &mut |i, why| {
        sink.emit(
            &Event::new(tool, "warn")
                .str("message", format!("skipped {} (its row is the features of a blank image): {why}", data.name(i)))
                .int("index", i as i64),
        )?;
        Ok(())
    })?;
    let mut set = FeatureSet::from_parts(n, dim, feats, labels)?;
    set.features_path = data.describe().into();
    set.labels_path = set.features_path.clone();
    Ok(set)
}

/// Augmented training batches through a frozen backbone: view 1 of a [`TwoViewLoader`].
///
/// NOTE: the loader draws and renders a second view that is thrown away (about twice the
/// augmentation work); a one-view labelled loader can replace it without changing the probe.
pub struct AugmentedBatches<'a> {
    loader: TwoViewLoader,
    data: Arc<dyn Dataset>,
    model: &'a Lewel,
    device: Device,
    /// Unreadable items met so far (reported once each), and those not yet handed to [`TrainBatches::take_warnings`].
    reported: std::collections::HashSet<usize>,
    warnings: Vec<String>,
}

impl<'a> AugmentedBatches<'a> {
    /// Shuffled epochs of `batch_size` items (the last one partial), keyed by `seed`. An unreadable item is
    /// replaced by another of the epoch and reported (once), or, with `strict`, an error naming it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &'a Lewel,
        data: Arc<dyn Dataset>,
        recipe: Recipe,
        batch_size: usize,
        threads: usize,
        seed: u64,
        strict: bool,
        device: Device,
    ) -> Result<Self> {
        if data.prepared().is_some() {
            bail!("{}: already-normalised tensors cannot be augmented; give images", data.describe());
        }
        let cfg = LoaderConfig {
            seed,
            batch_size: batch_size.min(data.len()),
            threads,
            prefetch: 2,
            shuffle: true,
            drop_last: false,
            strict,
            shuffle_buffer: crate::data::shards::DEFAULT_SHUFFLE_BUFFER,
        };
        Ok(AugmentedBatches {
            loader: TwoViewLoader::new(data.clone(), recipe, cfg)?,
            data,
            model,
            device,
            reported: Default::default(),
            warnings: Vec::new(),
        })
    }
}

impl TrainBatches for AugmentedBatches<'_> {
    fn steps_per_epoch(&self) -> usize {
        self.loader.steps_per_epoch()
    }

    fn for_each(&mut self, epoch: usize, f: &mut dyn FnMut(&Tensor, &Tensor) -> Result<()>) -> Result<()> {
        for batch in self.loader.epoch(epoch as u64, 0) {
            let b = batch?;
            for (i, why) in &b.skipped {
                if self.reported.insert(*i) {
                    self.warnings
                        .push(format!("skipped {} (another training item takes its place): {why}", self.data.name(*i)));
                }
            }
            let labels = b.labels.context("the training data has no labels")?;
            let x = self.model.features(&b.v1.to_device(self.device))?; // [b, C], no grad, eval-mode BN
            let y = Tensor::from_slice(&labels).to_device(self.device);
            f(&x, &y)?;
        }
        Ok(())
    }

    fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}
