//! Colours: [`Rgb`], the palette for runs, and colour maps for heat maps.

/// An opaque sRGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    pub const WHITE: Rgb = Rgb(255, 255, 255);
    pub const BLACK: Rgb = Rgb(0, 0, 0);

    /// From `0xRRGGBB`.
    pub const fn hex(v: u32) -> Rgb {
        Rgb((v >> 16) as u8, (v >> 8) as u8, v as u8)
    }

    /// `#rrggbb`, for SVG.
    pub fn to_hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }

    /// `self` moved towards `other` by `t` (0 = self, 1 = other), in sRGB.
    pub fn mix(self, other: Rgb, t: f64) -> Rgb {
        let t = t.clamp(0.0, 1.0);
        let m = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
        Rgb(m(self.0, other.0), m(self.1, other.1), m(self.2, other.2))
    }
}

/// Line colours for runs: the Okabe–Ito palette (readable for the common colour-vision deficiencies),
/// without its yellow, which vanishes on white.
pub const RUN_COLORS: [Rgb; 7] = [
    Rgb::hex(0x0072b2), // blue
    Rgb::hex(0xd55e00), // vermillion
    Rgb::hex(0x009e73), // bluish green
    Rgb::hex(0xcc79a7), // reddish purple
    Rgb::hex(0xe69f00), // orange
    Rgb::hex(0x56b4e9), // sky blue
    Rgb::hex(0x000000), // black
];

/// The colour of run `i`; after the palette runs out, darker shades of it (greys for black).
pub fn run_color(i: usize) -> Rgb {
    let base = RUN_COLORS[i % RUN_COLORS.len()];
    let round = i / RUN_COLORS.len();
    let toward = if base == Rgb::BLACK { Rgb::WHITE } else { Rgb::BLACK };
    base.mix(toward, (0.35 * round as f64).min(0.7))
}

/// A colour map: a function from [0, 1] to a colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colormap {
    /// Perceptually uniform dark violet → yellow (matplotlib's default map).
    Viridis,
    /// Black → white.
    Gray,
}

/// viridis sampled at 0, 0.1, ..., 1 (matplotlib's values); interpolated linearly in between.
const VIRIDIS: [u32; 11] =
    [0x440154, 0x482475, 0x414487, 0x355f8d, 0x2a788e, 0x21918c, 0x22a884, 0x44bf70, 0x7ad151, 0xbddf26, 0xfde725];

impl Colormap {
    /// The colour at `t`, clamped to [0, 1]; NaN maps to the low end.
    pub fn at(self, t: f64) -> Rgb {
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        match self {
            Colormap::Gray => {
                let v = (t * 255.0).round() as u8;
                Rgb(v, v, v)
            }
            Colormap::Viridis => {
                let pos = t * (VIRIDIS.len() - 1) as f64;
                let i = (pos.floor() as usize).min(VIRIDIS.len() - 2);
                Rgb::hex(VIRIDIS[i]).mix(Rgb::hex(VIRIDIS[i + 1]), pos - i as f64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_mix_ends() {
        let c = Rgb::hex(0x0072b2);
        assert_eq!(c, Rgb(0, 0x72, 0xb2));
        assert_eq!(c.to_hex(), "#0072b2");
        assert_eq!(c.mix(Rgb::WHITE, 0.0), c);
        assert_eq!(c.mix(Rgb::WHITE, 1.0), Rgb::WHITE);
    }

    #[test]
    fn run_colors_are_distinct_for_many_runs() {
        let cs: Vec<Rgb> = (0..14).map(run_color).collect();
        for i in 0..cs.len() {
            for j in 0..i {
                assert_ne!(cs[i], cs[j], "runs {i} and {j}");
            }
        }
    }

    #[test]
    fn viridis_ends_and_monotone_lightness() {
        assert_eq!(Colormap::Viridis.at(0.0), Rgb::hex(0x440154));
        assert_eq!(Colormap::Viridis.at(1.0), Rgb::hex(0xfde725));
        assert_eq!(Colormap::Viridis.at(2.0), Rgb::hex(0xfde725));
        assert_eq!(Colormap::Viridis.at(f64::NAN), Rgb::hex(0x440154));
        let luma = |c: Rgb| 0.2126 * c.0 as f64 + 0.7152 * c.1 as f64 + 0.0722 * c.2 as f64;
        let mut last = -1.0;
        for i in 0..=50 {
            let l = luma(Colormap::Viridis.at(i as f64 / 50.0));
            assert!(l > last - 0.5, "lightness falls at {i}");
            last = l;
        }
        assert_eq!(Colormap::Gray.at(0.5), Rgb(128, 128, 128));
    }
}
