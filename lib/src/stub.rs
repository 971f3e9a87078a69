//! The help tail every tool's `--help` ends with: the exit codes, then a real pipeline example.
//!
//! (The module once also held the command line of tools that a later issue would fill; every tool
//! is real now, and a part of one that is not ready fails with [`crate::LewelError::NotImplemented`].)

use crate::cli::EXIT_CODES_HELP;

/// Exit codes, then "Example:" and `example`.
pub fn help_tail(example: &str) -> String {
    format!("{EXIT_CODES_HELP}\n\nExample:\n{example}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail_has_exit_codes_and_example() {
        let t = super::help_tail("  x | y");
        assert!(t.contains("Exit codes") && t.contains("130") && t.ends_with("  x | y"), "{t}");
    }
}
