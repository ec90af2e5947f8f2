//! `--code-from-sms-file`: the demo's registry writes every SMS it sends to a JSON-lines file;
//! the code sent to this number after the verification started is read from it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::testkit::simulated_registry::code_in_sms;

/// How long `--code-from-sms-file` waits for the code to appear.
const SMS_WAIT: Duration = Duration::from_secs(10);
/// How often the SMS file is re-read while waiting.
const SMS_POLL: Duration = Duration::from_millis(200);

/// The newest code sent to `phone` in the demo's SMS JSON-lines file contents (lines
/// `{"phone_number", "template", "params", "code", "text", "sent_at"}`; lines written before
/// `code` existed have the code in the text, after "code is"). Lines that are not JSON, are for
/// another number, or carry no code are ignored.
pub fn newest_code(contents: &str, phone: &str) -> Option<String> {
    // The file is append-only, so the newest message is the last one.
    contents
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
        .filter(|msg| {
            msg.get("phone_number")
                .and_then(Value::as_str)
                .is_some_and(|n| same_number(n, phone))
        })
        .filter_map(|msg| match msg.get("code").and_then(Value::as_str) {
            Some(code) => Some(code.to_owned()),
            None => msg
                .get("text")
                .and_then(Value::as_str)
                .and_then(code_in_sms),
        })
        .next()
}

/// Whether two spellings name the same number: "+86 138 0013 8000", "13800138000" and
/// "+8613800138000" all do (a bare 11-digit number is a Chinese mobile number).
fn same_number(a: &str, b: &str) -> bool {
    let (a, b) = (national_digits(a), national_digits(b));
    !a.is_empty() && a == b
}

fn national_digits(number: &str) -> String {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    if digits.len() == 11 && digits.starts_with('1') {
        format!("86{digits}")
    } else {
        digits
    }
}

/// The size of the SMS file now, so only messages written after it count.
pub(super) async fn sms_file_len(path: &Path) -> u64 {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Waits (up to 10 s, re-reading every 200 ms) for a code to `phone` written after `offset`.
pub(super) async fn wait_for_sms_code(
    path: &Path,
    phone: &str,
    offset: u64,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + SMS_WAIT;
    loop {
        match tokio::fs::read(path).await {
            Ok(bytes) => {
                // A file that shrank was replaced: everything in it is new.
                let start = usize::try_from(offset)
                    .ok()
                    .filter(|&s| s <= bytes.len())
                    .unwrap_or(0);
                let fresh = String::from_utf8_lossy(&bytes[start..]);
                if let Some(code) = newest_code(&fresh, phone) {
                    return Ok(code);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "no code for this number appeared in {} within {} s (none is sent when the ID \
                 characters do not match the number)",
                path.display(),
                SMS_WAIT.as_secs()
            );
        }
        tokio::time::sleep(SMS_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sms_file_newest_code_for_the_number() {
        let file = concat!(
            r#"{"phone_number":"+8613800138000","text":"Your unbind code is 111111.","sent_at":"2024-01-01T00:00:00Z"}"#,
            "\n",
            "not json\n",
            r#"{"phone_number":"+8613900139000","text":"Your code is 999999","sent_at":"2024-01-01T00:00:01Z"}"#,
            "\n",
            r#"{"phone_number":"+8613800138000","text":"You have 2 accounts","sent_at":"2024-01-01T00:00:02Z"}"#,
            "\n",
            r#"{"phone_number":"+8613800138000","text":"Your unbind code is 222222, valid 5 minutes","sent_at":"2024-01-01T00:00:03Z"}"#,
            "\n",
            r#"{"phone_number":"+8613800138000","text":"#,
        );
        assert_eq!(
            newest_code(file, "+8613800138000").as_deref(),
            Some("222222")
        );
        // A bare 11-digit number, or one with spaces, is the same +86 number.
        assert_eq!(newest_code(file, "13800138000").as_deref(), Some("222222"));
        assert_eq!(
            newest_code(file, "+86 138 0013 8000").as_deref(),
            Some("222222")
        );
        assert_eq!(newest_code(file, "13900139000").as_deref(), Some("999999"));
        assert_eq!(newest_code(file, "13700137000"), None);
        assert_eq!(newest_code("", "13800138000"), None);
        assert_eq!(code_in_sms("Code is: 123456"), Some("123456".to_owned()));
        assert_eq!(code_in_sms("code is soon"), None);
    }

    #[tokio::test]
    async fn sms_file_ignores_codes_written_before_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sms.jsonl");
        let old = r#"{"phone_number":"+8613800138000","text":"code is 111111","sent_at":"x"}"#;
        std::fs::write(&path, format!("{old}\n")).unwrap();
        let offset = sms_file_len(&path).await;
        let new = r#"{"phone_number":"+8613800138000","text":"code is 333333","sent_at":"y"}"#;
        std::fs::write(&path, format!("{old}\n{new}\n")).unwrap();
        let code = wait_for_sms_code(&path, "13800138000", offset)
            .await
            .unwrap();
        assert_eq!(code, "333333");
    }

    #[tokio::test(start_paused = true)]
    async fn sms_file_gives_up_after_ten_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.jsonl");
        let err = wait_for_sms_code(&path, "13800138000", 0)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("within 10 s"), "{err}");
    }
}
