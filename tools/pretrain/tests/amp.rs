//! Black-box tests of `pretrain --precision bf16|fp16` and `--channels-last` on tiny models (ResNet-18 width 4,
//! 32 px, two or three steps, on the CPU: libtorch 2.11 autocasts to bfloat16 and float16 there too).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lewel_testkit::json_lines;
use lewel_testkit::scratch;
use serde_json::Value;
use tch::Tensor;

use common::BIN;

fn views(dir: &Path) -> PathBuf {
    common::views_n(dir, 8, 1)
}

fn tiny_args() -> Vec<&'static str> {
    common::tiny(&["--batch-size", "4", "--epochs", "2"])
}

fn tiny(views: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut a: Vec<&str> = tiny_args();
    let (v, o) = (views.to_str().unwrap(), out.to_str().unwrap());
    a.extend(["--views", v, "--out", o]);
    a.extend(extra);
    Command::new(BIN).args(&a).output().unwrap()
}

fn ok(out: &Output) -> Vec<Value> {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    json_lines(&out.stdout)
}

fn step_events(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["event"] == "step").collect()
}

fn losses(events: &[Value]) -> Vec<f64> {
    step_events(events).iter().map(|e| e["loss"].as_f64().unwrap()).collect()
}

fn checkpoint(run: &Path, step: u64) -> HashMap<String, Tensor> {
    let p = run.join("ckpt").join(lewel::ckpt::file_name(step));
    lewel::ckpt::read_safetensors(&p).unwrap().into_iter().collect()
}

#[test]
fn bf16_runs_on_the_cpu_close_to_fp32() {
    let d = scratch("amp-bf16");
    let v = views(&d);
    let fp32 = ok(&tiny(&v, &d.join("fp32"), &["--max-steps", "3"]));
    let bf16 = ok(&tiny(&v, &d.join("bf16"), &["--max-steps", "3", "--precision", "bf16"]));
    assert_eq!((fp32[0]["precision"].as_str(), fp32[0]["channels_last"].as_bool()), (Some("fp32"), Some(false)));
    assert_eq!(bf16[0]["precision"], "bf16");
    let (a, b) = (losses(&fp32), losses(&bf16));
    assert_eq!(b.len(), 3);
    assert!(b.iter().all(|l| l.is_finite()), "{b:?}");
    // Step 1 starts from the same weights, so only the forward's rounding differs: bfloat16 keeps 8 significant
    // bits (2^-9 relative per op), and through ~20 layers the loss moved by 0.2% here; 2% leaves 10x room. Later
    // steps also differ by their updates, and this tiny run amplifies any difference (a 1e-6 change of the
    // inputs moves the loss by 1% within 6 steps), so they are only checked to be finite.
    assert!((a[0] - b[0]).abs() <= 0.02 * a[0], "bf16 {} vs fp32 {}", b[0], a[0]);
    // No scaler under bf16 (float32's exponent range).
    assert!(step_events(&bf16).iter().all(|e| e.get("loss_scale").is_none() && e.get("skipped_steps").is_none()));
    assert!(!checkpoint(&d.join("bf16"), 3).keys().any(|k| k.starts_with("optimizer.amp.")));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn fp16_overflow_skips_the_step_lowers_the_scale_and_still_runs_the_ema() {
    let d = scratch("amp-fp16");
    let v = views(&d);
    let run = d.join("run");
    // A scale of 1e38 makes the scaled loss (about 3.5e38) overflow float32, and then float16 backward:
    // every gradient is inf or NaN, so both optimiser steps are skipped and the scale halves each time.
    let ev = ok(&tiny(&v, &run, &["--max-steps", "2", "--precision", "fp16", "--loss-scale-init", "1e38"]));
    assert_eq!(ev[0]["precision"], "fp16");
    let s = step_events(&ev);
    assert_eq!(s.len(), 2);
    let scale: Vec<f64> = s.iter().map(|e| e["loss_scale"].as_f64().unwrap()).collect();
    let skipped: Vec<f64> = s.iter().map(|e| e["skipped_steps"].as_f64().unwrap()).collect();
    assert!((scale[0] / 1e38 - 1.0).abs() < 1e-6, "{scale:?}");
    assert_eq!(scale[1], scale[0] * 0.5);
    assert_eq!(skipped, [1.0, 2.0]);
    assert!(s.iter().all(|e| e["loss"].as_f64().unwrap().is_finite()), "the loss itself is unscaled and finite");

    let ck = checkpoint(&run, 2);
    // The scaler state is checkpointed: one more halving after step 2.
    assert_eq!(ck[lewel::amp::SCALE_KEY].double_value(&[0]), scale[1] * 0.5);
    assert_eq!(ck[lewel::amp::SKIPPED_STEPS_KEY].int64_value(&[0]), 2);
    // No optimiser step ran: no momentum buffer, and the online weights are those of step 0 (the model built
    // from the run's configuration and seed).
    assert!(!ck.keys().any(|k| k.starts_with(lewel::optim::MOMENTUM_PREFIX)));
    let config: Value = serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    let cfg: lewel::train::PretrainConfig = serde_json::from_value(config["pretrain"].clone()).unwrap();
    let (_vs, init, _opt) = lewel::train::build(&cfg, tch::Device::Cpu).unwrap();
    let trainable = init.trainable();
    assert!(trainable.len() > 20);
    for (name, w0) in &trainable {
        assert!(ck[name].equal(w0), "{name} changed although every step was skipped");
    }
    // The EMA update still ran after each skipped step (EMAN: the target's BN statistics follow the online
    // network's, which the forwards moved; at step 0 they are 0 and 1).
    let (on, tg) = ("online_net.backbone.bn1.", "target_net.backbone.bn1.");
    let tracked = ck[&format!("{tg}num_batches_tracked")].int64_value(&[]);
    assert_eq!(tracked, ck[&format!("{on}num_batches_tracked")].int64_value(&[]));
    assert!(tracked > 0);
    let mean = &ck[&format!("{tg}running_mean")];
    assert!(mean.abs().max().double_value(&[]) > 0.0, "the target's BN statistics did not move");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn fp16_resume_restores_the_scaler_exactly() {
    let d = scratch("amp-resume");
    let v = views(&d);
    let fp16 = ["--precision", "fp16"];
    let full = ok(&tiny(&v, &d.join("full"), &fp16));
    let part = d.join("part");
    let first = ok(&tiny(&v, &part, &[&fp16[..], &["--max-steps", "3"]].concat()));
    let rest = ok(&Command::new(BIN)
        .args(["--resume", part.to_str().unwrap(), "--log-every", "1", "--quiet", "--device", "cpu"])
        .args(fp16)
        .output()
        .unwrap());
    assert_eq!(rest[0]["start_step"], 3);
    let line = |e: &&Value| format!("{} {} {} {}", e["step"], e["loss"], e["loss_scale"], e["skipped_steps"]);
    let want: Vec<String> = step_events(&full).iter().map(line).collect();
    let mut got: Vec<String> = step_events(&first).iter().map(line).collect();
    got.extend(step_events(&rest).iter().map(line));
    assert_eq!(got, want);
    // The default scale 2^16 overflows float16 at the first steps of this run, as it often does in PyTorch.
    assert_eq!(step_events(&full)[0]["loss_scale"].as_f64(), Some(65536.0));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn channels_last_gives_the_same_losses() {
    let d = scratch("amp-cl");
    let v = views(&d);
    let a = losses(&ok(&tiny(&v, &d.join("a"), &["--max-steps", "2"])));
    let ev = ok(&tiny(&v, &d.join("b"), &["--max-steps", "2", "--channels-last"]));
    assert_eq!(ev[0]["channels_last"], true);
    let b = losses(&ev);
    // The same numbers up to the order of float32 sums in the convolution kernels (oneDNN's NHWC path): step 1
    // differed by 1e-7 relative here, step 2 (after one update from those gradients) by 1e-6.
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-4 * x.abs(), "channels-last {b:?} vs {a:?}");
    }
    // Checkpoints are stored in the standard layout and open as usual.
    let ck = checkpoint(&d.join("b"), 2);
    assert_eq!(ck["online_net.backbone.conv1.weight"].size(), [4, 3, 3, 3]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn loss_scale_init_needs_fp16() {
    let d = scratch("amp-usage");
    let v = views(&d);
    let o = tiny(&v, &d.join("r"), &["--loss-scale-init", "1024"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--loss-scale-init only applies to --precision fp16"));
    let o = tiny(&v, &d.join("r"), &["--precision", "fp16", "--loss-scale-init", "1e39"]);
    assert_eq!(o.status.code(), Some(2));
    let o = tiny(&v, &d.join("r"), &["--precision", "fp8"]);
    assert_eq!(o.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&d);
}
