//! `kiln serve`: image classification over the Open Inference Protocol v2 (the KServe v2 /
//! Triton "predict protocol"), REST and gRPC, with dynamic batching, Prometheus metrics and
//! health endpoints. Every model runs the same [`kiln_runtime::Classifier`] pipeline as
//! `kiln classify`: encoded images are decoded, validated and preprocessed with the model's
//! own training spec.

pub mod batch;
pub mod grpc;
pub mod metrics;
pub mod rest;
pub mod tensor;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kiln_preprocess::Tta;
use kiln_runtime::Classifier;

pub use crate::batch::{BatchConfig, InferParams, Model};
pub use crate::metrics::Metrics;

/// Why a request failed; each maps to one HTTP status and one gRPC code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeError {
    /// The request is malformed or its input unusable (400 / INVALID_ARGUMENT).
    #[error("{0}")]
    BadRequest(String),
    /// No such model or version (404 / NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The batching queue is full (503 + Retry-After / UNAVAILABLE).
    #[error("the server is busy: the batching queue is full; retry shortly")]
    QueueFull,
    /// The model is still loading (503 / UNAVAILABLE).
    #[error("model {0} is not ready yet")]
    NotReady(String),
    /// The request's `timeout_ms` passed (504 / DEADLINE_EXCEEDED).
    #[error("the request's deadline (timeout_ms) passed before it was answered")]
    Timeout,
    /// The body is larger than `--max-body` (413 / RESOURCE_EXHAUSTED).
    #[error("{0}")]
    TooLarge(String),
    /// A failure of the server itself (500 / INTERNAL).
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    /// The outcome label in the request metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ServeError::BadRequest(_) => "bad_request",
            ServeError::NotFound(_) => "not_found",
            ServeError::QueueFull => "queue_full",
            ServeError::NotReady(_) => "not_ready",
            ServeError::Timeout => "timeout",
            ServeError::TooLarge(_) => "too_large",
            ServeError::Internal(_) => "internal",
        }
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Two models share a name, or none was given.
    #[error("{0}")]
    Models(String),
}

/// How the server listens and batches.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    pub host: String,
    /// REST port (0: any free port).
    pub port: u16,
    /// gRPC port (0: any free port); `None` disables gRPC.
    pub grpc_port: Option<u16>,
    /// Largest accepted request body, in bytes.
    pub max_body: usize,
    /// Batching limits.
    pub batch: BatchConfig,
    /// Time a client has to send its request headers.
    pub header_read_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            grpc_port: Some(8001),
            max_body: 32 << 20,
            batch: BatchConfig {
                max_batch: 16,
                max_queue_delay: Duration::from_micros(2000),
                queue_capacity: 256,
            },
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    /// Models by name, in the order given.
    pub models: Vec<Arc<Model>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Largest accepted body.
    pub max_body: usize,
}

impl AppState {
    /// Whether every model has loaded and warmed up.
    pub fn ready(&self) -> bool {
        self.models.iter().all(|m| m.is_ready())
    }

    /// The model `name` at `version` (any version when `None`).
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<&Arc<Model>, ServeError> {
        let m = self.models.iter().find(|m| m.name == name).ok_or_else(|| {
            ServeError::NotFound(format!(
                "unknown model `{name}`; this server has {}",
                self.models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        match version {
            Some(v) if !v.is_empty() && v != m.version => Err(ServeError::NotFound(format!(
                "model `{name}` has no version `{v}`; it has version {}",
                m.version
            ))),
            _ => Ok(m),
        }
    }
}

/// A request parameter's value, as both protocols carry them.
#[derive(Debug, Clone)]
pub enum Param {
    /// Boolean.
    Bool(bool),
    /// Integer.
    Int(i64),
    /// Floating point.
    Float(f64),
    /// String.
    Str(String),
}

/// Reads `top_k`, `threshold`, `tta` and `timeout_ms` from the request parameters.
pub fn parse_params<'a>(
    params: impl IntoIterator<Item = (&'a str, Param)>,
) -> Result<InferParams, ServeError> {
    let bad = |m: String| ServeError::BadRequest(m);
    let mut p = InferParams::default();
    for (k, v) in params {
        match (k, v) {
            ("top_k", Param::Int(n)) if n >= 1 => p.top_k = n as usize,
            ("top_k", v) => return Err(bad(format!("parameter top_k must be an integer >= 1, got {v:?}"))),
            ("threshold", Param::Float(t)) if (0.0..=1.0).contains(&t) => p.threshold = Some(t as f32),
            ("threshold", Param::Int(t)) if (0..=1).contains(&t) => p.threshold = Some(t as f32),
            ("threshold", v) => {
                return Err(bad(format!("parameter threshold must be a probability in [0, 1], got {v:?}")))
            }
            ("tta", Param::Str(s)) => {
                p.tta = Tta::parse(&s).ok_or_else(|| {
                    bad(format!("parameter tta `{s}` is not one of none, flip, five-crop, ten-crop, multi-scale"))
                })?
            }
            ("tta", v) => return Err(bad(format!("parameter tta must be a string, got {v:?}"))),
            ("timeout_ms", Param::Int(n)) if n >= 1 => p.timeout = Some(Duration::from_millis(n as u64)),
            ("timeout_ms", v) => return Err(bad(format!("parameter timeout_ms must be an integer >= 1, got {v:?}"))),
            // Other parameters (e.g. Triton's `binary_data_output`) are the transport's business.
            _ => {}
        }
    }
    Ok(p)
}

/// A server that has bound its ports and is serving.
pub struct Running {
    /// The REST address.
    pub http_addr: SocketAddr,
    /// The gRPC address, when enabled.
    pub grpc_addr: Option<SocketAddr>,
    /// Shared state (models, metrics).
    pub state: Arc<AppState>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the server has shut down (after `shutdown` resolved and in-flight requests finished).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Binds the ports, starts serving (live at once; ready once every model has warmed up) and
/// returns. The server stops accepting when `shutdown` resolves and finishes what is in flight.
/// Must be called inside a multi-threaded tokio runtime.
pub async fn start(
    config: ServeConfig,
    models: Vec<(String, Classifier)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    if models.is_empty() {
        return Err(StartError::Models("no model to serve".into()));
    }
    let metrics = Arc::new(Metrics::new());
    let mut loaded: Vec<Arc<Model>> = vec![];
    for (name, c) in models {
        if loaded.iter().any(|m| m.name == name) {
            return Err(StartError::Models(format!("two models are named `{name}`")));
        }
        loaded.push(Model::new(name, c, config.batch, metrics.clone()));
    }
    let state = Arc::new(AppState {
        models: loaded,
        metrics,
        max_body: config.max_body,
    });
    let bind = |port: u16| {
        let addr = format!("{}:{port}", config.host);
        std::net::TcpListener::bind(&addr)
            .and_then(|l| l.set_nonblocking(true).map(|_| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|source| StartError::Bind { addr, source })
    };
    let http = bind(config.port)?;
    let http_addr = http.local_addr().map_err(|source| StartError::Bind {
        addr: config.host.clone(),
        source,
    })?;
    let grpc = match config.grpc_port {
        Some(p) => Some(bind(p)?),
        None => None,
    };
    let grpc_addr = grpc.as_ref().and_then(|l| l.local_addr().ok());

    // Warm-up off the async runtime: health answers meanwhile, ready turns true after.
    for m in &state.models {
        let m = m.clone();
        tokio::task::spawn_blocking(move || match m.warm_up() {
            Ok(()) => tracing::info!(model = %m.name, "ready"),
            Err(e) => {
                tracing::error!(model = %m.name, error = %e, "warm-up failed; the model stays not ready")
            }
        });
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let rest = tokio::spawn(rest::serve(
        http,
        state.clone(),
        config.header_read_timeout,
        stopped(stop_rx.clone()),
    ));
    let grpc_task =
        grpc.map(|l| tokio::spawn(grpc::serve(l, state.clone(), stopped(stop_rx.clone()))));
    let done = tokio::spawn(async move {
        let _ = rest.await;
        if let Some(g) = grpc_task {
            let _ = g.await;
        }
    });
    tracing::info!(%http_addr, grpc_addr = ?grpc_addr, "serving");
    Ok(Running {
        http_addr,
        grpc_addr,
        state,
        done,
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Sets the number of threads of the compute pool (decoding, preprocessing, the network).
/// Call before anything else uses rayon; fails if the pool already exists.
pub fn set_compute_threads(n: usize) -> Result<(), StartError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| StartError::Models(format!("--threads {n}: {e}")))
}

/// Serves until SIGINT/SIGTERM, then finishes the requests in flight and returns: the whole
/// life of `kiln serve`. The network runs on its own tokio threads (`network_threads`), apart
/// from the compute pool.
pub fn run_until_signal(
    config: ServeConfig,
    models: Vec<(String, Classifier)>,
    network_threads: usize,
) -> Result<(), StartError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(network_threads.max(1))
        .thread_name("kiln-net")
        .enable_all()
        .build()
        .map_err(|source| StartError::Bind {
            addr: "tokio runtime".into(),
            source,
        })?;
    rt.block_on(async move {
        let running = start(config, models, shutdown_signal()).await?;
        eprintln!(
            "kiln serve: REST on http://{}{}",
            running.http_addr,
            running
                .grpc_addr
                .map(|a| format!(", gRPC on {a}"))
                .unwrap_or_default()
        );
        running.wait().await;
        Ok(())
    })
}
