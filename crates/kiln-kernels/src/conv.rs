//! Packed 2-D convolutions over NCHW f32 slices, with the epilogue fused.

use std::cell::Cell;

use crate::act::Activation;
use crate::depthwise::{self, Plane};
use crate::gemm_f32::sgemm_raw;
use crate::out::{filled_vec, Out, SharedOut};

/// Fewest output pixels per thread for which a GEMM is split by pixels (columns) rather than
/// by output channels.
const COL_SPLIT_MIN: usize = 128;

/// Geometry of a 2-D convolution with a square kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Groups (`cin` for depthwise).
    pub groups: usize,
    /// Zero padding `[top, bottom, left, right]`.
    pub pad: [usize; 4],
}

impl ConvShape {
    /// Output height and width for an `h × w` input.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let [t, b, l, r] = self.pad;
        let k = self.kernel;
        assert!(
            h + t + b >= k && w + l + r >= k,
            "input {h}×{w} smaller than the {k}×{k} kernel"
        );
        (
            (h + t + b - k) / self.stride + 1,
            (w + l + r - k) / self.stride + 1,
        )
    }
}

/// Which kernel a [`Conv2d`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// One filter per channel, direct.
    Depthwise,
    /// 1×1, stride 1, no padding: `W · X` per image and group, no input copy.
    Pointwise,
    /// Everything else: im2col per image, then one GEMM per group.
    Im2colGemm,
}

/// A convolution with its weights packed for its kernel, a bias and a fused activation.
#[derive(Debug, Clone)]
pub struct Conv2d {
    shape: ConvShape,
    kind: KernelKind,
    /// Depthwise: `[c][k·k]`. GEMM kinds: per group a row-major `[cout/g × (cin/g)·k·k]` block —
    /// the rows of the im2col matrix are ordered `(channel, ky, kx)` to match.
    weight: Vec<f32>,
    bias: Vec<f32>,
    act: Activation,
    /// The weight packed for [`Conv2d::forward_nhwc`], on first use.
    pub(crate) nhwc: std::sync::OnceLock<crate::Pointwise>,
    /// The weight transformed for the Winograd path of 3×3 stride-1 convolutions, on first
    /// use.
    pub(crate) wino: std::sync::OnceLock<crate::winograd::Winograd>,
}

thread_local! {
    /// im2col buffer, reused across calls on the same thread.
    static COLS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

impl Conv2d {
    /// Packs `weight` (PyTorch layout `[cout, cin / groups, k, k]`, contiguous) and `bias`
    /// (`[cout]`, zeros when `None`).
    pub fn new(shape: ConvShape, weight: &[f32], bias: Option<&[f32]>, act: Activation) -> Self {
        let ConvShape {
            cin,
            cout,
            kernel: k,
            stride,
            groups,
            pad,
        } = shape;
        assert!(
            groups > 0 && cin % groups == 0 && cout % groups == 0,
            "bad groups {groups} for {cin}→{cout}"
        );
        assert!(k > 0 && stride > 0);
        assert_eq!(weight.len(), cout * (cin / groups) * k * k, "weight size");
        let bias = match bias {
            Some(b) => {
                assert_eq!(b.len(), cout, "bias size");
                b.to_vec()
            }
            None => vec![0.0; cout],
        };
        let kind = if groups == cin && cout == cin && cin > 1 {
            KernelKind::Depthwise
        } else if k == 1 && stride == 1 && pad == [0; 4] {
            KernelKind::Pointwise
        } else {
            KernelKind::Im2colGemm
        };
        Self {
            shape,
            kind,
            nhwc: std::sync::OnceLock::new(),
            wino: std::sync::OnceLock::new(),
            // OIHW is already `[g][cout/g][cin/g · k · k]` row-major and `[c][k·k]` for
            // depthwise: the layouts both kernels want.
            weight: weight.to_vec(),
            bias,
            act,
        }
    }

    /// The geometry.
    pub fn shape(&self) -> ConvShape {
        self.shape
    }

    /// The kernel chosen.
    pub fn kind(&self) -> KernelKind {
        self.kind
    }

    /// The fused activation.
    pub fn activation(&self) -> Activation {
        self.act
    }

    /// The packed weight: depthwise `[c][k·k]`, else per group `[cout/g × (cin/g)·k·k]`.
    pub(crate) fn weight(&self) -> &[f32] {
        &self.weight
    }

    /// The bias, `[cout]`.
    pub(crate) fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Output dimensions `[n, cout, oh, ow]` for input `[n, cin, h, w]`.
    pub fn out_dims(&self, n: usize, h: usize, w: usize) -> [usize; 4] {
        let (oh, ow) = self.shape.out_hw(h, w);
        [n, self.shape.cout, oh, ow]
    }

    /// `act(conv(x) + bias (+ residual))` for `x` `[n, cin, h, w]` contiguous; the residual, if
    /// any, has the output's shape. Returns the output, `[n, cout, oh, ow]` contiguous.
    pub fn forward(
        &self,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        residual: Option<&[f32]>,
    ) -> Vec<f32> {
        let s = self.shape;
        assert_eq!(x.len(), n * s.cin * h * w, "input size");
        let [_, cout, oh, ow] = self.out_dims(n, h, w);
        let out_len = n * cout * oh * ow;
        if let Some(r) = residual {
            assert_eq!(r.len(), out_len, "residual size");
        }
        match self.kind {
            KernelKind::Depthwise => self.depthwise(x, n, h, w, oh, ow, residual),
            KernelKind::Pointwise | KernelKind::Im2colGemm => {
                self.gemm(x, n, h, w, oh, ow, residual)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn depthwise(
        &self,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        res: Option<&[f32]>,
    ) -> Vec<f32> {
        let s = self.shape;
        let (c, kk) = (s.cout, s.kernel * s.kernel);
        let p = Plane {
            k: s.kernel,
            stride: s.stride,
            pad: s.pad,
            h,
            w,
            oh,
            ow,
        };
        let ohw = oh * ow;
        let run = |scratch: &mut depthwise::Scratch, idx: usize, o: Out<'_>| {
            let ch = idx % c;
            let xs = &x[idx * h * w..(idx + 1) * h * w];
            let r = res.map(|r| &r[idx * ohw..(idx + 1) * ohw]);
            depthwise::plane(
                &p,
                xs,
                &self.weight[ch * kk..(ch + 1) * kk],
                self.bias[ch],
                r,
                self.act,
                o,
                scratch,
            );
        };
        let fill = |mut out: Out<'_>| {
            if crate::current_threads() == 1 {
                let mut scratch = depthwise::Scratch::default();
                for idx in 0..n * c {
                    run(&mut scratch, idx, out.slice(idx * ohw..(idx + 1) * ohw));
                }
            } else {
                let optr = SharedOut(out.as_mut_ptr());
                crate::par_for(n * c, |idx| {
                    let optr = &optr;
                    // SAFETY: plane `idx` of the output, this task's alone.
                    let o = unsafe { Out::from_raw(optr.0.add(idx * ohw), ohw) };
                    run(&mut depthwise::Scratch::default(), idx, o)
                });
            }
        };
        // SAFETY: every (image, channel) plane is handed to `depthwise::plane`, whose kernels
        // store every output pixel of it.
        unsafe { filled_vec(n * c * ohw, fill) }
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        res: Option<&[f32]>,
    ) -> Vec<f32> {
        let s = self.shape;
        let ohw = oh * ow;
        let (cin_g, cout_g) = (s.cin / s.groups, s.cout / s.groups);
        let kdim = cin_g * s.kernel * s.kernel;
        let threads = crate::current_threads();
        let img_in = s.cin * h * w;
        let img_out = s.cout * ohw;
        let act = self.act;
        let fill = |mut out: Out<'_>| {
            let mut cols = COLS.with(|c| c.take());
            for i in 0..n {
                let mut o = out.slice(i * img_out..(i + 1) * img_out);
                let xi = &x[i * img_in..(i + 1) * img_in];
                let b: &[f32] = match self.kind {
                    KernelKind::Pointwise => xi,
                    _ => {
                        cols.resize(s.cin * s.kernel * s.kernel * ohw, 0.0);
                        im2col(xi, &s, h, w, oh, ow, &mut cols, threads);
                        &cols
                    }
                };
                let r = res.map(|r| &r[i * img_out..(i + 1) * img_out]);
                let optr = SharedOut(o.as_mut_ptr());
                if s.groups == 1 && threads > 1 && ohw >= COL_SPLIT_MIN * threads {
                    // One fork-join per layer: each thread takes a block of output columns
                    // (pixels), runs its GEMM serially and then the epilogue on what it just
                    // wrote.
                    let chunk = ohw.div_ceil(threads).next_multiple_of(16);
                    crate::par_for(ohw.div_ceil(chunk), |t| {
                        let optr = &optr;
                        let (j0, j1) = (t * chunk, ((t + 1) * chunk).min(ohw));
                        // SAFETY: `b` is `[kdim × ohw]`, the weight `[cout × kdim]`, the output
                        // `[cout × ohw]`; this task alone touches its columns j0..j1, which the
                        // GEMM writes (`accumulate = false`, `kdim > 0`) before the epilogue
                        // reads them.
                        unsafe {
                            sgemm_raw(
                                s.cout,
                                j1 - j0,
                                kdim,
                                self.weight.as_ptr(),
                                kdim,
                                b[j0..].as_ptr(),
                                ohw,
                                optr.0.add(j0),
                                ohw,
                                false,
                                1,
                            );
                            for co in 0..s.cout {
                                let row = std::slice::from_raw_parts_mut(
                                    optr.0.add(co * ohw + j0),
                                    j1 - j0,
                                );
                                let rr = r.map(|r| &r[co * ohw + j0..co * ohw + j1]);
                                epilogue(row, j1 - j0, &self.bias[co..co + 1], rr, act);
                            }
                        }
                    });
                } else {
                    // Few pixels (late layers): whole rows of output channels per task — a
                    // block of them per thread, or one group each for grouped convolutions.
                    let rows = if s.groups == 1 {
                        s.cout.div_ceil(threads)
                    } else {
                        cout_g
                    };
                    crate::par_for(s.cout.div_ceil(rows), |t| {
                        let optr = &optr;
                        let c0 = t * rows;
                        let nr = rows.min(s.cout - c0);
                        let g = c0 / cout_g;
                        // The group's part of the input (all of it without groups).
                        let bg = &b[g * kdim * ohw..];
                        assert!(bg.len() >= kdim * ohw, "conv: columns too short");
                        // SAFETY: rows c0..c0 + nr of the `[cout × ohw]` output are this task's
                        // alone; the weight rows and the group's `[kdim × ohw]` columns are in
                        // bounds (asserted); the GEMM writes every element of its rows
                        // (`accumulate = false`, `kdim > 0`) before the epilogue reads them.
                        unsafe {
                            let oc = optr.0.add(c0 * ohw);
                            sgemm_raw(
                                nr,
                                ohw,
                                kdim,
                                self.weight[c0 * kdim..(c0 + nr) * kdim].as_ptr(),
                                kdim,
                                bg.as_ptr(),
                                ohw,
                                oc,
                                ohw,
                                false,
                                1,
                            );
                            let oc = std::slice::from_raw_parts_mut(oc, nr * ohw);
                            let rc = r.map(|r| &r[c0 * ohw..(c0 + nr) * ohw]);
                            epilogue(oc, ohw, &self.bias[c0..], rc, act);
                        }
                    });
                }
            }
            COLS.with(|c| c.set(cols));
        };
        // SAFETY: for each image, the tasks cover every output channel row (or every column
        // block of all of them), each written by its GEMM.
        unsafe { filled_vec(n * img_out, fill) }
    }
}

/// `y = act(y + bias[row] (+ res))` over rows of `ohw`, compiled for the CPU's vector width.
pub(crate) fn epilogue(
    y: &mut [f32],
    ohw: usize,
    bias: &[f32],
    res: Option<&[f32]>,
    act: Activation,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::depthwise::Isa;
        match Isa::detect() {
            // SAFETY: the features were detected on this CPU.
            Isa::Avx512 => return unsafe { epilogue_avx512(y, ohw, bias, res, act) },
            Isa::Avx2Fma => return unsafe { epilogue_avx2(y, ohw, bias, res, act) },
            Isa::Baseline => {}
        }
    }
    epilogue_body(y, ohw, bias, res, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn epilogue_avx512(
    y: &mut [f32],
    ohw: usize,
    bias: &[f32],
    res: Option<&[f32]>,
    act: Activation,
) {
    epilogue_body(y, ohw, bias, res, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn epilogue_avx2(
    y: &mut [f32],
    ohw: usize,
    bias: &[f32],
    res: Option<&[f32]>,
    act: Activation,
) {
    epilogue_body(y, ohw, bias, res, act)
}

#[inline(always)]
fn epilogue_body(y: &mut [f32], ohw: usize, bias: &[f32], res: Option<&[f32]>, act: Activation) {
    let (lo, hi) = act.bounds();
    let clamp = |v: f32| {
        let v = if v > lo { v } else { lo };
        if v < hi {
            v
        } else {
            hi
        }
    };
    match res {
        Some(r) => {
            for ((yc, rc), &b) in y.chunks_mut(ohw).zip(r.chunks(ohw)).zip(bias) {
                yc.iter_mut()
                    .zip(rc)
                    .for_each(|(v, r)| *v = clamp(*v + b + r));
            }
        }
        None => {
            for (yc, &b) in y.chunks_mut(ohw).zip(bias) {
                yc.iter_mut().for_each(|v| *v = clamp(*v + b));
            }
        }
    }
}

/// Gathers `x` `[cin, h, w]` into `cols` `[cin · k · k, oh · ow]` (rows ordered channel, ky, kx),
/// zero where the window reads padding.
#[allow(clippy::too_many_arguments)]
fn im2col(
    x: &[f32],
    s: &ConvShape,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    cols: &mut [f32],
    threads: usize,
) {
    let (k, st) = (s.kernel, s.stride);
    let [t, _, l, _] = s.pad;
    let ohw = oh * ow;
    // One task per (channel, kernel row): k rows of the matrix.
    let channel = |(ck, cc): (usize, &mut [f32])| {
        let (c, ky) = (ck / k, ck % k);
        let xc = &x[c * h * w..(c + 1) * h * w];
        {
            for kx in 0..k {
                let row = &mut cc[kx * ohw..(kx + 1) * ohw];
                // Output columns whose input column `ox·st + kx - l` lies inside [0, w).
                let ox_lo = if kx >= l { 0 } else { (l - kx).div_ceil(st) };
                let ox_hi = if w + l > kx {
                    ((w + l - kx - 1) / st + 1).min(ow)
                } else {
                    0
                };
                for oy in 0..oh {
                    let orow = &mut row[oy * ow..(oy + 1) * ow];
                    let iy = (oy * st + ky) as isize - t as isize;
                    if iy < 0 || iy >= h as isize || ox_lo >= ox_hi {
                        orow.fill(0.0);
                        continue;
                    }
                    let xrow = &xc[iy as usize * w..(iy as usize + 1) * w];
                    orow[..ox_lo].fill(0.0);
                    orow[ox_hi..].fill(0.0);
                    let ix0 = ox_lo * st + kx - l;
                    if st == 1 {
                        orow[ox_lo..ox_hi].copy_from_slice(&xrow[ix0..ix0 + (ox_hi - ox_lo)]);
                    } else {
                        for (o, &v) in orow[ox_lo..ox_hi]
                            .iter_mut()
                            .zip(xrow[ix0..].iter().step_by(st))
                        {
                            *o = v;
                        }
                    }
                }
            }
        }
    };
    if threads == 1 {
        cols.chunks_mut(k * ohw).enumerate().for_each(channel);
    } else {
        crate::par_chunks_mut(cols, k * ohw, |c, cc| channel((c, cc)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::vals;

    /// Direct reference convolution in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        s: &ConvShape,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        wt: &[f32],
        b: &[f32],
        res: Option<&[f32]>,
        act: Activation,
    ) -> Vec<f32> {
        let (oh, ow) = s.out_hw(h, w);
        let (cin_g, cout_g, k) = (s.cin / s.groups, s.cout / s.groups, s.kernel);
        let [t, _, l, _] = s.pad;
        let mut out = vec![0f32; n * s.cout * oh * ow];
        for i in 0..n {
            for co in 0..s.cout {
                let g = co / cout_g;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = b[co] as f64;
                        for ci in 0..cin_g {
                            let c = g * cin_g + ci;
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * s.stride + ky) as isize - t as isize;
                                    let ix = (ox * s.stride + kx) as isize - l as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv =
                                        x[((i * s.cin + c) * h + iy as usize) * w + ix as usize];
                                    let wv = wt[((co * cin_g + ci) * k + ky) * k + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        let idx = ((i * s.cout + co) * oh + oy) * ow + ox;
                        if let Some(r) = res {
                            acc += r[idx] as f64;
                        }
                        out[idx] = act.apply(acc as f32);
                    }
                }
            }
        }
        out
    }

    fn check(
        s: ConvShape,
        n: usize,
        h: usize,
        w: usize,
        act: Activation,
        with_res: bool,
        expect: KernelKind,
    ) {
        let x = vals(n * s.cin * h * w, 1);
        let wt = vals(s.cout * (s.cin / s.groups) * s.kernel * s.kernel, 2);
        let b = vals(s.cout, 3);
        let conv = Conv2d::new(s, &wt, Some(&b), act);
        assert_eq!(conv.kind(), expect, "{s:?}");
        let [_, _, oh, ow] = conv.out_dims(n, h, w);
        let res = with_res.then(|| vals(n * s.cout * oh * ow, 4));
        let want = reference(&s, &x, n, h, w, &wt, &b, res.as_deref(), act);
        let got = conv.forward(&x, n, h, w, res.as_deref());
        assert_eq!(got.len(), want.len());
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - r).abs() <= 1e-4 * r.abs().max(1.0),
                "{s:?} at {i}: {g} vs {r}"
            );
        }
        // The channels-last path of dense convolutions, against the same reference.
        if s.groups == 1 && conv.kind != KernelKind::Depthwise {
            let x_cl = crate::nchw_to_nhwc(&x, n, s.cin, h * w);
            let r_cl = res.map(|r| crate::nchw_to_nhwc(&r, n, s.cout, oh * ow));
            let got = conv.forward_nhwc(&x_cl, n, h, w, r_cl.as_deref());
            let got = crate::nhwc_to_nchw(&got, n, s.cout, oh * ow);
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - r).abs() <= 1e-4 * r.abs().max(1.0),
                    "{s:?} channels-last at {i}: {g} vs {r}"
                );
            }
        }
    }

    fn shape(
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        pad: [usize; 4],
    ) -> ConvShape {
        ConvShape {
            cin,
            cout,
            kernel,
            stride,
            groups,
            pad,
        }
    }

    #[test]
    fn depthwise_3x3_and_5x5_all_pads() {
        for (k, st, pad) in [
            (3, 1, [1, 1, 1, 1]),
            (3, 2, [1, 1, 1, 1]),
            (3, 2, [0, 1, 0, 1]), // TF "SAME" at stride 2: the extra pad goes bottom / right
            (3, 1, [0, 0, 0, 0]),
            (5, 1, [2, 2, 2, 2]),
            (5, 2, [1, 2, 1, 2]),
            (7, 2, [3, 3, 3, 3]), // generic loop
        ] {
            for (h, w) in [(7, 7), (20, 37), (33, 18)] {
                check(
                    shape(5, 5, k, st, 5, pad),
                    2,
                    h,
                    w,
                    Activation::Relu6,
                    false,
                    KernelKind::Depthwise,
                );
            }
        }
        check(
            shape(4, 4, 3, 1, 4, [1; 4]),
            1,
            19,
            21,
            Activation::None,
            true,
            KernelKind::Depthwise,
        );
    }

    #[test]
    fn pointwise_is_a_gemm() {
        check(
            shape(24, 40, 1, 1, 1, [0; 4]),
            3,
            9,
            11,
            Activation::Relu,
            true,
            KernelKind::Pointwise,
        );
        check(
            shape(16, 8, 1, 1, 2, [0; 4]),
            2,
            5,
            5,
            Activation::None,
            false,
            KernelKind::Pointwise,
        );
    }

    /// Large enough planes for the pixel-split GEMM, in a 3-thread pool and serially.
    #[test]
    fn split_gemms_and_serial() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for serial in [false, true] {
            pool.install(|| {
                let run = || {
                    check(
                        shape(24, 40, 1, 1, 1, [0; 4]),
                        2,
                        24,
                        43,
                        Activation::Relu,
                        true,
                        KernelKind::Pointwise,
                    );
                    check(
                        shape(6, 10, 3, 1, 1, [1; 4]),
                        1,
                        33,
                        31,
                        Activation::Relu6,
                        true,
                        KernelKind::Im2colGemm,
                    );
                    check(
                        shape(8, 16, 3, 2, 4, [1; 4]),
                        2,
                        40,
                        40,
                        Activation::Relu,
                        true,
                        KernelKind::Im2colGemm,
                    );
                    check(
                        shape(5, 5, 3, 2, 5, [0, 1, 0, 1]),
                        2,
                        40,
                        40,
                        Activation::Relu,
                        false,
                        KernelKind::Depthwise,
                    );
                };
                if serial {
                    crate::serial(run)
                } else {
                    run()
                }
            });
        }
    }

    #[test]
    fn im2col_gemm_dense_and_grouped() {
        // ResNet stem, 3×3 stride 1 and 2, 1×1 stride-2 downsample, uneven pads, groups.
        check(
            shape(3, 8, 7, 2, 1, [3; 4]),
            2,
            30,
            30,
            Activation::Relu,
            false,
            KernelKind::Im2colGemm,
        );
        // Rows not a multiple of the panel height, columns of the tile width, several tiles.
        check(
            shape(13, 25, 1, 1, 1, [0; 4]),
            1,
            9,
            13,
            Activation::Relu6,
            true,
            KernelKind::Pointwise,
        );
        check(
            shape(7, 12, 3, 1, 1, [1; 4]),
            1,
            8,
            8,
            Activation::None,
            true,
            KernelKind::Im2colGemm,
        );
        // Several k blocks (k > 256), in both kinds.
        check(
            shape(600, 30, 1, 1, 1, [0; 4]),
            1,
            7,
            9,
            Activation::Relu,
            true,
            KernelKind::Pointwise,
        );
        check(
            shape(40, 26, 3, 2, 1, [1; 4]),
            2,
            11,
            12,
            Activation::Relu6,
            true,
            KernelKind::Im2colGemm,
        );
        check(
            shape(6, 10, 3, 1, 1, [1; 4]),
            2,
            12,
            9,
            Activation::Relu6,
            true,
            KernelKind::Im2colGemm,
        );
        check(
            shape(6, 10, 3, 2, 1, [0, 1, 0, 1]),
            1,
            13,
            16,
            Activation::None,
            false,
            KernelKind::Im2colGemm,
        );
        check(
            shape(8, 16, 1, 2, 1, [0; 4]),
            2,
            14,
            14,
            Activation::None,
            false,
            KernelKind::Im2colGemm,
        );
        check(
            shape(8, 16, 3, 2, 4, [1; 4]),
            2,
            10,
            10,
            Activation::Relu,
            true,
            KernelKind::Im2colGemm,
        );
    }
}
