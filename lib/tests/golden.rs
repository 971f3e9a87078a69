//! Parity with the official LEWEL_B code: the golden values of `reference/lewel-official.md` §11.2.
//!
//! Every state tensor is filled from a closed-form integer hash of its name kind, shape and flat index (computed in
//! u64 / f64, then cast), exactly as the reference's Python `fill` / `views`; online and target get identical
//! values and `num_batches_tracked` stays 0. The losses must then equal the official ones to 1e-9 in float64 and
//! 2e-5 in float32. Run with `--nocapture` to see the measured values.

use lewel::model::{Arch, EmaMode, Lewel, Method, ModelConfig, Stem};
use lewel::optim::{OptimConfig, Optimizer, OptimizerKind};
use lewel::schedule::ema_momentum;
use tch::{nn::VarStore, Device, Kind, Tensor};

const M32: u64 = 0xFFFF_FFFF;

/// The reference's exact uint32 hash, mapped to [0, 1).
fn uhash(n: u64) -> f64 {
    let mut x = n & M32;
    x = (((x >> 16) ^ x) * 0x45D_9F3B) & M32;
    x = (((x >> 16) ^ x) * 0x45D_9F3B) & M32;
    x = (x >> 16) ^ x;
    x as f64 / 4_294_967_296.0
}

/// Uniform in [-1, 1).
fn sym(n: u64) -> f64 {
    2.0 * uhash(n) - 1.0
}

/// The value of element `i` of state entry `name` with `dims` (the Python `fill` rules, in its order).
fn fill_values(name: &str, dims: &[i64]) -> Vec<f64> {
    let numel: i64 = dims.iter().product();
    let n = numel as u64;
    if dims.len() >= 2 {
        let scale = (3.0 / (numel / dims[0]) as f64).sqrt(); // fan_in = numel / out_channels
        (0..n).map(|i| sym(i) * scale).collect()
    } else if name.ends_with("running_mean") {
        (0..n).map(|i| 0.1 * sym(i + (1 << 30))).collect()
    } else if name.ends_with("running_var") {
        (0..n).map(|i| 1.0 + 0.25 * sym(i + (1 << 30) + (1 << 29))).collect()
    } else if name.ends_with("weight") {
        (0..n).map(|i| 1.0 + 0.1 * sym(i + (1 << 28))).collect()
    } else {
        (0..n).map(|i| 0.1 * sym(i + (1 << 29))).collect()
    }
}

fn fill(model: &Lewel) {
    let state = model.state_dict();
    let mut filled = 0;
    tch::no_grad(|| {
        for (name, t) in &state {
            if name.ends_with("num_batches_tracked") {
                continue;
            }
            let v = Tensor::from_slice(&fill_values(name, &t.size())).reshape(t.size()).to_kind(t.kind());
            t.shallow_clone().copy_(&v);
            filled += 1;
        }
    });
    assert!(filled > 0);
}

/// The two views, row-major `[b, 3, s, s]`, filled in f64 then cast.
fn views(b: i64, s: i64, kind: Kind) -> (Tensor, Tensor) {
    let n = (b * 3 * s * s) as u64;
    let mk = |off: u64| {
        let v: Vec<f64> = (0..n).map(|i| sym(i + off)).collect();
        Tensor::from_slice(&v).reshape([b, 3, s, s]).to_kind(kind)
    };
    (mk(1 << 31), mk((1 << 31) + (1 << 30)))
}

fn build(arch: Arch, ema: EmaMode, kind: Kind, k: i64, hid: i64) -> (VarStore, Lewel) {
    build_on(Device::Cpu, arch, ema, kind, k, hid)
}

fn build_on(dev: Device, arch: Arch, ema: EmaMode, kind: Kind, k: i64, hid: i64) -> (VarStore, Lewel) {
    let mut vs = VarStore::new(dev);
    vs.set_kind(kind);
    let cfg = ModelConfig {
        method: Method::LewelB,
        arch,
        stem: Stem::Imagenet,
        width: 64,
        proj_dim: k,
        hidden_dim: hid,
        groups: 4,
        map_scale: 1.0,
        alpha: 0.5,
        ema,
        bn_splits: 1,
        sync_bn: false,
        temperature: 0.2,
        queue_size: 65536,
    };
    let model = Lewel::new(&vs, &cfg).expect("model");
    fill(&model);
    (vs, model)
}

fn tol(kind: Kind) -> f64 {
    if kind == Kind::Double {
        1e-9
    } else {
        2e-5
    }
}

fn check(label: &str, kind: Kind, want: f64, got: f64) {
    let err = (got - want).abs();
    eprintln!("{label:<40} {kind:?}: expected {want:.12}  got {got:.12}  |diff| {err:.3e}");
    assert!(err <= tol(kind), "{label} {kind:?}: expected {want:.12}, got {got:.12} (|diff| {err:.3e})");
}

/// One forward loss of a freshly filled model.
fn loss_row(arch: Arch, ema: EmaMode, kind: Kind, k: i64, hid: i64, b: i64, s: i64) -> f64 {
    let (_vs, model) = build(arch, ema, kind, k, hid);
    let (v1, v2) = views(b, s, kind);
    let t = tch::no_grad(|| model.forward_loss(&v1, &v2)).expect("forward");
    assert_eq!(t.total.kind(), kind);
    t.total.double_value(&[])
}

/// The two-step LARS test: losses at step 0 and 1 and the momentum of the second update.
fn step_rows(ema: EmaMode, kind: Kind) -> (f64, f64, f64) {
    step_rows_on(Device::Cpu, ema, kind)
}

fn step_rows_on(dev: Device, ema: EmaMode, kind: Kind) -> (f64, f64, f64) {
    let (_vs, model) = build_on(dev, Arch::Resnet18, ema, kind, 16, 32);
    let ocfg =
        OptimConfig { kind: OptimizerKind::Lars, momentum: 0.9, weight_decay: 1.5e-6, eta: 0.001, clip: false, ema };
    let mut opt = Optimizer::new(model.trainable(), &ocfg);
    let (v1, v2) = views(4, 64, kind);
    let mut losses = Vec::new();
    let mut m = 0.0;
    for it in 0..2 {
        m = ema_momentum(0.98, it, 100);
        let t = lewel::model::train_step(&model, &mut opt, &v1, &v2, 0.1, m).expect("step");
        losses.push(t.total.double_value(&[]));
    }
    (losses[0], losses[1], m)
}

// §11.2 table: (float64, float32)
const R18_EMAN: (f64, f64) = (3.320804383186, 3.320803642273);
const R18_PARAMS: (f64, f64) = (2.412717245168, 2.412720203400);
const R50_EMAN: (f64, f64) = (2.234065056831, 2.234054565430);
const R50_PARAMS: (f64, f64) = (2.234405371718, 2.234419584274);
const STEP1_EMAN: (f64, f64) = (3.195318501455, 3.195319414139);
const STEP1_PARAMS: (f64, f64) = (1.993432660992, 1.993450164795);

fn pick(v: (f64, f64), kind: Kind) -> f64 {
    if kind == Kind::Double {
        v.0
    } else {
        v.1
    }
}

fn resnet18_rows(kind: Kind) {
    let got = loss_row(Arch::Resnet18, EmaMode::Eman, kind, 16, 32, 4, 64);
    check("LEWELB_EMAN resnet18 K16 hid32 B4 64px", kind, pick(R18_EMAN, kind), got);
    let got = loss_row(Arch::Resnet18, EmaMode::Params, kind, 16, 32, 4, 64);
    check("LEWELB resnet18 K16 hid32 B4 64px", kind, pick(R18_PARAMS, kind), got);
}

fn step_test(kind: Kind) {
    let (l0, l1, m) = step_rows(EmaMode::Eman, kind);
    check("step LEWELB_EMAN loss@0", kind, pick(R18_EMAN, kind), l0);
    check("step LEWELB_EMAN loss@1", kind, pick(STEP1_EMAN, kind), l1);
    assert!((m - 0.980004934396).abs() < 1e-12, "curr_m {m}");
    let (l0, l1, _) = step_rows(EmaMode::Params, kind);
    check("step LEWELB loss@0", kind, pick(R18_PARAMS, kind), l0);
    check("step LEWELB loss@1", kind, pick(STEP1_PARAMS, kind), l1);
}

fn resnet50_rows(kind: Kind) {
    let got = loss_row(Arch::Resnet50, EmaMode::Eman, kind, 256, 4096, 2, 224);
    check("LEWELB_EMAN resnet50 K256 hid4096 B2 224px", kind, pick(R50_EMAN, kind), got);
    let got = loss_row(Arch::Resnet50, EmaMode::Params, kind, 256, 4096, 2, 224);
    check("LEWELB resnet50 K256 hid4096 B2 224px", kind, pick(R50_PARAMS, kind), got);
}

#[test]
fn hash_matches_reference_definition() {
    // uhash(0) = 0 and the hash is a bijection-based mix: spot values computed by hand from the definition
    assert_eq!(uhash(0), 0.0);
    let x = 1u64;
    let x = (((x >> 16) ^ x) * 0x45D9F3B) & M32;
    let x = (((x >> 16) ^ x) * 0x45D9F3B) & M32;
    let x = (x >> 16) ^ x;
    assert_eq!(uhash(1), x as f64 / 2f64.powi(32));
    assert_eq!(uhash(1 << 32), 0.0); // masked to 32 bits
    assert!((-1.0..1.0).contains(&sym(12345)));
}

#[test]
fn golden_resnet18_f64() {
    resnet18_rows(Kind::Double);
}

#[test]
fn golden_resnet18_f32() {
    resnet18_rows(Kind::Float);
}

#[test]
fn golden_step_lars_f64() {
    step_test(Kind::Double);
}

#[test]
fn golden_step_lars_f32() {
    step_test(Kind::Float);
}

#[test]
fn golden_resnet50_f64() {
    resnet50_rows(Kind::Double);
}

#[test]
fn golden_resnet50_f32() {
    resnet50_rows(Kind::Float);
}

/// The step test in float64 on the first CUDA device (float64 rules out TF32): the same 1e-9 tolerance.
/// `cargo test -p lewel --test golden -- --ignored`; skipped when no GPU is visible.
#[test]
#[ignore]
fn golden_step_lars_cuda_f64() {
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device: skipped");
        return;
    }
    let kind = Kind::Double;
    for (ema, l0, l1) in [(EmaMode::Eman, R18_EMAN, STEP1_EMAN), (EmaMode::Params, R18_PARAMS, STEP1_PARAMS)] {
        let (g0, g1, _) = step_rows_on(Device::Cuda(0), ema, kind);
        check(&format!("cuda step {ema:?} loss@0"), kind, pick(l0, kind), g0);
        check(&format!("cuda step {ema:?} loss@1"), kind, pick(l1, kind), g1);
    }
}
