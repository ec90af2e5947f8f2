//! `unbind.v1.CarrierPush` (carriers push the daily list of cancelled / re-issued numbers) and
//! `unbind.v1.NumberStatus` (app vendors ask whether a number changed hands since a date).

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::{
    ApiError,
    correlator::correlator_of,
    edge::Edge,
    number_status::{GRPC_FIELDS, Question, check_recycled},
    tenant::{Action, Tenant},
};
use crate::{
    audit::{AuditAction, Entry},
    clock::{ms_from_timestamp, timestamp_from_ms},
    domain::E164,
    gateway::Gateway,
    proto::{
        CheckNumberRecycledRequest, CheckNumberRecycledResponse, GetSubmissionRequest,
        GetSubmissionResponse, RecycledNumber, SubmitRecycledNumbersRequest,
        SubmitRecycledNumbersResponse,
        carrier_push_server::CarrierPush,
        get_submission_response::{AppDelivery, app_delivery::State as DeliveryState},
        number_status_server::NumberStatus,
    },
    push::{MAX_NUMBERS, MAX_SUBMISSION_KEY_LEN, Recycled},
};

/// Number `i` of a push, validated.
fn recycled(i: usize, n: &RecycledNumber) -> Result<Recycled, Status> {
    let phone = E164::parse(&n.phone_number).map_err(|_| ApiError::InvalidPhoneNumberAt {
        field: format!("numbers[{i}].phone_number"),
    })?;
    let (Some(cancelled), Some(reissued)) = (&n.cancelled_at, &n.reissued_at) else {
        return Err(ApiError::field(
            format!("numbers[{i}]"),
            "cancelled_at and reissued_at are required",
        )
        .into());
    };
    let (cancelled_at, reissued_at) = (ms_from_timestamp(cancelled), ms_from_timestamp(reissued));
    if reissued_at < cancelled_at {
        return Err(
            ApiError::field(format!("numbers[{i}].reissued_at"), "before cancelled_at").into(),
        );
    }
    Ok(Recycled {
        phone,
        cancelled_at,
        reissued_at,
    })
}

/// Both services; cheap to clone.
#[derive(Clone)]
pub struct PushService {
    gateway: Arc<Gateway>,
    /// Who may call, and the audit of refusals.
    edge: Edge,
}

impl PushService {
    pub fn new(gateway: Arc<Gateway>, edge: Edge) -> Self {
        Self { gateway, edge }
    }

    fn audit(
        &self,
        tenant: &Tenant,
        number_hash: &str,
        action: AuditAction,
        apps: String,
        outcome: String,
        correlator: &str,
    ) {
        self.gateway.audit.record(Entry {
            tenant: &tenant.name,
            number_hash,
            action,
            apps,
            outcome,
            correlator,
        });
    }
}

impl PushService {
    /// Identifies the calling tenant and checks its role and rate; a refusal is audited under
    /// `action`.
    async fn admit<T>(
        &self,
        request: &Request<T>,
        action: Action,
        audited_as: AuditAction,
    ) -> Result<Arc<Tenant>, Status> {
        self.edge
            .admit(request, action, audited_as)
            .await
            .map_err(Status::from)
    }

    async fn submit(
        &self,
        tenant: &Tenant,
        correlator: &str,
        mut stream: Streaming<SubmitRecycledNumbersRequest>,
    ) -> Result<SubmitRecycledNumbersResponse, Status> {
        let pusher = &self.gateway.pusher;
        // Opened with the first message (which carries the key); the numbers go to the store in
        // chunks as they arrive, so memory does not grow with the push. An error below drops it,
        // which discards what was written.
        let mut receiving = None;
        while let Some(message) = stream.message().await? {
            // The key comes with the first message; a later message may repeat it, never change it.
            let sent = message.submission_key.trim();
            let receiving = match &mut receiving {
                None => {
                    if !sent.is_empty()
                        && (sent.len() > MAX_SUBMISSION_KEY_LEN
                            || !sent.bytes().all(|b| b.is_ascii_graphic()))
                    {
                        return Err(ApiError::field(
                            "submission_key",
                            format!("at most {MAX_SUBMISSION_KEY_LEN} printable ASCII characters"),
                        )
                        .into());
                    }
                    let key = Some(sent).filter(|k| !k.is_empty());
                    receiving.insert(pusher.receive(&tenant.name, key))
                }
                Some(receiving) => {
                    if !sent.is_empty() && Some(sent) != receiving.key() {
                        return Err(ApiError::field(
                            "submission_key",
                            "set in the first message only (a later message may repeat it)",
                        )
                        .into());
                    }
                    receiving
                }
            };
            for n in message.numbers {
                let i = receiving.len();
                if i >= MAX_NUMBERS {
                    return Err(ApiError::field(
                        "numbers",
                        format!("at most {MAX_NUMBERS} numbers per submission"),
                    )
                    .into());
                }
                receiving.add(&recycled(i, &n)?).await?;
            }
        }
        let Some(receiving) = receiving.filter(|r| !r.is_empty()) else {
            return Err(ApiError::field("numbers", "at least one number is required").into());
        };
        let count = receiving.len();
        let submitted = receiving.finish().await?;
        let apps = self.gateway.catalog.snapshot().enabled().count();
        let id = submitted.id;
        let outcome = if submitted.replayed {
            format!("{count} numbers: sent again, answered with {id}")
        } else {
            format!("{count} numbers stored as {id}")
        };
        self.audit(
            tenant,
            "",
            AuditAction::Push,
            format!("{apps} apps"),
            outcome,
            correlator,
        );
        Ok(SubmitRecycledNumbersResponse {
            submission_id: id,
            accepted: count as u32,
        })
    }

    async fn progress(
        &self,
        tenant: &Tenant,
        request: &GetSubmissionRequest,
    ) -> Result<GetSubmissionResponse, Status> {
        let id = &request.submission_id;
        if !is_submission_id(id) {
            return Err(ApiError::field("submission_id", "not a submission id").into());
        }
        let found = self.gateway.pusher.progress(id).await?;
        // Another tenant's submission does not exist for this one.
        let Some((_, total, created_at, apps)) = found.filter(|f| f.0 == tenant.name) else {
            return Err(ApiError::NotFound { what: "submission" }.into());
        };
        let catalog = self.gateway.catalog.snapshot();
        Ok(GetSubmissionResponse {
            submission_id: id.clone(),
            total_numbers: total as u32,
            deliveries: apps
                .into_iter()
                .map(|a| {
                    let state = if a.batches_delivered == a.batches_total {
                        DeliveryState::Delivered
                    } else if a.batches_dropped > 0 || catalog.get(&a.app_id).is_none() {
                        DeliveryState::AppRemoved
                    } else if catalog.get(&a.app_id).is_some_and(|app| !app.enabled) {
                        DeliveryState::AppDisabled
                    } else {
                        DeliveryState::Delivering
                    };
                    AppDelivery {
                        app_id: a.app_id,
                        batches_total: a.batches_total as u32,
                        batches_delivered: a.batches_delivered as u32,
                        numbers_delivered: a.numbers_delivered as u32,
                        batches_dropped: a.batches_dropped as u32,
                        state: state as i32,
                    }
                })
                .collect(),
            created_at: Some(timestamp_from_ms(created_at)),
        })
    }
}

fn is_submission_id(id: &str) -> bool {
    id.strip_prefix("sub_")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tonic::async_trait]
impl CarrierPush for PushService {
    async fn submit_recycled_numbers(
        &self,
        request: Request<Streaming<SubmitRecycledNumbersRequest>>,
    ) -> Result<Response<SubmitRecycledNumbersResponse>, Status> {
        const ACTION: AuditAction = AuditAction::Push;
        let tenant = self.admit(&request, Action::Push, ACTION).await?;
        let correlator = correlator_of(&request);
        self.submit(&tenant, &correlator, request.into_inner())
            .await
            .map(Response::new)
            .inspect_err(|s| {
                self.edge
                    .refused_with(&tenant.name, "", ACTION, &correlator, s)
            })
    }

    async fn get_submission(
        &self,
        request: Request<GetSubmissionRequest>,
    ) -> Result<Response<GetSubmissionResponse>, Status> {
        const ACTION: AuditAction = AuditAction::PushProgress;
        let tenant = self.admit(&request, Action::Push, ACTION).await?;
        self.progress(&tenant, request.get_ref())
            .await
            .map(Response::new)
            .inspect_err(|s| {
                self.edge
                    .refused_with(&tenant.name, "", ACTION, &correlator_of(&request), s)
            })
    }
}

#[tonic::async_trait]
impl NumberStatus for PushService {
    async fn check_number_recycled(
        &self,
        request: Request<CheckNumberRecycledRequest>,
    ) -> Result<Response<CheckNumberRecycledResponse>, Status> {
        const ACTION: AuditAction = AuditAction::CheckRecycled;
        let tenant = self.admit(&request, Action::CheckNumber, ACTION).await?;
        let correlator = correlator_of(&request);
        let mut hash = String::new();
        let request = request.get_ref();
        let recycled = match &request.specified_date {
            None => Err(ApiError::field("specified_date", "required")),
            Some(date) => {
                let question = Question {
                    phone_number: &request.phone_number,
                    since_ms: ms_from_timestamp(date),
                    fields: GRPC_FIELDS,
                };
                check_recycled(&self.gateway, &question, &mut hash).await
            }
        }
        .map_err(Status::from)
        .inspect_err(|s| {
            self.edge
                .refused_with(&tenant.name, &hash, ACTION, &correlator, s)
        })?;
        self.audit(
            &tenant,
            &hash,
            ACTION,
            String::new(),
            format!("recycled={recycled}"),
            &correlator,
        );
        Ok(Response::new(CheckNumberRecycledResponse { recycled }))
    }
}
