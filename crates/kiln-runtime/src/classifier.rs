//! The classification pipeline, top to bottom: resolve weights and spec → build the model →
//! decode → preprocess → batch → forward → softmax → top-k → labels.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::{DynamicImage, RgbImage};
use kiln_models::ImageModel;
use kiln_preprocess::{
    decode_file, preprocess, ChannelOrder, DecodeOptions, ImageTensor, Interpolation, Layout, PixelScale, TrainingSpec,
};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

use crate::labels::read_labels;
use crate::weights::{resolve_spec, SpecOrigin, WeightFile};
use crate::RuntimeError;

/// The directory holding the weights shipped with kiln: `$KILN_WEIGHTS_DIR`, else the
/// repository's `weights/` (known at build time), else `./weights`.
pub fn shipped_weights_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_WEIGHTS_DIR") {
        return PathBuf::from(d);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../weights");
    if repo.is_dir() {
        return repo;
    }
    PathBuf::from("weights")
}

/// Model used when none is named.
pub const DEFAULT_MODEL: &str = "mobilenet_v2";

/// One class with its score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScore {
    /// Class index in the classifier's output.
    pub index: usize,
    /// Human-readable name.
    pub label: String,
    /// Softmax probability.
    pub prob: f32,
}

/// The result for one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The best classes, most probable first.
    pub top: Vec<ClassScore>,
}

/// Command-line style overrides of preprocessing constants. Each one that contradicts the spec
/// is refused unless overriding is explicitly allowed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecOverrides {
    /// Per-channel mean.
    pub mean: Option<Vec<f32>>,
    /// Per-channel std.
    pub std: Option<Vec<f32>>,
    /// Shorter side of the resize.
    pub resize: Option<u32>,
    /// Square centre crop (also the input size).
    pub crop: Option<u32>,
    /// Resampling filter.
    pub interpolation: Option<Interpolation>,
    /// Pixel scaling.
    pub scale: Option<PixelScale>,
    /// Channel order.
    pub channel_order: Option<ChannelOrder>,
}

impl SpecOverrides {
    /// Applies the overrides to `spec`. A value that differs from the spec is an error naming the
    /// field, unless `allow` is set.
    pub fn apply(&self, spec: &TrainingSpec, allow: bool) -> Result<TrainingSpec, RuntimeError> {
        let mut out = spec.clone();
        let check = |field: &str, spec_v: String, given: String| -> Result<(), RuntimeError> {
            if spec_v != given && !allow {
                return Err(RuntimeError::SpecOverride {
                    field: field.into(),
                    spec_value: spec_v,
                    given,
                });
            }
            Ok(())
        };
        if let Some(m) = &self.mean {
            check("mean", format!("{:?}", spec.mean), format!("{m:?}"))?;
            out.mean = m.clone();
        }
        if let Some(s) = &self.std {
            check("std", format!("{:?}", spec.std), format!("{s:?}"))?;
            out.std = s.clone();
        }
        if let Some(r) = self.resize {
            let cur = spec.resize.as_ref().and_then(|r| r.shorter_side);
            check("resize", format!("{cur:?}"), format!("{:?}", Some(r)))?;
            let interp = spec.resize.as_ref().map(|r| r.interpolation).unwrap_or(Interpolation::Bilinear);
            out.resize = Some(kiln_preprocess::Resize {
                shorter_side: Some(r),
                size: None,
                interpolation: interp,
                antialias: true,
            });
        }
        if let Some(c) = self.crop {
            check("center_crop", format!("{:?}", spec.center_crop), format!("{:?}", Some([c, c])))?;
            out.center_crop = Some([c, c]);
            out.input_size = [c, c];
        }
        if let Some(i) = self.interpolation {
            let cur = spec.resize.as_ref().map(|r| r.interpolation);
            check("resize.interpolation", format!("{cur:?}"), format!("{:?}", Some(i)))?;
            if let Some(r) = out.resize.as_mut() {
                r.interpolation = i;
            }
        }
        if let Some(s) = self.scale {
            check("scale", format!("{:?}", spec.scale), format!("{s:?}"))?;
            out.scale = s;
        }
        if let Some(c) = self.channel_order {
            check("channel_order", format!("{:?}", spec.channel_order), format!("{c:?}"))?;
            out.channel_order = c;
        }
        out.validate()?;
        Ok(out)
    }
}

/// Builds a [`Classifier`]. Weights come from `weights`, else from the shipped weights of
/// `model` (default [`DEFAULT_MODEL`]).
#[derive(Debug, Clone)]
pub struct ClassifierBuilder {
    model: Option<String>,
    weights: Option<PathBuf>,
    spec_file: Option<PathBuf>,
    spec: Option<(TrainingSpec, String)>,
    labels: Option<PathBuf>,
    device: Device,
    dtype: DType,
    overrides: SpecOverrides,
    allow_override: bool,
    decode: DecodeOptions,
}

impl Default for ClassifierBuilder {
    fn default() -> Self {
        Self {
            model: None,
            weights: None,
            spec_file: None,
            spec: None,
            labels: None,
            device: Device::Cpu,
            dtype: DType::F32,
            overrides: SpecOverrides::default(),
            allow_override: false,
            decode: DecodeOptions::default(),
        }
    }
}

impl ClassifierBuilder {
    /// The architecture name (e.g. `resnet50`); checked against the spec's.
    pub fn model(mut self, name: impl Into<String>) -> Self {
        self.model = Some(name.into());
        self
    }
    /// A safetensors weights file.
    pub fn weights(mut self, path: impl Into<PathBuf>) -> Self {
        self.weights = Some(path.into());
        self
    }
    /// A spec file; must agree with any spec embedded in or beside the weights.
    pub fn spec_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.spec_file = Some(path.into());
        self
    }
    /// A spec built in code (a preset, a hub config), with a name for where it came from. Used
    /// only when the weights carry none; otherwise it must agree with theirs.
    pub fn spec(mut self, spec: TrainingSpec, origin: impl Into<String>) -> Self {
        self.spec = Some((spec, origin.into()));
        self
    }
    /// A label file overriding the spec's.
    pub fn labels(mut self, path: impl Into<PathBuf>) -> Self {
        self.labels = Some(path.into());
        self
    }
    /// The device to run on.
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }
    /// The compute dtype (f32 by default).
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }
    /// Preprocessing overrides, and whether ones that contradict the spec are allowed.
    pub fn overrides(mut self, o: SpecOverrides, allow_contradicting_spec: bool) -> Self {
        self.overrides = o;
        self.allow_override = allow_contradicting_spec;
        self
    }
    /// Decoding limits.
    pub fn decode_options(mut self, d: DecodeOptions) -> Self {
        self.decode = d;
        self
    }

    /// Resolves everything, checks that spec, weights and labels agree, and loads the model.
    pub fn build(self) -> Result<Classifier, RuntimeError> {
        let weights_path = match &self.weights {
            Some(w) => w.clone(),
            None => {
                let name = self.model.as_deref().unwrap_or(DEFAULT_MODEL);
                let p = shipped_weights_dir().join(format!("{name}.safetensors"));
                if !p.exists() {
                    return Err(RuntimeError::NoWeights {
                        model: name.to_string(),
                        looked: p.display().to_string(),
                    });
                }
                p
            }
        };
        let file = WeightFile::read(&weights_path)?;
        let (spec, origin, base_dir) = match resolve_spec(&file, self.spec_file.as_deref())? {
            Some((s, o, d)) => {
                if let Some((given, name)) = &self.spec {
                    s.check_agrees(given, name)?;
                }
                (s, o, d)
            }
            None => match self.spec.clone() {
                Some((s, name)) => (s, SpecOrigin::Given(name), PathBuf::from(".")),
                None => {
                    return Err(RuntimeError::NoSpec {
                        weights: weights_path.display().to_string(),
                    })
                }
            },
        };
        if let Some(m) = &self.model {
            if *m != spec.architecture {
                return Err(RuntimeError::Mismatch(format!(
                    "--model is `{m}` but the training spec ({origin}) says architecture `{}`",
                    spec.architecture
                )));
            }
        }
        let spec = self.overrides.apply(&spec, self.allow_override)?;
        if spec.layout != Layout::Nchw {
            return Err(RuntimeError::Mismatch(format!(
                "spec layout is {:?}, but kiln's {} takes NCHW input",
                spec.layout, spec.architecture
            )));
        }

        let entry = kiln_models::find(&spec.architecture)?;
        if let Some(shape) = file.shape(&format!("{}.weight", entry.classifier)) {
            if shape[0] != spec.num_classes {
                return Err(RuntimeError::Mismatch(format!(
                    "the classifier `{}.weight` in {} has {} rows but the spec's num_classes is {}",
                    entry.classifier,
                    weights_path.display(),
                    shape[0],
                    spec.num_classes
                )));
            }
        }
        let labels = match (&self.labels, &spec.labels) {
            (Some(p), _) => read_labels(p)?,
            (None, Some(rel)) => read_labels(&base_dir.join(rel))?,
            (None, None) => (0..spec.num_classes).map(|i| format!("class {i}")).collect(),
        };
        if labels.len() != spec.num_classes {
            return Err(RuntimeError::Mismatch(format!(
                "the label file has {} names but the model has {} classes (spec num_classes, classifier rows)",
                labels.len(),
                spec.num_classes
            )));
        }
        let params = spec_params(&spec)?;
        let vb = VarBuilder::from_buffered_safetensors(file.bytes.clone(), self.dtype, &self.device)?;
        let model = kiln_models::build(&spec.architecture, &params, vb)?;
        if model.num_classes() != spec.num_classes {
            return Err(RuntimeError::Mismatch(format!(
                "the classifier has {} outputs but the spec's num_classes is {}",
                model.num_classes(),
                spec.num_classes
            )));
        }
        tracing::debug!(arch = %spec.architecture, weights = %weights_path.display(), spec = %origin, "model loaded");
        Ok(Classifier {
            model,
            spec,
            spec_origin: origin,
            labels,
            device: self.device,
            dtype: self.dtype,
            decode: self.decode,
            weights: weights_path,
            parameters: file.parameter_count(),
        })
    }
}

fn spec_params(spec: &TrainingSpec) -> Result<kiln_models::ArchParams, RuntimeError> {
    spec.arch_params
        .iter()
        .map(|(k, v)| {
            v.as_f64().map(|f| (k.clone(), f)).ok_or_else(|| {
                RuntimeError::Spec(kiln_preprocess::SpecError::Invalid {
                    field: format!("arch_params.{k}"),
                    value: v.to_string(),
                    expected: "a number".into(),
                })
            })
        })
        .collect()
}

/// A ready classifier: model, spec and labels that were checked against each other.
///
/// It is `Send + Sync`; many threads may classify with one instance at once.
pub struct Classifier {
    model: Box<dyn ImageModel>,
    spec: TrainingSpec,
    spec_origin: SpecOrigin,
    labels: Vec<String>,
    device: Device,
    dtype: DType,
    decode: DecodeOptions,
    weights: PathBuf,
    parameters: usize,
}

impl Classifier {
    /// Starts building a classifier.
    pub fn builder() -> ClassifierBuilder {
        ClassifierBuilder::default()
    }

    /// The spec in force (after any allowed overrides).
    pub fn spec(&self) -> &TrainingSpec {
        &self.spec
    }
    /// Where the spec came from.
    pub fn spec_origin(&self) -> &SpecOrigin {
        &self.spec_origin
    }
    /// Class names, by index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }
    /// The weights file.
    pub fn weights_path(&self) -> &Path {
        &self.weights
    }
    /// Number of parameters in the weights file.
    pub fn parameter_count(&self) -> usize {
        self.parameters
    }
    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Decoding limits in force.
    pub fn decode_options(&self) -> &DecodeOptions {
        &self.decode
    }

    /// Preprocesses one decoded image as the spec says.
    pub fn preprocess(&self, img: &RgbImage) -> ImageTensor {
        preprocess(img, &self.spec)
    }

    /// Runs the network on preprocessed images, returning logits `[n, classes]` on the CPU.
    pub fn logits(&self, batch: &[ImageTensor]) -> Result<Vec<Vec<f32>>, RuntimeError> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let shape = batch[0].shape;
        let mut flat = Vec::with_capacity(batch.len() * batch[0].data.len());
        for t in batch {
            if t.shape != shape {
                return Err(RuntimeError::Mismatch(format!(
                    "batch mixes shapes {:?} and {:?}",
                    shape, t.shape
                )));
            }
            flat.extend_from_slice(&t.data);
        }
        let x = Tensor::from_vec(flat, (batch.len(), shape[0], shape[1], shape[2]), &Device::Cpu)?
            .to_device(&self.device)?
            .to_dtype(self.dtype)?;
        tracing::debug!(input = ?x.dims(), "forward");
        let y = self.model.forward(&x)?;
        tracing::debug!(output = ?y.dims(), "forward done");
        Ok(y.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?)
    }

    /// Softmax and top-k of one row of logits.
    pub fn decode_logits(&self, logits: &[f32], top_k: usize) -> Prediction {
        let probs = softmax(logits);
        let mut idx: Vec<usize> = (0..probs.len()).collect();
        // Stable order for ties: lower index first, as torch.topk does on CPU in practice.
        idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        Prediction {
            top: idx
                .into_iter()
                .take(top_k.max(1))
                .map(|i| ClassScore {
                    index: i,
                    label: self.labels[i].clone(),
                    prob: probs[i],
                })
                .collect(),
        }
    }

    /// Classifies decoded images.
    pub fn classify_images(&self, images: &[RgbImage], top_k: usize) -> Result<Vec<Prediction>, RuntimeError> {
        let tensors: Vec<_> = images.par_iter().map(|i| self.preprocess(i)).collect();
        Ok(self
            .logits(&tensors)?
            .iter()
            .map(|l| self.decode_logits(l, top_k))
            .collect())
    }

    /// Classifies one in-memory image of any colour type.
    pub fn classify_image(&self, img: &DynamicImage, top_k: usize) -> Result<Prediction, RuntimeError> {
        let rgb = kiln_preprocess::to_rgb8(img.clone());
        Ok(self.classify_images(&[rgb], top_k)?.remove(0))
    }

    /// Decodes, validates and classifies one file.
    pub fn classify_path(&self, path: &Path, top_k: usize) -> Result<Prediction, RuntimeError> {
        let d = decode_file(path, &self.decode)?;
        Ok(self.classify_images(&[d.rgb], top_k)?.remove(0))
    }

    /// Classifies many files in batches of `batch_size`, decoding in parallel. One result per
    /// path, in input order; a file that fails does not stop the others.
    pub fn classify_paths(
        &self,
        paths: &[PathBuf],
        top_k: usize,
        batch_size: usize,
    ) -> Vec<Result<Prediction, RuntimeError>> {
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(batch_size.max(1)) {
            let decoded: Vec<Result<ImageTensor, RuntimeError>> = chunk
                .par_iter()
                .map(|p| {
                    let d = decode_file(p, &self.decode)?;
                    Ok(self.preprocess(&d.rgb))
                })
                .collect();
            let ok: Vec<ImageTensor> = decoded.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
            let mut preds = match self.logits(&ok) {
                Ok(l) => l.iter().map(|r| Ok(self.decode_logits(r, top_k))).collect::<Vec<_>>(),
                Err(e) => ok.iter().map(|_| Err(RuntimeError::Forward(e.to_string()))).collect(),
            }
            .into_iter();
            for r in decoded {
                out.push(match r {
                    Ok(_) => preds.next().expect("one prediction per decoded image"),
                    Err(e) => Err(e),
                });
            }
        }
        out
    }
}

/// Numerically stable softmax in f64, returned as f32.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}
