//! The REST side: the Open Inference Protocol v2 HTTP/JSON endpoints with Triton's binary
//! tensor extension, `POST /v1/classify` for people and curl, `/metrics`, and the web page.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::tensor::{
    self, InputTensor, OutputData, TensorData, IMAGE_INPUT, OUTPUTS, PIXELS_INPUT,
};
use crate::{parse_params, AppState, Param, ServeError};

/// Triton's binary tensor extension: the length of the JSON header that precedes binary data.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

type St = State<Arc<AppState>>;

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = match &self {
            ServeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::QueueFull | ServeError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ServeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut r = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if matches!(self, ServeError::QueueFull) {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// The router with every endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.max_body;
    Router::new()
        .route(
            "/",
            get(|| async { Html(include_str!("../web/index.html")) }),
        )
        .route("/v2", get(server_metadata))
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({ "live": true })) }),
        )
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/v1/classify", post(classify))
        .route("/v1/explain", post(explain))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ServeError::NotFound("no such endpoint; see /v2 and /v1/classify".into())
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(access_log))
        .with_state(state)
}

async fn access_log(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let t = Instant::now();
    let r = next.run(req).await;
    tracing::info!(target: "kiln_serve::access", %method, %path, status = r.status().as_u16(),
        ms = t.elapsed().as_secs_f64() * 1e3, "request");
    r
}

/// Accepts HTTP/1 connections until `stop`, each with a header read timeout (a client that
/// trickles its headers is closed), then waits for the connections in flight to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    header_timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let app = router(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = listener.accept() => {
                let sock = match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let conn = graceful.watch(b.serve_connection(hyper_util::rt::TokioIo::new(sock), svc));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                });
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "kiln",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

async fn server_ready(State(st): St) -> Response {
    let ready = st.ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({ "ready": ready }))).into_response()
}

fn path_model<'a>(
    st: &'a AppState,
    p: &HashMap<String, String>,
) -> Result<&'a Arc<crate::Model>, ServeError> {
    st.model(
        p.get("name").map(String::as_str).unwrap_or(""),
        p.get("version").map(String::as_str),
    )
}

async fn model_ready(State(st): St, Path(p): Path<HashMap<String, String>>) -> Response {
    match path_model(&st, &p) {
        Ok(m) => {
            let ready = m.is_ready();
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, Json(json!({ "name": m.name, "ready": ready }))).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// The model's metadata: inputs and outputs with `-1` for the batch, and its training spec.
pub fn metadata_json(m: &crate::Model) -> Value {
    let shape = m.input_shape();
    let c = m.classes() as i64;
    let spec = serde_json::to_string(m.classifier.spec()).unwrap_or_default();
    json!({
        "name": m.name,
        "versions": [m.version],
        "platform": "kiln",
        "inputs": [
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": PIXELS_INPUT, "datatype": "FP32", "shape": [-1, shape[0], shape[1], shape[2]]},
        ],
        "outputs": [
            {"name": OUTPUTS[0], "datatype": "FP32", "shape": [-1, c]},
            {"name": OUTPUTS[1], "datatype": "INT64", "shape": [-1, -1]},
            {"name": OUTPUTS[2], "datatype": "FP32", "shape": [-1, -1]},
            {"name": OUTPUTS[3], "datatype": "BYTES", "shape": [-1, -1]},
        ],
        "parameters": {"training_spec": spec, "labels": m.classes()},
    })
}

async fn model_metadata(State(st): St, Path(p): Path<HashMap<String, String>>) -> Response {
    match path_model(&st, &p) {
        Ok(m) => Json(metadata_json(m)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(st): St) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<JsonInput>,
    #[serde(default)]
    outputs: Vec<JsonOutput>,
}

#[derive(Deserialize)]
struct JsonInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

fn to_param(v: &Value) -> Param {
    match v {
        Value::Bool(b) => Param::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Param::Int(i),
            None => Param::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Param::Str(s.clone()),
        other => Param::Str(other.to_string()),
    }
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
        x => out.push(x),
    }
}

/// JSON-form tensor data. BYTES elements are strings: base64 when they decode as such (how
/// binary images travel in JSON), else the string's UTF-8 bytes.
fn json_data(inp: &JsonInput) -> Result<TensorData, ServeError> {
    let data = inp.data.as_ref().ok_or_else(|| {
        ServeError::BadRequest(format!(
            "input `{}` has neither `data` nor a binary_data_size parameter",
            inp.name
        ))
    })?;
    let mut flat = vec![];
    flatten(data, &mut flat);
    match inp.datatype.as_str() {
        "BYTES" => flat
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map(Bytes::from)
                    .unwrap_or_else(|_| Bytes::from(s.clone().into_bytes()))),
                _ => Err(ServeError::BadRequest(format!(
                    "input `{}` element {i} is not a string (BYTES in JSON are base64 strings)",
                    inp.name
                ))),
            })
            .collect::<Result<_, _>>()
            .map(TensorData::Bytes),
        "FP32" => flat
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_f64().map(|x| x as f32).ok_or_else(|| {
                    ServeError::BadRequest(format!(
                        "input `{}` element {i} is not a number",
                        inp.name
                    ))
                })
            })
            .collect::<Result<_, _>>()
            .map(TensorData::F32),
        other => Err(ServeError::BadRequest(format!(
            "input `{}`: datatype {other} is not accepted (BYTES images or FP32 tensors)",
            inp.name
        ))),
    }
}

/// An inference request body read and checked: its JSON, the input tensors (binary data
/// split out), the parameters and the outputs asked for. No model is needed for this.
pub struct ParsedInfer {
    req: InferRequest,
    /// The inputs, each with its data.
    pub inputs: Vec<InputTensor>,
    /// `top_k`, `threshold`, `tta`, `timeout_ms`.
    pub params: crate::batch::InferParams,
    /// The outputs to answer with.
    pub wanted: Vec<&'static str>,
}

impl ParsedInfer {
    /// The request's `id`, echoed in the answer.
    pub fn id(&self) -> Option<&str> {
        self.req.id.as_deref()
    }
}

/// Reads an inference request body: JSON, or JSON followed by binary tensor data when the
/// `inference-header-content-length` header (`header_len`) is given.
pub fn parse_infer_body(
    header_len: Option<&HeaderValue>,
    body: Bytes,
) -> Result<ParsedInfer, ServeError> {
    let header_len = match header_len {
        Some(v) => {
            let n: usize = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    ServeError::BadRequest(format!("{HEADER_LENGTH} is not a number: {v:?}"))
                })?;
            if n > body.len() {
                return Err(ServeError::BadRequest(format!(
                    "{HEADER_LENGTH} says {n} bytes of JSON but the body has only {}",
                    body.len()
                )));
            }
            n
        }
        None => body.len(),
    };
    let req: InferRequest = serde_json::from_slice(&body[..header_len])
        .map_err(|e| ServeError::BadRequest(format!("malformed inference request JSON: {e}")))?;
    let mut binary = body.slice(header_len..);
    let mut inputs = vec![];
    for inp in &req.inputs {
        let data = match inp.parameters.get("binary_data_size") {
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| {
                    ServeError::BadRequest(format!(
                        "input `{}`: binary_data_size must be a non-negative integer",
                        inp.name
                    ))
                })? as usize;
                if n > binary.len() {
                    return Err(ServeError::BadRequest(format!(
                        "input `{}` claims {n} binary bytes but only {} remain in the body",
                        inp.name,
                        binary.len()
                    )));
                }
                let raw = binary.split_to(n);
                tensor::raw_to_data(&inp.datatype, raw, &format!("input `{}`", inp.name))?
            }
            None => json_data(inp)?,
        };
        inputs.push(InputTensor {
            name: inp.name.clone(),
            datatype: inp.datatype.clone(),
            shape: inp.shape.clone(),
            data,
        });
    }
    if !binary.is_empty() {
        return Err(ServeError::BadRequest(format!(
            "{} bytes of binary data follow the inputs' binary_data_size total",
            binary.len()
        )));
    }
    let params = parse_params(
        req.parameters
            .iter()
            .map(|(k, v)| (k.as_str(), to_param(v))),
    )?;
    let names: Vec<String> = req.outputs.iter().map(|o| o.name.clone()).collect();
    let wanted = tensor::requested_outputs(&names)?;
    Ok(ParsedInfer {
        req,
        inputs,
        params,
        wanted,
    })
}

fn body_error(e: BytesRejection) -> ServeError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ServeError::TooLarge(format!("request body is over the server's limit: {e}"))
    } else {
        ServeError::BadRequest(format!("cannot read the request body: {e}"))
    }
}

async fn infer(
    State(st): St,
    Path(p): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let name = p.get("name").cloned().unwrap_or_default();
    observed(
        &st,
        &name,
        started,
        infer_inner(&st, &p, &headers, body, started),
    )
    .await
}

/// Runs a request's `work` with the request metrics around it: in flight while it runs, its
/// latency, and its outcome under `model` (`success` for a 2xx answer, `bad_request` for another
/// answer, the error's reason for a failure, which becomes the protocol's error response).
async fn observed(
    st: &AppState,
    model: &str,
    started: Instant,
    work: impl std::future::Future<Output = Result<Response, ServeError>>,
) -> Response {
    st.metrics.in_flight.inc();
    let r = work.await;
    st.metrics.in_flight.dec();
    st.metrics
        .request_seconds
        .observe(started.elapsed().as_secs_f64());
    match r {
        Ok(resp) => {
            let outcome = if resp.status().is_success() {
                "success"
            } else {
                "bad_request"
            };
            st.metrics.count(model, outcome);
            resp
        }
        Err(e) => {
            st.metrics.count(model, e.reason());
            e.into_response()
        }
    }
}

/// A raw request body, refused past the server's limit.
async fn raw_body(req: Request, limit: usize) -> Result<Bytes, ServeError> {
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| ServeError::TooLarge(format!("request body is over the server's limit: {e}")))
}

async fn infer_inner(
    st: &AppState,
    p: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    started: Instant,
) -> Result<Response, ServeError> {
    let body = body.map_err(body_error)?;
    let model = path_model(st, p)?;
    if !model.is_ready() {
        return Err(ServeError::NotReady(model.name.clone()));
    }
    let parsed = parse_infer_body(headers.get(HEADER_LENGTH), body)?;
    let ParsedInfer {
        req,
        inputs,
        params,
        wanted,
    } = parsed;
    let all_binary = req
        .parameters
        .get("binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let binary_for = |name: &str| {
        req.outputs
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.parameters.get("binary_data").and_then(Value::as_bool))
            .unwrap_or(all_binary)
    };
    let outputs = tensor::infer(model, inputs, &params, &wanted, started, &st.metrics).await?;
    let mut blob = vec![];
    let mut out_json = vec![];
    for o in &outputs {
        let mut j = json!({"name": o.name, "datatype": o.data.datatype(), "shape": o.shape});
        if binary_for(o.name) {
            let raw = o.data.to_raw();
            j["parameters"] = json!({"binary_data_size": raw.len()});
            blob.extend_from_slice(&raw);
        } else {
            j["data"] = match &o.data {
                OutputData::F32(v) => json!(v),
                OutputData::I64(v) => json!(v),
                OutputData::Bytes(v) => json!(v),
            };
        }
        out_json.push(j);
    }
    let mut resp = json!({
        "model_name": model.name,
        "model_version": model.version,
        "outputs": out_json,
    });
    if let Some(id) = &req.id {
        resp["id"] = json!(id);
    }
    let text = serde_json::to_vec(&resp).expect("JSON of plain values");
    if blob.is_empty() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response());
    }
    let n = text.len();
    let mut all = text;
    all.extend_from_slice(&blob);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::HeaderName::from_static(HEADER_LENGTH),
                n.to_string(),
            ),
        ],
        all,
    )
        .into_response())
}

#[derive(Deserialize)]
struct ClassifyQuery {
    model: Option<String>,
    top_k: Option<i64>,
    threshold: Option<f64>,
    tta: Option<String>,
}

/// `POST /v1/classify`: a raw image body, or a multipart form of files. Answers one JSON line
/// per image, as `kiln classify --format jsonl` prints them (plus `decoded_size` and `time_ms`).
async fn classify(State(st): St, Query(q): Query<ClassifyQuery>, req: Request) -> Response {
    let started = Instant::now();
    let model_name = q.model.clone().unwrap_or_else(|| st.models[0].name.clone());
    let work = async {
        let (code, lines) = classify_inner(&st, &q, &model_name, req, started).await?;
        Ok((
            code,
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            lines,
        )
            .into_response())
    };
    observed(&st, &model_name, started, work).await
}

async fn classify_inner(
    st: &Arc<AppState>,
    q: &ClassifyQuery,
    model_name: &str,
    req: Request,
    started: Instant,
) -> Result<(StatusCode, String), ServeError> {
    let model = st.model(model_name, None)?.clone();
    if !model.is_ready() {
        return Err(ServeError::NotReady(model.name.clone()));
    }
    let mut params = vec![];
    if let Some(k) = q.top_k {
        params.push(("top_k", Param::Int(k)));
    }
    if let Some(t) = q.threshold {
        params.push(("threshold", Param::Float(t)));
    }
    if let Some(t) = &q.tta {
        params.push(("tta", Param::Str(t.clone())));
    }
    let params = parse_params(params)?;
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let mut files: Vec<(String, Bytes)> = vec![];
    if is_form {
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| ServeError::BadRequest(format!("malformed multipart form: {e}")))?;
        loop {
            let field = match form.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(multipart_error(e)),
            };
            let name = field
                .file_name()
                .or(field.name())
                .unwrap_or("file")
                .to_string();
            let data = field.bytes().await.map_err(multipart_error)?;
            files.push((name, data));
        }
        if files.is_empty() {
            return Err(ServeError::BadRequest("the form has no files".into()));
        }
    } else {
        files.push(("body".into(), raw_body(req, st.max_body).await?));
    }
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let prepared = model.prepare_images(files, params.tta, &st.metrics).await?;
    // Failed images get their error line; the rest share one submission to the batcher.
    let mut ok = vec![];
    let mut slots: Vec<Result<usize, String>> = vec![];
    for p in prepared {
        match p {
            Ok(p) => {
                slots.push(Ok(ok.len()));
                ok.push(p);
            }
            Err(e) => slots.push(Err(e)),
        }
    }
    let n_ok = ok.len();
    let results = model.infer(ok, &params, started, &st.metrics).await?;
    st.metrics
        .images
        .get_or_create(&crate::metrics::ModelLabels {
            model: model.name.clone(),
        })
        .inc_by(n_ok as u64);
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let mut out = String::new();
    for (name, slot) in names.iter().zip(slots) {
        let v = match slot {
            Ok(i) => {
                let r = &results[i];
                json!({
                    "path": name,
                    "top": r.prediction.top,
                    "uncertain": r.prediction.uncertain,
                    "decoded_size": r.decoded_size.map(|(w, h)| [w, h]),
                    "time_ms": ms,
                })
            }
            Err(e) => json!({"path": name, "error": e}),
        };
        out.push_str(&v.to_string());
        out.push('\n');
    }
    let code = if n_ok == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok((code, out))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ServeError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ServeError::TooLarge(format!("request body is over the server's limit: {e}"))
    } else {
        ServeError::BadRequest(format!("malformed multipart form: {e}"))
    }
}

#[derive(Debug, Deserialize)]
struct ExplainQuery {
    model: Option<String>,
    class: Option<usize>,
}

/// `POST /v1/explain`: a raw image body (as `/v1/classify` takes it). Answers the picture `kiln
/// explain` writes for the same file, as PNG: the photo with the class activation map of the
/// most probable class (or of `class=INDEX`) over it, and a banner naming the class. The class,
/// its probability and rank are also in the `Kiln-Class`, `Kiln-Probability` and `Kiln-Rank`
/// headers. Errors are the protocol's `{"error": ...}` with 400 / 404 / 413 / 503.
async fn explain(State(st): St, Query(q): Query<ExplainQuery>, req: Request) -> Response {
    let started = Instant::now();
    let model_name = q.model.clone().unwrap_or_else(|| st.models[0].name.clone());
    observed(
        &st,
        &model_name,
        started,
        explain_inner(&st, &q, &model_name, req),
    )
    .await
}

async fn explain_inner(
    st: &Arc<AppState>,
    q: &ExplainQuery,
    model_name: &str,
    req: Request,
) -> Result<Response, ServeError> {
    let model = st.model(model_name, None)?.clone();
    if !model.is_ready() {
        return Err(ServeError::NotReady(model.name.clone()));
    }
    let body = raw_body(req, st.max_body).await?;
    let select = match q.class {
        Some(c) => kiln_runtime::ClassSelect::Classes(vec![c]),
        None => kiln_runtime::ClassSelect::Top(1),
    };
    let (png, class, prob, rank) = tokio::task::spawn_blocking(move || {
        model
            .explain_png(&body, "body", &select)
            .map(|(png, cam)| (png, cam.class.index, cam.class.prob, cam.rank))
    })
    .await
    .map_err(|e| ServeError::Internal(format!("explain task: {e}")))??;
    let mut r = ([(header::CONTENT_TYPE, "image/png")], png).into_response();
    let h = r.headers_mut();
    for (name, value) in [
        ("kiln-class", class.to_string()),
        ("kiln-probability", format!("{prob}")),
        ("kiln-rank", rank.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    Ok(r)
}
