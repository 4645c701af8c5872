//! The v1 SQLite schema, exactly as Baton readers expect it (table and index names included; the two
//! swapped-looking `v1_resources` index names are what real files contain). `v1_sync_runs` has the columns
//! the widely installed `baton` CLI (SDK v0.7.27) knows and nothing more.
//!
//! Secondary indexes of the bulk tables are dropped while a sync loads and rebuilt at its end
//! ([`BULK_INDEXES`]); the small tables keep theirs, and so do the two partial indexes of `v1_grants`
//! (only expandable grants enter them, so keeping them costs nothing during the load, while building
//! them afterwards would cost a scan of the whole table each).

/// Tables, and the indexes that always exist.
pub const TABLES: &str = "
CREATE TABLE IF NOT EXISTS v1_resource_types (
  id integer primary key, external_id text not null, data blob not null, sync_id text not null,
  discovered_at datetime not null);
CREATE UNIQUE INDEX IF NOT EXISTS idx_resource_types_external_sync_v1 ON v1_resource_types (external_id, sync_id);
CREATE TABLE IF NOT EXISTS v1_resources (
  id integer primary key, resource_type_id text not null, external_id text not null,
  parent_resource_type_id text, parent_resource_id text, data blob not null, sync_id text not null,
  discovered_at datetime not null);
CREATE TABLE IF NOT EXISTS v1_entitlements (
  id integer primary key, resource_type_id text not null, resource_id text not null, external_id text not null,
  data blob not null, sync_id text not null, discovered_at datetime not null);
CREATE TABLE IF NOT EXISTS v1_grants (
  id integer primary key, resource_type_id text not null, resource_id text not null,
  entitlement_id text not null, principal_resource_type_id text not null, principal_resource_id text not null,
  external_id text not null, expansion blob, needs_expansion integer not null default 0, data blob not null,
  sync_id text not null, discovered_at datetime not null);
CREATE INDEX IF NOT EXISTS idx_grants_sync_expansion_v1 ON v1_grants (sync_id) WHERE expansion IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_grants_sync_needs_expansion_v1 ON v1_grants (sync_id) WHERE needs_expansion = 1;
CREATE TABLE IF NOT EXISTS v1_sync_runs (
  id integer primary key, sync_id text not null, started_at datetime not null, ended_at datetime,
  sync_token text not null, sync_type text not null default 'full', parent_sync_id text not null default '',
  linked_sync_id text not null default '', supports_diff integer not null default 0);
CREATE UNIQUE INDEX IF NOT EXISTS idx_sync_runs_sync_id_v1 ON v1_sync_runs (sync_id);
CREATE TABLE IF NOT EXISTS v1_assets (
  id integer primary key, external_id text not null, content_type text not null, data blob not null,
  sync_id text not null, discovered_at datetime not null);
CREATE UNIQUE INDEX IF NOT EXISTS idx_assets_external_sync_v1 ON v1_assets (external_id, sync_id);
CREATE TABLE IF NOT EXISTS v1_connector_sessions (
  id integer primary key, sync_id text not null, key text not null, value blob not null);
CREATE UNIQUE INDEX IF NOT EXISTS idx_session_store_sync_key_v1 ON v1_connector_sessions (sync_id, key);
";

/// A secondary index of a bulk table: (name, table, DDL).
pub struct BulkIndex {
    /// Index name.
    pub name: &'static str,
    /// Its table.
    pub table: &'static str,
    /// Whether it is UNIQUE on (external_id, sync_id) — duplicates must be resolved before it is built.
    pub unique: bool,
    /// `CREATE INDEX` statement.
    pub ddl: &'static str,
}

/// The bulk tables' secondary indexes, in build order (unique ones first).
pub const BULK_INDEXES: &[BulkIndex] = &[
    BulkIndex {
        name: "idx_resources_parent_resource_id_v1",
        table: "v1_resources",
        unique: true,
        ddl: "CREATE UNIQUE INDEX IF NOT EXISTS idx_resources_parent_resource_id_v1 ON v1_resources (external_id, sync_id)",
    },
    BulkIndex {
        name: "idx_entitlements_external_sync_v1",
        table: "v1_entitlements",
        unique: true,
        ddl: "CREATE UNIQUE INDEX IF NOT EXISTS idx_entitlements_external_sync_v1 ON v1_entitlements (external_id, sync_id)",
    },
    BulkIndex {
        name: "idx_grants_external_sync_v1",
        table: "v1_grants",
        unique: true,
        ddl: "CREATE UNIQUE INDEX IF NOT EXISTS idx_grants_external_sync_v1 ON v1_grants (external_id, sync_id)",
    },
    BulkIndex {
        name: "idx_resources_resource_type_id_v1",
        table: "v1_resources",
        unique: false,
        ddl: "CREATE INDEX IF NOT EXISTS idx_resources_resource_type_id_v1 ON v1_resources (resource_type_id)",
    },
    BulkIndex {
        name: "idx_resources_external_sync_v1",
        table: "v1_resources",
        unique: false,
        ddl: "CREATE INDEX IF NOT EXISTS idx_resources_external_sync_v1 ON v1_resources (parent_resource_type_id, parent_resource_id)",
    },
    BulkIndex {
        name: "idx_entitlements_resource_id_v1",
        table: "v1_entitlements",
        unique: false,
        ddl: "CREATE INDEX IF NOT EXISTS idx_entitlements_resource_id_v1 ON v1_entitlements (resource_type_id, resource_id)",
    },
    BulkIndex {
        name: "idx_grants_resource_type_id_resource_id_v1",
        table: "v1_grants",
        unique: false,
        ddl: "CREATE INDEX IF NOT EXISTS idx_grants_resource_type_id_resource_id_v1 ON v1_grants (resource_type_id, resource_id)",
    },
    BulkIndex {
        name: "idx_grants_principal_id_v1",
        table: "v1_grants",
        unique: false,
        ddl: "CREATE INDEX IF NOT EXISTS idx_grants_principal_id_v1 ON v1_grants (principal_resource_type_id, principal_resource_id)",
    },
    BulkIndex {
        name: "idx_grants_entitlement_id_principal_id_v1",
        table: "v1_grants",
        unique: false,
        ddl: "CREATE INDEX IF NOT EXISTS idx_grants_entitlement_id_principal_id_v1 ON v1_grants (entitlement_id, principal_resource_type_id, principal_resource_id)",
    },
];
