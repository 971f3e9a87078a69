//! Flag groups that mean the same thing in every tool, defined once and `#[command(flatten)]`ed.

use std::path::PathBuf;

use clap::Args;

/// The exit codes, for the end of every `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    ok (also when the reader of stdout went away, for filter tools)
  1    runtime failure (bad input file, I/O error, not implemented)
  2    usage error (bad flags or values)
  3    training diverged (non-finite loss)
  130  interrupted by SIGINT or SIGTERM (after a final checkpoint where the tool writes one)";

/// The tail every tool's `--help` ends with (clap's `after_help`): [`EXIT_CODES_HELP`], then
/// "Example:" and `example`, a real pipeline.
pub fn help_tail(example: &str) -> String {
    format!("{EXIT_CODES_HELP}\n\nExample:\n{example}")
}

/// The default of `--seed`: fixed, so that two runs without the flag agree.
pub const DEFAULT_SEED: u64 = 23456;

/// `--seed`, `--device` and `--quiet`.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Seed of every random choice (weights, data order, augmentations). Echoed in the `start` event;
    /// the same seed gives the same result on CPU.
    #[arg(long, default_value_t = DEFAULT_SEED, value_name = "N")]
    pub seed: u64,

    /// Where to compute: auto (CUDA when there is one, else CPU), cpu, cuda, or cuda:N.
    #[arg(long, default_value = "auto", value_name = "DEVICE", value_parser = parse_device)]
    pub device: DeviceSpec,

    /// No progress bar and no informational messages on stderr (warnings and errors still show).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `--out`: where the tool writes its result (a run folder for training tools, a file for others).
#[derive(Debug, Clone, Args)]
pub struct OutArgs {
    /// Where to write the result: a run folder (pretrain, finetune-semi), a file or folder (the others).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

/// The run-folder flags of the training tools (`pretrain`, `finetune-semi`).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Emit a `step` event every N steps (0 = none; epoch events always).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub log_every: u64,
    /// Stop after this global step with a checkpoint (exit 0): for quick tests and time-boxed runs; 0 saves
    /// the initial weights (a random-initialisation baseline for the probes).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u64>,
    /// The run folder to write.
    #[arg(long, value_name = "RUN", required_unless_present = "resume", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its newest valid checkpoint. Flags given with it must agree
    /// with the run's configuration.
    #[arg(long, value_name = "RUN")]
    pub resume: Option<PathBuf>,
}

/// The speed flags of the training tools (`pretrain`, `finetune-semi`): mixed precision and memory layout. They
/// are settings, like `--device`: a resumed run may change them.
#[derive(Debug, Clone, Args)]
pub struct AmpArgs {
    /// Precision of the network forwards: fp32 (default: the reference numbers, bit-exact reruns on CPU),
    /// bf16 (autocast to bfloat16; no loss scaling; the choice on GPUs since Ampere and on CPUs with AVX512-BF16
    /// or AMX) or fp16 (autocast to float16 with dynamic loss scaling: a step whose gradients overflow is
    /// skipped and the scale halved; for GPUs without bfloat16). Weights, gradients, the optimiser, the EMA
    /// target and the losses stay float32. From the same weights, losses differ from fp32 by under 1% (bf16) or
    /// 0.1% (fp16). A setting, like --device: give it again with --resume.
    #[arg(long, value_enum, default_value_t = crate::amp::Precision::Fp32, value_name = "P")]
    pub precision: crate::amp::Precision,

    /// First loss scale of --precision fp16 (default 65536 = 2^16, PyTorch's). The scale halves at every step
    /// whose gradients overflow and doubles after 2000 clean steps in a row, so the default suits nearly every
    /// run; a resumed run continues with its checkpointed scale.
    #[arg(long, value_name = "S")]
    pub loss_scale_init: Option<f64>,

    /// Lay the convolution weights and the images out channels-last (NHWC). Same numbers up to float
    /// rounding; faster convolutions on GPUs with tensor cores (together with bf16 or fp16) and with oneDNN on
    /// CPUs. A setting, like --device: give it again with --resume.
    #[arg(long)]
    pub channels_last: bool,
}

impl AmpArgs {
    /// The first loss scale: `--loss-scale-init`, else PyTorch's default. A usage error with a precision other
    /// than fp16 (nothing would use it).
    pub fn loss_scale_init(&self) -> Result<f64, crate::LewelError> {
        match self.loss_scale_init {
            None => Ok(crate::amp::GradScalerConfig::default().init_scale),
            Some(_) if self.precision != crate::amp::Precision::Fp16 => Err(crate::LewelError::Usage(format!(
                "--loss-scale-init only applies to --precision fp16 (got --precision {})",
                self.precision
            ))),
            Some(s) if !(s.is_finite() && s > 0.0 && s <= f32::MAX as f64) => Err(crate::LewelError::Usage(format!(
                "--loss-scale-init {s}: the scale must be positive and at most {:e} (float32)",
                f32::MAX
            ))),
            Some(s) => Ok(s),
        }
    }
}

/// A device as the user wrote it; resolved to a `tch::Device` by [`DeviceSpec::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// The device to use now. `auto` picks CUDA device 0 when libtorch sees one.
    pub fn resolve(self) -> Result<tch::Device, crate::LewelError> {
        self.load_cuda()?;
        match self {
            DeviceSpec::Auto => Ok(tch::Device::cuda_if_available()),
            DeviceSpec::Cpu => Ok(tch::Device::Cpu),
            DeviceSpec::Cuda(i) => {
                let n = tch::Cuda::device_count();
                if (i as i64) < n {
                    Ok(tch::Device::Cuda(i))
                } else {
                    Err(crate::LewelError::Usage(format!(
                        "--device cuda:{i}: libtorch sees {n} CUDA device(s); use --device cpu or a smaller index"
                    )))
                }
            }
        }
    }
}

impl DeviceSpec {
    /// Opens libtorch's CUDA part when this choice may use it (`cuda`, or `auto` on a machine with an NVIDIA
    /// driver); the binaries do not link it, so that CPU runs start fast and small. Must come before anything else
    /// asks libtorch about CUDA.
    pub fn load_cuda(self) -> Result<(), crate::LewelError> {
        match self {
            DeviceSpec::Cpu => Ok(()),
            DeviceSpec::Auto => {
                if lewel_ffi::cuda::driver_present() {
                    let _ = lewel_ffi::cuda::load(); // no CUDA libtorch: auto means the CPU
                }
                Ok(())
            }
            DeviceSpec::Cuda(_) => lewel_ffi::cuda::load()
                .map_err(|e| crate::LewelError::Usage(format!("--device {self}: no CUDA in this libtorch: {e}"))),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Parses `auto`, `cpu`, `cuda` and `cuda:N`.
pub fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    match s {
        "auto" => Ok(DeviceSpec::Auto),
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceSpec::Cuda)
            .ok_or_else(|| format!("expected auto, cpu, cuda or cuda:N, got {s:?}")),
    }
}

/// The bar of a training run (pretrain, finetune-semi): steps, ETA and the latest step's figures.
pub const STEPS_TEMPLATE: &str = "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps, ETA {eta} | {msg}";

/// An indicatif bar on stderr with `template`, hidden under `--quiet` (indicatif also hides it when
/// stderr is not a terminal). The one constructor every tool uses.
pub fn progress_bar(quiet: bool, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    if quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Shows a training step's figures on a [`STEPS_TEMPLATE`] bar.
pub fn show_step(bar: &indicatif::ProgressBar, r: &crate::train::StepReport) {
    bar.set_length(r.total_steps);
    bar.set_position(r.step);
    bar.set_message(format!(
        "epoch {}/{} loss {:.4} lr {:.3e} {:.0} img/s wait {:.0}%",
        r.epoch + 1,
        r.epochs,
        r.loss,
        r.lr,
        r.images_per_s,
        100.0 * r.data_wait_frac
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!(parse_device("auto"), Ok(DeviceSpec::Auto));
        assert_eq!(parse_device("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(parse_device("cuda"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(parse_device("cuda:3"), Ok(DeviceSpec::Cuda(3)));
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn help_tail_has_exit_codes_and_example() {
        let t = help_tail("  x | y");
        assert!(t.contains("Exit codes") && t.contains("130") && t.ends_with("  x | y"), "{t}");
    }

    #[test]
    fn cpu_resolves_everywhere() {
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), tch::Device::Cpu);
    }
}
