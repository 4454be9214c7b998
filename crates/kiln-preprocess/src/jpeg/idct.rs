//! libjpeg-turbo's default inverse DCT, `jpeg_idct_islow` (jidctint.c): the Loeffler–Ligtenberg–
//! Moschytz algorithm in 13-bit fixed point with 2 extra bits kept between the passes.
//!
//! Every rounding happens where libjpeg-turbo rounds, so the samples are identical. Pillow's
//! wheels run libjpeg-turbo's SIMD version of it (`jsimd_idct_islow_avx2`/`_sse2`), which keeps
//! the samples in 16-bit lanes between its steps; for the coefficients a real encoder writes that
//! changes nothing, but corrupt scan data decodes to coefficients far outside that range, and
//! then PIL's pixels are the 16-bit ones. So this code does what the SIMD code does at each of
//! its 16-bit points: dequantisation keeps the low 16 bits of `coef × quant` (`vpmullw`), the
//! sums `in0 ± in4`, `in7 + in3` and `in5 + in1` wrap to 16 bits (`vpaddw`), each pass's outputs
//! saturate to 16 bits (`vpackssdw`), the final samples to 0..=255 (`vpacksswb` + 128), and a
//! block whose rows 1–7 are all zero takes its shortcut (row 0 shifted left by 2 in 16 bits,
//! wrapping). Everything else is 32-bit arithmetic, which wraps identically here (wrapping ops)
//! and there.

const CONST_BITS: i32 = 13;
const PASS1_BITS: i32 = 2;

const FIX_0_298631336: i32 = 2446;
const FIX_0_390180644: i32 = 3196;
const FIX_0_541196100: i32 = 4433;
const FIX_0_765366865: i32 = 6270;
const FIX_0_899976223: i32 = 7373;
const FIX_1_175875602: i32 = 9633;
const FIX_1_501321110: i32 = 12299;
const FIX_1_847759065: i32 = 15137;
const FIX_1_961570560: i32 = 16069;
const FIX_2_053119869: i32 = 16819;
const FIX_2_562915447: i32 = 20995;
const FIX_3_072711026: i32 = 25172;

#[inline(always)]
fn clamp_sample(x: i32) -> u8 {
    (x.wrapping_add(128)).clamp(0, 255) as u8
}

/// The low 16 bits, sign-extended: a 16-bit lane's wrap-around.
#[inline(always)]
fn wrap16(x: i32) -> i32 {
    x as i16 as i32
}

/// A 16-bit lane's signed saturation.
#[inline(always)]
fn sat16(x: i32) -> i32 {
    x.clamp(i16::MIN as i32, i16::MAX as i32)
}

/// One 1-D pass of the transform on `[i0..i7]`; returns the eight outputs before descaling.
#[inline(always)]
fn kernel(s: [i32; 8], dc_shift: i32) -> [i32; 8] {
    // Wrapping 32-bit arithmetic throughout, as the SIMD lanes wrap (and debug builds must not
    // trap on corrupt data).
    let m = |a: i32, c: i32| a.wrapping_mul(c);
    let (z2, z3) = (s[2], s[6]);
    let z1 = m(z2.wrapping_add(z3), FIX_0_541196100);
    let tmp2 = z1.wrapping_sub(m(z3, FIX_1_847759065));
    let tmp3 = z1.wrapping_add(m(z2, FIX_0_765366865));
    let tmp0 = wrap16(s[0].wrapping_add(s[4])) << dc_shift;
    let tmp1 = wrap16(s[0].wrapping_sub(s[4])) << dc_shift;
    let tmp10 = tmp0.wrapping_add(tmp3);
    let tmp13 = tmp0.wrapping_sub(tmp3);
    let tmp11 = tmp1.wrapping_add(tmp2);
    let tmp12 = tmp1.wrapping_sub(tmp2);

    let (t0, t1, t2, t3) = (s[7], s[5], s[3], s[1]);
    let z1 = t0.wrapping_add(t3);
    let z2 = t1.wrapping_add(t2);
    let z3 = wrap16(t0.wrapping_add(t2));
    let z4 = wrap16(t1.wrapping_add(t3));
    let z5 = m(z3.wrapping_add(z4), FIX_1_175875602);
    let t0 = m(t0, FIX_0_298631336);
    let t1 = m(t1, FIX_2_053119869);
    let t2 = m(t2, FIX_3_072711026);
    let t3 = m(t3, FIX_1_501321110);
    let z1 = m(z1, -FIX_0_899976223);
    let z2 = m(z2, -FIX_2_562915447);
    let z3 = m(z3, -FIX_1_961570560).wrapping_add(z5);
    let z4 = m(z4, -FIX_0_390180644).wrapping_add(z5);
    let t0 = t0.wrapping_add(z1).wrapping_add(z3);
    let t1 = t1.wrapping_add(z2).wrapping_add(z4);
    let t2 = t2.wrapping_add(z2).wrapping_add(z3);
    let t3 = t3.wrapping_add(z1).wrapping_add(z4);
    [
        tmp10.wrapping_add(t3),
        tmp11.wrapping_add(t2),
        tmp12.wrapping_add(t1),
        tmp13.wrapping_add(t0),
        tmp13.wrapping_sub(t0),
        tmp12.wrapping_sub(t1),
        tmp11.wrapping_sub(t2),
        tmp10.wrapping_sub(t3),
    ]
}

/// Dequantises `coefs` (natural order) with `quant` and writes the 8×8 samples at `out`, rows
/// `stride` apart.
pub fn idct_islow(coefs: &[i16; 64], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    let deq = |i: usize| wrap16((coefs[i] as i32).wrapping_mul(quant[i] as i32));
    if coefs[1..].iter().all(|&c| c == 0) {
        // Only DC: what the shortcuts below give, one value for the block.
        let w0 = wrap16(deq(0) << PASS1_BITS);
        let v = clamp_sample((w0 + (1 << (PASS1_BITS + 2))) >> (PASS1_BITS + 3));
        for r in 0..8 {
            out[r * stride..r * stride + 8].fill(v);
        }
        return;
    }
    let mut ws = [0i32; 64];
    // The SIMD code's shortcut: rows 1–7 all zero, row 0 shifted in 16 bits (wrapping); a zero
    // column otherwise goes through the transform, whose 16-bit output saturates.
    let rows_zero = coefs[8..].iter().all(|&c| c == 0);
    for c in 0..8 {
        let col = |r: usize| deq(r * 8 + c);
        if (1..8).all(|r| coefs[r * 8 + c] == 0) {
            let dc = if rows_zero {
                wrap16(col(0) << PASS1_BITS)
            } else {
                sat16(col(0) << PASS1_BITS)
            };
            for r in 0..8 {
                ws[r * 8 + c] = dc;
            }
            continue;
        }
        let s = [
            col(0),
            col(1),
            col(2),
            col(3),
            col(4),
            col(5),
            col(6),
            col(7),
        ];
        let o = kernel(s, CONST_BITS);
        let round = 1 << (CONST_BITS - PASS1_BITS - 1);
        for r in 0..8 {
            ws[r * 8 + c] = sat16(o[r].wrapping_add(round) >> (CONST_BITS - PASS1_BITS));
        }
    }
    for r in 0..8 {
        let w = &ws[r * 8..r * 8 + 8];
        let row = &mut out[r * stride..r * stride + 8];
        if w[1..].iter().all(|&v| v == 0) {
            // Same value as the full computation: (w0 << 13 + 2^17) >> 18 == (w0 + 16) >> 5.
            let v = clamp_sample((w[0] + (1 << (PASS1_BITS + 2))) >> (PASS1_BITS + 3));
            row.fill(v);
            continue;
        }
        let s = [w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]];
        let o = kernel(s, CONST_BITS);
        let shift = CONST_BITS + PASS1_BITS + 3;
        let round = 1 << (shift - 1);
        for (x, v) in row.iter_mut().zip(o) {
            *x = clamp_sample(v.wrapping_add(round) >> shift);
        }
    }
}

/// [`idct_islow`] with AVX2: the same integer arithmetic on eight columns (then eight rows) at
/// once, in 32-bit lanes that wrap exactly as the scalar `i32` code does in release builds, and
/// the final clamp by saturating packs (equal to the scalar clamp). An all-zero AC block takes
/// the shortcut libjpeg-turbo's column and row shortcuts amount to: one value for the block.
///
/// # Safety
/// The CPU must support AVX2; `out` must hold `7 * stride + 8` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn idct_islow_avx2(coefs: &[i16; 64], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    use std::arch::x86_64::*;
    assert!(out.len() >= 7 * stride + 8, "IDCT output too short");
    let cp = coefs.as_ptr() as *const __m256i;
    // SAFETY: `coefs` is 64 i16 = four 32-byte vectors; unaligned loads.
    let (c0, c1, c2, c3) = (
        _mm256_loadu_si256(cp),
        _mm256_loadu_si256(cp.add(1)),
        _mm256_loadu_si256(cp.add(2)),
        _mm256_loadu_si256(cp.add(3)),
    );
    let dc_mask = _mm256_setr_epi16(
        0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    );
    let any = _mm256_or_si256(
        _mm256_and_si256(c0, dc_mask),
        _mm256_or_si256(c1, _mm256_or_si256(c2, c3)),
    );
    if _mm256_testz_si256(any, any) != 0 {
        let w0 = wrap16(wrap16((coefs[0] as i32).wrapping_mul(quant[0] as i32)) << PASS1_BITS);
        let v = clamp_sample((w0 + (1 << (PASS1_BITS + 2))) >> (PASS1_BITS + 3));
        for r in 0..8 {
            out[r * stride..r * stride + 8].fill(v);
        }
        return;
    }
    let mut s = [_mm256_setzero_si256(); 8];
    for (r, v) in s.iter_mut().enumerate() {
        // SAFETY: row `r` of 8 i16/u16 lies inside the 64-element arrays.
        let c = _mm256_cvtepi16_epi32(_mm_loadu_si128(coefs.as_ptr().add(r * 8) as *const __m128i));
        let q = _mm256_cvtepu16_epi32(_mm_loadu_si128(quant.as_ptr().add(r * 8) as *const __m128i));
        *v = wrap16_v(_mm256_mullo_epi32(c, q));
    }
    // Pass 1: columns (lane = column), descaled by CONST_BITS − PASS1_BITS and saturated to 16
    // bits; rows 1–7 all zero take libjpeg-turbo's shortcut (row 0 << 2, wrapping in 16 bits).
    let mut ws = [_mm256_setzero_si256(); 8];
    let rest = _mm256_or_si256(c1, _mm256_or_si256(c2, c3));
    let rows_zero = _mm256_testz_si256(rest, rest) != 0 && coefs[8..16].iter().all(|&c| c == 0);
    if rows_zero {
        let r0 = wrap16_v(_mm256_slli_epi32::<PASS1_BITS>(s[0]));
        ws = [r0; 8];
    } else {
        let o = kernel_v(s);
        let round = _mm256_set1_epi32(1 << (CONST_BITS - PASS1_BITS - 1));
        let (lo, hi) = (_mm256_set1_epi32(-32768), _mm256_set1_epi32(32767));
        for (w, v) in ws.iter_mut().zip(o) {
            let d = _mm256_srai_epi32::<{ CONST_BITS - PASS1_BITS }>(_mm256_add_epi32(v, round));
            *w = _mm256_min_epi32(_mm256_max_epi32(d, lo), hi);
        }
    }
    // Pass 2: rows (lane = row after the transpose), descaled by CONST_BITS + PASS1_BITS + 3.
    let o = kernel_v(transpose(ws));
    let round = _mm256_set1_epi32(1 << (CONST_BITS + PASS1_BITS + 2));
    let bias = _mm256_set1_epi32(128);
    let mut px = [_mm256_setzero_si256(); 8];
    for (p, v) in px.iter_mut().zip(o) {
        let d = _mm256_srai_epi32::<{ CONST_BITS + PASS1_BITS + 3 }>(_mm256_add_epi32(v, round));
        *p = _mm256_add_epi32(d, bias);
    }
    let rows = transpose(px);
    // Saturating packs: i32 → i16 → u8 is the clamp to 0..=255.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for half in 0..2 {
        let r = &rows[half * 4..half * 4 + 4];
        let a = _mm256_packs_epi32(r[0], r[1]);
        let b = _mm256_packs_epi32(r[2], r[3]);
        let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(a, b), order);
        let mut tmp = [0u8; 32];
        // SAFETY: `tmp` is 32 bytes.
        _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, bytes);
        for k in 0..4 {
            let row = half * 4 + k;
            out[row * stride..row * stride + 8].copy_from_slice(&tmp[k * 8..k * 8 + 8]);
        }
    }
}

/// [`wrap16`] on eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn wrap16_v(x: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(x))
}

/// [`kernel`] on eight lanes at once (`dc_shift` = `CONST_BITS`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn kernel_v(s: [std::arch::x86_64::__m256i; 8]) -> [std::arch::x86_64::__m256i; 8] {
    use std::arch::x86_64::*;
    // Macros rather than closures, so that the intrinsics are inlined with this function's
    // target features.
    macro_rules! mul {
        ($a:expr, $c:expr) => {
            _mm256_mullo_epi32($a, _mm256_set1_epi32($c))
        };
    }
    macro_rules! add {
        ($a:expr, $b:expr) => {
            _mm256_add_epi32($a, $b)
        };
    }
    macro_rules! sub {
        ($a:expr, $b:expr) => {
            _mm256_sub_epi32($a, $b)
        };
    }
    let (z2, z3) = (s[2], s[6]);
    let z1 = mul!(add!(z2, z3), FIX_0_541196100);
    let tmp2 = sub!(z1, mul!(z3, FIX_1_847759065));
    let tmp3 = add!(z1, mul!(z2, FIX_0_765366865));
    let tmp0 = _mm256_slli_epi32::<CONST_BITS>(wrap16_v(add!(s[0], s[4])));
    let tmp1 = _mm256_slli_epi32::<CONST_BITS>(wrap16_v(sub!(s[0], s[4])));
    let tmp10 = add!(tmp0, tmp3);
    let tmp13 = sub!(tmp0, tmp3);
    let tmp11 = add!(tmp1, tmp2);
    let tmp12 = sub!(tmp1, tmp2);

    let (t0, t1, t2, t3) = (s[7], s[5], s[3], s[1]);
    let z1 = add!(t0, t3);
    let z2 = add!(t1, t2);
    let z3 = wrap16_v(add!(t0, t2));
    let z4 = wrap16_v(add!(t1, t3));
    let z5 = mul!(add!(z3, z4), FIX_1_175875602);
    let t0 = mul!(t0, FIX_0_298631336);
    let t1 = mul!(t1, FIX_2_053119869);
    let t2 = mul!(t2, FIX_3_072711026);
    let t3 = mul!(t3, FIX_1_501321110);
    // −z·c computed as z·(−c): the same value in wrapping 32-bit arithmetic.
    let z1 = mul!(z1, -FIX_0_899976223);
    let z2 = mul!(z2, -FIX_2_562915447);
    let z3 = add!(mul!(z3, -FIX_1_961570560), z5);
    let z4 = add!(mul!(z4, -FIX_0_390180644), z5);
    let t0 = add!(add!(t0, z1), z3);
    let t1 = add!(add!(t1, z2), z4);
    let t2 = add!(add!(t2, z2), z3);
    let t3 = add!(add!(t3, z1), z4);
    [
        add!(tmp10, t3),
        add!(tmp11, t2),
        add!(tmp12, t1),
        add!(tmp13, t0),
        sub!(tmp13, t0),
        sub!(tmp12, t1),
        sub!(tmp11, t2),
        sub!(tmp10, t3),
    ]
}

/// Transposes an 8×8 matrix of 32-bit values held as eight row vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose(m: [std::arch::x86_64::__m256i; 8]) -> [std::arch::x86_64::__m256i; 8] {
    use std::arch::x86_64::*;
    let a0 = _mm256_unpacklo_epi32(m[0], m[1]);
    let a1 = _mm256_unpackhi_epi32(m[0], m[1]);
    let a2 = _mm256_unpacklo_epi32(m[2], m[3]);
    let a3 = _mm256_unpackhi_epi32(m[2], m[3]);
    let a4 = _mm256_unpacklo_epi32(m[4], m[5]);
    let a5 = _mm256_unpackhi_epi32(m[4], m[5]);
    let a6 = _mm256_unpacklo_epi32(m[6], m[7]);
    let a7 = _mm256_unpackhi_epi32(m[6], m[7]);
    let b0 = _mm256_unpacklo_epi64(a0, a2);
    let b1 = _mm256_unpackhi_epi64(a0, a2);
    let b2 = _mm256_unpacklo_epi64(a1, a3);
    let b3 = _mm256_unpackhi_epi64(a1, a3);
    let b4 = _mm256_unpacklo_epi64(a4, a6);
    let b5 = _mm256_unpackhi_epi64(a4, a6);
    let b6 = _mm256_unpacklo_epi64(a5, a7);
    let b7 = _mm256_unpackhi_epi64(a5, a7);
    [
        _mm256_permute2x128_si256::<0x20>(b0, b4),
        _mm256_permute2x128_si256::<0x20>(b1, b5),
        _mm256_permute2x128_si256::<0x20>(b2, b6),
        _mm256_permute2x128_si256::<0x20>(b3, b7),
        _mm256_permute2x128_si256::<0x31>(b0, b4),
        _mm256_permute2x128_si256::<0x31>(b1, b5),
        _mm256_permute2x128_si256::<0x31>(b2, b6),
        _mm256_permute2x128_si256::<0x31>(b3, b7),
    ]
}
