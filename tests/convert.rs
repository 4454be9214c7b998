//! The `.pth` reader and `.pth` → safetensors conversion, against the fixtures in
//! `tests/fixtures/convert` (made by `python/make_parity_fixtures.py`): a subset of a 10-class
//! torchvision resnet18 state dict with "kiln-fixture-v1" recipe values, saved by `torch.save` in
//! the legacy and the zip formats, plus a strided view (`extra.transposed`) and an f16 tensor
//! (`extra.half`).

mod common;

use common::recipe_values;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_preprocess::{Preset, TrainingSpec, SPEC_METADATA_KEY};
use kiln_runtime::pth::{read_pth, PthError, PthFormat, RawTensor};
use kiln_runtime::{convert_pth, RuntimeError};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// The recipe ("kiln-fixture-v1"); tests/parity.rs checks it against reference values.
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/convert")
        .join(name)
}

/// What the manifest says one key holds.
struct Expected {
    name: String,
    shape: Vec<usize>,
    dtype: Dtype,
    /// Little-endian bytes, row-major.
    bytes: Vec<u8>,
}

fn expected() -> Vec<Expected> {
    let path = fixture("resnet18_subset.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("manifest");
    assert_eq!(v["recipe"], "kiln-fixture-v1");
    let dims = |v: &Value| -> Vec<usize> {
        v.as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect()
    };
    v["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("name").to_string();
            let shape = dims(&e["shape"]);
            let recipe = || {
                let (a, b) = (
                    e["a"].as_f64().expect("a") as f32,
                    e["b"].as_f64().expect("b") as f32,
                );
                let of = if e["transposed_of"].is_null() {
                    shape.clone()
                } else {
                    dims(&e["transposed_of"])
                };
                let v = recipe_values(&name, of.iter().product(), a, b);
                if of == shape {
                    v
                } else {
                    // recipe(of).T, row-major in the transposed shape.
                    assert_eq!((of.len(), of[0], of[1]), (2, shape[1], shape[0]), "{name}");
                    (0..shape[0])
                        .flat_map(|i| (0..shape[1]).map(move |j| (i, j)))
                        .map(|(i, j)| v[j * of[1] + i])
                        .collect()
                }
            };
            let (dtype, bytes) = match e["dtype"].as_str().expect("dtype") {
                "int64" => (
                    Dtype::I64,
                    e["value"].as_i64().expect("value").to_le_bytes().to_vec(),
                ),
                "float32" => (
                    Dtype::F32,
                    recipe().iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
                "float16" => (
                    Dtype::F16,
                    recipe()
                        .iter()
                        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                        .collect(),
                ),
                d => panic!("{name}: dtype {d}"),
            };
            Expected {
                name,
                shape,
                dtype,
                bytes,
            }
        })
        .collect()
}

/// A path in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("kiln-convert-{}-{n}-{name}", std::process::id())))
    }

    fn with_bytes(name: &str, bytes: &[u8]) -> Self {
        let f = Self::new(name);
        std::fs::write(&f.0, bytes).expect("write temporary file");
        f
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn spec() -> TrainingSpec {
    Preset::TorchvisionImagenet.spec("resnet18", 10)
}

/// Every key present once, with the manifest's dtype, shape and values (order aside: see
/// [`keys_in_state_dict_order`]).
fn assert_matches(what: &str, got: &[(String, RawTensor)], want: &[Expected]) {
    let mut names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let mut want_names: Vec<&str> = want.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    want_names.sort();
    assert_eq!(names, want_names, "{what}: keys");
    for e in want {
        let (name, t) = got.iter().find(|(n, _)| *n == e.name).unwrap();
        assert_eq!(t.dtype, e.dtype, "{what}: {name} dtype");
        assert_eq!(t.shape, e.shape, "{what}: {name} shape");
        assert!(
            t.data == e.bytes,
            "{what}: {name} values differ from the recipe"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

fn check_read(file: &str, format: PthFormat) {
    let path = fixture(file);
    let ckpt = read_pth(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ckpt.format, format, "{file}");
    let want = expected();
    assert_matches(file, &ckpt.tensors, &want);
    // The strided view and the f16 tensor, spelled out.
    let tr = &ckpt
        .tensors
        .iter()
        .find(|(n, _)| n == "extra.transposed")
        .unwrap()
        .1;
    let base = recipe_values("extra.transposed", 24, 0.0, 1.0);
    let got = tr.to_f32().unwrap();
    assert_eq!(tr.shape, [6, 4]);
    for i in 0..6 {
        for j in 0..4 {
            assert_eq!(
                got[i * 4 + j],
                base[j * 6 + i],
                "{file}: extra.transposed[{i},{j}]"
            );
        }
    }
    let h = &ckpt
        .tensors
        .iter()
        .find(|(n, _)| n == "extra.half")
        .unwrap()
        .1;
    let want_h: Vec<f32> = recipe_values("extra.half", 3, 0.0, 1.0)
        .into_iter()
        .map(|v| half::f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(
        (h.dtype, h.to_f32().unwrap()),
        (Dtype::F16, want_h),
        "{file}: extra.half"
    );
}

#[test]
fn reads_legacy_checkpoint() {
    check_read("resnet18_subset.legacy.pth", PthFormat::Legacy);
}

#[test]
fn reads_zip_checkpoint() {
    check_read("resnet18_subset.zip.pth", PthFormat::Zip);
}

/// `Checkpoint::tensors` is documented to come "in the order of the state dict".
#[test]
fn keys_in_state_dict_order() {
    let want: Vec<String> = expected().into_iter().map(|e| e.name).collect();
    for file in ["resnet18_subset.legacy.pth", "resnet18_subset.zip.pth"] {
        let ckpt = read_pth(&fixture(file)).unwrap();
        let names: Vec<String> = ckpt.tensors.into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, want, "{file}");
    }
}

// ---------------------------------------------------------------------------------------------
// Converting
// ---------------------------------------------------------------------------------------------

fn check_convert(file: &str, format: PthFormat) {
    let input = fixture(file);
    let out = TempFile::new(&format!("{file}.safetensors"));
    let spec = spec();
    let report = convert_pth(&input, &out.0, Some(&spec)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.format, format);

    let want: Vec<Expected> = expected();
    let dropped: Vec<&str> = want
        .iter()
        .filter(|e| e.name.ends_with("num_batches_tracked"))
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(dropped.len(), 3);
    let mut got_dropped = report.dropped.clone();
    got_dropped.sort();
    assert_eq!(got_dropped, dropped, "{file}: dropped keys");
    let kept: Vec<&Expected> = want
        .iter()
        .filter(|e| !e.name.ends_with("num_batches_tracked"))
        .collect();
    assert_eq!(report.tensors, kept.len());
    assert_eq!(
        report.parameters,
        kept.iter()
            .map(|e| e.shape.iter().product::<usize>())
            .sum::<usize>()
    );

    let bytes = std::fs::read(&out.0).expect("converted file");
    let st = SafeTensors::deserialize(&bytes).expect("a valid safetensors file");
    let mut names = st.names();
    names.sort();
    let mut want_names: Vec<&str> = kept.iter().map(|e| e.name.as_str()).collect();
    want_names.sort();
    assert_eq!(names, want_names, "{file}: keys written");
    for e in &kept {
        let t = st.tensor(&e.name).unwrap();
        assert_eq!(t.dtype(), e.dtype, "{file}: {}", e.name);
        assert_eq!(t.shape(), e.shape.as_slice(), "{file}: {}", e.name);
        assert!(t.data() == e.bytes.as_slice(), "{file}: {} values", e.name);
    }

    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().expect("metadata");
    let back = TrainingSpec::from_json(&meta[SPEC_METADATA_KEY]).expect("embedded spec parses");
    assert_eq!(back, spec, "{file}: embedded spec");
    // The runtime's own reader finds it too.
    let wf = kiln_runtime::WeightFile::read(&out.0).unwrap();
    assert_eq!(wf.embedded_spec().unwrap(), Some(spec));
}

#[test]
fn converts_legacy_checkpoint() {
    check_convert("resnet18_subset.legacy.pth", PthFormat::Legacy);
}

#[test]
fn converts_zip_checkpoint() {
    check_convert("resnet18_subset.zip.pth", PthFormat::Zip);
}

#[test]
fn converts_without_spec() {
    let out = TempFile::new("nospec.safetensors");
    convert_pth(&fixture("resnet18_subset.zip.pth"), &out.0, None).unwrap();
    let bytes = std::fs::read(&out.0).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert!(!meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .contains_key(SPEC_METADATA_KEY));
}

// ---------------------------------------------------------------------------------------------
// Bad input: an error naming the file, never a panic
// ---------------------------------------------------------------------------------------------

fn assert_pth_error(path: &Path, what: &str) {
    let err = match read_pth(path) {
        Ok(c) => panic!(
            "{what}: read {} tensors from a broken file",
            c.tensors.len()
        ),
        Err(e) => e,
    };
    assert!(matches!(err, PthError::Format { .. }), "{what}: {err:?}");
    let shown = path.display().to_string();
    assert!(
        err.to_string().contains(&shown),
        "{what}: `{err}` does not name {shown}"
    );
    let out = TempFile::new("never.safetensors");
    match convert_pth(path, &out.0, Some(&spec())) {
        Err(RuntimeError::Pth(e)) => assert!(e.to_string().contains(&shown), "{what}: {e}"),
        other => panic!("{what}: convert gave {:?}", other.map(|r| r.tensors)),
    }
    assert!(
        !out.0.exists(),
        "{what}: convert wrote output from a broken file"
    );
}

fn truncations(len: usize) -> Vec<usize> {
    let mut cuts = vec![
        0,
        1,
        2,
        10,
        14,
        15,
        16,
        40,
        100,
        300,
        1000,
        3000,
        len / 3,
        len / 2,
        len - 100,
        len - 1,
    ];
    // Every byte through the pickled header and state dict (the storages start after it).
    cuts.extend((0..len.min(12_000)).step_by(7));
    cuts.sort();
    cuts.dedup();
    cuts
}

#[test]
fn truncated_legacy_file_is_an_error() {
    let bytes = std::fs::read(fixture("resnet18_subset.legacy.pth")).unwrap();
    for cut in truncations(bytes.len()) {
        let f = TempFile::with_bytes("truncated.legacy.pth", &bytes[..cut]);
        assert_pth_error(
            &f.0,
            &format!("legacy file cut at {cut} of {} bytes", bytes.len()),
        );
    }
}

#[test]
fn truncated_zip_file_is_an_error() {
    let bytes = std::fs::read(fixture("resnet18_subset.zip.pth")).unwrap();
    for cut in [
        4,
        30,
        100,
        1000,
        bytes.len() / 2,
        bytes.len() - 22,
        bytes.len() - 1,
    ] {
        let f = TempFile::with_bytes("truncated.zip.pth", &bytes[..cut]);
        assert_pth_error(
            &f.0,
            &format!("zip file cut at {cut} of {} bytes", bytes.len()),
        );
    }
}

#[test]
fn random_bytes_are_an_error() {
    for (i, len) in [1usize, 64, 4096, 100_000].into_iter().enumerate() {
        let noise: Vec<u8> = recipe_values(&format!("noise/{i}"), len, 128.0, 128.0)
            .into_iter()
            .map(|v| v as u8)
            .collect();
        let f = TempFile::with_bytes("random.pth", &noise);
        assert_pth_error(&f.0, &format!("{len} random bytes"));
    }
    // Random bytes behind each container's signature.
    let mut noise: Vec<u8> = recipe_values("noise/zip", 5000, 128.0, 128.0)
        .into_iter()
        .map(|v| v as u8)
        .collect();
    noise[..4].copy_from_slice(b"PK\x03\x04");
    let f = TempFile::with_bytes("random-zip.pth", &noise);
    assert_pth_error(&f.0, "random bytes after a zip signature");
    let legacy = std::fs::read(fixture("resnet18_subset.legacy.pth")).unwrap();
    noise[..15].copy_from_slice(&legacy[..15]);
    let f = TempFile::with_bytes("random-legacy.pth", &noise);
    assert_pth_error(&f.0, "random bytes after the legacy magic number");
}

#[test]
fn missing_file_is_an_io_error() {
    let path = std::env::temp_dir().join("kiln-convert-does-not-exist.pth");
    let err = read_pth(&path).unwrap_err();
    assert!(matches!(err, PthError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

/// Manual check against a real torchvision checkpoint (not run by default):
/// `KILN_REAL_PTH=/path/to/mobilenet_v2-b0353104.pth cargo test --release --test convert -- --ignored`.
/// Converts it and compares every tensor with the shipped `weights/mobilenet_v2.safetensors`.
#[test]
#[ignore = "needs a real checkpoint in $KILN_REAL_PTH"]
fn real_torchvision_mobilenet_v2() {
    let Some(pth) = std::env::var_os("KILN_REAL_PTH") else {
        panic!("set KILN_REAL_PTH to a torchvision mobilenet_v2 .pth");
    };
    let out = TempFile::new("real-mnv2.safetensors");
    let spec = Preset::TorchvisionImagenet.spec("mobilenet_v2", 1000);
    let report =
        convert_pth(Path::new(&pth), &out.0, Some(&spec)).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{:?}: {} tensors, {} parameters, dropped {}",
        report.format,
        report.tensors,
        report.parameters,
        report.dropped.len()
    );
    let ours = std::fs::read(&out.0).unwrap();
    let ours = SafeTensors::deserialize(&ours).unwrap();
    let shipped_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/mobilenet_v2.safetensors");
    let shipped = std::fs::read(&shipped_path).unwrap();
    let shipped = SafeTensors::deserialize(&shipped).unwrap();
    let mut a = ours.names();
    let mut b = shipped.names();
    a.sort();
    b.sort();
    assert_eq!(a, b, "key sets");
    let mut differing = 0;
    for n in a {
        let (x, y) = (ours.tensor(n).unwrap(), shipped.tensor(n).unwrap());
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{n}");
        if x.data() != y.data() {
            differing += 1;
            println!("{n}: values differ");
        }
    }
    assert_eq!(differing, 0);
    let c = kiln_runtime::Classifier::builder()
        .weights(&out.0)
        .build()
        .unwrap();
    assert_eq!(c.spec().architecture, "mobilenet_v2");
}
