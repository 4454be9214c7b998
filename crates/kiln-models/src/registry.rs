//! Architecture names → builders.

use std::collections::BTreeMap;

use candle_nn::VarBuilder;

use crate::efficientnet_lite::EfficientNetLiteConfig;
use crate::resnet::ResNetConfig;
use crate::{ImageModel, ModelError};

/// Architecture parameters by name (e.g. `width_mult`), as found in a spec's `arch_params`.
pub type ArchParams = BTreeMap<String, f64>;

type Builder = fn(VarBuilder, &ArchParams) -> candle_core::Result<Box<dyn ImageModel>>;

/// One registered architecture.
pub struct ArchEntry {
    /// Registry name, e.g. `resnet50`.
    pub name: &'static str,
    /// Family (the model file), e.g. `resnet`.
    pub family: &'static str,
    /// Key prefix of the final linear layer (its `.weight` rows are the class count).
    pub classifier: &'static str,
    /// Parameters it accepts, with their defaults, for `kiln inspect` and `--help`.
    pub params: &'static [(&'static str, f64)],
    /// Builds the network from weights.
    pub build: Builder,
}

fn param(p: &ArchParams, name: &str, default: f64) -> f64 {
    p.get(name).copied().unwrap_or(default)
}

fn mobilenet_v2(vb: VarBuilder, p: &ArchParams) -> candle_core::Result<Box<dyn ImageModel>> {
    let o = crate::mobilenet_v2::MobileNetV2Options {
        width_mult: param(p, "width_mult", 1.0),
        tf_padding: param(p, "tf_padding", 0.0) != 0.0,
        bn_eps: param(p, "bn_eps", 1e-5),
    };
    Ok(Box::new(crate::mobilenet_v2::MobileNetV2::load_with(
        vb, &o,
    )?))
}

fn resnet(vb: VarBuilder, cfg: ResNetConfig) -> candle_core::Result<Box<dyn ImageModel>> {
    Ok(Box::new(crate::resnet::ResNet::load(vb, cfg)?))
}

/// A ResNet-family entry: the variant is data ([`ResNetConfig`]); no parameters.
macro_rules! resnet_entry {
    ($name:literal, $cfg:ident) => {
        ArchEntry {
            name: $name,
            family: "resnet",
            classifier: "fc",
            params: &[],
            build: |vb, _| resnet(vb, ResNetConfig::$cfg),
        }
    };
}

fn efficientnet_lite(
    vb: VarBuilder,
    cfg: EfficientNetLiteConfig,
) -> candle_core::Result<Box<dyn ImageModel>> {
    Ok(Box::new(crate::efficientnet_lite::EfficientNetLite::load(
        vb, cfg,
    )?))
}

/// An EfficientNet-Lite entry (TensorFlow-trained, efficientnet_pytorch key names); the variant
/// is data ([`EfficientNetLiteConfig`]); no parameters.
macro_rules! efficientnet_lite_entry {
    ($name:literal, $cfg:ident) => {
        ArchEntry {
            name: $name,
            family: "efficientnet_lite",
            classifier: "_fc",
            params: &[],
            build: |vb, _| efficientnet_lite(vb, EfficientNetLiteConfig::$cfg),
        }
    };
}

/// Every architecture kiln can build.
pub static ARCHITECTURES: &[ArchEntry] = &[
    ArchEntry {
        name: "mobilenet_v2",
        family: "mobilenet_v2",
        classifier: "classifier.1",
        // tf_padding (0/1) and bn_eps: transformers' MobileNetV2 (TensorFlow-ported).
        params: &[("width_mult", 1.0), ("tf_padding", 0.0), ("bn_eps", 1e-5)],
        build: mobilenet_v2,
    },
    resnet_entry!("resnet18", RESNET18),
    resnet_entry!("resnet34", RESNET34),
    resnet_entry!("resnet50", RESNET50),
    resnet_entry!("resnet101", RESNET101),
    resnet_entry!("resnet152", RESNET152),
    resnet_entry!("wide_resnet50_2", WIDE_RESNET50_2),
    resnet_entry!("resnext50_32x4d", RESNEXT50_32X4D),
    efficientnet_lite_entry!("efficientnet_lite0", LITE0),
    efficientnet_lite_entry!("efficientnet_lite1", LITE1),
    efficientnet_lite_entry!("efficientnet_lite2", LITE2),
    efficientnet_lite_entry!("efficientnet_lite3", LITE3),
    efficientnet_lite_entry!("efficientnet_lite4", LITE4),
];

/// Looks up an architecture by name.
pub fn find(name: &str) -> Result<&'static ArchEntry, ModelError> {
    ARCHITECTURES
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ModelError::UnknownArchitecture {
            name: name.to_string(),
            known: ARCHITECTURES
                .iter()
                .map(|a| a.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Validates the parameters and builds `name` from the weights under `vb`.
pub fn build(
    name: &str,
    params: &ArchParams,
    vb: VarBuilder,
) -> Result<Box<dyn ImageModel>, ModelError> {
    let entry = find(name)?;
    for key in params.keys() {
        if !entry.params.iter().any(|(p, _)| p == key) {
            return Err(ModelError::BadParam {
                arch: name.into(),
                param: key.clone(),
                value: params[key].to_string(),
                expected: format!(
                    "one of the parameters {} accepts: [{}]",
                    name,
                    entry
                        .params
                        .iter()
                        .map(|(p, _)| *p)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    if entry.family == "mobilenet_v2" {
        let w = param(params, "width_mult", 1.0);
        if !(w > 0.0 && w <= 4.0) {
            return Err(ModelError::BadParam {
                arch: name.into(),
                param: "width_mult".into(),
                value: w.to_string(),
                expected: "0 < width_mult <= 4 (torchvision publishes 0.5, 0.75, 1.0, 1.4)".into(),
            });
        }
        let t = param(params, "tf_padding", 0.0);
        if t != 0.0 && t != 1.0 {
            return Err(ModelError::BadParam {
                arch: name.into(),
                param: "tf_padding".into(),
                value: t.to_string(),
                expected: "0 (torchvision's padding) or 1 (TensorFlow's \"SAME\")".into(),
            });
        }
        let eps = param(params, "bn_eps", 1e-5);
        if !(eps > 0.0 && eps < 1.0) {
            return Err(ModelError::BadParam {
                arch: name.into(),
                param: "bn_eps".into(),
                value: eps.to_string(),
                expected: "a batch-norm epsilon, 0 < bn_eps < 1".into(),
            });
        }
    }
    (entry.build)(vb, params).map_err(|e| ModelError::Weights {
        arch: name.into(),
        error: without_backtrace(e),
    })
}

/// candle attaches a backtrace to errors when `RUST_BACKTRACE` is set; a missing key or a wrong
/// shape is the user's data, not a bug, so the message alone is what they should see.
fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        other => other,
    }
}
