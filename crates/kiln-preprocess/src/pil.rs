//! Pillow's resampling, reproduced bit for bit.
//!
//! torchvision resizes PIL images with `Image.resize`, whose C code (`Resample.c`) computes
//! filter weights in double precision, rounds them to 22-bit fixed point, runs one pass per axis
//! with 8-bit rounding in between, and widens the filter by the downscale factor (antialiasing).
//! Training data went through exactly this, so we do the same arithmetic: a generic resampler
//! that differs by a few levels at high-contrast edges (seen with bicubic) shifts what the
//! network sees.
//!
//! Two details decide bit-exactness beyond the weights themselves:
//! - **The order of the passes.** Pillow 13 runs the vertical pass first when the height shrinks
//!   by more than twice as many pixels as the width does (`ih - oh > 2 (iw - ow)`, with
//!   `oh < ih`), the horizontal pass first otherwise. The intermediate is rounded to 8 bits, so
//!   the order changes the output by up to a few levels whenever the two axes scale differently
//!   (a squash such as 296×500 → 224×224 is affected; a shorter-side resize, where both axes
//!   scale alike, is not). The rule was found by running both orders against Pillow 13.0.0 on
//!   real photos and is proven by `tests/resize_pillow.rs` on thousands of sizes.
//! - **Nearest neighbour** is not a convolution in Pillow: `Image.resize(…, NEAREST)` is an
//!   affine transform whose source coordinates are accumulated in double precision
//!   (`ImagingScaleAffine`), so it is reproduced with the same accumulation.

use image::RgbImage;

/// Fixed-point precision of Pillow's 8-bit path: `32 - 8 - 2`.
const PRECISION_BITS: u32 = 22;

/// Pillow's convolution filters (`Image.Resampling`, NEAREST excepted: see [`nearest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Box, support 0.5 (`Image.BOX`).
    Box,
    /// Triangle, support 1.
    Bilinear,
    /// Hamming-windowed sinc, support 1 (`Image.HAMMING`).
    Hamming,
    /// Keys cubic with a = -0.5, support 2.
    Bicubic,
    /// Lanczos, three lobes, support 3.
    Lanczos,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    /// The kernels as Pillow writes them, including their asymmetries: the box is open on the
    /// left, Lanczos keeps `x = -3` (where `sin` is not exactly zero in double precision), and
    /// Hamming's constants are single-precision literals (`0.54f`, `0.46f`).
    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
                }
            }
            Filter::Bicubic => {
                let a = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Per output pixel: the first input index, the number of taps, and fixed-point weights.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` of Pillow, for the whole input range.
fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero; so does `as`.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..ksize {
            let w = if x < n && ww != 0.0 {
                k[x] / ww
            } else if x < n {
                k[x]
            } else {
                0.0
            };
            let f = w * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const ROUND: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over `rows` rows of `src` (width `iw`, starting at row `first_row`).
fn horizontal(src: &[u8], iw: usize, first_row: usize, rows: usize, c: &Coeffs) -> Vec<u8> {
    let ow = c.bounds.len();
    let mut out = vec![0u8; ow * rows * 3];
    for y in 0..rows {
        let row = &src[(y + first_row) * iw * 3..(y + first_row + 1) * iw * 3];
        let orow = &mut out[y * ow * 3..(y + 1) * ow * 3];
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
            let taps = &row[xmin * 3..(xmin + n) * 3];
            let mut acc = [ROUND; 3];
            for (&kw, p) in k.iter().zip(taps.chunks_exact(3)) {
                acc[0] += p[0] as i32 * kw;
                acc[1] += p[1] as i32 * kw;
                acc[2] += p[2] as i32 * kw;
            }
            orow[xx * 3] = clip8(acc[0]);
            orow[xx * 3 + 1] = clip8(acc[1]);
            orow[xx * 3 + 2] = clip8(acc[2]);
        }
    }
    out
}

/// Vertical pass over `src` (width `w`); the bounds are shifted up by `first_row`, the first
/// source row that `src` holds.
fn vertical(src: &[u8], w: usize, first_row: usize, c: &Coeffs) -> Vec<u8> {
    let oh = c.bounds.len();
    let mut out = vec![0u8; w * oh * 3];
    let mut acc = vec![0i32; w * 3];
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        let ymin = ymin - first_row;
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        acc.fill(ROUND);
        // Row by row over the taps: the same sums in the same order as Pillow's per-pixel
        // loop (integer addition), with contiguous reads.
        for (i, &kw) in k.iter().enumerate() {
            let row = &src[(ymin + i) * w * 3..(ymin + i + 1) * w * 3];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * kw;
            }
        }
        for (o, &a) in out[yy * w * 3..(yy + 1) * w * 3].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Whether Pillow 13 runs the vertical pass first for `iw`×`ih` → `ow`×`oh` (see the module
/// documentation).
pub fn vertical_first(iw: u32, ih: u32, ow: u32, oh: u32) -> bool {
    let (iw, ih, ow, oh) = (iw as i64, ih as i64, ow as i64, oh as i64);
    oh < ih && ih - oh > 2 * (iw - ow)
}

/// Resizes an RGB image to `w`×`h` exactly as Pillow's `Image.resize(…, filter)` does.
pub fn resample(img: &RgbImage, w: u32, h: u32, filter: Filter) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (w as usize, h as usize);
    let src = img.as_raw();
    if (ow, oh) == (iw, ih) {
        return img.clone();
    }
    let need_h = ow != iw;
    let need_v = oh != ih;
    let out = if !need_v {
        horizontal(src, iw, 0, ih, &coeffs(iw, ow, filter))
    } else if !need_h {
        vertical(src, iw, 0, &coeffs(ih, oh, filter))
    } else if vertical_first(img.width(), img.height(), w, h) {
        let tmp = vertical(src, iw, 0, &coeffs(ih, oh, filter));
        horizontal(&tmp, iw, 0, oh, &coeffs(iw, ow, filter))
    } else {
        // Only the source rows the vertical pass will read go through the horizontal pass.
        let vert = coeffs(ih, oh, filter);
        let first = vert.bounds[0].0;
        let (lb, ln) = vert.bounds[oh - 1];
        let tmp = horizontal(src, iw, first, lb + ln - first, &coeffs(iw, ow, filter));
        vertical(&tmp, ow, first, &vert)
    };
    RgbImage::from_raw(w, h, out).expect("sized")
}

/// `Image.resize(…, NEAREST)`: Pillow's affine scale (`ImagingScaleAffine`). The source
/// coordinate starts at half a step and is advanced by adding the step in double precision, so
/// the rounding error accumulates along each axis exactly as in Pillow; `(int)` truncation picks
/// the pixel.
pub fn nearest(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (w as usize, h as usize);
    if (ow, oh) == (iw, ih) {
        return img.clone();
    }
    // Pillow's box is `float`; the sizes are exact in it below 2^24.
    let coords = |in_size: usize, out_size: usize| -> Vec<Option<usize>> {
        let step = (in_size as f32) as f64 / out_size as f64;
        let mut pos = step * 0.5;
        (0..out_size)
            .map(|_| {
                let c = if pos < 0.0 { None } else { Some(pos as usize) };
                pos += step;
                c.filter(|&c| c < in_size)
            })
            .collect()
    };
    let xs = coords(iw, ow);
    let ys = coords(ih, oh);
    let src = img.as_raw();
    // Pixels whose source falls outside the image stay zero, as Pillow's `fill` leaves them.
    let mut out = vec![0u8; ow * oh * 3];
    for (y, sy) in ys.iter().enumerate() {
        let Some(sy) = *sy else { continue };
        let row = &src[sy * iw * 3..(sy + 1) * iw * 3];
        for (x, sx) in xs.iter().enumerate() {
            if let Some(sx) = *sx {
                out[(y * ow + x) * 3..(y * ow + x) * 3 + 3]
                    .copy_from_slice(&row[sx * 3..sx * 3 + 3]);
            }
        }
    }
    RgbImage::from_raw(w, h, out).expect("sized")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Filter; 5] = [
        Filter::Box,
        Filter::Bilinear,
        Filter::Hamming,
        Filter::Bicubic,
        Filter::Lanczos,
    ];

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for f in ALL {
            for (i, o) in [(500, 256), (256, 500), (375, 256), (7, 3)] {
                let c = coeffs(i, o, f);
                for xx in 0..o {
                    let s: i64 = c.weights[xx * c.ksize..(xx + 1) * c.ksize]
                        .iter()
                        .map(|&w| w as i64)
                        .sum();
                    assert!(
                        (s - (1 << PRECISION_BITS)).abs() <= c.ksize as i64,
                        "{f:?} {i}->{o} @{xx}: {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn flat_image_stays_flat() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 17, 99]));
        for f in ALL {
            let r = resample(&img, 11, 30, f);
            assert!(r.pixels().all(|p| p.0 == [200, 17, 99]), "{f:?}");
        }
    }
}
