//! Decoding image files (JPEG, PNG, WebP) into 8-bit RGB, the way torchvision's loader
//! (`PIL.Image.open(f).convert('RGB')`) sees them, with a cap on the pixel count.
//!
//! - **Pixels**: JPEGs decode with zune-jpeg, PIL uses libjpeg-turbo; on the colour JPEG fixtures the two
//!   differ by at most 5 levels (mean 0.35, chroma upsampling), on grey and CMYK ones by at most 1;
//!   PNG and WebP decode identically (`lib/tests/data_readers.rs`).
//! - **Formats** are recognised by content, not by extension (a PNG named `.jpg` decodes; a text file
//!   named `.jpg` is an error naming the file).
//! - **Grey** images (JPEG, PNG `L`/`LA`) become three equal channels.
//! - **CMYK/YCCK JPEGs** are converted to RGB by the decoder (zune-jpeg), including Adobe's inverted CMYK.
//! - **16-bit PNGs** are reduced to 8 bits by rounding (v·255/65535). NOTE(ref): PIL opens a 16-bit
//!   RGB PNG as 8-bit (by truncation) and a 16-bit grey PNG as mode `I`, whose `convert('RGB')`
//!   clips values above 255 to white; we scale instead, so such files are not all white here.
//! - **Palette PNGs** are expanded through their palette (like PIL).
//! - **Alpha** is dropped: the stored colour of each pixel is kept whatever its opacity, exactly what
//!   PIL's `convert('RGB')` does (no compositing onto a background).
//! - **EXIF orientation** (JPEG, PNG `eXIf`, WebP) is applied, so the pixels are upright. NOTE(ref):
//!   PIL's `open().convert('RGB')` ignores the orientation tag (torchvision's ImageFolder does not call
//!   `ImageOps.exif_transpose`); ImageNet has almost no such files, and upright images are what a
//!   person sees in a viewer.
//! - **Decompression bombs**: the header's width x height is checked before any pixel is decoded;
//!   above [`MAX_PIXELS`] (twice PIL's `MAX_IMAGE_PIXELS`, where PIL raises `DecompressionBombError`) the file is refused.
//! - **Truncated files** (an interrupted download or copy) are refused, [`DecodeError::Truncated`], as PIL refuses
//!   them ("image file is truncated"), where the decoders alone would fill the missing part with grey (zune-jpeg)
//!   without a word. A structural walk before the pixels are decoded ([`check_complete`]): a JPEG must reach its
//!   end-of-image marker (FFD9) through its segments and the entropy-coded data of every scan; a PNG's chunks must
//!   be whole up to `IEND`; a WebP must be as long as its RIFF header says. Bytes after the end (after a JPEG's
//!   EOI, a PNG's `IEND`, a WebP's RIFF size: trailing garbage some tools append) are accepted and ignored, as PIL
//!   accepts them. NOTE(ref): a JPEG whose scan stops early but still ends with an EOI marker is not detected
//!   (libjpeg only warns about it too: PIL decodes it).

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// The largest image decoded: 178,956,970 pixels, where PIL raises `DecompressionBombError`.
pub const MAX_PIXELS: u64 = 178_956_970;

/// Why a file could not be decoded (the message names no file; the caller adds it).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the file is empty (0 bytes)")]
    EmptyFile,
    #[error("not an image (no JPEG, PNG or WebP signature)")]
    UnknownFormat,
    #[error("{width}x{height} pixels is more than the limit of {limit} (a decompression bomb?)")]
    TooLarge { width: u32, height: u32, limit: u64 },
    #[error("the image has no pixels ({width}x{height})")]
    Empty { width: u32, height: u32 },
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
    /// The file stops before the end its format marks (see [`check_complete`]).
    #[error("truncated {format} file: {why} (an interrupted download or copy?); fetch the file again")]
    Truncated { format: &'static str, why: String },
}

thread_local! {
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Hands a decoded image's memory back for this thread's next decode (optional: it saves the page
/// faults of a fresh half-megabyte buffer per image).
pub fn recycle(img: RgbImage) {
    let buf = img.into_raw();
    if buf.capacity() <= 64 << 20 {
        SPARE.with(|s| s.set(buf));
    }
}

/// A decoder's error, on one line (some end theirs with a newline).
fn corrupt(e: impl std::fmt::Display) -> DecodeError {
    DecodeError::Corrupt(e.to_string().trim().replace('\n', " "))
}

/// Decodes `bytes` into upright 8-bit RGB, refusing images of more than `max_pixels` pixels.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::EmptyFile);
    }
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(corrupt)?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png | image::ImageFormat::WebP) => {}
        _ => return Err(DecodeError::UnknownFormat),
    }
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    if width as u64 * height as u64 > max_pixels {
        return Err(DecodeError::TooLarge { width, height, limit: max_pixels });
    }
    if width == 0 || height == 0 {
        return Err(DecodeError::Empty { width, height });
    }
    check_complete(bytes)?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    if decoder.color_type() == image::ColorType::Rgb8 && orientation == image::metadata::Orientation::NoTransforms {
        // The common case, decoded straight into a buffer this thread used before.
        let mut buf = SPARE.with(|s| s.take());
        buf.clear();
        buf.resize(decoder.total_bytes() as usize, 0);
        decoder.read_image(&mut buf).map_err(corrupt)?;
        return Ok(RgbImage::from_raw(width, height, buf).expect("the decoder filled width x height x 3 bytes"));
    }
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// Checks that `bytes` (a JPEG, PNG or WebP, recognised by its signature; anything else passes) reach the end their
/// format marks, without decoding a pixel: [`DecodeError::Truncated`] otherwise. Bytes after that end are accepted.
pub fn check_complete(bytes: &[u8]) -> Result<(), DecodeError> {
    let cut = |format: &'static str, why: String| Err(DecodeError::Truncated { format, why });
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return match jpeg_end(bytes) {
            Some(_) => Ok(()),
            None => cut("JPEG", format!("its {} bytes end before the end-of-image marker (FFD9)", bytes.len())),
        };
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        let mut i = 8usize;
        while i < bytes.len() {
            if i + 8 > bytes.len() {
                return cut("PNG", format!("a chunk header at byte {i} is cut off at byte {}", bytes.len()));
            }
            let len = u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize;
            let kind = String::from_utf8_lossy(&bytes[i + 4..i + 8]).into_owned();
            let end = i.saturating_add(12).saturating_add(len);
            if end > bytes.len() {
                return cut(
                    "PNG",
                    format!("its {kind} chunk at byte {i} needs {} bytes, the file has {}", end, bytes.len()),
                );
            }
            if kind == "IEND" {
                return Ok(());
            }
            i = end;
        }
        return cut("PNG", format!("its {} bytes end before the IEND chunk", bytes.len()));
    }
    if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        let size = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as u64;
        if bytes.len() as u64 - 8 < size {
            return cut("WebP", format!("its RIFF header announces {} bytes, the file has {}", size + 8, bytes.len()));
        }
    }
    Ok(())
}

/// The offset just past a JPEG's end-of-image marker, walking its segments (by their lengths) and the
/// entropy-coded data of each scan (up to the next marker that is not a stuffed 0xFF00 or a restart marker);
/// None when the bytes end first.
fn jpeg_end(b: &[u8]) -> Option<usize> {
    let mut i = 2usize;
    loop {
        // the next marker: 0xFF (any number of fill bytes), then its code; stray bytes between segments skipped
        i += b.get(i..)?.iter().position(|&x| x == 0xFF)?;
        while *b.get(i)? == 0xFF {
            i += 1;
        }
        let code = b[i];
        i += 1;
        match code {
            0xD9 => return Some(i),
            // markers without a length
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let len = u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize;
        if i + len > b.len() {
            return None;
        }
        i += len.max(2);
        if code == 0xDA {
            // a scan's entropy-coded data: 0xFF is followed by 0x00 (a stuffed byte), a restart marker, fill
            // bytes, or the next marker
            loop {
                i += b.get(i..)?.iter().position(|&x| x == 0xFF)?;
                match *b.get(i + 1)? {
                    0x00 | 0xD0..=0xD7 => i += 2,
                    0xFF => i += 1,
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: DynamicImage) -> Vec<u8> {
        let mut v = Vec::new();
        img.write_to(&mut Cursor::new(&mut v), image::ImageFormat::Png).unwrap();
        v
    }

    #[test]
    fn grey_alpha_and_16_bit_become_rgb8() {
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(3, 2, |x, _| image::Luma([x as u8 * 100])));
        let rgb = decode_rgb(&png(grey), MAX_PIXELS).unwrap();
        assert_eq!(rgb.get_pixel(2, 1).0, [200, 200, 200]);
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(2, 2, image::Rgba([10, 20, 30, 0])));
        assert_eq!(decode_rgb(&png(rgba), MAX_PIXELS).unwrap().get_pixel(0, 0).0, [10, 20, 30]);
        let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(2, 2, image::Rgb([65535u16, 32896, 0])));
        assert_eq!(decode_rgb(&png(deep), MAX_PIXELS).unwrap().get_pixel(1, 1).0, [255, 128, 0]);
    }

    #[test]
    fn bad_input_is_refused_without_decoding() {
        assert!(matches!(decode_rgb(b"hello, I am text", MAX_PIXELS), Err(DecodeError::UnknownFormat)));
        let big = png(DynamicImage::ImageRgb8(RgbImage::new(20, 10)));
        assert!(matches!(decode_rgb(&big, 199), Err(DecodeError::TooLarge { width: 20, height: 10, .. })));
        assert!(decode_rgb(&big[..big.len() / 2], MAX_PIXELS).is_err());
    }
}
