//! Bombs and degenerate images (issue 13, point 3): headers claiming 60000×60000 pixels are
//! refused before any pixel memory exists, and a tracking pixel gets an error by default (the
//! minimum side is an eighth of the spec's input size: 28 px for MobileNetV2), which
//! `--min-size` overrides.

mod common;

use std::process::Command;

fn png_chunk(t: &[u8], d: &[u8]) -> Vec<u8> {
    let mut c = (d.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(t);
    c.extend_from_slice(d);
    let mut h = crc32(t);
    h = crc32_update(h, d);
    c.extend_from_slice(&(!h).to_be_bytes());
    c
}

fn crc32(b: &[u8]) -> u32 {
    crc32_update(0xffff_ffff, b)
}

fn crc32_update(mut c: u32, b: &[u8]) -> u32 {
    for &x in b {
        c ^= x as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    c
}

fn kiln(args: &[&str]) -> (bool, String) {
    let o = Command::new(common::kiln_bin())
        .arg("classify")
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn bomb_headers_and_tracking_pixels_are_refused() {
    let d = std::env::temp_dir().join(format!("kiln-bombs-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let mut ihdr = 60000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&60000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    // An empty zlib stream: the header must be read with an IDAT present.
    png.extend(png_chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0, 0, 0, 0, 1]));
    png.extend(png_chunk(b"IEND", b""));
    let mut jpg = b"\xff\xd8\xff\xc0\x00\x11\x08".to_vec();
    jpg.extend_from_slice(&60000u16.to_be_bytes());
    jpg.extend_from_slice(&60000u16.to_be_bytes());
    jpg.extend_from_slice(&[3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0, 0xff, 0xd9]);
    for (name, bytes) in [("bomb.png", png), ("bomb.jpg", jpg)] {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        let (ok, out) = kiln(&[p.to_str().unwrap()]);
        assert!(!ok, "{name}: {out}");
        assert!(out.contains(name) && out.contains("60000x60000"), "{out}");
        assert!(out.contains("refused before decoding"), "{out}");
    }
    let tiny = d.join("pixel.png");
    image::RgbImage::new(1, 1).save(&tiny).unwrap();
    let (ok, out) = kiln(&[tiny.to_str().unwrap()]);
    assert!(!ok && out.contains("minimum side of 28"), "{out}");
    let (ok, out) = kiln(&["--min-size", "1", tiny.to_str().unwrap()]);
    assert!(ok, "--min-size 1 must accept a 1x1 image: {out}");
}
