//! Data sets: every DATA form of the tools behind one trait, [`Dataset`], opened by [`open`].
//!
//! | DATA | kind | labels |
//! |---|---|---|
//! | a folder with class sub-folders | `imagefolder` | index of the sub-folder among the sorted names (torchvision's ImageFolder); files found recursively, sorted |
//! | a folder of images | `folder` | none |
//! | a list file of `<label> <relpath>` lines (the official `.ext` files) | `list` | the numbers given; paths under `--root` (default: the list's folder) |
//! | a list file of bare names `n01440764_10026.JPEG` (SimCLR's `1percent.txt`, CRLF or LF) | `list` | the synset (name before `_`) is the folder `<root>/<synset>/<name>`; the label is its index among the sorted class folders of `--root` (required) |
//! | `*-images-idx3-ubyte[.gz]` (MNIST, Fashion-MNIST) | `idx` | from `*-labels-idx1-ubyte[.gz]` next to it, if present; grey becomes 3 channels |
//! | `.npy` uint8 `[N,H,W]` or `[N,H,W,C]` (C = 1, 3 or 4; alpha dropped) | `npy-u8` | from `NAME.labels.npy` next to `NAME.npy` (integers `[N]`), if present |
//! | tar shards in the webdataset layout (`KEY.jpg` + `KEY.cls` members): a brace pattern `'shard-{000000..000099}.tar'`, a list of `.tar` files, a folder of them, one `.tar` ([`crate::data::shards`]) | `shards` | the `.cls` members (ASCII integers), if any |
//! | `.npy` float32 `[N,3,H,W]`, already normalised | `npy-f32` | none; used as they are: [`Dataset::load`] refuses (no augmentation is possible), [`Dataset::load_prepared`] gives the tensor |
//!
//! Image files are recognised by extension in folders (`.jpg .jpeg .png .webp`, any case; other files
//! are counted and ignored) and decoded by content ([`crate::data::decode`]). Files are read when an
//! item is loaded, never at [`open`] (except to list folders), so a bad file shows up as a failed
//! [`Dataset::load`] naming it, which the loaders skip or, under `strict`, report as an error.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use sha2::{Digest, Sha256};

use crate::data::decode::{decode_rgb, MAX_PIXELS};

/// Where the data is: the DATA argument, `--root` for list files, `--strict`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSpec {
    pub path: PathBuf,
    /// The folder that list-file paths are relative to (required for bare-name lists).
    pub root: Option<PathBuf>,
    /// Whether an unreadable item is an error (true) or skipped with a warning (false). Carried
    /// here for the tools; the loaders take it from their own config.
    pub strict: bool,
}

impl DataSpec {
    /// A spec for `path` with no root, not strict.
    pub fn new(path: impl Into<PathBuf>) -> DataSpec {
        DataSpec { path: path.into(), root: None, strict: false }
    }
}

/// Already-normalised float tensors (`.npy` float32 `[N,3,H,W]`): the shape of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreparedShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// A data set of images, read-only and shareable between threads.
pub trait Dataset: Send + Sync {
    /// Number of items.
    fn len(&self) -> usize;
    /// Whether there are no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The label of item `i`, when the data has labels.
    fn label(&self, i: usize) -> Option<i64>;
    /// The number of classes, when the data has labels.
    fn num_classes(&self) -> Option<usize>;
    /// A name for item `i` in messages: its path, or `FILE[i]` for array data.
    fn name(&self, i: usize) -> String;
    /// Item `i` as upright 8-bit RGB. Fails, naming nothing (the caller adds [`Dataset::name`]),
    /// for an unreadable or undecodable file.
    fn load(&self, i: usize) -> Result<RgbImage>;
    /// One line for humans and `start` events: kind, count, path, classes.
    fn describe(&self) -> String;
    /// A cheap identity of the data: kind, count and a hash of the names (and file sizes, for files).
    fn fingerprint(&self) -> String;
    /// `Some` for already-normalised tensors, which can only be used as they are.
    fn prepared(&self) -> Option<PreparedShape> {
        None
    }
    /// For tar shards ([`crate::data::shards`]): the number of items of each shard; the items of shard k are
    /// the next that many indices after those of the shards before it. The loaders order such data shard-wise.
    fn shard_sizes(&self) -> Option<&[usize]> {
        None
    }
    /// Item `i` of already-normalised tensor data (CHW f32).
    fn load_prepared(&self, i: usize) -> Result<Vec<f32>> {
        let _ = i;
        bail!("{} holds images, not prepared tensors", self.describe())
    }
}

/// Opens any DATA form (see the module docs). A missing path, an empty data set or a malformed list,
/// IDX or `.npy` file is an error naming the file and the fix.
pub fn open(spec: &DataSpec) -> Result<Arc<dyn Dataset>> {
    let path = &spec.path;
    if let Some(shards) = crate::data::shards::recognise(path, spec.root.as_deref())? {
        let ds = crate::data::shards::TarShards::open(path.display().to_string(), shards)?;
        if ds.is_empty() {
            bail!("DATA {}: no samples with an image member found ({})", path.display(), ds.describe());
        }
        return Ok(Arc::new(ds));
    }
    let meta = fs::metadata(path).with_context(|| format!("DATA {}: no such file or folder", path.display()))?;
    let ds: Arc<dyn Dataset> = if meta.is_dir() {
        Arc::new(FileList::from_folder(path)?)
    } else {
        let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        if name.ends_with(".npy") {
            crate::data::arrays::open_npy(path)?
        } else if name.contains("idx3-ubyte") || crate::data::arrays::is_idx_file(path) {
            Arc::new(crate::data::arrays::Idx::open(path)?)
        } else {
            Arc::new(FileList::from_list(path, spec.root.as_deref())?)
        }
    };
    if ds.is_empty() {
        if let Some(hint) = meta.is_dir().then(|| data_files_hint(path)).flatten() {
            bail!("DATA {}: {hint}", path.display());
        }
        bail!(
            "DATA {}: no images found ({}); give a folder of .jpg/.png/.webp files, a list file, IDX or .npy data",
            path.display(),
            ds.describe()
        );
    }
    Ok(ds)
}

/// What to give instead of a folder without images that holds data files: IDX files (torchvision's raw MNIST and
/// Fashion-MNIST layout) or `.npy` image arrays (labels, masks and boxes beside them do not count). `None` when
/// it holds neither.
fn data_files_hint(dir: &Path) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let join = |n: &str| dir.join(n).display().to_string();
    let idx: Vec<&String> = names.iter().filter(|n| n.contains("images-idx3-ubyte")).collect();
    if !idx.is_empty() {
        let train = idx.iter().find(|n| n.starts_with("train")).unwrap_or(&idx[0]);
        let mut hint =
            format!("this folder holds IDX files, not images: give {} (IDX data are read as a file)", join(train));
        if let Some(test) = idx.iter().find(|n| n.starts_with("t10k") || n.starts_with("test")) {
            hint += &format!(", or {} for the test split", join(test));
        }
        return Some(hint);
    }
    let npy: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with(".npy") && ![".labels.npy", ".masks.npy", ".boxes.npy"].iter().any(|x| n.ends_with(x)))
        .collect();
    match npy.as_slice() {
        [] => None,
        [one] => Some(format!("this folder holds a .npy data array, not images: give {}", join(one))),
        many => Some(format!(
            "this folder holds .npy data arrays, not images: give one of {}",
            many.iter().map(|n| join(n)).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The image extensions looked for in folders.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

pub(crate) fn is_image_name(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

/// Image files on disk, with optional labels: folders, ImageFolders and list files.
pub struct FileList {
    kind: &'static str,
    source: PathBuf,
    /// The folder that names are relative to in the fingerprint.
    base: PathBuf,
    files: Vec<PathBuf>,
    /// Items found unreadable while listing (symlink loops), with the reason [`Dataset::load`] gives.
    broken: std::collections::HashMap<usize, String>,
    labels: Option<Vec<i64>>,
    num_classes: Option<usize>,
    ignored: usize,
}

/// Sorted, non-hidden entries of a folder.
fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("could not list the folder {}", dir.display()))? {
        let e = e.with_context(|| format!("could not list the folder {}", dir.display()))?;
        if is_hidden(&e.file_name()) {
            continue;
        }
        let p = e.path();
        // The listing's entry type (d_type): no stat per file, which was half the time of opening a folder of
        // ImageNet's size (benches/data-scale.md). A link is followed, like os.walk(followlinks=True).
        let is_dir = match e.file_type() {
            Ok(t) if !t.is_symlink() => t.is_dir(),
            _ => fs::metadata(&p).map(|m| m.is_dir()).unwrap_or(false),
        };
        v.push((e.file_name().to_string_lossy().into_owned(), p, is_dir));
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// A folder's identity (device, inode), following links.
fn folder_id(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// What [`walk_images`] collects.
#[derive(Default)]
struct Walk {
    files: Vec<PathBuf>,
    /// Items known to be unreadable while listing (a folder link that loops): (index, why).
    broken: Vec<(usize, String)>,
    ignored: usize,
    /// The folders from the top down to the one being listed.
    ancestors: Vec<(u64, u64)>,
}

/// Image files under `dir`, recursively, in torchvision's order (sorted folders, sorted names). A folder
/// reached again below itself through a link (a symlink loop) is not entered: it becomes an item that fails
/// to load, so every tool skips and reports it like an unreadable image, and `--strict` stops on it.
fn walk_images(dir: &Path, walk: &mut Walk) -> Result<()> {
    let id = folder_id(dir);
    if id.is_some_and(|id| walk.ancestors.contains(&id)) {
        walk.broken.push((
            walk.files.len(),
            format!(
                "a folder link that leads back to a folder above it (a symlink loop): {} not listed",
                dir.display()
            ),
        ));
        walk.files.push(dir.to_path_buf());
        return Ok(());
    }
    if walk.ancestors.len() > 64 {
        bail!("{}: folders nested more than 64 deep", dir.display());
    }
    let mut dirs = Vec::new();
    for (_, p, is_dir) in sorted_entries(dir)? {
        if is_dir {
            dirs.push(p);
        } else if is_image_name(&p) {
            walk.files.push(p);
        } else {
            walk.ignored += 1;
        }
    }
    walk.ancestors.push(id.unwrap_or((u64::MAX, u64::MAX)));
    for p in dirs {
        walk_images(&p, walk)?;
    }
    walk.ancestors.pop();
    Ok(())
}

/// The sorted class folder names of `root`.
pub fn class_folders(root: &Path) -> Result<Vec<String>> {
    Ok(sorted_entries(root)?.into_iter().filter(|e| e.2).map(|e| e.0).collect())
}

impl FileList {
    /// A folder: with sub-folders, an ImageFolder (loose files at the top are ignored); without, a
    /// flat folder of unlabeled images.
    pub fn from_folder(dir: &Path) -> Result<FileList> {
        let classes = class_folders(dir)?;
        let mut walk = Walk::default();
        if classes.is_empty() {
            walk_images(dir, &mut walk)?;
            return Ok(FileList {
                kind: "folder",
                source: dir.to_path_buf(),
                base: dir.to_path_buf(),
                files: walk.files,
                broken: walk.broken.into_iter().collect(),
                labels: None,
                num_classes: None,
                ignored: walk.ignored,
            });
        }
        walk.ignored = sorted_entries(dir)?.iter().filter(|e| !e.2).count();
        walk.ancestors.extend(folder_id(dir));
        let mut labels = Vec::new();
        for (k, c) in classes.iter().enumerate() {
            let before = walk.files.len();
            walk_images(&dir.join(c), &mut walk)?;
            labels.extend(std::iter::repeat_n(k as i64, walk.files.len() - before));
        }
        Ok(FileList {
            kind: "imagefolder",
            source: dir.to_path_buf(),
            base: dir.to_path_buf(),
            files: walk.files,
            broken: walk.broken.into_iter().collect(),
            labels: Some(labels),
            num_classes: Some(classes.len()),
            ignored: walk.ignored,
        })
    }

    /// A list file: `<label> <relpath>` lines, or bare SimCLR-style names resolved as
    /// `<root>/<synset>/<name>`. Blank lines are skipped; CRLF and LF both work.
    pub fn from_list(list: &Path, root: Option<&Path>) -> Result<FileList> {
        let text = fs::read(list).with_context(|| format!("could not read the list file {}", list.display()))?;
        let text = String::from_utf8(text).map_err(|_| {
            anyhow::anyhow!(
                "{}: not a UTF-8 text list (DATA must be a folder, a list file, IDX or .npy data)",
                list.display()
            )
        })?;
        let base: PathBuf =
            root.map(Path::to_path_buf).unwrap_or_else(|| list.parent().unwrap_or(Path::new(".")).to_path_buf());
        let mut files = Vec::new();
        let mut labels = Vec::new();
        let mut bare = None;
        let mut classes: Option<Vec<String>> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let first = parts.next().unwrap_or("");
            let rest: Vec<&str> = parts.collect();
            let labelled = rest.len() == 1 && first.parse::<i64>().is_ok();
            match bare {
                None => bare = Some(!labelled),
                Some(b) if b == labelled => bail!(
                    "{} line {}: mixes `<label> <path>` lines and bare names; use one form per list",
                    list.display(),
                    n + 1
                ),
                _ => {}
            }
            if labelled {
                let label: i64 = first.parse().expect("checked");
                if label < 0 {
                    bail!("{} line {}: negative label {label}", list.display(), n + 1);
                }
                files.push(base.join(rest[0]));
                labels.push(label);
            } else {
                if !rest.is_empty() {
                    bail!(
                        "{} line {}: expected `<label> <path>` or one bare file name, got {line:?}",
                        list.display(),
                        n + 1
                    );
                }
                let root = root.ok_or_else(|| {
                    crate::LewelError::Usage(format!(
                        "{} lists bare file names (like SimCLR's 1percent.txt); give --root, the folder that holds the class folders (n01440764/, ...)",
                        list.display()
                    ))
                })?;
                let classes = match &mut classes {
                    Some(c) => c,
                    None => classes.insert(class_folders(root)?),
                };
                let synset = first.split('_').next().unwrap_or(first);
                let label = classes.binary_search_by(|c| c.as_str().cmp(synset)).map_err(|_| {
                    anyhow::anyhow!(
                        "{} line {}: {first} belongs to class folder {synset}, which {} does not have; check --root",
                        list.display(),
                        n + 1,
                        root.display()
                    )
                })?;
                files.push(root.join(synset).join(first));
                labels.push(label as i64);
            }
        }
        let num_classes = match &classes {
            Some(c) => Some(c.len()),
            None => labels.iter().max().map(|&m| m as usize + 1),
        };
        Ok(FileList {
            kind: "list",
            source: list.to_path_buf(),
            base,
            files,
            broken: Default::default(),
            labels: Some(labels),
            num_classes,
            ignored: 0,
        })
    }

    /// The path of item `i`.
    pub fn path(&self, i: usize) -> &Path {
        &self.files[i]
    }
}

impl Dataset for FileList {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn label(&self, i: usize) -> Option<i64> {
        self.labels.as_ref().map(|l| l[i])
    }
    fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }
    fn name(&self, i: usize) -> String {
        self.files[i].display().to_string()
    }
    fn load(&self, i: usize) -> Result<RgbImage> {
        if let Some(why) = self.broken.get(&i) {
            bail!("{why}");
        }
        let mut bytes = Vec::new();
        fs::File::open(&self.files[i])
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .context("could not read the file")?;
        Ok(decode_rgb(&bytes, MAX_PIXELS)?)
    }
    fn describe(&self) -> String {
        let mut s = format!("{} {} ({} images", self.kind, self.source.display(), self.files.len());
        if let Some(c) = self.num_classes {
            s += &format!(", {c} classes");
        }
        if self.ignored > 0 {
            s += &format!(", {} other files ignored", self.ignored);
        }
        s + ")"
    }
    fn fingerprint(&self) -> String {
        use rayon::prelude::*;
        // One stat per file: on all cores (on a network file system each waits for a round trip).
        let sizes: Vec<u64> =
            self.files.par_iter().map(|f| fs::metadata(f).map(|m| m.len()).unwrap_or(u64::MAX)).collect();
        let mut h = Sha256::new();
        for (i, (f, size)) in self.files.iter().zip(sizes).enumerate() {
            h.update(f.strip_prefix(&self.base).unwrap_or(f).to_string_lossy().as_bytes());
            h.update(b"\0");
            h.update(size.to_le_bytes());
            h.update(self.label(i).unwrap_or(-1).to_le_bytes());
        }
        format!("{}:{}:{}", self.kind, self.files.len(), crate::hex::short(&h.finalize()))
    }
}
