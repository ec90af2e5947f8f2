//! What reaches the carrier's registry by SMS, and what the file-backed registry writes down:
//! structured params a carrier can render in the holder's language (issue 16, items 5 and 8).
//! The outcome SMS names each app once, in reading order, with counts and an outcome; the
//! registry writes it from its Chinese or English template; every `sms.jsonl` line carries the
//! template, the params and, for a verification, the code as its own field.

mod common;

use std::time::Duration;

use common::{Harness, Options};
use unbind_gateway::proto::{ListLinkedAccountsRequest, UnbindRequest, linked_account::Ownership};
use unbind_gateway::testkit::simulated_registry::{SmsRecord, read_sms_file};

/// Whose SMS are written in Chinese in the demo's subscribers.
const CHINESE: (&str, &str) = ("+8613900139000", "154321");

fn fast_worker(c: &mut unbind_gateway::config::Config) {
    c.unbind.poll_interval = Duration::from_millis(20);
    c.unbind.status_poll_interval = Duration::from_millis(50);
    c.unbind.retry_base = Duration::from_millis(50);
    c.unbind.retry_jitter = false;
    c.unbind.sms_window = Duration::from_millis(300);
}

fn messages(h: &Harness, template: &str) -> Vec<SmsRecord> {
    read_sms_file(&h.sms_file)
        .unwrap()
        .into_iter()
        .filter(|m| m.template == template)
        .collect()
}

#[tokio::test]
async fn the_outcome_sms_is_structured_and_written_in_the_holders_language() {
    let h = Harness::start(Options {
        apps: 40,
        tweak: fast_worker,
        ..Options::default()
    })
    .await;
    let (phone, id) = CHINESE;
    let token = h.session_for(phone, id).await;

    // The verification: the code is its own field, the text Chinese.
    let codes = messages(&h, "verification_code");
    let code = codes.last().expect("a verification SMS");
    assert_eq!(code.language, "zh");
    let digits = code.code.clone().expect("the code as its own field");
    assert_eq!(code.params.get("code"), Some(&digits));
    assert!(
        code.text.contains(&digits) && code.text.contains("验证码"),
        "{}",
        code.text
    );

    let accounts = h
        .client()
        .await
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .accounts;
    let previous: Vec<_> = accounts
        .iter()
        .filter(|a| a.ownership() == Ownership::PreviousHolder && a.unbind_supported)
        .collect();
    assert!(
        previous.len() > 3,
        "{} previous-holder accounts",
        previous.len()
    );
    let mut expected_apps: Vec<String> = previous.iter().map(|a| a.app_name.clone()).collect();
    expected_apps.sort_by(|a, b| unbind_gateway::domain::natural_cmp(a, b));
    expected_apps.dedup();

    h.client()
        .await
        .unbind(UnbindRequest {
            session_token: token,
            account_refs: previous.iter().map(|a| a.account_ref.clone()).collect(),
            idempotency_key: "sms-test".into(),
        })
        .await
        .unwrap();

    // The outcomes, gathered into SMS as they complete: every account counted once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let outcomes = loop {
        let outcomes = messages(&h, "unbind_outcome");
        let counted: usize = outcomes
            .iter()
            .map(|m| m.params["unbound_count"].parse::<usize>().unwrap())
            .sum();
        if counted >= previous.len() {
            break outcomes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{counted} of {} unbinds told by SMS",
            previous.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut told_apps = Vec::new();
    for m in &outcomes {
        assert_eq!(m.params["outcome"], "unbound", "{:?}", m.params);
        assert_eq!(m.params["failed_count"], "0");
        let apps: Vec<String> = serde_json::from_str(&m.params["unbound_apps"]).unwrap();
        let mut in_order = apps.clone();
        in_order.sort_by(|a, b| unbind_gateway::domain::natural_cmp(a, b));
        in_order.dedup();
        assert_eq!(apps, in_order, "each app once, in reading order");
        assert!(m.code.is_none());
        assert_eq!(m.language, "zh");
        assert!(m.text.contains("解除绑定"), "{}", m.text);
        assert!(m.params["summary"].starts_with("Your number was unbound"));
        told_apps.extend(apps);
    }
    told_apps.sort_by(|a, b| unbind_gateway::domain::natural_cmp(a, b));
    told_apps.dedup();
    assert_eq!(told_apps, expected_apps);
    h.stop().await;
}

#[tokio::test]
async fn the_lookup_summary_sms_is_structured() {
    let h = Harness::start(Options {
        apps: 10,
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let answer = h
        .client()
        .await
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token,
            deliver_by_sms: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let summary = loop {
        if let Some(m) = messages(&h, "lookup_summary").pop() {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "no summary SMS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        summary.params["account_count"],
        answer.total_accounts.to_string()
    );
    assert_eq!(summary.params["missing_app_count"], "0");
    let previous = answer
        .accounts
        .iter()
        .filter(|a| a.ownership() == Ownership::PreviousHolder)
        .count();
    assert_eq!(summary.params["previous_count"], previous.to_string());
    assert_eq!(summary.language, "en");
    h.stop().await;
}
