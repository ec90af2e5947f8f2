//! How the file-backed registry turns the gateway's `SendSms` (a template name and structured
//! params) into the text a holder reads, in the holder's language: Chinese or English built in,
//! any text replaceable from a templates file (`registry --templates FILE`), as a carrier's own
//! SMS platform would hold them.
//!
//! A template is text with `{param}` placeholders. The `unbind_outcome` message has one template
//! per `outcome` (`unbind_outcome.unbound`, `.partly_unbound`, `.not_unbound`). A param holding a
//! JSON array of names (`unbound_apps`) is written as a list in the language's way ("A、B" or
//! "A, B"), at most five names and then "and N more".
//!
//! The templates file:
//! ```toml
//! [zh]
//! verification_code = "【号码解绑】验证码{code}，{minutes}分钟内有效。"
//! [en]
//! "unbind_outcome.unbound" = "Unbound: {unbound_apps}."
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The languages the registry writes SMS in.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Simplified Chinese.
    Zh,
    /// English, the default (a subscriber file says `language = "zh"` for Chinese).
    #[default]
    En,
}

impl Language {
    /// "zh" or "en".
    pub fn code(self) -> &'static str {
        match self {
            Language::Zh => "zh",
            Language::En => "en",
        }
    }

    fn list(self, names: &[String]) -> String {
        const SHOWN: usize = 5;
        let shown = &names[..names.len().min(SHOWN)];
        let more = names.len() - shown.len();
        match self {
            Language::Zh => {
                let mut text = shown.join("、");
                if more > 0 {
                    text.push_str(&format!("等{}个应用", names.len()));
                }
                text
            }
            Language::En => {
                let mut text = shown.join(", ");
                if more > 0 {
                    text.push_str(&format!(" and {more} more"));
                }
                text
            }
        }
    }
}

/// The built-in templates: (language, template, text).
const BUILT_IN: &[(Language, &str, &str)] = &[
    (
        Language::Zh,
        "verification_code",
        "【号码解绑】您的验证码是{code}，{minutes}分钟内有效。请勿告诉他人。",
    ),
    (
        Language::En,
        "verification_code",
        "[unbind] Your verification code is {code}. It expires in {minutes} minutes. Never share it.",
    ),
    (
        Language::Zh,
        "lookup_summary",
        "【号码解绑】您的号码绑定了{app_count}个应用中的{account_count}个账号，其中{previous_count}个是在您使用该号码之前绑定的。{missing_app_count}个应用未能查询，请稍后再试。",
    ),
    (Language::En, "lookup_summary", "[unbind] {summary}"),
    (
        Language::Zh,
        "unbind_outcome.unbound",
        "【号码解绑】您的号码已与{unbound_apps}的{unbound_count}个账号解除绑定。",
    ),
    (
        Language::En,
        "unbind_outcome.unbound",
        "[unbind] Your number was unbound from {unbound_count} accounts at {unbound_apps}.",
    ),
    (
        Language::Zh,
        "unbind_outcome.partly_unbound",
        "【号码解绑】您的号码已与{unbound_apps}的{unbound_count}个账号解除绑定；{not_unbound_apps}的{not_unbound_count}个账号未能解绑，请联系其客服。",
    ),
    (
        Language::En,
        "unbind_outcome.partly_unbound",
        "[unbind] Your number was unbound from {unbound_count} accounts at {unbound_apps}; {not_unbound_count} at {not_unbound_apps} could not be: contact their customer service.",
    ),
    (
        Language::Zh,
        "unbind_outcome.not_unbound",
        "【号码解绑】{not_unbound_apps}的{not_unbound_count}个账号未能解绑，请联系其客服。",
    ),
    (
        Language::En,
        "unbind_outcome.not_unbound",
        "[unbind] {not_unbound_count} accounts at {not_unbound_apps} could not be unbound: contact their customer service.",
    ),
];

/// The templates the registry renders with: the built-in ones, with any from a file over them.
#[derive(Clone, Debug)]
pub struct SmsTemplates {
    by_key: HashMap<(Language, String), String>,
}

impl Default for SmsTemplates {
    fn default() -> Self {
        Self {
            by_key: BUILT_IN
                .iter()
                .map(|(language, name, text)| ((*language, (*name).to_owned()), (*text).to_owned()))
                .collect(),
        }
    }
}

/// Why an SMS could not be written; names the template or param, never a value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("unknown SMS template `{0}`")]
    UnknownTemplate(String),
    #[error("SMS template `{template}` needs the parameter `{param}`")]
    MissingParam { template: String, param: String },
}

impl SmsTemplates {
    /// The built-in templates with those of `path` over them.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the SMS templates {}", path.display()))?;
        let file: BTreeMap<Language, BTreeMap<String, String>> = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}", e.message().trim_end()))
            .with_context(|| format!("in the SMS templates {}", path.display()))?;
        let mut templates = Self::default();
        for (language, entries) in file {
            for (name, text) in entries {
                let known = BUILT_IN.iter().any(|(_, n, _)| *n == name);
                if !known {
                    bail!(
                        "in the SMS templates {}: [{}] `{name}` is not a template the gateway \
                         sends (verification_code, lookup_summary, unbind_outcome.unbound, \
                         unbind_outcome.partly_unbound, unbind_outcome.not_unbound)",
                        path.display(),
                        language.code()
                    );
                }
                templates.by_key.insert((language, name), text);
            }
        }
        Ok(templates)
    }

    /// The text of `template` with `params`, in `language`.
    pub fn render(
        &self,
        language: Language,
        template: &str,
        params: &HashMap<String, String>,
    ) -> Result<String, RenderError> {
        let key = if template == "unbind_outcome" {
            let outcome = params
                .get("outcome")
                .ok_or_else(|| RenderError::MissingParam {
                    template: template.to_owned(),
                    param: "outcome".to_owned(),
                })?;
            format!("unbind_outcome.{outcome}")
        } else {
            template.to_owned()
        };
        let text = self
            .by_key
            .get(&(language, key.clone()))
            .ok_or_else(|| RenderError::UnknownTemplate(truncate(&key, 64)))?;
        fill(text, &key, language, params)
    }
}

/// Replaces each `{param}` of `text`.
fn fill(
    text: &str,
    template: &str,
    language: Language,
    params: &HashMap<String, String>,
) -> Result<String, RenderError> {
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return Ok(out);
        };
        let name = &after[..close];
        let value = params.get(name).ok_or_else(|| RenderError::MissingParam {
            template: template.to_owned(),
            param: truncate(name, 64),
        })?;
        match serde_json::from_str::<Vec<String>>(value) {
            Ok(names) if value.starts_with('[') => out.push_str(&language.list(&names)),
            _ => out.push_str(value),
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn outcome_sms_in_both_languages_from_structured_params() {
        let t = SmsTemplates::default();
        let p = params(&[
            ("outcome", "unbound"),
            ("unbound_count", "3"),
            ("unbound_apps", r#"["Sim Bank 4","Sim Bank 11"]"#),
        ]);
        assert_eq!(
            t.render(Language::En, "unbind_outcome", &p).unwrap(),
            "[unbind] Your number was unbound from 3 accounts at Sim Bank 4, Sim Bank 11."
        );
        assert_eq!(
            t.render(Language::Zh, "unbind_outcome", &p).unwrap(),
            "【号码解绑】您的号码已与Sim Bank 4、Sim Bank 11的3个账号解除绑定。"
        );
        let many: Vec<String> = (1..=7).map(|i| format!("App {i}")).collect();
        let many = params(&[
            ("outcome", "unbound"),
            ("unbound_count", "7"),
            ("unbound_apps", &serde_json::to_string(&many).unwrap()),
        ]);
        assert!(
            t.render(Language::En, "unbind_outcome", &many)
                .unwrap()
                .ends_with("App 5 and 2 more.")
        );
    }

    #[test]
    fn a_missing_param_or_template_is_named_never_a_value() {
        let t = SmsTemplates::default();
        assert_eq!(
            t.render(
                Language::En,
                "verification_code",
                &params(&[("code", "123456")])
            ),
            Err(RenderError::MissingParam {
                template: "verification_code".into(),
                param: "minutes".into()
            })
        );
        assert!(matches!(
            t.render(Language::En, "promotion", &HashMap::new()),
            Err(RenderError::UnknownTemplate(_))
        ));
    }

    #[test]
    fn a_file_replaces_templates_and_refuses_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("templates.toml");
        std::fs::write(&path, "[en]\nverification_code = \"Code {code}\"\n").unwrap();
        let t = SmsTemplates::load(&path).unwrap();
        assert_eq!(
            t.render(
                Language::En,
                "verification_code",
                &params(&[("code", "1"), ("minutes", "5")])
            )
            .unwrap(),
            "Code 1"
        );
        std::fs::write(&path, "[en]\npromotion = \"Buy\"\n").unwrap();
        let err = SmsTemplates::load(&path).unwrap_err();
        assert!(format!("{err:#}").contains("`promotion` is not a template"));
    }
}
