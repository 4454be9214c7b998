//! Marker segments: the frame header, tables, scan headers, and the APP segments that decide
//! the colour space (JFIF, Adobe) and the orientation (EXIF).

use super::huffman::HuffTable;
use super::JpegError;

/// Zigzag position → natural (row-major) position.
pub const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// One component of the frame.
#[derive(Clone)]
pub struct Component {
    /// Component identifier from the SOF.
    pub id: u8,
    /// Horizontal sampling factor.
    pub h: usize,
    /// Vertical sampling factor.
    pub v: usize,
    /// Quantisation table selector.
    pub tq: usize,
    /// Width in samples, `ceil(width * h / max_h)`.
    pub width: usize,
    /// Height in samples.
    pub height: usize,
    /// Blocks that hold image samples, per row and per column.
    pub bw: usize,
    /// Block rows that hold image samples.
    pub bh: usize,
    /// Blocks per row in the coefficient buffer (padded to whole MCUs).
    pub bstride: usize,
    /// Block rows in the coefficient buffer.
    pub brows: usize,
    /// The quantisation table latched at this component's first scan (natural order).
    pub quant: Option<[u16; 64]>,
}

/// The frame header.
#[derive(Clone)]
pub struct Frame {
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// SOF2.
    pub progressive: bool,
    /// The components, in SOF order.
    pub comps: Vec<Component>,
    /// Largest horizontal sampling factor.
    pub max_h: usize,
    /// Largest vertical sampling factor.
    pub max_v: usize,
    /// MCUs per row of an interleaved scan.
    pub mcux: usize,
    /// MCU rows of an interleaved scan.
    pub mcuy: usize,
}

/// Big-endian u16 at `p`.
pub fn be16(d: &[u8], p: usize) -> usize {
    ((d[p] as usize) << 8) | d[p + 1] as usize
}

/// Parses a SOF segment body.
pub fn parse_sof(seg: &[u8], marker: u8) -> Result<Frame, JpegError> {
    if seg.len() < 6 {
        return Err(JpegError::Corrupt("short frame header".into()));
    }
    if seg[0] != 8 {
        return Err(JpegError::Unsupported(format!(
            "{}-bit samples (only 8-bit JPEG is supported)",
            seg[0]
        )));
    }
    let height = be16(seg, 1);
    let width = be16(seg, 3);
    let n = seg[5] as usize;
    if height == 0 {
        return Err(JpegError::Unsupported(
            "height defined by a DNL marker".into(),
        ));
    }
    if width == 0 {
        return Err(JpegError::Corrupt("zero image width".into()));
    }
    if !(n == 1 || n == 3 || n == 4) {
        return Err(JpegError::Unsupported(format!("{n}-component images")));
    }
    if seg.len() < 6 + 3 * n {
        return Err(JpegError::Corrupt("short frame header".into()));
    }
    let mut comps = Vec::with_capacity(n);
    for i in 0..n {
        let c = &seg[6 + 3 * i..9 + 3 * i];
        let (h, v) = ((c[1] >> 4) as usize, (c[1] & 15) as usize);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
            return Err(JpegError::Corrupt("bad sampling factors or table".into()));
        }
        comps.push(Component {
            id: c[0],
            h,
            v,
            tq: c[2] as usize,
            width: 0,
            height: 0,
            bw: 0,
            bh: 0,
            bstride: 0,
            brows: 0,
            quant: None,
        });
    }
    let max_h = comps.iter().map(|c| c.h).max().unwrap_or(1);
    let max_v = comps.iter().map(|c| c.v).max().unwrap_or(1);
    let mcux = width.div_ceil(8 * max_h);
    let mcuy = height.div_ceil(8 * max_v);
    for c in &mut comps {
        c.width = (width * c.h).div_ceil(max_h);
        c.height = (height * c.v).div_ceil(max_v);
        c.bw = c.width.div_ceil(8);
        c.bh = c.height.div_ceil(8);
        c.bstride = mcux * c.h;
        c.brows = mcuy * c.v;
    }
    Ok(Frame {
        width,
        height,
        progressive: marker == 0xC2,
        comps,
        max_h,
        max_v,
        mcux,
        mcuy,
    })
}

/// Parses a DQT segment into `tables` (natural order).
pub fn parse_dqt(mut seg: &[u8], tables: &mut [Option<[u16; 64]>; 4]) -> Result<(), JpegError> {
    while !seg.is_empty() {
        let (pq, tq) = (seg[0] >> 4, (seg[0] & 15) as usize);
        let size = if pq == 0 { 64 } else { 128 };
        if tq > 3 || pq > 1 || seg.len() < 1 + size {
            return Err(JpegError::Corrupt("bad quantisation table".into()));
        }
        let mut t = [0u16; 64];
        for (k, &pos) in ZIGZAG.iter().enumerate() {
            t[pos] = if pq == 0 {
                seg[1 + k] as u16
            } else {
                be16(seg, 1 + 2 * k) as u16
            };
        }
        tables[tq] = Some(t);
        seg = &seg[1 + size..];
    }
    Ok(())
}

/// Parses a DHT segment into the DC (class 0) and AC (class 1) tables.
pub fn parse_dht(
    mut seg: &[u8],
    dc: &mut [Option<HuffTable>; 4],
    ac: &mut [Option<HuffTable>; 4],
) -> Result<(), JpegError> {
    while !seg.is_empty() {
        if seg.len() < 17 {
            return Err(JpegError::Corrupt("bad Huffman table".into()));
        }
        let (class, th) = (seg[0] >> 4, (seg[0] & 15) as usize);
        let counts: [u8; 16] = seg[1..17].try_into().expect("16 bytes");
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if class > 1 || th > 3 || seg.len() < 17 + total {
            return Err(JpegError::Corrupt("bad Huffman table".into()));
        }
        let t = HuffTable::new(&counts, &seg[17..17 + total])?;
        if class == 0 {
            dc[th] = Some(t);
        } else {
            ac[th] = Some(t);
        }
        seg = &seg[17 + total..];
    }
    Ok(())
}

/// The EXIF orientation (1–8) in an APP1 segment body, if it holds one. Only an `Exif\0\0`
/// segment is EXIF (other APP1 segments carry XMP); the tag itself is read by the decoder's
/// shared EXIF reader.
pub fn exif_orientation(seg: &[u8]) -> Option<u8> {
    if !seg.starts_with(b"Exif\0\0") {
        return None;
    }
    let v = crate::decode::exif::orientation_from_exif(seg)?;
    (1..=8).contains(&v).then_some(v as u8)
}
