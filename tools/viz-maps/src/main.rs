//! `viz-maps`: draws the learned alignment maps over images and views.
//!
//! Flags → [`VizConfig`] → [`lewel::viz::run`] → exit code. The maps, their statistics and the
//! drawing live in `lewel::viz`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use lewel::cli::CommonArgs;
use lewel::data::DataSpec;
use lewel::events::{Event, EventSink, EventWriter, OnClosed};
use lewel::viz::{self, Input, MapChoice, VizConfig, TOOL};
use lewel::LewelError;

const EXAMPLE: &str = "  pretrain photos/ --preset small-lewelb --epochs 50 --out runs/lewel-b
  viz-maps --ckpt runs/lewel-b/ckpt/latest --data photos/ --maps top:8 --grid --out maps/
  augment photos/ --recipe lewel-b-small --out views.npy
  viz-maps --ckpt runs/lewel-b/ckpt/latest --views views.npy --limit 8 --grid --out maps-views/ \\
    | jq -c 'select(.event==\"end\") | {mean_entropy_nats, max_entropy_nats, entropy_ratio}'";

/// Draws the learned alignment maps over images and views, as PNG pictures.
#[derive(Debug, Parser)]
#[command(
    name = "viz-maps",
    version,
    long_about = "Draws the learned alignment maps over images and views, as PNG pictures.

Use viz-maps to see where a LEWEL model learns: which regions of an image each of its K alignment \
maps (the coupled head's spatial softmax, BatchNorm in eval mode) picks. Run it on a few images after \
pre-training, or on the view pairs of `augment --out views.npy` to check that a map follows the same \
content across two views. It works for lewel-b and lewel-m checkpoints of ours and for official \
LEWEL checkpoints; BYOL and MoCo v2 models have no maps (exit 1).

Each image goes through the evaluation transform; the maps are upsampled to it (bilinear) and drawn \
in viridis, with transparency, over a grey copy of it. Each map's colour scale runs from its own \
minimum to its own maximum, so even a nearly uniform map (a young model's; with scale 1 no map can \
exceed a max/min ratio of e²) shows its shape. The tile's label tells the truth: the map's entropy H \
in nats (the header gives the uniform ln(h'·w')) and, where it fits, its peak weight in units of the \
uniform 1/(h'·w'). A ring marks the peak.

stdout gets JSON lines: start; one image event per image (index, name, file, map_ids, mean and min \
entropy); one map event per drawn map (index, view, map, rank, entropy_nats, entropy_ratio, peak_row, \
peak_col, peak_mass, top10_mass); warn for unreadable images (left out; --strict makes them fatal); \
end (mean_entropy_nats over all maps, max_entropy_nats = ln(h'·w'), entropy_ratio: near 1 means \
uniform, i.e. collapsed or untrained maps).",
    after_help = lewel::cli::help_tail(EXAMPLE),
    group(clap::ArgGroup::new("input").required(true).args(["data", "views"])),
)]
struct Args {
    /// The checkpoint: ours (file, `latest`, run folder) or an official LEWEL one (lewel-b or lewel-m).
    #[arg(long, value_name = "CKPT")]
    ckpt: PathBuf,
    /// The images (DATA): an image folder, a list file, IDX files or a .npy array; the first --limit
    /// are drawn.
    #[arg(long, value_name = "DATA")]
    data: Option<PathBuf>,
    /// Instead of DATA: view pairs from `augment --out` (float32 [N,2,3,S,S]); each row shows view 1
    /// with its maps, then view 2 with the same maps. Un-normalised with the recipe in VIEWS.npy.json,
    /// else ImageNet's mean/std.
    #[arg(long, value_name = "VIEWS.npy", conflicts_with_all = ["data", "root", "size", "strict"])]
    views: Option<PathBuf>,
    /// The folder to write to (created if missing): DIR/grid.png with --grid, else one
    /// DIR/<index>-<name>.png per image (index zero-padded to 4 digits).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Which maps to draw: top:N (per image, the N maps with the largest peak mass, largest first;
    /// for view pairs by the mean over both views), indices 0,5,17 (the same maps for every image;
    /// each below K, or below K/G with --group-sum), or all.
    #[arg(long, default_value = "top:8", value_parser = MapChoice::parse, value_name = "CHOICE")]
    maps: MapChoice,
    /// Draw one map per aligned representation j instead of the K maps: the mean of maps j, K/G+j, ...,
    /// (G-1)·K/G+j, the G maps representation j pools its G channel blocks with (K/G maps, still
    /// distributions). --maps indices then run over j.
    #[arg(long)]
    group_sum: bool,
    /// One contact sheet DIR/grid.png, one row per image (the image, then its maps, each tile
    /// labelled with the map index and entropy), instead of one PNG per image.
    #[arg(long)]
    grid: bool,
    /// Side of the evaluation centre crop in pixels [default: the model's recipe: 224 after a 256
    /// resize, or 32 for CIFAR-stem models]; the resize keeps the recipe's ratio. The maps have
    /// size/32 (ImageNet stem) or size/8 (CIFAR stem) positions per side.
    #[arg(long, value_name = "PX")]
    size: Option<u32>,
    /// Draw the first N images (or view pairs) only.
    #[arg(long, default_value_t = viz::DEFAULT_LIMIT, value_name = "N")]
    limit: usize,
    /// For list files: the folder their paths are relative to.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Stop at the first unreadable image (default: leave it out, report a `warn` event).
    #[arg(long)]
    strict: bool,
    /// Data worker threads (0: one per core). The pictures do not depend on it.
    #[arg(long, default_value_t = 0, value_name = "T")]
    threads: usize,
    #[command(flatten)]
    common: CommonArgs,
}

impl Args {
    fn config(self) -> Result<VizConfig> {
        let input = match (self.data, self.views) {
            (_, Some(v)) => Input::Views(v),
            (Some(d), None) => Input::Data(DataSpec { path: d, root: self.root, strict: self.strict }),
            (None, None) => return Err(LewelError::Usage("give --data DATA or --views VIEWS.npy".into()).into()),
        };
        Ok(VizConfig {
            ckpt: self.ckpt,
            input,
            out: self.out,
            maps: self.maps,
            group_sum: self.group_sum,
            grid: self.grid,
            size: self.size,
            limit: self.limit,
            threads: self.threads,
            device: self.common.device.resolve()?,
            seed: self.common.seed,
        })
    }
}

/// stdout events, with each warning also on stderr for people. The pictures are the output: a closed
/// stdout does not stop them.
struct Sink(EventWriter);

impl EventSink for Sink {
    fn emit(&mut self, event: &Event) -> Result<(), LewelError> {
        if event.kind() == "warn" {
            let v: serde_json::Value = serde_json::from_str(&event.to_line()).unwrap_or_default();
            eprintln!("{TOOL}: warning: {}", v["message"].as_str().unwrap_or("(no message)"));
        }
        self.0.emit(event)
    }
}

fn main() -> ExitCode {
    lewel::signals::ignore_file_size_signal();
    let result = Args::parse().config().and_then(|cfg| {
        let mut sink = Sink(EventWriter::stdout(TOOL, OnClosed::Continue));
        viz::run(&cfg, &mut sink).map(|_| ())
    });
    lewel::exit::finish(TOOL, result)
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
    fn flags_become_the_config() {
        let cfg = Args::parse_from(["viz-maps", "--ckpt", "c", "--data", "d", "--out", "o", "--device", "cpu"])
            .config()
            .unwrap();
        assert_eq!((cfg.maps.clone(), cfg.limit, cfg.grid, cfg.group_sum), (MapChoice::Top(8), 16, false, false));
        assert_eq!(cfg.input, Input::Data(DataSpec::new("d")));
        let cfg = Args::parse_from([
            "viz-maps",
            "--ckpt",
            "c",
            "--views",
            "v.npy",
            "--out",
            "o",
            "--maps",
            "0,5",
            "--grid",
            "--group-sum",
            "--device",
            "cpu",
        ])
        .config()
        .unwrap();
        assert_eq!(cfg.input, Input::Views("v.npy".into()));
        assert_eq!(cfg.maps, MapChoice::Indices(vec![0, 5]));
        assert!(cfg.grid && cfg.group_sum);
        assert!(Args::try_parse_from(["viz-maps", "--ckpt", "c", "--out", "o"]).is_err(), "no input");
        assert!(Args::try_parse_from(["viz-maps", "--ckpt", "c", "--data", "d", "--views", "v", "--out", "o"]).is_err());
        assert!(Args::try_parse_from(["viz-maps", "--ckpt", "c", "--data", "d", "--out", "o", "--maps", "x"]).is_err());
    }
}
