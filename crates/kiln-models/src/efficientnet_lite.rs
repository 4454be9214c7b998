//! EfficientNet-Lite0..4 (Tan & Le, 2019; the "lite" variants of TensorFlow's
//! `efficientnet/lite/efficientnet_lite_builder.py`), with the key names of efficientnet_pytorch
//! and its lite port (efficientnet_lite_pytorch): `_conv_stem`/`_bn0` stem,
//! `_blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}` MBConv blocks,
//! `_conv_head`/`_bn1` head, `_fc` classifier.
//!
//! What makes these TensorFlow models rather than torchvision ones:
//! * **"SAME" padding.** A stride-2 convolution pads `pad_total = max((ceil(in/s) - 1)*s + k - in, 0)`
//!   with `pad_total / 2` before and the rest after, so a 3×3 stride-2 convolution on an even input
//!   pads 0 on top/left and 1 on bottom/right (torchvision would pad 1 on every side). The padding
//!   is computed from the actual input of each convolution, as TensorFlow does. The PyTorch port
//!   (efficientnet_lite_pytorch 0.1.0, `Conv2dStaticSamePadding`) computes the same formula once
//!   for the model's native resolution (224 for Lite0); at that resolution the two are identical.
//! * Batch-norm epsilon 1e-3, ReLU6 everywhere, no squeeze-excite.
//! * The lite scaling: the stem stays at 32 channels and the head at 1280, and the repeats of the
//!   first and last stages are not scaled by the depth coefficient.
//!
//! Drop-connect and dropout are training-only and absent.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{Act, ConvBn, ConvGeom, DwPadding, InvertedResidual, Linear, MobileTrunk};
use crate::mobilenet_v2::make_divisible;
use crate::registry::{no_params, Family, Variant};
use crate::{Features, ImageModel};

/// A variant: its registry name and its [`EfficientNetLiteConfig`].
macro_rules! variant {
    ($name:literal, $cfg:ident) => {
        Variant {
            name: $name,
            build: |vb, _| {
                Ok(Box::new(EfficientNetLite::load(
                    vb,
                    EfficientNetLiteConfig::$cfg,
                )?))
            },
        }
    };
}

/// Everything kiln knows about this family (TensorFlow-trained, efficientnet_pytorch key
/// names); collected by [`crate::registry`].
pub static FAMILY: Family = Family {
    name: "efficientnet_lite",
    stem_key: "_conv_stem.weight",
    classifier: "_fc",
    params: &[],
    check: no_params,
    preset: kiln_preprocess::Preset::TfEfficientNetLite,
    variants: &[
        variant!("efficientnet_lite0", LITE0),
        variant!("efficientnet_lite1", LITE1),
        variant!("efficientnet_lite2", LITE2),
        variant!("efficientnet_lite3", LITE3),
        variant!("efficientnet_lite4", LITE4),
    ],
    key_maps: &[],
};

/// TensorFlow's batch-norm epsilon for EfficientNet.
const BN_EPS: f64 = 1e-3;

/// Stem output channels (not scaled in the lite variants).
const STEM: usize = 32;

/// Head channels (not scaled in the lite variants).
const HEAD: usize = 1280;

/// The base (Lite0 / B0) stages: `(repeats, kernel, stride, expand ratio, input, output)`,
/// i.e. `r1_k3_s11_e1_i32_o16`, `r2_k3_s22_e6_i16_o24`, ... of the TF builder.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// One EfficientNet-Lite variant's coefficients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EfficientNetLiteConfig {
    /// Width coefficient (channels).
    pub width: f64,
    /// Depth coefficient (repeats).
    pub depth: f64,
    /// Native (training) resolution.
    pub resolution: usize,
}

impl EfficientNetLiteConfig {
    /// `efficientnet-lite0`: (1.0, 1.0, 224).
    pub const LITE0: Self = Self {
        width: 1.0,
        depth: 1.0,
        resolution: 224,
    };
    /// `efficientnet-lite1`: (1.0, 1.1, 240).
    pub const LITE1: Self = Self {
        width: 1.0,
        depth: 1.1,
        resolution: 240,
    };
    /// `efficientnet-lite2`: (1.1, 1.2, 260).
    pub const LITE2: Self = Self {
        width: 1.1,
        depth: 1.2,
        resolution: 260,
    };
    /// `efficientnet-lite3`: (1.2, 1.4, 280).
    pub const LITE3: Self = Self {
        width: 1.2,
        depth: 1.4,
        resolution: 280,
    };
    /// `efficientnet-lite4`: (1.4, 1.8, 300).
    pub const LITE4: Self = Self {
        width: 1.4,
        depth: 1.8,
        resolution: 300,
    };

    /// TF `round_filters`: scale by the width coefficient, round to a multiple of 8, never more
    /// than 10% down.
    pub fn round_filters(&self, filters: usize) -> usize {
        make_divisible(filters as f64 * self.width, 8)
    }

    /// TF `round_repeats`: `ceil(depth * repeats)`.
    pub fn round_repeats(&self, repeats: usize) -> usize {
        (self.depth * repeats as f64).ceil() as usize
    }

    /// The blocks in order, as `(input channels, output channels, kernel, stride, expand ratio)`.
    pub fn blocks(&self) -> Vec<(usize, usize, usize, usize, usize)> {
        let mut out = vec![];
        let last = STAGES.len() - 1;
        for (i, &(r, k, s, e, cin, cout)) in STAGES.iter().enumerate() {
            // Lite: the first and last stages keep their repeats; the first block reads the
            // (unscaled) stem's 32 channels.
            let (repeats, cin) = if i == 0 {
                (r, STEM)
            } else if i == last {
                (r, self.round_filters(cin))
            } else {
                (self.round_repeats(r), self.round_filters(cin))
            };
            let cout = self.round_filters(cout);
            out.push((cin, cout, k, s, e));
            for _ in 1..repeats {
                out.push((cout, cout, k, 1, e));
            }
        }
        out
    }
}

pub use crate::layers::tf_same_padding as same_padding;

fn geom(cin: usize, cout: usize, kernel: usize, stride: usize, groups: usize) -> ConvGeom {
    ConvGeom {
        cin,
        cout,
        kernel,
        stride,
        groups,
        pad: [0; 4],
    }
}

/// `g` with the padding the convolution itself applies under TensorFlow "SAME": `(k - 1) / 2` at
/// stride 1 (odd kernels, whatever the input), none at stride 2, where the padding depends on
/// the input and is applied at each call.
fn tf_geom(g: ConvGeom) -> ConvGeom {
    let pad = if g.stride == 1 {
        [(g.kernel - 1) / 2; 4]
    } else {
        [0; 4]
    };
    ConvGeom { pad, ..g }
}

/// The mobile inverted bottleneck (MBConv) without squeeze-excite, TensorFlow-padded.
fn mbconv(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
) -> Result<InvertedResidual> {
    let hidden = cin * expand;
    let load = |conv: &str, bn: &str, g: ConvGeom, act: Act| {
        ConvBn::load(vb.pp(conv), vb.pp(bn), tf_geom(g), BN_EPS, act)
    };
    let expand = (expand != 1)
        .then(|| {
            load(
                "_expand_conv",
                "_bn0",
                geom(cin, hidden, 1, 1, 1),
                Act::Relu6,
            )
        })
        .transpose()?;
    let depthwise = load(
        "_depthwise_conv",
        "_bn1",
        geom(hidden, hidden, kernel, stride, hidden),
        Act::Relu6,
    )?;
    let project = load(
        "_project_conv",
        "_bn2",
        geom(hidden, cout, 1, 1, 1),
        Act::None,
    )?;
    // id_skip is set for every lite block.
    Ok(InvertedResidual::new(
        expand,
        depthwise,
        project,
        stride == 1 && cin == cout,
        DwPadding::TfSame,
    ))
}

/// A loaded EfficientNet-Lite, inference only.
pub struct EfficientNetLite {
    trunk: MobileTrunk,
    classifier: Linear,
}

impl EfficientNetLite {
    /// Builds the variant `cfg` from weights under `vb`.
    pub fn load(vb: VarBuilder, cfg: EfficientNetLiteConfig) -> Result<Self> {
        let stem = ConvBn::load(
            vb.pp("_conv_stem"),
            vb.pp("_bn0"),
            tf_geom(geom(3, STEM, 3, 2, 1)),
            BN_EPS,
            Act::Relu6,
        )?;
        let b = vb.pp("_blocks");
        let spec = cfg.blocks();
        let mut blocks = Vec::with_capacity(spec.len());
        for (i, &(cin, cout, k, s, e)) in spec.iter().enumerate() {
            blocks.push(mbconv(b.pp(i), cin, cout, k, s, e)?);
        }
        let last = spec.last().map(|b| b.1).unwrap_or(STEM);
        // 1×1, stride 1: TensorFlow's "SAME" pads nothing.
        let head = ConvBn::load(
            vb.pp("_conv_head"),
            vb.pp("_bn1"),
            geom(last, HEAD, 1, 1, 1),
            BN_EPS,
            Act::Relu6,
        )?;
        // _dropout sits between the pooling and _fc: the identity at inference.
        let classifier = Linear::load(vb.pp("_fc"), HEAD)?;
        Ok(Self {
            trunk: MobileTrunk::new(stem, true, blocks, head)?,
            classifier,
        })
    }
}

impl ImageModel for EfficientNetLite {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let features = self.trunk.forward(x)?;
        self.classifier.forward(&features)
    }

    fn num_classes(&self) -> usize {
        self.classifier.out_features()
    }

    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        let (pooled, maps) = self.trunk.forward_maps(x)?;
        Ok(Features {
            logits: self.classifier.forward(&pooled)?,
            maps,
        })
    }

    fn classifier(&self) -> Option<&Linear> {
        Some(&self.classifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // 3x3 stride 2 on an even input: 0 before, 1 after (torchvision would pad 1 and 1).
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(112, 3, 2), (0, 1));
        // 5x5 stride 2: 1 before, 2 after on even inputs, 2 and 2 on odd ones.
        assert_eq!(same_padding(56, 5, 2), (1, 2));
        assert_eq!(same_padding(15, 5, 2), (2, 2));
        assert_eq!(same_padding(25, 3, 2), (1, 1));
        // Stride 1: (k - 1) / 2 on both sides.
        assert_eq!(same_padding(7, 3, 1), (1, 1));
        assert_eq!(same_padding(7, 5, 1), (2, 2));
        assert_eq!(same_padding(7, 1, 1), (0, 0));
    }

    #[test]
    fn lite_scaling() {
        let widths = |c: EfficientNetLiteConfig| {
            let b = c.blocks();
            let mut outs: Vec<usize> = b.iter().map(|x| x.1).collect();
            outs.dedup();
            (b.len(), b[0].0, outs)
        };
        // Lite0: 16 blocks, B0's widths.
        assert_eq!(
            widths(EfficientNetLiteConfig::LITE0),
            (16, 32, vec![16, 24, 40, 80, 112, 192, 320])
        );
        // Lite4 (timm's efficientnet_lite4): stem 32 feeds the first block, repeats
        // [1, 4, 4, 6, 6, 8, 1].
        assert_eq!(
            widths(EfficientNetLiteConfig::LITE4),
            (30, 32, vec![24, 32, 56, 112, 160, 272, 448])
        );
        let reps = |c: EfficientNetLiteConfig| {
            let mut r = vec![];
            let mut prev = 0;
            for b in c.blocks() {
                if b.1 != prev {
                    r.push(0);
                    prev = b.1;
                }
                *r.last_mut().unwrap() += 1;
            }
            r
        };
        assert_eq!(
            reps(EfficientNetLiteConfig::LITE1),
            vec![1, 3, 3, 4, 4, 5, 1]
        );
        assert_eq!(
            reps(EfficientNetLiteConfig::LITE2),
            vec![1, 3, 3, 4, 4, 5, 1]
        );
        assert_eq!(
            reps(EfficientNetLiteConfig::LITE3),
            vec![1, 3, 3, 5, 5, 6, 1]
        );
        assert_eq!(
            reps(EfficientNetLiteConfig::LITE4),
            vec![1, 4, 4, 6, 6, 8, 1]
        );
        assert_eq!(
            widths(EfficientNetLiteConfig::LITE3).2,
            vec![24, 32, 48, 96, 136, 232, 384]
        );
        assert_eq!(
            widths(EfficientNetLiteConfig::LITE2).2,
            vec![16, 24, 48, 88, 120, 208, 352]
        );
    }
}
