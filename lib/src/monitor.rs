//! The online kNN monitor of pre-training: every few epochs, the weighted kNN accuracy of the online backbone's
//! features, as a periodic evaluation of the training loop ([`crate::train::TrainTask::evaluate`]).
//!
//! Both splits go through the evaluation transform ([`crate::data::EvalLoader`]), are embedded with the online
//! backbone in eval mode ([`crate::embed::extract`]) and scored by [`crate::eval::knn::sweep`] at one (k, T).
//!
//! NOTE(ref): the official monitor (`engine.py:ss_validate`, `reference/lewel-official.md` §5.5) draws its memory
//! from inside its query set and votes unweighted. Here the memory (`--knn-train`) and the queries (`--knn-val`)
//! are separate data sets (the same path for both is refused), and the vote is weighted by `exp(cos / T)`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

use crate::data::{open, DataSpec, Dataset, EvalConfig, EvalLoader, Recipe};
use crate::eval::knn;
use crate::events::{Event, EventSink};
use crate::model::Lewel;
use crate::LewelError;

/// The monitor's settings (part of the run's configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnnMonitorConfig {
    /// Evaluate after every N-th epoch and after the last.
    pub every_epochs: u64,
    /// The memory: a labelled data set (any DATA form).
    pub train: PathBuf,
    /// The queries: a different labelled data set.
    pub val: PathBuf,
    /// Neighbours (default 20).
    pub k: usize,
    /// Vote temperature T (default 0.07).
    pub temperature: f64,
    /// Images per embedding batch.
    pub batch_size: usize,
}

impl KnnMonitorConfig {
    /// Checks the values clap cannot (exit 2).
    pub fn validate(&self) -> Result<(), LewelError> {
        if self.every_epochs == 0 {
            return Err(LewelError::Usage("--knn-every must be at least 1".into()));
        }
        if self.k == 0 || !(self.temperature.is_finite() && self.temperature > 0.0) || self.batch_size == 0 {
            return Err(LewelError::Usage("--knn-k must be >= 1 and the temperature finite and > 0".into()));
        }
        let same = self.train == self.val
            || matches!((self.train.canonicalize(), self.val.canonicalize()), (Ok(a), Ok(b)) if a == b);
        if same {
            return Err(LewelError::Usage(format!(
                "--knn-train and --knn-val are the same data ({}): every query would also be in the memory, which \
                 inflates the accuracy (the official monitor's bug); give a held-out split for --knn-val",
                self.train.display()
            )));
        }
        Ok(())
    }
}

/// The monitor with its two loaders.
pub struct KnnMonitor {
    cfg: KnnMonitorConfig,
    train: (EvalLoader, Arc<dyn Dataset>),
    val: (EvalLoader, Arc<dyn Dataset>),
}

impl KnnMonitor {
    /// Opens both data sets (they must have labels) with the evaluation transform of `recipe`.
    pub fn open(cfg: &KnnMonitorConfig, recipe: &Recipe, threads: usize) -> Result<KnnMonitor> {
        cfg.validate()?;
        let loader = |path: &PathBuf, flag: &str| -> Result<(EvalLoader, Arc<dyn Dataset>)> {
            let data = open(&DataSpec::new(path.clone())).with_context(|| format!("{flag} {}", path.display()))?;
            if data.num_classes().is_none() {
                bail!(
                    "{flag} {}: no labels ({}); the kNN monitor needs labelled data",
                    path.display(),
                    data.describe()
                );
            }
            let ec = EvalConfig { batch_size: cfg.batch_size, threads, prefetch: 2, strict: false };
            Ok((EvalLoader::new(data.clone(), recipe.clone(), ec)?, data))
        };
        Ok(KnnMonitor {
            cfg: cfg.clone(),
            train: loader(&cfg.train, "--knn-train")?,
            val: loader(&cfg.val, "--knn-val")?,
        })
    }

    /// Embeds both sets with the online backbone (eval mode) and scores the queries: the `eval` event's fields
    /// (`knn_top1_pct`, `knn_top5_pct`, `k`, `temperature`, `n_train`, `n_val`).
    pub fn evaluate(
        &self,
        model: &Lewel,
        device: Device,
        tool: &str,
        sink: &mut dyn EventSink,
    ) -> Result<Map<String, Value>> {
        let mut embed =
            |(loader, data): &(EvalLoader, Arc<dyn Dataset>), flag: &str| -> Result<(Tensor, Tensor, usize)> {
                let n = data.len();
                let mut warns = Vec::new();
                let (feats, dim, labels) =
                    crate::embed::extract(model, loader, n, device, &mut |_, _| {}, &mut |i, why| {
                        warns.push(format!("kNN monitor: skipped {} of {flag} (a blank image): {why}", data.name(i)));
                        Ok(())
                    })?;
                for w in warns {
                    sink.emit(&Event::new(tool, "warn").str("message", w))?;
                }
                let labels = labels.with_context(|| format!("{flag}: no labels"))?;
                let mut x = Tensor::from_slice(&feats).view([n as i64, dim as i64]).to_device(device);
                knn::l2_normalize_(&mut x);
                let classes = labels.iter().copied().max().unwrap_or(0) as usize + 1;
                Ok((x, Tensor::from_slice(&labels).to_device(device), classes))
            };
        let (train, train_labels, c1) = embed(&self.train, "--knn-train")?;
        let (val, val_labels, c2) = embed(&self.val, "--knn-val")?;
        let counts = tch::no_grad(|| {
            knn::sweep(
                &train.to_kind(Kind::Float),
                &train_labels,
                &val.to_kind(Kind::Float),
                &val_labels,
                c1.max(c2) as i64,
                &[self.cfg.k],
                &[self.cfg.temperature],
                knn::DEFAULT_BATCH_SIZE,
                &mut |_, _| {},
            )
        })?;
        let acc = counts[0];
        let mut m = Map::new();
        m.insert("knn_top1_pct".into(), Value::from(acc.top1_pct()));
        m.insert("knn_top5_pct".into(), Value::from(acc.top5_pct()));
        m.insert("k".into(), Value::from(self.cfg.k.min(train.size()[0] as usize)));
        m.insert("temperature".into(), Value::from(self.cfg.temperature));
        m.insert("n_train".into(), Value::from(train.size()[0]));
        m.insert("n_val".into(), Value::from(val.size()[0]));
        Ok(m)
    }
}
