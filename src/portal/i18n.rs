//! Every word the portal shows comes from a message file, one per language
//! (`locales/en.toml`, `locales/zh.toml`, compiled in): the templates and the code name messages
//! by key, never by text. This module loads them, picks the visitor's language (a cookie set by
//! the switch on every page, else `Accept-Language`), fills in `{name}` placeholders, and writes
//! dates the way each language does, in the carrier's time zone.

use std::collections::HashMap;
use std::sync::OnceLock;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A language the portal speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locale {
    En,
    Zh,
}

impl Locale {
    /// Both, in the order the switch offers them.
    pub const ALL: [Locale; 2] = [Locale::En, Locale::Zh];

    /// The BCP 47 tag of the page (`<html lang>`), also the cookie's value.
    pub fn tag(self) -> &'static str {
        match self {
            Locale::En => "en",
            Locale::Zh => "zh-CN",
        }
    }

    /// From the cookie's value or a form field: "en", "zh", "zh-CN" (any case).
    pub fn from_tag(tag: &str) -> Option<Locale> {
        let primary = tag.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        match primary.as_str() {
            "en" => Some(Locale::En),
            "zh" => Some(Locale::Zh),
            _ => None,
        }
    }

    /// The other language (what the switch offers).
    pub fn other(self) -> Locale {
        match self {
            Locale::En => Locale::Zh,
            Locale::Zh => Locale::En,
        }
    }

    /// The language an `Accept-Language` header prefers among ours (highest `q`, the first on a
    /// tie); English when it names neither.
    pub fn negotiate(accept_language: Option<&str>) -> Locale {
        let Some(header) = accept_language else {
            return Locale::En;
        };
        let mut best: Option<(f32, Locale)> = None;
        for item in header.split(',') {
            let mut parts = item.split(';');
            let Some(locale) = parts.next().and_then(Locale::from_tag) else {
                continue;
            };
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, locale));
            }
        }
        best.map(|(_, l)| l).unwrap_or(Locale::En)
    }

    /// This language's messages.
    pub fn messages(self) -> &'static Messages {
        static EN: OnceLock<Messages> = OnceLock::new();
        static ZH: OnceLock<Messages> = OnceLock::new();
        match self {
            Locale::En => EN.get_or_init(|| Messages::parse(include_str!("locales/en.toml"))),
            Locale::Zh => ZH.get_or_init(|| Messages::parse(include_str!("locales/zh.toml"))),
        }
    }
}

/// One language's messages, by "section.key".
#[derive(Debug, Default)]
pub struct Messages {
    map: HashMap<String, String>,
}

impl Messages {
    /// Parses a message file. The files are compiled in and checked by the unit tests, so a
    /// broken one is a build-time mistake: it loads as empty (every key then shows as itself)
    /// rather than taking the portal down.
    fn parse(source: &str) -> Messages {
        let sections: HashMap<String, HashMap<String, String>> =
            toml::from_str(source).unwrap_or_default();
        let map = sections
            .into_iter()
            .flat_map(|(section, entries)| {
                entries
                    .into_iter()
                    .map(move |(key, text)| (format!("{section}.{key}"), text))
            })
            .collect();
        Messages { map }
    }

    /// The message `key` with its `{name}` placeholders filled from `args`; the key itself when
    /// there is no such message (a test checks that every key used exists).
    pub fn text(&self, key: &str, args: &[(&str, String)]) -> String {
        let Some(template) = self.map.get(key) else {
            return key.to_owned();
        };
        fill(template, args)
    }

    /// `key_one` or `key_other` by `count` (the `{count}` placeholder filled too).
    pub fn plural(&self, key: &str, count: u64, args: &[(&str, String)]) -> String {
        let one = format!("{key}_one");
        let chosen = if count == 1 && self.map.contains_key(&one) {
            one
        } else {
            format!("{key}_other")
        };
        let mut all: Vec<(&str, String)> = vec![("count", count.to_string())];
        all.extend(args.iter().cloned());
        self.text(&chosen, &all)
    }

    /// Whether the message exists.
    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Every key (for the tests).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// A day, "1 March 2024" / "2024年3月1日". A time exactly at midnight UTC is a day the
    /// gateway gives without a time (a binding date, the holder's start): it is written as that
    /// day, wherever the carrier is; any other time is written as its day in `tz`.
    pub fn day(&self, at: DateTime<Utc>, tz: Tz) -> String {
        let (y, m, d) = if at.num_seconds_from_midnight() == 0 {
            (at.year(), at.month(), at.day())
        } else {
            let local = tz.from_utc_datetime(&at.naive_utc());
            (local.year(), local.month(), local.day())
        };
        self.text(
            "date.day",
            &[
                ("day", d.to_string()),
                ("month", self.text(&format!("date.month_{m}"), &[])),
                ("year", y.to_string()),
            ],
        )
    }

    /// A day and a time in `tz`, "8 December 2026, 14:05" / "2026年12月8日 14:05".
    pub fn time(&self, at: DateTime<Utc>, tz: Tz) -> String {
        let local = tz.from_utc_datetime(&at.naive_utc());
        self.text(
            "date.time",
            &[
                ("day", local.day().to_string()),
                (
                    "month",
                    self.text(&format!("date.month_{}", local.month()), &[]),
                ),
                ("year", local.year().to_string()),
                ("hour", format!("{:02}", local.hour())),
                ("minute", format!("{:02}", local.minute())),
            ],
        )
    }

    /// A time of day in `tz`, "14:05".
    pub fn clock(&self, at: DateTime<Utc>, tz: Tz) -> String {
        let local = tz.from_utc_datetime(&at.naive_utc());
        self.text(
            "date.clock",
            &[
                ("hour", format!("{:02}", local.hour())),
                ("minute", format!("{:02}", local.minute())),
            ],
        )
    }
}

/// Replaces each `{name}` in `template` by its value in `args`; unknown names stay as they are.
fn fill(template: &str, args: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                match args.iter().find(|(n, _)| *n == name) {
                    Some((_, value)) => out.push_str(value),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// A protobuf timestamp as a UTC time (`None` when absent or out of range).
pub fn to_utc(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let ts = ts?;
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_languages_have_the_same_keys_and_every_value() {
        let en: std::collections::BTreeSet<&str> = Locale::En.messages().keys().collect();
        let zh: std::collections::BTreeSet<&str> = Locale::Zh.messages().keys().collect();
        assert!(en.len() > 100, "en.toml parsed: {}", en.len());
        assert_eq!(
            en.symmetric_difference(&zh).collect::<Vec<_>>(),
            Vec::<&&str>::new()
        );
    }

    /// The `{name}`s of a message.
    fn placeholders(text: &str) -> std::collections::BTreeSet<&str> {
        text.split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
            .collect()
    }

    #[test]
    fn both_languages_fill_in_the_same_values() {
        let (en, zh) = (Locale::En.messages(), Locale::Zh.messages());
        for key in en.keys() {
            let (a, b) = (&en.map[key], &zh.map[key]);
            assert_eq!(placeholders(a), placeholders(b), "{key}: {a:?} / {b:?}");
        }
    }

    #[test]
    fn accept_language_picks_the_preferred_of_ours() {
        assert_eq!(Locale::negotiate(None), Locale::En);
        assert_eq!(
            Locale::negotiate(Some("zh-CN,zh;q=0.9,en;q=0.8")),
            Locale::Zh
        );
        assert_eq!(
            Locale::negotiate(Some("en-GB,en;q=0.9,zh;q=0.8")),
            Locale::En
        );
        assert_eq!(Locale::negotiate(Some("fr, zh-TW;q=0.5")), Locale::Zh);
        assert_eq!(Locale::negotiate(Some("en;q=0.2, zh;q=0.7")), Locale::Zh);
        assert_eq!(Locale::negotiate(Some("zh;q=0, de")), Locale::En);
        assert_eq!(Locale::negotiate(Some(";;,q=,")), Locale::En);
        assert_eq!(Locale::from_tag("ZH_cn"), Some(Locale::Zh));
    }

    #[test]
    fn dates_in_each_language_and_the_carriers_zone() {
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        let since = Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap();
        assert_eq!(Locale::En.messages().day(since, tz), "1 March 2024");
        assert_eq!(Locale::Zh.messages().day(since, tz), "2024年3月1日");
        // A day without a time stays that day even where it is still the day before.
        let west: Tz = "America/New_York".parse().unwrap();
        assert_eq!(Locale::En.messages().day(since, west), "1 March 2024");
        // 20:30 UTC is the next morning in Shanghai.
        let due = Utc.with_ymd_and_hms(2026, 12, 7, 20, 30, 0).unwrap();
        assert_eq!(
            Locale::En.messages().time(due, tz),
            "8 December 2026, 04:30"
        );
        assert_eq!(Locale::Zh.messages().time(due, tz), "2026年12月8日 04:30");
        assert_eq!(Locale::En.messages().day(due, tz), "8 December 2026");
        assert_eq!(Locale::Zh.messages().clock(due, tz), "04:30");
    }

    #[test]
    fn placeholders_and_plurals() {
        let en = Locale::En.messages();
        assert_eq!(
            en.plural("accounts.empty_count", 1, &[]),
            "1 app answered that it has no account on this number."
        );
        assert_eq!(
            en.plural("accounts.empty_count", 3, &[]),
            "3 apps answered that they have no account on this number."
        );
        assert_eq!(fill("a {x} b {y} {", &[("x", "1".into())]), "a 1 b {y} {");
        assert_eq!(en.text("no.such.key", &[]), "no.such.key");
    }
}
