//! Malformed weights, specs and checkpoints (issue 13, point 2): a table of broken inputs made
//! from the shipped MobileNetV2 files, each of which must give an error (never a panic) that
//! names the file and, where there is one, the field or tensor at fault.
//!
//! Decisions these cases pin down:
//! - extra tensors a model does not use are accepted (PyTorch checkpoints carry
//!   `num_batches_tracked` and heads the user may not want), the build reads only what the
//!   architecture names;
//! - NaN or infinite weights are refused when the file is read, naming the tensor.
//!
//! Every case also runs under a counting allocator: the most memory a refusal may allocate is
//! the file's size plus [`ALLOC_SLACK`] (4 MiB), so that no size, count or offset a file
//! claims can make kiln allocate for it.

mod common;

use kiln_runtime::pth::read_pth;
use kiln_runtime::{Classifier, TrainingSpec};
use serde_json::{json, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

/// The system allocator, counting the bytes live and the most ever live since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds
// GlobalAlloc's contract; the counters are only arithmetic on the side.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's layout is passed on as given.
        let p = unsafe { std::alloc::System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        // SAFETY: `p` came from `alloc`/`realloc` above with this layout.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded as given; `p` was allocated here with layout `l`.
        let q = unsafe { std::alloc::System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = LIVE.fetch_add(new - l.size(), Relaxed) + new - l.size();
                PEAK.fetch_max(now, Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The tests of this file run one at a time so that the allocator's peak is one case's.
static SERIAL: Mutex<()> = Mutex::new(());

/// A refusal may allocate this many times the file's size (it is read whole once) ...
const ALLOC_FACTOR: usize = 1;
/// ... plus this much (headers, parsers, the first tensors a model builds, error text).
/// Measured: at most 0.3 MB over the file's size (tests/malformed.rs --nocapture).
const ALLOC_SLACK: usize = 4 << 20;

/// Runs `f` and returns its result with the most memory it had allocated at once.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let r = f();
    (r, PEAK.load(Relaxed).saturating_sub(base))
}

fn check_alloc(name: &str, file_len: usize, peak: usize) {
    let bound = ALLOC_FACTOR * file_len + ALLOC_SLACK;
    eprintln!("{name}: {file_len} bytes, peak allocation {peak} bytes");
    assert!(
        peak <= bound,
        "{name}: allocated {peak} bytes for a {file_len}-byte file (bound {bound})"
    );
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    // The embedded spec names its labels file relative to the weights.
    std::fs::copy(
        common::repo().join("weights/imagenet-1k.txt"),
        d.join("imagenet-1k.txt"),
    )
    .unwrap();
    d
}

/// The shipped file's header (without `__metadata__` split out) and its data section.
fn shipped() -> (Value, Vec<u8>) {
    let b = std::fs::read(common::repo().join("weights/mobilenet_v2.safetensors")).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    (h, b[8 + n..].to_vec())
}

fn assemble(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// Rebuilds a valid file from (name, entry, bytes) after `edit` has changed the tensor list.
fn rebuild(edit: impl FnOnce(&mut Vec<(String, Value, Vec<u8>)>, &mut Value)) -> Vec<u8> {
    let (h, data) = shipped();
    let mut meta = h["__metadata__"].clone();
    let mut ts: Vec<(String, Value, Vec<u8>)> = h
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = v["data_offsets"].as_array().unwrap();
            let (a, b) = (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            );
            (k.clone(), v.clone(), data[a..b].to_vec())
        })
        .collect();
    edit(&mut ts, &mut meta);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), meta);
    let mut out = Vec::new();
    for (k, mut v, bytes) in ts {
        v["data_offsets"] = json!([out.len(), out.len() + bytes.len()]);
        out.extend_from_slice(&bytes);
        header.insert(k, v);
    }
    assemble(&Value::Object(header), &out)
}

fn set_f32(ts: &mut [(String, Value, Vec<u8>)], name: &str, v: f32) {
    let t = ts.iter_mut().find(|t| t.0 == name).unwrap();
    t.2[4..8].copy_from_slice(&v.to_le_bytes());
}

fn with_spec(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    rebuild(|_, meta| {
        let mut spec: Value = serde_json::from_str(meta["kiln.spec"].as_str().unwrap()).unwrap();
        edit(&mut spec);
        meta["kiln.spec"] = Value::String(spec.to_string());
    })
}

/// Builds a classifier from `bytes` written to `name`; the error text, or `None` when it built.
fn build(name: &str, bytes: &[u8]) -> Option<String> {
    let p = dir().join(name);
    std::fs::write(&p, bytes).unwrap();
    let (r, peak) = peak_of(|| {
        catch_unwind(AssertUnwindSafe(|| {
            Classifier::builder().weights(&p).build()
        }))
    });
    let r = r.unwrap_or_else(|_| panic!("{name}: panicked"));
    if r.is_err() {
        check_alloc(name, bytes.len(), peak);
    }
    r.err().map(|e| format!("{e:#}"))
}

#[test]
fn malformed_weight_files_are_refused_naming_the_file_and_field() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (h, data) = shipped();
    let whole = assemble(&h, &data);
    let hlen = u64::from_le_bytes(whole[..8].try_into().unwrap()) as usize;
    let mut long_header = whole.clone();
    long_header[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let mut odd_header = whole.clone();
    odd_header[..8].copy_from_slice(&7u64.to_le_bytes());
    let edit_header = |f: &dyn Fn(&mut Value)| {
        let mut h = h.clone();
        f(&mut h);
        assemble(&h, &data)
    };
    // (file name, bytes, what the error must also name)
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("empty.safetensors", vec![], &[]),
        ("four_bytes.safetensors", whole[..4].to_vec(), &[]),
        ("cut_in_header.safetensors", whole[..hlen / 2].to_vec(), &[]),
        (
            "cut_in_data.safetensors",
            whole[..whole.len() / 2].to_vec(),
            &[],
        ),
        ("header_past_end.safetensors", long_header, &[]),
        ("header_not_json.safetensors", odd_header, &[]),
        (
            "offset_past_end.safetensors",
            edit_header(&|h| h["classifier.1.bias"]["data_offsets"][1] = json!(1u64 << 33)),
            &[],
        ),
        (
            "offsets_overlap.safetensors",
            edit_header(&|h| {
                let o = h["classifier.1.bias"]["data_offsets"].clone();
                h["classifier.1.weight"]["data_offsets"] = o;
            }),
            &[],
        ),
        (
            "unknown_dtype.safetensors",
            edit_header(&|h| h["classifier.1.bias"]["dtype"] = json!("Q7")),
            &[],
        ),
        (
            "dtype_size_lies.safetensors",
            edit_header(&|h| h["classifier.1.bias"]["dtype"] = json!("F64")),
            &[],
        ),
        (
            "shape_size_lies.safetensors",
            edit_header(&|h| h["classifier.1.bias"]["shape"] = json!([999])),
            &[],
        ),
        (
            "wrong_shape.safetensors",
            rebuild(|ts, _| {
                let t = ts
                    .iter_mut()
                    .find(|t| t.0 == "classifier.1.weight")
                    .unwrap();
                t.1["shape"] = json!([1280, 1000]);
            }),
            &["classifier.1.weight"],
        ),
        (
            "missing_key.safetensors",
            rebuild(|ts, _| ts.retain(|t| t.0 != "features.0.0.weight")),
            &["features.0.0.weight"],
        ),
        (
            "nan_weight.safetensors",
            rebuild(|ts, _| set_f32(ts, "features.3.conv.1.0.weight", f32::NAN)),
            &["features.3.conv.1.0.weight", "NaN"],
        ),
        (
            "inf_weight.safetensors",
            rebuild(|ts, _| set_f32(ts, "classifier.1.bias", f32::NEG_INFINITY)),
            &["classifier.1.bias", "infinite"],
        ),
        (
            "spec_not_json.safetensors",
            rebuild(|_, m| m["kiln.spec"] = json!("{not json")),
            &[],
        ),
        (
            "spec_unknown_arch.safetensors",
            with_spec(|s| s["architecture"] = json!("vgg99")),
            &["vgg99"],
        ),
        (
            "spec_two_means.safetensors",
            with_spec(|s| s["mean"] = json!([0.5, 0.5])),
            &["mean"],
        ),
        (
            "spec_wrong_classes.safetensors",
            with_spec(|s| s["num_classes"] = json!(10)),
            &[],
        ),
    ];
    for (name, bytes, parts) in cases {
        let err = build(name, &bytes).unwrap_or_else(|| panic!("{name}: was accepted"));
        assert!(
            err.contains(name),
            "{name}: the error does not name the file: {err}"
        );
        for p in parts {
            assert!(err.contains(p), "{name}: `{p}` missing from: {err}");
        }
    }
}

#[test]
fn extra_tensors_are_accepted() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bytes = rebuild(|ts, _| {
        let t = ts
            .iter()
            .find(|t| t.0 == "classifier.1.bias")
            .unwrap()
            .clone();
        ts.push(("features.0.1.num_batches_tracked".into(), t.1, t.2));
    });
    assert_eq!(build("extra_key.safetensors", &bytes), None);
}

/// A spec file from the shipped one with `edit` applied; the error from reading it.
fn spec_error(name: &str, edit: impl FnOnce(&mut Value)) -> String {
    let text =
        std::fs::read_to_string(common::repo().join("weights/mobilenet_v2.spec.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    edit(&mut v);
    let p = dir().join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    let r = catch_unwind(|| TrainingSpec::from_file(&p)).unwrap_or_else(|_| panic!("{name}"));
    format!(
        "{}",
        r.err().unwrap_or_else(|| panic!("{name}: was accepted"))
    )
}

#[test]
fn malformed_specs_are_refused_naming_the_file_and_field() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "two_means.json",
            Box::new(|s| s["mean"] = json!([0.4, 0.4])),
            "mean",
        ),
        (
            "four_stds.json",
            Box::new(|s| s["std"] = json!([0.2, 0.2, 0.2, 0.2])),
            "std",
        ),
        (
            "zero_std.json",
            Box::new(|s| s["std"] = json!([0.2, 0.0, 0.2])),
            "std",
        ),
        (
            "negative_std.json",
            Box::new(|s| s["std"] = json!([0.2, -0.2, 0.2])),
            "std",
        ),
        (
            "crop_over_resize.json",
            Box::new(|s| s["center_crop"] = json!([300, 300])),
            "crop",
        ),
        (
            "unknown_interp.json",
            Box::new(|s| s["resize"]["interpolation"] = json!("bicubicc")),
            "bicubicc",
        ),
        (
            "unknown_scale.json",
            Box::new(|s| s["scale"] = json!("percent")),
            "percent",
        ),
        (
            "unknown_order.json",
            Box::new(|s| s["channel_order"] = json!("gbr")),
            "gbr",
        ),
        (
            "unknown_layout.json",
            Box::new(|s| s["layout"] = json!("hwcn")),
            "hwcn",
        ),
        (
            "no_arch.json",
            Box::new(|s| {
                s.as_object_mut().unwrap().remove("architecture");
            }),
            "architecture",
        ),
        (
            "zero_input.json",
            Box::new(|s| s["input_size"] = json!([0, 224])),
            "input_size",
        ),
        (
            "string_mean.json",
            Box::new(|s| s["mean"] = json!("0.5")),
            "mean",
        ),
    ];
    for (name, edit, field) in cases {
        let err = spec_error(name, edit);
        assert!(err.contains(name), "{name}: no file in: {err}");
        assert!(err.contains(field), "{name}: `{field}` missing from: {err}");
    }
}

#[test]
fn a_label_file_of_the_wrong_length_is_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = dir();
    let labels = d.join("short-labels.txt");
    let text = std::fs::read_to_string(d.join("imagenet-1k.txt")).unwrap();
    let short: Vec<&str> = text.lines().take(999).collect();
    std::fs::write(&labels, short.join("\n")).unwrap();
    let err = Classifier::builder()
        .weights(common::repo().join("weights/mobilenet_v2.safetensors"))
        .labels(&labels)
        .build()
        .err()
        .expect("999 labels for 1000 classes must be refused")
        .to_string();
    assert!(err.contains("short-labels.txt"), "{err}");
    assert!(err.contains("999"), "{err}");
}

fn pth_error(name: &str, bytes: &[u8]) -> String {
    let p: &Path = &dir().join(name);
    std::fs::write(p, bytes).unwrap();
    let (r, peak) = peak_of(|| catch_unwind(|| read_pth(p)));
    let r = r.unwrap_or_else(|_| panic!("{name}: panicked"));
    check_alloc(name, bytes.len(), peak);
    format!(
        "{}",
        r.err().unwrap_or_else(|| panic!("{name}: was accepted"))
    )
}

#[test]
fn malformed_checkpoints_are_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let good =
        std::fs::read(common::repo().join("tests/fixtures/checkpoints/state_dict.pth")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.pth", vec![]),
        ("garbage.pth", b"definitely not a checkpoint".to_vec()),
        // A legacy pickle that asks for `posix.system("true")`.
        (
            "global.pth",
            b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.".to_vec(),
        ),
        ("cut_zip.pth", good[..good.len() / 2].to_vec()),
        ("zip_head_only.pth", good[..64.min(good.len())].to_vec()),
        // Zip entries whose local and central headers claim ~4 GiB: the storage, the pickle.
        ("zip_storage_size_lies.pth", zip_sizes_lie(&good, "/data/0")),
        ("zip_pickle_size_lies.pth", zip_sizes_lie(&good, "data.pkl")),
        // Legacy storages whose element count lies: past the end, past usize, short of the
        // tensor that views it.
        ("legacy_count_past_end.pth", legacy_count(1 << 40)),
        ("legacy_count_overflows.pth", legacy_count(u64::MAX / 2)),
        ("legacy_count_short.pth", legacy_count(2)),
        ("legacy_cut.pth", {
            let mut b = legacy();
            b.truncate(b.len() - 20);
            b
        }),
        // A pickled string claiming ~4 GiB (fuzzing found candle's unpickler allocating it).
        (
            "pickle_string_length_lies.pth",
            std::fs::read(common::repo().join("fuzz/regressions/pth/oom-binunicode-length.pth"))
                .unwrap(),
        ),
    ];
    for (name, bytes) in cases {
        let err = pth_error(name, &bytes);
        assert!(
            err.contains(name),
            "{name}: the error does not name the file: {err}"
        );
    }
    // Only the uncompressed size lies; the compressed size (which bounds the read of a stored
    // entry) and the CRC are true: the bytes are intact, so the checkpoint is read, as the zip
    // crate reads it, without allocating for the claimed 4 GiB.
    let name = "zip_uncompressed_size_lies.pth";
    let bytes = zip_field_lies(&good, "/data/0", 24, 22);
    let p = dir().join(name);
    std::fs::write(&p, &bytes).unwrap();
    let (r, peak) = peak_of(|| read_pth(&p));
    check_alloc(name, bytes.len(), peak);
    let ck = r.unwrap_or_else(|e| panic!("{name}: {e}"));
    let want = read_pth(&common::repo().join("tests/fixtures/checkpoints/state_dict.pth")).unwrap();
    assert_eq!(ck.tensors, want.tensors, "{name}");
}

/// The hand-pickled legacy checkpoint (python/make_fuzz_seeds.py): `conv1.weight` [4,3,1,1],
/// `fc.weight` [2,4], `fc.bias` [2], values 0, 0.1, 0.2, ...
fn legacy() -> Vec<u8> {
    std::fs::read(common::repo().join("tests/fixtures/malformed/legacy.pth")).unwrap()
}

/// `legacy()` with the first storage's element count (an i64 before its 12 floats, 112 bytes
/// from the end) replaced.
fn legacy_count(n: u64) -> Vec<u8> {
    let mut b = legacy();
    let at = b.len() - 112;
    assert_eq!(b[at..at + 8], 12u64.to_le_bytes(), "fixture layout");
    b[at..at + 8].copy_from_slice(&n.to_le_bytes());
    b
}

/// Sets, in every local and central zip header of entries whose name ends with `suffix`, the
/// 4-byte field at `central` (central header) and `local` (local header) to 0xFFFF_FFF0.
fn zip_field_lies(zip: &[u8], suffix: &str, central: usize, local: usize) -> Vec<u8> {
    let mut b = zip.to_vec();
    let mut hits = 0;
    let lie = 0xFFFF_FFF0u32.to_le_bytes();
    for i in 0..b.len().saturating_sub(46) {
        let (name_at, name_len_at, field) = match &b[i..i + 4] {
            b"PK\x01\x02" => (i + 46, i + 28, i + central),
            b"PK\x03\x04" => (i + 30, i + 26, i + local),
            _ => continue,
        };
        let n = u16::from_le_bytes([b[name_len_at], b[name_len_at + 1]]) as usize;
        if b.get(name_at..name_at + n)
            .is_some_and(|name| name.ends_with(suffix.as_bytes()))
        {
            b[field..field + 4].copy_from_slice(&lie);
            hits += 1;
        }
    }
    assert!(
        hits >= 2,
        "{suffix}: local and central headers not both found"
    );
    b
}

/// Both the compressed and the uncompressed size of the entry claim ~4 GiB.
fn zip_sizes_lie(zip: &[u8], suffix: &str) -> Vec<u8> {
    let b = zip_field_lies(zip, suffix, 20, 18);
    zip_field_lies(&b, suffix, 24, 22)
}

#[test]
fn the_hand_pickled_legacy_checkpoint_reads() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = dir().join("legacy_ok.pth");
    std::fs::write(&p, legacy()).unwrap();
    let ck = read_pth(&p).unwrap();
    let names: Vec<_> = ck.tensors.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, ["conv1.weight", "fc.weight", "fc.bias"]);
    assert_eq!(ck.tensors[1].1.shape, [2, 4]);
    let v = ck.tensors[1].1.to_f32().unwrap();
    assert!((v[7] - 0.7).abs() < 1e-6, "{v:?}");
}
