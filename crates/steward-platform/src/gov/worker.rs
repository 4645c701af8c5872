//! The background worker: runs the durable tasks queued by requests — provisioning (grant in the tenant,
//! then confirm with a partial sync), ending access (expiry, revocation, drift), webhook deliveries — with
//! leases and retries.
//!
//! Invariants:
//! * A task runs under a lease; a worker that dies leaves the task to be claimed again when the lease ends.
//!   Grants and revokes in the tenant are idempotent (the connector reads the state first), and request
//!   moves are versioned, so a task run twice changes the tenant and the request once.
//! * A failure is never silent: a refusal ends the request `failed` with the connector's reason; a
//!   transient error is retried with backoff and noted on the request; ending access is retried until it
//!   succeeds (expiry that sticks).

use std::sync::Arc;

use serde_json::json;
use steward_model::ResourceId;

use super::store::{NewAudit, Task, Write};
use super::types::*;
use crate::Platform;
use crate::error::{PlatformError, Result};

/// How long a claimed task is reserved for its worker, in seconds.
pub const LEASE_SECS: i64 = 120;
/// Provisioning attempts before a transiently failing request is marked failed.
pub const MAX_PROVISION_ATTEMPTS: i64 = 6;
/// How long finished tasks are kept (the request's history and the audit log keep what happened).
pub const TASK_RETENTION_SECS: i64 = 7 * 24 * 3600;
/// How long a connector client is reused by the worker.
pub const CLIENT_TTL: std::time::Duration = std::time::Duration::from_secs(300);
/// Tasks (and tenant changes) one worker runs at once.
pub const WORKER_CONCURRENCY: usize = 16;
/// Tasks claimed at once: due `end` tasks of one claim are removed together and confirmed by one partial
/// sync per connector, and their requests saved in one transaction.
pub const CLAIM_BATCH: i64 = 1024;
/// Webhook delivery attempts.
pub const MAX_WEBHOOK_ATTEMPTS: i64 = 8;

/// One confirmation waiting for its connector's next partial sync.
struct PendingConfirm {
    resource: ResourceId,
    pair: (String, ResourceId),
    tx: tokio::sync::oneshot::Sender<std::result::Result<bool, String>>,
}

/// The confirmations waiting per connector, and whose turn it is to run the next partial sync.
#[derive(Default)]
struct ConfirmQueue {
    waiting: std::sync::Mutex<Vec<PendingConfirm>>,
    turn: tokio::sync::Mutex<()>,
}

/// Coalesced provisioning confirmations, per connector (see [`Platform::confirm`]).
#[derive(Default)]
pub(crate) struct Confirmations(std::sync::Mutex<std::collections::HashMap<String, Arc<ConfirmQueue>>>);

impl std::fmt::Debug for Confirmations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Confirmations")
    }
}

impl Confirmations {
    fn queue(&self, connector_id: &str) -> Arc<ConfirmQueue> {
        match self.0.lock() {
            Ok(mut m) => Arc::clone(m.entry(connector_id.to_owned()).or_default()),
            // A poisoned map only loses the coalescing: this confirmation runs on its own.
            Err(_) => Arc::default(),
        }
    }
}

fn backoff(attempts: i64, cap: i64) -> i64 {
    (1i64 << attempts.clamp(0, 20)).min(cap)
}

/// How a connector step failed.
enum Failure {
    /// Worth retrying (throttling, timeouts, 5xx).
    Transient(String),
    /// Will not work without a change (permission, refusal, bad configuration).
    Permanent(String),
}

fn classify(e: steward_entra::EntraError) -> Failure {
    use steward_entra::EntraError as E;
    use steward_msgraph::Error as G;
    match &e {
        E::Graph(G::Throttled { .. }) | E::Graph(G::Transient { .. }) => Failure::Transient(e.to_string()),
        _ => Failure::Permanent(e.to_string()),
    }
}

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`: what a receiver recomputes to trust a delivery.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1={}", hex::encode(ctx.sign().as_ref()))
}

fn sys(action: &str, id: &str, detail: serde_json::Value) -> NewAudit {
    NewAudit {
        actor: "system".into(),
        action: action.into(),
        target_type: "request".into(),
        target_id: id.into(),
        detail,
    }
}

impl Platform {
    /// Runs the tasks that are due until none is left; returns how many ran. Tasks are claimed up to
    /// [`CLAIM_BATCH`] at a time: `end` tasks of a batch run together ([`Platform::run_ends`]), the others
    /// [`WORKER_CONCURRENCY`] at a time.
    pub async fn work(&self) -> Result<usize> {
        use futures::StreamExt;
        let mut n = 0;
        loop {
            let now = self.clock.now().unix_timestamp();
            let batch = self
                .gov
                .claim(&self.worker_id, now, now + LEASE_SECS, CLAIM_BATCH)
                .await?;
            if batch.is_empty() {
                return Ok(n);
            }
            n += batch.len();
            let (ends, others): (Vec<Task>, Vec<Task>) = batch.into_iter().partition(|t| t.kind == "end");
            let ends_run = async {
                if ends.is_empty() {
                    return Vec::new();
                }
                let refs: Vec<&Task> = ends.iter().collect();
                match self.run_ends(&refs).await {
                    Ok(()) => Vec::new(),
                    Err(e) => ends.iter().map(|t| (t.clone(), e.to_string())).collect(),
                }
            };
            let others_run = futures::stream::iter(others)
                .map(|t| async move {
                    let r = self.run_task(&t).await;
                    r.err().map(|e| (t, e.to_string()))
                })
                .buffer_unordered(WORKER_CONCURRENCY)
                .collect::<Vec<Option<(Task, String)>>>();
            let (mut failed, more) = futures::join!(ends_run, others_run);
            failed.extend(more.into_iter().flatten());
            for (t, e) in failed {
                tracing::warn!(task = %t.id, kind = %t.kind, error = %e, "task failed; retrying later");
                self.gov
                    .retry_task(&t.id, &self.worker_id, now + backoff(t.attempts, 300), &e)
                    .await?;
            }
        }
    }

    async fn run_task(&self, t: &Task) -> Result<()> {
        match t.kind.as_str() {
            "provision" => self.run_provision(t).await,
            "end" => self.run_ends(&[t]).await,
            "webhook" => self.run_webhook(t).await,
            "step_timeout" => self.run_step_timeout(t).await,
            other => {
                self.gov
                    .kill_task(&t.id, &self.worker_id, &format!("unknown task kind {other}"))
                    .await
            }
        }
    }

    /// Deletes finished tasks older than [`TASK_RETENTION_SECS`] on the platform clock (called with the
    /// scheduled syncs); returns how many.
    pub async fn purge_finished_tasks(&self) -> Result<u64> {
        let before = self.clock.now().unix_timestamp() - TASK_RETENTION_SECS;
        self.gov.purge_done_tasks(before).await
    }

    /// The worker's wake-up signal (notified when a write queues tasks).
    pub fn wake_signal(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.wake)
    }

    /// The Entra connector client with provisioning for connector `id`: kept for [`CLIENT_TTL`] so that
    /// tasks share its token and directory index (building the index lists every principal of the tenant);
    /// dropped at once when a task through it fails or a confirmation disagrees.
    async fn provisioner(&self, id: &str) -> std::result::Result<Arc<steward_entra::Entra>, Failure> {
        if let Ok(m) = self.provisioners.lock()
            && let Some((at, e)) = m.get(id)
            && at.elapsed() < CLIENT_TTL
        {
            return Ok(Arc::clone(e));
        }
        let e = Arc::new(self.new_provisioner(id).await?);
        if let Ok(mut m) = self.provisioners.lock() {
            m.insert(id.to_owned(), (std::time::Instant::now(), Arc::clone(&e)));
        }
        Ok(e)
    }

    fn forget_provisioner(&self, id: &str) {
        if let Ok(mut m) = self.provisioners.lock() {
            m.remove(id);
        }
    }

    async fn new_provisioner(&self, id: &str) -> std::result::Result<steward_entra::Entra, Failure> {
        let row = self
            .connector_row(id)
            .await
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        if row.connector.kind != "entra" {
            return Err(Failure::Permanent(format!(
                "connector {:?} is a {} connector; only Entra ID connectors provision",
                row.connector.name, row.connector.kind
            )));
        }
        let cfg = self
            .entra_config(&row)
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        if !cfg.provisioning {
            return Err(Failure::Permanent(format!(
                "provisioning is disabled on connector {:?}: set its setting \"provisioning\": true",
                row.connector.name
            )));
        }
        steward_entra::Entra::new(cfg).map_err(classify)
    }

    /// Whether the tenant holds `entitlement` for `principal`, by a partial sync of the entitlement's
    /// resource (what the next full sync will see).
    ///
    /// Confirmations of one connector are coalesced: while one partial sync runs, the confirmations asked
    /// for meanwhile wait in a queue, and the next caller to get the connector's turn confirms all of them
    /// with ONE partial sync of every resource they name (a burst of requests for one group lists it once
    /// per round, not once per request). Each caller still gets the answer for its own grant.
    async fn confirm(
        &self,
        connector_id: &str,
        entra: Arc<steward_entra::Entra>,
        resource: ResourceId,
        entitlement: &str,
        principal: &ResourceId,
    ) -> std::result::Result<bool, Failure> {
        let q = self.confirms.queue(connector_id);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        q.waiting
            .lock()
            .map_err(|_| Failure::Transient("confirmation queue poisoned".into()))?
            .push(PendingConfirm {
                resource,
                pair: (entitlement.to_owned(), principal.clone()),
                tx,
            });
        let turn = q.turn.lock().await;
        if let Ok(answer) = rx.try_recv() {
            // A previous turn confirmed this one together with its own.
            return answer.map_err(Failure::Transient);
        }
        let batch = match q.waiting.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(_) => return Err(Failure::Transient("confirmation queue poisoned".into())),
        };
        let resources = batch.iter().map(|p| p.resource.clone()).collect();
        let pairs = batch.iter().map(|p| p.pair.clone()).collect();
        let out = self.confirm_many(entra, resources, pairs).await;
        for (i, p) in batch.into_iter().enumerate() {
            let answer = match &out {
                Ok(held) => Ok(held.get(i).copied().unwrap_or(false)),
                Err(Failure::Transient(m) | Failure::Permanent(m)) => Err(m.clone()),
            };
            // The receiver may be gone (its task ended); nothing to tell then.
            let _ = p.tx.send(answer);
        }
        drop(turn);
        match rx.await {
            Ok(answer) => answer.map_err(Failure::Transient),
            Err(_) => Err(Failure::Transient(
                "confirmation was dropped before it ran".into(),
            )),
        }
    }

    /// For each (entitlement, principal) of `pairs`, whether the tenant grants it directly, by one partial
    /// sync of `resources` (the resources of those entitlements).
    async fn confirm_many(
        &self,
        entra: Arc<steward_entra::Entra>,
        mut resources: Vec<ResourceId>,
        pairs: Vec<(String, ResourceId)>,
    ) -> std::result::Result<Vec<bool>, Failure> {
        resources.sort_by(|a, b| (&a.resource_type, &a.resource).cmp(&(&b.resource_type, &b.resource)));
        resources.dedup();
        let file = self.work_file("c1z");
        let out = async {
            let sum = steward_sync::run_sync(
                entra,
                &file,
                steward_sync::SyncPlan::Partial { resources },
                steward_sync::SyncOptions::default(),
                None,
            )
            .await
            .map_err(|e| Failure::Transient(format!("confirming by a partial sync: {e}")))?;
            let f = file.clone();
            tokio::task::spawn_blocking(move || -> steward_c1z::Result<Vec<bool>> {
                let mut r = steward_c1z::C1zReader::open(&f)?;
                r.select_sync(&sum.sync_id)?;
                let mut held = Vec::with_capacity(pairs.len());
                for (ent, p) in pairs {
                    let page = r.grants(
                        &steward_c1z::GrantFilter {
                            entitlement_id: Some(ent.clone()),
                            principal: Some(p),
                            resource: None,
                        },
                        &steward_c1z::PageRequest::first(1),
                    )?;
                    // Only a direct grant counts: the same entitlement held through a nested group is
                    // neither what was granted nor what a removal can take away.
                    held.push(
                        page.items
                            .iter()
                            .any(|g| crate::ingest::direct_and_via(&ent, g.sources.as_ref()).0),
                    );
                }
                Ok(held)
            })
            .await
            .map_err(|e| Failure::Transient(e.to_string()))?
            .map_err(|e| Failure::Transient(format!("reading the partial sync: {e}")))
        }
        .await;
        crate::remove_work_file(&file);
        out
    }

    async fn principal_of(&self, r: &Request) -> Result<ResourceId> {
        let kind = self
            .store
            .identity(&r.requester_id)
            .await?
            .map(|i| i.kind)
            .unwrap_or_else(|| "user".into());
        Ok(ResourceId::new(&kind, &r.requester_id))
    }

    /// Saves `r` (guarded by `ver`) with a note; returns the new version, or None when someone else moved it.
    async fn save(
        &self,
        r: &Request,
        ver: i64,
        audit: Vec<NewAudit>,
        t: Option<&Task>,
        tasks: Vec<Task>,
    ) -> Result<Option<i64>> {
        let mut w = self.write();
        w.request = Some((r.clone(), Some(ver)));
        w.audit = audit;
        w.tasks = tasks;
        w.finish_task = t.map(|t| (t.id.clone(), self.worker_id.clone()));
        Ok(self.commit(w).await?.then_some(ver + 1))
    }

    async fn run_provision(&self, t: &Task) -> Result<()> {
        let (mut r, mut ver) = self.load(&t.ref_id).await?;
        if !matches!(r.state, RequestState::Approved | RequestState::Provisioning) {
            return self.finish(t).await;
        }
        if r.state == RequestState::Approved {
            r.state = RequestState::Provisioning;
            self.event(
                &mut r,
                "provisioning",
                format!("provisioning (attempt {})", t.attempts),
            );
            match self
                .save(
                    &r,
                    ver,
                    vec![sys("request.provisioning", &r.id, json!({"attempt": t.attempts}))],
                    None,
                    vec![],
                )
                .await?
            {
                Some(v) => ver = v,
                None => return self.finish(t).await,
            }
        }
        let principal = self.principal_of(&r).await?;
        // When the access ends, decided as this attempt starts: passed to the connector, which writes it
        // into the tenant where the entitlement takes one (directory roles, through PIM schedules), and
        // kept as the request's `expires_at` for the platform's own removal.
        let end = r.duration.map(|d| self.clock.now() + time::Duration::seconds(d));
        let end_text = end.map(crate::clock::rfc3339);
        let mut failure = None;
        for i in 0..r.targets.len() {
            if r.targets[i].confirmed {
                continue;
            }
            let tg = r.targets[i].clone();
            let step = async {
                let entra = self.provisioner(&tg.connector_id).await?;
                let change = entra
                    .grant_entitlement(
                        &tg.entitlement,
                        &principal,
                        &steward_entra::GrantOptions {
                            // Entra ID keeps an end time for directory roles only (PIM schedules);
                            // group membership and app assignments have none.
                            end: end_text.clone().filter(|_| tg.entitlement.starts_with("role:")),
                            justification: r.justification.clone(),
                        },
                    )
                    .await
                    .map_err(classify)?;
                let ok = self
                    .confirm(
                        &tg.connector_id,
                        entra,
                        change.resource(),
                        &tg.entitlement,
                        &principal,
                    )
                    .await?;
                Ok::<_, Failure>((change, ok))
            }
            .await;
            match step {
                Ok((change, true)) => {
                    r.targets[i].confirmed = true;
                    self.event(&mut r, "provision", format!("{change}"));
                    if change.end_in_tenant
                        && let Some(e) = &end_text
                    {
                        self.event(
                            &mut r,
                            "end_in_tenant",
                            format!("the tenant itself ends {} at {e}", tg.entitlement),
                        );
                    }
                    self.event(
                        &mut r,
                        "confirm",
                        format!("a partial sync shows {} holding {}", principal, tg.entitlement),
                    );
                    let a = sys(
                        "request.provision_step",
                        &r.id,
                        json!({"entitlement": tg.entitlement, "outcome": change.outcome, "confirmed": true}),
                    );
                    match self.save(&r, ver, vec![a], None, vec![]).await? {
                        Some(v) => ver = v,
                        None => return self.finish(t).await,
                    }
                }
                Ok((change, false)) => {
                    self.forget_provisioner(&tg.connector_id);
                    failure = Some(Failure::Transient(format!(
                        "{change}, but a partial sync does not show it yet"
                    )));
                    break;
                }
                Err(f) => {
                    self.forget_provisioner(&tg.connector_id);
                    failure = Some(f);
                    break;
                }
            }
        }
        match failure {
            None => {
                r.state = RequestState::Provisioned;
                r.provisioned_at = Some(self.now());
                let mut tasks = Vec::new();
                if let Some(end) = end {
                    r.expires_at = Some(crate::clock::rfc3339(end));
                    tasks.push(self.task_at(
                        "end",
                        &r.id,
                        json!({"end_state": "expired"}),
                        end.unix_timestamp(),
                    ));
                }
                let msg = match &r.expires_at {
                    Some(e) => format!("provisioned; access ends {e}"),
                    None => "provisioned (permanent)".to_owned(),
                };
                self.event(&mut r, "provisioned", msg);
                let mut w = self.write();
                self.notify(&mut w, "request.provisioned", &r, &[]).await?;
                tasks.extend(w.tasks);
                self.save(
                    &r,
                    ver,
                    vec![sys(
                        "request.provisioned",
                        &r.id,
                        json!({"expires_at": r.expires_at}),
                    )],
                    Some(t),
                    tasks,
                )
                .await?;
                Ok(())
            }
            Some(Failure::Transient(msg)) if t.attempts < MAX_PROVISION_ATTEMPTS => {
                let wait = backoff(t.attempts, 300);
                self.event(
                    &mut r,
                    "retry",
                    format!("attempt {} failed: {msg}; retrying in {wait}s", t.attempts),
                );
                self.save(
                    &r,
                    ver,
                    vec![sys("request.provision_retry", &r.id, json!({"error": msg}))],
                    None,
                    vec![],
                )
                .await?;
                self.gov
                    .retry_task(
                        &t.id,
                        &self.worker_id,
                        self.clock.now().unix_timestamp() + wait,
                        &msg,
                    )
                    .await
            }
            Some(Failure::Transient(msg)) | Some(Failure::Permanent(msg)) => {
                r.state = RequestState::Failed;
                r.reason = Some(msg.clone());
                let note = format!(
                    "provisioning failed: {msg}; an admin can retry (POST /api/v1/requests/{}/retry)",
                    r.id
                );
                self.event(&mut r, "failed", note);
                let mut w = self.write();
                self.notify(&mut w, "request.failed", &r, &[]).await?;
                self.save(
                    &r,
                    ver,
                    vec![sys("request.failed", &r.id, json!({"reason": msg}))],
                    Some(t),
                    w.tasks,
                )
                .await?;
                Ok(())
            }
        }
    }

    async fn finish(&self, t: &Task) -> Result<()> {
        let mut w = self.write();
        w.finish_task = Some((t.id.clone(), self.worker_id.clone()));
        self.commit(w).await.map(|_| ())
    }

    /// Ends access: expiry (`end_state` expired), revocation (revoked) or drift (`drift`: the request has
    /// ended already and the access came back). The tasks' removals run [`WORKER_CONCURRENCY`] at a time;
    /// one partial sync per connector then confirms all of them; the requests that ended are saved in one
    /// transaction. A request whose removal failed or is not confirmed keeps its task, retried with backoff.
    async fn run_ends(&self, tasks: &[&Task]) -> Result<()> {
        use futures::StreamExt;
        struct Job<'a> {
            t: &'a Task,
            r: Request,
            ver: i64,
            end_state: String,
            principal: ResourceId,
            notes: Vec<String>,
            failure: Option<String>,
        }
        let started = std::time::Instant::now();
        let mut jobs = Vec::new();
        let mut done = Vec::new();
        for &t in tasks {
            let end_state = t
                .payload
                .get("end_state")
                .and_then(|v| v.as_str())
                .unwrap_or("expired")
                .to_owned();
            let Some((r, ver)) = self.gov.request(&t.ref_id).await? else {
                done.push(t);
                continue;
            };
            let ok_state = if end_state == "drift" {
                matches!(r.state, RequestState::Expired | RequestState::Revoked)
            } else {
                r.state == RequestState::Provisioned
            };
            if !ok_state {
                done.push(t);
                continue;
            }
            let principal = self.principal_of(&r).await?;
            jobs.push(Job {
                t,
                r,
                ver,
                end_state,
                principal,
                notes: Vec::new(),
                failure: None,
            });
        }
        if !done.is_empty() {
            let ws: Vec<Write> = done
                .iter()
                .map(|t| {
                    let mut w = self.write();
                    w.finish_task = Some((t.id.clone(), self.worker_id.clone()));
                    w
                })
                .collect();
            self.gov.commit_all(&ws).await?;
        }
        let loaded = started.elapsed();
        // Remove every target of every job from the tenant.
        let steps: Vec<(usize, Target)> = jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| job.r.targets.iter().map(move |tg| (j, tg.clone())))
            .collect();
        let removed: Vec<_> = futures::stream::iter(steps)
            .map(|(j, tg)| {
                let principal = jobs[j].principal.clone();
                async move {
                    let out = async {
                        let entra = self.provisioner(&tg.connector_id).await?;
                        entra
                            .revoke_entitlement(&tg.entitlement, &principal)
                            .await
                            .map_err(classify)
                    }
                    .await;
                    (j, tg, out)
                }
            })
            .buffered(WORKER_CONCURRENCY)
            .collect()
            .await;
        let removed_at = started.elapsed();
        // Confirm: one partial sync per connector of every resource a removal touched.
        let mut by_connector: std::collections::BTreeMap<
            String,
            Vec<(usize, Target, steward_entra::Change)>,
        > = Default::default();
        for (j, tg, out) in removed {
            match out {
                Ok(change) => by_connector
                    .entry(tg.connector_id.clone())
                    .or_default()
                    .push((j, tg, change)),
                Err(Failure::Transient(m) | Failure::Permanent(m)) => {
                    self.forget_provisioner(&tg.connector_id);
                    jobs[j].failure.get_or_insert(m);
                }
            }
        }
        for (cid, list) in by_connector {
            let resources = list.iter().map(|(_, _, c)| c.resource()).collect();
            let pairs = list
                .iter()
                .map(|(j, tg, _)| (tg.entitlement.clone(), jobs[*j].principal.clone()))
                .collect();
            let held = match self.provisioner(&cid).await {
                Ok(entra) => self.confirm_many(entra, resources, pairs).await,
                Err(f) => Err(f),
            };
            match held {
                Ok(held) => {
                    for ((j, _, change), still) in list.into_iter().zip(held) {
                        if still {
                            self.forget_provisioner(&cid);
                            jobs[j]
                                .failure
                                .get_or_insert(format!("{change}, but a partial sync still shows it"));
                        } else {
                            jobs[j]
                                .notes
                                .push(format!("{change}; a partial sync confirms it is gone"));
                        }
                    }
                }
                Err(Failure::Transient(m) | Failure::Permanent(m)) => {
                    self.forget_provisioner(&cid);
                    for (j, _, _) in list {
                        jobs[j].failure.get_or_insert(m.clone());
                    }
                }
            }
        }
        let confirmed_at = started.elapsed();
        let mut ended = Vec::new();
        for mut job in jobs {
            if let Some(m) = job.failure.take() {
                // Ending access must stick: keep trying (backoff capped at an hour), and say so on the request.
                let wait = backoff(job.t.attempts, 3600);
                tracing::warn!(request = %job.r.id, error = %m, retry_in_s = wait, "removing access failed");
                self.event(
                    &mut job.r,
                    "end_retry",
                    format!("removing access failed: {m}; retrying in {wait}s"),
                );
                self.save(
                    &job.r,
                    job.ver,
                    vec![sys("request.end_failed", &job.r.id, json!({"error": m}))],
                    None,
                    vec![],
                )
                .await?;
                self.gov
                    .retry_task(
                        &job.t.id,
                        &self.worker_id,
                        self.clock.now().unix_timestamp() + wait,
                        &m,
                    )
                    .await?;
                continue;
            }
            let r = &mut job.r;
            for n in std::mem::take(&mut job.notes) {
                self.event(r, "revoke", n);
            }
            let (action, event) = match job.end_state.as_str() {
                "drift" => {
                    self.event(
                        r,
                        "drift_revoked",
                        "access that came back after it ended was removed again".into(),
                    );
                    ("drift.revoked", "drift.revoked")
                }
                "revoked" => {
                    r.state = RequestState::Revoked;
                    r.ended_at = Some(self.now());
                    self.event(r, "revoked", "revoked and removed from the tenant".into());
                    ("request.revoked", "request.revoked")
                }
                _ => {
                    r.state = RequestState::Expired;
                    r.ended_at = Some(self.now());
                    self.event(r, "expired", "expired and removed from the tenant".into());
                    ("request.expired", "request.expired")
                }
            };
            let mut w = self.write();
            self.notify(&mut w, event, r, &[]).await?;
            w.request = Some((r.clone(), Some(job.ver)));
            w.audit = vec![sys(action, &r.id, json!({}))];
            w.finish_task = Some((job.t.id.clone(), self.worker_id.clone()));
            ended.push(w);
        }
        let n_ended = ended.len();
        let wake = ended.iter().any(|w| !w.tasks.is_empty());
        if !ended.is_empty() && !self.gov.commit_all(&ended).await? {
            // Someone moved one of the requests meanwhile: save the others one by one (a request that
            // moved keeps its task, which finds the new state when it runs again).
            for w in ended {
                self.commit(w).await?;
            }
        } else if wake {
            self.wake.notify_one();
        }
        tracing::debug!(
            tasks = tasks.len(),
            ended = n_ended,
            load_ms = loaded.as_millis() as u64,
            remove_ms = (removed_at - loaded).as_millis() as u64,
            confirm_ms = (confirmed_at - removed_at).as_millis() as u64,
            save_ms = (started.elapsed() - confirmed_at).as_millis() as u64,
            "end tasks"
        );
        Ok(())
    }

    /// After an ingest: access of ended requests that the new snapshot shows again is drift. It is recorded
    /// on the request and in the audit log, and removed again when the request's policy says so. The
    /// candidates come from one query over all ended requests; each is then checked on its own.
    pub async fn check_drift(&self, connector_id: &str) -> Result<usize> {
        let mut found = 0;
        for id in self.gov.drift_candidates(connector_id).await? {
            let Some((r, _)) = self.gov.request(&id).await? else {
                continue;
            };
            if !matches!(r.state, RequestState::Expired | RequestState::Revoked) {
                continue;
            }
            let mut back = Vec::new();
            for tg in r.targets.iter().filter(|t| t.connector_id == connector_id) {
                if self
                    .gov
                    .holds_direct(connector_id, &tg.entitlement, &r.requester_id)
                    .await?
                {
                    back.push(tg.entitlement.clone());
                }
            }
            if back.is_empty() {
                continue;
            }
            // A newer request that grants the same access explains it.
            if self
                .gov
                .open_requests(&r.requester_id, &r.app_id, &r.entitlement)
                .await?
                .iter()
                .any(|o| o.state == RequestState::Provisioned)
            {
                continue;
            }
            let Some((mut r, ver)) = self.gov.request(&r.id).await? else {
                continue;
            };
            found += 1;
            r.drift_count += 1;
            let again = r.revoke_drift;
            self.event(
                &mut r,
                "drift",
                format!(
                    "the last sync shows {} again after the request ended{}",
                    back.join(", "),
                    if again {
                        "; removing it again"
                    } else {
                        " (the policy does not revoke drift)"
                    }
                ),
            );
            let mut w = self.write();
            self.notify(&mut w, "drift.detected", &r, &[]).await?;
            let mut tasks = w.tasks;
            if again {
                tasks.push(self.task("end", &r.id, json!({"end_state": "drift"})));
            }
            self.save(
                &r,
                ver,
                vec![sys(
                    "drift.detected",
                    &r.id,
                    json!({"entitlements": back, "revoke": again}),
                )],
                None,
                tasks,
            )
            .await?;
        }
        Ok(found)
    }

    /// An approval step's deadline passed. If the request still waits at that step, it is escalated to
    /// the step's fallback approvers (once, `on_timeout: escalate`, with the same time again) or denied.
    async fn run_step_timeout(&self, t: &Task) -> Result<()> {
        let step = t.payload.get("step").and_then(|v| v.as_u64()).unwrap_or(u64::MAX);
        let escalated = t
            .payload
            .get("escalated")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let Some((mut r, ver)) = self.gov.request(&t.ref_id).await? else {
            return self.finish(t).await;
        };
        let Some(s) = r.steps.get(r.step).cloned() else {
            return self.finish(t).await;
        };
        if r.state != RequestState::PendingApproval || r.step as u64 != step {
            // Decided (or moved on) in time.
            return self.finish(t).await;
        }
        let n = r.step + 1;
        let secs = s.timeout_secs.unwrap_or(0);
        let mut w = self.write();
        let fallback = super::policy::fallback_approvers(&s, &r.requester_id, r.allow_self_approval);
        let mut waiting = r.approvers.clone();
        waiting.sort();
        if !escalated
            && s.on_timeout == Some(OnTimeout::Escalate)
            && !fallback.is_empty()
            && fallback != waiting
        {
            r.approvers = fallback.clone();
            self.event(
                &mut r,
                "escalated",
                format!(
                    "step {n}: no decision within {secs} s; escalated to {}",
                    fallback.join(", ")
                ),
            );
            w.approvers = Some((r.id.clone(), r.step, fallback.clone()));
            w.audit.push(sys(
                "approval.escalated",
                &r.id,
                json!({"step": n, "approvers": fallback, "after_secs": secs}),
            ));
            w.tasks.push(self.task_at(
                "step_timeout",
                &r.id,
                json!({"step": r.step, "escalated": true}),
                self.clock.now().unix_timestamp() + secs,
            ));
            self.notify(&mut w, "approval.requested", &r, &fallback).await?;
        } else {
            let reason = format!(
                "step {n}: no decision within {secs} s{}",
                if escalated { " after escalation" } else { "" }
            );
            r.state = RequestState::Denied;
            r.reason = Some(reason.clone());
            r.approvers.clear();
            self.event(&mut r, "denied", reason.clone());
            w.approvers = Some((r.id.clone(), r.step, Vec::new()));
            w.audit.push(sys(
                "request.denied",
                &r.id,
                json!({"reason": reason, "timeout": true}),
            ));
            self.notify(&mut w, "request.denied", &r, &[]).await?;
        }
        w.request = Some((r, Some(ver)));
        w.finish_task = Some((t.id.clone(), self.worker_id.clone()));
        if !self.commit(w).await? {
            // Someone decided at the same moment: their decision stands; look again.
            return self.run_step_timeout_again(t).await;
        }
        Ok(())
    }

    /// The request moved while the timeout was being applied: finish the task if it no longer waits at
    /// that step, else leave it to be retried.
    async fn run_step_timeout_again(&self, t: &Task) -> Result<()> {
        let step = t.payload.get("step").and_then(|v| v.as_u64()).unwrap_or(u64::MAX);
        match self.gov.request(&t.ref_id).await? {
            Some((r, _)) if r.state == RequestState::PendingApproval && r.step as u64 == step => Err(
                PlatformError::Conflict(format!("request {} changed while its step timed out", r.id)),
            ),
            _ => self.finish(t).await,
        }
    }

    /// Delivers one webhook call. The body is sent as serialized here and, when the webhook has a secret,
    /// signed over `"<timestamp>.<body>"` (HMAC-SHA256); `X-Steward-Delivery` (the task id) stays the same
    /// across retries so that receivers can drop duplicates. The secret is read from the webhook (encrypted
    /// at rest), never from the task.
    async fn run_webhook(&self, t: &Task) -> Result<()> {
        let url = t.payload.get("url").and_then(|v| v.as_str()).unwrap_or_default();
        let body = t.payload.get("body").cloned().unwrap_or_default();
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let event = body.get("event").and_then(|v| v.as_str()).unwrap_or_default();
        let mut req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Steward-Delivery", &t.id)
            .header("X-Steward-Event", event);
        let secret = self
            .gov
            .webhooks()
            .await?
            .into_iter()
            .find(|h| h.id == t.ref_id)
            .and_then(|h| h.secret_enc);
        if let Some(enc) = secret {
            let key = self.key.decrypt(&enc)?;
            let ts = self.clock.now().unix_timestamp().to_string();
            req = req
                .header("X-Steward-Timestamp", &ts)
                .header("X-Steward-Signature", signature(&key, &ts, &bytes));
        }
        let r = req
            .body(bytes)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await;
        let err = match r {
            Ok(resp) if resp.status().is_success() => return self.finish(t).await,
            Ok(resp) => format!("{url} answered {}", resp.status()),
            Err(e) => format!("{url}: {e}"),
        };
        if t.attempts >= MAX_WEBHOOK_ATTEMPTS {
            tracing::warn!(webhook = %t.ref_id, error = %err, "webhook delivery given up");
            return self.gov.kill_task(&t.id, &self.worker_id, &err).await;
        }
        self.gov
            .retry_task(
                &t.id,
                &self.worker_id,
                self.clock.now().unix_timestamp() + backoff(t.attempts, 600),
                &err,
            )
            .await
    }
}

impl From<Failure> for PlatformError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Transient(m) | Failure::Permanent(m) => PlatformError::Connector(m),
        }
    }
}
