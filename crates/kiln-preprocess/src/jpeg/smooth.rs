//! libjpeg-turbo's inter-block smoothing for progressive images whose low-frequency AC
//! coefficients are not known to full precision (jdcoefct.c, `decompress_smooth_data`, in its
//! 2.1+ form with 25 neighbours): the first nine AC coefficients that are still zero are
//! predicted from the DC values around the block, and DC itself too when no AC has arrived.

use super::markers::Component;

// Natural-order positions of the first nine zigzag AC coefficients.
const POS: [usize; 9] = [1, 8, 16, 9, 2, 3, 10, 17, 24];

/// Whether libjpeg-turbo would smooth this image (`smoothing_ok`): progressive, the ten
/// quantisers it divides by are nonzero, every DC is at least partly known, and some of the
/// first nine AC coefficients of some component are not fully known.
pub fn smoothing_ok(comps: &[Component], coef_bits: &[[i32; 64]]) -> bool {
    let mut useful = false;
    for (c, bits) in comps.iter().zip(coef_bits) {
        let Some(q) = c.quant else { return false };
        if q[0] == 0 || POS.iter().any(|&p| q[p] == 0) {
            return false;
        }
        if bits[0] < 0 {
            return false;
        }
        if bits[1..10].iter().any(|&b| b != 0) {
            useful = true;
        }
    }
    useful
}

/// The smoothed copy of block `(bx, by)` of component `c`; `blocks` is its coefficient buffer.
/// `block_rows` and `image_block_rows` follow libjpeg-turbo's own bookkeeping, including its
/// treatment of the last iMCU row, so that the same neighbours are used at the bottom edge.
#[allow(clippy::too_many_arguments)]
pub fn smooth_block(
    c: &Component,
    blocks: &[i16],
    bits: &[i32; 64],
    bx: usize,
    by: usize,
    total_imcu_rows: usize,
    out: &mut [i16; 64],
) {
    let v = c.v;
    let imcu_row = by / v;
    let block_row = by % v;
    let last_imcu = total_imcu_rows - 1;
    let block_rows = if imcu_row < last_imcu {
        v
    } else {
        match c.bh % v {
            0 => v,
            n => n,
        }
    };
    let image_block_rows = (block_rows * total_imcu_rows) as isize;
    let image_block_row = (imcu_row * block_rows + block_row) as isize;
    let cur = by as isize;
    let prev = if image_block_row > 0 { cur - 1 } else { cur };
    let prev_prev = if image_block_row > 1 { cur - 2 } else { prev };
    let next = if image_block_row < image_block_rows - 1 {
        cur + 1
    } else {
        cur
    };
    let next_next = if image_block_row < image_block_rows - 2 {
        cur + 2
    } else {
        next
    };
    let rows = [prev_prev, prev, cur, next, next_next];
    let last_col = c.bw as isize - 1;
    let dc = |row: isize, col: isize| -> i64 {
        let col = col.clamp(0, last_col.max(0)) as usize;
        blocks[(row as usize * c.bstride + col) * 64] as i64
    };
    // DC[r][k]: row r of the 5×5 window (0 = two above), column k (0 = two left).
    let mut d = [[0i64; 5]; 5];
    for (r, &row) in rows.iter().enumerate() {
        for (k, dk) in d[r].iter_mut().enumerate() {
            *dk = dc(row, bx as isize + k as isize - 2);
        }
    }
    // libjpeg names them DC01..DC25 row by row.
    let dcn = |n: usize| d[(n - 1) / 5][(n - 1) % 5];
    let (dc01, dc02, dc03, dc04, dc05) = (dcn(1), dcn(2), dcn(3), dcn(4), dcn(5));
    let (dc06, dc07, dc08, dc09, dc10) = (dcn(6), dcn(7), dcn(8), dcn(9), dcn(10));
    let (dc11, dc12, dc13, dc14, dc15) = (dcn(11), dcn(12), dcn(13), dcn(14), dcn(15));
    let (dc16, dc17, dc18, dc19, dc20) = (dcn(16), dcn(17), dcn(18), dcn(19), dcn(20));
    let (dc21, dc22, dc23, dc24, dc25) = (dcn(21), dcn(22), dcn(23), dcn(24), dcn(25));

    let off = (by * c.bstride + bx) * 64;
    out.copy_from_slice(&blocks[off..off + 64]);
    let q = c.quant.expect("checked by smoothing_ok");
    let q00 = q[0] as i64;
    let change_dc = bits[1..10].iter().all(|&b| b == -1);

    let predict = |num: i64, qk: i64, al: i32| -> i16 {
        let limit = |p: i64| {
            if al > 0 && p >= (1 << al) {
                (1 << al) - 1
            } else {
                p
            }
        };
        // libjpeg negates in int and then stores to its 16-bit JCOEF; negating after the
        // truncation overflowed for a prediction of exactly -32768 (found by fuzzing: a panic
        // with debug assertions; fuzz/regressions/jpeg_decode/).
        if num >= 0 {
            limit(((qk << 7) + num) / (qk << 8)) as i16
        } else {
            (-limit(((qk << 7) - num) / (qk << 8))) as i16
        }
    };

    let nums: [i64; 9] = if change_dc {
        [
            -dc01 - dc02 + dc04 + dc05 - 3 * dc06 + 13 * dc07 - 13 * dc09 + 3 * dc10 - 3 * dc11
                + 38 * dc12
                - 38 * dc14
                + 3 * dc15
                - 3 * dc16
                + 13 * dc17
                - 13 * dc19
                + 3 * dc20
                - dc21
                - dc22
                + dc24
                + dc25,
            -dc01 - 3 * dc02 - 3 * dc03 - 3 * dc04 - dc05 - dc06
                + 13 * dc07
                + 38 * dc08
                + 13 * dc09
                - dc10
                + dc16
                - 13 * dc17
                - 38 * dc18
                - 13 * dc19
                + dc20
                + dc21
                + 3 * dc22
                + 3 * dc23
                + 3 * dc24
                + dc25,
            dc03 + 2 * dc07 + 7 * dc08 + 2 * dc09 - 5 * dc12 - 14 * dc13 - 5 * dc14
                + 2 * dc17
                + 7 * dc18
                + 2 * dc19
                + dc23,
            -dc01 + dc05 + 9 * dc07 - 9 * dc09 - 9 * dc17 + 9 * dc19 + dc21 - dc25,
            2 * dc07 - 5 * dc08 + 2 * dc09 + dc11 + 7 * dc12 - 14 * dc13
                + 7 * dc14
                + dc15
                + 2 * dc17
                - 5 * dc18
                + 2 * dc19,
            dc07 - dc09 + 2 * dc12 - 2 * dc14 + dc17 - dc19,
            dc07 - 3 * dc08 + dc09 - dc17 + 3 * dc18 - dc19,
            dc07 - dc09 - 3 * dc12 + 3 * dc14 + dc17 - dc19,
            dc07 + 2 * dc08 + dc09 - dc17 - 2 * dc18 - dc19,
        ]
    } else {
        [
            -7 * dc11 + 50 * dc12 - 50 * dc14 + 7 * dc15,
            -7 * dc03 + 50 * dc08 - 50 * dc18 + 7 * dc23,
            -dc03 + 13 * dc08 - 24 * dc13 + 13 * dc18 - dc23,
            dc10 + dc16 - 10 * dc17 + 10 * dc19 - dc02 - dc20 + dc22 - dc24 + dc04 - dc06
                + 10 * dc07
                - 10 * dc09,
            -dc11 + 13 * dc12 - 24 * dc13 + 13 * dc14 - dc15,
            0,
            0,
            0,
            0,
        ]
    };
    let coefs_used = if change_dc { 9 } else { 5 };
    for i in 0..coefs_used {
        let al = bits[i + 1];
        let p = POS[i];
        if al != 0 && out[p] == 0 {
            out[p] = predict(q00 * nums[i], q[p] as i64, al);
        }
    }
    if change_dc {
        let num = q00
            * (-2 * dc01 - 6 * dc02 - 8 * dc03 - 6 * dc04 - 2 * dc05 - 6 * dc06
                + 6 * dc07
                + 42 * dc08
                + 6 * dc09
                - 6 * dc10
                - 8 * dc11
                + 42 * dc12
                + 152 * dc13
                + 42 * dc14
                - 8 * dc15
                - 6 * dc16
                + 6 * dc17
                + 42 * dc18
                + 6 * dc19
                - 6 * dc20
                - 2 * dc21
                - 6 * dc22
                - 8 * dc23
                - 6 * dc24
                - 2 * dc25);
        out[0] = predict(num, q00, 0);
    }
}
