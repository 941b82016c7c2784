//! The PostgreSQL store behind the synchronous seam (`store::Store`, `store::Snapshot`).
//!
//! The client is async, the seam is not: [`PgBackend`] runs the pool, the group-commit task and
//! every query on a runtime of its own (one thread, `gaffer-pg`), and its methods hand work to
//! it. A caller then waits on a plain channel, never inside the runtime, so the seam works from
//! any thread: the engine's actors (which only await [`Store::commit`]'s answer), tokio's
//! blocking pool, the CLI.
//!
//! Ids come from in-memory blocks with the next blocks already reserved ([`Prefetched`]): the
//! engine's actors take ids without waiting on the database, unless they use up the blocks
//! ahead faster than one reservation answers — then more are kept ahead from then on.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::runtime::Handle;

use super::events::EventLog;
use super::ids::{ENQUEUE_SEQS, ID_BLOCK, JOB_RUN_IDS, TASK_RUN_IDS, blocks_ahead_after_running_dry, reserve_blocks};
use super::logs::{ChunkWriter, Shipment};
use super::{PgError, PgOptions, PgSnapshot, PgStore};
use crate::store::{
    AttemptLog, AttemptRecord, CacheEntry, Committing, DefinitionRecord, JobRunRecord, LogShipping, Mutation, NodeView,
    RaisedBudgets, ScheduleState, Snapshot, Store, StoreError, StoredEvent, TaskRunRecord,
};

impl From<PgError> for StoreError {
    fn from(e: PgError) -> StoreError {
        match e {
            PgError::Closed => StoreError::Closed,
            PgError::FireTaken { job } => StoreError::FireTaken { job },
            PgError::RunLimit { job } => StoreError::RunLimit { job },
            PgError::Fenced { job_run } => StoreError::Fenced { job_run },
            other => StoreError::File(other.to_string()),
        }
    }
}

/// The PostgreSQL store of one node as a [`Store`].
pub struct PgBackend {
    store: PgStore,
    /// Where it connects (a listener needs a connection of its own).
    url: String,
    /// Shared with the snapshots, which outlive the store if they like.
    runtime: Arc<Runtime>,
    job_runs: Arc<Prefetched>,
    task_runs: Arc<Prefetched>,
    enqueue_seqs: Arc<Prefetched>,
    events: EventLog,
    chunks: ChunkWriter,
}

impl PgBackend {
    /// This node's way into the cluster's event stream.
    pub fn event_log(&self) -> &EventLog {
        &self.events
    }

    /// Connects to `url`, applies the migrations (or refuses a newer schema), reserves the first
    /// id blocks. Blocks: call it off any runtime's worker thread.
    pub fn open(url: &str, options: PgOptions) -> Result<PgBackend, StoreError> {
        let runtime = Arc::new(Runtime::start()?);
        let opening = url.to_string();
        let store = runtime.block_on(async move { PgStore::open(&opening, options).await })?;
        let prefetch = |sequence| Prefetched::start(&runtime, store.pool().clone(), sequence);
        let (events, chunks) = {
            let _entered = runtime.handle.enter();
            (EventLog::start(store.pool().clone()), ChunkWriter::start(store.pool().clone()))
        };
        Ok(PgBackend {
            events,
            chunks,
            job_runs: prefetch(JOB_RUN_IDS)?,
            task_runs: prefetch(TASK_RUN_IDS)?,
            enqueue_seqs: prefetch(ENQUEUE_SEQS)?,
            url: url.to_string(),
            store,
            runtime,
        })
    }

    /// A snapshot of the database at `url`, for a reader: no ids are reserved, nothing is
    /// written, and a database whose schema is not this gaffer's is refused, older or newer (a
    /// reader never migrates: `migrate::check_current`). Blocks.
    pub fn snapshot_of(url: &str) -> Result<Box<dyn Snapshot>, StoreError> {
        let reader = Reader::of(url)?;
        let pool = reader.pool.clone();
        let snapshot = reader.runtime.block_on(async move { PgSnapshot::begin(pool.get().await?).await })?;
        Ok(Box::new(PgSyncSnapshot { snapshot: Some(Arc::new(snapshot)), runtime: reader.runtime.clone() }))
    }

    /// The async store underneath (its queue primitives, async snapshots), for code on its runtime.
    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// The connection string it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A job run this store creates from now on is owned by cluster node `node`.
    pub fn set_owner_node(&self, node: Option<i64>) {
        self.store.writer.set_owner_node(node);
    }

    /// Runs `work` on the store's runtime and waits for it here (never on that runtime's thread).
    pub fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, PgError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.runtime.block_on(work)
    }

    /// Spawns `work` on the store's runtime (the cluster's long-lived tasks: heartbeat, claims,
    /// mail); its handle may be awaited from any runtime.
    pub fn spawn<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.runtime.handle.spawn(work)
    }
}

impl Store for PgBackend {
    fn commit(&self, batch: Vec<Mutation>) -> Committing {
        let answer = self.store.writer.hand_over(batch);
        Box::pin(async move { Ok(answer.await?) })
    }

    fn commit_blocking(&self, batch: Vec<Mutation>) -> Result<(), StoreError> {
        self.runtime.block_on(self.store.writer.hand_over(batch))
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot>, StoreError> {
        let store = self.store.clone();
        let snapshot = self.runtime.block_on(async move { store.snapshot().await })?;
        Ok(Box::new(PgSyncSnapshot { snapshot: Some(Arc::new(snapshot)), runtime: self.runtime.clone() }))
    }

    fn commit_count(&self) -> u64 {
        self.store.commit_count()
    }

    fn next_job_run(&self) -> u64 {
        self.job_runs.next(&self.runtime.handle)
    }

    fn next_task_run(&self) -> u64 {
        self.task_runs.next(&self.runtime.handle)
    }

    fn next_enqueue_seq(&self) -> u64 {
        self.enqueue_seqs.next(&self.runtime.handle)
    }

    fn ship_log(&self, log: AttemptLog<'_>) -> Option<LogShipping> {
        let (shipping, shipper) = LogShipping::new();
        let shipment = Shipment {
            job_run: log.job_run,
            task_run: log.task_run,
            attempt: log.attempt,
            state_dir: log.state_dir.to_path_buf(),
            path: log.path.to_path_buf(),
        };
        self.runtime.handle.spawn(super::logs::ship(self.chunks.clone(), shipment, shipper));
        Some(shipping)
    }

    fn forget_past_retention(&self, ended: &[u64], events_before_ms: u64) -> Result<(), StoreError> {
        let (pool, ended) = (self.store.pool().clone(), ended.to_vec());
        self.runtime.block_on(async move {
            super::logs::forget(&pool, &ended).await?;
            super::events::forget_before(&pool, events_before_ms).await
        })
    }

    fn nodes(&self) -> Result<Option<Vec<NodeView>>, StoreError> {
        Store::snapshot(self)?.nodes()
    }

    fn record_event(&self, job_run: Option<u64>, at_ms: u64, json: &str) {
        self.events.record(StoredEvent { seq: 0, job_run, at_ms, json: json.to_string() });
    }
}

impl Drop for PgBackend {
    /// Events published just before the stop still reach the stream (bounded).
    fn drop(&mut self) {
        let events = self.events.clone();
        let _ = self.runtime.block_on(async move {
            events.drained(Duration::from_secs(2)).await;
            Ok(())
        });
    }
}

/// A reader's connections to one database: a small pool on a runtime of its own, made at the
/// first snapshot and kept for the process, so a command that reads often (`logs --follow`, the
/// API, the offline TUI) does not connect and check the schema again each time.
struct Reader {
    runtime: Arc<Runtime>,
    pool: Pool,
}

impl Reader {
    fn of(url: &str) -> Result<Arc<Reader>, StoreError> {
        static READERS: Mutex<BTreeMap<String, Arc<Reader>>> = Mutex::new(BTreeMap::new());
        let mut readers = READERS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reader) = readers.get(url) {
            return Ok(reader.clone());
        }
        let runtime = Arc::new(Runtime::start()?);
        let pool = super::connect(url, 4)?;
        let checking = pool.clone();
        runtime.block_on(async move {
            let client = checking.get().await?;
            super::migrate::check_current(&client).await
        })?;
        let reader = Arc::new(Reader { runtime, pool });
        readers.insert(url.to_string(), reader.clone());
        Ok(reader)
    }
}

/// A current-thread tokio runtime on a thread of its own, stopped when this is dropped (tasks
/// still queued are dropped with it: a commit not yet answered then fails as `Closed`).
struct Runtime {
    handle: Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Runtime {
    fn start() -> Result<Runtime, StoreError> {
        let (started, handle) = std::sync::mpsc::sync_channel(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("gaffer-pg".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => return drop(started.send(Err(e.to_string()))),
                };
                let _ = started.send(Ok(runtime.handle().clone()));
                // The thread drives every task spawned on the handle while it waits here.
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| StoreError::File(format!("postgres: cannot start its thread: {e}")))?;
        let handle = handle.recv().map_err(|_| StoreError::Closed)?.map_err(StoreError::File)?;
        Ok(Runtime { handle, stop: Some(stop) })
    }

    /// Runs `work` on the runtime and waits for its answer on this thread (never call it on the
    /// runtime's own thread).
    fn block_on<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, PgError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(work.await);
        });
        Ok(rx.recv().map_err(|_| StoreError::Closed)??)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One sequence's ids: the block being handed out and the next one, reserved ahead.
struct Prefetched {
    pool: Pool,
    sequence: &'static str,
    blocks: Mutex<Blocks>,
    refilled: Condvar,
}

struct Blocks {
    /// `next..end` still free.
    next: u64,
    end: u64,
    /// The first ids of the blocks reserved ahead, ascending.
    ahead: VecDeque<u64>,
    /// How many blocks to keep ahead: grows when a burst uses them up within one reservation's
    /// round trip (`blocks_ahead_after_running_dry`).
    wanted: usize,
    /// A reservation is under way (one at a time, so the blocks ahead stay ascending).
    reserving: bool,
}

impl Prefetched {
    /// Reserves the first block and the one ahead of it (ids increase).
    fn start(runtime: &Runtime, pool: Pool, sequence: &'static str) -> Result<Arc<Prefetched>, StoreError> {
        let reserving = pool.clone();
        let firsts = runtime.block_on(async move { reserve_blocks(&reserving, sequence, 2).await })?;
        let blocks = Blocks {
            next: firsts[0],
            end: firsts[0] + ID_BLOCK,
            ahead: firsts[1..].iter().copied().collect(),
            wanted: 1,
            reserving: false,
        };
        Ok(Arc::new(Prefetched { pool, sequence, blocks: Mutex::new(blocks), refilled: Condvar::new() }))
    }

    fn next(self: &Arc<Self>, runtime: &Handle) -> u64 {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        if blocks.next == blocks.end {
            if blocks.ahead.is_empty() {
                // Used up within one round trip to the database: keep more ahead from now on.
                blocks.wanted = blocks_ahead_after_running_dry(blocks.wanted);
                self.refill_if_short(&mut blocks, runtime);
                blocks = self.refilled.wait_while(blocks, |b| b.ahead.is_empty()).unwrap_or_else(|e| e.into_inner());
            }
            let first = blocks.ahead.pop_front().expect("waited for it");
            (blocks.next, blocks.end) = (first, first + ID_BLOCK);
            self.refill_if_short(&mut blocks, runtime);
        }
        blocks.next += 1;
        blocks.next - 1
    }

    /// Starts reserving the blocks missing from those wanted ahead, unless a reservation is
    /// already under way.
    fn refill_if_short(self: &Arc<Self>, blocks: &mut Blocks, runtime: &Handle) {
        if !blocks.reserving && blocks.ahead.len() < blocks.wanted {
            blocks.reserving = true;
            runtime.spawn(self.clone().reserve_ahead(blocks.wanted - blocks.ahead.len()));
        }
    }

    /// Reserves `count` blocks after those ahead, retrying (with backoff) until the database
    /// answers: the ids are needed whatever the outage.
    async fn reserve_ahead(self: Arc<Self>, count: usize) {
        let mut pause = Duration::from_millis(50);
        loop {
            match reserve_blocks(&self.pool, self.sequence, count).await {
                Ok(firsts) => {
                    let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
                    blocks.ahead.extend(firsts);
                    blocks.reserving = false;
                    drop(blocks);
                    self.refilled.notify_all();
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        "postgres: cannot reserve ids of {} ({e}); trying again in {pause:?}",
                        self.sequence
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// A [`PgSnapshot`] read synchronously: each read runs on the store's runtime, in the
/// snapshot's REPEATABLE READ transaction, held until this is dropped. The `each_*` reads
/// fetch their rows first, then call `f` (which may read this snapshot again).
struct PgSyncSnapshot {
    /// `None` only while being dropped.
    snapshot: Option<Arc<PgSnapshot>>,
    runtime: Arc<Runtime>,
}

impl PgSyncSnapshot {
    fn read<T, F>(&self, read: impl FnOnce(Arc<PgSnapshot>) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, PgError>> + Send + 'static,
    {
        let snapshot = self.snapshot.clone().expect("a snapshot lives until dropped");
        self.runtime.block_on(read(snapshot))
    }
}

impl Drop for PgSyncSnapshot {
    /// The transaction is ended on the runtime (`PgSnapshot`'s drop sends the ROLLBACK there).
    fn drop(&mut self) {
        if let Some(snapshot) = self.snapshot.take() {
            self.runtime.handle.spawn(async move { drop(snapshot) });
        }
    }
}

fn each<T>(rows: impl Iterator<Item = T>, f: &mut dyn FnMut(T) -> bool) -> Result<(), StoreError> {
    for row in rows {
        if !f(row) {
            break;
        }
    }
    Ok(())
}

impl Snapshot for PgSyncSnapshot {
    fn job_runs(&self) -> Result<Vec<JobRunRecord>, StoreError> {
        self.read(|s| async move { s.job_runs().await })
    }

    fn task_runs(&self) -> Result<Vec<TaskRunRecord>, StoreError> {
        self.read(|s| async move { s.task_runs().await })
    }

    fn each_job_run(&self, f: &mut dyn FnMut(JobRunRecord) -> bool) -> Result<(), StoreError> {
        each(self.job_runs()?.into_iter(), f)
    }

    fn each_job_run_newest_first(&self, f: &mut dyn FnMut(JobRunRecord) -> bool) -> Result<(), StoreError> {
        each(self.job_runs()?.into_iter().rev(), f)
    }

    fn each_task_run(&self, f: &mut dyn FnMut(TaskRunRecord) -> bool) -> Result<(), StoreError> {
        each(self.task_runs()?.into_iter(), f)
    }

    fn job_run(&self, id: u64) -> Result<Option<JobRunRecord>, StoreError> {
        self.read(|s| async move { s.job_run(id).await })
    }

    fn task_run(&self, id: u64) -> Result<Option<TaskRunRecord>, StoreError> {
        self.read(|s| async move { s.task_run(id).await })
    }

    fn definition(&self, hash: u64) -> Result<Option<DefinitionRecord>, StoreError> {
        self.read(|s| async move { s.definition(hash).await })
    }

    fn task_runs_of(&self, job_run: u64) -> Result<Vec<TaskRunRecord>, StoreError> {
        self.read(|s| async move { s.task_runs_of(job_run).await })
    }

    fn instances_of(&self, job_run: u64, task: &str) -> Result<Vec<TaskRunRecord>, StoreError> {
        let task = task.to_string();
        self.read(|s| async move { s.instances_of(job_run, &task).await })
    }

    fn attempts_of(&self, task_run: u64) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(|s| async move { s.attempts_of(task_run).await })
    }

    fn attempts(&self) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(|s| async move { s.attempts().await })
    }

    fn each_attempt(&self, f: &mut dyn FnMut(AttemptRecord) -> bool) -> Result<(), StoreError> {
        each(self.attempts()?.into_iter(), f)
    }

    fn schedules(&self) -> Result<BTreeMap<String, ScheduleState>, StoreError> {
        self.read(|s| async move { s.schedules().await })
    }

    fn idempotency_key(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let key = key.to_string();
        self.read(|s| async move { s.idempotency_key(&key).await })
    }

    fn cache_entry(&self, key: &str) -> Result<Option<CacheEntry>, StoreError> {
        let key = key.to_string();
        self.read(|s| async move { s.cache_entry(&key).await })
    }

    fn expired_cache_keys(&self, now_ms: u64) -> Result<Vec<String>, StoreError> {
        self.read(|s| async move { s.expired_cache_keys(now_ms).await })
    }

    fn raised_budgets(&self, job_run: u64) -> Result<RaisedBudgets, StoreError> {
        self.read(|s| async move { s.raised_budgets(job_run).await })
    }

    fn paused_queues(&self) -> Result<BTreeSet<String>, StoreError> {
        self.read(|s| async move { s.paused_queues().await })
    }

    fn log_bytes(&self, task_run: u64, attempt: u32, offset: u64, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(move |s| async move { s.log_bytes(task_run, attempt, offset, max).await.map(Some) })
    }

    fn events_after(&self, seq: u64, limit: usize) -> Result<Option<Vec<StoredEvent>>, StoreError> {
        self.read(move |s| async move { s.events_after(seq, limit).await.map(Some) })
    }

    fn nodes(&self) -> Result<Option<Vec<NodeView>>, StoreError> {
        self.read(|s| async move { s.nodes().await.map(Some) })
    }
}
