//! Black-box tests of `pretrain --method lewel-m / mocov2` on tiny models (ResNet-18 width 4, 32 px, a few
//! steps): the same loop, checkpoints and resume as LEWEL_B, with the key queue in the checkpoint.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lewel_testkit::json_lines;
use lewel_testkit::scratch;
use serde_json::Value;

use common::BIN;

/// 8 view pairs of 32x32.
fn views(dir: &Path) -> PathBuf {
    views_n(dir, 8)
}

/// `n` view pairs of 32x32.
fn views_n(dir: &Path, n: u64) -> PathBuf {
    common::views_n(dir, n, 1)
}

/// small-lewelm shrunk: batch 4 of 8 images (2 steps per epoch), 2 BN slices (so ShuffleBN changes the
/// numbers), a queue of 8 keys (the most 8 images allow; exactly the 2 x 4 keys of one step).
const TINY: &[&str] = &[
    "--preset",
    "small-lewelm",
    "--width",
    "4",
    "--proj-dim",
    "16",
    "--hidden-dim",
    "32",
    "--batch-size",
    "4",
    "--bn-splits",
    "2",
    "--queue-size",
    "8",
    "--epochs",
    "3",
    "--log-every",
    "1",
    "--device",
    "cpu",
    "--quiet",
];

fn pretrain(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn tiny(views: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut a: Vec<&str> = TINY.to_vec();
    let (v, o) = (views.to_str().unwrap(), out.to_str().unwrap());
    a.extend(["--views", v, "--out", o]);
    a.extend(extra);
    pretrain(&a)
}

fn steps(events: &[Value]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| {
            (
                e["step"].as_u64().unwrap(),
                format!("{} {} {} {} {}", e["loss"], e["loss_global"], e["loss_aligned"], e["lr"], e["ema_momentum"]),
            )
        })
        .collect()
}

fn ok(out: &Output) -> Vec<Value> {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    json_lines(&out.stdout)
}

fn checkpoint(run: &Path) -> HashMap<String, tch::Tensor> {
    let latest = lewel::ckpt::resolve(&run.join("ckpt/latest")).unwrap();
    lewel::ckpt::read_safetensors(&latest).unwrap().into_iter().collect()
}

#[test]
fn lewel_m_runs_twice_alike_and_checkpoints_the_queue() {
    let d = scratch("det");
    let v = views(&d);
    let a = ok(&tiny(&v, &d.join("a"), &[]));
    let b = ok(&tiny(&v, &d.join("b"), &[]));
    let (sa, sb) = (steps(&a), steps(&b));
    assert_eq!(sa.len(), 6);
    assert_eq!(sa, sb);
    let start = &a[0];
    assert_eq!(start["model.method"], "lewel-m");
    assert_eq!(start["ema_schedule"], "constant");
    for e in a.iter().filter(|e| e["event"] == "step") {
        assert_eq!(e["ema_momentum"], 0.99, "constant momentum");
        let (l, g, al) =
            (e["loss"].as_f64().unwrap(), e["loss_global"].as_f64().unwrap(), e["loss_aligned"].as_f64().unwrap());
        assert!(g > 0.0 && al > 0.0);
        assert!((l - 0.5 * (g + al)).abs() < 1e-4 * l, "{l} {g} {al}");
    }
    let ck = checkpoint(&d.join("a"));
    assert_eq!(ck["queue"].size(), [16, 8]);
    // 6 steps of 8 keys into 8 columns: the pointer is back at 0
    assert_eq!(ck["queue_ptr"].int64_value(&[0]), 0);
    assert!(ck.contains_key("shuffle_state"));
    assert!(ck.keys().all(|k| !k.starts_with("predictor")));
    assert!(ck.contains_key("optimizer.momentum_buffer.online_net.neck.proj_obj.mlp.0.weight"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn lewel_m_resume_is_bit_exact() {
    let d = scratch("resume");
    // 16 images, 4 steps per epoch; a queue of 12 keys wraps at a different column each step (8 keys per
    // step: pointer 0, 8, 4, 0, ...), so it holds keys of two steps: a resume without it would differ.
    let v = views_n(&d, 16);
    let q = ["--queue-size", "12", "--epochs", "2"];
    let full = steps(&ok(&tiny(&v, &d.join("full"), &q)));
    assert_eq!(full.len(), 8);
    // Stop after step 5 (mid-epoch), then resume.
    let mut part = q.to_vec();
    part.extend(["--max-steps", "5"]);
    let first = ok(&tiny(&v, &d.join("part"), &part));
    let ck = checkpoint(&d.join("part"));
    assert_eq!(ck["queue_ptr"].int64_value(&[0]), (5 * 8) % 12);
    let resumed = ok(&pretrain(&["--resume", d.join("part").to_str().unwrap(), "--log-every", "1", "--quiet"]));
    assert_eq!(resumed[0]["start_step"], 5);
    let mut got = steps(&first);
    got.extend(steps(&resumed));
    assert_eq!(got, full, "losses after resume differ from the uninterrupted run");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn mocov2_has_only_the_global_loss() {
    let d = scratch("moco");
    let v = views(&d);
    let ev = ok(&tiny(&v, &d.join("run"), &["--method", "mocov2", "--max-steps", "2"]));
    assert_eq!(ev[0]["model.method"], "mocov2");
    let s: Vec<&Value> = ev.iter().filter(|e| e["event"] == "step").collect();
    assert_eq!(s.len(), 2);
    for e in s {
        assert_eq!(e["loss_aligned"], 0.0);
        assert_eq!(e["loss"], e["loss_global"]);
    }
    let ck = checkpoint(&d.join("run"));
    assert!(ck.contains_key("queue") && ck.keys().all(|k| !k.contains("proj_obj")));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn method_alone_picks_the_lewel_m_recipe() {
    let d = scratch("recipe");
    let v = views(&d);
    let (vs, out) = (v.to_str().unwrap(), d.join("run"));
    let ev = ok(&pretrain(&[
        "--method",
        "lewel-m",
        "--arch",
        "resnet18",
        "--stem",
        "cifar",
        "--width",
        "4",
        "--hidden-dim",
        "32",
        "--batch-size",
        "4",
        "--bn-splits",
        "2",
        "--queue-size",
        "8",
        "--max-steps",
        "1",
        "--device",
        "cpu",
        "--quiet",
        "--views",
        vs,
        "--out",
        out.to_str().unwrap(),
    ]));
    let s = &ev[0];
    assert_eq!(s["model.proj_dim"], 128);
    assert_eq!(s["model.temperature"], 0.2);
    assert_eq!(s["model.ema"], "params");
    assert_eq!(s["optim.kind"], "sgd");
    assert_eq!(s["optim.weight_decay"], 1e-4);
    assert_eq!(s["lr"], 0.06);
    assert_eq!(s["warmup_epochs"], 0);
    assert_eq!(s["epochs"], 200);
    assert_eq!(s["ema_momentum"], 0.999);
    assert_eq!(s["ema_schedule"], "constant");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn queue_that_does_not_fit_the_data_is_refused() {
    let d = scratch("queue");
    let v = views(&d);
    let o = tiny(&v, &d.join("r1"), &["--queue-size", "4096"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--queue-size 4096") && err.contains("8 images"), "{err}");
    let o = tiny(&v, &d.join("r2"), &["--queue-size", "6"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("smaller than the 8 keys"));
    let o = tiny(&v, &d.join("r3"), &["--temperature", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--temperature"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn lewel_m_divergence_exits_3() {
    let d = scratch("diverge");
    let v = views(&d);
    let o = tiny(&v, &d.join("run"), &["--lr", "1e30", "--ckpt-every-steps", "1"]);
    assert_eq!(o.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    let ev = json_lines(&o.stdout);
    assert!(ev.iter().any(|e| e["event"] == "error"));
    let _ = std::fs::remove_dir_all(&d);
}
