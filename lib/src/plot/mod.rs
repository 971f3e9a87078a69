//! Pictures without system fonts or a plotting crate: a small drawing layer with two backends
//! (an anti-aliased RGB raster written as PNG, and SVG text), an embedded font, colour maps, nice axis
//! ticks, line-chart panels, and the `plot-events` figure built on them.
//!
//! - [`canvas`]: the [`Canvas`] trait both backends implement (rectangles, polylines, dots, text).
//! - [`raster`]: [`Raster`], the PNG backend; also what `viz-maps` draws heat maps into.
//! - [`svg`]: [`Svg`], the SVG backend (text stays text; it names DejaVu Sans with fallbacks).
//! - [`font`]: DejaVu Sans (a Latin-1 + Greek subset, 52 KB) compiled in, so text renders the same on
//!   a machine without fontconfig. Provenance and licence: `lib/src/plot/font/`.
//! - [`color`]: [`Rgb`], the run palette (Okabe–Ito, colour-blind safe) and colour maps (viridis).
//! - [`ticks`]: "nice" tick positions (1, 2, 2.5, 5 × 10^k) and their labels.
//! - [`chart`]: one line-chart panel: title, grid, ticks, series, reference lines.
//! - [`history`]: reads `events.jsonl` files into per-run histories (dedupe after resume, bad lines).
//! - [`curves`]: the `plot-events` tool's figure and its `run`.
//!
//! Why not `plotters` (issue 22): its newest release, 0.3.7 (MIT), is from 2024-09-08, 27 months old at the
//! review (2026-12-07), outside the rule that a new dependency has a release in the last 18 months; its bitmap
//! `image` feature would also bring a second `image` (0.24 beside our 0.25). So the drawing layer here (canvas, raster,
//! svg, chart, ticks, color: 1,206 lines) stays; the pictures were not redrawn with plotters for a comparison.

pub mod canvas;
pub mod chart;
pub mod color;
pub mod curves;
pub mod font;
pub mod history;
pub mod raster;
pub mod svg;
pub mod ticks;

pub use canvas::{Canvas, HAlign, Rect, Stroke, TextStyle};
pub use color::Rgb;
pub use raster::Raster;
pub use svg::Svg;
