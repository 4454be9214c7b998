//! Measures what each test-time augmentation mode does to top-1 accuracy on the shared ImageNet
//! sample, and what it costs per image, and prints the README table.
//!
//! ```sh
//! cargo run --release --example tta -- ../shared/imagenet-sample [LIMIT]
//! ```

use kiln_runtime::{Classifier, RunOptions, Tta};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "../shared/imagenet-sample".into()),
    );
    let limit: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(usize::MAX);
    let labels = std::fs::read_to_string(dir.join("labels.csv"))?;
    let rows: Vec<(PathBuf, usize)> = labels
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((dir.join(f.first()?), f.get(1)?.parse().ok()?))
        })
        .take(limit)
        .collect();
    let classifier = Classifier::builder().build()?;
    println!(
        "{} photos, model {}",
        rows.len(),
        classifier.spec().architecture
    );
    println!("| --tta | views | top-1 | change | ms / image |");
    println!("|---|---|---|---|---|");
    let mut base = None;
    for (name, tta) in [
        ("none", Tta::None),
        ("flip", Tta::Flip),
        ("five-crop", Tta::FiveCrop),
        ("ten-crop", Tta::TenCrop),
        ("multi-scale", Tta::MultiScale),
    ] {
        let opts = RunOptions {
            tta,
            top_k: 1,
            ..Default::default()
        };
        let started = Instant::now();
        let mut correct = 0;
        let paths = rows.iter().map(|r| r.0.clone());
        classifier.classify_stream(paths, &opts, |o| {
            if let Ok(c) = o.result {
                correct += (c.prediction.top[0].index == rows[o.index].1) as usize;
            }
        });
        let ms = started.elapsed().as_secs_f64() * 1e3 / rows.len() as f64;
        let acc = correct as f64 / rows.len() as f64 * 100.0;
        let b = *base.get_or_insert(acc);
        println!(
            "| {name} | {} | {acc:.1}% | {:+.1} | {ms:.0} |",
            tta.views(),
            acc - b
        );
    }
    Ok(())
}
