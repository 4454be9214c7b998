//! Out-of-place f32 matrix transpose, for switching a strip between channels-last and
//! channels-first.

use crate::out::{filled_vec, Out, SharedOut};

/// `dst[j·ds + i] = src[i·ss + j]` for `i < rows`, `j < cols`.
#[cfg(test)]
fn transpose(src: &[f32], ss: usize, rows: usize, cols: usize, dst: &mut [f32], ds: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        dst.len() > (cols - 1) * ds + rows - 1,
        "transpose: dst too short"
    );
    // SAFETY: every element written lies inside `dst`, a `&mut`.
    unsafe { transpose_to(src, ss, rows, cols, dst.as_mut_ptr(), ds) }
}

/// [`transpose`] into a raw destination, for tasks that write interleaved parts of one buffer.
///
/// # Safety
/// Every `dst[j·ds + i]` (`i < rows`, `j < cols`) must be writable and touched by no one else
/// during the call.
unsafe fn transpose_to(src: &[f32], ss: usize, rows: usize, cols: usize, dst: *mut f32, ds: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        src.len() > (rows - 1) * ss + cols - 1,
        "transpose: src too short"
    );
    let (mut i0, mut j_full) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if crate::depthwise::Isa::detect() == crate::depthwise::Isa::Avx512 {
        j_full = cols / 16 * 16;
        i0 = rows / 16 * 16;
        for i in (0..i0).step_by(16) {
            for j in (0..j_full).step_by(16) {
                // SAFETY: AVX-512F detected; the block lies inside `src` (asserted) and `dst`
                // (the caller's contract).
                unsafe { block16(src.as_ptr().add(i * ss + j), ss, dst.add(j * ds + i), ds) };
            }
        }
    }
    // What the 16×16 blocks left: the right columns of the blocked rows, then the last rows,
    // cache-blocked so that the strided writes stay within a few lines.
    for i in 0..i0 {
        for j in j_full..cols {
            // SAFETY: `i < rows`, `j < cols`: inside `dst` by the caller's contract.
            unsafe { *dst.add(j * ds + i) = src[i * ss + j] };
        }
    }
    for jb in (0..cols).step_by(64) {
        for i in i0..rows {
            for j in jb..(jb + 64).min(cols) {
                // SAFETY: `i < rows`, `j < cols`: inside `dst` by the caller's contract.
                unsafe { *dst.add(j * ds + i) = src[i * ss + j] };
            }
        }
    }
}

/// `[n][c][hw]` → `[n][hw][c]`, in parallel over pixel ranges ([`crate::par_for`]).
pub fn nchw_to_nhwc(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    relayout(x, n, c, hw, c, true)
}

/// `[n][hw][c]` → `[n][c][hw]`, as [`nchw_to_nhwc`].
pub fn nhwc_to_nchw(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    relayout(x, n, c, hw, c, false)
}

/// The channel block of kiln's channel-blocked layout for `c` channels: 64 (one micro-tile of
/// the convolution kernel) when it divides `c`, else all of them (plain channels-last).
pub fn channel_block(c: usize) -> usize {
    if c.is_multiple_of(64) {
        64
    } else {
        c
    }
}

/// `[n][c][hw]` → the channel-blocked layout `[c / b][n][hw][b]`, `b = channel_block(c)`:
/// every block of channels is a channels-last tensor of its own, its pixels contiguous.
pub fn nchw_to_blocked(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    relayout(x, n, c, hw, channel_block(c), true)
}

/// The channel-blocked layout (see [`nchw_to_blocked`]) → `[n][c][hw]`.
pub fn blocked_to_nchw(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    relayout(x, n, c, hw, channel_block(c), false)
}

/// Between `[n][c][hw]` and `[c / block][n][hw][block]` (channels-last when `block = c`), in
/// parallel over pixel ranges; `block` divides `c`.
pub(crate) fn relayout(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    block: usize,
    to_blocked: bool,
) -> Vec<f32> {
    assert_eq!(x.len(), n * c * hw, "relayout: size");
    assert!(
        block > 0 && c.is_multiple_of(block) || c == 0,
        "relayout: block"
    );
    if c == 0 || hw == 0 {
        return vec![0f32; x.len()];
    }
    let blocks = c / block;
    // Pixel ranges of whole 16-blocks, about four per thread.
    let per = hw
        .div_ceil(crate::current_threads() * 4)
        .next_multiple_of(16);
    let parts = hw.div_ceil(per);
    let fill = |mut y: Out<'_>| {
        let out = SharedOut(y.as_mut_ptr());
        crate::par_for(n * blocks * parts, |t| {
            let out = &out;
            let (ib, p0) = (t / parts, (t % parts) * per);
            let (i, b) = (ib / blocks, ib % blocks);
            let np = per.min(hw - p0);
            // Channels b·block.. of image i: `[block][hw]` channels-first, `[hw][block]` blocked.
            let first = (i * c + b * block) * hw;
            let last = (b * n + i) * hw * block;
            // SAFETY: inside the `[block × hw]` part of the output this task's (image, block)
            // owns, it writes only pixels p0..p0 + np.
            unsafe {
                if to_blocked {
                    let yb = out.0.wrapping_add(last);
                    transpose_to(&x[first + p0..], hw, block, np, yb.add(p0 * block), block);
                } else {
                    let yb = out.0.wrapping_add(first);
                    transpose_to(&x[last + p0 * block..], block, np, block, yb.add(p0), hw);
                }
            }
        });
    };
    // SAFETY: the tasks cover every (image, block, pixel range), and `transpose_to` writes all
    // `block` channels of each of its pixels.
    unsafe { filled_vec(x.len(), fill) }
}

/// One 16×16 block, in registers: pairs of floats, then pairs of pairs, then 128-bit lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block16(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    let mut r = [_mm512_setzero_ps(); 16];
    for (i, v) in r.iter_mut().enumerate() {
        *v = _mm512_loadu_ps(src.add(i * ss));
    }
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + j], lane l: column 4l + j of rows 4g..4g+4.
    let mut u = [_mm512_setzero_ps(); 16];
    let pd = _mm512_castps_pd;
    for g in 0..4 {
        let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(c)));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(c)));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(b), pd(d)));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(b), pd(d)));
    }
    for j in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0b10_00_10_00>(u[j], u[4 + j]);
        let v1 = _mm512_shuffle_f32x4::<0b11_01_11_01>(u[j], u[4 + j]);
        let w0 = _mm512_shuffle_f32x4::<0b10_00_10_00>(u[8 + j], u[12 + j]);
        let w1 = _mm512_shuffle_f32x4::<0b11_01_11_01>(u[8 + j], u[12 + j]);
        _mm512_storeu_ps(
            dst.add(j * ds),
            _mm512_shuffle_f32x4::<0b10_00_10_00>(v0, w0),
        );
        _mm512_storeu_ps(
            dst.add((8 + j) * ds),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(v0, w0),
        );
        _mm512_storeu_ps(
            dst.add((4 + j) * ds),
            _mm512_shuffle_f32x4::<0b10_00_10_00>(v1, w1),
        );
        _mm512_storeu_ps(
            dst.add((12 + j) * ds),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(v1, w1),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round trips, against the index formula of the blocked layout.
    #[test]
    fn blocked_layout() {
        for (n, c, hw) in [(2, 128, 13), (1, 3, 20), (3, 192, 17), (2, 40, 5)] {
            let x: Vec<f32> = (0..n * c * hw).map(|v| v as f32).collect();
            let y = nchw_to_blocked(&x, n, c, hw);
            let b = channel_block(c);
            for i in 0..n {
                for ch in 0..c {
                    for p in 0..hw {
                        let got = y[((ch / b * n + i) * hw + p) * b + ch % b];
                        assert_eq!(got, x[(i * c + ch) * hw + p], "{n} {c} {hw}");
                    }
                }
            }
            assert_eq!(blocked_to_nchw(&y, n, c, hw), x);
            assert_eq!(nhwc_to_nchw(&nchw_to_nhwc(&x, n, c, hw), n, c, hw), x);
        }
    }

    #[test]
    fn matches_naive() {
        for (rows, cols) in [(16, 16), (33, 50), (5, 7), (48, 144), (17, 1), (1, 40)] {
            let (ss, ds) = (cols + 3, rows + 5);
            let src: Vec<f32> = (0..rows * ss).map(|v| v as f32).collect();
            let mut dst = vec![-1f32; cols * ds];
            transpose(&src, ss, rows, cols, &mut dst, ds);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(dst[j * ds + i], src[i * ss + j], "{rows}x{cols} at {i},{j}");
                }
            }
        }
    }
}
