//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the repository (or `$KILN_SHARED`), which CI provides.
pub fn shared() -> PathBuf {
    let p = std::env::var_os("KILN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared"));
    assert!(
        p.join("imagenet-sample/labels.csv").exists(),
        "shared data not found at {} (set KILN_SHARED)",
        p.display()
    );
    p
}

/// One row of a PyTorch reference CSV.
pub struct Reference {
    pub file: String,
    pub class_index: usize,
    pub top5: Vec<usize>,
    pub top5_prob: Vec<f32>,
}

/// Reads `../shared/reference/imagenet-sample.NAME.csv`.
pub fn read_reference(name: &str) -> Vec<Reference> {
    let path = shared().join(format!("reference/imagenet-sample.{name}.csv"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Reference {
                file: f[0].to_string(),
                class_index: f[1].parse().unwrap(),
                top5: f[2].split(' ').map(|x| x.parse().unwrap()).collect(),
                top5_prob: f[3].split(' ').map(|x| x.parse().unwrap()).collect(),
            }
        })
        .collect()
}

/// The shipped weights file of `name`.
pub fn shipped(name: &str) -> PathBuf {
    repo().join("weights").join(format!("{name}.safetensors"))
}

/// The built `kiln` binary.
pub fn kiln_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kiln"))
}
