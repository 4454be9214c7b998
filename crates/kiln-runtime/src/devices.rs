//! What this build of kiln can run on (`kiln devices`), and which dtypes each device computes in.

use candle_core::{DType, Device};
use serde::Serialize;

use crate::RuntimeError;

/// One device this build can use.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    /// The name to pass as `--device` (`cpu`, `cuda:0`, `metal:0`).
    pub name: String,
    /// What it is (CPU model, GPU name).
    pub model: String,
    /// Properties as `(key, value)`, in display order.
    pub details: Vec<(String, String)>,
}

/// The CPU, and each CUDA / Metal device this build was compiled for and finds. CUDA or Metal
/// that is compiled in but has no usable device or driver is reported in `notes`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// The usable devices, the CPU first.
    pub devices: Vec<DeviceInfo>,
    /// Backends compiled in without a device, and backends not compiled in (with the cargo
    /// feature that adds them).
    pub notes: Vec<String>,
}

/// Lists the devices (see [`DeviceReport`]).
pub fn list_devices() -> DeviceReport {
    let mut devices = vec![cpu_info()];
    let mut notes = vec![];
    if cfg!(feature = "cuda") {
        match cuda_devices() {
            Ok(d) if d.is_empty() => notes.push("cuda: compiled in, no CUDA device found".into()),
            Ok(d) => devices.extend(d),
            Err(e) => notes.push(format!(
                "cuda: compiled in, no usable driver or device ({e})"
            )),
        }
    } else {
        notes.push("cuda: not in this build (cargo build --release --features cuda)".into());
    }
    if cfg!(feature = "metal") {
        match Device::new_metal(0) {
            Ok(_) => devices.push(DeviceInfo {
                name: "metal:0".into(),
                model: "Metal GPU".into(),
                details: vec![("dtypes".into(), "f32, f16, bf16".into())],
            }),
            Err(e) => notes.push(format!("metal: compiled in, no Metal device ({e})")),
        }
    } else {
        notes.push(
            "metal: not in this build (macOS: cargo build --release --features metal)".into(),
        );
    }
    DeviceReport { devices, notes }
}

/// Refuses a dtype a device does not compute in: the CPU runs kiln's f32 kernels (and candle's
/// f64 ops, the reference the tests compare with); f16 and bf16 there would fall back to candle's
/// scalar loops, tens of times slower, so they are an error rather than a silent slowdown.
pub fn check_dtype(device: &Device, dtype: DType) -> Result<(), RuntimeError> {
    if device.is_cpu() && matches!(dtype, DType::F16 | DType::BF16) {
        return Err(RuntimeError::Device(format!(
            "the CPU computes in f32 only (kiln's CPU kernels are f32); --dtype {} needs a GPU \
             (--device cuda[:N] or metal[:N])",
            dtype_name(dtype)
        )));
    }
    Ok(())
}

/// `f32`, `f16`, `bf16`, ... as kiln's options spell them.
pub fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_lowercase()
}

fn cpu_info() -> DeviceInfo {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut details = vec![
        (
            "cores".into(),
            format!(
                "{} physical, {logical} logical",
                crate::bench::physical_cores()
            ),
        ),
        ("kernels".into(), kernels_isa()),
    ];
    details.extend(caches());
    details.push(("dtypes".into(), "f32".into()));
    DeviceInfo {
        name: "cpu".into(),
        model,
        details,
    }
}

/// The instruction set kiln's CPU kernels use, and `KILN_ISA` when it caps the choice.
fn kernels_isa() -> String {
    let isa = kiln_kernels::isa().to_string();
    match std::env::var("KILN_ISA") {
        Ok(cap) if !cap.is_empty() => format!("{isa} (capped by KILN_ISA={cap})"),
        _ => isa,
    }
}

/// CPU caches from sysfs: `L1d 48K`, `L2 2048K`, ... (Linux; none elsewhere).
fn caches() -> Vec<(String, String)> {
    let base = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut out = vec![];
    for i in 0..8 {
        let dir = base.join(format!("index{i}"));
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
        else {
            continue;
        };
        let suffix = match kind.as_str() {
            "Data" => "d",
            "Instruction" => "i",
            _ => "",
        };
        let shared = read("shared_cpu_list")
            .map(|s| format!(" (CPUs {s})"))
            .unwrap_or_default();
        out.push((format!("L{level}{suffix} cache"), format!("{size}{shared}")));
    }
    out
}

#[cfg(feature = "cuda")]
fn cuda_devices() -> Result<Vec<DeviceInfo>, String> {
    use candle_core::cuda_backend::cudarc::driver::{sys, CudaContext};
    let count = CudaContext::device_count().map_err(|e| e.to_string())?;
    let mut driver = 0i32;
    // SAFETY: cuDriverGetVersion writes one int through the pointer, which is valid for the
    // call; device_count above has initialised the driver API.
    let driver = match unsafe { sys::cuDriverGetVersion(&mut driver) } {
        sys::CUresult::CUDA_SUCCESS => format!("CUDA {}.{}", driver / 1000, driver % 1000 / 10),
        e => format!("unknown ({e:?})"),
    };
    let mut out = vec![];
    for i in 0..count.max(0) as usize {
        let ctx = CudaContext::new(i).map_err(|e| format!("cuda:{i}: {e}"))?;
        let name = ctx.name().unwrap_or_else(|e| format!("unknown ({e})"));
        let mut details = vec![];
        if let Ok(m) = ctx.total_mem() {
            details.push((
                "memory".into(),
                format!("{:.1} GiB", m as f64 / (1u64 << 30) as f64),
            ));
        }
        if let Ok((a, b)) = ctx.compute_capability() {
            details.push(("compute capability".into(), format!("{a}.{b}")));
        }
        details.push(("driver".into(), driver.clone()));
        details.push(("dtypes".into(), "f32, f16, bf16".into()));
        out.push(DeviceInfo {
            name: format!("cuda:{i}"),
            model: name,
            details,
        });
    }
    Ok(out)
}

#[cfg(not(feature = "cuda"))]
fn cuda_devices() -> Result<Vec<DeviceInfo>, String> {
    Ok(vec![])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_listed_with_its_kernels() {
        let r = list_devices();
        let cpu = &r.devices[0];
        assert_eq!(cpu.name, "cpu");
        let get = |k: &str| cpu.details.iter().find(|(a, _)| a == k).map(|(_, v)| v);
        assert_eq!(
            get("kernels").map(|s| s.split(' ').next().unwrap()),
            Some(kiln_kernels::isa())
        );
        assert!(get("cores").is_some());
        if !cfg!(feature = "cuda") {
            assert!(r.notes.iter().any(|n| n.contains("--features cuda")));
        }
    }

    #[test]
    fn cpu_refuses_half_precision() {
        assert!(check_dtype(&Device::Cpu, DType::F32).is_ok());
        for dt in [DType::F16, DType::BF16] {
            let e = check_dtype(&Device::Cpu, dt).unwrap_err().to_string();
            assert!(e.contains("f32 only") && e.contains(&dtype_name(dt)), "{e}");
        }
    }
}
