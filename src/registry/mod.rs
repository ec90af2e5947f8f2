//! The carrier's subscriber registry, as the gateway calls it: `VerifySubscriber` (do the ID
//! characters match the number's holder, and since when) and `SendSms`. The simulated registry
//! the demo and the tests run is in `testkit::simulated_registry`.

pub mod client;

pub use client::{RegistryClient, RegistryError, Verdict, templates};
