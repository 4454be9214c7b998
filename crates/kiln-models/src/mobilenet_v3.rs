//! MobileNetV3 (Howard et al., 2019), small and large, with torchvision's structure and key
//! names: `features.0` stem (3×3 stride 2, hard-swish), `features.1..=N` inverted residuals
//! (`block.K.0/1` conv + batch norm, `block.K.fc1/fc2` squeeze-excite), `features.N+1` the 1×1
//! head conv (hard-swish), then `classifier.0` linear, hard-swish, `classifier.3` linear.
//!
//! The head is two linear layers with a hard-swish between them, not one: class activation maps
//! (which need logits linear in the pooled features) are refused for this family
//! ([`ImageModel::classifier`] is `None`).
//!
//! Differences from MobileNetV2 that matter at inference: batch-norm epsilon 1e-3, hard-swish
//! `x · relu6(x + 3) / 6` on the later stages, squeeze-excite with a hard-sigmoid gate
//! `relu6(x + 3) / 6`, 5×5 depthwise convolutions, and an expansion conv that is present whenever
//! the expanded width differs from the input's (not when the ratio is 1).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use kiln_preprocess::Preset;

use crate::layers::{global_avg_pool, hard_sigmoid, hard_swish, Act, ConvBn, ConvGeom, Linear};
use crate::mobilenet_v2::{check_width_mult, make_divisible};
use crate::registry::{param, ArchParams, Family, Variant};
use crate::{Features, ImageModel};

/// torchvision's batch-norm epsilon for MobileNetV3 (`partial(nn.BatchNorm2d, eps=0.001)`).
const BN_EPS: f64 = 1e-3;

/// Everything kiln knows about this family; collected by [`crate::registry`].
pub static FAMILY: Family = Family {
    name: "mobilenet_v3",
    stem_key: "features.0.0.weight",
    classifier: "classifier.3",
    params: &[("width_mult", 1.0)],
    check: check_width_mult,
    preset: Preset::TorchvisionImagenet,
    variants: &[
        Variant {
            name: "mobilenet_v3_small",
            build: |vb, p| build(vb, p, &SMALL, 1024),
        },
        Variant {
            name: "mobilenet_v3_large",
            build: |vb, p| build(vb, p, &LARGE, 1280),
        },
    ],
    key_maps: &[],
};

fn build(
    vb: VarBuilder,
    p: &ArchParams,
    setting: &[Bneck],
    last_channel: usize,
) -> Result<Box<dyn ImageModel>> {
    Ok(Box::new(MobileNetV3::load(
        vb,
        setting,
        last_channel,
        param(p, "width_mult", 1.0),
    )?))
}

/// The nonlinearity of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nl {
    /// ReLU (`"RE"`), fused into the convolution.
    Relu,
    /// Hard-swish (`"HS"`).
    HardSwish,
}

/// One row of torchvision's `inverted_residual_setting` (`bneck_conf`): input channels, kernel,
/// expanded channels, output channels, squeeze-excite, nonlinearity, stride (width 1.0).
type Bneck = (usize, usize, usize, usize, bool, Nl, usize);

use Nl::{HardSwish as HS, Relu as RE};

/// `mobilenet_v3_small` (torchvision's `_mobilenet_v3_conf`, no reduced tail, no dilation).
const SMALL: [Bneck; 11] = [
    (16, 3, 16, 16, true, RE, 2),
    (16, 3, 72, 24, false, RE, 2),
    (24, 3, 88, 24, false, RE, 1),
    (24, 5, 96, 40, true, HS, 2),
    (40, 5, 240, 40, true, HS, 1),
    (40, 5, 240, 40, true, HS, 1),
    (40, 5, 120, 48, true, HS, 1),
    (48, 5, 144, 48, true, HS, 1),
    (48, 5, 288, 96, true, HS, 2),
    (96, 5, 576, 96, true, HS, 1),
    (96, 5, 576, 96, true, HS, 1),
];

/// `mobilenet_v3_large`.
const LARGE: [Bneck; 15] = [
    (16, 3, 16, 16, false, RE, 1),
    (16, 3, 64, 24, false, RE, 2),
    (24, 3, 72, 24, false, RE, 1),
    (24, 5, 72, 40, true, RE, 2),
    (40, 5, 120, 40, true, RE, 1),
    (40, 5, 120, 40, true, RE, 1),
    (40, 3, 240, 80, false, HS, 2),
    (80, 3, 200, 80, false, HS, 1),
    (80, 3, 184, 80, false, HS, 1),
    (80, 3, 184, 80, false, HS, 1),
    (80, 3, 480, 112, true, HS, 1),
    (112, 3, 672, 112, true, HS, 1),
    (112, 5, 672, 160, true, HS, 2),
    (160, 5, 960, 160, true, HS, 1),
    (160, 5, 960, 160, true, HS, 1),
];

/// A convolution with batch norm and its nonlinearity: ReLU fused into the convolution,
/// hard-swish applied after it.
struct ConvNl {
    conv: ConvBn,
    hard_swish: bool,
}

impl ConvNl {
    /// `Conv2dNormActivation` at `vb` (`vb.0` conv, `vb.1` batch norm); `nl: None` is linear.
    fn load(vb: &VarBuilder, geom: ConvGeom, nl: Option<Nl>) -> Result<Self> {
        let act = if nl == Some(RE) { Act::Relu } else { Act::None };
        Ok(Self {
            conv: ConvBn::load(vb.pp(0), vb.pp(1), geom, BN_EPS, act)?,
            hard_swish: nl == Some(HS),
        })
    }

    fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let y = self.conv.forward_with_residual(x, residual)?;
        if self.hard_swish {
            hard_swish(&y)
        } else {
            Ok(y)
        }
    }
}

/// torchvision's `SqueezeExcitation` with a hard-sigmoid gate: `x · hsig(fc2(relu(fc1(mean x))))`
/// (`fc1`/`fc2` are 1×1 convolutions with bias, applied here to the pooled vector).
struct SqueezeExcite {
    fc1: Linear,
    fc2: Linear,
}

impl SqueezeExcite {
    fn load(vb: VarBuilder, channels: usize, squeeze: usize) -> Result<Self> {
        let fc = |name: &str, cout: usize, cin: usize| -> Result<Linear> {
            let v = vb.pp(name);
            let w = v.get((cout, cin, 1, 1), "weight")?.reshape((cout, cin))?;
            Linear::new(&w, v.get(cout, "bias")?)
        };
        Ok(Self {
            fc1: fc("fc1", squeeze, channels)?,
            fc2: fc("fc2", channels, squeeze)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        let s = self.fc1.forward(&global_avg_pool(x)?)?.relu()?;
        let s = hard_sigmoid(&self.fc2.forward(&s)?)?;
        x.broadcast_mul(&s.reshape((n, c, 1, 1))?)
    }
}

/// torchvision's MobileNetV3 `InvertedResidual`.
struct Block {
    expand: Option<ConvNl>,
    depthwise: ConvNl,
    se: Option<SqueezeExcite>,
    project: ConvNl,
    residual: bool,
}

impl Block {
    fn load(vb: VarBuilder, cfg: Bneck, width_mult: f64) -> Result<Self> {
        let (inp, kernel, exp, out, se, nl, stride) = cfg;
        let adjust = |c: usize| make_divisible(c as f64 * width_mult, 8);
        let (inp, exp, out) = (adjust(inp), adjust(exp), adjust(out));
        let b = vb.pp("block");
        let mut k = 0;
        let mut next = || {
            k += 1;
            b.pp(k - 1)
        };
        let expand = (exp != inp)
            .then(|| ConvNl::load(&next(), ConvGeom::same_torch(inp, exp, 1, 1, 1), Some(nl)))
            .transpose()?;
        let depthwise = ConvNl::load(
            &next(),
            ConvGeom::same_torch(exp, exp, kernel, stride, exp),
            Some(nl),
        )?;
        let se = se
            .then(|| SqueezeExcite::load(next(), exp, make_divisible((exp / 4) as f64, 8)))
            .transpose()?;
        let project = ConvNl::load(&next(), ConvGeom::same_torch(exp, out, 1, 1, 1), None)?;
        Ok(Self {
            expand,
            depthwise,
            se,
            project,
            residual: stride == 1 && inp == out,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = match &self.expand {
            Some(e) => e.forward(x, None)?,
            None => x.clone(),
        };
        let h = self.depthwise.forward(&h, None)?;
        let h = match &self.se {
            Some(se) => se.forward(&h)?,
            None => h,
        };
        // The shortcut is added in the projection's output pass (it has no activation).
        self.project.forward(&h, self.residual.then_some(x))
    }
}

/// A loaded MobileNetV3, inference only.
pub struct MobileNetV3 {
    stem: ConvNl,
    blocks: Vec<Block>,
    head: ConvNl,
    hidden: Linear,
    classifier: Linear,
}

impl MobileNetV3 {
    /// Builds the network of `setting` (its `bneck` rows at width 1.0) with `last_channel`
    /// hidden classifier units, at `width_mult`, from weights under `vb`.
    fn load(
        vb: VarBuilder,
        setting: &[Bneck],
        last_channel: usize,
        width_mult: f64,
    ) -> Result<Self> {
        let adjust = |c: usize| make_divisible(c as f64 * width_mult, 8);
        let f = vb.pp("features");
        let first = adjust(setting[0].0);
        let stem = ConvNl::load(&f.pp(0), ConvGeom::same_torch(3, first, 3, 2, 1), Some(HS))?;
        let blocks = setting
            .iter()
            .enumerate()
            .map(|(i, &cfg)| Block::load(f.pp(i + 1), cfg, width_mult))
            .collect::<Result<Vec<_>>>()?;
        let last_in = adjust(setting[setting.len() - 1].3);
        let last_out = 6 * last_in;
        let head = ConvNl::load(
            &f.pp(setting.len() + 1),
            ConvGeom::same_torch(last_in, last_out, 1, 1, 1),
            Some(HS),
        )?;
        let hidden_units = adjust(last_channel);
        // The hidden layer's shape is the architecture's (asked for, not read): a weights source
        // that makes tensors up on request (`kiln bench`'s random weights) can then supply it.
        let hidden =
            Linear::load_shaped(vb.pp("classifier.0"), last_out, hidden_units).map_err(|e| {
                candle_core::Error::Msg(format!(
                    "{e} (width {width_mult} needs {hidden_units} hidden units)"
                ))
            })?;
        // classifier.1 is hard-swish, classifier.2 dropout (the identity at inference).
        let classifier = Linear::load(vb.pp("classifier.3"), hidden_units)?;
        Ok(Self {
            stem,
            blocks,
            head,
            hidden,
            classifier,
        })
    }

    /// The head conv's feature maps, `[n, c, h, w]`.
    fn maps(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.stem.forward(x, None)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        self.head.forward(&h, None)
    }

    fn logits(&self, maps: &Tensor) -> Result<Tensor> {
        let h = hard_swish(&self.hidden.forward(&global_avg_pool(maps)?)?)?;
        self.classifier.forward(&h)
    }
}

impl ImageModel for MobileNetV3 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.logits(&self.maps(x)?)
    }

    fn num_classes(&self) -> usize {
        self.classifier.out_features()
    }

    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        let maps = self.maps(x)?;
        Ok(Features {
            logits: self.logits(&maps)?,
            maps,
        })
    }

    fn classifier(&self) -> Option<&Linear> {
        None
    }
}
