//! Talking with the person at the terminal: where informational lines go, questions on stderr
//! with answers read from stdin, the row choice and the confirmation before unbinding.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::plural;
use crate::cli::support::text::{LINE_COLUMNS, wrap};
use crate::proto::LinkedAccount;

use super::selection::{Resolved, Selection, parse_selection, resolve_selection};

/// Where informational lines go: stdout normally, stderr with `--json` so stdout stays JSON.
#[derive(Clone, Copy)]
pub(super) struct Printer {
    pub(super) json: bool,
}

impl Printer {
    /// A line for the person, wrapped to 80 columns.
    pub(super) fn info(self, line: &str) {
        let line = wrap(line, LINE_COLUMNS);
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    pub(super) fn json_line(self, value: &Value) {
        println!("{value}");
    }
}

/// Writes `question` to stderr and reads one trimmed line from stdin (on a blocking thread).
async fn prompt(question: &str) -> anyhow::Result<String> {
    let question = question.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let mut err = std::io::stderr().lock();
        write!(err, "{question}")?;
        err.flush()?;
        let mut line = String::new();
        let read = std::io::stdin().lock().read_line(&mut line)?;
        if read == 0 {
            bail!("no answer: standard input is closed");
        }
        Ok(line.trim().to_owned())
    })
    .await
    .context("reading standard input")?
}

/// Asks until a non-empty answer comes (once only when stdin is not a terminal).
pub(super) async fn prompt_required(question: &str, interactive: bool) -> anyhow::Result<String> {
    loop {
        let answer = prompt(question).await?;
        if !answer.is_empty() {
            return Ok(answer);
        }
        if !interactive {
            bail!("no answer to \"{}\"", question.trim_end_matches([':', ' ']));
        }
    }
}

/// Asks until the answer names rows that exist (or nothing).
pub(super) async fn ask_selection(
    rows: &[LinkedAccount],
    customer_service: &HashMap<String, String>,
) -> anyhow::Result<(Selection, Resolved)> {
    loop {
        let answer =
            prompt("Unbind which accounts? (rows, 'previous', 'all', Enter: none) ").await?;
        match parse_selection(&answer).and_then(|selection| {
            let resolved = resolve_selection(&selection, rows, customer_service)?;
            Ok((selection, resolved))
        }) {
            Ok(chosen) => return Ok(chosen),
            Err(e) => eprintln!("{e}"),
        }
    }
}

pub(super) async fn confirm(resolved: &Resolved) -> anyhow::Result<bool> {
    let numbers: Vec<String> = resolved
        .chosen
        .iter()
        .map(|i| (i + 1).to_string())
        .collect();
    let answer = prompt(&format!(
        "Unbind {} (rows {})? [y/N] ",
        plural(resolved.chosen.len(), "account", "accounts"),
        numbers.join(", ")
    ))
    .await?;
    Ok(matches!(answer.to_ascii_lowercase().as_str(), "y" | "yes"))
}
