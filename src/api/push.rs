//! `unbind.v1.CarrierPush` (carriers push the daily list of cancelled / re-issued numbers) and
//! `unbind.v1.NumberStatus` (app vendors ask whether a number changed hands since a date).

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::{
    ApiError,
    correlator::correlator_of,
    tenant::{Action, Tenant},
};
use crate::{
    audit::Entry,
    clock::{ms_from_timestamp, timestamp_from_ms},
    domain::E164,
    proto::{
        CheckNumberRecycledRequest, CheckNumberRecycledResponse, GetSubmissionRequest,
        GetSubmissionResponse, SubmitRecycledNumbersRequest, SubmitRecycledNumbersResponse,
        carrier_push_server::CarrierPush, get_submission_response::AppDelivery,
        number_status_server::NumberStatus,
    },
    push::{MAX_NUMBERS, Recycled},
    server::Gateway,
};

/// Both services; cheap to clone.
#[derive(Clone)]
pub struct PushService {
    gateway: Arc<Gateway>,
}

impl PushService {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }

    fn audit(
        &self,
        tenant: &Tenant,
        number_hash: &str,
        action: &str,
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
        let tenant = self.gateway.tenants.admit(&request, Action::Push)?;
        let correlator = correlator_of(&request);
        let mut stream = request.into_inner();
        let mut numbers = Vec::new();
        while let Some(message) = stream.message().await? {
            for n in message.numbers {
                let i = numbers.len();
                if i >= MAX_NUMBERS {
                    return Err(ApiError::field(
                        "numbers",
                        format!("at most {MAX_NUMBERS} numbers per submission"),
                    )
                    .into());
                }
                let phone =
                    E164::parse(&n.phone_number).map_err(|_| ApiError::InvalidPhoneNumberAt {
                        field: format!("numbers[{i}].phone_number"),
                    })?;
                let (Some(cancelled), Some(reissued)) = (&n.cancelled_at, &n.reissued_at) else {
                    return Err(ApiError::field(
                        format!("numbers[{i}]"),
                        "cancelled_at and reissued_at are required",
                    )
                    .into());
                };
                let (cancelled_at, reissued_at) =
                    (ms_from_timestamp(cancelled), ms_from_timestamp(reissued));
                if reissued_at < cancelled_at {
                    return Err(ApiError::field(
                        format!("numbers[{i}].reissued_at"),
                        "before cancelled_at",
                    )
                    .into());
                }
                numbers.push(Recycled {
                    phone,
                    cancelled_at,
                    reissued_at,
                });
            }
        }
        if numbers.is_empty() {
            return Err(ApiError::field("numbers", "at least one number is required").into());
        }
        let id = self
            .gateway
            .pusher
            .submit(&tenant.name, &numbers)
            .await
            .map_err(ApiError::store)?;
        let apps = self.gateway.catalog.snapshot().enabled().count();
        self.audit(
            &tenant,
            "",
            "push",
            format!("{apps} apps"),
            format!("{} numbers stored as {id}", numbers.len()),
            &correlator,
        );
        Ok(Response::new(SubmitRecycledNumbersResponse {
            submission_id: id,
            accepted: numbers.len() as u32,
        }))
    }

    async fn get_submission(
        &self,
        request: Request<GetSubmissionRequest>,
    ) -> Result<Response<GetSubmissionResponse>, Status> {
        let tenant = self.gateway.tenants.admit(&request, Action::Push)?;
        let id = &request.get_ref().submission_id;
        if !is_submission_id(id) {
            return Err(ApiError::field("submission_id", "not a submission id").into());
        }
        let found = self
            .gateway
            .pusher
            .progress(id)
            .await
            .map_err(ApiError::store)?;
        // Another tenant's submission does not exist for this one.
        let Some((_, total, created_at, apps)) = found.filter(|f| f.0 == tenant.name) else {
            return Err(ApiError::NotFound { what: "submission" }.into());
        };
        Ok(Response::new(GetSubmissionResponse {
            submission_id: id.clone(),
            total_numbers: total as u32,
            deliveries: apps
                .into_iter()
                .map(|a| AppDelivery {
                    app_id: a.app_id,
                    batches_total: a.batches_total as u32,
                    batches_delivered: a.batches_delivered as u32,
                    numbers_delivered: a.numbers_delivered as u32,
                })
                .collect(),
            created_at: Some(timestamp_from_ms(created_at)),
        }))
    }
}

#[tonic::async_trait]
impl NumberStatus for PushService {
    async fn check_number_recycled(
        &self,
        request: Request<CheckNumberRecycledRequest>,
    ) -> Result<Response<CheckNumberRecycledResponse>, Status> {
        let tenant = self.gateway.tenants.admit(&request, Action::CheckNumber)?;
        let correlator = correlator_of(&request);
        let body = request.get_ref();
        let phone = E164::parse(&body.phone_number).map_err(|_| ApiError::InvalidPhoneNumber {
            field: "phone_number",
        })?;
        let Some(date) = &body.specified_date else {
            return Err(ApiError::field("specified_date", "required").into());
        };
        let since = ms_from_timestamp(date);
        if since > self.gateway.clock.now_ms() {
            return Err(ApiError::OutOfRange {
                field: "specified_date".into(),
                description: "must not be in the future".into(),
            }
            .into());
        }
        let recycled = self
            .gateway
            .pusher
            .recycled_since(&phone, since)
            .await
            .map_err(ApiError::store)?;
        let hash = self.gateway.keys.number_hash(&phone).hex();
        self.audit(
            &tenant,
            &hash,
            "check_recycled",
            String::new(),
            format!("recycled={recycled}"),
            &correlator,
        );
        Ok(Response::new(CheckNumberRecycledResponse { recycled }))
    }
}
