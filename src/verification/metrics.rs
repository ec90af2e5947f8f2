//! Verification's metrics, beside what they measure: each step's outcome, wrong codes by
//! tenant and the tenants that went over their alert rate, numbers whose ID characters are being
//! guessed at. Labels are fixed words and tenant names: never a number, a hash, or a code.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `unbind_verifications_total` | counter | `outcome` |
//! | `unbind_wrong_codes_total` | counter | `tenant` |
//! | `unbind_wrong_code_alerts_total` | counter (a tenant went over its alert rate) | `tenant` |
//! | `unbind_id_guessing_alerts_total` | counter (a number had many ID characters tried) | |

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

use crate::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

struct Families {
    verifications: Family<OutcomeLabels, Counter>,
    wrong_codes: Family<TenantLabels, Counter>,
    wrong_code_alerts: Family<TenantLabels, Counter>,
    id_guessing_alerts: Counter,
}

/// The verification metrics; cheap to clone.
#[derive(Clone)]
pub struct VerificationMetrics {
    families: Arc<Families>,
}

impl VerificationMetrics {
    /// Declares the families in `metrics`' registry (once per registry).
    pub fn register(metrics: &Metrics) -> Self {
        let f = Families {
            verifications: Family::default(),
            wrong_codes: Family::default(),
            wrong_code_alerts: Family::default(),
            id_guessing_alerts: Counter::default(),
        };
        metrics.register(
            "verifications",
            "Identity verification steps by outcome",
            f.verifications.clone(),
        );
        metrics.register(
            "wrong_codes",
            "Wrong verification codes entered, by tenant",
            f.wrong_codes.clone(),
        );
        metrics.register(
            "wrong_code_alerts",
            "Times a tenant's callers went over its wrong-code alert rate",
            f.wrong_code_alerts.clone(),
        );
        metrics.register(
            "id_guessing_alerts",
            "Times a number had more different ID characters tried in an hour than the alert rate",
            f.id_guessing_alerts.clone(),
        );
        Self {
            families: Arc::new(f),
        }
    }

    /// Counts a verification step's outcome (a fixed word, e.g. `started`, `wrong_code`).
    pub fn verification(&self, outcome: &'static str) {
        self.families
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
        self.families.wrong_codes.get_or_create(&labels).inc();
        if alert {
            self.families.wrong_code_alerts.get_or_create(&labels).inc();
        }
    }

    /// Counts a number whose ID characters are being guessed at.
    pub fn id_guessing_alert(&self) {
        self.families.id_guessing_alerts.inc();
    }
}
