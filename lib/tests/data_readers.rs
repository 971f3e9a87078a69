//! Every DATA reader on the fixtures, and the decoder on odd image files (against PIL's decode).

use std::path::{Path, PathBuf};

use lewel::data::decode::{decode_rgb, MAX_PIXELS};
use lewel::data::{open, DataSpec, Dataset};
use lewel_testkit::scratch;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn open_path(p: &Path) -> std::sync::Arc<dyn Dataset> {
    open(&DataSpec::new(p)).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()))
}

#[test]
fn idx_raw_and_gzipped_with_labels() {
    let raw = fixtures().join("fashion-mnist-tiny/train-images-idx3-ubyte");
    let ds = open_path(&raw);
    assert_eq!(ds.len(), 200);
    assert_eq!(ds.num_classes(), Some(10));
    let img = ds.load(3).unwrap();
    assert_eq!(img.dimensions(), (28, 28));
    assert!(img.pixels().all(|p| p[0] == p[1] && p[1] == p[2]), "grey must become 3 equal channels");
    let labels: Vec<i64> = (0..200).map(|i| ds.label(i).unwrap()).collect();
    assert_eq!((0..10).map(|c| labels.iter().filter(|&&l| l == c).count()).collect::<Vec<_>>(), vec![20; 10]);

    // A gzipped copy, with a gzipped labels file next to it.
    let d = scratch("idx");
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] {
        let bytes = std::fs::read(fixtures().join("fashion-mnist-tiny").join(name)).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &bytes).unwrap();
        std::fs::write(d.join(format!("{name}.gz")), gz.finish().unwrap()).unwrap();
    }
    let gz = open_path(&d.join("train-images-idx3-ubyte.gz"));
    assert_eq!(gz.len(), 200);
    assert_eq!(gz.load(3).unwrap(), img);
    assert_eq!(gz.label(7), ds.label(7));
    assert_eq!(gz.fingerprint(), ds.fingerprint());
    // Without a labels file: unlabeled.
    std::fs::remove_file(d.join("train-labels-idx1-ubyte.gz")).unwrap();
    assert_eq!(open_path(&d.join("train-images-idx3-ubyte.gz")).label(0), None);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn flat_folder_and_image_folder() {
    let photos = open_path(&fixtures().join("photos-96"));
    assert_eq!(photos.len(), 6);
    assert_eq!(photos.label(0), None);
    assert!(photos.name(0).ends_with("astronaut.png"));
    assert_eq!(photos.load(5).unwrap().dimensions(), (96, 96));
    assert!(photos.describe().starts_with("folder "));

    let d = scratch("imagefolder");
    for (class, files) in [("zebra", vec!["b.png", "a.png"]), ("ant", vec!["x.png"]), ("ant/sub", vec!["y.png"])] {
        std::fs::create_dir_all(d.join(class)).unwrap();
        for f in files {
            std::fs::copy(fixtures().join("photos-96/camera.png"), d.join(class).join(f)).unwrap();
        }
    }
    std::fs::write(d.join("ant/notes.txt"), "not an image").unwrap();
    let ds = open_path(&d);
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.num_classes(), Some(2));
    let names: Vec<String> =
        (0..4).map(|i| ds.name(i).strip_prefix(d.to_str().unwrap()).unwrap().to_string()).collect();
    assert_eq!(names, ["/ant/x.png", "/ant/sub/y.png", "/zebra/a.png", "/zebra/b.png"]);
    assert_eq!((0..4).map(|i| ds.label(i).unwrap()).collect::<Vec<_>>(), vec![0, 0, 1, 1]);
    assert!(ds.describe().contains("1 other files ignored"), "{}", ds.describe());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn list_files_bare_crlf_names_and_labelled_lines() {
    // SimCLR's 1percent.txt: bare names, CRLF; resolved under --root as <root>/<synset>/<name>.
    let list = fixtures().join("imagenet-subsets/1percent.txt");
    let text = std::fs::read_to_string(&list).unwrap();
    let names: Vec<&str> = text.lines().map(str::trim).take(3).collect();
    let root = scratch("root");
    let synsets: Vec<&str> = names.iter().map(|n| n.split('_').next().unwrap()).collect();
    let mut all: Vec<&str> = text.lines().map(|n| n.trim().split('_').next().unwrap()).collect();
    all.push("n00000000"); // a class folder with no listed image still counts
    all.sort();
    all.dedup();
    for s in &all {
        std::fs::create_dir_all(root.join(s)).unwrap();
    }
    let spec = DataSpec { path: list.clone(), root: Some(root.clone()), strict: false };
    let ds = open(&spec).unwrap();
    assert_eq!(ds.len(), 12_811);
    assert_eq!(ds.num_classes(), Some(1001));
    let first = PathBuf::from(ds.name(0));
    assert_eq!(first, root.join(synsets[0]).join(names[0]));
    assert!(!ds.name(0).ends_with('\r'));
    assert_eq!(ds.label(0), Some(all.iter().position(|s| *s == synsets[0]).unwrap() as i64));
    assert_eq!(ds.label(0), Some(797 + 1), "n04235860 is class 797 of ImageNet; n00000000 sorts first");
    // The files themselves are missing: loading fails naming nothing, open did not fail.
    assert!(ds.load(0).is_err());

    // A shortened list against a root holding every synset it names, with one real file.
    let short = root.join("short.txt");
    std::fs::write(&short, format!("{}\r\n{}\r\n{}", names[0], names[1], names[2])).unwrap();
    std::fs::copy(fixtures().join("photos-96/coffee.png"), root.join(synsets[1]).join(names[1])).unwrap();
    let ds = open(&DataSpec { path: short.clone(), root: Some(root.clone()), strict: false }).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.load(1).unwrap().dimensions(), (96, 96));
    // Without --root: a usage error that says what to do.
    let err = open(&DataSpec::new(&short)).err().unwrap();
    assert!(format!("{err:#}").contains("--root"), "{err:#}");

    // `<label> <relpath>` lines (the official .ext files), relative to --root.
    let ext = fixtures().join("imagenet-subsets/1percent.txt.ext");
    let ds = open(&DataSpec { path: ext, root: Some(root.clone()), strict: false }).unwrap();
    assert_eq!(ds.len(), 12_811);
    assert_eq!(ds.num_classes(), Some(1000));
    assert!(ds.name(0).starts_with(root.to_str().unwrap()));
    std::fs::remove_dir_all(&root).unwrap();
}

fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let dims = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims},), }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

fn ds_label(p: &Path) -> Option<i64> {
    open_path(p).label(0)
}

#[test]
fn npy_uint8_images_and_float_tensors() {
    let d = scratch("npy");
    let grey: Vec<u8> = (0..2 * 4 * 5).map(|v| v as u8).collect();
    write_npy(&d.join("g.npy"), "|u1", &[2, 4, 5], &grey);
    let ds = open_path(&d.join("g.npy"));
    assert_eq!(ds.len(), 2);
    let img = ds.load(1).unwrap();
    assert_eq!(img.dimensions(), (5, 4));
    assert_eq!(img.get_pixel(1, 0).0, [21, 21, 21]);

    let rgba: Vec<u8> = (0..3 * 2 * 2 * 4).map(|v| v as u8).collect();
    write_npy(&d.join("c.npy"), "|u1", &[3, 2, 2, 4], &rgba);
    let ds = open_path(&d.join("c.npy"));
    assert_eq!(ds.load(2).unwrap().get_pixel(0, 0).0, [32, 33, 34], "alpha dropped");

    let floats: Vec<u8> = (0..2 * 3 * 2 * 2).flat_map(|v| (v as f32 * 0.5).to_le_bytes()).collect();
    write_npy(&d.join("f.npy"), "<f4", &[2, 3, 2, 2], &floats);
    let ds = open_path(&d.join("f.npy"));
    assert!(ds.prepared().is_some());
    assert_eq!(ds.load_prepared(1).unwrap()[0], 6.0);
    let err = format!("{:#}", ds.load(0).unwrap_err());
    assert!(err.contains("cannot be augmented"), "{err}");

    // no labels file: unlabelled; NAME.labels.npy beside it: its labels (and a new fingerprint)
    assert_eq!((ds_label(&d.join("c.npy")), open_path(&d.join("c.npy")).num_classes()), (None, None));
    let unlabelled = open_path(&d.join("c.npy")).fingerprint();
    let labels: Vec<u8> = [2i64, 0, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(&d.join("c.labels.npy"), "<i8", &[3], &labels);
    let ds = open_path(&d.join("c.npy"));
    assert_eq!((ds.label(0), ds.label(2), ds.num_classes()), (Some(2), Some(5), Some(6)));
    assert_ne!(ds.fingerprint(), unlabelled);
    assert!(ds.describe().contains("c.labels.npy"), "{}", ds.describe());
    write_npy(&d.join("c.labels.npy"), "|u1", &[2], &[1, 1]);
    let err = format!("{:#}", open(&DataSpec::new(d.join("c.npy"))).err().unwrap());
    assert!(err.contains("2 labels for the 3 images"), "{err}");

    write_npy(&d.join("bad.npy"), "<f8", &[2, 3], &[0u8; 48]);
    let err = format!("{:#}", open(&DataSpec::new(d.join("bad.npy"))).err().unwrap());
    assert!(err.contains("<f8") && err.contains("expected uint8"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// The odd files of fixtures/augment/decode against PIL's `convert('RGB')` (after `exif_transpose`
/// for the rotated one). JPEG decoders may differ by a few levels (IDCT, chroma upsampling).
#[test]
fn odd_image_files_decode_like_pil() {
    let dir = fixtures().join("augment/decode");
    for (file, tol_max, tol_mean) in [
        ("rgb.jpg", 6, 0.5),
        ("grey.jpg", 2, 0.1),
        ("cmyk.jpg", 2, 0.1),
        ("exif-rotated.jpg", 6, 0.5),
        ("deep16.png", 0, 0.0),
        ("palette.png", 0, 0.0),
        ("rgba.png", 0, 0.0),
        ("photo.webp", 0, 0.0),
    ] {
        let img =
            decode_rgb(&std::fs::read(dir.join(file)).unwrap(), MAX_PIXELS).unwrap_or_else(|e| panic!("{file}: {e}"));
        let stem = file.rsplit_once('.').unwrap().0;
        let bytes = std::fs::read(fixtures().join(format!("augment/expected/decoded-{stem}.npy"))).unwrap();
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        let shape = npy.shape().to_vec();
        let want: Vec<u8> = npy.into_vec().unwrap();
        assert_eq!((img.height() as u64, img.width() as u64), (shape[0], shape[1]), "{file}: size");
        let d: Vec<i32> = img.as_raw().iter().zip(&want).map(|(&a, &b)| (a as i32 - b as i32).abs()).collect();
        let max = *d.iter().max().unwrap();
        let mean = d.iter().sum::<i32>() as f64 / d.len() as f64;
        eprintln!("{file:>18}: max {max} mean {mean:.3}");
        assert!(max <= tol_max && mean <= tol_mean, "{file}: max {max}, mean {mean}");
    }
}

/// The bad-data fixture (RELIABILITY.md): every bad item fails to load with a reason, every good one loads,
/// the folder link loop is listed once (not followed), and the labels stay those of the class folders.
#[test]
fn bad_data_items_fail_one_by_one_and_the_rest_load() {
    let d = scratch("bad-data");
    let bad = lewel_testkit::bad_data(&d.join("data"));
    let ds = open_path(&bad.dir);
    assert_eq!(ds.len(), bad.len(), "{}", ds.describe());
    assert_eq!(ds.num_classes(), Some(2));
    let mut failed = Vec::new();
    for i in 0..ds.len() {
        match ds.load(i) {
            Ok(img) => assert_eq!(img.dimensions(), (40, 36), "{}", ds.name(i)),
            Err(e) => failed.push((ds.name(i), format!("{e:#}"))),
        }
    }
    let names: Vec<String> = failed.iter().map(|f| f.0.clone()).collect();
    let expected: Vec<String> = bad
        .bad
        .iter()
        .filter(|(p, _)| !(lewel_testkit::is_root() && p.ends_with("unreadable.jpg")))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert_eq!(names, expected, "{failed:#?}");
    let why = |name: &str| &failed.iter().find(|f| f.0.ends_with(name)).unwrap().1;
    assert!(why("bomb.png").contains("decompression bomb"), "{}", why("bomb.png"));
    assert!(why("bomb.jpg").contains("decompression bomb"), "{}", why("bomb.jpg"));
    assert!(why("text.jpg").contains("not an image"), "{}", why("text.jpg"));
    assert!(why("empty.jpg").contains("empty (0 bytes)"), "{}", why("empty.jpg"));
    assert!(why("zz-loop").contains("symlink loop"), "{}", why("zz-loop"));
    for (n, w) in &failed {
        eprintln!("{n}: {w}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_folder_of_idx_or_npy_files_says_which_file_to_give() {
    let d = scratch("data-folder-hint");
    let idx = d.join("fmnist");
    std::fs::create_dir_all(&idx).unwrap();
    for n in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte.gz", "README"] {
        std::fs::write(idx.join(n), b"x").unwrap();
    }
    let err = format!("{:#}", open(&DataSpec::new(&idx)).err().expect("no images in the folder"));
    assert!(err.contains("this folder holds IDX files"), "{err}");
    assert!(err.contains(&format!("give {}", idx.join("train-images-idx3-ubyte").display())), "{err}");
    assert!(err.contains("t10k-images-idx3-ubyte.gz for the test split"), "{err}");
    let npy = d.join("scenes");
    std::fs::create_dir_all(&npy).unwrap();
    for n in ["train.npy", "train.labels.npy", "train.masks.npy"] {
        std::fs::write(npy.join(n), b"x").unwrap();
    }
    let err = format!("{:#}", open(&DataSpec::new(&npy)).err().unwrap());
    assert!(
        err.contains(&format!("holds a .npy data array, not images: give {}", npy.join("train.npy").display())),
        "{err}"
    );
    std::fs::write(npy.join("test.npy"), b"x").unwrap();
    let err = format!("{:#}", open(&DataSpec::new(&npy)).err().unwrap());
    assert!(err.contains("give one of") && err.contains("test.npy") && !err.contains("labels.npy"), "{err}");
    // a folder with neither keeps the general message
    let other = d.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"x").unwrap();
    assert!(format!("{:#}", open(&DataSpec::new(&other)).err().unwrap()).contains("no images found"));
    let _ = std::fs::remove_dir_all(&d);
}

/// Real photos (the `photos-96` fixtures, re-encoded as JPEG, PNG and lossless WebP, and the lossy WebP fixture)
/// cut short as an interrupted download leaves them: at 10%, 50% and 90% of their length and 2 bytes before the
/// end (a JPEG without its end-of-image marker). Each is refused with a message that says "truncated", never
/// decoded with a grey part; from 50% on the headers are whole, so the refusal is the structural check's.
/// Trailing bytes after the end marker (after EOI, IEND, the RIFF size) are accepted and change no pixel.
#[test]
fn truncated_images_are_refused_and_trailing_bytes_are_accepted() {
    use lewel::data::decode::DecodeError;
    let encode = |img: &image::DynamicImage, f: image::ImageFormat| {
        let mut v = Vec::new();
        match f {
            image::ImageFormat::Jpeg => {
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut v, 90).encode_image(img).unwrap()
            }
            _ => img.write_to(&mut std::io::Cursor::new(&mut v), f).unwrap(),
        }
        v
    };
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for photo in ["chelsea", "coffee", "astronaut"] {
        let img = image::DynamicImage::ImageRgb8(
            image::open(fixtures().join(format!("photos-96/{photo}.png"))).unwrap().to_rgb8(),
        );
        for (ext, f) in
            [("jpg", image::ImageFormat::Jpeg), ("png", image::ImageFormat::Png), ("webp", image::ImageFormat::WebP)]
        {
            files.push((format!("{photo}.{ext}"), encode(&img, f)));
        }
    }
    files.push(("photo.webp".into(), std::fs::read(fixtures().join("augment/decode/photo.webp")).unwrap()));
    let mut refused = 0;
    for (name, bytes) in &files {
        let whole = decode_rgb(bytes, MAX_PIXELS).unwrap_or_else(|e| panic!("{name}: {e}"));
        let n = bytes.len();
        for (cut, structural) in [(n / 10, false), (n / 2, true), (n * 9 / 10, true), (n - 2, true)] {
            match decode_rgb(&bytes[..cut], MAX_PIXELS) {
                Ok(_) => panic!("{name} cut to {cut} of {n} bytes decoded without an error"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains("truncated"), "{name} cut to {cut}: {msg}");
                    if structural {
                        assert!(matches!(e, DecodeError::Truncated { .. }), "{name} cut to {cut}: {msg}");
                    }
                    refused += 1;
                }
            }
        }
        // trailing garbage (with marker-like bytes) after the end: accepted, the same pixels
        let mut padded = bytes.clone();
        padded.extend_from_slice(b"\xFF\xD8\xFF\xE0 trailing garbage \x00\xFF\xD9\x89PNG");
        let again = decode_rgb(&padded, MAX_PIXELS).unwrap_or_else(|e| panic!("{name} with trailing bytes: {e}"));
        assert!(again == whole, "{name}: trailing bytes changed the pixels");
    }
    eprintln!("truncated: {refused} cut files refused of {} photos x 4 cuts", files.len());
    // a JPEG's EXIF thumbnail ends with its own FFD9: the walk skips it by its segment's length
    let thumb = std::fs::read(fixtures().join("augment/decode/exif-rotated.jpg")).unwrap();
    assert!(decode_rgb(&thumb, MAX_PIXELS).is_ok());
    let err = decode_rgb(&thumb[..thumb.len() - 2], MAX_PIXELS).unwrap_err().to_string();
    assert!(err.contains("truncated JPEG file") && err.contains("end-of-image marker"), "{err}");
}
