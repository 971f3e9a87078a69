//! `embed` over tar shards (webdataset layout): made from an ImageFolder by scripts/make-shards.sh, the features
//! and labels equal those of the folder, row for row; damaged members and shards are reported or, with --strict,
//! fatal.

use std::path::{Path, PathBuf};
use std::process::Command;

use lewel_testkit::{json_lines, photo_shards, photos, scratch};

const BIN: &str = env!("CARGO_BIN_EXE_embed");
const TOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn embed(ck: &Path, data: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["--ckpt", ck.to_str().unwrap(), "--data", data, "--out", out.to_str().unwrap(), "-q", "--device", "cpu"])
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

fn npy<T: npyz::Deserialize>(path: &Path) -> Vec<T> {
    npyz::NpyFile::new(&std::fs::read(path).unwrap()[..]).unwrap().into_vec().unwrap()
}

fn ok(o: &std::process::Output) -> Vec<serde_json::Value> {
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    json_lines(&o.stdout)
}

#[test]
fn shards_made_from_a_class_folder_embed_like_the_folder() {
    let d = scratch("embed-shards");
    let ck = lewel_testkit::tiny_checkpoint(&d.join("ckpt"), true);
    // an ImageFolder of 2 classes x 3 photos
    let folder = d.join("images");
    for (k, (stem, bytes)) in photos().into_iter().enumerate() {
        let class = folder.join(if k % 2 == 0 { "cat" } else { "dog" });
        std::fs::create_dir_all(&class).unwrap();
        std::fs::write(class.join(format!("{stem}.v1.png")), bytes).unwrap();
    }
    let shards = d.join("shards");
    let made = Command::new(format!("{TOP}/scripts/make-shards.sh"))
        .args([folder.to_str().unwrap(), shards.to_str().unwrap(), "--per-shard", "4"])
        .output()
        .unwrap();
    assert_eq!(made.status.code(), Some(0), "{}", String::from_utf8_lossy(&made.stderr));
    let pattern = String::from_utf8(made.stdout).unwrap().trim().to_string();
    assert_eq!(pattern, format!("{}/shard-{{000000..000001}}.tar", shards.display()));
    // deterministic: made again, the same bytes
    let again = d.join("again");
    Command::new(format!("{TOP}/scripts/make-shards.sh"))
        .args([folder.to_str().unwrap(), again.to_str().unwrap(), "--per-shard", "4"])
        .output()
        .unwrap();
    for s in ["shard-000000.tar", "shard-000001.tar"] {
        assert_eq!(std::fs::read(shards.join(s)).unwrap(), std::fs::read(again.join(s)).unwrap(), "{s}");
    }

    let want = d.join("folder.npy");
    ok(&embed(&ck, folder.to_str().unwrap(), &want, &[]));
    let list = shards.join("shards.txt");
    for (k, data) in [pattern.clone(), shards.display().to_string(), list.display().to_string()].iter().enumerate() {
        let got = d.join(format!("shards-{k}.npy"));
        let ev = ok(&embed(&ck, data, &got, &[]));
        assert!(ev.iter().all(|e| e["event"] != "warn"), "{ev:?}");
        assert_eq!(npy::<f32>(&got), npy::<f32>(&want), "features of {data}");
        assert_eq!(npy::<i64>(&d.join(format!("shards-{k}.labels.npy"))), vec![0, 0, 0, 1, 1, 1], "labels of {data}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_corrupt_member_and_a_truncated_shard_are_warned_and_fatal_with_strict() {
    let d = scratch("embed-shards-bad");
    let ck = lewel_testkit::tiny_checkpoint(&d.join("ckpt"), true);
    let dir = d.join("shards");
    let paths: Vec<PathBuf> = photo_shards(&dir, 3, 4, 2);
    // shard 0: member 000002.png replaced by garbage of the same length (the archive stays valid)
    let mut bytes = std::fs::read(&paths[0]).unwrap();
    let at = bytes.windows(10).position(|w| w == b"000002.png").unwrap() + 512;
    bytes[at..at + 64].fill(b'x');
    std::fs::write(&paths[0], &bytes).unwrap();
    // shard 2: cut in the middle of its third sample's image
    let bytes = std::fs::read(&paths[2]).unwrap();
    let at = bytes.windows(10).position(|w| w == b"002002.png").unwrap() + 512 + 300;
    std::fs::write(&paths[2], &bytes[..at]).unwrap();

    let data = format!("{}/shard-{{000000..000002}}.tar", dir.display());
    let out = d.join("f.npy");
    let ev = ok(&embed(&ck, &data, &out, &[]));
    let warns: Vec<String> =
        ev.iter().filter(|e| e["event"] == "warn").map(|e| e["message"].as_str().unwrap().to_string()).collect();
    let text = warns.join("\n");
    assert!(warns.iter().any(|w| w.contains("shard-000000.tar:000002.png")), "{text}");
    assert!(warns.iter().any(|w| w.contains("shard-000002.tar:002002.png") && w.contains("truncated shard")), "{text}");
    assert_eq!(warns.len(), 2, "{text}");
    // rows: 4 + 4 + 3 samples (the last two of shard 2 are lost with the cut)
    assert_eq!(npy::<f32>(&out).len(), 11 * 32);
    let o = embed(&ck, &data, &out, &["--strict"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("shard-000000.tar:000002.png"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}
