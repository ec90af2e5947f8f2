//! Who is calling, and may they? Tenants are the institutions configured under `[[tenants]]`,
//! identified by the client certificate of their mTLS connection (URI SAN
//! `urn:unbind-gateway:tenant:NAME`, else the subject CN). Each has a role that decides which
//! RPCs it may call, and a token bucket that caps its request rate: one bucket shared by every
//! replica (`super::rate`), so the rate is the tenant's total, however many replicas serve it.
//!
//! In development mode (plain text, no client certificates) every caller is the one
//! `development` tenant, with the carrier role and no rate limit.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use tokio::time::Instant;
use x509_parser::extensions::GeneralName;

use super::{
    ApiError,
    rate::{SharedBucket, SharedStore, TokenBucket},
};
use crate::config::{Role, TenantConfig};

/// The tenant of every caller in development mode.
pub const DEVELOPMENT_TENANT: &str = "development";

/// The URI SAN prefix naming a tenant in a client certificate.
pub const TENANT_URI_PREFIX: &str = "urn:unbind-gateway:tenant:";

/// The metadata a tenant names the visitor behind a call by (`[[tenants]] per_visitor`): an
/// opaque id of 1 to 128 characters of `A-Z a-z 0-9 - _ . :`, chosen by the tenant (a random id
/// or a keyed hash, never a person's number).
pub const VISITOR: &str = "x-visitor";

/// The most visitors' buckets a tenant keeps (least recently used are dropped beyond it).
const MAX_VISITORS: u64 = 100_000;

/// How long an idle visitor's bucket is kept (long enough to refill a bucket of any sensible
/// rate).
const VISITOR_IDLE: Duration = Duration::from_secs(600);

/// A rate per visitor of one tenant (per replica).
struct VisitorBuckets {
    rate: f64,
    burst: u32,
    buckets: moka::sync::Cache<String, Arc<TokenBucket>>,
}

impl std::fmt::Debug for VisitorBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisitorBuckets")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl VisitorBuckets {
    fn take(&self, visitor: &str) -> Result<(), Duration> {
        self.buckets
            .get_with(visitor.to_owned(), || {
                Arc::new(TokenBucket::new(self.rate, self.burst))
            })
            .take()
    }
}

/// The request's visitor id: `Ok(None)` when absent, an error when it is not one. Never echoed
/// or logged.
fn visitor_of<T>(request: &tonic::Request<T>) -> Result<Option<&str>, ApiError> {
    let Some(value) = request.metadata().get(VISITOR) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(Some)
        .ok_or_else(|| {
            ApiError::field(
                VISITOR,
                "an opaque id of 1 to 128 characters of A-Z, a-z, 0-9, '-', '_', '.', ':'",
            )
        })
}

/// What a request wants to do, for the role check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Verification, look-ups, unbinding, tickets, the app list.
    Holder,
    /// `CheckNumberRecycled`.
    CheckNumber,
    /// The recycled-number push.
    Push,
}

impl Role {
    /// Whether this role may do `action`.
    pub fn allows(self, action: Action) -> bool {
        match self {
            Role::Carrier => true,
            Role::Portal => action == Action::Holder,
            Role::App => action == Action::CheckNumber,
        }
    }
}

/// A caller, once identified.
#[derive(Debug)]
pub struct Tenant {
    pub name: String,
    pub role: Role,
    bucket: Option<SharedBucket>,
    /// The operator's optional hard cap on wrong codes per hour. Off by default: with it, a
    /// tenant's end users can switch verification off for all its other users. Shared by every
    /// replica, like the rate.
    failures: Option<SharedBucket>,
    /// Wrong codes per hour above which the tenant's guessing is reported (never refused). Per
    /// replica: it only decides when to tell the operator.
    alert: WrongCodeAlert,
    /// `per_visitor`: a bucket per visitor, checked before the tenant's.
    visitors: Option<VisitorBuckets>,
}

/// Notices when a tenant's callers enter wrong codes faster than `per_hour`, at most one report
/// an hour. Guessing itself stays bounded per verification (its tries) and per (number, ID)
/// (starts an hour); this is for the operator to see a tenant being used to guess.
#[derive(Debug)]
struct WrongCodeAlert {
    rate: TokenBucket,
    last_report: std::sync::Mutex<Option<Instant>>,
}

impl WrongCodeAlert {
    fn new(per_hour: u32) -> Self {
        Self {
            rate: TokenBucket::new(f64::from(per_hour) / 3600.0, per_hour),
            last_report: std::sync::Mutex::new(None),
        }
    }

    /// Counts one wrong code; true when this one should be reported.
    fn record(&self) -> bool {
        if self.rate.take().is_ok() {
            return false;
        }
        let mut last = self.last_report.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match *last {
            Some(at) if now.duration_since(at) < Duration::from_secs(3600) => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

impl Tenant {
    /// Counts a failed verification attempt (a wrong code). True when the tenant has just gone
    /// over its alert rate and the caller should report it (once an hour at most).
    #[must_use]
    pub async fn record_failure(&self) -> bool {
        if let Some(b) = &self.failures {
            let _ = b.take().await;
        }
        self.alert.record()
    }

    /// Refuses verification work while the tenant's failure budget is spent.
    pub async fn check_failures(&self) -> Result<(), ApiError> {
        match &self.failures {
            Some(b) => b
                .available()
                .await
                .map_err(|retry_after| ApiError::RateLimited { retry_after }),
            None => Ok(()),
        }
    }
}

/// A caller refused at the door, and who it was when that is known.
#[derive(Debug)]
pub struct Refusal {
    pub tenant: Option<Arc<Tenant>>,
    pub error: ApiError,
}

/// The configured tenants.
pub struct Tenants {
    by_name: HashMap<String, Arc<Tenant>>,
    development: Option<Arc<Tenant>>,
}

impl Tenants {
    /// From config; `development` admits certificate-less callers as the development tenant.
    /// With `shared`, the tenants' buckets are shared by every replica using that store.
    pub fn new(configs: &[TenantConfig], development: bool, shared: Option<SharedStore>) -> Self {
        let by_name = configs
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    Arc::new(Tenant {
                        name: t.name.clone(),
                        role: t.role,
                        bucket: Some(SharedBucket::new(
                            format!("tenant:{}:requests", t.name),
                            t.requests_per_second,
                            t.burst,
                            shared.clone(),
                        )),
                        failures: t.max_code_failures_per_hour.map(|cap| {
                            SharedBucket::new(
                                format!("tenant:{}:wrong_codes", t.name),
                                f64::from(cap) / 3600.0,
                                cap,
                                shared.clone(),
                            )
                        }),
                        alert: WrongCodeAlert::new(t.wrong_codes_alert_per_hour),
                        visitors: t.per_visitor.map(|v| VisitorBuckets {
                            rate: v.requests_per_second,
                            burst: v.burst,
                            buckets: moka::sync::Cache::builder()
                                .max_capacity(MAX_VISITORS)
                                .time_to_idle(VISITOR_IDLE)
                                .build(),
                        }),
                    }),
                )
            })
            .collect();
        let development = development.then(|| {
            Arc::new(Tenant {
                name: DEVELOPMENT_TENANT.to_owned(),
                role: Role::Carrier,
                bucket: None,
                failures: None,
                alert: WrongCodeAlert::new(1000),
                visitors: None,
            })
        });
        Self {
            by_name,
            development,
        }
    }

    /// Identifies the caller, checks its role allows `action`, and takes one token from its
    /// bucket.
    pub async fn admit<T>(
        &self,
        request: &tonic::Request<T>,
        action: Action,
    ) -> Result<Arc<Tenant>, ApiError> {
        self.admit_or_refuse(request, action)
            .await
            .map_err(|r| r.error)
    }

    /// As [`Tenants::admit`], and a refusal names the tenant when the caller was identified (for
    /// the audit trail).
    pub async fn admit_or_refuse<T>(
        &self,
        request: &tonic::Request<T>,
        action: Action,
    ) -> Result<Arc<Tenant>, Refusal> {
        let tenant = self.identify(request).map_err(|error| Refusal {
            tenant: None,
            error,
        })?;
        let visitor = visitor_of(request).map_err(|error| Refusal {
            tenant: Some(Arc::clone(&tenant)),
            error,
        })?;
        self.check(tenant, action, visitor).await
    }

    /// As [`Tenants::admit_or_refuse`], for a caller identified by other means than its
    /// certificate (the HTTP API's access tokens name the tenant): `None` is the development
    /// tenant, when development mode has one.
    pub async fn admit_named(
        &self,
        name: Option<&str>,
        action: Action,
    ) -> Result<Arc<Tenant>, Refusal> {
        let tenant = match name {
            Some(name) => self
                .by_name
                .get(name)
                .cloned()
                .ok_or(ApiError::PermissionDenied {
                    why: "the access token's client is not a tenant of this gateway".into(),
                }),
            None => self.development.clone().ok_or(ApiError::PermissionDenied {
                why: "an access token naming a tenant is required".into(),
            }),
        }
        .map_err(|error| Refusal {
            tenant: None,
            error,
        })?;
        self.check(tenant, action, None).await
    }

    /// The role and rate checks of an identified caller.
    async fn check(
        &self,
        tenant: Arc<Tenant>,
        action: Action,
        visitor: Option<&str>,
    ) -> Result<Arc<Tenant>, Refusal> {
        let refuse = |error| Refusal {
            tenant: Some(Arc::clone(&tenant)),
            error,
        };
        if !tenant.role.allows(action) {
            return Err(refuse(ApiError::PermissionDenied {
                why: format!("tenant role `{}` may not call this", tenant.role.as_str()),
            }));
        }
        // The visitor first: a visitor over its rate spends none of the tenant's.
        if let (Some(visitors), Some(visitor)) = (&tenant.visitors, visitor) {
            visitors
                .take(visitor)
                .map_err(|retry_after| refuse(ApiError::VisitorRateLimited { retry_after }))?;
        }
        if let Some(bucket) = &tenant.bucket {
            bucket
                .take()
                .await
                .map_err(|retry_after| refuse(ApiError::RateLimited { retry_after }))?;
        }
        Ok(tenant)
    }

    fn identify<T>(&self, request: &tonic::Request<T>) -> Result<Arc<Tenant>, ApiError> {
        let name = request
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|c| tenant_of_certificate(c)));
        match name {
            Some(name) => {
                self.by_name
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| ApiError::PermissionDenied {
                        why: "the client certificate names no configured tenant".into(),
                    })
            }
            None => self
                .development
                .clone()
                .ok_or_else(|| ApiError::PermissionDenied {
                    why: "a client certificate naming a tenant is required".into(),
                }),
        }
    }
}

/// The tenant name carried by a client certificate (DER): the URI SAN
/// `urn:unbind-gateway:tenant:<name>` if present, else the subject CN. None if neither, if the
/// DER does not parse, or if the certificate names more than one tenant (an ambiguous identity
/// is no identity).
pub fn tenant_of_certificate(der: &[u8]) -> Option<String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let san = cert.subject_alternative_name().ok()?;
    let uri_names: BTreeSet<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(TENANT_URI_PREFIX),
            _ => None,
        })
        .collect();
    if !uri_names.is_empty() {
        let mut names = uri_names.into_iter();
        return match (names.next(), names.next()) {
            (Some(name), None) if !name.is_empty() => Some(name.to_owned()),
            _ => None,
        };
    }
    let common_names: BTreeSet<&str> = cert
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().ok())
        .collect::<Option<_>>()?;
    let mut names = common_names.into_iter();
    match (names.next(), names.next()) {
        (Some(name), None) if !name.is_empty() => Some(name.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wrong_codes_over_the_alert_rate_are_reported_once_an_hour() {
        let alert = WrongCodeAlert::new(3);
        assert!(!alert.record() && !alert.record() && !alert.record());
        assert!(
            alert.record(),
            "the fourth wrong code in an hour is reported"
        );
        assert!(!alert.record(), "then not again within the hour");
        tokio::time::advance(Duration::from_secs(3600)).await;
        for _ in 0..3 {
            assert!(!alert.record());
        }
        assert!(alert.record());
    }

    #[test]
    fn roles_allow_what_the_spec_says() {
        assert!(Role::Carrier.allows(Action::Push) && Role::Carrier.allows(Action::Holder));
        assert!(Role::Portal.allows(Action::Holder) && !Role::Portal.allows(Action::Push));
        assert!(!Role::Portal.allows(Action::CheckNumber));
        assert!(Role::App.allows(Action::CheckNumber) && !Role::App.allows(Action::Holder));
    }
}
