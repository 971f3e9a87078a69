//! Writing pickles (protocol 2) and PyTorch zip checkpoints, without Python.
//!
//! [`PickleWriter`] emits the handful of protocol-2 opcodes a data pickle needs. [`torch_zip`] writes what
//! `torch.save(dict_of_tensors, f)` writes: a ZIP with `archive/data.pkl` (a dict whose values are
//! `torch._utils._rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict())`),
//! one `archive/data/<key>` per storage (little-endian, 64-byte aligned), `archive/byteorder` and
//! `archive/version`. Only globals on `torch.load(..., weights_only=True)`'s allow-list are used
//! (`torch._utils._rebuild_tensor_v2`, `torch.*Storage`, `collections.OrderedDict`).
//!
//! Why not `serde-pickle` (issue 22): it serialises plain data only (no `GLOBAL`/`REDUCE`, no `BINPERSID`), so it
//! can write neither a tensor's rebuild call nor detectron2's numpy arrays; and its newest release, 1.2.0, is from
//! 2024-11-22, outside the 18-month rule. Kept.

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use super::archive;

/// An in-memory protocol-2 pickle under construction. Finish it with [`PickleWriter::finish`].
pub struct PickleWriter {
    out: Vec<u8>,
}

impl Default for PickleWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl PickleWriter {
    /// Starts a pickle (`PROTO 2`).
    pub fn new() -> Self {
        PickleWriter { out: vec![0x80, 2] }
    }

    pub fn mark(&mut self) {
        self.out.push(b'(');
    }

    pub fn empty_dict(&mut self) {
        self.out.push(b'}');
    }

    pub fn empty_tuple(&mut self) {
        self.out.push(b')');
    }

    /// `SETITEMS`: the key/value pairs pushed since the last mark go into the dict below the mark.
    pub fn setitems(&mut self) {
        self.out.push(b'u');
    }

    /// `TUPLE`: the items pushed since the last mark.
    pub fn tuple(&mut self) {
        self.out.push(b't');
    }

    pub fn none(&mut self) {
        self.out.push(b'N');
    }

    pub fn bool(&mut self, b: bool) {
        self.out.push(if b { 0x88 } else { 0x89 });
    }

    pub fn int(&mut self, v: i64) {
        if (0..=0xFF).contains(&v) {
            self.out.extend([b'K', v as u8]);
        } else if (0..=0xFFFF).contains(&v) {
            self.out.push(b'M');
            self.out.extend((v as u16).to_le_bytes());
        } else if let Ok(v) = i32::try_from(v) {
            self.out.push(b'J');
            self.out.extend(v.to_le_bytes());
        } else {
            self.out.extend([0x8a, 8]);
            self.out.extend(v.to_le_bytes());
        }
    }

    pub fn float(&mut self, v: f64) {
        self.out.push(b'G');
        self.out.extend(v.to_be_bytes());
    }

    /// A `str` (`BINUNICODE`).
    pub fn str(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend((s.len() as u32).to_le_bytes());
        self.out.extend(s.as_bytes());
    }

    /// A `bytes` object the protocol-2 way: `_codecs.encode(<the bytes as a latin-1 str>, 'latin1')`.
    pub fn bytes(&mut self, b: &[u8]) {
        self.global("_codecs", "encode");
        let text: String = b.iter().map(|&c| c as char).collect();
        self.str(&text);
        self.str("latin1");
        self.tuple_n(2);
        self.reduce();
    }

    /// `TUPLE1`..`TUPLE3`.
    pub fn tuple_n(&mut self, n: u8) {
        assert!((1..=3).contains(&n), "tuple_n takes 1 to 3 items");
        self.out.push(0x84 + n);
    }

    /// A tuple of integers (sizes, strides).
    pub fn int_tuple(&mut self, v: &[i64]) {
        if v.is_empty() {
            self.empty_tuple();
            return;
        }
        self.mark();
        for &x in v {
            self.int(x);
        }
        self.tuple();
    }

    /// `GLOBAL module name`.
    pub fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend(name.as_bytes());
        self.out.push(b'\n');
    }

    /// `REDUCE`: call the callable below the argument tuple.
    pub fn reduce(&mut self) {
        self.out.push(b'R');
    }

    /// `BUILD`: `__setstate__` of the object below with the state on top.
    pub fn build(&mut self) {
        self.out.push(b'b');
    }

    /// `BINPERSID`: the persistent id on top of the stack.
    pub fn binpersid(&mut self) {
        self.out.push(b'Q');
    }

    /// `STOP`, and the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(b'.');
        self.out
    }
}

/// The PyTorch storage type of a tensor kind (`Float` → `FloatStorage`).
pub fn storage_type(kind: Kind) -> Result<&'static str> {
    Ok(match kind {
        Kind::Float => "FloatStorage",
        Kind::Double => "DoubleStorage",
        Kind::Half => "HalfStorage",
        Kind::BFloat16 => "BFloat16Storage",
        Kind::Int64 => "LongStorage",
        Kind::Int => "IntStorage",
        Kind::Int16 => "ShortStorage",
        Kind::Int8 => "CharStorage",
        Kind::Uint8 => "ByteStorage",
        Kind::Bool => "BoolStorage",
        k => bail!("tensors of kind {k:?} cannot be written to a PyTorch file"),
    })
}

/// The raw little-endian bytes of a tensor, in C order (copied to the CPU).
pub fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    let n = t.numel();
    let mut bytes = vec![0u8; n * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut bytes, n)?;
    Ok(bytes)
}

/// The name of the top-level folder of the archives we write (`torch.save` uses the file's stem; any name loads).
pub const ARCHIVE_NAME: &str = "archive";

/// What `torch.save({name: tensor, ...}, f)` writes: a PyTorch zip checkpoint holding a plain dict of tensors,
/// in the given order, each with its own contiguous storage. `torch.load(f, weights_only=True)` reads it.
pub fn torch_zip(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut p = PickleWriter::new();
    let mut storages = Vec::with_capacity(tensors.len());
    p.empty_dict();
    p.mark();
    for (i, (name, t)) in tensors.iter().enumerate() {
        let kind = storage_type(t.kind()).with_context(|| format!("tensor {name}"))?;
        let bytes = tensor_bytes(t).with_context(|| format!("tensor {name}"))?;
        let size = t.size();
        let stride = contiguous_strides(&size);
        p.str(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.mark();
        // (storage, storage_offset, size, stride, requires_grad, backward_hooks)
        p.mark();
        p.str("storage");
        p.global("torch", kind);
        p.str(&i.to_string());
        p.str("cpu");
        p.int(t.numel() as i64);
        p.tuple();
        p.binpersid();
        p.int(0);
        p.int_tuple(&size);
        p.int_tuple(&stride);
        p.bool(false);
        p.global("collections", "OrderedDict");
        p.empty_tuple();
        p.reduce();
        p.tuple();
        p.reduce();
        storages.push(bytes);
    }
    p.setitems();
    let pickle = p.finish();
    let mut z = archive::Writer::new();
    let a = ARCHIVE_NAME;
    z.add(&format!("{a}/data.pkl"), &pickle)?;
    z.add(&format!("{a}/.format_version"), b"1")?;
    z.add(&format!("{a}/.storage_alignment"), b"64")?;
    z.add(&format!("{a}/byteorder"), b"little")?;
    for (i, bytes) in storages.iter().enumerate() {
        z.add(&format!("{a}/data/{i}"), bytes)?;
    }
    z.add(&format!("{a}/version"), b"3\n")?;
    z.finish()
}

/// C-order strides of a shape.
pub fn contiguous_strides(size: &[i64]) -> Vec<i64> {
    let mut stride = vec![1i64; size.len()];
    for i in (0..size.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * size[i + 1].max(1);
    }
    stride
}

#[cfg(test)]
mod tests {
    use super::super::pickle::{self, Value};
    use super::*;

    #[test]
    fn scalars_roundtrip_through_the_reader() {
        let mut p = PickleWriter::new();
        p.empty_dict();
        p.mark();
        for (k, v) in [("small", 7i64), ("mid", 300), ("neg", -5), ("big", 1 << 40)] {
            p.str(k);
            p.int(v);
        }
        p.str("f");
        p.float(-0.125);
        p.str("b");
        p.bytes(&[0, 200, 255, 10]);
        p.str("t");
        p.int_tuple(&[2, 3]);
        p.setitems();
        let v = pickle::load(&p.finish()).unwrap().value;
        assert_eq!(v.get("small").unwrap().as_int(), Some(7));
        assert_eq!(v.get("mid").unwrap().as_int(), Some(300));
        assert_eq!(v.get("neg").unwrap().as_int(), Some(-5));
        assert_eq!(v.get("big").unwrap().as_int(), Some(1 << 40));
        assert_eq!(v.get("f").unwrap().as_f64(), Some(-0.125));
        match v.get("b").unwrap() {
            Value::Bytes(b) => assert_eq!(*b, vec![0, 200, 255, 10]),
            other => panic!("{other:?}"),
        }
        assert_eq!(v.get("t").unwrap().items().unwrap().len(), 2);
    }

    #[test]
    fn strides() {
        assert_eq!(contiguous_strides(&[64, 3, 7, 7]), [147, 49, 7, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<i64>::new());
        assert_eq!(contiguous_strides(&[5]), [1]);
    }
}
