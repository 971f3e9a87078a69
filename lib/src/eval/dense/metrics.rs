//! Segmentation scores from a confusion matrix: per-class IoU, mIoU and pixel accuracy, with an ignore label.
//!
//! `confusion[t][p]` counts the pixels of true class `t` predicted as `p`; pixels whose true id is
//! [`IGNORE`] are not counted. IoU of class c = TP / (TP + FP + FN). A class absent from both the ground truth
//! and the predictions (TP + FP + FN = 0) has no IoU: it is left out of the mean and listed as absent, as
//! mmsegmentation's `nanmean` does. A class that is predicted but never true has IoU 0 and counts.
//! Pixel accuracy = trace / counted pixels.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// The ignore label (VOC's object boundaries and "difficult" regions).
pub const IGNORE: u8 = 255;

/// A running `classes x classes` confusion matrix (rows: truth, columns: prediction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    pub classes: usize,
    /// Row-major `[classes, classes]`.
    pub counts: Vec<u64>,
}

/// The scores of a confusion matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Mean IoU over the classes that occur (in truth or prediction), in percent.
    pub miou_pct: f64,
    /// Correct pixels over counted (non-ignored) pixels, in percent.
    pub pixel_acc_pct: f64,
    /// IoU of each class in percent; `None` for a class absent from truth and prediction.
    pub iou_pct: Vec<Option<f64>>,
    /// Counted pixels.
    pub pixels: u64,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Confusion { classes, counts: vec![0; classes * classes] }
    }

    /// Adds one (truth, prediction) pixel pair; a truth of [`IGNORE`] is skipped.
    pub fn add(&mut self, truth: u8, pred: usize) {
        if truth != IGNORE {
            self.counts[truth as usize * self.classes + pred] += 1;
        }
    }

    /// Adds a batch: `truth` uint8 and `pred` int64 of the same shape (any device). Truth ids other than
    /// [`IGNORE`] must be `< classes` (checked by the readers), predictions too.
    pub fn add_tensors(&mut self, truth: &Tensor, pred: &Tensor) -> Result<()> {
        if truth.size() != pred.size() {
            bail!("confusion: truth {:?} and prediction {:?} differ in shape", truth.size(), pred.size());
        }
        let k = self.classes as i64;
        let t = truth.to_kind(Kind::Int64).flatten(0, -1);
        let p = pred.to_kind(Kind::Int64).flatten(0, -1);
        let keep = t.ne(IGNORE as i64);
        let idx = t.masked_select(&keep) * k + p.masked_select(&keep); // [valid]
        let counts = idx.bincount::<Tensor>(None, k * k).to_device(tch::Device::Cpu); // [k*k]
        let counts = Vec::<i64>::try_from(&counts)?;
        if counts.len() != self.counts.len() {
            bail!("confusion: an id at or above {} classes reached the counts", self.classes);
        }
        for (a, b) in self.counts.iter_mut().zip(counts) {
            *a += b as u64;
        }
        Ok(())
    }

    /// Per-class IoU, mIoU and pixel accuracy.
    pub fn scores(&self) -> Scores {
        let k = self.classes;
        let at = |t: usize, p: usize| self.counts[t * k + p];
        let mut iou = Vec::with_capacity(k);
        let (mut correct, mut total) = (0u64, 0u64);
        for c in 0..k {
            let tp = at(c, c);
            let row: u64 = (0..k).map(|p| at(c, p)).sum(); // TP + FN
            let col: u64 = (0..k).map(|t| at(t, c)).sum(); // TP + FP
            let union = row + col - tp;
            iou.push((union > 0).then(|| 100.0 * tp as f64 / union as f64));
            correct += tp;
            total += row;
        }
        let present: Vec<f64> = iou.iter().flatten().copied().collect();
        let miou = if present.is_empty() { 0.0 } else { present.iter().sum::<f64>() / present.len() as f64 };
        let acc = if total == 0 { 0.0 } else { 100.0 * correct as f64 / total as f64 };
        Scores { miou_pct: miou, pixel_acc_pct: acc, iou_pct: iou, pixels: total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    #[test]
    fn hand_computed_confusion_with_ignored_and_absent_classes() {
        // 4 classes; class 3 never occurs (truth or prediction); 255 pixels are ignored whatever is predicted.
        let truth: [u8; 10] = [0, 0, 0, 1, 1, 2, 2, 255, 255, 0];
        let pred: [usize; 10] = [0, 0, 1, 1, 1, 2, 0, 3, 2, 0];
        let mut c = Confusion::new(4);
        for (&t, &p) in truth.iter().zip(&pred) {
            c.add(t, p);
        }
        // truth 0: [3, 1, 0, 0]; truth 1: [0, 2, 0, 0]; truth 2: [1, 0, 1, 0]
        assert_eq!(c.counts, vec![3, 1, 0, 0, 0, 2, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0]);
        let s = c.scores();
        // IoU0 = 3 / (4 + 4 - 3) = 3/5; IoU1 = 2 / (2 + 3 - 2) = 2/3; IoU2 = 1 / (2 + 1 - 1) = 1/2; class 3 absent
        close(s.iou_pct[0].unwrap(), 60.0);
        close(s.iou_pct[1].unwrap(), 200.0 / 3.0);
        close(s.iou_pct[2].unwrap(), 50.0);
        assert_eq!(s.iou_pct[3], None, "absent from truth and prediction: no IoU, not in the mean");
        close(s.miou_pct, (60.0 + 200.0 / 3.0 + 50.0) / 3.0);
        close(s.pixel_acc_pct, 100.0 * 6.0 / 8.0);
        assert_eq!(s.pixels, 8);
    }

    #[test]
    fn a_predicted_class_that_is_never_true_counts_as_zero() {
        let mut c = Confusion::new(3);
        for (t, p) in [(0u8, 0usize), (0, 2), (1, 1)] {
            c.add(t, p);
        }
        let s = c.scores();
        assert_eq!(s.iou_pct, vec![Some(50.0), Some(100.0), Some(0.0)]);
        close(s.miou_pct, 50.0);
        // nothing counted: zeros, not NaN
        let e = Confusion::new(2).scores();
        assert_eq!((e.miou_pct, e.pixel_acc_pct, e.iou_pct.clone()), (0.0, 0.0, vec![None, None]));
    }

    #[test]
    fn tensors_count_like_pixels() {
        let truth: Vec<u8> = vec![0, 0, 0, 1, 1, 2, 2, 255, 255, 0];
        let pred: Vec<i64> = vec![0, 0, 1, 1, 1, 2, 0, 3, 2, 0];
        let mut a = Confusion::new(4);
        a.add_tensors(&Tensor::from_slice(&truth).view([2, 5]), &Tensor::from_slice(&pred).view([2, 5])).unwrap();
        let mut b = Confusion::new(4);
        for (&t, &p) in truth.iter().zip(&pred) {
            b.add(t, p as usize);
        }
        assert_eq!(a, b);
        assert!(a.add_tensors(&Tensor::from_slice(&truth), &Tensor::from_slice(&pred[..9])).is_err());
    }
}
