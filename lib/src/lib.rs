//! `lewel`: the shared library of the lewel tools.
//!
//! LEWEL is "Learning Where to Learn in Cross-View Self-Supervised Learning" (Huang et al., CVPR 2022,
//! <https://arxiv.org/abs/2203.14898>). Every tool of the workspace is a thin `main.rs` over this crate:
//! it parses flags, builds a plain config, calls one `run` here and maps the result to an exit code
//! with [`exit::finish`].
//!
//! Modules:
//! - [`events`]: the JSON-lines event writer (stdout is data; a copy goes to `RUN/events.jsonl`).
//! - [`cli`]: the flag groups every tool shares (`--seed`, `--device`, `--out`, `--quiet`).
//! - [`error`] and [`exit`]: the error cases callers branch on, and the exit-code mapping.
//! - [`fsio`]: atomic file writes (temp name in the same folder, sync, rename).
//! - [`run`]: the run directory (`config.json`, `events.jsonl`, `ckpt/`).
//! - [`amp`]: mixed precision (`--precision`, autocast, fp16 loss scaling) and `--channels-last`.

pub mod alloc;
pub mod amp;
pub mod ckpt;
pub mod cli;
pub mod data;
pub mod diagnose;
pub mod dist;
pub mod ema;
pub mod embed;
pub mod error;
pub mod eval;
pub mod events;
pub mod exit;
pub mod export;
pub mod fault;
pub mod fsio;
pub mod hex;
pub mod loss;
pub mod model;
pub mod monitor;
pub mod optim;
pub mod plot;
pub mod run;
pub mod schedule;
pub mod semi;
pub mod signals;
pub mod train;
pub mod viz;

pub use error::LewelError;

/// The git revision this binary was built from (`unknown` outside a git checkout).
pub const GIT_REVISION: &str = env!("LEWEL_GIT_REVISION");
