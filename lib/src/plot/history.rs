//! Reads `events.jsonl` files (see [`crate::events`] for the schema) into per-run histories.
//!
//! What is kept: from `start`, the method (`model.method`) and projection width (`model.proj_dim`);
//! from `step`, the loss terms, lr, EMA momentum and collapse indicator; from `epoch`, where each epoch
//! ended (to turn steps into epochs); from `eval`, every `*_pct` metric. Other events and keys are
//! ignored, so newer writers stay readable.
//!
//! **Resume.** A resumed run appends a second `start` to the same file and logs again from the step
//! after its checkpoint, which may repeat steps logged before the crash. The later line wins: the
//! first step after a `start` drops every step, epoch end and evaluation at or after it that came
//! before, and any later repeat of a step replaces the earlier one.
//!
//! **Bad lines** (not JSON, not an object, no `event`, a `step` event without a usable `step`) are
//! skipped and reported through the `warn` callback: the first few one by one, the rest as a count.

use std::collections::BTreeMap;
use std::io::BufRead;

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use crate::events::SCHEMA_VERSION;

/// How many bad lines of one file are reported one by one before they are only counted.
pub const BAD_LINES_SHOWN: usize = 5;

/// The values of one `step` event that the plots use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepPoint {
    pub epoch: Option<f64>,
    pub loss: Option<f64>,
    pub loss_global: Option<f64>,
    pub loss_aligned: Option<f64>,
    pub lr: Option<f64>,
    pub ema_momentum: Option<f64>,
    pub collapse_std: Option<f64>,
    /// The target's collapse indicator.
    pub target_collapse_std: Option<f64>,
    /// ‖Δw‖/‖w‖ of the backbone's adapted weights: median and minimum over the tensors.
    pub update_ratio_median: Option<f64>,
    pub update_ratio_min: Option<f64>,
    /// LEWEL: the mean alignment-map entropy over that of uniform maps.
    pub map_entropy_ratio: Option<f64>,
}

/// One `eval` event: where it happened and its `*_pct` metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalPoint {
    pub step: Option<u64>,
    pub epoch: Option<f64>,
    pub metrics: BTreeMap<String, f64>,
}

/// One run's events, deduplicated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// `model.method` of the last `start` that had one (`lewel-b`, `byol`, ...).
    pub method: Option<String>,
    /// `model.proj_dim` (K) of the last `start` that had one.
    pub proj_dim: Option<u64>,
    /// How many `start` events the file holds (2 or more after a resume).
    pub starts: usize,
    /// Events read (JSON objects with an `event` key).
    pub events: usize,
    /// Lines skipped as unreadable.
    pub bad_lines: usize,
    /// Step → values; the last line logged for a step wins.
    pub steps: BTreeMap<u64, StepPoint>,
    /// Epoch → the step at which it ended (from `epoch` events).
    pub epoch_ends: BTreeMap<u64, u64>,
    /// Evaluations in order of step (or epoch when they carry no step).
    pub evals: Vec<EvalPoint>,
}

fn num(o: &Map<String, Value>, key: &str) -> Option<f64> {
    o.get(key).and_then(Value::as_f64).filter(|v| v.is_finite())
}

fn uint(o: &Map<String, Value>, key: &str) -> Option<u64> {
    let v = o.get(key)?;
    v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 9e15).map(|f| f as u64))
}

/// Reads one events file. `warn(message, line)` hears about every skipped line (see the module docs).
/// Fails only on an I/O error.
pub fn read_history(mut reader: impl BufRead, warn: &mut dyn FnMut(String, Option<usize>)) -> Result<History> {
    let mut h = History::default();
    let mut resumed = false;
    let mut newer_warned = false;
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let bad = |h: &mut History, line: usize, why: String, warn: &mut dyn FnMut(String, Option<usize>)| {
        h.bad_lines += 1;
        if h.bad_lines <= BAD_LINES_SHOWN {
            warn(format!("line {line}: {why}; skipped"), Some(line));
        }
    };
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).context("read failed")?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t.trim(),
            Err(_) => {
                bad(&mut h, line_no, "not UTF-8 text".into(), warn);
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        let obj = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                bad(&mut h, line_no, "a JSON value but not an object".into(), warn);
                continue;
            }
            Err(e) => {
                bad(&mut h, line_no, format!("not JSON ({e})"), warn);
                continue;
            }
        };
        let Some(kind) = obj.get("event").and_then(Value::as_str) else {
            bad(&mut h, line_no, "no \"event\" key".into(), warn);
            continue;
        };
        if let Some(v) = uint(&obj, "v") {
            if v > SCHEMA_VERSION && !newer_warned {
                newer_warned = true;
                warn(
                    format!("line {line_no}: schema v={v} is newer than v={SCHEMA_VERSION}; plotting the keys this version knows"),
                    Some(line_no),
                );
            }
        }
        h.events += 1;
        match kind {
            "start" => {
                h.starts += 1;
                resumed = !h.steps.is_empty();
                if let Some(m) = obj.get("model.method").or_else(|| obj.get("method")).and_then(Value::as_str) {
                    h.method = Some(m.to_string());
                }
                if let Some(k) = uint(&obj, "model.proj_dim").or_else(|| uint(&obj, "proj_dim")) {
                    h.proj_dim = Some(k);
                }
            }
            "step" => {
                let Some(step) = uint(&obj, "step") else {
                    bad(&mut h, line_no, "a step event without a whole-number \"step\"".into(), warn);
                    continue;
                };
                if resumed {
                    // The resumed run rewrites history from here on.
                    resumed = false;
                    h.steps.split_off(&step);
                    h.epoch_ends.retain(|_, s| *s < step);
                    h.evals.retain(|e| e.step.is_none_or(|s| s < step));
                }
                let p = StepPoint {
                    epoch: num(&obj, "epoch"),
                    loss: num(&obj, "loss"),
                    loss_global: num(&obj, "loss_global"),
                    loss_aligned: num(&obj, "loss_aligned"),
                    lr: num(&obj, "lr"),
                    ema_momentum: num(&obj, "ema_momentum"),
                    collapse_std: num(&obj, "collapse_std"),
                    target_collapse_std: num(&obj, "target_collapse_std"),
                    update_ratio_median: num(&obj, "update_ratio_median"),
                    update_ratio_min: num(&obj, "update_ratio_min"),
                    map_entropy_ratio: num(&obj, "map_entropy_ratio"),
                };
                h.steps.insert(step, p);
            }
            "epoch" => {
                if let (Some(e), Some(s)) = (uint(&obj, "epoch"), uint(&obj, "step")) {
                    h.epoch_ends.insert(e, s);
                }
            }
            "eval" => {
                let metrics: BTreeMap<String, f64> = obj
                    .iter()
                    .filter(|(k, _)| k.ends_with("_pct"))
                    .filter_map(|(k, v)| v.as_f64().filter(|f| f.is_finite()).map(|f| (k.clone(), f)))
                    .collect();
                if metrics.is_empty() {
                    continue;
                }
                let e = EvalPoint { step: uint(&obj, "step"), epoch: num(&obj, "epoch"), metrics };
                // The same evaluation logged again (after a resume): the later one wins.
                h.evals.retain(|o| match (o.step, e.step) {
                    (Some(a), Some(b)) => a != b,
                    (None, None) => o.epoch != e.epoch,
                    _ => true,
                });
                h.evals.push(e);
            }
            _ => {}
        }
    }
    if h.bad_lines > BAD_LINES_SHOWN {
        warn(format!("{} more unreadable lines skipped", h.bad_lines - BAD_LINES_SHOWN), None);
    }
    h.evals.sort_by(|a, b| {
        let key = |e: &EvalPoint| (e.step.map(|s| s as f64).unwrap_or(f64::INFINITY), e.epoch.unwrap_or(0.0));
        key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal)
    });
    Ok(h)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

impl History {
    /// Steps per epoch: from the `epoch` events (the step at which each epoch ended), else from the
    /// first step logged in each epoch. `None` when the file cannot tell (a single epoch, no epoch events).
    pub fn steps_per_epoch(&self) -> Option<f64> {
        let rates = |pairs: Vec<(f64, f64)>| -> Vec<f64> {
            pairs
                .windows(2)
                .filter(|w| w[1].0 > w[0].0 && w[1].1 > w[0].1)
                .map(|w| (w[1].1 - w[0].1) / (w[1].0 - w[0].0))
                .collect()
        };
        let ends: Vec<(f64, f64)> = self.epoch_ends.iter().map(|(&e, &s)| (e as f64, s as f64)).collect();
        if let Some(r) = median(rates(ends.clone())) {
            return Some(r);
        }
        if let [(e, s)] = ends[..] {
            if s > 0.0 {
                // One epoch event: count epochs from 1 (an epoch 0 that ended at step s also gives s).
                return Some(s / e.max(1.0));
            }
        }
        let mut first: BTreeMap<i64, u64> = BTreeMap::new();
        for (&s, p) in &self.steps {
            if let Some(e) = p.epoch {
                first.entry(e.floor() as i64).or_insert(s);
            }
        }
        median(rates(first.into_iter().map(|(e, s)| (e as f64, s as f64)).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> (History, Vec<(String, Option<usize>)>) {
        let mut warnings = Vec::new();
        let h = read_history(text.as_bytes(), &mut |m, l| warnings.push((m, l))).unwrap();
        (h, warnings)
    }

    fn step(s: u64, loss: f64) -> String {
        format!(r#"{{"v":1,"tool":"pretrain","event":"step","step":{s},"epoch":0,"loss":{loss},"lr":0.1}}"#)
    }

    #[test]
    fn reads_start_steps_and_ignores_unknown_things() {
        let text = [
            r#"{"v":1,"tool":"pretrain","event":"start","model.method":"lewel-b","model.proj_dim":256,"seed":0}"#,
            r#"{"v":1,"tool":"pretrain","event":"step","step":1,"epoch":0,"loss":3.5,"loss_global":1.5,"loss_aligned":2.0,"lr":0.1,"ema_momentum":0.996,"collapse_std":0.06,"shiny_new_key":[1,2]}"#,
            r#"{"v":1,"tool":"pretrain","event":"telemetry","gpu":"h100"}"#,
            r#"{"v":1,"tool":"pretrain","event":"eval","epoch":1,"step":1,"knn_top1_pct":12.5,"k":20}"#,
            "",
        ]
        .join("\n");
        let (h, w) = read(&text);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(h.method.as_deref(), Some("lewel-b"));
        assert_eq!(h.proj_dim, Some(256));
        assert_eq!(h.events, 4);
        let p = &h.steps[&1];
        assert_eq!(
            (p.loss, p.loss_aligned, p.ema_momentum, p.collapse_std),
            (Some(3.5), Some(2.0), Some(0.996), Some(0.06))
        );
        assert_eq!(h.evals.len(), 1);
        assert_eq!(h.evals[0].metrics["knn_top1_pct"], 12.5);
        assert_eq!(h.evals[0].metrics.len(), 1, "only *_pct keys are metrics");
    }

    #[test]
    fn resume_keeps_the_last_value_per_step() {
        let mut lines = vec![r#"{"v":1,"tool":"pretrain","event":"start"}"#.to_string()];
        for s in 1..=10 {
            lines.push(step(s, 10.0));
        }
        lines.push(r#"{"v":1,"tool":"pretrain","event":"eval","step":8,"top1_pct":5}"#.into());
        // Crash after step 10; the last checkpoint was step 6: the resumed run logs 7.. again.
        lines.push(r#"{"v":1,"tool":"pretrain","event":"start"}"#.into());
        for s in 7..=8 {
            lines.push(step(s, 1.0));
        }
        let (h, w) = read(&lines.join("\n"));
        assert!(w.is_empty());
        assert_eq!(h.starts, 2);
        assert_eq!(h.steps.keys().copied().collect::<Vec<_>>(), (1..=8).collect::<Vec<u64>>(), "9 and 10 were undone");
        assert_eq!(h.steps[&6].loss, Some(10.0));
        assert_eq!(h.steps[&7].loss, Some(1.0));
        assert!(h.evals.is_empty(), "the eval at step 8 came from the undone attempt");

        // A step repeated without a new start (a logger that retried) also keeps the last value.
        let (h, _) = read(&[step(1, 5.0), step(2, 5.0), step(2, 4.0)].join("\n"));
        assert_eq!(h.steps[&2].loss, Some(4.0));
        assert_eq!(h.steps.len(), 2);
    }

    #[test]
    fn bad_lines_warn_with_line_numbers_and_are_capped() {
        let mut lines = vec![step(1, 1.0), "not json".into(), "[1,2]".into(), r#"{"step":3}"#.into()];
        lines.push(r#"{"v":1,"event":"step","loss":1}"#.into());
        for _ in 0..10 {
            lines.push("{truncated".into());
        }
        lines.push(step(2, 0.5));
        let (h, w) = read(&lines.join("\n"));
        assert_eq!(h.steps.len(), 2);
        assert_eq!(h.bad_lines, 14);
        assert_eq!(w.len(), BAD_LINES_SHOWN + 1);
        assert_eq!(w[0].1, Some(2));
        assert!(w[0].0.contains("line 2: not JSON"), "{}", w[0].0);
        assert!(w[2].0.contains("no \"event\""));
        assert!(w[3].0.contains("without a whole-number \"step\""));
        assert!(w.last().unwrap().0.contains("9 more unreadable lines"));
    }

    #[test]
    fn newer_schema_warns_once_and_reads_on() {
        let text = [
            r#"{"v":2,"tool":"pretrain","event":"step","step":1,"loss":1}"#,
            r#"{"v":2,"tool":"pretrain","event":"step","step":2,"loss":1}"#,
        ]
        .join("\n");
        let (h, w) = read(&text);
        assert_eq!(h.steps.len(), 2);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn steps_per_epoch_from_epoch_events_or_steps() {
        let mut lines = Vec::new();
        for e in 0..3u64 {
            for s in (e * 50 + 1)..=(e * 50 + 50) {
                lines.push(format!(r#"{{"v":1,"tool":"t","event":"step","step":{s},"epoch":{e},"loss":1}}"#));
            }
        }
        let (h, _) = read(&lines.join("\n"));
        assert_eq!(h.steps_per_epoch(), Some(50.0));
        lines.push(r#"{"v":1,"tool":"t","event":"epoch","epoch":1,"step":40}"#.into());
        lines.push(r#"{"v":1,"tool":"t","event":"epoch","epoch":2,"step":80}"#.into());
        let (h, _) = read(&lines.join("\n"));
        assert_eq!(h.steps_per_epoch(), Some(40.0), "epoch events win");
        let (h, _) = read(&step(1, 1.0));
        assert_eq!(h.steps_per_epoch(), None);
    }
}
