//! Writing `.npy` files (format version 1.0, little-endian float32, C order), streamed row by row
//! into a temporary file that is renamed over the real name only when complete (see [`crate::fsio`]);
//! and reading `.npy` headers without trusting their sizes ([`read_header_checked`]).

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use npyz::{DType, NpyFile, TypeChar};

/// Reads the header of a `.npy` file from `reader` with npyz (the reader is left at the data), refusing a header
/// whose shape overflows (npyz panics on that product in debug builds and wraps it in release ones) or announces
/// more data than the `available` bytes of the file, so that no reader allocates or indexes the announced size of
/// a damaged or hostile file. Errors name no file: the caller adds it.
pub fn read_header_checked(mut reader: impl std::io::Read, available: u64) -> anyhow::Result<npyz::NpyHeader> {
    use std::io::Read;
    // Read the header's bytes first, to look at its shape before npyz multiplies it out.
    let mut prefix = vec![0u8; 10];
    let got = read_up_to(&mut reader, &mut prefix)?;
    prefix.truncate(got);
    if got == 10 && prefix.starts_with(b"\x93NUMPY") {
        let len = match prefix[6] {
            1 => u16::from_le_bytes([prefix[8], prefix[9]]) as usize,
            _ => {
                let mut more = [0u8; 2];
                let n = read_up_to(&mut reader, &mut more)?;
                prefix.extend(&more[..n]);
                u32::from_le_bytes([prefix[8], prefix[9], more[0], more[1]]) as usize
            }
        };
        let mut text = vec![0u8; len.min(1 << 20)];
        let n = read_up_to(&mut reader, &mut text)?;
        text.truncate(n);
        if shape_overflows(&String::from_utf8_lossy(&text)) {
            anyhow::bail!("the header's shape is too large (its element count overflows; a damaged file?)");
        }
        prefix.extend(text);
    }
    let chained = std::io::Cursor::new(prefix).chain(reader);
    // npyz panics on an overflowing shape in debug builds: a shape the check above missed is still an error
    let header = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| npyz::NpyHeader::from_reader(chained)))
    {
        Ok(h) => h?,
        Err(_) => anyhow::bail!("the header's shape is too large (its element count overflows; a damaged file?)"),
    };
    let item = header.dtype().num_bytes().map_or(u64::MAX, |b| b as u64);
    match header.shape().iter().try_fold(item, |a, &d| a.checked_mul(d)) {
        Some(bytes) if bytes <= available => Ok(header),
        _ => anyhow::bail!(
            "the header announces shape {:?} of {}, more data than the file's {available} bytes (a truncated or damaged file)",
            header.shape(),
            header.dtype().descr()
        ),
    }
}

/// Fills as much of `buf` as `reader` holds; returns how much.
fn read_up_to(reader: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether the `'shape': (...)` of a `.npy` header's text multiplies past 64 bits.
fn shape_overflows(text: &str) -> bool {
    let Some(at) = text.find("shape") else { return false };
    let rest = &text[at..];
    let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else { return false };
    if close < open {
        return false;
    }
    let dims = rest[open + 1..close].split(',').map(|d| d.trim().trim_end_matches('L')).filter(|d| !d.is_empty());
    let mut product: u64 = 1;
    for d in dims {
        match d.parse::<u64>().ok().and_then(|d| product.checked_mul(d)) {
            Some(p) => product = p,
            None => return d.parse::<u64>().is_ok(), // an overflow; a non-number is npyz's to refuse
        }
    }
    false
}

/// [`read_header_checked`], then the file (`available`: its size in bytes).
pub fn open_checked<R: std::io::Read>(mut reader: R, available: u64) -> anyhow::Result<npyz::NpyFile<R>> {
    let header = read_header_checked(&mut reader, available)?;
    Ok(npyz::NpyFile::with_header(header, reader))
}

/// An opened C-order `.npy` over borrowed bytes: the reader, its shape and its dtype string.
pub type COrderNpy<'a> = (npyz::NpyFile<&'a [u8]>, Vec<usize>, String);

/// Opens the `.npy` bytes of `path` (its whole content) as a C-order array: the reader, its shape and its dtype
/// string (`<f4`, `|u1`, ...). Fortran order and a bad header are errors naming the file.
pub fn open_c_order<'a>(path: &std::path::Path, bytes: &'a [u8]) -> anyhow::Result<COrderNpy<'a>> {
    use anyhow::Context;
    let npy = open_checked(bytes, bytes.len() as u64)
        .with_context(|| format!("{}: not a valid .npy file", path.display()))?;
    if npy.order() != npyz::Order::C {
        anyhow::bail!(
            "{}: Fortran-ordered arrays are not supported; save it with np.ascontiguousarray",
            path.display()
        );
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => other.descr(),
    };
    Ok((npy, shape, descr))
}

/// The `.npy` header for a little-endian float32 C-order array of `shape`, padded so the data starts
/// at a multiple of 64 bytes.
pub fn f32_header(shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut h = Vec::with_capacity(10 + dict.len());
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    h.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h
}

/// A float32 `.npy` file being written: rows are appended, [`NpyWriter::commit`] checks the count,
/// syncs and renames. Dropped without commit, it removes its temporary file.
pub struct NpyWriter {
    path: PathBuf,
    tmp: PathBuf,
    w: Option<BufWriter<File>>,
    expected: usize,
    written: usize,
    buf: Vec<u8>,
}

impl NpyWriter {
    /// Starts `path` for an array of `shape` (the values are `shape.product()` floats).
    pub fn create(path: &Path, shape: &[usize]) -> Result<NpyWriter> {
        let tmp = crate::fsio::temp_path_for(path);
        let file = File::create(&tmp).with_context(|| format!("could not create {}", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&f32_header(shape)).with_context(|| format!("could not write {}", tmp.display()))?;
        Ok(NpyWriter {
            path: path.to_path_buf(),
            tmp,
            w: Some(w),
            expected: shape.iter().product(),
            written: 0,
            buf: Vec::new(),
        })
    }

    /// Appends values.
    pub fn write(&mut self, values: &[f32]) -> Result<()> {
        self.written += values.len();
        let w = self.w.as_mut().expect("not committed");
        let bytes: &[u8] = if cfg!(target_endian = "little") {
            // SAFETY: f32 has no padding and no invalid bit patterns as bytes; u8 needs no alignment;
            // the byte slice covers exactly the memory of `values` and lives no longer than it.
            unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
        } else {
            self.buf.clear();
            for v in values {
                self.buf.extend_from_slice(&v.to_le_bytes());
            }
            &self.buf
        };
        w.write_all(bytes).with_context(|| format!("could not write {}", self.tmp.display()))
    }

    /// Finishes the file: all values written, synced, renamed to the real name.
    pub fn commit(mut self) -> Result<()> {
        anyhow::ensure!(
            self.written == self.expected,
            "{}: wrote {} values, expected {}",
            self.path.display(),
            self.written,
            self.expected
        );
        let w = self.w.take().expect("not committed");
        let r = (|| -> io::Result<()> {
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            drop(f);
            fs::rename(&self.tmp, &self.path)?;
            if let Ok(d) =
                File::open(self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
            {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        r.with_context(|| format!("could not write {}", self.path.display()))
    }
}

impl Drop for NpyWriter {
    fn drop(&mut self) {
        if self.w.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

// --- reading labels -----------------------------------------------------------------------------------------

/// `train.npy` → `train.labels.npy` (a name without `.npy` gets `.labels.npy` appended): where the labels of a
/// `.npy` array live, for features (`embed`) and for uint8 images alike.
pub fn labels_path(array: &Path) -> PathBuf {
    let name = array.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".npy").unwrap_or(&name);
    array.with_file_name(format!("{stem}.labels.npy"))
}

/// Opens a `.npy` file for reading with npyz, its header checked ([`open_checked`]).
fn open_file(path: &Path) -> Result<NpyFile<BufReader<File>>> {
    let file = File::open(path).with_context(|| format!("could not open {}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    open_checked(BufReader::with_capacity(1 << 20, file), len)
        .with_context(|| format!("{} is not a valid .npy file (numpy.save writes them)", path.display()))
}

/// The type character and size of a plain dtype; a structured dtype is an error naming `path`.
pub fn plain_type(path: &Path, dtype: &DType) -> Result<(TypeChar, u64)> {
    match dtype {
        DType::Plain(ts) => Ok((ts.type_char(), ts.size_field())),
        other => bail!("{} has the structured dtype {}; expected a plain numeric array", path.display(), other.descr()),
    }
}

/// Reads a 1-D integer labels `.npy` (int64, int32, int16, int8 or unsigned); every label must be `>= 0`.
pub fn read_labels(path: &Path) -> Result<Vec<i64>> {
    let npy = open_file(path)?;
    let shape = npy.shape().to_vec();
    if shape.len() != 1 {
        bail!("{} has shape {:?}; labels must be a 1-D integer array [N]", path.display(), shape);
    }
    let ctx = || format!("could not read the data of {}", path.display());
    let labels: Vec<i64> = match plain_type(path, &npy.dtype())? {
        (TypeChar::Int, 8) => npy.into_vec::<i64>().with_context(ctx)?,
        (TypeChar::Int, 4) => npy.into_vec::<i32>().with_context(ctx)?.into_iter().map(i64::from).collect(),
        (TypeChar::Int, 2) => npy.into_vec::<i16>().with_context(ctx)?.into_iter().map(i64::from).collect(),
        (TypeChar::Int, 1) => npy.into_vec::<i8>().with_context(ctx)?.into_iter().map(i64::from).collect(),
        (TypeChar::Uint, 8) => {
            npy.into_vec::<u64>().with_context(ctx)?.into_iter().map(|x| i64::try_from(x).unwrap_or(i64::MAX)).collect()
        }
        (TypeChar::Uint, 4) => npy.into_vec::<u32>().with_context(ctx)?.into_iter().map(i64::from).collect(),
        (TypeChar::Uint, 2) => npy.into_vec::<u16>().with_context(ctx)?.into_iter().map(i64::from).collect(),
        (TypeChar::Uint, 1) => npy.into_vec::<u8>().with_context(ctx)?.into_iter().map(i64::from).collect(),
        _ => bail!(
            "{} has dtype {}; labels must be integers (int64 preferred: a.astype('int64'))",
            path.display(),
            npy.dtype().descr()
        ),
    };
    if let Some(i) = labels.iter().position(|&l| l < 0) {
        bail!("{}: label {} at index {i} is negative; labels are class indices 0..K-1", path.display(), labels[i]);
    }
    // Labels index dense vote and logit vectors: refuse absurd class counts before allocating them.
    if let Some(&m) = labels.iter().max() {
        if m >= MAX_CLASSES {
            bail!(
                "{}: label {m} is too large; labels are class indices 0..K-1 with K <= {MAX_CLASSES}",
                path.display()
            );
        }
    }
    Ok(labels)
}

/// The largest class count accepted (labels are dense class indices).
pub const MAX_CLASSES: i64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_readable() {
        let h = f32_header(&[3, 2, 3, 4, 4]);
        assert_eq!(h.len() % 64, 0);
        let d = std::env::temp_dir().join(format!("lewel-npy-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let p = d.join("a.npy");
        let mut w = NpyWriter::create(&p, &[2, 3]).unwrap();
        w.write(&[1.0, 2.0, 3.0]).unwrap();
        w.write(&[4.0, 5.0, 6.5]).unwrap();
        w.commit().unwrap();
        let bytes = fs::read(&p).unwrap();
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        assert_eq!(npy.shape(), &[2, 3]);
        assert_eq!(npy.into_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        // Uncommitted: no file, no temp left.
        let q = d.join("b.npy");
        let mut w = NpyWriter::create(&q, &[2]).unwrap();
        w.write(&[1.0]).unwrap();
        drop(w);
        assert!(!q.exists());
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
        fs::remove_dir_all(&d).unwrap();
    }
}
