//! Hugging Face transformers models as transformers 5.24 runs them, through both of its
//! image-processor backends, loaded from a local directory and from a (pre-filled, offline)
//! hub cache.
//!
//! `tests/fixtures/hf/` holds what `python/make_hf_fixtures.py` recorded: a transformers
//! `ResNetForImageClassification` (resnet18 layout, 5 classes) whose weights are the
//! "kiln-fixture-v1" recipe listed in `weights.json` under transformers' own tensor names
//! (regenerated here bit for bit, so the 45 MB file is not committed), and, per processor
//! config, `config.json` + `preprocessor_config.json` as `save_pretrained` wrote them and
//! `expected.json`: transformers' probabilities and the hash of the uint8 image after resize and
//! crop, for the PIL backend and the torchvision backend, on four PIL-decoded photos. The
//! `mobilenet_v2_*` cases are transformers `MobileNetV2ForImageClassification` models with their
//! `MobileNetV2ImageProcessor` (TensorFlow "SAME" padding or not, depth multipliers 1.0, 0.5,
//! 0.35, 1001 or 5 classes), each with its own `weights.json` recipe.
//!
//! Every probability must be within 1e-4 of transformers' for the backend in use, and the uint8
//! image before rescaling equal to transformers' byte for byte.

mod common;

use common::{recipe_values, shared};
use kiln_preprocess::hubspec::HfBackend;
use kiln_preprocess::Pipeline;
use kiln_runtime::hub::{self, HubOptions};
use kiln_runtime::Classifier;
use serde_json::Value;
use std::path::{Path, PathBuf};

const MODELS: &[&str] = &[
    "convnext_224_bicubic",
    "convnext_224_bilinear_crop090",
    "convnext_384_warp",
    "vit_224_nearest",
    "vit_224_lanczos",
    "vit_224_bilinear",
    "vit_200x240_bicubic",
    "mobilenet_v2_default_1001",
    "mobilenet_v2_050_torchpad",
    "mobilenet_v2_035_odd",
];

/// PIL-backend cases allowed to differ from Pillow 13 (reported, not failed). Empty since
/// `kiln_preprocess::pil` runs Pillow's pass order and its NEAREST: every case must match.
const KNOWN_PIL_RESAMPLER_GAPS: &[(&str, &str)] = &[];

fn fixtures() -> PathBuf {
    common::repo().join("tests/fixtures/hf")
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("kiln-hf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `model.safetensors` with transformers' names, regenerated from the recipe in `weights.json`
/// (the ResNet's, shared by the processor cases) or `MODEL/weights.json` (each MobileNetV2).
fn recipe_weights_of(manifest: &Path) -> Vec<u8> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    assert_eq!(v["recipe"], "kiln-fixture-v1");
    let mut tensors = vec![];
    for e in v["tensors"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let (a, b) = (
            e["a"].as_f64().unwrap() as f32,
            e["b"].as_f64().unwrap() as f32,
        );
        let vals = recipe_values(&name, shape.iter().product(), a, b);
        let bytes: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        tensors.push((name, shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn recipe_weights() -> Vec<u8> {
    recipe_weights_of(&fixtures().join("weights.json"))
}

fn expected(model: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(model).join("expected.json")).unwrap(),
    )
    .unwrap()
}

/// A directory as `save_pretrained` leaves it: the committed configs and the weights.
fn model_dir(root: &Path, model: &str, weights: &Path) -> PathBuf {
    let d = root.join(model);
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "preprocessor_config.json"] {
        std::fs::copy(fixtures().join(model).join(f), d.join(f)).unwrap();
    }
    let w = d.join("model.safetensors");
    if std::fs::hard_link(weights, &w).is_err() {
        std::fs::copy(weights, &w).unwrap();
    }
    d
}

/// The same files as a hub cache holds them after a download of `hf:kiln-test/MODEL`.
fn fill_cache(cache: &Path, model: &str, dir: &Path) -> String {
    let repo = cache.join(format!("models--kiln-test--{model}"));
    let commit = format!("{:040x}", common::fnv1a64(model));
    let snap = repo.join("snapshots").join(&commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), &commit).unwrap();
    for f in [
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
    ] {
        if std::fs::hard_link(dir.join(f), snap.join(f)).is_err() {
            std::fs::copy(dir.join(f), snap.join(f)).unwrap();
        }
    }
    format!("hf:kiln-test/{model}")
}

fn fnv_hex(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

struct Worst {
    prob: f32,
    cases: usize,
}

/// Checks one resolved model against transformers' record for `backend`.
fn check(
    m: &hub::HubModel,
    exp: &Value,
    backend: &str,
    what: &str,
    worst: &mut Worst,
    failures: &mut Vec<String>,
) {
    let want_pipeline = match backend {
        "pil" => Pipeline::TransformersPil,
        _ => Pipeline::TransformersTorchvision,
    };
    assert_eq!(m.spec.pipeline, want_pipeline, "{what}");
    let classifier = m.apply_to(Classifier::builder()).build().unwrap();
    let images = exp["backends"][backend]["images"].as_object().unwrap();
    for (photo, row) in images {
        let model = what.split(' ').next().unwrap_or("");
        let known = backend == "pil" && KNOWN_PIL_RESAMPLER_GAPS.contains(&(model, photo.as_str()));
        let mut local = vec![];
        let failures_out = &mut *failures;
        let failures = &mut local;
        let path = shared().join("reference/decoded").join(photo);
        let img = kiln_preprocess::decode_file(&path, &Default::default())
            .unwrap()
            .rgb;
        // The pixel step: the uint8 image transformers had before rescale/normalise.
        let g = kiln_preprocess::transform::geometry(&img, &m.spec);
        let shape: Vec<u64> = row["geometry_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            shape,
            vec![g.height() as u64, g.width() as u64, 3],
            "{what} {photo}"
        );
        if fnv_hex(g.as_raw()) != row["geometry_fnv1a64"].as_str().unwrap() {
            failures.push(format!(
                "{what} {photo}: the uint8 image after resize+crop differs from transformers'"
            ));
        }
        let want: Vec<f32> = row["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        // Every class, not only the top few (1001 for the MobileNetV2 with Google's classes).
        let pred = classifier
            .classify_images(&[img], want.len())
            .unwrap()
            .remove(0);
        assert_eq!(pred.top.len(), want.len());
        for c in &pred.top {
            let d = (c.prob - want[c.index]).abs();
            if !known {
                worst.prob = worst.prob.max(d);
            }
            if d > 1e-4 {
                failures.push(format!(
                    "{what} {photo}: class {} kiln {} transformers {} (|diff| {d:e})",
                    c.index, c.prob, want[c.index]
                ));
            }
        }
        if known {
            if !failures.is_empty() {
                println!("known PIL-resampler gap: {}", failures.join("; "));
            }
        } else {
            failures_out.append(failures);
            worst.cases += 1;
        }
    }
}

#[test]
fn transformers_models_through_local_dirs_and_the_hub_cache() {
    let tmp = TempDir::new("models");
    let resnet_weights = tmp.0.join("weights.safetensors");
    std::fs::write(&resnet_weights, recipe_weights()).unwrap();
    let cache = tmp.0.join("cache");
    let opts = HubOptions {
        endpoint: "http://127.0.0.1:9".into(),
        cache_dir: cache.clone(),
        offline: true,
        token: None,
        progress: false,
        retries: 0,
        timeout: std::time::Duration::from_secs(10),
    };
    let mut worst = Worst {
        prob: 0.0,
        cases: 0,
    };
    let mut failures = vec![];
    for model in MODELS {
        let exp = expected(model);
        assert_eq!(exp["transformers"], "5.24.0");
        let own = fixtures().join(model).join("weights.json");
        let weights = if own.is_file() {
            let w = tmp.0.join(format!("{model}.safetensors"));
            std::fs::write(&w, recipe_weights_of(&own)).unwrap();
            w
        } else {
            resnet_weights.clone()
        };
        let dir = model_dir(&tmp.0.join("dirs"), model, &weights);
        let hub_ref = fill_cache(&cache, model, &dir);
        let r = kiln_runtime::HubRef::parse(&hub_ref).unwrap();
        // Written by transformers 5: the default processor is the torchvision backend.
        let m = hub::resolve_dir(&dir, &opts, None).unwrap();
        check(
            &m,
            &exp,
            "torchvision",
            &format!("{model} dir (default)"),
            &mut worst,
            &mut failures,
        );
        let m = hub::resolve_ref_with(&r, &opts, None).unwrap();
        assert!(m.downloaded.is_empty());
        check(
            &m,
            &exp,
            "torchvision",
            &format!("{model} hub (default)"),
            &mut worst,
            &mut failures,
        );
        let m = hub::resolve_dir(&dir, &opts, Some(HfBackend::Pil)).unwrap();
        check(
            &m,
            &exp,
            "pil",
            &format!("{model} dir (pil)"),
            &mut worst,
            &mut failures,
        );
        let m = hub::resolve_ref_with(&r, &opts, Some(HfBackend::Pil)).unwrap();
        check(
            &m,
            &exp,
            "pil",
            &format!("{model} hub (pil)"),
            &mut worst,
            &mut failures,
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    println!(
        "{} image/backend/path cases: uint8 geometry equal to transformers' in all, worst probability |diff| {:e}",
        worst.cases, worst.prob
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn command_line_reads_a_local_model_directory() {
    let tmp = TempDir::new("cli");
    let weights = tmp.0.join("weights.safetensors");
    std::fs::write(&weights, recipe_weights()).unwrap();
    let model = "convnext_224_bicubic";
    let dir = model_dir(&tmp.0, model, &weights);
    let exp = expected(model);
    let photo = "n01440764_tench.png";
    let path = shared().join("reference/decoded").join(photo);
    for (backend, args) in [
        ("torchvision", vec![]),
        ("pil", vec!["--hf-backend", "pil"]),
    ] {
        let out = std::process::Command::new(common::kiln_bin())
            .args(["classify", "--format", "jsonl", "--top-k", "5", "--model"])
            .arg(&dir)
            .args(&args)
            .arg(&path)
            .env("HF_HUB_CACHE", tmp.0.join("cache"))
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = &exp["backends"][backend]["images"][photo]["probs"];
        for t in v["top"].as_array().unwrap() {
            let i = t["index"].as_u64().unwrap() as usize;
            let d = (t["prob"].as_f64().unwrap() - want[i].as_f64().unwrap()).abs();
            // jsonl prints probabilities rounded to 4 decimals.
            assert!(d <= 1e-4 + 5e-5, "{backend} class {i}: {d}");
            assert_eq!(t["label"], format!("class {i}"));
        }
    }
    let out = std::process::Command::new(common::kiln_bin())
        .arg("inspect")
        .arg(&dir)
        .env("HF_HUB_CACHE", tmp.0.join("cache"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("resnet18") && text.contains("transformers-torchvision"),
        "{text}"
    );
    // transformers' MobileNetV2: inspect names kiln's architecture and its TensorFlow padding.
    let mdir = tmp.0.join("mnv2");
    let mw = tmp.0.join("mnv2.safetensors");
    std::fs::write(
        &mw,
        recipe_weights_of(&fixtures().join("mobilenet_v2_default_1001/weights.json")),
    )
    .unwrap();
    let mdir = model_dir(&mdir, "mobilenet_v2_default_1001", &mw);
    let out = std::process::Command::new(common::kiln_bin())
        .arg("inspect")
        .arg(&mdir)
        .env("HF_HUB_CACHE", tmp.0.join("cache"))
        .output()
        .unwrap();
    let mtext = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        mtext.contains("mobilenet_v2")
            && mtext.contains("tf_padding")
            && mtext.contains("MobileNetV2ForImageClassification"),
        "{mtext}"
    );
    // A processor whose filter kiln does not implement is refused, naming the field.
    let pre = dir.join("preprocessor_config.json");
    let t = std::fs::read_to_string(&pre)
        .unwrap()
        .replace("\"resample\": 3", "\"resample\": 4");
    std::fs::write(&pre, t).unwrap();
    let out = std::process::Command::new(common::kiln_bin())
        .args(["classify", "--model"])
        .arg(format!("hf-dir:{}", dir.display()))
        .arg(&path)
        .env("HF_HUB_CACHE", tmp.0.join("cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("resample") && err.contains("preprocessor_config.json"),
        "{err}"
    );
}
