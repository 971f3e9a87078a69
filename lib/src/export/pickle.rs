//! A minimal pickle reader: enough of Python's unpickling machine to read PyTorch checkpoints
//! (`torch.save`, protocol 2) and numpy arrays (detectron2 `.pkl`), without Python.
//!
//! It runs the opcodes of protocols 0 to 5 that data pickles use (no `EXT*`, no out-of-band buffers) and
//! builds a [`Value`] tree. Calls (`REDUCE`, `NEWOBJ`) of the globals that matter are interpreted:
//!
//! | global | becomes |
//! |---|---|
//! | `collections.OrderedDict`, `builtins.dict` | [`Value::Dict`] (a `BUILD` state such as `_metadata` is ignored) |
//! | `torch._utils._rebuild_tensor_v2` / `_rebuild_tensor` | [`Value::Tensor`]: a view of a persistent storage |
//! | `torch._utils._rebuild_parameter[_with_state]`, `torch._tensor._rebuild_from_type_v2` | the tensor inside |
//! | `numpy.core.multiarray.scalar` (also `numpy._core`) | [`Value::NpScalar`], decoded when numeric |
//! | `numpy.dtype` | [`Value::Dtype`] |
//! | `numpy.core.multiarray._reconstruct` + `BUILD` | [`Value::NdArray`] |
//! | `_codecs.encode` | [`Value::Bytes`] (how protocol 2 stores `bytes`) |
//! | `torch.Size`, `builtins.set` / `frozenset` | [`Value::Tuple`] / [`Value::List`] |
//!
//! Persistent ids `('storage', torch.FloatStorage, key, location, numel[, view_metadata])` become
//! [`Value::Storage`]; the caller supplies the bytes ([`super::torchfile`]). Any other global gives an opaque
//! [`Value::Object`] and is listed in [`Loaded::unknown_globals`]: unknown content never fails the load unless a
//! tensor needs it (a storage of an unknown type).
//!
//! Why not `pytorch-reader` 0.22.1 (burn's reader, MIT OR Apache-2.0, 2026-10-20) or `serde-pickle` (issue 22):
//! pytorch-reader reads our three test files as we do (ResNet-50 `.pth` from `export-backbone`: 318 tensors,
//! 94,245,032 bytes; the official and the legacy fixture: 358 and 120 tensors), at 9.8 ms for the ResNet-50 file
//! against our 0.9 ms pickle plus 4 ms of CRC-checked storages (debug builds, a loaded machine), but it keeps numpy
//! calls opaque, so detectron2's `.pkl` (numpy arrays: `export-backbone --format detectron2` and its verification)
//! would still need this machine whole; it returns tensors, not the object tree the importer reads (`epoch`,
//! `arch`, the unknown globals it reports); and it needs tar >= 0.4.46 (our shards pin 0.4.44) and zip 9 (rust
//! 1.89, ours 1.85). serde-pickle's newest release, 1.2.0, is from 2024-11-22: outside the 18-month rule, and it
//! interprets no globals (no tensors, no numpy arrays). Kept.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use tch::Kind;

/// A Python global: `module.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    pub module: String,
    pub name: String,
}

impl std::fmt::Display for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.module, self.name)
    }
}

/// A storage referenced by a persistent id; its bytes live outside the pickle.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// `FloatStorage`, `LongStorage`, ...
    pub type_name: String,
    /// The element kind, `None` for a storage type this reader does not know.
    pub kind: Option<Kind>,
    /// The key: the entry name under `data/` (zip format) or the storage id (legacy format).
    pub key: String,
    /// `cpu`, `cuda:0`, ... (tensors are always loaded on the CPU).
    pub location: String,
    /// Elements in the storage.
    pub numel: u64,
}

/// A tensor: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// A numpy dtype: its name (`f4`, `i8`, ...) and byte order (`<`, `>`, `|`, `=`).
#[derive(Debug, Clone, PartialEq)]
pub struct NpDtype {
    pub name: String,
    pub byteorder: char,
}

/// A numpy array rebuilt from `_reconstruct` + `__setstate__`.
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    pub dtype: NpDtype,
    pub shape: Vec<i64>,
    pub fortran_order: bool,
    pub data: Rc<Vec<u8>>,
}

/// An object this reader does not interpret: what built it, its arguments and its `BUILD` state.
#[derive(Debug, Clone)]
pub struct Object {
    pub class: String,
    pub args: Value,
    pub state: Option<Value>,
}

/// A value of the pickle. Containers are shared (`Rc`), as Python's are through the memo.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64: little-endian two's complement bytes.
    BigInt(Rc<Vec<u8>>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<Vec<u8>>),
    List(Rc<RefCell<Vec<Value>>>),
    Tuple(Rc<Vec<Value>>),
    /// Key / value pairs in insertion order.
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Rc<Global>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// A numpy scalar: its dtype name (`float64`, ...) and the decoded value (`Value::None` when not numeric).
    NpScalar(Rc<(String, Value)>),
    Dtype(Rc<RefCell<NpDtype>>),
    /// `None` until its `BUILD` arrives (or when the array holds Python objects).
    NdArray(Rc<RefCell<Option<NdArray>>>),
    Object(Rc<RefCell<Object>>),
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Str(Rc::from(s))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            Value::NpScalar(s) => s.1.as_int(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            Value::NpScalar(s) => s.1.as_f64(),
            _ => None,
        }
    }

    /// The items of a tuple or list.
    pub fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.to_vec()),
            Value::List(l) => Some(l.borrow().clone()),
            _ => None,
        }
    }

    /// The pairs of a dict.
    pub fn pairs(&self) -> Option<Vec<(Value, Value)>> {
        match self {
            Value::Dict(d) => Some(d.borrow().clone()),
            _ => None,
        }
    }

    /// `self[key]` for a dict with string keys.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d.borrow().iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    fn same_key(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::None, Value::None) => true,
            _ => false,
        }
    }

    /// A short description for messages: `a dict of 5 entries`, `numpy float64 71.9`, `tensor [64, 3] Float`.
    pub fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => if *b { "True" } else { "False" }.into(),
            Value::Int(i) => format!("the integer {i}"),
            Value::BigInt(_) => "a big integer".into(),
            Value::Float(f) => format!("the float {f}"),
            Value::Str(s) if s.len() <= 40 => format!("the string {s:?}"),
            Value::Str(s) => format!("a string of {} bytes", s.len()),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::List(l) => format!("a list of {} items", l.borrow().len()),
            Value::Tuple(t) => format!("a tuple of {} items", t.len()),
            Value::Dict(d) => {
                let d = d.borrow();
                let tensors = d.iter().filter(|(_, v)| matches!(v, Value::Tensor(_))).count();
                if tensors > 0 {
                    format!("a dict of {} entries ({tensors} tensors)", d.len())
                } else {
                    format!("a dict of {} entries", d.len())
                }
            }
            Value::Global(g) => format!("the global {g}"),
            Value::Storage(s) => format!("a {} of {} elements", s.type_name, s.numel),
            Value::Tensor(t) => format!("a tensor {:?} ({})", t.size, t.storage.type_name),
            Value::NpScalar(s) => match &s.1 {
                Value::Float(f) => format!("numpy {} {f}", s.0),
                Value::Int(i) => format!("numpy {} {i}", s.0),
                Value::Bool(b) => format!("numpy {} {b}", s.0),
                _ => format!("a numpy {} scalar", s.0),
            },
            Value::Dtype(d) => format!("numpy dtype {}", d.borrow().name),
            Value::NdArray(a) => match &*a.borrow() {
                Some(a) => format!("a numpy array {:?} {}", a.shape, a.dtype.name),
                None => "a numpy array of objects".into(),
            },
            Value::Object(o) => format!("an object of class {}", o.borrow().class),
        }
    }
}

/// The element kind of a PyTorch storage type (`FloatStorage` → Float).
pub fn storage_kind(type_name: &str) -> Option<Kind> {
    Some(match type_name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// The result of one pickle.
pub struct Loaded {
    pub value: Value,
    /// Bytes consumed (the position after `STOP`): the legacy format has several pickles in a row.
    pub consumed: usize,
    /// Globals that were called but are not interpreted (`argparse.Namespace`, ...), sorted.
    pub unknown_globals: Vec<String>,
}

/// Unpickles the first pickle in `data`.
pub fn load(data: &[u8]) -> Result<Loaded> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        unknown: BTreeSet::new(),
        depth: 0,
        nesting: HashMap::new(),
    };
    let value = m.run()?;
    Ok(Loaded { value, consumed: m.pos, unknown_globals: m.unknown.into_iter().collect() })
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    unknown: BTreeSet<String>,
    /// Nesting of `_rebuild_from_type_v2` calls (bounded: a damaged pickle must not recurse forever).
    depth: usize,
    /// Every container seen, by address: a clone (which keeps it alive, so no address is reused while the machine
    /// runs), its nesting height, and whether it sits inside another container. See [`MAX_NESTING`].
    nesting: HashMap<usize, (Value, u32, bool)>,
}

/// How deep containers may nest. Dropping (or walking) a value recurses once per level: a pickle of 2 MB can
/// nest lists a million deep, which would overflow the stack and abort the process. Checkpoints nest a few levels.
/// The height of every container is tracked as it is built; a container may not grow deeper once it sits inside
/// another (the pickler always finishes a container before it nests it), so the heights stay exact.
const MAX_NESTING: u32 = 512;

/// The address of a container's shared part (`None` for a value that holds no other values).
fn container_addr(v: &Value) -> Option<usize> {
    match v {
        Value::List(r) => Some(Rc::as_ptr(r) as *const u8 as usize),
        Value::Tuple(r) => Some(Rc::as_ptr(r) as *const u8 as usize),
        Value::Dict(r) => Some(Rc::as_ptr(r) as *const u8 as usize),
        Value::Object(r) => Some(Rc::as_ptr(r) as *const u8 as usize),
        Value::NpScalar(r) => Some(Rc::as_ptr(r) as *const u8 as usize),
        _ => None,
    }
}

/// The values a container holds.
fn children_of(v: &Value) -> Vec<Value> {
    match v {
        Value::List(l) => l.borrow().clone(),
        Value::Tuple(t) => t.to_vec(),
        Value::Dict(d) => d.borrow().iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect(),
        Value::Object(o) => {
            let o = o.borrow();
            std::iter::once(o.args.clone()).chain(o.state.clone()).collect()
        }
        Value::NpScalar(s) => vec![s.1.clone()],
        _ => Vec::new(),
    }
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .with_context(|| format!("pickle: unexpected end of data at byte {} (truncated file?)", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn len_u64(&mut self) -> Result<usize> {
        Ok(usize::try_from(self.u64()?)?)
    }

    /// A newline-terminated line (text opcodes), without the newline.
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .with_context(|| format!("pickle: unexpected end of data at byte {} (truncated file?)", self.pos))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    /// Pushes `v`, registering its nesting height (an error past [`MAX_NESTING`]).
    fn push(&mut self, v: Value) -> Result<()> {
        self.height(&v)?;
        self.stack.push(v);
        Ok(())
    }

    /// The nesting height of `v` (0 for a value that holds none), registering a container not seen before (made
    /// in one step from values already registered).
    fn height(&mut self, v: &Value) -> Result<u32> {
        let Some(a) = container_addr(v) else { return Ok(0) };
        if let Some(e) = self.nesting.get(&a) {
            return Ok(e.1);
        }
        let h = self.adopt(&children_of(v))?;
        self.nesting.insert(a, (v.clone(), h, false));
        Ok(h)
    }

    /// One more than the greatest height among `kids` (1 for none), each now marked as nested.
    fn adopt(&mut self, kids: &[Value]) -> Result<u32> {
        let mut h = 1;
        for k in kids {
            h = h.max(self.height(k)? + 1);
            if let Some(e) = container_addr(k).and_then(|a| self.nesting.get_mut(&a)) {
                e.2 = true;
            }
        }
        if h > MAX_NESTING {
            bail!(
                "pickle: containers nested more than {MAX_NESTING} deep at byte {} (a damaged or hostile file)",
                self.pos
            );
        }
        Ok(h)
    }

    /// `target` is about to hold `kids` too: its height may rise, unless it already sits inside another container.
    fn grow(&mut self, target: &Value, kids: &[Value]) -> Result<()> {
        let Some(a) = container_addr(target) else { return Ok(()) };
        let old = self.height(target)?;
        let new = self.adopt(kids)?;
        if new > old {
            let e = self.nesting.get_mut(&a).expect("registered by height");
            if e.2 {
                bail!(
                    "pickle: a container grew deeper after it was put inside another, at byte {} (torch.save never \
                     writes that: a damaged or hostile file)",
                    self.pos
                );
            }
            e.1 = new;
        }
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().with_context(|| format!("pickle: stack underflow at byte {}", self.pos))
    }

    fn top(&mut self) -> Result<&mut Value> {
        let pos = self.pos;
        self.stack.last_mut().with_context(|| format!("pickle: empty stack at byte {pos}"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.marks.pop().with_context(|| format!("pickle: no MARK at byte {}", self.pos))?;
        if m > self.stack.len() {
            bail!("pickle: damaged stack at byte {}", self.pos);
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_get(&self, key: u64) -> Result<Value> {
        self.memo.get(&key).cloned().with_context(|| format!("pickle: memo entry {key} missing at byte {}", self.pos))
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        bail!("pickle: protocol {p} is newer than this reader understands");
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME length: frames are only a buffering hint
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'I' => {
                    let l = self.line()?;
                    let v = match l.as_str() {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        s => Value::Int(s.trim().parse().with_context(|| format!("pickle: bad INT {s:?}"))?),
                    };
                    self.push(v)?;
                }
                b'L' => {
                    let l = self.line()?;
                    let s = l.trim().trim_end_matches('L');
                    self.push(Value::Int(s.parse().with_context(|| format!("pickle: unsupported LONG {s:?}"))?))?;
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))?;
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                    let b = self.take(n)?;
                    self.push(long_from_bytes(b))?;
                }
                b'F' => {
                    let l = self.line()?;
                    self.stack
                        .push(Value::Float(l.trim().parse().with_context(|| format!("pickle: bad FLOAT {l:?}"))?));
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.push(Value::Float(f64::from_be_bytes(b.try_into().expect("8 bytes"))))?;
                }
                b'S' => {
                    let l = self.line()?;
                    let s = l.trim();
                    let inner = s.get(1..s.len().saturating_sub(1)).unwrap_or("");
                    self.push(Value::str(inner))?;
                }
                b'T' | b'U' => {
                    let n = if op == b'T' { self.u32()? as usize } else { self.u8()? as usize };
                    let b = self.take(n)?;
                    // Python 2 str: latin-1, as torch.load's `encoding` default reads it.
                    let s: String = b.iter().map(|&c| c as char).collect();
                    self.push(Value::str(&s))?;
                }
                b'V' => {
                    let l = self.line()?;
                    self.push(Value::str(&l))?;
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?;
                    let s = std::str::from_utf8(b).with_context(|| format!("pickle: bad UTF-8 string at byte {at}"))?;
                    self.push(Value::str(s))?;
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?;
                    self.push(Value::Bytes(Rc::new(b.to_vec())))?;
                }
                b']' => self.push(Value::List(Rc::default()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let target = self.top()?.clone();
                    self.grow(&target, std::slice::from_ref(&v))?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().push(v),
                        other => bail!("pickle: APPEND to {} at byte {at}", other.describe()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.grow(&target, &items)?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        other => bail!("pickle: APPENDS to {} at byte {at}", other.describe()),
                    }
                }
                b')' => self.push(Value::Tuple(Rc::new(Vec::new())))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        bail!("pickle: stack underflow at byte {at}");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(Rc::new(items)))?;
                }
                b'}' => self.push(Value::Dict(Rc::default()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = Value::Dict(Rc::default());
                    set_items(&d, items, at)?;
                    self.push(d)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?.clone();
                    self.grow(&d, &[k.clone(), v.clone()])?;
                    set_items(&d, vec![k, v], at)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?.clone();
                    self.grow(&d, &items)?;
                    set_items(&d, items, at)?;
                }
                0x8f => self.push(Value::List(Rc::default()))?, // EMPTY_SET, kept as a list
                0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.grow(&target, &items)?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        other => bail!("pickle: ADDITEMS to {} at byte {at}", other.describe()),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))))?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(Rc::new(Global { module, name })))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.as_str(), name.as_str()) {
                        (Some(m), Some(n)) => {
                            self.push(Value::Global(Rc::new(Global { module: m.into(), name: n.into() })))?
                        }
                        _ => bail!("pickle: STACK_GLOBAL needs two strings at byte {at}"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(f, args)?;
                    self.push(v)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.push(v)?;
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.push(v)?;
                }
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let args = self.pop_mark()?;
                    let g = Value::Global(Rc::new(Global { module, name }));
                    let v = self.call(g, Value::Tuple(Rc::new(args)))?;
                    self.push(v)?;
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        bail!("pickle: OBJ without a class at byte {at}");
                    }
                    let cls = items.remove(0);
                    let v = self.call(cls, Value::Tuple(Rc::new(items)))?;
                    self.push(v)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?.clone();
                    if matches!(target, Value::Object(_)) {
                        self.grow(&target, std::slice::from_ref(&state))?;
                    }
                    build(&target, state);
                }
                b'p' => {
                    let l = self.line()?;
                    self.memo_put(l.trim().parse().with_context(|| format!("pickle: bad PUT {l:?}"))?)?;
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()? as u64;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let l = self.line()?;
                    let v = self.memo_get(l.trim().parse().with_context(|| format!("pickle: bad GET {l:?}"))?)?;
                    self.push(v)?;
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    let v = self.memo_get(k)?;
                    self.push(v)?;
                }
                b'j' => {
                    let k = self.u32()? as u64;
                    let v = self.memo_get(k)?;
                    self.push(v)?;
                }
                b'P' => {
                    let l = self.line()?;
                    let v = self.persistent(Value::str(&l), at)?;
                    self.push(v)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid, at)?;
                    self.push(v)?;
                }
                other => bail!("pickle: unsupported opcode 0x{other:02x} at byte {at}"),
            }
        }
    }

    /// `persistent_load`: PyTorch's storage ids.
    fn persistent(&mut self, pid: Value, at: usize) -> Result<Value> {
        let items = pid.items().unwrap_or_default();
        if items.first().and_then(Value::as_str) != Some("storage") || items.len() < 5 {
            self.unknown.insert("persistent id".into());
            return Ok(Value::Object(Rc::new(RefCell::new(Object {
                class: "persistent id".into(),
                args: pid,
                state: None,
            }))));
        }
        let type_name = match &items[1] {
            Value::Global(g) => g.name.clone(),
            Value::Str(s) => s.to_string(),
            other => bail!("pickle: storage type is {} at byte {at}", other.describe()),
        };
        let key = match &items[2] {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            other => bail!("pickle: storage key is {} at byte {at}", other.describe()),
        };
        let location = items[3].as_str().unwrap_or("cpu").to_string();
        let numel = items[4].as_int().filter(|&n| n >= 0).context("pickle: bad storage size")? as u64;
        Ok(Value::Storage(Rc::new(StorageRef { kind: storage_kind(&type_name), type_name, key, location, numel })))
    }

    /// `f(*args)` for the globals this reader knows; an opaque object for the others.
    fn call(&mut self, f: Value, args: Value) -> Result<Value> {
        let Value::Global(g) = &f else {
            let class = format!("<result of calling {}>", f.describe());
            self.unknown.insert(class.clone());
            return Ok(Value::Object(Rc::new(RefCell::new(Object { class, args, state: None }))));
        };
        let a = args.items().unwrap_or_default();
        let numpy_multiarray = matches!(g.module.as_str(), "numpy.core.multiarray" | "numpy._core.multiarray");
        Ok(match (g.module.as_str(), g.name.as_str()) {
            ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => {
                let d = Value::Dict(Rc::default());
                if let Some(pairs) = a.first().and_then(Value::items) {
                    for p in pairs {
                        if let Some(kv) = p.items().filter(|kv| kv.len() == 2) {
                            set_items(&d, kv, self.pos)?;
                        }
                    }
                }
                d
            }
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor" | "_rebuild_tensor_v3") => {
                if a.len() < 4 {
                    bail!("pickle: {g} with {} arguments", a.len());
                }
                let Value::Storage(storage) = &a[0] else {
                    bail!("pickle: {g}: the storage is {}, not a persistent storage", a[0].describe());
                };
                let ints = |v: &Value, what: &str| -> Result<Vec<i64>> {
                    v.items()
                        .unwrap_or_default()
                        .iter()
                        .map(|x| x.as_int().with_context(|| format!("pickle: {g}: bad {what}")))
                        .collect()
                };
                Value::Tensor(Rc::new(TensorRef {
                    storage: storage.clone(),
                    offset: a[1].as_int().context("pickle: bad storage offset")?,
                    size: ints(&a[2], "size")?,
                    stride: ints(&a[3], "stride")?,
                }))
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                a.into_iter().next().unwrap_or(Value::None)
            }
            ("torch._tensor", "_rebuild_from_type_v2") if a.len() >= 3 => {
                if self.depth > 16 {
                    bail!("pickle: {g} nested too deeply (damaged file?)");
                }
                let (func, inner) = (a[0].clone(), a[2].clone());
                self.depth += 1;
                let v = self.call(func, inner);
                self.depth -= 1;
                v?
            }
            ("torch", "Size") => Value::Tuple(Rc::new(a.first().and_then(Value::items).unwrap_or_default())),
            ("builtins" | "__builtin__", "set" | "frozenset") => {
                Value::List(Rc::new(RefCell::new(a.first().and_then(Value::items).unwrap_or_default())))
            }
            ("_codecs", "encode") => {
                let s = a.first().and_then(Value::as_str).context("pickle: _codecs.encode of a non-string")?;
                let enc = a.get(1).and_then(Value::as_str).unwrap_or("utf-8").to_ascii_lowercase();
                if enc == "latin1" || enc == "latin-1" || enc == "iso-8859-1" {
                    let mut out = Vec::with_capacity(s.len());
                    for c in s.chars() {
                        out.push(u8::try_from(c as u32).context("pickle: _codecs.encode: not latin-1")?);
                    }
                    Value::Bytes(Rc::new(out))
                } else {
                    Value::Bytes(Rc::new(s.as_bytes().to_vec()))
                }
            }
            ("numpy", "dtype") => {
                let name = a.first().and_then(Value::as_str).unwrap_or("?").to_string();
                Value::Dtype(Rc::new(RefCell::new(NpDtype { name, byteorder: '=' })))
            }
            (_, "scalar") if numpy_multiarray => numpy_scalar(&a),
            (_, "_reconstruct") if numpy_multiarray => Value::NdArray(Rc::default()),
            _ => {
                self.unknown.insert(g.to_string());
                Value::Object(Rc::new(RefCell::new(Object { class: g.to_string(), args, state: None })))
            }
        })
    }
}

/// `LONG1` / `LONG4`: little-endian two's complement.
fn long_from_bytes(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() <= 8 {
        let neg = b[b.len() - 1] & 0x80 != 0;
        let mut buf = [if neg { 0xFF } else { 0 }; 8];
        buf[..b.len()].copy_from_slice(b);
        return Value::Int(i64::from_le_bytes(buf));
    }
    Value::BigInt(Rc::new(b.to_vec()))
}

fn set_items(d: &Value, items: Vec<Value>, at: usize) -> Result<()> {
    let Value::Dict(d) = d else {
        bail!("pickle: SETITEM(S) on {} at byte {at}", d.describe());
    };
    if items.len() % 2 != 0 {
        bail!("pickle: odd number of items for a dict at byte {at}");
    }
    let mut d = d.borrow_mut();
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match d.iter_mut().find(|(old, _)| old.same_key(&k)) {
            Some(slot) => slot.1 = v,
            None => d.push((k, v)),
        }
    }
    Ok(())
}

/// `BUILD`: `obj.__setstate__(state)` for the objects that need it.
fn build(target: &Value, state: Value) {
    match target {
        Value::Dtype(d) => {
            if let Some(order) = state.items().and_then(|s| s.get(1).and_then(|v| v.as_str().map(str::to_string))) {
                if let Some(c) = order.chars().next() {
                    d.borrow_mut().byteorder = c;
                }
            }
        }
        Value::NdArray(slot) => *slot.borrow_mut() = ndarray_from_state(&state),
        Value::Object(o) => o.borrow_mut().state = Some(state),
        // OrderedDict `_metadata`, tensor hooks, ...: not needed.
        _ => {}
    }
}

/// `ndarray.__setstate__((version, shape, dtype, is_fortran, data))`; `None` for object arrays.
fn ndarray_from_state(state: &Value) -> Option<NdArray> {
    let mut s = state.items()?;
    if s.len() == 5 {
        s.remove(0);
    }
    if s.len() != 4 {
        return None;
    }
    let shape = s[0].items()?.iter().map(Value::as_int).collect::<Option<Vec<i64>>>()?;
    let dtype = match &s[1] {
        Value::Dtype(d) => d.borrow().clone(),
        _ => return None,
    };
    let fortran_order = matches!(s[2], Value::Bool(true));
    let data = match &s[3] {
        Value::Bytes(b) => b.clone(),
        Value::Str(st) => Rc::new(st.chars().map(|c| c as u32 as u8).collect()),
        _ => return None,
    };
    Some(NdArray { dtype, shape, fortran_order, data })
}

/// `numpy.core.multiarray.scalar(dtype, bytes)`, decoded for the numeric types.
fn numpy_scalar(a: &[Value]) -> Value {
    let (Some(Value::Dtype(d)), Some(bytes)) = (a.first(), a.get(1)) else {
        return Value::NpScalar(Rc::new(("?".into(), Value::None)));
    };
    let d = d.borrow().clone();
    let raw: Vec<u8> = match bytes {
        Value::Bytes(b) => b.to_vec(),
        Value::Str(s) => s.chars().map(|c| c as u32 as u8).collect(),
        _ => Vec::new(),
    };
    let big = d.byteorder == '>';
    let arr = |n: usize| -> Option<Vec<u8>> {
        let mut b = raw.get(..n)?.to_vec();
        if big {
            b.reverse();
        }
        Some(b)
    };
    let (long, value) = match d.name.as_str() {
        "f8" => ("float64", arr(8).map(|b| Value::Float(f64::from_le_bytes(b.try_into().expect("8"))))),
        "f4" => ("float32", arr(4).map(|b| Value::Float(f32::from_le_bytes(b.try_into().expect("4")) as f64))),
        "i8" => ("int64", arr(8).map(|b| Value::Int(i64::from_le_bytes(b.try_into().expect("8"))))),
        "i4" => ("int32", arr(4).map(|b| Value::Int(i32::from_le_bytes(b.try_into().expect("4")) as i64))),
        "u1" => ("uint8", arr(1).map(|b| Value::Int(b[0] as i64))),
        "b1" => ("bool", arr(1).map(|b| Value::Bool(b[0] != 0))),
        other => (other, None),
    };
    Value::NpScalar(Rc::new((long.to_string(), value.unwrap_or(Value::None))))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hand-assembled pickles (the byte strings of `pickletools.dis` output for small objects).

    #[test]
    fn dict_of_scalars_and_containers() {
        // pickle.dumps({'a': 1, 'b': [2.5, 'x'], 'c': (None, True), 'd': -300, 'e': 2**70}, protocol=2)
        let mut p = vec![0x80, 2, b'}', b'(', b'X', 1, 0, 0, 0, b'a', b'K', 1];
        p.extend([b'X', 1, 0, 0, 0, b'b', b']', b'q', 1, b'(', b'G']);
        p.extend(2.5f64.to_be_bytes());
        p.extend([b'X', 1, 0, 0, 0, b'x', b'e']);
        p.extend([b'X', 1, 0, 0, 0, b'c', b'N', 0x88, 0x86]);
        p.extend([b'X', 1, 0, 0, 0, b'd', b'J']);
        p.extend((-300i32).to_le_bytes());
        p.extend([b'X', 1, 0, 0, 0, b'e', 0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0x40]);
        p.extend([b'u', b'h', 1, b'0', b'.']);
        let l = load(&p).unwrap();
        assert_eq!(l.consumed, p.len());
        let v = l.value;
        assert_eq!(v.get("a").unwrap().as_int(), Some(1));
        let b = v.get("b").unwrap().items().unwrap();
        assert_eq!(b[0].as_f64(), Some(2.5));
        assert_eq!(b[1].as_str(), Some("x"));
        let c = v.get("c").unwrap().items().unwrap();
        assert!(matches!(c[0], Value::None) && matches!(c[1], Value::Bool(true)));
        assert_eq!(v.get("d").unwrap().as_int(), Some(-300));
        assert!(matches!(v.get("e").unwrap(), Value::BigInt(_)));
    }

    #[test]
    fn memo_shares_containers_and_truncation_is_an_error() {
        // l = []; pickle.dumps((l, l)) where l is filled after being memoised:
        // PROTO 2, EMPTY_LIST, BINPUT 0, MARK, K 1, APPENDS, BINGET 0, TUPLE2, STOP
        let p = [0x80, 2, b']', b'q', 0, b'(', b'K', 1, b'e', b'h', 0, 0x86, b'.'];
        let v = load(&p).unwrap().value.items().unwrap();
        assert_eq!(v[1].items().unwrap().len(), 1, "the memo must share the list");
        let err = load(&p[..7]).err().unwrap();
        assert!(format!("{err:#}").contains("truncated"), "{err:#}");
    }

    #[test]
    fn unknown_globals_are_opaque_not_fatal() {
        // argparse.Namespace() REDUCE, then BUILD {'lr': 1}
        let mut p = vec![0x80, 2, b'c'];
        p.extend(b"argparse\nNamespace\n");
        p.extend([b')', b'R', b'}', b'X', 2, 0, 0, 0, b'l', b'r', b'K', 1, b's', b'b', b'.']);
        let l = load(&p).unwrap();
        assert_eq!(l.unknown_globals, ["argparse.Namespace"]);
        assert_eq!(l.value.describe(), "an object of class argparse.Namespace");
    }
}
