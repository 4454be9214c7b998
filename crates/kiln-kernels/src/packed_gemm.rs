//! kiln's own AVX-512 GEMM for convolutions, `C[m × n] = act(A · B + bias (+ R))`, with the
//! weight `A` packed once at load and the epilogue applied from registers.
//!
//! `A` (the weight, `m × k`) is packed at load into panels of [`MR`] rows stored `[k][MR]`; `B`
//! (the input or its im2col, `k × n`, row-major) is copied per k block into contiguous `KC × 32`
//! tiles. Each `MR × 32` tile of `C` accumulates in 24 registers; the last k block adds bias and
//! residual and applies the activation before its single store: no pass over `C` after.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::act::Activation;

/// Rows of the weight per packed panel (and per tile).
pub(crate) const MR: usize = 12;
/// AVX-512 vectors per tile row.
const NV: usize = 2;
/// Columns per tile.
const NR: usize = NV * 16;

/// A weight `[m × k]` packed for [`run`]: k blocks of [`KC`], within each all row panels of
/// [`MR`] rows stored `[k][MR]` (zero-padded rows), so that one k block of the whole weight is
/// one contiguous stream, in the order the kernel reads it.
#[derive(Debug, Clone)]
pub(crate) struct PackedA {
    m: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedA {
    pub(crate) fn new(a: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(a.len(), m * k);
        let panels = m.div_ceil(MR);
        let mut data = vec![0f32; panels * k * MR];
        for i in 0..m {
            let (p, r) = (i / MR, i % MR);
            for kk in 0..k {
                data[Self::offset(panels, k, p, kk) + r] = a[i * k + kk];
            }
        }
        Self { m, k, data }
    }

    /// Where row `r = 0` of panel `p` at depth `kk` lives.
    #[inline(always)]
    fn offset(panels: usize, k: usize, p: usize, kk: usize) -> usize {
        let (kb, ki) = (kk / KC * KC, kk % KC);
        let kc = (k - kb).min(KC);
        kb * panels * MR + (p * kc + ki) * MR
    }

    pub(crate) fn panels(&self) -> usize {
        self.m.div_ceil(MR)
    }
}

/// Whether this CPU can run the packed GEMM (AVX-512F).
pub(crate) fn supported() -> bool {
    crate::depthwise::Isa::detect() == crate::depthwise::Isa::Avx512
}

/// Whether a dense convolution uses the packed GEMM: opt-in with `KILN_PACKED_GEMM=1`, on CPUs
/// that support it. Off by default: inside whole networks it is still 5–15% slower than the `gemm`
/// crate (MobileNetV2 and ResNet-50, one thread, CPU time), although faster on hot single layers
/// in the criterion benchmarks.
pub(crate) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| supported() && std::env::var("KILN_PACKED_GEMM").is_ok_and(|v| v == "1"))
}

/// Depth of a k block: a packed `KC × 32` tile of `B` is 16 KiB, it stays in L1 while every row
/// panel of the block runs over it.
const KC: usize = 128;

/// Column tiles per packed block of B: `KC × 512` floats, 512 KiB, in L2.
const NC_TILES: usize = 16;

/// Packed weight bytes per block of row panels (per k block), kept in L2 while the column tiles
/// go by.
const PANEL_BLOCK_BYTES: usize = 512 << 10;

/// Computes row panels `panels` and column tiles `tiles` of
/// `c[m × n] = act(a · b[k × n] + bias (+ res))`; `c`, `res` have row stride `n`.
///
/// Loop order: k blocks of [`KC`] ⊃ blocks of [`NC_TILES`] column tiles (B packed once per block,
/// read row by row) ⊃ blocks of row panels (in L2) ⊃ column tiles ⊃ row panels. Partial sums go through `c` between k blocks; the
/// last block applies the epilogue.
///
/// # Safety
/// AVX-512F must be available ([`supported`]); `b` must hold `k × n` elements, `c` (and `res`)
/// `m × n`; no other thread may touch the parts of `c` in these panels × tiles.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn run(
    a: &PackedA,
    b: *const f32,
    n: usize,
    bias: &[f32],
    res: Option<*const f32>,
    act: Activation,
    c: *mut f32,
    panels: std::ops::Range<usize>,
    tiles: std::ops::Range<usize>,
) {
    let k = a.k;
    let (lo, hi) = act.bounds();
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    // Packed B for one k block × up to NC_TILES column tiles, `[tile][kk][NR]`; every element
    // read is written by the packing first. Reused across calls on this thread.
    let mut bbuf = BBUF.with(|b| b.take());
    bbuf.resize(k.min(KC) * tiles.len().min(NC_TILES) * NR, 0.0);
    let mut kb = 0;
    while kb < k {
        let kc = (k - kb).min(KC);
        let (first, last) = (kb == 0, kb + kc == k);
        let block = (PANEL_BLOCK_BYTES / (kc * MR * 4)).max(1);
        let mut tb = tiles.start;
        while tb < tiles.end {
            let te = (tb + NC_TILES).min(tiles.end);
            // Pack B[kb..kb + kc, tiles tb..te] row by row: each row is read front to back
            // (prefetch-friendly), zeros past the last column.
            let (j0, j1) = (tb * NR, (te * NR).min(n));
            for kk in 0..kc {
                let src = b.add((kb + kk) * n);
                let mut j = j0;
                while j < j1 {
                    let t = (j - j0) / NR;
                    let dst = bbuf.as_mut_ptr().add((t * kc + kk) * NR);
                    for v in 0..NV {
                        let m = mask((j1 - j).saturating_sub(v * 16).min(16));
                        _mm512_storeu_ps(
                            dst.add(v * 16),
                            _mm512_maskz_loadu_ps(m, src.add(j + v * 16)),
                        );
                    }
                    j += NR;
                }
            }
            let mut pb = panels.start;
            while pb < panels.end {
                let pe = (pb + block).min(panels.end);
                for t in tb..te {
                    let j0 = t * NR;
                    let cols = (n - j0).min(NR);
                    let ms: [__mmask16; NV] =
                        std::array::from_fn(|v| mask(cols.saturating_sub(v * 16).min(16)));
                    let bt = bbuf.as_ptr().add((t - tb) * kc * NR);
                    for p in pb..pe {
                        let ap = a.data.as_ptr().add(PackedA::offset(a.panels(), k, p, kb));
                        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
                        let rows = (a.m - p * MR).min(MR);
                        if !first {
                            for (r, accr) in acc.iter_mut().enumerate().take(rows) {
                                let off = (p * MR + r) * n + j0;
                                for v in 0..NV {
                                    accr[v] = _mm512_maskz_loadu_ps(ms[v], c.add(off + v * 16));
                                }
                            }
                        }
                        let mut bp = bt;
                        // The next panel's weights, fetched while this one computes (the first
                        // column tile streams the weight from memory).
                        let next = ap.wrapping_add(kc * MR);
                        for kk in 0..kc {
                            if t == tb {
                                _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(kk * MR) as *const i8);
                                _mm_prefetch::<_MM_HINT_T1>(
                                    next.wrapping_add(3 * kc * MR + kk * MR) as *const i8,
                                );
                            }
                            let bv: [__m512; NV] =
                                std::array::from_fn(|v| _mm512_loadu_ps(bp.add(v * 16)));
                            let ak = ap.add(kk * MR);
                            for (r, accr) in acc.iter_mut().enumerate() {
                                let av = _mm512_set1_ps(*ak.add(r));
                                for v in 0..NV {
                                    accr[v] = _mm512_fmadd_ps(av, bv[v], accr[v]);
                                }
                            }
                            bp = bp.add(NR);
                        }
                        for (r, accr) in acc.iter().enumerate().take(rows) {
                            let i = p * MR + r;
                            let off = i * n + j0;
                            let vb = _mm512_set1_ps(bias[i]);
                            for v in 0..NV {
                                if ms[v] == 0 {
                                    break;
                                }
                                let mut y = accr[v];
                                if last {
                                    y = _mm512_add_ps(y, vb);
                                    if let Some(rp) = res {
                                        y = _mm512_add_ps(
                                            y,
                                            _mm512_maskz_loadu_ps(ms[v], rp.add(off + v * 16)),
                                        );
                                    }
                                    y = _mm512_min_ps(_mm512_max_ps(y, vlo), vhi);
                                }
                                _mm512_mask_storeu_ps(c.add(off + v * 16), ms[v], y);
                            }
                        }
                    }
                }
                pb = pe;
            }
            tb = te;
        }
        kb += kc;
    }
    BBUF.with(|b| b.set(bbuf));
}

thread_local! {
    static BBUF: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn mask(lanes: usize) -> __mmask16 {
    if lanes >= 16 {
        0xffff
    } else {
        ((1u32 << lanes) - 1) as __mmask16
    }
}

/// Column tiles of an `n`-column output.
pub(crate) fn tiles(n: usize) -> usize {
    n.div_ceil(NR)
}
