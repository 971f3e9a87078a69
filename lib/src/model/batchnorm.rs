//! Batch normalisation with PyTorch's exact state and update rule, plus ghost-BN slices.
//!
//! Part of the LEWEL port (<https://arxiv.org/abs/2203.14898>); see `reference/lewel-official.md` §1.2/§1.3
//! (`nn.BatchNorm2d` in the backbone, `nn.BatchNorm1d` in `MLP1D`) and §3 (per-GPU BN, EMAN).
//!
//! tch's own `nn::batch_norm` has no `num_batches_tracked` and cannot split the batch, so this module keeps
//! the five PyTorch entries itself: parameters `weight`, `bias`; buffers `running_mean`, `running_var` and
//! `num_batches_tracked` (int64). Momentum 0.1, eps 1e-5; the biased batch variance normalises, the unbiased one
//! enters `running_var` (both done by libtorch's `batch_norm` kernel, the one PyTorch itself calls).

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};
use tch::{nn::Path, Kind, Tensor};

use super::StateEntry;

/// PyTorch's default BN momentum.
pub const BN_MOMENTUM: f64 = 0.1;
/// PyTorch's default BN epsilon.
pub const BN_EPS: f64 = 1e-5;

static SYNC: AtomicBool = AtomicBool::new(false);

/// Makes every train-mode BatchNorm of this process normalise with the statistics of the whole global batch,
/// over all ranks of the process group (SyncBatchNorm, as `convert_sync_batchnorm` does to the whole official
/// model for the 400-epoch run). Only takes effect with several ranks ([`crate::dist::active`]); then `splits`
/// must be 1.
pub fn set_sync(on: bool) {
    SYNC.store(on, Ordering::Relaxed);
}

fn sync_active() -> bool {
    SYNC.load(Ordering::Relaxed) && crate::dist::active()
}

/// `BatchNorm1d` / `BatchNorm2d` over channel dimension 1 of a 3-D `[b, c, l]` or 4-D `[b, c, h, w]` input.
#[derive(Debug)]
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
    channels: i64,
    splits: i64,
}

impl BatchNorm {
    /// Registers the five entries under `p` (`p.weight`, …, `p.num_batches_tracked`): weight 1, bias 0,
    /// running_mean 0, running_var 1, num_batches_tracked 0 (int64). `trainable = false` makes weight and bias
    /// plain non-trainable variables (the target network).
    ///
    /// `splits` is the ghost-BN slice count (1 = ordinary BN).
    pub fn new(p: &Path, channels: i64, splits: i64, trainable: bool) -> Result<Self> {
        if splits < 1 {
            bail!("bn_splits must be at least 1, got {splits}");
        }
        let opts = (p.kind(), p.device());
        let weight = p.add("weight", Tensor::f_ones([channels], opts)?, trainable);
        let bias = p.add("bias", Tensor::f_zeros([channels], opts)?, trainable);
        let running_mean = p.add("running_mean", Tensor::f_zeros([channels], opts)?, false);
        let running_var = p.add("running_var", Tensor::f_ones([channels], opts)?, false);
        let num_batches_tracked = p.add("num_batches_tracked", Tensor::f_zeros([], (Kind::Int64, p.device()))?, false);
        Ok(BatchNorm { weight, bias, running_mean, running_var, num_batches_tracked, channels, splits })
    }

    /// Normalises `x`. In train mode with batch statistics (and updates the running statistics once), in eval
    /// mode with the running statistics.
    ///
    /// With `splits` = N > 1 in train mode the batch is cut into N equal slices along dim 0 and each slice is
    /// normalised with its own statistics, as per-GPU BN on N GPUs does.
    /// NOTE(ref): the running statistics (and `num_batches_tracked`) are then updated from slice 0 only. That is
    /// what the official multi-GPU runs keep: DDP's `broadcast_buffers=True` copies rank 0's BN buffers to every
    /// rank at each forward, so only rank 0's slice survives (§3).
    ///
    /// # Shapes
    /// `x`: `[b, c, l]` (BN over all b·l vectors) or `[b, c, h, w]` (BN over b·h·w); the output has the same
    /// shape. In train mode b must be a multiple of `splits`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let size = x.size();
        if !(size.len() == 3 || size.len() == 4) || size[1] != self.channels {
            bail!(
                "BatchNorm over {} channels expects [b, {}, l] or [b, {}, h, w] input, got {:?}",
                self.channels,
                self.channels,
                self.channels,
                size
            );
        }
        if !train {
            return Ok(x.f_batch_norm(
                Some(&self.weight),
                Some(&self.bias),
                Some(&self.running_mean),
                Some(&self.running_var),
                false,
                BN_MOMENTUM,
                BN_EPS,
                true,
            )?);
        }
        if sync_active() {
            let out = self.train_sync(x)?;
            let _ = tch::no_grad(|| self.num_batches_tracked.shallow_clone().f_add_scalar_(1))?;
            return Ok(out);
        }
        let b = size[0];
        if b % self.splits != 0 {
            bail!("batch size {b} is not a multiple of bn_splits {}; pick a batch size divisible by it", self.splits);
        }
        let out = if self.splits == 1 {
            self.train_slice(x, true)?
        } else {
            let slices = x.f_chunk(self.splits, 0)?;
            let mut outs = Vec::with_capacity(slices.len());
            for (k, s) in slices.iter().enumerate() {
                outs.push(self.train_slice(s, k == 0)?);
            }
            Tensor::f_cat(&outs, 0)?
        };
        let _ = tch::no_grad(|| self.num_batches_tracked.shallow_clone().f_add_scalar_(1))?;
        Ok(out)
    }

    /// One train-mode normalisation with batch statistics; `update` passes the running stats to the kernel,
    /// which then updates them in place (momentum 0.1, unbiased variance).
    fn train_slice(&self, x: &Tensor, update: bool) -> Result<Tensor> {
        let (rm, rv) = if update { (Some(&self.running_mean), Some(&self.running_var)) } else { (None, None) };
        Ok(x.f_batch_norm(Some(&self.weight), Some(&self.bias), rm, rv, true, BN_MOMENTUM, BN_EPS, true)?)
    }

    /// SyncBatchNorm: mean and biased variance per channel over the vectors of every rank (two differentiable
    /// all-reduces: the sum, then the sum of squared deviations from the global mean, so the variance is as exact
    /// as one process's two-pass one), in float32 at least; the running statistics get the global mean and the
    /// unbiased global variance (PyTorch's SyncBatchNorm). Every rank holds the same number of vectors.
    fn train_sync(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let kind = if x.kind() == Kind::Double { Kind::Double } else { Kind::Float };
        let xf = x.f_to_kind(kind)?;
        let dims: Vec<i64> = (0..size.len() as i64).filter(|&d| d != 1).collect();
        let mut shape = vec![1i64; size.len()];
        shape[1] = self.channels;
        let count = (x.numel() as i64 / self.channels) as f64 * crate::dist::world() as f64;
        let sum = xf.f_sum_dim_intlist(dims.as_slice(), false, kind)?;
        let mean = (crate::dist::sum_autograd(&sum)? / count).f_view(shape.as_slice())?;
        let centred = xf.f_sub(&mean)?;
        let sq = centred.f_square()?.f_sum_dim_intlist(dims.as_slice(), false, kind)?;
        let var = crate::dist::sum_autograd(&sq)? / count;
        let inv = (&var + BN_EPS).f_rsqrt()?.f_view(shape.as_slice())?;
        let y = centred * inv * self.weight.f_view(shape.as_slice())? + self.bias.f_view(shape.as_slice())?;
        tch::no_grad(|| -> Result<()> {
            let m = BN_MOMENTUM;
            let mean = mean.f_reshape([-1])?.f_to_kind(self.running_mean.kind())?;
            let var_u = (&var * (count / (count - 1.0).max(1.0))).f_to_kind(self.running_var.kind())?;
            let _ = self.running_mean.shallow_clone().f_mul_scalar_(1.0 - m)?.f_add_(&(mean * m))?;
            let _ = self.running_var.shallow_clone().f_mul_scalar_(1.0 - m)?.f_add_(&(var_u * m))?;
            Ok(())
        })?;
        Ok(y.f_to_kind(x.kind())?)
    }

    /// The five entries, in PyTorch's `state_dict` order, named `prefix.weight`, ….
    pub fn state(&self, prefix: &str, out: &mut Vec<StateEntry>) {
        out.push(StateEntry::new(prefix, "weight", &self.weight, true));
        out.push(StateEntry::new(prefix, "bias", &self.bias, true));
        out.push(StateEntry::new(prefix, "running_mean", &self.running_mean, false));
        out.push(StateEntry::new(prefix, "running_var", &self.running_var, false));
        out.push(StateEntry::new(prefix, "num_batches_tracked", &self.num_batches_tracked, false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    fn bn(vs: &VarStore, c: i64, splits: i64) -> BatchNorm {
        BatchNorm::new(&vs.root().sub("bn"), c, splits, true).expect("bn")
    }

    fn input(dims: &[i64]) -> Tensor {
        let n: i64 = dims.iter().product();
        (Tensor::arange(n, (Kind::Double, Device::Cpu)) * 0.37).sin().reshape(dims) * 3.0 + 0.5
    }

    #[test]
    fn train_matches_pytorch_formula() {
        let mut vs = VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let m = bn(&vs, 3, 1);
        let x = input(&[4, 3, 5]);
        let y = m.forward_t(&x, true).unwrap();
        // per channel over b*l vectors, biased variance
        let mean = x.mean_dim(&[0i64, 2][..], true, Kind::Double);
        let var = x.var_correction(&[0i64, 2][..], 0, true);
        let want = (&x - &mean) / (var + BN_EPS).sqrt();
        assert!(y.allclose(&want, 1e-12, 1e-12, false));
        // running stats: 0.9 * init + 0.1 * batch stat, unbiased variance
        let var_u = x.var_correction(&[0i64, 2][..], 1, false);
        let rm_want = mean.flatten(0, 2) * 0.1;
        let rv_want = var_u * 0.1 + 0.9;
        assert!(m.running_mean.allclose(&rm_want, 1e-12, 1e-12, false));
        assert!(m.running_var.allclose(&rv_want, 1e-12, 1e-12, false));
        assert_eq!(m.num_batches_tracked.int64_value(&[]), 1);
        assert_eq!(m.num_batches_tracked.kind(), Kind::Int64);
    }

    #[test]
    fn eval_uses_running_stats_and_updates_nothing() {
        let mut vs = VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let m = bn(&vs, 2, 1);
        let x = input(&[2, 2, 3, 3]);
        let y = m.forward_t(&x, false).unwrap();
        assert!(y.allclose(&(&x / (1.0 + BN_EPS).sqrt()), 1e-12, 1e-12, false));
        assert_eq!(m.num_batches_tracked.int64_value(&[]), 0);
        assert_eq!(m.running_mean.abs().sum(Kind::Double).double_value(&[]), 0.0);
    }

    #[test]
    fn ghost_bn_equals_two_half_batches() {
        let mut vs = VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let ghost = bn(&vs, 3, 2);
        let vs2 = {
            let mut v = VarStore::new(Device::Cpu);
            v.set_kind(Kind::Double);
            v
        };
        let plain = bn(&vs2, 3, 1);
        let x = input(&[4, 3, 2, 2]);
        let y = ghost.forward_t(&x, true).unwrap();
        let halves = x.chunk(2, 0);
        let y0 = plain.forward_t(&halves[0], true).unwrap();
        // slice 0 updated the running stats exactly like a plain BN on the first half
        assert!(ghost.running_mean.allclose(&plain.running_mean, 0.0, 0.0, false));
        assert!(ghost.running_var.allclose(&plain.running_var, 0.0, 0.0, false));
        let y1 = plain.forward_t(&halves[1], true).unwrap();
        assert!(y.allclose(&Tensor::cat(&[y0, y1], 0), 1e-14, 1e-14, false));
        assert_eq!(ghost.num_batches_tracked.int64_value(&[]), 1);
        // 3-D input works too and an indivisible batch is an error
        assert!(ghost.forward_t(&input(&[2, 3, 5]), true).is_ok());
        assert!(ghost.forward_t(&input(&[3, 3, 5]), true).is_err());
        assert!(ghost.forward_t(&input(&[4, 2, 5]), true).is_err());
    }

    #[test]
    fn gradients_reach_weight_and_bias() {
        let vs = VarStore::new(Device::Cpu);
        let m = bn(&vs, 2, 1);
        let x = input(&[3, 2, 4]).to_kind(Kind::Float);
        let y = m.forward_t(&x, true).unwrap();
        (y * &x).sum(Kind::Float).backward();
        assert!(m.weight.grad().defined() && m.bias.grad().defined());
        assert_eq!(vs.trainable_variables().len(), 2);
        assert_eq!(vs.variables().len(), 5);
    }
}
