//! Depthwise convolution on channels-last (`[rows][cols][c]`) strips, for the fused block.
//!
//! In NCHW a depthwise kernel vectorises along a row: a 7- or 14-pixel row fills a 16-lane
//! vector badly, and every plane pays its own setup. Channels-last vectorises along channels
//! (MobileNetV2's and EfficientNet-Lite's hidden widths are multiples of 16): every lane is
//! used, the taps' weights stay in registers for a whole channel block, and several output
//! pixels are accumulated at once so that the FMA latency is hidden.

use crate::act::Activation;

/// One strip's geometry. Input rows and columns outside `[0, h) × [0, w)` are zero padding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strip {
    pub k: usize,
    pub stride: usize,
    /// Channels (the innermost, contiguous axis of input and output).
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Padding rows above input row 0 and columns left of column 0.
    pub top: usize,
    pub left: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Strip {
    /// Output columns whose every tap lies inside the input: `[lo, hi)`.
    fn interior(&self) -> (usize, usize) {
        let (s, k, l, w) = (self.stride, self.k, self.left, self.w);
        let lo = l.div_ceil(s).min(self.ow);
        let hi = if w + l >= k {
            ((w + l - k) / s + 1).min(self.ow)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
}

/// `out[oy][ox][c] = act(bias[c] + Σ w[ky·k + kx][c] · x[oy·s + ky - top][ox·s + kx - left][c])`.
/// `wt` is `[k·k][c]`; `x` `[h][w][c]`, `out` `[oh][ow][c]`.
pub(crate) fn strip(
    p: &Strip,
    x: &[f32],
    wt: &[f32],
    bias: &[f32],
    act: Activation,
    out: &mut [f32],
) {
    assert!(x.len() >= p.h * p.w * p.c, "dw strip: input too short");
    assert!(out.len() >= p.oh * p.ow * p.c, "dw strip: output too short");
    assert_eq!(wt.len(), p.k * p.k * p.c, "dw strip: weight size");
    assert_eq!(bias.len(), p.c, "dw strip: bias size");
    #[cfg(target_arch = "x86_64")]
    {
        use crate::depthwise::Isa;
        match Isa::detect() {
            Isa::Avx512 => {
                // SAFETY: AVX-512F was detected; the asserts above bound every access.
                unsafe {
                    match (p.k, p.stride) {
                        (3, 1) => return avx512::<3, 1>(p, x, wt, bias, act, out),
                        (3, 2) => return avx512::<3, 2>(p, x, wt, bias, act, out),
                        (5, 1) => return avx512::<5, 1>(p, x, wt, bias, act, out),
                        (5, 2) => return avx512::<5, 2>(p, x, wt, bias, act, out),
                        _ => {}
                    }
                }
            }
            // SAFETY: AVX2 and FMA were detected.
            Isa::Avx2Fma => return unsafe { generic_avx2(p, x, wt, bias, act, out) },
            Isa::Baseline => {}
        }
    }
    generic(p, x, wt, bias, act, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn generic_avx2(
    p: &Strip,
    x: &[f32],
    wt: &[f32],
    bias: &[f32],
    act: Activation,
    out: &mut [f32],
) {
    generic(p, x, wt, bias, act, out)
}

/// Any kernel size and stride, vectorised by the compiler along channels.
#[inline(always)]
fn generic(p: &Strip, x: &[f32], wt: &[f32], bias: &[f32], act: Activation, out: &mut [f32]) {
    let (lo, hi) = act.bounds();
    let c = p.c;
    for oy in 0..p.oh {
        for ox in 0..p.ow {
            let o = &mut out[(oy * p.ow + ox) * c..(oy * p.ow + ox + 1) * c];
            o.copy_from_slice(bias);
            for ky in 0..p.k {
                let iy = (oy * p.stride + ky) as isize - p.top as isize;
                if iy < 0 || iy >= p.h as isize {
                    continue;
                }
                for kx in 0..p.k {
                    let ix = (ox * p.stride + kx) as isize - p.left as isize;
                    if ix < 0 || ix >= p.w as isize {
                        continue;
                    }
                    let xi = (iy as usize * p.w + ix as usize) * c;
                    let xs = &x[xi..xi + c];
                    let ws = &wt[(ky * p.k + kx) * c..(ky * p.k + kx + 1) * c];
                    for ((o, &xv), &wv) in o.iter_mut().zip(xs).zip(ws) {
                        *o += wv * xv;
                    }
                }
            }
            for v in o.iter_mut() {
                *v = v.max(lo).min(hi);
            }
        }
    }
}

/// Output pixels accumulated together: enough independent FMA chains to cover the latency.
const PIX: usize = 4;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
// Taps are indexed by (ky, kx) on purpose: the row range is clipped at the image border.
#[allow(clippy::needless_range_loop)]
unsafe fn avx512<const K: usize, const S: usize>(
    p: &Strip,
    x: &[f32],
    wt: &[f32],
    bias: &[f32],
    act: Activation,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let c = p.c;
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let (lo, hi) = act.bounds();
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let (ix_lo, ix_hi) = p.interior();
    let row = p.w * c;
    for cb in (0..c).step_by(16) {
        let m: __mmask16 = if c - cb >= 16 {
            0xffff
        } else {
            ((1u32 << (c - cb)) - 1) as __mmask16
        };
        let mut wv = [[_mm512_setzero_ps(); K]; K];
        for (ky, wr) in wv.iter_mut().enumerate() {
            for (kx, v) in wr.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_ps(m, wt.as_ptr().add((ky * K + kx) * c + cb));
            }
        }
        let vb = _mm512_maskz_loadu_ps(m, bias.as_ptr().add(cb));
        for oy in 0..p.oh {
            let iy0 = (oy * S) as isize - p.top as isize;
            let ky_lo = (-iy0).clamp(0, K as isize) as usize;
            let ky_hi = (p.h as isize - iy0).clamp(0, K as isize) as usize;
            // Input pixel (iy0 + ky, ix) at channel block cb.
            let base = xp.wrapping_offset(iy0 * row as isize).wrapping_add(cb);
            let orow = op.add(oy * p.ow * c + cb);
            let store = |ox: usize, acc: __m512| {
                _mm512_mask_storeu_ps(
                    orow.add(ox * c),
                    m,
                    _mm512_min_ps(_mm512_max_ps(acc, vlo), vhi),
                );
            };
            // Edge pixels: taps checked one by one.
            let edge = |ox: usize| {
                let mut acc = vb;
                for ky in ky_lo..ky_hi {
                    for kx in 0..K {
                        let ix = (ox * S + kx) as isize - p.left as isize;
                        if ix >= 0 && ix < p.w as isize {
                            let v = _mm512_maskz_loadu_ps(
                                m,
                                base.wrapping_add(ky * row + ix as usize * c),
                            );
                            acc = _mm512_fmadd_ps(wv[ky][kx], v, acc);
                        }
                    }
                }
                store(ox, acc);
            };
            for ox in 0..ix_lo {
                edge(ox);
            }
            let mut ox = ix_lo;
            while ox + PIX <= ix_hi {
                let mut acc = [vb; PIX];
                let x0 = base.wrapping_add((ox * S - p.left) * c);
                for ky in ky_lo..ky_hi {
                    let r = x0.wrapping_add(ky * row);
                    for kx in 0..K {
                        for (u, a) in acc.iter_mut().enumerate() {
                            let v = _mm512_maskz_loadu_ps(m, r.add((u * S + kx) * c));
                            *a = _mm512_fmadd_ps(wv[ky][kx], v, *a);
                        }
                    }
                }
                for (u, a) in acc.iter().enumerate() {
                    store(ox + u, *a);
                }
                ox += PIX;
            }
            while ox < ix_hi {
                let mut acc = vb;
                let x0 = base.wrapping_add((ox * S - p.left) * c);
                for ky in ky_lo..ky_hi {
                    let r = x0.wrapping_add(ky * row);
                    for (kx, w) in wv[ky].iter().enumerate() {
                        acc = _mm512_fmadd_ps(*w, _mm512_maskz_loadu_ps(m, r.add(kx * c)), acc);
                    }
                }
                store(ox, acc);
                ox += 1;
            }
            for ox in ix_hi.max(ix_lo)..p.ow {
                edge(ox);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, vals};

    /// The vector kernels against the plain loop, on every size and padding class: channel
    /// counts that are and are not multiples of 16, odd widths, top and left padding, rows
    /// with and without valid taps.
    #[test]
    fn isa_kernels_match_generic() {
        for (k, s) in [(3, 1), (3, 2), (5, 1), (5, 2)] {
            for (c, h, w, top, left) in [
                (16usize, 5usize, 9usize, 1usize, 1usize),
                (48, 7, 7, 0, 0),
                (20, 6, 13, 2, 2),
                (7, 9, 4, 1, 0),
                (32, 3, 23, 0, 2),
            ] {
                let oh = (h + top).saturating_sub(k) / s + 1;
                let ow = (w + 2 * left).saturating_sub(k) / s + 1;
                let p = Strip {
                    k,
                    stride: s,
                    c,
                    h,
                    w,
                    top,
                    left,
                    oh,
                    ow,
                };
                let x = vals(h * w * c, 1);
                let wt = vals(k * k * c, 2);
                let b = vals(c, 3);
                let mut want = vec![0f32; oh * ow * c];
                generic(&p, &x, &wt, &b, Activation::Relu6, &mut want);
                let mut got = vec![f32::NAN; oh * ow * c];
                strip(&p, &x, &wt, &b, Activation::Relu6, &mut got);
                let diff = max_diff(&got, &want);
                assert!(diff < 1e-5, "k{k} s{s} c{c} {h}x{w}: max diff {diff}");
            }
        }
    }
}
