//! Dense convolutions on channels-last (`[n][h][w][c]`) or channel-blocked
//! (`[c/64][n][h][w][64]`) activations, as an implicit GEMM: each `6 pixels × 64 channels` (or
//! `12 × 32`) output tile accumulates over the kernel's taps and the input channels straight
//! from the (zero-bordered) input, with the weight packed once as `[tile][ky][kx][cin][64]`. No
//! im2col matrix, no per-call packing, bias / residual / activation in registers; 3×3 stride-1
//! convolutions on enough pixels go to [`crate::winograd`]. The CPU path of ResNet (and of the
//! MobileNetV2 / EfficientNet-Lite stems).

use std::cell::Cell;

use crate::conv::{Conv2d, KernelKind};
use crate::out::{filled_vec, Out, SharedOut};
use crate::pw_nhwc::{Blocked, KMap, Pointwise, GROUP_BYTES};
use crate::winograd::{self, Winograd};

/// A padded copy's `(images, hp, wp, channels, top, left)`.
type PadGeom = (usize, usize, usize, usize, usize, usize);

/// Padded copies a thread keeps, one per geometry: a network's stages each have a few.
const PADDED_KEPT: usize = 12;

thread_local! {
    /// Zero-bordered input copies by geometry, most recently used last.
    static PADDED: Cell<Vec<(PadGeom, Vec<f32>)>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on `x` (`images` channels-last images of `c` channels, `h × w`) with a zero border
/// `[top, bottom, left, right]` around each image — `x` itself when there is none, else a copy
/// kept per thread and geometry: from the second pass on its border is still zero and only the
/// interior is copied, in parallel.
fn with_padded<R>(
    x: &[f32],
    images: usize,
    (h, w): (usize, usize),
    c: usize,
    [t, b, l, r]: [usize; 4],
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    if [t, b, l, r] == [0; 4] {
        return f(x);
    }
    let (hp, wp) = (h + t + b, w + l + r);
    let want = (images, hp, wp, c, t, l);
    let mut kept = PADDED.with(|cell| cell.take());
    let mut padded = match kept.iter().position(|(g, _)| *g == want) {
        Some(i) => kept.remove(i).1,
        None => vec![0f32; images * hp * wp * c],
    };
    struct Dst(*mut f32);
    // SAFETY: the tasks write disjoint rows.
    unsafe impl Sync for Dst {}
    let dst = Dst(padded.as_mut_ptr());
    let rows = images * h;
    let per = rows.div_ceil(crate::current_threads() * 2).max(1);
    crate::par_for(rows.div_ceil(per), |task| {
        let dst = &dst;
        for row in task * per..((task + 1) * per).min(rows) {
            let (i, y) = (row / h, row % h);
            let d = ((i * hp + y + t) * wp + l) * c;
            let src = &x[row * w * c..(row + 1) * w * c];
            // SAFETY: row `y` of image `i` lies inside the padded copy (its size is that of
            // the geometry), and only this task writes it.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.0.add(d), w * c) };
        }
    });
    let y = f(&padded);
    kept.push((want, padded));
    if kept.len() > PADDED_KEPT {
        kept.remove(0);
    }
    PADDED.with(|cell| cell.set(kept));
    y
}

/// Whether 3×3 convolutions may take the Winograd path (`KILN_WINOGRAD=0` turns it off, to
/// compare).
fn winograd_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_WINOGRAD").map_or(true, |v| v != "0"))
}

impl Conv2d {
    /// `act(conv(x) + bias (+ residual))` on channels-last data: `x` `[n, h, w, cin]`, the
    /// residual and the result `[n, oh, ow, cout]`. Dense (ungrouped, not depthwise)
    /// convolutions; parallel with [`crate::par_for`]. 3×3 stride-1 convolutions with padding 1
    /// on 150 output pixels or more take Winograd F(2×2, 3×3) (`KILN_WINOGRAD=0` turns it off).
    /// Without AVX-512 the other convolutions transpose around the channels-first kernels.
    pub fn forward_nhwc(
        &self,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        res: Option<&[f32]>,
    ) -> Vec<f32> {
        let s = self.shape();
        self.forward_layout(x, n, h, w, res, s.cin, s.cout)
    }

    /// As [`Conv2d::forward_nhwc`], on the channel-blocked layout (see
    /// [`crate::nchw_to_blocked`]): `x` `[cin / bi][n][h][w][bi]`, the residual and the result
    /// `[cout / bo][n][oh][ow][bo]`, `bi`, `bo` their [`crate::channel_block`]. Each 64-channel
    /// tile of the output is then one contiguous stream, and each K block of the input a few —
    /// what the hardware prefetchers follow best on maps larger than the L2.
    pub fn forward_blocked(
        &self,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        res: Option<&[f32]>,
    ) -> Vec<f32> {
        let s = self.shape();
        let (bi, bo) = (crate::channel_block(s.cin), crate::channel_block(s.cout));
        self.forward_layout(x, n, h, w, res, bi, bo)
    }

    /// Both layouts: channel blocks of `bi` (input) and `bo` (output) channels.
    #[allow(clippy::too_many_arguments)]
    fn forward_layout(
        &self,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        res: Option<&[f32]>,
        bi: usize,
        bo: usize,
    ) -> Vec<f32> {
        let s = self.shape();
        assert!(
            s.groups == 1 && self.kind() != KernelKind::Depthwise,
            "channels-last convolutions: dense convolutions only"
        );
        assert_eq!(x.len(), n * h * w * s.cin, "input size");
        let (oh, ow) = s.out_hw(h, w);
        let (k, cin, cout) = (s.kernel, s.cin, s.cout);
        let img_out = oh * ow * cout;
        if let Some(r) = res {
            assert_eq!(r.len(), n * img_out, "residual size");
        }
        let images = n * (cin / bi);
        if k == 3
            && s.stride == 1
            && s.pad == [1; 4]
            && n * oh * ow >= winograd::MIN_PIXELS
            && winograd_on()
        {
            let wino = self
                .wino
                .get_or_init(|| Winograd::new(self.weight(), cin, cout));
            let (hp, wp) = (2 * h.div_ceil(2) + 2, 2 * w.div_ceil(2) + 2);
            return with_padded(
                x,
                images,
                (h, w),
                bi,
                [1, hp - h - 1, 1, wp - w - 1],
                |xp| {
                    wino.forward(
                        xp,
                        n,
                        (h, w),
                        (hp, wp),
                        (bi, bo),
                        self.bias(),
                        self.activation(),
                        res,
                    )
                },
            );
        }
        let pw = self.nhwc_packed();
        if !pw.is_packed() {
            use crate::transpose::relayout;
            let xc = relayout(x, n, cin, h * w, bi, false);
            let rc = res.map(|r| relayout(r, n, cout, oh * ow, bo, false));
            let y = self.forward(&xc, n, h, w, rc.as_deref());
            return relayout(&y, n, cout, oh * ow, bo, true);
        }
        let [t, b, l, r] = s.pad;
        let (hp, wp) = (h + t + b, w + l + r);
        with_padded(x, images, (h, w), bi, s.pad, |src| {
            // Every output pixel of every image is one row of the implicit GEMM: the images of a
            // batch share each weight block while it is in L1, and small maps (7×7) fill whole
            // micro-tiles. Each pixel's input offset comes from a table (no division per tile).
            let npx = n * oh * ow;
            let offsets: Vec<usize> = (0..npx)
                .map(|p| {
                    let (i, q) = (p / (oh * ow), p % (oh * ow));
                    ((i * hp + (q / ow) * s.stride) * wp + (q % ow) * s.stride) * bi
                })
                .collect();
            let kmap = KMap {
                taps: (0..k * k).map(|i| ((i / k) * wp + i % k) * bi).collect(),
                cin,
                block: bi,
                plane: n * hp * wp * bi,
            };
            let layout = Blocked {
                block: bo,
                plane: npx * bo,
            };
            let tiles = pw.tiles();
            let per_group = (GROUP_BYTES / (k * k * cin * pw.tile_channels() * 4)).clamp(1, tiles);
            let groups = tiles.div_ceil(per_group);
            let threads = crate::current_threads();
            let px_parts = if threads > 1 {
                (2 * threads).div_ceil(groups)
            } else {
                1
            };
            let per = npx.div_ceil(px_parts).next_multiple_of(pw.tile_pixels());
            let parts = npx.div_ceil(per);
            let fill = |mut out: Out<'_>| {
                let o = SharedOut(out.as_mut_ptr());
                crate::par_for(groups * parts, |task| {
                    let o = &o;
                    let (g, q) = (task / parts, task % parts);
                    let tiles = g * per_group..((g + 1) * per_group).min(tiles);
                    let (p0, p1) = (q * per, ((q + 1) * per).min(npx));
                    let offs = &offsets[p0..p1];
                    // SAFETY: AVX-512F is available (`is_packed`); every tap of every pixel lies in the
                    // (padded) input, whose size follows from the output size; this task alone writes
                    // channel tiles `tiles` of pixels p0..p1 (pixel p0 of a block at `p0 · bo`).
                    unsafe {
                        pw.run_avx512(
                            src.as_ptr(),
                            &kmap,
                            |i| offs[i],
                            p1 - p0,
                            res.map(|r| r[p0 * bo..].as_ptr()),
                            o.0.add(p0 * bo),
                            layout,
                            tiles,
                        )
                    };
                });
            };
            // SAFETY: the tasks cover every channel tile of every output pixel, and the
            // micro-kernel stores every element of its tiles.
            unsafe { filled_vec(n * img_out, fill) }
        })
    }

    /// The weight reordered to `[cout][ky][kx][cin]` and packed for the channels-last kernel,
    /// on first use.
    fn nhwc_packed(&self) -> &Pointwise {
        self.nhwc.get_or_init(|| {
            let s = self.shape();
            let (k, cin, cout) = (s.kernel, s.cin, s.cout);
            let wt = self.weight();
            let mut ohwi = vec![0f32; wt.len()];
            for co in 0..cout {
                for ci in 0..cin {
                    for t in 0..k * k {
                        ohwi[(co * k * k + t) * cin + ci] = wt[(co * cin + ci) * k * k + t];
                    }
                }
            }
            Pointwise::new(&ohwi, self.bias(), k * k * cin, cout, self.activation())
        })
    }
}

/// 3×3 stride-2 max pooling with 1 pixel of padding (ResNet's), channels-last:
/// `[n, h, w, c]` → `([n, oh, ow, c], oh, ow)`; padding never wins (as PyTorch's `-inf`
/// padding).
pub fn max_pool_3x3_s2_nhwc(
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
) -> (Vec<f32>, usize, usize) {
    assert_eq!(x.len(), n * h * w * c, "max pool: input size");
    let (oh, ow) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
    let fill = |mut out: Out<'_>| {
        if c == 0 {
            return;
        }
        let o = SharedOut(out.as_mut_ptr());
        crate::par_for(n * oh, |row| {
            let o = &o;
            let (i, oy) = (row / oh, row % oh);
            let xi = &x[i * h * w * c..(i + 1) * h * w * c];
            // SAFETY: output row `row` (`ow · c` floats) is inside the output and this task's
            // alone.
            let mut orow = unsafe { Out::from_raw(o.0.add(row * ow * c), ow * c) };
            orow.fill(f32::NEG_INFINITY);
            // SAFETY: every element was just written.
            let orow = unsafe { orow.assume_init() };
            for ox in 0..ow {
                let d = &mut orow[ox * c..(ox + 1) * c];
                for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                    for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                        let p = &xi[(iy * w + ix) * c..(iy * w + ix + 1) * c];
                        d.iter_mut().zip(p).for_each(|(a, &v)| *a = a.max(v));
                    }
                }
            }
        });
    };
    // SAFETY: the row tasks cover the output (nothing to write when `c` is 0).
    let out = unsafe { filled_vec(n * oh * ow * c, fill) };
    (out, oh, ow)
}

/// Global average pooling, channels-last: `[n, hw, c]` → `[n, c]`.
pub fn avg_pool_nhwc(x: &[f32], n: usize, hw: usize, c: usize) -> Vec<f32> {
    assert_eq!(x.len(), n * hw * c, "avg pool: input size");
    let mut out = vec![0f32; n * c];
    for (img, p) in x.chunks(hw * c.max(1)).zip(out.chunks_mut(c.max(1))) {
        for px in img.chunks(c.max(1)) {
            p.iter_mut().zip(px).for_each(|(a, &v)| *a += v);
        }
        let scale = 1.0 / hw.max(1) as f32;
        p.iter_mut().for_each(|a| *a *= scale);
    }
    out
}

/// Global average pooling of the channel-blocked layout (see [`crate::nchw_to_blocked`]):
/// `[c / b][n][hw][b]` → `[n, c]`.
pub fn avg_pool_blocked(x: &[f32], n: usize, hw: usize, c: usize) -> Vec<f32> {
    assert_eq!(x.len(), n * hw * c, "avg pool: input size");
    let b = crate::channel_block(c).max(1);
    // Each block is a channels-last tensor of its own: pooled `[c / b][n][b]`, then reordered.
    let pooled = avg_pool_nhwc(x, n * (c / b), hw, b);
    let mut out = vec![0f32; n * c];
    for (blk, per_block) in pooled.chunks(n * b).enumerate() {
        for (i, v) in per_block.chunks(b).enumerate() {
            out[i * c + blk * b..i * c + (blk + 1) * b].copy_from_slice(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, vals};
    use crate::{Activation, ConvShape};

    /// Against the channels-first kernels, on ResNet's shapes (7×7/2 stem, 3×3 stride 1 and 2,
    /// 1×1 stride 1 and 2, residual), ragged channel and pixel counts, both layouts, 1 to 3
    /// threads.
    #[test]
    fn matches_channels_first() {
        let cases = [
            (3, 16, 7, 2, 3, 23, 20, true),
            (16, 40, 3, 1, 1, 9, 13, true),
            (24, 32, 3, 2, 1, 14, 11, false),
            (32, 64, 1, 1, 0, 7, 7, true),
            (32, 48, 1, 2, 0, 9, 8, false),
            (48, 64, 3, 1, 1, 8, 10, true),
            (40, 128, 3, 2, 1, 11, 9, false),
            // Channel-blocked on both sides (several blocks), and on one side only.
            (128, 192, 3, 1, 1, 9, 7, true),
            (192, 128, 1, 2, 0, 10, 9, false),
            (3, 64, 7, 2, 3, 20, 19, false),
            (64, 48, 3, 1, 1, 6, 5, true),
            (128, 64, 3, 2, 1, 13, 10, true),
            (64, 128, 3, 2, 1, 8, 9, false),
        ];
        for (cin, cout, k, st, p, h, w, with_res) in cases {
            let s = ConvShape {
                cin,
                cout,
                kernel: k,
                stride: st,
                groups: 1,
                pad: [p; 4],
            };
            let n = 2;
            let conv = Conv2d::new(
                s,
                &vals(cout * cin * k * k, 2),
                Some(&vals(cout, 3)),
                Activation::Relu,
            );
            let [_, _, oh, ow] = conv.out_dims(n, h, w);
            let x = vals(n * cin * h * w, 1);
            let res = with_res.then(|| vals(n * cout * oh * ow, 4));
            let want = conv.forward(&x, n, h, w, res.as_deref());
            let x_cl = crate::nchw_to_nhwc(&x, n, cin, h * w);
            let res_cl = res
                .as_ref()
                .map(|r| crate::nchw_to_nhwc(r, n, cout, oh * ow));
            let x_bl = crate::nchw_to_blocked(&x, n, cin, h * w);
            let res_bl = res
                .as_ref()
                .map(|r| crate::nchw_to_blocked(r, n, cout, oh * ow));
            let want_bl = crate::nchw_to_blocked(&want, n, cout, oh * ow);
            let want = crate::nchw_to_nhwc(&want, n, cout, oh * ow);
            for threads in 1..=3 {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let got = pool.install(|| conv.forward_nhwc(&x_cl, n, h, w, res_cl.as_deref()));
                let diff = max_diff(&got, &want);
                assert!(
                    diff < 1e-4,
                    "{s:?} {h}x{w} {threads} threads: max diff {diff}"
                );
                let got = pool.install(|| conv.forward_blocked(&x_bl, n, h, w, res_bl.as_deref()));
                let diff = max_diff(&got, &want_bl);
                assert!(
                    diff < 1e-4,
                    "blocked {s:?} {h}x{w} {threads} threads: max diff {diff}"
                );
            }
        }
    }

    /// The Winograd path (3×3, stride 1, enough pixels) against the channels-first kernels:
    /// odd and even sizes, several images, residual, both layouts, channel counts that are and
    /// are not multiples of 16 (vector and generic transforms), chunked and all-at-once weights
    /// (above 1 MiB transformed), 1 to 3 threads.
    #[test]
    fn winograd_matches_channels_first() {
        let cases = [
            (64, 64, 2, 13, 17, true),
            (128, 64, 1, 20, 15, false),
            (40, 24, 3, 9, 11, true),
            (160, 192, 1, 14, 14, true),
            (256, 128, 2, 9, 10, false),
        ];
        for (cin, cout, n, h, w, with_res) in cases {
            assert!(n * h * w >= crate::winograd::MIN_PIXELS);
            let s = ConvShape {
                cin,
                cout,
                kernel: 3,
                stride: 1,
                groups: 1,
                pad: [1; 4],
            };
            let conv = Conv2d::new(
                s,
                &vals(cout * cin * 9, 5),
                Some(&vals(cout, 6)),
                Activation::Relu6,
            );
            let x = vals(n * cin * h * w, 7);
            let res = with_res.then(|| vals(n * cout * h * w, 8));
            let want = conv.forward(&x, n, h, w, res.as_deref());
            for threads in 1..=3 {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let x_bl = crate::nchw_to_blocked(&x, n, cin, h * w);
                let r_bl = res
                    .as_ref()
                    .map(|r| crate::nchw_to_blocked(r, n, cout, h * w));
                let got = pool.install(|| conv.forward_blocked(&x_bl, n, h, w, r_bl.as_deref()));
                let got = crate::blocked_to_nchw(&got, n, cout, h * w);
                let diff = max_diff(&got, &want);
                assert!(
                    diff < 1e-4,
                    "blocked {s:?} {n}x{h}x{w} {threads} thr: {diff}"
                );
                let x_cl = crate::nchw_to_nhwc(&x, n, cin, h * w);
                let r_cl = res.as_ref().map(|r| crate::nchw_to_nhwc(r, n, cout, h * w));
                let got = pool.install(|| conv.forward_nhwc(&x_cl, n, h, w, r_cl.as_deref()));
                let got = crate::nhwc_to_nchw(&got, n, cout, h * w);
                let diff = max_diff(&got, &want);
                assert!(diff < 1e-4, "nhwc {s:?} {n}x{h}x{w} {threads} thr: {diff}");
            }
        }
    }

    #[test]
    fn avg_pool_blocked_matches_channels_first() {
        for (n, c, hw) in [(2, 128, 5), (3, 40, 4)] {
            let x = vals(n * c * hw, 9);
            let got = avg_pool_blocked(&crate::nchw_to_blocked(&x, n, c, hw), n, hw, c);
            for i in 0..n {
                for ch in 0..c {
                    let want: f32 = x[(i * c + ch) * hw..(i * c + ch + 1) * hw]
                        .iter()
                        .sum::<f32>()
                        / hw as f32;
                    assert!((got[i * c + ch] - want).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn max_pool_matches_naive() {
        let (n, h, w, c) = (2, 7, 6, 5);
        let x = vals(n * h * w * c, 7);
        let (y, oh, ow) = max_pool_3x3_s2_nhwc(&x, n, h, w, c);
        assert_eq!((oh, ow), (4, 3));
        for i in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..c {
                        let mut m = f32::NEG_INFINITY;
                        for dy in 0..3 {
                            for dx in 0..3 {
                                let (iy, ix) =
                                    ((2 * oy + dy) as isize - 1, (2 * ox + dx) as isize - 1);
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    m = m
                                        .max(x[((i * h + iy as usize) * w + ix as usize) * c + ch]);
                                }
                            }
                        }
                        assert_eq!(y[((i * oh + oy) * ow + ox) * c + ch], m);
                    }
                }
            }
        }
    }
}
