//! Resizing as PyTorch's CPU `interpolate` kernels compute it: the tensor path that
//! `torchvision.transforms.v2.functional.resize` takes on uint8 and float tensors, and so
//! transformers' `TorchvisionBackend` image processors.
//!
//! Written from the arithmetic of `aten/src/ATen/native/cpu/UpSampleKernel.cpp` (and its AVX2
//! twin `UpSampleKernelAVXAntialias.h`, which computes the same integers):
//!
//! * **uint8, bilinear/bicubic/lanczos** (`antialias` true or false): separable, width first,
//!   then height, each pass rounded back to uint8. Weights are computed in double, normalised,
//!   and turned into int16 with a *precision* chosen per pass from the largest weight (the
//!   most bits that keep it below 2^15); each output is
//!   `clamp((2^(p-1) + Σ pixel·w) >> p, 0, 255)`. With antialias the filter's support widens
//!   by the downscale factor (Pillow's scheme, cubic a = −0.5); without it the support is fixed
//!   and out-of-range taps fold onto the border (cubic a = −0.75, OpenCV's).
//! * **float32**: the same separable antialiased filter with weights in float32; without
//!   antialias the classic two-tap (bilinear, source index clamped at 0) or four-tap (bicubic
//!   a = −0.75, indices clamped) interpolation.
//! * **nearest** (`floor(i·in/out)`, float32 scale) and **nearest-exact**
//!   (`floor((i + 0.5)·in/out)`), on any dtype.
//!
//! `align_corners` is always false here, as torchvision passes it for these modes.

/// An interpolation mode of `torch.nn.functional.interpolate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorMode {
    /// `nearest`: `floor(i · in/out)` (torchvision `InterpolationMode.NEAREST`).
    Nearest,
    /// `nearest-exact`: `floor((i + 0.5) · in/out)` (transformers maps PIL's NEAREST to it).
    NearestExact,
    /// `bilinear`.
    Bilinear,
    /// `bicubic`.
    Bicubic,
    /// `lanczos` (antialiased only; Lanczos-3).
    Lanczos,
}

impl TensorMode {
    fn taps(self) -> usize {
        match self {
            TensorMode::Nearest | TensorMode::NearestExact => 1,
            TensorMode::Bilinear => 2,
            TensorMode::Bicubic => 4,
            TensorMode::Lanczos => 6,
        }
    }

    fn is_nearest(self) -> bool {
        matches!(self, TensorMode::Nearest | TensorMode::NearestExact)
    }
}

fn cubic1(x: f64, a: f64) -> f64 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

fn cubic2(x: f64, a: f64) -> f64 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// The filter of `mode` at `x` (double precision, as the uint8 path computes it).
fn filter64(mode: TensorMode, antialias: bool, x: f64) -> f64 {
    let x = x.abs();
    match mode {
        TensorMode::Bilinear => {
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        }
        TensorMode::Bicubic => {
            let a = if antialias { -0.5 } else { -0.75 };
            if x < 1.0 {
                cubic1(x, a)
            } else if x < 2.0 {
                cubic2(x, a)
            } else {
                0.0
            }
        }
        TensorMode::Lanczos => {
            if x < 3.0 {
                sinc(x) * sinc(x / 3.0)
            } else {
                0.0
            }
        }
        TensorMode::Nearest | TensorMode::NearestExact => unreachable!("nearest has no filter"),
    }
}

/// The same filter in float32, as the float kernels evaluate it.
fn filter32(mode: TensorMode, antialias: bool, x: f32) -> f32 {
    let x = x.abs();
    match mode {
        TensorMode::Bilinear => {
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        }
        TensorMode::Bicubic => {
            let a: f32 = if antialias { -0.5 } else { -0.75 };
            if x < 1.0 {
                ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
            } else {
                0.0
            }
        }
        TensorMode::Lanczos => filter64(mode, antialias, x as f64) as f32,
        TensorMode::Nearest | TensorMode::NearestExact => unreachable!("nearest has no filter"),
    }
}

/// One pass's taps: for each output index, the first input index and its weights.
struct Taps<W> {
    start: Vec<usize>,
    weights: Vec<Vec<W>>,
}

/// Antialiased weights (`_compute_indices_min_size_weights_aa`) in double.
fn aa_weights64(mode: TensorMode, input: usize, output: usize) -> Taps<f64> {
    let scale = input as f64 / output as f64;
    let half = mode.taps() as f64 * 0.5;
    let support = if scale >= 1.0 { half * scale } else { half };
    let max_taps = support.ceil() as i64 * 2 + 1;
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut t = Taps {
        start: Vec::with_capacity(output),
        weights: Vec::with_capacity(output),
    };
    for i in 0..output {
        let center = scale * (i as f64 + 0.5);
        // `static_cast<int64_t>` truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xsize = (((center + support + 0.5) as i64).min(input as i64) - xmin).clamp(0, max_taps);
        let mut w: Vec<f64> = (0..xsize)
            .map(|j| filter64(mode, true, ((j + xmin) as f64 - center + 0.5) * invscale))
            .collect();
        let total: f64 = w.iter().fold(0.0, |a, b| a + b);
        if total != 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        }
        t.start.push(xmin as usize);
        t.weights.push(w);
    }
    t
}

/// The source index and fraction of the non-antialiased kernels (`guard_index_and_lambda`).
fn guard(real: f64, input: usize) -> (i64, f64) {
    // PyTorch floors with `floorf`, i.e. in float32.
    let index = ((real as f32).floor() as i64).min(input as i64 - 1);
    let lambda = (real - index as f64).clamp(0.0, 1.0);
    (index, lambda)
}

/// Fixed-support weights for uint8 without antialias (`_compute_indices_min_size_weights`):
/// taps outside the image fold onto the first or last valid one.
fn noaa_weights64(mode: TensorMode, input: usize, output: usize) -> Taps<f64> {
    let scale = input as f64 / output as f64;
    let n = mode.taps() as i64;
    let cubic = n > 2;
    let support = n / 2;
    let mut t = Taps {
        start: Vec::with_capacity(output),
        weights: Vec::with_capacity(output),
    };
    for i in 0..output {
        let mut real = scale * (i as f64 + 0.5) - 0.5;
        if !cubic && real < 0.0 {
            real = 0.0;
        }
        let (index, lambda) = guard(real, input);
        let umin = index - support + 1;
        let umax = index + support + 1;
        let imin = umin.max(0);
        let isize = (umax.min(input as i64) - imin).clamp(0, n);
        let mut w = vec![0.0f64; n as usize];
        let mut wi: i64 = 0;
        for j in 0..n {
            let v = filter64(mode, false, (j + 1 - support) as f64 - lambda);
            if umin + j <= 0 {
                wi = 0;
            } else if umin + j >= input as i64 - 1 {
                wi = isize - 1;
            }
            w[wi as usize] += v;
            wi += 1;
        }
        w.truncate(isize as usize);
        t.start.push(imin as usize);
        t.weights.push(w);
    }
    t
}

/// int16 weights and their precision (`_compute_index_ranges_int16_weights`).
fn to_int16(t: &Taps<f64>) -> (Taps<i32>, u32) {
    let wmax = t
        .weights
        .iter()
        .flatten()
        .fold(0.0f64, |m, &v| if v > m { v } else { m });
    let mut p = 0u32;
    while p < 22 {
        let next = (0.5 + wmax * (1i64 << (p + 1)) as f64) as i64;
        if next >= 1 << 15 {
            break;
        }
        p += 1;
    }
    let k = (1i64 << p) as f64;
    let weights = t
        .weights
        .iter()
        .map(|w| {
            w.iter()
                .map(|&v| {
                    let v = v * k;
                    let r = if v < 0.0 {
                        (-0.5 + v) as i32
                    } else {
                        (0.5 + v) as i32
                    };
                    // Stored as int16, as PyTorch does.
                    r as i16 as i32
                })
                .collect()
        })
        .collect();
    (
        Taps {
            start: t.start.clone(),
            weights,
        },
        p,
    )
}

fn nearest_index(mode: TensorMode, i: usize, input: usize, output: usize) -> usize {
    let scale = input as f32 / output as f32;
    let real = match mode {
        TensorMode::Nearest => scale * i as f32,
        _ => (scale * (i as f32 + 0.5) - 0.5).max(0.0) + 0.5,
    };
    (real.floor() as usize).min(input - 1)
}

/// Resizes an interleaved uint8 image (`c` channels, `w`×`h`) to `ow`×`oh` the way
/// `torchvision.transforms.v2.functional.resize` does on a uint8 tensor on the CPU.
///
/// # Panics
/// If `src.len() != w * h * c`, a size is zero, or `mode` is lanczos without antialias
/// (torchvision refuses that combination; the spec check refuses it earlier).
#[allow(clippy::too_many_arguments)]
pub fn resize_u8(
    src: &[u8],
    w: usize,
    h: usize,
    c: usize,
    ow: usize,
    oh: usize,
    mode: TensorMode,
    antialias: bool,
) -> Vec<u8> {
    assert_eq!(src.len(), w * h * c, "buffer matches dimensions");
    assert!(w > 0 && h > 0 && ow > 0 && oh > 0, "non-empty sizes");
    assert!(
        antialias || mode != TensorMode::Lanczos,
        "lanczos needs antialias"
    );
    if (w, h) == (ow, oh) {
        return src.to_vec();
    }
    if mode.is_nearest() {
        let xs: Vec<usize> = (0..ow).map(|x| nearest_index(mode, x, w, ow)).collect();
        let mut out = Vec::with_capacity(ow * oh * c);
        for y in 0..oh {
            let sy = nearest_index(mode, y, h, oh);
            for &sx in &xs {
                let p = (sy * w + sx) * c;
                out.extend_from_slice(&src[p..p + c]);
            }
        }
        return out;
    }
    let weights = |input, output| {
        let t = if antialias {
            aa_weights64(mode, input, output)
        } else {
            noaa_weights64(mode, input, output)
        };
        to_int16(&t)
    };
    let mut cur = src.to_vec();
    let mut cw = w;
    if ow != w {
        let (t, p) = weights(w, ow);
        let half = 1i32 << (p - 1);
        let mut out = vec![0u8; ow * h * c];
        for y in 0..h {
            let row = &cur[y * w * c..(y + 1) * w * c];
            for x in 0..ow {
                let (s, k) = (t.start[x], &t.weights[x]);
                for ch in 0..c {
                    let mut acc = half;
                    for (j, &kw) in k.iter().enumerate() {
                        acc += row[(s + j) * c + ch] as i32 * kw;
                    }
                    out[(y * ow + x) * c + ch] = (acc >> p).clamp(0, 255) as u8;
                }
            }
        }
        cur = out;
        cw = ow;
    }
    if oh != h {
        let (t, p) = weights(h, oh);
        let half = 1i32 << (p - 1);
        let stride = cw * c;
        let mut out = vec![0u8; oh * stride];
        for y in 0..oh {
            let (s, k) = (t.start[y], &t.weights[y]);
            for i in 0..stride {
                let mut acc = half;
                for (j, &kw) in k.iter().enumerate() {
                    acc += cur[(s + j) * stride + i] as i32 * kw;
                }
                out[y * stride + i] = (acc >> p).clamp(0, 255) as u8;
            }
        }
        cur = out;
    }
    cur
}

/// Antialiased weights in float32, as the float kernels compute them.
fn aa_weights32(mode: TensorMode, input: usize, output: usize) -> Taps<f32> {
    let scale = input as f32 / output as f32;
    let half = mode.taps() as f64 * 0.5;
    let support = if scale >= 1.0 {
        (half * scale as f64) as f32
    } else {
        half as f32
    };
    let max_taps = support.ceil() as i64 * 2 + 1;
    let invscale = if scale >= 1.0 {
        (1.0 / scale as f64) as f32
    } else {
        1.0
    };
    let mut t = Taps {
        start: Vec::with_capacity(output),
        weights: Vec::with_capacity(output),
    };
    for i in 0..output {
        let center = (scale as f64 * (i as f64 + 0.5)) as f32;
        let xmin = (((center - support) as f64 + 0.5) as i64).max(0);
        let xsize = ((((center + support) as f64 + 0.5) as i64).min(input as i64) - xmin)
            .clamp(0, max_taps);
        let mut w: Vec<f32> = (0..xsize)
            .map(|j| {
                let d = ((j + xmin) as f32 - center) as f64 + 0.5;
                filter32(mode, true, (d * invscale as f64) as f32)
            })
            .collect();
        let total: f32 = w.iter().fold(0.0, |a, b| a + b);
        if total != 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        }
        t.start.push(xmin as usize);
        t.weights.push(w);
    }
    t
}

/// Indices (clamped into the image) and weights of the non-antialiased float kernels.
fn noaa_taps32(mode: TensorMode, input: usize, output: usize) -> Vec<(Vec<usize>, Vec<f32>)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let real = scale * (i as f32 + 0.5) - 0.5;
            match mode {
                TensorMode::Bilinear => {
                    let real = real.max(0.0);
                    let i0 = real as usize;
                    let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
                    let l1 = (real - i0 as f32).clamp(0.0, 1.0);
                    (vec![i0, i1], vec![1.0 - l1, l1])
                }
                TensorMode::Bicubic => {
                    let index = (real.floor() as i64).min(input as i64 - 1);
                    let t = (real - index as f32).clamp(0.0, 1.0);
                    let a = -0.75f32;
                    let c1 = |x: f32| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
                    let c2 = |x: f32| ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
                    let idx = (0..4)
                        .map(|j| (index + j - 1).clamp(0, input as i64 - 1) as usize)
                        .collect();
                    (idx, vec![c2(t + 1.0), c1(t), c1(1.0 - t), c2(2.0 - t)])
                }
                _ => unreachable!("only bilinear and bicubic have fixed-support float kernels"),
            }
        })
        .collect()
}

/// `Σ v(j)·k[j]` accumulated in float32 from the first tap, as `interpolate_aa_single_dim`.
fn conv32(v: impl Fn(usize) -> f32, k: &[f32]) -> f32 {
    let mut t = v(0) * k[0];
    for (j, &kw) in k.iter().enumerate().skip(1) {
        t += v(j) * kw;
    }
    t
}

/// Resizes a planar float32 tensor (`c`×`h`×`w`, channels first) to `oh`×`ow` as
/// `torchvision.transforms.v2.functional.resize` does on a float tensor on the CPU.
///
/// The arithmetic is PyTorch's in float32; PyTorch's vectorised kernels may round the last
/// bit differently (at most 2.4e-6 from PyTorch on the committed fixture).
///
/// # Panics
/// As [`resize_u8`].
#[allow(clippy::too_many_arguments)]
pub fn resize_f32(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    mode: TensorMode,
    antialias: bool,
) -> Vec<f32> {
    assert_eq!(src.len(), w * h * c, "buffer matches dimensions");
    assert!(w > 0 && h > 0 && ow > 0 && oh > 0, "non-empty sizes");
    assert!(
        antialias || mode != TensorMode::Lanczos,
        "lanczos needs antialias"
    );
    if (w, h) == (ow, oh) {
        return src.to_vec();
    }
    if mode.is_nearest() {
        let xs: Vec<usize> = (0..ow).map(|x| nearest_index(mode, x, w, ow)).collect();
        let mut out = Vec::with_capacity(ow * oh * c);
        for ch in 0..c {
            for y in 0..oh {
                let sy = nearest_index(mode, y, h, oh);
                out.extend(xs.iter().map(|&sx| src[(ch * h + sy) * w + sx]));
            }
        }
        return out;
    }
    if !antialias {
        // Both dimensions at once: Σ_y w_y · (Σ_x w_x · v), height outermost.
        let tx = noaa_taps32(mode, w, ow);
        let ty = noaa_taps32(mode, h, oh);
        let mut out = Vec::with_capacity(ow * oh * c);
        for ch in 0..c {
            let plane = &src[ch * h * w..(ch + 1) * h * w];
            for (iy, wy) in &ty {
                for (ix, wx) in &tx {
                    let mut acc = 0.0f32;
                    for (k, (&sy, &vy)) in iy.iter().zip(wy).enumerate() {
                        let row = &plane[sy * w..];
                        let mut t = row[ix[0]] * wx[0];
                        for (&sx, &vx) in ix.iter().zip(wx).skip(1) {
                            t += row[sx] * vx;
                        }
                        acc = if k == 0 { t * vy } else { acc + t * vy };
                    }
                    out.push(acc);
                }
            }
        }
        return out;
    }
    let mut cur = src.to_vec();
    let mut cw = w;
    if ow != w {
        let t = aa_weights32(mode, w, ow);
        let mut out = Vec::with_capacity(ow * h * c);
        for row in cur.chunks_exact(w) {
            for x in 0..ow {
                let s = t.start[x];
                out.push(conv32(|j| row[s + j], &t.weights[x]));
            }
        }
        cur = out;
        cw = ow;
    }
    if oh != h {
        let t = aa_weights32(mode, h, oh);
        let mut out = Vec::with_capacity(ow * oh * c);
        for plane in cur.chunks_exact(h * cw) {
            for y in 0..oh {
                let s = t.start[y];
                for x in 0..cw {
                    out.push(conv32(|j| plane[(s + j) * cw + x], &t.weights[y]));
                }
            }
        }
        cur = out;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int16_precision_keeps_the_largest_weight_below_2_pow_15() {
        let (t, p) = to_int16(&aa_weights64(TensorMode::Bilinear, 500, 224));
        let max = t.weights.iter().flatten().copied().max().unwrap();
        assert!((1 << 14..1 << 15).contains(&max), "{max} at precision {p}");
        // Every row's integer weights sum to about 2^p.
        for w in &t.weights {
            let s: i32 = w.iter().sum();
            assert!((s - (1 << p)).abs() <= w.len() as i32, "{s} vs {}", 1 << p);
        }
    }

    #[test]
    fn identity_and_constant_images() {
        let img = vec![7u8; 5 * 4 * 3];
        assert_eq!(
            resize_u8(&img, 5, 4, 3, 5, 4, TensorMode::Bicubic, true),
            img
        );
        for mode in [
            TensorMode::Bilinear,
            TensorMode::Bicubic,
            TensorMode::Lanczos,
        ] {
            let out = resize_u8(&img, 5, 4, 3, 11, 3, mode, true);
            assert!(out.iter().all(|&v| v == 7), "{mode:?}: {out:?}");
        }
    }
}
