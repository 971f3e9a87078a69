//! Reading files written by `torch.save`, without Python: the zip format (torch ≥ 1.6) and the legacy
//! format (`_use_new_zipfile_serialization=False`, as the official `utils/extract_backbone.py` writes).
//!
//! Zip: `<name>/data.pkl` is the object; a storage with key `k` is the entry `<name>/data/k`.
//! Legacy: five things in a row: a pickle of the magic number `0x1950a86a20f9469cfc6c`, one of the protocol
//! version (1001), one of `sys_info` (endianness, type sizes), the object pickle, a pickle of the list of
//! storage keys, then each storage in that order as an 8-byte little-endian element count and its raw bytes.
//!
//! Storages are only read when a tensor is asked for ([`TorchFile::tensor`]), so an optimiser state that the
//! caller skips costs nothing.

use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use super::archive::{self, Archive};
use super::pickle::{self, StorageRef, TensorRef, Value};

/// The legacy format's magic number, as the bytes of its `LONG1`.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Which container the file used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Zip,
    Legacy,
}

impl Container {
    pub fn name(self) -> &'static str {
        match self {
            Container::Zip => "torch-zip",
            Container::Legacy => "torch-legacy",
        }
    }
}

enum Storages<'a> {
    Zip { archive: Archive<'a>, prefix: String },
    Legacy(HashMap<String, &'a [u8]>),
}

/// A parsed `torch.save` file: the unpickled object, and its storages on demand.
pub struct TorchFile<'a> {
    pub container: Container,
    pub value: Value,
    /// Globals called in the pickle that this reader does not interpret (kept as opaque objects).
    pub unknown_globals: Vec<String>,
    storages: Storages<'a>,
}

/// Whether `bytes` looks like a `torch.save` file (zip, or a legacy pickle stream).
pub fn looks_like_torch(bytes: &[u8]) -> bool {
    archive::is_zip(bytes) || (bytes.len() > 2 && bytes[0] == 0x80 && bytes[1] == 2)
}

impl<'a> TorchFile<'a> {
    /// Parses a file held in memory.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        if archive::is_zip(bytes) {
            Self::parse_zip(bytes)
        } else if bytes.len() > 2 && bytes[0] == 0x80 {
            Self::parse_legacy(bytes)
        } else {
            bail!("not a PyTorch file (neither a zip checkpoint nor a legacy pickle)")
        }
    }

    fn parse_zip(bytes: &'a [u8]) -> Result<Self> {
        let archive = Archive::parse(bytes)?;
        let pkl = archive
            .entries()
            .iter()
            .find(|e| e.name.ends_with("/data.pkl") && e.name.matches('/').count() == 1)
            .context(
                "a zip file without <name>/data.pkl: not a PyTorch checkpoint (TorchScript archives are not read)",
            )?
            .clone();
        if archive.entries().iter().any(|e| e.name.ends_with("/constants.pkl")) {
            bail!("this is a TorchScript archive (torch.jit.save), not a torch.save checkpoint; save the state_dict with torch.save");
        }
        let prefix = pkl.name.trim_end_matches("data.pkl").to_string();
        if let Some(e) = archive.find(&format!("{prefix}byteorder")) {
            let order = archive.read(e)?;
            if &*order != b"little" {
                bail!(
                    "the checkpoint was written on a big-endian machine ({}); not supported",
                    String::from_utf8_lossy(&order)
                );
            }
        }
        let data = archive.read(&pkl)?;
        let loaded = pickle::load(&data).context("data.pkl")?;
        Ok(TorchFile {
            container: Container::Zip,
            value: loaded.value,
            unknown_globals: loaded.unknown_globals,
            storages: Storages::Zip { archive, prefix },
        })
    }

    fn parse_legacy(bytes: &'a [u8]) -> Result<Self> {
        let magic = pickle::load(bytes).context("legacy header")?;
        match &magic.value {
            Value::BigInt(b) if b.as_slice() == LEGACY_MAGIC => {}
            _ => bail!("a pickle, but not a PyTorch file (no legacy magic number); plain pickles are not read"),
        }
        let mut at = magic.consumed;
        let proto = pickle::load(&bytes[at..]).context("legacy header: protocol version")?;
        at += proto.consumed;
        if proto.value.as_int() != Some(1001) {
            bail!("unsupported legacy protocol version {}", proto.value.describe());
        }
        let sys = pickle::load(&bytes[at..]).context("legacy header: sys_info")?;
        at += sys.consumed;
        if matches!(sys.value.get("little_endian"), Some(Value::Bool(false))) {
            bail!("the file was written on a big-endian machine; not supported");
        }
        let obj = pickle::load(&bytes[at..]).context("the pickled object")?;
        at += obj.consumed;
        let keys = pickle::load(&bytes[at..]).context("the storage key list (truncated file?)")?;
        at += keys.consumed;
        let mut kinds = HashMap::new();
        collect_storages(&obj.value, &mut kinds, 0);
        let mut map = HashMap::new();
        for k in keys.value.items().context("legacy file: the storage keys are not a list")? {
            let key = k.as_str().context("legacy file: a storage key is not a string")?.to_string();
            let s: &Rc<StorageRef> =
                kinds.get(&key).with_context(|| format!("legacy file: storage {key} is never used"))?;
            let kind =
                s.kind.with_context(|| format!("legacy file: storage {key} has the unknown type {}", s.type_name))?;
            let n = bytes
                .get(at..at + 8)
                .with_context(|| format!("legacy file: storage {key} is cut off (truncated file?)"))?;
            let n = u64::from_le_bytes(n.try_into().expect("8 bytes")) as usize;
            let len = n.checked_mul(kind.elt_size_in_bytes()).context("bad storage size")?;
            let end = (at + 8).checked_add(len).context("bad storage size")?;
            let data = bytes
                .get(at + 8..end)
                .with_context(|| format!("legacy file: storage {key} is cut off (truncated file?)"))?;
            map.insert(key, data);
            at += 8 + len;
        }
        Ok(TorchFile {
            container: Container::Legacy,
            value: obj.value,
            unknown_globals: obj.unknown_globals,
            storages: Storages::Legacy(map),
        })
    }

    fn storage_bytes(&self, key: &str) -> Result<std::borrow::Cow<'a, [u8]>> {
        match &self.storages {
            Storages::Zip { archive, prefix } => archive.read_name(&format!("{prefix}data/{key}")),
            Storages::Legacy(map) => map
                .get(key)
                .map(|b| std::borrow::Cow::Borrowed(*b))
                .with_context(|| format!("storage {key} is missing")),
        }
    }

    /// Materialises a tensor (a contiguous copy on the CPU).
    pub fn tensor(&self, t: &TensorRef) -> Result<Tensor> {
        let s = &t.storage;
        let kind: Kind = s.kind.with_context(|| format!("tensor storage of unknown type {}", s.type_name))?;
        let data = self.storage_bytes(&s.key)?;
        let el = kind.elt_size_in_bytes();
        if Some(data.len()) != (s.numel as usize).checked_mul(el) {
            bail!("storage {}: {} bytes, expected {} elements of {el} bytes", s.key, data.len(), s.numel);
        }
        if t.size.len() != t.stride.len() || t.size.iter().any(|&d| d < 0) || t.offset < 0 {
            bail!("tensor view {:?} / {:?} is malformed", t.size, t.stride);
        }
        // In i128: a damaged file must give an error, not an overflow.
        let numel: i128 = t.size.iter().map(|&d| d as i128).product();
        if numel > 0 {
            let span: i128 = t.size.iter().zip(&t.stride).map(|(&d, &st)| (d as i128 - 1) * st as i128).sum();
            if t.stride.iter().any(|&st| st < 0) || t.offset as i128 + span >= s.numel as i128 {
                bail!("tensor view {:?} at offset {} runs past its storage of {} elements", t.size, t.offset, s.numel);
            }
        }
        let base = Tensor::f_from_data_size(&data, &[s.numel as i64], kind)?;
        let view = base.f_as_strided(&t.size, &t.stride, Some(t.offset))?;
        // A copy of its own, so that a small view does not keep a large shared storage alive.
        let mut out = Tensor::f_empty(&t.size, (kind, tch::Device::Cpu))?;
        out.f_copy_(&view)?;
        Ok(out)
    }
}

/// Every storage referenced in a value tree, by key.
fn collect_storages(v: &Value, out: &mut HashMap<String, Rc<StorageRef>>, depth: usize) {
    if depth > 256 {
        return;
    }
    match v {
        Value::Storage(s) => {
            out.insert(s.key.clone(), s.clone());
        }
        Value::Tensor(t) => {
            out.insert(t.storage.key.clone(), t.storage.clone());
        }
        Value::List(l) => l.borrow().iter().for_each(|x| collect_storages(x, out, depth + 1)),
        Value::Tuple(t) => t.iter().for_each(|x| collect_storages(x, out, depth + 1)),
        Value::Dict(d) => d.borrow().iter().for_each(|(_, x)| collect_storages(x, out, depth + 1)),
        Value::Object(o) => {
            let o = o.borrow();
            collect_storages(&o.args, out, depth + 1);
            if let Some(s) = &o.state {
                collect_storages(s, out, depth + 1);
            }
        }
        _ => {}
    }
}
