//! kiln's resize equals Pillow's `Image.resize` on every committed case, and its whole eval
//! transform equals torchvision's tensors bit for bit.
//!
//! The fixtures (`tests/fixtures/resize/`) were made by `python/make_resize_fixtures.py` with
//! Pillow 13.0.0 and torchvision 0.29.2 from `../shared/reference/decoded/*.png`, the pixels PIL
//! decoded, so no JPEG decoder takes part: any difference is kiln's resampling.

use kiln_preprocess::pil::{self, Filter};
use kiln_preprocess::spec::Resize;
use kiln_preprocess::{decode_file, preprocess, DecodeOptions, Preset};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resize")
}

fn decoded_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = std::env::var_os("KILN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared"))
        .join("reference/decoded");
    assert!(p.is_dir(), "{} not found (set KILN_SHARED)", p.display());
    p
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn load(file: &str) -> image::RgbImage {
    decode_file(&decoded_dir().join(file), &DecodeOptions::default())
        .unwrap()
        .rgb
}

#[test]
fn resize_equals_pillow_on_every_case() {
    let dir = fixtures();
    let mut sources = HashMap::new();
    let mut decoded: HashMap<String, image::RgbImage> = HashMap::new();
    for line in std::fs::read_to_string(dir.join("sources.txt"))
        .unwrap()
        .lines()
    {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let n: Vec<u32> = f[2..6].iter().map(|v| v.parse().unwrap()).collect();
        let full = decoded
            .entry(f[1].to_string())
            .or_insert_with(|| load(f[1]));
        let crop = image::imageops::crop_imm(full, n[0], n[1], n[2] - n[0], n[3] - n[1]).to_image();
        sources.insert(f[0].to_string(), crop);
    }
    let text = std::fs::read_to_string(dir.join("pillow_cases.txt")).unwrap();
    let (mut total, mut failed) = (0usize, vec![]);
    let mut per_filter: HashMap<&str, (usize, usize)> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let src = &sources[f[0]];
        let (w, h): (u32, u32) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        let out = match f[3] {
            "nearest" => pil::nearest(src, w, h),
            name => {
                let filter = match name {
                    "box" => Filter::Box,
                    "bilinear" => Filter::Bilinear,
                    "hamming" => Filter::Hamming,
                    "bicubic" => Filter::Bicubic,
                    "lanczos" => Filter::Lanczos,
                    other => panic!("unknown filter {other}"),
                };
                pil::resample(src, w, h, filter)
            }
        };
        total += 1;
        let e = per_filter.entry(f[3]).or_default();
        e.0 += 1;
        if hex(out.as_raw())[..16] != *f[5] {
            e.1 += 1;
            failed.push(line.to_string());
        }
    }
    let mut filters: Vec<_> = per_filter.into_iter().collect();
    filters.sort();
    for (name, (n, bad)) in &filters {
        println!("{name}: {} of {n} cases equal to Pillow", n - bad);
    }
    println!("{} of {total} cases equal to Pillow", total - failed.len());
    assert!(total >= 2000, "only {total} cases");
    assert!(
        failed.is_empty(),
        "{} of {total} cases differ from Pillow, e.g.:\n{}",
        failed.len(),
        failed[..failed.len().min(20)].join("\n")
    );
}

#[test]
fn eval_transforms_equal_torchvision_tensors_bit_for_bit() {
    let text = std::fs::read_to_string(fixtures().join("torchvision_transforms.jsonl")).unwrap();
    let mut images: HashMap<String, image::RgbImage> = HashMap::new();
    let (mut total, mut failed) = (0usize, vec![]);
    for line in text.lines().skip(1) {
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = c["file"].as_str().unwrap();
        let img = images.entry(file.to_string()).or_insert_with(|| load(file));
        let mut spec = Preset::TorchvisionImagenet.spec("test", 10);
        // Built from JSON so that fields added to `Resize` later take their defaults.
        let resize = |key: &str, value: &serde_json::Value| -> Resize {
            serde_json::from_value(serde_json::json!({
                key: value,
                "interpolation": c["interpolation"],
                "antialias": true,
            }))
            .unwrap()
        };
        spec.resize = if !c["resize_shorter_side"].is_null() {
            Some(resize("shorter_side", &c["resize_shorter_side"]))
        } else if !c["resize_size"].is_null() {
            Some(resize("size", &c["resize_size"]))
        } else {
            None
        };
        let shape: Vec<usize> = c["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        spec.input_size = [shape[1] as u32, shape[2] as u32];
        spec.center_crop = c["center_crop"]
            .as_array()
            .map(|a| [a[0].as_u64().unwrap() as u32, a[1].as_u64().unwrap() as u32]);
        let floats = |k: &str| -> Vec<f32> {
            c[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        };
        spec.mean = floats("mean");
        spec.std = floats("std");

        let geo = kiln_preprocess::transform::geometry(img, &spec);
        let t = preprocess(img, &spec);
        assert_eq!(t.shape.to_vec(), shape);
        let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        total += 1;
        let name = format!("{} on {file}", c["case"].as_str().unwrap());
        let pixels_ok = hex(geo.as_raw()) == c["pixels_sha256"].as_str().unwrap();
        let tensor_ok = hex(&bytes) == c["tensor_sha256"].as_str().unwrap();
        if !(pixels_ok && tensor_ok) {
            failed.push(format!(
                "{name}: pixels equal {pixels_ok}, tensor equal {tensor_ok}"
            ));
        }
    }
    println!(
        "{} of {total} eval transforms equal torchvision's tensors bit for bit",
        total - failed.len()
    );
    assert!(total >= 60);
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
