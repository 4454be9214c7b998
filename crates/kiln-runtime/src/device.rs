//! Device selection: `cpu`, `cuda[:N]`, `metal[:N]`, or `auto`.

use candle_core::Device;

use crate::RuntimeError;

/// Parses a device name and opens the device.
///
/// CUDA and Metal are available when kiln is built with the `cuda` / `metal` cargo features;
/// naming one without the feature is an error that says how to get it, never a silent CPU run.
pub fn parse_device(name: &str) -> Result<Device, RuntimeError> {
    let name = name.trim().to_ascii_lowercase();
    let (kind, ordinal) = match name.split_once(':') {
        Some((k, n)) => (
            k.to_string(),
            n.parse::<usize>().map_err(|_| {
                RuntimeError::Device(format!(
                    "`{name}`: the device index must be a number, as in cuda:0"
                ))
            })?,
        ),
        None => (name.clone(), 0),
    };
    match kind.as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => open_cuda(ordinal),
        "metal" => open_metal(ordinal),
        "auto" => Ok(open_cuda(0)
            .or_else(|_| open_metal(0))
            .unwrap_or(Device::Cpu)),
        _ => Err(RuntimeError::Device(format!(
            "unknown device `{name}`; use cpu, cuda[:N], metal[:N] or auto"
        ))),
    }
}

fn open_cuda(ordinal: usize) -> Result<Device, RuntimeError> {
    if !cfg!(feature = "cuda") {
        return Err(RuntimeError::Device(
            "this kiln was built without CUDA; rebuild with `--features cuda`".into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| RuntimeError::Device(format!("cuda:{ordinal}: {e}")))
}

fn open_metal(ordinal: usize) -> Result<Device, RuntimeError> {
    if !cfg!(feature = "metal") {
        return Err(RuntimeError::Device(
            "this kiln was built without Metal; rebuild with `--features metal`".into(),
        ));
    }
    Device::new_metal(ordinal).map_err(|e| RuntimeError::Device(format!("metal:{ordinal}: {e}")))
}

/// A short human name for a device, e.g. `cpu` or `cuda:0`.
pub fn device_name(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("auto").is_ok());
        assert!(parse_device("tpu")
            .unwrap_err()
            .to_string()
            .contains("unknown device"));
        assert!(parse_device("cuda:x")
            .unwrap_err()
            .to_string()
            .contains("number"));
        if !cfg!(feature = "cuda") {
            assert!(parse_device("cuda:0")
                .unwrap_err()
                .to_string()
                .contains("--features cuda"));
        }
    }
}
