//! Two Gloo processes on loopback: the collectives and the differentiable all-reduce. The test re-runs itself as
//! the two ranks (`lewel_ffi::testing::ranks`).

use std::time::Duration;

use lewel_ffi::dist;
use tch::{Kind, Tensor};

const NAME: &str = "two_ranks_reduce_broadcast_gather_and_differentiate";

fn rank_body(rank: usize, port: u16) {
    dist::init("gloo", "127.0.0.1", port, rank, 2, Duration::from_secs(30), 0, true, "test").unwrap();
    let r = rank as f32;
    // sum and average
    let a = Tensor::from_slice(&[1.0 + r, 10.0 * r]);
    let b = Tensor::from_slice(&[r; 3]);
    dist::allreduce(&[a.shallow_clone(), b.shallow_clone()], false).unwrap();
    assert_eq!(Vec::<f32>::try_from(&a).unwrap(), [3.0, 10.0]);
    assert_eq!(Vec::<f32>::try_from(&b).unwrap(), [1.0; 3]);
    let c = Tensor::from_slice(&[2.0 * r]);
    dist::allreduce(&[c.shallow_clone()], true).unwrap();
    assert_eq!(c.double_value(&[0]), 1.0);
    // broadcast from rank 1
    let d = Tensor::from_slice(&[r + 5.0]);
    dist::broadcast(&[d.shallow_clone()], 1).unwrap();
    assert_eq!(d.double_value(&[0]), 6.0);
    // all-gather in rank order
    let g = dist::allgather(&Tensor::from_slice(&[r, r]).view([1, 2])).unwrap();
    assert_eq!(g.size(), [2, 2]);
    assert_eq!(Vec::<f32>::try_from(&g.flatten(0, 1)).unwrap(), [0.0, 0.0, 1.0, 1.0]);
    // differentiable sum: L_r = (r+1) * sum_ranks(x); dL_total/dx_r = sum_r (r+1) = 3 on every rank
    let x = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
    let s = dist::allreduce_autograd(&(&x * f64::from(r + 1.0))).unwrap();
    assert_eq!(Vec::<f32>::try_from(&s.detach()).unwrap(), [3.0, 6.0]);
    (s * f64::from(r + 1.0)).sum(Kind::Float).backward();
    // forward scaled x by (r+1): d/dx_r = (r+1) * 3
    assert_eq!(Vec::<f32>::try_from(&x.grad()).unwrap(), [3.0 * (r + 1.0); 2]);
    dist::barrier().unwrap();
    dist::shutdown();
}

#[test]
fn two_ranks_reduce_broadcast_gather_and_differentiate() {
    if let Some((rank, port)) = lewel_ffi::testing::ranks(NAME, 2, &[]) {
        rank_body(rank, port);
    }
}
