//! The numbers behind the pictures: statistics of one alignment map, the choice of maps to draw, the
//! group sums, and bilinear upsampling (torch's `F.interpolate(mode='bilinear', align_corners=False)`).
//!
//! A map is a probability distribution over the `h'·w'` positions of the backbone's feature map (the
//! softmax of §8 of `reference/lewel-official.md`), stored row-major.

use anyhow::Result;

use crate::LewelError;

/// What one alignment map looks like, in numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapStats {
    /// Shannon entropy in nats, of the map renormalised to sum 1 (so float rounding cannot push it past
    /// `ln(h'·w')`). `ln(h'·w')` for a uniform map, 0 for a one-hot map.
    pub entropy_nats: f64,
    /// Row and column (in the feature map) of the largest weight; the first one in row-major order on ties.
    pub peak_row: usize,
    pub peak_col: usize,
    /// The largest weight (the "peak mass"), after renormalisation. `1/(h'·w')` for a uniform map.
    pub peak_mass: f64,
    /// The smallest weight, after renormalisation.
    pub min_mass: f64,
    /// The share of the mass in the [`top_count`] largest positions (the top 10%).
    pub top10_mass: f64,
}

/// How many positions "the top 10%" of `n` positions are: `ceil(n / 10)`, at least 1 (5 of 7×7 = 49,
/// 2 of 4×4 = 16). A uniform map puts `top_count(n) / n` of its mass there.
pub fn top_count(n: usize) -> usize {
    n.div_ceil(10).max(1)
}

/// The statistics of one map of `h × w` weights (row-major). Negative or non-finite weights count as 0.
/// An all-zero map is treated as uniform.
pub fn map_stats(map: &[f32], h: usize, w: usize) -> MapStats {
    assert_eq!(map.len(), h * w, "map of {} values is not {h}x{w}", map.len());
    let n = map.len().max(1);
    let clean: Vec<f64> = map.iter().map(|&v| if v.is_finite() && v > 0.0 { v as f64 } else { 0.0 }).collect();
    let total: f64 = clean.iter().sum();
    let p: Vec<f64> = if total > 0.0 { clean.iter().map(|v| v / total).collect() } else { vec![1.0 / n as f64; n] };
    let entropy_nats = -p.iter().filter(|&&v| v > 0.0).map(|&v| v * v.ln()).sum::<f64>();
    let (mut peak, mut peak_mass, mut min_mass) = (0usize, f64::NEG_INFINITY, f64::INFINITY);
    for (i, &v) in p.iter().enumerate() {
        if v > peak_mass {
            peak = i;
            peak_mass = v;
        }
        min_mass = min_mass.min(v);
    }
    let mut sorted = p.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let top10_mass = sorted[..top_count(n).min(sorted.len())].iter().sum::<f64>();
    MapStats {
        entropy_nats: entropy_nats.max(0.0),
        peak_row: peak / w.max(1),
        peak_col: peak % w.max(1),
        peak_mass,
        min_mass,
        top10_mass,
    }
}

/// The maps of aligned representation j, summed over the G groups and divided by G: map j of the
/// result is `(A[j] + A[K/G + j] + ... + A[(G-1)·K/G + j]) / G`.
///
/// Why these: representation j concatenates, over the groups g, channel block g of the features pooled
/// with map `g·K/G + j` (`reference/lewel-official.md` §1.4), so these G maps together say where
/// representation j looks. Dividing by G keeps the result a distribution, so its entropy is comparable
/// to a single map's.
///
/// # Shapes
/// `maps`: `[k, p]` row-major → `[k/g, p]`.
pub fn group_sum(maps: &[f32], k: usize, groups: usize, p: usize) -> Vec<f32> {
    assert!(groups > 0 && k % groups == 0, "K = {k} is not a multiple of G = {groups}");
    assert_eq!(maps.len(), k * p);
    let per = k / groups;
    let mut out = vec![0f32; per * p];
    for j in 0..per {
        for g in 0..groups {
            let src = &maps[(g * per + j) * p..(g * per + j + 1) * p];
            for (o, &v) in out[j * p..(j + 1) * p].iter_mut().zip(src) {
                *o += v;
            }
        }
    }
    let inv = 1.0 / groups as f32;
    out.iter_mut().for_each(|v| *v *= inv);
    out
}

/// Which maps to draw (`--maps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapChoice {
    /// `top:N`: per image, the N maps with the largest peak mass (largest first).
    Top(usize),
    /// `0,5,17`: these maps, in this order, for every image.
    Indices(Vec<usize>),
    /// `all`: every map, in index order.
    All,
}

impl MapChoice {
    /// Parses `top:N`, `all` or a comma-separated list of indices. Errors are usage messages.
    pub fn parse(s: &str) -> Result<MapChoice, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(MapChoice::All);
        }
        if let Some(n) = s.strip_prefix("top:") {
            return match n.trim().parse::<usize>() {
                Ok(0) => Err("top:N needs N of at least 1".into()),
                Ok(n) => Ok(MapChoice::Top(n)),
                Err(_) => Err(format!("expected top:N with a whole number N, got {s:?}")),
            };
        }
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let i = part.parse::<usize>().map_err(|_| {
                format!("expected top:N, all, or map indices separated by commas (0,5,17); {part:?} is not an index")
            })?;
            if !out.contains(&i) {
                out.push(i);
            }
        }
        Ok(MapChoice::Indices(out))
    }

    /// Checks explicit indices against the `n` maps there are; `what` names them for the message
    /// ("this checkpoint has K = 8 alignment maps"). An index out of range is a usage error.
    pub fn check(&self, n: usize, what: &str) -> Result<()> {
        if let MapChoice::Indices(ix) = self {
            if let Some(bad) = ix.iter().find(|&&i| i >= n) {
                return Err(LewelError::Usage(format!(
                    "--maps {bad}: out of range; {what}, so indices run from 0 to {}",
                    n.saturating_sub(1)
                ))
                .into());
            }
        }
        Ok(())
    }

    /// The maps to draw, given each map's score (its peak mass, or for view pairs the mean over both
    /// views). `Top(n)`: the `min(n, len)` largest scores, largest first, lower index first on ties.
    pub fn select(&self, scores: &[f64]) -> Vec<usize> {
        match self {
            MapChoice::All => (0..scores.len()).collect(),
            MapChoice::Indices(ix) => ix.iter().copied().filter(|&i| i < scores.len()).collect(),
            MapChoice::Top(n) => {
                let mut order: Vec<usize> = (0..scores.len()).collect();
                order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
                order.truncate(*n);
                order
            }
        }
    }

    /// How many maps each image gets, out of `n`.
    pub fn count(&self, n: usize) -> usize {
        match self {
            MapChoice::All => n,
            MapChoice::Indices(ix) => ix.iter().filter(|&&i| i < n).count(),
            MapChoice::Top(k) => (*k).min(n),
        }
    }
}

impl std::fmt::Display for MapChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapChoice::All => write!(f, "all"),
            MapChoice::Top(n) => write!(f, "top:{n}"),
            MapChoice::Indices(ix) => {
                let s: Vec<String> = ix.iter().map(|i| i.to_string()).collect();
                write!(f, "{}", s.join(","))
            }
        }
    }
}

/// Bilinear resampling of an `h × w` grid to `oh × ow`, with torch's `align_corners=False` rule:
/// output pixel centre `o` samples the input at `(o + 0.5)·in/out − 0.5`, clamped at the borders. The
/// result stays within the input's range.
pub fn upsample_bilinear(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w);
    // (lower index, upper index, weight of the upper) for each output coordinate.
    let axis = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        let scale = n_in as f64 / n_out as f64;
        (0..n_out)
            .map(|o| {
                let x = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let lo = (x.floor() as usize).min(n_in - 1);
                let hi = (lo + 1).min(n_in - 1);
                (lo, hi, (x - lo as f64) as f32)
            })
            .collect()
    };
    let (ys, xs) = (axis(h, oh), axis(w, ow));
    let mut out = Vec::with_capacity(oh * ow);
    for &(y0, y1, ty) in &ys {
        for &(x0, x1, tx) in &xs {
            let top = src[y0 * w + x0] * (1.0 - tx) + src[y0 * w + x1] * tx;
            let bottom = src[y1 * w + x0] * (1.0 - tx) + src[y1 * w + x1] * tx;
            out.push(top * (1.0 - ty) + bottom * ty);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_uniform_and_one_hot() {
        let u = vec![1.0 / 49.0; 49];
        let s = map_stats(&u, 7, 7);
        assert!((s.entropy_nats - 49f64.ln()).abs() < 1e-9, "{}", s.entropy_nats);
        assert!((s.peak_mass - 1.0 / 49.0).abs() < 1e-9);
        assert_eq!((s.peak_row, s.peak_col), (0, 0), "ties go to the first position");
        assert!((s.top10_mass - 5.0 / 49.0).abs() < 1e-9);
        let mut one = vec![0.0f32; 12];
        one[7] = 1.0;
        let s = map_stats(&one, 3, 4);
        assert_eq!(s.entropy_nats, 0.0);
        assert_eq!((s.peak_row, s.peak_col, s.peak_mass, s.min_mass, s.top10_mass), (1, 3, 1.0, 0.0, 1.0));
    }

    #[test]
    fn entropy_by_hand_and_never_above_the_uniform_maximum() {
        // [0.5, 0.25, 0.25, 0]: H = 0.5 ln 2 + 2 · 0.25 ln 4 = 1.5 ln 2.
        let s = map_stats(&[0.5, 0.25, 0.25, 0.0], 2, 2);
        assert!((s.entropy_nats - 1.5 * 2f64.ln()).abs() < 1e-12);
        assert_eq!(s.top10_mass, 0.5); // top_count(4) = 1
                                       // A float32 "uniform" map that sums to slightly more than 1.
        let u = vec![1.0f32 / 3.0 + 1e-7; 9];
        assert!(map_stats(&u, 3, 3).entropy_nats <= 9f64.ln() + 1e-12);
    }

    #[test]
    fn top_ten_percent_counts() {
        assert_eq!(top_count(49), 5);
        assert_eq!(top_count(16), 2);
        assert_eq!(top_count(10), 1);
        assert_eq!(top_count(1), 1);
        // Mass in the two largest of 16 positions.
        let mut m = vec![0.05f32; 16];
        m[3] = 0.2;
        m[9] = 0.1;
        m[0] = 0.0; // the map sums to 1 after renormalisation; the top two hold 0.3 of the raw total
        let total: f64 = m.iter().map(|&v| v as f64).sum();
        let s = map_stats(&m, 4, 4);
        assert!((s.top10_mass - 0.3 / total).abs() < 1e-6, "{}", s.top10_mass);
        assert_eq!((s.peak_row, s.peak_col), (0, 3));
    }

    #[test]
    fn group_sum_pairs_the_maps_of_one_representation() {
        // K = 4, G = 2, p = 2: representation 0 uses maps 0 and 2, representation 1 maps 1 and 3.
        let maps = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.2, 0.8];
        assert_eq!(group_sum(&maps, 4, 2, 2), vec![0.75, 0.25, 0.1, 0.9]);
        assert_eq!(group_sum(&maps, 4, 1, 2), maps.to_vec());
    }

    #[test]
    fn choices_parse_select_and_check() {
        assert_eq!(MapChoice::parse("top:8"), Ok(MapChoice::Top(8)));
        assert_eq!(MapChoice::parse("all"), Ok(MapChoice::All));
        assert_eq!(MapChoice::parse("0, 5,17,5"), Ok(MapChoice::Indices(vec![0, 5, 17])));
        assert!(MapChoice::parse("top:0").is_err());
        assert!(MapChoice::parse("top:x").is_err());
        assert!(MapChoice::parse("1,b").is_err());
        assert!(MapChoice::parse("").is_err());
        let scores = [0.1, 0.4, 0.2, 0.4, 0.05];
        assert_eq!(MapChoice::Top(3).select(&scores), vec![1, 3, 2]);
        assert_eq!(MapChoice::Top(9).select(&scores), vec![1, 3, 2, 0, 4]);
        assert_eq!(MapChoice::Top(9).count(5), 5);
        assert_eq!(MapChoice::Indices(vec![4, 0]).select(&scores), vec![4, 0]);
        assert_eq!(MapChoice::All.select(&scores[..2]), vec![0, 1]);
        assert_eq!(MapChoice::Top(8).to_string(), "top:8");
        assert_eq!(MapChoice::Indices(vec![0, 5]).to_string(), "0,5");
        let err = MapChoice::Indices(vec![1, 999]).check(8, "K = 8").unwrap_err();
        assert_eq!(crate::exit::code_for(&err), crate::exit::USAGE);
        assert!(format!("{err}").contains("999") && format!("{err}").contains("0 to 7"), "{err}");
        assert!(MapChoice::Top(100).check(8, "K = 8").is_ok());
    }

    #[test]
    fn bilinear_matches_torch_align_corners_false() {
        // torch: F.interpolate(tensor([[1,2,4],[0,3,-1]]).view(1,1,2,3), size=(4,5), mode='bilinear',
        // align_corners=False)
        let src = [1.0, 2.0, 4.0, 0.0, 3.0, -1.0];
        let want = [
            [1.0, 1.4, 2.0, 3.2, 4.0],
            [0.75, 1.35, 2.25, 2.55, 2.75],
            [0.25, 1.25, 2.75, 1.25, 0.25],
            [0.0, 1.2, 3.0, 0.6, -1.0],
        ];
        let got = upsample_bilinear(&src, 2, 3, 4, 5);
        for (i, row) in want.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                assert!((got[i * 5 + j] - v).abs() < 1e-5, "({i},{j}): {} vs {v}", got[i * 5 + j]);
            }
        }
        // Same size: identity; 1x1: constant.
        assert_eq!(upsample_bilinear(&src, 2, 3, 2, 3), src.to_vec());
        assert_eq!(upsample_bilinear(&[0.5], 1, 1, 3, 2), vec![0.5; 6]);
    }
}
