//! The inputs of `dense-probe`: images with their segmentation masks, and cached feature maps.
//!
//! - `X.npy` (uint8 `[N, H, W, 3]` or `[N, H, W]` images, read by [`crate::data::arrays`]) with `X.masks.npy` beside
//!   it (uint8 `[N, H, W]` class ids; the layout of the scenes benchmark), or masks given explicitly;
//! - a VOC-style folder: `JPEGImages/ID.jpg` with `SegmentationClass/ID.png`, a palette PNG whose palette *index*
//!   is the class (read with the `png` crate, no palette expansion; 8-bit greyscale PNGs are read as ids too),
//!   all pairs in sorted id order or the ids of a split list (one per line, as `ImageSets/Segmentation/val.txt`);
//! - cached feature maps: float32 `[N, C, h, w]` `.npy` with `FEATS.masks.npy` (uint8 `[N, H, W]`) beside it.
//!
//! 255 is the ignore label everywhere. For the backbone each image goes through the checkpoint's eval transform
//! (resize the shorter side, centre crop); its mask goes through the same resize and crop with nearest neighbour
//! at pixel centres (PIL `NEAREST`), so truth and image stay aligned: scores are taken at the crop's resolution.
//! A mask whose size differs from its image, or a VOC image without a mask, is a bad pair: a `warn` event and the
//! pair is skipped (`strict`: an error). A class id at or above the class count is always an error naming the file.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::metrics::IGNORE;
use crate::data::decode::{decode_rgb, MAX_PIXELS};
use crate::data::{ops, Dataset, Recipe};
use crate::LewelError;

/// A mask: `h x w` class ids, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub w: usize,
    pub h: usize,
    pub ids: Vec<u8>,
}

/// `X.npy` → `X.masks.npy`; a name without `.npy` gets `.masks.npy` appended.
pub fn masks_path(array: &Path) -> PathBuf {
    let s = array.to_string_lossy();
    match s.strip_suffix(".npy") {
        Some(stem) => PathBuf::from(format!("{stem}.masks.npy")),
        None => PathBuf::from(format!("{s}.masks.npy")),
    }
}

/// Reads a whole `.npy` of uint8 (shape and values), refusing other dtypes.
fn read_u8_npy(path: &Path, what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = fs::read(path).with_context(|| format!("could not read {what} {}", path.display()))?;
    let (npy, shape, descr) = crate::data::npy::open_c_order(path, &bytes)?;
    if !matches!(descr.as_str(), "|u1" | "<u1" | ">u1") {
        bail!("{}: dtype {descr}; {what} must be uint8 (a.astype('uint8'))", path.display());
    }
    let data = npy.into_vec::<u8>().with_context(|| format!("{}: truncated data", path.display()))?;
    Ok((shape, data))
}

/// Reads float32 `[N, C, h, w]` feature maps.
pub fn read_feature_maps(path: &Path) -> Result<Tensor> {
    let bytes = fs::read(path).with_context(|| format!("could not read features {}", path.display()))?;
    let npy = crate::data::npy::open_checked(&bytes[..], bytes.len() as u64)
        .with_context(|| format!("{}: not a valid .npy file", path.display()))?;
    let shape: Vec<i64> = npy.shape().iter().map(|&d| d as i64).collect();
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => other.descr(),
    };
    if descr != "<f4" || shape.len() != 4 || npy.order() != npyz::Order::C {
        bail!(
            "{}: dtype {descr} shape {shape:?}; cached feature maps must be C-ordered float32 [N, C, h, w]",
            path.display()
        );
    }
    let v = npy.into_vec::<f32>().with_context(|| format!("{}: truncated data", path.display()))?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("{}: value {i} is {} (non-finite features); check the backbone for divergence", path.display(), v[i]);
    }
    Ok(Tensor::from_slice(&v).view(shape.as_slice()))
}

/// Reads uint8 `[N, H, W]` masks as a tensor, checking their count against `n` (when given).
pub fn read_mask_array(path: &Path, n: Option<usize>) -> Result<Tensor> {
    if !path.exists() {
        bail!(
            "masks file {} not found; write the masks there as a uint8 [N, H, W] .npy of class ids (255 ignored), \
             or give its path with --train-masks / --val-masks",
            path.display()
        );
    }
    let (shape, data) = read_u8_npy(path, "masks")?;
    let [m, h, w] = shape[..] else {
        bail!("{} has shape {shape:?}; masks must be uint8 [N, H, W] class ids", path.display());
    };
    if let Some(n) = n {
        if m != n {
            bail!(
                "{} holds {m} masks for {n} images; the two files must describe the same images in the same order",
                path.display()
            );
        }
    }
    Ok(Tensor::from_slice(&data).view([m as i64, h as i64, w as i64]))
}

/// Reads the class ids of a VOC mask PNG: the palette indices of an indexed PNG (not expanded to colours), or the
/// values of an 8-bit greyscale one.
pub fn read_png_ids(path: &Path) -> Result<Mask> {
    let f = fs::File::open(path).with_context(|| format!("could not open mask {}", path.display()))?;
    let bad = |e: png::DecodingError| anyhow::anyhow!("{}: not a readable PNG mask ({e})", path.display());
    let decoder = png::Decoder::new(std::io::BufReader::new(f));
    let mut reader = decoder.read_info().map_err(bad)?;
    // the header's size is checked before the frame's buffer is allocated (a decompression bomb)
    let (hw, hh) = (reader.info().width as u64, reader.info().height as u64);
    if hw * hh > MAX_PIXELS {
        bail!("{}: {hw}x{hh} is larger than the {MAX_PIXELS}-pixel limit", path.display());
    }
    let size = reader.output_buffer_size().with_context(|| format!("{}: the PNG is too large", path.display()))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(bad)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let depth = info.bit_depth as usize;
    let ok = matches!(info.color_type, png::ColorType::Indexed) && matches!(depth, 1 | 2 | 4 | 8)
        || matches!(info.color_type, png::ColorType::Grayscale) && depth == 8;
    if !ok {
        bail!(
            "{}: a {:?} PNG of {depth} bits; a mask must be a palette PNG (the palette index is the class, as VOC's \
             SegmentationClass) or 8-bit greyscale class ids",
            path.display(),
            info.color_type
        );
    }
    let mut ids = Vec::with_capacity(w * h);
    for y in 0..h {
        let row = &buf[y * info.line_size..(y + 1) * info.line_size];
        if depth == 8 {
            ids.extend_from_slice(&row[..w]);
        } else {
            let per = 8 / depth;
            let mask = (1u8 << depth) - 1;
            ids.extend((0..w).map(|x| (row[x / per] >> (8 - depth * (x % per + 1))) & mask));
        }
    }
    Ok(Mask { w, h, ids })
}

/// Where the masks of a split come from.
enum MaskSource {
    /// `[n, h, w]` row-major.
    Array { path: PathBuf, h: usize, w: usize, ids: Vec<u8> },
    /// One PNG per item.
    Files(Vec<PathBuf>),
}

/// Images with their masks.
pub struct MaskedData {
    /// The DATA argument.
    pub path: PathBuf,
    pub images: Arc<dyn Dataset>,
    masks: MaskSource,
    fingerprint: String,
}

impl MaskedData {
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn describe(&self) -> String {
        let m = match &self.masks {
            MaskSource::Array { path, .. } => format!("masks {}", path.display()),
            MaskSource::Files(_) => "masks SegmentationClass/*.png".into(),
        };
        format!("{}, {m}", self.images.describe())
    }

    /// The name of item `i`'s mask in messages.
    pub fn mask_name(&self, i: usize) -> String {
        match &self.masks {
            MaskSource::Array { path, .. } => format!("{}[{i}]", path.display()),
            MaskSource::Files(f) => f[i].display().to_string(),
        }
    }

    /// The mask of item `i`.
    pub fn mask(&self, i: usize) -> Result<Mask> {
        match &self.masks {
            MaskSource::Array { h, w, ids, .. } => {
                Ok(Mask { w: *w, h: *h, ids: ids[i * h * w..(i + 1) * h * w].to_vec() })
            }
            MaskSource::Files(f) if !f[i].exists() => bail!(
                "the mask {} is missing; every JPEGImages/ID.jpg of the split needs its SegmentationClass/ID.png",
                f[i].display()
            ),
            MaskSource::Files(f) => read_png_ids(&f[i]),
        }
    }

    /// Opens DATA: an images `.npy` (masks beside it unless `masks` is given) or a VOC-style folder (with the ids of
    /// `split_list`, else every image that has a mask).
    pub fn open(path: &Path, masks: Option<&Path>, split_list: Option<&Path>) -> Result<MaskedData> {
        if path.is_dir() {
            if masks.is_some() {
                bail!(LewelError::Usage(format!(
                    "{}: a VOC folder's masks are its SegmentationClass/ PNGs; --train-masks / --val-masks are for .npy images",
                    path.display()
                )));
            }
            return open_voc(path, split_list);
        }
        if split_list.is_some() {
            bail!(LewelError::Usage(format!(
                "{}: a split list selects ids of a VOC folder; for .npy images give the split's own file",
                path.display()
            )));
        }
        if !path.exists() {
            bail!(
                "DATA {} does not exist; give an images .npy (with X.masks.npy beside it) or a VOC folder",
                path.display()
            );
        }
        let images = crate::data::arrays::open_npy(path)?;
        if images.prepared().is_some() {
            bail!(
                "{}: float32 tensors; dense-probe needs uint8 images [N, H, W, 3] to resize them with their masks",
                path.display()
            );
        }
        let mp = masks.map(Path::to_path_buf).unwrap_or_else(|| masks_path(path));
        let (shape, ids) = if mp.exists() {
            read_u8_npy(&mp, "masks")?
        } else {
            bail!(
                "masks file {} not found (needed for the images {}); write uint8 [N, H, W] class ids there (255 \
                 ignored), or give the path with --train-masks / --val-masks",
                mp.display(),
                path.display()
            );
        };
        let [n, h, w] = shape[..] else {
            bail!("{} has shape {shape:?}; masks must be uint8 [N, H, W] class ids", mp.display());
        };
        if n != images.len() {
            bail!(
                "{} holds {n} masks for the {} images of {}; the two files must describe the same images in the same order",
                mp.display(),
                images.len(),
                path.display()
            );
        }
        let mut hasher = Sha256::new();
        hasher.update(images.fingerprint());
        hasher.update(format!("{n}x{h}x{w}"));
        hasher.update(&ids);
        let fingerprint = format!("masked:{n}:{}", hex16(&hasher.finalize()));
        Ok(MaskedData {
            path: path.to_path_buf(),
            images,
            masks: MaskSource::Array { path: mp, h, w, ids },
            fingerprint,
        })
    }
}

use crate::hex::short as hex16;

/// JPEG images of a VOC folder.
struct VocImages {
    root: PathBuf,
    files: Vec<PathBuf>,
}

impl Dataset for VocImages {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn label(&self, _: usize) -> Option<i64> {
        None
    }
    fn num_classes(&self) -> Option<usize> {
        None
    }
    fn name(&self, i: usize) -> String {
        self.files[i].display().to_string()
    }
    fn load(&self, i: usize) -> Result<RgbImage> {
        let mut bytes = Vec::new();
        fs::File::open(&self.files[i])
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .context("could not read the file")?;
        Ok(decode_rgb(&bytes, MAX_PIXELS)?)
    }
    fn describe(&self) -> String {
        format!("voc {} ({} images)", self.root.display(), self.files.len())
    }
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for f in &self.files {
            h.update(f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            h.update(b"\0");
            h.update(fs::metadata(f).map(|m| m.len()).unwrap_or(u64::MAX).to_le_bytes());
        }
        format!("voc:{}:{}", self.files.len(), hex16(&h.finalize()))
    }
}

fn open_voc(root: &Path, split_list: Option<&Path>) -> Result<MaskedData> {
    let (jd, md) = (root.join("JPEGImages"), root.join("SegmentationClass"));
    for d in [&jd, &md] {
        if !d.is_dir() {
            bail!(
                "{}: no {} folder; a VOC-style folder holds JPEGImages/ID.jpg and SegmentationClass/ID.png",
                root.display(),
                d.file_name().unwrap_or_default().to_string_lossy()
            );
        }
    }
    let ids: Vec<String> = match split_list {
        Some(list) => {
            let text = fs::read_to_string(list).with_context(|| {
                format!("split list {} could not be read; give a file of image ids, one per line", list.display())
            })?;
            let ids: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            if ids.is_empty() {
                bail!("split list {} holds no image ids", list.display());
            }
            ids
        }
        None => {
            let names: BTreeSet<String> = fs::read_dir(&md)
                .with_context(|| format!("could not list {}", md.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter_map(|n| n.strip_suffix(".png").map(String::from))
                .filter(|n| !n.starts_with('.'))
                .collect();
            if names.is_empty() {
                bail!("{}: no .png masks found", md.display());
            }
            names.into_iter().collect()
        }
    };
    let jpg = |id: &str| {
        let p = jd.join(format!("{id}.jpg"));
        if p.exists() {
            p
        } else {
            ["jpeg", "png"].iter().map(|e| jd.join(format!("{id}.{e}"))).find(|p| p.exists()).unwrap_or(p)
        }
    };
    let files: Vec<PathBuf> = ids.iter().map(|id| jpg(id)).collect();
    let masks: Vec<PathBuf> = ids.iter().map(|id| md.join(format!("{id}.png"))).collect();
    let images = VocImages { root: root.to_path_buf(), files };
    let mut hasher = Sha256::new();
    hasher.update(images.fingerprint());
    for m in &masks {
        hasher.update(fs::metadata(m).map(|x| x.len()).unwrap_or(u64::MAX).to_le_bytes());
    }
    let fingerprint = format!("voc-masked:{}:{}", ids.len(), hex16(&hasher.finalize()));
    Ok(MaskedData { path: root.to_path_buf(), images: Arc::new(images), masks: MaskSource::Files(masks), fingerprint })
}

/// A mask through the eval transform's geometry: resize the shorter side to `resize`, centre crop `crop`, nearest
/// neighbour at pixel centres (source `floor((x + 0.5) · W / W')`).
pub fn mask_eval_transform(m: &Mask, resize: u32, crop: u32) -> Vec<u8> {
    let (rw, rh) = ops::resize_shorter(m.w as u32, m.h as u32, resize);
    let (top, left) = ops::center_crop_offsets(rw, rh, crop);
    let c = crop as usize;
    let src = |o: usize, off: u32, out: u32, inp: usize| {
        (((o as f64 + off as f64 + 0.5) * inp as f64 / out as f64).floor() as usize).min(inp - 1)
    };
    let xs: Vec<usize> = (0..c).map(|x| src(x, left, rw, m.w)).collect();
    let mut out = Vec::with_capacity(c * c);
    for y in 0..c {
        let sy = src(y, top, rh, m.h);
        out.extend(xs.iter().map(|&sx| m.ids[sy * m.w + sx]));
    }
    out
}

/// The first id of `ids` that is neither `< classes` nor [`IGNORE`], with its index.
pub fn bad_id(ids: &[u8], classes: Option<usize>) -> Option<(usize, u8)> {
    let k = classes?;
    ids.iter().position(|&v| v != IGNORE && v as usize >= k).map(|i| (i, ids[i]))
}

/// The error of a class id out of range.
pub fn bad_id_error(name: &str, w: usize, at: (usize, u8), classes: usize) -> anyhow::Error {
    let (i, v) = at;
    LewelError::Usage(format!(
        "{name}: class id {v} at pixel (row {}, col {}) is not below --classes {classes} (ids are 0..{} and {IGNORE} \
         for ignored pixels); raise --classes or fix the mask",
        i / w.max(1),
        i % w.max(1),
        classes - 1
    ))
    .into()
}

/// The transformed images and masks of items `lo..hi` (in parallel); `None` for a bad pair (with its reason).
#[allow(clippy::type_complexity)]
pub fn transform_range(
    data: &MaskedData,
    recipe: &Recipe,
    lo: usize,
    hi: usize,
    classes: Option<usize>,
    strict: bool,
) -> Result<Vec<Result<(Vec<f32>, Vec<u8>), String>>> {
    let c = recipe.eval_crop as usize;
    (lo..hi)
        .into_par_iter()
        .map(|i| {
            let pair = || -> Result<std::result::Result<(Vec<f32>, Vec<u8>), String>> {
                let mask = match data.mask(i) {
                    Ok(m) => m,
                    Err(e) if !strict => return Ok(Err(format!("{e:#}"))),
                    Err(e) => return Err(e.context(format!("{} (--strict)", data.images.name(i)))),
                };
                if let Some(at) = bad_id(&mask.ids, classes) {
                    return Err(bad_id_error(&data.mask_name(i), mask.w, at, classes.unwrap_or(0)));
                }
                let img = match data.images.load(i) {
                    Ok(img) => img,
                    Err(e) if !strict => return Ok(Err(format!("{}: {e:#}", data.images.name(i)))),
                    Err(e) => return Err(e.context(format!("{} (--strict)", data.images.name(i)))),
                };
                if (img.width() as usize, img.height() as usize) != (mask.w, mask.h) {
                    let why = format!(
                        "the mask {} is {}x{} but its image {} is {}x{} (width x height); each mask must have its \
                         image's size",
                        data.mask_name(i),
                        mask.w,
                        mask.h,
                        data.images.name(i),
                        img.width(),
                        img.height()
                    );
                    if strict {
                        bail!("{why} (--strict)");
                    }
                    return Ok(Err(why));
                }
                let mut px = vec![0f32; 3 * c * c];
                crate::data::view::apply_eval(&img, recipe, &mut px);
                Ok(Ok((px, mask_eval_transform(&mask, recipe.eval_resize, recipe.eval_crop))))
            };
            pair()
        })
        .collect()
}

/// The largest class id of uint8 masks other than [`IGNORE`] (`None`: all ignored).
pub fn max_id(masks: &Tensor) -> Option<u8> {
    let keep = masks.ne(IGNORE as i64);
    let vals = masks.masked_select(&keep);
    (vals.numel() > 0).then(|| vals.max().to_kind(Kind::Int64).int64_value(&[]) as u8)
}

/// Checks cached masks against `classes`, naming the file and the mask.
pub fn check_mask_ids(masks: &Tensor, classes: usize, path: &Path) -> Result<()> {
    let (n, h, w) = masks.size3()?;
    let bad = masks.ne(IGNORE as i64).logical_and(&masks.to_kind(Kind::Int64).ge(classes as i64));
    if bad.any().int64_value(&[]) != 0 {
        let first = bad.flatten(0, -1).nonzero().int64_value(&[0, 0]);
        let (i, r) = (first / (h * w), first % (h * w));
        let v = masks.flatten(0, -1).int64_value(&[first]) as u8;
        let _ = n;
        return Err(bad_id_error(&format!("{}[{i}]", path.display()), w as usize, (r as usize, v), classes));
    }
    Ok(())
}

/// Moves a prepared image batch to the device as a tensor.
pub fn batch_tensor(px: &[f32], b: usize, crop: usize, device: Device) -> Tensor {
    Tensor::from_slice(px).view([b as i64, 3, crop as i64, crop as i64]).to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_follow_the_eval_geometry_by_nearest_neighbour() {
        // 4x2 (w x h) mask, resize the shorter side 2 -> 4 (8x4), centre crop 4: columns 2..6 of the enlarged mask.
        let m = Mask { w: 4, h: 2, ids: vec![0, 1, 2, 3, 4, 5, 6, 7] };
        let out = mask_eval_transform(&m, 4, 4);
        // enlarged column x comes from floor((x + 0.5) / 2): columns 2..6 -> 1, 1, 2, 2; rows 0..4 -> 0, 0, 1, 1
        assert_eq!(out, vec![1, 1, 2, 2, 1, 1, 2, 2, 5, 5, 6, 6, 5, 5, 6, 6]);
        // identity when the sizes agree
        let id = Mask { w: 3, h: 3, ids: (0..9).collect() };
        assert_eq!(mask_eval_transform(&id, 3, 3), id.ids);
    }

    fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) {
        let f = std::io::BufWriter::new(fs::File::create(path).unwrap());
        let mut e = png::Encoder::new(f, w, h);
        e.set_color(color);
        e.set_depth(depth);
        if color == png::ColorType::Indexed {
            e.set_palette(vec![7u8; 3 * 16]);
        }
        e.write_header().unwrap().write_image_data(data).unwrap();
    }

    #[test]
    fn png_masks_give_palette_indices_not_colours() {
        let d = std::env::temp_dir().join(format!("lewel-dense-png-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        // 4-bit palette, 3x2: rows packed two pixels a byte (row length rounds up to 2 bytes)
        let p4 = d.join("p4.png");
        write_png(&p4, 3, 2, png::ColorType::Indexed, png::BitDepth::Four, &[0x12, 0x30, 0xF0, 0x50]);
        assert_eq!(read_png_ids(&p4).unwrap(), Mask { w: 3, h: 2, ids: vec![1, 2, 3, 15, 0, 5] });
        // 8-bit palette and 8-bit greyscale: the bytes themselves
        let p8 = d.join("p8.png");
        write_png(&p8, 2, 1, png::ColorType::Indexed, png::BitDepth::Eight, &[9, 14]);
        assert_eq!(read_png_ids(&p8).unwrap().ids, vec![9, 14]);
        let g8 = d.join("g8.png");
        write_png(&g8, 2, 1, png::ColorType::Grayscale, png::BitDepth::Eight, &[0, 255]);
        assert_eq!(read_png_ids(&g8).unwrap().ids, vec![0, 255]);
        // RGB is refused, naming the file and what a mask must be
        let rgb = d.join("rgb.png");
        write_png(&rgb, 1, 1, png::ColorType::Rgb, png::BitDepth::Eight, &[1, 2, 3]);
        let e = read_png_ids(&rgb).unwrap_err().to_string();
        assert!(e.contains("rgb.png") && e.contains("palette PNG"), "{e}");
        fs::write(d.join("junk.png"), b"not a png").unwrap();
        assert!(read_png_ids(&d.join("junk.png")).unwrap_err().to_string().contains("not a readable PNG mask"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn out_of_range_ids_are_found_and_named() {
        assert_eq!(bad_id(&[0, 3, 255, 4, 9], Some(5)), Some((4, 9)));
        assert_eq!(bad_id(&[0, 3, 255, 4], Some(5)), None);
        assert_eq!(bad_id(&[77], None), None);
        let e = bad_id_error("m.png", 3, (4, 9), 5).to_string();
        assert!(
            e.contains("m.png") && e.contains("class id 9") && e.contains("row 1, col 1") && e.contains("--classes 5"),
            "{e}"
        );
        let t = Tensor::from_slice(&[0u8, 1, 255, 2, 0, 7]).view([2, 1, 3]);
        let e = check_mask_ids(&t, 3, Path::new("x.masks.npy")).unwrap_err().to_string();
        assert!(e.contains("x.masks.npy[1]") && e.contains("class id 7"), "{e}");
        assert!(check_mask_ids(&t, 8, Path::new("x")).is_ok());
        assert_eq!(max_id(&t), Some(7));
    }
}
