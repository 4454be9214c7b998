//! CCITT fax TIFFs read as PIL reads them (through libtiff): every scheme and option libtiff
//! writes, and damaged copies whose pixels come from libtiff's recovery rules. Fixtures and
//! PIL's results by `python/make_ccitt_fixtures.py`.

use kiln_preprocess::{decode_bytes, decode_file, DecodeOptions};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ccitt")
}

#[test]
fn fax_tiffs_match_pil() {
    let tsv = std::fs::read_to_string(dir().join("pil.tsv")).unwrap();
    let mut checked = 0;
    let mut failures = vec![];
    for line in tsv.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split('\t').collect();
        let (name, ok) = (f[0], f[1] == "ok");
        let got = decode_file(&dir().join(name), &DecodeOptions::default());
        match (got, ok) {
            (Ok(d), true) => {
                let size = d.rgb.dimensions();
                let hash = format!("{:x}", Sha256::digest(d.rgb.as_raw()));
                let want = (f[2].parse().unwrap(), f[3].parse().unwrap());
                if size != want || hash != f[4] {
                    failures.push(format!("{name}: pixels differ from PIL's"));
                }
            }
            (Err(e), true) => failures.push(format!("{name}: PIL reads it, kiln: {e}")),
            (Ok(_), false) => failures.push(format!("{name}: PIL refuses it ({})", f[4])),
            (Err(_), false) => {}
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} fixtures");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The damaged copies are not the clean image (the damage reaches the pixels), and the
/// WhiteIsZero and FillOrder 2 variants decode to the clean image: the recovery and the
/// options are really exercised.
#[test]
fn variants_and_damage_are_exercised() {
    let read = |n: &str| {
        decode_file(&dir().join(n), &DecodeOptions::default())
            .unwrap()
            .rgb
            .into_raw()
    };
    let clean = read("g4.tif");
    for n in [
        "mh.tif",
        "mh_fill2.tif",
        "mh_white0.tif",
        "g3_1d.tif",
        "g3_1d_fill2.tif",
        "g3_2d.tif",
        "g3_2d_fillbits.tif",
        "g3_2d_white0_strips.tif",
        "g4_fill2.tif",
        "g4_white0.tif",
        "g4_strips.tif",
    ] {
        assert!(read(n) == clean, "{n} differs from g4.tif");
    }
    for n in ["mh", "g3_1d", "g3_2d", "g4", "g4_strips"] {
        let damaged = [1, 2].map(|s| read(&format!("{n}_damaged{s}.tif")));
        assert!(
            damaged.iter().any(|d| *d != clean),
            "{n}: damage does not change the pixels"
        );
    }
}

/// A fax strip cut short is the file's error, named, never a panic.
#[test]
fn truncated_fax_data_is_an_error() {
    let bytes = std::fs::read(dir().join("mh.tif")).unwrap();
    // Find the strip and cut the file after its first few bytes: the IFD is rewritten at the
    // same place, so only the strip's byte count shrinks.
    let le = &bytes[..2] == b"II";
    let u16_at = |o: usize| {
        let b = [bytes[o], bytes[o + 1]];
        if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    };
    let u32_at = |o: usize| {
        let b: [u8; 4] = bytes[o..o + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let ifd = u32_at(4) as usize;
    let mut out = bytes.clone();
    for i in 0..u16_at(ifd) as usize {
        let e = ifd + 2 + 12 * i;
        if u16_at(e) == 279 {
            assert_eq!(u32_at(e + 4), 1, "one strip");
            let cut: u32 = 40;
            let v = if le {
                cut.to_le_bytes()
            } else {
                cut.to_be_bytes()
            };
            // SHORT or LONG, stored in the entry itself.
            match u16_at(e + 2) {
                3 => out[e + 8..e + 10].copy_from_slice(&v[if le { 0..2 } else { 2..4 }]),
                _ => out[e + 8..e + 12].copy_from_slice(&v),
            }
        }
    }
    let err = decode_bytes(&out, "cut.tif", &DecodeOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("cut.tif") && msg.contains("CCITT data ends early"),
        "{msg}"
    );
}
