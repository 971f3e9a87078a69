//! The checkpoints a probe evaluates: `--ckpt` repeated, each a file, a `latest` pointer, or a
//! folder meaning every complete checkpoint in it (a run's `ckpt/`, or the run folder itself).
//!
//! Only complete checkpoints are read: one of ours (`step-N.safetensors`) needs its sidecar and a
//! sha256 that matches it. One that is still being written (no sidecar yet) or is damaged (wrong
//! hash) is skipped with a `warn` event, not an error, so a cron job that lists a live run's folder
//! never fails on the checkpoint being saved. Other files (exported backbones, torchvision or official
//! `.pth`) have no sidecar; their sha256 is computed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::results::sha256_file;
use crate::ckpt;
use crate::events::{Event, EventSink};

/// One checkpoint to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CkptRef {
    /// The file.
    pub path: PathBuf,
    /// sha256 of its bytes (verified against the sidecar for ours).
    pub sha256: String,
    /// The training step, for ours.
    pub step: Option<u64>,
    pub epoch: Option<u64>,
}

fn looks_like_ours(p: &Path) -> bool {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.starts_with("step-") && name.ends_with(".safetensors")
}

/// Why `p` (one of ours) is not complete, or its verified reference.
fn verify(p: &Path) -> Result<CkptRef, String> {
    if !ckpt::sidecar_path(p).is_file() {
        return Err(format!(
            "{} has no sidecar {} (still being written, or left by a crash); skipped",
            p.display(),
            ckpt::sidecar_path(p).display()
        ));
    }
    let (side, want) = ckpt::read_sidecar(p).map_err(|e| format!("{e:#}; skipped"))?;
    let got = sha256_file(p).map_err(|e| format!("{e:#}; skipped"))?;
    if got != want {
        return Err(format!(
            "{}: sha256 {got} does not match its sidecar's {want} (incomplete or damaged); skipped",
            p.display()
        ));
    }
    Ok(CkptRef { path: p.to_path_buf(), sha256: got, step: Some(side.step), epoch: Some(side.epoch) })
}

/// The checkpoint folder of `dir`: itself when it holds checkpoints or `latest`, else `dir/ckpt`.
fn ckpt_dir(dir: &Path) -> Result<PathBuf> {
    let holds = |d: &Path| d.join(ckpt::LATEST).is_file() || ckpt::list(d).map(|l| !l.is_empty()).unwrap_or(false);
    if holds(dir) {
        return Ok(dir.to_path_buf());
    }
    let sub = dir.join("ckpt");
    if sub.is_dir() {
        return Ok(sub);
    }
    bail!("{} holds no checkpoints (no step-N.safetensors, no ckpt/ folder)", dir.display())
}

/// Expands the `--ckpt` arguments into verified checkpoints, in the order given (a folder's in
/// step order), without duplicates. Incomplete ones are skipped with a `warn` event from `tool`; a
/// path that does not exist is an error.
pub fn expand(args: &[PathBuf], tool: &str, sink: &mut dyn EventSink) -> Result<Vec<CkptRef>> {
    let mut out: Vec<CkptRef> = Vec::new();
    let warn = |sink: &mut dyn EventSink, msg: String| -> Result<()> {
        sink.emit(&Event::new(tool, "warn").str("message", msg))?;
        Ok(())
    };
    for arg in args {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if arg.is_dir() {
            let dir = ckpt_dir(arg)?;
            let mut found = ckpt::list(&dir)?;
            found.reverse(); // oldest first
            if found.is_empty() {
                warn(sink, format!("{} holds no checkpoints yet", dir.display()))?;
            }
            candidates.extend(found.into_iter().map(|(_, p)| p));
        } else if arg.file_name().is_some_and(|n| n == ckpt::LATEST) {
            candidates.push(ckpt::resolve(arg)?);
        } else if arg.is_file() {
            candidates.push(arg.clone());
        } else {
            bail!("--ckpt {} does not exist", arg.display());
        }
        for p in candidates {
            let r = if looks_like_ours(&p)
                || ckpt::sidecar_path(&p).is_file() && p.extension().is_some_and(|e| e == "safetensors")
            {
                match verify(&p) {
                    Ok(r) => r,
                    Err(msg) => {
                        warn(sink, msg)?;
                        continue;
                    }
                }
            } else {
                CkptRef { path: p.clone(), sha256: sha256_file(&p)?, step: None, epoch: None }
            };
            if !out.iter().any(|o| o.path == r.path) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MemorySink;
    use tch::Tensor;

    #[test]
    fn folders_list_complete_checkpoints_and_warn_about_the_rest() {
        let d = std::env::temp_dir().join(format!("lewel-eval-ckpts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let ck = d.join("ckpt");
        std::fs::create_dir_all(&ck).unwrap();
        let t = |x: f32| vec![("a".to_string(), Tensor::from_slice(&[x]))];
        let p1 = ckpt::save(&ck, 1, 0, &t(1.0), &serde_json::Value::Null).unwrap();
        let p2 = ckpt::save(&ck, 2, 0, &t(2.0), &serde_json::Value::Null).unwrap();
        let p3 = ckpt::save(&ck, 3, 0, &t(3.0), &serde_json::Value::Null).unwrap();
        std::fs::remove_file(ckpt::sidecar_path(&p2)).unwrap(); // half-written
        let mut bytes = std::fs::read(&p3).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(&p3, bytes).unwrap(); // damaged
        let mut sink = MemorySink::default();
        let got = expand(&[d.clone(), p1.clone()], "t", &mut sink).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].path, p1);
        assert_eq!(got[0].step, Some(1));
        assert_eq!(got[0].sha256, sha256_file(&p1).unwrap());
        let warns: Vec<String> = sink.events.lock().unwrap().iter().map(|e| e.to_line()).collect();
        assert_eq!(warns.len(), 2, "{warns:?}");
        assert!(warns[0].contains("no sidecar") && warns[1].contains("does not match"), "{warns:?}");
        assert!(expand(&[d.join("nope")], "t", &mut sink).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
