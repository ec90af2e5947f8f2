//! The accounts as the apps answer (the look-up's stream, read by a task), the choice, and the
//! confirmation that sends it (Unbind).

use super::*;

/// What the accounts page and its live part show.
fn accounts_context(p: &Portal, v: &Visitor, session: &Session, lookup: &Lookup) -> Value {
    let m = v.locale.messages();
    let arrived;
    let rows = if lookup.done {
        &lookup.rows
    } else {
        arrived = order_rows(&lookup.results);
        &arrived
    };
    let view = accounts_view(&lookup.results, rows, &lookup.asked, m, p.tz);
    context! {
        lang => v.locale.tag(),
        phone => session.masked_phone.clone(),
        since => session.holder_since.map(|at| m.day(at, p.tz)),
        done => lookup.done,
        asked => lookup.results.len(),
        apps => lookup.apps,
        version => *lookup.version.borrow(),
        view => Value::from(Serde(&view)),
    }
}

/// The visit's session and look-up, if it has them.
fn session_and_lookup(visit: &Mutex<Visit>) -> Option<(Session, Arc<Mutex<Lookup>>)> {
    let visit = lock(visit);
    Some((visit.session.clone()?, visit.lookup.clone()?))
}

pub(super) async fn accounts_page(
    State(p): State<Shared>,
    Extension(v): Extension<Visitor>,
) -> Response {
    let Some(visit) = p.visits.get(&v.id) else {
        return see_other("/");
    };
    let Some((session, lookup)) = session_and_lookup(&visit) else {
        return see_other("/");
    };
    let (notice, visiting) = notice_of(Some(&visit));
    let has_tickets = !lock(&visit).tickets.is_empty();
    let (ctx, done, failed) = {
        let lookup = lock(&lookup);
        (
            accounts_context(&p, &v, &session, &lookup),
            lookup.done,
            lookup.failed.clone(),
        )
    };
    let page = Page {
        refresh: (!done).then_some(REFRESH_ACCOUNTS),
        ..Page::new("accounts.html", "site.step_accounts", "/accounts").step(2)
    };
    p.page(
        &v,
        page,
        notice.or(failed),
        visiting,
        context! { has_tickets => has_tickets, ..ctx },
    )
}

/// The live part of the accounts page. Asked with `?seen=N` (the look-up's version the page
/// shows), it is held until the look-up changes (an app answers, or it ends) or
/// [`LIVE_HOLD`] passes, so an answer reaches the page as soon as it reaches the portal,
/// without the page asking again and again (a long poll).
pub(super) async fn accounts_live(
    State(p): State<Shared>,
    Extension(v): Extension<Visitor>,
    uri: Uri,
) -> Response {
    let seen = uri.query().and_then(|q| {
        Form::parse(q.as_bytes())
            .get("seen")
            .and_then(|n| n.parse::<u64>().ok())
    });
    let reload = || {
        p.html(
            StatusCode::OK,
            "accounts_live.html",
            context! { done => true },
            &v,
        )
    };
    let Some(visit) = p.visits.get(&v.id) else {
        return reload();
    };
    let Some((session, lookup)) = session_and_lookup(&visit) else {
        return reload();
    };
    drop(visit);
    if let Some(seen) = seen {
        let mut changed = lock(&lookup).version.subscribe();
        let mut closing = p.closing.clone();
        // Whether it changed, the hold ran out or the portal stops, the answer is the part as
        // it is now.
        tokio::select! {
            _ = tokio::time::timeout(LIVE_HOLD, changed.wait_for(|now| *now > seen)) => {}
            _ = closing.wait_for(|closing| *closing) => {}
        }
    }
    let ctx = accounts_context(&p, &v, &session, &lock(&lookup));
    p.html(StatusCode::OK, "accounts_live.html", ctx, &v)
}

pub(super) async fn choose(
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
    let Some((_, lookup)) = session_and_lookup(&visit) else {
        return see_other("/");
    };
    let rows = {
        let lookup = lock(&lookup);
        if !lookup.done {
            return see_other("/accounts");
        }
        match form.get("which") {
            Some("previous") => view::all_previous(&lookup.rows, &lookup.asked),
            _ => view::ticked(form.all("acct"), &lookup.rows, &lookup.asked),
        }
    };
    let mut visit = lock(&visit);
    if rows.is_empty() {
        visit.notice = Some(Notice::new("error.pick_something"));
        return see_other("/accounts");
    }
    visit.choice = Some(Choice {
        rows,
        idempotency_key: format!("portal-{:032x}", rand::random::<u128>()),
    });
    see_other("/confirm")
}

pub(super) async fn confirm_page(
    State(p): State<Shared>,
    Extension(v): Extension<Visitor>,
) -> Response {
    let Some(visit) = p.visits.get(&v.id) else {
        return see_other("/");
    };
    let Some((_, lookup)) = session_and_lookup(&visit) else {
        return see_other("/");
    };
    let Some(choice) = lock(&visit).choice.clone() else {
        return see_other("/accounts");
    };
    let (notice, visiting) = notice_of(Some(&visit));
    let m = v.locale.messages();
    let (rows, any_previous) = {
        let lookup = lock(&lookup);
        let chosen: Vec<_> = choice
            .rows
            .iter()
            .filter_map(|&i| lookup.rows.get(i))
            .collect();
        let rows: Vec<Value> = chosen
            .iter()
            .map(|a| {
                context! {
                    app => a.app_name.clone(),
                    hint => a.display_hint.clone(),
                    bound => to_utc(a.bound_at.as_ref()).map(|at| m.day(at, p.tz)),
                }
            })
            .collect();
        (rows, chosen.iter().any(|a| view::is_previous(a)))
    };
    let page = Page::new("confirm.html", "confirm.heading", "/confirm").step(3);
    p.page(
        &v,
        page,
        notice,
        visiting,
        context! { rows => rows, any_previous => any_previous },
    )
}

pub(super) async fn confirm(
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
    let Some((session, lookup)) = session_and_lookup(&visit) else {
        return see_other("/");
    };
    let Some(choice) = lock(&visit).choice.clone() else {
        return see_other("/accounts");
    };
    let refs: Vec<String> = {
        let lookup = lock(&lookup);
        choice
            .rows
            .iter()
            .filter_map(|&i| lookup.rows.get(i).map(|a| a.account_ref.clone()))
            .collect()
    };
    let mut client = p.client.clone();
    let mut tickets: Vec<UnbindTicket> = Vec::with_capacity(refs.len());
    let mut failure = None;
    for (n, chunk) in refs.chunks(UNBIND_CHUNK).enumerate() {
        let request = UnbindRequest {
            session_token: session.token.0.clone(),
            account_refs: chunk.to_vec(),
            // The same key on a resent form: the gateway answers with the same tickets.
            idempotency_key: format!("{}-{n}", choice.idempotency_key),
        };
        match client
            .unbind(call(request, CALL_TIMEOUT, &v.gateway_name))
            .await
        {
            Ok(answer) => tickets.extend(answer.into_inner().tickets),
            Err(status) => {
                p.log_failure("Unbind", &status);
                failure = Some(notice::from_status(&status));
                break;
            }
        }
    }
    // What was made is kept even when a later chunk failed: those unbinds are under way.
    let done_rows = choice.rows.len().min(tickets.len());
    {
        let mut lookup = lock(&lookup);
        lookup
            .asked
            .extend(choice.rows.iter().take(done_rows).copied());
    }
    let mut visit = lock(&visit);
    let known: BTreeSet<String> = visit.tickets.iter().cloned().collect();
    let new: Vec<String> = tickets
        .into_iter()
        .map(|t| t.ticket_id)
        .filter(|id| !known.contains(id))
        .collect();
    visit.tickets.extend(new);
    match failure {
        None => {
            visit.choice = None;
            see_other("/tickets")
        }
        Some((notice, next)) => {
            visit.notice = Some(notice);
            match next {
                After::Restart => {
                    visit.session = None;
                    visit.lookup = None;
                    visit.choice = None;
                    see_other("/")
                }
                After::Accounts => {
                    visit.choice = None;
                    see_other("/accounts")
                }
                After::Stay => see_other("/confirm"),
            }
        }
    }
}
