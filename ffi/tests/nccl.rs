//! The NCCL process group on a GPU (ignored by default: `make test` runs on CPU machines; the device check runs
//! it with `--ignored`). NCCL refuses two ranks on one GPU, so this is a group of one: it proves that the group
//! is built through libtorch_cuda's exported symbols and that every collective runs on CUDA tensors.

use std::time::Duration;

use lewel_ffi::{cuda, dist};
use tch::{Device, Kind, Tensor};

#[test]
#[ignore = "needs a CUDA GPU (run by scripts/device-check.sh)"]
fn nccl_group_of_one_on_the_gpu() {
    cuda::load().unwrap();
    assert!(tch::Cuda::device_count() > 0, "no CUDA device visible");
    assert!(dist::has_nccl(), "built without NCCL");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    dist::init("nccl", "127.0.0.1", port, 0, 1, Duration::from_secs(60), 0, true, "nccl-test").unwrap();
    let dev = Device::Cuda(0);
    let a = Tensor::from_slice(&[1.0f32, 2.0]).to_device(dev);
    dist::allreduce(&[a.shallow_clone()], true).unwrap();
    assert_eq!(Vec::<f32>::try_from(&a.to_device(Device::Cpu)).unwrap(), [1.0, 2.0]);
    dist::broadcast(&[a.shallow_clone()], 0).unwrap();
    let g = dist::allgather(&a.view([1, 2])).unwrap();
    assert_eq!(g.size(), [1, 2]);
    let x = Tensor::from_slice(&[3.0f32]).to_device(dev).set_requires_grad(true);
    let s = dist::allreduce_autograd(&(&x * 2.0)).unwrap();
    s.sum(Kind::Float).backward();
    assert_eq!(x.grad().to_device(Device::Cpu).double_value(&[0]), 2.0);
    dist::barrier().unwrap();
    dist::shutdown();
    eprintln!("NCCL group of one: allreduce, broadcast, allgather, autograd all-reduce, barrier: ok");
}
