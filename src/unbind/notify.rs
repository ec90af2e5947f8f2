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
    pub fn start(
        registry: RegistryClient,
        window: Duration,
        critical: &crate::critical::CriticalTasks,
    ) -> Self {
        let (tx, rx) = mpsc::channel(10_000);
        critical.spawn_finite("outcome notifier", run(registry, window, rx));
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
            registry.send_sms_detached(phone, templates::UNBIND_OUTCOME, outcome_params(&outcomes));
        }
    }
}

/// At most this many app names are listed per kind of outcome in the English `summary`.
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

/// Each app once, ordered as a person reads names ("Bank 2" before "Bank 10").
fn distinct(mut apps: Vec<&str>) -> Vec<&str> {
    apps.sort_by(|a, b| crate::domain::natural_cmp(a, b));
    apps.dedup();
    apps
}

/// A number's outcomes sorted by kind: the accounts unbound, refused and given up on, each with
/// its app.
struct Sorted<'a> {
    unbound: Vec<&'a str>,
    refused: Vec<&'a str>,
    gave_up: Vec<(&'a str, &'a str)>,
}

fn sort(outcomes: &[Outcome]) -> Sorted<'_> {
    let mut sorted = Sorted {
        unbound: Vec::new(),
        refused: Vec::new(),
        gave_up: Vec::new(),
    };
    for o in outcomes {
        match o {
            Outcome::Unbound { app } => sorted.unbound.push(app.as_str()),
            Outcome::Refused { app, .. } => sorted.refused.push(app.as_str()),
            Outcome::GaveUp {
                app,
                customer_service,
            } => sorted
                .gave_up
                .push((app.as_str(), customer_service.as_str())),
        }
    }
    sorted
}

/// The `unbind_outcome` SMS's params: structured, for the carrier's registry to render in the
/// holder's language from its own template (see `SendSmsRequest` in registry.proto):
/// `outcome` (`unbound`, `partly_unbound` or `not_unbound`), the accounts counted
/// (`unbound_count`, `refused_count`, `failed_count`, `not_unbound_count`), the apps as JSON
/// arrays of distinct names in reading order (`unbound_apps`, `refused_apps`, `failed_apps`,
/// `not_unbound_apps`), `failed_contacts` (a JSON array of "App: customer service" for the
/// apps given up on), and `summary`, the whole message in English, for registries that take
/// text as it is.
pub fn outcome_params(outcomes: &[Outcome]) -> HashMap<String, String> {
    let sorted = sort(outcomes);
    let json = |names: &[&str]| serde_json::to_string(names).unwrap_or_else(|_| "[]".to_owned());
    let unbound = distinct(sorted.unbound.clone());
    let refused = distinct(sorted.refused.clone());
    let failed = distinct(sorted.gave_up.iter().map(|(app, _)| *app).collect());
    let not_unbound = distinct(refused.iter().chain(&failed).copied().collect());
    let mut contacts: Vec<String> = sorted
        .gave_up
        .iter()
        .filter(|(_, line)| !line.is_empty())
        .map(|(app, line)| format!("{app}: {line}"))
        .collect();
    contacts.sort_by(|a, b| crate::domain::natural_cmp(a, b));
    contacts.dedup();
    let not_unbound_count = sorted.refused.len() + sorted.gave_up.len();
    let outcome = match (sorted.unbound.is_empty(), not_unbound_count == 0) {
        (false, true) => "unbound",
        (false, false) => "partly_unbound",
        (true, _) => "not_unbound",
    };
    HashMap::from([
        ("outcome".to_owned(), outcome.to_owned()),
        ("unbound_count".to_owned(), sorted.unbound.len().to_string()),
        ("refused_count".to_owned(), sorted.refused.len().to_string()),
        ("failed_count".to_owned(), sorted.gave_up.len().to_string()),
        (
            "not_unbound_count".to_owned(),
            not_unbound_count.to_string(),
        ),
        ("unbound_apps".to_owned(), json(&unbound)),
        ("refused_apps".to_owned(), json(&refused)),
        ("failed_apps".to_owned(), json(&failed)),
        ("not_unbound_apps".to_owned(), json(&not_unbound)),
        (
            "failed_contacts".to_owned(),
            serde_json::to_string(&contacts).unwrap_or_else(|_| "[]".to_owned()),
        ),
        ("summary".to_owned(), summarise(outcomes)),
    ])
}

/// One SMS text in English for a number's outcomes (each app named once, in reading order).
pub fn summarise(outcomes: &[Outcome]) -> String {
    let sorted = sort(outcomes);
    let mut parts = Vec::new();
    let unbound_apps = distinct(sorted.unbound.clone());
    match sorted.unbound.len() {
        0 => {}
        1 => parts.push(format!(
            "Your number was unbound from your account at {}.",
            unbound_apps[0]
        )),
        n => parts.push(format!(
            "Your number was unbound from {n} accounts at {}.",
            names(&unbound_apps)
        )),
    }
    let refused_apps = distinct(sorted.refused.clone());
    match sorted.refused.len() {
        0 => {}
        1 => parts.push(format!("{} refused to unbind an account.", refused_apps[0])),
        n => parts.push(format!(
            "{n} accounts were not unbound by {}, which refused.",
            names(&refused_apps)
        )),
    }
    match sorted.gave_up.as_slice() {
        [] => {}
        [(app, line)] if !line.is_empty() => parts.push(format!(
            "We could not unbind an account at {app}; contact its customer service {line}."
        )),
        many => parts.push(format!(
            "We could not unbind accounts at {}; contact their customer service.",
            names(&distinct(many.iter().map(|(a, _)| *a).collect()))
        )),
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_summary_for_many_outcomes_each_app_once_in_reading_order() {
        let mut outcomes: Vec<Outcome> = [11, 4, 1, 8, 1, 2, 3, 9]
            .into_iter()
            .map(|i| Outcome::Unbound {
                app: format!("Sim Bank {i}"),
            })
            .collect();
        outcomes.push(Outcome::Refused {
            app: "Bank".into(),
            detail: "visit a branch".into(),
        });
        assert_eq!(
            summarise(&outcomes),
            "Your number was unbound from 8 accounts at Sim Bank 1, Sim Bank 2, Sim Bank 3, \
             Sim Bank 4, Sim Bank 8 and 2 more. Bank refused to unbind an account."
        );
        assert_eq!(
            summarise(&[Outcome::Unbound { app: "Pay".into() }]),
            "Your number was unbound from your account at Pay."
        );
    }

    #[test]
    fn outcome_params_are_structured_for_the_carriers_template() {
        let outcomes = vec![
            Outcome::Unbound {
                app: "Sim Bank 11".into(),
            },
            Outcome::Unbound {
                app: "Sim Bank 4".into(),
            },
            Outcome::Unbound {
                app: "Sim Bank 4".into(),
            },
            Outcome::GaveUp {
                app: "Sim Pay 2".into(),
                customer_service: "+86 400-800-0002".into(),
            },
        ];
        let params = outcome_params(&outcomes);
        assert_eq!(params["outcome"], "partly_unbound");
        assert_eq!(params["unbound_count"], "3");
        assert_eq!(params["unbound_apps"], r#"["Sim Bank 4","Sim Bank 11"]"#);
        assert_eq!(params["failed_count"], "1");
        assert_eq!(params["not_unbound_apps"], r#"["Sim Pay 2"]"#);
        assert_eq!(
            params["failed_contacts"],
            r#"["Sim Pay 2: +86 400-800-0002"]"#
        );
        assert!(params["summary"].starts_with("Your number was unbound from 3 accounts at"));
        let only_refused = outcome_params(&[Outcome::Refused {
            app: "Bank".into(),
            detail: "no".into(),
        }]);
        assert_eq!(only_refused["outcome"], "not_unbound");
    }
}
