//! The seam between gaffer and where its durable state lives: [`Store`] (commits and ids, for
//! the running instance) and [`Snapshot`] (consistent reads, for everyone). The engine, the CLI,
//! the API and the TUI see the store only through these; `RedbStore` and `Reader` are the redb
//! implementations, and [`StoreLocation`] is the one place a location becomes a snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use super::{
    AttemptRecord, CacheEntry, DefinitionRecord, JobRunRecord, Mutation, RaisedBudgets, ScheduleState, StoreError,
    TaskRunRecord,
};

/// A commit on its way: resolves once the batch is durable, or with why it could not be made so.
pub type Committing = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'static>>;

/// Where the running instance commits, and where its ids come from.
///
/// Ids are unique and increasing for the store that hands them out, not necessarily gap-free: a
/// store may reserve them in blocks (a database sequence) and lose the rest of a block on a crash.
/// An id is made durable by the commit that first writes a record with it; one that reached the
/// store is never handed out again.
pub trait Store: Send + Sync + 'static {
    /// Commits `batch` whole; the future resolves once it is durable. Batches are committed in
    /// the order of the calls (the batch is handed over before this returns, not when the
    /// future is first polled): callers rely on it, e.g. a definition before the runs naming it.
    fn commit(&self, batch: Vec<Mutation>) -> Committing;
    /// [`Store::commit`] for callers outside any runtime (start-up, the CLI).
    fn commit_blocking(&self, batch: Vec<Mutation>) -> Result<(), StoreError>;
    /// A consistent view of everything committed so far. May block (it may open a file or ask
    /// a server): call it off the engine's actor thread — tokio's blocking pool, or the CLI.
    fn snapshot(&self) -> Result<Box<dyn Snapshot>, StoreError>;
    /// Durable transactions made so far (for benchmarks: mutations per fsync).
    fn commit_count(&self) -> u64;
    fn next_job_run(&self) -> u64;
    fn next_task_run(&self) -> u64;
    /// The sequence that orders equal priorities in a queue.
    fn next_enqueue_seq(&self) -> u64;
    /// Starts copying an attempt's log — the file at `path` under `state_dir`, which only grows
    /// (`executor::logfile`) — into the store while the attempt runs, for a store shared by
    /// several nodes: `logs` then reads it from any node ([`Snapshot::log_bytes`]). `None` where
    /// the file is the only copy (redb).
    fn ship_log(&self, _attempt: AttemptLog<'_>) -> Option<LogShipping> {
        None
    }
    /// Retention (`settings.retention`) of what a shared store keeps for every node: the shipped
    /// logs of `ended` job runs and the events from before `events_before_ms`. Nothing for redb
    /// (the sweep removes the files).
    fn forget_past_retention(&self, _ended: &[u64], _events_before_ms: u64) -> Result<(), StoreError> {
        Ok(())
    }
    /// Appends an event (its JSON line), published after its commit in commit order per job
    /// run, to a shared store's event stream ([`Snapshot::events_after`]); bounded: what does
    /// not fit is dropped with a warning. Nothing for redb, whose journal is `events/*.jsonl`.
    fn record_event(&self, _job_run: Option<u64>, _at_ms: u64, _json: &str) {}
    /// The cluster's nodes now (as [`Snapshot::nodes`]); `None` for a store of one machine,
    /// which answers without opening anything. May block.
    fn nodes(&self) -> Result<Option<Vec<NodeView>>, StoreError> {
        Ok(None)
    }
}

/// Which attempt's log to ship, and where its file is ([`Store::ship_log`]).
#[derive(Debug, Clone, Copy)]
pub struct AttemptLog<'a> {
    pub job_run: u64,
    pub task_run: u64,
    pub attempt: u32,
    pub state_dir: &'a Path,
    /// Under `state_dir`.
    pub path: &'a Path,
}

/// An attempt's log being copied into the store ([`Store::ship_log`]).
pub struct LogShipping {
    ended: tokio::sync::oneshot::Sender<()>,
    shipped: tokio::sync::oneshot::Receiver<()>,
}

/// The shipper's side of a [`LogShipping`]: told when the attempt ended (or the handle was
/// dropped), answers once the rest of the log is stored.
pub struct LogShipper {
    pub ended: tokio::sync::oneshot::Receiver<()>,
    pub shipped: tokio::sync::oneshot::Sender<()>,
}

impl LogShipping {
    pub fn new() -> (LogShipping, LogShipper) {
        let (ended, ended_rx) = tokio::sync::oneshot::channel();
        let (shipped_tx, shipped) = tokio::sync::oneshot::channel();
        (LogShipping { ended, shipped }, LogShipper { ended: ended_rx, shipped: shipped_tx })
    }

    /// The attempt has ended: resolves once the rest of its log is stored (or given up on).
    pub async fn finish(self) {
        let _ = self.ended.send(());
        let _ = self.shipped.await;
    }
}

/// One event in a shared store's event stream: its place (`seq`, increasing in commit order,
/// assigned by the store), its job run, when it happened and its JSON line (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub job_run: Option<u64>,
    pub at_ms: u64,
    pub json: String,
}

/// A node of a cluster as `status` shows it, its heartbeat age and liveness at the store's clock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeView {
    pub id: u64,
    pub name: String,
    pub labels: Vec<String>,
    pub heartbeat_age_ms: u64,
    /// Its lease has not passed (`model::lease`); a stopped node is not live.
    pub live: bool,
    /// The attempts running on it (the task runs whose `node` it is), by task run id.
    pub running: Vec<RunningOnNode>,
}

/// An attempt running on a node of a cluster, as the Workers view lists it under its node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunningOnNode {
    pub task_run: u64,
    pub attempt: u32,
    pub job_run: u64,
    pub task: String,
}

/// The running instance's store, whatever is behind it. Cheap to clone.
#[derive(Clone)]
pub struct StoreHandle(Arc<dyn Store>);

impl StoreHandle {
    pub fn new(store: Arc<dyn Store>) -> StoreHandle {
        StoreHandle(store)
    }
}

impl std::ops::Deref for StoreHandle {
    type Target = dyn Store;

    fn deref(&self) -> &(dyn Store + 'static) {
        &*self.0
    }
}

impl<S: Store> From<S> for StoreHandle {
    fn from(store: S) -> StoreHandle {
        StoreHandle(Arc::new(store))
    }
}

/// A consistent, read-only view of the store. Every record is read as committed; nothing seen
/// through one snapshot changes while it is held.
pub trait Snapshot: Send {
    fn job_runs(&self) -> Result<Vec<JobRunRecord>, StoreError>;
    fn task_runs(&self) -> Result<Vec<TaskRunRecord>, StoreError>;
    /// Every job run in id order, one at a time (no list of them all is built); `f` returns
    /// false to stop.
    fn each_job_run(&self, f: &mut dyn FnMut(JobRunRecord) -> bool) -> Result<(), StoreError>;
    /// Every job run, newest first, one at a time; `f` returns false to stop.
    fn each_job_run_newest_first(&self, f: &mut dyn FnMut(JobRunRecord) -> bool) -> Result<(), StoreError>;
    /// Every task run in id order, one at a time; `f` returns false to stop.
    fn each_task_run(&self, f: &mut dyn FnMut(TaskRunRecord) -> bool) -> Result<(), StoreError>;
    fn job_run(&self, id: u64) -> Result<Option<JobRunRecord>, StoreError>;
    fn task_run(&self, id: u64) -> Result<Option<TaskRunRecord>, StoreError>;
    fn definition(&self, hash: u64) -> Result<Option<DefinitionRecord>, StoreError>;
    /// The task runs of one job run, in id order.
    fn task_runs_of(&self, job_run: u64) -> Result<Vec<TaskRunRecord>, StoreError>;
    /// The task runs of one task in one job run, by iteration, then item, then kind.
    fn instances_of(&self, job_run: u64, task: &str) -> Result<Vec<TaskRunRecord>, StoreError>;
    fn attempts_of(&self, task_run: u64) -> Result<Vec<AttemptRecord>, StoreError>;
    fn attempts(&self) -> Result<Vec<AttemptRecord>, StoreError>;
    /// Every attempt, one at a time; `f` returns false to stop.
    fn each_attempt(&self, f: &mut dyn FnMut(AttemptRecord) -> bool) -> Result<(), StoreError>;
    /// Persisted schedule states by job name.
    fn schedules(&self) -> Result<BTreeMap<String, ScheduleState>, StoreError>;
    /// The job run a submit with this idempotency key created, if one did.
    fn idempotency_key(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// The cached run stored under a scoped cache key, if any (its age is the caller's business).
    fn cache_entry(&self, key: &str) -> Result<Option<CacheEntry>, StoreError>;
    /// The keys of cache entries whose time ran out before `now_ms`.
    fn expired_cache_keys(&self, now_ms: u64) -> Result<Vec<String>, StoreError>;
    /// The budgets raised by retries in job run `job_run` (none: the file's hold).
    fn raised_budgets(&self, job_run: u64) -> Result<RaisedBudgets, StoreError>;
    /// Queues paused by a person, which stay paused across restarts.
    fn paused_queues(&self) -> Result<BTreeSet<String>, StoreError>;
    /// Up to `max` bytes of an attempt's log from byte `offset`, as its node shipped them into
    /// the store ([`Store::ship_log`]); `None` where the store holds no logs (redb: they are
    /// files in the state dir).
    fn log_bytes(&self, _task_run: u64, _attempt: u32, _offset: u64, _max: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    /// Up to `limit` events of the cluster's stream after `seq`, in order; `None` where the
    /// store keeps no events (redb: the journal files).
    fn events_after(&self, _seq: u64, _limit: usize) -> Result<Option<Vec<StoredEvent>>, StoreError> {
        Ok(None)
    }
    /// The cluster's nodes by name; `None` for a store of one machine (redb).
    fn nodes(&self) -> Result<Option<Vec<NodeView>>, StoreError> {
        Ok(None)
    }
}

/// Where the durable state is: what `run`/`serve` open as the engine's store, and what the read
/// commands, the API (`/metrics` too) and the offline TUI open snapshots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `STATE_DIR/state.redb`.
    StateDir(PathBuf),
    /// A PostgreSQL database: a `postgres://` URL (`--store`, `GAFFER_STORE`) or a libpq
    /// connection string (tests).
    Postgres(String),
}

impl StoreLocation {
    pub fn state_dir(path: &Path) -> StoreLocation {
        StoreLocation::StateDir(path.to_path_buf())
    }

    /// `--store` / `GAFFER_STORE`: a `postgres://` or `postgresql://` URL is that database;
    /// none (or an empty one) is the state dir's own store. Anything else, or a URL that cannot
    /// be read, is refused with the reason (the password never shown).
    pub fn choose(given: Option<&str>, state_dir: &Path) -> Result<StoreLocation, String> {
        let Some(url) = given.map(str::trim).filter(|g| !g.is_empty()) else {
            return Ok(StoreLocation::state_dir(state_dir));
        };
        if !["postgres://", "postgresql://"].iter().any(|scheme| url.starts_with(scheme)) {
            return Err(format!(
                "--store `{}`: not a store gaffer knows: give a postgres://USER@HOST/DB URL (PostgreSQL), \
                 or no --store (and no GAFFER_STORE) for the state dir's own store",
                redacted(url)
            ));
        }
        super::pg::config(url).map_err(|e| format!("--store `{}`: {e}", redacted(url)))?;
        Ok(StoreLocation::Postgres(url.to_string()))
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, StoreLocation::Postgres(_))
    }

    /// A snapshot of what the store at this location holds; works while an instance writes.
    pub fn snapshot(&self) -> Result<Box<dyn Snapshot>, StoreError> {
        match self {
            StoreLocation::StateDir(dir) => Ok(Box::new(super::open_reader(dir)?)),
            // Named, since a command may read a database on another machine.
            StoreLocation::Postgres(url) => super::pg::PgBackend::snapshot_of(url)
                .map_err(|e| StoreError::File(format!("store {}: {e}", redacted(url)))),
        }
    }
}

impl std::fmt::Display for StoreLocation {
    /// The state dir's store file, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::StateDir(dir) => write!(f, "{}", dir.join(super::STORE_FILE).display()),
            StoreLocation::Postgres(url) => f.write_str(&redacted(url)),
        }
    }
}

/// `url` with the password of its user part (`postgres://me:secret@db/x`) and of a `password=`
/// parameter replaced by `***`, for messages.
fn redacted(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let authority_end = out[start..].find(['/', '?']).map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..authority_end].rfind('@').map(|i| start + i)
            && let Some(colon) = out[start..at].find(':').map(|i| start + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    if let Some(i) = out.find("password=") {
        let value = i + "password=".len();
        let end = out[value..].find(['&', ' ']).map_or(out.len(), |e| value + e);
        out.replace_range(value..end, "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_chosen_by_its_url_and_anything_else_is_refused() {
        let dir = Path::new("/s");
        assert_eq!(StoreLocation::choose(None, dir), Ok(StoreLocation::state_dir(dir)));
        assert_eq!(StoreLocation::choose(Some(" "), dir), Ok(StoreLocation::state_dir(dir)), "GAFFER_STORE=");
        for url in ["postgres://me@db/gaffer", "postgresql://me:pw@db:5433/gaffer?sslmode=disable"] {
            assert_eq!(StoreLocation::choose(Some(url), dir), Ok(StoreLocation::Postgres(url.into())));
        }
        let refused = StoreLocation::choose(Some("mysql://me:pw@db/x"), dir).expect_err("not a store");
        assert!(refused.contains("not a store gaffer knows") && refused.contains("me:***@db"), "{refused}");
        let refused = StoreLocation::choose(Some("postgres://me:pw@db:notaport/x"), dir).expect_err("bad port");
        assert!(refused.starts_with("--store `postgres://me:***@db:notaport/x`: postgres:"), "{refused}");
        assert!(!refused.contains("pw"), "{refused}");
    }

    #[test]
    fn a_location_is_shown_without_its_password() {
        let shown = |url: &str| StoreLocation::Postgres(url.into()).to_string();
        assert_eq!(shown("postgres://me:s3cret@db:5432/g"), "postgres://me:***@db:5432/g");
        assert_eq!(shown("postgres://me@db/g?password=s3cret&x=1"), "postgres://me@db/g?password=***&x=1");
        assert_eq!(shown("postgres://db/g"), "postgres://db/g");
        assert_eq!(StoreLocation::state_dir(Path::new("/s")).to_string(), "/s/state.redb");
    }
}
