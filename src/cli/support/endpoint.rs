//! The service a command is pointed at: `--endpoint` and the TLS flags as a tonic [`Endpoint`],
//! for `query` (the gateway) and `check-adapter` (an adapter) alike.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::Endpoint;

use crate::cli::tls_args::ClientTlsArgs;

/// Accepts "host:port" as shorthand for "http://host:port".
pub fn normalise_endpoint(endpoint: &str) -> String {
    let endpoint = endpoint.trim();
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

/// The endpoint at `url` with the TLS the flags give (https:// needs `--ca`; `--cert` and
/// `--key` add a client certificate), giving up connecting after `connect_timeout`.
pub fn endpoint_with_tls(
    url: &str,
    tls: &ClientTlsArgs,
    connect_timeout: Duration,
) -> anyhow::Result<Endpoint> {
    let tls = tls.config(url)?;
    let mut target = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("--endpoint {url:?} is not a valid URL"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        target = target
            .tls_config(tls)
            .context("cannot use the TLS settings given with --ca / --cert / --key")?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            normalise_endpoint("127.0.0.1:50051"),
            "http://127.0.0.1:50051"
        );
        assert_eq!(normalise_endpoint(" http://gw:1 "), "http://gw:1");
        assert_eq!(normalise_endpoint("https://gw:1"), "https://gw:1");
    }
}
