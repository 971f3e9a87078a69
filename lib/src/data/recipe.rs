//! Augmentation recipes: named presets of the two-view pipelines of the paper and its baselines,
//! each parameter overridable by name (`--set blur_p2=0.0`), serialisable to JSON for the metadata of
//! every output.
//!
//! Each view runs, in this order (shared reference section 4, `data/transforms.py`):
//! RandomResizedCrop → horizontal flip → ColorJitter (with probability `jitter_p`, the four
//! adjustments in a random order) → RandomGrayscale → Gaussian blur → Solarize → to-tensor + normalise.
//!
//! | preset | size | crop scale | jitter b/c/s/h (p) | grey p | blur p v1/v2 | solarize p v1/v2 |
//! |---|---|---|---|---|---|---|
//! | `lewel-b` (official LEWEL_B, BYOL-style) | 224 | 0.2–1 | 0.4/0.4/0.2/0.1 (0.8) | 0.2 | 1.0/0.1 | 0.0/0.2 |
//! | `byol` | 224 | 0.08–1 | 0.4/0.4/0.2/0.1 (0.8) | 0.2 | 1.0/0.1 | 0.0/0.2 |
//! | `mocov2` (LEWEL_M, "same as MoCo v2") | 224 | 0.2–1 | 0.4/0.4/0.4/0.1 (0.8) | 0.2 | 0.5/0.5 | 0/0 |
//! | `lewel-b-small`, `byol-small`, `mocov2-small` | 32 | as above | as above | 0.2 | 0/0 | as above |
//!
//! The `-small` presets are for CIFAR/MNIST-sized images (32 px): the blur is off, as in the usual
//! CIFAR set-ups of BYOL/MoCo reimplementations (a σ of 0.1–2 px blur on a 32 px image erases it), and
//! the evaluation transform is a plain resize to 32 (`eval_resize = eval_crop = 32`).

use serde::{Deserialize, Serialize};

use crate::LewelError;

/// The ImageNet channel means (RGB, on [0, 1] values).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// The ImageNet channel standard deviations.
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// The names of the presets, for help texts and errors.
pub const PRESETS: [&str; 6] = ["lewel-b", "byol", "mocov2", "lewel-b-small", "byol-small", "mocov2-small"];

/// The parameters of one view's pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewRecipe {
    /// RandomResizedCrop area fraction range (torchvision `scale`); reference 0.2–1 (BYOL: 0.08–1).
    pub crop_scale: [f64; 2],
    /// RandomResizedCrop aspect-ratio range, sampled log-uniformly (torchvision `ratio`); 3/4–4/3.
    pub crop_ratio: [f64; 2],
    /// Probability of a horizontal flip; 0.5.
    pub flip_p: f64,
    /// Probability of applying the colour jitter at all (`RandomApply`); 0.8.
    pub jitter_p: f64,
    /// Brightness strength b: factor ~ U(max(0, 1-b), 1+b); 0.4.
    pub brightness: f64,
    /// Contrast strength c: factor ~ U(max(0, 1-c), 1+c); 0.4.
    pub contrast: f64,
    /// Saturation strength s: factor ~ U(max(0, 1-s), 1+s); 0.2 (MoCo v2: 0.4).
    pub saturation: f64,
    /// Hue strength h (at most 0.5): shift ~ U(-h, h) of the hue circle; 0.1.
    pub hue: f64,
    /// Probability of converting to grey (3 equal channels); 0.2.
    pub grey_p: f64,
    /// Probability of the Gaussian blur; view 1: 1.0, view 2: 0.1 (MoCo v2: 0.5 both).
    pub blur_p: f64,
    /// Range of the blur's σ in pixels of the output view, drawn uniformly; 0.1–2.0.
    pub blur_sigma: [f64; 2],
    /// Probability of solarising (v ≥ 128/255 → 1 − v); view 1: 0.0, view 2: 0.2.
    pub solarize_p: f64,
}

/// A complete, resolved recipe: both views plus output size, normalisation and the evaluation transform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// The preset this recipe started from.
    pub name: String,
    /// Side of the square views in pixels; 224 (the `-small` presets: 32).
    pub size: u32,
    /// The two views' pipelines.
    pub view1: ViewRecipe,
    pub view2: ViewRecipe,
    /// Normalisation mean and std per RGB channel (ImageNet's).
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// Evaluation transform: resize the shorter side to this, then centre-crop `eval_crop`; 256.
    pub eval_resize: u32,
    /// Evaluation centre-crop side; 224.
    pub eval_crop: u32,
}

fn byol_view(blur_p: f64, solarize_p: f64) -> ViewRecipe {
    ViewRecipe {
        crop_scale: [0.08, 1.0],
        crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
        flip_p: 0.5,
        jitter_p: 0.8,
        brightness: 0.4,
        contrast: 0.4,
        saturation: 0.2,
        hue: 0.1,
        grey_p: 0.2,
        blur_p,
        blur_sigma: [0.1, 2.0],
        solarize_p,
    }
}

impl Recipe {
    /// The named preset (see the module docs). An unknown name is a usage error listing the presets.
    pub fn preset(name: &str) -> anyhow::Result<Recipe> {
        let (base, small) = match name.strip_suffix("-small") {
            Some(b) => (b, true),
            None => (name, false),
        };
        let (mut v1, mut v2) = match base {
            "lewel-b" | "byol" => (byol_view(1.0, 0.0), byol_view(0.1, 0.2)),
            "mocov2" => {
                let v = ViewRecipe { saturation: 0.4, blur_p: 0.5, solarize_p: 0.0, ..byol_view(0.5, 0.0) };
                (v.clone(), v)
            }
            _ => {
                return Err(
                    LewelError::Usage(format!("unknown recipe {name:?}; choose one of {}", PRESETS.join(", "))).into()
                )
            }
        };
        if base != "byol" {
            // NOTE(ref): LEWEL_B's official crop scale is (0.2, 1.0), not BYOL's (0.08, 1.0).
            v1.crop_scale = [0.2, 1.0];
            v2.crop_scale = [0.2, 1.0];
        }
        if small {
            v1.blur_p = 0.0;
            v2.blur_p = 0.0;
        }
        let (size, eval_resize, eval_crop) = if small { (32, 32, 32) } else { (224, 256, 224) };
        Ok(Recipe {
            name: name.to_string(),
            size,
            view1: v1,
            view2: v2,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            eval_resize,
            eval_crop,
        })
    }

    /// Side of the square views in pixels.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The normalisation (mean, std) as the f32 the pixel code uses.
    pub fn norm_f32(&self) -> ([f32; 3], [f32; 3]) {
        (self.mean.map(|m| m as f32), self.std.map(|s| s as f32))
    }

    /// The recipe as a JSON object (for `start` events and sidecars).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a recipe always serialises")
    }

    /// Sets one parameter from text: `KEY=VALUE` as given to `--set`. Per-view keys without a suffix
    /// set both views; with `1` or `2` (`blur_p2=0.0`) one view. Ranges are two numbers separated by a
    /// comma (`crop_scale=0.08,1`), `jitter=b,c,s,h` sets the four strengths. `size=S` also sets
    /// `eval_crop=S` and scales `eval_resize` by the same factor (256/224 stays 8/7).
    /// An unknown key or a bad value is a usage error that lists the keys.
    pub fn set(&mut self, assignment: &str) -> anyhow::Result<()> {
        let (key, value) = assignment.split_once('=').ok_or_else(|| {
            LewelError::Usage(format!("--set expects KEY=VALUE, got {assignment:?}; keys: {}", KEYS_HELP))
        })?;
        let (key, value) = (key.trim(), value.trim());
        let bad = |what: &str| -> anyhow::Error { LewelError::Usage(format!("--set {key}={value}: {what}")).into() };
        match key {
            "size" => {
                let s: u32 = parse_num(value).map_err(|e| bad(&e))?;
                if s == 0 {
                    return Err(bad("the size must be at least 1 pixel"));
                }
                let ratio = self.eval_resize as f64 / self.eval_crop.max(1) as f64;
                self.size = s;
                self.eval_crop = s;
                self.eval_resize = ((s as f64) * ratio).round() as u32;
                return Ok(());
            }
            "eval_resize" => self.eval_resize = parse_num(value).map_err(|e| bad(&e))?,
            "eval_crop" => self.eval_crop = parse_num(value).map_err(|e| bad(&e))?,
            "mean" => self.mean = parse_triple(value).map_err(|e| bad(&e))?,
            "std" => self.std = parse_triple(value).map_err(|e| bad(&e))?,
            _ => {
                let (base, views): (&str, &[u8]) = match key.as_bytes().last() {
                    Some(b'1') => (&key[..key.len() - 1], &[1]),
                    Some(b'2') => (&key[..key.len() - 1], &[2]),
                    _ => (key, &[1, 2]),
                };
                for &v in views {
                    let view = if v == 1 { &mut self.view1 } else { &mut self.view2 };
                    set_view_key(view, base, value).map_err(|e| match e {
                        SetError::UnknownKey => {
                            LewelError::Usage(format!("--set: unknown recipe parameter {key:?}; keys: {KEYS_HELP}"))
                                .into()
                        }
                        SetError::Bad(msg) => bad(&msg),
                    })?;
                }
            }
        }
        self.validate()
    }

    /// Checks every parameter's range; a bad one is a usage error naming it.
    pub fn validate(&self) -> anyhow::Result<()> {
        let usage = |m: String| -> anyhow::Result<()> { Err(LewelError::Usage(m).into()) };
        if self.size == 0 || self.eval_crop == 0 || self.eval_resize == 0 {
            return usage("size, eval_resize and eval_crop must be at least 1 pixel".into());
        }
        if self.eval_crop > self.eval_resize {
            return usage(format!(
                "eval_crop ({}) is larger than eval_resize ({}); the centre crop must fit in the resized image",
                self.eval_crop, self.eval_resize
            ));
        }
        if self.std.iter().any(|&s| s <= 0.0 || !s.is_finite()) || self.mean.iter().any(|m| !m.is_finite()) {
            return usage("std must be positive and mean finite".into());
        }
        for (n, v) in [(1, &self.view1), (2, &self.view2)] {
            let p = [
                ("flip_p", v.flip_p),
                ("jitter_p", v.jitter_p),
                ("grey_p", v.grey_p),
                ("blur_p", v.blur_p),
                ("solarize_p", v.solarize_p),
            ];
            for (k, x) in p {
                if !(0.0..=1.0).contains(&x) {
                    return usage(format!("{k}{n} = {x} is not a probability in [0, 1]"));
                }
            }
            let [s0, s1] = v.crop_scale;
            if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
                return usage(format!("crop_scale{n} = {s0},{s1}: need 0 < min <= max <= 1"));
            }
            let [r0, r1] = v.crop_ratio;
            if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
                return usage(format!("crop_ratio{n} = {r0},{r1}: need 0 < min <= max"));
            }
            for (k, x) in [("brightness", v.brightness), ("contrast", v.contrast), ("saturation", v.saturation)] {
                if !(x >= 0.0 && x.is_finite()) {
                    return usage(format!("{k}{n} = {x}: need a strength >= 0"));
                }
            }
            if !(0.0..=0.5).contains(&v.hue) {
                return usage(format!("hue{n} = {}: need 0 <= hue <= 0.5", v.hue));
            }
            let [b0, b1] = v.blur_sigma;
            if !(b0 > 0.0 && b0 <= b1 && b1.is_finite()) {
                return usage(format!("blur_sigma{n} = {b0},{b1}: need 0 < min <= max"));
            }
        }
        Ok(())
    }
}

/// The keys `--set` knows, for error messages and help.
pub const KEYS_HELP: &str =
    "size, eval_resize, eval_crop, mean=r,g,b, std=r,g,b, and per view (suffix 1 or 2 for one view, \
none for both): crop_scale=min,max, crop_ratio=min,max, flip_p, jitter_p, jitter=b,c,s,h, brightness, contrast, \
saturation, hue, grey_p, blur_p, blur_sigma=min,max, solarize_p";

enum SetError {
    UnknownKey,
    Bad(String),
}

fn set_view_key(v: &mut ViewRecipe, key: &str, value: &str) -> Result<(), SetError> {
    let num = |s: &str| parse_num::<f64>(s).map_err(SetError::Bad);
    let pair = |s: &str| -> Result<[f64; 2], SetError> {
        let p: Vec<&str> = s.split(',').collect();
        match p.as_slice() {
            [a, b] => Ok([parse_num(a).map_err(SetError::Bad)?, parse_num(b).map_err(SetError::Bad)?]),
            _ => Err(SetError::Bad(format!("expected two numbers min,max, got {s:?}"))),
        }
    };
    match key {
        "crop_scale" => v.crop_scale = pair(value)?,
        "crop_ratio" => v.crop_ratio = pair(value)?,
        "flip_p" => v.flip_p = num(value)?,
        "jitter_p" => v.jitter_p = num(value)?,
        "brightness" => v.brightness = num(value)?,
        "contrast" => v.contrast = num(value)?,
        "saturation" => v.saturation = num(value)?,
        "hue" => v.hue = num(value)?,
        "jitter" => {
            let p: Vec<&str> = value.split(',').collect();
            if p.len() != 4 {
                return Err(SetError::Bad(format!("expected four numbers b,c,s,h, got {value:?}")));
            }
            v.brightness = num(p[0])?;
            v.contrast = num(p[1])?;
            v.saturation = num(p[2])?;
            v.hue = num(p[3])?;
        }
        "grey_p" | "gray_p" => v.grey_p = num(value)?,
        "blur_p" => v.blur_p = num(value)?,
        "blur_sigma" => v.blur_sigma = pair(value)?,
        "solarize_p" => v.solarize_p = num(value)?,
        _ => return Err(SetError::UnknownKey),
    }
    Ok(())
}

fn parse_num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim().parse::<T>().map_err(|_| format!("{s:?} is not a valid number here"))
}

fn parse_triple(s: &str) -> Result<[f64; 3], String> {
    let p: Vec<&str> = s.split(',').collect();
    if p.len() != 3 {
        return Err(format!("expected three numbers r,g,b, got {s:?}"));
    }
    Ok([parse_num(p[0])?, parse_num(p[1])?, parse_num(p[2])?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_reference() {
        let r = Recipe::preset("lewel-b").unwrap();
        assert_eq!(r.size(), 224);
        assert_eq!(r.view1.crop_scale, [0.2, 1.0]);
        assert_eq!((r.view1.blur_p, r.view2.blur_p), (1.0, 0.1));
        assert_eq!((r.view1.solarize_p, r.view2.solarize_p), (0.0, 0.2));
        assert_eq!((r.view1.brightness, r.view1.contrast, r.view1.saturation, r.view1.hue), (0.4, 0.4, 0.2, 0.1));
        assert_eq!((r.eval_resize, r.eval_crop), (256, 224));
        let m = Recipe::preset("mocov2").unwrap();
        assert_eq!(m.view1, m.view2);
        assert_eq!((m.view1.saturation, m.view1.blur_p, m.view1.solarize_p), (0.4, 0.5, 0.0));
        assert_eq!(Recipe::preset("byol").unwrap().view1.crop_scale, [0.08, 1.0]);
        let s = Recipe::preset("byol-small").unwrap();
        assert_eq!((s.size, s.view1.blur_p, s.view2.solarize_p, s.view1.crop_scale[0]), (32, 0.0, 0.2, 0.08));
        for p in PRESETS {
            Recipe::preset(p).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn set_overrides_one_or_both_views() {
        let mut r = Recipe::preset("lewel-b").unwrap();
        r.set("blur_p2=0.0").unwrap();
        assert_eq!((r.view1.blur_p, r.view2.blur_p), (1.0, 0.0));
        r.set("crop_scale=0.08,1").unwrap();
        assert_eq!(r.view2.crop_scale, [0.08, 1.0]);
        r.set("jitter1=0.1,0.2,0.3,0.05").unwrap();
        assert_eq!((r.view1.saturation, r.view2.saturation), (0.3, 0.2));
        r.set("size=112").unwrap();
        assert_eq!((r.size, r.eval_crop, r.eval_resize), (112, 112, 128));
        let json = serde_json::to_string(&r).unwrap();
        let back: Recipe = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn bad_keys_and_values_are_usage_errors() {
        let mut r = Recipe::preset("lewel-b").unwrap();
        for bad in ["nonsense=1", "blur_p=2", "crop_scale=0.5", "hue=0.7", "size=0", "blur_p", "flip_p=abc"] {
            let e = r.clone().set(bad).unwrap_err();
            assert!(matches!(e.downcast_ref::<LewelError>(), Some(LewelError::Usage(_))), "{bad}: {e}");
        }
        let e = r.set("nonsense=1").unwrap_err().to_string();
        assert!(e.contains("unknown recipe parameter") && e.contains("blur_p"), "{e}");
        let e = Recipe::preset("simclr").unwrap_err().to_string();
        assert!(e.contains("lewel-b") && e.contains("mocov2"), "{e}");
    }
}
