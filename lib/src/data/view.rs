//! One view of one image: the parameters drawn for it ([`sample_view`]) and their application
//! ([`apply_view`]), kept apart so that each can be tested alone.

use image::RgbImage;

use crate::data::ops::{self, CropBox, Draw, Planar};
use crate::data::recipe::{Recipe, ViewRecipe};

/// The colour jitter drawn for a view: the order of the four adjustments (0 brightness, 1 contrast,
/// 2 saturation, 3 hue, like torchvision's `fn_idx`) and their factors (`None`: strength 0, skipped).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Jitter {
    pub order: [u8; 4],
    pub brightness: Option<f32>,
    pub contrast: Option<f32>,
    pub saturation: Option<f32>,
    pub hue: Option<f32>,
}

/// Everything random about one view.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ViewParams {
    pub crop: CropBox,
    pub flip: bool,
    pub jitter: Option<Jitter>,
    pub grey: bool,
    /// σ of the blur, when blurred.
    pub blur_sigma: Option<f64>,
    pub solarize: bool,
}

/// A jitter factor ~ U(max(0, 1 - s), 1 + s), or `None` for strength 0 (torchvision `_check_input`).
fn factor(s: f64, draw: &mut impl Draw) -> Option<f32> {
    (s > 0.0).then(|| {
        let lo = (1.0 - s).max(0.0);
        (lo + (1.0 + s - lo) * draw.uniform()) as f32
    })
}

/// Draws the parameters of one view of an image of `width` x `height`, in the order of the
/// official pipeline: crop, flip, jitter (apply?, order, factors), grey, blur (apply?, σ), solarize.
pub fn sample_view(v: &ViewRecipe, width: u32, height: u32, draw: &mut impl Draw) -> ViewParams {
    let crop = ops::rrc_box(width, height, v.crop_scale, v.crop_ratio, draw);
    let flip = draw.uniform() < v.flip_p;
    let jitter = (draw.uniform() < v.jitter_p).then(|| {
        let mut order = [0u8, 1, 2, 3];
        for i in (1..4).rev() {
            order.swap(i, draw.below(i as u64 + 1) as usize);
        }
        let brightness = factor(v.brightness, draw);
        let contrast = factor(v.contrast, draw);
        let saturation = factor(v.saturation, draw);
        let hue = (v.hue > 0.0).then(|| (-v.hue + 2.0 * v.hue * draw.uniform()) as f32);
        Jitter { order, brightness, contrast, saturation, hue }
    });
    let grey = draw.uniform() < v.grey_p;
    let blur_sigma =
        (draw.uniform() < v.blur_p).then(|| v.blur_sigma[0] + (v.blur_sigma[1] - v.blur_sigma[0]) * draw.uniform());
    let solarize = draw.uniform() < v.solarize_p;
    ViewParams { crop, flip, jitter, grey, blur_sigma, solarize }
}

/// Whether the CPU has AVX2: the view pipeline then runs a copy of itself compiled for it (the same
/// bits either way: see [`crate::data::ops`]).
#[inline]
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `$name`, which runs `$inner` (an `#[inline(always)]` function) compiled for AVX2 when the
/// CPU has it, else as built. Written out rather than with a closure: a closure body is a function
/// of its own that would not get the AVX2 code generation.
macro_rules! simd_dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident / $avx2:ident = $inner:ident ($($arg:ident : $ty:ty),*) $(-> $ret:ty)?) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn $avx2($($arg: $ty),*) $(-> $ret)? {
                    $inner($($arg),*)
                }
                if has_avx2() {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { $avx2($($arg),*) };
                }
            }
            $inner($($arg),*)
        }
    };
}

simd_dispatch! {
    /// The view before normalisation: [0, 1] values, `size` x `size`.
    pub fn render_view / render_view_avx2 = render_view_inner(src: &RgbImage, p: &ViewParams, size: u32) -> Planar
}

#[inline(always)]
fn render_view_inner(src: &RgbImage, p: &ViewParams, size: u32) -> Planar {
    let s = size as usize;
    let mut img = ops::resized_crop(src, p.crop, s, s, [0, 0, s, s]);
    if p.flip {
        ops::hflip(&mut img);
    }
    if let Some(j) = &p.jitter {
        // Plain `if let`s, not closures: everything here must inline into the AVX2 copy.
        for k in j.order {
            match (k, j.brightness, j.contrast, j.saturation, j.hue) {
                (0, Some(f), _, _, _) => ops::brightness(&mut img, f),
                (1, _, Some(f), _, _) => ops::contrast(&mut img, f),
                (2, _, _, Some(f), _) => ops::saturation(&mut img, f),
                (3, _, _, _, Some(f)) => ops::hue(&mut img, f),
                _ => {}
            }
        }
    }
    if p.grey {
        ops::grayscale(&mut img);
    }
    if let Some(sigma) = p.blur_sigma {
        ops::gaussian_blur(&mut img, sigma);
    }
    if p.solarize {
        ops::solarize(&mut img);
    }
    img
}

simd_dispatch! {
    /// Renders the view and writes it normalised into `out` (`3 * size * size` floats, CHW).
    pub fn apply_view / apply_view_avx2 = apply_view_inner(src: &RgbImage, p: &ViewParams, recipe: &Recipe, out: &mut [f32])
}

#[inline(always)]
fn apply_view_inner(src: &RgbImage, p: &ViewParams, recipe: &Recipe, out: &mut [f32]) {
    let img = render_view_inner(src, p, recipe.size);
    let (mean, std) = recipe.norm_f32();
    ops::normalize_into(&img, mean, std, out);
}

simd_dispatch! {
    /// The evaluation transform into `out`: resize the shorter side to `eval_resize`, centre-crop
    /// `eval_crop`, normalise (torchvision `Resize` → `CenterCrop` → `ToTensor` → `Normalize`).
    pub fn apply_eval / apply_eval_avx2 = apply_eval_inner(src: &RgbImage, recipe: &Recipe, out: &mut [f32])
}

#[inline(always)]
fn apply_eval_inner(src: &RgbImage, recipe: &Recipe, out: &mut [f32]) {
    let (rw, rh) = ops::resize_shorter(src.width(), src.height(), recipe.eval_resize);
    let c = recipe.eval_crop;
    let (top, left) = ops::center_crop_offsets(rw, rh, c);
    let full = CropBox { top: 0, left: 0, height: src.height(), width: src.width() };
    let img =
        ops::resized_crop(src, full, rw as usize, rh as usize, [left as usize, top as usize, c as usize, c as usize]);
    let (mean, std) = recipe.norm_f32();
    ops::normalize_into(&img, mean, std, out);
}
