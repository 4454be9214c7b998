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
    // Pixels identical to PIL's (kiln-preprocess tests/jpeg) and resampling identical to Pillow's
    // (tests/resize_pillow): what is left is float rounding in the network.
    assert!(
        fig.max_dp <= 1e-4,
        "a top-1 probability differs from PyTorch's by {}",
        fig.max_dp
    );
}
