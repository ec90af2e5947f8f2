//! Prometheus metrics, served as text on the admin HTTP port (see `admin`).
//!
//! Labels are app ids, RPC method names, gRPC codes and fixed outcome words: never a phone
//! number, a hash of one, a token or a code. The set of `method` values is closed (the methods of
//! our protos, else `other`), so a caller cannot grow the label space.
//!
//! This module keeps the one registry, the shared label types and the encoding; a subsystem
//! may declare its families beside what they measure and register them here (the fan-out's
//! per-app calls, breakers, cache and catalog: `fanout::metrics`). The rest:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `unbind_requests_in_flight` | gauge | |
//! | `unbind_requests_shed_total` | counter | |
//! | `unbind_requests_total` | counter | `method`, `code` |
//! | `unbind_request_duration_seconds` | histogram | `method` |
//! | `unbind_verifications_total` | counter | `outcome` |
//! | `unbind_wrong_codes_total` | counter | `tenant` |
//! | `unbind_wrong_code_alerts_total` | counter (a tenant went over its alert rate) | `tenant` |
//! | `unbind_id_guessing_alerts_total` | counter (a number had many ID characters tried) | |
//! | `unbind_tickets` | gauge | `state` |
//! | `unbind_audit_write_failures_total` | counter (batches retried) | |
//! | `unbind_audit_records_lost_total` | counter (queue full) | |

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry},
};
use prost::Message;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCodeLabels {
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// A fixed result word (`applied`, `rejected`, …).
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

struct Inner {
    /// Locked to register (at start-up) and to encode (per scrape).
    registry: Mutex<Registry>,
    methods: HashSet<String>,
    in_flight: Gauge,
    shed: Counter,
    requests: Family<MethodCodeLabels, Counter>,
    request_duration: HistogramFamily<MethodLabels>,
    verifications: Family<OutcomeLabels, Counter>,
    wrong_codes: Family<TenantLabels, Counter>,
    wrong_code_alerts: Family<TenantLabels, Counter>,
    id_guessing_alerts: Counter,
    tickets: Family<StateLabels, Gauge>,
    audit_write_failures: Counter,
    audit_lost: Counter,
}

/// The gateway's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("unbind");
        let in_flight = Gauge::default();
        let shed = Counter::default();
        let audit_write_failures = Counter::default();
        let audit_lost = Counter::default();
        let requests = Family::<MethodCodeLabels, Counter>::default();
        let request_duration: HistogramFamily<MethodLabels> =
            Family::new_with_constructor(latency_histogram);
        let verifications = Family::<OutcomeLabels, Counter>::default();
        let wrong_codes = Family::<TenantLabels, Counter>::default();
        let wrong_code_alerts = Family::<TenantLabels, Counter>::default();
        let id_guessing_alerts = Counter::default();
        let tickets = Family::<StateLabels, Gauge>::default();
        registry.register(
            "requests_in_flight",
            "gRPC requests being handled",
            in_flight.clone(),
        );
        registry.register(
            "requests_shed",
            "gRPC requests refused at once because the gateway was saturated",
            shed.clone(),
        );
        registry.register(
            "requests",
            "gRPC requests by method and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to the response headers of each gRPC request",
            request_duration.clone(),
        );
        registry.register(
            "verifications",
            "Identity verification steps by outcome",
            verifications.clone(),
        );
        registry.register(
            "wrong_codes",
            "Wrong verification codes entered, by tenant",
            wrong_codes.clone(),
        );
        registry.register(
            "wrong_code_alerts",
            "Times a tenant's callers went over its wrong-code alert rate",
            wrong_code_alerts.clone(),
        );
        registry.register(
            "id_guessing_alerts",
            "Times a number had more different ID characters tried in an hour than the alert rate",
            id_guessing_alerts.clone(),
        );
        registry.register(
            "tickets",
            "Unbind tickets by state (all replicas: read from the store)",
            tickets.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Audit batches the store refused (each is retried until stored)",
            audit_write_failures.clone(),
        );
        registry.register(
            "audit_records_lost",
            "Audit records dropped because the queue to the store was full",
            audit_lost.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                methods: known_methods(),
                in_flight,
                shed,
                requests,
                request_duration,
                verifications,
                wrong_codes,
                wrong_code_alerts,
                id_guessing_alerts,
                tickets,
                audit_write_failures,
                audit_lost,
            }),
        }
    }

    /// The in-flight gauge.
    pub fn in_flight(&self) -> &Gauge {
        &self.inner.in_flight
    }

    pub fn shed(&self) {
        self.inner.shed.inc();
    }

    /// An audit batch the store refused (to be retried).
    pub fn audit_write_failed(&self) {
        self.inner.audit_write_failures.inc();
    }

    /// An audit record dropped: the queue was full.
    pub fn audit_record_lost(&self) {
        self.inner.audit_lost.inc();
    }

    /// The label for a request path: the path if it is one of our methods, else `other`.
    pub fn method_label(&self, path: &str) -> String {
        if self.inner.methods.contains(path) {
            path.trim_start_matches('/').to_owned()
        } else {
            "other".to_owned()
        }
    }

    /// Counts a finished request.
    pub fn request(&self, method: String, code: tonic::Code, seconds: f64) {
        self.inner
            .request_duration
            .get_or_create(&MethodLabels {
                method: method.clone(),
            })
            .observe(seconds);
        self.inner
            .requests
            .get_or_create(&MethodCodeLabels {
                method,
                code: code_name(code),
            })
            .inc();
    }

    /// Counts a verification step's outcome (a fixed word, e.g. `code_sent`, `wrong_code`).
    pub fn verification(&self, outcome: &'static str) {
        self.inner
            .verifications
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a wrong code entered by `tenant`'s caller; `alert` when the tenant just went over
    /// its alert rate.
    pub fn wrong_code(&self, tenant: &str, alert: bool) {
        let labels = TenantLabels {
            tenant: tenant.to_owned(),
        };
        self.inner.wrong_codes.get_or_create(&labels).inc();
        if alert {
            self.inner.wrong_code_alerts.get_or_create(&labels).inc();
        }
    }

    /// Counts a number whose ID characters are being guessed at.
    pub fn id_guessing_alert(&self) {
        self.inner.id_guessing_alerts.inc();
    }

    /// Sets the ticket gauges from counts read from the store.
    pub fn observe_tickets(&self, counts: &[(&'static str, i64)]) {
        self.inner.tickets.clear();
        for (state, n) in counts {
            self.inner
                .tickets
                .get_or_create(&StateLabels { state })
                .set(*n);
        }
    }

    /// Declares a metric family of a subsystem (`unbind_` is prefixed to `name`).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register(name, help, metric);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        let registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// `/package.Service/Method` for every method of our protos.
fn known_methods() -> HashSet<String> {
    let mut methods = HashSet::new();
    let Ok(set) = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET) else {
        return methods;
    };
    for file in set.file {
        let package = file.package.unwrap_or_default();
        for service in file.service {
            let name = service.name.unwrap_or_default();
            for method in service.method {
                methods.insert(format!(
                    "/{package}.{name}/{}",
                    method.name.unwrap_or_default()
                ));
            }
        }
    }
    methods
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
    use super::*;

    #[test]
    fn methods_are_a_closed_set() {
        let m = Metrics::new();
        assert_eq!(
            m.method_label("/unbind.v1.AccountGateway/ListLinkedAccounts"),
            "unbind.v1.AccountGateway/ListLinkedAccounts"
        );
        assert_eq!(
            m.method_label("/unbind.v1.AccountGateway/13800138000"),
            "other"
        );
        assert_eq!(m.method_label("/x"), "other");
    }

    #[test]
    fn exposition_names_every_family() {
        let m = Metrics::new();
        m.request(
            "unbind.v1.AccountGateway/ListApps".into(),
            tonic::Code::Ok,
            0.001,
        );
        let text = m.encode();
        for name in [
            "unbind_requests_total{method=\"unbind.v1.AccountGateway/ListApps\",code=\"OK\"} 1",
            "unbind_requests_in_flight",
            "unbind_requests_shed_total",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
