//! What a gRPC server says it serves, asked by server reflection (`grpc.reflection.v1`), for an
//! endpoint that answered UNIMPLEMENTED to `FindAccounts`: whether it serves
//! `unbind.v1.AppAdapter` at all (then it is not the adapter: a wrong port, the gateway's own
//! address), and what it serves instead, to name in the one line the person gets.

use std::time::Duration;

use tonic::Request;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// The service every adapter serves.
pub(super) const APP_ADAPTER: &str = "unbind.v1.AppAdapter";

/// At most this many services are named.
const MAX_NAMED: usize = 8;

/// The services the server lists by reflection, in its order; `None` when it does not answer
/// reflection (many servers do not) within `timeout`.
pub(super) async fn served_services(channel: Channel, timeout: Duration) -> Option<Vec<String>> {
    let list = async {
        let mut client = ServerReflectionClient::new(channel);
        let mut request = Request::new(tokio_stream::once(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }));
        request.set_timeout(timeout);
        let mut answers = client
            .server_reflection_info(request)
            .await
            .ok()?
            .into_inner();
        match answers.message().await.ok()??.message_response? {
            MessageResponse::ListServicesResponse(list) => {
                Some(list.service.into_iter().map(|s| s.name).collect())
            }
            _ => None,
        }
    };
    tokio::time::timeout(timeout, list).await.ok().flatten()
}

/// The services worth naming to a person: not the plumbing every gRPC server may carry (health,
/// reflection), at most [`MAX_NAMED`].
pub(super) fn worth_naming(services: &[String]) -> Vec<&str> {
    services
        .iter()
        .map(String::as_str)
        .filter(|name| !name.starts_with("grpc."))
        .take(MAX_NAMED)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plumbing_is_not_named() {
        let services: Vec<String> = [
            "unbind.v1.AccountGateway",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "unbind.v1.NumberStatus",
        ]
        .map(str::to_owned)
        .into();
        assert_eq!(
            worth_naming(&services),
            ["unbind.v1.AccountGateway", "unbind.v1.NumberStatus"]
        );
        let many: Vec<String> = (0..20).map(|n| format!("x.S{n}")).collect();
        assert_eq!(worth_naming(&many).len(), MAX_NAMED);
    }
}
