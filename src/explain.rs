//! `kiln explain`: class activation heatmaps, one PNG per image and class.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Args;
use kiln_preprocess::DecodeOptions;
use kiln_runtime::render::{npy_bytes, render};
use kiln_runtime::{ClassSelect, RuntimeError};

use crate::cli::{
    build_classifier, error_text, expand, Expanded, Failure, ModelArgs, OverrideArgs, TtaArg,
    EXIT_OK, EXIT_SOME_FAILED,
};

#[derive(Args)]
pub struct ExplainArgs {
    /// Image files, directories (searched recursively for image files) or glob patterns.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Explain this class (an index, or a label as the label file spells it; case is ignored
    /// when that is unambiguous) instead of the top ones. May be repeated.
    #[arg(long = "class", value_name = "INDEX|LABEL", conflicts_with = "top")]
    classes: Vec<String>,
    /// Explain the N most probable classes of each image.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = crate::cli::positive)]
    top: usize,
    /// Directory for the pictures (and --raw maps); created if missing.
    #[arg(short, long, default_value = ".")]
    out: PathBuf,
    /// Also write each map at feature resolution (e.g. 7×7) as float32 NumPy `.npy`.
    #[arg(long)]
    raw: bool,
    /// Test-time augmentation: only `none`; a map belongs to one view.
    #[arg(long, value_enum, default_value_t = TtaArg::None)]
    tta: TtaArg,
    /// Refuse images whose width or height is below this many pixels.
    #[arg(long, default_value_t = 1)]
    min_size: u32,
    /// Refuse images whose header claims more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = kiln_preprocess::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
}

pub fn run(a: ExplainArgs) -> Result<u8, Failure> {
    if a.tta != TtaArg::None {
        return Err(anyhow::anyhow!(
            "kiln explain takes --tta none only: a class activation map belongs to one view, and \
             averaging maps of flipped or shifted crops would put heat where no view saw it"
        )
        .into());
    }
    let decode = DecodeOptions {
        min_side: a.min_size,
        max_pixels: a.max_pixels,
        ..Default::default()
    };
    let classifier = build_classifier(&a.model, &a.overrides, decode)?;
    // Every class is resolved before any image is read: a typo is a usage error, not N
    // per-image failures.
    let select = if a.classes.is_empty() {
        ClassSelect::Top(a.top)
    } else {
        let idx = a
            .classes
            .iter()
            .map(|c| classifier.class_index(c))
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        ClassSelect::Classes(idx)
    };
    std::fs::create_dir_all(&a.out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", a.out.display()))?;

    let mut failed = 0usize;
    let mut done = 0usize;
    let mut stems: HashMap<String, usize> = HashMap::new();
    for input in &a.paths {
        for item in expand(input) {
            let path = match item {
                Expanded::Path(p) => p,
                Expanded::NoMatch(msg) => {
                    eprintln!("error: {msg}");
                    failed += 1;
                    continue;
                }
            };
            match explain_one(&classifier, &path, &select, &a, &mut stems) {
                Ok(lines) => {
                    done += 1;
                    for l in lines {
                        println!("{l}");
                    }
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("error: {e}");
                }
            }
        }
    }
    eprintln!("explained {done} image(s), {failed} failed");
    Ok(if failed > 0 {
        EXIT_SOME_FAILED
    } else {
        EXIT_OK
    })
}

/// A file name stem for `path` not used yet in this run (`photo`, then `photo-2`, ...), so two
/// inputs called `photo.jpg` in different directories do not overwrite each other.
fn unique_stem(path: &Path, stems: &mut HashMap<String, usize>) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let n = stems.entry(stem.clone()).or_insert(0);
    *n += 1;
    if *n == 1 {
        stem
    } else {
        format!("{stem}-{n}")
    }
}

/// Explains one file and writes its pictures; the lines to print, or the error naming the file.
fn explain_one(
    classifier: &kiln_runtime::Classifier,
    path: &Path,
    select: &ClassSelect,
    a: &ExplainArgs,
    stems: &mut HashMap<String, usize>,
) -> Result<Vec<String>, String> {
    let (e, photo) = classifier
        .explain_path(path, select, 5)
        .map_err(|e| error_text(path, &e))?;
    let stem = unique_stem(path, stems);
    let mut lines = vec![];
    for cam in &e.cams {
        let png = a.out.join(format!("{stem}.cam-{}.png", cam.class.index));
        render(&photo, cam)
            .save(&png)
            .map_err(|err| format!("{}: writing {}: {err}", path.display(), png.display()))?;
        let mut line = format!(
            "{}: {} {:.2}% (class {}, top-{}) -> {}",
            path.display(),
            cam.class.label,
            cam.class.prob * 100.0,
            cam.class.index,
            cam.rank,
            png.display()
        );
        if a.raw {
            let npy = a.out.join(format!("{stem}.cam-{}.npy", cam.class.index));
            std::fs::write(&npy, npy_bytes(&cam.raw))
                .map_err(|err| format!("{}: writing {}: {err}", path.display(), npy.display()))?;
            line.push_str(&format!(", {}", npy.display()));
        }
        lines.push(line);
    }
    Ok(lines)
}
