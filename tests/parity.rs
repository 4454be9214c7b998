//! PyTorch parity through kiln's real loading path.
//!
//! For each fixture in `tests/fixtures/parity` (made by `python/make_parity_fixtures.py`), every
//! weight is regenerated bit for bit from the "kiln-fixture-v1" recipe listed in `NAME.json`,
//! written to a temporary safetensors file with a training spec embedded under `kiln.spec`, and
//! loaded with `Classifier::builder().weights(path).build()` (file → spec → registry → model, batch
//! norm folded). The logits for the two recipe inputs (`[2,3,224,224]` and `[2,3,160,200]`) must
//! match torchvision's to `1e-4 * max(1, |torch|)` in every element.
//!
//! Run with `cargo test --release --test parity -- --nocapture` to see the worst-case figures.

mod common;

use common::{fnv1a64, recipe_uniform, recipe_values};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use kiln_preprocess::{ImageTensor, Preset};
use kiln_runtime::Classifier;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// The recipe ("kiln-fixture-v1")
// ---------------------------------------------------------------------------------------------

/// The reference values are numpy's (the f32 results printed as f64, so compared exactly in f64).
#[test]
fn recipe_reference_values() {
    let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64("conv1.weight"), 0x69a2_9a2c_ee47_d254);
    let u: Vec<f32> = recipe_uniform("conv1.weight", 3).collect();
    assert_eq!(
        f64s(&u),
        [0.0901498794555664, 0.49032342433929443, -0.9541566371917725]
    );
    let b = 0.2020305097103119_f64 as f32;
    assert_eq!(f64::from(b), 0.2020305097103119);
    let w = recipe_values("conv1.weight", 3, 0.0, b);
    assert_eq!(
        f64s(&w),
        [
            0.018213026225566864,
            0.0990602895617485,
            -0.19276875257492065
        ]
    );
    assert_eq!(fnv1a64("input/224x224"), 0x1a5b_3c4c_575d_090c);
    let u: Vec<f32> = recipe_uniform("input/224x224", 1).collect();
    assert_eq!(f64s(&u), [-0.9543522596359253]);
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

/// One tensor or input of a manifest.
struct Entry {
    name: String,
    shape: Vec<usize>,
    a: f32,
    b: f32,
}

impl Entry {
    fn from_json(v: &Value) -> Self {
        let num = |k: &str| {
            v[k].as_f64()
                .unwrap_or_else(|| panic!("manifest entry without `{k}`: {v}"))
        };
        let shape = v["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dimension") as usize)
            .collect();
        Self {
            name: v["name"].as_str().expect("name").to_string(),
            shape,
            // The manifest holds f32 values printed as f64: the cast is exact.
            a: num("a") as f32,
            b: num("b") as f32,
        }
    }

    fn values(&self) -> Vec<f32> {
        recipe_values(&self.name, self.shape.iter().product(), self.a, self.b)
    }
}

struct Manifest {
    architecture: String,
    arch_params: BTreeMap<String, Value>,
    num_classes: usize,
    tensors: Vec<Entry>,
    inputs: Vec<Entry>,
}

fn read_manifest(name: &str) -> Manifest {
    let path = fixture_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(v["recipe"], "kiln-fixture-v1", "{}", path.display());
    let entries = |k: &str| {
        v[k].as_array()
            .expect(k)
            .iter()
            .map(Entry::from_json)
            .collect()
    };
    Manifest {
        architecture: v["architecture"]
            .as_str()
            .expect("architecture")
            .to_string(),
        arch_params: v["arch_params"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        num_classes: v["num_classes"].as_u64().expect("num_classes") as usize,
        tensors: entries("tensors"),
        inputs: entries("inputs"),
    }
}

/// The PyTorch logits, by input key (`224x224`, `160x200`), each `[2, classes]` row-major.
fn read_torch_logits(name: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    common::read_f32_tensors(&fixture_dir().join(format!("{name}.logits.safetensors")))
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(stem: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!(
            "kiln-parity-{}-{n}-{stem}.safetensors",
            std::process::id()
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes the recipe weights of `m` with an embedded spec, as `kiln convert` would.
fn write_weights(m: &Manifest, path: &Path) {
    let mut spec = Preset::TorchvisionImagenet.spec(&m.architecture, m.num_classes);
    spec.arch_params = m.arch_params.clone();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = m
        .tensors
        .iter()
        .map(|e| {
            let data = e.values().iter().flat_map(|v| v.to_le_bytes()).collect();
            (e.name.clone(), e.shape.clone(), data)
        })
        .collect();
    let views = bytes.iter().map(|(n, s, d)| {
        (
            n.clone(),
            TensorView::new(Dtype::F32, s.clone(), d).expect("view"),
        )
    });
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            kiln_preprocess::SPEC_METADATA_KEY.to_string(),
            spec.to_json(),
        ),
    ]);
    safetensors::serialize_to_file(views, Some(meta), path).expect("write temporary weights");
}

/// Worst-case agreement of one model with PyTorch.
#[derive(Debug, Default)]
struct Agreement {
    max_abs: f32,
    max_ratio: f32,
    max_torch: f32,
    worst_at: String,
    failures: Vec<String>,
}

impl Agreement {
    fn compare(&mut self, key: &str, ours: &[Vec<f32>], torch: &(Vec<usize>, Vec<f32>)) {
        let (shape, want) = torch;
        assert_eq!(shape, &[ours.len(), ours[0].len()], "{key}: logits shape");
        for (i, row) in ours.iter().enumerate() {
            for (j, &got) in row.iter().enumerate() {
                let t = want[i * shape[1] + j];
                self.max_torch = self.max_torch.max(t.abs());
                let diff = (got - t).abs();
                let ratio = diff / (1e-4 * t.abs().max(1.0));
                // A NaN anywhere is a failure, never hidden by a comparison.
                let (diff, ratio) = if ratio.is_nan() {
                    (f32::INFINITY, f32::INFINITY)
                } else {
                    (diff, ratio)
                };
                if diff > self.max_abs {
                    self.max_abs = diff;
                }
                if ratio > self.max_ratio || self.worst_at.is_empty() {
                    self.max_ratio = ratio;
                    self.worst_at = format!("{key}[{i},{j}] kiln {got} torch {t}");
                }
                if ratio > 1.0 && self.failures.len() < 10 {
                    self.failures.push(format!(
                        "{key}[{i},{j}]: kiln {got}, torch {t}, |diff| {diff:.3e}"
                    ));
                }
            }
        }
    }
}

/// Regenerates fixture `name` (after `tweak`), loads it through `Classifier`, and compares the
/// logits of both inputs with PyTorch's.
fn run_parity(name: &str, label: &str, tweak: impl FnOnce(&mut Manifest)) -> Agreement {
    let start = Instant::now();
    let mut m = read_manifest(name);
    tweak(&mut m);
    let torch = read_torch_logits(name);
    let file = TempFile::new(name);
    write_weights(&m, &file.0);
    let classifier = Classifier::builder()
        .weights(&file.0)
        .build()
        .unwrap_or_else(|e| panic!("{name}: loading {}: {e}", file.0.display()));
    drop(file);
    assert_eq!(classifier.spec().architecture, m.architecture);
    let loaded = start.elapsed();

    let mut agreement = Agreement::default();
    for input in &m.inputs {
        let &[n, c, h, w] = input.shape.as_slice() else {
            panic!("{name}: input {} is not NCHW", input.name)
        };
        let values = input.values();
        let batch: Vec<ImageTensor> = values
            .chunks_exact(c * h * w)
            .map(|d| ImageTensor {
                data: d.to_vec(),
                shape: [c, h, w],
            })
            .collect();
        assert_eq!(batch.len(), n);
        let logits = classifier
            .logits(&batch)
            .unwrap_or_else(|e| panic!("{name} {h}x{w}: {e}"));
        let key = format!("{h}x{w}");
        let want = torch
            .get(&key)
            .unwrap_or_else(|| panic!("{name}: no torch logits `{key}`"));
        agreement.compare(&key, &logits, want);
    }
    println!(
        "parity {label:18} worst |diff| {:.3e}  worst diff/tol {:.4}  max |torch| {:.3}  ({})  load {:.1}s total {:.1}s",
        agreement.max_abs,
        agreement.max_ratio,
        agreement.max_torch,
        agreement.worst_at,
        loaded.as_secs_f32(),
        start.elapsed().as_secs_f32()
    );
    agreement
}

fn check_parity(name: &str) {
    let agreement = run_parity(name, name, |_| {});
    assert!(
        agreement.failures.is_empty(),
        "{name}: logits differ from PyTorch beyond 1e-4 * max(1, |torch|):\n  {}",
        agreement.failures.join("\n  ")
    );
}

macro_rules! parity_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_parity(stringify!($name));
            }
        )*
    };
}

parity_tests!(
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    wide_resnet50_2,
    resnext50_32x4d,
    mobilenet_v2_w050,
    mobilenet_v2_w075,
    mobilenet_v2_w100,
    mobilenet_v2_w140,
    mobilenet_v3_small,
    mobilenet_v3_large,
);

/// Batches take other paths with several threads (ResNet: the early stages one image per
/// thread, the later ones the whole batch per layer): the same logits, on 1 and 3 threads,
/// whatever the machine's core count.
#[test]
fn resnet_batches_on_any_thread_count() {
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        for name in ["resnet18", "resnet50"] {
            let label = format!("{name} {threads} thr");
            let agreement = pool.install(|| run_parity(name, &label, |_| {}));
            assert!(
                agreement.failures.is_empty(),
                "{label}: {}",
                agreement.failures.join("\n  ")
            );
        }
    }
}

/// A batch larger than the thread count: ResNet's later stages then run groups of several
/// images per thread. Five images (the fixture's two, repeated) on two threads match PyTorch's
/// logits for each.
#[test]
fn resnet_batch_in_groups_matches_torch() {
    let name = "resnet50";
    let m = read_manifest(name);
    let torch = read_torch_logits(name);
    let file = TempFile::new("resnet50-groups");
    write_weights(&m, &file.0);
    let classifier = Classifier::builder()
        .weights(&file.0)
        .build()
        .expect("resnet50");
    let input = m
        .inputs
        .iter()
        .find(|i| i.shape[2..] == [224, 224])
        .expect("a 224x224 input");
    let (c, h, w) = (input.shape[1], input.shape[2], input.shape[3]);
    let values = input.values();
    let images: Vec<ImageTensor> = values
        .chunks_exact(c * h * w)
        .map(|d| ImageTensor {
            data: d.to_vec(),
            shape: [c, h, w],
        })
        .collect();
    let order = [0, 1, 0, 1, 0];
    let batch: Vec<ImageTensor> = order.iter().map(|&i| images[i].clone()).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool");
    let logits = pool.install(|| classifier.logits(&batch)).expect("forward");
    let (shape, want) = &torch["224x224"];
    let classes = shape[1];
    let want: Vec<f32> = order
        .iter()
        .flat_map(|&i| want[i * classes..(i + 1) * classes].to_vec())
        .collect();
    let mut agreement = Agreement::default();
    agreement.compare("224x224 x5", &logits, &(vec![order.len(), classes], want));
    assert!(
        agreement.failures.is_empty(),
        "{}",
        agreement.failures.join("\n  ")
    );
}

/// A fine-tuned head of another width loads: the class count comes from `fc.weight`.
#[test]
fn resnet18_ten_class_head() {
    let mut m = read_manifest("resnet18");
    m.num_classes = 10;
    for e in &mut m.tensors {
        if e.name.starts_with("fc.") {
            e.shape[0] = 10;
        }
    }
    let file = TempFile::new("resnet18-10");
    write_weights(&m, &file.0);
    let classifier = Classifier::builder()
        .weights(&file.0)
        .build()
        .expect("10-class resnet18");
    let img = ImageTensor {
        data: recipe_values("input/10-class", 3 * 64 * 80, 0.0, 1.0),
        shape: [3, 64, 80],
    };
    let logits = classifier.logits(&[img]).expect("forward");
    assert_eq!((logits.len(), logits[0].len()), (1, 10));
    assert!(logits[0].iter().all(|v| v.is_finite()));
}

/// The comparison is not vacuous: scaling one deep convolution's weights by 1.001 is caught.
#[test]
fn resnet18_perturbed_weight_is_detected() {
    let agreement = run_parity("resnet18", "resnet18 perturbed", |m| {
        let e = m
            .tensors
            .iter_mut()
            .find(|e| e.name == "layer3.1.conv1.weight")
            .expect("tensor");
        e.b *= 1.001;
    });
    assert!(
        !agreement.failures.is_empty(),
        "a 0.1% weight change went unnoticed: {agreement:?}"
    );
}

/// The MobileNetV3 comparison is not vacuous either: scaling one squeeze-excite gate's weights
/// (small) and one hard-swish block's depthwise weights (large) by 1.02 is caught. Their recipe
/// logits are small (|torch| < 0.5), so the 0.1% of the ResNet-18 check moves them by only
/// ~1e-5, under the shared tolerance; kiln's own difference is below 1e-6.
#[test]
fn mobilenet_v3_perturbed_weights_are_detected() {
    for (name, tensor) in [
        ("mobilenet_v3_small", "features.9.block.2.fc2.weight"),
        ("mobilenet_v3_large", "features.8.block.1.0.weight"),
    ] {
        let agreement = run_parity(name, &format!("{name} perturbed"), |m| {
            let e = m
                .tensors
                .iter_mut()
                .find(|e| e.name == tensor)
                .expect("tensor");
            e.b *= 1.02;
        });
        assert!(
            !agreement.failures.is_empty(),
            "{name}: a 2% change of {tensor} went unnoticed: {agreement:?}"
        );
    }
}

/// A user's own fine-tuned ResNet through the command line: weights without an embedded spec,
/// a spec file beside them, and a 10-name label file.
#[test]
fn user_resnet_with_own_classes_through_cli() {
    let mut m = read_manifest("resnet18");
    m.num_classes = 10;
    for e in &mut m.tensors {
        if e.name.starts_with("fc.") {
            e.shape[0] = 10;
        }
    }
    let weights = TempFile::new("user-resnet18");
    write_weights(&m, &weights.0);
    // Strip the embedded spec: the user supplies one with --spec.
    let bytes = std::fs::read(&weights.0).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                TensorView::new(v.dtype(), v.shape().to_vec(), v.data()).unwrap(),
            )
        })
        .collect();
    let bare = TempFile::new("user-resnet18-bare");
    safetensors::serialize_to_file(views, None, &bare.0).unwrap();

    let dir = std::env::temp_dir().join(format!("kiln-user-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = Preset::TorchvisionImagenet.spec("resnet18", 10);
    std::fs::write(dir.join("spec.json"), spec.to_json()).unwrap();
    let names: String = (0..10).map(|i| format!("part-{i}\n")).collect();
    std::fs::write(dir.join("labels.txt"), names).unwrap();
    std::fs::write(dir.join("five.txt"), "a\nb\nc\nd\ne\n").unwrap();
    let img = dir.join("img.png");
    image::RgbImage::from_fn(120, 90, |x, y| image::Rgb([x as u8, y as u8, 90]))
        .save(&img)
        .unwrap();

    let kiln = |extra: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.args([
            "classify", "--model", "resnet18", "--format", "jsonl", "--top-k", "3",
        ]);
        c.arg("--weights").arg(&bare.0).arg(&img).args(extra);
        c.output().unwrap()
    };
    let spec_arg = dir.join("spec.json");
    let spec_arg = spec_arg.to_str().unwrap();
    let labels = dir.join("labels.txt");
    let ok = kiln(&["--spec", spec_arg, "--labels", labels.to_str().unwrap()]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let v: Value = serde_json::from_slice(&ok.stdout).unwrap();
    let label = v["top"][0]["label"].as_str().unwrap();
    assert!(label.starts_with("part-"), "{v}");
    assert!(v["top"][0]["index"].as_u64().unwrap() < 10);

    // No spec anywhere: refused, saying how to provide one.
    let none = kiln(&[]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no training spec"));
    // fc rows (10) vs a 5-name label file.
    let five = dir.join("five.txt");
    let bad = kiln(&["--spec", spec_arg, "--labels", five.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("5 names") && err.contains("10 classes"),
        "{err}"
    );
    // A spec claiming 1000 classes for a 10-row fc.
    std::fs::write(
        dir.join("spec1000.json"),
        Preset::TorchvisionImagenet.spec("resnet18", 1000).to_json(),
    )
    .unwrap();
    let s1000 = dir.join("spec1000.json");
    let bad = kiln(&["--spec", s1000.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("`fc.weight`") && err.contains("10 rows") && err.contains("1000"),
        "{err}"
    );
    // Weights of another architecture.
    std::fs::write(
        dir.join("spec50.json"),
        Preset::TorchvisionImagenet.spec("resnet50", 10).to_json(),
    )
    .unwrap();
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    let s50 = dir.join("spec50.json");
    let wrong = c
        .args([
            "classify",
            "--model",
            "resnet50",
            "--spec",
            s50.to_str().unwrap(),
            "--weights",
        ])
        .arg(&bare.0)
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("weights do not fit `resnet50`"));
    let _ = std::fs::remove_dir_all(&dir);
}
