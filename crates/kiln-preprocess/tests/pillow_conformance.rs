//! Pillow's own test images as the conformance suite: kiln must read every file exactly as PIL
//! reads it (`Image.open` → `ImageOps.exif_transpose` → `convert("RGB")`), or refuse it with a
//! reason where PIL refuses it.
//!
//! PIL's results are committed in `tests/fixtures/pillow/pil_results.tsv` (made by
//! `python/make_pillow_conformance.py`): the sha256 of PIL's RGB bytes and the size, or PIL's
//! exception. The images themselves are `../shared/pillow-images` (or `$KILN_SHARED`).
//!
//! Fails on: any panic; any pixel difference on a lossless file; a refusal of a file PIL reads
//! that is not in [`REFUSED_ALLOWED`]; a file PIL refuses that kiln reads and that is not in
//! [`READ_ALLOWED`]. `KILN_CONFORMANCE_DUMP=DIR` writes kiln's RGB of every differing file to
//! `DIR/NAME.rgb` (raw, row-major) for inspection against PIL.

use kiln_preprocess::{decode_file, DecodeOptions};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Whether JPEG-bearing files (JPEG, MPO, JPEG-in-TIFF) must match PIL bit for bit: they must,
/// since `decode.rs` routes JPEG to `crate::jpeg`, the libjpeg-turbo-exact decoder.
const JPEG_EXACT: bool = true;

/// Whether lossy (VP8) WebP must match PIL bit for bit. PIL uses libwebp's decoder, kiln the
/// pure-Rust `image-webp`; both implement the same integer VP8 decoding, so this holds today
/// and a difference is a bug. (Measured: see README, "Image formats".)
const WEBP_LOSSY_EXACT: bool = true;

/// Files PIL reads that kiln refuses, each with the reason (at most 10; never PNG, GIF, BMP or
/// WebP). README's "Image formats" section lists the same files.
const REFUSED_ALLOWED: &[(&str, &str)] = &[
    (
        "old-style-jpeg-compression.tif",
        "TIFF with old-style JPEG compression (6), deprecated since TIFF 6.0",
    ),
    (
        "old-style-jpeg-compression-no-samplesperpixel.tif",
        "TIFF with old-style JPEG compression (6), without SamplesPerPixel",
    ),
    (
        "hopper_lzma.tif",
        "TIFF with LZMA compression (34925): libtiff writes .xz with a delta filter no pure-Rust \
         decoder reads",
    ),
    (
        "hopper.Lab.tif",
        "TIFF with CIELab colour: PIL converts LAB to RGB through LittleCMS",
    ),
    (
        "lab-green.tif",
        "TIFF with CIELab colour: PIL converts LAB to RGB through LittleCMS",
    ),
    (
        "lab-red.tif",
        "TIFF with CIELab colour: PIL converts LAB to RGB through LittleCMS",
    ),
    (
        "lab.tif",
        "TIFF with CIELab colour: PIL converts LAB to RGB through LittleCMS",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gap {
    Refuses,
    Differs,
    Reads,
}

/// Issue 19 is not finished: these files still fail PIL's reading in the way stated. They are
/// listed so that CI catches any *new* failure; an entry that starts passing fails the test
/// until it is removed, so this list can only shrink. README's "Image formats" lists them.
const KNOWN_GAPS: &[(&str, Gap, &str)] = &[];

/// Files PIL refuses that kiln reads, each with why reading it is right.
const READ_ALLOWED: &[(&str, &str)] = &[];

fn shared() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = std::env::var_os("KILN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared"));
    assert!(
        p.join("pillow-images").is_dir(),
        "pillow images not found at {}/pillow-images (set KILN_SHARED)",
        p.display()
    );
    p
}

struct Pil {
    ok: bool,
    size: (u32, u32),
    sha256: String,
    format: String,
    mode: String,
    lossy: String,
    detail: String,
}

fn read_fixture() -> BTreeMap<String, Pil> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/pillow/pil_results.tsv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 11, "{line}");
        let ok = f[1] == "ok";
        out.insert(
            f[0].to_string(),
            Pil {
                ok,
                size: if ok {
                    (f[2].parse().unwrap(), f[3].parse().unwrap())
                } else {
                    (0, 0)
                },
                sha256: f[4].to_string(),
                format: f[5].to_string(),
                mode: f[6].to_string(),
                lossy: f[9].to_string(),
                detail: f[10].to_string(),
            },
        );
    }
    out
}

#[test]
fn pillow_images_read_as_pil_reads_them() {
    let dir = shared().join("pillow-images");
    let pil = read_fixture();
    let dump = std::env::var_os("KILN_CONFORMANCE_DUMP").map(PathBuf::from);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".md"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        pil.len(),
        "the fixture covers every file of pillow-images"
    );

    let allowed_refusal = |n: &str| REFUSED_ALLOWED.iter().any(|(f, _)| *f == n);
    let allowed_read = |n: &str| READ_ALLOWED.iter().any(|(f, _)| *f == n);
    let gap = |n: &str, g: Gap| KNOWN_GAPS.iter().any(|(f, k, _)| *f == n && *k == g);
    let mut gaps_seen = vec![];
    let mut refusals_seen: Vec<String> = vec![];
    let (mut equal, mut differs, mut refuses, mut reads, mut crash, mut both_refuse) =
        (0, 0, 0, 0, 0, 0);
    let mut failures = vec![];
    let start = std::time::Instant::now();
    for name in &files {
        let p = &pil[name];
        let exact = match p.lossy.as_str() {
            "jpeg" => JPEG_EXACT,
            "webp" => WEBP_LOSSY_EXACT,
            _ => true,
        };
        let path = dir.join(name);
        let got = catch_unwind(AssertUnwindSafe(|| {
            decode_file(&path, &DecodeOptions::default())
        }));
        let what = format!("{name} [PIL: {} {}]", p.format, p.mode);
        match (got, p.ok) {
            (Err(_), _) => {
                crash += 1;
                failures.push(format!("CRASH {what}"));
            }
            (Ok(Ok(d)), true) => {
                let size = d.rgb.dimensions();
                let hash = format!("{:x}", Sha256::digest(d.rgb.as_raw()));
                if size == p.size && hash == p.sha256 {
                    equal += 1;
                } else {
                    differs += 1;
                    let msg = format!(
                        "DIFFERS {what}: kiln {}x{} vs PIL {}x{}{}",
                        size.0,
                        size.1,
                        p.size.0,
                        p.size.1,
                        if exact { "" } else { " (lossy, not required)" }
                    );
                    println!("{msg}");
                    if exact && gap(name, Gap::Differs) {
                        gaps_seen.push(name.clone());
                    } else if exact {
                        failures.push(msg);
                    }
                    if let Some(dir) = &dump {
                        std::fs::create_dir_all(dir).unwrap();
                        std::fs::write(dir.join(format!("{name}.rgb")), d.rgb.as_raw()).unwrap();
                    }
                }
            }
            (Ok(Err(e)), true) => {
                refuses += 1;
                let msg = format!("REFUSES {what}: {e}");
                println!("{msg}");
                if gap(name, Gap::Refuses) {
                    gaps_seen.push(name.clone());
                } else if allowed_refusal(name) {
                    // The error names the format feature: the reason's first clause.
                    let (_, reason) = REFUSED_ALLOWED.iter().find(|(f, _)| *f == name).unwrap();
                    let feature = reason.split([':', ',']).next().unwrap();
                    if !e.to_string().contains(feature) {
                        failures.push(format!("{msg}: the error does not say \"{feature}\""));
                    }
                    refusals_seen.push(name.clone());
                } else {
                    failures.push(msg);
                }
            }
            (Ok(Ok(d)), false) => {
                reads += 1;
                let (w, h) = d.rgb.dimensions();
                let msg = format!("READS {what} {w}x{h}; PIL: {}", p.detail);
                println!("{msg}");
                if gap(name, Gap::Reads) {
                    gaps_seen.push(name.clone());
                } else if !allowed_read(name) {
                    failures.push(msg);
                }
            }
            (Ok(Err(_)), false) => both_refuse += 1,
        }
    }
    println!(
        "pillow-images: {} files in {:.1}s: {equal} equal, {differs} differ, {refuses} PIL-readable \
         refused, {reads} PIL-refused read, {crash} crashed, {both_refuse} refused by both",
        files.len(),
        start.elapsed().as_secs_f64()
    );
    println!(
        "known gaps still open: {} of {} listed",
        gaps_seen.len(),
        KNOWN_GAPS.len()
    );
    for (f, _, _) in KNOWN_GAPS {
        if !gaps_seen.iter().any(|g| g == f) {
            failures.push(format!(
                "FIXED {f}: now read as PIL reads it; remove it from KNOWN_GAPS"
            ));
        }
    }
    for (f, _) in REFUSED_ALLOWED {
        if !refusals_seen.iter().any(|g| g == f) {
            failures.push(format!(
                "NOW READ {f}: no longer refused; remove it from REFUSED_ALLOWED"
            ));
        }
    }
    assert!(
        REFUSED_ALLOWED.len() <= 10,
        "at most 10 refusals of files PIL reads"
    );
    for (f, _) in REFUSED_ALLOWED {
        let ext = f.rsplit('.').next().unwrap_or("");
        assert!(
            !["png", "gif", "bmp", "webp"].contains(&ext),
            "{f}: PNG, GIF, BMP and WebP files PIL reads must be read"
        );
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
