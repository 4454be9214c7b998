//! Times every distinct convolution of ResNet-50 on one thread, alone and cache-warm (medians
//! in ms and GMAC/s): for finding which layer shapes a kernel change helps or hurts. In a whole
//! network the weights come from memory, so expect those times to be 10–40% higher.
//!
//! `cargo run --release -p kiln-kernels --example r50_layers [BATCH]`; environment:
//! `BLOCKED=1` channel-blocked layout (what ResNet runs) instead of channels-last, `ONLY=i`
//! one layer (for `perf record`), `REPS=n` timed repetitions, `THREADS=n` (default 1), `COLD=1`
//! weights and input from memory (320 MB read between runs), `KILN_WINOGRAD=0` direct 3×3.
use kiln_kernels::{Activation, Conv2d, ConvShape};
use std::time::Instant;

fn vals(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 % 2003) as f32 / 1000.0) - 1.0)
        .collect()
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(1, |s| s.parse().unwrap());
    // (cin, cout, k, stride, hw, count, residual)
    let layers = [
        (3, 64, 7, 2, 224, 1, false),
        (64, 64, 1, 1, 56, 1, false),
        (64, 64, 3, 1, 56, 3, false),
        (64, 256, 1, 1, 56, 3, true),
        (256, 64, 1, 1, 56, 2, false),
        (256, 128, 1, 1, 56, 1, false),
        (128, 128, 3, 2, 56, 1, false),
        (128, 128, 3, 1, 28, 3, false),
        (128, 512, 1, 1, 28, 4, true),
        (512, 128, 1, 1, 28, 3, false),
        (256, 512, 1, 2, 56, 1, false),
        (512, 256, 1, 1, 28, 1, false),
        (256, 256, 3, 2, 28, 1, false),
        (256, 256, 3, 1, 14, 5, false),
        (256, 1024, 1, 1, 14, 6, true),
        (1024, 256, 1, 1, 14, 5, false),
        (512, 1024, 1, 2, 28, 1, false),
        (1024, 512, 1, 1, 14, 1, false),
        (512, 512, 3, 2, 14, 1, false),
        (512, 512, 3, 1, 7, 2, false),
        (512, 2048, 1, 1, 7, 3, true),
        (2048, 512, 1, 1, 7, 2, false),
        (1024, 2048, 1, 2, 14, 1, false),
    ];
    let blocked = std::env::var("BLOCKED").is_ok();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(
            std::env::var("THREADS")
                .ok()
                .map_or(1, |v| v.parse().unwrap()),
        )
        .build()
        .unwrap();
    let (mut total, mut macs_total) = (0.0, 0.0);
    // COLD=1: read 320 MB between runs, so that weights and input come from memory.
    let junk: Vec<f32> = if std::env::var("COLD").is_ok() {
        vec![1.0; 80_000_000]
    } else {
        Vec::new()
    };
    let only: Option<usize> = std::env::var("ONLY").ok().map(|v| v.parse().unwrap());
    let reps: usize = std::env::var("REPS")
        .ok()
        .map_or(15, |v| v.parse().unwrap());
    for (li, (cin, cout, k, s, hw, count, res)) in layers.into_iter().enumerate() {
        if only.is_some_and(|o| o != li) {
            continue;
        }
        let shape = ConvShape {
            cin,
            cout,
            kernel: k,
            stride: s,
            groups: 1,
            pad: [(k - 1) / 2; 4],
        };
        let conv = Conv2d::new(
            shape,
            &vals(cout * cin * k * k),
            Some(&vals(cout)),
            Activation::Relu,
        );
        let x = vals(n * cin * hw * hw);
        let (oh, ow) = shape.out_hw(hw, hw);
        let r = res.then(|| vals(n * oh * ow * cout));
        let mut ts = vec![];
        pool.install(|| {
            for _ in 0..3 {
                std::hint::black_box(if blocked {
                    conv.forward_blocked(&x, n, hw, hw, r.as_deref())
                } else {
                    conv.forward_nhwc(&x, n, hw, hw, r.as_deref())
                });
            }
            for _ in 0..reps {
                std::hint::black_box(junk.iter().sum::<f32>());
                let t = Instant::now();
                std::hint::black_box(if blocked {
                    conv.forward_blocked(&x, n, hw, hw, r.as_deref())
                } else {
                    conv.forward_nhwc(&x, n, hw, hw, r.as_deref())
                });
                ts.push(t.elapsed().as_secs_f64());
            }
        });
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let t = ts[ts.len() / 2];
        let macs = (n * oh * ow * cout * cin * k * k) as f64;
        total += t * count as f64;
        macs_total += macs * count as f64;
        println!(
            "{cin:5}->{cout:5} k{k} s{s} {hw:3}: {:7.3} ms x{count} {:6.1} GMAC/s",
            t * 1e3,
            macs / t / 1e9
        );
    }
    println!(
        "total {:.2} ms, {:.1} GMAC/s",
        total * 1e3,
        macs_total / total / 1e9
    );
}
