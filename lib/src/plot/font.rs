//! The embedded font: DejaVu Sans (a subset; see `font/PROVENANCE.md`), measured and rasterised with
//! `ab_glyph`. Text looks the same everywhere, fontconfig or not. Characters outside the subset
//! (Latin-1, Greek, arrows, a few maths signs) are drawn as `?`.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, ScaleFont};

static FONT_BYTES: &[u8] = include_bytes!("font/DejaVuSans-subset.ttf");

/// The CSS font family SVG output asks for: the embedded font's family first, then look-alikes.
pub const SVG_FAMILY: &str = "'DejaVu Sans', Verdana, 'Bitstream Vera Sans', Arial, sans-serif";

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    // The bytes are compiled in and checked by a unit test: failing to parse them is a build defect.
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).expect("the embedded DejaVu Sans parses"))
}

/// ab_glyph scales by ascent − descent; we speak em sizes, like CSS.
fn scale(size: f64) -> PxScale {
    let f = font();
    let upem = f.units_per_em().unwrap_or(2048.0);
    PxScale::from((size as f32) * f.height_unscaled() / upem)
}

fn glyph(f: &FontRef<'static>, ch: char) -> GlyphId {
    let id = f.glyph_id(ch);
    if id.0 == 0 && ch != '?' {
        f.glyph_id('?')
    } else {
        id
    }
}

/// The advance width of `text` at em size `size`, in pixels (kerning included).
pub fn text_width(text: &str, size: f64) -> f64 {
    let f = font();
    let sf = f.as_scaled(scale(size));
    let mut w = 0.0f32;
    let mut prev: Option<GlyphId> = None;
    for ch in text.chars() {
        let id = glyph(f, ch);
        if let Some(p) = prev {
            w += sf.kern(p, id);
        }
        w += sf.h_advance(id);
        prev = Some(id);
    }
    w as f64
}

/// Ascent above the baseline at em size `size`, in pixels (for vertical centring).
pub fn ascent(size: f64) -> f64 {
    let f = font();
    f.as_scaled(scale(size)).ascent() as f64
}

/// Rasterises `text` with its left end at `x` on baseline `y`, calling `put(px, py, coverage)` for each
/// touched pixel (coverage in (0, 1]).
pub fn rasterize(text: &str, x: f64, y: f64, size: f64, mut put: impl FnMut(i64, i64, f32)) {
    let f = font();
    let s = scale(size);
    let sf = f.as_scaled(s);
    let mut pen = x as f32;
    let mut prev: Option<GlyphId> = None;
    for ch in text.chars() {
        let id = glyph(f, ch);
        if let Some(p) = prev {
            pen += sf.kern(p, id);
        }
        let g = id.with_scale_and_position(s, point(pen, y as f32));
        if let Some(outline) = f.outline_glyph(g) {
            let b = outline.px_bounds();
            outline.draw(|gx, gy, c| {
                if c > 0.0 {
                    put(b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64, c.min(1.0));
                }
            });
        }
        pen += sf.h_advance(id);
        prev = Some(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_font_parses_and_measures() {
        let w = text_width("step", 20.0);
        assert!(w > 20.0 && w < 60.0, "{w}");
        assert!((text_width("abcabc", 10.0) - 2.0 * text_width("abc", 10.0)).abs() < 1.0);
        assert!((text_width("loss", 30.0) - 2.0 * text_width("loss", 15.0)).abs() < 0.5);
        assert!(ascent(20.0) > 14.0 && ascent(20.0) < 20.0);
    }

    #[test]
    fn symbols_and_unknown_characters_render() {
        for s in ["1/√K", "−0.5", "×", "α β", "漢"] {
            let mut n = 0;
            rasterize(s, 0.0, 20.0, 16.0, |_, _, _| n += 1);
            assert!(n > 10, "{s} drew {n} pixels");
        }
        // An unknown character is drawn as '?', so it takes room.
        assert!((text_width("漢", 16.0) - text_width("?", 16.0)).abs() < 1e-6);
    }
}
