//! Out-of-place f32 matrix transpose, for switching a strip between channels-last and
//! channels-first.

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
            unsafe { *dst.add(j * ds + i) = src[i * ss + j] };
        }
    }
    for jb in (0..cols).step_by(64) {
        for i in i0..rows {
            for j in jb..(jb + 64).min(cols) {
                unsafe { *dst.add(j * ds + i) = src[i * ss + j] };
            }
        }
    }
}

/// `[n][c][hw]` → `[n][hw][c]`, in parallel over pixel ranges ([`crate::par_for`]).
pub fn nchw_to_nhwc(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    assert_eq!(x.len(), n * c * hw, "nchw_to_nhwc: size");
    relayout(x, n, c, hw, true)
}

/// `[n][hw][c]` → `[n][c][hw]`, as [`nchw_to_nhwc`].
pub fn nhwc_to_nchw(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    assert_eq!(x.len(), n * c * hw, "nhwc_to_nchw: size");
    relayout(x, n, c, hw, false)
}

fn relayout(x: &[f32], n: usize, c: usize, hw: usize, to_last: bool) -> Vec<f32> {
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    // SAFETY: the transposes below write every element before anything reads it; f32 has no
    // invalid bit patterns.
    #[allow(clippy::uninit_vec)]
    unsafe {
        y.set_len(x.len())
    };
    if c == 0 || hw == 0 {
        return y;
    }
    // Pixel ranges of whole 16-blocks, about four per thread.
    let per = hw
        .div_ceil(crate::current_threads() * 4)
        .next_multiple_of(16);
    let parts = hw.div_ceil(per);
    struct Out(*mut f32);
    // SAFETY: tasks write disjoint pixel ranges.
    unsafe impl Sync for Out {}
    let out = Out(y.as_mut_ptr());
    crate::par_for(n * parts, |t| {
        let out = &out;
        let (i, p0) = (t / parts, (t % parts) * per);
        let np = per.min(hw - p0);
        let xi = &x[i * c * hw..(i + 1) * c * hw];
        let yi = out.0.wrapping_add(i * c * hw);
        // SAFETY: inside the image's `[c × hw]` output, this task writes only pixels
        // p0..p0 + np.
        unsafe {
            if to_last {
                transpose_to(&xi[p0..], hw, c, np, yi.add(p0 * c), c);
            } else {
                transpose_to(&xi[p0 * c..], c, np, c, yi.add(p0), hw);
            }
        }
    });
    y
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
    use super::transpose;

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
