// What the `config` fuzz target checks on each input; included by fuzz/fuzz_targets/config.rs
// and tests/fuzz_seeds.rs, so the fuzzer and the seed test check the same thing.

use unbind_gateway::config::Config;

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parsing a config that names a `signing_secret_file` or a `[keys]` file or directory reads
/// them, and a path such as `/dev/zero` would hang the fuzzer: such inputs are not parsed whole.
fn names_a_secret_file(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("signing_secret_file") || t.contains_key("keys"))
}

/// `Config::parse` never panics (errors are expected), on the input as a whole config file and
/// on the input split on NUL into the free-form values (listen address, endpoints, durations,
/// tenant name, app id) of an otherwise valid config, to reach the validation behind the TOML
/// parser.
///
/// Returns whether the parser accepted the input, so the seed test can tell that its seeds
/// still reach the checks behind the parser.
pub fn check(data: &[u8]) -> bool {
    let input = String::from_utf8_lossy(data);
    let whole = !names_a_secret_file(&input) && Config::parse(&input).is_ok();

    let mut values = input.split('\0');
    let mut next = |default: &str| toml_string(values.next().unwrap_or(default));
    let text = format!(
        "listen = {}\n\
         development = true\n\
         signing_secret = \"0123456789abcdef0123456789abcdef\"\n\
         [store]\nurl = \"sqlite://unbind.db\"\n\
         [registry]\nendpoint = {}\ntimeout = {}\n\
         [cache]\nttl = {}\n\
         [[tenants]]\nname = {}\nrole = \"portal\"\n\
         [[apps]]\nid = {}\nname = \"Sim Pay\"\nendpoint = {}\ntimeout = {}\n",
        next("127.0.0.1:50051"),
        next("http://127.0.0.1:50052"),
        next("2s"),
        next("10m"),
        next("portal-1"),
        next("app-001"),
        next("http://127.0.0.1:60000"),
        next("800ms"),
    );
    Config::parse(&text).is_ok() || whole
}
