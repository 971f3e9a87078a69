//! Detectron2 weights: a pickle of numpy arrays under detectron2's ResNet names, as the MoCo and InfoMin
//! converters write it (`reference/lewel-official.md` §7; LEWEL's README says to follow them).
//!
//! Renaming of a torchvision name, in the converters' order: no `layer` in the name → `stem.` prefix;
//! `layer1..4` → `res2..5`; `bn1/bn2/bn3` → `conv1.norm/conv2.norm/conv3.norm`; `downsample.0` → `shortcut`,
//! `downsample.1` → `shortcut.norm`. `num_batches_tracked` is carried along (detectron2 ignores it).
//! The file is `{"model": {name: ndarray}, "__author__": "lewel", "matching_heuristics": True}`, pickled with
//! protocol 2. Arrays are written as `numpy.core.multiarray._reconstruct` + `numpy.ndarray.__setstate__`:
//! numpy 1.x has only `numpy.core`, and numpy 2.x still unpickles that name (checked with numpy 2.4).

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use super::pickle::{self, NdArray, Value};
use super::pickle_write::{tensor_bytes, PickleWriter};

/// The author recorded in the file.
pub const AUTHOR: &str = "lewel";

/// The detectron2 name of a torchvision ResNet name (`layer3.0.downsample.1.weight` →
/// `res4.0.shortcut.norm.weight`, `bn1.running_var` → `stem.conv1.norm.running_var`).
pub fn rename(tv: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let parts: Vec<&str> = tv.split('.').collect();
    let mut i = 0;
    while i < parts.len() {
        match parts[i] {
            "layer1" => out.push("res2"),
            "layer2" => out.push("res3"),
            "layer3" => out.push("res4"),
            "layer4" => out.push("res5"),
            "bn1" => out.extend(["conv1", "norm"]),
            "bn2" => out.extend(["conv2", "norm"]),
            "bn3" => out.extend(["conv3", "norm"]),
            "downsample" if parts.get(i + 1) == Some(&"0") => {
                out.push("shortcut");
                i += 1;
            }
            "downsample" if parts.get(i + 1) == Some(&"1") => {
                out.extend(["shortcut", "norm"]);
                i += 1;
            }
            p => out.push(p),
        }
        i += 1;
    }
    let name = out.join(".");
    if tv.contains("layer") {
        name
    } else {
        format!("stem.{name}")
    }
}

/// The numpy dtype string and byte order of a tensor kind.
fn np_dtype(kind: Kind) -> Result<(&'static str, &'static str)> {
    Ok(match kind {
        Kind::Float => ("f4", "<"),
        Kind::Double => ("f8", "<"),
        Kind::Half => ("f2", "<"),
        Kind::Int64 => ("i8", "<"),
        Kind::Int => ("i4", "<"),
        Kind::Int16 => ("i2", "<"),
        Kind::Int8 => ("i1", "|"),
        Kind::Uint8 => ("u1", "|"),
        Kind::Bool => ("b1", "|"),
        k => bail!("numpy has no dtype for tensors of kind {k:?}"),
    })
}

fn write_ndarray(p: &mut PickleWriter, t: &Tensor) -> Result<()> {
    let (dt, order) = np_dtype(t.kind())?;
    let data = tensor_bytes(t)?;
    // _reconstruct(ndarray, (0,), b'b')
    p.global("numpy.core.multiarray", "_reconstruct");
    p.global("numpy", "ndarray");
    p.int(0);
    p.tuple_n(1);
    p.bytes(b"b");
    p.tuple_n(3);
    p.reduce();
    // __setstate__((1, shape, dtype, is_fortran, data))
    p.mark();
    p.int(1);
    p.int_tuple(&t.size());
    p.global("numpy", "dtype");
    p.str(dt);
    p.bool(false);
    p.bool(true);
    p.tuple_n(3);
    p.reduce();
    p.mark();
    p.int(3); // the dtype's pickle state version
    p.str(order);
    p.none();
    p.none();
    p.none();
    p.int(-1);
    p.int(-1);
    p.int(0);
    p.tuple();
    p.build();
    p.bool(false);
    p.bytes(&data);
    p.tuple();
    p.build();
    Ok(())
}

/// The `.pkl` bytes for torchvision-named backbone tensors (renamed here).
pub fn to_pickle(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut p = PickleWriter::new();
    p.empty_dict();
    p.mark();
    p.str("model");
    p.empty_dict();
    p.mark();
    for (name, t) in tensors {
        p.str(&rename(name));
        write_ndarray(&mut p, t).with_context(|| format!("tensor {name}"))?;
    }
    p.setitems();
    p.str("__author__");
    p.str(AUTHOR);
    p.str("matching_heuristics");
    p.bool(true);
    p.setitems();
    Ok(p.finish())
}

/// The kind of a numpy dtype name (`f4` → Float).
fn kind_of(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "f4" => Kind::Float,
        "f8" => Kind::Double,
        "f2" => Kind::Half,
        "i8" => Kind::Int64,
        "i4" => Kind::Int,
        "i2" => Kind::Int16,
        "i1" => Kind::Int8,
        "u1" => Kind::Uint8,
        "b1" => Kind::Bool,
        _ => return None,
    })
}

/// Reads the `model` arrays of a detectron2 `.pkl` back as tensors, in file order.
pub fn read(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let v = pickle::load(bytes)?.value;
    let model = v.get("model").context("no \"model\" entry: not a detectron2 weights file")?;
    let pairs = model.pairs().context("\"model\" is not a dict")?;
    let mut out = Vec::with_capacity(pairs.len());
    for (k, a) in pairs {
        let name = k.as_str().context("a non-string key in \"model\"")?.to_string();
        let Value::NdArray(a) = a else { bail!("{name}: {} is not a numpy array", a.describe()) };
        let a: NdArray = a.borrow().clone().with_context(|| format!("{name}: an array of Python objects"))?;
        let kind = kind_of(&a.dtype.name).with_context(|| format!("{name}: unsupported dtype {}", a.dtype.name))?;
        if a.dtype.byteorder == '>' || a.fortran_order {
            bail!("{name}: big-endian or Fortran-ordered arrays are not read");
        }
        let t = Tensor::f_from_data_size(&a.data, &a.shape, kind).with_context(|| format!("{name}: bad array data"))?;
        out.push((name, t));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_like_the_moco_converter() {
        for (tv, d2) in [
            ("conv1.weight", "stem.conv1.weight"),
            ("bn1.running_var", "stem.conv1.norm.running_var"),
            ("bn1.num_batches_tracked", "stem.conv1.norm.num_batches_tracked"),
            ("layer1.0.conv1.weight", "res2.0.conv1.weight"),
            ("layer1.2.bn3.bias", "res2.2.conv3.norm.bias"),
            ("layer3.0.downsample.0.weight", "res4.0.shortcut.weight"),
            ("layer3.0.downsample.1.weight", "res4.0.shortcut.norm.weight"),
            ("layer4.1.bn2.running_mean", "res5.1.conv2.norm.running_mean"),
        ] {
            assert_eq!(rename(tv), d2, "{tv}");
        }
    }

    #[test]
    fn arrays_roundtrip_bit_exactly() {
        let w = Tensor::from_slice(&[1.5f32, -0.0, f32::MIN_POSITIVE, 3.0, 1e-30, -7.25]).view([2, 3]);
        let n = Tensor::from(12345678901i64);
        let tensors =
            vec![("layer1.0.bn1.weight".to_string(), w.shallow_clone()), ("bn1.num_batches_tracked".into(), n)];
        let bytes = to_pickle(&tensors).unwrap();
        let back = read(&bytes).unwrap();
        assert_eq!(back[0].0, "res2.0.conv1.norm.weight");
        assert_eq!(back[1].0, "stem.conv1.norm.num_batches_tracked");
        assert_eq!(tensor_bytes(&back[0].1).unwrap(), tensor_bytes(&w).unwrap());
        assert_eq!(back[0].1.size(), [2, 3]);
        assert_eq!(back[1].1.kind(), Kind::Int64);
        assert_eq!(back[1].1.size(), Vec::<i64>::new());
        assert_eq!(back[1].1.int64_value(&[]), 12345678901);
        let v = pickle::load(&bytes).unwrap().value;
        assert_eq!(v.get("__author__").unwrap().as_str(), Some(AUTHOR));
        assert!(matches!(v.get("matching_heuristics"), Some(Value::Bool(true))));
    }
}
