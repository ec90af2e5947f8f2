// What the `keyring` fuzz target checks on each input; included by fuzz/fuzz_targets/keyring.rs
// and tests/fuzz_seeds.rs, so the fuzzer and the seed test check the same thing.

use unbind_gateway::security::{KeyPurpose, KeySources, Keys, SealFor};

/// `Keys::load` on the input as a keys file never panics; a refusal never quotes a `secret`
/// value of the input; a keyring it accepts holds exactly one active key per purpose, and each
/// sealing purpose's active key seals a value that opens again, bound to its row.
///
/// Returns whether the parser accepted the input, so the seed test can tell that its seeds
/// still reach the checks behind the parser.
pub fn check(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data).into_owned();
    let secrets: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("secret"))
        .filter_map(|rest| rest.split('"').nth(1))
        .filter(|s| s.len() >= 8)
        .map(str::to_owned)
        .collect();
    let keys = match Keys::load(&KeySources {
        files: vec![("fuzz".into(), text)],
        signing_secret: None,
    }) {
        Ok(keys) => keys,
        Err(e) => {
            let message = format!("{e:#}");
            for secret in &secrets {
                assert!(!message.contains(secret.as_str()), "{message}");
            }
            return false;
        }
    };
    let listed = keys.list();
    for purpose in KeyPurpose::ALL {
        assert_eq!(
            listed
                .iter()
                .filter(|k| k.purpose == purpose && k.active)
                .count(),
            1,
            "{purpose}"
        );
    }
    for for_ in [
        SealFor::Session,
        SealFor::AccountRef,
        SealFor::Number("row"),
        SealFor::AccountId("row"),
    ] {
        let sealed = keys.seal(for_, b"value");
        assert_eq!(keys.open(for_, &sealed).as_deref(), Some(&b"value"[..]));
        assert!(keys.open(SealFor::Number("another row"), &sealed).is_none());
    }
    true
}
