//! The target network's exponential moving average: EMAN (whole state) or parameters only.
//!
//! LEWEL: <https://arxiv.org/abs/2203.14898>. Ports `LEWELB_EMAN.momentum_update` and `LEWELB.momentum_update` as
//! described in `reference/lewel-official.md` §3. The momentum schedule itself is
//! [`crate::schedule::ema_momentum`].

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::model::StateEntry;

/// How the target follows the online network, and the target's BN mode.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum EmaMode {
    /// EMAN (official LEWELB_EMAN): EMA over the whole state, BN running_mean / running_var included,
    /// `num_batches_tracked` copied; the target runs with BN in eval mode (its EMA'd running statistics).
    #[serde(rename = "eman")]
    Eman,
    /// Parameters only (official LEWELB): the target's BN runs in train mode (batch statistics) and its own
    /// forward passes update its running statistics.
    #[serde(rename = "params")]
    Params,
}

impl EmaMode {
    /// Whether the target network's BN runs in train mode.
    pub fn target_bn_train(self) -> bool {
        self == EmaMode::Params
    }
}

/// `target ← m·target + (1 − m)·online`, in place, without gradient tracking.
pub fn ema_tensor(target: &Tensor, online: &Tensor, m: f64) {
    tch::no_grad(|| {
        let mut t = target.shallow_clone();
        let v = target * m + online * (1.0 - m);
        t.copy_(&v);
    });
}

/// One EMA step over paired online / target state entries (the same names after the `online_net.` /
/// `target_net.` prefix, in the same order).
///
/// `Eman`: every floating entry (parameters and running stats) is averaged, `num_batches_tracked` copied.
/// `Params`: parameters only; the target's buffers are left alone.
pub fn ema_update(online: &[StateEntry], target: &[StateEntry], mode: EmaMode, m: f64) {
    if target.first().is_some_and(|t| t.tensor.device().is_cuda()) && ema_update_foreach(online, target, mode, m) {
        return;
    }
    for (o, t) in online.iter().zip(target) {
        debug_assert_eq!(o.name.split_once('.').map(|x| x.1), t.name.split_once('.').map(|x| x.1));
        if !t.is_param && mode == EmaMode::Params {
            continue;
        }
        if t.name.ends_with("num_batches_tracked") {
            tch::no_grad(|| t.tensor.shallow_clone().copy_(&o.tensor));
        } else {
            ema_tensor(&t.tensor, &o.tensor, m);
        }
    }
}

/// [`ema_update`] on a GPU: `t = t·m + (1−m)·o` for the whole list in two multi-tensor launches (hundreds of
/// per-tensor launches otherwise bound the step); equal to the per-tensor formula up to the last bit (the CPU keeps
/// that one, whose numbers the golden tests pin). False (nothing changed) if the kernels refuse the lists.
fn ema_update_foreach(online: &[StateEntry], target: &[StateEntry], mode: EmaMode, m: f64) -> bool {
    let (mut ts, mut os) = (Vec::new(), Vec::new());
    let mut copies = Vec::new();
    for (o, t) in online.iter().zip(target) {
        if !t.is_param && mode == EmaMode::Params {
            continue;
        }
        if t.name.ends_with("num_batches_tracked") {
            copies.push((t, o));
        } else {
            ts.push(t.tensor.shallow_clone());
            os.push(o.tensor.shallow_clone());
        }
    }
    tch::no_grad(|| {
        if lewel_ffi::foreach::mul_scalar_(&ts, m).is_err() {
            return false; // nothing changed: the per-tensor loop does it
        }
        // the same lists as the call above: it cannot fail short of a libtorch bug
        lewel_ffi::foreach::add_(&ts, &os, 1.0 - m).expect("foreach EMA add after a successful foreach multiply");
        for (t, o) in copies {
            t.tensor.shallow_clone().copy_(&o.tensor);
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn entry(name: &str, v: &[f64], is_param: bool) -> StateEntry {
        StateEntry { name: name.to_string(), tensor: Tensor::from_slice(v), is_param }
    }

    #[test]
    fn foreach_update_equals_the_per_tensor_update() {
        for mode in [EmaMode::Eman, EmaMode::Params] {
            let state = |shift: f64| {
                vec![
                    entry("online_net.conv.weight", &[1.0 + shift, -2.0, 0.5], true),
                    entry("online_net.bn.running_mean", &[0.25 + shift, 3.0], false),
                    StateEntry {
                        name: "online_net.bn.num_batches_tracked".into(),
                        tensor: Tensor::from_slice(&[7i64 + shift as i64]),
                        is_param: false,
                    },
                ]
            };
            let online = state(1.0);
            let (ta, tb) = (state(0.0), state(0.0));
            ema_update(&online, &ta, mode, 0.9);
            assert!(ema_update_foreach(&online, &tb, mode, 0.9));
            for (a, b) in ta.iter().zip(&tb) {
                assert!(a.tensor.allclose(&b.tensor, 1e-15, 1e-15, false), "{mode:?} {}", a.name);
            }
        }
    }

    #[test]
    fn ema_step_by_hand() {
        let t = Tensor::from_slice(&[1.0f64, 2.0]);
        ema_tensor(&t, &Tensor::from_slice(&[3.0f64, -2.0]), 0.75);
        // 0.75*1 + 0.25*3 = 1.5; 0.75*2 + 0.25*(-2) = 1.0
        assert!(t.allclose(&Tensor::from_slice(&[1.5f64, 1.0]), 0.0, 1e-15, false));
    }

    fn pair() -> (Vec<StateEntry>, Vec<StateEntry>) {
        let online = vec![
            entry("online_net.w", &[4.0], true),
            entry("online_net.bn.running_mean", &[4.0], false),
            StateEntry {
                name: "online_net.bn.num_batches_tracked".into(),
                tensor: Tensor::from(7i64),
                is_param: false,
            },
        ];
        let target = vec![
            entry("target_net.w", &[0.0], true),
            entry("target_net.bn.running_mean", &[0.0], false),
            StateEntry {
                name: "target_net.bn.num_batches_tracked".into(),
                tensor: Tensor::zeros([], (Kind::Int64, Device::Cpu)),
                is_param: false,
            },
        ];
        (online, target)
    }

    #[test]
    fn eman_averages_buffers_and_copies_the_counter() {
        let (o, t) = pair();
        ema_update(&o, &t, EmaMode::Eman, 0.5);
        assert_eq!(t[0].tensor.double_value(&[0]), 2.0);
        assert_eq!(t[1].tensor.double_value(&[0]), 2.0);
        assert_eq!(t[2].tensor.int64_value(&[]), 7);
        assert_eq!(t[2].tensor.kind(), Kind::Int64);
    }

    #[test]
    fn params_mode_leaves_buffers_alone() {
        let (o, t) = pair();
        ema_update(&o, &t, EmaMode::Params, 0.5);
        assert_eq!(t[0].tensor.double_value(&[0]), 2.0);
        assert_eq!(t[1].tensor.double_value(&[0]), 0.0);
        assert_eq!(t[2].tensor.int64_value(&[]), 0);
    }
}
