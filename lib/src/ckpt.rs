//! Checkpoints: safetensors files in the official naming, each with a JSON sidecar, written
//! atomically, with a `latest` pointer written last.
//!
//! ```text
//! RUN/ckpt/step-00000500.safetensors   every tensor of the state (model, target, predictors, optimiser buffers)
//! RUN/ckpt/step-00000500.json          sidecar: step, epoch, config, seed, git revision, sha256 of the tensor file
//! RUN/ckpt/latest                      one line: the file name of the newest complete checkpoint
//! ```
//!
//! Tensor names are the official `state_dict` names without `module.` (`online_net.backbone.conv1.weight`,
//! `target_net.neck.proj.mlp.1.running_var`, `predictor.mlp.3.weight`), plus `optimizer.*` for the
//! optimiser state. The sidecar's hash lets a reader detect a truncated or bit-flipped file: `--resume`
//! then falls back to the newest checkpoint that verifies ([`find_resumable`]).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, View};
use serde_json::Value;
use tch::{Kind, Tensor};

use crate::fsio;
use crate::model::Lewel;
use crate::LewelError;

/// The name of the pointer file.
pub const LATEST: &str = "latest";

/// The file name of the checkpoint at `step`.
pub fn file_name(step: u64) -> String {
    format!("step-{step:08}.safetensors")
}

/// The sidecar of a checkpoint file (`step-N.safetensors` → `step-N.json`).
pub fn sidecar_path(ckpt: &Path) -> PathBuf {
    ckpt.with_extension("json")
}

/// A tensor flattened to bytes for the writer.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        k => bail!("cannot store tensors of kind {k:?} in a checkpoint"),
    })
}

fn kind_of(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        d => bail!("unsupported tensor dtype {d:?}"),
    })
}

fn to_raw(t: &Tensor) -> Result<Raw> {
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    let dtype = dtype_of(t.kind())?;
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut bytes, numel)?;
    Ok(Raw { dtype, shape: t.size().iter().map(|&d| d as usize).collect(), bytes })
}

/// Serialises named tensors (and string metadata) to safetensors bytes.
pub fn to_safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let raws: Vec<(String, Raw)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), to_raw(t).with_context(|| format!("tensor {n}"))?)))
        .collect::<Result<_>>()?;
    let views: Vec<(&str, &Raw)> = raws.iter().map(|(n, r)| (n.as_str(), r)).collect();
    Ok(safetensors::tensor::serialize(views, metadata)?)
}

/// Reads every tensor of a safetensors file (on the CPU).
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    parse_safetensors(&bytes).with_context(|| format!("{} is not a valid safetensors file", path.display()))
}

fn parse_safetensors(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let st = safetensors::SafeTensors::deserialize(bytes)?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind_of(view.dtype())?)?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// What a checkpoint's sidecar records.
#[derive(Debug, Clone)]
pub struct Sidecar {
    pub step: u64,
    pub epoch: u64,
    /// Extra fields (config, seed, schedule state...).
    pub info: Value,
}

/// Writes `RUN/ckpt/step-N.safetensors` and its sidecar atomically, then points `latest` at it.
/// Returns the path of the tensor file.
pub fn save(dir: &Path, step: u64, epoch: u64, tensors: &[(String, Tensor)], info: &Value) -> Result<PathBuf> {
    let path = dir.join(file_name(step));
    // One metadata key only: safetensors writes a HashMap in hash order, and the file must be
    // byte-identical from run to run (step and epoch are in the sidecar).
    let meta = HashMap::from([("format".to_string(), "lewel".to_string())]);
    let bytes = to_safetensors_bytes(tensors, Some(meta))?;
    let sha = crate::hex::sha256(&bytes);
    fsio::write_bytes_atomic(&path, &bytes)?;
    let mut side = serde_json::json!({
        "file": file_name(step),
        "step": step,
        "epoch": epoch,
        "sha256": sha,
        "bytes": bytes.len(),
        "tensors": tensors.len(),
        "git_revision": crate::GIT_REVISION,
    });
    if let (Value::Object(m), Value::Object(extra)) = (&mut side, info) {
        for (k, v) in extra {
            m.entry(k.clone()).or_insert(v.clone());
        }
    }
    let text = serde_json::to_string_pretty(&side)? + "\n";
    fsio::write_bytes_atomic(&sidecar_path(&path), text.as_bytes())?;
    fsio::write_atomic(&dir.join(LATEST), |w| writeln!(w, "{}", file_name(step)))?;
    Ok(path)
}

/// Reads the sidecar of a checkpoint file.
pub fn read_sidecar(ckpt: &Path) -> Result<(Sidecar, String)> {
    let sp = sidecar_path(ckpt);
    let text = fs::read_to_string(&sp).with_context(|| format!("could not read the sidecar {}", sp.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", sp.display()))?;
    let step = v["step"].as_u64().with_context(|| format!("{}: no step", sp.display()))?;
    let epoch = v["epoch"].as_u64().with_context(|| format!("{}: no epoch", sp.display()))?;
    let sha = v["sha256"].as_str().with_context(|| format!("{}: no sha256", sp.display()))?.to_string();
    Ok((Sidecar { step, epoch, info: v }, sha))
}

/// A verified checkpoint: its tensors and sidecar.
pub struct Loaded {
    pub path: PathBuf,
    pub tensors: HashMap<String, Tensor>,
    pub sidecar: Sidecar,
}

/// Loads a checkpoint and checks its bytes against the sidecar's sha256.
pub fn load_verified(ckpt: &Path) -> Result<Loaded> {
    let (sidecar, sha) = read_sidecar(ckpt)?;
    let bytes = fs::read(ckpt).with_context(|| format!("could not read {}", ckpt.display()))?;
    let got = crate::hex::sha256(&bytes);
    if got != sha {
        bail!("{} is corrupt: its sha256 is {got}, the sidecar says {sha} (truncated or damaged file)", ckpt.display());
    }
    let tensors =
        parse_safetensors(&bytes).with_context(|| format!("{} is not a valid safetensors file", ckpt.display()))?;
    Ok(Loaded { path: ckpt.to_path_buf(), tensors: tensors.into_iter().collect(), sidecar })
}

/// Resolves what a user passes as `--ckpt`: a checkpoint file, a `latest` pointer, a `ckpt/`
/// folder or a run folder (both through their `latest`).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let pointer = if path.is_dir() {
        if path.join(LATEST).is_file() {
            path.join(LATEST)
        } else if path.join("ckpt").join(LATEST).is_file() {
            path.join("ckpt").join(LATEST)
        } else {
            bail!("{} holds no checkpoint (no latest or ckpt/latest)", path.display());
        }
    } else if path.file_name().is_some_and(|n| n == LATEST) {
        path.to_path_buf()
    } else if path.is_file() {
        return Ok(path.to_path_buf());
    } else {
        bail!("{} does not exist", path.display());
    };
    let name = fs::read_to_string(&pointer).with_context(|| format!("could not read {}", pointer.display()))?;
    let target = pointer.with_file_name(name.trim());
    if !target.is_file() {
        bail!("{} points at {}, which does not exist", pointer.display(), target.display());
    }
    Ok(target)
}

/// All checkpoint files of a `ckpt/` folder, newest step first.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.strip_suffix(".safetensors")) {
            if let Ok(step) = step.parse::<u64>() {
                found.push((step, dir.join(&name)));
            }
        }
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(found)
}

/// The newest checkpoint of `dir` that verifies, with the reasons the newer ones were passed over
/// (for `warn` events). Starts from `latest` and falls back step by step.
pub fn find_resumable(dir: &Path) -> Result<(Loaded, Vec<String>)> {
    let mut skipped = Vec::new();
    let mut candidates = list(dir)?;
    // `latest` is written last: a file newer than it was interrupted before completion.
    if let Ok(latest) = resolve(&dir.join(LATEST)) {
        if let Some(pos) = candidates.iter().position(|(_, p)| *p == latest) {
            for (_, p) in candidates.drain(..pos) {
                skipped.push(format!("{} is newer than latest (an interrupted write); ignored", p.display()));
            }
        }
    }
    for (_, p) in candidates {
        match load_verified(&p) {
            Ok(l) => return Ok((l, skipped)),
            Err(e) => skipped.push(format!("{e:#}")),
        }
    }
    bail!(
        "no valid checkpoint in {}{}",
        dir.display(),
        if skipped.is_empty() { String::new() } else { format!(": {}", skipped.join("; ")) }
    )
}

/// Deletes checkpoints beyond the newest `keep_last`, except those whose epoch-end falls on a
/// multiple of `keep_every_epochs` (`0` = none kept for that reason). Never deletes `latest`'s target.
pub fn prune(dir: &Path, keep_last: usize, keep_every_epochs: u64) -> Result<Vec<PathBuf>> {
    let latest = resolve(&dir.join(LATEST)).ok();
    let mut removed = Vec::new();
    for (i, (_, p)) in list(dir)?.into_iter().enumerate() {
        if i < keep_last.max(1) || Some(&p) == latest.as_ref() {
            continue;
        }
        let keep = match read_sidecar(&p) {
            Ok((s, _)) => {
                keep_every_epochs > 0 && s.info["epoch_end"].as_bool() == Some(true) && s.epoch % keep_every_epochs == 0
            }
            Err(_) => false,
        };
        if !keep {
            // The tensor file first: a probe listing the folder meanwhile no longer sees the checkpoint, where the
            // other order would show it without its sidecar, like one still being written.
            fs::remove_file(&p).with_context(|| format!("could not delete {}", p.display()))?;
            let _ = fs::remove_file(sidecar_path(&p));
            removed.push(p);
        }
    }
    Ok(removed)
}

/// The prefix of a task head stored next to the model (finetune-semi's classifier `fc.weight` / `fc.bias`, the
/// torchvision name): not part of the LEWEL state, so model loading leaves it to the task, as it leaves
/// `optimizer.*` to the optimiser. A fine-tuned checkpoint thus opens wherever a pre-training one does.
pub const TASK_HEAD_PREFIX: &str = "fc.";

/// Loads a full model state (official naming; `optimizer.*` entries are left to the optimiser, `fc.*` to the task),
/// naming `path` in the error that lists missing, unexpected and mis-shaped keys. Returns how many BatchNorm
/// `num_batches_tracked` counters the state lacked (set to 0, as PyTorch does), for the caller to warn about.
pub fn load_model_state(model: &Lewel, tensors: &HashMap<String, Tensor>, path: &Path) -> Result<usize> {
    let only_model: HashMap<String, Tensor> = tensors
        .iter()
        .filter(|(k, _)| !k.starts_with("optimizer.") && !k.starts_with(TASK_HEAD_PREFIX))
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect();
    model.load_state_dict(&only_model, true).map_err(|e| match e {
        LewelError::KeysMismatch { missing, unexpected, mismatched, .. } => {
            LewelError::KeysMismatch { path: path.to_path_buf(), missing, unexpected, mismatched }.into()
        }
        other => anyhow::Error::from(other),
    })
}

/// The warning for a state that lacked BatchNorm step counters (they were set to 0).
pub fn counters_note(path: &Path, n: usize) -> String {
    format!(
        "{}: {n} BatchNorm num_batches_tracked counters are missing (older checkpoints and many conversion scripts drop \
         them); they were set to 0, as PyTorch's BatchNorm loading does",
        path.display()
    )
}

/// A model restored from one of our checkpoints, for inference (`embed`, `viz-maps`, probes).
pub struct Opened {
    pub vs: tch::nn::VarStore,
    pub model: Lewel,
    pub config: crate::model::ModelConfig,
    /// The checkpoint file actually read (after resolving `latest`).
    pub path: PathBuf,
    pub step: u64,
}

/// Opens `--ckpt` (a file, a `latest` pointer, a `ckpt/` or run folder): verifies the file against its
/// sidecar, rebuilds the model from the configuration recorded there, and loads every tensor.
pub fn open_model(path: &Path, device: tch::Device) -> Result<Opened> {
    let file = resolve(path)?;
    let loaded = load_verified(&file)?;
    let config: crate::model::ModelConfig = serde_json::from_value(loaded.sidecar.info["config"]["model"].clone())
        .with_context(|| format!("{}: the sidecar holds no model configuration", sidecar_path(&file).display()))?;
    let vs = tch::nn::VarStore::new(device);
    let model = Lewel::new(&vs, &config)?;
    load_model_state(&model, &loaded.tensors, &file)?;
    Ok(Opened { vs, model, config, path: file, step: loaded.sidecar.step })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lewel-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn state(x: f64) -> Vec<(String, Tensor)> {
        vec![
            ("a.weight".into(), Tensor::from_slice(&[x, 2.0, 3.0]).view([3, 1])),
            ("a.num_batches_tracked".into(), Tensor::from(7i64)),
            ("b".into(), Tensor::from_slice(&[1.5f32, -2.5])),
        ]
    }

    #[test]
    fn roundtrip_is_exact_and_latest_follows() {
        let d = scratch("rt");
        save(&d, 10, 1, &state(1.0), &serde_json::json!({"seed": 3})).unwrap();
        let p = save(&d, 20, 2, &state(0.1), &serde_json::json!({"seed": 3})).unwrap();
        assert_eq!(resolve(&d).unwrap(), p);
        assert_eq!(resolve(&d.join(LATEST)).unwrap(), p);
        let l = load_verified(&p).unwrap();
        assert_eq!(l.sidecar.step, 20);
        assert_eq!(l.sidecar.info["seed"], 3);
        for (n, t) in state(0.1) {
            let got = &l.tensors[&n];
            assert_eq!(got.kind(), t.kind(), "{n}");
            assert_eq!(got.size(), t.size(), "{n}");
            assert!(got.equal(&t), "{n}");
        }
        assert!(fs::read_dir(&d).unwrap().all(|e| !fsio::is_temp_name(&e.unwrap().file_name().to_string_lossy())));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_checkpoint_is_detected_and_resume_falls_back() {
        let d = scratch("corrupt");
        let good = save(&d, 10, 1, &state(1.0), &Value::Null).unwrap();
        let bad = save(&d, 20, 2, &state(2.0), &Value::Null).unwrap();
        let mut bytes = fs::read(&bad).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x40; // flip one bit in the data
        fs::write(&bad, &bytes).unwrap();
        let err = load_verified(&bad).err().expect("bit flip not detected");
        assert!(format!("{err:#}").contains("corrupt"), "{err:#}");
        let (l, skipped) = find_resumable(&d).unwrap();
        assert_eq!(l.path, good);
        assert_eq!(skipped.len(), 1);
        // Truncation too.
        fs::write(&bad, &bytes[..n / 2]).unwrap();
        assert!(load_verified(&bad).is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn prune_keeps_last_and_every_epoch() {
        let d = scratch("prune");
        for step in 1..=6u64 {
            save(&d, step, step, &state(step as f64), &serde_json::json!({"epoch_end": true})).unwrap();
        }
        prune(&d, 2, 2).unwrap();
        let steps: Vec<u64> = list(&d).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![6, 5, 4, 2]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn resolve_errors_name_the_path() {
        let d = scratch("resolve");
        let err = resolve(&d.join("nope")).unwrap_err();
        assert!(format!("{err:#}").contains("nope"));
        let err = resolve(&d).unwrap_err();
        assert!(format!("{err:#}").contains("no checkpoint"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn open_model_rebuilds_from_the_sidecar() {
        use crate::model::{Arch, ModelConfig, Stem};
        let d = scratch("open");
        let cfg = ModelConfig {
            arch: Arch::Resnet18,
            stem: Stem::Cifar,
            width: 4,
            proj_dim: 8,
            hidden_dim: 16,
            ..ModelConfig::default()
        };
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let model = Lewel::new(&vs, &cfg).unwrap();
        let info = serde_json::json!({"config": {"model": cfg}});
        save(&d, 5, 1, &model.state_dict(), &info).unwrap();
        let opened = open_model(&d, tch::Device::Cpu).unwrap();
        assert_eq!(opened.config, cfg);
        assert_eq!(opened.step, 5);
        let x = Tensor::ones([2, 3, 8, 8], (Kind::Float, tch::Device::Cpu));
        assert!(opened.model.features(&x).unwrap().equal(&model.features(&x).unwrap()));
        fs::remove_dir_all(&d).unwrap();
    }
}
