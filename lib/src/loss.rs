//! The LEWEL_B / BYOL and LEWEL_M / MoCo v2 losses as short free functions, and the collapse indicator.
//!
//! LEWEL: <https://arxiv.org/abs/2203.14898>. Ports `LEWELB_EMAN.mse_loss` and `loss_func` as described in
//! `reference/lewel-official.md` §2: the normalised MSE `2 − 2·Σ normalize(p)·normalize(t) / N` (the mean over
//! rows of 2 − 2·cos), weighted `α·L_g + (1 − α)·L_a` per direction, summed over the two directions by the model.
//!
//! LEWEL_M (paper Eq. 4, §1.9; no official code): InfoNCE over cosine similarities divided by a temperature τ,
//! `−log( exp(cos(q,k⁺)/τ) / (exp(cos(q,k⁺)/τ) + Σ exp(cos(q,k⁻)/τ)) )`, averaged over the queries. The global
//! term takes its negatives k⁻ from the key queue ([`info_nce_queue`]); the aligned term from the other aligned
//! target embeddings of the batch ([`info_nce_batch`]). Both are cross-entropies with the positive as the
//! correct class, as MoCo computes them.

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

/// InfoNCE of each query against its own key, with the columns of `queue` as the shared negatives (MoCo):
/// logits `[cos(qᵢ, kᵢ), qᵢ·queue] / τ`, cross-entropy with class 0, mean over the n queries. `q` and `k` are
/// L2-normalised here; the queue columns are used as they are (the queue keeps them normalised).
///
/// # Shapes
/// `q`, `k`: `[n, d]` (the same shape, checked); `queue`: `[d, K]` → scalar.
pub fn info_nce_queue(q: &Tensor, k: &Tensor, queue: &Tensor, temperature: f64) -> Result<Tensor> {
    let (n, d) = q.size2()?;
    if k.size2()? != (n, d) {
        bail!("info_nce_queue: queries {:?} and keys {:?} differ in shape", q.size(), k.size());
    }
    if queue.size2()?.0 != d {
        bail!("info_nce_queue: the queue {:?} does not hold keys of dimension {d}", queue.size());
    }
    let (qn, kn) = (l2_normalize(q, 1)?, l2_normalize(k, 1)?);
    let pos = (&qn * &kn).f_sum_dim_intlist([1i64].as_slice(), true, qn.kind())?; // [n, 1]
    let neg = qn.f_matmul(queue)?; // [n, K]
    let logits = Tensor::f_cat(&[pos, neg], 1)? / temperature; // [n, 1+K]
    let labels = Tensor::f_zeros([n], (Kind::Int64, q.device()))?;
    cross_entropy(&logits, &labels)
}

/// InfoNCE inside a batch: query i's positive is key i, its negatives are all other keys. One `[n, n]` matrix of
/// cosines / τ, cross-entropy with the diagonal as the correct classes, mean over the n queries.
///
/// # Shapes
/// `q`, `k`: `[n, d]` (the same shape, checked) → scalar.
pub fn info_nce_batch(q: &Tensor, k: &Tensor, temperature: f64) -> Result<Tensor> {
    let (n, d) = q.size2()?;
    if k.size2()? != (n, d) {
        bail!("info_nce_batch: queries {:?} and keys {:?} differ in shape", q.size(), k.size());
    }
    info_nce_batch_at(q, k, 0, temperature)
}

/// [`info_nce_batch`] for a slice of the queries: query i's positive is key `first + i` of all the keys (the
/// other ranks' keys included, in data parallelism), its negatives all other keys. `first = 0` with as many keys
/// as queries is [`info_nce_batch`], bit for bit.
///
/// # Shapes
/// `q`: `[m, d]`; `k`: `[n, d]` with `first + m <= n` → scalar.
pub fn info_nce_batch_at(q: &Tensor, k: &Tensor, first: i64, temperature: f64) -> Result<Tensor> {
    let ((m, d), (n, dk)) = (q.size2()?, k.size2()?);
    if d != dk || first < 0 || first + m > n {
        bail!("info_nce_batch_at: queries {:?} from {first} do not fit keys {:?}", q.size(), k.size());
    }
    let logits = l2_normalize(q, 1)?.f_matmul(&l2_normalize(k, 1)?.f_transpose(0, 1)?)? / temperature; // [m, n]
    let labels = Tensor::f_arange_start(first, first + m, (Kind::Int64, q.device()))?;
    cross_entropy(&logits, &labels)
}

/// The LEWEL_M global term of one direction: [`info_nce_queue`] of the online global embeddings (the queries)
/// against the target global embeddings of the other view (the keys), with the length-1 position axis dropped.
///
/// # Shapes
/// `online`, `target`: `[b, k, 1]`; `queue`: `[k, K]` → scalar.
pub fn global_info_nce(online: &Tensor, target: &Tensor, queue: &Tensor, temperature: f64) -> Result<Tensor> {
    for t in [online, target] {
        if t.size3()?.2 != 1 {
            bail!("global_info_nce expects [b, k, 1] embeddings, got {:?}", t.size());
        }
    }
    info_nce_queue(&online.f_squeeze_dim(2)?, &target.f_squeeze_dim(2)?, queue, temperature)
}

/// The LEWEL_M aligned term of one direction: each of the n aligned embeddings of each of the b images is one
/// query (row `i·n + j`); its positive is the target embedding (i, j) of the other view, its negatives the other
/// b·n − 1 target aligned embeddings of the batch (other images at any index, and the same image at other
/// indices). See [`info_nce_batch`].
///
/// # Shapes
/// `online`, `target`: `[b, k, n]` → rows `[b·n, k]` → scalar.
pub fn aligned_info_nce(online: &Tensor, target: &Tensor, temperature: f64) -> Result<Tensor> {
    let (b, k, n) = online.size3()?;
    if target.size3()? != (b, k, n) {
        bail!("aligned_info_nce: online {:?} and target {:?} differ in shape", online.size(), target.size());
    }
    aligned_info_nce_at(online, target, 0, temperature)
}

/// [`aligned_info_nce`] for the images `first..first + b` of a larger target batch (data parallelism: this rank's
/// queries against the target aligned embeddings of every rank, so the negatives are those of one process on the
/// whole batch).
///
/// # Shapes
/// `online`: `[b, k, n]`; `target`: `[B, k, n]` with `first + b <= B` → scalar.
pub fn aligned_info_nce_at(online: &Tensor, target: &Tensor, first: i64, temperature: f64) -> Result<Tensor> {
    let (b, k, n) = online.size3()?;
    let (bt, kt, nt) = target.size3()?;
    if (kt, nt) != (k, n) {
        bail!("aligned_info_nce: online {:?} and target {:?} differ in shape", online.size(), target.size());
    }
    let rows = |x: &Tensor, m: i64| x.f_transpose(2, 1)?.f_reshape([m * n, k]); // [m*n, k]
    info_nce_batch_at(&rows(online, b)?, &rows(target, bt)?, first * n, temperature)
}

/// Mean cross-entropy of `logits` `[n, c]` against class indices `labels` `[n]` (PyTorch's `F.cross_entropy`).
fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(logits.f_cross_entropy_loss(labels, None::<Tensor>, tch::Reduction::Mean, -100, 0.0)?)
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
    fn info_nce_batch_by_hand() {
        // q = k = e1, e2 at tau 1: logits = I, each row -1 + ln(e + 1)
        let e = t(&[1.0, 0.0, 0.0, 3.0], &[2, 2]);
        let want = (1f64.exp() + 1.0).ln() - 1.0;
        assert!((info_nce_batch(&e, &e, 1.0).unwrap().double_value(&[]) - want).abs() < 1e-15);
        // tau 0.5 doubles the logits
        let want = (2f64.exp() + 1.0).ln() - 2.0;
        assert!((info_nce_batch(&e, &e, 0.5).unwrap().double_value(&[]) - want).abs() < 1e-15);
        // keys swapped: the positives are now orthogonal, the negatives identical: ln(1 + e) per row
        let swapped = t(&[0.0, 2.0, 5.0, 0.0], &[2, 2]);
        let want = (1.0 + 1f64.exp()).ln();
        assert!((info_nce_batch(&e, &swapped, 1.0).unwrap().double_value(&[]) - want).abs() < 1e-15);
        assert!(info_nce_batch(&e, &t(&[1.0, 0.0], &[1, 2]), 1.0).is_err());
    }

    #[test]
    fn info_nce_queue_by_hand() {
        // queries (1,0), (0,1); keys (2,0), (1,0); queue columns (0,1), (-1,0); tau 1
        let q = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
        let k = t(&[2.0, 0.0, 1.0, 0.0], &[2, 2]);
        let queue = t(&[0.0, -1.0, 1.0, 0.0], &[2, 2]); // [d, K]: column 0 = (0,1), column 1 = (-1,0)
                                                        // row 0: pos 1, negs 0, -1; row 1: pos 0, negs 1, 0
        let e = 1f64.exp();
        let row0 = (e + 1.0 + 1.0 / e).ln() - 1.0;
        let row1 = (1.0 + e + 1.0).ln();
        let got = info_nce_queue(&q, &k, &queue, 1.0).unwrap().double_value(&[]);
        assert!((got - (row0 + row1) / 2.0).abs() < 1e-15, "{got}");
        // tau 0.2 scales every logit by 5
        let row0 = (5f64.exp() + 1.0 + (-5f64).exp()).ln() - 5.0;
        let row1 = (1.0 + 5f64.exp() + 1.0).ln();
        let got = info_nce_queue(&q, &k, &queue, 0.2).unwrap().double_value(&[]);
        assert!((got - (row0 + row1) / 2.0).abs() < 1e-13, "{got}");
        // the global wrapper drops the position axis and checks it
        let g = global_info_nce(&q.unsqueeze(2), &k.unsqueeze(2), &queue, 0.2).unwrap().double_value(&[]);
        assert_eq!(g, got);
        assert!(global_info_nce(&q.unsqueeze(1), &k.unsqueeze(1), &queue, 0.2).is_err());
        assert!(info_nce_queue(&q, &k, &t(&[1.0, 0.0, 0.0], &[3, 1]), 1.0).is_err());
    }

    #[test]
    fn aligned_info_nce_pairs_image_and_index() {
        // [b=1, k=2, n=2]: column j is embedding j. Online columns (1,0), (0,1).
        let on = t(&[1.0, 0.0, 0.0, 1.0], &[1, 2, 2]);
        // target columns in the same order: logits I -> ln(e + 1) - 1 per row
        let same = t(&[4.0, 0.0, 0.0, 4.0], &[1, 2, 2]);
        let want = (1f64.exp() + 1.0).ln() - 1.0;
        assert!((aligned_info_nce(&on, &same, 1.0).unwrap().double_value(&[]) - want).abs() < 1e-15);
        // target columns swapped: the same image's other index is a negative -> ln(1 + e)
        let swapped = t(&[0.0, 1.0, 1.0, 0.0], &[1, 2, 2]);
        let want = (1.0 + 1f64.exp()).ln();
        assert!((aligned_info_nce(&on, &swapped, 1.0).unwrap().double_value(&[]) - want).abs() < 1e-15);
        // [b=2, k=1, n=1] is the global case: rows are images
        let a = t(&[1.0, -1.0], &[2, 1, 1]);
        let want = (1f64.exp() + (-1f64).exp()).ln() - 1.0;
        assert!((aligned_info_nce(&a, &a, 1.0).unwrap().double_value(&[]) - want).abs() < 1e-15);
        assert!(aligned_info_nce(&on, &a, 1.0).is_err());
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
