//! The two dense protocols on frozen feature maps, as plain tensor code: patch label histograms, the
//! kNN ("Hummingbird"-style) vote, and the 1x1-convolution linear classifier.
//!
//! Every function takes feature maps `[n, c, h, w]` (float32) and masks `[n, H, W]` (uint8 class ids,
//! [`IGNORE`] ignored) on the CPU and moves chunks to `device`, so a split larger than the device memory works.
//! A pixel `(y, x)` of an `H x W` mask belongs to patch `(floor(y·h/H), floor(x·w/W))` of the `h x w` grid (for
//! H a multiple of h: blocks of H/h rows). Scores are taken at the masks' resolution from logits or votes
//! upsampled bilinearly (`align_corners = false`, as `F.interpolate`); the prediction is the argmax (ties: the
//! smallest class, as `torch.argmax`).

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use super::metrics::{Confusion, IGNORE};
use crate::eval::linear::permutation;
use crate::eval::Progress;
use crate::optim::{Group, Optimizer, Rule};

/// Images per chunk when histogramming masks or scoring predictions.
const IMAGE_CHUNK: i64 = 256;

/// One split: frozen feature maps and their masks.
#[derive(Debug)]
pub struct DenseSplit {
    /// `[n, c, h, w]` float32, CPU.
    pub feats: Tensor,
    /// `[n, H, W]` uint8, CPU.
    pub masks: Tensor,
}

impl DenseSplit {
    /// Checks the shapes: 4-d float features, 3-d uint8 masks, one mask per map, masks not coarser than the grid.
    pub fn new(feats: Tensor, masks: Tensor) -> Result<Self> {
        let (n, _, h, w) = feats.size4()?;
        let (nm, mh, mw) = masks.size3()?;
        if n != nm {
            bail!("{n} feature maps but {nm} masks; they must describe the same images in the same order");
        }
        if mh < h || mw < w {
            bail!("masks of {mh}x{mw} are coarser than the {h}x{w} feature grid");
        }
        Ok(DenseSplit { feats: feats.to_kind(Kind::Float), masks: masks.to_kind(Kind::Uint8) })
    }

    pub fn len(&self) -> i64 {
        self.feats.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (h, w) of the feature grid.
    pub fn grid(&self) -> (i64, i64) {
        let s = self.feats.size();
        (s[2], s[3])
    }

    /// (H, W) of the masks.
    pub fn mask_hw(&self) -> (i64, i64) {
        let s = self.masks.size();
        (s[1], s[2])
    }

    pub fn dim(&self) -> i64 {
        self.feats.size()[1]
    }
}

/// The patch index of every mask pixel: `[H, W]` int64 values `py·w + px`.
fn patch_of_pixel(mh: i64, mw: i64, h: i64, w: i64) -> Tensor {
    let opts = (Kind::Int64, Device::Cpu);
    let py = (Tensor::arange(mh, opts) * h).floor_divide_scalar(mh); // [H]
    let px = (Tensor::arange(mw, opts) * w).floor_divide_scalar(mw); // [W]
    py.view([mh, 1]) * w + px.view([1, mw]) // [H, W]
}

/// Label counts of each patch: masks `[n, H, W]` → `[n·h·w, classes]` float32 counts (row `(i·h + py)·w + px`),
/// ignored pixels not counted. Ids must be `< classes` or [`IGNORE`] (the readers check).
pub fn patch_histograms(masks: &Tensor, h: i64, w: i64, classes: i64) -> Result<Tensor> {
    let (n, mh, mw) = masks.size3()?;
    let cell = patch_of_pixel(mh, mw, h, w); // [H, W]
    let mut out = Vec::new();
    let mut lo = 0;
    while lo < n {
        let b = IMAGE_CHUNK.min(n - lo);
        let m = masks.narrow(0, lo, b).to_kind(Kind::Int64); // [b, H, W]
        let img = Tensor::arange(b, (Kind::Int64, Device::Cpu)).view([b, 1, 1]);
        let keep = m.ne(IGNORE as i64);
        let idx = ((img * (h * w) + cell.view([1, mh, mw])) * classes + &m).masked_select(&keep);
        let counts = idx.bincount::<Tensor>(None, b * h * w * classes); // [b*h*w*classes]
        if counts.size()[0] != b * h * w * classes {
            bail!("a mask id at or above the {classes} classes reached the histograms");
        }
        out.push(counts.view([b * h * w, classes]).to_kind(Kind::Float));
        lo += b;
    }
    Ok(Tensor::cat(&out, 0))
}

/// `[n, c, h, w]` → `[n·h·w, c]` (row `(i·h + y)·w + x`).
fn patches(feats: &Tensor) -> Tensor {
    let c = feats.size()[1];
    feats.permute([0, 2, 3, 1]).reshape([-1, c]) // [n*h*w, c]
}

/// Predictions at mask resolution from per-patch scores: `[b·h·w, k]` → `[b, H, W]` int64.
fn predict(scores: &Tensor, b: i64, h: i64, w: i64, mh: i64, mw: i64) -> Tensor {
    let k = scores.size()[1];
    let grid = scores.view([b, h, w, k]).permute([0, 3, 1, 2]).contiguous(); // [b, k, h, w]
    let up = grid.upsample_bilinear2d([mh, mw], false, None, None); // [b, k, H, W]
    up.argmax(1, false) // [b, H, W]
}

/// Settings of the kNN protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnSettings {
    /// Neighbours per query patch.
    pub k: i64,
    /// Softmax temperature of the neighbours' cosine similarities.
    pub temperature: f64,
    /// The largest memory bank: more training patches than this are sampled down with `seed`.
    pub memory_size: usize,
    pub seed: u64,
    /// Query patches per similarity block (memory only: the numbers do not depend on it).
    pub query_chunk: i64,
    /// Bank patches per similarity block (memory only).
    pub bank_chunk: i64,
}

/// The memory bank: L2-normalised patch features `[m, c]` and each patch's label distribution `[m, classes]`.
#[derive(Debug)]
pub struct Bank {
    pub feats: Tensor,
    pub labels: Tensor,
    /// Training patches with at least one labelled pixel, before the cap.
    pub candidates: usize,
}

/// The rows kept when `m` candidates are capped at `cap`: all of them, or the first `cap` of a permutation
/// keyed by `seed`, in ascending order.
pub fn bank_rows(m: usize, cap: usize, seed: u64) -> Vec<i64> {
    if m <= cap {
        return (0..m as i64).collect();
    }
    let mut rows: Vec<i64> = permutation(seed ^ 0x6D65_6D6F_7279, 0, m)[..cap].to_vec(); // "memory"
    rows.sort_unstable();
    rows
}

/// The bank of a training split: every patch with a labelled pixel, capped by [`bank_rows`].
pub fn build_bank(train: &DenseSplit, classes: i64, s: &KnnSettings) -> Result<Bank> {
    let (h, w) = train.grid();
    let hist = patch_histograms(&train.masks, h, w, classes)?; // [n*h*w, classes]
    let total = hist.sum_dim_intlist(1, true, Kind::Float); // [n*h*w, 1]
    let valid = total.view([-1]).gt(0.0).nonzero().view([-1]); // [m]
    let candidates = valid.size()[0] as usize;
    if candidates == 0 {
        bail!("no training patch has a labelled pixel (every mask pixel is {IGNORE}); the bank would be empty");
    }
    let keep = valid.index_select(0, &Tensor::from_slice(&bank_rows(candidates, s.memory_size, s.seed)));
    let feats = crate::loss::l2_normalize(&patches(&train.feats).index_select(0, &keep), 1)?;
    let labels = hist.index_select(0, &keep) / total.index_select(0, &keep); // [m, classes]
    Ok(Bank { feats, labels, candidates })
}

/// The kNN votes of query patches `[q, c]` (normalised here) against `bank`: the top-k cosine similarities
/// (found block by block, merged), weighted by their softmax at temperature T, summing the neighbours' label
/// distributions → `[q, classes]` on the CPU. Equals `softmax(topk(q̂ b̂ᵀ, k) / T) · labels[topk]` in one block.
pub fn knn_votes(bank: &Bank, queries: &Tensor, s: &KnnSettings, device: Device) -> Result<Tensor> {
    let (q, _) = queries.size2()?;
    let m = bank.feats.size()[0];
    let k = s.k.min(m);
    let classes = bank.labels.size()[1];
    let bx = bank.feats.to_device(device);
    let by = bank.labels.to_device(device);
    let mut out = Vec::new();
    let mut lo = 0;
    while lo < q {
        let b = s.query_chunk.min(q - lo);
        let qx = crate::loss::l2_normalize(&queries.narrow(0, lo, b).to_device(device), 1)?; // [b, c]
        let mut best: Option<(Tensor, Tensor)> = None; // ([b, k] sims, [b, k] bank rows)
        let mut off = 0;
        while off < m {
            let n = s.bank_chunk.min(m - off);
            let sims = qx.mm(&bx.narrow(0, off, n).tr()); // [b, n]
            let (sv, si) = sims.topk(k.min(n), 1, true, true);
            let si = si + off;
            best = Some(match best {
                None => (sv, si),
                Some((bv, bi)) => {
                    let (cv, ci) = (Tensor::cat(&[bv, sv], 1), Tensor::cat(&[bi, si], 1)); // [b, <=2k]
                    let (tv, ti) = cv.topk(k, 1, true, true);
                    (tv, ci.gather(1, &ti, false))
                }
            });
            off += n;
        }
        let (sv, si) = best.expect("the bank is not empty");
        let weights = (sv / s.temperature).softmax(1, Kind::Float); // [b, k]
        let neigh = by.index_select(0, &si.view([-1])).view([b, k, classes]); // [b, k, classes]
        let votes = (weights.unsqueeze(-1) * neigh).sum_dim_intlist(1, false, Kind::Float); // [b, classes]
        out.push(votes.to_device(Device::Cpu));
        lo += b;
    }
    Ok(Tensor::cat(&out, 0))
}

/// The kNN protocol: the bank of `train`, votes for every `val` patch, predictions at mask resolution.
/// Returns the confusion matrix and the votes `[n_val·h·w, classes]`.
pub fn knn_evaluate(
    train: &DenseSplit,
    val: &DenseSplit,
    classes: i64,
    s: &KnnSettings,
    device: Device,
    progress: Progress,
) -> Result<(Confusion, Tensor, Bank)> {
    let bank = build_bank(train, classes, s)?;
    // on the device once, not per chunk of queries
    let bank = Bank { feats: bank.feats.to_device(device), labels: bank.labels.to_device(device), ..bank };
    let (h, w) = val.grid();
    let (mh, mw) = val.mask_hw();
    let n = val.len();
    let mut conf = Confusion::new(classes as usize);
    let mut all = Vec::new();
    let mut lo = 0;
    while lo < n {
        let b = IMAGE_CHUNK.min(n - lo);
        let votes = knn_votes(&bank, &patches(&val.feats.narrow(0, lo, b)), s, device)?; // [b*h*w, classes]
        let pred = predict(&votes.to_device(device), b, h, w, mh, mw);
        conf.add_tensors(&val.masks.narrow(0, lo, b), &pred)?;
        all.push(votes);
        lo += b;
        progress(lo as u64, n as u64);
    }
    Ok((conf, Tensor::cat(&all, 0), bank))
}

/// Settings of the linear protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearSettings {
    pub epochs: usize,
    pub lr: f64,
    /// Images per step (all their patches).
    pub batch_size: i64,
}

/// Heavy-ball momentum of the linear protocol's SGD (a method constant).
pub const MOMENTUM: f64 = 0.9;
/// Added to the channel variance before the standardisation's square root.
pub const STD_EPS: f64 = 1e-5;

/// A trained 1x1-convolution classifier with the feature standardisation it was trained on.
#[derive(Debug)]
pub struct LinearHead {
    /// `[classes, c]`.
    pub weight: Tensor,
    /// `[classes]`.
    pub bias: Tensor,
    /// Channel mean and `sqrt(var + eps)` of the training features, `[c]`.
    pub mean: Tensor,
    pub std: Tensor,
    /// Mean training loss of each epoch.
    pub epoch_loss: Vec<f64>,
}

impl LinearHead {
    /// Logits of standardised patches: `[n, c, h, w]` → `[n·h·w, classes]`.
    fn logits(&self, feats: &Tensor) -> Tensor {
        let x = (patches(feats) - &self.mean) / &self.std; // [p, c]
        x.mm(&self.weight.tr()) + &self.bias // [p, classes]
    }
}

/// Trains the linear protocol: features standardised per channel with the training split's statistics, a
/// 1x1 convolution (weights and bias zero), soft-target cross-entropy against each patch's label
/// distribution (the mask downsampled to the grid by area; patches without a labelled pixel weigh 0), mean over
/// the batch's weighted patches; SGD momentum [`MOMENTUM`], constant lr, no weight decay; the images in file
/// order, `batch_size` at a time (the last batch partial). No randomness: PyTorch reproduces it step for step.
/// `on_epoch` gets (epoch, mean loss, seconds).
pub fn linear_train(
    train: &DenseSplit,
    classes: i64,
    s: &LinearSettings,
    device: Device,
    on_epoch: &mut dyn FnMut(usize, f64, f64) -> Result<()>,
    progress: Progress,
) -> Result<LinearHead> {
    let (h, w) = train.grid();
    let c = train.dim();
    let n = train.len();
    let hist = patch_histograms(&train.masks, h, w, classes)?; // [n*h*w, classes]
    let (var, mean) = train.feats.var_mean_correction(Some(&[0i64, 2, 3][..]), 0, false); // [c]
    let (mean, std) = (mean.to_device(device), (var + STD_EPS).sqrt().to_device(device));
    let opts = (Kind::Float, device);
    let weight = Tensor::zeros([classes, c], opts).set_requires_grad(true);
    let bias = Tensor::zeros([classes], opts).set_requires_grad(true);
    let mut opt = Optimizer::with_groups(
        Rule::sgd(MOMENTUM),
        vec![Group { lr_scale: 1.0, weight_decay: 0.0, lars: false }],
        vec![("weight".into(), weight.shallow_clone(), 0), ("bias".into(), bias.shallow_clone(), 0)],
    );
    let steps = (n + s.batch_size - 1) / s.batch_size;
    let mut epoch_loss = Vec::with_capacity(s.epochs);
    for epoch in 0..s.epochs {
        let t0 = std::time::Instant::now();
        let mut sum = 0.0;
        let mut lo = 0;
        while lo < n {
            let b = s.batch_size.min(n - lo);
            let x = (patches(&train.feats.narrow(0, lo, b).to_device(device)) - &mean) / &std; // [p, c]
            let counts = hist.narrow(0, lo * h * w, b * h * w).to_device(device); // [p, classes]
            let total = counts.sum_dim_intlist(1, true, Kind::Float); // [p, 1]
            let target = &counts / total.clamp_min(1.0);
            let wt = total.gt(0.0).to_kind(Kind::Float).view([-1]); // [p]
            let logp = (x.mm(&weight.tr()) + &bias).log_softmax(1, Kind::Float); // [p, classes]
            let ce = -(target * logp).sum_dim_intlist(1, false, Kind::Float); // [p]
            let loss = (ce * &wt).sum(Kind::Float) / wt.sum(Kind::Float).clamp_min(1.0);
            opt.zero_grad();
            loss.backward();
            opt.step(s.lr);
            let l = loss.double_value(&[]);
            if !l.is_finite() {
                return Err(crate::LewelError::Diverged {
                    step: (epoch as i64 * steps + lo / s.batch_size) as u64,
                    loss: l,
                }
                .into());
            }
            sum += l;
            lo += b;
        }
        let mean_loss = sum / steps.max(1) as f64;
        epoch_loss.push(mean_loss);
        on_epoch(epoch + 1, mean_loss, t0.elapsed().as_secs_f64())?;
        progress((epoch + 1) as u64, s.epochs as u64);
    }
    Ok(LinearHead { weight: weight.detach(), bias: bias.detach(), mean, std, epoch_loss })
}

/// Scores a trained head on `val`: logits per patch, upsampled to the masks, argmax.
pub fn linear_evaluate(head: &LinearHead, val: &DenseSplit, classes: i64, device: Device) -> Result<Confusion> {
    let (h, w) = val.grid();
    let (mh, mw) = val.mask_hw();
    let n = val.len();
    let mut conf = Confusion::new(classes as usize);
    let mut lo = 0;
    tch::no_grad(|| -> Result<()> {
        while lo < n {
            let b = IMAGE_CHUNK.min(n - lo);
            let logits = head.logits(&val.feats.narrow(0, lo, b).to_device(device)); // [b*h*w, classes]
            let pred = predict(&logits, b, h, w, mh, mw);
            conf.add_tensors(&val.masks.narrow(0, lo, b), &pred)?;
            lo += b;
        }
        Ok(())
    })?;
    Ok(conf)
}

/// Predicted masks `[b, H, W]` int64 of val images `lo..lo+b` (the preview): from kNN votes or a head.
pub fn predictions(val: &DenseSplit, lo: i64, b: i64, scores: &Tensor) -> Tensor {
    let (h, w) = val.grid();
    let (mh, mw) = val.mask_hw();
    predict(&scores.narrow(0, lo * h * w, b * h * w), b, h, w, mh, mw)
}

/// The per-patch logits of val images `lo..lo+b` under `head` (for [`predictions`]).
pub fn head_scores(head: &LinearHead, val: &DenseSplit, lo: i64, b: i64, device: Device) -> Tensor {
    tch::no_grad(|| head.logits(&val.feats.narrow(0, lo, b).to_device(device)).to_device(Device::Cpu))
}

/// Combines stage maps for `--layers 3,4`: each map upsampled bilinearly to the finest grid, concatenated along
/// channels in the order given.
pub fn concat_stages(maps: &[Tensor]) -> Result<Tensor> {
    let mut finest = (0, 0);
    for m in maps {
        let (_, _, h, w) = m.size4()?;
        if h * w > finest.0 * finest.1 {
            finest = (h, w);
        }
    }
    let up: Vec<Tensor> = maps
        .iter()
        .map(|m| {
            let s = m.size();
            if (s[2], s[3]) == finest {
                m.shallow_clone()
            } else {
                m.upsample_bilinear2d([finest.0, finest.1], false, None, None)
            }
        })
        .collect();
    Ok(Tensor::cat(&up, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_block_pixels_and_skip_ignored() {
        // one 4x4 mask, 2x2 grid: blocks of 2x2 pixels
        let m: Vec<u8> = vec![0, 0, 1, 255, 0, 2, 1, 1, 255, 255, 2, 2, 255, 255, 2, 0];
        let hist = patch_histograms(&Tensor::from_slice(&m).view([1, 4, 4]), 2, 2, 3).unwrap();
        let got = Vec::<f32>::try_from(hist.flatten(0, -1)).unwrap();
        assert_eq!(got, vec![3.0, 0.0, 1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 3.0]);
        // a 3-row mask on a 2-row grid: rows 0,1 -> patch row 0 (floor(y*2/3)), row 2 -> 1
        let cell = Vec::<i64>::try_from(patch_of_pixel(3, 1, 2, 1).flatten(0, -1)).unwrap();
        assert_eq!(cell, vec![0, 0, 1]);
    }

    #[test]
    fn bank_rows_cap_reproducibly() {
        assert_eq!(bank_rows(5, 10, 1), vec![0, 1, 2, 3, 4]);
        let a = bank_rows(100, 10, 7);
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|p| p[0] < p[1]) && a.iter().all(|&r| (0..100).contains(&r)));
        assert_eq!(a, bank_rows(100, 10, 7));
        assert_ne!(a, bank_rows(100, 10, 8));
    }

    #[test]
    fn chunked_votes_equal_one_block() {
        tch::manual_seed(5);
        let bank = Bank {
            feats: crate::loss::l2_normalize(&Tensor::randn([50, 6], (Kind::Float, Device::Cpu)), 1).unwrap(),
            labels: Tensor::rand([50, 3], (Kind::Float, Device::Cpu)).softmax(1, Kind::Float),
            candidates: 50,
        };
        let q = Tensor::randn([13, 6], (Kind::Float, Device::Cpu));
        let s =
            |qc, bc| KnnSettings { k: 7, temperature: 0.1, memory_size: 100, seed: 0, query_chunk: qc, bank_chunk: bc };
        let one = knn_votes(&bank, &q, &s(100, 100), Device::Cpu).unwrap();
        let many = knn_votes(&bank, &q, &s(4, 9), Device::Cpu).unwrap();
        assert!(one.allclose(&many, 1e-6, 1e-6, false));
        // the votes are distributions
        assert!(one.sum_dim_intlist(1, false, Kind::Float).allclose(
            &Tensor::ones([13], (Kind::Float, Device::Cpu)),
            1e-5,
            1e-5,
            false
        ));
    }
}
