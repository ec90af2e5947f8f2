//! The gRPC surface's metrics, beside the layer that records them (`shed`): requests by method
//! and code, their duration, those in flight and those shed. The `method` label is a closed set
//! (the methods of our protos, else `other`), so a caller cannot grow the label space.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `unbind_requests_in_flight` | gauge | |
//! | `unbind_requests_shed_total` | counter | |
//! | `unbind_requests_total` | counter | `method`, `code` |
//! | `unbind_request_duration_seconds` | histogram | `method` |

use std::{collections::HashSet, sync::Arc};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use prost::Message;

use crate::metrics::{HistogramFamily, Metrics, code_name, latency_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCodeLabels {
    method: String,
    code: &'static str,
}

struct Families {
    methods: HashSet<String>,
    in_flight: Gauge,
    shed: Counter,
    requests: Family<MethodCodeLabels, Counter>,
    request_duration: HistogramFamily<MethodLabels>,
}

/// The request metrics; cheap to clone.
#[derive(Clone)]
pub struct ApiMetrics {
    families: Arc<Families>,
}

impl ApiMetrics {
    /// Declares the families in `metrics`' registry (once per registry).
    pub fn register(metrics: &Metrics) -> Self {
        let f = Families {
            methods: known_methods(),
            in_flight: Gauge::default(),
            shed: Counter::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
        };
        metrics.register(
            "requests_in_flight",
            "gRPC requests being handled",
            f.in_flight.clone(),
        );
        metrics.register(
            "requests_shed",
            "gRPC requests refused at once because the gateway was saturated",
            f.shed.clone(),
        );
        metrics.register(
            "requests",
            "gRPC requests by method and status code",
            f.requests.clone(),
        );
        metrics.register(
            "request_duration_seconds",
            "Time to the response headers of each gRPC request",
            f.request_duration.clone(),
        );
        Self {
            families: Arc::new(f),
        }
    }

    /// The in-flight gauge.
    pub fn in_flight(&self) -> &Gauge {
        &self.families.in_flight
    }

    pub fn shed(&self) {
        self.families.shed.inc();
    }

    /// The label for a request path: the path if it is one of our methods, else `other`.
    pub fn method_label(&self, path: &str) -> String {
        if self.families.methods.contains(path) {
            path.trim_start_matches('/').to_owned()
        } else {
            "other".to_owned()
        }
    }

    /// Counts a finished request.
    pub fn request(&self, method: String, code: tonic::Code, seconds: f64) {
        let f = &self.families;
        f.request_duration
            .get_or_create(&MethodLabels {
                method: method.clone(),
            })
            .observe(seconds);
        f.requests
            .get_or_create(&MethodCodeLabels {
                method,
                code: code_name(code),
            })
            .inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_a_closed_set() {
        let m = ApiMetrics::register(&Metrics::new());
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
    fn requests_are_counted_in_the_shared_registry() {
        let metrics = Metrics::new();
        let m = ApiMetrics::register(&metrics);
        m.request(
            "unbind.v1.AccountGateway/ListApps".into(),
            tonic::Code::Ok,
            0.001,
        );
        m.shed();
        let text = metrics.encode();
        for line in [
            "unbind_requests_total{method=\"unbind.v1.AccountGateway/ListApps\",code=\"OK\"} 1",
            "unbind_request_duration_seconds_count{method=\"unbind.v1.AccountGateway/ListApps\"} 1",
            "unbind_requests_in_flight 0",
            "unbind_requests_shed_total 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
