//! Conformance with the protocol's own clients: `python/serve_conformance.py` drives a server
//! started here (REST and gRPC on free ports of 127.0.0.1) with Triton's `tritonclient`.
//!
//! The clients come from `.ci/install-serve-clients`; set `KILN_SERVE_CLIENT_PYTHON` to the
//! Python it prints (`target/serve-clients/bin/python`). Without it the test is skipped with a
//! loud message, except under CI (`CI` set), where it fails.

use std::path::PathBuf;
use std::time::Duration;

use kiln_runtime::Classifier;
use kiln_serve::ServeConfig;
use serde_json::json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn tritonclient_http_and_grpc() {
    let Some(python) = std::env::var_os("KILN_SERVE_CLIENT_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run .ci/install-serve-clients and set KILN_SERVE_CLIENT_PYTHON"
        );
        eprintln!("\n\n*** SKIPPED tritonclient conformance: KILN_SERVE_CLIENT_PYTHON is not set (run .ci/install-serve-clients) ***\n");
        return;
    };
    let c = || Classifier::builder().model("mobilenet_v2").build().unwrap();
    let reference = c();
    let dir = root().join("../shared/imagenet-sample");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "JPEG"))
        .collect();
    paths.sort();
    let paths: Vec<PathBuf> = paths.into_iter().step_by(50).take(4).collect();
    let images: Vec<_> = paths
        .iter()
        .map(|p| json!([p, reference.classify_path(p, 1).unwrap().top[0].index]))
        .collect();
    let img = kiln_preprocess::decode_file(&paths[0], &Default::default())
        .unwrap()
        .rgb;
    let t = reference.preprocess(&img);
    let tensor_top1 = reference
        .decode_logits(&reference.logits(std::slice::from_ref(&t)).unwrap()[0], 1)
        .top[0]
        .index;
    let tmp = std::env::temp_dir().join(format!("kiln-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let tensor = tmp.join("tensor.f32");
    std::fs::write(
        &tensor,
        t.data
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let expect = tmp.join("expect.json");
    std::fs::write(
        &expect,
        json!({"model": "mobilenet_v2", "images": images, "tensor": tensor, "tensor_top1": tensor_top1}).to_string(),
    )
    .unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = rt
        .block_on(kiln_serve::start(
            ServeConfig {
                port: 0,
                grpc_port: Some(0),
                ..Default::default()
            },
            vec![("mobilenet_v2".into(), c())],
            async {
                let _ = stop_rx.await;
            },
        ))
        .unwrap();
    let state = running.state.clone();
    let t0 = std::time::Instant::now();
    while !state.ready() {
        assert!(t0.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = std::process::Command::new(python)
        .arg(root().join("python/serve_conformance.py"))
        .arg("--http")
        .arg(running.http_addr.to_string())
        .arg("--grpc")
        .arg(running.grpc_addr.unwrap().to_string())
        .arg("--expect")
        .arg(&expect)
        .output()
        .expect("running the conformance script");
    let _ = stop_tx.send(());
    rt.block_on(running.wait());
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "tritonclient conformance failed:\n{text}"
    );
    assert!(text.contains("all conformance checks passed"), "{text}");
}
