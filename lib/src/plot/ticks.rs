//! Axis ticks at "nice" numbers: a spacing of 1, 2, 2.5 or 5 × 10^k, and labels that show just enough
//! digits (`0.25`, `1.5e-4`, `250k`).

/// The tick spacing for a span of `span` with about `target` intervals: the smallest of
/// 1, 2, 2.5, 5 × 10^k that is at least `span / target`.
pub fn nice_step(span: f64, target: usize) -> f64 {
    if span.is_nan() || span <= 0.0 || span.is_infinite() {
        return 1.0;
    }
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0] {
        if m * mag >= raw * (1.0 - 1e-9) {
            return m * mag;
        }
    }
    10.0 * mag
}

/// The multiples of `step` inside `[lo, hi]` (ends included, with a little rounding slack).
pub fn ticks_with_step(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    if step.is_nan() || step <= 0.0 || hi.is_nan() || lo.is_nan() || hi < lo {
        return vec![];
    }
    let k0 = (lo / step - 1e-9).ceil() as i64;
    let k1 = (hi / step + 1e-9).floor() as i64;
    (k0..=k1).map(|k| if k == 0 { 0.0 } else { k as f64 * step }).collect()
}

/// About `target` nice ticks inside `[lo, hi]`, and their spacing.
pub fn ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let step = nice_step(hi - lo, target);
    (ticks_with_step(lo, hi, step), step)
}

/// `[lo, hi]` widened outwards to multiples of a nice step (so the axis ends on ticks), and the step.
pub fn loose_range(lo: f64, hi: f64, target: usize) -> (f64, f64, f64) {
    let step = nice_step(hi - lo, target);
    ((lo / step + 1e-9).floor() * step, (hi / step - 1e-9).ceil() * step, step)
}

/// How many decimals it takes to write multiples of `step` exactly (at most 12).
pub fn decimals(step: f64) -> usize {
    for d in 0..=12 {
        let x = step * 10f64.powi(d as i32);
        if (x - x.round()).abs() < 1e-6 * x.abs().max(1.0) {
            return d;
        }
    }
    12
}

fn minus(s: String) -> String {
    match s.strip_prefix('-') {
        Some(rest) => format!("\u{2212}{rest}"),
        None => s,
    }
}

/// Labels for ticks spaced `step` apart, all in one style:
/// plain decimals (`0.996`), thousands and millions (`250k`, `1.5M`) for large steps, or
/// `1.5e-4` for tiny values. Negative numbers get a real minus sign.
pub fn labels(ticks: &[f64], step: f64) -> Vec<String> {
    let big = ticks.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let zero = |v: f64| v.abs() < step * 1e-6;
    let suffixed = |div: f64, suffix: &str| -> Vec<String> {
        let d = decimals(step / div);
        ticks.iter().map(|&v| if zero(v) { "0".into() } else { minus(format!("{:.d$}{suffix}", v / div)) }).collect()
    };
    if big >= 1e6 && step >= 1e5 {
        return suffixed(1e6, "M");
    }
    if big >= 1e4 && step >= 100.0 {
        return suffixed(1e3, "k");
    }
    let d = decimals(step);
    if d > 4 && big < 1e-2 {
        return ticks
            .iter()
            .map(|&v| {
                if zero(v) {
                    return "0".into();
                }
                let exp = (v.abs().log10() + 1e-9).floor() as i32;
                let mant = v / 10f64.powi(exp);
                let md = decimals(step / 10f64.powi(exp)).min(3);
                let m = format!("{mant:.md$}");
                let m = if m.contains('.') { m.trim_end_matches('0').trim_end_matches('.').to_string() } else { m };
                minus(format!("{m}e{exp}")).replace("e-", "e\u{2212}")
            })
            .collect();
    }
    ticks.iter().map(|&v| if zero(v) { "0".into() } else { minus(format!("{v:.d$}")) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn steps_are_nice() {
        assert_eq!(nice_step(1.0, 5), 0.2);
        assert_eq!(nice_step(200.0, 5), 50.0);
        assert_eq!(nice_step(10.0, 4), 2.5);
        assert_eq!(nice_step(100.0, 10), 10.0);
        assert!((nice_step(0.004, 5) - 0.001).abs() < 1e-15);
        assert_eq!(nice_step(0.0, 5), 1.0);
        assert_eq!(nice_step(f64::NAN, 5), 1.0);
    }

    #[test]
    fn ticks_stay_inside_and_land_on_multiples() {
        let (t, s) = ticks(0.0, 1.0, 5);
        assert_eq!(s, 0.2);
        assert!(close(&t, &[0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]), "{t:?}");
        let (t, _) = ticks(13.0, 197.0, 5);
        assert_eq!(t, vec![50.0, 100.0, 150.0]);
        let (t, _) = ticks(-1.0, 1.0, 4);
        assert_eq!(t, vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
        assert_eq!(ticks_with_step(1.0, 0.0, 1.0), Vec::<f64>::new());
    }

    #[test]
    fn loose_range_ends_on_ticks() {
        let (lo, hi, step) = loose_range(0.33, 4.1, 5);
        assert_eq!((lo, hi, step), (0.0, 5.0, 1.0));
        let (lo, hi, step) = loose_range(0.9962, 1.0, 4);
        assert!((step - 0.001).abs() < 1e-15 && (lo - 0.996).abs() < 1e-12 && (hi - 1.0).abs() < 1e-12);
    }

    #[test]
    fn labels_show_just_enough_digits() {
        assert_eq!(labels(&[0.0, 0.5, 1.0], 0.5), ["0", "0.5", "1.0"]);
        assert_eq!(labels(&[0.996, 0.998, 1.0], 0.002), ["0.996", "0.998", "1.000"]);
        assert_eq!(labels(&[0.0, 2.5, 5.0], 2.5), ["0", "2.5", "5.0"]);
        assert_eq!(labels(&[0.0, 50.0, 100.0], 50.0), ["0", "50", "100"]);
        assert_eq!(labels(&[0.0, 25000.0, 50000.0], 25000.0), ["0", "25k", "50k"]);
        assert_eq!(labels(&[0.0, 2500.0, 12500.0], 2500.0), ["0", "2.5k", "12.5k"]);
        assert_eq!(labels(&[1e6, 1.5e6], 5e5), ["1.0M", "1.5M"]);
        assert_eq!(labels(&[0.0, 5e-5, 1e-4, 1.5e-4], 5e-5), ["0", "5e\u{2212}5", "1e\u{2212}4", "1.5e\u{2212}4"]);
        assert_eq!(labels(&[-0.5, 0.0], 0.5), ["\u{2212}0.5", "0"]);
        assert_eq!(labels(&[0.0001, 0.0002], 0.0001), ["0.0001", "0.0002"]);
        assert_eq!(decimals(0.0005), 4);
        assert_eq!(decimals(3.0), 0);
    }
}
