//! Data: readers for every DATA form, the augmentations of the paper (matching torchvision), the
//! named recipes, and the deterministic parallel loaders that feed `pretrain`, `embed` and `augment`.
//!
//! - [`dataset`]: [`DataSpec`], [`open`], the [`Dataset`] trait and the file readers; [`arrays`]: IDX and `.npy`.
//! - [`decode`]: JPEG/PNG/WebP to upright 8-bit RGB, with a decompression-bomb cap.
//! - [`ops`]: each augmentation's application; [`view`]: drawing a view's parameters and applying them.
//! - [`recipe`]: the presets (`lewel-b`, `byol`, `mocov2`, `-small` variants) and `--set` overrides.
//! - [`rng`]: the counter-keyed generator behind every random choice.
//! - [`loader`]: [`TwoViewLoader`] and [`EvalLoader`].
//! - [`augment`]: the `augment` tool's work (views `.npy`, sidecar, shards, preview sheet).
//! - [`npy`]: streaming `.npy` writing.

pub mod arrays;
pub mod augment;
pub mod dataset;
pub mod decode;
pub mod loader;
pub mod npy;
pub mod ops;
pub mod recipe;
pub mod rng;
pub mod view;

pub use dataset::{open, DataSpec, Dataset};
pub use loader::{Batch, EvalBatch, EvalConfig, EvalLoader, LoaderConfig, RawBatch, TwoViewLoader};
pub use recipe::Recipe;
