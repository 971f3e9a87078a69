//! Black-box tests of `knn-probe --ckpt`: the same numbers as on `embed` features, `--results`
//! skip/append (run twice, a checkpoint appearing mid-way, half-written ones), and bad checkpoints.

use std::path::Path;

use lewel::data::DataSpec;
use lewel::embed::EmbedConfig;
use lewel::events::MemorySink;
use lewel_testkit::scratch;
use lewel_testkit::{json_lines, run_tool};
use serde_json::Value;

#[path = "../../../fixtures/probe/tiny_ckpt.rs"]
mod tiny_ckpt;

const BIN: &str = env!("CARGO_BIN_EXE_knn-probe");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn of_kind<'a>(ev: &'a [Value], kind: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["event"] == kind).collect()
}

fn ok(o: &std::process::Output) -> Vec<Value> {
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    json_lines(&o.stdout)
}

fn embed(ck: &Path, data: &str, out: &Path) {
    let cfg = EmbedConfig {
        ckpt: ck.to_path_buf(),
        data: DataSpec::new(data),
        recipe: None,
        sets: vec![],
        out: out.to_path_buf(),
        batch_size: 64,
        threads: 1,
        device: tch::Device::Cpu,
    };
    lewel::embed::run(&cfg, &mut MemorySink::default(), &mut |_, _| {}).unwrap();
}

#[test]
fn knn_from_a_checkpoint_equals_knn_on_embed_features() {
    let d = scratch("equal");
    let ck = tiny_ckpt::save(&d.join("ckpt"), 1, 3, 1);
    let (train, val) = tiny_ckpt::fmnist();
    embed(&ck, &train, &d.join("train.npy"));
    embed(&ck, &val, &d.join("val.npy"));
    let common = ["--k", "5,20", "--temperature", "0.07,0.5", "--device", "cpu", "-q"];
    let a = ok(&run_tool(
        BIN,
        &[&["--train-features", s(&d.join("train.npy")), "--val-features", s(&d.join("val.npy"))][..], &common]
            .concat(),
    ));
    let b = ok(&run_tool(
        BIN,
        &[&["--ckpt", s(&ck), "--train-data", &train, "--val-data", &val, "--threads", "1"][..], &common].concat(),
    ));
    let pts = |ev: &[Value]| -> Vec<(Value, Value, Value, Value)> {
        of_kind(ev, "eval")
            .iter()
            .map(|e| (e["k"].clone(), e["temperature"].clone(), e["top1_pct"].clone(), e["top5_pct"].clone()))
            .collect()
    };
    assert_eq!(pts(&a).len(), 4);
    assert_eq!(pts(&a), pts(&b));
    // The result line traces the protocol.
    let r = of_kind(&b, "result");
    assert_eq!(r.len(), 1);
    let r = r[0];
    assert_eq!(r["ckpt_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(r["ckpt_step"], 1);
    assert_eq!((r["n_train"].as_u64(), r["n_val"].as_u64()), (Some(200), Some(100)));
    assert!(r["train_fingerprint"].as_str().unwrap().starts_with("idx:200:"), "{r}");
    assert_eq!((r["k"].as_str(), r["temperature"].as_str()), (Some("5,20"), Some("0.07,0.5")));
    assert_eq!((r["eval_resize_used_px"].as_u64(), r["eval_crop_used_px"].as_u64()), (Some(32), Some(32)));
    assert_eq!(r["top1_pct_k20_t0.07"], of_kind(&b, "eval")[2]["top1_pct"]);
    assert!(r["best_top1_pct"].as_f64().unwrap() > 20.0, "{r}"); // chance: 10%
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn results_file_skips_what_it_holds_and_appends_new_checkpoints() {
    let d = scratch("cron");
    let ckdir = d.join("run").join("ckpt");
    tiny_ckpt::save(&ckdir, 1, 3, 1);
    let (train, val) = tiny_ckpt::fmnist();
    let results = d.join("results.jsonl");
    let rundir = d.join("run");
    let run = || {
        let args = ["--ckpt", s(&rundir), "--train-data", &train, "--val-data", &val, "--k", "20"];
        ok(&run_tool(BIN, &[&args[..], &["--results", s(&results), "--device", "cpu", "-q"]].concat()))
    };
    let lines = || std::fs::read_to_string(&results).unwrap().lines().map(|l| l.to_string()).collect::<Vec<_>>();
    let ev = run();
    assert_eq!(of_kind(&ev, "result").len(), 1);
    assert_eq!(lines().len(), 1);
    let first: Value = serde_json::from_str(&lines()[0]).unwrap();
    assert_eq!(&first, of_kind(&ev, "result")[0]);

    // Twice: nothing to do, exit 0.
    let ev = run();
    assert_eq!(of_kind(&ev, "result").len(), 0);
    assert_eq!(of_kind(&ev, "skip").len(), 1);
    assert_eq!(lines().len(), 1);

    // A checkpoint appears, plus a half-written one (no sidecar) and a damaged one (wrong sha256).
    tiny_ckpt::save(&ckdir, 2, 4, 1);
    let p3 = tiny_ckpt::save(&ckdir, 3, 5, 1);
    std::fs::remove_file(lewel::ckpt::sidecar_path(&p3)).unwrap();
    let p4 = tiny_ckpt::save(&ckdir, 4, 6, 1);
    let mut bytes = std::fs::read(&p4).unwrap();
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&p4, bytes).unwrap();
    let ev = run();
    let res = of_kind(&ev, "result");
    assert_eq!(res.len(), 1, "{ev:?}");
    assert_eq!(res[0]["ckpt_step"], 2);
    assert_eq!(of_kind(&ev, "skip").len(), 1);
    let warns: Vec<String> = of_kind(&ev, "warn").iter().map(|w| w["message"].to_string()).collect();
    assert!(warns.iter().any(|w| w.contains("step-00000003") && w.contains("no sidecar")), "{warns:?}");
    assert!(warns.iter().any(|w| w.contains("step-00000004") && w.contains("does not match")), "{warns:?}");
    let l = lines();
    assert_eq!(l.len(), 2);
    let keys: Vec<(Value, Value)> = l
        .iter()
        .map(|x| serde_json::from_str::<Value>(x).unwrap())
        .map(|v| (v["ckpt_sha256"].clone(), v["protocol_hash"].clone()))
        .collect();
    assert_ne!(keys[0].0, keys[1].0);
    assert_eq!(keys[0].1, keys[1].1);

    // Another protocol (k) is another result for the same checkpoints.
    let args = ["--ckpt", s(&ckdir), "--train-data", &train, "--val-data", &val, "--k", "10"];
    let ev = ok(&run_tool(BIN, &[&args[..], &["--results", s(&results), "--device", "cpu", "-q"]].concat()));
    assert_eq!(of_kind(&ev, "result").len(), 2);
    assert_eq!(lines().len(), 4);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_checkpoints_and_classes_fail_clearly() {
    let d = scratch("bad");
    let (train, val) = tiny_ckpt::fmnist();
    // A safetensors file without a backbone.
    let nb = d.join("nobackbone.safetensors");
    let t = vec![("head.weight".to_string(), tch::Tensor::from_slice(&[1f32, 2.0]))];
    std::fs::write(&nb, lewel::ckpt::to_safetensors_bytes(&t, None).unwrap()).unwrap();
    let o = run_tool(BIN, &["--ckpt", s(&nb), "--train-data", &train, "--val-data", &val, "--device", "cpu", "-q"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no ResNet backbone") && err.contains("nobackbone.safetensors"), "{err}");
    // Val labels outside the training classes.
    let (a, b) = (d.join("a.npy"), d.join("b.npy"));
    lewel::eval::features::write_f32_matrix(&a, 4, 2, &[1., 0., 0., 1., 1., 1., 0., 0.5]).unwrap();
    lewel::eval::features::write_labels(&d.join("a.labels.npy"), &[0, 1, 2, 1]).unwrap();
    lewel::eval::features::write_f32_matrix(&b, 2, 2, &[1., 0.2, 0.3, 1.]).unwrap();
    lewel::eval::features::write_labels(&d.join("b.labels.npy"), &[0, 7]).unwrap();
    let o = run_tool(BIN, &["--train-features", s(&a), "--val-features", s(&b), "-q"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("class count mismatch") && err.contains("label 7"), "{err}");
    // Same data for both splits.
    let o = run_tool(BIN, &["--ckpt", s(&nb), "--train-data", &train, "--val-data", &train, "-q"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&d);
}

/// Every kind of bad file (RELIABILITY.md) in the training and the validation data is named in a `warn` event
/// and the probe finishes; --strict fails naming one.
#[test]
fn every_kind_of_bad_file_is_reported_or_fatal_with_strict() {
    let d = scratch("bad-kinds");
    lewel_testkit::check_probe_bad_data(BIN, "knn-probe", &d);
    let _ = std::fs::remove_dir_all(&d);
}
