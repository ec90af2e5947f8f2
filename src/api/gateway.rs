//! `unbind.v1.AccountGateway`: input validation, then the verification, fan-out and merge
//! modules. Every error leaves through [`ApiError`].

use std::{collections::HashSet, pin::Pin, sync::Arc};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    ApiError,
    correlator::correlator_of,
    deadline::deadline_of,
    edge::Edge,
    lookup::{Lookup, LookupRun, ResponseBudget},
    tenant::{Action, Tenant},
};
use crate::{
    audit::{AuditAction, Entry},
    clock::timestamp_from_ms,
    domain::{E164, IdLastSix},
    fanout::App,
    gateway::Gateway,
    proto::{
        self, AppInfo, AppResult, CompleteVerificationRequest, CompleteVerificationResponse,
        GetUnbindTicketsRequest, GetUnbindTicketsResponse, LinkedAccount, ListAppsRequest,
        ListAppsResponse, ListLinkedAccountsRequest, ListLinkedAccountsResponse,
        StartVerificationRequest, StartVerificationResponse, SummarySms, UnbindRequest,
        UnbindResponse, account_gateway_server::AccountGateway,
    },
    security::{CODE_LENGTH, OneTimeCode, Session},
    unbind::Ticket,
    verification::VerifyError,
};

/// The service; cheap to clone.
#[derive(Clone)]
pub struct GatewayService {
    gateway: Arc<Gateway>,
    /// Who may call, and the audit of refusals.
    edge: Edge,
}

impl GatewayService {
    pub fn new(gateway: Arc<Gateway>, edge: Edge) -> Self {
        Self { gateway, edge }
    }

    /// Identifies the calling tenant, checks its role and rate; a refusal is audited under
    /// `action`.
    async fn admit<T>(
        &self,
        request: &Request<T>,
        action: AuditAction,
    ) -> Result<Arc<Tenant>, ApiError> {
        self.edge.admit(request, Action::Holder, action).await
    }

    /// Audits a request refused before it reached a step that audits itself, and hands back
    /// the error.
    fn refused<T>(
        &self,
        tenant: &Tenant,
        number_hash: &str,
        action: AuditAction,
        request: &Request<T>,
        e: ApiError,
    ) -> ApiError {
        self.edge.refused(
            &tenant.name,
            number_hash,
            action,
            &correlator_of(request),
            &e,
        );
        e
    }

    fn session(&self, tenant: &Tenant, token: &str) -> Result<Session, ApiError> {
        let g = &self.gateway;
        Ok(Session::verify(
            &g.keys,
            token,
            &tenant.name,
            g.clock.now_ms(),
        )?)
    }

    /// The apps a look-up asks: the named ones, or every enabled app.
    fn selected_apps(&self, app_ids: &[String]) -> Result<Vec<Arc<App>>, ApiError> {
        let catalog = self.gateway.catalog.snapshot();
        if app_ids.is_empty() {
            return Ok(catalog.enabled().cloned().collect());
        }
        if app_ids.len() > self.gateway.config.limits.max_app_ids {
            return Err(ApiError::field(
                "app_ids",
                format!("at most {} app ids", self.gateway.config.limits.max_app_ids),
            ));
        }
        let mut seen = HashSet::with_capacity(app_ids.len());
        let mut apps = Vec::with_capacity(app_ids.len());
        for (i, id) in app_ids.iter().enumerate() {
            let field = format!("app_ids[{i}]");
            let app = catalog.get(id).ok_or_else(|| ApiError::UnknownApp {
                field: field.clone(),
                app_id: id.chars().take(64).collect(),
            })?;
            if !seen.insert(app.id.clone()) {
                return Err(ApiError::field(field, "duplicate app id"));
            }
            // A disabled app is in the catalog but not asked.
            if app.enabled {
                apps.push(Arc::clone(app));
            }
        }
        Ok(apps)
    }

    /// Validates a look-up request, starts the fan-out, and reads the number's open tickets
    /// meanwhile; a refusal is audited. `streamed`: the answer goes out one message per app.
    async fn start_lookup(
        &self,
        request: &Request<ListLinkedAccountsRequest>,
        streamed: bool,
    ) -> Result<LookupRun, ApiError> {
        let tenant = self.admit(request, AuditAction::Lookup).await?;
        let correlator = correlator_of(request);
        let g = &self.gateway;
        let started = async {
            let body = request.get_ref();
            let session = self.session(&tenant, &body.session_token)?;
            let apps = self.selected_apps(&body.app_ids)?;
            let deadline = deadline_of(
                request,
                g.config.lookup.default_deadline,
                g.config.lookup.max_deadline,
            );
            let number = g.keys.number_hash(&session.phone);
            let asked = apps.len();
            let outcomes =
                g.fanout
                    .lookup(&session.phone, &number, apps, deadline, body.bypass_cache);
            tracing::info!(number = %session.phone, apps = asked, "look-up started");
            // Also for a summary: its counts must not include accounts already unbound.
            let tickets = g.unbinder.lookup_tickets(&session).await?;
            let summary_sms = if body.deliver_by_sms {
                self.claim_summary_sms(&session).await
            } else {
                SummarySms::Unspecified
            };
            let limit = g.config.limits.max_response_bytes;
            let budget = if streamed {
                ResponseBudget::PerMessage { limit }
            } else {
                ResponseBudget::whole(limit, outcomes.len())
            };
            let lookup = Lookup {
                budget,
                outcomes,
                number,
                tickets,
                summary_only: body.summary_only,
                summary_sms,
                tenant: Arc::clone(&tenant),
                correlator: correlator.clone(),
            };
            Ok::<_, ApiError>(LookupRun::new(Arc::clone(g), session, lookup))
        };
        started.await.inspect_err(|e| {
            self.edge
                .refused(&tenant.name, "", AuditAction::Lookup, &correlator, e);
        })
    }

    /// Counts a wrong code against the tenant; reports a tenant whose callers guess faster than
    /// its alert rate (log, metric, audit), without refusing anyone.
    async fn wrong_code<T>(&self, tenant: &Tenant, request: &Request<T>) {
        let alert = tenant.record_failure().await;
        self.gateway
            .verifier
            .metrics()
            .wrong_code(&tenant.name, alert);
        if alert {
            tracing::warn!(
                tenant = %tenant.name,
                "wrong verification codes above the tenant's alert rate: its callers may be guessing"
            );
            self.gateway.audit.record(Entry {
                tenant: &tenant.name,
                number_hash: "",
                action: AuditAction::WrongCodesAlert,
                apps: String::new(),
                outcome: "over_alert_rate".to_owned(),
                correlator: &correlator_of(request),
            });
        }
    }

    /// Whether this look-up's summary may go by SMS (a few per number an hour, so a session
    /// cannot flood the holder's phone). A store that cannot say sends nothing.
    async fn claim_summary_sms(&self, session: &Session) -> SummarySms {
        match self
            .gateway
            .verifier
            .claim_summary_sms(&session.phone)
            .await
        {
            Ok(true) => SummarySms::Sent,
            Ok(false) => {
                tracing::info!(number = %session.phone, "summary SMS not sent: hourly limit reached");
                SummarySms::Limited
            }
            Err(e) => {
                tracing::warn!(number = %session.phone, error = %e, "summary SMS not sent: store error");
                SummarySms::Limited
            }
        }
    }

    /// The tickets a `GetUnbindTickets` asks for; `number_hash` is set once a session names
    /// the number (for the audit trail).
    async fn read_tickets(
        &self,
        tenant: &Tenant,
        body: &GetUnbindTicketsRequest,
        number_hash: &mut String,
    ) -> Result<Vec<Ticket>, ApiError> {
        let unbinder = &self.gateway.unbinder;
        let session = if body.session_token.is_empty() {
            None
        } else {
            let session = self.session(tenant, &body.session_token)?;
            *number_hash = self.gateway.keys.number_hash(&session.phone).hex();
            Some(session)
        };
        if body.ticket_ids.is_empty() {
            let Some(session) = session else {
                return Err(ApiError::field(
                    "session_token",
                    "give a session_token (the holder's tickets) or ticket_ids",
                ));
            };
            return Ok(unbinder.tickets_of(&session).await?);
        }
        if body.ticket_ids.len() > MAX_TICKET_IDS {
            return Err(ApiError::field(
                "ticket_ids",
                format!("at most {MAX_TICKET_IDS} ticket ids"),
            ));
        }
        if let Some(i) = body
            .ticket_ids
            .iter()
            .position(|id| !is_well_formed_id(id, "tkt"))
        {
            return Err(ApiError::field(
                format!("ticket_ids[{i}]"),
                "not a ticket id",
            ));
        }
        let number = session.as_ref().map(|_| number_hash.as_str());
        let mut rows = unbinder
            .tickets_by_ids(&tenant.name, number, &body.ticket_ids)
            .await?;
        // With a session too, only that holder's tickets.
        if session.is_some() {
            rows.retain(|t| t.row.number_hash == *number_hash);
        }
        Ok(rows)
    }
}

fn validate_phone(input: &str) -> Result<E164, ApiError> {
    E164::parse(input).map_err(|_| ApiError::InvalidPhoneNumber {
        field: "phone_number",
    })
}

fn is_well_formed_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The metric word for how a verification step ended. A started verification counts the same
/// whether or not the ID characters matched, as the caller sees it.
fn verification_outcome(step: &str, error: Option<&VerifyError>) -> &'static str {
    match (step, error) {
        ("start", None) => "started",
        (_, None) => "verified",
        (_, Some(VerifyError::InvalidCode)) => "wrong_code",
        (_, Some(VerifyError::Expired)) => "expired",
        (_, Some(VerifyError::Failed)) => "too_many_wrong_codes",
        (_, Some(VerifyError::MaxCodesExceeded { .. })) => "too_many_codes",
        (_, Some(VerifyError::Registry(_))) => "registry_unavailable",
        (_, Some(VerifyError::Store(_))) => "store_error",
    }
}

/// The response metadata of `StreamLinkedAccounts` that says what became of the summary SMS.
pub const SUMMARY_SMS_HEADER: &str = "unbind-summary-sms";

fn summary_sms_word(s: SummarySms) -> Option<&'static str> {
    match s {
        SummarySms::Unspecified => None,
        SummarySms::Sent => Some("sent"),
        SummarySms::Limited => Some("limited"),
    }
}

/// Most ids in one `GetUnbindTickets`.
const MAX_TICKET_IDS: usize = 1_000;

type AppResultStream = Pin<Box<dyn Stream<Item = Result<AppResult, Status>> + Send>>;

#[tonic::async_trait]
impl AccountGateway for GatewayService {
    async fn start_verification(
        &self,
        request: Request<StartVerificationRequest>,
    ) -> Result<Response<StartVerificationResponse>, Status> {
        const ACTION: AuditAction = AuditAction::VerificationStart;
        let tenant = self.admit(&request, ACTION).await?;
        let body = request.get_ref();
        let phone = validate_phone(&body.phone_number)
            .map_err(|e| self.refused(&tenant, "", ACTION, &request, e))?;
        let number_hash = self.gateway.keys.number_hash(&phone).hex();
        let id = IdLastSix::parse(&body.id_last_six).map_err(|_| {
            let e = ApiError::InvalidIdLastSix {
                field: "id_last_six",
            };
            self.refused(&tenant, &number_hash, ACTION, &request, e)
        })?;
        tenant
            .check_failures()
            .await
            .map_err(|e| self.refused(&tenant, &number_hash, ACTION, &request, e))?;
        let started = self
            .gateway
            .verifier
            .start(&tenant.name, &correlator_of(&request), &phone, &id)
            .await;
        self.gateway
            .verifier
            .metrics()
            .verification(verification_outcome("start", started.as_ref().err()));
        let started = started.map_err(ApiError::from)?;
        Ok(Response::new(StartVerificationResponse {
            verification_id: started.verification_id,
            expires_at: Some(timestamp_from_ms(started.expires_ms)),
            code_length: CODE_LENGTH,
        }))
    }

    async fn complete_verification(
        &self,
        request: Request<CompleteVerificationRequest>,
    ) -> Result<Response<CompleteVerificationResponse>, Status> {
        const ACTION: AuditAction = AuditAction::VerificationComplete;
        let tenant = self.admit(&request, ACTION).await?;
        let body = request.get_ref();
        if !is_well_formed_id(&body.verification_id, "ver") {
            let e = ApiError::field("verification_id", "not a verification id");
            return Err(self.refused(&tenant, "", ACTION, &request, e).into());
        }
        tenant
            .check_failures()
            .await
            .map_err(|e| self.refused(&tenant, "", ACTION, &request, e))?;
        let code = OneTimeCode::parse(&body.code)
            .ok_or_else(|| self.refused(&tenant, "", ACTION, &request, ApiError::InvalidCode))?;
        let session = self
            .gateway
            .verifier
            .complete(
                &tenant.name,
                &correlator_of(&request),
                &body.verification_id,
                &code,
            )
            .await;
        if let Err(VerifyError::InvalidCode | VerifyError::Failed) = &session {
            self.wrong_code(&tenant, &request).await;
        }
        self.gateway
            .verifier
            .metrics()
            .verification(verification_outcome("complete", session.as_ref().err()));
        let session = session.map_err(ApiError::from)?;
        Ok(Response::new(CompleteVerificationResponse {
            session_token: session.token(&self.gateway.keys),
            expires_at: Some(timestamp_from_ms(session.expires_ms)),
            phone_number: session.phone.masked_international(),
            holder_since: session.holder_since_ms.map(timestamp_from_ms),
        }))
    }

    async fn list_linked_accounts(
        &self,
        request: Request<ListLinkedAccountsRequest>,
    ) -> Result<Response<ListLinkedAccountsResponse>, Status> {
        let mut run = self.start_lookup(&request, false).await?;
        let summary_sms = run.summary_sms();
        let mut finished = Vec::with_capacity(run.pending());
        while let Some(f) = run.next().await {
            finished.push(f);
        }
        let totals = run.finish(AuditAction::Lookup);
        // A stable order: catalog order, whatever order the apps answered in.
        finished.sort_by_key(|f| f.position);
        let mut accounts: Vec<LinkedAccount> = Vec::new();
        let mut results = Vec::with_capacity(finished.len());
        for mut f in finished {
            accounts.append(&mut f.result.accounts);
            results.push(f.result);
        }
        Ok(Response::new(ListLinkedAccountsResponse {
            accounts,
            app_results: results,
            total_accounts: totals.total_accounts,
            complete: totals.complete,
            generated_at: Some(timestamp_from_ms(self.gateway.clock.now_ms())),
            summary_sms: summary_sms as i32,
        }))
    }

    type StreamLinkedAccountsStream = AppResultStream;

    async fn stream_linked_accounts(
        &self,
        request: Request<ListLinkedAccountsRequest>,
    ) -> Result<Response<Self::StreamLinkedAccountsStream>, Status> {
        let mut run = self.start_lookup(&request, true).await?;
        let summary_sms = run.summary_sms();
        let (tx, rx) = mpsc::channel(run.pending().max(1));
        tokio::spawn(async move {
            while let Some(f) = run.next().await {
                if tx.send(Ok(f.result)).await.is_err() {
                    // The caller went away; the adapter calls finish on their own and are cached.
                    run.finish(AuditAction::LookupStreamAbandoned);
                    return;
                }
            }
            run.finish(AuditAction::LookupStream);
        });
        let mut response = Response::new(Box::pin(ReceiverStream::new(rx)) as AppResultStream);
        if let Some(word) = summary_sms_word(summary_sms) {
            response.metadata_mut().insert(
                SUMMARY_SMS_HEADER,
                tonic::metadata::MetadataValue::from_static(word),
            );
        }
        Ok(response)
    }

    async fn unbind(
        &self,
        request: Request<UnbindRequest>,
    ) -> Result<Response<UnbindResponse>, Status> {
        let tenant = self.admit(&request, AuditAction::Unbind).await?;
        let correlator = correlator_of(&request);
        let body = request.get_ref();
        let session = self
            .session(&tenant, &body.session_token)
            .inspect_err(|e| {
                self.edge
                    .refused(&tenant.name, "", AuditAction::Unbind, &correlator, e);
            })?;
        let number_hash = self.gateway.keys.number_hash(&session.phone).hex();
        let unbinder = &self.gateway.unbinder;
        let rows = unbinder
            .unbind(&session, &body.account_refs, &body.idempotency_key)
            .await
            .map_err(ApiError::from)
            .inspect_err(|e| {
                self.edge.refused(
                    &tenant.name,
                    &number_hash,
                    AuditAction::Unbind,
                    &correlator,
                    e,
                )
            })?;
        let mut apps: Vec<&str> = rows.iter().map(|t| t.row.app_id.as_str()).collect();
        apps.sort_unstable();
        apps.dedup();
        self.gateway.audit.record(Entry {
            tenant: &tenant.name,
            number_hash: &number_hash,
            action: AuditAction::Unbind,
            apps: apps.join(","),
            outcome: format!("{} tickets", rows.len()),
            correlator: &correlator,
        });
        Ok(Response::new(UnbindResponse {
            tickets: unbinder.to_proto(&rows),
        }))
    }

    async fn get_unbind_tickets(
        &self,
        request: Request<GetUnbindTicketsRequest>,
    ) -> Result<Response<GetUnbindTicketsResponse>, Status> {
        const ACTION: AuditAction = AuditAction::TicketsRead;
        let tenant = self.admit(&request, ACTION).await?;
        let mut number_hash = String::new();
        let rows = self
            .read_tickets(&tenant, request.get_ref(), &mut number_hash)
            .await
            .map_err(|e| self.refused(&tenant, &number_hash, ACTION, &request, e))?;
        let mut apps: Vec<&str> = rows.iter().map(|t| t.row.app_id.as_str()).collect();
        apps.sort_unstable();
        apps.dedup();
        self.gateway.audit.record(Entry {
            tenant: &tenant.name,
            number_hash: &number_hash,
            action: ACTION,
            apps: apps.join(","),
            outcome: format!("{} tickets", rows.len()),
            correlator: &correlator_of(&request),
        });
        Ok(Response::new(GetUnbindTicketsResponse {
            tickets: self.gateway.unbinder.to_proto(&rows),
        }))
    }

    async fn list_apps(
        &self,
        request: Request<ListAppsRequest>,
    ) -> Result<Response<ListAppsResponse>, Status> {
        self.admit(&request, AuditAction::AppsList).await?;
        let apps = self
            .gateway
            .catalog
            .snapshot()
            .all()
            .iter()
            .map(|app| AppInfo {
                app_id: app.id.to_string(),
                name: app.name.clone(),
                category: app.category.clone(),
                customer_service: app.customer_service.clone(),
                enabled: app.enabled,
                health: app.health() as i32,
            })
            .collect();
        Ok(Response::new(proto::ListAppsResponse { apps }))
    }
}
