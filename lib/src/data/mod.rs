//! Data: readers for every DATA form, the augmentations of the paper (matching torchvision), the
//! named recipes, and the deterministic parallel loaders that feed `pretrain`, `embed` and `augment`.
//!
//! - [`dataset`]: [`DataSpec`], [`open`], the [`Dataset`] trait and the file readers; [`arrays`]: IDX and `.npy`.
//! - [`shards`]: tar shards (webdataset layout), indexed at open, read in place; their epoch order.
//! - [`decode`]: JPEG/PNG/WebP to upright 8-bit RGB, with a decompression-bomb cap.
//! - [`ops`]: each augmentation's application; [`view`]: drawing a view's parameters and applying them.
//! - [`recipe`]: the presets (`lewel-b`, `byol`, `mocov2`, `-small` variants) and `--set` overrides.
//! - [`rng`]: the counter-keyed generator behind every random choice.
//! - [`loader`]: [`TwoViewLoader`] and [`EvalLoader`].
//! - [`augment`]: the `augment` tool's work (views `.npy`, sidecar, shards, preview sheet).
//! - [`npy`]: streaming `.npy` writing.
//!
//! # Use in a training loop
//!
//! ```no_run
//! use lewel::data::{open, DataSpec, LoaderConfig, Recipe, TwoViewLoader};
//! # fn main() -> anyhow::Result<()> {
//! let data = open(&DataSpec { path: "photos/".into(), root: None, strict: false })?;
//! let mut recipe = Recipe::preset("lewel-b")?;
//! recipe.set("blur_p2=0.0")?; // any parameter, by name
//! let cfg = LoaderConfig { seed: 1, batch_size: 64, threads: 0, prefetch: 2, shuffle: true, drop_last: true, strict: false, shuffle_buffer: 1000 };
//! let loader = TwoViewLoader::new(data, recipe, cfg)?;
//! let (epoch, start_step) = (0, 0); // from a checkpoint when resuming
//! for batch in loader.epoch(epoch, start_step) {
//!     let b = batch?; // b.v1, b.v2: [64, 3, 224, 224] f32; b.wait_s: data_wait; b.skipped: bad files
//!     # let _ = b;
//! }
//! # Ok(())
//! # }
//! ```

pub mod arrays;
pub mod augment;
pub mod dataset;
pub mod decode;
pub mod labelled;
pub mod loader;
pub mod npy;
pub mod ops;
pub mod recipe;
pub mod rng;
pub mod shards;
pub mod view;

pub use dataset::{open, DataSpec, Dataset};
pub use labelled::{LabelledBatch, LabelledLoader};
pub use loader::{Batch, EvalBatch, EvalConfig, EvalLoader, LoaderConfig, RawBatch, TwoViewLoader};
pub use recipe::Recipe;
