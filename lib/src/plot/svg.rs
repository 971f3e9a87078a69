//! The SVG backend: the same drawing calls written as SVG elements. Text stays text (searchable,
//! sharp at any zoom); it asks for DejaVu Sans, the font the layout was measured with.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::canvas::{Canvas, HAlign, Rect, Stroke, TextStyle};
use super::color::Rgb;
use super::font;

/// An SVG document being drawn.
pub struct Svg {
    w: u32,
    h: u32,
    clips: Vec<Rect>,
    body: String,
}

/// A number as SVG wants it: at most two decimals, no trailing zeros.
fn num(v: f64) -> String {
    let s = format!("{:.2}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Escapes text for XML content and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

impl Svg {
    /// An empty `w × h` document.
    pub fn new(w: u32, h: u32) -> Svg {
        Svg { w, h, clips: Vec::new(), body: String::new() }
    }

    /// The clip-path attribute for `r` (a path defined once per distinct rectangle), or nothing
    /// when `r` covers the whole picture.
    fn clip_attr(&mut self, r: Rect) -> String {
        if r.x <= 0.0 && r.y <= 0.0 && r.right() >= self.w as f64 && r.bottom() >= self.h as f64 {
            return String::new();
        }
        let i = match self.clips.iter().position(|c| *c == r) {
            Some(i) => i,
            None => {
                self.clips.push(r);
                self.clips.len() - 1
            }
        };
        format!(r#" clip-path="url(#clip{i})""#)
    }

    /// The whole document.
    pub fn finish(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{f}">"#,
            w = self.w,
            h = self.h,
            f = escape(font::SVG_FAMILY)
        );
        if !self.clips.is_empty() {
            s.push_str("<defs>\n");
            for (i, r) in self.clips.iter().enumerate() {
                let _ = writeln!(
                    s,
                    r#"<clipPath id="clip{i}"><rect x="{}" y="{}" width="{}" height="{}"/></clipPath>"#,
                    num(r.x),
                    num(r.y),
                    num(r.w),
                    num(r.h)
                );
            }
            s.push_str("</defs>\n");
        }
        s.push_str(&self.body);
        s.push_str("</svg>\n");
        s
    }

    /// Writes the document atomically (see [`crate::fsio::write_atomic`]).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::fsio::write_bytes_atomic(path, self.finish().as_bytes())
    }
}

impl Canvas for Svg {
    fn size(&self) -> (u32, u32) {
        (self.w, self.h)
    }

    fn fill_rect(&mut self, r: Rect, color: Rgb) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>"#,
            num(r.x),
            num(r.y),
            num(r.w),
            num(r.h),
            color.to_hex()
        );
    }

    fn polyline(&mut self, points: &[(f64, f64)], stroke: &Stroke, clip: Rect) {
        let pts: Vec<String> = points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|p| format!("{},{}", num(p.0), num(p.1)))
            .collect();
        if pts.is_empty() {
            return;
        }
        let clip = self.clip_attr(clip);
        let mut attrs = format!(
            r#"fill="none" stroke="{}" stroke-width="{}" stroke-linejoin="round" stroke-linecap="round""#,
            stroke.color.to_hex(),
            num(stroke.width)
        );
        if stroke.opacity < 1.0 {
            let _ = write!(attrs, r#" stroke-opacity="{}""#, num(stroke.opacity));
        }
        if let Some((on, off)) = stroke.dash {
            let _ = write!(attrs, r#" stroke-dasharray="{} {}""#, num(on), num(off));
            attrs = attrs.replace(r#"stroke-linecap="round""#, r#"stroke-linecap="butt""#);
        }
        let _ = writeln!(self.body, r#"<polyline{clip} {attrs} points="{}"/>"#, pts.join(" "));
    }

    fn dot(&mut self, center: (f64, f64), radius: f64, color: Rgb, clip: Rect) {
        let clip = self.clip_attr(clip);
        let _ = writeln!(
            self.body,
            r#"<circle{clip} cx="{}" cy="{}" r="{}" fill="{}"/>"#,
            num(center.0),
            num(center.1),
            num(radius),
            color.to_hex()
        );
    }

    fn text(&mut self, at: (f64, f64), text: &str, style: &TextStyle) {
        let anchor = match style.align {
            HAlign::Left => "start",
            HAlign::Center => "middle",
            HAlign::Right => "end",
        };
        let _ = writeln!(
            self.body,
            r#"<text x="{}" y="{}" font-size="{}" fill="{}" text-anchor="{anchor}">{}</text>"#,
            num(at.0),
            num(at.1),
            num(style.size),
            style.color.to_hex(),
            escape(text)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_has_elements_clips_and_escaped_text() {
        let mut s = Svg::new(200, 100);
        s.fill_rect(Rect::new(0.0, 0.0, 200.0, 100.0), Rgb::WHITE);
        let clip = Rect::new(10.0, 10.0, 100.0, 50.0);
        s.polyline(&[(10.0, 10.0), (50.5, 20.25)], &Stroke::solid(Rgb::BLACK, 2.0), clip);
        s.polyline(
            &[(10.0, 10.0), (50.0, 20.0)],
            &Stroke { dash: Some((6.0, 4.0)), ..Stroke::solid(Rgb::BLACK, 2.0) },
            clip,
        );
        s.text((5.0, 5.0), "a < b & \"c\"", &TextStyle { size: 12.0, color: Rgb::BLACK, align: HAlign::Right });
        let doc = s.finish();
        assert!(doc.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"200\" height=\"100\""));
        assert!(doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<clipPath").count(), 1, "one clip per distinct rectangle");
        let mut s = Svg::new(200, 100);
        s.polyline(&[(0.0, 0.0), (1.0, 1.0)], &Stroke::solid(Rgb::BLACK, 1.0), Rect::new(0.0, 0.0, 200.0, 100.0));
        assert!(!s.finish().contains("clip"), "a clip covering the picture is left out");
        assert!(doc.contains("points=\"10,10 50.5,20.25\""), "{doc}");
        assert!(doc.contains("stroke-dasharray=\"6 4\""));
        assert!(doc.contains(">a &lt; b &amp; &quot;c&quot;</text>"));
        assert!(doc.contains("text-anchor=\"end\""));
        assert_eq!(num(-0.001), "0");
        assert_eq!(num(3.0), "3");
    }
}
