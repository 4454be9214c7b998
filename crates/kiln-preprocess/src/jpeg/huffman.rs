//! Huffman tables and the entropy-coded bit stream: byte unstuffing, markers inside scan data,
//! and the symbol/extend decoding that baseline and progressive scans share.

use super::JpegError;

const LOOKUP_BITS: u32 = 10;

/// A decoding table built from a DHT segment.
#[derive(Clone)]
pub struct HuffTable {
    /// `(length << 8) | symbol` for codes of at most `LOOKUP_BITS` bits, indexed by the next
    /// `LOOKUP_BITS` bits of the stream; 0 when the code is longer.
    lookup: Vec<u16>,
    /// Largest code of each length (1-based), -1 when there is none.
    maxcode: [i32; 18],
    /// Index into `values` of the first code of each length, minus that code.
    valoffset: [i32; 17],
    values: Vec<u8>,
    /// For AC decoding: indexed like `lookup`, `(value << 16) | (run << 4) | bits` when the
    /// code and its magnitude bits together fit in `LOOKUP_BITS` (`bits` is their total, `run`
    /// the zero run before the coefficient, `value` the extended coefficient, never 0), or
    /// just `bits` for the end-of-block symbol; 0 otherwise (longer codes, zero-run and other
    /// end-of-band symbols), which takes the general path.
    fast_ac: Vec<i32>,
}

impl HuffTable {
    /// Builds the table from the 16 code-length counts and the symbol values.
    pub fn new(counts: &[u8; 16], values: &[u8]) -> Result<Self, JpegError> {
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total > 256 || total != values.len() {
            return Err(JpegError::Corrupt("bad Huffman table".into()));
        }
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 17];
        let mut lookup = vec![0u16; 1 << LOOKUP_BITS];
        let mut code: u32 = 0;
        let mut k = 0usize;
        for len in 1..=16u32 {
            let n = counts[len as usize - 1] as usize;
            valoffset[len as usize] = k as i32 - code as i32;
            for _ in 0..n {
                // Codes of this length are used up: the counts are oversubscribed. Checked
                // before the lookup fill below, which would otherwise index past its end
                // (found by fuzzing: fuzz/regressions/jpeg_decode/).
                if code >= (1 << len) {
                    return Err(JpegError::Corrupt("bad Huffman table".into()));
                }
                if len <= LOOKUP_BITS {
                    let shift = LOOKUP_BITS - len;
                    let base = (code << shift) as usize;
                    for e in &mut lookup[base..base + (1 << shift)] {
                        *e = ((len as u16) << 8) | values[k] as u16;
                    }
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                maxcode[len as usize] = code as i32 - 1;
            }
            // One past the last code of this length must still fit in `len` bits: no code may
            // be all ones (libjpeg's jpeg_make_d_derived_tbl, JERR_BAD_HUFF_TABLE).
            if code >= (1 << len) {
                return Err(JpegError::Corrupt("bad Huffman table".into()));
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        let mut fast_ac = vec![0i32; 1 << LOOKUP_BITS];
        for (i, f) in fast_ac.iter_mut().enumerate() {
            let e = lookup[i];
            if e == 0 {
                continue;
            }
            let (len, rs) = ((e >> 8) as u32, e as u8);
            let (run, size) = ((rs >> 4) as i32, (rs & 15) as u32);
            if rs == 0 {
                // End of block (EOB0 in a progressive scan): value 0, which no coefficient has.
                *f = len as i32;
                continue;
            }
            if size == 0 || len + size > LOOKUP_BITS {
                continue;
            }
            let v = ((i as u32) >> (LOOKUP_BITS - len - size)) & ((1 << size) - 1);
            let v = extend(v as i32, size);
            *f = (v << 16) | (run << 4) | (len + size) as i32;
        }
        Ok(Self {
            lookup,
            maxcode,
            valoffset,
            values: values.to_vec(),
            fast_ac,
        })
    }
}

/// `v`, the `n` magnitude bits that follow a symbol, as a signed value (the standard's EXTEND).
#[inline(always)]
fn extend(v: i32, n: u32) -> i32 {
    if v < 1 << (n - 1) {
        v - (1 << n) + 1
    } else {
        v
    }
}

/// Reads entropy-coded bits from the scan data that starts at `pos`, stopping at the first
/// marker; past it (or past the end of the data) it supplies zero bits and counts them, so that
/// running out of real data is detected instead of silently decoded.
pub struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte of `data` to load.
    pub pos: usize,
    buf: u64,
    bits: u32,
    /// Zero bytes supplied after the data ended.
    fake: u32,
    /// Whether a marker (or the end of the data) stopped loading.
    stopped: bool,
    /// Whether loading reached the end of the data without a marker: libjpeg's source would
    /// suspend there, and PIL reports the file as truncated.
    pub at_eof: bool,
}

impl<'a> BitReader<'a> {
    /// A reader over `data` starting at `pos`.
    pub fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            buf: 0,
            bits: 0,
            fake: 0,
            stopped: false,
            at_eof: false,
        }
    }

    #[inline(always)]
    fn refill(&mut self) {
        // Eight bytes at once when none of them is 0xFF (no stuffing, no marker): as many whole
        // bytes as fit go in below the buffered bits.
        if !self.stopped && self.pos + 8 <= self.data.len() {
            let w = u64::from_be_bytes(
                self.data[self.pos..self.pos + 8]
                    .try_into()
                    .expect("8 bytes"),
            );
            // A byte of `!w` is zero exactly where `w` has 0xFF (the classic has-zero-byte test).
            let ones = 0x0101_0101_0101_0101u64;
            let has_ff = ((!w).wrapping_sub(ones) & w & (ones << 7)) != 0;
            if !has_ff {
                let k = (64 - self.bits) / 8;
                if k > 0 {
                    let add = w >> (64 - 8 * k);
                    self.buf |= add << (64 - self.bits - 8 * k);
                    self.bits += 8 * k;
                    self.pos += k as usize;
                }
                return;
            }
        }
        while self.bits <= 56 {
            let byte = if self.stopped {
                self.fake += 1;
                0
            } else if self.pos < self.data.len() {
                let b = self.data[self.pos];
                if b == 0xFF {
                    match self.data.get(self.pos + 1) {
                        Some(0x00) => {
                            self.pos += 2;
                            0xFF
                        }
                        next => {
                            self.stopped = true;
                            self.at_eof = next.is_none();
                            self.fake += 1;
                            0
                        }
                    }
                } else {
                    self.pos += 1;
                    b
                }
            } else {
                self.stopped = true;
                self.at_eof = true;
                self.fake += 1;
                0
            };
            self.buf |= (byte as u64) << (56 - self.bits);
            self.bits += 8;
        }
    }

    /// Whether more bits were consumed than the data held.
    pub fn overran(&self) -> bool {
        (self.bits as u64) < self.fake as u64 * 8
    }

    #[inline(always)]
    fn peek(&mut self, n: u32) -> u32 {
        if self.bits < n {
            self.refill();
        }
        (self.buf >> (64 - n)) as u32
    }

    #[inline(always)]
    fn consume(&mut self, n: u32) {
        self.buf <<= n;
        self.bits -= n;
    }

    /// `n` raw bits (n ≤ 16).
    #[inline(always)]
    pub fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let v = self.peek(n);
        self.consume(n);
        v
    }

    /// One bit.
    #[inline(always)]
    pub fn bit(&mut self) -> bool {
        self.bits(1) != 0
    }

    /// `n` bits read as a signed JPEG magnitude (the EXTEND of the standard's F.2.2.1).
    #[inline(always)]
    pub fn receive_extend(&mut self, n: u32) -> i32 {
        if n == 0 {
            return 0;
        }
        extend(self.bits(n) as i32, n)
    }

    /// One AC coefficient through the table's `fast_ac` entry, if the next bits have one:
    /// `(run, value)`, with the code and magnitude bits consumed; `(0, 0)` is end of block.
    #[inline(always)]
    pub fn fast_ac(&mut self, t: &HuffTable) -> Option<(usize, i32)> {
        if self.bits < LOOKUP_BITS {
            self.refill();
        }
        let f = t.fast_ac[(self.buf >> (64 - LOOKUP_BITS)) as usize];
        if f == 0 {
            return None;
        }
        self.consume((f & 15) as u32);
        Some((((f >> 4) & 15) as usize, f >> 16))
    }

    /// One Huffman symbol.
    #[inline(always)]
    pub fn decode(&mut self, t: &HuffTable) -> Result<u8, JpegError> {
        if self.bits < 16 {
            self.refill();
        }
        let e = t.lookup[(self.buf >> (64 - LOOKUP_BITS)) as usize];
        if e != 0 {
            self.consume((e >> 8) as u32);
            return Ok(e as u8);
        }
        let mut len = LOOKUP_BITS + 1;
        let mut code = (self.buf >> (64 - len)) as i32;
        while len <= 16 && code > t.maxcode[len as usize] {
            len += 1;
            code = (self.buf >> (64 - len)) as i32;
        }
        if len > 16 {
            // No code matches in 16 bits: corrupt data. libjpeg warns ("Corrupt JPEG data: bad
            // Huffman code"), drops the 17 bits its search read and returns symbol 0 (DC: no
            // change, AC: end of block) as "the safest result"; PIL then reads the image as
            // libjpeg leaves it, so kiln does the same.
            if self.bits < 17 {
                self.refill();
            }
            self.consume(17);
            return Ok(0);
        }
        self.consume(len);
        let idx = code + t.valoffset[len as usize];
        t.values
            .get(idx as usize)
            .copied()
            .ok_or_else(|| JpegError::Corrupt("corrupt Huffman code in scan data".into()))
    }

    /// Drops the buffered bits and moves to the marker that ends the current interval: the
    /// position of its 0xFF byte, or the end of the data. Bytes between the padding and the
    /// marker are skipped, as libjpeg skips them.
    pub fn to_marker(&mut self) -> Result<usize, JpegError> {
        let mut p = self.pos;
        while p + 1 < self.data.len() && !(self.data[p] == 0xFF && self.data[p + 1] != 0) {
            p += 1;
        }
        self.buf = 0;
        self.bits = 0;
        self.fake = 0;
        self.stopped = false;
        self.at_eof = false;
        self.pos = p;
        Ok(p)
    }
}
