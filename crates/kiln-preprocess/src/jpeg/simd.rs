//! Which code paths the decoder runs: AVX2 where the CPU has it, the portable scalar code
//! otherwise or when `KILN_ISA=baseline` asks for it. Every path is integer arithmetic with the
//! same roundings, so all of them give the same samples (the tests run both).

use std::sync::OnceLock;

/// The instruction set the decoder's hot loops use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust (what the compiler makes of it for the build target).
    Scalar,
    /// AVX2 (x86-64 only, detected at run time).
    Avx2,
}

impl Isa {
    /// The best this CPU supports, capped by the environment variable `KILN_ISA`.
    ///
    /// This repeats the small parse of `KILN_ISA` in `kiln-kernels` (`Isa::detect`, not public,
    /// and kiln-preprocess must not depend on that crate): `baseline` forces the scalar paths;
    /// anything else (`avx2`, `avx512`, unset) allows AVX2, the highest level used here.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let baseline = std::env::var("KILN_ISA").as_deref() == Ok("baseline");
            #[cfg(target_arch = "x86_64")]
            {
                if !baseline && std::is_x86_feature_detected!("avx2") {
                    return Isa::Avx2;
                }
            }
            let _ = baseline;
            Isa::Scalar
        })
    }
}
