//! Black-box tests of `finetune-semi --precision bf16|fp16 --channels-last` (the same mixed-precision code as
//! `pretrain`, through the shared loop) on the Fashion-MNIST fixtures with a tiny checkpoint, on the CPU.

use std::path::Path;
use std::process::Output;

use lewel_testkit::scratch;
use lewel_testkit::{json_lines, run_tool};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_finetune-semi");
const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

fn semi(ck: &Path, out: &Path, extra: &[&str]) -> Output {
    let (t, v) = (
        format!("{FIX}/fashion-mnist-tiny/train-images-idx3-ubyte"),
        format!("{FIX}/fashion-mnist-tiny/t10k-images-idx3-ubyte"),
    );
    let mut a = vec![
        "--ckpt",
        ck.to_str().unwrap(),
        "--train-data",
        &t,
        "--val-data",
        &v,
        "--preset",
        "semi-small",
        "--fraction",
        "0.3",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-steps",
        "2",
        "--log-every",
        "1",
        "--device",
        "cpu",
        "--threads",
        "2",
        "-q",
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend(extra);
    run_tool(BIN, &a)
}

fn steps(out: &Output) -> (Value, Vec<Value>) {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let ev = json_lines(&out.stdout);
    (ev[0].clone(), ev.into_iter().filter(|e| e["event"] == "step").collect())
}

#[test]
fn mixed_precision_and_channels_last_fine_tune() {
    let d = scratch("semi-amp");
    let ck = lewel_testkit::tiny_checkpoint(&d.join("pre"), false);
    let (_, fp32) = steps(&semi(&ck, &d.join("fp32"), &[]));
    let (start, bf16) = steps(&semi(&ck, &d.join("bf16"), &["--precision", "bf16", "--channels-last"]));
    assert_eq!((start["precision"].as_str(), start["channels_last"].as_bool()), (Some("bf16"), Some(true)));
    let (a, b) = (fp32[0]["loss"].as_f64().unwrap(), bf16[0]["loss"].as_f64().unwrap());
    // Same weights at step 1: only bfloat16 rounding of the forward (8 significant bits) differs.
    assert!((a - b).abs() <= 0.02 * a, "bf16 {b} vs fp32 {a}");
    assert!(bf16.iter().all(|e| e["loss"].as_f64().is_some_and(f64::is_finite) && e.get("loss_scale").is_none()));
    let (_, fp16) = steps(&semi(&ck, &d.join("fp16"), &["--precision", "fp16"]));
    assert_eq!(fp16[0]["loss_scale"].as_f64(), Some(65536.0));
    assert!(fp16.iter().all(|e| e["skipped_steps"].as_f64().is_some()));
    let t: std::collections::HashMap<String, tch::Tensor> =
        lewel::ckpt::read_safetensors(&d.join("fp16/ckpt").join(lewel::ckpt::file_name(2)))
            .unwrap()
            .into_iter()
            .collect();
    assert!(t.contains_key(lewel::amp::SCALE_KEY) && t.contains_key("fc.weight"));
    let _ = std::fs::remove_dir_all(&d);
}
