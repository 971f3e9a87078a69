//! Helpers for the black-box tests of the tools (`tools/<tool>/tests/`).

use std::process::{Command, Output};

/// Runs a tool binary with `args` and returns its output.
pub fn run_tool(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("could not run {bin}: {e}"))
}

/// Checks that `bin --help` exits 0, lists every exit code and ends with an example.
pub fn check_help(bin: &str, example_fragment: &str) {
    let out = run_tool(bin, &["--help"]);
    assert_eq!(out.status.code(), Some(0), "--help failed: {}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["Exit codes", "  0 ", "  1 ", "  2 ", "  3 ", "  130 ", "Example", example_fragment] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

/// Writes a C-ordered float32 `.npy` file (test inputs such as view pairs).
pub fn write_npy_f32(path: &std::path::Path, shape: &[u64], data: &[f32]) {
    use npyz::WriterBuilder;
    let mut w = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(shape)
        .writer(std::fs::File::create(path).expect("create npy"))
        .begin_nd()
        .expect("npy header");
    w.extend(data.iter().copied()).expect("npy data");
    w.finish().expect("npy finish");
}

/// Deterministic pseudo-random values in [-1, 1) (SplitMix64), for test inputs.
pub fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Parses JSON lines (panics on a line that is not a JSON object).
pub fn json_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "not an object: {l}");
            v
        })
        .collect()
}

/// A fresh, empty scratch folder for one test: `$TMPDIR/lewel-test-NAME-PID` (the process id keeps
/// test binaries that run at the same time apart; NAME keeps the tests of one binary apart).
pub fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("lewel-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch folder");
    d
}

/// A tiny LEWEL_B checkpoint (ResNet-18, CIFAR stem, width 4, K 8, hidden 16; seed 3) written with its
/// sidecar into the folder `dir` (created). With `move_bn_stats`, one training forward on noise moves
/// the BN running statistics off their defaults first. Returns the checkpoint file.
pub fn tiny_checkpoint(dir: &std::path::Path, move_bn_stats: bool) -> std::path::PathBuf {
    use crate::model::{Arch, Lewel, ModelConfig, Stem};
    tch::manual_seed(3);
    let cfg = ModelConfig {
        arch: Arch::Resnet18,
        stem: Stem::Cifar,
        width: 4,
        proj_dim: 8,
        hidden_dim: 16,
        ..ModelConfig::default()
    };
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = Lewel::new(&vs, &cfg).expect("tiny model");
    if move_bn_stats {
        let x = tch::Tensor::randn([8, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
        let _ = model.forward_loss(&x, &x.flip([3])).expect("forward");
    }
    std::fs::create_dir_all(dir).expect("checkpoint folder");
    crate::ckpt::save(dir, 1, 0, &model.state_dict(), &serde_json::json!({"config": {"model": cfg}})).expect("save")
}
