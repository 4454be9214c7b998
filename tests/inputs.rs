//! The inference system end to end: good images of every colour type and container, bad images
//! of every kind, through the library and through the `kiln` command line.

mod common;

use kiln_preprocess::{decode_file, DecodeOptions, InputError};
use kiln_runtime::{Classifier, RunOptions, RuntimeError, Tta};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

fn fixtures() -> PathBuf {
    common::repo().join("tests/fixtures/inputs")
}

fn classifier() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(|| {
        Classifier::builder()
            .build()
            .expect("shipped MobileNetV2 loads")
    })
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-inputs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let s: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y) as u64)
        .sum();
    s as f64 / a.as_raw().len() as f64
}

fn decode(name: &str) -> kiln_preprocess::Decoded {
    decode_file(&fixtures().join(name), &DecodeOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// A PNG whose header claims `w`×`h` but holds almost no data.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        out.extend_from_slice(&c);
        out.extend_from_slice(&crc32(&c).to_be_bytes());
    }
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = vec![];
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Writes one bad file of each kind into `dir`; returns (file name, expected reason fragment).
fn write_bad_files(dir: &Path) -> Vec<(&'static str, &'static str)> {
    let rgb = std::fs::read(fixtures().join("rgb.jpg")).unwrap();
    std::fs::write(dir.join("empty.jpg"), b"").unwrap();
    std::fs::write(dir.join("notes.jpg"), b"this is a text file, not a photo\n").unwrap();
    std::fs::write(dir.join("truncated.jpg"), &rgb[..rgb.len() / 2]).unwrap();
    let mut corrupt = rgb.clone();
    for b in corrupt.iter_mut().skip(20).take(400) {
        *b = 0x5a;
    }
    std::fs::write(dir.join("corrupt.jpg"), &corrupt).unwrap();
    // QOI is a real format that `image` recognises but kiln does not build a decoder for.
    std::fs::write(
        dir.join("picture.png"),
        b"qoif\x00\x00\x00\x10\x00\x00\x00\x10\x03\x00rest",
    )
    .unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
        .save(dir.join("tiny.png"))
        .unwrap();
    std::fs::write(dir.join("bomb.png"), png_claiming(30_000, 30_000)).unwrap();
    // Valid and small, but 16x40000: resizing its short side to 256 would make 164 Mpx.
    image::RgbImage::from_pixel(40_000, 16, image::Rgb([9, 9, 9]))
        .save(dir.join("strip.png"))
        .unwrap();
    vec![
        ("empty.jpg", "empty file"),
        ("notes.jpg", "not an image"),
        ("truncated.jpg", "truncated"),
        ("corrupt.jpg", "corrupt"),
        ("picture.png", "unsupported"),
        ("tiny.png", "smaller than the minimum"),
        ("bomb.png", "decompression bomb"),
        ("strip.png", "extreme aspect ratio"),
    ]
}

#[test]
fn colour_types_convert_like_pil() {
    // The lossless fixtures hold the pixels PIL decoded from rgb.jpg; photo.bmp is the plainest.
    let reference = decode("photo.bmp").rgb;
    // 16-bit grey is 8-bit grey times 257. PIL reads it as mode I;16, and its convert("RGB")
    // clips at 255 (Convert.c I16_RGB): every non-zero level becomes white. That is what a
    // PIL training pipeline fed the network, so it is what kiln must give.
    let clipped: Vec<u8> = decode("gray.png")
        .rgb
        .as_raw()
        .iter()
        .map(|&v| if v == 0 { 0 } else { 255 })
        .collect();
    assert!(
        decode("gray16.png").rgb.as_raw() == &clipped,
        "16-bit grey as PIL's I;16 -> RGB"
    );
    let g = decode("gray.png").rgb;
    assert!(g.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    // Alpha is dropped, not composited: the colour under a transparent pixel survives.
    let rgba = decode("rgba.png");
    assert_eq!(rgba.original_color, image::ColorType::Rgba8);
    assert!(
        rgba.rgb == reference,
        "alpha dropped exactly as PIL's convert(\"RGB\")"
    );
    for f in ["palette.png", "palette.gif"] {
        let d = mean_abs_diff(&decode(f).rgb, &reference);
        assert!(d < 4.0, "{f}: {d}");
    }
    // CMYK JPEG: compare with what PIL decoded from the same file.
    let cmyk = decode("cmyk.jpg").rgb;
    let pil = decode("cmyk.pil.png").rgb;
    let d = mean_abs_diff(&cmyk, &pil);
    println!("cmyk.jpg: mean |kiln - PIL| = {d:.3} levels");
    assert!(
        d < 2.0,
        "CMYK conversion differs from PIL by {d} levels on average"
    );
    for f in ["photo.webp", "photo.tiff"] {
        assert!(decode(f).rgb == reference, "{f} differs from photo.bmp");
    }
    // Our JPEG decoder against PIL's on the same file: a few levels at most (see the README).
    let d = mean_abs_diff(&decode("rgb.jpg").rgb, &reference);
    assert!(d < 1.0, "rgb.jpg: {d}");
}

#[test]
fn exif_orientation_is_applied() {
    let reference = decode("rgb.jpg").rgb;
    for f in ["rot6.jpg", "rot3.jpg", "mirror2.jpg"] {
        let d = decode(f);
        assert!(d.reoriented, "{f}");
        assert_eq!(d.rgb.dimensions(), (200, 150), "{f} upright");
        let diff = mean_abs_diff(&d.rgb, &reference);
        assert!(diff < 3.0, "{f}: {diff} levels from the upright photo");
    }
    let off = DecodeOptions {
        apply_exif_orientation: false,
        ..Default::default()
    };
    let raw = decode_file(&fixtures().join("rot6.jpg"), &off).unwrap();
    assert_eq!(raw.rgb.dimensions(), (150, 200));
}

#[test]
fn good_and_bad_files_in_one_run() {
    let dir = temp_dir("mixed");
    let good = [
        "rgb.jpg",
        "gray.png",
        "gray16.png",
        "rgba.png",
        "palette.png",
        "cmyk.jpg",
        "rot6.jpg",
        "photo.webp",
    ];
    for f in good {
        std::fs::copy(fixtures().join(f), dir.join(f)).unwrap();
    }
    let bad = write_bad_files(&dir);
    std::fs::write(dir.join("readme.txt"), b"not an image extension: skipped").unwrap();

    let out = Command::new(common::kiln_bin())
        .args([
            "classify",
            "--format",
            "jsonl",
            "--min-size",
            "16",
            "--batch-size",
            "3",
        ])
        .arg(&dir)
        .arg(dir.join("missing.jpg"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "some failed: exit 1; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        good.len() + bad.len() + 1,
        "one line per image, none for readme.txt"
    );
    // Sorted directory order, then the explicit path.
    let names: Vec<String> = lines
        .iter()
        .map(|v| {
            Path::new(v["path"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string()
        })
        .collect();
    let mut sorted = names[..names.len() - 1].to_vec();
    sorted.sort();
    assert_eq!(names[..names.len() - 1], sorted[..]);
    assert_eq!(names.last().unwrap(), "missing.jpg");
    for v in &lines {
        let name = Path::new(v["path"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        if let Some((_, reason)) = bad.iter().find(|(b, _)| *b == name) {
            let err = v["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} should fail: {v}"));
            assert!(err.contains(&name), "error names the file: {err}");
            assert!(
                err.to_lowercase().contains(reason),
                "{name}: `{err}` should say `{reason}`"
            );
        } else if name == "missing.jpg" {
            assert!(v["error"].as_str().unwrap().contains("not found"));
        } else {
            let top: Vec<&str> = v["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["label"].as_str().unwrap())
                .collect();
            assert_eq!(top.len(), 5);
            if name == "gray16.png" {
                // PIL's I;16 -> RGB clips at 255, so what PIL (and kiln) make of this file is a
                // nearly white image: classified, but no fish in it (see colour_types_convert_like_pil).
            } else if name.starts_with("gray") {
                // Without colour the fish is less certain, but still among the five.
                assert!(top.contains(&"tench"), "{name}: {v}");
            } else {
                assert_eq!(top[0], "tench", "{name}: {v}");
            }
        }
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed"), "summary on stderr: {stderr}");
}

#[test]
fn exit_codes_and_formats() {
    let rgb = fixtures().join("rgb.jpg");
    let run = |args: &[&str]| {
        Command::new(common::kiln_bin())
            .args(args)
            .output()
            .unwrap()
    };
    let ok = run(&[
        "classify",
        rgb.to_str().unwrap(),
        "--format",
        "csv",
        "--top-k",
        "3",
        "-q",
    ]);
    assert_eq!(ok.status.code(), Some(0));
    let csv = String::from_utf8(ok.stdout).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "path,rank,index,label,prob,uncertain,error");
    assert_eq!(rows.len(), 4);
    assert!(rows[1].contains(",1,0,tench,"), "{}", rows[1]);
    assert!(ok.stderr.is_empty(), "--quiet prints nothing on stderr");

    // Usage and spec errors: exit 2.
    assert_eq!(
        run(&["classify", rgb.to_str().unwrap(), "--no-such-flag"])
            .status
            .code(),
        Some(2)
    );
    let contra = run(&["classify", rgb.to_str().unwrap(), "--scale", "symmetric"]);
    assert_eq!(contra.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&contra.stderr).contains("contradicts the training spec"));
    let forced = run(&[
        "classify",
        rgb.to_str().unwrap(),
        "--scale",
        "symmetric",
        "--allow-spec-override",
        "-q",
    ]);
    assert_eq!(forced.status.code(), Some(0));
    let dir = temp_dir("labels");
    std::fs::write(
        dir.join("ten.txt"),
        (0..10).map(|i| format!("c{i}\n")).collect::<String>(),
    )
    .unwrap();
    let labels = run(&[
        "classify",
        rgb.to_str().unwrap(),
        "--labels",
        dir.join("ten.txt").to_str().unwrap(),
    ]);
    assert_eq!(labels.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&labels.stderr).contains("10 names but the model has 1000 classes")
    );
    assert_eq!(
        run(&["classify", rgb.to_str().unwrap(), "--model", "resnet9000"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(&["classify", rgb.to_str().unwrap(), "--threshold", "1.5"])
            .status
            .code(),
        Some(2)
    );

    // Threshold: the table says "uncertain", JSON says "uncertain": true.
    let unsure = run(&[
        "classify",
        rgb.to_str().unwrap(),
        "--threshold",
        "0.999",
        "-q",
    ]);
    assert!(String::from_utf8_lossy(&unsure.stdout).contains("uncertain"));
    let unsure = run(&[
        "classify",
        rgb.to_str().unwrap(),
        "--threshold",
        "0.999",
        "--format",
        "jsonl",
    ]);
    let v: Value = serde_json::from_slice(&unsure.stdout).unwrap();
    assert_eq!(v["uncertain"], true);
}

#[test]
fn stdin_globs_and_logging() {
    let dir = temp_dir("stdin");
    for f in ["rgb.jpg", "gray.png", "rot3.jpg"] {
        std::fs::copy(fixtures().join(f), dir.join(f)).unwrap();
    }
    let mut child = Command::new(common::kiln_bin())
        .args(["classify", "-", "--format", "jsonl", "-v"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let list = format!(
        "{}\n\n{}\n",
        dir.join("gray.png").display(),
        dir.join("rgb.jpg").display()
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 2);
    assert!(
        stdout.lines().next().unwrap().contains("gray.png"),
        "input order kept"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("decoded=(200, 150)"),
        "-v logs the decoded size: {log}"
    );
    assert!(
        log.contains("input=[1, 3, 224, 224]") && log.contains("output=[1, 1000]"),
        "{log}"
    );
    assert!(log.contains("confidence="), "{log}");
    assert!(!log.contains("decode_ms"), "stage times only with -vv");

    let pattern = format!("{}/*.jpg", dir.display());
    let out = Command::new(common::kiln_bin())
        .args(["classify", &pattern, "--format", "jsonl", "-vv"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "rgb.jpg and rot3.jpg"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    for stage in ["decode_ms", "preprocess_ms", "forward_ms", "postprocess_ms"] {
        assert!(log.contains(stage), "-vv logs {stage}: {log}");
    }
    let none = Command::new(common::kiln_bin())
        .args(["classify", &format!("{}/*.nothing", dir.display())])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no file matches"));
}

#[test]
fn library_is_thread_safe_and_deterministic() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Classifier>();
    let c = classifier();
    // Decoded as `classify_paths` decodes it (kiln's JPEG decoder, not `image`'s), so that the
    // batch below can be compared with it.
    let decoded = kiln_preprocess::decode_file(&fixtures().join("rgb.jpg"), &Default::default());
    let img = image::DynamicImage::ImageRgb8(decoded.unwrap().rgb);
    let want = c.classify_image(&img, 5).unwrap();
    assert_eq!(want.top[0].label, "tench");
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..3)
                        .map(|_| c.classify_image(&img, 5).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for r in results {
        assert_eq!(r, want, "identical results from every thread");
    }
    // A batch gives the same answer as one at a time.
    let paths = vec![
        fixtures().join("rgb.jpg"),
        fixtures().join("gray.png"),
        fixtures().join("nope.jpg"),
    ];
    let batch = c.classify_paths(&paths, 5, 2);
    assert_eq!(batch[0].as_ref().unwrap().top[0].index, want.top[0].index);
    assert!((batch[0].as_ref().unwrap().top[0].prob - want.top[0].prob).abs() < 1e-5);
    assert!(matches!(
        &batch[2],
        Err(RuntimeError::Input(InputError::NotFound { .. }))
    ));
}

#[test]
fn tta_modes_average_views() {
    let c = classifier();
    let img = decode("rgb.jpg").rgb;
    for tta in [
        Tta::None,
        Tta::Flip,
        Tta::FiveCrop,
        Tta::TenCrop,
        Tta::MultiScale,
    ] {
        let opts = RunOptions {
            tta,
            ..Default::default()
        };
        let p = c
            .classify_images_with(std::slice::from_ref(&img), &opts)
            .unwrap()
            .remove(0);
        assert_eq!(p.top[0].label, "tench", "{tta:?}");
        let sum: f32 = p.top.iter().map(|s| s.prob).sum();
        assert!(
            sum <= 1.0 + 1e-4,
            "averaged probabilities stay a distribution"
        );
    }
    // Flip TTA of a mirror-symmetric image equals no TTA.
    let sym = image::RgbImage::from_fn(256, 256, |x, y| {
        let d = ((2 * x as i32 - 255).unsigned_abs() / 2) as u8;
        image::Rgb([d, y as u8, 255 - d])
    });
    let a = c.classify_images(std::slice::from_ref(&sym), 3).unwrap();
    let opts = RunOptions {
        tta: Tta::Flip,
        top_k: 3,
        ..Default::default()
    };
    let b = c
        .classify_images_with(std::slice::from_ref(&sym), &opts)
        .unwrap();
    // The centre crop of 256 wide is columns 16..240: symmetric about 128 too.
    for (x, y) in a[0].top.iter().zip(&b[0].top) {
        assert_eq!(x.index, y.index);
        assert!((x.prob - y.prob).abs() < 1e-4);
    }
}
