//! The inverted residual (MobileNetV2, EfficientNet-Lite's MBConv) as one fused kernel:
//! 1×1 expand → depthwise → 1×1 project (+ residual), computed strip by strip of output rows,
//! on channels-last (`[h][w][c]`) activations.
//!
//! Run layer by layer, the expanded tensor (six times the block's input) is written to memory
//! by the expand GEMM, read and written again by the depthwise pass and read once more by the
//! project GEMM; at 112² or 56² it does not fit in L2, so the block is bound by memory traffic
//! and pays three allocations and three fork-joins. Here each thread owns a band of output rows
//! and walks it in strips sized so that the strip's expanded rows and depthwise output stay in
//! L2; expanded rows shared by two consecutive strips (the depthwise kernel's overlap) are kept,
//! not recomputed. A block is one fork-join, one allocation (its output), and its hidden
//! activations never leave the cache.
//!
//! Channels-last throughout: the depthwise kernel vectorises along channels ([`dw_nhwc`]), the
//! 1×1 kernels ([`Pointwise`]) read their input in place and finish their output in registers,
//! and a band of output rows is one contiguous range, so no layout change happens anywhere
//! between the first block of a network and its head.

use std::cell::Cell;
use std::sync::Arc;

use crate::conv::{Conv2d, KernelKind};
use crate::dw_nhwc;
use crate::out::{filled_vec, Out, SharedOut};
use crate::pw_nhwc::{Pointwise, Strides};

/// Target size of one strip's expanded rows (bytes); with the depthwise output beside it and the
/// project weight, a strip's working set stays well inside a 1–2 MiB L2.
const STRIP_BYTES: usize = 320 * 1024;

/// Padding of the depthwise convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DwPadding {
    /// The padding in the depthwise convolution's [`crate::ConvShape`].
    Fixed,
    /// TensorFlow "SAME": computed from the input size at each call, the odd pixel at the bottom
    /// and right.
    TfSame,
}

/// A fused inverted residual block over NCHW f32 slices. See the module documentation.
#[derive(Debug, Clone)]
pub struct InvertedResidual {
    expand: Option<Arc<Conv2d>>,
    dw: Arc<Conv2d>,
    project: Arc<Conv2d>,
    residual: bool,
    padding: DwPadding,
    /// The expand and project convolutions packed for the channels-last 1×1 kernel.
    expand_pw: Option<Pointwise>,
    project_pw: Pointwise,
    /// The depthwise weight transposed to `[k·k][channel]` for the channels-last kernel.
    dw_t: Vec<f32>,
    /// Target bytes of a strip's expanded rows ([`STRIP_BYTES`]; tests shrink it).
    strip_bytes: usize,
}

thread_local! {
    /// Strip buffers (expanded rows, depthwise output), reused across calls on the same thread.
    static STRIP: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

impl InvertedResidual {
    /// Fuses `expand` (1×1, optional: expansion factor 1 has none), `dw` (depthwise) and
    /// `project` (1×1). `residual` adds the block's input to the projection before its
    /// activation (stride 1, same channels). Panics if the three do not chain.
    pub fn new(
        expand: Option<Arc<Conv2d>>,
        dw: Arc<Conv2d>,
        project: Arc<Conv2d>,
        residual: bool,
        padding: DwPadding,
    ) -> Self {
        let d = dw.shape();
        assert_eq!(
            dw.kind(),
            KernelKind::Depthwise,
            "fused block: dw is not depthwise"
        );
        if let Some(e) = &expand {
            assert_eq!(
                e.kind(),
                KernelKind::Pointwise,
                "fused block: expand is not 1×1"
            );
            assert_eq!(e.shape().groups, 1, "fused block: grouped expand");
            assert_eq!(e.shape().cout, d.cin, "fused block: expand → dw channels");
        }
        let p = project.shape();
        assert_eq!(
            project.kind(),
            KernelKind::Pointwise,
            "fused block: project is not 1×1"
        );
        assert_eq!(p.groups, 1, "fused block: grouped project");
        assert_eq!(p.cin, d.cout, "fused block: dw → project channels");
        let cin = expand.as_ref().map_or(d.cin, |e| e.shape().cin);
        assert!(
            !residual || (d.stride == 1 && cin == p.cout),
            "fused block: residual needs stride 1 and cin == cout"
        );
        let kk = d.kernel * d.kernel;
        let mut dw_t = vec![0f32; kk * d.cout];
        for (ch, taps) in dw.weight().chunks(kk).enumerate() {
            for (t, &v) in taps.iter().enumerate() {
                dw_t[t * d.cout + ch] = v;
            }
        }
        let pw = |c: &Conv2d| {
            let s = c.shape();
            Pointwise::new(c.weight(), c.bias(), s.cin, s.cout, c.activation())
        };
        let expand_pw = expand.as_deref().map(pw);
        let project_pw = pw(&project);
        Self {
            expand_pw,
            project_pw,
            expand,
            dw_t,
            dw,
            project,
            residual,
            padding,
            strip_bytes: STRIP_BYTES,
        }
    }

    /// Input channels.
    pub fn cin(&self) -> usize {
        self.expand
            .as_ref()
            .map_or(self.dw.shape().cin, |e| e.shape().cin)
    }

    /// Output channels.
    pub fn cout(&self) -> usize {
        self.project.shape().cout
    }

    /// The depthwise padding `[top, bottom, left, right]` for an `h × w` input.
    pub fn dw_pad(&self, h: usize, w: usize) -> [usize; 4] {
        let s = self.dw.shape();
        match self.padding {
            DwPadding::Fixed => s.pad,
            DwPadding::TfSame => {
                let (t, b) = tf_same(h, s.kernel, s.stride);
                let (l, r) = tf_same(w, s.kernel, s.stride);
                [t, b, l, r]
            }
        }
    }

    /// Output height and width for an `h × w` input.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let s = crate::ConvShape {
            pad: self.dw_pad(h, w),
            ..self.dw.shape()
        };
        s.out_hw(h, w)
    }

    /// The block on `x` `[n][h][w][cin]` (channels-last, contiguous); returns
    /// `[n][oh][ow][cout]`. Parallel over bands of output rows (see [`crate::par_for`]).
    pub fn forward(&self, x: &[f32], n: usize, h: usize, w: usize) -> Vec<f32> {
        let cin = self.cin();
        assert_eq!(x.len(), n * cin * h * w, "input size");
        let (oh, ow) = self.out_hw(h, w);
        let cout = self.cout();
        let pad = self.dw_pad(h, w);
        let img_out = cout * oh * ow;
        let bands = crate::current_threads().min(oh).max(1);
        let fill = |mut out: Out<'_>| {
            for i in 0..n {
                let xi = &x[i * cin * h * w..(i + 1) * cin * h * w];
                let y = SharedOut(out.slice(i * img_out..(i + 1) * img_out).as_mut_ptr());
                crate::par_for(bands, |b| {
                    let y = &y;
                    let (r0, r1) = (b * oh / bands, (b + 1) * oh / bands);
                    let len = (r1 - r0) * ow * cout;
                    // SAFETY: rows r0..r1 of image i's output, inside it and disjoint between
                    // bands (no one else touches them during the call).
                    let yb = unsafe { Out::from_raw(y.0.add(r0 * ow * cout), len) };
                    self.band(xi, h, w, pad, (oh, ow), r0..r1, yb)
                });
            }
        };
        // SAFETY: the bands cover every row of every image, and `band` writes all of its rows.
        unsafe { filled_vec(n * img_out, fill) }
    }

    /// Output rows `rows` of one image (`y`: those rows, `[rows][ow][cout]`), strip by strip,
    /// on the calling thread.
    #[allow(clippy::too_many_arguments)]
    fn band(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        pad: [usize; 4],
        (oh, ow): (usize, usize),
        rows: std::ops::Range<usize>,
        mut y: Out<'_>,
    ) {
        debug_assert!(rows.end <= oh);
        let d = self.dw.shape();
        let (k, s, chid) = (d.kernel, d.stride, d.cout);
        let (cin, cout) = (self.cin(), self.cout());
        // Strip height: expanded rows (`(r - 1)·s + k` of them) about `strip_bytes`.
        let row_len = chid * w;
        let fit = (self.strip_bytes / (row_len * std::mem::size_of::<f32>()).max(1))
            .saturating_sub(k)
            / s
            + 1;
        let strip = fit.clamp(1, rows.len().max(1));
        let e_rows = ((strip - 1) * s + k).min(h);
        let e_len = if self.expand_pw.is_some() {
            e_rows * row_len
        } else {
            0
        };
        let mut buf = STRIP.with(|c| c.take());
        buf.resize(e_len + strip * ow * chid, 0.0);
        let (ebuf, dbuf) = buf.split_at_mut(e_len);
        // Global input rows held in `ebuf`, from its row 0.
        let mut have = 0..0;
        let mut a = rows.start;
        while a < rows.end {
            let b = (a + strip).min(rows.end);
            // Input rows this strip's windows cover, padding included, then clipped to the image.
            let lo = (a * s) as isize - pad[0] as isize;
            let hi = ((b - 1) * s + k) as isize - pad[0] as isize;
            let e0 = lo.max(0) as usize;
            let e1 = (hi.min(h as isize)).max(e0 as isize) as usize;
            assert!(e1 > e0, "fused block: a strip reads only padding");
            let hidden: &[f32] = match &self.expand_pw {
                Some(ex) => {
                    let mut done = e0;
                    if have.contains(&e0) {
                        // Rows the previous strip already expanded: move them to the front.
                        let keep = have.end.min(e1) - e0;
                        let off = (e0 - have.start) * row_len;
                        ebuf.copy_within(off..off + keep * row_len, 0);
                        done = e0 + keep;
                    }
                    if e1 > done {
                        ex.run(
                            &x[done * w * cin..e1 * w * cin],
                            Strides::channels_last(cin),
                            (e1 - done) * w,
                            None,
                            &mut ebuf[(done - e0) * row_len..(e1 - e0) * row_len],
                        );
                    }
                    have = e0..e1;
                    &ebuf[..(e1 - e0) * row_len]
                }
                // No expansion: the depthwise kernel reads the input rows in place.
                None => &x[e0 * row_len..e1 * row_len],
            };
            let plane = dw_nhwc::Strip {
                k,
                stride: s,
                c: chid,
                h: e1 - e0,
                w,
                top: (e0 as isize - lo) as usize,
                left: pad[2],
                oh: b - a,
                ow,
            };
            let npx = (b - a) * ow;
            let dw_out = &mut dbuf[..npx * chid];
            dw_nhwc::strip(
                &plane,
                hidden,
                &self.dw_t,
                self.dw.bias(),
                self.dw.activation(),
                dw_out,
            );
            let (y0, y1) = ((a - rows.start) * ow * cout, (b - rows.start) * ow * cout);
            // With a residual, stride is 1 and the output has the input's size and layout.
            let res = self.residual.then(|| &x[a * ow * cout..b * ow * cout]);
            // Strips cover `rows` in order, so all of `y` is written once the loop ends.
            self.project_pw.run_into(
                dw_out,
                Strides::channels_last(chid),
                npx,
                res,
                y.slice(y0..y1),
            );
            a = b;
        }
        STRIP.with(|c| c.set(buf));
    }
}

/// TensorFlow "SAME" padding along one axis for an input of `input` pixels: `(before, after)`,
/// the odd pixel after.
pub fn tf_same(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out.saturating_sub(1)) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, vals};
    use crate::{Activation, ConvShape};

    fn conv(cin: usize, cout: usize, k: usize, s: usize, g: usize, pad: [usize; 4]) -> Conv2d {
        let shape = ConvShape {
            cin,
            cout,
            kernel: k,
            stride: s,
            groups: g,
            pad,
        };
        let w = vals(cout * (cin / g) * k * k, (cin * 31 + cout * 7 + k) as u32);
        let b = vals(cout, cout as u32 + 5);
        let act = if k == 1 && g == 1 && cout < cin * 2 {
            Activation::None
        } else {
            Activation::Relu6
        };
        Conv2d::new(shape, &w, Some(&b), act)
    }

    /// The fused block against its three convolutions run one after the other, for strips of
    /// one row up to whole images, bands from 1 to 3 threads, strides 1 and 2, 3×3 and 5×5,
    /// fixed and TensorFlow padding, with and without expansion and residual.
    #[test]
    fn matches_layer_by_layer() {
        // (cin, expansion, cout, k, stride, tf padding, h, w)
        let cases = [
            (8, 6, 8, 3, 1, false, 13, 11),
            (8, 6, 16, 3, 2, false, 14, 9),
            (8, 6, 16, 3, 2, false, 15, 10),
            (8, 1, 4, 3, 1, false, 12, 12),
            (8, 4, 8, 5, 1, true, 9, 17),
            (8, 6, 12, 5, 2, true, 16, 16),
            (8, 6, 12, 3, 2, true, 17, 8),
            (16, 6, 16, 3, 1, false, 3, 5),
            (4, 6, 4, 3, 1, false, 40, 40),
        ];
        for (cin, t, cout, k, s, tf, h, w) in cases {
            let chid = cin * t;
            let expand = (t != 1).then(|| Arc::new(conv(cin, chid, 1, 1, 1, [0; 4])));
            let padding = if tf {
                DwPadding::TfSame
            } else {
                DwPadding::Fixed
            };
            let fixed = [(k - 1) / 2; 4];
            let dw_pad = if tf {
                let (t0, b0) = tf_same(h, k, s);
                let (l0, r0) = tf_same(w, k, s);
                [t0, b0, l0, r0]
            } else {
                fixed
            };
            // The fused block computes TF padding itself; the reference conv gets it explicitly.
            let dw = Arc::new(conv(chid, chid, k, s, chid, fixed));
            let dw_ref = conv(chid, chid, k, s, chid, dw_pad);
            let project = Arc::new(conv(chid, cout, 1, 1, 1, [0; 4]));
            let residual = s == 1 && cin == cout;
            let block =
                InvertedResidual::new(expand.clone(), dw, project.clone(), residual, padding);
            let n = 2;
            let x = vals(n * cin * h * w, 9);
            let e = match &expand {
                Some(e) => e.forward(&x, n, h, w, None),
                None => x.clone(),
            };
            let [_, _, oh, ow] = dw_ref.out_dims(n, h, w);
            let d = dw_ref.forward(&e, n, h, w, None);
            let want = project.forward(&d, n, oh, ow, residual.then_some(&x[..]));
            assert_eq!(block.out_hw(h, w), (oh, ow));
            let x_cl = crate::nchw_to_nhwc(&x, n, cin, h * w);
            let want = crate::nchw_to_nhwc(&want, n, cout, oh * ow);
            for threads in 1..=3 {
                for strip_bytes in [1usize, 4096, usize::MAX] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let got =
                        pool.install(|| forward_with_strip(&block, &x_cl, n, h, w, strip_bytes));
                    let diff = max_diff(&got, &want);
                    assert!(
                        diff < 1e-4,
                        "{cin}x{t}->{cout} k{k} s{s} tf={tf} {h}x{w}, {threads} threads, \
                         strip {strip_bytes}: max diff {diff}"
                    );
                }
            }
        }
    }

    fn forward_with_strip(
        b: &InvertedResidual,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        strip_bytes: usize,
    ) -> Vec<f32> {
        let b = InvertedResidual {
            strip_bytes,
            ..b.clone()
        };
        b.forward(x, n, h, w)
    }
}
