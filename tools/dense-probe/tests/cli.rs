//! Black-box tests of `dense-probe`: a tiny checkpoint on mask data built here from the Fashion-MNIST fixture
//! (mask = 1 + class where the intensity is >= 32, else 0: 11 classes), the result line's keys, the skip on a rerun
//! with --results, a VOC-style folder written here, the preview, and every bad input's error.

use std::path::{Path, PathBuf};

use lewel::data::{open, DataSpec};
use lewel_testkit::{check_help, json_lines, run_tool, scratch};
use serde_json::Value;

#[path = "../../../fixtures/probe/tiny_ckpt.rs"]
mod tiny_ckpt;

const BIN: &str = env!("CARGO_BIN_EXE_dense-probe");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn of_kind<'a>(ev: &'a [Value], kind: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["event"] == kind).collect()
}

fn ok(o: &std::process::Output) -> Vec<Value> {
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    json_lines(&o.stdout)
}

fn fails(o: &std::process::Output, code: i32, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

fn write_u8(path: &Path, shape: &[u64], data: &[u8]) {
    use npyz::WriterBuilder;
    let mut w = npyz::WriteOptions::<u8>::new()
        .default_dtype()
        .shape(shape)
        .writer(std::fs::File::create(path).unwrap())
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

/// The first `n` Fashion-MNIST images of `idx` as RGB `X.npy` with `X.masks.npy` beside it.
fn scenes_like(idx: &str, n: usize, out: &Path) -> PathBuf {
    let ds = open(&DataSpec::new(idx)).unwrap();
    let (mut px, mut masks) = (Vec::new(), Vec::new());
    for i in 0..n {
        let img = ds.load(i).unwrap();
        let label = ds.label(i).unwrap() as u8;
        for p in img.pixels() {
            px.extend_from_slice(&p.0);
            masks.push(if p.0[0] >= 32 { 1 + label } else { 0 });
        }
    }
    write_u8(out, &[n as u64, 28, 28, 3], &px);
    write_u8(&lewel::eval::dense::inputs::masks_path(out), &[n as u64, 28, 28], &masks);
    out.to_path_buf()
}

struct Setup {
    d: PathBuf,
    ck: PathBuf,
    train: PathBuf,
    val: PathBuf,
}

fn setup(name: &str) -> Setup {
    let d = scratch(name);
    let ck = tiny_ckpt::save(&d.join("ckpt"), 1, 3, 2);
    let (tr, va) = tiny_ckpt::fmnist();
    let train = scenes_like(&tr, 24, &d.join("train.npy"));
    let val = scenes_like(&va, 12, &d.join("val.npy"));
    Setup { d, ck, train, val }
}

const FAST: [&str; 10] = ["--epochs", "2", "--device", "cpu", "--threads", "1", "--k", "5", "-q", "--batch-size=8"];

#[test]
fn help_lists_exit_codes_and_an_example() {
    check_help(BIN, "dense-probe --ckpt");
}

#[test]
fn npy_masks_from_a_checkpoint_give_results_and_a_rerun_skips() {
    let t = setup("npy");
    let results = t.d.join("r.jsonl");
    let preview = t.d.join("p.png");
    let args = [
        // the checkpoint's folder: every complete checkpoint in it
        &["--ckpt", s(t.ck.parent().unwrap()), "--train-data", s(&t.train), "--val-data", s(&t.val), "--classes", "11"]
            [..],
        &["--results", s(&results), "--preview", s(&preview)],
        &FAST,
    ]
    .concat();
    let ev = ok(&run_tool(BIN, &args));
    let res = of_kind(&ev, "result");
    assert_eq!(res.len(), 2, "{ev:?}");
    for (r, p) in res.iter().zip(["dense-linear", "dense-knn"]) {
        assert_eq!(r["tool"], "dense-probe");
        assert_eq!(r["probe"], p);
        for key in [
            "miou_pct",
            "pixel_acc_pct",
            "iou_pct_0",
            "absent_classes",
            "classes",
            "ckpt_sha256",
            "protocol_hash",
            "train_fingerprint",
            "val_fingerprint",
            "grid_h",
            "mask_h_px",
            "git_revision",
            "ckpt_step",
        ] {
            assert!(r.get(key).is_some(), "{p} result lacks {key}: {r}");
        }
        let m = r["miou_pct"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&m), "{m}");
        assert_eq!(r["classes"], 11);
        assert!(r["ckpt"].as_str().unwrap().ends_with("step-00000001.safetensors"), "{}", r["ckpt"]);
        assert_eq!(r["grid_h"], 4, "32-px crops, CIFAR stem: a 4x4 grid");
        assert_eq!(r["mask_h_px"], 32, "masks follow the 28 -> 32 eval resize");
        assert_eq!(r["n_val_used"], 12);
    }
    let epochs = of_kind(&ev, "epoch");
    assert_eq!(epochs.len(), 2);
    assert!(epochs.iter().all(|e| e["loss"].as_f64().unwrap() > 0.0 && e.get("epoch_s").is_some()));
    assert_eq!(std::fs::read_to_string(&results).unwrap().lines().count(), 2);
    let img = image::open(&preview).unwrap();
    assert!(img.width() > 300 && img.height() > 300, "{}x{}", img.width(), img.height());
    // the same flags again: both skipped, nothing appended
    let ev2 = ok(&run_tool(BIN, &args));
    assert!(of_kind(&ev2, "result").is_empty());
    assert_eq!(of_kind(&ev2, "skip").len(), 2);
    let end = of_kind(&ev2, "end");
    assert_eq!((end[0]["evaluated"].as_i64(), end[0]["skipped"].as_i64()), (Some(0), Some(2)));
    assert_eq!(std::fs::read_to_string(&results).unwrap().lines().count(), 2);
    // another protocol setting is another result
    let ev3 = ok(&run_tool(BIN, &[&args[..], &["--protocol", "knn", "--temperature", "0.5"]].concat()));
    assert_eq!(of_kind(&ev3, "result").len(), 1);
    // the same run twice gives the same numbers (no randomness in either protocol)
    let no_results = [&args[..8], &FAST[..]].concat(); // up to `--classes 11`
    let again = ok(&run_tool(BIN, &no_results));
    let a: Vec<&Value> = of_kind(&again, "result");
    assert_eq!(a[0]["miou_pct"], res[0]["miou_pct"]);
    assert_eq!(a[1]["miou_pct"], res[1]["miou_pct"]);
}

#[test]
fn layers_3_4_read_the_finer_grid() {
    let t = setup("layers");
    let ev = ok(&run_tool(
        BIN,
        &[
            &["--ckpt", s(&t.ck), "--train-data", s(&t.train), "--val-data", s(&t.val)][..],
            &["--layers", "3,4", "--protocol", "knn"],
            &FAST,
        ]
        .concat(),
    ));
    let r = of_kind(&ev, "result")[0];
    assert_eq!(r["grid_h"], 8);
    assert_eq!(r["dim"], 16 + 32, "stage 3 (16 ch) and stage 4 (32 ch) of the width-4 ResNet-18");
    assert_eq!(r["classes"], 11, "the largest id + 1 without --classes");
}

fn write_jpg(path: &Path, w: u32, h: u32, seed: u8) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8 ^ seed, (y * 5) as u8, seed]));
    img.save(path).unwrap();
}

/// A palette PNG whose indices are `ids`.
fn write_palette_png(path: &Path, w: u32, h: u32, ids: &[u8]) {
    let f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut e = png::Encoder::new(f, w, h);
    e.set_color(png::ColorType::Indexed);
    e.set_depth(png::BitDepth::Eight);
    let palette: Vec<u8> = (0..=255u8).flat_map(|i| [i, 255 - i, i / 2]).collect();
    e.set_palette(palette);
    e.write_header().unwrap().write_image_data(ids).unwrap();
}

/// A VOC-style folder of `n` 40x30 pairs (ids 0..3, a 255 border), with train/val lists.
fn voc(d: &Path, n: usize) -> PathBuf {
    let root = d.join("voc");
    std::fs::create_dir_all(root.join("JPEGImages")).unwrap();
    std::fs::create_dir_all(root.join("SegmentationClass")).unwrap();
    let (w, h) = (40u32, 30u32);
    for i in 0..n {
        let id = format!("2007_{i:06}");
        write_jpg(&root.join(format!("JPEGImages/{id}.jpg")), w, h, i as u8 * 9);
        let ids: Vec<u8> = (0..h * w)
            .map(|p| {
                let (x, y) = (p % w, p / w);
                if x == 0 || y == 0 {
                    255
                } else {
                    ((x / 10 + i as u32) % 4) as u8
                }
            })
            .collect();
        write_palette_png(&root.join(format!("SegmentationClass/{id}.png")), w, h, &ids);
    }
    let list = |r: std::ops::Range<usize>| r.map(|i| format!("2007_{i:06}\n")).collect::<String>();
    std::fs::write(root.join("train.txt"), list(0..n * 2 / 3)).unwrap();
    std::fs::write(root.join("val.txt"), list(n * 2 / 3..n)).unwrap();
    root
}

#[test]
fn a_voc_folder_with_split_lists_and_its_bad_inputs() {
    let d = scratch("voc");
    let ck = tiny_ckpt::save(&d.join("ckpt"), 1, 3, 2);
    let root = voc(&d, 12);
    let (tl, vl, nope) = (root.join("train.txt"), root.join("val.txt"), d.join("nope.txt"));
    let base = [
        &["--ckpt", s(&ck), "--train-data", s(&root), "--val-data", s(&root)][..],
        &["--train-list", s(&tl), "--val-list", s(&vl)],
        &FAST,
    ]
    .concat();
    let ev = ok(&run_tool(BIN, &[&base[..], &["--class-names", "bg,left,mid,right"]].concat()));
    let res = of_kind(&ev, "result");
    assert_eq!(res.len(), 2);
    assert_eq!(res[0]["classes"], 4, "--class-names gives the class count");
    assert!(res[0].get("iou_pct_0_bg").is_some() && res[0].get("iou_pct_3_right").is_some(), "{}", res[0]);
    assert_eq!(res[0]["n_train"], 8);
    assert_eq!(res[0]["n_val"], 4);
    assert!(res[0]["pixels_scored"].as_u64().unwrap() < 4 * 32 * 32, "the 255 border is not scored");

    // a class id above --classes: an error naming the mask and the flag
    fails(
        &run_tool(BIN, &[&base[..], &["--classes", "3"]].concat()),
        2,
        &["SegmentationClass", "class id 3", "--classes 3"],
    );
    // a missing split list
    let bad_list = [&base[..6], &["--train-list", s(&nope)], &base[8..]].concat();
    fails(&run_tool(BIN, &bad_list), 1, &["split list", "nope.txt", "one per line"]);
    // a mask of another size than its image: a warn event and the pair skipped; --strict makes it an error
    write_palette_png(&root.join("SegmentationClass/2007_000009.png"), 20, 30, &vec![1u8; 600]);
    let ev = ok(&run_tool(BIN, &base));
    let warns = of_kind(&ev, "warn");
    assert!(warns.iter().any(|w| w["message"].as_str().unwrap().contains("2007_000009.png is 20x30")), "{warns:?}");
    assert_eq!(of_kind(&ev, "result")[0]["n_val_used"], 3);
    fails(
        &run_tool(BIN, &[&base[..], &["--strict"]].concat()),
        1,
        &["2007_000009.png", "20x30", "its image's size", "--strict"],
    );
    // a missing mask: skipped with a warning that names it
    std::fs::remove_file(root.join("SegmentationClass/2007_000010.png")).unwrap();
    let ev = ok(&run_tool(BIN, &base));
    assert!(of_kind(&ev, "warn").iter().any(|w| w["message"].as_str().unwrap().contains("2007_000010.png is missing")));
    // no SegmentationClass folder
    let empty = d.join("empty");
    std::fs::create_dir_all(empty.join("JPEGImages")).unwrap();
    fails(
        &run_tool(BIN, &[&["--ckpt", s(&ck), "--train-data", s(&empty), "--val-data", s(&root)][..], &FAST].concat()),
        1,
        &["SegmentationClass", "VOC-style"],
    );
}

#[test]
fn bad_npy_inputs_name_the_file_and_the_fix() {
    let t = setup("bad");
    let run = |train: &Path, val: &Path, extra: &[&str]| {
        run_tool(
            BIN,
            &[&["--ckpt", s(&t.ck), "--train-data", s(train), "--val-data", s(val)][..], extra, &FAST].concat(),
        )
    };
    // the same split twice
    fails(&run(&t.train, &t.train, &[]), 2, &["train.npy", "same images", "held-out"]);
    // masks missing
    let lonely = t.d.join("lonely.npy");
    std::fs::copy(&t.train, &lonely).unwrap();
    fails(&run(&lonely, &t.val, &[]), 1, &["lonely.masks.npy", "not found", "--train-masks"]);
    // masks of another count
    let short = t.d.join("short.masks.npy");
    write_u8(&short, &[3, 28, 28], &[0u8; 3 * 28 * 28]);
    fails(
        &run(&t.train, &t.val, &["--train-masks", s(&short)]),
        1,
        &["short.masks.npy", "3 masks", "24 images", "same images in the same order"],
    );
    // masks of another size than the images: every pair is bad, a warning each, then an error
    let small = t.d.join("small.masks.npy");
    write_u8(&small, &[24, 14, 14], &[0u8; 24 * 14 * 14]);
    fails(&run(&t.train, &t.val, &["--train-masks", s(&small)]), 1, &["no usable image/mask pair"]);
    fails(
        &run(&t.train, &t.val, &["--train-masks", s(&small), "--strict"]),
        1,
        &["small.masks.npy[0] is 14x14", "28x28"],
    );
    // a class id above --classes
    fails(
        &run(&t.train, &t.val, &["--classes", "5"]),
        2,
        &["train.masks.npy[", "is not below --classes 5", "raise --classes or fix the mask"],
    );
    // a bad --layers
    fails(&run(&t.train, &t.val, &["--layers", "2"]), 2, &["--layers 2", "4 or 3,4"]);
}

#[test]
fn cached_feature_maps_and_their_checks() {
    let d = scratch("feats");
    let (n, c, h, w) = (12usize, 6usize, 4usize, 4usize);
    let write = |name: &str, seed: u64, n: usize| -> PathBuf {
        let p = d.join(name);
        lewel_testkit::write_npy_f32(
            &p,
            &[n as u64, c as u64, h as u64, w as u64],
            &lewel_testkit::test_values(n * c * h * w, seed),
        );
        let m: Vec<u8> = (0..n * 16 * 16).map(|i| ((i / 7) % 3) as u8).collect();
        write_u8(&lewel::eval::dense::inputs::masks_path(&p), &[n as u64, 16, 16], &m);
        p
    };
    let (tr, va) = (write("tr.npy", 1, n), write("va.npy", 2, 8));
    let ev = ok(&run_tool(
        BIN,
        &[
            &["--train-features", s(&tr), "--val-features", s(&va)][..],
            &["--epochs", "2", "--device", "cpu", "-q", "--memory-size", "50", "--preview", s(&d.join("p.png"))],
        ]
        .concat(),
    ));
    let r = of_kind(&ev, "result");
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["ckpt"], "none (cached features)");
    assert_eq!(r[0]["mask_h_px"], 16);
    assert_eq!(r[1]["bank_patches"], 50, "--memory-size caps the bank");
    assert_eq!(r[1]["bank_candidates"], 12 * 16);
    assert!(image::open(d.join("p.png")).unwrap().width() > 200, "a preview without images: masks only");
    fails(&run_tool(BIN, &["--train-features", s(&tr), "--val-features", s(&tr)]), 2, &["same file"]);
    // cached maps were cut from their stages already: a --layers choice cannot apply to them, so it is refused
    fails(
        &run_tool(BIN, &["--train-features", s(&tr), "--val-features", s(&va), "--layers", "3,4"]),
        2,
        &["--layers", "--train-features"],
    );
    let wrong = d.join("wrong.npy");
    lewel_testkit::write_npy_f32(&wrong, &[2, 3], &[0.0; 6]);
    fails(
        &run_tool(BIN, &["--train-features", s(&wrong), "--val-features", s(&va)]),
        1,
        &["wrong.npy", "float32 [N, C, h, w]"],
    );
}
