//! The generated `unbind.v1` types, clients and servers (see `proto/unbind/v1/`).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("unbind.v1");

/// The encoded file descriptor set, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("unbind_v1_descriptor");
