//! Benchmarks of the hot kernels at the shapes MobileNetV2 and ResNet-50 run them with (batch 1,
//! 224×224 input): the channels-first reference kernels (`conv2d/*`), the channels-last
//! convolutions (`conv2d_nhwc/*`, MobileNetV2's stem), the channel-blocked ones ResNet runs
//! (`conv2d_blocked/*`; 3×3 stride-1 layers there take Winograd — run with
//! `KILN_WINOGRAD=0` for the direct kernel) and MobileNetV2's fused blocks (`block/*`).
//! Throughput is in the direct convolution's multiply-adds.
//! `cargo bench -p kiln-kernels --bench kernels`; set `RAYON_NUM_THREADS` to fix the thread
//! count.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_kernels::{Activation, Conv2d, ConvShape, DwPadding, InvertedResidual};
use std::hint::black_box;
use std::sync::Arc;

fn vals(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 % 2003) as f32 / 1000.0) - 1.0)
        .collect()
}

/// (name, cin, cout, kernel, stride, groups, pad, input h = w)
type Case = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    [usize; 4],
    usize,
);

const CASES: &[Case] = &[
    ("mbv2_dw3x3_s1_c144_56", 144, 144, 3, 1, 144, [1; 4], 56),
    ("mbv2_dw3x3_s2_c144_56", 144, 144, 3, 2, 144, [1; 4], 56),
    (
        "mbv2_dw3x3_s2_tfsame_c96_112",
        96,
        96,
        3,
        2,
        96,
        [0, 1, 0, 1],
        112,
    ),
    ("mbv2_pw_24to144_56", 24, 144, 1, 1, 1, [0; 4], 56),
    ("mbv2_pw_960to160_7", 960, 160, 1, 1, 1, [0; 4], 7),
    ("r50_stem7x7_s2", 3, 64, 7, 2, 1, [3; 4], 224),
    ("r50_conv3x3_c64_56", 64, 64, 3, 1, 1, [1; 4], 56),
    ("r50_conv3x3_c256_14", 256, 256, 3, 1, 1, [1; 4], 14),
    ("r50_pw_256to64_56", 256, 64, 1, 1, 1, [0; 4], 56),
    ("r50_pw_1024to2048_s2_14", 1024, 2048, 1, 2, 1, [0; 4], 14),
];

fn convs(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv2d");
    for &(name, cin, cout, kernel, stride, groups, pad, hw) in CASES {
        let shape = ConvShape {
            cin,
            cout,
            kernel,
            stride,
            groups,
            pad,
        };
        let w = vals(cout * (cin / groups) * kernel * kernel);
        let b = vals(cout);
        let conv = Conv2d::new(shape, &w, Some(&b), Activation::Relu6);
        let x = vals(cin * hw * hw);
        let [_, _, oh, ow] = conv.out_dims(1, hw, hw);
        let macs = cout * oh * ow * (cin / groups) * kernel * kernel;
        g.throughput(Throughput::Elements(macs as u64));
        g.bench_function(name, |bch| {
            bch.iter(|| black_box(conv.forward(black_box(&x), 1, hw, hw, None)))
        });
    }
    g.finish();
    // The dense ones again, channels-last (MobileNetV2's stem), and channel-blocked with the
    // layers only ResNet has (ResNet's layout).
    let dense = CASES.iter().filter(|c| c.5 == 1);
    dense_group(c, "conv2d_nhwc", dense.clone(), |conv, x, hw| {
        conv.forward_nhwc(x, 1, hw, hw, None)
    });
    let resnet = dense.chain(RESNET).filter(|c| c.0.starts_with("r50"));
    dense_group(c, "conv2d_blocked", resnet, |conv, x, hw| {
        conv.forward_blocked(x, 1, hw, hw, None)
    });
}

/// A benchmark group of dense convolutions (batch 1, ReLU) run by `run(conv, x, hw)`.
fn dense_group<'a>(
    c: &mut Criterion,
    group: &str,
    cases: impl Iterator<Item = &'a Case>,
    run: impl Fn(&Conv2d, &[f32], usize) -> Vec<f32>,
) {
    let mut g = c.benchmark_group(group);
    for &(name, cin, cout, kernel, stride, groups, pad, hw) in cases {
        let shape = ConvShape {
            cin,
            cout,
            kernel,
            stride,
            groups,
            pad,
        };
        let conv = Conv2d::new(
            shape,
            &vals(cout * cin * kernel * kernel),
            Some(&vals(cout)),
            Activation::Relu,
        );
        let x = vals(cin * hw * hw);
        let [_, _, oh, ow] = conv.out_dims(1, hw, hw);
        g.throughput(Throughput::Elements(
            (cout * oh * ow * cin * kernel * kernel) as u64,
        ));
        g.bench_function(name, |bch| {
            bch.iter(|| black_box(run(&conv, black_box(&x), hw)))
        });
    }
    g.finish();
}

/// More of ResNet-50's layers (same fields as [`CASES`]): Winograd at 28×28 and 14×14, the
/// direct kernel at 7×7, a strided 3×3.
const RESNET: &[Case] = &[
    ("r50_conv3x3_c128_28", 128, 128, 3, 1, 1, [1; 4], 28),
    ("r50_conv3x3_c512_7", 512, 512, 3, 1, 1, [1; 4], 7),
    ("r50_conv3x3_s2_c128_56", 128, 128, 3, 2, 1, [1; 4], 56),
    ("r50_pw_2048to512_7", 2048, 512, 1, 1, 1, [0; 4], 7),
];

/// MobileNetV2's fused inverted residuals: (name, cin, expansion, cout, stride, input h = w).
const BLOCKS: &[(&str, usize, usize, usize, usize, usize)] = &[
    ("mbv2_16x6to24_s2_112", 16, 6, 24, 2, 112),
    ("mbv2_24x6to24_s1_56", 24, 6, 24, 1, 56),
    ("mbv2_64x6to64_s1_14", 64, 6, 64, 1, 14),
    ("mbv2_160x6to160_s1_7", 160, 6, 160, 1, 7),
];

fn blocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("block");
    let conv = |cin: usize, cout: usize, k: usize, s: usize, groups: usize, act| {
        let shape = ConvShape {
            cin,
            cout,
            kernel: k,
            stride: s,
            groups,
            pad: [(k - 1) / 2; 4],
        };
        let w = vals(cout * (cin / groups) * k * k);
        Arc::new(Conv2d::new(shape, &w, Some(&vals(cout)), act))
    };
    for &(name, cin, t, cout, s, hw) in BLOCKS {
        let hid = cin * t;
        let block = InvertedResidual::new(
            Some(conv(cin, hid, 1, 1, 1, Activation::Relu6)),
            conv(hid, hid, 3, s, hid, Activation::Relu6),
            conv(hid, cout, 1, 1, 1, Activation::None),
            s == 1 && cin == cout,
            DwPadding::Fixed,
        );
        let x = vals(cin * hw * hw);
        let (oh, ow) = block.out_hw(hw, hw);
        let macs = hw * hw * cin * hid + oh * ow * hid * (9 + cout);
        g.throughput(Throughput::Elements(macs as u64));
        g.bench_function(name, |bch| {
            bch.iter(|| black_box(block.forward(black_box(&x), 1, hw, hw)))
        });
    }
    g.finish();
}

criterion_group!(benches, convs, blocks);
criterion_main!(benches);
