//! The web page at `/`, tested in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `.ci/install-browser`) driven over WebDriver.
//!
//! The test starts `kiln serve` on a free port of 127.0.0.1, opens `/`, chooses two real photos
//! from `../shared/imagenet-sample` (one confident, one below the page's "uncertain" threshold)
//! together with a file that is not an image, waits for every card, and asserts that for each
//! photo the label and the five bars the page shows are those `kiln classify` gives, that
//! "uncertain" is shown exactly for the photo below the threshold, that the decoded size and
//! the time are shown, and that the bad file gets its own error while the photos are classified.
//! Then it presses the confident photo's "heatmap" button and asserts that the card shows the
//! picture `kiln explain` writes for that photo, pixel for pixel (a checksum of the pixels the
//! browser decoded, read back through a canvas), and that pressing it again shows the photo.
//! Screenshots are saved as `target/test-output/web_page.png` and `web_page_heatmap.png`.
//!
//! Without Chromium the test fails, naming the install script; `KILN_SKIP_BROWSER_TEST=1` skips it
//! on a machine where the browser cannot be installed.

use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The W3C WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A confident photo (top-1 0.90) and an uncertain one (top-1 0.10, below the page's default
/// threshold of 0.5), both from the shared ImageNet sample.
const PHOTOS: [&str; 2] = [
    "../shared/imagenet-sample/n01440764_tench.JPEG",
    "../shared/imagenet-sample/n02906734_broom.JPEG",
];
/// The page's default "uncertain below" threshold (index.html, `#threshold`).
const PAGE_THRESHOLD: f64 = 0.5;

/// What `kiln classify` says about one photo.
struct Expected {
    file: String,
    top5: Vec<String>,
    top1_prob: f64,
}

/// A child process killed when the test ends, passing or not.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port on 127.0.0.1")
        .port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

/// Polls `url` until it answers 200, or fails after `limit` naming what it waited for.
fn wait_ok(agent: &ureq::Agent, url: &str, limit: Duration, child: &mut Child, what: &str) {
    let start = Instant::now();
    loop {
        if let Ok(r) = agent.get(url).call() {
            if r.status().as_u16() == 200 {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited ({status}) before {url} answered");
        }
        assert!(
            start.elapsed() < limit,
            "{what}: {url} not ready after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One WebDriver session: a thin client over the W3C protocol's JSON commands.
struct Driver {
    agent: ureq::Agent,
    base: String,
}

impl Driver {
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{}", self.base, path);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string()),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: reading the answer: {e}"));
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: not JSON ({e}): {text}"));
        assert_eq!(status, 200, "WebDriver {method} {path} failed: {v}");
        v["value"].clone()
    }

    /// Runs `script` in the page and returns its value.
    fn script(&self, session: &str, script: &str) -> Value {
        self.cmd(
            "POST",
            &format!("/session/{session}/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }
}

/// What `kiln classify --format jsonl` says about `photo`: its top-5 labels and top-1 probability.
fn classify_cli(photo: &Path) -> Expected {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["classify", "--format", "jsonl", "-q", "--top-k", "5"])
        .arg(photo)
        .output()
        .expect("run kiln classify");
    assert!(out.status.success(), "kiln classify failed: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("classify's jsonl");
    let top = v["top"].as_array().expect("top");
    Expected {
        file: photo.file_name().unwrap().to_string_lossy().to_string(),
        top5: top
            .iter()
            .map(|s| s["label"].as_str().expect("label").to_string())
            .collect(),
        top1_prob: top[0]["prob"].as_f64().expect("prob"),
    }
}

#[test]
fn page_classifies_a_photo_in_headless_chromium() {
    let have = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !(have("chromium") && have("chromedriver")) {
        if std::env::var_os("KILN_SKIP_BROWSER_TEST").is_some() {
            eprintln!("KILN_SKIP_BROWSER_TEST set and no chromium/chromedriver: skipped");
            return;
        }
        panic!(
            "the browser test needs chromium and chromedriver on PATH: run .ci/install-browser \
             (or set KILN_SKIP_BROWSER_TEST=1 where they cannot be installed)"
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let photos: Vec<PathBuf> = PHOTOS
        .iter()
        .map(|p| root.join(p).canonicalize().expect("a shared photo"))
        .collect();
    let out_dir = root.join("target/test-output");
    std::fs::create_dir_all(&out_dir).expect("create target/test-output");
    // A file that is not an image: the page must show its error and still classify the photo.
    let bad = out_dir.join("not-an-image.jpg");
    std::fs::write(&bad, b"this is text, not a JPEG\n").expect("write the bad file");

    let want: Vec<Expected> = photos.iter().map(|p| classify_cli(p)).collect();
    assert!(
        want[0].top1_prob >= PAGE_THRESHOLD && want[1].top1_prob < PAGE_THRESHOLD,
        "the photos no longer span the threshold: {:?}",
        want.iter().map(|w| w.top1_prob).collect::<Vec<_>>()
    );

    let agent = agent();
    let port = free_port();
    let grpc_port = free_port();
    let mut server = Guard(
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(root)
            .args(["serve", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--grpc-port", &grpc_port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start kiln serve"),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ok(
        &agent,
        &format!("{base}/v2/health/ready"),
        Duration::from_secs(180),
        &mut server.0,
        "kiln serve",
    );

    let wd_port = free_port();
    let mut chromedriver = Guard(
        Command::new("chromedriver")
            .arg(format!("--port={wd_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let driver = Driver {
        agent: agent.clone(),
        base: format!("http://127.0.0.1:{wd_port}"),
    };
    wait_ok(
        &agent,
        &format!("{}/status", driver.base),
        Duration::from_secs(30),
        &mut chromedriver.0,
        "chromedriver",
    );

    let session = driver.cmd(
        "POST",
        "/session",
        Some(json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": which("chromium"),
                // --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1200,900"]
            }
        }}})),
    );
    let sid = session["sessionId"]
        .as_str()
        .expect("a WebDriver session id")
        .to_string();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_page(&driver, &sid, &base, &photos, &bad, &want, &out_dir)
    }));
    // Always end the session so no browser outlives the test.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        driver.cmd("DELETE", &format!("/session/{sid}"), None)
    }));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn which(bin: &str) -> String {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(bin))
                .find(|f| f.is_file())
        })
        .map(|p: PathBuf| p.display().to_string())
        .unwrap_or_else(|| bin.to_string())
}

fn run_page(
    driver: &Driver,
    sid: &str,
    base: &str,
    photos: &[PathBuf],
    bad: &Path,
    want: &[Expected],
    out_dir: &Path,
) {
    driver.cmd(
        "POST",
        &format!("/session/{sid}/url"),
        Some(json!({"url": format!("{base}/")})),
    );
    let title = driver.cmd("GET", &format!("/session/{sid}/title"), None);
    assert!(
        title.as_str().unwrap_or("").contains("kiln"),
        "page title: {title}"
    );
    let input = driver.cmd(
        "POST",
        &format!("/session/{sid}/element"),
        Some(json!({"using": "css selector", "value": "input[type=file]"})),
    );
    let eid = input[ELEMENT_KEY]
        .as_str()
        .expect("the file input's element id")
        .to_string();
    // Choosing files, as a person does in the file dialog: one path per line for a `multiple` input.
    let mut chosen: Vec<String> = photos.iter().map(|p| p.display().to_string()).collect();
    chosen.push(bad.display().to_string());
    driver.cmd(
        "POST",
        &format!("/session/{sid}/element/{eid}/value"),
        Some(json!({"text": chosen.join("\n")})),
    );

    // Wait until no card is pending.
    let start = Instant::now();
    let cards = loop {
        let v = driver.script(
            sid,
            "return Array.from(document.querySelectorAll('.result')).map(c => ({
                file: c.dataset.file, state: c.dataset.state,
                label: (c.querySelector('.verdict .label') || {}).textContent || null,
                bars: Array.from(c.querySelectorAll('.row .lab')).map(e => e.textContent),
                probs: Array.from(c.querySelectorAll('.row .prob')).map(e => e.textContent),
                meta: (c.querySelector('.meta') || {}).textContent || '',
                error: (c.querySelector('.error') || {}).textContent || null,
                uncertainTag: !!c.querySelector('.verdict .uncertain-tag'),
                visible: c.getBoundingClientRect().height > 0 }))",
        );
        let arr = v.as_array().cloned().unwrap_or_default();
        if arr.len() == chosen.len() && arr.iter().all(|c| c["state"] != "pending") {
            break arr;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the page did not show every result within 60 s: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    save_screenshot(driver, sid, &out_dir.join("web_page.png"));

    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().to_string();
    let card = |file: &str| {
        cards
            .iter()
            .find(|c| c["file"] == file)
            .unwrap_or_else(|| panic!("no card for {file}: {cards:?}"))
    };
    for w in want {
        let good = card(&w.file);
        assert_eq!(good["state"], "done", "{}'s card: {good}", w.file);
        assert_eq!(good["visible"], true, "{}'s card is not visible", w.file);
        assert_eq!(
            good["label"].as_str(),
            Some(w.top5[0].as_str()),
            "{}: the page's label differs from kiln classify's",
            w.file
        );
        let bars: Vec<&str> = good["bars"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            bars, w.top5,
            "{}: the page's top-5 bars differ from classify's",
            w.file
        );
        let probs = good["probs"].as_array().unwrap();
        assert!(
            probs
                .iter()
                .all(|p| p.as_str().is_some_and(|s| s.ends_with('%'))),
            "{}: probabilities: {probs:?}",
            w.file
        );
        let meta = good["meta"].as_str().unwrap();
        assert!(
            meta.contains("×") && meta.contains(" ms"),
            "{}: the decoded size and the time are not shown: {meta:?}",
            w.file
        );
        let uncertain = w.top1_prob < PAGE_THRESHOLD;
        assert_eq!(
            good["uncertainTag"], uncertain,
            "{}: top-1 {:.3}, threshold {PAGE_THRESHOLD}: 'uncertain' shown wrongly",
            w.file, w.top1_prob
        );
    }

    let bad_card = card(&name(bad));
    assert_eq!(
        bad_card["state"], "error",
        "the bad file's card: {bad_card}"
    );
    let err = bad_card["error"].as_str().unwrap_or("");
    assert!(!err.trim().is_empty(), "the bad file's error is empty");

    heatmap_toggle(driver, sid, &photos[0], out_dir);
}

/// A weighted sum of an RGB picture's channels (1·R + 3·G + 7·B over every pixel), computed the
/// same way in the page; the weights make a channel swap change it.
const CHECKSUM_JS: &str =
    "let s = 0; for (let i = 0; i < d.length; i += 4) { s += d[i] + 3 * d[i + 1] + 7 * d[i + 2]; }";

fn checksum(img: &image::RgbImage) -> f64 {
    img.pixels()
        .map(|p| p[0] as f64 + 3.0 * p[1] as f64 + 7.0 * p[2] as f64)
        .sum()
}

/// Presses `photo`'s heatmap button: the card must show `kiln explain`'s picture of that photo,
/// then the photo again when pressed a second time.
fn heatmap_toggle(driver: &Driver, sid: &str, photo: &Path, out_dir: &Path) {
    let file = photo.file_name().unwrap().to_string_lossy().to_string();
    let cli_dir = out_dir.join("web_page_explain");
    let _ = std::fs::remove_dir_all(&cli_dir);
    std::fs::create_dir_all(&cli_dir).expect("create the explain output directory");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("explain")
        .arg(photo)
        .arg("--out")
        .arg(&cli_dir)
        .output()
        .expect("run kiln explain");
    assert!(out.status.success(), "kiln explain failed: {out:?}");
    let pngs: Vec<PathBuf> = std::fs::read_dir(&cli_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    assert_eq!(pngs.len(), 1, "kiln explain wrote {pngs:?}");
    let want = image::open(&pngs[0]).expect("explain's PNG").to_rgb8();

    let card = format!("document.querySelector('.result[data-file=\"{file}\"]')");
    let press = format!("{card}.querySelector('.heat-toggle').click(); return true;");
    let state = format!(
        "const c = {card}; const img = c.querySelector('.photo img');
         const b = c.querySelector('.heat-toggle');
         const r = {{ view: c.dataset.view, pressed: b.getAttribute('aria-pressed'),
                     complete: img.complete, w: img.naturalWidth, h: img.naturalHeight,
                     isPhoto: img.src === c.photoUrl,
                     error: (c.querySelector('.heat-error') || {{}}).textContent || null }};
         if (r.view === 'heatmap' && r.complete && r.w > 0) {{
           const cv = document.createElement('canvas'); cv.width = r.w; cv.height = r.h;
           const ctx = cv.getContext('2d'); ctx.drawImage(img, 0, 0);
           const d = ctx.getImageData(0, 0, r.w, r.h).data; {CHECKSUM_JS} r.sum = s;
         }}
         return r;"
    );
    driver.script(sid, &press);
    let start = Instant::now();
    let shown = loop {
        let v = driver.script(sid, &state);
        assert!(v["error"].is_null(), "{file}: the heatmap failed: {v}");
        if v["sum"].is_number() {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{file}: no heatmap shown within 60 s: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(shown["pressed"], "true", "{shown}");
    assert_eq!(
        (shown["w"].as_u64(), shown["h"].as_u64()),
        (Some(want.width() as u64), Some(want.height() as u64)),
        "{file}: the heatmap's size differs from kiln explain's picture"
    );
    assert_eq!(
        shown["sum"].as_f64(),
        Some(checksum(&want)),
        "{file}: the heatmap's pixels differ from kiln explain's picture"
    );
    save_screenshot(driver, sid, &out_dir.join("web_page_heatmap.png"));

    driver.script(sid, &press);
    let back = driver.script(sid, &state);
    assert_eq!(back["view"], "photo", "{back}");
    assert_eq!(back["pressed"], "false", "{back}");
    assert_eq!(
        back["isPhoto"], true,
        "{file}: the photo is not shown again: {back}"
    );
}

/// Saves the page as the browser shows it now (a PNG) at `path`.
fn save_screenshot(driver: &Driver, sid: &str, path: &Path) {
    let shot = driver.cmd("GET", &format!("/session/{sid}/screenshot"), None);
    let png = base64_decode(shot.as_str().expect("a base64 screenshot"));
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    std::fs::write(path, &png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// Decodes standard base64 (WebDriver's screenshot encoding).
fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .expect("the screenshot's base64")
}
