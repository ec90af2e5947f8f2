//! The web portal as a browser meets it (issue 18): the demo stack (gateway, simulated registry
//! and apps) with the portal on an ephemeral port, driven over real HTTP. The whole flow in
//! English and in Chinese (number and ID characters, a wrong code then the right one, the
//! accounts grouped with an app that did not answer, a choice, the confirmation, the tickets
//! until they end), and what a public page owes its visitors: the cookie flags, the CSP and
//! other headers, no number or ID characters in any URL or `Location`, nothing typed echoed
//! back, forms refused without the visitor's CSRF token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, StatusCode, header};
use hyper_util::rt::TokioIo;
use unbind_gateway::testkit::simulated_apps::{Behaviour, Latency};

#[path = "common/https.rs"]
mod https;
use unbind_gateway::testkit::stack::{Stack, StackOptions};

/// The demo's English-speaking subscriber (holder since 1 March 2024).
const PHONE: &str = "+8613800138000";
const PHONE_BARE: &str = "13800138000";
const ID: &str = "12345X";
/// The demo's Chinese-speaking subscriber (holder since 15 June 2019).
const ZH_PHONE: &str = "+8613900139000";
const ZH_PHONE_BARE: &str = "13900139000";
const ZH_ID: &str = "154321";
/// The app that never answers.
const SILENT_APP: &str = "app-003";

/// A stack of 12 quick apps (one of which never answers: it times out after 0.7 s) with a fast
/// unbind worker, and the portal in front of it.
async fn stack(dir: &tempfile::TempDir) -> (Stack, SocketAddr) {
    stack_with(dir, Duration::from_millis(700)).await
}

/// [`stack`] with another timeout for every app.
async fn stack_with(dir: &tempfile::TempDir, app_timeout: Duration) -> (Stack, SocketAddr) {
    let mut stack = Stack::start(
        StackOptions {
            apps: 12,
            app_timeout: Some(app_timeout),
            behaviour: Behaviour {
                latency: Latency::Uniform {
                    min: Duration::from_millis(1),
                    max: Duration::from_millis(30),
                },
                unbind_completion: Duration::from_millis(300),
                ..Behaviour::default()
            },
            ..StackOptions::new(dir.path().to_path_buf())
        },
        |c| {
            c.unbind.poll_interval = Duration::from_millis(20);
            c.unbind.status_poll_interval = Duration::from_millis(50);
            c.unbind.retry_base = Duration::from_millis(50);
            c.unbind.retry_jitter = false;
            c.verification.max_codes_per_hour = 100;
        },
    )
    .await
    .unwrap();
    stack.simulator.set_behaviour(
        SILENT_APP,
        Behaviour {
            stall_rate: 1.0,
            ..Behaviour::default()
        },
    );
    let url = stack
        .start_portal(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let addr = url.trim_start_matches("http://").parse().unwrap();
    (stack, addr)
}

/// One answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The page's CSRF token (every form carries the same one).
    fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self.body.find(marker).expect("a form with a CSRF token") + marker.len();
        let end = self.body[start..].find('"').unwrap();
        self.body[start..start + end].to_owned()
    }

    /// The values of the page's account checkboxes.
    fn checkboxes(&self) -> Vec<String> {
        self.body
            .split("name=\"acct\" value=\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap().to_owned())
            .collect()
    }

    fn refreshes(&self) -> bool {
        self.body.contains("http-equiv=\"refresh\"")
    }
}

/// A browser without JavaScript: a cookie jar, a language, and a record of every URL it was
/// sent to and every answer it got.
struct Browser {
    addr: SocketAddr,
    accept_language: &'static str,
    cookies: BTreeMap<String, String>,
    /// Every `Set-Cookie` received, as sent.
    set_cookies: Vec<String>,
    /// Every path asked for and every `Location` received.
    urls: Vec<String>,
    /// Every body received.
    bodies: Vec<String>,
}

impl Browser {
    /// Verifies `phone` (typed as `bare`, with `id`) through the start and code pages, the code
    /// read from the stack's SMS file, landing on the accounts page; the visit's CSRF token.
    async fn verify(&mut self, stack: &Stack, phone: &str, bare: &str, id: &str) -> String {
        let csrf = self.get("/").await.csrf();
        let before = stack.codes_sent_to(phone).len();
        self.post_to(
            "/start",
            &[
                ("csrf", csrf.as_str()),
                ("phone", bare),
                ("id_last_six", id),
            ],
            "/code",
        )
        .await;
        let code = stack.wait_for_code(phone, before + 1).await.unwrap();
        self.post_to(
            "/code",
            &[("csrf", csrf.as_str()), ("code", code.as_str())],
            "/accounts",
        )
        .await;
        csrf
    }

    fn new(addr: SocketAddr, accept_language: &'static str) -> Browser {
        Browser {
            addr,
            accept_language,
            cookies: BTreeMap::new(),
            set_cookies: Vec::new(),
            urls: Vec::new(),
            bodies: Vec::new(),
        }
    }

    async fn send(&mut self, method: Method, path: &str, form: Option<&[(&str, &str)]>) -> Answer {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string())
            .header(header::ACCEPT_LANGUAGE, self.accept_language);
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            request = request.header(header::COOKIE, jar.join("; "));
        }
        let body = match form {
            Some(fields) => {
                request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                fields
                    .iter()
                    .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
                    .collect::<Vec<_>>()
                    .join("&")
            }
            None => String::new(),
        };
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
        for set in parts.headers.get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap().to_owned();
            if let Some((name, value)) = set.split(';').next().and_then(|p| p.split_once('=')) {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
            self.set_cookies.push(set);
        }
        self.urls.push(path.to_owned());
        let answer = Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        };
        if !answer.location().is_empty() {
            self.urls.push(answer.location().to_owned());
        }
        if let Some(placeholder) = unfilled_placeholder(&answer.body) {
            panic!("{path} shows an unfilled {placeholder}: {}", answer.body);
        }
        self.bodies.push(answer.body.clone());
        answer
    }

    async fn get(&mut self, path: &str) -> Answer {
        self.send(Method::GET, path, None).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        self.send(Method::POST, path, Some(fields)).await
    }

    /// Posts a form and expects `303 See Other` to `to`.
    async fn post_to(&mut self, path: &str, fields: &[(&str, &str)], to: &str) {
        let answer = self.post(path, fields).await;
        assert_eq!(
            answer.status,
            StatusCode::SEE_OTHER,
            "{path}: {}",
            answer.body
        );
        assert_eq!(answer.location(), to, "{path}");
    }

    /// GETs `path` until `done` holds for the page (at most `limit`).
    async fn wait_for(
        &mut self,
        path: &str,
        limit: Duration,
        done: impl Fn(&Answer) -> bool,
    ) -> Answer {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let answer = self.get(path).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
            if done(&answer) {
                return answer;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} did not get there within {limit:?}: {}",
                answer.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Nothing secret anywhere the browser keeps or shows: no URL or `Location` with the
    /// number or the ID characters, and no page with either of them.
    fn assert_nothing_leaked(&self, secrets: &[&str]) {
        for url in &self.urls {
            assert!(
                url.starts_with('/') && !url.contains('?'),
                "a URL with more than a path: {url}"
            );
            for secret in secrets {
                assert!(!url.contains(secret), "{url} holds a secret");
            }
        }
        for body in &self.bodies {
            for secret in secrets {
                assert!(!body.contains(secret), "a page echoes {secret}: {body}");
            }
        }
    }
}

/// A message placeholder left as it was ("{count}"): a message used without its value.
fn unfilled_placeholder(body: &str) -> Option<&str> {
    body.match_indices('{').find_map(|(i, _)| {
        let rest = &body[i + 1..];
        let end = rest.find('}')?;
        let name = &rest[..end];
        (!name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .then(|| &body[i..i + end + 2])
    })
}

/// Percent-encoding for a form field.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A code that is not `code`.
fn wrong(code: &str) -> &'static str {
    if code == "000000" { "111111" } else { "000000" }
}

#[tokio::test]
async fn the_whole_flow_in_english_without_javascript() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, addr) = stack(&dir).await;
    let mut b = Browser::new(addr, "en-GB,en;q=0.9");

    // The start page, and what every answer carries.
    let start = b.get("/").await;
    assert_eq!(start.status, StatusCode::OK);
    assert!(start.body.contains("<html lang=\"en\">"), "{}", start.body);
    assert!(start.body.contains("Which app accounts use your number?"));
    let csp = start.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(start.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(start.headers[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(start.headers[header::CACHE_CONTROL], "no-store");
    let visitor = b
        .set_cookies
        .iter()
        .find(|c| c.starts_with("uv="))
        .expect("a visitor cookie")
        .clone();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(visitor.contains(flag), "{visitor}");
    }
    let csrf = start.csrf();
    let csrf = csrf.as_str();
    // The script and the style come from the portal itself.
    for asset in ["/assets/portal.js", "/assets/portal.css"] {
        assert!(start.body.contains(asset));
        assert_eq!(b.get(asset).await.status, StatusCode::OK);
    }

    // A mistyped ID is told, and not shown again.
    b.post_to(
        "/start",
        &[
            ("csrf", csrf),
            ("phone", PHONE_BARE),
            ("id_last_six", "98765"),
        ],
        "/",
    )
    .await;
    let again = b.get("/").await;
    assert!(
        again.body.contains("five digits then a digit or X"),
        "{}",
        again.body
    );
    assert!(!again.body.contains("98765"));

    // Number and ID characters: a code by SMS.
    b.post_to(
        "/start",
        &[("csrf", csrf), ("phone", PHONE_BARE), ("id_last_six", ID)],
        "/code",
    )
    .await;
    let page = b.get("/code").await;
    assert!(
        page.body.contains("Type the code from the SMS"),
        "{}",
        page.body
    );
    let code = stack.wait_for_code(PHONE, 1).await.unwrap();

    // A wrong code, then the right one.
    b.post_to("/code", &[("csrf", csrf), ("code", wrong(&code))], "/code")
        .await;
    let page = b.get("/code").await;
    assert!(
        page.body.contains("That is not the code we sent"),
        "{}",
        page.body
    );
    b.post_to(
        "/code",
        &[("csrf", csrf), ("code", code.as_str())],
        "/accounts",
    )
    .await;

    // The accounts: the page refreshes itself until every app has answered or timed out.
    let accounts = b
        .wait_for("/accounts", Duration::from_secs(30), |a| !a.refreshes())
        .await;
    let body = &accounts.body;
    assert!(body.contains("138****8000"), "{body}");
    assert!(
        body.contains(
            "This number has been yours since 1 March 2024. Accounts bound before then belong to \
             a previous holder of the number"
        ),
        "{body}"
    );
    assert!(body.contains("Accounts of a previous holder"), "{body}");
    assert!(body.contains("Your accounts"), "{body}");
    // The app that never answered is listed as such, with its customer service.
    let silent = stack
        .simulator
        .apps()
        .into_iter()
        .find(|a| a.id == SILENT_APP)
        .unwrap();
    let silent_section = body
        .split("Apps that did not answer")
        .nth(1)
        .unwrap_or_else(|| panic!("no section for the silent app: {body}"));
    assert!(silent_section.contains(&silent.name), "{silent_section}");
    assert!(silent_section.contains(&silent.customer_service));
    assert!(silent_section.contains("did not answer in time"));
    assert!(!accounts.checkboxes().is_empty(), "{body}");

    // All of the previous holder's, confirmed.
    b.post_to(
        "/choose",
        &[("csrf", csrf), ("which", "previous")],
        "/confirm",
    )
    .await;
    let confirm = b.get("/confirm").await;
    assert!(
        confirm.body.contains("Unbind these accounts?"),
        "{}",
        confirm.body
    );
    assert!(
        confirm.body.contains("A previous holder"),
        "{}",
        confirm.body
    );
    b.post_to("/confirm", &[("csrf", csrf)], "/tickets").await;

    // The tickets, until each has ended, then the summary.
    let first = b.get("/tickets").await;
    assert!(first.body.contains("The app must act by"), "{}", first.body);
    let done = b
        .wait_for("/tickets", Duration::from_secs(60), |a| {
            a.body.contains("All the unbinds you asked for have ended.")
        })
        .await;
    assert!(!done.refreshes(), "a finished page stops refreshing");
    assert!(done.body.contains("unbound"), "{}", done.body);
    assert!(done.body.contains("accounts unbound.") || done.body.contains("1 account unbound."));
    // Due dates in words, in the carrier's zone (this year or the next).
    let year = chrono::Utc::now().format("%Y").to_string();
    assert!(done.body.contains(&year), "{}", done.body);
    // The live part is there for the script.
    let live = b.get("/tickets/live").await;
    assert_eq!(live.status, StatusCode::OK);
    assert!(
        live.body
            .contains("All the unbinds you asked for have ended.")
    );

    b.assert_nothing_leaked(&[PHONE_BARE, ID, code.as_str()]);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn the_whole_flow_in_chinese_with_ticked_accounts_and_the_switch() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, addr) = stack(&dir).await;
    let mut b = Browser::new(addr, "zh-CN,zh;q=0.9,en;q=0.5");

    let start = b.get("/").await;
    assert!(
        start.body.contains("<html lang=\"zh-CN\">"),
        "{}",
        start.body
    );
    assert!(
        start.body.contains("哪些应用账号绑定了您的号码？"),
        "{}",
        start.body
    );
    let csrf = start.csrf();
    let csrf = csrf.as_str();
    b.post_to(
        "/start",
        &[
            ("csrf", csrf),
            ("phone", ZH_PHONE_BARE),
            ("id_last_six", ZH_ID),
        ],
        "/code",
    )
    .await;
    let code = stack.wait_for_code(ZH_PHONE, 1).await.unwrap();
    b.post_to("/code", &[("csrf", csrf), ("code", wrong(&code))], "/code")
        .await;
    let page = b.get("/code").await;
    assert!(page.body.contains("验证码不正确"), "{}", page.body);
    b.post_to(
        "/code",
        &[("csrf", csrf), ("code", code.as_str())],
        "/accounts",
    )
    .await;

    let accounts = b
        .wait_for("/accounts", Duration::from_secs(30), |a| !a.refreshes())
        .await;
    assert!(
        accounts
            .body
            .contains("自 2019年6月15日 起，这个号码归您使用。"),
        "{}",
        accounts.body
    );
    assert!(accounts.body.contains("前任机主的账号"));
    assert!(accounts.body.contains("未答复的应用"));
    assert!(accounts.body.contains("未按时答复"));

    // Nothing ticked: told, in Chinese.
    b.post_to(
        "/choose",
        &[("csrf", csrf), ("which", "ticked")],
        "/accounts",
    )
    .await;
    let told = b
        .wait_for("/accounts", Duration::from_secs(5), |_| true)
        .await;
    assert!(told.body.contains("请至少勾选一个账号"), "{}", told.body);

    // Two ticked accounts.
    let boxes = accounts.checkboxes();
    assert!(boxes.len() >= 2, "{}", accounts.body);
    b.post_to(
        "/choose",
        &[
            ("csrf", csrf),
            ("which", "ticked"),
            ("acct", boxes[0].as_str()),
            ("acct", boxes[1].as_str()),
        ],
        "/confirm",
    )
    .await;
    let confirm = b.get("/confirm").await;
    assert!(
        confirm.body.contains("您将让号码与 2 个账号解除绑定。"),
        "{}",
        confirm.body
    );
    b.post_to("/confirm", &[("csrf", csrf)], "/tickets").await;
    let done = b
        .wait_for("/tickets", Duration::from_secs(60), |a| {
            a.body.contains("您申请的解绑已全部结束。")
        })
        .await;
    assert!(done.body.contains("已解绑 2 个账号。"), "{}", done.body);
    assert!(done.body.contains("年"), "{}", done.body);

    // The switch: English from now on, on the same page, remembered by a cookie.
    b.post_to(
        "/language",
        &[("csrf", csrf), ("lang", "en"), ("back", "/tickets")],
        "/tickets",
    )
    .await;
    let lang = b
        .set_cookies
        .iter()
        .find(|c| c.starts_with("lang="))
        .expect("a language cookie")
        .clone();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(lang.contains(flag), "{lang}");
    }
    let english = b.get("/tickets").await;
    assert!(
        english
            .body
            .contains("All the unbinds you asked for have ended.")
    );
    assert!(
        english.body.contains("2 accounts unbound."),
        "{}",
        english.body
    );
    // A switch cannot send the browser elsewhere.
    b.post_to(
        "/language",
        &[
            ("csrf", csrf),
            ("lang", "zh"),
            ("back", "https://evil.example/"),
        ],
        "/",
    )
    .await;

    b.assert_nothing_leaked(&[ZH_PHONE_BARE, ZH_ID, code.as_str()]);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn forms_without_the_visitors_csrf_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, addr) = stack(&dir).await;
    let mut mallory = Browser::new(addr, "en");
    let theirs = mallory.get("/").await.csrf();
    let mut alice = Browser::new(addr, "en");
    let ours = alice.get("/").await.csrf();
    assert_ne!(theirs, ours);

    let form = |csrf: &'static str| [("phone", PHONE_BARE), ("id_last_six", ID), ("csrf", csrf)];
    let leaked: &'static str = Box::leak(theirs.into_boxed_str());
    for fields in [
        form(""),
        form("forged-token"),
        // Another visitor's token with this visitor's cookie.
        form(leaked),
    ] {
        let refused = alice.post("/start", &fields).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
        assert!(
            refused.body.contains("This form is out of date"),
            "{}",
            refused.body
        );
        assert!(refused.location().is_empty());
    }
    // No cookie at all (a post from another site, or a bot).
    let mut stranger = Browser::new(addr, "en");
    let refused = stranger.post("/start", &form(leaked)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    for path in ["/code", "/choose", "/confirm", "/language", "/forget"] {
        let refused = alice.post(path, &[("csrf", "nope")]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{path}");
    }
    // None of them reached the gateway: no code was sent.
    assert!(stack.codes_sent_to(PHONE).is_empty());

    // Pages of a flow not started send the visitor to the start; an unknown page is a 404
    // page in the visitor's language.
    for path in ["/code", "/accounts", "/confirm", "/tickets"] {
        let answer = alice.get(path).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.location(), "/");
    }
    let missing = alice.get("/nothing-here").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("There is no such page."));
    assert_eq!(
        missing.headers[header::CACHE_CONTROL],
        "no-store",
        "every answer carries the headers"
    );
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn a_gateway_that_cannot_be_reached_is_told_in_words() {
    // A port nothing listens on: the portal starts all the same (it connects on first use).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let portal = unbind_gateway::portal::start(
        unbind_gateway::portal::PortalOptions::new(
            tonic::transport::Endpoint::from_shared(gateway)
                .unwrap()
                .connect_lazy(),
        ),
        listener,
    )
    .await
    .unwrap();
    for (language, sentence) in [
        ("en", "This page cannot reach the service right now."),
        ("zh-CN", "本页面暂时无法连接服务。"),
    ] {
        let mut b = Browser::new(portal.addr, language);
        let csrf = b.get("/").await.csrf();
        b.post_to(
            "/start",
            &[
                ("csrf", csrf.as_str()),
                ("phone", PHONE_BARE),
                ("id_last_six", ID),
            ],
            "/",
        )
        .await;
        let told = b.get("/").await;
        assert!(told.body.contains(sentence), "{}", told.body);
        assert!(told.body.contains("role=\"alert\""), "{}", told.body);
        b.assert_nothing_leaked(&[PHONE_BARE, ID]);
    }
    portal.stop().await.unwrap();
}

#[tokio::test]
async fn an_expired_code_or_session_sends_the_person_back_with_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, addr) = stack(&dir).await;
    let mut b = Browser::new(addr, "en");
    let csrf = b.get("/").await.csrf();
    let csrf = csrf.as_str();

    // A code typed after its five minutes.
    b.post_to(
        "/start",
        &[("csrf", csrf), ("phone", PHONE_BARE), ("id_last_six", ID)],
        "/code",
    )
    .await;
    let code = stack.wait_for_code(PHONE, 1).await.unwrap();
    stack.clock.advance(Duration::from_secs(5 * 60 + 1));
    b.post_to("/code", &[("csrf", csrf), ("code", code.as_str())], "/")
        .await;
    let told = b.get("/").await;
    assert!(
        told.body.contains("That code can no longer be used"),
        "{}",
        told.body
    );
    assert_eq!(
        b.get("/code").await.location(),
        "/",
        "the dead code is gone"
    );

    // A session that ends between the list and the confirmation.
    b.post_to(
        "/start",
        &[("csrf", csrf), ("phone", PHONE_BARE), ("id_last_six", ID)],
        "/code",
    )
    .await;
    let code = stack.wait_for_code(PHONE, 2).await.unwrap();
    b.post_to(
        "/code",
        &[("csrf", csrf), ("code", code.as_str())],
        "/accounts",
    )
    .await;
    b.wait_for("/accounts", Duration::from_secs(30), |a| !a.refreshes())
        .await;
    b.post_to(
        "/choose",
        &[("csrf", csrf), ("which", "previous")],
        "/confirm",
    )
    .await;
    stack.clock.advance(Duration::from_secs(10 * 60 + 1));
    b.post_to("/confirm", &[("csrf", csrf)], "/").await;
    let told = b.get("/").await;
    assert!(told.body.contains("Your visit ended"), "{}", told.body);
    assert_eq!(b.get("/accounts").await.location(), "/");
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn over_mutual_tls_as_a_portal_tenant() {
    use unbind_gateway::config::{Role, TenantConfig, TlsConfig};
    use unbind_gateway::pki::generate;
    use unbind_gateway::testkit::stack::BackendTls;

    let certs = tempfile::tempdir().unwrap();
    let pki = generate(
        certs.path(),
        &[("portal-web".to_owned(), Role::Portal)],
        &[],
        30,
        false,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (gateway_tls, client_ca) = (pki.gateway.clone(), pki.ca.cert.clone());
    let stack = Stack::start(
        StackOptions {
            apps: 6,
            backend_tls: Some(BackendTls::from_pki(&pki).unwrap()),
            ..StackOptions::new(dir.path().to_path_buf())
        },
        move |c| {
            // Production mode: TLS, client certificates, the portal a tenant of role portal.
            c.development = false;
            c.tls = Some(TlsConfig {
                cert: gateway_tls.cert,
                key: gateway_tls.key,
                client_ca: Some(client_ca),
            });
            c.tenants = vec![
                toml::from_str::<TenantConfig>("name = \"portal-web\"\nrole = \"portal\"").unwrap(),
            ];
        },
    )
    .await
    .unwrap();
    let gateway = format!(
        "https://127.0.0.1:{}",
        stack.gateway.as_ref().unwrap().addr.port()
    );
    let files = &pki.tenants[0].files;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let portal = unbind_gateway::portal::start(
        // As `unbind-gateway portal --gateway URL --ca --cert --key` builds it.
        unbind_gateway::portal::PortalOptions::new(
            unbind_gateway::cli::support::endpoint::endpoint_with_tls(
                &gateway,
                &unbind_gateway::cli::tls_args::ClientTlsArgs {
                    ca: Some(pki.ca.cert.clone()),
                    cert: Some(files.cert.clone()),
                    key: Some(files.key.clone()),
                    tls_server_name: Some("localhost".to_owned()),
                },
                unbind_gateway::portal::CONNECT_TIMEOUT,
            )
            .unwrap()
            .connect_lazy(),
        ),
        listener,
    )
    .await
    .unwrap();

    let mut b = Browser::new(portal.addr, "en");
    b.verify(&stack, PHONE, PHONE_BARE, ID).await;
    let accounts = b
        .wait_for("/accounts", Duration::from_secs(30), |a| !a.refreshes())
        .await;
    assert!(
        accounts
            .body
            .contains("This number has been yours since 1 March 2024."),
        "{}",
        accounts.body
    );
    assert!(
        accounts.body.contains("6 apps were asked."),
        "{}",
        accounts.body
    );
    portal.stop().await.unwrap();
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn the_accounts_appear_as_the_apps_answer_not_after_the_slowest() {
    let dir = tempfile::tempdir().unwrap();
    // Apps have 4 s: one takes 2.5 s, one never answers, the others answer in milliseconds.
    let (stack, addr) = stack_with(&dir, Duration::from_secs(4)).await;
    let slow = "app-005";
    stack.simulator.set_behaviour(
        slow,
        Behaviour {
            latency: Latency::Fixed(Duration::from_millis(2500)),
            ..Behaviour::default()
        },
    );
    let mut b = Browser::new(addr, "en");
    b.verify(&stack, PHONE, PHONE_BARE, ID).await;
    // Before the slow app answers, the page already lists what the others said, and refreshes.
    let partial = b
        .wait_for("/accounts", Duration::from_secs(3), |a| {
            a.body.contains("have answered so far.")
        })
        .await;
    assert!(partial.refreshes(), "{}", partial.body);
    assert!(partial.body.contains("Accounts of a previous holder"));
    assert!(
        partial.body.contains("<td"),
        "rows already: {}",
        partial.body
    );
    assert!(
        partial.checkboxes().is_empty(),
        "nothing to tick before the end"
    );
    assert!(
        !partial.body.contains("No app reported"),
        "{}",
        partial.body
    );
    // Its live part, for the page's script, says the same.
    let live = b.get("/accounts/live").await;
    assert!(
        live.body.contains("data-live=\"/accounts/live?seen=")
            || live
                .body
                .contains("data-live=\"&#x2f;accounts&#x2f;live?seen="),
        "{}",
        live.body
    );
    assert!(live.body.contains("have answered so far."), "{}", live.body);
    // Out of how many: the 12 apps of the catalog (from ListApps).
    assert!(live.body.contains("Asking 12 apps… "), "{}", live.body);
    // Asked with what it showed, the live part is held until there is news: the next answer
    // (a later version), or the end of the look-up.
    let seen_in = |body: &str| -> u64 {
        let rest = body.split("live?seen=").nth(1).expect("a seen version");
        rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap()]
            .parse()
            .unwrap()
    };
    let seen = seen_in(&live.body);
    let news = b.get(&format!("/accounts/live?seen={seen}")).await;
    assert!(
        news.body.contains("data-reload") || seen_in(&news.body) > seen,
        "held until something changed (seen {seen}): {}",
        news.body
    );
    // Then the slow app's answer, and the choice.
    let done = b
        .wait_for("/accounts", Duration::from_secs(30), |a| !a.refreshes())
        .await;
    assert!(!done.checkboxes().is_empty());
    let name = |id: &str| {
        stack
            .simulator
            .apps()
            .into_iter()
            .find(|a| a.id == id)
            .unwrap()
            .name
    };
    let silent = done.body.split("Apps that did not answer").nth(1).unwrap();
    assert!(silent.contains(&name(SILENT_APP)), "{silent}");
    assert!(
        !silent.contains(&name(slow)),
        "the slow app answered in time: {silent}"
    );
    let live = b.get("/accounts/live").await;
    assert!(live.body.contains("data-reload"), "{}", live.body);
    stack.stop().await.unwrap();
}

/// `unbind-gateway portal` as run: started, it prints `open URL`; this waits (30 s at most)
/// for that line, or for the process to end, and returns the line (or everything it said).
async fn portal_process(args: &[&str]) -> (tokio::process::Child, Result<String, String>) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
        .arg("portal")
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut said = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = out.next_line().await {
            if let Some(url) = line.trim_start().strip_prefix("open ") {
                return Some(url.trim().to_owned());
            }
            said.push_str(&line);
            said.push('\n');
        }
        None
    })
    .await
    .expect("the portal neither started nor ended within 30 s");
    match found {
        Some(url) => (child, Ok(url)),
        None => {
            let mut err = String::new();
            use tokio::io::AsyncReadExt;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .await
                .unwrap();
            let status = child.wait().await.unwrap();
            assert!(!status.success(), "{said}{err}");
            (child, Err(format!("{said}{err}")))
        }
    }
}

/// The portal's HTTPS certificate is read again when its files change and on SIGHUP (which
/// does not stop it): a renewed certificate is served from the next connection on, without a
/// restart. On main the files were read once, at start.
#[tokio::test]
async fn the_portal_serves_a_renewed_certificate_without_a_restart() {
    let (old_dir, new_dir, live) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let old = unbind_gateway::pki::generate(old_dir.path(), &[], &[], 30, false).unwrap();
    let new = unbind_gateway::pki::generate(new_dir.path(), &[], &[], 30, false).unwrap();
    let (cert, key) = (
        live.path().join("portal.pem"),
        live.path().join("portal.key"),
    );
    std::fs::copy(&old.portal.cert, &cert).unwrap();
    std::fs::copy(&old.portal.key, &key).unwrap();
    let (mut child, url) = portal_process(&[
        "--gateway",
        "http://127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let addr: SocketAddr = url
        .unwrap()
        .strip_prefix("https://")
        .unwrap()
        .parse()
        .unwrap();
    let (trusts_old, trusts_new) = (
        https::Client::tls(addr, &old.ca.cert),
        https::Client::tls(addr, &new.ca.cert),
    );
    assert!(trusts_old.handshakes().await);
    assert!(!trusts_new.handshakes().await);
    // SIGHUP re-reads the files; it does not stop the portal.
    let pid = child.id().unwrap().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(trusts_old.handshakes().await, "SIGHUP stopped the portal");
    // The renewed certificate (here from another CA, to tell them apart).
    std::fs::copy(&new.portal.cert, &cert).unwrap();
    std::fs::copy(&new.portal.key, &key).unwrap();
    let mut renewed = false;
    for _ in 0..100 {
        if trusts_new.handshakes().await {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        renewed,
        "the renewed certificate was not served within 10 s"
    );
    assert!(!trusts_old.handshakes().await);
    let page = trusts_new
        .request("GET", "/", &[("accept-language", "en")], None)
        .await;
    assert_eq!(page.status, 200);
    let _ = child.kill().await;
}

#[tokio::test]
async fn the_portal_serves_https_with_its_own_certificate_and_refuses_plain_http_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let pki = unbind_gateway::pki::generate(dir.path(), &[], &[], 30, false).unwrap();
    let (cert, key) = (
        pki.portal.cert.to_str().unwrap(),
        pki.portal.key.to_str().unwrap(),
    );
    // A gateway nobody runs: the portal connects on first use, and these pages need none.
    let gateway = "http://127.0.0.1:9";

    let (mut child, url) = portal_process(&[
        "--gateway",
        gateway,
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ])
    .await;
    let url = url.unwrap();
    let addr: SocketAddr = url
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("not an https URL: {url}"))
        .parse()
        .unwrap();
    let client = https::Client::tls(addr, &pki.ca.cert);
    let page = client
        .request("GET", "/", &[("accept-language", "en")], None)
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<form"), "{}", page.body);
    assert_eq!(
        page.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert!(page.header("content-security-policy").is_some());
    let cookie = page.header("set-cookie").unwrap();
    assert!(
        cookie.contains("Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    // Plain HTTP on the HTTPS port gets no page.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
        "{answer:?}"
    );
    let _ = child.kill().await;

    // Plain HTTP on an address browsers reach from elsewhere is refused, with what to do.
    let (_, refused) = portal_process(&["--gateway", gateway, "--listen", "0.0.0.0:0"]).await;
    let refused = refused.unwrap_err();
    assert!(
        refused.contains("--tls-cert") && refused.contains("--behind-tls-proxy"),
        "{refused}"
    );
    // ... unless a proxy in front terminates TLS.
    let (mut behind, url) = portal_process(&[
        "--gateway",
        gateway,
        "--listen",
        "0.0.0.0:0",
        "--behind-tls-proxy",
    ])
    .await;
    assert!(url.unwrap().starts_with("http://0.0.0.0:"));
    // With no TLS files to re-read, SIGHUP still does not end it.
    let pid = behind.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        behind.try_wait().unwrap().is_none(),
        "SIGHUP ended a plain-HTTP portal"
    );
    let _ = behind.kill().await;

    // A certificate file that is not one is named.
    let (_, bad) =
        portal_process(&["--gateway", gateway, "--tls-cert", key, "--tls-key", key]).await;
    let bad = bad.unwrap_err();
    assert!(bad.contains("--tls-cert"), "{bad}");
    // Half of a pair is refused by the flags.
    let (_, half) = portal_process(&["--gateway", gateway, "--tls-cert", cert]).await;
    assert!(half.unwrap_err().contains("--tls-key"));
}

/// A portal whose stdout and stderr are closed (a log collector gone, the output piped into
/// `head`) keeps serving: on main its banner's `println!` panicked and ended it. The read end is closed before
/// the portal prints anything, so the test does not depend on timing.
#[tokio::test]
async fn closed_stdout_and_stderr_do_not_end_the_portal() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
        .args(["portal", "--gateway", "http://127.0.0.1:9", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    drop((child.stdout.take(), child.stderr.take()));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the portal ended ({status}) when its output was closed");
        }
        if let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
            if answer.starts_with(b"HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the portal did not serve within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The banner comes right after the listener serves: still alive well after it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the portal ended when its output was closed"
    );
    let _ = child.kill().await;
}

#[tokio::test]
async fn at_its_connection_cap_the_portal_takes_the_next_connection_when_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let portal = unbind_gateway::portal::start(
        unbind_gateway::portal::PortalOptions {
            max_connections: 2,
            ..unbind_gateway::portal::PortalOptions::new(
                tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy(),
            )
        },
        listener,
    )
    .await
    .unwrap();
    // Two connections that send nothing hold both places.
    let idle_one = tokio::net::TcpStream::connect(portal.addr).await.unwrap();
    let _idle_two = tokio::net::TcpStream::connect(portal.addr).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(portal.addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut first_byte = [0u8; 1];
    let waited =
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut first_byte)).await;
    assert!(
        waited.is_err(),
        "a third connection was served at a cap of 2"
    );
    // One closes: the third is taken and answered.
    drop(idle_one);
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut answer))
        .await
        .expect("the third connection was answered once a place was free")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    portal.stop().await.unwrap();
}

#[tokio::test]
async fn the_admin_endpoint_counts_pages_and_gateway_errors_and_says_whether_the_gateway_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, _) = stack(&dir).await;
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let portal = unbind_gateway::portal::start(
        unbind_gateway::portal::PortalOptions {
            admin: Some(admin_listener),
            ..unbind_gateway::portal::PortalOptions::new(
                tonic::transport::Endpoint::from_shared(stack.endpoint())
                    .unwrap()
                    .connect_lazy(),
            )
        },
        listener,
    )
    .await
    .unwrap();
    let admin = https::Client::plain(portal.admin_addr.unwrap());
    let healthz = admin.request("GET", "/healthz", &[], None).await;
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"));
    let ready = admin.request("GET", "/readyz", &[], None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);

    // A visit with a wrong code: a page answered, and a gateway call failed.
    let mut b = Browser::new(portal.addr, "en");
    let csrf = b.get("/").await.csrf();
    let csrf = csrf.as_str();
    b.post_to(
        "/start",
        &[("csrf", csrf), ("phone", PHONE_BARE), ("id_last_six", ID)],
        "/code",
    )
    .await;
    let code = stack.wait_for_code(PHONE, 1).await.unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    b.post_to("/code", &[("csrf", csrf), ("code", wrong)], "/code")
        .await;
    let _ = b.get("/no-such-page?phone=13800138000").await;
    let metrics = admin.request("GET", "/metrics", &[], None).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.body;
    assert!(
        text.contains("unbind_portal_pages_total{route=\"/\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("unbind_portal_pages_total{route=\"/start\",status=\"303\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("unbind_portal_pages_total{route=\"other\",status=\"404\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("unbind_portal_gateway_errors_total{rpc=\"CompleteVerification\""),
        "{text}"
    );
    assert!(text.contains("unbind_portal_visits 1"), "{text}");
    // Both listeners report their connection cap.
    assert!(
        text.contains("unbind_connections_max{listener=\"portal\"} 4096"),
        "{text}"
    );
    assert!(
        text.contains("unbind_connections_max{listener=\"portal-admin\"} 64"),
        "{text}"
    );
    for secret in [PHONE_BARE, "8613800138000", ID, code.as_str(), wrong] {
        assert!(!text.contains(secret), "the metrics hold {secret}");
    }

    // The gateway gone: not ready (taken out of rotation), still alive.
    stack.stop().await.unwrap();
    let ready = admin.request("GET", "/readyz", &[], None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.starts_with("not ready: "), "{}", ready.body);
    let healthz = admin.request("GET", "/healthz", &[], None).await;
    assert_eq!(healthz.status, 200);
    portal.stop().await.unwrap();
}

#[tokio::test]
async fn a_tickets_reason_is_said_in_the_visitors_language_not_the_gateways_english() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, addr) = stack(&dir).await;
    // The apps accept at once and take a minute to finish: the tickets stay ACCEPTED.
    stack.simulator.set_behaviour_all(&Behaviour {
        unbind_completion: Duration::from_secs(60),
        ..Behaviour::default()
    });
    let mut b = Browser::new(addr, "zh-CN");
    let csrf = b.verify(&stack, ZH_PHONE, ZH_PHONE_BARE, ZH_ID).await;
    let csrf = csrf.as_str();
    let accounts = b
        .wait_for("/accounts", Duration::from_secs(30), |a| !a.refreshes())
        .await;
    let boxes = accounts.checkboxes();
    b.post_to(
        "/choose",
        &[
            ("csrf", csrf),
            ("which", "ticked"),
            ("acct", boxes[0].as_str()),
        ],
        "/confirm",
    )
    .await;
    b.post_to("/confirm", &[("csrf", csrf)], "/tickets").await;
    let accepted = b
        .wait_for("/tickets", Duration::from_secs(30), |a| {
            a.body.contains("该应用已受理，正在处理。")
        })
        .await;
    assert!(
        !accepted.body.contains("accepted by the app"),
        "{}",
        accepted.body
    );
    stack.stop().await.unwrap();
}
