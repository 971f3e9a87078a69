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
/// synced and renamed over `path`. On any error the temp file is removed and `path` is untouched; the
/// error names `path` and, for a full disk, a file-size limit, a read-only file system or a permission
/// problem, says so and what to do.
pub fn write_atomic<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> io::Result<()>,
{
    let tmp = temp_path_for(path);
    let result = (|| -> io::Result<()> {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        fill(&mut w)?;
        if crate::fault::active().slow_write_ms.is_some() {
            // half the bytes in the temp file, the rest still buffered: a kill now leaves a partial temp file
            let (mut file, buffered) = w.into_parts();
            let buffered = buffered.map_err(|_| io::Error::other("a writer panicked"))?;
            let half = buffered.len() / 2;
            file.write_all(&buffered[..half])?;
            crate::fault::pause_in_write();
            file.write_all(&buffered[half..])?;
            w = BufWriter::new(file);
        }
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
    result.map_err(|e| {
        let hint = hint(&e);
        anyhow::Error::new(e).context(format!("could not write {}{hint}", path.display()))
    })
}

/// What an I/O error means for the user, for the few that have one clear cause (`""` otherwise).
pub fn hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            " (the disk is full or over quota: free some space or choose another --out)"
        }
        io::ErrorKind::FileTooLarge => {
            " (the file would pass the file-size limit, `ulimit -f`: raise it or choose another --out)"
        }
        io::ErrorKind::ReadOnlyFilesystem => " (the file system is read-only: choose another --out)",
        io::ErrorKind::PermissionDenied => " (permission denied: fix the folder's permissions or choose another --out)",
        _ => "",
    }
}

/// Deletes the temp files that dead processes left in `dir` (a crash or a kill in mid-write), and returns
/// them. A temp file of a live process (another tool writing into the same folder) is left alone.
pub fn remove_stale_temps(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return removed };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_temp_name(&name) {
            continue;
        }
        // `.NAME.tmp-PID-N[.EXT]`
        let pid = name.rsplit_once(".tmp-").and_then(|(_, rest)| rest.split('-').next()?.parse::<i32>().ok());
        let alive = match pid {
            Some(pid) if pid == std::process::id() as i32 => true,
            // SAFETY: kill with signal 0 only checks whether the process exists.
            Some(pid) if pid > 0 => {
                (unsafe { libc::kill(pid, 0) }) == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
            }
            _ => false,
        };
        if !alive && fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed.sort();
    removed
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
    fn stale_temps_of_dead_processes_are_removed() {
        let d = scratch("stale");
        // pid 0 is never a process we could have been; ours is alive.
        let dead = d.join(".step-00000001.safetensors.tmp-0-3.safetensors");
        let mine = temp_path_for(&d.join("x.json"));
        for p in [&dead, &mine, &d.join("step-00000001.safetensors")] {
            fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(&d), vec![dead.clone()]);
        assert!(!dead.exists() && mine.exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn error_hints_name_the_cause() {
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(hint(&full).contains("disk is full"));
        assert!(hint(&io::Error::from_raw_os_error(libc::EFBIG)).contains("ulimit -f"));
        assert!(hint(&io::Error::from_raw_os_error(libc::EROFS)).contains("read-only"));
        assert_eq!(hint(&io::Error::other("x")), "");
        let d = scratch("hint");
        let err = write_atomic(&d.join("a.json"), |_| Err(io::Error::from_raw_os_error(libc::ENOSPC))).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("a.json (the disk is full") && msg.contains("No space left"), "{msg}");
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
