//! Tests of the export module that need no Python: the committed fixtures (`fixtures/export/`, made by
//! `scripts/make-export-fixtures.py` with PyTorch) and round trips of every format. The interop with PyTorch,
//! torchvision and numpy themselves is tested in `tools/export-backbone/tests/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::model::{Arch, Stem};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/export").join(name)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lewel-export-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn config(ckpt: &Path, format: Format, out: &Path) -> ExportConfig {
    ExportConfig {
        ckpt: ckpt.to_path_buf(),
        from: Source::Auto,
        format,
        out: out.to_path_buf(),
        verify: true,
        groups: None,
        proj_dim: None,
        hidden_dim: None,
        seed: 1,
    }
}

fn expected() -> HashMap<String, Tensor> {
    ckpt::read_safetensors(&fixture("official-tiny.expected.safetensors")).unwrap().into_iter().collect()
}

fn messages(sink: &MemorySink, kind: &str) -> Vec<String> {
    sink.events.lock().unwrap().iter().filter(|e| e.kind() == kind).map(|e| e.to_line()).collect()
}

fn assert_same(name: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.kind(), b.kind(), "{name}");
    assert_eq!(a.size(), b.size(), "{name}");
    assert_eq!(pickle_write::tensor_bytes(a).unwrap(), pickle_write::tensor_bytes(b).unwrap(), "{name}");
}

/// A tiny model of ours, trained-looking (BN buffers not at their defaults), saved as a checkpoint.
fn tiny_checkpoint(dir: &Path) -> (PathBuf, Vec<(String, Tensor)>) {
    let cfg = ModelConfig {
        arch: Arch::Resnet18,
        stem: Stem::Cifar,
        width: 4,
        proj_dim: 8,
        hidden_dim: 16,
        groups: 2,
        ..ModelConfig::default()
    };
    tch::manual_seed(3);
    let vs = VarStore::new(Device::Cpu);
    let model = Lewel::new(&vs, &cfg).unwrap();
    tch::no_grad(|| {
        for (k, t) in model.state_dict() {
            let mut t = t;
            if k.ends_with("running_mean") {
                let _ = t.normal_(0.0, 0.1);
            } else if k.ends_with("running_var") {
                let _ = t.uniform_(0.5, 1.5);
            } else if k.ends_with("num_batches_tracked") {
                let _ = t.fill_(17);
            }
        }
    });
    let state = model.state_dict();
    fs::create_dir_all(dir).unwrap();
    let p = ckpt::save(dir, 7, 2, &state, &json!({"config": {"model": cfg}})).unwrap();
    (p, state.into_iter().map(|(k, t)| (k, t.copy())).collect())
}

#[test]
fn official_checkpoint_imports_exactly_and_skips_the_rest_with_warnings() {
    let d = scratch("official");
    let out = d.join("imported.safetensors");
    let mut sink = MemorySink::default();
    let mut cfg = config(&fixture("official-tiny.pth.tar"), Format::Lewel, &out);
    cfg.from = Source::Official;
    let r = run(&cfg, &mut sink).unwrap();
    assert_eq!(r.verified, Some(true));
    let warns = messages(&sink, "warn").join("\n");
    for needle in
        ["argparse.Namespace", "best_acc1 (numpy float64 12.5)", "optimizer (a dict", "scaler (None)", "groups"]
    {
        assert!(warns.contains(needle), "no warning about {needle}:\n{warns}");
    }
    let start = &messages(&sink, "start")[0];
    for needle in [r#""input_kind":"official""#, r#""container":"torch-zip""#, r#""arch":"resnet18""#, r#""width":2"#] {
        assert!(start.contains(needle), "{start}");
    }
    // Our tools open it, and every tensor equals the source's.
    let opened = ckpt::open_model(&out, Device::Cpu).unwrap();
    assert_eq!(opened.config.proj_dim, 8);
    assert_eq!(opened.config.hidden_dim, 16);
    assert_eq!(opened.config.ema, EmaMode::Eman);
    let want = expected();
    let got = opened.model.state_dict();
    assert_eq!(got.len(), want.len());
    for (k, t) in &got {
        assert_same(k, t, &want[k]);
    }
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn official_to_backbone_formats_in_one_step() {
    let d = scratch("official-bb");
    let want = expected();
    for (format, name) in
        [(Format::Safetensors, "bb.safetensors"), (Format::Pth, "bb.pth"), (Format::Detectron2, "bb.pkl")]
    {
        let out = d.join(name);
        let r = run(&config(&fixture("official-tiny.pth.tar"), format, &out), &mut MemorySink::default()).unwrap();
        assert_eq!(r.tensors, 120, "{format:?}: ResNet-18 has 120 backbone entries (fc excluded)");
        assert_eq!(r.verified, Some(true));
    }
    // The same input gives the same bytes.
    for (format, name) in
        [(Format::Safetensors, "bb.safetensors"), (Format::Pth, "bb.pth"), (Format::Detectron2, "bb.pkl")]
    {
        let out = d.join(format!("again-{name}"));
        run(&config(&fixture("official-tiny.pth.tar"), format, &out), &mut MemorySink::default()).unwrap();
        assert_eq!(fs::read(&out).unwrap(), fs::read(d.join(name)).unwrap(), "{format:?} is not reproducible");
    }
    let st = ckpt::read_safetensors(&d.join("bb.safetensors")).unwrap();
    for (k, t) in &st {
        assert_same(k, t, &want[&format!("online_net.backbone.{k}")]);
    }
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn legacy_extract_backbone_output_imports_into_online_and_target() {
    let d = scratch("legacy");
    let out = d.join("run");
    let mut cfg = config(&fixture("extract-backbone-tiny.pth"), Format::Lewel, &out);
    cfg.from = Source::Torchvision;
    cfg.proj_dim = Some(8);
    cfg.hidden_dim = Some(16);
    let mut sink = MemorySink::default();
    run(&cfg, &mut sink).unwrap();
    assert!(messages(&sink, "start")[0].contains(r#""container":"torch-legacy""#));
    assert!(messages(&sink, "warn").iter().any(|w| w.contains("freshly initialised")));
    // A folder output is a ckpt/ folder with `latest`.
    let opened = ckpt::open_model(&out, Device::Cpu).unwrap();
    let want = expected();
    let mut n = 0;
    for (k, t) in opened.model.state_dict() {
        if let Some(bb) = k.strip_prefix("target_net.backbone.").or_else(|| k.strip_prefix("online_net.backbone.")) {
            assert_same(&k, &t, &want[&format!("online_net.backbone.{bb}")]);
            n += 1;
        }
    }
    assert_eq!(n, 240);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn every_format_roundtrips_and_reimports() {
    let d = scratch("roundtrip");
    let (ckpt_path, state) = tiny_checkpoint(&d.join("ckpt"));
    let backbone = torchvision::backbone_of(&state);
    for (format, name) in [
        (Format::Safetensors, "bb.safetensors"),
        (Format::Pth, "bb.pth"),
        (Format::Detectron2, "bb.pkl"),
        (Format::Lewel, "full.safetensors"),
    ] {
        let out = d.join(name);
        let r = run(&config(&d.join("ckpt"), format, &out), &mut MemorySink::default()).unwrap();
        assert_eq!(r.verified, Some(true), "{format:?}");
        assert_eq!(r.sha256, crate::hex::sha256(&fs::read(&out).unwrap()));
    }
    // The pth file, read as a torchvision state dict, gives back the same backbone.
    let again = d.join("again.safetensors");
    let mut cfg = config(&d.join("bb.pth"), Format::Safetensors, &again);
    cfg.from = Source::Torchvision;
    run(&cfg, &mut MemorySink::default()).unwrap();
    let got = ckpt::read_safetensors(&again).unwrap();
    assert_eq!(got.len(), backbone.len());
    let want: HashMap<String, Tensor> = backbone.into_iter().collect();
    for (k, t) in &got {
        assert_same(k, t, &want[k]);
    }
    // The full export equals the checkpoint (optimizer-free).
    let full = ckpt::open_model(&d.join("full.safetensors"), Device::Cpu).unwrap();
    assert_eq!(full.config.groups, 2);
    assert_eq!(full.step, 7);
    for ((k, t), (k2, t2)) in full.model.state_dict().iter().zip(&state) {
        assert_eq!(k, k2);
        assert_same(k, t, t2);
    }
    let _ = ckpt_path;
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn damaged_inputs_fail_with_the_file_named() {
    let d = scratch("damaged");
    let bytes = fs::read(fixture("official-tiny.pth.tar")).unwrap();
    let cut = d.join("cut.pth.tar");
    fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = run(&config(&cut, Format::Pth, &d.join("o.pth")), &mut MemorySink::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("cut.pth.tar") && msg.contains("truncated"), "{msg}");
    assert!(!d.join("o.pth").exists());

    let legacy = fs::read(fixture("extract-backbone-tiny.pth")).unwrap();
    let cut = d.join("cut.pth");
    fs::write(&cut, &legacy[..legacy.len() - 100]).unwrap();
    let err = run(&config(&cut, Format::Pth, &d.join("o.pth")), &mut MemorySink::default()).unwrap_err();
    assert!(format!("{err:#}").contains("truncated"), "{err:#}");

    let junk = d.join("junk.bin");
    fs::write(&junk, b"hello world, not a checkpoint").unwrap();
    let err = run(&config(&junk, Format::Pth, &d.join("o.pth")), &mut MemorySink::default()).unwrap_err();
    assert!(format!("{err:#}").contains("not a checkpoint this tool reads"), "{err:#}");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_backbone_that_does_not_fit_lists_the_keys() {
    let d = scratch("keys");
    let (_, state) = tiny_checkpoint(&d.join("ckpt"));
    let mut bb = torchvision::backbone_of(&state);
    bb.retain(|(k, _)| k != "layer2.1.bn2.running_var");
    bb.push(("layer2.1.extra.weight".into(), Tensor::zeros([1], (tch::Kind::Float, Device::Cpu))));
    let f = d.join("bad.safetensors");
    fs::write(&f, ckpt::to_safetensors_bytes(&bb, None).unwrap()).unwrap();
    let err = run(&config(&f, Format::Pth, &d.join("o.pth")), &mut MemorySink::default()).unwrap_err();
    let msg = format!("{err:#}");
    for needle in
        ["bad.safetensors", "missing keys (1): layer2.1.bn2.running_var", "unexpected keys (1): layer2.1.extra.weight"]
    {
        assert!(msg.contains(needle), "{needle} not in {msg}");
    }
    // --from official on a bare backbone is refused.
    let mut cfg = config(&fixture("extract-backbone-tiny.pth"), Format::Pth, &d.join("o.pth"));
    cfg.from = Source::Official;
    let err = run(&cfg, &mut MemorySink::default()).unwrap_err();
    assert!(format!("{err:#}").contains("--from official"), "{err:#}");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn flags_that_contradict_the_file_are_usage_errors() {
    let d = scratch("flags");
    let mut cfg = config(&fixture("official-tiny.pth.tar"), Format::Pth, &d.join("o.pth"));
    cfg.proj_dim = Some(99);
    let err = run(&cfg, &mut MemorySink::default()).unwrap_err();
    assert_eq!(crate::exit::code_for(&err), crate::exit::USAGE, "{err:#}");
    assert!(format!("{err:#}").contains("--proj-dim 99"), "{err:#}");
    fs::remove_dir_all(&d).unwrap();
}

/// Damaged pickles give errors, never panics (nor runaway allocations).
#[test]
fn mutated_pickles_never_panic() {
    let bytes = fs::read(fixture("official-tiny.pth.tar")).unwrap();
    let zip = archive::Archive::parse(&bytes).unwrap();
    let name = zip.entries().iter().find(|e| e.name.ends_with("/data.pkl")).unwrap().name.clone();
    let pkl = zip.read_name(&name).unwrap().into_owned();
    let noise = lewel_testkit::test_values(3 * 400, 77);
    for i in 0..400 {
        let mut m = pkl.clone();
        for j in 0..3 {
            let at = (((noise[3 * i + j] + 1.0) / 2.0) * (m.len() - 1) as f32) as usize;
            m[at] = m[at].wrapping_add(1 + (i as u8 % 200));
        }
        let _ = pickle::load(&m);
    }
    for cut in (0..pkl.len()).step_by(97) {
        assert!(pickle::load(&pkl[..cut]).is_err());
    }
}

/// Damaged PyTorch files (zip and legacy) give errors, never panics, down to the tensors.
#[test]
fn mutated_torch_files_never_panic() {
    for (name, seed) in [("official-tiny.pth.tar", 5u64), ("extract-backbone-tiny.pth", 6)] {
        let bytes = fs::read(fixture(name)).unwrap();
        let noise = lewel_testkit::test_values(300, seed);
        for (i, r) in noise.iter().enumerate() {
            let mut m = bytes.clone();
            let at = (((r + 1.0) / 2.0) * (m.len() - 1) as f32) as usize;
            m[at] ^= 1 << (i % 8);
            let Ok(f) = TorchFile::parse(&m) else { continue };
            let sd = f.value.get("state_dict").unwrap_or(f.value.clone());
            for (_, v) in sd.pairs().unwrap_or_default() {
                if let Value::Tensor(t) = v {
                    let _ = f.tensor(&t);
                }
            }
        }
    }
}

/// A bare `.safetensors` in our naming (no sidecar) of a BYOL model: method, K and hidden width are
/// inferred from the neck, and the import equals the file.
#[test]
fn bare_state_without_sidecar_infers_byol() {
    let d = scratch("byol");
    let cfg = ModelConfig {
        method: Method::Byol,
        arch: Arch::Resnet34,
        stem: Stem::Cifar,
        width: 2,
        proj_dim: 6,
        hidden_dim: 10,
        ..ModelConfig::default()
    };
    let vs = VarStore::new(Device::Cpu);
    let model = Lewel::new(&vs, &cfg).unwrap();
    let f = d.join("byol-state.safetensors");
    fs::write(&f, ckpt::to_safetensors_bytes(&model.state_dict(), None).unwrap()).unwrap();
    let out = d.join("out.safetensors");
    let mut sink = MemorySink::default();
    run(&config(&f, Format::Lewel, &out), &mut sink).unwrap();
    let start = &messages(&sink, "start")[0];
    for needle in [
        r#""input_kind":"lewel-state""#,
        r#""method":"byol""#,
        r#""arch":"resnet34""#,
        r#""proj_dim":6"#,
        r#""hidden_dim":10"#,
    ] {
        assert!(start.contains(needle), "{needle}: {start}");
    }
    let opened = ckpt::open_model(&out, Device::Cpu).unwrap();
    for ((k, a), (_, b)) in opened.model.state_dict().iter().zip(model.state_dict()) {
        assert_same(k, a, &b);
    }
    fs::remove_dir_all(&d).unwrap();
}
