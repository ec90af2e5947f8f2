//! `demo` starts the web portal too and names its address first (issue 18): run as a person
//! would, the binary with `--portal-listen 127.0.0.1:0`, and the page it names answers, in the
//! browser's language; a person verified through it leaves neither the number nor the ID
//! characters in the demo's log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[path = "common/demo.rs"]
mod demo;

#[test]
fn demo_prints_the_portals_address_first_and_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let demo = demo::Demo::start(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--portal-listen",
            "127.0.0.1:0",
            "--apps",
            "5",
        ],
    );
    let banner = &demo.banner;
    // The portal's address comes before the gateway's and everything else.
    let lines: Vec<&str> = banner.lines().collect();
    let open = lines
        .iter()
        .position(|l| l.trim_start().starts_with("open http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("the banner names the portal: {banner}"));
    let gateway = lines
        .iter()
        .position(|l| l.trim_start().starts_with("gateway "))
        .unwrap_or_else(|| panic!("the banner names the gateway: {banner}"));
    assert!(open < gateway, "{banner}");
    let portal = demo.portal();
    let addr = portal.trim_start_matches("http://");
    // One app never answers by default, and the banner names it.
    assert!(
        demo.line("simulated apps ")
            .starts_with("5; \"Sim Ride 1\" never answers"),
        "{banner}"
    );

    // The page answers, in Chinese for a Chinese browser.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nAccept-Language: zh-CN\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("哪些应用账号绑定了您的号码？"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-security-policy:"),
        "{answer}"
    );
}
