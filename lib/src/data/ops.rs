//! The augmentation operations, each written to match the torchvision operation the official code
//! uses (shared reference section 4). Parameter *sampling* ([`rrc_box`], [`crate::data::view`]) is
//! kept apart from *application* (everything else here), so that each application can be checked
//! against torchvision with fixed parameters.
//!
//! Images between operations are [`Planar`]: three f32 planes (CHW, like a torch tensor) with values
//! in [0, 1]. The source of a view is the decoded 8-bit RGB image; the first operation (the resized
//! crop) reads it directly and writes the planar float view.
//!
//! NOTE(ref): the official pipeline runs on PIL images and rounds to 8 bits after every operation;
//! here values stay in f32 from the resize to the normalised output, which is what torchvision's
//! tensor operations (`torchvision.transforms.v2.functional` on float tensors) compute. The colour
//! formulas are those of the tensor functions; the measured differences to torchvision and to PIL are
//! stated on each function and checked by the tests in `lib/tests/data_ops.rs`.
//!
//! The pixel loops are `#[inline(always)]` so that [`crate::data::view`] can compile the whole view
//! pipeline a second time for AVX2 and pick it at run time. Rust never fuses a multiply and an add,
//! and the loops that vectorise have no reductions, so both versions give the same bits.

// Pixel loops index several arrays in step; iterator chains would hide the arithmetic.
#![allow(clippy::needless_range_loop)]

use image::RgbImage;

/// A float RGB image in planar layout: `data[c * height * width + y * width + x]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Planar {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

/// Float buffers kept per thread for reuse: the views' temporaries are a few hundred kilobytes each,
/// and freshly allocated ones cost page faults and zeroing (memory returned to the system by the
/// allocator) comparable to the augmentation itself.
mod spare {
    use std::cell::RefCell;

    thread_local! {
        static SPARE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    }

    /// A zeroed buffer of `len` floats, reusing a spare one when there is one.
    pub fn take(len: usize) -> Vec<f32> {
        let mut v = SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default();
        v.clear();
        v.resize(len, 0.0);
        v
    }

    /// Keeps a buffer for reuse by this thread (at most 8, at most 64 MiB each).
    pub fn give(v: Vec<f32>) {
        if v.capacity() == 0 || v.capacity() > 16 << 20 {
            return;
        }
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < 8 {
                s.push(v);
            }
        });
    }
}

impl Drop for Planar {
    fn drop(&mut self) {
        spare::give(std::mem::take(&mut self.data));
    }
}

impl Planar {
    /// A black image.
    pub fn zeros(width: usize, height: usize) -> Planar {
        Planar { width, height, data: spare::take(3 * width * height) }
    }

    /// From an 8-bit RGB image (values / 255).
    pub fn from_rgb(img: &RgbImage) -> Planar {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut p = Planar::zeros(w, h);
        let n = w * h;
        for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                p.data[c * n + i] = px[c] as f32 / 255.0;
            }
        }
        p
    }

    /// To an 8-bit RGB image (rounded, clamped).
    pub fn to_rgb(&self) -> RgbImage {
        let n = self.width * self.height;
        let mut raw = vec![0u8; 3 * n];
        for i in 0..n {
            for c in 0..3 {
                raw[i * 3 + c] = (self.data[c * n + i] * 255.0).round().clamp(0.0, 255.0) as u8;
            }
        }
        RgbImage::from_raw(self.width as u32, self.height as u32, raw).expect("sizes agree")
    }

    fn planes_mut(&mut self) -> (&mut [f32], &mut [f32], &mut [f32]) {
        let n = self.width * self.height;
        let (r, gb) = self.data.split_at_mut(n);
        let (g, b) = gb.split_at_mut(n);
        (r, g, b)
    }
}

/// A crop box in source pixels, as torchvision's `(i, j, h, w)`: top, left, height, width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// A source of random numbers for the parameter sampling: the real generator, or a fixed script in tests.
pub trait Draw {
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64;
    /// Uniform integer in 0..n.
    fn below(&mut self, n: u64) -> u64;
}

impl Draw for crate::data::rng::Rng {
    fn uniform(&mut self) -> f64 {
        crate::data::rng::Rng::uniform(self)
    }
    fn below(&mut self, n: u64) -> u64 {
        crate::data::rng::Rng::below(self, n)
    }
}

/// Python's `round()`: to the nearest integer, ties to even (torchvision rounds crop sides with it).
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// `RandomResizedCrop.get_params`: the crop box for an image of `width` x `height`, following
/// torchvision exactly given the same draws: up to 10 tries of (area fraction ~ U(scale), aspect
/// ratio ~ exp(U(log ratio))), sides rounded half-to-even; a try that fits picks its top, then its
/// left, uniformly; after 10 misses the centre crop with the aspect ratio clamped into `ratio`.
pub fn rrc_box(width: u32, height: u32, scale: [f64; 2], ratio: [f64; 2], draw: &mut impl Draw) -> CropBox {
    let (wf, hf) = (width as f64, height as f64);
    let area = wf * hf;
    let (lr0, lr1) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target_area = area * (scale[0] + (scale[1] - scale[0]) * draw.uniform());
        let aspect = (lr0 + (lr1 - lr0) * draw.uniform()).exp();
        let w = py_round((target_area * aspect).sqrt());
        let h = py_round((target_area / aspect).sqrt());
        if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
            let top = draw.below((height as i64 - h + 1) as u64) as u32;
            let left = draw.below((width as i64 - w + 1) as u64) as u32;
            return CropBox { top, left, height: h as u32, width: w as u32 };
        }
    }
    let in_ratio = wf / hf;
    let (w, h) = if in_ratio < ratio[0] {
        (width as i64, py_round(wf / ratio[0]))
    } else if in_ratio > ratio[1] {
        (py_round(hf * ratio[1]), height as i64)
    } else {
        (width as i64, height as i64)
    };
    CropBox {
        top: ((height as i64 - h) / 2) as u32,
        left: ((width as i64 - w) / 2) as u32,
        height: h as u32,
        width: w as u32,
    }
}

/// The size `Resize(s)` gives an image of `width` x `height`: the shorter side becomes `s`, the longer
/// `int(s * long / short)` (truncated, as torchvision does).
pub fn resize_shorter(width: u32, height: u32, s: u32) -> (u32, u32) {
    if width <= height {
        (s, ((s as u64 * height as u64) / width.max(1) as u64) as u32)
    } else {
        (((s as u64 * width as u64) / height.max(1) as u64) as u32, s)
    }
}

/// `CenterCrop(c)` offsets (top, left) in an image of `width` x `height`: `int(round((h - c) / 2))`.
pub fn center_crop_offsets(width: u32, height: u32, c: u32) -> (u32, u32) {
    let top = py_round((height as f64 - c as f64) / 2.0).max(0) as u32;
    let left = py_round((width as f64 - c as f64) / 2.0).max(0) as u32;
    (top, left)
}

/// The taps of a 1-D antialiased bilinear resample: for each output index, the first input index and
/// the normalised weights. This is the triangle filter of PIL's `Image.resize(BILINEAR)` and of
/// torchvision's `resize(antialias=True)`: output pixel x has centre (x + 0.5) * in/out, the filter is
/// stretched by in/out when shrinking (antialias) and taps are clipped to the input and renormalised.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    /// `weights[k * stride + t]` for output k, tap t.
    weights: Vec<f32>,
    stride: usize,
}

fn taps(in_size: usize, out_size: usize, window: std::ops::Range<usize>) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear: support 1, stretched
    let ss = 1.0 / filterscale;
    let stride = (support.ceil() as usize) * 2 + 1;
    let n = window.len();
    let mut t =
        Taps { start: Vec::with_capacity(n), len: Vec::with_capacity(n), weights: vec![0.0; n * stride], stride };
    let mut ws = vec![0f64; stride];
    for (k, xx) in window.enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize; // C cast: truncation
        let xmax = (((center + support + 0.5) as i64).min(in_size as i64) as usize).saturating_sub(xmin).min(stride);
        let mut total = 0.0;
        for (x, w) in ws.iter_mut().enumerate().take(xmax) {
            let d = ((x + xmin) as f64 - center + 0.5) * ss;
            *w = (1.0 - d.abs()).max(0.0);
            total += *w;
        }
        for x in 0..xmax {
            t.weights[k * stride + x] = if total != 0.0 { (ws[x] / total) as f32 } else { 0.0 };
        }
        t.start.push(xmin);
        t.len.push(xmax);
    }
    t
}

/// Crops `crop` out of `src`, resizes it to `out_w` x `out_h` with antialiased bilinear filtering and
/// returns the part of the result inside `window` (x, y, width, height; the whole output for a
/// RandomResizedCrop, the centre crop for the evaluation transform).
///
/// Matches `torchvision.transforms.v2.functional.resized_crop(..., antialias=True)` on a float tensor
/// to float rounding (measured max abs difference 1.1e-6 on [0, 1] values, mean below 1e-7), and PIL's
/// `img.crop(box).resize(size, BILINEAR)` to within PIL's own 8-bit rounding (measured max 0.94/255,
/// mean 0.29/255), for shrinking, enlarging and mixed crops (`lib/tests/data_ops.rs`).
#[inline(always)]
pub fn resized_crop(src: &RgbImage, crop: CropBox, out_w: usize, out_h: usize, window: [usize; 4]) -> Planar {
    let [wx, wy, ww, wh] = window;
    assert!(wx + ww <= out_w && wy + wh <= out_h, "window outside the output");
    assert!(crop.left + crop.width <= src.width() && crop.top + crop.height <= src.height(), "crop outside the image");
    let (cw, ch) = (crop.width as usize, crop.height as usize);
    let hx = taps(cw, out_w, wx..wx + ww);
    let vy = taps(ch, out_h, wy..wy + wh);
    // Columns of the crop that the horizontal pass reads.
    let x_lo = hx.start.iter().copied().min().unwrap_or(0);
    let x_hi = hx.start.iter().zip(&hx.len).map(|(s, l)| s + l).max().unwrap_or(0);
    let span = x_hi - x_lo;
    let stride_src = src.width() as usize * 3;
    let raw = src.as_raw();
    let col0 = (crop.left as usize + x_lo) * 3;
    // Vertical pass first: rows of interleaved f32 (wh rows x span*3, plus one spare float so the
    // horizontal pass can load 4 floats per pixel).
    let rl = span * 3 + 1;
    let mut tmp = spare::take(wh * rl);
    for (k, row) in tmp.chunks_exact_mut(rl).enumerate() {
        let row = &mut row[..span * 3];
        let s = vy.start[k];
        for t in 0..vy.len[k] {
            let w = vy.weights[k * vy.stride + t];
            let off = (crop.top as usize + s + t) * stride_src + col0;
            let line = &raw[off..off + span * 3];
            for (a, &b) in row.iter_mut().zip(line) {
                *a += w * b as f32;
            }
        }
    }
    // Horizontal pass into planes (4-lane accumulators: R, G, B and an ignored lane), then / 255
    // like ToTensor.
    let mut out = Planar::zeros(ww, wh);
    let n = ww * wh;
    let (pr, pg, pb) = out.planes_mut();
    for y in 0..wh {
        let row = &tmp[y * rl..(y + 1) * rl];
        for x in 0..ww {
            let s = (hx.start[x] - x_lo) * 3;
            let ws = &hx.weights[x * hx.stride..x * hx.stride + hx.len[x]];
            let mut acc = [0f32; 4];
            for (t, &w) in ws.iter().enumerate() {
                let p: &[f32; 4] = row[s + 3 * t..s + 3 * t + 4].try_into().expect("4 floats");
                for c in 0..4 {
                    acc[c] += w * p[c];
                }
            }
            let i = y * ww + x;
            pr[i] = acc[0] / 255.0;
            pg[i] = acc[1] / 255.0;
            pb[i] = acc[2] / 255.0;
        }
    }
    spare::give(tmp);
    debug_assert_eq!(out.data.len(), 3 * n);
    out
}

/// Mirrors the image left to right (`RandomHorizontalFlip`'s application): exact.
#[inline(always)]
pub fn hflip(img: &mut Planar) {
    let w = img.width;
    for row in img.data.chunks_exact_mut(w) {
        row.reverse();
    }
}

/// The luma of torchvision's `rgb_to_grayscale` for float tensors: 0.2989 R + 0.587 G + 0.114 B
/// (ITU-R 601-2; PIL's `convert('L')` uses 299/587/114 per mille on 8-bit values).
#[inline]
fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.2989 * r + 0.587 * g + 0.114 * b
}

/// `adjust_brightness(img, f)`: `clamp(f * img, 0, 1)`.
#[inline(always)]
pub fn brightness(img: &mut Planar, f: f32) {
    for v in &mut img.data {
        *v = (f * *v).clamp(0.0, 1.0);
    }
}

/// `adjust_contrast(img, f)`: blends with the mean of the grayscale image, `clamp(f*img + (1-f)*mean)`.
#[inline(always)]
pub fn contrast(img: &mut Planar, f: f32) {
    let (r, g, b) = img.planes_mut();
    let sum: f64 = r.iter().zip(g.iter()).zip(b.iter()).map(|((&r, &g), &b)| luma(r, g, b) as f64).sum();
    let mean = (sum / r.len().max(1) as f64) as f32;
    let add = (1.0 - f) * mean;
    for v in &mut img.data {
        *v = (f * *v + add).clamp(0.0, 1.0);
    }
}

/// `adjust_saturation(img, f)`: blends each pixel with its own grey, `clamp(f*img + (1-f)*grey)`.
#[inline(always)]
pub fn saturation(img: &mut Planar, f: f32) {
    let (r, g, b) = img.planes_mut();
    for i in 0..r.len() {
        let grey = (1.0 - f) * luma(r[i], g[i], b[i]);
        r[i] = (f * r[i] + grey).clamp(0.0, 1.0);
        g[i] = (f * g[i] + grey).clamp(0.0, 1.0);
        b[i] = (f * b[i] + grey).clamp(0.0, 1.0);
    }
}

/// `adjust_hue(img, h)`: RGB → HSV, hue += h modulo 1, HSV → RGB, with torchvision's tensor formulas
/// (`_rgb2hsv` / `_hsv2rgb`).
#[inline(always)]
pub fn hue(img: &mut Planar, shift: f32) {
    let (r, g, b) = img.planes_mut();
    const L: usize = 8;
    let mut rc = r.chunks_exact_mut(L);
    let mut gc = g.chunks_exact_mut(L);
    let mut bc = b.chunks_exact_mut(L);
    for ((r8, g8), b8) in (&mut rc).zip(&mut gc).zip(&mut bc) {
        let (mut rr, mut gg, mut bb) = ([0f32; L], [0f32; L], [0f32; L]);
        rr.copy_from_slice(r8);
        gg.copy_from_slice(g8);
        bb.copy_from_slice(b8);
        for k in 0..L {
            (rr[k], gg[k], bb[k]) = hue_pixel(rr[k], gg[k], bb[k], shift);
        }
        r8.copy_from_slice(&rr);
        g8.copy_from_slice(&gg);
        b8.copy_from_slice(&bb);
    }
    for ((r, g), b) in
        rc.into_remainder().iter_mut().zip(gc.into_remainder().iter_mut()).zip(bc.into_remainder().iter_mut())
    {
        (*r, *g, *b) = hue_pixel(*r, *g, *b, shift);
    }
}

#[inline(always)]
fn fmin(a: f32, b: f32) -> f32 {
    if a < b {
        a
    } else {
        b
    }
}

#[inline(always)]
fn fmax(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// One pixel of `adjust_hue`: torchvision's `_rgb2hsv`, the hue shift, and `_hsv2rgb`, written with
/// selects only (no branches, no integer sector index) so that the loop vectorises. `_hsv2rgb` picks,
/// per sector i = floor(6h), each channel from v, p = v(1-s), q = v(1-sf), t = v(1-s(1-f)); the
/// same values are v(1 - s·w) with w = clamp(min(k, 4-k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1 for
/// R, G, B. Results equal torchvision's to a few ulp (measured max 1.8e-7 on [0, 1] values).
#[inline(always)]
fn hue_pixel(r: f32, g: f32, b: f32, shift: f32) -> (f32, f32, f32) {
    let maxc = fmax(fmax(r, g), b);
    let minc = fmin(fmin(r, g), b);
    let cr = maxc - minc;
    let eqc = cr == 0.0;
    let s = cr / if eqc { 1.0 } else { maxc };
    let crd = if eqc { 1.0 } else { cr };
    let rc = (maxc - r) / crd;
    let gc = (maxc - g) / crd;
    let bc = (maxc - b) / crd;
    let hg = 2.0 + rc - bc;
    let hb = 4.0 + gc - rc;
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        hg
    } else {
        hb
    };
    // torch.fmod(h / 6 + 1, 1) and (h + shift) % 1 (remainder): the arguments lie in [0.8, 1.9) and
    // [-0.5, 1.5), where one conditional subtraction (exact by Sterbenz's lemma) or addition gives
    // the same float as fmod / x - floor(x).
    let h = h / 6.0 + 1.0;
    let h = if h >= 1.0 { h - 1.0 } else { h };
    let h = h + shift;
    let h = if h < 0.0 { h + 1.0 } else { h };
    let h = if h >= 1.0 { h - 1.0 } else { h };
    let h6 = h * 6.0;
    let v = maxc;
    let chan = |n: f32| {
        let k = n + h6;
        let k = if k >= 6.0 { k - 6.0 } else { k };
        let w = fmax(fmin(fmin(k, 4.0 - k), 1.0), 0.0);
        v * (1.0 - s * w)
    };
    (chan(5.0), chan(3.0), chan(1.0))
}

/// `rgb_to_grayscale(img, num_output_channels=3)`: every channel becomes the luma.
#[inline(always)]
pub fn grayscale(img: &mut Planar) {
    let (r, g, b) = img.planes_mut();
    for i in 0..r.len() {
        let l = luma(r[i], g[i], b[i]);
        r[i] = l;
        g[i] = l;
        b[i] = l;
    }
}

/// PIL's `ImageOps.solarize(img, 128)` on [0, 1] values: v ≥ 128/255 becomes 1 − v.
#[inline(always)]
pub fn solarize(img: &mut Planar) {
    const T: f32 = 128.0 / 255.0;
    for v in &mut img.data {
        if *v >= T {
            *v = 1.0 - *v;
        }
    }
}

/// The box radius PIL gives one of `passes` box blurs so that together they approximate a Gaussian of
/// standard deviation `sigma` (PIL's `_gaussian_blur_radius`, after Gwosdek et al., "Theoretical
/// foundations of Gaussian convolution by extended box filtering", 2011): integer part l plus a
/// fraction a, where the two outer taps of the box get weight a.
pub fn pil_box_radius(sigma: f64, passes: u32) -> f64 {
    let sigma2 = sigma * sigma / passes as f64;
    let big_l = (12.0 * sigma2 + 1.0).sqrt();
    let l = ((big_l - 1.0) / 2.0).floor();
    let a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2) / (6.0 * (sigma2 - (l + 1.0) * (l + 1.0)));
    l + a
}

/// The Gaussian blur of the official code, PIL's `ImageFilter.GaussianBlur(radius=sigma)`: three
/// passes of an extended box blur per direction (horizontal passes, then vertical ones), each box of
/// radius [`pil_box_radius`]`(sigma, 3)`, edges extended (clamped).
///
/// This is PIL's algorithm computed in f32 instead of PIL's 8-bit fixed point with rounding after
/// every pass: against PIL on the same 8-bit input (σ = 0.3, 1.0, 1.7) the measured difference is at
/// most 2.7/255, mean 0.58/255 — the spread of PIL's six roundings. It is *not* a sampled Gaussian:
/// against `torchvision.transforms.v2.functional.gaussian_blur` (σ, 2⌈3σ⌉+1 taps, reflect padding)
/// the measured difference away from the borders is max 0.003–0.009, mean 0.0003–0.0014 for σ = 1–1.7,
/// and max 0.05, mean 0.006 at σ = 0.3, where the sampled 3-tap kernel has much less than σ² variance
/// and the box cascade keeps it. At the borders torchvision reflects where PIL repeats the edge pixel.
/// PIL's blur is what LEWEL was trained with.
#[inline(always)]
pub fn gaussian_blur(img: &mut Planar, sigma: f64) {
    let radius = pil_box_radius(sigma, 3);
    let l = radius.floor() as usize;
    let ww = (1.0 / (2.0 * radius + 1.0)) as f32;
    let bw = ((radius - l as f64) * ww as f64) as f32;
    let half = l + 1;
    let (w, h) = (img.width, img.height);
    let mut pad = vec![0f32; w + 2 * half];
    let mut tmp = spare::take(w * h);
    let k = 2 * half + 1;
    for plane in img.data.chunks_exact_mut(w * h) {
        // Horizontal passes, row by row, through an edge-extended copy of the row.
        for row in plane.chunks_exact_mut(w) {
            for _ in 0..3 {
                pad[half..half + w].copy_from_slice(row);
                let (first, last) = (row[0], row[w - 1]);
                pad[..half].fill(first);
                pad[half + w..].fill(last);
                box_pass(k, |t| &pad[t..t + w], row, ww, bw);
            }
        }
        // Vertical passes: whole rows at a time, rows outside clamped to the edge rows; ping-pong
        // between the plane and `tmp`.
        for pass in 0..3 {
            let (src, dst): (&[f32], &mut [f32]) =
                if pass % 2 == 0 { (&*plane, &mut tmp) } else { (&tmp, &mut *plane) };
            for (y, out) in dst.chunks_exact_mut(w).enumerate() {
                let row = |t: usize| {
                    let sy = (y as isize + t as isize - half as isize).clamp(0, h as isize - 1) as usize;
                    &src[sy * w..(sy + 1) * w]
                };
                box_pass(k, row, out, ww, bw);
            }
        }
        plane.copy_from_slice(&tmp); // three passes: the result is in `tmp`
    }
    spare::give(tmp);
}

/// One extended-box pass over `k` taps (`tap(t)` is the input shifted by t):
/// `out = bw * (tap 0 + tap k-1) + ww * (sum of the inner taps)`, fused into one loop for the radii
/// the recipes use (k = 3: σ < 1.41, k = 5: σ < 2.45) so it vectorises and allocates nothing.
#[inline(always)]
fn box_pass<'a>(k: usize, tap: impl Fn(usize) -> &'a [f32], out: &mut [f32], ww: f32, bw: f32) {
    let n = out.len();
    match k {
        3 => {
            let (a, b, c) = (&tap(0)[..n], &tap(1)[..n], &tap(2)[..n]);
            for x in 0..n {
                out[x] = bw * (a[x] + c[x]) + ww * b[x];
            }
        }
        5 => {
            let (a, b, c, d, e) = (&tap(0)[..n], &tap(1)[..n], &tap(2)[..n], &tap(3)[..n], &tap(4)[..n]);
            for x in 0..n {
                out[x] = bw * (a[x] + e[x]) + ww * (b[x] + c[x] + d[x]);
            }
        }
        _ => {
            let taps: Vec<&[f32]> = (0..k).map(&tap).collect();
            for x in 0..n {
                let inner: f32 = taps[1..k - 1].iter().map(|t| t[x]).sum();
                out[x] = bw * (taps[0][x] + taps[k - 1][x]) + ww * inner;
            }
        }
    }
}

/// `ToTensor` then `Normalize(mean, std)`: writes `(v - mean[c]) / std[c]` into `out` (CHW).
#[inline(always)]
pub fn normalize_into(img: &Planar, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let n = img.width * img.height;
    assert_eq!(out.len(), 3 * n, "output slice has the wrong size");
    for c in 0..3 {
        let inv = 1.0 / std[c];
        let m = mean[c];
        for (o, &v) in out[c * n..(c + 1) * n].iter_mut().zip(&img.data[c * n..(c + 1) * n]) {
            *o = (v - m) * inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays fixed draws, like torch's generator would have produced them.
    struct Script(Vec<f64>, Vec<u64>);
    impl Draw for Script {
        fn uniform(&mut self) -> f64 {
            self.0.remove(0)
        }
        fn below(&mut self, n: u64) -> u64 {
            let v = self.1.remove(0);
            assert!(v < n);
            v
        }
    }

    #[test]
    fn rrc_box_follows_torchvision_given_the_draws() {
        // 500x375, scale (0.2, 1), ratio (3/4, 4/3). Draw u=0.5 -> area 0.6*187500 = 112500;
        // ratio u=0.5 -> exp(0) = 1 -> w = h = round(sqrt(112500)) = round(335.41) = 335.
        let mut s = Script(vec![0.5, 0.5], vec![10, 20]);
        let b = rrc_box(500, 375, [0.2, 1.0], [0.75, 4.0 / 3.0], &mut s);
        assert_eq!(b, CropBox { top: 10, left: 20, height: 335, width: 335 });
        // A try that does not fit (area 1.0, ratio 4/3 on a portrait image: w = 433 > 375) is redrawn.
        let mut s = Script(vec![1.0 - 1e-12, 1.0 - 1e-12, 0.0, 0.0], vec![0, 0]);
        let b = rrc_box(375, 500, [0.2, 1.0], [0.75, 4.0 / 3.0], &mut s);
        // second try: area 0.2*187500 = 37500, ratio 3/4 -> w = round(167.7) = 168, h = round(223.6) = 224
        assert_eq!(b, CropBox { top: 0, left: 0, height: 224, width: 168 });
        // Ten misses: centre crop, ratio clamped (a 1000x100 strip: in_ratio 10 > 4/3 -> w = round(133.3)).
        let mut s = Script(vec![1.0 - 1e-12; 20], vec![]);
        let b = rrc_box(1000, 100, [1.0, 1.0], [0.75, 4.0 / 3.0], &mut s);
        assert_eq!(b, CropBox { top: 0, left: 433, height: 100, width: 133 });
        // Ties round to even, as Python's round: sqrt(0.25 * 100 * 100 * 1.0) = 50 exactly; 2.5 -> 2.
        assert_eq!(py_round(2.5), 2);
        assert_eq!(py_round(3.5), 4);
    }

    #[test]
    fn eval_geometry_follows_torchvision() {
        assert_eq!(resize_shorter(500, 375, 256), (341, 256));
        assert_eq!(resize_shorter(375, 500, 256), (256, 341));
        assert_eq!(center_crop_offsets(341, 256, 224), (16, 58)); // round(58.5) = 58 (even)
    }

    #[test]
    fn identity_resize_and_flip_are_exact() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([(x * 40) as u8, (y * 60) as u8, (x * y) as u8]));
        let full = CropBox { top: 0, left: 0, height: 4, width: 5 };
        let p = resized_crop(&img, full, 5, 4, [0, 0, 5, 4]);
        assert_eq!(p, Planar::from_rgb(&img));
        let mut f = p.clone();
        hflip(&mut f);
        assert_eq!(f.data[0], p.data[4]);
        hflip(&mut f);
        assert_eq!(f, p);
    }

    #[test]
    fn halving_averages_pixel_pairs() {
        // 4 -> 2 with the stretched triangle: output 0 has centre 1.0 and taps x=0..2 with weights
        // 0.25, 0.5, 0.25 of (x - 1 + 0.5)/2 -> |d| = 0.25, 0.25, 0.75: weights 0.75, 0.75, 0.25 / 1.75.
        let img = RgbImage::from_fn(4, 1, |x, _| image::Rgb([[0u8, 100, 200, 255][x as usize]; 3]));
        let p = resized_crop(&img, CropBox { top: 0, left: 0, height: 1, width: 4 }, 2, 1, [0, 0, 2, 1]);
        let want0 = (0.75 * 0.0 + 0.75 * 100.0 + 0.25 * 200.0) / 1.75 / 255.0;
        assert!((p.data[0] - want0 as f32).abs() < 1e-6, "{} vs {want0}", p.data[0]);
    }

    #[test]
    fn colour_ops_by_hand() {
        let mut p = Planar { width: 2, height: 1, data: vec![0.2, 0.8, 0.4, 0.6, 0.6, 0.1] };
        let mut b = p.clone();
        brightness(&mut b, 1.5);
        assert_eq!(b.data, vec![0.3, 1.0, 0.6, 0.90000004, 0.90000004, 0.15]);
        let mut g = p.clone();
        grayscale(&mut g);
        let l0 = 0.2989f32 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6;
        assert!((g.data[0] - l0).abs() < 1e-7 && g.data[2] == g.data[0] && g.data[4] == g.data[0]);
        let mut s = p.clone();
        solarize(&mut s);
        assert_eq!(s.data, vec![0.2, 1.0 - 0.8, 0.4, 1.0 - 0.6, 1.0 - 0.6, 0.1]);
        // Hue: pure red shifted by 1/3 is pure green, by -1/3 pure blue; a grey pixel is unchanged.
        let mut h = Planar { width: 2, height: 1, data: vec![1.0, 0.5, 0.0, 0.5, 0.0, 0.5] };
        hue(&mut h, 1.0 / 3.0);
        assert!((h.data[0] - 0.0).abs() < 1e-6 && (h.data[2] - 1.0).abs() < 1e-6 && h.data[4].abs() < 1e-6);
        assert_eq!((h.data[1], h.data[3], h.data[5]), (0.5, 0.5, 0.5));
        // Contrast 0 gives the mean grey everywhere.
        contrast(&mut p, 0.0);
        assert!(p.data.iter().all(|&v| (v - p.data[0]).abs() < 1e-7));
    }

    #[test]
    fn blur_keeps_constants_and_mass() {
        assert!((pil_box_radius(2.0, 3) - 1.375).abs() < 1e-12);
        let mut c = Planar { width: 7, height: 5, data: vec![0.3; 105] };
        gaussian_blur(&mut c, 1.7);
        assert!(c.data.iter().all(|&v| (v - 0.3).abs() < 1e-6));
        let mut d = Planar::zeros(15, 15);
        d.data[7 * 15 + 7] = 1.0;
        gaussian_blur(&mut d, 1.0);
        let total: f32 = d.data[..225].iter().sum();
        assert!((total - 1.0).abs() < 1e-5);
        // The blur of a point has (about) the requested variance along x.
        let var: f32 =
            (0..15).map(|x| (0..15).map(|y| d.data[y * 15 + x]).sum::<f32>() * ((x as f32 - 7.0).powi(2))).sum();
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }
}
