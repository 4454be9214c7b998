//! What each fuzz target does with its bytes, shared by the libFuzzer targets in
//! `fuzz_targets/` (nightly, `cargo +nightly fuzz run NAME`) and by the corpus replay test
//! `tests/fuzz_replay.rs` (stable, every CI run), so that an input which once crashed a target
//! is replayed through exactly the same code.
//!
//! Every function takes arbitrary bytes and must return normally: an `Err` from kiln is the
//! expected answer to bad input; a panic, an abort, a hang or a runaway allocation is a finding.
//! The assertions below are the properties an answer must have when it is `Ok`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use kiln_preprocess::{DecodeOptions, TrainingSpec};

/// The shipped MobileNetV2 spec.
pub const MOBILENET_V2_SPEC: &str = include_str!("../weights/mobilenet_v2.spec.json");
/// The shipped EfficientNet-Lite0 spec.
pub const EFFICIENTNET_LITE0_SPEC: &str = include_str!("../weights/efficientnet_lite0.spec.json");

/// Decoded images are capped at 4 Mpx here (the CLI's default is larger) so that one input
/// costs milliseconds, not seconds; the cap is the same code path as the default one.
pub const FUZZ_MAX_PIXELS: u64 = 1 << 22;

fn specs() -> &'static [TrainingSpec; 2] {
    static S: OnceLock<[TrainingSpec; 2]> = OnceLock::new();
    S.get_or_init(|| {
        [
            TrainingSpec::from_json(MOBILENET_V2_SPEC).expect("shipped spec"),
            TrainingSpec::from_json(EFFICIENTNET_LITE0_SPEC).expect("shipped spec"),
        ]
    })
}

/// Target `preprocess`: bytes → decode → validate → preprocess, as `kiln classify` does for
/// each file, with the shipped MobileNetV2 spec (inputs of even length) or the shipped
/// EfficientNet-Lite0 spec (odd length): one spec per input halves the cost of an execution,
/// and libFuzzer's length mutations send every input shape through both.
pub fn preprocess(data: &[u8]) {
    decode_and_preprocess(data, &specs()[data.len() % 2], "fuzz-input");
}

/// Decode → validate → preprocess, as `kiln classify` and the server do for one encoded image,
/// asserting what an accepted image and its tensor must satisfy.
fn decode_and_preprocess(data: &[u8], spec: &TrainingSpec, source: &str) {
    let opts = DecodeOptions {
        min_side: kiln_preprocess::decode::min_side_for_input(spec.input_size),
        max_pixels: FUZZ_MAX_PIXELS,
        ..Default::default()
    };
    let Ok(d) = kiln_preprocess::decode_bytes(data, source, &opts) else {
        return;
    };
    let (w, h) = d.rgb.dimensions();
    assert!(
        w >= opts.min_side && h >= opts.min_side,
        "{w}x{h} passed the minimum side"
    );
    assert!(
        w as u64 * h as u64 <= FUZZ_MAX_PIXELS,
        "{w}x{h} passed the pixel limit"
    );
    if kiln_preprocess::transform::check_resize_fits(w, h, spec, FUZZ_MAX_PIXELS, source).is_err() {
        return;
    }
    let t = kiln_preprocess::preprocess(&d.rgb, spec);
    let [c, th, tw] = t.shape;
    assert_eq!([th as u32, tw as u32], spec.input_size);
    assert_eq!(t.data.len(), c * th * tw);
    assert!(
        t.data.iter().all(|v| v.is_finite()),
        "non-finite pixel value"
    );
}

/// A file path private to this process for targets whose code under test reads a path.
fn scratch(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("kiln-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    });
    dir.join(name)
}

/// Target `weights`: bytes → safetensors → embedded spec → spec resolution → model
/// construction, as `kiln classify --weights FILE` does; a model that builds is run once.
pub fn weights(data: &[u8]) {
    let path = scratch("model.safetensors");
    std::fs::write(&path, data).expect("scratch file");
    let Ok(c) = kiln_runtime::Classifier::builder()
        .weights(&path)
        .decode_options(DecodeOptions {
            max_pixels: FUZZ_MAX_PIXELS,
            ..Default::default()
        })
        .build()
    else {
        return;
    };
    let img = image::RgbImage::from_pixel(40, 40, image::Rgb([120, 30, 200]));
    let t = c.preprocess(&img);
    if let Ok(logits) = c.logits(&[t]) {
        assert_eq!(logits.len(), 1);
        assert_eq!(logits[0].len(), c.spec().num_classes);
    }
}

/// Target `pth`: bytes → legacy or zip `.pth` reading → the tensors `kiln convert` would write.
pub fn pth(data: &[u8]) {
    let Ok(ck) = kiln_runtime::pth::read_pth_bytes(data, "fuzz.pth") else {
        return;
    };
    for (name, t) in &ck.tensors {
        let n: usize = t.shape.iter().product();
        assert_eq!(
            t.data.len(),
            n * t.dtype.bitsize() / 8,
            "tensor {name}: {} bytes for shape {:?} {:?}",
            t.data.len(),
            t.shape,
            t.dtype
        );
        if let Some(v) = t.to_f32() {
            assert_eq!(v.len(), n);
        }
    }
}

/// Target `config`: bytes → a kiln training spec, a timm `config.json`, a transformers
/// `config.json`, and a transformers `preprocessor_config.json` + `config.json` pair (the
/// input split at its first NUL byte), with every backend.
pub fn config(data: &[u8]) {
    use kiln_preprocess::hubspec::{self, HfBackend};
    let text = String::from_utf8_lossy(data);
    if let Ok(s) = TrainingSpec::from_json(&text) {
        // `from_json` validates; a spec it accepts must survive its own round trip.
        let again = TrainingSpec::from_json(&s.to_json()).expect("a valid spec's JSON re-reads");
        again
            .check_agrees(&s, "round trip")
            .expect("round trip agrees");
    }
    let _ = hubspec::detect_format(&text);
    if let Ok(h) = hubspec::spec_from_timm(&text) {
        h.spec.validate().expect("timm spec is valid");
    }
    let _ = hubspec::transformers_architecture(&text);
    let (pre, cfg) = match text.find('\0') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (
            &text[..],
            "{\"model_type\": \"mobilenet_v2\", \"num_labels\": 10}",
        ),
    };
    for backend in [None, Some(HfBackend::Pil), Some(HfBackend::Torchvision)] {
        if let Ok(h) = hubspec::spec_from_hf_with(pre, cfg, backend) {
            h.spec.validate().expect("transformers spec is valid");
        }
    }
    let _ = kiln_runtime::labels::parse_labels(&text);
}

/// Target `request`: bytes → an Open Inference Protocol request as the server reads it: the
/// REST body (JSON, or JSON + binary tensor data; the first two bytes pick the
/// `inference-header-content-length`), and the same bytes as a gRPC `ModelInferRequest`;
/// then the input checks and, for images, decoding and preprocessing as the server would.
pub fn request(data: &[u8]) {
    use kiln_serve::tensor::{check_input, TensorData};
    let (header, body) = match data {
        [a, b, rest @ ..] => {
            let n = u16::from_le_bytes([*a, *b]);
            // 0xffff: no header (all JSON); anything else is the header's value, which may lie.
            let h = (n != 0xffff).then(|| axum::http::HeaderValue::from(n));
            (h, rest)
        }
        _ => (None, data),
    };
    let mut candidates = vec![];
    if let Ok(p) = kiln_serve::rest::parse_infer_body(
        header.as_ref(),
        axum::body::Bytes::copy_from_slice(body),
    ) {
        assert!(!p.wanted.is_empty());
        candidates.push(p.inputs);
    }
    if let Ok(r) = <kiln_serve::grpc::pb::ModelInferRequest as prost::Message>::decode(data) {
        if let Ok((inputs, _, wanted)) = kiln_serve::grpc::parse_infer_request(&r) {
            assert!(!wanted.is_empty());
            candidates.push(inputs);
        }
    }
    let spec = &specs()[0];
    for inputs in candidates {
        let Ok(input) = check_input(inputs, "fuzz") else {
            continue;
        };
        match input.data {
            TensorData::Bytes(items) => {
                for b in items.iter().take(4) {
                    decode_and_preprocess(b, spec, "image[0]");
                }
            }
            TensorData::F32(v) => {
                let _ = kiln_serve::batch::check_pixels("fuzz", [3, 224, 224], &input.shape, &v);
            }
        }
    }
}

/// A target: what it does with one input.
pub type Target = fn(&[u8]);

/// Every target by name, for the replay test.
pub const TARGETS: [(&str, Target); 6] = [
    ("jpeg_decode", jpeg_decode),
    ("preprocess", preprocess),
    ("weights", weights),
    ("pth", pth),
    ("config", config),
    ("request", request),
];

/// Target `jpeg_decode`: bytes → kiln's JPEG decoder and the public decode path; a decoded
/// image has the size its header claims.
pub fn jpeg_decode(data: &[u8]) {
    use kiln_preprocess::jpeg;
    if let Ok(info) = jpeg::probe(data) {
        if info.width as u64 * info.height as u64 > FUZZ_MAX_PIXELS {
            return;
        }
        if let Ok(img) = jpeg::decode(data) {
            let per = match img.info.mode {
                jpeg::JpegMode::L => 1,
                jpeg::JpegMode::Rgb => 3,
                jpeg::JpegMode::Cmyk => 4,
            };
            assert_eq!(img.data.len(), (info.width * info.height) as usize * per);
        }
    }
    let opts = DecodeOptions {
        max_pixels: FUZZ_MAX_PIXELS,
        ..Default::default()
    };
    let _ = kiln_preprocess::decode_bytes(data, "fuzz.jpg", &opts);
}

/// Installed by the targets at start-up: panics that kiln catches on purpose (a third-party
/// decoder's, isolated by `decode_bytes`) are reported on stderr but do not abort; a panic
/// that escapes still reaches libFuzzer's wrapper, which aborts and saves the input.
pub fn quiet_caught_panics() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("kiln-fuzz: panic (caught or escaping): {info}");
    }));
}
