//! `embed`: backbone features of a data set (global average pool of the online backbone, BN in eval
//! mode), row i for item i of DATA, and the model loading that every inference tool shares.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use tch::{nn::VarStore, Device, Kind};

use crate::data::{open, DataSpec, EvalConfig, EvalLoader, Recipe};
use crate::events::{Event, EventSink};
use crate::export::{self, ExportConfig, Format, Source};
use crate::model::{Lewel, ModelConfig, Stem};

/// A model ready for inference, from any checkpoint `export-backbone` can read.
pub struct InferenceModel {
    pub vs: VarStore,
    pub model: Lewel,
    /// What the file was (`lewel`, `official`, `lewel-state`, `torchvision`).
    pub kind: &'static str,
    pub path: PathBuf,
    /// The recipe the model was trained with, when its checkpoint records one.
    pub train_recipe: Option<Recipe>,
}

impl InferenceModel {
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// The evaluation transform to use by default: the training recipe's, else by stem
    /// (`lewel-b-small` for the CIFAR stem, `lewel-b` for the ImageNet one).
    pub fn default_recipe(&self) -> Result<Recipe> {
        match &self.train_recipe {
            Some(r) => Ok(r.clone()),
            None => Recipe::preset(if self.config().stem == Stem::Cifar { "lewel-b-small" } else { "lewel-b" }),
        }
    }
}

/// Opens `--ckpt`: one of our checkpoints (file, `latest`, run folder), an exported or torchvision
/// backbone, or an official LEWEL checkpoint, on `device`. Import warnings go to `sink`.
pub fn open_model(ckpt: &Path, device: Device, tool: &str, sink: &mut dyn EventSink) -> Result<InferenceModel> {
    let cfg = ExportConfig {
        ckpt: ckpt.to_path_buf(),
        from: Source::Auto,
        format: Format::Lewel,
        out: PathBuf::new(),
        verify: false,
        groups: None,
        proj_dim: None,
        hidden_dim: None,
        seed: 0,
    };
    // The importer speaks as export-backbone; re-label its warnings for this tool.
    let mut relabel = Relabel { tool, inner: sink };
    let imported = export::import(&cfg, &mut relabel)?;
    let mut vs = imported.vs;
    vs.set_device(device);
    let train_recipe = if imported.kind == export::InputKind::Lewel {
        crate::ckpt::read_sidecar(&imported.path)
            .ok()
            .and_then(|(s, _)| serde_json::from_value(s.info["config"]["input"]["recipe"].clone()).ok())
    } else {
        None
    };
    Ok(InferenceModel { vs, model: imported.model, kind: imported.kind.name(), path: imported.path, train_recipe })
}

struct Relabel<'a> {
    tool: &'a str,
    inner: &'a mut dyn EventSink,
}

impl EventSink for Relabel<'_> {
    fn emit(&mut self, event: &Event) -> Result<(), crate::LewelError> {
        // Inference never uses the optimiser state, so the importer's note that it is not exported
        // is noise here.
        if event.to_line().contains("optimizer.* tensors are not exported") {
            return Ok(());
        }
        let mut line: serde_json::Value = serde_json::from_str(&event.to_line()).expect("events are JSON");
        line["tool"] = serde_json::Value::from(self.tool);
        let mut e = Event::new(self.tool, line["event"].as_str().unwrap_or("warn"));
        if let serde_json::Value::Object(m) = &line {
            let rest: serde_json::Map<String, serde_json::Value> =
                m.iter().skip(3).map(|(k, v)| (k.clone(), v.clone())).collect();
            e = e.merge(&rest);
        }
        self.inner.emit(&e)
    }
}

/// Settings of a feature extraction.
#[derive(Debug, Clone)]
pub struct EmbedConfig {
    pub ckpt: PathBuf,
    pub data: DataSpec,
    /// The evaluation transform; `None`: the model's default (see [`InferenceModel::default_recipe`]).
    pub recipe: Option<Recipe>,
    /// `size=`/`eval_resize=`... overrides applied to the recipe.
    pub sets: Vec<String>,
    pub out: PathBuf,
    pub batch_size: usize,
    pub threads: usize,
    pub device: Device,
}

/// What [`run`] wrote.
#[derive(Debug, Clone)]
pub struct EmbedReport {
    pub out: PathBuf,
    pub labels: Option<PathBuf>,
    pub rows: usize,
    pub dim: usize,
    pub skipped: usize,
}

/// The features of the `n` items of `loader`, in order: (`[n * c]` row-major, c, labels).
/// `progress` gets (rows done, rows in all) after each batch; skipped items go to `on_skip`.
pub fn extract(
    model: &Lewel,
    loader: &EvalLoader,
    n: usize,
    device: Device,
    progress: &mut dyn FnMut(usize, usize),
    on_skip: &mut dyn FnMut(usize, &str) -> Result<()>,
) -> Result<(Vec<f32>, usize, Option<Vec<i64>>)> {
    let mut feats: Vec<f32> = Vec::new();
    let mut labels: Option<Vec<i64>> = None;
    let mut dim = 0usize;
    let mut done = 0usize;
    for batch in loader.batches() {
        let b = batch?;
        for (i, why) in &b.skipped {
            on_skip(*i, why)?;
        }
        let f = model.features(&b.images.to_device(device))?.to_device(Device::Cpu).to_kind(Kind::Float); // [b, c]
        let (rows, c) = f.size2()?;
        dim = c as usize;
        let mut buf = vec![0f32; (rows * c) as usize];
        f.contiguous().f_copy_data(&mut buf, (rows * c) as usize)?;
        feats.extend_from_slice(&buf);
        if let Some(l) = b.labels {
            labels.get_or_insert_with(Vec::new).extend(l);
        }
        done += rows as usize;
        progress(done, n);
    }
    Ok((feats, dim, labels))
}

/// Writes `FEATS.npy` (float32 `[N, C]`) and, when DATA has labels, `FEATS.labels.npy` (int64 `[N]`).
pub fn run(cfg: &EmbedConfig, sink: &mut dyn EventSink, progress: &mut dyn FnMut(usize, usize)) -> Result<EmbedReport> {
    const TOOL: &str = "embed";
    let t0 = Instant::now();
    let m = open_model(&cfg.ckpt, cfg.device, TOOL, sink)?;
    let mut recipe = match &cfg.recipe {
        Some(r) => r.clone(),
        None => m.default_recipe()?,
    };
    for kv in &cfg.sets {
        recipe.set(kv)?;
    }
    let data = open(&cfg.data)?;
    let n = data.len();
    let loader = EvalLoader::new(
        data.clone(),
        recipe.clone(),
        EvalConfig { batch_size: cfg.batch_size, threads: cfg.threads, prefetch: 2, strict: cfg.data.strict },
    )?;
    let (h, w) = loader.image_hw();
    sink.emit(
        &Event::new(TOOL, "start")
            .str("ckpt", m.path.display().to_string())
            .str("ckpt_kind", m.kind)
            .str("data", data.describe())
            .str("data_fingerprint", data.fingerprint())
            .int("images", n as i64)
            .int("input_h_px", h as i64)
            .int("input_w_px", w as i64)
            .int("eval_resize_px", recipe.eval_resize as i64)
            .int("eval_crop_px", recipe.eval_crop as i64)
            .str("arch", format!("{:?}", m.config().arch).to_lowercase())
            .str("device", format!("{:?}", cfg.device)),
    )?;
    let mut skipped = 0usize;
    let (feats, dim, labels) = extract(&m.model, &loader, n, cfg.device, progress, &mut |i, why| {
        skipped += 1;
        sink.emit(
            &Event::new(TOOL, "warn")
                .str("message", format!("skipped {} (its row is the features of a blank image): {why}", data.name(i)))
                .int("index", i as i64),
        )?;
        Ok(())
    })?;
    // Both files are written atomically, and the features last, after any earlier features at that path are gone:
    // whenever FEATS.npy exists, the labels beside it (or their absence) are its own, also after a crash in
    // between (which leaves no features, so a probe stops with a clear error instead of pairing new labels with
    // old features).
    let default_labels = crate::eval::features::default_labels_path(&cfg.out);
    remove_if_present(&cfg.out)?;
    let labels_path = match &labels {
        Some(l) => {
            crate::eval::features::write_labels(&default_labels, l)?;
            Some(default_labels)
        }
        None => {
            // an earlier run's labels would be taken for this data's by the probes
            remove_if_present(&default_labels)?;
            None
        }
    };
    crate::eval::features::write_f32_matrix(&cfg.out, n, dim, &feats)
        .with_context(|| format!("could not write --out {}", cfg.out.display()))?;
    let elapsed = t0.elapsed().as_secs_f64();
    let mut end = Event::new(TOOL, "end")
        .str("out", cfg.out.display().to_string())
        .int("rows", n as i64)
        .int("dim", dim as i64)
        .int("skipped", skipped as i64)
        .num("elapsed_s", elapsed)
        .num("images_per_s", n as f64 / elapsed.max(1e-9));
    if let Some(p) = &labels_path {
        end = end.str("labels", p.display().to_string());
    }
    sink.emit(&end)?;
    Ok(EmbedReport { out: cfg.out.clone(), labels: labels_path, rows: n, dim, skipped })
}

/// Removes `path` when it exists (a missing file is fine).
fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::Error::new(e).context(format!("could not replace {}", path.display())))
        }
        _ => Ok(()),
    }
}
