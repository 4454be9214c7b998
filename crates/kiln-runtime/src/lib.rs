//! kiln's runtime: devices, weight loading and conversion, and the classification pipeline.
//!
//! ```no_run
//! use kiln_runtime::Classifier;
//! # fn main() -> Result<(), kiln_runtime::RuntimeError> {
//! let classifier = Classifier::builder().model("mobilenet_v2").build()?;
//! let pred = classifier.classify_path("photo.jpg".as_ref(), 5)?;
//! println!("{} ({:.1}%)", pred.top[0].label, pred.top[0].prob * 100.0);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod bench;
pub mod cam;
pub mod classifier;
pub mod device;
pub mod hub;
mod hub_http;
pub mod labels;
pub mod pth;
pub mod render;
pub mod weights;

pub use cam::{Cam, ClassSelect, CropGeometry, Explanation, Map};
pub use classifier::{
    shipped_weights_dir, softmax, ClassScore, Classified, Classifier, ClassifierBuilder, Outcome,
    Prediction, RunOptions, SpecOverrides, StageTimes, DEFAULT_BATCH_SIZE, DEFAULT_MODEL,
};
pub use device::{device_name, parse_device};
pub use hub::{HubError, HubModel, HubOptions, HubRef};
pub use kiln_preprocess::{DecodeOptions, InputError, SpecError, TrainingSpec, Tta};
pub use weights::{
    convert_pth, convert_pth_with, resolve_spec, write_f32_tensor, ConvertReport, SpecOrigin,
    WeightFile,
};

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// One input image could not be used.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A training spec is malformed or disagrees with another source.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A command-line override contradicts the spec.
    #[error("--{field} {given} contradicts the training spec's {field} = {spec_value}; the weights were trained with the spec's value (pass --allow-spec-override to force it)")]
    SpecOverride {
        /// The field.
        field: String,
        /// The spec's value.
        spec_value: String,
        /// The value given.
        given: String,
    },
    /// Weights and spec (or labels) disagree.
    #[error("{0}")]
    Mismatch(String),
    /// No spec was found for the weights.
    #[error("no training spec for {weights}: embed one (`kiln convert --spec`), put NAME.spec.json beside the weights, or pass --spec FILE")]
    NoSpec {
        /// The weights file.
        weights: String,
    },
    /// No weights for the named model.
    #[error("no shipped weights for `{model}` (looked for {looked}); pass --weights FILE")]
    NoWeights {
        /// The model.
        model: String,
        /// Where we looked.
        looked: String,
    },
    /// A weights file could not be read or written.
    #[error("{path}: {reason}")]
    Weights {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A label file could not be used.
    #[error("label file {path}: {reason}")]
    Labels {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A checkpoint could not be read.
    #[error(transparent)]
    Pth(#[from] pth::PthError),
    /// The model could not be built.
    #[error(transparent)]
    Model(#[from] kiln_models::ModelError),
    /// The device could not be opened.
    #[error("device: {0}")]
    Device(String),
    /// The forward pass failed for a batch.
    #[error("inference failed: {0}")]
    Forward(String),
    /// A class asked for by name or index that the model does not have.
    #[error("{0}")]
    UnknownClass(String),
    /// An error inside candle.
    #[error(transparent)]
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for RuntimeError {
    /// candle attaches a backtrace when `RUST_BACKTRACE` is set; an unsupported dtype or a bad
    /// shape is worth one line to a user, so only the message is kept.
    fn from(e: candle_core::Error) -> Self {
        let mut e = e;
        while let candle_core::Error::WithBacktrace { inner, .. } = e {
            e = *inner;
        }
        RuntimeError::Candle(e)
    }
}

impl RuntimeError {
    /// Whether this error concerns one input only (the rest of a batch can go on).
    pub fn is_input_error(&self) -> bool {
        matches!(self, RuntimeError::Input(_))
    }
}

/// The README's Rust examples, compiled as doctests so that they stay true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
