//! Time to the first account a person sees: the web portal next to `query`, for the same kind
//! of look-up (issue 18).
//!
//! One stack in this process (the gateway, the simulated registry, 200 simulated apps with the
//! demo's behaviour, and the portal in front of the gateway). Each run verifies two fresh
//! numbers (fresh, so no look-up is answered from the cache) and measures, alternating:
//! - **portal**: from the answer to the code's `POST` (the redirect to the accounts page) to the
//!   first answer holding an account row, fetched as a browser with JavaScript does: the
//!   accounts page, then its live part on the page's own script's schedule
//!   (`src/portal/assets/portal.js`: at once where the server holds the part until there is
//!   news, then after `data-every` milliseconds);
//! - **query**: `unbind-gateway query --stream` as a child process, from its "Verified" line to
//!   the first app line with an account, both read from its output as they are printed.
//!
//! Both sides verify by reading the code from the stack's SMS file; neither time counts it.
//!
//! `cargo bench --bench first_account` (options: `-- --runs 5`).

mod common;

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use common::{arg_value, median};
use http_body_util::{BodyExt, Full};
use hyper::{Method, body::Bytes, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use unbind_gateway::testkit::{
    simulated_registry::Subscriber,
    stack::{Stack, StackOptions, demo_subscribers, numbered_subscribers},
};

/// The page's script's schedule when the page does not say.
const DEFAULT_EVERY: Duration = Duration::from_millis(1500);

/// A browser's cookie jar and one connection per request.
struct Browser {
    addr: SocketAddr,
    cookies: Vec<(String, String)>,
}

impl Browser {
    async fn send(&mut self, method: Method, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("the portal");
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("an HTTP/1.1 connection");
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string())
            .header(header::ACCEPT_LANGUAGE, "en");
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            request = request.header(header::COOKIE, jar.join("; "));
        }
        let body: String = form
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        if !form.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .expect("an answer");
        for set in response.headers().get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap_or_default();
            if let Some((name, value)) = set.split(';').next().and_then(|p| p.split_once('=')) {
                self.cookies.retain(|(n, _)| n != name);
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The value of attribute `name` in `html` (its first occurrence).
fn attribute<'a>(html: &'a str, name: &str) -> Option<&'a str> {
    let marker = format!("{name}=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(&html[start..start + end])
}

/// Whether a page or live part shows an account: a cell of the "Account" column, which only
/// the tables of the previous holder's accounts and the holder's own have (the table of apps
/// that did not answer has none).
fn shows_an_account(html: &str) -> bool {
    html.contains("data-label=\"Account\"")
}

/// The portal's time from the accepted code to the first account shown.
async fn portal_once(stack: &Stack, addr: SocketAddr, who: &Subscriber) -> Duration {
    let mut b = Browser {
        addr,
        cookies: Vec::new(),
    };
    let (_, page) = b.send(Method::GET, "/", &[]).await;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned)
        .expect("a form with a CSRF token");
    let phone = who.phone_number.expose().replace('+', "%2B");
    let (status, _) = b
        .send(
            Method::POST,
            "/start",
            &[
                ("csrf", &csrf),
                ("phone", &phone),
                ("id_last_six", who.id_last_six.expose()),
            ],
        )
        .await;
    assert_eq!(status, 303, "the number and ID are taken");
    let code = stack
        .wait_for_code(who.phone_number.expose(), 1)
        .await
        .expect("the code");
    let (status, _) = b
        .send(Method::POST, "/code", &[("csrf", &csrf), ("code", &code)])
        .await;
    assert_eq!(status, 303, "the code is taken");
    let verified = Instant::now();
    let (_, page) = b.send(Method::GET, "/accounts", &[]).await;
    if shows_an_account(&page) {
        return verified.elapsed();
    }
    let every = |html: &str| {
        attribute(html, "data-every")
            .and_then(|ms| ms.parse().ok())
            .map_or(DEFAULT_EVERY, Duration::from_millis)
    };
    // As the script does: a part the server holds (`data-hold`) is asked for at once, else
    // after min(every, 1 s); then again after `every`, at the URL the last answer named.
    let live_url = |html: &str| {
        attribute(html, "data-live").map(|url| url.replace("&#x2f;", "/").replace("&amp;", "&"))
    };
    let mut url = live_url(&page).expect("the accounts page has a live part");
    let mut wait = if page.contains("data-hold") {
        Duration::ZERO
    } else {
        every(&page).min(Duration::from_secs(1))
    };
    for _ in 0..200 {
        tokio::time::sleep(wait).await;
        let (_, live) = b.send(Method::GET, &url, &[]).await;
        if live.contains("data-reload") {
            // The look-up ended between two fetches: the script reloads the page.
            let (_, page) = b.send(Method::GET, "/accounts", &[]).await;
            assert!(
                shows_an_account(&page),
                "the finished page shows the accounts"
            );
            return verified.elapsed();
        }
        if shows_an_account(&live) {
            return verified.elapsed();
        }
        wait = every(&live);
        url = live_url(&live).unwrap_or(url);
    }
    panic!("the portal never showed an account");
}

/// `query --stream`'s time from its "Verified" line to its first app line with an account.
async fn query_once(stack: &Stack, who: &Subscriber) -> Duration {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
        .args(["query", "--stream", "--endpoint", &stack.endpoint()])
        .args(["--phone", who.phone_number.expose()])
        .args(["--id-last-six", who.id_last_six.expose()])
        .arg("--code-from-sms-file")
        .arg(&stack.sms_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("query starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut verified = None;
    while let Some(line) = lines.next_line().await.expect("query's output") {
        if line.starts_with("Verified ") {
            verified = Some(Instant::now());
        } else if let Some(at) = verified {
            // "Sim Bank 1 (app-001): 2 accounts (12 ms)"
            let count = line
                .rsplit_once("): ")
                .and_then(|(_, rest)| rest.split(' ').next())
                .and_then(|n| n.parse::<usize>().ok());
            if count.is_some_and(|n| n > 0) {
                let elapsed = at.elapsed();
                let _ = child.kill().await;
                return elapsed;
            }
        }
    }
    panic!("query never printed an account");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = arg_value("--runs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir()?;
    let fresh = numbered_subscribers(2 * runs);
    let mut stack = Stack::start(
        StackOptions {
            subscribers: demo_subscribers()
                .into_iter()
                .chain(fresh.clone())
                .collect(),
            ..StackOptions::new(dir.path().to_path_buf())
        },
        |c| c.verification.max_codes_per_hour = 100,
    )
    .await?;
    let url = stack.start_portal(([127, 0, 0, 1], 0).into()).await?;
    let addr: SocketAddr = url.trim_start_matches("http://").parse()?;
    println!(
        "time to the first account shown, {} apps with the demo's latencies, {runs} runs",
        stack.simulator.apps().len()
    );
    let (mut portal, mut query) = (Vec::new(), Vec::new());
    for (run, pair) in fresh.chunks(2).enumerate() {
        let p = portal_once(&stack, addr, &pair[0]).await;
        let q = query_once(&stack, &pair[1]).await;
        println!(
            "run {}: portal {:>6.0} ms   query {:>6.0} ms",
            run + 1,
            p.as_secs_f64() * 1e3,
            q.as_secs_f64() * 1e3
        );
        portal.push(p.as_secs_f64() * 1e3);
        query.push(q.as_secs_f64() * 1e3);
    }
    let ratios: Vec<f64> = portal.iter().zip(&query).map(|(p, q)| p / q).collect();
    println!(
        "medians: portal {:.0} ms, query {:.0} ms, portal / query {:.2} (per run: {ratios:.2?})",
        median(portal.clone()),
        median(query.clone()),
        median(ratios.clone())
    );
    stack.stop().await?;
    Ok(())
}
