//! Feature-based evaluation: the weighted kNN probe ([`knn`]) and the linear probe ([`linear`]).
//!
//! Both read a labelled training split and a labelled validation split ([`features::ProbeData`]),
//! report through an [`crate::events::EventSink`] (`start`, `eval`, `epoch`, `end`, `warn`), never
//! print, and can write their whole result as one JSON file. Features come from cached `.npy` files
//! today ([`features::FeatureSource::Npy`]); computing them on the fly from a checkpoint is a second
//! source that plugs in there without changing the probes.
//!
//! Accuracies are percentages (keys end in `_pct`); the tie rule of top-k is in [`metrics`].

pub mod ckpts;
pub mod dense;
pub mod features;
pub mod jobs;
pub mod knn;
pub mod linear;
pub mod metrics;
pub mod onthefly;
pub mod results;

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

/// Called with (done, total) work units as a probe advances (a progress bar, or nothing).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// `cpu` or `cuda:N`, as the `--device` flag spells it.
pub fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        tch::Device::Mps => "mps".into(),
        tch::Device::Vulkan => "vulkan".into(),
        tch::Device::Cpu => "cpu".into(),
    }
}

/// Writes a result as pretty JSON, atomically (temp file + rename).
pub fn write_result_json<T: Serialize>(path: &Path, result: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(result)?;
    text.push('\n');
    crate::fsio::write_bytes_atomic(path, text.as_bytes())
}

/// Comma-separated list for a flat event field (`10,20,100`).
pub(crate) fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}
