//! Weight files: reading safetensors with their embedded spec, finding sidecar specs, and
//! converting PyTorch checkpoints.

use kiln_preprocess::{SpecError, TrainingSpec, SPEC_METADATA_KEY};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::pth::{read_pth, PthFormat, RawTensor};
use crate::RuntimeError;

/// A safetensors file read into memory, with what its header says.
pub struct WeightFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The whole file.
    pub bytes: Vec<u8>,
    /// The header's `__metadata__`.
    pub metadata: HashMap<String, String>,
    /// Tensor names with shapes and dtypes.
    pub tensors: Vec<(String, Vec<usize>, safetensors::Dtype)>,
}

/// Index of the first NaN or infinite element of a float tensor's little-endian bytes (an
/// all-ones exponent field), `None` for integer dtypes or when all are finite.
fn first_non_finite(dtype: safetensors::Dtype, data: &[u8]) -> Option<usize> {
    use safetensors::Dtype;
    match dtype {
        Dtype::F32 => data.chunks_exact(4).position(|b| {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000
        }),
        Dtype::F64 => data.chunks_exact(8).position(|b| {
            let v = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            v & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000
        }),
        Dtype::F16 => data
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        Dtype::BF16 => data
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
        _ => None,
    }
}

impl WeightFile {
    /// Reads and indexes a safetensors file.
    pub fn read(path: &Path) -> Result<Self, RuntimeError> {
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::Weights {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_bytes(path, bytes)
    }

    /// Indexes safetensors bytes already in memory; `path` names them in errors and is where
    /// sidecar specs are looked for.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, RuntimeError> {
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| RuntimeError::Weights {
                path: path.display().to_string(),
                reason: format!("not a safetensors file: {e}"),
            })?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| RuntimeError::Weights {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        // Non-finite weights are refused here, naming the tensor: a NaN or Inf in a trained
        // network turns every logit into NaN, and a confident-looking wrong class (NaN sorts
        // anywhere) is worse than an error. One pass over the file, a few ms.
        for (name, view) in st.tensors() {
            if let Some(i) = first_non_finite(view.dtype(), view.data()) {
                return Err(RuntimeError::Weights {
                    path: path.display().to_string(),
                    reason: format!("tensor `{name}`: element {i} is NaN or infinite"),
                });
            }
        }
        let mut tensors: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().to_vec(), v.dtype()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            metadata,
            tensors,
        })
    }

    /// The spec embedded under `kiln.spec`, if any, validated.
    pub fn embedded_spec(&self) -> Result<Option<TrainingSpec>, RuntimeError> {
        match self.metadata.get(SPEC_METADATA_KEY) {
            None => Ok(None),
            Some(text) => TrainingSpec::from_json(text)
                .map(Some)
                .map_err(|e| RuntimeError::Spec(e.in_file(&self.path))),
        }
    }

    /// Shape of a tensor by name.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors
            .iter()
            .find(|t| t.0 == name)
            .map(|t| t.1.as_slice())
    }

    /// Total number of elements over all tensors.
    pub fn parameter_count(&self) -> usize {
        self.tensors
            .iter()
            .map(|t| t.1.iter().product::<usize>())
            .sum()
    }
}

/// `weights/foo.safetensors` → `weights/foo.spec.json`.
pub fn sidecar_spec_path(weights: &Path) -> PathBuf {
    let stem = weights
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    weights.with_file_name(format!("{stem}.spec.json"))
}

/// Where a resolved spec came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecOrigin {
    /// The safetensors header.
    Embedded(PathBuf),
    /// `NAME.spec.json` beside the weights.
    Sidecar(PathBuf),
    /// A file given explicitly.
    Explicit(PathBuf),
    /// Built by the caller (a preset or a hub config).
    Given(String),
}

impl std::fmt::Display for SpecOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecOrigin::Embedded(p) => write!(f, "embedded in {}", p.display()),
            SpecOrigin::Sidecar(p) => write!(f, "{}", p.display()),
            SpecOrigin::Explicit(p) => write!(f, "{} (given)", p.display()),
            SpecOrigin::Given(s) => write!(f, "{s}"),
        }
    }
}

/// Gathers every spec that applies to `weights` — embedded, sidecar, and an explicit file — and
/// requires them to agree. Returns the spec and where it came from (the first found, in that
/// order, is named), or `None` if there is none.
pub fn resolve_spec(
    weights: &WeightFile,
    explicit: Option<&Path>,
) -> Result<Option<(TrainingSpec, SpecOrigin, PathBuf)>, RuntimeError> {
    let mut found: Vec<(TrainingSpec, SpecOrigin, PathBuf)> = vec![];
    let dir = weights
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if let Some(s) = weights.embedded_spec()? {
        found.push((s, SpecOrigin::Embedded(weights.path.clone()), dir.clone()));
    }
    let side = sidecar_spec_path(&weights.path);
    if side.exists() {
        let s = TrainingSpec::from_file(&side)?;
        found.push((s, SpecOrigin::Sidecar(side.clone()), dir.clone()));
    }
    if let Some(p) = explicit {
        let s = TrainingSpec::from_file(p)?;
        let d = p.parent().map(Path::to_path_buf).unwrap_or_default();
        found.push((s, SpecOrigin::Explicit(p.to_path_buf()), d));
    }
    let mut it = found.into_iter();
    let Some(first) = it.next() else {
        return Ok(None);
    };
    for other in it {
        first
            .0
            .check_agrees(&other.0, &other.1.to_string())
            .map_err(|e| match e {
                SpecError::Disagree {
                    field,
                    ours,
                    other_name,
                    theirs,
                } => RuntimeError::Spec(SpecError::Disagree {
                    field,
                    ours: format!("{ours} ({})", first.1),
                    other_name,
                    theirs,
                }),
                e => RuntimeError::Spec(e),
            })?;
    }
    Ok(Some(first))
}

/// What [`convert_pth`] did.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// Container format of the input.
    pub format: PthFormat,
    /// Tensors written.
    pub tensors: usize,
    /// Keys dropped (`num_batches_tracked`).
    pub dropped: Vec<String>,
    /// Total parameters written.
    pub parameters: usize,
    /// The checkpoint dict the weights came from (`model_state_dict`, ...), if any.
    pub dict_key: Option<String>,
    /// Other weight dicts in the checkpoint, not used (e.g. `model_ema` beside `model`).
    pub other_dict_keys: Vec<String>,
    /// The wrapper prefix removed from every key (`backbone.`, `module.model.`, ...), if any.
    pub stripped_prefix: Option<String>,
}

/// The keys a state dict of `entry`'s architecture must contain whatever its size: the first
/// convolution's weight and the classifier's (declared by its family).
fn signature(entry: &kiln_models::ArchEntry) -> [String; 2] {
    [
        entry.stem_key().to_string(),
        format!("{}.weight", entry.classifier),
    ]
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Finds the wrapper prefix to strip so that the keys fit the architecture: the shortest run of
/// leading key components shared by every key (`backbone.`, `module.model.`, ...) after which
/// the architecture's stem and classifier weights are present. `Ok(None)`: the keys fit as they
/// are. Without a spec any registered architecture may fit; when none does, the keys are kept
/// as they are (kiln cannot know what they should be). With a spec, nothing fitting is an error
/// naming the first unmatched keys and the nearest expected ones.
fn find_prefix(
    names: &[&str],
    spec: Option<&TrainingSpec>,
    forced: Option<&str>,
) -> Result<Option<String>, String> {
    let archs: Vec<&kiln_models::ArchEntry> = match spec {
        Some(s) => vec![kiln_models::find(&s.architecture).map_err(|e| e.to_string())?],
        None => kiln_models::architectures().collect(),
    };
    let set: std::collections::HashSet<&str> = names.iter().copied().collect();
    let fits = |prefix: &str| {
        archs.iter().any(|a| {
            signature(a)
                .iter()
                .all(|k| set.contains(format!("{prefix}{k}").as_str()))
        })
    };
    let mut candidates = vec![];
    if let Some(p) = forced {
        if !names.iter().any(|n| n.starts_with(p)) {
            return Err(format!(
                "no key starts with the prefix `{p}` given by --strip-prefix (first keys: {})",
                names.iter().take(5).copied().collect::<Vec<_>>().join(", ")
            ));
        }
        candidates.push(p.to_string());
    } else {
        candidates.push(String::new());
        let first: Vec<&str> = names
            .first()
            .map(|n| n.split('.').collect())
            .unwrap_or_default();
        for k in 1..first.len() {
            let p = format!("{}.", first[..k].join("."));
            if !names.iter().all(|n| n.starts_with(&p)) {
                break;
            }
            candidates.push(p);
        }
    }
    for p in &candidates {
        if fits(p) {
            return Ok((!p.is_empty()).then(|| p.clone()));
        }
    }
    if spec.is_none() {
        return Ok(forced.map(str::to_string));
    }
    let arch = archs[0];
    let strip = candidates.last().cloned().unwrap_or_default();
    let nearest: Vec<String> = signature(arch)
        .iter()
        .filter(|k| !set.contains(format!("{strip}{k}").as_str()))
        .map(|k| {
            let near = names
                .iter()
                .min_by_key(|n| levenshtein(n.strip_prefix(strip.as_str()).unwrap_or(n), k))
                .copied()
                .unwrap_or("");
            format!("`{k}` (nearest key in the checkpoint: `{near}`)")
        })
        .collect();
    let unmatched: Vec<&str> = names.iter().take(5).copied().collect();
    Err(format!(
        "the keys do not fit `{}`{}: expected {}; the checkpoint's first keys are {} \
         (a wrapper prefix can be removed with --strip-prefix PREFIX)",
        arch.name,
        if strip.is_empty() {
            String::new()
        } else {
            format!(" even without the prefix `{strip}`")
        },
        nearest.join(", "),
        unmatched
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Converts a PyTorch checkpoint (zip or legacy) to safetensors, dropping `num_batches_tracked`
/// and embedding `spec` (validated) under `kiln.spec`. A wrapper prefix that keeps the keys from
/// fitting the architecture is detected and removed (see [`convert_pth_with`]).
pub fn convert_pth(
    input: &Path,
    output: &Path,
    spec: Option<&TrainingSpec>,
) -> Result<ConvertReport, RuntimeError> {
    convert_pth_with(input, output, spec, None)
}

/// [`convert_pth`] with an explicit wrapper prefix to strip (`--strip-prefix`) instead of the
/// detected one. The weights are taken from the checkpoint dict under `state_dict`,
/// `model_state_dict`, `model`, `ema`, `model_ema` or `state_dict_ema` (the first present, in
/// that order) when the top level holds no tensors.
pub fn convert_pth_with(
    input: &Path,
    output: &Path,
    spec: Option<&TrainingSpec>,
    strip_prefix: Option<&str>,
) -> Result<ConvertReport, RuntimeError> {
    let ckpt = read_pth(input)?;
    let names: Vec<&str> = ckpt
        .tensors
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !n.ends_with("num_batches_tracked"))
        .collect();
    let prefix =
        find_prefix(&names, spec, strip_prefix).map_err(|reason| RuntimeError::Weights {
            path: input.display().to_string(),
            reason,
        })?;
    let mut dropped = vec![];
    let mut kept = vec![];
    for (name, t) in ckpt.tensors {
        let name = match &prefix {
            Some(p) => name
                .strip_prefix(p.as_str())
                .map(str::to_string)
                .unwrap_or(name),
            None => name,
        };
        if name.ends_with("num_batches_tracked") {
            dropped.push(name);
        } else {
            kept.push((name, t));
        }
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        "kiln.converted_from".to_string(),
        input
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default(),
    );
    if let Some(spec) = spec {
        spec.validate()?;
        meta.insert(SPEC_METADATA_KEY.to_string(), spec.to_json());
    }
    write_safetensors(output, &kept, &meta)?;
    Ok(ConvertReport {
        format: ckpt.format,
        tensors: kept.len(),
        dropped,
        parameters: kept
            .iter()
            .map(|(_, t)| t.shape.iter().product::<usize>())
            .sum(),
        dict_key: ckpt.dict_key,
        other_dict_keys: ckpt.other_dict_keys,
        stripped_prefix: prefix,
    })
}

/// Writes a safetensors file with the header's keys in sorted order, so that converting the same
/// checkpoint twice gives byte-identical files (and a stable sha256 for provenance).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, RawTensor)],
    metadata: &HashMap<String, String>,
) -> Result<(), RuntimeError> {
    let fail = |reason: String| RuntimeError::Weights {
        path: path.display().to_string(),
        reason,
    };
    let mut sorted: Vec<&(String, RawTensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: BTreeMap<_, _> = metadata.iter().collect();
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(m).expect("strings serialise"),
        );
    }
    let mut offset = 0usize;
    for (name, t) in &sorted {
        let expected = t.shape.iter().product::<usize>() * t.dtype.bitsize() / 8;
        if expected != t.data.len() {
            return Err(fail(format!(
                "{name}: {} bytes for shape {:?}",
                t.data.len(),
                t.shape
            )));
        }
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": t.dtype.to_string(),
                "shape": t.shape,
                "data_offsets": [offset, offset + t.data.len()],
            }),
        );
        offset += t.data.len();
    }
    // serde_json's map keeps keys sorted (no preserve_order feature), so the text is canonical.
    let mut text = serde_json::to_string(&header)
        .expect("header serialises")
        .into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    for (_, t) in &sorted {
        out.extend_from_slice(&t.data);
    }
    std::fs::write(path, out).map_err(|e| fail(e.to_string()))
}

/// Writes one f32 tensor `name` of `shape` with `metadata`: what `kiln preprocess` saves.
pub fn write_f32_tensor(
    path: &Path,
    name: &str,
    shape: Vec<usize>,
    values: &[f32],
    metadata: &HashMap<String, String>,
) -> Result<(), RuntimeError> {
    let t = RawTensor {
        dtype: safetensors::Dtype::F32,
        shape,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    write_safetensors(path, &[(name.to_string(), t)], metadata)
}
