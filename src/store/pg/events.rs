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
//! Bounded: at most [`MAX_PENDING`] events wait for the database; past that (the database down
//! for long) new ones are dropped and counted in the log. A node killed before its events are
//! written loses them from the stream, never from the records.

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
/// Events in one insert, at most.
const MAX_INSERT: usize = 1_024;

const APPEND: &str = "INSERT INTO events (job_run, at_ms, json) \
     SELECT j, a, t FROM unnest($1::bigint[], $2::bigint[], $3::text[]) WITH ORDINALITY AS e(j, a, t, n) \
     ORDER BY n RETURNING seq";

/// Own events remembered for the follower, at most (past that the oldest are forgotten).
const MAX_OWN: usize = 65_536;

/// The `seq`s of this node's own events, so that its follower ([`EventLog::take_own`]) does
/// not hand the node's events back to it. A `seq` is in it before its append commits, so
/// before any reader can see it.
#[derive(Default)]
struct Own(std::sync::Mutex<std::collections::BTreeSet<u64>>);

impl Own {
    fn add(&self, seqs: impl IntoIterator<Item = u64>) {
        let mut own = self.0.lock().unwrap_or_else(|e| e.into_inner());
        own.extend(seqs);
        while own.len() > MAX_OWN {
            own.pop_first();
        }
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

    /// Of `events` (read in `seq` order), those another node published; forgets this node's
    /// own up to the last of them.
    pub fn others(&self, events: Vec<StoredEvent>) -> Vec<StoredEvent> {
        let Some(last) = events.last().map(|e| e.seq) else { return events };
        let mut own = self.own.0.lock().unwrap_or_else(|e| e.into_inner());
        let others = events.into_iter().filter(|e| !own.contains(&e.seq)).collect();
        *own = own.split_off(&(last + 1));
        others
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

async fn append(pool: &Pool, group: &[StoredEvent], own: &Own) -> Result<(), PgError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK]).await?;
    let job_runs: Vec<Option<i64>> = group.iter().map(|e| e.job_run.map(to_db)).collect();
    let times: Vec<i64> = group.iter().map(|e| to_db(e.at_ms)).collect();
    let lines: Vec<&str> = group.iter().map(|e| e.json.as_str()).collect();
    let seqs = tx.query(APPEND, &[&job_runs, &times, &lines]).await?;
    own.add(seqs.iter().map(|r| from_db(r.get(0))));
    tx.commit().await?;
    Ok(())
}

/// Up to `limit` events after `seq`, in order.
pub async fn events_after(
    client: &deadpool_postgres::Client,
    seq: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, PgError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT seq, job_run, at_ms, json FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&to_db(seq), &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| StoredEvent {
            seq: from_db(row.get(0)),
            job_run: row.get::<_, Option<i64>>(1).map(from_db),
            at_ms: from_db(row.get(2)),
            json: row.get(3),
        })
        .collect())
}

/// Removes the events from before `before_ms` (retention).
pub async fn forget_before(pool: &Pool, before_ms: u64) -> Result<(), PgError> {
    let before = i64::try_from(before_ms).unwrap_or(i64::MAX);
    pool.get().await?.execute("DELETE FROM events WHERE at_ms < $1", &[&before]).await?;
    Ok(())
}

/// The last `seq` of the stream now (0: empty): a follower starts after it.
pub async fn last_seq(client: &deadpool_postgres::Client) -> Result<u64, PgError> {
    let row = client.query_one("SELECT coalesce(max(seq), 0) FROM events", &[]).await?;
    Ok(from_db(row.get(0)))
}
