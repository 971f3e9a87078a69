//! Per-operation CPU time of the augmentation pipeline on the benchmark images (not a test of
//! correctness; ignored by default). Run:
//! `LEWEL_BENCH_IMAGES=DIR cargo test --release -p lewel --test data_speed -- --ignored --nocapture`
//! Times are thread CPU times, so they hold on a busy machine.

use lewel::data::decode::{decode_rgb, MAX_PIXELS};
use lewel::data::ops;
use lewel::data::recipe::Recipe;
use lewel::data::rng::{Rng, Stream};
use lewel::data::view::{render_view, sample_view};

fn cpu_s() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn time<T>(acc: &mut f64, f: impl FnOnce() -> T) -> T {
    let t = cpu_s();
    let r = f();
    *acc += cpu_s() - t;
    r
}

#[test]
#[ignore]
fn per_op_cpu_time() {
    let Ok(dir) = std::env::var("LEWEL_BENCH_IMAGES") else {
        eprintln!("set LEWEL_BENCH_IMAGES");
        return;
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let recipe = Recipe::preset("lewel-b").unwrap();
    let names = ["decode", "render", "crop", "hue", "blur", "contrast", "saturation", "bright", "normalize"];
    let mut t = [0f64; 9];
    let reps = 3;
    for _ in 0..reps {
        for (i, b) in bytes.iter().enumerate() {
            let img = time(&mut t[0], || decode_rgb(b, MAX_PIXELS).unwrap());
            for (view, v) in [(Stream::View1, &recipe.view1), (Stream::View2, &recipe.view2)] {
                let mut r = Rng::for_view(1, 0, i as u64, view, 0);
                let p = sample_view(v, img.width(), img.height(), &mut r);
                let out = time(&mut t[1], || render_view(&img, &p, 224));
                let mut x = time(&mut t[2], || ops::resized_crop(&img, p.crop, 224, 224, [0, 0, 224, 224]));
                time(&mut t[3], || ops::hue(&mut x, 0.05));
                time(&mut t[4], || ops::gaussian_blur(&mut x, 1.5));
                time(&mut t[5], || ops::contrast(&mut x, 1.2));
                time(&mut t[6], || ops::saturation(&mut x, 0.9));
                time(&mut t[7], || ops::brightness(&mut x, 0.9));
                let mut o = vec![0f32; 3 * 224 * 224];
                time(&mut t[8], || ops::normalize_into(&out, recipe.norm_f32().0, recipe.norm_f32().1, &mut o));
            }
        }
    }
    // The same through render_view (the AVX2 copy where the CPU has it): crop only, + blur, + hue.
    use lewel::data::view::{Jitter, ViewParams};
    let mut tv = [0f64; 4];
    for _ in 0..reps {
        for (i, b) in bytes.iter().enumerate() {
            let img = decode_rgb(b, MAX_PIXELS).unwrap();
            let mut r = Rng::for_view(1, 0, i as u64, Stream::View1, 0);
            let p = sample_view(&recipe.view1, img.width(), img.height(), &mut r);
            let base =
                ViewParams { crop: p.crop, flip: false, jitter: None, grey: false, blur_sigma: None, solarize: false };
            let hue =
                Jitter { order: [3, 0, 1, 2], brightness: None, contrast: None, saturation: None, hue: Some(0.05) };
            let all = Jitter {
                order: [3, 0, 1, 2],
                brightness: Some(1.1),
                contrast: Some(0.9),
                saturation: Some(1.2),
                hue: Some(0.05),
            };
            time(&mut tv[0], || render_view(&img, &base, 224));
            time(&mut tv[1], || render_view(&img, &ViewParams { blur_sigma: Some(1.5), ..base.clone() }, 224));
            time(&mut tv[2], || render_view(&img, &ViewParams { jitter: Some(hue), ..base.clone() }, 224));
            time(&mut tv[3], || render_view(&img, &ViewParams { jitter: Some(all), ..base.clone() }, 224));
        }
    }
    let n = (bytes.len() * reps) as f64;
    eprintln!(
        "render_view per view: crop {:.3} ms, blur(1.5) +{:.3} ms, hue +{:.3} ms, full jitter +{:.3} ms",
        tv[0] / n * 1e3,
        (tv[1] - tv[0]) / n * 1e3,
        (tv[2] - tv[0]) / n * 1e3,
        (tv[3] - tv[0]) / n * 1e3
    );
    for (name, s) in names.iter().zip(t) {
        eprintln!("{name:>10}: {:7.3} ms per image", s / n * 1e3);
    }
    eprintln!("decode + 2 renders + normalise: {:.3} ms per image", (t[0] + t[1] + t[8]) / n * 1e3);
}
