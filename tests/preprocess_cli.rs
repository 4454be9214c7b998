//! `kiln decode` and `kiln preprocess`: what the model sees, written out, against torchvision.

mod common;

use safetensors::SafeTensors;
use std::path::PathBuf;
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-preprocess-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

const PHOTO: &str = "n02815834_beaker";

#[test]
fn preprocess_writes_torchvisions_tensor_and_a_preview() {
    let src = common::shared().join(format!("reference/decoded/{PHOTO}.png"));
    let out = tmp("beaker.safetensors");
    let run = Command::new(common::kiln_bin())
        .args(["preprocess", "--model", "mobilenet_v2", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let got = st.tensor("input").unwrap();
    assert_eq!(got.shape(), &[1, 3, 224, 224]);
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert!(meta.metadata().clone().unwrap().contains_key("kiln.spec"));

    // The shipped MobileNetV2's spec is torchvision's ImageNet eval transform, which made
    // `torchvision_imagenet/*` in the shared reference from the same PIL-decoded pixels.
    let reference =
        std::fs::read(common::shared().join("reference/preprocess.safetensors")).unwrap();
    let rst = SafeTensors::deserialize(&reference).unwrap();
    let want = rst
        .tensor(&format!("torchvision_imagenet/{PHOTO}.JPEG"))
        .unwrap();
    let f = |d: &[u8]| -> Vec<f32> {
        d.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let (g, w) = (f(got.data()), f(want.data()));
    let max = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("kiln preprocess vs torchvision on {PHOTO}: max |diff| = {max}");
    assert_eq!(max, 0.0);

    let preview = image::open(out.with_extension("png")).unwrap().to_rgb8();
    assert_eq!(preview.dimensions(), (224, 224));
}

#[test]
fn decode_writes_the_decoded_pixels() {
    let src = common::shared().join(format!("reference/decoded/{PHOTO}.png"));
    let out = tmp("decoded.png");
    let run = Command::new(common::kiln_bin())
        .arg("decode")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let a = image::open(&src).unwrap().to_rgb8();
    let b = image::open(&out).unwrap().to_rgb8();
    assert_eq!(a, b);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let missing = tmp("no-such-photo.jpg");
    for args in [
        vec!["decode".to_string()],
        vec![
            "preprocess".to_string(),
            "--model".into(),
            "mobilenet_v2".into(),
        ],
    ] {
        let run = Command::new(common::kiln_bin())
            .args(&args)
            .arg(&missing)
            .arg("-o")
            .arg(tmp("x.png"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("no-such-photo.jpg"), "{args:?}: {err}");
    }
    let not_png = Command::new(common::kiln_bin())
        .arg("decode")
        .arg(common::shared().join(format!("reference/decoded/{PHOTO}.png")))
        .arg("-o")
        .arg(tmp("x.jpg"))
        .output()
        .unwrap();
    assert_eq!(not_png.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&not_png.stderr).contains(".png"));
}
