//! The protocol-neutral core: models, request parameters, decoding + preprocessing off the
//! async runtime, and the dynamic batcher that shares one forward pass between requests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_preprocess::{ImageTensor, Layout, Tta};
use kiln_runtime::{softmax, Classifier, Prediction};
use rayon::prelude::*;

use crate::metrics::Metrics;
use crate::ServeError;

/// Batching limits of one model's queue.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most tensors (images × views) in one forward pass.
    pub max_batch: usize,
    /// How long the first request of a batch waits for others.
    pub max_queue_delay: Duration,
    /// Requests waiting beyond which new ones are refused (503).
    pub queue_capacity: usize,
}

/// Per-request options, from the protocol's `parameters`.
#[derive(Debug, Clone, Copy)]
pub struct InferParams {
    /// Classes in the top-k outputs.
    pub top_k: usize,
    /// Top-1 probability below which a result is marked uncertain.
    pub threshold: Option<f32>,
    /// Test-time augmentation for encoded images.
    pub tta: Tta,
    /// Deadline for the whole request.
    pub timeout: Option<Duration>,
}

impl Default for InferParams {
    fn default() -> Self {
        Self {
            top_k: 5,
            threshold: None,
            tta: Tta::None,
            timeout: None,
        }
    }
}

/// One preprocessed image: its views and its decoded size (none for FP32 tensors).
pub struct Prepared {
    /// The tensors the network sees (more than one under TTA).
    pub views: Vec<ImageTensor>,
    /// Width and height after decoding.
    pub decoded_size: Option<(u32, u32)>,
}

/// The answer for one image.
pub struct ImageResult {
    /// Mean softmax over the views, `[classes]`.
    pub probs: Vec<f32>,
    /// Top-k with labels and the uncertainty flag.
    pub prediction: Prediction,
    /// Width and height after decoding.
    pub decoded_size: Option<(u32, u32)>,
}

struct Job {
    images: Vec<Vec<ImageTensor>>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>, ServeError>>,
    deadline: Option<Instant>,
    enqueued: Instant,
}

/// A loaded model with its batching queue.
pub struct Model {
    /// The name clients use.
    pub name: String,
    /// The only version served.
    pub version: String,
    /// The pipeline.
    pub classifier: Arc<Classifier>,
    ready: AtomicBool,
    queue: SyncSender<Job>,
}

impl Model {
    /// Loads the queue and its batching thread for `classifier`.
    pub(crate) fn new(
        name: String,
        classifier: Classifier,
        cfg: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue_capacity.max(1));
        let classifier = Arc::new(classifier);
        let c = classifier.clone();
        let label = name.clone();
        std::thread::Builder::new()
            .name(format!("batcher-{name}"))
            .spawn(move || batch_loop(&c, &label, rx, cfg, &metrics))
            .expect("spawning a thread");
        Arc::new(Self {
            name,
            version: "1".into(),
            classifier,
            ready: AtomicBool::new(false),
            queue: tx,
        })
    }

    /// Whether the model has loaded and run its warm-up pass.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Runs one forward pass on a blank input, then marks the model ready.
    pub(crate) fn warm_up(&self) -> Result<(), ServeError> {
        let t = self.blank_tensor();
        self.classifier
            .logits(&[t])
            .map_err(|e| ServeError::Internal(format!("warm-up of {}: {e}", self.name)))?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    fn blank_tensor(&self) -> ImageTensor {
        let shape = self.input_shape();
        ImageTensor {
            data: vec![0.0; shape.iter().product()],
            shape,
        }
    }

    /// The shape of one preprocessed image, `[3,H,W]` or `[H,W,3]` as the spec's layout says.
    pub fn input_shape(&self) -> [usize; 3] {
        let s = self.classifier.spec();
        let (h, w) = (s.input_size[0] as usize, s.input_size[1] as usize);
        match s.layout {
            Layout::Nhwc => [h, w, 3],
            Layout::Nchw => [3, h, w],
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classifier.labels().len()
    }

    /// Decodes, validates and preprocesses encoded images in parallel, off the async runtime.
    /// Each image's own error names it (`source(i)`).
    pub async fn prepare_images(
        self: &Arc<Self>,
        images: Vec<(String, bytes::Bytes)>,
        tta: Tta,
        metrics: &Metrics,
    ) -> Result<Vec<Result<Prepared, String>>, ServeError> {
        let m = self.clone();
        let started = Instant::now();
        let out = tokio::task::spawn_blocking(move || {
            images
                .par_iter()
                .map(|(source, bytes)| m.prepare_one(bytes, source, tta))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ServeError::Internal(format!("preprocessing task: {e}")))?;
        metrics
            .preprocess_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(out)
    }

    fn prepare_one(&self, bytes: &[u8], source: &str, tta: Tta) -> Result<Prepared, String> {
        let rgb = self.decode_checked(bytes, source)?;
        Ok(Prepared {
            views: self.classifier.views(&rgb, tta),
            decoded_size: Some(rgb.dimensions()),
        })
    }

    /// One encoded image decoded and validated as `classify` does (the decoder's checks, and
    /// the resize fitting under the pixel limit); the error names `source`.
    fn decode_checked(&self, bytes: &[u8], source: &str) -> Result<image::RgbImage, String> {
        let opts = self.classifier.decode_options();
        let d = kiln_preprocess::decode_bytes(bytes, source, opts).map_err(|e| e.to_string())?;
        let (w, h) = d.rgb.dimensions();
        kiln_preprocess::transform::check_resize_fits(
            w,
            h,
            self.classifier.spec(),
            opts.max_pixels,
            source,
        )
        .map_err(|e| e.to_string())?;
        Ok(d.rgb)
    }

    /// The class activation picture of one encoded image, as `kiln explain` renders it (PNG
    /// bytes), with the map's class: decoded and validated as for classification, one forward
    /// pass outside the batcher (a map belongs to one image and one view).
    pub fn explain_png(
        &self,
        bytes: &[u8],
        source: &str,
        select: &kiln_runtime::ClassSelect,
    ) -> Result<(Vec<u8>, kiln_runtime::Cam), ServeError> {
        let rgb = self
            .decode_checked(bytes, source)
            .map_err(ServeError::BadRequest)?;
        let e = self
            .classifier
            .explain_image(&rgb, select, 5)
            .map_err(|e| match e {
                kiln_runtime::RuntimeError::Candle(_) | kiln_runtime::RuntimeError::Forward(_) => {
                    ServeError::Internal(format!("{source}: {e}"))
                }
                _ => ServeError::BadRequest(format!("{source}: {e}")),
            })?;
        let cam = e
            .cams
            .into_iter()
            .next()
            .ok_or_else(|| ServeError::Internal("explain returned no map".into()))?;
        let picture = kiln_runtime::render::render(&rgb, &cam);
        let mut png = Vec::new();
        picture
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| ServeError::Internal(format!("encoding the picture: {e}")))?;
        Ok((png, cam))
    }

    /// Splits an FP32 tensor `[N, …]` into images, checking its shape against the spec.
    pub fn prepare_pixels(
        &self,
        shape: &[i64],
        data: Vec<f32>,
    ) -> Result<Vec<Prepared>, ServeError> {
        let want = self.input_shape();
        check_pixels(&self.name, want, shape, &data)?;
        let per: usize = want.iter().product();
        Ok(data
            .chunks(per)
            .map(|c| Prepared {
                views: vec![ImageTensor {
                    data: c.to_vec(),
                    shape: want,
                }],
                decoded_size: None,
            })
            .collect())
    }

    /// Queues preprocessed images for the batcher and waits for their answers.
    pub async fn infer(
        &self,
        prepared: Vec<Prepared>,
        params: &InferParams,
        started: Instant,
        metrics: &Metrics,
    ) -> Result<Vec<ImageResult>, ServeError> {
        if prepared.is_empty() {
            return Ok(vec![]);
        }
        let deadline = params.timeout.map(|t| started + t);
        let sizes: Vec<_> = prepared.iter().map(|p| p.decoded_size).collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            images: prepared.into_iter().map(|p| p.views).collect(),
            reply: tx,
            deadline,
            enqueued: Instant::now(),
        };
        match self.queue.try_send(job) {
            Ok(()) => metrics.queue_depth.inc(),
            Err(TrySendError::Full(_)) => return Err(ServeError::QueueFull),
            Err(TrySendError::Disconnected(_)) => {
                return Err(ServeError::Internal("the batcher has stopped".into()))
            }
        };
        let answer = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, rx).await {
                    Ok(a) => a,
                    Err(_) => return Err(ServeError::Timeout),
                }
            }
            None => rx.await,
        };
        let probs =
            answer.map_err(|_| ServeError::Internal("the batcher dropped a request".into()))??;
        Ok(probs
            .into_iter()
            .zip(sizes)
            .map(|(p, decoded_size)| ImageResult {
                prediction: self
                    .classifier
                    .decode_probs(p.clone(), params.top_k, params.threshold),
                probs: p,
                decoded_size,
            })
            .collect())
    }
}

/// The batcher: takes the first waiting job, waits up to the queue delay for more until the
/// batch is full, runs one forward pass per input shape, and answers each job with its own rows.
fn batch_loop(c: &Classifier, name: &str, rx: Receiver<Job>, cfg: BatchConfig, metrics: &Metrics) {
    let mut pending: Option<Job> = None;
    loop {
        let first = match pending.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return, // every sender dropped: the server is shutting down
            },
        };
        metrics.queue_depth.dec();
        let mut tensors = first.images.iter().map(Vec::len).sum::<usize>();
        let mut jobs = vec![first];
        let until = Instant::now() + cfg.max_queue_delay;
        while tensors < cfg.max_batch {
            let left = until.saturating_duration_since(Instant::now());
            let next = if left.is_zero() {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(left)
            };
            match next {
                Ok(j) => {
                    metrics.queue_depth.dec();
                    let n = j.images.iter().map(Vec::len).sum::<usize>();
                    if tensors + n > cfg.max_batch {
                        // Does not fit: it starts the next batch.
                        pending = Some(j);
                        metrics.queue_depth.inc();
                        break;
                    }
                    tensors += n;
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        run_batch(c, name, jobs, metrics);
    }
}

fn run_batch(c: &Classifier, name: &str, jobs: Vec<Job>, metrics: &Metrics) {
    let now = Instant::now();
    // Jobs whose client has gone or whose deadline has passed cost no compute.
    let jobs: Vec<Job> = jobs
        .into_iter()
        .filter_map(|j| {
            metrics
                .queue_seconds
                .observe(now.duration_since(j.enqueued).as_secs_f64());
            if j.reply.is_closed() {
                None
            } else if j.deadline.is_some_and(|d| d <= now) {
                let _ = j.reply.send(Err(ServeError::Timeout));
                None
            } else {
                Some(j)
            }
        })
        .collect();
    if jobs.is_empty() {
        return;
    }
    // Views of one shape share a forward pass (multi-scale TTA gives several shapes).
    let mut groups: BTreeMap<[usize; 3], Vec<(usize, usize, &ImageTensor)>> = BTreeMap::new();
    for (j, job) in jobs.iter().enumerate() {
        for (i, views) in job.images.iter().enumerate() {
            for v in views {
                groups.entry(v.shape).or_default().push((j, i, v));
            }
        }
    }
    let classes = c.labels().len();
    let mut sums: Vec<Vec<Vec<f32>>> = jobs
        .iter()
        .map(|j| vec![vec![0f32; classes]; j.images.len()])
        .collect();
    let started = Instant::now();
    let total: usize = groups.values().map(Vec::len).sum();
    metrics.batch_size.observe(total as f64);
    let mut failed = None;
    for group in groups.values() {
        let batch: Vec<ImageTensor> = group.iter().map(|(_, _, t)| (*t).clone()).collect();
        match c.logits(&batch) {
            Ok(rows) => {
                for ((j, i, _), row) in group.iter().zip(rows) {
                    let w = 1.0 / jobs[*j].images[*i].len() as f32;
                    for (s, p) in sums[*j][*i].iter_mut().zip(softmax(&row)) {
                        *s += p * w;
                    }
                }
            }
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    drop(groups);
    if let Some(e) = failed {
        tracing::error!(model = name, error = %e, "forward pass failed");
        for job in jobs {
            let _ = job
                .reply
                .send(Err(ServeError::Internal(format!("inference failed: {e}"))));
        }
        return;
    }
    metrics
        .compute_seconds
        .observe(started.elapsed().as_secs_f64());
    for (job, probs) in jobs.into_iter().zip(sums) {
        // A client that disconnected meanwhile simply drops its answer; the others still get theirs.
        let _ = job.reply.send(Ok(probs));
    }
}

/// Checks an FP32 pixel tensor `[N, C, H, W]` against the model's input shape `want`: the
/// shape, the number of values and that every value is finite.
pub fn check_pixels(
    model_name: &str,
    want: [usize; 3],
    shape: &[i64],
    data: &[f32],
) -> Result<(), ServeError> {
    let ok = shape.len() == 4
        && shape[0] >= 0
        && shape[1..].iter().zip(want).all(|(&a, b)| a == b as i64);
    if !ok {
        return Err(ServeError::BadRequest(format!(
            "FP32 input has shape {shape:?}; model {} takes [N, {}, {}, {}]",
            model_name, want[0], want[1], want[2]
        )));
    }
    let per: usize = want.iter().product();
    let n = shape[0] as usize;
    // A claimed N near i64::MAX must not overflow the count it is checked against.
    if n.checked_mul(per) != Some(data.len()) {
        return Err(ServeError::BadRequest(format!(
            "FP32 input has {} values; shape {shape:?} needs {}",
            data.len(),
            (n as u128) * (per as u128)
        )));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(ServeError::BadRequest(format!(
            "FP32 input value {i} is not finite"
        )));
    }
    Ok(())
}
