//! Prometheus metrics (text exposition at `GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The model asked for (empty when none).
    pub model: String,
    /// `success`, or the failure's reason (`bad_request`, `not_found`, `queue_full`, …).
    pub outcome: String,
}

/// Labels of the image counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The model.
    pub model: String,
}

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    /// Inference requests by model and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Images classified by model.
    pub images: Family<ModelLabels, Counter>,
    /// Tensors per forward pass.
    pub batch_size: Histogram,
    /// Time a request waited in the batching queue.
    pub queue_seconds: Histogram,
    /// Decode + preprocess time of one request's images.
    pub preprocess_seconds: Histogram,
    /// Forward pass time of one batch.
    pub compute_seconds: Histogram,
    /// End-to-end time of one inference request.
    pub request_seconds: Histogram,
    /// Requests waiting for the batcher.
    pub queue_depth: Gauge,
    /// Inference requests being handled.
    pub in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `kiln_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let requests = Family::<RequestLabels, Counter>::default();
        let images = Family::<ModelLabels, Counter>::default();
        let latency = || Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        let (queue_seconds, preprocess_seconds, compute_seconds, request_seconds) =
            (latency(), latency(), latency(), latency());
        let queue_depth = Gauge::default();
        let in_flight = Gauge::default();
        registry.register(
            "requests",
            "Inference requests by model and outcome",
            requests.clone(),
        );
        registry.register("images", "Images classified", images.clone());
        registry.register("batch_size", "Tensors per forward pass", batch_size.clone());
        registry.register(
            "queue_seconds",
            "Time in the batching queue",
            queue_seconds.clone(),
        );
        registry.register(
            "preprocess_seconds",
            "Decode and preprocess time per request",
            preprocess_seconds.clone(),
        );
        registry.register(
            "compute_seconds",
            "Forward pass time per batch",
            compute_seconds.clone(),
        );
        registry.register(
            "request_seconds",
            "End-to-end inference latency",
            request_seconds.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for the batcher",
            queue_depth.clone(),
        );
        registry.register(
            "in_flight",
            "Inference requests being handled",
            in_flight.clone(),
        );
        Self {
            registry,
            requests,
            images,
            batch_size,
            queue_seconds,
            preprocess_seconds,
            compute_seconds,
            request_seconds,
            queue_depth,
            in_flight,
        }
    }

    /// Counts one finished request.
    pub fn count(&self, model: &str, outcome: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                model: model.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}
