//! The pages' templates (minijinja, compiled in from `templates/`, HTML auto-escaping on for
//! every one) and the two functions they write words with: `t(key, name=value, ...)` and
//! `tn(key, count, ...)` (a count picks `key_one` or `key_other`), both reading the page's
//! `lang`. Templates hold markup only; every word is a message key (a unit test checks that no
//! text is left between the tags, and that every key a template names exists in both
//! languages).

use minijinja::value::{Kwargs, Value};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};

use super::i18n::{Locale, Messages};

/// Every template, by name.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("templates/layout.html")),
    ("start.html", include_str!("templates/start.html")),
    ("code.html", include_str!("templates/code.html")),
    ("accounts.html", include_str!("templates/accounts.html")),
    (
        "accounts_live.html",
        include_str!("templates/accounts_live.html"),
    ),
    (
        "accounts_groups.html",
        include_str!("templates/accounts_groups.html"),
    ),
    ("confirm.html", include_str!("templates/confirm.html")),
    ("tickets.html", include_str!("templates/tickets.html")),
    (
        "tickets_live.html",
        include_str!("templates/tickets_live.html"),
    ),
    ("message.html", include_str!("templates/message.html")),
];

/// The compiled templates.
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Compiles every template; an error names the template (a build-time mistake, caught by
    /// the unit tests).
    pub fn new() -> Result<Templates, Error> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)?;
        }
        env.add_function("t", translate);
        env.add_function("tn", translate_count);
        Ok(Templates { env })
    }

    /// Renders `name` with `ctx` (which must hold `lang`).
    pub fn render(&self, name: &str, ctx: Value) -> Result<String, Error> {
        self.env.get_template(name)?.render(ctx)
    }
}

/// The messages of the page being rendered (its `lang`).
fn messages(state: &State) -> &'static Messages {
    state
        .lookup("lang")
        .and_then(|v| v.as_str().and_then(Locale::from_tag))
        .unwrap_or(Locale::En)
        .messages()
}

/// The keyword arguments as placeholder values.
fn args(kwargs: &Kwargs) -> Result<Vec<(String, String)>, Error> {
    kwargs
        .args()
        .map(|name| Ok((name.to_owned(), kwargs.get::<Value>(name)?.to_string())))
        .collect()
}

/// `t("section.key", name=value)`.
fn translate(state: &State, key: &str, kwargs: Kwargs) -> Result<String, Error> {
    let m = messages(state);
    if !m.has(key) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("no message {key:?}"),
        ));
    }
    let args = args(&kwargs)?;
    let borrowed: Vec<(&str, String)> = args.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    Ok(m.text(key, &borrowed))
}

/// `tn("section.key", count, name=value)`.
fn translate_count(state: &State, key: &str, count: u64, kwargs: Kwargs) -> Result<String, Error> {
    let args = args(&kwargs)?;
    let borrowed: Vec<(&str, String)> = args.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    Ok(messages(state).plural(key, count, &borrowed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of a template once its tags and template code are taken out: what a person
    /// would read that did not come from a message file.
    fn bare_text(source: &str) -> String {
        let mut text = source.to_owned();
        for (open, close) in [("{#", "#}"), ("{{", "}}"), ("{%", "%}"), ("<", ">")] {
            let mut out = String::new();
            let mut rest = text.as_str();
            while let Some(start) = rest.find(open) {
                out.push_str(&rest[..start]);
                match rest[start..].find(close) {
                    Some(end) => rest = &rest[start + end + close.len()..],
                    None => rest = "",
                }
            }
            out.push_str(rest);
            text = out;
        }
        text
    }

    #[test]
    fn templates_hold_no_words_of_their_own() {
        for (name, source) in TEMPLATES {
            let bare = bare_text(source);
            let words: String = bare.chars().filter(|c| c.is_alphabetic()).collect();
            assert!(words.is_empty(), "{name} has text of its own: {bare:?}");
        }
    }

    #[test]
    fn every_key_a_template_names_exists_in_both_languages() {
        let mut seen = 0;
        for (name, source) in TEMPLATES {
            for quote in ['"', '\''] {
                for call in [format!("t({quote}"), format!("tn({quote}")] {
                    for piece in source.split(call.as_str()).skip(1) {
                        let key = piece.split(quote).next().unwrap_or_default();
                        seen += 1;
                        for locale in Locale::ALL {
                            let m = locale.messages();
                            assert!(
                                m.has(key) || m.has(&format!("{key}_other")),
                                "{name}: {key} missing in {locale:?}"
                            );
                        }
                    }
                }
            }
        }
        assert!(seen > 50, "{seen} keys seen");
    }

    #[test]
    fn templates_compile_and_escape() {
        let templates = Templates::new().unwrap();
        let html = templates
            .render(
                "message.html",
                minijinja::context! {
                    lang => "zh-CN",
                    title_key => "error.title",
                    message => "<script>x</script>",
                    csrf => "tok",
                    path => "/",
                },
            )
            .unwrap();
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(html.contains("出了点问题"), "{html}");
        assert!(html.contains("lang=\"zh-CN\""), "{html}");
    }
}
