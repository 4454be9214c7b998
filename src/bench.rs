//! `kiln bench`: arguments in, [`kiln_runtime::bench`] measures, a table or JSON out.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use kiln_runtime::bench::{parse_dtype, physical_cores, run as run_bench, BenchConfig};
use kiln_runtime::parse_device;

#[derive(Args)]
pub struct BenchArgs {
    /// Architecture to time (shipped weights when there are some, else random weights).
    #[arg(long, default_value = "mobilenet_v2")]
    model: String,
    /// Batch size; repeat for several configurations (--batch 1 --batch 8).
    #[arg(long = "batch", default_values_t = [1usize])]
    batches: Vec<usize>,
    /// Device: cpu, cuda[:N], metal[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
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
    let cfg = BenchConfig {
        model: a.model,
        batches: a.batches,
        device: parse_device(&a.device)?,
        dtype: parse_dtype(match a.dtype {
            BenchDtype::F32 => "f32",
            BenchDtype::F16 => "f16",
            BenchDtype::Bf16 => "bf16",
        })?,
        warmup: a.warmup,
        iters: a.iters,
        threads: a.threads.unwrap_or_else(physical_cores),
        size: a.size,
    };
    let results = run_bench(&cfg)?;
    match a.format {
        BenchFormat::Json => println!("{}", serde_json::to_string_pretty(&results)?),
        BenchFormat::Table => {
            if let Some(r) = results.first() {
                println!(
                    "{} ({} weights), {}×{} input, device {}, {}, {} threads, kernels: {}, {} iterations after {} warm-up",
                    r.model, r.weights, cfg.size, cfg.size, r.device, r.dtype, r.threads, r.kernels, cfg.iters, cfg.warmup
                );
            }
            println!(
                "{:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
                "batch", "p50 ms", "p90 ms", "p99 ms", "ms/image", "images/s"
            );
            for r in &results {
                println!(
                    "{:>6} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.1}",
                    r.batch,
                    r.p50_ms,
                    r.p90_ms,
                    r.p99_ms,
                    r.p50_ms / r.batch as f64,
                    r.images_per_s
                );
            }
        }
    }
    Ok(())
}
