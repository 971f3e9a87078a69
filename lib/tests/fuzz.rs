//! Bounded fuzzing on stable Rust (RELIABILITY.md): seeded mutations of valid inputs through every reader of
//! bytes that come from outside: the image decoder and the augmentation after it, the list-file parser, the IDX
//! and `.npy` readers (DATA, features, labels), our checkpoints (safetensors with a matching sidecar hash) and the
//! PyTorch importer (zip and legacy `torch.save` files, and the pickle machine alone), the mask PNGs of
//! `dense-probe`, tar shards; and one property target,
//! `truncated`: a decodable image cut short is refused or decodes to the same pixels, never to others.
//!
//! No cargo-fuzz: it needs a nightly toolchain and libFuzzer, which this project does not assume. Instead each
//! target mutates its seeds with a seeded generator (bit flips, interesting bytes and integers, truncation,
//! deletion, insertion, duplication, splicing, format tokens), so a run is reproducible from its seed.
//!
//! - `make test` runs every target for `LEWEL_FUZZ_INPUTS` inputs (default 150): the same inputs each time, a
//!   regression check.
//! - `make fuzz` runs every target for `LEWEL_FUZZ_SECONDS` seconds each, from `LEWEL_FUZZ_SEED` (default: the
//!   clock, printed), and prints per target the inputs tried, how many were accepted and how many refused.
//!
//! An input that makes a reader panic fails the test; it is saved under `target/fuzz-crashes/` and named. An
//! abort (a stack overflow, a failed allocation) ends the process at once: the input being tried is always in
//! `$TMPDIR/lewel-fuzz-<target>-<pid>/input`, named when the target starts. Each crash found becomes a
//! regression test at the end of this file.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use lewel::data::Dataset;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A position in `len` bytes, half the time among the first 512 (headers live there).
fn position(rng: &mut Rng, len: usize) -> usize {
    if rng.below(2) == 0 {
        rng.below(len.min(512))
    } else {
        rng.below(len)
    }
}

const INTERESTING_U32: [u32; 10] = [0, 1, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 65_536];

/// One to eight mutations of `seed`.
fn mutate(rng: &mut Rng, seed: &[u8], seeds: &[Vec<u8>], tokens: &[&[u8]]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        if v.is_empty() {
            v.push(rng.next() as u8);
        }
        let len = v.len();
        match rng.below(10) {
            0 => {
                let i = position(rng, len);
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = position(rng, len);
                v[i] = [0, 0xff, 0x7f, 0x80, 1, rng.next() as u8][rng.below(6)];
            }
            2 => v.truncate(position(rng, len)),
            3 => {
                let i = position(rng, len);
                let n = (1 + rng.below(16)).min(len - i);
                v.drain(i..i + n);
            }
            4 => {
                let i = position(rng, len);
                let bytes: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                v.splice(i..i, bytes);
            }
            5 => {
                let (a, b) = (position(rng, len), position(rng, len));
                let n = (1 + rng.below(64)).min(len - a);
                let chunk = v[a..a + n].to_vec();
                v.splice(b..b, chunk);
            }
            6 if len >= 4 => {
                let i = position(rng, len - 3);
                let x = INTERESTING_U32[rng.below(INTERESTING_U32.len())];
                let bytes = if rng.below(2) == 0 { x.to_le_bytes() } else { x.to_be_bytes() };
                v[i..i + 4].copy_from_slice(&bytes);
            }
            7 if !tokens.is_empty() => {
                let t = tokens[rng.below(tokens.len())];
                let i = position(rng, len);
                if rng.below(2) == 0 {
                    v.splice(i..i, t.iter().copied());
                } else {
                    let n = t.len().min(len - i);
                    v[i..i + n].copy_from_slice(&t[..n]);
                }
            }
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let (a, b) = (position(rng, len), rng.below(other.len()));
                    v.truncate(a);
                    v.extend_from_slice(&other[b..]);
                }
            }
        }
    }
    v
}

/// How long each target runs.
enum Budget {
    Inputs(usize),
    Time(Duration),
}

fn budget() -> (Budget, u64) {
    let seed = std::env::var("LEWEL_FUZZ_SEED").ok().and_then(|s| s.parse().ok());
    match std::env::var("LEWEL_FUZZ_SECONDS").ok().and_then(|s| s.parse::<f64>().ok()) {
        Some(s) => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
            });
            (Budget::Time(Duration::from_secs_f64(s)), seed)
        }
        None => {
            let n = std::env::var("LEWEL_FUZZ_INPUTS").ok().and_then(|s| s.parse().ok()).unwrap_or(150);
            (Budget::Inputs(n), seed.unwrap_or(12))
        }
    }
}

/// Runs `target` over mutations of `seeds` (the seeds themselves first): `check` returns `Ok` when the input
/// was read, `Err` when it was refused with an error; a panic is a crash. Panics at the end if any input crashed.
fn fuzz(target: &str, seeds: Vec<Vec<u8>>, tokens: &[&[u8]], mut check: impl FnMut(&[u8], &Path) -> Result<()>) {
    let (budget, seed) = budget();
    let work = std::env::temp_dir().join(format!("lewel-fuzz-{target}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let input = work.join("input");
    eprintln!("FUZZ {target}: seed {seed}; the input being tried is {}", input.display());
    let mut rng = Rng(seed ^ lewel::data::rng::mix64(target.len() as u64 + target.bytes().map(u64::from).sum::<u64>()));
    let (mut tried, mut accepted, mut crashes) = (0usize, 0usize, Vec::new());
    let t0 = Instant::now();
    let mut messages = std::collections::BTreeMap::<String, usize>::new();
    loop {
        match budget {
            Budget::Inputs(n) if tried >= n => break,
            Budget::Time(d) if t0.elapsed() >= d => break,
            _ => {}
        }
        let bytes = if tried < seeds.len() {
            seeds[tried].clone()
        } else {
            let s = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, s, &seeds, tokens)
        };
        std::fs::write(&input, &bytes).unwrap();
        tried += 1;
        match std::panic::catch_unwind(AssertUnwindSafe(|| check(&bytes, &work))) {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(e)) => {
                // the kind of refusal, without the numbers and paths that vary
                let msg = format!("{e:#}").replace(&work.display().to_string(), "");
                let key: String = msg.chars().filter(|c| c.is_alphabetic() || *c == ' ').take(60).collect();
                *messages.entry(key).or_default() += 1;
            }
            Err(_) => {
                let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-crashes");
                std::fs::create_dir_all(&dir).unwrap();
                let name =
                    dir.join(format!("{target}-{:016x}.bin", lewel::data::rng::mix64(bytes.len() as u64 ^ rng.next())));
                std::fs::write(&name, &bytes).unwrap();
                crashes.push(name);
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "FUZZ {target}: {tried} inputs in {secs:.1} s ({:.0}/s): {accepted} read, {} refused with an error ({} kinds), {} crashes",
        tried as f64 / secs.max(1e-9),
        tried - accepted - crashes.len(),
        messages.len(),
        crashes.len()
    );
    if std::env::var_os("LEWEL_FUZZ_VERBOSE").is_some() {
        let mut kinds: Vec<(&String, &usize)> = messages.iter().collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(*k.1));
        for (k, n) in kinds.iter().take(8) {
            eprintln!("FUZZ {target}:   {n:6} x {k}");
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    assert!(crashes.is_empty(), "{target}: inputs that crashed a reader, saved as {crashes:#?}");
}

fn read(p: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut v = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut v), format).unwrap();
    v
}

/// The decoder, then the two training views of every recipe family and the eval transform.
#[test]
fn fuzz_image_decoding_and_augmentation() {
    use lewel::data::decode::decode_rgb;
    use lewel::data::view::{apply_eval, apply_view, sample_view};
    let mut seeds: Vec<Vec<u8>> =
        std::fs::read_dir(fixtures().join("augment/decode")).unwrap().map(|e| read(e.unwrap().path())).collect();
    let small = image::RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 99]));
    seeds.push(encode(small.clone().into(), image::ImageFormat::Png));
    seeds.push(encode(small.clone().into(), image::ImageFormat::Jpeg));
    seeds.push(encode(image::DynamicImage::ImageLuma8(image::imageops::grayscale(&small)), image::ImageFormat::Png));
    seeds.push(lewel_testkit::png_claiming(3000, 3000));
    seeds.push(lewel_testkit::jpeg_claiming(4000, 3000));
    let recipes: Vec<lewel::data::Recipe> =
        ["lewel-b-small", "mocov2-small"].iter().map(|r| lewel::data::Recipe::preset(r).unwrap()).collect();
    let tokens: &[&[u8]] = &[
        b"\xff\xd8",
        b"\xff\xc0",
        b"\xff\xda",
        b"\xff\xd9",
        b"IHDR",
        b"IDAT",
        b"IEND",
        b"PLTE",
        b"eXIf",
        b"VP8 ",
        b"VP8L",
        b"RIFF",
    ];
    let mut k = 0u64;
    fuzz("decode", seeds, tokens, |bytes, _| {
        // A cap of 2^20 pixels keeps each input fast; the cap itself is the same check as in production.
        let img = decode_rgb(bytes, 1 << 20)?;
        k += 1;
        let recipe = &recipes[(k % 2) as usize];
        let mut out = vec![0f32; 3 * (recipe.size * recipe.size) as usize];
        let mut rng = lewel::data::rng::Rng::from_key(&[k]);
        for v in [&recipe.view1, &recipe.view2] {
            let p = sample_view(v, img.width(), img.height(), &mut rng);
            apply_view(&img, &p, recipe, &mut out);
            assert!(out.iter().all(|x| x.is_finite()), "a view with a non-finite value");
        }
        let mut eval = vec![0f32; 3 * (recipe.eval_crop * recipe.eval_crop) as usize];
        apply_eval(&img, recipe, &mut eval);
        assert!(eval.iter().all(|x| x.is_finite()));
        Ok(())
    });
}

/// Truncation (RELIABILITY.md, "truncated image"): every input that decodes (a seed, or a mutation of one) is cut
/// at a random length, and the cut file must either be refused or decode to exactly the same pixels (the cut took
/// only bytes after the file's end marker). A cut file decoded into other pixels (the missing part filled in
/// without a word) fails the target, as a crash does.
#[test]
fn fuzz_truncated_images() {
    use lewel::data::decode::decode_rgb;
    let mut seeds: Vec<Vec<u8>> =
        std::fs::read_dir(fixtures().join("augment/decode")).unwrap().map(|e| read(e.unwrap().path())).collect();
    for photo in ["chelsea", "coffee", "rocket"] {
        let img = image::DynamicImage::ImageRgb8(
            image::open(fixtures().join(format!("photos-96/{photo}.png"))).unwrap().to_rgb8(),
        );
        for f in [image::ImageFormat::Jpeg, image::ImageFormat::Png, image::ImageFormat::WebP] {
            seeds.push(encode(img.clone(), f));
        }
    }
    let tokens: &[&[u8]] = &[b"\xff\xd9", b"\xff\xda", b"\xff\x00", b"\xff\xd0", b"IEND", b"IDAT", b"RIFF"];
    let mut rng = Rng(0x7E5C_A7ED);
    fuzz("truncated", seeds, tokens, |bytes, _| {
        let whole = decode_rgb(bytes, 1 << 20)?;
        // half the cuts in the last tenth of the file, where a cut is hardest to see
        let n = bytes.len();
        let cut = if rng.below(2) == 0 { n - 1 - rng.below(n / 10 + 1).min(n - 1) } else { rng.below(n) };
        if let Ok(part) = decode_rgb(&bytes[..cut], 1 << 20) {
            assert!(part == whole, "cut to {cut} of {n} bytes, the file decoded into other pixels without an error");
        }
        Ok(())
    });
}

/// List files (`<label> <path>` and bare SimCLR names), against a root with two class folders.
#[test]
fn fuzz_list_files() {
    let seeds: Vec<Vec<u8>> = vec![
        b"0 a/x.jpg\n1 b/y.png\n\n0 a/z.webp\n".to_vec(),
        b"n01_1.JPEG\r\nn02_7.JPEG\r\n".to_vec(),
        b"3 deep/er/path with space.jpg\n".to_vec(),
        read(fixtures().join("imagenet-subsets/1percent.txt"))[..2048].to_vec(),
        read(fixtures().join("imagenet-subsets/1percent.txt.ext"))[..2048].to_vec(),
    ];
    let tokens: &[&[u8]] =
        &[b" ", b"\t", b"\n", b"\r\n", b"-1", b"99999999999999999999", b"../", b"/", b"_", b"n01", b"\xff\xfe", b"\0"];
    let mut root = None;
    fuzz("list", seeds, tokens, |bytes, work| {
        let root = root.get_or_insert_with(|| {
            let r = work.join("root");
            for c in ["n01", "n02"] {
                std::fs::create_dir_all(r.join(c)).unwrap();
            }
            std::fs::write(r.join("n01/n01_1.JPEG"), lewel_testkit::png_claiming(2, 2)).unwrap();
            r
        });
        let list = work.join("list.txt");
        std::fs::write(&list, bytes)?;
        let with_root = lewel::data::dataset::FileList::from_list(&list, Some(root.as_path()));
        let without = lewel::data::dataset::FileList::from_list(&list, None);
        for fl in [with_root, without].into_iter().flatten() {
            let _ = (fl.describe(), fl.fingerprint(), fl.num_classes());
            for i in 0..fl.len().min(3) {
                let _ = (fl.label(i), fl.name(i), fl.load(i));
            }
        }
        let _ = lewel::data::open(&lewel::data::DataSpec { path: list, root: Some(root.clone()), strict: false })?;
        Ok(())
    });
}

/// A tar shard in memory: `(member name, bytes)` in order, as `tar` (GNU headers for long names) writes it.
fn tar_bytes(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Tar shards as DATA (webdataset layout): the shard indexer (headers, members grouped by key, `.cls` labels,
/// damaged tails), then every item it accepted through the decoder, and the epoch order over its shards.
#[test]
fn fuzz_tar_shards() {
    let png = encode(
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(5, 4, |x, y| {
            image::Rgb([x as u8 * 40, y as u8 * 60, 7])
        })),
        image::ImageFormat::Png,
    );
    let jpg = encode(
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(8, 8, |x, y| {
            image::Rgb([x as u8 * 30, 90, y as u8 * 30])
        })),
        image::ImageFormat::Jpeg,
    );
    let long = format!("{}/0003.png", "d".repeat(120));
    let seeds = vec![
        tar_bytes(&[
            ("0001.png", png.clone()),
            ("0001.cls", b"3".to_vec()),
            ("0002.jpg", jpg.clone()),
            ("0002.cls", b"1\n".to_vec()),
        ]),
        tar_bytes(&[("a/0001.jpg", jpg.clone()), ("a/0001.json", b"{}".to_vec()), ("a/0002.png", png.clone())]),
        tar_bytes(&[(long.as_str(), png.clone()), ("0004.txt", b"x".to_vec()), ("0005.webp", b"RIFF".to_vec())]),
        tar_bytes(&[("0001.cls", b"7".to_vec()), ("0001.png", png)]),
    ];
    let tokens: &[&[u8]] = &[
        b"ustar\0",
        b"ustar  \0",
        b"0000644\0",
        b"00000000000\0",
        b"77777777777\0",
        b".cls",
        b".jpg",
        b".png",
        b"././@LongLink",
        b"\0\0\0\0\0\0\0\0",
        b"-1",
        b"99999999999999999999",
    ];
    fuzz("shards", seeds, tokens, |bytes, work| {
        let p = work.join("shard-000000.tar");
        std::fs::write(&p, bytes)?;
        let ds = lewel::data::shards::TarShards::open("fuzz".into(), vec![p.clone()])?;
        let _ = (ds.describe(), ds.fingerprint(), ds.num_classes(), ds.shard_sizes().map(|s| s.to_vec()));
        for i in 0..ds.len().min(6) {
            let _ = (ds.name(i), ds.label(i), ds.load(i));
        }
        let _ = lewel::data::open(&lewel::data::DataSpec { path: p, root: None, strict: false })?;
        Ok(())
    });
}

fn idx_file(dims: &[u32], kind: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, kind, dims.len() as u8];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(data);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, bytes).unwrap();
    gz.finish().unwrap()
}

/// IDX images with their labels file next to them, raw and gzipped: each input is split in two at a marker
/// (images, then labels) so that both files are mutated.
#[test]
fn fuzz_idx_files() {
    const SPLIT: &[u8] = b"--labels--";
    let pixels: Vec<u8> = (0..3 * 5 * 4).map(|i| (i * 7) as u8).collect();
    let pair = |images: Vec<u8>, labels: Vec<u8>| [images, SPLIT.to_vec(), labels].concat();
    let seeds = vec![
        pair(idx_file(&[3, 5, 4], 0x08, &pixels), idx_file(&[3], 0x08, &[1, 0, 2])),
        pair(idx_file(&[3, 5, 4], 0x08, &pixels), Vec::new()),
        pair(idx_file(&[2, 1, 1], 0x08, &[9, 9]), idx_file(&[2], 0x08, &[0, 9])),
    ];
    let tokens: &[&[u8]] = &[b"\x00\x00\x08\x03", b"\x00\x00\x08\x01", b"\x00\x00\x0d\x03", b"\xff\xff\xff\xff", SPLIT];
    let mut k = 0;
    fuzz("idx", seeds, tokens, |bytes, work| {
        k += 1;
        let (images, labels) = match bytes.windows(SPLIT.len()).position(|w| w == SPLIT) {
            Some(i) => (&bytes[..i], Some(&bytes[i + SPLIT.len()..])),
            None => (bytes, None),
        };
        let gz = k % 3 == 0;
        let dir = work.join(format!("idx{}", k % 2));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ext = if gz { ".gz" } else { "" };
        let img_path = dir.join(format!("fz-images-idx3-ubyte{ext}"));
        std::fs::write(&img_path, if gz { gzip(images) } else { images.to_vec() })?;
        if let Some(l) = labels.filter(|l| !l.is_empty()) {
            std::fs::write(dir.join(format!("fz-labels-idx1-ubyte{ext}")), if gz { gzip(l) } else { l.to_vec() })?;
        }
        let ds = lewel::data::arrays::Idx::open(&img_path)?;
        let _ = (ds.describe(), ds.fingerprint(), ds.num_classes());
        for i in 0..ds.len().min(4) {
            let _ = (ds.label(i), ds.name(i), ds.load(i)?);
        }
        Ok(())
    });
}

fn png_mask(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut e = png::Encoder::new(&mut out, w, h);
        e.set_color(color);
        e.set_depth(depth);
        if color == png::ColorType::Indexed {
            e.set_palette((0..=255u8).flat_map(|i| [i, 255 - i, i / 2]).collect::<Vec<u8>>());
        }
        e.write_header().unwrap().write_image_data(data).unwrap();
    }
    out
}

/// The segmentation masks of `dense-probe` (VOC's palette PNGs, 8-bit greyscale): read as class ids, one per pixel,
/// or refused with an error.
#[test]
fn fuzz_mask_pngs() {
    use png::{BitDepth, ColorType};
    let seeds = vec![
        png_mask(5, 3, ColorType::Indexed, BitDepth::Eight, &[0, 1, 2, 255, 3, 1, 1, 0, 0, 2, 255, 255, 4, 4, 0]),
        png_mask(6, 2, ColorType::Indexed, BitDepth::Four, &[0x12, 0x30, 0xf1, 0x01, 0x23, 0x45]),
        png_mask(9, 2, ColorType::Indexed, BitDepth::One, &[0b1010_1010, 0b1000_0000, 0b0101_0101, 0]),
        png_mask(4, 4, ColorType::Grayscale, BitDepth::Eight, &(0..16).collect::<Vec<u8>>()),
        png_mask(2, 2, ColorType::Rgb, BitDepth::Eight, &[0; 12]),
    ];
    let tokens: &[&[u8]] = &[b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"\x89PNG\r\n\x1a\n"];
    fuzz("mask-png", seeds, tokens, |bytes, work| {
        let p = work.join("mask.png");
        std::fs::write(&p, bytes)?;
        let m = lewel::eval::dense::inputs::read_png_ids(&p)?;
        assert_eq!(m.ids.len(), m.w * m.h, "a mask must hold one id per pixel");
        Ok(())
    });
}

fn npy_bytes<T: npyz::Serialize + npyz::AutoSerialize + Copy>(shape: &[u64], data: &[T]) -> Vec<u8> {
    use npyz::WriterBuilder;
    let mut out = Vec::new();
    {
        let mut w = npyz::WriteOptions::<T>::new()
            .default_dtype()
            .shape(shape)
            .writer(std::io::Cursor::new(&mut out))
            .begin_nd()
            .unwrap();
        w.extend(data.iter().copied()).unwrap();
        w.finish().unwrap();
    }
    out
}

/// `.npy` as DATA (uint8 images, float32 tensors), as features (float32 matrices) and as labels.
#[test]
fn fuzz_npy_files() {
    let seeds = vec![
        npy_bytes::<u8>(&[2, 4, 3], &(0..24).collect::<Vec<u8>>()),
        npy_bytes::<u8>(&[2, 3, 2, 3], &(0..36).collect::<Vec<u8>>()),
        npy_bytes::<f32>(&[2, 3, 2, 2], &(0..24).map(|i| i as f32 * 0.1).collect::<Vec<_>>()),
        npy_bytes::<f32>(&[4, 3], &(0..12).map(|i| i as f32).collect::<Vec<_>>()),
        npy_bytes::<f64>(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        npy_bytes::<i64>(&[4], &[0, 1, 2, 1]),
        npy_bytes::<u8>(&[3], &[0, 1, 2]),
    ];
    let tokens: &[&[u8]] = &[
        b"99999999999",
        b"4294967296",
        b"(",
        b")",
        b", ",
        b"'<f4'",
        b"'|u1'",
        b"'<i8'",
        b"'>f4'",
        b"True",
        b"'fortran_order': True",
        b"'shape': (",
        b"\x93NUMPY\x01\x00",
        b"\x93NUMPY\x02\x00",
    ];
    fuzz("npy", seeds, tokens, |bytes, work| {
        let p = work.join("x.npy");
        std::fs::write(&p, bytes)?;
        let features = lewel::eval::features::read_f32_matrix(&p);
        let labels = lewel::eval::features::read_labels(&p);
        let ds = lewel::data::arrays::open_npy(&p)?;
        let _ = (ds.describe(), ds.fingerprint(), features.is_ok(), labels.is_ok());
        for i in 0..ds.len().min(4) {
            if ds.prepared().is_some() {
                let _ = ds.load_prepared(i)?;
            } else {
                let _ = ds.load(i)?;
            }
        }
        Ok(())
    });
}

/// Our checkpoints with a matching sidecar hash (as a buggy or hostile writer would leave them): the
/// safetensors parser and the model loader behind `open_model` (keys, shapes, dtypes).
#[test]
fn fuzz_our_checkpoints() {
    let d = lewel_testkit::scratch("fuzz-ckpt-seed");
    let ck = lewel_testkit::tiny_checkpoint(&d, false);
    let sidecar = std::fs::read_to_string(lewel::ckpt::sidecar_path(&ck)).unwrap();
    // Well-formed files with the wrong content, as seeds: a tensor dropped, renamed, flattened, of another dtype,
    // emptied, full of NaN, or one too many.
    let state = lewel::ckpt::read_safetensors(&ck).unwrap();
    let mut seeds = vec![read(&ck)];
    let mut rng = Rng(7);
    for variant in 0..14 {
        let mut t: Vec<(String, tch::Tensor)> = state.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        let i = rng.below(t.len());
        match variant % 7 {
            0 => {
                drop(t.remove(i));
            }
            1 => t[i].0.push_str(".renamed"),
            2 => t[i].1 = t[i].1.flatten(0, -1),
            3 => t[i].1 = t[i].1.to_kind([tch::Kind::Double, tch::Kind::Int64, tch::Kind::Half][rng.below(3)]),
            4 => t[i].1 = t[i].1.flatten(0, -1).narrow(0, 0, 0),
            5 => t[i].1 = t[i].1.to_kind(tch::Kind::Float).fill(f64::NAN),
            _ => t.push((
                "online_net.extra.weight".into(),
                tch::Tensor::zeros([3, 3], (tch::Kind::Float, tch::Device::Cpu)),
            )),
        }
        seeds.push(lewel::ckpt::to_safetensors_bytes(&t, None).unwrap());
    }
    let tokens: &[&[u8]] = &[
        b"\"dtype\":\"F32\"",
        b"\"dtype\":\"I64\"",
        b"\"shape\":[",
        b"\"data_offsets\":[",
        b"]",
        b"}",
        b"99999999999",
    ];
    fuzz("checkpoint", seeds, tokens, |bytes, work| {
        let dir = work.join("ckpt");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(lewel::ckpt::file_name(1));
        std::fs::write(&p, bytes)?;
        let mut side: serde_json::Value = serde_json::from_str(&sidecar).unwrap();
        side["sha256"] = lewel::hex::sha256(bytes).into();
        std::fs::write(lewel::ckpt::sidecar_path(&p), side.to_string())?;
        let _ = lewel::ckpt::read_safetensors(&p)?;
        lewel::ckpt::open_model(&p, tch::Device::Cpu)?;
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&d);
}

/// The PyTorch importer end to end (`export-backbone`, `embed --ckpt FILE.pth`...): an official zip checkpoint
/// and a legacy `torch.save` file, mutated.
#[test]
fn fuzz_pytorch_checkpoints() {
    let seeds = vec![
        read(fixtures().join("export/official-tiny.pth.tar")),
        read(fixtures().join("export/extract-backbone-tiny.pth")),
    ];
    let tokens: &[&[u8]] =
        &[b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"\x80\x02", b"q\x00", b"h\x01", b"}", b"(", b"t", b"R", b"."];
    fuzz("pytorch", seeds, tokens, |bytes, work| {
        let p = work.join("x.pth");
        std::fs::write(&p, bytes)?;
        let cfg = lewel::export::ExportConfig {
            ckpt: p,
            from: lewel::export::Source::Auto,
            format: lewel::export::Format::Lewel,
            out: work.join("unused"),
            verify: false,
            groups: None,
            proj_dim: None,
            hidden_dim: None,
            seed: 0,
        };
        let mut sink = lewel::events::DiscardSink;
        lewel::export::import(&cfg, &mut sink)?;
        Ok(())
    });
}

/// The pickle machine alone, on the pickles of both checkpoint fixtures.
#[test]
fn fuzz_pickles() {
    let official = read(fixtures().join("export/official-tiny.pth.tar"));
    let archive = lewel::export::archive::Archive::parse(&official).unwrap();
    let pkl = archive.entries().iter().find(|e| e.name.ends_with("data.pkl")).unwrap().clone();
    let legacy = read(fixtures().join("export/extract-backbone-tiny.pth"));
    let seeds = vec![archive.read(&pkl).unwrap().into_owned(), legacy[..legacy.len().min(4096)].to_vec()];
    // opcodes that build, reference and call
    let tokens: &[&[u8]] = &[
        b"(",
        b")",
        b"]",
        b"}",
        b"a",
        b"e",
        b"s",
        b"u",
        b"t",
        b"R",
        b"b",
        b"c",
        b"h\x00",
        b"q\x00",
        b"j\x00\x00\x00\x00",
        b"r\x00\x00\x00\x00",
        b"\x85",
        b"\x86",
        b"\x87",
        b"\x93",
        b"\x94",
        b".",
    ];
    fuzz("pickle", seeds, tokens, |bytes, _| {
        let loaded = lewel::export::pickle::load(bytes)?;
        let _ = loaded.value.describe();
        let _ = lewel::export::torchfile::TorchFile::parse(bytes);
        Ok(())
    });
}

// Regressions: the crashes the fuzzing found, each fixed.

/// fuzz_idx_files, seed 12: an IDX header whose sizes multiply past `usize` made the reader panic (attempt to
/// multiply with overflow; in a release build the product wrapped to a small size, and loading an item sliced
/// out of bounds). Now a clear error.
#[test]
fn regression_idx_header_sizes_that_overflow() {
    let d = lewel_testkit::scratch("fuzz-regress-idx");
    let p = d.join("x-images-idx3-ubyte");
    std::fs::write(&p, idx_file(&[u32::MAX, u32::MAX, 2], 0x08, &[1, 2, 3])).unwrap();
    let err = lewel::data::arrays::Idx::open(&p).err().expect("refused");
    assert!(format!("{err:#}").contains("too large"), "{err:#}");
    // gzipped too, and a header announcing more than the stream holds
    let gz = d.join("y-images-idx3-ubyte.gz");
    std::fs::write(&gz, gzip(&idx_file(&[1000, 28, 28], 0x08, &[0; 10]))).unwrap();
    let err = lewel::data::arrays::Idx::open(&gz).err().expect("refused");
    assert!(format!("{err:#}").contains("truncated IDX data (10 of 784000 bytes)"), "{err:#}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Found by reading the `.npy` readers while writing the fuzz targets: a header whose shape multiplies past
/// `usize`, or announces far more data than the file holds, must be a clear error, not an overflow panic or an
/// allocation of the announced size.
#[test]
fn regression_npy_headers_announcing_huge_shapes() {
    let d = lewel_testkit::scratch("fuzz-regress-npy");
    let header = |descr: &str, shape: &str| {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend((h.len() as u16).to_le_bytes());
        v.extend(h.as_bytes());
        v.extend([0u8; 64]);
        v
    };
    for (descr, shape) in [
        ("<f4", "(4611686018427387904, 8)"),
        ("<f4", "(1000000000, 1000000)"),
        ("<i8", "(4611686018427387904,)"),
        ("|u1", "(4294967296, 4294967296, 3)"),
        ("<f4", "(100000, 3, 1000, 1000)"),
    ] {
        let p = d.join("x.npy");
        std::fs::write(&p, header(descr, shape)).unwrap();
        let m = lewel::eval::features::read_f32_matrix(&p);
        let l = lewel::eval::features::read_labels(&p);
        let a = lewel::data::arrays::open_npy(&p);
        assert!(m.is_err() && l.is_err() && a.is_err(), "{descr} {shape}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Found by reading the pickle machine while writing the fuzz targets: a pickle that nests lists a million deep
/// (2 MB: `]` a million times, then `a` to append each into the one below) overflowed the stack when the value
/// was dropped, aborting the process (SIGABRT) instead of failing with an error. Also refused now: the same
/// nesting built from the top down through the memo, and a list that holds itself.
#[test]
fn regression_pickle_nesting_a_million_deep() {
    let refused = |p: &[u8], what: &str| {
        let err = lewel::export::pickle::load(p).err().unwrap_or_else(|| panic!("{what}: not refused"));
        let msg = format!("{err:#}");
        assert!(msg.contains("nested more than 512 deep") || msg.contains("grew deeper after"), "{what}: {msg}");
    };
    let n = 1_000_000;
    let mut p = b"\x80\x02".to_vec();
    p.extend(std::iter::repeat_n(b']', n));
    p.extend(std::iter::repeat_n(b'a', n - 1));
    p.push(b'.');
    refused(&p, "bottom-up");
    // top-down: L0; then get L(i-1), push L(i), memoize it, append it into L(i-1), pop
    let mut p = b"\x80\x02]r\x00\x00\x00\x00".to_vec();
    for i in 1..2000u32 {
        p.push(b'j');
        p.extend((i - 1).to_le_bytes());
        p.push(b']');
        p.push(b'r');
        p.extend(i.to_le_bytes());
        p.extend(b"a0");
    }
    p.extend(b"j\x00\x00\x00\x00.");
    refused(&p, "top-down");
    refused(b"\x80\x02]q\x00h\x00a.", "self-reference");
    // 500 deep is fine
    let mut p = b"\x80\x02".to_vec();
    p.extend(std::iter::repeat_n(b']', 500));
    p.extend(std::iter::repeat_n(b'a', 499));
    p.push(b'.');
    assert!(lewel::export::pickle::load(&p).is_ok());
}
