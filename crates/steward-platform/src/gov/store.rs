//! Storage of access requests, behind [`GovStore`]; [`SqlStore`] implements it on both backends.
//!
//! Invariants:
//! * Every change is a [`Write`] applied in one transaction: the request (guarded by its version, so two
//!   servers never both move it), its approvers, the tasks it queues, and its audit entries. Either all of
//!   it lands or none.
//! * The audit log is appended inside that transaction, one writer at a time (SQLite: `BEGIN IMMEDIATE`;
//!   PostgreSQL: a transaction-scoped advisory lock), so the hash chain has no forks or gaps.
//! * A task is run by whoever holds its lease; a lease ends at `lease_until_s`, after which another worker
//!   may claim it again (a crashed server's work is picked up, never lost).

use async_trait::async_trait;
use sqlx::AssertSqlSafe;

use super::audit;
use super::types::*;
use crate::db::{Db, with_db};
use crate::error::{PlatformError, Result};
use crate::store::SqlStore;

/// A queued unit of background work.
#[derive(Debug, Clone)]
pub struct Task {
    /// Id.
    pub id: String,
    /// `provision`, `revoke`, `webhook`.
    pub kind: String,
    /// What it is about (request id, webhook id).
    pub ref_id: String,
    /// Details.
    pub payload: serde_json::Value,
    /// When it is due (Unix seconds).
    pub run_at_s: i64,
    /// Attempts so far (including the running one, once claimed).
    pub attempts: i64,
}

/// An audit entry to append (the store numbers and chains it).
#[derive(Debug, Clone)]
pub struct NewAudit {
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Kind of thing.
    pub target_type: String,
    /// Its id.
    pub target_id: String,
    /// Details.
    pub detail: serde_json::Value,
}

/// One atomic change.
#[derive(Debug, Default)]
pub struct Write {
    /// Insert (`None`) or update (`Some(version)`, applied only if the stored version is still it) a request.
    pub request: Option<(Request, Option<i64>)>,
    /// Replace the waiting approvers of a request: (request id, step, approvers).
    pub approvers: Option<(String, usize, Vec<String>)>,
    /// Tasks to queue.
    pub tasks: Vec<Task>,
    /// Finish this claimed task: (task id, lease owner).
    pub finish_task: Option<(String, String)>,
    /// Audit entries.
    pub audit: Vec<NewAudit>,
    /// Configuration rows to insert: (table, id, name or app id, spec JSON).
    pub config: Vec<(ConfigTable, String, String, String)>,
    /// When (RFC 3339).
    pub at: String,
}

/// Configuration tables a [`Write`] can insert into.
#[derive(Debug, Clone, Copy)]
pub enum ConfigTable {
    /// `access_profiles (id, name, spec)`.
    Profile,
    /// `policies (id, name, spec)`.
    Policy,
    /// `entitlement_rules (id, app_id, spec)`.
    Rule,
    /// `webhooks (id, url, events+format as spec)`.
    Webhook,
}

/// Storage of requests, policies, rules, profiles, tasks and the audit log.
#[async_trait]
pub trait GovStore: Send + Sync + 'static {
    /// Applies `w` atomically. False (and nothing applied) when a guarded request version moved on.
    async fn commit(&self, w: Write) -> Result<bool>;
    /// Applies all of `ws` in one transaction, in order. False (and nothing applied) when any guarded
    /// request version moved on.
    async fn commit_all(&self, ws: &[Write]) -> Result<bool>;
    /// Access profiles.
    async fn profiles(&self) -> Result<Vec<AccessProfile>>;
    /// Policies.
    async fn policies(&self) -> Result<Vec<Policy>>;
    /// Entitlement rules (of one app, or all).
    async fn rules(&self, app_id: Option<&str>) -> Result<Vec<EntitlementRule>>;
    /// Webhooks.
    async fn webhooks(&self) -> Result<Vec<Webhook>>;
    /// A request with its version.
    async fn request(&self, id: &str) -> Result<Option<(Request, i64)>>;
    /// Requests, newest first: (requester filter, state filter, limit, offset).
    async fn requests(
        &self,
        requester: Option<&str>,
        state: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Request>>;
    /// Open requests of `requester` for an app entitlement.
    async fn open_requests(&self, requester: &str, app_id: &str, entitlement: &str) -> Result<Vec<Request>>;
    /// Requests waiting for `approver` (at their current step).
    async fn waiting_for(&self, approver: &str, limit: i64, offset: i64) -> Result<Vec<Request>>;
    /// Requests in these states.
    async fn requests_in(&self, states: &[RequestState]) -> Result<Vec<Request>>;
    /// Claims up to `limit` due tasks (earliest first) for `owner` until `lease_until_s`.
    async fn claim(&self, owner: &str, now_s: i64, lease_until_s: i64, limit: i64) -> Result<Vec<Task>>;
    /// Puts a claimed task back to run at `run_at_s` (a retry), with the error.
    async fn retry_task(&self, id: &str, owner: &str, run_at_s: i64, error: &str) -> Result<()>;
    /// Gives up a claimed task (kept, state `dead`, with the error).
    async fn kill_task(&self, id: &str, owner: &str, error: &str) -> Result<()>;
    /// Deletes finished tasks due before `before_s`; returns how many (dead ones are kept for inspection).
    async fn purge_done_tasks(&self, before_s: i64) -> Result<u64>;
    /// Tasks queued and not yet done: (kind, ref id, attempts, last error).
    async fn pending_tasks(&self) -> Result<Vec<(String, String, i64, Option<String>)>>;
    /// Audit entries matching `q`, oldest first, `limit` from `offset`.
    async fn audit(&self, q: &AuditQuery, limit: i64, offset: i64) -> Result<Vec<AuditEntry>>;
    /// The recorded head of the chain: (seq, hash).
    async fn audit_head(&self) -> Result<Option<(i64, String)>>;
    /// User principals holding an entitlement in any snapshot (directly or through nesting).
    async fn entitlement_users(&self, entitlement_id: &str) -> Result<Vec<String>>;
    /// Whether the snapshot of `connector` shows `principal` holding `entitlement` directly.
    async fn holds_direct(&self, connector: &str, entitlement: &str, principal: &str) -> Result<bool>;
    /// Ended (expired or revoked) requests with a target of `connector` that its snapshot shows the
    /// requester holding directly again: their ids, oldest first. One query, however many requests ended.
    async fn drift_candidates(&self, connector: &str) -> Result<Vec<String>>;
    /// Connectors attached to an app: (id, kind), by id.
    async fn attached_connectors(&self, app_id: &str) -> Result<Vec<(String, String)>>;
    /// Every entitlement in a connector's snapshot as (id, name, resource type, holders), by resource type,
    /// name and id; `holders` is counted only when asked (one index range per entitlement), else 0.
    async fn connector_entitlements(
        &self,
        connector_id: &str,
        with_holders: bool,
    ) -> Result<Vec<(String, String, String, i64)>>;
}

const REQ_COLS: &str = "body, version";

fn decode_request(body: &str, version: i64) -> Result<(Request, i64)> {
    serde_json::from_str::<Request>(body)
        .map(|r| (r, version))
        .map_err(|e| PlatformError::Invalid(format!("stored request is unreadable: {e}")))
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Applies one [`Write`] on an open transaction `$tx` of either backend (without committing); on a version
/// conflict or a taken name it rolls back and returns from the enclosing function.
macro_rules! apply_write {
    ($tx:ident, $w:ident) => {{
        if let Some((r, guard)) = &$w.request {
            let body = json(r);
            match guard {
                None => {
                    sqlx::query("INSERT INTO requests (id, requester_id, app_id, entitlement_id, state, version, body, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8)")
                        .bind(&r.id).bind(&r.requester_id).bind(&r.app_id).bind(&r.entitlement).bind(r.state.as_str())
                        .bind(&body).bind(&r.created_at).bind(&r.updated_at)
                        .execute(&mut *$tx).await?;
                }
                Some(v) => {
                    let n = sqlx::query("UPDATE requests SET state = $1, body = $2, updated_at = $3, version = version + 1 WHERE id = $4 AND version = $5")
                        .bind(r.state.as_str()).bind(&body).bind(&r.updated_at).bind(&r.id).bind(*v)
                        .execute(&mut *$tx).await?.rows_affected();
                    if n != 1 {
                        $tx.rollback().await?;
                        return Ok(false);
                    }
                }
            }
        }
        if let Some((id, owner)) = &$w.finish_task {
            sqlx::query("UPDATE tasks SET state = 'done', lease_owner = NULL, lease_until_s = NULL WHERE id = $1 AND lease_owner = $2")
                .bind(id).bind(owner).execute(&mut *$tx).await?;
        }
        if let Some((rid, step, approvers)) = &$w.approvers {
            sqlx::query("DELETE FROM approvals WHERE request_id = $1").bind(rid).execute(&mut *$tx).await?;
            for a in approvers {
                sqlx::query("INSERT INTO approvals (request_id, step, approver_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(rid).bind(*step as i64).bind(a).execute(&mut *$tx).await?;
            }
        }
        for t in &$w.tasks {
            sqlx::query("INSERT INTO tasks (id, kind, ref_id, payload, run_at_s, attempts, state, created_at) VALUES ($1, $2, $3, $4, $5, 0, 'queued', $6)")
                .bind(&t.id).bind(&t.kind).bind(&t.ref_id).bind(json(&t.payload)).bind(t.run_at_s).bind(&$w.at)
                .execute(&mut *$tx).await?;
        }
        for (table, id, name, spec) in &$w.config {
            let sql = match table {
                ConfigTable::Profile => "INSERT INTO access_profiles (id, name, spec, created_at) VALUES ($1, $2, $3, $4)",
                ConfigTable::Policy => "INSERT INTO policies (id, name, spec, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
                ConfigTable::Rule => "INSERT INTO entitlement_rules (id, app_id, spec, created_at) VALUES ($1, $2, $3, $4)",
                ConfigTable::Webhook => "INSERT INTO webhooks (id, url, events, format, created_at) VALUES ($1, $2, $3, '', $4)",
            };
            let r = sqlx::query(sql).bind(id).bind(name).bind(spec).bind(&$w.at).execute(&mut *$tx).await;
            match r {
                Ok(_) => {}
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    $tx.rollback().await?;
                    return Err(PlatformError::Conflict(format!("the name {name:?} is taken")));
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !$w.audit.is_empty() {
            let last: Option<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *$tx).await?;
            let (mut seq, mut prev) = last.unwrap_or((0, audit::GENESIS.to_owned()));
            for a in &$w.audit {
                seq += 1;
                let mut e = AuditEntry {
                    seq,
                    at: $w.at.clone(),
                    actor: a.actor.clone(),
                    action: a.action.clone(),
                    target_type: a.target_type.clone(),
                    target_id: a.target_id.clone(),
                    detail: a.detail.clone(),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                e.hash = audit::hash(&e);
                sqlx::query("INSERT INTO audit_log (seq, at, actor, action, target_type, target_id, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                    .bind(e.seq).bind(&e.at).bind(&e.actor).bind(&e.action).bind(&e.target_type).bind(&e.target_id)
                    .bind(json(&e.detail)).bind(&e.prev_hash).bind(&e.hash)
                    .execute(&mut *$tx).await?;
                prev = e.hash;
            }
            sqlx::query("INSERT INTO meta (key, value) VALUES ('audit_head', $1) ON CONFLICT (key) DO UPDATE SET value = $1")
                .bind(format!("{seq} {prev}")).execute(&mut *$tx).await?;
        }
    }};
}

#[async_trait]
impl GovStore for SqlStore {
    async fn commit(&self, w: Write) -> Result<bool> {
        self.commit_all(std::slice::from_ref(&w)).await
    }

    async fn commit_all(&self, ws: &[Write]) -> Result<bool> {
        match self.db() {
            Db::Sqlite(p) => {
                // Take the write lock first: reads inside then see the latest chain head.
                let mut tx = p.begin_with("BEGIN IMMEDIATE").await?;
                for w in ws {
                    apply_write!(tx, w);
                }
                tx.commit().await?;
            }
            Db::Postgres(p) => {
                let mut tx = p.begin().await?;
                if ws.iter().any(|w| !w.audit.is_empty()) {
                    sqlx::query("SELECT pg_advisory_xact_lock(7202)")
                        .execute(&mut *tx)
                        .await?;
                }
                for w in ws {
                    apply_write!(tx, w);
                }
                tx.commit().await?;
            }
        }
        Ok(true)
    }

    async fn profiles(&self) -> Result<Vec<AccessProfile>> {
        let rows: Vec<(String, String, String, String)> = with_db!(self.db(), p => {
            sqlx::query_as("SELECT id, name, spec, created_at FROM access_profiles ORDER BY name").fetch_all(p).await?
        });
        Ok(rows
            .into_iter()
            .filter_map(|(id, name, spec, created_at)| {
                Some(AccessProfile {
                    id,
                    name,
                    spec: serde_json::from_str(&spec).ok()?,
                    created_at,
                })
            })
            .collect())
    }

    async fn policies(&self) -> Result<Vec<Policy>> {
        let rows: Vec<(String, String, String, String)> = with_db!(self.db(), p => {
            sqlx::query_as("SELECT id, spec, created_at, updated_at FROM policies ORDER BY name").fetch_all(p).await?
        });
        Ok(rows
            .into_iter()
            .filter_map(|(id, spec, created_at, updated_at)| {
                Some(Policy {
                    id,
                    spec: serde_json::from_str(&spec).ok()?,
                    created_at,
                    updated_at,
                })
            })
            .collect())
    }

    async fn rules(&self, app_id: Option<&str>) -> Result<Vec<EntitlementRule>> {
        let rows: Vec<(String, String, String, String)> = with_db!(self.db(), p => {
            match app_id {
                Some(a) => sqlx::query_as("SELECT id, app_id, spec, created_at FROM entitlement_rules WHERE app_id = $1 ORDER BY created_at, id").bind(a).fetch_all(p).await?,
                None => sqlx::query_as("SELECT id, app_id, spec, created_at FROM entitlement_rules ORDER BY created_at, id").fetch_all(p).await?,
            }
        });
        Ok(rows
            .into_iter()
            .filter_map(|(id, app_id, spec, created_at)| {
                Some(EntitlementRule {
                    id,
                    app_id,
                    spec: serde_json::from_str(&spec).ok()?,
                    created_at,
                })
            })
            .collect())
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>> {
        let rows: Vec<(String, String, String, String)> = with_db!(self.db(), p => {
            sqlx::query_as("SELECT id, url, events, created_at FROM webhooks ORDER BY created_at, id").fetch_all(p).await?
        });
        Ok(rows
            .into_iter()
            .filter_map(|(id, url, spec, created_at)| {
                let v: serde_json::Value = serde_json::from_str(&spec).ok()?;
                Some(Webhook {
                    id,
                    url,
                    events: serde_json::from_value(v.get("events")?.clone()).ok()?,
                    format: v.get("format")?.as_str()?.to_owned(),
                    signed: v.get("secret").is_some_and(|s| s.is_string()),
                    created_at,
                    secret_enc: v.get("secret").and_then(|s| s.as_str()).map(str::to_owned),
                })
            })
            .collect())
    }

    async fn request(&self, id: &str) -> Result<Option<(Request, i64)>> {
        let row: Option<(String, i64)> = with_db!(self.db(), p => {
            sqlx::query_as(AssertSqlSafe(format!("SELECT {REQ_COLS} FROM requests WHERE id = $1"))).bind(id).fetch_optional(p).await?
        });
        row.map(|(b, v)| decode_request(&b, v)).transpose()
    }

    async fn requests(
        &self,
        requester: Option<&str>,
        state: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Request>> {
        // Only the filters given are in the statement, so that the planner can walk an index in order
        // (`requests_state_created`, `requests_requester`) instead of sorting the whole table.
        let mut cond = Vec::new();
        if requester.is_some() {
            cond.push(format!("requester_id = ${}", cond.len() + 1));
        }
        if state.is_some() {
            cond.push(format!("state = ${}", cond.len() + 1));
        }
        let sql = format!(
            "SELECT {REQ_COLS} FROM requests {} ORDER BY created_at DESC, id LIMIT ${} OFFSET ${}",
            if cond.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", cond.join(" AND "))
            },
            cond.len() + 1,
            cond.len() + 2
        );
        let rows: Vec<(String, i64)> = with_db!(self.db(), p => {
            let mut q = sqlx::query_as(AssertSqlSafe(sql));
            if let Some(r) = requester {
                q = q.bind(r);
            }
            if let Some(s) = state {
                q = q.bind(s);
            }
            q.bind(limit).bind(offset).fetch_all(p).await?
        });
        rows.iter()
            .map(|(b, v)| decode_request(b, *v).map(|x| x.0))
            .collect()
    }

    async fn open_requests(&self, requester: &str, app_id: &str, entitlement: &str) -> Result<Vec<Request>> {
        let rows: Vec<(String, i64)> = with_db!(self.db(), p => {
            sqlx::query_as(AssertSqlSafe(format!("SELECT {REQ_COLS} FROM requests WHERE requester_id = $1 AND app_id = $2 AND entitlement_id = $3 AND state IN ('pending_approval', 'approved', 'provisioning', 'provisioned')")))
                .bind(requester).bind(app_id).bind(entitlement).fetch_all(p).await?
        });
        rows.iter()
            .map(|(b, v)| decode_request(b, *v).map(|x| x.0))
            .collect()
    }

    async fn waiting_for(&self, approver: &str, limit: i64, offset: i64) -> Result<Vec<Request>> {
        let rows: Vec<(String, i64)> = with_db!(self.db(), p => {
            sqlx::query_as("SELECT r.body, r.version FROM requests r JOIN approvals a ON a.request_id = r.id WHERE a.approver_id = $1 AND r.state = 'pending_approval' ORDER BY r.created_at, r.id LIMIT $2 OFFSET $3")
                .bind(approver).bind(limit).bind(offset).fetch_all(p).await?
        });
        rows.iter()
            .map(|(b, v)| decode_request(b, *v).map(|x| x.0))
            .collect()
    }

    async fn requests_in(&self, states: &[RequestState]) -> Result<Vec<Request>> {
        let list = states
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        if list.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, i64)> = with_db!(self.db(), p => {
            sqlx::query_as(AssertSqlSafe(format!("SELECT {REQ_COLS} FROM requests WHERE state IN ({list}) ORDER BY created_at, id"))).fetch_all(p).await?
        });
        rows.iter()
            .map(|(b, v)| decode_request(b, *v).map(|x| x.0))
            .collect()
    }

    async fn claim(&self, owner: &str, now_s: i64, lease_until_s: i64, limit: i64) -> Result<Vec<Task>> {
        // The outer condition is checked again on each row as it is updated: of two workers picking the
        // same rows, only one gets each (PostgreSQL re-reads a row another transaction changed; SQLite
        // has one writer at a time).
        let rows: Vec<(String, String, String, String, i64, i64)> = with_db!(self.db(), p => {
            sqlx::query_as("UPDATE tasks SET lease_owner = $1, lease_until_s = $2, attempts = attempts + 1 \
                WHERE id IN (SELECT id FROM tasks WHERE state = 'queued' AND run_at_s <= $3 AND (lease_until_s IS NULL OR lease_until_s < $3) ORDER BY run_at_s, id LIMIT $4) \
                AND state = 'queued' AND (lease_until_s IS NULL OR lease_until_s < $3) \
                RETURNING id, kind, ref_id, payload, run_at_s, attempts")
                .bind(owner).bind(lease_until_s).bind(now_s).bind(limit).fetch_all(p).await?
        });
        let mut tasks: Vec<Task> = rows
            .into_iter()
            .map(|(id, kind, ref_id, payload, run_at_s, attempts)| Task {
                id,
                kind,
                ref_id,
                payload: serde_json::from_str(&payload).unwrap_or_default(),
                run_at_s,
                attempts,
            })
            .collect();
        tasks.sort_by(|a, b| (a.run_at_s, &a.id).cmp(&(b.run_at_s, &b.id)));
        Ok(tasks)
    }

    async fn retry_task(&self, id: &str, owner: &str, run_at_s: i64, error: &str) -> Result<()> {
        with_db!(self.db(), p => {
            sqlx::query("UPDATE tasks SET run_at_s = $1, lease_owner = NULL, lease_until_s = NULL, last_error = $2 WHERE id = $3 AND lease_owner = $4")
                .bind(run_at_s).bind(error).bind(id).bind(owner).execute(p).await?;
        });
        Ok(())
    }

    async fn kill_task(&self, id: &str, owner: &str, error: &str) -> Result<()> {
        with_db!(self.db(), p => {
            sqlx::query("UPDATE tasks SET state = 'dead', lease_owner = NULL, lease_until_s = NULL, last_error = $1 WHERE id = $2 AND lease_owner = $3")
                .bind(error).bind(id).bind(owner).execute(p).await?;
        });
        Ok(())
    }

    async fn purge_done_tasks(&self, before_s: i64) -> Result<u64> {
        Ok(with_db!(self.db(), p => {
            sqlx::query("DELETE FROM tasks WHERE state = 'done' AND run_at_s < $1")
                .bind(before_s).execute(p).await?.rows_affected()
        }))
    }

    async fn pending_tasks(&self) -> Result<Vec<(String, String, i64, Option<String>)>> {
        Ok(with_db!(self.db(), p => {
            sqlx::query_as("SELECT kind, ref_id, attempts, last_error FROM tasks WHERE state = 'queued' ORDER BY run_at_s, id").fetch_all(p).await?
        }))
    }

    async fn audit(&self, q: &AuditQuery, limit: i64, offset: i64) -> Result<Vec<AuditEntry>> {
        let action_prefix = q
            .action
            .as_deref()
            .filter(|a| a.ends_with('.'))
            .map(|a| format!("{a}%"));
        let action_exact = q.action.as_deref().filter(|a| !a.ends_with('.'));
        type Row = (
            i64,
            String,
            String,
            String,
            String,
            String,
            String,
            String,
            String,
        );
        let rows: Vec<Row> = with_db!(self.db(), p => {
            sqlx::query_as("SELECT seq, at, actor, action, target_type, target_id, detail, prev_hash, hash FROM audit_log \
                WHERE ($1 IS NULL OR action = $1) AND ($2 IS NULL OR action LIKE $2) AND ($3 IS NULL OR actor = $3) \
                AND ($4 IS NULL OR target_type = $4) AND ($5 IS NULL OR target_id = $5) AND ($6 IS NULL OR at >= $6) AND ($7 IS NULL OR at < $7) \
                ORDER BY seq LIMIT $8 OFFSET $9")
                .bind(action_exact).bind(action_prefix).bind(q.actor.as_deref()).bind(q.target_type.as_deref())
                .bind(q.target_id.as_deref()).bind(q.since.as_deref()).bind(q.until.as_deref()).bind(limit).bind(offset)
                .fetch_all(p).await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(seq, at, actor, action, target_type, target_id, detail, prev_hash, hash)| AuditEntry {
                    seq,
                    at,
                    actor,
                    action,
                    target_type,
                    target_id,
                    // An unparsable detail is kept as text so that verification sees the edit.
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
                    prev_hash,
                    hash,
                },
            )
            .collect())
    }

    async fn audit_head(&self) -> Result<Option<(i64, String)>> {
        let v: Option<(String,)> = with_db!(self.db(), p => {
            sqlx::query_as("SELECT value FROM meta WHERE key = 'audit_head'").fetch_optional(p).await?
        });
        Ok(v.and_then(|(s,)| {
            let (a, b) = s.split_once(' ')?;
            Some((a.parse().ok()?, b.to_owned()))
        }))
    }

    async fn entitlement_users(&self, entitlement_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = with_db!(self.db(), p => {
            sqlx::query_as("SELECT DISTINCT principal_id FROM grants WHERE entitlement_id = $1 AND principal_type = 'user'")
                .bind(entitlement_id).fetch_all(p).await?
        });
        Ok(rows.into_iter().map(|(s,)| s).collect())
    }

    async fn holds_direct(&self, connector: &str, entitlement: &str, principal: &str) -> Result<bool> {
        let row: Option<(i64,)> = with_db!(self.db(), p => {
            sqlx::query_as("SELECT CAST(1 AS BIGINT) FROM grants WHERE connector_id = $1 AND entitlement_id = $2 AND principal_id = $3 AND direct = TRUE LIMIT 1")
                .bind(connector).bind(entitlement).bind(principal).fetch_optional(p).await?
        });
        Ok(row.is_some())
    }

    async fn drift_candidates(&self, connector: &str) -> Result<Vec<String>> {
        // The targets live in the request body (JSON); each backend unnests them its own way. The grant
        // lookup walks `grants_principal` (the requester's few grants), not the entitlement's holders.
        let rows: Vec<(String,)> = match self.db() {
            Db::Sqlite(p) => {
                sqlx::query_as(
                    "SELECT r.id FROM requests r, json_each(r.body, '$.targets') t \
                     WHERE r.state IN ('expired', 'revoked') \
                       AND json_extract(t.value, '$.connector_id') = $1 \
                       AND EXISTS (SELECT 1 FROM grants g WHERE g.principal_id = r.requester_id \
                         AND g.connector_id = $1 AND g.entitlement_id = json_extract(t.value, '$.entitlement') \
                         AND g.direct = TRUE) \
                     GROUP BY r.id ORDER BY min(r.created_at), r.id",
                )
                .bind(connector)
                .fetch_all(p)
                .await?
            }
            Db::Postgres(p) => {
                sqlx::query_as(
                    "SELECT r.id FROM requests r CROSS JOIN LATERAL jsonb_array_elements(r.body::jsonb -> 'targets') t \
                     WHERE r.state IN ('expired', 'revoked') \
                       AND t ->> 'connector_id' = $1 \
                       AND EXISTS (SELECT 1 FROM grants g WHERE g.principal_id = r.requester_id \
                         AND g.connector_id = $1 AND g.entitlement_id = t ->> 'entitlement' \
                         AND g.direct = TRUE) \
                     GROUP BY r.id ORDER BY min(r.created_at), r.id",
                )
                .bind(connector)
                .fetch_all(p)
                .await?
            }
        };
        Ok(rows.into_iter().map(|(s,)| s).collect())
    }

    async fn attached_connectors(&self, app_id: &str) -> Result<Vec<(String, String)>> {
        let rows: Vec<(String, String)> = with_db!(self.db(), p => {
            sqlx::query_as("SELECT id, kind FROM connectors WHERE app_id = $1 ORDER BY id")
                .bind(app_id).fetch_all(p).await?
        });
        Ok(rows)
    }

    async fn connector_entitlements(
        &self,
        connector_id: &str,
        with_holders: bool,
    ) -> Result<Vec<(String, String, String, i64)>> {
        let sql = if with_holders {
            "SELECT e.id, e.display_name, e.resource_type, (SELECT count(*) FROM grants g WHERE g.connector_id = e.connector_id AND g.entitlement_id = e.id) FROM entitlements e WHERE e.connector_id = $1 ORDER BY e.resource_type, e.display_name, e.id"
        } else {
            "SELECT e.id, e.display_name, e.resource_type, CAST(0 AS BIGINT) FROM entitlements e WHERE e.connector_id = $1 ORDER BY e.resource_type, e.display_name, e.id"
        };
        let rows: Vec<(String, String, String, i64)> = with_db!(self.db(), p => {
            sqlx::query_as(sql).bind(connector_id).fetch_all(p).await?
        });
        Ok(rows)
    }
}
