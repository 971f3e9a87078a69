//! Tar shards as DATA (`lib/src/data/shards.rs`): the three ways to name them, labels from `.cls`, damage turned
//! into bad items that name the shard and the member, the shard-wise order with exact resume and disjoint ranks.

use std::path::Path;

use lewel::data::{open, DataSpec, LoaderConfig, Recipe, TwoViewLoader};
use lewel_testkit::{photo_shards, photos, scratch, write_tar};

fn spec(p: impl Into<std::path::PathBuf>) -> DataSpec {
    DataSpec::new(p)
}

#[test]
fn a_brace_pattern_a_list_and_a_folder_name_the_same_shards() {
    let d = scratch("shards-forms");
    let dir = d.join("shards");
    let paths = photo_shards(&dir, 3, 4, 5);
    let list = d.join("shards.txt");
    std::fs::write(&list, "shards/shard-000000.tar\nshards/shard-000001.tar\n\nshards/shard-000002.tar\n").unwrap();
    let pattern = format!("{}/shard-{{000000..000002}}.tar", dir.display());
    let forms = [spec(&pattern), spec(&list), spec(&dir)];
    let sets: Vec<_> = forms.iter().map(|s| open(s).unwrap()).collect();
    for ds in &sets {
        assert_eq!(ds.len(), 12);
        assert_eq!(ds.fingerprint(), sets[0].fingerprint());
        assert_eq!(ds.num_classes(), Some(5));
        assert!(ds.describe().starts_with("shards "), "{}", ds.describe());
        assert_eq!(ds.shard_sizes(), Some(&[4usize, 4, 4][..]));
    }
    let ds = &sets[0];
    let photos = photos();
    for i in 0..12 {
        assert_eq!(ds.label(i), Some((i % 5) as i64));
        let want = lewel::data::decode::decode_rgb(&photos[i % 6].1, u64::MAX).unwrap();
        assert_eq!(ds.load(i).unwrap(), want, "item {i}");
    }
    assert_eq!(ds.name(5), format!("{}:001001.png", paths[1].display()));
    // one .tar file alone, and a missing shard is an error naming it
    assert_eq!(open(&spec(&paths[0])).unwrap().len(), 4);
    let err = open(&spec(format!("{}/shard-{{000000..000003}}.tar", dir.display()))).err().unwrap();
    assert!(format!("{err:#}").contains("1 of the 4 shards do not exist"), "{err:#}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A garbage image member, a bad `.cls`, a shard cut in the middle of a member, a shard with a damaged header and
/// a shard cut at a member boundary: each is one item that fails to load naming the shard and the member; every
/// other item loads.
#[test]
fn damaged_members_and_shards_are_bad_items_naming_shard_and_member() {
    let d = scratch("shards-damage");
    let photos = photos();
    let png = |k: usize| photos[k].1.clone();
    let members = |keys: &[&str]| -> Vec<(String, Vec<u8>)> {
        keys.iter()
            .enumerate()
            .flat_map(|(k, key)| [(format!("{key}.png"), png(k)), (format!("{key}.cls"), b"1".to_vec())])
            .collect()
    };
    let good = d.join("s-0.tar");
    let mut m = members(&["a0", "a1", "a2"]);
    m[2].1 = b"not an image at all".to_vec(); // a1.png
    m[5].1 = b"x7".to_vec(); // a2.cls
    write_tar(&good, &m);
    let cut = d.join("s-1.tar");
    write_tar(&cut, &members(&["b0", "b1", "b2"]));
    let bytes = std::fs::read(&cut).unwrap();
    // inside b1.png's data: after b0 (header + data + header + .cls block), its header and a bit
    let b1_at = bytes.windows(6).position(|w| w == b"b1.png").unwrap();
    std::fs::write(&cut, &bytes[..b1_at + 512 + 100]).unwrap();
    let header = d.join("s-2.tar");
    write_tar(&header, &members(&["c0", "c1"]));
    let mut bytes = std::fs::read(&header).unwrap();
    let c1_at = bytes.windows(6).position(|w| w == b"c1.png").unwrap();
    bytes[c1_at + 1] ^= 0x20; // a damaged header: its checksum no longer matches
    std::fs::write(&header, &bytes).unwrap();
    let boundary = d.join("s-3.tar");
    write_tar(&boundary, &members(&["d0", "d1"]));
    let bytes = std::fs::read(&boundary).unwrap();
    let d1_at = bytes.windows(6).position(|w| w == b"d1.png").unwrap();
    std::fs::write(&boundary, &bytes[..d1_at]).unwrap(); // d0 whole, then nothing: no end blocks

    let ds = open(&spec(format!("{}/s-{{0..3}}.tar", d.display()))).unwrap();
    let mut bad = Vec::new();
    for i in 0..ds.len() {
        if let Err(e) = ds.load(i) {
            bad.push(format!("{}: {e:#}", ds.name(i)));
        }
    }
    let text = bad.join("\n");
    let has = |what: &str| bad.iter().any(|b| b.contains(what));
    assert!(has("s-0.tar:a1.png: not an image"), "{text}");
    assert!(has("s-0.tar:a2.png: a2.cls: the label member holds \"x7\""), "{text}");
    assert!(has("s-1.tar:b1.png: truncated shard"), "{text}");
    assert!(has("s-2.tar:@") && has("damaged at byte"), "{text}");
    assert!(has("s-3.tar:d0.png: the shard ends after the member d0.cls without the end-of-archive"), "{text}");
    assert_eq!(bad.len(), 5, "{text}");
    // loaded: a0, b0, c0 (d0 carries its shard's damage)
    assert_eq!(ds.len() - bad.len(), 3);
    let _ = std::fs::remove_dir_all(&d);
}

fn loader(dir: &Path, seed: u64, batch: usize, buffer: usize) -> TwoViewLoader {
    let ds = open(&spec(dir)).unwrap();
    let cfg = LoaderConfig {
        seed,
        batch_size: batch,
        threads: 2,
        prefetch: 2,
        shuffle: true,
        drop_last: true,
        strict: false,
        shuffle_buffer: buffer,
    };
    TwoViewLoader::new(ds, Recipe::preset("lewel-b-small").unwrap(), cfg).unwrap()
}

#[test]
fn the_shard_order_resumes_exactly_mid_epoch_and_ranks_read_disjoint_shards() {
    let d = scratch("shards-order");
    let dir = d.join("shards");
    photo_shards(&dir, 5, 4, 0);
    let l = loader(&dir, 4, 4, 3);
    let full: Vec<_> = l.epoch_raw(1, 0).map(|b| b.unwrap()).collect();
    assert_eq!(full.len(), 5);
    let resumed: Vec<_> = l.epoch_raw(1, 3).map(|b| b.unwrap()).collect();
    assert_eq!(resumed.len(), 2);
    for (a, b) in full[3..].iter().zip(&resumed) {
        assert_eq!((a.step, &a.indices, &a.v1, &a.v2), (b.step, &b.indices, &b.v1, &b.v2));
    }
    let order = l.order(1);
    assert_ne!(order, l.order(2));
    // two ranks over 5 shards (a remainder of 1): their items come from disjoint shards but at most one
    let shard = |i: usize| i / 4;
    let mut per_rank = Vec::new();
    for rank in 0..2 {
        let lr = loader(&dir, 4, 4, 3).with_shard(rank, 2).unwrap();
        let idx: Vec<usize> = lr.epoch_raw(0, 0).flat_map(|b| b.unwrap().indices).collect();
        assert_eq!(idx.len(), 10);
        per_rank.push(idx.iter().map(|&i| shard(i)).collect::<std::collections::BTreeSet<_>>());
    }
    assert!(per_rank[0].intersection(&per_rank[1]).count() <= 1, "{per_rank:?}");
    let _ = std::fs::remove_dir_all(&d);
}
