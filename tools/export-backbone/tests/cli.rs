//! Black-box tests of `export-backbone`, with the interop checks against the real PyTorch, torchvision,
//! safetensors and numpy of the project's `.venv` (made by `scripts/setup.sh`; `make test` runs it first).
//! Set LEWEL_SKIP_PYTHON=1 to skip the checks that need Python on a machine without the venv.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lewel::ckpt;
use lewel::model::{Arch, Lewel, ModelConfig, Stem};
use lewel_testkit::scratch;
use lewel_testkit::{check_help, json_lines, test_values, write_npy_f32};
use serde_json::{json, Value};
use tch::{nn::VarStore, Device, Tensor};

const BIN: &str = env!("CARGO_BIN_EXE_export-backbone");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's Python, or `None` when LEWEL_SKIP_PYTHON is set; a missing venv is a failure otherwise.
fn python() -> Option<PathBuf> {
    let p = root().join(".venv/bin/python");
    if std::env::var_os("LEWEL_SKIP_PYTHON").is_some() {
        eprintln!("LEWEL_SKIP_PYTHON is set: skipping the Python interop check");
        return None;
    }
    assert!(p.exists(), "{} is missing: run scripts/setup.sh (or set LEWEL_SKIP_PYTHON=1)", p.display());
    Some(p)
}

fn run_py(py: &Path, script: &str, args: &[&str]) -> String {
    let out =
        Command::new(py).arg(root().join("tools/export-backbone/tests/py").join(script)).args(args).output().unwrap();
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn export(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(out: &Output) -> Vec<Value> {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let ev = json_lines(&out.stdout);
    assert_eq!(ev.first().map(|e| e["event"].clone()), Some(json!("start")));
    assert_eq!(ev.last().map(|e| e["event"].clone()), Some(json!("end")));
    for e in &ev {
        let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
        assert_eq!(&keys[..3], &["v", "tool", "event"]);
        assert_eq!(e["tool"], "export-backbone");
    }
    ev
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn same(name: &str, a: &Tensor, b: &Tensor) {
    assert_eq!((a.kind(), a.size()), (b.kind(), b.size()), "{name}");
    assert!(a.equal(b), "{name}: values differ");
}

#[test]
fn help_lists_exit_codes_and_an_example() {
    check_help(BIN, "export-backbone --ckpt run1/ckpt/latest --format pth");
}

/// A torchvision-shaped ResNet-18 of ours (ImageNet stem, width 64) with non-default BN statistics:
/// every export loads into torchvision, timm-named tensors equal ours exactly, and the features agree.
#[test]
fn exports_load_in_torch_torchvision_safetensors_and_numpy() {
    let d = scratch("interop");
    let cfg = ModelConfig {
        arch: Arch::Resnet18,
        stem: Stem::Imagenet,
        width: 64,
        proj_dim: 16,
        hidden_dim: 32,
        ..ModelConfig::default()
    };
    tch::manual_seed(11);
    let vs = VarStore::new(Device::Cpu);
    let model = Lewel::new(&vs, &cfg).unwrap();
    tch::no_grad(|| {
        for (k, mut t) in model.state_dict() {
            if k.ends_with("running_mean") {
                let _ = t.normal_(0.0, 0.1);
            } else if k.ends_with("running_var") || k.ends_with("bn1.weight") || k.ends_with("bn2.weight") {
                let _ = t.uniform_(0.5, 1.5);
            } else if k.ends_with("num_batches_tracked") {
                let _ = t.fill_(42);
            }
        }
    });
    let ckpt_dir = d.join("ckpt");
    std::fs::create_dir_all(&ckpt_dir).unwrap();
    let path = ckpt::save(&ckpt_dir, 1, 1, &model.state_dict(), &json!({"config": {"model": cfg}})).unwrap();
    std::fs::copy(&path, d.join("ours.safetensors")).unwrap();
    let xv = test_values(2 * 3 * 64 * 64, 9);
    write_npy_f32(&d.join("x.npy"), &[2, 3, 64, 64], &xv);
    let x = Tensor::from_slice(&xv).view([2, 3, 64, 64]);
    let f = model.features(&x).unwrap();
    let fv: Vec<f32> = Vec::try_from(f.flatten(0, 1)).unwrap();
    write_npy_f32(&d.join("feats.npy"), &[2, 512], &fv);

    for (format, name) in [("safetensors", "bb.safetensors"), ("pth", "bb.pth"), ("detectron2", "bb.pkl")] {
        let ev = ok(&export(&["--ckpt", p(&ckpt_dir), "--format", format, "--out", p(&d.join(name)), "--verify"]));
        let start = &ev[0];
        assert_eq!(start["input_kind"], "lewel");
        assert_eq!(start["arch"], "resnet18");
        let end = ev.last().unwrap();
        assert_eq!(end["verified"], true);
        assert_eq!(end["tensors"], 122 - 2, "ResNet-18 without fc");
        assert_eq!(end["bytes"].as_u64().unwrap(), std::fs::metadata(d.join(name)).unwrap().len());
        assert_eq!(end["sha256"].as_str().unwrap().len(), 64);
    }

    let Some(py) = python() else { return };
    let r: Value = serde_json::from_str(&run_py(&py, "check_exports.py", &[p(&d), "resnet18"])).unwrap();
    for fmt in ["safetensors", "pth"] {
        let c = &r[fmt];
        assert_eq!(c["type"], "dict", "{fmt}: {c}");
        if fmt == "pth" {
            // safetensors files keep their tensors sorted by name; the pickle keeps state_dict order.
            assert_eq!(c["keys_in_torchvision_order"], true, "{fmt}: {c}");
        }
        assert_eq!(c["same_key_set"], true, "{fmt}: {c}");
        assert_eq!(c["all_equal"], true, "{fmt}: {c}");
        assert_eq!(c["num_batches_tracked_dtype"], "torch.int64", "{fmt}: {c}");
        assert_eq!(c["missing"], json!(["fc.bias", "fc.weight"]), "{fmt}: {c}");
        assert_eq!(c["unexpected"], json!([]), "{fmt}: {c}");
        assert_eq!(c["feature_shape"], json!([2, 512]), "{fmt}: {c}");
        let diff = c["feature_max_abs_diff"].as_f64().unwrap();
        assert!(diff <= 1e-5, "{fmt}: torchvision's features differ from ours by {diff}");
    }
    // timm (no classifier: num_classes=0) takes the safetensors export with nothing missing or left over.
    let c = &r["timm"];
    assert_eq!(c["missing"], json!([]), "timm: {c}");
    assert_eq!(c["unexpected"], json!([]), "timm: {c}");
    let diff = c["feature_max_abs_diff"].as_f64().unwrap();
    assert!(diff <= 1e-5, "timm's features differ from ours by {diff}");
    let c = &r["detectron2"];
    assert_eq!(c["author"], "lewel", "{c}");
    assert_eq!(c["matching_heuristics"], true, "{c}");
    assert_eq!(c["names_match_moco_converter"], true, "{c}");
    assert_eq!(c["all_ndarrays"], true, "{c}");
    assert_eq!(c["all_equal"], true, "{c}");
    let _ = std::fs::remove_dir_all(&d);
}

/// torchvision's own weights, saved by PyTorch in the zip and the legacy format, come in unchanged.
#[test]
fn torchvision_pth_files_import_in_both_formats() {
    let Some(py) = python() else { return };
    let d = scratch("tv");
    run_py(&py, "torchvision_source.py", &[p(&d)]);
    let want: std::collections::HashMap<String, Tensor> =
        ckpt::read_safetensors(&d.join("tv-reference.safetensors")).unwrap().into_iter().collect();
    for (src, container) in [("tv.pth", "torch-zip"), ("tv-legacy.pth", "torch-legacy")] {
        let out = d.join(format!("{src}.safetensors"));
        let ev = ok(&export(&[
            "--ckpt",
            p(&d.join(src)),
            "--from",
            "torchvision",
            "--format",
            "safetensors",
            "--out",
            p(&out),
            "--verify",
        ]));
        assert_eq!(ev[0]["input_kind"], "torchvision");
        assert_eq!(ev[0]["container"], container);
        assert_eq!(
            (ev[0]["arch"].clone(), ev[0]["stem"].clone(), ev[0]["width"].clone()),
            (json!("resnet18"), json!("imagenet"), json!(64))
        );
        assert!(ev.iter().any(|e| e["event"] == "warn" && e["message"].as_str().unwrap().contains("fc.weight")));
        let got = ckpt::read_safetensors(&out).unwrap();
        assert_eq!(got.len(), want.len());
        for (k, t) in &got {
            same(k, t, &want[k]);
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// The official-format fixture becomes our checkpoint in one step; our tools open it; the backbone is exact.
#[test]
fn official_checkpoint_to_lewel_and_back_out() {
    let d = scratch("official");
    let fx = root().join("fixtures/export");
    let out = d.join("lewel.safetensors");
    let ev = ok(&export(&[
        "--ckpt",
        p(&fx.join("official-tiny.pth.tar")),
        "--from",
        "official",
        "--format",
        "lewel",
        "--out",
        p(&out),
        "--verify",
    ]));
    assert_eq!(ev[0]["input_kind"], "official");
    assert_eq!(ev[0]["epoch"], 1);
    let warns: Vec<&str> = ev.iter().filter(|e| e["event"] == "warn").map(|e| e["message"].as_str().unwrap()).collect();
    assert!(warns.iter().any(|w| w.contains("argparse.Namespace")), "{warns:?}");
    assert!(warns.iter().any(|w| w.contains("best_acc1 (numpy float64 12.5)")), "{warns:?}");
    assert_eq!(ev.last().unwrap()["verified"], true);

    let opened = ckpt::open_model(&out, Device::Cpu).unwrap();
    let want: std::collections::HashMap<String, Tensor> =
        ckpt::read_safetensors(&fx.join("official-tiny.expected.safetensors")).unwrap().into_iter().collect();
    for (k, t) in opened.model.state_dict() {
        same(&k, &t, &want[&k]);
    }
    // Our checkpoint back out as a backbone, through `latest`-less file input.
    let ev = ok(&export(&["--ckpt", p(&out), "--format", "pth", "--out", p(&d.join("bb.pth"))]));
    assert_eq!(ev[0]["input_kind"], "lewel");
    assert!(ev.last().unwrap().get("verified").is_none());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_damaged_checkpoint_is_a_clear_error_exit_1() {
    let d = scratch("damaged");
    let bytes = std::fs::read(root().join("fixtures/export/official-tiny.pth.tar")).unwrap();
    let cut = d.join("checkpoint_0001.pth.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = export(&["--ckpt", p(&cut), "--format", "safetensors", "--out", p(&d.join("o.safetensors"))]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("export-backbone: error:") && err.contains("checkpoint_0001.pth.tar"), "{err}");
    assert!(err.contains("truncated"), "{err}");
    assert!(json_lines(&out.stdout).iter().all(|e| e["event"] != "end"));
    assert!(!d.join("o.safetensors").exists());

    let out = export(&["--ckpt", p(&d.join("nope.pth")), "--format", "pth", "--out", p(&d.join("o.pth"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.pth"));
    let out = export(&["--ckpt", p(&cut), "--format", "onnx", "--out", p(&d.join("o"))]);
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&d);
}
