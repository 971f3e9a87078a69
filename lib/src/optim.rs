//! The one optimiser of the workspace: LARS (the official LEWEL_B optimizer) and plain momentum SGD over
//! parameter groups, each with its own lr scale, weight decay and LARS flag, with exportable momentum buffers.
//! Pre-training ([`Optimizer::new`]: the two official groups), finetune-semi (backbone and classifier, two
//! learning rates) and the linear probe (weight and bias) all step through it ([`Optimizer::with_groups`]).
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

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sgd" => Ok(OptimizerKind::Sgd),
            "lars" => Ok(OptimizerKind::Lars),
            _ => Err(format!("unknown optimizer {s:?}; expected sgd or lars")),
        }
    }
}

impl Rule {
    /// `torch.optim.SGD` with `momentum` (no dampening, no nesterov).
    pub fn sgd(momentum: f64) -> Self {
        Rule { kind: OptimizerKind::Sgd, momentum, eta: 0.001, clip: false, zero_norm: ZeroNorm::Freeze }
    }
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

/// What the LARS factor `η‖w‖ / (‖g‖ + wd‖w‖)` is where a norm is 0. The pre-training and the linear protocol
/// differ here, and each keeps its own number through this one option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroNorm {
    /// The official pre-training (`utils/LARS.py`, §5.1): the formula as written, so ‖w‖ = 0 gives factor 0 and
    /// the weight never moves.
    ///
    /// NOTE(ref): where the denominator is 0 too (‖w‖ = ‖g‖ = 0) Python raises ZeroDivisionError; the factor is 0
    /// here, which keeps w unchanged.
    Freeze,
    /// The linear protocol of LEWEL_M ("LARS, SimSiam protocol", §4; not in the official repository): SimSiam's
    /// LARS falls back to factor 1, a plain momentum step, where ‖w‖ = 0 or ‖g‖ = 0. `linear-probe --optimizer
    /// lars` uses it.
    Plain,
}

/// The update rule every group of an [`Optimizer`] follows.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// LARS (lr inside the momentum buffer, trust ratios for the groups with `lars`) or SGD (lr outside).
    pub kind: OptimizerKind,
    pub momentum: f64,
    /// η, the LARS trust coefficient.
    pub eta: f64,
    /// Clip the trust ratio at 1 relative to the group's lr (see [`OptimConfig::clip`]).
    pub clip: bool,
    pub zero_norm: ZeroNorm,
}

/// One parameter group: its lr (the step's lr times `lr_scale`, or the schedule applied to `lr_scale` by
/// [`Optimizer::step_with`]), its weight decay and whether LARS adapts it (only with [`OptimizerKind::Lars`]; an
/// unadapted group gets factor 1).
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub lr_scale: f64,
    pub weight_decay: f64,
    pub lars: bool,
}

/// Whether the relative update of a parameter is tracked ([`Optimizer::update_ratios`]): the backbone's adapted
/// (LARS-scaled, weight-decayed) weights, i.e. its convolutions.
fn tracks_update(name: &str, adapted: bool) -> bool {
    adapted && name.starts_with("online_net.backbone.")
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
    /// Index into [`Optimizer::groups`].
    group: usize,
    /// See [`tracks_update`].
    tracked: bool,
    buf: Option<Tensor>,
}

/// LARS or SGD over named parameters in groups.
#[derive(Debug)]
pub struct Optimizer {
    rule: Rule,
    groups: Vec<Group>,
    slots: Vec<Slot>,
    /// ‖Δw‖ / ‖w‖ of every tracked slot at the last step (before the update's ‖w‖).
    ratios: Vec<f64>,
}

/// The group of the adapted parameters in [`Optimizer::new`]; the excluded ones are group 1.
const ADAPTED: usize = 0;

impl Optimizer {
    /// The pre-training optimiser: `params` in the two official groups by [`is_excluded`] on their names (with
    /// `cfg.ema`): the adapted one (weight decay `cfg.weight_decay`, LARS) and the excluded one (no weight decay,
    /// factor 1), both at the step's lr; LARS factor 0 at ‖w‖ = 0 ([`ZeroNorm::Freeze`]).
    pub fn new(params: Vec<(String, Tensor)>, cfg: &OptimConfig) -> Self {
        let rule =
            Rule { kind: cfg.kind, momentum: cfg.momentum, eta: cfg.eta, clip: cfg.clip, zero_norm: ZeroNorm::Freeze };
        let groups = vec![
            Group { lr_scale: 1.0, weight_decay: cfg.weight_decay, lars: true },
            Group { lr_scale: 1.0, weight_decay: 0.0, lars: false },
        ];
        let params = params
            .into_iter()
            .map(|(name, param)| {
                let group = if is_excluded(&name, cfg.ema) { 1 } else { ADAPTED };
                (name, param, group)
            })
            .collect();
        Self::with_groups(rule, groups, params)
    }

    /// An optimiser of `params` (name, tensor, index into `groups`), updated in this order.
    ///
    /// Panics on a group index out of range (a programming error).
    pub fn with_groups(rule: Rule, groups: Vec<Group>, params: Vec<(String, Tensor, usize)>) -> Self {
        let slots = params
            .into_iter()
            .map(|(name, param, group)| {
                assert!(group < groups.len(), "{name}: group {group} of {}", groups.len());
                let tracked = tracks_update(&name, groups[group].lars);
                Slot { tracked, group, name, param, buf: None }
            })
            .collect();
        Optimizer { rule, groups, slots, ratios: Vec::new() }
    }

    /// The names of each group's parameters, in parameter order.
    pub fn groups(&self) -> Vec<Vec<String>> {
        let mut names = vec![Vec::new(); self.groups.len()];
        for s in &self.slots {
            names[s.group].push(s.name.clone());
        }
        names
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

    /// One update with learning rate `lr` (times each group's `lr_scale`). Parameters without a gradient are
    /// skipped.
    ///
    /// LARS (§5.1), per parameter w with gradient g, with the group's weight decay wd, factor 1 in a group without
    /// `lars`: `local = η‖w‖ / (‖g‖ + wd‖w‖)` (f64 scalars; at a zero norm see [`ZeroNorm`]),
    /// `d = (g + wd·w)·(local·lr)`, `buf = d` at the first step then `buf = momentum·buf + d`, `w −= buf`. With
    /// `clip`, `local` becomes `min(local / lr, 1)`.
    /// SGD: `d = g + wd·w`, `buf = d` then `momentum·buf + d`, `w −= lr·buf`.
    ///
    /// Afterwards [`Optimizer::update_ratios`] holds ‖Δw‖ / ‖w‖ of the backbone's adapted weights.
    pub fn step(&mut self, lr: f64) {
        self.step_with(|scale| lr * scale);
    }

    /// [`Optimizer::step`] where each group's lr is `lr_of(its lr_scale)`: a schedule applied to each group's
    /// base lr (finetune-semi's two learning rates, each decayed from its own base).
    pub fn step_with(&mut self, lr_of: impl Fn(f64) -> f64) {
        let lrs: Vec<f64> = self.groups.iter().map(|g| lr_of(g.lr_scale)).collect();
        let on_gpu = self.slots.first().is_some_and(|s| s.param.device().is_cuda());
        if on_gpu && self.rule.momentum != 0.0 && self.slots.iter().all(|s| s.buf.is_some()) {
            self.step_foreach(&lrs);
            return;
        }
        let rule = self.rule.clone();
        let mut ratios = Vec::new();
        tch::no_grad(|| {
            let (grads, factors) = self.grads_and_factors(&lrs);
            for ((s, g), local) in self.slots.iter_mut().zip(&grads).zip(factors) {
                if !g.defined() {
                    continue;
                }
                let (wd, lr) = (self.groups[s.group].weight_decay, lrs[s.group]);
                let d = if wd != 0.0 { g + &s.param * wd } else { g.shallow_clone() };
                let d = match rule.kind {
                    OptimizerKind::Lars => d * (local * lr), // lr inside the momentum buffer
                    OptimizerKind::Sgd => d,
                };
                let update = if rule.momentum != 0.0 {
                    match &mut s.buf {
                        Some(buf) => {
                            let _ = buf.g_mul_scalar_(rule.momentum).g_add_(&d);
                        }
                        None => s.buf = Some(d.detach().copy()),
                    }
                    s.buf.as_ref().map(|b| b.shallow_clone()).unwrap_or(d)
                } else {
                    d
                };
                let update = match rule.kind {
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

    /// [`Optimizer::step_with`] on a GPU once every momentum buffer exists (`lrs`: each group's lr): the same
    /// formulas over whole lists in a few multi-tensor launches (`_foreach_*`), since hundreds of per-parameter
    /// launches otherwise bound the step. Equal to the per-parameter path up to the last bit (fused multiply-adds);
    /// the CPU keeps that path, whose numbers the golden and resume tests pin.
    fn step_foreach(&mut self, lrs: &[f64]) {
        use lewel_ffi::foreach;
        let rule = self.rule.clone();
        let mut ratios = Vec::new();
        tch::no_grad(|| {
            let (grads, factors) = self.grads_and_factors(lrs);
            for (gi, group) in self.groups.iter().enumerate() {
                let (lr, wd) = (lrs[gi], group.weight_decay);
                let idx: Vec<usize> =
                    (0..self.slots.len()).filter(|&i| grads[i].defined() && self.slots[i].group == gi).collect();
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
                    .map(|&i| match rule.kind {
                        OptimizerKind::Lars => factors[i] * lr,
                        OptimizerKind::Sgd => 1.0,
                    })
                    .collect();
                let d = if wd != 0.0 {
                    let d = foreach::add(&g, &w, wd).expect("foreach add");
                    foreach::mul_scalars_(&d, &scale).expect("foreach mul");
                    d
                } else {
                    foreach::mul_scalars(&g, &scale).expect("foreach mul")
                };
                foreach::mul_scalar_(&bufs, rule.momentum).expect("foreach mul");
                foreach::add_(&bufs, &d, 1.0).expect("foreach add");
                let alpha = match rule.kind {
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

    /// Every slot's gradient (undefined when it has none) and its LARS factor at its group's lr (1 for SGD).
    fn grads_and_factors(&self, lrs: &[f64]) -> (Vec<Tensor>, Vec<f64>) {
        let grads: Vec<Tensor> = self.slots.iter().map(|s| s.param.grad()).collect();
        let factors = match self.rule.kind {
            OptimizerKind::Lars => self.lars_factors(&grads, lrs),
            OptimizerKind::Sgd => vec![1.0; self.slots.len()],
        };
        (grads, factors)
    }

    /// The LARS factor of every slot: 1 in a group without `lars`, else `η‖w‖ / (‖g‖ + wd‖w‖)` from the norms as
    /// f64 scalars (the official `.item()` values; a zero norm by [`ZeroNorm`]), or with `clip`
    /// `min(that / lr, 1)`. All norms travel to the host in one transfer.
    fn lars_factors(&self, grads: &[Tensor], lrs: &[f64]) -> Vec<f64> {
        let adapted: Vec<usize> =
            (0..self.slots.len()).filter(|&i| self.groups[self.slots[i].group].lars && grads[i].defined()).collect();
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
        for (j, &i) in adapted.iter().enumerate() {
            let (w_norm, g_norm) =
                (host.get(2 * j).copied().unwrap_or(0.0), host.get(2 * j + 1).copied().unwrap_or(0.0));
            let (wd, lr) = (self.groups[self.slots[i].group].weight_decay, lrs[self.slots[i].group]);
            let local = trust_ratio(self.rule.eta, w_norm, g_norm, wd, self.rule.zero_norm);
            factors[i] = if self.rule.clip && lr > 0.0 { (local / lr).min(1.0) } else { local };
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

/// The LARS trust ratio `η‖w‖ / (‖g‖ + wd‖w‖)`, and at a zero norm what `zero_norm` says: factor 0 where the
/// denominator is 0 ([`ZeroNorm::Freeze`]; ‖w‖ = 0 alone gives 0 from the formula), factor 1 where ‖w‖ = 0 or
/// ‖g‖ = 0 ([`ZeroNorm::Plain`]).
pub fn trust_ratio(eta: f64, w_norm: f64, g_norm: f64, wd: f64, zero_norm: ZeroNorm) -> f64 {
    match zero_norm {
        ZeroNorm::Freeze => {
            let denom = g_norm + wd * w_norm;
            if denom > 0.0 {
                eta * w_norm / denom
            } else {
                0.0
            }
        }
        ZeroNorm::Plain => {
            if w_norm > 0.0 && g_norm > 0.0 {
                eta * w_norm / (g_norm + wd * w_norm)
            } else {
                1.0
            }
        }
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
                    f.step_foreach(&[0.3, 0.3])
                }
                let want = (&ws[0] - &before).norm().double_value(&[]) / before.norm().double_value(&[]);
                assert!((f.update_ratios()[0] - want).abs() < 1e-12, "foreach {kind:?}");
            }
        }
    }

    #[test]
    fn lars_at_a_zero_norm_freezes_for_pretraining_and_steps_plainly_for_the_probe() {
        // ||w|| = 0, ||g|| = 1: the official LARS.py factor is 0 (the weight stays); SimSiam's is 1
        assert_eq!(trust_ratio(0.001, 0.0, 1.0, 0.5, ZeroNorm::Freeze), 0.0);
        assert_eq!(trust_ratio(0.001, 0.0, 1.0, 0.5, ZeroNorm::Plain), 1.0);
        // both zero: 0 (Python would raise) and 1; ||g|| = 0 alone: eta/wd and 1
        assert_eq!(trust_ratio(0.001, 0.0, 0.0, 0.5, ZeroNorm::Freeze), 0.0);
        assert_eq!(trust_ratio(0.001, 2.0, 0.0, 0.5, ZeroNorm::Freeze), 0.001 * 2.0 / 1.0);
        assert_eq!(trust_ratio(0.001, 2.0, 0.0, 0.5, ZeroNorm::Plain), 1.0);
        // away from zero the two agree
        assert_eq!(trust_ratio(0.1, 5.0, 1.0, 0.5, ZeroNorm::Freeze), trust_ratio(0.1, 5.0, 1.0, 0.5, ZeroNorm::Plain));
        // through the optimiser: a zero weight with a gradient
        for (zero_norm, want) in [(ZeroNorm::Freeze, 0.0), (ZeroNorm::Plain, -0.2 * 2.0)] {
            let w = param(&[0.0, 0.0]);
            let rule = Rule { kind: OptimizerKind::Lars, momentum: 0.9, eta: 0.001, clip: false, zero_norm };
            let group = Group { lr_scale: 1.0, weight_decay: 0.5, lars: true };
            let mut opt = Optimizer::with_groups(rule, vec![group], vec![("fc.weight".into(), w.shallow_clone(), 0)]);
            backward(&w, &[2.0, 0.0]);
            opt.step(0.2);
            assert_eq!(w.double_value(&[0]), want, "{zero_norm:?}");
        }
    }

    #[test]
    fn groups_take_their_own_lr_and_weight_decay() {
        let (a, b) = (param(&[1.0]), param(&[1.0]));
        let rule =
            Rule { kind: OptimizerKind::Sgd, momentum: 0.9, eta: 0.001, clip: false, zero_norm: ZeroNorm::Freeze };
        let groups = vec![
            Group { lr_scale: 0.1, weight_decay: 0.0, lars: false },
            Group { lr_scale: 2.0, weight_decay: 0.5, lars: false },
        ];
        let mut opt = Optimizer::with_groups(
            rule,
            groups,
            vec![("a".into(), a.shallow_clone(), 0), ("b".into(), b.shallow_clone(), 1)],
        );
        assert_eq!(opt.groups(), vec![vec!["a".to_string()], vec!["b".to_string()]]);
        backward(&a, &[1.0]);
        backward(&b, &[1.0]);
        // each group's lr from its own base through the schedule (here x0.5)
        opt.step_with(|base| base * 0.5);
        assert_eq!(a.double_value(&[0]), 1.0 - 0.05 * 1.0);
        assert_eq!(b.double_value(&[0]), 1.0 - 1.0 * 1.5);
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
                    b.step_foreach(&[0.3, 0.3]);
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
