//! `plot-events`: training curves from events.jsonl files, as a PNG or SVG picture.
//!
//! Flags → [`CurvesConfig`] → [`lewel::plot::curves::run`] → exit code. The drawing lives in
//! `lewel::plot`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use lewel::events::{Event, EventSink, EventWriter, OnClosed};
use lewel::plot::curves::{self, CurvesConfig, Format, XAxis, TOOL};
use lewel::LewelError;

const EXAMPLE: &str = "  pretrain images/ --preset small-lewelb --epochs 20 --out runs/lewel-b
  plot-events runs/lewel-b/events.jsonl runs/byol/events.jsonl --smooth 20 --out curves.png";

/// Training curves from events.jsonl files, as a PNG or SVG picture.
#[derive(Debug, Parser)]
#[command(
    name = "plot-events",
    version,
    long_about = "Training curves from events.jsonl files, as a PNG or SVG picture.

Use plot-events to see how one or several runs went: during training (re-run it on the growing \
events.jsonl), after it, or to compare methods (LEWEL vs BYOL) and settings side by side. Each \
file is one run; runs are overlaid in one colour each. Panels: total loss, global and aligned \
loss, kNN/eval accuracy, the collapse indicator (std of the normalised output, with 1/sqrt(K) for \
a uniform spread and 0 for collapse; the target's dashed), the relative update of the backbone's \
LARS-adapted weights |dw|/|w| (median, minimum dashed), the alignment-map entropy over a uniform map's \
(LEWEL; 1 = uniform maps), learning rate and EMA momentum; a panel without data is left out. A resumed run (a second start in the same file) is drawn as one curve, the later value of a \
repeated step winning. Unreadable lines are skipped with a warning.

stdout gets JSON lines: a warn event per problem and one end event (out, runs, points).",
    after_help = lewel::cli::help_tail(EXAMPLE),
    mut_arg("out", |a| a.help("The picture to write: PNG, or SVG for a .svg name (see --format). Written \
        atomically; its folder must exist"))
)]
struct Args {
    /// Events files to draw (RUN/events.jsonl), one run each; - reads stdin.
    #[arg(required = true, value_name = "EVENTS")]
    inputs: Vec<PathBuf>,

    #[command(flatten)]
    out: lewel::cli::OutArgs,

    /// Picture format [default: from --out: svg for a .svg name, else png].
    #[arg(long, value_enum, value_name = "FORMAT")]
    format: Option<FormatArg>,

    /// What the x axis counts. epoch: step / steps-per-epoch (from the epoch events), so 1.0 is the
    /// end of the first epoch.
    #[arg(long, value_enum, default_value = "step", value_name = "AXIS")]
    x: XArg,

    /// Moving average over N logged points (centred) for the noisy curves (losses, collapse
    /// indicator), with the raw values as a faint line. 0 or 1: off. Try 10-50 with --log-every 1.
    #[arg(long, default_value_t = 0, value_name = "N")]
    smooth: usize,

    /// Legend label of a run; repeat once per events file, in order [default: the run folder's
    /// name, or model.method where folder names clash].
    #[arg(long, value_name = "NAME")]
    label: Vec<String>,

    /// Picture size in pixels, WIDTHxHEIGHT (each 320-8000); text scales with it.
    #[arg(long, default_value = "1600x1000", value_parser = curves::parse_size, value_name = "WxH")]
    size: (u32, u32),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Png,
    Svg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum XArg {
    Step,
    Epoch,
}

impl Args {
    fn config(self) -> CurvesConfig {
        let format = match self.format {
            Some(FormatArg::Png) => Format::Png,
            Some(FormatArg::Svg) => Format::Svg,
            None => Format::from_path(&self.out.out),
        };
        let x = match self.x {
            XArg::Step => XAxis::Step,
            XArg::Epoch => XAxis::Epoch,
        };
        CurvesConfig {
            inputs: self.inputs,
            labels: self.label,
            out: self.out.out,
            format,
            x,
            smooth: self.smooth,
            width: self.size.0,
            height: self.size.1,
        }
    }
}

/// stdout events, with each warning also on stderr for people. A closed stdout does not stop the
/// picture from being written.
struct Sink(EventWriter);

impl EventSink for Sink {
    fn emit(&mut self, event: &Event) -> Result<(), LewelError> {
        if event.kind() == "warn" {
            let v: serde_json::Value = serde_json::from_str(&event.to_line()).unwrap_or_default();
            eprintln!("{TOOL}: warning: {}", v["message"].as_str().unwrap_or("(no message)"));
        }
        match self.0.emit(event) {
            Err(LewelError::StdoutClosed) => Ok(()),
            other => other,
        }
    }
}

fn main() -> ExitCode {
    lewel::signals::ignore_file_size_signal();
    let cfg = Args::parse().config();
    let mut sink = Sink(EventWriter::stdout(TOOL, OnClosed::Fail));
    lewel::exit::finish(TOOL, curves::run(&cfg, &mut sink))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_is_valid() {
        Args::command().debug_assert();
    }

    #[test]
    fn format_follows_out_unless_given() {
        let cfg = Args::parse_from(["plot-events", "a.jsonl", "--out", "c.SVG"]).config();
        assert_eq!(cfg.format, Format::Svg);
        let cfg = Args::parse_from(["plot-events", "a.jsonl", "--out", "c.svg", "--format", "png"]).config();
        assert_eq!(cfg.format, Format::Png);
        let cfg =
            Args::parse_from(["plot-events", "a", "b", "--out", "c", "--size", "800x600", "--x", "epoch"]).config();
        assert_eq!((cfg.width, cfg.height, cfg.x, cfg.format), (800, 600, XAxis::Epoch, Format::Png));
        assert_eq!(cfg.inputs.len(), 2);
    }
}
