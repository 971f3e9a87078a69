//! The pictures: tiles (an input image, or an alignment map drawn over it) laid out in rows under a
//! header, rendered with [`crate::plot::Raster`].
//!
//! A map tile shows the image in grey under the map in viridis. The map is upsampled to the tile with
//! [`upsample_bilinear`] and its colour scale runs from the map's own minimum (dark violet, mostly
//! transparent) to its own maximum (yellow, mostly opaque): a nearly uniform map still shows its shape,
//! so the label carries the truth (the entropy H in nats, and H as a share of the uniform `ln(h'·w')`).
//! A small ring marks the peak position.

use image::{imageops, RgbImage};

use super::stats::upsample_bilinear;
use crate::plot::color::Colormap;
use crate::plot::{font, Canvas, HAlign, Raster, Rect, Rgb, Stroke, TextStyle};

/// The smallest side a tile is shown at: small inputs (32-px CIFAR crops) are enlarged by a whole
/// factor (nearest neighbour, so their pixels stay visible) until they reach it.
pub const MIN_TILE_PX: usize = 128;
/// The largest side a tile is shown at: larger inputs are shrunk (bilinear).
pub const MAX_TILE_PX: usize = 256;

/// Opacity of the colour at the low end of a map's scale; it rises linearly to `ALPHA_LOW + ALPHA_SPAN`
/// at the top, so the image shows through where the map puts little weight.
const ALPHA_LOW: f64 = 0.3;
const ALPHA_SPAN: f64 = 0.5;

const BACKGROUND: Rgb = Rgb::hex(0xf5f5f5);
const INK: Rgb = Rgb::hex(0x202020);
const MUTED: Rgb = Rgb::hex(0x606060);
/// The header wraps at the rows' width, but never narrower than this.
const MIN_HEADER_W: f64 = 360.0;

/// The size `(h, w)` a `h × w` input is shown at (see [`MIN_TILE_PX`], [`MAX_TILE_PX`]).
pub fn display_size(h: usize, w: usize) -> (usize, usize) {
    let side = h.max(w).max(1);
    if side > MAX_TILE_PX {
        let f = MAX_TILE_PX as f64 / side as f64;
        (((h as f64 * f).round() as usize).max(1), ((w as f64 * f).round() as usize).max(1))
    } else {
        let zoom = MIN_TILE_PX.div_ceil(h.min(w).max(1)).max(1);
        let zoom = zoom.min((MAX_TILE_PX / side).max(1));
        (h * zoom, w * zoom)
    }
}

/// A normalised CHW image (`[3, h, w]` row-major) back to 8-bit RGB with the recipe's `mean`/`std`,
/// at its display size.
pub fn unnormalise(chw: &[f32], h: usize, w: usize, mean: [f64; 3], std: [f64; 3]) -> RgbImage {
    assert_eq!(chw.len(), 3 * h * w);
    let px = |c: usize, y: usize, x: usize| {
        let v = chw[c * h * w + y * w + x] as f64 * std[c] + mean[c];
        (v * 255.0).round().clamp(0.0, 255.0) as u8
    };
    let img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let (x, y) = (x as usize, y as usize);
        image::Rgb([px(0, y, x), px(1, y, x), px(2, y, x)])
    });
    let (dh, dw) = display_size(h, w);
    if (dh, dw) == (h, w) {
        img
    } else if dh % h == 0 && dw % w == 0 {
        imageops::resize(&img, dw as u32, dh as u32, imageops::FilterType::Nearest)
    } else {
        imageops::resize(&img, dw as u32, dh as u32, imageops::FilterType::Triangle)
    }
}

/// The overlay colour of a pixel with luma `grey` where the map's scale position is `t` in [0, 1].
pub fn overlay_color(grey: u8, t: f64) -> Rgb {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    Rgb(grey, grey, grey).mix(Colormap::Viridis.at(t), ALPHA_LOW + ALPHA_SPAN * t)
}

/// `map` (`mh × mw`, row-major) drawn over `base` (an image at display size).
pub fn overlay(base: &RgbImage, map: &[f32], mh: usize, mw: usize) -> RgbImage {
    let (w, h) = (base.width() as usize, base.height() as usize);
    let up = upsample_bilinear(map, mh, mw, h, w);
    let lo = map.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    let hi = map.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let range = hi - lo;
    // A map flat to float precision has no shape to show: draw it at mid-scale.
    let flat = range.is_nan() || range <= 1e-9 * hi.abs().max(1e-30);
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let p = base.get_pixel(x, y).0;
        let grey = (0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64).round() as u8;
        let t = if flat { 0.5 } else { (up[y as usize * w + x as usize] as f64 - lo) / range };
        let c = overlay_color(grey, t);
        image::Rgb([c.0, c.1, c.2])
    })
}

/// One tile of a row.
#[derive(Debug, Clone)]
pub struct Tile {
    pub image: RgbImage,
    /// Label variants, most detailed first. Input tiles get the first variant that fits under them;
    /// map tiles (those with a `peak`) all get the same variant, the most detailed that fits under
    /// every one of them, so the labels of a sheet read alike.
    pub labels: Vec<String>,
    /// The peak marker, as fractions of the tile's width and height (`(col + 0.5)/w'`, `(row + 0.5)/h'`).
    pub peak: Option<(f64, f64)>,
}

/// One row: blocks of tiles (one block per view), with wider gaps between blocks.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub blocks: Vec<Vec<Tile>>,
}

/// A whole picture.
#[derive(Debug, Clone, Default)]
pub struct Sheet {
    /// Header lines: the first bold-ish (larger), the others smaller.
    pub header: Vec<String>,
    pub rows: Vec<Row>,
}

struct Layout {
    margin: f64,
    gap: f64,
    block_gap: f64,
    label_size: f64,
    label_band: f64,
    title_size: f64,
    note_size: f64,
}

impl Layout {
    fn for_tile(tile_w: f64) -> Layout {
        let label_size = (tile_w / 15.0).clamp(10.5, 13.0);
        Layout {
            margin: 12.0,
            gap: 4.0,
            block_gap: 20.0,
            label_size,
            label_band: (label_size * 1.6).round(),
            title_size: 16.0,
            note_size: 12.5,
        }
    }
}

/// Label variant `level` (or the last one), cut to fit in `width` pixels if it does not.
fn fit_label(labels: &[String], level: usize, width: f64, size: f64) -> String {
    let mut s: String = labels.get(level).or(labels.last()).cloned().unwrap_or_default();
    while !s.is_empty() && font::text_width(&s, size) > width {
        s.pop();
    }
    s
}

/// The first variant of `labels` that fits in `width` pixels (the last one if none does).
fn first_fit(labels: &[String], width: f64, size: f64) -> usize {
    labels.iter().position(|l| font::text_width(l, size) <= width).unwrap_or(labels.len().saturating_sub(1))
}

fn row_size(row: &Row, l: &Layout) -> (f64, f64) {
    let mut w = 0.0;
    let mut h: f64 = 0.0;
    for (b, block) in row.blocks.iter().enumerate() {
        if b > 0 {
            w += l.block_gap;
        }
        for (i, t) in block.iter().enumerate() {
            if i > 0 {
                w += l.gap;
            }
            w += t.image.width() as f64;
            h = h.max(t.image.height() as f64);
        }
    }
    (w, h + l.label_band)
}

/// A small circle of `n` points.
fn ring(cx: f64, cy: f64, r: f64) -> Vec<(f64, f64)> {
    (0..=24).map(|i| i as f64 / 24.0 * std::f64::consts::TAU).map(|a| (cx + r * a.cos(), cy + r * a.sin())).collect()
}

/// `text` broken at spaces into lines of at most `width` pixels (a single longer word stays whole).
pub fn wrap(text: &str, width: f64, size: f64) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let candidate = if cur.is_empty() { word.to_string() } else { format!("{cur} {word}") };
        if !cur.is_empty() && font::text_width(&candidate, size) > width {
            lines.push(std::mem::replace(&mut cur, word.to_string()));
        } else {
            cur = candidate;
        }
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Draws the sheet: header (wrapped to the width of the rows), then the rows, each tile with its label
/// underneath.
pub fn render(sheet: &Sheet) -> Raster {
    let tile_w =
        sheet.rows.iter().flat_map(|r| r.blocks.iter().flatten()).map(|t| t.image.width()).max().unwrap_or(128);
    let l = Layout::for_tile(tile_w as f64);
    let sizes: Vec<(f64, f64)> = sheet.rows.iter().map(|r| row_size(r, &l)).collect();
    let content_w = sizes.iter().map(|s| s.0).fold(MIN_HEADER_W, f64::max);
    // (text, size, colour) of each header line after wrapping.
    let mut header: Vec<(String, f64, Rgb)> = Vec::new();
    for (i, line) in sheet.header.iter().enumerate() {
        let (size, color) = if i == 0 { (l.title_size, INK) } else { (l.note_size, MUTED) };
        header.extend(wrap(line, content_w, size).into_iter().map(|t| (t, size, color)));
    }
    let header_h =
        header.iter().map(|(_, size, _)| size * 1.5).sum::<f64>() + if header.is_empty() { 0.0 } else { 8.0 };
    let header_w = header.iter().map(|(t, size, _)| font::text_width(t, *size)).fold(0.0, f64::max);
    let w = (content_w.max(header_w) + 2.0 * l.margin).ceil();
    let h = (l.margin + header_h + sizes.iter().map(|s| s.1 + l.gap * 2.0).sum::<f64>() + l.margin).ceil();
    let mut r = Raster::new(w as u32, h as u32, BACKGROUND);
    let full = Rect::new(0.0, 0.0, w, h);

    // One label level for all map tiles: the most detailed that fits under each of them.
    let map_level = sheet
        .rows
        .iter()
        .flat_map(|r| r.blocks.iter().flatten())
        .filter(|t| t.peak.is_some())
        .map(|t| first_fit(&t.labels, t.image.width() as f64 - 2.0, l.label_size))
        .max()
        .unwrap_or(0);
    let mut y = l.margin;
    for (line, size, color) in &header {
        r.text(
            (l.margin, y + font::ascent(*size)),
            line,
            &TextStyle { size: *size, color: *color, align: HAlign::Left },
        );
        y += size * 1.5;
    }
    y = l.margin + header_h;
    for (row, (_, rh)) in sheet.rows.iter().zip(&sizes) {
        let mut x = l.margin;
        for (b, block) in row.blocks.iter().enumerate() {
            if b > 0 {
                x += l.block_gap - l.gap;
                // A thin rule between the views.
                let rx = x - (l.block_gap - l.gap) / 2.0;
                r.polyline(&[(rx, y), (rx, y + rh - l.label_band)], &Stroke::solid(Rgb::hex(0xc0c0c0), 1.0), full);
            }
            for t in block {
                let (tw, th) = (t.image.width() as f64, t.image.height() as f64);
                r.draw_image(x.round() as i64, y.round() as i64, &t.image);
                if let Some((fx, fy)) = t.peak {
                    let (cx, cy) = (x.round() + fx * tw, y.round() + fy * th);
                    let rad = (tw / 40.0).max(3.5);
                    let clip = Rect::new(x.round(), y.round(), tw, th);
                    r.polyline(
                        &ring(cx, cy, rad),
                        &Stroke { color: Rgb::BLACK, width: 3.0, opacity: 0.55, dash: None },
                        clip,
                    );
                    r.polyline(&ring(cx, cy, rad), &Stroke::solid(Rgb::WHITE, 1.4), clip);
                }
                let level = if t.peak.is_some() { map_level } else { first_fit(&t.labels, tw - 2.0, l.label_size) };
                let label = fit_label(&t.labels, level, tw - 2.0, l.label_size);
                r.text(
                    (x + tw / 2.0, y + th + l.label_size * 1.15),
                    &label,
                    &TextStyle { size: l.label_size, color: INK, align: HAlign::Center },
                );
                x += tw + l.gap;
            }
        }
        y += rh + l.gap * 2.0;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_scale_endpoints() {
        // Low end: mostly the image (grey), tinted with viridis' dark violet; high end: mostly yellow.
        let v0 = Colormap::Viridis.at(0.0);
        let v1 = Colormap::Viridis.at(1.0);
        assert_eq!(overlay_color(200, 0.0), Rgb(200, 200, 200).mix(v0, ALPHA_LOW));
        assert_eq!(overlay_color(200, 1.0), Rgb(200, 200, 200).mix(v1, ALPHA_LOW + ALPHA_SPAN));
        assert_eq!(overlay_color(0, 7.0), overlay_color(0, 1.0), "clamped");
        assert_eq!(overlay_color(0, f64::NAN), overlay_color(0, 0.0));
        // The top is brighter and yellower than the bottom over the same grey.
        let (lo, hi) = (overlay_color(100, 0.0), overlay_color(100, 1.0));
        assert!(hi.0 > lo.0 && hi.1 > lo.1 && hi.2 < lo.2, "{lo:?} {hi:?}");
    }

    #[test]
    fn display_sizes() {
        assert_eq!(display_size(32, 32), (128, 128));
        assert_eq!(display_size(96, 96), (192, 192));
        assert_eq!(display_size(224, 224), (224, 224));
        assert_eq!(display_size(512, 512), (256, 256));
        // Non-square: the zoom stops where the long side would pass the maximum.
        assert_eq!(display_size(28, 56), (112, 224));
    }

    #[test]
    fn unnormalise_inverts_the_normalisation_and_zooms() {
        let (mean, std) = ([0.5, 0.4, 0.3], [0.2, 0.25, 0.5]);
        // One 2x2 image: pixel values 0, 1/3, 2/3, 1 in every channel.
        let vals = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0];
        let chw: Vec<f32> = (0..3).flat_map(|c| vals.iter().map(move |v| ((v - mean[c]) / std[c]) as f32)).collect();
        let img = unnormalise(&chw, 2, 2, mean, std);
        assert_eq!((img.width(), img.height()), (128, 128));
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(127, 0).0, [85, 85, 85]);
        assert_eq!(img.get_pixel(127, 127).0, [255, 255, 255]);
    }

    #[test]
    fn overlay_follows_the_map() {
        let base = RgbImage::from_pixel(128, 128, image::Rgb([128, 128, 128]));
        // Mass in the top-left cell of a 2x2 map: the top left is yellow, the bottom right violet.
        let img = overlay(&base, &[0.7, 0.1, 0.1, 0.1], 2, 2);
        assert_eq!(img.get_pixel(0, 0).0, {
            let c = overlay_color(128, 1.0);
            [c.0, c.1, c.2]
        });
        assert_eq!(img.get_pixel(127, 127).0, {
            let c = overlay_color(128, 0.0);
            [c.0, c.1, c.2]
        });
        // A flat map is drawn at mid-scale everywhere.
        let flat = overlay(&base, &[0.25; 4], 2, 2);
        assert!(flat.pixels().all(|p| p == flat.get_pixel(0, 0)));
    }

    #[test]
    fn header_lines_wrap_at_spaces() {
        let text = "one two three four five six seven eight nine ten";
        let lines = wrap(text, font::text_width("one two three", 12.0) + 0.5, 12.0);
        assert_eq!(lines[0], "one two three");
        assert_eq!(lines.join(" "), text);
        assert_eq!(wrap("unbreakable", 1.0, 12.0), vec!["unbreakable"]);
        assert_eq!(wrap("", 100.0, 12.0), vec![""]);
    }

    #[test]
    fn sheet_renders_rows_labels_and_header() {
        let tile = |v: u8| Tile {
            image: RgbImage::from_pixel(128, 128, image::Rgb([v, v, v])),
            labels: vec!["a very long label that cannot fit under one tile at all".into(), "short".into()],
            peak: Some((0.5, 0.5)),
        };
        let row = Row { blocks: vec![vec![tile(10), tile(20)], vec![tile(30)]] };
        let sheet = Sheet { header: vec!["title".into(), "note".into()], rows: vec![row.clone(), row] };
        let r = render(&sheet);
        let (w, h) = r.size();
        assert!(w as f64 >= 3.0 * 128.0 + 20.0 + 24.0, "{w}");
        assert!(h > 2 * 128 + 40, "{h}");
        let labels = &sheet.rows[0].blocks[0][0].labels;
        assert_eq!(first_fit(labels, 126.0, 12.0), 1);
        assert_eq!(fit_label(labels, 1, 126.0, 12.0), "short");
        assert_eq!(fit_label(labels, 7, 126.0, 12.0), "short");
        assert_eq!(fit_label(labels, 0, 30.0, 12.0), "a ve");
        assert_eq!(r.pixel(0, 0), BACKGROUND);
    }
}
