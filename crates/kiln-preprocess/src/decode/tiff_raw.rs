//! The TIFF layouts the `tiff` crate refuses but PIL reads, read as PIL's `TiffImagePlugin`
//! reads them: its `OPEN_INFO` table maps a layout to a mode and a raw mode, its unpackers turn
//! each strip's rows into that mode, and `convert("RGB")` follows.
//!
//! Covered (first IFD only, as PIL reads the first page; strips, uncompressed or LZW,
//! chunky): palette images of 1, 2, 4 or 8 bits (`P;N`, colours from `ColorMap >> 8`, indices
//! past the map black), palette + alpha (`PA`, alpha dropped), 2- and 4-bit grey (`L;2`/`L;4`,
//! levels `v * 85` / `v * 17`, inverted for WhiteIsZero, bits reversed for FillOrder 2), signed
//! 8-bit grey (PIL reads the bytes as unsigned `L`), signed 16/32-bit grey (mode `I`) and 12-bit
//! grey (`I;12` into `I;16`) clipped to 0..=255 by `convert`, 32-bit float grey (mode `F`,
//! clipped and truncated). Anything else returns `None` and goes to the `tiff` crate.

use super::ccitt;
use image::RgbImage;

/// One IFD entry's values, widened.
struct Ifd {
    le: bool,
    entries: Vec<(u16, Vec<u64>)>,
}

impl Ifd {
    fn get(&self, tag: u16) -> Option<&[u64]> {
        self.entries
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| v.as_slice())
    }
    fn one(&self, tag: u16) -> Option<u64> {
        self.get(tag).and_then(|v| v.first().copied())
    }
}

/// The first IFD of a classic (not Big) TIFF, integer-typed entries only.
fn first_ifd(b: &[u8]) -> Option<Ifd> {
    let le = match b.get(..4)? {
        b"II*\0" => true,
        b"MM\0*" => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u64> {
        let s = b.get(o..o + 2)?;
        Some(if le {
            u16::from_le_bytes([s[0], s[1]])
        } else {
            u16::from_be_bytes([s[0], s[1]])
        } as u64)
    };
    let u32_at = |o: usize| -> Option<u64> {
        let s: [u8; 4] = b.get(o..o + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(s)
        } else {
            u32::from_be_bytes(s)
        } as u64)
    };
    let ifd = u32_at(4)? as usize;
    let n = u16_at(ifd)? as usize;
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let e = ifd + 2 + 12 * i;
        let (tag, typ, count) = (u16_at(e)? as u16, u16_at(e + 2)?, u32_at(e + 4)? as usize);
        let size = match typ {
            1 | 6 => 1,
            3 | 8 => 2,
            4 | 9 => 4,
            _ => continue,
        };
        let at = if size * count <= 4 {
            e + 8
        } else {
            u32_at(e + 8)? as usize
        };
        if count > b.len() {
            continue;
        }
        let mut v = Vec::with_capacity(count);
        for k in 0..count {
            let o = at + k * size;
            v.push(match size {
                1 => *b.get(o)? as u64,
                2 => u16_at(o)?,
                _ => u32_at(o)?,
            });
        }
        entries.push((tag, v));
    }
    Some(Ifd { le, entries })
}

/// How a sample becomes PIL's pixel, then RGB.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Palette indices of `bits` bits, optionally followed by an 8-bit alpha byte.
    Palette { bits: u32, alpha: bool },
    /// 1-, 2- or 4-bit grey: level `v * 255 / (2^bits - 1)`, inverted for WhiteIsZero.
    Grey { bits: u32, invert: bool },
    /// 8-bit bytes read as `L`.
    L8,
    /// Signed 16- or 32-bit integers (mode `I`), clipped.
    Signed(u32),
    /// 12-bit big-endian packed (mode `I;16`), clipped.
    Twelve,
    /// 32-bit IEEE floats (mode `F`), clipped and truncated.
    Float,
    /// 8-bit RGB (only where the `tiff` crate refuses the tags).
    Rgb8,
    /// 16-bit CMYK: PIL's `CMYK;16L`/`CMYK;16B` keep each sample's high byte, then `cmyk2rgb`.
    Cmyk16,
}

impl Kind {
    fn bits(self) -> u64 {
        match self {
            Kind::Palette { bits, alpha } => bits as u64 + if alpha { 8 } else { 0 },
            Kind::Grey { bits, .. } => bits as u64,
            Kind::L8 => 8,
            Kind::Signed(b) => b as u64,
            Kind::Twelve => 12,
            Kind::Float => 32,
            Kind::Cmyk16 => 64,
            Kind::Rgb8 => 24,
        }
    }
}

/// Reads `bytes` when it is one of the layouts this module covers; `None` leaves it to the
/// `tiff` crate. `Some(Err)` is this file's error (truncated, bad compression data).
pub(crate) fn decode(
    bytes: &[u8],
    check_size: impl FnOnce(u32, u32) -> Result<(), crate::InputError>,
) -> Option<Result<(RgbImage, Option<u16>), RawError>> {
    let ifd = first_ifd(bytes)?;
    let w = ifd.one(256)?;
    let h = ifd.one(257)?;
    let bps = ifd.get(258).unwrap_or(&[1]).to_vec();
    let compression = ifd.one(259).unwrap_or(1);
    let photometric = ifd.one(262);
    let spp = ifd.one(277).unwrap_or(1);
    let planar = ifd.one(284).unwrap_or(1);
    let fill_order = ifd.one(266).unwrap_or(1);
    let predictor = ifd.one(317).unwrap_or(1);
    let sample_format = ifd.get(339).and_then(|v| v.first().copied()).unwrap_or(1);
    if photometric == Some(2) && bps.contains(&32) {
        // No row of PIL's `OPEN_INFO` has 32-bit RGB samples: PIL cannot identify the file.
        return Some(Err(RawError::Unsupported(
            "TIFF RGB with 32-bit samples is not supported (PIL has no mode for it)".into(),
        )));
    }
    if compression == 7 && planar == 1 {
        return match (photometric, spp) {
            (Some(p @ (2 | 5 | 6)), 3 | 4)
                if (spp == 4) == (p == 5) && bps.iter().all(|&b| b == 8) =>
            {
                Some(read_jpeg(bytes, &ifd, w, h, p, check_size))
            }
            _ => None,
        };
    }
    // Named refusals: what neither kiln nor the `tiff` crate reads (README, "Image formats").
    let refuse = |what: &str| {
        Some(Err(RawError::Unsupported(format!(
            "TIFF with {what} is not supported"
        ))))
    };
    match (compression, photometric) {
        (6, _) => return refuse("old-style JPEG compression (6)"),
        (34925, _) => return refuse("LZMA compression (34925)"),
        (_, Some(8)) => return refuse("CIELab colour (PhotometricInterpretation 8)"),
        _ => {}
    }
    if matches!(compression, 2..=4) && ifd.get(322).is_none() && planar == 1 {
        // CCITT fax data, always through kiln's libtiff-exact decoder (`ccitt.rs`).
        return match (photometric, spp, bps.as_slice()) {
            (Some(p @ (0 | 1)), 1, [1]) => {
                let scheme = match compression {
                    2 => ccitt::Scheme::Mh,
                    3 => ccitt::Scheme::G3 {
                        two_d: ifd.one(292).unwrap_or(0) & 1 == 1,
                    },
                    _ => ccitt::Scheme::G4,
                };
                let kind = Kind::Grey {
                    bits: 1,
                    invert: p == 0,
                };
                Some(read(
                    bytes,
                    &ifd,
                    w,
                    h,
                    kind,
                    Codec::Fax(scheme),
                    fill_order == 2,
                    check_size,
                ))
            }
            _ => None,
        };
    }
    if ifd.get(322).is_some() || planar != 1 || !matches!(compression, 1 | 5) || predictor != 1 {
        return None;
    }
    let kind = match (photometric, spp, bps.as_slice(), sample_format) {
        (Some(3), 1, [b @ (1 | 2 | 4 | 8)], 1) => Kind::Palette {
            bits: *b as u32,
            alpha: false,
        },
        (Some(3), 2, [8, 8], 1) => Kind::Palette {
            bits: 8,
            alpha: true,
        },
        (Some(p @ (0 | 1)), 1, [b @ (2 | 4)], 1) => Kind::Grey {
            bits: *b as u32,
            invert: p == 0,
        },
        (Some(1), 1, [8], 2) => Kind::L8,
        (Some(1), 1, [b @ (16 | 32)], 2) => Kind::Signed(*b as u32),
        (Some(1), 1, [12], 1) => Kind::Twelve,
        (Some(1) | None, 1, [32], 3) => Kind::Float,
        (Some(5), 4, [16, 16, 16, 16], 1) => Kind::Cmyk16,
        // More BitsPerSample values than samples: PIL reads the first three, `RGB`.
        (Some(2), 3, [8, 8, 8, _, ..], 1) => Kind::Rgb8,
        _ => return None,
    };
    if fill_order == 2 && !matches!(kind, Kind::Grey { .. }) {
        return None;
    }
    let codec = if compression == 5 {
        Codec::Lzw
    } else {
        Codec::None
    };
    Some(read(
        bytes,
        &ifd,
        w,
        h,
        kind,
        codec,
        fill_order == 2,
        check_size,
    ))
}

/// How the strips of a layout read here are compressed.
#[derive(Clone, Copy, PartialEq)]
enum Codec {
    None,
    Lzw,
    Fax(ccitt::Scheme),
}

/// Why a covered TIFF was not read.
#[derive(Debug)]
pub(crate) enum RawError {
    /// The size check refused it.
    Input(crate::InputError),
    /// Damaged data.
    Corrupt(String),
    /// A layout PIL cannot read either.
    Unsupported(String),
}

#[allow(clippy::too_many_arguments)]
fn read(
    bytes: &[u8],
    ifd: &Ifd,
    w: u64,
    h: u64,
    kind: Kind,
    codec: Codec,
    reversed: bool,
    check_size: impl FnOnce(u32, u32) -> Result<(), crate::InputError>,
) -> Result<(RgbImage, Option<u16>), RawError> {
    let corrupt = |s: String| RawError::Corrupt(format!("TIFF: {s}"));
    let (w32, h32) = (
        u32::try_from(w).map_err(|_| corrupt("width out of range".into()))?,
        u32::try_from(h).map_err(|_| corrupt("height out of range".into()))?,
    );
    check_size(w32, h32).map_err(RawError::Input)?;
    let (w, h) = (w as usize, h as usize);
    let offsets = ifd
        .get(273)
        .ok_or_else(|| corrupt("no StripOffsets".into()))?;
    let counts = ifd.get(279).unwrap_or(&[]);
    let rows_per_strip = (ifd.one(278).unwrap_or(h as u64).min(h as u64) as usize).max(1);
    let row_bytes = (w as u64 * kind.bits()).div_ceil(8) as usize;

    // Palette: PIL's `o8(v // 256)` of each ColorMap entry, laid out R..., G..., B....
    let palette: Vec<[u8; 3]> = match kind {
        Kind::Palette { .. } => {
            let cm = ifd
                .get(320)
                .ok_or_else(|| corrupt("palette without ColorMap".into()))?;
            let n = cm.len() / 3;
            (0..n)
                .map(|i| {
                    [
                        (cm[i] >> 8) as u8,
                        (cm[n + i] >> 8) as u8,
                        (cm[2 * n + i] >> 8) as u8,
                    ]
                })
                .collect()
        }
        _ => vec![],
    };
    let le = ifd.le;
    let mut rgb = vec![0u8; w * h * 3];
    let mut y = 0usize;
    let mut fax = match codec {
        Codec::Fax(scheme) => Some(ccitt::Fax::new(scheme, w32)),
        _ => None,
    };
    // The fax decoder undoes FillOrder itself; its rows are in normal bit order.
    let unpack_reversed = reversed && fax.is_none();
    for (s, &off) in offsets.iter().enumerate() {
        if y >= h {
            break;
        }
        let rows = rows_per_strip.min(h - y);
        let off = off as usize;
        let decoded;
        let count = counts.get(s).copied().unwrap_or(0) as usize;
        let strip = || {
            bytes
                .get(off..off.saturating_add(count).min(bytes.len()))
                .ok_or_else(|| corrupt("strip offset past the end of the file".into()))
        };
        let data: &[u8] = if let Some(fax) = fax.as_mut() {
            decoded = fax
                .strip(strip()?, rows, reversed)
                .map_err(|e| corrupt(format!("{e} in strip {s}")))?;
            &decoded
        } else if codec == Codec::Lzw {
            let src = strip()?;
            let mut out = Vec::new();
            let r = weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8)
                .into_stream(&mut out)
                .decode_all(src);
            // libtiff (PIL's LZW reader) keeps what a stream without its end code decoded.
            match r.status {
                Err(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
                    return Err(corrupt(format!("LZW data: {e}")))
                }
                _ => {}
            }
            decoded = out;
            &decoded
        } else {
            bytes.get(off..).unwrap_or(&[])
        };
        if data.len() < rows * row_bytes {
            return Err(corrupt(format!(
                "image file is truncated (strip {s}: {} of {} bytes)",
                data.len(),
                rows * row_bytes
            )));
        }
        for r in 0..rows {
            let row = &data[r * row_bytes..(r + 1) * row_bytes];
            let out = &mut rgb[(y + r) * w * 3..(y + r + 1) * w * 3];
            unpack_row(row, out, kind, &palette, unpack_reversed, le);
        }
        y += rows;
    }
    if y < h {
        return Err(corrupt(format!(
            "image file is truncated (strips cover {y} of {h} rows)"
        )));
    }
    let orientation = ifd.one(274).map(|v| v as u16);
    Ok((
        RgbImage::from_raw(w32, h32, rgb).expect("sized"),
        orientation,
    ))
}

fn unpack_row(
    row: &[u8],
    out: &mut [u8],
    kind: Kind,
    palette: &[[u8; 3]],
    reversed: bool,
    le: bool,
) {
    let byte = |i: usize| {
        if reversed {
            row[i].reverse_bits()
        } else {
            row[i]
        }
    };
    let bits_at = |x: usize, bits: usize| -> u8 {
        let bit = x * bits;
        (byte(bit / 8) >> (8 - bits - bit % 8)) & ((1u16 << bits) - 1) as u8
    };
    for (x, o) in out.chunks_exact_mut(3).enumerate() {
        let px = match kind {
            Kind::Palette { bits, alpha } => {
                let i = if alpha {
                    row[2 * x]
                } else {
                    bits_at(x, bits as usize)
                };
                palette.get(i as usize).copied().unwrap_or([0; 3])
            }
            Kind::Grey { bits, invert } => {
                let v = bits_at(x, bits as usize) as u32;
                let g = (v * 255 / ((1 << bits) - 1)) as u8;
                [if invert { 255 - g } else { g }; 3]
            }
            Kind::L8 => [row[x]; 3],
            Kind::Signed(16) => {
                let b = [row[2 * x], row[2 * x + 1]];
                let v = if le {
                    i16::from_le_bytes(b)
                } else {
                    i16::from_be_bytes(b)
                };
                [v.clamp(0, 255) as u8; 3]
            }
            Kind::Signed(_) => {
                let b: [u8; 4] = row[4 * x..4 * x + 4].try_into().expect("4 bytes");
                let v = if le {
                    i32::from_le_bytes(b)
                } else {
                    i32::from_be_bytes(b)
                };
                [v.clamp(0, 255) as u8; 3]
            }
            Kind::Twelve => {
                let bit = x * 12;
                let (b0, b1) = (row[bit / 8] as u16, row[bit / 8 + 1] as u16);
                let v = if bit % 8 == 0 {
                    (b0 << 4) | (b1 >> 4)
                } else {
                    ((b0 & 15) << 8) | b1
                };
                [v.min(255) as u8; 3]
            }
            Kind::Float => {
                let b: [u8; 4] = row[4 * x..4 * x + 4].try_into().expect("4 bytes");
                let v = if le {
                    f32::from_le_bytes(b)
                } else {
                    f32::from_be_bytes(b)
                };
                // `as` saturates and maps NaN to 0.
                [v.clamp(0.0, 255.0) as u8; 3]
            }
            Kind::Rgb8 => [row[3 * x], row[3 * x + 1], row[3 * x + 2]],
            Kind::Cmyk16 => {
                let hi = |c: usize| row[8 * x + 2 * c + usize::from(le)];
                cmyk_to_rgb([hi(0), hi(1), hi(2), hi(3)])
            }
        };
        o.copy_from_slice(&px);
    }
}

/// PIL's `cmyk2rgb` (Convert.c): `nk - nk * c / 255` with its rounded `MULDIV255`.
fn cmyk_to_rgb(p: [u8; 4]) -> [u8; 3] {
    let nk = 255 - p[3] as u32;
    let f = |c: u8| {
        let t = c as u32 * nk + 128;
        (nk - (((t >> 8) + t) >> 8)) as u8
    };
    [f(p[0]), f(p[1]), f(p[2])]
}

/// JPEG-compressed TIFF (compression 7) through kiln's own JPEG decoder, as PIL reads it through
/// libtiff with `JPEGCOLORMODE_RGB`: each strip or tile is a JPEG stream, abbreviated when the
/// `JPEGTables` tag holds its tables. The stream given to the decoder is the tables followed by
/// the chunk's own segments. For three components an Adobe APP14 segment states the colour
/// space libtiff sets from the photometric interpretation (transform 0 for RGB: stored as is;
/// 1 for YCbCr: libjpeg's own YCbCr to RGB), since TIFF's JPEG streams carry no JFIF/Adobe
/// marker to guess from. CMYK (photometric 5) gets no marker: read as stored, then PIL's
/// `cmyk2rgb`.
fn read_jpeg(
    bytes: &[u8],
    ifd: &Ifd,
    w: u64,
    h: u64,
    photometric: u64,
    check_size: impl FnOnce(u32, u32) -> Result<(), crate::InputError>,
) -> Result<(RgbImage, Option<u16>), RawError> {
    let corrupt = |s: String| RawError::Corrupt(format!("JPEG-compressed TIFF: {s}"));
    let (w32, h32) = (
        u32::try_from(w).map_err(|_| corrupt("width out of range".into()))?,
        u32::try_from(h).map_err(|_| corrupt("height out of range".into()))?,
    );
    check_size(w32, h32).map_err(RawError::Input)?;
    let (w, h) = (w as usize, h as usize);
    let tiled = ifd.get(322).is_some();
    let (cw, ch, offsets, counts) = if tiled {
        (
            ifd.one(322).unwrap_or(0) as usize,
            ifd.one(323).unwrap_or(0) as usize,
            ifd.get(324),
            ifd.get(325),
        )
    } else {
        (
            w,
            ifd.one(278).unwrap_or(h as u64).min(h as u64) as usize,
            ifd.get(273),
            ifd.get(279),
        )
    };
    let (Some(offsets), Some(counts)) = (offsets, counts) else {
        return Err(corrupt("no strip or tile offsets and byte counts".into()));
    };
    if cw == 0 || ch == 0 {
        return Err(corrupt("zero strip or tile size".into()));
    }
    let tables = jpeg_tables(bytes).unwrap_or(&[]);
    let across = w.div_ceil(cw);
    let chunks = across * h.div_ceil(ch);
    let mut rgb = vec![0u8; w * h * 3];
    for i in 0..chunks {
        let (off, len) = (
            offsets.get(i).copied().unwrap_or(0) as usize,
            counts.get(i).copied().unwrap_or(0) as usize,
        );
        let chunk = bytes
            .get(off..off.saturating_add(len))
            .filter(|c| c.starts_with(&[0xFF, 0xD8]))
            .ok_or_else(|| corrupt(format!("chunk {i} is not a JPEG stream inside the file")))?;
        let mut stream = vec![0xFF, 0xD8];
        if photometric != 5 {
            // Adobe APP14: length 14, "Adobe", version 100, no flags, the transform.
            stream.extend_from_slice(&[0xFF, 0xEE, 0, 14]);
            stream.extend_from_slice(b"Adobe\0\x64\0\0\0\0");
            stream.push(u8::from(photometric == 6));
        }
        if tables.len() >= 4 && tables.starts_with(&[0xFF, 0xD8]) {
            stream.extend_from_slice(&tables[2..tables.len() - 2]);
        }
        stream.extend_from_slice(&chunk[2..]);
        let img = crate::jpeg::decode(&stream).map_err(|e| corrupt(format!("chunk {i}: {e}")))?;
        let (iw, ih) = (img.info.width as usize, img.info.height as usize);
        let px = if img.info.mode == crate::jpeg::JpegMode::Cmyk {
            // kiln's decoder inverts CMYK as PIL's JPEG plugin reads it (`CMYK;I`); libtiff
            // hands libjpeg's CMYK over as decoded, so undo the inversion before `cmyk2rgb`.
            img.data
                .chunks_exact(4)
                .flat_map(|p| cmyk_to_rgb([255 - p[0], 255 - p[1], 255 - p[2], 255 - p[3]]))
                .collect()
        } else {
            img.into_rgb()
        };
        let (x0, y0) = ((i % across) * cw, (i / across) * ch);
        let n = iw.min(cw).min(w.saturating_sub(x0));
        for y in 0..ih.min(ch).min(h.saturating_sub(y0)) {
            let o = ((y0 + y) * w + x0) * 3;
            rgb[o..o + n * 3].copy_from_slice(&px[y * iw * 3..(y * iw + n) * 3]);
        }
    }
    let orientation = ifd.one(274).map(|v| v as u16);
    Ok((
        RgbImage::from_raw(w32, h32, rgb).expect("sized"),
        orientation,
    ))
}

/// The `JPEGTables` tag (347, UNDEFINED) of the first IFD as bytes; [`first_ifd`] keeps only
/// integer types.
fn jpeg_tables(b: &[u8]) -> Option<&[u8]> {
    let le = b.starts_with(b"II");
    let rd16 = |o: usize| -> Option<usize> {
        let s = [*b.get(o)?, *b.get(o + 1)?];
        Some(if le {
            u16::from_le_bytes(s)
        } else {
            u16::from_be_bytes(s)
        } as usize)
    };
    let rd32 = |o: usize| -> Option<usize> {
        let s: [u8; 4] = b.get(o..o + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(s)
        } else {
            u32::from_be_bytes(s)
        } as usize)
    };
    let ifd = rd32(4)?;
    for i in 0..rd16(ifd)? {
        let e = ifd + 2 + 12 * i;
        if rd16(e)? == 347 {
            let count = rd32(e + 4)?;
            let at = if count <= 4 { e + 8 } else { rd32(e + 8)? };
            return b.get(at..at.checked_add(count)?);
        }
    }
    None
}
