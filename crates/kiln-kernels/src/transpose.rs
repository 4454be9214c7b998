//! Out-of-place f32 matrix transpose, for switching a strip between channels-last and
//! channels-first.

/// `dst[j·ds + i] = src[i·ss + j]` for `i < rows`, `j < cols`.
pub(crate) fn transpose(
    src: &[f32],
    ss: usize,
    rows: usize,
    cols: usize,
    dst: &mut [f32],
    ds: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        src.len() >= (rows - 1) * ss + cols,
        "transpose: src too short"
    );
    assert!(
        dst.len() >= (cols - 1) * ds + rows,
        "transpose: dst too short"
    );
    let (mut i0, mut j_full) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if crate::depthwise::Isa::detect() == crate::depthwise::Isa::Avx512 {
        j_full = cols / 16 * 16;
        i0 = rows / 16 * 16;
        for i in (0..i0).step_by(16) {
            for j in (0..j_full).step_by(16) {
                // SAFETY: AVX-512F detected; the 16×16 block lies inside both bounds asserted.
                unsafe {
                    block16(
                        src.as_ptr().add(i * ss + j),
                        ss,
                        dst.as_mut_ptr().add(j * ds + i),
                        ds,
                    )
                };
            }
        }
    }
    // What the 16×16 blocks left: the right columns of the blocked rows, then the last rows.
    for i in 0..i0 {
        for j in j_full..cols {
            dst[j * ds + i] = src[i * ss + j];
        }
    }
    // Cache-blocked so that the strided writes stay within a few lines.
    for jb in (0..cols).step_by(64) {
        for i in i0..rows {
            for j in jb..(jb + 64).min(cols) {
                dst[j * ds + i] = src[i * ss + j];
            }
        }
    }
}

/// `[n][c][hw]` → `[n][hw][c]`.
pub fn nchw_to_nhwc(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    assert_eq!(x.len(), n * c * hw, "nchw_to_nhwc: size");
    let mut y = vec![0f32; x.len()];
    for (xi, yi) in x.chunks(c * hw).zip(y.chunks_mut(c * hw)) {
        transpose(xi, hw, c, hw, yi, c);
    }
    y
}

/// `[n][hw][c]` → `[n][c][hw]`.
pub fn nhwc_to_nchw(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    assert_eq!(x.len(), n * c * hw, "nhwc_to_nchw: size");
    let mut y = vec![0f32; x.len()];
    for (xi, yi) in x.chunks(c * hw).zip(y.chunks_mut(c * hw)) {
        transpose(xi, c, hw, c, yi, hw);
    }
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
