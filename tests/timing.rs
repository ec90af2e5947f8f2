//! Anti-enumeration by timing: `StartVerification` takes about as long whether or not the ID
//! characters match (the SMS is sent in the background, and both paths do the same store work).
//! Calls alternate so machine noise hits both sides alike; the medians must differ by less than
//! the samples' own spread.

mod common;

use std::time::{Duration, Instant};

use common::*;
use unbind_gateway::proto::StartVerificationRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_and_non_matching_ids_take_the_same_time() {
    let h = Harness::start(Options {
        apps: 1,
        // No floor: this checks that both paths do the same work. (The floor, which hides the
        // registry's own speed, is checked in tests/holder_protection.rs.)
        tweak: |c| {
            c.verification.max_codes_per_hour = 10_000;
            c.verification.min_start_latency = Some(Duration::ZERO);
        },
        ..Options::default()
    })
    .await;
    let client = h.client().await;
    let timed = |id: &'static str| {
        let mut client = client.clone();
        async move {
            let started = Instant::now();
            client
                .start_verification(StartVerificationRequest {
                    phone_number: PHONE.into(),
                    id_last_six: id.into(),
                })
                .await
                .unwrap();
            started.elapsed()
        }
    };
    // Warm up connections and caches.
    for _ in 0..10 {
        timed(ID_LAST_SIX).await;
        timed("010000").await;
    }
    let (mut matching, mut other) = (Vec::new(), Vec::new());
    for _ in 0..60 {
        matching.push(timed(ID_LAST_SIX).await);
        other.push(timed("010000").await);
    }
    // Compared within this run, not against a number of milliseconds a loaded machine could
    // break: the medians must sit within the spread (interquartile range) of the samples
    // themselves. A path doing extra work shows as a shift larger than its own noise.
    let quartiles = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 4], v[v.len() / 2], v[3 * v.len() / 4])
    };
    let (m1, m, m3) = quartiles(&mut matching);
    let (o1, o, o3) = quartiles(&mut other);
    let noise = (m3 - m1).max(o3 - o1);
    let diff = m.abs_diff(o);
    assert!(
        diff <= noise,
        "matching {m:?} (IQR {:?}) vs non-matching {o:?} (IQR {:?})",
        m3 - m1,
        o3 - o1
    );
    h.stop().await;
}
