//! One-shot provisioning by ids, as Baton connectors do with `--grant-entitlement ID --grant-principal ID
//! --grant-principal-type TYPE` and `--revoke-grant GRANT_ID`: the ids are looked up in an existing c1z
//! (its default view: the latest finished full sync with newer partial syncs laid over it, so a grant
//! confirmed by a partial sync after provisioning is found) and the connector is called with the full
//! objects.

use std::path::Path;

use steward_c1z::C1zReader;
use steward_model::{Grant, ResourceId};

use crate::{Connector, SyncError};

/// Grants entitlement `entitlement_id` to the principal `principal_type:principal_id`.
pub async fn grant_by_ids<C: Connector>(
    connector: &C,
    c1z: &Path,
    entitlement_id: &str,
    principal_type: &str,
    principal_id: &str,
) -> Result<Vec<Grant>, SyncError> {
    let (ent, principal) = {
        let r = C1zReader::open(c1z)?;
        let ent = r.entitlement(entitlement_id)?.ok_or_else(|| {
            SyncError::NotFound(format!(
                "entitlement {entitlement_id} is not in {}; run a full sync first",
                c1z.display()
            ))
        })?;
        let pid = ResourceId::new(principal_type, principal_id);
        let principal = r.resource(&pid)?.ok_or_else(|| {
            SyncError::NotFound(format!(
                "principal {pid} is not in {}; run a full sync first",
                c1z.display()
            ))
        })?;
        (ent, principal)
    };
    connector
        .grant(&principal, &ent)
        .await
        .map_err(|source| SyncError::Connector {
            during: format!("granting {entitlement_id}"),
            source,
        })
}

/// Revokes grant `grant_id`.
pub async fn revoke_by_id<C: Connector>(connector: &C, c1z: &Path, grant_id: &str) -> Result<(), SyncError> {
    let grant = {
        let r = C1zReader::open(c1z)?;
        r.grant(grant_id)?.ok_or_else(|| {
            SyncError::NotFound(format!(
                "grant {grant_id} is not in {}; run a full sync first",
                c1z.display()
            ))
        })?
    };
    connector
        .revoke(&grant)
        .await
        .map_err(|source| SyncError::Connector {
            during: format!("revoking {grant_id}"),
            source,
        })
}
