//! Builders for what a connector emits: resource types, resources with their trait annotation,
//! entitlements and grants, following Baton's conventions.
//!
//! Invariants the `baton` CLI relies on and these builders keep:
//! * a resource of a typed resource type carries that trait's annotation ([`ResourceBuilder::user`] etc.);
//! * the profile is stored in `Resource.profile` (field 9) AND in the trait's `profile`, because the widely
//!   installed CLI (SDK v0.7.27) only knows the latter; a user's status is in `UserTrait.status` and
//!   `Resource.status`;
//! * `creation_source` is `CONNECTOR_LIST_RESOURCES` (1);
//! * entitlement and grant ids follow [`crate::ids`], and grants embed the full entitlement and principal.

use prost_types::{Any, Struct};

use crate::annotations::AnnotationsExt;
use crate::pb::{entitlement::PurposeValue, resource, resource_type::Trait, user_trait};
use crate::{AppTrait, Entitlement, Grant, GrantExpandable, GroupTrait, Resource, ResourceId, ResourceType};
use crate::{RoleTrait, UserTrait, ids};

/// A resource type with the given traits.
pub fn resource_type(id: &str, display_name: &str, traits: &[Trait]) -> ResourceType {
    ResourceType {
        id: id.to_owned(),
        display_name: display_name.to_owned(),
        traits: traits.iter().map(|t| *t as i32).collect(),
        ..Default::default()
    }
}

enum TraitKind {
    None,
    User(Box<UserTrait>),
    Group(GroupTrait),
    Role(RoleTrait),
    App(Box<AppTrait>),
}

/// Builds a [`Resource`], attaching the trait annotation and copying the profile into it.
pub struct ResourceBuilder {
    resource: Resource,
    kind: TraitKind,
}

impl ResourceBuilder {
    /// A resource `resource_type:id` named `display_name`, without a trait.
    pub fn new(resource_type: &str, id: &str, display_name: &str) -> Self {
        Self {
            resource: Resource {
                id: Some(ResourceId::new(resource_type, id)),
                display_name: display_name.to_owned(),
                creation_source: resource::CreationSource::ConnectorListResources as i32,
                ..Default::default()
            },
            kind: TraitKind::None,
        }
    }

    /// Sets the parent resource (e.g. a resource group's subscription).
    pub fn parent(mut self, parent: ResourceId) -> Self {
        self.resource.parent_resource_id = Some(parent);
        self
    }

    /// Sets the description.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.resource.description = d.into();
        self
    }

    /// Sets the profile (copied into the trait's profile at [`build`](Self::build)).
    pub fn profile(mut self, p: Struct) -> Self {
        self.resource.profile = Some(p);
        self
    }

    /// Adds an annotation.
    pub fn annotation(mut self, a: Any) -> Self {
        self.resource.annotations.push(a);
        self
    }

    /// Makes this a user, with `t` as its UserTrait (status is mirrored into `Resource.status`).
    pub fn user(mut self, t: UserTrait) -> Self {
        self.kind = TraitKind::User(Box::new(t));
        self
    }

    /// Makes this a group.
    pub fn group(mut self) -> Self {
        self.kind = TraitKind::Group(GroupTrait::default());
        self
    }

    /// Makes this a role.
    pub fn role(mut self) -> Self {
        self.kind = TraitKind::Role(RoleTrait::default());
        self
    }

    /// Makes this an app, with `t` as its AppTrait.
    pub fn app(mut self, t: AppTrait) -> Self {
        self.kind = TraitKind::App(Box::new(t));
        self
    }

    /// The resource, with its trait annotation first among its annotations.
    pub fn build(self) -> Resource {
        let mut r = self.resource;
        let profile = r.profile.clone();
        let trait_any = match self.kind {
            TraitKind::None => None,
            TraitKind::User(mut t) => {
                if t.profile.is_none() {
                    t.profile = profile;
                }
                if let Some(s) = &t.status {
                    r.status = Some(resource::Status {
                        status: user_status_to_resource(s.status),
                        details: s.details.clone(),
                    });
                }
                Some(crate::pack_any(t.as_ref()))
            }
            TraitKind::Group(mut t) => {
                t.profile = t.profile.or(profile);
                Some(crate::pack_any(&t))
            }
            TraitKind::Role(mut t) => {
                t.profile = t.profile.or(profile);
                Some(crate::pack_any(&t))
            }
            TraitKind::App(mut t) => {
                if t.profile.is_none() {
                    t.profile = profile;
                }
                Some(crate::pack_any(t.as_ref()))
            }
        };
        if let Some(a) = trait_any {
            r.annotations.insert(0, a);
        }
        r
    }
}

fn user_status_to_resource(s: i32) -> i32 {
    use resource::status::StatusValue as R;
    use user_trait::status::Status as U;
    match U::try_from(s) {
        Ok(U::Enabled) => R::Enabled as i32,
        Ok(U::Disabled) => R::Disabled as i32,
        Ok(U::Deleted) => R::Deleted as i32,
        _ => R::Unspecified as i32,
    }
}

/// A UserTrait with a primary email, an enabled/disabled status and a human account type.
pub fn user_trait(primary_email: Option<&str>, enabled: bool, login: &str) -> UserTrait {
    UserTrait {
        emails: primary_email
            .map(|e| user_trait::Email {
                address: e.to_owned(),
                is_primary: true,
            })
            .into_iter()
            .collect(),
        status: Some(user_trait::Status {
            status: if enabled {
                user_trait::status::Status::Enabled
            } else {
                user_trait::status::Status::Disabled
            } as i32,
            details: String::new(),
        }),
        account_type: user_trait::AccountType::Human as i32,
        login: login.to_owned(),
        ..Default::default()
    }
}

/// An entitlement `<type>:<id>:<slug>` on `resource`, grantable to `grantable_to`.
pub fn entitlement(
    resource: &Resource,
    slug: &str,
    display_name: &str,
    purpose: PurposeValue,
    grantable_to: &[ResourceType],
) -> Entitlement {
    let rid = resource.id.clone().unwrap_or_default();
    Entitlement {
        resource: Some(resource.clone()),
        id: ids::entitlement_id(&rid.resource_type, &rid.resource, slug),
        display_name: display_name.to_owned(),
        description: String::new(),
        grantable_to: grantable_to.to_vec(),
        annotations: Vec::new(),
        purpose: purpose as i32,
        slug: slug.to_owned(),
    }
}

/// A grant of `entitlement` to `principal`, with id `<entitlement_id>:<ptype>:<pid>`.
pub fn grant(entitlement: &Entitlement, principal: &Resource) -> Grant {
    let pid = principal.id.clone().unwrap_or_default();
    Grant {
        id: ids::grant_id(&entitlement.id, &pid.resource_type, &pid.resource),
        entitlement: Some(entitlement.clone()),
        principal: Some(principal.clone()),
        annotations: Vec::new(),
        sources: None,
    }
}

/// Marks `grant` as expandable: holders of `entitlement_ids` also get the grant's entitlement
/// (e.g. group G is a member of H: grant `H:member` to G, expandable from `G:member`).
pub fn expandable(mut grant: Grant, entitlement_ids: &[&str]) -> Grant {
    grant.annotations.push_msg(&GrantExpandable {
        entitlement_ids: entitlement_ids.iter().map(|s| (*s).to_owned()).collect(),
        shallow: false,
        resource_type_ids: Vec::new(),
    });
    grant
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile;

    #[test]
    fn user_gets_trait_with_profile_and_status() {
        let p = profile::strings([("first_name", "Ada"), ("user_id", "7")]);
        let r = ResourceBuilder::new("user", "7", "Ada")
            .profile(p.clone())
            .user(user_trait(Some("ada@example.com"), false, "ada"))
            .build();
        let t: UserTrait = r.annotations.find().unwrap().unwrap();
        assert_eq!(t.profile, Some(p.clone()));
        assert_eq!(r.profile, Some(p));
        assert_eq!(t.emails[0].address, "ada@example.com");
        assert_eq!(
            r.status.unwrap().status,
            resource::status::StatusValue::Disabled as i32
        );
        assert_eq!(r.creation_source, 1);
    }

    #[test]
    fn group_entitlement_and_grant_ids() {
        let g = ResourceBuilder::new("group", "g1", "G").group().build();
        assert!(r_has::<GroupTrait>(&g));
        let u = ResourceBuilder::new("user", "u1", "U").build();
        let e = entitlement(&g, "member", "G member", PurposeValue::Assignment, &[]);
        assert_eq!(e.id, "group:g1:member");
        let gr = expandable(grant(&e, &u), &["group:g2:member"]);
        assert_eq!(gr.id, "group:g1:member:user:u1");
        assert!(gr.annotations.contains::<GrantExpandable>());
    }

    fn r_has<M: prost::Name>(r: &Resource) -> bool {
        r.annotations.contains::<M>()
    }
}
