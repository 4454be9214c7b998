//! `kiln serve` as a user runs it: the binary starts, answers a multipart photo on
//! `/v1/classify` the way `classify --format jsonl` does, and exits 0 on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn http(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[cfg(unix)]
#[test]
fn serve_classifies_and_stops_on_sigterm() {
    let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/imagenet-sample/n01440764_tench.JPEG");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--port", "0", "--grpc-port", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.trim().strip_prefix("kiln serve: REST on http://") {
            addr = Some(rest.split(',').next().unwrap().to_string());
            break;
        }
        line.clear();
    }
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in err.lines() {});
    let addr = addr.expect("the server printed its address");
    let t = Instant::now();
    while !http(
        &addr,
        b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .starts_with("HTTP/1.1 200")
    {
        assert!(t.elapsed() < Duration::from_secs(120), "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
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

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "kiln serve exited with {status} on SIGTERM"
    );
}
