//! LARS (the official LEWEL_B optimizer) and plain momentum SGD, with exportable momentum buffers.
//!
//! LEWEL: <https://arxiv.org/abs/2203.14898>. Ports `utils/LARS.py` and the parameter groups of
//! `main.py:collect_params` as described in `reference/lewel-official.md` §5.1 and §5.2.
//!
//! tch's optimizers cannot save their state, so this one keeps its momentum buffers itself and exports them as
//! named tensors `optimizer.momentum_buffer.<param name>`: a checkpoint holding them resumes bit-exactly.

use std::collections::HashMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::ema::EmaMode;

/// Prefix of the exported momentum buffers: `optimizer.momentum_buffer.<param name>`.
pub const MOMENTUM_PREFIX: &str = "optimizer.momentum_buffer.";

/// Which update rule.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum OptimizerKind {
    /// LARS of the official code (§5.1): layer-wise trust ratio, lr inside the momentum buffer.
    #[serde(rename = "lars")]
    Lars,
    /// `torch.optim.SGD` with momentum (no dampening, no nesterov): lr outside the buffer.
    #[serde(rename = "sgd")]
    Sgd,
}

/// Optimizer settings (the lr comes with every [`Optimizer::step`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    /// Momentum (official 0.9).
    pub momentum: f64,
    /// Weight decay of the LARS-adapted group (official EMAN scripts 1.5e-6; the excluded group gets 0).
    pub weight_decay: f64,
    /// η, the LARS trust coefficient (official 0.001).
    pub eta: f64,
    /// Clip the LARS trust ratio at 1 relative to the scheduled lr (`--lars-clip`; off in the official code): the
    /// factor becomes `min(local / lr, 1)`, so an adapted weight never moves faster than plain SGD would move it
    /// (solo-learn's `clip_lr`). Absent from older configurations: off.
    #[serde(default)]
    pub clip: bool,
    /// The EMA mode decides whether the MLP BN gammas (`mlp.1`) are excluded (§5.2).
    pub ema: EmaMode,
}

impl Default for OptimConfig {
    /// The official LEWEL_B (EMAN) optimizer: LARS, momentum 0.9, wd 1.5e-6, η 0.001.
    fn default() -> Self {
        OptimConfig {
            kind: OptimizerKind::Lars,
            momentum: 0.9,
            weight_decay: 1.5e-6,
            eta: 0.001,
            clip: false,
            ema: EmaMode::Eman,
        }
    }
}

impl OptimConfig {
    /// Checks the LARS settings: η finite and > 0 (`--lars-eta`). A usage error naming the flag otherwise.
    pub fn validate(&self) -> Result<(), crate::LewelError> {
        if !(self.eta.is_finite() && self.eta > 0.0) {
            return Err(crate::LewelError::Usage(format!(
                "--lars-eta {}: the LARS trust coefficient must be a finite number > 0 (official 0.001)",
                self.eta
            )));
        }
        Ok(())
    }
}

/// Whether the relative update of a parameter is tracked ([`Optimizer::update_ratios`]): the backbone's adapted
/// (LARS-scaled, weight-decayed) weights, i.e. its convolutions.
fn tracks_update(name: &str, excluded: bool) -> bool {
    !excluded && name.starts_with("online_net.backbone.")
}

/// Whether a parameter goes to the excluded group (no weight decay, LARS factor 1), by its official name:
/// it contains `bn`, `downsample.1` or `bias`, or, in EMAN mode only, `mlp.1` (the MLP BN gammas).
///
/// NOTE(ref): the `mlp.1` clause is the released code's (`sync_bn = "EMAN" in arch`); the released 100-epoch log
/// was produced without it (§5.2).
pub fn is_excluded(name: &str, ema: EmaMode) -> bool {
    name.contains("bn")
        || name.contains("downsample.1")
        || name.contains("bias")
        || (ema == EmaMode::Eman && name.contains("mlp.1"))
}

#[derive(Debug)]
struct Slot {
    name: String,
    param: Tensor,
    excluded: bool,
    /// See [`tracks_update`].
    tracked: bool,
    buf: Option<Tensor>,
}

/// LARS or SGD over named parameters, with the two official parameter groups.
#[derive(Debug)]
pub struct Optimizer {
    cfg: OptimConfig,
    slots: Vec<Slot>,
    /// ‖Δw‖ / ‖w‖ of every tracked slot at the last step (before the update's ‖w‖).
    ratios: Vec<f64>,
}

impl Optimizer {
    /// Groups `params` by [`is_excluded`] on their names (with `cfg.ema`).
    pub fn new(params: Vec<(String, Tensor)>, cfg: &OptimConfig) -> Self {
        let slots = params
            .into_iter()
            .map(|(name, param)| {
                let excluded = is_excluded(&name, cfg.ema);
                Slot { tracked: tracks_update(&name, excluded), excluded, name, param, buf: None }
            })
            .collect();
        Optimizer { cfg: cfg.clone(), slots, ratios: Vec::new() }
    }

    /// The settings.
    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// Names of the excluded group (no wd, no LARS) and of the adapted group, in parameter order.
    pub fn groups(&self) -> (Vec<String>, Vec<String>) {
        let (ex, ad): (Vec<&Slot>, Vec<&Slot>) = self.slots.iter().partition(|s| s.excluded);
        (ex.iter().map(|s| s.name.clone()).collect(), ad.iter().map(|s| s.name.clone()).collect())
    }

    /// Zeroes every gradient.
    ///
    /// NOTE(ref): PyTorch ≥ 2 sets gradients to None and the optimizers skip parameters without one; tch cannot
    /// unset a gradient, so they are zeroed. The two agree because every trainable parameter of LEWEL_B and BYOL
    /// receives a gradient at every step (§11).
    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            s.param.zero_grad();
        }
    }

    /// The gradients of the parameters that have one (handles to the same tensors: an in-place change, such as
    /// the loss scaler's unscaling, is what [`Optimizer::step`] then sees).
    pub fn grads(&self) -> Vec<Tensor> {
        self.slots.iter().map(|s| s.param.grad()).filter(|g| g.defined()).collect()
    }

    /// One update with learning rate `lr`. Parameters without a gradient are skipped.
    ///
    /// LARS (§5.1), per parameter w with gradient g, wd = 0 and factor 1 in the excluded group:
    /// `local = η‖w‖ / (‖g‖ + wd‖w‖)` (f64 scalars), `d = (g + wd·w)·(local·lr)`, `buf = d` at the first step
    /// then `buf = momentum·buf + d`, `w −= buf`. With `clip`, `local` becomes `min(local / lr, 1)`.
    /// SGD: `d = g + wd·w`, `buf = d` then `momentum·buf + d`, `w −= lr·buf`.
    ///
    /// Afterwards [`Optimizer::update_ratios`] holds ‖Δw‖ / ‖w‖ of the backbone's adapted weights.
    pub fn step(&mut self, lr: f64) {
        let on_gpu = self.slots.first().is_some_and(|s| s.param.device().is_cuda());
        if on_gpu && self.cfg.momentum != 0.0 && self.slots.iter().all(|s| s.buf.is_some()) {
            self.step_foreach(lr);
            return;
        }
        let cfg = self.cfg.clone();
        let mut ratios = Vec::new();
        tch::no_grad(|| {
            let (grads, factors) = self.grads_and_factors(lr);
            for ((s, g), local) in self.slots.iter_mut().zip(&grads).zip(factors) {
                if !g.defined() {
                    continue;
                }
                let wd = if s.excluded { 0.0 } else { cfg.weight_decay };
                let d = if wd != 0.0 { g + &s.param * wd } else { g.shallow_clone() };
                let d = match cfg.kind {
                    OptimizerKind::Lars => d * (local * lr), // lr inside the momentum buffer
                    OptimizerKind::Sgd => d,
                };
                let update = if cfg.momentum != 0.0 {
                    match &mut s.buf {
                        Some(buf) => {
                            let _ = buf.g_mul_scalar_(cfg.momentum).g_add_(&d);
                        }
                        None => s.buf = Some(d.detach().copy()),
                    }
                    s.buf.as_ref().map(|b| b.shallow_clone()).unwrap_or(d)
                } else {
                    d
                };
                let update = match cfg.kind {
                    OptimizerKind::Lars => update,
                    OptimizerKind::Sgd => update * lr,
                };
                if s.tracked {
                    ratios.push(update.norm());
                    ratios.push(s.param.norm());
                }
                let _ = s.param.g_sub_(&update);
            }
        });
        self.ratios = pair_ratios(&ratios);
    }

    /// ‖Δw‖ / ‖w‖ of each of the backbone's adapted weights (its convolutions) at the last step, ‖w‖ before the
    /// update; empty before the first step. A diagnostic: with LARS at η 0.001 it is about `lr·η` whatever the
    /// gradient.
    pub fn update_ratios(&self) -> &[f64] {
        &self.ratios
    }

    /// [`Optimizer::step`] on a GPU once every momentum buffer exists: the same formulas over whole lists in a
    /// few multi-tensor launches (`_foreach_*`), since hundreds of per-parameter launches otherwise bound the step.
    /// Equal to the per-parameter path up to the last bit (fused multiply-adds); the CPU keeps that path, whose
    /// numbers the golden and resume tests pin.
    fn step_foreach(&mut self, lr: f64) {
        use lewel_ffi::foreach;
        let cfg = self.cfg.clone();
        let mut ratios = Vec::new();
        tch::no_grad(|| {
            let (grads, factors) = self.grads_and_factors(lr);
            // two groups: with and without weight decay
            for decay in [true, false] {
                let idx: Vec<usize> = (0..self.slots.len())
                    .filter(|&i| grads[i].defined() && (!self.slots[i].excluded && cfg.weight_decay != 0.0) == decay)
                    .collect();
                if idx.is_empty() {
                    continue;
                }
                let g: Vec<Tensor> = idx.iter().map(|&i| grads[i].shallow_clone()).collect();
                let w: Vec<Tensor> = idx.iter().map(|&i| self.slots[i].param.shallow_clone()).collect();
                let bufs: Vec<Tensor> =
                    idx.iter().filter_map(|&i| self.slots[i].buf.as_ref().map(Tensor::shallow_clone)).collect();
                // d = (g + wd·w)·(local·lr) for LARS, g + wd·w for SGD
                let scale: Vec<f64> = idx
                    .iter()
                    .map(|&i| match cfg.kind {
                        OptimizerKind::Lars => factors[i] * lr,
                        OptimizerKind::Sgd => 1.0,
                    })
                    .collect();
                let d = if decay {
                    let d = foreach::add(&g, &w, cfg.weight_decay).expect("foreach add");
                    foreach::mul_scalars_(&d, &scale).expect("foreach mul");
                    d
                } else {
                    foreach::mul_scalars(&g, &scale).expect("foreach mul")
                };
                foreach::mul_scalar_(&bufs, cfg.momentum).expect("foreach mul");
                foreach::add_(&bufs, &d, 1.0).expect("foreach add");
                let alpha = match cfg.kind {
                    OptimizerKind::Lars => -1.0,
                    OptimizerKind::Sgd => -lr,
                };
                let tracked: Vec<usize> = (0..idx.len()).filter(|&j| self.slots[idx[j]].tracked).collect();
                if !tracked.is_empty() {
                    let pick =
                        |ts: &[Tensor]| -> Vec<Tensor> { tracked.iter().map(|&j| ts[j].shallow_clone()).collect() };
                    let (un, wn) = (
                        foreach::norms(&pick(&bufs)).expect("foreach norm") * alpha.abs(),
                        foreach::norms(&pick(&w)).expect("foreach norm"),
                    );
                    ratios.push(Tensor::stack(&[un, wn], 1)); // [n, 2]: ‖Δw‖, ‖w‖ per tensor
                }
                foreach::add_(&w, &bufs, alpha).expect("foreach add");
            }
        });
        self.ratios = pair_ratios(&ratios);
    }

    /// Every slot's gradient (undefined when it has none) and its LARS factor at lr `lr` (1 for SGD).
    fn grads_and_factors(&self, lr: f64) -> (Vec<Tensor>, Vec<f64>) {
        let grads: Vec<Tensor> = self.slots.iter().map(|s| s.param.grad()).collect();
        let factors = match self.cfg.kind {
            OptimizerKind::Lars => self.lars_factors(&grads, lr),
            OptimizerKind::Sgd => vec![1.0; self.slots.len()],
        };
        (grads, factors)
    }

    /// The LARS factor of every slot: 1 in the excluded group, else `η‖w‖ / (‖g‖ + wd‖w‖)` from the norms as f64
    /// scalars (the official `.item()` values), or with `clip` `min(that / lr, 1)`. All norms travel to the host in
    /// one transfer.
    fn lars_factors(&self, grads: &[Tensor], lr: f64) -> Vec<f64> {
        let adapted: Vec<usize> =
            (0..self.slots.len()).filter(|&i| !self.slots[i].excluded && grads[i].defined()).collect();
        let mut factors = vec![1.0; self.slots.len()];
        if adapted.is_empty() {
            return factors;
        }
        let host: Vec<f64> = if self.slots[adapted[0]].param.device().is_cuda() {
            // two multi-tensor launches (weights, gradients), interleaved as below, one transfer
            let w: Vec<Tensor> = adapted.iter().map(|&i| self.slots[i].param.shallow_clone()).collect();
            let g: Vec<Tensor> = adapted.iter().map(|&i| grads[i].shallow_clone()).collect();
            let both = Tensor::stack(
                &[
                    lewel_ffi::foreach::norms(&w).expect("foreach norm"),
                    lewel_ffi::foreach::norms(&g).expect("foreach norm"),
                ],
                1,
            );
            Vec::try_from(both.reshape([-1]).to_device(tch::Device::Cpu)).unwrap_or_default()
        } else {
            let norms: Vec<Tensor> = adapted
                .iter()
                .flat_map(|&i| [self.slots[i].param.norm(), grads[i].norm()])
                .map(|n| n.to_kind(tch::Kind::Double))
                .collect();
            Vec::try_from(Tensor::stack(&norms, 0).to_device(tch::Device::Cpu))
                .unwrap_or_else(|_| norms.iter().map(|n| n.double_value(&[])).collect())
        };
        let wd = self.cfg.weight_decay;
        for (j, &i) in adapted.iter().enumerate() {
            let (w_norm, g_norm) =
                (host.get(2 * j).copied().unwrap_or(0.0), host.get(2 * j + 1).copied().unwrap_or(0.0));
            let denom = g_norm + wd * w_norm;
            // NOTE(ref): Python raises ZeroDivisionError on 0/0; a zero factor keeps w unchanged instead.
            let local = if denom > 0.0 { self.cfg.eta * w_norm / denom } else { 0.0 };
            factors[i] = if self.cfg.clip && lr > 0.0 { (local / lr).min(1.0) } else { local };
        }
        factors
    }

    /// The initialised momentum buffers as `optimizer.momentum_buffer.<param name>` (shallow clones: copy them
    /// before the next step if they must not change). A parameter without a key has no buffer yet (no step taken);
    /// that is how a checkpoint records whether a buffer is initialised.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .filter_map(|s| s.buf.as_ref().map(|b| (format!("{MOMENTUM_PREFIX}{}", s.name), b.shallow_clone())))
            .collect()
    }

    /// Restores buffers exported by [`Optimizer::state`]. Keys without the momentum prefix are ignored (a
    /// checkpoint may hold the model too); a prefixed key for an unknown parameter or with a wrong shape is an error
    /// and nothing is changed. Parameters without a key get an uninitialised buffer.
    pub fn load_state(&mut self, named: &HashMap<String, Tensor>) -> Result<()> {
        let index: HashMap<&str, usize> = self.slots.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        let mut unknown = Vec::new();
        let mut mismatched = Vec::new();
        let mut found = vec![None; self.slots.len()];
        for (key, t) in named {
            let Some(name) = key.strip_prefix(MOMENTUM_PREFIX) else { continue };
            match index.get(name) {
                None => unknown.push(key.clone()),
                Some(&i) if t.size() != self.slots[i].param.size() => {
                    mismatched.push(format!("{key}: parameter {:?}, buffer {:?}", self.slots[i].param.size(), t.size()))
                }
                Some(&i) => found[i] = Some(t),
            }
        }
        if !unknown.is_empty() || !mismatched.is_empty() {
            unknown.sort();
            bail!(
                "optimizer state does not fit the parameters: unknown buffers [{}]; mismatched shapes [{}]",
                unknown.join(", "),
                mismatched.join("; ")
            );
        }
        for (s, t) in self.slots.iter_mut().zip(found) {
            // `zeros_like` keeps the parameter's device, kind and memory format (channels-last), as a buffer
            // created by a step does.
            s.buf = t.map(|t| {
                tch::no_grad(|| {
                    let mut b = s.param.zeros_like();
                    b.copy_(t);
                    b
                })
            });
        }
        Ok(())
    }
}

/// Norms whose flattened concatenation reads `‖Δw₀‖, ‖w₀‖, ‖Δw₁‖, ‖w₁‖, ...` (scalars or `[n, 2]` blocks; one host
/// transfer) → the ratios (0 where ‖w‖ = 0).
fn pair_ratios(norms: &[Tensor]) -> Vec<f64> {
    if norms.is_empty() {
        return Vec::new();
    }
    let flat: Vec<Tensor> = norms.iter().map(|n| n.to_kind(tch::Kind::Double).reshape([-1])).collect();
    let host: Vec<f64> = Vec::try_from(Tensor::cat(&flat, 0).to_device(tch::Device::Cpu)).unwrap_or_default();
    host.chunks_exact(2).map(|p| if p[1] > 0.0 { p[0] / p[1] } else { 0.0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn groups_follow_the_name_rule() {
        for (name, eman, params) in [
            ("online_net.backbone.conv1.weight", false, false),
            ("online_net.backbone.bn1.weight", true, true),
            ("online_net.backbone.layer1.0.bn2.bias", true, true),
            ("online_net.backbone.layer2.0.downsample.1.weight", true, true),
            ("online_net.backbone.layer2.0.downsample.0.weight", false, false),
            ("online_net.neck.proj.mlp.0.weight", false, false),
            ("online_net.neck.proj.mlp.1.weight", true, false),
            ("online_net.neck.proj.mlp.1.bias", true, true),
            ("predictor_obj.mlp.1.weight", true, false),
            ("predictor.mlp.3.weight", false, false),
        ] {
            assert_eq!(is_excluded(name, EmaMode::Eman), eman, "{name} eman");
            assert_eq!(is_excluded(name, EmaMode::Params), params, "{name} params");
        }
    }

    /// A parameter with a fixed gradient `g` (loss = Σ g·w).
    fn param(w: &[f64]) -> Tensor {
        Tensor::from_slice(w).set_requires_grad(true)
    }

    fn backward(p: &Tensor, g: &[f64]) {
        (p * Tensor::from_slice(g)).sum(Kind::Double).backward();
    }

    fn cfg(kind: OptimizerKind) -> OptimConfig {
        OptimConfig { kind, momentum: 0.9, weight_decay: 0.5, eta: 0.1, clip: false, ema: EmaMode::Eman }
    }

    #[test]
    fn lars_two_steps_by_hand() {
        let w = param(&[3.0, 4.0]); // ||w|| = 5
        let b = param(&[1.0]);
        let mut opt = Optimizer::new(
            vec![("layer.weight".into(), w.shallow_clone()), ("bn.bias".into(), b.shallow_clone())],
            &cfg(OptimizerKind::Lars),
        );
        opt.zero_grad();
        backward(&w, &[0.0, 1.0]); // ||g|| = 1
        backward(&b, &[2.0]);
        opt.step(0.2);
        // local = 0.1*5/(1 + 0.5*5) = 1/7; d = (g + 0.5 w) * (0.2/7) = (1.5, 3.0) * 0.2/7
        let d1: [f64; 2] = [1.5 * 0.2 / 7.0, 3.0 * 0.2 / 7.0];
        let w1 = [3.0 - d1[0], 4.0 - d1[1]];
        assert!(w.allclose(&Tensor::from_slice(&w1), 0.0, 1e-15, false), "{w}");
        // excluded: d = g * lr = 0.4
        assert!((b.double_value(&[0]) - 0.6).abs() < 1e-15);
        assert_eq!(opt.state().len(), 2);
        // second step, same gradient: buf = 0.9*d1 + d2
        opt.zero_grad();
        backward(&w, &[0.0, 1.0]);
        backward(&b, &[2.0]);
        opt.step(0.1);
        let wn = (w1[0] * w1[0] + w1[1] * w1[1]).sqrt();
        let local = 0.1 * wn / (1.0 + 0.5 * wn);
        let d2 = [0.5 * w1[0] * local * 0.1, (1.0 + 0.5 * w1[1]) * local * 0.1];
        let w2 = [w1[0] - (0.9 * d1[0] + d2[0]), w1[1] - (0.9 * d1[1] + d2[1])];
        assert!(w.allclose(&Tensor::from_slice(&w2), 0.0, 1e-15, false));
        assert!((b.double_value(&[0]) - (0.6 - (0.9 * 0.4 + 0.2))).abs() < 1e-15);
    }

    #[test]
    fn lars_clip_caps_the_step_at_the_sgd_step() {
        // local = 0.1*5/(1 + 0.5*5) = 1/7 for w = (3, 4), g = (0, 1), wd 0.5, η 0.1
        for (lr, scale) in [(0.2, 1.0 / 7.0), (0.1, 0.1)] {
            let w = param(&[3.0, 4.0]);
            let cfg = OptimConfig { clip: true, ..cfg(OptimizerKind::Lars) };
            let mut opt = Optimizer::new(vec![("online_net.backbone.conv1.weight".into(), w.shallow_clone())], &cfg);
            backward(&w, &[0.0, 1.0]);
            opt.step(lr);
            // d = (g + wd·w)·min(local/lr, 1)·lr = (1.5, 3.0)·min(local, lr)
            let want = [3.0 - 1.5 * scale, 4.0 - 3.0 * scale];
            assert!(w.allclose(&Tensor::from_slice(&want), 0.0, 1e-15, false), "lr {lr}: {w}");
            // the tracked relative update: ‖d‖ / ‖w‖ before the step
            let ratio = (1.5f64.powi(2) + 9.0).sqrt() * scale / 5.0;
            assert_eq!(opt.update_ratios().len(), 1);
            assert!((opt.update_ratios()[0] - ratio).abs() < 1e-12, "{:?} vs {ratio}", opt.update_ratios());
        }
    }

    #[test]
    fn update_ratios_cover_the_backbone_adapted_weights_only() {
        let names = ["online_net.backbone.conv1.weight", "online_net.backbone.bn1.weight", "predictor.mlp.0.weight"];
        let ws: Vec<Tensor> = names.iter().map(|_| param(&[1.0, 2.0])).collect();
        for kind in [OptimizerKind::Lars, OptimizerKind::Sgd] {
            let mut opt = Optimizer::new(
                names.iter().zip(&ws).map(|(n, w)| (n.to_string(), w.shallow_clone())).collect(),
                &cfg(kind),
            );
            assert!(opt.update_ratios().is_empty());
            for _ in 0..2 {
                opt.zero_grad();
                for w in &ws {
                    backward(w, &[0.5, -1.0]);
                }
                let before = ws[0].copy();
                opt.step(0.3);
                let want = (&ws[0] - &before).norm().double_value(&[]) / before.norm().double_value(&[]);
                assert_eq!(opt.update_ratios().len(), 1, "{kind:?}");
                assert!((opt.update_ratios()[0] - want).abs() < 1e-12, "{kind:?}");
            }
            let mut f = Optimizer::new(vec![(names[0].to_string(), ws[0].shallow_clone())], &cfg(kind));
            for _ in 0..2 {
                f.zero_grad();
                backward(&ws[0], &[0.5, -1.0]);
                let before = ws[0].copy();
                if f.state().is_empty() {
                    f.step(0.3)
                } else {
                    f.step_foreach(0.3)
                }
                let want = (&ws[0] - &before).norm().double_value(&[]) / before.norm().double_value(&[]);
                assert!((f.update_ratios()[0] - want).abs() < 1e-12, "foreach {kind:?}");
            }
        }
    }

    #[test]
    fn eta_must_be_positive_and_finite() {
        for eta in [0.0, -0.1, f64::NAN, f64::INFINITY] {
            let e = OptimConfig { eta, ..OptimConfig::default() }.validate().unwrap_err();
            assert!(e.to_string().contains("--lars-eta"), "{e}");
        }
        assert!(OptimConfig::default().validate().is_ok());
    }

    #[test]
    fn foreach_step_equals_the_per_parameter_step() {
        // (the GPU path, checked on the CPU: the multi-tensor kernels work on any device)
        for kind in [OptimizerKind::Lars, OptimizerKind::Sgd] {
            let make = || {
                let ws = [param(&[3.0, 4.0, -1.0]), param(&[1.0, 0.5]), param(&[-2.0])];
                let names = ["layer.weight", "bn.bias", "fc.weight"];
                let opt = Optimizer::new(
                    names.iter().zip(&ws).map(|(n, w)| (n.to_string(), w.shallow_clone())).collect(),
                    &cfg(kind),
                );
                (ws, opt)
            };
            let ((wa, mut a), (wb, mut b)) = (make(), make());
            for step in 0..4 {
                for (ws, opt) in [(&wa, &mut a), (&wb, &mut b)] {
                    opt.zero_grad();
                    for (k, w) in ws.iter().enumerate() {
                        let g: Vec<f64> = (0..w.numel()).map(|j| ((step * 7 + k * 3 + j) as f64).sin()).collect();
                        backward(w, &g);
                    }
                }
                a.step(0.3);
                if step == 0 {
                    b.step(0.3); // the buffers start per parameter
                } else {
                    b.step_foreach(0.3);
                }
                for (x, y) in wa.iter().zip(&wb) {
                    assert!(x.allclose(y, 1e-13, 1e-13, false), "{kind:?} step {step}: {x:?} vs {y:?}");
                }
            }
        }
    }

    #[test]
    fn sgd_two_steps_by_hand() {
        let w = param(&[2.0]);
        let mut opt = Optimizer::new(vec![("fc.weight".into(), w.shallow_clone())], &cfg(OptimizerKind::Sgd));
        backward(&w, &[1.0]);
        opt.step(0.1);
        // buf = g + wd w = 2; w = 2 - 0.1*2 = 1.8
        assert!((w.double_value(&[0]) - 1.8).abs() < 1e-15);
        opt.zero_grad();
        backward(&w, &[1.0]);
        opt.step(0.5);
        // d = 1 + 0.9 = 1.9; buf = 0.9*2 + 1.9 = 3.7; w = 1.8 - 0.5*3.7 = -0.05
        assert!((w.double_value(&[0]) + 0.05).abs() < 1e-15);
    }

    #[test]
    fn state_round_trip_resumes_exactly() {
        let run = |split: bool| -> Tensor {
            let w = param(&[1.0, -2.0, 0.5]);
            let mut opt = Optimizer::new(vec![("conv.weight".into(), w.shallow_clone())], &cfg(OptimizerKind::Lars));
            for step in 0..4 {
                if split && step == 2 {
                    let saved: HashMap<String, Tensor> = opt.state().into_iter().map(|(k, v)| (k, v.copy())).collect();
                    assert!(saved.contains_key("optimizer.momentum_buffer.conv.weight"));
                    opt = Optimizer::new(vec![("conv.weight".into(), w.shallow_clone())], &cfg(OptimizerKind::Lars));
                    assert!(opt.state().is_empty());
                    opt.load_state(&saved).unwrap();
                }
                opt.zero_grad();
                backward(&w, &[0.3, 0.1 * step as f64, -1.0]);
                opt.step(0.5 + step as f64);
            }
            w.detach().copy()
        };
        assert!(run(false).equal(&run(true)));
    }

    #[test]
    fn load_state_rejects_unknown_and_misshaped_buffers() {
        let w = param(&[1.0, 2.0]);
        let mut opt = Optimizer::new(vec![("conv.weight".into(), w)], &cfg(OptimizerKind::Lars));
        let mut m = HashMap::new();
        m.insert("optimizer.momentum_buffer.nope".to_string(), Tensor::zeros([2], (Kind::Double, Device::Cpu)));
        assert!(opt.load_state(&m).is_err());
        let mut m = HashMap::new();
        m.insert("optimizer.momentum_buffer.conv.weight".to_string(), Tensor::zeros([3], (Kind::Double, Device::Cpu)));
        assert!(opt.load_state(&m).is_err());
        let mut m = HashMap::new();
        m.insert("online_net.x".to_string(), Tensor::zeros([3], (Kind::Double, Device::Cpu)));
        assert!(opt.load_state(&m).is_ok());
    }
}
