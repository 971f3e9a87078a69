//! Black-box tests of `knn-probe`: help, a real run on raw-pixel Fashion-MNIST features, bad inputs,
//! and a closed stdout.

use std::path::Path;
use std::process::{Command, Stdio};

use lewel_testkit::scratch;
use lewel_testkit::{check_help, run_tool};
use serde_json::Value;

#[path = "../../../fixtures/probe/fmnist_pixels.rs"]
mod fmnist_pixels;

const BIN: &str = env!("CARGO_BIN_EXE_knn-probe");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Decodes stdout: one flat JSON object per line, starting with v, tool, event.
fn events(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8(stdout.to_vec())
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            assert_eq!(&keys[..3], &["v", "tool", "event"], "{l}");
            assert_eq!(v["tool"], "knn-probe");
            assert!(v.as_object().unwrap().values().all(|x| !x.is_object() && !x.is_array() && !x.is_null()), "{l}");
            v
        })
        .collect()
}

#[test]
fn help_lists_exit_codes_and_an_example() {
    check_help(BIN, "knn-probe --train-features train.npy --val-features val.npy");
    let help = String::from_utf8(run_tool(BIN, &["--help"]).stdout).unwrap();
    for flag in ["--k", "--temperature", "--batch-size", "--train-labels", "--out", "--device", "--quiet", "[default: "]
    {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// Raw pixels of 200 train / 100 test Fashion-MNIST images. A numpy reference of the same protocol
/// (L2-normalise, top-k by cosine, exp(cos/0.07) votes, ties to the smallest label) gives
/// top-1 71/70/68/68 and top-5 95/97/100/100 for k = 10/20/100/200; chance is 10%.
#[test]
fn raw_pixel_knn_on_fashion_mnist_tiny() {
    let d = scratch("real");
    let (train, val) = fmnist_pixels::write_pixel_features(&d);
    let out = d.join("result.json");
    let o = run_tool(
        BIN,
        &["--train-features", s(&train), "--val-features", s(&val), "--device", "cpu", "--out", s(&out), "-q"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = events(&o.stdout);
    let kinds: Vec<&str> = ev.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["start", "eval", "eval", "eval", "eval", "end", "result"]);
    let r = &ev[6];
    assert_eq!(
        (r["n_train"].as_i64(), r["k"].as_str(), r["temperature"].as_str()),
        (Some(200), Some("10,20,100,200"), Some("0.07"))
    );
    assert!(r["train_fingerprint"].as_str().unwrap().starts_with("npy:200:"), "{r}");
    assert_eq!(r["top1_pct_k10_t0.07"], 71.0);
    let start = &ev[0];
    assert_eq!((start["n_train"].as_i64(), start["n_val"].as_i64()), (Some(200), Some(100)));
    assert_eq!((start["dim"].as_i64(), start["classes"].as_i64()), (Some(784), Some(10)));
    assert_eq!(start["k"], "10,20,100,200");
    let top1: Vec<f64> = ev[1..5].iter().map(|e| e["top1_pct"].as_f64().unwrap()).collect();
    let top5: Vec<f64> = ev[1..5].iter().map(|e| e["top5_pct"].as_f64().unwrap()).collect();
    assert_eq!(top1, [71.0, 70.0, 68.0, 68.0]);
    assert_eq!(top5, [95.0, 97.0, 100.0, 100.0]);
    assert!(top1.iter().all(|&a| a >= 60.0), "far above the 10% of chance");
    let end = &ev[5];
    assert_eq!((end["best_k"].as_i64(), end["best_top1_pct"].as_f64()), (Some(10), Some(71.0)));
    assert_eq!(end["best_is_optimistic"], true);
    let result: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(result["results"].as_array().unwrap().len(), 4);
    assert_eq!(result["best"]["k"], 10);

    // A second temperature and explicit label paths.
    let o = run_tool(
        BIN,
        &[
            "--train-features",
            s(&train),
            "--val-features",
            s(&val),
            "--train-labels",
            s(&d.join("train.labels.npy")),
            "--val-labels",
            s(&d.join("val.labels.npy")),
            "--k",
            "20",
            "--temperature",
            "0.07,0.5",
            "--batch-size",
            "7",
            "-q",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = events(&o.stdout);
    assert_eq!(ev.len(), 5);
    assert_eq!(ev[1]["top1_pct"], 70.0, "batching must not change the result");
    assert_eq!(ev[2]["temperature"], 0.5);
    std::fs::remove_dir_all(&d).unwrap();
}

fn write_f32(path: &Path, n: usize, c: usize) {
    lewel::eval::features::write_f32_matrix(path, n, c, &vec![0.5; n * c]).unwrap();
}

#[test]
fn bad_inputs_fail_with_a_clear_error() {
    let d = scratch("bad");
    let (train, val) = fmnist_pixels::write_pixel_features(&d);
    let fail = |args: &[&str], code: i32, needles: &[&str]| {
        let o = run_tool(BIN, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?} wrote to stdout");
        for n in needles {
            assert!(err.contains(n), "{args:?}: stderr lacks {n:?}: {err}");
        }
    };
    let missing = d.join("missing.npy");
    fail(&["--train-features", s(&train), "--val-features", s(&missing)], 1, &["missing.npy"]);

    // wrong dtype: int32 features
    let ints = d.join("ints.npy");
    {
        let f = std::fs::File::create(&ints).unwrap();
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::<i32>::new().default_dtype().shape(&[3, 784]).writer(f).begin_nd().unwrap();
        w.extend(std::iter::repeat_n(1, 3 * 784)).unwrap();
        w.finish().unwrap();
    }
    lewel::eval::features::write_labels(&d.join("ints.labels.npy"), &[0, 1, 2]).unwrap();
    fail(&["--train-features", s(&train), "--val-features", s(&ints)], 1, &["ints.npy", "float32"]);

    // mismatched widths
    let narrow = d.join("narrow.npy");
    write_f32(&narrow, 3, 10);
    lewel::eval::features::write_labels(&d.join("narrow.labels.npy"), &[0, 1, 2]).unwrap();
    fail(
        &["--train-features", s(&train), "--val-features", s(&narrow)],
        1,
        &["widths differ", "[3, 10]", "[200, 784]"],
    );

    // labels missing
    let unlabelled = d.join("unlabelled.npy");
    write_f32(&unlabelled, 3, 784);
    fail(
        &["--train-features", s(&train), "--val-features", s(&unlabelled)],
        1,
        &["unlabelled.labels.npy", "--val-labels"],
    );

    // labels of the wrong length
    fail(
        &["--train-features", s(&train), "--val-features", s(&val), "--val-labels", s(&d.join("train.labels.npy"))],
        1,
        &["200 labels", "100 feature rows"],
    );

    // the same file for memory and queries: refused as a usage error
    fail(&["--train-features", s(&train), "--val-features", s(&train)], 2, &["same file"]);
    // bad values clap cannot see
    fail(&["--train-features", s(&train), "--val-features", s(&val), "--k", "0"], 2, &["--k"]);
    fail(&["--train-features", s(&train), "--val-features", s(&val), "--temperature", "0"], 2, &["--temperature"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn closed_stdout_exits_zero() {
    let d = scratch("closed");
    let (train, val) = fmnist_pixels::write_pixel_features(&d);
    // The reader is gone before the first line.
    let mut child = Command::new(BIN)
        .args(["--train-features", s(&train), "--val-features", s(&val), "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
    // As a pipeline.
    let o = Command::new("bash")
        .args(["-c", r#""$0" --train-features "$1" --val-features "$2" -q | head -1; exit "${PIPESTATUS[0]}""#])
        .args([BIN, s(&train), s(&val)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);
    std::fs::remove_dir_all(&d).unwrap();
}
