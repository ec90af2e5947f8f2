//! The tickets' metrics: how many are open in each state, across all replicas (read from the
//! store's index of open tickets when `/metrics` is scraped), and how many this replica's worker
//! brought to each final state.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `unbind_tickets` | gauge | `state` (queued, sent, accepted) |
//! | `unbind_tickets_finished_total` | counter | `state` (completed, rejected, failed) |

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
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
    finished: Family<StateLabels, Counter>,
}

impl TicketMetrics {
    /// Declares the family in `metrics`' registry (once per registry).
    pub fn register(metrics: &Metrics) -> Self {
        let tickets = Family::default();
        metrics.register(
            "tickets",
            "Open unbind tickets by state (all replicas: read from the store)",
            Family::clone(&tickets),
        );
        let finished = Family::default();
        metrics.register(
            "tickets_finished",
            "Unbind tickets this replica brought to a final state",
            Family::clone(&finished),
        );
        Self { tickets, finished }
    }

    /// Counts a ticket this replica brought to `state` (a final one).
    pub fn finished(&self, state: TicketState) {
        self.finished
            .get_or_create(&StateLabels {
                state: state.as_str(),
            })
            .inc();
    }

    /// Sets the gauges from the open tickets' counts read from the store.
    pub fn observe(&self, counts: &[(TicketState, i64)]) {
        self.tickets.clear();
        // Every open state, at zero when none is in it: a series that vanishes reads as "no
        // data", not as "none open".
        for state in [
            TicketState::Queued,
            TicketState::Sent,
            TicketState::Accepted,
        ] {
            self.tickets
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(0);
        }
        for (state, n) in counts {
            self.tickets
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(*n);
        }
    }
}
