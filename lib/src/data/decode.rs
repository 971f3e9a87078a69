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
