//! Decoding the 500 shared ImageNet photos: kiln's libjpeg-turbo-exact decoder against zune-jpeg
//! (through `image`, the decoder kiln used before), in the same run, one thread.
//!
//! `cargo bench -p kiln-preprocess --bench jpeg` (needs `../shared` or `$KILN_SHARED`).

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::PathBuf;

fn photos() -> Vec<Vec<u8>> {
    let dir = std::env::var_os("KILN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
        .join("imagenet-sample");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "JPEG"))
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

fn bench(c: &mut Criterion) {
    let photos = photos();
    assert_eq!(photos.len(), 500);
    let mut g = c.benchmark_group("decode_500_photos");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(15));
    g.bench_function("kiln", |b| {
        b.iter(|| {
            for p in &photos {
                let img = kiln_preprocess::jpeg::decode(p).unwrap();
                std::hint::black_box(img.into_rgb());
            }
        })
    });
    g.bench_function("zune_via_image", |b| {
        b.iter(|| {
            for p in &photos {
                let img = image::load_from_memory_with_format(p, image::ImageFormat::Jpeg).unwrap();
                std::hint::black_box(img.into_rgb8());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
