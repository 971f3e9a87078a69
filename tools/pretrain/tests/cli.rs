//! Black-box tests of `pretrain` on tiny models (ResNet-18 width 4, 32 px, a few steps).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use lewel_testkit::scratch;
use lewel_testkit::{check_help, json_lines, test_values, write_npy_f32};
use serde_json::Value;

use common::BIN;

fn views(dir: &Path) -> PathBuf {
    common::views_n(dir, 8, 1)
}

fn tiny_args() -> Vec<&'static str> {
    common::tiny(&["--batch-size", "4", "--epochs", "3"])
}

fn pretrain(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn tiny(views: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut a: Vec<&str> = tiny_args();
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
                format!("{} {} {} {}", e["loss"], e["loss_global"], e["loss_aligned"], e["lr"]),
            )
        })
        .collect()
}

fn ok(out: &Output) -> Vec<Value> {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    json_lines(&out.stdout)
}

#[test]
fn help_lists_exit_codes_and_an_example() {
    check_help(BIN, "pretrain --views views.npy");
}

#[test]
fn same_seed_same_losses_and_a_complete_run_folder() {
    let d = scratch("det");
    let v = views(&d);
    let a = ok(&tiny(&v, &d.join("a"), &[]));
    let b = ok(&tiny(&v, &d.join("b"), &[]));
    let (sa, sb) = (steps(&a), steps(&b));
    assert_eq!(sa.len(), 6);
    assert_eq!(sa, sb);
    let kinds: Vec<&str> = a.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"start"));
    assert_eq!(kinds.last(), Some(&"end"));
    for e in &a {
        let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
        assert_eq!(&keys[..3], &["v", "tool", "event"]);
    }
    let step = a.iter().find(|e| e["event"] == "step").unwrap();
    for k in [
        "step",
        "epoch",
        "loss",
        "loss_global",
        "loss_aligned",
        "lr",
        "ema_momentum",
        "images_per_s",
        "data_wait_frac",
        "collapse_std",
    ] {
        assert!(step.get(k).is_some(), "step event lacks {k}");
    }
    let run = d.join("a");
    assert!(run.join("config.json").is_file());
    assert_eq!(std::fs::read_to_string(run.join("events.jsonl")).unwrap().lines().count(), a.len());
    let latest = std::fs::read_to_string(run.join("ckpt/latest")).unwrap();
    assert_eq!(latest.trim(), "step-00000006.safetensors");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn resume_is_bit_exact() {
    let d = scratch("resume");
    let v = views(&d);
    let full = steps(&ok(&tiny(&v, &d.join("full"), &[])));
    // Stop after step 3 (mid-epoch), then resume twice over.
    let first = ok(&tiny(&v, &d.join("part"), &["--max-steps", "3"]));
    assert_eq!(first.last().unwrap()["status"], "max-steps");
    let resumed = ok(&pretrain(&["--resume", d.join("part").to_str().unwrap(), "--log-every", "1", "--quiet"]));
    assert_eq!(resumed[0]["start_step"], 3);
    let mut got = steps(&first);
    got.extend(steps(&resumed));
    assert_eq!(got, full, "losses after resume differ from the uninterrupted run");
    // --max-steps 0 saves the initial weights (the random-initialisation baseline), and resuming from them is the
    // whole run
    let zero = ok(&tiny(&v, &d.join("zero"), &["--max-steps", "0"]));
    assert_eq!(
        (zero.last().unwrap()["status"].as_str(), zero.last().unwrap()["step"].as_u64()),
        (Some("max-steps"), Some(0))
    );
    assert!(d.join("zero/ckpt/step-00000000.safetensors").is_file());
    // no training at all is not a run stopped inside its warm-up: nothing to warn of
    assert!(zero.iter().all(|e| e["event"] != "warn"), "--max-steps 0 warned: {zero:?}");
    let from_zero = ok(&pretrain(&["--resume", d.join("zero").to_str().unwrap(), "--log-every", "1", "--quiet"]));
    assert_eq!(steps(&from_zero), full, "a run resumed from its --max-steps 0 checkpoint differs");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sigint_writes_a_checkpoint_and_exits_130() {
    let d = scratch("sigint");
    let v = views(&d);
    let out = d.join("run");
    let mut a: Vec<String> = tiny_args().iter().map(|s| s.to_string()).collect();
    a.extend(["--epochs", "500", "--views", v.to_str().unwrap(), "--out", out.to_str().unwrap()].map(String::from));
    let mut child = Command::new(BIN).args(&a).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait for the first step event, then interrupt.
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let l = lines.next().expect("pretrain ended before its first step").unwrap();
        if l.contains("\"event\":\"step\"") {
            break;
        }
    }
    unsafe { libc_kill(child.id() as i32, 2) };
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(rest.iter().any(|l| l.contains("\"event\":\"checkpoint\"")), "{rest:?}");
    assert!(rest.last().unwrap().contains("interrupted"));
    assert!(out.join("ckpt/latest").is_file());
    let _ = std::fs::remove_dir_all(&d);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn bad_inputs_fail_clearly() {
    let d = scratch("bad");
    let v = views(&d);
    // Wrong shape.
    let wrong = d.join("wrong.npy");
    write_npy_f32(&wrong, &[8, 3, 32, 32], &test_values(8 * 3 * 32 * 32, 2));
    let o = tiny(&wrong, &d.join("r1"), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected float32 [N,2,3,H,W]"));
    // Batch larger than the data.
    let o = tiny(&v, &d.join("r2"), &["--batch-size", "64"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--batch-size 64 is larger than the data set (8 images)"));
    // Unwritable output (below a regular file).
    let o = tiny(&v, &v.join("sub"), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("could not create"));
    // --init with keys that do not fit: all listed.
    let init = d.join("init.safetensors");
    lewel::fsio::write_bytes_atomic(
        &init,
        &lewel::ckpt::to_safetensors_bytes(
            &[("bogus.weight".into(), tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu)))],
            None,
        )
        .unwrap(),
    )
    .unwrap();
    let o = tiny(&v, &d.join("r3"), &["--init", init.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("missing keys")
            && err.contains("online_net.backbone.conv1.weight")
            && err.contains("bogus.weight"),
        "{err}"
    );
    // A resume that changes the configuration.
    ok(&tiny(&v, &d.join("r4"), &["--max-steps", "1"]));
    let o = pretrain(&["--resume", d.join("r4").to_str().unwrap(), "--lr", "0.5"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("lr: 0.1 -> 0.5"));
    // A second run into the same folder.
    let o = tiny(&v, &d.join("r4"), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already holds a run"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn lars_flags_are_checked_recorded_and_diagnosed() {
    let d = scratch("lars-flags");
    let v = views(&d);
    for (flags, want) in [
        (&["--lars-eta", "0"][..], "--lars-eta"),
        (&["--lars-eta", "-1"][..], "--lars-eta"),
        (&["--lars-eta", "nan"][..], "--lars-eta"),
        (&["--lars-clip=maybe"][..], "--lars-clip"),
        (&["--optimizer", "sgd", "--lars-eta", "0.02"][..], "--lars-eta and --lars-clip apply to --optimizer lars"),
    ] {
        let o = tiny(&v, &d.join("bad"), flags);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains(want), "{flags:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(!d.join("bad").join("config.json").exists(), "{flags:?}");
    }
    // recorded in the configuration, and the step events carry the diagnostics
    let run = d.join("ok");
    let ev = ok(&tiny(&v, &run, &["--lars-eta", "0.02", "--lars-clip", "--max-steps", "2", "--log-every", "1"]));
    let cfg: Value = serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (cfg["pretrain"]["optim"]["eta"].as_f64(), cfg["pretrain"]["optim"]["clip"].as_bool()),
        (Some(0.02), Some(true))
    );
    let step = ev.iter().find(|e| e["event"] == "step").unwrap();
    for k in ["collapse_std", "target_collapse_std", "update_ratio_median", "update_ratio_min", "map_entropy_ratio"] {
        let x = step[k].as_f64().unwrap_or(-1.0);
        assert!(x > 0.0 && x <= 1.0, "{k}: {step}");
    }
    assert!(step["update_ratio_min"].as_f64() <= step["update_ratio_median"].as_f64());
    // the clipped step moves the weights faster than the unclipped one at eta 0.02 (lr 0.1: min(local, lr) > local·lr)
    let plain = ok(&tiny(
        &v,
        &d.join("plain"),
        &["--lars-eta", "0.02", "--lars-clip=false", "--max-steps", "2", "--log-every", "1"],
    ));
    let ratio =
        |ev: &[Value]| ev.iter().rfind(|e| e["event"] == "step").unwrap()["update_ratio_median"].as_f64().unwrap();
    assert!(ratio(&ev) > 2.0 * ratio(&plain), "{} vs {}", ratio(&ev), ratio(&plain));
    // BYOL has no maps
    let ev = ok(&tiny(&v, &d.join("byol"), &["--method", "byol", "--max-steps", "1", "--log-every", "1"]));
    assert!(ev.iter().find(|e| e["event"] == "step").unwrap().get("map_entropy_ratio").is_none());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn divergence_exits_3_and_keeps_the_last_checkpoint() {
    let d = scratch("diverge");
    let v = views(&d);
    let o = tiny(
        &v,
        &d.join("run"),
        &["--optimizer", "sgd", "--lr", "1e30", "--warmup-epochs", "0", "--ckpt-every-steps", "1"],
    );
    assert_eq!(o.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    let ev = json_lines(&o.stdout);
    let err = ev.iter().find(|e| e["event"] == "error").expect("an error event");
    assert!(err["step"].as_u64().is_some());
    // Whatever checkpoint exists verifies.
    if let Ok(p) = lewel::ckpt::resolve(&d.join("run/ckpt/latest")) {
        lewel::ckpt::load_verified(&p).unwrap();
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// On-the-fly augmentation of real images (Fashion-MNIST fixtures): a mid-epoch resume gives the
/// same losses as the uninterrupted run, whatever the number of data threads.
#[test]
fn data_input_resume_is_bit_exact_across_thread_counts() {
    let d = scratch("data");
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/fashion-mnist-tiny/train-images-idx3-ubyte");
    let run = |out: &Path, extra: &[&str]| {
        let mut a: Vec<&str> = vec![data];
        a.extend(tiny_args());
        a.extend(["--batch-size", "32", "--epochs", "2", "--out", out.to_str().unwrap()]);
        a.extend(extra);
        pretrain(&a)
    };
    let full = ok(&run(&d.join("full"), &["--threads", "1"]));
    assert_eq!(full[0]["input"], "data");
    assert!(full[0]["data_fingerprint"].is_string());
    let first = ok(&run(&d.join("part"), &["--threads", "2", "--max-steps", "4"]));
    let resumed =
        ok(&pretrain(&["--resume", d.join("part").to_str().unwrap(), "--threads", "3", "--log-every", "1", "--quiet"]));
    let mut got = steps(&first);
    got.extend(steps(&resumed));
    assert_eq!(got, steps(&full));
    assert_eq!(got.len(), 12);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_refused_start_names_the_preset_and_leaves_nothing_behind() {
    let d = scratch("refused-start");
    let v = views(&d);
    let (vs, out) = (v.to_str().unwrap(), d.join("run"));
    let o = out.to_str().unwrap();
    let base = ["--views", vs, "--out", o, "--width", "4", "--proj-dim", "16", "--hidden-dim", "32", "--quiet"];
    let run = |extra: &[&str]| pretrain(&[&base[..], extra].concat());
    // a BN split the user never chose: the message names the preset, the flag and the ways out
    for (extra, want) in [
        (&["--batch-size", "6"][..], "the default preset in1k-lewelb-eman-200ep sets --bn-splits 8"),
        (&["--preset", "small-lewelm", "--batch-size", "6"][..], "the preset small-lewelm sets --bn-splits 8"),
        (&["--bn-splits", "4", "--batch-size", "6"][..], "--batch-size 6 is not a multiple of --bn-splits 4"),
    ] {
        let r = run(extra);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want) && err.contains("give --bn-splits 1, or a --batch-size divisible by"), "{err}");
        assert!(!out.exists(), "{extra:?}: a refused start made {o}");
    }
    // refused after the folder was made (the queue against the data): nothing is kept, in a folder of the user's
    // their own files stay, and the corrected command runs on the same --out
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let moco = ["--preset", "small-lewelm", "--bn-splits", "1", "--batch-size", "4", "--max-steps", "1"];
    let r = run(&moco);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("--queue-size 4096") && err.contains("nothing was kept"), "{err}");
    assert!(out.join("notes.txt").exists() && !out.join("config.json").exists() && !out.join("events.jsonl").exists());
    let r = run(&[&moco[..], &["--queue-size", "8"]].concat());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(out.join("ckpt/latest").exists());
    // a start killed before its first step (config.json and a start event, no checkpoint, no step) is not a run:
    // a new start replaces it, saying so; a folder that holds a step stays a run
    let killed = d.join("killed");
    std::fs::create_dir_all(killed.join("ckpt")).unwrap();
    std::fs::copy(out.join("config.json"), killed.join("config.json")).unwrap();
    std::fs::write(killed.join("events.jsonl"), "{\"v\":1,\"tool\":\"pretrain\",\"event\":\"start\"}\n").unwrap();
    let k = killed.to_str().unwrap();
    let again = |extra: &[&str]| {
        let mut a = base.to_vec();
        a[3] = k;
        pretrain(&[&a[..], &moco[..], &["--queue-size", "8"], extra].concat())
    };
    let r = again(&[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        r.status.success() && err.contains("never reached its first step") && err.contains("replacing it"),
        "{err}"
    );
    let r = again(&[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("already holds a run") && err.contains("--resume"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Every preset value that can clash with the data or another flag (the batch and the MoCo queue against the data,
/// the warm-up against the run's length) is refused with exit 2 naming where it came from (the chosen preset, the
/// default one, or the flag) and the flag to change, and the refused start leaves nothing behind.
#[test]
fn preset_values_that_clash_with_the_data_or_flags_name_their_source() {
    let d = scratch("preset-clash");
    let v = views(&d);
    let (vs, out) = (v.to_str().unwrap(), d.join("run"));
    let o = out.to_str().unwrap();
    let base = ["--views", vs, "--out", o, "--width", "4", "--proj-dim", "16", "--hidden-dim", "32", "--quiet"];
    let run = |extra: &[&str]| pretrain(&[&base[..], extra].concat());
    let small_moco = ["--preset", "small-lewelm", "--bn-splits", "1", "--batch-size", "4"];
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            small_moco.to_vec(),
            vec![
                "--queue-size 4096 (set by the preset small-lewelm) is larger than the data allows",
                "8 images",
                "give --queue-size 8 or less",
            ],
        ),
        (
            vec!["--method", "lewel-m", "--bn-splits", "1"],
            vec![
                "--batch-size 256 (set by the default preset in1k-lewelm-200ep) is larger than the data set (8 images)",
                "give --batch-size 8 or less",
            ],
        ),
        (
            vec!["--method", "lewel-m", "--bn-splits", "1", "--batch-size", "4"],
            vec!["--queue-size 65536 (set by the default preset in1k-lewelm-200ep)", "give --queue-size 8 or less"],
        ),
        (
            [&small_moco[..], &["--queue-size", "4"]].concat(),
            vec![
                "--queue-size 4 is smaller than the 8 keys one step enqueues (both views of --batch-size 4)",
                "give --queue-size 8 or more",
            ],
        ),
        (
            vec!["--preset", "small-lewelb", "--batch-size", "4", "--epochs", "1"],
            vec![
                "--warmup-epochs 1 (set by the preset small-lewelb) is not shorter than --epochs 1",
                "give --warmup-epochs 0 (no warm-up)",
            ],
        ),
        (
            vec!["--batch-size", "8", "--bn-splits", "1", "--epochs", "5"],
            vec![
                "--warmup-epochs 10 (set by the default preset in1k-lewelb-eman-200ep) is not shorter than --epochs 5",
                "give --warmup-epochs 4 or less",
            ],
        ),
        (
            vec!["--preset", "small-lewelb", "--batch-size", "4", "--warmup-epochs", "12"],
            vec![
                "--warmup-epochs 12 is not shorter than --epochs 10 (set by the preset small-lewelb)",
                "or more --epochs",
            ],
        ),
    ];
    for (extra, want) in &cases {
        let r = run(extra);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{extra:?}: {err}");
        assert!(want.iter().all(|w| err.contains(w)), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?}: a refused start left {o}");
    }
    // --max-steps inside the warm-up is a stop that a --resume continues: a warning, not a refusal
    let ev = ok(&run(&[
        "--preset",
        "small-lewelb",
        "--batch-size",
        "4",
        "--epochs",
        "3",
        "--warmup-epochs",
        "2",
        "--max-steps",
        "3",
    ]));
    let warns: Vec<&str> = ev.iter().filter(|e| e["event"] == "warn").map(|e| e["message"].as_str().unwrap()).collect();
    assert_eq!(warns.len(), 1, "{warns:?}");
    assert!(
        warns[0].contains("--max-steps 3 stops the run inside its warm-up (--warmup-epochs 2 = 4 steps)"),
        "{warns:?}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_folder_of_idx_files_names_the_file_to_give() {
    let d = scratch("idx-folder");
    let fm = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/fashion-mnist-tiny");
    let out = d.join("run");
    let r = pretrain(&[fm, "--out", out.to_str().unwrap(), "--preset", "small-lewelb", "--quiet"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("this folder holds IDX files") && err.contains("train-images-idx3-ubyte"), "{err}");
    assert!(!out.exists(), "the refused start left {}", out.display());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn an_init_state_without_bn_counters_loads_with_one_warning() {
    let d = scratch("init-no-counters");
    let v = views(&d);
    // 2 steps: the end of the warm-up (a --max-steps inside it is warned about)
    ok(&tiny(&v, &d.join("a"), &["--max-steps", "2"]));
    let latest = std::fs::read_to_string(d.join("a/ckpt/latest")).unwrap();
    let state = lewel::ckpt::read_safetensors(&d.join("a/ckpt").join(latest.trim())).unwrap();
    let kept: Vec<(String, tch::Tensor)> = state
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked") && !k.starts_with("optimizer."))
        .collect();
    let init = d.join("init.safetensors");
    lewel::fsio::write_bytes_atomic(&init, &lewel::ckpt::to_safetensors_bytes(&kept, None).unwrap()).unwrap();
    let ev = ok(&tiny(&v, &d.join("b"), &["--init", init.to_str().unwrap(), "--max-steps", "2"]));
    let warns: Vec<&Value> = ev.iter().filter(|e| e["event"] == "warn").collect();
    assert_eq!(warns.len(), 1, "{warns:?}");
    let m = warns[0]["message"].as_str().unwrap();
    assert!(m.contains("num_batches_tracked") && m.contains("set to 0"), "{m}");
    // any other missing key is still an error that lists it
    let fewer: Vec<(String, tch::Tensor)> = kept
        .iter()
        .filter(|(k, _)| k != "online_net.backbone.conv1.weight")
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    lewel::fsio::write_bytes_atomic(&init, &lewel::ckpt::to_safetensors_bytes(&fewer, None).unwrap()).unwrap();
    let o = tiny(&v, &d.join("c"), &["--init", init.to_str().unwrap(), "--max-steps", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("online_net.backbone.conv1.weight") && !err.contains("num_batches_tracked"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// `--resume RUN --extend-epochs N`: a finished run trained on to N epochs in all, with the schedules recomputed for
/// N, recorded in config.json and the `start` event; lengthened twice, the second time stopped mid-way (as a crash
/// would) and continued by a plain `--resume`.
#[test]
fn a_finished_run_is_extended_recorded_and_continued_after_a_crash() {
    let d = scratch("extend");
    let v = views(&d);
    let run = d.join("run");
    let r = run.to_str().unwrap();
    // 8 pairs at batch 4: 2 steps per epoch, 3 epochs (warm-up 1, lr 0.1, small-lewelb's EMA 0.9 cosine)
    let first = ok(&tiny(&v, &run, &[]));
    assert_eq!(first.last().unwrap()["status"], "finished");
    let resume = |extra: &[&str]| pretrain(&[&["--resume", r, "--log-every", "1", "--quiet"][..], extra].concat());
    let config = || -> Value { serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap() };
    // refused: not longer than the run, with another changed flag, without --resume, with --epochs
    for (extra, want) in [
        (&["--extend-epochs", "3"][..], &["--extend-epochs 3", "planned for 3 epochs already", "more than 3"][..]),
        (&["--extend-epochs", "2"][..], &["--extend-epochs 2", "planned for 3 epochs"][..]),
        (&["--extend-epochs", "5", "--lr", "0.5"][..], &["lr: 0.1 -> 0.5", "give no training flags"][..]),
        (&["--extend-epochs", "5", "--epochs", "5"][..], &["--extend-epochs", "--epochs", "cannot be used with"][..]),
    ] {
        let o = resume(extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(want.iter().all(|w| err.contains(w)), "{extra:?}: {err}");
    }
    let o = pretrain(
        &[&common::tiny(&["--batch-size", "4"])[..], &["--views", v.to_str().unwrap(), "--extend-epochs", "5"]]
            .concat(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--extend-epochs") && err.contains("--resume"), "{err}");
    // --epochs on a resume is refused as before, pointing at --extend-epochs
    let o = resume(&["--epochs", "5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("epochs: 3 -> 5") && err.contains("give --extend-epochs 5 instead of --epochs"), "{err}");
    assert_eq!(config()["pretrain"]["epochs"], 3, "a refused extension changed config.json");

    // 3 -> 5 epochs: steps 7..10, the lr and EMA momentum of a 5-epoch schedule
    let o = resume(&["--extend-epochs", "5"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: the run is extended from 3 to 5 epochs at step 6"));
    let ext = ok(&o);
    let warn = ext.iter().find(|e| e["event"] == "warn").expect("a warn event");
    let m = warn["message"].as_str().unwrap();
    assert!(
        m.contains("from 3 to 5 epochs at step 6") && m.contains("differ from those of a run planned for 5"),
        "{m}"
    );
    let start = &ext.iter().find(|e| e["event"] == "start").unwrap();
    assert_eq!((start["start_step"].as_u64(), start["total_steps"].as_u64()), (Some(6), Some(10)));
    assert_eq!(start["epochs"], 5);
    let one = serde_json::json!([{"from_epochs": 3, "to_epochs": 5, "at_step": 6}]);
    assert_eq!(serde_json::from_str::<Value>(start["extended"].as_str().unwrap()).unwrap(), one);
    assert_eq!((config()["pretrain"]["epochs"].clone(), config()["pretrain"]["extended"].clone()), (5.into(), one));
    let stepped: Vec<&Value> = ext.iter().filter(|e| e["event"] == "step").collect();
    assert_eq!(stepped.iter().map(|e| e["step"].as_u64().unwrap()).collect::<Vec<_>>(), [7, 8, 9, 10]);
    // step 7 is step 0 of epoch 3 (0-based) of 5, global step 6 (0-based) of 10
    let lr = lewel::schedule::lr_at(0.1, 1, 5, 3, 0, 2);
    assert_eq!(stepped[0]["lr"].as_f64(), Some(lr));
    assert_eq!(stepped[0]["ema_momentum"].as_f64(), Some(lewel::schedule::ema_momentum(0.9, 6, 10)));
    assert_eq!(ext.last().unwrap()["status"], "finished");
    assert_eq!(std::fs::read_to_string(run.join("ckpt/latest")).unwrap().trim(), "step-00000010.safetensors");

    // 5 -> 8 epochs, stopped at step 12 as a crash would stop it; a plain --resume continues the 8-epoch run
    let part = ok(&resume(&["--extend-epochs", "8", "--max-steps", "12"]));
    assert_eq!(part.last().unwrap()["status"], "max-steps");
    let two = serde_json::json!([
        {"from_epochs": 3, "to_epochs": 5, "at_step": 6},
        {"from_epochs": 5, "to_epochs": 8, "at_step": 10}
    ]);
    assert_eq!(config()["pretrain"]["extended"], two);
    let rest = ok(&resume(&[]));
    assert!(rest.iter().all(|e| e["event"] != "warn"), "a plain resume warned again: {rest:?}");
    let start = &rest[0];
    assert_eq!((start["start_step"].as_u64(), start["total_steps"].as_u64()), (Some(12), Some(16)));
    assert_eq!(serde_json::from_str::<Value>(start["extended"].as_str().unwrap()).unwrap(), two);
    let stepped: Vec<&Value> = rest.iter().filter(|e| e["event"] == "step").collect();
    assert_eq!(stepped.iter().map(|e| e["step"].as_u64().unwrap()).collect::<Vec<_>>(), [13, 14, 15, 16]);
    assert_eq!(stepped[0]["lr"].as_f64(), Some(lewel::schedule::lr_at(0.1, 1, 8, 6, 0, 2)));
    assert_eq!(stepped[0]["ema_momentum"].as_f64(), Some(lewel::schedule::ema_momentum(0.9, 12, 16)));
    assert_eq!(rest.last().unwrap()["status"], "finished");
    let _ = std::fs::remove_dir_all(&d);
}
