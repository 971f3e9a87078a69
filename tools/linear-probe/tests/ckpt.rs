//! Black-box tests of `linear-probe --ckpt`: the paper's protocol on the fly (augmented training
//! crops through the frozen backbone) on the Fashion-MNIST fixture, and `--results` skipping.

use std::path::Path;

use lewel::testing::scratch;
use lewel::testing::{json_lines, run_tool};
use serde_json::Value;

#[path = "../../../fixtures/probe/tiny_ckpt.rs"]
mod tiny_ckpt;

const BIN: &str = env!("CARGO_BIN_EXE_linear-probe");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn of_kind<'a>(ev: &'a [Value], kind: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["event"] == kind).collect()
}

#[test]
fn on_the_fly_probe_on_fashion_mnist_reaches_a_sane_accuracy_and_skips_when_done() {
    let d = scratch("fly");
    let ck = tiny_ckpt::save(&d.join("ckpt"), 1, 3, 40);
    let (train, val) = tiny_ckpt::fmnist();
    let results = d.join("r.jsonl");
    let args = [
        "--ckpt",
        s(&ck),
        "--train-data",
        &train,
        "--val-data",
        &val,
        "--epochs",
        "60",
        "--milestones",
        "40,50",
        "--batch-size",
        "32",
        "--lr",
        "0.1",
        "--eval-every",
        "20",
        "--threads",
        "1",
        "--results",
        s(&results),
        "--device",
        "cpu",
        "-q",
    ];
    let o = run_tool(BIN, &args);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = json_lines(&o.stdout);
    let start = of_kind(&ev, "start")[0];
    assert_eq!(
        (start["n_train"].as_i64(), start["n_val"].as_i64(), start["dim"].as_i64()),
        (Some(200), Some(100), Some(32))
    );
    assert_eq!(of_kind(&ev, "epoch").len(), 60);
    let r = of_kind(&ev, "result");
    assert_eq!(r.len(), 1);
    let r = r[0];
    let top1 = r["final_top1_pct"].as_f64().unwrap();
    // An untrained tiny backbone (BN calibrated on noise) on 200 images with scale-0.08 crops:
    // 39-46% over seeds, as kNN on its features (40% at k=10); chance is 10%.
    let evals: Vec<String> = of_kind(&ev, "eval").iter().map(|e| e.to_string()).collect();
    assert!(top1 >= 30.0, "{r}\n{evals:?}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(r["train_transform_used"].as_str().unwrap().contains("scale 0.08-1"), "{r}");
    assert_eq!(r["eval_crop_used_px"], 32);
    assert_eq!(r["lr"], 0.1);
    assert_eq!(r["ckpt_sha256"].as_str().unwrap(), lewel::eval::results::sha256_file(&ck).unwrap());
    assert_eq!(std::fs::read_to_string(&results).unwrap().lines().count(), 1);

    // Run again: skipped, nothing appended, exit 0.
    let o = run_tool(BIN, &args);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = json_lines(&o.stdout);
    assert_eq!(of_kind(&ev, "skip").len(), 1);
    assert_eq!(of_kind(&ev, "result").len(), 0);
    assert_eq!(std::fs::read_to_string(&results).unwrap().lines().count(), 1);

    // --normalize needs cached features.
    let o = run_tool(BIN, &[&args[..], &["--normalize"]].concat());
    assert_eq!(o.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&d);
}

/// Every kind of bad file (RELIABILITY.md) in the training and the validation data is named in a `warn` event
/// and the probe finishes; --strict fails naming one.
#[test]
fn every_kind_of_bad_file_is_reported_or_fatal_with_strict() {
    let d = scratch("bad-kinds");
    let ck = lewel::testing::tiny_checkpoint(&d.join("ckpt"), true);
    let bad = lewel::testing::bad_data(&d.join("train"));
    let val = lewel::testing::bad_data(&d.join("val"));
    std::fs::copy(val.dir.join("a/good-0.png"), val.dir.join("a/good-9.png")).unwrap(); // a split of its own
    let run = |strict: bool| {
        let mut c = std::process::Command::new(BIN);
        c.args(["--ckpt", s(&ck), "--train-data", s(&bad.dir), "--val-data", s(&val.dir), "--threads", "1", "-q"]);
        if BIN.ends_with("linear-probe") {
            c.args(["--epochs", "2", "--milestones", "1", "--batch-size", "4"]);
        }
        if strict {
            c.arg("--strict");
        }
        bad.run(&mut c)
    };
    let (o, expected) = run(false);
    bad.assert_skipped_and_reported("linear-probe", &o, &expected);
    let same_kind = |p: &std::path::PathBuf| expected.iter().any(|e| e.file_name() == p.file_name());
    let val_expected: Vec<std::path::PathBuf> = val.bad.iter().map(|b| b.0.clone()).filter(same_kind).collect();
    val.assert_skipped_and_reported("linear-probe", &o, &val_expected);
    assert_eq!(of_kind(&json_lines(&o.stdout), "result").len(), 1);
    let (o, _) = run(true);
    let line = if BIN.ends_with("linear-probe") {
        val.assert_strict_fails("linear-probe", &o, true)
    } else {
        bad.assert_strict_fails("linear-probe", &o, true)
    };
    eprintln!("{line}");
    let _ = std::fs::remove_dir_all(&d);
}
