//! Argument parsing and the subcommands.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kiln_preprocess::{ChannelOrder, Interpolation, PixelScale, Preset, TrainingSpec};
use kiln_runtime::{parse_device, Classifier, Prediction, RuntimeError, SpecOverrides, WeightFile};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code when every image was classified.
const EXIT_OK: u8 = 0;
/// Exit code when at least one image failed.
const EXIT_SOME_FAILED: u8 = 1;
/// Exit code for usage, spec and model errors.
const EXIT_USAGE: u8 = 2;

/// File extensions taken from directories.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp"];

#[derive(Parser)]
#[command(name = "kiln", version, about = "Run image classifiers trained in PyTorch or TensorFlow, in pure Rust.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More logging on stderr (-v: per-image shapes and confidences, -vv: timings).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Classify images (files or directories) and print the top classes.
    Classify(ClassifyArgs),
    /// Convert a PyTorch checkpoint (.pth, zip or legacy format) to safetensors.
    Convert(ConvertArgs),
    /// Describe a weights file: architecture, parameters, dtype, embedded spec.
    Inspect(InspectArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// Architecture name (e.g. mobilenet_v2, resnet50); with no --weights, its shipped weights.
    #[arg(long)]
    model: Option<String>,
    /// A safetensors weights file.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// A training spec JSON file (must agree with any spec embedded in or beside the weights).
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Build the spec from a named convention when the weights carry none:
    /// torchvision-imagenet, keras-tf, keras-torch, keras-caffe, tf-efficientnet-lite.
    #[arg(long)]
    preset: Option<String>,
    /// Label file: one name per line, a JSON array, or a JSON {index: name} map.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// cpu, cuda[:N], metal[:N] or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct OverrideArgs {
    /// Override the spec's per-channel mean (three comma-separated values).
    #[arg(long, value_delimiter = ',', num_args = 3)]
    mean: Option<Vec<f32>>,
    /// Override the spec's per-channel std.
    #[arg(long, value_delimiter = ',', num_args = 3)]
    std: Option<Vec<f32>>,
    /// Override the resize (shorter side).
    #[arg(long)]
    resize: Option<u32>,
    /// Override the centre crop (square).
    #[arg(long)]
    crop: Option<u32>,
    /// Override the interpolation: nearest, bilinear, bicubic, lanczos.
    #[arg(long)]
    interpolation: Option<String>,
    /// Override the pixel scale: unit ([0,1]), symmetric ([-1,1]), raw (0..255).
    #[arg(long)]
    scale: Option<String>,
    /// Override the channel order: rgb or bgr.
    #[arg(long)]
    channel_order: Option<String>,
    /// Accept overrides that contradict the training spec (they usually cost accuracy).
    #[arg(long)]
    allow_spec_override: bool,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Human-readable table.
    Table,
    /// One JSON object per line.
    Jsonl,
}

#[derive(Args)]
struct ClassifyArgs {
    /// Image files or directories (searched recursively for image files).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Args)]
struct ConvertArgs {
    /// The PyTorch checkpoint.
    input: PathBuf,
    /// The safetensors file to write.
    output: PathBuf,
    /// A training spec to validate and embed.
    #[arg(long)]
    spec: Option<PathBuf>,
}

#[derive(Args)]
struct InspectArgs {
    /// A safetensors weights file.
    file: PathBuf,
}

/// A failure that maps to an exit code.
enum Failure {
    Usage(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Usage(e)
    }
}

impl From<RuntimeError> for Failure {
    fn from(e: RuntimeError) -> Self {
        Failure::Usage(e.into())
    }
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Classify(a) => classify(a),
        Command::Convert(a) => convert(a).map(|_| EXIT_OK),
        Command::Inspect(a) => inspect(a).map(|_| EXIT_OK),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info,kiln=debug,kiln_runtime=debug",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| level.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn parse_enum<T>(what: &str, v: &Option<String>, f: impl Fn(&str) -> Option<T>) -> Result<Option<T>> {
    v.as_deref()
        .map(|s| f(s).with_context(|| format!("unknown {what} `{s}`")))
        .transpose()
}

fn build_classifier(m: &ModelArgs, o: &OverrideArgs) -> Result<Classifier, Failure> {
    let device = parse_device(&m.device)?;
    let mut b = Classifier::builder().device(device);
    if let Some(x) = &m.model {
        b = b.model(x);
    }
    if let Some(x) = &m.weights {
        b = b.weights(x);
    }
    if let Some(x) = &m.spec {
        b = b.spec_file(x);
    }
    if let Some(x) = &m.labels {
        b = b.labels(x);
    }
    if let Some(p) = &m.preset {
        let preset = Preset::from_name(p).with_context(|| {
            format!(
                "unknown preset `{p}`; known: {}",
                Preset::ALL.map(|p| p.name()).join(", ")
            )
        })?;
        let weights = m.weights.as_ref().context("--preset needs --weights")?;
        let arch = m.model.as_ref().context("--preset needs --model")?;
        let rows = classifier_rows(weights, arch)?;
        b = b.spec(preset.spec(arch, rows), format!("preset {p}"));
    }
    let overrides = SpecOverrides {
        mean: o.mean.clone(),
        std: o.std.clone(),
        resize: o.resize,
        crop: o.crop,
        interpolation: parse_enum("interpolation", &o.interpolation, Interpolation::parse)?,
        scale: parse_enum("scale", &o.scale, |s| match s {
            "unit" => Some(PixelScale::Unit),
            "symmetric" => Some(PixelScale::Symmetric),
            "raw" => Some(PixelScale::Raw),
            _ => None,
        })?,
        channel_order: parse_enum("channel order", &o.channel_order, |s| match s.to_ascii_lowercase().as_str() {
            "rgb" => Some(ChannelOrder::Rgb),
            "bgr" => Some(ChannelOrder::Bgr),
            _ => None,
        })?,
    };
    if o.allow_spec_override && overrides != SpecOverrides::default() {
        tracing::warn!("preprocessing overrides that contradict the training spec are allowed; accuracy may suffer");
    }
    Ok(b.overrides(overrides, o.allow_spec_override).build()?)
}

fn classifier_rows(weights: &Path, arch: &str) -> Result<usize> {
    let entry = kiln_models::find(arch)?;
    let file = WeightFile::read(weights)?;
    let key = format!("{}.weight", entry.classifier);
    let shape = file
        .shape(&key)
        .with_context(|| format!("{} has no `{key}`", weights.display()))?;
    Ok(shape[0])
}

/// Expands directories (recursively, image extensions only, sorted); files are kept as given,
/// so that a bad file named on the command line is reported rather than skipped.
fn expand_paths(inputs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = vec![];
    for p in inputs {
        if p.is_dir() {
            let mut found = vec![];
            walk(p, &mut found);
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
        {
            out.push(p);
        }
    }
}

fn classify(a: ClassifyArgs) -> Result<u8, Failure> {
    let classifier = build_classifier(&a.model, &a.overrides)?;
    let paths = expand_paths(&a.paths);
    if paths.is_empty() {
        return Err(anyhow::anyhow!("no image files found in the given paths").into());
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0usize;
    for chunk in paths.chunks(a.batch_size.max(1) * 4) {
        let results = classifier.classify_paths(chunk, a.top_k, a.batch_size);
        for (path, r) in chunk.iter().zip(results) {
            if r.is_err() {
                failed += 1;
            }
            let written = match a.format {
                Format::Table => write_table(&mut out, path, &r),
                Format::Jsonl => write_jsonl(&mut out, path, &r),
            };
            if written.is_err() {
                // stdout closed (e.g. piped into `head`): nothing more to say.
                return Ok(if failed > 0 { EXIT_SOME_FAILED } else { EXIT_OK });
            }
        }
    }
    let _ = out.flush();
    if failed > 0 {
        eprintln!("{failed} of {} images could not be classified", paths.len());
        Ok(EXIT_SOME_FAILED)
    } else {
        Ok(EXIT_OK)
    }
}

fn write_table(out: &mut impl Write, path: &Path, r: &Result<Prediction, RuntimeError>) -> std::io::Result<()> {
    match r {
        Ok(p) => {
            writeln!(out, "{}", path.display())?;
            for (rank, c) in p.top.iter().enumerate() {
                writeln!(out, "  {:>2}. {:<40} {:>7.2}%  (class {})", rank + 1, c.label, c.prob * 100.0, c.index)?;
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {}", error_text(path, e));
            Ok(())
        }
    }
}

fn write_jsonl(out: &mut impl Write, path: &Path, r: &Result<Prediction, RuntimeError>) -> std::io::Result<()> {
    let v = match r {
        Ok(p) => json!({"path": path.display().to_string(), "top": p.top}),
        Err(e) => json!({"path": path.display().to_string(), "error": error_text(path, e)}),
    };
    writeln!(out, "{v}")
}

/// Input errors already start with the file name; others get it prefixed.
fn error_text(path: &Path, e: &RuntimeError) -> String {
    if e.is_input_error() {
        e.to_string()
    } else {
        format!("{}: {e}", path.display())
    }
}

fn convert(a: ConvertArgs) -> Result<(), Failure> {
    let spec = a
        .spec
        .as_deref()
        .map(TrainingSpec::from_file)
        .transpose()
        .map_err(RuntimeError::from)?;
    let report = kiln_runtime::convert_pth(&a.input, &a.output, spec.as_ref())?;
    println!(
        "{} ({:?} format) -> {}: {} tensors, {} parameters{}{}",
        a.input.display(),
        report.format,
        a.output.display(),
        report.tensors,
        report.parameters,
        if report.dropped.is_empty() {
            String::new()
        } else {
            format!(", dropped {} num_batches_tracked", report.dropped.len())
        },
        if spec.is_some() { ", spec embedded" } else { "" }
    );
    Ok(())
}

fn inspect(a: InspectArgs) -> Result<(), Failure> {
    let file = WeightFile::read(&a.file)?;
    let resolved = kiln_runtime::resolve_spec(&file, None)?;
    let mut dtypes: Vec<String> = file.tensors.iter().map(|t| format!("{:?}", t.2)).collect();
    dtypes.sort();
    dtypes.dedup();
    println!("file:          {}", a.file.display());
    match &resolved {
        Some((spec, origin, _)) => {
            let entry = kiln_models::find(&spec.architecture).ok();
            println!(
                "architecture:  {}{}",
                spec.architecture,
                entry.map(|e| format!(" (family {})", e.family)).unwrap_or_else(|| " (not registered)".into())
            );
            if !spec.arch_params.is_empty() {
                println!("arch params:   {}", serde_json::to_string(&spec.arch_params).unwrap_or_default());
            }
            println!("classes:       {}", spec.num_classes);
            println!("spec from:     {origin}");
        }
        None => println!("architecture:  unknown (no training spec embedded or beside the file)"),
    }
    println!("parameters:    {}", file.parameter_count());
    println!("tensors:       {}", file.tensors.len());
    println!("dtype:         {}", dtypes.join(", "));
    if let Some(src) = file.metadata.get("kiln.converted_from") {
        println!("converted from: {src}");
    }
    if let Some((spec, _, _)) = resolved {
        println!("spec:\n{}", spec.to_json());
    }
    Ok(())
}
