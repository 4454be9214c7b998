//! Pictures of class activation maps: the photo with the map blended over it in viridis, a
//! scale, and the class and probability written in the image with a small built-in bitmap font
//! (no font file is needed); and the raw map as `.npy`.

use image::{Rgb, RgbImage};

use crate::cam::{Cam, Map};

/// viridis (matplotlib's default colormap, perceptually uniform, readable in grey and by most
/// colour-blind viewers) at ten evenly spaced stops, 0 to 1: the ten-colour palette of
/// viridisLite. Between stops the colour is interpolated linearly.
const VIRIDIS: [[u8; 3]; 10] = [
    [0x44, 0x01, 0x54],
    [0x48, 0x28, 0x78],
    [0x3e, 0x4a, 0x89],
    [0x31, 0x68, 0x8e],
    [0x26, 0x82, 0x8e],
    [0x1f, 0x9e, 0x89],
    [0x35, 0xb7, 0x79],
    [0x6d, 0xcd, 0x59],
    [0xb4, 0xde, 0x2c],
    [0xfd, 0xe7, 0x25],
];

/// The viridis colour of `t` in `[0, 1]` (clamped).
pub fn viridis(t: f32) -> [u8; 3] {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (VIRIDIS.len() - 1) as f32;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f32;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    std::array::from_fn(|c| (a[c] as f32 + (b[c] as f32 - a[c] as f32) * f).round() as u8)
}

/// A 5×7 bitmap glyph: seven rows, the five low bits of each, most significant bit leftmost.
/// Letters are upper case only; lower case is drawn upper case.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        ' ' => [0; 7],
        '0' => [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
        '1' => [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
        '2' => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
        '3' => [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
        '4' => [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
        '5' => [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
        '6' => [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
        '7' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
        '9' => [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
        'A' => [0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'B' => [0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e],
        'C' => [0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e],
        'D' => [0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c],
        'E' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f],
        'F' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10],
        'G' => [0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f],
        'H' => [0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'I' => [0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f],
        'M' => [0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'P' => [0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10],
        'Q' => [0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d],
        'R' => [0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11],
        'S' => [0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e],
        'T' => [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a],
        'X' => [0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0a, 0x04, 0x04, 0x04],
        'Z' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0c, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00],
        '\'' => [0x0c, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        ':' => [0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f],
        '+' => [0x00, 0x04, 0x04, 0x1f, 0x04, 0x04, 0x00],
        '=' => [0x00, 0x00, 0x1f, 0x00, 0x1f, 0x00, 0x00],
        '!' => [0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04],
        '&' => [0x0c, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0d],
        // Anything else (accents, symbols) as a question mark.
        _ => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
    }
}

/// Width in pixels of `text` drawn at `scale` (6 columns per character, the last one blank).
fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * 6 * scale
}

/// Draws `text` with its top-left corner at `(x, y)`, clipped to the image.
fn draw_text(img: &mut RgbImage, text: &str, x: u32, y: u32, scale: u32, color: [u8; 3]) {
    for (i, c) in text.chars().enumerate() {
        let gx = x + i as u32 * 6 * scale;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..5u32 {
                if bits & (0x10 >> col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (gx + col * scale + dx, y + row as u32 * scale + dy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, Rgb(color));
                        }
                    }
                }
            }
        }
    }
}

/// `text` cut to at most `max` pixels wide at `scale`, with `..` where it was cut.
fn fit(text: &str, max: u32, scale: u32) -> String {
    if text_width(text, scale) <= max {
        return text.to_string();
    }
    let keep = (max / (6 * scale)).saturating_sub(2) as usize;
    format!("{}..", text.chars().take(keep).collect::<String>())
}

/// How strongly the heat colours the photo.
const ALPHA: f32 = 0.5;

/// The photo with `cam`'s map on it blended in viridis (dark purple: the lowest value on this
/// photo, yellow: the highest), and a banner below with the class, its probability and rank,
/// and the colour scale with the map's range. The picture is at least 320 and at most 1024
/// pixels on its long side (the photo is resized with Pillow's bilinear filter to fit); photo
/// pixels the centre crop cut off are dimmed and uncoloured, since the network never saw them.
pub fn render(photo: &RgbImage, cam: &Cam) -> RgbImage {
    let (pw, ph) = photo.dimensions();
    let long = pw.max(ph).max(1) as f64;
    let k = if long < 320.0 {
        320.0 / long
    } else if long > 1024.0 {
        1024.0 / long
    } else {
        1.0
    };
    let dw = ((pw as f64 * k).round() as u32).max(1);
    let dh = ((ph as f64 * k).round() as u32).max(1);
    let shown = if (dw, dh) == (pw, ph) {
        photo.clone()
    } else {
        kiln_preprocess::pil::resample(photo, dw, dh, kiln_preprocess::pil::Filter::Bilinear)
    };
    let map: &Map = &cam.photo;
    let (lo, hi) = map.range();
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut any_outside = false;

    let scale = (dw / 320).clamp(1, 3) * 2;
    let margin = 4 * scale;
    let line = 7 * scale;
    let bar_h = 5 * scale;
    let banner = margin + line + margin + bar_h + margin / 2 + line + margin + line + margin;
    let mut out = RgbImage::from_pixel(dw.max(320), dh + banner, Rgb([24, 24, 24]));
    let x_off = (out.width() - dw) / 2;
    for y in 0..dh {
        let v = (((y as f64 + 0.5) / k) as usize).min(map.h - 1);
        for x in 0..dw {
            let u = (((x as f64 + 0.5) / k) as usize).min(map.w - 1);
            let p = shown.get_pixel(x, y).0;
            let m = map.at(v, u);
            let px = if m.is_nan() {
                any_outside = true;
                p.map(|c| (c as f32 * 0.5) as u8)
            } else {
                let h = viridis((m - lo) / span);
                std::array::from_fn(|c| {
                    (p[c] as f32 * (1.0 - ALPHA) + h[c] as f32 * ALPHA).round() as u8
                })
            };
            out.put_pixel(x + x_off, y, Rgb(px));
        }
    }

    let white = [240, 240, 240];
    let grey = [170, 170, 170];
    let width = out.width();
    let text_max = width - 2 * margin;
    let mut y = dh + margin;
    let title = format!(
        "{} {:.1}% (class {}, top-{})",
        cam.class.label,
        cam.class.prob * 100.0,
        cam.class.index,
        cam.rank
    );
    draw_text(
        &mut out,
        &fit(&title, text_max, scale),
        margin,
        y,
        scale,
        white,
    );
    y += line + margin;
    let bar_w = width - 2 * margin;
    for x in 0..bar_w {
        let c = viridis(x as f32 / (bar_w - 1).max(1) as f32);
        for dy in 0..bar_h {
            out.put_pixel(margin + x, y + dy, Rgb(c));
        }
    }
    y += bar_h + margin / 2;
    let small = (scale / 2).max(1);
    let left = format!("low {lo:.1}");
    let right = format!("high {hi:.1}");
    draw_text(&mut out, &left, margin, y, small, grey);
    let rx = width.saturating_sub(margin + text_width(&right, small));
    draw_text(&mut out, &right, rx, y, small, grey);
    let mid = "class activation";
    let mx = (width.saturating_sub(text_width(mid, small))) / 2;
    if mx > margin + text_width(&left, small) && mx + text_width(mid, small) < rx {
        draw_text(&mut out, mid, mx, y, small, grey);
    }
    y += 7 * small + margin;
    if any_outside {
        let note = "dimmed: cut off by the centre crop, not seen";
        draw_text(
            &mut out,
            &fit(note, text_max, small),
            margin,
            y,
            small,
            grey,
        );
    }
    out
}

/// `map` as a NumPy `.npy` file (format 1.0, little-endian float32, shape `(h, w)`, C order);
/// `np.load` reads it.
pub fn npy_bytes(map: &Map) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        map.h, map.w
    );
    // The magic, version and length take 10 bytes; the header ends in a newline and pads the
    // whole preamble to a multiple of 64.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    while 10 + header.len() + 1 < total {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(total + map.data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &map.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_ends_and_stops() {
        assert_eq!(viridis(0.0), [0x44, 0x01, 0x54]);
        assert_eq!(viridis(1.0), [0xfd, 0xe7, 0x25]);
        assert_eq!(viridis(5.0 / 9.0), [0x1f, 0x9e, 0x89]);
        assert_eq!(viridis(f32::NAN), viridis(0.0));
        // Lightness rises monotonically, as a perceptually uniform map's must.
        let luma = |c: [u8; 3]| 0.2126 * c[0] as f32 + 0.7152 * c[1] as f32 + 0.0722 * c[2] as f32;
        let mut prev = -1.0;
        for i in 0..=100 {
            let l = luma(viridis(i as f32 / 100.0));
            assert!(l > prev, "luma falls at {i}");
            prev = l;
        }
    }

    #[test]
    fn npy_header_is_aligned() {
        let m = Map {
            h: 7,
            w: 5,
            data: (0..35).map(|i| i as f32).collect(),
        };
        let b = npy_bytes(&m);
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        assert_eq!(b[10 + hl - 1], b'\n');
        assert!(std::str::from_utf8(&b[10..10 + hl])
            .unwrap()
            .contains("'shape': (7, 5)"));
        assert_eq!(b.len(), 10 + hl + 35 * 4);
    }

    #[test]
    fn every_printable_ascii_has_a_glyph_or_the_fallback() {
        let fallback = glyph('\u{00e9}');
        for c in ('a'..='z').chain('0'..='9') {
            assert_ne!(glyph(c), fallback, "{c}");
        }
        assert_eq!(glyph('a'), glyph('A'));
    }
}
