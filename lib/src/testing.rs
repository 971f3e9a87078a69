//! Helpers for the black-box tests of the tools (`tools/<tool>/tests/`).

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

/// Checks that a planned tool refuses to run: exit 1 and "not implemented yet" on stderr, nothing on stdout.
pub fn check_not_implemented(bin: &str, args: &[&str]) {
    let out = run_tool(bin, args);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not implemented yet"));
    assert!(out.stdout.is_empty(), "a failing tool wrote data to stdout");
}
