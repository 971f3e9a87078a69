//! Black-box tests of `augment`: outputs, events on stdout, exit codes, bad input.

use std::path::{Path, PathBuf};
use std::process::Output;

use lewel_testkit::scratch;
use lewel_testkit::{check_help, run_tool};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_augment");

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn run(args: &[&str]) -> Output {
    run_tool(BIN, args)
}

/// stdout as events; every line must be a flat JSON object starting with v, tool, event.
fn events(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"));
            let keys: Vec<&String> = v.as_object().unwrap().keys().take(3).collect();
            assert_eq!(keys, ["v", "tool", "event"]);
            assert_eq!(v["tool"], "augment");
            v
        })
        .collect()
}

fn npy_shape(p: &Path) -> Vec<u64> {
    let bytes = std::fs::read(p).unwrap();
    npyz_shape(&bytes)
}

/// The shape from a .npy header (test-local, no npyz dependency in the tool).
fn npyz_shape(bytes: &[u8]) -> Vec<u64> {
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    let shape = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    shape.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect()
}

#[test]
fn help_lists_exit_codes_and_an_example() {
    check_help(BIN, "augment");
    let out = run(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in
        ["--recipe", "--size", "--epochs", "--seed", "--threads", "--out", "--preview", "--strict", "--root", "--set"]
    {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn writes_views_sidecar_and_preview() {
    let d = scratch("ok");
    let out = d.join("views.npy");
    let grid = d.join("grid.png");
    let photos = fixtures().join("photos-96");
    let o = run(&[
        photos.to_str().unwrap(),
        "--recipe",
        "lewel-b-small",
        "--epochs",
        "2",
        "--threads",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--preview",
        grid.to_str().unwrap(),
        "--preview-rows",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = events(&o);
    assert_eq!(ev.first().unwrap()["event"], "start");
    assert!(ev[0]["recipe"].as_str().unwrap().contains("\"blur_p\""));
    let end = ev.last().unwrap();
    assert_eq!(end["event"], "end");
    assert_eq!(end["images"], 12);
    assert_eq!(end["skipped"], 0);
    assert!(end["images_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(npy_shape(&out), vec![12, 2, 3, 32, 32]);
    let side: Value = serde_json::from_str(&std::fs::read_to_string(d.join("views.npy.json")).unwrap()).unwrap();
    assert_eq!(side["recipe"]["name"], "lewel-b-small");
    assert_eq!(side["seed"], 23456);
    assert!(side["fingerprint"].as_str().unwrap().starts_with("folder:6:"));
    let png = std::fs::read(&grid).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // Same seed, other thread count: byte-identical views.
    let out1 = d.join("views1.npy");
    let o = run(&[
        photos.to_str().unwrap(),
        "--recipe",
        "lewel-b-small",
        "--epochs",
        "2",
        "--threads",
        "1",
        "--out",
        out1.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&out1).unwrap(), "views differ between 1 and 2 threads");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn shards_come_with_a_manifest() {
    let d = scratch("shards");
    let out = d.join("v.npy");
    let idx = fixtures().join("fashion-mnist-tiny/t10k-images-idx3-ubyte");
    let o = run(&[
        idx.to_str().unwrap(),
        "--recipe",
        "byol-small",
        "--size",
        "16",
        "--shard-size",
        "40",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest = std::fs::read_to_string(d.join("v.npy.manifest.jsonl")).unwrap();
    let rows: Vec<u64> =
        manifest.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["rows"].as_u64().unwrap()).collect();
    assert_eq!(rows, vec![40, 40, 20]);
    assert_eq!(npy_shape(&d.join("v.00002.npy")), vec![20, 2, 3, 16, 16]);
    assert!(!out.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_files_are_skipped_with_warnings_or_fatal_with_strict() {
    let d = scratch("bad");
    let out = d.join("v.npy");
    let bad = fixtures().join("augment/bad");
    let o = run(&[bad.to_str().unwrap(), "--recipe", "mocov2-small", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = events(&o);
    let warned: Vec<&str> = ev.iter().filter(|e| e["event"] == "warn").map(|e| e["file"].as_str().unwrap()).collect();
    assert_eq!(warned.len(), 2, "{ev:?}");
    assert!(warned.iter().any(|f| f.ends_with("text.jpg")) && warned.iter().any(|f| f.ends_with("truncated.jpg")));
    assert_eq!(ev.last().unwrap()["skipped"], 2);
    // The batch size never changes: 5 rows, bad ones replaced.
    assert_eq!(npy_shape(&out), vec![5, 2, 3, 32, 32]);

    let o = run(&[
        bad.to_str().unwrap(),
        "--recipe",
        "mocov2-small",
        "--strict",
        "--out",
        d.join("s.npy").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("augment: error:") && (err.contains("text.jpg") || err.contains("truncated.jpg")), "{err}");
    assert!(!d.join("s.npy").exists(), "a failed run left its output");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn usage_and_input_errors_have_clear_codes() {
    let d = scratch("errors");
    let out = d.join("v.npy");
    let photos = fixtures().join("photos-96");
    let p = photos.to_str().unwrap();
    let o_ = out.to_str().unwrap();
    // Missing path, empty folder: exit 1 naming the path.
    let o = run(&["/nonexistent/data", "--out", o_]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/data"));
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = run(&[empty.to_str().unwrap(), "--out", o_]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no images"));
    // Unknown recipe or parameter, nothing to write, bad flag: exit 2.
    for args in [
        vec![p, "--recipe", "simclr", "--out", o_],
        vec![p, "--set", "blur_q=1", "--out", o_],
        vec![p, "--set", "blur_p=3", "--out", o_],
        vec![p],
        vec![p, "--dry-run", "--out", o_],
        vec![p, "--no-such-flag"],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout.is_empty(), "{args:?} wrote events");
    }
    // A dry run makes every view and writes nothing.
    let o = run(&[p, "--recipe", "byol-small", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(events(&o).last().unwrap()["images"], 6);
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_closed_stdout_does_not_stop_the_run() {
    let d = scratch("closed");
    let out = d.join("v.npy");
    let idx = fixtures().join("fashion-mnist-tiny/t10k-images-idx3-ubyte");
    let cmd = format!("'{BIN}' '{}' --recipe byol-small --epochs 5 --out '{}' | head -1", idx.display(), out.display());
    let o = std::process::Command::new("bash").args(["-c", &format!("set -o pipefail; {cmd}")]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);
    assert_eq!(npy_shape(&out), vec![500, 2, 3, 32, 32]);
    std::fs::remove_dir_all(&d).unwrap();
}

/// Every kind of bad file (RELIABILITY.md: truncated, empty, text, decompression bombs, unreadable, symlink
/// loops) is skipped and named in a `warn` event; with --strict the run fails naming one, writing nothing.
#[test]
fn every_kind_of_bad_file_is_skipped_and_reported_or_fatal_with_strict() {
    let d = scratch("bad-kinds");
    let bad = lewel_testkit::bad_data(&d.join("data"));
    let out = d.join("v.npy");
    let args = [bad.dir.to_str().unwrap(), "--recipe", "mocov2-small", "--out", out.to_str().unwrap()];
    let (o, expected) = bad.run(std::process::Command::new(BIN).args(args));
    bad.assert_skipped_and_reported("augment", &o, &expected);
    assert_eq!(npy_shape(&out), vec![bad.len() as u64, 2, 3, 32, 32]);
    let strict = d.join("s.npy");
    let (o, _) =
        bad.run(std::process::Command::new(BIN).args(&args[..3]).args(["--strict", "--out", strict.to_str().unwrap()]));
    bad.assert_strict_fails("augment", &o, false);
    assert!(!strict.exists(), "a failed run left its output");
    let _ = std::fs::remove_dir_all(&d);
}

/// Real photos cut short, as an interrupted download leaves them (a PNG at half its length, a JPEG without its
/// last 2 bytes, the end-of-image marker, a WebP at 90%): each is named in a `warn` event whose reason says
/// "truncated" and replaced; a JPEG with trailing bytes after its end-of-image marker is accepted, as PIL accepts
/// it. With --strict the first truncated file met stops the run, named, exit 1.
#[test]
fn truncated_photos_are_reported_and_trailing_bytes_accepted() {
    let d = scratch("truncated");
    let data = d.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let read = |p: &str| std::fs::read(fixtures().join(p)).unwrap();
    std::fs::copy(fixtures().join("photos-96/coffee.png"), data.join("a-good.png")).unwrap();
    let png = read("photos-96/chelsea.png");
    std::fs::write(data.join("b-cut-half.png"), &png[..png.len() / 2]).unwrap();
    let jpg = read("augment/decode/rgb.jpg");
    std::fs::write(data.join("c-cut-eoi.jpg"), &jpg[..jpg.len() - 2]).unwrap();
    let webp = read("augment/decode/photo.webp");
    std::fs::write(data.join("d-cut.webp"), &webp[..webp.len() * 9 / 10]).unwrap();
    let mut padded = jpg.clone();
    padded.extend_from_slice(b"\x00\x00 trailing bytes after EOI \xFF\xD9");
    std::fs::write(data.join("e-trailing.jpg"), &padded).unwrap();
    let out = d.join("v.npy");
    let o = run(&[data.to_str().unwrap(), "--recipe", "lewel-b-small", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = events(&o);
    let mut warned: Vec<(&str, &str)> = ev
        .iter()
        .filter(|e| e["event"] == "warn")
        .map(|e| (e["file"].as_str().unwrap(), e["reason"].as_str().unwrap()))
        .collect();
    warned.sort(); // in the epoch's order, shuffled
    assert_eq!(warned.len(), 3, "{warned:?}");
    for (name, (file, reason)) in ["b-cut-half.png", "c-cut-eoi.jpg", "d-cut.webp"].iter().zip(&warned) {
        assert!(file.ends_with(name) && reason.contains("truncated"), "{name}: {file}: {reason}");
    }
    assert!(warned[1].1.contains("end-of-image marker"), "{warned:?}");
    assert_eq!(ev.last().unwrap()["skipped"], 3);
    assert_eq!(npy_shape(&out), vec![5, 2, 3, 32, 32]);

    let s = d.join("s.npy");
    let o = run(&[data.to_str().unwrap(), "--recipe", "lewel-b-small", "--strict", "--out", s.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let named = ["b-cut-half.png", "c-cut-eoi.jpg", "d-cut.webp"].iter().any(|f| err.contains(f));
    assert!(err.contains("augment: error:") && named && err.contains("truncated"), "{err}");
    assert!(!s.exists(), "a failed run left its output");
    std::fs::remove_dir_all(&d).unwrap();
}
