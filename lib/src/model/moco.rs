//! MoCo mechanics for LEWEL_M and the MoCo v2 baseline: the FIFO queue of negative keys and ShuffleBN.
//!
//! LEWEL: <https://arxiv.org/abs/2203.14898> §3.3 and §4 ("Architecture", "Optimization"): LEWEL_M takes the
//! negatives of its global InfoNCE from a first-in-first-out queue [MoCo] and uses ShuffleBN in the momentum
//! encoder. There is no official LEWEL_M code (`reference/lewel-official.md` §0, §1.9); the mechanics follow the
//! MoCo paper (He et al., CVPR 2020, <https://arxiv.org/abs/1911.05722>) as summarised in §1.9. Our choices are
//! written down in `docs/lewel-m.md`.
//!
//! Three state entries, all part of the model's `state_dict`, so a checkpoint holds them and a resume continues
//! bit-exactly:
//! - `queue` `[dim, K]`: L2-normalised keys, one per column (MoCo's buffer layout); initialised with
//!   normal noise normalised along dim 0, from the seeded libtorch RNG.
//! - `queue_ptr` `[1]` int64: the column the next key goes to (MoCo's buffer).
//! - `shuffle_state` `[1]` int64: the position of the ShuffleBN permutation generator. Drawn from the seeded RNG
//!   at init, advanced by one per training step. The permutation is a pure function of it, computed with integer
//!   tensor ops on the model's device (no host round trip, and no dependence on the unsaved global RNG).

use anyhow::{bail, Result};
use tch::{nn::Path, Kind, Tensor};

use super::StateEntry;
use crate::loss::l2_normalize;

/// Mask of the 31-bit integers the permutation hash works in (products stay below 2^63: no int64 overflow).
const M31: i64 = 0x7FFF_FFFF;
/// An odd multiplier (bijective modulo 2^31), the constant of a well-known 32-bit integer hash.
const MIX: i64 = 0x045D_9F3B;

/// The queue, its pointer and the ShuffleBN generator position.
#[derive(Debug)]
pub struct MocoState {
    /// `queue`, `[dim, K]`, unit columns.
    pub queue: Tensor,
    /// `queue_ptr`, `[1]` int64, in `[0, K)`.
    pub queue_ptr: Tensor,
    /// `shuffle_state`, `[1]` int64.
    pub shuffle_state: Tensor,
}

impl MocoState {
    /// Registers `p.queue`, `p.queue_ptr` and `p.shuffle_state` (not trainable). Draws from the global libtorch
    /// RNG (seed it before): `randn([dim, size])` for the queue, then one `randint(2^30)` for the generator.
    pub fn new(p: &Path, dim: i64, size: i64) -> Result<Self> {
        if dim <= 0 || size <= 0 {
            bail!("the key queue needs a positive dimension and size, got dim {dim}, size {size}");
        }
        let dev = p.device();
        let noise = Tensor::f_randn([dim, size], (p.kind(), dev))?;
        let queue = p.add("queue", l2_normalize(&noise, 0)?, false);
        let queue_ptr = p.add("queue_ptr", Tensor::f_zeros([1], (Kind::Int64, dev))?, false);
        let start = Tensor::f_randint(1 << 30, [1], (Kind::Int64, dev))?;
        let shuffle_state = p.add("shuffle_state", start, false);
        Ok(MocoState { queue, queue_ptr, shuffle_state })
    }

    /// K, the number of keys the queue holds.
    pub fn size(&self) -> i64 {
        self.queue.size()[1]
    }

    /// Writes `keys` (one per row, normalised here) into the next columns, wrapping around at the end, and
    /// advances the pointer. On the device, without a host round trip and without gradient.
    ///
    /// # Shapes
    /// `keys`: `[n, dim]` with n ≤ K.
    pub fn enqueue(&self, keys: &Tensor) -> Result<()> {
        let (n, d) = keys.size2()?;
        let (dq, k) = self.queue.size2()?;
        if d != dq || n > k {
            bail!("enqueue: {n} keys of dimension {d} do not fit a queue of {k} keys of dimension {dq}");
        }
        tch::no_grad(|| -> Result<()> {
            let keys = l2_normalize(&keys.detach(), 1)?.f_to_kind(self.queue.kind())?;
            let idx = (Tensor::f_arange(n, (Kind::Int64, self.queue.device()))? + &self.queue_ptr).f_remainder(k)?; // [n]
            let _ = self.queue.shallow_clone().f_index_copy_(1, &idx, &keys.f_transpose(0, 1)?)?; // columns idx ← keys
            let next = (&self.queue_ptr + n).f_remainder(k)?;
            self.queue_ptr.shallow_clone().f_copy_(&next)?;
            Ok(())
        })
    }

    /// The ShuffleBN permutation of a batch of `b` for view `view` (0 or 1) at the current generator position:
    /// `perm[i]` is the sample that goes to position i. A pure function of (`shuffle_state`, `view`, `b`).
    ///
    /// # Shapes
    /// → `[b]` int64 on the queue's device, a permutation of 0..b.
    pub fn permutation(&self, b: i64, view: i64) -> Result<Tensor> {
        let key = (&self.shuffle_state * 2 + view).f_bitwise_and(M31)?; // [1]
        let i = Tensor::f_arange(b, (Kind::Int64, self.shuffle_state.device()))?; // [b]
        let vals = mix31(&mix31(&key)?.f_bitwise_xor_tensor(&i)?)?; // [b], distinct
        Ok(vals.f_argsort(0, false)?)
    }

    /// Moves the ShuffleBN generator to its next position (once per training step).
    pub fn advance(&self) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            let _ = self.shuffle_state.shallow_clone().f_add_scalar_(1)?;
            Ok(())
        })
    }

    /// `prefix.queue`, `prefix.queue_ptr`, `prefix.shuffle_state` (all buffers).
    pub fn state(&self, prefix: &str, out: &mut Vec<StateEntry>) {
        out.push(StateEntry::new(prefix, "queue", &self.queue, false));
        out.push(StateEntry::new(prefix, "queue_ptr", &self.queue_ptr, false));
        out.push(StateEntry::new(prefix, "shuffle_state", &self.shuffle_state, false));
    }
}

/// A bijection of the 31-bit integers (two xor-shift-multiply rounds and a final xor-shift), element-wise on int64
/// tensors holding values in `[0, 2^31)`. Distinct inputs give distinct outputs, so an argsort of the outputs has
/// no ties.
fn mix31(x: &Tensor) -> Result<Tensor> {
    let mut x = x.shallow_clone();
    for _ in 0..2 {
        x = x
            .f_bitwise_xor_tensor(&x.f_bitwise_right_shift_tensor_scalar(16)?)?
            .f_mul_scalar(MIX)?
            .f_bitwise_and(M31)?;
    }
    Ok(x.f_bitwise_xor_tensor(&x.f_bitwise_right_shift_tensor_scalar(16)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    fn state(dim: i64, k: i64) -> (VarStore, MocoState) {
        tch::manual_seed(3);
        let mut vs = VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let s = MocoState::new(&vs.root(), dim, k).unwrap();
        (vs, s)
    }

    #[test]
    fn queue_starts_normalised_and_registered() {
        let (vs, s) = state(4, 10);
        assert_eq!(s.queue.size(), [4, 10]);
        let norms = s.queue.norm_scalaropt_dim(2, [0], false);
        assert!(norms.allclose(&norms.ones_like(), 1e-12, 1e-12, false));
        assert_eq!(s.queue_ptr.int64_value(&[0]), 0);
        assert_eq!(s.queue_ptr.kind(), Kind::Int64);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(names, ["queue", "queue_ptr", "shuffle_state"]);
        assert!(vs.trainable_variables().is_empty());
        // the same seed gives the same queue and generator position. The unit tests run in threads that share
        // libtorch's global generator, so another test may draw between the seed and our draws: a mismatch is
        // retried, a real non-determinism fails every time.
        let same = (0..5).any(|_| {
            let (_va, a) = state(4, 10);
            let (_vb, b) = state(4, 10);
            a.queue.equal(&b.queue) && a.shuffle_state.equal(&b.shuffle_state)
        });
        assert!(same, "the same seed gave different queues five times");
        assert!(MocoState::new(&vs.root().sub("x"), 4, 0).is_err());
    }

    /// Column j of the queue holds the key whose value (here: its first coordinate after normalisation is
    /// recognisable) was enqueued last into j.
    #[test]
    fn fifo_order_pointer_and_wrap_around() {
        let (_vs, s) = state(2, 5);
        // keys (v, 0) normalise to (1, 0) for v > 0, (-1, 0) for v < 0: use the second coordinate as a tag instead:
        // key t = (1, t) -> normalised (1, t)/sqrt(1+t^2); the tag is recovered as q[1]/q[0].
        let keys = |tags: &[f64]| {
            let rows: Vec<f64> = tags.iter().flat_map(|&t| [1.0, t]).collect();
            Tensor::from_slice(&rows).reshape([tags.len() as i64, 2])
        };
        let tags = |s: &MocoState| -> Vec<f64> {
            let q = &s.queue;
            (0..5).map(|j| (q.double_value(&[1, j]) / q.double_value(&[0, j]) * 1e6).round() / 1e6).collect()
        };
        s.enqueue(&keys(&[1.0, 2.0])).unwrap();
        assert_eq!(s.queue_ptr.int64_value(&[0]), 2);
        s.enqueue(&keys(&[3.0, 4.0])).unwrap();
        assert_eq!(s.queue_ptr.int64_value(&[0]), 4);
        let t = tags(&s);
        assert_eq!(&t[..4], &[1.0, 2.0, 3.0, 4.0]);
        // 5 does not divide by 2: the third block wraps: column 4 then column 0
        s.enqueue(&keys(&[5.0, 6.0])).unwrap();
        assert_eq!(s.queue_ptr.int64_value(&[0]), 1);
        assert_eq!(tags(&s), [6.0, 2.0, 3.0, 4.0, 5.0]);
        // the oldest keys go first
        s.enqueue(&keys(&[7.0, 8.0, 9.0])).unwrap();
        assert_eq!(s.queue_ptr.int64_value(&[0]), 4);
        assert_eq!(tags(&s), [6.0, 7.0, 8.0, 9.0, 5.0]);
        // columns stay unit length
        let norms = s.queue.norm_scalaropt_dim(2, [0], false);
        assert!(norms.allclose(&norms.ones_like(), 1e-12, 1e-12, false));
        // more keys than the queue holds, or a wrong dimension, are errors
        assert!(s.enqueue(&Tensor::ones([6, 2], (Kind::Double, Device::Cpu))).is_err());
        assert!(s.enqueue(&Tensor::ones([2, 3], (Kind::Double, Device::Cpu))).is_err());
    }

    #[test]
    fn permutations_are_permutations_and_depend_on_state_and_view() {
        let (_vs, s) = state(2, 4);
        let sorted = |p: &Tensor| Vec::<i64>::try_from(p.sort(0, false).0).unwrap();
        let as_vec = |p: &Tensor| Vec::<i64>::try_from(p).unwrap();
        let b = 64;
        let p0 = s.permutation(b, 0).unwrap();
        let p1 = s.permutation(b, 1).unwrap();
        assert_eq!(sorted(&p0), (0..b).collect::<Vec<_>>());
        assert_eq!(sorted(&p1), (0..b).collect::<Vec<_>>());
        assert_ne!(as_vec(&p0), (0..b).collect::<Vec<_>>());
        assert_ne!(as_vec(&p0), as_vec(&p1));
        // deterministic
        assert_eq!(as_vec(&p0), as_vec(&s.permutation(b, 0).unwrap()));
        // advancing changes it; setting the state back restores it
        let before = s.shuffle_state.int64_value(&[0]);
        s.advance().unwrap();
        assert_eq!(s.shuffle_state.int64_value(&[0]), before + 1);
        assert_ne!(as_vec(&p0), as_vec(&s.permutation(b, 0).unwrap()));
        let _ = s.shuffle_state.shallow_clone().fill_(before);
        assert_eq!(as_vec(&p0), as_vec(&s.permutation(b, 0).unwrap()));
        // the hash is a bijection on 31 bits: no two of many inputs collide
        let x = Tensor::arange(1 << 16, (Kind::Int64, Device::Cpu)) * 32749;
        let h = mix31(&x.bitwise_and(M31)).unwrap();
        assert_eq!(h.unique_dim(0, false, false, false).0.size()[0], 1 << 16);
        assert!(h.max().int64_value(&[]) <= M31 && h.min().int64_value(&[]) >= 0);
    }
}
