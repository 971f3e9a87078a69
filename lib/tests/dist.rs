//! Data parallelism on two Gloo processes over loopback (the test binary re-runs itself as the two ranks:
//! `lewel_ffi::testing::ranks`): the gradients averaged over the ranks equal those of one process on
//! the whole batch with `bn_splits` 2 (per-rank BN = BN over two slices), and SyncBatchNorm's loss and gradients
//! equal those of one process on the whole batch with ordinary BN; LEWEL_M and MoCo v2 (ShuffleBN across the ranks,
//! the batch's aligned negatives, the queue) follow one process with `bn_splits` 2 step for step. In float64, so that the tolerances (1e-6 for
//! the gradients, 1e-5 for the loss) measure the method, not float32 rounding (which alone gives ~1e-6 on
//! gradients of magnitude 10).

use std::time::Duration;

use lewel::dist::{self, Launch};
use lewel::model::{Arch, Lewel, Method, ModelConfig, Stem};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn cfg(bn_splits: i64) -> ModelConfig {
    ModelConfig {
        method: Method::LewelB,
        arch: Arch::Resnet18,
        stem: Stem::Cifar,
        width: 4,
        proj_dim: 16,
        hidden_dim: 32,
        bn_splits,
        ..ModelConfig::default()
    }
}

/// LEWEL_M / MoCo v2 as the small presets run them: EMA of the parameters (target BN in train mode, so
/// ShuffleBN), a queue of 16 keys.
fn moco_cfg(method: Method, bn_splits: i64) -> ModelConfig {
    ModelConfig { method, ema: lewel::ema::EmaMode::Params, queue_size: 16, ..cfg(bn_splits) }
}

/// The views of the tests: 8 pairs of 16x16 images (seed 11), in float64.
fn views() -> (Tensor, Tensor) {
    tch::manual_seed(11);
    let v1 = Tensor::randn([8, 3, 16, 16], (Kind::Double, Device::Cpu));
    let v2 = Tensor::randn([8, 3, 16, 16], (Kind::Double, Device::Cpu));
    (v1, v2)
}

/// The seed-7 model of `cfg` in float64.
fn model(cfg: &ModelConfig) -> (VarStore, Lewel) {
    tch::manual_seed(7);
    let mut vs = VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    let model = Lewel::new(&vs, cfg).unwrap();
    (vs, model)
}

/// A model with the seed-7 initialisation on this rank's (v1, v2): the loss (mean over the ranks) and the
/// gradients (averaged over the ranks when `average`) by name.
fn grads(cfg: &ModelConfig, v1: &Tensor, v2: &Tensor, average: bool) -> (f64, Vec<(String, Tensor)>) {
    let (_vs, model) = model(cfg);
    let terms = model.forward_loss(v1, v2).unwrap();
    terms.total.backward();
    let params = model.trainable();
    if average {
        dist::average_gradients(&params.iter().map(|(_, t)| t.shallow_clone()).collect::<Vec<_>>()).unwrap();
    }
    let loss = dist::mean(&[terms.total.double_value(&[])]).unwrap()[0];
    (loss, params.into_iter().map(|(k, t)| (k, t.grad().copy())).collect())
}

fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f64, String) {
    a.iter()
        .zip(b)
        .map(|((ka, ta), (kb, tb))| {
            assert_eq!(ka, kb);
            ((ta - tb).abs().max().double_value(&[]), ka.clone())
        })
        .fold((0.0, String::new()), |m, x| if x.0 > m.0 { x } else { m })
}

fn rank_body(rank: usize, port: u16) {
    let launch = Launch {
        rank,
        world: 2,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank0_hosts_store: true,
        source: "test",
        prefix: "test".into(),
    };
    dist::init(&launch, Device::Cpu, Duration::from_secs(60)).unwrap();
    let (v1, v2) = views();
    let (l1, l2) = (v1.narrow(0, 4 * rank as i64, 4), v2.narrow(0, 4 * rank as i64, 4));

    // per-rank BN, gradients averaged == one process, whole batch, bn_splits 2
    let (_, ddp) = grads(&cfg(1), &l1, &l2, true);
    let (_, reference) = grads_single(&cfg(2), &v1, &v2);
    let (d, worst) = max_diff(&ddp, &reference);
    assert!(d < 1e-6, "rank {rank}: averaged gradients differ from one process with bn_splits 2 by {d} ({worst})");
    // the same through the reducer that overlaps the all-reduces with the backward pass (tiny buckets: many)
    let overlapped = {
        let (_vs, model) = model(&cfg(1));
        let params: Vec<Tensor> = model.trainable().into_iter().map(|(_, t)| t).collect();
        let mut reducer = lewel_ffi::dist::Reducer::new(&params, 4096).unwrap();
        for _ in 0..2 {
            // twice: the buckets reset between backward passes
            model.trainable().iter().for_each(|(_, t)| t.shallow_clone().zero_grad());
            reducer.prepare().unwrap();
            model.forward_loss(&l1, &l2).unwrap().total.backward();
            reducer.finish().unwrap();
        }
        model.trainable().into_iter().map(|(k, t)| (k, t.grad().copy())).collect::<Vec<_>>()
    };
    let (d, worst) = max_diff(&overlapped, &reference);
    assert!(d < 1e-6, "rank {rank}: overlapped all-reduce differs from one process by {d} ({worst})");

    // SyncBatchNorm == one process, whole batch, ordinary BN
    lewel::model::batchnorm::set_sync(true);
    let (loss_sync, sync) = grads(&ModelConfig { sync_bn: true, ..cfg(1) }, &l1, &l2, true);
    lewel::model::batchnorm::set_sync(false);
    let (loss_ref, reference) = grads_single(&cfg(1), &v1, &v2);
    assert!((loss_sync - loss_ref).abs() < 1e-5, "rank {rank}: SyncBN loss {loss_sync} vs one process {loss_ref}");
    let (d, worst) = max_diff(&sync, &reference);
    assert!(d < 1e-5, "rank {rank}: SyncBN gradients differ from one process by {d} ({worst})");

    // Several LARS steps with EMA: SyncBN on two ranks follows one process step for step.
    lewel::model::batchnorm::set_sync(true);
    let sync = train(&ModelConfig { sync_bn: true, ..cfg(1) }, &l1, &l2, true);
    lewel::model::batchnorm::set_sync(false);
    let single = train(&cfg(1), &v1, &v2, false);
    for (k, (a, b)) in sync.iter().zip(&single).enumerate() {
        assert!((a - b).abs() < 1e-9, "rank {rank}, step {k}: SyncBN loss {a} vs one process {b}");
    }

    // LEWEL_M and MoCo v2: ShuffleBN across the ranks, the aligned negatives and the enqueued keys of the whole
    // batch; against one process with bn_splits 2 (computed by the parent, outside any group)
    let reference: Vec<Vec<f64>> = serde_json::from_str(&std::env::var("LEWEL_TEST_REF").unwrap()).unwrap();
    for (method, want) in [Method::LewelM, Method::MocoV2].into_iter().zip(reference) {
        let got = train(&moco_cfg(method, 1), &l1, &l2, true);
        assert_eq!((got.len(), want.len()), (4, 4));
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-9, "rank {rank}, {method:?} step {k}: {a} vs one process {b}");
        }
    }
    dist::barrier().unwrap();
    dist::shutdown();
}

/// The losses of 4 training steps (LARS, EMA) from the seed-7 initialisation on the same views; gradients
/// averaged over the ranks when `ranks`.
fn train(cfg: &ModelConfig, v1: &Tensor, v2: &Tensor, ranks: bool) -> Vec<f64> {
    let (_vs, model) = model(cfg);
    let mut opt = lewel::optim::Optimizer::new(model.trainable(), &lewel::optim::OptimConfig::default());
    let params: Vec<Tensor> = model.trainable().into_iter().map(|(_, t)| t).collect();
    (0..4)
        .map(|_| {
            let terms = model.forward_loss(v1, v2).unwrap();
            opt.zero_grad();
            terms.total.backward();
            let loss = terms.total.double_value(&[]);
            if ranks {
                dist::average_gradients(&params).unwrap();
            }
            opt.step(0.1);
            model.momentum_update(0.99);
            if ranks {
                dist::mean(&[loss]).unwrap()[0]
            } else {
                loss
            }
        })
        .collect()
}

/// One process's loss and gradients on the whole batch (no collective: the loss of this process alone).
fn grads_single(cfg: &ModelConfig, v1: &Tensor, v2: &Tensor) -> (f64, Vec<(String, Tensor)>) {
    let (_vs, model) = model(cfg);
    let terms = model.forward_loss(v1, v2).unwrap();
    terms.total.backward();
    let loss = terms.total.double_value(&[]);
    (loss, model.trainable().into_iter().map(|(k, t)| (k, t.grad().copy())).collect())
}

#[test]
fn two_ranks_equal_one_process() {
    // the LEWEL_M / MoCo v2 reference: one process, computed here (outside any group) for the ranks to compare with
    let reference = if std::env::var("LEWEL_TEST_RANK").is_ok() {
        String::new()
    } else {
        let (v1, v2) = views();
        let r: Vec<Vec<f64>> =
            [Method::LewelM, Method::MocoV2].into_iter().map(|m| train(&moco_cfg(m, 2), &v1, &v2, false)).collect();
        serde_json::to_string(&r).unwrap()
    };
    if let Some((rank, port)) =
        lewel_ffi::testing::ranks("two_ranks_equal_one_process", 2, &[("LEWEL_TEST_REF", reference)])
    {
        rank_body(rank, port);
    }
}
