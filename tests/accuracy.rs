//! Accuracy on 500 real ImageNet photos against what PyTorch computed on the same files.

mod common;

use kiln_runtime::Classifier;

/// Classifies every photo in the sample; returns (kiln top-1 accuracy, PyTorch top-1 accuracy,
/// top-1 agreement, largest top-1 probability difference on agreeing photos).
fn evaluate(model: &str) -> (f64, f64, f64, f32) {
    let classifier = Classifier::builder()
        .weights(common::shipped(model))
        .build()
        .unwrap();
    let refs = common::read_reference(model);
    assert_eq!(refs.len(), 500);
    let dir = common::shared().join("imagenet-sample");
    let paths: Vec<_> = refs.iter().map(|r| dir.join(&r.file)).collect();
    let preds = classifier.classify_paths(&paths, 5, 16);
    let (mut ours, mut theirs, mut agree, mut max_dp) = (0, 0, 0, 0f32);
    let mut disagreements = vec![];
    for (r, p) in refs.iter().zip(preds) {
        let p = p.unwrap_or_else(|e| panic!("{}: {e}", r.file));
        let top1 = p.top[0].index;
        ours += (top1 == r.class_index) as usize;
        theirs += (r.top5[0] == r.class_index) as usize;
        if top1 == r.top5[0] {
            agree += 1;
            max_dp = max_dp.max((p.top[0].prob - r.top5_prob[0]).abs());
        } else {
            disagreements.push(format!(
                "{}: kiln {} ({:.3}), torch {} ({:.3})",
                r.file, top1, p.top[0].prob, r.top5[0], r.top5_prob[0]
            ));
        }
    }
    let n = refs.len() as f64;
    println!(
        "{model}: kiln top-1 {:.3}, PyTorch top-1 {:.3}, agreement {:.1}% ({agree}/500), max top-1 prob diff {max_dp:.4}",
        ours as f64 / n,
        theirs as f64 / n,
        agree as f64 / n * 100.0
    );
    for d in &disagreements {
        println!("  differs: {d}");
    }
    (ours as f64 / n, theirs as f64 / n, agree as f64 / n, max_dp)
}

#[test]
fn mobilenet_v2_matches_pytorch_on_imagenet_sample() {
    let (ours, theirs, agree, _) = evaluate("mobilenet_v2");
    assert!((theirs - 0.828).abs() < 1e-9, "reference accuracy is 0.828");
    assert!(
        ours >= theirs - 0.005,
        "top-1 {ours} is more than 0.5 points below PyTorch's {theirs}"
    );
    assert!(
        agree >= 0.99,
        "top-1 agrees with PyTorch on only {:.1}%",
        agree * 100.0
    );
}
