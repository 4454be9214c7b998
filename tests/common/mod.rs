//! Helpers shared by the integration tests.
#![allow(dead_code)]

use kiln_runtime::Classifier;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the repository (or `$KILN_SHARED`), which CI provides.
pub fn shared() -> PathBuf {
    let p = std::env::var_os("KILN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared"));
    assert!(
        p.join("imagenet-sample/labels.csv").exists(),
        "shared data not found at {} (set KILN_SHARED)",
        p.display()
    );
    p
}

/// One row of a PyTorch reference CSV.
pub struct Reference {
    pub file: String,
    pub class_index: usize,
    pub top5: Vec<usize>,
    pub top5_prob: Vec<f32>,
}

/// Reads `../shared/reference/imagenet-sample.NAME.csv`.
pub fn read_reference(name: &str) -> Vec<Reference> {
    let path = shared().join(format!("reference/imagenet-sample.{name}.csv"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Reference {
                file: f[0].to_string(),
                class_index: f[1].parse().unwrap(),
                top5: f[2].split(' ').map(|x| x.parse().unwrap()).collect(),
                top5_prob: f[3].split(' ').map(|x| x.parse().unwrap()).collect(),
            }
        })
        .collect()
}

/// The shipped weights file of `name`.
pub fn shipped(name: &str) -> PathBuf {
    repo().join("weights").join(format!("{name}.safetensors"))
}

/// The built `kiln` binary.
pub fn kiln_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kiln"))
}

/// Top-1 figures of one run over `n` photos.
pub struct Figures {
    pub kiln: f64,
    pub torch: f64,
    pub agree: f64,
    pub max_dp: f32,
}

/// Classifies the first `n` photos of the sample with `classifier`, against PyTorch's reference
/// `../shared/reference/imagenet-sample.REFERENCE.csv`.
pub fn evaluate(classifier: &Classifier, reference: &str, n: usize, label: &str) -> Figures {
    let refs = read_reference(reference);
    assert_eq!(refs.len(), 500);
    let refs = &refs[..n];
    let dir = shared().join("imagenet-sample");
    let paths: Vec<PathBuf> = refs.iter().map(|r| dir.join(&r.file)).collect();
    let start = std::time::Instant::now();
    let preds = classifier.classify_paths(&paths, 5, 16);
    let (mut ours, mut theirs, mut agree, mut max_dp) = (0, 0, 0, 0f32);
    let mut disagreements = vec![];
    let mut worst = String::new();
    for (r, p) in refs.iter().zip(preds) {
        let p = p.unwrap_or_else(|e| panic!("{}: {e}", r.file));
        let top1 = p.top[0].index;
        ours += (top1 == r.class_index) as usize;
        theirs += (r.top5[0] == r.class_index) as usize;
        if top1 == r.top5[0] {
            agree += 1;
            let dp = (p.top[0].prob - r.top5_prob[0]).abs();
            if dp > max_dp {
                max_dp = dp;
                worst = r.file.clone();
            }
        } else {
            disagreements.push(format!(
                "{}: kiln {} ({:.3}), torch {} ({:.3})",
                r.file, top1, p.top[0].prob, r.top5[0], r.top5_prob[0]
            ));
        }
    }
    let f = n as f64;
    let fig = Figures {
        kiln: ours as f64 / f,
        torch: theirs as f64 / f,
        agree: agree as f64 / f,
        max_dp,
    };
    println!(
        "{label}: kiln top-1 {:.3}, PyTorch top-1 {:.3}, agreement {:.1}% ({agree}/{n}), max top-1 prob diff {max_dp:.6} ({worst}) ({:.1}s)",
        fig.kiln,
        fig.torch,
        fig.agree * 100.0,
        start.elapsed().as_secs_f32()
    );
    if disagreements.len() <= 10 {
        for d in &disagreements {
            println!("  differs: {d}");
        }
    }
    fig
}

// The deterministic weights recipe ("kiln-fixture-v1") of python/make_parity_fixtures.py;
// tests/parity.rs checks it against numpy's reference values.

/// FNV-1a 64 of the UTF-8 bytes of `name`.
pub fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The recipe's `u` values in [-1, 1): splitmix64 seeded with the name's hash, top 24 bits.
pub fn recipe_uniform(name: &str, count: usize) -> impl Iterator<Item = f32> {
    let mut state = fnv1a64(name);
    (0..count).map(move |_| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 40) as f32) / 16_777_216.0 * 2.0 - 1.0
    })
}

/// `b * u + a` in f32 (a multiply then an add, never fused, as numpy does).
pub fn recipe_values(name: &str, count: usize, a: f32, b: f32) -> Vec<f32> {
    recipe_uniform(name, count).map(|u| b * u + a).collect()
}

/// Every tensor of an all-f32 safetensors file (PyTorch's logits fixtures), by name:
/// `(shape, row-major values)`.
pub fn read_f32_tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{k}");
            let data = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (k, (v.shape().to_vec(), data))
        })
        .collect()
}

/// A `kiln serve` process on free ports (`--port 0 --grpc-port 0`), ready to answer.
pub struct Served {
    /// The process.
    pub child: std::process::Child,
    /// The REST address, `host:port`.
    pub addr: String,
}

/// Starts `kiln serve` with `args` after the ports, reads its REST address from its log, keeps
/// draining the log (so the server never blocks on a full pipe) and waits for
/// `/v2/health/ready` (at most 120 s).
pub fn start_serve(args: &[&str]) -> Served {
    use std::io::BufRead;
    let mut child = std::process::Command::new(kiln_bin())
        .args(["serve", "--port", "0", "--grpc-port", "0"])
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.trim().strip_prefix("kiln serve: REST on http://") {
            addr = Some(rest.split(',').next().unwrap().to_string());
            break;
        }
        line.clear();
    }
    std::thread::spawn(move || for _ in err.lines() {});
    let addr = addr.expect("the server printed its address");
    let t = std::time::Instant::now();
    while !http(
        &addr,
        b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .starts_with("HTTP/1.1 200")
    {
        assert!(t.elapsed().as_secs() < 120, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Served { child, addr }
}

impl Served {
    /// Sends SIGTERM and returns how the server exited.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        self.child.wait().unwrap()
    }
}

/// One HTTP/1.1 exchange on a new connection (the request should say `Connection: close`):
/// the whole answer, as text (binary tensor bytes, which are not UTF-8, replaced).
pub fn http(addr: &str, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    s.write_all(request).unwrap();
    let mut out = vec![];
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}
