//! Image-classification architectures for kiln, in candle, with torchvision's key names.
//!
//! One file per family; each exposes a builder over a [`VarBuilder`] scoped to the checkpoint's
//! key names, and declares everything about its family in one [`Family`] (`FAMILY`): variants,
//! parameters, checkpoint keys, classifier, default spec, hub names. [`registry`] only collects
//! them, so a new architecture is one file plus one registry line.

#![warn(missing_docs)]

pub mod efficientnet_lite;
pub mod gpu_ops;
pub mod keymap;
pub mod layers;
pub mod mobilenet_v2;
pub mod mobilenet_v3;
pub mod registry;
pub mod resnet;

pub use candle_nn::VarBuilder;
pub use registry::{architectures, build, find, key_map, ArchEntry, ArchParams, Family, FAMILIES};

use candle_core::{Result, Tensor};

/// What [`ImageModel::forward_features`] returns for a batch: the logits and the feature maps
/// they were computed from, by the same forward pass.
#[derive(Debug, Clone)]
pub struct Features {
    /// `[n, num_classes]`, identical to what [`ImageModel::forward`] gives.
    pub logits: Tensor,
    /// The last convolutional feature maps after their activation, `[n, c, h, w]`: their global
    /// average, through [`ImageModel::classifier`], is `logits`.
    pub maps: Tensor,
}

/// A loaded classifier network: images in, logits out. Inference only.
///
/// Every architecture ends in global average pooling and one linear layer; the two methods that
/// expose that ([`ImageModel::forward_features`], [`ImageModel::classifier`]) are what class
/// activation maps are made of.
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
    /// The logits and the pre-pooling feature maps of a batch `[n, 3, h, w]`, from one pass.
    /// [`ImageModel::forward`] stays the fast path: there, on the CPU, the pooling is fused
    /// into the last convolution and the maps never exist as a whole.
    fn forward_features(&self, x: &Tensor) -> Result<Features>;
    /// The final linear layer, applied to the pooled [`Features::maps`]; `None` where the head
    /// is not one linear layer (MobileNetV3: two, with a hard-swish between), so the logits are
    /// not linear in the pooled maps and class activation maps do not exist.
    fn classifier(&self) -> Option<&layers::Linear>;
    /// [`ImageModel::forward_features`] with the threads of the current rayon pool spread over
    /// the batch, as [`ImageModel::forward_batch`]; the same result.
    fn forward_features_batch(&self, x: &Tensor) -> Result<Features> {
        layers::features_spread(self, x)
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
    /// Class activation maps were asked of a model whose head is not one linear layer.
    #[error("`{arch}` has no single linear classifier after its pooling: class activation maps need one")]
    NoLinearHead {
        /// The architecture.
        arch: String,
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
