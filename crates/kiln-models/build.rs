//! With the `cuda` feature, compiles kiln's CUDA kernels (`cuda/*.cu`) to PTX with nvcc, as
//! candle's own kernels are compiled; the PTX is embedded and loaded by candle's CUDA device at
//! run time. Without the feature nothing runs: the default build needs no CUDA toolchain.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cuda/depthwise.cu");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=CUDA_ROOT");
    let nvcc = match std::env::var_os("CUDA_ROOT") {
        Some(root) => std::path::Path::new(&root).join("bin").join("nvcc"),
        None => "nvcc".into(),
    };
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ptx = out.join("depthwise.ptx");
    // compute_75 (Turing), the oldest architecture CUDA 13 compiles for: PTX JIT-compiles
    // forward to every newer GPU, and the kernel uses nothing newer.
    let status = std::process::Command::new(&nvcc)
        .args([
            "--ptx",
            "-O3",
            "-arch=compute_75",
            "cuda/depthwise.cu",
            "-o",
        ])
        .arg(&ptx)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{} failed on cuda/depthwise.cu ({s})", nvcc.display()),
        Err(e) => panic!(
            "the `cuda` feature needs nvcc ({}: {e}); set CUDA_ROOT or put nvcc on PATH \
             (scripts/cuda-toolkit.sh installs one)",
            nvcc.display()
        ),
    }
}
