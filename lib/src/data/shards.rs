//! Tar shards in the webdataset layout as DATA: `shard-000000.tar`, `shard-000001.tar`, ..., each holding
//! samples as members grouped by key (`0001.jpg`, `0001.cls`, `0002.jpg`, ...), read in place, never extracted.
//!
//! # DATA forms
//! - a brace pattern, quoted so that the shell leaves it alone: `'data/shard-{000000..000099}.tar'` (numeric ranges
//!   keep the width of their first bound; `{a,b,c}` lists work too; several braces multiply);
//! - a list file whose first non-blank line ends in `.tar`: one shard per line, relative to `--root` (default: the
//!   list's folder);
//! - a folder holding `.tar` files and neither images nor sub-folders: its shards in sorted order;
//! - one `.tar` file.
//!
//! A missing shard is an error at open (a mistyped pattern should not train on a tenth of the data).
//!
//! # Samples
//! Members are grouped by key, webdataset's rule: the member's path up to the first `.` of its file name; a sample
//! is a run of adjacent members with the same key. The image is the member whose extension is `jpg`, `jpeg`, `png`
//! or `webp` (any case; decoded by content like every image); its label the `cls` member, an ASCII integer. When
//! any sample of the data has a `.cls`, the data is labelled, and a sample without one is a bad item. Samples
//! without an image and other members are counted and ignored. Items are numbered shard by shard (shards in the
//! order given), members in archive order: `embed` writes row i for item i in that order.
//!
//! # Design: an index pass at open, then random access
//! [`TarShards::open`] walks every shard's headers (512 bytes each, skipping over the data with a seek; in
//! parallel over the shards) and keeps, per sample, the shard, the offset and the length of its image, and its
//! label. An item is then one positioned read (`pread`) of exactly its bytes. We chose this over a pure stream
//! (webdataset's, which cannot resume mid-epoch: its maintainers recommend resampling) because:
//! - **exact resume**: the epoch's order is a pure function of (seed, epoch, shard sizes, world size, batch size)
//!   ([`shard_epoch_order`]), so a resume at step k starts reading at item k x batch, decoding nothing before it,
//!   and every batch, view and loss equals the uninterrupted run's, like every other DATA form;
//! - the loader's machinery (parallel workers, prefetch, replacement of bad items, `--strict`) is shared, not
//!   written a second time for streams;
//! - the reads are still streams in practice: the order visits one shard after another, and within the shuffle
//!   buffer's window, so consecutive reads are near each other in the same few files (the page cache's
//!   read-ahead works), and the evaluation loader (`embed`, the probes) reads every shard front to back.
//!
//! The index is computed at every open, not cached: about one header read per member (1.28 million members take
//! a few seconds, see `benches/data-scale.md`), and no file is written next to the user's data.
//!
//! # The order of an epoch
//! [`shard_epoch_order`]: the shards are shuffled from (seed, epoch); their items, concatenated in that order, are
//! cut into `world` runs of equal length (±1), one per rank; each run goes through a bounded shuffle buffer of
//! `shuffle_buffer` items (webdataset's `shuffle(n)`: fill the buffer, then emit a random one of it for each item
//! read; 0 or 1: no buffer) drawn from (seed, epoch, rank). Since the order is computed as indices, the buffer holds
//! no images: its size costs no memory, only read locality (a larger one mixes items of more shards at once).
//! Pretrain's default is [`DEFAULT_SHUFFLE_BUFFER`].
//!
//! # Ranks
//! Each rank reads its own run of the shuffled shards, so ranks take disjoint shards. The shard count need not
//! divide by the world size: the runs are cut at equal item counts, not at shard boundaries, so at most
//! `world - 1` shards per epoch (a different few each epoch, as the shard order changes) are split at a member
//! between two neighbouring ranks, each reading its own part; every item is still used exactly once per epoch,
//! and every rank has the same number of batches. The global batch of step s is the ranks' slices side by side,
//! each rank's slice the next `batch / world` items of its run.
//!
//! # Damage
//! Every kind of damage becomes an item that fails to load, which every tool reports as a `warn` event naming the
//! shard and the member (`data/shard-000003.tar:0042.jpg: ...`), skips or replaces, and which `--strict` makes
//! fatal: a member that does not decode; a member cut short by the end of the file (a truncated shard: the rest of
//! the shard is lost); a damaged header (a bad checksum: the rest of the shard cannot be found and is skipped); a
//! shard that ends without its end-of-archive blocks (cut at a member boundary); a `.cls` that is not an integer.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::data::dataset::{Dataset, IMAGE_EXTENSIONS};
use crate::data::decode::{decode_rgb, MAX_PIXELS};
use crate::data::rng::{Rng, Stream};

/// The shuffle buffer of `pretrain --shuffle-buffer` (items; see the module docs).
pub const DEFAULT_SHUFFLE_BUFFER: usize = 1000;

/// The most shards a brace pattern may expand to (a guard against a typo such as `{0..99999999}`).
const MAX_SHARDS: usize = 1_000_000;

/// Expands the brace groups of `pattern`: `{000..012}` (numeric, the width of the first bound kept, descending
/// ranges allowed) and `{a,b,c}`; several groups give every combination, in order. Text without braces is returned
/// as it is.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let Some(open) = pattern.find('{') else { return Ok(vec![pattern.to_string()]) };
    let close =
        pattern[open..].find('}').map(|c| open + c).with_context(|| format!("{pattern}: a `{{` without its `}}`"))?;
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let choices: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (x, y): (u64, u64) = match (a.parse(), b.parse()) {
            (Ok(x), Ok(y)) => (x, y),
            _ => bail!("{pattern}: `{{{body}}}` is not a range of numbers like {{000000..000099}}"),
        };
        let count = x.abs_diff(y) as usize + 1;
        if count > MAX_SHARDS {
            bail!("{pattern}: `{{{body}}}` names {count} shards, more than {MAX_SHARDS}");
        }
        let width = a.len();
        let nums: Vec<u64> = if x <= y { (x..=y).collect() } else { (y..=x).rev().collect() };
        nums.into_iter().map(|n| format!("{n:0width$}")).collect()
    } else if body.contains(',') {
        body.split(',').map(str::to_string).collect()
    } else {
        bail!("{pattern}: `{{{body}}}` is neither a range {{000..099}} nor a list {{a,b}}");
    };
    let tails = expand_braces(tail)?;
    if choices.len().saturating_mul(tails.len()) > MAX_SHARDS {
        bail!("{pattern}: names more than {MAX_SHARDS} shards");
    }
    Ok(choices.iter().flat_map(|c| tails.iter().map(move |t| format!("{head}{c}{t}"))).collect())
}

fn is_tar_name(s: &str) -> bool {
    let b = s.as_bytes(); // bytes: the text may be any file's first line, cut anywhere
    b.len() > 4 && b[b.len() - 4..].eq_ignore_ascii_case(b".tar")
}

/// The shards named by DATA, when DATA is shards (see the module docs): `Ok(None)` for every other form.
/// `root` resolves the lines of a list of shards.
pub fn recognise(path: &Path, root: Option<&Path>) -> Result<Option<Vec<PathBuf>>> {
    let text = path.to_string_lossy();
    if text.contains('{') && !path.exists() {
        let names = expand_braces(&text)?;
        if !names.iter().all(|n| is_tar_name(n)) {
            return Ok(None);
        }
        return Ok(Some(names.into_iter().map(PathBuf::from).collect()));
    }
    let Ok(meta) = fs::metadata(path) else { return Ok(None) };
    if meta.is_dir() {
        let mut tars = Vec::new();
        for e in fs::read_dir(path).with_context(|| format!("could not list the folder {}", path.display()))? {
            let e = e.with_context(|| format!("could not list the folder {}", path.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let p = e.path();
            if p.is_dir() || crate::data::dataset::is_image_name(&p) {
                return Ok(None);
            }
            if is_tar_name(&name) {
                tars.push(p);
            }
        }
        tars.sort();
        return Ok((!tars.is_empty()).then_some(tars));
    }
    if is_tar_name(&text) {
        return Ok(Some(vec![path.to_path_buf()]));
    }
    // A list of shards: its first non-blank line ends in .tar (read only that far before deciding).
    let mut head = vec![0u8; 4096];
    let n = File::open(path).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    let first = String::from_utf8_lossy(&head[..n]);
    let Some(line) = first.lines().map(str::trim).find(|l| !l.is_empty()) else { return Ok(None) };
    if !is_tar_name(line) || line.contains(char::is_whitespace) {
        return Ok(None);
    }
    let text =
        fs::read_to_string(path).with_context(|| format!("could not read the list of shards {}", path.display()))?;
    let base = root.map(Path::to_path_buf).unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
    let mut shards = Vec::new();
    for (k, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if !is_tar_name(line) {
            bail!(
                "{} line {}: {line:?} is not a .tar shard (a list of shards names one .tar per line)",
                path.display(),
                k + 1
            );
        }
        shards.push(base.join(line));
    }
    Ok(Some(shards))
}

/// Where one item's image lies.
#[derive(Debug, Clone, Copy)]
struct Item {
    shard: u32,
    offset: u64,
    len: u64,
}

/// A sample while a shard is indexed.
#[derive(Default)]
struct RawSample {
    key: String,
    image: Option<(String, u64, u64)>,
    cls: Option<std::result::Result<i64, String>>,
    broken: Option<String>,
}

/// What one shard's index pass found.
/// What one shard's index pass found, compact (a million samples are held at once while shards are indexed).
#[derive(Default)]
struct ShardIndex {
    bytes: u64,
    /// (offset, length) of each sample's image.
    items: Vec<(u64, u64)>,
    /// The image member names, one after another; sample i's ends at `name_ends[i]`.
    names: String,
    name_ends: Vec<u32>,
    /// Each sample's label, -1 for none.
    labels: Vec<i64>,
    /// Whether any sample has a `.cls` member.
    labelled: bool,
    /// Samples that fail to load, and why (a later entry for the same sample wins).
    broken: Vec<(usize, String)>,
    ignored: usize,
}

impl ShardIndex {
    fn push(&mut self, s: RawSample) {
        let i = self.items.len();
        let (name, offset, len) = s.image.unwrap_or((s.key, 0, 0));
        self.items.push((offset, len));
        self.names.push_str(&name);
        self.name_ends.push(self.names.len() as u32);
        self.labelled |= s.cls.is_some();
        let label = match s.cls {
            Some(Ok(l)) => l,
            Some(Err(why)) => {
                self.broken.push((i, why));
                -1
            }
            None => -1,
        };
        self.labels.push(label);
        if let Some(why) = s.broken {
            self.broken.push((i, why));
        }
    }
}

/// A reader of a shard's headers: positioned reads (`pread`) of 4 KiB blocks, a seek only moves the position, so
/// the headers of small members next to each other (an image's `.cls` and the next sample's header) come from one
/// read. The tar crate alone did a read and a seek per member: 8.2 s for 1.28 million samples, 4.1 s this way
/// (`benches/data-scale.md`).
struct Blocks<'a> {
    file: &'a File,
    size: u64,
    pos: u64,
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    buf_at: u64,
}

impl Read for Blocks<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let in_buf = self.pos >= self.buf_at && self.pos < self.buf_at + self.buf.len() as u64;
        if !in_buf {
            if out.len() >= 4096 {
                let n = self.file.read_at(out, self.pos)?;
                self.pos += n as u64;
                return Ok(n);
            }
            self.buf.resize(4096, 0);
            let n = self.file.read_at(&mut self.buf, self.pos)?;
            self.buf.truncate(n);
            self.buf_at = self.pos;
            if n == 0 {
                return Ok(0);
            }
        }
        let at = (self.pos - self.buf_at) as usize;
        let n = out.len().min(self.buf.len() - at);
        out[..n].copy_from_slice(&self.buf[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for Blocks<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let new = match to {
            std::io::SeekFrom::Start(p) => Some(p),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            std::io::SeekFrom::End(d) => self.size.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// Splits a member path into (key, extension): up to and after the first `.` of the file name.
fn key_and_ext(name: &str) -> Option<(&str, &str)> {
    let base_at = name.rfind('/').map_or(0, |k| k + 1);
    let dot = name[base_at..].find('.')? + base_at;
    Some((&name[..dot], &name[dot + 1..]))
}

/// The index pass of one shard (see the module docs). Fails only when the shard cannot be opened.
fn index_shard(path: &Path) -> Result<ShardIndex> {
    let file = File::open(path).with_context(|| format!("could not open the shard {}", path.display()))?;
    let bytes = file.metadata().map(|m| m.len()).with_context(|| format!("could not read {}", path.display()))?;
    let mut out = ShardIndex { bytes, ..Default::default() };
    let mut cur: Option<RawSample> = None;
    let flush = |cur: &mut Option<RawSample>, out: &mut ShardIndex| {
        if let Some(s) = cur.take() {
            if s.image.is_some() || s.broken.is_some() {
                out.push(s);
            } else {
                out.ignored += 1;
            }
        }
    };
    // The end of the last whole member's data, padded to a block.
    let mut end = 0u64;
    let mut last_member = String::new();
    let mut archive = tar::Archive::new(Blocks { file: &file, size: bytes, pos: 0, buf: Vec::new(), buf_at: 0 });
    let entries = match archive.entries_with_seek() {
        Ok(e) => e,
        Err(e) => bail!("could not read the shard {}: {e}", path.display()),
    };
    let mut clean_end = true;
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                // A damaged header: tar has no way to find the next one. A cut inside the end-of-archive blocks
                // loses nothing, though.
                if bytes - end >= 1024 || !zeros_from(&file, end, bytes) {
                    flush(&mut cur, &mut out);
                    let why = format!(
                        "the shard is damaged at byte {end} ({e}): the rest of the shard (after {}) is skipped",
                        if last_member.is_empty() { "its start".to_string() } else { last_member.clone() }
                    );
                    out.push(RawSample { key: format!("@{end}"), broken: Some(why), ..Default::default() });
                }
                clean_end = false;
                break;
            }
        };
        let kind = entry.header().entry_type();
        let pos = entry.raw_file_position();
        let size = entry.size();
        let name = entry.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let name = name.strip_prefix("./").unwrap_or(&name).to_string();
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            end = pos + size.div_ceil(512) * 512;
            continue;
        }
        let Some((key, ext)) = key_and_ext(&name) else {
            out.ignored += 1;
            end = pos + size.div_ceil(512) * 512;
            continue;
        };
        if cur.as_ref().is_none_or(|c| c.key != key) {
            flush(&mut cur, &mut out);
            cur = Some(RawSample { key: key.to_string(), ..Default::default() });
        }
        let sample = cur.as_mut().expect("set above");
        if pos + size > bytes {
            sample.broken = Some(format!(
                "truncated shard: the member {name} ends at byte {}, after the shard's end ({bytes} bytes); the rest of the shard is lost (an interrupted copy?)",
                pos + size
            ));
            if sample.image.is_none() {
                sample.image = Some((name.clone(), pos, 0));
            }
            clean_end = false;
            break;
        }
        let ext = ext.to_ascii_lowercase();
        if IMAGE_EXTENSIONS.contains(&ext.as_str()) && sample.image.is_none() {
            sample.image = Some((name.clone(), pos, size));
        } else if ext == "cls" && sample.cls.is_none() {
            let mut text = String::new();
            let read = if size > 64 { Ok(0) } else { (&mut entry).take(64).read_to_string(&mut text) };
            let label = match read {
                Ok(_) => text.trim().parse::<i64>().ok().filter(|&l| l >= 0),
                Err(_) => None,
            };
            sample.cls = Some(label.ok_or_else(|| {
                format!("{name}: the label member holds {:?}, not a non-negative integer", text.trim())
            }));
        } else {
            out.ignored += 1;
        }
        end = pos + size.div_ceil(512) * 512;
        last_member = name;
    }
    if clean_end && bytes < end + 512 {
        let why = if last_member.is_empty() {
            "the shard is empty or holds no tar header".to_string()
        } else {
            format!("the shard ends after the member {last_member} without the end-of-archive blocks: it was cut short (the members after it are lost)")
        };
        match cur.as_mut() {
            Some(s) if s.broken.is_none() => s.broken = Some(why),
            _ => {
                flush(&mut cur, &mut out);
                out.push(RawSample { key: format!("@{bytes}"), broken: Some(why), ..Default::default() });
            }
        }
    }
    flush(&mut cur, &mut out);
    Ok(out)
}

/// Whether the bytes `from..to` of `file` are all zero.
fn zeros_from(file: &File, from: u64, to: u64) -> bool {
    let mut buf = vec![0u8; (to - from) as usize];
    file.read_exact_at(&mut buf, from).is_ok() && buf.iter().all(|&b| b == 0)
}

/// Tar shards as a data set (see the module docs).
pub struct TarShards {
    source: String,
    shards: Vec<PathBuf>,
    shard_bytes: Vec<u64>,
    /// Items per shard, in shard order (item indices run shard by shard).
    sizes: Vec<usize>,
    items: Vec<Item>,
    /// The image member names of all items, one after another; item i's ends at `name_ends[i]`.
    names: String,
    name_ends: Vec<u32>,
    labels: Option<Vec<i64>>,
    num_classes: Option<usize>,
    broken: HashMap<usize, String>,
    ignored: usize,
}

impl TarShards {
    /// Indexes `shards` (see the module docs); `source` names the DATA in messages. A shard that does not exist
    /// or cannot be opened is an error.
    pub fn open(source: String, shards: Vec<PathBuf>) -> Result<TarShards> {
        if shards.is_empty() {
            bail!("{source}: no shards");
        }
        let missing: Vec<&PathBuf> = shards.iter().filter(|p| !p.is_file()).collect();
        if !missing.is_empty() {
            bail!(
                "DATA {source}: {} of the {} shards do not exist (first: {}); check the pattern or the list",
                missing.len(),
                shards.len(),
                missing[0].display()
            );
        }
        let mut ds = TarShards {
            source,
            shards: Vec::with_capacity(shards.len()),
            shard_bytes: Vec::with_capacity(shards.len()),
            sizes: Vec::with_capacity(shards.len()),
            items: Vec::new(),
            names: String::new(),
            name_ends: Vec::new(),
            labels: None,
            num_classes: None,
            broken: HashMap::new(),
            ignored: 0,
        };
        let mut labels: Vec<i64> = Vec::new();
        let mut labelled = false;
        // In parallel, 64 shards at a time: what is held besides the index is at most 64 shards' worth.
        for chunk in shards.chunks(64) {
            let indexed: Vec<Result<ShardIndex>> = chunk.par_iter().map(|p| index_shard(p)).collect();
            for (path, ix) in chunk.iter().zip(indexed) {
                let ix = ix?;
                let (k, base, name_base) = (ds.shards.len() as u32, ds.items.len(), ds.names.len());
                ds.shard_bytes.push(ix.bytes);
                ds.sizes.push(ix.items.len());
                ds.ignored += ix.ignored;
                ds.items.extend(ix.items.iter().map(|&(offset, len)| Item { shard: k, offset, len }));
                ds.names.push_str(&ix.names);
                for e in ix.name_ends {
                    let end = u32::try_from(name_base + e as usize).context("member names of more than 4 GB")?;
                    ds.name_ends.push(end);
                }
                labels.extend_from_slice(&ix.labels);
                labelled |= ix.labelled;
                for (i, why) in ix.broken {
                    ds.broken.insert(base + i, why);
                }
                ds.shards.push(path.clone());
            }
        }
        if labelled {
            for (i, &l) in labels.iter().enumerate() {
                if l < 0 && !ds.broken.contains_key(&i) {
                    ds.broken.insert(i, "no .cls label member, where other samples of the data have one".into());
                }
            }
            // HACK: a bad item of labelled data keeps a label (0) so that batches stay labelled; it is never loaded.
            labels.iter_mut().for_each(|l| *l = (*l).max(0));
            ds.num_classes = labels.iter().max().map(|&m| m as usize + 1);
            ds.labels = Some(labels);
        }
        ds.names.shrink_to_fit();
        Ok(ds)
    }

    fn member(&self, i: usize) -> &str {
        let lo = if i == 0 { 0 } else { self.name_ends[i - 1] as usize };
        &self.names[lo..self.name_ends[i] as usize]
    }

    /// The shard of item `i`.
    pub fn shard_of(&self, i: usize) -> &Path {
        &self.shards[self.items[i].shard as usize]
    }
}

impl Dataset for TarShards {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn label(&self, i: usize) -> Option<i64> {
        self.labels.as_ref().map(|l| l[i])
    }
    fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }
    fn name(&self, i: usize) -> String {
        format!("{}:{}", self.shard_of(i).display(), self.member(i))
    }
    fn load(&self, i: usize) -> Result<RgbImage> {
        if let Some(why) = self.broken.get(&i) {
            bail!("{why}");
        }
        let it = self.items[i];
        let mut bytes = vec![0u8; usize::try_from(it.len).context("a member too large for memory")?];
        File::open(self.shard_of(i))
            .and_then(|f| f.read_exact_at(&mut bytes, it.offset))
            .context("could not read the shard")?;
        Ok(decode_rgb(&bytes, MAX_PIXELS)?)
    }
    fn describe(&self) -> String {
        let mut s = format!("shards {} ({} images in {} shards", self.source, self.items.len(), self.shards.len());
        if let Some(c) = self.num_classes {
            s += &format!(", {c} classes");
        }
        if self.ignored > 0 {
            s += &format!(", {} other members ignored", self.ignored);
        }
        s + ")"
    }
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for (k, p) in self.shards.iter().enumerate() {
            h.update(p.file_name().unwrap_or_default().to_string_lossy().as_bytes());
            h.update(b"\0");
            h.update(self.shard_bytes[k].to_le_bytes());
        }
        for (i, it) in self.items.iter().enumerate() {
            h.update(self.member(i).as_bytes());
            h.update(b"\0");
            h.update(it.len.to_le_bytes());
            h.update(self.label(i).unwrap_or(-1).to_le_bytes());
        }
        format!("shards:{}:{}", self.items.len(), crate::hex::short(&h.finalize()))
    }
    fn shard_sizes(&self) -> Option<&[usize]> {
        Some(&self.sizes)
    }
}

/// The order of `epoch` over sharded data (see the module docs): positions `s * batch .. (s + 1) * batch` hold
/// the global batch of step s, rank r's slice of it being the next `batch / world` items of rank r's run. A pure
/// function of its arguments; without `shuffle`, the items in data order. `batch` must be a multiple of `world`.
pub fn shard_epoch_order(
    sizes: &[usize],
    seed: u64,
    epoch: u64,
    shuffle: bool,
    shuffle_buffer: usize,
    world: usize,
    batch: usize,
) -> Vec<usize> {
    let n: usize = sizes.iter().sum();
    let mut starts = Vec::with_capacity(sizes.len());
    let mut at = 0;
    for &s in sizes {
        starts.push(at);
        at += s;
    }
    let mut shard_order: Vec<usize> = (0..sizes.len()).collect();
    if shuffle {
        Rng::from_key(&[seed, Stream::Order as u64, epoch, SHARDS_KEY]).shuffle(&mut shard_order);
    }
    let stream: Vec<usize> = shard_order.iter().flat_map(|&k| starts[k]..starts[k] + sizes[k]).collect();
    let world = world.max(1);
    let runs: Vec<Vec<usize>> = (0..world)
        .map(|r| {
            let run = &stream[r * n / world..(r + 1) * n / world];
            if shuffle {
                let mut rng = Rng::from_key(&[seed, Stream::Order as u64, epoch, BUFFER_KEY, r as u64]);
                buffer_shuffle(run, shuffle_buffer, &mut rng)
            } else {
                run.to_vec()
            }
        })
        .collect();
    if world == 1 {
        return runs.into_iter().next().expect("one run");
    }
    let per = (batch / world).max(1);
    let full = runs.iter().map(|r| r.len() / per).min().unwrap_or(0);
    let mut order = Vec::with_capacity(n);
    for s in 0..full {
        for run in &runs {
            order.extend_from_slice(&run[s * per..(s + 1) * per]);
        }
    }
    for run in &runs {
        order.extend_from_slice(&run[full * per..]);
    }
    order
}

/// Key words of the shard order's and the shuffle buffers' generators ("SHARDS", "BUFFER").
const SHARDS_KEY: u64 = 0x5348_4152_4453;
const BUFFER_KEY: u64 = 0x4255_4646_4552;

/// webdataset's bounded shuffle: a buffer of up to `size` items; once full, each item read replaces a random one
/// of the buffer, which is emitted; at the end the buffer is emitted in random order. An item is emitted at most
/// `size - 1` places before its place in `items`.
fn buffer_shuffle(items: &[usize], size: usize, rng: &mut Rng) -> Vec<usize> {
    if size <= 1 {
        return items.to_vec();
    }
    let mut out = Vec::with_capacity(items.len());
    let mut buf: Vec<usize> = Vec::with_capacity(size.min(items.len()));
    for &i in items {
        buf.push(i);
        if buf.len() >= size {
            let j = rng.below(buf.len() as u64) as usize;
            out.push(buf.swap_remove(j));
        }
    }
    rng.shuffle(&mut buf);
    out.extend(buf);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_ranges_lists_and_products() {
        assert_eq!(expand_braces("s-{000..002}.tar").unwrap(), ["s-000.tar", "s-001.tar", "s-002.tar"]);
        assert_eq!(expand_braces("s-{2..0}.tar").unwrap(), ["s-2.tar", "s-1.tar", "s-0.tar"]);
        assert_eq!(expand_braces("{a,b}-{0..1}.tar").unwrap(), ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        assert!(expand_braces("s-{0..x}.tar").is_err());
        assert!(expand_braces("s-{0..5.tar").is_err());
        assert!(expand_braces("s-{0..99999999}.tar").is_err());
    }

    #[test]
    fn keys_are_cut_at_the_first_dot_of_the_file_name() {
        assert_eq!(key_and_ext("a/b.c/0001.seg.png"), Some(("a/b.c/0001", "seg.png")));
        assert_eq!(key_and_ext("0001.jpg"), Some(("0001", "jpg")));
        assert_eq!(key_and_ext("dir/noext"), None);
        assert!(
            is_tar_name("a.TAR") && !is_tar_name(".tar") && !is_tar_name("caf\u{e9}") && !is_tar_name("x\u{e9}tar")
        );
    }

    fn sorted(mut v: Vec<usize>) -> Vec<usize> {
        v.sort();
        v
    }

    #[test]
    fn the_order_is_a_pure_permutation_and_the_buffer_is_bounded() {
        let sizes = [7, 3, 10, 0, 5];
        let n = 25;
        let a = shard_epoch_order(&sizes, 3, 0, true, 4, 1, 5);
        assert_eq!(sorted(a.clone()), (0..n).collect::<Vec<_>>());
        assert_eq!(a, shard_epoch_order(&sizes, 3, 0, true, 4, 1, 5));
        assert_ne!(a, shard_epoch_order(&sizes, 3, 1, true, 4, 1, 5));
        assert_eq!(shard_epoch_order(&sizes, 3, 0, false, 4, 1, 5), (0..n).collect::<Vec<_>>());
        // without a buffer, whole shards one after another
        let plain = shard_epoch_order(&sizes, 3, 0, true, 0, 1, 5);
        let runs = plain.windows(2).filter(|w| w[1] != w[0] + 1).count();
        assert!(runs < sizes.len(), "{plain:?}");
        // with a buffer of 4, nothing is emitted more than 3 places early
        let mut rng = Rng::from_key(&[1]);
        let items: Vec<usize> = (0..100).collect();
        let out = buffer_shuffle(&items, 4, &mut rng);
        assert_eq!(sorted(out.clone()), items);
        for (q, &i) in out.iter().enumerate() {
            assert!(q + 3 >= i, "item {i} at {q}");
        }
        assert_ne!(out, items);
    }

    #[test]
    fn ranks_take_disjoint_shards_with_a_remainder() {
        // 5 shards of 6 items over 2 ranks: 5 does not divide by 2.
        let sizes = [6usize; 5];
        let shard = |i: usize| i / 6;
        let (world, batch) = (2, 4);
        for epoch in 0..4 {
            let order = shard_epoch_order(&sizes, 9, epoch, true, 3, world, batch);
            assert_eq!(sorted(order.clone()), (0..30).collect::<Vec<_>>(), "every item once");
            let per = batch / world;
            let steps = 30 / batch;
            let mut of_rank = [Vec::new(), Vec::new()];
            for s in 0..steps {
                for (r, mine) in of_rank.iter_mut().enumerate() {
                    mine.extend_from_slice(&order[s * batch + r * per..s * batch + (r + 1) * per]);
                }
            }
            let s0: std::collections::BTreeSet<usize> = of_rank[0].iter().map(|&i| shard(i)).collect();
            let s1: std::collections::BTreeSet<usize> = of_rank[1].iter().map(|&i| shard(i)).collect();
            let shared: Vec<_> = s0.intersection(&s1).collect();
            assert!(shared.len() < world, "epoch {epoch}: shards {shared:?} read by both ranks");
            assert_eq!(of_rank[0].len(), of_rank[1].len());
        }
        // 4 shards over 2 ranks: no shard is shared at all
        let order = shard_epoch_order(&[6; 4], 9, 0, true, 3, 2, 4);
        let r0: std::collections::BTreeSet<usize> =
            (0..6).flat_map(|s| order[s * 4..s * 4 + 2].to_vec()).map(shard).collect();
        let r1: std::collections::BTreeSet<usize> =
            (0..6).flat_map(|s| order[s * 4 + 2..s * 4 + 4].to_vec()).map(shard).collect();
        assert!(r0.is_disjoint(&r1), "{r0:?} {r1:?}");
    }
}
