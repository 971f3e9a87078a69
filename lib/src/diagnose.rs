//! Training diagnostics: the collapse watch behind pre-training's collapse `warn` events.
//!
//! A self-distillation run (LEWEL_B, BYOL) collapses when the online network learns to output (nearly) the same
//! vector for every image: the collapse indicator (std over the batch of the L2-normalised global embedding,
//! `collapse_std` in `step` events) falls far below its healthy value 1/√K, and the normalised-MSE loss goes to 0.
//! Contrastive runs (LEWEL_M, MoCo v2) show it in the indicator only (their loss then sits near ln(1 + queue)).
//!
//! A short dip is part of healthy training: the official 200-epoch LEWEL_B log dips to a loss of 0.097 at step 150
//! (`reference/lewel-official.md` §9) and recovers within a hundred steps. So a step counts as collapsed only when
//! the indicator is below [`LOW_FRACTION`]/√K or (normalised-MSE losses) the loss is below [`NEAR_ZERO_LOSS`], and
//! the watch warns only after [`CollapseWatch::window`] such steps in a row: 100 steps, or 1 % of the run when that
//! is longer (2,502 steps for the official 250,200-step run). It warns again every 5 windows while the collapse
//! persists, and anew after a recovery.

use crate::model::Method;

/// A step is collapsed when `collapse_std` is below this fraction of the healthy 1/√K.
pub const LOW_FRACTION: f64 = 0.5;
/// ... or, for LEWEL_B and BYOL (total loss in [0, 8]), when the loss is below this (the official dip: 0.097).
pub const NEAR_ZERO_LOSS: f64 = 0.02;
/// The shortest window of collapsed steps that warns.
pub const MIN_WINDOW: u64 = 100;

/// Counts consecutive collapsed steps and says when to warn.
#[derive(Debug, Clone)]
pub struct CollapseWatch {
    healthy: f64,
    mse_loss: bool,
    window: u64,
    run: u64,
}

impl CollapseWatch {
    /// For a run of `method` with output dimension `proj_dim` (K) and `total_steps` steps.
    pub fn new(method: Method, proj_dim: i64, total_steps: u64) -> Self {
        CollapseWatch {
            healthy: 1.0 / (proj_dim.max(1) as f64).sqrt(),
            mse_loss: matches!(method, Method::LewelB | Method::Byol),
            window: MIN_WINDOW.max(total_steps / 100),
            run: 0,
        }
    }

    /// Consecutive collapsed steps needed for a warning.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Feeds the finished step `step` (1-based, as in `step` events): the warning to emit, if one is due.
    pub fn observe(&mut self, step: u64, loss: f64, collapse_std: f64) -> Option<String> {
        let low = collapse_std < LOW_FRACTION * self.healthy;
        let zero = self.mse_loss && loss < NEAR_ZERO_LOSS;
        if !(low || zero) {
            self.run = 0;
            return None;
        }
        self.run += 1;
        if self.run < self.window || (self.run - self.window) % (5 * self.window) != 0 {
            return None;
        }
        let why = match (low, zero) {
            (true, true) => format!(
                "collapse indicator {collapse_std:.4} (healthy 1/sqrt(K) = {:.4}) and loss {loss:.4}",
                self.healthy
            ),
            (true, false) => {
                format!("collapse indicator {collapse_std:.4} (healthy 1/sqrt(K) = {:.4})", self.healthy)
            }
            _ => format!("loss {loss:.4} (near 0: the online network predicts the target trivially)"),
        };
        Some(format!(
            "the run looks collapsed at step {step}: {why} for the last {} steps. The outputs hardly depend on the \
             image; features from here on are likely worse than the random backbone's. Usual causes at small scale: \
             an EMAN target with a high --ema-momentum (its BN statistics calibrate slowly: try --ema params or \
             0.98), too high a --lr, too short a warm-up (see `plot-events` for the curves)",
            self.run
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The warning steps of a run fed `f(step)` = (loss, collapse_std) for steps 1..=n.
    fn warnings(mut w: CollapseWatch, n: u64, f: impl Fn(u64) -> (f64, f64)) -> Vec<u64> {
        (1..=n)
            .filter(|&s| {
                let (l, c) = f(s);
                w.observe(s, l, c).is_some()
            })
            .collect()
    }

    /// The official 200-epoch LEWEL_B log (K 256, 250,200 steps): the loss through its dip (2.68, 0.386, 0.097,
    /// 0.223, 0.591 at steps 50..250), even with a collapse indicator at a quarter of healthy for 500 steps, warns
    /// nothing.
    #[test]
    fn the_official_early_dip_does_not_warn() {
        let w = CollapseWatch::new(Method::LewelB, 256, 250_200);
        assert_eq!(w.window(), 2502);
        let points = [(0.0, 3.97), (50.0, 2.68), (100.0, 0.386), (150.0, 0.097), (200.0, 0.223), (250.0, 0.591)];
        let loss = |s: u64| {
            let s = s as f64;
            match points.windows(2).find(|w| s <= w[1].0) {
                Some(w) => w[0].1 + (w[1].1 - w[0].1) * (s - w[0].0) / (w[1].0 - w[0].0),
                None => 0.59,
            }
        };
        let healthy = 1.0 / 16.0;
        assert!(
            warnings(w, 20_000, |s| (loss(s), if (50..550).contains(&s) { healthy / 4.0 } else { healthy })).is_empty()
        );
    }

    /// The small-preset collapse of BENCHMARKS.md (K 128, 1,872 steps): the indicator at 0.028-0.035 for steps
    /// 250-400 warns once, at the 100th collapsed step; a persisting collapse warns again every 500 steps; a dip
    /// shorter than the window does not warn.
    #[test]
    fn a_sustained_collapse_warns_once_then_again_while_it_lasts() {
        let w = CollapseWatch::new(Method::Byol, 128, 1872);
        assert_eq!(w.window(), 100);
        let std = |s: u64| if (250..=400).contains(&s) { 0.03 } else { 0.07 };
        assert_eq!(warnings(w.clone(), 1872, |s| (0.5, std(s))), vec![349]);
        assert_eq!(
            warnings(w.clone(), 1872, |s| (0.5, if s >= 100 { 0.01 } else { 0.07 })),
            vec![199, 699, 1199, 1699]
        );
        assert!(warnings(w.clone(), 1872, |s| (0.5, if (300..380).contains(&s) { 0.0 } else { 0.07 })).is_empty());
        // the loss alone: near 0 for BYOL, while an InfoNCE loss is never compared with 0
        assert_eq!(warnings(w, 300, |s| (if s > 50 { 0.001 } else { 1.0 }, 0.07)), vec![150]);
        let m = CollapseWatch::new(Method::MocoV2, 128, 1872);
        assert!(warnings(m.clone(), 300, |_| (0.001, 0.07)).is_empty());
        assert_eq!(warnings(m, 300, |_| (8.0, 0.001)), vec![100]);
    }

    #[test]
    fn the_message_names_the_numbers_and_the_remedies() {
        let mut w = CollapseWatch::new(Method::LewelB, 64, 100);
        let msg = (1..=100).filter_map(|s| w.observe(s, 0.01, 0.001)).next().unwrap();
        assert!(msg.contains("step 100") && msg.contains("0.0010") && msg.contains("0.1250"), "{msg}");
        assert!(msg.contains("--ema params") && msg.contains("loss 0.0100"), "{msg}");
    }
}
