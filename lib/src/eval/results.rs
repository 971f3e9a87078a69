//! Traceable results: one flat JSON object per evaluation (the `result` event), and the `--results`
//! JSON-lines file that cron jobs append to.
//!
//! A result holds the metrics and everything that made them: the checkpoint (path, step, sha256), the
//! data (paths, fingerprints, split sizes), the transforms and the probe's protocol. The part of it that
//! the user chose (data, transform overrides, probe settings, seed) is hashed into `protocol_hash`; a
//! result is identified by (`ckpt_sha256`, `protocol_hash`), so a second run with the same flags skips
//! what the file already holds.
//!
//! Appending is one `write` of one line on a file opened with `O_APPEND`, under an exclusive `flock` on
//! the results file itself; the keys are read again under the lock, so two cron jobs that race evaluate
//! at worst twice but record once. A torn last line (a crash mid-write on a file system that allows
//! it) is ignored when reading and does not block later appends (they start on a new line).

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The event kind of a result line.
pub const RESULT_EVENT: &str = "result";

/// sha256 of a file's bytes, as lowercase hex, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("could not open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("could not read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::hex::encode(&h.finalize()))
}

/// A stable hash of a protocol: sha256 of its JSON with the keys sorted, first 16 hex digits.
pub fn protocol_hash(protocol: &Map<String, Value>) -> String {
    let sorted: BTreeMap<&String, &Value> = protocol.iter().collect();
    let text = serde_json::to_string(&sorted).expect("a JSON map serialises");
    crate::hex::short(&Sha256::digest(text.as_bytes()))
}

/// The key of a result: (checkpoint sha256, or "" for cached features; protocol hash).
pub type ResultKey = (String, String);

fn key_of(line: &Value) -> Option<ResultKey> {
    if line.get("event")?.as_str()? != RESULT_EVENT {
        return None;
    }
    let ck = line.get("ckpt_sha256").and_then(Value::as_str).unwrap_or("").to_string();
    Some((ck, line.get("protocol_hash")?.as_str()?.to_string()))
}

/// A `--results FILE.jsonl`: the keys it holds, and locked appends.
#[derive(Debug, Clone)]
pub struct ResultsFile {
    pub path: PathBuf,
}

impl ResultsFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ResultsFile { path: path.into() }
    }

    /// The keys of the complete result lines in the file (none when it does not exist yet).
    pub fn keys(&self) -> Result<HashSet<ResultKey>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(parse_keys(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
            Err(e) => Err(e).with_context(|| format!("could not read --results {}", self.path.display())),
        }
    }

    /// Appends `line` (one JSON object, no newline) unless a line with the same key is already there;
    /// returns whether it was written. Holds an exclusive `flock` on the file while it checks and writes.
    pub fn append_unless_present(&self, key: &ResultKey, line: &str) -> Result<bool> {
        if line.contains('\n') {
            bail!("a result line must not contain a newline");
        }
        let ctx = || format!("could not append to --results {}", self.path.display());
        let mut f = OpenOptions::new().read(true).append(true).create(true).open(&self.path).with_context(ctx)?;
        let _lock = Flock::exclusive(&f).with_context(ctx)?;
        let mut text = String::new();
        f.seek(SeekFrom::Start(0)).with_context(ctx)?;
        f.read_to_string(&mut text).with_context(ctx)?;
        if parse_keys(&text).contains(key) {
            return Ok(false);
        }
        // A torn last line (no newline) gets one, so that this line stays whole.
        let mut bytes = Vec::with_capacity(line.len() + 2);
        if !text.is_empty() && !text.ends_with('\n') {
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        f.write_all(&bytes).with_context(ctx)?;
        f.sync_data().with_context(ctx)?;
        Ok(true)
    }
}

fn parse_keys(text: &str) -> HashSet<ResultKey> {
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter_map(|v| key_of(&v)).collect()
}

/// An exclusive `flock` held until dropped.
struct Flock(i32);

impl Flock {
    fn exclusive(f: &File) -> std::io::Result<Flock> {
        let fd = f.as_raw_fd();
        loop {
            // SAFETY: `fd` is an open descriptor owned by `f`, which outlives the lock (it is
            // released in drop, before the caller's `File` is closed).
            let rc = unsafe { libc::flock(fd, libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Flock(fd));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: see `exclusive`; unlocking an fd we locked.
        unsafe {
            libc::flock(self.0, libc::LOCK_UN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_hash_ignores_key_order() {
        let mut a = Map::new();
        a.insert("k".into(), Value::from("10,20"));
        a.insert("t".into(), Value::from(0.07));
        let mut b = Map::new();
        b.insert("t".into(), Value::from(0.07));
        b.insert("k".into(), Value::from("10,20"));
        assert_eq!(protocol_hash(&a), protocol_hash(&b));
        b.insert("t".into(), Value::from(0.1));
        assert_ne!(protocol_hash(&a), protocol_hash(&b));
    }

    #[test]
    fn append_skips_known_keys_and_survives_a_torn_line() {
        let d = std::env::temp_dir().join(format!("lewel-results-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let r = ResultsFile::new(d.join("r.jsonl"));
        assert!(r.keys().unwrap().is_empty());
        let line =
            |ck: &str| format!(r#"{{"v":1,"tool":"t","event":"result","ckpt_sha256":"{ck}","protocol_hash":"p"}}"#);
        let k = |ck: &str| (ck.to_string(), "p".to_string());
        assert!(r.append_unless_present(&k("a"), &line("a")).unwrap());
        assert!(!r.append_unless_present(&k("a"), &line("a")).unwrap());
        // a torn line
        let mut f = OpenOptions::new().append(true).open(&r.path).unwrap();
        f.write_all(br#"{"v":1,"tool":"t","event":"res"#).unwrap();
        assert!(r.append_unless_present(&k("b"), &line("b")).unwrap());
        assert_eq!(r.keys().unwrap(), HashSet::from([k("a"), k("b")]));
        let text = std::fs::read_to_string(&r.path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with('\n'));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
