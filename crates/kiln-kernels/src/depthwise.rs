//! Native depthwise convolution: one k×k filter per channel, direct, with the epilogue fused:
//! each output row is computed in blocks of 16–64 pixels held in registers and written once as
//! `act(bias + Σ w·x (+ residual))`. Specialised for 3×3 and 5×5 at stride 1 and 2 (any padding,
//! including TensorFlow's uneven "SAME"); other sizes take a generic loop.
//!
//! - AVX-512: reads the input plane in place; padding rows are skipped and padding columns
//!   masked off in the loads, stride 2 takes the even lanes of two loads with one permute.
//! - AVX2+FMA and portable: the plane is first copied into a zero-bordered scratch plane, split
//!   into `stride` column phases so that every load is contiguous.

// The kernels index small fixed-size arrays by kernel row and column on purpose.
#![allow(clippy::needless_range_loop)]

use std::sync::OnceLock;

use crate::act::Activation;
use crate::out::Out;

/// Instruction-set level the kernel is compiled for, chosen at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512,
    Avx2Fma,
    Baseline,
}

impl Isa {
    /// The best level this CPU supports, capped by `KILN_ISA` (`avx2` or `baseline`) if set:
    /// the lower levels' code paths can then be run and tested on any machine.
    pub(crate) fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let cap = match std::env::var("KILN_ISA").as_deref() {
                Ok("baseline") => Isa::Baseline,
                Ok("avx2") => Isa::Avx2Fma,
                _ => Isa::Avx512,
            };
            #[cfg(target_arch = "x86_64")]
            {
                if cap == Isa::Avx512 && std::is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                if cap != Isa::Baseline
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                {
                    return Isa::Avx2Fma;
                }
            }
            let _ = cap;
            Isa::Baseline
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512f",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Baseline => "baseline",
        }
    }
}

/// Geometry of one depthwise plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plane {
    pub k: usize,
    pub stride: usize,
    /// `[top, bottom, left, right]`.
    pub pad: [usize; 4],
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Plane {
    /// Length of one phase of a scratch row. A padded row is stored as `stride` phases
    /// (column `c` at phase `c % stride`, index `c / stride`), so that output `x` reads phase
    /// `kx % stride` at `x + kx / stride`: contiguous loads at any stride. Widened with zeros so
    /// that the last block of `LANES` outputs of a row reads inside the row (no scalar tail).
    fn phase_w(&self) -> usize {
        let padded = self.w + self.pad[2] + self.pad[3];
        padded
            .div_ceil(self.stride)
            .max(self.ow.div_ceil(MAX_BLOCK) * MAX_BLOCK + (self.k - 1) / self.stride)
    }
    /// Rows of the padded plane the output reads.
    fn padded_h(&self) -> usize {
        (self.oh - 1) * self.stride + self.k
    }
}

/// A zero-bordered scratch plane, reused between the planes of one layer: its borders are
/// zeroed once per geometry, then each plane only overwrites the interior.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    geom: Option<Plane>,
    buf: Vec<f32>,
}

/// One channel: `out[oh × ow] = act(bias + dwconv(x[h × w], wk[k × k]) (+ res))`.
/// `scratch` is reused between calls.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plane(
    p: &Plane,
    x: &[f32],
    wk: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    act: Activation,
    out: Out<'_>,
    scratch: &mut Scratch,
) {
    debug_assert_eq!(x.len(), p.h * p.w);
    debug_assert_eq!(out.len(), p.oh * p.ow);
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512 && matches!((p.k, p.stride), (3, 1) | (3, 2) | (5, 1) | (5, 2))
    {
        // SAFETY: AVX-512F was detected on this CPU.
        unsafe { direct_avx512(p, x, wk, bias, res, act, out) };
        return;
    }
    let scratch = prepare(p, x, scratch);
    run_isa(Isa::detect(), p, scratch, wk, bias, res, act, out)
}

/// Copies the plane into the zero-bordered, phase-split scratch layout the scratch kernels read.
fn prepare<'a>(p: &Plane, x: &[f32], scratch: &'a mut Scratch) -> &'a [f32] {
    let (s, pw, ph) = (p.stride, p.phase_w(), p.padded_h());
    let row_len = s * pw;
    if scratch.geom != Some(*p) {
        scratch.buf.clear();
        scratch.buf.resize(ph * row_len, 0.0);
        scratch.geom = Some(*p);
    }
    let buf = &mut scratch.buf;
    let [t, _, l, _] = p.pad;
    for y in 0..p.h {
        let py = y + t;
        if py >= ph {
            break;
        }
        let src = &x[y * p.w..(y + 1) * p.w];
        let dst = &mut buf[py * row_len..(py + 1) * row_len];
        if s == 1 {
            dst[l..l + p.w].copy_from_slice(src);
        } else {
            for phase in 0..s {
                // Padded columns `j·s + phase`, i.e. input columns `j·s + phase - l`.
                let j0 = if l > phase {
                    (l - phase).div_ceil(s)
                } else {
                    0
                };
                let xi0 = j0 * s + phase - l;
                if xi0 >= p.w || j0 >= pw {
                    continue;
                }
                let d = &mut dst[phase * pw + j0..(phase + 1) * pw];
                for (o, &v) in d.iter_mut().zip(src[xi0..].iter().step_by(s)) {
                    *o = v;
                }
            }
        }
    }
    &scratch.buf
}

#[allow(clippy::too_many_arguments)]
fn run_isa(
    isa: Isa,
    p: &Plane,
    scratch: &[f32],
    wk: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    act: Activation,
    out: Out<'_>,
) {
    match isa {
        // SAFETY: callers pass `Isa::detect()` or a lower level; the features are on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { plane_avx512(p, scratch, wk, bias, res, act, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { plane_avx2(p, scratch, wk, bias, res, act, out) },
        _ => plane_portable(p, scratch, wk, bias, res, act, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn plane_avx512(
    p: &Plane,
    s: &[f32],
    wk: &[f32],
    b: f32,
    r: Option<&[f32]>,
    a: Activation,
    o: Out<'_>,
) {
    simd_dispatch::<x86::F32x16>(p, s, wk, b, r, a, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2(
    p: &Plane,
    s: &[f32],
    wk: &[f32],
    b: f32,
    r: Option<&[f32]>,
    a: Activation,
    o: Out<'_>,
) {
    simd_dispatch::<x86::F32x8>(p, s, wk, b, r, a, o)
}

/// Picks the explicit-SIMD kernel for the kernel size, stride and row width: as many vector
/// accumulators per block (1, 2 or 4) as the row fills, to hide the FMA latency.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn simd_dispatch<V: x86::Simd>(
    p: &Plane,
    s: &[f32],
    wk: &[f32],
    b: f32,
    r: Option<&[f32]>,
    a: Activation,
    o: Out<'_>,
) {
    macro_rules! by_nv {
        ($k:literal, $s:literal) => {
            match p.ow.div_ceil(V::W) {
                1 => rows_simd::<$k, $s, 1, V>(p, s, wk, b, r, a, o),
                2 => rows_simd::<$k, $s, 2, V>(p, s, wk, b, r, a, o),
                _ => rows_simd::<$k, $s, 4, V>(p, s, wk, b, r, a, o),
            }
        };
    }
    match (p.k, p.stride) {
        (3, 1) => by_nv!(3, 1),
        (3, 2) => by_nv!(3, 2),
        (5, 1) => by_nv!(5, 1),
        (5, 2) => by_nv!(5, 2),
        _ => generic::<true>(p, s, wk, b, r, a, o),
    }
}

/// The explicit-SIMD row kernel: blocks of `NV` vectors of outputs, accumulated in registers.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rows_simd<const K: usize, const S: usize, const NV: usize, V: x86::Simd>(
    p: &Plane,
    pad: &[f32],
    wk: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    act: Activation,
    mut out: Out<'_>,
) {
    let block = NV * V::W;
    debug_assert!(block <= MAX_BLOCK);
    let pw = p.phase_w();
    let row_len = S * pw;
    let ow = p.ow;
    let mut w = [[V::splat(0.0); K]; K];
    for ky in 0..K {
        for kx in 0..K {
            w[ky][kx] = V::splat(wk[ky * K + kx]);
        }
    }
    let (lo, hi) = act.bounds();
    let (vlo, vhi, vb) = (V::splat(lo), V::splat(hi), V::splat(bias));
    let mut tmp = [0f32; MAX_BLOCK];
    for oy in 0..p.oh {
        let base = oy * S * row_len;
        let rows: [&[f32]; K] =
            std::array::from_fn(|ky| &pad[base + ky * row_len..base + (ky + 1) * row_len]);
        let mut orow = out.slice(oy * ow..(oy + 1) * ow);
        let rrow = res.map(|r| &r[oy * ow..(oy + 1) * ow]);
        let mut x0 = 0;
        while x0 < ow {
            let mut acc = [vb; NV];
            for ky in 0..K {
                for kx in 0..K {
                    let start = (kx % S) * pw + x0 + kx / S;
                    let seg = &rows[ky][start..start + block];
                    for (v, a) in acc.iter_mut().enumerate() {
                        // SAFETY: `seg` holds `NV · W` elements.
                        *a = V::fma(*a, w[ky][kx], V::load(seg.as_ptr().add(v * V::W)));
                    }
                }
            }
            let valid = block.min(ow - x0);
            if valid == block {
                let mut o = orow.slice(x0..x0 + block);
                for (v, a) in acc.iter().enumerate() {
                    let mut y = *a;
                    if let Some(rr) = rrow {
                        y = V::add(y, V::load(rr[x0..x0 + block].as_ptr().add(v * V::W)));
                    }
                    V::store(o.as_mut_ptr().add(v * V::W), V::clamp(y, vlo, vhi));
                }
            } else {
                for (v, a) in acc.iter().enumerate() {
                    V::store(tmp.as_mut_ptr().add(v * V::W), V::clamp(*a, vlo, vhi));
                }
                if let Some(rr) = rrow {
                    // Rare (a residual on a depthwise conv): redo the clamp after the add.
                    for (v, a) in acc.iter().enumerate() {
                        V::store(tmp.as_mut_ptr().add(v * V::W), *a);
                    }
                    for (t, r) in tmp[..valid].iter_mut().zip(&rr[x0..x0 + valid]) {
                        *t = clamp(*t + r, lo, hi);
                    }
                }
                orow.slice(x0..x0 + valid).copy_from(&tmp[..valid]);
            }
            x0 += block;
        }
    }
}

/// The AVX-512 kernel reading the input plane in place: rows outside the image are skipped,
/// columns outside it are masked off in the loads (the padding is never materialised), and
/// stride 2 takes the even lanes of two loads with one permute.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn direct_avx512(
    p: &Plane,
    x: &[f32],
    wk: &[f32],
    b: f32,
    r: Option<&[f32]>,
    a: Activation,
    o: Out<'_>,
) {
    macro_rules! by_nv {
        ($k:literal, $s:literal) => {
            match p.ow.div_ceil(16) {
                1 => direct_rows::<$k, $s, 1>(p, x, wk, b, r, a, o),
                2 => direct_rows::<$k, $s, 2>(p, x, wk, b, r, a, o),
                _ => direct_rows::<$k, $s, 4>(p, x, wk, b, r, a, o),
            }
        };
    }
    match (p.k, p.stride) {
        (3, 1) => by_nv!(3, 1),
        (3, 2) => by_nv!(3, 2),
        (5, 1) => by_nv!(5, 1),
        _ => by_nv!(5, 2),
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn direct_rows<const K: usize, const S: usize, const NV: usize>(
    p: &Plane,
    x: &[f32],
    wk: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    act: Activation,
    mut out: Out<'_>,
) {
    use std::arch::x86_64::*;
    let (w, h, ow) = (p.w as isize, p.h as isize, p.ow);
    let (t, l) = (p.pad[0] as isize, p.pad[2] as isize);
    let mut wv = [[_mm512_setzero_ps(); K]; K];
    for ky in 0..K {
        for kx in 0..K {
            wv[ky][kx] = _mm512_set1_ps(wk[ky * K + kx]);
        }
    }
    let (lo, hi) = act.bounds();
    let (vlo, vhi, vb) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi), _mm512_set1_ps(bias));
    let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    // Lanes of a 16-float load from column `c` that lie in [0, w).
    let lanes = |c: isize| -> __mmask16 {
        let first = (-c).clamp(0, 16) as u32;
        let end = (w - c).clamp(0, 16) as u32;
        if first >= end {
            0
        } else {
            (((1u32 << end) - 1) & !((1u32 << first) - 1)) as __mmask16
        }
    };
    // Per column block (the same on every row): the first column and the in-image lanes of
    // every load (one per vector, two at stride 2), so the inner loops are branch-free masked
    // loads.
    type BlockLoads<const K: usize, const NV: usize> =
        ([[isize; NV]; K], [[[__mmask16; 2]; NV]; K]);
    let blocks: Vec<BlockLoads<K, NV>> = (0..ow.div_ceil(NV * 16))
        .map(|bi| {
            let x0 = bi * NV * 16;
            let mut cs = [[0isize; NV]; K];
            let mut ms = [[[0 as __mmask16; 2]; NV]; K];
            for kx in 0..K {
                for v in 0..NV {
                    let c = ((x0 + v * 16) * S) as isize + kx as isize - l;
                    cs[kx][v] = c;
                    ms[kx][v][0] = lanes(c);
                    if S > 1 {
                        ms[kx][v][1] = lanes(c + 16);
                    }
                }
            }
            (cs, ms)
        })
        .collect();
    for oy in 0..p.oh {
        let rows: [Option<*const f32>; K] = std::array::from_fn(|ky| {
            let iy = (oy * S + ky) as isize - t;
            (iy >= 0 && iy < h).then(|| x.as_ptr().offset(iy * w))
        });
        let orow = out.as_mut_ptr().add(oy * ow);
        let rrow = res.map(|r| r.as_ptr().add(oy * ow));
        for (bi, (cs, ms)) in blocks.iter().enumerate() {
            let x0 = bi * NV * 16;
            let mut acc = [vb; NV];
            for ky in 0..K {
                let Some(rp) = rows[ky] else { continue };
                for kx in 0..K {
                    for (v, a) in acc.iter_mut().enumerate() {
                        // Masked-off lanes are not accessed.
                        let p0 = rp.wrapping_offset(cs[kx][v]);
                        let xv = if S == 1 {
                            _mm512_maskz_loadu_ps(ms[kx][v][0], p0)
                        } else {
                            let a0 = _mm512_maskz_loadu_ps(ms[kx][v][0], p0);
                            let a1 = _mm512_maskz_loadu_ps(ms[kx][v][1], p0.wrapping_add(16));
                            _mm512_permutex2var_ps(a0, evens, a1)
                        };
                        *a = _mm512_fmadd_ps(wv[ky][kx], xv, *a);
                    }
                }
            }
            for (v, a) in acc.iter().enumerate() {
                let xs = x0 + v * 16;
                if xs >= ow {
                    break;
                }
                let n = (ow - xs).min(16) as u32;
                let m = if n == 16 {
                    0xffff
                } else {
                    ((1u32 << n) - 1) as __mmask16
                };
                let mut y = *a;
                if let Some(rr) = rrow {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, rr.add(xs)));
                }
                _mm512_mask_storeu_ps(orow.add(xs), m, _mm512_min_ps(_mm512_max_ps(y, vlo), vhi));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The few vector operations the depthwise kernel needs. Callers must have the matching
    /// target features enabled.
    pub(super) trait Simd {
        type R: Copy;
        const W: usize;
        unsafe fn splat(x: f32) -> Self::R;
        unsafe fn load(p: *const f32) -> Self::R;
        unsafe fn store(p: *mut f32, v: Self::R);
        unsafe fn fma(acc: Self::R, a: Self::R, b: Self::R) -> Self::R;
        unsafe fn add(a: Self::R, b: Self::R) -> Self::R;
        unsafe fn clamp(v: Self::R, lo: Self::R, hi: Self::R) -> Self::R;
    }

    pub(super) struct F32x16;
    impl Simd for F32x16 {
        type R = __m512;
        const W: usize = 16;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(acc: __m512, a: __m512, b: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, acc)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn clamp(v: __m512, lo: __m512, hi: __m512) -> __m512 {
            _mm512_min_ps(_mm512_max_ps(v, lo), hi)
        }
    }

    pub(super) struct F32x8;
    impl Simd for F32x8 {
        type R = __m256;
        const W: usize = 8;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(acc: __m256, a: __m256, b: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, acc)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn clamp(v: __m256, lo: __m256, hi: __m256) -> __m256 {
            _mm256_min_ps(_mm256_max_ps(v, lo), hi)
        }
    }
}

/// The portable kernel (no FMA, whatever the compiler vectorises).
fn plane_portable(
    p: &Plane,
    s: &[f32],
    wk: &[f32],
    b: f32,
    r: Option<&[f32]>,
    a: Activation,
    o: Out<'_>,
) {
    match (p.k, p.stride) {
        (3, 1) => rows::<3, 1, LANES, false>(p, s, wk, b, r, a, o),
        (3, 2) => rows::<3, 2, LANES, false>(p, s, wk, b, r, a, o),
        _ => generic::<false>(p, s, wk, b, r, a, o),
    }
}

#[inline(always)]
fn madd<const FMA: bool>(acc: f32, w: f32, x: f32) -> f32 {
    if FMA {
        w.mul_add(x, acc)
    } else {
        acc + w * x
    }
}

/// Output pixels of the portable kernel's blocks.
const LANES: usize = 16;

/// Most output pixels computed together by any kernel (4 AVX-512 registers); scratch rows are
/// wide enough for whole blocks of this many.
const MAX_BLOCK: usize = 64;

/// `min(max(x, lo), hi)` without NaN handling, so it maps to one vmaxps / vminps.
#[inline(always)]
fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    let x = if x > lo { x } else { lo };
    if x < hi {
        x
    } else {
        hi
    }
}

#[inline(always)]
fn rows<const K: usize, const S: usize, const L: usize, const FMA: bool>(
    p: &Plane,
    pad: &[f32],
    wk: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    act: Activation,
    mut out: Out<'_>,
) {
    let pw = p.phase_w();
    let row_len = S * pw;
    let ow = p.ow;
    let mut w = [[0f32; K]; K];
    for ky in 0..K {
        for kx in 0..K {
            w[ky][kx] = wk[ky * K + kx];
        }
    }
    let (lo, hi) = act.bounds();
    for oy in 0..p.oh {
        let base = oy * S * row_len;
        let in_rows: [&[f32]; K] =
            std::array::from_fn(|ky| &pad[base + ky * row_len..base + (ky + 1) * row_len]);
        let mut orow = out.slice(oy * ow..(oy + 1) * ow);
        let rrow = res.map(|r| &r[oy * ow..(oy + 1) * ow]);
        let mut x0 = 0;
        while x0 < ow {
            let mut acc = [bias; L];
            for ky in 0..K {
                for kx in 0..K {
                    let start = (kx % S) * pw + x0 + kx / S;
                    let seg = &in_rows[ky][start..start + L];
                    let wv = w[ky][kx];
                    for i in 0..L {
                        acc[i] = madd::<FMA>(acc[i], wv, seg[i]);
                    }
                }
            }
            let valid = L.min(ow - x0);
            if let Some(rr) = rrow {
                for (a, r) in acc.iter_mut().zip(&rr[x0..x0 + valid]) {
                    *a += r;
                }
            }
            for a in acc.iter_mut() {
                *a = clamp(*a, lo, hi);
            }
            orow.slice(x0..x0 + valid).copy_from(&acc[..valid]);
            x0 += L;
        }
    }
}

#[inline(always)]
fn generic<const FMA: bool>(
    p: &Plane,
    pad: &[f32],
    wk: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    act: Activation,
    mut out: Out<'_>,
) {
    let (pw, k, s) = (p.phase_w(), p.k, p.stride);
    for oy in 0..p.oh {
        for ox in 0..p.ow {
            let mut acc = bias;
            for ky in 0..k {
                let row = &pad[(oy * s + ky) * s * pw..];
                for kx in 0..k {
                    acc = madd::<FMA>(acc, wk[ky * k + kx], row[(kx % s) * pw + ox + kx / s]);
                }
            }
            if let Some(r) = res {
                acc += r[oy * p.ow + ox];
            }
            out.set(oy * p.ow + ox, act.apply(acc));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction-set level this CPU has gives the portable kernel's results.
    #[test]
    fn isa_levels_agree() {
        let mut levels = vec![Isa::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                levels.push(Isa::Avx2Fma);
            }
            if std::is_x86_feature_detected!("avx512f") {
                levels.push(Isa::Avx512);
            }
        }
        for (k, stride, pad, h, w) in [
            (3, 1, [1, 1, 1, 1], 9, 7),
            (3, 1, [1, 1, 1, 1], 30, 57),
            (3, 2, [0, 1, 0, 1], 28, 28),
            (3, 2, [1, 1, 1, 1], 113, 113),
            (5, 1, [2, 2, 2, 2], 14, 14),
            (5, 2, [1, 2, 1, 2], 31, 20),
        ] {
            let oh = (h + pad[0] + pad[1] - k) / stride + 1;
            let ow = (w + pad[2] + pad[3] - k) / stride + 1;
            let p = Plane {
                k,
                stride,
                pad,
                h,
                w,
                oh,
                ow,
            };
            let x: Vec<f32> = (0..h * w)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let wk: Vec<f32> = (0..k * k).map(|i| (i as f32 - 4.0) / 7.0).collect();
            let res: Vec<f32> = (0..oh * ow).map(|i| (i % 13) as f32 / 13.0).collect();
            for r in [None, Some(&res[..])] {
                // NaN-filled: an element a kernel leaves unwritten fails the comparison.
                let mut want = vec![f32::NAN; oh * ow];
                let mut scratch = Scratch::default();
                plane(
                    &p,
                    &x,
                    &wk,
                    0.25,
                    r,
                    Activation::Relu6,
                    Out::init(&mut want),
                    &mut scratch,
                );
                let prepared = prepare(&p, &x, &mut scratch);
                for &isa in &levels {
                    let mut got = vec![f32::NAN; oh * ow];
                    let o = Out::init(&mut got);
                    run_isa(isa, &p, prepared, &wk, 0.25, r, Activation::Relu6, o);
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() < 1e-5, "{isa:?} {k}x{k}/{stride} {h}x{w}");
                    }
                }
            }
        }
    }
}
