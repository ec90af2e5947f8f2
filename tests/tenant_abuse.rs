//! Tenants under abuse, over mutual TLS with tenant certificates (issue 11):
//! - no pattern of requests by a tenant's end users makes the gateway refuse verifications to
//!   its other users; guessing above the alert rate is reported (metric and audit record);
//! - a start from one tenant never supersedes another tenant's verification;
//! - refusals at the edge (unknown tenant, rate limit, budget, invalid input) and
//!   `GetUnbindTickets` are audited.

mod common;

use common::*;
use futures::StreamExt;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use unbind_gateway::{
    config::{Role, TenantConfig, TlsConfig},
    pki::{DevPki, generate},
    proto::{
        CheckNumberRecycledRequest, GetSubmissionRequest, GetUnbindTicketsRequest, ListAppsRequest,
        account_gateway_client::AccountGatewayClient, carrier_push_client::CarrierPushClient,
        number_status_client::NumberStatusClient,
    },
    server,
    store::{AuditFilter, AuditRecord},
};

type Client = AccountGatewayClient<Channel>;

/// A gateway in development mode on loopback but with a TLS listener that asks for client
/// certificates, so tenants are who their certificates say (callers without one would be the
/// development tenant; these tests always present one).
struct Rig {
    h: Harness,
    pki: DevPki,
    _pki_dir: tempfile::TempDir,
}

fn tenant(name: &str, rate: f64, burst: u32) -> TenantConfig {
    TenantConfig {
        name: name.into(),
        role: Role::Portal,
        requests_per_second: rate,
        burst,
        max_code_failures_per_hour: None,
        wrong_codes_alert_per_hour: 1000,
        per_visitor: None,
    }
}

impl Rig {
    async fn start() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "portal-a",
            "portal-b",
            "portal-tiny",
            "portal-capped",
            "portal-ghost",
            "portal-shared",
            "portal-visitors",
        ];
        let tenants: Vec<(String, Role)> = names
            .iter()
            .map(|n| ((*n).to_owned(), Role::Portal))
            .collect();
        let pki = generate(dir.path(), &tenants, &[], 30, false).unwrap();
        let mut h = Harness::start(Options {
            apps: 2,
            ..Options::default()
        })
        .await;
        let c = &mut h.stack.config;
        c.tls = Some(TlsConfig {
            cert: pki.gateway.cert.clone(),
            key: pki.gateway.key.clone(),
            client_ca: Some(pki.ca.cert.clone()),
        });
        c.tenants = vec![
            // As the defaults are, but a rate high enough for a thousand wrong codes, and an
            // alert at 500 of them.
            TenantConfig {
                wrong_codes_alert_per_hour: 500,
                per_visitor: None,
                ..tenant("portal-a", 100_000.0, 100_000)
            },
            tenant("portal-b", 100.0, 100),
            tenant("portal-tiny", 0.001, 1),
            // The operator's opt-in hard cap.
            TenantConfig {
                max_code_failures_per_hour: Some(1),
                ..tenant("portal-capped", 100.0, 100)
            },
            tenant("portal-shared", 20.0, 20),
            // A portal serving many people: each visitor 2 calls, the portal 5 in all.
            TenantConfig {
                per_visitor: Some(unbind_gateway::config::VisitorLimit {
                    requests_per_second: 0.001,
                    burst: 2,
                }),
                ..tenant("portal-visitors", 0.001, 5)
            },
        ];
        with_admin(c);
        h.restart_gateway().await;
        Rig {
            h,
            pki,
            _pki_dir: dir,
        }
    }

    async fn client(&self, tenant: &str) -> Client {
        AccountGatewayClient::new(self.channel(tenant).await)
    }

    async fn channel(&self, tenant: &str) -> Channel {
        self.channel_to(self.h.stack.gateway.as_ref().unwrap().addr, tenant)
            .await
    }

    /// A channel to the replica at `addr`, with `tenant`'s certificate.
    async fn channel_to(&self, addr: std::net::SocketAddr, tenant: &str) -> Channel {
        self.channel_from(addr, tenant, None).await
    }

    /// A channel to `addr` with `tenant`'s certificate, from the local address `local`.
    async fn channel_from(
        &self,
        addr: std::net::SocketAddr,
        tenant: &str,
        local: Option<std::net::IpAddr>,
    ) -> Channel {
        let files = &self
            .pki
            .tenants
            .iter()
            .find(|t| t.name == tenant)
            .unwrap()
            .files;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(
                std::fs::read(&self.pki.ca.cert).unwrap(),
            ))
            .domain_name("localhost")
            .identity(Identity::from_pem(
                std::fs::read(&files.cert).unwrap(),
                std::fs::read(&files.key).unwrap(),
            ));
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .local_address(local)
            .connect()
            .await
            .unwrap()
    }

    /// A second replica: the same config (store, secret, tenants), its own listener, buckets and
    /// workers.
    async fn second_replica(&self) -> server::RunningGateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        server::start(self.h.stack.config.clone(), self.h.clock.clone(), listener)
            .await
            .unwrap()
    }

    /// The audit records written so far, oldest first.
    async fn audit(&self) -> Vec<AuditRecord> {
        let gateway = &self.h.stack.gateway.as_ref().unwrap().gateway;
        gateway.audit.flush().await;
        let mut records = gateway
            .store
            .audit_records(&AuditFilter {
                since: 0,
                number_hash: None,
                tenant: None,
                limit: 10_000,
            })
            .await
            .unwrap();
        records.sort_by_key(|r| r.at);
        records
    }

    fn number_hash(&self, phone: &str) -> String {
        self.h
            .stack
            .config
            .keyring()
            .unwrap()
            .number_hash(&unbind_gateway::domain::E164::parse(phone).unwrap())
            .hex()
    }
}

/// Over a thousand wrong codes from one portal's users (the old per-tenant budget was 1,000 an
/// hour, spent by codes typed on verifications whose ID never matched): the portal's next user
/// still verifies, and the guessing shows in the metrics and the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_end_users_cannot_switch_it_off() {
    let rig = Rig::start().await;
    let guesser = rig.client("portal-a").await;
    // 220 numbers with made-up ID characters, five wrong codes each.
    let wrong_codes: usize = futures::stream::iter(0..220usize)
        .map(|i| {
            let mut c = guesser.clone();
            async move {
                let id = format!("{:02}{:03}{}", 1 + i % 28, i, i % 10);
                let phone = format!("+8613700{i:06}");
                let v = start_with(&mut c, &phone, &id).await.unwrap();
                let mut n = 0;
                for _ in 0..5 {
                    let err = complete_with(&mut c, &v, "999999").await.unwrap_err();
                    assert!(
                        matches!(err.code(), Code::InvalidArgument | Code::FailedPrecondition),
                        "{err:?}"
                    );
                    n += 1;
                }
                n
            }
        })
        .buffer_unordered(16)
        .fold(0, |total, n| async move { total + n })
        .await;
    assert_eq!(wrong_codes, 1100);

    // The holder, on the same portal, right after.
    let mut holder = rig.client("portal-a").await;
    let v = start_with(&mut holder, PHONE, ID_LAST_SIX).await.unwrap();
    let code = rig.h.wait_for_code(PHONE, 1).await;
    complete_with(&mut holder, &v, &code).await.unwrap();

    // Reported, once, without refusing anyone.
    let (_, metrics) = http_get(admin_addr(&rig.h), "/metrics").await;
    assert_eq!(
        metric(&metrics, "unbind_wrong_codes_total{tenant=\"portal-a\"}"),
        Some(1100.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "unbind_wrong_code_alerts_total{tenant=\"portal-a\"}"
        ),
        Some(1.0)
    );
    let alerts: Vec<_> = rig
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "tenant.wrong_codes_alert")
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].tenant, "portal-a");
    rig.h.stop().await;
}

/// A start from one tenant, even with the right ID characters, leaves another tenant's
/// verification of the number alive.
#[tokio::test]
async fn a_start_never_supersedes_another_tenants_verification() {
    let rig = Rig::start().await;
    let mut a = rig.client("portal-a").await;
    let mut b = rig.client("portal-b").await;
    let v = start_with(&mut a, PHONE, ID_LAST_SIX).await.unwrap();
    let code = rig.h.wait_for_code(PHONE, 1).await;
    start_with(&mut b, PHONE, ID_LAST_SIX).await.unwrap();
    rig.h.wait_for_code(PHONE, 2).await;
    complete_with(&mut a, &v, &code).await.unwrap();
    // Within one tenant, a newer start of the same pair does supersede.
    let older = start_with(&mut a, PHONE, ID_LAST_SIX).await.unwrap();
    let older_code = rig.h.wait_for_code(PHONE, 3).await;
    start_with(&mut a, PHONE, ID_LAST_SIX).await.unwrap();
    let err = complete_with(&mut a, &older, &older_code)
        .await
        .unwrap_err();
    assert_error(&err, Code::FailedPrecondition, "VERIFICATION_EXPIRED");
    rig.h.stop().await;
}

#[tokio::test]
async fn refusals_at_the_edge_are_audited() {
    let rig = Rig::start().await;
    let number = rig.number_hash(PHONE);
    // A certificate naming no configured tenant.
    let mut ghost = rig.client("portal-ghost").await;
    let err = start_with(&mut ghost, PHONE, ID_LAST_SIX)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // A tenant over its rate.
    let mut tiny = rig.client("portal-tiny").await;
    tiny.list_apps(ListAppsRequest {}).await.unwrap();
    let err = tiny.list_apps(ListAppsRequest {}).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "RATE_LIMITED");
    // Invalid input.
    let mut a = rig.client("portal-a").await;
    let err = start_with(&mut a, "12345", ID_LAST_SIX).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_PHONE_NUMBER");
    let err = start_with(&mut a, PHONE, "1234").await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_ID_LAST_SIX");
    let err = complete_with(&mut a, "ver_nope", "123456")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // The operator's opt-in budget: one wrong code, then refused.
    let mut capped = rig.client("portal-capped").await;
    let v = start_with(&mut capped, PHONE, "280011").await.unwrap();
    complete_with(&mut capped, &v, "999999").await.unwrap_err();
    let err = start_with(&mut capped, PHONE, "280011").await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "RATE_LIMITED");
    // Reading tickets, with a session and with a bad one.
    let n = rig.h.codes_sent_to(PHONE).len();
    let v = start_with(&mut a, PHONE, ID_LAST_SIX).await.unwrap();
    let code = rig.h.wait_for_code(PHONE, n + 1).await;
    let token = complete_with(&mut a, &v, &code).await.unwrap();
    a.get_unbind_tickets(GetUnbindTicketsRequest {
        session_token: token,
        ticket_ids: Vec::new(),
    })
    .await
    .unwrap();
    let err = a
        .get_unbind_tickets(GetUnbindTicketsRequest {
            session_token: "forged".into(),
            ticket_ids: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "INVALID_SESSION");
    // A portal asking what only apps and carriers may.
    let err = NumberStatusClient::new(rig.channel("portal-a").await)
        .check_number_recycled(CheckNumberRecycledRequest {
            phone_number: PHONE.into(),
            specified_date: Some(prost_types::Timestamp::default()),
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "PERMISSION_DENIED");
    let err = CarrierPushClient::new(rig.channel("portal-a").await)
        .get_submission(GetSubmissionRequest {
            submission_id: "sub_00000000000000000000000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "PERMISSION_DENIED");

    let records = rig.audit().await;
    let has = |tenant: &str, hash: &str, action: &str, outcome: &str| {
        records.iter().any(|r| {
            r.tenant == tenant
                && r.number_hash == hash
                && r.action == action
                && r.outcome == outcome
        })
    };
    let shown: Vec<_> = records
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                r.tenant,
                &r.number_hash.get(..8).unwrap_or(""),
                r.action,
                r.outcome
            )
        })
        .collect();
    assert!(
        has("", "", "verification.start", "PERMISSION_DENIED"),
        "{shown:#?}"
    );
    assert!(
        has("portal-tiny", "", "apps.list", "RATE_LIMITED"),
        "{shown:#?}"
    );
    assert!(
        has("portal-a", "", "verification.start", "INVALID_PHONE_NUMBER"),
        "{shown:#?}"
    );
    assert!(
        has(
            "portal-a",
            &number,
            "verification.start",
            "INVALID_ID_LAST_SIX"
        ),
        "{shown:#?}"
    );
    assert!(
        has("portal-a", "", "verification.complete", "INVALID_FIELD"),
        "{shown:#?}"
    );
    assert!(
        has(
            "portal-capped",
            &number,
            "verification.start",
            "RATE_LIMITED"
        ),
        "{shown:#?}"
    );
    assert!(
        has("portal-a", &number, "tickets.read", "0 tickets"),
        "{shown:#?}"
    );
    assert!(
        has("portal-a", "", "tickets.read", "INVALID_SESSION"),
        "{shown:#?}"
    );
    // Nothing raw in the trail.
    for r in &records {
        let line = format!("{r:?}");
        assert!(
            !line.contains("13800138000") && !line.contains(ID_LAST_SIX),
            "{line}"
        );
    }
    rig.h.stop().await;
}

/// Another tenant's ticket ids and verification ids get nothing: no tickets, the same answer as
/// an unknown verification, and no effect on the owner's verification.
#[tokio::test]
async fn another_tenants_ids_get_nothing() {
    use unbind_gateway::proto::{ListLinkedAccountsRequest, UnbindRequest};
    let rig = Rig::start().await;
    let mut a = rig.client("portal-a").await;
    let mut b = rig.client("portal-b").await;
    let v = start_with(&mut a, PHONE, ID_LAST_SIX).await.unwrap();
    let code = rig.h.wait_for_code(PHONE, 1).await;
    // B tries A's verification: told it does not exist, with the right code or a wrong one.
    for guess in [code.as_str(), "999999"] {
        let err = complete_with(&mut b, &v, guess).await.unwrap_err();
        assert_error(&err, Code::FailedPrecondition, "VERIFICATION_EXPIRED");
    }
    // A's verification is untouched: no tries used, the code still good.
    let token = complete_with(&mut a, &v, &code).await.unwrap();
    let accounts = a
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .accounts;
    let target = accounts
        .iter()
        .find(|x| x.unbind_supported)
        .expect("an account to unbind");
    let tickets = a
        .unbind(UnbindRequest {
            session_token: token,
            account_refs: vec![target.account_ref.clone()],
            idempotency_key: "a-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tickets;
    let ids: Vec<String> = tickets.iter().map(|t| t.ticket_id.clone()).collect();
    let read = |c: &mut Client| {
        let mut c = c.clone();
        let ids = ids.clone();
        async move {
            c.get_unbind_tickets(GetUnbindTicketsRequest {
                session_token: String::new(),
                ticket_ids: ids,
            })
            .await
            .unwrap()
            .into_inner()
            .tickets
        }
    };
    assert_eq!(read(&mut a).await.len(), 1, "the owner reads its ticket");
    assert!(
        read(&mut b).await.is_empty(),
        "another tenant reads nothing"
    );
    rig.h.stop().await;
}

/// One person, two portals (issue 14, item 4). Through portal A they unbind an account, and the
/// app takes its time; through portal B they ask to unbind the same account. On main B was
/// answered with A's ticket (A's account ref and the app's detail) and could then never read it.
/// Now B is told the unbind is under way (its own ref, words of the gateway's, when the app must
/// act) and can follow the ticket with its session, seeing neither A's ref nor the app's text.
#[tokio::test]
async fn another_tenants_open_ticket_is_reported_without_its_details() {
    use unbind_gateway::proto::{
        ListLinkedAccountsRequest, UnbindRequest, unbind_ticket::State as TicketState,
    };
    use unbind_gateway::testkit::simulated_apps::Behaviour;
    let rig = Rig::start().await;
    let mut a = rig.client("portal-a").await;
    let mut b = rig.client("portal-b").await;
    let session = |c: &Client, n: usize| {
        let mut c = c.clone();
        let h = &rig.h;
        async move {
            let v = start_with(&mut c, PHONE, ID_LAST_SIX).await.unwrap();
            let code = h.wait_for_code(PHONE, n).await;
            complete_with(&mut c, &v, &code).await.unwrap()
        }
    };
    let list = |c: &Client, token: String| {
        let mut c = c.clone();
        async move {
            c.list_linked_accounts(ListLinkedAccountsRequest {
                session_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .accounts
        }
    };
    let token_a = session(&a, 1).await;
    let accounts_a = list(&a, token_a.clone()).await;
    let target = accounts_a
        .iter()
        .find(|x| x.unbind_supported)
        .expect("an account to unbind")
        .clone();
    // The app accepts and takes a minute: A's ticket stays open.
    rig.h.simulator.set_behaviour(
        &target.app_id,
        Behaviour {
            unbind_completion: std::time::Duration::from_secs(60),
            ..Behaviour::default()
        },
    );
    let ticket_a = a
        .unbind(UnbindRequest {
            session_token: token_a,
            account_refs: vec![target.account_ref.clone()],
            idempotency_key: "a-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tickets
        .remove(0);

    let token_b = session(&b, 2).await;
    let accounts_b = list(&b, token_b.clone()).await;
    let same = accounts_b
        .iter()
        .find(|x| x.app_id == target.app_id && x.display_hint == target.display_hint)
        .expect("B sees the account");
    assert!(same.open_ticket.is_none(), "B is not shown A's ticket");
    let answer = b
        .unbind(UnbindRequest {
            session_token: token_b.clone(),
            account_refs: vec![same.account_ref.clone()],
            idempotency_key: "b-1".into(),
        })
        .await
        .expect("B's valid request is answered")
        .into_inner()
        .tickets;
    assert_eq!(answer.len(), 1);
    let seen = &answer[0];
    assert_eq!(seen.account_ref, same.account_ref, "B's own ref, never A's");
    assert_ne!(seen.account_ref, ticket_a.account_ref);
    assert!(seen.detail.contains("under way"), "{:?}", seen.detail);
    assert!(
        matches!(
            seen.state(),
            TicketState::Queued | TicketState::Sent | TicketState::Accepted
        ),
        "{seen:?}"
    );
    assert_eq!(seen.due_at, ticket_a.due_at);

    // B follows it with its session: the same view, never A's ref or the app's text.
    let read = b
        .get_unbind_tickets(GetUnbindTicketsRequest {
            session_token: token_b,
            ticket_ids: vec![seen.ticket_id.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .tickets;
    assert_eq!(read.len(), 1);
    assert!(read[0].account_ref.is_empty());
    assert!(read[0].detail.contains("under way"), "{:?}", read[0].detail);
    rig.h.stop().await;
}

/// A request body that never comes: the headers of a call, then nothing.
struct Stalled;

impl http_body::Body for Stalled {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

/// Sends a `ListLinkedAccounts` whose body never comes; resolves to the grpc-status it ends with.
async fn stalled_call(channel: Channel) -> i32 {
    use tower::ServiceExt;
    let request = http::Request::builder()
        .method("POST")
        .uri("https://localhost/unbind.v1.AccountGateway/ListLinkedAccounts")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Stalled))
        .unwrap();
    let response = channel.oneshot(request).await.expect("an answer");
    let headers = response.headers().clone();
    let status = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    if let Some(code) = status(&headers) {
        return code;
    }
    let mut body = response.into_body();
    loop {
        match std::future::poll_fn(|cx| {
            http_body::Body::poll_frame(std::pin::Pin::new(&mut body), cx)
        })
        .await
        {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(status) {
                    return code;
                }
            }
            _ => return -1,
        }
    }
}

/// One tenant holding 600 stalled streams (issue 14, item 5). On main each took one of the
/// replica's 512 permits at its headers and kept it, with no body timeout, so every other
/// tenant's requests were shed (UNAVAILABLE). Now the tenant holds at most its own allowance
/// (the rest are answered RESOURCE_EXHAUSTED at once), another tenant's look-ups answer
/// meanwhile, and the stalled calls end after `limits.body_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_holding_stalled_streams_cannot_starve_another() {
    use unbind_gateway::proto::ListLinkedAccountsRequest;
    let mut rig = Rig::start().await;
    rig.h.stack.config.limits.body_timeout = std::time::Duration::from_secs(4);
    rig.h.restart_gateway().await;
    // Three connections (each carries at most 256 streams), 200 stalled calls on each.
    let mut stalled = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let channel = rig.channel("portal-a").await;
        for _ in 0..200 {
            stalled.spawn(stalled_call(channel.clone()));
        }
    }
    // The calls over the tenant's allowance are refused at once, while the rest stall.
    let limit = rig.h.stack.config.limits.max_in_flight_per_tenant;
    let mut refused = 0;
    while refused < 600 - limit {
        let code = tokio::time::timeout(std::time::Duration::from_secs(10), stalled.join_next())
            .await
            .expect("the calls over the allowance are answered at once")
            .expect("a call")
            .expect("the call ran");
        assert_eq!(code, Code::ResourceExhausted as i32);
        refused += 1;
    }
    // Meanwhile another tenant verifies and looks up as if nothing were happening.
    let mut b = rig.client("portal-b").await;
    let v = start_with(&mut b, PHONE, ID_LAST_SIX).await.unwrap();
    let code = rig.h.wait_for_code(PHONE, 1).await;
    let token = complete_with(&mut b, &v, &code).await.unwrap();
    let listed = b
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token,
            ..Default::default()
        })
        .await
        .expect("another tenant's look-up answers");
    assert!(listed.into_inner().app_results.len() == 2);
    // The stalled calls end by themselves after the body timeout, giving their permits back.
    while let Some(code) = stalled.join_next().await {
        let code = code.unwrap();
        assert_ne!(code, Code::Ok as i32, "a stalled call never answers OK");
    }
    let mut a = rig.client("portal-a").await;
    assert!(start_with(&mut a, OTHER_PHONE, OTHER_ID).await.is_ok());
    rig.h.stop().await;
}

/// A tenant's rate and its wrong-code budget are totals over the replicas sharing the store
/// (issue 14, item 6). On main each replica kept its own buckets: two replicas gave a tenant
/// twice its rate, and a budget spent on one replica was whole on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_rate_and_budget_are_totals_over_the_replicas() {
    let rig = Rig::start().await;
    let b = rig.second_replica().await;
    let mut replicas = [
        rig.client("portal-shared").await,
        AccountGatewayClient::new(rig.channel_to(b.addr, "portal-shared").await),
    ];
    // 20 a second with a burst of 20, asked for as fast as the two replicas answer, alternately.
    let began = std::time::Instant::now();
    let (mut admitted, mut calls) = (0u32, 0usize);
    while began.elapsed() < std::time::Duration::from_secs(3) {
        match replicas[calls % 2].list_apps(ListAppsRequest {}).await {
            Ok(_) => admitted += 1,
            Err(e) => assert_error(&e, Code::ResourceExhausted, "RATE_LIMITED"),
        }
        calls += 1;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let allowed = 20.0 + 20.0 * elapsed;
    let ratio = f64::from(admitted) / allowed;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "admitted {admitted} where {allowed:.0} were allowed over {elapsed:.1} s ({calls} calls)"
    );
    // The operator's wrong-code cap (one an hour), spent on one replica, holds on the other.
    let mut capped_a = rig.client("portal-capped").await;
    let mut capped_b = AccountGatewayClient::new(rig.channel_to(b.addr, "portal-capped").await);
    let v = start_with(&mut capped_a, PHONE, "280011").await.unwrap();
    complete_with(&mut capped_a, &v, "999999")
        .await
        .unwrap_err();
    let err = start_with(&mut capped_b, PHONE, "280011")
        .await
        .unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "RATE_LIMITED");
    b.stop().await.unwrap();
    rig.h.stop().await;
}

/// A connection that opens and never starts its TLS handshake is closed after
/// `limits.handshake_timeout`, while a proper client is served meanwhile. On main nothing bounded
/// the handshake: such connections stayed open for as long as their sender wished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_handshake_are_closed() {
    use tokio::io::AsyncReadExt;
    let mut rig = Rig::start().await;
    rig.h.stack.config.limits.handshake_timeout = std::time::Duration::from_secs(1);
    rig.h.restart_gateway().await;
    let addr = rig.h.stack.gateway.as_ref().unwrap().addr;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Served meanwhile.
    let mut client = rig.client("portal-a").await;
    client.list_apps(ListAppsRequest {}).await.unwrap();
    let began = std::time::Instant::now();
    for mut stream in silent {
        let mut buf = [0u8; 64];
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await;
        // Closed by the gateway: end of stream or a reset, not a timeout on our side.
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "still open after {:?}: {read:?}",
            began.elapsed()
        );
    }
    rig.h.stop().await;
}

/// At `limits.max_connections` the gateway takes no new gRPC connection until one closes: a
/// partner opening connections without end cannot take the process's descriptors. A tenant's
/// connection taken after the wait is still known by its certificate (the cap wraps the
/// connection under TLS). On main the gRPC listener had no cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_connection_cap_the_gateway_takes_the_next_connection_when_one_closes() {
    let mut rig = Rig::start().await;
    rig.h.stack.config.limits.max_connections = 2;
    rig.h.restart_gateway().await;
    let running = rig.h.stack.gateway.as_ref().unwrap();
    let addr = running.addr;
    let gateway = std::sync::Arc::clone(&running.gateway);
    // Two connections that never start their handshake hold both places.
    let idle_one = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _idle_two = tokio::net::TcpStream::connect(addr).await.unwrap();
    let answered = {
        let call = async {
            rig.client("portal-a")
                .await
                .list_apps(ListAppsRequest {})
                .await
        };
        tokio::pin!(call);
        let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut call).await;
        assert!(
            early.is_err(),
            "a third connection was served at a cap of 2"
        );
        let metrics = gateway.metrics.encode();
        assert!(
            metrics.contains("unbind_connections_open{listener=\"grpc\"} 2"),
            "{metrics}"
        );
        assert!(
            metrics.contains("unbind_connections_max{listener=\"grpc\"} 2"),
            "{metrics}"
        );
        assert!(
            metrics.contains("unbind_connection_cap_waits_total{listener=\"grpc\"} 1"),
            "{metrics}"
        );
        // One closes: the tenant's connection is taken, its handshake done, its call answered.
        drop(idle_one);
        tokio::time::timeout(std::time::Duration::from_secs(10), call)
            .await
            .expect("the waiting connection was served once a place was free")
    };
    assert!(!answered.unwrap().into_inner().apps.is_empty());
    rig.h.stop().await;
}

/// One client address cannot hold every place: past `limits.max_connections_per_ip` its next
/// connection is closed as soon as it is accepted, while another address is served and the
/// cap's own wait is untouched. On main one source could hold them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_cannot_hold_every_connection() {
    use tokio::io::AsyncReadExt;
    let mut rig = Rig::start().await;
    rig.h.stack.config.limits.max_connections_per_ip = 2;
    rig.h.restart_gateway().await;
    let running = rig.h.stack.gateway.as_ref().unwrap();
    let addr = running.addr;
    let gateway = std::sync::Arc::clone(&running.gateway);
    // Two connections from 127.0.0.1 that never start their handshake hold its share.
    let _idle_one = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _idle_two = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A third from the same address is closed at once (well before the handshake limit).
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("the connection over its address's share was left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let metrics = gateway.metrics.encode();
    assert!(
        metrics.contains("unbind_connections_refused_total{listener=\"grpc\"} 1"),
        "{metrics}"
    );
    // Another address (127.0.0.2, on loopback too) is served meanwhile, as a tenant.
    let other = "127.0.0.2".parse().unwrap();
    let mut client =
        AccountGatewayClient::new(rig.channel_from(addr, "portal-a", Some(other)).await);
    client.list_apps(ListAppsRequest {}).await.unwrap();
    rig.h.stop().await;
}

/// `ListApps` as the portal, on behalf of `visitor` (none: the portal itself).
async fn list_apps_as(client: &mut Client, visitor: Option<&str>) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(ListAppsRequest::default());
    if let Some(v) = visitor {
        request
            .metadata_mut()
            .insert("x-visitor", v.parse().unwrap());
    }
    client.list_apps(request).await.map(|_| ())
}

#[tokio::test]
async fn one_visitor_of_a_portal_cannot_spend_the_others_rate() {
    let rig = Rig::start().await;
    let mut portal = rig.client("portal-visitors").await;
    // Visitor A: its two calls, then refused, as itself.
    list_apps_as(&mut portal, Some("visitor-a")).await.unwrap();
    list_apps_as(&mut portal, Some("visitor-a")).await.unwrap();
    for _ in 0..3 {
        let refused = list_apps_as(&mut portal, Some("visitor-a"))
            .await
            .unwrap_err();
        assert_error(&refused, Code::ResourceExhausted, "RATE_LIMITED");
        assert!(
            refused.message().contains("visitor"),
            "{}",
            refused.message()
        );
    }
    // Visitor B is served: A's refused calls spent none of the portal's rate (5 in all: A's 2,
    // B's 2, and one of the portal's own).
    list_apps_as(&mut portal, Some("visitor-b")).await.unwrap();
    list_apps_as(&mut portal, Some("visitor-b")).await.unwrap();
    list_apps_as(&mut portal, None).await.unwrap();
    // The portal's own rate still holds over all its visitors.
    let refused = list_apps_as(&mut portal, Some("visitor-c"))
        .await
        .unwrap_err();
    assert_error(&refused, Code::ResourceExhausted, "RATE_LIMITED");
    assert!(
        refused.message().contains("tenant"),
        "{}",
        refused.message()
    );
    // An id that is not one is refused, and not echoed.
    let bad = list_apps_as(&mut portal, Some("13800138000 <b>"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad_fields(&bad).contains(&"x-visitor".to_owned()));
    assert!(!bad.message().contains("13800138000"));
    // The refusals are audited under the portal.
    let refused = rig
        .audit()
        .await
        .into_iter()
        .filter(|r| r.tenant == "portal-visitors" && r.outcome == "RATE_LIMITED")
        .count();
    assert_eq!(refused, 4);
}
