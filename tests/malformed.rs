//! Malformed weights, specs and checkpoints (issue 13, point 2): a table of broken inputs made
//! from the shipped MobileNetV2 files, each of which must give an error (never a panic) that
//! names the file and, where there is one, the field or tensor at fault.
//!
//! Decisions these cases pin down:
//! - extra tensors a model does not use are accepted (PyTorch checkpoints carry
//!   `num_batches_tracked` and heads the user may not want), the build reads only what the
//!   architecture names;
//! - NaN or infinite weights are refused when the file is read, naming the tensor.

mod common;

use kiln_runtime::pth::read_pth;
use kiln_runtime::{Classifier, TrainingSpec};
use serde_json::{json, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

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
    let r = catch_unwind(AssertUnwindSafe(|| {
        Classifier::builder().weights(&p).build()
    }))
    .unwrap_or_else(|_| panic!("{name}: panicked"));
    r.err().map(|e| format!("{e:#}"))
}

#[test]
fn malformed_weight_files_are_refused_naming_the_file_and_field() {
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
    let r = catch_unwind(|| read_pth(p)).unwrap_or_else(|_| panic!("{name}: panicked"));
    format!(
        "{}",
        r.err().unwrap_or_else(|| panic!("{name}: was accepted"))
    )
}

#[test]
fn malformed_checkpoints_are_refused() {
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
    ];
    for (name, bytes) in cases {
        let err = pth_error(name, &bytes);
        assert!(!err.is_empty(), "{name}");
    }
}
