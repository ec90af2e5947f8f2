//! The report: each check printed as it finishes (a table, or one JSON object per line), the
//! summary, and the redaction every printed line goes through, so neither the test number nor
//! the account id nor any other long digit run the adapter echoes reaches the terminal.
//!
//! Every line goes through [`Output`], never `println!`: when the reader goes away
//! (`check-adapter ... | head -1`) the printing stops, quietly, and the checks go on, so the exit
//! status is still theirs.

use std::io::{ErrorKind, Write};
use std::time::Duration;

use serde_json::json;
use tonic::Status;

use crate::cli::support::status::transport_cause;
use crate::cli::support::text::replace_controls;
use crate::domain::mask_digits;
use crate::metrics::code_name;

use super::CheckAdapterArgs;
use super::checks::Check;

/// Adapter-supplied text (status messages, `detail`) is cut to this many characters.
pub(super) const MAX_VENDOR_TEXT: usize = 120;

/// What one check concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

impl Verdict {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        }
    }
}

/// A check's verdict and its one-line reason.
pub(super) struct Outcome {
    pub(super) verdict: Verdict,
    pub(super) reason: String,
}

pub(super) fn pass(reason: impl Into<String>) -> Outcome {
    Outcome {
        verdict: Verdict::Pass,
        reason: reason.into(),
    }
}

pub(super) fn fail(reason: impl Into<String>) -> Outcome {
    Outcome {
        verdict: Verdict::Fail,
        reason: reason.into(),
    }
}

pub(super) fn skip(reason: impl Into<String>) -> Outcome {
    Outcome {
        verdict: Verdict::Skip,
        reason: reason.into(),
    }
}
/// "NOT_FOUND (message)", the message cleaned, and for a transport failure its causes.
pub(super) fn describe(status: &Status) -> String {
    let mut text = code_name(status.code()).to_owned();
    let mut message = status.message().to_owned();
    if let Some(causes) = transport_cause(status) {
        if message.is_empty() || causes.starts_with(&message) {
            message = causes;
        } else {
            message = format!("{message}: {causes}");
        }
    }
    if !message.is_empty() {
        text.push_str(&format!(" ({})", vendor_text(&message, "")));
    }
    text
}

/// Text from the adapter, made safe to print: control characters replaced, cut to a line. Long
/// digit runs, the test number and the account id are masked later, by the [`Redactor`], with
/// everything else printed.
pub(super) fn vendor_text(text: &str, empty: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return empty.to_owned();
    }
    let mut cleaned: String = replace_controls(text, ' ')
        .chars()
        .take(MAX_VENDOR_TEXT)
        .collect();
    if text.chars().count() > MAX_VENDOR_TEXT {
        cleaned.push('…');
    }
    cleaned
}

/// Masks every run of seven or more digits as the project masks numbers
/// ([`mask_digits`]: `13800138000` → `138****8000`).
fn mask_digit_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 7 {
            out.push_str(&mask_digits(run));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Removes from everything printed the test number (in the forms an adapter might echo it, as
/// `138****8000`), the account id, and then any other run of seven or more digits (a number the
/// adapter echoed in another form, an id).
pub(super) struct Redactor {
    /// (secret, replacement), longest secret first.
    replacements: Vec<(String, String)>,
}

impl Redactor {
    pub(super) fn new(args: &CheckAdapterArgs) -> Self {
        let mut replacements = Vec::new();
        if let Some(phone) = &args.phone {
            let raw = phone.expose();
            let digits = raw.trim_start_matches('+');
            let national = digits.get(phone.country_code_len()..).unwrap_or(digits);
            for form in [raw, digits, national] {
                replacements.push((form.to_owned(), phone.masked()));
            }
        }
        if let Some(account) = args.unbind_account.as_deref().filter(|a| !a.is_empty()) {
            replacements.push((account.to_owned(), "<account>".to_owned()));
        }
        replacements.sort_by_key(|(secret, _)| std::cmp::Reverse(secret.len()));
        Self { replacements }
    }

    pub(super) fn clean(&self, text: &str) -> String {
        let redacted = self
            .replacements
            .iter()
            .fold(text.to_owned(), |text, (secret, with)| {
                text.replace(secret.as_str(), with)
            });
        mask_digit_runs(&redacted)
    }
}

/// Where the report goes: stdout, and with `--json` the summary to stderr. A stream that cannot
/// be written to any more is written to no more; a closed pipe (`| head -1`: Rust ignores
/// SIGPIPE, so the write fails with `BrokenPipe`) says nothing, any other failure one line on
/// stderr. Either way the checks go on and decide the exit status.
#[derive(Debug, Default)]
pub(super) struct Output {
    stdout_closed: bool,
    stderr_closed: bool,
}

impl Output {
    /// One line on stdout, unless stdout is gone.
    pub(super) fn line(&mut self, text: &str) {
        if self.stdout_closed {
            return;
        }
        let written = {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}").and_then(|()| out.flush())
        };
        if let Err(e) = written {
            self.stdout_closed = true;
            if e.kind() != ErrorKind::BrokenPipe {
                self.error_line(&format!(
                    "error: cannot write the report to stdout ({e}); the checks go on"
                ));
            }
        }
    }

    /// One line on stderr, unless stderr is gone.
    pub(super) fn error_line(&mut self, text: &str) {
        if self.stderr_closed {
            return;
        }
        let mut err = std::io::stderr().lock();
        if writeln!(err, "{text}").and_then(|()| err.flush()).is_err() {
            self.stderr_closed = true;
        }
    }
}

/// Prints each check as it finishes (a table, or JSON lines) and keeps count.
pub(super) struct Reporter {
    json: bool,
    redactor: Redactor,
    out: Output,
    /// The table's heading, printed with the first check: an endpoint that turns out not to be
    /// an adapter gets one error line, not the start of a table.
    heading: Vec<String>,
    done: Vec<(Check, Verdict)>,
}

/// The width of the check-name column.
const NAME_WIDTH: usize = 24;

impl Reporter {
    pub(super) fn new(json: bool, redactor: Redactor) -> Self {
        Self {
            json,
            redactor,
            out: Output::default(),
            heading: Vec::new(),
            done: Vec::new(),
        }
    }

    /// Text as it may be printed: the test number masked, the account id and long digit runs
    /// removed.
    pub(super) fn clean(&self, text: &str) -> String {
        self.redactor.clean(text)
    }

    /// Sets the heading of the table, printed before the first check (none with `--json`).
    pub(super) fn header(&mut self, args: &CheckAdapterArgs, endpoint: &str) {
        if self.json {
            return;
        }
        let tls = args.tls.describe();
        let number = args
            .phone
            .as_ref()
            .map_or_else(|| "no --phone".to_owned(), |p| format!("test number {p}"));
        let destructive = if args.unbind_account.is_some() {
            "destructive checks ON (one test account will be unbound)"
        } else {
            "read-only"
        };
        self.heading = vec![
            self.redactor.clean(&format!(
                "Checking the adapter at {endpoint} ({tls}; {number}; {destructive}; timeout {})",
                humantime::format_duration(args.timeout)
            )),
            format!("{:<NAME_WIDTH$}{:<8}REASON", "CHECK", "RESULT"),
        ];
    }

    pub(super) fn record(&mut self, check: Check, outcome: Outcome, elapsed: Option<Duration>) {
        for line in std::mem::take(&mut self.heading) {
            self.out.line(&line);
        }
        let reason = self.redactor.clean(&outcome.reason);
        if self.json {
            let line = json!({
                "check": check.name(),
                "result": outcome.verdict.as_str(),
                "reason": reason,
                "elapsed_ms": elapsed.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            });
            self.out.line(&line.to_string());
        } else {
            self.out.line(&format!(
                "{:<NAME_WIDTH$}{:<8}{reason}",
                check.name(),
                outcome.verdict.as_str()
            ));
        }
        self.done.push((check, outcome.verdict));
    }

    /// Skips every check not reported yet.
    pub(super) fn skip_rest(&mut self, reason: &str) {
        for check in Check::ALL {
            if !self.done.iter().any(|(c, _)| *c == check) {
                self.record(check, skip(reason), None);
            }
        }
    }

    /// Prints the summary; true when nothing failed.
    pub(super) fn finish(mut self) -> bool {
        let count = |v: Verdict| self.done.iter().filter(|(_, d)| *d == v).count();
        let (passed, failed, skipped) = (
            count(Verdict::Pass),
            count(Verdict::Fail),
            count(Verdict::Skip),
        );
        let failed_names: Vec<&str> = self
            .done
            .iter()
            .filter(|(_, v)| *v == Verdict::Fail)
            .map(|(c, _)| c.name())
            .collect();
        let mut summary = format!(
            "{} checks: {passed} passed, {failed} failed, {skipped} skipped",
            self.done.len()
        );
        if !failed_names.is_empty() {
            summary.push_str(&format!(" (failed: {})", failed_names.join(", ")));
        }
        // With --json, stdout carries only the per-check objects.
        if self.json {
            self.out.error_line(&summary);
        } else {
            self.out.line(&summary);
        }
        failed == 0
    }
}
