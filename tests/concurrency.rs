//! One `Classifier` shared by 8 threads classifying 200 generated images of mixed sizes gives
//! logits bit-identical to a sequential run (issue 13, point 5).

use image::RgbImage;
use kiln_runtime::Classifier;

/// A deterministic image of `w × h` with a pattern that varies with `seed`.
pub fn image(seed: u32, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = x.wrapping_mul(31) ^ y.wrapping_mul(17) ^ seed.wrapping_mul(2654435761);
        image::Rgb([
            (v % 251) as u8,
            ((v >> 3) % 241) as u8,
            ((x + y + seed) % 256) as u8,
        ])
    })
}

#[test]
fn eight_threads_sharing_one_classifier_match_a_sequential_run() {
    let c = Classifier::builder().build().unwrap();
    let imgs: Vec<RgbImage> = (0..200u32)
        .map(|i| image(i, 64 + (i * 37) % 200, 64 + (i * 53) % 180))
        .collect();
    let run = |img: &RgbImage| -> Vec<u32> {
        let t = c.preprocess(img);
        c.logits(&[t]).unwrap()[0]
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    let sequential: Vec<Vec<u32>> = imgs.iter().map(run).collect();
    let mut parallel: Vec<Option<Vec<u32>>> = vec![None; imgs.len()];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (imgs, run) = (&imgs, &run);
                s.spawn(move || {
                    (t..imgs.len())
                        .step_by(8)
                        .map(|i| (i, run(&imgs[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, l) in h.join().unwrap() {
                parallel[i] = Some(l);
            }
        }
    });
    for (i, (a, b)) in sequential.iter().zip(&parallel).enumerate() {
        assert_eq!(Some(a), b.as_ref(), "image {i}: logits differ between runs");
    }
}
