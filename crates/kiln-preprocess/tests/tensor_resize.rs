//! kiln's tensor-path resize against torchvision's, on the fixture
//! `tests/fixtures/hf/tensor_resize.safetensors` (made by `python/make_hf_fixtures.py` with
//! `torchvision.transforms.v2.functional.resize`, i.e. PyTorch's CPU interpolate kernels).
//!
//! uint8: every byte equal, for every mode, antialias on and off, down- and upscaling.
//! float32: within 5e-6 of PyTorch (measured 2.4e-6) (its vectorised kernels may round the last bit differently).

use kiln_preprocess::tensor_resize::{resize_f32, resize_u8, TensorMode};
use safetensors::SafeTensors;
use std::path::PathBuf;

fn fixture() -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hf/tensor_resize.safetensors");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn mode(name: &str) -> TensorMode {
    match name {
        "nearest" => TensorMode::Nearest,
        "nearest-exact" => TensorMode::NearestExact,
        "bilinear" => TensorMode::Bilinear,
        "bicubic" => TensorMode::Bicubic,
        "lanczos" => TensorMode::Lanczos,
        other => panic!("unknown mode {other}"),
    }
}

#[test]
fn tensor_resize_equals_torchvision() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let input = st.tensor("input").unwrap();
    let [c, h, w] = <[usize; 3]>::try_from(input.shape()).unwrap();
    let chw = input.data().to_vec();
    // Interleaved copy for the uint8 path.
    let mut hwc = vec![0u8; c * h * w];
    for ch in 0..c {
        for i in 0..h * w {
            hwc[i * c + ch] = chw[ch * h * w + i];
        }
    }
    let chw_f: Vec<f32> = chw.iter().map(|&v| v as f32 / 255.0).collect();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let (mut n_u8, mut n_f32, mut worst_f32) = (0, 0, 0f32);
    let mut failures = vec![];
    for name in names.iter().filter(|n| *n != "input") {
        let t = st.tensor(name).unwrap();
        let parts: Vec<&str> = name.split('/').collect();
        let [kind, m, aa, size] = parts[..] else {
            panic!("{name}")
        };
        let (oh, ow) = size.split_once('x').unwrap();
        let (oh, ow): (usize, usize) = (oh.parse().unwrap(), ow.parse().unwrap());
        let aa = aa == "aa";
        if kind == "u8" {
            let ours = resize_u8(&hwc, w, h, c, ow, oh, mode(m), aa);
            let theirs = t.data();
            let mut bad = 0;
            let mut maxd = 0i32;
            for ch in 0..c {
                for i in 0..oh * ow {
                    let d = ours[i * c + ch] as i32 - theirs[ch * oh * ow + i] as i32;
                    if d != 0 {
                        bad += 1;
                        maxd = maxd.max(d.abs());
                    }
                }
            }
            if bad > 0 {
                failures.push(format!("{name}: {bad} bytes differ (max {maxd})"));
            }
            n_u8 += 1;
        } else {
            let ours = resize_f32(&chw_f, c, h, w, oh, ow, mode(m), aa);
            let theirs: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let d = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            if d > 5e-6 {
                failures.push(format!("{name}: max |diff| {d:e}"));
            }
            worst_f32 = worst_f32.max(d);
            n_f32 += 1;
        }
    }
    println!("{n_u8} uint8 cases exact; {n_f32} float32 cases, worst |diff| {worst_f32:e}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(n_u8 >= 30 && n_f32 >= 30);
}
