//! Protocol tensors (shared by REST and gRPC): the model's inputs and outputs, and one
//! inference from decoded input tensors to the requested output tensors.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::batch::{InferParams, Model};
use crate::metrics::{Metrics, ModelLabels};
use crate::ServeError;

/// Name of the BYTES input of encoded images.
pub const IMAGE_INPUT: &str = "image";
/// Name of the FP32 input of preprocessed tensors.
pub const PIXELS_INPUT: &str = "input";
/// The outputs every model offers, in the order they are sent.
pub const OUTPUTS: [&str; 4] = [
    "probabilities",
    "top_k_indices",
    "top_k_probabilities",
    "top_k_labels",
];

/// An input tensor's values.
pub enum TensorData {
    /// BYTES elements.
    Bytes(Vec<Bytes>),
    /// FP32 values, row-major.
    F32(Vec<f32>),
}

/// One decoded input tensor.
pub struct InputTensor {
    /// Tensor name.
    pub name: String,
    /// Protocol datatype (`BYTES`, `FP32`, …).
    pub datatype: String,
    /// Shape.
    pub shape: Vec<i64>,
    /// Values.
    pub data: TensorData,
}

/// An output tensor's values.
pub enum OutputData {
    /// FP32 values.
    F32(Vec<f32>),
    /// INT64 values.
    I64(Vec<i64>),
    /// BYTES values (UTF-8 labels).
    Bytes(Vec<String>),
}

impl OutputData {
    /// The protocol datatype.
    pub fn datatype(&self) -> &'static str {
        match self {
            OutputData::F32(_) => "FP32",
            OutputData::I64(_) => "INT64",
            OutputData::Bytes(_) => "BYTES",
        }
    }
    /// Raw little-endian bytes (BYTES: each element prefixed by its u32 length), as Triton's
    /// binary extension and gRPC `raw_output_contents` carry them.
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            OutputData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutputData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutputData::Bytes(v) => {
                let mut out = vec![];
                for s in v {
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                out
            }
        }
    }
}

/// One output tensor.
pub struct OutputTensor {
    /// Tensor name.
    pub name: &'static str,
    /// Shape.
    pub shape: Vec<i64>,
    /// Values.
    pub data: OutputData,
}

/// Splits raw little-endian bytes of a tensor into its elements.
pub fn raw_to_data(datatype: &str, raw: Bytes, what: &str) -> Result<TensorData, ServeError> {
    match datatype {
        "BYTES" => {
            let mut out = vec![];
            let mut pos = 0usize;
            while pos < raw.len() {
                if raw.len() - pos < 4 {
                    return Err(ServeError::BadRequest(format!(
                        "{what}: BYTES element {} has a truncated length prefix",
                        out.len()
                    )));
                }
                let n = u32::from_le_bytes(raw[pos..pos + 4].try_into().expect("4 bytes")) as usize;
                pos += 4;
                if raw.len() - pos < n {
                    return Err(ServeError::BadRequest(format!(
                        "{what}: BYTES element {} claims {n} bytes, only {} remain",
                        out.len(),
                        raw.len() - pos
                    )));
                }
                out.push(raw.slice(pos..pos + n));
                pos += n;
            }
            Ok(TensorData::Bytes(out))
        }
        "FP32" => {
            if !raw.chunks_exact(4).remainder().is_empty() {
                return Err(ServeError::BadRequest(format!(
                    "{what}: {} bytes is not a whole number of FP32 values",
                    raw.len()
                )));
            }
            Ok(TensorData::F32(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            ))
        }
        other => Err(ServeError::BadRequest(format!(
            "{what}: datatype {other} is not accepted (BYTES images or FP32 tensors)"
        ))),
    }
}

/// Checks which outputs were asked for; none named means all.
pub fn requested_outputs(names: &[String]) -> Result<Vec<&'static str>, ServeError> {
    if names.is_empty() {
        return Ok(OUTPUTS.to_vec());
    }
    names
        .iter()
        .map(|n| {
            OUTPUTS.iter().copied().find(|o| o == n).ok_or_else(|| {
                ServeError::BadRequest(format!(
                    "unknown output `{n}`; the outputs are {}",
                    OUTPUTS.join(", ")
                ))
            })
        })
        .collect()
}

/// Checks a request's inputs before anything is decoded: exactly one, `image` as BYTES `[N]`
/// with N elements or `pixels` as FP32. Returns that input.
pub fn check_input(inputs: Vec<InputTensor>, model_name: &str) -> Result<InputTensor, ServeError> {
    let mut inputs = inputs;
    if inputs.len() != 1 {
        return Err(ServeError::BadRequest(format!(
            "expected exactly one input (`{IMAGE_INPUT}` BYTES [N] or `{PIXELS_INPUT}` FP32 [N,…]), got {}",
            inputs.len()
        )));
    }
    let input = inputs.remove(0);
    let want = match input.name.as_str() {
        IMAGE_INPUT => "BYTES",
        PIXELS_INPUT => "FP32",
        other => {
            return Err(ServeError::BadRequest(format!(
                "unknown input `{other}`; model {} takes `{IMAGE_INPUT}` (BYTES) or `{PIXELS_INPUT}` (FP32)",
                model_name
            )))
        }
    };
    if input.datatype != want {
        return Err(ServeError::BadRequest(format!(
            "input `{}` must be {want}, got {}",
            input.name, input.datatype
        )));
    }
    if let TensorData::Bytes(items) = &input.data {
        if input.shape.len() != 1 || input.shape[0] != items.len() as i64 {
            return Err(ServeError::BadRequest(format!(
                "input `{IMAGE_INPUT}` has shape {:?} but {} elements; it must be [N] with N encoded images",
                input.shape,
                items.len()
            )));
        }
    }
    Ok(input)
}

/// Runs one inference: validates the single input, decodes/preprocesses, batches, and builds
/// the requested outputs.
pub async fn infer(
    model: &Arc<Model>,
    inputs: Vec<InputTensor>,
    params: &InferParams,
    outputs: &[&'static str],
    started: Instant,
    metrics: &Metrics,
) -> Result<Vec<OutputTensor>, ServeError> {
    let input = check_input(inputs, &model.name)?;
    let prepared = match input.data {
        TensorData::Bytes(items) => {
            let named = items
                .into_iter()
                .enumerate()
                .map(|(i, b)| (format!("{IMAGE_INPUT}[{i}]"), b))
                .collect();
            let prepared = model.prepare_images(named, params.tta, metrics).await?;
            prepared
                .into_iter()
                .collect::<Result<Vec<_>, String>>()
                .map_err(ServeError::BadRequest)?
        }
        TensorData::F32(v) => model.prepare_pixels(&input.shape, v)?,
    };
    let n = prepared.len();
    let results = model.infer(prepared, params, started, metrics).await?;
    metrics
        .images
        .get_or_create(&ModelLabels {
            model: model.name.clone(),
        })
        .inc_by(n as u64);
    let classes = model.classes();
    let k = params.top_k.min(classes);
    let n64 = n as i64;
    Ok(outputs
        .iter()
        .map(|&name| {
            let (shape, data) = match name {
                "probabilities" => (
                    vec![n64, classes as i64],
                    OutputData::F32(results.iter().flat_map(|r| r.probs.clone()).collect()),
                ),
                "top_k_indices" => (
                    vec![n64, k as i64],
                    OutputData::I64(
                        results
                            .iter()
                            .flat_map(|r| r.prediction.top.iter().map(|c| c.index as i64))
                            .collect(),
                    ),
                ),
                "top_k_probabilities" => (
                    vec![n64, k as i64],
                    OutputData::F32(
                        results
                            .iter()
                            .flat_map(|r| r.prediction.top.iter().map(|c| c.prob))
                            .collect(),
                    ),
                ),
                _ => (
                    vec![n64, k as i64],
                    OutputData::Bytes(
                        results
                            .iter()
                            .flat_map(|r| r.prediction.top.iter().map(|c| c.label.clone()))
                            .collect(),
                    ),
                ),
            };
            OutputTensor { name, shape, data }
        })
        .collect())
}
