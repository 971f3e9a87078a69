//! `MLP1D`: the projector / predictor of LEWEL_B, a two-layer per-position MLP over `[b, c, l]` sequences.
//!
//! Part of the LEWEL port (<https://arxiv.org/abs/2203.14898>); ports `models/lewel.py:MLP1D` as described in
//! `reference/lewel-official.md` §1.3: `mlp.0` = Conv1d(in, hid, k=1, no bias), `mlp.1` = BatchNorm1d(hid),
//! `mlp.2` = ReLU, `mlp.3` = Conv1d(hid, out, k=1, no bias). No BN after the last layer, no bias anywhere.
//! Init: kaiming normal, fan_out, ReLU gain, i.e. std = sqrt(2 / out_channels) for kernel 1.

use anyhow::{bail, Result};
use tch::{nn::Path, Tensor};

use super::{batchnorm::BatchNorm, randn_init, StateEntry};

/// Conv1d(k=1) → BN1d → ReLU → Conv1d(k=1).
#[derive(Debug)]
pub struct Mlp1d {
    /// `mlp.0.weight`, `[hid, in, 1]`.
    pub w0: Tensor,
    /// `mlp.1.*`.
    pub bn: BatchNorm,
    /// `mlp.3.weight`, `[out, hid, 1]`.
    pub w3: Tensor,
    in_dim: i64,
}

impl Mlp1d {
    /// Registers `p.mlp.0.weight`, `p.mlp.1.{weight,bias,running_mean,running_var,num_batches_tracked}` and
    /// `p.mlp.3.weight`.
    pub fn new(p: &Path, in_dim: i64, hidden: i64, out: i64, bn_splits: i64, trainable: bool) -> Result<Self> {
        let mlp = p.sub("mlp");
        let w0 =
            mlp.sub("0").add("weight", randn_init(p, &[hidden, in_dim, 1], (2.0 / hidden as f64).sqrt())?, trainable);
        let bn = BatchNorm::new(&mlp.sub("1"), hidden, bn_splits, trainable)?;
        let w3 = mlp.sub("3").add("weight", randn_init(p, &[out, hidden, 1], (2.0 / out as f64).sqrt())?, trainable);
        Ok(Mlp1d { w0, bn, w3, in_dim })
    }

    /// Applies the MLP to each of the l positions; BN statistics run over all b·l vectors.
    ///
    /// # Shapes
    /// `x`: `[b, in, l]` → `[b, out, l]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, c, _) = x.size3()?;
        if c != self.in_dim {
            bail!("MLP1D expects {} input channels, got input of shape {:?}", self.in_dim, x.size());
        }
        let h = x.f_conv1d(&self.w0, None::<&Tensor>, [1], [0], [1], 1)?; // [b, hid, l]
        let h = self.bn.forward_t(&h, train)?.f_relu()?;
        Ok(h.f_conv1d(&self.w3, None::<&Tensor>, [1], [0], [1], 1)?) // [b, out, l]
    }

    /// The seven entries under `prefix.mlp.*`, in PyTorch's `state_dict` order.
    pub fn state(&self, prefix: &str, out: &mut Vec<StateEntry>) {
        let p = super::join(prefix, "mlp");
        out.push(StateEntry::new(&p, "0.weight", &self.w0, true));
        self.bn.state(&super::join(&p, "1"), out);
        out.push(StateEntry::new(&p, "3.weight", &self.w3, true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device, Kind};

    #[test]
    fn shapes_names_and_init_std() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let m = Mlp1d::new(&vs.root().sub("proj"), 64, 512, 128, 1, true).unwrap();
        let y = m.forward_t(&Tensor::randn([3, 64, 5], (Kind::Float, Device::Cpu)), true).unwrap();
        assert_eq!(y.size(), [3, 128, 5]);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "proj.mlp.0.weight",
                "proj.mlp.1.bias",
                "proj.mlp.1.num_batches_tracked",
                "proj.mlp.1.running_mean",
                "proj.mlp.1.running_var",
                "proj.mlp.1.weight",
                "proj.mlp.3.weight"
            ]
        );
        let std0 = m.w0.std(true).double_value(&[]);
        let std3 = m.w3.std(true).double_value(&[]);
        assert!((std0 - (2.0f64 / 512.0).sqrt()).abs() < 0.002, "{std0}");
        assert!((std3 - (2.0f64 / 128.0).sqrt()).abs() < 0.004, "{std3}");
        assert!(m.forward_t(&Tensor::zeros([3, 63, 5], (Kind::Float, Device::Cpu)), true).is_err());
    }
}
