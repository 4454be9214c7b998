//! Depthwise convolution for GPUs, without candle's per-channel split.
//!
//! candle's `conv2d` runs a grouped convolution as one convolution per group (on every backend),
//! so a depthwise layer of MobileNetV2 or EfficientNet-Lite would be hundreds of kernel launches
//! and a concatenation. Here it is:
//!
//! - on CUDA, one kernel per layer ([`depthwise_fused`]: `cuda/depthwise.cu`, compiled to PTX by
//!   nvcc in `build.rs` under the `cuda` feature) doing the convolution, the folded batch norm's
//!   bias and the activation, f32 accumulation in f32, f16 and bf16;
//! - on the CPU, the same op's reference implementation (same indexing and accumulation order),
//!   which the tests compare with candle's grouped convolution;
//! - on every other device (Metal), [`depthwise_shifted`]: `k²` shifted multiply-adds of the
//!   whole tensor on candle's ops, after splitting a strided input into its `stride²` phases
//!   once, so no op is per channel.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};

use crate::layers::{Act, ConvGeom};

/// Whether `g` is a depthwise convolution (one filter per channel, as many outputs as inputs).
pub fn is_depthwise(g: &ConvGeom) -> bool {
    g.groups == g.cin && g.cin == g.cout && g.groups > 1
}

/// Depthwise convolution of `x` `[n, c, h, w]` with `weight` `[c, 1, k, k]`, plus `bias` `[c]`,
/// then `act`, as one op (one CUDA kernel on a CUDA device; the reference loop on the CPU).
/// `geom` must be depthwise ([`is_depthwise`]); its padding may be uneven.
pub fn depthwise_fused(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    geom: ConvGeom,
    act: Act,
) -> Result<Tensor> {
    if !is_depthwise(&geom) {
        candle_core::bail!("depthwise op: {geom:?} is not a depthwise convolution")
    }
    let op = DepthwiseOp {
        c: geom.cin,
        k: geom.kernel,
        stride: geom.stride,
        pad: geom.pad,
        act,
    };
    x.contiguous()?
        .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op)
}

/// The same convolution on candle's ops with no per-channel split: the input padded once,
/// split into its `stride²` phases once, then one multiply-add of the whole tensor per filter
/// tap. The path for devices without a kiln kernel (Metal).
pub fn depthwise_shifted(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    geom: ConvGeom,
    act: Act,
) -> Result<Tensor> {
    if !is_depthwise(&geom) {
        candle_core::bail!("depthwise op: {geom:?} is not a depthwise convolution")
    }
    let (n, c, h, w) = x.dims4()?;
    let (k, s) = (geom.kernel, geom.stride);
    let [t, b, l, r] = geom.pad;
    let (oh, ow) = out_hw(h, w, k, s, geom.pad)?;
    // Pad so that every phase holds `oh + (k - 1) / s` rows (and as many columns) of its own.
    let hp = (oh + (k - 1) / s + 1) * s;
    let wp = (ow + (k - 1) / s + 1) * s;
    let xp = x.pad_with_zeros(2, t, hp.saturating_sub(t + h).max(b))?;
    let xp = xp.pad_with_zeros(3, l, wp.saturating_sub(l + w).max(r))?;
    let xp = xp.narrow(2, 0, hp)?.narrow(3, 0, wp)?;
    // phases[py * s + px][.., i, j] = xp[.., i * s + py, j * s + px]
    let split = xp.reshape((n, c, hp / s, s, wp / s, s))?;
    let mut phases = Vec::with_capacity(s * s);
    for py in 0..s {
        for px in 0..s {
            phases.push(split.narrow(3, py, 1)?.narrow(5, px, 1)?.reshape((
                n,
                c,
                hp / s,
                wp / s,
            ))?);
        }
    }
    let wt = weight.reshape((c, k * k))?;
    let mut acc = bias.reshape((1, c, 1, 1))?.broadcast_as((n, c, oh, ow))?;
    for ky in 0..k {
        for kx in 0..k {
            let tap = phases[(ky % s) * s + kx % s]
                .narrow(2, ky / s, oh)?
                .narrow(3, kx / s, ow)?;
            let wk = wt.narrow(1, ky * k + kx, 1)?.reshape((1, c, 1, 1))?;
            acc = (acc + tap.broadcast_mul(&wk)?)?;
        }
    }
    act.apply(&acc)
}

/// Output height and width of a convolution.
fn out_hw(h: usize, w: usize, k: usize, s: usize, pad: [usize; 4]) -> Result<(usize, usize)> {
    let [t, b, l, r] = pad;
    let (hh, ww) = (h + t + b, w + l + r);
    if hh < k || ww < k || s == 0 {
        candle_core::bail!(
            "depthwise op: a {h}×{w} input padded by {pad:?} is smaller than the {k}×{k} kernel"
        )
    }
    Ok(((hh - k) / s + 1, (ww - k) / s + 1))
}

/// [`depthwise_fused`]'s op: operands `x`, `weight`, `bias`.
struct DepthwiseOp {
    c: usize,
    k: usize,
    stride: usize,
    pad: [usize; 4],
    act: Act,
}

/// The checked dimensions of one call.
struct Dims {
    n: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

impl DepthwiseOp {
    fn check(&self, x: &Layout, w: &Layout, b: &Layout) -> Result<Dims> {
        let (n, c, h, wd) = x.shape().dims4()?;
        if c != self.c {
            candle_core::bail!("depthwise op expects {} channels, got {c}", self.c)
        }
        if w.dims() != [self.c, 1, self.k, self.k] || b.dims() != [self.c] {
            candle_core::bail!(
                "depthwise op: weight {:?} / bias {:?} do not match {} channels of {}×{}",
                w.dims(),
                b.dims(),
                self.c,
                self.k,
                self.k
            )
        }
        for (l, what) in [(x, "input"), (w, "weight"), (b, "bias")] {
            if !l.is_contiguous() {
                candle_core::bail!("depthwise op: the {what} must be contiguous")
            }
        }
        let (oh, ow) = out_hw(h, wd, self.k, self.stride, self.pad)?;
        Ok(Dims {
            n,
            h,
            w: wd,
            oh,
            ow,
        })
    }

    /// The reference loop: the CUDA kernel's indexing and f32 accumulation order.
    fn reference<T: WithDType>(&self, x: &[T], w: &[T], b: &[T], d: &Dims) -> Vec<T> {
        let (c, k, s) = (self.c, self.k, self.stride);
        let [pt, _, pl, _] = self.pad;
        let mut y = Vec::with_capacity(d.n * c * d.oh * d.ow);
        for plane in 0..d.n * c {
            let ch = plane % c;
            let xp = &x[plane * d.h * d.w..][..d.h * d.w];
            let wp = &w[ch * k * k..][..k * k];
            for oy in 0..d.oh {
                for ox in 0..d.ow {
                    let mut acc = b[ch].to_f64() as f32;
                    for ky in 0..k {
                        let Some(iy) = (oy * s + ky).checked_sub(pt).filter(|&i| i < d.h) else {
                            continue;
                        };
                        for kx in 0..k {
                            let Some(ix) = (ox * s + kx).checked_sub(pl).filter(|&i| i < d.w)
                            else {
                                continue;
                            };
                            acc +=
                                xp[iy * d.w + ix].to_f64() as f32 * wp[ky * k + kx].to_f64() as f32;
                        }
                    }
                    let acc = match self.act {
                        Act::None => acc,
                        Act::Relu => acc.max(0.0),
                        Act::Relu6 => acc.clamp(0.0, 6.0),
                    };
                    y.push(T::from_f64(acc as f64));
                }
            }
        }
        y
    }
}

impl CustomOp3 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "kiln-depthwise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.check(l1, l2, l3)?;
        let shape = Shape::from((d.n, self.c, d.oh, d.ow));
        fn part<'a, T>(v: &'a [T], l: &Layout) -> &'a [T] {
            &v[l.start_offset()..][..l.shape().elem_count()]
        }
        let y = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                CpuStorage::F32(self.reference(part(x, l1), part(w, l2), part(b, l3), &d))
            }
            (CpuStorage::F16(x), CpuStorage::F16(w), CpuStorage::F16(b)) => {
                CpuStorage::F16(self.reference(part(x, l1), part(w, l2), part(b, l3), &d))
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(w), CpuStorage::BF16(b)) => {
                CpuStorage::BF16(self.reference(part(x, l1), part(w, l2), part(b, l3), &d))
            }
            _ => candle_core::bail!(
                "depthwise op: input, weight and bias must share one of f32, f16, bf16"
            ),
        };
        Ok((y, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::{
            CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
        };
        use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
        use candle_core::CudaDevice;

        /// The PTX of `cuda/depthwise.cu`, made by build.rs.
        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/depthwise.ptx"));

        let d = self.check(l1, l2, l3)?;
        let dims = [
            d.n,
            self.c,
            d.h,
            d.w,
            d.oh,
            d.ow,
            self.k,
            self.stride,
            self.pad[0],
            self.pad[2],
        ];
        let mut args = [0u32; 11];
        for (a, v) in args.iter_mut().zip(dims) {
            *a = u32::try_from(v)
                .map_err(|_| candle_core::Error::Msg(format!("depthwise op: {v} exceeds u32")))?;
        }
        // The kernel's `act`: 0 none, 1 ReLU, 2 ReLU6.
        args[10] = match self.act {
            Act::None => 0,
            Act::Relu => 1,
            Act::Relu6 => 2,
        };
        let total = d.n * self.c * d.oh * d.ow;
        if u32::try_from(total).is_err() {
            candle_core::bail!("depthwise op: {total} outputs exceed the kernel's u32 indexing")
        }

        #[allow(clippy::too_many_arguments)]
        fn launch<T: DeviceRepr>(
            dev: &CudaDevice,
            name: &str,
            x: &CudaSlice<T>,
            w: &CudaSlice<T>,
            b: &CudaSlice<T>,
            (lx, lw, lb): (&Layout, &Layout, &Layout),
            args: &[u32; 11],
            total: usize,
        ) -> Result<CudaSlice<T>> {
            let func = dev.get_or_load_custom_func(name, "kiln_depthwise", PTX)?;
            let x = x.slice(lx.start_offset()..);
            let w = w.slice(lw.start_offset()..);
            let b = b.slice(lb.start_offset()..);
            // SAFETY: every one of the `total` elements is written by the kernel below before
            // the slice is read (one thread per output element, grid-stride loop).
            let y = unsafe { dev.alloc::<T>(total)? };
            let mut builder = func.builder();
            builder.arg(&x);
            builder.arg(&w);
            builder.arg(&b);
            builder.arg(&y);
            for a in args {
                builder.arg(a);
            }
            const THREADS: usize = 256;
            let blocks = total.div_ceil(THREADS).clamp(1, 1 << 20) as u32;
            let cfg = LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the kernel's parameters are, in order, three input pointers, the output
            // pointer and eleven u32s, as pushed above; `check` proved the input, weight and
            // bias hold n·c·h·w, c·k·k and c elements from their offsets, and the output has the
            // n·c·oh·ow elements the kernel writes.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(y)
        }

        let dev = &s1.device;
        let ls = (l1, l2, l3);
        let slice = match (&s1.slice, &s2.slice, &s3.slice) {
            (CudaStorageSlice::F32(x), CudaStorageSlice::F32(w), CudaStorageSlice::F32(b)) => {
                CudaStorageSlice::F32(launch(
                    dev,
                    "kiln_depthwise_f32",
                    x,
                    w,
                    b,
                    ls,
                    &args,
                    total,
                )?)
            }
            (CudaStorageSlice::F16(x), CudaStorageSlice::F16(w), CudaStorageSlice::F16(b)) => {
                CudaStorageSlice::F16(launch(
                    dev,
                    "kiln_depthwise_f16",
                    x,
                    w,
                    b,
                    ls,
                    &args,
                    total,
                )?)
            }
            (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(w), CudaStorageSlice::BF16(b)) => {
                CudaStorageSlice::BF16(launch(
                    dev,
                    "kiln_depthwise_bf16",
                    x,
                    w,
                    b,
                    ls,
                    &args,
                    total,
                )?)
            }
            _ => candle_core::bail!(
                "depthwise op: input, weight and bias must share one of f32, f16, bf16"
            ),
        };
        let shape = Shape::from((d.n, self.c, d.oh, d.ow));
        Ok((
            candle_core::CudaStorage {
                slice,
                device: dev.clone(),
            },
            shape,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn geoms() -> Vec<(ConvGeom, Act)> {
        let dw = |c, k, s| ConvGeom::same_torch(c, c, k, s, c);
        vec![
            (dw(16, 3, 1), Act::Relu6),
            (dw(24, 3, 2), Act::Relu6),
            (dw(8, 5, 1), Act::None),
            (dw(8, 5, 2), Act::Relu),
            // TensorFlow "SAME", stride 2: the odd pixel after.
            (
                ConvGeom {
                    pad: [0, 1, 0, 1],
                    ..dw(12, 3, 2)
                },
                Act::Relu6,
            ),
            (
                ConvGeom {
                    pad: [1, 2, 1, 2],
                    ..dw(12, 5, 2)
                },
                Act::None,
            ),
            (
                ConvGeom {
                    pad: [0; 4],
                    ..dw(4, 3, 2)
                },
                Act::None,
            ),
        ]
    }

    /// Candle's grouped convolution (per-channel split) with explicit padding, bias and act.
    fn grouped(x: &Tensor, w: &Tensor, b: &Tensor, g: ConvGeom, act: Act) -> Result<Tensor> {
        let [t, bo, l, r] = g.pad;
        let xp = x.pad_with_zeros(2, t, bo)?.pad_with_zeros(3, l, r)?;
        let y = xp.conv2d(w, 0, g.stride, 1, g.groups)?;
        act.apply(&y.broadcast_add(&b.reshape((1, g.cout, 1, 1))?)?)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()
    }

    /// The op's CPU reference and the shifted multiply-add path equal candle's grouped
    /// convolution, for the depthwise geometries of MobileNetV2 and EfficientNet-Lite (odd and
    /// even sizes, uneven padding).
    #[test]
    fn depthwise_matches_grouped_conv() -> Result<()> {
        let dev = Device::Cpu;
        for (g, act) in geoms() {
            for (h, w) in [(17, 15), (14, 14), (7, 9)] {
                let x = Tensor::randn(0f32, 1.0, (2, g.cin, h, w), &dev)?;
                let wt = Tensor::randn(0f32, 0.5, (g.cout, 1, g.kernel, g.kernel), &dev)?;
                let b = Tensor::randn(0f32, 0.5, g.cout, &dev)?;
                let want = grouped(&x, &wt, &b, g, act)?;
                let got = depthwise_fused(&x, &wt, &b, g, act)?;
                assert_eq!(got.dims(), want.dims(), "{g:?} {h}×{w}");
                let d = max_diff(&got, &want)?;
                assert!(d < 1e-5, "fused {g:?} {h}×{w}: max diff {d}");
                let got = depthwise_shifted(&x, &wt, &b, g, act)?;
                assert_eq!(got.dims(), want.dims(), "{g:?} {h}×{w}");
                let d = max_diff(&got, &want)?;
                assert!(d < 1e-5, "shifted {g:?} {h}×{w}: max diff {d}");
            }
        }
        Ok(())
    }

    /// In f16 and bf16 the op accumulates in f32 and rounds once: within one rounding of the
    /// f32 result computed from the same rounded operands.
    #[test]
    fn half_precision_rounds_once() -> Result<()> {
        let dev = Device::Cpu;
        let (g, act) = geoms()[1];
        for dt in [DType::F16, DType::BF16] {
            let x = Tensor::randn(0f32, 1.0, (1, g.cin, 13, 11), &dev)?.to_dtype(dt)?;
            let wt = Tensor::randn(0f32, 0.5, (g.cout, 1, 3, 3), &dev)?.to_dtype(dt)?;
            let b = Tensor::randn(0f32, 0.5, g.cout, &dev)?.to_dtype(dt)?;
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            let want = depthwise_fused(&f(&x)?, &f(&wt)?, &f(&b)?, g, act)?;
            let got = depthwise_fused(&x, &wt, &b, g, act)?;
            assert_eq!(got.dtype(), dt);
            // Half an ulp at the largest magnitude (ReLU6 caps it at 6).
            let ulp = if dt == DType::F16 {
                4.0 / 1024.0
            } else {
                4.0 / 128.0
            };
            let d = max_diff(&got, &want)?;
            assert!(d <= ulp / 2.0, "{dt:?}: max diff {d}");
        }
        Ok(())
    }

    #[test]
    fn refuses_bad_operands() {
        let dev = Device::Cpu;
        let g = ConvGeom::same_torch(4, 4, 3, 1, 4);
        let x = Tensor::zeros((1, 4, 5, 5), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 1, 3, 3), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let bad_w = Tensor::zeros((4, 1, 5, 5), DType::F32, &dev).unwrap();
        assert!(depthwise_fused(&x, &bad_w, &b, g, Act::None).is_err());
        assert!(depthwise_fused(&x, &w, &b.to_dtype(DType::F16).unwrap(), g, Act::None).is_err());
        let dense = ConvGeom::same_torch(4, 4, 3, 1, 1);
        assert!(depthwise_fused(&x, &w, &b, dense, Act::None).is_err());
    }
}
