//! The work of the `augment` tool: view pairs of a data set under a recipe, written as float32
//! `[N, 2, 3, S, S]` `.npy` (what `pretrain --views` reads; N = images x epochs, epoch after epoch,
//! each epoch in its shuffled order), a JSON sidecar, optional shards with a JSONL manifest, and an
//! optional preview contact sheet.
//!
//! # Outputs
//! - `OUT` (e.g. `views.npy`): the view pairs, normalised with the recipe's mean/std.
//! - `OUT.json`: the resolved recipe, seed, epochs, data description and fingerprint, shape, the
//!   skipped files, the git revision.
//! - Sharded (`shard_size`, or automatically when the array would pass [`AUTO_SHARD_BYTES`]):
//!   `<stem>.00000.npy`, `<stem>.00001.npy`, ... next to `OUT`, each `[rows, 2, 3, S, S]`, and
//!   `OUT.manifest.jsonl` with one line per shard (`file`, `first_row`, `rows`); `OUT` itself is then
//!   not written.
//! - Preview: a PNG with one row per item of epoch 0 (original, view 1, view 2), un-normalised.
//!
//! Every file is written under a temporary name and renamed when complete.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};
use serde_json::json;

use crate::data::dataset::{open, DataSpec};
use crate::data::loader::{LoaderConfig, TwoViewLoader};
use crate::data::npy::NpyWriter;
use crate::data::ops::{self, CropBox};
use crate::data::recipe::Recipe;
use crate::events::{Event, EventSink};
use crate::LewelError;

/// An event sink for `augment`: when the reader of stdout goes away (`augment ... | head -1`) it warns
/// once on stderr and drops further events, and the run goes on, since its output is the views file
/// (like `pretrain` and its checkpoints; see STYLE.md on closed stdout).
pub struct KeepGoing<S: EventSink> {
    inner: S,
    closed: bool,
}

impl<S: EventSink> KeepGoing<S> {
    pub fn new(inner: S) -> Self {
        KeepGoing { inner, closed: false }
    }
}

impl<S: EventSink> EventSink for KeepGoing<S> {
    fn emit(&mut self, event: &Event) -> Result<(), LewelError> {
        if self.closed {
            return Ok(());
        }
        match self.inner.emit(event) {
            Err(LewelError::StdoutClosed) => {
                self.closed = true;
                eprintln!(
                    "{TOOL}: warning: stdout was closed; going on without events (the output files are still written)"
                );
                Ok(())
            }
            other => other,
        }
    }
}

/// Output above this size is sharded automatically (2 GiB).
pub const AUTO_SHARD_BYTES: u64 = 2 << 30;

/// The tool name in events.
const TOOL: &str = "augment";

/// What to do.
#[derive(Debug, Clone)]
pub struct AugmentConfig {
    pub data: DataSpec,
    pub recipe: Recipe,
    pub epochs: u64,
    pub seed: u64,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Items per internal batch (does not change the output).
    pub batch_size: usize,
    /// The views file; `None` with a preview only.
    pub out: Option<PathBuf>,
    /// Rows per shard; `None`: one file unless it would pass [`AUTO_SHARD_BYTES`].
    pub shard_size: Option<usize>,
    pub preview: Option<PathBuf>,
    pub preview_rows: usize,
    pub strict: bool,
    /// Make every view but write nothing (throughput, or a check that every file decodes).
    pub dry_run: bool,
    /// Show a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

/// What was done (also in the `end` event).
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentSummary {
    /// View pairs produced (images x epochs, or the preview's rows without `out`).
    pub images: usize,
    /// Distinct items that failed to load.
    pub skipped: usize,
    pub elapsed_s: f64,
    pub images_per_s: f64,
    pub shards: usize,
}

/// One shard being written.
struct Shard {
    file: PathBuf,
    first_row: usize,
    rows: usize,
    writer: NpyWriter,
}

fn usage(msg: String) -> anyhow::Error {
    LewelError::Usage(msg).into()
}

/// Runs the tool's work, reporting `start`, `warn` (one per skipped file) and `end` to `sink`.
pub fn run(cfg: &AugmentConfig, sink: &mut dyn EventSink) -> Result<AugmentSummary> {
    let started = Instant::now();
    let cpu_started = process_cpu_s();
    if cfg.dry_run && (cfg.out.is_some() || cfg.preview.is_some()) {
        return Err(usage("--dry-run writes nothing; leave out --out and --preview".into()));
    }
    if cfg.out.is_none() && cfg.preview.is_none() && !cfg.dry_run {
        return Err(usage("nothing to write: give --out FILE.npy, --preview FILE.png, or both (or --dry-run)".into()));
    }
    if cfg.epochs == 0 {
        return Err(usage("--epochs must be at least 1".into()));
    }
    if let Some(out) = &cfg.out {
        if out.extension().and_then(|e| e.to_str()) != Some("npy") {
            return Err(usage(format!("--out {}: the views file must end in .npy", out.display())));
        }
        check_parent(out)?;
    }
    if let Some(p) = &cfg.preview {
        if !p.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("png")) {
            return Err(usage(format!("--preview {}: the contact sheet must end in .png", p.display())));
        }
        check_parent(p)?;
    }
    if cfg.preview.is_some() && cfg.preview_rows == 0 {
        return Err(usage("--preview-rows must be at least 1".into()));
    }
    if cfg.shard_size == Some(0) {
        return Err(usage("--shard-size must be at least 1 row".into()));
    }
    cfg.recipe.validate()?;
    let ds = open(&cfg.data)?;
    let n = ds.len();
    let loader = TwoViewLoader::new(
        ds.clone(),
        cfg.recipe.clone(),
        LoaderConfig {
            seed: cfg.seed,
            // A preview alone needs only its rows.
            batch_size: if cfg.out.is_none() && !cfg.dry_run {
                cfg.preview_rows.clamp(1, n)
            } else {
                cfg.batch_size.clamp(1, n)
            },
            threads: cfg.threads,
            prefetch: 4,
            shuffle: true,
            drop_last: false,
            strict: cfg.strict,
            shuffle_buffer: crate::data::shards::DEFAULT_SHUFFLE_BUFFER,
        },
    )?;
    let s = cfg.recipe.size as usize;
    let per_view = 3 * s * s;
    let row_bytes = (2 * per_view * 4) as u64;
    let total_rows = if cfg.out.is_some() || cfg.dry_run { n * cfg.epochs as usize } else { cfg.preview_rows.min(n) };
    let shard_rows = match cfg.shard_size {
        Some(r) => Some(r),
        None if total_rows as u64 * row_bytes > AUTO_SHARD_BYTES => {
            Some((AUTO_SHARD_BYTES / row_bytes).max(1) as usize)
        }
        None => None,
    };
    let n_shards = match (&cfg.out, shard_rows) {
        (Some(_), Some(r)) => total_rows.div_ceil(r),
        (Some(_), None) => 1,
        (None, _) => 0,
    };
    let threads =
        if cfg.threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { cfg.threads };
    let recipe_json = cfg.recipe.to_json();
    let fingerprint = ds.fingerprint();
    sink.emit(
        &Event::new(TOOL, "start")
            .str("data", ds.describe())
            .str("fingerprint", fingerprint.clone())
            .int("images", n as i64)
            .int("epochs", cfg.epochs as i64)
            .int("rows", total_rows as i64)
            .int("size", s as i64)
            .int("seed", cfg.seed as i64)
            .int("threads", threads as i64)
            .str("recipe_name", cfg.recipe.name.clone())
            .str("recipe", recipe_json.to_string())
            .str("out", cfg.out.as_ref().map(|p| p.display().to_string()).unwrap_or_default())
            .int("shards", n_shards as i64)
            .bool("dry_run", cfg.dry_run)
            .str("git_revision", crate::GIT_REVISION),
    )?;

    let bar = if cfg.progress {
        indicatif::ProgressBar::with_draw_target(Some(total_rows as u64), indicatif::ProgressDrawTarget::stderr())
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("augment {bar:40} {pos}/{len} views, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );

    let mut shard: Option<Shard> = None;
    let mut manifest: Vec<serde_json::Value> = Vec::new();
    let mut skipped_seen: HashSet<usize> = HashSet::new();
    let mut skipped_list: Vec<serde_json::Value> = Vec::new();
    let mut preview: Vec<(usize, Vec<f32>, Vec<f32>)> = Vec::new();
    let mut rows_done = 0usize;

    'epochs: for epoch in 0..cfg.epochs {
        for batch in loader.epoch_raw(epoch, 0) {
            let batch = batch?;
            for (index, reason) in &batch.skipped {
                if skipped_seen.insert(*index) {
                    let file = ds.name(*index);
                    sink.emit(
                        &Event::new(TOOL, "warn")
                            .str("file", file.clone())
                            .int("index", *index as i64)
                            .str("reason", reason.clone())
                            .str("action", "skipped; replaced by the next item of the epoch"),
                    )?;
                    skipped_list.push(json!({"index": index, "file": file, "reason": reason}));
                }
            }
            let b = batch.indices.len();
            if epoch == 0 && preview.len() < cfg.preview_rows && cfg.preview.is_some() {
                for k in 0..b.min(cfg.preview_rows - preview.len()) {
                    preview.push((
                        batch.indices[k],
                        batch.v1[k * per_view..(k + 1) * per_view].to_vec(),
                        batch.v2[k * per_view..(k + 1) * per_view].to_vec(),
                    ));
                }
            }
            if let Some(out) = &cfg.out {
                for k in 0..b {
                    if shard.is_none() {
                        let rows = shard_rows.map_or(total_rows, |r| r.min(total_rows - rows_done));
                        let file = match shard_rows {
                            Some(_) => shard_name(out, manifest.len()),
                            None => out.clone(),
                        };
                        let writer = NpyWriter::create(&file, &[rows, 2, 3, s, s])?;
                        shard = Some(Shard { file, first_row: rows_done, rows, writer });
                    }
                    let sh = shard.as_mut().expect("just created");
                    sh.writer.write(&batch.v1[k * per_view..(k + 1) * per_view])?;
                    sh.writer.write(&batch.v2[k * per_view..(k + 1) * per_view])?;
                    rows_done += 1;
                    if rows_done == sh.first_row + sh.rows {
                        let done = shard.take().expect("present");
                        done.writer.commit()?;
                        manifest.push(json!({
                            "file": done.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
                            "first_row": done.first_row,
                            "rows": done.rows,
                            "shape": [done.rows, 2, 3, s, s],
                        }));
                    }
                }
            } else {
                rows_done += b;
            }
            bar.inc(b as u64);
            loader.recycle(batch);
            if cfg.out.is_none() && !cfg.dry_run && preview.len() >= cfg.preview_rows.min(n) {
                break 'epochs;
            }
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_s() - cpu_started;

    if let Some(out) = &cfg.out {
        if shard_rows.is_some() {
            let text: String = manifest.iter().map(|m| format!("{m}\n")).collect();
            crate::fsio::write_bytes_atomic(&suffixed(out, ".manifest.jsonl"), text.as_bytes())?;
        }
        let sidecar = json!({
            "tool": TOOL,
            "format": "float32 [N, 2, 3, S, S]: normalised view pairs (view 1, view 2), rows in epoch order",
            "shape": [total_rows, 2, 3, s, s],
            "images_per_epoch": n,
            "epochs": cfg.epochs,
            "seed": cfg.seed,
            "data": ds.describe(),
            "data_path": cfg.data.path.display().to_string(),
            "fingerprint": fingerprint,
            "recipe": recipe_json,
            "shards": manifest,
            "skipped": skipped_list,
            "git_revision": crate::GIT_REVISION,
        });
        let text = serde_json::to_string_pretty(&sidecar).expect("JSON") + "\n";
        crate::fsio::write_bytes_atomic(&suffixed(out, ".json"), text.as_bytes())?;
    }
    if let Some(p) = &cfg.preview {
        let sheet = contact_sheet(&*ds, &cfg.recipe, &preview)?;
        let mut png = Vec::new();
        sheet
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .context("could not encode the preview")?;
        crate::fsio::write_bytes_atomic(p, &png)?;
    }
    let summary = AugmentSummary {
        images: rows_done,
        skipped: skipped_seen.len(),
        elapsed_s: elapsed,
        images_per_s: rows_done as f64 / elapsed.max(1e-9),
        shards: if shard_rows.is_some() { manifest.len() } else { 0 },
    };
    sink.emit(
        &Event::new(TOOL, "end")
            .int("images", summary.images as i64)
            .int("skipped", summary.skipped as i64)
            .num("elapsed_s", summary.elapsed_s)
            .num("images_per_s", summary.images_per_s)
            .num("cpu_s", cpu)
            .num("images_per_cpu_s", summary.images as f64 / cpu.max(1e-9))
            .int("threads", threads as i64)
            .str("out", cfg.out.as_ref().map(|p| p.display().to_string()).unwrap_or_default())
            .int("shards", summary.shards as i64)
            .str("preview", cfg.preview.as_ref().map(|p| p.display().to_string()).unwrap_or_default()),
    )?;
    Ok(summary)
}

/// CPU seconds (user + system) used by this process so far, all threads: `images_per_cpu_s` is the
/// per-core throughput even on a machine busy with other work.
fn process_cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// `views.npy` + `.json` → `views.npy.json`.
fn suffixed(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Shard k of `views.npy`: `views.0000k.npy`.
pub fn shard_name(out: &Path, k: usize) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "views".into());
    out.with_file_name(format!("{stem}.{k:05}.npy"))
}

fn check_parent(p: &Path) -> Result<()> {
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!("{}: the folder {} does not exist; create it first", p.display(), parent.display());
    }
    Ok(())
}

/// One preview row per item: the original (fitted into the cell, aspect kept), view 1, view 2,
/// un-normalised; small views are enlarged (nearest neighbour) to cells of at least 96 px.
fn contact_sheet(
    ds: &dyn crate::data::Dataset,
    recipe: &Recipe,
    rows: &[(usize, Vec<f32>, Vec<f32>)],
) -> Result<RgbImage> {
    let s = recipe.size as usize;
    let zoom = 96usize.div_ceil(s).max(1);
    let cell = s * zoom;
    let gap = 4;
    let (w, h) = (3 * cell + 4 * gap, rows.len().max(1) * (cell + gap) + gap);
    let mut sheet = RgbImage::from_pixel(w as u32, h as u32, Rgb([40, 40, 40]));
    let (mean, std) = recipe.norm_f32();
    let unnorm = |v: &[f32]| -> RgbImage {
        let n = s * s;
        RgbImage::from_fn(s as u32, s as u32, |x, y| {
            let i = y as usize * s + x as usize;
            let c = |k: usize| ((v[k * n + i] * std[k] + mean[k]) * 255.0).round().clamp(0.0, 255.0) as u8;
            Rgb([c(0), c(1), c(2)])
        })
    };
    let mut paste = |img: &RgbImage, x0: usize, y0: usize, z: usize| {
        for (x, y, p) in img.enumerate_pixels() {
            for dy in 0..z {
                for dx in 0..z {
                    let (px, py) = (x0 + x as usize * z + dx, y0 + y as usize * z + dy);
                    if px < w && py < h {
                        sheet.put_pixel(px as u32, py as u32, *p);
                    }
                }
            }
        }
    };
    for (r, (index, v1, v2)) in rows.iter().enumerate() {
        let y0 = gap + r * (cell + gap);
        if let Ok(orig) = ds.load(*index) {
            let (ow, oh) = (orig.width() as f64, orig.height() as f64);
            let k = (cell as f64 / ow).min(cell as f64 / oh);
            let (fw, fh) = (((ow * k).round() as usize).max(1), ((oh * k).round() as usize).max(1));
            let full = CropBox { top: 0, left: 0, height: orig.height(), width: orig.width() };
            let fitted = ops::resized_crop(&orig, full, fw, fh, [0, 0, fw, fh]).to_rgb();
            paste(&fitted, gap + (cell - fw) / 2, y0 + (cell - fh) / 2, 1);
        }
        paste(&unnorm(v1), 2 * gap + cell, y0, zoom);
        paste(&unnorm(v2), 3 * gap + 2 * cell, y0, zoom);
    }
    Ok(sheet)
}
