//! The sync engine: drives a [`Connector`] into a c1z file.
//!
//! Shape: one writer thread owns the [`C1zWriter`] and is fed by a bounded channel; connector calls run on
//! tokio tasks, at most `concurrency` at once. The writer hands out pending actions (stored in the file,
//! see the `queue` module; next pages of a listing first) and applies each completed call — its rows, its
//! follow-up actions and the removal of the action — as one unit; the engine keeps up to `concurrency`
//! handed-out actions ready, asked for while calls run, so that a call that ends is replaced at once even
//! while the writer is busy with a page; transactions commit only at checkpoints (every
//! `checkpoint_every_pages` pages or `checkpoint_interval`). Memory stays flat: a page is the unit held,
//! the queue lives in the file, and the channel is bounded.
//!
//! Resume: if the target's working database holds an unfinished sync of the same kind, the engine
//! continues it — completed calls are not repeated and calls in flight at the crash are re-run, so the
//! finished file equals an uninterrupted run's.
//!
//! Errors: rate-limited calls wait `retry_after` and retry; transient ones back off exponentially; not
//! found is a warning (the call counts as done with no rows) until the warnings budget is spent; anything
//! else checkpoints and stops the sync.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use steward_c1z::{C1zWriter, EndReport, SyncType, WriterOptions};
use steward_model::SkipEntitlementsAndGrants;
use steward_model::{
    AnnotationsExt, ChildResourceType, Entitlement, Grant, Resource, ResourceId, ResourceType,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::queue::{self, Action, Kind};
use crate::{Connector, ConnectorError, SyncError};

/// What to sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncPlan {
    /// Everything (`sync_type = full`).
    Full,
    /// These resources with their entitlements and grants, plus all resource types (`sync_type = partial`).
    Partial {
        /// The resources.
        resources: Vec<ResourceId>,
    },
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Connector calls in flight at most.
    pub concurrency: usize,
    /// Checkpoint after this many completed pages…
    pub checkpoint_every_pages: u64,
    /// …or after this much time, whichever comes first.
    pub checkpoint_interval: Duration,
    /// Objects allowed to vanish (not found) before the sync fails.
    pub warnings_budget: u64,
    /// Retries of one call (rate limited or transient) before the sync fails.
    pub max_retries: u32,
    /// First back-off of a transient failure (doubles each time, at most 30 s).
    pub initial_backoff: Duration,
    /// Writer settings (auto-commit is always off: the engine commits at checkpoints).
    pub writer: WriterOptions,
    /// Test hook: simulate a crash (no commit, no cleanup) after this many completed pages in this run.
    pub crash_after_pages: Option<u64>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            checkpoint_every_pages: 200,
            checkpoint_interval: Duration::from_secs(10),
            warnings_budget: 100,
            max_retries: 10,
            initial_backoff: Duration::from_millis(200),
            writer: WriterOptions::default(),
            crash_after_pages: None,
        }
    }
}

/// Progress of a sync, for progress bars and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    /// The sync started (or resumed).
    Started {
        /// Its id.
        sync_id: String,
        /// Whether an unfinished sync was continued.
        resumed: bool,
    },
    /// A page was written.
    Page {
        /// What was listed.
        what: String,
        /// Rows in the page.
        rows: usize,
    },
    /// A checkpoint was committed.
    Checkpoint {
        /// Pages completed in this run.
        pages: u64,
    },
    /// The connector was throttled; the call waits.
    RateLimited {
        /// The wait.
        retry_after: Duration,
    },
    /// Something vanished mid-sync.
    Warning {
        /// What.
        message: String,
    },
    /// Indexes, expansion and compression are running.
    Finishing,
}

/// What a finished sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSummary {
    /// The sync id.
    pub sync_id: String,
    /// Whether an unfinished sync was continued.
    pub resumed: bool,
    /// Pages completed in this run.
    pub pages: u64,
    /// Rows written in this run, by kind.
    pub resource_types: u64,
    /// Resources written in this run.
    pub resources: u64,
    /// Entitlements written in this run.
    pub entitlements: u64,
    /// Grants written in this run.
    pub grants: u64,
    /// Calls retried after rate limiting.
    pub rate_limited: u64,
    /// Not-found warnings.
    pub warnings: Vec<String>,
    /// What the end of the sync did.
    pub end: EndReport,
}

enum Rows {
    Types(Vec<ResourceType>),
    Resources(Vec<Resource>),
    Entitlements(Vec<Entitlement>),
    Grants(Vec<Grant>),
    None,
}

struct Done {
    key: String,
    what: String,
    rows: Rows,
    /// The next page of this listing, if any (queued as urgent).
    more: Option<Action>,
    next: Vec<Action>,
    warning: Option<String>,
    rate_limited: u64,
}

enum Cmd {
    Complete(Box<Done>),
    Fetch {
        n: usize,
        reply: oneshot::Sender<Result<Vec<(String, Action)>, SyncError>>,
    },
    Checkpoint {
        reply: oneshot::Sender<Result<(), SyncError>>,
    },
    Finish {
        state: Option<String>,
        reply: oneshot::Sender<Result<EndReport, SyncError>>,
    },
}

struct Started {
    sync_id: String,
    resumed: bool,
    types: Vec<ResourceType>,
}

/// Syncs `connector` into the c1z at `path` (resuming an unfinished sync of the same kind if the file's
/// working database holds one). Progress events go to `progress` if given.
pub async fn run_sync<C: Connector>(
    connector: Arc<C>,
    path: &Path,
    plan: SyncPlan,
    opts: SyncOptions,
    progress: Option<mpsc::UnboundedSender<ProgressEvent>>,
) -> Result<SyncSummary, SyncError> {
    let emit = |e: ProgressEvent| {
        if let Some(p) = &progress {
            let _ = p.send(e);
        }
    };
    let (tx, rx) = mpsc::channel::<Cmd>(opts.concurrency.max(1) * 2);
    let (start_tx, start_rx) = oneshot::channel();
    let writer = {
        let (path, plan, opts, progress) = (path.to_owned(), plan.clone(), opts.clone(), progress.clone());
        std::thread::Builder::new()
            .name("steward-sync-writer".into())
            .spawn(move || writer_thread(path, plan, opts, rx, start_tx, progress))
            .map_err(|e| SyncError::Interrupted(format!("cannot start the writer thread: {e}")))?
    };
    let started = match start_rx.await {
        Ok(r) => r?,
        Err(_) => {
            return Err(SyncError::Interrupted(
                "the writer thread stopped while starting".into(),
            ));
        }
    };
    emit(ProgressEvent::Started {
        sync_id: started.sync_id.clone(),
        resumed: started.resumed,
    });
    let mut summary = SyncSummary {
        sync_id: started.sync_id,
        resumed: started.resumed,
        ..Default::default()
    };
    let types: Arc<HashMap<String, ResourceType>> =
        Arc::new(started.types.into_iter().map(|t| (t.id.clone(), t)).collect());
    let mut types = types;

    let result = drive(&connector, &tx, &opts, &mut types, &mut summary, &progress).await;
    match result {
        Ok(()) => {
            let state = match connector.sync_state().await {
                Ok(s) => s,
                Err(source) => {
                    let (reply, rx) = oneshot::channel();
                    if send(&tx, Cmd::Checkpoint { reply }).await.is_ok() {
                        let _ = recv(rx).await;
                    }
                    drop(tx);
                    let _ = writer.join();
                    return Err(SyncError::Connector {
                        during: "saving the connector's state".into(),
                        source,
                    });
                }
            };
            emit(ProgressEvent::Finishing);
            let (reply, rx) = oneshot::channel();
            send(&tx, Cmd::Finish { state, reply }).await?;
            summary.end = recv(rx).await??;
            drop(tx);
            let _ = writer.join();
            Ok(summary)
        }
        Err(e) => {
            if !matches!(e, SyncError::Interrupted(_)) {
                // Keep what is done for the next run.
                let (reply, rx) = oneshot::channel();
                if send(&tx, Cmd::Checkpoint { reply }).await.is_ok() {
                    let _ = recv(rx).await;
                }
            }
            drop(tx);
            let _ = writer.join();
            Err(e)
        }
    }
}

async fn send(tx: &mpsc::Sender<Cmd>, c: Cmd) -> Result<(), SyncError> {
    tx.send(c)
        .await
        .map_err(|_| SyncError::Interrupted("the writer stopped".into()))
}

async fn recv<T>(rx: oneshot::Receiver<T>) -> Result<T, SyncError> {
    rx.await
        .map_err(|_| SyncError::Interrupted("the writer stopped".into()))
}

async fn drive<C: Connector>(
    connector: &Arc<C>,
    tx: &mpsc::Sender<Cmd>,
    opts: &SyncOptions,
    types: &mut Arc<HashMap<String, ResourceType>>,
    summary: &mut SyncSummary,
    progress: &Option<mpsc::UnboundedSender<ProgressEvent>>,
) -> Result<(), SyncError> {
    let emit = |e: ProgressEvent| {
        if let Some(p) = progress {
            let _ = p.send(e);
        }
    };
    let bound = opts.concurrency.max(1);
    let mut tasks: JoinSet<Result<Done, SyncError>> = JoinSet::new();
    // Actions handed out by the writer but not started yet: at most `bound`, so that a task that ends can
    // be replaced at once, without waiting for the writer (which may be busy inserting a page).
    let mut ready: VecDeque<(String, Action)> = VecDeque::new();
    // The fetch in progress: its reply, how many actions it asked for, and `completed` when it was sent.
    let mut asked: Option<Asked> = None;
    // Calls completed (sent to the writer), and the value it had when a fetch last found the queue empty.
    let mut completed: u64 = 0;
    let mut dry: Option<u64> = None;
    loop {
        while tasks.len() < bound {
            let Some((key, action)) = ready.pop_front() else {
                break;
            };
            tasks.spawn(run_action(
                connector.clone(),
                types.clone(),
                key,
                action,
                opts.clone(),
                progress.clone(),
            ));
        }
        let room = (2 * bound).saturating_sub(tasks.len() + ready.len());
        if asked.is_none() && room > 0 && dry != Some(completed) {
            let (reply, rx) = oneshot::channel();
            send(tx, Cmd::Fetch { n: room, reply }).await?;
            asked = Some((rx, room, completed));
        }
        if tasks.is_empty() && ready.is_empty() && asked.is_none() {
            // The last fetch came after every completion and found nothing: all done.
            return Ok(());
        }
        let joined = tokio::select! {
            r = reply_of(asked.as_mut()) => {
                let Some((_, n, at)) = asked.take() else {
                    continue;
                };
                let actions = r.map_err(|_| SyncError::Interrupted("the writer stopped".into()))??;
                if actions.len() < n {
                    dry = Some(at);
                }
                ready.extend(actions);
                continue;
            }
            j = tasks.join_next(), if !tasks.is_empty() => j,
        };
        let Some(joined) = joined else {
            continue;
        };
        let done = match joined {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tasks.abort_all();
                return Err(e);
            }
            Err(e) => {
                tasks.abort_all();
                return Err(SyncError::Interrupted(format!("a connector task failed: {e}")));
            }
        };
        summary.pages += 1;
        summary.rate_limited += done.rate_limited;
        let rows = match &done.rows {
            Rows::Types(v) => {
                summary.resource_types += v.len() as u64;
                let mut m = (**types).clone();
                m.extend(v.iter().map(|t| (t.id.clone(), t.clone())));
                *types = Arc::new(m);
                v.len()
            }
            Rows::Resources(v) => {
                summary.resources += v.len() as u64;
                v.len()
            }
            Rows::Entitlements(v) => {
                summary.entitlements += v.len() as u64;
                v.len()
            }
            Rows::Grants(v) => {
                summary.grants += v.len() as u64;
                v.len()
            }
            Rows::None => 0,
        };
        if let Some(w) = &done.warning {
            summary.warnings.push(w.clone());
            emit(ProgressEvent::Warning { message: w.clone() });
            if summary.warnings.len() as u64 > opts.warnings_budget {
                tasks.abort_all();
                return Err(SyncError::TooManyWarnings {
                    count: summary.warnings.len() as u64,
                    budget: opts.warnings_budget,
                });
            }
        }
        emit(ProgressEvent::Page {
            what: done.what.clone(),
            rows,
        });
        send(tx, Cmd::Complete(Box::new(done))).await?;
        completed += 1;
    }
}

/// A fetch in progress: its reply, how many actions it asked for, and the calls completed when it was sent.
type Asked = (
    oneshot::Receiver<Result<Vec<(String, Action)>, SyncError>>,
    usize,
    u64,
);

/// The reply of the fetch in progress; never ready when there is none.
async fn reply_of<T>(
    rx: Option<&mut (oneshot::Receiver<T>, usize, u64)>,
) -> Result<T, oneshot::error::RecvError> {
    match rx {
        Some((rx, _, _)) => rx.await,
        None => std::future::pending().await,
    }
}

/// Calls the connector for one action, retrying throttled and transient failures.
async fn call<T, F, Fut>(
    opts: &SyncOptions,
    what: &str,
    rate_limited: &mut u64,
    progress: &Option<mpsc::UnboundedSender<ProgressEvent>>,
    mut f: F,
) -> Result<T, SyncError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ConnectorError>>,
{
    let mut backoff = opts.initial_backoff;
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e @ (ConnectorError::RateLimited { .. } | ConnectorError::Transient(_)))
                if attempt < opts.max_retries =>
            {
                attempt += 1;
                let wait = match e {
                    ConnectorError::RateLimited { retry_after } => {
                        *rate_limited += 1;
                        if let Some(p) = progress {
                            let _ = p.send(ProgressEvent::RateLimited { retry_after });
                        }
                        retry_after
                    }
                    _ => {
                        let w = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        w
                    }
                };
                tracing::debug!(what, ?wait, attempt, "retrying after {e}");
                tokio::time::sleep(wait).await;
            }
            Err(source) => {
                return Err(SyncError::Connector {
                    during: what.to_owned(),
                    source,
                });
            }
        }
    }
}

fn skip_children(r: &Resource, t: Option<&ResourceType>) -> bool {
    r.annotations.contains::<SkipEntitlementsAndGrants>()
        || t.is_some_and(|t| t.annotations.contains::<SkipEntitlementsAndGrants>())
}

/// Follow-up actions of a listed resource: its entitlements, grants and child resource types.
fn follow_ups(r: &Resource, types: &HashMap<String, ResourceType>, children: bool) -> Vec<Action> {
    let mut next = Vec::new();
    let rt = r.id.as_ref().and_then(|id| types.get(&id.resource_type));
    if !skip_children(r, rt) {
        for kind in [Kind::Entitlements, Kind::Grants] {
            next.push(Action {
                resource: Some(r.clone()),
                ..Action::new(kind)
            });
        }
    }
    if children {
        for a in r
            .annotations
            .iter()
            .filter(|a| steward_model::annotations::is_type::<ChildResourceType>(a))
        {
            if let Ok(c) = steward_model::unpack_any::<ChildResourceType>(a) {
                next.push(Action {
                    resource_type: c.resource_type_id,
                    parent: r.id.clone(),
                    ..Action::new(Kind::Resources)
                });
            }
        }
    }
    next
}

async fn run_action<C: Connector>(
    c: Arc<C>,
    types: Arc<HashMap<String, ResourceType>>,
    key: String,
    a: Action,
    opts: SyncOptions,
    progress: Option<mpsc::UnboundedSender<ProgressEvent>>,
) -> Result<Done, SyncError> {
    let what = a.describe();
    let mut rl = 0;
    let mut done = Done {
        key,
        what: what.clone(),
        rows: Rows::None,
        more: None,
        next: Vec::new(),
        warning: None,
        rate_limited: 0,
    };
    let not_found = |done: &mut Done, e: SyncError| -> Result<(), SyncError> {
        match e {
            SyncError::Connector {
                source: ConnectorError::NotFound(m),
                during,
            } => {
                done.warning = Some(format!("{during}: not found: {m}"));
                Ok(())
            }
            e => Err(e),
        }
    };
    let next_page = |token: String| {
        (!token.is_empty()).then(|| Action {
            page_token: token,
            ..a.clone()
        })
    };
    match a.kind() {
        Some(Kind::ResourceTypes) => {
            let v = call(&opts, &what, &mut rl, &progress, || c.resource_types()).await?;
            done.next = v
                .iter()
                .map(|t| Action {
                    resource_type: t.id.clone(),
                    ..Action::new(Kind::Resources)
                })
                .collect();
            done.rows = Rows::Types(v);
        }
        Some(Kind::Resources) => {
            match call(&opts, &what, &mut rl, &progress, || {
                c.list_resources(&a.resource_type, a.parent.as_ref(), &a.page_token)
            })
            .await
            {
                Ok(p) => {
                    done.more = next_page(p.next_page_token);
                    for r in &p.items {
                        done.next.extend(follow_ups(r, &types, true));
                    }
                    done.rows = Rows::Resources(p.items);
                }
                Err(e) => not_found(&mut done, e)?,
            }
        }
        Some(Kind::Entitlements) => {
            let r = a.resource.clone().unwrap_or_default();
            match call(&opts, &what, &mut rl, &progress, || {
                c.list_entitlements(&r, &a.page_token)
            })
            .await
            {
                Ok(p) => {
                    done.more = next_page(p.next_page_token);
                    done.rows = Rows::Entitlements(p.items);
                }
                Err(e) => not_found(&mut done, e)?,
            }
        }
        Some(Kind::Grants) => {
            let r = a.resource.clone().unwrap_or_default();
            match call(&opts, &what, &mut rl, &progress, || {
                c.list_grants(&r, &a.page_token)
            })
            .await
            {
                Ok(p) => {
                    done.more = next_page(p.next_page_token);
                    done.rows = Rows::Grants(p.items);
                }
                Err(e) => not_found(&mut done, e)?,
            }
        }
        Some(Kind::Target) => {
            let id = a.parent.clone().unwrap_or_default();
            match call(&opts, &what, &mut rl, &progress, || c.get_resource(&id)).await {
                Ok(Some(r)) => {
                    done.next = follow_ups(&r, &types, false);
                    done.rows = Rows::Resources(vec![r]);
                }
                Ok(None) => done.warning = Some(format!("{what}: not found")),
                Err(e) => not_found(&mut done, e)?,
            }
        }
        None => {
            return Err(SyncError::Interrupted(format!(
                "the file's queue holds an unknown action ({what})"
            )));
        }
    }
    done.rate_limited = rl;
    Ok(done)
}

/// State of the writer thread.
struct WriterState {
    w: C1zWriter,
    next_seq: u64,
    cursor: String,
    /// The cursor of the urgent queue (continuations).
    urgent_cursor: String,
    pages: u64,
    pages_since_checkpoint: u64,
    last_checkpoint: Instant,
    failed: Option<String>,
}

impl WriterState {
    fn enqueue(&mut self, a: &Action) -> Result<(), SyncError> {
        self.put(queue::key(self.next_seq), a)
    }

    fn put(&mut self, k: String, a: &Action) -> Result<(), SyncError> {
        self.next_seq += 1;
        self.w.session_put(&k, &a.encode_to_vec())?;
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), SyncError> {
        self.w.checkpoint(&queue::token(self.next_seq))?;
        self.pages_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    fn complete(&mut self, d: Done) -> Result<(), SyncError> {
        match d.rows {
            Rows::Types(v) => v.iter().try_for_each(|x| self.w.put_resource_type(x))?,
            Rows::Resources(v) => v.iter().try_for_each(|x| self.w.put_resource(x))?,
            Rows::Entitlements(v) => v.iter().try_for_each(|x| self.w.put_entitlement(x))?,
            Rows::Grants(v) => v.iter().try_for_each(|x| self.w.put_grant(x))?,
            Rows::None => {}
        }
        if let Some(a) = &d.more {
            self.put(queue::urgent_key(self.next_seq), a)?;
        }
        for a in &d.next {
            self.enqueue(a)?;
        }
        self.w.session_delete(&d.key)?;
        self.pages += 1;
        self.pages_since_checkpoint += 1;
        Ok(())
    }
}

fn start(path: &Path, plan: &SyncPlan, opts: &SyncOptions) -> Result<(WriterState, Started), SyncError> {
    // Crash-safe (journalled) working database, committed only at checkpoints: that is what makes resume exact.
    let wopts = WriterOptions {
        auto_commit_rows: None,
        crash_safe: true,
        ..opts.writer.clone()
    };
    let mut w = C1zWriter::open_with(path, wopts)?;
    let want = match plan {
        SyncPlan::Full => SyncType::Full,
        SyncPlan::Partial { .. } => SyncType::Partial,
    };
    let resumable = w
        .unfinished_sync()?
        .filter(|r| SyncType::parse(&r.sync_type) == Some(want));
    let mut st = WriterState {
        w,
        next_seq: 0,
        cursor: String::new(),
        urgent_cursor: String::new(),
        pages: 0,
        pages_since_checkpoint: 0,
        last_checkpoint: Instant::now(),
        failed: None,
    };
    let started = match resumable {
        Some(run) => {
            st.w.resume_sync(&run.sync_id)?;
            st.next_seq = queue::parse_token(&run.sync_token).unwrap_or(0);
            tracing::info!(sync_id = %run.sync_id, "resuming an unfinished sync from its last checkpoint");
            Started {
                sync_id: run.sync_id,
                resumed: true,
                types: st.w.current_resource_types()?,
            }
        }
        None => {
            let sync_id = st.w.begin_sync(want)?;
            match plan {
                SyncPlan::Full => st.enqueue(&Action::new(Kind::ResourceTypes))?,
                SyncPlan::Partial { resources } => {
                    // Resource types first, so that targets see their type's annotations.
                    let types = Action {
                        resource_type: String::new(),
                        ..Action::new(Kind::ResourceTypes)
                    };
                    st.enqueue(&types)?;
                    for id in resources {
                        st.enqueue(&Action {
                            parent: Some(id.clone()),
                            ..Action::new(Kind::Target)
                        })?;
                    }
                }
            }
            st.checkpoint()?;
            Started {
                sync_id,
                resumed: false,
                types: Vec::new(),
            }
        }
    };
    Ok((st, started))
}

fn writer_thread(
    path: PathBuf,
    plan: SyncPlan,
    opts: SyncOptions,
    mut rx: mpsc::Receiver<Cmd>,
    start_tx: oneshot::Sender<Result<Started, SyncError>>,
    progress: Option<mpsc::UnboundedSender<ProgressEvent>>,
) {
    let (mut st, started) = match start(&path, &plan, &opts) {
        Ok(x) => x,
        Err(e) => {
            let _ = start_tx.send(Err(e));
            return;
        }
    };
    let partial = matches!(plan, SyncPlan::Partial { .. });
    let _ = start_tx.send(Ok(started));
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Complete(d) => {
                if st.failed.is_some() {
                    continue;
                }
                let is_types = matches!(d.rows, Rows::Types(_));
                let mut d = *d;
                if partial && is_types {
                    d.next.clear(); // a partial sync lists only its targets
                }
                if let Err(e) = st.complete(d) {
                    st.failed = Some(e.to_string());
                    continue;
                }
                if opts.crash_after_pages.is_some_and(|n| st.pages >= n) {
                    // Simulated crash: drop the writer without committing, as SIGKILL would.
                    return;
                }
                if st.pages_since_checkpoint >= opts.checkpoint_every_pages
                    || st.last_checkpoint.elapsed() >= opts.checkpoint_interval
                {
                    if let Err(e) = st.checkpoint() {
                        st.failed = Some(e.to_string());
                    } else if let Some(p) = &progress {
                        let _ = p.send(ProgressEvent::Checkpoint { pages: st.pages });
                    }
                }
            }
            Cmd::Fetch { n, reply } => {
                let r = match &st.failed {
                    Some(f) => Err(SyncError::Interrupted(format!(
                        "writing the sync file failed: {f}"
                    ))),
                    None => fetch(&mut st, n),
                };
                let _ = reply.send(r);
            }
            Cmd::Checkpoint { reply } => {
                let r = match &st.failed {
                    Some(f) => Err(SyncError::Interrupted(f.clone())),
                    None => st.checkpoint(),
                };
                let _ = reply.send(r);
            }
            Cmd::Finish { state, reply } => {
                let r = finish(st, state);
                let _ = reply.send(r);
                return;
            }
        }
    }
    // Channel closed without Finish: leave the working database at its last checkpoint.
}

/// Up to `n` actions not handed out yet: continuations first, then the rest in creation order.
fn fetch(st: &mut WriterState, n: usize) -> Result<Vec<(String, Action)>, SyncError> {
    let mut out = Vec::with_capacity(n);
    for urgent in [true, false] {
        let want = n - out.len();
        if want == 0 {
            break;
        }
        let (prefix, cursor) = if urgent {
            (queue::URGENT, &mut st.urgent_cursor)
        } else {
            (queue::PREFIX, &mut st.cursor)
        };
        for (k, v) in st.w.session_scan(prefix, cursor, want)? {
            let a = Action::decode(v.as_slice()).map_err(|e| {
                SyncError::Interrupted(format!("queued action {k} in the sync file is corrupt: {e}"))
            })?;
            cursor.clone_from(&k);
            out.push((k, a));
        }
    }
    Ok(out)
}

fn finish(mut st: WriterState, state: Option<String>) -> Result<EndReport, SyncError> {
    if let Some(f) = st.failed {
        return Err(SyncError::Interrupted(format!(
            "writing the sync file failed: {f}"
        )));
    }
    st.w.session_clear(queue::PREFIX)?;
    st.w.session_clear(queue::URGENT)?;
    // A finished sync's token is the connector's state (read back by `previous_sync`), or empty.
    st.w.checkpoint(
        &state
            .map(|s| crate::incremental::state_token(&s))
            .unwrap_or_default(),
    )?;
    let rep = st.w.end_sync()?;
    st.w.finish()?;
    Ok(rep)
}
