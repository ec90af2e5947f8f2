//! The gateway's client for the carrier's `SubscriberRegistry`: one long-lived HTTP/2 channel,
//! a timeout on every call.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::{
    clock::ms_from_timestamp,
    domain::{E164, IdLastSix},
    proto::{
        SendSmsRequest, VerifySubscriberRequest,
        subscriber_registry_client::SubscriberRegistryClient,
    },
};

/// The registry could not be asked (unreachable, timed out, or answered with an error).
#[derive(Debug, Clone, thiserror::Error)]
#[error("subscriber registry call failed: {code:?}")]
pub struct RegistryError {
    pub code: tonic::Code,
}

/// What the registry said of a number and ID characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// They belong together; `holder_since_ms` when the registry said since when.
    Matched { holder_since_ms: Option<i64> },
    /// They do not (or the registry would not say).
    NotMatched,
}

/// Failures that happen whatever the question was: the only registry errors a caller may see.
/// Besides the transient codes, a call that got no answer at all (the connection failed or was
/// refused, e.g. a TLS handshake the registry rejected: tonic then makes the status up, with the
/// transport error as its source) is the registry being unreachable, not an answer.
fn is_transient(status: &tonic::Status) -> bool {
    use std::error::Error;
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ) || status.source().is_some()
}

/// A registry client. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    /// Shared by every clone, so a renewed client certificate (`replace_tls`) reaches them all.
    inner: Arc<RwLock<SubscriberRegistryClient<Channel>>>,
    endpoint: String,
    timeout: Duration,
}

/// SMS templates the registry renders.
pub mod templates {
    /// Params: `code`, `minutes`.
    pub const VERIFICATION_CODE: &str = "verification_code";
    /// Params: `summary`.
    pub const LOOKUP_SUMMARY: &str = "lookup_summary";
    /// Params: `summary`.
    pub const UNBIND_OUTCOME: &str = "unbind_outcome";
}

impl RegistryClient {
    /// A client for `endpoint`; connects lazily and reconnects on its own.
    pub fn new(
        endpoint: &str,
        timeout: Duration,
        tls: Option<ClientTlsConfig>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(RwLock::new(Self::connect(endpoint, timeout, tls)?)),
            endpoint: endpoint.to_owned(),
            timeout,
        })
    }

    fn connect(
        endpoint: &str,
        timeout: Duration,
        tls: Option<ClientTlsConfig>,
    ) -> anyhow::Result<SubscriberRegistryClient<Channel>> {
        let mut channel = Endpoint::from_shared(endpoint.to_owned())?;
        if let Some(tls) = tls {
            channel = channel.tls_config(tls)?;
        }
        let channel = channel
            .timeout(timeout)
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(SubscriberRegistryClient::new(channel))
    }

    /// Calls from now on go through a new connection with `tls` (a renewed client certificate
    /// or CA); calls in flight finish on the old one.
    pub fn replace_tls(&self, tls: Option<ClientTlsConfig>) -> anyhow::Result<()> {
        let client = Self::connect(&self.endpoint, self.timeout, tls)?;
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = client;
        Ok(())
    }

    fn client(&self) -> SubscriberRegistryClient<Channel> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How long a call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Checks the number against the ID characters.
    ///
    /// Only a failure that happens whatever the ID characters are (the registry unreachable,
    /// `UNAVAILABLE`, out of time) is an error. Every other answer, including errors such as
    /// `NOT_FOUND` or `INVALID_ARGUMENT` that real registries give for a mismatch or an unknown
    /// number, is a mismatch: otherwise the gateway's answer would tell a caller which it was.
    pub async fn verify(&self, phone: &E164, id: &IdLastSix) -> Result<Verdict, RegistryError> {
        let mut request = tonic::Request::new(VerifySubscriberRequest {
            phone_number: phone.expose().to_owned(),
            id_last_six: id.expose().to_owned(),
        });
        request.set_timeout(self.timeout);
        let answer = match self.client().verify_subscriber(request).await {
            Ok(answer) => answer.into_inner(),
            Err(status) if is_transient(&status) => {
                return Err(RegistryError {
                    code: status.code(),
                });
            }
            Err(status) => {
                tracing::debug!(code = ?status.code(), "registry answered an error; taken as a mismatch");
                return Ok(Verdict::NotMatched);
            }
        };
        if !answer.matched {
            return Ok(Verdict::NotMatched);
        }
        Ok(Verdict::Matched {
            // A missing or zero date is no date: ownership is then unknown (fail closed), never
            // "every account is the holder's".
            holder_since_ms: answer
                .holder_since
                .as_ref()
                .map(ms_from_timestamp)
                .filter(|&ms| ms > 0),
        })
    }

    /// Sends one SMS from a template.
    pub async fn send_sms(
        &self,
        phone: &E164,
        template: &str,
        params: HashMap<String, String>,
    ) -> Result<(), RegistryError> {
        let mut request = tonic::Request::new(SendSmsRequest {
            phone_number: phone.expose().to_owned(),
            template: template.to_owned(),
            params,
        });
        request.set_timeout(self.timeout);
        self.client()
            .send_sms(request)
            .await
            .map_err(|s| RegistryError { code: s.code() })?;
        Ok(())
    }

    /// Sends an SMS in the background, logging (without the number) if it fails. Used where the
    /// caller's answer must not wait for, or reveal, the SMS.
    pub fn send_sms_detached(
        &self,
        phone: E164,
        template: &'static str,
        params: HashMap<String, String>,
    ) {
        let client = self.clone();
        tokio::spawn(async move {
            if let Err(e) = client.send_sms(&phone, template, params).await {
                tracing::warn!(number = %phone, template, error = %e, "SMS not sent");
            }
        });
    }
}

/// Formats a holder-since time for people.
pub fn format_date(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}
