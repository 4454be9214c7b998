//! Pillow's resampling, reproduced bit for bit.
//!
//! torchvision resizes PIL images with `Image.resize`, whose C code (`Resample.c`) computes
//! filter weights in double precision, rounds them to 22-bit fixed point, runs a horizontal then
//! a vertical pass with 8-bit rounding in between, and widens the filter by the downscale factor
//! (antialiasing). Training data went through exactly this, so we do the same arithmetic: a
//! generic resampler that differs by a few levels at high-contrast edges (seen with bicubic)
//! shifts what the network sees.

use image::RgbImage;

/// Fixed-point precision of Pillow's 8-bit path: `32 - 8 - 2`.
const PRECISION_BITS: u32 = 22;

/// Pillow's antialiasing filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Triangle, support 1.
    Bilinear,
    /// Keys cubic with a = -0.5, support 2.
    Bicubic,
    /// Lanczos, three lobes, support 3.
    Lanczos,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                let a = -0.5;
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if x < 3.0 {
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
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
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

/// Resizes an RGB image to `w`×`h` exactly as Pillow's `Image.resize(…, filter)` does.
pub fn resample(img: &RgbImage, w: u32, h: u32, filter: Filter) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (w as usize, h as usize);
    let src = img.as_raw();
    let horiz = coeffs(iw, ow, filter);
    let vert = coeffs(ih, oh, filter);
    let round = 1i32 << (PRECISION_BITS - 1);

    // Horizontal pass over just the rows the vertical pass will read.
    let (first_row, last_row) = if ow != iw {
        let first = vert.bounds[0].0;
        let (lb, ln) = vert.bounds[oh - 1];
        (first, lb + ln)
    } else {
        (0, ih)
    };
    let tmp_h = last_row - first_row;
    let mut tmp = vec![0u8; ow * tmp_h * 3];
    if ow != iw {
        for y in 0..tmp_h {
            let row = &src[(y + first_row) * iw * 3..(y + first_row + 1) * iw * 3];
            for (xx, &(xmin, n)) in horiz.bounds.iter().enumerate() {
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + n];
                let mut acc = [round; 3];
                for (i, &kw) in k.iter().enumerate() {
                    let p = (xmin + i) * 3;
                    acc[0] += row[p] as i32 * kw;
                    acc[1] += row[p + 1] as i32 * kw;
                    acc[2] += row[p + 2] as i32 * kw;
                }
                let o = (y * ow + xx) * 3;
                tmp[o] = clip8(acc[0]);
                tmp[o + 1] = clip8(acc[1]);
                tmp[o + 2] = clip8(acc[2]);
            }
        }
    } else {
        tmp.copy_from_slice(&src[first_row * iw * 3..last_row * iw * 3]);
    }
    if oh == ih && first_row == 0 {
        return RgbImage::from_raw(w, h, tmp).expect("sized");
    }

    let mut out = vec![0u8; ow * oh * 3];
    for (yy, &(ymin, n)) in vert.bounds.iter().enumerate() {
        let ymin = ymin - first_row;
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        for x in 0..ow {
            let mut acc = [round; 3];
            for (i, &kw) in k.iter().enumerate() {
                let p = ((ymin + i) * ow + x) * 3;
                acc[0] += tmp[p] as i32 * kw;
                acc[1] += tmp[p + 1] as i32 * kw;
                acc[2] += tmp[p + 2] as i32 * kw;
            }
            let o = (yy * ow + x) * 3;
            out[o] = clip8(acc[0]);
            out[o + 1] = clip8(acc[1]);
            out[o + 2] = clip8(acc[2]);
        }
    }
    RgbImage::from_raw(w, h, out).expect("sized")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for f in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos] {
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
        for f in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos] {
            let r = resample(&img, 11, 30, f);
            assert!(r.pixels().all(|p| p.0 == [200, 17, 99]), "{f:?}");
        }
    }
}
