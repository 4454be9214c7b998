//! kiln's CPU kernels for f32 NCHW convolutions.
//!
//! A kernel never knows which network it serves: [`Conv2d`] takes a geometry ([`ConvShape`]), a
//! weight in PyTorch's `[cout, cin / groups, k, k]` layout, a bias and an [`Activation`], packs
//! them once, and then runs on plain slices:
//!
//! - 1×1 stride-1 unpadded convolutions are a straight GEMM per image and group,
//!   `W[cout × cin] · X[cin × HW]`, with no copy of the input at all;
//! - other dense or grouped convolutions gather their input once per image (im2col) and run one
//!   GEMM per group;
//! - depthwise convolutions (`groups == cin == cout`) run a native direct kernel, any square
//!   kernel size, stride 1 or 2, any (also uneven, TensorFlow "SAME") padding.
//!
//! The bias, an optional residual and the activation are the output pass of every kernel: the
//! GEMM accumulates onto an output pre-filled with `bias (+ residual)`, and the depthwise kernel
//! writes `act(bias + Σ w·x)` straight from registers.
//!
//! GEMMs are the [`gemm`] crate's (the one candle uses), which picks AVX-512, AVX2+FMA or
//! baseline micro-kernels at run time; the depthwise kernel and the epilogue are compiled for the
//! same three levels and chosen the same way. An AVX-512 GEMM of our own, with the weight packed
//! once at load and the epilogue applied from registers, is opt-in (`KILN_PACKED_GEMM=1`): it is
//! faster on single hot layers but, inside whole networks, still slower than the `gemm` crate.
//!
//! [`InvertedResidual`] fuses a MobileNetV2 / MBConv block (1×1 expand, depthwise, 1×1
//! project, residual) into one pass over strips of rows, so that its expanded activations stay
//! in cache.
//!
//! # Threads
//!
//! Every kernel parallelises with rayon in the *current* pool: run the model inside
//! `pool.install(|| ...)` to bound it to a host's pool (see [`current_threads`]); otherwise
//! rayon's global pool is used. Inside [`serial`] the kernels run on the calling thread only,
//! for callers that parallelise over images themselves.

#![warn(missing_docs)]

mod act;
mod block;
mod conv;
mod conv_nhwc;
mod depthwise;
mod dw_nhwc;
mod gemm_f32;
mod packed_gemm;
mod pw_nhwc;
mod team;
mod transpose;

pub use act::Activation;
pub use block::{tf_same as tf_same_padding, DwPadding, InvertedResidual};
pub use conv::{Conv2d, ConvShape, KernelKind};
pub use conv_nhwc::{avg_pool_nhwc, max_pool_3x3_s2_nhwc};
pub use gemm_f32::{linear, sgemm};
pub use pw_nhwc::{Pointwise, Strides};
pub use team::{par_chunks_mut, par_for, team};
pub use transpose::{nchw_to_nhwc, nhwc_to_nchw};

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
