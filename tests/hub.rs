//! `hf:OWNER/REPO` models against a hub-compatible HTTP server on 127.0.0.1: download and
//! classify, cache reuse, offline use, missing files, corrupt downloads, and the timm and
//! transformers conventions (configs and tensor names), and network faults: a server that
//! stalls before answering or in the middle of a body, drops the connection halfway, or answers
//! 5xx gives an error within the timeout and leaves nothing in the cache.
//!
//! The server speaks the part of the hub protocol hf-hub's blocking client uses:
//! `GET /{repo}/resolve/{revision}/{file}` with `Range: bytes=0-0` for the metadata (answered
//! with `ETag`, `X-Repo-Commit` and `Content-Range: bytes 0-0/SIZE`), then a ranged GET for the
//! body. Every test passes the endpoint and a fresh cache directory explicitly; nothing here
//! touches the process environment.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kiln_runtime::hub::{self, HubError, HubOptions};
use kiln_runtime::Classifier;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

// ---------------------------------------------------------------------------------------------
// A small hub

#[derive(Clone)]
struct File {
    body: Vec<u8>,
    /// Bytes left off the end of full downloads while still announcing the whole size.
    short_by: usize,
    /// What goes wrong, for the next `faults_left` requests of this file.
    fault: Fault,
    faults_left: usize,
}

/// Network faults the server can play.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    /// Reads the request, then sends nothing (any request).
    StallBeforeAnswer,
    /// Sends the headers and half the body, then nothing (body requests).
    StallHalfway,
    /// Sends the headers (the full Content-Length) and half the body, then closes (body
    /// requests).
    DropHalfway,
    /// Answers this status (any request).
    Status(u16),
}

impl File {
    fn new(body: Vec<u8>) -> Self {
        Self {
            body,
            short_by: 0,
            fault: Fault::None,
            faults_left: 0,
        }
    }

    fn faulty(body: Vec<u8>, fault: Fault, times: usize) -> Self {
        Self {
            fault,
            faults_left: times,
            ..Self::new(body)
        }
    }
}

/// Holds a connection open without sending, for longer than any client timeout in these tests.
fn stall() {
    std::thread::sleep(std::time::Duration::from_secs(15));
}

#[derive(Default)]
struct State {
    /// `repo/resolve/revision/file` → file.
    files: HashMap<String, File>,
    /// Every request as `METHOD path range`.
    log: Vec<String>,
}

struct Hub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn commit_for(repo: &str) -> String {
    // 40 hex digits, stable per repo.
    let h = fnv(repo.as_bytes());
    format!("{h:016x}{:016x}{:08x}", h.rotate_left(17), h as u32)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

impl Hub {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Hub {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn put(&self, repo: &str, revision: &str, file: &str, body: Vec<u8>) {
        self.put_file(repo, revision, file, File::new(body));
    }

    fn put_file(&self, repo: &str, revision: &str, file: &str, f: File) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(format!("{repo}/resolve/{revision}/{file}"), f);
    }

    /// Requests whose path ends with `suffix`.
    fn requests(&self, suffix: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|l| l.split(' ').nth(1).is_some_and(|p| p.ends_with(suffix)))
            .count()
    }

    fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut buf = vec![];
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let mut range = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let key = path.trim_start_matches('/').to_string();
    let metadata_request = range.as_deref() == Some("bytes=0-0");
    let (file, fault) = {
        let mut s = state.lock().unwrap();
        s.log.push(format!(
            "{method} {path} {}",
            range.clone().unwrap_or_default()
        ));
        match s.files.get_mut(&key) {
            None => (None, Fault::None),
            Some(f) => {
                let applies = match f.fault {
                    Fault::None => false,
                    Fault::StallBeforeAnswer | Fault::Status(_) => true,
                    Fault::StallHalfway | Fault::DropHalfway => !metadata_request,
                };
                let fault = if applies && f.faults_left > 0 {
                    f.faults_left -= 1;
                    f.fault
                } else {
                    Fault::None
                };
                (Some(f.clone()), fault)
            }
        }
    };
    match fault {
        Fault::StallBeforeAnswer => {
            stall();
            return Ok(());
        }
        Fault::Status(code) => {
            let body = b"upstream error";
            write!(
                conn,
                "HTTP/1.1 {code} Server Error\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            conn.write_all(body)?;
            return Ok(());
        }
        _ => {}
    }
    let Some(file) = file else {
        let body = b"Entry not found";
        write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nX-Error-Code: EntryNotFound\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        conn.write_all(body)?;
        return Ok(());
    };
    let repo = key.split("/resolve/").next().unwrap_or("");
    let len = file.body.len();
    let etag = format!("{:016x}{len:08x}", fnv(&file.body));
    let (start, mut end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().unwrap_or(len - 1);
            (a, b.min(len - 1))
        }
        None => (0, len - 1),
    };
    let whole = end == len - 1;
    let announced = format!("bytes {start}-{end}/{len}");
    if whole && file.short_by > 0 {
        end -= file.short_by;
    }
    let body = &file.body[start..=end];
    let status = if range.is_some() {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nETag: \"{etag}\"\r\nX-Repo-Commit: {}\r\nContent-Range: {announced}\r\nAccept-Ranges: bytes\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        commit_for(repo),
        body.len()
    )?;
    if method != "HEAD" {
        if matches!(fault, Fault::StallHalfway | Fault::DropHalfway) {
            conn.write_all(&body[..body.len() / 2])?;
            conn.flush()?;
            if fault == Fault::StallHalfway {
                stall();
            }
            return Ok(());
        }
        conn.write_all(body)?;
    }
    conn.flush()
}

// ---------------------------------------------------------------------------------------------
// Models and configs

/// Deterministic pseudo-random values in [-a, a].
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, a: f32) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
}

/// A safetensors file with every tensor of `layout` filled deterministically (batch-norm
/// variances positive), plus a `num_batches_tracked` counter per norm layer as PyTorch's
/// state_dict has.
fn checkpoint(layout: &[(String, Vec<usize>)], seed: u64) -> Vec<u8> {
    let mut rng = Lcg(seed);
    let mut data: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = vec![];
    for (name, shape) in layout {
        let n: usize = shape.iter().product();
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let vals: Vec<f32> = (0..n)
            .map(|_| {
                if name.ends_with("running_var") {
                    1.0 + rng.next(0.1).abs()
                } else if name.ends_with("running_mean") || name.ends_with("bias") {
                    rng.next(0.05)
                } else if shape.len() == 1 {
                    1.0 + rng.next(0.1)
                } else {
                    rng.next((3.0 / fan_in as f32).sqrt())
                }
            })
            .collect();
        let bytes = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((name.clone(), shape.clone(), Dtype::F32, bytes));
        if name.ends_with("running_var") {
            let counter = name.replace("running_var", "num_batches_tracked");
            data.push((counter, vec![], Dtype::I64, 1000i64.to_le_bytes().to_vec()));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, s, d, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize(views, Some(meta)).unwrap()
}

const CLASSES: [&str; 10] = [
    "n01440764",
    "n01443537",
    "n01484850",
    "n01491361",
    "n01494475",
    "n01496331",
    "n01498041",
    "n01514668",
    "n01514859",
    "n01518878",
];

/// A timm config.json as timm's push_to_hf writes it, for a 10-class mobilenetv2_050.
fn timm_config(arch: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "architecture": arch,
        "num_classes": 10,
        "num_features": 1280,
        "global_pool": "avg",
        "pretrained_cfg": {
            "tag": "lamb_in1k",
            "custom_load": false,
            "input_size": [3, 224, 224],
            "fixed_input_size": false,
            "interpolation": "bicubic",
            "crop_pct": 0.875,
            "crop_mode": "center",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "num_classes": 1000,
            "pool_size": [7, 7],
            "first_conv": "conv_stem",
            "classifier": "classifier",
            "license": "apache-2.0"
        },
        "label_names": CLASSES,
        "label_descriptions": {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus"}
    }))
    .unwrap()
}

fn timm_mnv2_050() -> (Vec<u8>, Vec<u8>) {
    let layout = kiln_models::mobilenet_v2::timm_layout(0.5, 10);
    assert!(layout
        .iter()
        .any(|(k, _)| k == "blocks.6.0.conv_pwl.weight"));
    (timm_config("mobilenetv2_050"), checkpoint(&layout, 7))
}

/// transformers' ResNetForImageClassification resnet-18 names and shapes.
fn hf_resnet18_layout(num_classes: usize) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![];
    let conv_bn = |out: &mut Vec<(String, Vec<usize>)>, p: &str, shape: Vec<usize>| {
        let c = shape[0];
        out.push((format!("{p}.convolution.weight"), shape));
        for k in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{p}.normalization.{k}"), vec![c]));
        }
    };
    conv_bn(&mut out, "resnet.embedder.embedder", vec![64, 3, 7, 7]);
    let mut inp = 64;
    for (s, width) in [64usize, 128, 256, 512].into_iter().enumerate() {
        for i in 0..2 {
            let stride = if s > 0 && i == 0 { 2 } else { 1 };
            let cin = if i == 0 { inp } else { width };
            let p = format!("resnet.encoder.stages.{s}.layers.{i}");
            if cin != width || stride != 1 {
                conv_bn(&mut out, &format!("{p}.shortcut"), vec![width, cin, 1, 1]);
            }
            conv_bn(&mut out, &format!("{p}.layer.0"), vec![width, cin, 3, 3]);
            conv_bn(&mut out, &format!("{p}.layer.1"), vec![width, width, 3, 3]);
        }
        inp = width;
    }
    out.push(("classifier.1.weight".into(), vec![num_classes, 512]));
    out.push(("classifier.1.bias".into(), vec![num_classes]));
    out
}

fn hf_resnet18() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let id2label: serde_json::Map<String, serde_json::Value> = (0..10)
        .map(|i| {
            (
                i.to_string(),
                serde_json::Value::from(format!("class number {i}")),
            )
        })
        .collect();
    let config = serde_json::json!({
        "architectures": ["ResNetForImageClassification"],
        "depths": [2, 2, 2, 2],
        "downsample_in_first_stage": false,
        "embedding_size": 64,
        "hidden_act": "relu",
        "hidden_sizes": [64, 128, 256, 512],
        "id2label": id2label,
        "layer_type": "basic",
        "model_type": "resnet",
        "num_channels": 3,
        "torch_dtype": "float32",
        "transformers_version": "4.18.0.dev0"
    });
    let pre = serde_json::json!({
        "crop_pct": 0.875,
        "do_normalize": true,
        "do_resize": true,
        "feature_extractor_type": "ConvNextFeatureExtractor",
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "resample": 3,
        "size": 224
    });
    (
        serde_json::to_vec_pretty(&config).unwrap(),
        serde_json::to_vec_pretty(&pre).unwrap(),
        checkpoint(&hf_resnet18_layout(10), 11),
    )
}

// ---------------------------------------------------------------------------------------------
// Helpers

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "kiln-hub-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn options(endpoint: &str, cache: &Path) -> HubOptions {
    HubOptions {
        endpoint: endpoint.to_string(),
        cache_dir: cache.join("hub"),
        offline: false,
        token: None,
        progress: false,
        retries: 0,
        timeout: std::time::Duration::from_secs(10),
    }
}

fn photo() -> image::RgbImage {
    image::RgbImage::from_fn(320, 240, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 251) as u8])
    })
}

fn classify(m: &hub::HubModel) -> (usize, String, f32) {
    let c = m.apply_to(Classifier::builder()).build().unwrap();
    assert_eq!(c.spec_origin().to_string(), m.origin);
    let p = c.classify_images(&[photo()], 3).unwrap().remove(0);
    let total: f32 = p.top.iter().map(|s| s.prob).sum();
    assert!(
        p.top.iter().all(|s| s.prob.is_finite()) && total <= 1.0001,
        "{p:?}"
    );
    (p.top[0].index, p.top[0].label.clone(), p.top[0].prob)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn timm_model_downloads_classifies_and_is_reused_from_the_cache() {
    let mut server = Hub::start();
    let (config, weights) = timm_mnv2_050();
    let repo = "kiln-test/mobilenetv2_050.lamb_in1k";
    server.put(repo, "main", "config.json", config);
    server.put(repo, "main", "model.safetensors", weights);
    let dir = TempDir::new("timm");
    let opts = options(&server.url(), &dir.0);
    let name = format!("hf:{repo}");

    // First use: both files come over the network.
    let m = hub::resolve(&name, &opts).unwrap();
    assert_eq!(m.downloaded, vec!["config.json", "model.safetensors"]);
    assert_eq!(m.commit, commit_for(repo));
    assert_eq!(m.hub_architecture, "mobilenetv2_050");
    assert_eq!(m.spec.architecture, "mobilenet_v2");
    assert_eq!(m.spec.param_f64("width_mult"), Some(0.5));
    let r = m.spec.resize.as_ref().unwrap();
    assert_eq!(r.shorter_side, Some(256));
    assert_eq!(m.spec.center_crop, Some([224, 224]));
    assert!(
        m.origin.starts_with(&name) && m.origin.contains("timm"),
        "{}",
        m.origin
    );
    // timm names were renamed; the result lives beside the hub cache.
    assert!(
        m.weights_path.starts_with(opts.derived_dir()),
        "{}",
        m.weights_path.display()
    );
    let weights_requests = server.requests("/model.safetensors");
    assert_eq!(weights_requests, 2, "metadata + body: {:?}", server.log());
    assert!(server
        .log()
        .iter()
        .all(|l| l.contains(&format!("/{repo}/resolve/main/"))));

    let (top, label, prob) = classify(&m);
    let labels: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(m.labels.as_ref().unwrap()).unwrap())
            .unwrap();
    assert_eq!(labels[0], "tench, Tinca tinca");
    assert_eq!(labels[2], "n01484850");
    assert_eq!(label, labels[top]);

    // Second use: nothing is downloaded, not even the metadata.
    let before = server.log().len();
    let m2 = hub::resolve(&name, &opts).unwrap();
    assert!(m2.downloaded.is_empty());
    assert_eq!(server.log().len(), before, "{:?}", &server.log()[before..]);
    assert_eq!(m2.weights_path, m.weights_path);

    // The hub goes away: the cache still serves, online or offline.
    server.stop();
    let m3 = hub::resolve(&name, &opts).unwrap();
    assert!(m3.downloaded.is_empty());
    let offline = HubOptions {
        offline: true,
        ..opts.clone()
    };
    let m4 = hub::resolve(&name, &offline).unwrap();
    let (top4, _, prob4) = classify(&m4);
    assert_eq!((top4, prob4), (top, prob));

    // Offline, a repo never downloaded is a clear error naming it and the file.
    let e = hub::resolve("hf:kiln-test/never-seen", &offline).unwrap_err();
    assert!(matches!(e, HubError::NotCached { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("hf:kiln-test/never-seen")
            && msg.contains("config.json")
            && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
    // Online with the hub down: the error says the hub cannot be reached.
    let msg = hub::resolve("hf:kiln-test/never-seen", &opts)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("hf:kiln-test/never-seen") && msg.contains("cannot reach"),
        "{msg}"
    );
}

#[test]
fn transformers_resnet_downloads_and_classifies() {
    let server = Hub::start();
    let (config, pre, weights) = hf_resnet18();
    let repo = "kiln-test/resnet-18";
    server.put(repo, "v1.0", "config.json", config);
    server.put(repo, "v1.0", "preprocessor_config.json", pre);
    server.put(repo, "v1.0", "model.safetensors", weights);
    let dir = TempDir::new("hf");
    let opts = options(&server.url(), &dir.0);

    let m = hub::resolve(&format!("hf:{repo}@v1.0"), &opts).unwrap();
    assert_eq!(
        m.downloaded,
        vec![
            "config.json",
            "preprocessor_config.json",
            "model.safetensors"
        ]
    );
    assert_eq!(m.reference.revision, "v1.0");
    assert_eq!(m.spec.architecture, "resnet18");
    let r = m.spec.resize.as_ref().unwrap();
    assert_eq!(
        (r.shorter_side, r.interpolation),
        (Some(256), kiln_preprocess::Interpolation::Bicubic)
    );
    let (top, label, _) = classify(&m);
    assert_eq!(label, format!("class number {top}"));
    assert!(server.log().iter().all(|l| l.contains("/resolve/v1.0/")));

    // The main branch was never published: 404 names the repo and the file.
    let e = hub::resolve(&format!("hf:{repo}"), &opts).unwrap_err();
    assert!(matches!(e, HubError::NotFound { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("hf:kiln-test/resnet-18")
            && msg.contains("config.json")
            && msg.contains("404"),
        "{msg}"
    );
}

#[test]
fn missing_weights_are_reported_with_repo_and_file() {
    let server = Hub::start();
    let repo = "kiln-test/config-only";
    server.put(repo, "main", "config.json", timm_config("mobilenetv2_050"));
    let dir = TempDir::new("missing");
    let e = hub::resolve(&format!("hf:{repo}"), &options(&server.url(), &dir.0)).unwrap_err();
    assert!(matches!(e, HubError::NotFound { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("hf:kiln-test/config-only")
            && msg.contains("`model.safetensors` not found")
            && msg.contains("404"),
        "{msg}"
    );

    // A transformers repo without its preprocessor config.
    let (config, _, weights) = hf_resnet18();
    server.put("kiln-test/no-pre", "main", "config.json", config);
    server.put("kiln-test/no-pre", "main", "model.safetensors", weights);
    let msg = hub::resolve("hf:kiln-test/no-pre", &options(&server.url(), &dir.0))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("preprocessor_config.json") && msg.contains("hf:kiln-test/no-pre"),
        "{msg}"
    );
}

#[test]
fn unsupported_configs_are_refused_before_downloading_weights() {
    let server = Hub::start();
    let (_, weights) = timm_mnv2_050();
    server.put(
        "kiln-test/resnet50d",
        "main",
        "config.json",
        timm_config("resnet50d"),
    );
    server.put("kiln-test/resnet50d", "main", "model.safetensors", weights);
    let dir = TempDir::new("unsupported");
    let e = hub::resolve("hf:kiln-test/resnet50d", &options(&server.url(), &dir.0)).unwrap_err();
    assert!(matches!(e, HubError::Config { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("hf:kiln-test/resnet50d")
            && msg.contains("config.json")
            && msg.contains("resnet50d"),
        "{msg}"
    );
    assert_eq!(server.requests("/model.safetensors"), 0);

    // Tensors that do not belong to the named architecture.
    let (config, _) = timm_mnv2_050();
    let wrong = checkpoint(&hf_resnet18_layout(10), 3);
    server.put("kiln-test/wrong-keys", "main", "config.json", config);
    server.put("kiln-test/wrong-keys", "main", "model.safetensors", wrong);
    let e = hub::resolve("hf:kiln-test/wrong-keys", &options(&server.url(), &dir.0)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, HubError::Weights { .. }), "{e:?}");
    assert!(
        msg.contains("model.safetensors")
            && msg.contains("`classifier.1.bias`")
            && msg.contains("timm MobileNetV2"),
        "{msg}"
    );

    // Bad references never reach the network.
    let msg = hub::resolve("hf:only-a-name", &options(&server.url(), &dir.0))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("hf:OWNER/REPO"), "{msg}");
}

#[test]
fn corrupt_downloads_are_reported_and_evicted() {
    let server = Hub::start();
    let (config, weights) = timm_mnv2_050();
    let dir = TempDir::new("corrupt");
    let opts = options(&server.url(), &dir.0);

    // Garbage instead of a safetensors file.
    let repo = "kiln-test/garbage";
    server.put(repo, "main", "config.json", config.clone());
    let garbage: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    server.put(repo, "main", "model.safetensors", garbage);
    let e = hub::resolve(&format!("hf:{repo}"), &opts).unwrap_err();
    assert!(matches!(e, HubError::Corrupt { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("hf:kiln-test/garbage")
            && msg.contains("model.safetensors")
            && msg.contains("not a valid safetensors"),
        "{msg}"
    );
    let snapshot = opts
        .cache_dir
        .join("models--kiln-test--garbage/snapshots")
        .join(commit_for(repo))
        .join("model.safetensors");
    assert!(
        !snapshot.exists(),
        "the corrupt file stays out of the cache"
    );
    // Once the hub has a good file, the next run downloads it and works.
    server.put(repo, "main", "model.safetensors", weights.clone());
    let before = server.requests("/model.safetensors");
    let m = hub::resolve(&format!("hf:{repo}"), &opts).unwrap();
    assert_eq!(m.downloaded, vec!["model.safetensors"]);
    assert_eq!(server.requests("/model.safetensors"), before + 2);
    classify(&m);

    // A download that stops short of the announced size.
    let repo = "kiln-test/truncated";
    server.put(repo, "main", "config.json", config.clone());
    server.put_file(
        repo,
        "main",
        "model.safetensors",
        File {
            short_by: 1000,
            ..File::new(weights.clone())
        },
    );
    let e = hub::resolve(&format!("hf:{repo}"), &opts).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, HubError::Corrupt { .. }), "{e:?}");
    assert!(
        msg.contains("hf:kiln-test/truncated")
            && msg.contains("truncated")
            && msg.contains(&weights.len().to_string()),
        "{msg}"
    );

    // A config that is not JSON.
    let repo = "kiln-test/bad-config";
    server.put(
        repo,
        "main",
        "config.json",
        b"<html>rate limited</html>".to_vec(),
    );
    let msg = hub::resolve(&format!("hf:{repo}"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("hf:kiln-test/bad-config")
            && msg.contains("config.json")
            && msg.contains("not valid JSON"),
        "{msg}"
    );
    assert_eq!(
        server.requests("bad-config/resolve/main/model.safetensors"),
        0
    );
}

#[test]
fn timm_resnet_is_used_in_place() {
    // timm's ResNet already has torchvision's names: the downloaded file is loaded as it is,
    // num_batches_tracked counters (int64) and all.
    let server = Hub::start();
    let layout: Vec<(String, Vec<usize>)> = hf_resnet18_layout(10)
        .into_iter()
        .map(|(k, s)| {
            let tv = hub::torchvision_name(
                kiln_preprocess::hubspec::KeyConvention::TransformersResNet,
                &k,
            )
            .unwrap()
            .unwrap();
            (tv, s)
        })
        .collect();
    assert!(layout
        .iter()
        .any(|(k, _)| k == "layer2.0.downsample.0.weight"));
    let repo = "kiln-test/resnet18.tv_in1k";
    server.put(repo, "main", "config.json", timm_config("resnet18"));
    server.put(repo, "main", "model.safetensors", checkpoint(&layout, 5));
    let dir = TempDir::new("timm-resnet");
    let opts = options(&server.url(), &dir.0);
    let m = hub::resolve(&format!("hf:{repo}"), &opts).unwrap();
    assert_eq!(m.spec.architecture, "resnet18");
    assert!(
        m.weights_path.starts_with(&opts.cache_dir)
            && !m.weights_path.starts_with(opts.derived_dir())
    );
    assert!(m
        .weights_path
        .ends_with(format!("snapshots/{}/model.safetensors", commit_for(repo))));
    classify(&m);
}

/// The command line end to end: `kiln classify --model hf:…` and `kiln inspect hf:…` against
/// the local hub, with HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE as a user would set them.
#[test]
fn command_line_uses_the_hub() {
    let mut server = Hub::start();
    let (config, weights) = timm_mnv2_050();
    let repo = "kiln-test/cli-mobilenetv2_050";
    server.put(repo, "main", "config.json", config);
    server.put(repo, "main", "model.safetensors", weights);
    let home = TempDir::new("cli");
    let img = home.0.join("photo.png");
    photo().save(&img).unwrap();
    let name = format!("hf:{repo}");
    let endpoint = server.url();
    let kiln = |args: &[&str], offline: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.args(args)
            .env("HF_ENDPOINT", &endpoint)
            .env("HF_HOME", &home.0)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN");
        if offline {
            c.env("HF_HUB_OFFLINE", "1");
        } else {
            c.env_remove("HF_HUB_OFFLINE");
        }
        c.output().unwrap()
    };
    let img_s = img.to_str().unwrap();
    let out = kiln(
        &["classify", "--model", &name, "--format", "jsonl", img_s],
        false,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = String::from_utf8(out.stdout).unwrap();
    assert!(first.contains("\"top\""), "{first}");
    let fetched = server.requests("model.safetensors");
    assert!(fetched >= 1);

    let out = kiln(&["inspect", &name], false);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("mobilenetv2_050") && text.contains("commit:"),
        "{text}"
    );
    assert!(
        text.contains("\"width_mult\": 0.5"),
        "resolved spec shown: {text}"
    );

    // Offline, from the cache, with the server gone: same answer, no new request.
    server.stop();
    let out = kiln(
        &["classify", "--model", &name, "--format", "jsonl", img_s],
        true,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), first);
    // A repo never downloaded: a clear error, exit 2.
    let out = kiln(&["classify", "--model", "hf:kiln-test/never", img_s], true);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hf:kiln-test/never"));
    // `kiln spec --from timm` converts the same config.
    let cfg = home.0.join("config.json");
    std::fs::write(&cfg, timm_config("resnet50")).unwrap();
    let out = kiln(&["spec", "--from", "timm", cfg.to_str().unwrap()], true);
    assert_eq!(out.status.code(), Some(0));
    let spec =
        kiln_preprocess::TrainingSpec::from_json(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(spec.architecture, "resnet50");
}

// ---------------------------------------------------------------------------------------------
// Network faults

/// Nothing of `repo` is in the cache but what `allowed` names: no blob, no snapshot entry, no
/// temporary file.
fn cache_files(opts: &HubOptions, repo: &str) -> Vec<String> {
    fn walk(p: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                if path.is_dir() && !path.is_symlink() {
                    walk(&path, out);
                } else {
                    out.push(path.display().to_string());
                }
            }
        }
    }
    let mut out = vec![];
    walk(
        &opts
            .cache_dir
            .join(format!("models--{}", repo.replace('/', "--"))),
        &mut out,
    );
    out.sort();
    out
}

#[test]
fn network_faults_fail_within_the_timeout_and_leave_the_cache_clean() {
    let server = Hub::start();
    let (config, weights) = timm_mnv2_050();
    let dir = TempDir::new("faults");
    let mut opts = options(&server.url(), &dir.0);
    opts.timeout = std::time::Duration::from_secs(1);
    let cases = [
        (Fault::StallBeforeAnswer, "sent nothing for 1 s"),
        (Fault::StallHalfway, "sent nothing for 1 s"),
        (Fault::DropHalfway, "connection"),
        (Fault::Status(500), "HTTP 500"),
        (Fault::Status(503), "HTTP 503"),
    ];
    for (i, (fault, needle)) in cases.into_iter().enumerate() {
        let repo = format!("kiln-test/fault-{i}");
        server.put(&repo, "main", "config.json", config.clone());
        server.put_file(
            &repo,
            "main",
            "model.safetensors",
            File::faulty(weights.clone(), fault, 1),
        );
        let t0 = std::time::Instant::now();
        let e = hub::resolve(&format!("hf:{repo}"), &opts).unwrap_err();
        let took = t0.elapsed();
        let msg = e.to_string();
        println!("{fault:?} after {:.2} s: {msg}", took.as_secs_f64());
        assert!(
            msg.contains(&format!("hf:{repo}"))
                && msg.contains("model.safetensors")
                && msg.contains(needle),
            "{fault:?}: {msg}"
        );
        assert!(
            matches!(e, HubError::Download { .. } | HubError::Corrupt { .. }),
            "{fault:?}: {e:?}"
        );
        // Well under the server's 15 s stall: the timeout, not the server, ended it.
        assert!(took.as_secs_f64() < 6.0, "{fault:?} took {took:?}");
        // The config arrived; of the weights nothing is left, not even a partial file.
        let left = cache_files(&opts, &repo);
        assert!(
            left.iter().all(|f| !f.contains("model.safetensors")
                && !f.contains("incomplete")
                && !f.ends_with(".part")),
            "{fault:?}: {left:?}"
        );
        let blobs = left.iter().filter(|f| f.contains("/blobs/")).count();
        assert_eq!(blobs, 1, "{fault:?}: only config.json's blob: {left:?}");
        // The next attempt, with the server well again, succeeds.
        let m = hub::resolve(&format!("hf:{repo}"), &opts).unwrap();
        assert_eq!(m.downloaded, vec!["model.safetensors"], "{fault:?}");
        classify(&m);
    }
}

#[test]
fn retries_resume_a_broken_download_and_outlast_server_errors() {
    let server = Hub::start();
    let (config, weights) = timm_mnv2_050();
    let dir = TempDir::new("resume");
    let mut opts = options(&server.url(), &dir.0);
    opts.timeout = std::time::Duration::from_secs(1);
    opts.retries = 2;
    let repo = "kiln-test/resume";
    server.put(repo, "main", "config.json", config.clone());
    server.put_file(
        repo,
        "main",
        "model.safetensors",
        File::faulty(weights.clone(), Fault::DropHalfway, 1),
    );
    let m = hub::resolve(&format!("hf:{repo}"), &opts).unwrap();
    classify(&m);
    // The second body request asked for the rest only.
    let half = weights.len() / 2;
    let log = server.log();
    assert!(
        log.iter()
            .any(|l| l.ends_with(&format!("model.safetensors bytes={half}-"))),
        "{log:?}"
    );
    let snapshot = opts
        .cache_dir
        .join("models--kiln-test--resume/snapshots")
        .join(commit_for(repo))
        .join("model.safetensors");
    assert!(std::fs::read(snapshot).unwrap() == weights);

    // Two 503s, then the file: within retries 2.
    let repo = "kiln-test/flaky";
    server.put(repo, "main", "config.json", config.clone());
    server.put_file(
        repo,
        "main",
        "model.safetensors",
        File::faulty(weights.clone(), Fault::Status(503), 2),
    );
    classify(&hub::resolve(&format!("hf:{repo}"), &opts).unwrap());

    // A stall every time: the error says how often it was tried.
    let repo = "kiln-test/stalled";
    server.put(repo, "main", "config.json", config);
    server.put_file(
        repo,
        "main",
        "model.safetensors",
        File::faulty(weights, Fault::StallHalfway, 3),
    );
    let msg = hub::resolve(&format!("hf:{repo}"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("sent nothing for 1 s") && msg.contains("after 2 retries"),
        "{msg}"
    );
}

#[test]
fn the_timeout_comes_from_kiln_hub_timeout() {
    let env = |v: Option<&'static str>| {
        move |k: &str| match (k, v) {
            ("KILN_HUB_TIMEOUT", Some(v)) => Some(v.to_string()),
            ("HOME", _) => Some("/home/u".to_string()),
            _ => None,
        }
    };
    let secs = |v| HubOptions::from_lookup(env(v)).timeout.as_secs_f64();
    assert_eq!(secs(None), hub::DEFAULT_TIMEOUT_S);
    assert_eq!(secs(Some("2.5")), 2.5);
    assert_eq!(secs(Some(" 120 ")), 120.0);
    for bad in ["0", "-1", "soon", "inf", "NaN"] {
        assert_eq!(secs(Some(bad)), 0.0, "{bad}");
    }
    // Zero (a malformed value) is refused before any request, naming the variable.
    let server = Hub::start();
    let dir = TempDir::new("timeout-zero");
    let mut opts = options(&server.url(), &dir.0);
    opts.timeout = std::time::Duration::ZERO;
    let msg = hub::resolve("hf:kiln-test/any", &opts)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("KILN_HUB_TIMEOUT"), "{msg}");
    assert!(server.log().is_empty());
}
