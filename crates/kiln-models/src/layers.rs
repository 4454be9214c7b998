//! Inference-only building blocks shared by the model files.
//!
//! Batch norm never exists at run time: [`ConvBn::load`] folds the running statistics and affine
//! parameters into the convolution's weight and bias as the weights are loaded, so a model cannot
//! be run in "training mode" by construction.

use candle_core::{DType, Module, Result, Tensor, D};
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
    pub fn same_torch(cin: usize, cout: usize, kernel: usize, stride: usize, groups: usize) -> Self {
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

/// A convolution with its batch norm folded in, a bias, and a fused activation.
#[derive(Debug, Clone)]
pub struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    geom: ConvGeom,
    act: Act,
}

impl ConvBn {
    /// Loads `conv.weight` (and `conv.bias` if present) and the batch norm at `bn`, and folds
    /// them: `w' = w * g / sqrt(var + eps)`, `b' = (b - mean) * g / sqrt(var + eps) + beta`.
    /// The folding is done in f64 so that it adds no rounding beyond the final f32 cast.
    pub fn load(conv: VarBuilder, bn: VarBuilder, geom: ConvGeom, eps: f64, act: Act) -> Result<Self> {
        let wshape = (geom.cout, geom.cin / geom.groups, geom.kernel, geom.kernel);
        let dtype = conv.dtype();
        let w = conv.get(wshape, "weight")?.to_dtype(DType::F64)?;
        let b = if conv.contains_tensor("bias") {
            Some(conv.get(geom.cout, "bias")?.to_dtype(DType::F64)?)
        } else {
            None
        };
        let get = |n: &str| bn.get(geom.cout, n).and_then(|t| t.to_dtype(DType::F64));
        let (gamma, beta, mean, var) = (get("weight")?, get("bias")?, get("running_mean")?, get("running_var")?);
        let scale = (gamma / (var + eps)?.sqrt()?)?;
        let weight = w.broadcast_mul(&scale.reshape((geom.cout, 1, 1, 1))?)?;
        let shifted = match b {
            Some(b) => (b - mean)?,
            None => mean.neg()?,
        };
        let bias = ((shifted * &scale)? + beta)?;
        Ok(Self {
            weight: weight.to_dtype(dtype)?,
            bias: bias.to_dtype(dtype)?,
            geom,
            act,
        })
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
        Ok(Self {
            weight,
            bias,
            geom,
            act,
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

impl Module for ConvBn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ConvBn::forward(self, x)
    }
}

/// A fully connected classifier head, `y = x W^T + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight_t: Tensor,
    bias: Tensor,
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
        Ok(Self {
            weight_t: w.t()?.contiguous()?,
            bias,
        })
    }

    /// Number of outputs.
    pub fn out_features(&self) -> usize {
        self.weight_t.dim(1).unwrap_or(0)
    }

    /// Applies the layer to `[n, in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
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

/// Global average pooling `[n, c, h, w] -> [n, c]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean(D::Minus1)?.mean(D::Minus1)
}
