//! Cached feature files: float32 `[N, C]` `.npy` arrays (written by `embed`) and their integer labels.
//!
//! The labels of `FEATS.npy` live next to it in `FEATS.labels.npy` (int64 `[N]`; int32, int16, int8
//! and the unsigned integer types are accepted too), unless a path is given explicitly. Every check
//! names the file it is about and says what to do: missing labels, a wrong dtype or rank, a row-count
//! mismatch between features and labels, a width mismatch between the train and val features,
//! negative labels, and NaN or infinite features.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use npyz::{DType, NpyFile, TypeChar, WriterBuilder};
use serde::Serialize;

use crate::data::npy::plain_type;
pub use crate::data::npy::{read_labels, MAX_CLASSES};
use crate::LewelError;

/// Where one split's features and labels come from.
///
/// Only cached `.npy` features exist today; a checkpoint-plus-data source (features computed on the
/// fly by the backbone) is the planned second variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeatureSource {
    /// A float32 `[N, C]` `.npy` file, with labels at `labels` (default: [`default_labels_path`]).
    Npy { features: PathBuf, labels: Option<PathBuf> },
    /// Images and labels (DATA) embedded by a checkpoint's frozen backbone ([`super::onthefly`]).
    Data { data: PathBuf },
}

impl FeatureSource {
    /// A `.npy` source with the default labels path.
    pub fn npy(features: impl Into<PathBuf>) -> Self {
        FeatureSource::Npy { features: features.into(), labels: None }
    }

    /// Loads the features and labels.
    pub fn load(&self) -> Result<FeatureSet> {
        match self {
            FeatureSource::Npy { features, labels } => {
                let labels = labels.clone().unwrap_or_else(|| default_labels_path(features));
                FeatureSet::load_npy(features, &labels)
            }
            FeatureSource::Data { data } => {
                bail!(
                    "{}: features of DATA come from a checkpoint (see eval::onthefly), not from a file",
                    data.display()
                )
            }
        }
    }

    /// The features path (for events and error messages).
    pub fn features_path(&self) -> &Path {
        match self {
            FeatureSource::Npy { features, .. } => features,
            FeatureSource::Data { data } => data,
        }
    }

    /// The labels path that [`FeatureSource::load`] reads.
    pub fn labels_path(&self) -> PathBuf {
        match self {
            FeatureSource::Npy { features, labels } => labels.clone().unwrap_or_else(|| default_labels_path(features)),
            FeatureSource::Data { data } => data.clone(),
        }
    }
}

/// `train.npy` → `train.labels.npy`; a name without `.npy` gets `.labels.npy` appended.
pub use crate::data::npy::labels_path as default_labels_path;

/// One split in memory: `n` rows of `dim` float32 features (row-major) and `n` labels.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSet {
    pub features_path: PathBuf,
    pub labels_path: PathBuf,
    pub n: usize,
    pub dim: usize,
    /// Row-major `[n, dim]`.
    pub data: Vec<f32>,
    /// Class indices, each `>= 0`.
    pub labels: Vec<i64>,
}

impl FeatureSet {
    /// Reads and checks a features file and its labels file.
    pub fn load_npy(features: &Path, labels: &Path) -> Result<Self> {
        let (shape, data) = read_f32_matrix(features)?;
        let (n, dim) = (shape[0], shape[1]);
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: feature [{}, {}] is {} (non-finite features); re-run embed, or check the backbone for divergence",
                features.display(),
                i / dim.max(1),
                i % dim.max(1),
                data[i]
            );
        }
        if !labels.exists() {
            bail!(
                "labels file {} not found (needed for the features {}); write the labels there as an int64 [N] .npy, \
                 or pass the labels path with --train-labels / --val-labels",
                labels.display(),
                features.display()
            );
        }
        let labels_vec = read_labels(labels)?;
        if labels_vec.len() != n {
            bail!(
                "{} has {} labels but {} has {} feature rows; the two files must describe the same items in the same order",
                labels.display(),
                labels_vec.len(),
                features.display(),
                n
            );
        }
        Ok(FeatureSet {
            features_path: features.to_path_buf(),
            labels_path: labels.to_path_buf(),
            n,
            dim,
            data,
            labels: labels_vec,
        })
    }

    /// Builds a set from memory (tests, and the later on-the-fly mode).
    pub fn from_parts(n: usize, dim: usize, data: Vec<f32>, labels: Vec<i64>) -> Result<Self> {
        if data.len() != n * dim || labels.len() != n {
            bail!(
                "feature set of {n} x {dim} needs {} values and {n} labels, got {} and {}",
                n * dim,
                data.len(),
                labels.len()
            );
        }
        if labels.iter().any(|&l| l < 0) {
            bail!("labels must be >= 0");
        }
        Ok(FeatureSet { features_path: PathBuf::new(), labels_path: PathBuf::new(), n, dim, data, labels })
    }

    /// `max(label) + 1` (0 for an empty set).
    pub fn num_classes(&self) -> usize {
        self.labels.iter().max().map(|&m| m as usize + 1).unwrap_or(0)
    }

    /// The features as a `[n, dim]` float tensor on `device`.
    pub fn features_tensor(&self, device: tch::Device) -> tch::Tensor {
        tch::Tensor::from_slice(&self.data).view([self.n as i64, self.dim as i64]).to_device(device)
    }

    /// The labels as a `[n]` int64 tensor on `device`.
    pub fn labels_tensor(&self, device: tch::Device) -> tch::Tensor {
        tch::Tensor::from_slice(&self.labels).to_device(device)
    }
}

/// A labelled train split (the kNN memory, or the classifier's training set) and a val split.
#[derive(Debug, Clone)]
pub struct ProbeData {
    pub train: FeatureSet,
    pub val: FeatureSet,
}

impl ProbeData {
    /// Loads both splits and checks that they fit together.
    ///
    /// The same file for train and val is refused (exit 2): the kNN memory would contain every query,
    /// which is the bug of the official kNN monitor (`reference/lewel-official.md` §5.5), and a linear
    /// probe would be scored on its own training data.
    pub fn load(train: &FeatureSource, val: &FeatureSource) -> Result<Self> {
        let (tp, vp) = (train.features_path(), val.features_path());
        let same = tp == vp || matches!((tp.canonicalize(), vp.canonicalize()), (Ok(a), Ok(b)) if a == b);
        if same {
            return Err(LewelError::Usage(format!(
                "--train-features and --val-features are the same file ({}): the val items would also be in the \
                 training set, which inflates the accuracy; embed a held-out split for --val-features",
                tp.display()
            ))
            .into());
        }
        let train = train.load().context("could not load the training features")?;
        let val = val.load().context("could not load the validation features")?;
        Self::new(train, val)
    }

    /// Checks two in-memory splits: equal widths, non-empty, and not byte-identical.
    pub fn new(train: FeatureSet, val: FeatureSet) -> Result<Self> {
        if train.dim != val.dim {
            bail!(
                "feature widths differ: {} is [{}, {}] but {} is [{}, {}]; both splits must come from the same backbone",
                train.features_path.display(),
                train.n,
                train.dim,
                val.features_path.display(),
                val.n,
                val.dim
            );
        }
        if train.n == 0 || val.n == 0 {
            bail!(
                "an empty split: {} has {} rows and {} has {} rows",
                train.features_path.display(),
                train.n,
                val.features_path.display(),
                val.n
            );
        }
        check_val_classes(&train.labels, &val.labels, &train.labels_path, &val.labels_path)?;
        if train.data == val.data {
            return Err(LewelError::Usage(format!(
                "{} and {} hold identical features: the val items are the training items, which inflates the \
                 accuracy; embed a held-out split for --val-features",
                train.features_path.display(),
                val.features_path.display()
            ))
            .into());
        }
        Ok(ProbeData { train, val })
    }

    /// `max(label) + 1` over both splits.
    pub fn num_classes(&self) -> usize {
        self.train.num_classes().max(self.val.num_classes())
    }

    /// How many val items have a class that never occurs in the training set (they can never be right).
    pub fn val_items_with_unseen_class(&self) -> usize {
        let mut seen = vec![false; self.num_classes()];
        for &l in &self.train.labels {
            seen[l as usize] = true;
        }
        self.val.labels.iter().filter(|&&l| !seen[l as usize]).count()
    }
}

/// Val labels must lie among the training classes (`0..max(train label)`): a val label past them
/// means the two splits number their classes differently (or come from different data sets).
pub fn check_val_classes(train: &[i64], val: &[i64], train_name: &Path, val_name: &Path) -> Result<()> {
    let train_classes = train.iter().max().map(|&m| m + 1).unwrap_or(0);
    if let Some(i) = val.iter().position(|&l| l >= train_classes) {
        bail!(
            "class count mismatch: {} has label {} (item {i}) but the training labels {} only go up to {} \
             ({} classes); both splits must number the same classes the same way",
            val_name.display(),
            val[i],
            train_name.display(),
            train_classes - 1,
            train_classes
        );
    }
    Ok(())
}

/// Reads a 2-D float32 (or float64, converted) `.npy` in C or Fortran order; returns `([n, c], row-major data)`.
pub fn read_f32_matrix(path: &Path) -> Result<([usize; 2], Vec<f32>)> {
    let file = File::open(path).with_context(|| format!("could not open {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let len = reader.get_ref().metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let header = crate::data::npy::read_header_checked(&mut reader, len)
        .with_context(|| format!("{} is not a valid .npy file (numpy.save writes them)", path.display()))?;
    // Fast path for what `embed` and numpy write: little-endian float32 in C order, read in bulk.
    if let (DType::Plain(ts), [n, c]) = (header.dtype(), header.shape()) {
        if ts.to_string() == "<f4" && header.order() == npyz::Order::C {
            let (n, c) = (*n as usize, *c as usize);
            let mut bytes = vec![0u8; n * c * 4];
            reader.read_exact(&mut bytes).with_context(|| {
                format!("{}: the data is shorter than its header's shape [{n}, {c}] (truncated file?)", path.display())
            })?;
            let data = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            return Ok(([n, c], data));
        }
    }
    let npy = NpyFile::with_header(header, reader);
    let shape = npy.shape().to_vec();
    if shape.len() != 2 {
        bail!(
            "{} has shape {:?} (rank {}); features must be a float32 [N, C] array (flatten them with reshape(N, -1))",
            path.display(),
            shape,
            shape.len()
        );
    }
    let (n, c) = (shape[0] as usize, shape[1] as usize);
    let order = npy.order();
    let ctx = || format!("could not read the data of {}", path.display());
    let data: Vec<f32> = match plain_type(path, &npy.dtype())? {
        (TypeChar::Float, 4) => npy.into_vec::<f32>().with_context(ctx)?,
        (TypeChar::Float, 8) => npy.into_vec::<f64>().with_context(ctx)?.into_iter().map(|x| x as f32).collect(),
        _ => bail!(
            "{} has dtype {}; features must be float32 (convert with numpy: a.astype('float32'))",
            path.display(),
            npy.dtype().descr()
        ),
    };
    let data = if order == npyz::Order::Fortran && n > 1 && c > 1 {
        let mut rm = vec![0f32; n * c];
        for j in 0..c {
            for i in 0..n {
                rm[i * c + j] = data[j * n + i];
            }
        }
        rm
    } else {
        data
    };
    Ok(([n, c], data))
}

/// Writes a float32 `[n, c]` `.npy` atomically (used by tests and by `embed`).
pub fn write_f32_matrix(path: &Path, n: usize, c: usize, data: &[f32]) -> Result<()> {
    assert_eq!(data.len(), n * c, "write_f32_matrix: data length");
    crate::fsio::write_atomic(path, |w| {
        let mut npy =
            npyz::WriteOptions::<f32>::new().default_dtype().shape(&[n as u64, c as u64]).writer(w).begin_nd()?;
        npy.extend(data.iter().copied())?;
        npy.finish()?;
        Ok(())
    })
}

/// Writes an int64 `[n]` labels `.npy` atomically.
pub fn write_labels(path: &Path, labels: &[i64]) -> Result<()> {
    crate::fsio::write_atomic(path, |w| {
        let mut npy =
            npyz::WriteOptions::<i64>::new().default_dtype().shape(&[labels.len() as u64]).writer(w).begin_nd()?;
        npy.extend(labels.iter().copied())?;
        npy.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lewel-eval-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write_any<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) {
        let f = File::create(path).unwrap();
        let mut w = npyz::WriteOptions::<T>::new().default_dtype().shape(shape).writer(f).begin_nd().unwrap();
        w.extend(data.iter().copied()).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn labels_path_sits_next_to_the_features() {
        assert_eq!(default_labels_path(Path::new("a/train.npy")), PathBuf::from("a/train.labels.npy"));
        assert_eq!(default_labels_path(Path::new("feats")), PathBuf::from("feats.labels.npy"));
    }

    #[test]
    fn round_trip_and_label_dtypes() {
        let d = scratch("roundtrip");
        let f = d.join("x.npy");
        write_f32_matrix(&f, 2, 3, &[1., 2., 3., 4., 5., 6.]).unwrap();
        write_any::<u8>(&d.join("x.labels.npy"), &[2], &[3, 1]);
        let s = FeatureSource::npy(&f).load().unwrap();
        assert_eq!((s.n, s.dim), (2, 3));
        assert_eq!(s.data, vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(s.labels, vec![3, 1]);
        assert_eq!(s.num_classes(), 4);
        write_any::<i32>(&d.join("x.labels.npy"), &[2], &[0, 7]);
        assert_eq!(FeatureSource::npy(&f).load().unwrap().labels, vec![0, 7]);
        write_labels(&d.join("x.labels.npy"), &[5, 6]).unwrap();
        assert_eq!(FeatureSource::npy(&f).load().unwrap().labels, vec![5, 6]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_inputs_name_the_file() {
        let d = scratch("bad");
        let f = d.join("f.npy");
        let err = |src: &FeatureSource| format!("{:#}", src.load().unwrap_err());

        // missing features
        let e = err(&FeatureSource::npy(d.join("nope.npy")));
        assert!(e.contains("nope.npy"), "{e}");
        // missing labels
        write_f32_matrix(&f, 2, 2, &[0.; 4]).unwrap();
        let e = err(&FeatureSource::npy(&f));
        assert!(e.contains("f.labels.npy") && e.contains("not found"), "{e}");
        // label count mismatch
        write_labels(&d.join("f.labels.npy"), &[0, 1, 2]).unwrap();
        let e = err(&FeatureSource::npy(&f));
        assert!(e.contains("3 labels") && e.contains("2 feature rows"), "{e}");
        // wrong feature dtype
        write_any::<i32>(&f, &[2, 2], &[1, 2, 3, 4]);
        let e = err(&FeatureSource::npy(&f));
        assert!(e.contains("f.npy") && e.contains("float32"), "{e}");
        // wrong rank
        write_any::<f32>(&f, &[4], &[1., 2., 3., 4.]);
        let e = err(&FeatureSource::npy(&f));
        assert!(e.contains("rank 1"), "{e}");
        // non-finite
        write_f32_matrix(&f, 3, 1, &[0., f32::NAN, 1.]).unwrap();
        let e = err(&FeatureSource::npy(&f));
        assert!(e.contains("[1, 0]") && e.contains("non-finite"), "{e}");
        // truncated
        write_f32_matrix(&f, 4, 4, &[1.0; 16]).unwrap();
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len - 4).unwrap();
        let e = err(&FeatureSource::npy(&f));
        assert!(e.contains("f.npy") && e.contains("truncated"), "{e}");
        // float labels, negative labels
        write_f32_matrix(&f, 3, 1, &[0., 0.5, 1.]).unwrap();
        write_any::<f32>(&d.join("f.labels.npy"), &[3], &[0., 1., 2.]);
        let e = err(&FeatureSource::npy(&f));
        assert!(e.contains("f.labels.npy") && e.contains("integers"), "{e}");
        write_labels(&d.join("f.labels.npy"), &[0, -1, 2]).unwrap();
        let e = err(&FeatureSource::npy(&f));
        assert!(e.contains("negative"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn fortran_order_is_read_row_major() {
        let d = scratch("fortran");
        let f = d.join("f.npy");
        let file = File::create(&f).unwrap();
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .order(npyz::Order::Fortran)
            .shape(&[2, 3])
            .writer(file)
            .begin_nd()
            .unwrap();
        // column-major storage of [[1,2,3],[4,5,6]]
        w.extend([1f32, 4., 2., 5., 3., 6.]).unwrap();
        w.finish().unwrap();
        assert_eq!(read_f32_matrix(&f).unwrap(), ([2, 3], vec![1., 2., 3., 4., 5., 6.]));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn pairs_must_fit_and_not_overlap() {
        let d = scratch("pairs");
        let (a, b) = (d.join("a.npy"), d.join("b.npy"));
        write_f32_matrix(&a, 2, 2, &[1., 0., 0., 1.]).unwrap();
        write_labels(&d.join("a.labels.npy"), &[0, 1]).unwrap();
        write_f32_matrix(&b, 1, 3, &[1., 0., 0.]).unwrap();
        write_labels(&d.join("b.labels.npy"), &[0]).unwrap();
        let e = format!("{:#}", ProbeData::load(&FeatureSource::npy(&a), &FeatureSource::npy(&b)).unwrap_err());
        assert!(e.contains("widths differ") && e.contains("[2, 2]") && e.contains("[1, 3]"), "{e}");
        let e = ProbeData::load(&FeatureSource::npy(&a), &FeatureSource::npy(d.join(".").join("a.npy"))).unwrap_err();
        assert!(matches!(e.downcast_ref::<LewelError>(), Some(LewelError::Usage(_))), "{e:#}");
        // a byte-identical copy is refused too
        std::fs::copy(&a, &b).unwrap();
        std::fs::copy(d.join("a.labels.npy"), d.join("b.labels.npy")).unwrap();
        let e = ProbeData::load(&FeatureSource::npy(&a), &FeatureSource::npy(&b)).unwrap_err();
        assert!(format!("{e:#}").contains("identical"), "{e:#}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
