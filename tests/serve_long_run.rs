//! Bounded memory for a server (issue 13, point 4): `kiln serve` answering a long stream of
//! requests — photos of mixed sizes on `/v1/classify` and through the Open Inference Protocol,
//! interleaved with faults (corrupt images, malformed JSON, binary data that lies about its
//! length, unknown models) — keeps its peak RSS flat: the server's VmHWM after all requests
//! stays under 1.5× its VmHWM after the first 500, and every request gets its expected status.
//! CI runs 2,000 requests; `KILN_SERVE_REQUESTS=10000` runs the full count.

#![cfg(target_os = "linux")]

mod common;

use common::{http, start_serve};
use std::time::Instant;

use base64::Engine as _;

fn post(path: &str, content_type: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A server process's `/proc/PID/status` field in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A JPEG of `w`×`h` with a pattern that depends on `seed`.
fn jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x + y + seed * 37) % 256) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(vec![]);
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

#[test]
fn server_memory_stays_flat_over_many_requests_with_faults() {
    let n: usize = std::env::var("KILN_SERVE_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let server = start_serve(&[]);
    let (addr, pid) = (server.addr.clone(), server.child.id());

    // Photos from 48 px to ~640 px per side, each aspect different.
    let photos: Vec<Vec<u8>> = (0..12u32)
        .map(|i| jpeg(48 + i * 53, 640 - i * 45, i))
        .collect();
    let corrupt = {
        let mut b = photos[5].clone();
        b.truncate(b.len() / 3);
        b.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        b
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut after_warm = 0;
    let started = Instant::now();
    for i in 0..n {
        let photo = &photos[i % photos.len()];
        let (req, want) = match i % 8 {
            0 | 1 => (post("/v1/classify", "image/jpeg", "", photo), "200"),
            2 => {
                let j = serde_json::json!({"inputs": [{"name": "image", "shape": [1],
                    "datatype": "BYTES", "data": [b64.encode(photo)]}]});
                (
                    post(
                        "/v2/models/mobilenet_v2/infer",
                        "application/json",
                        "",
                        j.to_string().as_bytes(),
                    ),
                    "200",
                )
            }
            3 => {
                // Triton's binary tensor extension: one BYTES element with its length prefix.
                let mut data = (photo.len() as u32).to_le_bytes().to_vec();
                data.extend_from_slice(photo);
                let h = serde_json::json!({"inputs": [{"name": "image", "shape": [1],
                    "datatype": "BYTES", "parameters": {"binary_data_size": data.len()}}],
                    "parameters": {"binary_data_output": true}})
                .to_string();
                let mut body = h.clone().into_bytes();
                body.extend_from_slice(&data);
                let extra = format!("Inference-Header-Content-Length: {}\r\n", h.len());
                (
                    post(
                        "/v2/models/mobilenet_v2/infer",
                        "application/octet-stream",
                        &extra,
                        &body,
                    ),
                    "200",
                )
            }
            4 => (post("/v1/classify", "image/jpeg", "", &corrupt), "400"),
            5 => (
                post(
                    "/v2/models/mobilenet_v2/infer",
                    "application/json",
                    "",
                    b"{\"inputs\": [{\"name\": \"image\", \"shape\": [1], \"datat",
                ),
                "400",
            ),
            6 => (
                post(
                    "/v2/models/mobilenet_v2/infer",
                    "application/octet-stream",
                    "Inference-Header-Content-Length: 99999999\r\n",
                    b"{\"inputs\": []}",
                ),
                "400",
            ),
            _ => (
                post(
                    "/v2/models/no_such_model/infer",
                    "application/json",
                    "",
                    b"{}",
                ),
                "404",
            ),
        };
        let resp = http(&addr, &req);
        let status = resp.split(' ').nth(1).unwrap_or("");
        assert_eq!(status, want, "request {i} (kind {}): {resp:.300}", i % 8);
        if i + 1 == 500.min(n) {
            after_warm = status_kb(pid, "VmHWM:");
        }
    }
    let (peak, rss) = (status_kb(pid, "VmHWM:"), status_kb(pid, "VmRSS:"));
    eprintln!(
        "requests {n} in {:.1} s: server VmHWM after 500 {after_warm} kB, after all {peak} kB, VmRSS {rss} kB",
        started.elapsed().as_secs_f64()
    );
    let status = server.stop();
    assert!(status.success(), "server exit: {status:?}");
    assert!(
        peak * 2 < after_warm * 3,
        "server peak RSS grew from {after_warm} kB to {peak} kB over {n} requests"
    );
}
