//! Development aid: decodes the 500 shared photos `N` times on one thread and prints the time
//! per pass, for profiling the JPEG decoder (`perf record`) and for timing it against zune-jpeg
//! in separate, interleaved processes (`ENGINE` = `kiln` (default) or `zune`, through `image`).
//!
//! `cargo run --release -p kiln-preprocess --example jpeg_time -- [N] [DIR] [ENGINE]`

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1);
    let dir = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "../shared/imagenet-sample".into());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "JPEG"))
        .collect();
    files.sort();
    let photos: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let zune = args.get(3).is_some_and(|e| e == "zune");
    let t = std::time::Instant::now();
    let mut sum = 0u64;
    for _ in 0..n {
        for p in &photos {
            let data = if zune {
                image::load_from_memory_with_format(p, image::ImageFormat::Jpeg)
                    .unwrap()
                    .into_rgb8()
                    .into_raw()
            } else {
                kiln_preprocess::jpeg::decode(p).unwrap().into_rgb()
            };
            sum += data[data.len() / 2] as u64;
        }
    }
    println!(
        "{} {} photos x {n}: {:.3} s per pass (checksum {sum})",
        if zune { "zune" } else { "kiln" },
        photos.len(),
        t.elapsed().as_secs_f64() / n as f64
    );
}
