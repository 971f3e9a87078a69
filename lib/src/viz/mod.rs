//! `viz-maps`: the learned alignment maps of LEWEL drawn over images and views, so people can see
//! where the model learns.
//!
//! LEWEL ("Learning Where to Learn in Cross-View Self-Supervised Learning", CVPR 2022,
//! <https://arxiv.org/abs/2203.14898>) reuses its global projection head as K spatial heat-maps:
//! `A = softmax(normalize(z[:, :, 1:], dim=1) / scale, dim=2)` over the backbone's `h'×w'` positions
//! (`reference/lewel-official.md` §8), computed here by [`crate::model::Lewel::alignment_maps`] with
//! BatchNorm in eval mode. Each map is a distribution over positions. With the official scale 1 the
//! softmax logits lie in [-1, 1], so no map can be sharper than a max/min ratio of e² (§1.4): the maps
//! are soft by construction, and a randomly initialised model gives maps close to uniform.
//!
//! # What is drawn
//! - DATA: each image through the evaluation transform (resize the shorter side, centre crop; the
//!   model's default recipe, `size` overrides the crop), one row per image: the image, then the chosen
//!   maps over it. Float32 `.npy` DATA (already normalised) is used as it is and un-normalised for
//!   display with the model's recipe.
//! - Views (`augment`'s `[N, 2, 3, S, S]` `.npy`): one row per pair: view 1 and the chosen maps over it,
//!   then view 2 and the same maps over it. Un-normalised with the recipe of the sidecar
//!   (`views.npy.json`), else ImageNet's mean/std.
//! - `grid`: one contact sheet `DIR/grid.png`; otherwise one PNG per image, `DIR/<index>-<name>.png`
//!   (index zero-padded to 4 digits, name the file stem made safe).
//!
//! The map choice ([`MapChoice`]): `top:N` takes, per image, the N maps with the largest peak mass (for
//! view pairs: the largest mean peak mass over the two views, so both views show the same maps);
//! explicit indices take those maps for every image. `group_sum` replaces the K maps by the K/G sums of
//! [`stats::group_sum`]: map j of the result is the mean of maps `j, K/G + j, ..., (G-1)·K/G + j`, the
//! maps that aligned representation j pools its G channel blocks with; indices then run over j < K/G.
//!
//! How a map is coloured: [`sheet`] (each map's colour scale runs from its own minimum to its own
//! maximum; the label's entropy says how peaked it really is).
//!
//! # Events (stdout, JSON lines)
//! - `start`: `ckpt`, `ckpt_kind`, `method`, `maps_k` (K), `groups` (G), `map_scale`, `group_sum`,
//!   `maps_drawable` (K, or K/G with `group_sum`), `input` (`data` or `views`), `data` (description),
//!   `images` (to draw, after `limit`), `input_h_px`, `input_w_px`, `maps` (the choice), `grid`, `out`,
//!   `device`, `seed`, `git_revision`.
//! - `warn`: `message`, `index`: an image that could not be read (it is left out).
//! - `image`, one per drawn image: `index`, `name`, `file` (its PNG, or `grid.png`), `maps` (how many
//!   drawn), `map_ids` (comma-separated, in drawing order), `mean_entropy_nats` and
//!   `min_entropy_nats` over all its maps (both views for pairs), `map_h`, `map_w`.
//! - `map`, one per drawn (image, view, map), after its image: `index`, `view` (0: the image; 1, 2: the
//!   views of a pair), `map` (index; an aligned representation j with `group_sum`), `rank` (0-based
//!   position in the row), `entropy_nats`, `entropy_ratio` (entropy / `ln(h'·w')`: 1 uniform, 0 one-hot),
//!   `peak_row`, `peak_col` (in the `h'×w'` feature map), `peak_mass`, `top10_mass` (mass share of the
//!   top 10% of positions, [`stats::top_count`]).
//! - `end`: `images`, `skipped`, `maps` (per image), `map_h`, `map_w`, `mean_entropy_nats` (all maps
//!   of all drawn images and views, drawn or not), `max_entropy_nats` (`ln(h'·w')`, a uniform map),
//!   `entropy_ratio` (their ratio: near 1 means the maps are close to uniform, i.e. collapsed or
//!   untrained), `mean_top10_mass`, `uniform_top10_mass`, `out`, `files`, `elapsed_s`.

pub mod sheet;
pub mod stats;

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use tch::{Device, Kind, Tensor};

use crate::data::{open, DataSpec, Dataset, EvalConfig, EvalLoader, Recipe};
use crate::embed::open_model;
use crate::events::{Event, EventSink};
use crate::model::Lewel;
use crate::LewelError;
use sheet::{Row, Sheet, Tile};
pub use stats::MapChoice;
use stats::MapStats;

pub const TOOL: &str = "viz-maps";
/// Images drawn when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 16;
/// Images per forward pass.
const BATCH: usize = 16;

/// What to draw the maps on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A data set, through the evaluation transform.
    Data(DataSpec),
    /// A views file from `augment` (float32 `[N, 2, 3, S, S]`, normalised).
    Views(PathBuf),
}

/// Settings of a `viz-maps` run.
#[derive(Debug, Clone)]
pub struct VizConfig {
    pub ckpt: PathBuf,
    pub input: Input,
    /// The folder the PNGs go to (created if missing).
    pub out: PathBuf,
    pub maps: MapChoice,
    /// Draw the K/G group sums instead of the K maps (see the module docs).
    pub group_sum: bool,
    /// One contact sheet `grid.png` instead of one PNG per image.
    pub grid: bool,
    /// Side of the evaluation crop in pixels (`None`: the model's default recipe). Images only.
    pub size: Option<u32>,
    /// At most this many images (the first ones, in data order).
    pub limit: usize,
    /// Data worker threads (0: one per core).
    pub threads: usize,
    pub device: Device,
    /// Echoed in the `start` event; nothing here is random.
    pub seed: u64,
}

/// What [`run`] drew.
#[derive(Debug, Clone)]
pub struct VizReport {
    pub images: usize,
    pub skipped: usize,
    pub files: Vec<PathBuf>,
    pub mean_entropy_nats: f64,
    pub max_entropy_nats: f64,
}

fn usage(msg: String) -> anyhow::Error {
    LewelError::Usage(msg).into()
}

/// The first `n` items of a data set.
struct Head {
    inner: Arc<dyn Dataset>,
    n: usize,
}

impl Dataset for Head {
    fn len(&self) -> usize {
        self.n
    }
    fn label(&self, i: usize) -> Option<i64> {
        self.inner.label(i)
    }
    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes()
    }
    fn name(&self, i: usize) -> String {
        self.inner.name(i)
    }
    fn load(&self, i: usize) -> Result<RgbImage> {
        self.inner.load(i)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn fingerprint(&self) -> String {
        self.inner.fingerprint()
    }
    fn prepared(&self) -> Option<crate::data::dataset::PreparedShape> {
        self.inner.prepared()
    }
    fn load_prepared(&self, i: usize) -> Result<Vec<f32>> {
        self.inner.load_prepared(i)
    }
}

/// A batch of inputs: `views` holds one (images) or two (view pairs) `[b, 3, h, w]` row-major buffers.
struct InputBatch {
    indices: Vec<usize>,
    views: Vec<Vec<f32>>,
    skipped: Vec<(usize, String)>,
}

/// The inputs, opened: names, size, normalisation and the batches.
struct Source {
    describe: String,
    names: Vec<String>,
    /// The file-name part of each PNG (`<index>-<stem>.png`).
    stems: Vec<String>,
    hw: (usize, usize),
    mean: [f64; 3],
    std: [f64; 3],
    pairs: bool,
    batches: Box<dyn Iterator<Item = Result<InputBatch>>>,
}

/// `name` made safe for a file name: ASCII letters, digits, `.`, `_`, `-`; at most 60 characters.
fn safe_stem(name: &str) -> String {
    let base = Path::new(name).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let lower = base.to_lowercase();
    let base = crate::data::dataset::IMAGE_EXTENSIONS
        .iter()
        .find_map(|e| lower.strip_suffix(&format!(".{e}")).map(|s| base[..s.len()].to_string()))
        .unwrap_or(base);
    let mut out = String::new();
    for ch in base.chars() {
        let c = if ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-') { ch } else { '-' };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    let out: String = out.trim_matches('-').chars().take(60).collect();
    if out.is_empty() {
        "image".into()
    } else {
        out
    }
}

fn open_data(spec: &DataSpec, cfg: &VizConfig, default_recipe: Recipe) -> Result<Source> {
    let ds = open(spec)?;
    let n = ds.len().min(cfg.limit);
    let mut recipe = default_recipe;
    if let Some(s) = cfg.size {
        if ds.prepared().is_some() {
            return Err(usage(format!(
                "--size {s}: {} holds already-normalised tensors, used at their own size; leave out --size",
                ds.describe()
            )));
        }
        recipe.set(&format!("size={s}"))?;
    }
    let head: Arc<dyn Dataset> = Arc::new(Head { inner: ds.clone(), n });
    let names: Vec<String> = (0..n).map(|i| ds.name(i)).collect();
    let stems = names.iter().map(|s| safe_stem(s)).collect();
    let loader = EvalLoader::new(
        head,
        recipe.clone(),
        EvalConfig { batch_size: BATCH, threads: cfg.threads, prefetch: 1, strict: spec.strict },
    )?;
    let hw = loader.image_hw();
    let batches = loader
        .batches_raw()
        .map(|b| b.map(|b| InputBatch { indices: b.indices, views: vec![b.images], skipped: b.skipped }));
    // The batches own what they need (the data set, the recipe, the worker pool): the loader can go.
    let batches = Box::new(batches);
    Ok(Source { describe: ds.describe(), names, stems, hw, mean: recipe.mean, std: recipe.std, pairs: false, batches })
}

/// `views.npy` → `views.npy.json`.
fn sidecar_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// The first `limit` pairs of a views file, and the normalisation to undo (sidecar recipe, else
/// ImageNet's). A sidecar that exists but cannot be read is reported to `warn`.
fn open_views(path: &Path, limit: usize, warn: &mut dyn FnMut(String) -> Result<()>) -> Result<Source> {
    let want = "float32 [N, 2, 3, S, S] normalised view pairs, as `augment --out` writes";
    let file = std::fs::File::open(path).with_context(|| format!("could not read --views {}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let npy = crate::data::npy::open_checked(BufReader::new(file), len)
        .with_context(|| format!("--views {} is not a .npy file; expected {want}", path.display()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if shape.len() != 5 || shape[1] != 2 || shape[2] != 3 || shape[3] == 0 || shape[4] == 0 {
        bail!("--views {}: shape {shape:?}; expected {want}", path.display());
    }
    if npy.dtype() != npyz::DType::Plain("<f4".parse().expect("valid type string")) {
        bail!("--views {}: dtype {}; expected {want}", path.display(), npy.dtype().descr());
    }
    if npy.order() != npyz::Order::C {
        bail!("--views {}: Fortran order; expected a C-ordered {want}", path.display());
    }
    let (total, h, w) = (shape[0], shape[3], shape[4]);
    if total == 0 {
        bail!("--views {}: the file holds no view pairs", path.display());
    }
    let n = total.min(limit);
    let per = 3 * h * w;
    let mut values = Vec::with_capacity(n * 2 * per);
    for v in npy.data::<f32>().with_context(|| format!("--views {}", path.display()))?.take(n * 2 * per) {
        values.push(v.with_context(|| format!("--views {}: truncated data", path.display()))?);
    }
    if values.len() != n * 2 * per {
        bail!("--views {}: truncated data", path.display());
    }
    let imagenet = Recipe::preset("lewel-b")?;
    let (mut mean, mut std) = (imagenet.mean, imagenet.std);
    let side = sidecar_path(path);
    if side.exists() {
        let parsed = std::fs::read_to_string(&side)
            .map_err(anyhow::Error::from)
            .and_then(|t| Ok(serde_json::from_str::<serde_json::Value>(&t)?))
            .and_then(|v| Ok(serde_json::from_value::<Recipe>(v["recipe"].clone())?));
        match parsed {
            Ok(r) => (mean, std) = (r.mean, r.std),
            Err(e) => warn(format!(
                "{}: could not read its recipe ({e}); un-normalising with ImageNet's mean and std",
                side.display()
            ))?,
        }
    }
    let names: Vec<String> = (0..n).map(|i| format!("{}[{i}]", path.display())).collect();
    let stem = safe_stem(&path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    let batches = (0..n.div_ceil(BATCH))
        .map(|b| {
            let (lo, hi) = (b * BATCH, ((b + 1) * BATCH).min(n));
            let (mut v1, mut v2) = (Vec::with_capacity((hi - lo) * per), Vec::with_capacity((hi - lo) * per));
            for i in lo..hi {
                let row = &values[i * 2 * per..(i + 1) * 2 * per];
                v1.extend_from_slice(&row[..per]);
                v2.extend_from_slice(&row[per..]);
            }
            Ok(InputBatch { indices: (lo..hi).collect(), views: vec![v1, v2], skipped: Vec::new() })
        })
        .collect::<Vec<_>>();
    Ok(Source {
        describe: format!("views {} ({n} of {total} pairs {h}x{w})", path.display()),
        names,
        stems: vec![stem; n],
        hw: (h, w),
        mean,
        std,
        pairs: true,
        batches: Box::new(batches.into_iter()),
    })
}

/// The alignment maps of a `[b, 3, h, w]` buffer: row-major `[b, k, h'·w']` values and `(h', w')`.
fn maps_of(
    model: &Lewel,
    images: &[f32],
    b: usize,
    hw: (usize, usize),
    device: Device,
) -> Result<(Vec<f32>, (usize, usize))> {
    let x = Tensor::from_slice(images).view([b as i64, 3, hw.0 as i64, hw.1 as i64]).to_device(device);
    let a = model.alignment_maps(&x)?.to_device(Device::Cpu).to_kind(Kind::Float).contiguous(); // [b, k, h', w']
    let (_, _, mh, mw) = a.size4()?;
    let numel = a.numel();
    let mut out = vec![0f32; numel];
    a.f_copy_data(&mut out, numel)?;
    Ok((out, (mh as usize, mw as usize)))
}

/// Running totals for the `end` event.
#[derive(Default)]
struct Totals {
    entropy: f64,
    top10: f64,
    maps: usize,
}

/// Draws the maps (see the module docs): PNGs under `cfg.out`, events to `sink`.
pub fn run(cfg: &VizConfig, sink: &mut dyn EventSink) -> Result<VizReport> {
    let t0 = Instant::now();
    if cfg.limit == 0 {
        return Err(usage("--limit must be at least 1".into()));
    }
    if cfg.size == Some(0) {
        return Err(usage("--size must be at least 1 pixel".into()));
    }
    if let (Input::Views(_), Some(s)) = (&cfg.input, cfg.size) {
        return Err(usage(format!(
            "--size {s} does not apply to --views: views are drawn at the size augment made them"
        )));
    }
    crate::fsio::ensure_writable_dir(&cfg.out).with_context(|| format!("--out {}", cfg.out.display()))?;
    let m = open_model(&cfg.ckpt, cfg.device, TOOL, sink)?;
    let mc = m.config().clone();
    if !mc.method.has_aligned() {
        bail!(
            "{}: this checkpoint has no alignment maps (method {}); only lewel-b and lewel-m models have them",
            m.path.display(),
            mc.method
        );
    }
    let (k, g) = (mc.proj_dim as usize, mc.groups as usize);
    let drawable = if cfg.group_sum { k / g } else { k };
    let what = if cfg.group_sum {
        format!("with --group-sum this checkpoint has K/G = {k}/{g} = {drawable} aligned representations")
    } else {
        format!("this checkpoint has K = {k} alignment maps")
    };
    cfg.maps.check(drawable, &what)?;

    let mut src = match &cfg.input {
        Input::Data(spec) => open_data(spec, cfg, m.default_recipe()?)?,
        Input::Views(p) => open_views(p, cfg.limit, &mut |msg| {
            sink.emit(&Event::new(TOOL, "warn").str("message", msg).int("index", -1))?;
            Ok(())
        })?,
    };
    let n = src.names.len();
    sink.emit(
        &Event::new(TOOL, "start")
            .str("ckpt", m.path.display().to_string())
            .str("ckpt_kind", m.kind)
            .str("method", mc.method.name())
            .int("maps_k", k as i64)
            .int("groups", g as i64)
            .num("map_scale", mc.map_scale)
            .bool("group_sum", cfg.group_sum)
            .int("maps_drawable", drawable as i64)
            .str("input", if src.pairs { "views" } else { "data" })
            .str("data", src.describe.clone())
            .int("images", n as i64)
            .int("input_h_px", src.hw.0 as i64)
            .int("input_w_px", src.hw.1 as i64)
            .str("maps", cfg.maps.to_string())
            .bool("grid", cfg.grid)
            .str("out", cfg.out.display().to_string())
            .str("device", format!("{:?}", cfg.device))
            .int("seed", cfg.seed as i64)
            .str("git_revision", crate::GIT_REVISION),
    )?;

    let mut rows: Vec<Row> = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut totals = Totals::default();
    let mut skipped = 0usize;
    let mut drawn = 0usize;
    let mut map_hw = (0usize, 0usize);
    let grid_path = cfg.out.join("grid.png");
    let per_img = 3 * src.hw.0 * src.hw.1;
    let mut batches = std::mem::replace(&mut src.batches, Box::new(std::iter::empty()));
    for batch in &mut batches {
        let batch = batch?;
        let b = batch.indices.len();
        let mut maps: Vec<Vec<f32>> = Vec::new(); // per view: [b, k, p]
        for v in &batch.views {
            let (values, hw) = maps_of(&m.model, v, b, src.hw, cfg.device)?;
            maps.push(values);
            map_hw = hw; // the same for every batch: the inputs all have one size
        }
        let p = map_hw.0 * map_hw.1;
        for (row_in_batch, &i) in batch.indices.iter().enumerate() {
            if let Some((_, why)) = batch.skipped.iter().find(|(j, _)| *j == i) {
                skipped += 1;
                sink.emit(
                    &Event::new(TOOL, "warn")
                        .str("message", format!("skipped {} (left out of the pictures): {why}", src.names[i]))
                        .int("index", i as i64),
                )?;
                continue;
            }
            // Per view: the maps to consider ([drawable, p]) and their statistics.
            let per_view: Vec<(Vec<f32>, Vec<MapStats>)> = maps
                .iter()
                .map(|mv| {
                    let own = &mv[row_in_batch * k * p..(row_in_batch + 1) * k * p];
                    let chosen = if cfg.group_sum { stats::group_sum(own, k, g, p) } else { own.to_vec() };
                    let st = chosen.chunks(p).map(|c| stats::map_stats(c, map_hw.0, map_hw.1)).collect();
                    (chosen, st)
                })
                .collect();
            let scores: Vec<f64> = (0..drawable)
                .map(|j| per_view.iter().map(|(_, st)| st[j].peak_mass).sum::<f64>() / per_view.len() as f64)
                .collect();
            let picked = cfg.maps.select(&scores);
            let all: Vec<&MapStats> = per_view.iter().flat_map(|(_, st)| st.iter()).collect();
            let mean_h = all.iter().map(|s| s.entropy_nats).sum::<f64>() / all.len().max(1) as f64;
            let min_h = all.iter().map(|s| s.entropy_nats).fold(f64::INFINITY, f64::min);
            totals.entropy += all.iter().map(|s| s.entropy_nats).sum::<f64>();
            totals.top10 += all.iter().map(|s| s.top10_mass).sum::<f64>();
            totals.maps += all.len();
            let file = if cfg.grid { grid_path.clone() } else { cfg.out.join(format!("{i:04}-{}.png", src.stems[i])) };
            let ids: Vec<String> = picked.iter().map(|j| j.to_string()).collect();
            sink.emit(
                &Event::new(TOOL, "image")
                    .int("index", i as i64)
                    .str("name", src.names[i].clone())
                    .str("file", file.display().to_string())
                    .int("maps", picked.len() as i64)
                    .str("map_ids", ids.join(","))
                    .num("mean_entropy_nats", mean_h)
                    .num("min_entropy_nats", min_h)
                    .int("map_h", map_hw.0 as i64)
                    .int("map_w", map_hw.1 as i64),
            )?;
            let mut row = Row::default();
            for (v, (chosen, st)) in per_view.iter().enumerate() {
                let img = &batch.views[v][row_in_batch * per_img..(row_in_batch + 1) * per_img];
                let view = if src.pairs { v + 1 } else { 0 };
                let first = match view {
                    0 => vec![format!("#{i} {}", src.stems[i]), format!("#{i}")],
                    1 => vec![format!("#{i} view 1")],
                    _ => vec!["view 2".to_string()],
                };
                let base = sheet::unnormalise(img, src.hw.0, src.hw.1, src.mean, src.std);
                let what = if cfg.group_sum { "rep" } else { "map" };
                let mut block = vec![Tile { image: base.clone(), labels: first, peak: None }];
                for (rank, &j) in picked.iter().enumerate() {
                    sink.emit(&map_event(i, view, j, rank, &st[j], p))?;
                    block.push(map_tile(&base, &chosen[j * p..(j + 1) * p], map_hw, &st[j], what, j));
                }
                row.blocks.push(block);
            }
            drawn += 1;
            if cfg.grid {
                rows.push(row);
            } else {
                let sheet = Sheet { header: header(&m.path, &mc, cfg, map_hw, drawable, src.pairs), rows: vec![row] };
                sheet::render(&sheet)
                    .write_png(&file)
                    .with_context(|| format!("could not write {}", file.display()))?;
                files.push(file);
            }
        }
    }
    if drawn == 0 {
        bail!("no image could be drawn: all {n} of {} were skipped (see the warnings)", src.describe);
    }
    if cfg.grid {
        let sheet = Sheet { header: header(&m.path, &mc, cfg, map_hw, drawable, src.pairs), rows };
        sheet::render(&sheet)
            .write_png(&grid_path)
            .with_context(|| format!("could not write {}", grid_path.display()))?;
        files.push(grid_path);
    }
    let p = map_hw.0 * map_hw.1;
    let max_h = (p as f64).ln();
    let mean_h = totals.entropy / totals.maps.max(1) as f64;
    sink.emit(
        &Event::new(TOOL, "end")
            .int("images", drawn as i64)
            .int("skipped", skipped as i64)
            .int("maps", cfg.maps.count(drawable) as i64)
            .int("map_h", map_hw.0 as i64)
            .int("map_w", map_hw.1 as i64)
            .num("mean_entropy_nats", mean_h)
            .num("max_entropy_nats", max_h)
            .num("entropy_ratio", if max_h > 0.0 { mean_h / max_h } else { 0.0 })
            .num("mean_top10_mass", totals.top10 / totals.maps.max(1) as f64)
            .num("uniform_top10_mass", stats::top_count(p) as f64 / p.max(1) as f64)
            .str("out", cfg.out.display().to_string())
            .int("files", files.len() as i64)
            .num("elapsed_s", t0.elapsed().as_secs_f64()),
    )?;
    Ok(VizReport { images: drawn, skipped, files, mean_entropy_nats: mean_h, max_entropy_nats: max_h })
}

/// The `map` event of map `j` of image `i` (`view` 0 for an image, 1 or 2 for a view), drawn at `rank`.
fn map_event(i: usize, view: usize, j: usize, rank: usize, s: &MapStats, positions: usize) -> Event {
    let max_h = (positions as f64).ln();
    Event::new(TOOL, "map")
        .int("index", i as i64)
        .int("view", view as i64)
        .int("map", j as i64)
        .int("rank", rank as i64)
        .num("entropy_nats", s.entropy_nats)
        .num("entropy_ratio", if max_h > 0.0 { s.entropy_nats / max_h } else { 0.0 })
        .int("peak_row", s.peak_row as i64)
        .int("peak_col", s.peak_col as i64)
        .num("peak_mass", s.peak_mass)
        .num("top10_mass", s.top10_mass)
}

/// The tile of one map (`map_hw` positions) over `base`, labelled `<what> <j>`, H and the peak weight
/// in units of the uniform one.
fn map_tile(base: &RgbImage, map: &[f32], map_hw: (usize, usize), s: &MapStats, what: &str, j: usize) -> Tile {
    let p = (map_hw.0 * map_hw.1) as f64;
    let h = s.entropy_nats;
    Tile {
        image: sheet::overlay(base, map, map_hw.0, map_hw.1),
        labels: vec![
            format!("{what} {j} · H {h:.3} · peak {:.2}×", s.peak_mass * p),
            format!("{what} {j} · H {h:.3}"),
            format!("{j} · H {h:.3}"),
            format!("{j} · H {h:.2}"),
            format!("{j}"),
        ],
        peak: Some(((s.peak_col as f64 + 0.5) / map_hw.1 as f64, (s.peak_row as f64 + 0.5) / map_hw.0 as f64)),
    }
}

/// The header lines of a picture: what model, which maps, how to read the colours.
fn header(
    ckpt: &Path,
    mc: &crate::model::ModelConfig,
    cfg: &VizConfig,
    map_hw: (usize, usize),
    drawable: usize,
    pairs: bool,
) -> Vec<String> {
    let p = map_hw.0 * map_hw.1;
    let which = match &cfg.maps {
        MapChoice::Top(n) => format!(
            "the {} with the largest peak mass{}",
            if *n == 1 { "map".to_string() } else { format!("{} maps", (*n).min(drawable)) },
            if pairs { " (mean of both views)" } else { "" }
        ),
        MapChoice::Indices(_) => format!("maps {}", cfg.maps),
        MapChoice::All => "every map".into(),
    };
    let kind = if cfg.group_sum {
        format!(
            "{drawable} group sums (rep j = mean of maps j, j+{}, ... over G = {})",
            mc.proj_dim / mc.groups,
            mc.groups
        )
    } else {
        format!("K = {} maps", mc.proj_dim)
    };
    vec![
        format!(
            "Alignment maps of {} ({}, {}), {}×{} positions: {which}",
            short_path(ckpt),
            mc.method,
            kind,
            map_hw.0,
            map_hw.1
        ),
        format!(
            "Colour: each map from its own minimum (violet, faint) to its own maximum (yellow); ring: the peak. \
             H: entropy in nats (uniform: ln {p} = {:.3}); peak: the largest weight in units of the uniform 1/{p} \
             (at most e² = 7.39 with scale 1).",
            (p as f64).ln()
        ),
    ]
}

/// The last two components of a path (`run1/ckpt/step-00001000.safetensors` → `ckpt/step-...`).
/// The checkpoint as a title names it: `RUN/ckpt/FILE` for a checkpoint of a run folder (the run's name is
/// what tells runs apart), else the file name alone.
fn short_path(p: &Path) -> String {
    let parts: Vec<String> = p.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let in_run = parts.len() >= 3 && parts[parts.len() - 2] == "ckpt";
    parts[parts.len().saturating_sub(if in_run { 3 } else { 1 })..].join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MemorySink;
    use crate::model::{Arch, ModelConfig, Stem};

    fn events(sink: &MemorySink, kind: &str) -> Vec<serde_json::Value> {
        let evs = sink.events.lock().unwrap();
        evs.iter().filter(|e| e.kind() == kind).map(|e| serde_json::from_str(&e.to_line()).unwrap()).collect()
    }

    /// The events say what the model computes: every map of every image (across batch boundaries),
    /// and the group sums.
    #[test]
    fn events_match_the_models_maps() {
        let d = std::env::temp_dir().join(format!("lewel-viz-lib-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        tch::manual_seed(11);
        let mc = ModelConfig {
            arch: Arch::Resnet18,
            stem: Stem::Cifar,
            width: 4,
            proj_dim: 8,
            hidden_dim: 16,
            groups: 2,
            ..ModelConfig::default()
        };
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let model = Lewel::new(&vs, &mc).unwrap();
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let _ = model.forward_loss(&x, &x.flip([3])).unwrap();
        let ck = d.join("ckpt");
        std::fs::create_dir_all(&ck).unwrap();
        let ck =
            crate::ckpt::save(&ck, 1, 0, &model.state_dict(), &serde_json::json!({"config": {"model": mc}})).unwrap();
        // 18 normalised 3x16x16 tensors: two batches of the tool.
        let n = 18;
        let values = lewel_testkit::test_values(n * 3 * 16 * 16, 4);
        let data = d.join("x.npy");
        lewel_testkit::write_npy_f32(&data, &[n as u64, 3, 16, 16], &values);
        let want = model.alignment_maps(&Tensor::from_slice(&values).view([n as i64, 3, 16, 16])).unwrap(); // [n, 8, 2, 2]
        let want: Vec<f32> = Vec::try_from(want.flatten(0, -1)).unwrap();
        let cfg = VizConfig {
            ckpt: ck,
            input: Input::Data(DataSpec::new(&data)),
            out: d.join("out"),
            maps: MapChoice::All,
            group_sum: false,
            grid: true,
            size: None,
            limit: 100,
            threads: 1,
            device: Device::Cpu,
            seed: 0,
        };
        let mut sink = MemorySink::default();
        let report = run(&cfg, &mut sink).unwrap();
        assert_eq!((report.images, report.files.len()), (n, 1));
        let maps = events(&sink, "map");
        assert_eq!(maps.len(), n * 8);
        for m in &maps {
            let (i, j) = (m["index"].as_u64().unwrap() as usize, m["map"].as_u64().unwrap() as usize);
            let st = stats::map_stats(&want[(i * 8 + j) * 4..(i * 8 + j + 1) * 4], 2, 2);
            assert!((m["entropy_nats"].as_f64().unwrap() - st.entropy_nats).abs() < 1e-6, "{m}");
            assert!((m["peak_mass"].as_f64().unwrap() - st.peak_mass).abs() < 1e-6, "{m}");
            assert_eq!(
                (m["peak_row"].as_u64(), m["peak_col"].as_u64()),
                (Some(st.peak_row as u64), Some(st.peak_col as u64))
            );
        }
        // Group sums: representation j of image i is the mean of maps j and 4 + j.
        let mut sink = MemorySink::default();
        run(
            &VizConfig { group_sum: true, maps: MapChoice::Indices(vec![3, 1]), grid: false, limit: 2, ..cfg },
            &mut sink,
        )
        .unwrap();
        let maps = events(&sink, "map");
        assert_eq!(maps.len(), 2 * 2);
        for m in &maps {
            let (i, j) = (m["index"].as_u64().unwrap() as usize, m["map"].as_u64().unwrap() as usize);
            let mean: Vec<f32> =
                (0..4).map(|q| (want[(i * 8 + j) * 4 + q] + want[(i * 8 + 4 + j) * 4 + q]) / 2.0).collect();
            let st = stats::map_stats(&mean, 2, 2);
            assert!((m["entropy_nats"].as_f64().unwrap() - st.entropy_nats).abs() < 1e-6, "{m}");
        }
        assert_eq!(events(&sink, "image")[0]["map_ids"], "3,1");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn stems_are_safe_file_names() {
        assert_eq!(safe_stem("/data/photos/astronaut.png"), "astronaut");
        assert_eq!(safe_stem("a b/Chelsea Cat.JPEG"), "Chelsea-Cat");
        assert_eq!(safe_stem("x/train.npy[3]"), "train.npy-3");
        assert_eq!(safe_stem("???"), "image");
        assert_eq!(safe_stem(&"y".repeat(100)).len(), 60);
        assert_eq!(short_path(Path::new("/r/run1/ckpt/step-1.safetensors")), "run1/ckpt/step-1.safetensors");
        assert_eq!(short_path(Path::new("a.pth")), "a.pth");
        assert_eq!(short_path(Path::new("/w/out/1/lewel-b-s1.safetensors")), "lewel-b-s1.safetensors");
    }
}
