//! Preprocessing equals torchvision's, element by element, from identical decoded pixels.
//!
//! `../shared/reference/preprocess.safetensors` was made by torchvision's own transforms (see its
//! README); `decoded/*.png` hold exactly the pixels PIL decoded, so any difference here is ours.

use kiln_preprocess::{decode_file, preprocess, DecodeOptions, Preset, TrainingSpec};
use std::path::PathBuf;

fn shared() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = std::env::var_os("KILN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared"));
    assert!(
        p.join("reference/preprocess.safetensors").exists(),
        "reference data not found at {} (set KILN_SHARED)",
        p.display()
    );
    p
}

/// Compares every element with the reference; returns (max, mean) absolute difference in [0, 1]
/// pixel units (the difference after normalisation, times std).
fn compare(
    pipeline: &str,
    spec: &TrainingSpec,
    unit_per_value: [f32; 3],
    from_jpeg: bool,
) -> Vec<(String, f32, f32)> {
    let dir = shared().join("reference");
    let bytes = std::fs::read(dir.join("preprocess.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut rows = vec![];
    let mut names: Vec<_> = st
        .names()
        .into_iter()
        .filter(|n| n.starts_with(pipeline))
        .collect();
    names.sort();
    assert_eq!(names.len(), 12, "12 reference photos for {pipeline}");
    for name in names {
        let file = name.split('/').nth(1).unwrap();
        let view = st.tensor(name).unwrap();
        assert_eq!(view.shape(), &[3, 224, 224]);
        let want: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let src = if from_jpeg {
            shared().join("imagenet-sample").join(file)
        } else {
            dir.join("decoded").join(file.replace(".JPEG", ".png"))
        };
        let img = decode_file(&src, &DecodeOptions::default()).unwrap();
        let got = preprocess(&img.rgb, spec);
        assert_eq!(got.shape, [3, 224, 224]);
        let (mut max, mut sum) = (0f32, 0f64);
        for (i, (a, b)) in got.data.iter().zip(&want).enumerate() {
            let d = (a - b).abs() * unit_per_value[i / (224 * 224)];
            max = max.max(d);
            sum += d as f64;
        }
        rows.push((file.to_string(), max, (sum / want.len() as f64) as f32));
    }
    rows
}

fn check(pipeline: &str, spec: TrainingSpec, unit: [f32; 3]) {
    let rows = compare(pipeline, &spec, unit, false);
    let mut worst = 0f32;
    for (file, max, mean) in &rows {
        println!(
            "{pipeline} {file}: max |diff| = {:.5} ({:.2}/255), mean = {:.6}",
            max,
            max * 255.0,
            mean
        );
        worst = worst.max(*max);
    }
    println!(
        "{pipeline}: worst element {:.5} in [0,1] units ({:.2}/255)",
        worst,
        worst * 255.0
    );
    for (file, max, _) in rows {
        assert!(
            max <= 1.0 / 255.0 + 1e-6,
            "{pipeline}/{file}: {max} > 1/255"
        );
        // Stronger than the bar: our resampler is a port of Pillow's fixed-point code, so from
        // identical pixels the result is identical up to float rounding of the normalisation.
        assert!(
            max <= 1e-5,
            "{pipeline}/{file}: {max}: resampling no longer bit-exact with PIL"
        );
    }
}

#[test]
fn torchvision_imagenet_within_one_level() {
    let spec = Preset::TorchvisionImagenet.spec("mobilenet_v2", 1000);
    // Normalised values are (x - mean) / std; a difference d there is d * std in [0,1] units.
    let unit = [spec.std[0], spec.std[1], spec.std[2]];
    check("torchvision_imagenet", spec, unit);
}

#[test]
fn tf_lite_bicubic_within_one_level() {
    let spec = Preset::TfEfficientNetLite.spec("efficientnet_lite0", 1000);
    // (x*255 - 127) / 128 on the reference side: one unit there is 128/255 in [0,1] units.
    check("tf_lite_bicubic", spec, [128.0 / 255.0; 3]);
}

/// End to end from the JPEG files: kiln's JPEG decoder gives PIL's pixels, so the tensors equal
/// torchvision's (fed by PIL) up to float rounding, as from the decoded PNGs.
#[test]
fn jpeg_end_to_end_equals_torchvision() {
    let spec = Preset::TorchvisionImagenet.spec("mobilenet_v2", 1000);
    let unit = [spec.std[0], spec.std[1], spec.std[2]];
    let rows = compare("torchvision_imagenet", &spec, unit, true);
    let (mut worst, mut mean) = (0f32, 0f32);
    for (file, max, m) in &rows {
        println!(
            "jpeg {file}: max {:.2}/255, mean {:.3}/255",
            max * 255.0,
            m * 255.0
        );
        worst = worst.max(*max);
        mean += m / rows.len() as f32;
    }
    println!(
        "jpeg end to end: worst {:.2}/255, mean {:.3}/255",
        worst * 255.0,
        mean * 255.0
    );
    assert!(
        worst <= 1e-5,
        "from the JPEGs, a tensor differs from torchvision's by {worst}: decoding is no longer PIL's"
    );
}
