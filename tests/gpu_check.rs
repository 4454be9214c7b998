//! The CPU-runnable parts of `scripts/gpu-check.sh`: its argument handling, and the comparison
//! and table script (`python/gpu_check.py`, through its unit tests on fake inputs).

mod common;

use std::process::Command;

fn python() -> String {
    std::env::var("KILN_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn comparison_and_table_script() {
    let o = Command::new(python())
        .args(["-m", "unittest", "-v", "python/test_gpu_check.py"])
        .current_dir(common::repo())
        .output()
        .expect("python3 runs (set KILN_PYTHON to choose one)");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("Ran 5 tests"), "{err}");
}

#[test]
fn gpu_check_arguments() {
    let script = common::repo().join("scripts/gpu-check.sh");
    let run = |args: &[&str]| {
        let o = Command::new("bash")
            .arg(&script)
            .args(args)
            .output()
            .expect("bash runs");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, _, out) = run(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("--kiln") && out.contains("--quick"), "{out}");
    let not_exe = common::repo().join("README.md");
    let not_exe = not_exe.to_str().unwrap();
    for (args, want) in [
        (vec!["--bogus"], "unknown argument '--bogus'"),
        (vec![], "--kiln PATH is required"),
        (vec!["--kiln"], "--kiln needs a value"),
        (
            vec!["--kiln", "/nonexistent/kiln"],
            "not an executable file",
        ),
        (vec!["--kiln", not_exe], "not an executable file"),
        (
            vec!["--kiln", "/bin/true", "--photos", "/nonexistent"],
            "not a directory",
        ),
    ] {
        let (code, err, _) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // No PyTorch with CUDA here: a set-up error naming the cause, exit 2, nothing run.
    let (code, err, _) = run(&["--kiln", "/bin/true", "--python", "/nonexistent/python"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot run PyTorch on a GPU"), "{err}");
}
