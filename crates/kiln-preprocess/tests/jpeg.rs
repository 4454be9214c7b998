//! kiln's JPEG decoder against PIL's (Pillow 13.0.0, libjpeg-turbo 3.2.0): every pixel equal.
//!
//! - `tests/fixtures/jpeg/corpus/`: small JPEGs and the PNGs of what PIL decoded from them
//!   (`python/make_jpeg_fixtures.py`): every sampling, baseline/progressive, restarts, grayscale,
//!   CMYK/YCCK/RGB, block smoothing, sizes from 1×1.
//! - the 500 photos of `../shared/imagenet-sample` against sha256 hashes of PIL's pixels, and
//!   the 12 of them PIL decoded into `../shared/reference/decoded/*.png` pixel by pixel.
//! - bad files: clear errors, never a panic.

use kiln_preprocess::jpeg::{self, JpegError};
use kiln_preprocess::{decode_bytes, DecodeOptions, InputError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/jpeg")
}

fn shared() -> PathBuf {
    let p = std::env::var_os("KILN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared"));
    assert!(
        p.join("imagenet-sample/labels.csv").exists(),
        "shared data not found at {} (set KILN_SHARED)",
        p.display()
    );
    p
}

/// `(max |difference|, differing samples)`.
fn compare(got: &[u8], want: &[u8]) -> (i32, usize) {
    got.iter().zip(want).fold((0, 0), |(m, n), (&a, &b)| {
        let d = (a as i32 - b as i32).abs();
        (m.max(d), n + (d > 0) as usize)
    })
}

fn decode_rgb(bytes: &[u8], name: &str) -> Result<(u32, u32, Vec<u8>), String> {
    let img = jpeg::decode(bytes).map_err(|e| format!("{name}: {e}"))?;
    Ok((img.info.width, img.info.height, img.to_rgb()))
}

#[test]
fn corpus_equals_pil_exactly() {
    let dir = fixtures().join("corpus");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jpg"))
        .collect();
    names.sort();
    assert!(names.len() >= 130, "corpus has {} files", names.len());
    let mut failures = vec![];
    for name in &names {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let want = image::open(dir.join(name.replace(".jpg", ".png")))
            .unwrap()
            .into_rgb8();
        match decode_rgb(&bytes, name) {
            Ok((w, h, got)) => {
                if (w, h) != want.dimensions() {
                    failures.push(format!("{name}: size {w}x{h}, PIL {:?}", want.dimensions()));
                    continue;
                }
                let (max, n) = compare(&got, want.as_raw());
                if max != 0 {
                    failures.push(format!("{name}: max difference {max} ({n} samples)"));
                }
            }
            Err(e) => failures.push(e),
        }
    }
    println!(
        "JPEG corpus: {}/{} files identical to PIL",
        names.len() - failures.len(),
        names.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn corpus_covers_what_it_claims() {
    let dir = fixtures().join("corpus");
    let info = |n: &str| jpeg::probe(&std::fs::read(dir.join(n)).unwrap()).unwrap();
    // Kinds the corpus exists to cover, so that a regenerated corpus cannot quietly lose them.
    for prefix in [
        "pil_444_base",
        "pil_422_prog",
        "pil_420_prog",
        "pil_gray_prog",
        "pil_cmyk_prog",
        "pil_420_prog_1scans",
        "enc_440",
        "enc_411",
        "enc_410",
        "enc_ycck_420",
        "enc_adobe_rgb",
    ] {
        let any = std::fs::read_dir(&dir)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(prefix));
        assert!(any, "no {prefix}* file in the corpus");
    }
    assert_eq!(info("pil_444_base_1x1_q30.jpg").width, 1);
    assert_eq!(
        info("enc_ycck_444_45x37_rst2.jpg").mode,
        jpeg::JpegMode::Cmyk
    );
    // The cut progressive files are the ones that exercise block smoothing.
    for n in [
        "pil_420_prog_1scans.jpg",
        "pil_444_prog_4scans.jpg",
        "pil_gray_prog_2scans.jpg",
    ] {
        let b = std::fs::read(dir.join(n)).unwrap();
        assert!(jpeg::uses_block_smoothing(&b).unwrap(), "{n}");
    }
    let b = std::fs::read(dir.join("pil_420_prog_161x120_q100.jpg")).unwrap();
    assert!(!jpeg::uses_block_smoothing(&b).unwrap());
}

#[test]
fn imagenet_sample_equals_pil_exactly() {
    let dir = shared().join("imagenet-sample");
    let manifest = std::fs::read_to_string(fixtures().join("imagenet-sample.sha256")).unwrap();
    let opts = DecodeOptions {
        apply_exif_orientation: false,
        ..Default::default()
    };
    let mut failures = vec![];
    let mut n = 0;
    for line in manifest.lines() {
        let (hash, name) = line.split_once("  ").unwrap();
        let bytes = std::fs::read(dir.join(name)).unwrap();
        // Through the public entry point that `classify` uses.
        match decode_bytes(&bytes, name, &opts) {
            Ok(d) => {
                let got = format!("{:x}", Sha256::digest(d.rgb.as_raw()));
                if got != hash {
                    failures.push(format!("{name}: pixels differ from PIL's (sha256 {got})"));
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
        n += 1;
    }
    assert_eq!(n, 500);
    println!(
        "imagenet-sample: {}/{n} photos identical to PIL",
        n - failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The photos PIL decoded to PNG, compared pixel by pixel.
    let decoded = shared().join("reference/decoded");
    let mut checked = 0;
    for e in std::fs::read_dir(&decoded).unwrap() {
        let png = e.unwrap().path();
        let stem = png.file_stem().unwrap().to_string_lossy().into_owned();
        let jpg = dir.join(&stem);
        let jpg = if jpg.exists() {
            jpg
        } else {
            dir.join(format!("{stem}.JPEG"))
        };
        if !jpg.exists() {
            continue;
        }
        let want = image::open(&png).unwrap().into_rgb8();
        let (_, _, got) = decode_rgb(&std::fs::read(&jpg).unwrap(), &stem).unwrap();
        assert_eq!(compare(&got, want.as_raw()).0, 0, "{stem}");
        checked += 1;
    }
    assert_eq!(checked, 12, "reference/decoded PNGs matched to photos");
}

fn sample_jpeg() -> Vec<u8> {
    std::fs::read(fixtures().join("corpus/pil_420_base_65x47_q30.jpg")).unwrap()
}

#[test]
fn bad_files_give_clear_errors() {
    let good = sample_jpeg();
    assert!(jpeg::decode(&good).is_ok());
    let o = DecodeOptions::default();

    // Every truncation: an error (PIL refuses a JPEG without its end), never a panic.
    for cut in (0..good.len()).step_by(7) {
        let r = jpeg::decode(&good[..cut]);
        assert!(r.is_err(), "cut at {cut} decoded");
        let e = decode_bytes(&good[..cut], "cut.jpg", &o);
        if cut >= 3 {
            let msg = e.unwrap_err().to_string();
            assert!(msg.starts_with("cut.jpg: "), "{msg}");
        }
    }
    let e = jpeg::decode(&good[..good.len() - 2]).unwrap_err();
    assert!(matches!(e, JpegError::Truncated(_)), "{e}");
    // Cut inside the last bytes of the scan data or its end marker.
    let m = e.to_string();
    assert!(
        m.contains("end-of-image") || m.contains("end of the file"),
        "{e}"
    );

    // No SOI.
    assert_eq!(jpeg::decode(b"GIF89a").unwrap_err(), JpegError::MissingSoi);
    // SOI then EOI: no frame.
    assert_eq!(
        jpeg::decode(&[0xFF, 0xD8, 0xFF, 0xD9]).unwrap_err(),
        JpegError::MissingSof
    );
    // A frame and tables but no scan.
    let sos = good.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let mut no_scan = good[..sos].to_vec();
    no_scan.extend_from_slice(&[0xFF, 0xD9]);
    assert_eq!(jpeg::decode(&no_scan).unwrap_err(), JpegError::MissingSos);
    // A scan without a frame.
    let sof = good.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    let len = ((good[sof + 2] as usize) << 8) | good[sof + 3] as usize;
    let mut no_frame = good[..sof].to_vec();
    no_frame.extend_from_slice(&good[sof + 2 + len..]);
    assert_eq!(jpeg::decode(&no_frame).unwrap_err(), JpegError::MissingSof);

    // Unsupported processes are named.
    for (marker, what) in [
        (0xC9u8, "arithmetic"),
        (0xC3, "lossless"),
        (0xC5, "hierarchical"),
    ] {
        let mut b = good.clone();
        b[sof + 1] = marker;
        let e = jpeg::decode(&b).unwrap_err();
        assert!(
            matches!(&e, JpegError::Unsupported(m) if m.contains(what)),
            "{e}"
        );
        let e = decode_bytes(&b, "x.jpg", &o).unwrap_err();
        assert!(matches!(e, InputError::Unsupported { .. }), "{e}");
    }
    let mut twelve = good.clone();
    twelve[sof + 4] = 12;
    let e = jpeg::decode(&twelve).unwrap_err();
    assert!(e.to_string().contains("12-bit"), "{e}");

    // Corrupt entropy data: an error or an image, never a panic. A run of 0xFF 0x00 pairs (all
    // ones) is not a valid Huffman code in these tables: libjpeg reads it as symbol 0 after a
    // warning, and so does kiln (Pillow's `hopper_bad_exif.jpg` in the conformance suite pins
    // the pixels against PIL); the image is read and differs from the intact one.
    let mut huff = good.clone();
    for b in &mut huff[sos + 20..sos + 60] {
        *b = 0xFF;
    }
    for i in (sos + 21..sos + 60).step_by(2) {
        huff[i] = 0x00;
    }
    let damaged = jpeg::decode(&huff).expect("libjpeg reads a bad Huffman code as symbol 0");
    let intact = jpeg::decode(&good).unwrap();
    assert_eq!(damaged.info.width, intact.info.width);
    assert!(damaged.data != intact.data);
    // Random byte flips anywhere.
    let mut state = 0x1234_5678_9abc_def0u64;
    for _ in 0..300 {
        let mut b = good.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state % b.len() as u64) as usize;
            b[i] = (state >> 32) as u8;
        }
        let _ = jpeg::decode(&b);
        let _ = decode_bytes(&b, "flip.jpg", &o);
    }

    // The size limit applies from the header, before decoding.
    let tiny = DecodeOptions {
        max_pixels: 100,
        ..Default::default()
    };
    assert!(matches!(
        decode_bytes(&good, "big.jpg", &tiny),
        Err(InputError::TooLarge {
            width: 65,
            height: 47,
            ..
        })
    ));
}

/// The SIMD paths (AVX2, where the CPU has it) and the portable scalar paths give the same
/// samples on every corpus file and photo; with the PIL tests above (which run the detected
/// paths) this holds both to PIL's pixels. `KILN_ISA=baseline` makes `decode` itself scalar.
#[test]
fn simd_and_scalar_paths_agree() {
    let detected = jpeg::Isa::detect();
    println!("detected decoder paths: {detected:?}");
    let corpus = fixtures().join("corpus");
    let photos = shared().join("imagenet-sample");
    let mut files: Vec<PathBuf> = [corpus, photos]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "JPEG"))
        .collect();
    files.sort();
    assert!(files.len() >= 630, "{} files", files.len());
    let mut failures = vec![];
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let simd = jpeg::decode_with_isa(&bytes, jpeg::Isa::Avx2).map(|i| i.data);
        let scalar = jpeg::decode_with_isa(&bytes, jpeg::Isa::Scalar).map(|i| i.data);
        if simd != scalar {
            failures.push(f.display().to_string());
        }
    }
    assert!(failures.is_empty(), "paths differ: {}", failures.join("\n"));
}
