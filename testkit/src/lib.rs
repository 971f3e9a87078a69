//! `lewel-testkit`: helpers for the tests of the workspace (the black-box tests in `tools/<tool>/tests/`,
//! `lib/tests/`, and a few of lib's unit tests). A `[dev-dependencies]` crate only: nothing here ships in
//! the tools, in particular not the code that drops root's file capabilities ([`without_root_file_access`]).
//! (It was `lewel::testing` until issue 19.)

use std::process::{Command, Output};

/// Runs a tool binary with `args` and returns its output.
pub fn run_tool(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("could not run {bin}: {e}"))
}

/// Checks that `bin --help` exits 0, lists every exit code and ends with an example.
pub fn check_help(bin: &str, example_fragment: &str) {
    let out = run_tool(bin, &["--help"]);
    assert_eq!(out.status.code(), Some(0), "--help failed: {}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["Exit codes", "  0 ", "  1 ", "  2 ", "  3 ", "  130 ", "Example", example_fragment] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

/// Writes a C-ordered float32 `.npy` file (test inputs such as view pairs).
pub fn write_npy_f32(path: &std::path::Path, shape: &[u64], data: &[f32]) {
    use npyz::WriterBuilder;
    let mut w = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(shape)
        .writer(std::fs::File::create(path).expect("create npy"))
        .begin_nd()
        .expect("npy header");
    w.extend(data.iter().copied()).expect("npy data");
    w.finish().expect("npy finish");
}

/// Deterministic pseudo-random values in [-1, 1) (SplitMix64), for test inputs.
pub fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Parses JSON lines (panics on a line that is not a JSON object).
pub fn json_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "not an object: {l}");
            v
        })
        .collect()
}

/// A fresh, empty scratch folder for one test: `$TMPDIR/lewel-test-NAME-PID` (the process id keeps
/// test binaries that run at the same time apart; NAME keeps the tests of one binary apart).
pub fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("lewel-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch folder");
    d
}

/// A tiny LEWEL_B checkpoint (ResNet-18, CIFAR stem, width 4, K 8, hidden 16; seed 3) written with its
/// sidecar into the folder `dir` (created). With `move_bn_stats`, one training forward on noise moves
/// the BN running statistics off their defaults first. Returns the checkpoint file.
pub fn tiny_checkpoint(dir: &std::path::Path, move_bn_stats: bool) -> std::path::PathBuf {
    use lewel::model::{Arch, Lewel, ModelConfig, Stem};
    tch::manual_seed(3);
    let cfg = ModelConfig {
        arch: Arch::Resnet18,
        stem: Stem::Cifar,
        width: 4,
        proj_dim: 8,
        hidden_dim: 16,
        ..ModelConfig::default()
    };
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = Lewel::new(&vs, &cfg).expect("tiny model");
    if move_bn_stats {
        let x = tch::Tensor::randn([8, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
        let _ = model.forward_loss(&x, &x.flip([3])).expect("forward");
    }
    std::fs::create_dir_all(dir).expect("checkpoint folder");
    lewel::ckpt::save(dir, 1, 0, &model.state_dict(), &serde_json::json!({"config": {"model": cfg}})).expect("save")
}

/// Whether this process runs as root (which reads and writes any file whatever its permissions).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Makes `cmd` run without root's power over file permissions (the capabilities `CAP_DAC_OVERRIDE` and
/// `CAP_DAC_READ_SEARCH` are dropped from its bounding set before `exec`), so that a read-only folder or an
/// unreadable file is one for the tool too, as for any other user. Nothing to do when not root. Returns
/// false when it cannot be done (root without `CAP_SETPCAP`, in some containers): the caller skips what
/// needs it, saying so.
pub fn without_root_file_access(cmd: &mut Command) -> bool {
    use std::os::unix::process::CommandExt;
    if !is_root() {
        return true;
    }
    const CAP_SETPCAP: u32 = 8;
    let can = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string())))
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SETPCAP) != 0);
    if !can {
        return false;
    }
    // SAFETY: prctl is async-signal-safe, and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            const PR_CAPBSET_DROP: libc::c_int = 24;
            const CAP_DAC_OVERRIDE: libc::c_ulong = 1;
            const CAP_DAC_READ_SEARCH: libc::c_ulong = 2;
            for cap in [CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH] {
                if libc::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    true
}

/// A labelled image folder (classes `a` and `b`) seeded with every kind of bad file the tools must survive
/// (RELIABILITY.md), made at test time by [`bad_data`].
pub struct BadData {
    /// The folder (DATA).
    pub dir: std::path::PathBuf,
    /// Good images (PNG and JPEG, 40x36).
    pub good: usize,
    /// The bad items in the order the tools list them (torchvision's: sorted), each with what is wrong.
    pub bad: Vec<(std::path::PathBuf, &'static str)>,
}

impl BadData {
    /// Every item (good and bad).
    pub fn len(&self) -> usize {
        self.good + self.bad.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Runs a tool that reads this data: without root's file access where that can be dropped (see
    /// [`without_root_file_access`]). Returns its output and the bad items it must report: all of them, or all
    /// but the mode-000 file when the tool runs as root with its full access (said on stderr).
    pub fn run(&self, cmd: &mut Command) -> (Output, Vec<std::path::PathBuf>) {
        let dropped = without_root_file_access(cmd);
        if !dropped {
            eprintln!("NOTE: root without CAP_SETPCAP reads a mode-000 file: the unreadable-file case is not tried");
        }
        let out = cmd.env("OMP_NUM_THREADS", "1").output().expect("run the tool");
        let bad = self.bad.iter().filter(|(p, _)| dropped || !p.ends_with("unreadable.jpg")).map(|b| b.0.clone());
        (out, bad.collect())
    }

    /// Checks a run that must finish (exit 0) and name every bad item in a `warn` event (its `message` or
    /// `file`). Returns the number of `warn` events.
    pub fn assert_skipped_and_reported(&self, tool: &str, out: &Output, bad: &[std::path::PathBuf]) -> usize {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{tool} on bad data: {stderr}");
        let warns: Vec<String> = json_lines(&out.stdout)
            .into_iter()
            .filter(|e| e["event"] == "warn")
            .map(|e| format!("{} {}", e["file"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or("")))
            .collect();
        for p in bad {
            let name = p.display().to_string();
            let what = self.bad.iter().find(|b| &b.0 == p).map_or("", |b| b.1);
            assert!(
                warns.iter().any(|w| w.contains(&name)),
                "{tool} did not report the {what} {name}; it reported {warns:#?}"
            );
        }
        warns.len()
    }

    /// Checks a `--strict` run: exit 1, and the error on stderr names a bad item (`first`: that one, the first in
    /// the data's order, for tools that read in order). Returns the error line.
    pub fn assert_strict_fails(&self, tool: &str, out: &Output, first: bool) -> String {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{tool} --strict on bad data: {stderr}");
        let line = stderr.lines().find(|l| l.contains(": error: ")).unwrap_or_default().to_string();
        let named: Vec<&std::path::PathBuf> =
            self.bad.iter().map(|b| &b.0).filter(|p| line.contains(&p.display().to_string())).collect();
        assert!(!named.is_empty(), "{tool} --strict names no bad file: {stderr}");
        if first {
            assert_eq!(named[0], &self.bad[0].0, "{tool} --strict does not name the first bad file: {stderr}");
        }
        line
    }
}

/// Encodes a small deterministic picture.
fn picture(seed: u32, format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(40, 36, |x, y| {
        image::Rgb([(x * 6 + seed * 40) as u8, (y * 7 + seed * 17) as u8, ((x + y) * 3 + seed * 90) as u8])
    });
    let mut v = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut v), format)
        .expect("encode a test image");
    v
}

/// A PNG whose header claims `width` x `height` pixels (valid chunks and CRCs) and holds one row of pixel data.
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        let mut body = kind.to_vec();
        body.extend(data);
        v.extend((data.len() as u32).to_be_bytes());
        v.extend(&body);
        v.extend(crc32fast::hash(&body).to_be_bytes());
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    chunk(b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut z, &[0u8; 64]).expect("zlib");
    chunk(b"IDAT", &z.finish().expect("zlib"));
    chunk(b"IEND", b"");
    v
}

/// A JPEG whose frame header claims `width` x `height` pixels: a real small JPEG with its SOF0 sizes rewritten.
pub fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let mut v = picture(9, image::ImageFormat::Jpeg);
    let sof = v.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a baseline JPEG has SOF0");
    v[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    v[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    v
}

/// The bad-data check of a probe (`knn-probe` or `linear-probe`, the binary `bin`) reading images through a tiny
/// checkpoint: every kind of bad file in the training and the validation data (`dir/train`, `dir/val`) is named in
/// a `warn` event and the probe finishes with one result; `--strict` fails naming one (a validation file for the
/// linear probe, which reads the validation split first).
pub fn check_probe_bad_data(bin: &str, tool: &str, dir: &std::path::Path) {
    let ck = tiny_checkpoint(&dir.join("ckpt"), true);
    let bad = bad_data(&dir.join("train"));
    let val = bad_data(&dir.join("val"));
    std::fs::copy(val.dir.join("a/good-0.png"), val.dir.join("a/good-9.png")).unwrap(); // a split of its own
    let s = |p: &std::path::Path| p.to_str().expect("a UTF-8 path").to_string();
    let linear = bin.ends_with("linear-probe");
    let run = |strict: bool| {
        let mut c = Command::new(bin);
        c.args(["--ckpt", &s(&ck), "--train-data", &s(&bad.dir), "--val-data", &s(&val.dir), "--threads", "1", "-q"]);
        if linear {
            c.args(["--epochs", "2", "--milestones", "1", "--batch-size", "4"]);
        }
        if strict {
            c.arg("--strict");
        }
        bad.run(&mut c)
    };
    let (o, expected) = run(false);
    bad.assert_skipped_and_reported(tool, &o, &expected);
    let same_kind = |p: &std::path::PathBuf| expected.iter().any(|e| e.file_name() == p.file_name());
    let val_expected: Vec<std::path::PathBuf> = val.bad.iter().map(|b| b.0.clone()).filter(same_kind).collect();
    val.assert_skipped_and_reported(tool, &o, &val_expected);
    assert_eq!(json_lines(&o.stdout).iter().filter(|e| e["event"] == "result").count(), 1);
    let (o, _) = run(true);
    let line = if linear { val.assert_strict_fails(tool, &o, true) } else { bad.assert_strict_fails(tool, &o, true) };
    eprintln!("{line}");
}

/// Makes [`BadData`] under `dir` (created): 8 good images, and a truncated JPEG, a zero-byte file, a text file
/// named `.jpg`, a PNG and a JPEG whose headers claim billions of pixels (decompression bombs), a file nobody
/// may read (mode 000: unreadable to the tools only through [`without_root_file_access`] when the tests run
/// as root), a symlink to itself and a folder link that loops back to its parent.
pub fn bad_data(dir: &std::path::Path) -> BadData {
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::PathBuf;
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&a).expect("bad data folder");
    std::fs::create_dir_all(&b).expect("bad data folder");
    let write = |p: &PathBuf, bytes: &[u8]| std::fs::write(p, bytes).expect("write a bad data file");
    for i in 0..4u32 {
        write(&a.join(format!("good-{i}.png")), &picture(i, image::ImageFormat::Png));
        write(&b.join(format!("good-{}.jpg", i + 4)), &picture(i + 4, image::ImageFormat::Jpeg));
    }
    let jpeg = picture(11, image::ImageFormat::Jpeg);
    let bad: Vec<(PathBuf, &'static str)> = vec![
        (a.join("bomb.png"), "PNG header claiming 100000x100000 pixels"),
        (a.join("empty.jpg"), "zero-byte file"),
        (a.join("text.jpg"), "text file named .jpg"),
        (a.join("truncated.jpg"), "truncated JPEG"),
        (b.join("bomb.jpg"), "JPEG header claiming 65500x65500 pixels"),
        (b.join("self-loop.jpg"), "symlink to itself"),
        (b.join("unreadable.jpg"), "file with mode 000"),
        (b.join("zz-loop"), "folder link to its own parent folder"),
    ];
    write(&bad[0].0, &png_claiming(100_000, 100_000));
    write(&bad[1].0, b"");
    write(&bad[2].0, b"this is not an image\n");
    write(&bad[3].0, &jpeg[..jpeg.len() / 3]);
    write(&bad[4].0, &jpeg_claiming(65_500, 65_500));
    symlink("self-loop.jpg", &bad[5].0).expect("symlink");
    write(&bad[6].0, &jpeg);
    std::fs::set_permissions(&bad[6].0, std::fs::Permissions::from_mode(0o000)).expect("chmod 000");
    symlink(".", &bad[7].0).expect("folder symlink");
    BadData { dir: dir.to_path_buf(), good: 8, bad }
}

/// Writes the tar file `path` holding `members` (name, bytes) in that order, the same bytes every time (mode
/// 0644, mtime 0, owner 0): test shards.
pub fn write_tar(path: &std::path::Path, members: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).expect("create a tar file"));
    for (name, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, &bytes[..]).expect("append a tar member");
    }
    b.into_inner().expect("finish a tar file").sync_all().expect("sync a tar file");
}

/// The six photos of `fixtures/photos-96` (96 px PNGs), as (file stem, bytes), in sorted order.
pub fn photos() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/photos-96");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/photos-96")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

/// `shards` tar shards `dir/shard-00000K.tar` (webdataset layout) of `per` samples each: sample j of shard k is
/// photo (k * per + j) % 6 of [`photos`] under the key `KKKJJJ`, with a `.cls` member (that number % `classes`)
/// when `classes > 0`. Returns the shard paths.
pub fn photo_shards(dir: &std::path::Path, shards: usize, per: usize, classes: usize) -> Vec<std::path::PathBuf> {
    std::fs::create_dir_all(dir).expect("create the shards folder");
    let photos = photos();
    (0..shards)
        .map(|k| {
            let mut members = Vec::new();
            for j in 0..per {
                let n = k * per + j;
                let key = format!("{k:03}{j:03}");
                members.push((format!("{key}.png"), photos[n % photos.len()].1.clone()));
                if classes > 0 {
                    members.push((format!("{key}.cls"), format!("{}", n % classes).into_bytes()));
                }
            }
            let p = dir.join(format!("shard-{k:06}.tar"));
            write_tar(&p, &members);
            p
        })
        .collect()
}
