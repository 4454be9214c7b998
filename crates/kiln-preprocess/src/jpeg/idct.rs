//! libjpeg-turbo's default inverse DCT, `jpeg_idct_islow` (jidctint.c): the Loeffler–Ligtenberg–
//! Moschytz algorithm in 13-bit fixed point with 2 extra bits kept between the passes.
//!
//! Every rounding happens where libjpeg-turbo rounds, so the samples are identical. The final
//! clamp is a saturation to 0..=255, which is what its SIMD code (the path Pillow's wheels run)
//! does; the C code's wrap-around range table gives the same values for every input a real
//! encoder produces (|value| < 384 before the level shift).

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
    (x + 128).clamp(0, 255) as u8
}

/// One 1-D pass of the transform on `[i0..i7]`; returns the eight outputs before descaling.
#[inline(always)]
fn kernel(s: [i32; 8], dc_shift: i32) -> [i32; 8] {
    let (z2, z3) = (s[2], s[6]);
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 - z3 * FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (s[0] + s[4]) << dc_shift;
    let tmp1 = (s[0] - s[4]) << dc_shift;
    let tmp10 = tmp0 + tmp3;
    let tmp13 = tmp0 - tmp3;
    let tmp11 = tmp1 + tmp2;
    let tmp12 = tmp1 - tmp2;

    let (t0, t1, t2, t3) = (s[7], s[5], s[3], s[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    let t0 = t0 * FIX_0_298631336;
    let t1 = t1 * FIX_2_053119869;
    let t2 = t2 * FIX_3_072711026;
    let t3 = t3 * FIX_1_501321110;
    let z1 = -z1 * FIX_0_899976223;
    let z2 = -z2 * FIX_2_562915447;
    let z3 = -z3 * FIX_1_961570560 + z5;
    let z4 = -z4 * FIX_0_390180644 + z5;
    let t0 = t0 + z1 + z3;
    let t1 = t1 + z2 + z4;
    let t2 = t2 + z2 + z3;
    let t3 = t3 + z1 + z4;
    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

/// Dequantises `coefs` (natural order) with `quant` and writes the 8×8 samples at `out`, rows
/// `stride` apart.
pub fn idct_islow(coefs: &[i16; 64], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i32; 64];
    for c in 0..8 {
        let col = |r: usize| coefs[r * 8 + c] as i32 * quant[r * 8 + c] as i32;
        if (1..8).all(|r| coefs[r * 8 + c] == 0) {
            let dc = col(0) << PASS1_BITS;
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
            ws[r * 8 + c] = (o[r] + round) >> (CONST_BITS - PASS1_BITS);
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
            *x = clamp_sample((v + round) >> shift);
        }
    }
}
