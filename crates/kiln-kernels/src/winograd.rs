//! Winograd F(2×2, 3×3) for dense 3×3 stride-1 convolutions on channel-blocked (or
//! channels-last) data: each 2×2 block of output pixels comes from a 4×4 block of input through
//! 16 products instead of 36, so the multiply-adds drop 2.25×.
//!
//! The input transform `V = Bᵀ d B` (additions only), 16 GEMMs `M_ξ = V_ξ · U_ξ` on the 1×1
//! kernel ([`Pointwise`], weights `U = G g Gᵀ` transformed and packed once), and the output
//! transform `Y = Aᵀ M A` with bias, residual and activation before the only store. With small
//! transformed weights this runs per chunk of tiles sized so that `V` and `M` stay in L2, a
//! chunk per thread; with large ones (over 1 MiB: deep layers, small maps) on all tiles at
//! once, the threads splitting the 16 GEMMs, so that each weight streams from memory once. The
//! transforms' coefficients are 0, ±1 and ±½, so the rounding stays that of a direct
//! convolution's order of magnitude (the parity tests hold it to the same tolerance).
//!
//! Worth it where the activations dominate the work (ResNet's 56×56 to 14×14 stages, and 7×7
//! for a batch); for one image's 7×7 map the transformed weights (16/9 of the original) would
//! stream from memory for a handful of tiles, so below [`MIN_PIXELS`] the direct kernel runs.

use std::cell::Cell;

use crate::act::Activation;
use crate::out::{filled_vec, Out, SharedOut};
use crate::pw_nhwc::{Pointwise, Strides};

/// Bytes of transformed input and products a chunk of tiles keeps (about half the L2).
const CHUNK_BYTES: usize = 1024 * 1024;

/// Floats between consecutive positions' matrices beyond their size.
const SKEW: usize = 16;

/// Output pixels below which a 3×3 convolution stays direct (see the module docs).
pub(crate) const MIN_PIXELS: usize = 150;

thread_local! {
    /// Per-thread scratch: the transformed input and the 16 products of a chunk.
    static SCRATCH: Cell<(Vec<f32>, Vec<f32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// The transformed weights of one 3×3 convolution: one `cin → cout` GEMM per position `ξ` of
/// the 4×4 transformed tile.
#[derive(Debug, Clone)]
pub(crate) struct Winograd {
    cin: usize,
    cout: usize,
    gemms: Vec<Pointwise>,
}

impl Winograd {
    /// From a PyTorch-layout weight `[cout][cin][3][3]`.
    pub(crate) fn new(weight: &[f32], cin: usize, cout: usize) -> Self {
        assert_eq!(weight.len(), cout * cin * 9, "winograd: weight size");
        let mut u = vec![vec![0f32; cout * cin]; 16];
        for co in 0..cout {
            for ci in 0..cin {
                let g = &weight[(co * cin + ci) * 9..(co * cin + ci + 1) * 9];
                // G g: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2.
                let gg: [[f32; 3]; 4] = std::array::from_fn(|i| {
                    std::array::from_fn(|j| {
                        let (a, b, c) = (g[j], g[3 + j], g[6 + j]);
                        match i {
                            0 => a,
                            1 => 0.5 * (a + b + c),
                            2 => 0.5 * (a - b + c),
                            _ => c,
                        }
                    })
                });
                // (G g) Gᵀ, the same on the columns.
                for (i, r) in gg.iter().enumerate() {
                    let row = [
                        r[0],
                        0.5 * (r[0] + r[1] + r[2]),
                        0.5 * (r[0] - r[1] + r[2]),
                        r[2],
                    ];
                    for (j, v) in row.into_iter().enumerate() {
                        u[i * 4 + j][co * cin + ci] = v;
                    }
                }
            }
        }
        let zero = vec![0f32; cout];
        let gemms = u
            .iter()
            .map(|w| Pointwise::new(w, &zero, cin, cout, Activation::None))
            .collect();
        Self { cin, cout, gemms }
    }

    /// The convolution (padding 1 on every side) over `images` channel-blocked images: input
    /// `[cin / bi][n][h][w][bi]` given as its zero-bordered copy `xp` (`hp × wp` per image and
    /// block, the image at row 1, column 1, `hp ≥ 2·⌈h/2⌉ + 2`, `wp` alike), output and
    /// residual `[cout / bo][n][h][w][bo]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        xp: &[f32],
        n: usize,
        (h, w): (usize, usize),
        (hp, wp): (usize, usize),
        (bi, bo): (usize, usize),
        bias: &[f32],
        act: Activation,
        res: Option<&[f32]>,
    ) -> Vec<f32> {
        let (cin, cout) = (self.cin, self.cout);
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        assert!(
            hp >= 2 * th + 2 && wp >= 2 * tw + 2,
            "winograd: padded copy too small"
        );
        assert_eq!(xp.len(), n * cin * hp * wp, "winograd: padded input size");
        let npx = n * h * w;
        if let Some(r) = res {
            assert_eq!(r.len(), npx * cout, "winograd: residual size");
        }
        let tiles = n * th * tw;
        let fill = |mut out: Out<'_>| {
            let o = SharedOut(out.as_mut_ptr());
            let geo = Geometry {
                n,
                th,
                tw,
                h,
                w,
                hp,
                wp,
                bi,
                bo,
            };
            if 16 * cin * cout * 4 > CHUNK_BYTES {
                // Big transformed weights (deep layers, small maps): all tiles at once, so that each
                // position's weights stream once, the threads splitting the 16 GEMMs.
                let (mut v, mut m) = SCRATCH.with(|s| s.take());
                let (sv, sm) = (tiles * cin + SKEW, tiles * cout + SKEW);
                v.resize(16 * sv, 0.0);
                m.resize(16 * sm, 0.0);
                let parts = (2 * crate::current_threads()).min(tiles);
                let per = tiles.div_ceil(parts);
                let vp = SharedOut(v.as_mut_ptr());
                crate::par_for(tiles.div_ceil(per), |c| {
                    let vp = &vp;
                    let ts = c * per..((c + 1) * per).min(tiles);
                    // SAFETY: `v` holds 16 matrices of `tiles` rows, `sv` apart; this task writes
                    // the rows of its own tiles.
                    unsafe { transform_input(xp, &geo, cin, ts, 0, vp.0, sv) };
                });
                crate::par_chunks_mut(&mut m, sm, |xi, mx| {
                    self.gemms[xi].run(
                        &v[xi * sv..xi * sv + tiles * cin],
                        Strides::channels_last(cin),
                        tiles,
                        None,
                        &mut mx[..tiles * cout],
                    )
                });
                crate::par_for(tiles.div_ceil(per), |c| {
                    let o = &o;
                    let ts = c * per..((c + 1) * per).min(tiles);
                    // SAFETY: this task's tiles own their output pixels; the pointer covers `out`.
                    unsafe { transform_output(&m, sm, &geo, cout, ts, 0, bias, act, res, o.0) };
                });
                SCRATCH.with(|s| s.set((v, m)));
                return;
            }
            // Otherwise chunks of tiles that fit CHUNK_BYTES, as many as a multiple of the threads,
            // each transformed, multiplied and transformed back by one thread.
            let cmax = (CHUNK_BYTES / (16 * (cin + cout) * 4)).max(6);
            let threads = crate::current_threads();
            let mut chunks = tiles.div_ceil(cmax);
            if threads > 1 && tiles >= 6 * threads {
                chunks = chunks.next_multiple_of(threads);
            }
            let per = tiles.div_ceil(chunks.max(1));
            let chunks = tiles.div_ceil(per);
            crate::par_for(chunks, |c| {
                let o = &o;
                let t0 = c * per;
                let t1 = (t0 + per).min(tiles);
                let (mut v, mut m) = SCRATCH.with(|s| s.take());
                let nt = t1 - t0;
                // Each position's matrix a little more than its size apart: at a multiple of 4 KiB
                // the 16 streams of a transform would all fall in one L1 set.
                let (sv, sm) = (nt * cin + SKEW, nt * cout + SKEW);
                v.resize(16 * sv, 0.0);
                m.resize(16 * sm, 0.0);
                // SAFETY: `v` holds 16 matrices of `nt` rows, `sv` apart.
                unsafe { transform_input(xp, &geo, cin, t0..t1, t0, v.as_mut_ptr(), sv) };
                for (xi, g) in self.gemms.iter().enumerate() {
                    g.run(
                        &v[xi * sv..xi * sv + nt * cin],
                        Strides::channels_last(cin),
                        nt,
                        None,
                        &mut m[xi * sm..xi * sm + nt * cout],
                    );
                }
                // SAFETY: this chunk's tiles own their output pixels; the pointer covers `out`.
                unsafe { transform_output(&m, sm, &geo, cout, t0..t1, t0, bias, act, res, o.0) };
                SCRATCH.with(|s| s.set((v, m)));
            });
        };
        // SAFETY: both ways above hand every tile (so every output pixel, all `cout` channels)
        // to `transform_output`, which writes each pixel of its tiles that lies inside the map.
        unsafe { filled_vec(npx * cout, fill) }
    }
}

/// 16 floats from `src[p..]`, zeros past `cw` (a fixed-size load in the common `cw = 16`).
#[inline(always)]
fn load16(src: &[f32], p: usize, cw: usize) -> [f32; 16] {
    if cw == 16 {
        src[p..p + 16].try_into().expect("16 floats")
    } else {
        let mut a = [0f32; 16];
        a[..cw].copy_from_slice(&src[p..p + cw]);
        a
    }
}

/// Sizes shared by the transforms.
struct Geometry {
    n: usize,
    th: usize,
    tw: usize,
    h: usize,
    w: usize,
    hp: usize,
    wp: usize,
    bi: usize,
    bo: usize,
}

/// `V_ξ[t][ci]` for the tiles `ts`, `V = Bᵀ d B` with `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0;
/// 0 1 0 -1]`: `v` holds 16 matrices `sv` floats apart, tile `t` in row `t - row0`.
///
/// # Safety
/// Rows `ts - row0` (`cin` floats each) of the 16 matrices must be writable and written by no
/// one else during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn transform_input(
    xp: &[f32],
    g: &Geometry,
    cin: usize,
    ts: std::ops::Range<usize>,
    row0: usize,
    v: *mut f32,
    sv: usize,
) {
    let need = g.n * (cin / g.bi) * g.hp * g.wp * g.bi;
    assert!(xp.len() >= need, "winograd: padded input too short");
    #[cfg(target_arch = "x86_64")]
    if crate::depthwise::Isa::detect() == crate::depthwise::Isa::Avx512 && g.bi.is_multiple_of(16) {
        // SAFETY: AVX-512F was detected; every 4×4 input block lies in the padded copy
        // (asserted), the stores are the caller's contract.
        return unsafe { transform_input_avx512(xp, g, cin, ts, row0, v, sv) };
    }
    // SAFETY: the caller's contract.
    unsafe { transform_input_body(xp, g, cin, ts, row0, v, sv) }
}

/// [`transform_input`] 16 channels per vector (`bi` a multiple of 16).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_input_avx512(
    xp: &[f32],
    g: &Geometry,
    cin: usize,
    ts: std::ops::Range<usize>,
    row0: usize,
    v: *mut f32,
    sv: usize,
) {
    use std::arch::x86_64::*;
    let plane = g.n * g.hp * g.wp * g.bi;
    let xp = xp.as_ptr();
    for t in ts {
        let k = t - row0;
        let (i, q) = (t / (g.th * g.tw), t % (g.th * g.tw));
        let (ty, tx) = (q / g.tw, q % g.tw);
        for b in 0..cin / g.bi {
            let base = b * plane + ((i * g.hp + 2 * ty) * g.wp + 2 * tx) * g.bi;
            for c0 in (0..g.bi).step_by(16) {
                let mut d = [_mm512_setzero_ps(); 16];
                for (rs, dv) in d.iter_mut().enumerate() {
                    *dv = _mm512_loadu_ps(xp.add(base + ((rs / 4) * g.wp + rs % 4) * g.bi + c0));
                }
                let mut e = [_mm512_setzero_ps(); 16];
                for s in 0..4 {
                    let (d0, d1, d2, d3) = (d[s], d[4 + s], d[8 + s], d[12 + s]);
                    e[s] = _mm512_sub_ps(d0, d2);
                    e[4 + s] = _mm512_add_ps(d1, d2);
                    e[8 + s] = _mm512_sub_ps(d2, d1);
                    e[12 + s] = _mm512_sub_ps(d1, d3);
                }
                for r in 0..4 {
                    let (a0, a1, a2, a3) = (e[4 * r], e[4 * r + 1], e[4 * r + 2], e[4 * r + 3]);
                    let vals = [
                        _mm512_sub_ps(a0, a2),
                        _mm512_add_ps(a1, a2),
                        _mm512_sub_ps(a2, a1),
                        _mm512_sub_ps(a1, a3),
                    ];
                    for (s, val) in vals.into_iter().enumerate() {
                        let dst = (4 * r + s) * sv + k * cin + b * g.bi + c0;
                        _mm512_storeu_ps(v.add(dst), val);
                    }
                }
            }
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_input_body(
    xp: &[f32],
    g: &Geometry,
    cin: usize,
    ts: std::ops::Range<usize>,
    row0: usize,
    v: *mut f32,
    sv: usize,
) {
    let plane = g.n * g.hp * g.wp * g.bi;
    for t in ts.clone() {
        let k = t - row0;
        let (i, q) = (t / (g.th * g.tw), t % (g.th * g.tw));
        let (ty, tx) = (q / g.tw, q % g.tw);
        for b in 0..cin / g.bi {
            let base = b * plane + ((i * g.hp + 2 * ty) * g.wp + 2 * tx) * g.bi;
            for c0 in (0..g.bi).step_by(16) {
                let cw = (g.bi - c0).min(16);
                let mut d = [[0f32; 16]; 16];
                for (rs, dr) in d.iter_mut().enumerate() {
                    *dr = load16(xp, base + ((rs / 4) * g.wp + rs % 4) * g.bi + c0, cw);
                }
                let mut e = [[0f32; 16]; 16];
                for s in 0..4 {
                    for l in 0..16 {
                        let (d0, d1, d2, d3) = (d[s][l], d[4 + s][l], d[8 + s][l], d[12 + s][l]);
                        e[s][l] = d0 - d2;
                        e[4 + s][l] = d1 + d2;
                        e[8 + s][l] = d2 - d1;
                        e[12 + s][l] = d1 - d3;
                    }
                }
                for r in 0..4 {
                    let row = &e[4 * r..4 * r + 4];
                    let mut vals = [[0f32; 16]; 4];
                    for l in 0..16 {
                        vals[0][l] = row[0][l] - row[2][l];
                        vals[1][l] = row[1][l] + row[2][l];
                        vals[2][l] = row[2][l] - row[1][l];
                        vals[3][l] = row[1][l] - row[3][l];
                    }
                    for (s, val) in vals.iter().enumerate() {
                        let dst = (4 * r + s) * sv + k * cin + b * g.bi + c0;
                        // SAFETY: row k of matrix 4r + s, the caller's contract.
                        unsafe { std::ptr::copy_nonoverlapping(val.as_ptr(), v.add(dst), cw) };
                    }
                }
            }
        }
    }
}

/// The output pixels of the tiles `ts` from the products `m` (16 matrices `sm` apart, tile `t`
/// in row `t - row0`):
/// `Y = Aᵀ M A`, `Aᵀ = [1 1 1 0; 0 1 -1 -1]`, plus bias (and residual), activation.
///
/// # Safety
/// `out` must hold `n·h·w·cout` floats, the tiles' pixels touched by no one else.
#[allow(clippy::too_many_arguments)]
unsafe fn transform_output(
    m: &[f32],
    sm: usize,
    g: &Geometry,
    cout: usize,
    ts: std::ops::Range<usize>,
    row0: usize,
    bias: &[f32],
    act: Activation,
    res: Option<&[f32]>,
    out: *mut f32,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::depthwise::Isa::detect() == crate::depthwise::Isa::Avx512
        && cout.is_multiple_of(16)
        && g.bo.is_multiple_of(16)
    {
        assert!(m.len() >= 15 * sm + (ts.end - row0) * cout && bias.len() >= cout);
        // SAFETY: AVX-512F was detected; the products and bias are asserted, the output (and
        // the residual, laid out alike) are the caller's contract.
        return unsafe { transform_output_avx512(m, sm, g, cout, ts, row0, bias, act, res, out) };
    }
    // SAFETY: the caller's contract.
    unsafe { transform_output_body(m, sm, g, cout, ts, row0, bias, act, res, out) }
}

/// [`transform_output`] 16 channels per vector (`cout` and `bo` multiples of 16).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_output_avx512(
    m: &[f32],
    sm: usize,
    g: &Geometry,
    cout: usize,
    ts: std::ops::Range<usize>,
    row0: usize,
    bias: &[f32],
    act: Activation,
    res: Option<&[f32]>,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let (lo, hi) = act.bounds();
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let npx = g.n * g.h * g.w;
    let m = m.as_ptr();
    for t in ts.clone() {
        let k = t - row0;
        let (i, q) = (t / (g.th * g.tw), t % (g.th * g.tw));
        let (ty, tx) = (q / g.tw, q % g.tw);
        for c0 in (0..cout).step_by(16) {
            let mut mm = [_mm512_setzero_ps(); 16];
            for (xi, mv) in mm.iter_mut().enumerate() {
                *mv = _mm512_loadu_ps(m.add(xi * sm + k * cout + c0));
            }
            let bv = _mm512_loadu_ps(bias.as_ptr().add(c0));
            let mut s = [_mm512_setzero_ps(); 8];
            for j in 0..4 {
                let (m0, m1, m2, m3) = (mm[j], mm[4 + j], mm[8 + j], mm[12 + j]);
                s[j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                s[4 + j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
            }
            let (blk, within) = (c0 / g.bo, c0 % g.bo);
            for dy in 0..2 {
                let oy = 2 * ty + dy;
                if oy >= g.h {
                    break;
                }
                let r = &s[4 * dy..4 * dy + 4];
                let ys = [
                    _mm512_add_ps(_mm512_add_ps(r[0], r[1]), r[2]),
                    _mm512_sub_ps(_mm512_sub_ps(r[1], r[2]), r[3]),
                ];
                for (dx, y) in ys.into_iter().enumerate() {
                    let ox = 2 * tx + dx;
                    if ox >= g.w {
                        break;
                    }
                    let p = (i * g.h + oy) * g.w + ox;
                    let off = blk * npx * g.bo + p * g.bo + within;
                    let mut y = _mm512_add_ps(y, bv);
                    if let Some(rv) = res {
                        y = _mm512_add_ps(y, _mm512_loadu_ps(rv.as_ptr().add(off)));
                    }
                    _mm512_storeu_ps(out.add(off), _mm512_min_ps(_mm512_max_ps(y, vlo), vhi));
                }
            }
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_output_body(
    m: &[f32],
    sm: usize,
    g: &Geometry,
    cout: usize,
    ts: std::ops::Range<usize>,
    row0: usize,
    bias: &[f32],
    act: Activation,
    res: Option<&[f32]>,
    out: *mut f32,
) {
    let (lo, hi) = act.bounds();
    let npx = g.n * g.h * g.w;
    for t in ts.clone() {
        let k = t - row0;
        let (i, q) = (t / (g.th * g.tw), t % (g.th * g.tw));
        let (ty, tx) = (q / g.tw, q % g.tw);
        for c0 in (0..cout).step_by(16) {
            let cw = (cout - c0).min(16);
            let mut mm = [[0f32; 16]; 16];
            for (xi, row) in mm.iter_mut().enumerate() {
                *row = load16(m, xi * sm + k * cout + c0, cw);
            }
            let bv = load16(bias, c0, cw);
            // Rows: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (each a row of 4 positions).
            let mut s = [[0f32; 16]; 8];
            for j in 0..4 {
                for l in 0..16 {
                    let (m0, m1, m2, m3) = (mm[j][l], mm[4 + j][l], mm[8 + j][l], mm[12 + j][l]);
                    s[j][l] = m0 + m1 + m2;
                    s[4 + j][l] = m1 - m2 - m3;
                }
            }
            // The 16 channels c0.. lie in one block of the output (blocks are multiples of 16
            // channels, or all of them).
            let (blk, within) = (c0 / g.bo, c0 % g.bo);
            for dy in 0..2 {
                let oy = 2 * ty + dy;
                if oy >= g.h {
                    break;
                }
                let r = &s[4 * dy..4 * dy + 4];
                let mut ys = [[0f32; 16]; 2];
                for l in 0..16 {
                    ys[0][l] = r[0][l] + r[1][l] + r[2][l];
                    ys[1][l] = r[1][l] - r[2][l] - r[3][l];
                }
                for (dx, y) in ys.iter().enumerate() {
                    let ox = 2 * tx + dx;
                    if ox >= g.w {
                        break;
                    }
                    let p = (i * g.h + oy) * g.w + ox;
                    let off = blk * npx * g.bo + p * g.bo + within;
                    let rv = match res {
                        Some(rv) => load16(rv, off, cw),
                        None => [0.0; 16],
                    };
                    let mut vals = [0f32; 16];
                    for l in 0..16 {
                        vals[l] = (y[l] + bv[l] + rv[l]).max(lo).min(hi);
                    }
                    // SAFETY: `off..off + cw` is pixel p, channels c0.., inside `out`; this
                    // chunk alone writes it.
                    unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), out.add(off), cw) };
                }
            }
        }
    }
}
