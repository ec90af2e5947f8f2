//! The tickets' metric: how many there are in each state, across all replicas (read from the
//! store when `/metrics` is scraped, not counted here).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `unbind_tickets` | gauge | `state` |

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
};

use crate::{metrics::Metrics, store::TicketState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The ticket gauges; cheap to clone.
#[derive(Clone)]
pub struct TicketMetrics {
    tickets: Family<StateLabels, Gauge>,
}

impl TicketMetrics {
    /// Declares the family in `metrics`' registry (once per registry).
    pub fn register(metrics: &Metrics) -> Self {
        let tickets = Family::default();
        metrics.register(
            "tickets",
            "Unbind tickets by state (all replicas: read from the store)",
            Family::clone(&tickets),
        );
        Self { tickets }
    }

    /// Sets the gauges from counts read from the store.
    pub fn observe(&self, counts: &[(TicketState, i64)]) {
        self.tickets.clear();
        for (state, n) in counts {
            self.tickets
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(*n);
        }
    }
}
