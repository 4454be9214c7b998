//! From coefficients to pixels: the inverse DCT of every block into one sample plane per
//! component, libjpeg-turbo's upsampling of subsampled planes (jdsample.c: "fancy" triangle
//! filters for 2h1v, 1h2v and 2h2v, replication otherwise) and its colour conversion
//! (jdcolor.c: fixed-point YCbCr → RGB, YCCK → CMYK).

use super::idct::idct_islow;
#[cfg(target_arch = "x86_64")]
use super::idct::idct_islow_avx2;
use super::markers::Component;
use super::simd::Isa;
use super::smooth;

/// A decoded component plane, `stride = bw * 8` samples per row.
pub struct Plane {
    /// Samples.
    pub data: Vec<u8>,
    /// Row length in samples.
    pub stride: usize,
    /// Meaningful width (libjpeg's `downsampled_width`).
    pub width: usize,
    /// Meaningful height.
    pub height: usize,
}

/// Runs the inverse DCT over every block of `c` that holds image samples.
pub fn idct_plane(
    c: &Component,
    blocks: &[i16],
    smoothing: Option<(&[i32; 64], usize)>,
    isa: Isa,
) -> Plane {
    let stride = c.bw * 8;
    let mut data = vec![0u8; stride * c.bh * 8];
    let quant = c.quant.unwrap_or([0; 64]);
    let mut tmp = [0i16; 64];
    for by in 0..c.bh {
        let row = &mut data[by * 8 * stride..(by + 1) * 8 * stride];
        for bx in 0..c.bw {
            let off = (by * c.bstride + bx) * 64;
            let blk: &[i16; 64] = match smoothing {
                Some((bits, rows)) => {
                    smooth::smooth_block(c, blocks, bits, bx, by, rows, &mut tmp);
                    &tmp
                }
                None => blocks[off..off + 64].try_into().expect("64"),
            };
            let out = &mut row[bx * 8..];
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2; `out` holds 8 rows
                // of `stride` samples from this block's first column.
                Isa::Avx2 => unsafe { idct_islow_avx2(blk, &quant, out, stride) },
                _ => idct_islow(blk, &quant, out, stride),
            }
        }
    }
    Plane {
        data,
        stride,
        width: c.width,
        height: c.height,
    }
}

/// How one component reaches full resolution.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Full,
    H2V1Fancy,
    H1V2Fancy,
    H2V2Fancy,
    /// Replication by integer factors (libjpeg's h2v1/h2v2 box and `int_upsample`).
    Box(usize, usize),
}

/// Fills `out` (the image width) with row `y` of `p` brought to full resolution, for a
/// component `hr × vr` times smaller than the largest.
pub struct Upsampler {
    method: Method,
    isa: Isa,
}

impl Upsampler {
    /// The method libjpeg-turbo's `jinit_upsampler` picks, or `None` for ratios it refuses.
    pub fn new(hr: usize, vr: usize, downsampled_width: usize, isa: Isa) -> Option<Self> {
        let method = match (hr, vr) {
            (1, 1) => Method::Full,
            (2, 1) if downsampled_width > 2 => Method::H2V1Fancy,
            (1, 2) => Method::H1V2Fancy,
            (2, 2) if downsampled_width > 2 => Method::H2V2Fancy,
            (h, v) => Method::Box(h, v),
        };
        Some(Self { method, isa })
    }

    /// Writes output row `y` (`out.len()` = image width).
    pub fn row(&self, p: &Plane, y: usize, out: &mut [u8]) {
        let last = p.height - 1;
        let at = |r: usize| &p.data[r * p.stride..r * p.stride + p.width];
        match self.method {
            Method::Full => out.copy_from_slice(&at(y)[..out.len()]),
            Method::Box(h, v) => {
                let src = at(y / v);
                for (x, o) in out.iter_mut().enumerate() {
                    *o = src[x / h];
                }
            }
            Method::H2V1Fancy => h2v1(at(y), out, self.isa),
            Method::H1V2Fancy => {
                let iy = y / 2;
                let (near, far, bias) = if y & 1 == 0 {
                    (at(iy), at(iy.saturating_sub(1)), 1)
                } else {
                    (at(iy), at((iy + 1).min(last)), 2)
                };
                for ((o, &a), &b) in out.iter_mut().zip(near).zip(far) {
                    *o = ((a as u32 * 3 + b as u32 + bias) >> 2) as u8;
                }
            }
            Method::H2V2Fancy => {
                let iy = y / 2;
                let far = if y & 1 == 0 {
                    iy.saturating_sub(1)
                } else {
                    (iy + 1).min(last)
                };
                h2v2(at(iy), at(far), out, self.isa);
            }
        }
    }
}

fn h2v1(src: &[u8], out: &mut [u8], isa: Isa) {
    let from = match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2.
        Isa::Avx2 => unsafe { h2v1_avx2(src, out) },
        _ => 1..1,
    };
    h2v1_range(src, out, 0..from.start);
    h2v1_range(src, out, from.end..src.len());
}

/// Output pairs `2i, 2i + 1` for `i` in `range` of the h2v1 triangle filter (`src.len() > 2`).
fn h2v1_range(src: &[u8], out: &mut [u8], range: std::ops::Range<usize>) {
    let n = src.len();
    let w = out.len();
    let s = |i: usize| src[i] as u32;
    for i in range {
        let c = s(i) * 3;
        let even = if i == 0 {
            s(0)
        } else {
            (c + s(i - 1) + 1) >> 2
        };
        let odd = if i + 1 < n {
            (c + s(i + 1) + 2) >> 2
        } else {
            s(n - 1)
        };
        if 2 * i < w {
            out[2 * i] = even as u8;
        }
        if 2 * i + 1 < w {
            out[2 * i + 1] = odd as u8;
        }
    }
}

fn h2v2(near: &[u8], far: &[u8], out: &mut [u8], isa: Isa) {
    let from = match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2.
        Isa::Avx2 => unsafe { h2v2_avx2(near, far, out) },
        _ => 1..1,
    };
    h2v2_range(near, far, out, 0..from.start);
    h2v2_range(near, far, out, from.end..near.len());
}

/// Output pairs `2i, 2i + 1` for `i` in `range` of the h2v2 triangle filter, from the nearer
/// and the farther input row (`near.len() > 2`).
fn h2v2_range(near: &[u8], far: &[u8], out: &mut [u8], range: std::ops::Range<usize>) {
    let n = near.len();
    let w = out.len();
    let col = |i: usize| near[i] as u32 * 3 + far[i] as u32;
    for i in range {
        let this = col(i);
        let even = if i == 0 {
            this * 4 + 8
        } else {
            this * 3 + col(i - 1) + 8
        };
        let odd = if i + 1 < n {
            this * 3 + col(i + 1) + 7
        } else {
            this * 4 + 7
        };
        if 2 * i < w {
            out[2 * i] = (even >> 4) as u8;
        }
        if 2 * i + 1 < w {
            out[2 * i + 1] = (odd >> 4) as u8;
        }
    }
}

/// Interleaves 16 even and 16 odd outputs (u16 lanes, each < 256) into 32 bytes at `dst`.
///
/// # Safety
/// AVX2; `dst` valid for 32 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn store_pairs(
    even: std::arch::x86_64::__m256i,
    odd: std::arch::x86_64::__m256i,
    dst: *mut u8,
) {
    use std::arch::x86_64::*;
    // Within each 128-bit lane: unpack gives pixels 0–3 / 4–7 (and 8–11 / 12–15), and the
    // pack puts them back in order, so the 32 bytes come out in pixel order.
    let lo = _mm256_unpacklo_epi16(even, odd);
    let hi = _mm256_unpackhi_epi16(even, odd);
    _mm256_storeu_si256(dst as *mut __m256i, _mm256_packus_epi16(lo, hi));
}

/// The h2v1 filter for the inputs `1..end` that have both neighbours inside the row and whose
/// 32 output bytes fit in `out`, 16 at a time with AVX2 in 16-bit lanes (the same sums, which
/// stay below 2^16); returns that range of inputs.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn h2v1_avx2(src: &[u8], out: &mut [u8]) -> std::ops::Range<usize> {
    use std::arch::x86_64::*;
    let (n, w) = (src.len(), out.len());
    let (one, two) = (_mm256_set1_epi16(1), _mm256_set1_epi16(2));
    let mut i = 1;
    while i + 17 <= n && 2 * i + 32 <= w {
        // SAFETY: bytes `i - 1 .. i + 17` lie inside `src`.
        macro_rules! ld {
            ($o:expr) => {
                _mm256_cvtepu8_epi16(_mm_loadu_si128(
                    src.as_ptr().add(i - 1 + $o) as *const __m128i
                ))
            };
        }
        let (l, c, r) = (ld!(0), ld!(1), ld!(2));
        let c3 = _mm256_add_epi16(_mm256_add_epi16(c, c), c);
        let even = _mm256_srli_epi16::<2>(_mm256_add_epi16(_mm256_add_epi16(c3, l), one));
        let odd = _mm256_srli_epi16::<2>(_mm256_add_epi16(_mm256_add_epi16(c3, r), two));
        // SAFETY: `2i + 32 <= out.len()`.
        store_pairs(even, odd, out.as_mut_ptr().add(2 * i));
        i += 16;
    }
    1..i
}

/// [`h2v1_avx2`] for the h2v2 filter (column sums `3·near + far` first).
///
/// # Safety
/// The CPU must support AVX2; `far.len() == near.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn h2v2_avx2(near: &[u8], far: &[u8], out: &mut [u8]) -> std::ops::Range<usize> {
    use std::arch::x86_64::*;
    let (n, w) = (near.len().min(far.len()), out.len());
    let (seven, eight) = (_mm256_set1_epi16(7), _mm256_set1_epi16(8));
    let mut i = 1;
    while i + 17 <= n && 2 * i + 32 <= w {
        // SAFETY: bytes `i - 1 .. i + 17` lie inside `near` and `far`.
        // Macros rather than closures, so that the intrinsics get this function's features.
        macro_rules! col {
            ($o:expr) => {{
                let p = i - 1 + $o;
                let a =
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(near.as_ptr().add(p) as *const __m128i));
                let b =
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(far.as_ptr().add(p) as *const __m128i));
                _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(a, a), a), b)
            }};
        }
        let (l, c, r) = (col!(0), col!(1), col!(2));
        let c3 = _mm256_add_epi16(_mm256_add_epi16(c, c), c);
        let even = _mm256_srli_epi16::<4>(_mm256_add_epi16(_mm256_add_epi16(c3, l), eight));
        let odd = _mm256_srli_epi16::<4>(_mm256_add_epi16(_mm256_add_epi16(c3, r), seven));
        // SAFETY: `2i + 32 <= out.len()`.
        store_pairs(even, odd, out.as_mut_ptr().add(2 * i));
        i += 16;
    }
    1..i
}

/// libjpeg-turbo's YCbCr → RGB tables (16-bit fixed point, rounded as `build_ycc_rgb_table`).
pub struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

impl YccTables {
    /// Builds the tables.
    pub fn new() -> Self {
        const SCALEBITS: i32 = 16;
        const ONE_HALF: i32 = 1 << (SCALEBITS - 1);
        let fix = |x: f64| (x * (1i64 << SCALEBITS) as f64 + 0.5) as i32;
        let mut t = Self {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        for i in 0..256 {
            let x = i as i32 - 128;
            t.cr_r[i] = (fix(1.40200) * x + ONE_HALF) >> SCALEBITS;
            t.cb_b[i] = (fix(1.77200) * x + ONE_HALF) >> SCALEBITS;
            t.cr_g[i] = -fix(0.71414) * x;
            t.cb_g[i] = -fix(0.34414) * x + ONE_HALF;
        }
        t
    }

    /// One pixel.
    #[inline(always)]
    pub fn rgb(&self, y: u8, cb: u8, cr: u8) -> [u8; 3] {
        let y = y as i32;
        let (cb, cr) = (cb as usize, cr as usize);
        let clamp = |v: i32| v.clamp(0, 255) as u8;
        [
            clamp(y + self.cr_r[cr]),
            clamp(y + ((self.cb_g[cb] + self.cr_g[cr]) >> 16)),
            clamp(y + self.cb_b[cb]),
        ]
    }
}

impl Default for YccTables {
    fn default() -> Self {
        Self::new()
    }
}

/// YCbCr → RGB for one row (`out` = 3 × `y.len()` bytes) on `isa`'s path.
pub fn ycc_row(t: &YccTables, isa: Isa, y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    let n = y.len();
    assert!(cb.len() >= n && cr.len() >= n && out.len() >= 3 * n);
    let done = match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2; lengths checked above.
        Isa::Avx2 => unsafe { ycc_row_avx2(y, cb, cr, out) },
        _ => 0,
    };
    let px = out[3 * done..3 * n].chunks_exact_mut(3);
    for (((o, &y), &cb), &cr) in px.zip(&y[done..n]).zip(&cb[done..n]).zip(&cr[done..n]) {
        o.copy_from_slice(&t.rgb(y, cb, cr));
    }
}

/// The first `16 * k` pixels of [`ycc_row`] with AVX2; returns how many it converted. It
/// computes what [`YccTables`] tabulates (`(FIX(c)·(v − 128) + ONE_HALF) >> 16` in 32-bit
/// lanes, the green terms summed before the shift), so the values are the tables' values.
///
/// # Safety
/// The CPU must support AVX2; `cb`, `cr` hold `y.len()` samples and `out` three times that.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn ycc_row_avx2(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    const FIX_1_40200: i32 = 91881;
    const FIX_1_77200: i32 = 116130;
    const FIX_0_71414: i32 = 46802;
    const FIX_0_34414: i32 = 22554;
    let half = _mm256_set1_epi32(1 << 15);
    let c128 = _mm256_set1_epi32(128);
    // Output byte j of each 16-byte chunk is channel j % 3 of pixel j / 3 (counting from the
    // chunk's first byte in the 48-byte group); 0x80 leaves a zero for the other channels.
    let mask = |k: usize, ch: usize| {
        let mut m = [0x80u8; 16];
        for (j, e) in m.iter_mut().enumerate() {
            let b = 16 * k + j;
            if b % 3 == ch {
                *e = (b / 3) as u8;
            }
        }
        m
    };
    let mut masks = [[0u8; 16]; 9];
    for k in 0..3 {
        for ch in 0..3 {
            masks[k * 3 + ch] = mask(k, ch);
        }
    }
    // SAFETY (all loads below): `masks` entries are 16 bytes.
    let mut m = [_mm_setzero_si128(); 9];
    for (v, b) in m.iter_mut().zip(&masks) {
        *v = _mm_loadu_si128(b.as_ptr() as *const __m128i);
    }
    let n = y.len();
    let mut x = 0;
    while x + 16 <= n {
        let mut rgb16 = [_mm256_setzero_si256(); 3];
        let mut parts = [[_mm256_setzero_si256(); 2]; 3];
        for (h, at) in [x, x + 8].into_iter().enumerate() {
            // SAFETY: `at + 8 <= n` samples in each of `y`, `cb`, `cr`.
            macro_rules! ld {
                ($s:expr) => {
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64($s.as_ptr().add(at) as *const __m128i))
                };
            }
            let yv = ld!(y);
            let xb = _mm256_sub_epi32(ld!(cb), c128);
            let xr = _mm256_sub_epi32(ld!(cr), c128);
            let r = _mm256_srai_epi32::<16>(_mm256_add_epi32(
                _mm256_mullo_epi32(xr, _mm256_set1_epi32(FIX_1_40200)),
                half,
            ));
            let b = _mm256_srai_epi32::<16>(_mm256_add_epi32(
                _mm256_mullo_epi32(xb, _mm256_set1_epi32(FIX_1_77200)),
                half,
            ));
            let g = _mm256_srai_epi32::<16>(_mm256_add_epi32(
                _mm256_add_epi32(
                    _mm256_mullo_epi32(xb, _mm256_set1_epi32(-FIX_0_34414)),
                    half,
                ),
                _mm256_mullo_epi32(xr, _mm256_set1_epi32(-FIX_0_71414)),
            ));
            for (p, c) in parts.iter_mut().zip([r, g, b]) {
                p[h] = _mm256_add_epi32(yv, c);
            }
        }
        for (o, p) in rgb16.iter_mut().zip(parts) {
            // 16 i16 in pixel order (packs works within 128-bit lanes).
            *o = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(p[0], p[1]));
        }
        // Saturating to u8 is the clamp to 0..=255; R in the low half, G in the high half.
        let rg = _mm256_permute4x64_epi64::<0xD8>(_mm256_packus_epi16(rgb16[0], rgb16[1]));
        let bb = _mm256_permute4x64_epi64::<0xD8>(_mm256_packus_epi16(rgb16[2], rgb16[2]));
        let (r, g, b) = (
            _mm256_castsi256_si128(rg),
            _mm256_extracti128_si256::<1>(rg),
            _mm256_castsi256_si128(bb),
        );
        for k in 0..3 {
            let v = _mm_or_si128(
                _mm_or_si128(
                    _mm_shuffle_epi8(r, m[k * 3]),
                    _mm_shuffle_epi8(g, m[k * 3 + 1]),
                ),
                _mm_shuffle_epi8(b, m[k * 3 + 2]),
            );
            // SAFETY: pixel `x + 16 <= n` ends at byte `3n <= out.len()`.
            _mm_storeu_si128(out.as_mut_ptr().add(3 * x + 16 * k) as *mut __m128i, v);
        }
        x += 16;
    }
    x
}
