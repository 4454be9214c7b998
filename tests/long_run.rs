//! Bounded memory on long runs (issue 13, point 4): classifying generated images of mixed sizes
//! keeps peak RSS flat — the peak (VmHWM) after all images stays under 1.5× the peak after the
//! first 100. CI runs 600 images (`KILN_LONG_RUN=5000` for the full count).

use image::RgbImage;
use kiln_runtime::Classifier;

/// A `/proc/self/status` field in kB.
fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn peak_memory_stays_flat_over_many_images() {
    let n: u32 = std::env::var("KILN_LONG_RUN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let c = Classifier::builder().build().unwrap();
    let mut after_100 = 0;
    for i in 0..n {
        // Sizes cycle through 40 widths and 30 heights from 48 to ~640 pixels.
        let (w, h) = (48 + (i * 37) % 600, 48 + (i * 53) % 560);
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x ^ i) as u8, (y + i) as u8, (x * y) as u8])
        });
        let l = c.logits(&[c.preprocess(&img)]).unwrap();
        assert_eq!(l[0].len(), 1000);
        if i == 99 {
            after_100 = status_kb("VmHWM:");
        }
    }
    let (peak, rss) = (status_kb("VmHWM:"), status_kb("VmRSS:"));
    eprintln!("images {n}: VmHWM after 100 {after_100} kB, after all {peak} kB, VmRSS {rss} kB");
    assert!(
        peak * 2 < after_100 * 3,
        "peak RSS grew from {after_100} kB to {peak} kB over {n} images"
    );
}
