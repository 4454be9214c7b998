//! A rayon pool installed by the host program bounds kiln's threads (issue 13, point 5): run
//! inside `pool.install`, classifying starts no thread of its own (rayon's global pool is never
//! created). Alone in its test binary so that nothing else has created the global pool.

use image::RgbImage;
use kiln_runtime::Classifier;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn a_host_pool_bounds_kilns_threads() {
    let start = threads();
    let c = Classifier::builder().build().unwrap();
    let img = RgbImage::from_fn(300, 240, |x, y| {
        image::Rgb([x as u8, y as u8, (x ^ y) as u8])
    });
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    // Let the pool's workers start before counting.
    pool.broadcast(|_| ());
    let before = threads();
    // Loading the model started nothing either: only the pool's two workers are new.
    // candle starts one named helper thread of its own (`candle-bp-0`) when the weights are
    // loaded; apart from it only the pool's two workers are new (no rayon global pool).
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap())
        .collect();
    let candle = names.iter().filter(|n| n.starts_with("candle-")).count();
    assert!(candle <= 1, "{names:?}");
    assert_eq!(
        before - candle,
        start + 2,
        "threads started before classifying: {names:?}"
    );
    let out = pool.install(|| {
        assert_eq!(rayon::current_num_threads(), 2);
        c.logits(&[c.preprocess(&img)]).unwrap()
    });
    assert_eq!(out[0].len(), 1000);
    assert_eq!(
        threads(),
        before,
        "classifying inside the host pool started threads"
    );
}
