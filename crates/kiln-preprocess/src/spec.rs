//! The training spec: how a set of weights expects its input, written once by whoever trained
//! them and read by everything that feeds them.
//!
//! The spec is the only source of preprocessing constants. It travels inside the safetensors
//! header (`__metadata__["kiln.spec"]`) and/or beside the weights as `NAME.spec.json`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

use crate::SpecError;

/// The metadata key under which a spec is embedded in a safetensors header.
pub const SPEC_METADATA_KEY: &str = "kiln.spec";

/// The spec format version this crate writes and reads.
pub const SPEC_VERSION: u32 = 1;

/// Resampling filter used by the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Nearest neighbour (PIL `NEAREST`).
    Nearest,
    /// Triangle filter (PIL `BILINEAR`).
    Bilinear,
    /// Cubic convolution with a = -0.5 (PIL `BICUBIC`).
    Bicubic,
    /// Lanczos with three lobes (PIL `LANCZOS`).
    Lanczos,
}

impl Interpolation {
    /// Parses the names used by torchvision, PIL, timm and Hugging Face.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "nearest" | "nearest-exact" => Some(Self::Nearest),
            "bilinear" | "linear" | "triangle" => Some(Self::Bilinear),
            "bicubic" | "cubic" => Some(Self::Bicubic),
            "lanczos" | "lanczos3" | "antialias" => Some(Self::Lanczos),
            _ => None,
        }
    }
}

/// How pixel values in 0..=255 are mapped before mean/std normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelScale {
    /// `x / 255`, giving [0, 1] (torchvision's `ToTensor`).
    Unit,
    /// `x / 127.5 - 1`, giving [-1, 1] (Keras `preprocess_input` mode `tf`).
    Symmetric,
    /// Left as 0..=255 (Keras mode `caffe`, TF EfficientNet-Lite).
    Raw,
}

impl PixelScale {
    /// Maps one 8-bit sample.
    #[inline]
    pub fn apply(self, v: u8) -> f32 {
        match self {
            Self::Unit => v as f32 / 255.0,
            Self::Symmetric => v as f32 / 127.5 - 1.0,
            Self::Raw => v as f32,
        }
    }
}

/// Channel order of the tensor the network was trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue (PIL, torchvision, TF).
    Rgb,
    /// Blue, green, red (OpenCV, Caffe).
    Bgr,
}

/// Memory layout of the batch fed to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Batch, channel, height, width (PyTorch).
    Nchw,
    /// Batch, height, width, channel (TensorFlow).
    Nhwc,
}

/// The resize step before cropping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resize {
    /// Target length of the shorter side; the longer side keeps the aspect ratio and is truncated
    /// to an integer, as torchvision's `Resize(int)` does. Mutually exclusive with `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shorter_side: Option<u32>,
    /// Exact `[height, width]` to resize to, ignoring the aspect ratio (`Resize((h, w))`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<[u32; 2]>,
    /// Resampling filter.
    pub interpolation: Interpolation,
    /// Whether the filter widens its support when downscaling (PIL always does).
    #[serde(default = "default_true")]
    pub antialias: bool,
}

fn default_true() -> bool {
    true
}

/// Which framework's transform the training pipeline ran: where the pixels come from, how they
/// are resized and cropped, and where float rounding enters.
///
/// The default, `torchvision`, is torchvision's transforms on PIL images (PIL's resampler);
/// the others are the tensor paths of torchvision and the two backends of transformers' image
/// processors. See [`crate::tensor_resize`] for the tensor arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pipeline {
    /// torchvision transforms on a PIL image: PIL resize, crop offsets rounded half to even.
    #[default]
    Torchvision,
    /// torchvision `transforms.v2` on a uint8 tensor: PyTorch's interpolate on uint8 (rounded
    /// back to uint8, `resize.antialias` as given), crop as torchvision, then scale/normalise.
    TorchvisionTensor,
    /// torchvision `transforms.v2` on a float32 tensor made by `ToDtype(float32, scale=True)`
    /// before the resize: interpolate on `x / 255` in float32, no rounding to uint8.
    TorchvisionTensorFloat,
    /// transformers' PIL backend (`…ImageProcessorPil`, and the default of transformers 4):
    /// PIL resize, crop offset `(size − crop) // 2`.
    TransformersPil,
    /// transformers' torchvision backend (`TorchvisionBackend`, the default of transformers
    /// 5): interpolate on the uint8 tensor with antialias, rounded to uint8; crop offset
    /// `int((size − crop) / 2)`; rescale and normalise fused, `(x − 255·mean) / (255·std)`.
    TransformersTorchvision,
}

impl Pipeline {
    /// The name used in specs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Pipeline::Torchvision => "torchvision",
            Pipeline::TorchvisionTensor => "torchvision-tensor",
            Pipeline::TorchvisionTensorFloat => "torchvision-tensor-float",
            Pipeline::TransformersPil => "transformers-pil",
            Pipeline::TransformersTorchvision => "transformers-torchvision",
        }
    }

    /// Whether the resize is PyTorch's interpolate on a tensor (not PIL's resampler).
    pub fn resizes_tensors(self) -> bool {
        matches!(
            self,
            Pipeline::TorchvisionTensor
                | Pipeline::TorchvisionTensorFloat
                | Pipeline::TransformersTorchvision
        )
    }

    fn is_default(&self) -> bool {
        *self == Pipeline::Torchvision
    }
}

fn default_version() -> u32 {
    SPEC_VERSION
}

/// A complete training spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSpec {
    /// Spec format version.
    #[serde(default = "default_version")]
    pub kiln_spec: u32,
    /// Registry name of the architecture, e.g. `mobilenet_v2` or `resnet50`.
    pub architecture: String,
    /// Architecture parameters such as `width_mult`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arch_params: BTreeMap<String, serde_json::Value>,
    /// Number of classifier outputs.
    pub num_classes: usize,
    /// Label file, relative to the spec or weights file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// `[height, width]` of the tensor the network sees.
    pub input_size: [u32; 2],
    /// Resize before cropping; `None` feeds the decoded image straight to the crop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<Resize>,
    /// `[height, width]` of the centre crop; `None` means no crop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub center_crop: Option<[u32; 2]>,
    /// Mapping of 8-bit pixels before normalisation.
    pub scale: PixelScale,
    /// Per-channel mean, in the units `scale` produces, in `channel_order`.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, same units and order as `mean`.
    pub std: Vec<f32>,
    /// Channel order of the network's input.
    pub channel_order: ChannelOrder,
    /// Layout of the network's input.
    pub layout: Layout,
    /// The framework transform reproduced (default `torchvision`, on PIL images).
    #[serde(default, skip_serializing_if = "Pipeline::is_default")]
    pub pipeline: Pipeline,
    /// Free-form provenance (framework, source file, hashes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source: BTreeMap<String, serde_json::Value>,
}

/// Named preprocessing conventions in common use. Each fills in everything but the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// torchvision's ImageNet eval transform: resize 256 bilinear, crop 224, /255, ImageNet mean/std.
    TorchvisionImagenet,
    /// Keras `preprocess_input(mode="tf")`: x / 127.5 - 1, RGB.
    KerasTf,
    /// Keras `preprocess_input(mode="torch")`: /255 then ImageNet mean/std, RGB.
    KerasTorch,
    /// Keras `preprocess_input(mode="caffe")`: BGR, mean subtracted on 0..255, no scaling.
    KerasCaffe,
    /// TF EfficientNet-Lite eval: resize 256 bicubic, crop 224, (x - 127) / 128.
    TfEfficientNetLite,
}

/// ImageNet channel means on the [0, 1] scale (torchvision, Keras `torch` mode).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations on the [0, 1] scale.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Keras `caffe` mode means, BGR order, on the 0..255 scale.
pub const CAFFE_MEAN_BGR: [f32; 3] = [103.939, 116.779, 123.68];

impl Preset {
    /// All presets, for listing.
    pub const ALL: [Preset; 5] = [
        Preset::TorchvisionImagenet,
        Preset::KerasTf,
        Preset::KerasTorch,
        Preset::KerasCaffe,
        Preset::TfEfficientNetLite,
    ];

    /// The preset's name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::TorchvisionImagenet => "torchvision-imagenet",
            Self::KerasTf => "keras-tf",
            Self::KerasTorch => "keras-torch",
            Self::KerasCaffe => "keras-caffe",
            Self::TfEfficientNetLite => "tf-efficientnet-lite",
        }
    }

    /// Looks a preset up by [`Preset::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// A spec for `architecture` with `num_classes` outputs fed the way this preset says.
    pub fn spec(self, architecture: &str, num_classes: usize) -> TrainingSpec {
        let imagenet_resize = Resize {
            shorter_side: Some(256),
            size: None,
            interpolation: Interpolation::Bilinear,
            antialias: true,
        };
        let (resize, scale, mean, std, order) = match self {
            Self::TorchvisionImagenet => (
                imagenet_resize,
                PixelScale::Unit,
                IMAGENET_MEAN.to_vec(),
                IMAGENET_STD.to_vec(),
                ChannelOrder::Rgb,
            ),
            Self::KerasTf => (
                imagenet_resize,
                PixelScale::Symmetric,
                vec![0.0; 3],
                vec![1.0; 3],
                ChannelOrder::Rgb,
            ),
            Self::KerasTorch => (
                imagenet_resize,
                PixelScale::Unit,
                IMAGENET_MEAN.to_vec(),
                IMAGENET_STD.to_vec(),
                ChannelOrder::Rgb,
            ),
            Self::KerasCaffe => (
                imagenet_resize,
                PixelScale::Raw,
                CAFFE_MEAN_BGR.to_vec(),
                vec![1.0; 3],
                ChannelOrder::Bgr,
            ),
            Self::TfEfficientNetLite => (
                Resize {
                    interpolation: Interpolation::Bicubic,
                    ..imagenet_resize
                },
                PixelScale::Raw,
                vec![127.0; 3],
                vec![128.0; 3],
                ChannelOrder::Rgb,
            ),
        };
        TrainingSpec {
            kiln_spec: SPEC_VERSION,
            architecture: architecture.to_string(),
            arch_params: BTreeMap::new(),
            num_classes,
            labels: None,
            input_size: [224, 224],
            resize: Some(resize),
            center_crop: Some([224, 224]),
            scale,
            mean,
            std,
            channel_order: order,
            layout: Layout::Nchw,
            pipeline: Pipeline::Torchvision,
            source: BTreeMap::new(),
        }
    }
}

impl TrainingSpec {
    /// Parses and validates a spec from JSON text.
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let spec: TrainingSpec =
            serde_json::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Reads, parses and validates a spec file.
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_json(&text).map_err(|e| e.in_file(path))
    }

    /// Pretty JSON text of this spec.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a spec always serialises")
    }

    /// A number-valued architecture parameter.
    pub fn param_f64(&self, name: &str) -> Option<f64> {
        self.arch_params.get(name).and_then(|v| v.as_f64())
    }

    /// Checks that the spec is internally consistent. Every error names the field, the value in
    /// the spec and what was expected.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: &str, value: String, expected: String| {
            Err(SpecError::Invalid {
                field: field.to_string(),
                value,
                expected,
            })
        };
        if self.kiln_spec != SPEC_VERSION {
            return bad(
                "kiln_spec",
                self.kiln_spec.to_string(),
                format!("{SPEC_VERSION}"),
            );
        }
        if self.architecture.trim().is_empty() {
            return bad("architecture", "\"\"".into(), "an architecture name".into());
        }
        if self.num_classes == 0 {
            return bad("num_classes", "0".into(), "at least 1".into());
        }
        if self.mean.len() != 3 {
            return bad(
                "mean",
                format!("{:?}", self.mean),
                "one value per channel (3)".into(),
            );
        }
        if self.std.len() != 3 {
            return bad(
                "std",
                format!("{:?}", self.std),
                "one value per channel (3)".into(),
            );
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return bad(
                "std",
                format!("{:?}", self.std),
                format!("all > 0 (found {s})"),
            );
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return bad("mean", format!("{:?}", self.mean), "finite values".into());
        }
        if self.input_size.contains(&0) {
            return bad(
                "input_size",
                format!("{:?}", self.input_size),
                "positive [height, width]".into(),
            );
        }
        if let Some(r) = &self.resize {
            match (r.shorter_side, r.size) {
                (Some(_), Some(_)) | (None, None) => {
                    return bad(
                        "resize",
                        format!("shorter_side={:?}, size={:?}", r.shorter_side, r.size),
                        "exactly one of shorter_side or size".into(),
                    )
                }
                (Some(0), _) => return bad("resize.shorter_side", "0".into(), "> 0".into()),
                (_, Some(s)) if s.contains(&0) => {
                    return bad("resize.size", format!("{s:?}"), "positive [h, w]".into())
                }
                _ => {}
            }
            if self.pipeline.resizes_tensors()
                && r.interpolation == Interpolation::Lanczos
                && !r.antialias
            {
                return bad(
                    "resize.antialias",
                    "false".into(),
                    "true for lanczos on tensors (torchvision refuses lanczos without antialias)"
                        .into(),
                );
            }
        }
        if self.pipeline == Pipeline::TorchvisionTensorFloat && self.scale != PixelScale::Unit {
            return bad(
                "scale",
                format!("{:?}", self.scale).to_lowercase(),
                "unit for pipeline torchvision-tensor-float (ToDtype(float32, scale=True) divides by 255 before the resize)".into(),
            );
        }
        if let Some(c) = self.center_crop {
            if c.contains(&0) {
                return bad("center_crop", format!("{c:?}"), "positive [h, w]".into());
            }
            if c != self.input_size {
                return bad(
                    "center_crop",
                    format!("{c:?}"),
                    format!("equal to input_size {:?}", self.input_size),
                );
            }
            if let Some(r) = &self.resize {
                let fits = match (r.shorter_side, r.size) {
                    (Some(s), _) => c[0] <= s && c[1] <= s,
                    (_, Some(sz)) => c[0] <= sz[0] && c[1] <= sz[1],
                    _ => true,
                };
                if !fits {
                    return bad(
                        "center_crop",
                        format!("{c:?}"),
                        format!(
                            "no larger than the resize ({})",
                            r.shorter_side
                                .map(|s| format!("shorter side {s}"))
                                .unwrap_or_else(|| format!(
                                    "size {:?}",
                                    r.size.unwrap_or_default()
                                ))
                        ),
                    );
                }
            }
        } else if let Some(Resize { size: Some(sz), .. }) = &self.resize {
            if *sz != self.input_size {
                return bad(
                    "resize.size",
                    format!("{sz:?}"),
                    format!(
                        "equal to input_size {:?} when there is no crop",
                        self.input_size
                    ),
                );
            }
        } else {
            return bad(
                "center_crop",
                "null".into(),
                "a crop or an exact resize.size, so that every image reaches input_size".into(),
            );
        }
        Ok(())
    }

    /// Checks that two specs for the same weights say the same thing (provenance aside).
    pub fn check_agrees(&self, other: &TrainingSpec, other_name: &str) -> Result<(), SpecError> {
        let a = serde_json::to_value(self.without_source()).expect("serialises");
        let b = serde_json::to_value(other.without_source()).expect("serialises");
        if let (serde_json::Value::Object(a), serde_json::Value::Object(b)) = (&a, &b) {
            for key in a.keys().chain(b.keys()) {
                if a.get(key) != b.get(key) {
                    return Err(SpecError::Disagree {
                        field: key.clone(),
                        ours: a.get(key).map(|v| v.to_string()).unwrap_or("absent".into()),
                        other_name: other_name.to_string(),
                        theirs: b.get(key).map(|v| v.to_string()).unwrap_or("absent".into()),
                    });
                }
            }
        }
        Ok(())
    }

    fn without_source(&self) -> TrainingSpec {
        TrainingSpec {
            source: BTreeMap::new(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_framework_constants() {
        // torchvision.transforms._presets.ImageClassification defaults.
        let tv = Preset::TorchvisionImagenet.spec("x", 1000);
        assert_eq!(tv.mean, vec![0.485, 0.456, 0.406]);
        assert_eq!(tv.std, vec![0.229, 0.224, 0.225]);
        assert_eq!(tv.scale, PixelScale::Unit);
        let r = tv.resize.as_ref().unwrap();
        assert_eq!(
            (r.shorter_side, r.interpolation, r.antialias),
            (Some(256), Interpolation::Bilinear, true)
        );
        assert_eq!(tv.center_crop, Some([224, 224]));

        // keras.applications.imagenet_utils.preprocess_input, mode="tf": x / 127.5 - 1.
        let tf = Preset::KerasTf.spec("x", 1000);
        assert_eq!(tf.scale.apply(0), -1.0);
        assert_eq!(tf.scale.apply(255), 1.0);
        assert_eq!(
            (tf.mean.clone(), tf.std.clone()),
            (vec![0.0; 3], vec![1.0; 3])
        );

        // mode="torch": /255, then ImageNet mean/std.
        let torch = Preset::KerasTorch.spec("x", 1000);
        assert_eq!(torch.mean, IMAGENET_MEAN.to_vec());
        assert_eq!(torch.std, IMAGENET_STD.to_vec());

        // mode="caffe": RGB->BGR, mean [103.939, 116.779, 123.68] subtracted, no scaling.
        let caffe = Preset::KerasCaffe.spec("x", 1000);
        assert_eq!(caffe.channel_order, ChannelOrder::Bgr);
        assert_eq!(caffe.mean, vec![103.939, 116.779, 123.68]);
        assert_eq!(caffe.std, vec![1.0; 3]);
        assert_eq!(caffe.scale.apply(200), 200.0);

        // TF EfficientNet-Lite: (x - 127) / 128 on 0..255, bicubic.
        let lite = Preset::TfEfficientNetLite.spec("x", 1000);
        assert_eq!(
            (lite.mean.clone(), lite.std.clone()),
            (vec![127.0; 3], vec![128.0; 3])
        );
        assert_eq!(
            lite.resize.as_ref().unwrap().interpolation,
            Interpolation::Bicubic
        );
        for p in Preset::ALL {
            p.spec("x", 10).validate().unwrap();
            assert_eq!(Preset::from_name(p.name()), Some(p));
        }
    }

    #[test]
    fn validation_names_field_and_values() {
        let mut s = Preset::TorchvisionImagenet.spec("mobilenet_v2", 1000);
        s.std[1] = 0.0;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("std") && e.contains("0.0"), "{e}");

        let mut s = Preset::TorchvisionImagenet.spec("mobilenet_v2", 1000);
        s.mean.pop();
        assert!(s.validate().unwrap_err().to_string().contains("mean"));

        let mut s = Preset::TorchvisionImagenet.spec("mobilenet_v2", 1000);
        s.center_crop = Some([300, 300]);
        s.input_size = [300, 300];
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("center_crop") && e.contains("300"), "{e}");

        let text = Preset::TorchvisionImagenet
            .spec("m", 5)
            .to_json()
            .replace("bilinear", "bilinearish");
        let e = TrainingSpec::from_json(&text).unwrap_err().to_string();
        assert!(e.contains("bilinearish"), "{e}");
    }

    #[test]
    fn round_trips_and_compares() {
        let a = Preset::TorchvisionImagenet.spec("mobilenet_v2", 1000);
        let b = TrainingSpec::from_json(&a.to_json()).unwrap();
        assert_eq!(a, b);
        a.check_agrees(&b, "file").unwrap();
        let mut c = b.clone();
        c.mean[0] = 0.5;
        let e = a.check_agrees(&c, "spec.json").unwrap_err().to_string();
        assert!(e.contains("mean") && e.contains("spec.json"), "{e}");
    }
}
