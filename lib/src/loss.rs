//! The LEWEL_B / BYOL losses as short free functions, and the collapse indicator.
//!
//! LEWEL: <https://arxiv.org/abs/2203.14898>. Ports `LEWELB_EMAN.mse_loss` and `loss_func` as described in
//! `reference/lewel-official.md` §2: the normalised MSE `2 − 2·Σ normalize(p)·normalize(t) / N` (the mean over
//! rows of 2 − 2·cos), weighted `α·L_g + (1 − α)·L_a` per direction, summed over the two directions by the model.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// PyTorch's `F.normalize(x, dim)`: `x / max(‖x‖₂, 1e-12)` along `dim`.
pub fn l2_normalize(x: &Tensor, dim: i64) -> Result<Tensor> {
    let norm = x.f_norm_scalaropt_dim(2, [dim], true)?.f_clamp_min(1e-12)?;
    Ok(x.f_div(&norm)?)
}

/// Normalised MSE between rows: `2 − 2·Σᵢ cos(pᵢ, tᵢ) / N`, in [0, 4].
///
/// # Shapes
/// `p`, `t`: `[n, d]`, the same shape (checked: no broadcasting) → scalar.
pub fn normalized_mse(p: &Tensor, t: &Tensor) -> Result<Tensor> {
    let (n, d) = p.size2()?;
    if t.size2()? != (n, d) {
        bail!("normalized_mse: prediction {:?} and target {:?} differ in shape", p.size(), t.size());
    }
    let dot = (l2_normalize(p, 1)? * l2_normalize(t, 1)?).f_sum(p.kind())?;
    Ok(2.0 - 2.0 * dot / n as f64)
}

/// The global term of one direction: `normalized_mse(predictor(z_o), z_t)` with the length-1 position axis dropped.
///
/// # Shapes
/// `pred`, `target`: `[b, k, 1]` → scalar.
pub fn global_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    for t in [pred, target] {
        if t.size3()?.2 != 1 {
            bail!("global_loss expects [b, k, 1] embeddings, got {:?}", t.size());
        }
    }
    normalized_mse(&pred.f_squeeze_dim(2)?, &target.f_squeeze_dim(2)?)
}

/// The aligned term of one direction: each of the n aligned embeddings of each image is one row.
///
/// # Shapes
/// `pred`, `target`: `[b, k, n]` → rows `[b·n, k]` → scalar (N = b·n).
pub fn aligned_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (b, k, n) = pred.size3()?;
    if target.size3()? != (b, k, n) {
        bail!("aligned_loss: prediction {:?} and target {:?} differ in shape", pred.size(), target.size());
    }
    let rows = |x: &Tensor| x.f_transpose(2, 1)?.f_reshape([b * n, k]); // [b*n, k]
    normalized_mse(&rows(pred)?, &rows(target)?)
}

/// `α·L_g + (1 − α)·L_a`: α weights the GLOBAL loss (the official `loss_weight`, §2 ⚠).
pub fn combine(alpha: f64, global: &Tensor, aligned: &Tensor) -> Tensor {
    global * alpha + aligned * (1.0 - alpha)
}

/// Collapse indicator: the standard deviation over the batch of the L2-normalised embeddings, averaged over the
/// dimensions (as lightly's `std_of_l2_normalized`). About 1/sqrt(d) for healthy embeddings, 0 at collapse.
/// Returns 0 for a batch of one (the unbiased std is undefined there).
///
/// # Shapes
/// `z`: `[b, d]` → f64.
pub fn collapse_std(z: &Tensor) -> Result<f64> {
    let (b, _) = z.size2()?;
    if b < 2 {
        return Ok(0.0);
    }
    let zn = tch::no_grad(|| l2_normalize(&z.detach(), 1))?;
    Ok(zn.f_std_dim(&[0i64][..], true, false)?.f_mean(Kind::Double)?.f_double_value(&[])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(v: &[f64], dims: &[i64]) -> Tensor {
        Tensor::from_slice(v).reshape(dims)
    }

    #[test]
    fn normalize_matches_hand_values() {
        let x = t(&[3.0, 4.0, 0.0, 0.0], &[2, 2]);
        let y = l2_normalize(&x, 1).unwrap();
        assert!(y.allclose(&t(&[0.6, 0.8, 0.0, 0.0], &[2, 2]), 0.0, 1e-15, false));
    }

    #[test]
    fn normalized_mse_by_hand() {
        // row 0: identical directions (cos 1); row 1: orthogonal (cos 0) -> 2 - 2*(1+0)/2 = 1
        let p = t(&[1.0, 0.0, 0.0, 2.0], &[2, 2]);
        let q = t(&[5.0, 0.0, 3.0, 0.0], &[2, 2]);
        assert!((normalized_mse(&p, &q).unwrap().double_value(&[]) - 1.0).abs() < 1e-15);
        // opposite directions -> 4
        let r = t(&[-1.0, 0.0, 0.0, -2.0], &[2, 2]);
        assert!((normalized_mse(&p, &r).unwrap().double_value(&[]) - 4.0).abs() < 1e-15);
        // cos(45°) on one row: 2 - 2*(1/sqrt2) = 0.585786...
        let a = t(&[1.0, 0.0], &[1, 2]);
        let b = t(&[1.0, 1.0], &[1, 2]);
        let want = 2.0 - 2.0 / 2f64.sqrt();
        assert!((normalized_mse(&a, &b).unwrap().double_value(&[]) - want).abs() < 1e-15);
        assert!(normalized_mse(&p, &t(&[1.0, 2.0], &[1, 2])).is_err());
        assert!(normalized_mse(&p, &t(&[1.0, 2.0, 3.0, 4.0], &[4])).is_err());
    }

    #[test]
    fn global_and_aligned_by_hand() {
        // global: [b=2, k=2, 1]
        let p = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2, 1]);
        let q = t(&[1.0, 0.0, 1.0, 0.0], &[2, 2, 1]);
        assert!((global_loss(&p, &q).unwrap().double_value(&[]) - 1.0).abs() < 1e-15);
        assert!(global_loss(&p.reshape([2, 1, 2]), &q.reshape([2, 1, 2])).is_err());
        // aligned: [b=1, k=2, n=2]; column j is embedding j: p cols (1,0),(0,1); q cols (1,0),(-1,0)
        let pa = t(&[1.0, 0.0, 0.0, 1.0], &[1, 2, 2]);
        let qa = t(&[1.0, -1.0, 0.0, 0.0], &[1, 2, 2]);
        // cos = 1 and 0 -> 2 - 2*1/2 = 1
        assert!((aligned_loss(&pa, &qa).unwrap().double_value(&[]) - 1.0).abs() < 1e-15);
        // swap q's columns: cos = -1 and 0 -> 2 - 2*(-1)/2 = 3
        let qb = t(&[-1.0, 1.0, 0.0, 0.0], &[1, 2, 2]);
        assert!((aligned_loss(&pa, &qb).unwrap().double_value(&[]) - 3.0).abs() < 1e-15);
        let c = combine(0.25, &Tensor::from(2.0), &Tensor::from(4.0));
        assert!((c.double_value(&[]) - 3.5).abs() < 1e-15);
    }

    #[test]
    fn collapse_std_by_hand() {
        // normalised rows (1,0) and (0,1): per-dim std (unbiased) = sqrt(0.5), mean over dims = sqrt(0.5)
        let z = t(&[2.0, 0.0, 0.0, 3.0], &[2, 2]);
        assert!((collapse_std(&z).unwrap() - 0.5f64.sqrt()).abs() < 1e-15);
        // collapsed: identical directions -> 0
        let c = t(&[1.0, 1.0, 2.0, 2.0], &[2, 2]);
        assert!(collapse_std(&c).unwrap().abs() < 1e-15);
        assert_eq!(collapse_std(&Tensor::ones([1, 4], (Kind::Double, Device::Cpu))).unwrap(), 0.0);
    }
}
