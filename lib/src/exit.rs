//! Exit codes, and the one place where a tool's result becomes one.
//!
//! 0 ok, 1 runtime failure, 2 usage, 3 diverged, 130 interrupted (see [`crate::cli::EXIT_CODES_HELP`]).

use std::process::ExitCode;

use crate::LewelError;

pub const OK: u8 = 0;
pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub const DIVERGED: u8 = 3;
pub const INTERRUPTED: u8 = 130;

/// The exit code for an error: the first [`LewelError`] in its chain decides, anything else is 1.
pub fn code_for(err: &anyhow::Error) -> u8 {
    match err.chain().find_map(|e| e.downcast_ref::<LewelError>()) {
        Some(LewelError::Diverged { .. }) => DIVERGED,
        Some(LewelError::Interrupted) => INTERRUPTED,
        Some(LewelError::StdoutClosed) => OK,
        Some(LewelError::Usage(_)) => USAGE,
        _ => FAILURE,
    }
}

/// Prints `<tool>: error: ...` on stderr for a failure and returns the exit code. A closed stdout
/// is not an error for a filter tool: it exits 0 silently.
pub fn finish(tool: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(OK),
        Err(err) => {
            let code = code_for(&err);
            let closed = err.chain().any(|e| matches!(e.downcast_ref::<LewelError>(), Some(LewelError::StdoutClosed)));
            if !closed {
                eprintln!("{tool}: error: {err:#}");
            }
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn codes_follow_the_error_chain() {
        let e = anyhow::Error::from(LewelError::Diverged { step: 3, loss: f64::NAN }).context("training");
        assert_eq!(code_for(&e), DIVERGED);
        let e: anyhow::Result<()> = Err(LewelError::Interrupted).context("pretrain");
        assert_eq!(code_for(&e.unwrap_err()), INTERRUPTED);
        assert_eq!(code_for(&LewelError::Usage("x".into()).into()), USAGE);
        assert_eq!(code_for(&LewelError::StdoutClosed.into()), OK);
        assert_eq!(code_for(&anyhow::anyhow!("disk full")), FAILURE);
        assert_eq!(code_for(&LewelError::NotImplemented { what: "x".into(), issue: 1 }.into()), FAILURE);
    }
}
