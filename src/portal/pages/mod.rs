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
//! with JavaScript its live part is fetched again from `/accounts/live` or `/tickets/live`
//! (the accounts' part is held until an app answers, so each answer shows as it arrives).
//!
//! Here: the shared state, the routes, the visitor layer and how a page is rendered; the steps
//! in [`verify`] (number, code), [`accounts`] (the list, the choice, the confirmation) and
//! [`tickets`].

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
use http::{HeaderValue, StatusCode, Uri, header};
use minijinja::value::Serde;
use minijinja::{Value, context};
use tonic::Status;
use tonic::transport::Channel;

use crate::domain::{E164, IdLastSix};
use crate::proto::account_gateway_client::AccountGatewayClient;
use crate::proto::{
    CompleteVerificationRequest, GetUnbindTicketsRequest, ListAppsRequest,
    ListLinkedAccountsRequest, StartVerificationRequest, UnbindRequest, UnbindTicket,
};

mod accounts;
mod tickets;
mod verify;

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
/// How long the number of apps a look-up asks (from `ListApps`) is reused before being asked
/// again: the catalog changes rarely, and each call spends the portal tenant's rate.
const APP_COUNT_TTL: Duration = Duration::from_secs(60);
/// Most account refs in one `Unbind` (the gateway's default `max_refs_per_request`).
const UNBIND_CHUNK: usize = 100;
/// Longest a live part waits for news before answering as it is (below the usual 30 s or more
/// proxies allow an idle request).
const LIVE_HOLD: Duration = Duration::from_secs(15);
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
    /// Becomes true when the portal stops: held requests answer at once.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// Served over HTTPS: browsers are told to come back only that way (HSTS).
    pub https: bool,
    /// The number of enabled apps (those a look-up asks), and when the gateway said it.
    pub app_count: Mutex<Option<(std::time::Instant, usize)>>,
    pub metrics: super::admin::PortalMetrics,
}

impl Portal {
    /// A gateway call failed: said in the log (code and reason, nothing of the person) and
    /// counted.
    fn log_failure(&self, rpc: &'static str, status: &Status) {
        self.metrics.gateway_error(rpc, status.code());
        let reason = crate::api::error::reason_of(status).unwrap_or_default();
        tracing::warn!(rpc, code = ?status.code(), reason, "a gateway call from the portal failed");
    }
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
        .route("/", get(verify::start_page))
        .route("/start", post(verify::start))
        .route("/code", get(verify::code_page).post(verify::code))
        .route("/accounts", get(accounts::accounts_page))
        .route("/accounts/live", get(accounts::accounts_live))
        .route("/choose", post(accounts::choose))
        .route(
            "/confirm",
            get(accounts::confirm_page).post(accounts::confirm),
        )
        .route("/tickets", get(tickets::tickets_page))
        .route("/tickets/live", get(tickets::tickets_live))
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
    // The route's pattern, never the path as asked (which a client makes up at will).
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("other", |m| m.as_str())
        .to_owned();
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
    guard::add_security_headers(response.headers_mut(), portal.https);
    portal.metrics.page(&route, response.status());
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
        include_str!("../assets/portal.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/portal.js"),
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
