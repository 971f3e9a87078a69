//! A small counter-keyed random generator: every random choice of the data pipeline comes from one
//! of these, built from a key such as (seed, epoch, index, stream), so that results do not depend on
//! the number of threads or on the order in which items are processed, and a resumed run draws
//! exactly the numbers it would have drawn without the interruption. There is no global generator.
//!
//! The generator is SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
//! generators", OOPSLA 2014): a 64-bit counter advanced by the golden-ratio increment and passed
//! through a strong 64-bit finaliser. The key is folded into the starting counter with the same
//! finaliser, one component at a time, so nearby keys give unrelated streams.

/// The SplitMix64 increment (2^64 / golden ratio).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 finaliser: a bijective 64-bit mix.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic generator owned by one task (one image's view, one epoch's order).
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

/// What a stream of numbers is used for; part of the key so that two uses never share numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// The order of an epoch (key: seed, epoch).
    Order = 1,
    /// The first view of an item.
    View1 = 2,
    /// The second view of an item.
    View2 = 3,
}

impl Rng {
    /// A generator from an arbitrary list of key words.
    pub fn from_key(words: &[u64]) -> Rng {
        let mut s = 0x6C65_7765_6C00_0000u64; // "lewel"
        for &w in words {
            s = mix64(s.wrapping_add(GAMMA) ^ w);
        }
        Rng { state: s }
    }

    /// A generator at a raw SplitMix64 state (the linear probe's, keyed before [`Rng::from_key`] existed; its
    /// numbers stay as they were).
    pub fn from_state(state: u64) -> Rng {
        Rng { state }
    }

    /// The generator of the order of `epoch` under `seed`.
    pub fn for_order(seed: u64, epoch: u64) -> Rng {
        Rng::from_key(&[seed, Stream::Order as u64, epoch])
    }

    /// The generator of one view of item `index` in `epoch`. `attempt` is 0 for the item itself and
    /// k > 0 when the item stands in for the k-th earlier item of the epoch that failed to load (so a
    /// stand-in never repeats the views it gets in its own place).
    pub fn for_view(seed: u64, epoch: u64, index: u64, view: Stream, attempt: u64) -> Rng {
        Rng::from_key(&[seed, view as u64, epoch, index, attempt])
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// A uniform draw from [0, 1) with 53 random bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform draw from [lo, hi) (or exactly `lo` when the interval is empty).
    #[inline]
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// True with probability `p` (never for p <= 0, always for p >= 1).
    #[inline]
    pub fn bernoulli(&mut self, p: f64) -> bool {
        p >= 1.0 || self.uniform() < p
    }

    /// A uniform integer in 0..n (n > 0), without modulo bias (Lemire's multiply-and-reject).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Shuffles `v` in place (Fisher-Yates, from the back).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// The order of the items of `epoch`: a permutation of 0..n from (seed, epoch), or 0..n itself.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        Rng::for_order(seed, epoch).shuffle(&mut order);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // SplitMix64 seeded with 0 (state 0, first output = mix64(GAMMA)): the published sequence.
        let mut r = Rng { state: 0 };
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn keys_give_distinct_reproducible_streams() {
        let a = Rng::for_view(1, 0, 5, Stream::View1, 0).next_u64();
        assert_eq!(a, Rng::for_view(1, 0, 5, Stream::View1, 0).next_u64());
        for other in [
            Rng::for_view(1, 0, 5, Stream::View2, 0),
            Rng::for_view(1, 1, 5, Stream::View1, 0),
            Rng::for_view(1, 0, 6, Stream::View1, 0),
            Rng::for_view(2, 0, 5, Stream::View1, 0),
            Rng::for_view(1, 0, 5, Stream::View1, 1),
        ] {
            assert_ne!(a, other.clone().next_u64());
        }
    }

    #[test]
    fn uniform_and_below_are_in_range_and_balanced() {
        let mut r = Rng::from_key(&[42]);
        let mut counts = [0usize; 6];
        let mut sum = 0.0;
        for _ in 0..60_000 {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            sum += u;
            counts[r.below(6) as usize] += 1;
        }
        assert!((sum / 60_000.0 - 0.5).abs() < 0.01);
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn epoch_order_is_a_permutation_that_changes_with_the_epoch() {
        let a = epoch_order(100, 7, 0, true);
        let b = epoch_order(100, 7, 1, true);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(a, b);
        assert_eq!(a, epoch_order(100, 7, 0, true));
        assert_eq!(epoch_order(5, 7, 0, false), vec![0, 1, 2, 3, 4]);
    }
}
