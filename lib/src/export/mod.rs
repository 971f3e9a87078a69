//! `export-backbone`: the online backbone for torchvision, timm and detectron2, and the import of official
//! LEWEL checkpoints and torchvision state dicts, in Rust, without Python.
//!
//! LEWEL: <https://arxiv.org/abs/2203.14898>. File formats and name mappings follow
//! `reference/lewel-official.md` §7 (checkpoints, `extract_backbone.py`, the detectron2 renaming) and §10 item 20
//! (official checkpoints hold a numpy scalar and the optimiser state).
//!
//! Flow of [`run`]: read the input ([`import`]: our checkpoint, an official `checkpoint_XXXX.pth.tar`, a
//! torchvision `.pth` in the zip or the legacy format, or a bare `.safetensors`), infer or read the model
//! configuration, load everything into a [`Lewel`] model (strictly: a file that does not fit lists the missing,
//! unexpected and mis-shaped keys), then write the requested format atomically and, with `verify`, read it back
//! and compare every tensor bit for bit.
//!
//! Modules:
//! - [`archive`]: a minimal ZIP reader / writer (PyTorch's container).
//! - [`pickle`] / [`pickle_write`]: a pickle reader (protocols 0–5, the globals checkpoints use) and writer.
//! - [`torchfile`]: `torch.load` without Python (zip and legacy formats).
//! - [`torchvision`]: our names ↔ torchvision / timm names; the architecture a backbone describes.
//! - [`detectron2`]: detectron2's names and its numpy `.pkl`.

pub mod archive;
pub mod detectron2;
pub mod pickle;
pub mod pickle_write;
pub mod torchfile;
pub mod torchvision;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};
use tch::{nn::VarStore, Device, Tensor};

use crate::ckpt;
use crate::events::{Event, EventSink, MemorySink};
use crate::fsio;
use crate::model::{EmaMode, Lewel, Method, ModelConfig};
use crate::LewelError;
use pickle::Value;
use torchfile::TorchFile;
use torchvision::{ONLINE_BACKBONE, TARGET_BACKBONE};

/// The tool name in events.
pub const TOOL: &str = "export-backbone";

/// The output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Online backbone, torchvision names, `.safetensors` (`safetensors.torch.load_file`).
    Safetensors,
    /// Online backbone, torchvision names, a PyTorch zip checkpoint (`torch.load(f, weights_only=True)`).
    Pth,
    /// Online backbone, detectron2 names, numpy arrays in a `.pkl` (MoCo / InfoMin converters' format).
    Detectron2,
    /// The whole model (online, target, predictors) as our checkpoint: `.safetensors` + `.json` sidecar.
    Lewel,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::Pth => "pth",
            Format::Detectron2 => "detectron2",
            Format::Lewel => "lewel",
        }
    }
}

/// What the input is expected to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Decide from the file's content.
    Auto,
    /// An official LEWEL checkpoint (`main.py`'s `checkpoint_XXXX.pth.tar`: `state_dict` with `module.` keys).
    Official,
    /// A bare torchvision ResNet state dict (`extract_backbone.py`'s output, torchvision's own weights).
    Torchvision,
    /// One of our checkpoints (`.safetensors` with its `.json` sidecar, a `latest` pointer, a run folder).
    Lewel,
}

/// What the input turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// Our checkpoint with its sidecar (configuration recorded, sha256 verified).
    Lewel,
    /// A full LEWEL state in the official naming from a PyTorch file (`module.` stripped).
    Official,
    /// A full LEWEL state without a sidecar (a bare `.safetensors` in our naming).
    LewelState,
    /// A bare torchvision-named ResNet.
    Torchvision,
}

impl InputKind {
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Lewel => "lewel",
            InputKind::Official => "official",
            InputKind::LewelState => "lewel-state",
            InputKind::Torchvision => "torchvision",
        }
    }
}

/// Everything [`run`] needs.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// The input: a file, a `latest` pointer, a `ckpt/` or run folder.
    pub ckpt: PathBuf,
    pub from: Source,
    pub format: Format,
    /// The output file (for [`Format::Lewel`] also a folder: then `OUT/step-N.safetensors` + `latest`).
    pub out: PathBuf,
    /// Read the output back and compare every tensor bit for bit.
    pub verify: bool,
    /// G, the number of channel groups of the aligned branch; not recorded in official checkpoints
    /// (`None`: the sidecar's value, else the official 4).
    pub groups: Option<i64>,
    /// K for fresh heads on a bare backbone (`None`: the official 256). Must agree with a file that has heads.
    pub proj_dim: Option<i64>,
    /// Hidden width for fresh heads on a bare backbone (`None`: the official 4096).
    pub hidden_dim: Option<i64>,
    /// Seed of the fresh heads of a bare backbone (`--format lewel`).
    pub seed: u64,
}

/// What [`run`] wrote.
#[derive(Clone, Debug)]
pub struct ExportReport {
    pub out: PathBuf,
    pub tensors: usize,
    pub bytes: usize,
    pub sha256: String,
    pub verified: Option<bool>,
}

/// An input read into a model.
pub struct Imported {
    pub kind: InputKind,
    /// `safetensors`, `torch-zip` or `torch-legacy`.
    pub container: &'static str,
    /// The file actually read.
    pub path: PathBuf,
    /// `sidecar` or `inferred`.
    pub config_source: &'static str,
    pub step: u64,
    pub epoch: u64,
    pub vs: VarStore,
    pub model: Lewel,
    /// Whether the heads (necks and predictors) and the target were not in the file.
    pub fresh_heads: bool,
}

fn warn(sink: &mut dyn EventSink, message: impl Into<String>) -> Result<()> {
    sink.emit(&Event::new(TOOL, "warn").str("message", message))?;
    Ok(())
}

/// Runs the export: import, start event, write, verify, end event.
pub fn run(cfg: &ExportConfig, sink: &mut dyn EventSink) -> Result<ExportReport> {
    let t0 = std::time::Instant::now();
    // Warnings found while reading come after the `start` event, which needs the configuration read.
    let mut early = MemorySink::default();
    let imported = import(cfg, &mut early);
    let early: Vec<Event> = std::mem::take(&mut *early.events.lock().expect("event list poisoned"));
    let imp = match imported {
        Ok(imp) => imp,
        Err(e) => {
            for ev in &early {
                sink.emit(ev)?;
            }
            return Err(e);
        }
    };
    let mc = imp.model.config().clone();
    if same_file(&imp.path, &cfg.out) {
        return Err(
            LewelError::Usage(format!("--out {} is the input file; choose another name", cfg.out.display())).into()
        );
    }
    let mut start = Event::new(TOOL, "start")
        .str("ckpt", imp.path.display().to_string())
        .str("input_kind", imp.kind.name())
        .str("container", imp.container)
        .str("config_source", imp.config_source)
        .str("format", cfg.format.name())
        .str("out", cfg.out.display().to_string())
        .bool("verify", cfg.verify);
    if let Json::Object(m) = serde_json::to_value(&mc)? {
        start = start.merge(&m);
    }
    start = start.int("step", imp.step as i64).int("epoch", imp.epoch as i64);
    sink.emit(&start)?;
    for ev in &early {
        sink.emit(ev)?;
    }
    if imp.fresh_heads && cfg.format == Format::Lewel {
        warn(
            sink,
            format!(
                "{} holds a backbone only: it was copied into online_net and target_net; the necks and predictors \
                 ({}, K {}, hidden {}, G {}) are freshly initialised with seed {}",
                imp.path.display(),
                Method::name(mc.method),
                mc.proj_dim,
                mc.hidden_dim,
                mc.groups,
                cfg.seed
            ),
        )?;
    }

    let state = imp.model.state_dict();
    let (tensors, bytes, out_file) = match cfg.format {
        Format::Safetensors | Format::Pth | Format::Detectron2 => {
            let backbone = torchvision::backbone_of(&state);
            let bytes = match cfg.format {
                Format::Safetensors => {
                    // One metadata key only: safetensors writes its metadata map in hash order, so more keys
                    // would make the bytes (and the sha256) differ from run to run.
                    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
                    ckpt::to_safetensors_bytes(&backbone, Some(meta))?
                }
                Format::Pth => pickle_write::torch_zip(&backbone)?,
                _ => detectron2::to_pickle(&backbone)?,
            };
            make_parent(&cfg.out)?;
            fsio::write_bytes_atomic(&cfg.out, &bytes)?;
            (backbone.len(), bytes, cfg.out.clone())
        }
        Format::Lewel => write_lewel(cfg, &imp, &state)?,
    };
    let sha256 = crate::hex::sha256(&bytes);
    let verified = if cfg.verify {
        let expected = match cfg.format {
            Format::Lewel => state.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect(),
            _ => torchvision::backbone_of(&state),
        };
        verify(cfg.format, &out_file, &expected).with_context(|| format!("--verify: {}", out_file.display()))?;
        Some(true)
    } else {
        None
    };
    let mut end = Event::new(TOOL, "end")
        .str("out", out_file.display().to_string())
        .str("format", cfg.format.name())
        .int("tensors", tensors as i64)
        .int("bytes", bytes.len() as i64)
        .str("sha256", sha256.clone());
    if let Some(v) = verified {
        end = end.bool("verified", v);
    }
    sink.emit(&end.num("elapsed_s", t0.elapsed().as_secs_f64()))?;
    Ok(ExportReport { out: out_file, tensors, bytes: bytes.len(), sha256, verified })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn make_parent(path: &Path) -> Result<()> {
    if let Some(p) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(p).with_context(|| format!("could not create the folder {}", p.display()))?;
    }
    Ok(())
}

/// `--format lewel`: a `.safetensors` file + sidecar, or a folder with `step-N.safetensors` and `latest`.
fn write_lewel(cfg: &ExportConfig, imp: &Imported, state: &[(String, Tensor)]) -> Result<(usize, Vec<u8>, PathBuf)> {
    let info = json!({
        "config": {"model": imp.model.config()},
        "imported_from": imp.path.display().to_string(),
        "imported_kind": imp.kind.name(),
        "fresh_heads": imp.fresh_heads,
    });
    let is_file = cfg.out.extension().is_some_and(|e| e == "safetensors");
    let path = if is_file {
        make_parent(&cfg.out)?;
        let meta = HashMap::from([
            ("format".to_string(), "lewel".to_string()),
            ("step".to_string(), imp.step.to_string()),
            ("epoch".to_string(), imp.epoch.to_string()),
        ]);
        let bytes = ckpt::to_safetensors_bytes(state, Some(meta))?;
        fsio::write_bytes_atomic(&cfg.out, &bytes)?;
        let name = cfg.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut side = json!({
            "file": name,
            "step": imp.step,
            "epoch": imp.epoch,
            "sha256": crate::hex::sha256(&bytes),
            "bytes": bytes.len(),
            "tensors": state.len(),
            "git_revision": crate::GIT_REVISION,
        });
        if let (Json::Object(m), Json::Object(extra)) = (&mut side, &info) {
            for (k, v) in extra {
                m.insert(k.clone(), v.clone());
            }
        }
        let text = serde_json::to_string_pretty(&side)? + "\n";
        fsio::write_bytes_atomic(&ckpt::sidecar_path(&cfg.out), text.as_bytes())?;
        cfg.out.clone()
    } else {
        fsio::ensure_writable_dir(&cfg.out)?;
        ckpt::save(&cfg.out, imp.step, imp.epoch, state, &info)?
    };
    let bytes = fs::read(&path).with_context(|| format!("could not read back {}", path.display()))?;
    Ok((state.len(), bytes, path))
}

/// Reads `out` back and compares it with `expected` (names, order, kinds, shapes, bytes).
fn verify(format: Format, out: &Path, expected: &[(String, Tensor)]) -> Result<()> {
    let bytes = fs::read(out).with_context(|| format!("could not read {}", out.display()))?;
    let got: Vec<(String, Tensor)> = match format {
        Format::Safetensors => ckpt::read_safetensors(out)?,
        Format::Pth => {
            let f = TorchFile::parse(&bytes)?;
            let pairs = f.value.pairs().context("the pickle is not a dict")?;
            let mut v = Vec::with_capacity(pairs.len());
            for (k, t) in pairs {
                let name = k.as_str().context("a non-string key")?.to_string();
                let Value::Tensor(t) = t else { bail!("{name} is {}, not a tensor", t.describe()) };
                v.push((name, f.tensor(&t)?));
            }
            v
        }
        Format::Detectron2 => detectron2::read(&bytes)?,
        Format::Lewel => {
            let opened = ckpt::open_model(out, Device::Cpu)?;
            opened.model.state_dict()
        }
    };
    let want: Vec<(String, &Tensor)> = expected
        .iter()
        .map(|(k, t)| (if format == Format::Detectron2 { detectron2::rename(k) } else { k.clone() }, t))
        .collect();
    let mut got_map: HashMap<String, Tensor> = got.into_iter().collect();
    if got_map.len() != want.len() {
        bail!("{} tensors written, {} read back", want.len(), got_map.len());
    }
    for (name, t) in want {
        let g = got_map.remove(&name).with_context(|| format!("{name} is missing from the file"))?;
        if g.kind() != t.kind() || g.size() != t.size() {
            bail!("{name}: wrote {:?} {:?}, read back {:?} {:?}", t.kind(), t.size(), g.kind(), g.size());
        }
        if pickle_write::tensor_bytes(&g)? != pickle_write::tensor_bytes(t)? {
            bail!("{name}: the values read back differ from those written");
        }
    }
    Ok(())
}

/// The tensors of an input file, with where they came from.
struct RawInput {
    container: &'static str,
    tensors: Vec<(String, Tensor)>,
    /// The official `arch` string (`LEWELB_EMAN`), when there is one.
    arch: Option<String>,
    epoch: u64,
}

/// Reads `cfg.ckpt` into a model. See the module docs for what is accepted.
pub fn import(cfg: &ExportConfig, sink: &mut dyn EventSink) -> Result<Imported> {
    let given = &cfg.ckpt;
    let pointer = given.is_dir() || given.file_name().is_some_and(|n| n == ckpt::LATEST);
    let path = if pointer {
        if matches!(cfg.from, Source::Official | Source::Torchvision) {
            bail!(
                "{} is a folder or a `latest` pointer: --from {} needs the checkpoint file",
                given.display(),
                source_name(cfg.from)
            );
        }
        ckpt::resolve(given)?
    } else if given.is_file() {
        given.clone()
    } else {
        bail!("{} does not exist", given.display());
    };

    // Our checkpoint: the sidecar records the configuration; the sha256 is checked.
    let has_sidecar = path.extension().is_some_and(|e| e == "safetensors") && ckpt::sidecar_path(&path).is_file();
    if has_sidecar && matches!(cfg.from, Source::Auto | Source::Lewel) {
        let loaded = ckpt::load_verified(&path)?;
        let mc: ModelConfig =
            serde_json::from_value(loaded.sidecar.info["config"]["model"].clone()).with_context(|| {
                format!("{}: the sidecar holds no model configuration", ckpt::sidecar_path(&path).display())
            })?;
        check_flags(cfg, &mc, true, &path)?;
        let vs = VarStore::new(Device::Cpu);
        let model = Lewel::new(&vs, &mc)?;
        ckpt::load_model_state(&model, &loaded.tensors, &path)?;
        let optim = loaded.tensors.keys().filter(|k| k.starts_with("optimizer.")).count();
        if optim > 0 {
            warn(sink, format!("{}: {optim} optimizer.* tensors are not exported (model state only)", path.display()))?;
        }
        return Ok(Imported {
            kind: InputKind::Lewel,
            container: "safetensors",
            path,
            config_source: "sidecar",
            step: loaded.sidecar.step,
            epoch: loaded.sidecar.epoch,
            vs,
            model,
            fresh_heads: false,
        });
    }
    if cfg.from == Source::Lewel {
        bail!(
            "{}: --from lewel needs one of our checkpoints (.safetensors with its .json sidecar); this file has no sidecar",
            path.display()
        );
    }

    let bytes = fs::read(&path).with_context(|| format!("could not read {}", path.display()))?;
    let raw = read_tensors(&path, &bytes, sink).with_context(|| format!("{}", path.display()))?;
    drop(bytes);
    from_tensors(cfg, path, raw, sink)
}

fn source_name(s: Source) -> &'static str {
    match s {
        Source::Auto => "auto",
        Source::Official => "official",
        Source::Torchvision => "torchvision",
        Source::Lewel => "lewel",
    }
}

/// The tensors of a PyTorch file (its `state_dict` / `model` entry or the top-level dict) or a bare safetensors.
fn read_tensors(path: &Path, bytes: &[u8], sink: &mut dyn EventSink) -> Result<RawInput> {
    if !torchfile::looks_like_torch(bytes) {
        let tensors = ckpt::read_safetensors(path).context(
            "not a checkpoint this tool reads (expected a PyTorch .pth / .pth.tar, a .safetensors, or our checkpoint)",
        )?;
        return Ok(RawInput { container: "safetensors", tensors, arch: None, epoch: 0 });
    }
    let f = TorchFile::parse(bytes)?;
    if !f.unknown_globals.is_empty() {
        warn(
            sink,
            format!(
                "{}: skipped pickle content of unknown types (kept opaque, not needed): {}",
                path.display(),
                f.unknown_globals.join(", ")
            ),
        )?;
    }
    let top = f.value.pairs().with_context(|| format!("the file holds {}, not a dict", f.value.describe()))?;
    let has_tensors = |v: &Value| v.pairs().is_some_and(|p| p.iter().any(|(_, x)| matches!(x, Value::Tensor(_))));
    let wrapper = ["state_dict", "model"].into_iter().find(|k| f.value.get(k).is_some_and(|v| has_tensors(&v)));
    type Pairs = Vec<(Value, Value)>;
    let (sd, skipped): (Pairs, Pairs) = match wrapper {
        Some(k) => {
            let sd = f.value.get(k).and_then(|v| v.pairs()).unwrap_or_default();
            (sd, top.into_iter().filter(|(key, _)| key.as_str() != Some(k)).collect())
        }
        None => (top, Vec::new()),
    };
    if !skipped.is_empty() {
        let what: Vec<String> =
            skipped.iter().map(|(k, v)| format!("{} ({})", k.as_str().unwrap_or("?"), v.describe())).collect();
        warn(sink, format!("{}: skipped entries (not needed for the weights): {}", path.display(), what.join("; ")))?;
    }
    let mut tensors = Vec::with_capacity(sd.len());
    let mut not_tensors = Vec::new();
    for (k, v) in sd {
        let name = match &k {
            Value::Str(s) => s.to_string(),
            other => {
                not_tensors.push(other.describe());
                continue;
            }
        };
        match v {
            Value::Tensor(t) => tensors.push((name.clone(), f.tensor(&t).with_context(|| format!("tensor {name}"))?)),
            other => not_tensors.push(format!("{name} ({})", other.describe())),
        }
    }
    if !not_tensors.is_empty() {
        warn(
            sink,
            format!("{}: skipped state entries that are not tensors: {}", path.display(), not_tensors.join("; ")),
        )?;
    }
    let arch = f.value.get("arch").and_then(|v| v.as_str().map(str::to_string));
    let epoch = f.value.get("epoch").and_then(|v| v.as_int()).unwrap_or(0).max(0) as u64;
    Ok(RawInput { container: f.container.name(), tensors, arch, epoch })
}

/// Checks `--groups`, `--proj-dim`, `--hidden-dim` against a configuration read from a file.
fn check_flags(cfg: &ExportConfig, mc: &ModelConfig, groups_recorded: bool, path: &Path) -> Result<()> {
    let mut bad = Vec::new();
    if let Some(k) = cfg.proj_dim.filter(|&k| k != mc.proj_dim) {
        bad.push(format!("--proj-dim {k} (the file has K = {})", mc.proj_dim));
    }
    if let Some(h) = cfg.hidden_dim.filter(|&h| h != mc.hidden_dim) {
        bad.push(format!("--hidden-dim {h} (the file has {})", mc.hidden_dim));
    }
    if let Some(g) = cfg.groups.filter(|&g| groups_recorded && g != mc.groups) {
        bad.push(format!("--groups {g} (the sidecar records {})", mc.groups));
    }
    if !bad.is_empty() {
        return Err(LewelError::Usage(format!(
            "{}: {}; these flags only set what the file does not record, so drop them",
            path.display(),
            bad.join(", ")
        ))
        .into());
    }
    Ok(())
}

/// Classifies the tensors by their names, infers the configuration and loads the model.
fn from_tensors(cfg: &ExportConfig, path: PathBuf, raw: RawInput, sink: &mut dyn EventSink) -> Result<Imported> {
    let RawInput { container, mut tensors, arch, epoch } = raw;
    // DDP's `module.` prefix (official checkpoints): strip it where every key has it.
    let prefixed = !tensors.is_empty() && tensors.iter().all(|(k, _)| k.starts_with("module."));
    if prefixed {
        for (k, _) in tensors.iter_mut() {
            *k = k["module.".len()..].to_string();
        }
    }
    let converted: Vec<String> = tensors
        .iter()
        .filter(|(_, t)| matches!(t.kind(), tch::Kind::Half | tch::Kind::BFloat16 | tch::Kind::Double))
        .map(|(_, t)| format!("{:?}", t.kind()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !converted.is_empty() {
        warn(
            sink,
            format!(
                "{}: floating-point tensors of kind {} are converted to float32 (the model's precision)",
                path.display(),
                converted.join(", ")
            ),
        )?;
    }
    let full = tensors.iter().any(|(k, _)| k.starts_with(ONLINE_BACKBONE));
    let bare = !full && torchvision::looks_like_resnet(tensors.iter().map(|(k, _)| k.as_str()));
    let kind = if full {
        if container == "safetensors" {
            InputKind::LewelState
        } else {
            InputKind::Official
        }
    } else if bare {
        InputKind::Torchvision
    } else {
        let first: Vec<&str> = tensors.iter().take(5).map(|(k, _)| k.as_str()).collect();
        bail!(
            "{}: no ResNet backbone found; expected keys like module.online_net.backbone.conv1.weight (official LEWEL), \
             online_net.backbone.conv1.weight (lewel) or conv1.weight (torchvision); the file has {} tensors, first: {}",
            path.display(),
            tensors.len(),
            if first.is_empty() { "none".to_string() } else { first.join(", ") }
        );
    };
    match (cfg.from, kind) {
        (Source::Official, InputKind::Official) | (Source::Torchvision, InputKind::Torchvision) | (Source::Auto, _) => {}
        (Source::Official, k) => bail!(
            "{}: --from official expects a PyTorch checkpoint whose state_dict has module.online_net.* keys; this is a {} input",
            path.display(),
            k.name()
        ),
        (Source::Torchvision, k) => bail!(
            "{}: --from torchvision expects bare ResNet names (conv1.weight, layer1.0...); this is a {} input (use --from auto)",
            path.display(),
            k.name()
        ),
        (Source::Lewel, _) => bail!("{}: --from lewel needs one of our checkpoints with its sidecar", path.display()),
    }

    let shapes = |prefix: &str| -> BTreeMap<String, Vec<i64>> {
        tensors.iter().filter_map(|(k, t)| k.strip_prefix(prefix).map(|n| (n.to_string(), t.size()))).collect()
    };
    let backbone_prefix = if full { ONLINE_BACKBONE } else { "" };
    let (arch_, stem, width) =
        torchvision::infer_arch(&shapes(backbone_prefix)).with_context(|| format!("{}", path.display()))?;
    let mut mc = ModelConfig { arch: arch_, stem, width, ..ModelConfig::default() };
    if let Some(a) = &arch {
        // main.py records `--arch`: LEWELB_EMAN (EMA of the whole state) or LEWELB (parameters only).
        mc.ema = if a.contains("EMAN") { EmaMode::Eman } else { EmaMode::Params };
    }
    let fresh_heads = !full;
    if full {
        let get = |k: &str| tensors.iter().find(|(n, _)| n == k).map(|(_, t)| t.size());
        let p0 = get("online_net.neck.proj.mlp.0.weight");
        let p3 = get("online_net.neck.proj.mlp.3.weight");
        let (Some(p0), Some(p3)) = (p0, p3) else {
            bail!("{}: online_net.neck.proj.mlp.{{0,3}}.weight missing; cannot tell the head sizes", path.display());
        };
        mc.hidden_dim = p0[0];
        mc.proj_dim = p3[0];
        mc.method = if tensors.iter().any(|(k, _)| k.starts_with("online_net.neck.proj_obj.")) {
            Method::LewelB
        } else {
            Method::Byol
        };
        check_flags(cfg, &mc, false, &path)?;
    } else {
        mc.proj_dim = cfg.proj_dim.unwrap_or(mc.proj_dim);
        mc.hidden_dim = cfg.hidden_dim.unwrap_or(mc.hidden_dim);
        let mut dropped = Vec::new();
        tensors.retain(|(k, _)| {
            let fc = torchvision::is_classifier(k);
            if fc {
                dropped.push(k.clone());
            }
            !fc
        });
        if !dropped.is_empty() {
            warn(
                sink,
                format!(
                    "{}: the classifier ({}) is not part of a backbone; dropped",
                    path.display(),
                    dropped.join(", ")
                ),
            )?;
        }
    }
    match cfg.groups {
        Some(g) => mc.groups = g,
        None if mc.method == Method::LewelB && cfg.format == Format::Lewel => warn(
            sink,
            format!(
                "{}: the number of groups G is not recorded in this file; assuming the official {} (pass --groups to change it)",
                path.display(),
                mc.groups
            ),
        )?,
        None => {}
    }
    mc.validate().map_err(|e| anyhow::anyhow!("{}: the inferred configuration is invalid: {e}", path.display()))?;

    tch::manual_seed(cfg.seed as i64);
    let vs = VarStore::new(Device::Cpu);
    let model = Lewel::new(&vs, &mc)?;
    let map: HashMap<String, Tensor> = if full {
        tensors.into_iter().collect()
    } else {
        // A bare backbone goes into the online and the target network; everything else keeps its fresh init.
        let mut m = HashMap::new();
        for (k, t) in tensors {
            m.insert(format!("{TARGET_BACKBONE}{k}"), t.shallow_clone());
            m.insert(format!("{ONLINE_BACKBONE}{k}"), t);
        }
        m
    };
    let keys_error = |e: LewelError| -> anyhow::Error {
        match e {
            LewelError::KeysMismatch { missing, unexpected, mismatched, .. } => {
                let strip = |v: Vec<String>| -> Vec<String> {
                    if fresh_heads {
                        v.into_iter()
                            .filter(|k| k.starts_with(ONLINE_BACKBONE))
                            .map(|k| k[ONLINE_BACKBONE.len()..].to_string())
                            .collect()
                    } else {
                        v
                    }
                };
                let mismatched = if fresh_heads {
                    mismatched
                        .into_iter()
                        .filter(|(k, _, _)| k.starts_with(ONLINE_BACKBONE))
                        .map(|(k, a, b)| (k[ONLINE_BACKBONE.len()..].to_string(), a, b))
                        .collect()
                } else {
                    mismatched
                };
                LewelError::KeysMismatch {
                    path: path.clone(),
                    missing: strip(missing),
                    unexpected: strip(unexpected),
                    mismatched,
                }
                .into()
            }
            other => other.into(),
        }
    };
    let counters = if full {
        model.load_state_dict(&map, true).map_err(keys_error)?
    } else {
        // Strict on the backbone: every backbone entry present, nothing else in the file.
        let names: Vec<String> = model.state_dict().into_iter().map(|(k, _)| k).collect();
        let missing: Vec<String> = names
            .iter()
            .filter(|k| k.starts_with(ONLINE_BACKBONE) || k.starts_with(TARGET_BACKBONE))
            .filter(|k| !map.contains_key(*k) && !k.ends_with(crate::model::lewel::NUM_BATCHES_TRACKED))
            .cloned()
            .collect();
        let known: std::collections::HashSet<&String> = names.iter().collect();
        let mut unexpected: Vec<String> = map.keys().filter(|k| !known.contains(k)).cloned().collect();
        unexpected.sort();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(keys_error(LewelError::KeysMismatch {
                path: path.clone(),
                missing,
                unexpected,
                mismatched: Vec::new(),
            }));
        }
        model.load_state_dict(&map, false).map_err(keys_error)?
    };
    if counters > 0 {
        eprintln!("warning: {}", crate::ckpt::counters_note(&path, counters));
    }
    Ok(Imported { kind, container, path, config_source: "inferred", step: 0, epoch, vs, model, fresh_heads })
}

#[cfg(test)]
mod tests;
