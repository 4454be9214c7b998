//! The REST endpoints against a real `kiln serve` core on 127.0.0.1 with the shipped
//! MobileNetV2 and real photos: every answer is checked against `Classifier::classify_path`
//! run in this process (the same pipeline as `kiln classify`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use kiln_runtime::Classifier;
use kiln_serve::{BatchConfig, ServeConfig};
use serde_json::{json, Value};

fn sample_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/imagenet-sample")
}

fn photos(n: usize) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(sample_dir())
        .expect("../shared/imagenet-sample")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "JPEG"))
        .collect();
    v.sort();
    v.truncate(n);
    assert_eq!(v.len(), n);
    v
}

fn classifier() -> Classifier {
    Classifier::builder()
        .model("mobilenet_v2")
        .build()
        .expect("shipped mobilenet_v2")
}

fn reference() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(classifier)
}

/// Starts a server on a free port in its own runtime thread and waits until it is ready.
fn start(
    config: ServeConfig,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let h = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let r = kiln_serve::start(config, vec![("mobilenet_v2".into(), classifier())], async {
                let _ = stop_rx.await;
            })
            .await
            .expect("server starts");
            addr_tx.send(r.http_addr).unwrap();
            r.wait().await;
        });
    });
    let addr = addr_rx.recv().unwrap();
    let t = Instant::now();
    while get(addr, "/v2/health/ready").0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "server never became ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (addr, stop_tx, h)
}

fn config() -> ServeConfig {
    ServeConfig {
        port: 0,
        grpc_port: None,
        header_read_timeout: Duration::from_secs(1),
        ..Default::default()
    }
}

fn server() -> SocketAddr {
    static S: OnceLock<SocketAddr> = OnceLock::new();
    *S.get_or_init(|| {
        let (addr, stop, h) = start(config());
        // Kept running for the whole test binary.
        std::mem::forget((stop, h));
        addr
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    match agent().get(&format!("http://{addr}{path}")).call() {
        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap()),
        Err(_) => (0, String::new()),
    }
}

fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut req = agent().post(&format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = req.send(body).expect("request sent");
    let hs = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = r
        .body_mut()
        .with_config()
        .limit(1 << 28)
        .read_to_vec()
        .unwrap();
    (r.status().as_u16(), hs, body)
}

fn post_json(addr: SocketAddr, path: &str, v: &Value) -> (u16, Value) {
    let (code, _, body) = post(
        addr,
        path,
        &[("content-type", "application/json")],
        v.to_string().as_bytes(),
    );
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn infer_path() -> &'static str {
    "/v2/models/mobilenet_v2/infer"
}

fn error_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field in {v}"))
}

fn output<'a>(resp: &'a Value, name: &str) -> &'a Value {
    resp["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {resp}"))
}

#[test]
fn health_and_metadata() {
    let a = server();
    let (c, b) = get(a, "/v2");
    assert_eq!(c, 200);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["name"], "kiln");
    assert!(v["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
    assert_eq!(get(a, "/v2/health/live").0, 200);
    assert_eq!(get(a, "/v2/health/ready").0, 200);
    assert_eq!(get(a, "/v2/models/mobilenet_v2/ready").0, 200);
    assert_eq!(get(a, "/v2/models/mobilenet_v2/versions/1/ready").0, 200);
    for path in [
        "/v2/models/mobilenet_v2",
        "/v2/models/mobilenet_v2/versions/1",
    ] {
        let (c, b) = get(a, path);
        assert_eq!(c, 200, "{path}");
        let m: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(m["name"], "mobilenet_v2");
        assert_eq!(m["versions"], json!(["1"]));
        let inputs = m["inputs"].as_array().unwrap();
        assert!(inputs.contains(&json!({"name": "image", "datatype": "BYTES", "shape": [-1]})));
        assert!(inputs
            .contains(&json!({"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]})));
        let probs = m["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "probabilities")
            .unwrap();
        assert_eq!(probs["shape"], json!([-1, 1000]));
        let spec: Value =
            serde_json::from_str(m["parameters"]["training_spec"].as_str().unwrap()).unwrap();
        assert_eq!(spec["architecture"], "mobilenet_v2");
        assert_eq!(spec["input_size"], json!([224, 224]));
    }
    let (c, b) = get(a, "/v2/models/nope");
    assert_eq!(c, 404);
    assert!(b.contains("unknown model `nope`"), "{b}");
    let (c, b) = get(a, "/v2/models/mobilenet_v2/versions/7");
    assert_eq!(c, 404);
    assert!(b.contains("no version `7`"), "{b}");
    assert_eq!(get(a, "/v2/models/nope/ready").0, 404);
    let (c, b) = get(a, "/");
    assert_eq!(c, 200);
    assert!(b.contains("<"), "{b}");
}

#[test]
fn json_bytes_images_match_classify() {
    let a = server();
    let paths = photos(3);
    let b64: Vec<String> = paths
        .iter()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap()))
        .collect();
    let req = json!({
        "id": "req-1",
        "parameters": {"top_k": 3},
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [3], "data": b64}],
        "outputs": [{"name": "top_k_indices"}, {"name": "top_k_labels"}, {"name": "top_k_probabilities"}],
    });
    let (c, v) = post_json(a, infer_path(), &req);
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["id"], "req-1");
    assert_eq!(v["model_name"], "mobilenet_v2");
    assert_eq!(
        v["outputs"].as_array().unwrap().len(),
        3,
        "only the requested outputs: {v}"
    );
    let idx = output(&v, "top_k_indices");
    assert_eq!(idx["datatype"], "INT64");
    assert_eq!(idx["shape"], json!([3, 3]));
    let probs = output(&v, "top_k_probabilities");
    let labels = output(&v, "top_k_labels");
    for (i, p) in paths.iter().enumerate() {
        let want = reference().classify_path(p, 3).unwrap();
        for (k, s) in want.top.iter().enumerate() {
            assert_eq!(idx["data"][i * 3 + k], json!(s.index), "{}", p.display());
            assert_eq!(labels["data"][i * 3 + k], json!(s.label));
            let got = probs["data"][i * 3 + k].as_f64().unwrap();
            assert!((got - s.prob as f64).abs() < 1e-5, "{got} vs {}", s.prob);
        }
    }
}

/// Triton's binary tensor extension, both ways.
fn binary_request(images: &[Vec<u8>], header: Value) -> (Vec<u8>, usize) {
    let mut blob = vec![];
    for im in images {
        blob.extend_from_slice(&(im.len() as u32).to_le_bytes());
        blob.extend_from_slice(im);
    }
    let mut h = header;
    h["inputs"][0]["parameters"] = json!({"binary_data_size": blob.len()});
    let mut body = h.to_string().into_bytes();
    let n = body.len();
    body.extend_from_slice(&blob);
    (body, n)
}

#[test]
fn binary_extension_matches_classify() {
    let a = server();
    let paths = photos(4);
    let images: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let (body, n) = binary_request(
        &images,
        json!({
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [4]}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}},
                        {"name": "top_k_indices", "parameters": {"binary_data": false}}],
        }),
    );
    let (c, hs, resp) = post(
        a,
        infer_path(),
        &[("inference-header-content-length", &n.to_string())],
        &body,
    );
    assert_eq!(c, 200, "{}", String::from_utf8_lossy(&resp));
    let hl: usize = hs
        .iter()
        .find(|(k, _)| k == "inference-header-content-length")
        .expect("binary response header")
        .1
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&resp[..hl]).unwrap();
    let p = output(&head, "probabilities");
    assert_eq!(p["shape"], json!([4, 1000]));
    let size = p["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
    assert_eq!(size, 4 * 1000 * 4);
    assert_eq!(resp.len(), hl + size);
    let probs: Vec<f32> = resp[hl..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let idx = output(&head, "top_k_indices");
    for (i, path) in paths.iter().enumerate() {
        let want = reference().classify_path(path, 5).unwrap();
        assert_eq!(idx["data"][i * 5], json!(want.top[0].index));
        let row = &probs[i * 1000..(i + 1) * 1000];
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-3);
        for s in &want.top {
            assert!((row[s.index] - s.prob).abs() < 1e-5, "{}", path.display());
        }
    }
}

#[test]
fn fp32_tensor_matches_logits() {
    let a = server();
    let path = &photos(1)[0];
    let c = reference();
    let img = kiln_preprocess::decode_file(path, &Default::default())
        .unwrap()
        .rgb;
    let t = c.preprocess(&img);
    assert_eq!(t.shape, [3, 224, 224]);
    let raw: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut body = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224],
                    "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "top_k_indices"}, {"name": "top_k_probabilities"}],
    })
    .to_string()
    .into_bytes();
    let n = body.len();
    body.extend_from_slice(&raw);
    let (code, _, resp) = post(
        a,
        infer_path(),
        &[("inference-header-content-length", &n.to_string())],
        &body,
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&resp));
    let v: Value = serde_json::from_slice(&resp).unwrap();
    let want = c.decode_logits(&c.logits(std::slice::from_ref(&t)).unwrap()[0], 5);
    for (k, s) in want.top.iter().enumerate() {
        assert_eq!(output(&v, "top_k_indices")["data"][k], json!(s.index));
        let got = output(&v, "top_k_probabilities")["data"][k]
            .as_f64()
            .unwrap();
        assert!((got - s.prob as f64).abs() < 1e-5);
    }
    // The same tensor in JSON form.
    let req = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": t.data}],
                     "outputs": [{"name": "top_k_indices"}]});
    let (code, v) = post_json(a, infer_path(), &req);
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        output(&v, "top_k_indices")["data"][0],
        json!(want.top[0].index)
    );
}

fn multipart(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "kilnboundary7MA4YWxkTrZu0gW";
    let mut body = vec![];
    for (name, data) in files {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[test]
fn v1_classify_raw_and_multipart() {
    let a = server();
    let paths = photos(2);
    let want: Vec<_> = paths
        .iter()
        .map(|p| reference().classify_path(p, 5).unwrap())
        .collect();
    let raw = std::fs::read(&paths[0]).unwrap();
    let (c, _, body) = post(a, "/v1/classify", &[("content-type", "image/jpeg")], &raw);
    assert_eq!(c, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["path"], "body");
    assert_eq!(v["top"][0]["index"], json!(want[0].top[0].index));
    assert_eq!(v["top"][0]["label"], json!(want[0].top[0].label));
    assert_eq!(v["uncertain"], false);
    assert!(v["decoded_size"].is_array());

    let second = std::fs::read(&paths[1]).unwrap();
    let (ct, form) = multipart(&[
        ("a.jpg", raw.as_slice()),
        ("notes.txt", &b"hello, not an image"[..]),
        ("b.jpg", second.as_slice()),
    ]);
    let (c, _, body) = post(
        a,
        "/v1/classify?top_k=2&threshold=0.999",
        &[("content-type", &ct)],
        &form,
    );
    assert_eq!(c, 200);
    let lines: Vec<Value> = String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["path"], "a.jpg");
    assert_eq!(lines[0]["top"].as_array().unwrap().len(), 2);
    assert_eq!(lines[0]["top"][0]["index"], json!(want[0].top[0].index));
    assert_eq!(lines[0]["uncertain"], json!(want[0].top[0].prob < 0.999));
    assert!(
        lines[1]["error"].as_str().unwrap().contains("notes.txt"),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2]["top"][0]["index"], json!(want[1].top[0].index));
}

/// `/v1/explain` answers the picture `kiln explain` renders for the same photo (the same
/// pipeline in this process: `explain_path` + `render`), pixel for pixel, for the top-1 class
/// and for a class asked by index; bad input is a 400 with the protocol's error.
#[test]
fn v1_explain_is_kiln_explains_picture() {
    let a = server();
    let path = &photos(3)[2];
    let raw = std::fs::read(path).unwrap();
    let decode_png = |b: &[u8]| {
        image::load_from_memory_with_format(b, image::ImageFormat::Png)
            .expect("a PNG")
            .to_rgb8()
    };
    for (query, select) in [
        ("", kiln_runtime::ClassSelect::Top(1)),
        ("?class=7", kiln_runtime::ClassSelect::Classes(vec![7])),
    ] {
        let (e, photo) = reference().explain_path(path, &select, 5).unwrap();
        let want = kiln_runtime::render::render(&photo, &e.cams[0]);
        let (c, hs, body) = post(a, &format!("/v1/explain{query}"), &[], &raw);
        assert_eq!(c, 200, "{}", String::from_utf8_lossy(&body));
        let header = |n: &str| {
            hs.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {n} header in {hs:?}"))
        };
        assert_eq!(header("content-type"), "image/png");
        assert_eq!(header("kiln-class"), e.cams[0].class.index.to_string());
        assert_eq!(header("kiln-rank"), e.cams[0].rank.to_string());
        let got = decode_png(&body);
        assert_eq!(got.dimensions(), want.dimensions(), "{query}");
        assert!(
            got == want,
            "{query}: the picture differs from kiln explain's"
        );
    }
    let (c, _, body) = post(a, "/v1/explain", &[], b"not an image at all");
    assert_eq!(c, 400);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(error_of(&v).contains("body"), "{v}");
    let (c, _, body) = post(a, "/v1/explain?class=1000", &[], &raw);
    assert_eq!(c, 400);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(error_of(&v).contains("out of range"), "{v}");
    let (c, _, _) = post(a, "/v1/explain?model=nope", &[], &raw);
    assert_eq!(c, 404);
}

/// Each fault is that request's clear error; the server answers the next good request.
#[test]
fn faults_are_per_request_errors() {
    let a = server();
    let good = std::fs::read(&photos(1)[0]).unwrap();
    let want = reference().classify_path(&photos(1)[0], 5).unwrap();
    let check_good = || {
        let (c, _, b) = post(a, "/v1/classify", &[], &good);
        assert_eq!(c, 200);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["top"][0]["index"], json!(want.top[0].index));
    };
    let bytes_req = |img: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(img);
        json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}]})
    };
    // Not an image.
    let (c, v) = post_json(
        a,
        infer_path(),
        &bytes_req(b"this is plain text, not a picture"),
    );
    assert_eq!(c, 400);
    assert!(error_of(&v).contains("image[0]"), "{v}");
    // A truncated JPEG.
    let (c, v) = post_json(a, infer_path(), &bytes_req(&good[..good.len() / 3]));
    assert_eq!(c, 400, "{v}");
    assert!(error_of(&v).contains("image[0]"), "{v}");
    // A decompression bomb: a BMP header claiming 60000 x 60000 pixels, no pixel data.
    let mut bmp = vec![];
    bmp.extend_from_slice(b"BM");
    bmp.extend_from_slice(&(54u32).to_le_bytes());
    bmp.extend_from_slice(&[0, 0, 0, 0]);
    bmp.extend_from_slice(&(54u32).to_le_bytes());
    bmp.extend_from_slice(&(40u32).to_le_bytes());
    bmp.extend_from_slice(&(60_000i32).to_le_bytes());
    bmp.extend_from_slice(&(60_000i32).to_le_bytes());
    bmp.extend_from_slice(&(1u16).to_le_bytes());
    bmp.extend_from_slice(&(24u16).to_le_bytes());
    bmp.extend_from_slice(&[0; 24]);
    let t = Instant::now();
    let (c, v) = post_json(a, infer_path(), &bytes_req(&bmp));
    assert_eq!(c, 400, "{v}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "refused from the header, not decoded"
    );
    assert!(error_of(&v).to_lowercase().contains("pixel"), "{v}");
    // Wrong datatype, wrong shape, unknown input and output.
    let (c, v) = post_json(
        a,
        infer_path(),
        &json!({"inputs": [{"name": "image", "datatype": "INT32", "shape": [1], "data": [1]}]}),
    );
    assert_eq!(c, 400);
    assert!(error_of(&v).contains("INT32"), "{v}");
    let (c, v) = post_json(
        a,
        infer_path(),
        &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": vec![0.0; 192]}]}),
    );
    assert_eq!(c, 400);
    assert!(error_of(&v).contains("[N, 3, 224, 224]"), "{v}");
    let (c, v) = post_json(
        a,
        infer_path(),
        &json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["aGk="]}]}),
    );
    assert_eq!(c, 400);
    assert!(error_of(&v).contains("shape"), "{v}");
    let (c, v) = post_json(
        a,
        infer_path(),
        &json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1], "data": [0.0]}]}),
    );
    assert_eq!(c, 400);
    assert!(error_of(&v).contains("unknown input"), "{v}");
    let mut r = bytes_req(&good);
    r["outputs"] = json!([{"name": "logits"}]);
    let (c, v) = post_json(a, infer_path(), &r);
    assert_eq!(c, 400);
    assert!(error_of(&v).contains("unknown output `logits`"), "{v}");
    let mut r = bytes_req(&good);
    r["parameters"] = json!({"tta": "sideways"});
    let (c, v) = post_json(a, infer_path(), &r);
    assert_eq!(c, 400);
    assert!(error_of(&v).contains("tta"), "{v}");
    // Unknown model and version.
    let (c, v) = post_json(a, "/v2/models/resnet9000/infer", &bytes_req(&good));
    assert_eq!(c, 404);
    assert!(error_of(&v).contains("resnet9000"), "{v}");
    let (c, v) = post_json(
        a,
        "/v2/models/mobilenet_v2/versions/2/infer",
        &bytes_req(&good),
    );
    assert_eq!(c, 404);
    assert!(error_of(&v).contains("version"), "{v}");
    // Malformed JSON.
    let (c, _, b) = post(a, infer_path(), &[], b"{\"inputs\": [");
    assert_eq!(c, 400);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert!(error_of(&v).contains("malformed"), "{v}");
    // A binary header length that lies (longer than the body, then a binary size that lies).
    let (c, _, b) = post(
        a,
        infer_path(),
        &[("inference-header-content-length", "999999")],
        b"{}",
    );
    assert_eq!(c, 400);
    assert!(String::from_utf8_lossy(&b).contains("inference-header-content-length"));
    let (mut body, n) = binary_request(
        std::slice::from_ref(&good),
        json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}),
    );
    body.truncate(body.len() - 10);
    let (c, _, b) = post(
        a,
        infer_path(),
        &[("inference-header-content-length", &n.to_string())],
        &body,
    );
    assert_eq!(c, 400);
    assert!(
        String::from_utf8_lossy(&b).contains("remain"),
        "{}",
        String::from_utf8_lossy(&b)
    );
    // The deadline: 1 ms cannot cover decoding eight photos.
    let imgs: Vec<String> = photos(8)
        .iter()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap()))
        .collect();
    let r = json!({"parameters": {"timeout_ms": 1},
                   "inputs": [{"name": "image", "datatype": "BYTES", "shape": [8], "data": imgs}]});
    let (c, v) = post_json(a, infer_path(), &r);
    assert_eq!(c, 504, "{v}");
    assert!(error_of(&v).contains("deadline"), "{v}");
    check_good();

    // A client that disconnects mid-body.
    {
        let mut s = TcpStream::connect(a).unwrap();
        write!(
            s,
            "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        )
        .unwrap();
        s.write_all(&good[..1000]).unwrap();
    }
    // A slow client trickling its headers is closed by the read timeout (1 s here).
    {
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /v2 HTTP/1.1\r\nHo").unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the slow client was not cut off"
        );
        // hyper may answer 408 before closing; no request was served.
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.contains("408"), "{text}");
    }
    // 1,000 connections at once, then the good request still answers.
    let conns: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect(a).ok())
        .collect();
    assert_eq!(conns.len(), 1000);
    check_good();
    drop(conns);
    check_good();
    let (_, m) = get(a, "/metrics");
    assert!(
        m.contains("kiln_requests_total{model=\"mobilenet_v2\",outcome=\"bad_request\"}"),
        "{m}"
    );
    assert!(
        m.contains("kiln_requests_total{model=\"mobilenet_v2\",outcome=\"timeout\"}"),
        "{m}"
    );
}

#[test]
fn body_over_the_limit_is_413() {
    let (a, _stop, _h) = start(ServeConfig {
        max_body: 64 << 10,
        ..config()
    });
    let big = vec![b' '; 200 << 10];
    let (c, _, b) = post(a, infer_path(), &[], &big);
    assert_eq!(c, 413, "{}", String::from_utf8_lossy(&b));
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert!(error_of(&v).contains("limit"), "{v}");
    let (c, _, _) = post(a, "/v1/classify", &[], &big);
    assert_eq!(c, 413);
    assert_eq!(get(a, "/v2/health/ready").0, 200);
}

/// Many concurrent clients, each checking its own answers: results are never mixed, and
/// requests do share forward passes.
#[test]
fn concurrent_clients_get_their_own_answers() {
    let a = server();
    let paths = photos(16);
    let want: Vec<usize> = paths
        .iter()
        .map(|p| reference().classify_path(p, 1).unwrap().top[0].index)
        .collect();
    let distinct: std::collections::HashSet<_> = want.iter().collect();
    assert!(distinct.len() > 8, "the photos must tell the clients apart");
    std::thread::scope(|s| {
        for (i, p) in paths.iter().enumerate() {
            let want = want[i];
            s.spawn(move || {
                let img = std::fs::read(p).unwrap();
                for _ in 0..3 {
                    let (c, _, b) = post(a, "/v1/classify?top_k=1", &[], &img);
                    assert_eq!(c, 200);
                    let v: Value = serde_json::from_slice(&b).unwrap();
                    assert_eq!(
                        v["top"][0]["index"],
                        json!(want),
                        "client {i} got another's answer"
                    );
                }
            });
        }
    });
    let (_, m) = get(a, "/metrics");
    let line = m
        .lines()
        .find(|l| l.starts_with("kiln_batch_size_count"))
        .unwrap();
    let sum = m
        .lines()
        .find(|l| l.starts_with("kiln_batch_size_sum"))
        .unwrap();
    let n: f64 = line.split_whitespace().last().unwrap().parse().unwrap();
    let s: f64 = sum.split_whitespace().last().unwrap().parse().unwrap();
    assert!(
        s / n > 1.0,
        "no forward pass was shared: {n} batches, {s} tensors"
    );
}

#[test]
fn full_queue_is_503_with_retry_after() {
    let (a, _stop, _h) = start(ServeConfig {
        batch: BatchConfig {
            max_batch: 1,
            max_queue_delay: Duration::ZERO,
            queue_capacity: 1,
        },
        ..config()
    });
    let paths = photos(12);
    let results: Vec<(u16, bool, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = paths
            .iter()
            .map(|p| {
                s.spawn(move || {
                    let img = std::fs::read(p).unwrap();
                    let (c, hs, b) = post(a, "/v1/classify", &[], &img);
                    let retry = hs.iter().any(|(k, v)| k == "retry-after" && v == "1");
                    let v = serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null);
                    (c, retry, v)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert!(!busy.is_empty(), "a queue of 1 took 12 concurrent requests");
    for r in &busy {
        assert!(r.1, "503 without Retry-After");
        assert!(error_of(&r.2).contains("busy"));
    }
    for (r, p) in results.iter().zip(&paths) {
        if r.0 == 200 {
            assert_eq!(
                r.2["top"][0]["index"],
                json!(reference().classify_path(p, 1).unwrap().top[0].index)
            );
        } else {
            assert_eq!(r.0, 503);
        }
    }
}

/// Shutdown finishes the request in flight, then the server stops.
#[test]
fn graceful_shutdown_finishes_in_flight() {
    let (a, stop, h) = start(config());
    let paths = photos(8);
    let imgs: Vec<String> = paths
        .iter()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap()))
        .collect();
    let r = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [8], "data": imgs}],
                   "outputs": [{"name": "top_k_indices"}]});
    let client = std::thread::spawn(move || post_json(a, infer_path(), &r));
    std::thread::sleep(Duration::from_millis(30));
    stop.send(()).unwrap();
    let (c, v) = client.join().unwrap();
    assert_eq!(c, 200, "{v}");
    assert_eq!(output(&v, "top_k_indices")["shape"], json!([8, 5]));
    h.join().unwrap();
    assert!(
        TcpStream::connect(a).is_err(),
        "still accepting after shutdown"
    );
}
