//! Training specs from the configs that model hubs publish beside their weights.
//!
//! Two conventions are read, each reproducing the library's own eval transform:
//!
//! * **timm** `config.json` (`architecture`, `num_classes`, `label_names`, and `pretrained_cfg`
//!   with `input_size`, `interpolation`, `crop_pct`, `crop_mode`, `mean`, `std`). timm evaluates
//!   with `transforms_imagenet_eval`: `Resize(floor(H / crop_pct))` on the shorter side (torchvision,
//!   PIL), `CenterCrop(H)`, `ToTensor`, `Normalize(mean, std)`; missing fields take the defaults of
//!   timm's `resolve_data_config` (bicubic, crop_pct 0.875, ImageNet mean/std, 3×224×224).
//! * **Hugging Face transformers** `preprocessor_config.json` (image processors: `do_resize`,
//!   `size`, `resample`, `do_center_crop`, `crop_size`, `do_rescale`, `rescale_factor`,
//!   `do_normalize`, `image_mean`, `image_std`, and ConvNeXt's `crop_pct`) together with the model's
//!   `config.json` (architecture, `id2label`).
//!
//! Anything the spec cannot express exactly is refused with the field and the reason, rather than
//! approximated: non-square timm inputs (timm then uses `ResizeKeepRatio`, which rounds
//! differently), `crop_mode` `squash`/`border`, filters kiln does not implement (box, hamming),
//! processors whose resize logic is their own (LeViT, EfficientNet, …).
//!
//! These are pure functions of the JSON text; nothing here downloads anything.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::spec::{
    ChannelOrder, Interpolation, Layout, Pipeline, PixelScale, Resize, TrainingSpec, IMAGENET_MEAN,
    IMAGENET_STD, SPEC_VERSION,
};
use crate::SpecError;

/// Which hub convention a config follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubFormat {
    /// timm (`pytorch-image-models`): one `config.json` with a `pretrained_cfg`.
    Timm,
    /// Hugging Face transformers: `config.json` (model) + `preprocessor_config.json`.
    Transformers,
}

impl HubFormat {
    /// Parses `timm`, `hf` / `transformers`.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "timm" => Some(Self::Timm),
            "hf" | "transformers" | "huggingface" => Some(Self::Transformers),
            _ => None,
        }
    }

    /// The short name (`timm`, `transformers`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Timm => "timm",
            Self::Transformers => "transformers",
        }
    }
}

/// The tensor naming of a hub checkpoint, which decides how its keys are renamed to the
/// torchvision names kiln's models load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyConvention {
    /// Already torchvision's names (timm's ResNet family).
    Torchvision,
    /// timm's `EfficientNet`-style MobileNetV2: `conv_stem`, `bn1`, `blocks.S.B.*`, `conv_head`,
    /// `bn2`, `classifier`.
    TimmMobileNetV2,
    /// transformers' `ResNetForImageClassification`: `resnet.embedder…`, `resnet.encoder.stages…`,
    /// `classifier.1`.
    TransformersResNet,
    /// transformers' `MobileNetV2ForImageClassification`: `mobilenet_v2.conv_stem…`,
    /// `mobilenet_v2.layer.I…`, `mobilenet_v2.conv_1x1…`, `classifier`.
    TransformersMobileNetV2,
}

/// A spec derived from hub configs, with what else the configs say.
#[derive(Debug, Clone, PartialEq)]
pub struct HubSpec {
    /// The spec (validated). `labels` is left `None`; the names are in [`HubSpec::labels`].
    pub spec: TrainingSpec,
    /// Class names from the config (`label_names`/`label_descriptions`, or `id2label`).
    pub labels: Option<Vec<String>>,
    /// The convention the configs follow.
    pub format: HubFormat,
    /// The architecture in the hub's own words (`mobilenetv2_100`, `ResNetForImageClassification`).
    pub hub_architecture: String,
    /// How the checkpoint's tensors are named.
    pub keys: KeyConvention,
}

fn invalid(
    field: impl Into<String>,
    value: impl Into<String>,
    expected: impl Into<String>,
) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        value: value.into(),
        expected: expected.into(),
    }
}

fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>, SpecError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(SpecError::Parse(format!(
            "{what} is a JSON {}, not an object",
            json_kind(&other)
        ))),
        Err(e) => Err(SpecError::Parse(format!("{what} is not valid JSON: {e}"))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Tells a timm `config.json` from a transformers one: timm's has `architecture` (a string) or
/// `pretrained_cfg`; transformers' has `model_type` or `architectures` (a list).
pub fn detect_format(config_json: &str) -> Result<HubFormat, SpecError> {
    let m = parse_object(config_json, "config.json")?;
    if m.contains_key("pretrained_cfg") || m.get("architecture").is_some_and(Value::is_string) {
        Ok(HubFormat::Timm)
    } else if m.contains_key("model_type") || m.contains_key("architectures") {
        Ok(HubFormat::Transformers)
    } else {
        Err(invalid(
            "config.json",
            format!(
                "an object with keys [{}]",
                m.keys().take(12).cloned().collect::<Vec<_>>().join(", ")
            ),
            "a timm config (`architecture`, `pretrained_cfg`) or a transformers config (`model_type`, `architectures`)",
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// timm

/// timm architectures kiln runs, with the registry name, parameters and key naming.
pub const TIMM_ARCHITECTURES: &[(&str, &str, Option<f64>)] = &[
    ("resnet18", "resnet18", None),
    ("resnet34", "resnet34", None),
    ("resnet50", "resnet50", None),
    ("resnet101", "resnet101", None),
    ("resnet152", "resnet152", None),
    ("resnext50_32x4d", "resnext50_32x4d", None),
    ("wide_resnet50_2", "wide_resnet50_2", None),
    ("mobilenetv2_035", "mobilenet_v2", Some(0.35)),
    ("mobilenetv2_050", "mobilenet_v2", Some(0.5)),
    ("mobilenetv2_075", "mobilenet_v2", Some(0.75)),
    ("mobilenetv2_100", "mobilenet_v2", Some(1.0)),
    ("mobilenetv2_140", "mobilenet_v2", Some(1.4)),
];

/// Maps a timm architecture name (a `.tag` suffix is ignored) to kiln's registry name, its
/// `arch_params` and the checkpoint's key naming.
///
/// timm's `resnet*` (plain stem, 1×1 stride-s projection, stride on the 3×3) are torchvision's
/// ResNet v1.5 with the same tensor names. timm's `mobilenetv2_{035,050,075,100,140}` build the
/// same network as torchvision's `mobilenet_v2(width_mult)`: stem `round(32·w)`, the same
/// stages and `make_divisible` rounding, head `max(1280, round(1280·w))`, ReLU6, BN eps 1e-5,
/// symmetric padding. `mobilenetv2_110d`/`_120d` (fixed stem/head, deeper stages) and the `d`,
/// `tf_`, `lite` variants are refused.
pub fn timm_architecture(
    name: &str,
) -> Result<(String, BTreeMap<String, Value>, KeyConvention), SpecError> {
    let base = name.split('.').next().unwrap_or(name);
    let found = TIMM_ARCHITECTURES.iter().find(|(t, _, _)| *t == base);
    let Some((_, kiln, width)) = found else {
        let why = if base.starts_with("mobilenetv2_") {
            " (timm's mobilenetv2_110d/_120d fix the stem and head and deepen the stages; only the \
             widths torchvision's structure covers are supported)"
        } else if base.starts_with("resnet") || base.starts_with("resnext") {
            " (timm's variants with deep stems, average-pool downsampling, SE or other blocks have \
             a different structure from torchvision's ResNet)"
        } else {
            ""
        };
        return Err(invalid(
            "architecture",
            format!("\"{name}\""),
            format!(
                "a timm architecture kiln can run: {}{why}",
                TIMM_ARCHITECTURES
                    .iter()
                    .map(|t| t.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    let mut params = BTreeMap::new();
    let keys = match width {
        Some(w) => {
            params.insert("width_mult".to_string(), Value::from(*w));
            KeyConvention::TimmMobileNetV2
        }
        None => KeyConvention::Torchvision,
    };
    Ok((kiln.to_string(), params, keys))
}

fn get_f64(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn float_list(field: &str, v: &Value) -> Result<Vec<f32>, SpecError> {
    let arr = v
        .as_array()
        .ok_or_else(|| invalid(field, v.to_string(), "a list of numbers"))?;
    let out: Option<Vec<f32>> = arr.iter().map(|x| x.as_f64().map(|f| f as f32)).collect();
    let mut out = out.ok_or_else(|| invalid(field, v.to_string(), "a list of numbers"))?;
    if out.len() == 1 {
        // timm and transformers both broadcast a single value over the channels.
        out = vec![out[0]; 3];
    }
    if out.len() != 3 {
        return Err(invalid(
            field,
            v.to_string(),
            "one value per RGB channel (3)",
        ));
    }
    Ok(out)
}

fn positive_int(field: &str, v: &Value) -> Result<u32, SpecError> {
    v.as_u64()
        .filter(|n| *n > 0 && *n <= u32::MAX as u64)
        .map(|n| n as u32)
        .ok_or_else(|| invalid(field, v.to_string(), "a positive integer"))
}

/// Reads a timm interpolation name (`bilinear`, `bicubic`, `nearest`, `lanczos`).
fn timm_interpolation(field: &str, v: &Value) -> Result<Interpolation, SpecError> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid(field, v.to_string(), "a string"))?;
    match s {
        "bilinear" => Ok(Interpolation::Bilinear),
        "bicubic" => Ok(Interpolation::Bicubic),
        "nearest" => Ok(Interpolation::Nearest),
        "lanczos" => Ok(Interpolation::Lanczos),
        other => Err(invalid(
            field,
            format!("\"{other}\""),
            "bilinear, bicubic, nearest or lanczos (kiln has no box/hamming filter, and `random` is a training-time choice)",
        )),
    }
}

/// The spec timm's eval transform implies for a `config.json` as timm writes it to the hub.
///
/// The transform fields are read from `pretrained_cfg` (or the older `default_cfg`, or the top
/// level). The scale size is `floor(H / crop_pct)` exactly as timm computes it, e.g. 256 for
/// 224 at 0.875 and 235 for 224 at 0.95.
pub fn spec_from_timm(config_json: &str) -> Result<HubSpec, SpecError> {
    let top = parse_object(config_json, "timm config.json")?;
    let cfg: &Map<String, Value> =
        match top.get("pretrained_cfg").or_else(|| top.get("default_cfg")) {
            Some(Value::Object(c)) => c,
            Some(other) => return Err(invalid("pretrained_cfg", json_kind(other), "an object")),
            None => &top,
        };
    let lookup = |k: &str| {
        cfg.get(k)
            .filter(|v| !v.is_null())
            .or_else(|| top.get(k).filter(|v| !v.is_null()))
    };

    let hub_arch = top
        .get("architecture")
        .or_else(|| cfg.get("architecture"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid(
                "architecture",
                "absent",
                "the timm model name, e.g. \"resnet50\"",
            )
        })?
        .to_string();
    let (architecture, arch_params, keys) = timm_architecture(&hub_arch)?;

    // The model's head size: the top level is what was saved; pretrained_cfg is the original's.
    let num_classes = top
        .get("num_classes")
        .or_else(|| cfg.get("num_classes"))
        .ok_or_else(|| invalid("num_classes", "absent", "the number of classifier outputs"))?;
    let num_classes = positive_int("num_classes", num_classes)? as usize;

    if let Some(gp) = top.get("global_pool").filter(|v| !v.is_null()) {
        if gp.as_str() != Some("avg") {
            return Err(invalid(
                "global_pool",
                gp.to_string(),
                "\"avg\" (kiln's models end in global average pooling)",
            ));
        }
    }
    if let Some(Value::Object(args)) = top.get("model_args") {
        for (k, v) in args {
            let ok = match k.as_str() {
                "num_classes" => v.as_u64() == Some(num_classes as u64),
                "in_chans" => v.as_u64() == Some(3),
                "global_pool" => v.as_str() == Some("avg"),
                "drop_rate" | "drop_path_rate" | "pretrained_cfg_overlay" => true,
                _ => false,
            };
            if !ok {
                return Err(invalid(
                    format!("model_args.{k}"),
                    v.to_string(),
                    "no architecture arguments beyond num_classes (kiln builds the stock network)",
                ));
            }
        }
    }

    let input_size = match lookup("input_size") {
        None => [3u64, 224, 224].map(Value::from).to_vec(),
        Some(v) => v.as_array().cloned().ok_or_else(|| {
            invalid(
                "pretrained_cfg.input_size",
                v.to_string(),
                "[channels, height, width]",
            )
        })?,
    };
    let dims: Option<Vec<u64>> = input_size.iter().map(Value::as_u64).collect();
    let (h, w) = match dims.as_deref() {
        Some([3, h, w]) if *h > 0 && *w > 0 => (*h as u32, *w as u32),
        _ => {
            return Err(invalid(
                "pretrained_cfg.input_size",
                Value::Array(input_size.clone()).to_string(),
                "[3, height, width] (RGB input)",
            ))
        }
    };
    if h != w {
        return Err(invalid(
            "pretrained_cfg.input_size",
            format!("[3, {h}, {w}]"),
            "a square input: for non-square inputs timm resizes with ResizeKeepRatio (rounded, \
             bilinear whatever the config says), which a training spec cannot express",
        ));
    }

    let interpolation = match lookup("interpolation") {
        // resolve_data_config's default.
        None => Interpolation::Bicubic,
        Some(v) if v.as_str() == Some("") => Interpolation::Bicubic,
        Some(v) => timm_interpolation("pretrained_cfg.interpolation", v)?,
    };

    let crop_mode = lookup("crop_mode")
        .and_then(Value::as_str)
        .unwrap_or("center");
    if crop_mode != "center" {
        return Err(invalid(
            "pretrained_cfg.crop_mode",
            format!("\"{crop_mode}\""),
            "\"center\" (kiln implements timm's centre crop; `squash` resizes both sides without \
             keeping the aspect ratio and `border` pads, which a training spec cannot express)",
        ));
    }
    // `crop_pct or DEFAULT_CROP_PCT`: 0 and null both mean the default.
    let crop_pct = match lookup("crop_pct") {
        None => 0.875,
        Some(v) => {
            let c = get_f64(v)
                .ok_or_else(|| invalid("pretrained_cfg.crop_pct", v.to_string(), "a number"))?;
            if c == 0.0 {
                0.875
            } else {
                c
            }
        }
    };
    if !(crop_pct > 0.0 && crop_pct <= 1.0) {
        return Err(invalid(
            "pretrained_cfg.crop_pct",
            crop_pct.to_string(),
            "0 < crop_pct <= 1 (a larger crop than the resize would pad)",
        ));
    }
    // math.floor(img_size / crop_pct), in f64 as Python computes it.
    let scale_size = (h as f64 / crop_pct).floor() as u32;

    let mean = match lookup("mean") {
        None => IMAGENET_MEAN.to_vec(),
        Some(v) => float_list("pretrained_cfg.mean", v)?,
    };
    let std = match lookup("std") {
        None => IMAGENET_STD.to_vec(),
        Some(v) => float_list("pretrained_cfg.std", v)?,
    };

    let labels = timm_labels(&top, cfg, num_classes)?;

    let mut source = BTreeMap::new();
    source.insert("hub".into(), Value::from("timm"));
    source.insert("timm_architecture".into(), Value::from(hub_arch.clone()));
    if let Some(tag) = cfg.get("tag").and_then(Value::as_str) {
        source.insert("pretrained_tag".into(), Value::from(tag));
    }
    source.insert(
        "transform".into(),
        Value::from(format!(
            "timm transforms_imagenet_eval(img_size={h}, crop_pct={crop_pct}, crop_mode=center, \
             interpolation={}): Resize({scale_size}) + CenterCrop({h})",
            interp_name(interpolation)
        )),
    );

    let spec = TrainingSpec {
        kiln_spec: SPEC_VERSION,
        architecture,
        arch_params,
        num_classes,
        labels: None,
        input_size: [h, w],
        resize: Some(Resize {
            shorter_side: Some(scale_size),
            size: None,
            interpolation,
            antialias: true,
        }),
        center_crop: Some([h, w]),
        scale: PixelScale::Unit,
        mean,
        std,
        channel_order: ChannelOrder::Rgb,
        layout: Layout::Nchw,
        pipeline: Pipeline::Torchvision,
        source,
    };
    spec.validate()?;
    Ok(HubSpec {
        spec,
        labels,
        format: HubFormat::Timm,
        hub_architecture: hub_arch,
        keys,
    })
}

fn interp_name(i: Interpolation) -> &'static str {
    match i {
        Interpolation::Nearest => "nearest",
        Interpolation::Bilinear => "bilinear",
        Interpolation::Bicubic => "bicubic",
        Interpolation::Lanczos => "lanczos",
    }
}

/// `label_names` (with `label_descriptions` preferred where they exist: timm's ImageNet names
/// are WordNet ids such as `n01440764`, whose description is `tench, Tinca tinca`).
fn timm_labels(
    top: &Map<String, Value>,
    cfg: &Map<String, Value>,
    num_classes: usize,
) -> Result<Option<Vec<String>>, SpecError> {
    let Some(names) = top.get("label_names").or_else(|| cfg.get("label_names")) else {
        return Ok(None);
    };
    if names.is_null() {
        return Ok(None);
    }
    let arr = names
        .as_array()
        .ok_or_else(|| invalid("label_names", json_kind(names), "a list of strings"))?;
    let names: Option<Vec<String>> = arr.iter().map(|v| v.as_str().map(String::from)).collect();
    let names = names.ok_or_else(|| {
        invalid(
            "label_names",
            "a list with non-strings",
            "a list of strings",
        )
    })?;
    if names.len() != num_classes {
        return Err(invalid(
            "label_names",
            format!("{} names", names.len()),
            format!("one per class ({num_classes})"),
        ));
    }
    let desc = top
        .get("label_descriptions")
        .or_else(|| cfg.get("label_descriptions"))
        .and_then(Value::as_object);
    Ok(Some(
        names
            .into_iter()
            .map(|n| {
                desc.and_then(|d| d.get(&n))
                    .and_then(Value::as_str)
                    .map(String::from)
                    .unwrap_or(n)
            })
            .collect(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Hugging Face transformers

/// What a transformers `config.json` says about the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformersModel {
    /// kiln's registry name, e.g. `resnet50`.
    pub architecture: String,
    /// Classifier outputs.
    pub num_classes: usize,
    /// `id2label` in index order, if present.
    pub labels: Option<Vec<String>>,
    /// The transformers class, e.g. `ResNetForImageClassification`.
    pub hub_architecture: String,
    /// kiln's architecture parameters (`width_mult`, `tf_padding`, `bn_eps` for MobileNetV2).
    pub arch_params: BTreeMap<String, Value>,
    /// How the checkpoint's tensors are named.
    pub keys: KeyConvention,
}

/// The kiln architecture a transformers `config.json` describes, with its class names.
///
/// Only `ResNetForImageClassification` (model_type `resnet`) with one of torchvision's five
/// layouts is accepted: `layer_type` basic `[2,2,2,2]` / `[3,4,6,3]` or bottleneck `[3,4,6,3]` /
/// `[3,4,23,3]` / `[3,8,36,3]` with the standard widths, a 64-channel 7×7 stem, ReLU, and stride
/// on the 3×3 (`downsample_in_bottleneck` false) — microsoft/resnet-18 … -152.
///
/// `MobileNetV2ForImageClassification` (model_type `mobilenet_v2`) is accepted where it builds
/// torchvision's network: see [`transformers_mobilenet_v2`].
pub fn transformers_architecture(config_json: &str) -> Result<TransformersModel, SpecError> {
    let m = parse_object(config_json, "transformers config.json")?;
    let hub_arch = m
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let model_type = m.get("model_type").and_then(Value::as_str).unwrap_or("");
    if model_type == "mobilenet_v2"
        && (hub_arch.is_empty() || hub_arch == "MobileNetV2ForImageClassification")
    {
        let (labels, num_classes) = transformers_labels(&m)?;
        let arch_params = transformers_mobilenet_v2(&m)?;
        return Ok(TransformersModel {
            architecture: "mobilenet_v2".into(),
            num_classes,
            labels,
            hub_architecture: "MobileNetV2ForImageClassification".into(),
            arch_params,
            keys: KeyConvention::TransformersMobileNetV2,
        });
    }
    if model_type != "resnet"
        || !(hub_arch.is_empty() || hub_arch == "ResNetForImageClassification")
    {
        return Err(invalid(
            "architectures",
            format!("[\"{hub_arch}\"] (model_type \"{model_type}\")"),
            "ResNetForImageClassification (model_type \"resnet\") or \
             MobileNetV2ForImageClassification (model_type \"mobilenet_v2\"), the transformers \
             architectures kiln maps to its own models",
        ));
    }
    let ints =
        |k: &str| -> Option<Vec<u64>> { m.get(k)?.as_array()?.iter().map(Value::as_u64).collect() };
    let layer_type = m
        .get("layer_type")
        .and_then(Value::as_str)
        .unwrap_or("bottleneck");
    let depths = ints("depths").unwrap_or_default();
    let hidden = ints("hidden_sizes").unwrap_or_default();
    let arch = match (layer_type, depths.as_slice()) {
        ("basic", [2, 2, 2, 2]) => "resnet18",
        ("basic", [3, 4, 6, 3]) => "resnet34",
        ("bottleneck", [3, 4, 6, 3]) => "resnet50",
        ("bottleneck", [3, 4, 23, 3]) => "resnet101",
        ("bottleneck", [3, 8, 36, 3]) => "resnet152",
        _ => {
            return Err(invalid(
                "depths",
                format!("{depths:?} with layer_type \"{layer_type}\""),
                "one of torchvision's ResNet layouts (basic [2,2,2,2] or [3,4,6,3]; bottleneck [3,4,6,3], [3,4,23,3] or [3,8,36,3])",
            ))
        }
    };
    let want_hidden: &[u64] = if layer_type == "basic" {
        &[64, 128, 256, 512]
    } else {
        &[256, 512, 1024, 2048]
    };
    if hidden != want_hidden {
        return Err(invalid(
            "hidden_sizes",
            format!("{hidden:?}"),
            format!("{want_hidden:?} ({arch})"),
        ));
    }
    let checks: [(&str, Value); 5] = [
        ("embedding_size", Value::from(64)),
        ("hidden_act", Value::from("relu")),
        ("num_channels", Value::from(3)),
        ("downsample_in_first_stage", Value::from(false)),
        ("downsample_in_bottleneck", Value::from(false)),
    ];
    for (k, want) in checks {
        if let Some(v) = m.get(k) {
            if *v != want {
                return Err(invalid(
                    k,
                    v.to_string(),
                    format!("{want} (torchvision's {arch})"),
                ));
            }
        }
    }
    let (labels, num_classes) = transformers_labels(&m)?;
    Ok(TransformersModel {
        architecture: arch.to_string(),
        num_classes,
        labels,
        hub_architecture: if hub_arch.is_empty() {
            "ResNetForImageClassification".into()
        } else {
            hub_arch
        },
        arch_params: BTreeMap::new(),
        keys: KeyConvention::TransformersResNet,
    })
}

/// The class names (`id2label`, in index order) and the class count of a transformers config.
fn transformers_labels(m: &Map<String, Value>) -> Result<(Option<Vec<String>>, usize), SpecError> {
    let labels = match m.get("id2label").and_then(Value::as_object) {
        None => None,
        Some(map) => {
            let mut pairs = vec![];
            for (k, v) in map {
                let i: usize = k
                    .trim()
                    .parse()
                    .map_err(|_| invalid("id2label", format!("key \"{k}\""), "class indices"))?;
                let name = v
                    .as_str()
                    .ok_or_else(|| invalid(format!("id2label.{k}"), v.to_string(), "a string"))?;
                pairs.push((i, name.to_string()));
            }
            pairs.sort();
            if pairs.iter().enumerate().any(|(n, (i, _))| n != *i) {
                return Err(invalid(
                    "id2label",
                    format!("{} entries", pairs.len()),
                    "indices 0..n without gaps",
                ));
            }
            Some(pairs.into_iter().map(|p| p.1).collect::<Vec<_>>())
        }
    };
    let num_classes = match (&labels, m.get("num_labels").and_then(Value::as_u64)) {
        (Some(l), Some(n)) if l.len() as u64 != n => {
            return Err(invalid(
                "num_labels",
                n.to_string(),
                format!("the number of id2label entries ({})", l.len()),
            ))
        }
        (Some(l), _) => l.len(),
        (None, Some(n)) if n > 0 => n as usize,
        _ => {
            return Err(invalid(
                "id2label",
                "absent",
                "the class names (or num_labels)",
            ))
        }
    };
    Ok((labels, num_classes))
}

// ---------------------------------------------------------------------------------------------
// transformers' MobileNetV2 (kept together so that it can move with the architecture tables)

/// transformers' `make_divisible(value, divisor, min_value)`.
fn hf_make_divisible(value: f64, divisor: u64, min_value: u64) -> u64 {
    let d = divisor as f64;
    let mut n = min_value.max(((value + d / 2.0) as u64) / divisor * divisor);
    if (n as f64) < 0.9 * value {
        n += divisor;
    }
    n
}

/// torchvision's `_make_divisible(v, 8)` (kiln_models::mobilenet_v2::make_divisible; repeated
/// here because this crate does not depend on the models).
fn tv_make_divisible(v: f64) -> u64 {
    let mut n = 8u64.max(((v + 4.0) as u64) / 8 * 8);
    if (n as f64) < 0.9 * v {
        n += 8;
    }
    n
}

/// kiln's `mobilenet_v2` parameters for a transformers `MobileNetV2Config`, or the field that
/// makes it a network torchvision's structure cannot express.
///
/// transformers' stem (`first_conv`, `conv_3x3`, `reduce_1x1`) is torchvision's `features.0`
/// and the expansion-1 block `features.1`; its 16 `layer`s are `features.2..=17`, `conv_1x1`
/// is `features.18`. Reproduced: `depth_multiplier` (as `width_mult`, when transformers'
/// channel rounding, `make_divisible(round(c·m), depth_divisible_by, min_depth)`, gives
/// torchvision's channels for every layer), `tf_padding` (TensorFlow "SAME"), `layer_norm_eps`
/// (batch-norm epsilon), `finegrained_output` (where the head width equals torchvision's), any
/// class count (1001 for Google's TensorFlow checkpoints, whose class 0 is "background").
/// Refused: `first_layer_is_expansion` false (an extra 1×1 convolution in the stem),
/// `output_stride` other than 32 (dilated convolutions), `expand_ratio` other than 6,
/// `hidden_act` other than relu6, `num_channels` other than 3, and channel counts that differ
/// from torchvision's.
pub fn transformers_mobilenet_v2(
    m: &Map<String, Value>,
) -> Result<BTreeMap<String, Value>, SpecError> {
    let num = |k: &str, default: f64| -> Result<f64, SpecError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| invalid(k, v.to_string(), "a number")),
        }
    };
    let boolean = |k: &str, default: bool| -> Result<bool, SpecError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| invalid(k, v.to_string(), "true or false")),
        }
    };
    let dm = num("depth_multiplier", 1.0)?;
    if !(dm > 0.0 && dm <= 4.0) {
        return Err(invalid(
            "depth_multiplier",
            dm.to_string(),
            "0 < depth_multiplier <= 4",
        ));
    }
    let fixed: [(&str, f64, &str); 4] = [
        ("num_channels", 3.0, "3 (RGB input)"),
        (
            "output_stride",
            32.0,
            "32 (8 or 16 dilate the depthwise convolutions, which kiln's MobileNetV2 does not)",
        ),
        ("expand_ratio", 6.0, "6 (torchvision's expansion)"),
        (
            "depth_divisible_by",
            8.0,
            "8 (torchvision rounds channels to multiples of 8)",
        ),
    ];
    for (k, want, why) in fixed {
        let v = num(k, want)?;
        if v != want {
            return Err(invalid(k, v.to_string(), why));
        }
    }
    if !boolean("first_layer_is_expansion", true)? {
        return Err(invalid(
            "first_layer_is_expansion",
            "false",
            "true (false adds a 1×1 expansion to the stem, which torchvision's MobileNetV2 does \
             not have)",
        ));
    }
    match m.get("hidden_act") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_str() == Some("relu6") => {}
        Some(v) => {
            return Err(invalid(
                "hidden_act",
                v.to_string(),
                "\"relu6\" (torchvision's activation)",
            ))
        }
    }
    let min_depth = num("min_depth", 8.0)?;
    if !(min_depth >= 1.0 && min_depth.fract() == 0.0) {
        return Err(invalid(
            "min_depth",
            min_depth.to_string(),
            "a positive integer",
        ));
    }
    let min_depth = min_depth as u64;
    let finegrained = boolean("finegrained_output", true)?;
    let tf = |c: u64| hf_make_divisible((c as f64 * dm).round(), 8, min_depth);
    let tv = |c: u64| tv_make_divisible(c as f64 * dm);
    // Stem, the 17 block outputs, and the head, as each library computes them.
    let widths = [32u64, 16, 24, 32, 64, 96, 160, 320];
    for c in widths {
        let (a, b) = (tf(c), tv(c));
        // Inside each block transformers rounds the expansion too; torchvision takes in·6.
        let expanded = hf_make_divisible((a * 6) as f64, 8, min_depth);
        if a != b || expanded != a * 6 {
            return Err(invalid(
                "depth_multiplier",
                format!("{dm} (min_depth {min_depth})"),
                format!(
                    "a multiplier whose channels equal torchvision's mobilenet_v2(width_mult={dm}): \
                     for {c} channels transformers makes {a} (expanded {expanded}), torchvision {b}"
                ),
            ));
        }
    }
    let head_tf = if finegrained && dm < 1.0 {
        1280
    } else {
        tf(1280)
    };
    let head_tv = tv_make_divisible(1280.0 * dm.max(1.0));
    if head_tf != head_tv {
        return Err(invalid(
            "finegrained_output",
            format!("{finegrained} (depth_multiplier {dm})"),
            format!(
                "a head of torchvision's width ({head_tv} channels; transformers' config gives \
                 {head_tf})"
            ),
        ));
    }
    let eps = num("layer_norm_eps", 0.001)?;
    if !(eps > 0.0 && eps < 1.0) {
        return Err(invalid("layer_norm_eps", eps.to_string(), "0 < eps < 1"));
    }
    let mut p = BTreeMap::new();
    p.insert("width_mult".to_string(), Value::from(dm));
    p.insert(
        "tf_padding".to_string(),
        Value::from(if boolean("tf_padding", true)? {
            1.0
        } else {
            0.0
        }),
    );
    p.insert("bn_eps".to_string(), Value::from(eps));
    Ok(p)
}

/// Processor types whose preprocessing is the generic resize → centre crop → rescale →
/// normalise, with their `default_to_square` (how an integer `size` is read) and whether they
/// crop when `do_center_crop` is absent.
const HF_GENERIC_PROCESSORS: &[(&str, bool, bool)] = &[
    ("ViTImageProcessor", true, false),
    ("DeiTImageProcessor", true, true),
    ("BitImageProcessor", false, true),
    ("CLIPImageProcessor", false, true),
    ("MobileNetV1ImageProcessor", false, true),
    ("MobileNetV2ImageProcessor", false, true),
];

fn pil_resample(field: &str, v: &Value) -> Result<Interpolation, SpecError> {
    match v.as_u64() {
        Some(0) => Ok(Interpolation::Nearest),
        Some(1) => Ok(Interpolation::Lanczos),
        Some(2) => Ok(Interpolation::Bilinear),
        Some(3) => Ok(Interpolation::Bicubic),
        _ => Err(invalid(
            field,
            v.to_string(),
            "a PIL filter kiln implements: 0 (nearest), 1 (lanczos), 2 (bilinear), 3 (bicubic)",
        )),
    }
}

enum HfSize {
    Shortest(u32),
    Exact([u32; 2]),
}

fn hf_size(field: &str, v: &Value, default_to_square: bool) -> Result<HfSize, SpecError> {
    if v.is_number() {
        let n = positive_int(field, v)?;
        return Ok(if default_to_square {
            HfSize::Exact([n, n])
        } else {
            HfSize::Shortest(n)
        });
    }
    if let Some(arr) = v.as_array() {
        // A [height, width] pair (older processors).
        if let [a, b] = arr.as_slice() {
            return Ok(HfSize::Exact([
                positive_int(field, a)?,
                positive_int(field, b)?,
            ]));
        }
    }
    let obj = v.as_object().ok_or_else(|| {
        invalid(
            field,
            v.to_string(),
            "{\"shortest_edge\": N} or {\"height\": H, \"width\": W}",
        )
    })?;
    if obj.get("longest_edge").is_some_and(|x| !x.is_null()) {
        return Err(invalid(
            field,
            v.to_string(),
            "no longest_edge cap (a capped resize is not expressible in a training spec)",
        ));
    }
    match (
        obj.get("shortest_edge"),
        obj.get("height"),
        obj.get("width"),
    ) {
        (Some(s), None, None) => Ok(HfSize::Shortest(positive_int(
            &format!("{field}.shortest_edge"),
            s,
        )?)),
        (None, Some(h), Some(w)) => Ok(HfSize::Exact([
            positive_int(&format!("{field}.height"), h)?,
            positive_int(&format!("{field}.width"), w)?,
        ])),
        _ => Err(invalid(
            field,
            v.to_string(),
            "{\"shortest_edge\": N} or {\"height\": H, \"width\": W}",
        )),
    }
}

/// The spec a transformers image processor (`preprocessor_config.json`) implies, for a model of
/// `architecture` with `num_classes` outputs.
///
/// ConvNeXt's processor (also used by microsoft/resnet-*) resizes the shorter side to
/// `int(shortest_edge / crop_pct)` and centre-crops `shortest_edge` when `shortest_edge < 384`,
/// and otherwise warps to `shortest_edge × shortest_edge` without a crop. Other supported
/// processors resize (`shortest_edge`, or an exact `height × width`) and then centre-crop
/// `crop_size` when `do_center_crop`. A `rescale_factor` other than 1/255 is folded into mean
/// and std (`(x·f − m)/s = (x/255 − m/(255f)) / (s/(255f))`).
///
/// Known difference: transformers' `center_crop` floors the offset `(size − crop) / 2` where
/// torchvision (and kiln) round half to even, so for some image sizes the crop sits one pixel
/// apart; this is recorded in the spec's `source`.
pub fn spec_from_hf_preprocessor(
    preprocessor_json: &str,
    architecture: &str,
    num_classes: usize,
) -> Result<TrainingSpec, SpecError> {
    spec_from_hf_preprocessor_with(preprocessor_json, architecture, num_classes, HfBackend::Pil)
}

/// [`spec_from_hf_preprocessor`] for the given transformers backend: `Pil` gives the pipeline
/// `transformers-pil`, `Torchvision` the pipeline `transformers-torchvision` (PyTorch's
/// antialiased interpolate on the uint8 tensor, PIL's NEAREST as `nearest-exact`).
pub fn spec_from_hf_preprocessor_with(
    preprocessor_json: &str,
    architecture: &str,
    num_classes: usize,
    backend: HfBackend,
) -> Result<TrainingSpec, SpecError> {
    let m = parse_object(preprocessor_json, "preprocessor_config.json")?;
    let raw_type = m
        .get("image_processor_type")
        .or_else(|| m.get("feature_extractor_type"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid(
                "image_processor_type",
                "absent",
                "the processor class (e.g. ConvNextImageProcessor), which decides how the fields are read",
            )
        })?;
    let ptype = raw_type
        .trim_end_matches("Fast")
        .replace("FeatureExtractor", "ImageProcessor");
    let is_convnext = ptype == "ConvNextImageProcessor";
    let generic = HF_GENERIC_PROCESSORS.iter().find(|p| p.0 == ptype);
    if !is_convnext && generic.is_none() {
        return Err(invalid(
            "image_processor_type",
            format!("\"{raw_type}\""),
            format!(
                "a processor whose transform kiln reproduces: ConvNextImageProcessor, {}",
                HF_GENERIC_PROCESSORS
                    .iter()
                    .map(|p| p.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let flag = |k: &str, default: bool| -> Result<bool, SpecError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(invalid(k, v.to_string(), "true or false")),
        }
    };
    if flag("rescale_offset", false)? {
        return Err(invalid("rescale_offset", "true", "false"));
    }
    let do_resize = flag("do_resize", true)?;
    let resample = if do_resize {
        let v = m.get("resample").ok_or_else(|| {
            invalid(
                "resample",
                "absent",
                "the PIL filter (its default differs between transformers versions)",
            )
        })?;
        Some(pil_resample("resample", v)?)
    } else {
        None
    };
    let mut notes: Vec<String> = vec![];
    let (resize, crop): (Option<Resize>, Option<[u32; 2]>) = if is_convnext {
        if !do_resize {
            return Err(invalid(
                "do_resize",
                "false",
                "true (ConvNeXt's processor crops inside its resize)",
            ));
        }
        let size = m
            .get("size")
            .ok_or_else(|| invalid("size", "absent", "{\"shortest_edge\": N}"))?;
        let HfSize::Shortest(se) = hf_size("size", size, false)? else {
            return Err(invalid(
                "size",
                size.to_string(),
                "{\"shortest_edge\": N} (ConvNeXt's processor requires it)",
            ));
        };
        let crop_pct = match m.get("crop_pct") {
            None | Some(Value::Null) => 224.0 / 256.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| invalid("crop_pct", v.to_string(), "a number"))?,
        };
        if !(crop_pct > 0.0 && crop_pct <= 1.0) {
            return Err(invalid(
                "crop_pct",
                crop_pct.to_string(),
                "0 < crop_pct <= 1",
            ));
        }
        if se < 384 {
            // int(shortest_edge / crop_pct): truncation, as Python's int() does.
            let short = (se as f64 / crop_pct).trunc() as u32;
            notes.push(format!(
                "ConvNextImageProcessor: shorter side to int({se}/{crop_pct}) = {short}, centre crop {se}"
            ));
            (
                Some(Resize {
                    shorter_side: Some(short),
                    size: None,
                    interpolation: resample.expect("resize"),
                    antialias: true,
                }),
                Some([se, se]),
            )
        } else {
            notes.push(format!(
                "ConvNextImageProcessor: shortest_edge {se} >= 384, warped to {se}x{se}, no crop"
            ));
            (
                Some(Resize {
                    shorter_side: None,
                    size: Some([se, se]),
                    interpolation: resample.expect("resize"),
                    antialias: true,
                }),
                None,
            )
        }
    } else {
        let (_, square, crop_default) = *generic.expect("checked");
        let resize = if do_resize {
            let size = m
                .get("size")
                .ok_or_else(|| invalid("size", "absent", "the resize target"))?;
            Some(match hf_size("size", size, square)? {
                HfSize::Shortest(s) => Resize {
                    shorter_side: Some(s),
                    size: None,
                    interpolation: resample.expect("resize"),
                    antialias: true,
                },
                HfSize::Exact(hw) => Resize {
                    shorter_side: None,
                    size: Some(hw),
                    interpolation: resample.expect("resize"),
                    antialias: true,
                },
            })
        } else {
            None
        };
        let crop = if flag("do_center_crop", crop_default)? {
            let c = m
                .get("crop_size")
                .ok_or_else(|| invalid("crop_size", "absent", "the centre crop size"))?;
            match hf_size("crop_size", c, true)? {
                HfSize::Exact(hw) => Some(hw),
                HfSize::Shortest(_) => unreachable!("square sizes are exact"),
            }
        } else {
            None
        };
        (resize, crop)
    };
    let input_size = match (&resize, crop) {
        (_, Some(c)) => c,
        (Some(Resize { size: Some(hw), .. }), None) => *hw,
        _ => {
            return Err(invalid(
                "do_center_crop",
                "false",
                "a centre crop or an exact height×width resize, so that every image reaches one input size",
            ))
        }
    };

    let do_rescale = flag("do_rescale", true)?;
    let factor = if do_rescale {
        match m.get("rescale_factor") {
            None | Some(Value::Null) => 1.0 / 255.0,
            Some(v) => v
                .as_f64()
                .filter(|f| *f > 0.0 && f.is_finite())
                .ok_or_else(|| invalid("rescale_factor", v.to_string(), "a positive number"))?,
        }
    } else {
        1.0
    };
    let (mut mean, mut std) = if flag("do_normalize", true)? {
        let mean = m.get("image_mean").ok_or_else(|| {
            invalid(
                "image_mean",
                "absent",
                "per-channel means (defaults differ between processors)",
            )
        })?;
        let std = m.get("image_std").ok_or_else(|| {
            invalid(
                "image_std",
                "absent",
                "per-channel stds (defaults differ between processors)",
            )
        })?;
        (
            float_list("image_mean", mean)?,
            float_list("image_std", std)?,
        )
    } else {
        (vec![0.0; 3], vec![1.0; 3])
    };
    let scale = if !do_rescale {
        PixelScale::Raw
    } else {
        let k = factor * 255.0;
        if (k - 1.0).abs() > 1e-9 {
            // (x·f − m)/s == (x/255 − m/k)/(s/k) with k = 255·f.
            for v in mean.iter_mut().chain(std.iter_mut()) {
                *v = (*v as f64 / k) as f32;
            }
            notes.push(format!(
                "rescale_factor {factor} folded into mean/std (×1/{k})"
            ));
        }
        PixelScale::Unit
    };

    let mut source = BTreeMap::new();
    source.insert("hub".into(), Value::from("transformers"));
    source.insert("image_processor".into(), Value::from(raw_type));
    source.insert(
        "image_processor_backend".into(),
        Value::from(backend.name()),
    );
    source.insert("notes".into(), Value::from(notes));
    let spec = TrainingSpec {
        kiln_spec: SPEC_VERSION,
        architecture: architecture.to_string(),
        arch_params: BTreeMap::new(),
        num_classes,
        labels: None,
        input_size,
        resize,
        center_crop: crop,
        scale,
        mean,
        std,
        channel_order: ChannelOrder::Rgb,
        layout: Layout::Nchw,
        pipeline: match backend {
            HfBackend::Pil => Pipeline::TransformersPil,
            HfBackend::Torchvision => Pipeline::TransformersTorchvision,
        },
        source,
    };
    spec.validate()?;
    Ok(spec)
}

/// The two implementations of transformers' image processors (transformers 5 calls them
/// backends: `…ImageProcessorPil` / `PilBackend`, and `…ImageProcessor` / `TorchvisionBackend`,
/// formerly `…ImageProcessorFast`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfBackend {
    /// PIL images, PIL's resampler, numpy arithmetic.
    Pil,
    /// uint8 torch tensors, PyTorch's interpolate, torch arithmetic.
    Torchvision,
}

impl HfBackend {
    /// Parses `pil` or `torchvision` (also `torch`, `fast`, `slow`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "pil" | "slow" => Some(Self::Pil),
            "torchvision" | "torch" | "fast" => Some(Self::Torchvision),
            _ => None,
        }
    }

    /// `pil` or `torchvision`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pil => "pil",
            Self::Torchvision => "torchvision",
        }
    }
}

/// The backend the model's own processor runs by default, and why.
///
/// The rule, in order: a `backend` field in `preprocessor_config.json` (`pil`/`torchvision`);
/// an `image_processor_type` ending in `Pil` (PIL) or `Fast` (torchvision); otherwise the
/// transformers version in `config.json` (`transformers_version`): 5 or later loads the
/// torchvision backend by default (`AutoImageProcessor` in transformers 5 returns the
/// `TorchvisionBackend` class, and `save_pretrained` writes the same type name for both), an
/// earlier version the PIL ("slow") processor, as does a config without a version.
pub fn hf_default_backend(
    preprocessor_json: &str,
    model_config_json: &str,
) -> Result<(HfBackend, String), SpecError> {
    let pre = parse_object(preprocessor_json, "preprocessor_config.json")?;
    if let Some(v) = pre.get("backend").filter(|v| !v.is_null()) {
        let b = v
            .as_str()
            .and_then(HfBackend::parse)
            .ok_or_else(|| invalid("backend", v.to_string(), "\"pil\" or \"torchvision\""))?;
        return Ok((b, format!("preprocessor_config.json backend {v}")));
    }
    let ptype = pre
        .get("image_processor_type")
        .or_else(|| pre.get("feature_extractor_type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if ptype.ends_with("Pil") {
        return Ok((HfBackend::Pil, format!("image_processor_type {ptype}")));
    }
    if ptype.ends_with("Fast") {
        return Ok((
            HfBackend::Torchvision,
            format!("image_processor_type {ptype}"),
        ));
    }
    let cfg = parse_object(model_config_json, "config.json")?;
    let version = cfg.get("transformers_version").and_then(Value::as_str);
    let major = version
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse::<u32>().ok());
    Ok(match (version, major) {
        (Some(v), Some(m)) if m >= 5 => (
            HfBackend::Torchvision,
            format!(
                "written by transformers {v}, whose default processor is the torchvision backend"
            ),
        ),
        (Some(v), _) => (
            HfBackend::Pil,
            format!("written by transformers {v}, whose default processor is the PIL one"),
        ),
        (None, _) => (
            HfBackend::Pil,
            "no transformers_version in config.json: the PIL processor (transformers 4's default)"
                .into(),
        ),
    })
}

/// The spec for a transformers model repo: `preprocessor_config.json` for the transform and
/// `config.json` for the architecture and labels. See [`spec_from_hf_preprocessor`] and
/// [`transformers_architecture`].
pub fn spec_from_hf(
    preprocessor_json: &str,
    model_config_json: &str,
) -> Result<HubSpec, SpecError> {
    spec_from_hf_with(preprocessor_json, model_config_json, None)
}

/// [`spec_from_hf`] with the processor backend chosen by the caller (`None`: the model's
/// default, see [`hf_default_backend`]).
pub fn spec_from_hf_with(
    preprocessor_json: &str,
    model_config_json: &str,
    backend: Option<HfBackend>,
) -> Result<HubSpec, SpecError> {
    hf_spec(
        preprocessor_json,
        model_config_json,
        Path::new("preprocessor_config.json"),
        Path::new("config.json"),
        backend,
    )
}

fn hf_spec(
    preprocessor_json: &str,
    model_config_json: &str,
    pre_name: &Path,
    cfg_name: &Path,
    backend: Option<HfBackend>,
) -> Result<HubSpec, SpecError> {
    let model = transformers_architecture(model_config_json).map_err(|e| e.in_file(cfg_name))?;
    let (backend, why) = match backend {
        Some(b) => (b, "chosen by the caller (--hf-backend)".to_string()),
        None => hf_default_backend(preprocessor_json, model_config_json)
            .map_err(|e| e.in_file(pre_name))?,
    };
    let mut spec = spec_from_hf_preprocessor_with(
        preprocessor_json,
        &model.architecture,
        model.num_classes,
        backend,
    )
    .map_err(|e| e.in_file(pre_name))?;
    spec.arch_params = model.arch_params.clone();
    spec.validate().map_err(|e| e.in_file(cfg_name))?;
    spec.source
        .insert("image_processor_backend_reason".into(), Value::from(why));
    spec.source.insert(
        "transformers_architecture".into(),
        Value::from(model.hub_architecture.clone()),
    );
    Ok(HubSpec {
        spec,
        labels: model.labels,
        format: HubFormat::Transformers,
        hub_architecture: model.hub_architecture,
        keys: model.keys,
    })
}

fn read(path: &Path) -> Result<String, SpecError> {
    std::fs::read_to_string(path).map_err(|e| SpecError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Reads hub configs from disk (for `kiln spec --from timm|hf FILE`).
///
/// timm: `path` is the `config.json`. transformers: `path` is the repo directory, its
/// `preprocessor_config.json` or its `config.json`; the other file is looked for beside it.
pub fn spec_from_hub_files(format: HubFormat, path: &Path) -> Result<HubSpec, SpecError> {
    spec_from_hub_files_with(format, path, None)
}

/// [`spec_from_hub_files`] with a transformers backend chosen by the caller (ignored for timm).
pub fn spec_from_hub_files_with(
    format: HubFormat,
    path: &Path,
    backend: Option<HfBackend>,
) -> Result<HubSpec, SpecError> {
    match format {
        HubFormat::Timm => {
            let p = if path.is_dir() {
                path.join("config.json")
            } else {
                path.to_path_buf()
            };
            spec_from_timm(&read(&p)?).map_err(|e| e.in_file(&p))
        }
        HubFormat::Transformers => {
            let (dir, named): (PathBuf, Option<&str>) = if path.is_dir() {
                (path.to_path_buf(), None)
            } else {
                (
                    path.parent().map(Path::to_path_buf).unwrap_or_default(),
                    path.file_name().and_then(|n| n.to_str()),
                )
            };
            let (pre, cfg) = match named {
                Some("config.json") => (dir.join("preprocessor_config.json"), path.to_path_buf()),
                Some(_) => (path.to_path_buf(), dir.join("config.json")),
                None => (
                    dir.join("preprocessor_config.json"),
                    dir.join("config.json"),
                ),
            };
            for p in [&pre, &cfg] {
                if !p.exists() {
                    return Err(SpecError::Io {
                        path: p.display().to_string(),
                        reason:
                            "not found (a transformers model needs both preprocessor_config.json \
                                 and config.json, side by side)"
                                .into(),
                    });
                }
            }
            hf_spec(&read(&pre)?, &read(&cfg)?, &pre, &cfg, backend)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// timm/mobilenetv2_100.ra_in1k's config.json as timm's push_to_hf writes it (labels cut to
    /// a 3-class head).
    const TIMM_MNV2: &str = r#"{
        "architecture": "mobilenetv2_100",
        "num_classes": 3,
        "num_features": 1280,
        "global_pool": "avg",
        "pretrained_cfg": {
            "tag": "ra_in1k",
            "custom_load": false,
            "input_size": [3, 224, 224],
            "fixed_input_size": false,
            "interpolation": "bicubic",
            "crop_pct": 0.875,
            "crop_mode": "center",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "num_classes": 1000,
            "pool_size": [7, 7],
            "first_conv": "conv_stem",
            "classifier": "classifier",
            "license": "apache-2.0"
        },
        "label_names": ["n01440764", "n01443537", "n01484850"],
        "label_descriptions": {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus"}
    }"#;

    /// timm/resnet50.a1_in1k: crop_pct 0.95, a test size it does not use by default.
    const TIMM_R50_A1: &str = r#"{
        "architecture": "resnet50",
        "num_classes": 1000,
        "num_features": 2048,
        "global_pool": "avg",
        "pretrained_cfg": {
            "tag": "a1_in1k",
            "custom_load": false,
            "input_size": [3, 224, 224],
            "test_input_size": [3, 288, 288],
            "fixed_input_size": false,
            "interpolation": "bicubic",
            "crop_pct": 0.95,
            "test_crop_pct": 1.0,
            "crop_mode": "center",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "num_classes": 1000,
            "pool_size": [7, 7],
            "first_conv": "conv1",
            "classifier": "fc"
        }
    }"#;

    #[test]
    fn timm_mobilenetv2_spec() {
        let h = spec_from_timm(TIMM_MNV2).unwrap();
        let s = &h.spec;
        assert_eq!(s.architecture, "mobilenet_v2");
        assert_eq!(s.param_f64("width_mult"), Some(1.0));
        assert_eq!(s.num_classes, 3);
        assert_eq!(s.input_size, [224, 224]);
        let r = s.resize.as_ref().unwrap();
        assert_eq!(
            (r.shorter_side, r.interpolation),
            (Some(256), Interpolation::Bicubic)
        );
        assert_eq!(s.center_crop, Some([224, 224]));
        assert_eq!(s.scale, PixelScale::Unit);
        assert_eq!(s.mean, IMAGENET_MEAN.to_vec());
        assert_eq!(h.keys, KeyConvention::TimmMobileNetV2);
        assert_eq!(
            h.labels.unwrap(),
            vec![
                "tench, Tinca tinca",
                "goldfish, Carassius auratus",
                "n01484850"
            ]
        );
    }

    #[test]
    fn timm_scale_size_is_floored() {
        let h = spec_from_timm(TIMM_R50_A1).unwrap();
        assert_eq!(h.spec.architecture, "resnet50");
        assert_eq!(h.keys, KeyConvention::Torchvision);
        // math.floor(224 / 0.95) = floor(235.79) = 235; test_* fields are not the default.
        assert_eq!(h.spec.resize.as_ref().unwrap().shorter_side, Some(235));
        assert_eq!(h.spec.input_size, [224, 224]);
        assert!(h.labels.is_none());
        // crop_pct 1.0: no margin.
        let t = TIMM_R50_A1.replace("0.95", "1.0");
        assert_eq!(
            spec_from_timm(&t)
                .unwrap()
                .spec
                .resize
                .unwrap()
                .shorter_side,
            Some(224)
        );
        // 288 at 0.875 → 329 (329.14 floored).
        let t = TIMM_R50_A1
            .replace("[3, 224, 224]", "[3, 288, 288]")
            .replace("0.95", "0.875");
        assert_eq!(
            spec_from_timm(&t)
                .unwrap()
                .spec
                .resize
                .unwrap()
                .shorter_side,
            Some(329)
        );
    }

    #[test]
    fn timm_defaults_follow_resolve_data_config() {
        // Only the architecture and head: bicubic, 0.875, ImageNet stats, 224.
        let h =
            spec_from_timm(r#"{"architecture": "resnet18.tv_in1k", "num_classes": 1000}"#).unwrap();
        let r = h.spec.resize.as_ref().unwrap();
        assert_eq!(
            (r.shorter_side, r.interpolation),
            (Some(256), Interpolation::Bicubic)
        );
        assert_eq!(h.spec.architecture, "resnet18");
        assert_eq!(h.spec.std, IMAGENET_STD.to_vec());
        // Old flat layout: transform fields at the top level.
        let flat = r#"{"architecture": "mobilenetv2_050", "num_classes": 10, "input_size": [3, 192, 192],
                       "interpolation": "bilinear", "crop_pct": 1.0, "mean": [0.5], "std": [0.5]}"#;
        let h = spec_from_timm(flat).unwrap();
        assert_eq!(h.spec.param_f64("width_mult"), Some(0.5));
        assert_eq!(h.spec.input_size, [192, 192]);
        assert_eq!(h.spec.resize.as_ref().unwrap().shorter_side, Some(192));
        assert_eq!(h.spec.mean, vec![0.5; 3]);
    }

    #[test]
    fn timm_refusals_name_the_field() {
        let cases = [
            (TIMM_MNV2.replace("\"center\"", "\"squash\""), "crop_mode"),
            (TIMM_MNV2.replace("\"center\"", "\"border\""), "crop_mode"),
            (
                TIMM_MNV2.replace("[3, 224, 224]", "[3, 224, 320]"),
                "input_size",
            ),
            (
                TIMM_MNV2.replace("mobilenetv2_100", "mobilenetv2_110d"),
                "mobilenetv2_110d",
            ),
            (
                TIMM_MNV2.replace("mobilenetv2_100", "resnet50d"),
                "resnet50d",
            ),
            (
                TIMM_MNV2.replace("\"bicubic\"", "\"random\""),
                "interpolation",
            ),
            (
                TIMM_MNV2.replace("\"global_pool\": \"avg\"", "\"global_pool\": \"max\""),
                "global_pool",
            ),
            (
                TIMM_MNV2.replace("\"n01484850\"", "\"n01484850\", \"extra\""),
                "label_names",
            ),
            ("[1, 2]".to_string(), "not an object"),
            ("{not json".to_string(), "not valid JSON"),
        ];
        for (text, needle) in cases {
            let e = spec_from_timm(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    /// microsoft/resnet-50's preprocessor_config.json and (abridged) config.json.
    const HF_R50_PRE: &str = r#"{
        "crop_pct": 0.875,
        "do_normalize": true,
        "do_resize": true,
        "feature_extractor_type": "ConvNextFeatureExtractor",
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "resample": 3,
        "size": 224
    }"#;
    const HF_R50_CFG: &str = r#"{
        "architectures": ["ResNetForImageClassification"],
        "depths": [3, 4, 6, 3],
        "downsample_in_first_stage": false,
        "embedding_size": 64,
        "hidden_act": "relu",
        "hidden_sizes": [256, 512, 1024, 2048],
        "id2label": {"0": "tench, Tinca tinca", "1": "goldfish, Carassius auratus", "2": "great white shark"},
        "label2id": {"tench, Tinca tinca": 0, "goldfish, Carassius auratus": 1, "great white shark": 2},
        "layer_type": "bottleneck",
        "model_type": "resnet",
        "num_channels": 3,
        "torch_dtype": "float32",
        "transformers_version": "4.18.0.dev0"
    }"#;

    #[test]
    fn hf_convnext_processor_with_resnet() {
        let h = spec_from_hf(HF_R50_PRE, HF_R50_CFG).unwrap();
        let s = &h.spec;
        assert_eq!((s.architecture.as_str(), s.num_classes), ("resnet50", 3));
        let r = s.resize.as_ref().unwrap();
        assert_eq!(
            (r.shorter_side, r.interpolation),
            (Some(256), Interpolation::Bicubic)
        );
        assert_eq!(
            (s.center_crop, s.input_size),
            (Some([224, 224]), [224, 224])
        );
        assert_eq!(s.scale, PixelScale::Unit);
        assert_eq!(h.labels.as_ref().unwrap()[2], "great white shark");
        assert_eq!(h.keys, KeyConvention::TransformersResNet);
        assert_eq!(h.format, HubFormat::Transformers);
        assert_eq!(detect_format(HF_R50_CFG).unwrap(), HubFormat::Transformers);
        assert_eq!(detect_format(TIMM_MNV2).unwrap(), HubFormat::Timm);

        // The newer dict form; >= 384 warps without a crop.
        let pre = r#"{"image_processor_type": "ConvNextImageProcessor", "do_resize": true,
                      "size": {"shortest_edge": 384}, "crop_pct": 0.875, "resample": 2,
                      "do_rescale": true, "rescale_factor": 0.00392156862745098,
                      "do_normalize": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}"#;
        let s = spec_from_hf_preprocessor(pre, "resnet50", 1000).unwrap();
        let r = s.resize.as_ref().unwrap();
        assert_eq!(
            (r.size, r.shorter_side, s.center_crop),
            (Some([384, 384]), None, None)
        );
        assert_eq!(s.input_size, [384, 384]);
        assert_eq!(r.interpolation, Interpolation::Bilinear);
        // crop_pct 0.9 at 224: int(248.88) = 248.
        let pre = HF_R50_PRE.replace("0.875", "0.9");
        let s = spec_from_hf_preprocessor(&pre, "resnet50", 1000).unwrap();
        assert_eq!(s.resize.unwrap().shorter_side, Some(248));
    }

    #[test]
    fn hf_generic_processors_and_rescale() {
        let vit = r#"{"image_processor_type": "ViTImageProcessor", "do_resize": true,
                      "size": {"height": 224, "width": 224}, "resample": 2, "do_rescale": true,
                      "rescale_factor": 0.00392156862745098, "do_normalize": true,
                      "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}"#;
        let s = spec_from_hf_preprocessor(vit, "resnet18", 10).unwrap();
        assert_eq!(s.resize.as_ref().unwrap().size, Some([224, 224]));
        assert_eq!(s.center_crop, None);
        let deit = r#"{"image_processor_type": "DeiTImageProcessor", "do_resize": true,
                       "size": {"height": 256, "width": 256}, "resample": 3, "do_center_crop": true,
                       "crop_size": {"height": 224, "width": 224}, "do_rescale": true,
                       "rescale_factor": 0.00392156862745098, "do_normalize": true,
                       "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}"#;
        let s = spec_from_hf_preprocessor(deit, "resnet18", 10).unwrap();
        assert_eq!(s.resize.as_ref().unwrap().size, Some([256, 256]));
        assert_eq!(s.center_crop, Some([224, 224]));
        let clip = r#"{"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 224},
                       "crop_size": {"height": 224, "width": 224}, "resample": 3, "do_center_crop": true,
                       "rescale_factor": 0.00784313725490196,
                       "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}"#;
        let s = spec_from_hf_preprocessor(clip, "resnet18", 10).unwrap();
        assert_eq!(s.resize.as_ref().unwrap().shorter_side, Some(224));
        // x·(2/255) normalised by 0.5/0.5 == x/255 normalised by 0.25/0.25.
        assert!(
            (s.mean[0] - 0.25).abs() < 1e-6 && (s.std[0] - 0.25).abs() < 1e-6,
            "{s:?}"
        );
        let raw = clip.replace("\"rescale_factor\"", "\"do_rescale\": false, \"x\"");
        assert_eq!(
            spec_from_hf_preprocessor(&raw, "resnet18", 10)
                .unwrap()
                .scale,
            PixelScale::Raw
        );
    }

    #[test]
    fn hf_refusals_name_the_field() {
        let pre_cases = [
            (
                HF_R50_PRE.replace("\"resample\": 3", "\"resample\": 4"),
                "resample",
            ),
            (HF_R50_PRE.replace("\"resample\": 3,", ""), "resample"),
            (
                HF_R50_PRE.replace("ConvNextFeatureExtractor", "LevitImageProcessor"),
                "LevitImageProcessor",
            ),
            (
                HF_R50_PRE.replace(
                    "\"size\": 224",
                    "\"size\": {\"height\": 224, \"width\": 224}",
                ),
                "shortest_edge",
            ),
            (HF_R50_PRE.replace("\"image_mean\"", "\"x\""), "image_mean"),
        ];
        for (pre, needle) in pre_cases {
            let e = spec_from_hf(&pre, HF_R50_CFG).unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains("preprocessor_config.json"),
                "{needle}: {e}"
            );
        }
        let cfg_cases = [
            (
                HF_R50_CFG.replace("\"resnet\"", "\"convnext\""),
                "ResNetForImageClassification",
            ),
            (HF_R50_CFG.replace("[3, 4, 6, 3]", "[3, 4, 5, 3]"), "depths"),
            (
                HF_R50_CFG.replace(
                    "\"downsample_in_first_stage\": false",
                    "\"downsample_in_first_stage\": true",
                ),
                "downsample_in_first_stage",
            ),
            (
                HF_R50_CFG.replace("[256, 512, 1024, 2048]", "[128, 256, 512, 1024]"),
                "hidden_sizes",
            ),
        ];
        for (cfg, needle) in cfg_cases {
            let e = spec_from_hf(HF_R50_PRE, &cfg).unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains("config.json"),
                "{needle}: {e}"
            );
        }
    }

    /// google/mobilenet_v2_1.0_224's config.json, labels cut to three.
    const HF_MNV2_CFG: &str = r#"{
        "architectures": ["MobileNetV2ForImageClassification"],
        "classifier_dropout_prob": 0.8,
        "depth_divisible_by": 8,
        "depth_multiplier": 1.0,
        "expand_ratio": 6.0,
        "finegrained_output": true,
        "first_layer_is_expansion": true,
        "hidden_act": "relu6",
        "id2label": {"0": "background", "1": "tench, Tinca tinca", "2": "goldfish"},
        "image_size": 224,
        "layer_norm_eps": 0.001,
        "min_depth": 8,
        "model_type": "mobilenet_v2",
        "num_channels": 3,
        "output_stride": 32,
        "tf_padding": true,
        "transformers_version": "4.27.0.dev0"
    }"#;

    const HF_MNV2_PRE: &str = r#"{
        "crop_pct": 0.875, "crop_size": {"height": 224, "width": 224}, "do_center_crop": true,
        "do_normalize": true, "do_rescale": true, "do_resize": true,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "MobileNetV2ImageProcessor", "resample": 2,
        "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 256}
    }"#;

    #[test]
    fn hf_mobilenet_v2_configs() {
        let h = spec_from_hf(HF_MNV2_PRE, HF_MNV2_CFG).unwrap();
        assert_eq!(h.keys, KeyConvention::TransformersMobileNetV2);
        assert_eq!(h.spec.architecture, "mobilenet_v2");
        assert_eq!(h.spec.num_classes, 3);
        assert_eq!(h.spec.param_f64("width_mult"), Some(1.0));
        assert_eq!(h.spec.param_f64("tf_padding"), Some(1.0));
        assert_eq!(h.spec.param_f64("bn_eps"), Some(0.001));
        assert_eq!(h.labels.as_ref().unwrap()[0], "background");
        // Written by transformers 4: the PIL processor.
        assert_eq!(h.spec.pipeline, Pipeline::TransformersPil);
        // The multipliers Google published all have torchvision's channels.
        for dm in ["0.35", "0.5", "0.75", "1.4"] {
            let cfg = HF_MNV2_CFG.replace(
                "\"depth_multiplier\": 1.0",
                &format!("\"depth_multiplier\": {dm}"),
            );
            let h = spec_from_hf(HF_MNV2_PRE, &cfg).unwrap();
            assert_eq!(h.spec.param_f64("width_mult"), Some(dm.parse().unwrap()));
        }
        let cfg = HF_MNV2_CFG.replace("\"tf_padding\": true", "\"tf_padding\": false");
        let h = spec_from_hf(HF_MNV2_PRE, &cfg).unwrap();
        assert_eq!(h.spec.param_f64("tf_padding"), Some(0.0));
        let refused = [
            (
                "\"first_layer_is_expansion\": true",
                "\"first_layer_is_expansion\": false",
                "first_layer_is_expansion",
            ),
            (
                "\"output_stride\": 32",
                "\"output_stride\": 16",
                "output_stride",
            ),
            (
                "\"expand_ratio\": 6.0",
                "\"expand_ratio\": 4.0",
                "expand_ratio",
            ),
            (
                "\"hidden_act\": \"relu6\"",
                "\"hidden_act\": \"relu\"",
                "hidden_act",
            ),
            ("\"num_channels\": 3", "\"num_channels\": 1", "num_channels"),
            // transformers rounds 16·1.1 to 24 channels, torchvision to 16.
            (
                "\"depth_multiplier\": 1.0",
                "\"depth_multiplier\": 1.1",
                "depth_multiplier",
            ),
            ("\"min_depth\": 8", "\"min_depth\": 32", "depth_multiplier"),
            (
                "\"depth_divisible_by\": 8",
                "\"depth_divisible_by\": 4",
                "depth_divisible_by",
            ),
        ];
        for (from, to, needle) in refused {
            let cfg = HF_MNV2_CFG.replace(from, to);
            assert_ne!(cfg, HF_MNV2_CFG, "{from}");
            let e = spec_from_hf(HF_MNV2_PRE, &cfg).unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains("config.json"),
                "{needle}: {e}"
            );
        }
        // finegrained_output false below 1.0 narrows the head below torchvision's 1280.
        let cfg = HF_MNV2_CFG
            .replace(
                "\"finegrained_output\": true",
                "\"finegrained_output\": false",
            )
            .replace("\"depth_multiplier\": 1.0", "\"depth_multiplier\": 0.5");
        let e = spec_from_hf(HF_MNV2_PRE, &cfg).unwrap_err().to_string();
        assert!(
            e.contains("finegrained_output") && e.contains("1280"),
            "{e}"
        );
    }

    #[test]
    fn reads_files_side_by_side() {
        let dir = std::env::temp_dir().join(format!("kiln-hubspec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), HF_R50_CFG).unwrap();
        std::fs::write(dir.join("preprocessor_config.json"), HF_R50_PRE).unwrap();
        for p in [
            dir.clone(),
            dir.join("config.json"),
            dir.join("preprocessor_config.json"),
        ] {
            let h = spec_from_hub_files(HubFormat::Transformers, &p).unwrap();
            assert_eq!(h.spec.architecture, "resnet50");
        }
        std::fs::write(dir.join("timm.json"), TIMM_MNV2).unwrap();
        let h = spec_from_hub_files(HubFormat::Timm, &dir.join("timm.json")).unwrap();
        assert_eq!(h.spec.architecture, "mobilenet_v2");
        std::fs::remove_file(dir.join("preprocessor_config.json")).unwrap();
        let e = spec_from_hub_files(HubFormat::Transformers, &dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("preprocessor_config.json"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
