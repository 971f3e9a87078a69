//! The loaders: determinism across thread counts, resume, batch shapes, bad-item replacement, strict
//! mode, the evaluation loader.

use std::path::PathBuf;
use std::sync::Arc;

use lewel::data::loader::{EvalConfig, EvalLoader, LoaderConfig, RawBatch, TwoViewLoader};
use lewel::data::view::apply_eval;
use lewel::data::{open, DataSpec, Dataset, Recipe};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn ds(rel: &str) -> Arc<dyn Dataset> {
    open(&DataSpec::new(fixtures().join(rel))).unwrap()
}

fn cfg(threads: usize, batch: usize, drop_last: bool) -> LoaderConfig {
    LoaderConfig {
        seed: 5,
        batch_size: batch,
        threads,
        prefetch: 2,
        shuffle: true,
        drop_last,
        strict: false,
        shuffle_buffer: 1000,
    }
}

fn all(loader: &TwoViewLoader, epoch: u64, start: usize) -> Vec<RawBatch> {
    loader.epoch_raw(epoch, start).map(|b| b.unwrap()).collect()
}

fn same(a: &[RawBatch], b: &[RawBatch]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.v1 == y.v1 && x.v2 == y.v2 && x.indices == y.indices)
}

#[test]
fn same_seed_same_views_whatever_the_threads_and_resume_is_exact() {
    let recipe = Recipe::preset("lewel-b-small").unwrap();
    let one = TwoViewLoader::new(ds("photos-96"), recipe.clone(), cfg(1, 2, true)).unwrap();
    let three = TwoViewLoader::new(ds("photos-96"), recipe.clone(), cfg(3, 2, true)).unwrap();
    assert_eq!(one.steps_per_epoch(), 3);
    for epoch in 0..2 {
        let a = all(&one, epoch, 0);
        assert!(same(&a, &all(&three, epoch, 0)), "epoch {epoch}: 1 and 3 threads differ");
        assert!(same(&a[1..], &all(&three, epoch, 1)), "resume at step 1 differs");
        let mut seen: Vec<usize> = a.iter().flat_map(|b| b.indices.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..6).collect::<Vec<_>>());
        assert!(a.iter().all(|b| b.v1.len() == 2 * 3 * 32 * 32 && b.v1 != b.v2 && b.labels.is_none()));
    }
    assert!(!same(&all(&one, 0, 0), &all(&one, 1, 0)), "epochs must differ");
    let other = TwoViewLoader::new(ds("photos-96"), recipe, LoaderConfig { seed: 6, ..cfg(1, 2, true) }).unwrap();
    assert!(!same(&all(&one, 0, 0), &all(&other, 0, 0)), "seeds must differ");
}

#[test]
fn tensor_batches_and_partial_last_batch() {
    let recipe = Recipe::preset("byol-small").unwrap();
    let keep =
        TwoViewLoader::new(ds("fashion-mnist-tiny/t10k-images-idx3-ubyte"), recipe.clone(), cfg(2, 32, false)).unwrap();
    assert_eq!(keep.steps_per_epoch(), 4);
    let batches: Vec<_> = keep.epoch(0, 0).map(|b| b.unwrap()).collect();
    assert_eq!(batches[0].v1.size(), vec![32, 3, 32, 32]);
    assert_eq!(batches[3].v2.size(), vec![4, 3, 32, 32]);
    assert_eq!(batches[3].labels.as_ref().unwrap().len(), 4);
    assert!(batches.iter().all(|b| b.wait_s >= 0.0 && b.skipped.is_empty()));
    // the tensors, written in place by the workers, hold exactly the plain-memory batches
    let raw = all(&keep, 0, 0);
    let values = |t: &tch::Tensor| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
    for (t, r) in batches.iter().zip(&raw) {
        assert_eq!((values(&t.v1), values(&t.v2), &t.indices), (r.v1.clone(), r.v2.clone(), &r.indices));
    }
    let drop =
        TwoViewLoader::new(ds("fashion-mnist-tiny/t10k-images-idx3-ubyte"), recipe.clone(), cfg(2, 32, true)).unwrap();
    assert_eq!(drop.steps_per_epoch(), 3);
    assert!(TwoViewLoader::new(ds("photos-96"), recipe, cfg(1, 7, true)).is_err(), "no full batch");
}

#[test]
fn bad_items_are_replaced_and_reported_or_fatal_when_strict() {
    let data = ds("augment/bad");
    let bad: Vec<usize> = (0..data.len()).filter(|&i| data.name(i).ends_with(".jpg")).collect();
    assert_eq!(bad.len(), 2);
    let recipe = Recipe::preset("mocov2-small").unwrap();
    let loader = TwoViewLoader::new(data.clone(), recipe.clone(), cfg(2, 5, true)).unwrap();
    let b = all(&loader, 0, 0).remove(0);
    assert_eq!(b.indices.len(), 5, "the batch size never changes");
    assert!(b.indices.iter().all(|i| !bad.contains(i)), "{:?}", b.indices);
    let mut skipped: Vec<usize> = b.skipped.iter().map(|s| s.0).collect();
    skipped.sort();
    assert_eq!(skipped, bad);
    assert!(b.skipped.iter().all(|(_, why)| !why.is_empty()));
    // A stand-in's views differ from its own views in the same epoch.
    let dup = b.indices.iter().position(|i| b.indices.iter().filter(|j| *j == i).count() > 1).unwrap();
    let twin = b.indices.iter().rposition(|i| *i == b.indices[dup]).unwrap();
    let per = 3 * 32 * 32;
    assert_ne!(b.v1[dup * per..(dup + 1) * per], b.v1[twin * per..(twin + 1) * per]);

    let strict = TwoViewLoader::new(data.clone(), recipe, LoaderConfig { strict: true, ..cfg(1, 5, true) }).unwrap();
    let err = strict.epoch_raw(0, 0).next().unwrap().unwrap_err();
    let msg = format!("{err:#}");
    assert!(bad.iter().any(|&i| msg.contains(&data.name(i))), "{msg}");
}

#[test]
fn eval_loader_in_order_with_labels_zeros_for_bad_items_and_prepared_passthrough() {
    let recipe = Recipe::preset("lewel-b-small").unwrap();
    let data = ds("fashion-mnist-tiny/t10k-images-idx3-ubyte");
    let ev = EvalLoader::new(
        data.clone(),
        recipe.clone(),
        EvalConfig { batch_size: 64, threads: 2, prefetch: 2, strict: false },
    )
    .unwrap();
    let batches: Vec<_> = ev.batches_raw().map(|b| b.unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.indices.len()).collect::<Vec<_>>(), vec![64, 36]);
    assert_eq!(batches[1].indices[0], 64);
    assert_eq!(batches[1].labels.as_ref().unwrap()[0], data.label(64).unwrap());
    let mut want = vec![0f32; 3 * 32 * 32];
    apply_eval(&data.load(65).unwrap(), &recipe, &mut want);
    assert_eq!(&batches[1].images[3 * 32 * 32..2 * 3 * 32 * 32], &want[..]);
    let t: Vec<_> = ev.batches().map(|b| b.unwrap()).collect();
    assert_eq!(t[0].images.size(), vec![64, 3, 32, 32]);

    let bad = ds("augment/bad");
    let ev = EvalLoader::new(
        bad.clone(),
        recipe.clone(),
        EvalConfig { batch_size: 8, threads: 1, prefetch: 1, strict: false },
    )
    .unwrap();
    let b = ev.batches_raw().next().unwrap().unwrap();
    assert_eq!(b.indices, vec![0, 1, 2, 3, 4]);
    assert_eq!(b.skipped.len(), 2);
    for (i, _) in &b.skipped {
        assert!(b.images[i * 3072..(i + 1) * 3072].iter().all(|&v| v == 0.0));
    }
    let ev = EvalLoader::new(bad, recipe, EvalConfig { batch_size: 8, threads: 1, prefetch: 1, strict: true }).unwrap();
    assert!(ev.batches_raw().next().unwrap().is_err());
}

#[test]
fn prepared_tensors_pass_through_eval_and_refuse_augmentation() {
    let d = std::env::temp_dir().join(format!("lewel-loader-prep-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("t.npy");
    let mut w = lewel::data::npy::NpyWriter::create(&p, &[3, 3, 4, 4]).unwrap();
    let vals: Vec<f32> = (0..3 * 48).map(|v| v as f32 / 10.0).collect();
    w.write(&vals).unwrap();
    w.commit().unwrap();
    let data = open(&DataSpec::new(&p)).unwrap();
    let recipe = Recipe::preset("lewel-b").unwrap();
    let err = TwoViewLoader::new(data.clone(), recipe.clone(), cfg(1, 1, true)).err().unwrap();
    assert!(format!("{err:#}").contains("augmentation is not possible"));
    let ev =
        EvalLoader::new(data, recipe, EvalConfig { batch_size: 2, threads: 1, prefetch: 1, strict: false }).unwrap();
    assert_eq!(ev.image_hw(), (4, 4));
    let got: Vec<f32> = ev.batches_raw().flat_map(|b| b.unwrap().images).collect();
    assert_eq!(got, vals);
    std::fs::remove_dir_all(&d).unwrap();
}

/// A data set whose item 1 makes the "decoder" panic.
struct Panicky;
impl Dataset for Panicky {
    fn len(&self) -> usize {
        4
    }
    fn label(&self, _: usize) -> Option<i64> {
        None
    }
    fn num_classes(&self) -> Option<usize> {
        None
    }
    fn name(&self, i: usize) -> String {
        format!("panicky[{i}]")
    }
    fn load(&self, i: usize) -> anyhow::Result<image::RgbImage> {
        assert_ne!(i, 1, "malformed file");
        Ok(image::RgbImage::from_pixel(40, 30, image::Rgb([i as u8 * 60, 10, 200])))
    }
    fn describe(&self) -> String {
        "panicky".into()
    }
    fn fingerprint(&self) -> String {
        "panicky".into()
    }
}

#[test]
fn a_panicking_decoder_is_a_bad_item_not_a_crash() {
    let recipe = Recipe::preset("lewel-b-small").unwrap();
    let loader = TwoViewLoader::new(Arc::new(Panicky), recipe, cfg(2, 4, true)).unwrap();
    let b = all(&loader, 0, 0).remove(0);
    assert_eq!(b.indices.len(), 4);
    assert_eq!(b.skipped.len(), 1);
    assert!(b.skipped[0].1.contains("panicked") && b.skipped[0].1.contains("malformed file"), "{:?}", b.skipped);
}

/// `pinned_for` pins only for a CUDA device (the batches then reach it by asynchronous copies); on the CPU it is no
/// change, and the tensors of `epoch` equal the plain batches of `epoch_raw`. With CUDA present (a GPU machine),
/// the pinned batches are pinned and hold the same values.
#[test]
fn pinned_batches_only_for_cuda_and_with_the_same_values() {
    let recipe = Recipe::preset("lewel-b-small").unwrap();
    let plain = TwoViewLoader::new(ds("photos-96"), recipe.clone(), cfg(2, 2, true)).unwrap();
    let cpu =
        TwoViewLoader::new(ds("photos-96"), recipe.clone(), cfg(2, 2, true)).unwrap().pinned_for(tch::Device::Cpu);
    assert_eq!(cpu.pinned(), None);
    let raw = all(&plain, 0, 0);
    let check = |loader: &TwoViewLoader, pinned: Option<tch::Device>| {
        let got: Vec<_> = loader.epoch(0, 0).map(|b| b.unwrap()).collect();
        assert_eq!(got.len(), raw.len());
        for (b, r) in got.iter().zip(&raw) {
            if let Some(d) = pinned {
                assert!(b.v1.is_pinned(d) && b.v2.is_pinned(d));
            }
            assert_eq!(Vec::<f32>::try_from(b.v1.flatten(0, -1)).unwrap(), r.v1);
            assert_eq!(Vec::<f32>::try_from(b.v2.flatten(0, -1)).unwrap(), r.v2);
        }
    };
    check(&cpu, None);
    if tch::Cuda::is_available() {
        let gpu =
            TwoViewLoader::new(ds("photos-96"), recipe, cfg(2, 2, true)).unwrap().pinned_for(tch::Device::Cuda(0));
        assert_eq!(gpu.pinned(), Some(tch::Device::Cuda(0)));
        check(&gpu, Some(tch::Device::Cuda(0)));
    }
}
