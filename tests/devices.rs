//! `kiln devices`, the device and dtype errors of classify / bench / explain, and the
//! multi-device bench table, from the command line (CPU only: what CI can run).

mod common;

use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(common::kiln_bin())
        .args(args)
        .output()
        .expect("kiln runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn devices_lists_the_cpu_and_what_is_missing() {
    let o = kiln(&["devices"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with("cpu  "), "{out}");
    assert!(out.contains("kernels"), "{out}");
    assert!(out.contains("cores") && out.contains("physical"), "{out}");
    if !cfg!(feature = "cuda") {
        assert!(
            out.contains("cuda: not in this build (cargo build --release --features cuda)"),
            "{out}"
        );
    }

    let o = kiln(&["devices", "--format", "json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["devices"][0]["name"], "cpu");
    let details = v["devices"][0]["details"].as_array().unwrap();
    let kernels = details.iter().find(|d| d[0] == "kernels").expect("kernels");
    // The ISA kiln-kernels chose, capped by KILN_ISA when set.
    let o = Command::new(common::kiln_bin())
        .args(["devices", "--format", "json"])
        .env("KILN_ISA", "baseline")
        .output()
        .unwrap();
    let capped: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let capped = capped["devices"][0]["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d[0] == "kernels")
        .unwrap()[1]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        capped.starts_with("baseline") && capped.contains("KILN_ISA=baseline"),
        "{capped} (uncapped: {kernels})"
    );
}

/// A device this build lacks: exit 2, naming the cargo feature, for every subcommand that takes
/// one, before any image or model is read.
#[test]
fn absent_devices_are_usage_errors() {
    let photo = common::shared()
        .join("imagenet-sample")
        .join("n01440764_tench.JPEG");
    let photo = photo.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["classify", photo, "--device", "cuda:0"],
            "--features cuda",
        ),
        (
            vec!["classify", photo, "--device", "metal"],
            "--features metal",
        ),
        (
            vec!["explain", photo, "--device", "cuda:1"],
            "--features cuda",
        ),
        (
            vec!["bench", "--device", "cpu", "--device", "cuda:0"],
            "--features cuda",
        ),
        (
            vec!["classify", photo, "--device", "tpu:0"],
            "unknown device",
        ),
    ];
    for (args, want) in cases {
        if cfg!(feature = "cuda") && want == "--features cuda" {
            continue;
        }
        let o = kiln(&args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: nothing may run: {out}");
    }
}

/// f16 / bf16 on the CPU: a refusal naming what the CPU supports, exit 2, never a slow run.
#[test]
fn half_precision_on_the_cpu_is_refused() {
    let photo = common::shared()
        .join("imagenet-sample")
        .join("n01440764_tench.JPEG");
    let photo = photo.to_str().unwrap();
    for args in [
        vec!["classify", photo, "--dtype", "f16"],
        vec!["classify", photo, "--dtype", "bf16", "--device", "cpu"],
        vec!["bench", "--dtype", "f16", "--iters", "1"],
        vec!["explain", photo, "--dtype", "bf16"],
    ] {
        let o = kiln(&args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("the CPU computes in f32 only") && err.contains("--device cuda"),
            "{args:?}: {err}"
        );
    }
    let o = kiln(&["classify", photo, "--dtype", "f64"]);
    assert_eq!(o.status.code(), Some(2));
    // f32 on the CPU still classifies.
    let o = kiln(&["classify", photo, "--dtype", "f32", "--top-k", "1"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("tench"));
}

/// Several devices in one bench: one table, one JSON list, one entry per (device, batch).
#[test]
fn bench_across_devices() {
    let common_args = [
        "bench",
        "--model",
        "resnet18",
        "--size",
        "32",
        "--warmup",
        "0",
        "--iters",
        "2",
        "--batch",
        "1",
        "--batch",
        "3",
        "--device",
        "cpu",
        "--device",
        "cpu",
        "--threads",
        "1",
    ];
    let mut args = common_args.to_vec();
    args.extend(["--format", "json"]);
    let o = kiln(&args);
    assert!(o.status.success(), "{}", text(&o).1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let batches: Vec<u64> = rows.iter().map(|r| r["batch"].as_u64().unwrap()).collect();
    assert_eq!(batches, [1, 3, 1, 3]);
    for r in rows {
        assert_eq!(r["device"], "cpu");
        assert!(r["h2d_ms"].is_null() && r["peak_device_mem_mib"].is_null());
        assert_eq!(r["samples_ms"].as_array().unwrap().len(), 2);
        let (p50, ips) = (
            r["p50_ms"].as_f64().unwrap(),
            r["images_per_s"].as_f64().unwrap(),
        );
        let batch = r["batch"].as_f64().unwrap();
        assert!((ips - batch / p50 * 1e3).abs() < 1e-6 * ips);
    }

    let o = kiln(&common_args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("resnet18 (random weights), 32×32 input, f32"),
        "{out}"
    );
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &header[..8],
        ["device", "batch", "p50", "ms", "p99", "ms", "ms/image", "images/s"]
    );
    assert_eq!(lines.len(), 6, "{out}");
    for l in &lines[2..] {
        let cells: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(cells[0], "cpu", "{l}");
        assert_eq!(
            &cells[6..8],
            ["-", "-"],
            "no device memory or copy on the CPU: {l}"
        );
    }

    // Bad values: usage errors, before anything runs.
    for bad in [["--batch", "0"], ["--iters", "0"]] {
        let mut args = vec!["bench", "--device", "cpu"];
        args.extend(bad);
        let o = kiln(&args);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
    }
}
