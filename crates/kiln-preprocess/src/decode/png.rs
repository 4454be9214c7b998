//! PNG (and APNG) read as PIL's `PngImagePlugin` reads it, then `convert("RGB")`.
//!
//! PIL's modes and what `convert("RGB")` does with them:
//! - 1/2/4-bit grey → `1`/`L` (values scaled by 255, 85, 17); 8-bit grey → `L`; replicated.
//! - 16-bit grey → `I;16`, whose conversion *clips* at 255 (`I16_RGB` in Convert.c): every value
//!   above 255 becomes white. It is not a rescale and not the high byte.
//! - 16-bit RGB, RGBA and grey+alpha → `RGB`/`RGBA`/`LA` through the `;16B` unpackers, which
//!   keep the high byte.
//! - palette → `P`, expanded through `PLTE`; `tRNS` and every alpha channel are ignored by
//!   `convert("RGB")` (alpha dropped, not composited).
//! - APNG: the default image (IDAT), which PIL loads as frame 0.
//! - EXIF orientation from `eXIf` or a `Raw profile type exif` text chunk, else XMP's
//!   `tiff:Orientation` (`Image.getexif`).

use image::RgbImage;
use std::io::Cursor;

use super::exif::{orientation_from_exif, orientation_from_xmp};

/// The decoded pixels and PIL's orientation value, if any.
pub(crate) struct Png {
    pub rgb: RgbImage,
    pub color: image::ColorType,
    pub orientation: Option<u16>,
}

/// PIL refuses what its IHDR parser refuses: a compression method or filter category other
/// than 0 ("unknown compression method"), which the `png` crate accepts.
pub(crate) fn check_ihdr(bytes: &[u8]) -> Result<(), String> {
    // Signature (8), length (4), "IHDR" (4), width, height, depth, colour type, compression,
    // filter, interlace.
    match bytes.get(8..29) {
        Some(h) if &h[4..8] == b"IHDR" => {
            if h[18] != 0 {
                Err(format!("unknown PNG compression method {}", h[18]))
            } else if h[19] != 0 {
                Err(format!("unknown PNG filter category {}", h[19]))
            } else {
                Ok(())
            }
        }
        _ => Err("PNG without an IHDR chunk first".into()),
    }
}

/// What PIL's chunk reader refuses before it reaches the pixels, and the bytes to decode.
///
/// PIL verifies the CRC of every chunk before the first IDAT ("broken PNG file") but not of the
/// image data, which its decoder reads straight through; it stops reading chunks once the
/// pixels are complete, so a damaged or truncated chunk after them is no error. Here a chunk
/// whose length runs past the end of the file ends the stream: an `IEND` is put in its place,
/// and the `png` crate reports a truncation only if pixels are actually missing.
pub(crate) fn prepare(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    let mut i = 8;
    let mut seen_idat = false;
    // APNG sequence numbers as PIL checks them: `fcTL` before the image data at open, `fdAT`
    // after it in `load_end`, which stops at the next frame's `fcTL` (an `fdAT` with no `fcTL`
    // before it is a sequence error).
    let (mut seq, mut checking) = (None::<u32>, true);
    while i + 8 <= bytes.len() {
        let n = u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize;
        let kind = &bytes[i + 4..i + 8];
        let end = i.checked_add(12).and_then(|v| v.checked_add(n));
        match end {
            Some(end) if end <= bytes.len() => {
                let data = &bytes[i + 8..end - 4];
                let be32 = |d: &[u8]| {
                    d.get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                };
                match kind {
                    b"fcTL" if seen_idat => checking = false,
                    b"fcTL" | b"fdAT" if checking && (seen_idat || kind == b"fcTL") => {
                        if let Some(v) = be32(data) {
                            let ok = match seq {
                                None => kind == b"fcTL" && v == 0,
                                Some(last) => last.checked_add(1) == Some(v),
                            };
                            if !ok {
                                return Err(
                                    "APNG contains frame sequence errors (as PIL refuses it)"
                                        .into(),
                                );
                            }
                            seq = Some(v);
                        }
                    }
                    _ => {}
                }
                if kind == b"IDAT" {
                    seen_idat = true;
                } else if !seen_idat {
                    let stored = u32::from_be_bytes([
                        bytes[end - 4],
                        bytes[end - 3],
                        bytes[end - 2],
                        bytes[end - 1],
                    ]);
                    if crc32(&bytes[i + 4..end - 4]) != stored {
                        return Err(format!(
                            "broken PNG file (bad CRC in the {} chunk)",
                            String::from_utf8_lossy(kind)
                        ));
                    }
                }
                if kind == b"IEND" {
                    return Ok(bytes.into());
                }
                i = end;
            }
            _ => {
                if !seen_idat {
                    return Ok(bytes.into());
                }
                // PIL's `load_end` reads each chunk after the image data: one with a valid name
                // (`\w{4}`) whose data runs past the end of the file is "Truncated File Read"
                // (its CRC is not needed); an invalid name, or the next frame's `fcTL` of an
                // APNG, ends the reading without error.
                let named = kind.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
                let next_frame = kind == b"fcTL" && bytes[..i].windows(4).any(|w| w == b"acTL");
                if named && !next_frame && i + 8 + n > bytes.len() {
                    return Err(format!(
                        "truncated {} chunk after the image data (PIL: Truncated File Read)",
                        String::from_utf8_lossy(kind)
                    ));
                }
                let mut cut = bytes[..i].to_vec();
                cut.extend_from_slice(&[
                    0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82,
                ]);
                return Ok(cut.into());
            }
        }
    }
    Ok(bytes.into())
}

/// CRC-32 (ISO 3309, PNG's), bitwise: only pre-IDAT chunks, a few hundred bytes, go through it.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// PIL's `MAX_TEXT_CHUNK`: a compressed text chunk that inflates past it is refused.
const MAX_TEXT_CHUNK: usize = 1 << 20;

pub(crate) fn decode(bytes: &[u8], max_alloc: u64) -> Result<Png, String> {
    decode_inner(bytes, max_alloc).map_err(|e| match e {
        png::DecodingError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "truncated PNG data".to_string()
        }
        other => format!("PNG: {other}"),
    })?
}

fn decode_inner(bytes: &[u8], max_alloc: u64) -> Result<Result<Png, String>, png::DecodingError> {
    let mut dec = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: usize::try_from(max_alloc).unwrap_or(usize::MAX),
        },
    );
    // EXPAND: palette to RGB, 1/2/4-bit grey to 8 bits by bit replication (= PIL's ×255/×85/×17),
    // tRNS to an alpha channel (dropped below). 16-bit samples stay 16-bit, big-endian.
    dec.set_transformations(png::Transformations::EXPAND);
    // The CRCs PIL checks were checked in `prepare`; PIL does not check the image data's.
    dec.ignore_checksums(true);
    let mut reader = dec.read_info()?;
    let (src_color, src_depth) = {
        let i = reader.info();
        (i.color_type, i.bit_depth)
    };
    let mut buf = vec![
        0;
        reader
            .output_buffer_size()
            .ok_or(png::DecodingError::LimitsExceeded)?
    ];
    let out = reader.next_frame(&mut buf)?;
    // Metadata after the image data (an eXIf chunk may follow IDAT, and PIL reads it when it
    // loads); a damaged tail after complete pixels is not an error for PIL either.
    let _ = reader.finish();
    let (w, h) = (out.width, out.height);
    let channels = out.color_type.samples();
    let sixteen = out.bit_depth == png::BitDepth::Sixteen;
    let grey16 = sixteen && src_color == png::ColorType::Grayscale;
    let bps = if sixteen { 2 } else { 1 };
    let line = out.line_size;
    let mut raw = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..h as usize {
        let row = &buf[y * line..];
        for x in 0..w as usize {
            let px = &row[x * channels * bps..];
            let sample = |c: usize| -> u8 {
                if !sixteen {
                    px[c]
                } else if grey16 {
                    let v = u16::from_be_bytes([px[2 * c], px[2 * c + 1]]);
                    v.min(255) as u8
                } else {
                    px[2 * c]
                }
            };
            match channels {
                1 | 2 => raw.extend_from_slice(&[sample(0); 3]),
                _ => raw.extend_from_slice(&[sample(0), sample(1), sample(2)]),
            }
        }
    }
    let rgb = RgbImage::from_raw(w, h, raw).expect("sized");
    let color = match (src_color, src_depth) {
        (png::ColorType::Grayscale, png::BitDepth::Sixteen) => image::ColorType::L16,
        (png::ColorType::Grayscale, _) => image::ColorType::L8,
        (png::ColorType::GrayscaleAlpha, png::BitDepth::Sixteen) => image::ColorType::La16,
        (png::ColorType::GrayscaleAlpha, _) => image::ColorType::La8,
        (png::ColorType::Rgb, png::BitDepth::Sixteen) => image::ColorType::Rgb16,
        (png::ColorType::Rgba, png::BitDepth::Sixteen) => image::ColorType::Rgba16,
        (png::ColorType::Rgba, _) => image::ColorType::Rgba8,
        _ => image::ColorType::Rgb8,
    };

    let info = reader.info();
    for t in &info.compressed_latin1_text {
        let mut t = t.clone();
        if t.decompress_text_with_limit(MAX_TEXT_CHUNK).is_err() {
            return Ok(Err(
                "PNG: a zTXt chunk decompresses to more than 1 MB (PIL's MAX_TEXT_CHUNK)".into(),
            ));
        }
    }
    let mut exif_orientation = info.exif_metadata.as_deref().map(orientation_from_exif);
    if exif_orientation.is_none() {
        exif_orientation = raw_profile_exif(info).map(|b| orientation_from_exif(&b));
    }
    let orientation = match exif_orientation.flatten() {
        Some(o) => Some(o),
        None => xmp(info).and_then(|x| orientation_from_xmp(x.as_bytes())),
    };
    Ok(Ok(Png {
        rgb,
        color,
        orientation,
    }))
}

/// ImageMagick's `Raw profile type exif` text chunk: a header of three lines, then hex.
fn raw_profile_exif(info: &png::Info) -> Option<Vec<u8>> {
    const KEY: &str = "Raw profile type exif";
    let text = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == KEY)
        .map(|t| t.text.clone())
        .or_else(|| {
            info.compressed_latin1_text
                .iter()
                .find(|t| t.keyword == KEY)
                .and_then(|t| t.get_text().ok())
        })
        .or_else(|| {
            info.utf8_text
                .iter()
                .find(|t| t.keyword == KEY)
                .and_then(|t| t.get_text().ok())
        })?;
    let hex: String = text.split('\n').skip(3).collect();
    let hex = hex.trim();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn xmp(info: &png::Info) -> Option<String> {
    info.utf8_text
        .iter()
        .find(|t| t.keyword == "XML:com.adobe.xmp")
        .and_then(|t| t.get_text().ok())
}
