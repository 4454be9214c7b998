//! kiln's CPU kernels for f32 convolutions: channels-first (NCHW), channels-last (NHWC) and
//! channel-blocked.
//!
//! A kernel never knows which network it serves: [`Conv2d`] takes a geometry ([`ConvShape`]), a
//! weight in PyTorch's `[cout, cin / groups, k, k]` layout, a bias and an [`Activation`], packs
//! them once, and then runs on plain slices.
//!
//! **Channels-last** (the fast path the model files take on the CPU):
//! - [`Conv2d::forward_nhwc`]: dense convolutions as an implicit GEMM ([`Pointwise`]'s
//!   micro-kernel): `6 px × 64 ch` or `12 × 32` output tiles accumulate over the kernel taps and
//!   input channels straight from the input, the weight packed once per K block that stays in L1
//!   (the next block prefetched into L2 while it computes); bias, residual and ReLU/ReLU6
//!   applied in registers before the single store. 3×3 stride-1 convolutions on maps of 150
//!   pixels or more take Winograd F(2×2, 3×3) instead (2.25× fewer multiply-adds, the same
//!   micro-kernel for its 16 GEMMs);
//! - [`Conv2d::forward_blocked`]: the same on a channel-blocked layout (every 64 channels a
//!   channels-last tensor of their own, [`nchw_to_blocked`]), which ResNet runs on: each output
//!   tile is one contiguous stream, which the prefetchers follow on maps larger than the L2;
//! - [`InvertedResidual`]: a whole MobileNetV2 / MBConv block (1×1 expand, depthwise, 1×1
//!   project, residual) fused over strips of rows, its expanded activations never leaving L2, the
//!   depthwise kernel vectorised along channels.
//!
//! **Channels-first** ([`Conv2d::forward`]), the reference path and the one grouped
//! convolutions take: 1×1 as a straight GEMM, im2col + GEMM otherwise (the [`gemm`] crate), a
//! native depthwise kernel, bias / residual / activation fused into one output pass.
//!
//! Every kernel has AVX-512, AVX2+FMA and portable versions, chosen at run time;
//! `KILN_ISA=avx2` or `KILN_ISA=baseline` caps the choice (to test or compare the lower paths).
//!
//! # Threads
//!
//! Every kernel parallelises in the *current* rayon pool: run the model inside
//! `pool.install(|| ...)` to bound it to a host's pool (see [`current_threads`]); otherwise
//! rayon's global pool is used. Inside [`serial`] the kernels run on the calling thread only,
//! for callers that parallelise over images themselves. Inside [`team`] the pool's other
//! threads spin between the parallel steps of one forward pass instead of sleeping (batch 1).

#![warn(missing_docs)]

mod act;
mod block;
mod conv;
mod conv_nhwc;
mod depthwise;
mod dw_nhwc;
mod gemm_f32;
mod out;
mod pw_nhwc;
mod team;
mod transpose;
mod winograd;

pub use act::Activation;
pub use block::{tf_same as tf_same_padding, DwPadding, InvertedResidual};
pub use conv::{Conv2d, ConvShape, KernelKind};
pub use conv_nhwc::{avg_pool_blocked, avg_pool_nhwc, max_pool_3x3_s2_nhwc};
pub use gemm_f32::{linear, sgemm};
pub use pw_nhwc::{Pointwise, Strides};
pub use team::{par_chunks_mut, par_for, team};
pub use transpose::{blocked_to_nchw, channel_block, nchw_to_blocked, nchw_to_nhwc, nhwc_to_nchw};

/// Helpers shared by the kernels' unit tests.
#[cfg(test)]
mod test_util {
    /// Deterministic values in [-1, 1] (xorshift), different per seed.
    pub fn vals(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Largest |a - b|; infinite if either side has a NaN (an element never written).
    pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "max_diff: lengths");
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(
                0f32,
                |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
            )
    }
}

thread_local! {
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Threads the kernels will use when called from here: 1 inside [`serial`], else the size of
/// the rayon pool we are running in (the host's pool under `pool.install`, else rayon's global
/// pool).
pub fn current_threads() -> usize {
    if SERIAL.with(|s| s.get()) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Runs `f` with the kernels on the calling thread only (no fork-join inside a kernel). For
/// callers that parallelise at a coarser grain themselves, e.g. one image of a batch per thread.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _reset = Reset(SERIAL.with(|s| s.replace(true)));
    f()
}

/// The instruction-set level the kernels run with on this CPU, for reports.
pub fn isa() -> &'static str {
    depthwise::Isa::detect().name()
}
