//! Telling holders how their unbinds ended, by SMS, one message per holder per moment: outcomes
//! arriving within a short window are gathered into one summary, so unbinding 40 accounts sends
//! one SMS, not 40.
//!
//! The tickets themselves are the durable record; an SMS still waiting in the window when the
//! process dies is not re-sent (the holder can always ask with `GetUnbindTickets`).

use std::{collections::HashMap, time::Duration};

use tokio::sync::mpsc;

use crate::{
    domain::E164,
    registry::{RegistryClient, templates},
};

/// How one ticket ended, for the summary.
#[derive(Clone, Debug)]
pub enum Outcome {
    Unbound {
        app: String,
    },
    Refused {
        app: String,
        detail: String,
    },
    GaveUp {
        app: String,
        customer_service: String,
    },
}

/// Sends outcomes to a background task that batches them per number.
#[derive(Clone)]
pub struct OutcomeNotifier {
    tx: mpsc::Sender<(E164, Outcome)>,
}

impl OutcomeNotifier {
    /// Starts the batching task; outcomes of one number within `window` share one SMS.
    pub fn start(registry: RegistryClient, window: Duration) -> Self {
        let (tx, rx) = mpsc::channel(10_000);
        tokio::spawn(run(registry, window, rx));
        Self { tx }
    }

    /// Queues an outcome; dropped (and logged) if the queue is full.
    pub fn notify(&self, phone: E164, outcome: Outcome) {
        if self.tx.try_send((phone, outcome)).is_err() {
            tracing::warn!("unbind outcome SMS dropped: notifier queue full");
        }
    }
}

async fn run(registry: RegistryClient, window: Duration, mut rx: mpsc::Receiver<(E164, Outcome)>) {
    while let Some(first) = rx.recv().await {
        let mut pending: HashMap<E164, Vec<Outcome>> = HashMap::new();
        pending.entry(first.0).or_default().push(first.1);
        let until = tokio::time::Instant::now() + window;
        // Until the window closes (or the sender is gone), gather more.
        while let Ok(Some((phone, outcome))) = tokio::time::timeout_at(until, rx.recv()).await {
            pending.entry(phone).or_default().push(outcome);
        }
        for (phone, outcomes) in pending {
            let summary = summarise(&outcomes);
            registry.send_sms_detached(
                phone,
                templates::UNBIND_OUTCOME,
                HashMap::from([("summary".to_owned(), summary)]),
            );
        }
    }
}

/// At most this many app names are listed per kind of outcome.
const MAX_NAMES: usize = 5;

fn names(apps: &[&str]) -> String {
    let mut s = apps
        .iter()
        .take(MAX_NAMES)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if apps.len() > MAX_NAMES {
        s.push_str(&format!(" and {} more", apps.len() - MAX_NAMES));
    }
    s
}

/// One SMS text for a number's outcomes.
pub fn summarise(outcomes: &[Outcome]) -> String {
    let mut unbound = Vec::new();
    let mut refused = Vec::new();
    let mut gave_up = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Unbound { app } => unbound.push(app.as_str()),
            Outcome::Refused { app, detail } => refused.push((app.as_str(), detail.as_str())),
            Outcome::GaveUp {
                app,
                customer_service,
            } => gave_up.push((app.as_str(), customer_service.as_str())),
        }
    }
    let mut parts = Vec::new();
    match unbound.len() {
        0 => {}
        1 => parts.push(format!(
            "Your number was unbound from your account at {}.",
            unbound[0]
        )),
        n => parts.push(format!(
            "Your number was unbound from {n} accounts: {}.",
            names(&unbound)
        )),
    }
    match refused.as_slice() {
        [] => {}
        [(app, detail)] => parts.push(format!("{app} refused to unbind an account: {detail}")),
        many => parts.push(format!(
            "{} apps refused to unbind: {}.",
            many.len(),
            names(&many.iter().map(|(a, _)| *a).collect::<Vec<_>>())
        )),
    }
    match gave_up.as_slice() {
        [] => {}
        [(app, line)] => parts.push(format!(
            "We could not unbind an account at {app}; contact its customer service {line}."
        )),
        many => parts.push(format!(
            "We could not unbind accounts at {}; contact their customer service.",
            names(&many.iter().map(|(a, _)| *a).collect::<Vec<_>>())
        )),
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_summary_for_many_outcomes() {
        let mut outcomes: Vec<Outcome> = (1..=7)
            .map(|i| Outcome::Unbound {
                app: format!("App {i}"),
            })
            .collect();
        outcomes.push(Outcome::Refused {
            app: "Bank".into(),
            detail: "visit a branch".into(),
        });
        let s = summarise(&outcomes);
        assert_eq!(
            s,
            "Your number was unbound from 7 accounts: App 1, App 2, App 3, App 4, App 5 and 2 more. \
             Bank refused to unbind an account: visit a branch"
        );
        assert_eq!(
            summarise(&[Outcome::Unbound { app: "Pay".into() }]),
            "Your number was unbound from your account at Pay."
        );
    }
}
