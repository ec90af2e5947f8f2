//! The deterministic data of the simulated apps: their catalog entries (id, name, category,
//! customer service number) and the accounts each app holds for a phone number.
//!
//! Everything here is a pure function of its inputs (and the seed), so the demo, the tests and the
//! benchmarks can predict what every simulated app will answer without asking it.

use sha2::{Digest, Sha256};

use crate::clock::timestamp_from_ms;
use crate::proto::AdapterAccount;

/// The categories the simulated apps cycle through, each with the stem of its apps' names.
const CATEGORIES: [(&str, &str); 10] = [
    ("payments", "Sim Pay"),
    ("social", "Sim Chat"),
    ("e-commerce", "Sim Mall"),
    ("delivery", "Sim Eats"),
    ("ride-hailing", "Sim Ride"),
    ("banking", "Sim Bank"),
    ("games", "Sim Games"),
    ("video", "Sim Video"),
    ("travel", "Sim Trips"),
    ("government", "Sim Gov Services"),
];

/// Syllables the account nicknames are made of; only the first and last letter of a nickname ever
/// leave the simulator (as the masked `display_hint`).
const SYLLABLES: [&str; 16] = [
    "xiao", "ming", "hua", "li", "wei", "fang", "jun", "ying", "lei", "hong", "tian", "yu", "chen",
    "zhi", "bo", "lan",
];

/// The earliest binding date handed out: 2012-01-01T00:00:00Z.
const BOUND_FROM: i64 = 1_325_376_000;
/// The latest binding date handed out (exclusive): 2026-06-01T00:00:00Z.
const BOUND_UNTIL: i64 = 1_780_272_000;

/// The catalog entry of one simulated app, without its endpoint (that depends on the port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CatalogEntry {
    pub id: String,
    pub name: String,
    pub category: String,
    pub customer_service: String,
}

/// The id of the app at 1-based position `number`: `app-001` … `app-999`, then `app-1000` ….
///
/// The width grows only when the number needs it, so an app keeps its id (and therefore its
/// accounts) whatever the total number of simulated apps.
pub(crate) fn app_id(number: usize) -> String {
    format!("app-{number:03}")
}

/// The catalog entry of the app at 1-based position `number`.
pub(crate) fn catalog_entry(number: usize) -> CatalogEntry {
    let slot = number.saturating_sub(1);
    let (category, stem) = CATEGORIES[slot % CATEGORIES.len()];
    // The n-th app of a category is "<stem> n", so names stay unique and short.
    let nth = slot / CATEGORIES.len() + 1;
    CatalogEntry {
        id: app_id(number),
        name: format!("{stem} {nth}"),
        category: category.to_owned(),
        customer_service: format!("+86 400-800-{number:04}"),
    }
}

/// Deterministic accounts of `phone_number` (E.164) at app `app_id`, given `seed`.
///
/// Derived from SHA-256 of the seed, the app id and the number: about 45% of apps hold no account
/// for a number, 35% one, 15% two and 5% three. Binding dates are spread uniformly between
/// 2012-01-01 and 2026-06-01, so a holder since, say, 2024 sees a mix of their own and previous
/// holders' accounts; about 90% of accounts can be unbound through the adapter.
pub fn accounts_for(seed: u64, app_id: &str, phone_number: &str) -> Vec<AdapterAccount> {
    let head = digest(seed, app_id, phone_number, b"count", 0);
    let count = match u16::from_be_bytes([head[0], head[1]]) % 100 {
        0..45 => 0,
        45..80 => 1,
        80..95 => 2,
        _ => 3,
    };
    (0..count)
        .map(|index| account(seed, app_id, phone_number, index))
        .collect()
}

/// The `index`-th account of a number at an app.
fn account(seed: u64, app_id: &str, phone_number: &str, index: u32) -> AdapterAccount {
    let h = digest(seed, app_id, phone_number, b"account", index);
    let account_id = format!("acct-{}", hex(&h[0..8]));

    let first = SYLLABLES[usize::from(h[8]) % SYLLABLES.len()];
    let second = SYLLABLES[usize::from(h[9]) % SYLLABLES.len()];
    let nickname = format!("{first}{second}");
    let display_hint = mask_nickname(&nickname);

    let span = u64::try_from(BOUND_UNTIL - BOUND_FROM).unwrap_or(1).max(1);
    let offset =
        u64::from_be_bytes([h[10], h[11], h[12], h[13], h[14], h[15], h[16], h[17]]) % span;
    let seconds = BOUND_FROM + i64::try_from(offset).unwrap_or(0);
    // Whole seconds only: a vendor's database rarely keeps more, and it keeps comparisons simple.
    let bound_at = Some(timestamp_from_ms(seconds * 1000));

    let unbind_supported = u16::from_be_bytes([h[18], h[19]]) % 100 < 90;

    AdapterAccount {
        account_id,
        display_hint,
        bound_at,
        unbind_supported,
    }
}

/// "xiaoming" → "x***g": enough for a person to recognise, never the whole name.
fn mask_nickname(nickname: &str) -> String {
    let mut chars = nickname.chars();
    match (chars.next(), chars.next_back()) {
        (Some(first), Some(last)) => format!("{first}***{last}"),
        (Some(first), None) => format!("{first}***"),
        _ => "***".to_owned(),
    }
}

/// SHA-256 over the inputs, each length-prefixed so no two different inputs hash the same bytes.
fn digest(seed: u64, app_id: &str, phone_number: &str, purpose: &[u8], index: u32) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"unbind-simulator/v1");
    hasher.update(seed.to_be_bytes());
    for part in [app_id.as_bytes(), phone_number.as_bytes(), purpose] {
        hasher.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        hasher.update(part);
    }
    hasher.update(index.to_be_bytes());
    hasher.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            // Writing to a String cannot fail.
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_are_zero_padded_and_grow_past_999() {
        assert_eq!(app_id(1), "app-001");
        assert_eq!(app_id(42), "app-042");
        assert_eq!(app_id(999), "app-999");
        assert_eq!(app_id(1000), "app-1000");
    }

    #[test]
    fn catalog_cycles_categories_and_numbers_names() {
        let first = catalog_entry(1);
        assert_eq!(first.id, "app-001");
        assert_eq!(first.name, "Sim Pay 1");
        assert_eq!(first.category, "payments");
        assert_eq!(first.customer_service, "+86 400-800-0001");
        let eleventh = catalog_entry(11);
        assert_eq!(eleventh.name, "Sim Pay 2");
        assert_eq!(eleventh.category, "payments");
        assert_eq!(catalog_entry(10).category, "government");
        assert_eq!(catalog_entry(2).category, "social");
    }

    #[test]
    fn accounts_are_deterministic() {
        let a = accounts_for(42, "app-007", "+8613800138000");
        let b = accounts_for(42, "app-007", "+8613800138000");
        assert_eq!(a, b);
        // Some app among the first few has accounts for this number, and a different seed changes
        // the picture somewhere.
        let mut any = false;
        let mut differs = false;
        for n in 1..=50 {
            let id = app_id(n);
            let x = accounts_for(42, &id, "+8613800138000");
            any |= !x.is_empty();
            differs |= x != accounts_for(43, &id, "+8613800138000");
        }
        assert!(any);
        assert!(differs);
    }

    #[test]
    fn accounts_have_plausible_fields() {
        for n in 1..=200 {
            for account in accounts_for(7, &app_id(n), "+8613900139000") {
                assert!(account.account_id.starts_with("acct-"));
                assert_eq!(account.account_id.len(), "acct-".len() + 16);
                let hint: Vec<char> = account.display_hint.chars().collect();
                assert_eq!(hint.len(), 5, "{}", account.display_hint);
                assert_eq!(hint[1..4], ['*', '*', '*']);
                let bound = account
                    .bound_at
                    .expect("simulated accounts always carry a date");
                assert!((BOUND_FROM..BOUND_UNTIL).contains(&bound.seconds));
            }
        }
    }

    #[test]
    fn account_counts_follow_the_intended_distribution() {
        use chrono::{TimeZone, Utc};

        let mut buckets = [0usize; 4];
        let mut supported = 0usize;
        let mut accounts = 0usize;
        let mut before_2024 = 0usize;
        let cut = Utc
            .with_ymd_and_hms(2024, 3, 1, 0, 0, 0)
            .single()
            .map(|t| t.timestamp())
            .unwrap_or_default();
        let trials = 4000;
        for i in 0..trials {
            let phone = format!("+86138{:08}", i * 7919);
            let found = accounts_for(42, &app_id(i % 300 + 1), &phone);
            buckets[found.len()] += 1;
            for account in &found {
                accounts += 1;
                supported += usize::from(account.unbind_supported);
                before_2024 +=
                    usize::from(account.bound_at.map(|t| t.seconds < cut).unwrap_or(false));
            }
        }
        let share = |n: usize| n as f64 / trials as f64;
        assert!((share(buckets[0]) - 0.45).abs() < 0.04, "{buckets:?}");
        assert!((share(buckets[1]) - 0.35).abs() < 0.04, "{buckets:?}");
        assert!((share(buckets[2]) - 0.15).abs() < 0.03, "{buckets:?}");
        assert!((share(buckets[3]) - 0.05).abs() < 0.02, "{buckets:?}");
        let supported_share = supported as f64 / accounts as f64;
        assert!((supported_share - 0.9).abs() < 0.04, "{supported_share}");
        // 2012-01 .. 2024-03 is about 85% of the 2012-01 .. 2026-06 span.
        let before_share = before_2024 as f64 / accounts as f64;
        assert!((before_share - 0.85).abs() < 0.05, "{before_share}");
    }

    #[test]
    fn nicknames_are_masked() {
        assert_eq!(mask_nickname("zhangg"), "z***g");
        assert_eq!(mask_nickname("a"), "a***");
        assert_eq!(mask_nickname(""), "***");
    }
}
