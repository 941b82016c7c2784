//! The cluster's event stream (issue #11 item 6): every node's published events in one table,
//! in commit order per job run, read by `seq` from anywhere ([`events_after`]).
//!
//! Written by the publisher right after the durable commit, not in the commit's transaction:
//! events are not facts (the records are), and holding the stream's lock inside every group
//! commit would make all nodes' commits take turns. A node's journal publishes a job run's
//! events in its commit order; [`EventLog`] appends them in that order, in transactions of their
//! own that take [`EVENTS_LOCK`] first, so `seq` is assigned in commit order across nodes: once
//! a reader sees `seq`, no smaller one commits later, and a follower never skips one.
//!
//! One row per append (migration 7): the events that queued up while the previous append
//! committed (at most [`MAX_INSERT`]) go into one row, `seq` its first event's place and the
//! others `seq + 1`, `seq + 2`… (the sequence steps by [`MAX_INSERT`], so places never
//! collide). A row per event was 3 heap tuples and 6 index entries per no-op task, a third of
//! the WAL of a task (BENCHMARKS.md, "The CPU and WAL of a no-op task on PostgreSQL"). Rows of
//! schema 6 (`lines` NULL) hold one event each and are read as before. A row's `at_ms` is its
//! oldest event's time, so retention finds every row holding an event past it with the index.
//!
//! Bounded: at most [`MAX_PENDING`] events wait for the database; past that (the database down
//! for long) new ones are dropped and counted in the log. A node killed before its events are
//! written loses them from the stream, never from the records.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc;

use super::PgError;
use super::writer::{from_db, to_db};
use crate::store::StoredEvent;

/// Held by every transaction that appends to `events` (until it ends).
pub const EVENTS_LOCK: i64 = 0x6761_6666_6576; // "gaffev"
/// Events waiting for the database, at most.
pub const MAX_PENDING: usize = 65_536;
/// Events in one row, at most: the step of `events_seq_seq` (migration 7).
const MAX_INSERT: usize = 1_024;

const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
const APPEND: &str = "INSERT INTO events (at_ms, job_runs, times, lines) VALUES ($1, $2, $3, $4) RETURNING seq";

/// Rows of this node's own appends remembered for the follower (past that the oldest are
/// forgotten).
const MAX_OWN: usize = 16_384;

/// This node's own rows (first `seq` → events in it), so that its follower
/// ([`EventLog::follow`]) neither reads them back nor hands the node's events back to it. A row
/// is in it before its append commits, so before any reader can see it.
#[derive(Default)]
struct Own(std::sync::Mutex<BTreeMap<u64, u64>>);

impl Own {
    fn add(&self, seq: u64, events: u64) {
        let mut own = self.0.lock().unwrap_or_else(|e| e.into_inner());
        own.insert(seq, events);
        while own.len() > MAX_OWN {
            own.pop_first();
        }
    }

    /// The own rows that may hold events after `seq` (their first `seq`s).
    fn from(&self, seq: u64) -> Vec<i64> {
        let own = self.0.lock().unwrap_or_else(|e| e.into_inner());
        own.range(seq.saturating_sub(MAX_INSERT as u64)..).map(|(s, _)| to_db(*s)).collect()
    }

    /// Forgets the rows wholly at or before `seq`.
    fn forget_to(&self, seq: u64) {
        let mut own = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((&first, &n)) = own.first_key_value() {
            if first + n.max(1) - 1 > seq {
                break;
            }
            own.pop_first();
        }
    }

    fn holds(&self, seq: u64) -> bool {
        let own = self.0.lock().unwrap_or_else(|e| e.into_inner());
        own.range(..=seq).next_back().is_some_and(|(first, n)| seq < first + n)
    }
}

/// A node's way into the event stream. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: mpsc::Sender<StoredEvent>,
    dropped: Arc<AtomicU64>,
    /// Queued and not yet appended.
    pending: Arc<AtomicU64>,
    own: Arc<Own>,
}

impl EventLog {
    /// Starts the appending task on the current runtime.
    pub fn start(pool: Pool) -> EventLog {
        let (tx, rx) = mpsc::channel(MAX_PENDING);
        let (pending, own) = (Arc::new(AtomicU64::new(0)), Arc::new(Own::default()));
        tokio::spawn(append_loop(pool, rx, pending.clone(), own.clone()));
        EventLog { tx, dropped: Arc::new(AtomicU64::new(0)), pending, own }
    }

    /// The follower's read: up to `limit` rows of events after `seq`, this node's own rows
    /// left out (the database does not send their lines); the last `seq` read (`seq` if none)
    /// and the other nodes' events in order.
    pub async fn follow(
        &self,
        client: &deadpool_postgres::Client,
        seq: u64,
        limit: usize,
    ) -> Result<(u64, Vec<StoredEvent>), PgError> {
        let own = self.own.from(seq);
        let (last, events) = read_after(client, seq, limit, &own).await?;
        let others = events.into_iter().filter(|e| !self.own.holds(e.seq)).collect();
        self.own.forget_to(last);
        Ok((last, others))
    }

    /// Resolves once every event queued so far is appended, or after `within`.
    pub async fn drained(&self, within: Duration) {
        let wait = async {
            while self.pending.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(within, wait).await;
    }

    /// Queues `event` for the stream (its `seq` is the database's to assign); dropped when
    /// [`MAX_PENDING`] wait already.
    pub fn record(&self, event: StoredEvent) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.tx.try_send(event).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    "postgres: {dropped} event(s) left out of the cluster's event stream (it is not keeping up)"
                );
            }
        }
    }
}

async fn append_loop(pool: Pool, mut rx: mpsc::Receiver<StoredEvent>, pending: Arc<AtomicU64>, own: Arc<Own>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_INSERT {
            let Ok(next) = rx.try_recv() else { break };
            group.push(next);
        }
        let mut pause = Duration::from_millis(50);
        while let Err(e) = append(&pool, &group, &own).await {
            tracing::warn!("postgres: cannot append to the event stream ({e}); trying again in {pause:?}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        pending.fetch_sub(group.len() as u64, Ordering::AcqRel);
    }
}

/// Appends `group` (at most [`MAX_INSERT`] events) as one row.
async fn append(pool: &Pool, group: &[StoredEvent], own: &Own) -> Result<(), PgError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Prepared once per connection (a string would be parsed again at every append, a round
    // trip more on the node's database thread), sent with the insert (pipelined).
    let (lock, stmt) = futures_util::try_join!(tx.prepare_cached(LOCK), tx.prepare_cached(APPEND))?;
    let job_runs: Vec<Option<i64>> = group.iter().map(|e| e.job_run.map(to_db)).collect();
    let times: Vec<i64> = group.iter().map(|e| to_db(e.at_ms)).collect();
    let oldest = times.iter().copied().min().unwrap_or(0);
    let lines: Vec<&str> = group.iter().map(|e| e.json.as_str()).collect();
    let (lock_args, append_args): (
        &[&(dyn tokio_postgres::types::ToSql + Sync)],
        &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) = (&[&EVENTS_LOCK], &[&oldest, &job_runs, &times, &lines]);
    let (_, row) = futures_util::try_join!(tx.execute(&lock, lock_args), tx.query_one(&stmt, append_args))?;
    own.add(from_db(row.get(0)), group.len() as u64);
    tx.commit().await?;
    Ok(())
}

/// Rows of events from `$1` on (a row holds events up to [`MAX_INSERT`] places after its own
/// `seq`), `$2` of them at most; the lines of the rows in `$3` are not sent.
const READ_AFTER: &str = "SELECT seq, job_run, at_ms, CASE WHEN seq = ANY($3::bigint[]) THEN NULL ELSE json END, \
     job_runs, times, CASE WHEN seq = ANY($3::bigint[]) THEN NULL ELSE lines END, offsets \
     FROM events WHERE seq > $1 ORDER BY seq LIMIT $2";

/// One row's events after `after`, in order (none for a row whose lines were not sent, but its
/// last place all the same).
fn row_events(row: &tokio_postgres::Row, after: u64, into: &mut Vec<StoredEvent>) -> u64 {
    let seq = from_db(row.get(0));
    let times: Option<Vec<i64>> = row.get(5);
    let Some(times) = times else {
        // One event (schema 6).
        let json: Option<String> = row.get(3);
        if let Some(json) = json
            && seq > after
        {
            let job_run = row.get::<_, Option<i64>>(1).map(from_db);
            into.push(StoredEvent { seq, job_run, at_ms: from_db(row.get(2)), json });
        }
        return seq;
    };
    let offsets: Option<Vec<i32>> = row.get(7);
    let place = |i: usize| seq + offsets.as_ref().map_or(i as u64, |o| o.get(i).copied().unwrap_or(0) as u64);
    let last = times.len().checked_sub(1).map_or(seq, place);
    let lines: Option<Vec<String>> = row.get(6);
    if let Some(lines) = lines {
        let job_runs: Vec<Option<i64>> = row.get::<_, Option<Vec<Option<i64>>>>(4).unwrap_or_default();
        for (i, (json, at)) in lines.into_iter().zip(&times).enumerate() {
            let seq = place(i);
            if seq > after {
                let job_run = job_runs.get(i).copied().flatten().map(from_db);
                into.push(StoredEvent { seq, job_run, at_ms: from_db(*at), json });
            }
        }
    }
    last
}

/// Rows are read this many at a time (a row holds up to [`MAX_INSERT`] events).
const ROWS_AT_ONCE: i64 = 64;

/// Up to `limit` events after `seq`, in order, leaving out the lines of the rows in `own`; and
/// the last place read.
async fn read_after(
    client: &deadpool_postgres::Client,
    seq: u64,
    limit: usize,
    own: &[i64],
) -> Result<(u64, Vec<StoredEvent>), PgError> {
    let (mut events, mut last) = (Vec::new(), seq);
    if limit == 0 {
        return Ok((last, events));
    }
    let stmt = client.prepare_cached(READ_AFTER).await?;
    // A row that starts up to MAX_INSERT places before `seq` may hold events after it.
    let mut from = to_db(seq).saturating_sub(MAX_INSERT as i64);
    loop {
        let rows = client.query(&stmt, &[&from, &ROWS_AT_ONCE, &own]).await?;
        for row in &rows {
            let mut these = Vec::new();
            let row_last = row_events(row, seq, &mut these);
            from = row.get(0);
            let room = limit - events.len();
            if these.len() > room {
                // The page ends inside this row: its last event is the place read (the next
                // read starts there and filters the row's earlier events out again).
                these.truncate(room);
                last = these.last().map_or(last, |e| e.seq);
                events.extend(these);
                return Ok((last, events));
            }
            last = last.max(row_last);
            events.extend(these);
            if events.len() == limit {
                return Ok((last, events));
            }
        }
        if (rows.len() as i64) < ROWS_AT_ONCE {
            return Ok((last, events));
        }
    }
}

/// Up to `limit` events after `seq`, in order.
pub async fn events_after(
    client: &deadpool_postgres::Client,
    seq: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, PgError> {
    Ok(read_after(client, seq, limit, &[]).await?.1)
}

/// Removes the events from before `before_ms` (retention): rows whose every event is older go,
/// a row that holds older and later ones keeps the later ones at their places.
pub async fn forget_before(pool: &Pool, before_ms: u64) -> Result<(), PgError> {
    let before = i64::try_from(before_ms).unwrap_or(i64::MAX);
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("DELETE FROM events WHERE at_ms < $1 AND (times IS NULL OR $1 > ALL(times))", &[&before]).await?;
    // What is left with an older event holds later ones too (the index on `at_ms`, the oldest).
    let rows = tx
        .query("SELECT seq, job_runs, times, lines, offsets FROM events WHERE at_ms < $1 FOR UPDATE", &[&before])
        .await?;
    for row in rows {
        let seq: i64 = row.get(0);
        let job_runs: Vec<Option<i64>> = row.get(1);
        let times: Vec<i64> = row.get(2);
        let lines: Vec<String> = row.get(3);
        let offsets: Option<Vec<i32>> = row.get(4);
        let (mut keep_runs, mut keep_times, mut keep_lines, mut keep_offsets) = (vec![], vec![], vec![], vec![]);
        for (i, line) in lines.into_iter().enumerate() {
            let at = times.get(i).copied().unwrap_or(0);
            if at >= before {
                keep_runs.push(job_runs.get(i).copied().flatten());
                keep_times.push(at);
                keep_lines.push(line);
                keep_offsets.push(offsets.as_ref().map_or(i as i32, |o| o.get(i).copied().unwrap_or(0)));
            }
        }
        let oldest = keep_times.iter().copied().min().unwrap_or(before);
        tx.execute(
            "UPDATE events SET at_ms = $2, job_runs = $3, times = $4, lines = $5, offsets = $6 WHERE seq = $1",
            &[&seq, &oldest, &keep_runs, &keep_times, &keep_lines, &keep_offsets],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The last `seq` of the stream now (0: empty): a follower starts after it.
pub async fn last_seq(client: &deadpool_postgres::Client) -> Result<u64, PgError> {
    let row = client
        .query_opt(
            "SELECT seq + coalesce(offsets[array_length(offsets, 1)], array_length(times, 1) - 1, 0) \
             FROM events ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?;
    Ok(row.map_or(0, |r| from_db(r.get(0))))
}
