//! `dense-probe`: semantic segmentation on a frozen backbone's feature maps (linear and kNN protocols), mIoU.
//!
//! Parses the flags, builds a [`lewel::eval::dense::DenseConfig`], runs [`lewel::eval::dense::run`] and maps the
//! result to an exit code. All the work and its tests live in `lewel::eval::dense`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lewel::cli::CommonArgs;
use lewel::eval::dense::protocols::{KnnSettings, LinearSettings};
use lewel::eval::dense::{self, DataArgs, DenseConfig, EmbedArgs, Protocol, Source};
use lewel::events::{EventWriter, OnClosed};

const TOOL: &str = dense::TOOL;

const LONG_ABOUT: &str = "\
What a backbone learned *where*: semantic segmentation on its frozen feature maps, scored by mIoU.

Use dense-probe beside knn-probe and linear-probe when the question is localisation (LEWEL learns where to \
align): it needs images with segmentation masks. The backbone is frozen (eval-mode BN, no gradient); its \
stage-4 map (--layers 4), or stage 3 with stage 4 upsampled bilinearly to stage 3's grid and concatenated \
(--layers 3,4), gives one feature per patch. Two protocols (--protocol, both by default):

  linear  a 1x1-convolution classifier (weights and bias zero), features standardised per channel with the \
training split's mean and std, trained with a soft-target cross-entropy against each patch's label \
distribution, i.e. the mask DOWNSAMPLED TO THE FEATURE GRID by area (patches without a labelled pixel weigh 0); \
SGD momentum 0.9, constant lr, no weight decay, the images in file order --batch-size at a time: no randomness, \
so PyTorch reproduces it step for step. Defaults: 10 epochs, lr 0.1, 16 images per step.
  knn     training-free in-context segmentation (Hummingbird style): a memory bank of training patch features \
(L2-normalised) with their label histograms; every val patch takes its k most cosine-similar bank patches \
(default 20), weights them by softmax(cos / T) (default T 0.07) and sums their label distributions. \
--memory-size caps the bank by sampling (seeded by --seed). Computed in blocks on the device \
(--query-chunk x --bank-chunk similarities at a time), so a bank of 10^6 patches fits a laptop.

Both are scored at the masks' resolution: scores (logits or votes) upsampled bilinearly (align_corners false), \
argmax (ties: the smaller class), a confusion matrix over the pixels whose truth is not 255. Reported: mIoU (mean \
over the classes present in truth or prediction), pixel accuracy, and the IoU of each class (iou_pct_<i>[_name]; \
absent classes listed in absent_classes). Percentages end in _pct.

Inputs (--train-data / --val-data): uint8 images X.npy [N,H,W,3] with X.masks.npy [N,H,W] class ids beside it (the \
scenes benchmark layout; 255 ignored), or a VOC-style folder: JPEGImages/ID.jpg with SegmentationClass/ID.png \
(palette PNGs, the palette index is the class), all ids with a mask or those of --train-list / --val-list (one \
id per line). Images go through the checkpoint's eval transform (resize the shorter side, centre crop, as the \
other probes); masks through the same resize and crop by nearest neighbour, so scores are at the crop's \
resolution (give --resize/--crop equal to the data's size to score at the masks' own). A bad pair (a mask of \
another size than its image, a missing mask or unreadable image) is a warn event and skipped (--strict: an \
error); a class id at or above --classes is an error naming the file. Or cached feature maps: \
--train-features/--val-features float32 [N,C,h,w] .npy with FEATS.masks.npy beside.

Output (stdout, JSON lines): start, warn, epoch (linear: mean loss, seconds), skip, end, and one `result` per (checkpoint, \
protocol) with the metrics, the checkpoint's sha256, the data fingerprints, the protocol and its protocol_hash. \
--results FILE.jsonl appends each result under a lock and skips what it already holds, so it runs from cron.";

const EXAMPLE: &str = "  dense-probe --ckpt run/ckpt --train-data scenes/train.npy --val-data scenes/val.npy \\
    --classes 11 --class-names background,t-shirt,trouser,pullover,dress,coat,sandal,shirt,sneaker,bag,boot \\
    --results dense.jsonl --preview dense.png | jq 'select(.event == \"result\") | [.probe, .miou_pct]'";

/// Flags of `dense-probe`.
#[derive(Debug, Parser)]
#[command(name = TOOL, version, about = "Segmentation on frozen feature maps (linear and kNN protocols), mIoU.",
          long_about = LONG_ABOUT, after_help = lewel::cli::help_tail(EXAMPLE))]
struct Args {
    /// Checkpoints to evaluate: a file, a `latest` pointer, an exported backbone, or a folder (a run or its
    /// ckpt/) meaning every complete checkpoint in it. Repeatable. Needs --train-data and --val-data.
    #[arg(long, value_name = "CKPT", requires_all = ["train_data", "val_data"], required_unless_present = "train_features")]
    ckpt: Vec<PathBuf>,

    /// With --ckpt: training images with masks: X.npy (X.masks.npy beside it) or a VOC-style folder.
    #[arg(long, value_name = "DATA", requires = "ckpt")]
    train_data: Option<PathBuf>,

    /// With --ckpt: validation images with masks, a different split from --train-data.
    #[arg(long, value_name = "DATA", requires = "ckpt")]
    val_data: Option<PathBuf>,

    /// Masks of --train-data (.npy images) or of --train-features: uint8 [N,H,W] [default: X.masks.npy beside].
    #[arg(long, value_name = "MASKS.npy")]
    train_masks: Option<PathBuf>,

    /// Masks of --val-data (.npy images) or of --val-features [default: X.masks.npy beside].
    #[arg(long, value_name = "MASKS.npy")]
    val_masks: Option<PathBuf>,

    /// With a VOC folder as --train-data: the split list, one image id per line (ImageSets/Segmentation/train.txt)
    /// [default: every image with a mask].
    #[arg(long, value_name = "FILE", requires = "train_data")]
    train_list: Option<PathBuf>,

    /// With a VOC folder as --val-data: the split list (ImageSets/Segmentation/val.txt).
    #[arg(long, value_name = "FILE", requires = "val_data")]
    val_list: Option<PathBuf>,

    /// Instead of --ckpt: cached float32 [N,C,h,w] feature maps of the training images.
    #[arg(long, value_name = "FEATS.npy", conflicts_with = "ckpt", requires = "val_features")]
    train_features: Option<PathBuf>,

    /// Instead of --ckpt: cached feature maps of the validation images.
    #[arg(long, value_name = "FEATS.npy", conflicts_with = "ckpt", requires = "train_features")]
    val_features: Option<PathBuf>,

    /// Protocols to run, comma-separated: linear, knn.
    #[arg(long, value_name = "P,...", value_delimiter = ',', default_value = "linear,knn")]
    protocol: Vec<Protocol>,

    /// Backbone stages read: 4 (the final map), or 3,4 (stage 3 with stage 4 upsampled to its grid, concatenated).
    #[arg(long, value_name = "4|3,4", value_delimiter = ',', default_value = "4", conflicts_with = "train_features")]
    layers: Vec<usize>,

    /// Class count: ids 0..N-1, 255 ignored (VOC: 21; scenes: 11) [default: the largest id in the masks + 1].
    #[arg(long, value_name = "N")]
    classes: Option<usize>,

    /// Class names for the legend and the per-class keys: a file (one per line) or a comma list.
    #[arg(long, value_name = "FILE|A,B,...")]
    class_names: Option<String>,

    /// knn: neighbours per val patch (Hummingbird uses 30 to 90 at scale; 20 suits small banks).
    #[arg(long, value_name = "K", default_value_t = dense::DEFAULT_K)]
    k: i64,

    /// knn: softmax temperature of the neighbours' cosine similarities (> 0); smaller trusts the nearest more.
    #[arg(long, value_name = "T", default_value_t = dense::DEFAULT_TEMPERATURE)]
    temperature: f64,

    /// knn: the largest memory bank in patches; more training patches are sampled down (seeded by --seed).
    /// The bank lives on the device: memory-size x C x 4 bytes (10^6 patches of 512 channels: 2 GB).
    #[arg(long, value_name = "N", default_value_t = dense::DEFAULT_MEMORY_SIZE)]
    memory_size: usize,

    /// knn: val patches per similarity block (memory only: about query-chunk x bank-chunk x 4 bytes).
    #[arg(long, value_name = "N", default_value_t = dense::DEFAULT_QUERY_CHUNK)]
    query_chunk: i64,

    /// knn: bank patches per similarity block (memory only).
    #[arg(long, value_name = "N", default_value_t = dense::DEFAULT_BANK_CHUNK)]
    bank_chunk: i64,

    /// linear: passes over the training images.
    #[arg(long, value_name = "N", default_value_t = dense::DEFAULT_EPOCHS)]
    epochs: usize,

    /// linear: the constant SGD learning rate (momentum 0.9; on standardised features).
    #[arg(long, value_name = "LR", default_value_t = dense::DEFAULT_LR)]
    lr: f64,

    /// linear: images per step (all their patches), in file order.
    #[arg(long, value_name = "N", default_value_t = dense::DEFAULT_BATCH_SIZE)]
    batch_size: i64,

    /// With --ckpt: shorter side of the eval resize in pixels [default: the checkpoint's recipe].
    #[arg(long, value_name = "PX", requires = "ckpt")]
    resize: Option<u32>,

    /// With --ckpt: side of the eval centre crop in pixels [default: the checkpoint's recipe].
    #[arg(long, value_name = "PX", requires = "ckpt")]
    crop: Option<u32>,

    /// With --ckpt: images per forward pass of the frozen backbone.
    #[arg(long, value_name = "N", default_value_t = 64)]
    embed_batch_size: usize,

    /// With --ckpt: data worker threads (0: one per core). The numbers do not depend on it.
    #[arg(long, value_name = "T", default_value_t = 0)]
    threads: usize,

    /// With --ckpt: stop at the first bad image/mask pair (default: a warn event, and the pair is skipped).
    #[arg(long, requires = "ckpt")]
    strict: bool,

    /// Append each result line to this JSON-lines file (under a lock) and skip every (checkpoint, protocol) it
    /// already holds with the same protocol hash.
    #[arg(long, value_name = "FILE.jsonl")]
    results: Option<PathBuf>,

    /// Draw a few validation images, their masks and the predicted masks (VOC colours, legend) into this PNG
    /// (the last checkpoint evaluated).
    #[arg(long, value_name = "FILE.png")]
    preview: Option<PathBuf>,

    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    lewel::signals::ignore_file_size_signal();
    let args = Args::parse();
    lewel::exit::finish(TOOL, run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    let source = match (&args.train_features, &args.val_features) {
        (Some(t), Some(v)) => Source::Features {
            train: t.clone(),
            train_masks: args.train_masks.clone(),
            val: v.clone(),
            val_masks: args.val_masks.clone(),
        },
        _ => Source::Ckpts {
            ckpts: args.ckpt.clone(),
            train: DataArgs {
                path: args.train_data.clone().unwrap_or_default(),
                masks: args.train_masks.clone(),
                split_list: args.train_list.clone(),
            },
            val: DataArgs {
                path: args.val_data.clone().unwrap_or_default(),
                masks: args.val_masks.clone(),
                split_list: args.val_list.clone(),
            },
            embed: EmbedArgs {
                resize: args.resize,
                crop: args.crop,
                layers: args.layers.clone(),
                batch_size: args.embed_batch_size,
                threads: args.threads,
                strict: args.strict,
            },
        },
    };
    let class_names = args.class_names.as_deref().map(dense::parse_class_names).transpose()?;
    let cfg = DenseConfig {
        protocols: args.protocol.clone(),
        source,
        classes: args.classes.or(class_names.as_ref().map(Vec::len)),
        class_names,
        knn: KnnSettings {
            k: args.k,
            temperature: args.temperature,
            memory_size: args.memory_size,
            seed: args.common.seed,
            query_chunk: args.query_chunk,
            bank_chunk: args.bank_chunk,
        },
        linear: LinearSettings { epochs: args.epochs, lr: args.lr, batch_size: args.batch_size },
        device: args.common.device.resolve()?,
        results: args.results.clone(),
        preview: args.preview.clone(),
    };
    cfg.validate()?;
    let bar = lewel::cli::progress_bar(args.common.quiet, "{bar:40} {pos}/{len} ({eta} left)");
    let mut sink = EventWriter::stdout(TOOL, OnClosed::Fail);
    let summary = dense::run(&cfg, &mut sink, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let summary = summary?;
    if !args.common.quiet {
        eprintln!("{TOOL}: {} evaluated, {} already in --results", summary.evaluated, summary.skipped);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn command_is_valid() {
        super::Args::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_library() {
        let a = super::Args::parse_from(["dense-probe", "--train-features", "a.npy", "--val-features", "b.npy"]);
        assert_eq!(a.k, lewel::eval::dense::DEFAULT_K);
        assert_eq!(a.epochs, lewel::eval::dense::DEFAULT_EPOCHS);
        assert_eq!(a.protocol.len(), 2);
        assert_eq!(a.layers, [4]);
    }
}
