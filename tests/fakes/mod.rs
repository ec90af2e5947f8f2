//! The other side of the gateway's contracts, written outside the project's own simulator the way
//! a carrier or an app vendor might: a subscriber registry that answers mismatches with errors or
//! at another speed, or matches without a date; and an app adapter that answers whatever a test
//! sets (unmasked hints, dates anywhere) and records every unbind it is asked for. Both are real
//! gRPC servers on loopback.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::oneshot;
use tonic::{Request, Response, Status, transport::Server};
use unbind_gateway::{
    clock::timestamp_from_ms,
    proto::{
        AdapterAccount, FindAccountsRequest, FindAccountsResponse, GetUnbindStatusRequest,
        NotifyNumbersRecycledRequest, NotifyNumbersRecycledResponse, SendSmsRequest,
        SendSmsResponse, UnbindAccountRequest, UnbindAccountResponse, VerifySubscriberRequest,
        VerifySubscriberResponse,
        app_adapter_server::{AppAdapter, AppAdapterServer},
        subscriber_registry_server::{SubscriberRegistry, SubscriberRegistryServer},
        unbind_account_response,
    },
};

/// How the fake registry answers a number and ID characters that do not match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// `matched = false`, as the protocol says.
    NotMatched,
    /// `NOT_FOUND`, as real carrier systems do.
    NotFound,
    /// `INVALID_ARGUMENT`.
    InvalidArgument,
}

impl RegistryBehaviour {
    /// Knows `subscribers` (number, ID characters, holder since), answers at once.
    pub fn new(subscribers: &[(&str, &str, Option<i64>)]) -> Self {
        Self {
            subscribers: subscribers
                .iter()
                .map(|(n, id, since)| ((*n).to_owned(), ((*id).to_owned(), *since)))
                .collect(),
            mismatch: Mismatch::NotMatched,
            down: false,
            match_delay: Duration::ZERO,
            mismatch_delay: Duration::ZERO,
        }
    }
}

/// The fake registry's behaviour; tests change it while it runs.
#[derive(Clone, Debug)]
pub struct RegistryBehaviour {
    /// number -> (ID characters, holder_since in ms or none).
    pub subscribers: HashMap<String, (String, Option<i64>)>,
    pub mismatch: Mismatch,
    /// Answers everything with `UNAVAILABLE`, whatever the question.
    pub down: bool,
    /// How long a match takes to answer.
    pub match_delay: Duration,
    /// How long a mismatch takes to answer.
    pub mismatch_delay: Duration,
}

/// An SMS the fake registry was asked to send.
#[derive(Clone, Debug)]
pub struct Sms {
    pub phone_number: String,
    pub template: String,
    pub params: HashMap<String, String>,
}

#[derive(Clone)]
struct RegistryState {
    behaviour: Arc<Mutex<RegistryBehaviour>>,
    sms: Arc<Mutex<Vec<Sms>>>,
}

/// A running fake registry.
pub struct FakeRegistry {
    pub addr: SocketAddr,
    state: RegistryState,
    _stop: oneshot::Sender<()>,
}

impl FakeRegistry {
    pub async fn start(behaviour: RegistryBehaviour) -> Self {
        let state = RegistryState {
            behaviour: Arc::new(Mutex::new(behaviour)),
            sms: Arc::default(),
        };
        let (addr, stop) = serve(SubscriberRegistryServer::new(state.clone())).await;
        Self {
            addr,
            state,
            _stop: stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, change: impl FnOnce(&mut RegistryBehaviour)) {
        change(&mut self.state.behaviour.lock().unwrap());
    }

    /// Every SMS asked for so far.
    pub fn sms(&self) -> Vec<Sms> {
        self.state.sms.lock().unwrap().clone()
    }

    /// The SMS of `template` sent to `phone` so far.
    pub fn sms_of(&self, phone: &str, template: &str) -> Vec<Sms> {
        self.sms()
            .into_iter()
            .filter(|s| s.phone_number == phone && s.template == template)
            .collect()
    }

    /// Waits (at most 10 s) until `phone` has been sent `n` codes; the newest.
    pub async fn wait_for_code(&self, phone: &str, n: usize) -> String {
        let codes = wait_until(&format!("code {n}"), || {
            Some(self.sms_of(phone, "verification_code")).filter(|c| c.len() >= n)
        })
        .await;
        codes[n - 1].params["code"].clone()
    }
}

#[tonic::async_trait]
impl SubscriberRegistry for RegistryState {
    async fn verify_subscriber(
        &self,
        request: Request<VerifySubscriberRequest>,
    ) -> Result<Response<VerifySubscriberResponse>, Status> {
        let r = request.into_inner();
        let b = self.behaviour.lock().unwrap().clone();
        if b.down {
            return Err(Status::unavailable("down"));
        }
        let matched = b
            .subscribers
            .get(&r.phone_number)
            .filter(|(id, _)| *id == r.id_last_six);
        match matched {
            Some((_, since)) => {
                tokio::time::sleep(b.match_delay).await;
                Ok(Response::new(VerifySubscriberResponse {
                    matched: true,
                    holder_since: since.map(timestamp_from_ms),
                }))
            }
            None => {
                tokio::time::sleep(b.mismatch_delay).await;
                match b.mismatch {
                    Mismatch::NotMatched => Ok(Response::new(VerifySubscriberResponse {
                        matched: false,
                        holder_since: None,
                    })),
                    Mismatch::NotFound => Err(Status::not_found("no such subscriber")),
                    Mismatch::InvalidArgument => Err(Status::invalid_argument("id does not match")),
                }
            }
        }
    }

    async fn send_sms(
        &self,
        request: Request<SendSmsRequest>,
    ) -> Result<Response<SendSmsResponse>, Status> {
        let r = request.into_inner();
        let mut sms = self.sms.lock().unwrap();
        sms.push(Sms {
            phone_number: r.phone_number,
            template: r.template,
            params: r.params,
        });
        Ok(Response::new(SendSmsResponse {
            message_id: format!("m{}", sms.len()),
        }))
    }
}

/// An account the fake adapter holds.
#[derive(Clone, Debug)]
pub struct FakeAccount {
    pub account_id: String,
    pub display_hint: String,
    pub bound_at_ms: Option<i64>,
}

/// An unbind the fake adapter was asked for.
#[derive(Clone, Debug)]
pub struct UnbindCall {
    pub account_id: String,
    pub reason: i32,
    pub idempotency_key: String,
}

/// How the fake adapter answers unbinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unbinds {
    /// `DONE` at once, and `DONE` to every status query.
    #[default]
    Done,
    /// `ACCEPTED`, then `NOT_FOUND` to every status query: it forgets what it accepted.
    AcceptThenForget,
    /// `ACCEPTED`, and `ACCEPTED` to every status query: it never finishes.
    AcceptForever,
    /// Never answers `UnbindAccount` (the caller's deadline ends it); status queries: `NOT_FOUND`.
    Silent,
}

#[derive(Clone, Default)]
struct AdapterState {
    accounts: Arc<Mutex<Vec<FakeAccount>>>,
    unbinds: Arc<Mutex<Vec<UnbindCall>>>,
    status_calls: Arc<Mutex<usize>>,
    mode: Arc<Mutex<Unbinds>>,
}

/// A running fake adapter: answers every number with its accounts, unbinds at once.
pub struct FakeAdapter {
    pub addr: SocketAddr,
    state: AdapterState,
    _stop: oneshot::Sender<()>,
}

impl FakeAdapter {
    pub async fn start(accounts: Vec<FakeAccount>) -> Self {
        let state = AdapterState::default();
        *state.accounts.lock().unwrap() = accounts;
        let (addr, stop) = serve(AppAdapterServer::new(state.clone())).await;
        Self {
            addr,
            state,
            _stop: stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes how unbinds are answered from now on.
    pub fn set_unbinds(&self, mode: Unbinds) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// `GetUnbindStatus` calls so far.
    pub fn status_calls(&self) -> usize {
        *self.state.status_calls.lock().unwrap()
    }

    /// Every unbind asked for so far.
    pub fn unbinds(&self) -> Vec<UnbindCall> {
        self.state.unbinds.lock().unwrap().clone()
    }

    /// Waits (at most 10 s) until `n` unbinds were asked for.
    pub async fn wait_for_unbinds(&self, n: usize) -> Vec<UnbindCall> {
        wait_until(&format!("{n} unbinds"), || {
            Some(self.unbinds()).filter(|c| c.len() >= n)
        })
        .await
    }
}

#[tonic::async_trait]
impl AppAdapter for AdapterState {
    async fn find_accounts(
        &self,
        _request: Request<FindAccountsRequest>,
    ) -> Result<Response<FindAccountsResponse>, Status> {
        let accounts = self
            .accounts
            .lock()
            .unwrap()
            .iter()
            .map(|a| AdapterAccount {
                account_id: a.account_id.clone(),
                display_hint: a.display_hint.clone(),
                bound_at: a.bound_at_ms.map(timestamp_from_ms),
                unbind_supported: true,
            })
            .collect();
        Ok(Response::new(FindAccountsResponse { accounts }))
    }

    async fn unbind_account(
        &self,
        request: Request<UnbindAccountRequest>,
    ) -> Result<Response<UnbindAccountResponse>, Status> {
        let r = request.into_inner();
        self.unbinds.lock().unwrap().push(UnbindCall {
            account_id: r.account_id,
            reason: r.reason,
            idempotency_key: r.idempotency_key.clone(),
        });
        let mode = *self.mode.lock().unwrap();
        let state = match mode {
            Unbinds::Done => unbind_account_response::State::Done,
            Unbinds::AcceptThenForget | Unbinds::AcceptForever => {
                unbind_account_response::State::Accepted
            }
            Unbinds::Silent => {
                std::future::pending::<()>().await;
                unreachable!()
            }
        };
        Ok(Response::new(UnbindAccountResponse {
            state: state as i32,
            vendor_ref: r.idempotency_key,
            detail: String::new(),
        }))
    }

    async fn get_unbind_status(
        &self,
        request: Request<GetUnbindStatusRequest>,
    ) -> Result<Response<UnbindAccountResponse>, Status> {
        let r = request.into_inner();
        *self.status_calls.lock().unwrap() += 1;
        let state = match *self.mode.lock().unwrap() {
            Unbinds::Done => unbind_account_response::State::Done,
            Unbinds::AcceptForever => unbind_account_response::State::Accepted,
            Unbinds::AcceptThenForget | Unbinds::Silent => {
                return Err(Status::not_found("no such unbind"));
            }
        };
        Ok(Response::new(UnbindAccountResponse {
            state: state as i32,
            vendor_ref: r.vendor_ref,
            detail: String::new(),
        }))
    }

    async fn notify_numbers_recycled(
        &self,
        request: Request<NotifyNumbersRecycledRequest>,
    ) -> Result<Response<NotifyNumbersRecycledResponse>, Status> {
        Ok(Response::new(NotifyNumbersRecycledResponse {
            accepted: request.into_inner().numbers.len() as u32,
        }))
    }
}

/// Polls `check` until it gives a value, for at most 10 s; `what` names it if it never does.
async fn wait_until<T>(what: &str, check: impl Fn() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "never came: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves one gRPC service on an ephemeral loopback port until the sender is dropped.
async fn serve<S>(service: S) -> (SocketAddr, oneshot::Sender<()>)
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = rx.await;
                },
            )
            .await
            .unwrap();
    });
    (addr, tx)
}

/// An adapter that answers every call with the same raw bytes as its message, whatever they
/// are: for answers a well-behaved protobuf library would never produce (a `string` that is not
/// UTF-8, truncated fields). Speaks just enough gRPC: one length-prefixed message, status 0.
#[derive(Clone)]
pub struct RawAdapter {
    message: prost::bytes::Bytes,
}

impl tonic::server::NamedService for RawAdapter {
    const NAME: &'static str = "unbind.v1.AppAdapter";
}

impl tower::Service<http::Request<tonic::body::Body>> for RawAdapter {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        let mut framed = Vec::with_capacity(5 + self.message.len());
        framed.push(0);
        framed.extend_from_slice(&(self.message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&self.message);
        let body = OneMessage {
            data: Some(framed.into()),
            trailers: true,
        };
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::new(body))
            .unwrap();
        std::future::ready(Ok(response))
    }
}

/// A body of one data frame, then `grpc-status: 0` as trailers.
struct OneMessage {
    data: Option<prost::bytes::Bytes>,
    trailers: bool,
}

impl http_body::Body for OneMessage {
    type Data = prost::bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<prost::bytes::Bytes>, Status>>> {
        if let Some(data) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        if std::mem::take(&mut self.trailers) {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        std::task::Poll::Ready(None)
    }
}

/// A running [`RawAdapter`].
pub struct RawAdapterServer {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl RawAdapter {
    pub async fn start(message: Vec<u8>) -> RawAdapterServer {
        let (addr, stop) = serve(RawAdapter {
            message: message.into(),
        })
        .await;
        RawAdapterServer { addr, _stop: stop }
    }
}

impl RawAdapterServer {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}
