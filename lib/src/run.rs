//! The run directory of a training tool:
//!
//! ```text
//! RUN/config.json                         the fully resolved configuration (seed, data fingerprint, git revision)
//! RUN/events.jsonl                        a copy of the tool's stdout
//! RUN/ckpt/step-NNNNNNNN.safetensors      checkpoints, each with a .json sidecar
//! RUN/ckpt/latest                         the name of the newest complete checkpoint, written last
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::events::{EventWriter, OnClosed};
use crate::fsio;

/// A run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Opens (creating if needed) the run folder and its `ckpt/`, checking both are writable.
    pub fn create(root: &Path) -> Result<Self> {
        fsio::ensure_writable_dir(root)?;
        fsio::ensure_writable_dir(&root.join("ckpt"))?;
        Ok(RunDir { root: root.to_path_buf() })
    }

    /// Opens an existing run folder (for `--resume`), failing clearly when it is not one.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.join("config.json").is_file() {
            anyhow::bail!(
                "{} is not a run folder (no config.json); pass the --out folder of an earlier run",
                root.display()
            );
        }
        Ok(RunDir { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn events_path(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }
    pub fn ckpt_dir(&self) -> PathBuf {
        self.root.join("ckpt")
    }

    /// Writes `config.json` atomically (pretty-printed, with the git revision added).
    pub fn write_config(&self, config: &Value) -> Result<()> {
        let mut config = config.clone();
        if let Value::Object(m) = &mut config {
            m.entry("git_revision").or_insert_with(|| Value::from(crate::GIT_REVISION));
        }
        let text = serde_json::to_string_pretty(&config)? + "\n";
        fsio::write_bytes_atomic(&self.config_path(), text.as_bytes())
    }

    /// Reads `config.json`.
    pub fn read_config(&self) -> Result<Value> {
        let p = self.config_path();
        let text = std::fs::read_to_string(&p).with_context(|| format!("could not read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", p.display()))
    }

    /// Removes what a start that was refused before its first step left here (`config.json`, `events.jsonl`,
    /// an empty `ckpt/`, and the folder itself when `created` says this start made it and it is empty now), so
    /// that the corrected command can use the same folder. A folder that holds a checkpoint, or whose events
    /// hold a step, is a run that started: it is left as it is. Returns whether anything was removed.
    pub fn remove_if_unstarted(&self, created: bool) -> Result<bool> {
        let ckpt = self.ckpt_dir();
        let has_ckpt = std::fs::read_dir(&ckpt).map(|mut d| d.next().is_some()).unwrap_or(false);
        let stepped = std::fs::read_to_string(self.events_path())
            .map(|t| t.lines().any(|l| l.contains("\"event\":\"step\"")))
            .unwrap_or(false);
        if has_ckpt || stepped {
            return Ok(false);
        }
        for f in [self.config_path(), self.events_path()] {
            match std::fs::remove_file(&f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("could not remove {}", f.display()))
                }
                _ => {}
            }
        }
        let _ = std::fs::remove_dir(&ckpt);
        if created {
            let _ = std::fs::remove_dir(&self.root);
        }
        Ok(true)
    }

    /// For a fresh start into this folder: an earlier start that never reached its first step (no checkpoint,
    /// no step event: killed while it loaded its data, say) is not a run, and is removed, saying so on stderr.
    /// A folder that holds a run is an error that says how to continue it.
    pub fn claim_for_new_run(&self, tool: &str) -> Result<()> {
        if !self.config_path().exists() {
            return Ok(());
        }
        if self.remove_if_unstarted(false)? {
            fsio::ensure_writable_dir(&self.ckpt_dir())?;
            eprintln!(
                "{tool}: {} held a start that never reached its first step (no checkpoint, no step); replacing it",
                self.root.display()
            );
            return Ok(());
        }
        anyhow::bail!(
            "{} already holds a run; continue it with --resume {0}, or choose another --out",
            self.root.display()
        )
    }

    /// For a fresh start (`created`: whether it made the folder): when `result` is an error and the run never
    /// started, removes what it wrote ([`RunDir::remove_if_unstarted`]) and tells stderr so. Returns `result`.
    pub fn forget_if_refused<T>(&self, tool: &str, created: bool, result: Result<T>) -> Result<T> {
        if result.is_err() && matches!(self.remove_if_unstarted(created), Ok(true)) {
            eprintln!("{tool}: the run did not start; nothing was kept in {}", self.root.display());
        }
        result
    }

    /// An event writer to stdout with a copy appended to `events.jsonl`.
    pub fn event_writer(&self, tool: &str) -> Result<EventWriter> {
        let p = self.events_path();
        EventWriter::stdout(tool, OnClosed::Continue)
            .with_copy(&p)
            .with_context(|| format!("could not open {}", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, EventSink};

    #[test]
    fn create_write_read() {
        let d = std::env::temp_dir().join(format!("lewel-run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        assert!(RunDir::open(&d).is_err());
        let run = RunDir::create(&d).unwrap();
        assert!(run.ckpt_dir().is_dir());
        run.write_config(&serde_json::json!({"lr": 0.1})).unwrap();
        let cfg = RunDir::open(&d).unwrap().read_config().unwrap();
        assert_eq!(cfg["lr"], 0.1);
        assert_eq!(cfg["git_revision"], crate::GIT_REVISION);
        let mut w = run.event_writer("test").unwrap();
        w.emit(&Event::new("test", "end")).unwrap();
        w.flush_copy().unwrap();
        assert!(std::fs::read_to_string(run.events_path()).unwrap().contains("\"event\":\"end\""));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_unstarted_run_is_removed_and_a_started_one_kept() {
        let d = std::env::temp_dir().join(format!("lewel-run-unstarted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let run = RunDir::create(&d).unwrap();
        run.write_config(&serde_json::json!({"lr": 0.1})).unwrap();
        std::fs::write(run.events_path(), "{\"event\":\"start\"}\n").unwrap();
        assert!(run.remove_if_unstarted(true).unwrap());
        assert!(!d.exists());
        // a folder the user made, with a file of theirs: only ours goes
        let run = RunDir::create(&d).unwrap();
        std::fs::write(d.join("notes.txt"), "mine").unwrap();
        run.write_config(&serde_json::json!({})).unwrap();
        assert!(run.remove_if_unstarted(false).unwrap());
        assert!(d.join("notes.txt").exists() && !run.config_path().exists() && !run.ckpt_dir().exists());
        // a step was taken, or a checkpoint written: kept
        let run = RunDir::create(&d).unwrap();
        run.write_config(&serde_json::json!({})).unwrap();
        std::fs::write(run.events_path(), "{\"v\":1,\"event\":\"step\",\"step\":1}\n").unwrap();
        assert!(!run.remove_if_unstarted(true).unwrap());
        std::fs::write(run.events_path(), "").unwrap();
        std::fs::write(run.ckpt_dir().join("latest"), "x").unwrap();
        assert!(!run.remove_if_unstarted(true).unwrap());
        assert!(run.config_path().exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
