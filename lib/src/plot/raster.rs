//! The PNG backend: an RGB pixel buffer with anti-aliased lines, discs and text.
//!
//! Lines are drawn by coverage: every pixel gets `clamp(w/2 + 0.5 − d, 0, 1)`, `d` its centre's
//! distance to the nearest segment. A polyline's coverage is collected in a mask first (maximum over
//! its segments) and composited once, so a translucent line stays even where segments overlap.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};
use image::ImageEncoder;

use super::canvas::{Canvas, HAlign, Rect, Stroke, TextStyle};
use super::color::Rgb;
use super::font;

/// An RGB image being drawn on.
pub struct Raster {
    w: u32,
    h: u32,
    px: Vec<u8>,
    /// Coverage scratch for polylines, all zero between uses.
    mask: Vec<f32>,
}

impl Raster {
    /// A `w × h` image filled with `background`.
    pub fn new(w: u32, h: u32, background: Rgb) -> Raster {
        let n = w as usize * h as usize;
        let mut px = Vec::with_capacity(n * 3);
        for _ in 0..n {
            px.extend_from_slice(&[background.0, background.1, background.2]);
        }
        Raster { w, h, px, mask: Vec::new() }
    }

    /// The colour at `(x, y)` (panics outside the image).
    pub fn pixel(&self, x: u32, y: u32) -> Rgb {
        let i = (y as usize * self.w as usize + x as usize) * 3;
        Rgb(self.px[i], self.px[i + 1], self.px[i + 2])
    }

    /// Sets one pixel; outside the image it does nothing.
    pub fn put(&mut self, x: i64, y: i64, c: Rgb) {
        self.blend(x, y, c, 1.0);
    }

    /// Blends `c` over one pixel with opacity `a` in [0, 1]; outside the image it does nothing.
    pub fn blend(&mut self, x: i64, y: i64, c: Rgb, a: f64) {
        if x < 0 || y < 0 || x >= self.w as i64 || y >= self.h as i64 || a <= 0.0 {
            return;
        }
        let a = a.min(1.0);
        let i = (y as usize * self.w as usize + x as usize) * 3;
        for (k, v) in [c.0, c.1, c.2].into_iter().enumerate() {
            let old = self.px[i + k] as f64;
            self.px[i + k] = (old + (v as f64 - old) * a).round() as u8;
        }
    }

    /// Copies `img` with its top-left corner at `(x, y)`; what falls outside is cut off.
    pub fn draw_image(&mut self, x: i64, y: i64, img: &image::RgbImage) {
        for (ix, iy, p) in img.enumerate_pixels() {
            self.put(x + ix as i64, y + iy as i64, Rgb(p.0[0], p.0[1], p.0[2]));
        }
    }

    /// The raw RGB bytes, row by row.
    pub fn as_rgb(&self) -> &[u8] {
        &self.px
    }

    /// The picture as an `image` buffer.
    pub fn to_image(&self) -> image::RgbImage {
        image::RgbImage::from_raw(self.w, self.h, self.px.clone()).expect("buffer size matches")
    }

    /// Encodes the picture as PNG into `w`.
    pub fn encode_png(&self, w: impl Write) -> io::Result<()> {
        image::codecs::png::PngEncoder::new(w)
            .write_image(&self.px, self.w, self.h, image::ExtendedColorType::Rgb8)
            .map_err(io::Error::other)
    }

    /// Writes the picture as a PNG file, atomically (see [`crate::fsio::write_atomic`]).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        crate::fsio::write_atomic(path, |w| self.encode_png(w)).with_context(|| "PNG encoding failed".to_string())
    }

    /// Pixel index range `[lo, hi)` along one axis for a span `[a, b]`, clamped to `[clip_lo, clip_hi]`.
    fn span(a: f64, b: f64, clip_lo: f64, clip_hi: f64, n: u32) -> (i64, i64) {
        let lo = a.max(clip_lo).floor().max(0.0) as i64;
        let hi = (b.min(clip_hi).ceil() as i64).min(n as i64);
        (lo, hi)
    }

    /// Adds one segment's coverage to the mask; returns the touched pixel box.
    fn cover_segment(&mut self, a: (f64, f64), b: (f64, f64), width: f64, clip: Rect) -> Option<[i64; 4]> {
        let hw = (width / 2.0).max(0.5);
        let gain = width.min(1.0);
        let r = hw + 1.0;
        let (x0, x1) = Self::span(a.0.min(b.0) - r, a.0.max(b.0) + r, clip.x, clip.right(), self.w);
        let (y0, y1) = Self::span(a.1.min(b.1) - r, a.1.max(b.1) + r, clip.y, clip.bottom(), self.h);
        if x0 >= x1 || y0 >= y1 {
            return None;
        }
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        for y in y0..y1 {
            let py = y as f64 + 0.5;
            for x in x0..x1 {
                let px = x as f64 + 0.5;
                let t = if len2 > 0.0 { (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
                let (cx, cy) = (a.0 + t * dx - px, a.1 + t * dy - py);
                let cov = ((hw + 0.5 - (cx * cx + cy * cy).sqrt()).clamp(0.0, 1.0) * gain) as f32;
                let m = &mut self.mask[y as usize * self.w as usize + x as usize];
                if cov > *m {
                    *m = cov;
                }
            }
        }
        Some([x0, y0, x1, y1])
    }

    /// Composites the mask inside `bb` with colour `c` and opacity `a`, clearing it.
    fn flush_mask(&mut self, bb: [i64; 4], c: Rgb, a: f64) {
        for y in bb[1]..bb[3] {
            for x in bb[0]..bb[2] {
                let i = y as usize * self.w as usize + x as usize;
                let m = self.mask[i];
                if m > 0.0 {
                    self.mask[i] = 0.0;
                    self.blend(x, y, c, a * m as f64);
                }
            }
        }
    }
}

/// Splits a polyline into its dashes: `on` pixels drawn, `off` pixels skipped, along its length.
pub fn dash_pieces(points: &[(f64, f64)], on: f64, off: f64) -> Vec<Vec<(f64, f64)>> {
    let mut pieces = Vec::new();
    if points.len() < 2 || on <= 0.0 {
        return pieces;
    }
    let period = on + off.max(0.0);
    let mut phase = 0.0; // distance into the current period
    let mut cur: Vec<(f64, f64)> = vec![points[0]];
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        let mut done = 0.0;
        while done < len {
            let drawing = phase < on;
            let until = if drawing { on - phase } else { period - phase };
            let step = until.min(len - done);
            done += step;
            phase += step;
            let t = done / len;
            let p = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            if drawing {
                cur.push(p);
            }
            if drawing && phase >= on - 1e-9 {
                pieces.push(std::mem::take(&mut cur));
            }
            if phase >= period - 1e-9 {
                phase = 0.0;
                cur = vec![p];
            }
        }
    }
    if cur.len() >= 2 && phase < on {
        pieces.push(cur);
    }
    pieces
}

impl Canvas for Raster {
    fn size(&self) -> (u32, u32) {
        (self.w, self.h)
    }

    fn fill_rect(&mut self, r: Rect, color: Rgb) {
        let (x0, x1) = Self::span(r.x, r.right(), 0.0, self.w as f64, self.w);
        let (y0, y1) = Self::span(r.y, r.bottom(), 0.0, self.h as f64, self.h);
        for y in y0..y1 {
            for x in x0..x1 {
                // Partial coverage at fractional edges keeps thin bars honest.
                let cx = (r.right().min(x as f64 + 1.0) - r.x.max(x as f64)).clamp(0.0, 1.0);
                let cy = (r.bottom().min(y as f64 + 1.0) - r.y.max(y as f64)).clamp(0.0, 1.0);
                self.blend(x, y, color, cx * cy);
            }
        }
    }

    fn polyline(&mut self, points: &[(f64, f64)], stroke: &Stroke, clip: Rect) {
        if points.is_empty() {
            return;
        }
        let pieces = match stroke.dash {
            Some((on, off)) => dash_pieces(points, on, off),
            None => vec![points.to_vec()],
        };
        if self.mask.len() != self.px.len() / 3 {
            self.mask = vec![0.0; self.px.len() / 3];
        }
        let mut bb: Option<[i64; 4]> = None;
        for piece in &pieces {
            let segs: Vec<((f64, f64), (f64, f64))> = if piece.len() == 1 {
                vec![(piece[0], piece[0])]
            } else {
                piece.windows(2).map(|w| (w[0], w[1])).collect()
            };
            for (a, b) in segs {
                if !(a.0.is_finite() && a.1.is_finite() && b.0.is_finite() && b.1.is_finite()) {
                    continue;
                }
                if let Some(s) = self.cover_segment(a, b, stroke.width, clip) {
                    bb = Some(match bb {
                        None => s,
                        Some(o) => [o[0].min(s[0]), o[1].min(s[1]), o[2].max(s[2]), o[3].max(s[3])],
                    });
                }
            }
        }
        if let Some(bb) = bb {
            self.flush_mask(bb, stroke.color, stroke.opacity);
        }
    }

    fn dot(&mut self, center: (f64, f64), radius: f64, color: Rgb, clip: Rect) {
        let r = radius + 1.0;
        let (x0, x1) = Self::span(center.0 - r, center.0 + r, clip.x, clip.right(), self.w);
        let (y0, y1) = Self::span(center.1 - r, center.1 + r, clip.y, clip.bottom(), self.h);
        for y in y0..y1 {
            for x in x0..x1 {
                let d = ((x as f64 + 0.5 - center.0).powi(2) + (y as f64 + 0.5 - center.1).powi(2)).sqrt();
                self.blend(x, y, color, (radius + 0.5 - d).clamp(0.0, 1.0));
            }
        }
    }

    fn text(&mut self, at: (f64, f64), text: &str, style: &TextStyle) {
        let w = font::text_width(text, style.size);
        let x = match style.align {
            HAlign::Left => at.0,
            HAlign::Center => at.0 - w / 2.0,
            HAlign::Right => at.0 - w,
        };
        let mut hits = Vec::new();
        font::rasterize(text, x, at.1, style.size, |px, py, c| hits.push((px, py, c)));
        for (px, py, c) in hits {
            self.blend(px, py, style.color, c as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(r: &Raster) -> Rect {
        let (w, h) = r.size();
        Rect::new(0.0, 0.0, w as f64, h as f64)
    }

    #[test]
    fn line_covers_its_pixels_and_respects_clip() {
        let mut r = Raster::new(40, 20, Rgb::WHITE);
        let clip = Rect::new(0.0, 0.0, 20.0, 20.0);
        r.polyline(&[(2.0, 10.5), (38.0, 10.5)], &Stroke::solid(Rgb::BLACK, 1.0), clip);
        assert_eq!(r.pixel(10, 10), Rgb::BLACK);
        assert_eq!(r.pixel(10, 5), Rgb::WHITE);
        assert_eq!(r.pixel(30, 10), Rgb::WHITE, "clipped away");
    }

    #[test]
    fn translucent_polyline_is_even_at_joints() {
        let mut r = Raster::new(60, 20, Rgb::WHITE);
        let stroke = Stroke { color: Rgb::BLACK, width: 3.0, opacity: 0.5, dash: None };
        // Many tiny collinear segments overlap heavily; the middle must equal a single segment's value.
        let pts: Vec<(f64, f64)> = (0..=50).map(|i| (5.0 + i as f64, 10.5)).collect();
        let clip = full(&r);
        r.polyline(&pts, &stroke, clip);
        let mut one = Raster::new(60, 20, Rgb::WHITE);
        one.polyline(&[(5.0, 10.5), (55.0, 10.5)], &stroke, clip);
        assert_eq!(r.pixel(30, 10), one.pixel(30, 10));
        assert_eq!(r.pixel(30, 10), Rgb(128, 128, 128));
    }

    #[test]
    fn dashes_alternate() {
        let pieces = dash_pieces(&[(0.0, 0.0), (25.0, 0.0)], 4.0, 2.0);
        let starts: Vec<f64> = pieces.iter().map(|p| p[0].0).collect();
        assert_eq!(starts, vec![0.0, 6.0, 12.0, 18.0, 24.0]);
        assert!((pieces[0].last().unwrap().0 - 4.0).abs() < 1e-9);
        // Dash phase carries across a corner.
        let pieces = dash_pieces(&[(0.0, 0.0), (3.0, 0.0), (3.0, 3.0)], 4.0, 2.0);
        assert_eq!(pieces[0], vec![(0.0, 0.0), (3.0, 0.0), (3.0, 1.0)]);
    }

    #[test]
    fn text_and_dots_draw_and_png_round_trips() {
        let mut r = Raster::new(120, 40, Rgb::WHITE);
        r.text((60.0, 28.0), "loss 0.5", &TextStyle { size: 18.0, color: Rgb::BLACK, align: HAlign::Center });
        let clip = full(&r);
        r.dot((10.0, 10.0), 4.0, Rgb(255, 0, 0), clip);
        assert_eq!(r.pixel(10, 10), Rgb(255, 0, 0));
        let dark = r.as_rgb().chunks(3).filter(|p| p[0] < 100 && p[1] < 100).count();
        assert!(dark > 30, "{dark} dark pixels");
        let mut png = Vec::new();
        r.encode_png(&mut png).unwrap();
        let back = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(back, r.to_image());
    }

    #[test]
    fn draw_image_copies_and_clips() {
        let mut r = Raster::new(4, 3, Rgb::WHITE);
        let img = image::RgbImage::from_fn(2, 2, |x, y| image::Rgb([x as u8 * 100, y as u8 * 100, 7]));
        r.draw_image(3, 1, &img);
        assert_eq!(r.pixel(3, 1), Rgb(0, 0, 7));
        assert_eq!(r.pixel(3, 2), Rgb(0, 100, 7));
        assert_eq!(r.pixel(2, 1), Rgb::WHITE);
        r.draw_image(-1, -1, &img);
        assert_eq!(r.pixel(0, 0), Rgb(100, 100, 7));
    }

    #[test]
    fn fill_rect_clips_to_image() {
        let mut r = Raster::new(10, 10, Rgb::WHITE);
        r.fill_rect(Rect::new(-5.0, 5.0, 100.0, 100.0), Rgb::BLACK);
        assert_eq!(r.pixel(0, 9), Rgb::BLACK);
        assert_eq!(r.pixel(9, 4), Rgb::WHITE);
    }
}
