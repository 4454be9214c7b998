//! Row-major f32 GEMM on slices, over the `gemm` crate.

use gemm::Parallelism;

/// `c[m × n] = (accumulate ? c : 0) + a[m × k] · b[k × n]`, all row-major with leading
/// dimensions `lda`, `ldb`, `ldc`. Runs on `threads` threads of the current rayon pool
/// (1: on the calling thread).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || a.len() >= (m - 1) * lda + k, "sgemm: a too short");
    assert!(k == 0 || b.len() >= (k - 1) * ldb + n, "sgemm: b too short");
    assert!(c.len() >= (m - 1) * ldc + n, "sgemm: c too short");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: the asserts above keep every element the strides reach inside the slices, and `c`
    // does not alias `a` or `b` (a `&mut` and two `&`).
    unsafe {
        sgemm_raw(
            m,
            n,
            k,
            a.as_ptr(),
            lda,
            b.as_ptr(),
            ldb,
            c.as_mut_ptr(),
            ldc,
            accumulate,
            threads,
        )
    }
}

/// [`sgemm`] on pointers, for callers that hand disjoint column blocks of one output to several
/// threads.
///
/// # Safety
/// Every element `a[i·lda + p]`, `b[p·ldb + j]` (`i < m`, `p < k`, `j < n`) must be readable,
/// every `c[i·ldc + j]` writable and not accessed by anyone else during the call, `k > 0`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_raw(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the caller's contract (above) is exactly `gemm::gemm`'s: every element reached
    // through `a`, `b` (unit column stride, row strides `lda`, `ldb`) is readable and every one
    // reached through `c` is writable and unaliased.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            accumulate,
            a,
            1,
            lda as isize,
            b,
            1,
            ldb as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `C = (accumulate ? C : 0) + A · B` with any element strides: `A[i][p]` at `a + i·a_rs + p·a_cs`,
/// `B[p][j]` at `b + p·b_rs + j·b_cs`, `C[i][j]` at `c + i·c_rs + j·c_cs`. On the calling thread.
///
/// # Safety
/// Every element those strides reach for `i < m`, `p < k`, `j < n` must be readable (`a`, `b`)
/// or writable and unaliased (`c`); `k > 0`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_strided(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
    c: *mut f32,
    (c_rs, c_cs): (usize, usize),
) {
    // SAFETY: the caller guarantees that every element these strides reach is readable (`a`,
    // `b`) or writable and unaliased (`c`), which is what `gemm::gemm` requires.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            c_cs as isize,
            c_rs as isize,
            false,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// A fully connected layer, `y[n × m] = x[n × k] · wt[k × m] + bias[m]`, split over output
/// columns with [`crate::par_for`] (so that it runs on a [`crate::team`] too).
pub fn linear(x: &[f32], n: usize, k: usize, wt: &[f32], bias: &[f32], m: usize) -> Vec<f32> {
    assert_eq!(x.len(), n * k, "linear: input size");
    assert_eq!(wt.len(), k * m, "linear: weight size");
    assert_eq!(bias.len(), m, "linear: bias size");
    let mut y: Vec<f32> = (0..n).flat_map(|_| bias.iter().copied()).collect();
    if k == 0 || n == 0 {
        return y;
    }
    // Column blocks of at least 128 (whole micro-kernel tiles), about two per thread.
    let per = m
        .div_ceil(crate::current_threads() * 2)
        .next_multiple_of(16)
        .max(128);
    struct Out(*mut f32);
    // SAFETY: tasks write disjoint column blocks.
    unsafe impl Sync for Out {}
    let out = Out(y.as_mut_ptr());
    crate::par_for(m.div_ceil(per), |t| {
        let out = &out;
        let (c0, c1) = (t * per, ((t + 1) * per).min(m));
        if n <= 2 {
            // A matrix-vector product per row: stream the weight once, accumulating into the
            // output columns (the GEMM's packing would cost more than the product).
            for i in 0..n {
                // SAFETY: row `i`, columns c0..c1 of `y` are this task's alone.
                let yr = unsafe { std::slice::from_raw_parts_mut(out.0.add(i * m + c0), c1 - c0) };
                gemv_rows(&x[i * k..(i + 1) * k], wt, m, c0, yr);
            }
            return;
        }
        // SAFETY: `x` is `[n × k]`, `wt` `[k × m]`, `y` `[n × m]`; this task alone touches
        // columns c0..c1 of `y`.
        unsafe {
            sgemm_raw(
                n,
                c1 - c0,
                k,
                x.as_ptr(),
                k,
                wt.as_ptr().add(c0),
                m,
                out.0.add(c0),
                m,
                true,
                1,
            )
        }
    });
    y
}

/// `y[j] += Σ_p x[p] · wt[p·m + c0 + j]`, vectorised along `j` for the CPU's width.
fn gemv_rows(x: &[f32], wt: &[f32], m: usize, c0: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::depthwise::Isa;
        match Isa::detect() {
            // SAFETY: the features were detected on this CPU.
            Isa::Avx512 => return unsafe { gemv_avx512(x, wt, m, c0, y) },
            Isa::Avx2Fma => return unsafe { gemv_avx2(x, wt, m, c0, y) },
            Isa::Baseline => {}
        }
    }
    gemv_body(x, wt, m, c0, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gemv_avx512(x: &[f32], wt: &[f32], m: usize, c0: usize, y: &mut [f32]) {
    gemv_body(x, wt, m, c0, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_avx2(x: &[f32], wt: &[f32], m: usize, c0: usize, y: &mut [f32]) {
    gemv_body(x, wt, m, c0, y)
}

#[inline(always)]
fn gemv_body(x: &[f32], wt: &[f32], m: usize, c0: usize, y: &mut [f32]) {
    let n = y.len();
    for (p, &xv) in x.iter().enumerate() {
        let w = &wt[p * m + c0..p * m + c0 + n];
        y.iter_mut().zip(w).for_each(|(a, &b)| *a += xv * b);
    }
}

#[cfg(test)]
mod tests {
    use super::sgemm;

    #[test]
    fn linear_matches_naive() {
        for n in [1, 3] {
            linear_case(n);
        }
    }

    fn linear_case(n: usize) {
        let (k, m) = (37, 300);
        let x: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let wt: Vec<f32> = (0..k * m).map(|i| (i % 5) as f32 * 0.5).collect();
        let b: Vec<f32> = (0..m).map(|i| i as f32 * 0.01).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let y = pool.install(|| super::linear(&x, n, k, &wt, &b, m));
        for i in 0..n {
            for j in 0..m {
                let r: f32 = b[j] + (0..k).map(|p| x[i * k + p] * wt[p * m + j]).sum::<f32>();
                assert!((y[i * m + j] - r).abs() < 1e-3);
            }
        }
    }

    #[test]
    fn matches_naive() {
        let (m, n, k) = (7, 13, 5);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.5).collect();
        let mut c = vec![1.0f32; m * n];
        sgemm(m, n, k, &a, k, &b, n, &mut c, n, true, 2);
        for i in 0..m {
            for j in 0..n {
                let r: f32 = 1.0 + (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f32>();
                assert!((c[i * n + j] - r).abs() < 1e-4);
            }
        }
    }
}
