//! Opens DATA the way every tool does ([`lewel::data::open`]), computes its fingerprint, and prints one JSON line
//! with the counts and the seconds each took: the measuring path of `scripts/bench-data-scale.sh`
//! (`benches/data-scale.md`). With `--load N`, also loads the first N items (to see a read works).
//!
//! `cargo run -p lewel --example open-data -- DATA [--root ROOT] [--load N]`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut data, mut root, mut load) = (None, None, 0usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => root = Some(PathBuf::from(args.next().context("--root needs a folder")?)),
            "--load" => load = args.next().context("--load needs a count")?.parse()?,
            _ if data.is_none() => data = Some(PathBuf::from(a)),
            _ => bail!("usage: open-data DATA [--root ROOT] [--load N]"),
        }
    }
    let Some(path) = data else { bail!("usage: open-data DATA [--root ROOT] [--load N]") };
    let t = Instant::now();
    let ds = lewel::data::open(&lewel::data::DataSpec { path, root, strict: false })?;
    let open_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let fingerprint = ds.fingerprint();
    let fingerprint_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let loaded = (0..load.min(ds.len())).filter(|&i| ds.load(i).is_ok()).count();
    let load_s = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"data": ds.describe(), "images": ds.len(), "open_s": open_s, "fingerprint_s": fingerprint_s,
            "fingerprint": fingerprint, "loaded": loaded, "load_s": load_s})
    );
    Ok(())
}
