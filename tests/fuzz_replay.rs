//! Replays every fuzz corpus input and every regression input through the fuzz targets' own
//! code (`fuzz/harness.rs`) on the stable toolchain, so that a bug fuzzing found stays fixed and
//! the seed corpora keep exercising what they did. Inputs live in `fuzz/corpus/TARGET/` (seeds
//! and what the fuzzer kept, minimised) and `fuzz/regressions/TARGET/` (inputs that crashed,
//! hung or exhausted memory before a fix; see fuzz/README.md).

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

/// Far above any input's time here (the slowest corpus input takes tens of milliseconds): an
/// input over it is a hang that libFuzzer's `-timeout` would also have reported.
const PER_INPUT_LIMIT: Duration = Duration::from_secs(20);

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file() && p.file_name().is_none_or(|n| n != "README.md"));
    v.sort();
    v
}

#[test]
fn every_corpus_and_regression_input_replays_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = vec![];
    let mut total = 0;
    for (name, target) in harness::TARGETS {
        let corpus = inputs(&root.join("corpus").join(name));
        let regressions = inputs(&root.join("regressions").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no seed inputs");
        let t = Instant::now();
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap();
            let start = Instant::now();
            let r = std::panic::catch_unwind(|| target(&data));
            let took = start.elapsed();
            if r.is_err() {
                failures.push(format!("{name}: {} panicked", path.display()));
            } else if took > PER_INPUT_LIMIT {
                failures.push(format!("{name}: {} took {took:?}", path.display()));
            }
            total += 1;
        }
        eprintln!(
            "{name}: {} corpus + {} regression inputs in {:.2?}",
            corpus.len(),
            regressions.len(),
            t.elapsed()
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {total} inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
