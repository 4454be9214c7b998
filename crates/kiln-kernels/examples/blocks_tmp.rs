use kiln_kernels::*;
use std::sync::Arc;
use std::time::Instant;
fn conv(cin: usize, cout: usize, k: usize, s: usize, g: usize, act: Activation) -> Arc<Conv2d> {
    let w: Vec<f32> = (0..cout * (cin / g) * k * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0)
        .collect();
    let b = vec![0.1f32; cout];
    let p = (k - 1) / 2;
    Arc::new(Conv2d::new(
        ConvShape {
            cin,
            cout,
            kernel: k,
            stride: s,
            groups: g,
            pad: [p; 4],
        },
        &w,
        Some(&b),
        act,
    ))
}
fn main() {
    let threads: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    // (cin, t, cout, stride, hw_in)
    let only: Option<usize> = std::env::args().nth(2).map(|v| v.parse().unwrap());
    let blocks = [
        (32, 1, 16, 1, 112),
        (16, 6, 24, 2, 112),
        (24, 6, 24, 1, 56),
        (24, 6, 32, 2, 56),
        (32, 6, 32, 1, 28),
        (32, 6, 64, 2, 28),
        (64, 6, 64, 1, 14),
        (64, 6, 96, 1, 14),
        (96, 6, 96, 1, 14),
        (96, 6, 160, 2, 14),
        (160, 6, 160, 1, 7),
        (160, 6, 320, 1, 7),
    ];
    let mut total = 0.0;
    for (bi, (cin, t, cout, s, hw)) in blocks.into_iter().enumerate() {
        if only.is_some_and(|o| o != bi) {
            continue;
        }
        let chid = cin * t;
        let e = (t != 1).then(|| conv(cin, chid, 1, 1, 1, Activation::Relu6));
        let b = InvertedResidual::new(
            e,
            conv(chid, chid, 3, s, chid, Activation::Relu6),
            conv(chid, cout, 1, 1, 1, Activation::None),
            s == 1 && cin == cout,
            DwPadding::Fixed,
        );
        let x: Vec<f32> = (0..cin * hw * hw).map(|i| (i % 13) as f32 * 0.1).collect();
        let us = pool.install(|| {
            team(|| {
                for _ in 0..20 {
                    std::hint::black_box(b.forward(&x, 1, hw, hw));
                }
                let t0 = Instant::now();
                for _ in 0..200 {
                    std::hint::black_box(b.forward(&x, 1, hw, hw));
                }
                t0.elapsed().as_secs_f64() * 1e6 / 200.0
            })
        });
        total += us;
        println!("{cin:4}x{t}->{cout:4} s{s} {hw:3}: {us:8.1} us");
    }
    println!("total {total:.1} us");
}
