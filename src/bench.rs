//! `kiln bench`: arguments in, [`kiln_runtime::bench`] measures, a table or JSON out.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use kiln_runtime::bench::{
    parse_dtype, physical_cores, run as run_bench, BenchConfig, BenchResult,
};
use kiln_runtime::{check_dtype, parse_device};

#[derive(Args)]
pub struct BenchArgs {
    /// Architecture to time (shipped weights when there are some, else random weights).
    #[arg(long, default_value = "mobilenet_v2")]
    model: String,
    /// Batch size; repeat for several configurations (--batch 1 --batch 8).
    #[arg(long = "batch", default_values_t = [1usize])]
    batches: Vec<usize>,
    /// Device: cpu, cuda[:N], metal[:N]; repeat to run the same configurations on each
    /// (--device cpu --device cuda:0) into one table.
    #[arg(long = "device", default_values_t = [String::from("cpu")])]
    devices: Vec<String>,
    /// Compute dtype.
    #[arg(long, value_enum, default_value_t = BenchDtype::F32)]
    dtype: BenchDtype,
    /// Untimed forward passes first.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Timed forward passes.
    #[arg(long, default_value_t = 30)]
    iters: usize,
    /// Threads (default: the physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Input height and width.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = BenchFormat::Table)]
    format: BenchFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchDtype {
    F32,
    F16,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchFormat {
    Table,
    Json,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.batches.contains(&0) || a.iters == 0 || a.threads == Some(0) || a.size == 0 {
        bail!("--batch, --iters, --threads and --size must be positive");
    }
    let dtype = parse_dtype(match a.dtype {
        BenchDtype::F32 => "f32",
        BenchDtype::F16 => "f16",
        BenchDtype::Bf16 => "bf16",
    })?;
    // Every device is opened and checked before anything runs: a typo in the second one must
    // not cost the first one's run.
    let mut devices = vec![];
    for d in &a.devices {
        let dev = parse_device(d)?;
        check_dtype(&dev, dtype)?;
        devices.push(dev);
    }
    let mut results = vec![];
    for device in devices {
        let cfg = BenchConfig {
            model: a.model.clone(),
            batches: a.batches.clone(),
            device,
            dtype,
            warmup: a.warmup,
            iters: a.iters,
            threads: a.threads.unwrap_or_else(physical_cores),
            size: a.size,
        };
        results.extend(run_bench(&cfg)?);
    }
    match a.format {
        BenchFormat::Json => println!("{}", serde_json::to_string_pretty(&results)?),
        BenchFormat::Table => print!("{}", table(&results, a.size, a.iters, a.warmup)),
    }
    Ok(())
}

/// One table for every device and batch: latency of a whole-batch forward pass (timed to the
/// device's synchronisation), throughput, device memory and the host-to-device copy.
fn table(results: &[BenchResult], size: usize, iters: usize, warmup: usize) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(r) = results.first() {
        let _ = writeln!(
            out,
            "{} ({} weights), {size}×{size} input, {}, {iters} iterations after {warmup} warm-up",
            r.model, r.weights, r.dtype
        );
    }
    let _ = writeln!(
        out,
        "{:<8} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  kernels",
        "device", "batch", "p50 ms", "p99 ms", "ms/image", "images/s", "mem MiB", "h2d ms"
    );
    let opt = |v: Option<f64>, prec: usize| match v {
        Some(v) => format!("{v:.prec$}"),
        None => "-".into(),
    };
    for r in results {
        let kernels = if r.device == "cpu" {
            format!("{} ({} threads)", r.kernels, r.threads)
        } else {
            r.kernels.clone()
        };
        let _ = writeln!(
            out,
            "{:<8} {:>6} {:>10.2} {:>10.2} {:>10.3} {:>10.1} {:>10} {:>10}  {kernels}",
            r.device,
            r.batch,
            r.p50_ms,
            r.p99_ms,
            r.p50_ms / r.batch as f64,
            r.images_per_s,
            opt(r.peak_device_mem_mib, 0),
            opt(r.h2d_ms, 3),
        );
    }
    out
}
