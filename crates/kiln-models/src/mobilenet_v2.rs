//! MobileNetV2 (Sandler et al., 2018) with torchvision's structure and key names:
//! `features.0` stem, `features.1..=17` inverted residuals (`conv.N`), `features.18` the 1×1
//! head conv, `classifier.1` the linear layer.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use kiln_preprocess::Preset;

use crate::layers::{Act, ConvBn, ConvGeom, DwPadding, InvertedResidual, Linear, MobileTrunk};
use crate::registry::{check_width_mult, param, Family, Variant};
use crate::{Features, ImageModel};

/// Everything kiln knows about this family; collected by [`crate::registry`].
pub static FAMILY: Family = Family {
    name: "mobilenet_v2",
    stem_key: "features.0.0.weight",
    classifier: "classifier.1",
    params: &[("width_mult", 1.0)],
    check: check_width_mult,
    preset: Preset::TorchvisionImagenet,
    variants: &[Variant {
        name: "mobilenet_v2",
        build: |vb, p| {
            Ok(Box::new(MobileNetV2::load(
                vb,
                param(p, "width_mult", 1.0),
            )?))
        },
    }],
    hub: &[],
};

/// torchvision's batch-norm epsilon for MobileNetV2.
const BN_EPS: f64 = 1e-5;

/// `(expansion t, output channels c, repeats n, first stride s)` per stage (the paper's Table 2,
/// shared by torchvision and timm).
pub const STAGES: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// torchvision's `_make_divisible`: round to the nearest multiple of `divisor`, never going more
/// than 10% below `v`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_v = (((v + d / 2.0) as usize) / divisor * divisor).max(divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// One inverted residual of torchvision's layout: `conv.0` expand (absent at expansion 1),
/// then depthwise, then the linear projection.
fn inverted_residual(
    vb: VarBuilder,
    inp: usize,
    oup: usize,
    stride: usize,
    t: usize,
) -> Result<InvertedResidual> {
    let hidden = ((inp * t) as f64).round() as usize;
    let c = vb.pp("conv");
    // Keys shift by one when there is no expansion conv: conv.0 is then the depthwise block.
    let (expand, dw_idx, proj_idx) = if t != 1 {
        let g = ConvGeom::same_torch(inp, hidden, 1, 1, 1);
        let e = ConvBn::load(c.pp("0.0"), c.pp("0.1"), g, BN_EPS, Act::Relu6)?;
        (Some(e), 1, 2)
    } else {
        (None, 0, 1)
    };
    let dw = c.pp(dw_idx);
    let depthwise = ConvBn::load(
        dw.pp(0),
        dw.pp(1),
        ConvGeom::same_torch(hidden, hidden, 3, stride, hidden),
        BN_EPS,
        Act::Relu6,
    )?;
    let project = ConvBn::load(
        c.pp(proj_idx),
        c.pp(proj_idx + 1),
        ConvGeom::same_torch(hidden, oup, 1, 1, 1),
        BN_EPS,
        Act::None,
    )?;
    Ok(InvertedResidual::new(
        expand,
        depthwise,
        project,
        stride == 1 && inp == oup,
        DwPadding::Fixed,
    ))
}

/// A loaded MobileNetV2, inference only.
pub struct MobileNetV2 {
    trunk: MobileTrunk,
    classifier: Linear,
}

impl MobileNetV2 {
    /// Builds the network for `width_mult` from weights under `vb`.
    pub fn load(vb: VarBuilder, width_mult: f64) -> Result<Self> {
        let f = vb.pp("features");
        let mut inp = make_divisible(32.0 * width_mult, 8);
        let last = make_divisible(1280.0 * width_mult.max(1.0), 8);
        let stem = ConvBn::load(
            f.pp("0.0"),
            f.pp("0.1"),
            ConvGeom::same_torch(3, inp, 3, 2, 1),
            BN_EPS,
            Act::Relu6,
        )?;
        let mut blocks = vec![];
        for (t, c, n, s) in STAGES {
            let oup = make_divisible(c as f64 * width_mult, 8);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                blocks.push(inverted_residual(
                    f.pp(blocks.len() + 1),
                    inp,
                    oup,
                    stride,
                    t,
                )?);
                inp = oup;
            }
        }
        let idx = blocks.len() + 1;
        let head = ConvBn::load(
            f.pp(format!("{idx}.0")),
            f.pp(format!("{idx}.1")),
            ConvGeom::same_torch(inp, last, 1, 1, 1),
            BN_EPS,
            Act::Relu6,
        )?;
        // classifier.0 is dropout: the identity at inference.
        let classifier = Linear::load(vb.pp("classifier.1"), last)?;
        Ok(Self {
            trunk: MobileTrunk::new(stem, false, blocks, head)?,
            classifier,
        })
    }
}

impl ImageModel for MobileNetV2 {
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
    use super::make_divisible;

    #[test]
    fn make_divisible_matches_torchvision() {
        // Values torchvision computes for the widths it publishes.
        assert_eq!(make_divisible(32.0 * 0.5, 8), 16);
        assert_eq!(make_divisible(32.0 * 0.75, 8), 24);
        assert_eq!(make_divisible(32.0 * 1.4, 8), 48);
        assert_eq!(make_divisible(1280.0 * 1.4, 8), 1792);
        assert_eq!(make_divisible(16.0 * 0.75, 8), 16);
        assert_eq!(make_divisible(24.0 * 0.5, 8), 16);
        assert_eq!(make_divisible(96.0 * 0.75, 8), 72);
        assert_eq!(make_divisible(160.0 * 0.35, 8), 56);
    }
}
