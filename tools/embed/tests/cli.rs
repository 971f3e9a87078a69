//! Black-box tests of `embed` on the Fashion-MNIST fixtures with a tiny checkpoint.

use std::path::{Path, PathBuf};

use lewel_testkit::scratch;
use lewel_testkit::{check_help, json_lines, run_tool};

const BIN: &str = env!("CARGO_BIN_EXE_embed");
const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

/// A tiny CIFAR-stem checkpoint with non-default BN statistics.
fn checkpoint(dir: &Path) -> PathBuf {
    lewel_testkit::tiny_checkpoint(&dir.join("ckpt"), true)
}

fn read_f32(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    (npy.shape().to_vec(), npy.into_vec().unwrap())
}

#[test]
fn help_lists_exit_codes_and_an_example() {
    check_help(BIN, "embed --ckpt");
}

#[test]
fn features_are_row_per_item_with_labels_and_independent_of_batching() {
    let d = scratch("run");
    let ck = checkpoint(&d);
    let data = format!("{FIX}/fashion-mnist-tiny/t10k-images-idx3-ubyte");
    let a = d.join("a.npy");
    let out = run_tool(BIN, &["--ckpt", ck.to_str().unwrap(), "--data", &data, "--out", a.to_str().unwrap(), "-q"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let ev = json_lines(&out.stdout);
    assert_eq!(ev.last().unwrap()["event"], "end");
    assert_eq!(ev.last().unwrap()["rows"], 100);
    let (shape, fa) = read_f32(&a);
    assert_eq!(shape, vec![100, 32]); // width 4 -> 8 * 4 channels after layer4
    assert!(fa.iter().all(|v| v.is_finite()));
    // Labels equal the IDX labels file (10 per class, in file order).
    let bytes = std::fs::read(d.join("a.labels.npy")).unwrap();
    let labels: Vec<i64> = npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap();
    let idx = std::fs::read(format!("{FIX}/fashion-mnist-tiny/t10k-labels-idx1-ubyte")).unwrap();
    assert_eq!(labels, idx[8..].iter().map(|&b| b as i64).collect::<Vec<_>>());
    // Another batch size and thread count: the same bytes (eval-mode BN: rows are independent).
    let b = d.join("b.npy");
    let out = run_tool(
        BIN,
        &[
            "--ckpt",
            d.to_str().unwrap(),
            "--data",
            &data,
            "--out",
            b.to_str().unwrap(),
            "--batch-size",
            "7",
            "--threads",
            "1",
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read_f32(&b).1, fa);
    // --resize / --crop set the eval transform.
    let c = d.join("c.npy");
    let out = run_tool(
        BIN,
        &[
            "--ckpt",
            ck.to_str().unwrap(),
            "--data",
            &data,
            "--out",
            c.to_str().unwrap(),
            "--resize",
            "40",
            "--crop",
            "36",
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let ev = json_lines(&out.stdout);
    assert_eq!((ev[0]["eval_resize_px"].as_i64(), ev[0]["eval_crop_px"].as_i64()), (Some(40), Some(36)));
    assert_eq!((ev[0]["input_h_px"].as_i64(), ev[0]["input_w_px"].as_i64()), (Some(36), Some(36)));
    // Unlabelled data over the same --out: the earlier run's labels go, or the probes would take them for these.
    let photos = format!("{FIX}/photos-96");
    let out = run_tool(BIN, &["--ckpt", ck.to_str().unwrap(), "--data", &photos, "--out", a.to_str().unwrap(), "-q"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read_f32(&a).0, vec![6, 32]);
    assert!(!d.join("a.labels.npy").exists(), "stale labels left beside unlabelled features");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_inputs_fail_clearly() {
    let d = scratch("bad");
    let ck = checkpoint(&d);
    let out = d.join("f.npy");
    let o = run_tool(BIN, &["--ckpt", "/nonexistent/ckpt", "--data", FIX, "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/ckpt"));
    let o =
        run_tool(BIN, &["--ckpt", ck.to_str().unwrap(), "--data", "/nonexistent/data", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/data"));
    assert!(!out.exists(), "a failed run left an output file");
    let _ = std::fs::remove_dir_all(&d);
}

/// Every kind of bad file (RELIABILITY.md) gets a blank image's row and a `warn` event naming it; --strict fails
/// naming the first; a truncated or bit-flipped checkpoint is refused naming it (sidecar sha256).
#[test]
fn bad_files_are_reported_strict_fails_and_corrupt_checkpoints_are_refused() {
    let d = scratch("bad-kinds");
    let ck = checkpoint(&d);
    let bad = lewel_testkit::bad_data(&d.join("data"));
    let out = d.join("f.npy");
    let args =
        ["--ckpt", ck.to_str().unwrap(), "--data", bad.dir.to_str().unwrap(), "--out", out.to_str().unwrap(), "-q"];
    let (o, expected) = bad.run(std::process::Command::new(BIN).args(args));
    bad.assert_skipped_and_reported("embed", &o, &expected);
    assert_eq!(read_f32(&out).0, vec![bad.len() as u64, 32]);
    let (o, _) = bad.run(std::process::Command::new(BIN).args(args).arg("--strict"));
    bad.assert_strict_fails("embed", &o, true);

    let good = format!("{FIX}/photos-96");
    for damage in ["truncate", "flip"] {
        let mut bytes = std::fs::read(&ck).unwrap();
        let copy = d.join(format!("{damage}/ckpt"));
        std::fs::create_dir_all(&copy).unwrap();
        let n = bytes.len();
        if damage == "truncate" {
            bytes.truncate(n - 10);
        } else {
            bytes[n / 2] ^= 0x10;
        }
        let bad_ck = copy.join(ck.file_name().unwrap());
        std::fs::write(&bad_ck, bytes).unwrap();
        std::fs::copy(lewel::ckpt::sidecar_path(&ck), lewel::ckpt::sidecar_path(&bad_ck)).unwrap();
        let o = run_tool(BIN, &["--ckpt", bad_ck.to_str().unwrap(), "--data", &good, "--out", out.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(&format!("{} is corrupt", bad_ck.display())) && err.contains("sha256"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
