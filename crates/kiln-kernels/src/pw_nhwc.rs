//! 1×1 convolutions producing channels-last output, with the bias, an optional residual and the
//! activation applied in registers: the fused block's expand and project steps, and the 1×1
//! head of MobileNetV2 / EfficientNet-Lite.
//!
//! The weight is packed once at load into 32-channel panels `[tile][cin][32]`; the input is read
//! in place with any strides (channels-first `[cin][px]` or channels-last `[px][cin]`), one
//! broadcast per input channel and pixel; each `12 × 32` tile of the output is finished in
//! registers and stored once. No operand is repacked per call, and no second pass runs over the
//! output. Without AVX-512 the same contract runs on the `gemm` crate plus a separate epilogue.

use crate::act::Activation;
use crate::gemm_f32::sgemm_strided;
use crate::out::{filled_vec, Out};

/// Micro-tile shapes, both 24 accumulators: `12 pixels × 32 channels` (two vectors), or
/// `6 × 64` (four) when the output channels are a multiple of 64 — fewer broadcasts per FMA
/// and six input pointers instead of twelve, which leaves the general registers unspilled.
const NARROW: (usize, usize) = (12, 2);
const WIDE: (usize, usize) = (6, 4);
/// Packed weight bytes of one K block (see `run_tiles`): well inside a 48 KiB L1.
const K_BLOCK_BYTES: usize = 32 * 1024;
/// Input bytes of a chunk of pixels that every tile and K block of a task visits in turn (see
/// `run_tiles`): an eighth of a 2 MiB L2.
const CHUNK_BYTES: usize = 256 * 1024;
/// Packed weight bytes a task keeps hot while it walks its pixels (a quarter of the L2).
pub(crate) const GROUP_BYTES: usize = 512 * 1024;

/// Where the input of a [`Pointwise`] lies: element (channel `ci`, pixel `px`) at
/// `ci · channel_stride + px · pixel_stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strides {
    /// Distance between channels.
    pub channel: usize,
    /// Distance between pixels.
    pub pixel: usize,
}

impl Strides {
    /// Channels-last pixels of `c` channels: `[px][c]`.
    pub fn channels_last(c: usize) -> Self {
        Self {
            channel: 1,
            pixel: c,
        }
    }

    /// Channels-first planes of `plane` pixels: `[c][plane]`.
    pub fn channels_first(plane: usize) -> Self {
        Self {
            channel: plane,
            pixel: 1,
        }
    }
}

/// A 1×1 convolution writing channels-last output: `out[px][co] = act(bias[co] +
/// Σ_ci w[co][ci] · x(ci, px) (+ res[px][co]))`.
#[derive(Debug, Clone)]
pub struct Pointwise {
    cin: usize,
    cout: usize,
    /// AVX-512: `[cout.div_ceil(32)][cin][32]`, zero-padded channels. Otherwise the weight as
    /// given, `[cout][cin]`.
    weight: Vec<f32>,
    /// Zero-padded to whole tiles (AVX-512).
    bias: Vec<f32>,
    act: Activation,
    packed: bool,
    /// AVX-512 vectors per micro-tile (2 or 4).
    nv: usize,
}

impl Pointwise {
    /// Packs `weight` `[cout][cin]` (row-major) and `bias` `[cout]`.
    pub fn new(weight: &[f32], bias: &[f32], cin: usize, cout: usize, act: Activation) -> Self {
        assert_eq!(weight.len(), cin * cout, "pointwise weight size");
        assert_eq!(bias.len(), cout, "pointwise bias size");
        assert!(cin > 0 && cout > 0);
        let packed = crate::depthwise::Isa::detect() == crate::depthwise::Isa::Avx512;
        if !packed {
            return Self {
                cin,
                cout,
                weight: weight.to_vec(),
                bias: bias.to_vec(),
                act,
                packed,
                nv: NARROW.1,
            };
        }
        let nv = if cout.is_multiple_of(64) {
            WIDE.1
        } else {
            NARROW.1
        };
        let nr = 16 * nv;
        let tiles = cout.div_ceil(nr);
        let mut panels = vec![0f32; tiles * cin * nr];
        for co in 0..cout {
            let (t, j) = (co / nr, co % nr);
            for ci in 0..cin {
                panels[(t * cin + ci) * nr + j] = weight[co * cin + ci];
            }
        }
        let mut b = bias.to_vec();
        b.resize(tiles * nr, 0.0);
        Self {
            cin,
            cout,
            weight: panels,
            bias: b,
            act,
            packed,
            nv,
        }
    }

    /// Input channels.
    pub fn cin(&self) -> usize {
        self.cin
    }

    /// Output channels.
    pub fn cout(&self) -> usize {
        self.cout
    }

    /// Writes `npx` pixels of output into `out` (`[npx][cout]`). `res`, if any, has the
    /// output's layout.
    pub fn run(&self, x: &[f32], st: Strides, npx: usize, res: Option<&[f32]>, out: &mut [f32]) {
        self.run_into(x, st, npx, res, Out::init(out))
    }

    /// [`Pointwise::run`] into memory that may be uninitialised: every one of the first
    /// `npx · cout` floats of `out` is written (and only what was written is read back).
    pub(crate) fn run_into(
        &self,
        x: &[f32],
        st: Strides,
        npx: usize,
        res: Option<&[f32]>,
        mut out: Out<'_>,
    ) {
        if npx == 0 {
            return;
        }
        let last = (self.cin - 1) * st.channel + (npx - 1) * st.pixel;
        assert!(x.len() > last, "pointwise: input too short");
        assert!(out.len() >= npx * self.cout, "pointwise: output too short");
        if let Some(r) = res {
            assert!(r.len() >= npx * self.cout, "pointwise: residual too short");
        }
        #[cfg(target_arch = "x86_64")]
        if self.packed {
            // SAFETY: `packed` is only set when AVX-512F was detected; the asserts bound every
            // read and write. The micro-tiles store each output element (all `cout` channels of
            // all `npx` pixels, the last tile masked) before any K block reads it back.
            unsafe {
                let (x, res, out) = (x.as_ptr(), res.map(|r| r.as_ptr()), out.as_mut_ptr());
                if self.nv == WIDE.1 {
                    self.run_uniform::<{ WIDE.0 }, { WIDE.1 }>(x, st, npx, res, out)
                } else {
                    self.run_uniform::<{ NARROW.0 }, { NARROW.1 }>(x, st, npx, res, out)
                }
            };
            return;
        }
        let mut out = out.slice(0..npx * self.cout);
        // SAFETY: the asserts above bound every element the strides reach; `out` is exclusive.
        // The GEMM does not read its output (`read_dst` false in `sgemm_strided`).
        unsafe {
            sgemm_strided(
                self.cout,
                npx,
                self.cin,
                self.weight.as_ptr(),
                (self.cin, 1),
                x.as_ptr(),
                (st.channel, st.pixel),
                out.as_mut_ptr(),
                (1, self.cout),
            )
        };
        // SAFETY: the GEMM wrote all `npx · cout` elements (`k = cin > 0`).
        let out = unsafe { out.assume_init() };
        epilogue_channels_last(
            out,
            &self.bias,
            res.map(|r| &r[..npx * self.cout]),
            self.act,
        );
    }

    /// Output-channel tiles the packed kernel computes.
    pub(crate) fn tiles(&self) -> usize {
        self.cout.div_ceil(16 * self.nv)
    }

    /// Output channels per micro-tile.
    pub(crate) fn tile_channels(&self) -> usize {
        16 * self.nv
    }

    /// Pixels per micro-tile.
    pub(crate) fn tile_pixels(&self) -> usize {
        if self.nv == WIDE.1 {
            WIDE.0
        } else {
            NARROW.0
        }
    }

    /// Whether the AVX-512 kernel runs (else the `gemm` crate fallback).
    pub(crate) fn is_packed(&self) -> bool {
        self.packed
    }

    /// All pixels of a channels-last `[npx][cin]` input; returns `[npx][cout]`.
    pub fn forward(&self, x: &[f32], npx: usize) -> Vec<f32> {
        assert_eq!(x.len(), npx * self.cin, "pointwise: input size");
        let per = npx.div_ceil(crate::current_threads() * 2).max(NARROW.0);
        let fill = |mut out: Out<'_>| {
            let all = out.len();
            let optr = crate::out::SharedOut(out.as_mut_ptr());
            let chunk = per * self.cout;
            crate::par_for(all.div_ceil(chunk), |i| {
                let optr = &optr;
                let (a, b) = (i * chunk, ((i + 1) * chunk).min(all));
                // SAFETY: chunks are disjoint and inside the output.
                let o = unsafe { Out::from_raw(optr.0.add(a), b - a) };
                self.run_into(
                    &x[i * per * self.cin..],
                    Strides::channels_last(self.cin),
                    (b - a) / self.cout,
                    None,
                    o,
                )
            });
        };
        // SAFETY: the chunks cover the output and `run_into` writes each in full.
        unsafe { filled_vec(npx * self.cout, fill) }
    }

    /// The packed kernel for input pixels at a uniform stride (1×1 convolutions): one base
    /// pointer and the whole K in one pass — the lightest loop for the small K of
    /// MobileNetV2's expand convolutions, where per-tile overheads show.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_uniform<const MR: usize, const NV: usize>(
        &self,
        x: *const f32,
        st: Strides,
        npx: usize,
        res: Option<*const f32>,
        out: *mut f32,
    ) {
        let nr = 16 * NV;
        for t in 0..self.tiles() {
            let n = (self.cout - t * nr).min(nr);
            let m: [u16; NV] = std::array::from_fn(|v| lane_mask(n.saturating_sub(16 * v)));
            let panel = self.weight.as_ptr().add(t * self.cin * nr);
            let bias = self.bias.as_ptr().add(t * nr);
            let at = |px: usize| {
                (
                    x.add(px * st.pixel),
                    res.map(|r| r.add(px * self.cout + t * nr)),
                    out.add(px * self.cout + t * nr),
                )
            };
            let ahead = nr / 16;
            let mut px = 0;
            while px + MR <= npx {
                let (xp, rp, op) = at(px);
                // The next tile's panel into L2 during the first micro-tiles, a line per K
                // step (see `run_tiles`).
                let j = px / MR;
                if t + 1 < self.tiles() && j < ahead {
                    let pf = panel.add(self.cin * nr + j * self.cin * 16);
                    tile_uniform::<MR, NV, true>(self, panel, bias, xp, st, rp, op, m, pf);
                } else {
                    tile_uniform::<MR, NV, false>(self, panel, bias, xp, st, rp, op, m, panel);
                }
                px += MR;
            }
            let (xp, rp, op) = at(px);
            macro_rules! rest {
                ($($r:literal)*) => {
                    match npx - px {
                        $($r if $r < MR => tile_uniform::<$r, NV, false>(self, panel, bias, xp, st, rp, op, m, panel),)*
                        _ => {}
                    }
                };
            }
            rest!(1 2 3 4 5 6 7 8 9 10 11);
        }
    }

    /// The packed kernel over `npx` output pixels of a convolution on channel-blocked data
    /// (see [`KMap`] for the input, [`Blocked`] for the output): pixel `i` reads its input at
    /// `x + pixel_at(i)` plus each K segment's offset, and writes its output (and reads `res`,
    /// laid out alike) at pixel index `i` of `out`, for the output-channel tiles `tiles`.
    ///
    /// # Safety
    /// AVX-512F must be available and the weight packed ([`Pointwise::is_packed`]); every input
    /// element reached, and `npx` pixels of `out` (and `res`) in the tiles' channels, must be
    /// in bounds, the output not accessed by anyone else.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn run_avx512(
        &self,
        x: *const f32,
        k: &KMap,
        pixel_at: impl Fn(usize) -> usize,
        npx: usize,
        res: Option<*const f32>,
        out: *mut f32,
        o: Blocked,
        tiles: std::ops::Range<usize>,
    ) {
        if self.nv == WIDE.1 {
            self.run_tiles::<{ WIDE.0 }, { WIDE.1 }>(x, k, pixel_at, npx, res, out, o, tiles)
        } else {
            self.run_tiles::<{ NARROW.0 }, { NARROW.1 }>(x, k, pixel_at, npx, res, out, o, tiles)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_tiles<const MR: usize, const NV: usize>(
        &self,
        x: *const f32,
        k: &KMap,
        pixel_at: impl Fn(usize) -> usize,
        npx: usize,
        res: Option<*const f32>,
        out: *mut f32,
        o: Blocked,
        tiles: std::ops::Range<usize>,
    ) {
        let nr = 16 * NV;
        debug_assert!(
            o.block.is_multiple_of(nr) || o.block == self.cout,
            "tiles straddle blocks"
        );
        // K blocks whose packed weight (kc × nr floats) stays in L1 while the pixel tiles go
        // by; partial sums wait in the output between blocks. Their segments (runs of
        // contiguous input channels) are found once here, not per micro-tile.
        let kc = (K_BLOCK_BYTES / (nr * 4)).max(1);
        let kblocks: Vec<KBlock> = (0..self.cin)
            .step_by(kc)
            .map(|k0| {
                let ks = k0..(k0 + kc).min(self.cin);
                let segs = k.segments(ks.clone());
                (ks, segs)
            })
            .collect();
        // When the input is much larger than this task's weights (big maps, few channels), go
        // through the pixels in chunks whose input stays in L2 while every tile and K block
        // passes over it; otherwise (small maps, big weights) each weight block passes once.
        let group_w = tiles.len() * self.cin * nr * 4;
        // A chunk holds at least as much input as the task's weights, which it reads again
        // from L2: with big weights (deep layers, a batch) small chunks would re-read them
        // more than they save.
        let cb = CHUNK_BYTES.max(group_w);
        let chunk = if group_w <= GROUP_BYTES && npx * self.cin * 4 > 2 * cb {
            (cb / (self.cin * 4)).max(1).next_multiple_of(MR)
        } else {
            npx
        };
        for c0 in (0..npx).step_by(chunk) {
            let c1 = (c0 + chunk).min(npx);
            for t in tiles.clone() {
                let n = (self.cout - t * nr).min(nr);
                let m: [u16; NV] = std::array::from_fn(|v| lane_mask(n.saturating_sub(16 * v)));
                let panel = self.weight.as_ptr().add(t * self.cin * nr);
                let bias = self.bias.as_ptr().add(t * nr);
                let ch = t * nr;
                let base = (ch / o.block) * o.plane + ch % o.block;
                let at = |px: usize| {
                    let off = base + px * o.block;
                    (res.map(|r| r.add(off)), out.add(off))
                };
                for (ks, segs) in &kblocks {
                    let wp = panel.add(ks.start * nr);
                    let (first, last) = (ks.start == 0, ks.end == self.cin);
                    // The weights that follow this block (the next block, or the next tile's
                    // first) come into L2 while it computes, a line per K step of the first
                    // micro-tiles: on small maps a block serves few micro-tiles and would
                    // otherwise wait on memory.
                    let next = wp.add(ks.len() * nr);
                    let ahead = (kc * nr / 16).div_ceil(ks.len());
                    let mut px = c0;
                    while px + MR <= c1 {
                        let (rp, op) = at(px);
                        let xs = std::array::from_fn(|r| x.wrapping_add(pixel_at(px + r)));
                        let j = (px - c0) / MR;
                        if j < ahead {
                            let pf = next.wrapping_add(j * ks.len() * 16);
                            tile::<MR, NV, true>(
                                self, wp, bias, xs, segs, first, last, rp, op, o.block, m, pf,
                            );
                        } else {
                            tile::<MR, NV, false>(
                                self, wp, bias, xs, segs, first, last, rp, op, o.block, m, wp,
                            );
                        }
                        px += MR;
                    }
                    let (rp, op) = at(px);
                    macro_rules! rest {
                        ($($r:literal)*) => {
                            match c1 - px {
                                $($r if $r < MR => {
                                    let xs = std::array::from_fn(|r| x.wrapping_add(pixel_at(px + r)));
                                    tile::<$r, NV, false>(self, wp, bias, xs, segs, first, last, rp, op, o.block, m, wp)
                                })*
                                _ => {}
                            }
                        };
                    }
                    rest!(1 2 3 4 5 6 7 8 9 10 11);
                }
            }
        }
    }
}

/// A K block of `run_tiles`: its range and its input segments `(offset, length)`.
type KBlock = (std::ops::Range<usize>, Vec<(usize, usize)>);

/// Where the reduction index `k` of a convolution's implicit GEMM reads its input, relative to
/// each output pixel's base: `k = tap · cin + ci`, channel `ci` in block `ci / block` (blocks
/// `plane` floats apart), at `taps[tap] + (ci / block) · plane + ci % block`.
#[derive(Debug, Clone)]
pub(crate) struct KMap {
    /// Offsets of the kernel positions.
    pub taps: Vec<usize>,
    /// Input channels.
    pub cin: usize,
    /// Channels per block of the input.
    pub block: usize,
    /// Distance between channel blocks.
    pub plane: usize,
}

impl KMap {
    /// The K range `ks` as runs of contiguous channels: `(offset, length)`.
    fn segments(&self, ks: std::ops::Range<usize>) -> Vec<(usize, usize)> {
        let mut segs = Vec::new();
        let mut k = ks.start;
        while k < ks.end {
            let (t, ci) = (k / self.cin, k % self.cin);
            let (b, c) = (ci / self.block, ci % self.block);
            let len = (self.block - c).min(ks.end - k);
            let off = self.taps[t] + b * self.plane + c;
            // Consecutive taps whose channels lie back to back in memory (a row of a
            // few-channel stem's kernel) make one longer run.
            match segs.last_mut() {
                Some((o, l)) if *o + *l == off => *l += len,
                _ => segs.push((off, len)),
            }
            k += len;
        }
        segs
    }
}

/// A channel-blocked layout: channel `c` of pixel `p` at `(c / block) · plane + p · block +
/// c % block`. Channels-last is the case `block = channels`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blocked {
    /// Channels per block.
    pub block: usize,
    /// Distance between blocks.
    pub plane: usize,
}

/// `y[px][c] = act(y[px][c] + bias[c] (+ res[px][c]))` over channels-last pixels.
fn epilogue_channels_last(y: &mut [f32], bias: &[f32], res: Option<&[f32]>, act: Activation) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::depthwise::Isa;
        match Isa::detect() {
            // SAFETY: the features were detected on this CPU.
            Isa::Avx512 => return unsafe { epilogue_cl_avx512(y, bias, res, act) },
            Isa::Avx2Fma => return unsafe { epilogue_cl_avx2(y, bias, res, act) },
            Isa::Baseline => {}
        }
    }
    epilogue_cl_body(y, bias, res, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn epilogue_cl_avx512(y: &mut [f32], bias: &[f32], res: Option<&[f32]>, act: Activation) {
    epilogue_cl_body(y, bias, res, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn epilogue_cl_avx2(y: &mut [f32], bias: &[f32], res: Option<&[f32]>, act: Activation) {
    epilogue_cl_body(y, bias, res, act)
}

#[inline(always)]
fn epilogue_cl_body(y: &mut [f32], bias: &[f32], res: Option<&[f32]>, act: Activation) {
    let (lo, hi) = act.bounds();
    let c = bias.len();
    match res {
        Some(r) => {
            for (px, rp) in y.chunks_exact_mut(c).zip(r.chunks_exact(c)) {
                for ((v, &b), &rv) in px.iter_mut().zip(bias).zip(rp) {
                    *v = (*v + b + rv).max(lo).min(hi);
                }
            }
        }
        None => {
            for px in y.chunks_exact_mut(c) {
                for (v, &b) in px.iter_mut().zip(bias) {
                    *v = (*v + b).max(lo).min(hi);
                }
            }
        }
    }
}

/// The low `n` lanes (`n ≤ 16`).
#[inline(always)]
fn lane_mask(n: usize) -> u16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as u16
    }
}

/// `R` pixels × one tile of `16·NV` channels, input pixels at a uniform stride: pixel `r`,
/// channel `ci` at `x[ci·channel + r·pixel]`; the whole K, bias / residual / activation in
/// registers.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_uniform<const R: usize, const NV: usize, const PF: bool>(
    pw: &Pointwise,
    panel: *const f32,
    bias: *const f32,
    x: *const f32,
    st: Strides,
    res: Option<*const f32>,
    out: *mut f32,
    m: [u16; NV],
    pf: *const f32,
) {
    use std::arch::x86_64::*;
    let b: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(bias.add(16 * v)));
    let mut acc = [b; R];
    for ci in 0..pw.cin {
        let w: [__m512; NV] =
            std::array::from_fn(|v| _mm512_loadu_ps(panel.add(ci * 16 * NV + 16 * v)));
        if PF {
            _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(16 * ci) as *const i8);
        }
        let xr = x.add(ci * st.channel);
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*xr.add(r * st.pixel));
            for v in 0..NV {
                a[v] = _mm512_fmadd_ps(xv, w[v], a[v]);
            }
        }
    }
    store_tile(pw, &mut acc, res, out, pw.cout, m, true);
}

/// Adds the residual, applies the activation (when `last`) and stores `R` rows of a tile,
/// `ostride` floats apart.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_tile<const R: usize, const NV: usize>(
    pw: &Pointwise,
    acc: &mut [[std::arch::x86_64::__m512; NV]; R],
    res: Option<*const f32>,
    out: *mut f32,
    ostride: usize,
    m: [u16; NV],
    last: bool,
) {
    use std::arch::x86_64::*;
    let (lo, hi) = pw.act.bounds();
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    for (r, a) in acc.iter_mut().enumerate() {
        let o = out.add(r * ostride);
        for v in 0..NV {
            if m[v] == 0 {
                break;
            }
            let mut y = a[v];
            if last {
                if let Some(rp) = res {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m[v], rp.add(r * ostride + 16 * v)));
                }
                y = _mm512_min_ps(_mm512_max_ps(y, vlo), vhi);
            }
            _mm512_mask_storeu_ps(o.add(16 * v), m[v], y);
        }
    }
}

/// `R` pixels × one tile of `16·NV` channels over one K block: the weight rows from `wp` on
/// meet, segment by segment, `xs[r][off + 0..len]`; the block's partial sums start from the
/// bias (`first`) or the output, and end in the output, finished when `last`. Output rows
/// (and the residual's) are `ostride` floats apart.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const NV: usize, const PF: bool>(
    pw: &Pointwise,
    mut wp: *const f32,
    bias: *const f32,
    xs: [*const f32; R],
    segs: &[(usize, usize)],
    first: bool,
    last: bool,
    res: Option<*const f32>,
    out: *mut f32,
    ostride: usize,
    m: [u16; NV],
    mut pf: *const f32,
) {
    use std::arch::x86_64::*;
    let mut acc: [[__m512; NV]; R] = std::array::from_fn(|r| {
        std::array::from_fn(|v| {
            if first {
                _mm512_loadu_ps(bias.add(16 * v))
            } else {
                _mm512_maskz_loadu_ps(m[v], out.add(r * ostride + 16 * v))
            }
        })
    });
    for &(off, len) in segs {
        let xt = xs.map(|p| p.wrapping_add(off));
        for ci in 0..len {
            let w: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(wp.add(16 * v)));
            wp = wp.add(16 * NV);
            if PF {
                _mm_prefetch::<_MM_HINT_T1>(pf as *const i8);
                pf = pf.wrapping_add(16);
            }
            for (a, p) in acc.iter_mut().zip(&xt) {
                let x = _mm512_set1_ps(*p.add(ci));
                for v in 0..NV {
                    a[v] = _mm512_fmadd_ps(x, w[v], a[v]);
                }
            }
        }
    }
    store_tile(pw, &mut acc, res, out, ostride, m, last);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both layouts of the input, with and without residual, ragged pixel and channel counts,
    /// on the packed kernel and on the `gemm` fallback.
    #[test]
    fn matches_naive() {
        for (cin, cout, npx) in [(24, 144, 560), (16, 96, 13), (160, 960, 49), (3, 20, 5)] {
            let w: Vec<f32> = (0..cin * cout)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let b: Vec<f32> = (0..cout).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
            let x: Vec<f32> = (0..cin * (npx + 3))
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0)
                .collect();
            let res: Vec<f32> = (0..npx * cout).map(|i| (i % 11) as f32 * 0.2).collect();
            let packed = Pointwise::new(&w, &b, cin, cout, Activation::Relu6);
            let plain = Pointwise {
                packed: false,
                weight: w.clone(),
                bias: b.clone(),
                ..packed.clone()
            };
            for st in [
                Strides::channels_first(npx + 3),
                Strides::channels_last(cin),
            ] {
                for with_res in [false, true] {
                    for pw in [&packed, &plain] {
                        let r = with_res.then_some(&res[..]);
                        let mut out = vec![f32::NAN; npx * cout];
                        pw.run(&x, st, npx, r, &mut out);
                        for px in 0..npx {
                            for co in 0..cout {
                                let acc: f32 = b[co]
                                    + (0..cin)
                                        .map(|ci| {
                                            w[co * cin + ci] * x[ci * st.channel + px * st.pixel]
                                        })
                                        .sum::<f32>()
                                    + r.map_or(0.0, |r| r[px * cout + co]);
                                let want = acc.clamp(0.0, 6.0);
                                let got = out[px * cout + co];
                                assert!(
                                    (got - want).abs() < 1e-4,
                                    "{cin}->{cout} {st:?} res={with_res} packed={} px {px} co {co}: \
                                     {got} vs {want}",
                                    pw.packed
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
