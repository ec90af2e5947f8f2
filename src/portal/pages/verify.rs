//! The first two steps: the number and the ID characters (StartVerification), then the code
//! from the SMS (CompleteVerification), which starts the look-up.

use super::*;

pub(super) async fn start_page(
    State(p): State<Shared>,
    Extension(v): Extension<Visitor>,
) -> Response {
    let visit = p.visits.get(&v.id);
    let (notice, visiting) = notice_of(visit.as_ref());
    // A session still good: the way back to its accounts.
    let verified = visit.is_some_and(|visit| {
        lock(&visit)
            .session
            .as_ref()
            .is_some_and(|s| s.expires_at.is_none_or(|at| at > Utc::now()))
    });
    let page = Page::new("start.html", "start.heading", "/").step(0);
    p.page(
        &v,
        page,
        notice,
        visiting,
        context! { verified => verified },
    )
}

pub(super) async fn start(
    State(p): State<Shared>,
    Extension(v): Extension<Visitor>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if !p.csrf_ok(&v, &form) {
        return p.forbidden(&v);
    }
    let visit = p.visits.get_or_new(&v.id);
    let phone = form.get("phone").unwrap_or_default().trim();
    let id_last_six = form.get("id_last_six").unwrap_or_default().trim();
    // Told at once, without a call: the gateway would refuse them the same way.
    let typo = if E164::parse(phone).is_err() {
        Some("error.invalid_phone")
    } else if IdLastSix::parse(id_last_six).is_err() {
        Some("error.invalid_id")
    } else {
        None
    };
    if let Some(key) = typo {
        lock(&visit).notice = Some(Notice::new(key));
        return see_other("/");
    }
    let request = StartVerificationRequest {
        phone_number: phone.to_owned(),
        id_last_six: id_last_six.to_owned(),
    };
    drop(form);
    let answer = p
        .client
        .clone()
        .start_verification(call(request, CALL_TIMEOUT, &v.gateway_name))
        .await;
    let mut visit = lock(&visit);
    match answer {
        Ok(answer) => {
            let answer = answer.into_inner();
            // A new number: nothing of an earlier one stays in the visit.
            visit.reset();
            visit.pending = Some(Pending {
                verification_id: answer.verification_id,
                code_length: answer.code_length,
                expires_at: to_utc(answer.expires_at.as_ref()),
            });
            see_other("/code")
        }
        Err(status) => {
            p.log_failure("StartVerification", &status);
            visit.notice = Some(notice::from_status(&status).0);
            see_other("/")
        }
    }
}

pub(super) async fn code_page(
    State(p): State<Shared>,
    Extension(v): Extension<Visitor>,
) -> Response {
    let Some(visit) = p.visits.get(&v.id) else {
        return see_other("/");
    };
    let Some(pending) = lock(&visit).pending.clone() else {
        return see_other("/");
    };
    let (notice, visiting) = notice_of(Some(&visit));
    let m = v.locale.messages();
    let valid_until = pending
        .expires_at
        .map(|at| m.clock(at, p.tz))
        .unwrap_or_default();
    let code_length = if pending.code_length > 0 {
        pending.code_length
    } else {
        6
    };
    let page = Page::new("code.html", "code.heading", "/code").step(1);
    p.page(
        &v,
        page,
        notice,
        visiting,
        context! { valid_until => valid_until, code_length => code_length },
    )
}

pub(super) async fn code(
    State(p): State<Shared>,
    Extension(v): Extension<Visitor>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if !p.csrf_ok(&v, &form) {
        return p.forbidden(&v);
    }
    let Some(visit) = p.visits.get(&v.id) else {
        return see_other("/");
    };
    let Some(pending) = lock(&visit).pending.clone() else {
        return see_other("/");
    };
    let code: String = form
        .get("code")
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    drop(form);
    if code.is_empty() || code.len() > 12 || !code.bytes().all(|b| b.is_ascii_digit()) {
        lock(&visit).notice = Some(Notice::new("error.code_format"));
        return see_other("/code");
    }
    let request = CompleteVerificationRequest {
        verification_id: pending.verification_id,
        code,
    };
    let answer = p
        .client
        .clone()
        .complete_verification(call(request, CALL_TIMEOUT, &v.gateway_name))
        .await;
    match answer {
        Ok(answer) => {
            let answer = answer.into_inner();
            let token = SessionToken(answer.session_token);
            let lookup = spawn_lookup(&p, token.clone(), v.gateway_name.clone());
            let mut visit = lock(&visit);
            visit.pending = None;
            visit.session = Some(Session {
                token,
                masked_phone: answer.phone_number,
                holder_since: to_utc(answer.holder_since.as_ref()),
                expires_at: to_utc(answer.expires_at.as_ref()),
            });
            visit.lookup = Some(lookup);
            visit.choice = None;
            see_other("/accounts")
        }
        Err(status) => {
            p.log_failure("CompleteVerification", &status);
            let (notice, next) = notice::from_status(&status);
            let mut visit = lock(&visit);
            visit.notice = Some(notice);
            if next == After::Restart {
                visit.pending = None;
                see_other("/")
            } else {
                see_other("/code")
            }
        }
    }
}

/// Starts the look-up: a task reads the gateway's stream into the visit's [`Lookup`], app by
/// app, so the page shows each answer as it comes rather than after the slowest app. Beside it,
/// the number of apps asked (remembered for [`APP_COUNT_TTL`]), for "12 of 40".
fn spawn_lookup(p: &Shared, token: SessionToken, visitor: String) -> Arc<Mutex<Lookup>> {
    let lookup = Arc::new(Mutex::new(Lookup::default()));
    let cached = lock(&p.app_count)
        .filter(|(at, _)| at.elapsed() < APP_COUNT_TTL)
        .map(|(_, count)| count);
    if let Some(count) = cached {
        lock(&lookup).set_apps(count);
    } else {
        // On its own: a slow answer must not hold the look-up's end.
        let portal = Arc::clone(p);
        let shared = Arc::clone(&lookup);
        let visitor = visitor.clone();
        tokio::spawn(async move {
            let mut client = portal.client.clone();
            let request = call(ListAppsRequest::default(), CALL_TIMEOUT, &visitor);
            match client.list_apps(request).await {
                Ok(answer) => {
                    let count = answer.get_ref().apps.iter().filter(|a| a.enabled).count();
                    *lock(&portal.app_count) = Some((std::time::Instant::now(), count));
                    lock(&shared).set_apps(count);
                }
                // The page does without the total.
                Err(status) => portal.log_failure("ListApps", &status),
            }
        });
    }
    let shared = Arc::clone(&lookup);
    let portal = Arc::clone(p);
    tokio::spawn(async move {
        let mut client = portal.client.clone();
        let request = call(
            ListLinkedAccountsRequest {
                session_token: token.0,
                ..Default::default()
            },
            LOOKUP_DEADLINE,
            &visitor,
        );
        let read = async {
            let mut stream = client.stream_linked_accounts(request).await?.into_inner();
            while let Some(result) = stream.message().await? {
                lock(&shared).push(result);
            }
            Ok::<(), Status>(())
        }
        .await;
        let mut lookup = lock(&shared);
        if let Err(status) = read {
            portal.log_failure("StreamLinkedAccounts", &status);
            lookup.failed = Some(notice::from_status(&status).0);
        }
        let rows = order_rows(&lookup.results);
        lookup.finish(rows);
    });
    lookup
}
