//! `--preview FILE.png`: a few validation images, their ground-truth masks and each protocol's predicted masks,
//! in the VOC colours, with a legend of the classes; drawn with [`crate::viz::sheet`].

use std::path::Path;

use anyhow::Result;
use image::{imageops, RgbImage};

use super::metrics::IGNORE;
use crate::viz::sheet::{display_size, render, Row, Sheet, Tile};

/// Validation images shown.
pub const PREVIEW_IMAGES: usize = 6;

/// The VOC palette colour of class `id` (the `bitget` construction of the VOC devkit); 255 (ignored) is VOC's
/// cream boundary colour.
pub fn voc_color(id: u8) -> [u8; 3] {
    if id == IGNORE {
        return [224, 224, 192];
    }
    let (mut r, mut g, mut b) = (0u8, 0u8, 0u8);
    let mut c = id;
    for j in 0..8 {
        r |= ((c) & 1) << (7 - j);
        g |= ((c >> 1) & 1) << (7 - j);
        b |= ((c >> 2) & 1) << (7 - j);
        c >>= 3;
    }
    [r, g, b]
}

/// A mask (`h x w` ids) in the VOC colours, at its display size (nearest neighbour).
pub fn color_mask(ids: &[u8], h: usize, w: usize) -> RgbImage {
    let img = RgbImage::from_fn(w as u32, h as u32, |x, y| image::Rgb(voc_color(ids[y as usize * w + x as usize])));
    let (dh, dw) = display_size(h, w);
    imageops::resize(&img, dw as u32, dh as u32, imageops::FilterType::Nearest)
}

/// One shown image: the picture (when the input has images), the truth, and the predictions by protocol name.
pub struct PreviewItem {
    pub name: String,
    pub image: Option<RgbImage>,
    pub truth: Vec<u8>,
    pub predictions: Vec<(String, Vec<u8>)>,
}

/// Draws the sheet and writes it atomically.
pub fn write(
    path: &Path,
    header: Vec<String>,
    items: &[PreviewItem],
    h: usize,
    w: usize,
    class_names: &[String],
) -> Result<()> {
    let tile = |image: RgbImage, label: String| Tile { image, labels: vec![label], peak: None };
    let mut rows = Vec::new();
    for it in items {
        let mut first = Vec::new();
        if let Some(img) = &it.image {
            first.push(tile(img.clone(), it.name.clone()));
        }
        first.push(tile(color_mask(&it.truth, h, w), "truth".into()));
        let preds = it.predictions.iter().map(|(p, ids)| tile(color_mask(ids, h, w), p.clone())).collect();
        rows.push(Row { blocks: vec![first, preds] });
    }
    // The legend: one swatch per class, in rows of 8.
    let swatch = |id: u8| RgbImage::from_pixel(96, 20, image::Rgb(voc_color(id)));
    let legend: Vec<Tile> =
        class_names.iter().enumerate().map(|(i, n)| tile(swatch(i as u8), format!("{i} {n}"))).collect();
    for chunk in legend.chunks(8) {
        rows.push(Row { blocks: vec![chunk.to_vec()] });
    }
    render(&Sheet { header, rows }).write_png(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voc_palette_first_colours() {
        assert_eq!(voc_color(0), [0, 0, 0]);
        assert_eq!(voc_color(1), [128, 0, 0]);
        assert_eq!(voc_color(2), [0, 128, 0]);
        assert_eq!(voc_color(3), [128, 128, 0]);
        assert_eq!(voc_color(15), [192, 128, 128]);
        assert_eq!(voc_color(255), [224, 224, 192]);
    }
}
