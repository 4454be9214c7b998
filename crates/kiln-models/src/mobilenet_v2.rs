//! MobileNetV2 (Sandler et al., 2018) with torchvision's structure and key names:
//! `features.0` stem, `features.1..=17` inverted residuals (`conv.N`), `features.18` the 1×1
//! head conv, `classifier.1` the linear layer.
//!
//! Two options serve the same network trained elsewhere: TensorFlow's "SAME" padding
//! ([`MobileNetV2Options::tf_padding`], as transformers' `MobileNetV2Model` with `tf_padding`,
//! ported from TensorFlow's checkpoints: at stride 2 the odd pixel is padded after, not on both
//! sides) and the batch-norm epsilon (transformers' `layer_norm_eps`, 1e-3 by default).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use kiln_preprocess::Preset;

use crate::keymap::{split_param, KeyConvention, KeyMap, BN_PARAMS};
use crate::layers::{Act, ConvBn, ConvGeom, DwPadding, InvertedResidual, Linear, MobileTrunk};
use crate::registry::{param, ArchParams, Family, Variant};
use crate::{Features, ImageModel};

/// Everything kiln knows about this family; collected by [`crate::registry`].
pub static FAMILY: Family = Family {
    name: "mobilenet_v2",
    stem_key: "features.0.0.weight",
    classifier: "classifier.1",
    // tf_padding (0/1) and bn_eps: transformers' MobileNetV2 (TensorFlow-ported).
    params: &[("width_mult", 1.0), ("tf_padding", 0.0), ("bn_eps", BN_EPS)],
    check: check_params,
    preset: Preset::TorchvisionImagenet,
    variants: &[Variant {
        name: "mobilenet_v2",
        build: |vb, p| {
            let o = MobileNetV2Options {
                width_mult: param(p, "width_mult", 1.0),
                tf_padding: param(p, "tf_padding", 0.0) != 0.0,
                bn_eps: param(p, "bn_eps", BN_EPS),
            };
            Ok(Box::new(MobileNetV2::load_with(vb, &o)?))
        },
    }],
    key_maps: &[
        KeyMap {
            convention: KeyConvention::TimmMobileNetV2,
            label: "timm MobileNetV2",
            expected: "conv_stem, bn1, blocks.S.B.{conv_pw,bn1,conv_dw,bn2,conv_pwl,bn3}, conv_head, bn2, classifier",
            rename: timm_key,
        },
        KeyMap {
            convention: KeyConvention::TransformersMobileNetV2,
            label: "transformers MobileNetV2",
            expected: "mobilenet_v2.conv_stem.{first_conv,conv_3x3,reduce_1x1}.*, mobilenet_v2.layer.I.{expand_1x1,conv_3x3,reduce_1x1}.*, mobilenet_v2.conv_1x1.*, classifier",
            rename: transformers_key,
        },
    ],
};

/// The MobileNets' `width_mult` check (also MobileNetV3's [`Family::check`]).
pub fn check_width_mult(p: &ArchParams) -> std::result::Result<(), (String, f64, String)> {
    let w = param(p, "width_mult", 1.0);
    if w > 0.0 && w <= 4.0 {
        Ok(())
    } else {
        Err((
            "width_mult".into(),
            w,
            "0 < width_mult <= 4 (torchvision publishes 0.5, 0.75, 1.0, 1.4)".into(),
        ))
    }
}

fn check_params(p: &ArchParams) -> std::result::Result<(), (String, f64, String)> {
    check_width_mult(p)?;
    let t = param(p, "tf_padding", 0.0);
    if t != 0.0 && t != 1.0 {
        return Err((
            "tf_padding".into(),
            t,
            "0 (torchvision's padding) or 1 (TensorFlow's \"SAME\")".into(),
        ));
    }
    let eps = param(p, "bn_eps", BN_EPS);
    if !(eps > 0.0 && eps < 1.0) {
        return Err((
            "bn_eps".into(),
            eps,
            "a batch-norm epsilon, 0 < bn_eps < 1".into(),
        ));
    }
    Ok(())
}

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

/// How a [`MobileNetV2`] is built beyond its width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MobileNetV2Options {
    /// Channel width multiplier (torchvision's `width_mult`).
    pub width_mult: f64,
    /// Pad the 3×3 convolutions as TensorFlow's "SAME" (uneven at stride 2) instead of
    /// torchvision's symmetric 1.
    pub tf_padding: bool,
    /// Batch-norm epsilon.
    pub bn_eps: f64,
}

impl Default for MobileNetV2Options {
    fn default() -> Self {
        Self {
            width_mult: 1.0,
            tf_padding: false,
            bn_eps: BN_EPS,
        }
    }
}

impl MobileNetV2Options {
    /// The geometry of a 3×3 convolution: torchvision's symmetric padding, or under TensorFlow
    /// "SAME" the stride-1 padding `(k - 1) / 2` and none at stride 2, where the uneven padding
    /// is computed from the input at each call.
    fn geom3x3(&self, cin: usize, cout: usize, stride: usize, groups: usize) -> ConvGeom {
        let g = ConvGeom::same_torch(cin, cout, 3, stride, groups);
        if self.tf_padding && stride != 1 {
            ConvGeom { pad: [0; 4], ..g }
        } else {
            g
        }
    }

    fn dw_padding(&self) -> DwPadding {
        if self.tf_padding {
            DwPadding::TfSame
        } else {
            DwPadding::Fixed
        }
    }
}

/// One inverted residual of torchvision's layout: `conv.0` expand (absent at expansion 1),
/// then depthwise, then the linear projection.
fn inverted_residual(
    vb: VarBuilder,
    inp: usize,
    oup: usize,
    stride: usize,
    t: usize,
    o: &MobileNetV2Options,
) -> Result<InvertedResidual> {
    let eps = o.bn_eps;
    let hidden = ((inp * t) as f64).round() as usize;
    let c = vb.pp("conv");
    // Keys shift by one when there is no expansion conv: conv.0 is then the depthwise block.
    let (expand, dw_idx, proj_idx) = if t != 1 {
        let g = ConvGeom::same_torch(inp, hidden, 1, 1, 1);
        let e = ConvBn::load(c.pp("0.0"), c.pp("0.1"), g, eps, Act::Relu6)?;
        (Some(e), 1, 2)
    } else {
        (None, 0, 1)
    };
    let dw = c.pp(dw_idx);
    let depthwise = ConvBn::load(
        dw.pp(0),
        dw.pp(1),
        o.geom3x3(hidden, hidden, stride, hidden),
        eps,
        Act::Relu6,
    )?;
    let project = ConvBn::load(
        c.pp(proj_idx),
        c.pp(proj_idx + 1),
        ConvGeom::same_torch(hidden, oup, 1, 1, 1),
        eps,
        Act::None,
    )?;
    Ok(InvertedResidual::new(
        expand,
        depthwise,
        project,
        stride == 1 && inp == oup,
        o.dw_padding(),
    ))
}

/// A loaded MobileNetV2, inference only.
pub struct MobileNetV2 {
    trunk: MobileTrunk,
    classifier: Linear,
}

impl MobileNetV2 {
    /// Builds torchvision's network for `width_mult` from weights under `vb`.
    pub fn load(vb: VarBuilder, width_mult: f64) -> Result<Self> {
        Self::load_with(
            vb,
            &MobileNetV2Options {
                width_mult,
                ..Default::default()
            },
        )
    }

    /// Builds the network as `o` says from weights under `vb`.
    pub fn load_with(vb: VarBuilder, o: &MobileNetV2Options) -> Result<Self> {
        let width_mult = o.width_mult;
        let f = vb.pp("features");
        let mut inp = make_divisible(32.0 * width_mult, 8);
        let last = make_divisible(1280.0 * width_mult.max(1.0), 8);
        let stem = ConvBn::load(
            f.pp("0.0"),
            f.pp("0.1"),
            o.geom3x3(3, inp, 2, 1),
            o.bn_eps,
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
                    o,
                )?);
                inp = oup;
            }
        }
        let idx = blocks.len() + 1;
        let head = ConvBn::load(
            f.pp(format!("{idx}.0")),
            f.pp(format!("{idx}.1")),
            ConvGeom::same_torch(inp, last, 1, 1, 1),
            o.bn_eps,
            Act::Relu6,
        )?;
        // classifier.0 is dropout: the identity at inference.
        let classifier = Linear::load(vb.pp("classifier.1"), last)?;
        Ok(Self {
            trunk: MobileTrunk::new(stem, o.tf_padding, blocks, head)?,
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

// ---------------------------------------------------------------------------------------------
// Other libraries' names for this network

/// The index of the head conv in `features` (after the stem and every block).
const HEAD_INDEX: usize = 1 + {
    let mut n = 0;
    let mut i = 0;
    while i < STAGES.len() {
        n += STAGES[i].2;
        i += 1;
    }
    n
};

/// timm MobileNetV2 name → torchvision name, `None` for a name timm's MobileNetV2 does not have.
///
/// `conv_stem`/`bn1` → `features.0.0/1`; `blocks.0.0` (depthwise-separable: `conv_dw`, `bn1`,
/// `conv_pw`, `bn2`) → `features.1.conv.0.0`, `.0.1`, `.1`, `.2`; `blocks.S.B` (inverted
/// residual: `conv_pw`, `bn1`, `conv_dw`, `bn2`, `conv_pwl`, `bn3`) → `features.N.conv.0.0`,
/// `.0.1`, `.1.0`, `.1.1`, `.2`, `.3` with `N = 1 + blocks before it`; `conv_head`/`bn2` →
/// `features.18.0/1`; `classifier` → `classifier.1`.
pub fn timm_key(name: &str) -> Option<String> {
    let (module, param) = split_param(name)?;
    let is_bn = |m: &str| m.starts_with("bn") && BN_PARAMS.contains(&param);
    let is_conv = param == "weight";
    let top = match module {
        "conv_stem" if is_conv => Some("features.0.0".to_string()),
        "bn1" if is_bn("bn1") => Some("features.0.1".to_string()),
        "conv_head" if is_conv => Some(format!("features.{HEAD_INDEX}.0")),
        "bn2" if is_bn("bn2") => Some(format!("features.{HEAD_INDEX}.1")),
        "classifier" if param == "weight" || param == "bias" => Some("classifier.1".to_string()),
        _ => None,
    };
    if let Some(t) = top {
        return Some(format!("{t}.{param}"));
    }
    let rest = module.strip_prefix("blocks.")?;
    let mut it = rest.split('.');
    let stage: usize = it.next()?.parse().ok()?;
    let block: usize = it.next()?.parse().ok()?;
    let layer = it.next()?;
    if it.next().is_some() || stage >= STAGES.len() || block >= STAGES[stage].2 {
        return None;
    }
    let index = 1 + STAGES[..stage].iter().map(|s| s.2).sum::<usize>() + block;
    let mapped = match (stage == 0, layer) {
        (true, "conv_dw") if is_conv => "conv.0.0",
        (true, "bn1") if is_bn(layer) => "conv.0.1",
        (true, "conv_pw") if is_conv => "conv.1",
        (true, "bn2") if is_bn(layer) => "conv.2",
        (false, "conv_pw") if is_conv => "conv.0.0",
        (false, "bn1") if is_bn(layer) => "conv.0.1",
        (false, "conv_dw") if is_conv => "conv.1.0",
        (false, "bn2") if is_bn(layer) => "conv.1.1",
        (false, "conv_pwl") if is_conv => "conv.2",
        (false, "bn3") if is_bn(layer) => "conv.3",
        _ => return None,
    };
    Some(format!("features.{index}.{mapped}.{param}"))
}

/// transformers `MobileNetV2ForImageClassification` name → torchvision name, `None` for a name
/// it does not have (or has only in layouts kiln refuses, such as the stem's `expand_1x1` of
/// `first_layer_is_expansion: false`).
///
/// Each transformers layer is `{convolution, normalization}`. `mobilenet_v2.conv_stem.first_conv`
/// → `features.0.0/1`; the stem's `conv_3x3` (depthwise) and `reduce_1x1` are torchvision's
/// expansion-1 block: `features.1.conv.0.0/0.1` and `features.1.conv.1/2`;
/// `mobilenet_v2.layer.I.{expand_1x1, conv_3x3, reduce_1x1}` (I < 16) →
/// `features.{I+2}.conv.{0.0/0.1, 1.0/1.1, 2/3}`; `mobilenet_v2.conv_1x1` → `features.18.0/1`;
/// `classifier` → `classifier.1`.
pub fn transformers_key(name: &str) -> Option<String> {
    let (module, param) = split_param(name)?;
    if module == "classifier" && (param == "weight" || param == "bias") {
        return Some(format!("classifier.1.{param}"));
    }
    let (layer, part) = module.rsplit_once('.')?;
    let conv = match part {
        "convolution" if param == "weight" => true,
        "normalization" if BN_PARAMS.contains(&param) => false,
        _ => return None,
    };
    let pick = |c: &str, n: &str| if conv { c.to_string() } else { n.to_string() };
    let mapped = match layer {
        "mobilenet_v2.conv_stem.first_conv" => pick("features.0.0", "features.0.1"),
        "mobilenet_v2.conv_stem.conv_3x3" => pick("features.1.conv.0.0", "features.1.conv.0.1"),
        "mobilenet_v2.conv_stem.reduce_1x1" => pick("features.1.conv.1", "features.1.conv.2"),
        "mobilenet_v2.conv_1x1" => pick(
            &format!("features.{HEAD_INDEX}.0"),
            &format!("features.{HEAD_INDEX}.1"),
        ),
        _ => {
            let rest = layer.strip_prefix("mobilenet_v2.layer.")?;
            let (i, sub) = rest.split_once('.')?;
            let i: usize = i.parse().ok()?;
            if i >= HEAD_INDEX - 2 {
                return None;
            }
            let (c, n) = match sub {
                "expand_1x1" => ("conv.0.0", "conv.0.1"),
                "conv_3x3" => ("conv.1.0", "conv.1.1"),
                "reduce_1x1" => ("conv.2", "conv.3"),
                _ => return None,
            };
            format!("features.{}.{}", i + 2, pick(c, n))
        }
    };
    Some(format!("{mapped}.{param}"))
}

/// The tensors (names and shapes) of timm's `mobilenetv2_*` at `width_mult` with
/// `num_classes` outputs, in timm's names: what a timm checkpoint holds (without
/// `num_batches_tracked`). Used to check the key map against torchvision's layout, and to make
/// test checkpoints.
pub fn timm_layout(width_mult: f64, num_classes: usize) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![];
    let bn = |out: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
        for k in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{p}.{k}"), vec![c]));
        }
    };
    let stem = make_divisible(32.0 * width_mult, 8);
    out.push(("conv_stem.weight".into(), vec![stem, 3, 3, 3]));
    bn(&mut out, "bn1", stem);
    let mut inp = stem;
    for (s, (t, c, n, _)) in STAGES.into_iter().enumerate() {
        let oup = make_divisible(c as f64 * width_mult, 8);
        for b in 0..n {
            let p = format!("blocks.{s}.{b}");
            if s == 0 {
                out.push((format!("{p}.conv_dw.weight"), vec![inp, 1, 3, 3]));
                bn(&mut out, &format!("{p}.bn1"), inp);
                out.push((format!("{p}.conv_pw.weight"), vec![oup, inp, 1, 1]));
                bn(&mut out, &format!("{p}.bn2"), oup);
            } else {
                let mid = make_divisible((inp * t) as f64, 8);
                out.push((format!("{p}.conv_pw.weight"), vec![mid, inp, 1, 1]));
                bn(&mut out, &format!("{p}.bn1"), mid);
                out.push((format!("{p}.conv_dw.weight"), vec![mid, 1, 3, 3]));
                bn(&mut out, &format!("{p}.bn2"), mid);
                out.push((format!("{p}.conv_pwl.weight"), vec![oup, mid, 1, 1]));
                bn(&mut out, &format!("{p}.bn3"), oup);
            }
            inp = oup;
        }
    }
    let head = make_divisible(1280.0 * width_mult, 8).max(1280);
    out.push(("conv_head.weight".into(), vec![head, inp, 1, 1]));
    bn(&mut out, "bn2", head);
    out.push(("classifier.weight".into(), vec![num_classes, head]));
    out.push(("classifier.bias".into(), vec![num_classes]));
    out
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
