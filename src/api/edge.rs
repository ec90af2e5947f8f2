//! What every service does at the door: identify the calling tenant and check its role and rate
//! (`tenant`), and audit a request refused before it reached a step that audits itself, with the
//! reason the caller was given. One copy for `AccountGateway`, `CarrierPush` and `NumberStatus`.

use std::sync::Arc;

use tonic::{Request, Status};

use super::{
    ApiError,
    correlator::correlator_of,
    error::reason_of,
    tenant::{Action, Tenant, Tenants},
};
use crate::audit::{AuditAction, AuditLog, Entry};

/// The door; cheap to clone.
#[derive(Clone)]
pub struct Edge {
    tenants: Arc<Tenants>,
    audit: AuditLog,
}

impl Edge {
    pub fn new(tenants: Arc<Tenants>, audit: AuditLog) -> Self {
        Self { tenants, audit }
    }

    /// Identifies the calling tenant and checks that it may do `action` now; a refusal is
    /// audited under `audited_as`.
    pub async fn admit<T>(
        &self,
        request: &Request<T>,
        action: Action,
        audited_as: AuditAction,
    ) -> Result<Arc<Tenant>, ApiError> {
        self.tenants
            .admit_or_refuse(request, action)
            .await
            .map_err(|refusal| {
                let tenant = refusal.tenant.as_ref().map_or("", |t| t.name.as_str());
                let correlator = correlator_of(request);
                self.refused(tenant, "", audited_as, &correlator, &refusal.error);
                refusal.error
            })
    }

    /// As [`Edge::admit`], for a caller the HTTP API identified by its access token (`None`: the
    /// development tenant); `correlator` is the request's `x-correlator`.
    pub async fn admit_named(
        &self,
        name: Option<&str>,
        action: Action,
        audited_as: AuditAction,
        correlator: &str,
    ) -> Result<Arc<Tenant>, ApiError> {
        self.tenants
            .admit_named(name, action)
            .await
            .map_err(|refusal| {
                let tenant = refusal
                    .tenant
                    .as_ref()
                    .map_or(name.unwrap_or_default(), |t| t.name.as_str());
                self.refused(tenant, "", audited_as, correlator, &refusal.error);
                refusal.error
            })
    }

    /// Audits a request refused with `e`.
    pub fn refused(
        &self,
        tenant: &str,
        number_hash: &str,
        action: AuditAction,
        correlator: &str,
        e: &ApiError,
    ) {
        let outcome = e.code_and_reason().1.as_str_name().to_owned();
        self.record(tenant, number_hash, action, correlator, outcome);
    }

    /// Audits a request refused with an answer of another surface than gRPC (the HTTP API's
    /// CAMARA codes), named by `outcome`.
    pub fn refused_because(
        &self,
        tenant: &str,
        number_hash: &str,
        action: AuditAction,
        correlator: &str,
        outcome: &str,
    ) {
        self.record(tenant, number_hash, action, correlator, outcome.to_owned());
    }

    /// Audits a request refused with `status` (its `ErrorInfo` reason, else its code).
    pub fn refused_with(
        &self,
        tenant: &str,
        number_hash: &str,
        action: AuditAction,
        correlator: &str,
        status: &Status,
    ) {
        let outcome = reason_of(status).unwrap_or_else(|| format!("{:?}", status.code()));
        self.record(tenant, number_hash, action, correlator, outcome);
    }

    fn record(
        &self,
        tenant: &str,
        number_hash: &str,
        action: AuditAction,
        correlator: &str,
        outcome: String,
    ) {
        self.audit.record(Entry {
            tenant,
            number_hash,
            action,
            apps: String::new(),
            outcome,
            correlator,
        });
    }
}
