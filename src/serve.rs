//! `kiln serve`: argument parsing only; the server is `kiln-serve`, and each model is built
//! exactly as `classify` builds one (same `--model` resolution, specs and hub models).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kiln_preprocess::DecodeOptions;

use crate::cli::{build_classifier, positive, Failure, ModelArgs, OverrideArgs, EXIT_OK};

/// Arguments of `kiln serve`.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// A model to serve, repeatable: `NAME=REF` or `REF`, where REF is what `classify --model`
    /// takes (an architecture with shipped weights, `hf:OWNER/REPO`, a local hub-style
    /// directory) or a safetensors weights file. The name defaults to the architecture or the
    /// file's stem.
    #[arg(long = "model", default_value = "mobilenet_v2")]
    models: Vec<String>,
    /// cpu, cuda[:N], metal[:N] or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32, or f16 / bf16 on a GPU (the CPU computes in f32 only).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// REST (HTTP/1) port.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// gRPC port (0 picks a free one).
    #[arg(long, default_value_t = 8001)]
    grpc_port: u16,
    /// Serve no gRPC.
    #[arg(long)]
    no_grpc: bool,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 32 << 20, value_parser = positive)]
    max_body: usize,
    /// Compute threads (decode, preprocess, network); default: one per core.
    #[arg(long, value_parser = positive)]
    threads: Option<usize>,
    /// Network threads (the async runtime), apart from the compute threads.
    #[arg(long, default_value_t = 2, value_parser = positive)]
    network_threads: usize,
    /// Most tensors (images × TTA views) in one forward pass.
    #[arg(long, default_value_t = 16, value_parser = positive)]
    max_batch: usize,
    /// How long a request waits for others to share its forward pass, in microseconds
    /// (0: no dynamic batching beyond what is already queued).
    #[arg(long, default_value_t = 2000)]
    max_queue_delay_us: u64,
    /// Requests waiting per model beyond which new ones get 503 + Retry-After.
    #[arg(long, default_value_t = 256, value_parser = positive)]
    queue_capacity: usize,
    /// Seconds a client has to send its request headers.
    #[arg(long, default_value_t = 10, value_parser = positive)]
    header_timeout_s: usize,
    /// Refuse images whose width or height is below this many pixels (default: an eighth of the
    /// model's input size, as `classify`).
    #[arg(long)]
    min_size: Option<u32>,
    /// Refuse images whose header claims more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = kiln_preprocess::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
}

/// The name and the `classify`-style model arguments of one `--model` value.
fn model_entry(value: &str, device: &str, dtype: &str) -> (String, ModelArgs) {
    let (name, reference) = match value.split_once('=') {
        // `hf:owner/repo@rev` has no `=`; a name never contains `/` or `:`.
        Some((n, r)) if !n.is_empty() && !n.contains(['/', ':']) => (Some(n.to_string()), r),
        _ => (None, value),
    };
    let is_file = reference.ends_with(".safetensors") || Path::new(reference).is_file();
    let default_name = || {
        let p = Path::new(reference.trim_end_matches('/'));
        if is_file {
            p.file_stem()
        } else {
            p.file_name()
        }
        .map(|s| s.to_string_lossy().replace([':', '@'], "_"))
        .unwrap_or_else(|| reference.to_string())
    };
    let args = if is_file {
        ModelArgs::for_serve(None, Some(PathBuf::from(reference)), device, dtype)
    } else {
        ModelArgs::for_serve(Some(reference.to_string()), None, device, dtype)
    };
    (name.unwrap_or_else(default_name), args)
}

pub(crate) fn run(a: ServeArgs) -> Result<u8, Failure> {
    if let Some(n) = a.threads {
        kiln_serve::set_compute_threads(n).map_err(|e| Failure::Usage(e.into()))?;
    }
    let decode = DecodeOptions {
        min_side: a.min_size.unwrap_or(0),
        max_pixels: a.max_pixels,
        ..Default::default()
    };
    let mut models = vec![];
    for value in &a.models {
        let (name, args) = model_entry(value, &a.device, &a.dtype);
        let c = build_classifier(&args, &OverrideArgs::default(), decode)
            .map_err(|Failure::Usage(e)| Failure::Usage(e.context(format!("--model {value}"))))?;
        tracing::info!(model = %name, weights = %c.weights_path().display(), "loaded");
        models.push((name, c));
    }
    let config = kiln_serve::ServeConfig {
        host: a.host,
        port: a.port,
        grpc_port: (!a.no_grpc).then_some(a.grpc_port),
        max_body: a.max_body,
        batch: kiln_serve::BatchConfig {
            max_batch: a.max_batch,
            max_queue_delay: Duration::from_micros(a.max_queue_delay_us),
            queue_capacity: a.queue_capacity,
        },
        header_read_timeout: Duration::from_secs(a.header_timeout_s as u64),
    };
    kiln_serve::run_until_signal(config, models, a.network_threads).context("kiln serve")?;
    Ok(EXIT_OK)
}
