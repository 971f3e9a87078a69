//! Learning-rate and EMA-momentum schedules: the one home of warm-up + cosine, step decay and cosine, for
//! pre-training, finetune-semi ([`LrSchedule`], per step) and the linear probe (per epoch).
//!
//! LEWEL: <https://arxiv.org/abs/2203.14898>. Ports `utils/lr_schedule.py` (`warmup_learning_rate`,
//! `adjust_learning_rate` with `--cos`) and the momentum formula of `momentum_update`, as described in
//! `reference/lewel-official.md` §5.3 and §3. LEWEL_M and MoCo v2 keep the momentum fixed
//! ([`EmaSchedule::Constant`]; paper: "fix the momentum of encoder to 0.999").

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

/// How the EMA momentum evolves over the run.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum EmaSchedule {
    /// From the base momentum to 1 along a cosine ([`ema_momentum`]; LEWEL_B, BYOL).
    #[default]
    #[serde(rename = "cosine")]
    Cosine,
    /// The base momentum at every step (LEWEL_M, MoCo: 0.999).
    #[serde(rename = "constant")]
    Constant,
}

impl EmaSchedule {
    /// The momentum of global step `cur_iter` (0-based) out of `max_iter`.
    pub fn momentum(self, base: f64, cur_iter: u64, max_iter: u64) -> f64 {
        match self {
            EmaSchedule::Cosine => ema_momentum(base, cur_iter, max_iter),
            EmaSchedule::Constant => base,
        }
    }
}

/// The learning-rate schedule the loop applies to every base learning rate of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LrSchedule {
    /// Per-step linear warm-up over `warmup_epochs`, then a cosine constant within each epoch
    /// ([`lr_at`]; the official pre-training schedule).
    WarmupCosine { warmup_epochs: u64 },
    /// Step decay per epoch: the base lr times `gamma` for every milestone `<=` the epoch (the official
    /// semi-supervised and linear schedules: ×0.1 at 30 and 40 of 50).
    Steps { milestones: Vec<u64>, gamma: f64 },
}

impl LrSchedule {
    /// The lr of step `in_epoch` of (0-based) `epoch` for a base lr `base`.
    pub fn lr(&self, base: f64, epochs: u64, epoch: u64, in_epoch: u64, steps_per_epoch: u64) -> f64 {
        match self {
            LrSchedule::WarmupCosine { warmup_epochs } => {
                lr_at(base, *warmup_epochs, epochs, epoch, in_epoch, steps_per_epoch)
            }
            LrSchedule::Steps { milestones, gamma } => step_decay(base, milestones, *gamma, epoch),
        }
    }
}

/// Step decay per epoch: `base` times `gamma` once for every milestone `<=` the (0-based) `epoch`, multiplied in
/// turn as the official scripts do (`for m in schedule: lr *= 0.1 if epoch >= m else 1.`).
pub fn step_decay(base: f64, milestones: &[u64], gamma: f64, epoch: u64) -> f64 {
    milestones.iter().filter(|&&m| epoch >= m).fold(base, |lr, _| lr * gamma)
}

/// A cosine over the epochs without warm-up, constant within an epoch: `base·½·(1 + cos(π·epoch / epochs))`, the
/// full lr at epoch 0 and a small non-zero one at the last ([`lr_at`] with no warm-up; `main_lincls.py --cos`).
pub fn cosine(base: f64, epochs: u64, epoch: u64) -> f64 {
    lr_at(base, 0, epochs, epoch, 0, 1)
}

/// The learning rate of step `iter` (0-based) of epoch `epoch` (0-based).
///
/// While `epoch < warmup_epochs`: per-step linear warmup `base·min(1, (epoch·iters + iter + 1) / (warmup·iters))`,
/// so the first step uses base/(warmup·iters). Afterwards a per-epoch cosine, constant within an epoch:
/// `base·½·(1 + cos(π·(epoch − warmup) / (epochs − warmup)))` (no minimum; the last epoch is not 0).
pub fn lr_at(base_lr: f64, warmup_epochs: u64, epochs: u64, epoch: u64, iter: u64, iters_per_epoch: u64) -> f64 {
    if epoch < warmup_epochs {
        let done = (epoch * iters_per_epoch + iter + 1) as f64;
        let total = (warmup_epochs * iters_per_epoch) as f64;
        return base_lr * (done / total).min(1.0);
    }
    let span = epochs.saturating_sub(warmup_epochs);
    if span == 0 {
        return base_lr;
    }
    // π·(epoch − warmup) first, then the division: Python's left-to-right order in the official
    // `math.cos(math.pi * (epoch - warmup) / (epochs - warmup))`, so the lr equals it to the last bit.
    base_lr * 0.5 * (1.0 + (PI * (epoch - warmup_epochs) as f64 / span as f64).cos())
}

/// The EMA momentum of global step `cur_iter` (0-based, `epoch·iters + i`) out of `max_iter = epochs·iters`:
/// `1 − (1 − base)·(cos(π·cur/max) + 1)/2`, rising from `base` at step 0 towards 1.
pub fn ema_momentum(base: f64, cur_iter: u64, max_iter: u64) -> f64 {
    if max_iter == 0 {
        return base;
    }
    1.0 - (1.0 - base) * ((PI * cur_iter as f64 / max_iter as f64).cos() + 1.0) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    // The official 100-epoch log (§9): base 3.6, warmup 10, 1251 iterations per epoch.
    const IT: u64 = 1251;

    #[test]
    fn warmup_matches_the_log() {
        let first = lr_at(3.6, 10, 100, 0, 0, IT);
        assert!(close(first, 3.6 / 12510.0, 1e-18));
        assert!(close(first, 2.8777e-4, 5e-9));
        assert!(close(lr_at(3.6, 10, 100, 0, 1250, IT), 0.36, 1e-12));
        assert!(close(lr_at(3.6, 10, 100, 9, 1250, IT), 3.6, 1e-12));
        // warmup steps increase strictly
        assert!(lr_at(3.6, 10, 100, 3, 7, IT) < lr_at(3.6, 10, 100, 3, 8, IT));
    }

    #[test]
    fn cosine_matches_the_log() {
        assert!(close(lr_at(3.6, 10, 100, 10, 0, IT), 3.6, 1e-12));
        assert_eq!(lr_at(3.6, 10, 100, 10, 0, IT), lr_at(3.6, 10, 100, 10, 1250, IT)); // constant in an epoch
        assert!(close(lr_at(3.6, 10, 100, 40, 5, IT), 2.7, 1e-12));
        assert!(close(lr_at(3.6, 10, 100, 55, 5, IT), 1.8, 1e-12));
        assert!(close(lr_at(3.6, 10, 100, 70, 5, IT), 0.9, 1e-12));
        let last = lr_at(3.6, 10, 100, 99, 0, IT);
        assert!(close(last, 0.0010965, 5e-8), "{last}");
        // no warmup: cosine from epoch 0
        assert!(close(lr_at(1.0, 0, 10, 0, 0, 5), 1.0, 1e-15));
    }

    #[test]
    fn step_decay_and_cosine() {
        assert_eq!(step_decay(0.4, &[30, 40], 0.1, 29), 0.4);
        assert_eq!(step_decay(0.4, &[30, 40], 0.1, 30), 0.4 * 0.1);
        assert_eq!(step_decay(0.4, &[30, 40], 0.1, 49), 0.4 * 0.1 * 0.1);
        let s = LrSchedule::Steps { milestones: vec![30, 40], gamma: 0.1 };
        assert_eq!(s.lr(0.4, 50, 40, 3, 10), step_decay(0.4, &[30, 40], 0.1, 40));
        assert_eq!(cosine(3.2, 90, 0), 3.2);
        assert!(close(cosine(3.2, 90, 45), 1.6, 1e-12));
        let w = LrSchedule::WarmupCosine { warmup_epochs: 0 };
        assert_eq!(w.lr(3.2, 90, 45, 7, 10), cosine(3.2, 90, 45));
    }

    #[test]
    fn constant_momentum_stays_put() {
        for i in [0, 1, 50, 99, 100] {
            assert_eq!(EmaSchedule::Constant.momentum(0.999, i, 100), 0.999);
            assert_eq!(EmaSchedule::Cosine.momentum(0.98, i, 100), ema_momentum(0.98, i, 100));
        }
        assert_eq!(EmaSchedule::default(), EmaSchedule::Cosine);
        assert_eq!(serde_json::to_value(EmaSchedule::Constant).unwrap(), "constant");
    }

    #[test]
    fn momentum_matches_the_log() {
        let max = 100 * IT;
        assert_eq!(ema_momentum(0.98, 0, max), 0.98);
        // MOM at the last logged line of epoch 10 / 50, and at the very end
        assert!(close(ema_momentum(0.98, 10 * IT + 1250, max), 0.98059, 5e-6));
        assert!(close(ema_momentum(0.98, 50 * IT + 1250, max), 0.99031, 5e-6));
        let end = ema_momentum(0.98, max - 1, max);
        assert!(close(1.0 - end, 3.2e-12, 1e-13), "{}", 1.0 - end);
        // the golden step test: the second update uses m(1, 100)
        assert!(close(ema_momentum(0.98, 1, 100), 0.980004934396, 1e-12));
    }
}
