//! Top-k accuracy with a fixed tie rule.
//!
//! Classes are ranked by score (highest first); equal scores are ordered by label (smallest first),
//! so "argmax with ties to the smallest label" is rank 0. An item is top-k correct when its true class
//! has rank `< k`. Every class takes part in the ranking, also those with a zero score (no kNN vote),
//! so with fewer than 5 classes top-5 is always 100%, as with `torch.topk` over the score vector.

use tch::{Kind, Tensor};

/// The rank of each item's true class among all classes: `[b, classes]` scores and `[b]` labels in,
/// `[b]` int64 ranks out (0 = predicted).
///
/// # Shapes
/// `scores`: `[b, classes]` (any float kind), `labels`: `[b]` int64 with values `< classes`.
pub fn true_class_rank(scores: &Tensor, labels: &Tensor) -> Tensor {
    let (b, classes) = scores.size2().expect("true_class_rank: scores must be [b, classes]");
    assert_eq!(labels.size(), [b], "true_class_rank: labels must be [b]");
    let y = labels.view([b, 1]); // [b, 1]
    let sy = scores.gather(1, &y, false); // [b, 1]
    let cls = Tensor::arange(classes, (Kind::Int64, scores.device())).view([1, classes]); // [1, classes]
    let above = scores.gt_tensor(&sy);
    let tied_before = scores.eq_tensor(&sy).logical_and(&cls.lt_tensor(&y));
    above.logical_or(&tied_before).sum_dim_intlist(1, false, Kind::Int64) // [b]
}

/// The same rank for one item, on plain numbers (reference implementations and tests).
pub fn true_class_rank_slice(scores: &[f64], label: usize) -> usize {
    let sy = scores[label];
    scores.iter().enumerate().filter(|&(c, &s)| s > sy || (s == sy && c < label)).count()
}

/// Running top-1 / top-5 counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopK {
    pub n: u64,
    pub correct1: u64,
    pub correct5: u64,
}

impl TopK {
    /// Adds a batch of true-class ranks (`[b]` int64, any device).
    pub fn add_ranks(&mut self, ranks: &Tensor) {
        self.n += ranks.size()[0] as u64;
        self.correct1 += ranks.lt(1).sum(Kind::Int64).int64_value(&[]) as u64;
        self.correct5 += ranks.lt(5).sum(Kind::Int64).int64_value(&[]) as u64;
    }

    /// Adds one item's rank.
    pub fn add_rank(&mut self, rank: usize) {
        self.n += 1;
        self.correct1 += u64::from(rank < 1);
        self.correct5 += u64::from(rank < 5);
    }

    /// Top-1 accuracy in percent (0 for no items).
    pub fn top1_pct(&self) -> f64 {
        pct(self.correct1, self.n)
    }

    /// Top-5 accuracy in percent (0 for no items).
    pub fn top5_pct(&self) -> f64 {
        pct(self.correct5, self.n)
    }
}

fn pct(k: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        100.0 * k as f64 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_on_hand_examples() {
        let scores = Tensor::from_slice(&[
            0.1f32, 0.7, 0.2, // label 1: clear argmax → rank 0
            0.5, 0.5, 0.0, // label 1: tie with label 0, which comes first → rank 1
            0.5, 0.5, 0.0, // label 0: tie, smallest label wins → rank 0
            0.0, 0.0, 0.0, // label 2: all tied → rank 2
            0.3, 0.2, 0.1, // label 2: last → rank 2
        ])
        .view([5, 3]);
        let labels = Tensor::from_slice(&[1i64, 1, 0, 2, 2]);
        let ranks = Vec::<i64>::try_from(&true_class_rank(&scores, &labels)).unwrap();
        assert_eq!(ranks, vec![0, 1, 0, 2, 2]);
        let mut acc = TopK::default();
        acc.add_ranks(&true_class_rank(&scores, &labels));
        assert_eq!(acc, TopK { n: 5, correct1: 2, correct5: 5 });
        assert_eq!(acc.top1_pct(), 40.0);
        assert_eq!(acc.top5_pct(), 100.0, "fewer than 5 classes: top-5 is always right");
        for (row, (&l, &r)) in [1usize, 1, 0, 2, 2].iter().zip(&ranks).enumerate() {
            let s: Vec<f64> = Vec::<f64>::try_from(&scores.get(row as i64).to_kind(Kind::Double)).unwrap();
            assert_eq!(true_class_rank_slice(&s, l), r as usize);
        }
    }

    #[test]
    fn top5_with_many_classes() {
        // 7 classes, scores descending with the label: label 5 has rank 5 → top-5 wrong, label 4 right.
        let s: Vec<f32> = (0..7).map(|c| 1.0 - c as f32 / 10.0).collect();
        let scores = Tensor::from_slice(&[s.clone(), s].concat()).view([2, 7]);
        let mut acc = TopK::default();
        acc.add_ranks(&true_class_rank(&scores, &Tensor::from_slice(&[5i64, 4])));
        assert_eq!(acc, TopK { n: 2, correct1: 0, correct5: 1 });
        assert_eq!(TopK::default().top1_pct(), 0.0);
    }
}
