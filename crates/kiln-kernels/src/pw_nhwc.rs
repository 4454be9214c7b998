//! 1×1 convolution from channels-first input to channels-last output, with the bias and the
//! activation applied in registers: the fused block's expand step.
//!
//! The `gemm` crate can write a channels-last result (it takes any output strides), but then it
//! repacks an operand on every call and leaves the bias and activation to a second pass over
//! the expanded rows. Here the weight is packed once at load into 32-channel panels
//! `[tile][cin][32]`, the input is read in place (one broadcast per input channel and pixel),
//! and each `12 × 32` tile of the output is finished in registers and stored once.

use crate::act::Activation;

/// Output channels per tile (two AVX-512 vectors).
const NR: usize = 32;
/// Pixels per tile.
const MR: usize = 12;

/// A 1×1 convolution's weight and bias packed for [`PackedPw::run`].
#[derive(Debug, Clone)]
pub(crate) struct PackedPw {
    cin: usize,
    cout: usize,
    /// `[cout.div_ceil(32)][cin][32]`, zero-padded channels.
    panels: Vec<f32>,
    /// Zero-padded to whole tiles.
    bias: Vec<f32>,
    act: Activation,
}

impl PackedPw {
    /// Packs `weight` `[cout][cin]` (row-major) and `bias` `[cout]`.
    pub(crate) fn new(
        weight: &[f32],
        bias: &[f32],
        cin: usize,
        cout: usize,
        act: Activation,
    ) -> Self {
        assert_eq!(weight.len(), cin * cout);
        assert_eq!(bias.len(), cout);
        let tiles = cout.div_ceil(NR);
        let mut panels = vec![0f32; tiles * cin * NR];
        for co in 0..cout {
            let (t, j) = (co / NR, co % NR);
            for ci in 0..cin {
                panels[(t * cin + ci) * NR + j] = weight[co * cin + ci];
            }
        }
        let mut b = bias.to_vec();
        b.resize(tiles * NR, 0.0);
        Self {
            cin,
            cout,
            panels,
            bias: b,
            act,
        }
    }

    /// Whether [`PackedPw::run`] can run on this CPU (AVX-512F).
    pub(crate) fn supported() -> bool {
        crate::depthwise::Isa::detect() == crate::depthwise::Isa::Avx512
    }

    /// `out[px·cout + co] = act(bias[co] + Σ_ci w[co][ci] · x[ci·ldx + px])` for `px < npx`.
    /// Needs [`PackedPw::supported`].
    pub(crate) fn run(&self, x: &[f32], ldx: usize, npx: usize, out: &mut [f32]) {
        assert!(Self::supported(), "pw_nhwc needs AVX-512F");
        if npx == 0 {
            return;
        }
        assert!(
            x.len() >= (self.cin - 1) * ldx + npx,
            "pw_nhwc: input too short"
        );
        assert!(out.len() >= npx * self.cout, "pw_nhwc: output too short");
        // SAFETY: AVX-512F is available; the asserts bound every read and write.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            self.run_avx512(x.as_ptr(), ldx, npx, out.as_mut_ptr())
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(&self, x: *const f32, ldx: usize, npx: usize, out: *mut f32) {
        let tiles = self.cout.div_ceil(NR);
        for t in 0..tiles {
            let n = (self.cout - t * NR).min(NR);
            let m0 = lane_mask(n);
            let m1 = lane_mask(n.saturating_sub(16));
            let panel = self.panels.as_ptr().add(t * self.cin * NR);
            let bias = self.bias.as_ptr().add(t * NR);
            let o = out.add(t * NR);
            let mut px = 0;
            while px + MR <= npx {
                tile::<MR>(
                    self,
                    panel,
                    bias,
                    x.add(px),
                    ldx,
                    o.add(px * self.cout),
                    m0,
                    m1,
                );
                px += MR;
            }
            let x = x.add(px);
            let o = o.add(px * self.cout);
            macro_rules! rest {
                ($($r:literal)*) => {
                    match npx - px {
                        $($r => tile::<$r>(self, panel, bias, x, ldx, o, m0, m1),)*
                        _ => {}
                    }
                };
            }
            rest!(1 2 3 4 5 6 7 8 9 10 11);
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

/// `R` pixels × one 32-channel tile.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    pw: &PackedPw,
    panel: *const f32,
    bias: *const f32,
    x: *const f32,
    ldx: usize,
    out: *mut f32,
    m0: u16,
    m1: u16,
) {
    use std::arch::x86_64::*;
    let b0 = _mm512_loadu_ps(bias);
    let b1 = _mm512_loadu_ps(bias.add(16));
    let mut acc = [[b0, b1]; R];
    for ci in 0..pw.cin {
        let w0 = _mm512_loadu_ps(panel.add(ci * NR));
        let w1 = _mm512_loadu_ps(panel.add(ci * NR + 16));
        let xr = x.add(ci * ldx);
        for (r, a) in acc.iter_mut().enumerate() {
            let v = _mm512_set1_ps(*xr.add(r));
            a[0] = _mm512_fmadd_ps(v, w0, a[0]);
            a[1] = _mm512_fmadd_ps(v, w1, a[1]);
        }
    }
    let (lo, hi) = pw.act.bounds();
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    for (r, a) in acc.iter().enumerate() {
        let o = out.add(r * pw.cout);
        _mm512_mask_storeu_ps(o, m0, _mm512_min_ps(_mm512_max_ps(a[0], vlo), vhi));
        if m1 != 0 {
            _mm512_mask_storeu_ps(o.add(16), m1, _mm512_min_ps(_mm512_max_ps(a[1], vlo), vhi));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive() {
        if !PackedPw::supported() {
            return;
        }
        for (cin, cout, npx, ldx) in [
            (24, 144, 560, 600),
            (16, 96, 13, 13),
            (160, 960, 49, 49),
            (3, 20, 5, 7),
        ] {
            let w: Vec<f32> = (0..cin * cout)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let b: Vec<f32> = (0..cout).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
            let x: Vec<f32> = (0..cin * ldx)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0)
                .collect();
            let pw = PackedPw::new(&w, &b, cin, cout, Activation::Relu6);
            let mut out = vec![f32::NAN; npx * cout];
            pw.run(&x, ldx, npx, &mut out);
            for px in 0..npx {
                for co in 0..cout {
                    let r: f32 = b[co]
                        + (0..cin)
                            .map(|ci| w[co * cin + ci] * x[ci * ldx + px])
                            .sum::<f32>();
                    let want = r.clamp(0.0, 6.0);
                    let got = out[px * cout + co];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{cin}->{cout} px {px} co {co}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
