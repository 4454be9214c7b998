//! The hub's download protocol over `ureq`, with timeouts, into the Hugging Face cache layout.
//!
//! hf-hub 0.5's blocking client has no timeouts (a server that stops sending hangs it forever)
//! and resumes whatever `.part` file an earlier, failed run left. This module does the same two
//! requests as hf-hub (and Python's `huggingface_hub`) — `GET …/resolve/REV/FILE` with
//! `Range: bytes=0-0` for the metadata (`ETag`/`X-Linked-Etag`, `X-Repo-Commit`,
//! `Content-Range`), then the body — with ureq's per-read and connect timeouts, so a stall of
//! [`crate::hub::HubOptions::timeout`] is an error, and writes the file as hf-hub lays it out
//! (`blobs/ETAG`, `snapshots/COMMIT/FILE` → the blob, `refs/REVISION`), so hf-hub's
//! [`hf_hub::Cache`] and Python find it. A failed download leaves nothing behind: the body goes
//! to a temporary file of this process that is removed on any error, and only a complete file of
//! the announced size is renamed into place.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::CacheRepo;
use ureq::http::StatusCode;
use ureq::Agent;

/// Why a download failed, before it is given the repo and file (see `hub::Fetcher`).
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server answered this HTTP status.
    Status(u16),
    /// No byte arrived (or could be sent) for the timeout.
    Timeout(Duration),
    /// The connection could not be made or broke.
    Network(String),
    /// The answer is not what a hub sends.
    Protocol(String),
    /// The body ended early, or the server does not do ranges as announced.
    Incomplete { got: u64, size: u64 },
    /// A cache file could not be written.
    Io(PathBuf, std::io::Error),
}

/// A downloaded file: its snapshot path and the size the hub announced.
pub(crate) struct Downloaded {
    pub path: PathBuf,
    pub size: u64,
}

/// Progress callbacks: the announced size once, then the bytes so far.
pub(crate) trait Progress {
    fn init(&mut self, size: u64);
    fn update(&mut self, done: u64);
    fn finish(&mut self);
}

pub(crate) struct Client {
    /// Follows redirects (to the CDN that holds large files).
    agent: Agent,
    /// Follows none: the metadata request reads the hub's own headers on a redirect.
    no_redirect: Agent,
    token: Option<String>,
    user_agent: String,
    timeout: Duration,
    retries: usize,
}

fn config(timeout: Duration, redirects: u32) -> Agent {
    Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .build(),
        )
        .max_redirects(redirects)
        // The token follows a redirect on the hub itself (a renamed repo), never to the CDN,
        // whose URLs are signed (as hf-hub does).
        .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
        .timeout_resolve(Some(timeout))
        .timeout_connect(Some(timeout))
        // A stall: no byte for `timeout` (restarted at every read). Not a total: a large file
        // on a slow link may take as long as it needs while bytes keep coming.
        .timeout_per_read(Some(timeout))
        .timeout_per_write(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .build()
        .into()
}

fn failure(e: ureq::Error, timeout: Duration) -> Failure {
    match e {
        ureq::Error::StatusCode(s) => Failure::Status(s),
        ureq::Error::Timeout(_) => Failure::Timeout(timeout),
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            Failure::Timeout(timeout)
        }
        e @ (ureq::Error::Io(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Protocol(_)) => Failure::Network(e.to_string()),
        other => Failure::Network(other.to_string()),
    }
}

fn io_failure(e: std::io::Error, timeout: Duration) -> Failure {
    // ureq reports its errors inside the body reader's io::Error.
    match e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
        Some(ureq::Error::Timeout(_)) => Failure::Timeout(timeout),
        _ if matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ) =>
        {
            Failure::Timeout(timeout)
        }
        _ => Failure::Network(e.to_string()),
    }
}

/// Whether trying again may help (a server error, a stall, a broken connection).
fn transient(f: &Failure) -> bool {
    match f {
        Failure::Status(s) => *s >= 500 || *s == 429,
        Failure::Timeout(_) | Failure::Network(_) | Failure::Incomplete { .. } => true,
        Failure::Protocol(_) | Failure::Io(..) => false,
    }
}

fn header(r: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

struct Metadata {
    commit: String,
    etag: String,
    size: u64,
}

/// The file's temporary name: unique to this process and call, so that concurrent downloads
/// never write into one file, and never a `.part` another tool would resume.
fn temp_path(blob: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    blob.with_extension(format!("kiln-{}-{n}.incomplete", std::process::id()))
}

/// Removes the temporary file when dropped unless disarmed.
struct TempFile(Option<PathBuf>);
impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Client {
    pub(crate) fn new(
        token: Option<String>,
        timeout: Duration,
        retries: usize,
        user_agent: String,
    ) -> Self {
        Self {
            agent: config(timeout, 10),
            no_redirect: config(timeout, 0),
            token,
            user_agent,
            timeout,
            retries,
        }
    }

    fn get(
        &self,
        agent: &Agent,
        url: &str,
        range: &str,
        auth: bool,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let mut r = agent
            .get(url)
            .header("User-Agent", &self.user_agent)
            .header("Range", range);
        if auth {
            if let Some(t) = &self.token {
                r = r.header("Authorization", format!("Bearer {t}"));
            }
        }
        r
    }

    /// `f` once, then again after a short pause for each retry while it fails transiently.
    fn with_retries<T>(&self, mut f: impl FnMut() -> Result<T, Failure>) -> Result<T, Failure> {
        let mut attempt = 0;
        loop {
            match f() {
                Err(e) if attempt < self.retries && transient(&e) => {
                    attempt += 1;
                    tracing::debug!(attempt, error = ?e, "hub request failed; retrying");
                    std::thread::sleep(Duration::from_millis(200 << attempt.min(4)));
                }
                r => return r,
            }
        }
    }

    fn metadata(&self, url: &str) -> Result<Metadata, Failure> {
        let t = self.timeout;
        let mut url = url.to_string();
        let mut response = None;
        // Relative redirects (a renamed repo) stay on the hub; an absolute one goes to the CDN,
        // whose answer has the size but not the hub's headers.
        for _ in 0..10 {
            let r = self
                .get(&self.no_redirect, &url, "bytes=0-0", true)
                .call()
                .map_err(|e| failure(e, t))?;
            if r.status().is_redirection() {
                if let Some(loc) = header(&r, "location") {
                    if loc.starts_with('/') {
                        let base = url
                            .find("://")
                            .and_then(|i| url[i + 3..].find('/').map(|j| i + 3 + j))
                            .map(|k| url[..k].to_string())
                            .unwrap_or_default();
                        url = format!("{base}{loc}");
                        continue;
                    }
                }
            }
            response = Some(r);
            break;
        }
        let r = response.ok_or_else(|| Failure::Protocol("too many redirects".into()))?;
        let missing = |h: &str| {
            Failure::Protocol(format!(
                "the response has no `{h}` header, which a Hugging Face hub sends"
            ))
        };
        let etag = header(&r, "x-linked-etag")
            .or_else(|| header(&r, "etag"))
            .ok_or_else(|| missing("etag"))?
            .replace('"', "");
        let commit = header(&r, "x-repo-commit").ok_or_else(|| missing("x-repo-commit"))?;
        let bad = |what: &str| Failure::Protocol(format!("the hub sent a malformed {what}"));
        if etag.is_empty() || etag.contains(['/', '\\']) || etag.starts_with('.') {
            return Err(bad("ETag"));
        }
        if commit.is_empty() || !commit.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad("X-Repo-Commit"));
        }
        let sized = if r.status().is_redirection() {
            let loc = header(&r, "location").ok_or_else(|| missing("location"))?;
            // The CDN's URL is signed; the hub's token is not sent there.
            self.get(&self.agent, &loc, "bytes=0-0", false)
                .call()
                .map_err(|e| failure(e, t))?
        } else {
            r
        };
        let range = header(&sized, "content-range").ok_or_else(|| missing("content-range"))?;
        let size = range
            .rsplit('/')
            .next()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| bad("Content-Range"))?;
        Ok(Metadata { commit, etag, size })
    }

    /// Appends `url`'s bytes from `file`'s current length up to `size`.
    fn fetch_body(
        &self,
        url: &str,
        file: &mut std::fs::File,
        tmp: &Path,
        size: u64,
        progress: &mut dyn Progress,
    ) -> Result<(), Failure> {
        let t = self.timeout;
        let start = file
            .metadata()
            .map_err(|e| Failure::Io(tmp.to_path_buf(), e))?
            .len();
        if start >= size {
            return Ok(());
        }
        let r = self
            .get(&self.agent, url, &format!("bytes={start}-"), true)
            .call()
            .map_err(|e| failure(e, t))?;
        // A server that ignores the range sends the whole file: start over.
        let ranged = r.status() == StatusCode::PARTIAL_CONTENT
            && header(&r, "content-range").is_some_and(|c| {
                c.trim_start_matches("bytes ")
                    .starts_with(&format!("{start}-"))
            });
        let mut done = start;
        if !ranged {
            file.set_len(0)
                .map_err(|e| Failure::Io(tmp.to_path_buf(), e))?;
            done = 0;
        }
        let mut reader = r.into_body().into_reader();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_failure(e, t)),
            };
            if done + n as u64 > size {
                return Err(Failure::Incomplete {
                    got: done + n as u64,
                    size,
                });
            }
            file.write_all(&buf[..n])
                .map_err(|e| Failure::Io(tmp.to_path_buf(), e))?;
            done += n as u64;
            progress.update(done);
        }
        if done != size {
            return Err(Failure::Incomplete { got: done, size });
        }
        Ok(())
    }

    /// Downloads `file` of `repo` at `revision` into `cache`, as hf-hub lays it out.
    pub(crate) fn download(
        &self,
        endpoint: &str,
        repo_id: &str,
        revision: &str,
        file: &str,
        cache: &CacheRepo,
        progress: &mut dyn Progress,
    ) -> Result<Downloaded, Failure> {
        let url = format!(
            "{endpoint}/{repo_id}/resolve/{}/{file}",
            revision.replace('/', "%2F")
        );
        let meta = self.with_retries(|| self.metadata(&url))?;
        let blob = cache.blob_path(&meta.etag);
        let dir = blob.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Failure::Io(dir.to_path_buf(), e))?;
        let have = std::fs::metadata(&blob).is_ok_and(|m| m.len() == meta.size);
        if !have {
            let tmp = temp_path(&blob);
            let guard = TempFile(Some(tmp.clone()));
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&tmp)
                .map_err(|e| Failure::Io(tmp.clone(), e))?;
            progress.init(meta.size);
            self.with_retries(|| self.fetch_body(&url, &mut f, &tmp, meta.size, progress))?;
            progress.finish();
            f.sync_all().map_err(|e| Failure::Io(tmp.clone(), e))?;
            drop(f);
            std::fs::rename(&tmp, &blob).map_err(|e| Failure::Io(blob.clone(), e))?;
            drop(guard);
        }
        let mut pointer = cache.pointer_path(&meta.commit);
        pointer.push(file);
        if let Some(p) = pointer.parent() {
            std::fs::create_dir_all(p).map_err(|e| Failure::Io(p.to_path_buf(), e))?;
        }
        link(&blob, &pointer).map_err(|e| Failure::Io(pointer.clone(), e))?;
        cache
            .create_ref(&meta.commit)
            .map_err(|e| Failure::Io(pointer.clone(), e))?;
        Ok(Downloaded {
            path: pointer,
            size: meta.size,
        })
    }
}

/// `snapshots/COMMIT/FILE` → `../../blobs/ETAG` (relative, as hf-hub and Python make it), or a
/// copy where symbolic links are not available.
fn link(blob: &Path, pointer: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(pointer).is_ok() {
        std::fs::remove_file(pointer)?;
    }
    #[cfg(unix)]
    {
        // snapshots/COMMIT/FILE/.. → the repo folder; FILE may hold subfolders.
        let depth = pointer
            .strip_prefix(
                blob.parent()
                    .and_then(Path::parent)
                    .unwrap_or(Path::new("")),
            )
            .map(|p| p.components().count().saturating_sub(1))
            .unwrap_or(0);
        let mut rel = PathBuf::new();
        for _ in 0..depth {
            rel.push("..");
        }
        rel.push("blobs");
        rel.push(blob.file_name().unwrap_or_default());
        std::os::unix::fs::symlink(rel, pointer)
    }
    #[cfg(not(unix))]
    {
        std::fs::copy(blob, pointer).map(|_| ())
    }
}
