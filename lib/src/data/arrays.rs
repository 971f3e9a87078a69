//! Array data: MNIST-style IDX files (raw or gzipped) and `.npy` arrays, held in memory.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use sha2::{Digest, Sha256};

use crate::data::dataset::{Dataset, PreparedShape};

/// A cheap digest of a large byte array: its length, its first and last 64 KiB and 64 evenly spaced
/// 4 KiB blocks (a fingerprint, not a checksum: it tells data sets apart in milliseconds).
fn sample_digest(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    if bytes.len() <= 512 << 10 {
        h.update(bytes);
        return;
    }
    h.update(&bytes[..64 << 10]);
    h.update(&bytes[bytes.len() - (64 << 10)..]);
    let step = bytes.len() / 64;
    for k in 0..64 {
        let at = k * step;
        h.update(&bytes[at..(at + 4096).min(bytes.len())]);
    }
}

/// Whether `path` starts like an IDX file of unsigned bytes (magic 0x00000803), raw or gzipped.
pub fn is_idx_file(path: &Path) -> bool {
    let mut head = [0u8; 4];
    let ok = fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok();
    ok && (head == [0, 0, 8, 3] || head[..2] == [0x1f, 0x8b] && path.to_string_lossy().contains("idx"))
}

/// Reads an IDX file of unsigned bytes, raw or gzipped: (dims, data). Only the bytes its header announces are
/// read (a gzip stream is inflated no further), and a header whose sizes overflow is an error, not a crash.
fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    let gz = raw.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read> =
        if gz { Box::new(flate2::read::GzDecoder::new(&raw[..])) } else { Box::new(&raw[..]) };
    let io_err = |e: std::io::Error| {
        let what = if gz { "corrupt or truncated gzip data" } else { "truncated IDX file" };
        anyhow::Error::new(e).context(format!("{}: {what}", path.display()))
    };
    let mut magic = [0u8; 4];
    if let Err(e) = reader.read_exact(&mut magic) {
        if e.kind() != std::io::ErrorKind::UnexpectedEof || gz {
            return Err(io_err(e));
        }
    }
    if magic[..3] != [0, 0, 8] {
        bail!("{}: not an IDX file of unsigned bytes (magic 0x0000 08 0n)", path.display());
    }
    let nd = magic[3] as usize;
    let mut head = vec![0u8; 4 * nd];
    reader.read_exact(&mut head).map_err(|e| io_err(e).context("truncated IDX header"))?;
    let dims: Vec<usize> =
        head.chunks_exact(4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize).collect();
    let n = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).with_context(|| {
        format!("{}: the IDX header's sizes {dims:?} are too large (a damaged file?)", path.display())
    })?;
    let mut data = Vec::new();
    reader.take(n as u64).read_to_end(&mut data).map_err(io_err)?;
    if data.len() < n {
        bail!("{}: truncated IDX data ({} of {n} bytes)", path.display(), data.len());
    }
    Ok((dims, data))
}

/// The labels file that goes with an images file: `*-images-idx3-ubyte[.gz]` →
/// `*-labels-idx1-ubyte` or `*-labels-idx1-ubyte.gz`, whichever exists.
pub fn labels_path_for(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_string_lossy().into_owned();
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    let label_stem =
        stem.replace("-images-idx3-ubyte", "-labels-idx1-ubyte").replace("-images.idx3-ubyte", "-labels.idx1-ubyte");
    if label_stem == stem {
        return None;
    }
    [label_stem.clone(), format!("{label_stem}.gz")].into_iter().map(|n| images.with_file_name(n)).find(|p| p.is_file())
}

/// MNIST-style images `[N, H, W]` (grey, becomes 3 channels) with optional labels.
pub struct Idx {
    path: PathBuf,
    n: usize,
    h: usize,
    w: usize,
    pixels: Vec<u8>,
    labels: Option<Vec<u8>>,
    labels_path: Option<PathBuf>,
}

impl Idx {
    /// Opens an images file and, when present, its labels file.
    pub fn open(path: &Path) -> Result<Idx> {
        let (dims, pixels) = read_idx(path)?;
        let (n, h, w) = match dims.as_slice() {
            [n, h, w] => (*n, *h, *w),
            _ => bail!("{}: expected a [N, H, W] images file (idx3), got {} dimensions", path.display(), dims.len()),
        };
        let labels_path = labels_path_for(path);
        let labels = match &labels_path {
            Some(lp) => {
                let (ld, labels) = read_idx(lp)?;
                if ld != [n] {
                    bail!("{}: {:?} labels for {n} images in {}", lp.display(), ld, path.display());
                }
                Some(labels)
            }
            None => None,
        };
        Ok(Idx { path: path.to_path_buf(), n, h, w, pixels, labels, labels_path })
    }
}

impl Dataset for Idx {
    fn len(&self) -> usize {
        self.n
    }
    fn label(&self, i: usize) -> Option<i64> {
        self.labels.as_ref().map(|l| l[i] as i64)
    }
    fn num_classes(&self) -> Option<usize> {
        self.labels.as_ref().and_then(|l| l.iter().max()).map(|&m| m as usize + 1)
    }
    fn name(&self, i: usize) -> String {
        format!("{}[{i}]", self.path.display())
    }
    fn load(&self, i: usize) -> Result<RgbImage> {
        let px = &self.pixels[i * self.h * self.w..(i + 1) * self.h * self.w];
        let raw: Vec<u8> = px.iter().flat_map(|&v| [v, v, v]).collect();
        Ok(RgbImage::from_raw(self.w as u32, self.h as u32, raw).expect("sizes agree"))
    }
    fn describe(&self) -> String {
        let labels = match &self.labels_path {
            Some(p) => format!("labels {}", p.display()),
            None => "no labels file".into(),
        };
        format!("idx {} ({} images {}x{}, {labels})", self.path.display(), self.n, self.w, self.h)
    }
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("{}x{}x{}", self.n, self.h, self.w));
        sample_digest(&mut h, &self.pixels);
        if let Some(l) = &self.labels {
            h.update(l);
        }
        format!("idx:{}:{}", self.n, crate::hex::short(&h.finalize()))
    }
}

/// `.npy` uint8 images `[N,H,W]` or `[N,H,W,C]`, with the labels of `NAME.labels.npy` beside `NAME.npy` when that
/// exists (an integer `[N]` array: the layout `embed` writes for features).
pub struct NpyImages {
    path: PathBuf,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    pixels: Vec<u8>,
    labels: Option<Vec<i64>>,
}

/// The labels of a `.npy` images file (see [`NpyImages`]): None without a labels file; an error when it does not
/// describe the same N items.
fn npy_labels(images: &Path, n: usize) -> Result<Option<Vec<i64>>> {
    let lp = crate::data::npy::labels_path(images);
    if !lp.exists() {
        return Ok(None);
    }
    let labels = crate::data::npy::read_labels(&lp)?;
    if labels.len() != n {
        bail!(
            "{} holds {} labels for the {n} images of {}; the two must describe the same items in the same order",
            lp.display(),
            labels.len(),
            images.display()
        );
    }
    Ok(Some(labels))
}

/// `.npy` float32 `[N,3,H,W]` already-normalised tensors.
pub struct NpyTensors {
    path: PathBuf,
    shape: [usize; 4],
    values: Vec<f32>,
}

/// At most ~300k values of `v` (evenly spaced), for [`sample_digest`].
fn sample_values(v: &[f32]) -> Vec<f32> {
    let step = (v.len() / 300_000).max(1);
    v.iter().step_by(step).copied().collect()
}

/// Opens a `.npy` file of either kind.
pub fn open_npy(path: &Path) -> Result<Arc<dyn Dataset>> {
    let bytes = fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    let (npy, shape, descr) = crate::data::npy::open_c_order(path, &bytes)?;
    match (descr.as_str(), shape.as_slice()) {
        ("|u1" | "<u1" | ">u1", [n, h, w]) => {
            let (n, h, w) = (*n, *h, *w);
            let pixels = npy.into_vec::<u8>().with_context(|| format!("{}: truncated data", path.display()))?;
            let labels = npy_labels(path, n)?;
            Ok(Arc::new(NpyImages { path: path.to_path_buf(), n, h, w, c: 1, pixels, labels }))
        }
        ("|u1" | "<u1" | ">u1", [n, h, w, c]) if matches!(c, 1 | 3 | 4) => {
            let (n, h, w, c) = (*n, *h, *w, *c);
            let pixels = npy.into_vec::<u8>().with_context(|| format!("{}: truncated data", path.display()))?;
            let labels = npy_labels(path, n)?;
            Ok(Arc::new(NpyImages { path: path.to_path_buf(), n, h, w, c, pixels, labels }))
        }
        ("<f4", [n, 3, h, w]) => {
            let shape = [*n, 3, *h, *w];
            let values = npy.into_vec::<f32>().with_context(|| format!("{}: truncated data", path.display()))?;
            Ok(Arc::new(NpyTensors { path: path.to_path_buf(), shape, values }))
        }
        _ => bail!(
            "{}: dtype {descr} shape {shape:?} is not a DATA array; expected uint8 [N,H,W] or [N,H,W,C] (C = 1, 3, 4) images, or float32 [N,3,H,W] normalised tensors",
            path.display()
        ),
    }
}

impl Dataset for NpyImages {
    fn len(&self) -> usize {
        self.n
    }
    fn label(&self, i: usize) -> Option<i64> {
        self.labels.as_ref().map(|l| l[i])
    }
    fn num_classes(&self) -> Option<usize> {
        self.labels.as_ref().and_then(|l| l.iter().max()).map(|&m| m as usize + 1)
    }
    fn name(&self, i: usize) -> String {
        format!("{}[{i}]", self.path.display())
    }
    fn load(&self, i: usize) -> Result<RgbImage> {
        let k = self.h * self.w * self.c;
        let px = &self.pixels[i * k..(i + 1) * k];
        let raw: Vec<u8> = match self.c {
            1 => px.iter().flat_map(|&v| [v, v, v]).collect(),
            3 => px.to_vec(),
            _ => px.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(), // alpha dropped, like PIL convert('RGB')
        };
        Ok(RgbImage::from_raw(self.w as u32, self.h as u32, raw).expect("sizes agree"))
    }
    fn describe(&self) -> String {
        let labels = match &self.labels {
            Some(_) => format!("labels {}", crate::data::npy::labels_path(&self.path).display()),
            None => "no labels file".into(),
        };
        format!("npy-u8 {} ({} images {}x{}x{}, {labels})", self.path.display(), self.n, self.h, self.w, self.c)
    }
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("{}x{}x{}x{}", self.n, self.h, self.w, self.c));
        sample_digest(&mut h, &self.pixels);
        if let Some(l) = &self.labels {
            h.update(l.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        }
        format!("npy-u8:{}:{}", self.n, crate::hex::short(&h.finalize()))
    }
}

impl Dataset for NpyTensors {
    fn len(&self) -> usize {
        self.shape[0]
    }
    fn label(&self, _: usize) -> Option<i64> {
        None
    }
    fn num_classes(&self) -> Option<usize> {
        None
    }
    fn name(&self, i: usize) -> String {
        format!("{}[{i}]", self.path.display())
    }
    fn load(&self, _: usize) -> Result<RgbImage> {
        bail!(
            "{} holds already-normalised float32 tensors: they are used as they are and cannot be augmented; \
             give images (a folder, list, IDX or uint8 .npy) to augment, or train on it with `pretrain --views` if it holds view pairs",
            self.path.display()
        )
    }
    fn describe(&self) -> String {
        let [n, c, h, w] = self.shape;
        format!("npy-f32 {} ({n} normalised tensors {c}x{h}x{w}, used as they are)", self.path.display())
    }
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("{:?}", self.shape));
        let bytes: Vec<u8> = sample_values(&self.values).iter().flat_map(|v| v.to_le_bytes()).collect();
        sample_digest(&mut h, &bytes);
        format!("npy-f32:{}:{}", self.shape[0], crate::hex::short(&h.finalize()))
    }
    fn prepared(&self) -> Option<PreparedShape> {
        Some(PreparedShape { channels: self.shape[1], height: self.shape[2], width: self.shape[3] })
    }
    fn load_prepared(&self, i: usize) -> Result<Vec<f32>> {
        let k = self.shape[1] * self.shape[2] * self.shape[3];
        Ok(self.values[i * k..(i + 1) * k].to_vec())
    }
}
