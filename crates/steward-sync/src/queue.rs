//! The engine's work items and their storage in the sync file.
//!
//! Every pending connector call is an [`Action`], stored in `v1_connector_sessions` under
//! `steward/q/<seq>` (zero-padded, so key order is creation order), or under `steward/p/<seq>` when it
//! continues a listing (its next page): those are handed out first. A paged listing is a chain — its next
//! page is known only when the previous one is read — so a continuation queued behind every follow-up of
//! a large tenant (20,000 entitlement and grant calls) would advance one page per pass over the whole queue. A completed call's rows, its follow-up
//! actions and the deletion of its own key are written in the same transaction, and transactions commit
//! only at checkpoints; so the committed file always holds exactly the rows of the completed calls and the
//! actions still to do. `sync_token` holds the next sequence number.

use prost::Message;
use steward_model::{Resource, ResourceId};

/// Key prefix of queued actions.
pub const PREFIX: &str = "steward/q/";

/// Key prefix of queued continuations (next pages), handed out before [`PREFIX`]'s.
pub const URGENT: &str = "steward/p/";

/// The key of action number `seq`.
pub fn key(seq: u64) -> String {
    format!("{PREFIX}{seq:020}")
}

/// The key of action number `seq` when it continues a listing.
pub fn urgent_key(seq: u64) -> String {
    format!("{URGENT}{seq:020}")
}

/// What a queued action does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// List resource types.
    ResourceTypes = 1,
    /// List resources of a type (and parent).
    Resources = 2,
    /// List entitlements of a resource.
    Entitlements = 3,
    /// List grants of a resource.
    Grants = 4,
    /// Fetch one resource (partial sync).
    Target = 5,
}

/// A pending connector call, as stored.
#[derive(Clone, PartialEq, Message)]
pub struct Action {
    /// [`Kind`] as a number.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    /// Resource type of a `Resources` call.
    #[prost(string, tag = "2")]
    pub resource_type: String,
    /// Parent of a `Resources` call; id of a `Target` call.
    #[prost(message, optional, tag = "3")]
    pub parent: Option<ResourceId>,
    /// The resource of an `Entitlements` or `Grants` call.
    #[prost(message, optional, tag = "4")]
    pub resource: Option<Resource>,
    /// Page token.
    #[prost(string, tag = "5")]
    pub page_token: String,
}

impl Action {
    /// The action's kind, if known.
    pub fn kind(&self) -> Option<Kind> {
        Some(match self.kind {
            1 => Kind::ResourceTypes,
            2 => Kind::Resources,
            3 => Kind::Entitlements,
            4 => Kind::Grants,
            5 => Kind::Target,
            _ => return None,
        })
    }

    /// A new action of `kind`.
    pub fn new(kind: Kind) -> Self {
        Self {
            kind: kind as i32,
            ..Default::default()
        }
    }

    /// A short description for logs and errors.
    pub fn describe(&self) -> String {
        let rid = |r: &Option<Resource>| {
            r.as_ref()
                .and_then(|r| r.id.as_ref())
                .map(|i| i.to_string())
                .unwrap_or_default()
        };
        match self.kind() {
            Some(Kind::ResourceTypes) => "listing resource types".into(),
            Some(Kind::Resources) => match &self.parent {
                Some(p) => format!("listing {} resources under {p}", self.resource_type),
                None => format!("listing {} resources", self.resource_type),
            },
            Some(Kind::Entitlements) => format!("listing entitlements of {}", rid(&self.resource)),
            Some(Kind::Grants) => format!("listing grants of {}", rid(&self.resource)),
            Some(Kind::Target) => {
                format!(
                    "fetching {}",
                    self.parent.as_ref().map(|p| p.to_string()).unwrap_or_default()
                )
            }
            None => format!("unknown action {}", self.kind),
        }
    }
}

/// The sync token: `steward:v1:<next_seq>`.
pub fn token(next_seq: u64) -> String {
    format!("steward:v1:{next_seq}")
}

/// Parses [`token`]; anything else gives `None`.
pub fn parse_token(t: &str) -> Option<u64> {
    t.strip_prefix("steward:v1:")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_seq_and_tokens_round_trip() {
        assert!(key(9) < key(10));
        assert!(!urgent_key(1).starts_with(PREFIX) && !key(1).starts_with(URGENT));
        assert_eq!(parse_token(&token(42)), Some(42));
        assert_eq!(parse_token(""), None);
        let a = Action {
            page_token: "p".into(),
            ..Action::new(Kind::Grants)
        };
        assert_eq!(Action::decode(a.encode_to_vec().as_slice()).unwrap(), a);
    }
}
