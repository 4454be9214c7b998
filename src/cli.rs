//! Argument parsing and the subcommands.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kiln_preprocess::hubspec::HfBackend;
use kiln_preprocess::{ChannelOrder, Interpolation, PixelScale, Preset, TrainingSpec};
use kiln_preprocess::{DecodeOptions, Tta};
use kiln_runtime::{
    parse_device, Classifier, Outcome, RunOptions, RuntimeError, SpecOverrides, WeightFile,
};
use serde_json::json;
use std::io::IsTerminal;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Exit code when every image was classified.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit code when at least one image failed.
pub(crate) const EXIT_SOME_FAILED: u8 = 1;
/// Exit code for usage, spec and model errors.
const EXIT_USAGE: u8 = 2;

/// File extensions taken from directories.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp"];

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Run image classifiers trained in PyTorch or TensorFlow, in pure Rust."
)]
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
    Classify(Box<ClassifyArgs>),
    /// Convert a PyTorch checkpoint (.pth, zip or legacy format) to safetensors.
    Convert(ConvertArgs),
    /// Describe a weights file or hub model: architecture, parameters, dtype, origin, spec.
    Inspect(InspectArgs),
    /// Convert a hub config (timm config.json, Hugging Face preprocessor_config.json) to a kiln spec.
    Spec(SpecArgs),
    /// List the devices this build can run on: the CPU (model, cores, kernel instruction set,
    /// caches), CUDA and Metal devices when compiled in and present.
    Devices(crate::devices::DevicesArgs),
    /// Time forward passes on synthetic input: latency percentiles and images/s.
    Bench(crate::bench::BenchArgs),
    /// Show where the network looked: class activation heatmaps over each photo, as PNG.
    Explain(Box<crate::explain::ExplainArgs>),
    /// Write the pixels kiln decoded from an image (after EXIF orientation) as a PNG.
    Decode(DecodeArgs),
    /// Write the exact tensor fed to the network for an image (safetensors, spec in the
    /// metadata), and a PNG preview of the resized and cropped pixels beside it.
    Preprocess(Box<PreprocessArgs>),
    /// Serve models over the Open Inference Protocol v2 (REST + gRPC) and POST /v1/classify.
    Serve(Box<crate::serve::ServeArgs>),
}

#[derive(Args)]
struct DecodeArgs {
    /// The image.
    input: PathBuf,
    /// The PNG to write.
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Args)]
struct PreprocessArgs {
    /// The image.
    input: PathBuf,
    /// The safetensors file to write (tensor `input`, `[1, 3, H, W]` or as the spec's layout
    /// says); the preview goes to the same path with the extension `.png`.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    overrides: OverrideArgs,
}

#[derive(Args)]
pub(crate) struct ModelArgs {
    /// Architecture name (e.g. mobilenet_v2, resnet50; with no --weights, its shipped weights),
    /// or a hub model `hf:OWNER/REPO[@REVISION]` (downloaded through the Hugging Face cache;
    /// HF_HOME, HF_ENDPOINT, HF_HUB_OFFLINE apply; KILN_HUB_TIMEOUT: seconds without data before
    /// a download fails, default 60), or a local directory laid out as a hub
    /// repo (`./DIR` or `hf-dir:DIR`: config.json [+ preprocessor_config.json] + model.safetensors).
    #[arg(long)]
    model: Option<String>,
    /// For transformers models: which image-processor backend the model was trained with,
    /// `pil` or `torchvision` (default: the model's own, from its configs).
    #[arg(long, value_name = "pil|torchvision")]
    hf_backend: Option<String>,
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
    /// Compute dtype of weights and activations: f32, or f16 / bf16 on a GPU (the CPU computes
    /// in f32 only and refuses the others).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
}

#[derive(Args, Default)]
pub(crate) struct OverrideArgs {
    /// Override the spec's per-channel mean (three comma-separated values).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    mean: Option<Vec<f32>>,
    /// Override the spec's per-channel std.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
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

impl ModelArgs {
    /// One model of `kiln serve`: a `--model` reference or a weights file, on `device`.
    pub(crate) fn for_serve(
        model: Option<String>,
        weights: Option<PathBuf>,
        device: &str,
        dtype: &str,
    ) -> Self {
        Self {
            model,
            hf_backend: None,
            weights,
            spec: None,
            preset: None,
            labels: None,
            device: device.to_string(),
            dtype: dtype.to_string(),
        }
    }
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Human-readable table.
    Table,
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values, one row per image and rank.
    Csv,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub(crate) enum TtaArg {
    /// The spec's centre view only.
    None,
    /// Centre view and its mirror.
    Flip,
    /// Four corners and the centre.
    FiveCrop,
    /// Five crops and their mirrors.
    TenCrop,
    /// Resize at x0.875, x1, x1.25 of the spec's size.
    MultiScale,
}

impl From<TtaArg> for Tta {
    fn from(t: TtaArg) -> Self {
        match t {
            TtaArg::None => Tta::None,
            TtaArg::Flip => Tta::Flip,
            TtaArg::FiveCrop => Tta::FiveCrop,
            TtaArg::TenCrop => Tta::TenCrop,
            TtaArg::MultiScale => Tta::MultiScale,
        }
    }
}

#[derive(Args)]
struct ClassifyArgs {
    /// Image files, directories (searched recursively for image files, sorted), glob patterns
    /// such as 'photos/*.jpg', or `-` to read one path per line from stdin.
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
    #[arg(long, default_value_t = kiln_runtime::DEFAULT_BATCH_SIZE, value_parser = positive)]
    batch_size: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Test-time augmentation; probabilities of the views are averaged.
    #[arg(long, value_enum, default_value_t = TtaArg::None)]
    tta: TtaArg,
    /// Mark a result "uncertain" when its top-1 probability is below P (0..1).
    #[arg(long, value_name = "P")]
    threshold: Option<f32>,
    /// Refuse images whose width or height is below this many pixels [default: an eighth of the
    /// spec's input size, e.g. 28 for 224×224 models, 4 for 32×32].
    #[arg(long)]
    min_size: Option<u32>,
    /// Refuse images whose header claims more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = kiln_preprocess::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// No progress bar and no summary.
    #[arg(short, long)]
    quiet: bool,
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
    /// Remove this prefix from every key that has it (e.g. `backbone.`) instead of the
    /// wrapper prefix kiln detects.
    #[arg(long, value_name = "PREFIX")]
    strip_prefix: Option<String>,
}

#[derive(Args)]
struct InspectArgs {
    /// A safetensors weights file, a hub model `hf:OWNER/REPO[@REVISION]`, or a local model
    /// directory (`DIR` or `hf-dir:DIR`).
    file: PathBuf,
    /// For transformers models: `pil` or `torchvision` (default: the model's own).
    #[arg(long, value_name = "pil|torchvision")]
    hf_backend: Option<String>,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum HubFormatArg {
    /// timm's config.json (pretrained_cfg).
    Timm,
    /// Hugging Face preprocessor_config.json (+ config.json beside it).
    Hf,
}

#[derive(Args)]
struct SpecArgs {
    /// Which hub's conventions FILE follows.
    #[arg(long)]
    from: HubFormatArg,
    /// The config file (or, for hf, the directory holding both config files).
    file: PathBuf,
    /// For hf: the image-processor backend, `pil` or `torchvision` (default: the model's own).
    #[arg(long, value_name = "pil|torchvision")]
    hf_backend: Option<String>,
    /// Write the spec here instead of stdout.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Also write the config's class names here, one per line.
    #[arg(long)]
    labels_out: Option<PathBuf>,
}

/// A failure that maps to an exit code.
pub(crate) enum Failure {
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
    // A server's access log is info-level: shown unless asked otherwise.
    init_logging(
        cli.verbose
            .max(u8::from(matches!(cli.command, Command::Serve(_)))),
    );
    let result = match cli.command {
        Command::Classify(a) => classify(*a),
        Command::Convert(a) => convert(a).map(|_| EXIT_OK),
        Command::Inspect(a) => inspect(a).map(|_| EXIT_OK),
        Command::Spec(a) => spec_from_hub(a).map(|_| EXIT_OK),
        Command::Explain(a) => crate::explain::run(*a),
        Command::Decode(a) => decode_cmd(a).map(|_| EXIT_OK),
        Command::Preprocess(a) => preprocess_cmd(*a).map(|_| EXIT_OK),
        Command::Devices(a) => crate::devices::run(a)
            .map(|_| EXIT_OK)
            .map_err(Failure::Usage),
        Command::Serve(a) => crate::serve::run(*a),
        Command::Bench(a) => crate::bench::run(a)
            .map(|_| EXIT_OK)
            .map_err(Failure::Usage),
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
        _ => "info,kiln=trace,kiln_runtime=trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| level.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn parse_enum<T>(
    what: &str,
    v: &Option<String>,
    f: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>> {
    v.as_deref()
        .map(|s| f(s).with_context(|| format!("unknown {what} `{s}`")))
        .transpose()
}

pub(crate) fn build_classifier(
    m: &ModelArgs,
    o: &OverrideArgs,
    decode: DecodeOptions,
) -> Result<Classifier, Failure> {
    let device = parse_device(&m.device)?;
    let dtype = kiln_runtime::bench::parse_dtype(&m.dtype)?;
    kiln_runtime::check_dtype(&device, dtype)?;
    let mut b = Classifier::builder()
        .device(device)
        .dtype(dtype)
        .decode_options(decode);
    let backend = parse_enum("hf backend", &m.hf_backend, HfBackend::parse)?;
    if let Some(x) = &m.model {
        let dir = kiln_runtime::hub::local_dir_ref(x);
        if kiln_runtime::hub::is_hub_ref(x) || dir.is_some() {
            if m.weights.is_some() || m.preset.is_some() {
                return Err(anyhow::anyhow!(
                    "--model {x} brings its own weights and spec; drop --weights/--preset"
                )
                .into());
            }
            b = resolve_model(x, backend)?.apply_to(b);
        } else {
            b = b.model(x);
        }
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
        channel_order: parse_enum("channel order", &o.channel_order, |s| {
            match s.to_ascii_lowercase().as_str() {
                "rgb" => Some(ChannelOrder::Rgb),
                "bgr" => Some(ChannelOrder::Bgr),
                _ => None,
            }
        })?,
    };
    if o.allow_spec_override && overrides != SpecOverrides::default() {
        tracing::warn!("preprocessing overrides that contradict the training spec are allowed; accuracy may suffer");
    }
    Ok(b.overrides(overrides, o.allow_spec_override).build()?)
}

/// A hub reference or a local model directory, with the transformers backend if given.
fn resolve_model(reference: &str, backend: Option<HfBackend>) -> Result<kiln_runtime::HubModel> {
    let mut opts = kiln_runtime::HubOptions::from_env();
    opts.progress = std::io::stderr().is_terminal();
    if let Some(dir) = kiln_runtime::hub::local_dir_ref(reference) {
        return Ok(kiln_runtime::hub::resolve_dir(&dir, &opts, backend)?);
    }
    let r = kiln_runtime::HubRef::parse(reference)?;
    let model = kiln_runtime::hub::resolve_ref_with(&r, &opts, backend)?;
    for f in &model.downloaded {
        tracing::info!(file = %f, "downloaded from {reference}");
    }
    Ok(model)
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

pub(crate) fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive whole number")),
    }
}

/// One input as the user gave it, expanded: paths to classify, or a pattern that matched nothing.
pub(crate) enum Expanded {
    Path(PathBuf),
    NoMatch(String),
}

/// Expands directories (recursively, image extensions only, sorted) and glob patterns (sorted).
/// Plain files are kept as given, so a bad file named on the command line is reported rather
/// than skipped. `-` is handled by the caller (stdin).
pub(crate) fn expand(input: &Path) -> Vec<Expanded> {
    if input.is_dir() {
        let mut found = vec![];
        walk(input, &mut found);
        found.sort();
        return found.into_iter().map(Expanded::Path).collect();
    }
    let text = input.to_string_lossy();
    if !input.exists() && text.contains(['*', '?', '[']) {
        let mut found: Vec<PathBuf> = match glob::glob(&text) {
            Ok(paths) => paths
                .filter_map(|p| p.ok())
                .filter(|p| !p.is_dir())
                .collect(),
            Err(e) => return vec![Expanded::NoMatch(format!("{text}: bad pattern: {e}"))],
        };
        found.sort();
        if found.is_empty() {
            return vec![Expanded::NoMatch(format!(
                "{text}: no file matches this pattern"
            ))];
        }
        return found.into_iter().map(Expanded::Path).collect();
    }
    vec![Expanded::Path(input.to_path_buf())]
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
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
    if let Some(t) = a.threshold {
        if !(0.0..=1.0).contains(&t) {
            return Err(
                anyhow::anyhow!("--threshold {t} is not a probability between 0 and 1").into(),
            );
        }
    }
    let decode = DecodeOptions {
        // 0: the classifier derives it from the spec's input size.
        min_side: a.min_size.unwrap_or(0),
        max_pixels: a.max_pixels,
        ..Default::default()
    };
    let classifier = build_classifier(&a.model, &a.overrides, decode)?;
    let opts = RunOptions {
        top_k: a.top_k,
        batch_size: a.batch_size,
        tta: a.tta.into(),
        threshold: a.threshold,
    };

    let mut failed = 0usize;
    let mut paths = vec![];
    let use_stdin = a.paths.iter().any(|p| p.as_os_str() == "-");
    for p in a.paths.iter().filter(|p| p.as_os_str() != "-") {
        for e in expand(p) {
            match e {
                Expanded::Path(p) => paths.push(p),
                Expanded::NoMatch(msg) => {
                    eprintln!("error: {msg}");
                    failed += 1;
                }
            }
        }
    }
    // Paths from stdin are streamed, not collected: the run starts before stdin ends.
    let stdin_paths = use_stdin
        .then(|| {
            let stdin = std::io::stdin();
            std::iter::from_fn(move || {
                let mut line = String::new();
                match stdin.read_line(&mut line) {
                    Ok(0) | Err(_) => None,
                    Ok(_) => Some(line),
                }
            })
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
        })
        .into_iter()
        .flatten();
    let known = (!use_stdin).then_some(paths.len() as u64);
    if known == Some(0) {
        if failed > 0 {
            // Every input was a pattern that matched nothing; each was reported above.
            return Ok(EXIT_SOME_FAILED);
        }
        return Err(anyhow::anyhow!("no image files found in the given paths").into());
    }

    let progress = progress_bar(known, a.quiet);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.format == Format::Csv {
        let _ = writeln!(out, "path,rank,index,label,prob,uncertain,error");
    }
    let started = Instant::now();
    let (mut total, mut broken_pipe) = (0usize, false);
    classifier.classify_stream(paths.into_iter().chain(stdin_paths), &opts, |o: Outcome| {
        total += 1;
        if o.result.is_err() {
            failed += 1;
        }
        if let Some(pb) = &progress {
            pb.inc(1);
        }
        if broken_pipe {
            return;
        }
        let written = match a.format {
            Format::Table => write_table(&mut out, &o, progress.as_ref()),
            Format::Jsonl => write_jsonl(&mut out, &o),
            Format::Csv => write_csv(&mut out, &o),
        };
        // stdout closed (e.g. piped into `head`): stop printing, keep counting.
        broken_pipe = written.is_err();
    });
    let _ = out.flush();
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    if !a.quiet {
        eprintln!(
            "{} images, {} classified, {} failed, {:.2} s, {:.1} images/s",
            total,
            total - failed.min(total),
            failed,
            secs,
            total as f64 / secs.max(1e-9)
        );
    }
    if total == 0 && failed == 0 {
        return Err(anyhow::anyhow!("no image paths were given on stdin").into());
    }
    Ok(if failed > 0 {
        EXIT_SOME_FAILED
    } else {
        EXIT_OK
    })
}

/// A progress bar on stderr, only for a terminal and more than one image.
fn progress_bar(len: Option<u64>, quiet: bool) -> Option<indicatif::ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() || len.is_some_and(|n| n <= 1) {
        return None;
    }
    let pb = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::no_length(),
    };
    pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} images  {per_sec}  ETA {eta}  {elapsed_precise}",
    )
    .expect("valid template");
    pb.set_style(style);
    Some(pb)
}

fn write_table(
    out: &mut impl Write,
    o: &Outcome,
    pb: Option<&indicatif::ProgressBar>,
) -> std::io::Result<()> {
    match &o.result {
        Ok(c) => {
            let p = &c.prediction;
            if p.uncertain {
                writeln!(
                    out,
                    "{}: uncertain (best guess {} at {:.2}% is below the threshold)",
                    o.path.display(),
                    p.top[0].label,
                    p.top[0].prob * 100.0
                )?;
            } else {
                writeln!(out, "{}", o.path.display())?;
            }
            for (rank, c) in p.top.iter().enumerate() {
                writeln!(
                    out,
                    "  {:>2}. {:<40} {:>7.2}%  (class {})",
                    rank + 1,
                    c.label,
                    c.prob * 100.0,
                    c.index
                )?;
            }
            Ok(())
        }
        Err(e) => {
            let msg = format!("error: {}", error_text(&o.path, e));
            match pb {
                Some(pb) => pb.suspend(|| eprintln!("{msg}")),
                None => eprintln!("{msg}"),
            }
            Ok(())
        }
    }
}

fn write_jsonl(out: &mut impl Write, o: &Outcome) -> std::io::Result<()> {
    let path = o.path.display().to_string();
    let v = match &o.result {
        Ok(c) => {
            json!({"path": path, "top": c.prediction.top, "uncertain": c.prediction.uncertain})
        }
        Err(e) => json!({"path": path, "error": error_text(&o.path, e)}),
    };
    writeln!(out, "{v}")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_csv(out: &mut impl Write, o: &Outcome) -> std::io::Result<()> {
    let path = csv_field(&o.path.display().to_string());
    match &o.result {
        Ok(c) => {
            for (rank, s) in c.prediction.top.iter().enumerate() {
                writeln!(
                    out,
                    "{path},{},{},{},{:.6},{},",
                    rank + 1,
                    s.index,
                    csv_field(&s.label),
                    s.prob,
                    c.prediction.uncertain
                )?;
            }
            Ok(())
        }
        Err(e) => writeln!(out, "{path},,,,,,{}", csv_field(&error_text(&o.path, e))),
    }
}

/// Input errors already start with the file name; others get it prefixed.
pub(crate) fn error_text(path: &Path, e: &RuntimeError) -> String {
    if e.is_input_error() {
        e.to_string()
    } else {
        format!("{}: {e}", path.display())
    }
}

/// Appends a line to a `String` (writing to a `String` cannot fail).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Prints to stdout, ignoring a closed pipe (`kiln inspect f | head`) instead of panicking.
fn print_out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn spec_from_hub(a: SpecArgs) -> Result<(), Failure> {
    let format = match a.from {
        HubFormatArg::Timm => kiln_preprocess::hubspec::HubFormat::Timm,
        HubFormatArg::Hf => kiln_preprocess::hubspec::HubFormat::Transformers,
    };
    let backend = parse_enum("hf backend", &a.hf_backend, HfBackend::parse)?;
    let hub = kiln_preprocess::hubspec::spec_from_hub_files_with(format, &a.file, backend)
        .map_err(RuntimeError::from)?;
    let json = hub.spec.to_json() + "\n";
    match &a.out {
        Some(p) => std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?,
        None => print_out(&json),
    }
    if let Some(p) = &a.labels_out {
        let names = hub
            .labels
            .as_ref()
            .with_context(|| format!("{} names no classes", a.file.display()))?;
        std::fs::write(p, names.join("\n") + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn decode_cmd(a: DecodeArgs) -> Result<(), Failure> {
    let img = kiln_preprocess::decode_file(&a.input, &DecodeOptions::default())
        .map_err(|e| anyhow::anyhow!(e))?;
    if a.output.extension().and_then(|e| e.to_str()) != Some("png") {
        return Err(
            anyhow::anyhow!("{}: the output must be a .png file", a.output.display()).into(),
        );
    }
    img.rgb
        .save(&a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    let mut out = String::new();
    outln!(
        out,
        "{} -> {}: {}x{} RGB",
        a.input.display(),
        a.output.display(),
        img.rgb.width(),
        img.rgb.height()
    );
    print_out(&out);
    Ok(())
}

fn preprocess_cmd(a: PreprocessArgs) -> Result<(), Failure> {
    let classifier = build_classifier(&a.model, &a.overrides, DecodeOptions::default())?;
    let spec = classifier.spec().clone();
    let img = kiln_preprocess::decode_file(&a.input, &DecodeOptions::default())
        .map_err(|e| anyhow::anyhow!(e))?;
    let geo = kiln_preprocess::transform::geometry(&img.rgb, &spec);
    let t = kiln_preprocess::transform::to_tensor(&geo, &spec);
    let mut meta = std::collections::HashMap::new();
    meta.insert(
        kiln_preprocess::SPEC_METADATA_KEY.to_string(),
        spec.to_json(),
    );
    meta.insert("kiln.source".to_string(), a.input.display().to_string());
    let mut shape = vec![1];
    shape.extend(t.shape);
    kiln_runtime::write_f32_tensor(&a.output, "input", shape.clone(), &t.data, &meta)?;
    let preview = a.output.with_extension("png");
    geo.save(&preview)
        .with_context(|| format!("writing {}", preview.display()))?;
    let mut out = String::new();
    outln!(
        out,
        "{} -> {}: tensor `input` {:?} (preview {})",
        a.input.display(),
        a.output.display(),
        shape,
        preview.display()
    );
    print_out(&out);
    Ok(())
}

fn convert(a: ConvertArgs) -> Result<(), Failure> {
    let mut out = String::new();
    let spec = a
        .spec
        .as_deref()
        .map(TrainingSpec::from_file)
        .transpose()
        .map_err(RuntimeError::from)?;
    let report = kiln_runtime::convert_pth_with(
        &a.input,
        &a.output,
        spec.as_ref(),
        a.strip_prefix.as_deref(),
    )?;
    if let Some(k) = &report.dict_key {
        outln!(out, "weights taken from the checkpoint's `{k}` dict");
    }
    if !report.other_dict_keys.is_empty() {
        outln!(
            out,
            "also present, not used: {} (kiln prefers the model's own weights to EMA ones)",
            report.other_dict_keys.join(", ")
        );
    }
    if let Some(p) = &report.stripped_prefix {
        outln!(out, "stripped the wrapper prefix `{p}` from every key");
    }
    outln!(
        out,
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
        if spec.is_some() {
            ", spec embedded"
        } else {
            ""
        }
    );
    print_out(&out);
    Ok(())
}

fn inspect(a: InspectArgs) -> Result<(), Failure> {
    let mut out = String::new();
    let arg = a.file.to_string_lossy().to_string();
    let backend = parse_enum("hf backend", &a.hf_backend, HfBackend::parse)?;
    let is_dir = kiln_runtime::hub::local_dir_ref(&arg).is_some() || a.file.is_dir();
    let (file, resolved) = if kiln_runtime::hub::is_hub_ref(&arg) || is_dir {
        let reference = if is_dir && !arg.starts_with(kiln_runtime::hub::DIR_PREFIX) {
            format!("{}{arg}", kiln_runtime::hub::DIR_PREFIX)
        } else {
            arg.clone()
        };
        let hub = resolve_model(&reference, backend)?;
        outln!(
            out,
            "model:         {arg} ({:?} conventions, hub architecture {})",
            hub.format,
            hub.hub_architecture
        );
        outln!(out, "commit:        {}", hub.commit);
        let file = WeightFile::read(&hub.weights_path)?;
        let spec = (
            hub.spec.clone(),
            kiln_runtime::SpecOrigin::Given(hub.origin.clone()),
            PathBuf::new(),
        );
        (file, Some(spec))
    } else {
        let file = WeightFile::read(&a.file)?;
        let resolved = kiln_runtime::resolve_spec(&file, None)?;
        (file, resolved)
    };
    let mut dtypes: Vec<String> = file.tensors.iter().map(|t| format!("{:?}", t.2)).collect();
    dtypes.sort();
    dtypes.dedup();
    outln!(out, "file:          {}", a.file.display());
    match &resolved {
        Some((spec, origin, _)) => {
            let entry = kiln_models::find(&spec.architecture).ok();
            outln!(
                out,
                "architecture:  {}{}",
                spec.architecture,
                entry
                    .map(|e| format!(" (family {})", e.family))
                    .unwrap_or_else(|| " (not registered)".into())
            );
            if !spec.arch_params.is_empty() {
                outln!(
                    out,
                    "arch params:   {}",
                    serde_json::to_string(&spec.arch_params).unwrap_or_default()
                );
            }
            outln!(out, "classes:       {}", spec.num_classes);
            outln!(out, "spec from:     {origin}");
        }
        None => outln!(
            out,
            "architecture:  unknown (no training spec embedded or beside the file)"
        ),
    }
    outln!(out, "parameters:    {}", file.parameter_count());
    outln!(out, "tensors:       {}", file.tensors.len());
    outln!(out, "dtype:         {}", dtypes.join(", "));
    if let Some(src) = file.metadata.get("kiln.converted_from") {
        outln!(out, "converted from: {src}");
    }
    if let Some((spec, _, _)) = resolved {
        outln!(out, "spec:\n{}", spec.to_json());
    }
    print_out(&out);
    Ok(())
}
