//! `--external-resource-c1z`: identities taken from another connector's sync file (e.g. the Entra ID
//! connector's) instead of Graph. Users, groups, enterprise applications and managed identities are copied
//! into this sync with the entitlements and grants of groups and applications (so that group grants still
//! expand to members); role grants are linked to them by id. Loaded once, at start.

use std::collections::HashMap;
use std::path::Path;

use steward_c1z::{C1zReader, EntitlementFilter, GrantFilter, PageRequest, ResourceFilter};
use steward_entra::index::Kind;
use steward_model::{AnnotationsExt, Entitlement, Grant, GrantImmutable, Resource, builders, ids};

use crate::error::AzureError;
use crate::types;

/// The identities of an external sync file.
#[derive(Debug, Default)]
pub struct External {
    /// Resources by type.
    pub resources: HashMap<String, Vec<Resource>>,
    /// Entitlements by `<type>:<id>` of their resource.
    pub entitlements: HashMap<String, Vec<Entitlement>>,
    /// Direct grants by `<type>:<id>` of their entitlement's resource.
    pub grants: HashMap<String, Vec<Grant>>,
    /// Principal kinds by id.
    pub kinds: HashMap<String, Kind>,
}

fn err(e: impl std::fmt::Display) -> AzureError {
    AzureError::External(e.to_string())
}

impl External {
    /// Reads the latest finished full sync of `path`.
    pub fn load(path: &Path) -> Result<External, AzureError> {
        let r = C1zReader::open(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let mut x = External::default();
        for (rt, kind) in [
            (types::USER, Kind::User),
            (types::GROUP, Kind::Group),
            (types::APP, Kind::App),
            (types::MANAGED_IDENTITY, Kind::ManagedIdentity),
        ] {
            let f = ResourceFilter {
                resource_type: Some(rt.to_owned()),
                parent: None,
            };
            let mut page = PageRequest::first(5_000);
            let mut all = Vec::new();
            loop {
                let p = r.resources(&f, &page).map_err(err)?;
                all.extend(p.items);
                if p.next_page_token.is_empty() {
                    break;
                }
                page.token = p.next_page_token;
            }
            for res in &all {
                let Some(id) = res.id.clone() else { continue };
                x.kinds.insert(id.resource.to_ascii_lowercase(), kind);
                if kind == Kind::Group || kind == Kind::App {
                    let key = ids::resource_external_id(rt, &id.resource);
                    let ents = r
                        .entitlements(
                            &EntitlementFilter {
                                resource: Some(id.clone()),
                            },
                            &PageRequest::first(10_000),
                        )
                        .map_err(err)?
                        .items;
                    let mut grants = Vec::new();
                    let gf = GrantFilter {
                        resource: Some(id.clone()),
                        ..GrantFilter::default()
                    };
                    let mut page = PageRequest::first(10_000);
                    loop {
                        let p = r.grants(&gf, &page).map_err(err)?;
                        grants.extend(
                            p.items
                                .into_iter()
                                .filter(|g| !g.annotations.contains::<GrantImmutable>())
                                .map(expandable_again),
                        );
                        if p.next_page_token.is_empty() {
                            break;
                        }
                        page.token = p.next_page_token;
                    }
                    x.entitlements.insert(key.clone(), ents);
                    x.grants.insert(key, grants);
                }
            }
            x.resources.insert(rt.to_owned(), all);
        }
        if x.kinds.is_empty() {
            return Err(err(format!(
                "{} holds no users, groups, enterprise applications or managed identities; sync the Entra ID connector into it first",
                path.display()
            )));
        }
        Ok(x)
    }

    /// The kind of principal `id`.
    pub fn kind(&self, id: &str) -> Option<Kind> {
        self.kinds.get(&id.to_ascii_lowercase()).copied()
    }
}

/// Stored grants lose their `GrantExpandable` (it lives in a column): a grant to a group is expandable
/// from the group's `member` again, as the Entra ID connector writes it.
fn expandable_again(mut g: Grant) -> Grant {
    let group = g
        .principal
        .as_ref()
        .and_then(|p| p.id.as_ref())
        .filter(|id| id.resource_type == types::GROUP)
        .map(|id| ids::entitlement_id(types::GROUP, &id.resource, "member"));
    if let Some(member) = group {
        g.annotations.clear();
        g = builders::expandable(g, &[member.as_str()]);
    }
    g
}
