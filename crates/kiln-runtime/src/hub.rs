//! Models from a Hugging Face hub: `hf:OWNER/REPO[@REVISION]`.
//!
//! [`resolve`] downloads the repo's `config.json` (and, for transformers models,
//! `preprocessor_config.json`) and `model.safetensors` through the `hf-hub` crate's blocking
//! client, into the standard Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`, shared with Python's `huggingface_hub`). A file already in the
//! cache is used without any network access; with `HF_HUB_OFFLINE=1` only the cache is used.
//! `HF_ENDPOINT` points it at another hub (a mirror, or a test server). Downloads (see
//! [`crate::hub_http`]) give up when the hub sends nothing for `KILN_HUB_TIMEOUT` seconds
//! (default [`DEFAULT_TIMEOUT_S`]), and leave nothing partial in the cache.
//!
//! The configs become a [`TrainingSpec`] (see [`kiln_preprocess::hubspec`]), and the
//! checkpoint's tensors are renamed to torchvision's names where the hub's differ (timm's
//! MobileNetV2, transformers' ResNet); the renamed file is written once per commit under
//! `CACHE/kiln/`. The result, a [`HubModel`], is what a [`crate::ClassifierBuilder`] needs:
//!
//! ```no_run
//! use kiln_runtime::{hub, Classifier};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let m = hub::resolve("hf:timm/mobilenetv2_100.ra_in1k", &hub::HubOptions::from_env())?;
//! let classifier = m.apply_to(Classifier::builder()).build()?;
//! # Ok(()) }
//! ```

use hf_hub::{Cache, Repo, RepoType};
use indicatif::ProgressBar;
use kiln_preprocess::hubspec::{self, HfBackend, HubFormat, HubSpec, KeyConvention};
use kiln_preprocess::{SpecError, TrainingSpec};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::hub_http::{self, Failure};
use crate::ClassifierBuilder;

/// The prefix that marks a hub model reference.
pub const HUB_PREFIX: &str = "hf:";
/// The hub used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The weights file kiln downloads.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The config every supported repo has.
pub const CONFIG_FILE: &str = "config.json";
/// The transformers image-processor config.
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";
/// Seconds without a byte from the hub before a download fails, unless `KILN_HUB_TIMEOUT` says.
pub const DEFAULT_TIMEOUT_S: f64 = 60.0;
/// The variable that sets [`HubOptions::timeout`] (seconds, a positive number).
pub const TIMEOUT_VAR: &str = "KILN_HUB_TIMEOUT";

/// Where and how to reach the hub. [`HubOptions::from_env`] reads the variables Python's
/// `huggingface_hub` reads; tests and embedders set the fields directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// Base URL of the hub (`HF_ENDPOINT`, default [`DEFAULT_ENDPOINT`]).
    pub endpoint: String,
    /// The hub cache directory, the one holding `models--OWNER--REPO` (`HF_HUB_CACHE`, else
    /// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Use only the cache (`HF_HUB_OFFLINE` set to 1/true/yes/on).
    pub offline: bool,
    /// Access token for private or gated repos (`HF_TOKEN`, else the `token` file of `HF_HOME`).
    pub token: Option<String>,
    /// Draw a progress bar on stderr while downloading (off unless set).
    pub progress: bool,
    /// How many times a failed request (server error, stall, broken connection) is tried again,
    /// resuming a body where it stopped, before giving up.
    pub retries: usize,
    /// How long the hub may send nothing (connecting, answering, or in the middle of a body)
    /// before the download fails (`KILN_HUB_TIMEOUT` seconds, default [`DEFAULT_TIMEOUT_S`]).
    /// Not a limit on the whole download. Zero is refused when downloading; a malformed
    /// `KILN_HUB_TIMEOUT` reads as zero, so that it is reported rather than ignored.
    pub timeout: Duration,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self::from_env()
    }
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl HubOptions {
    /// Options from the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Options from any variable lookup (the environment, or a map in tests).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Self {
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(hf_home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        Self {
            endpoint,
            cache_dir,
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
            token,
            progress: false,
            retries: 2,
            timeout: match var(TIMEOUT_VAR) {
                None => Duration::from_secs_f64(DEFAULT_TIMEOUT_S),
                Some(v) => parse_timeout(&v).unwrap_or(Duration::ZERO),
            },
        }
    }

    /// Where kiln keeps what it derives from downloaded files (renamed weights, label lists).
    pub fn derived_dir(&self) -> PathBuf {
        self.cache_dir.join("kiln")
    }
}

/// Seconds (a positive, finite number, at most a day) as a [`Duration`].
fn parse_timeout(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
}

/// A parsed `hf:OWNER/REPO[@REVISION]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `OWNER/REPO`.
    pub repo_id: String,
    /// Branch, tag or commit; `main` when not given.
    pub revision: String,
}

impl HubRef {
    /// Parses `hf:OWNER/REPO` or `hf:OWNER/REPO@REVISION`.
    pub fn parse(s: &str) -> Result<Self, HubError> {
        let bad = |why: &str| HubError::BadRef {
            given: s.to_string(),
            reason: why.to_string(),
        };
        let rest = s
            .strip_prefix(HUB_PREFIX)
            .ok_or_else(|| bad("it does not start with `hf:`"))?;
        let (repo, rev) = match rest.split_once('@') {
            Some((r, v)) => (r, Some(v)),
            None => (rest, None),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let name_ok = |p: &str| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if parts.len() != 2 || !parts.iter().all(|p| name_ok(p)) {
            return Err(bad(
                "the repo must be OWNER/REPO (letters, digits, `-`, `_`, `.`)",
            ));
        }
        let revision = match rev {
            None => "main".to_string(),
            Some(v)
                if !v.is_empty()
                    && !v.contains("..")
                    && !v.starts_with('/')
                    && v.chars().all(|c| c.is_ascii_graphic()) =>
            {
                v.to_string()
            }
            Some(_) => return Err(bad("the revision after `@` is empty or malformed")),
        };
        Ok(Self {
            repo_id: repo.to_string(),
            revision,
        })
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(self.repo_id.clone(), RepoType::Model, self.revision.clone())
    }
}

impl std::fmt::Display for HubRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.revision == "main" {
            write!(f, "{HUB_PREFIX}{}", self.repo_id)
        } else {
            write!(f, "{HUB_PREFIX}{}@{}", self.repo_id, self.revision)
        }
    }
}

/// Whether a `--model` value names a hub model.
pub fn is_hub_ref(s: &str) -> bool {
    s.starts_with(HUB_PREFIX)
}

/// The prefix that marks a local model directory laid out as a hub repo.
pub const DIR_PREFIX: &str = "hf-dir:";

/// The directory a `--model` value names, if it names one: `hf-dir:PATH`, or a path to an
/// existing directory that holds a `config.json` (so `--model resnet50` stays an architecture
/// name even beside a directory of that name without one).
pub fn local_dir_ref(s: &str) -> Option<PathBuf> {
    if let Some(rest) = s.strip_prefix(DIR_PREFIX) {
        return Some(PathBuf::from(rest));
    }
    let p = Path::new(s);
    (p.is_dir() && p.join(CONFIG_FILE).is_file()).then(|| p.to_path_buf())
}

/// Why a hub model could not be resolved. Every message names the repo and the file.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The reference does not parse.
    #[error(
        "`{given}` is not a hub model: {reason}; expected hf:OWNER/REPO or hf:OWNER/REPO@REVISION"
    )]
    BadRef {
        /// What was given.
        given: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The hub answered 404 for the file.
    #[error("{repo}: `{file}` not found on {endpoint} (HTTP 404: the repo, the revision or the file does not exist){hint}")]
    NotFound {
        /// The repo reference.
        repo: String,
        /// The file.
        file: String,
        /// The hub.
        endpoint: String,
        /// What the file is needed for.
        hint: String,
    },
    /// The hub refused access.
    #[error("{repo}: `{file}`: access denied by {endpoint} (HTTP {status}); the repo may be private or gated: set HF_TOKEN to a token that can read it")]
    Denied {
        /// The repo reference.
        repo: String,
        /// The file.
        file: String,
        /// The hub.
        endpoint: String,
        /// 401 or 403.
        status: u16,
    },
    /// Offline and not in the cache.
    #[error("{repo}: `{file}` is not in the local cache {cache} and offline mode is on (HF_HUB_OFFLINE); run once online to download it")]
    NotCached {
        /// The repo reference.
        repo: String,
        /// The file.
        file: String,
        /// The cache directory.
        cache: String,
    },
    /// The download failed (network, server error, protocol).
    #[error("{repo}: downloading `{file}` from {endpoint} failed: {reason}")]
    Download {
        /// The repo reference.
        repo: String,
        /// The file.
        file: String,
        /// The hub.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// A downloaded file is damaged; it has been removed from the cache.
    #[error("{repo}: downloaded `{file}` is corrupt: {reason}; it was removed from the cache, so the next run downloads it again")]
    Corrupt {
        /// The repo reference.
        repo: String,
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A config cannot be turned into a spec (unsupported architecture or transform).
    #[error("{repo}: {error}")]
    Config {
        /// The repo reference.
        repo: String,
        /// The spec error, naming the file and field. (Part of the message, not a `source`, so
        /// that error chains do not print it twice.)
        error: SpecError,
    },
    /// The checkpoint's tensors do not fit the architecture's naming.
    #[error("{repo}: `{file}`: {reason}")]
    Weights {
        /// The repo reference.
        repo: String,
        /// The file.
        file: String,
        /// What does not fit.
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
}

/// A hub model ready for a [`crate::ClassifierBuilder`].
#[derive(Debug, Clone)]
pub struct HubModel {
    /// A safetensors file with torchvision key names (in the HF cache, or under
    /// `CACHE/kiln/` when the keys had to be renamed).
    pub weights_path: PathBuf,
    /// The spec the hub configs imply (validated; `labels` is `None`, see `labels`).
    pub spec: TrainingSpec,
    /// A JSON label list written from the config's class names, if it has any.
    pub labels: Option<PathBuf>,
    /// Where the spec came from, for `SpecOrigin::Given` (e.g.
    /// `hf:timm/resnet50.a1_in1k config.json (timm, commit 1a2b3c4d)`).
    pub origin: String,
    /// The reference resolved.
    pub reference: HubRef,
    /// The commit the files came from.
    pub commit: String,
    /// The config convention.
    pub format: HubFormat,
    /// The architecture in the hub's words (`mobilenetv2_100`, `ResNetForImageClassification`).
    pub hub_architecture: String,
    /// The files fetched over the network by this call (empty when all came from the cache).
    pub downloaded: Vec<String>,
}

impl HubModel {
    /// Sets the weights, spec and labels of `b`. (Do not also call `.model(..)` with the `hf:`
    /// name: the builder compares it with the spec's architecture.)
    pub fn apply_to(&self, b: ClassifierBuilder) -> ClassifierBuilder {
        let b = b
            .weights(&self.weights_path)
            .spec(self.spec.clone(), self.origin.clone());
        match &self.labels {
            Some(l) => b.labels(l),
            None => b,
        }
    }
}

/// Download progress on stderr, when asked for.
struct Bar(Option<ProgressBar>);

impl hub_http::Progress for Bar {
    fn init(&mut self, size: u64) {
        if let Some(b) = &self.0 {
            b.set_length(size);
        }
    }
    fn update(&mut self, done: u64) {
        if let Some(b) = &self.0 {
            b.set_position(done);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

struct Fetcher<'a> {
    r: &'a HubRef,
    opts: &'a HubOptions,
    client: Option<hub_http::Client>,
    downloaded: Vec<String>,
}

struct Fetched {
    path: PathBuf,
    /// The size the hub announced, when this call downloaded it.
    expected: Option<usize>,
}

impl<'a> Fetcher<'a> {
    fn new(r: &'a HubRef, opts: &'a HubOptions) -> Result<Self, HubError> {
        let client = if opts.offline {
            None
        } else {
            if opts.timeout.is_zero() {
                return Err(HubError::Download {
                    repo: r.to_string(),
                    file: CONFIG_FILE.to_string(),
                    endpoint: opts.endpoint.clone(),
                    reason: format!(
                        "the hub timeout is zero: {TIMEOUT_VAR} must be a positive number of \
                         seconds (it is {:?})",
                        std::env::var(TIMEOUT_VAR).unwrap_or_default()
                    ),
                });
            }
            Some(hub_http::Client::new(
                opts.token.clone(),
                opts.timeout,
                opts.retries,
                format!("kiln/{}", env!("CARGO_PKG_VERSION")),
            ))
        };
        Ok(Self {
            r,
            opts,
            client,
            downloaded: vec![],
        })
    }

    fn cached(&self, file: &str) -> Option<PathBuf> {
        Cache::new(self.opts.cache_dir.clone())
            .repo(self.r.repo())
            .get(file)
    }

    fn get(&mut self, file: &str, hint: &str) -> Result<Fetched, HubError> {
        if let Some(path) = self.cached(file) {
            tracing::debug!(repo = %self.r, file, path = %path.display(), "hub cache hit");
            return Ok(Fetched {
                path,
                expected: None,
            });
        }
        let Some(client) = &self.client else {
            return Err(HubError::NotCached {
                repo: self.r.to_string(),
                file: file.to_string(),
                cache: self.opts.cache_dir.display().to_string(),
            });
        };
        let mut bar = Bar(self.opts.progress.then(|| ProgressBar::new(0)));
        tracing::debug!(repo = %self.r, file, endpoint = %self.opts.endpoint, "hub download");
        let cache = Cache::new(self.opts.cache_dir.clone()).repo(self.r.repo());
        let d = client
            .download(
                &self.opts.endpoint,
                &self.r.repo_id,
                &self.r.revision,
                file,
                &cache,
                &mut bar,
            )
            .map_err(|e| self.failure(file, hint, e))?;
        self.downloaded.push(file.to_string());
        Ok(Fetched {
            path: d.path,
            expected: usize::try_from(d.size).ok(),
        })
    }

    fn failure(&self, file: &str, hint: &str, e: Failure) -> HubError {
        let repo = self.r.to_string();
        let endpoint = self.opts.endpoint.clone();
        let download = |reason: String| HubError::Download {
            repo: repo.clone(),
            file: file.to_string(),
            endpoint: endpoint.clone(),
            reason,
        };
        let retried = if self.opts.retries > 0 {
            format!(" (after {} retries)", self.opts.retries)
        } else {
            String::new()
        };
        match e {
            Failure::Status(404) => HubError::NotFound {
                repo,
                file: file.to_string(),
                endpoint,
                hint: hint.to_string(),
            },
            Failure::Status(s @ (401 | 403)) => HubError::Denied {
                repo,
                file: file.to_string(),
                endpoint,
                status: s,
            },
            Failure::Status(s) if s >= 500 => download(format!(
                "the hub answered HTTP {s} (a server error){retried}; nothing was stored, try \
                 again later"
            )),
            Failure::Status(s) => download(format!("the hub answered HTTP {s}")),
            Failure::Timeout(t) => download(format!(
                "the hub sent nothing for {} s{retried} ({TIMEOUT_VAR} sets the limit); nothing \
                 was stored, so the next run starts afresh",
                t.as_secs_f64()
            )),
            Failure::Network(why) => download(format!(
                "cannot reach the hub, or the connection broke ({why}){retried}; files already in \
                 the cache need no network, and HF_HUB_OFFLINE=1 uses only the cache"
            )),
            Failure::Incomplete { got, size } => HubError::Corrupt {
                repo,
                file: file.to_string(),
                reason: format!(
                    "{got} bytes arrived but the hub announced {size} (truncated download: the \
                     connection ended early{retried})"
                ),
            },
            Failure::Protocol(why) => download(format!("{why}; is {endpoint} a hub?")),
            Failure::Io(path, e) => HubError::Io {
                path: path.display().to_string(),
                reason: e.to_string(),
            },
        }
    }

    /// Removes a downloaded file (its snapshot link and the blob behind it) so that the next
    /// run fetches it again.
    fn evict(&self, path: &Path) {
        if let Ok(blob) = std::fs::canonicalize(path) {
            if blob != path {
                let _ = std::fs::remove_file(&blob);
            }
        }
        let _ = std::fs::remove_file(path);
    }

    fn corrupt(&self, file: &str, path: &Path, reason: String) -> HubError {
        self.evict(path);
        HubError::Corrupt {
            repo: self.r.to_string(),
            file: file.to_string(),
            reason,
        }
    }

    /// Reads a fetched file, checking a fresh download against the announced size.
    fn read(&self, file: &str, f: &Fetched) -> Result<Vec<u8>, HubError> {
        let bytes = std::fs::read(&f.path).map_err(|e| HubError::Io {
            path: f.path.display().to_string(),
            reason: e.to_string(),
        })?;
        if let Some(n) = f.expected {
            if bytes.len() != n {
                return Err(self.corrupt(
                    file,
                    &f.path,
                    format!(
                        "{} bytes arrived but the hub announced {n} (truncated download)",
                        bytes.len()
                    ),
                ));
            }
        }
        Ok(bytes)
    }

    fn read_text(&self, file: &str, f: &Fetched) -> Result<String, HubError> {
        let bytes = self.read(file, f)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| self.corrupt(file, &f.path, "not UTF-8 text".into()))?;
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
            return Err(self.corrupt(file, &f.path, format!("not valid JSON: {e}")));
        }
        Ok(text)
    }
}

/// The commit a snapshot path belongs to (`…/snapshots/COMMIT/FILE`).
fn commit_of(path: &Path) -> String {
    path.parent()
        .and_then(|p| p.file_name())
        .map(|c| c.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// Resolves `hf:OWNER/REPO[@REVISION]`: fetches (or finds in the cache) the configs and
/// `model.safetensors`, derives the spec, and renames the tensors to torchvision's names if the
/// hub's differ.
pub fn resolve(model: &str, opts: &HubOptions) -> Result<HubModel, HubError> {
    resolve_ref(&HubRef::parse(model)?, opts)
}

/// [`resolve`] for an already parsed reference.
pub fn resolve_ref(r: &HubRef, opts: &HubOptions) -> Result<HubModel, HubError> {
    resolve_ref_with(r, opts, None)
}

/// [`resolve_ref`] with the transformers image-processor backend chosen by the caller
/// (`None`: the model's own default, see [`hubspec::hf_default_backend`]; ignored for timm).
pub fn resolve_ref_with(
    r: &HubRef,
    opts: &HubOptions,
    backend: Option<HfBackend>,
) -> Result<HubModel, HubError> {
    let mut f = Fetcher::new(r, opts)?;
    let cfg = f.get(
        CONFIG_FILE,
        "; kiln needs the repo's config.json (timm, or transformers with preprocessor_config.json)",
    )?;
    let cfg_text = f.read_text(CONFIG_FILE, &cfg)?;
    let config_err = |error: SpecError| HubError::Config {
        repo: r.to_string(),
        error,
    };
    let format = hubspec::detect_format(&cfg_text)
        .map_err(|e| config_err(e.in_file(Path::new(CONFIG_FILE))))?;
    let hs: HubSpec = match format {
        HubFormat::Timm => hubspec::spec_from_timm(&cfg_text)
            .map_err(|e| config_err(e.in_file(Path::new(CONFIG_FILE))))?,
        HubFormat::Transformers => {
            // Check the architecture before fetching anything else.
            hubspec::transformers_architecture(&cfg_text)
                .map_err(|e| config_err(e.in_file(Path::new(CONFIG_FILE))))?;
            let pre = f.get(
                PREPROCESSOR_FILE,
                "; a transformers model needs its preprocessor_config.json for the input transform",
            )?;
            let pre_text = f.read_text(PREPROCESSOR_FILE, &pre)?;
            hubspec::spec_from_hf_with(&pre_text, &cfg_text, backend).map_err(config_err)?
        }
    };
    let w = f.get(
        WEIGHTS_FILE,
        "; kiln reads only model.safetensors from the hub (not pytorch_model.bin or sharded \
         checkpoints; `kiln convert` turns a .pth/.bin into safetensors)",
    )?;
    let commit = commit_of(&w.path);
    let bytes = f.read(WEIGHTS_FILE, &w)?;
    if let Err(e) = safetensors::SafeTensors::deserialize(&bytes) {
        return Err(f.corrupt(
            WEIGHTS_FILE,
            &w.path,
            format!("not a valid safetensors file ({e})"),
        ));
    }
    let blob = std::fs::canonicalize(&w.path)
        .ok()
        .and_then(|b| b.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_default();

    let derived = opts
        .derived_dir()
        .join(format!("models--{}", r.repo_id.replace('/', "--")))
        .join(&commit);
    let weights_err = |reason: String| HubError::Weights {
        repo: r.to_string(),
        file: WEIGHTS_FILE.to_string(),
        reason,
    };
    let weights_path = if needs_renaming(hs.keys, &bytes).map_err(&weights_err)? {
        let out = derived.join(WEIGHTS_FILE);
        if derived_is_current(&out, &blob) {
            tracing::debug!(path = %out.display(), "renamed weights already in the cache");
        } else {
            let mut meta = HashMap::new();
            meta.insert("format".to_string(), "pt".to_string());
            meta.insert(
                "kiln.converted_from".to_string(),
                format!("{r} {WEIGHTS_FILE} (commit {commit}, {:?} names)", hs.keys),
            );
            meta.insert(SOURCE_BLOB_KEY.to_string(), blob.clone());
            let renamed = rename_safetensors(&bytes, hs.keys, meta).map_err(&weights_err)?;
            write_atomic(&out, &renamed)?;
        }
        out
    } else {
        w.path.clone()
    };
    drop(bytes);

    let labels = match &hs.labels {
        None => None,
        Some(names) => {
            let p = derived.join("labels.json");
            let text = serde_json::to_string_pretty(names).expect("strings serialise");
            if std::fs::read_to_string(&p).ok().as_deref() != Some(text.as_str()) {
                write_atomic(&p, text.as_bytes())?;
            }
            Some(p)
        }
    };
    let short: String = commit.chars().take(10).collect();
    let mut files = vec![CONFIG_FILE];
    if format == HubFormat::Transformers {
        files.push(PREPROCESSOR_FILE);
    }
    let origin = format!(
        "{r} {} ({}, commit {short})",
        files.join(" + "),
        format.name()
    );
    let mut spec = hs.spec;
    spec.source
        .insert("hub_repo".into(), serde_json::Value::from(r.to_string()));
    spec.source
        .insert("hub_commit".into(), serde_json::Value::from(commit.clone()));
    Ok(HubModel {
        weights_path,
        spec,
        labels,
        origin,
        reference: r.clone(),
        commit,
        format,
        hub_architecture: hs.hub_architecture,
        downloaded: f.downloaded,
    })
}

/// Resolves a local directory laid out as a hub repo: transformers' `config.json` +
/// `preprocessor_config.json` + `model.safetensors` (as `save_pretrained` writes them), or
/// timm's `config.json` + `model.safetensors`. The same spec rules and key maps as for `hf:`
/// repos apply; renamed weights are written under `CACHE/kiln/local/`, keyed by the
/// directory, and rebuilt when the weights file changes (size or modification time).
pub fn resolve_dir(
    dir: &Path,
    opts: &HubOptions,
    backend: Option<HfBackend>,
) -> Result<HubModel, HubError> {
    let name = dir.display().to_string();
    let io = |p: &Path, e: std::io::Error| HubError::Io {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    let config_err = |error: SpecError| HubError::Config {
        repo: name.clone(),
        error,
    };
    if !dir.is_dir() {
        return Err(HubError::Io {
            path: name.clone(),
            reason: "not a directory (a local model is a directory with config.json and model.safetensors)".into(),
        });
    }
    let cfg_path = dir.join(CONFIG_FILE);
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| io(&cfg_path, e))?;
    let format = hubspec::detect_format(&cfg_text).map_err(|e| config_err(e.in_file(&cfg_path)))?;
    let hs: HubSpec = match format {
        HubFormat::Timm => {
            hubspec::spec_from_timm(&cfg_text).map_err(|e| config_err(e.in_file(&cfg_path)))?
        }
        HubFormat::Transformers => {
            hubspec::spec_from_hub_files_with(format, dir, backend).map_err(config_err)?
        }
    };
    let w_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&w_path).map_err(|e| {
        let mut err = io(&w_path, e);
        if let HubError::Io { reason, .. } = &mut err {
            reason.push_str(
                " (kiln reads model.safetensors; `kiln convert` turns a .pth/.bin into one)",
            );
        }
        err
    })?;
    let weights_err = |reason: String| HubError::Weights {
        repo: name.clone(),
        file: WEIGHTS_FILE.to_string(),
        reason,
    };
    if let Err(e) = safetensors::SafeTensors::deserialize(&bytes) {
        return Err(weights_err(format!("not a valid safetensors file ({e})")));
    }
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let meta = std::fs::metadata(&w_path).map_err(|e| io(&w_path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // What identifies this very weights file: its size and modification time.
    let blob = format!("local:{}:{mtime}", meta.len());
    let key = format!(
        "{:016x}",
        canonical
            .to_string_lossy()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64)
                .wrapping_mul(0x100_0000_01b3))
    );
    let derived = opts.derived_dir().join("local").join(key);
    let weights_path = if needs_renaming(hs.keys, &bytes).map_err(&weights_err)? {
        let out = derived.join(WEIGHTS_FILE);
        if !derived_is_current(&out, &blob) {
            let mut meta = HashMap::new();
            meta.insert("format".to_string(), "pt".to_string());
            meta.insert(
                "kiln.converted_from".to_string(),
                format!("{} ({:?} names)", w_path.display(), hs.keys),
            );
            meta.insert(SOURCE_BLOB_KEY.to_string(), blob.clone());
            let renamed = rename_safetensors(&bytes, hs.keys, meta).map_err(&weights_err)?;
            write_atomic(&out, &renamed)?;
        }
        out
    } else {
        w_path.clone()
    };
    drop(bytes);
    let labels = match &hs.labels {
        None => None,
        Some(names) => {
            let p = derived.join("labels.json");
            let text = serde_json::to_string_pretty(names).expect("strings serialise");
            if std::fs::read_to_string(&p).ok().as_deref() != Some(text.as_str()) {
                write_atomic(&p, text.as_bytes())?;
            }
            Some(p)
        }
    };
    let mut files = vec![CONFIG_FILE];
    if format == HubFormat::Transformers {
        files.push(PREPROCESSOR_FILE);
    }
    let origin = format!(
        "{name} {} ({}, local directory)",
        files.join(" + "),
        format.name()
    );
    let mut spec = hs.spec;
    spec.source.insert(
        "local_dir".into(),
        serde_json::Value::from(canonical.display().to_string()),
    );
    Ok(HubModel {
        weights_path,
        spec,
        labels,
        origin,
        reference: HubRef {
            repo_id: name.clone(),
            revision: "local".into(),
        },
        commit: "local".into(),
        format,
        hub_architecture: hs.hub_architecture,
        downloaded: vec![],
    })
}

const SOURCE_BLOB_KEY: &str = "kiln.hub_source_blob";

/// Whether a renamed file exists and was made from this very blob.
fn derived_is_current(path: &Path, blob: &str) -> bool {
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut n = [0u8; 8];
    if file.read_exact(&mut n).is_err() {
        return false;
    }
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 {
        return false;
    }
    let mut header = vec![0u8; n as usize];
    if file.read_exact(&mut header).is_err() {
        return false;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&header) else {
        return false;
    };
    let ends = v
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|t| t.get("data_offsets")?.as_array()?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let complete = std::fs::metadata(path).is_ok_and(|m| m.len() == 8 + n + ends);
    complete && v["__metadata__"][SOURCE_BLOB_KEY].as_str() == Some(blob) && !blob.is_empty()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HubError> {
    let io = |p: &Path, e: std::io::Error| HubError::Io {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(path, e)
    })
}

/// Renames one tensor of a checkpoint in `convention` to torchvision's name (the key map the
/// architecture's family declares). `Ok(None)` drops it (`num_batches_tracked`, a training
/// counter); an unknown name is an error.
pub fn torchvision_name(convention: KeyConvention, name: &str) -> Result<Option<String>, String> {
    if name.ends_with(".num_batches_tracked") {
        return Ok(None);
    }
    if convention == KeyConvention::Torchvision {
        return Ok(Some(name.to_string()));
    }
    let Some(map) = kiln_models::key_map(convention) else {
        return Err(format!("no family declares the {convention:?} key map"));
    };
    match (map.rename)(name) {
        Some(m) => Ok(Some(m)),
        None => Err(format!(
            "tensor `{name}` is not part of the {} layout kiln maps ({})",
            map.label, map.expected
        )),
    }
}

/// Whether a checkpoint needs renaming (names differ from torchvision's, beyond dropped
/// counters). Errors on names the convention does not know.
fn needs_renaming(convention: KeyConvention, bytes: &[u8]) -> Result<bool, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut differs = false;
    let mut names = st.names();
    // Sorted, so that the first unknown name reported is the same on every run.
    names.sort();
    for name in names {
        if let Some(m) = torchvision_name(convention, name)? {
            differs |= m != *name;
        }
    }
    Ok(differs)
}

/// Rewrites a safetensors buffer with torchvision names (see [`torchvision_name`]), keeping
/// data and dtypes, dropping `num_batches_tracked`, and setting `metadata`.
pub fn rename_safetensors(
    bytes: &[u8],
    convention: KeyConvention,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut out: Vec<(String, safetensors::tensor::TensorView<'_>)> = vec![];
    let mut seen: HashMap<String, String> = HashMap::new();
    for (name, view) in st.tensors() {
        let Some(new) = torchvision_name(convention, &name)? else {
            continue;
        };
        if let Some(prev) = seen.insert(new.clone(), name.clone()) {
            return Err(format!("tensors `{prev}` and `{name}` both map to `{new}`"));
        }
        out.push((new, view));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    safetensors::serialize(out, Some(metadata)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_header(name: &str) -> Vec<(String, Vec<usize>)> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../weights")
            .join(format!("{name}.safetensors"));
        let mut f = std::fs::File::open(&p).unwrap();
        let mut n = [0u8; 8];
        f.read_exact(&mut n).unwrap();
        let mut h = vec![0u8; u64::from_le_bytes(n) as usize];
        f.read_exact(&mut h).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&h).unwrap();
        let mut out: Vec<(String, Vec<usize>)> = v
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, t)| {
                let shape = t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                (k.clone(), shape)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn timm_mobilenet_v2_maps_exactly_onto_torchvision() {
        // The shipped torchvision MobileNetV2 (width 1.0, 1000 classes) is the reference.
        let want = shipped_header("mobilenet_v2");
        assert_eq!(want.len(), 262);
        let mut got: Vec<(String, Vec<usize>)> = kiln_models::mobilenet_v2::timm_layout(1.0, 1000)
            .into_iter()
            .map(|(k, s)| {
                let m = torchvision_name(KeyConvention::TimmMobileNetV2, &k)
                    .unwrap()
                    .unwrap();
                (m, s)
            })
            .collect();
        got.sort();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w);
        }
        // Counters are dropped; strangers are refused by name.
        assert_eq!(
            torchvision_name(
                KeyConvention::TimmMobileNetV2,
                "blocks.1.0.bn1.num_batches_tracked"
            ),
            Ok(None)
        );
        for bad in [
            "blocks.7.0.conv_pw.weight",
            "blocks.1.2.conv_pw.weight",
            "blocks.0.0.conv_pwl.weight",
            "blocks.1.0.se.conv_reduce.weight",
            "conv_stem.bias",
            "head.fc.weight",
        ] {
            let e = torchvision_name(KeyConvention::TimmMobileNetV2, bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn timm_mobilenet_v2_widths_build() {
        // Every width timm publishes maps to a network kiln builds with the same shapes.
        use candle_core::{DType, Device, Tensor};
        for w in [0.35, 0.5, 0.75, 1.0, 1.4] {
            let tensors: HashMap<String, Tensor> = kiln_models::mobilenet_v2::timm_layout(w, 7)
                .into_iter()
                .map(|(k, s)| {
                    let name = torchvision_name(KeyConvention::TimmMobileNetV2, &k)
                        .unwrap()
                        .unwrap();
                    (name, Tensor::ones(s, DType::F32, &Device::Cpu).unwrap())
                })
                .collect();
            let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
            let mut p = kiln_models::ArchParams::new();
            p.insert("width_mult".into(), w);
            let m = kiln_models::build("mobilenet_v2", &p, vb)
                .unwrap_or_else(|e| panic!("width {w}: {e}"));
            assert_eq!(m.num_classes(), 7);
        }
    }

    #[test]
    fn transformers_resnet_keys() {
        let cases = [
            (
                "resnet.embedder.embedder.convolution.weight",
                "conv1.weight",
            ),
            (
                "resnet.embedder.embedder.normalization.running_var",
                "bn1.running_var",
            ),
            (
                "resnet.encoder.stages.0.layers.0.shortcut.convolution.weight",
                "layer1.0.downsample.0.weight",
            ),
            (
                "resnet.encoder.stages.3.layers.1.shortcut.normalization.bias",
                "layer4.1.downsample.1.bias",
            ),
            (
                "resnet.encoder.stages.1.layers.2.layer.0.convolution.weight",
                "layer2.2.conv1.weight",
            ),
            (
                "resnet.encoder.stages.2.layers.5.layer.2.normalization.running_mean",
                "layer3.5.bn3.running_mean",
            ),
            ("classifier.1.weight", "fc.weight"),
            ("classifier.1.bias", "fc.bias"),
        ];
        for (hf, tv) in cases {
            assert_eq!(
                torchvision_name(KeyConvention::TransformersResNet, hf),
                Ok(Some(tv.to_string())),
                "{hf}"
            );
        }
        for bad in [
            "resnet.encoder.stages.4.layers.0.layer.0.convolution.weight",
            "resnet.encoder.stages.0.layers.0.layer.3.convolution.weight",
            "resnet.embedder.embedder.convolution.bias",
            "classifier.0.weight",
        ] {
            assert!(
                torchvision_name(KeyConvention::TransformersResNet, bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn transformers_mobilenet_v2_maps_exactly_onto_torchvision() {
        // The names and shapes transformers 5.24 gives MobileNetV2ForImageClassification's
        // default config (1001 classes), as make_hf_fixtures.py recorded them, against the
        // shipped torchvision MobileNetV2 (1000 classes).
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/hf/mobilenet_v2_default_1001/weights.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let mut got: Vec<(String, Vec<usize>)> = v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let name = t["name"].as_str().unwrap();
                let mut shape: Vec<usize> = t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                let m = torchvision_name(KeyConvention::TransformersMobileNetV2, name)
                    .unwrap()
                    .unwrap();
                if m.starts_with("classifier") {
                    assert_eq!(shape[0], 1001);
                    shape[0] = 1000;
                }
                (m, shape)
            })
            .collect();
        got.sort();
        assert_eq!(got, shipped_header("mobilenet_v2"));
        for bad in [
            "mobilenet_v2.conv_stem.expand_1x1.convolution.weight",
            "mobilenet_v2.layer.16.conv_3x3.convolution.weight",
            "mobilenet_v2.layer.3.conv_3x3.convolution.bias",
            "mobilenet_v2.conv_1x1.normalization.foo",
            "segmentation_head.conv_aspp.convolution.weight",
        ] {
            let e = torchvision_name(KeyConvention::TransformersMobileNetV2, bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn renaming_keeps_data_and_drops_counters() {
        let a: Vec<u8> = (0..16u8).collect();
        let c = 7i64.to_le_bytes().to_vec();
        let views = vec![
            (
                "conv_stem.weight".to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 1, 2, 2], &a)
                    .unwrap(),
            ),
            (
                "bn1.num_batches_tracked".to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![], &c).unwrap(),
            ),
        ];
        let bytes = safetensors::serialize(views, None).unwrap();
        let mut meta = HashMap::new();
        meta.insert("k".into(), "v".into());
        let out = rename_safetensors(&bytes, KeyConvention::TimmMobileNetV2, meta).unwrap();
        let st = safetensors::SafeTensors::deserialize(&out).unwrap();
        assert_eq!(st.names(), vec!["features.0.0.weight"]);
        assert_eq!(st.tensor("features.0.0.weight").unwrap().data(), &a[..]);
        assert!(needs_renaming(KeyConvention::TimmMobileNetV2, &bytes).unwrap());
        assert!(!needs_renaming(KeyConvention::Torchvision, &bytes).unwrap());
    }

    #[test]
    fn parses_references_and_environment() {
        let r = HubRef::parse("hf:timm/resnet50.a1_in1k").unwrap();
        assert_eq!(
            (r.repo_id.as_str(), r.revision.as_str()),
            ("timm/resnet50.a1_in1k", "main")
        );
        assert_eq!(r.to_string(), "hf:timm/resnet50.a1_in1k");
        let r = HubRef::parse("hf:me/m@refs/pr/1").unwrap();
        assert_eq!(r.revision, "refs/pr/1");
        assert_eq!(r.to_string(), "hf:me/m@refs/pr/1");
        for bad in [
            "timm/resnet50",
            "hf:",
            "hf:resnet50",
            "hf:a/b/c",
            "hf:a/b@",
            "hf:a/../b",
            "hf:a /b",
        ] {
            let e = HubRef::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("hf:OWNER/REPO"), "{e}");
        }
        assert!(is_hub_ref("hf:x/y") && !is_hub_ref("resnet50"));

        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string())
        };
        let o = HubOptions::from_lookup(env(&[("HOME", "/home/u")]));
        assert_eq!(o.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(o.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(!o.offline);
        let o = HubOptions::from_lookup(env(&[
            ("HOME", "/home/u"),
            ("HF_HOME", "/data/hf"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_TOKEN", "hf_x"),
        ]));
        assert_eq!(o.cache_dir, PathBuf::from("/data/hf/hub"));
        assert_eq!(o.endpoint, "http://127.0.0.1:9");
        assert!(o.offline);
        assert_eq!(o.token.as_deref(), Some("hf_x"));
        let o = HubOptions::from_lookup(env(&[
            ("HF_HOME", "/data/hf"),
            ("HF_HUB_CACHE", "/c"),
            ("HF_HUB_OFFLINE", "0"),
        ]));
        assert_eq!(o.cache_dir, PathBuf::from("/c"));
        assert!(!o.offline);
        let o =
            HubOptions::from_lookup(env(&[("XDG_CACHE_HOME", "/x"), ("HF_HUB_OFFLINE", "TRUE")]));
        assert_eq!(o.cache_dir, PathBuf::from("/x/huggingface/hub"));
        assert!(o.offline);
    }
}
