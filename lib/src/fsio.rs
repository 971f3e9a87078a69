//! Atomic file writes: a crash never leaves a half-written file under a real name.
//!
//! Each file is written to a temporary name in the same folder that keeps the real extension
//! (`.step-00000100.safetensors.tmp-1234-0.safetensors`, so tools that sniff extensions still work),
//! synced, then renamed over the real name, and the folder is synced so the rename survives a power cut.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temporary name used for `path`: hidden, same folder, same extension, unique in this process.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp = format!(".{name}.tmp-{}-{n}", std::process::id());
    if let Some(ext) = path.extension() {
        tmp.push('.');
        tmp.push_str(&ext.to_string_lossy());
    }
    path.with_file_name(tmp)
}

/// Whether `name` is one of our temporary names (left behind by a crash; safe to delete).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Writes `path` atomically: `fill` writes the content into a buffered temp file, which is then
/// synced and renamed over `path`. On any error the temp file is removed and `path` is untouched.
pub fn write_atomic<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> io::Result<()>,
{
    let tmp = temp_path_for(path);
    let result = (|| -> io::Result<()> {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")));
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("could not write {}", path.display()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Syncs a folder so that renames in it are durable. Best effort: some file systems refuse.
fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Creates `dir` (and parents) and proves it writable by writing and removing a probe file, so a
/// tool fails before hours of work rather than at its first checkpoint.
pub fn ensure_writable_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("could not create the folder {}", dir.display()))?;
    let probe = dir.join(format!(".lewel-write-probe-{}", std::process::id()));
    File::create(&probe)
        .and_then(|mut f| f.write_all(b"probe"))
        .with_context(|| format!("{} is not writable; choose another --out or fix its permissions", dir.display()))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lewel-fsio-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn temp_name_keeps_extension_and_folder() {
        let t = temp_path_for(Path::new("/a/b/step-00000100.safetensors"));
        assert_eq!(t.parent(), Some(Path::new("/a/b")));
        assert_eq!(t.extension().unwrap(), "safetensors");
        assert!(is_temp_name(t.file_name().unwrap().to_str().unwrap()));
        assert!(!is_temp_name("step-00000100.safetensors"));
    }

    #[test]
    fn failed_write_leaves_old_file_and_no_temp() {
        let d = scratch("fail");
        let p = d.join("x.json");
        write_bytes_atomic(&p, b"old").unwrap();
        let err = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "temp file left behind");
        fs::remove_dir_all(&d).unwrap();
    }

    /// A reader polling the path while a writer replaces it many times only ever sees complete
    /// contents: all of the old one or all of the new one.
    #[test]
    fn reader_never_sees_partial_file() {
        let d = scratch("race");
        let p = d.join("data.bin");
        let size = 256 * 1024;
        write_bytes_atomic(&p, &vec![0u8; size]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    let data = fs::read(&p).unwrap();
                    assert_eq!(data.len(), size, "partial file seen");
                    assert!(data.iter().all(|&b| b == data[0]), "mixed contents seen");
                    reads += 1;
                }
                reads
            })
        };
        for i in 1..=40u8 {
            write_atomic(&p, |w| {
                for chunk in vec![i; size].chunks(4096) {
                    w.write_all(chunk)?;
                    w.flush()?; // force many small writes to the temp file
                }
                Ok(())
            })
            .unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unwritable_dir_is_reported() {
        let d = scratch("ro");
        let f = d.join("a-file");
        fs::write(&f, b"").unwrap();
        // A folder below a regular file can never be created.
        let err = ensure_writable_dir(&f.join("sub")).unwrap_err();
        assert!(format!("{err:#}").contains("could not create"), "{err:#}");
        ensure_writable_dir(&d.join("ok/sub")).unwrap();
        fs::remove_dir_all(&d).unwrap();
    }
}
