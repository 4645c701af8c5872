//! Building grants: a principal reference of the right resource type, group principals expandable (so
//! that members of a member group, or of a group assigned to an app or role, get the grant by expansion).

use steward_model::{Entitlement, Grant, Resource, ResourceId, builders, ids};

use crate::index::Kind;
use crate::types;

/// A grant of `ent` to principal `pid` of `kind`; a group principal carries `GrantExpandable` from its
/// own `member` entitlement.
pub fn to(ent: &Entitlement, kind: Kind, pid: &str) -> Grant {
    let principal = Resource {
        id: Some(ResourceId::new(kind.resource_type(), pid)),
        ..Default::default()
    };
    let g = builders::grant(ent, &principal);
    if kind == Kind::Group {
        let member = ids::entitlement_id(types::GROUP, pid, "member");
        builders::expandable(g, &[member.as_str()])
    } else {
        g
    }
}
