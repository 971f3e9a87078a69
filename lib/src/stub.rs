//! The command line of a tool that a later issue fills: it has a real `--help` (what the tool will
//! do, its exit codes, a pipeline example) and otherwise fails with "not implemented yet", exit 1.
//! It never pretends to work.

use std::process::ExitCode;

use crate::cli::EXIT_CODES_HELP;
use crate::LewelError;

/// What a planned tool says about itself.
pub struct Planned {
    pub name: &'static str,
    pub about: &'static str,
    pub long_about: &'static str,
    pub example: &'static str,
    pub issue: u32,
}

/// The help tail every tool ends with: exit codes, then a real pipeline example.
pub fn help_tail(example: &str) -> String {
    format!("{EXIT_CODES_HELP}\n\nExample:\n{example}")
}

impl Planned {
    /// The clap command: `--help`, `--version`, and any other arguments accepted and ignored.
    pub fn command(&self) -> clap::Command {
        clap::Command::new(self.name)
            .version(env!("CARGO_PKG_VERSION"))
            .about(self.about)
            .long_about(format!(
                "{}\n\nNot implemented yet (issue {}): every run exits 1 with an error.",
                self.long_about, self.issue
            ))
            .after_help(help_tail(self.example))
            .arg(clap::Arg::new("args").num_args(0..).trailing_var_arg(true).allow_hyphen_values(true).hide(true))
    }

    /// Parses the command line (so `--help` works) and fails with exit 1.
    pub fn main(&self) -> ExitCode {
        let _ = self.command().get_matches();
        let err = LewelError::NotImplemented { what: format!("`{}`", self.name), issue: self.issue };
        crate::exit::finish(self.name, Err(err.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_command_is_valid() {
        let p = Planned { name: "x", about: "a", long_about: "b", example: "  x | y", issue: 9 };
        p.command().debug_assert();
        let help = p.command().render_long_help().to_string();
        assert!(help.contains("Exit codes") && help.contains("130") && help.contains("x | y"), "{help}");
    }
}
