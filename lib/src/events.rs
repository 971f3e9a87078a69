//! JSON-lines events: the data every tool writes to stdout (and, for runs, to `RUN/events.jsonl`).
//!
//! # Schema (version 1)
//!
//! One flat JSON object per line. The first three keys are fixed and in this order:
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `v` | integer | schema version ([`SCHEMA_VERSION`]); renaming or removing a key bumps it, adding keys does not |
//! | `tool` | string | the tool that wrote the line (`pretrain`, `embed`, ...) |
//! | `event` | string | the kind: `start`, `step`, `epoch`, `eval`, `checkpoint`, `warn`, `error`, `end`, or a tool's own |
//!
//! Further keys follow in the order the tool added them. Values are strings, booleans, integers or
//! finite floats; units go in the key names (`elapsed_s`, `images_per_s`, `peak_rss_mib`). Values are
//! never nested: a list becomes a comma-separated string.
//!
//! **No NaN, ever.** JSON has no NaN and serde_json would write `null`. An event that carries a
//! non-finite float is not written as such: the writer emits an `error` event in its place, with the
//! event's finite fields, `of_event` (the original kind) and `nonfinite` (the offending keys).
//!
//! **One write per line.** Each event is serialised first and written with a single `write_all` on the
//! locked handle, so lines from several threads never interleave.
//!
//! **Closed stdout.** When the reader of stdout goes away (`pretrain ... | head -1`), [`EventWriter::emit`]
//! returns [`LewelError::StdoutClosed`] under [`OnClosed::Fail`] (filter tools map it to exit 0), or warns
//! once on stderr and keeps going under [`OnClosed::Continue`] (`pretrain`: its output is the checkpoint,
//! and the run's own `events.jsonl` copy still gets every line).

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Number, Value};

use crate::LewelError;

/// The version written as `v` in every event.
pub const SCHEMA_VERSION: u64 = 1;

/// One event under construction. Keys keep the order in which they were added.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    fields: Map<String, Value>,
    nonfinite: Vec<String>,
}

impl Event {
    /// A new event of kind `event` from `tool`, with `v`, `tool` and `event` as its first keys.
    pub fn new(tool: &str, event: &str) -> Self {
        let mut fields = Map::new();
        fields.insert("v".into(), Value::from(SCHEMA_VERSION));
        fields.insert("tool".into(), Value::from(tool));
        fields.insert("event".into(), Value::from(event));
        Event { fields, nonfinite: Vec::new() }
    }

    /// The kind (`start`, `step`, ...).
    pub fn kind(&self) -> &str {
        self.fields["event"].as_str().unwrap_or("")
    }

    /// Adds a string field.
    pub fn str(mut self, key: &str, value: impl Into<String>) -> Self {
        self.put(key, Value::String(value.into()));
        self
    }

    /// Adds an integer field.
    pub fn int(mut self, key: &str, value: i64) -> Self {
        self.put(key, Value::from(value));
        self
    }

    /// Adds a boolean field.
    pub fn bool(mut self, key: &str, value: bool) -> Self {
        self.put(key, Value::Bool(value));
        self
    }

    /// Adds a float field. A NaN or infinite value marks the event as non-finite (see the module docs).
    pub fn num(mut self, key: &str, value: f64) -> Self {
        match Number::from_f64(value) {
            Some(n) => self.put(key, Value::Number(n)),
            None => {
                self.fields.remove(key);
                self.nonfinite.push(key.to_string());
            }
        }
        self
    }

    /// Adds every scalar field of a JSON object (a serialised config, say). Nested values are
    /// written as their compact JSON text, so the line stays flat.
    pub fn merge(mut self, object: &Map<String, Value>) -> Self {
        for (k, v) in object {
            let v = match v {
                Value::Array(_) | Value::Object(_) => Value::String(v.to_string()),
                Value::Number(n) if n.as_f64().is_some_and(|x| !x.is_finite()) => {
                    self.nonfinite.push(k.clone());
                    continue;
                }
                other => other.clone(),
            };
            self.put(k, v);
        }
        self
    }

    fn put(&mut self, key: &str, value: Value) {
        debug_assert!(!matches!(key, "v" | "tool" | "event"), "reserved key {key}");
        self.fields.insert(key.to_string(), value);
    }

    /// The line to write, with its trailing newline. A non-finite event becomes an `error` event.
    pub fn to_line(&self) -> String {
        let obj = if self.nonfinite.is_empty() {
            Value::Object(self.fields.clone())
        } else {
            let mut m = Map::new();
            m.insert("v".into(), self.fields["v"].clone());
            m.insert("tool".into(), self.fields["tool"].clone());
            m.insert("event".into(), Value::from("error"));
            m.insert("of_event".into(), self.fields["event"].clone());
            m.insert("nonfinite".into(), Value::from(self.nonfinite.join(",")));
            for (k, v) in self.fields.iter().skip(3) {
                m.insert(k.clone(), v.clone());
            }
            Value::Object(m)
        };
        let mut line = obj.to_string();
        line.push('\n');
        line
    }
}

/// What to do when stdout is closed by its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnClosed {
    /// Return [`LewelError::StdoutClosed`] (filter tools: exit 0).
    Fail,
    /// Warn once on stderr, stop writing stdout, keep writing the copy (training tools).
    Continue,
}

/// Where events go: stdout (unless closed), and optionally a copy file (`RUN/events.jsonl`).
pub trait EventSink: Send {
    /// Writes one event.
    fn emit(&mut self, event: &Event) -> Result<(), LewelError>;
}

/// A sink that drops every event (the ranks other than 0 of a data-parallel run).
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardSink;

impl EventSink for DiscardSink {
    fn emit(&mut self, _event: &Event) -> Result<(), LewelError> {
        Ok(())
    }
}

/// A sink that keeps events in memory (tests, and library callers that want to inspect them).
#[derive(Debug, Default, Clone)]
pub struct MemorySink {
    pub events: Arc<Mutex<Vec<Event>>>,
}

impl EventSink for MemorySink {
    fn emit(&mut self, event: &Event) -> Result<(), LewelError> {
        self.events.lock().expect("event list poisoned").push(event.clone());
        Ok(())
    }
}

/// The JSON-lines writer: stdout plus an optional copy file.
pub struct EventWriter {
    out: Option<Box<dyn Write + Send>>,
    copy: Option<File>,
    on_closed: OnClosed,
    closed_warned: bool,
    tool: String,
}

impl EventWriter {
    /// Writes to the process's stdout.
    pub fn stdout(tool: &str, on_closed: OnClosed) -> Self {
        Self::to_writer(tool, Box::new(LockedStdout), on_closed)
    }

    /// Writes to any writer (tests use a buffer or a broken pipe).
    pub fn to_writer(tool: &str, out: Box<dyn Write + Send>, on_closed: OnClosed) -> Self {
        EventWriter { out: Some(out), copy: None, on_closed, closed_warned: false, tool: tool.to_string() }
    }

    /// Also appends every event to `path` (created if missing), synced at [`EventWriter::flush_copy`].
    /// A copy left with a torn last line (a crash in mid-write) first gets a newline, so the next
    /// event starts on a line of its own.
    pub fn with_copy(mut self, path: &Path) -> io::Result<Self> {
        let mut f = File::options().create(true).read(true).append(true).open(path)?;
        let len = f.metadata()?.len();
        if len > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8; 1];
            f.seek(SeekFrom::Start(len - 1))?;
            f.read_exact(&mut last)?;
            if last[0] != b'\n' {
                f.write_all(b"\n")?;
            }
        }
        self.copy = Some(f);
        Ok(self)
    }

    /// Makes the copy durable (called at checkpoints and at the end).
    pub fn flush_copy(&mut self) -> io::Result<()> {
        match &mut self.copy {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }
}

impl EventSink for EventWriter {
    fn emit(&mut self, event: &Event) -> Result<(), LewelError> {
        let line = event.to_line();
        if let Some(f) = &mut self.copy {
            // The copy is the run's record: failing to write it is a real error, not a closed pipe.
            if let Err(e) = f.write_all(line.as_bytes()) {
                eprintln!("{}: warning: could not append to events.jsonl: {e}", self.tool);
            }
        }
        if let Some(out) = &mut self.out {
            match out.write_all(line.as_bytes()).and_then(|_| out.flush()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    self.out = None;
                    match self.on_closed {
                        OnClosed::Fail => return Err(LewelError::StdoutClosed),
                        OnClosed::Continue => {
                            if !self.closed_warned {
                                self.closed_warned = true;
                                eprintln!(
                                    "{}: warning: stdout was closed; going on (events still go to the run's events.jsonl)",
                                    self.tool
                                );
                            }
                        }
                    }
                }
                Err(e) => {
                    eprintln!("{}: warning: could not write an event to stdout: {e}", self.tool);
                }
            }
        }
        Ok(())
    }
}

/// stdout, locked for each single write so that lines never interleave.
struct LockedStdout;

impl Write for LockedStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut lock = io::stdout().lock();
        lock.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().lock().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that shares its buffer with the test.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer whose reader went away.
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn fixed_keys_come_first_and_order_is_kept() {
        let line =
            Event::new("pretrain", "step").int("step", 3).num("loss", 1.5).str("zeta", "z").num("alpha", 0.5).to_line();
        assert_eq!(
            line,
            "{\"v\":1,\"tool\":\"pretrain\",\"event\":\"step\",\"step\":3,\"loss\":1.5,\"zeta\":\"z\",\"alpha\":0.5}\n"
        );
    }

    #[test]
    fn one_line_per_event_and_single_write() {
        let buf = Shared::default();
        let mut w = EventWriter::to_writer("t", Box::new(buf.clone()), OnClosed::Fail);
        for i in 0..5 {
            w.emit(&Event::new("t", "step").int("step", i).str("text", "a\nb")).unwrap();
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "an embedded newline must be escaped: {text}");
        for (i, l) in lines.iter().enumerate() {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["step"], i as i64);
            assert_eq!(v["text"], "a\nb");
        }
    }

    #[test]
    fn nan_never_reaches_the_output() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let line = Event::new("pretrain", "step").int("step", 7).num("loss", bad).num("lr", 0.1).to_line();
            assert!(!line.contains("NaN") && !line.contains("null") && !line.contains("inf"), "{line}");
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["event"], "error");
            assert_eq!(v["of_event"], "step");
            assert_eq!(v["nonfinite"], "loss");
            assert_eq!(v["step"], 7);
            assert_eq!(v["lr"], 0.1);
            let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            assert_eq!(&keys[..3], &["v", "tool", "event"]);
        }
    }

    #[test]
    fn merge_flattens_nested_values() {
        let cfg = serde_json::json!({"lr": 0.1, "milestones": [30, 40], "name": "x"});
        let line = Event::new("t", "start").merge(cfg.as_object().unwrap()).to_line();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["milestones"], "[30,40]");
        assert_eq!(v["lr"], 0.1);
    }

    #[test]
    fn closed_stdout_fails_or_continues_by_policy() {
        let mut w = EventWriter::to_writer("t", Box::new(Broken), OnClosed::Fail);
        assert!(matches!(w.emit(&Event::new("t", "end")), Err(LewelError::StdoutClosed)));

        let dir = std::env::temp_dir().join(format!("lewel-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("events.jsonl");
        let mut w = EventWriter::to_writer("t", Box::new(Broken), OnClosed::Continue).with_copy(&copy).unwrap();
        for i in 0..3 {
            w.emit(&Event::new("t", "step").int("step", i)).unwrap();
        }
        w.flush_copy().unwrap();
        assert_eq!(std::fs::read_to_string(&copy).unwrap().lines().count(), 3);
        // A torn last line (crash in mid-write) does not swallow the next event.
        std::fs::write(&copy, "{\"v\":1,\"tool\":\"t\",\"event\":\"st").unwrap();
        let mut w = EventWriter::to_writer("t", Box::new(Broken), OnClosed::Continue).with_copy(&copy).unwrap();
        w.emit(&Event::new("t", "start")).unwrap();
        let text = std::fs::read_to_string(&copy).unwrap();
        assert_eq!(text.lines().nth(1), Some("{\"v\":1,\"tool\":\"t\",\"event\":\"start\"}"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
