//! A bad file among good ones never loses the good ones' results (issue 13, point 8), with the
//! bad files taken from fuzzing: every input of the `preprocess` and `jpeg_decode` fuzz corpora
//! (seeds and the inputs libFuzzer kept, most of them damaged images) plus the regression
//! inputs, interleaved with real photos in one `kiln classify` run. Each file gets exactly one
//! line; every photo's line equals what a run on that photo alone gives; every failure names
//! its file; the exit code says something failed.

mod common;

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fuzz_inputs() -> Vec<PathBuf> {
    let root = common::repo().join("fuzz");
    let mut v = vec![];
    for d in [
        "corpus/preprocess",
        "corpus/jpeg_decode",
        "regressions/preprocess",
        "regressions/jpeg_decode",
    ] {
        if let Ok(rd) = std::fs::read_dir(root.join(d)) {
            v.extend(
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_file()),
            );
        }
    }
    v.sort();
    v
}

fn classify(args: &[&Path]) -> (Option<i32>, Vec<Value>) {
    let out = Command::new(common::kiln_bin())
        .args([
            "classify",
            "--format",
            "jsonl",
            "--quiet",
            "--batch-size",
            "4",
        ])
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.code(), lines)
}

#[test]
fn fuzzed_files_among_photos_lose_no_result() {
    let inputs = fuzz_inputs();
    assert!(inputs.len() >= 20, "fuzz corpora missing: {}", inputs.len());
    let photos: Vec<PathBuf> = ["n01440764_tench.JPEG", "n01484850_great_white_shark.JPEG"]
        .iter()
        .map(|n| common::shared().join("imagenet-sample").join(n))
        .collect();
    let dir = std::env::temp_dir().join(format!("kiln-fuzzed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Interleave: a photo every few fuzzed files, so photos share batches with bad files.
    let mut args = vec![];
    let mut photo_names = vec![];
    for (i, p) in inputs.iter().enumerate() {
        // An image extension so that directory and glob rules never skip it.
        let f = dir.join(format!("fuzz{i:04}.jpg"));
        std::fs::copy(p, &f).unwrap();
        args.push(f);
        if i % 5 == 0 {
            let ph = dir.join(format!("photo{i:04}.jpg"));
            std::fs::copy(&photos[i / 5 % photos.len()], &ph).unwrap();
            photo_names.push((ph.clone(), photos[i / 5 % photos.len()].clone()));
            args.push(ph);
        }
    }
    let refs: Vec<&Path> = args.iter().map(PathBuf::as_path).collect();
    let (code, lines) = classify(&refs);
    assert_eq!(lines.len(), args.len(), "one line per file");
    let by_path: HashMap<String, &Value> = lines
        .iter()
        .map(|v| (v["path"].as_str().unwrap().to_string(), v))
        .collect();
    let mut alone = HashMap::new();
    for p in &photos {
        let (c, l) = classify(&[p]);
        assert_eq!(c, Some(0));
        alone.insert(p.clone(), l[0]["top"].clone());
    }
    for (copy, original) in &photo_names {
        let v = by_path[&copy.display().to_string()];
        assert_eq!(v["top"], alone[original], "{}: {v}", copy.display());
    }
    let mut failed = 0;
    for v in &lines {
        if let Some(e) = v["error"].as_str() {
            failed += 1;
            assert!(
                e.contains(v["path"].as_str().unwrap()),
                "names its file: {e}"
            );
        }
    }
    assert!(failed > 0, "the fuzzed files include failures");
    assert_eq!(code, Some(1), "exit code 1 when some file failed");
    eprintln!(
        "{} fuzzed files + {} photos: {failed} refused, every photo's result as alone",
        inputs.len(),
        photo_names.len()
    );
}
