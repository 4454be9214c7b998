//! `kiln serve` as a user runs it: the binary starts, answers a multipart photo on
//! `/v1/classify` the way `classify --format jsonl` does, and exits 0 on SIGTERM.

mod common;

use common::{http, start_serve};
use std::process::Command;

#[cfg(unix)]
#[test]
fn serve_classifies_and_stops_on_sigterm() {
    let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/imagenet-sample/n01440764_tench.JPEG");
    let server = start_serve(&[]);
    let addr = server.addr.clone();
    let img = std::fs::read(&photo).unwrap();
    let mut body =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"tench.jpg\"\r\n\r\n"
            .to_vec();
    body.extend_from_slice(&img);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let mut req = format!(
        "POST /v1/classify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let resp = http(&addr, &req);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let json_line = resp
        .split("\r\n\r\n")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(json_line).unwrap();
    assert_eq!(v["path"], "tench.jpg");
    // The same photo through `kiln classify --format jsonl`.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["classify", "--format", "jsonl", "--quiet"])
        .arg(&photo)
        .output()
        .unwrap();
    let want: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(v["top"], want["top"], "serve and classify disagree");
    assert_eq!(v["uncertain"], want["uncertain"]);

    let status = server.stop();
    assert!(
        status.success(),
        "kiln serve exited with {status} on SIGTERM"
    );
}
