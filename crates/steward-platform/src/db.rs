//! Connection pools for the two backends and the embedded, explicit migrations.
//!
//! Every query is written once with `$n` placeholders (SQLite and PostgreSQL both accept them) and run on
//! either backend through [`with_db!`]; the few statements that differ (DDL types, bulk loads) are written
//! per backend.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::error::{PlatformError, Result};

/// A pool on one of the backends.
#[derive(Debug, Clone)]
pub enum Db {
    /// Embedded SQLite (WAL).
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the pool of whichever backend `$db` is.
macro_rules! with_db {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($p) => $body,
            $crate::db::Db::Postgres($p) => $body,
        }
    };
}
pub(crate) use with_db;

/// The database file name in a data directory.
pub const SQLITE_FILE: &str = "steward.db";

impl Db {
    /// Connects to `url` (`postgres://…`, `sqlite://PATH`) or, without one, to `<data_dir>/steward.db`.
    pub async fn connect(url: Option<&str>, data_dir: Option<&Path>) -> Result<Db> {
        match url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                let opts = PgConnectOptions::from_str(u)?.disable_statement_logging();
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(opts)
                    .await?;
                Ok(Db::Postgres(pool))
            }
            Some(u) if u.starts_with("sqlite:") => Self::sqlite(SqliteConnectOptions::from_str(u)?).await,
            Some(u) => Err(PlatformError::Invalid(format!(
                "unsupported database URL {u:?}: use postgres://… or sqlite://PATH"
            ))),
            None => {
                let dir = data_dir
                    .ok_or_else(|| PlatformError::Invalid("give --db URL or --data-dir DIR".into()))?;
                std::fs::create_dir_all(dir)?;
                Self::sqlite(SqliteConnectOptions::new().filename(dir.join(SQLITE_FILE))).await
            }
        }
    }

    async fn sqlite(opts: SqliteConnectOptions) -> Result<Db> {
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(false)
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory")
            .disable_statement_logging();
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        Ok(Db::Sqlite(pool))
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Applies the migrations not yet applied, each in its own transaction, in order.
    pub async fn migrate(&self) -> Result<Vec<u32>> {
        let mut applied = Vec::new();
        with_db!(self, p => {
            // One connection throughout: the PostgreSQL advisory lock belongs to the session.
            let mut conn = p.acquire().await?;
            if let Db::Postgres(_) = self {
                // Two servers starting at once: one migrates, the other waits.
                sqlx::query("SELECT pg_advisory_lock(7201)").execute(&mut *conn).await?;
            }
            sqlx::query("CREATE TABLE IF NOT EXISTS steward_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
                .execute(&mut *conn)
                .await?;
            let done: Vec<(i64,)> = sqlx::query_as("SELECT version FROM steward_migrations").fetch_all(&mut *conn).await?;
            for m in MIGRATIONS {
                if done.iter().any(|(v,)| *v == i64::from(m.version)) {
                    continue;
                }
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let sql = match self { Db::Sqlite(_) => m.sqlite, Db::Postgres(_) => m.postgres };
                for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    sqlx::query(stmt).execute(&mut *tx).await?;
                }
                sqlx::query("INSERT INTO steward_migrations (version, name, applied_at) VALUES ($1, $2, $3) ON CONFLICT (version) DO NOTHING")
                    .bind(i64::from(m.version))
                    .bind(m.name)
                    .bind(crate::clock::rfc3339(time::OffsetDateTime::now_utc()))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                applied.push(m.version);
            }
            if let Db::Postgres(_) = self {
                sqlx::query("SELECT pg_advisory_unlock(7201)").execute(&mut *conn).await?;
            }
        });
        Ok(applied)
    }
}

/// One migration: the same schema change in each backend's dialect.
pub struct Migration {
    /// Increasing number.
    pub version: u32,
    /// What it does.
    pub name: &'static str,
    /// SQLite statements, `;`-separated.
    pub sqlite: &'static str,
    /// PostgreSQL statements, `;`-separated.
    pub postgres: &'static str,
}

const V1_COMMON: &str = r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, identity_id TEXT,
  hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, revoked BOOLEAN NOT NULL DEFAULT FALSE);
CREATE TABLE connectors (id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL UNIQUE, settings TEXT NOT NULL,
  secrets TEXT NOT NULL, secret_names TEXT NOT NULL, owners TEXT NOT NULL, identity_source BOOLEAN NOT NULL,
  app_id TEXT, sync_interval_secs BIGINT, status TEXT NOT NULL, status_reason TEXT, last_sync_at TEXT,
  current_sync_id TEXT, created_at TEXT NOT NULL);
CREATE TABLE syncs (id TEXT PRIMARY KEY, seq BIGINT NOT NULL, connector_id TEXT NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL,
  started_at TEXT NOT NULL, ended_at TEXT, error TEXT, stats TEXT, log TEXT NOT NULL);
CREATE INDEX syncs_connector ON syncs (connector_id, seq);
CREATE TABLE resources (connector_id TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT NOT NULL,
  display_name TEXT NOT NULL, parent TEXT, login TEXT, email TEXT, profile TEXT NOT NULL);
CREATE INDEX resources_key ON resources (connector_id, resource_type, resource_id);
CREATE TABLE entitlements (connector_id TEXT NOT NULL, id TEXT NOT NULL, resource_type TEXT NOT NULL,
  resource_id TEXT NOT NULL, display_name TEXT NOT NULL, slug TEXT NOT NULL);
CREATE INDEX entitlements_key ON entitlements (connector_id, id);
CREATE INDEX entitlements_resource ON entitlements (connector_id, resource_type, resource_id);
CREATE TABLE grants (connector_id TEXT NOT NULL, id TEXT NOT NULL, entitlement_id TEXT NOT NULL,
  principal_type TEXT NOT NULL, principal_id TEXT NOT NULL, direct BOOLEAN NOT NULL, via TEXT);
CREATE INDEX grants_entitlement ON grants (connector_id, entitlement_id);
CREATE INDEX grants_principal ON grants (principal_id, principal_type);
CREATE TABLE identities (id TEXT PRIMARY KEY, connector_id TEXT NOT NULL, kind TEXT NOT NULL,
  display_name TEXT NOT NULL, upn TEXT, email TEXT, department TEXT, job_title TEXT, manager_id TEXT,
  status TEXT NOT NULL);
CREATE INDEX identities_connector ON identities (connector_id);
CREATE TABLE account_links (connector_id TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT NOT NULL,
  identity_id TEXT NOT NULL, matched_by TEXT NOT NULL);
CREATE INDEX account_links_identity ON account_links (identity_id);
CREATE INDEX account_links_connector ON account_links (connector_id);
CREATE TABLE apps (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL, managed BOOLEAN NOT NULL,
  connector_id TEXT, resource_id TEXT, owners TEXT NOT NULL, created_at TEXT NOT NULL,
  UNIQUE (connector_id, resource_id));
CREATE TABLE app_entitlements (app_id TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
  connector_id TEXT, idp_entitlement_id TEXT, PRIMARY KEY (app_id, id));
CREATE TABLE linked_entitlements (app_id TEXT NOT NULL, idp_entitlement_id TEXT NOT NULL, connector_id TEXT NOT NULL,
  action TEXT NOT NULL, name TEXT, app_entitlement_id TEXT, updated_at TEXT NOT NULL,
  PRIMARY KEY (app_id, idp_entitlement_id))
"#;

const V2_COMMON: &str = r#"
CREATE TABLE access_profiles (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, spec TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE policies (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, spec TEXT NOT NULL, created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL);
CREATE TABLE entitlement_rules (id TEXT PRIMARY KEY, app_id TEXT NOT NULL, spec TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX entitlement_rules_app ON entitlement_rules (app_id);
CREATE TABLE requests (id TEXT PRIMARY KEY, requester_id TEXT NOT NULL, app_id TEXT NOT NULL, entitlement_id TEXT NOT NULL,
  state TEXT NOT NULL, version BIGINT NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE INDEX requests_requester ON requests (requester_id, created_at);
CREATE INDEX requests_state ON requests (state);
CREATE TABLE approvals (request_id TEXT NOT NULL, step BIGINT NOT NULL, approver_id TEXT NOT NULL,
  PRIMARY KEY (request_id, step, approver_id));
CREATE INDEX approvals_approver ON approvals (approver_id);
CREATE TABLE tasks (id TEXT PRIMARY KEY, kind TEXT NOT NULL, ref_id TEXT NOT NULL, payload TEXT NOT NULL,
  run_at_s BIGINT NOT NULL, attempts BIGINT NOT NULL, state TEXT NOT NULL, lease_owner TEXT, lease_until_s BIGINT,
  last_error TEXT, created_at TEXT NOT NULL);
CREATE INDEX tasks_due ON tasks (state, run_at_s);
CREATE TABLE audit_log (seq BIGINT PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
  target_type TEXT NOT NULL, target_id TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX audit_target ON audit_log (target_type, target_id);
CREATE TABLE webhooks (id TEXT PRIMARY KEY, url TEXT NOT NULL, events TEXT NOT NULL, format TEXT NOT NULL,
  created_at TEXT NOT NULL)
"#;

/// The migrations, oldest first. Never edit one that has shipped: add a new one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "platform foundation: tokens, connectors, syncs, snapshot, identities, apps, linked entitlements",
        sqlite: V1_COMMON,
        postgres: V1_COMMON,
    },
    Migration {
        version: 2,
        name: "access requests: profiles, policies, entitlement rules, requests, approvals, tasks, audit log, webhooks",
        sqlite: V2_COMMON,
        postgres: V2_COMMON,
    },
    Migration {
        version: 3,
        name: "read paths: identities by lowercased UPN (access by UPN without a table scan)",
        sqlite: V3_COMMON,
        postgres: V3_COMMON,
    },
    Migration {
        version: 4,
        name: "read paths: bindings by IdP entitlement (access paths without a scan of linked_entitlements)",
        sqlite: V4_COMMON,
        postgres: V4_COMMON,
    },
    Migration {
        version: 5,
        name: "ingest: grants partitioned by connector on PostgreSQL (each snapshot loaded aside, indexed once, swapped in)",
        sqlite: "",
        postgres: V5_POSTGRES,
    },
    Migration {
        version: 6,
        name: "read paths: requests by state, newest first (request lists and sweeps without a sort of every request)",
        sqlite: V6_COMMON,
        postgres: V6_COMMON,
    },
    Migration {
        version: 7,
        name: "ingest: a grant's id is stored only when it is not <entitlement>:<principal type>:<principal id> (NULL otherwise; a third of each grant row)",
        sqlite: V7_SQLITE,
        postgres: V7_POSTGRES,
    },
    Migration {
        version: 8,
        name: "PostgreSQL: each grant partition indexed by entitlement id alone (its connector id is the same in every row)",
        sqlite: "",
        postgres: V8_POSTGRES,
    },
];

/// A partition holds one connector's grants, so the connector id in front of each key of its entitlement
/// index only made the keys longer (and PostgreSQL's sort compares it, under the database's collation, for
/// every pair). Queries name the connector, which selects the partition. The default partition, which
/// may still hold rows from before migration 5, keeps an index by connector for the ingest's delete.
/// SQLite keeps `(connector_id, entitlement_id)`: there one table holds every connector.
const V8_POSTGRES: &str = r#"
DROP INDEX grants_entitlement;
CREATE INDEX grants_entitlement ON grants (entitlement_id);
CREATE INDEX grants_unpartitioned_connector ON grants_unpartitioned (connector_id)
"#;

/// SQLite cannot drop a NOT NULL constraint: the table is rebuilt, its derived ids made NULL, and its
/// indexes created again.
const V7_SQLITE: &str = r#"
CREATE TABLE grants_v7 (connector_id TEXT NOT NULL, id TEXT, entitlement_id TEXT NOT NULL,
  principal_type TEXT NOT NULL, principal_id TEXT NOT NULL, direct BOOLEAN NOT NULL, via TEXT);
INSERT INTO grants_v7 (connector_id, id, entitlement_id, principal_type, principal_id, direct, via)
  SELECT connector_id, NULLIF(id, entitlement_id || ':' || principal_type || ':' || principal_id), entitlement_id,
  principal_type, principal_id, direct, via FROM grants;
DROP TABLE grants;
ALTER TABLE grants_v7 RENAME TO grants;
CREATE INDEX grants_entitlement ON grants (connector_id, entitlement_id);
CREATE INDEX grants_principal ON grants (principal_id, principal_type)
"#;

/// On the partitioned table the change reaches every partition; rows already stored keep their ids
/// until their connector's next ingest replaces them.
const V7_POSTGRES: &str = "ALTER TABLE grants ALTER COLUMN id DROP NOT NULL";

const V6_COMMON: &str = "CREATE INDEX requests_state_created ON requests (state, created_at)";

/// PostgreSQL: `grants` becomes a table partitioned by connector; the rows ingested before stay in its
/// default partition (each connector's rows there are deleted by its next ingest). SQLite keeps one table.
const V5_POSTGRES: &str = r#"
CREATE TABLE grant_partitions (connector_id TEXT PRIMARY KEY, table_name TEXT NOT NULL);
ALTER TABLE grants RENAME TO grants_unpartitioned;
ALTER INDEX grants_entitlement RENAME TO grants_unpartitioned_entitlement;
ALTER INDEX grants_principal RENAME TO grants_unpartitioned_principal;
CREATE TABLE grants (connector_id TEXT NOT NULL, id TEXT NOT NULL, entitlement_id TEXT NOT NULL,
  principal_type TEXT NOT NULL, principal_id TEXT NOT NULL, direct BOOLEAN NOT NULL, via TEXT)
  PARTITION BY LIST (connector_id);
CREATE INDEX grants_entitlement ON grants (connector_id, entitlement_id);
CREATE INDEX grants_principal ON grants (principal_id, principal_type);
ALTER TABLE grants ATTACH PARTITION grants_unpartitioned DEFAULT
"#;

/// `Platform::access` looks the bindings of each group on an access path up by IdP entitlement alone (the
/// primary key starts with the app).
const V4_COMMON: &str = "CREATE INDEX linked_entitlements_idp ON linked_entitlements (idp_entitlement_id)";

/// `Store::identity` looks identities up by id or by `lower(upn)`; both sides of its UNION use an index.
const V3_COMMON: &str = "CREATE INDEX identities_upn_lower ON identities (lower(upn))";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_7_keeps_explicit_grant_ids_and_drops_derived_ones_on_sqlite() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        for m in MIGRATIONS.iter().filter(|m| m.version < 7) {
            c.execute_batch(m.sqlite).unwrap();
        }
        c.execute_batch(
            "INSERT INTO grants VALUES ('c1', 'group:g:member:user:u1', 'group:g:member', 'user', 'u1', TRUE, NULL);
             INSERT INTO grants VALUES ('c1', 'custom-id', 'group:g:member', 'user', 'u2', FALSE, 'group:h:member')",
        )
        .unwrap();
        c.execute_batch(V7_SQLITE).unwrap();
        let rows: Vec<(Option<String>, String, Option<String>)> = c
            .prepare("SELECT id, principal_id, via FROM grants ORDER BY principal_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (None, "u1".to_owned(), None),
                (
                    Some("custom-id".to_owned()),
                    "u2".to_owned(),
                    Some("group:h:member".to_owned())
                ),
            ]
        );
        let indexes: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'grants'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 2);
    }
}
