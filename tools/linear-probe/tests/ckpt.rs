//! Black-box tests of `linear-probe --ckpt`: the paper's protocol on the fly (augmented training
//! crops through the frozen backbone) on the Fashion-MNIST fixture, and `--results` skipping.

use std::path::Path;

use lewel_testkit::scratch;
use lewel_testkit::{json_lines, run_tool};
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
    lewel_testkit::check_probe_bad_data(BIN, "linear-probe", &d);
    let _ = std::fs::remove_dir_all(&d);
}

/// Cron-style use (RELIABILITY.md): two `linear-probe --ckpt RUN --results FILE` loops race each other over a
/// run folder while `pretrain` writes a checkpoint every step (each write slowed down by `LEWEL_FAULT=slow-write`)
/// and prunes all but the newest two. Every probe
/// exits 0, every result is of a complete checkpoint (its sha256 is that of the same step of an uninterrupted
/// run), and no (checkpoint, protocol) has two result lines.
///
/// Needs the `pretrain` binary next to this one (`cargo build --workspace`, as `make test` does first).
#[test]
fn cron_probes_racing_a_live_run_read_no_partial_file_and_write_no_duplicate() {
    use std::collections::{HashMap, HashSet};
    use std::process::{Command, Stdio};
    let pretrain = Path::new(BIN).with_file_name("pretrain");
    assert!(pretrain.is_file(), "{} is missing: build the workspace first (make test does)", pretrain.display());
    let d = scratch("cron");
    let views = d.join("views.npy");
    lewel_testkit::write_npy_f32(&views, &[8, 2, 3, 32, 32], &lewel_testkit::test_values(8 * 2 * 3 * 32 * 32, 4));
    let train_args = |out: &Path, keep: &str| {
        let mut c = Command::new(&pretrain);
        c.args(["--views", s(&views), "--preset", "small-lewelb", "--width", "4", "--proj-dim", "16"])
            .args(["--hidden-dim", "32", "--batch-size", "4", "--epochs", "15", "--warmup-epochs", "1"])
            .args(["--ckpt-every-steps", "1", "--keep-last", keep, "--device", "cpu", "--quiet", "--out", s(out)])
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::null());
        c
    };
    // The uninterrupted run, all checkpoints kept: the sha256 of each step.
    let o = train_args(&d.join("reference"), "1000").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let shas: HashMap<u64, String> = lewel::ckpt::list(&d.join("reference/ckpt"))
        .unwrap()
        .into_iter()
        .map(|(step, p)| (step, lewel::ckpt::read_sidecar(&p).unwrap().1))
        .collect();
    assert_eq!(shas.len(), 30);

    let run = d.join("live");
    let results = d.join("results.jsonl");
    let (train, val) = tiny_ckpt::fmnist();
    let probe = |n: usize| {
        let (run, results, train, val) = (run.clone(), results.clone(), train.clone(), val.clone());
        move || {
            let o = Command::new(BIN)
                .args(["--ckpt", s(&run), "--train-data", &train, "--val-data", &val, "--results", s(&results)])
                .args(["--epochs", "1", "--schedule", "cosine", "--batch-size", "64", "--threads", "1", "-q"])
                .args(["--embed-batch-size", "100", "--device", "cpu"])
                .env("OMP_NUM_THREADS", "1")
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(0), "probe {n}: {}", String::from_utf8_lossy(&o.stderr));
            json_lines(&o.stdout)
        }
    };
    // each write slowed down: a checkpoint sits for a while without its sidecar, as on a slow disk
    let mut live = train_args(&run, "2").env(lewel::fault::VAR, "slow-write=20").spawn().unwrap();
    while !run.join("ckpt").is_dir() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut runs = 0;
    let mut events = Vec::new();
    loop {
        let done = live.try_wait().unwrap().is_some();
        // two cron jobs at once, racing for the same checkpoints
        let (a, b) = (std::thread::spawn(probe(runs)), std::thread::spawn(probe(runs + 1)));
        events.extend(a.join().unwrap());
        events.extend(b.join().unwrap());
        runs += 2;
        if done {
            break;
        }
    }
    assert_eq!(live.wait().unwrap().code(), Some(0));

    let lines: Vec<Value> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a torn result line ({e}): {l}")))
        .collect();
    let mut keys = HashSet::new();
    for r in &lines {
        let (sha, step) = (r["ckpt_sha256"].as_str().unwrap(), r["ckpt_step"].as_u64().unwrap());
        assert_eq!(Some(sha), shas.get(&step).map(String::as_str), "step {step}: a result of a partial checkpoint");
        assert!(keys.insert((sha.to_string(), r["protocol_hash"].to_string())), "a duplicate result line: {r}");
    }
    assert!(!lines.is_empty());
    let warns: Vec<&str> = of_kind(&events, "warn").iter().map(|w| w["message"].as_str().unwrap()).collect();
    let pruned = warns.iter().filter(|w| w.contains("pruned by its run")).count();
    let skips = of_kind(&events, "skip").len();
    eprintln!(
        "RELIABILITY cron: {runs} probe runs (two at a time) raced a live run writing 30 checkpoints (2 kept): {} results, \
         no duplicate, all of complete checkpoints; {skips} skips (already in --results), {pruned} checkpoints pruned \
         between listing and reading, {} checkpoints skipped while being written",
        lines.len(),
        warns.len() - pruned
    );
    let _ = std::fs::remove_dir_all(&d);
}
