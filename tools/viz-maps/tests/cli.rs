//! Black-box tests of `viz-maps` on `fixtures/photos-96` with tiny checkpoints.

use std::path::{Path, PathBuf};

use lewel::model::{Arch, Lewel, Method, ModelConfig, Stem};
use lewel_testkit::scratch;
use lewel_testkit::{check_help, json_lines, run_tool, test_values, write_npy_f32};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_viz-maps");
const PHOTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/photos-96");

/// A tiny CIFAR-stem checkpoint (K = 8 maps in G = 2 groups) with non-default BN statistics.
fn checkpoint(dir: &Path, method: Method) -> PathBuf {
    tch::manual_seed(5);
    let cfg = ModelConfig {
        method,
        arch: Arch::Resnet18,
        stem: Stem::Cifar,
        width: 4,
        proj_dim: 8,
        hidden_dim: 16,
        groups: 2,
        queue_size: 16,
        ..ModelConfig::default()
    };
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = Lewel::new(&vs, &cfg).unwrap();
    let x = tch::Tensor::randn([4, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    let _ = model.forward_loss(&x, &x.flip([3])).unwrap(); // moves the BN running statistics
    let ck = dir.join(format!("ckpt-{}", method.name()));
    std::fs::create_dir_all(&ck).unwrap();
    lewel::ckpt::save(&ck, 1, 0, &model.state_dict(), &serde_json::json!({"config": {"model": cfg}})).unwrap()
}

fn ok(args: &[&str]) -> Vec<Value> {
    let out = run_tool(BIN, args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    json_lines(&out.stdout)
}

fn of<'a>(ev: &'a [Value], kind: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["event"] == kind).collect()
}

fn decode(p: &Path) -> image::RgbImage {
    image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).to_rgb8()
}

/// Many distinct colours: not a blank picture.
fn assert_not_blank(img: &image::RgbImage) {
    let mut colours: Vec<[u8; 3]> = img.pixels().step_by(7).map(|p| p.0).collect();
    colours.sort();
    colours.dedup();
    assert!(colours.len() > 200, "only {} colours", colours.len());
}

/// Checks the map events against the image and end events.
fn check_stats(ev: &[Value], images: usize, maps_per_image: usize, views: &[i64]) {
    let end = of(ev, "end")[0];
    let (mh, mw) = (end["map_h"].as_u64().unwrap(), end["map_w"].as_u64().unwrap());
    let max_h = ((mh * mw) as f64).ln();
    assert!((end["max_entropy_nats"].as_f64().unwrap() - max_h).abs() < 1e-9);
    let mean = end["mean_entropy_nats"].as_f64().unwrap();
    assert!(mean > 0.0 && mean <= max_h + 1e-6, "{mean} vs {max_h}");
    assert!((end["entropy_ratio"].as_f64().unwrap() - mean / max_h).abs() < 1e-9);
    assert_eq!(end["images"], images);
    assert_eq!(end["maps"], maps_per_image);
    let imgs = of(ev, "image");
    assert_eq!(imgs.len(), images);
    let maps = of(ev, "map");
    assert_eq!(maps.len(), images * maps_per_image * views.len());
    for m in &maps {
        let h = m["entropy_nats"].as_f64().unwrap();
        assert!((0.0..=max_h + 1e-6).contains(&h), "{m}");
        assert!((m["entropy_ratio"].as_f64().unwrap() - h / max_h).abs() < 1e-9);
        assert!(m["peak_row"].as_u64().unwrap() < mh && m["peak_col"].as_u64().unwrap() < mw);
        let (peak, top) = (m["peak_mass"].as_f64().unwrap(), m["top10_mass"].as_f64().unwrap());
        assert!(peak >= 1.0 / (mh * mw) as f64 - 1e-9 && peak <= top + 1e-9 && top <= 1.0 + 1e-9, "{m}");
        assert!(views.contains(&m["view"].as_i64().unwrap()));
    }
    for img in &imgs {
        let i = &img["index"];
        let mine: Vec<&&Value> = maps.iter().filter(|m| &m["index"] == i).collect();
        // map_ids lists the drawn maps in rank order, for every view.
        let ids: Vec<String> = mine.iter().filter(|m| m["view"] == views[0]).map(|m| m["map"].to_string()).collect();
        assert_eq!(img["map_ids"].as_str().unwrap(), ids.join(","));
        let min_h = img["min_entropy_nats"].as_f64().unwrap();
        assert!(mine.iter().all(|m| m["entropy_nats"].as_f64().unwrap() >= min_h - 1e-12));
        assert!(img["mean_entropy_nats"].as_f64().unwrap() >= min_h - 1e-12);
    }
}

#[test]
fn help_lists_exit_codes_and_an_example() {
    check_help(BIN, "viz-maps --ckpt");
}

#[test]
fn grid_and_per_image_pictures_of_a_lewel_b_checkpoint() {
    let d = scratch("run");
    let ck = checkpoint(&d, Method::LewelB);
    let ck = ck.to_str().unwrap();

    // Grid: 6 photos, top:3 of K = 8, crop 64 -> 8x8 maps on a CIFAR stem.
    let grid = d.join("grid");
    let ev = ok(&[
        "--ckpt",
        ck,
        "--data",
        PHOTOS,
        "--out",
        grid.to_str().unwrap(),
        "--grid",
        "--maps",
        "top:3",
        "--size",
        "64",
        "-q",
    ]);
    assert_eq!(ev[0]["event"], "start");
    assert_eq!(
        (ev[0]["method"].as_str(), ev[0]["maps_k"].as_u64(), ev[0]["input_h_px"].as_u64()),
        (Some("lewel-b"), Some(8), Some(64))
    );
    check_stats(&ev, 6, 3, &[0]);
    let end = of(&ev, "end")[0];
    assert_eq!((end["map_h"].as_u64(), end["files"].as_u64()), (Some(8), Some(1)));
    // top:3 is ordered by peak mass.
    for img in of(&ev, "image") {
        let peaks: Vec<f64> = of(&ev, "map")
            .iter()
            .filter(|m| m["index"] == img["index"])
            .map(|m| m["peak_mass"].as_f64().unwrap())
            .collect();
        assert!(peaks.windows(2).all(|w| w[0] >= w[1]), "{peaks:?}");
    }
    let g = decode(&grid.join("grid.png"));
    // Tiles are 128 px (64 zoomed twice); 1 image + 3 maps per row, 6 rows.
    assert!(g.width() >= 4 * 128 && g.width() < 4 * 128 + 120, "{}", g.width());
    assert!(g.height() >= 6 * 128 && g.height() < 6 * (128 + 40) + 80, "{}", g.height());
    assert_not_blank(&g);
    assert_eq!(std::fs::read_dir(&grid).unwrap().count(), 1, "only grid.png");

    // Per image, explicit maps, limited to 2 images.
    let per = d.join("per");
    let ev = ok(&["--ckpt", ck, "--data", PHOTOS, "--out", per.to_str().unwrap(), "--maps", "7,0", "--limit", "2"]);
    check_stats(&ev, 2, 2, &[0]);
    let mut files: Vec<String> =
        std::fs::read_dir(&per).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["0000-astronaut.png", "0001-camera.png"]);
    for (img, f) in of(&ev, "image").iter().zip(&files) {
        assert_eq!(img["map_ids"], "7,0");
        assert!(img["file"].as_str().unwrap().ends_with(f.as_str()));
        let p = decode(&per.join(f));
        // Default recipe of a CIFAR stem: 32 px crop, shown at 128; 3 tiles.
        assert!(p.width() >= 3 * 128 && p.height() >= 128 + 20, "{}x{}", p.width(), p.height());
        assert_not_blank(&p);
    }
    assert_eq!(of(&ev, "end")[0]["map_h"], 4);

    // Group sums: K/G = 4 representations; all of them.
    let gs = d.join("gs");
    let ev = ok(&[
        "--ckpt",
        ck,
        "--data",
        PHOTOS,
        "--out",
        gs.to_str().unwrap(),
        "--group-sum",
        "--maps",
        "all",
        "--grid",
        "--limit",
        "1",
    ]);
    assert_eq!(ev[0]["maps_drawable"], 4);
    check_stats(&ev, 1, 4, &[0]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn view_pairs_show_the_same_maps_on_both_views() {
    let d = scratch("views");
    let ck = checkpoint(&d, Method::LewelB);
    let views = d.join("views.npy");
    let (n, s) = (3usize, 32usize);
    write_npy_f32(&views, &[n as u64, 2, 3, s as u64, s as u64], &test_values(n * 2 * 3 * s * s, 9));
    let out = d.join("out");
    let ev = ok(&[
        "--ckpt",
        ck.to_str().unwrap(),
        "--views",
        views.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--grid",
        "--maps",
        "top:2",
    ]);
    assert_eq!(ev[0]["input"], "views");
    check_stats(&ev, n, 2, &[1, 2]);
    for img in of(&ev, "image") {
        let m: Vec<&Value> = of(&ev, "map").into_iter().filter(|m| m["index"] == img["index"]).collect();
        let v1: Vec<&Value> = m.iter().filter(|m| m["view"] == 1).map(|m| &m["map"]).collect();
        let v2: Vec<&Value> = m.iter().filter(|m| m["view"] == 2).map(|m| &m["map"]).collect();
        assert_eq!(v1, v2, "the same maps on both views");
    }
    let g = decode(&out.join("grid.png"));
    // Two blocks of (view + 2 maps) at 128 px.
    assert!(g.width() >= 6 * 128 && g.height() >= 3 * 128, "{}x{}", g.width(), g.height());
    assert_not_blank(&g);
    // A bad sidecar is a warning, not a failure; a wrong shape is an error.
    std::fs::write(d.join("views.npy.json"), "{not json").unwrap();
    let o = run_tool(
        BIN,
        &["--ckpt", ck.to_str().unwrap(), "--views", views.to_str().unwrap(), "--out", out.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ImageNet"));
    let bad = d.join("bad.npy");
    write_npy_f32(&bad, &[2, 3, 8, 8], &test_values(2 * 3 * 64, 1));
    let o = run_tool(
        BIN,
        &["--ckpt", ck.to_str().unwrap(), "--views", bad.to_str().unwrap(), "--out", out.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("[N, 2, 3, S, S]"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_requests_fail_clearly() {
    let d = scratch("bad");
    let ck = checkpoint(&d, Method::LewelB);
    let byol = checkpoint(&d, Method::Byol);
    let out = d.join("out");
    let o = out.to_str().unwrap();

    let r = run_tool(BIN, &["--ckpt", byol.to_str().unwrap(), "--data", PHOTOS, "--out", o]);
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("this checkpoint has no alignment maps (method byol)"), "{err}");

    let r = run_tool(BIN, &["--ckpt", ck.to_str().unwrap(), "--data", PHOTOS, "--out", o, "--maps", "999"]);
    assert_eq!(r.status.code(), Some(2));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("999") && err.contains("K = 8"), "{err}");
    let r =
        run_tool(BIN, &["--ckpt", ck.to_str().unwrap(), "--data", PHOTOS, "--out", o, "--maps", "4", "--group-sum"]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("K/G"));
    for bad in [&["--maps", "top:x"][..], &["--limit", "0"], &["--size", "0"], &["--views", "v.npy", "--size", "64"]] {
        let mut args = vec!["--ckpt", ck.to_str().unwrap(), "--data", PHOTOS, "--out", o];
        if bad[0] == "--views" {
            args.drain(2..4); // --views replaces --data
        }
        args.extend_from_slice(bad);
        assert_eq!(run_tool(BIN, &args).status.code(), Some(2), "{bad:?}");
    }

    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let r = run_tool(BIN, &["--ckpt", ck.to_str().unwrap(), "--data", empty.to_str().unwrap(), "--out", o]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("no images found"));

    // --out under a regular file cannot be created.
    let file = d.join("file");
    std::fs::write(&file, "x").unwrap();
    let under = file.join("maps");
    let r = run_tool(BIN, &["--ckpt", ck.to_str().unwrap(), "--data", PHOTOS, "--out", under.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--out"));

    // An unreadable image is left out with a warning; --strict makes it fatal.
    let mixed = d.join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(format!("{PHOTOS}/camera.png"), mixed.join("a.png")).unwrap();
    std::fs::write(mixed.join("b.png"), "not a png").unwrap();
    let ev = ok(&["--ckpt", ck.to_str().unwrap(), "--data", mixed.to_str().unwrap(), "--out", o, "--grid"]);
    assert_eq!(of(&ev, "warn").len(), 1);
    assert_eq!(of(&ev, "warn")[0]["index"], 1);
    assert_eq!((of(&ev, "end")[0]["images"].as_u64(), of(&ev, "end")[0]["skipped"].as_u64()), (Some(1), Some(1)));
    let r = run_tool(BIN, &["--ckpt", ck.to_str().unwrap(), "--data", mixed.to_str().unwrap(), "--out", o, "--strict"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("b.png"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn lewel_m_checkpoints_have_maps_too() {
    let d = scratch("lewelm");
    let ck = checkpoint(&d, Method::LewelM);
    let out = d.join("out");
    let ev = ok(&[
        "--ckpt",
        ck.to_str().unwrap(),
        "--data",
        PHOTOS,
        "--out",
        out.to_str().unwrap(),
        "--limit",
        "1",
        "--grid",
    ]);
    assert_eq!(ev[0]["method"], "lewel-m");
    check_stats(&ev, 1, 8, &[0]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn official_checkpoints_open_through_the_importer() {
    let d = scratch("official");
    let ck = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/export/official-tiny.pth.tar");
    let out = d.join("out");
    let ev =
        ok(&["--ckpt", ck, "--data", PHOTOS, "--out", out.to_str().unwrap(), "--limit", "2", "--maps", "all", "-q"]);
    assert_eq!((ev.iter().find(|e| e["event"] == "start").unwrap()["ckpt_kind"].as_str()), Some("official"));
    check_stats(&ev, 2, 8, &[0]);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
    let _ = std::fs::remove_dir_all(&d);
}

/// Every kind of bad file (RELIABILITY.md) is left out of the pictures and named in a `warn` event; --strict
/// fails naming the first.
#[test]
fn every_kind_of_bad_file_is_left_out_and_reported_or_fatal_with_strict() {
    let d = scratch("bad-kinds");
    let ck = checkpoint(&d, Method::LewelB);
    let bad = lewel_testkit::bad_data(&d.join("data"));
    let out = d.join("maps");
    let args = [
        "--ckpt",
        ck.to_str().unwrap(),
        "--data",
        bad.dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--grid",
        "-q",
    ];
    let (o, expected) = bad.run(std::process::Command::new(BIN).args(args));
    bad.assert_skipped_and_reported("viz-maps", &o, &expected);
    let end = json_lines(&o.stdout).into_iter().find(|e| e["event"] == "end").unwrap();
    assert_eq!(end["images"].as_u64(), Some(bad.good as u64), "{end}");
    let (o, _) = bad.run(std::process::Command::new(BIN).args(args).arg("--strict"));
    bad.assert_strict_fails("viz-maps", &o, true);
    let _ = std::fs::remove_dir_all(&d);
}

/// Tar shards as DATA (issue 21): the photos in 2 shards give the same maps as the photos' folder, image by image
/// (the shards hold the folder's files in its order; only the names differ).
#[test]
fn shards_of_the_photos_give_the_folders_maps() {
    let d = scratch("shards");
    let ck = checkpoint(&d, Method::LewelB);
    lewel_testkit::photo_shards(&d.join("shards"), 2, 3, 0);
    let maps = |data: &str, out: &str| {
        let ev = ok(&[
            "--ckpt",
            ck.to_str().unwrap(),
            "--data",
            data,
            "--out",
            d.join(out).to_str().unwrap(),
            "--grid",
            "--maps",
            "top:3",
            "--size",
            "64",
            "-q",
        ]);
        check_stats(&ev, 6, 3, &[0]);
        let keys = ["index", "map", "view", "entropy_nats", "peak_row", "peak_col", "peak_mass", "top10_mass"];
        of(&ev, "map").iter().map(|m| keys.map(|k| m[k].to_string()).join(" ")).collect::<Vec<_>>()
    };
    let folder = maps(PHOTOS, "folder");
    let shards = maps(d.join("shards").to_str().unwrap(), "from-shards");
    assert_eq!(shards, folder);
    assert_not_blank(&decode(&std::fs::read_dir(d.join("from-shards")).unwrap().next().unwrap().unwrap().path()));
    let _ = std::fs::remove_dir_all(&d);
}
