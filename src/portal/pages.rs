//! The pages, one handler per step of the flow, each a client call of the gateway:
//!
//! ```text
//! GET  /            number and ID characters    POST /start   -> StartVerification    -> /code
//! GET  /code        the code from the SMS        POST /code    -> CompleteVerification -> /accounts
//! GET  /accounts    the accounts as they arrive  (StreamLinkedAccounts, read by a task)
//!                   tick, or "all of the previous holder's"   POST /choose -> /confirm
//! GET  /confirm     the choice, once more        POST /confirm -> Unbind               -> /tickets
//! GET  /tickets     each unbind until it ends, then a summary  (GetUnbindTickets)
//! POST /language    the switch on every page;  POST /forget  start over
//! ```
//!
//! Every POST answers `303 See Other` to a GET page (Post/Redirect/Get): the number and the ID
//! characters travel only in a POST body, never in a URL, so they reach neither the browser's
//! history nor any log, and a reload never posts them again. Nothing typed is echoed back. A
//! page that changes while the person waits refreshes itself (`<noscript>` meta refresh), and
//! with JavaScript its live part is fetched again from `/accounts/live` or `/tickets/live`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use chrono_tz::Tz;
use http::{HeaderValue, StatusCode, header};
use minijinja::value::Serde;
use minijinja::{Value, context};
use tonic::Status;
use tonic::transport::Channel;

use crate::domain::{E164, IdLastSix};
use crate::proto::account_gateway_client::AccountGatewayClient;
use crate::proto::{
    CompleteVerificationRequest, GetUnbindTicketsRequest, ListLinkedAccountsRequest,
    StartVerificationRequest, UnbindRequest, UnbindTicket,
};

use super::form::Form;
use super::guard::{self, CSRF_FIELD, Keys, LANG_COOKIE, VISITOR_COOKIE};
use super::i18n::{Locale, to_utc};
use super::notice::{self, Next as After, Notice};
use super::render::Templates;
use super::view::{self, accounts_view, order_rows, tickets_view};
use super::visitor::{Choice, Lookup, Pending, Session, SessionToken, Visit, Visits, lock};

/// A gateway call other than the look-up gives up after this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The look-up's deadline: the gateway reports the apps that miss it as timed out.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(8);
/// Most account refs in one `Unbind` (the gateway's default `max_refs_per_request`).
const UNBIND_CHUNK: usize = 100;
/// Seconds between refreshes of a page that changes while the person waits, without JavaScript.
const REFRESH_ACCOUNTS: u32 = 2;
const REFRESH_TICKETS: u32 = 3;
/// The largest form the portal reads.
const MAX_FORM: usize = 16 * 1024;
/// The steps of the flow, as the progress list names them.
const STEPS: [&str; 5] = [
    "site.step_number",
    "site.step_code",
    "site.step_accounts",
    "site.step_confirm",
    "site.step_progress",
];

/// Everything the pages share.
pub struct Portal {
    pub client: AccountGatewayClient<Channel>,
    pub visits: Visits,
    pub keys: Keys,
    pub templates: Templates,
    /// The carrier's time zone: dates are written in it.
    pub tz: Tz,
}

type Shared = Arc<Portal>;

/// Who is asking, as the cookies say: set on every request by [`visit_layer`].
#[derive(Clone, Debug)]
pub struct Visitor {
    pub id: String,
    pub locale: Locale,
    pub csrf: String,
    /// What the gateway calls this visitor (`x-visitor`).
    pub gateway_name: String,
}

/// The portal's routes, behind the visitor and header layer.
pub fn router(portal: Shared) -> Router {
    Router::new()
        .route("/", get(start_page))
        .route("/start", post(start))
        .route("/code", get(code_page).post(code))
        .route("/accounts", get(accounts_page))
        .route("/accounts/live", get(accounts_live))
        .route("/choose", post(choose))
        .route("/confirm", get(confirm_page).post(confirm))
        .route("/tickets", get(tickets_page))
        .route("/tickets/live", get(tickets_live))
        .route("/language", post(language))
        .route("/forget", post(forget))
        .route("/assets/portal.css", get(css))
        .route("/assets/portal.js", get(js))
        // Browsers ask for it on their own: nothing, rather than a 404 in every console.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_FORM))
        .layer(middleware::from_fn_with_state(portal.clone(), visit_layer))
        .with_state(portal)
}

/// Reads (or issues) the signed visitor cookie and the language, and adds the security
/// headers to every answer.
async fn visit_layer(State(portal): State<Shared>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let known = guard::cookie(headers, VISITOR_COOKIE).and_then(|v| portal.keys.verify_visitor(v));
    let (id, new_cookie) = match known {
        Some(id) => (id, None),
        None => {
            let (id, value) = portal.keys.new_visitor();
            (id, Some(value))
        }
    };
    let locale = guard::cookie(headers, LANG_COOKIE)
        .and_then(Locale::from_tag)
        .unwrap_or_else(|| {
            Locale::negotiate(
                headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok()),
            )
        });
    let csrf = portal.keys.csrf_token(&id);
    let gateway_name = portal.keys.gateway_visitor(&id);
    request.extensions_mut().insert(Visitor {
        id,
        locale,
        csrf,
        gateway_name,
    });
    let mut response = next.run(request).await;
    if let Some(value) = new_cookie
        && let Ok(cookie) = HeaderValue::from_str(&guard::visitor_set_cookie(&value))
    {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    guard::add_security_headers(response.headers_mut());
    response
}

/// A `303 See Other` to one of the portal's own pages.
fn see_other(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// How a page is rendered.
struct Page {
    template: &'static str,
    title_key: &'static str,
    /// The page's own path: where the language switch comes back to.
    path: &'static str,
    /// Which of [`STEPS`] it is.
    step: Option<usize>,
    refresh: Option<u32>,
    status: StatusCode,
}

impl Page {
    const fn new(template: &'static str, title_key: &'static str, path: &'static str) -> Page {
        Page {
            template,
            title_key,
            path,
            step: None,
            refresh: None,
            status: StatusCode::OK,
        }
    }

    const fn step(mut self, step: usize) -> Page {
        self.step = Some(step);
        self
    }
}

impl Portal {
    /// Renders a page: the layout's values (language, switch, CSRF token, steps, notice) and
    /// the page's own.
    fn page(
        &self,
        visitor: &Visitor,
        page: Page,
        notice: Option<Notice>,
        visiting: bool,
        extra: Value,
    ) -> Response {
        let messages = visitor.locale.messages();
        let steps: Vec<Value> = match page.step {
            Some(current) => STEPS
                .iter()
                .enumerate()
                .map(|(i, key)| context! { key => *key, current => i == current })
                .collect(),
            None => Vec::new(),
        };
        let ctx = context! {
            lang => visitor.locale.tag(),
            other_lang => visitor.locale.other().tag(),
            csrf => visitor.csrf.clone(),
            path => page.path,
            title_key => page.title_key,
            steps => steps,
            refresh => page.refresh,
            notice => notice.map(|n| n.text(messages)),
            visiting => visiting,
            ..extra
        };
        self.html(page.status, page.template, ctx, visitor)
    }

    /// A template rendered as an HTML answer.
    fn html(&self, status: StatusCode, template: &str, ctx: Value, visitor: &Visitor) -> Response {
        match self.templates.render(template, ctx) {
            Ok(html) => (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                html,
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, template, "a portal template failed to render");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    visitor.locale.messages().text("error.internal", &[]),
                )
                    .into_response()
            }
        }
    }

    /// A page with one sentence: a refused form, an unknown page.
    fn message(&self, visitor: &Visitor, status: StatusCode, key: &'static str) -> Response {
        let text = visitor.locale.messages().text(key, &[]);
        let page = Page {
            status,
            ..Page::new("message.html", "error.title", "/")
        };
        self.page(visitor, page, None, false, context! { message => text })
    }

    /// The form's CSRF token is the visitor's.
    fn csrf_ok(&self, visitor: &Visitor, form: &Form) -> bool {
        form.get(CSRF_FIELD)
            .is_some_and(|token| self.keys.csrf_ok(&visitor.id, token))
    }

    /// The refusal of a form without the visitor's token.
    fn forbidden(&self, visitor: &Visitor) -> Response {
        self.message(visitor, StatusCode::FORBIDDEN, "error.forbidden")
    }
}

/// Logs a failed gateway call by its code and reason only (never its request).
fn log_failure(rpc: &'static str, status: &Status) {
    let reason = crate::api::error::reason_of(status).unwrap_or_default();
    tracing::warn!(rpc, code = ?status.code(), reason, "a gateway call from the portal failed");
}

/// A gRPC request with a deadline, naming the visitor behind it (`x-visitor`), so the gateway
/// can hold each visitor to a rate of their own within the portal's.
fn call<T>(message: T, timeout: Duration, visitor: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    if let Ok(name) = visitor.parse() {
        request.metadata_mut().insert("x-visitor", name);
    }
    request
}

/// Takes the visit's notice, and says whether a visit is under way (for "start over").
fn notice_of(visit: Option<&Arc<Mutex<Visit>>>) -> (Option<Notice>, bool) {
    match visit {
        Some(visit) => {
            let mut v = lock(visit);
            let visiting = v.pending.is_some() || v.session.is_some() || !v.tickets.is_empty();
            (v.notice.take(), visiting)
        }
        None => (None, false),
    }
}

// ---- number and ID characters ----

async fn start_page(State(p): State<Shared>, Extension(v): Extension<Visitor>) -> Response {
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

async fn start(State(p): State<Shared>, Extension(v): Extension<Visitor>, body: Bytes) -> Response {
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
            log_failure("StartVerification", &status);
            visit.notice = Some(notice::from_status(&status).0);
            see_other("/")
        }
    }
}

// ---- the code ----

async fn code_page(State(p): State<Shared>, Extension(v): Extension<Visitor>) -> Response {
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

async fn code(State(p): State<Shared>, Extension(v): Extension<Visitor>, body: Bytes) -> Response {
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
            log_failure("CompleteVerification", &status);
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
/// app, so the page shows each answer as it comes rather than after the slowest app.
fn spawn_lookup(p: &Portal, token: SessionToken, visitor: String) -> Arc<Mutex<Lookup>> {
    let lookup = Arc::new(Mutex::new(Lookup::default()));
    let shared = Arc::clone(&lookup);
    let mut client = p.client.clone();
    tokio::spawn(async move {
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
                lock(&shared).results.push(result);
            }
            Ok::<(), Status>(())
        }
        .await;
        let mut lookup = lock(&shared);
        if let Err(status) = read {
            log_failure("StreamLinkedAccounts", &status);
            lookup.failed = Some(notice::from_status(&status).0);
        }
        lookup.rows = order_rows(&lookup.results);
        lookup.done = true;
    });
    lookup
}

// ---- the accounts ----

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
        view => Value::from(Serde(&view)),
    }
}

/// The visit's session and look-up, if it has them.
fn session_and_lookup(visit: &Mutex<Visit>) -> Option<(Session, Arc<Mutex<Lookup>>)> {
    let visit = lock(visit);
    Some((visit.session.clone()?, visit.lookup.clone()?))
}

async fn accounts_page(State(p): State<Shared>, Extension(v): Extension<Visitor>) -> Response {
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

async fn accounts_live(State(p): State<Shared>, Extension(v): Extension<Visitor>) -> Response {
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
    let ctx = accounts_context(&p, &v, &session, &lock(&lookup));
    p.html(StatusCode::OK, "accounts_live.html", ctx, &v)
}

// ---- the choice ----

async fn choose(
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

async fn confirm_page(State(p): State<Shared>, Extension(v): Extension<Visitor>) -> Response {
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

async fn confirm(
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
                log_failure("Unbind", &status);
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

// ---- the tickets ----

/// The visit's tickets as they are now. Once the session has ended they are read by id alone
/// (the portal's tenant may read its own tickets), so the page can be followed to the end.
async fn load_tickets(
    p: &Portal,
    v: &Visitor,
    visit: &Mutex<Visit>,
) -> Result<Vec<UnbindTicket>, Notice> {
    let (ids, token) = {
        let visit = lock(visit);
        let live = visit
            .session
            .as_ref()
            .filter(|s| s.expires_at.is_none_or(|at| at > Utc::now()))
            .map(|s| s.token.0.clone());
        (visit.tickets.clone(), live.unwrap_or_default())
    };
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut client = p.client.clone();
    let ask = |session_token: String| GetUnbindTicketsRequest {
        session_token,
        ticket_ids: ids.clone(),
    };
    let answer = match client
        .get_unbind_tickets(call(ask(token.clone()), CALL_TIMEOUT, &v.gateway_name))
        .await
    {
        Err(status)
            if !token.is_empty()
                && crate::api::error::reason_of(&status).as_deref() == Some("INVALID_SESSION") =>
        {
            client
                .get_unbind_tickets(call(ask(String::new()), CALL_TIMEOUT, &v.gateway_name))
                .await
        }
        other => other,
    };
    match answer {
        Ok(answer) => Ok(answer.into_inner().tickets),
        Err(status) => {
            log_failure("GetUnbindTickets", &status);
            Err(notice::from_status(&status).0)
        }
    }
}

async fn tickets_page(State(p): State<Shared>, Extension(v): Extension<Visitor>) -> Response {
    let Some(visit) = p.visits.get(&v.id) else {
        return see_other("/");
    };
    let (notice, visiting) = notice_of(Some(&visit));
    let has_session = lock(&visit).session.is_some();
    let (tickets, failed) = match load_tickets(&p, &v, &visit).await {
        Ok(tickets) => (tickets, None),
        Err(notice) => (Vec::new(), Some(notice)),
    };
    let view = tickets_view(&tickets, v.locale.messages(), p.tz);
    let page = Page {
        refresh: (!view.done && (failed.is_some() || !tickets.is_empty()))
            .then_some(REFRESH_TICKETS),
        ..Page::new("tickets.html", "tickets.heading", "/tickets").step(4)
    };
    p.page(
        &v,
        page,
        notice.or(failed),
        visiting,
        context! { view => Value::from(Serde(&view)), has_session => has_session },
    )
}

async fn tickets_live(State(p): State<Shared>, Extension(v): Extension<Visitor>) -> Response {
    let Some(visit) = p.visits.get(&v.id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match load_tickets(&p, &v, &visit).await {
        Ok(tickets) => {
            let view = tickets_view(&tickets, v.locale.messages(), p.tz);
            let ctx = context! { lang => v.locale.tag(), view => Value::from(Serde(&view)) };
            p.html(StatusCode::OK, "tickets_live.html", ctx, &v)
        }
        // The script tries again a little later.
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

// ---- language, start over, assets ----

/// The pages the language switch may come back to.
const BACK: [&str; 5] = ["/", "/code", "/accounts", "/confirm", "/tickets"];

async fn language(
    State(p): State<Shared>,
    Extension(v): Extension<Visitor>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if !p.csrf_ok(&v, &form) {
        return p.forbidden(&v);
    }
    let back = form
        .get("back")
        .and_then(|b| BACK.iter().find(|&&known| known == b))
        .copied()
        .unwrap_or("/");
    let mut response = see_other(back);
    if let Some(locale) = form.get("lang").and_then(Locale::from_tag)
        && let Ok(cookie) = HeaderValue::from_str(&guard::lang_set_cookie(locale))
    {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

async fn forget(
    State(p): State<Shared>,
    Extension(v): Extension<Visitor>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if !p.csrf_ok(&v, &form) {
        return p.forbidden(&v);
    }
    p.visits.forget(&v.id);
    see_other("/")
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/portal.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/portal.js"),
    )
        .into_response()
}

async fn not_found(State(p): State<Shared>, Extension(v): Extension<Visitor>) -> Response {
    p.message(&v, StatusCode::NOT_FOUND, "error.not_found_page")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_carry_a_deadline_and_the_visitors_name_only() {
        let request = call((), Duration::from_secs(3), "abc_DEF-1");
        assert_eq!(request.metadata().get("x-visitor").unwrap(), "abc_DEF-1");
        assert_eq!(request.metadata().get("grpc-timeout").unwrap(), "3000000u");
        // A name the metadata cannot hold is left out rather than failing the call.
        let request = call((), Duration::from_secs(3), "bad\nname");
        assert!(request.metadata().get("x-visitor").is_none());
    }
}
