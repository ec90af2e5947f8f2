//! What `query` and `check-adapter` share as clients of a gRPC service at a terminal: the
//! endpoint and its TLS ([`endpoint`]), `--deadline` / `--timeout` ([`deadline`]), how a failed
//! call is told ([`status`]) and text made safe and measured for a terminal ([`text`]).

pub mod deadline;
pub mod endpoint;
pub mod status;
pub mod text;
