//! Mixed precision for the training tools: `--precision fp32|bf16|fp16` (autocast, and for float16 the dynamic
//! loss scaling of PyTorch's `torch.amp.GradScaler`), and `--channels-last`.
//!
//! What runs in which precision:
//! - **Always float32**: the weights ("master weights"), their gradients, the optimiser (momentum buffers, LARS
//!   norms), the EMA of the target, the BN running statistics, and the losses.
//! - **`bf16` / `fp16`**: the network forwards (online and target encoders of both views, and the predictors) run
//!   under libtorch's autocast ([`Autocast`]) on the model's device type, CPU or CUDA: convolutions and matrix
//!   products take their inputs in the low precision, other ops follow libtorch's per-device lists (on CUDA
//!   norms, softmax and sums run in float32; on the CPU most ops keep their input's precision). The outputs are
//!   cast back to float32 ([`full_precision`]) before the loss, which runs outside autocast. Gradients flow back
//!   through the casts into the float32 weights.
//! - **`fp16` only**: the loss is multiplied by a scale before the backward pass, the gradients are unscaled in
//!   place before the optimiser step, a step whose gradients hold an inf or NaN is skipped, and the scale is
//!   updated after every step ([`GradScaler`], with PyTorch's defaults: 2^16, ×2 after 2000 finite steps in a
//!   row, ×0.5 on an overflow). The EMA update of the target runs after a skipped step too, as in the official
//!   loop (`scaler.step(optimizer); scaler.update(); momentum_update`). bfloat16 has float32's exponent range,
//!   so it needs no scaling (PyTorch's recipe, too).
//! - **`fp32`** (the default): none of the above runs; a step is bit-identical to one without this module.
//!
//! In `finetune-semi` the autocast forward is the backbone and the classifier, the loss the cross-entropy.
//!
//! The official pre-training scripts all pass `--amp` (`reference/lewel-official.md` §5.3, note 21):
//! `torch.cuda.amp.autocast()` over the whole model forward, then `GradScaler` with LARS seeing unscaled gradients,
//! and the momentum update even after a skipped step. `--precision fp16` on CUDA is that recipe; the default stays
//! fp32 so that the golden values and the bit-exact CPU reruns hold.
//! NOTE(ref): the official loss runs inside autocast; ours runs outside, on float32 casts of the network outputs.
//! On CUDA the two agree (autocast already runs `normalize`, softmax and sums in float32 there); on the CPU,
//! whose autocast keeps those ops in the low precision, ours keeps the loss accurate.
//!
//! `--channels-last` ([`to_channels_last`]) lays the 4-D weights and the input batches out as NHWC. The numbers
//! are the same up to the order of floating-point sums inside the convolution kernels; it is a speed setting
//! (tensor cores on CUDA, oneDNN on the CPU), best together with `bf16` or `fp16`.
//!
//! Events: the `start` event of a training tool records `precision` (`"fp32"`, `"bf16"`, `"fp16"`) and
//! `channels_last` (boolean); under `fp16` every `step` event adds `loss_scale` (the scale this step's loss was
//! multiplied by) and `skipped_steps` (optimiser steps skipped so far in the run, this one included).
//!
//! The scaler's state (scale, growth tracker, count of skipped steps) is checkpointed as `optimizer.amp.*`
//! tensors ([`SCALE_KEY`], [`GROWTH_TRACKER_KEY`], [`SKIPPED_STEPS_KEY`]): everything that reads a model from a
//! checkpoint already leaves `optimizer.*` alone, so a resume is exact and nothing else changes.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// The precision of the network forwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in float32 (the reference numbers).
    #[default]
    Fp32,
    /// Autocast to bfloat16, no loss scaling.
    Bf16,
    /// Autocast to float16, with dynamic loss scaling.
    Fp16,
}

impl Precision {
    /// The autocast kind (None for float32).
    pub fn autocast_kind(self) -> Option<Kind> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::Fp16 => Some(Kind::Half),
        }
    }

    /// Whether the step needs a [`GradScaler`] (float16 only, as in PyTorch).
    pub fn uses_grad_scaler(self) -> bool {
        self == Precision::Fp16
    }

    /// The flag value (`fp32`, `bf16`, `fp16`).
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Autocast for one device: a no-op for float32, else libtorch's autocast to bfloat16 or float16 on the CPU or
/// CUDA device type (through `lewel_ffi`, since tch's own only toggles CUDA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Autocast {
    kind: Option<Kind>,
    cuda: bool,
}

impl Autocast {
    /// No autocast (float32).
    pub const OFF: Autocast = Autocast { kind: None, cuda: false };

    /// Autocast for `precision` on `device`'s type. An error for a reduced precision on a device other than the CPU
    /// or CUDA.
    pub fn new(precision: Precision, device: Device) -> Result<Self> {
        let kind = precision.autocast_kind();
        let cuda = match device {
            Device::Cpu => false,
            Device::Cuda(_) => true,
            other if kind.is_some() => {
                bail!("--precision {precision}: autocast runs on the CPU and CUDA, not {other:?}")
            }
            _ => false,
        };
        Ok(Autocast { kind, cuda })
    }

    /// Whether it casts anything.
    pub fn is_on(&self) -> bool {
        self.kind.is_some()
    }

    /// Runs `f` with autocast on (or just runs it, for float32); the previous autocast state is restored after.
    pub fn run<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match self.kind {
            None => f(),
            Some(kind) => {
                let _guard = lewel_ffi::amp::autocast(self.cuda, kind)?;
                f()
            }
        }
    }
}

/// `t` cast to float32 when it is float16 or bfloat16 (an autocast output), else `t` itself (a shallow clone: a
/// float32 or float64 tensor goes through untouched, so the float32 path stays bit-identical).
pub fn full_precision(t: &Tensor) -> Result<Tensor> {
    Ok(match t.kind() {
        Kind::Half | Kind::BFloat16 => t.f_to_kind(Kind::Float)?,
        _ => t.shallow_clone(),
    })
}

/// Lays every 4-D tensor of `tensors` out channels-last (NHWC strides), in place: the new layout is set with
/// `set_data`, so every holder of the tensor (the var store, the model's state entries, the optimiser) sees it.
/// Values do not change. Returns how many tensors were converted.
pub fn to_channels_last(tensors: impl IntoIterator<Item = Tensor>) -> Result<usize> {
    let mut n = 0;
    for mut t in tensors {
        if t.dim() != 4 || lewel_ffi::is_channels_last(&t) {
            continue;
        }
        let nhwc = lewel_ffi::to_memory_format(&t.detach(), true)?;
        tch::no_grad(|| t.f_set_data(&nhwc))?;
        n += 1;
    }
    Ok(n)
}

/// A batch of images `[b, c, h, w]` in channels-last layout when `channels_last`, else as it is.
pub fn input_layout(x: Tensor, channels_last: bool) -> Result<Tensor> {
    if channels_last {
        Ok(lewel_ffi::to_memory_format(&x, true)?)
    } else {
        Ok(x)
    }
}

/// Checkpoint name of the loss scale (float32 `[1]`).
pub const SCALE_KEY: &str = "optimizer.amp.scale";
/// Checkpoint name of the growth tracker (int32 `[1]`: finite steps in a row since the last change of scale).
pub const GROWTH_TRACKER_KEY: &str = "optimizer.amp.growth_tracker";
/// Checkpoint name of the number of optimiser steps skipped so far (int64 `[1]`).
pub const SKIPPED_STEPS_KEY: &str = "optimizer.amp.skipped_steps";

/// The settings of [`GradScaler`] (PyTorch's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradScalerConfig {
    /// The first scale (PyTorch `init_scale`, 2^16).
    pub init_scale: f64,
    /// Scale multiplier after `growth_interval` finite steps in a row (2).
    pub growth_factor: f64,
    /// Scale multiplier after a step with an inf or NaN gradient (0.5).
    pub backoff_factor: f64,
    /// Finite steps in a row before the scale grows (2000).
    pub growth_interval: i64,
}

impl Default for GradScalerConfig {
    fn default() -> Self {
        GradScalerConfig { init_scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

/// Dynamic loss scaling for float16, as PyTorch's `torch.amp.GradScaler`: [`GradScaler::scale_loss`] before the
/// backward pass, then [`GradScaler::step`] (unscale the gradients in place, run the optimiser step unless one of
/// them is inf or NaN, update the scale). The scale and the growth tracker live on the device and are updated by
/// libtorch's own kernels (`_amp_foreach_non_finite_check_and_unscale_`, `_amp_update_scale_`).
#[derive(Debug)]
pub struct GradScaler {
    cfg: GradScalerConfig,
    /// float32 `[1]`.
    scale: Tensor,
    /// int32 `[1]`.
    growth_tracker: Tensor,
    skipped: u64,
}

impl GradScaler {
    /// A scaler at `cfg.init_scale` on `device`. Checks the settings as PyTorch does.
    pub fn new(cfg: GradScalerConfig, device: Device) -> Result<Self> {
        if !(cfg.init_scale.is_finite() && cfg.init_scale > 0.0 && cfg.init_scale <= f32::MAX as f64) {
            bail!(
                "the initial loss scale must be positive and at most {:e} (float32), got {}",
                f32::MAX,
                cfg.init_scale
            );
        }
        if !(cfg.growth_factor > 1.0 && cfg.growth_factor.is_finite()) {
            bail!("the loss-scale growth factor must be above 1, got {}", cfg.growth_factor);
        }
        if !(cfg.backoff_factor > 0.0 && cfg.backoff_factor < 1.0) {
            bail!("the loss-scale backoff factor must be in (0, 1), got {}", cfg.backoff_factor);
        }
        if cfg.growth_interval < 1 {
            bail!("the loss-scale growth interval must be at least 1 step, got {}", cfg.growth_interval);
        }
        let scale = Tensor::f_full([1], cfg.init_scale, (Kind::Float, device))?;
        let growth_tracker = Tensor::f_zeros([1], (Kind::Int, device))?;
        Ok(GradScaler { cfg, scale, growth_tracker, skipped: 0 })
    }

    /// The scaler a run in `precision` needs: one with PyTorch's settings and `init_scale` for fp16, else None.
    pub fn for_precision(precision: Precision, init_scale: f64, device: Device) -> Result<Option<Self>> {
        if !precision.uses_grad_scaler() {
            return Ok(None);
        }
        let cfg = GradScalerConfig { init_scale, ..GradScalerConfig::default() };
        Ok(Some(GradScaler::new(cfg, device)?))
    }

    /// The settings.
    pub fn config(&self) -> &GradScalerConfig {
        &self.cfg
    }

    /// The current scale (the one the next [`GradScaler::scale_loss`] uses).
    pub fn scale(&self) -> Result<f64> {
        Ok(self.scale.f_double_value(&[0])?)
    }

    /// Finite steps in a row since the scale last changed.
    pub fn growth_tracker(&self) -> Result<i64> {
        Ok(self.growth_tracker.f_int64_value(&[0])?)
    }

    /// Optimiser steps skipped so far (inf or NaN gradients).
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }

    /// `loss × scale`, the tensor to back-propagate. A scalar loss stays a scalar.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        Ok(loss.f_mul(&self.scale.f_reshape([])?)?)
    }

    /// Multiplies every gradient by 1/scale in place; returns `found_inf`, a float32 `[1]` tensor that is 1 when
    /// any of them holds an inf or NaN (else 0). Undefined gradients are skipped.
    pub fn unscale(&self, grads: &[Tensor]) -> Result<Tensor> {
        // PyTorch: inv_scale = scale.double().reciprocal().float().
        let inv = self.scale.f_to_kind(Kind::Double)?.f_reciprocal()?.f_to_kind(Kind::Float)?;
        let found = Tensor::f_zeros([1], (Kind::Float, self.scale.device()))?;
        // The kernel wants one dtype per call (GradScaler groups by device and dtype as well).
        let mut by_kind: Vec<(Kind, Vec<Tensor>)> = Vec::new();
        for g in grads.iter().filter(|g| g.defined()) {
            match by_kind.iter_mut().find(|(k, _)| *k == g.kind()) {
                Some((_, v)) => v.push(g.shallow_clone()),
                None => by_kind.push((g.kind(), vec![g.shallow_clone()])),
            }
        }
        for (_, group) in &by_kind {
            lewel_ffi::amp::unscale(group, &found, &inv)?;
        }
        Ok(found)
    }

    /// Updates the scale after a step: backoff when `found_inf` is set (and the tracker restarts), else one more
    /// finite step, and growth once `growth_interval` of them are in a row (a growth that would overflow float32
    /// is not taken).
    pub fn update(&mut self, found_inf: &Tensor) -> Result<()> {
        let c = self.cfg;
        let _ = self.scale.f_internal_amp_update_scale_(
            &self.growth_tracker,
            found_inf,
            c.growth_factor,
            c.backoff_factor,
            c.growth_interval,
        )?;
        Ok(())
    }

    /// One optimiser step under scaling: unscales `grads` in place, runs `step` unless one of them holds an inf or
    /// NaN, then updates the scale. Returns whether `step` ran.
    pub fn step(&mut self, grads: &[Tensor], step: impl FnOnce()) -> Result<bool> {
        let found = self.unscale(grads)?;
        let finite = found.f_double_value(&[0])? == 0.0;
        if finite {
            step();
        } else {
            self.skipped += 1;
        }
        self.update(&found)?;
        Ok(finite)
    }

    /// The state to checkpoint, under [`SCALE_KEY`], [`GROWTH_TRACKER_KEY`] and [`SKIPPED_STEPS_KEY`].
    pub fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            (SCALE_KEY.to_string(), self.scale.shallow_clone()),
            (GROWTH_TRACKER_KEY.to_string(), self.growth_tracker.shallow_clone()),
            (SKIPPED_STEPS_KEY.to_string(), Tensor::from_slice(&[self.skipped as i64])),
        ]
    }

    /// Restores [`GradScaler::state`]. Returns false, changing nothing, when `named` holds no scaler state (a
    /// checkpoint of a float32 or bfloat16 run: the scaler then starts afresh); an error when it holds part of it
    /// or a value that is not a scale.
    pub fn load_state(&mut self, named: &HashMap<String, Tensor>) -> Result<bool> {
        let (scale, tracker) = match (named.get(SCALE_KEY), named.get(GROWTH_TRACKER_KEY)) {
            (None, None) => return Ok(false),
            (Some(s), Some(t)) => (s, t),
            _ => bail!("the loss-scaler state is incomplete: {SCALE_KEY} and {GROWTH_TRACKER_KEY} go together"),
        };
        let one = |t: &Tensor, key: &str| -> Result<f64> {
            if t.numel() != 1 {
                bail!("{key} holds {:?} values; expected one", t.size());
            }
            Ok(t.f_to_kind(Kind::Double)?.f_reshape([])?.f_double_value(&[])?)
        };
        let s = one(scale, SCALE_KEY)?;
        if !(s.is_finite() && s > 0.0) {
            bail!("{SCALE_KEY} is {s}; a loss scale is positive and finite");
        }
        let g = one(tracker, GROWTH_TRACKER_KEY)?;
        let skipped = match named.get(SKIPPED_STEPS_KEY) {
            Some(t) => one(t, SKIPPED_STEPS_KEY)?,
            None => 0.0,
        };
        tch::no_grad(|| -> Result<()> {
            self.scale.f_copy_(&scale.f_reshape([1])?)?;
            self.growth_tracker.f_copy_(&tracker.f_reshape([1])?)?;
            Ok(())
        })
        .with_context(|| format!("restoring {SCALE_KEY} = {s}, {GROWTH_TRACKER_KEY} = {g}"))?;
        self.skipped = skipped as u64;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grad(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn precision_names_and_scaler_use() {
        for (p, s) in [(Precision::Fp32, "fp32"), (Precision::Bf16, "bf16"), (Precision::Fp16, "fp16")] {
            assert_eq!(p.to_string(), s);
            assert_eq!(serde_json::to_value(p).unwrap(), serde_json::json!(s));
            assert_eq!(<Precision as clap::ValueEnum>::from_str(s, false).unwrap(), p);
        }
        assert!(Precision::Fp16.uses_grad_scaler() && !Precision::Bf16.uses_grad_scaler());
        assert_eq!(Precision::default(), Precision::Fp32);
    }

    #[test]
    fn only_fp16_gets_a_scaler() {
        assert!(GradScaler::for_precision(Precision::Fp32, 65536.0, Device::Cpu).unwrap().is_none());
        assert!(GradScaler::for_precision(Precision::Bf16, 65536.0, Device::Cpu).unwrap().is_none());
        let s = GradScaler::for_precision(Precision::Fp16, 1024.0, Device::Cpu).unwrap().unwrap();
        assert_eq!(s.scale().unwrap(), 1024.0);
    }

    #[test]
    fn pytorch_defaults() {
        let s = GradScaler::new(GradScalerConfig::default(), Device::Cpu).unwrap();
        assert_eq!(s.scale().unwrap(), 65536.0);
        assert_eq!(s.growth_tracker().unwrap(), 0);
        assert_eq!((s.config().growth_factor, s.config().backoff_factor, s.config().growth_interval), (2.0, 0.5, 2000));
    }

    #[test]
    fn an_inf_gradient_skips_the_step_and_halves_the_scale() {
        let mut s = GradScaler::new(GradScalerConfig::default(), Device::Cpu).unwrap();
        let g = [grad(&[65536.0, 131072.0]), grad(&[f32::INFINITY])];
        let mut ran = false;
        assert!(!s.step(&g, || ran = true).unwrap());
        assert!(!ran);
        assert_eq!(s.scale().unwrap(), 32768.0);
        assert_eq!(s.skipped_steps(), 1);
        // a NaN counts too
        assert!(!s.step(&[grad(&[f32::NAN])], || ran = true).unwrap());
        assert_eq!((s.scale().unwrap(), s.skipped_steps(), ran), (16384.0, 2, false));
        // finite gradients: unscaled in place before the step
        let g = [grad(&[16384.0, -32768.0])];
        assert!(s.step(&g, || ran = true).unwrap());
        assert!(ran);
        assert_eq!(Vec::<f32>::try_from(&g[0]).unwrap(), [1.0, -2.0]);
        assert_eq!((s.scale().unwrap(), s.growth_tracker().unwrap()), (16384.0, 1));
    }

    #[test]
    fn the_scale_grows_after_growth_interval_finite_steps() {
        let cfg = GradScalerConfig { growth_interval: 3, ..GradScalerConfig::default() };
        let mut s = GradScaler::new(cfg, Device::Cpu).unwrap();
        for k in 1..=2 {
            assert!(s.step(&[grad(&[1.0])], || {}).unwrap());
            assert_eq!((s.scale().unwrap(), s.growth_tracker().unwrap()), (65536.0, k));
        }
        assert!(s.step(&[grad(&[1.0])], || {}).unwrap());
        assert_eq!((s.scale().unwrap(), s.growth_tracker().unwrap()), (131072.0, 0));
        // an overflow resets the tracker
        s.step(&[grad(&[1.0])], || {}).unwrap();
        s.step(&[grad(&[f32::INFINITY])], || {}).unwrap();
        assert_eq!((s.scale().unwrap(), s.growth_tracker().unwrap()), (65536.0, 0));
    }

    #[test]
    fn a_scaled_loss_backpropagates_scaled_gradients() {
        let s = GradScaler::new(GradScalerConfig { init_scale: 8.0, ..Default::default() }, Device::Cpu).unwrap();
        let w = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let loss = (&w * &w).sum(Kind::Float);
        let scaled = s.scale_loss(&loss).unwrap();
        assert_eq!(scaled.size(), Vec::<i64>::new());
        scaled.backward();
        assert_eq!(Vec::<f32>::try_from(&w.grad()).unwrap(), [16.0, 32.0]);
        let found = s.unscale(&[w.grad()]).unwrap();
        assert_eq!(found.double_value(&[0]), 0.0);
        assert_eq!(Vec::<f32>::try_from(&w.grad()).unwrap(), [2.0, 4.0]);
        // a huge scale overflows float32 in the scaled loss itself
        let s = GradScaler::new(GradScalerConfig { init_scale: 1e38, ..Default::default() }, Device::Cpu).unwrap();
        let scaled = s.scale_loss(&Tensor::from(4.0f32)).unwrap();
        assert!(scaled.double_value(&[]).is_infinite());
    }

    #[test]
    fn state_round_trip_resumes_exactly() {
        let cfg = GradScalerConfig { growth_interval: 2, ..GradScalerConfig::default() };
        let grads = [[1.0f32], [f32::INFINITY], [1.0], [1.0], [f32::NAN], [1.0], [1.0], [1.0]];
        let run = |split: bool| -> (f64, i64, u64) {
            let mut s = GradScaler::new(cfg, Device::Cpu).unwrap();
            for (i, g) in grads.iter().enumerate() {
                if split && i == 3 {
                    let saved: HashMap<String, Tensor> = s.state().into_iter().map(|(k, v)| (k, v.copy())).collect();
                    s = GradScaler::new(cfg, Device::Cpu).unwrap();
                    assert!(s.load_state(&saved).unwrap());
                }
                s.step(&[grad(g)], || {}).unwrap();
            }
            (s.scale().unwrap(), s.growth_tracker().unwrap(), s.skipped_steps())
        };
        let whole = run(false);
        assert_eq!(whole, (65536.0, 1, 2));
        assert_eq!(run(true), whole);
    }

    #[test]
    fn load_state_without_scaler_keys_keeps_a_fresh_scaler() {
        let mut s = GradScaler::new(GradScalerConfig::default(), Device::Cpu).unwrap();
        let mut m = HashMap::new();
        m.insert("online_net.x".to_string(), Tensor::zeros([1], (Kind::Float, Device::Cpu)));
        assert!(!s.load_state(&m).unwrap());
        assert_eq!(s.scale().unwrap(), 65536.0);
        m.insert(SCALE_KEY.to_string(), Tensor::from_slice(&[4.0f32]));
        assert!(s.load_state(&m).is_err(), "a scale without its tracker");
        m.insert(GROWTH_TRACKER_KEY.to_string(), Tensor::from_slice(&[0i32]));
        m.insert(SCALE_KEY.to_string(), Tensor::from_slice(&[f32::INFINITY]));
        assert!(s.load_state(&m).is_err(), "an infinite scale");
    }

    #[test]
    fn bad_settings_are_refused() {
        for cfg in [
            GradScalerConfig { init_scale: 0.0, ..Default::default() },
            GradScalerConfig { init_scale: 1e39, ..Default::default() },
            GradScalerConfig { growth_factor: 1.0, ..Default::default() },
            GradScalerConfig { backoff_factor: 1.0, ..Default::default() },
            GradScalerConfig { growth_interval: 0, ..Default::default() },
        ] {
            assert!(GradScaler::new(cfg, Device::Cpu).is_err(), "{cfg:?}");
        }
    }

    #[test]
    fn autocast_is_a_no_op_for_fp32_and_casts_on_the_cpu() {
        let a = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        let off = Autocast::new(Precision::Fp32, Device::Cpu).unwrap();
        assert!(!off.is_on());
        assert_eq!(off.run(|| Ok(a.matmul(&a))).unwrap().kind(), Kind::Float);
        for (p, k) in [(Precision::Bf16, Kind::BFloat16), (Precision::Fp16, Kind::Half)] {
            let on = Autocast::new(p, Device::Cpu).unwrap();
            let y = on.run(|| Ok(a.matmul(&a))).unwrap();
            assert_eq!(y.kind(), k);
            assert_eq!(full_precision(&y).unwrap().kind(), Kind::Float);
            assert_eq!(a.matmul(&a).kind(), Kind::Float, "autocast ends with run");
        }
        let d = Tensor::ones([2], (Kind::Double, Device::Cpu));
        assert_eq!(full_precision(&d).unwrap().kind(), Kind::Double);
    }

    /// A tiny LEWEL_B (EMAN: the target's BN in eval mode, so repeated forwards give the same loss) and two views.
    fn tiny_model() -> (tch::nn::VarStore, crate::model::Lewel, Tensor, Tensor) {
        use crate::model::{Arch, Lewel, ModelConfig, Stem};
        tch::manual_seed(5);
        let cfg = ModelConfig {
            arch: Arch::Resnet18,
            stem: Stem::Cifar,
            width: 8,
            proj_dim: 16,
            hidden_dim: 32,
            ..ModelConfig::default()
        };
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let model = Lewel::new(&vs, &cfg).unwrap();
        let v1 = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
        let v2 = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
        (vs, model, v1, v2)
    }

    #[test]
    fn model_loss_in_each_precision() {
        let (_vs, model, v1, v2) = tiny_model();
        let fp32 = model.forward_loss(&v1, &v2).unwrap();
        let again = model.forward_loss_amp(&v1, &v2, Precision::Fp32).unwrap();
        assert!(fp32.total.equal(&again.total), "fp32 through forward_loss_amp is bit-identical");
        let l32 = fp32.total.double_value(&[]);
        // bfloat16 keeps 8 significant bits (relative rounding 2^-9 per op); through ~20 layers the loss, a sum of
        // 2 - 2cos terms, moved by 0.6% here (seed 5). float16 keeps 11 bits: 0.03%. The bounds leave ~8x room.
        for (p, tol) in [(Precision::Bf16, 0.05), (Precision::Fp16, 0.01)] {
            let t = model.forward_loss_amp(&v1, &v2, p).unwrap();
            assert_eq!(t.total.kind(), Kind::Float, "{p}: the loss is float32");
            let l = t.total.double_value(&[]);
            assert!(l.is_finite() && (l - l32).abs() <= tol * l32.abs(), "{p}: {l} vs fp32 {l32}");
            assert!(t.global.is_finite() && t.aligned.is_finite() && t.collapse_std.is_finite());
            t.total.backward();
            for (name, w) in model.trainable() {
                assert_eq!(w.grad().kind(), Kind::Float, "{p}: {name}");
            }
        }
    }

    #[test]
    fn every_method_runs_under_autocast() {
        use crate::ema::EmaMode;
        use crate::model::{Arch, Lewel, Method, ModelConfig, Stem};
        for method in [Method::Byol, Method::LewelM, Method::MocoV2] {
            tch::manual_seed(6);
            let ema = if method.contrastive() { EmaMode::Params } else { EmaMode::Eman };
            let cfg = ModelConfig {
                method,
                arch: Arch::Resnet18,
                stem: Stem::Cifar,
                width: 4,
                proj_dim: 16,
                hidden_dim: 32,
                ema,
                queue_size: 12,
                ..ModelConfig::default()
            };
            let vs = tch::nn::VarStore::new(Device::Cpu);
            let model = Lewel::new(&vs, &cfg).unwrap();
            let x = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
            for p in [Precision::Bf16, Precision::Fp16] {
                let t = model.forward_loss_amp(&x, &x.flip([3]), p).unwrap();
                assert!(t.total.double_value(&[]).is_finite(), "{method} {p}");
                if let Some(m) = model.moco() {
                    assert_eq!(m.queue.kind(), Kind::Float, "{method} {p}: the queue stays float32");
                }
            }
        }
    }

    #[test]
    fn channels_last_model_gives_the_same_loss() {
        let (_vs, model, v1, v2) = tiny_model();
        let l = model.forward_loss(&v1, &v2).unwrap().total.double_value(&[]);
        let n = to_channels_last(model.state_dict().into_iter().map(|(_, t)| t)).unwrap();
        assert!(n > 0 && model.state_dict().iter().all(|(_, t)| t.dim() != 4 || lewel_ffi::is_channels_last(t)));
        let (c1, c2) = (input_layout(v1, true).unwrap(), input_layout(v2, true).unwrap());
        let lc = model.forward_loss(&c1, &c2).unwrap().total.double_value(&[]);
        assert!((l - lc).abs() <= 1e-5 * l.abs(), "{lc} vs {l}");
    }

    #[test]
    fn channels_last_reaches_every_holder_and_the_optimiser_buffers() {
        use crate::optim::{OptimConfig, Optimizer};
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let w = vs.root().sub("conv").randn("weight", &[4, 3, 3, 3], 0.0, 0.1);
        let b = vs.root().sub("bn").zeros("bias", &[4]);
        let before = w.detach().copy();
        let held = w.shallow_clone();
        assert_eq!(to_channels_last(vec![w.shallow_clone(), b.shallow_clone()]).unwrap(), 1);
        assert!(lewel_ffi::is_channels_last(&held) && lewel_ffi::is_channels_last(&vs.variables()["conv.weight"]));
        assert!(held.equal(&before));
        assert!(held.requires_grad());
        // a second call converts nothing
        assert_eq!(to_channels_last(vec![w.shallow_clone()]).unwrap(), 0);
        let mut opt = Optimizer::new(vec![("conv.weight".into(), w.shallow_clone())], &OptimConfig::default());
        let x = input_layout(Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu)), true).unwrap();
        assert!(lewel_ffi::is_channels_last(&x));
        x.conv2d(&w, None::<&Tensor>, [1], [1], [1], 1).sum(Kind::Float).backward();
        opt.step(0.1);
        let (_, buf) = &opt.state()[0];
        assert!(lewel_ffi::is_channels_last(buf), "momentum buffer strides {:?}", buf.stride());
    }
}
