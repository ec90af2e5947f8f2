//! Micro-benchmarks of the gateway's hot pure code, no network and no store:
//!
//! - `session/seal`, `session/verify`: sealing a session token and opening + checking one (tenant
//!   and expiry), as every authenticated call does;
//! - `account_ref/seal`, `account_ref/open`: the opaque handle of one account, sealed for every
//!   account shown and opened on every `Unbind`;
//! - `merge/200_apps`: the merge loop of `ListLinkedAccounts` over 200 answered apps (the demo's
//!   seed 42 and number `+8613800138000`, holder since 2024-03-01), including the sealing of every
//!   account ref;
//! - `phone/parse`, `cache_key/number_hash`: parsing the caller's number, then deriving the cache
//!   key from it (keyed hash, first 16 bytes);
//! - `token/verify_es256`, `token/verify_remembered`: checking an OAuth access token of the HTTP
//!   API (an ES256 JWT: the signature, issuer, audience, times, scope, client) the first time,
//!   and again (as an app sends the same token until it expires).
//!
//! `cargo bench --bench micro`

use std::{collections::HashMap, hint::black_box, sync::Arc, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../tests/common/https.rs"]
mod https;
use unbind_gateway::{
    config::AppConfig,
    domain::E164,
    fanout::{
        AppOutcome,
        merge::{MergeContext, app_result, linked_accounts},
    },
    proto::LinkedAccount,
    security::{AccountRef, Keys, OwnershipRule, Session},
    testkit::{simulated_apps::accounts_for, stack::offline_catalog},
};

/// The demo's first subscriber.
const PHONE: &str = "+8613800138000";
/// When the demo's first subscriber got the number: 2024-03-01T00:00:00Z.
const HOLDER_SINCE_MS: i64 = 1_709_251_200_000;
/// "Now" for session checks: 2025-01-01T00:00:00Z.
const NOW_MS: i64 = 1_735_689_600_000;
/// The demo's seed of the simulated accounts.
const SEED: u64 = 42;
const APPS: usize = 200;

fn keys() -> Keys {
    Keys::derive(b"micro-benchmark-signing-secret-0123456789abcdef")
}

fn phone() -> E164 {
    E164::parse(PHONE).expect("valid number")
}

fn session(c: &mut Criterion) {
    let keys = keys();
    let session = Session {
        id: "sess-6f1c2a9b4e7d3a10".into(),
        phone: phone(),
        tenant: "dev".into(),
        holder_since_ms: Some(HOLDER_SINCE_MS),
        issued_ms: NOW_MS,
        expires_ms: NOW_MS + 15 * 60 * 1000,
    };
    c.bench_function("session/seal", |b| {
        b.iter(|| black_box(&session).token(black_box(&keys)))
    });
    let token = session.token(&keys);
    assert!(Session::verify(&keys, &token, "dev", NOW_MS).is_ok());
    c.bench_function("session/verify", |b| {
        b.iter(|| {
            Session::verify(
                black_box(&keys),
                black_box(&token),
                black_box("dev"),
                black_box(NOW_MS),
            )
        })
    });
}

fn account_ref(c: &mut Criterion) {
    let keys = keys();
    let number = keys.number_hash(&phone());
    let r = AccountRef::new(
        "app-042",
        "acct-7d3a10f9c2",
        &number,
        "ses_6f1c2a9b4e7d3a106f1c2a9b4e7d3a10",
        Some(HOLDER_SINCE_MS - 1),
        true,
    );
    c.bench_function("account_ref/seal", |b| {
        b.iter(|| black_box(&r).seal(black_box(&keys)))
    });
    let sealed = r.seal(&keys);
    assert_eq!(AccountRef::open(&keys, &sealed).as_ref(), Some(&r));
    c.bench_function("account_ref/open", |b| {
        b.iter(|| AccountRef::open(black_box(&keys), black_box(&sealed)))
    });
}

/// 200 answered outcomes, each app holding what the simulator gives the demo number. Built inside
/// `rt`: tonic's lazy channels spawn their workers on it (and never connect).
fn outcomes(rt: &tokio::runtime::Runtime) -> Vec<AppOutcome> {
    let apps: Vec<AppConfig> = (1..=APPS)
        .map(|n| AppConfig {
            category: "payments".into(),
            customer_service: format!("+86 400-800-{n:04}"),
            ..AppConfig::new(
                format!("app-{n:03}"),
                format!("Sim App {n}"),
                "http://127.0.0.1:1",
            )
        })
        .collect();
    let catalog = {
        let _guard = rt.enter();
        offline_catalog(apps).expect("catalog")
    };
    catalog
        .snapshot()
        .all()
        .iter()
        .map(|app| AppOutcome {
            app: Arc::clone(app),
            result: Ok(Arc::new(accounts_for(SEED, app.id.as_str(), PHONE))),
            from_cache: false,
            answered_ms: 0,
            latency: Duration::from_millis(20),
        })
        .collect()
}

fn merge(c: &mut Criterion) {
    let keys = keys();
    let number = keys.number_hash(&phone());
    let (open_tickets, unbound_at) = (HashMap::new(), HashMap::new());
    let ctx = MergeContext {
        keys: &keys,
        number: &number,
        session_id: "ses_6f1c2a9b4e7d3a106f1c2a9b4e7d3a10",
        holder_since_ms: Some(HOLDER_SINCE_MS),
        ownership: OwnershipRule {
            margin_ms: 3_600_000,
        },
        now_ms: NOW_MS,
        open_tickets: &open_tickets,
        unbound_at: &unbound_at,
    };
    // Declared before the outcomes, so it outlives their channels.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcomes = outcomes(&rt);
    assert_eq!(outcomes.len(), APPS);
    let total: usize = outcomes
        .iter()
        .map(|o| o.result.as_ref().map_or(0, |a| a.len()))
        .sum();
    println!("merge/200_apps: {total} accounts over {APPS} apps");
    c.bench_function("merge/200_apps", |b| {
        b.iter(|| {
            let outcomes = black_box(&outcomes);
            let mut accounts: Vec<LinkedAccount> = Vec::new();
            let mut results = Vec::with_capacity(outcomes.len());
            for outcome in outcomes {
                if let Ok(found) = &outcome.result {
                    accounts.extend(linked_accounts(&ctx, outcome, found));
                }
                results.push(app_result(outcome, Vec::new()));
            }
            (accounts, results)
        })
    });
}

fn token(c: &mut Criterion) {
    use unbind_gateway::{clock::Clock, config::HttpAuthConfig, http::TokenVerifier};
    let dir = tempfile::tempdir().unwrap();
    let issuer = https::Issuer::new("bench");
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, https::Issuer::jwks(&[&issuer])).unwrap();
    let verifier = TokenVerifier::new(
        &HttpAuthConfig {
            jwks_file,
            issuer: "https://auth.bench".into(),
            audience: "unbind-gateway".into(),
            leeway: Duration::from_secs(30),
        },
        Clock::system(),
    )
    .unwrap();
    let bearer = |i: i64| {
        format!(
            "Bearer {}",
            issuer.sign(&serde_json::json!({
                "iss": "https://auth.bench", "aud": "unbind-gateway", "client_id": "bench",
                "scope": "number-recycling:check", "exp": https::now_secs() + 3600 + i,
            }))
        )
    };
    // More distinct tokens than the verifier remembers: each is verified in full.
    let tokens: Vec<String> = (0..20_000).map(bearer).collect();
    let mut next = tokens.iter().cycle();
    c.bench_function("token/verify_es256", |b| {
        b.iter(|| verifier.verify(black_box(Some(next.next().unwrap().as_str()))))
    });
    // One token, as an app sends it request after request.
    let header = bearer(0);
    assert!(verifier.verify(Some(&header)).is_ok());
    c.bench_function("token/verify_remembered", |b| {
        b.iter(|| verifier.verify(black_box(Some(header.as_str()))))
    });
}

fn cache_key(c: &mut Criterion) {
    let keys = keys();
    c.bench_function("phone/parse", |b| b.iter(|| E164::parse(black_box(PHONE))));
    let phone = phone();
    c.bench_function("cache_key/number_hash", |b| {
        b.iter(|| black_box(&keys).number_hash(black_box(&phone)).short())
    });
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = session, account_ref, merge, cache_key, token
}
criterion_main!(micro);
