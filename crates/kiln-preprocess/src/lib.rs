//! kiln's input side: decode and validate images, and turn them into exactly the tensor a
//! network was trained on, as its [`TrainingSpec`] says. No tensor framework is needed here.
//!
//! ```
//! use kiln_preprocess::{Preset, preprocess};
//! let spec = Preset::TorchvisionImagenet.spec("mobilenet_v2", 1000);
//! let img = image::RgbImage::from_pixel(640, 480, image::Rgb([128, 64, 32]));
//! let t = preprocess(&img, &spec);
//! assert_eq!(t.shape, [3, 224, 224]);
//! ```

#![warn(missing_docs)]

pub mod decode;
pub mod hubspec;
pub mod jpeg;
pub mod pil;
pub mod spec;
pub mod tensor_resize;
pub mod transform;

pub use decode::{decode_bytes, decode_file, to_rgb8, DecodeOptions, Decoded, DEFAULT_MAX_PIXELS};
pub use spec::{
    ChannelOrder, Interpolation, Layout, Pipeline, PixelScale, Preset, Resize, TrainingSpec,
    SPEC_METADATA_KEY,
};
pub use transform::{preprocess, tta_views, ImageTensor, Tta};

use std::path::Path;

/// Why one input could not be turned into a tensor. Each variant names its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The path does not exist.
    #[error("{path}: file not found")]
    NotFound {
        /// The file or stream name.
        path: String,
    },
    /// The file exists but cannot be read.
    #[error("{path}: cannot read: {reason}")]
    Unreadable {
        /// The file or stream name.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// Zero bytes.
    #[error("{path}: empty file (0 bytes)")]
    Empty {
        /// The file or stream name.
        path: String,
    },
    /// The bytes are not in any image format we recognise.
    #[error("{path}: not an image (no known image signature)")]
    NotAnImage {
        /// The file or stream name.
        path: String,
    },
    /// A recognised format, or a feature of it, that kiln cannot decode.
    #[error("{path}: unsupported image: {reason}")]
    Unsupported {
        /// The file or stream name.
        path: String,
        /// What is unsupported.
        reason: String,
    },
    /// Truncated or corrupt image data.
    #[error("{path}: corrupt or truncated image: {reason}")]
    Corrupt {
        /// The file or stream name.
        path: String,
        /// What the decoder found.
        reason: String,
    },
    /// Smaller than the configured minimum side.
    #[error(
        "{path}: image is {width}x{height}, smaller than the minimum side of {min_side} pixels"
    )]
    TooSmall {
        /// The file or stream name.
        path: String,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The configured minimum.
        min_side: u32,
    },
    /// The header claims more pixels than the limit (decompression-bomb guard).
    #[error("{path}: image header claims {width}x{height} pixels, over the limit of {max_pixels} (possible decompression bomb); refused before decoding")]
    TooLarge {
        /// The file or stream name.
        path: String,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The configured limit.
        max_pixels: u64,
    },
}

/// A training spec that is malformed or disagrees with something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The JSON does not parse into a spec.
    #[error("training spec does not parse: {0}")]
    Parse(String),
    /// The spec file could not be read.
    #[error("cannot read training spec {path}: {reason}")]
    Io {
        /// The spec path.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// A field holds an impossible value.
    #[error("training spec field `{field}` is {value}; expected {expected}")]
    Invalid {
        /// The field's name.
        field: String,
        /// The value found in the spec.
        value: String,
        /// What would be valid.
        expected: String,
    },
    /// Two sources of the spec for the same weights disagree.
    #[error("training spec field `{field}` is {ours} in one source but {theirs} in {other_name}")]
    Disagree {
        /// The field's name.
        field: String,
        /// Our value.
        ours: String,
        /// Where the other value came from.
        other_name: String,
        /// The other value.
        theirs: String,
    },
    /// Wraps another error with the file it came from.
    #[error("{path}: {inner}")]
    InFile {
        /// The spec file.
        path: String,
        /// The error.
        inner: Box<SpecError>,
    },
}

impl SpecError {
    /// Attaches the file that produced this error.
    pub fn in_file(self, path: &Path) -> Self {
        SpecError::InFile {
            path: path.display().to_string(),
            inner: Box::new(self),
        }
    }
}
