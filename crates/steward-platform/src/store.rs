//! Storage behind the [`Store`] trait; [`SqlStore`] implements it on SQLite and on PostgreSQL.
#![allow(clippy::too_many_arguments)]

use async_trait::async_trait;
use sqlx::AssertSqlSafe;
use tokio::sync::mpsc;

use crate::db::{Db, with_db};
use crate::error::{PlatformError, Result};
use crate::model::*;

/// A binding: (app or IdP entitlement id, action, virtual role name, app entitlement id).
pub type Binding = (String, String, Option<String>, Option<String>);
/// A grant held by an identity: (connector, grant, entitlement name, resource type, resource id).
pub type HeldGrant = (String, GrantRow, String, String, String);

/// A resource row of a snapshot.
#[derive(Debug, Clone)]
pub struct ResourceRow {
    /// Type.
    pub resource_type: String,
    /// Id.
    pub resource_id: String,
    /// Name.
    pub display_name: String,
    /// `<type>:<id>` of the parent.
    pub parent: Option<String>,
    /// Lowercased login (UPN) for account matching.
    pub login: Option<String>,
    /// Lowercased email for account matching.
    pub email: Option<String>,
    /// Profile JSON.
    pub profile: String,
}

/// An entitlement row of a snapshot.
#[derive(Debug, Clone)]
pub struct EntitlementRow {
    /// Id.
    pub id: String,
    /// Resource type.
    pub resource_type: String,
    /// Resource id.
    pub resource_id: String,
    /// Name.
    pub display_name: String,
    /// Slug.
    pub slug: String,
}

/// A grant row of a snapshot.
#[derive(Debug, Clone)]
pub struct GrantRow {
    /// Id.
    pub id: String,
    /// Entitlement.
    pub entitlement_id: String,
    /// Principal type.
    pub principal_type: String,
    /// Principal id.
    pub principal_id: String,
    /// Held directly.
    pub direct: bool,
    /// The entitlement it came through (expansion source).
    pub via: Option<String>,
}

/// Rows streamed into an ingest.
#[derive(Debug)]
pub enum Batch {
    /// Resources.
    Resources(Vec<ResourceRow>),
    /// Entitlements.
    Entitlements(Vec<EntitlementRow>),
    /// Grants.
    Grants(Vec<GrantRow>),
    /// Identities (from an identity source).
    Identities(Vec<Identity>),
    /// The reader failed: roll back.
    Failed(String),
}

/// A stored connector with its encrypted secrets.
#[derive(Debug, Clone)]
pub struct ConnectorRow {
    /// The public part.
    pub connector: Connector,
    /// Encrypted JSON object of the secret settings.
    pub secrets_enc: String,
}

/// Storage of the platform. Every method is one consistent operation.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Sets `key` if it has no value; true if this call set it.
    async fn meta_set_once(&self, key: &str, value: &str) -> Result<bool>;
    /// Stores a token by its hash.
    async fn insert_token(&self, t: &TokenInfo, hash: &str) -> Result<()>;
    /// The token with this hash, unless revoked.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>>;
    /// Stores a new connector.
    async fn insert_connector(&self, c: &ConnectorRow) -> Result<()>;
    /// One connector.
    async fn connector(&self, id: &str) -> Result<Option<ConnectorRow>>;
    /// Connectors.
    async fn connectors(&self, q: &ListQuery) -> Result<Page<Connector>>;
    /// Whether some connector is the identity source.
    async fn has_identity_source(&self) -> Result<bool>;
    /// Sets status (and, on success, the current sync).
    async fn set_connector_status(
        &self,
        id: &str,
        status: ConnectorStatus,
        reason: Option<&str>,
        synced: Option<(&str, &str)>,
    ) -> Result<()>;
    /// Starts a sync record.
    async fn insert_sync(&self, s: &SyncRecord) -> Result<()>;
    /// Finishes a sync record.
    async fn finish_sync(&self, s: &SyncRecord) -> Result<()>;
    /// A connector's syncs, newest first.
    async fn syncs(&self, connector_id: &str, q: &ListQuery) -> Result<Page<SyncRecord>>;
    /// Replaces the connector's snapshot with the batches from `rx`, atomically: on any error (or a
    /// `Batch::Failed`) nothing changes.
    async fn replace_snapshot(
        &self,
        connector_id: &str,
        identity_source: bool,
        rx: mpsc::Receiver<Batch>,
        now: &str,
    ) -> Result<IngestStats>;
    /// Identities.
    async fn identities(&self, q: &ListQuery) -> Result<Page<Identity>>;
    /// One identity by id or UPN.
    async fn identity(&self, id_or_upn: &str) -> Result<Option<Identity>>;
    /// Everything an identity's accounts hold: (connector, grant, entitlement name, resource type, resource id).
    async fn grants_of_identity(&self, identity_id: &str) -> Result<Vec<HeldGrant>>;
    /// Apps.
    async fn apps(&self, managed: Option<bool>, q: &ListQuery) -> Result<Page<App>>;
    /// One app.
    async fn app(&self, id: &str) -> Result<Option<App>>;
    /// Apps of enterprise application resources.
    async fn app_ids_by_resource(&self) -> Result<Vec<(String, String, String)>>;
    /// Stores a new app.
    async fn insert_app(&self, a: &App) -> Result<()>;
    /// Marks an app managed with owners and its entitlements, atomically.
    async fn manage_app(&self, id: &str, owners: &[String], ents: &[AppEntitlement]) -> Result<()>;
    /// An app's entitlements with holder counts.
    async fn app_entitlements(&self, app_id: &str) -> Result<Vec<AppEntitlement>>;
    /// Adds an app entitlement.
    async fn insert_app_entitlement(&self, app_id: &str, e: &AppEntitlement) -> Result<()>;
    /// Entitlements of a resource in a connector's snapshot.
    async fn entitlements_of(
        &self,
        connector_id: &str,
        rtype: &str,
        rid: &str,
    ) -> Result<Vec<EntitlementRow>>;
    /// One entitlement in a connector's snapshot.
    async fn entitlement(&self, connector_id: &str, id: &str) -> Result<Option<EntitlementRow>>;
    /// Groups holding an assignment of the enterprise app: (group entitlement id, group name, assignment ids, members).
    async fn groups_assigned(
        &self,
        connector_id: &str,
        app_resource_id: &str,
    ) -> Result<Vec<(String, String, Vec<String>, i64)>>;
    /// Bindings of an app: (idp entitlement, action, name, app entitlement).
    async fn links(&self, app_id: &str) -> Result<Vec<Binding>>;
    /// Stores a binding (replacing the previous one; drops the virtual role it replaces).
    async fn upsert_link(
        &self,
        app_id: &str,
        idp_entitlement_id: &str,
        connector_id: &str,
        action: &str,
        name: Option<&str>,
        app_entitlement_id: Option<&str>,
        now: &str,
    ) -> Result<()>;
    /// Bindings of an IdP entitlement across apps: (app id, action, name, app entitlement).
    async fn links_of_idp_entitlement(&self, idp: &str) -> Result<Vec<Binding>>;
    /// Holders of an entitlement.
    async fn holders(&self, connector_id: &str, entitlement_id: &str, q: &ListQuery) -> Result<Page<Holder>>;
    /// Display name of a resource.
    async fn resource_name(&self, connector_id: &str, rtype: &str, rid: &str) -> Result<Option<String>>;
}

/// The SQL implementation of [`Store`] on either backend.
#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Db,
}

impl SqlStore {
    /// Wraps a connected, migrated database.
    pub fn new(db: Db) -> Self {
        Self { db }
    }
    /// The pool.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

type ConnTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    bool,
    Option<String>,
    Option<i64>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);
const CONN_COLS: &str = "id, kind, name, settings, secrets, secret_names, owners, identity_source, app_id, sync_interval_secs, status, status_reason, last_sync_at, current_sync_id, created_at";

fn conn_from(t: ConnTuple) -> ConnectorRow {
    let json_list = |s: &str| serde_json::from_str::<Vec<String>>(s).unwrap_or_default();
    ConnectorRow {
        connector: Connector {
            id: t.0,
            kind: t.1,
            name: t.2,
            settings: serde_json::from_str(&t.3).unwrap_or_default(),
            secrets_set: json_list(&t.5),
            owners: json_list(&t.6),
            identity_source: t.7,
            app_id: t.8,
            sync_interval_secs: t.9,
            status: ConnectorStatus::parse(&t.10),
            status_reason: t.11,
            last_sync_at: t.12,
            current_sync_id: t.13,
            created_at: t.14,
        },
        secrets_enc: t.4,
    }
}

type SyncTuple = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);
fn sync_from(t: SyncTuple) -> SyncRecord {
    SyncRecord {
        id: t.0,
        connector_id: t.1,
        source: t.2,
        status: t.3,
        started_at: t.4,
        ended_at: t.5,
        error: t.6,
        stats: t.7.and_then(|s| serde_json::from_str(&s).ok()),
        log: t.8.lines().map(str::to_owned).collect(),
    }
}

type IdTuple = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);
const ID_COLS: &str =
    "id, connector_id, kind, display_name, upn, email, department, job_title, manager_id, status";
fn identity_from(t: IdTuple) -> Identity {
    Identity {
        id: t.0,
        connector_id: t.1,
        kind: t.2,
        display_name: t.3,
        upn: t.4,
        email: t.5,
        department: t.6,
        job_title: t.7,
        manager_id: t.8,
        status: t.9,
    }
}

type AppTuple = (
    String,
    String,
    String,
    bool,
    Option<String>,
    Option<String>,
    String,
    String,
);
const APP_COLS: &str = "id, name, description, managed, connector_id, resource_id, owners, created_at";
fn app_from(t: AppTuple) -> App {
    App {
        id: t.0,
        name: t.1,
        description: t.2,
        managed: t.3,
        connector_id: t.4,
        resource_id: t.5,
        owners: serde_json::from_str(&t.6).unwrap_or_default(),
        created_at: t.7,
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Statements that finish an ingest inside its transaction: account links and app discovery.
macro_rules! finish_ingest {
    ($tx:ident, $cid:ident, $identity_source:ident, $st:ident) => {{
        let r = sqlx::query("INSERT INTO account_links (connector_id, resource_type, resource_id, identity_id, matched_by) SELECT r.connector_id, r.resource_type, r.resource_id, i.id, 'object_id' FROM resources r JOIN identities i ON i.id = r.resource_id WHERE r.connector_id = $1 AND r.resource_type IN ('user', 'managed_identity')")
            .bind($cid).execute(&mut *$tx).await?;
        $st.accounts_linked += r.rows_affected();
        if !$identity_source {
            for (col, how) in [("upn", "upn"), ("email", "email")] {
                let sql = format!("INSERT INTO account_links (connector_id, resource_type, resource_id, identity_id, matched_by) SELECT r.connector_id, r.resource_type, r.resource_id, i.id, '{how}' FROM resources r JOIN identities i ON lower(i.{col}) = r.{} WHERE r.connector_id = $1 AND r.resource_type = 'user' AND NOT EXISTS (SELECT 1 FROM account_links l WHERE l.connector_id = r.connector_id AND l.resource_type = r.resource_type AND l.resource_id = r.resource_id)", if col == "upn" { "login" } else { "email" });
                let r = sqlx::query(AssertSqlSafe(sql)).bind($cid).execute(&mut *$tx).await?;
                $st.accounts_linked += r.rows_affected();
            }
        }
        let new_apps: Vec<(String, String, String)> = sqlx::query_as("SELECT r.resource_id, r.display_name, r.profile FROM resources r WHERE r.connector_id = $1 AND r.resource_type = 'enterprise_application' AND NOT EXISTS (SELECT 1 FROM apps a WHERE a.connector_id = r.connector_id AND a.resource_id = r.resource_id)")
            .bind($cid).fetch_all(&mut *$tx).await?;
        let now = crate::clock::rfc3339(time::OffsetDateTime::now_utc());
        for (rid, name, profile) in new_apps {
            let desc = serde_json::from_str::<serde_json::Value>(&profile).ok()
                .and_then(|v| v.get("description").and_then(|d| d.as_str()).map(str::to_owned))
                .unwrap_or_default();
            sqlx::query("INSERT INTO apps (id, name, description, managed, connector_id, resource_id, owners, created_at) VALUES ($1, $2, $3, FALSE, $4, $5, '[]', $6)")
                .bind(uuid::Uuid::new_v4().to_string()).bind(name).bind(desc).bind($cid).bind(rid).bind(&now)
                .execute(&mut *$tx).await?;
            $st.apps_discovered += 1;
        }
        sqlx::query("UPDATE apps SET name = (SELECT r.display_name FROM resources r WHERE r.connector_id = apps.connector_id AND r.resource_type = 'enterprise_application' AND r.resource_id = apps.resource_id) WHERE connector_id = $1 AND managed = FALSE AND EXISTS (SELECT 1 FROM resources r WHERE r.connector_id = apps.connector_id AND r.resource_type = 'enterprise_application' AND r.resource_id = apps.resource_id)")
            .bind($cid).execute(&mut *$tx).await?;
    }};
}

/// Rows per multi-row INSERT on SQLite (binding cost grows faster than linearly with the statement size).
const SQLITE_CHUNK: usize = 256;

async fn sqlite_insert<'c, T>(
    tx: &mut sqlx::Transaction<'c, sqlx::Sqlite>,
    head: &str,
    cols: usize,
    rows: &[T],
    bind: impl for<'q> Fn(
        sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
        &T,
    ) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
) -> Result<()> {
    for chunk in rows.chunks(SQLITE_CHUNK.min(32000 / cols)) {
        let mut sql = String::with_capacity(head.len() + chunk.len() * cols * 6);
        sql.push_str(head);
        sql.push_str(" VALUES ");
        let mut n = 0;
        for (i, _) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for c in 0..cols {
                if c > 0 {
                    sql.push(',');
                }
                n += 1;
                sql.push('?');
                sql.push_str(&n.to_string());
            }
            sql.push(')');
        }
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for r in chunk {
            q = bind(q, r);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

async fn ingest_sqlite(
    p: &sqlx::SqlitePool,
    cid: &str,
    identity_source: bool,
    mut rx: mpsc::Receiver<Batch>,
) -> Result<IngestStats> {
    let mut st = IngestStats::default();
    let mut tx = p.begin().await?;
    for t in ["grants", "entitlements", "resources", "account_links"] {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {t} WHERE connector_id = $1")))
            .bind(cid)
            .execute(&mut *tx)
            .await?;
    }
    if identity_source {
        sqlx::query("DELETE FROM identities WHERE connector_id = $1")
            .bind(cid)
            .execute(&mut *tx)
            .await?;
    }
    while let Some(b) = rx.recv().await {
        match b {
            Batch::Failed(e) => return Err(PlatformError::SyncFile(e)),
            Batch::Resources(v) => {
                st.resources += v.len() as u64;
                sqlite_insert(&mut tx, "INSERT INTO resources (connector_id, resource_type, resource_id, display_name, parent, login, email, profile)", 8, &v, |q, r| {
                    q.bind(cid).bind(r.resource_type.clone()).bind(r.resource_id.clone()).bind(r.display_name.clone()).bind(r.parent.clone()).bind(r.login.clone()).bind(r.email.clone()).bind(r.profile.clone())
                }).await?;
            }
            Batch::Entitlements(v) => {
                st.entitlements += v.len() as u64;
                sqlite_insert(&mut tx, "INSERT INTO entitlements (connector_id, id, resource_type, resource_id, display_name, slug)", 6, &v, |q, r| {
                    q.bind(cid).bind(r.id.clone()).bind(r.resource_type.clone()).bind(r.resource_id.clone()).bind(r.display_name.clone()).bind(r.slug.clone())
                }).await?;
            }
            Batch::Grants(v) => {
                st.grants += v.len() as u64;
                sqlite_insert(&mut tx, "INSERT INTO grants (connector_id, id, entitlement_id, principal_type, principal_id, direct, via)", 7, &v, |q, r| {
                    q.bind(cid).bind(r.id.clone()).bind(r.entitlement_id.clone()).bind(r.principal_type.clone()).bind(r.principal_id.clone()).bind(r.direct).bind(r.via.clone())
                }).await?;
            }
            Batch::Identities(v) => {
                st.identities += v.len() as u64;
                for i in &v {
                    upsert_identity_sqlite(&mut tx, i).await?;
                }
            }
        }
    }
    finish_ingest!(tx, cid, identity_source, st);
    tx.commit().await?;
    Ok(st)
}

async fn upsert_identity_sqlite(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, i: &Identity) -> Result<()> {
    sqlx::query(UPSERT_IDENTITY)
        .bind(&i.id)
        .bind(&i.connector_id)
        .bind(&i.kind)
        .bind(&i.display_name)
        .bind(&i.upn)
        .bind(&i.email)
        .bind(&i.department)
        .bind(&i.job_title)
        .bind(&i.manager_id)
        .bind(&i.status)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

const UPSERT_IDENTITY: &str = "INSERT INTO identities (id, connector_id, kind, display_name, upn, email, department, job_title, manager_id, status) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT (id) DO UPDATE SET connector_id = excluded.connector_id, kind = excluded.kind, display_name = excluded.display_name, upn = excluded.upn, email = excluded.email, department = excluded.department, job_title = excluded.job_title, manager_id = excluded.manager_id, status = excluded.status";

async fn ingest_pg(
    p: &sqlx::PgPool,
    cid: &str,
    identity_source: bool,
    mut rx: mpsc::Receiver<Batch>,
) -> Result<IngestStats> {
    let mut st = IngestStats::default();
    let mut tx = p.begin().await?;
    // One ingest per connector at a time; readers keep seeing the committed snapshot (MVCC).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(cid)
        .execute(&mut *tx)
        .await?;
    for t in ["grants", "entitlements", "resources", "account_links"] {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {t} WHERE connector_id = $1")))
            .bind(cid)
            .execute(&mut *tx)
            .await?;
    }
    if identity_source {
        sqlx::query("DELETE FROM identities WHERE connector_id = $1")
            .bind(cid)
            .execute(&mut *tx)
            .await?;
    }
    while let Some(b) = rx.recv().await {
        match b {
            Batch::Failed(e) => return Err(PlatformError::SyncFile(e)),
            Batch::Resources(v) => {
                st.resources += v.len() as u64;
                let col = |f: fn(&ResourceRow) -> Option<String>| v.iter().map(f).collect::<Vec<_>>();
                sqlx::query("INSERT INTO resources (connector_id, resource_type, resource_id, display_name, parent, login, email, profile) SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])")
                    .bind(cid)
                    .bind(col(|r| Some(r.resource_type.clone())))
                    .bind(col(|r| Some(r.resource_id.clone())))
                    .bind(col(|r| Some(r.display_name.clone())))
                    .bind(col(|r| r.parent.clone()))
                    .bind(col(|r| r.login.clone()))
                    .bind(col(|r| r.email.clone()))
                    .bind(col(|r| Some(r.profile.clone())))
                    .execute(&mut *tx).await?;
            }
            Batch::Entitlements(v) => {
                st.entitlements += v.len() as u64;
                let col = |f: fn(&EntitlementRow) -> String| v.iter().map(f).collect::<Vec<_>>();
                sqlx::query("INSERT INTO entitlements (connector_id, id, resource_type, resource_id, display_name, slug) SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[])")
                    .bind(cid)
                    .bind(col(|r| r.id.clone()))
                    .bind(col(|r| r.resource_type.clone()))
                    .bind(col(|r| r.resource_id.clone()))
                    .bind(col(|r| r.display_name.clone()))
                    .bind(col(|r| r.slug.clone()))
                    .execute(&mut *tx).await?;
            }
            Batch::Grants(v) => {
                st.grants += v.len() as u64;
                let col = |f: fn(&GrantRow) -> String| v.iter().map(f).collect::<Vec<_>>();
                sqlx::query("INSERT INTO grants (connector_id, id, entitlement_id, principal_type, principal_id, direct, via) SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::bool[], $7::text[])")
                    .bind(cid)
                    .bind(col(|r| r.id.clone()))
                    .bind(col(|r| r.entitlement_id.clone()))
                    .bind(col(|r| r.principal_type.clone()))
                    .bind(col(|r| r.principal_id.clone()))
                    .bind(v.iter().map(|r| r.direct).collect::<Vec<_>>())
                    .bind(v.iter().map(|r| r.via.clone()).collect::<Vec<_>>())
                    .execute(&mut *tx).await?;
            }
            Batch::Identities(v) => {
                st.identities += v.len() as u64;
                for i in &v {
                    sqlx::query(UPSERT_IDENTITY)
                        .bind(&i.id)
                        .bind(&i.connector_id)
                        .bind(&i.kind)
                        .bind(&i.display_name)
                        .bind(&i.upn)
                        .bind(&i.email)
                        .bind(&i.department)
                        .bind(&i.job_title)
                        .bind(&i.manager_id)
                        .bind(&i.status)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
    }
    finish_ingest!(tx, cid, identity_source, st);
    tx.commit().await?;
    Ok(st)
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        self.db.backend()
    }

    async fn meta_set_once(&self, key: &str, value: &str) -> Result<bool> {
        with_db!(&self.db, p => {
            let r = sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(key).bind(value).execute(p).await?;
            Ok(r.rows_affected() == 1)
        })
    }

    async fn insert_token(&self, t: &TokenInfo, hash: &str) -> Result<()> {
        with_db!(&self.db, p => {
            sqlx::query("INSERT INTO tokens (id, name, role, identity_id, hash, created_at, revoked) VALUES ($1, $2, $3, $4, $5, $6, FALSE)")
                .bind(&t.id).bind(&t.name).bind(t.role.as_str()).bind(&t.identity_id).bind(hash).bind(&t.created_at)
                .execute(p).await?;
        });
        Ok(())
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>> {
        let row: Option<(String, String, String, Option<String>, String)> = with_db!(&self.db, p => {
            sqlx::query_as("SELECT id, name, role, identity_id, created_at FROM tokens WHERE hash = $1 AND revoked = FALSE")
                .bind(hash).fetch_optional(p).await?
        });
        Ok(row.and_then(|(id, name, role, identity_id, created_at)| {
            Some(TokenInfo {
                id,
                name,
                role: Role::parse(&role)?,
                identity_id,
                created_at,
            })
        }))
    }

    async fn insert_connector(&self, c: &ConnectorRow) -> Result<()> {
        let k = &c.connector;
        let r = with_db!(&self.db, p => {
            sqlx::query(AssertSqlSafe(format!("INSERT INTO connectors ({CONN_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)")))
                .bind(&k.id).bind(&k.kind).bind(&k.name).bind(json(&k.settings)).bind(&c.secrets_enc)
                .bind(json(&k.secrets_set)).bind(json(&k.owners)).bind(k.identity_source).bind(&k.app_id)
                .bind(k.sync_interval_secs).bind(k.status.as_str()).bind(&k.status_reason).bind(&k.last_sync_at)
                .bind(&k.current_sync_id).bind(&k.created_at)
                .execute(p).await.map(|_| ())
        });
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(PlatformError::Conflict(
                format!("a connector named {:?} exists", k.name),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn connector(&self, id: &str) -> Result<Option<ConnectorRow>> {
        let t: Option<ConnTuple> = with_db!(&self.db, p => {
            sqlx::query_as(AssertSqlSafe(format!("SELECT {CONN_COLS} FROM connectors WHERE id = $1"))).bind(id).fetch_optional(p).await?
        });
        Ok(t.map(conn_from))
    }

    async fn connectors(&self, q: &ListQuery) -> Result<Page<Connector>> {
        let (limit, offset) = q.window()?;
        let rows: Vec<ConnTuple> = with_db!(&self.db, p => {
            sqlx::query_as(AssertSqlSafe(format!("SELECT {CONN_COLS} FROM connectors WHERE lower(name) LIKE $1 ORDER BY name, id LIMIT $2 OFFSET $3")))
                .bind(q.pattern()).bind(limit + 1).bind(offset).fetch_all(p).await?
        });
        Ok(page_of(
            rows.into_iter().map(|t| conn_from(t).connector).collect(),
            limit,
            offset,
        ))
    }

    async fn has_identity_source(&self) -> Result<bool> {
        let n: (i64,) = with_db!(&self.db, p => {
            sqlx::query_as("SELECT count(*) FROM connectors WHERE identity_source = TRUE").fetch_one(p).await?
        });
        Ok(n.0 > 0)
    }

    async fn set_connector_status(
        &self,
        id: &str,
        status: ConnectorStatus,
        reason: Option<&str>,
        synced: Option<(&str, &str)>,
    ) -> Result<()> {
        with_db!(&self.db, p => {
            match synced {
                Some((sync_id, at)) => sqlx::query("UPDATE connectors SET status = $1, status_reason = $2, current_sync_id = $3, last_sync_at = $4 WHERE id = $5")
                    .bind(status.as_str()).bind(reason).bind(sync_id).bind(at).bind(id).execute(p).await?,
                None => sqlx::query("UPDATE connectors SET status = $1, status_reason = $2 WHERE id = $3")
                    .bind(status.as_str()).bind(reason).bind(id).execute(p).await?,
            };
        });
        Ok(())
    }

    async fn insert_sync(&self, s: &SyncRecord) -> Result<()> {
        with_db!(&self.db, p => {
            sqlx::query("INSERT INTO syncs (id, seq, connector_id, source, status, started_at, ended_at, error, stats, log) VALUES ($1, (SELECT coalesce(max(seq), 0) + 1 FROM syncs), $2,$3,$4,$5,$6,$7,$8,$9)")
                .bind(&s.id).bind(&s.connector_id).bind(&s.source).bind(&s.status).bind(&s.started_at)
                .bind(&s.ended_at).bind(&s.error).bind(s.stats.as_ref().map(json)).bind(s.log.join("\n"))
                .execute(p).await?;
        });
        Ok(())
    }

    async fn finish_sync(&self, s: &SyncRecord) -> Result<()> {
        with_db!(&self.db, p => {
            sqlx::query("UPDATE syncs SET status = $1, ended_at = $2, error = $3, stats = $4, log = $5 WHERE id = $6")
                .bind(&s.status).bind(&s.ended_at).bind(&s.error).bind(s.stats.as_ref().map(json)).bind(s.log.join("\n")).bind(&s.id)
                .execute(p).await?;
        });
        Ok(())
    }

    async fn syncs(&self, connector_id: &str, q: &ListQuery) -> Result<Page<SyncRecord>> {
        let (limit, offset) = q.window()?;
        let rows: Vec<SyncTuple> = with_db!(&self.db, p => {
            sqlx::query_as("SELECT id, connector_id, source, status, started_at, ended_at, error, stats, log FROM syncs WHERE connector_id = $1 ORDER BY seq DESC LIMIT $2 OFFSET $3")
                .bind(connector_id).bind(limit + 1).bind(offset).fetch_all(p).await?
        });
        Ok(page_of(rows.into_iter().map(sync_from).collect(), limit, offset))
    }

    async fn replace_snapshot(
        &self,
        connector_id: &str,
        identity_source: bool,
        rx: mpsc::Receiver<Batch>,
        _now: &str,
    ) -> Result<IngestStats> {
        match &self.db {
            Db::Sqlite(p) => ingest_sqlite(p, connector_id, identity_source, rx).await,
            Db::Postgres(p) => ingest_pg(p, connector_id, identity_source, rx).await,
        }
    }

    async fn identities(&self, q: &ListQuery) -> Result<Page<Identity>> {
        let (limit, offset) = q.window()?;
        let rows: Vec<IdTuple> = with_db!(&self.db, p => {
            sqlx::query_as(AssertSqlSafe(format!("SELECT {ID_COLS} FROM identities WHERE lower(display_name) LIKE $1 OR lower(coalesce(upn, '')) LIKE $1 ORDER BY display_name, id LIMIT $2 OFFSET $3")))
                .bind(q.pattern()).bind(limit + 1).bind(offset).fetch_all(p).await?
        });
        Ok(page_of(
            rows.into_iter().map(identity_from).collect(),
            limit,
            offset,
        ))
    }

    async fn identity(&self, id_or_upn: &str) -> Result<Option<Identity>> {
        let row: Option<IdTuple> = with_db!(&self.db, p => {
            sqlx::query_as(AssertSqlSafe(format!("SELECT {ID_COLS} FROM identities WHERE id = $1 OR lower(upn) = lower($1) ORDER BY id LIMIT 1")))
                .bind(id_or_upn).fetch_optional(p).await?
        });
        Ok(row.map(identity_from))
    }

    async fn grants_of_identity(&self, identity_id: &str) -> Result<Vec<HeldGrant>> {
        type T = (
            String,
            String,
            String,
            String,
            String,
            bool,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<T> = with_db!(&self.db, p => {
            sqlx::query_as("SELECT g.connector_id, g.id, g.entitlement_id, g.principal_type, g.principal_id, g.direct, g.via, e.display_name, e.resource_type, e.resource_id FROM account_links l JOIN grants g ON g.connector_id = l.connector_id AND g.principal_type = l.resource_type AND g.principal_id = l.resource_id LEFT JOIN entitlements e ON e.connector_id = g.connector_id AND e.id = g.entitlement_id WHERE l.identity_id = $1 ORDER BY g.connector_id, g.id")
                .bind(identity_id).fetch_all(p).await?
        });
        Ok(rows
            .into_iter()
            .map(|t| {
                let name = t.7.unwrap_or_else(|| t.2.clone());
                (
                    t.0,
                    GrantRow {
                        id: t.1,
                        entitlement_id: t.2,
                        principal_type: t.3,
                        principal_id: t.4,
                        direct: t.5,
                        via: t.6,
                    },
                    name,
                    t.8.unwrap_or_default(),
                    t.9.unwrap_or_default(),
                )
            })
            .collect())
    }

    async fn apps(&self, managed: Option<bool>, q: &ListQuery) -> Result<Page<App>> {
        let (limit, offset) = q.window()?;
        let rows: Vec<AppTuple> = with_db!(&self.db, p => {
            sqlx::query_as(AssertSqlSafe(format!("SELECT {APP_COLS} FROM apps WHERE lower(name) LIKE $1 AND ($2 IS NULL OR managed = $2) ORDER BY name, id LIMIT $3 OFFSET $4")))
                .bind(q.pattern()).bind(managed).bind(limit + 1).bind(offset).fetch_all(p).await?
        });
        Ok(page_of(rows.into_iter().map(app_from).collect(), limit, offset))
    }

    async fn app(&self, id: &str) -> Result<Option<App>> {
        let row: Option<AppTuple> = with_db!(&self.db, p => {
            sqlx::query_as(AssertSqlSafe(format!("SELECT {APP_COLS} FROM apps WHERE id = $1"))).bind(id).fetch_optional(p).await?
        });
        Ok(row.map(app_from))
    }

    async fn app_ids_by_resource(&self) -> Result<Vec<(String, String, String)>> {
        let rows: Vec<(String, String, String)> = with_db!(&self.db, p => {
            sqlx::query_as("SELECT id, connector_id, resource_id FROM apps WHERE connector_id IS NOT NULL AND resource_id IS NOT NULL").fetch_all(p).await?
        });
        Ok(rows)
    }

    async fn insert_app(&self, a: &App) -> Result<()> {
        with_db!(&self.db, p => {
            sqlx::query(AssertSqlSafe(format!("INSERT INTO apps ({APP_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)")))
                .bind(&a.id).bind(&a.name).bind(&a.description).bind(a.managed).bind(&a.connector_id).bind(&a.resource_id)
                .bind(json(&a.owners)).bind(&a.created_at).execute(p).await?;
        });
        Ok(())
    }

    async fn manage_app(&self, id: &str, owners: &[String], ents: &[AppEntitlement]) -> Result<()> {
        with_db!(&self.db, p => {
            let mut tx = p.begin().await?;
            let r = sqlx::query("UPDATE apps SET managed = TRUE, owners = $1 WHERE id = $2 AND managed = FALSE")
                .bind(json(&owners)).bind(id).execute(&mut *tx).await?;
            if r.rows_affected() == 0 {
                return Err(PlatformError::Conflict(format!("app {id} is already managed")));
            }
            for e in ents {
                sqlx::query("INSERT INTO app_entitlements (app_id, id, name, kind, connector_id, idp_entitlement_id) VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (app_id, id) DO NOTHING")
                    .bind(id).bind(&e.id).bind(&e.name).bind(&e.kind).bind(&e.connector_id).bind(&e.idp_entitlement_id)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn app_entitlements(&self, app_id: &str) -> Result<Vec<AppEntitlement>> {
        type T = (String, String, String, Option<String>, Option<String>, i64);
        let rows: Vec<T> = with_db!(&self.db, p => {
            sqlx::query_as("SELECT a.id, a.name, a.kind, a.connector_id, a.idp_entitlement_id, (SELECT count(*) FROM grants g WHERE g.connector_id = a.connector_id AND g.entitlement_id = a.idp_entitlement_id) FROM app_entitlements a WHERE a.app_id = $1 ORDER BY a.kind, a.name, a.id")
                .bind(app_id).fetch_all(p).await?
        });
        Ok(rows
            .into_iter()
            .map(|t| AppEntitlement {
                id: t.0,
                name: t.1,
                kind: t.2,
                connector_id: t.3,
                idp_entitlement_id: t.4,
                holders: t.5,
            })
            .collect())
    }

    async fn insert_app_entitlement(&self, app_id: &str, e: &AppEntitlement) -> Result<()> {
        let r = with_db!(&self.db, p => {
            sqlx::query("INSERT INTO app_entitlements (app_id, id, name, kind, connector_id, idp_entitlement_id) VALUES ($1,$2,$3,$4,$5,$6)")
                .bind(app_id).bind(&e.id).bind(&e.name).bind(&e.kind).bind(&e.connector_id).bind(&e.idp_entitlement_id)
                .execute(p).await.map(|_| ())
        });
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Err(PlatformError::Conflict(
                format!("app entitlement {} exists", e.id),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn entitlements_of(
        &self,
        connector_id: &str,
        rtype: &str,
        rid: &str,
    ) -> Result<Vec<EntitlementRow>> {
        let rows: Vec<(String, String, String, String, String)> = with_db!(&self.db, p => {
            sqlx::query_as("SELECT id, resource_type, resource_id, display_name, slug FROM entitlements WHERE connector_id = $1 AND resource_type = $2 AND resource_id = $3 ORDER BY id")
                .bind(connector_id).bind(rtype).bind(rid).fetch_all(p).await?
        });
        Ok(rows
            .into_iter()
            .map(|t| EntitlementRow {
                id: t.0,
                resource_type: t.1,
                resource_id: t.2,
                display_name: t.3,
                slug: t.4,
            })
            .collect())
    }

    async fn entitlement(&self, connector_id: &str, id: &str) -> Result<Option<EntitlementRow>> {
        let row: Option<(String, String, String, String, String)> = with_db!(&self.db, p => {
            sqlx::query_as("SELECT id, resource_type, resource_id, display_name, slug FROM entitlements WHERE connector_id = $1 AND id = $2 LIMIT 1")
                .bind(connector_id).bind(id).fetch_optional(p).await?
        });
        Ok(row.map(|t| EntitlementRow {
            id: t.0,
            resource_type: t.1,
            resource_id: t.2,
            display_name: t.3,
            slug: t.4,
        }))
    }

    async fn groups_assigned(
        &self,
        connector_id: &str,
        app_resource_id: &str,
    ) -> Result<Vec<(String, String, Vec<String>, i64)>> {
        let rows: Vec<(String, String, Option<String>, i64)> = with_db!(&self.db, p => {
            sqlx::query_as("SELECT g.principal_id, g.entitlement_id, (SELECT r.display_name FROM resources r WHERE r.connector_id = g.connector_id AND r.resource_type = 'group' AND r.resource_id = g.principal_id LIMIT 1), (SELECT count(*) FROM grants m WHERE m.connector_id = g.connector_id AND m.entitlement_id = 'group:' || g.principal_id || ':member') FROM grants g JOIN entitlements e ON e.connector_id = g.connector_id AND e.id = g.entitlement_id WHERE g.connector_id = $1 AND e.resource_type = 'enterprise_application' AND e.resource_id = $2 AND g.principal_type = 'group' AND g.direct = TRUE ORDER BY g.principal_id, g.entitlement_id")
                .bind(connector_id).bind(app_resource_id).fetch_all(p).await?
        });
        let mut out: Vec<(String, String, Vec<String>, i64)> = Vec::new();
        for (gid, ent, name, members) in rows {
            let idp = format!("group:{gid}:member");
            match out.last_mut() {
                Some(last) if last.0 == idp => last.2.push(ent),
                _ => out.push((idp, name.unwrap_or(gid), vec![ent], members)),
            }
        }
        Ok(out)
    }

    async fn links(&self, app_id: &str) -> Result<Vec<Binding>> {
        Ok(with_db!(&self.db, p => {
            sqlx::query_as("SELECT idp_entitlement_id, action, name, app_entitlement_id FROM linked_entitlements WHERE app_id = $1 ORDER BY idp_entitlement_id")
                .bind(app_id).fetch_all(p).await?
        }))
    }

    async fn upsert_link(
        &self,
        app_id: &str,
        idp: &str,
        connector_id: &str,
        action: &str,
        name: Option<&str>,
        app_ent: Option<&str>,
        now: &str,
    ) -> Result<()> {
        with_db!(&self.db, p => {
            let mut tx = p.begin().await?;
            let prev: Option<(String, Option<String>)> = sqlx::query_as("SELECT action, app_entitlement_id FROM linked_entitlements WHERE app_id = $1 AND idp_entitlement_id = $2")
                .bind(app_id).bind(idp).fetch_optional(&mut *tx).await?;
            if let Some((pa, Some(pe))) = prev
                && pa == "virtual_role" && Some(pe.as_str()) != app_ent {
                sqlx::query("DELETE FROM app_entitlements WHERE app_id = $1 AND id = $2 AND kind = 'virtual_role'")
                    .bind(app_id).bind(pe).execute(&mut *tx).await?;
            }
            if action == "virtual_role"
                && let (Some(e), Some(n)) = (app_ent, name)
            {
                {
                    sqlx::query("INSERT INTO app_entitlements (app_id, id, name, kind, connector_id, idp_entitlement_id) VALUES ($1,$2,$3,'virtual_role',$4,$5) ON CONFLICT (app_id, id) DO UPDATE SET name = excluded.name")
                        .bind(app_id).bind(e).bind(n).bind(connector_id).bind(idp).execute(&mut *tx).await?;
                }
            }
            sqlx::query("INSERT INTO linked_entitlements (app_id, idp_entitlement_id, connector_id, action, name, app_entitlement_id, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (app_id, idp_entitlement_id) DO UPDATE SET action = excluded.action, name = excluded.name, app_entitlement_id = excluded.app_entitlement_id, updated_at = excluded.updated_at")
                .bind(app_id).bind(idp).bind(connector_id).bind(action).bind(name).bind(app_ent).bind(now).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    async fn links_of_idp_entitlement(&self, idp: &str) -> Result<Vec<Binding>> {
        Ok(with_db!(&self.db, p => {
            sqlx::query_as("SELECT app_id, action, name, app_entitlement_id FROM linked_entitlements WHERE idp_entitlement_id = $1 ORDER BY app_id")
                .bind(idp).fetch_all(p).await?
        }))
    }

    async fn holders(&self, connector_id: &str, entitlement_id: &str, q: &ListQuery) -> Result<Page<Holder>> {
        let (limit, offset) = q.window()?;
        let rows: Vec<(String, String, bool, Option<String>, Option<String>)> = with_db!(&self.db, p => {
            sqlx::query_as("SELECT g.principal_type, g.principal_id, g.direct, g.via, (SELECT r.display_name FROM resources r WHERE r.connector_id = g.connector_id AND r.resource_type = g.principal_type AND r.resource_id = g.principal_id LIMIT 1) AS n FROM grants g WHERE g.connector_id = $1 AND g.entitlement_id = $2 ORDER BY g.principal_type, g.principal_id LIMIT $3 OFFSET $4")
                .bind(connector_id).bind(entitlement_id).bind(limit + 1).bind(offset).fetch_all(p).await?
        });
        let items = rows
            .into_iter()
            .map(|t| Holder {
                display_name: t.4.unwrap_or_else(|| t.1.clone()),
                principal_type: t.0,
                principal_id: t.1,
                direct: t.2,
                via: t.3,
            })
            .collect();
        Ok(page_of(items, limit, offset))
    }

    async fn resource_name(&self, connector_id: &str, rtype: &str, rid: &str) -> Result<Option<String>> {
        let r: Option<(String,)> = with_db!(&self.db, p => {
            sqlx::query_as("SELECT display_name FROM resources WHERE connector_id = $1 AND resource_type = $2 AND resource_id = $3 LIMIT 1")
                .bind(connector_id).bind(rtype).bind(rid).fetch_optional(p).await?
        });
        Ok(r.map(|t| t.0))
    }
}
