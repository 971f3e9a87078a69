//! One line-chart panel: a title (with an optional line-style key), a grid at nice ticks, labelled
//! axes, series (lines, optionally with dots) and labelled horizontal reference lines.

use super::canvas::{Canvas, HAlign, Rect, Stroke, TextStyle};
use super::color::Rgb;
use super::font;
use super::ticks;

/// Sizes and colours, scaled to the picture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Theme {
    /// 1.0 at 1600 × 1000; line widths and text follow it.
    pub scale: f64,
    /// Tick labels and most text, em size in pixels.
    pub text: f64,
    /// Panel titles.
    pub title: f64,
    pub ink: Rgb,
    pub muted: Rgb,
    pub grid: Rgb,
    pub axis: Rgb,
    pub background: Rgb,
}

impl Theme {
    /// The theme for a `w × h` picture.
    pub fn for_size(w: u32, h: u32) -> Theme {
        let scale = (w as f64 / 1600.0).min(h as f64 / 1000.0).clamp(0.3, 5.0);
        // Text shrinks slower than the picture: small pictures keep readable labels.
        let text_scale = scale.powf(0.6);
        Theme {
            scale,
            text: 15.0 * text_scale,
            title: 18.0 * text_scale,
            ink: Rgb::hex(0x222222),
            muted: Rgb::hex(0x6b6b6b),
            grid: Rgb::hex(0xe6e6e6),
            axis: Rgb::hex(0x555555),
            background: Rgb::WHITE,
        }
    }
}

/// A line (and optionally dots at its points) in data coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub points: Vec<(f64, f64)>,
    pub stroke: Stroke,
    /// Dot radius in pixels, to mark sparse points (evaluations).
    pub dots: Option<f64>,
}

/// A horizontal reference line with a label at its right end.
#[derive(Debug, Clone, PartialEq)]
pub struct RefLine {
    pub y: f64,
    pub label: String,
}

/// Everything one panel shows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Panel {
    pub title: String,
    /// Line-style key drawn at the right of the title: (label, dash) pairs.
    pub key: Vec<(String, Option<(f64, f64)>)>,
    pub x_label: String,
    pub series: Vec<Series>,
    pub refs: Vec<RefLine>,
    /// Whether the y axis must show 0.
    pub include_zero: bool,
    /// Hard limits for the y axis (an accuracy never leaves 0..100, a momentum never passes 1), so
    /// that padding never shows impossible values.
    pub y_limits: (Option<f64>, Option<f64>),
}

impl Panel {
    /// Whether the panel has any data point.
    pub fn has_data(&self) -> bool {
        self.series.iter().any(|s| !s.points.is_empty())
    }

    /// The extent of x over all series.
    pub fn x_extent(&self) -> Option<(f64, f64)> {
        extent(self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)))
    }

    /// The extent of y over all series, reference lines, and 0 when asked.
    pub fn y_extent(&self) -> Option<(f64, f64)> {
        let zero = if self.include_zero { Some(0.0) } else { None };
        extent(
            self.series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
                .chain(self.refs.iter().map(|r| r.y))
                .chain(zero),
        )
    }
}

/// (min, max) of the finite values, if any.
pub fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// The y range to draw: the data padded a little, then widened to nice ticks. A flat series gets a
/// band around its value.
pub fn y_range(lo: f64, hi: f64, target: usize) -> (f64, f64, f64) {
    let (lo, hi) = if hi > lo {
        let pad = 0.03 * (hi - lo);
        (if lo == 0.0 { 0.0 } else { lo - pad }, hi + pad)
    } else {
        let d = if lo == 0.0 { 1.0 } else { 0.05 * lo.abs() };
        (lo - d, hi + d)
    };
    ticks::loose_range(lo, hi, target)
}

/// Draws `panel` inside `area` with x running over `x_range` (shared by the panels of a figure).
pub fn draw_panel(c: &mut dyn Canvas, area: Rect, panel: &Panel, x_range: (f64, f64), theme: &Theme) {
    let t = theme.text;
    let pad = 0.6 * t;
    let tick_len = 0.35 * t;
    let gap = 0.35 * t;
    let small = TextStyle { size: t, color: theme.muted, align: HAlign::Right };

    // Title row.
    let title_base = area.y + pad + font::ascent(theme.title);
    let plot_top = title_base + 0.8 * t;
    let plot_bottom = area.bottom() - pad - tick_len - gap - font::ascent(t) - 1.4 * t;

    // y ticks decide the left margin.
    let plot_h = (plot_bottom - plot_top).max(1.0);
    let y_target = ((plot_h / (2.6 * t)).round() as usize).clamp(2, 8);
    let (ylo, yhi) = panel.y_extent().unwrap_or((0.0, 1.0));
    let (y0, y1, ystep) = y_range(ylo, yhi, y_target);
    let y0 = panel.y_limits.0.map_or(y0, |l| y0.max(l.min(ylo)));
    let y1 = panel.y_limits.1.map_or(y1, |l| y1.min(l.max(yhi)));
    let yticks = ticks::ticks_with_step(y0, y1, ystep);
    let ylabels = ticks::labels(&yticks, ystep);
    let label_w = ylabels.iter().map(|l| font::text_width(l, t)).fold(0.0, f64::max);
    let plot_left = area.x + pad + label_w + gap + tick_len;
    let plot_right = area.right() - pad - 1.6 * t;
    let plot = Rect::new(plot_left, plot_top, plot_right - plot_left, plot_bottom - plot_top);
    if plot.w < 10.0 || plot.h < 10.0 {
        return;
    }

    let (x0, x1) = if x_range.1 > x_range.0 { x_range } else { (x_range.0 - 0.5, x_range.0 + 0.5) };
    let sx = |x: f64| plot.x + (x - x0) / (x1 - x0) * plot.w;
    let sy = |y: f64| plot.bottom() - (y - y0) / (y1 - y0) * plot.h;
    // Crisp 1-pixel lines sit on pixel centres.
    let crisp = |v: f64| v.round() + 0.5;

    // x ticks: as many as fit without labels touching.
    let mut x_target = ((plot.w / (5.0 * t)).round() as usize).clamp(2, 10);
    let (xticks, xlabels) = loop {
        let (xt, xs) = ticks::ticks(x0, x1, x_target);
        let xl = ticks::labels(&xt, xs);
        let widest = xl.iter().map(|l| font::text_width(l, t)).fold(0.0, f64::max);
        let spacing = xs / (x1 - x0) * plot.w;
        if widest + 1.5 * t <= spacing || x_target <= 2 {
            break (xt, xl);
        }
        x_target -= 1;
    };

    let (cw, ch) = c.size();
    let everything = Rect::new(0.0, 0.0, cw as f64, ch as f64);
    let grid = Stroke::solid(theme.grid, 1.0);
    for &y in &yticks {
        let py = crisp(sy(y));
        c.polyline(&[(plot.x, py), (plot.right(), py)], &grid, everything);
    }
    for &x in &xticks {
        let px = crisp(sx(x));
        c.polyline(&[(px, plot.y), (px, plot.bottom())], &grid, everything);
    }

    // Reference lines, under the data.
    let ref_style = TextStyle { size: 0.85 * t, color: theme.muted, align: HAlign::Right };
    for r in &panel.refs {
        let py = sy(r.y);
        let stroke = Stroke { dash: Some((6.0 * theme.scale, 4.0 * theme.scale)), ..Stroke::solid(theme.muted, 1.2) };
        c.polyline(&[(plot.x, py), (plot.right(), py)], &stroke, plot);
        let above = py - 0.35 * t;
        let base = if above - ref_style.size < plot.y { py + 0.35 * t + font::ascent(ref_style.size) } else { above };
        c.text((plot.right() - 0.3 * t, base), &r.label, &ref_style);
    }

    // Data.
    for s in &panel.series {
        let pts: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (sx(x), sy(y))).collect();
        c.polyline(&pts, &s.stroke, plot);
        if let Some(r) = s.dots {
            for &p in &pts {
                c.dot(p, r, s.stroke.color, plot);
            }
        }
    }

    // Axes, ticks and labels.
    let axis = Stroke::solid(theme.axis, 1.0);
    let (ax, ay) = (crisp(plot.x) - 1.0, crisp(plot.bottom()));
    c.polyline(&[(ax, plot.y), (ax, ay), (plot.right(), ay)], &axis, everything);
    let asc = font::ascent(t);
    for (&y, l) in yticks.iter().zip(&ylabels) {
        let py = crisp(sy(y));
        c.polyline(&[(ax - tick_len, py), (ax, py)], &axis, everything);
        c.text((ax - tick_len - gap, py + 0.36 * asc * 1.0), l, &small);
    }
    let xlab_base = ay + tick_len + gap + asc;
    for (&x, l) in xticks.iter().zip(&xlabels) {
        let px = crisp(sx(x));
        c.polyline(&[(px, ay), (px, ay + tick_len)], &axis, everything);
        c.text((px, xlab_base), l, &TextStyle { align: HAlign::Center, ..small });
    }
    if !panel.x_label.is_empty() {
        c.text(
            (plot.x + plot.w / 2.0, xlab_base + 1.3 * t),
            &panel.x_label,
            &TextStyle { size: t, color: theme.muted, align: HAlign::Center },
        );
    }

    // Title, and the line-style key at the right of it.
    let swatch = 1.8 * t;
    let key_w: f64 = panel.key.iter().map(|(l, _)| font::text_width(l, t) + 1.4 * t + swatch).sum();
    let room = area.right() - pad - plot.x - key_w;
    let (title, title_size) = fit_text(&panel.title, theme.title, room);
    c.text((plot.x, title_base), &title, &TextStyle { size: title_size, color: theme.ink, align: HAlign::Left });
    let mut right = plot.right();
    for (label, dash) in panel.key.iter().rev() {
        let w = font::text_width(label, t);
        c.text((right, title_base), label, &TextStyle { size: t, color: theme.muted, align: HAlign::Right });
        right -= w + 0.4 * t;
        let y = title_base - 0.33 * asc;
        let stroke = Stroke { dash: *dash, ..Stroke::solid(theme.muted, 2.0 * theme.scale.max(0.75)) };
        c.polyline(&[(right - swatch, y), (right, y)], &stroke, everything);
        right -= swatch + 1.0 * t;
    }
}

/// `text` at `size` if it fits in `room` pixels; else at a size down to 80%; else cut with "…".
pub fn fit_text(text: &str, size: f64, room: f64) -> (String, f64) {
    let w = font::text_width(text, size);
    if w <= room {
        return (text.to_string(), size);
    }
    let smaller = (size * room / w).max(0.8 * size);
    if font::text_width(text, smaller) <= room {
        return (text.to_string(), smaller);
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let cut: String = chars.iter().collect::<String>().trim_end().to_string() + "\u{2026}";
        if font::text_width(&cut, smaller) <= room {
            return (cut, smaller);
        }
    }
    (String::new(), smaller)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::raster::Raster;

    #[test]
    fn y_range_pads_and_handles_flat_data() {
        let (lo, hi, _) = y_range(0.2, 3.9, 5);
        assert!(lo <= 0.2 && hi >= 3.9 && lo >= 0.0);
        let (lo, hi, _) = y_range(0.05, 0.05, 4);
        assert!(lo < 0.05 && hi > 0.05, "{lo} {hi}");
        let (lo, hi, _) = y_range(0.0, 0.0, 4);
        assert!(lo < 0.0 && hi > 0.0);
        assert_eq!(y_range(0.0, 1.0, 5).0, 0.0, "a range starting at 0 stays at 0");
    }

    #[test]
    fn long_titles_shrink_then_get_cut() {
        assert_eq!(fit_text("loss", 18.0, 500.0), ("loss".to_string(), 18.0));
        let w = font::text_width("collapse indicator", 18.0);
        let (t, s) = fit_text("collapse indicator", 18.0, w * 0.9);
        assert_eq!(t, "collapse indicator");
        assert!((0.8 * 18.0..18.0).contains(&s));
        let (t, s) = fit_text("collapse indicator", 18.0, w * 0.5);
        assert!(t.ends_with('\u{2026}') && font::text_width(&t, s) <= w * 0.5, "{t}");
        assert_eq!(fit_text("abc", 18.0, 1.0).0, "");
    }

    #[test]
    fn panel_draws_series_in_its_colour() {
        let theme = Theme::for_size(800, 500);
        let mut r = Raster::new(800, 500, Rgb::WHITE);
        let red = Rgb(220, 0, 0);
        let panel = Panel {
            title: "loss".into(),
            x_label: "step".into(),
            series: vec![Series {
                points: (0..100).map(|i| (i as f64, 1.0 / (1.0 + i as f64))).collect(),
                stroke: Stroke::solid(red, 3.0),
                dots: None,
            }],
            refs: vec![RefLine { y: 0.5, label: "half".into() }],
            ..Default::default()
        };
        assert_eq!(panel.x_extent(), Some((0.0, 99.0)));
        draw_panel(&mut r, Rect::new(0.0, 0.0, 800.0, 500.0), &panel, (0.0, 99.0), &theme);
        let reds = r.as_rgb().chunks(3).filter(|p| p[0] == 220 && p[1] == 0).count();
        assert!(reds > 500, "{reds} red pixels");
        assert!(!Panel::default().has_data());
    }
}
