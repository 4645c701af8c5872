//! Baton's connector model — resource types, resources, entitlements, grants, traits and annotations —
//! with a protobuf encoding wire-compatible with Baton's `c1.connector.v2` messages.
//!
//! * [`pb`] holds the prost types generated from `proto/c1/connector/v2/connector.proto` (written by hand
//!   from the c1z spec's field table). The most used ones are re-exported at the crate root.
//! * [`annotations`] packs and unpacks `google.protobuf.Any` annotations
//!   (type URL `type.googleapis.com/c1.connector.v2.<Msg>`).
//! * [`ids`] follows Baton's id conventions for entitlements and grants.
//! * [`profile`] turns JSON into the `google.protobuf.Struct` profiles that traits carry.
//! * [`builders`] makes the resources, entitlements and grants a connector emits, with the trait
//!   annotations the `baton` CLI expects.
//!
//! Encoding is deterministic: fields are declared (hence encoded) in field-number order and every map is a
//! `BTreeMap`, so equal values always give equal bytes.

pub mod annotations;
pub mod builders;
mod error;
pub mod ids;
pub mod profile;

/// Generated `c1.connector.v2` messages.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/c1.connector.v2.rs"));
}

pub use annotations::{AnnotationsExt, pack_any, unpack_any};
pub use error::ModelError;
pub use pb::grant_sources::GrantSource;
pub use pb::{
    AppTrait, AssetRef, ChildResourceType, Entitlement, EntitlementImmutable, ExternalId, ExternalLink,
    Grant, GrantExpandable, GrantImmutable, GrantSources, GroupTrait, RateLimitDescription, Resource,
    ResourceId, ResourceType, RoleTrait, SkipEntitlementsAndGrants, UserTrait,
};
pub use prost::Message;
pub use prost_types::{Any, Struct, Timestamp, Value};

impl ResourceId {
    /// A resource id of type `resource_type` with id `resource`.
    pub fn new(resource_type: impl Into<String>, resource: impl Into<String>) -> Self {
        Self {
            resource_type: resource_type.into(),
            resource: resource.into(),
            baton_resource: false,
        }
    }
}

impl std::fmt::Display for ResourceId {
    /// `type:id`, the form `v1_resources.external_id` uses.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.resource_type, self.resource)
    }
}

#[cfg(test)]
mod golden;
