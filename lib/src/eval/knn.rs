//! Weighted k-nearest-neighbour evaluation of frozen features (the InstDisc / DINO protocol).
//!
//! Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination" (CVPR 2018,
//! <https://arxiv.org/abs/1805.01978>), as used by DINO's `eval_knn.py`: features are L2-normalised;
//! each query (a val item) finds its k most cosine-similar items in the memory (the labelled training
//! set); neighbour j votes for its class with weight `exp(cos_j / T)`; the class with the largest vote
//! sum is the prediction (ties: the smallest label), and top-5 ranks the vote sums the same way
//! ([`super::metrics`]). One pass over the queries serves every (k, T) of the sweep.
//!
//! NOTE(ref): the official LEWEL monitor (`engine.py:ss_validate`, `reference/lewel-official.md` §5.5)
//! votes unweighted with k = 20 and draws its memory from inside its query set. Here the memory and the
//! queries are different splits, and the same file for both is refused ([`ProbeData::load`]).
//!
//! Numerics: the weights are computed as `exp((cos_j - cos_1) / T)` in float64, which is the protocol's
//! `exp(cos_j / T)` times a per-query constant: every ranking is the same, and small temperatures
//! cannot overflow. Ties in similarity at the k-th neighbour are broken by `topk` (as in faiss / DINO).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::features::{FeatureSource, ProbeData};
use super::metrics::{true_class_rank, TopK};
use super::{device_name, join, write_result_json, Progress};
use crate::events::{Event, EventSink};
use crate::LewelError;

const TOOL: &str = "knn-probe";

/// The default k sweep (`--k`).
pub const DEFAULT_KS: [usize; 4] = [10, 20, 100, 200];
/// The default temperature (`--temperature`), DINO's and InstDisc's value.
pub const DEFAULT_TEMPERATURE: f64 = 0.07;
/// The default number of queries per similarity matrix (`--batch-size`).
pub const DEFAULT_BATCH_SIZE: usize = 256;

/// A kNN evaluation: which features, which (k, T) grid, where to compute.
#[derive(Debug, Clone, Serialize)]
pub struct KnnConfig {
    /// The memory: the labelled training split.
    pub train: FeatureSource,
    /// The queries: the labelled validation split.
    pub val: FeatureSource,
    /// Neighbour counts to sweep (each `>= 1`); a k above the memory size uses the whole memory.
    pub ks: Vec<usize>,
    /// Vote temperatures T to sweep (each `> 0`); smaller T trusts the nearest neighbours more.
    pub temperatures: Vec<f64>,
    /// Queries per `[batch, N]` similarity matrix: memory use is about `batch_size * N * 4` bytes.
    pub batch_size: usize,
    #[serde(serialize_with = "ser_device")]
    pub device: Device,
    /// Echoed in `start` (the kNN probe draws no random numbers).
    pub seed: u64,
    /// Where to write the whole result as JSON (atomically), if anywhere.
    pub out: Option<PathBuf>,
}

fn ser_device<S: serde::Serializer>(d: &Device, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&device_name(*d))
}

impl KnnConfig {
    /// Checks the values clap cannot (exit 2 on failure).
    pub fn validate(&self) -> Result<(), LewelError> {
        if self.ks.is_empty() || self.ks.contains(&0) {
            return Err(LewelError::Usage(format!("--k {}: give one or more k >= 1, e.g. --k 10,20", join(&self.ks))));
        }
        if self.temperatures.is_empty() || self.temperatures.iter().any(|t| !(t.is_finite() && *t > 0.0)) {
            return Err(LewelError::Usage(format!(
                "--temperature {}: give one or more finite T > 0, e.g. --temperature 0.07",
                join(&self.temperatures)
            )));
        }
        if self.batch_size == 0 {
            return Err(LewelError::Usage("--batch-size must be >= 1".into()));
        }
        Ok(())
    }
}

/// The accuracy at one (k, T).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KnnPoint {
    /// The k asked for.
    pub k: usize,
    /// The k used: `min(k, N_train)`.
    pub k_used: usize,
    pub temperature: f64,
    pub top1_pct: f64,
    pub top5_pct: f64,
}

/// The whole result of [`run`], as written by `--out`.
#[derive(Debug, Clone, Serialize)]
pub struct KnnReport {
    pub tool: &'static str,
    pub git_revision: &'static str,
    pub config: KnnConfig,
    pub n_train: usize,
    pub n_val: usize,
    pub dim: usize,
    pub classes: usize,
    /// One entry per (k, T), k-major in the order given.
    pub results: Vec<KnnPoint>,
    /// The (k, T) with the highest top-1 (then top-5; then the first in the sweep).
    pub best: KnnPoint,
    /// `val`: the best point is chosen on the same split it is scored on, so it is optimistic.
    pub best_chosen_on: &'static str,
    pub elapsed_s: f64,
}

/// Loads the features, sweeps (k, T), emits `start`, one `eval` per point and `end`, writes `--out`.
pub fn run(cfg: &KnnConfig, sink: &mut dyn EventSink, progress: Progress) -> Result<KnnReport> {
    cfg.validate()?;
    let t0 = Instant::now();
    let data = ProbeData::load(&cfg.train, &cfg.val)?;
    evaluate(cfg, &data, sink, progress, t0)
}

/// [`run`] on features already in memory (`t0`: when the run started, for `elapsed_s`).
pub fn evaluate(
    cfg: &KnnConfig,
    data: &ProbeData,
    sink: &mut dyn EventSink,
    progress: Progress,
    t0: Instant,
) -> Result<KnnReport> {
    cfg.validate()?;
    let classes = data.num_classes();
    let (n_train, n_val, dim) = (data.train.n, data.val.n, data.train.dim);
    sink.emit(
        &Event::new(TOOL, "start")
            .str("train_features", data.train.features_path.display().to_string())
            .str("train_labels", data.train.labels_path.display().to_string())
            .str("val_features", data.val.features_path.display().to_string())
            .str("val_labels", data.val.labels_path.display().to_string())
            .int("n_train", n_train as i64)
            .int("n_val", n_val as i64)
            .int("dim", dim as i64)
            .int("classes", classes as i64)
            .str("k", join(&cfg.ks))
            .str("temperature", join(&cfg.temperatures))
            .int("batch_size", cfg.batch_size as i64)
            .str("device", device_name(cfg.device))
            .int("seed", cfg.seed as i64)
            .str("git_revision", crate::GIT_REVISION),
    )?;
    if cfg.ks.iter().any(|&k| k > n_train) {
        sink.emit(&Event::new(TOOL, "warn").str(
            "message",
            format!("k above the memory size {n_train} uses all {n_train} training items (see k_used)"),
        ))?;
    }
    let unseen = data.val_items_with_unseen_class();
    if unseen > 0 {
        sink.emit(
            &Event::new(TOOL, "warn")
                .str("message", "some val items have a class absent from the training set; they count as wrong")
                .int("count", unseen as i64),
        )?;
    }

    let counts = tch::no_grad(|| {
        let mut train = data.train.features_tensor(cfg.device);
        let mut val = data.val.features_tensor(cfg.device);
        l2_normalize_(&mut train);
        l2_normalize_(&mut val);
        sweep(
            &train,
            &data.train.labels_tensor(cfg.device),
            &val,
            &data.val.labels_tensor(cfg.device),
            classes as i64,
            &cfg.ks,
            &cfg.temperatures,
            cfg.batch_size,
            progress,
        )
    })?;

    let mut results = Vec::new();
    for (ki, &k) in cfg.ks.iter().enumerate() {
        for (ti, &temperature) in cfg.temperatures.iter().enumerate() {
            let acc = counts[ki * cfg.temperatures.len() + ti];
            let p =
                KnnPoint { k, k_used: k.min(n_train), temperature, top1_pct: acc.top1_pct(), top5_pct: acc.top5_pct() };
            sink.emit(
                &Event::new(TOOL, "eval")
                    .int("k", p.k as i64)
                    .int("k_used", p.k_used as i64)
                    .num("temperature", p.temperature)
                    .num("top1_pct", p.top1_pct)
                    .num("top5_pct", p.top5_pct)
                    .int("n_val", n_val as i64),
            )?;
            results.push(p);
        }
    }
    let best = best_point(&results);
    let elapsed_s = t0.elapsed().as_secs_f64();
    sink.emit(
        &Event::new(TOOL, "end")
            .int("best_k", best.k as i64)
            .num("best_temperature", best.temperature)
            .num("best_top1_pct", best.top1_pct)
            .num("best_top5_pct", best.top5_pct)
            .str("best_chosen_on", "val")
            .bool("best_is_optimistic", results.len() > 1)
            .int("n_val", n_val as i64)
            .num("elapsed_s", elapsed_s),
    )?;
    let report = KnnReport {
        tool: TOOL,
        git_revision: crate::GIT_REVISION,
        config: cfg.clone(),
        n_train,
        n_val,
        dim,
        classes,
        results,
        best,
        best_chosen_on: "val",
        elapsed_s,
    };
    if let Some(out) = &cfg.out {
        write_result_json(out, &report)?;
    }
    Ok(report)
}

/// Highest top-1, then highest top-5, then the first in sweep order.
fn best_point(results: &[KnnPoint]) -> KnnPoint {
    let mut best = results[0];
    for p in &results[1..] {
        if (p.top1_pct, p.top5_pct) > (best.top1_pct, best.top5_pct) {
            best = *p;
        }
    }
    best
}

/// Scales the rows of `[n, C]` to unit L2 norm in place (a zero row stays zero), like
/// `F.normalize(x, dim=1)`; in place, because the memory can be most of the device's RAM.
pub fn l2_normalize_(x: &mut Tensor) {
    let norm = x.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12); // [n, 1]
    let _ = x.g_div_(&norm);
}

/// The core sweep on normalised features: top-1/top-5 counts per (k, T), k-major.
///
/// # Shapes
/// `train`: `[N, C]`, `train_labels`: `[N]`, `val`: `[M, C]`, `val_labels`: `[M]`; labels `< classes`.
#[allow(clippy::too_many_arguments)]
pub fn sweep(
    train: &Tensor,
    train_labels: &Tensor,
    val: &Tensor,
    val_labels: &Tensor,
    classes: i64,
    ks: &[usize],
    temperatures: &[f64],
    batch_size: usize,
    progress: Progress,
) -> Result<Vec<TopK>> {
    let (n, c) = train.size2()?;
    let (m, c2) = val.size2()?;
    if c != c2 {
        bail!("kNN: train features are [{n}, {c}] but val features are [{m}, {c2}]");
    }
    let kmax = ks.iter().copied().max().unwrap_or(1).min(n as usize) as i64;
    let memory_t = train.transpose(0, 1); // [C, N], a view: BLAS reads the transpose, no copy
    let mut counts = vec![TopK::default(); ks.len() * temperatures.len()];
    let mut start = 0i64;
    while start < m {
        let b = (batch_size as i64).min(m - start);
        let q = val.narrow(0, start, b); // [b, C]
        let y = val_labels.narrow(0, start, b); // [b]
        let sims = q.matmul(&memory_t); // [b, N]
        let (top_sims, top_idx) = sims.topk(kmax, 1, true, true); // [b, kmax], sorted, most similar first
        let neighbour_labels = train_labels.index_select(0, &top_idx.view([-1])).view([b, kmax]); // [b, kmax]
        let shifted = top_sims.to_kind(Kind::Double) - top_sims.narrow(1, 0, 1).to_kind(Kind::Double); // [b, kmax], <= 0
        for (ti, &t) in temperatures.iter().enumerate() {
            let weights = (&shifted / t).exp(); // [b, kmax], exp(cos/T) up to a per-row factor
            for (ki, &k) in ks.iter().enumerate() {
                let k = (k as i64).min(kmax);
                let votes = Tensor::zeros([b, classes], (Kind::Double, q.device())).scatter_add(
                    1,
                    &neighbour_labels.narrow(1, 0, k),
                    &weights.narrow(1, 0, k),
                ); // [b, classes]
                counts[ki * temperatures.len() + ti].add_ranks(&true_class_rank(&votes, &y));
            }
        }
        start += b;
        progress(start as u64, m as u64);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::features::FeatureSet;
    use crate::eval::metrics::true_class_rank_slice;
    use crate::events::MemorySink;

    fn set(rows: &[&[f32]], labels: &[i64]) -> FeatureSet {
        let dim = rows[0].len();
        FeatureSet::from_parts(rows.len(), dim, rows.concat(), labels.to_vec()).unwrap()
    }

    fn cfg(ks: &[usize], ts: &[f64]) -> KnnConfig {
        KnnConfig {
            train: FeatureSource::npy("train.npy"),
            val: FeatureSource::npy("val.npy"),
            ks: ks.to_vec(),
            temperatures: ts.to_vec(),
            batch_size: 2,
            device: Device::Cpu,
            seed: 0,
            out: None,
        }
    }

    fn points(data: &ProbeData, ks: &[usize], ts: &[f64]) -> Vec<KnnPoint> {
        let mut sink = MemorySink::default();
        evaluate(&cfg(ks, ts), data, &mut sink, &mut |_, _| {}, Instant::now()).unwrap().results
    }

    /// Memory on the unit circle; the query at angle 0. Neighbours by cosine: a (cos 1, class 0),
    /// b (cos 0.8, class 1), c (cos 0.6, class 1), d (cos -1, class 2).
    fn circle() -> (FeatureSet, [f64; 4]) {
        let train = set(&[&[1.0, 0.0], &[0.8, 0.6], &[0.6, -0.8], &[-2.0, 0.0]], &[0, 1, 1, 2]);
        (train, [1.0, 0.8, 0.6, -1.0])
    }

    #[test]
    fn weights_decide_by_hand() {
        let (train, cos) = circle();
        // Query of class 1 (scaled: normalisation must remove the scale) and a second query of class 0.
        let val = set(&[&[3.0, 0.0], &[0.5, 0.0]], &[1, 0]);
        let data = ProbeData::new(train, val).unwrap();
        // k = 1: class 0 wins for both queries.
        // k = 3, T = 1: class 0 gets e^1 = 2.718, class 1 gets e^0.8 + e^0.6 = 4.048 → class 1.
        // k = 3, T = 0.1: class 0 gets e^10 = 22026, class 1 gets e^8 + e^6 = 3384 → class 0.
        let w = |c: f64, t: f64| (c / t).exp();
        assert!(w(cos[1], 1.0) + w(cos[2], 1.0) > w(cos[0], 1.0));
        assert!(w(cos[1], 0.1) + w(cos[2], 0.1) < w(cos[0], 0.1));
        let p = points(&data, &[1, 3], &[1.0, 0.1]);
        let top1: Vec<f64> = p.iter().map(|p| p.top1_pct).collect();
        // order: (1,1.0) (1,0.1) (3,1.0) (3,0.1); query 0 is class 1, query 1 is class 0
        assert_eq!(top1, vec![50.0, 50.0, 50.0, 50.0]);
        // which query was right: check via single-query data
        let only_class1 = ProbeData::new(circle().0, set(&[&[3.0, 0.0]], &[1])).unwrap();
        let p = points(&only_class1, &[1, 3], &[1.0, 0.1]);
        assert_eq!(p.iter().map(|p| p.top1_pct).collect::<Vec<_>>(), vec![0.0, 0.0, 100.0, 0.0]);
        // 3 classes: top-5 is always 100%
        assert!(p.iter().all(|p| p.top5_pct == 100.0));
        // k = 10 > N = 4 uses all 4: d's weight is tiny, class 1 still wins at T = 1
        let p = points(&only_class1, &[10], &[1.0]);
        assert_eq!((p[0].k, p[0].k_used, p[0].top1_pct), (10, 4, 100.0));
    }

    #[test]
    fn vote_ties_go_to_the_smallest_label() {
        // Two memory items at the same cosine, classes 2 and 1: the vote sums tie → label 1.
        let train = set(&[&[1.0, 1.0], &[1.0, -1.0], &[-1.0, 0.0]], &[2, 1, 0]);
        let q1 = ProbeData::new(train.clone(), set(&[&[1.0, 0.0]], &[1])).unwrap();
        assert_eq!(points(&q1, &[2], &[0.07])[0].top1_pct, 100.0);
        let q2 = ProbeData::new(train, set(&[&[1.0, 0.0]], &[2])).unwrap();
        let p = points(&q2, &[2], &[0.07])[0];
        assert_eq!((p.top1_pct, p.top5_pct), (0.0, 100.0));
    }

    /// A plain-loop reference of the protocol, in f64.
    fn brute_force(train: &FeatureSet, val: &FeatureSet, classes: usize, k: usize, t: f64) -> TopK {
        let norm = |r: &[f32]| {
            let n = r.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
            r.iter().map(|&x| x as f64 / n).collect::<Vec<f64>>()
        };
        let mem: Vec<Vec<f64>> = train.data.chunks(train.dim).map(norm).collect();
        let mut acc = TopK::default();
        for (q, &y) in val.data.chunks(val.dim).map(norm).zip(&val.labels) {
            let mut sims: Vec<(f64, usize)> =
                mem.iter().enumerate().map(|(j, m)| (m.iter().zip(&q).map(|(a, b)| a * b).sum(), j)).collect();
            sims.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut votes = vec![0.0; classes];
            for &(s, j) in sims.iter().take(k) {
                votes[train.labels[j] as usize] += (s / t).exp();
            }
            acc.add_rank(true_class_rank_slice(&votes, y as usize));
        }
        acc
    }

    /// A tiny deterministic generator for test data.
    fn lcg(state: &mut u64) -> f32 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn agrees_with_brute_force() {
        let (classes, dim) = (7usize, 5usize);
        let mut s = 42u64;
        let mut make = |n: usize| {
            let labels: Vec<i64> = (0..n).map(|i| (i * 3 % classes) as i64).collect();
            // class centres plus noise, so accuracy is neither 0 nor 100
            let data: Vec<f32> = (0..n * dim)
                .map(|i| {
                    let c = labels[i / dim] as usize;
                    (if (c + i) % dim == 0 { 0.6 } else { 0.0 }) + lcg(&mut s)
                })
                .collect();
            FeatureSet::from_parts(n, dim, data, labels).unwrap()
        };
        let (train, val) = (make(60), make(37));
        let data = ProbeData::new(train.clone(), val.clone()).unwrap();
        let (ks, ts) = ([1usize, 5, 20, 100], [0.07, 0.5]);
        let got = points(&data, &ks, &ts);
        let mut i = 0;
        for &k in &ks {
            for &t in &ts {
                let want = brute_force(&train, &val, classes, k.min(60), t);
                assert_eq!(got[i].top1_pct, want.top1_pct(), "k={k} T={t}");
                assert_eq!(got[i].top5_pct, want.top5_pct(), "k={k} T={t}");
                i += 1;
            }
        }
        assert!(got.iter().any(|p| p.top1_pct > 100.0 / classes as f64 && p.top1_pct < 100.0), "{got:?}");
    }

    #[test]
    fn events_and_best_point() {
        let (train, _) = circle();
        let data = ProbeData::new(train, set(&[&[3.0, 0.0]], &[1])).unwrap();
        let mut sink = MemorySink::default();
        let r = evaluate(&cfg(&[1, 3], &[1.0, 0.1]), &data, &mut sink, &mut |_, _| {}, Instant::now()).unwrap();
        assert_eq!((r.best.k, r.best.temperature), (3, 1.0));
        let events = sink.events.lock().unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind()).collect();
        assert_eq!(kinds, ["start", "eval", "eval", "eval", "eval", "end"]);
        let end: serde_json::Value = serde_json::from_str(&events[5].to_line()).unwrap();
        assert_eq!(end["best_k"], 3);
        assert_eq!(end["best_top1_pct"], 100.0);
        assert_eq!(end["best_chosen_on"], "val");
    }

    #[test]
    fn bad_sweeps_are_usage_errors() {
        for c in [cfg(&[], &[0.1]), cfg(&[0], &[0.1]), cfg(&[1], &[0.0]), cfg(&[1], &[f64::NAN])] {
            assert!(matches!(c.validate(), Err(LewelError::Usage(_))));
        }
    }
}
