//! Who is calling. Until client certificates identify tenants, every caller is the one
//! development tenant; sessions are already bound to the tenant that created them.

/// The tenant every caller is, until mTLS identifies tenants.
pub const DEVELOPMENT_TENANT: &str = "development";

/// The calling tenant of a request.
pub fn tenant_of<T>(_request: &tonic::Request<T>) -> &'static str {
    DEVELOPMENT_TENANT
}
