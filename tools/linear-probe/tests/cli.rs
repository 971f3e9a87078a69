//! Black-box tests of `linear-probe`: help, real runs on raw-pixel Fashion-MNIST features, bad inputs,
//! divergence, and a closed stdout.

use std::path::Path;
use std::process::{Command, Stdio};

use lewel_testkit::scratch;
use lewel_testkit::{check_help, run_tool};
use serde_json::Value;

#[path = "../../../fixtures/probe/fmnist_pixels.rs"]
mod fmnist_pixels;

const BIN: &str = env!("CARGO_BIN_EXE_linear-probe");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Decodes stdout: one flat JSON object per line, starting with v, tool, event.
fn events(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8(stdout.to_vec())
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            assert_eq!(&keys[..3], &["v", "tool", "event"], "{l}");
            assert_eq!(v["tool"], "linear-probe");
            assert!(v.as_object().unwrap().values().all(|x| !x.is_object() && !x.is_array() && !x.is_null()), "{l}");
            v
        })
        .collect()
}

fn of_kind<'a>(ev: &'a [Value], kind: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["event"] == kind).collect()
}

/// The events without their timings, for comparing two runs.
fn without_timings(ev: &[Value]) -> Vec<Value> {
    ev.iter()
        .map(|e| {
            let mut e = e.clone();
            e.as_object_mut().unwrap().remove("elapsed_s");
            e
        })
        .collect()
}

#[test]
fn help_lists_exit_codes_and_an_example() {
    check_help(BIN, "linear-probe --train-features train.npy --val-features val.npy --protocol lewel-b");
    let help = String::from_utf8(run_tool(BIN, &["--help"]).stdout).unwrap();
    for flag in [
        "--protocol",
        "--lr",
        "--epochs",
        "--batch-size",
        "--wd",
        "--milestones",
        "--schedule",
        "--optimizer",
        "--eval-every",
        "--normalize",
        "--out",
        "--seed",
        "--device",
        "lewel-m",
        "optimistic",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// Raw pixels (in [0, 1]) of 200 train / 100 test Fashion-MNIST images, default `small` preset.
/// Measured: final top-1 72%, top-5 96%, best top-1 73% at epoch 24; chance is 10%.
#[test]
fn raw_pixel_probe_on_fashion_mnist_tiny() {
    let d = scratch("real");
    let (train, val) = fmnist_pixels::write_pixel_features(&d);
    let out = d.join("result.json");
    let args = ["--train-features", s(&train), "--val-features", s(&val), "--device", "cpu", "-q"];
    let o = run_tool(BIN, &[&args[..], &["--out", s(&out)]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty(), "--quiet: {}", String::from_utf8_lossy(&o.stderr));
    let ev = events(&o.stdout);
    assert_eq!(ev[0]["event"], "start");
    assert_eq!(
        (ev[0]["preset"].as_str(), ev[0]["lr"].as_f64(), ev[0]["epochs"].as_i64()),
        (Some("small"), Some(0.1), Some(30))
    );
    assert_eq!(ev[0]["milestones"], "18,24");
    assert_eq!(
        (ev[0]["n_train"].as_i64(), ev[0]["dim"].as_i64(), ev[0]["classes"].as_i64()),
        (Some(200), Some(784), Some(10))
    );
    let epochs = of_kind(&ev, "epoch");
    let evals = of_kind(&ev, "eval");
    assert_eq!((epochs.len(), evals.len()), (30, 30));
    assert_eq!(epochs[18]["lr"].as_f64().map(|x| (x * 1e6).round()), Some(10000.0), "x0.1 at epoch 18 (from 0)");
    assert!(epochs.iter().all(|e| e["loss"].as_f64().unwrap() > 0.0 && e["train_top1_pct"].is_number()));
    let end = of_kind(&ev, "end")[0];
    assert_eq!(ev.last().unwrap()["event"], "result");
    assert_eq!(ev.last().unwrap()["final_top1_pct"], end["final_top1_pct"]);
    let final1 = end["final_top1_pct"].as_f64().unwrap();
    let final5 = end["final_top5_pct"].as_f64().unwrap();
    assert!(final1 >= 60.0 && final5 >= 90.0, "far above the 10% of chance: {end}");
    assert_eq!(end["final_top1_pct"], evals[29]["top1_pct"]);
    assert!(end["best_top1_pct"].as_f64().unwrap() >= final1);
    assert_eq!(end["best_is_optimistic"], true);
    let best_epoch = end["best_epoch"].as_i64().unwrap();
    assert_eq!(evals[best_epoch as usize - 1]["top1_pct"], end["best_top1_pct"]);
    let result: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(result["config"]["protocol"]["preset"], "small");
    assert_eq!(result["final_top1_pct"], end["final_top1_pct"]);
    assert_eq!(result["evals"].as_array().unwrap().len(), 30);

    // Same seed, same numbers; another seed, other numbers.
    let again = events(&run_tool(BIN, &args).stdout);
    assert_eq!(without_timings(&ev), without_timings(&again));
    let other = events(&run_tool(BIN, &[&args[..], &["--seed", "1"]].concat()).stdout);
    assert_ne!(
        without_timings(&of_kind(&ev, "epoch").into_iter().cloned().collect::<Vec<_>>()),
        without_timings(&of_kind(&other, "epoch").into_iter().cloned().collect::<Vec<_>>())
    );

    // The paper's protocols, shortened, with overrides echoed in `start`. LARS moves each weight by
    // about lr * eta * ||w|| per step, so the short lewel-m run needs small batches (many steps).
    for (preset, extra) in [
        ("lewel-b", &["--epochs", "6", "--milestones", "3,5"][..]),
        ("lewel-m", &["--epochs", "6", "--batch-size", "16", "--normalize"][..]),
    ] {
        let flag = if preset == "lewel-b" { "--protocol" } else { "--preset" }; // the old name is an alias
        let o = run_tool(BIN, &[&args[..], &[flag, preset], extra].concat());
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let ev = events(&o.stdout);
        assert_eq!(ev[0]["preset"], preset);
        assert_eq!(ev[0]["epochs"], 6);
        let evals = of_kind(&ev, "eval");
        assert_eq!(
            evals.iter().map(|e| e["epoch"].as_i64().unwrap()).collect::<Vec<_>>(),
            [5, 6],
            "every 5 epochs and the last"
        );
        assert!(ev.last().unwrap()["final_top1_pct"].as_f64().unwrap() > 30.0, "{preset}: {}", ev.last().unwrap());
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_inputs_fail_with_a_clear_error() {
    let d = scratch("bad");
    let (train, val) = fmnist_pixels::write_pixel_features(&d);
    let fail = |args: &[&str], code: i32, needles: &[&str]| {
        let o = run_tool(BIN, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: stderr lacks {n:?}: {err}");
        }
        o
    };
    let o = fail(&["--train-features", s(&d.join("missing.npy")), "--val-features", s(&val)], 1, &["missing.npy"]);
    assert!(o.stdout.is_empty());

    // wrong dtype: float16 is not accepted
    let half = d.join("half.npy");
    std::fs::write(&half, npy_bytes("<f2", "(2, 784)", &[0u8; 2 * 784 * 2])).unwrap();
    lewel::eval::features::write_labels(&d.join("half.labels.npy"), &[0, 1]).unwrap();
    fail(&["--train-features", s(&train), "--val-features", s(&half)], 1, &["half.npy", "float32"]);

    // mismatched widths
    let narrow = d.join("narrow.npy");
    lewel::eval::features::write_f32_matrix(&narrow, 2, 5, &[0.1; 10]).unwrap();
    lewel::eval::features::write_labels(&d.join("narrow.labels.npy"), &[0, 1]).unwrap();
    fail(&["--train-features", s(&narrow), "--val-features", s(&val)], 1, &["widths differ", "[2, 5]"]);

    // labels missing
    std::fs::remove_file(d.join("narrow.labels.npy")).unwrap();
    fail(&["--train-features", s(&train), "--val-features", s(&narrow)], 1, &["narrow.labels.npy", "not found"]);

    // usage errors
    fail(&["--train-features", s(&train), "--val-features", s(&train)], 2, &["same file"]);
    fail(&["--train-features", s(&train), "--val-features", s(&val), "--lr", "0"], 2, &["--lr"]);
    fail(&["--train-features", s(&train), "--val-features", s(&val), "--milestones", "5,3"], 2, &["--milestones"]);
    fail(&["--train-features", s(&train), "--val-features", s(&val), "--preset", "imagenet"], 2, &["lewel-b"]);

    // divergence: exit 3 with the advice of the probe
    fail(
        &["--train-features", s(&train), "--val-features", s(&val), "--lr", "1e38", "--epochs", "2", "-q"],
        3,
        &["lower --lr"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// A raw .npy file (version 1.0) with the given descr and shape.
fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn closed_stdout_exits_zero() {
    let d = scratch("closed");
    let (train, val) = fmnist_pixels::write_pixel_features(&d);
    let mut child = Command::new(BIN)
        .args(["--train-features", s(&train), "--val-features", s(&val), "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("bash")
        .args(["-c", r#""$0" --train-features "$1" --val-features "$2" -q | head -1; exit "${PIPESTATUS[0]}""#])
        .args([BIN, s(&train), s(&val)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);
    std::fs::remove_dir_all(&d).unwrap();
}
