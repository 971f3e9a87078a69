//! The error cases that callers branch on. Everything else travels as `anyhow::Error` with context.

use std::path::PathBuf;

/// Errors with a meaning of their own: each maps to an exit code in [`crate::exit`] or is matched by a
/// caller. Every message names the file, key or flag involved and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LewelError {
    /// A loss or gradient became NaN or infinite (exit 3).
    #[error("training diverged at step {step}: loss = {loss}; lower --lr or raise --warmup-epochs, then --resume from the last checkpoint")]
    Diverged { step: u64, loss: f64 },

    /// SIGINT or SIGTERM arrived; a final checkpoint was written where the tool has one (exit 130).
    #[error("interrupted")]
    Interrupted,

    /// stdout was closed by the reader (a pipe into `head`, say). Filter tools exit 0 on it.
    #[error("stdout was closed")]
    StdoutClosed,

    /// A bad combination of flags or values that clap cannot see (exit 2).
    #[error("{0}")]
    Usage(String),

    /// A tool, or a part of one, that a later issue fills (exit 1).
    #[error("{what} is not implemented yet (tracked in issue {issue}); nothing was done")]
    NotImplemented { what: String, issue: u32 },

    /// A state file does not fit the model: every missing, unexpected and mis-shaped key is listed.
    #[error("{} does not fit the model:{}", path.display(), describe_keys(missing, unexpected, mismatched))]
    KeysMismatch {
        path: PathBuf,
        missing: Vec<String>,
        unexpected: Vec<String>,
        /// (key, expected shape, found shape)
        mismatched: Vec<(String, Vec<i64>, Vec<i64>)>,
    },
}

fn describe_keys(missing: &[String], unexpected: &[String], mismatched: &[(String, Vec<i64>, Vec<i64>)]) -> String {
    let mut s = String::new();
    if !missing.is_empty() {
        s += &format!("\n  missing keys ({}): {}", missing.len(), missing.join(", "));
    }
    if !unexpected.is_empty() {
        s += &format!("\n  unexpected keys ({}): {}", unexpected.len(), unexpected.join(", "));
    }
    for (k, want, got) in mismatched {
        s += &format!("\n  shape mismatch: {k}: model has {want:?}, file has {got:?}");
    }
    s
}
