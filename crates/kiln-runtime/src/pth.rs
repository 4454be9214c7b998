//! Reading PyTorch checkpoints (`torch.save` of a state dict) without Python.
//!
//! Two container formats exist:
//! - **zip** (torch ≥ 1.6): `ARCHIVE/data.pkl` holds the pickled state dict, each storage is the
//!   entry `ARCHIVE/data/KEY`.
//! - **legacy** (before 1.6, or `_use_new_zipfile_serialization=False`): one stream of five parts:
//!   a pickled magic number, a pickled protocol version (1001), a pickled sys-info dict, the pickled
//!   state dict, a pickled list of storage keys, then for each key in that order a little-endian
//!   `i64` element count followed by the storage's raw bytes.
//!
//! In both, a tensor is pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
//! …)` with the storage as a persistent id `('storage', torch.XStorage, key, location, numel[,
//! view])`. The pickle opcodes themselves are decoded by `candle_core::pickle`.

use candle_core::pickle::{Object, Stack};
use safetensors::Dtype;
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

/// Errors reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    /// The file could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The checkpoint.
        path: String,
        /// The cause.
        error: std::io::Error,
    },
    /// The file is not a checkpoint this reader understands.
    #[error("{path}: not a PyTorch checkpoint this reader understands: {reason}")]
    Format {
        /// The checkpoint.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// A dense tensor read from a checkpoint: contiguous, little-endian.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// `shape.product() * dtype.size()` bytes in row-major order.
    pub data: Vec<u8>,
}

impl RawTensor {
    /// The values as f32 where the dtype is a float type.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let d = &self.data;
        Some(match self.dtype {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            _ => return None,
        })
    }
}

/// Which container a checkpoint used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PthFormat {
    /// `torch.save` default since 1.6.
    Zip,
    /// The pre-1.6 stream format.
    Legacy,
}

/// A parsed checkpoint: tensors in the order of the state dict.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The container format.
    pub format: PthFormat,
    /// `(key, tensor)` pairs.
    pub tensors: Vec<(String, RawTensor)>,
    /// The key of the training checkpoint's dict the weights were taken from (`state_dict`,
    /// `model_state_dict`, `model`, `ema`, `model_ema`), or `None` for a bare state dict.
    pub dict_key: Option<String>,
    /// Other weight dicts the checkpoint also held (e.g. `model_ema` beside `model`), not used.
    pub other_dict_keys: Vec<String>,
}

/// Where training code puts the weights, in the order they are preferred: the model's own
/// weights first (what `model.state_dict()` gives and what was evaluated), EMA weights only when
/// the checkpoint holds nothing else.
pub const STATE_DICT_KEYS: [&str; 6] = [
    "state_dict",
    "model_state_dict",
    "model",
    "ema",
    "model_ema",
    "state_dict_ema",
];

/// A tensor's reference into a storage, before the storage bytes are known.
struct TensorRef {
    name: String,
    storage_key: String,
    dtype: Dtype,
    /// Offset of a legacy view into its root storage, in elements.
    view_offset: usize,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// The legacy format's magic number, 0x1950a86a20f9469cfc6c, as pickle `LONG1` bytes.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Reads a checkpoint in either format. A state dict nested under `state_dict` or `model` is found.
pub fn read_pth(path: &Path) -> Result<Checkpoint, PthError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| PthError::Io {
        path: p.clone(),
        error,
    })?;
    read_pth_bytes(&bytes, &p)
}

/// [`read_pth`] on a checkpoint already in memory; `name` names it in errors.
pub fn read_pth_bytes(bytes: &[u8], name: &str) -> Result<Checkpoint, PthError> {
    let fail = |reason: String| PthError::Format {
        path: name.to_string(),
        reason,
    };
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes).map_err(fail)
    } else {
        read_legacy(bytes).map_err(fail)
    }
}

/// Walks the opcodes of the pickle starting at `data[0]` (the subset `candle_core::pickle`
/// executes) up to its STOP, refusing a length-prefixed argument longer than the bytes left
/// and integers wider than 8 bytes. candle allocates a `BINUNICODE` string's claimed length (up
/// to 4 GiB) before reading it, so a 20-byte file could ask for 4 GiB. Both found by fuzzing
/// (fuzz/regressions/pth/).
fn check_pickle_lengths(data: &[u8]) -> Result<(), String> {
    let mut i = 0usize;
    let arg = |i: usize, n: usize| -> Result<&[u8], String> {
        data.get(i..i + n)
            .ok_or_else(|| format!("bad pickle: opcode at byte {} is cut short", i - 1))
    };
    while i < data.len() {
        let op = data[i];
        i += 1;
        let skip = match op {
            b'.' => return Ok(()),
            // BINUNICODE: u32 length, then that many bytes.
            b'X' => {
                let n = u32::from_le_bytes(arg(i, 4)?.try_into().expect("4 bytes")) as usize;
                if n > data.len() - i - 4 {
                    return Err(format!(
                        "bad pickle: a string at byte {} claims {n} bytes, {} remain",
                        i - 1,
                        data.len() - i - 4
                    ));
                }
                4 + n
            }
            // GLOBAL: module and name, each ended by a newline.
            b'c' => {
                let mut end = i;
                for _ in 0..2 {
                    end += data[end.min(data.len())..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or("bad pickle: GLOBAL without its newline")?
                        + 1;
                }
                end - i
            }
            // LONG1: a one-byte length, then the bytes. candle folds them into an i64 by
            // shifting, which overflows past 8 bytes (a panic with debug assertions, garbage
            // without; found by fuzzing). No tensor field needs more.
            0x8a => {
                let n = *arg(i, 1)?.first().expect("1 byte") as usize;
                if n > 8 {
                    return Err(format!(
                        "bad pickle: a {n}-byte integer at byte {} (at most 8 are read)",
                        i - 1
                    ));
                }
                1 + n
            }
            0x80 | b'q' | b'K' | b'h' => 1,
            b'M' => 2,
            b'r' | b'J' | b'j' => 4,
            b'G' => 8,
            // Argument-free opcodes; anything else is left for candle to refuse.
            _ => 0,
        };
        arg(i, skip)?;
        i += skip;
    }
    Ok(())
}

fn unpickle(r: &mut Cursor<&[u8]>) -> Result<Object, String> {
    let at = r.position() as usize;
    check_pickle_lengths(r.get_ref().get(at..).unwrap_or_default())?;
    let mut stack = Stack::empty();
    stack.read_loop(r).map_err(|e| format!("bad pickle: {e}"))?;
    stack.finalize().map_err(|e| format!("bad pickle: {e}"))
}

fn read_legacy(bytes: &[u8]) -> Result<Checkpoint, String> {
    // PROTO n, LONG1 10 <magic>, STOP: checked by hand because the number does not fit in an i64.
    if bytes.len() < 15
        || bytes[0] != 0x80
        || bytes[2] != 0x8a
        || bytes[3] != 10
        || bytes[4..14] != LEGACY_MAGIC
        || bytes[14] != b'.'
    {
        return Err("neither a zip archive nor the legacy magic number".into());
    }
    let mut r = Cursor::new(bytes);
    r.set_position(15);
    match unpickle(&mut r)?.int_or_long() {
        Ok(1001) => {}
        Ok(v) => return Err(format!("legacy protocol version {v}, expected 1001")),
        Err(o) => return Err(format!("legacy protocol version is {o:?}")),
    }
    let sys_info = unpickle(&mut r)?;
    if let Object::Dict(items) = &sys_info {
        let le = items
            .iter()
            .find(|(k, _)| *k == Object::Unicode("little_endian".into()))
            .map(|(_, v)| v.clone());
        if le == Some(Object::Bool(false)) {
            return Err("big-endian checkpoints are not supported".into());
        }
    }
    let (refs, dict_key, other_dict_keys) = tensor_refs(unpickle(&mut r)?)?;
    let keys = match unpickle(&mut r)? {
        Object::List(keys) => keys
            .into_iter()
            .map(|k| String::try_from(k).map_err(|o| format!("storage key {o:?}")))
            .collect::<Result<Vec<_>, _>>()?,
        o => return Err(format!("expected the list of storage keys, found {o:?}")),
    };
    let elem_size: HashMap<&str, usize> = refs
        .iter()
        .map(|t| (t.storage_key.as_str(), t.dtype.bitsize() / 8))
        .collect();
    let mut storages = HashMap::new();
    for key in &keys {
        let mut n = [0u8; 8];
        r.read_exact(&mut n)
            .map_err(|_| format!("truncated before storage {key}"))?;
        let numel = u64::from_le_bytes(n) as usize;
        let size = elem_size.get(key.as_str()).copied().unwrap_or(1);
        let len = numel.checked_mul(size).ok_or("storage size overflows")?;
        let start = r.position() as usize;
        let end = start.checked_add(len).ok_or("storage size overflows")?;
        let data = bytes
            .get(start..end)
            .ok_or_else(|| format!("truncated in storage {key} ({len} bytes expected)"))?;
        storages.insert(key.clone(), data);
        r.set_position(end as u64);
    }
    let tensors = materialise(refs, |k| storages.get(k).copied().map(<[u8]>::to_vec))?;
    Ok(Checkpoint {
        format: PthFormat::Legacy,
        tensors,
        dict_key,
        other_dict_keys,
    })
}

fn read_zip(bytes: &[u8]) -> Result<Checkpoint, String> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("bad zip: {e}"))?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("data.pkl"))
        .map(|n| n.to_string())
        .ok_or("zip archive has no data.pkl")?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut pickle = vec![];
    zip.by_name(&pkl)
        .and_then(|mut f| f.read_to_end(&mut pickle).map_err(Into::into))
        .map_err(|e| format!("reading {pkl}: {e}"))?;
    let (refs, dict_key, other_dict_keys) = tensor_refs(unpickle(&mut Cursor::new(&pickle[..]))?)?;
    let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
    let tensors = materialise(refs, |key| {
        if let Some(d) = cache.get(key) {
            return Some(d.clone());
        }
        let mut data = vec![];
        zip.by_name(&format!("{prefix}data/{key}"))
            .ok()?
            .read_to_end(&mut data)
            .ok()?;
        cache.insert(key.to_string(), data.clone());
        Some(data)
    })?;
    Ok(Checkpoint {
        format: PthFormat::Zip,
        tensors,
        dict_key,
        other_dict_keys,
    })
}

/// The state dict, its key in the checkpoint and the other weight dicts present.
type Found = (Vec<TensorRef>, Option<String>, Vec<String>);

/// Finds the state dict in the unpickled object and describes each tensor in it.
fn tensor_refs(obj: Object) -> Result<Found, String> {
    let mut items = match obj {
        Object::Dict(items) => items,
        o => return Err(format!("top-level object is not a dict: {}", short(&o))),
    };
    // Training checkpoints often wrap the state dict.
    let is_tensor = |o: &Object| matches!(o, Object::Reduce { .. });
    let (mut dict_key, mut others) = (None, vec![]);
    if !items.iter().any(|(_, v)| is_tensor(v)) {
        let holds_tensors = |v: &Object| matches!(v, Object::Dict(d) if d.iter().any(|(_, t)| matches!(t, Object::Reduce { .. })));
        let present: Vec<(&str, usize)> = STATE_DICT_KEYS
            .iter()
            .filter_map(|&name| {
                items
                    .iter()
                    .position(|(k, v)| {
                        matches!(k, Object::Unicode(s) if s == name) && holds_tensors(v)
                    })
                    .map(|i| (name, i))
            })
            .collect();
        let Some(&(name, i)) = present.first() else {
            let keys: Vec<String> = items
                .iter()
                .take(12)
                .map(|(k, _)| match k {
                    Object::Unicode(s) => s.clone(),
                    o => short(o),
                })
                .collect();
            return Err(format!(
                "no tensors at the top level nor under {} (the checkpoint's keys: {})",
                STATE_DICT_KEYS.join(", "),
                keys.join(", ")
            ));
        };
        others = present[1..].iter().map(|(n, _)| n.to_string()).collect();
        dict_key = Some(name.to_string());
        match items.swap_remove(i).1 {
            Object::Dict(inner) => items = inner,
            _ => unreachable!("checked to be a dict"),
        }
    }
    // Python pickles a dict's items in batches of 1000 (SETITEMS), and candle's unpickler
    // appends each batch in reverse; undo that so the keys come out in state-dict order.
    for batch in items.chunks_mut(1000) {
        batch.reverse();
    }
    let mut out = vec![];
    for (k, v) in items {
        let name = String::try_from(k).map_err(|o| format!("non-string key {}", short(&o)))?;
        if let Some(t) = tensor_ref(&name, v)? {
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err("the state dict holds no tensors".into());
    }
    Ok((out, dict_key, others))
}

fn short(o: &Object) -> String {
    let s = format!("{o:?}");
    s.chars().take(120).collect()
}

fn usizes(o: Object, what: &str, name: &str) -> Result<Vec<usize>, String> {
    let items = match o {
        Object::Tuple(v) | Object::List(v) => v,
        o => return Err(format!("{name}: {what} is {}", short(&o))),
    };
    items
        .into_iter()
        .map(|i| {
            i.int_or_long()
                .ok()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| format!("{name}: bad {what} entry"))
        })
        .collect()
}

fn tensor_ref(name: &str, v: Object) -> Result<Option<TensorRef>, String> {
    let (callable, args) = match v {
        Object::Reduce { callable, args } => (*callable, *args),
        // Non-tensor entries (e.g. `_metadata`, version numbers) are not weights.
        _ => return Ok(None),
    };
    let (callable, args) = match callable {
        Object::Class {
            module_name,
            class_name,
        } if module_name == "torch._utils" && class_name == "_rebuild_parameter" => {
            let mut a = args.tuple().map_err(|o| format!("{name}: {}", short(&o)))?;
            if a.is_empty() {
                return Err(format!("{name}: empty _rebuild_parameter"));
            }
            match a.swap_remove(0) {
                Object::Reduce { callable, args } => (*callable, *args),
                o => return Err(format!("{name}: parameter wraps {}", short(&o))),
            }
        }
        c => (c, args),
    };
    match &callable {
        Object::Class {
            module_name,
            class_name,
        } if module_name == "torch._utils" && class_name == "_rebuild_tensor_v2" => {}
        Object::Class {
            module_name,
            class_name,
        } => {
            return Err(format!(
                "{name}: tensors rebuilt by {module_name}.{class_name} are not supported"
            ))
        }
        _ => return Ok(None),
    }
    let mut a = args
        .tuple()
        .map_err(|o| format!("{name}: {}", short(&o)))?
        .into_iter();
    let (storage, offset, size, stride) = match (a.next(), a.next(), a.next(), a.next()) {
        (Some(s), Some(o), Some(sz), Some(st)) => (s, o, sz, st),
        _ => return Err(format!("{name}: _rebuild_tensor_v2 with too few arguments")),
    };
    let pid = match storage {
        Object::PersistentLoad(p) => *p,
        o => return Err(format!("{name}: storage is {}", short(&o))),
    };
    let mut pid = pid
        .tuple()
        .map_err(|o| format!("{name}: storage id {}", short(&o)))?
        .into_iter();
    let _tag = pid.next();
    let class = pid
        .next()
        .ok_or(format!("{name}: storage id without type"))?;
    let dtype = match class {
        Object::Class { class_name, .. } => storage_dtype(&class_name)
            .ok_or_else(|| format!("{name}: unsupported storage type {class_name}"))?,
        o => return Err(format!("{name}: storage type {}", short(&o))),
    };
    let key = pid
        .next()
        .and_then(|k| String::try_from(k).ok())
        .ok_or(format!("{name}: storage id without key"))?;
    let _location = pid.next();
    let _numel = pid.next();
    // Legacy views: (view_key, offset, size) into the root storage `key`.
    let view_offset = match pid.next() {
        Some(Object::Tuple(v)) if v.len() >= 2 => v[1].clone().int_or_long().unwrap_or(0) as usize,
        _ => 0,
    };
    let offset = offset
        .int_or_long()
        .map_err(|o| format!("{name}: offset {}", short(&o)))? as usize;
    let shape = usizes(size, "size", name)?;
    let stride = usizes(stride, "stride", name)?;
    if shape.len() != stride.len() {
        return Err(format!("{name}: size and stride differ in length"));
    }
    Ok(Some(TensorRef {
        name: name.to_string(),
        storage_key: key,
        dtype,
        view_offset,
        offset,
        shape,
        stride,
    }))
}

fn storage_dtype(class: &str) -> Option<Dtype> {
    Some(match class {
        "FloatStorage" => Dtype::F32,
        "DoubleStorage" => Dtype::F64,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::BOOL,
        _ => return None,
    })
}

/// Copies each tensor out of its storage into contiguous row-major bytes, honouring strides.
fn materialise(
    refs: Vec<TensorRef>,
    mut storage: impl FnMut(&str) -> Option<Vec<u8>>,
) -> Result<Vec<(String, RawTensor)>, String> {
    let mut out = Vec::with_capacity(refs.len());
    for t in refs {
        let data = storage(&t.storage_key)
            .ok_or_else(|| format!("{}: storage {} is missing", t.name, t.storage_key))?;
        let es = t.dtype.bitsize() / 8;
        let numel: usize = t.shape.iter().product();
        let base = t.view_offset + t.offset;
        let last = t
            .shape
            .iter()
            .zip(&t.stride)
            .map(|(&d, &s)| d.saturating_sub(1) * s)
            .sum::<usize>()
            + base;
        if numel > 0 && (last + 1) * es > data.len() {
            return Err(format!(
                "{}: reaches element {} of a storage of {}",
                t.name,
                last,
                data.len() / es
            ));
        }
        let mut bytes = Vec::with_capacity(numel * es);
        let contiguous = {
            let mut expect = 1;
            t.shape.iter().zip(&t.stride).rev().all(|(&d, &s)| {
                let ok = d == 1 || s == expect;
                expect *= d;
                ok
            })
        };
        if contiguous {
            bytes.extend_from_slice(&data[base * es..(base + numel) * es]);
        } else {
            let mut idx = vec![0usize; t.shape.len()];
            for _ in 0..numel {
                let e = base + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
                bytes.extend_from_slice(&data[e * es..(e + 1) * es]);
                for d in (0..idx.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < t.shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        }
        out.push((
            t.name,
            RawTensor {
                dtype: t.dtype,
                shape: t.shape,
                data: bytes,
            },
        ));
    }
    Ok(out)
}
