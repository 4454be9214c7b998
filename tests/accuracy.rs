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
    assert!(
        fig.agree >= 0.99,
        "top-1 agrees with PyTorch on only {:.1}%",
        fig.agree * 100.0
    );
}
