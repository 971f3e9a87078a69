//! `pretrain` under faults (RELIABILITY.md): SIGKILL at random points with resumes, storage faults (a file-size
//! limit, a folder that turns read-only, a full disk), corrupt checkpoints, an injected divergence. Each test
//! checks that what the run logs and its final checkpoint equal those of an uninterrupted run, bit for bit (CPU).
//!
//! Every run is the same tiny one (ResNet-18 width 4, 8 view pairs of 32 px, batch 4: 2 steps an epoch, 8
//! epochs, a checkpoint every step), on one intra-op thread so that two tests running side by side on a small
//! machine do not starve each other.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lewel_testkit::{json_lines, scratch, test_values, without_root_file_access, write_npy_f32};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pretrain");
const TOTAL_STEPS: u64 = 16;

const TINY: &[&str] = &[
    "--preset",
    "small-lewelb",
    "--width",
    "4",
    "--proj-dim",
    "16",
    "--hidden-dim",
    "32",
    "--batch-size",
    "4",
    "--epochs",
    "8",
    "--warmup-epochs",
    "1",
    "--lr",
    "0.1",
    "--ckpt-every-steps",
    "1",
    "--log-every",
    "1",
    "--device",
    "cpu",
    "--quiet",
];

/// The 8 view pairs every test trains on (one file, written once per test binary, in Cargo's temp folder for
/// integration tests, under target/).
fn views() -> &'static Path {
    static V: OnceLock<PathBuf> = OnceLock::new();
    V.get_or_init(|| {
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-views.npy");
        let tmp = lewel::fsio::temp_path_for(&p); // the same bytes every time; renamed whole
        write_npy_f32(&tmp, &[8, 2, 3, 32, 32], &test_values(8 * 2 * 3 * 32 * 32, 1));
        std::fs::rename(&tmp, &p).unwrap();
        p
    })
}

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env("OMP_NUM_THREADS", "1").env_remove(lewel::fault::VAR);
    c
}

/// A new run into `out`, plus `extra` flags.
fn new_run(out: &Path, extra: &[&str]) -> Command {
    let mut a: Vec<&str> = TINY.to_vec();
    a.extend(["--views", views().to_str().unwrap(), "--out", out.to_str().unwrap()]);
    a.extend(extra);
    command(&a)
}

fn resume(run: &Path) -> Command {
    command(&["--resume", run.to_str().unwrap(), "--log-every", "1", "--quiet"])
}

fn output(mut c: Command) -> Output {
    c.output().expect("run pretrain")
}

fn ok(o: &Output) -> Vec<Value> {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    json_lines(&o.stdout)
}

/// step -> "loss loss_global loss_aligned lr ema_momentum", from `step` events.
fn steps(events: &[Value]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| {
            let s = e["step"].as_u64().unwrap();
            (s, format!("{} {} {} {} {}", e["loss"], e["loss_global"], e["loss_aligned"], e["lr"], e["ema_momentum"]))
        })
        .collect()
}

/// The uninterrupted run: its logged steps and its final checkpoint (tensor file and sidecar bytes).
struct Reference {
    steps: BTreeMap<u64, String>,
    ckpt: Vec<u8>,
    sidecar: Vec<u8>,
}

fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| {
        let d = scratch("faults-reference");
        let ev = ok(&output(new_run(&d.join("run"), &[])));
        let s = steps(&ev);
        assert_eq!(s.len() as u64, TOTAL_STEPS);
        let (ckpt, sidecar) = final_checkpoint(&d.join("run"));
        let _ = std::fs::remove_dir_all(&d);
        Reference { steps: s.into_iter().collect(), ckpt, sidecar }
    })
}

fn final_checkpoint(run: &Path) -> (Vec<u8>, Vec<u8>) {
    let p = lewel::ckpt::resolve(&run.join("ckpt/latest")).expect("a latest checkpoint");
    assert!(p.ends_with(lewel::ckpt::file_name(TOTAL_STEPS)), "{}", p.display());
    (std::fs::read(&p).unwrap(), std::fs::read(lewel::ckpt::sidecar_path(&p)).unwrap())
}

/// Every logged step (stdout of every segment, and the run's events.jsonl) equals the reference's, all steps
/// were logged, and the final checkpoint is the reference's byte for byte.
fn assert_same_as_reference(run: &Path, logged: &[(u64, String)]) {
    let r = reference();
    let mut all = logged.to_vec();
    let text = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    // a line torn by a kill is not JSON; every other one must be
    let parsed: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(text.lines().count() - parsed.len() <= 16, "too many torn lines in events.jsonl");
    all.extend(steps(&parsed));
    for (s, v) in &all {
        assert_eq!(Some(v), r.steps.get(s), "step {s} differs from the uninterrupted run");
    }
    let seen: std::collections::BTreeSet<u64> = all.iter().map(|x| x.0).collect();
    assert_eq!(seen.len() as u64, TOTAL_STEPS, "some steps were never logged: {seen:?}");
    let (ckpt, sidecar) = final_checkpoint(run);
    assert!(ckpt == r.ckpt, "the final checkpoint differs from the uninterrupted run's");
    assert_eq!(String::from_utf8(sidecar).unwrap(), String::from_utf8(r.sidecar.clone()).unwrap());
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| lewel::fsio::is_temp_name(n))
                .collect()
        })
        .unwrap_or_default()
}

/// No file under a real name in `run` is partial: every checkpoint with a sidecar verifies against it, one
/// without (written, its sidecar not yet) is a complete safetensors file, `latest` names one that verifies, and
/// config.json and every sidecar are whole JSON. Returns how many checkpoint files were checked.
fn assert_nothing_partial(run: &Path) -> usize {
    let ckpt = run.join("ckpt");
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    serde_json::from_str::<Value>(&config).expect("config.json is whole");
    let list = lewel::ckpt::list(&ckpt).unwrap();
    for (_, p) in &list {
        if lewel::ckpt::sidecar_path(p).exists() {
            lewel::ckpt::load_verified(p).unwrap_or_else(|e| panic!("{e:#}"));
        } else {
            lewel::ckpt::read_safetensors(p).unwrap_or_else(|e| panic!("{e:#}"));
        }
    }
    if ckpt.join("latest").exists() {
        let p = lewel::ckpt::resolve(&ckpt.join("latest")).unwrap();
        lewel::ckpt::load_verified(&p).unwrap_or_else(|e| panic!("latest: {e:#}"));
    }
    list.len()
}

/// A child whose stdout lines are collected by a thread as they come.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Running {
    fn start(mut c: Command) -> Running {
        let mut child = c.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn pretrain");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                match l {
                    Ok(l) => sink.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
        Running { child, lines, reader }
    }

    fn count(&self, event: &str) -> usize {
        let needle = format!("\"event\":\"{event}\"");
        self.lines.lock().unwrap().iter().filter(|l| l.contains(&needle)).count()
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Kills with SIGKILL (if still running) and returns the complete lines it wrote, and whether the kill
    /// landed (false: it had exited already).
    fn kill(mut self) -> (Vec<Value>, bool) {
        let landed = !self.exited();
        if landed {
            self.child.kill().unwrap(); // SIGKILL
        }
        let status = self.child.wait().unwrap();
        if landed {
            assert_eq!(status.signal(), Some(9), "{status:?}");
        }
        self.reader.join().unwrap();
        let lines = self.lines.lock().unwrap().clone();
        (lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect(), landed)
    }
}

/// SplitMix64: the test's own seeded randomness, so every run of it kills at the same points.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// Kills `pretrain` with SIGKILL 10 times at seeded random points (the first during step 1, before any checkpoint;
/// then in turn mid-step, some milliseconds after a `step` event, and during a checkpoint write, while a temp file
/// is in ckpt/, the write slowed down by `LEWEL_FAULT=slow-write`), checks after each kill that no file under a real name is partial, resumes, and
/// at the end compares every logged loss and the final checkpoint with an uninterrupted run.
#[test]
fn sigkill_at_random_points_and_resume_equal_an_uninterrupted_run() {
    const KILLS: usize = 10;
    let _ = reference();
    let d = scratch("faults-kill");
    let run = d.join("run");
    let mut rng = Rng(0x5EED_0012);
    let mut logged = Vec::new();
    let (mut mid_step, mut in_write, mut missed, mut restarts) = (0, 0, 0, 0);
    let t0 = Instant::now();
    for round in 0..KILLS {
        let during_write = round % 2 == 1;
        let mut c = if run.join("config.json").exists() { resume(&run) } else { new_run(&run, &[]) };
        if during_write || round == 0 {
            // round 0: a wide window before the first checkpoint is complete, even on a loaded machine
            c.env(lewel::fault::VAR, "slow-write=100");
        }
        let mut r = Running::start(c);
        let deadline = Instant::now() + Duration::from_secs(60);
        if during_write {
            // the k-th distinct temp file seen in ckpt/ (k in 1..=4: a tensor file, a sidecar or `latest`)
            let k = 1 + rng.below(4) as usize;
            let mut seen = std::collections::HashSet::new();
            while seen.len() < k && !r.exited() && Instant::now() < deadline {
                seen.extend(temp_files(&run.join("ckpt")));
                std::thread::sleep(Duration::from_millis(1));
            }
        } else if round == 0 {
            // during the first step: nothing to resume from yet, so the resume starts the run over
            while r.count("start") < 1 && !r.exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        } else {
            // some milliseconds after the k-th step event of this segment
            let k = 1 + rng.below(3) as usize;
            while r.count("step") < k && !r.exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(rng.below(40)));
        }
        let (events, landed) = r.kill();
        if events
            .iter()
            .any(|e| e["event"] == "warn" && e["message"].as_str().unwrap_or("").contains("starting it over"))
        {
            restarts += 1;
        }
        logged.extend(steps(&events));
        if !landed {
            missed += 1;
            continue;
        }
        // a kill that leaves a temp file landed in a write (on a loaded machine a kill meant for a write can
        // land just after it: counted as mid-step)
        if temp_files(&run.join("ckpt")).is_empty() {
            mid_step += 1;
        } else {
            in_write += 1;
        }
        assert_nothing_partial(&run);
    }
    let last = ok(&output(resume(&run)));
    assert!(temp_files(&run.join("ckpt")).is_empty(), "a resume leaves no temp file behind");
    logged.extend(steps(&last));
    assert_nothing_partial(&run);
    assert_same_as_reference(&run, &logged);
    let replayed = logged.len() as u64 - TOTAL_STEPS.min(logged.len() as u64);
    eprintln!(
        "RELIABILITY kill-resume: {} kills survived ({mid_step} mid-step, {in_write} during a checkpoint write), \
         {missed} segments ended before their kill, {restarts} restarts before a first checkpoint, {} steps logged \
         ({replayed} replayed), all equal to the uninterrupted run; {:.1} s",
        mid_step + in_write,
        logged.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        mid_step + in_write >= KILLS - 1 && in_write >= 3 && restarts >= 1,
        "too few kills landed where they should"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// `pretrain` under `ulimit -f` (a file-size limit below one checkpoint): the first checkpoint write fails with
/// EFBIG (SIGXFSZ is ignored, so the process is not killed), the error says so, no temp file is left, the
/// checkpoint before verifies, and a resume without the limit finishes the run exactly.
#[test]
fn file_size_limit_fails_clearly_and_resume_finishes_exactly() {
    let _ = reference();
    let d = scratch("faults-fsize");
    let run = d.join("run");
    let first = ok(&output(new_run(&run, &["--max-steps", "3"])));
    // 300 KiB: config.json and events.jsonl fit, a 620 KiB checkpoint does not
    let limited = output({
        let mut c = Command::new("bash");
        c.args(["-c", "ulimit -f 300; exec \"$0\" \"$@\"", BIN, "--resume", run.to_str().unwrap(), "--log-every", "1"])
            .env("OMP_NUM_THREADS", "1");
        c
    });
    let err = String::from_utf8_lossy(&limited.stderr);
    assert_eq!(limited.status.code(), Some(1), "killed by SIGXFSZ? {:?}: {err}", limited.status);
    assert!(
        err.contains("step-00000004.safetensors") && err.contains("file-size limit") && err.contains("File too large"),
        "{err}"
    );
    assert!(temp_files(&run.join("ckpt")).is_empty(), "the failed write left its temp file");
    assert_nothing_partial(&run);
    let latest = lewel::ckpt::resolve(&run.join("ckpt/latest")).unwrap();
    assert!(latest.ends_with(lewel::ckpt::file_name(3)));
    let rest = ok(&output(resume(&run)));
    let mut logged = steps(&first);
    logged.extend(steps(&json_lines(&limited.stdout)));
    logged.extend(steps(&rest));
    assert_same_as_reference(&run, &logged);
    eprintln!("RELIABILITY fsize: ulimit -f 300 -> exit 1: {}", err.trim());
    let _ = std::fs::remove_dir_all(&d);
}

/// The checkpoint folder turns read-only while the run goes on: the next checkpoint write fails with a clear
/// error (exit 1), the last checkpoint verifies, and once the folder is writable again a resume finishes the run
/// exactly. A resume into a read-only folder fails before its first step.
#[test]
fn read_only_folder_fails_clearly_and_resume_finishes_exactly() {
    use std::os::unix::fs::PermissionsExt;
    let _ = reference();
    let d = scratch("faults-ro");
    let run = d.join("run");
    let mut c = new_run(&run, &[]);
    if !without_root_file_access(&mut c) {
        eprintln!("SKIPPED: running as root without CAP_SETPCAP, a read-only folder cannot be made for the tool");
        return;
    }
    let set_mode =
        |mode: u32| std::fs::set_permissions(run.join("ckpt"), std::fs::Permissions::from_mode(mode)).unwrap();
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut logged_lines = Vec::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        let is_ckpt = l.contains("\"event\":\"checkpoint\"");
        logged_lines.push(l);
        if is_ckpt {
            set_mode(0o555);
            break;
        }
    }
    logged_lines.extend(lines.map(|l| l.unwrap()));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1), "{stderr}");
    let ev = json_lines(logged_lines.join("\n").as_bytes());
    assert!(stderr.contains("pretrain: error: could not write") && stderr.contains("permission denied"), "{stderr}");
    assert!(ev.last().map(|e| e["event"] != "end").unwrap_or(true), "the run claims to have ended");
    assert!(temp_files(&run.join("ckpt")).is_empty());
    assert_nothing_partial(&run);

    // Still read-only: a resume fails before any step.
    let mut c = resume(&run);
    assert!(without_root_file_access(&mut c));
    let o = output(c);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not writable"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(steps(&json_lines(&o.stdout)).is_empty());

    set_mode(0o755);
    let rest = ok(&output(resume(&run)));
    let mut logged = steps(&ev);
    logged.extend(steps(&rest));
    assert_same_as_reference(&run, &logged);
    eprintln!("RELIABILITY read-only: {}", stderr.trim());
    let _ = std::fs::remove_dir_all(&d);
}

/// A run on a small tmpfs (1 MB: room for one checkpoint, not two) fails with a clear "disk is full" error at the
/// second checkpoint, keeps the first, and finishes exactly after the tmpfs is enlarged. Needs root (mount);
/// skipped otherwise.
#[test]
fn full_disk_fails_clearly_and_resume_finishes_exactly() {
    let _ = reference();
    let d = scratch("faults-full");
    let mnt = d.join("tmpfs");
    std::fs::create_dir_all(&mnt).unwrap();
    let mount = |opts: &str| {
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs", mnt.to_str().unwrap()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !mount("size=1m") {
        eprintln!("SKIPPED: could not mount a tmpfs (needs root and CAP_SYS_ADMIN)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let run = mnt.join("run");
    let full = output(new_run(&run, &[]));
    let err = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(1), "{err}");
    assert!(err.contains("disk is full") && err.contains("No space left"), "{err}");
    assert!(temp_files(&run.join("ckpt")).is_empty());
    assert_nothing_partial(&run);
    assert!(mount("remount,size=8m"));
    let rest = ok(&output(resume(&run)));
    let mut logged = steps(&json_lines(&full.stdout));
    logged.extend(steps(&rest));
    assert_same_as_reference(&run, &logged);
    eprintln!("RELIABILITY disk-full: {}", err.trim());
    drop(_guard);
    let _ = std::fs::remove_dir_all(&d);
}

/// A truncated and then a bit-flipped newest checkpoint: `--resume` detects each through the sidecar's sha256,
/// says so in a `warn` event, falls back to the one before and finishes exactly; `embed --ckpt` on the bad file
/// fails naming it (checked in `tools/embed/tests`).
#[test]
fn corrupt_checkpoints_are_detected_and_resume_falls_back_saying_so() {
    let _ = reference();
    let d = scratch("faults-corrupt");
    for (case, damage) in [("truncated", 0usize), ("bit-flip", 1)] {
        let run = d.join(case);
        let first = ok(&output(new_run(&run, &["--max-steps", "3"])));
        let bad = run.join("ckpt").join(lewel::ckpt::file_name(3));
        let mut bytes = std::fs::read(&bad).unwrap();
        if damage == 0 {
            bytes.truncate(bytes.len() / 2);
        } else {
            let i = bytes.len() - 100;
            bytes[i] ^= 0x08;
        }
        std::fs::write(&bad, &bytes).unwrap();
        let rest = ok(&output(resume(&run)));
        let warn = rest.iter().find(|e| e["event"] == "warn").expect("a warn event");
        let msg = warn["message"].as_str().unwrap();
        assert!(msg.contains("step-00000003.safetensors is corrupt") && msg.contains("sha256"), "{case}: {msg}");
        let start = rest.iter().find(|e| e["event"] == "start").unwrap();
        assert!(start["resumed_from"].as_str().unwrap().ends_with("step-00000002.safetensors"), "{case}");
        let mut logged = steps(&first);
        logged.extend(steps(&rest));
        assert_same_as_reference(&run, &logged);
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// An injected NaN loss at step 5 (`LEWEL_FAULT=nan-loss=5`): exit 3, the error event and message name step 5
/// and the last good checkpoint (step 4), which verifies; a resume without the fault finishes the run exactly.
#[test]
fn injected_divergence_exits_3_naming_the_step_and_keeps_the_last_checkpoint() {
    let _ = reference();
    let d = scratch("faults-nan");
    let run = d.join("run");
    let mut c = new_run(&run, &[]);
    c.env(lewel::fault::VAR, "nan-loss=5");
    let o = output(c);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("diverged at step 5"), "{err}");
    let ev = json_lines(&o.stdout);
    let e = ev.iter().find(|e| e["event"] == "error").expect("an error event");
    assert_eq!((e["step"].as_u64(), e["last_finite_step"].as_u64()), (Some(5), Some(4)), "{e}");
    assert!(e["last_checkpoint"].as_str().unwrap().ends_with("step-00000004.safetensors"), "{e}");
    let latest = lewel::ckpt::resolve(&run.join("ckpt/latest")).unwrap();
    assert!(latest.ends_with(lewel::ckpt::file_name(4)));
    assert_nothing_partial(&run);
    let rest = ok(&output(resume(&run)));
    let mut logged = steps(&ev);
    logged.extend(steps(&rest));
    assert_same_as_reference(&run, &logged);
    let _ = std::fs::remove_dir_all(&d);
}

/// Every kind of bad file (lewel_testkit::bad_data: truncated, empty, text, decompression bombs, unreadable,
/// symlink loops) is replaced and named in a `warn` event while the run goes on; --strict fails naming one.
#[test]
fn every_kind_of_bad_file_is_skipped_and_reported_or_fatal_with_strict() {
    let d = scratch("faults-bad-data");
    let bad = lewel_testkit::bad_data(&d.join("data"));
    let args = |out: &str| {
        let mut a: Vec<String> = vec![bad.dir.display().to_string()];
        a.extend(TINY.iter().map(|s| s.to_string()));
        a.extend(["--epochs", "2", "--threads", "1", "--out"].map(String::from));
        a.push(d.join(out).display().to_string());
        a
    };
    let (o, expected) = bad.run(Command::new(BIN).args(args("run")));
    let warns = bad.assert_skipped_and_reported("pretrain", &o, &expected);
    let ev = json_lines(&o.stdout);
    assert_eq!(ev.last().unwrap()["status"], "finished");
    let (o, _) = bad.run(Command::new(BIN).args(args("strict")).arg("--strict"));
    let line = bad.assert_strict_fails("pretrain", &o, false);
    eprintln!(
        "RELIABILITY bad-data pretrain: {} bad files, {warns} warn events over 2 epochs; --strict: {line}",
        expected.len()
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// SIGTERM (as a batch scheduler sends) finishes the step, writes a checkpoint and exits 130; a resume finishes
/// the run exactly. A second SIGINT during that final checkpoint write (slowed down by `LEWEL_FAULT=slow-write`)
/// exits 130 at once: nothing under a real name is partial, and a resume still finishes the run exactly.
#[test]
fn sigterm_and_a_second_sigint_lose_nothing() {
    let _ = reference();
    let d = scratch("faults-signals");
    for case in ["sigterm", "double-sigint"] {
        let run = d.join(case);
        let mut c = new_run(&run, &[]);
        if case == "double-sigint" {
            c.env(lewel::fault::VAR, "slow-write=300");
        }
        let mut r = Running::start(c);
        let deadline = Instant::now() + Duration::from_secs(60);
        while r.count("checkpoint") < 1 && !r.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let pid = r.child.id() as i32;
        if case == "sigterm" {
            unsafe { libc_kill(pid, 15) };
        } else {
            unsafe { libc_kill(pid, 2) };
            // the final checkpoint is being written: interrupt again
            while temp_files(&run.join("ckpt")).is_empty() && !r.exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            unsafe { libc_kill(pid, 2) };
        }
        let status = r.child.wait().unwrap();
        r.reader.join().unwrap();
        assert_eq!(status.code(), Some(130), "{case}: {status:?}");
        let events: Vec<Value> = r.lines.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if case == "sigterm" {
            assert_eq!(events.last().unwrap()["status"], "interrupted", "{case}");
        } else {
            assert!(!temp_files(&run.join("ckpt")).is_empty(), "the second SIGINT did not land in the final write");
        }
        assert_nothing_partial(&run);
        let rest = ok(&output(resume(&run)));
        let mut logged = steps(&events);
        logged.extend(steps(&rest));
        assert_same_as_reference(&run, &logged);
    }
    let _ = std::fs::remove_dir_all(&d);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// A kill between the rename of the first checkpoint's tensor file and the write of its sidecar leaves a checkpoint
/// that cannot be verified and nothing older: the resume starts the run over (saying so) and finishes exactly.
#[test]
fn a_run_killed_inside_its_first_checkpoint_write_starts_over() {
    let _ = reference();
    let d = scratch("faults-first-write");
    let run = d.join("run");
    ok(&output(new_run(&run, &["--max-steps", "1"])));
    let first = run.join("ckpt").join(lewel::ckpt::file_name(1));
    std::fs::remove_file(lewel::ckpt::sidecar_path(&first)).unwrap();
    std::fs::remove_file(run.join("ckpt/latest")).unwrap();
    let rest = ok(&output(resume(&run)));
    let warn = rest.iter().find(|e| e["event"] == "warn").expect("a warn event");
    assert!(warn["message"].as_str().unwrap().contains("starting it over"), "{warn}");
    assert_eq!(rest.iter().find(|e| e["event"] == "start").unwrap()["start_step"], 0);
    assert_same_as_reference(&run, &steps(&rest));
    let _ = std::fs::remove_dir_all(&d);
}

/// SIGKILL mid-epoch (some ms after the 2nd step event of a segment) of a run over tar shards (a brace pattern, a
/// shuffle buffer), twice, then `--resume` to the end: every logged loss of every segment and the final checkpoint
/// equal an uninterrupted run's, byte for byte.
#[test]
fn sigkill_mid_epoch_over_tar_shards_and_resume_equal_an_uninterrupted_run() {
    let d = scratch("faults-shards");
    let shards = d.join("shards");
    lewel_testkit::photo_shards(&shards, 3, 4, 0);
    let pattern = format!("{}/shard-{{000000..000002}}.tar", shards.display());
    let run_over_shards = |out: &Path| {
        let mut a: Vec<&str> = TINY.to_vec();
        a.extend(["--epochs", "3", "--shuffle-buffer", "3", "--out", out.to_str().unwrap(), pattern.as_str()]);
        command(&a)
    };
    let last_checkpoint = |run: &Path| {
        let p = lewel::ckpt::resolve(&run.join("ckpt/latest")).expect("a latest checkpoint");
        assert!(p.ends_with(lewel::ckpt::file_name(9)), "{}", p.display());
        (std::fs::read(&p).unwrap(), std::fs::read(lewel::ckpt::sidecar_path(&p)).unwrap())
    };
    let want: BTreeMap<u64, String> = steps(&ok(&output(run_over_shards(&d.join("reference"))))).into_iter().collect();
    assert_eq!(want.len(), 9);
    let run = d.join("run");
    let mut logged = Vec::new();
    let mut kills = 0;
    for round in 0..2 {
        let c = if round == 0 { run_over_shards(&run) } else { resume(&run) };
        let mut r = Running::start(c);
        let deadline = Instant::now() + Duration::from_secs(60);
        while r.count("step") < 2 && !r.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(10));
        let (events, landed) = r.kill();
        kills += landed as usize;
        logged.extend(steps(&events));
    }
    logged.extend(steps(&ok(&output(resume(&run)))));
    for (s, l) in &logged {
        assert_eq!(Some(l), want.get(s), "step {s} after a kill");
    }
    let seen: std::collections::BTreeSet<u64> = logged.iter().map(|l| l.0).collect();
    assert_eq!(seen.len(), 9, "every step logged");
    assert_eq!(last_checkpoint(&run), last_checkpoint(&d.join("reference")), "the final checkpoint, byte for byte");
    assert_eq!(kills, 2, "both kills landed mid-run");
    eprintln!(
        "RELIABILITY shards-kill-resume: {kills} SIGKILLs mid-epoch over tar shards, {} steps logged, all equal",
        logged.len()
    );
    let _ = std::fs::remove_dir_all(&d);
}
