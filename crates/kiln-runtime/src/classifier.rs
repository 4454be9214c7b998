//! The classification pipeline, top to bottom: resolve weights and spec → build the model →
//! decode → preprocess → batch → forward → softmax → top-k → labels.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::{DynamicImage, RgbImage};
use kiln_models::ImageModel;
use kiln_preprocess::{
    decode_file, preprocess, tta_views, ChannelOrder, DecodeOptions, ImageTensor, Interpolation,
    Layout, PixelScale, TrainingSpec, Tta,
};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    /// True when the top-1 probability is below the confidence threshold: the model does not
    /// assert a class, and `top` is only what it leaned towards.
    pub uncertain: bool,
}

/// How to classify a stream of inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunOptions {
    /// Classes kept per image.
    pub top_k: usize,
    /// Images per forward pass (each contributes `tta.views()` tensors).
    pub batch_size: usize,
    /// Test-time augmentation.
    pub tta: Tta,
    /// Top-1 probability below which a result is marked uncertain.
    pub threshold: Option<f32>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            top_k: 5,
            batch_size: DEFAULT_BATCH_SIZE,
            tta: Tta::None,
            threshold: None,
        }
    }
}

/// Images per forward pass when not told otherwise. Measured end to end on a 2-core CPU (see
/// README): 116 images/s at batch 1, 170 at 2, flat (165–175) up to 32; 8 keeps the decoder
/// overlapping the network without holding many decoded images.
pub const DEFAULT_BATCH_SIZE: usize = 8;

/// Time spent on one image in each stage (forward and postprocess are its share of its batch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageTimes {
    /// Reading and decoding the file.
    pub decode_ms: f64,
    /// Resize, crop, normalise (all views).
    pub preprocess_ms: f64,
    /// The network.
    pub forward_ms: f64,
    /// Softmax, averaging, top-k.
    pub postprocess_ms: f64,
}

/// One classified input of a stream.
#[derive(Debug, Clone)]
pub struct Classified {
    /// The prediction.
    pub prediction: Prediction,
    /// Width and height after decoding (and EXIF orientation).
    pub decoded_size: (u32, u32),
    /// Per-stage timings.
    pub times: StageTimes,
}

/// The outcome for one input of a stream, delivered in input order.
#[derive(Debug)]
pub struct Outcome {
    /// Position in the input.
    pub index: usize,
    /// The input path.
    pub path: PathBuf,
    /// The classification, or why this input failed.
    pub result: Result<Classified, RuntimeError>,
}

struct Prepared {
    index: usize,
    path: PathBuf,
    views: Result<(Vec<ImageTensor>, (u32, u32)), RuntimeError>,
    times: StageTimes,
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
            let interp = spec
                .resize
                .as_ref()
                .map(|r| r.interpolation)
                .unwrap_or(Interpolation::Bilinear);
            out.resize = Some(kiln_preprocess::Resize {
                shorter_side: Some(r),
                size: None,
                interpolation: interp,
                antialias: true,
            });
        }
        if let Some(c) = self.crop {
            check(
                "center_crop",
                format!("{:?}", spec.center_crop),
                format!("{:?}", Some([c, c])),
            )?;
            out.center_crop = Some([c, c]);
            out.input_size = [c, c];
        }
        if let Some(i) = self.interpolation {
            let cur = spec.resize.as_ref().map(|r| r.interpolation);
            check(
                "resize.interpolation",
                format!("{cur:?}"),
                format!("{:?}", Some(i)),
            )?;
            if let Some(r) = out.resize.as_mut() {
                r.interpolation = i;
            }
        }
        if let Some(s) = self.scale {
            check("scale", format!("{:?}", spec.scale), format!("{s:?}"))?;
            out.scale = s;
        }
        if let Some(c) = self.channel_order {
            check(
                "channel_order",
                format!("{:?}", spec.channel_order),
                format!("{c:?}"),
            )?;
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
    /// The compute dtype (f32 by default): weights and activations. f16 and bf16 are for GPUs;
    /// on the CPU [`ClassifierBuilder::build`] refuses them ([`crate::check_dtype`]).
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
        crate::check_dtype(&self.device, self.dtype)?;
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

        let entry = kiln_models::find(&spec.architecture).map_err(|e| {
            RuntimeError::Mismatch(format!("the training spec ({origin}): architecture: {e}"))
        })?;
        let classifier_key = format!("{}.weight", entry.classifier);
        if file.shape(&classifier_key).is_none() {
            // Weights saved from a wrapper module (`backbone.fc.weight`) load nowhere: say which
            // prefix they carry and how to strip it, instead of the model's first missing key.
            let suffix = format!(".{classifier_key}");
            if let Some((name, _, _)) = file.tensors.iter().find(|t| t.0.ends_with(&suffix)) {
                let prefix = &name[..name.len() - classifier_key.len()];
                return Err(RuntimeError::Mismatch(format!(
                    "{}: the weights' names carry the prefix `{prefix}` (e.g. `{name}` for the \
                     model's `{classifier_key}`), as saved from a wrapper module; convert the \
                     training checkpoint with `kiln convert` (it detects and strips the prefix, \
                     or pass --strip-prefix {prefix})",
                    weights_path.display()
                )));
            }
        }
        if let Some(shape) = file.shape(&classifier_key) {
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
        let labels_path = match (&self.labels, &spec.labels) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(rel)) => Some(base_dir.join(rel)),
            (None, None) => None,
        };
        let labels = match &labels_path {
            Some(p) => read_labels(p)?,
            None => (0..spec.num_classes)
                .map(|i| format!("class {i}"))
                .collect(),
        };
        if labels.len() != spec.num_classes {
            return Err(RuntimeError::Mismatch(format!(
                "the label file {} has {} names but the model has {} classes (spec num_classes, classifier rows)",
                labels_path.as_deref().unwrap_or(Path::new("?")).display(),
                labels.len(),
                spec.num_classes
            )));
        }
        let params = spec_params(&spec)?;
        let parameters = file.parameter_count();
        let vb = VarBuilder::from_buffered_safetensors(file.bytes, self.dtype, &self.device)?;
        // The model names the tensor at fault; the file is named here.
        let model = kiln_models::build(&spec.architecture, &params, vb).map_err(|e| {
            RuntimeError::Weights {
                path: weights_path.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        if model.num_classes() != spec.num_classes {
            return Err(RuntimeError::Mismatch(format!(
                "the classifier has {} outputs but the spec's num_classes is {}",
                model.num_classes(),
                spec.num_classes
            )));
        }
        let min_side = match self.decode.min_side {
            0 => kiln_preprocess::decode::min_side_for_input(spec.input_size),
            m => m,
        };
        tracing::debug!(arch = %spec.architecture, weights = %weights_path.display(), spec = %origin, "model loaded");
        Ok(Classifier {
            model,
            spec,
            spec_origin: origin,
            labels,
            device: self.device,
            dtype: self.dtype,
            decode: DecodeOptions {
                min_side,
                ..self.decode
            },
            weights: weights_path,
            parameters,
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

    /// The network (for [`crate::cam`]).
    pub(crate) fn model(&self) -> &dyn ImageModel {
        self.model.as_ref()
    }

    /// Runs the network on preprocessed images, returning logits `[n, classes]` on the CPU.
    pub fn logits(&self, batch: &[ImageTensor]) -> Result<Vec<Vec<f32>>, RuntimeError> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let x = self.input_tensor(batch)?;
        tracing::debug!(input = ?x.dims(), "forward");
        // On the CPU, spreads the batch over the threads (see `ImageModel::forward_batch`).
        let y = self.model.forward_batch(&x)?;
        tracing::debug!(output = ?y.dims(), "forward done");
        Ok(y.to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?)
    }

    /// A non-empty batch of preprocessed images of one shape as the model's input tensor, on
    /// its device and in its dtype.
    pub(crate) fn input_tensor(&self, batch: &[ImageTensor]) -> Result<Tensor, RuntimeError> {
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
        let x = Tensor::from_vec(
            flat,
            (batch.len(), shape[0], shape[1], shape[2]),
            &Device::Cpu,
        )?
        .to_device(&self.device)?
        .to_dtype(self.dtype)?;
        Ok(x)
    }

    /// Softmax and top-k of one row of logits.
    pub fn decode_logits(&self, logits: &[f32], top_k: usize) -> Prediction {
        self.decode_probs(softmax(logits), top_k, None)
    }

    /// Top-k of a probability vector, with the uncertainty threshold applied.
    pub fn decode_probs(
        &self,
        probs: Vec<f32>,
        top_k: usize,
        threshold: Option<f32>,
    ) -> Prediction {
        let mut idx: Vec<usize> = (0..probs.len()).collect();
        // Ties keep the lower index first, so results are stable across runs and threads.
        idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let top: Vec<ClassScore> = idx
            .into_iter()
            .take(top_k.max(1))
            .map(|i| ClassScore {
                index: i,
                label: self.labels[i].clone(),
                prob: probs[i],
            })
            .collect();
        let uncertain = threshold.is_some_and(|t| top[0].prob < t);
        Prediction { top, uncertain }
    }

    /// Refuses an image whose resize for this model would exceed the decoder's pixel limit.
    pub(crate) fn check_size(&self, img: &RgbImage, source: &str) -> Result<(), RuntimeError> {
        let (w, h) = img.dimensions();
        kiln_preprocess::transform::check_resize_fits(
            w,
            h,
            &self.spec,
            self.decode.max_pixels,
            source,
        )?;
        Ok(())
    }

    /// The preprocessed views of one decoded image under `tta`.
    pub fn views(&self, img: &RgbImage, tta: Tta) -> Vec<ImageTensor> {
        tta_views(img, &self.spec, tta)
    }

    /// Averages the views of each image. Probabilities are averaged, not logits: each view's
    /// softmax is a calibrated distribution, and averaging them keeps one over-confident view
    /// (a crop that happens to look like something else) from dominating, as logit averaging
    /// lets it. With one view the two agree.
    fn predict_views(
        &self,
        views: &[ImageTensor],
        per_image: usize,
        opts: &RunOptions,
    ) -> Result<Vec<Prediction>, RuntimeError> {
        Ok(self.average_views(&self.logits(views)?, per_image, opts))
    }

    fn average_views(
        &self,
        logits: &[Vec<f32>],
        per_image: usize,
        opts: &RunOptions,
    ) -> Vec<Prediction> {
        logits
            .chunks(per_image)
            .map(|rows| {
                let mut mean = vec![0f32; rows[0].len()];
                for r in rows {
                    for (m, p) in mean.iter_mut().zip(softmax(r)) {
                        *m += p / rows.len() as f32;
                    }
                }
                self.decode_probs(mean, opts.top_k, opts.threshold)
            })
            .collect()
    }

    /// Classifies decoded images.
    pub fn classify_images(
        &self,
        images: &[RgbImage],
        top_k: usize,
    ) -> Result<Vec<Prediction>, RuntimeError> {
        let opts = RunOptions {
            top_k,
            ..Default::default()
        };
        self.classify_images_with(images, &opts)
    }

    /// Classifies decoded images with test-time augmentation and a threshold.
    pub fn classify_images_with(
        &self,
        images: &[RgbImage],
        opts: &RunOptions,
    ) -> Result<Vec<Prediction>, RuntimeError> {
        for (i, img) in images.iter().enumerate() {
            self.check_size(img, &format!("image {i}"))?;
        }
        let views: Vec<ImageTensor> = images
            .par_iter()
            .flat_map_iter(|i| self.views(i, opts.tta))
            .collect();
        self.predict_views(&views, opts.tta.views(), opts)
    }

    /// Classifies one in-memory image of any colour type.
    pub fn classify_image(
        &self,
        img: &DynamicImage,
        top_k: usize,
    ) -> Result<Prediction, RuntimeError> {
        let rgb = kiln_preprocess::to_rgb8(img.clone());
        Ok(self.classify_images(&[rgb], top_k)?.remove(0))
    }

    /// Decodes, validates and classifies one file.
    pub fn classify_path(&self, path: &Path, top_k: usize) -> Result<Prediction, RuntimeError> {
        let d = decode_file(path, &self.decode)?;
        self.check_size(&d.rgb, &path.display().to_string())?;
        Ok(self.classify_images(&[d.rgb], top_k)?.remove(0))
    }

    /// Classifies many files; one result per path, in input order. See [`Classifier::classify_stream`].
    pub fn classify_paths(
        &self,
        paths: &[PathBuf],
        top_k: usize,
        batch_size: usize,
    ) -> Vec<Result<Prediction, RuntimeError>> {
        let opts = RunOptions {
            top_k,
            batch_size,
            ..Default::default()
        };
        let mut out = Vec::with_capacity(paths.len());
        self.classify_stream(paths.iter().cloned(), &opts, |o| {
            out.push(o.result.map(|c| c.prediction))
        });
        out
    }

    fn prepare(&self, index: usize, path: PathBuf, tta: Tta) -> Prepared {
        let mut times = StageTimes::default();
        let t0 = Instant::now();
        let decoded = decode_file(&path, &self.decode);
        times.decode_ms = ms(t0);
        let views = decoded.map_err(RuntimeError::from).and_then(|d| {
            let t1 = Instant::now();
            let size = d.rgb.dimensions();
            self.check_size(&d.rgb, &path.display().to_string())?;
            let v = self.views(&d.rgb, tta);
            times.preprocess_ms = ms(t1);
            Ok((v, size))
        });
        Prepared {
            index,
            path,
            views,
            times,
        }
    }

    /// Classifies a stream of files, calling `on_result` once per input, in input order.
    ///
    /// Files are decoded and preprocessed in parallel (rayon) on a producer thread while the
    /// previous batch runs through the network; at most three batches of pixels are held at once,
    /// however long the stream. A file that fails (missing, corrupt, too large, …) yields an
    /// error outcome and the rest go on.
    pub fn classify_stream<I, F>(&self, paths: I, opts: &RunOptions, mut on_result: F)
    where
        I: IntoIterator<Item = PathBuf>,
        I::IntoIter: Send,
        F: FnMut(Outcome),
    {
        let batch = opts.batch_size.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Prepared>>(1);
        std::thread::scope(|s| {
            let mut it = paths.into_iter().enumerate();
            s.spawn(move || loop {
                let chunk: Vec<(usize, PathBuf)> = it.by_ref().take(batch).collect();
                if chunk.is_empty() {
                    break;
                }
                let prepared: Vec<Prepared> = chunk
                    .into_par_iter()
                    .map(|(i, p)| self.prepare(i, p, opts.tta))
                    .collect();
                if tx.send(prepared).is_err() {
                    break;
                }
            });
            for prepared in rx {
                self.finish_batch(prepared, opts, &mut on_result);
            }
        });
    }

    fn finish_batch(
        &self,
        prepared: Vec<Prepared>,
        opts: &RunOptions,
        on_result: &mut impl FnMut(Outcome),
    ) {
        let per_image = opts.tta.views();
        let views: Vec<ImageTensor> = prepared
            .iter()
            .filter_map(|p| p.views.as_ref().ok())
            .flat_map(|(v, _)| v.iter().cloned())
            .collect();
        let n_ok = views.len() / per_image;
        let share = |t: f64| if n_ok > 0 { t / n_ok as f64 } else { 0.0 };
        let t0 = Instant::now();
        let logits = self.logits(&views);
        let forward_ms = share(ms(t0));
        let t1 = Instant::now();
        let preds = logits.map(|l| self.average_views(&l, per_image, opts));
        let post_ms = share(ms(t1));
        let mut preds = match preds {
            Ok(p) => p.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => (0..n_ok)
                .map(|_| Err(RuntimeError::Forward(e.to_string())))
                .collect(),
        }
        .into_iter();
        for p in prepared {
            let result = match p.views {
                Ok((_, size)) => preds.next().expect("one prediction per decoded image").map(|prediction| {
                    let mut times = p.times;
                    times.forward_ms = forward_ms;
                    times.postprocess_ms = post_ms;
                    tracing::debug!(
                        path = %p.path.display(),
                        decoded = ?size,
                        input = ?[per_image, 3, self.spec.input_size[0] as usize, self.spec.input_size[1] as usize],
                        output = ?[per_image, self.spec.num_classes],
                        top1 = %prediction.top[0].label,
                        confidence = prediction.top[0].prob,
                        "classified"
                    );
                    tracing::trace!(
                        path = %p.path.display(),
                        decode_ms = times.decode_ms,
                        preprocess_ms = times.preprocess_ms,
                        forward_ms = times.forward_ms,
                        postprocess_ms = times.postprocess_ms,
                        "stage times"
                    );
                    Classified {
                        prediction,
                        decoded_size: size,
                        times,
                    }
                }),
                Err(e) => Err(e),
            };
            on_result(Outcome {
                index: p.index,
                path: p.path,
                result,
            });
        }
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Numerically stable softmax in f64, returned as f32.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}
