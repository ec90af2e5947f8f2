//! The carrier's subscriber registry: the client the gateway uses, and an embedded file-backed
//! registry for the demo and tests.

pub mod client;
pub mod embedded;

pub use client::{RegistryClient, RegistryError, Verdict, templates};
