//! Forward-pass benchmarks on synthetic input: what `kiln bench` measures.
//!
//! A model is built from the registry with its shipped weights when there are some
//! (`weights/NAME.safetensors`), else with deterministic random weights of the right shapes
//! ([`random_weights`]); the timing does not depend on the values. Each configuration runs
//! `warmup` untimed forward passes, then `iters` timed ones, inside a rayon pool of `threads`
//! threads, which bounds both candle's ops and kiln's kernels.
//!
//! # Sharing a thread pool with a host program
//!
//! kiln computes in the rayon pool it is called from. A host with its own pool runs kiln inside
//! it — `pool.install(|| classifier.logits(&batch))` — and kiln then uses exactly that pool's
//! threads; called outside any pool, it uses rayon's global pool (sized by `RAYON_NUM_THREADS`,
//! else the logical CPUs). [`run`] does the same with a pool of its own.

use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use kiln_models::{ArchParams, ImageModel};
use serde::Serialize;

use crate::weights::WeightFile;
use crate::{device_name, shipped_weights_dir, RuntimeError};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Registry architecture name.
    pub model: String,
    /// Batch sizes, one configuration each.
    pub batches: Vec<usize>,
    /// Device.
    pub device: Device,
    /// Compute dtype.
    pub dtype: DType,
    /// Untimed passes before timing.
    pub warmup: usize,
    /// Timed passes.
    pub iters: usize,
    /// Threads of the pool the model runs in.
    pub threads: usize,
    /// Input height and width.
    pub size: usize,
}

/// The result for one configuration. Latencies are of one forward pass of the whole batch.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Architecture.
    pub model: String,
    /// Images per forward pass.
    pub batch: usize,
    /// Device name (`cpu`, `cuda:0`, ...).
    pub device: String,
    /// Compute dtype.
    pub dtype: String,
    /// Threads in the pool.
    pub threads: usize,
    /// Median latency of one forward pass, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// `batch / p50`.
    pub images_per_s: f64,
    /// `shipped` or `random`.
    pub weights: String,
    /// Instruction set kiln's CPU kernels use (CPU f32 only; candle's ops otherwise).
    pub kernels: String,
    /// Median time to copy one input batch from host memory to the device and synchronise, ms
    /// (`None` on the CPU, where there is no copy).
    pub h2d_ms: Option<f64>,
    /// Device memory in use, MiB: the largest `total − free` the driver reported after each
    /// timed pass (the CUDA context and candle's allocations included; `None` where the device
    /// does not report it: the CPU, Metal).
    pub peak_device_mem_mib: Option<f64>,
    /// Every timed pass, ms, in order.
    pub samples_ms: Vec<f64>,
}

/// Physical CPU cores available to this process: the distinct (package, core) pairs in
/// `/proc/cpuinfo`, capped by the CPUs we may run on; the logical count where that is unknown.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::BTreeSet::new();
    let mut package = String::new();
    for line in info.lines() {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim() {
                "physical id" => package = v.trim().to_string(),
                "core id" => {
                    cores.insert((package.clone(), v.trim().to_string()));
                }
                _ => {}
            }
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

/// `f32`, `f16` or `bf16`.
pub fn parse_dtype(s: &str) -> Result<DType, RuntimeError> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(RuntimeError::Device(format!(
            "dtype `{s}`: expected f32, f16 or bf16"
        ))),
    }
}

/// Runs every configuration of `cfg`.
pub fn run(cfg: &BenchConfig) -> Result<Vec<BenchResult>, RuntimeError> {
    crate::check_dtype(&cfg.device, cfg.dtype)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads.max(1))
        .build()
        .map_err(|e| RuntimeError::Device(format!("thread pool: {e}")))?;
    let (model, origin) = load_model(&cfg.model, cfg.dtype, &cfg.device)?;
    let kernels = if cfg.device.is_cpu() && cfg.dtype == DType::F32 {
        kiln_kernels::isa().to_string()
    } else {
        "candle".to_string()
    };
    let mut out = vec![];
    for &batch in &cfg.batches {
        let x = synthetic_input(batch, cfg.size, cfg.dtype, &cfg.device)?;
        let h2d_ms = if cfg.device.is_cpu() {
            None
        } else {
            let host = synthetic_input(batch, cfg.size, cfg.dtype, &Device::Cpu)?;
            let mut t = vec![];
            for _ in 0..5 {
                let start = Instant::now();
                let y = host.to_device(&cfg.device)?;
                cfg.device.synchronize()?;
                t.push(start.elapsed().as_secs_f64() * 1e3);
                drop(y);
            }
            Some(percentile(&t, 50.0))
        };
        let mut peak: Option<usize> = None;
        let samples = pool.install(|| -> Result<Vec<f64>, RuntimeError> {
            for _ in 0..cfg.warmup {
                forward_sync(model.as_ref(), &x, &cfg.device)?;
            }
            let mut s = Vec::with_capacity(cfg.iters);
            for _ in 0..cfg.iters.max(1) {
                let t = Instant::now();
                let y = model.forward_batch(&x)?;
                // Timed to the end of the work on the device, not the end of the launches.
                cfg.device.synchronize()?;
                s.push(t.elapsed().as_secs_f64() * 1e3);
                if let Some(used) = device_mem_used(&cfg.device) {
                    peak = Some(peak.map_or(used, |p| p.max(used)));
                }
                drop(y);
            }
            Ok(s)
        })?;
        let p50 = percentile(&samples, 50.0);
        out.push(BenchResult {
            model: cfg.model.clone(),
            batch,
            device: device_name(&cfg.device),
            dtype: format!("{:?}", cfg.dtype).to_lowercase(),
            threads: cfg.threads,
            p50_ms: p50,
            p90_ms: percentile(&samples, 90.0),
            p99_ms: percentile(&samples, 99.0),
            images_per_s: batch as f64 / p50 * 1e3,
            weights: origin.to_string(),
            kernels: kernels.clone(),
            h2d_ms,
            peak_device_mem_mib: peak.map(|b| b as f64 / (1u64 << 20) as f64),
            samples_ms: samples,
        });
    }
    Ok(out)
}

fn forward_sync(model: &dyn ImageModel, x: &Tensor, dev: &Device) -> Result<(), RuntimeError> {
    let y = model.forward_batch(x)?;
    dev.synchronize()?;
    drop(y);
    Ok(())
}

/// Bytes of device memory in use (`total − free`), where the device reports it (CUDA).
fn device_mem_used(dev: &Device) -> Option<usize> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        return Some(total.saturating_sub(free));
    }
    let _ = dev;
    None
}

/// Nearest-rank percentile.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// A deterministic input batch `[batch, 3, size, size]` with values in about [-2, 2].
pub fn synthetic_input(
    batch: usize,
    size: usize,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor, RuntimeError> {
    let n = batch * 3 * size * size;
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 2654435761usize) % 4001) as f32 / 1000.0 - 2.0)
        .collect();
    Ok(
        Tensor::from_vec(data, (batch, 3, size, size), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?,
    )
}

/// Builds `name` with its shipped weights if there are any, else with [`random_weights`].
/// Returns the model and `"shipped"` or `"random"`.
pub fn load_model(
    name: &str,
    dtype: DType,
    dev: &Device,
) -> Result<(Box<dyn ImageModel>, &'static str), RuntimeError> {
    let path = shipped_weights_dir().join(format!("{name}.safetensors"));
    let params = ArchParams::new();
    if path.exists() {
        let file = WeightFile::read(&path)?;
        let vb = VarBuilder::from_buffered_safetensors(file.bytes.clone(), dtype, dev)?;
        Ok((kiln_models::build(name, &params, vb)?, "shipped"))
    } else {
        Ok((
            kiln_models::build(name, &params, random_weights(1000, dtype, dev))?,
            "random",
        ))
    }
}

/// A [`VarBuilder`] that makes up deterministic weights of whatever shape the architecture asks
/// for: convolution and linear weights uniform in ±√(3 / fan_in) (unit-variance activations),
/// batch norms the identity. The classifier, whose shape is read rather than asked for, gets
/// `num_classes` rows of as many inputs as the last convolution (or hidden linear layer) has
/// outputs.
pub fn random_weights(num_classes: usize, dtype: DType, dev: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(RandomWeights {
            num_classes,
            last_channels: Mutex::new(0),
        }),
        dtype,
        dev.clone(),
    )
}

struct RandomWeights {
    num_classes: usize,
    /// Outputs of the last convolution or linear weight handed out.
    last_channels: Mutex<usize>,
}

impl RandomWeights {
    fn make(
        &self,
        shape: Shape,
        name: &str,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let dims = shape.dims().to_vec();
        let n = shape.elem_count();
        let data: Vec<f32> = if dims.len() >= 2 {
            // A convolution's or a hidden linear layer's outputs: what the classifier that
            // follows them reads.
            if dims.len() == 4 || dims.len() == 2 {
                *self.last_channels.lock().unwrap() = dims[0];
            }
            let fan_in: usize = dims[1..].iter().product();
            let a = (3.0 / fan_in.max(1) as f32).sqrt();
            let mut s = name.bytes().fold(0x9E37_79B9u32, |h, b| {
                (h ^ b as u32).wrapping_mul(16_777_619)
            }) | 1;
            (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    ((s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * a
                })
                .collect()
        } else if name.ends_with("running_var") || name.ends_with("weight") {
            vec![1.0; n]
        } else {
            vec![0.0; n]
        };
        Tensor::from_vec(data, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)
    }
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.make(s, name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let inputs = *self.last_channels.lock().unwrap();
        if name.ends_with("weight") && inputs > 0 {
            self.make(Shape::from((self.num_classes, inputs)), name, dtype, dev)
        } else {
            candle_core::bail!("random weights: cannot guess the shape of `{name}`")
        }
    }

    /// Optional tensors (convolution biases) are absent, as in torchvision.
    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 90.0), 90.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }

    /// `kiln bench --model NAME` works for every registered architecture without weights
    /// (mobilenet_v3's hidden classifier layer once could not be made up).
    #[test]
    fn random_weights_build_every_architecture() {
        for arch in kiln_models::architectures() {
            let vb = random_weights(10, DType::F32, &Device::Cpu);
            let m = kiln_models::build(arch.name, &ArchParams::new(), vb)
                .unwrap_or_else(|e| panic!("{}: {e}", arch.name));
            let y = m
                .forward(&synthetic_input(1, 64, DType::F32, &Device::Cpu).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", arch.name));
            assert_eq!(y.dims(), &[1, 10], "{}", arch.name);
        }
    }

    #[test]
    fn random_resnet18_runs() {
        let vb = random_weights(1000, DType::F32, &Device::Cpu);
        let m = kiln_models::build("resnet18", &ArchParams::new(), vb).unwrap();
        let y = m
            .forward(&synthetic_input(1, 64, DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(y.dims(), &[1, 1000]);
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
    }
}
