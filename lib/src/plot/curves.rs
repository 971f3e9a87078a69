//! `plot-events`: training curves of one or several runs, from their `events.jsonl`, as one picture.
//!
//! Panels, each omitted when no run has data for it: total loss; global and aligned loss (solid and
//! dashed); evaluation accuracy (`knn_top1_pct`, else `top1_pct`, else the first `*_pct`); the
//! collapse indicator `collapse_std` with a line at 1/√K (the value for outputs spread uniformly on
//! the sphere, K = `model.proj_dim`) and at 0 (collapse), with the target's dashed; the relative update of the
//! backbone's adapted weights (`update_ratio_median`, `update_ratio_min` dashed); the alignment-map entropy ratio
//! (`map_entropy_ratio`, 1 = uniform maps); learning rate; EMA momentum.
//!
//! The EMA momentum is drawn as m itself on a linear axis, not 1 − m on a log axis: the reference
//! schedule is a cosine from 0.99 or 0.996 that ends at exactly 1, where 1 − m = 0 has no place on a
//! log axis and the last steps would plunge through decades of nothing.
//!
//! With `x = epoch`, a step s is drawn at s / (steps per epoch), so 1.0 is the end of the first epoch
//! (see [`History::steps_per_epoch`]).

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::canvas::{Canvas, HAlign, Rect, Stroke, TextStyle};
use super::chart::{self, Panel, RefLine, Series, Theme};
use super::color::{run_color, Rgb};
use super::font;
use super::history::{read_history, History, StepPoint};
use super::raster::Raster;
use super::svg::Svg;
use crate::events::{Event, EventSink};
use crate::LewelError;

/// The tool name written in events.
pub const TOOL: &str = "plot-events";

/// What the x axis counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    Step,
    Epoch,
}

/// The picture format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    /// The format an output path asks for: SVG for `.svg` (any case), PNG otherwise.
    pub fn from_path(path: &Path) -> Format {
        match path.extension() {
            Some(e) if e.eq_ignore_ascii_case("svg") => Format::Svg,
            _ => Format::Png,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Svg => "svg",
        }
    }
}

/// Smallest and largest picture side accepted, in pixels.
pub const MIN_SIDE: u32 = 320;
pub const MAX_SIDE: u32 = 8000;

/// A resolved `plot-events` invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvesConfig {
    /// Events files; `-` is stdin.
    pub inputs: Vec<PathBuf>,
    /// Legend labels, one per input, or empty for automatic ones.
    pub labels: Vec<String>,
    pub out: PathBuf,
    pub format: Format,
    pub x: XAxis,
    /// Moving-average window in points; 0 or 1 is off.
    pub smooth: usize,
    pub width: u32,
    pub height: u32,
}

impl CurvesConfig {
    /// Checks what flags alone cannot (exit 2 on failure).
    pub fn validate(&self) -> Result<(), LewelError> {
        let usage = |m: String| Err(LewelError::Usage(m));
        if self.inputs.is_empty() {
            return usage("no events file given; pass one or more RUN/events.jsonl (or - for stdin)".into());
        }
        if !self.labels.is_empty() && self.labels.len() != self.inputs.len() {
            return usage(format!(
                "{} --label for {} events files; give one --label per file, in the same order, or none",
                self.labels.len(),
                self.inputs.len()
            ));
        }
        if self.inputs.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
            return usage("stdin (-) can be read only once".into());
        }
        if self.out.as_os_str() == "-" {
            return usage("--out -: a picture needs a real path, like curves.png".into());
        }
        for (side, v) in [("width", self.width), ("height", self.height)] {
            if !(MIN_SIDE..=MAX_SIDE).contains(&v) {
                return usage(format!("--size: {side} {v} is outside {MIN_SIDE}..{MAX_SIDE} pixels"));
            }
        }
        Ok(())
    }
}

/// Parses `WIDTHxHEIGHT` (`1600x1000`).
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(|| format!("expected WIDTHxHEIGHT like 1600x1000, got {s:?}"))?;
    let side = |v: &str| -> Result<u32, String> {
        let n: u32 = v.trim().parse().map_err(|_| format!("{v:?} in {s:?} is not a whole number of pixels"))?;
        if (MIN_SIDE..=MAX_SIDE).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{n} is outside {MIN_SIDE}..{MAX_SIDE} pixels"))
        }
    };
    Ok((side(w)?, side(h)?))
}

/// Centred moving average over `n` points (the window shrinks at the ends); `n <= 1` returns `ys`.
pub fn moving_average(ys: &[f64], n: usize) -> Vec<f64> {
    if n <= 1 || ys.is_empty() {
        return ys.to_vec();
    }
    let mut prefix = Vec::with_capacity(ys.len() + 1);
    prefix.push(0.0);
    for y in ys {
        prefix.push(prefix.last().unwrap_or(&0.0) + y);
    }
    let (before, after) = ((n - 1) / 2, n / 2);
    (0..ys.len())
        .map(|i| {
            let lo = i.saturating_sub(before);
            let hi = (i + after).min(ys.len() - 1);
            (prefix[hi + 1] - prefix[lo]) / (hi + 1 - lo) as f64
        })
        .collect()
}

/// One input, read.
struct RunData {
    source: String,
    history: History,
}

fn warn_event(sink: &mut dyn EventSink, msg: &str, file: Option<&str>, line: Option<usize>) -> Result<()> {
    let mut e = Event::new(TOOL, "warn").str("message", msg);
    if let Some(f) = file {
        e = e.str("file", f);
    }
    if let Some(l) = line {
        e = e.int("line", l as i64);
    }
    sink.emit(&e)?;
    Ok(())
}

fn load(path: &Path, sink: &mut dyn EventSink) -> Result<RunData> {
    let source = if path.as_os_str() == "-" { "stdin".to_string() } else { path.display().to_string() };
    let mut warnings = Vec::new();
    let mut collect = |m: String, l: Option<usize>| warnings.push((m, l));
    let history = if path.as_os_str() == "-" {
        read_history(io::stdin().lock(), &mut collect)
    } else {
        let f =
            File::open(path).with_context(|| format!("could not open {source}; check the path (RUN/events.jsonl)"))?;
        read_history(BufReader::new(f), &mut collect)
    }
    .with_context(|| format!("could not read {source}"))?;
    for (m, l) in warnings {
        warn_event(sink, &format!("{source}: {m}"), Some(&source), l)?;
    }
    if history.events == 0 {
        if history.bad_lines == 0 {
            bail!("{source} is empty: no events to plot (pretrain writes RUN/events.jsonl as it trains)");
        }
        bail!("{source} holds no events: none of its {} non-empty lines is a JSON event", history.bad_lines);
    }
    Ok(RunData { source, history })
}

/// Legend labels: the run folder's name (the file's stem when it is not called `events.jsonl`);
/// where those clash, the run's `model.method`; where that still clashes, a `#n` suffix.
fn auto_labels(inputs: &[PathBuf], runs: &[RunData]) -> Vec<String> {
    let base: Vec<String> = inputs
        .iter()
        .map(|p| {
            if p.as_os_str() == "-" {
                return "stdin".to_string();
            }
            let name = |q: &Path| q.file_name().map(|n| n.to_string_lossy().into_owned());
            if p.file_name().is_some_and(|n| n == "events.jsonl") {
                let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).map(Path::to_path_buf);
                let parent = parent.or_else(|| std::env::current_dir().ok());
                if let Some(n) = parent.and_then(|d| d.canonicalize().ok().and_then(|c| name(&c)).or_else(|| name(&d)))
                {
                    return n;
                }
            }
            p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into())
        })
        .collect();
    let clashes = |v: &[String], i: usize| v.iter().filter(|x| **x == v[i]).count() > 1;
    let mut labels: Vec<String> = (0..base.len())
        .map(|i| match (&runs[i].history.method, clashes(&base, i)) {
            (Some(m), true) => m.clone(),
            _ => base[i].clone(),
        })
        .collect();
    let snapshot = labels.clone();
    for i in 0..labels.len() {
        if clashes(&snapshot, i) {
            let nth = snapshot[..=i].iter().filter(|x| **x == snapshot[i]).count();
            labels[i] = format!("{} #{nth}", snapshot[i]);
        }
    }
    labels
}

/// How steps become x values for one run.
struct XMap {
    axis: XAxis,
    steps_per_epoch: Option<f64>,
}

impl XMap {
    fn of(&self, step: Option<u64>, epoch: Option<f64>) -> Option<f64> {
        match (self.axis, self.steps_per_epoch) {
            (XAxis::Step, spe) => step.map(|s| s as f64).or_else(|| Some(epoch? * spe?)),
            (XAxis::Epoch, Some(spe)) => step.map(|s| s as f64 / spe).or(epoch),
            (XAxis::Epoch, None) => epoch,
        }
    }
}

/// The eval metric to plot and its panel title.
fn eval_metric(runs: &[RunData]) -> Option<(String, String)> {
    let has = |k: &str| runs.iter().any(|r| r.history.evals.iter().any(|e| e.metrics.contains_key(k)));
    let key =
        ["knn_top1_pct", "top1_pct"].into_iter().map(String::from).find(|k| has(k)).or_else(|| {
            runs.iter().flat_map(|r| r.history.evals.iter().flat_map(|e| e.metrics.keys())).min().cloned()
        })?;
    let title = match key.as_str() {
        "knn_top1_pct" => "kNN top-1 accuracy (%)".to_string(),
        "top1_pct" => "top-1 accuracy (%)".to_string(),
        k => format!("{} (%)", k.trim_end_matches("_pct").replace('_', " ")),
    };
    Some((key, title))
}

/// The figure: its panels and legend, before drawing.
pub struct Figure {
    pub panels: Vec<Panel>,
    /// (label, colour) per run.
    pub legend: Vec<(String, Rgb)>,
    /// A short line at the right of the legend.
    pub note: String,
    /// Points drawn: distinct steps plus evaluations, over all runs.
    pub points: usize,
}

const ALIGNED_DASH: (f64, f64) = (7.0, 4.0);

fn build_figure(
    runs: &[RunData],
    labels: &[String],
    cfg: &CurvesConfig,
    theme: &Theme,
    sink: &mut dyn EventSink,
) -> Result<Figure> {
    let s = theme.scale;
    let x_label = match cfg.x {
        XAxis::Step => "step",
        XAxis::Epoch => "epoch",
    };
    let smoothing = cfg.smooth > 1;
    let main_w = if smoothing { 2.2 * s } else { 1.7 * s };
    let mut loss = Panel { title: "total loss".into(), x_label: x_label.into(), ..Default::default() };
    let mut terms = Panel { x_label: x_label.into(), ..Default::default() };
    let mut lr = Panel { title: "learning rate".into(), x_label: x_label.into(), ..Default::default() };
    let mut ema = Panel {
        title: "EMA momentum m".into(),
        x_label: x_label.into(),
        y_limits: (None, Some(1.0)),
        ..Default::default()
    };
    let mut collapse = Panel {
        title: "collapse indicator (output std)".into(),
        x_label: x_label.into(),
        include_zero: true,
        ..Default::default()
    };
    let mut update = Panel {
        title: "backbone update |\u{394}w| / |w|".into(),
        x_label: x_label.into(),
        include_zero: true,
        ..Default::default()
    };
    let mut entropy = Panel {
        title: "alignment-map entropy / uniform".into(),
        x_label: x_label.into(),
        y_limits: (Some(0.0), Some(1.0)),
        ..Default::default()
    };
    let metric = eval_metric(runs);
    let mut eval = Panel {
        title: metric.as_ref().map(|m| m.1.clone()).unwrap_or_default(),
        x_label: x_label.into(),
        y_limits: (Some(0.0), Some(100.0)),
        ..Default::default()
    };
    let mut legend = Vec::new();
    let mut points = 0;
    let mut ks: Vec<u64> = Vec::new();
    let mut any_aligned = false;
    let mut any_target = false;
    let mut any_min = false;

    for (i, (run, label)) in runs.iter().zip(labels).enumerate() {
        let color = run_color(i);
        legend.push((label.clone(), color));
        let h = &run.history;
        points += h.steps.len() + h.evals.len();
        let spe = h.steps_per_epoch();
        if cfg.x == XAxis::Epoch && spe.is_none() && !h.steps.is_empty() {
            warn_event(
                sink,
                &format!(
                    "{}: cannot tell steps per epoch (no epoch events, one epoch); drawn at its epoch numbers",
                    run.source
                ),
                Some(&run.source),
                None,
            )?;
        }
        let xmap = XMap { axis: cfg.x, steps_per_epoch: spe };
        let series_of = |get: &dyn Fn(&StepPoint) -> Option<f64>| -> Vec<(f64, f64)> {
            h.steps.iter().filter_map(|(&st, p)| Some((xmap.of(Some(st), p.epoch)?, get(p)?))).collect()
        };
        // Noisy metrics: faint raw line plus the moving average when smoothing.
        let noisy = |panel: &mut Panel, pts: Vec<(f64, f64)>, dash: Option<(f64, f64)>| {
            if pts.is_empty() {
                return;
            }
            let dash = dash.map(|(a, b)| (a * s, b * s));
            if smoothing {
                let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
                let smooth = moving_average(&ys, cfg.smooth);
                panel.series.push(Series {
                    points: pts.clone(),
                    stroke: Stroke { color, width: 1.0 * s, opacity: 0.22, dash: None },
                    dots: None,
                });
                let pts = pts.iter().zip(smooth).map(|(p, y)| (p.0, y)).collect();
                panel.series.push(Series {
                    points: pts,
                    stroke: Stroke { dash, ..Stroke::solid(color, main_w) },
                    dots: None,
                });
            } else {
                panel.series.push(Series {
                    points: pts,
                    stroke: Stroke { dash, ..Stroke::solid(color, main_w) },
                    dots: None,
                });
            }
        };
        noisy(&mut loss, series_of(&|p| p.loss), None);
        noisy(&mut terms, series_of(&|p| p.loss_global), None);
        // The baselines write loss_aligned 0 (no aligned branch: `model::Method::has_aligned`); not a curve.
        let baseline = matches!(h.method.as_deref(), Some("byol" | "mocov2"));
        let aligned = if baseline { Vec::new() } else { series_of(&|p| p.loss_aligned) };
        any_aligned |= !aligned.is_empty();
        noisy(&mut terms, aligned, Some(ALIGNED_DASH));
        noisy(&mut collapse, series_of(&|p| p.collapse_std), None);
        let target = series_of(&|p| p.target_collapse_std);
        any_target |= !target.is_empty();
        noisy(&mut collapse, target, Some(ALIGNED_DASH));
        noisy(&mut update, series_of(&|p| p.update_ratio_median), None);
        let least = series_of(&|p| p.update_ratio_min);
        any_min |= !least.is_empty();
        noisy(&mut update, least, Some(ALIGNED_DASH));
        noisy(&mut entropy, series_of(&|p| p.map_entropy_ratio), None);
        for (panel, pts) in [(&mut lr, series_of(&|p| p.lr)), (&mut ema, series_of(&|p| p.ema_momentum))] {
            if !pts.is_empty() {
                panel.series.push(Series { points: pts, stroke: Stroke::solid(color, 2.0 * s), dots: None });
            }
        }
        if let Some((key, _)) = &metric {
            let pts: Vec<(f64, f64)> =
                h.evals.iter().filter_map(|e| Some((xmap.of(e.step, e.epoch)?, *e.metrics.get(key)?))).collect();
            if !pts.is_empty() {
                eval.series.push(Series { points: pts, stroke: Stroke::solid(color, 2.0 * s), dots: Some(3.6 * s) });
            }
        }
        if let Some(k) = h.proj_dim.filter(|k| *k > 0) {
            if !ks.contains(&k) {
                ks.push(k);
            }
        }
    }

    terms.title = if any_aligned { "global and aligned loss".into() } else { "global loss".into() };
    if any_aligned {
        terms.key = vec![("global".into(), None), ("aligned".into(), Some((ALIGNED_DASH.0 * s, ALIGNED_DASH.1 * s)))];
    }
    let dash = Some((ALIGNED_DASH.0 * s, ALIGNED_DASH.1 * s));
    if any_target {
        collapse.key = vec![("online".into(), None), ("target".into(), dash)];
    }
    if any_min {
        update.key = vec![("median".into(), None), ("min".into(), dash)];
    }
    if entropy.has_data() {
        entropy.refs.push(RefLine { y: 1.0, label: "uniform maps".into() });
    }
    if collapse.has_data() {
        ks.sort_unstable();
        for k in ks {
            let v = 1.0 / (k as f64).sqrt();
            collapse.refs.push(RefLine { y: v, label: format!("uniform on the sphere: 1/\u{221a}{k} = {v:.3}") });
        }
        collapse.refs.push(RefLine { y: 0.0, label: "collapsed".into() });
    }

    let panels: Vec<Panel> =
        [loss, terms, eval, collapse, update, entropy, lr, ema].into_iter().filter(Panel::has_data).collect();
    let note = if smoothing {
        format!("lines: moving average of {} points; faint: raw values", cfg.smooth)
    } else {
        String::new()
    };
    Ok(Figure { panels, legend, note, points })
}

/// Columns × rows for `n` panels on a `w × h` picture.
fn grid(n: usize, w: u32, h: u32) -> (usize, usize) {
    let (c, r) = match n {
        0 | 1 => (1, 1),
        2 => (2, 1),
        3 => (3, 1),
        4 => (2, 2),
        5 | 6 => (3, 2),
        n => (4, n.div_ceil(4)),
    };
    if h > w && c > r {
        (r, c)
    } else {
        (c, r)
    }
}

/// Draws `fig` on any canvas.
pub fn draw_figure(c: &mut dyn Canvas, fig: &Figure, theme: &Theme) {
    let (w, h) = c.size();
    let (w, h) = (w as f64, h as f64);
    let t = theme.text;
    c.fill_rect(Rect::new(0.0, 0.0, w, h), theme.background);
    let margin = 0.9 * t;
    let everything = Rect::new(0.0, 0.0, w, h);

    // Legend rows: swatch + label per run, wrapped; the note right-aligned on the last row if it fits.
    let legend_size = 1.1 * t;
    let swatch = 2.2 * t;
    let row_h = 1.8 * t;
    let asc = font::ascent(legend_size);
    let mut x = margin;
    let mut row = 0usize;
    let mut placed = Vec::new();
    for (label, color) in &fig.legend {
        let item_w = swatch + 0.5 * t + font::text_width(label, legend_size) + 1.6 * t;
        if x > margin && x + item_w > w - margin {
            row += 1;
            x = margin;
        }
        placed.push((x, row, label, *color));
        x += item_w;
    }
    let note_w = font::text_width(&fig.note, t);
    let note_row = if x + note_w + margin <= w - margin { row } else { row + 1 };
    let rows = note_row + 1;
    for (x, row, label, color) in placed {
        let base = margin + asc + row as f64 * row_h;
        let y = base - 0.33 * asc;
        c.polyline(&[(x, y), (x + swatch, y)], &Stroke::solid(color, 3.5 * theme.scale), everything);
        c.text(
            (x + swatch + 0.5 * t, base),
            label,
            &TextStyle { size: legend_size, color: theme.ink, align: HAlign::Left },
        );
    }
    let note_base = margin + asc + note_row as f64 * row_h;
    c.text((w - margin, note_base), &fig.note, &TextStyle { size: t, color: theme.muted, align: HAlign::Right });

    // Panels share one x range.
    let top = margin + rows as f64 * row_h + 0.2 * t;
    let (x0, x1) =
        chart::extent(fig.panels.iter().filter_map(Panel::x_extent).flat_map(|(a, b)| [a, b])).unwrap_or((0.0, 1.0));
    // Steps count from 0 or 1: start the axis at 0 rather than at the first logged step.
    let x_range = if x0 > 0.0 && x0 <= 0.1 * x1 { (0.0, x1) } else { (x0, x1) };
    let (cols, rows) = grid(fig.panels.len(), w as u32, h as u32);
    let cell_w = (w - 2.0 * margin) / cols as f64;
    let cell_h = (h - top - margin) / rows as f64;
    for (i, p) in fig.panels.iter().enumerate() {
        let (col, row) = (i % cols, i / cols);
        let area = Rect::new(margin + col as f64 * cell_w, top + row as f64 * cell_h, cell_w, cell_h);
        chart::draw_panel(c, area, p, x_range, theme);
    }
}

/// Reads the events files, draws the figure, writes it atomically, and emits `warn` events and one
/// `end` event (`out`, `runs`, `points`, `format`, `panels`) to `sink`.
pub fn run(cfg: &CurvesConfig, sink: &mut dyn EventSink) -> Result<()> {
    cfg.validate()?;
    let mut runs = Vec::with_capacity(cfg.inputs.len());
    for p in &cfg.inputs {
        runs.push(load(p, sink)?);
    }
    if runs.iter().all(|r| r.history.steps.is_empty()) {
        let names: Vec<&str> = runs.iter().map(|r| r.source.as_str()).collect();
        bail!(
            "no step events in {}: nothing to plot (is this a pretrain events.jsonl? pretrain logs a step event every --log-every steps)",
            names.join(", ")
        );
    }
    for r in runs.iter().filter(|r| r.history.steps.is_empty()) {
        warn_event(
            sink,
            &format!("{}: no step events; only its evaluations are drawn", r.source),
            Some(&r.source),
            None,
        )?;
    }
    let labels = if cfg.labels.is_empty() { auto_labels(&cfg.inputs, &runs) } else { cfg.labels.clone() };
    let theme = Theme::for_size(cfg.width, cfg.height);
    let fig = build_figure(&runs, &labels, cfg, &theme, sink)?;
    if fig.panels.is_empty() {
        bail!("nothing to draw against epochs: the steps carry no epoch and there are no epoch events; use --x step");
    }
    match cfg.format {
        Format::Png => {
            let mut r = Raster::new(cfg.width, cfg.height, theme.background);
            draw_figure(&mut r, &fig, &theme);
            r.write_png(&cfg.out)?;
        }
        Format::Svg => {
            let mut s = Svg::new(cfg.width, cfg.height);
            draw_figure(&mut s, &fig, &theme);
            s.write(&cfg.out)?;
        }
    }
    sink.emit(
        &Event::new(TOOL, "end")
            .str("out", cfg.out.display().to_string())
            .int("runs", runs.len() as i64)
            .int("points", fig.points as i64)
            .str("format", cfg.format.name())
            .int("panels", fig.panels.len() as i64),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_is_centred_and_shrinks_at_ends() {
        let ys = [0.0, 3.0, 6.0, 9.0, 12.0];
        assert_eq!(moving_average(&ys, 1), ys.to_vec());
        assert_eq!(moving_average(&ys, 0), ys.to_vec());
        assert_eq!(moving_average(&ys, 3), vec![1.5, 3.0, 6.0, 9.0, 10.5]);
        // A window longer than the data averages everything it reaches.
        assert_eq!(moving_average(&ys, 100), vec![6.0; 5]);
        // Even windows lean one point ahead.
        assert_eq!(moving_average(&ys, 2), vec![1.5, 4.5, 7.5, 10.5, 12.0]);
        // A line stays a line in the middle.
        let line: Vec<f64> = (0..50).map(|i| 2.0 * i as f64).collect();
        let sm = moving_average(&line, 7);
        assert!((sm[25] - line[25]).abs() < 1e-9);
        assert!(moving_average(&[], 5).is_empty());
    }

    #[test]
    fn sizes_parse_and_formats_follow_the_extension() {
        assert_eq!(parse_size("1600x1000"), Ok((1600, 1000)));
        assert_eq!(parse_size("800X600"), Ok((800, 600)));
        assert!(parse_size("1600").is_err());
        assert!(parse_size("10x10").is_err());
        assert!(parse_size("axb").is_err());
        assert_eq!(Format::from_path(Path::new("a/curves.SVG")), Format::Svg);
        assert_eq!(Format::from_path(Path::new("curves.png")), Format::Png);
        assert_eq!(Format::from_path(Path::new("curves")), Format::Png);
    }

    #[test]
    fn x_maps_steps_and_epochs() {
        let by_step = XMap { axis: XAxis::Step, steps_per_epoch: Some(50.0) };
        assert_eq!(by_step.of(Some(100), Some(1.0)), Some(100.0));
        assert_eq!(by_step.of(None, Some(2.0)), Some(100.0));
        let by_epoch = XMap { axis: XAxis::Epoch, steps_per_epoch: Some(50.0) };
        assert_eq!(by_epoch.of(Some(25), Some(0.0)), Some(0.5));
        assert_eq!(by_epoch.of(None, Some(3.0)), Some(3.0));
        let unknown = XMap { axis: XAxis::Step, steps_per_epoch: None };
        assert_eq!(unknown.of(None, Some(3.0)), None);
    }

    fn run_with(inputs: &[&str], history: &[History]) -> Vec<String> {
        let runs: Vec<RunData> =
            history.iter().zip(inputs).map(|(h, s)| RunData { source: s.to_string(), history: h.clone() }).collect();
        let paths: Vec<PathBuf> = inputs.iter().map(PathBuf::from).collect();
        auto_labels(&paths, &runs)
    }

    #[test]
    fn the_baselines_zero_aligned_loss_is_not_drawn() {
        let run = |method: &str, aligned: f64| {
            let mut h = History { method: Some(method.into()), ..Default::default() };
            for st in 0..3 {
                let p = StepPoint {
                    epoch: Some(0.0),
                    loss: Some(1.0),
                    loss_global: Some(1.0),
                    loss_aligned: Some(aligned),
                    ..Default::default()
                };
                h.steps.insert(st, p);
            }
            RunData { source: format!("{method}/events.jsonl"), history: h }
        };
        let cfg = CurvesConfig {
            inputs: vec![],
            labels: vec![],
            out: "x.png".into(),
            format: Format::Png,
            x: XAxis::Step,
            smooth: 0,
            width: 1600,
            height: 1000,
        };
        let count = |runs: &[RunData]| {
            let labels: Vec<String> = runs.iter().map(|r| r.source.clone()).collect();
            let fig = build_figure(runs, &labels, &cfg, &Theme::for_size(1600, 1000), &mut crate::events::DiscardSink)
                .unwrap();
            let terms = fig.panels.iter().find(|p| p.title.contains("aligned")).expect("the loss-terms panel");
            terms.series.iter().filter(|s| s.stroke.dash.is_some()).count()
        };
        assert_eq!(count(&[run("lewel-b", 0.5), run("byol", 0.0)]), 1, "LEWEL_B's aligned curve alone");
        assert_eq!(count(&[run("lewel-m", 0.5), run("mocov2", 0.0)]), 1);
        assert_eq!(count(&[run("lewel-b", 0.5), run("lewel-m", 0.4)]), 2);
    }

    #[test]
    fn labels_use_folders_then_methods_then_numbers() {
        let with = |m: &str| History { method: Some(m.into()), ..Default::default() };
        assert_eq!(
            run_with(&["runs/a/events.jsonl", "runs/b/events.jsonl"], &[with("lewel-b"), with("byol")]),
            ["a", "b"]
        );
        assert_eq!(
            run_with(&["x/run1/events.jsonl", "y/run1/events.jsonl"], &[with("lewel-b"), with("byol")]),
            ["lewel-b", "byol"]
        );
        assert_eq!(
            run_with(&["x/run1/events.jsonl", "y/run1/events.jsonl"], &[with("byol"), with("byol")]),
            ["byol #1", "byol #2"]
        );
        assert_eq!(run_with(&["logs/lewel-long.jsonl", "-"], &[with("a"), with("b")]), ["lewel-long", "stdin"]);
    }

    #[test]
    fn config_checks_labels_stdin_and_out() {
        let ok = CurvesConfig {
            inputs: vec!["a/events.jsonl".into(), "b/events.jsonl".into()],
            labels: vec![],
            out: "c.png".into(),
            format: Format::Png,
            x: XAxis::Step,
            smooth: 0,
            width: 1600,
            height: 1000,
        };
        assert!(ok.validate().is_ok());
        let bad = [
            CurvesConfig { labels: vec!["one".into()], ..ok.clone() },
            CurvesConfig { inputs: vec!["-".into(), "-".into()], ..ok.clone() },
            CurvesConfig { out: "-".into(), ..ok.clone() },
            CurvesConfig { inputs: vec![], ..ok.clone() },
            CurvesConfig { width: 10, ..ok.clone() },
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(LewelError::Usage(_))), "{c:?}");
        }
    }
}
