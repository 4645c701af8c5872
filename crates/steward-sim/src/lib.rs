//! Steward's tenant emulator: a local Microsoft login, Graph and ARM.
//!
//! Rooms: `model` (the tenant as data), `generate` (deterministic realistic tenants), `manifest` (true
//! counts), `store` (the live tenant behind a lock, with indexes, and every write), `auth` (token endpoint,
//! signed JWTs, checks on every call), `graph` and `arm` (Microsoft's wire behaviour), `realism`
//! (throttling, latency, faults), `tls` (CA, HTTPS, CONNECT proxy), `server` (listeners and the ready line).
//! Only `graph`, `arm` and `auth` know Microsoft's wire shapes.

pub mod arm;
pub mod auth;
pub mod catalog;
pub mod ctx;
mod der;
pub mod generate;
pub mod graph;
pub mod manifest;
pub mod model;
pub mod realism;
pub mod rng;
pub mod server;
pub mod store;
pub mod util;
pub mod validate;

pub use generate::{Size, generate};
pub use manifest::Manifest;
pub use model::Tenant;
pub use server::{Options, Ready, Running, start};

/// A tenant by name (`tiny`, `small`, `medium`, `large`, `xl`) or from a JSON file.
pub fn load_tenant(spec: &str, seed: u64) -> Result<Tenant, SimError> {
    if let Some(size) = Size::named(spec) {
        return Ok(generate(size, seed));
    }
    let path = std::path::Path::new(spec);
    let bytes = std::fs::read(path).map_err(|e| {
        SimError::Config(format!(
            "--tenant {spec}: not a size (tiny, small, medium, large, xl) and not a readable file: {e}"
        ))
    })?;
    let t: Tenant = serde_json::from_slice(&bytes).map_err(|e| {
        SimError::Config(format!(
            "--tenant {spec}: not a tenant JSON file (see docs/tenant-schema.md): {e}"
        ))
    })?;
    t.validate()
        .map_err(|e| SimError::Config(format!("--tenant {spec}: {e}")))?;
    Ok(t)
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{0}")]
    Config(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS setup: {0}")]
    Tls(String),
}
