//! Black-box tests of `plot-events`: real runs on the fixtures (`fixtures/plot-events/`), the pictures
//! they write, the events on stdout, and the exit codes for bad input.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::Output;

use lewel_testkit::scratch;
use lewel_testkit::{check_help, run_tool};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_plot-events");

fn fixture(name: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/plot-events");
    root.join(name).join("events.jsonl").display().to_string()
}

/// stdout decoded as events: (event kind, object) per line; every line must be a v1 object.
fn events(out: &Output) -> Vec<(String, Value)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"));
            assert_eq!(v["v"], 1, "{l}");
            assert_eq!(v["tool"], "plot-events", "{l}");
            let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            assert_eq!(&keys[..3], &["v", "tool", "event"], "{l}");
            (v["event"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_exit_codes_and_an_example() {
    check_help(BIN, "plot-events runs/lewel-b/events.jsonl");
    let help = String::from_utf8_lossy(&run_tool(BIN, &["--help"]).stdout).into_owned();
    for flag in ["--out", "--format", "--x", "--smooth", "--label", "--size", "1600x1000", "Use plot-events"] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn draws_two_runs_as_a_png() {
    let d = scratch("png");
    let out_png = d.join("curves.png");
    let out =
        run_tool(BIN, &[&fixture("lewel-b"), &fixture("byol"), "--out", out_png.to_str().unwrap(), "--smooth", "9"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let evs = events(&out);
    let (kind, end) = evs.last().unwrap();
    assert_eq!(kind, "end");
    assert_eq!(end["out"], out_png.to_str().unwrap());
    assert_eq!(end["runs"], 2);
    // lewel-b: 200 steps (after the resume) + 5 evals; byol the same.
    assert_eq!(end["points"], 410);
    assert_eq!(end["panels"], 6);
    // The torn line of the crashed attempt is reported, on stdout and on stderr.
    let warns: Vec<&Value> = evs.iter().filter(|(k, _)| k == "warn").map(|(_, v)| v).collect();
    assert_eq!(warns.len(), 1, "{warns:?}");
    assert_eq!(warns[0]["line"], 142);
    // The key every tool writes (it was `msg` here once).
    assert!(warns[0]["message"].as_str().is_some_and(|m| m.contains("line 142")), "{warns:?}");
    assert!(stderr(&out).contains("plot-events: warning:") && stderr(&out).contains("line 142"), "{}", stderr(&out));

    let img = image::open(&out_png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1600, 1000));
    let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 200, "only {} colours: anti-aliased lines and text give hundreds", colours.len());
    let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    let share = inked as f64 / (1600.0 * 1000.0);
    assert!(share > 0.02 && share < 0.5, "{:.3} of the pixels are not background", share);
    // Both run colours are there (Okabe-Ito blue and vermillion).
    for c in [[0x00, 0x72, 0xb2], [0xd5, 0x5e, 0x00]] {
        assert!(img.pixels().filter(|p| p.0 == c).count() > 500, "colour {c:?} is missing");
    }
    // Written atomically: no temporary file left beside it.
    assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn svg_by_extension_with_labels_and_size() {
    let d = scratch("svg");
    let out_svg = d.join("curves.svg");
    let out = run_tool(
        BIN,
        &[
            &fixture("lewel-b"),
            &fixture("byol"),
            "--out",
            out_svg.to_str().unwrap(),
            "--label",
            "LEWEL_B <ours>",
            "--label",
            "BYOL",
            "--size",
            "900x700",
            "--x",
            "epoch",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(events(&out).last().unwrap().1["format"], "svg");
    let svg = fs::read_to_string(&out_svg).unwrap();
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"700\""),
        "{}",
        &svg[..200]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    for needle in [
        ">LEWEL_B &lt;ours&gt;</text>",
        ">BYOL</text>",
        ">total loss</text>",
        ">kNN top-1 accuracy (%)</text>",
        ">learning rate</text>",
        ">epoch</text>",
        "1/\u{221a}256",
        "<polyline",
        "<circle",
    ] {
        assert!(svg.contains(needle), "the SVG lacks {needle:?}");
    }
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn reads_stdin_and_omits_panels_without_data() {
    let d = scratch("stdin");
    let out_png = d.join("c.png");
    // A run with only loss and lr: two panels.
    let text: String = (1..=50)
        .map(|s| {
            format!(
                "{{\"v\":1,\"tool\":\"pretrain\",\"event\":\"step\",\"step\":{s},\"loss\":{},\"lr\":0.1}}\n",
                4.0 / s as f64
            )
        })
        .collect();
    let mut child = std::process::Command::new(BIN)
        .args(["-", "--out", out_png.to_str().unwrap(), "--size", "640x400"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let end = events(&out).pop().unwrap().1;
    assert_eq!((end["runs"].as_i64(), end["points"].as_i64(), end["panels"].as_i64()), (Some(1), Some(50), Some(2)));
    assert_eq!(image::open(&out_png).unwrap().to_rgb8().dimensions(), (640, 400));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_input_fails_clearly() {
    let d = scratch("bad");
    let out_png = d.join("c.png");
    let o = out_png.to_str().unwrap();
    let empty = d.join("empty.jsonl");
    fs::write(&empty, "").unwrap();
    let no_steps = d.join("no-steps.jsonl");
    fs::write(&no_steps, "{\"v\":1,\"tool\":\"pretrain\",\"event\":\"start\",\"seed\":0}\n").unwrap();
    let garbage = d.join("garbage.jsonl");
    fs::write(&garbage, "hello\nworld\n").unwrap();
    let one_epoch = d.join("one-epoch.jsonl");
    fs::write(&one_epoch, "{\"v\":1,\"tool\":\"pretrain\",\"event\":\"step\",\"step\":1,\"loss\":1}\n").unwrap();
    let missing = d.join("nope/events.jsonl");
    let byol = fixture("byol");
    let byol = byol.as_str();
    let no_dir = d.join("no/such/dir.png");

    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec![missing.to_str().unwrap(), "--out", o], 1, "could not open"),
        (vec![empty.to_str().unwrap(), "--out", o], 1, "is empty"),
        (vec![no_steps.to_str().unwrap(), "--out", o], 1, "no step events"),
        (vec![garbage.to_str().unwrap(), "--out", o], 1, "holds no events"),
        (vec![one_epoch.to_str().unwrap(), "--out", o, "--x", "epoch"], 1, "use --x step"),
        (vec![byol, "--out", no_dir.to_str().unwrap()], 1, "could not write"),
        (vec![byol, "--out", o, "--label", "a", "--label", "b"], 2, "one --label per file"),
        (vec![byol, "--out", "-"], 2, "real path"),
        (vec![byol, "--out", o, "--size", "big"], 2, "WIDTHxHEIGHT"),
        (vec![byol], 2, "--out"),
        (vec!["--out", o], 2, "EVENTS"),
    ];
    for (args, code, needle) in cases {
        let out = run_tool(BIN, &args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: stderr lacks {needle:?}: {}", stderr(&out));
        assert!(events(&out).iter().all(|(k, _)| k != "end"), "{args:?} claimed success");
    }
    assert!(!out_png.exists(), "a failed run wrote a picture");
    fs::remove_dir_all(&d).unwrap();
}
