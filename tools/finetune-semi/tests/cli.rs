//! Black-box tests of `finetune-semi` on the Fashion-MNIST fixtures with a tiny checkpoint.

use std::path::{Path, PathBuf};
use std::process::Output;

use lewel_testkit::scratch;
use lewel_testkit::{check_help, json_lines, run_tool};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_finetune-semi");
const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

/// A tiny CIFAR-stem pre-training checkpoint.
fn checkpoint(dir: &Path) -> PathBuf {
    lewel_testkit::tiny_checkpoint(&dir.join("pre"), false)
}

fn train() -> String {
    format!("{FIX}/fashion-mnist-tiny/train-images-idx3-ubyte")
}
fn val() -> String {
    format!("{FIX}/fashion-mnist-tiny/t10k-images-idx3-ubyte")
}

fn semi(ck: &Path, out: &Path, extra: &[&str]) -> Output {
    let (t, v) = (train(), val());
    let mut a = vec![
        "--ckpt",
        ck.to_str().unwrap(),
        "--train-data",
        &t,
        "--val-data",
        &v,
        "--preset",
        "semi-small",
        "--epochs",
        "3",
        "--milestones",
        "2",
        "--batch-size",
        "16",
        "--eval-every",
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

fn ok(out: &Output) -> Vec<Value> {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    json_lines(&out.stdout)
}

fn steps(events: &[Value]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| (e["step"].as_u64().unwrap(), format!("{} {} {}", e["loss"], e["lr"], e["lr_classifier"])))
        .collect()
}

#[test]
fn help_lists_exit_codes_and_an_example() {
    check_help(BIN, "finetune-semi --ckpt");
}

#[test]
fn fraction_run_writes_subset_result_and_a_checkpoint_embed_reads() {
    let d = scratch("e2e");
    let ck = checkpoint(&d);
    let run = d.join("run");
    let ev = ok(&semi(&ck, &run, &["--fraction", "0.25", "--seed", "5"]));
    let kinds: Vec<&str> = ev.iter().map(|e| e["event"].as_str().unwrap()).collect();
    for k in ["start", "step", "epoch", "eval", "checkpoint", "end"] {
        assert!(kinds.contains(&k), "no {k} event: {kinds:?}");
    }
    // Evaluations after epoch 2 (index 1) and after the last (index 2).
    let evals: Vec<&Value> = ev.iter().filter(|e| e["event"] == "eval").collect();
    assert_eq!(evals.iter().map(|e| e["epoch"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2]);
    for e in &evals {
        let t1 = e["top1_pct"].as_f64().unwrap();
        let t5 = e["top5_pct"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&t1) && t1 <= t5 && t5 <= 100.0, "{e}");
        assert_eq!(e["n_val"], 100);
    }
    // Two learning rates, both decayed x0.1 from epoch 2 (milestone 2).
    let st: Vec<&Value> = ev.iter().filter(|e| e["event"] == "step").collect();
    assert_eq!(st[0]["lr"].as_f64().unwrap(), 0.01);
    assert_eq!(st[0]["lr_classifier"].as_f64().unwrap(), 0.1);
    let last = st.last().unwrap();
    assert_eq!(last["epoch"], 2);
    assert!((last["lr"].as_f64().unwrap() - 0.001).abs() < 1e-12);
    assert!((last["lr_classifier"].as_f64().unwrap() - 0.01).abs() < 1e-12);

    // subset.txt: stratified, per class max(1, round(0.25 n_c)) of the 200 training items, `<label> <index>`.
    let text = std::fs::read_to_string(run.join("subset.txt")).unwrap();
    let rows: Vec<(i64, usize)> = text
        .lines()
        .map(|l| {
            let mut p = l.split(' ');
            (p.next().unwrap().parse().unwrap(), p.next().unwrap().parse().unwrap())
        })
        .collect();
    let data = lewel::data::open(&lewel::data::DataSpec::new(train())).unwrap();
    let mut per = std::collections::BTreeMap::<i64, usize>::new();
    for i in 0..data.len() {
        *per.entry(data.label(i).unwrap()).or_default() += 1;
    }
    let want: usize = per.values().map(|&n| ((0.25 * n as f64).round() as usize).clamp(1, n)).sum();
    assert_eq!(rows.len(), want);
    for (l, i) in &rows {
        assert_eq!(data.label(*i), Some(*l));
    }

    // result.json: the protocol, final and best, labelled.
    let r: Value = serde_json::from_str(&std::fs::read_to_string(run.join("result.json")).unwrap()).unwrap();
    assert_eq!(r["tool"], "finetune-semi");
    assert_eq!(r["best_is_optimistic"], true);
    assert_eq!(r["best_chosen_on"], "val");
    assert_eq!(r["final_epoch"], 2);
    assert_eq!(r["final_top1_pct"], evals[1]["top1_pct"]);
    assert!(r["best_top1_pct"].as_f64().unwrap() >= r["final_top1_pct"].as_f64().unwrap());
    assert_eq!(r["protocol"]["lr_backbone"], 0.01);
    assert_eq!(r["protocol"]["weight_decay"], 0.0001);
    assert_eq!(r["protocol"]["subset"]["kind"], "fraction");
    assert_eq!(r["subset_images"], want);
    assert_eq!(r["evals"].as_array().unwrap().len(), 2);

    // The fine-tuned checkpoint opens like any other: embed, and export-backbone to torchvision .pth.
    let mut sink = lewel::events::MemorySink::default();
    let m = lewel::embed::open_model(&run, tch::Device::Cpu, "test", &mut sink).unwrap();
    assert_eq!(m.kind, "lewel");
    let x = tch::Tensor::zeros([2, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    assert_eq!(m.model.features(&x).unwrap().size(), [2, 32]);
    let pre = lewel::embed::open_model(&ck, tch::Device::Cpu, "test", &mut sink).unwrap();
    assert!(!pre.model.features(&x).unwrap().equal(&m.model.features(&x).unwrap()), "the backbone did not change");
    let loaded = lewel::ckpt::load_verified(&lewel::ckpt::resolve(&run).unwrap()).unwrap();
    assert_eq!(loaded.tensors["fc.weight"].size(), [10, 32]);
    assert!(
        loaded.tensors.contains_key("optimizer.momentum_buffer.online_net.backbone.bn1.weight"),
        "wd/momentum on BN"
    );
    let pth = d.join("backbone.pth");
    let cfg = lewel::export::ExportConfig {
        ckpt: run.clone(),
        from: lewel::export::Source::Auto,
        format: lewel::export::Format::Pth,
        out: pth.clone(),
        verify: true,
        groups: None,
        proj_dim: None,
        hidden_dim: None,
        seed: 0,
    };
    lewel::export::run(&cfg, &mut sink).unwrap();
    assert!(pth.is_file());

    // The subset file is reusable: the same items, hence the same first loss.
    let again = ok(&semi(
        &ck,
        &d.join("again"),
        &["--subset", run.join("subset.txt").to_str().unwrap(), "--seed", "5", "--max-steps", "1"],
    ));
    assert_eq!(steps(&again)[0], steps(&ev)[0]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn resume_is_bit_exact() {
    let d = scratch("resume");
    let ck = checkpoint(&d);
    let full = ok(&semi(&ck, &d.join("a"), &["--fraction", "0.3"]));
    let b = d.join("b");
    let first = ok(&semi(&ck, &b, &["--fraction", "0.3", "--max-steps", "4"]));
    let rest = ok(&run_tool(
        BIN,
        &["--resume", b.to_str().unwrap(), "-q", "--device", "cpu", "--threads", "1", "--log-every", "1"],
    ));
    let mut joined = steps(&first);
    joined.extend(steps(&rest));
    assert_eq!(joined, steps(&full));
    let evals = |ev: &[Value]| -> Vec<String> {
        ev.iter().filter(|e| e["event"] == "eval").map(|e| format!("{} {}", e["epoch"], e["top1_pct"])).collect()
    };
    assert_eq!(evals(&rest), evals(&full));
    let ra: Value = serde_json::from_str(&std::fs::read_to_string(d.join("a/result.json")).unwrap()).unwrap();
    let rb: Value = serde_json::from_str(&std::fs::read_to_string(b.join("result.json")).unwrap()).unwrap();
    assert_eq!(ra["evals"], rb["evals"]);
    // Flags that change the run are refused on resume.
    let bad = run_tool(BIN, &["--resume", b.to_str().unwrap(), "--epochs", "9", "-q"]);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    std::fs::remove_dir_all(&d).unwrap();
}

/// A SimCLR-style list (bare names, CRLF, no final newline) resolved under an ImageFolder --root.
#[test]
fn simclr_list_resolves_under_root() {
    let d = scratch("list");
    let ck = checkpoint(&d);
    let root = d.join("train");
    let photos = ["astronaut", "camera", "chelsea", "coffee", "hubble", "rocket"];
    let mut names = Vec::new();
    for (i, p) in photos.iter().enumerate() {
        let syn = if i % 2 == 0 { "n01000000" } else { "n02000000" };
        std::fs::create_dir_all(root.join(syn)).unwrap();
        let name = format!("{syn}_{i}.png");
        std::fs::copy(format!("{FIX}/photos-96/{p}.png"), root.join(syn).join(&name)).unwrap();
        if i < 4 {
            names.push(name);
        }
    }
    let list = d.join("1percent.txt");
    std::fs::write(&list, names.join("\r\n")).unwrap();
    let run = d.join("run");
    let r = root.to_str().unwrap();
    let out = run_tool(
        BIN,
        &[
            "--ckpt",
            ck.to_str().unwrap(),
            "--train-data",
            r,
            "--subset",
            list.to_str().unwrap(),
            "--val-data",
            r,
            "--preset",
            "semi-small",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--eval-every",
            "1",
            "--device",
            "cpu",
            "-q",
            "--log-every",
            "1",
            "--out",
            run.to_str().unwrap(),
        ],
    );
    let ev = ok(&out);
    let text = std::fs::read_to_string(run.join("subset.txt")).unwrap();
    assert_eq!(text, "0 n01000000/n01000000_0.png\n1 n02000000/n02000000_1.png\n0 n01000000/n01000000_2.png\n1 n02000000/n02000000_3.png\n");
    assert_eq!(ev.iter().filter(|e| e["event"] == "step").count(), 2);
    // The written list reads back as the same items (`<label> <relpath>` under --root).
    let again = lewel::data::dataset::FileList::from_list(&run.join("subset.txt"), Some(&root)).unwrap();
    assert_eq!(lewel::data::Dataset::len(&again), 4);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_inputs_fail_clearly() {
    let d = scratch("bad");
    let ck = checkpoint(&d);
    let out = semi(&ck, &d.join("r1"), &["--fraction", "1.5"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fraction"));
    let out = semi(&ck, &d.join("r2"), &["--preset", "semi-2pct"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run_tool(BIN, &["--train-data", "x", "--val-data", "y", "--out", "z"]);
    assert_eq!(out.status.code(), Some(2));
    // a start refused after the folder was made (no such checkpoint) keeps nothing: the corrected command runs
    let r3 = d.join("r3");
    let out = semi(&d.join("no-such-run"), &r3, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nothing was kept") && !r3.exists(), "{err}");
    ok(&semi(&ck, &r3, &["--epochs", "1", "--milestones", "1", "--eval-every", "1"]));
    // ... and then it holds a run: a second start is refused, pointing at --resume
    let out = semi(&ck, &r3, &["--epochs", "1", "--milestones", "1", "--eval-every", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && err.contains("already holds a run") && err.contains("--resume"), "{err}");
    // a start killed before its first step (its config.json, no checkpoint, no step) is not a run: replaced
    let r4 = d.join("r4");
    std::fs::create_dir_all(r4.join("ckpt")).unwrap();
    std::fs::copy(r3.join("config.json"), r4.join("config.json")).unwrap();
    let out = semi(&ck, &r4, &["--epochs", "1", "--milestones", "1", "--eval-every", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("never reached its first step"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Every kind of bad file (RELIABILITY.md) in the training and the validation data is skipped and named in a
/// `warn` event; --strict fails naming one.
#[test]
fn every_kind_of_bad_file_is_skipped_and_reported_or_fatal_with_strict() {
    let d = scratch("bad-kinds");
    let ck = checkpoint(&d);
    let bad = lewel_testkit::bad_data(&d.join("train"));
    let val = lewel_testkit::bad_data(&d.join("val"));
    std::fs::copy(val.dir.join("a/good-0.png"), val.dir.join("a/good-9.png")).unwrap(); // a split of its own
    let run = |out: &str, strict: bool| {
        let mut c = std::process::Command::new(BIN);
        c.args(["--ckpt", ck.to_str().unwrap(), "--train-data", bad.dir.to_str().unwrap()])
            .args(["--val-data", val.dir.to_str().unwrap(), "--fraction", "1", "--preset", "semi-small"])
            .args(["--epochs", "2", "--batch-size", "4", "--device", "cpu", "-q"])
            .args(["--out", d.join(out).to_str().unwrap()]);
        if strict {
            c.arg("--strict");
        }
        bad.run(&mut c)
    };
    let (o, expected) = run("run", false);
    bad.assert_skipped_and_reported("finetune-semi", &o, &expected);
    // the same kinds of bad file in the validation data (the unreadable one only where it is unreadable)
    let same_kind = |p: &PathBuf| expected.iter().any(|e| e.file_name() == p.file_name());
    let val_expected: Vec<PathBuf> = val.bad.iter().map(|b| b.0.clone()).filter(same_kind).collect();
    val.assert_skipped_and_reported("finetune-semi", &o, &val_expected);
    let (o, _) = run("strict", true);
    bad.assert_strict_fails("finetune-semi", &o, false);
    let _ = std::fs::remove_dir_all(&d);
}
