//! What both backends can draw. Coordinates are pixels, origin top left, y down; a pixel's centre is
//! at `(x + 0.5, y + 0.5)`.

use super::color::Rgb;

/// An axis-aligned rectangle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    pub fn new(x: f64, y: f64, w: f64, h: f64) -> Rect {
        Rect { x, y, w: w.max(0.0), h: h.max(0.0) }
    }
    pub fn right(&self) -> f64 {
        self.x + self.w
    }
    pub fn bottom(&self) -> f64 {
        self.y + self.h
    }
    /// Whether `(x, y)` lies inside (edges included).
    pub fn contains(&self, x: f64, y: f64) -> bool {
        x >= self.x && x <= self.right() && y >= self.y && y <= self.bottom()
    }
}

/// Horizontal alignment of text on its anchor point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HAlign {
    Left,
    Center,
    Right,
}

/// How text looks. `size` is the em size in pixels (as SVG's `font-size`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextStyle {
    pub size: f64,
    pub color: Rgb,
    pub align: HAlign,
}

/// How a line looks. `dash` is `(on, off)` in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stroke {
    pub color: Rgb,
    pub width: f64,
    pub opacity: f64,
    pub dash: Option<(f64, f64)>,
}

impl Stroke {
    /// An opaque solid line.
    pub fn solid(color: Rgb, width: f64) -> Stroke {
        Stroke { color, width, opacity: 1.0, dash: None }
    }
}

/// A surface to draw on: [`super::Raster`] (PNG) or [`super::Svg`].
pub trait Canvas {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Fills a rectangle.
    fn fill_rect(&mut self, r: Rect, color: Rgb);
    /// Strokes a connected line through `points`, clipped to `clip`. A polyline is drawn as one
    /// shape: a translucent line does not darken where its segments meet.
    fn polyline(&mut self, points: &[(f64, f64)], stroke: &Stroke, clip: Rect);
    /// A filled disc, clipped to `clip`.
    fn dot(&mut self, center: (f64, f64), radius: f64, color: Rgb, clip: Rect);
    /// One line of text; `at` is the anchor on the baseline (see [`TextStyle::align`]).
    fn text(&mut self, at: (f64, f64), text: &str, style: &TextStyle);
}
