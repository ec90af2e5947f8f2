//! Fakes: the other side of each contract the gateway has, simulated. Nothing here runs in
//! production; the demo, the integration tests, the benchmarks and `simulate-apps` use it.
//!
//! - `simulated_apps`: any number of app adapters (real `unbind.v1.AppAdapter` gRPC servers)
//!   with deterministic accounts and a behaviour set per app (latency, errors, stalls, outages);
//! - `simulated_registry`: the carrier's subscriber registry (a real
//!   `unbind.v1.SubscriberRegistry` server) backed by a subscribers file, writing every SMS it
//!   "sends" to a JSON-lines file;
//!   in the holder's language from replaceable templates (`sms_templates`);
//! - `stack`: both, with a gateway, in one process on loopback.
//!
//! They are built from the domain's own types (`E164`, `IdLastSix`, the clock), so a fake never
//! accepts what the gateway would refuse, nor the other way round.

pub mod simulated_apps;
pub mod simulated_registry;
pub mod sms_templates;
pub mod stack;
