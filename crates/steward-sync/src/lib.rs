//! The `Connector` trait (what a connector can list and provision) and the sync engine that drives a
//! connector into a c1z file.
//!
//! * [`connector`]: the trait, pages, capabilities and [`ConnectorError`] (rate limited / not found /
//!   transient / fatal).
//! * [`engine`]: [`run_sync`] — bounded concurrency, streaming into one writer thread, checkpoints in the
//!   file, exact resume after a crash, rate-limit back-off, a warnings budget, progress events, partial syncs.
//! * [`provision`]: one-shot grant and revoke by ids looked up in an existing c1z.
//! * [`incremental`]: [`previous_sync`] — the last finished full sync of a file and the connector state
//!   kept with it (delta links), for connectors that sync incrementally.

pub mod connector;
pub mod engine;
mod error;
pub mod incremental;
pub mod provision;
mod queue;

pub use connector::{Capabilities, Connector, ConnectorError, Page, ResourceTypeCapability};
pub use engine::{ProgressEvent, SyncOptions, SyncPlan, SyncSummary, run_sync};
pub use error::SyncError;
pub use incremental::{Previous, previous_sync};
