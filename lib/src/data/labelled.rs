//! [`LabelledLoader`]: one augmented view and the label of each image, shuffled epochs, deterministic from
//! (seed, epoch, index) like [`TwoViewLoader`] (supervised fine-tuning: `finetune-semi`).
//!
//! HACK: it drives a [`TwoViewLoader`] whose second view is the first one's recipe and drops that view, so
//! order, replacement of bad items, prefetch and resume at any step are the two-view loader's, unchanged. The
//! price is rendering a second crop per image (decoding is shared); a one-view producer can replace it without
//! changing any result, since view 1 draws from its own generator (seed, epoch, index, view 1).

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::data::dataset::Dataset;
use crate::data::loader::{LoaderConfig, TwoViewLoader};
use crate::data::recipe::Recipe;

/// A batch of labelled training images.
#[derive(Debug)]
pub struct LabelledBatch {
    /// `[B, 3, S, S]` f32, normalised.
    pub images: tch::Tensor,
    /// `[B]` int64.
    pub labels: tch::Tensor,
    /// The item of each row (a stand-in's index where an item failed).
    pub indices: Vec<usize>,
    pub wait_s: f64,
    pub skipped: Vec<(usize, String)>,
}

/// torchvision's `DefaultTrain` of the official fine-tuning scripts at `size` px: RandomResizedCrop (scale 0.08–1,
/// ratio 3/4–4/3) and a horizontal flip with p 0.5, nothing else; normalised with ImageNet's statistics.
/// `eval_resize` / `eval_crop` give the evaluation transform (official 256 / 224).
pub fn default_train_recipe(size: u32, eval_resize: u32, eval_crop: u32) -> Result<Recipe> {
    let mut r = Recipe::preset("byol")?;
    let v = crate::data::recipe::ViewRecipe {
        crop_scale: [0.08, 1.0],
        jitter_p: 0.0,
        grey_p: 0.0,
        blur_p: 0.0,
        solarize_p: 0.0,
        flip_p: 0.5,
        ..r.view1.clone()
    };
    r.name = "default-train".into();
    r.view1 = v.clone();
    r.view2 = v;
    r.size = size;
    r.eval_resize = eval_resize;
    r.eval_crop = eval_crop;
    r.validate()?;
    Ok(r)
}

/// One augmented view plus the label per item (see the module docs).
pub struct LabelledLoader {
    inner: TwoViewLoader,
}

impl LabelledLoader {
    /// A loader over labelled `dataset` (an error without labels).
    pub fn new(dataset: Arc<dyn Dataset>, recipe: Recipe, cfg: LoaderConfig) -> Result<LabelledLoader> {
        if dataset.num_classes().is_none() {
            bail!("{}: no labels; fine-tuning needs labelled data", dataset.describe());
        }
        Ok(LabelledLoader { inner: TwoViewLoader::new(dataset, recipe, cfg)? })
    }

    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        self.inner.dataset()
    }

    pub fn recipe(&self) -> &Recipe {
        self.inner.recipe()
    }

    /// Batches per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.inner.steps_per_epoch()
    }

    /// The batches `start_step..` of `epoch`.
    pub fn epoch(&self, epoch: u64, start_step: usize) -> impl Iterator<Item = Result<LabelledBatch>> + '_ {
        self.inner.epoch(epoch, start_step).map(|b| {
            let b = b?;
            let Some(labels) = b.labels else { bail!("a batch without labels") };
            Ok(LabelledBatch {
                images: b.v1,
                labels: tch::Tensor::from_slice(&labels),
                indices: b.indices,
                wait_s: b.wait_s,
                skipped: b.skipped,
            })
        })
    }
}
