//! Accuracy on 500 real ImageNet photos against what PyTorch computed on the same files.

mod common;

use kiln_runtime::Classifier;

#[test]
fn mobilenet_v2_matches_pytorch_on_imagenet_sample() {
    let classifier = Classifier::builder()
        .weights(common::shipped("mobilenet_v2"))
        .build()
        .unwrap();
    let fig = common::evaluate(&classifier, "mobilenet_v2", 500, "mobilenet_v2");
    assert!(
        (fig.torch - 0.828).abs() < 1e-9,
        "reference accuracy is 0.828"
    );
    assert!(
        fig.kiln >= fig.torch - 0.005,
        "top-1 {} is more than 0.5 points below PyTorch's {}",
        fig.kiln,
        fig.torch
    );
    // kiln's JPEG decoder gives PIL's pixels exactly, so nothing may differ but float rounding.
    assert_eq!(
        fig.agree,
        1.0,
        "top-1 agrees with PyTorch on only {:.1}%",
        fig.agree * 100.0
    );
    // Measured 1.8e-4 with identical decoded pixels (tests/jpeg in kiln-preprocess), on the
    // photo where EfficientNet-Lite0 differs most too: its preprocessing, not decoding. Issue 14
    // asks for 1e-4, which this does not yet meet.
    assert!(
        fig.max_dp <= 5e-4,
        "a top-1 probability differs from PyTorch's by {}",
        fig.max_dp
    );
}
