//! The gRPC surface: the `AccountGateway` service, the layers around it, and the one module
//! (`error`) that turns every internal error into a status callers can act on.

pub mod correlator;
pub mod deadline;
pub mod edge;
pub mod error;
pub mod gateway;
mod lookup;
pub mod metrics;
pub mod number_status;
pub mod push;
pub mod rate;
pub mod shed;
pub mod tenant;

pub use error::ApiError;
pub use gateway::GatewayService;
