//! Prometheus metrics, served as text on the admin HTTP port (see `admin`): the one registry,
//! the helpers the families share, and the encoding. Each subsystem declares its families
//! beside what they measure and registers them here, with a table of its metrics in its module
//! doc:
//! - `api::metrics`: requests by method and code, duration, in flight, shed;
//! - `fanout::metrics`: each app's calls, latency and breaker; the cache; the catalog;
//! - `verification::metrics`: verification outcomes, wrong codes and the alerts;
//! - `unbind::metrics`: tickets by state;
//! - `audit`: audit batches retried and records lost.
//!
//! Labels are app ids, RPC method names, gRPC codes, tenant names and fixed words: never a phone
//! number, a hash of one, a token or a code.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry},
};

/// A fixed result word (`applied`, `rejected`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// A family of latency histograms.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The buckets of every latency histogram.
pub fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The gateway's registry; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    /// Locked to register (at start-up) and to encode (per scrape).
    registry: Arc<Mutex<Registry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            registry: Arc::new(Mutex::new(Registry::with_prefix("unbind"))),
        }
    }

    /// Declares a metric family of a subsystem (`unbind_` is prefixed to `name`).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register(name, help, metric);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// The canonical gRPC name of a status code (`INVALID_ARGUMENT`): the `code` label here, and
/// the word the CLI prints.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn families_registered_by_subsystems_are_encoded_with_the_prefix() {
        let m = Metrics::new();
        let counter = Counter::<u64>::default();
        m.register("things", "Things", counter.clone());
        counter.inc();
        let text = m.encode();
        assert!(text.contains("unbind_things_total 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn code_names_are_the_canonical_ones() {
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
    }
}
