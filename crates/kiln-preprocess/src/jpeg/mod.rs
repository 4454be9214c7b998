//! A JPEG decoder whose pixels equal libjpeg-turbo's as Pillow calls it
//! (`Image.open(f).convert("RGB")`): the islow integer IDCT, fancy upsampling, libjpeg-turbo's
//! fixed-point colour conversion and its block smoothing for progressive files, Adobe CMYK/YCCK
//! read inverted as Pillow reads them (`"CMYK;I"`) and Pillow's own CMYK → RGB.
//!
//! Covered: baseline, extended sequential (8-bit) and progressive Huffman-coded files, any
//! sampling factors libjpeg-turbo accepts (integer ratios), restart intervals, 1, 3 and 4
//! components. Refused with a [`JpegError::Unsupported`]: arithmetic coding, lossless and
//! hierarchical processes, 12- and 16-bit samples, DNL-defined heights, 2-component files.
//!
//! Module layout: [`markers`] (segments), [`huffman`] (bit stream and tables), [`scan`] (entropy
//! decoding), [`idct`], [`smooth`] (block smoothing), [`output`] (upsampling and colour).

pub mod huffman;
pub mod idct;
pub mod markers;
pub mod output;
pub mod scan;
pub mod simd;
pub mod smooth;

use huffman::HuffTable;
use markers::{be16, Frame};
use output::{Plane, Upsampler, YccTables};
use scan::{Coefs, ScanHeader};
pub use simd::Isa;

/// Why a JPEG could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    /// The data stops early.
    #[error("truncated JPEG data: {0}")]
    Truncated(String),
    /// No start-of-image marker at the start.
    #[error("not a JPEG file (no start-of-image marker)")]
    MissingSoi,
    /// A scan before any frame header.
    #[error("corrupt JPEG data: scan (SOS) before the frame header (SOF)")]
    MissingSof,
    /// The image ended with no scan.
    #[error("corrupt JPEG data: no scan (SOS) in the image")]
    MissingSos,
    /// Invalid data.
    #[error("corrupt JPEG data: {0}")]
    Corrupt(String),
    /// Valid JPEG that this decoder does not implement.
    #[error("unsupported JPEG: {0}")]
    Unsupported(String),
}

/// What the file holds, as Pillow names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JpegMode {
    /// One component: Pillow mode `L`.
    L,
    /// Three components (YCbCr or RGB): Pillow mode `RGB`.
    Rgb,
    /// Four components (CMYK or YCCK): Pillow mode `CMYK`.
    Cmyk,
}

/// The header facts, read without decoding any scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegInfo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Pillow's mode for the file.
    pub mode: JpegMode,
    /// EXIF orientation (1–8) from the first APP1 Exif segment before the frame, if any.
    pub orientation: Option<u8>,
}

/// A decoded image: 8-bit samples, interleaved, in Pillow's mode for the file (`L`: 1 per
/// pixel, `RGB`: 3, `CMYK`: 4 — already inverted as Pillow's `"CMYK;I"` reads Adobe files).
#[derive(Debug, Clone)]
pub struct JpegImage {
    /// Header facts.
    pub info: JpegInfo,
    /// Samples, row-major.
    pub data: Vec<u8>,
}

impl JpegImage {
    /// The pixels as Pillow's `convert("RGB")` makes them.
    pub fn to_rgb(&self) -> Vec<u8> {
        match self.info.mode {
            JpegMode::Rgb => self.data.clone(),
            JpegMode::L => self.data.iter().flat_map(|&v| [v; 3]).collect(),
            JpegMode::Cmyk => self.data.chunks_exact(4).flat_map(cmyk_to_rgb).collect(),
        }
    }

    /// [`to_rgb`](Self::to_rgb), consuming the image (no copy when it is already RGB).
    pub fn into_rgb(self) -> Vec<u8> {
        if self.info.mode == JpegMode::Rgb {
            self.data
        } else {
            self.to_rgb()
        }
    }
}

/// Pillow's `cmyk2rgb` (Convert.c): `nk − nk·c/255` with its rounded MULDIV255.
fn cmyk_to_rgb(p: &[u8]) -> [u8; 3] {
    let nk = 255 - p[3] as u32;
    let f = |c: u8| {
        let t = c as u32 * nk + 128;
        (nk - (((t >> 8) + t) >> 8)) as u8
    };
    [f(p[0]), f(p[1]), f(p[2])]
}

/// Reads the header up to the frame (and any orientation before it) without decoding scans,
/// so that a size limit can be checked before anything is allocated.
pub fn probe(data: &[u8]) -> Result<JpegInfo, JpegError> {
    let mut p = Parser::new(data)?;
    loop {
        let Some((m, seg)) = p.next_segment()? else {
            return Err(JpegError::Truncated(
                "no frame header before the end".into(),
            ));
        };
        p.note_app(m, seg);
        if let Some(f) = sof_kind(m)? {
            let frame = markers::parse_sof(seg, f)?;
            return Ok(JpegInfo {
                width: frame.width as u32,
                height: frame.height as u32,
                mode: mode_of(&frame),
                orientation: p.orientation,
            });
        }
        if m == 0xDA {
            return Err(JpegError::MissingSof);
        }
        if m == 0xD9 {
            return Err(JpegError::MissingSof);
        }
    }
}

fn mode_of(f: &Frame) -> JpegMode {
    match f.comps.len() {
        1 => JpegMode::L,
        3 => JpegMode::Rgb,
        _ => JpegMode::Cmyk,
    }
}

/// `Some(marker)` for a frame header this decoder reads, an error for those it refuses.
fn sof_kind(m: u8) -> Result<Option<u8>, JpegError> {
    match m {
        0xC0..=0xC2 => Ok(Some(m)),
        0xC3 => Err(JpegError::Unsupported("lossless JPEG (SOF3)".into())),
        0xC5..=0xC7 => Err(JpegError::Unsupported("hierarchical JPEG".into())),
        0xC9..=0xCB | 0xCD..=0xCF => Err(JpegError::Unsupported("arithmetic coding".into())),
        _ => Ok(None),
    }
}

struct Parser<'a> {
    data: &'a [u8],
    pos: usize,
    orientation: Option<u8>,
    seen_exif: bool,
    jfif: bool,
    adobe: Option<u8>,
}

impl<'a> Parser<'a> {
    fn new(data: &'a [u8]) -> Result<Self, JpegError> {
        if data.len() < 2 || data[0] != 0xFF || data[1] != 0xD8 {
            return Err(JpegError::MissingSoi);
        }
        Ok(Self {
            data,
            pos: 2,
            orientation: None,
            seen_exif: false,
            jfif: false,
            adobe: None,
        })
    }

    /// The next marker and its segment body (empty for markers without one); `None` at the
    /// end of the data. Bytes before a marker are skipped, as libjpeg skips them.
    fn next_segment(&mut self) -> Result<Option<(u8, &'a [u8])>, JpegError> {
        let d = self.data;
        let Some((_, m, after)) = next_marker(d, self.pos) else {
            self.pos = d.len();
            return Ok(None);
        };
        self.pos = after;
        match m {
            0x01 | 0xD0..=0xD9 => Ok(Some((m, &[]))),
            _ => {
                if self.pos + 2 > d.len() {
                    return Err(JpegError::Truncated("inside a marker segment".into()));
                }
                let len = be16(d, self.pos);
                if len < 2 {
                    return Err(JpegError::Corrupt("bad marker segment length".into()));
                }
                if self.pos + len > d.len() {
                    return Err(JpegError::Truncated("inside a marker segment".into()));
                }
                let seg = &d[self.pos + 2..self.pos + len];
                self.pos += len;
                Ok(Some((m, seg)))
            }
        }
    }

    fn note_app(&mut self, m: u8, seg: &[u8]) {
        match m {
            0xE0 if seg.starts_with(b"JFIF\0") => self.jfif = true,
            0xE1 if !self.seen_exif && seg.starts_with(b"Exif\0\0") => {
                // Pillow reads the first Exif segment only.
                self.seen_exif = true;
                self.orientation = markers::exif_orientation(seg);
            }
            0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => self.adobe = Some(seg[11]),
            _ => {}
        }
    }
}

/// The colour space libjpeg-turbo assumes (`default_decompress_parms`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ColorSpace {
    Gray,
    YCbCr,
    Rgb,
    Cmyk,
    Ycck,
}

/// Decodes a whole JPEG file.
pub fn decode(data: &[u8]) -> Result<JpegImage, JpegError> {
    decode_with_isa(data, Isa::detect())
}

/// [`decode`] with the given code paths: [`Isa::Scalar`] runs the portable code only (the
/// tests compare it with the SIMD paths). `Isa::Avx2` falls back to the scalar code on a CPU
/// without AVX2.
pub fn decode_with_isa(data: &[u8], isa: Isa) -> Result<JpegImage, JpegError> {
    let isa = match isa {
        Isa::Avx2 if Isa::detect() == Isa::Avx2 => Isa::Avx2,
        _ => Isa::Scalar,
    };
    let parts = decode_parts(data)?;
    let data = render(&parts, isa)?;
    Ok(JpegImage {
        info: parts.info,
        data,
    })
}

/// The next marker from `from` as libjpeg's `next_marker` finds it: a 0xFF, any 0xFF fill bytes,
/// then a code other than 0 (an 0xFF 0x00 pair is data and is skipped). `(position of the
/// 0xFF, code, position after the code)`; `None` at the end of the data.
pub(crate) fn next_marker(data: &[u8], mut from: usize) -> Option<(usize, u8, usize)> {
    loop {
        let ff = from + data.get(from..)?.iter().position(|&b| b == 0xFF)?;
        let mut q = ff + 1;
        while data.get(q) == Some(&0xFF) {
            q += 1;
        }
        match *data.get(q)? {
            0 => from = q + 1,
            code => return Some((q - 1, code, q + 1)),
        }
    }
}

/// Everything up to the samples: the frame, all coefficients, the colour space.
struct Parts {
    frame: Frame,
    coefs: Coefs,
    cs: ColorSpace,
    info: JpegInfo,
    smoothing: bool,
}

fn decode_parts(data: &[u8]) -> Result<Parts, JpegError> {
    let mut p = Parser::new(data)?;
    let mut qt: [Option<[u16; 64]>; 4] = [None; 4];
    let mut dc: [Option<HuffTable>; 4] = Default::default();
    let mut ac: [Option<HuffTable>; 4] = Default::default();
    let mut frame: Option<Frame> = None;
    let mut coefs: Option<Coefs> = None;
    let mut restart = 0usize;
    let mut scans = 0usize;
    // A sequential frame whose first scan holds every component is complete after that scan:
    // libjpeg has handed PIL every row by then, and PIL keeps the image when what follows ends
    // early (its source suspends in `jpeg_finish_decompress`). Any other frame is read to EOI.
    let mut rows_out = false;
    loop {
        let next = match p.next_segment() {
            Err(JpegError::Truncated(_)) if rows_out => None,
            r => r?,
        };
        let Some((m, seg)) = next else {
            if rows_out {
                break;
            }
            return Err(JpegError::Truncated(
                "no end-of-image marker after the last scan".into(),
            ));
        };
        p.note_app(m, seg);
        match m {
            0xD9 => break,
            0xDB => markers::parse_dqt(seg, &mut qt)?,
            0xC4 => markers::parse_dht(seg, &mut dc, &mut ac)?,
            0xCC => return Err(JpegError::Unsupported("arithmetic coding".into())),
            0xDD => {
                if seg.len() < 2 {
                    return Err(JpegError::Corrupt("bad restart interval segment".into()));
                }
                restart = be16(seg, 0);
            }
            0xDC => return Err(JpegError::Unsupported("DNL marker".into())),
            0xDA => {
                let f = frame.as_mut().ok_or(JpegError::MissingSof)?;
                let sh = parse_sos(seg, f)?;
                for &ci in &sh.comps {
                    let c = &mut f.comps[ci];
                    if c.quant.is_none() {
                        // libjpeg latches a component's table at its first scan.
                        c.quant = Some(qt[c.tq].ok_or_else(|| {
                            JpegError::Corrupt("scan uses an undefined quantisation table".into())
                        })?);
                    }
                }
                let co = coefs.as_mut().expect("allocated with the frame");
                p.pos = scan::decode_scan(data, p.pos, f, &sh, &dc, &ac, restart, co)?;
                scans += 1;
                rows_out |= scans == 1 && !f.progressive && sh.comps.len() == f.comps.len();
            }
            _ => {
                if let Some(k) = sof_kind(m)? {
                    if frame.is_some() {
                        return Err(JpegError::Corrupt("second frame header".into()));
                    }
                    let f = markers::parse_sof(seg, k)?;
                    coefs = Some(Coefs {
                        blocks: f
                            .comps
                            .iter()
                            .map(|c| vec![0i16; c.bstride * c.brows * 64])
                            .collect(),
                        coef_bits: vec![[-1; 64]; f.comps.len()],
                    });
                    frame = Some(f);
                }
            }
        }
    }
    let frame = frame.ok_or(JpegError::MissingSof)?;
    if scans == 0 {
        return Err(JpegError::MissingSos);
    }
    let coefs = coefs.expect("allocated with the frame");
    let cs = match frame.comps.len() {
        1 => ColorSpace::Gray,
        3 => {
            if p.jfif {
                ColorSpace::YCbCr
            } else if let Some(t) = p.adobe {
                if t == 0 {
                    ColorSpace::Rgb
                } else {
                    ColorSpace::YCbCr
                }
            } else {
                let ids: Vec<u8> = frame.comps.iter().map(|c| c.id).collect();
                if ids == [b'R', b'G', b'B'] {
                    ColorSpace::Rgb
                } else {
                    ColorSpace::YCbCr
                }
            }
        }
        _ => match p.adobe {
            Some(0) | None => ColorSpace::Cmyk,
            Some(_) => ColorSpace::Ycck,
        },
    };
    let info = JpegInfo {
        width: frame.width as u32,
        height: frame.height as u32,
        mode: mode_of(&frame),
        orientation: p.orientation,
    };
    let smoothing = frame.progressive && smooth::smoothing_ok(&frame.comps, &coefs.coef_bits);
    Ok(Parts {
        frame,
        coefs,
        cs,
        info,
        smoothing,
    })
}

fn parse_sos(seg: &[u8], f: &Frame) -> Result<ScanHeader, JpegError> {
    let bad = || JpegError::Corrupt("bad scan header".into());
    let n = *seg.first().ok_or_else(bad)? as usize;
    if n == 0 || n > 4 || seg.len() < 1 + 2 * n + 3 {
        return Err(bad());
    }
    let mut comps = Vec::with_capacity(n);
    let mut tables = Vec::with_capacity(n);
    for i in 0..n {
        let id = seg[1 + 2 * i];
        let t = seg[2 + 2 * i];
        let ci = f.comps.iter().position(|c| c.id == id).ok_or_else(bad)?;
        if comps.contains(&ci) || (t >> 4) > 3 || (t & 15) > 3 {
            return Err(bad());
        }
        comps.push(ci);
        tables.push(((t >> 4) as usize, (t & 15) as usize));
    }
    let s = &seg[1 + 2 * n..];
    Ok(ScanHeader {
        comps,
        tables,
        ss: s[0] as usize,
        se: s[1] as usize,
        ah: (s[2] >> 4) as u32,
        al: (s[2] & 15) as u32,
    })
}

/// IDCT, upsampling and colour conversion into Pillow's mode.
fn render(parts: &Parts, isa: Isa) -> Result<Vec<u8>, JpegError> {
    let (f, co, cs, smoothing) = (&parts.frame, &parts.coefs, parts.cs, parts.smoothing);
    if f.comps.iter().any(|c| c.quant.is_none()) {
        return Err(JpegError::Corrupt("a component appears in no scan".into()));
    }
    let total_imcu_rows = f.mcuy;
    let planes: Vec<Plane> = f
        .comps
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let s = smoothing.then_some((&co.coef_bits[i], total_imcu_rows));
            output::idct_plane(c, &co.blocks[i], s, isa)
        })
        .collect();
    let mut ups = Vec::with_capacity(f.comps.len());
    for c in &f.comps {
        if f.max_h % c.h != 0 || f.max_v % c.v != 0 {
            return Err(JpegError::Unsupported(
                "fractional sampling factor ratios".into(),
            ));
        }
        ups.push(
            Upsampler::new(f.max_h / c.h, f.max_v / c.v, c.width, isa).expect("integer ratio"),
        );
    }
    let (w, h) = (f.width, f.height);
    let n = f.comps.len();
    let mut out = vec![0u8; w * h * n];
    let mut rows = vec![vec![0u8; w]; n];
    let ycc = YccTables::new();
    for y in 0..h {
        for ((u, p), r) in ups.iter().zip(&planes).zip(rows.iter_mut()) {
            u.row(p, y, r);
        }
        let o = &mut out[y * w * n..(y + 1) * w * n];
        match cs {
            ColorSpace::Gray => o.copy_from_slice(&rows[0]),
            ColorSpace::Rgb => {
                for (x, px) in o.chunks_exact_mut(3).enumerate() {
                    px.copy_from_slice(&[rows[0][x], rows[1][x], rows[2][x]]);
                }
            }
            ColorSpace::YCbCr => output::ycc_row(&ycc, isa, &rows[0], &rows[1], &rows[2], o),
            ColorSpace::Cmyk | ColorSpace::Ycck => {
                for (x, px) in o.chunks_exact_mut(4).enumerate() {
                    let (c, m, ye) = if cs == ColorSpace::Ycck {
                        // ycck_cmyk_convert: the YCbCr → RGB result, inverted.
                        let [r, g, b] = ycc.rgb(rows[0][x], rows[1][x], rows[2][x]);
                        (255 - r, 255 - g, 255 - b)
                    } else {
                        (rows[0][x], rows[1][x], rows[2][x])
                    };
                    // Pillow's "CMYK;I" inverts every channel.
                    px.copy_from_slice(&[255 - c, 255 - m, 255 - ye, 255 - rows[3][x]]);
                }
            }
        }
    }
    Ok(out)
}

/// Decodes JPEG bytes for [`crate::decode_bytes`]: the size limits checked from the header
/// before anything is allocated, then the pixels as Pillow's `convert("RGB")` gives them, turned
/// upright by the EXIF orientation when `opts` asks (Pillow's `exif_transpose`).
pub fn decode_input(
    bytes: &[u8],
    source: &str,
    opts: &crate::DecodeOptions,
) -> Result<crate::Decoded, crate::InputError> {
    use crate::InputError;
    let err = |e: JpegError| match e {
        JpegError::Unsupported(_) => InputError::Unsupported {
            path: source.into(),
            reason: format!("JPEG: {e}"),
        },
        _ => InputError::Corrupt {
            path: source.into(),
            reason: e.to_string(),
        },
    };
    let info = probe(bytes).map_err(err)?;
    let (w, h) = (info.width, info.height);
    crate::decode::check_header_size(w, h, opts, source)?;
    let img = decode(bytes).map_err(err)?;
    let original_color = match img.info.mode {
        JpegMode::L => image::ColorType::L8,
        JpegMode::Rgb => image::ColorType::Rgb8,
        // `image` has no CMYK colour type; report what it used to report for CMYK JPEGs.
        JpegMode::Cmyk => image::ColorType::Rgb8,
    };
    let orientation = match (opts.apply_exif_orientation, img.info.orientation) {
        (true, Some(o)) => image::metadata::Orientation::from_exif(o)
            .unwrap_or(image::metadata::Orientation::NoTransforms),
        _ => image::metadata::Orientation::NoTransforms,
    };
    let rgb = image::RgbImage::from_raw(w, h, img.into_rgb()).expect("sized by the decoder");
    let reoriented = orientation != image::metadata::Orientation::NoTransforms;
    let rgb = if reoriented {
        let mut d = image::DynamicImage::ImageRgb8(rgb);
        d.apply_orientation(orientation);
        d.into_rgb8()
    } else {
        rgb
    };
    Ok(crate::Decoded {
        rgb,
        format: Some(image::ImageFormat::Jpeg),
        original_color,
        reoriented,
    })
}

/// Whether decoding `data` applies libjpeg-turbo's block smoothing (a progressive file whose
/// low-frequency coefficients are not all known to full precision). For tests and diagnostics.
pub fn uses_block_smoothing(data: &[u8]) -> Result<bool, JpegError> {
    Ok(decode_parts(data)?.smoothing)
}
