//! The parallel, deterministic loaders: [`TwoViewLoader`] (pre-training: two augmented views per
//! image, shuffled epochs) and [`EvalLoader`] (evaluation transform, in order).
//!
//! # Determinism
//! The order of epoch e is a Fisher-Yates shuffle drawn from (seed, e); the views of item i in epoch e
//! draw from generators keyed by (seed, e, i, view). Nothing depends on which thread does what, so
//! the same seed gives byte-identical batches with 1 or N threads, and [`TwoViewLoader::epoch`] with
//! `start_step = k` yields exactly the batches k.. of the full epoch without decoding batches 0..k.
//! Tar shards are ordered shard-wise instead (shards shuffled, then a bounded shuffle buffer, one run of
//! shards per rank: [`crate::data::shards`]), as a pure function of (seed, epoch, shard sizes) all the same.
//!
//! # Threads and prefetch
//! A producer thread per epoch keeps up to `prefetch` batches in the making at once on a rayon pool
//! of `threads` workers (the items of each batch spread over the pool, so a worker done with one
//! batch takes items of the next rather than waiting), and hands finished batches, in step order, to
//! the consumer through a channel of `prefetch` more: at most 2 x `prefetch` batches are in memory.
//! The consumer's time blocked on that channel is reported as `wait_s` (`data_wait` in training
//! events): near zero when the data keeps up. [`TwoViewLoader::epoch`]'s workers write the views
//! straight into the batch tensors, so the consumer's thread copies nothing (a copy of the batch there
//! was 2-4% of a CPU training loop at 224 px, all of its data wait; more beside a fast GPU step).
//!
//! # Bad items
//! An item whose file cannot be read or decoded never changes the batch size. Without `strict` it is
//! replaced by the next item of the epoch's order (wrapping around; the next again if that one fails
//! too, up to 64 tries), whose views then draw from the generator keyed with the attempt number so
//! they differ from that item's own views; the failed index and the reason are listed in the batch's
//! `skipped`. With `strict` the batch is an error naming the file. The evaluation loader keeps row i
//! for item i: a failed item's row is all zeros (the mean colour after normalisation) and is listed
//! in `skipped`.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;

use crate::data::dataset::Dataset;
use crate::data::recipe::Recipe;
use crate::data::rng::{epoch_order, Rng, Stream};
use crate::data::view::{apply_eval, apply_view, sample_view};

/// How many items are tried in place of one that fails before the batch is an error.
pub const MAX_ATTEMPTS: usize = 64;

/// Settings of the two-view loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Seed of the epoch orders and of every view.
    pub seed: u64,
    /// Items per batch.
    pub batch_size: usize,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Finished batches kept ready ahead of the consumer (at least 1).
    pub prefetch: usize,
    /// Shuffle each epoch (false: items in data order).
    pub shuffle: bool,
    /// Drop the last partial batch of an epoch.
    pub drop_last: bool,
    /// A bad item is an error instead of being replaced.
    pub strict: bool,
    /// Tar shards only: the items of the bounded shuffle buffer after the shards are shuffled (0 or 1: none; see
    /// [`crate::data::shards`]). Other data are shuffled whole.
    pub shuffle_buffer: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            seed: crate::cli::DEFAULT_SEED,
            batch_size: 256,
            threads: 0,
            prefetch: 2,
            shuffle: true,
            drop_last: true,
            strict: false,
            shuffle_buffer: crate::data::shards::DEFAULT_SHUFFLE_BUFFER,
        }
    }
}

/// A batch of view pairs in plain memory (what [`Batch`] holds as tensors).
#[derive(Debug, Clone, PartialEq)]
pub struct RawBatch {
    /// The step within the epoch.
    pub step: usize,
    /// Side of the views.
    pub size: usize,
    /// View 1 of every item, `[B, 3, S, S]` row-major, normalised.
    pub v1: Vec<f32>,
    /// View 2 likewise.
    pub v2: Vec<f32>,
    /// The item each row came from (a stand-in's index where an item failed).
    pub indices: Vec<usize>,
    pub labels: Option<Vec<i64>>,
    /// Items that failed to load: index and reason.
    pub skipped: Vec<(usize, String)>,
    /// Seconds the consumer waited for this batch.
    pub wait_s: f64,
}

/// A batch of view pairs as tensors, for training.
#[derive(Debug)]
pub struct Batch {
    /// `[B, 3, S, S]` f32, normalised.
    pub v1: tch::Tensor,
    pub v2: tch::Tensor,
    pub indices: Vec<usize>,
    pub labels: Option<Vec<i64>>,
    pub wait_s: f64,
    pub skipped: Vec<(usize, String)>,
}

impl From<RawBatch> for Batch {
    fn from(r: RawBatch) -> Batch {
        let b = r.indices.len() as i64;
        let s = r.size as i64;
        Batch {
            v1: tch::Tensor::from_slice(&r.v1).view([b, 3, s, s]),
            v2: tch::Tensor::from_slice(&r.v2).view([b, 3, s, s]),
            indices: r.indices,
            labels: r.labels,
            wait_s: r.wait_s,
            skipped: r.skipped,
        }
    }
}

fn build_pool(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    let threads =
        if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
    Ok(Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("lewel-data-{i}"))
            .build()
            .context("could not start the data worker threads")?,
    ))
}

/// The batches of one pass, produced ahead by a background thread. Dropping it stops the producer.
pub struct Batches<T> {
    rx: Option<Receiver<Result<T>>>,
    handle: Option<JoinHandle<()>>,
}

/// Implemented by batch types that report their wait.
pub trait HasWait {
    fn set_wait(&mut self, s: f64);
}
impl HasWait for RawBatch {
    fn set_wait(&mut self, s: f64) {
        self.wait_s = s;
    }
}

impl<T: HasWait + Send + 'static> Batches<T> {
    fn spawn<F>(pool: Arc<rayon::ThreadPool>, steps: std::ops::Range<usize>, prefetch: usize, job: F) -> Batches<T>
    where
        F: Fn(usize) -> Result<T> + Send + Sync + 'static,
    {
        let prefetch = prefetch.max(1);
        let (tx, rx) = sync_channel(prefetch);
        let job = Arc::new(job);
        let handle = std::thread::Builder::new()
            .name("lewel-data-producer".into())
            .spawn(move || {
                // Up to `prefetch` batches are computed at once, each spread over the pool, so that
                // workers done with one batch steal items of the next instead of waiting at a
                // barrier; results are passed on in step order.
                let mut inflight: std::collections::VecDeque<Receiver<Result<T>>> = Default::default();
                let mut steps = steps.into_iter();
                loop {
                    while inflight.len() < prefetch {
                        let Some(step) = steps.next() else { break };
                        let (otx, orx) = sync_channel(1);
                        let job = job.clone();
                        pool.spawn_fifo(move || {
                            // A panic in a spawned rayon job would abort the process: make it an error.
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(step)))
                                .unwrap_or_else(|p| {
                                    Err(anyhow!("a data worker panicked at step {step}: {}", panic_text(&p)))
                                });
                            let _ = otx.send(r);
                        });
                        inflight.push_back(orx);
                    }
                    let Some(next) = inflight.pop_front() else { break };
                    let Ok(r) = next.recv() else { break };
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        break;
                    }
                }
                // Dropping `inflight` lets running jobs finish and discard their results.
            })
            .expect("could not start the data producer thread");
        Batches { rx: Some(rx), handle: Some(handle) }
    }
}

impl<T: HasWait> Iterator for Batches<T> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        let start = Instant::now();
        let mut r = self.rx.as_ref()?.recv().ok()?;
        if let Ok(b) = &mut r {
            b.set_wait(start.elapsed().as_secs_f64());
        }
        Some(r)
    }
}

impl<T> Drop for Batches<T> {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Batch buffers handed back by the consumer, reused for later batches: a fresh multi-megabyte
/// buffer per batch would cost page faults and zeroing comparable to the augmentation itself.
#[derive(Default)]
pub struct BufferPool {
    free: std::sync::Mutex<Vec<Vec<f32>>>,
}

impl BufferPool {
    /// A buffer of exactly `len` values (contents unspecified: the caller overwrites all of them).
    pub fn take(&self, len: usize) -> Vec<f32> {
        let mut free = self.free.lock().expect("buffer pool poisoned");
        match free.iter().position(|b| b.len() == len) {
            Some(k) => free.swap_remove(k),
            None => vec![0f32; len],
        }
    }

    /// Returns a buffer for reuse (at most 16 are kept).
    pub fn give(&self, buf: Vec<f32>) {
        let mut free = self.free.lock().expect("buffer pool poisoned");
        if free.len() < 16 {
            free.push(buf);
        }
    }
}

/// Two augmented views per image, shuffled epochs, parallel and deterministic (see the module docs).
pub struct TwoViewLoader {
    dataset: Arc<dyn Dataset>,
    recipe: Arc<Recipe>,
    cfg: LoaderConfig,
    pool: Arc<rayon::ThreadPool>,
    buffers: Arc<BufferPool>,
    /// (rank, world): this process makes the rank-th of `world` equal contiguous slices of every batch.
    shard: (usize, usize),
    /// The CUDA device whose pinned (page-locked) host memory the batches of [`TwoViewLoader::epoch`] end in.
    pin: Option<tch::Device>,
}

/// What one item of a two-view batch came to.
struct ItemResult {
    index: usize,
    skipped: Vec<(usize, String)>,
}

impl TwoViewLoader {
    /// A loader over `dataset` with `recipe`. Already-normalised tensor data cannot be augmented: an error.
    pub fn new(dataset: Arc<dyn Dataset>, recipe: Recipe, cfg: LoaderConfig) -> Result<TwoViewLoader> {
        recipe.validate()?;
        if dataset.prepared().is_some() {
            bail!(
                "{}: already-normalised tensors are used as they are; augmentation is not possible (give images)",
                dataset.describe()
            );
        }
        if dataset.is_empty() {
            bail!("{}: no items", dataset.describe());
        }
        if cfg.batch_size == 0 {
            return Err(crate::LewelError::Usage("the batch size must be at least 1".into()).into());
        }
        if cfg.drop_last && cfg.batch_size > dataset.len() {
            return Err(crate::LewelError::Usage(format!(
                "batch size {} is larger than the {} items of {} and the last partial batch is dropped: no batches; lower --batch-size",
                cfg.batch_size,
                dataset.len(),
                dataset.describe()
            ))
            .into());
        }
        let pool = build_pool(cfg.threads)?;
        Ok(TwoViewLoader {
            dataset,
            recipe: Arc::new(recipe),
            cfg,
            pool,
            buffers: Arc::default(),
            shard: (0, 1),
            pin: None,
        })
    }

    /// Makes this loader produce only the `rank`-th of `world` equal contiguous slices of every batch (data
    /// parallelism: the batch of the steps is the global one, and the slices of all ranks together are exactly the
    /// batch one process would make, views included). The batch size must be a multiple of `world`.
    pub fn with_shard(mut self, rank: usize, world: usize) -> Result<TwoViewLoader> {
        if world == 0 || rank >= world || self.cfg.batch_size % world != 0 {
            return Err(crate::LewelError::Usage(format!(
                "the batch size {} must be a multiple of the {world} processes",
                self.cfg.batch_size
            ))
            .into());
        }
        self.shard = (rank, world);
        Ok(self)
    }

    /// For a CUDA `device`: the workers copy each finished batch of [`TwoViewLoader::epoch`] into pinned host memory
    /// (PyTorch's caching host allocator, so the buffers are reused), off the training thread, so that the batch
    /// reaches the GPU by an asynchronous copy (`Tensor::to_device_(.., non_blocking = true, ..)`) that does not
    /// block the host while the step is queued. Any other device: no change. The values are the same either way.
    pub fn pinned_for(mut self, device: tch::Device) -> TwoViewLoader {
        self.pin = if device.is_cuda() { Some(device) } else { None };
        self
    }

    /// The CUDA device the batches are pinned for ([`TwoViewLoader::pinned_for`]).
    pub fn pinned(&self) -> Option<tch::Device> {
        self.pin
    }

    /// The data set.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// The recipe.
    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    /// Batches per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        let n = self.dataset.len();
        if self.cfg.drop_last {
            n / self.cfg.batch_size
        } else {
            n.div_ceil(self.cfg.batch_size)
        }
    }

    /// The order of `epoch`'s items: a shuffle of all of them, or for tar shards the shards shuffled, cut
    /// into one run per rank, each through the shuffle buffer ([`crate::data::shards::shard_epoch_order`]).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        match self.dataset.shard_sizes() {
            Some(sizes) => crate::data::shards::shard_epoch_order(
                sizes,
                self.cfg.seed,
                epoch,
                self.cfg.shuffle,
                self.cfg.shuffle_buffer,
                self.shard.1,
                self.cfg.batch_size,
            ),
            None => epoch_order(self.dataset.len(), self.cfg.seed, epoch, self.cfg.shuffle),
        }
    }

    /// The batches `start_step..` of `epoch` as tensors. The workers write the views straight into the
    /// tensors' memory, so the consumer gets them without a copy.
    pub fn epoch(&self, epoch: u64, start_step: usize) -> Batches<Batch> {
        let job = self.batch_job(epoch);
        let s = self.recipe.size as i64;
        let pin = self.pin;
        self.spawn(start_step, move |step| {
            let (lo, hi) = job.range(step);
            let shape = [(hi - lo) as i64, 3, s, s];
            let (mut v1, mut v2) = (empty_f32(shape), empty_f32(shape));
            // SAFETY: both tensors were just allocated here, are contiguous float32 of numel values, and
            // nothing else refers to them until the batch is returned.
            let (o1, o2) = unsafe { (f32_slice_mut(&mut v1), f32_slice_mut(&mut v2)) };
            let filled = job.fill(lo, hi, o1, o2)?;
            let (v1, v2) = match pin {
                // a failed pin (no page-locked memory left) keeps the pageable batch: a blocking copy, same values
                Some(d) => (v1.f_pin_memory(d).unwrap_or(v1), v2.f_pin_memory(d).unwrap_or(v2)),
                None => (v1, v2),
            };
            Ok(Batch { v1, v2, indices: filled.indices, labels: filled.labels, wait_s: 0.0, skipped: filled.skipped })
        })
    }

    /// Hands a consumed batch's buffers back for reuse (optional; saves page faults).
    pub fn recycle(&self, batch: RawBatch) {
        self.buffers.give(batch.v1);
        self.buffers.give(batch.v2);
    }

    /// The batches `start_step..` of `epoch` in plain memory.
    pub fn epoch_raw(&self, epoch: u64, start_step: usize) -> Batches<RawBatch> {
        let job = self.batch_job(epoch);
        let buffers = self.buffers.clone();
        let s = self.recipe.size as usize;
        self.spawn(start_step, move |step| {
            let (lo, hi) = job.range(step);
            let per = 3 * s * s;
            let mut v1 = buffers.take((hi - lo) * per);
            let mut v2 = buffers.take((hi - lo) * per);
            let filled = job.fill(lo, hi, &mut v1, &mut v2)?;
            Ok(RawBatch {
                step,
                size: s,
                v1,
                v2,
                indices: filled.indices,
                labels: filled.labels,
                skipped: filled.skipped,
                wait_s: 0.0,
            })
        })
    }

    /// What every batch of `epoch` needs.
    fn batch_job(&self, epoch: u64) -> BatchJob {
        BatchJob {
            dataset: self.dataset.clone(),
            recipe: self.recipe.clone(),
            cfg: self.cfg.clone(),
            epoch,
            order: Arc::new(self.order(epoch)),
            shard: self.shard,
        }
    }

    /// The producer of the steps `start_step..` of an epoch, each made by `job`.
    fn spawn<T, F>(&self, start_step: usize, job: F) -> Batches<T>
    where
        T: HasWait + Send + 'static,
        F: Fn(usize) -> Result<T> + Send + Sync + 'static,
    {
        let steps = start_step.min(self.steps_per_epoch())..self.steps_per_epoch();
        Batches::spawn(self.pool.clone(), steps, self.cfg.prefetch, job)
    }
}

impl HasWait for Batch {
    fn set_wait(&mut self, s: f64) {
        self.wait_s = s;
    }
}

/// An uninitialised contiguous float32 CPU tensor.
fn empty_f32(shape: [i64; 4]) -> tch::Tensor {
    tch::Tensor::empty(shape, (tch::Kind::Float, tch::Device::Cpu))
}

/// The values of a contiguous float32 CPU tensor, to be written in place.
///
/// # Safety
/// `t` must be a contiguous float32 CPU tensor whose storage no other tensor or slice uses while the
/// returned slice lives.
unsafe fn f32_slice_mut(t: &mut tch::Tensor) -> &mut [f32] {
    debug_assert!(t.kind() == tch::Kind::Float && t.is_contiguous() && t.device() == tch::Device::Cpu);
    let n = t.numel();
    if n == 0 {
        return &mut [];
    }
    // SAFETY: the caller's contract: n contiguous f32 values that nothing else uses.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr().cast::<f32>(), n) }
}

/// The items, labels and skipped files of one filled batch.
struct Filled {
    indices: Vec<usize>,
    labels: Option<Vec<i64>>,
    skipped: Vec<(usize, String)>,
}

/// Everything the workers need to make the batches of one epoch.
struct BatchJob {
    dataset: Arc<dyn Dataset>,
    recipe: Arc<Recipe>,
    cfg: LoaderConfig,
    epoch: u64,
    order: Arc<Vec<usize>>,
    /// (rank, world): see [`TwoViewLoader::with_shard`].
    shard: (usize, usize),
}

impl BatchJob {
    /// The positions in the epoch's order of this rank's slice of batch `step`.
    fn range(&self, step: usize) -> (usize, usize) {
        let (rank, world) = self.shard;
        let bs = self.cfg.batch_size;
        let (global_lo, global_hi) = (step * bs, ((step + 1) * bs).min(self.order.len()));
        let per_rank = (global_hi - global_lo).div_ceil(world);
        let lo = (global_lo + rank * per_rank).min(global_hi);
        (lo, (lo + per_rank).min(global_hi))
    }

    /// Writes the two views of the items at positions `lo..hi` into `v1` and `v2` (`[hi - lo, 3, S, S]`
    /// each), spread over the pool.
    fn fill(&self, lo: usize, hi: usize, v1: &mut [f32], v2: &mut [f32]) -> Result<Filled> {
        let s = self.recipe.size as usize;
        let per = 3 * s * s;
        debug_assert_eq!((v1.len(), v2.len()), ((hi - lo) * per, (hi - lo) * per));
        let ds = &*self.dataset;
        let results: Vec<Result<ItemResult>> = v1
            .par_chunks_mut(per)
            .zip(v2.par_chunks_mut(per))
            .enumerate()
            .map(|(k, (o1, o2))| two_view_item(ds, &self.recipe, &self.cfg, self.epoch, &self.order, lo + k, o1, o2))
            .collect();
        let mut indices = Vec::with_capacity(hi - lo);
        let mut skipped: Vec<(usize, String)> = Vec::new();
        for r in results {
            let r = r?;
            indices.push(r.index);
            for sk in r.skipped {
                if !skipped.iter().any(|(i, _)| *i == sk.0) {
                    skipped.push(sk);
                }
            }
        }
        let labels = indices.iter().map(|&i| ds.label(i)).collect::<Option<Vec<i64>>>();
        Ok(Filled { indices, labels, skipped })
    }
}

#[allow(clippy::too_many_arguments)]
fn two_view_item(
    ds: &dyn Dataset,
    recipe: &Recipe,
    cfg: &LoaderConfig,
    epoch: u64,
    order: &[usize],
    pos: usize,
    out1: &mut [f32],
    out2: &mut [f32],
) -> Result<ItemResult> {
    let n = order.len();
    let mut skipped = Vec::new();
    for attempt in 0..n.min(MAX_ATTEMPTS) {
        let index = order[(pos + attempt) % n];
        // A decoder that panics on a malformed file is treated like one that returns an error.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ds.load(index)))
            .unwrap_or_else(|p| Err(anyhow!("the decoder panicked: {}", panic_text(&p))));
        match loaded {
            Ok(img) => {
                let a = attempt as u64;
                let mut r1 = Rng::for_view(cfg.seed, epoch, index as u64, Stream::View1, a);
                let p1 = sample_view(&recipe.view1, img.width(), img.height(), &mut r1);
                apply_view(&img, &p1, recipe, out1);
                let mut r2 = Rng::for_view(cfg.seed, epoch, index as u64, Stream::View2, a);
                let p2 = sample_view(&recipe.view2, img.width(), img.height(), &mut r2);
                apply_view(&img, &p2, recipe, out2);
                crate::data::decode::recycle(img);
                return Ok(ItemResult { index, skipped });
            }
            Err(e) => {
                if cfg.strict {
                    return Err(e.context(format!(
                        "{} (--strict: a bad file stops the run; leave it off to skip such files)",
                        ds.name(index)
                    )));
                }
                skipped.push((index, format!("{e:#}").trim_end().to_string()));
            }
        }
    }
    Err(anyhow!(
        "none of the {} items tried from position {pos} of the epoch could be loaded (first: {}: {})",
        skipped.len(),
        ds.name(skipped[0].0),
        skipped[0].1
    ))
}

/// The message of a caught panic.
fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Settings of the evaluation loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalConfig {
    pub batch_size: usize,
    /// Worker threads (0: one per core).
    pub threads: usize,
    pub prefetch: usize,
    pub strict: bool,
}

/// A batch of evaluation images in plain memory.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvalBatch {
    pub step: usize,
    /// `[B, 3, H, W]` row-major, normalised.
    pub images: Vec<f32>,
    /// (H, W) of each image.
    pub hw: (usize, usize),
    pub indices: Vec<usize>,
    pub labels: Option<Vec<i64>>,
    /// Items that failed to load (their rows are zeros).
    pub skipped: Vec<(usize, String)>,
    pub wait_s: f64,
}
impl HasWait for RawEvalBatch {
    fn set_wait(&mut self, s: f64) {
        self.wait_s = s;
    }
}

/// A batch of evaluation images as a tensor.
#[derive(Debug)]
pub struct EvalBatch {
    /// `[B, 3, H, W]` f32, normalised.
    pub images: tch::Tensor,
    pub indices: Vec<usize>,
    pub labels: Option<Vec<i64>>,
    pub skipped: Vec<(usize, String)>,
    pub wait_s: f64,
}

impl From<RawEvalBatch> for EvalBatch {
    fn from(r: RawEvalBatch) -> EvalBatch {
        let (h, w) = r.hw;
        EvalBatch {
            images: tch::Tensor::from_slice(&r.images).view([r.indices.len() as i64, 3, h as i64, w as i64]),
            indices: r.indices,
            labels: r.labels,
            skipped: r.skipped,
            wait_s: r.wait_s,
        }
    }
}

/// Every item once, in data order, through the evaluation transform (resize the shorter side, centre
/// crop, normalise); already-normalised tensor data is passed through as it is. The last batch may be
/// smaller. Used by `embed`, the probes and in-training kNN.
pub struct EvalLoader {
    dataset: Arc<dyn Dataset>,
    recipe: Arc<Recipe>,
    cfg: EvalConfig,
    pool: Arc<rayon::ThreadPool>,
}

impl EvalLoader {
    pub fn new(dataset: Arc<dyn Dataset>, recipe: Recipe, cfg: EvalConfig) -> Result<EvalLoader> {
        recipe.validate()?;
        if cfg.batch_size == 0 {
            return Err(crate::LewelError::Usage("the batch size must be at least 1".into()).into());
        }
        if let Some(p) = dataset.prepared() {
            if p.channels != 3 {
                bail!("{}: expected 3 channels", dataset.describe());
            }
        }
        let pool = build_pool(cfg.threads)?;
        Ok(EvalLoader { dataset, recipe: Arc::new(recipe), cfg, pool })
    }

    /// (H, W) of the images this loader yields.
    pub fn image_hw(&self) -> (usize, usize) {
        match self.dataset.prepared() {
            Some(p) => (p.height, p.width),
            None => (self.recipe.eval_crop as usize, self.recipe.eval_crop as usize),
        }
    }

    pub fn steps(&self) -> usize {
        self.dataset.len().div_ceil(self.cfg.batch_size)
    }

    /// All batches as tensors.
    pub fn batches(&self) -> impl Iterator<Item = Result<EvalBatch>> {
        self.batches_raw().map(|r| r.map(EvalBatch::from))
    }

    /// All batches in plain memory.
    pub fn batches_raw(&self) -> Batches<RawEvalBatch> {
        let (ds, recipe, cfg) = (self.dataset.clone(), self.recipe.clone(), self.cfg.clone());
        let hw = self.image_hw();
        let n = ds.len();
        Batches::spawn(self.pool.clone(), 0..self.steps(), cfg.prefetch, move |step| {
            let lo = step * cfg.batch_size;
            let hi = (lo + cfg.batch_size).min(n);
            let per = 3 * hw.0 * hw.1;
            let mut images = vec![0f32; (hi - lo) * per];
            let results: Vec<Result<Option<String>>> = images
                .par_chunks_mut(per)
                .enumerate()
                .map(|(k, out)| {
                    let i = lo + k;
                    if ds.prepared().is_some() {
                        let v = ds.load_prepared(i)?;
                        if v.len() != out.len() {
                            bail!("{}: item has {} values, expected {}", ds.name(i), v.len(), out.len());
                        }
                        out.copy_from_slice(&v);
                        return Ok(None);
                    }
                    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ds.load(i)))
                        .unwrap_or_else(|p| Err(anyhow!("the decoder panicked: {}", panic_text(&p))));
                    match loaded {
                        Ok(img) => {
                            apply_eval(&img, &recipe, out);
                            Ok(None)
                        }
                        Err(e) if cfg.strict => Err(e.context(format!("{} (--strict)", ds.name(i)))),
                        Err(e) => Ok(Some(format!("{e:#}").trim_end().to_string())),
                    }
                })
                .collect();
            let mut skipped = Vec::new();
            for (k, r) in results.into_iter().enumerate() {
                if let Some(reason) = r? {
                    skipped.push((lo + k, reason));
                }
            }
            let indices: Vec<usize> = (lo..hi).collect();
            let labels = indices.iter().map(|&i| ds.label(i)).collect::<Option<Vec<i64>>>();
            Ok(RawEvalBatch { step, images, hw, indices, labels, skipped, wait_s: 0.0 })
        })
    }
}
