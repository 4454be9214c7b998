//! Class activation maps against PyTorch (`python/make_cam_fixtures.py`), and on real photos.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_preprocess::{decode_file, DecodeOptions, Preset};
use kiln_runtime::cam::{on_photo, upsample};
use kiln_runtime::{ClassSelect, Classifier, CropGeometry, Map};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::Value;

fn fixtures() -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    common::read_f32_tensors(&common::repo().join("tests/fixtures/cam/cam.safetensors"))
}

const PHOTOS: [&str; 3] = [
    "n01440764_tench",
    "n02097474_Tibetan_terrier",
    "n02676566_acoustic_guitar",
];

/// `|kiln - torch| <= 1e-4 · max(1, |torch|)` at every element, as the logit parity tests; the
/// worst ratio of difference to tolerance.
fn worst_ratio(got: &[f32], want: &[f32], what: &str) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: sizes");
    let mut worst = 0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ratio = (g - w).abs() / (1e-4 * w.abs().max(1.0));
        assert!(
            ratio <= 1.0,
            "{what}: element {i}: kiln {g} torch {w} (diff/tol {ratio:.3})"
        );
        worst = worst.max(ratio);
    }
    worst
}

/// A temporary file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The parity recipe's ResNet-18 (`tests/fixtures/parity/resnet18.json`) with the torchvision
/// ImageNet spec, as `make_cam_fixtures.py` builds it.
fn recipe_resnet18(dtype: candle_core::DType) -> Classifier {
    let path = common::repo().join("tests/fixtures/parity/resnet18.json");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = manifest["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let shape: Vec<usize> = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let name = e["name"].as_str().unwrap().to_string();
            let (a, b) = (
                e["a"].as_f64().unwrap() as f32,
                e["b"].as_f64().unwrap() as f32,
            );
            let values = common::recipe_values(&name, shape.iter().product(), a, b);
            (
                name,
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let spec = Preset::TorchvisionImagenet.spec("resnet18", 1000);
    let views = tensors.iter().map(|(n, s, d)| {
        (
            n.clone(),
            TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
        )
    });
    let meta = HashMap::from([(
        kiln_preprocess::SPEC_METADATA_KEY.to_string(),
        spec.to_json(),
    )]);
    // Tests run in parallel threads of one process: one file name per call.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = TempFile(std::env::temp_dir().join(format!(
        "kiln-cam-resnet18-{}-{n}.safetensors",
        std::process::id()
    )));
    safetensors::serialize_to_file(views, Some(meta), &file.0).unwrap();
    Classifier::builder()
        .weights(&file.0)
        .dtype(dtype)
        .build()
        .unwrap()
}

fn decoded(photo: &str) -> image::RgbImage {
    let p = common::shared().join(format!("reference/decoded/{photo}.png"));
    decode_file(&p, &DecodeOptions::default()).unwrap().rgb
}

/// The raw CAM of two classes (PyTorch's top-1 and another) on three photos equals
/// `features(x) · W` from PyTorch, for MobileNetV2, ResNet-18 and EfficientNet-Lite0; and the
/// map's mean plus the class bias is the class's logit (the map and the classification come
/// from one forward pass).
#[test]
fn raw_cam_matches_pytorch() {
    let fx = fixtures();
    let models: [(&str, Classifier); 3] = [
        (
            "mobilenet_v2",
            Classifier::builder()
                .weights(common::shipped("mobilenet_v2"))
                .build()
                .unwrap(),
        ),
        ("resnet18", recipe_resnet18(candle_core::DType::F32)),
        (
            "efficientnet_lite0",
            Classifier::builder()
                .weights(common::shipped("efficientnet_lite0"))
                .build()
                .unwrap(),
        ),
    ];
    for (name, classifier) in &models {
        let mut worst = 0f32;
        for photo in PHOTOS {
            let key = |k: &str| &fx[&format!("{name}/{photo}/{k}")];
            let classes: Vec<usize> = key("classes").1.iter().map(|&c| c as usize).collect();
            let (shape, want) = key("raw");
            let img = decoded(photo);
            let e = classifier
                .explain_image(&img, &ClassSelect::Classes(classes.clone()), 5)
                .unwrap();
            assert_eq!(
                e.prediction.top[0].index, classes[0],
                "{name} {photo}: top-1"
            );
            let hw = shape[1] * shape[2];
            for (i, cam) in e.cams.iter().enumerate() {
                let what = format!("{name} {photo} class {}", classes[i]);
                assert_eq!(cam.class.index, classes[i]);
                assert_eq!((cam.raw.h, cam.raw.w), (shape[1], shape[2]), "{what}");
                worst = worst.max(worst_ratio(
                    &cam.raw.data,
                    &want[i * hw..(i + 1) * hw],
                    &what,
                ));
                worst = worst.max(worst_ratio(&[cam.logit], &[key("logits").1[i]], &what));
                let mean = cam.raw.data.iter().map(|&v| v as f64).sum::<f64>() / hw as f64;
                let back = mean as f32 + cam.bias;
                assert!(
                    (back - cam.logit).abs() <= 1e-4 * cam.logit.abs().max(1.0),
                    "{what}: mean(map) + bias = {back}, logit {}",
                    cam.logit
                );
                let (ih, iw) = (
                    classifier.spec().input_size[0],
                    classifier.spec().input_size[1],
                );
                assert_eq!((cam.crop.h, cam.crop.w), (ih as usize, iw as usize));
                assert_eq!(
                    (cam.photo.w, cam.photo.h),
                    (img.width() as usize, img.height() as usize)
                );
            }
        }
        println!("cam parity {name:18} worst diff/tolerance {worst:.4}");
    }
}

/// The upsampling to the crop is `F.interpolate(bilinear, align_corners=False)`, and the map on
/// a 512×512 photo (resized to 256, cropped at 16: the crop covers photo pixels 32..480) is
/// PyTorch's upsampling of the raw map to 448×448 placed there.
#[test]
fn upsampling_matches_pytorch() {
    let fx = fixtures();
    let (shape, raw) = &fx[&format!("mobilenet_v2/{}/raw", PHOTOS[0])];
    let raw = Map {
        h: shape[1],
        w: shape[2],
        data: raw[..shape[1] * shape[2]].to_vec(),
    };
    let mut worst = 0f32;
    for (key, h, w) in [("upsample/224x224", 224, 224), ("upsample/61x45", 61, 45)] {
        let (s, want) = &fx[key];
        assert_eq!(s, &vec![h, w]);
        worst = worst.max(worst_ratio(&upsample(&raw, h, w).data, want, key));
    }
    let spec = Preset::TorchvisionImagenet.spec("mobilenet_v2", 1000);
    let geom = CropGeometry::of(&spec, 512, 512);
    assert_eq!(geom.resized, (256, 256));
    assert_eq!(geom.origin, (16, 16));
    let photo = on_photo(&raw, &geom);
    let (s, want) = &fx["upsample/448x448_every7"];
    let got: Vec<f32> = (0..s[0])
        .flat_map(|i| (0..s[1]).map(move |j| (i, j)))
        .map(|(i, j)| photo.at(32 + 7 * i, 32 + 7 * j))
        .collect();
    worst = worst.max(worst_ratio(&got, want, "photo 512x512"));
    assert!(photo.at(31, 100).is_nan() && photo.at(480, 100).is_nan());
    assert!(photo.at(100, 31).is_nan() && photo.at(100, 480).is_nan());
    assert!(photo.at(32, 32).is_finite() && photo.at(479, 479).is_finite());
    println!("cam upsampling worst diff/tolerance {worst:.4}");
}

/// On real photos where the animal is plainly localised (boxes drawn by hand, recorded in
/// `tests/fixtures/cam/boxes.json`), the shipped MobileNetV2's top-1 map peaks inside the
/// animal, and is on average higher inside the box than outside it.
#[test]
fn cam_peak_falls_on_the_object() {
    let boxes: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("tests/fixtures/cam/boxes.json")).unwrap(),
    )
    .unwrap();
    let classifier = Classifier::builder().build().unwrap();
    let dir = common::shared().join("imagenet-sample");
    for p in boxes["photos"].as_array().unwrap() {
        let file = p["file"].as_str().unwrap();
        let class = p["class"].as_u64().unwrap() as usize;
        let b: Vec<usize> = p["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let (e, _) = classifier
            .explain_path(&dir.join(file), &ClassSelect::Top(1), 1)
            .unwrap();
        let cam = &e.cams[0];
        assert_eq!(cam.class.index, class, "{file}: top-1");
        let (y, x) = cam.photo.argmax();
        let inside = |y: usize, x: usize| x >= b[0] && x < b[2] && y >= b[1] && y < b[3];
        let (mut sin, mut nin, mut sout, mut nout) = (0f64, 0usize, 0f64, 0usize);
        for v in 0..cam.photo.h {
            for u in 0..cam.photo.w {
                let m = cam.photo.at(v, u);
                if m.is_nan() {
                    continue;
                }
                if inside(v, u) {
                    sin += m as f64;
                    nin += 1;
                } else {
                    sout += m as f64;
                    nout += 1;
                }
            }
        }
        let (min, mout) = (sin / nin as f64, sout / nout.max(1) as f64);
        println!(
            "cam localisation {file:40} peak at (x {x}, y {y}), box {b:?}; mean inside {min:.2}, outside {mout:.2}"
        );
        assert!(
            inside(y, x),
            "{file}: peak (x {x}, y {y}) outside the box {b:?}"
        );
        assert!(min > mout, "{file}: mean inside {min} <= outside {mout}");
    }
}

/// A class by label or index; an unknown label or an index out of range is a clear error.
#[test]
fn classes_by_name_and_index() {
    let classifier = Classifier::builder().build().unwrap();
    assert_eq!(classifier.class_index("285").unwrap(), 285);
    assert_eq!(classifier.class_index("Egyptian cat").unwrap(), 285);
    assert_eq!(classifier.class_index("egyptian CAT").unwrap(), 285);
    let e = classifier.class_index("1000").unwrap_err().to_string();
    assert!(
        e.contains("out of range") && e.contains("1000 classes"),
        "{e}"
    );
    let e = classifier.class_index("Egyptian").unwrap_err().to_string();
    assert!(
        e.contains("no class is labelled `Egyptian`") && e.contains("285"),
        "{e}"
    );
    let img = decoded(PHOTOS[0]);
    let e = classifier
        .explain_image(&img, &ClassSelect::Classes(vec![7, 1000]), 5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("1000"), "{e}");
}

/// The maps on the path every other device takes (candle's ops, here in f64 on the CPU, where
/// kiln's f32 kernels do not run) equal the CPU kernels' maps; and the fast path's classification
/// is unchanged by asking for maps.
#[test]
fn candle_path_maps_match_kernel_path() {
    for (name, f32_model, f64_model) in [
        (
            "mobilenet_v2",
            Classifier::builder().build().unwrap(),
            Classifier::builder()
                .dtype(candle_core::DType::F64)
                .build()
                .unwrap(),
        ),
        (
            "efficientnet_lite0",
            Classifier::builder()
                .weights(common::shipped("efficientnet_lite0"))
                .build()
                .unwrap(),
            Classifier::builder()
                .weights(common::shipped("efficientnet_lite0"))
                .dtype(candle_core::DType::F64)
                .build()
                .unwrap(),
        ),
        (
            "resnet18",
            recipe_resnet18(candle_core::DType::F32),
            recipe_resnet18(candle_core::DType::F64),
        ),
    ] {
        let img = decoded(PHOTOS[1]);
        let a = f32_model
            .explain_image(&img, &ClassSelect::Top(2), 5)
            .unwrap();
        let b = f64_model
            .explain_image(&img, &ClassSelect::Top(2), 5)
            .unwrap();
        let plain = f32_model
            .classify_images(std::slice::from_ref(&img), 5)
            .unwrap()
            .remove(0);
        assert_eq!(
            a.prediction, plain,
            "{name}: explain's prediction is classify's"
        );
        let mut worst = 0f32;
        for (x, y) in a.cams.iter().zip(&b.cams) {
            assert_eq!(x.class.index, y.class.index);
            worst = worst.max(worst_ratio(&x.raw.data, &y.raw.data, name));
        }
        println!("cam {name}: f32 kernels vs candle f64 worst diff/tolerance {worst:.4}");
    }
}

/// `kiln explain` as a user runs it: a PNG (photo size plus a banner) and a `.npy` per image
/// and class; a file that fails is reported and the others are still explained (exit 1); an
/// unknown class is a usage error before any image is read (exit 2); TTA is refused.
#[test]
fn explain_command_line() {
    let out = std::env::temp_dir().join(format!("kiln-explain-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let photo = common::shared().join("imagenet-sample/n02077923_sea_lion.JPEG");
    let bad = out.join("not-an-image.jpg");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(&bad, b"this is not a JPEG").unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(common::kiln_bin())
            .arg("explain")
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&[
        bad.to_str().unwrap(),
        photo.to_str().unwrap(),
        "--top",
        "2",
        "--raw",
        "-o",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("not-an-image.jpg"), "{stderr}");
    assert!(
        stdout.contains("sea lion") && stdout.contains("top-1"),
        "{stdout}"
    );
    let png = image::open(out.join("n02077923_sea_lion.cam-150.png"))
        .unwrap()
        .to_rgb8();
    // The 500×375 photo, with the banner below it.
    assert_eq!(png.width(), 500);
    assert!(png.height() > 375 && png.height() < 500, "{}", png.height());
    let npy = std::fs::read(out.join("n02077923_sea_lion.cam-150.npy")).unwrap();
    assert!(npy.starts_with(b"\x93NUMPY"));
    assert_eq!(npy.len(), 128 + 7 * 7 * 4);
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        5,
        "two classes × (png, npy) + the bad input"
    );

    for (args, want) in [
        (vec!["--class", "no such animal"], "no class is labelled"),
        (vec!["--class", "1000"], "out of range"),
        (vec!["--tta", "flip"], "--tta none only"),
    ] {
        let mut all = vec![photo.to_str().unwrap(), "-o", out.to_str().unwrap()];
        all.extend(args);
        let o = run(&all);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{all:?}: {stderr}");
        assert!(stderr.contains(want), "{all:?}: {stderr}");
    }
    let o = run(&[
        photo.to_str().unwrap(),
        "--class",
        "otter",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("otter"));
    let _ = std::fs::remove_dir_all(&out);
}
