//! Storage behind the [`Store`] trait; [`SqlStore`] implements it on SQLite and on PostgreSQL.
#![allow(clippy::too_many_arguments)]

use async_trait::async_trait;
use sqlx::AssertSqlSafe;
use tokio::sync::mpsc;

use crate::db::{Db, with_db};
use crate::error::{PlatformError, Result};
use crate::ingest::{self, C1zStream, Extracted, GrantRef, Sink, Source, SyncFile};
use crate::model::*;

/// A binding: (app or IdP entitlement id, action, virtual role name, app entitlement id).
pub type Binding = (String, String, Option<String>, Option<String>);
/// A grant held by an identity: (connector, grant, entitlement name, resource type, resource id, the app
/// of that resource when it is a discovered enterprise application).
pub type HeldGrant = (String, GrantRow, String, String, String, Option<String>);

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

/// What the reader hands an ingest.
#[derive(Debug)]
pub enum Batch {
    /// The sync file, to be read from its zstd stream ([`crate::ingest::extract_stream`]); when that
    /// reader answers [`Extracted::Fallback`] the store unpacks the file and reads it again.
    Stream(Box<C1zStream>),
    /// The opened sync file: the store reads it with [`crate::ingest::extract`].
    Sync(Box<SyncFile>),
    /// The file could not be opened: nothing changes.
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
    /// Tokens (without hashes), with whether each is revoked, newest first.
    async fn tokens(&self) -> Result<Vec<(TokenInfo, bool)>>;
    /// Revokes a token; false if there is none with this id.
    async fn revoke_token(&self, id: &str) -> Result<bool>;
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
    /// Everything an identity's accounts hold, each with the app of its enterprise application resource
    /// (looked up per grant: the cost follows the identity's access, not the catalog's size).
    async fn grants_of_identity(&self, identity_id: &str) -> Result<Vec<HeldGrant>>;
    /// Apps.
    async fn apps(&self, managed: Option<bool>, q: &ListQuery) -> Result<Page<App>>;
    /// One app.
    async fn app(&self, id: &str) -> Result<Option<App>>;
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

// ---- Snapshot replacement (ingest) ----
//
// Both backends replace a connector's snapshot in ONE transaction: delete its rows, bulk-load the new ones
// straight from the unpacked sync file (`ingest::extract`), upsert identities, link accounts, discover apps,
// commit. Readers see the previous snapshot until the commit (SQLite WAL / PostgreSQL MVCC); any error drops
// the transaction, which rolls it back.
// - SQLite: the load runs on a blocking thread with its own rusqlite connection to the same database file
//   (prepared statements, one row per step: no per-statement parsing, no sqlx round trips). When the new
//   snapshot is at least as large as the rest of the table, the secondary indexes of `grants` are dropped
//   inside the transaction and rebuilt before the commit (a sorted build instead of random B-tree inserts);
//   concurrent readers keep the old schema and rows until the commit.
// - PostgreSQL: `COPY … FROM STDIN` (text format) fed from the blocking reader over a bounded channel, so
//   encoding and the server's insert work run on different cores. `grants` is partitioned by connector
//   (migration 5): the new snapshot's grants are copied (`FREEZE`) into a new table on a connection of
//   their own, indexed once after the load and committed (not yet a partition: invisible to readers)
//   while the snapshot's transaction loads the other tables; that transaction then swaps it in — old
//   partition detached and dropped, new one attached — so no index is maintained row by row.
//   `grant_partitions` names each connector's partition. On failure the transaction rolls back (old
//   partition kept) and the new table is dropped ([`load_pg`]).

/// PostgreSQL, identity source: [`LINK_BY_OBJECT_ID`]'s rows not there yet, from the identities staged by
/// this ingest (one per user or managed identity: no join of every resource to `identities`, which the
/// planner, without statistics for rows loaded in the transaction, ran as a nested loop of index probes).
const PG_LINK_STAGED_IDENTITIES: &str = "INSERT INTO account_links (connector_id, resource_type, resource_id, identity_id, matched_by) SELECT $1, s.kind, s.id, s.id, 'object_id' FROM steward_ingest_identities s WHERE s.kind IN ('user', 'managed_identity') AND NOT EXISTS (SELECT 1 FROM account_links l WHERE l.connector_id = $1 AND l.resource_type = s.kind AND l.resource_id = s.id AND l.identity_id = s.id AND l.matched_by = 'object_id')";
/// PostgreSQL, identity source: the connector's account links that [`PG_LINK_STAGED_IDENTITIES`] would not
/// make now (their user is gone, or they came from an earlier way of linking).
const PG_UNLINK_UNSTAGED: &str = "DELETE FROM account_links l WHERE l.connector_id = $1 AND NOT (l.matched_by = 'object_id' AND l.identity_id = l.resource_id AND EXISTS (SELECT 1 FROM steward_ingest_identities s WHERE s.kind IN ('user', 'managed_identity') AND s.kind = l.resource_type AND s.id = l.resource_id))";
/// PostgreSQL, identity source: the staged identities into `identities`; a row whose values did not change
/// is left as it is (no new row version, no index entries).
const PG_UPSERT_STAGED_IDENTITIES: &str = "INSERT INTO identities AS i (id, connector_id, kind, display_name, upn, email, department, job_title, manager_id, status) SELECT DISTINCT ON (id) id, connector_id, kind, display_name, upn, email, department, job_title, manager_id, status FROM steward_ingest_identities ORDER BY id, ctid DESC ON CONFLICT (id) DO UPDATE SET connector_id = excluded.connector_id, kind = excluded.kind, display_name = excluded.display_name, upn = excluded.upn, email = excluded.email, department = excluded.department, job_title = excluded.job_title, manager_id = excluded.manager_id, status = excluded.status WHERE (i.connector_id, i.kind, i.display_name, i.upn, i.email, i.department, i.job_title, i.manager_id, i.status) IS DISTINCT FROM (excluded.connector_id, excluded.kind, excluded.display_name, excluded.upn, excluded.email, excluded.department, excluded.job_title, excluded.manager_id, excluded.status)";
const LINK_BY_OBJECT_ID: &str = "INSERT INTO account_links (connector_id, resource_type, resource_id, identity_id, matched_by) SELECT r.connector_id, r.resource_type, r.resource_id, i.id, 'object_id' FROM resources r JOIN identities i ON i.id = r.resource_id WHERE r.connector_id = $1 AND r.resource_type IN ('user', 'managed_identity')";

/// Links the connector's users to identities by a lowercased attribute not linked yet (`upn` or `email`).
fn link_by_sql(col: &str) -> String {
    let rcol = if col == "upn" { "login" } else { "email" };
    format!(
        "INSERT INTO account_links (connector_id, resource_type, resource_id, identity_id, matched_by) SELECT r.connector_id, r.resource_type, r.resource_id, i.id, '{col}' FROM resources r JOIN identities i ON lower(i.{col}) = r.{rcol} WHERE r.connector_id = $1 AND r.resource_type = 'user' AND NOT EXISTS (SELECT 1 FROM account_links l WHERE l.connector_id = r.connector_id AND l.resource_type = r.resource_type AND l.resource_id = r.resource_id)"
    )
}

const NEW_APPS: &str = "SELECT r.resource_id, r.display_name, r.profile FROM resources r WHERE r.connector_id = $1 AND r.resource_type = 'enterprise_application' AND NOT EXISTS (SELECT 1 FROM apps a WHERE a.connector_id = r.connector_id AND a.resource_id = r.resource_id)";
const INSERT_APP: &str = "INSERT INTO apps (id, name, description, managed, connector_id, resource_id, owners, created_at) VALUES ($1, $2, $3, FALSE, $4, $5, '[]', $6)";
const RENAME_APPS: &str = "UPDATE apps SET name = (SELECT r.display_name FROM resources r WHERE r.connector_id = apps.connector_id AND r.resource_type = 'enterprise_application' AND r.resource_id = apps.resource_id) WHERE connector_id = $1 AND managed = FALSE AND EXISTS (SELECT 1 FROM resources r WHERE r.connector_id = apps.connector_id AND r.resource_type = 'enterprise_application' AND r.resource_id = apps.resource_id)";
const SNAPSHOT_TABLES: [&str; 4] = ["grants", "entitlements", "resources", "account_links"];

fn app_description(profile: &str) -> String {
    serde_json::from_str::<serde_json::Value>(profile)
        .ok()
        .and_then(|v| v.get("description").and_then(|d| d.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

const UPSERT_IDENTITY: &str = "INSERT INTO identities (id, connector_id, kind, display_name, upn, email, department, job_title, manager_id, status) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT (id) DO UPDATE SET connector_id = excluded.connector_id, kind = excluded.kind, display_name = excluded.display_name, upn = excluded.upn, email = excluded.email, department = excluded.department, job_title = excluded.job_title, manager_id = excluded.manager_id, status = excluded.status";

/// The first message of an ingest: where to read the sync from, or why it could not be opened.
async fn sync_source(rx: &mut mpsc::Receiver<Batch>) -> Result<Source> {
    match rx.recv().await {
        Some(Batch::Stream(s)) => Ok(Source::Stream(s)),
        Some(Batch::Sync(f)) => Ok(Source::File(f)),
        Some(Batch::Failed(e)) => Err(PlatformError::SyncFile(e)),
        None => Err(PlatformError::SyncFile("the sync file reader stopped".into())),
    }
}

/// After a streamed read answered [`Extracted::Fallback`]: the file unpacked.
async fn unpacked(path: std::path::PathBuf, why: &str) -> Result<Source> {
    tracing::info!(file = %path.display(), reason = why, "reading the sync file unpacked");
    let f = joined(
        tokio::task::spawn_blocking(move || SyncFile::open(&path).map_err(PlatformError::SyncFile)).await,
    )?;
    Ok(Source::File(Box::new(f)))
}

fn joined<T>(r: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    r.map_err(|e| PlatformError::Io(std::io::Error::other(format!("ingest task failed: {e}"))))?
}

fn lite(e: rusqlite::Error) -> PlatformError {
    PlatformError::Io(std::io::Error::other(format!(
        "writing the snapshot to SQLite: {e}"
    )))
}

async fn ingest_sqlite(
    p: &sqlx::SqlitePool,
    cid: &str,
    identity_source: bool,
    mut rx: mpsc::Receiver<Batch>,
) -> Result<IngestStats> {
    let mut source = sync_source(&mut rx).await?;
    let path = p.connect_options().get_filename().to_owned();
    let name = path.to_string_lossy();
    if name.is_empty() || name.contains(":memory:") || name.contains("sqlx-in-memory") {
        return Err(PlatformError::Invalid(
            "ingest needs a SQLite database file (not an in-memory database)".into(),
        ));
    }
    loop {
        let file = match &source {
            Source::Stream(s) => Some(s.path().to_owned()),
            Source::File(_) => None,
        };
        let (db, cid) = (path.clone(), cid.to_owned());
        let r = joined(
            tokio::task::spawn_blocking(move || load_sqlite(&db, &cid, identity_source, source)).await,
        )?;
        match (r, file) {
            (Ok(st), _) => return Ok(st),
            (Err(why), Some(file)) => source = unpacked(file, &why).await?,
            (Err(why), None) => return Err(PlatformError::SyncFile(why)),
        }
    }
}

/// A row of the sync file, owned, on its way from the reader thread to the SQLite writer.
enum LiteRow {
    Resource(ResourceRow),
    Identity(Identity),
    Entitlement(EntitlementRow),
    Grant(GrantRow),
}

/// Rows per message from the reader thread to the writer.
const LITE_BATCH: usize = 4096;

/// The reader thread's sink: copies rows into batches for the writer thread.
struct ChannelSink {
    tx: std::sync::mpsc::SyncSender<Vec<LiteRow>>,
    buf: Vec<LiteRow>,
}

impl ChannelSink {
    fn push(&mut self, r: LiteRow) -> Result<()> {
        self.buf.push(r);
        if self.buf.len() >= LITE_BATCH {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        let b = std::mem::replace(&mut self.buf, Vec::with_capacity(LITE_BATCH));
        self.tx
            .send(b)
            .map_err(|_| PlatformError::SyncFile("the database writer stopped".into()))
    }
}

impl Sink for ChannelSink {
    fn resource(&mut self, r: &ResourceRow) -> Result<()> {
        self.push(LiteRow::Resource(r.clone()))
    }
    fn identity(&mut self, i: &Identity) -> Result<()> {
        self.push(LiteRow::Identity(i.clone()))
    }
    fn entitlement(&mut self, e: &EntitlementRow) -> Result<()> {
        self.push(LiteRow::Entitlement(e.clone()))
    }
    fn grant(&mut self, g: &GrantRef<'_>) -> Result<()> {
        self.push(LiteRow::Grant(GrantRow {
            id: g.id.to_owned(),
            entitlement_id: g.entitlement_id.to_owned(),
            principal_type: g.principal_type.to_owned(),
            principal_id: g.principal_id.to_owned(),
            direct: g.direct,
            via: g.via.map(str::to_owned),
        }))
    }
}

/// Bulk writer into the open SQLite transaction (prepared single-row inserts).
struct SqliteWriter<'c> {
    cid: &'c str,
    /// Bytes the grants written take in the sorter's runs of both grant indexes (key columns, row id and
    /// record headers, roughly).
    key_bytes: u64,
    resources: rusqlite::Statement<'c>,
    entitlements: rusqlite::Statement<'c>,
    grants: rusqlite::Statement<'c>,
    identities: rusqlite::Statement<'c>,
}

impl SqliteWriter<'_> {
    fn write(&mut self, row: &LiteRow) -> Result<()> {
        match row {
            LiteRow::Resource(r) => self.resources.execute(rusqlite::params![
                self.cid,
                r.resource_type,
                r.resource_id,
                r.display_name,
                r.parent,
                r.login,
                r.email,
                r.profile
            ]),
            LiteRow::Identity(i) => self.identities.execute(rusqlite::params![
                i.id,
                i.connector_id,
                i.kind,
                i.display_name,
                i.upn,
                i.email,
                i.department,
                i.job_title,
                i.manager_id,
                i.status
            ]),
            LiteRow::Entitlement(e) => self.entitlements.execute(rusqlite::params![
                self.cid,
                e.id,
                e.resource_type,
                e.resource_id,
                e.display_name,
                e.slug
            ]),
            LiteRow::Grant(g) => {
                self.key_bytes += (self.cid.len()
                    + g.entitlement_id.len()
                    + g.principal_id.len()
                    + g.principal_type.len()
                    + 2 * SORT_KEY_OVERHEAD) as u64;
                self.grants.execute(rusqlite::params![
                    self.cid,
                    ingest::explicit_grant_id(&g.id, &g.entitlement_id, &g.principal_type, &g.principal_id),
                    g.entitlement_id,
                    g.principal_type,
                    g.principal_id,
                    g.direct,
                    g.via
                ])
            }
        }
        .map_err(lite)?;
        Ok(())
    }
}

/// Reads `source` on a second thread while this one writes its rows through `w` (the two cores split the
/// decompression and protobuf decoding and the B-tree inserts). The reader's error wins: it is the cause
/// when both fail.
fn pipe_rows(
    source: Source,
    cid: &str,
    identity_source: bool,
    w: &mut SqliteWriter<'_>,
) -> Result<Extracted> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<LiteRow>>(8);
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut sink = ChannelSink {
                tx,
                buf: Vec::with_capacity(LITE_BATCH),
            };
            let n = source.extract(cid, identity_source, &mut sink)?;
            sink.flush()?;
            Ok::<_, PlatformError>(n)
        });
        let mut written = Ok(());
        for batch in rx.iter() {
            written = batch.iter().try_for_each(|r| w.write(r));
            if written.is_err() {
                break;
            }
        }
        // Dropping the receiver stops a reader still sending (it fails with "the writer stopped").
        drop(rx);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(PlatformError::SyncFile("the sync file reader panicked".into())));
        match (read, written) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
            (Ok(n), Ok(())) => Ok(n),
        }
    })
}

/// The `grants` indexes (name, DDL), as created by migration 1.
const SQLITE_GRANT_INDEXES: [(&str, &str); 2] = [
    (
        "grants_entitlement",
        "CREATE INDEX grants_entitlement ON grants (connector_id, entitlement_id)",
    ),
    (
        "grants_principal",
        "CREATE INDEX grants_principal ON grants (principal_id, principal_type)",
    ),
];

/// The ingest connection's page cache, in KiB (2 GiB).
const SQLITE_CACHE_KIB: u64 = 2 << 20;

/// The page cache while the grant indexes are built, in KiB. SQLite's sorter writes a sorted run each
/// time its keys reach the cache size; with worker threads (`PRAGMA threads`) the runs are sorted and
/// merged on those threads while the statement's own thread scans the table and builds the index. With
/// the full cache every key fits in one run, sorted on the statement's thread alone (large tenant: 2.9–3.6
/// s for both indexes; 1.8–2.2 s with 8 MiB runs — see docs/benchmarks.md).
/// Tests use SQLite's smallest run (1 MiB), so a snapshot of a few thousand grants is sorted in several.
const SQLITE_SORT_RUN_KIB: u64 = if cfg!(test) { 1 << 10 } else { 8 << 10 };

/// Builds the grant indexes after a bulk load in `tx`, whose keys take about `key_bytes`. The sorter's
/// runs go to temporary files in SQLite's temp directory (deleted when the sort ends). An I/O error there
/// would roll back the whole ingest, so without a writable temp directory with room for twice the keys
/// (the runs, and the merged runs when there are many) they are sorted in memory, on one thread.
fn create_grant_indexes(tx: &rusqlite::Transaction<'_>, key_bytes: u64) -> Result<()> {
    let setup = match sqlite_temp_dir() {
        Some((dir, free)) if free / 2 >= key_bytes => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
            tracing::debug!(dir = %dir.display(), free, key_bytes, "grant index keys sorted in runs");
            format!(
                "PRAGMA temp_store = FILE; PRAGMA threads = {threads}; PRAGMA cache_size = -{SQLITE_SORT_RUN_KIB}"
            )
        }
        found => {
            let why = match found {
                Some((dir, free)) => format!(
                    "{} has {free} bytes free, the sort needs up to {}",
                    dir.display(),
                    key_bytes.saturating_mul(2)
                ),
                None => {
                    "no writable temporary directory (SQLITE_TMPDIR, TMPDIR, /var/tmp, /tmp or the working \
                         directory)"
                        .into()
                }
            };
            tracing::warn!(
                "{why}: the grant indexes are sorted in memory on one thread (slower); point SQLITE_TMPDIR \
                 at a directory with room"
            );
            "PRAGMA temp_store = MEMORY".to_owned()
        }
    };
    tx.execute_batch(&setup).map_err(lite)?;
    for (_, ddl) in SQLITE_GRANT_INDEXES {
        tx.execute_batch(ddl).map_err(lite)?;
    }
    tx.execute_batch(&format!("PRAGMA cache_size = -{SQLITE_CACHE_KIB}"))
        .map_err(lite)?;
    Ok(())
}

/// The directory SQLite creates its temporary files in, with its free bytes, if a file can be created
/// there. SQLite takes the first of `SQLITE_TMPDIR`, `TMPDIR`, `/var/tmp`, `/usr/tmp`, `/tmp`, `.` that it
/// may write; this takes the first that exists and tries it.
fn sqlite_temp_dir() -> Option<(std::path::PathBuf, u64)> {
    let candidates = [
        std::env::var_os("SQLITE_TMPDIR").map(std::path::PathBuf::from),
        std::env::var_os("TMPDIR").map(std::path::PathBuf::from),
        Some("/var/tmp".into()),
        Some("/usr/tmp".into()),
        Some("/tmp".into()),
        Some(".".into()),
    ];
    let dir = candidates.into_iter().flatten().find(|d| d.is_dir())?;
    tempfile::tempfile_in(&dir).ok()?;
    let free = free_bytes(&dir)?;
    Some((dir, free))
}

/// Bytes an unprivileged process may still write in `dir`'s file system.
#[cfg(unix)]
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Not known here: the sort stays in memory.
#[cfg(not(unix))]
fn free_bytes(_dir: &std::path::Path) -> Option<u64> {
    None
}

/// A sort key's bytes besides its columns: the run's length prefix, the record header, the row id.
const SORT_KEY_OVERHEAD: usize = 16;

/// Fewest new grants for which the indexes are rebuilt rather than maintained (small in tests, so they
/// exercise the rebuild).
const SQLITE_REBUILD_MIN: i64 = if cfg!(test) { 10 } else { 10_000 };

/// Loads `source` as connector `cid`'s snapshot in one transaction. `Ok(Err(reason))`: the streamed read
/// answered [`Extracted::Fallback`] and the transaction was rolled back.
fn load_sqlite(
    db: &std::path::Path,
    cid: &str,
    identity_source: bool,
    source: Source,
) -> Result<std::result::Result<IngestStats, String>> {
    let mut conn = rusqlite::Connection::open(db).map_err(lite)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(lite)?;
    // A page cache as large as a big snapshot (2 GiB; only what is used is allocated): without it the
    // transaction spills pages into the WAL while loading and reads them back to build the indexes. The
    // spill threshold is pinned to the same size, so that lowering `cache_size` for the index builds
    // ([`create_grant_indexes`]) does not start spilling.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -{SQLITE_CACHE_KIB}; PRAGMA cache_spill = {}; \
         PRAGMA foreign_keys = OFF; PRAGMA wal_autocheckpoint = 0;",
        SQLITE_CACHE_KIB / 4
    ))
    .map_err(lite)?;
    let t0 = std::time::Instant::now();
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(lite)?;
    // Rebuild the grant indexes after the load when the new snapshot is at least as large as the other
    // connectors' grants together (sorting beats random inserts then; otherwise inserting is cheaper than
    // re-indexing everyone else's rows). A streamed file's size is known only at its end: the previous
    // snapshot of the connector stands in for it.
    let new_grants: i64 = match &source {
        Source::File(file) => tx
            .query_row(
                "SELECT count(*) FROM v1_grants WHERE sync_id = ?1",
                [file.sync_id()],
                |r| r.get(0),
            )
            .or_else(|_| {
                let c = rusqlite::Connection::open_with_flags(
                    file.db_path(),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                c.query_row(
                    "SELECT count(*) FROM v1_grants WHERE sync_id = ?1",
                    [file.sync_id()],
                    |r| r.get(0),
                )
            })
            .map_err(|e| PlatformError::SyncFile(format!("reading the sync file: {e}")))?,
        Source::Stream(_) => tx
            .query_row(
                "SELECT count(*) FROM grants WHERE connector_id = ?1",
                [cid],
                |r| r.get(0),
            )
            .map_err(lite)?,
    };
    let others: i64 = tx
        .query_row(
            "SELECT count(*) FROM grants WHERE connector_id < ?1 OR connector_id > ?1",
            [cid],
            |r| r.get(0),
        )
        .map_err(lite)?;
    let rebuild = others == 0 || (new_grants >= others && new_grants >= SQLITE_REBUILD_MIN);
    if rebuild {
        for (name, _) in SQLITE_GRANT_INDEXES {
            tx.execute_batch(&format!("DROP INDEX IF EXISTS {name}"))
                .map_err(lite)?;
        }
    }
    // A table that holds only this connector's rows is emptied whole (SQLite's truncate: its pages and
    // its indexes' pages go to the freelist) instead of deleting row by row through every index.
    let only_ours = |t: &str| -> Result<bool> {
        let (lo, hi): (Option<String>, Option<String>) = tx
            .query_row(
                &format!("SELECT min(connector_id), max(connector_id) FROM {t}"),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(lite)?;
        Ok(lo.is_none_or(|x| x == cid) && hi.is_none_or(|x| x == cid))
    };
    let mut tables: Vec<&str> = SNAPSHOT_TABLES.to_vec();
    if identity_source {
        tables.push("identities");
    }
    for t in tables {
        let whole = if t == "grants" { others == 0 } else { only_ours(t)? };
        if whole {
            tx.execute(&format!("DELETE FROM {t}"), []).map_err(lite)?;
        } else {
            tx.execute(&format!("DELETE FROM {t} WHERE connector_id = $1"), [cid])
                .map_err(lite)?;
        }
    }
    let mut st = IngestStats::default();
    let t_delete = t0.elapsed();
    let grant_key_bytes;
    {
        let mut w = SqliteWriter {
            cid,
            key_bytes: 0,
            resources: tx.prepare("INSERT INTO resources (connector_id, resource_type, resource_id, display_name, parent, login, email, profile) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)").map_err(lite)?,
            entitlements: tx.prepare("INSERT INTO entitlements (connector_id, id, resource_type, resource_id, display_name, slug) VALUES (?1, ?2, ?3, ?4, ?5, ?6)").map_err(lite)?,
            grants: tx.prepare("INSERT INTO grants (connector_id, id, entitlement_id, principal_type, principal_id, direct, via) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)").map_err(lite)?,
            identities: tx.prepare(UPSERT_IDENTITY).map_err(lite)?,
        };
        let n = match pipe_rows(source, cid, identity_source, &mut w)? {
            Extracted::Done(n) => n,
            // Dropping `tx` rolls the transaction back.
            Extracted::Fallback(why) => return Ok(Err(why)),
        };
        st.resources = n.resources;
        st.entitlements = n.entitlements;
        st.grants = n.grants;
        st.identities = n.identities;
        grant_key_bytes = w.key_bytes;
    }
    let t_load = t0.elapsed();
    if rebuild {
        // Every row of `grants` is sorted: the other connectors' keys are taken to be as long as ours.
        let rows = st.grants.saturating_add(others.max(0) as u64).max(1);
        let key_bytes = grant_key_bytes.saturating_mul(rows) / st.grants.max(1);
        create_grant_indexes(&tx, key_bytes)?;
    }
    let t_index = t0.elapsed();
    st.accounts_linked += tx.execute(LINK_BY_OBJECT_ID, [cid]).map_err(lite)? as u64;
    if !identity_source {
        for col in ["upn", "email"] {
            st.accounts_linked += tx.execute(&link_by_sql(col), [cid]).map_err(lite)? as u64;
        }
    }
    let new_apps: Vec<(String, String, String)> = {
        let mut q = tx.prepare(NEW_APPS).map_err(lite)?;
        q.query_map([cid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(lite)?
    };
    let now = crate::clock::rfc3339(time::OffsetDateTime::now_utc());
    for (rid, name, profile) in new_apps {
        tx.execute(
            INSERT_APP,
            rusqlite::params![
                uuid::Uuid::new_v4().to_string(),
                name,
                app_description(&profile),
                cid,
                rid,
                now
            ],
        )
        .map_err(lite)?;
        st.apps_discovered += 1;
    }
    tx.execute(RENAME_APPS, [cid]).map_err(lite)?;
    let t_finish = t0.elapsed();
    tx.commit().map_err(lite)?;
    // The new snapshot is committed (in the WAL) and visible. Copying it into the database file (the
    // checkpoint, as large as the snapshot) runs on its own thread instead of inside this commit.
    std::thread::spawn(move || {
        if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
            tracing::warn!(error = %e, "checkpoint after an ingest");
        }
    });
    tracing::debug!(
        connector = cid,
        rebuild,
        lock_and_delete = ?t_delete,
        load = ?(t_load - t_delete),
        indexes = ?(t_index - t_load),
        links_and_apps = ?(t_finish - t_index),
        commit = ?(t0.elapsed() - t_finish),
        "SQLite snapshot replaced"
    );
    Ok(Ok(st))
}

/// What the PostgreSQL reader thread sends to the COPY writer.
enum CopyMsg {
    /// Start `COPY <statement>`.
    Start(&'static str),
    /// Rows in COPY text format.
    Data(Vec<u8>),
    /// End the current COPY.
    End,
    /// Every row was sent (without it, a closed channel means the reader stopped).
    Finished,
}

const PG_COPY_RESOURCES: &str = "COPY resources (connector_id, resource_type, resource_id, display_name, parent, login, email, profile) FROM STDIN";
const PG_COPY_ENTITLEMENTS: &str =
    "COPY entitlements (connector_id, id, resource_type, resource_id, display_name, slug) FROM STDIN";
/// The columns of `grants` the COPY into a new partition sends: all but the connector id, which the new
/// table's default fills.
const PG_GRANT_COLUMNS: &str = "(id, entitlement_id, principal_type, principal_id, direct, via)";
/// The comment on a new partition's table until it is attached: a table with it that is not a partition
/// was left by an ingest that stopped after the table was committed, and the connector's next ingest
/// drops it.
const PG_NEW_PARTITION_TAG: &str = "steward: grants being loaded for connector ";
const PG_COPY_IDENTITIES: &str = "COPY steward_ingest_identities (id, connector_id, kind, display_name, upn, email, department, job_title, manager_id, status) FROM STDIN";
/// Bytes per COPY data message.
const PG_CHUNK: usize = 1 << 20;

/// Encodes rows in COPY text format. Grants go a chunk at a time, as they come, to the connection loading
/// the new partition ([`load_grants_pg`]); resources too, to the snapshot's transaction (its COPY stays open
/// while the grants flow); entitlements and identities (which the stream reader interleaves with both)
/// are kept, each table in its own buffer, and sent to the snapshot's transaction after the others.
struct PgSink<'a> {
    cid: &'a str,
    grants_tx: mpsc::Sender<CopyMsg>,
    tx: mpsc::Sender<CopyMsg>,
    grants: CopyChunks,
    /// The resources' COPY is open on the snapshot's transaction (their rows go as they come).
    resources_started: bool,
    resources: CopyChunks,
    entitlements: CopyChunks,
    identities: CopyChunks,
}

/// One table's rows in COPY text format, cut after a row once [`PG_CHUNK`] bytes are reached: full chunks
/// are sent at once (a streamed table) or kept in `full` (a table sent at the end).
#[derive(Default)]
struct CopyChunks {
    buf: Vec<u8>,
    full: Vec<Vec<u8>>,
}

impl CopyChunks {
    /// Appends a row; returns the chunk it completed, if any.
    fn row(&mut self, fields: &[Option<&str>]) -> Option<Vec<u8>> {
        copy_row(&mut self.buf, fields);
        (self.buf.len() >= PG_CHUNK)
            .then(|| std::mem::replace(&mut self.buf, Vec::with_capacity(PG_CHUNK + 4096)))
    }
    /// Appends a row of a table sent at the end.
    fn keep(&mut self, fields: &[Option<&str>]) {
        if let Some(c) = self.row(fields) {
            self.full.push(c);
        }
    }
    /// Every chunk not sent yet, the last one partial.
    fn rest(&mut self) -> Vec<Vec<u8>> {
        let mut all = std::mem::take(&mut self.full);
        if !self.buf.is_empty() {
            all.push(std::mem::take(&mut self.buf));
        }
        all
    }
}

/// `s` as a PostgreSQL string literal (quotes doubled), for statements that take no parameters (DDL).
fn pg_text_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn send(tx: &mpsc::Sender<CopyMsg>, m: CopyMsg) -> Result<()> {
    tx.blocking_send(m)
        .map_err(|_| PlatformError::SyncFile("the database writer stopped".into()))
}

fn copy_field(buf: &mut Vec<u8>, v: Option<&str>) {
    let Some(s) = v else {
        buf.extend_from_slice(b"\\N");
        return;
    };
    let b = s.as_bytes();
    if !b.iter().any(|c| matches!(c, b'\\' | b'\t' | b'\n' | b'\r')) {
        buf.extend_from_slice(b);
        return;
    }
    for &c in b {
        match c {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(c),
        }
    }
}

fn copy_row(buf: &mut Vec<u8>, fields: &[Option<&str>]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            buf.push(b'\t');
        }
        copy_field(buf, *f);
    }
    buf.push(b'\n');
}

impl PgSink<'_> {
    /// Ends the grants and the resources and sends the kept tables, each as one COPY.
    fn finish(mut self) -> Result<()> {
        for c in self.grants.rest() {
            send(&self.grants_tx, CopyMsg::Data(c))?;
        }
        send(&self.grants_tx, CopyMsg::End)?;
        if self.resources_started {
            for c in self.resources.rest() {
                send(&self.tx, CopyMsg::Data(c))?;
            }
            send(&self.tx, CopyMsg::End)?;
        }
        for (stmt, chunks) in [
            (PG_COPY_ENTITLEMENTS, self.entitlements.rest()),
            (PG_COPY_IDENTITIES, self.identities.rest()),
        ] {
            if chunks.is_empty() {
                continue;
            }
            send(&self.tx, CopyMsg::Start(stmt))?;
            for c in chunks {
                send(&self.tx, CopyMsg::Data(c))?;
            }
            send(&self.tx, CopyMsg::End)?;
        }
        send(&self.tx, CopyMsg::Finished)
    }
}

impl Sink for PgSink<'_> {
    fn resource(&mut self, r: &ResourceRow) -> Result<()> {
        if !self.resources_started {
            send(&self.tx, CopyMsg::Start(PG_COPY_RESOURCES))?;
            self.resources_started = true;
        }
        let full = self.resources.row(&[
            Some(self.cid),
            Some(&r.resource_type),
            Some(&r.resource_id),
            Some(&r.display_name),
            r.parent.as_deref(),
            r.login.as_deref(),
            r.email.as_deref(),
            Some(&r.profile),
        ]);
        match full {
            Some(c) => send(&self.tx, CopyMsg::Data(c)),
            None => Ok(()),
        }
    }
    fn identity(&mut self, i: &Identity) -> Result<()> {
        self.identities.keep(&[
            Some(&i.id),
            Some(&i.connector_id),
            Some(&i.kind),
            Some(&i.display_name),
            i.upn.as_deref(),
            i.email.as_deref(),
            i.department.as_deref(),
            i.job_title.as_deref(),
            i.manager_id.as_deref(),
            Some(&i.status),
        ]);
        Ok(())
    }
    fn entitlement(&mut self, e: &EntitlementRow) -> Result<()> {
        self.entitlements.keep(&[
            Some(self.cid),
            Some(&e.id),
            Some(&e.resource_type),
            Some(&e.resource_id),
            Some(&e.display_name),
            Some(&e.slug),
        ]);
        Ok(())
    }
    fn grant(&mut self, g: &GrantRef<'_>) -> Result<()> {
        let full = self.grants.row(&[
            ingest::explicit_grant_id(g.id, g.entitlement_id, g.principal_type, g.principal_id),
            Some(g.entitlement_id),
            Some(g.principal_type),
            Some(g.principal_id),
            Some(if g.direct { "t" } else { "f" }),
            g.via,
        ]);
        match full {
            Some(c) => send(&self.grants_tx, CopyMsg::Data(c)),
            None => Ok(()),
        }
    }
}

async fn ingest_pg(
    p: &sqlx::PgPool,
    cid: &str,
    identity_source: bool,
    mut rx: mpsc::Receiver<Batch>,
) -> Result<IngestStats> {
    let mut source = sync_source(&mut rx).await?;
    loop {
        let file = match &source {
            Source::Stream(s) => Some(s.path().to_owned()),
            Source::File(_) => None,
        };
        match (load_pg(p, cid, identity_source, source).await?, file) {
            (Ok(st), _) => return Ok(st),
            (Err(why), Some(file)) => source = unpacked(file, &why).await?,
            (Err(why), None) => return Err(PlatformError::SyncFile(why)),
        }
    }
}

/// Loads `source` as connector `cid`'s snapshot. `Ok(Err(reason))`: the streamed read answered
/// [`Extracted::Fallback`] and nothing was kept.
///
/// Two connections work at once: one loads the grants into a new table, indexes it and commits it
/// ([`load_grants_pg`]), while the snapshot's transaction loads resources, entitlements and identities
/// and links accounts; that transaction then swaps the new table in as the connector's partition and
/// commits. Until then the new table is no partition, so readers never see it.
async fn load_pg(
    p: &sqlx::PgPool,
    cid: &str,
    identity_source: bool,
    source: Source,
) -> Result<std::result::Result<IngestStats, String>> {
    let part = format!("grants_s_{}", uuid::Uuid::new_v4().simple());
    let r = load_pg_tables(p, cid, identity_source, source, &part).await;
    if !matches!(r, Ok(Ok(_))) {
        // The new table may have been committed by its own connection; the snapshot's transaction did
        // not make it a partition. If that transaction got as far as attaching it, its rollback (sent when
        // its connection is next used) still holds the table's lock: the wait is bounded, and a table
        // left behind is dropped by the connector's next ingest (it carries the tag).
        if let Err(e) = drop_table_pg(p, &part).await {
            tracing::warn!(table = %part, error = %e, "dropping the table of a failed ingest");
        }
    }
    r
}

async fn drop_table_pg(p: &sqlx::PgPool, table: &str) -> Result<()> {
    let mut tx = p.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Runs COPYs as the reader thread sends them, until [`CopyMsg::Finished`] (true) or until the reader
/// stops (false: the channel closed, mid-table or not).
async fn copy_tables(conn: &mut sqlx::PgConnection, rx: &mut mpsc::Receiver<CopyMsg>) -> Result<bool> {
    while let Some(m) = rx.recv().await {
        let stmt = match m {
            CopyMsg::Start(stmt) => stmt,
            CopyMsg::Finished => return Ok(true),
            CopyMsg::Data(_) | CopyMsg::End => {
                return Err(PlatformError::Io(std::io::Error::other(
                    "COPY data outside a COPY",
                )));
            }
        };
        let copy = conn.copy_in_raw(stmt).await?;
        if !copy_rows(copy, rx).await? {
            return Ok(false);
        }
    }
    Ok(false)
}

/// Sends [`CopyMsg::Data`] into `copy` until [`CopyMsg::End`] and finishes it (true); aborts it when the
/// reader stops first (false).
async fn copy_rows(
    mut copy: sqlx::postgres::PgCopyIn<&mut sqlx::PgConnection>,
    rx: &mut mpsc::Receiver<CopyMsg>,
) -> Result<bool> {
    loop {
        match rx.recv().await {
            Some(CopyMsg::Data(b)) => {
                copy.send(b).await?;
            }
            Some(CopyMsg::End) => break,
            Some(CopyMsg::Start(_) | CopyMsg::Finished) | None => {
                let _ = copy.abort("the sync file reader stopped").await;
                return Ok(false);
            }
        }
    }
    copy.finish().await?;
    Ok(true)
}

/// The grants of a new snapshot, on a connection of their own: table `part` created, loaded (`FREEZE`:
/// created in this transaction, its rows need no later hint-bit writes or freezing by vacuum), indexed
/// once over the loaded rows like the partitioned indexes of `grants` (so that ATTACH adopts them),
/// analyzed, committed. False, with nothing committed, when the reader stopped.
async fn load_grants_pg(
    p: &sqlx::PgPool,
    part: &str,
    cid: &str,
    mut rx: mpsc::Receiver<CopyMsg>,
) -> Result<bool> {
    let mut conn = p.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let cid_literal = pg_text_literal(cid);
    for ddl in [
        format!("CREATE TABLE {part} (LIKE grants INCLUDING DEFAULTS, CHECK (connector_id = {cid_literal}))"),
        // The same connector id in every row: a default fills it instead of 37 bytes per row sent and
        // parsed (dropped again before the table becomes a partition).
        format!("ALTER TABLE {part} ALTER COLUMN connector_id SET DEFAULT {cid_literal}"),
        format!(
            "COMMENT ON TABLE {part} IS {}",
            pg_text_literal(&format!("{PG_NEW_PARTITION_TAG}{cid}"))
        ),
        "SET LOCAL maintenance_work_mem = '256MB'".to_owned(),
    ] {
        sqlx::query(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
    }
    let copy = tx
        .copy_in_raw(&format!(
            "COPY {part} {PG_GRANT_COLUMNS} FROM STDIN WITH (FREEZE)"
        ))
        .await?;
    if !copy_rows(copy, &mut rx).await? {
        return Ok(false);
    }
    let t = std::time::Instant::now();
    for ddl in [
        format!("ALTER TABLE {part} ALTER COLUMN connector_id DROP DEFAULT"),
        format!("CREATE INDEX {part}_entitlement ON {part} (entitlement_id)"),
        format!("CREATE INDEX {part}_principal ON {part} (principal_id, principal_type)"),
        format!("ANALYZE {part}"),
    ] {
        sqlx::query(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    tracing::debug!(table = part, indexes = ?t.elapsed(), "PostgreSQL: new grant partition loaded");
    Ok(true)
}

/// [`load_pg`]'s work; `part` is the name of the new partition's table.
async fn load_pg_tables(
    p: &sqlx::PgPool,
    cid: &str,
    identity_source: bool,
    source: Source,
    part: &str,
) -> Result<std::result::Result<IngestStats, String>> {
    let t0 = std::time::Instant::now();
    let mut tx = p.begin().await?;
    // One ingest per connector at a time; readers keep seeing the committed snapshot (MVCC).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(cid)
        .execute(&mut *tx)
        .await?;
    // Tables of this connector's earlier ingests that were committed but never became its partition.
    let abandoned: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_class c WHERE c.relkind = 'r' AND NOT c.relispartition AND c.relname LIKE 'grants\\_s\\_%' AND obj_description(c.oid, 'pg_class') = $1",
    )
    .bind(format!("{PG_NEW_PARTITION_TAG}{cid}"))
    .fetch_all(&mut *tx)
    .await?;
    for (t,) in abandoned {
        tracing::info!(table = %t, connector = cid, "dropping the grants table of an ingest that stopped");
        sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
            .execute(&mut *tx)
            .await?;
    }
    for t in SNAPSHOT_TABLES {
        // An identity source's account links are brought up to date below instead (most stay as they are).
        if identity_source && t == "account_links" {
            continue;
        }
        // `grants` is partitioned by connector: the connector's partition is swapped below (deleting its
        // rows first would only write a dead version of each), so only rows left in the default partition
        // from before migration 5 are deleted here.
        let t = if t == "grants" { "grants_unpartitioned" } else { t };
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {t} WHERE connector_id = $1")))
            .bind(cid)
            .execute(&mut *tx)
            .await?;
    }
    // work_mem: the identities' DISTINCT ON sort (100,000 identities spill ~23 MB at the default 4 MB).
    sqlx::query("SET LOCAL work_mem = '64MB'")
        .execute(&mut *tx)
        .await?;
    if identity_source {
        sqlx::query("CREATE TEMP TABLE steward_ingest_identities (LIKE identities) ON COMMIT DROP")
            .execute(&mut *tx)
            .await?;
    }
    let t_delete = t0.elapsed();
    let (grants_tx, grants_rx) = mpsc::channel::<CopyMsg>(4);
    let (ctx, mut crx) = mpsc::channel::<CopyMsg>(4);
    let owned_cid = cid.to_owned();
    let reader = tokio::task::spawn_blocking(move || {
        let mut sink = PgSink {
            cid: &owned_cid,
            grants_tx,
            tx: ctx,
            grants: CopyChunks::default(),
            resources_started: false,
            resources: CopyChunks::default(),
            entitlements: CopyChunks::default(),
            identities: CopyChunks::default(),
        };
        let n = source.extract(&owned_cid, identity_source, &mut sink)?;
        if let Extracted::Done(_) = n {
            sink.finish()?;
        }
        Ok(n)
    });
    let grants = load_grants_pg(p, part, cid, grants_rx);
    // Meanwhile, on the snapshot's transaction: the other tables, then the identities and account links
    // (which overlap the grants' index builds).
    let rest = async {
        if !copy_tables(&mut tx, &mut crx).await? {
            return Ok::<_, PlatformError>(None);
        }
        let t_copied = t0.elapsed();
        let mut linked = 0;
        if identity_source {
            // The identities and their account links are brought up to date rather than deleted and
            // inserted again: a row that did not change is not written (a sync of the same tenant
            // changes few). The last staged row of an id wins, as with one upsert per row.
            sqlx::query(PG_UPSERT_STAGED_IDENTITIES).execute(&mut *tx).await?;
            for q in [
                "DELETE FROM identities i WHERE i.connector_id = $1 AND NOT EXISTS (SELECT 1 FROM steward_ingest_identities s WHERE s.id = i.id)",
                PG_UNLINK_UNSTAGED,
                PG_LINK_STAGED_IDENTITIES,
            ] {
                sqlx::query(q).bind(cid).execute(&mut *tx).await?;
            }
            // Every user and managed identity of an identity source is linked to the identity it became.
            let (n,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM steward_ingest_identities WHERE kind IN ('user', 'managed_identity')",
            )
            .fetch_one(&mut *tx)
            .await?;
            linked = u64::try_from(n).unwrap_or_default();
        } else {
            for q in [LINK_BY_OBJECT_ID, &link_by_sql("upn"), &link_by_sql("email")] {
                linked += sqlx::query(AssertSqlSafe(q.to_owned()))
                    .bind(cid)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
        }
        let new_apps: Vec<(String, String, String)> =
            sqlx::query_as(NEW_APPS).bind(cid).fetch_all(&mut *tx).await?;
        let now = crate::clock::rfc3339(time::OffsetDateTime::now_utc());
        let mut apps = 0;
        for (rid, name, profile) in new_apps {
            sqlx::query(INSERT_APP)
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(name)
                .bind(app_description(&profile))
                .bind(cid)
                .bind(rid)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
            apps += 1;
        }
        sqlx::query(RENAME_APPS).bind(cid).execute(&mut *tx).await?;
        // Statistics for the request path's first step (an identity's accounts): without them, until
        // autovacuum's next round, the planner guessed 500 of 100,487 links per identity and scanned the
        // table (`GET /api/v1/identities/{id}/access`: 97 instead of 579 req/s on the large tenant). This
        // runs while the other connection builds the grant indexes.
        sqlx::query(if identity_source {
            "ANALYZE account_links, identities"
        } else {
            "ANALYZE account_links"
        })
        .execute(&mut *tx)
        .await?;
        Ok(Some((t_copied, t0.elapsed(), linked, apps)))
    };
    let (loaded, rest) = tokio::join!(grants, rest);
    let t_load = t0.elapsed();
    let read = joined(reader.await);
    // A writer's error first: the reader then only saw that the writer stopped (a reader that fails on
    // its own leaves the writers without an error: they saw the rows stop).
    let (rest, loaded) = (rest?, loaded?);
    let n = match read? {
        Extracted::Done(n) => n,
        // Dropping `tx` rolls the transaction back.
        Extracted::Fallback(why) => return Ok(Err(why)),
    };
    let (Some((t_copied, t_linked, linked, apps_discovered)), true) = (rest, loaded) else {
        return Err(PlatformError::SyncFile("the sync file reader stopped".into()));
    };
    let st = IngestStats {
        resources: n.resources,
        entitlements: n.entitlements,
        grants: n.grants,
        identities: n.identities,
        accounts_linked: linked,
        apps_discovered,
    };
    // The swap, last: detaching takes an exclusive lock on `grants` until the commit, so readers wait for
    // this short moment (and then see the new snapshot) instead of ever seeing a part of it.
    let old: Option<(String,)> =
        sqlx::query_as("SELECT table_name FROM grant_partitions WHERE connector_id = $1")
            .bind(cid)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((old,)) = &old {
        sqlx::query(AssertSqlSafe(format!(
            "ALTER TABLE grants DETACH PARTITION {old}"
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query(AssertSqlSafe(format!("DROP TABLE {old}")))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(AssertSqlSafe(format!(
        "ALTER TABLE grants ATTACH PARTITION {part} FOR VALUES IN ({})",
        pg_text_literal(cid)
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO grant_partitions (connector_id, table_name) VALUES ($1, $2) ON CONFLICT (connector_id) DO UPDATE SET table_name = excluded.table_name")
        .bind(cid)
        .bind(part)
        .execute(&mut *tx)
        .await?;
    let t_swap = t0.elapsed();
    tx.commit().await?;
    tracing::debug!(
        connector = cid,
        lock_and_delete = ?t_delete,
        read_and_copy = ?(t_copied - t_delete),
        identities_links_and_apps = ?(t_linked - t_copied),
        grants_loaded = ?(t_load - t_delete),
        swap = ?(t_swap - t_load),
        commit = ?(t0.elapsed() - t_swap),
        "PostgreSQL snapshot replaced"
    );
    Ok(Ok(st))
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

    async fn tokens(&self) -> Result<Vec<(TokenInfo, bool)>> {
        let rows: Vec<(String, String, String, Option<String>, String, bool)> = with_db!(&self.db, p => {
            sqlx::query_as("SELECT id, name, role, identity_id, created_at, revoked FROM tokens ORDER BY created_at DESC, id")
                .fetch_all(p).await?
        });
        Ok(rows
            .into_iter()
            .filter_map(|(id, name, role, identity_id, created_at, revoked)| {
                Some((
                    TokenInfo {
                        id,
                        name,
                        role: Role::parse(&role)?,
                        identity_id,
                        created_at,
                    },
                    revoked,
                ))
            })
            .collect())
    }

    async fn revoke_token(&self, id: &str) -> Result<bool> {
        let n = with_db!(&self.db, p => {
            sqlx::query("UPDATE tokens SET revoked = TRUE WHERE id = $1").bind(id).execute(p).await?.rows_affected()
        });
        Ok(n == 1)
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
            // A UNION of two indexed lookups (an OR would scan the table): the primary key and lower(upn).
            sqlx::query_as(AssertSqlSafe(format!("SELECT {ID_COLS} FROM (SELECT {ID_COLS} FROM identities WHERE id = $1 UNION SELECT {ID_COLS} FROM identities WHERE lower(upn) = lower($1)) AS m ORDER BY id LIMIT 1")))
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
            Option<String>,
        );
        let rows: Vec<T> = with_db!(&self.db, p => {
            sqlx::query_as("SELECT g.connector_id, COALESCE(g.id, g.entitlement_id || ':' || g.principal_type || ':' || g.principal_id), g.entitlement_id, g.principal_type, g.principal_id, g.direct, g.via, e.display_name, e.resource_type, e.resource_id, a.id FROM account_links l JOIN grants g ON g.connector_id = l.connector_id AND g.principal_type = l.resource_type AND g.principal_id = l.resource_id LEFT JOIN entitlements e ON e.connector_id = g.connector_id AND e.id = g.entitlement_id LEFT JOIN apps a ON e.resource_type = 'enterprise_application' AND a.connector_id = g.connector_id AND a.resource_id = e.resource_id WHERE l.identity_id = $1 ORDER BY g.connector_id, g.id")
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
                    t.10,
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use steward_model::builders::{self, ResourceBuilder};
    use steward_model::pb::{entitlement::PurposeValue, resource_type::Trait};

    use crate::{Actor, CreateConnector, OpenOptions, Platform, Role, SystemClock};

    use super::*;

    /// Users `u0..u{n}` (the first with a name that needs escaping in COPY), one group, every user a member.
    fn write_sync(path: &Path, users: usize, tag: &str) {
        let ut = builders::resource_type("user", "User", &[Trait::User]);
        let gt = builders::resource_type("group", "Group", &[Trait::Group]);
        let mut w = steward_c1z::C1zWriter::create(path).unwrap();
        w.begin_sync(steward_c1z::SyncType::Full).unwrap();
        w.put_resource_type(&ut).unwrap();
        w.put_resource_type(&gt).unwrap();
        let g = ResourceBuilder::new("group", &format!("{tag}g0"), "Group 0")
            .group()
            .build();
        let member = builders::entitlement(
            &g,
            "member",
            "member",
            PurposeValue::Assignment,
            std::slice::from_ref(&ut),
        );
        w.put_resource(&g).unwrap();
        w.put_entitlement(&member).unwrap();
        for i in 0..users {
            let upn = format!("{tag}user{i}@test.example");
            let name = if i == 0 {
                "Tab\there \\ new\nline".to_owned()
            } else {
                format!("User {i}")
            };
            let u = ResourceBuilder::new("user", &format!("{tag}u{i}"), &name)
                .profile(steward_model::profile::strings([(
                    "user_principal_name",
                    upn.as_str(),
                )]))
                .user(builders::user_trait(Some(&upn), true, &upn))
                .build();
            w.put_resource(&u).unwrap();
            w.put_grant(&builders::grant(&member, &u)).unwrap();
        }
        w.end_sync().unwrap();
        w.finish().unwrap();
    }

    /// A copy of `good` whose last grant's protobuf is garbage: reading fails after most rows are loaded.
    fn corrupt_last_grant(good: &Path, bad: &Path, work: &Path) {
        let db = work.join("unpacked.sqlite");
        steward_c1z::envelope::read_c1z(good, &db, 1 << 30).unwrap();
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute(
            "UPDATE v1_grants SET data = x'ff' WHERE id = (SELECT max(id) FROM v1_grants)",
            [],
        )
        .unwrap();
        drop(c);
        steward_c1z::envelope::write_c1z(&db, bad, Default::default()).unwrap();
    }

    /// A platform with its data in `dir` (on `db_url`, or SQLite there) and a Baton connector marked the
    /// identity source (a unique name: a PostgreSQL database is shared by the tests of a run).
    async fn platform_with_baton_source(dir: &Path, db_url: Option<String>) -> (Platform, crate::Connector) {
        let p = Platform::open(
            &OpenOptions {
                db_url,
                data_dir: Some(dir.to_owned()),
            },
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        let admin = Actor {
            token_id: "t".into(),
            name: "t".into(),
            role: Role::SuperAdmin,
            identity_id: None,
        };
        let c = p
            .create_connector(
                &admin,
                CreateConnector {
                    kind: "baton".into(),
                    name: format!("ingest-test-{}", uuid::Uuid::new_v4()),
                    settings: Default::default(),
                    owners: vec![],
                    identity_source: Some(true),
                    app_id: None,
                    sync_interval_secs: None,
                },
            )
            .await
            .unwrap();
        (p, c)
    }

    async fn failed_ingest_keeps_the_snapshot(db_url: Option<String>) {
        let dir = tempfile::tempdir().unwrap();
        let (good, bigger, bad) = (
            dir.path().join("good.c1z"),
            dir.path().join("bigger.c1z"),
            dir.path().join("bad.c1z"),
        );
        // Ids unique to this run: the PostgreSQL database is shared by the tests of a run.
        let tag = format!("{}-", uuid::Uuid::new_v4().simple());
        write_sync(&good, 40, &tag);
        write_sync(&bigger, 60, &tag);
        corrupt_last_grant(&bigger, &bad, dir.path());
        let (p, c) = platform_with_baton_source(dir.path(), db_url.clone()).await;
        let holders = |p: &Platform| {
            let s = p.store().clone();
            let (cid, ent) = (c.id.clone(), format!("group:{tag}g0:member"));
            async move {
                s.holders(
                    &cid,
                    &ent,
                    &ListQuery {
                        limit: Some(1000),
                        ..Default::default()
                    },
                )
                .await
                .unwrap()
                .items
            }
        };
        let pg = match &db_url {
            Some(u) => Some(sqlx::PgPool::connect(u).await.unwrap()),
            None => None,
        };
        // PostgreSQL: rows left in the default partition from before migration 5, of this connector and of
        // another one; the ingest deletes only this connector's.
        let legacy = |pg: &sqlx::PgPool| {
            let (pg, cid) = (pg.clone(), c.id.clone());
            async move {
                let mut n = [0i64; 2];
                for (k, who) in [cid.as_str(), "legacy-other"].into_iter().enumerate() {
                    (n[k],) =
                        sqlx::query_as("SELECT count(*) FROM grants_unpartitioned WHERE connector_id = $1")
                            .bind(who)
                            .fetch_one(&pg)
                            .await
                            .unwrap();
                }
                (n[0], n[1])
            }
        };
        if let Some(pg) = &pg {
            for cid in [c.id.as_str(), "legacy-other"] {
                sqlx::query("INSERT INTO grants (connector_id, id, entitlement_id, principal_type, principal_id, direct, via) VALUES ($1, NULL, 'group:old:member', 'user', 'old', TRUE, NULL)")
                    .bind(cid)
                    .execute(pg)
                    .await
                    .unwrap();
            }
            assert_eq!(legacy(pg).await, (1, 1));
            // Tables committed by ingests that stopped before making them a partition: this connector's
            // is dropped by its next ingest, another connector's is left to that one.
            for (t, cid) in [
                ("grants_s_abandoned_mine", c.id.as_str()),
                ("grants_s_abandoned_other", "someone-else"),
            ] {
                sqlx::query(AssertSqlSafe(format!("CREATE TABLE {t} (LIKE grants)")))
                    .execute(pg)
                    .await
                    .unwrap();
                sqlx::query(AssertSqlSafe(format!(
                    "COMMENT ON TABLE {t} IS '{PG_NEW_PARTITION_TAG}{cid}'"
                )))
                .execute(pg)
                .await
                .unwrap();
            }
        }
        let rec = p.ingest(&c, &good, "upload", vec![]).await.unwrap();
        assert_eq!(rec.stats.as_ref().unwrap()["grants"], 40);
        if let Some(pg) = &pg {
            assert_eq!(
                legacy(pg).await,
                (0, 1),
                "only the other connector's legacy row is kept"
            );
            let (mine, other): (Option<String>, Option<String>) = sqlx::query_as(
                "SELECT to_regclass('grants_s_abandoned_mine')::text, to_regclass('grants_s_abandoned_other')::text",
            )
            .fetch_one(pg)
            .await
            .unwrap();
            assert_eq!((mine, other), (None, Some("grants_s_abandoned_other".to_owned())));
            sqlx::query("DROP TABLE grants_s_abandoned_other")
                .execute(pg)
                .await
                .unwrap();
            sqlx::query("DELETE FROM grants WHERE connector_id = 'legacy-other'")
                .execute(pg)
                .await
                .unwrap();
        }
        // PostgreSQL: the connector's partition of `grants` (and whether that table exists).
        let partition = |pg: &sqlx::PgPool| {
            let (pg, cid) = (pg.clone(), c.id.clone());
            async move {
                let (name,): (String,) =
                    sqlx::query_as("SELECT table_name FROM grant_partitions WHERE connector_id = $1")
                        .bind(&cid)
                        .fetch_one(&pg)
                        .await
                        .unwrap();
                let (attached,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'grants' AND c.relname = $1")
                    .bind(&name)
                    .fetch_one(&pg)
                    .await
                    .unwrap();
                assert_eq!(attached, 1, "{name} is attached to grants");
                name
            }
        };
        let first_partition = match &pg {
            Some(pg) => Some(partition(pg).await),
            None => None,
        };
        assert_eq!(holders(&p).await.len(), 40);
        let u0 = p.store().identity(&format!("{tag}u0")).await.unwrap().unwrap();
        assert_eq!(u0.display_name, "Tab\there \\ new\nline");
        assert_eq!(u0.upn, Some(format!("{tag}user0@test.example")));
        // By UPN too, case-insensitively (the lower(upn) index of migration 3).
        let by_upn = p
            .store()
            .identity(&format!("{tag}USER0@test.example"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(by_upn.id, u0.id);
        let held = p.store().grants_of_identity(&format!("{tag}u0")).await.unwrap();
        assert_eq!(held.len(), 1);
        assert!(held[0].1.direct && held[0].1.via.is_none());
        // Stored without its id (NULL: the derived one, migration 7) and read back whole.
        assert_eq!(held[0].1.id, format!("group:{tag}g0:member:user:{tag}u0"));

        let e = p.ingest(&c, &bad, "upload", vec![]).await.unwrap_err();
        assert!(matches!(e, PlatformError::SyncFile(_)), "{e}");
        assert_eq!(holders(&p).await.len(), 40, "the previous snapshot is kept");
        assert!(p.store().identity(&format!("{tag}u50")).await.unwrap().is_none());
        if p.store().backend() == "sqlite" {
            // The grant indexes dropped for the load came back with the rollback.
            let c = rusqlite::Connection::open(dir.path().join(crate::db::SQLITE_FILE)).unwrap();
            let n: i64 = c
                .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN ('grants_entitlement', 'grants_principal')", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 2);
        }

        if let (Some(pg), Some(first)) = (&pg, &first_partition) {
            // The failed ingest's table went with its rollback; the old partition is still the one.
            assert_eq!(&partition(pg).await, first);
        }

        let rec = p.ingest(&c, &bigger, "upload", vec![]).await.unwrap();
        assert_eq!(rec.stats.as_ref().unwrap()["grants"], 60);
        if let (Some(pg), Some(first)) = (&pg, &first_partition) {
            // Swapped: a new partition, and the old table is gone.
            assert_ne!(&partition(pg).await, first);
            let (gone,): (Option<String>,) = sqlx::query_as("SELECT to_regclass($1)::text")
                .bind(first)
                .fetch_one(pg)
                .await
                .unwrap();
            assert_eq!(gone, None);
        }
        assert_eq!(holders(&p).await.len(), 60);
        assert_eq!(
            p.store()
                .grants_of_identity(&format!("{tag}u59"))
                .await
                .unwrap()
                .len(),
            1
        );
        // Ingesting the same snapshot again replaces it (no duplicates).
        p.ingest(&c, &bigger, "upload", vec![]).await.unwrap();
        assert_eq!(holders(&p).await.len(), 60);
        // Back to the smaller one: the 20 users it lacks lose their identity and account link; the others
        // keep theirs, once each.
        let rec = p.ingest(&c, &good, "upload", vec![]).await.unwrap();
        let stats = rec.stats.unwrap();
        assert_eq!(
            (stats["grants"].as_u64(), stats["accounts_linked"].as_u64()),
            (Some(40), Some(40))
        );
        assert_eq!(holders(&p).await.len(), 40);
        assert!(p.store().identity(&format!("{tag}u59")).await.unwrap().is_none());
        let u0 = p.store().identity(&format!("{tag}u0")).await.unwrap().unwrap();
        assert_eq!(u0.display_name, "Tab\there \\ new\nline");
        for i in 0..60 {
            let found = p.store().identity(&format!("{tag}u{i}")).await.unwrap();
            assert_eq!(found.is_some(), i < 40, "identity u{i}");
        }
        for i in [0, 39] {
            let held = p.store().grants_of_identity(&format!("{tag}u{i}")).await.unwrap();
            assert_eq!(held.len(), 1, "u{i} reaches its grant through one account link");
        }
    }

    /// A snapshot whose index keys fill several of the sorter's runs (so they are sorted on worker threads
    /// through temporary files and merged): the indexes built are complete and consistent.
    #[tokio::test]
    async fn sqlite_grant_indexes_sorted_in_runs_are_complete() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sync.c1z");
        let users = 30_000;
        write_sync(&file, users, "runs-");
        let (p, c) = platform_with_baton_source(dir.path(), None).await;
        p.ingest(&c, &file, "upload", vec![]).await.unwrap();
        let db = rusqlite::Connection::open(dir.path().join(crate::db::SQLITE_FILE)).unwrap();
        let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
        // Every grant is reachable through each index (the counts come from index-only scans).
        for (index, filter) in [
            ("grants_entitlement", "connector_id = ?1"),
            ("grants_principal", "principal_id > '' AND ?1 <> ''"),
        ] {
            let n: i64 = db
                .query_row(
                    &format!("SELECT count(*) FROM grants INDEXED BY {index} WHERE {filter}"),
                    [&c.id],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, users as i64, "{index}");
        }
        let holders = p
            .store()
            .holders(
                &c.id,
                "group:runs-g0:member",
                &ListQuery {
                    limit: Some(10),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(holders.items.len(), 10);
        for i in [0, 12_345, users - 1] {
            let held = p.store().grants_of_identity(&format!("runs-u{i}")).await.unwrap();
            assert_eq!(held.len(), 1, "u{i}");
        }
    }

    #[tokio::test]
    async fn a_sync_failing_mid_way_leaves_the_previous_snapshot_sqlite() {
        failed_ingest_keeps_the_snapshot(None).await;
    }

    #[tokio::test]
    async fn a_sync_failing_mid_way_leaves_the_previous_snapshot_postgres() {
        // Runs when scripts/test-db has set the URL (as the server's platform tests do).
        if let Ok(url) = std::env::var("STEWARD_TEST_DATABASE_URL") {
            failed_ingest_keeps_the_snapshot(Some(url)).await;
        }
    }
}
