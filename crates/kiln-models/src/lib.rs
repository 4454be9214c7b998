//! Image-classification architectures for kiln, in candle, with torchvision's key names.
//!
//! One file per family; each exposes a builder over a [`VarBuilder`] scoped to the checkpoint's
//! key names. [`registry`] maps names such as `mobilenet_v2` or `resnet50` to builders, so a new
//! architecture is one file plus one registry entry.

#![warn(missing_docs)]

pub mod efficientnet_lite;
pub mod layers;
pub mod mobilenet_v2;
pub mod registry;
pub mod resnet;

pub use candle_nn::VarBuilder;
pub use registry::{build, find, ArchEntry, ArchParams, ARCHITECTURES};

use candle_core::{Result, Tensor};

/// A loaded classifier network: images in, logits out. Inference only.
pub trait ImageModel: Send + Sync {
    /// Maps a batch `[n, 3, h, w]` (NCHW, already normalised) to logits `[n, num_classes]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// Number of classifier outputs.
    fn num_classes(&self) -> usize;
    /// [`ImageModel::forward`] for a whole batch with the threads of the current rayon pool
    /// spread well over it; the same result. By default [`layers::forward_spread`]: on the CPU,
    /// one image per thread (one image: the threads split each layer).
    fn forward_batch(&self, x: &Tensor) -> Result<Tensor> {
        layers::forward_spread(self, x)
    }
}

/// Errors from building a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No architecture of that name is registered.
    #[error("unknown architecture `{name}`; known: {known}")]
    UnknownArchitecture {
        /// The name asked for.
        name: String,
        /// The registered names, comma separated.
        known: String,
    },
    /// An architecture parameter is missing or out of range.
    #[error("architecture `{arch}`: parameter `{param}` is {value}; expected {expected}")]
    BadParam {
        /// The architecture.
        arch: String,
        /// The parameter.
        param: String,
        /// The value given.
        value: String,
        /// What would be valid.
        expected: String,
    },
    /// The weights do not fit the architecture (missing key, wrong shape, ...).
    #[error("weights do not fit `{arch}`: {error}")]
    Weights {
        /// The architecture.
        arch: String,
        /// candle's description.
        error: candle_core::Error,
    },
}
