//! Fault injection for the reliability tests (RELIABILITY.md): faults a test cannot cause from outside the
//! process at a chosen moment. Off unless the environment variable `LEWEL_FAULT` is set; read once.
//!
//! `LEWEL_FAULT` holds comma-separated faults:
//!
//! - `slow-write=MS`: every atomic write ([`crate::fsio::write_atomic`]) pauses MS milliseconds after half of
//!   its bytes are in the temp file, so a test can kill the process in the middle of a checkpoint write.
//! - `nan-loss=STEP`: the training loop sees a NaN loss at global step STEP (numbered as in `step` events,
//!   from 1), the way a real divergence shows up: exit 3, the step named, the last checkpoint kept.
//!
//! Three bugs for the learning guard's negative controls (`tools/pretrain/tests/learning.rs`): a guard that
//! passes with one of them on would not guard anything.
//!
//! - `detach-backbone`: the online backbone's output is detached before the neck, so the backbone gets no
//!   gradient (a misplaced `detach` or `no_grad`);
//! - `frozen-ema`: the target network is never updated (a lost EMA step);
//! - `negated-loss`: the optimiser climbs the loss instead of descending it (a flipped sign).
//!
//! HACK: a switch in the product for the tests' sake; it changes nothing when the variable is unset, and
//! nothing in the product sets it.

use std::sync::OnceLock;

/// The name of the environment variable.
pub const VAR: &str = "LEWEL_FAULT";

/// The faults asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Faults {
    pub slow_write_ms: Option<u64>,
    pub nan_loss_step: Option<u64>,
    pub detach_backbone: bool,
    pub frozen_ema: bool,
    pub negated_loss: bool,
}

impl Faults {
    /// Parses the value of `LEWEL_FAULT`; an unknown or malformed fault is reported on stderr and ignored.
    pub fn parse(spec: &str) -> Faults {
        let mut f = Faults::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            match (k, v.parse::<u64>()) {
                ("slow-write", Ok(ms)) => f.slow_write_ms = Some(ms),
                ("nan-loss", Ok(step)) => f.nan_loss_step = Some(step),
                ("detach-backbone", _) if v.is_empty() => f.detach_backbone = true,
                ("frozen-ema", _) if v.is_empty() => f.frozen_ema = true,
                ("negated-loss", _) if v.is_empty() => f.negated_loss = true,
                _ => eprintln!(
                    "lewel: warning: ignoring {VAR} entry {item:?} (want slow-write=MS, nan-loss=STEP, \
                     detach-backbone, frozen-ema or negated-loss)"
                ),
            }
        }
        f
    }
}

/// The faults of this process (none unless `LEWEL_FAULT` is set).
pub fn active() -> &'static Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    FAULTS.get_or_init(|| std::env::var(VAR).map(|s| Faults::parse(&s)).unwrap_or_default())
}

/// The loss the training loop sees at global step `step` (from 1): `loss`, or NaN where injected.
pub fn loss_at(step: u64, loss: f64) -> f64 {
    if active().nan_loss_step == Some(step) {
        f64::NAN
    } else {
        loss
    }
}

/// Pauses an atomic write where `slow-write` asks for it.
pub fn pause_in_write() {
    if let Some(ms) = active().slow_write_ms {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_faults_and_ignores_the_rest() {
        assert_eq!(Faults::parse(""), Faults::default());
        assert_eq!(
            Faults::parse("slow-write=40, nan-loss=5"),
            Faults { slow_write_ms: Some(40), nan_loss_step: Some(5), ..Faults::default() }
        );
        assert_eq!(
            Faults::parse("detach-backbone,frozen-ema,negated-loss"),
            Faults { detach_backbone: true, frozen_ema: true, negated_loss: true, ..Faults::default() }
        );
        assert_eq!(Faults::parse("frozen-ema=1"), Faults::default());
        assert_eq!(Faults::parse("nan-loss=x,bogus"), Faults::default());
    }
}
