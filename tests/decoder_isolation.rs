//! Issue 19, point 1: no decoder can take a batch down. Pillow's four tiled, planar TIFFs (which
//! panic inside `tiff` 0.11.3's `read_image`, and used to abort `kiln classify` with exit 101)
//! go through the command line in the middle of a batch of other images: every image gets its
//! line, the four are classified, and the exit code is 1 only because of a genuinely bad file.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const PLANAR: [&str; 4] = [
    "tiff_tiled_planar_raw.tif",
    "tiff_tiled_planar_lzw.tiff",
    "tiff_tiled_planar_16bit_RGB.tiff",
    "tiff_tiled_planar_16bit_RGBa.tiff",
];

fn pillow(name: &str) -> PathBuf {
    let p = std::env::var_os("KILN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo().join("../shared"))
        .join("pillow-images")
        .join(name);
    assert!(p.exists(), "{} missing (set KILN_SHARED)", p.display());
    p
}

#[test]
fn tiled_planar_tiffs_in_the_middle_of_a_batch() {
    let fx = common::repo().join("tests/fixtures/inputs");
    let dir = std::env::temp_dir().join(format!("kiln-isolation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt.tif");
    // A TIFF header pointing at an IFD past the end of the file.
    std::fs::write(&corrupt, b"II*\0\xff\xff\0\0").unwrap();
    let mut inputs: Vec<PathBuf> = vec![fx.join("rgb.jpg"), fx.join("gray.png")];
    inputs.extend(PLANAR.iter().take(2).map(|n| pillow(n)));
    inputs.push(corrupt.clone());
    inputs.extend(PLANAR.iter().skip(2).map(|n| pillow(n)));
    inputs.extend([fx.join("photo.webp"), fx.join("palette.gif")]);

    let out = Command::new(common::kiln_bin())
        .args(["classify", "--format", "jsonl", "--batch-size", "2"])
        .args(&inputs)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit 1 (one bad file); stderr: {stderr}"
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), inputs.len(), "one result per input, in order");
    for (v, p) in lines.iter().zip(&inputs) {
        assert_eq!(Path::new(v["path"].as_str().unwrap()), p.as_path());
        if p == &corrupt {
            let e = v["error"].as_str().expect("the corrupt file fails");
            assert!(e.contains("corrupt.tif"), "{e}");
        } else {
            assert!(
                v["top"][0]["label"].is_string(),
                "{} classified: {v}",
                p.display()
            );
        }
    }
}

/// The upstream bug itself, so that the workaround can go when a fixed release exists: the
/// `image` 0.25.10 TIFF decoder (`tiff` 0.11.3 underneath, `read_image_to_buffer`) panics on a
/// tiled planar file. When this test fails, it no longer panics and `decode/tiff.rs`'s
/// chunk-by-chunk path may go.
#[test]
fn image_tiff_still_panics_on_tiled_planar() {
    let bytes = std::fs::read(pillow("tiff_tiled_planar_raw.tif")).unwrap();
    let r = std::panic::catch_unwind(|| {
        let _ =
            image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Tiff)
                .decode();
    });
    assert!(
        r.is_err(),
        "the image/tiff decoder no longer panics on tiled planar data"
    );
}
