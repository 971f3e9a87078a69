//! `pretrain` over tar shards (webdataset layout): a brace pattern, a list of shards and a folder of shards train
//! alike; a corrupt member and a truncated shard are replaced and reported, fatal with --strict; an exact resume
//! mid-epoch (the resume after SIGKILL is in faults.rs).

use std::path::Path;
use std::process::{Command, Output};

use lewel_testkit::{json_lines, photo_shards, scratch};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pretrain");

const TINY: &[&str] = &[
    "--preset",
    "small-lewelb",
    "--width",
    "4",
    "--proj-dim",
    "16",
    "--hidden-dim",
    "32",
    "--batch-size",
    "4",
    "--epochs",
    "2",
    "--warmup-epochs",
    "1",
    "--lr",
    "0.1",
    "--shuffle-buffer",
    "3",
    "--log-every",
    "1",
    "--device",
    "cpu",
    "--quiet",
];

fn pretrain(data: &str, out: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg(data)
        .args(TINY)
        .args(["--out", out.to_str().unwrap()])
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

fn ok(o: &Output) -> Vec<Value> {
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    json_lines(&o.stdout)
}

fn losses(ev: &[Value]) -> Vec<(u64, String)> {
    ev.iter()
        .filter(|e| e["event"] == "step")
        .map(|e| (e["step"].as_u64().unwrap(), format!("{} {}", e["loss"], e["lr"])))
        .collect()
}

#[test]
fn a_brace_pattern_a_list_and_a_folder_of_shards_train_alike_and_resume_exactly() {
    let d = scratch("pretrain-shards");
    let dir = d.join("shards");
    photo_shards(&dir, 3, 4, 0);
    std::fs::write(d.join("shards.txt"), "shards/shard-000002.tar\nshards/shard-000000.tar\nshards/shard-000001.tar\n")
        .unwrap();
    let pattern = format!("{}/shard-{{000000..000002}}.tar", dir.display());
    let ev = ok(&pretrain(&pattern, &d.join("a"), &[]));
    let start = ev.iter().find(|e| e["event"] == "start").unwrap().to_string();
    assert!(start.contains("12 images in 3 shards"), "{start}");
    let want = losses(&ev);
    assert_eq!(want.len(), 6);
    let folder = losses(&ok(&pretrain(dir.to_str().unwrap(), &d.join("b"), &[])));
    assert_eq!(folder, want, "a folder of shards trains like the pattern");
    // the list names the shards in another order: other items per index, so other losses, but it trains
    let listed = losses(&ok(&pretrain(d.join("shards.txt").to_str().unwrap(), &d.join("c"), &[])));
    assert_eq!(listed.len(), 6);
    // stop mid-epoch 2 (step 4 of 6), resume: the rest equals the uninterrupted run
    let first = losses(&ok(&pretrain(&pattern, &d.join("r"), &["--max-steps", "4"])));
    assert_eq!(first, want[..4]);
    let o = Command::new(BIN)
        .args(["--resume", d.join("r").to_str().unwrap(), "--log-every", "1", "--quiet"])
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert_eq!(losses(&ok(&o)), want[4..]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_corrupt_member_and_a_truncated_shard_are_replaced_and_reported_or_fatal_with_strict() {
    let d = scratch("pretrain-shards-bad");
    let dir = d.join("shards");
    let paths = photo_shards(&dir, 3, 4, 0);
    let mut bytes = std::fs::read(&paths[1]).unwrap();
    let at = bytes.windows(10).position(|w| w == b"001001.png").unwrap() + 512;
    bytes[at..at + 64].fill(b'x');
    std::fs::write(&paths[1], &bytes).unwrap();
    let bytes = std::fs::read(&paths[2]).unwrap();
    let at = bytes.windows(10).position(|w| w == b"002003.png").unwrap() + 512 + 100;
    std::fs::write(&paths[2], &bytes[..at]).unwrap();
    let pattern = format!("{}/shard-{{000000..000002}}.tar", dir.display());
    let ev = ok(&pretrain(&pattern, &d.join("a"), &["--epochs", "1", "--warmup-epochs", "0"]));
    let warns = ev.iter().filter(|e| e["event"] == "warn").map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(warns.contains("shard-000001.tar:001001.png"), "{warns}");
    assert!(warns.contains("shard-000002.tar:002003.png") && warns.contains("truncated shard"), "{warns}");
    assert_eq!(losses(&ev).len(), 3);
    let o = pretrain(&pattern, &d.join("b"), &["--epochs", "1", "--warmup-epochs", "0", "--strict"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(".tar:00") && err.contains("--strict"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}
