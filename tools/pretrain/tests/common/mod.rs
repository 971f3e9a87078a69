//! Shared by the `pretrain` test binaries: the tiny model they train and their view files.
#![allow(dead_code)] // each test binary uses a part

use std::path::{Path, PathBuf};

use lewel_testkit::{test_values, write_npy_f32};

pub const BIN: &str = env!("CARGO_BIN_EXE_pretrain");

/// small-lewelb shrunk to a CPU test: ResNet-18 with the CIFAR stem at width 4, K 16, hidden 32.
pub const TINY_MODEL: [&str; 8] =
    ["--preset", "small-lewelb", "--width", "4", "--proj-dim", "16", "--hidden-dim", "32"];

/// How the tests run it: warm-up 1 epoch at lr 0.1, a `step` event per step, on the CPU, no progress bar.
pub const TINY_RUN: [&str; 9] =
    ["--warmup-epochs", "1", "--lr", "0.1", "--log-every", "1", "--device", "cpu", "--quiet"];

/// [`TINY_MODEL`], [`TINY_RUN`], then `rest` (later flags win).
pub fn tiny(rest: &[&'static str]) -> Vec<&'static str> {
    TINY_MODEL.iter().chain(&TINY_RUN).chain(rest).copied().collect()
}

/// `n` view pairs of 32x32 (`test_values` with `seed`) in `dir/views.npy`.
pub fn views_n(dir: &Path, n: u64, seed: u64) -> PathBuf {
    let p = dir.join("views.npy");
    write_npy_f32(&p, &[n, 2, 3, 32, 32], &test_values((n * 2 * 3 * 32 * 32) as usize, seed));
    p
}
