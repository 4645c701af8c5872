//! Grant rows on their way into `v1_grants`: batched by the writer, inserted with multi-row `INSERT`s,
//! either on the writer's thread or on a thread of its own while the caller goes on encoding grants.
//!
//! The writer fills a [`GrantBatch`] (every column's bytes in one buffer, no allocation per row). At the
//! first full batch the [`Inserter`] thread takes over the writer's SQLite connection and the
//! [`RowIds`] state; later batches follow it (one waits while another is inserted), and the writer gets
//! the connection and state back (with the first error, if any) at the next operation that needs the
//! database, after every batch handed over is in — so the order of rows and the transaction boundaries
//! are exactly those of inserting on the writer's thread. On our 2-core machine this moves
//! SQLite's half of the put phase off the caller's thread (docs/benchmarks.md).
//!
//! Invariant: rows get the ids after the table's largest, one by one (only grant inserts append to the
//! table while a sync is written); after every statement `last_insert_rowid` is checked against
//! [`RowIds::next`], and a mismatch or a failed insert stops the key gathering (the keys would no longer
//! match the table; the index build then reads the table instead).

use std::sync::mpsc::{Receiver, SyncSender};

use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::btree;
use crate::error::{C1zError, Result};

/// Grant rows per multi-row `INSERT` ([`GRANT_VALUES`] bound values each, plus the shared sync id and
/// timestamp).
pub(crate) const GRANT_BATCH: usize = 64;

/// Rows the writer collects before it hands a batch over (8 statements' worth): large enough that the
/// hand-over costs nothing next to the inserts, small enough that the batches in flight stay small
/// (~0.15–1.5 MB of grants each; 2,048 rows measured no faster and cost memory).
pub(crate) const HANDOFF_ROWS: usize = 8 * GRANT_BATCH;

/// Bound values per grant row: the six text columns, expansion, needs_expansion, data.
const GRANT_VALUES: usize = 9;

const GRANT_COLUMNS: &str =
    "INSERT INTO v1_grants (resource_type_id, resource_id, entitlement_id, principal_resource_type_id,
   principal_resource_id, external_id, expansion, needs_expansion, data, sync_id, discovered_at) VALUES ";

/// The `INSERT` of `n` grant rows: `?1` is the sync id, `?2` the timestamp, then [`GRANT_VALUES`] values
/// per row.
fn grant_insert_sql(n: usize) -> String {
    let mut sql = String::from(GRANT_COLUMNS);
    for i in 0..n {
        let b = 3 + GRANT_VALUES * i;
        if i > 0 {
            sql.push(',');
        }
        sql.push('(');
        for k in 0..GRANT_VALUES {
            sql.push_str(&format!("?{},", b + k));
        }
        sql.push_str("?1,?2)");
    }
    sql
}

/// The two statements' SQL (prepared through the connection's statement cache).
#[derive(Clone)]
pub(crate) struct InsertSql {
    batch: String,
    one: String,
}

impl InsertSql {
    pub(crate) fn new() -> Self {
        Self {
            batch: grant_insert_sql(GRANT_BATCH),
            one: grant_insert_sql(1),
        }
    }
}

/// Grants waiting for their multi-row `INSERT`: every column's bytes in one buffer (no allocation per
/// row), each row as the end offsets of its columns.
#[derive(Default)]
pub(crate) struct GrantBatch {
    pub(crate) bytes: Vec<u8>,
    pub(crate) rows: Vec<BatchRow>,
}

impl GrantBatch {
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.rows.clear();
    }

    /// Column `k` of row `row` (0–5 the text columns, 6 `expansion`, 7 `data`).
    pub(crate) fn col(&self, row: usize, k: usize) -> &[u8] {
        let start = match (row, k) {
            (0, 0) => 0,
            (_, 0) => self.rows[row - 1].ends[7],
            _ => self.rows[row].ends[k - 1],
        };
        &self.bytes[start..self.rows[row].ends[k]]
    }

    /// Appends a row's six text columns (resource_type_id, resource_id, entitlement_id,
    /// principal_resource_type_id, principal_resource_id, external_id) and returns the row's end offsets
    /// with those six set; the caller appends `expansion` and `data` and sets the last two.
    pub(crate) fn push_columns(&mut self, cols: [&[u8]; 6]) -> [usize; 8] {
        let mut ends = [0usize; 8];
        for (k, v) in cols.into_iter().enumerate() {
            self.bytes.extend_from_slice(v);
            ends[k] = self.bytes.len();
        }
        ends
    }

    /// Adds a row from its columns (see [`push_columns`](Self::push_columns)), the `expansion` blob
    /// (with `needs_expansion`) if any, and `data`.
    pub(crate) fn push(
        &mut self,
        cols: [&[u8]; 6],
        expansion: Option<&[u8]>,
        needs_expansion: bool,
        data: &[u8],
    ) {
        let mut ends = self.push_columns(cols);
        if let Some(x) = expansion {
            self.bytes.extend_from_slice(x);
        }
        ends[6] = self.bytes.len();
        self.bytes.extend_from_slice(data);
        ends[7] = self.bytes.len();
        self.rows.push(BatchRow {
            ends,
            has_expansion: expansion.is_some(),
            needs_expansion,
            hot: None,
        });
    }
}

/// End offsets in [`GrantBatch::bytes`] of resource_type_id, resource_id, entitlement_id,
/// principal_resource_type_id, principal_resource_id, external_id, expansion and data (each column
/// starts where the previous one ends).
pub(crate) struct BatchRow {
    pub(crate) ends: [usize; 8],
    pub(crate) has_expansion: bool,
    pub(crate) needs_expansion: bool,
    /// Whether an expandable grant written so far feeds the row's entitlement, when the writer tracks
    /// the sync's references (else the page thread tells it itself).
    pub(crate) hot: Option<bool>,
}

/// Grant index keys gathered while this process inserted the sync's grants: every row with an id in
/// `start_id..` up to the sync's next id (rows of other syncs are below it; rows expansion adds are above
/// it).
pub(crate) struct Gathering {
    pub(crate) keys: btree::Gatherer,
    pub(crate) start_id: i64,
}

/// What travels with the inserts: the id the next grant row gets, and the keys gathered so far.
pub(crate) struct RowIds {
    /// SQLite gives a row without an id the table's largest + 1, and only the writer's grant inserts
    /// append to the table while a sync is written, so the ids are known without reading them back.
    pub(crate) next: i64,
    /// `None` for a resumed sync (rows from before the crash are not in it) or once something made the
    /// keys unusable (a failed insert or commit, unexpected ids).
    pub(crate) gather: Option<Gathering>,
}

/// Inserts the rows of `batch`: full statements of [`GRANT_BATCH`] rows, a remainder row by row. Once
/// inserted, their index keys are gathered under the row ids they got. After an error some rows of the
/// batch may be missing: the caller drops the gathered keys.
pub(crate) fn insert_rows(
    conn: &Connection,
    sql: &InsertSql,
    batch: &GrantBatch,
    sync_id: &str,
    now: &str,
    ids: &mut RowIds,
) -> Result<()> {
    let rows = &batch.rows;
    let col = |row: usize, k: usize| batch.col(row, k);
    let mut i = 0;
    while i < rows.len() {
        let n = if rows.len() - i >= GRANT_BATCH {
            GRANT_BATCH
        } else {
            1
        };
        let text = if n == GRANT_BATCH { &sql.batch } else { &sql.one };
        let mut st = conn.prepare_cached(text)?;
        st.raw_bind_parameter(1, sync_id)?;
        st.raw_bind_parameter(2, now)?;
        for j in 0..n {
            let row = &rows[i + j];
            let base = 3 + GRANT_VALUES * j;
            for k in 0..6 {
                st.raw_bind_parameter(base + k, ToSqlOutput::Borrowed(ValueRef::Text(col(i + j, k))))?;
            }
            let exp = if row.has_expansion {
                ValueRef::Blob(col(i + j, 6))
            } else {
                ValueRef::Null
            };
            st.raw_bind_parameter(base + 6, ToSqlOutput::Borrowed(exp))?;
            st.raw_bind_parameter(base + 7, row.needs_expansion as i64)?;
            st.raw_bind_parameter(base + 8, ToSqlOutput::Borrowed(ValueRef::Blob(col(i + j, 7))))?;
        }
        st.raw_execute()?;
        drop(st);
        // The rows got the ids after the table's largest, one by one: unless something else changed the
        // table's end since the sync began (then the keys are read from the table instead).
        let last = conn.last_insert_rowid();
        if last != ids.next + n as i64 - 1 {
            ids.gather = None;
            ids.next = last + 1 - n as i64;
        }
        if let Some(g) = ids.gather.as_mut() {
            for j in 0..n {
                // In the order of `btree`'s columns: external_id, sync_id, resource_type_id, resource_id,
                // entitlement_id, principal_resource_type_id, principal_resource_id.
                let r = i + j;
                let vals: [&[u8]; 7] = [
                    col(r, 5),
                    sync_id.as_bytes(),
                    col(r, 0),
                    col(r, 1),
                    col(r, 2),
                    col(r, 3),
                    col(r, 4),
                ];
                g.keys.add(&vals, ids.next + j as i64)?;
            }
        }
        ids.next += n as i64;
        i += n;
    }
    Ok(())
}

/// What the [`Inserter`] needs to take over the inserts: the writer's connection and state. It comes
/// back in an [`Inserted`] when the writer asks for it.
pub(crate) struct Lent {
    pub(crate) conn: Connection,
    pub(crate) sync_id: String,
    pub(crate) now: String,
    pub(crate) ids: RowIds,
}

/// The connection and state back from the [`Inserter`], with the first error of its inserts (after
/// an error it inserts nothing more).
pub(crate) struct Inserted {
    pub(crate) conn: Connection,
    pub(crate) ids: RowIds,
    pub(crate) result: Result<()>,
}

enum Msg {
    /// Take over the connection.
    Take(Box<Lent>),
    /// Insert these rows.
    Batch(GrantBatch),
    /// Give the connection back.
    Return,
}

/// Batches that can wait for the thread: the writer fills the next one meanwhile.
const QUEUED: usize = 1;

/// The thread that inserts handed-over batches in order. Between [`lend`](Self::lend) and
/// [`take_back`](Self::take_back) it holds the writer's connection; emptied batches come back for reuse.
pub(crate) struct Inserter {
    msgs: Option<SyncSender<Msg>>,
    done: Receiver<Option<Inserted>>,
    free: Receiver<GrantBatch>,
    /// The thread holds the connection.
    lent: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn run(
    sql: InsertSql,
    msgs: Receiver<Msg>,
    done: SyncSender<Option<Inserted>>,
    free: std::sync::mpsc::Sender<GrantBatch>,
) {
    let mut held: Option<(Box<Lent>, Result<()>)> = None;
    for msg in msgs {
        match msg {
            Msg::Take(l) => held = Some((l, Ok(()))),
            Msg::Batch(mut batch) => {
                if let Some((l, result)) = held.as_mut()
                    && result.is_ok()
                {
                    *result = insert_rows(&l.conn, &sql, &batch, &l.sync_id, &l.now, &mut l.ids);
                }
                batch.clear();
                let _ = free.send(batch);
            }
            Msg::Return => {
                let back = held.take().map(|(l, result)| {
                    let l = *l;
                    Inserted {
                        conn: l.conn,
                        ids: l.ids,
                        result,
                    }
                });
                if done.send(back).is_err() {
                    return;
                }
            }
        }
    }
}

impl Inserter {
    pub(crate) fn start(sql: InsertSql) -> Result<Self> {
        let (msgs, rx) = std::sync::mpsc::sync_channel::<Msg>(QUEUED);
        let (tx, done) = std::sync::mpsc::sync_channel::<Option<Inserted>>(1);
        let (give, free) = std::sync::mpsc::channel::<GrantBatch>();
        let thread = std::thread::Builder::new()
            .name("c1z-grant-insert".into())
            .spawn(move || run(sql, rx, tx, give))
            .map_err(|e| C1zError::Io {
                action: "start the grant insert thread for",
                path: std::path::PathBuf::from("the working database"),
                error: e,
            })?;
        Ok(Self {
            msgs: Some(msgs),
            done,
            free,
            lent: false,
            thread: Some(thread),
        })
    }

    /// Whether the thread holds the connection.
    pub(crate) fn lent(&self) -> bool {
        self.lent
    }

    /// Hands the connection over; gives it back when the thread is gone (`None` only if the channel
    /// returned something else than what was sent, which it does not).
    pub(crate) fn lend(&mut self, l: Lent) -> std::result::Result<(), Option<Box<Lent>>> {
        let Some(msgs) = self.msgs.as_ref() else {
            return Err(Some(Box::new(l)));
        };
        match msgs.send(Msg::Take(Box::new(l))) {
            Ok(()) => {
                self.lent = true;
                Ok(())
            }
            Err(std::sync::mpsc::SendError(Msg::Take(l))) => Err(Some(l)),
            Err(_) => Err(None),
        }
    }

    /// Queues `batch` for insertion (waits while [`QUEUED`] batches are waiting); returns an emptied
    /// batch to fill next.
    pub(crate) fn insert(&mut self, batch: GrantBatch) -> Result<GrantBatch> {
        let stopped =
            || C1zError::State("the grant insert thread stopped; open the file again to resume the sync");
        let msgs = self.msgs.as_ref().ok_or_else(stopped)?;
        msgs.send(Msg::Batch(batch)).map_err(|_| stopped())?;
        Ok(self.free.try_recv().unwrap_or_default())
    }

    /// Takes the connection back, after every queued batch is inserted; `None` when the thread does not
    /// hold it.
    pub(crate) fn take_back(&mut self) -> Result<Option<Inserted>> {
        if !self.lent {
            return Ok(None);
        }
        self.lent = false;
        let lost = || {
            C1zError::State(
                "the grant insert thread stopped with the database connection; open the file again to resume the sync",
            )
        };
        let msgs = self.msgs.as_ref().ok_or_else(lost)?;
        msgs.send(Msg::Return).map_err(|_| lost())?;
        match self.done.recv() {
            Ok(Some(back)) => Ok(Some(back)),
            _ => Err(lost()),
        }
    }
}

impl Drop for Inserter {
    fn drop(&mut self) {
        // Closing the channel ends the thread after the queued batches; a connection it still holds
        // closes there, rolling back its open transaction (as dropping the writer does).
        self.msgs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
