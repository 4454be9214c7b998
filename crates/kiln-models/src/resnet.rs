//! ResNet (He et al., 2016), Wide ResNet and ResNeXt with torchvision's structure and key names:
//! `conv1`/`bn1` stem, a 3×3 stride-2 max pool, `layer1..=4` of `BasicBlock`s or `Bottleneck`s
//! (`layerN.i.conv1/bn1/conv2/bn2[/conv3/bn3]`, `layerN.i.downsample.0/1`), global average
//! pooling and `fc`.
//!
//! The variants differ only in data ([`ResNetConfig`]): block type, blocks per stage, groups and
//! width per group. As in torchvision ("ResNet V1.5"), a bottleneck strides on its 3×3 conv.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::keymap::{split_param, KeyConvention, KeyMap, BN_PARAMS};
use crate::layers::{
    avg_pool_nhwc, global_avg_pool, max_pool_3x3_s2_nhwc, Act, ConvBn, ConvGeom, Linear,
};
use crate::registry::{no_params, Family, Variant};
use crate::{Features, ImageModel};

/// A variant: its registry name and its [`ResNetConfig`].
macro_rules! variant {
    ($name:literal, $cfg:ident) => {
        Variant {
            name: $name,
            build: |vb, _| Ok(Box::new(ResNet::load(vb, ResNetConfig::$cfg)?)),
        }
    };
}

/// Everything kiln knows about this family; collected by [`crate::registry`].
pub static FAMILY: Family = Family {
    name: "resnet",
    stem_key: "conv1.weight",
    classifier: "fc",
    params: &[],
    check: no_params,
    preset: kiln_preprocess::Preset::TorchvisionImagenet,
    variants: &[
        variant!("resnet18", RESNET18),
        variant!("resnet34", RESNET34),
        variant!("resnet50", RESNET50),
        variant!("resnet101", RESNET101),
        variant!("resnet152", RESNET152),
        variant!("wide_resnet50_2", WIDE_RESNET50_2),
        variant!("resnext50_32x4d", RESNEXT50_32X4D),
    ],
    key_maps: &[KeyMap {
        convention: KeyConvention::TransformersResNet,
        label: "transformers ResNet",
        expected: "resnet.embedder.embedder.*, resnet.encoder.stages.S.layers.I.{layer.J,shortcut}.*, classifier.1",
        rename: transformers_key,
    }],
};

/// torchvision's batch-norm epsilon (`nn.BatchNorm2d` default).
const BN_EPS: f64 = 1e-5;

/// The residual block a ResNet is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34).
    Basic,
    /// 1×1 reduce, 3×3 (possibly grouped), 1×1 expand by 4 (ResNet-50 and deeper).
    Bottleneck,
}

impl BlockKind {
    /// Output channels of a block relative to its `planes`.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// One ResNet variant, as torchvision's `ResNet(block, layers, groups, width_per_group)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Block type.
    pub block: BlockKind,
    /// Blocks in `layer1..=layer4`.
    pub layers: [usize; 4],
    /// Groups of the bottleneck's 3×3 convolution (ResNeXt's cardinality).
    pub groups: usize,
    /// Channels per group of the bottleneck's 3×3 convolution at `planes = 64`.
    pub width_per_group: usize,
}

impl ResNetConfig {
    const fn new(
        block: BlockKind,
        layers: [usize; 4],
        groups: usize,
        width_per_group: usize,
    ) -> Self {
        Self {
            block,
            layers,
            groups,
            width_per_group,
        }
    }

    /// `resnet18`.
    pub const RESNET18: Self = Self::new(BlockKind::Basic, [2, 2, 2, 2], 1, 64);
    /// `resnet34`.
    pub const RESNET34: Self = Self::new(BlockKind::Basic, [3, 4, 6, 3], 1, 64);
    /// `resnet50`.
    pub const RESNET50: Self = Self::new(BlockKind::Bottleneck, [3, 4, 6, 3], 1, 64);
    /// `resnet101`.
    pub const RESNET101: Self = Self::new(BlockKind::Bottleneck, [3, 4, 23, 3], 1, 64);
    /// `resnet152`.
    pub const RESNET152: Self = Self::new(BlockKind::Bottleneck, [3, 8, 36, 3], 1, 64);
    /// `wide_resnet50_2`: bottlenecks twice as wide inside.
    pub const WIDE_RESNET50_2: Self = Self::new(BlockKind::Bottleneck, [3, 4, 6, 3], 1, 128);
    /// `resnext50_32x4d`: 32 groups of 4 channels (at `planes = 64`).
    pub const RESNEXT50_32X4D: Self = Self::new(BlockKind::Bottleneck, [3, 4, 6, 3], 32, 4);

    /// Width of a bottleneck's 3×3 convolution for `planes` (torchvision:
    /// `int(planes * (width_per_group / 64.0)) * groups`; `planes` is a multiple of 64, so exact).
    pub fn bottleneck_width(&self, planes: usize) -> usize {
        planes * self.width_per_group / 64 * self.groups
    }

    /// Channels entering `fc`.
    pub fn features(&self) -> usize {
        512 * self.block.expansion()
    }
}

/// A residual block: a chain of convolutions (batch norm folded) whose last one adds the shortcut
/// before its ReLU, and an optional projection shortcut (`downsample`).
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    /// torchvision's `BasicBlock`: 3×3 (stride) → 3×3, keys `conv1/bn1/conv2/bn2`.
    fn basic(vb: VarBuilder, inp: usize, planes: usize, stride: usize) -> Result<Self> {
        let convs = vec![
            conv_bn(&vb, 1, ConvGeom::same_torch(inp, planes, 3, stride, 1))?,
            conv_bn(&vb, 2, ConvGeom::same_torch(planes, planes, 3, 1, 1))?,
        ];
        Self::finish(vb, convs, inp, planes, stride)
    }

    /// torchvision's `Bottleneck`: 1×1 → 3×3 (stride, groups) → 1×1 ×4, keys `conv1..3/bn1..3`.
    fn bottleneck(
        vb: VarBuilder,
        inp: usize,
        planes: usize,
        stride: usize,
        cfg: &ResNetConfig,
    ) -> Result<Self> {
        let width = cfg.bottleneck_width(planes);
        let out = planes * 4;
        let convs = vec![
            conv_bn(&vb, 1, ConvGeom::same_torch(inp, width, 1, 1, 1))?,
            conv_bn(
                &vb,
                2,
                ConvGeom::same_torch(width, width, 3, stride, cfg.groups),
            )?,
            conv_bn(&vb, 3, ConvGeom::same_torch(width, out, 1, 1, 1))?,
        ];
        Self::finish(vb, convs, inp, out, stride)
    }

    /// Adds the projection shortcut where the block changes resolution or width.
    fn finish(
        vb: VarBuilder,
        convs: Vec<ConvBn>,
        inp: usize,
        out: usize,
        stride: usize,
    ) -> Result<Self> {
        let downsample = if stride != 1 || inp != out {
            let d = vb.pp("downsample");
            let geom = ConvGeom::same_torch(inp, out, 1, stride, 1);
            Some(ConvBn::load(d.pp(0), d.pp(1), geom, BN_EPS, Act::None)?)
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    /// Whether every convolution of the block runs channels-last for `x`.
    fn runs_nhwc(&self, x: &Tensor) -> bool {
        self.convs
            .iter()
            .chain(&self.downsample)
            .all(|c| c.runs_nhwc(x))
    }

    /// The block on kiln's channel-blocked layout (CPU, f32; [`Block::runs_nhwc`]; see
    /// [`ConvBn::forward_blocked`]).
    fn forward_blocked(&self, x: &Tensor) -> Result<Tensor> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward_blocked(x, None)?,
            None => x.clone(),
        };
        let (last, first) = self.convs.split_last().expect("a block has convolutions");
        let mut h = x.clone();
        for c in first {
            h = c.forward_blocked(&h, None)?;
        }
        last.forward_blocked(&h, Some(&shortcut))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        let (last, first) = self.convs.split_last().expect("a block has convolutions");
        let mut h = x.clone();
        for c in first {
            h = c.forward(&h)?;
        }
        // relu(bn(conv(h)) + shortcut), fused into the last convolution.
        last.forward_with_residual(&h, Some(&shortcut))
    }
}

/// `convN` + `bnN` of a block, followed by ReLU (after the residual add for the last one).
fn conv_bn(vb: &VarBuilder, n: usize, geom: ConvGeom) -> Result<ConvBn> {
    ConvBn::load(
        vb.pp(format!("conv{n}")),
        vb.pp(format!("bn{n}")),
        geom,
        BN_EPS,
        Act::Relu,
    )
}

/// A loaded ResNet, inference only.
pub struct ResNet {
    stem: ConvBn,
    blocks: Vec<Block>,
    /// Where [`ImageModel::forward_batch`] switches from one image per thread to a group of
    /// images per thread: `layer3`'s second block, the first on 14×14 maps at 224².
    deep: usize,
    fc: Linear,
}

impl ResNet {
    /// Builds the variant `cfg` from weights under `vb`. The class count is read from `fc.weight`.
    pub fn load(vb: VarBuilder, cfg: ResNetConfig) -> Result<Self> {
        let stem = ConvBn::load(
            vb.pp("conv1"),
            vb.pp("bn1"),
            ConvGeom::same_torch(3, 64, 7, 2, 1),
            BN_EPS,
            Act::Relu,
        )?;
        let mut inp = 64;
        let mut blocks = vec![];
        for (stage, &n) in cfg.layers.iter().enumerate() {
            let planes = 64 << stage;
            let layer = vb.pp(format!("layer{}", stage + 1));
            for i in 0..n {
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                let block = match cfg.block {
                    BlockKind::Basic => Block::basic(layer.pp(i), inp, planes, stride)?,
                    BlockKind::Bottleneck => {
                        Block::bottleneck(layer.pp(i), inp, planes, stride, &cfg)?
                    }
                };
                blocks.push(block);
                inp = planes * cfg.block.expansion();
            }
        }
        let fc = Linear::load(vb.pp("fc"), cfg.features())?;
        let deep = (cfg.layers[0] + cfg.layers[1] + 1).min(blocks.len());
        Ok(Self {
            stem,
            blocks,
            deep,
            fc,
        })
    }

    /// Whether the channel-blocked CPU path runs for `x` (CPU, f32, no grouped convolution).
    fn runs_blocked(&self, x: &Tensor) -> bool {
        self.stem.runs_nhwc(x) && self.blocks.iter().all(|b| b.runs_nhwc(x))
    }

    /// The stem, the pooling and `blocks[..end]` on the channel-blocked path.
    fn forward_shallow(&self, x: &Tensor, end: usize) -> Result<Tensor> {
        let mut h = max_pool_3x3_s2_nhwc(&self.stem.forward_blocked_from_nchw(x)?)?;
        for b in &self.blocks[..end] {
            h = b.forward_blocked(&h)?;
        }
        Ok(h)
    }

    /// `blocks[start..]`, the pooling and the classifier on the channel-blocked path.
    fn forward_deep(&self, mut h: Tensor, start: usize) -> Result<Tensor> {
        for b in &self.blocks[start..] {
            h = b.forward_blocked(&h)?;
        }
        self.fc.forward(&avg_pool_nhwc(&h)?)
    }
}

/// torchvision's `MaxPool2d(kernel_size=3, stride=2, padding=1)`.
///
/// candle's `max_pool2d` has no padding, so the input is padded first. Zero padding is exact here
/// (and cheaper than a -inf fill): the input is the stem's ReLU output, so every value is >= 0,
/// and each 3×3 window holds at least one real value, hence max(window ∪ {0}) = max(window) —
/// the same result as PyTorch's implicit -inf padding. Output size floor((h + 2 - 3) / 2) + 1
/// matches PyTorch's (`ceil_mode=False`) for any h, w, so non-square inputs work.
fn max_pool_3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    x.pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .max_pool2d_with_stride(3, 2)
}

impl ImageModel for ResNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.runs_blocked(x) {
            // CPU, f32, no grouped convolutions: channel-blocked (64-channel channels-last
            // planes) from the stem to the pooling.
            let h = self.forward_shallow(x, self.blocks.len())?;
            return self.forward_deep(h, self.blocks.len());
        }
        let mut h = max_pool_3x3_s2_p1(&self.stem.forward(x)?)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        self.fc.forward(&global_avg_pool(&h)?)
    }

    fn num_classes(&self) -> usize {
        self.fc.out_features()
    }

    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        if self.runs_blocked(x) {
            let h = self.forward_shallow(x, self.blocks.len())?;
            let logits = self.fc.forward(&avg_pool_nhwc(&h)?)?;
            return Ok(Features {
                logits,
                maps: blocked_to_nchw(&h)?,
            });
        }
        let mut h = max_pool_3x3_s2_p1(&self.stem.forward(x)?)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        Ok(Features {
            logits: self.fc.forward(&global_avg_pool(&h)?)?,
            maps: h,
        })
    }

    fn classifier(&self) -> Option<&Linear> {
        Some(&self.fc)
    }

    /// Batches on the CPU: the early stages (large maps, few weights) one image per thread, as
    /// [`crate::layers::forward_spread`]; from `layer3`'s second block on (small maps, 90% of
    /// the weights) the images in one group per thread, each group through every layer
    /// together, so that those weights are read from memory once per group instead of once per
    /// image.
    fn forward_batch(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        let threads = kiln_kernels::current_threads();
        if n < 2 || threads < 2 || !self.runs_blocked(x) {
            return crate::layers::forward_spread(self, x);
        }
        kiln_kernels::team(|| {
            let heads = run_each(n, |i| self.forward_shallow(&x.narrow(0, i, 1)?, self.deep))?;
            let per = n.div_ceil(threads.min(n));
            let logits = run_each(n.div_ceil(per), |g| {
                // Channel-blocked tensors are `[c / b, n, h, w, b]`: images join on dim 1.
                let group = &heads[g * per..((g + 1) * per).min(n)];
                self.forward_deep(Tensor::cat(group, 1)?, self.deep)
            })?;
            Tensor::cat(&logits, 0)
        })
    }
}

/// Channel-blocked `[c / b, n, h, w, b]` → `[n, c, h, w]`.
fn blocked_to_nchw(x: &Tensor) -> Result<Tensor> {
    let (blocks, n, h, w, b) = x.dims5()?;
    x.permute((1, 0, 4, 2, 3))?
        .contiguous()?
        .reshape((n, blocks * b, h, w))
}

/// `f(0..count)`, the calls spread over the current team's threads, each computed with serial
/// kernels ([`kiln_kernels::serial`]); the results in order, or the first error.
fn run_each(count: usize, f: impl Fn(usize) -> Result<Tensor> + Sync) -> Result<Vec<Tensor>> {
    let slots: Vec<std::sync::Mutex<Option<Result<Tensor>>>> =
        (0..count).map(|_| std::sync::Mutex::new(None)).collect();
    kiln_kernels::par_for(count, |i| {
        let r = kiln_kernels::serial(|| f(i));
        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| Err(candle_core::Error::Msg("task not run".into())))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Other libraries' names for this network

/// transformers `ResNetForImageClassification` name → torchvision name.
///
/// `resnet.embedder.embedder.{convolution,normalization}` → `conv1`/`bn1`;
/// `resnet.encoder.stages.S.layers.I.layer.J.{convolution,normalization}` →
/// `layer{S+1}.I.conv{J+1}`/`bn{J+1}`; `…shortcut.{convolution,normalization}` →
/// `…downsample.0/1`; `classifier.1` → `fc`.
pub fn transformers_key(name: &str) -> Option<String> {
    let (module, param) = split_param(name)?;
    let conv_or_bn = |m: &str| -> Option<bool> {
        match m {
            "convolution" if param == "weight" => Some(true),
            "normalization" if BN_PARAMS.contains(&param) => Some(false),
            _ => None,
        }
    };
    if let Some(m) = module.strip_prefix("resnet.embedder.embedder.") {
        let conv = conv_or_bn(m)?;
        return Some(format!("{}.{param}", if conv { "conv1" } else { "bn1" }));
    }
    if module == "classifier.1" && (param == "weight" || param == "bias") {
        return Some(format!("fc.{param}"));
    }
    let rest = module.strip_prefix("resnet.encoder.stages.")?;
    let parts: Vec<&str> = rest.split('.').collect();
    match parts.as_slice() {
        [s, "layers", i, "shortcut", m] => {
            let s: usize = s.parse().ok()?;
            let i: usize = i.parse().ok()?;
            let conv = conv_or_bn(m)?;
            (s < 4).then(|| {
                format!(
                    "layer{}.{i}.downsample.{}.{param}",
                    s + 1,
                    if conv { 0 } else { 1 }
                )
            })
        }
        [s, "layers", i, "layer", j, m] => {
            let s: usize = s.parse().ok()?;
            let i: usize = i.parse().ok()?;
            let j: usize = j.parse().ok()?;
            let conv = conv_or_bn(m)?;
            (s < 4 && j < 3).then(|| {
                format!(
                    "layer{}.{i}.{}{}.{param}",
                    s + 1,
                    if conv { "conv" } else { "bn" },
                    j + 1
                )
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn max_pool_matches_torch_padding_and_sizes() {
        // A 1x1x5x4 ramp of non-negative values; torch's MaxPool2d(3, 2, 1) gives 3x2.
        let x = Tensor::arange(0f32, 20., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 5, 4))
            .unwrap();
        let y = max_pool_3x3_s2_p1(&x).unwrap();
        assert_eq!(y.dims(), &[1, 1, 3, 2]);
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![5., 7., 13., 15., 17., 19.]);
        // 160x200 after the stride-2 stem (80x100) pools to 40x50, as in torch.
        let x = Tensor::zeros((1, 2, 80, 100), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(max_pool_3x3_s2_p1(&x).unwrap().dims(), &[1, 2, 40, 50]);
        let x = Tensor::zeros((1, 2, 7, 7), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(max_pool_3x3_s2_p1(&x).unwrap().dims(), &[1, 2, 4, 4]);
    }

    #[test]
    fn bottleneck_widths_match_torchvision() {
        let width = |c: ResNetConfig, planes: usize| c.bottleneck_width(planes);
        assert_eq!(width(ResNetConfig::RESNET50, 64), 64);
        assert_eq!(width(ResNetConfig::WIDE_RESNET50_2, 64), 128);
        assert_eq!(width(ResNetConfig::WIDE_RESNET50_2, 512), 1024);
        assert_eq!(width(ResNetConfig::RESNEXT50_32X4D, 64), 128);
        assert_eq!(width(ResNetConfig::RESNEXT50_32X4D, 512), 1024);
        assert_eq!(ResNetConfig::RESNET18.features(), 512);
        assert_eq!(ResNetConfig::RESNET152.features(), 2048);
    }
}
