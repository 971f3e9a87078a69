//! The online kNN monitor of `pretrain` (`--knn-every`): `eval` events from the loop's periodic evaluation.

mod common;

use lewel_testkit::scratch;
use lewel_testkit::{json_lines, run_tool};
use serde_json::Value;

use common::BIN;
const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

fn args<'a>(train: &'a str, val: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut a = vec![train];
    a.extend(common::TINY_MODEL);
    a.extend([
        "--batch-size",
        "50",
        "--epochs",
        "3",
        "--warmup-epochs",
        "1",
        "--lr",
        "0.1",
        "--log-every",
        "0",
        "--device",
        "cpu",
        "--threads",
        "2",
        "-q",
        "--knn-every",
        "2",
        "--knn-train",
        train,
        "--knn-val",
        val,
        "--out",
        out,
    ]);
    a
}

#[test]
fn monitor_emits_eval_events_with_sane_accuracies() {
    let d = scratch("run");
    let train = format!("{FIX}/fashion-mnist-tiny/train-images-idx3-ubyte");
    let val = format!("{FIX}/fashion-mnist-tiny/t10k-images-idx3-ubyte");
    let out = d.join("run");
    let o = run_tool(BIN, &args(&train, &val, out.to_str().unwrap()));
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = json_lines(&o.stdout);
    let evals: Vec<&Value> = ev.iter().filter(|e| e["event"] == "eval").collect();
    // After epoch 2 (index 1) and after the last (index 2).
    assert_eq!(evals.iter().map(|e| e["epoch"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2]);
    for e in &evals {
        assert_eq!(e["tool"], "pretrain");
        assert_eq!(e["k"], 20);
        assert_eq!(e["n_train"], 200);
        assert_eq!(e["n_val"], 100);
        let (t1, t5) = (e["knn_top1_pct"].as_f64().unwrap(), e["knn_top5_pct"].as_f64().unwrap());
        // 10 classes: chance is 10%; even a barely trained backbone's kNN does much better on Fashion-MNIST.
        assert!(t1 > 20.0 && t1 <= t5 && t5 <= 100.0, "{e}");
        assert!(e["step"].as_u64().unwrap() > 0);
    }
    // The evaluations travel with the checkpoints.
    let side = lewel::ckpt::read_sidecar(&lewel::ckpt::resolve(&out).unwrap()).unwrap().0;
    assert_eq!(side.info["evals"].as_array().unwrap().len(), 2);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn same_data_for_memory_and_queries_is_refused() {
    let d = scratch("same");
    let train = format!("{FIX}/fashion-mnist-tiny/train-images-idx3-ubyte");
    let out = d.join("run");
    let o = run_tool(BIN, &args(&train, &train, out.to_str().unwrap()));
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("same data"));
    assert!(!out.join("config.json").exists());
    std::fs::remove_dir_all(&d).unwrap();
}
