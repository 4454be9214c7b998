//! Inference-only building blocks shared by the model files.
//!
//! Batch norm never exists at run time: [`ConvBn::load`] folds the running statistics and affine
//! parameters into the convolution's weight and bias as the weights are loaded, so a model cannot
//! be run in "training mode" by construction.
//!
//! On CPU in f32, [`ConvBn`] runs kiln's own kernels ([`kiln_kernels::Conv2d`]: 1×1 as GEMM,
//! im2col + GEMM, native depthwise, bias / residual / activation fused into the output pass),
//! with the weights packed once at load. Every other device and dtype uses candle's ops, except
//! depthwise convolutions on a GPU, which run as one op per layer ([`crate::gpu_ops`]).

use std::sync::Arc;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Module, Result, Shape, Tensor, D,
};
use candle_nn::VarBuilder;

/// Activation fused after a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// None (linear bottlenecks, projections).
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

impl Act {
    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Act::None => Ok(x.clone()),
            Act::Relu => x.relu(),
            Act::Relu6 => x.clamp(0f32, 6f32),
        }
    }
}

/// Geometry of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Groups (`cin` for depthwise).
    pub groups: usize,
    /// Padding as `[top, bottom, left, right]`; uneven for TensorFlow's "SAME" on stride 2.
    pub pad: [usize; 4],
}

impl ConvGeom {
    /// A convolution padded symmetrically by `kernel / 2`, as torchvision builds them.
    pub fn same_torch(
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
    ) -> Self {
        let p = (kernel - 1) / 2;
        Self {
            cin,
            cout,
            kernel,
            stride,
            groups,
            pad: [p; 4],
        }
    }
}

impl From<Act> for kiln_kernels::Activation {
    fn from(a: Act) -> Self {
        match a {
            Act::None => kiln_kernels::Activation::None,
            Act::Relu => kiln_kernels::Activation::Relu,
            Act::Relu6 => kiln_kernels::Activation::Relu6,
        }
    }
}

impl From<ConvGeom> for kiln_kernels::ConvShape {
    fn from(g: ConvGeom) -> Self {
        Self {
            cin: g.cin,
            cout: g.cout,
            kernel: g.kernel,
            stride: g.stride,
            groups: g.groups,
            pad: g.pad,
        }
    }
}

/// A convolution with its batch norm folded in, a bias, and a fused activation.
#[derive(Debug, Clone)]
pub struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    geom: ConvGeom,
    act: Act,
    /// The weights packed for kiln's CPU kernels, when they are f32 on the CPU.
    packed: Option<Arc<kiln_kernels::Conv2d>>,
}

impl ConvBn {
    /// Loads `conv.weight` (and `conv.bias` if present) and the batch norm at `bn`, and folds
    /// them: `w' = w * g / sqrt(var + eps)`, `b' = (b - mean) * g / sqrt(var + eps) + beta`.
    /// The folding is done in f64 on the CPU, from the file's values (never from values first
    /// rounded to a half-precision compute dtype), so that it adds no rounding beyond the final
    /// cast to the builder's dtype, on the builder's device.
    pub fn load(
        conv: VarBuilder,
        bn: VarBuilder,
        geom: ConvGeom,
        eps: f64,
        act: Act,
    ) -> Result<Self> {
        let wshape = (geom.cout, geom.cin / geom.groups, geom.kernel, geom.kernel);
        let (dtype, device) = (conv.dtype(), conv.device().clone());
        let (conv, bn) = (conv.set_device(Device::Cpu), bn.set_device(Device::Cpu));
        let f64_of = |vb: &VarBuilder, shape: Shape, n: &str| {
            vb.get_with_hints_dtype(shape, n, Default::default(), DType::F64)
        };
        let w = f64_of(&conv, wshape.into(), "weight")?;
        let b = if conv.contains_tensor("bias") {
            Some(f64_of(&conv, geom.cout.into(), "bias")?)
        } else {
            None
        };
        let get = |n: &str| f64_of(&bn, geom.cout.into(), n);
        let (gamma, beta, mean, var) = (
            get("weight")?,
            get("bias")?,
            get("running_mean")?,
            get("running_var")?,
        );
        let scale = (gamma / (var + eps)?.sqrt()?)?;
        let weight = w.broadcast_mul(&scale.reshape((geom.cout, 1, 1, 1))?)?;
        let shifted = match b {
            Some(b) => (b - mean)?,
            None => mean.neg()?,
        };
        let bias = ((shifted * &scale)? + beta)?;
        let cast = |t: Tensor| t.to_dtype(dtype)?.to_device(&device);
        Self::new(cast(weight)?, cast(bias)?, geom, act)
    }

    /// A plain convolution (no batch norm) with optional bias.
    pub fn load_plain(conv: VarBuilder, geom: ConvGeom, act: Act) -> Result<Self> {
        let wshape = (geom.cout, geom.cin / geom.groups, geom.kernel, geom.kernel);
        let weight = conv.get(wshape, "weight")?;
        let bias = if conv.contains_tensor("bias") {
            conv.get(geom.cout, "bias")?
        } else {
            Tensor::zeros(geom.cout, conv.dtype(), conv.device())?
        };
        Self::new(weight, bias, geom, act)
    }

    /// Packs the weights for the CPU kernels when they are f32 on the CPU.
    fn new(weight: Tensor, bias: Tensor, geom: ConvGeom, act: Act) -> Result<Self> {
        let packed = if weight.device().is_cpu() && weight.dtype() == DType::F32 {
            let w = weight.flatten_all()?.to_vec1::<f32>()?;
            let b = bias.to_vec1::<f32>()?;
            Some(Arc::new(kiln_kernels::Conv2d::new(
                geom.into(),
                &w,
                Some(&b),
                act.into(),
            )))
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            geom,
            act,
            packed,
        })
    }

    /// The folded weight, `[cout, cin / groups, k, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The folded bias, `[cout]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The convolution's geometry.
    pub fn geom(&self) -> ConvGeom {
        self.geom
    }

    /// The fused activation.
    pub fn act(&self) -> Act {
        self.act
    }

    /// Convolution, bias and activation.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with_residual(x, None)
    }

    /// Convolution, bias, an optional residual added before the activation, and the activation.
    pub fn forward_with_residual(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        if let Some(k) = &self.packed {
            if x.device().is_cpu() && x.dtype() == DType::F32 {
                let op = KernelConv {
                    conv: k,
                    layout: ConvLayout::First,
                };
                let x = x.contiguous()?;
                return match residual {
                    None => x.apply_op1_no_bwd(&op),
                    Some(r) => x.apply_op2_no_bwd(&r.to_dtype(DType::F32)?.contiguous()?, &op),
                };
            }
        }
        // GPUs: depthwise layers as one op, never candle's per-channel split (see gpu_ops).
        if residual.is_none() && crate::gpu_ops::is_depthwise(&self.geom) && !x.device().is_cpu() {
            let f = if x.device().is_cuda() {
                crate::gpu_ops::depthwise_fused
            } else {
                crate::gpu_ops::depthwise_shifted
            };
            return f(x, &self.weight, &self.bias, self.geom, self.act);
        }
        self.forward_candle(x, residual)
    }

    /// The convolution, bias and activation from channels-first `[n, c, h, w]` to a
    /// channels-last result, `[n, oh, ow, cout]` (a network's stem): on kiln's channels-last
    /// kernel where [`ConvBn::runs_nhwc`], else computed channels-first and transposed.
    pub fn forward_channels_last(&self, x: &Tensor) -> Result<Tensor> {
        if self.runs_nhwc(x) {
            // The input is small (three channels at a stem): transposing it is cheaper than
            // gathering an im2col matrix.
            return self.forward_nhwc(&to_channels_last(x)?, None);
        }
        to_channels_last(&self.forward(x)?)
    }

    /// Whether [`ConvBn::forward_nhwc`] runs for `x`: CPU, f32, a dense (ungrouped) convolution.
    pub fn runs_nhwc(&self, x: &Tensor) -> bool {
        self.packed.is_some()
            && self.geom.groups == 1
            && x.device().is_cpu()
            && x.dtype() == DType::F32
    }

    /// Convolution, bias, optional residual and activation on channels-last `[n, h, w, c]`
    /// (residual and result `[n, oh, ow, cout]`), on kiln's CPU kernels. Needs
    /// [`ConvBn::runs_nhwc`].
    pub fn forward_nhwc(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        self.forward_kernel(x, residual, ConvLayout::Last)
    }

    /// The same on kiln's channel-blocked layout, `[c / b, n, h, w, b]` with `b =`
    /// [`kiln_kernels::channel_block`]`(c)` (every 64 channels a channels-last tensor of their
    /// own; plain channels-last, with a leading 1, when 64 does not divide `c`): input, residual
    /// and result. Needs [`ConvBn::runs_nhwc`].
    pub fn forward_blocked(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        self.forward_kernel(x, residual, ConvLayout::Blocked)
    }

    /// The kernel op in a layout that only the CPU kernels have.
    fn forward_kernel(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        layout: ConvLayout,
    ) -> Result<Tensor> {
        let Some(conv) = self.packed.as_deref().filter(|_| self.runs_nhwc(x)) else {
            candle_core::bail!("{layout:?} convolutions run on the CPU in f32, ungrouped")
        };
        let op = KernelConv { conv, layout };
        let x = x.contiguous()?;
        match residual {
            None => x.apply_op1_no_bwd(&op),
            Some(r) => x.apply_op2_no_bwd(&r.contiguous()?, &op),
        }
    }

    /// From channels-first `[n, c, h, w]` (a network's stem) to a channel-blocked result (see
    /// [`ConvBn::forward_blocked`]). Needs [`ConvBn::runs_nhwc`].
    pub fn forward_blocked_from_nchw(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_blocked(&to_blocked(x)?, None)
    }

    /// The same with candle's own ops: every device and dtype, and the reference the kernels are
    /// tested against.
    pub fn forward_candle(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let g = self.geom;
        let [t, b, l, r] = g.pad;
        let (x, pad) = if t == b && l == r && t == l {
            (x.clone(), t)
        } else {
            (x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)?, 0)
        };
        let y = x.conv2d(&self.weight, pad, g.stride, 1, g.groups)?;
        let y = y.broadcast_add(&self.bias.reshape((1, g.cout, 1, 1))?)?;
        let y = match residual {
            Some(res) => (y + res)?,
            None => y,
        };
        self.act.apply(&y)
    }
}

/// 3×3 stride-2 max pooling with one pixel of padding on channels-last `[n, h, w, c]` or
/// channel-blocked `[c / b, n, h, w, b]` f32 on the CPU (ResNet's, after the stem).
pub fn max_pool_3x3_s2_nhwc(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&PoolOp { max: true })
}

/// Global average pooling of channels-last `[n, h, w, c]` or channel-blocked
/// `[c / b, n, h, w, b]` f32 on the CPU: `[n, c]`.
pub fn avg_pool_nhwc(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&PoolOp { max: false })
}

struct PoolOp {
    max: bool,
}

impl CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        "kiln-pool-nhwc"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        // A channel-blocked tensor is `blocks · n` channels-last images of `b` channels.
        let (blocks, n, h, w, b) = match l.dims() {
            &[n, h, w, c] => (1, n, h, w, c),
            &[blocks, n, h, w, b] => (blocks, n, h, w, b),
            d => candle_core::bail!("pooling expects [n, h, w, c] or [c/b, n, h, w, b], got {d:?}"),
        };
        let x = contiguous_f32(s, l, "input")?;
        Ok(if self.max {
            let (y, oh, ow) = kiln_kernels::max_pool_3x3_s2_nhwc(x, blocks * n, h, w, b);
            let dims = if l.dims().len() == 5 {
                vec![blocks, n, oh, ow, b]
            } else {
                vec![n, oh, ow, b]
            };
            (CpuStorage::F32(y), Shape::from(dims))
        } else {
            let c = blocks * b;
            let y = if l.dims().len() == 5 {
                kiln_kernels::avg_pool_blocked(x, n, h * w, c)
            } else {
                kiln_kernels::avg_pool_nhwc(x, n, h * w, c)
            };
            (CpuStorage::F32(y), Shape::from((n, c)))
        })
    }
}

/// The data layouts [`KernelConv`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConvLayout {
    /// `[n, c, h, w]`.
    First,
    /// `[n, h, w, c]`.
    Last,
    /// `[c / b, n, h, w, b]`, `b = kiln_kernels::channel_block(c)`.
    Blocked,
}

/// [`ConvBn`] on kiln's CPU kernels, as a candle custom op (input, and the residual as second
/// operand), in any [`ConvLayout`].
struct KernelConv<'a> {
    conv: &'a kiln_kernels::Conv2d,
    layout: ConvLayout,
}

impl KernelConv<'_> {
    fn run(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        res: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = match (self.layout, xl.dims()) {
            (ConvLayout::First, &[n, c, h, w]) => (n, c, h, w),
            (ConvLayout::Last, &[n, h, w, c]) => (n, c, h, w),
            (ConvLayout::Blocked, &[blocks, n, h, w, b])
                if b == kiln_kernels::channel_block(blocks * b) =>
            {
                (n, blocks * b, h, w)
            }
            (layout, d) => candle_core::bail!("conv: {layout:?} input of shape {d:?}"),
        };
        let s = self.conv.shape();
        if c != s.cin {
            candle_core::bail!("conv expects {} input channels, got {c}", s.cin)
        }
        let [_, cout, oh, ow] = self.conv.out_dims(n, h, w);
        let dims = match self.layout {
            ConvLayout::First => vec![n, cout, oh, ow],
            ConvLayout::Last => vec![n, oh, ow, cout],
            ConvLayout::Blocked => {
                let b = kiln_kernels::channel_block(cout);
                vec![cout / b, n, oh, ow, b]
            }
        };
        let rs = match res {
            Some((r, rl)) => {
                if rl.dims() != dims {
                    candle_core::bail!(
                        "residual {:?} does not match the conv output {dims:?}",
                        rl.dims()
                    )
                }
                Some(contiguous_f32(r, rl, "residual")?)
            }
            None => None,
        };
        let xs = contiguous_f32(x, xl, "input")?;
        let y = match self.layout {
            ConvLayout::First => self.conv.forward(xs, n, h, w, rs),
            ConvLayout::Last => self.conv.forward_nhwc(xs, n, h, w, rs),
            ConvLayout::Blocked => self.conv.forward_blocked(xs, n, h, w, rs),
        };
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

/// The f32 elements of a contiguous layout.
fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("conv kernel: {what} is not contiguous"),
    }
}

impl CustomOp1 for KernelConv<'_> {
    fn name(&self) -> &'static str {
        match self.layout {
            ConvLayout::First => "kiln-conv2d",
            ConvLayout::Last => "kiln-conv2d-nhwc",
            ConvLayout::Blocked => "kiln-conv2d-blocked",
        }
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(s, l, None)
    }
}

impl CustomOp2 for KernelConv<'_> {
    fn name(&self) -> &'static str {
        match self.layout {
            ConvLayout::First => "kiln-conv2d-residual",
            ConvLayout::Last => "kiln-conv2d-nhwc-residual",
            ConvLayout::Blocked => "kiln-conv2d-blocked-residual",
        }
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(s1, l1, Some((s2, l2)))
    }
}

impl Module for ConvBn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ConvBn::forward(self, x)
    }
}

pub use kiln_kernels::{tf_same_padding, DwPadding};

/// The inverted residual block of MobileNetV2 and EfficientNet-Lite (MBConv without
/// squeeze-excite): optional 1×1 expand, depthwise, linear 1×1 project, and the input added back
/// when the shape allows.
///
/// On the CPU in f32 the three convolutions run as one fused kernel
/// ([`kiln_kernels::InvertedResidual`]) that keeps the expanded activations in cache; elsewhere
/// they run one after the other on candle's ops.
#[derive(Debug, Clone)]
pub struct InvertedResidual {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
    padding: DwPadding,
    fused: Option<Arc<kiln_kernels::InvertedResidual>>,
}

impl InvertedResidual {
    /// Chains the three convolutions. With [`DwPadding::TfSame`] the depthwise convolution must
    /// carry TensorFlow's stride-1 padding (`(k - 1) / 2`) or, at stride 2, none: the uneven
    /// stride-2 padding is computed from the input at each call.
    pub fn new(
        expand: Option<ConvBn>,
        depthwise: ConvBn,
        project: ConvBn,
        residual: bool,
        padding: DwPadding,
    ) -> Self {
        let fused = match (&expand, &depthwise.packed, &project.packed) {
            (None, Some(d), Some(p)) => Some((None, d, p)),
            (
                Some(ConvBn {
                    packed: Some(e), ..
                }),
                Some(d),
                Some(p),
            ) => Some((Some(e.clone()), d, p)),
            _ => None,
        }
        .map(|(e, d, p)| {
            Arc::new(kiln_kernels::InvertedResidual::new(
                e,
                d.clone(),
                p.clone(),
                residual,
                padding,
            ))
        });
        Self {
            expand,
            depthwise,
            project,
            residual,
            padding,
            fused,
        }
    }

    /// The block on `[n, c, h, w]`: fused on the CPU in f32 (switching to channels-last and
    /// back), layer by layer otherwise.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.fused.is_some() && x.device().is_cpu() && x.dtype() == DType::F32 {
            return to_channels_first(&self.forward_nhwc(&to_channels_last(x)?)?);
        }
        self.forward_layers(x)
    }

    /// Whether [`InvertedResidual::forward_nhwc`] can run (CPU, f32 weights).
    pub fn has_fused(&self) -> bool {
        self.fused.is_some()
    }

    /// The fused block on channels-last `[n, h, w, c]` f32 on the CPU; returns
    /// `[n, oh, ow, cout]`. Errors if the block has no fused kernel ([`Self::has_fused`]).
    pub fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        match &self.fused {
            Some(f) if x.device().is_cpu() && x.dtype() == DType::F32 => {
                x.contiguous()?.apply_op1_no_bwd(&FusedBlock(f))
            }
            _ => candle_core::bail!("the fused block runs on the CPU in f32 only"),
        }
    }

    /// The block one convolution at a time (each on kiln's kernels or candle's ops, as
    /// [`ConvBn::forward`] chooses).
    pub fn forward_layers(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, |c, x, r| c.forward_with_residual(x, r))
    }

    /// The block on candle's ops only: the reference the fused kernel is tested against.
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, |c, x, r| c.forward_candle(x, r))
    }

    fn forward_with(
        &self,
        x: &Tensor,
        conv: impl Fn(&ConvBn, &Tensor, Option<&Tensor>) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let h = match &self.expand {
            Some(e) => conv(e, x, None)?,
            None => x.clone(),
        };
        let g = self.depthwise.geom();
        let h = if self.padding == DwPadding::TfSame {
            pad_tf_same(&h, g)?
        } else {
            h
        };
        let h = conv(&self.depthwise, &h, None)?;
        conv(&self.project, &h, self.residual.then_some(x))
    }
}

/// [`InvertedResidual`]'s fused CPU kernel as a candle custom op.
struct FusedBlock<'a>(&'a kiln_kernels::InvertedResidual);

impl CustomOp1 for FusedBlock<'_> {
    fn name(&self) -> &'static str {
        "kiln-inverted-residual"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = l.shape().dims4()?;
        if c != self.0.cin() {
            candle_core::bail!("block expects {} input channels, got {c}", self.0.cin())
        }
        let (oh, ow) = self.0.out_hw(h, w);
        let y = self.0.forward(contiguous_f32(s, l, "input")?, n, h, w);
        Ok((CpuStorage::F32(y), Shape::from((n, oh, ow, self.0.cout()))))
    }
}

/// `[n, c, h, w]` → `[n, h, w, c]` (contiguous): kiln's blocked transpose on the CPU in f32,
/// candle's copy elsewhere.
pub fn to_channels_last(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1_no_bwd(&Relayout::Last);
    }
    x.permute((0, 2, 3, 1))?.contiguous()
}

/// `[n, h, w, c]` → `[n, c, h, w]` (contiguous), as [`to_channels_last`].
pub fn to_channels_first(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1_no_bwd(&Relayout::First);
    }
    x.permute((0, 3, 1, 2))?.contiguous()
}

/// `[n, c, h, w]` → kiln's channel-blocked `[c / b, n, h, w, b]` (see
/// [`ConvBn::forward_blocked`]); CPU, f32.
pub fn to_blocked(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Relayout::Blocked)
}

/// A change of layout on the CPU: channels-first to channels-last or to channel-blocked, or
/// channels-last back to channels-first.
enum Relayout {
    Last,
    First,
    Blocked,
}

impl CustomOp1 for Relayout {
    fn name(&self) -> &'static str {
        "kiln-relayout"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, a, b, c) = l.shape().dims4()?;
        let x = contiguous_f32(s, l, "input")?;
        Ok(match self {
            // [n, c=a, h=b, w=c]
            Relayout::Last => {
                let y = kiln_kernels::nchw_to_nhwc(x, n, a, b * c);
                (CpuStorage::F32(y), Shape::from((n, b, c, a)))
            }
            Relayout::Blocked => {
                let y = kiln_kernels::nchw_to_blocked(x, n, a, b * c);
                let blk = kiln_kernels::channel_block(a).max(1);
                let dims = vec![a / blk, n, b, c, blk];
                (CpuStorage::F32(y), Shape::from(dims))
            }
            // [n, h=a, w=b, c]
            Relayout::First => {
                let y = kiln_kernels::nhwc_to_nchw(x, n, c, a * b);
                (CpuStorage::F32(y), Shape::from((n, c, a, b)))
            }
        })
    }
}

/// The body MobileNetV2 and EfficientNet-Lite share: a stem convolution, inverted residual
/// blocks, a 1×1 head convolution, and global average pooling.
///
/// On the CPU in f32 it runs channels-last from the stem to the pooling: the stem's 3-channel
/// input is transposed once, the fused blocks and the head (a channels-last 1×1 kernel that
/// also pools) never change layout. Elsewhere it runs layer by layer in NCHW on candle's ops.
#[derive(Debug, Clone)]
pub struct MobileTrunk {
    stem: ConvBn,
    stem_tf_same: bool,
    blocks: Vec<InvertedResidual>,
    head: ConvBn,
    head_cl: Option<Arc<kiln_kernels::Pointwise>>,
}

impl MobileTrunk {
    /// `stem_tf_same`: the stem pads as TensorFlow's "SAME" (EfficientNet-Lite): its geometry
    /// carries the stride-1 padding, or none at stride 2, where the padding is computed from the
    /// input at each call. `head` must be a 1×1, stride-1, ungrouped convolution.
    pub fn new(
        stem: ConvBn,
        stem_tf_same: bool,
        blocks: Vec<InvertedResidual>,
        head: ConvBn,
    ) -> Result<Self> {
        let g = head.geom();
        if g.kernel != 1 || g.stride != 1 || g.groups != 1 || g.pad != [0; 4] {
            candle_core::bail!("the trunk's head must be a plain 1×1 convolution, got {g:?}")
        }
        let fused = stem.packed.is_some() && blocks.iter().all(|b| b.has_fused());
        let head_cl = match &head.packed {
            Some(_) if fused => {
                let w = head.weight.flatten_all()?.to_vec1::<f32>()?;
                let b = head.bias.to_vec1::<f32>()?;
                Some(Arc::new(kiln_kernels::Pointwise::new(
                    &w,
                    &b,
                    g.cin,
                    g.cout,
                    head.act.into(),
                )))
            }
            _ => None,
        };
        Ok(Self {
            stem,
            stem_tf_same,
            blocks,
            head,
            head_cl,
        })
    }

    /// Images `[n, c, h, w]` → pooled features `[n, head channels]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.stem_input(x)?;
        if let Some(head) = &self.head_cl {
            if x.device().is_cpu() && x.dtype() == DType::F32 {
                let mut h = self.stem.forward_channels_last(&x)?;
                for b in &self.blocks {
                    h = b.forward_nhwc(&h)?;
                }
                return h.apply_op1_no_bwd(&HeadOp(head));
            }
        }
        let mut h = self.stem.forward(&x)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        global_avg_pool(&self.head.forward(&h)?)
    }

    /// Images `[n, c, h, w]` → `(pooled features [n, head channels], the head's activations
    /// before pooling [n, head channels, oh, ow])`. The pooled features are those of
    /// [`MobileTrunk::forward`], bit for bit: on the CPU the same 1×1 kernel and the same
    /// pooling run, only not fused.
    pub fn forward_maps(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = self.stem_input(x)?;
        if let Some(head) = &self.head_cl {
            if x.device().is_cpu() && x.dtype() == DType::F32 {
                let mut h = self.stem.forward_channels_last(&x)?;
                for b in &self.blocks {
                    h = b.forward_nhwc(&h)?;
                }
                let maps = h.contiguous()?.apply_op1_no_bwd(&HeadMapOp(head))?;
                return Ok((avg_pool_nhwc(&maps)?, to_channels_first(&maps)?));
            }
        }
        let mut h = self.stem.forward(&x)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        let maps = self.head.forward(&h)?;
        Ok((global_avg_pool(&maps)?, maps))
    }

    /// The input with TensorFlow's stride-2 "SAME" padding applied, where the stem has it.
    fn stem_input(&self, x: &Tensor) -> Result<Tensor> {
        if self.stem_tf_same {
            pad_tf_same(x, self.stem.geom())
        } else {
            Ok(x.clone())
        }
    }
}

/// `x` `[n, c, h, w]` zero-padded as TensorFlow's "SAME" for a stride-2 convolution of `g`
/// (uneven: the odd pixel after), unchanged at stride 1, where the convolution itself carries
/// the `(k - 1) / 2` padding.
fn pad_tf_same(x: &Tensor, g: ConvGeom) -> Result<Tensor> {
    if g.stride == 1 {
        return Ok(x.clone());
    }
    let (_, _, h, w) = x.dims4()?;
    let (t, b) = tf_same_padding(h, g.kernel, g.stride);
    let (l, r) = tf_same_padding(w, g.kernel, g.stride);
    x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)
}

/// A channels-last 1×1 convolution and the global average pool after it, as a candle custom
/// op: `[n, h, w, cin]` → `[n, cout]`.
struct HeadOp<'a>(&'a kiln_kernels::Pointwise);

impl CustomOp1 for HeadOp<'_> {
    fn name(&self) -> &'static str {
        "kiln-pointwise-nhwc"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = l.shape().dims4()?;
        if c != self.0.cin() {
            candle_core::bail!("1×1 conv expects {} input channels, got {c}", self.0.cin())
        }
        let cout = self.0.cout();
        let y = self.0.forward(contiguous_f32(s, l, "input")?, n * h * w);
        let pooled = kiln_kernels::avg_pool_nhwc(&y, n, h * w, cout);
        Ok((CpuStorage::F32(pooled), Shape::from((n, cout))))
    }
}

/// [`HeadOp`] without the pooling: `[n, h, w, cin]` → `[n, h, w, cout]`, for
/// [`MobileTrunk::forward_maps`].
struct HeadMapOp<'a>(&'a kiln_kernels::Pointwise);

impl CustomOp1 for HeadMapOp<'_> {
    fn name(&self) -> &'static str {
        "kiln-pointwise-nhwc-maps"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = l.shape().dims4()?;
        if c != self.0.cin() {
            candle_core::bail!("1×1 conv expects {} input channels, got {c}", self.0.cin())
        }
        let y = self.0.forward(contiguous_f32(s, l, "input")?, n * h * w);
        Ok((CpuStorage::F32(y), Shape::from((n, h, w, self.0.cout()))))
    }
}

/// A fully connected classifier head, `y = x W^T + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight_t: Tensor,
    bias: Tensor,
    /// `W^T` `[in, out]` and `b` for kiln's CPU kernel, when the weights are f32 on the CPU.
    cpu: Option<Arc<(Vec<f32>, Vec<f32>)>>,
}

impl Linear {
    /// Loads `weight` `[out, in]` and `bias` `[out]`; `out` is read from the weights, so a
    /// fine-tuned head of any width loads.
    pub fn load(vb: VarBuilder, in_features: usize) -> Result<Self> {
        let w = vb.get_unchecked("weight")?;
        let (out, inf) = w.dims2()?;
        if inf != in_features {
            candle_core::bail!(
                "{}weight has {inf} input features, the architecture needs {in_features}",
                prefix(&vb)
            );
        }
        let w = w.to_dtype(vb.dtype())?;
        let bias = vb.get(out, "bias")?;
        Self::new(&w, bias)
    }

    /// Loads `weight` `[out_features, in_features]` and `bias` `[out_features]`, both shapes
    /// fixed by the architecture (a hidden layer, unlike a head whose width is read).
    pub fn load_shaped(vb: VarBuilder, in_features: usize, out_features: usize) -> Result<Self> {
        let w = vb.get((out_features, in_features), "weight")?;
        let bias = vb.get(out_features, "bias")?;
        Self::new(&w, bias)
    }

    /// A layer from its weight `[out, in]` and bias `[out]`.
    pub fn new(weight: &Tensor, bias: Tensor) -> Result<Self> {
        let weight_t = weight.t()?.contiguous()?;
        let cpu = if weight_t.device().is_cpu() && weight_t.dtype() == DType::F32 {
            Some(Arc::new((
                weight_t.flatten_all()?.to_vec1::<f32>()?,
                bias.to_vec1::<f32>()?,
            )))
        } else {
            None
        };
        Ok(Self {
            weight_t,
            bias,
            cpu,
        })
    }

    /// Number of outputs.
    pub fn out_features(&self) -> usize {
        self.weight_t.dim(1).unwrap_or(0)
    }

    /// The weight, `[out, in]`: row `c` holds class `c`'s weight on each pooled feature.
    pub fn weight(&self) -> Result<Tensor> {
        self.weight_t.t()
    }

    /// The bias, `[out]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Applies the layer to `[n, in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(w) = &self.cpu {
            if x.device().is_cpu() && x.dtype() == DType::F32 {
                return x.contiguous()?.apply_op1_no_bwd(&LinearOp(w));
            }
        }
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}

/// [`Linear`] on kiln's CPU GEMM, split over output columns.
struct LinearOp<'a>(&'a (Vec<f32>, Vec<f32>));

impl CustomOp1 for LinearOp<'_> {
    fn name(&self) -> &'static str {
        "kiln-linear"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = l.shape().dims2()?;
        let (wt, b) = self.0;
        let m = b.len();
        if wt.len() != k * m {
            candle_core::bail!("linear expects {} input features, got {k}", wt.len() / m)
        }
        let y = kiln_kernels::linear(contiguous_f32(s, l, "input")?, n, k, wt, b, m);
        Ok((CpuStorage::F32(y), Shape::from((n, m))))
    }
}

fn prefix(vb: &VarBuilder) -> String {
    let p = vb.prefix();
    if p.is_empty() {
        p
    } else {
        format!("{p}.")
    }
}

/// Runs `model` on a batch (the default [`crate::ImageModel::forward_batch`]). On the CPU in
/// f32 with more than one image, the images are spread over the threads of the current rayon
/// pool, each computed start to finish by one thread with its kernels serial
/// ([`kiln_kernels::serial`]): no fork-join per layer, and each thread's activations stay in its
/// own cache. One image runs with the kernels parallel inside each layer, on a
/// [`kiln_kernels::team`]. Other devices and dtypes: `model.forward(x)`.
pub fn forward_spread<M: crate::ImageModel + ?Sized>(model: &M, x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let threads = kiln_kernels::current_threads();
    if threads < 2 || !x.device().is_cpu() || x.dtype() != DType::F32 {
        return model.forward(x);
    }
    if n < 2 {
        // One image: the kernels split each layer, with the pool's threads spinning between
        // layers instead of sleeping.
        return kiln_kernels::team(|| model.forward(x));
    }
    use rayon::prelude::*;
    let outs = (0..n)
        .into_par_iter()
        .with_max_len(1)
        .map(|i| kiln_kernels::serial(|| model.forward(&x.narrow(0, i, 1)?)))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&outs, 0)
}

/// [`forward_spread`] for [`crate::ImageModel::forward_features`] (the default
/// [`crate::ImageModel::forward_features_batch`]): one image per thread on the CPU, the results
/// joined along the batch.
pub fn features_spread<M: crate::ImageModel + ?Sized>(
    model: &M,
    x: &Tensor,
) -> Result<crate::Features> {
    let n = x.dim(0)?;
    let threads = kiln_kernels::current_threads();
    if threads < 2 || !x.device().is_cpu() || x.dtype() != DType::F32 {
        return model.forward_features(x);
    }
    if n < 2 {
        return kiln_kernels::team(|| model.forward_features(x));
    }
    use rayon::prelude::*;
    let outs = (0..n)
        .into_par_iter()
        .with_max_len(1)
        .map(|i| kiln_kernels::serial(|| model.forward_features(&x.narrow(0, i, 1)?)))
        .collect::<Result<Vec<_>>>()?;
    let logits: Vec<Tensor> = outs.iter().map(|f| f.logits.clone()).collect();
    let maps: Vec<Tensor> = outs.into_iter().map(|f| f.maps).collect();
    Ok(crate::Features {
        logits: Tensor::cat(&logits, 0)?,
        maps: Tensor::cat(&maps, 0)?,
    })
}

/// PyTorch's `hardswish`, `x · min(max(x + 3, 0), 6) / 6`, elementwise (candle's ops: every
/// device and dtype).
pub fn hard_swish(x: &Tensor) -> Result<Tensor> {
    (x * hard_sigmoid(x)?.affine(6.0, 0.0)?)?.affine(1.0 / 6.0, 0.0)
}

/// PyTorch's `hardsigmoid`, `min(max(x + 3, 0), 6) / 6`, elementwise.
pub fn hard_sigmoid(x: &Tensor) -> Result<Tensor> {
    x.affine(1.0, 3.0)?
        .clamp(0f32, 6f32)?
        .affine(1.0 / 6.0, 0.0)
}

/// Global average pooling `[n, c, h, w] -> [n, c]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean(D::Minus1)?.mean(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The CPU kernels against candle's ops, for the geometries the model files build.
    #[test]
    fn kernels_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        let cases = [
            (ConvGeom::same_torch(3, 16, 3, 2, 1), Act::Relu6, false),
            (ConvGeom::same_torch(16, 16, 3, 1, 16), Act::Relu6, false),
            (ConvGeom::same_torch(24, 24, 3, 2, 24), Act::Relu6, false),
            (
                ConvGeom {
                    pad: [0, 1, 0, 1],
                    ..ConvGeom::same_torch(24, 24, 3, 2, 24)
                },
                Act::Relu6,
                false,
            ),
            (
                ConvGeom {
                    pad: [1, 2, 1, 2],
                    ..ConvGeom::same_torch(24, 24, 5, 2, 24)
                },
                Act::None,
                false,
            ),
            (ConvGeom::same_torch(16, 24, 1, 1, 1), Act::None, true),
            (ConvGeom::same_torch(16, 32, 1, 2, 1), Act::None, false),
            (ConvGeom::same_torch(3, 8, 7, 2, 1), Act::Relu, false),
            (ConvGeom::same_torch(16, 16, 3, 1, 4), Act::Relu, true),
        ];
        for (g, act, with_res) in cases {
            let w = Tensor::randn(
                0f32,
                0.3,
                (g.cout, g.cin / g.groups, g.kernel, g.kernel),
                &dev,
            )?;
            let b = Tensor::randn(0f32, 0.3, g.cout, &dev)?;
            let conv = ConvBn::new(w, b, g, act)?;
            assert!(conv.packed.is_some());
            let x = Tensor::randn(0f32, 1.0, (2, g.cin, 17, 15), &dev)?;
            let y0 = conv.forward_candle(&x, None)?;
            let res = if with_res {
                Some(Tensor::randn(0f32, 1.0, y0.shape(), &dev)?)
            } else {
                None
            };
            let want = conv.forward_candle(&x, res.as_ref())?;
            let got = conv.forward_with_residual(&x, res.as_ref())?;
            assert_eq!(got.dims(), want.dims(), "{g:?}");
            let diff = (got - &want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-4, "{g:?}: max diff {diff}");
        }
        Ok(())
    }

    /// The fused block against candle's ops, for MobileNetV2's and EfficientNet-Lite's shapes.
    #[test]
    fn fused_block_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        let conv = |g: ConvGeom, act: Act| -> Result<ConvBn> {
            let w = Tensor::randn(
                0f32,
                0.3,
                (g.cout, g.cin / g.groups, g.kernel, g.kernel),
                &dev,
            )?;
            ConvBn::new(w, Tensor::randn(0f32, 0.3, g.cout, &dev)?, g, act)
        };
        // (cin, hidden, cout, k, stride, padding)
        let cases = [
            (16, 96, 16, 3, 1, DwPadding::Fixed),
            (16, 96, 24, 3, 2, DwPadding::Fixed),
            (16, 16, 8, 3, 1, DwPadding::Fixed),
            (16, 96, 24, 5, 2, DwPadding::TfSame),
            (24, 144, 24, 5, 1, DwPadding::TfSame),
        ];
        for (cin, hid, cout, k, s, padding) in cases {
            let expand = (hid != cin)
                .then(|| conv(ConvGeom::same_torch(cin, hid, 1, 1, 1), Act::Relu6))
                .transpose()?;
            let mut dg = ConvGeom::same_torch(hid, hid, k, s, hid);
            if padding == DwPadding::TfSame && s > 1 {
                dg.pad = [0; 4];
            }
            let block = InvertedResidual::new(
                expand,
                conv(dg, Act::Relu6)?,
                conv(ConvGeom::same_torch(hid, cout, 1, 1, 1), Act::None)?,
                s == 1 && cin == cout,
                padding,
            );
            assert!(block.fused.is_some());
            let x = Tensor::randn(0f32, 1.0, (2, cin, 19, 14), &dev)?;
            let want = block.forward_candle(&x)?;
            let got = block.forward(&x)?;
            assert_eq!(got.dims(), want.dims());
            let diff = (got - &want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(
                diff < 1e-4,
                "{cin}->{hid}->{cout} k{k} s{s}: max diff {diff}"
            );
        }
        Ok(())
    }

    struct Tiny(ConvBn, ConvBn, Linear);

    impl crate::ImageModel for Tiny {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            Ok(self.forward_features(x)?.logits)
        }
        fn num_classes(&self) -> usize {
            self.2.out_features()
        }
        fn forward_features(&self, x: &Tensor) -> Result<crate::Features> {
            let maps = self.1.forward(&self.0.forward(x)?)?;
            Ok(crate::Features {
                logits: self.2.forward(&global_avg_pool(&maps)?)?,
                maps,
            })
        }
        fn classifier(&self) -> Option<&Linear> {
            Some(&self.2)
        }
    }

    /// Splitting a batch over threads gives the batched result.
    #[test]
    fn forward_batch_matches_forward() -> Result<()> {
        let dev = Device::Cpu;
        let conv = |g: ConvGeom| -> Result<ConvBn> {
            let w = Tensor::randn(
                0f32,
                0.3,
                (g.cout, g.cin / g.groups, g.kernel, g.kernel),
                &dev,
            )?;
            ConvBn::new(w, Tensor::randn(0f32, 0.3, g.cout, &dev)?, g, Act::Relu6)
        };
        let m = Tiny(
            conv(ConvGeom::same_torch(3, 8, 3, 2, 1))?,
            conv(ConvGeom::same_torch(8, 8, 3, 1, 8))?,
            Linear::new(
                &Tensor::randn(0f32, 0.3, (6, 8), &dev)?,
                Tensor::randn(0f32, 0.3, 6, &dev)?,
            )?,
        );
        let x = Tensor::randn(0f32, 1.0, (5, 3, 20, 20), &dev)?;
        let want = crate::ImageModel::forward_features(&m, &x)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
        };
        let got = pool.install(|| forward_spread(&m, &x))?;
        let diff = max_diff(&got, &want.logits)?;
        assert!(diff < 1e-5, "max diff {diff}");
        let got = pool.install(|| features_spread(&m, &x))?;
        assert_eq!(got.maps.dims(), &[5, 8, 10, 10]);
        let diff = max_diff(&got.logits, &want.logits)?.max(max_diff(&got.maps, &want.maps)?);
        assert!(diff < 1e-5, "features: max diff {diff}");
        Ok(())
    }
}
