//! `kiln convert` on checkpoints as training code saves them: wrapper prefixes, checkpoint dicts,
//! keys that fit nothing; and a fine-tuned, prefixed MobileNetV2 with a squash-resize spec
//! converted with one command and agreeing with PyTorch on real photos.
//!
//! Fixtures: `tests/fixtures/checkpoints/`, `tests/fixtures/finetune/`, made by
//! `python/make_checkpoint_fixtures.py`.

mod common;

use kiln_runtime::{convert_pth, convert_pth_with, Classifier, TrainingSpec};
use safetensors::SafeTensors;
use std::path::PathBuf;
use std::process::Command;

fn out_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-checkpoints-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn every_checkpoint_shape_converts_to_the_architecture_keys() {
    let dir = common::repo().join("tests/fixtures/checkpoints");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let spec_json = std::fs::read_to_string(common::repo().join("weights/mobilenet_v2.spec.json"))
        .unwrap()
        .replace("\"mobilenet_v2\"", "\"resnet18\"");
    let mut spec = TrainingSpec::from_json(&spec_json).unwrap();
    spec.arch_params.clear();
    for (file, want) in manifest.as_object().unwrap() {
        let out = out_path(&format!("{file}.safetensors"));
        if want["tensors"].is_null() {
            // Keys that fit no architecture: with a spec, a clear error naming the keys.
            let err = convert_pth(&dir.join(file), &out, Some(&spec))
                .expect_err("unfit keys must be refused")
                .to_string();
            for part in [
                "resnet18",
                "conv1.weight",
                "fc.weight",
                "trunk.conv.weight",
                "--strip-prefix",
            ] {
                assert!(err.contains(part), "{file}: `{part}` missing from: {err}");
            }
            continue;
        }
        for with_spec in [false, true] {
            let r = convert_pth(&dir.join(file), &out, with_spec.then_some(&spec))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(r.dict_key.as_deref(), want["dict_key"].as_str(), "{file}");
            assert_eq!(
                r.stripped_prefix.as_deref(),
                want["prefix"].as_str(),
                "{file}"
            );
            let bytes = std::fs::read(&out).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let tensors = want["tensors"].as_object().unwrap();
            let mut names = st.names();
            names.sort();
            let mut want_names: Vec<&String> = tensors.keys().collect();
            want_names.sort();
            assert_eq!(names, want_names, "{file}: keys");
            for (k, v) in tensors {
                let got: Vec<f32> = st
                    .tensor(k)
                    .unwrap()
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                let want: Vec<f32> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(got, want, "{file}: {k}");
            }
        }
    }
    // model + model_ema: the model's own weights are used and the EMA ones reported.
    let r = convert_pth(
        &dir.join("model_and_ema.pth"),
        &out_path("ema2.safetensors"),
        None,
    )
    .unwrap();
    assert_eq!(r.other_dict_keys, vec!["model_ema".to_string()]);
    // An explicit prefix is honoured; one no key has is an error.
    let r = convert_pth_with(
        &dir.join("model_state_dict.pth"),
        &out_path("forced.safetensors"),
        None,
        Some("backbone."),
    )
    .unwrap();
    assert_eq!(r.stripped_prefix.as_deref(), Some("backbone."));
    let err = convert_pth_with(
        &dir.join("bare.pth"),
        &out_path("bad.safetensors"),
        None,
        Some("nothere."),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("nothere."), "{err}");
}

#[test]
fn finetuned_wrapped_squash_model_agrees_with_pytorch() {
    let ft = common::repo().join("tests/fixtures/finetune");
    let out = out_path("finetuned.safetensors");
    let run = Command::new(common::kiln_bin())
        .arg("convert")
        .arg(ft.join("mobilenet_v2_wrapped.pth"))
        .arg(&out)
        .arg("--spec")
        .arg(ft.join("spec.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("`model_state_dict`"), "{stdout}");
    assert!(stdout.contains("`backbone.`"), "{stdout}");

    let classifier = Classifier::builder().weights(&out).build().unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ft.join("reference.json")).unwrap()).unwrap();
    let decoded = common::shared().join("reference/decoded");
    let mut worst = 0f32;
    let probs = reference["probabilities"].as_object().unwrap();
    assert_eq!(probs.len(), 12);
    for (file, want) in probs {
        let p = classifier.classify_path(&decoded.join(file), 10).unwrap();
        assert_eq!(p.top.len(), 10);
        for s in &p.top {
            let w = want[s.index].as_f64().unwrap() as f32;
            worst = worst.max((s.prob - w).abs());
        }
    }
    println!("fine-tuned wrapped MobileNetV2, Resize((224, 224)): max |p - p_torch| = {worst:.2e} on 12 photos");
    assert!(worst <= 1e-4, "max probability difference {worst}");
}

/// Prefixed weights that were never converted (e.g. written with safetensors' own `save_file`
/// from a wrapper module) are refused with the prefix named and the way out, not with the
/// model's first missing tensor.
#[test]
fn unconverted_prefixed_weights_name_the_prefix() {
    let bytes = std::fs::read(common::shipped("mobilenet_v2")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (format!("backbone.{name}"), view))
        .collect();
    let path = out_path("wrapped_unconverted.safetensors");
    safetensors::serialize_to_file(renamed, None, &path).unwrap();
    let err = Classifier::builder()
        .weights(&path)
        .spec_file(common::repo().join("weights/mobilenet_v2.spec.json"))
        .build()
        .err()
        .expect("prefixed weights are refused");
    let msg = err.to_string();
    assert!(msg.contains("prefix `backbone.`"), "{msg}");
    assert!(msg.contains("backbone.classifier.1.weight"), "{msg}");
    assert!(msg.contains("kiln convert"), "{msg}");
}
