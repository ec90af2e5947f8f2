//! `x-correlator` as CAMARA defines it (at most 256 characters of `[a-zA-Z0-9-_:;./<>{}]`), over
//! real gRPC: a valid one is echoed on success and on error and recorded in the audit trail; no
//! header (or an empty one) is no correlator; anything else is refused with `INVALID_ARGUMENT`
//! naming the header, before any work, and the refused value is neither echoed, nor in the
//! error message, nor in any log line.

mod common;

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use common::*;
use tonic::{Code, Request, metadata::AsciiMetadataValue};
use unbind_gateway::proto::{ListAppsRequest, ListLinkedAccountsRequest};

const HEADER: &str = "x-correlator";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test binary, at TRACE.
fn logs() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .without_time()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        capture
    })
}

fn with_correlator<T>(message: T, value: &[u8]) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(HEADER, AsciiMetadataValue::try_from(value).unwrap());
    request
}

#[tokio::test]
async fn a_valid_correlator_is_echoed_on_success_and_error() {
    let h = Harness::start(Options::default()).await;
    let mut client = h.client().await;
    let longest = "a1-_:;./<>{}".repeat(21) + "abcd";
    assert_eq!(longest.len(), 256);
    for value in ["b4333c46-49c0-4f62-80d7-f0ef930f1c46", longest.as_str()] {
        let answer = client
            .list_apps(with_correlator(ListAppsRequest {}, value.as_bytes()))
            .await
            .unwrap();
        assert_eq!(answer.metadata().get(HEADER).unwrap(), value);
        let err = client
            .list_linked_accounts(with_correlator(
                ListLinkedAccountsRequest {
                    session_token: "not-a-token".into(),
                    ..Default::default()
                },
                value.as_bytes(),
            ))
            .await
            .unwrap_err();
        assert_error(&err, Code::Unauthenticated, "INVALID_SESSION");
        assert_eq!(err.metadata().get(HEADER).unwrap(), value);
    }
    h.stop().await;
}

#[tokio::test]
async fn no_correlator_or_an_empty_one_still_works_and_nothing_is_echoed() {
    let h = Harness::start(Options::default()).await;
    let mut client = h.client().await;
    let answer = client.list_apps(ListAppsRequest {}).await.unwrap();
    assert!(answer.metadata().get(HEADER).is_none());
    assert_eq!(answer.get_ref().apps.len(), 5);
    let answer = client
        .list_apps(with_correlator(ListAppsRequest {}, b""))
        .await
        .unwrap();
    assert!(answer.metadata().get(HEADER).is_none());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_else_is_refused_naming_the_header_and_goes_nowhere() {
    let logs = logs();
    let h = Harness::start(Options::default()).await;
    let mut client = h.client().await;
    // Each carries a marker that must not come back or reach a log line.
    let too_long = format!("marker257{}", "a".repeat(248));
    assert_eq!(too_long.len(), 257);
    let cases: [&[u8]; 5] = [
        too_long.as_bytes(),
        b"marker space",
        b"marker@example.com",
        "marker-caf\u{e9}".as_bytes(),
        b"marker+13800138000",
    ];
    for value in cases {
        let err = client
            .list_apps(with_correlator(ListAppsRequest {}, value))
            .await
            .unwrap_err();
        assert_error(&err, Code::InvalidArgument, "INVALID_FIELD");
        assert_eq!(bad_fields(&err), vec![HEADER.to_owned()], "{err:?}");
        assert!(err.message().contains(HEADER), "{err:?}");
        assert!(err.metadata().get(HEADER).is_none(), "echoed: {err:?}");
        assert!(!err.message().contains("marker"), "{err:?}");
        // Refused before the service: an otherwise failing call is refused the same way.
        let err = client
            .list_linked_accounts(with_correlator(ListLinkedAccountsRequest::default(), value))
            .await
            .unwrap_err();
        assert_error(&err, Code::InvalidArgument, "INVALID_FIELD");
    }
    // The connection is still good.
    client.list_apps(ListAppsRequest {}).await.unwrap();
    h.stop().await;
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logs.contains("gateway serving"), "the capture works");
    assert!(!logs.contains("marker"), "a refused correlator was logged");
}
