//! BMP read as PIL's `BmpImagePlugin` reads it, then `convert("RGB")`.
//!
//! Written from PIL's plugin and its C unpackers rather than through the `image` crate, whose
//! BMP reader differs from PIL in ways a PIL-trained network would see: 5/6-bit channels are
//! expanded as `v * 255 / 31` (PIL's `BGR;15`/`BGR;16` unpackers, integer division), pixels an
//! RLE stream skips are index 0, and PIL reads what `image` refuses (OS/2 v2 headers, top-down
//! RLE, any `planes` value, runs past the end of a row) and refuses what `image` reads (bitfield
//! layouts outside PIL's table). The rules, each as PIL applies them:
//!
//! - Header sizes 12 (OS/2 v1: 16-bit sizes, 3-byte palette entries) and 40/52/56/64/108/124
//!   (32-bit sizes, 4-byte entries; height's top byte `0xFF` means top-down). Others refused.
//! - Depths 1, 4, 8 (palette), 16 (`BGR;15`), 24, 32 (`BGRX`: the fourth byte ignored).
//! - Compression 0 (raw), 1/2 (RLE8/RLE4), 3 (bitfields, only the layouts in PIL's table).
//! - A palette whose entries are exactly black/white (2 colours) or the grey ramp `0..n` is
//!   dropped: the image is mode `1` or `L` and the *raw bytes* are read in that mode (so an
//!   8-bit file with a 2-entry grey palette is read one bit per pixel, as PIL does).
//! - Palette indices past the palette's end are black.
//! - Uncompressed rows are `((width * bits + 31) >> 3) & !3` bytes apart; the last row needs
//!   only its pixels, not its padding. Fewer bytes than that is a truncated file.

use image::RgbImage;

/// Why a BMP is not read: a feature PIL refuses too, or damaged data.
#[derive(Debug)]
pub(crate) enum BmpError {
    /// A layout PIL refuses (its message, reworded).
    Unsupported(String),
    /// Truncated or inconsistent data.
    Corrupt(String),
}

/// PIL's image mode after the palette check, with the raw mode its unpacker reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// Mode `1` from 1 bit per pixel (set bit: white).
    One1,
    /// Mode `L` from one byte per pixel.
    L8,
    /// Mode `P` from 1, 4 or 8 bits per pixel.
    P(u32),
    /// Mode `RGB` from 16 bits, 5 bits per channel (`BGR;15`).
    Bgr15,
    /// Mode `RGB` from 16 bits, 5-6-5 (`BGR;16`).
    Bgr16,
    /// Mode `RGB` from 3 bytes, blue first.
    Bgr,
    /// 4 bytes per pixel; the byte index of red, green and blue.
    Bytes4([usize; 3]),
}

impl Raw {
    fn bits(self) -> u64 {
        match self {
            Raw::One1 => 1,
            Raw::L8 => 8,
            Raw::P(b) => b as u64,
            Raw::Bgr15 | Raw::Bgr16 => 16,
            Raw::Bgr => 24,
            Raw::Bytes4(_) => 32,
        }
    }
}

/// A parsed header: what PIL's `_bitmap` sets up before any pixel is read.
#[derive(Debug)]
pub(crate) struct Header {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    bits: u32,
    raw: Raw,
    rle4: Option<bool>,
    top_down: bool,
    /// RGB entries of mode `P`'s palette.
    palette: Vec<[u8; 3]>,
    /// Where the pixel data starts.
    data: usize,
}

fn u16_at(b: &[u8], o: usize) -> u32 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u32
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Reads the headers and the palette, refusing what PIL refuses, in PIL's order.
pub(crate) fn parse(bytes: &[u8]) -> Result<Header, BmpError> {
    let truncated = |what: &str| BmpError::Corrupt(format!("BMP: truncated {what}"));
    if bytes.len() < 18 || !bytes.starts_with(b"BM") {
        return Err(truncated("file header"));
    }
    let offset = u32_at(bytes, 10) as u64;
    let header_size = u32_at(bytes, 14) as u64;
    let hd = bytes
        .get(18..(14 + header_size.max(4)).min(usize::MAX as u64) as usize)
        .ok_or_else(|| truncated("info header"))?;
    let mut pos = 14 + header_size as usize;
    let (width, height, bits, compression, colors, padding, top_down);
    let mut masks = None;
    match header_size {
        12 => {
            width = u16_at(hd, 0);
            height = u16_at(hd, 2);
            bits = u16_at(hd, 6);
            compression = 0;
            colors = 0u64;
            padding = 3u64;
            top_down = false;
        }
        40 | 52 | 56 | 64 | 108 | 124 => {
            top_down = hd[7] == 0xFF;
            width = u32_at(hd, 0);
            let h = u32_at(hd, 4);
            // PIL: 2**32 - height, i.e. the two's-complement magnitude.
            height = if top_down { h.wrapping_neg() } else { h };
            bits = u16_at(hd, 10);
            compression = u32_at(hd, 12);
            colors = u32_at(hd, 28) as u64;
            padding = 4;
            if compression == 3 {
                // 40-byte headers keep the three masks after the header; longer ones inside it
                // (and the alpha mask from 56 bytes on).
                let m = if hd.len() >= 48 {
                    let a = if hd.len() >= 52 { u32_at(hd, 48) } else { 0 };
                    [u32_at(hd, 36), u32_at(hd, 40), u32_at(hd, 44), a]
                } else {
                    let b = bytes.get(pos..pos + 12).ok_or_else(|| truncated("masks"))?;
                    pos += 12;
                    [u32_at(b, 0), u32_at(b, 4), u32_at(b, 8), 0]
                };
                masks = Some(m);
            }
        }
        other => {
            return Err(BmpError::Unsupported(format!(
                "BMP header type ({other} bytes) is not supported (nor by PIL)"
            )))
        }
    }
    let colors = match (colors, bits) {
        (0, b) if b <= 16 => 1u64 << b,
        (0, _) => u64::MAX,
        (c, _) => c,
    };
    let mut data = offset;
    if offset == 14 + header_size && bits <= 8 {
        data += padding * colors;
    }
    let mut raw = match bits {
        1 | 4 | 8 => Raw::P(bits),
        16 => Raw::Bgr15,
        24 => Raw::Bgr,
        32 => Raw::Bytes4([2, 1, 0]),
        b => {
            return Err(BmpError::Unsupported(format!(
                "BMP with {b} bits per pixel is not supported (nor by PIL)"
            )))
        }
    };
    let mut rle4 = None;
    match compression {
        0 => {}
        1 | 2 if bits <= 8 => rle4 = Some(compression == 2),
        1 | 2 => {
            return Err(BmpError::Unsupported(format!(
                "BMP with RLE compression and {bits} bits per pixel is not supported"
            )))
        }
        3 => {
            let [r, g, b, a] = masks.expect("read above");
            let unsupported = || {
                BmpError::Unsupported("BMP bitfields layout is not supported (nor by PIL)".into())
            };
            raw = match (bits, [r, g, b, a]) {
                (32, [0, 0, 0, 0]) => Raw::Bytes4([2, 1, 0]),
                (
                    32,
                    [0xFF0000, 0xFF00, 0xFF, 0]
                    | [0xFF000000, 0xFF0000, 0xFF00, 0]
                    | [0xFF000000, 0xFF00, 0xFF, 0]
                    | [0xFF000000, 0xFF0000, 0xFF00, 0xFF]
                    | [0xFF, 0xFF00, 0xFF0000, 0xFF000000]
                    | [0xFF0000, 0xFF00, 0xFF, 0xFF000000]
                    | [0xFF000000, 0xFF00, 0xFF, 0xFF0000],
                ) => {
                    let byte = |m: u32| (m.trailing_zeros() / 8) as usize;
                    Raw::Bytes4([byte(r), byte(g), byte(b)])
                }
                (24, [0xFF0000, 0xFF00, 0xFF, _]) => Raw::Bgr,
                (16, [0xF800, 0x7E0, 0x1F, _]) => Raw::Bgr16,
                (16, [0x7C00, 0x3E0, 0x1F, _]) => Raw::Bgr15,
                _ => return Err(unsupported()),
            };
        }
        c => {
            return Err(BmpError::Unsupported(format!(
                "BMP with compression {c} is not supported (nor by PIL)"
            )))
        }
    }

    let mut palette = vec![];
    if let Raw::P(_) = raw {
        if !(1..=65536).contains(&colors) {
            return Err(BmpError::Unsupported(format!(
                "BMP palette size ({colors}) is not supported (nor by PIL)"
            )));
        }
        let want = (padding * colors) as usize;
        let table = &bytes[pos.min(bytes.len())..(pos + want).min(bytes.len())];
        pos += table.len();
        let entry = |i: usize| table.get(i * padding as usize..i * padding as usize + 3);
        let grey = if colors == 2 {
            entry(0) == Some(&[0; 3]) && entry(1) == Some(&[255; 3])
        } else {
            (0..colors as usize).all(|i| entry(i) == Some(&[i as u8; 3]))
        };
        if grey {
            raw = if colors <= 2 { Raw::One1 } else { Raw::L8 };
        } else {
            let n = table.len() / padding as usize;
            if n > 256 {
                return Err(BmpError::Corrupt(format!(
                    "BMP palette of {n} entries for at most 256 colours (PIL: invalid palette size)"
                )));
            }
            palette = table
                .chunks_exact(padding as usize)
                .map(|e| [e[2], e[1], e[0]])
                .collect();
        }
    }
    let data = if data == 0 { pos as u64 } else { data };
    Ok(Header {
        width,
        height,
        bits,
        raw,
        rle4,
        top_down,
        palette,
        data: data.min(usize::MAX as u64) as usize,
    })
}

/// Decodes the pixels of a parsed BMP to 8-bit RGB. The caller has checked the size.
pub(crate) fn decode(bytes: &[u8], h: &Header) -> Result<RgbImage, BmpError> {
    let (w, ht) = (h.width as usize, h.height as usize);
    let mut rgb = vec![0u8; w * ht * 3];
    if w == 0 || ht == 0 {
        return Ok(RgbImage::from_raw(h.width, h.height, rgb).expect("sized"));
    }
    let colour = |v: u8| -> [u8; 3] {
        match h.raw {
            Raw::One1 => [if v != 0 { 255 } else { 0 }; 3],
            Raw::L8 => [v; 3],
            _ => h.palette.get(v as usize).copied().unwrap_or([0; 3]),
        }
    };
    let src = bytes.get(h.data..).unwrap_or(&[]);
    if let Some(rle4) = h.rle4 {
        let idx = rle(src, h.data, w, ht, rle4);
        if idx.len() < w * ht {
            return Err(BmpError::Corrupt(
                "BMP RLE data ends before the last row (PIL: not enough image data)".into(),
            ));
        }
        for (y, row) in idx.chunks_exact(w.max(1)).take(ht).enumerate() {
            let out_y = if h.top_down { y } else { ht - 1 - y };
            let out = &mut rgb[out_y * w * 3..(out_y + 1) * w * 3];
            for (o, &v) in out.chunks_exact_mut(3).zip(row) {
                o.copy_from_slice(&colour(v));
            }
        }
        return Ok(RgbImage::from_raw(h.width, h.height, rgb).expect("sized"));
    }

    let stride = (((w as u64 * h.bits as u64 + 31) >> 3) & !3) as usize;
    let row_bytes = (w as u64 * h.raw.bits()).div_ceil(8) as usize;
    if stride < row_bytes {
        return Err(BmpError::Corrupt(format!(
            "BMP rows of {stride} bytes cannot hold {w} pixels in PIL's mode (PIL: raw buffer overflow)"
        )));
    }
    if ht > 0 && src.len() < stride * (ht - 1) + row_bytes {
        return Err(BmpError::Corrupt(format!(
            "truncated BMP pixel data ({} of {} bytes)",
            src.len(),
            stride * (ht - 1) + row_bytes
        )));
    }
    for y in 0..ht {
        let row = &src[y * stride..y * stride + row_bytes];
        let out_y = if h.top_down { y } else { ht - 1 - y };
        let out = &mut rgb[out_y * w * 3..(out_y + 1) * w * 3];
        for (x, o) in out.chunks_exact_mut(3).enumerate() {
            let px = match h.raw {
                Raw::One1 | Raw::P(1) => colour((row[x / 8] >> (7 - x % 8)) & 1),
                Raw::P(4) => colour((row[x / 2] >> (4 - 4 * (x % 2))) & 15),
                Raw::L8 | Raw::P(_) => colour(row[x]),
                Raw::Bgr15 | Raw::Bgr16 => {
                    let p = u16::from_le_bytes([row[2 * x], row[2 * x + 1]]) as u32;
                    let five = |v: u32| (v * 255 / 31) as u8;
                    if h.raw == Raw::Bgr15 {
                        [five((p >> 10) & 31), five((p >> 5) & 31), five(p & 31)]
                    } else {
                        [
                            five((p >> 11) & 31),
                            (((p >> 5) & 63) * 255 / 63) as u8,
                            five(p & 31),
                        ]
                    }
                }
                Raw::Bgr => [row[3 * x + 2], row[3 * x + 1], row[3 * x]],
                Raw::Bytes4([r, g, b]) => [row[4 * x + r], row[4 * x + g], row[4 * x + b]],
            };
            o.copy_from_slice(&px);
        }
    }
    Ok(RgbImage::from_raw(h.width, h.height, rgb).expect("sized"))
}

/// PIL's `BmpRleDecoder`: palette indices in file row order, as many as the stream gives (at
/// most `w * h`). Skipped pixels (delta, end of line) are index 0; a run longer than what is left
/// of its row is cut at the row's end, an absolute run is not; absolute runs are padded to an
/// even *file* offset (`start` is where `src` lies in the file).
fn rle(src: &[u8], start: usize, w: usize, h: usize, rle4: bool) -> Vec<u8> {
    let dest = w * h;
    let mut data: Vec<u8> = Vec::with_capacity(dest);
    let mut x = 0usize;
    let mut p = 0usize;
    while data.len() < dest {
        let (Some(&n), Some(&byte)) = (src.get(p), src.get(p + 1)) else {
            break;
        };
        p += 2;
        if n != 0 {
            let n = if x + n as usize > w {
                w.saturating_sub(x)
            } else {
                n as usize
            };
            if rle4 {
                let pair = [byte >> 4, byte & 15];
                data.extend((0..n).map(|i| pair[i % 2]));
            } else {
                data.extend(std::iter::repeat_n(byte, n));
            }
            x += n;
        } else {
            match byte {
                0 => {
                    let pad = (w - data.len() % w) % w;
                    data.extend(std::iter::repeat_n(0, pad));
                    x = 0;
                }
                1 => break,
                2 => {
                    let (Some(&right), Some(&up)) = (src.get(p), src.get(p + 1)) else {
                        break;
                    };
                    p += 2;
                    let skip = (right as usize + up as usize * w).min(dest - data.len());
                    data.extend(std::iter::repeat_n(0, skip));
                    x = data.len() % w;
                }
                count => {
                    let count_n = (dest - data.len()).min(count as usize);
                    let byte_count = if rle4 { count_n.div_ceil(2) } else { count_n };
                    let got = &src[p.min(src.len())..(p + byte_count).min(src.len())];
                    p += got.len();
                    if rle4 {
                        for (i, &b) in got.iter().enumerate() {
                            data.push(b >> 4);
                            if i * 2 + 1 < count_n {
                                data.push(b & 15);
                            }
                        }
                    } else {
                        data.extend_from_slice(got);
                    }
                    if got.len() < byte_count || data.len() == dest {
                        break;
                    }
                    x += count as usize;
                    if (start + p) & 1 == 1 {
                        p += 1;
                    }
                }
            }
        }
    }
    data.truncate(dest);
    data
}
