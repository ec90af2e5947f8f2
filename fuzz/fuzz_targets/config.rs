//! Fuzzes `Config::parse`: errors are expected, panics are bugs. Each fuzz case is tried twice:
//! as a whole config file, and split on NUL into the free-form values (listen address, endpoints,
//! durations, tenant name, app id) of an otherwise valid config, to reach the validation behind the TOML
//! parser. Configs that name a `signing_secret_file` are skipped: parsing reads that file, and a
//! path such as `/dev/zero` would hang the fuzzer.

#![no_main]

use libfuzzer_sys::fuzz_target;
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

fn names_a_secret_file(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("signing_secret_file"))
}

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    if !names_a_secret_file(&input) {
        let _ = Config::parse(&input);
    }

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
    let _ = Config::parse(&text);
});
