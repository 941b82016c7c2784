//! Durable state in one redb file, `state.redb`.
//!
//! One writer: the running instance, through [`RedbStore`] (behind the [`Store`] seam), whose thread batches every
//! mutation that arrives while the previous commit is being made durable into one write
//! transaction (group commit) and answers each caller only after that commit. Readers (the CLI
//! while an instance runs, or the instance itself) open MVCC snapshots and never block it.
//!
//! Architecture Invariant: `store` knows nothing of actors or processes; it stores records.

pub mod codec;
mod lock;
mod overlay;
pub mod pg;
pub mod records;
mod seam;
mod writer;

use std::path::{Path, PathBuf};

use redb::{ConcurrencyMode, Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

pub use crate::model::schedule::ScheduleState;
use crate::state_dir::{Access, StateDir, StateDirError};
pub use lock::{InstanceLock, holder as instance_pid};
pub use records::{
    AttemptRecord, CacheEntry, DefinitionRecord, JobRunRecord, MAX_ATTEMPT_WARNINGS, RaisedBudgets, TaskRunKind,
    TaskRunRecord,
};
pub use seam::{
    AttemptLog, Committing, LogShipper, LogShipping, NodeView, RunningOnNode, Snapshot, Store, StoreHandle,
    StoreLocation, StoredEvent,
};
pub use writer::{Ids, RedbStore, StoreCloser};

/// Bumped on any change of tables or of a record's meaning; checked at open. A record's layout
/// has its own version (`codec::Record`), so a new layout needs no bump. The writer migrates an
/// older store once, at open, in one transaction (`migrate`); readers read schema 1 as it is.
///
/// 2: task runs as instances — every task run in layout 2 and the `task_instances` index.
pub const SCHEMA_VERSION: u64 = 2;
/// The oldest schema this gaffer reads (and migrates when it writes).
const OLDEST_SCHEMA: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DEFINITIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("definitions");
const JOB_RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("job_runs");
const TASK_RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("task_runs");
/// (job_run, task_run) → (): the task runs of one job run, without a scan.
const JOB_TASKS: TableDefinition<(u64, u64), ()> = TableDefinition::new("job_tasks");
const ATTEMPTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("attempts");
/// (job_run, task, iteration, item_index, kind) → task run: the instances of one task in one job
/// run (SPEC §2.2: several per task), without a scan. `kind` is [`TaskRunKind::index_key`].
/// Schema 2; a schema 1 file is indexed by the migration.
type InstanceKey<'a> = (u64, &'a str, u32, Option<u32>, u8);
const TASK_INSTANCES: TableDefinition<InstanceKey<'static>, u64> = TableDefinition::new("task_instances");
/// job name → ScheduleState: the next fire time survives restarts (added in schema 1; a file
/// without it simply has no schedules yet).
const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");
/// queue name → () while the queue is paused: a pause outlives a restart.
const PAUSED: TableDefinition<&str, ()> = TableDefinition::new("paused_queues");
/// idempotency key (`gaffer submit --key`) → the job run it created.
const IDEMPOTENCY: TableDefinition<&str, u64> = TableDefinition::new("idempotency");
/// `cache` of SPEC §2.2: scoped key (`job/task/rendered key`) → the succeeded run to reuse.
const CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("cache");
/// job run → the budgets a person raised in it (`gaffer retry ID --budget USD`).
const RAISED_BUDGETS: TableDefinition<u64, &[u8]> = TableDefinition::new("raised_budgets");

const SEQ_JOB_RUN: &str = "seq.job_run";
const SEQ_TASK_RUN: &str = "seq.task_run";
const SEQ_ENQUEUE: &str = "seq.enqueue";

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("state dir {} is in use by another gaffer instance{}", state_dir.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    InUse { state_dir: PathBuf, pid: Option<u32> },
    #[error("{}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
    #[error("state.redb: {0}")]
    Db(String),
    #[error("{0}")]
    File(String),
    #[error(
        "state.redb: the disk is full ({0}): free some space and start gaffer again; every state committed so far is kept"
    )]
    DiskFull(String),
    #[error(
        "state.redb has schema version {found}, this gaffer understands {OLDEST_SCHEMA} to {SCHEMA_VERSION}: it was left as it is; use the gaffer that wrote it, or a newer one"
    )]
    Schema { found: u64 },
    #[error("state.redb: a stored value cannot be read: {0}")]
    Codec(String),
    #[error(
        "state.redb cannot be migrated from schema {from} to {SCHEMA_VERSION}: {reason}. Nothing was changed: the file is still at schema {from} (`gaffer doctor` checks it)"
    )]
    Migration { from: u64, reason: String },
    #[error("no state dir at {}: nothing has run here yet", .0.display())]
    Missing(PathBuf),
    #[error(
        "{} cannot be used: {reason}. It was left as it is. Put back a copy of it if you have one (`gaffer doctor` checks a state dir); to start afresh instead, move it away: mv {} {}.damaged",
        path.display(), path.display(), path.display()
    )]
    Damaged { path: PathBuf, reason: String },
    #[error(
        "{dir}/state.redb is missing, but {dir}/logs holds the logs of earlier runs: the store was moved or deleted. Put it back if you can (`gaffer doctor` checks it); to start afresh instead, move the old logs away first: mv {dir}/logs {dir}/logs.old",
        dir = dir.display()
    )]
    Gone { dir: PathBuf },
    #[error(transparent)]
    StateDir(StateDirError),
    /// A read-only open found a file a crash left, which only a writer may repair.
    #[error("state.redb needs a repair")]
    NeedsRepair,
    #[error("the store has stopped")]
    Closed,
    /// A shared store refused a batch: another node recorded this fire time of `job`'s schedule
    /// (or a later one) first (`model::schedule::fire_accepted`). Nothing of the batch was written.
    #[error("the schedule of job `{job}` was fired by another node")]
    FireTaken { job: String },
    /// A shared store refused a batch that would start a run of `job` past its overlap policy:
    /// enough runs of it are running on other nodes (`Mutation::ActiveRunsBelow`). Nothing of
    /// the batch was written.
    #[error("job `{job}` has as many active runs as its overlap policy allows (on other nodes)")]
    RunLimit { job: String },
    /// A cluster node committed for a job run another node adopted (`store::pg::fence`):
    /// nothing of the batch was written; the job run is that node's to decide now.
    #[error("job run j{job_run}: another node owns it now; this node's commit for it was not written")]
    Fenced { job_run: u64 },
}

/// ENOSPC anywhere in the error's chain (redb wraps the `io::Error`; its message is the fallback).
fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull) {
            return true;
        }
        cause = err.source();
    }
    e.to_string().contains(&format!("(os error {})", libc::ENOSPC))
}

impl StoreError {
    fn io(path: &Path, e: std::io::Error) -> StoreError {
        StoreError::Io { path: path.to_path_buf(), reason: e.to_string() }
    }

    /// An error of a `StateDir` operation, which names its path already.
    fn file(e: std::io::Error) -> StoreError {
        StoreError::File(e.to_string())
    }

    fn damaged(dir: &StateDir, reason: &str) -> StoreError {
        StoreError::Damaged { path: dir.join(STORE_FILE), reason: reason.to_string() }
    }
}

impl From<StateDirError> for StoreError {
    fn from(e: StateDirError) -> StoreError {
        match e {
            StateDirError::Missing(path) => StoreError::Missing(path),
            other => StoreError::StateDir(other),
        }
    }
}

fn db_err(e: impl std::error::Error + 'static) -> StoreError {
    if is_disk_full(&e) {
        return StoreError::DiskFull(e.to_string());
    }
    StoreError::Db(e.to_string())
}

/// A mutation, applied whole: a put replaces the record.
#[derive(Debug, Clone)]
pub enum Mutation {
    Definition(u64, DefinitionRecord),
    JobRun(JobRunRecord),
    TaskRun(TaskRunRecord),
    Attempt(AttemptRecord),
    /// A schedule's state after handling a fire time. A store shared by several nodes takes it
    /// only while no node recorded that fire time or a later one (`schedule::fire_accepted`),
    /// else it refuses the whole batch with [`StoreError::FireTaken`]; redb has one writer.
    Schedule(String, ScheduleState),
    QueuePaused(String, bool),
    IdempotencyKey(String, u64),
    Cached(String, CacheEntry),
    Uncached(String),
    /// The whole set for one job run, replaced.
    RaisedBudgets(u64, RaisedBudgets),
    /// A queued task run's next attempt, rendered by its owner (`engine::cluster::QueuedSpec`
    /// codec bytes; `None`: none), for a cluster node that claims it. Comes after the task
    /// run's own write in its batch. Only a cluster's store keeps it; redb has no use for it.
    Spec(u64, Option<Vec<u8>>),
    /// Letters to job run `.0`'s owner (`store::pg::mail`, by id) that this batch applied: deleted
    /// with it, so that a letter whose effect was not committed is read again by an adopter.
    /// Fenced with the job run. Only a cluster's store has mail; redb has no use for it.
    MailRead(u64, Vec<i64>),
    /// Not a record but a condition of its batch, which starts a run of job `0`: a store shared
    /// by several nodes takes the batch only while fewer than `1` runs of the job are running
    /// on any node, the batch's own new ones not counted (`model::schedule::start_limit`),
    /// counted in the transaction that creates the run under the job's lock; else it refuses
    /// the whole batch with [`StoreError::RunLimit`]. redb has one writer, whose Supervisor
    /// counts every run itself.
    ActiveRunsBelow(String, usize),
}

/// The store's file in the state dir.
pub const STORE_FILE: &str = "state.redb";
/// A new store is made under this name and renamed to [`STORE_FILE`] once initialized, so a
/// `state.redb` is never a half-made file.
const NEW_STORE_FILE: &str = "state.redb.new";

/// Opens (creating if needed) the state dir as its one writer: checks the dir (see
/// `state_dir`), takes the instance lock, opens the store — creating it only when there is no
/// `state.redb` at all, verifying every page of an existing one — checks the schema version,
/// and starts the group-commit thread.
pub fn open_writer(state_dir: &Path) -> Result<(RedbStore, StoreCloser, InstanceLock), StoreError> {
    let dir = StateDir::create_checked(state_dir)?;
    let lock = InstanceLock::acquire(&dir)?;
    let db = if dir.exists(STORE_FILE).map_err(StoreError::file)? {
        refuse_newer_schema(&dir)?;
        open_existing(&dir)?
    } else if !dir.list("logs").map_err(StoreError::file)?.is_empty() {
        // Starting afresh would hand out the ids of those runs again, over their logs.
        return Err(StoreError::Gone { dir: state_dir.to_path_buf() });
    } else {
        create_new(&dir)?
    };
    let ids = prepare(&db)?;
    let (handle, closer) = RedbStore::start(db, ids)?;
    Ok((handle, closer, lock))
}

/// The engine's store at `location`, opened as its one writer (`run`, `serve`).
pub struct OpenedStore {
    pub store: StoreHandle,
    /// The PostgreSQL backend itself, for what a cluster node needs beyond [`Store`] (its queue
    /// primitives); `None` on redb.
    pub postgres: Option<std::sync::Arc<pg::PgBackend>>,
    closer: Option<StoreCloser>,
    _lock: InstanceLock,
}

impl OpenedStore {
    /// Lets go of the store and waits (up to `timeout`) for its last commits to be durable. The
    /// handle held here is dropped first: redb's writer ends once the last handle is gone, and
    /// the closer would otherwise wait the whole `timeout` for this one.
    pub fn close(self, timeout: std::time::Duration) {
        let OpenedStore { store, postgres, closer, _lock } = self;
        drop((store, postgres));
        if let Some(closer) = closer {
            closer.close(timeout);
        }
    }
}

/// Opens the store at `location` as the engine's: the state dir's redb ([`open_writer`]), or a
/// PostgreSQL database — migrated to this gaffer's schema, a newer one refused — while this
/// node's state dir (its socket, logs, inbox) is locked as its one instance all the same.
pub fn open_store(
    location: &StoreLocation,
    state_dir: &Path,
    queue_facts: pg::QueueFacts,
) -> Result<OpenedStore, StoreError> {
    match location {
        StoreLocation::StateDir(dir) => {
            let (store, closer, lock) = open_writer(dir)?;
            Ok(OpenedStore { store: store.into(), postgres: None, closer: Some(closer), _lock: lock })
        }
        StoreLocation::Postgres(url) => {
            let dir = StateDir::create_checked(state_dir)?;
            let lock = InstanceLock::acquire(&dir)?;
            let backend = std::sync::Arc::new(pg::PgBackend::open(
                url,
                pg::PgOptions { queue_facts, ..pg::PgOptions::default() },
            )?);
            let store = StoreHandle::new(backend.clone());
            Ok(OpenedStore { store, postgres: Some(backend), closer: None, _lock: lock })
        }
    }
}

/// Opens the state dir for reading only; works while an instance writes.
pub fn open_reader(state_dir: &Path) -> Result<Reader, StoreError> {
    let dir = StateDir::open_checked(state_dir)?;
    if !dir.exists(STORE_FILE).map_err(StoreError::file)? {
        return Err(StoreError::Missing(state_dir.to_path_buf()));
    }
    let db = match open_read_only(&dir) {
        Err(StoreError::NeedsRepair) if lock::holder_in(&dir).is_none() => {
            repair(&dir)?;
            open_read_only(&dir)?
        }
        Err(StoreError::NeedsRepair) => {
            return Err(StoreError::Db("the file needs a repair the running instance makes: try again".into()));
        }
        other => other?,
    };
    let reader = Reader::new(&db)?;
    reader.check_schema()?;
    Ok(reader)
}

/// redb's page cache is per open database, and its default is 1 GiB: every page a commit wrote
/// stayed cached until that much was, so a long-running `serve` grew by the size of everything
/// it stored (~1.7 KB per task), and each API read of a large store added a cache of its own.
/// The kernel's page cache holds the file anyway; redb's only saves the copy of hot pages.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

fn builder() -> redb::Builder {
    let mut builder = Database::builder();
    builder.set_concurrency_mode(ConcurrencyMode::SingleWriter).set_cache_size(CACHE_BYTES);
    builder
}

/// `state.redb`, which must exist: opened without following a link, refused (and left as it
/// is) when empty or when any page of it fails its checksum.
fn open_store_file(dir: &StateDir, access: Access) -> Result<std::fs::File, StoreError> {
    let path = dir.join(STORE_FILE);
    let file = dir.open_file(STORE_FILE, access).map_err(StoreError::file)?;
    let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
    if len == 0 {
        return Err(StoreError::damaged(dir, "it is empty (0 bytes), so it holds no gaffer store"));
    }
    Ok(file)
}

fn open_existing(dir: &StateDir) -> Result<Database, StoreError> {
    let file = open_store_file(dir, Access::ReadWrite)?;
    let backend = redb::backends::FileBackend::new(file).map_err(db_err)?;
    // Every page is verified against its checksum: a damaged file is refused, never written to.
    builder().set_check_integrity_on_open(true).create_with_backend(backend).map_err(|e| open_error(dir, e))
}

fn open_read_only(dir: &StateDir) -> Result<redb::ReadOnlyDatabase, StoreError> {
    let file = open_store_file(dir, Access::Read)?;
    let backend = redb::backends::FileBackend::new(file).map_err(db_err)?;
    builder().open_read_only_with_backend(backend).map_err(|e| match e {
        redb::DatabaseError::RepairAborted => StoreError::NeedsRepair,
        other => open_error(dir, other),
    })
}

/// A store of a newer schema is refused before the writable open, which would write redb's
/// header: the file is left byte for byte as it was. Only a schema read is acted on here: a file
/// that needs a repair, or cannot be read at all, goes on to the writable open, which repairs
/// it (then `prepare` checks its schema) or refuses it as damaged with the reason.
fn refuse_newer_schema(dir: &StateDir) -> Result<(), StoreError> {
    let schema = open_read_only(dir).and_then(|db| Reader::new(&db)?.schema());
    match schema {
        Ok(Some(found)) if found > SCHEMA_VERSION => Err(StoreError::Schema { found }),
        _ => Ok(()),
    }
}

/// A new store: made as `state.redb.new`, initialized and made durable, then renamed into place.
fn create_new(dir: &StateDir) -> Result<Database, StoreError> {
    let file = dir.open_file(NEW_STORE_FILE, Access::Replace).map_err(StoreError::file)?;
    let backend = redb::backends::FileBackend::new(file).map_err(db_err)?;
    let db = builder().create_with_backend(backend).map_err(db_err)?;
    prepare(&db)?;
    dir.rename(NEW_STORE_FILE, STORE_FILE).map_err(StoreError::file)?;
    dir.sync().map_err(|e| StoreError::io(dir.path(), e))?;
    Ok(db)
}

fn open_error(dir: &StateDir, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            StoreError::InUse { state_dir: dir.path().to_path_buf(), pid: None }
        }
        e if is_disk_full(&e) => StoreError::DiskFull(e.to_string()),
        other => StoreError::damaged(dir, &other.to_string()),
    }
}

/// What `gaffer doctor` learned about the store.
#[derive(Debug)]
pub struct StoreCheck {
    /// Every page was read and matched its checksum (not possible while an instance runs).
    pub pages_verified: bool,
    /// Records per table, each one decoded.
    pub records: Vec<(&'static str, u64)>,
}

/// Checks the store without changing what it holds: every page against its checksum (unless an
/// instance runs: then a snapshot is read), the schema version, and every record decodes.
pub fn check(state_dir: &Path) -> Result<StoreCheck, StoreError> {
    let dir = StateDir::open(state_dir)?;
    if !dir.exists(STORE_FILE).map_err(StoreError::file)? {
        return Err(StoreError::Missing(state_dir.to_path_buf()));
    }
    if lock::holder_in(&dir).is_some() {
        let db = open_read_only(&dir)?;
        let reader = Reader::new(&db)?;
        reader.check_schema()?;
        return Ok(StoreCheck { pages_verified: false, records: reader.decode_all()? });
    }
    let _lock = InstanceLock::acquire(&dir)?;
    // The check commits what it verified; into memory, so the file stays as it is.
    let file = open_store_file(&dir, Access::Read)?;
    let overlay = overlay::Overlay::new(file).map_err(|e| StoreError::io(&dir.join(STORE_FILE), e))?;
    let db = Database::builder()
        .set_check_integrity_on_open(true)
        .create_with_backend(overlay)
        .map_err(|e| open_error(&dir, e))?;
    let reader = Reader::new(&db)?;
    reader.check_schema()?;
    Ok(StoreCheck { pages_verified: true, records: reader.decode_all()? })
}

/// A file left by a crash (kill -9) needs a repair that only a writer may make; with no
/// instance running, a reader makes it, holding the instance lock meanwhile.
fn repair(dir: &StateDir) -> Result<(), StoreError> {
    let _lock = InstanceLock::acquire(dir)?;
    drop(open_existing(dir)?);
    Ok(())
}

/// Creates the tables of a new file, checks the schema of an old one and migrates it, and loads
/// the sequences — all in one transaction, so a migration is whole or not at all.
fn prepare(db: &Database) -> Result<Ids, StoreError> {
    let txn = db.begin_write().map_err(db_err)?;
    let ids;
    {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let version = meta.get("schema_version").map_err(db_err)?.map(|v| v.value());
        match version {
            None | Some(SCHEMA_VERSION) => {}
            Some(found) if (OLDEST_SCHEMA..SCHEMA_VERSION).contains(&found) => {
                tracing::info!("state.redb: migrating from schema {found} to {SCHEMA_VERSION}");
                // On error the transaction is dropped uncommitted: the file stays as it was.
                migrate_task_runs(&txn).map_err(|e| StoreError::Migration { from: found, reason: e.to_string() })?;
            }
            Some(found) => return Err(StoreError::Schema { found }),
        }
        if version != Some(SCHEMA_VERSION) {
            meta.insert("schema_version", SCHEMA_VERSION).map_err(db_err)?;
        }
        let get = |key: &str| -> Result<u64, StoreError> {
            Ok(meta.get(key).map_err(db_err)?.map(|v| v.value()).unwrap_or(0))
        };
        ids = Ids::new(get(SEQ_JOB_RUN)?, get(SEQ_TASK_RUN)?, get(SEQ_ENQUEUE)?);
        txn.open_table(DEFINITIONS).map_err(db_err)?;
        txn.open_table(JOB_RUNS).map_err(db_err)?;
        txn.open_table(TASK_RUNS).map_err(db_err)?;
        txn.open_table(JOB_TASKS).map_err(db_err)?;
        txn.open_table(TASK_INSTANCES).map_err(db_err)?;
        txn.open_table(ATTEMPTS).map_err(db_err)?;
        txn.open_table(SCHEDULES).map_err(db_err)?;
        txn.open_table(PAUSED).map_err(db_err)?;
        txn.open_table(IDEMPOTENCY).map_err(db_err)?;
        txn.open_table(CACHE).map_err(db_err)?;
        txn.open_table(RAISED_BUDGETS).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)?;
    Ok(ids)
}

/// Task runs rewritten per migration step, so memory stays bounded however many there are.
const MIGRATION_CHUNK: usize = 1024;

/// Schema 1 → 2: every task run rewritten in the current layout (decoding reads layout 1) and
/// entered in `task_instances`. Walks the table in chunks of ids, each read before it is written.
fn migrate_task_runs(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut task_runs = txn.open_table(TASK_RUNS).map_err(db_err)?;
    let mut instances = txn.open_table(TASK_INSTANCES).map_err(db_err)?;
    let mut next = 0u64;
    loop {
        let mut chunk: Vec<TaskRunRecord> = Vec::with_capacity(MIGRATION_CHUNK);
        for entry in task_runs.range(next..).map_err(db_err)?.take(MIGRATION_CHUNK) {
            let (id, v) = entry.map_err(db_err)?;
            let record =
                codec::decode(v.value()).map_err(|e| StoreError::Codec(format!("task run {}: {e}", id.value())))?;
            chunk.push(record);
        }
        let Some(last) = chunk.last() else { return Ok(()) };
        next = last.id.saturating_add(1);
        for r in &chunk {
            task_runs.insert(r.id, codec::encode(r)?.as_slice()).map_err(db_err)?;
            instances.insert(instance_key(r), r.id).map_err(db_err)?;
        }
        if chunk.len() < MIGRATION_CHUNK || last.id == u64::MAX {
            return Ok(());
        }
    }
}

fn instance_key(r: &TaskRunRecord) -> InstanceKey<'_> {
    (r.job_run, r.task.as_str(), r.iteration, r.item_index, r.kind.index_key())
}

/// Applies one batch inside one write transaction; the sequences follow the ids written.
/// Writes `batches` in order in `txn`, each table opened once for all of them (opening one
/// is a lookup in redb's table tree and a type check: ten per batch were a third of the
/// writer's time with a batch per commit of a no-op task).
fn apply<'a>(
    txn: &redb::WriteTransaction,
    batches: impl IntoIterator<Item = &'a [Mutation]>,
) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).map_err(db_err)?;
    let mut definitions = txn.open_table(DEFINITIONS).map_err(db_err)?;
    let mut job_runs = txn.open_table(JOB_RUNS).map_err(db_err)?;
    let mut task_runs = txn.open_table(TASK_RUNS).map_err(db_err)?;
    let mut job_tasks = txn.open_table(JOB_TASKS).map_err(db_err)?;
    let mut instances = txn.open_table(TASK_INSTANCES).map_err(db_err)?;
    let mut attempts = txn.open_table(ATTEMPTS).map_err(db_err)?;
    let mut schedules = txn.open_table(SCHEDULES).map_err(db_err)?;
    let mut paused = txn.open_table(PAUSED).map_err(db_err)?;
    let mut keys = txn.open_table(IDEMPOTENCY).map_err(db_err)?;
    let (mut max_job, mut max_task, mut max_seq) = (0, 0, 0);
    for m in batches.into_iter().flatten() {
        match m {
            Mutation::Definition(hash, d) => {
                definitions.insert(*hash, codec::encode(d)?.as_slice()).map_err(db_err)?;
            }
            Mutation::JobRun(r) => {
                max_job = max_job.max(r.id);
                job_runs.insert(r.id, codec::encode(r)?.as_slice()).map_err(db_err)?;
            }
            Mutation::TaskRun(r) => {
                max_task = max_task.max(r.id);
                max_seq = max_seq.max(r.enqueue_seq);
                task_runs.insert(r.id, codec::encode(r)?.as_slice()).map_err(db_err)?;
                job_tasks.insert((r.job_run, r.id), ()).map_err(db_err)?;
                // A task run's instance never changes: written once, only looked up after (a
                // lookup dirties no page; an insert of the same entry would copy its path).
                if instances.get(instance_key(r)).map_err(db_err)?.is_none() {
                    instances.insert(instance_key(r), r.id).map_err(db_err)?;
                }
            }
            Mutation::Attempt(a) => {
                attempts.insert((a.task_run, a.n), codec::encode(a)?.as_slice()).map_err(db_err)?;
            }
            Mutation::Schedule(job, state) => {
                schedules.insert(job.as_str(), codec::encode(state)?.as_slice()).map_err(db_err)?;
            }
            Mutation::QueuePaused(queue, true) => {
                paused.insert(queue.as_str(), ()).map_err(db_err)?;
            }
            Mutation::QueuePaused(queue, false) => {
                paused.remove(queue.as_str()).map_err(db_err)?;
            }
            Mutation::IdempotencyKey(key, job_run) => {
                keys.insert(key.as_str(), *job_run).map_err(db_err)?;
            }
            // Rare: opened only when written, not on every commit.
            Mutation::Uncached(key) => {
                txn.open_table(CACHE).map_err(db_err)?.remove(key.as_str()).map_err(db_err)?;
            }
            Mutation::Cached(key, entry) => {
                txn.open_table(CACHE)
                    .map_err(db_err)?
                    .insert(key.as_str(), codec::encode(entry)?.as_slice())
                    .map_err(db_err)?;
            }
            Mutation::RaisedBudgets(job_run, raised) => {
                txn.open_table(RAISED_BUDGETS)
                    .map_err(db_err)?
                    .insert(*job_run, codec::encode(raised)?.as_slice())
                    .map_err(db_err)?;
            }
            Mutation::Spec(..) | Mutation::MailRead(..) | Mutation::ActiveRunsBelow(..) => {}
        }
    }
    for (key, value) in [(SEQ_JOB_RUN, max_job), (SEQ_TASK_RUN, max_task), (SEQ_ENQUEUE, max_seq)] {
        let stored = meta.get(key).map_err(db_err)?.map(|v| v.value()).unwrap_or(0);
        if value > stored {
            meta.insert(key, value).map_err(db_err)?;
        }
    }
    Ok(())
}

/// Which way a table is walked (its keys are ids from durable sequences: oldest first).
#[derive(Clone, Copy)]
enum Order {
    OldestFirst,
    NewestFirst,
}

/// A consistent snapshot of the store.
pub struct Reader {
    txn: ReadTransaction,
}

impl Reader {
    fn new(db: &impl ReadableDatabase) -> Result<Reader, StoreError> {
        Ok(Reader { txn: db.begin_read().map_err(db_err)? })
    }

    /// The schema version the file records (none: not a gaffer store, or a new one).
    pub fn schema(&self) -> Result<Option<u64>, StoreError> {
        let meta = self.txn.open_table(META).map_err(db_err)?;
        Ok(meta.get("schema_version").map_err(db_err)?.map(|v| v.value()))
    }

    /// Readers read every schema from `OLDEST_SCHEMA` on as it is (the writer migrates).
    fn check_schema(&self) -> Result<(), StoreError> {
        match self.schema()? {
            Some(found) if (OLDEST_SCHEMA..=SCHEMA_VERSION).contains(&found) => Ok(()),
            Some(found) => Err(StoreError::Schema { found }),
            None => Err(StoreError::Db("no schema version: not a gaffer state file".into())),
        }
    }

    pub fn job_runs(&self) -> Result<Vec<JobRunRecord>, StoreError> {
        self.all(JOB_RUNS)
    }

    pub fn task_runs(&self) -> Result<Vec<TaskRunRecord>, StoreError> {
        self.all(TASK_RUNS)
    }

    /// Every job run in id order, one at a time (no list of them all is built, however many
    /// there are); `f` returns false to stop.
    pub fn each_job_run(&self, f: impl FnMut(JobRunRecord) -> bool) -> Result<(), StoreError> {
        self.each(JOB_RUNS, f)
    }

    /// Every job run, newest first, one at a time; `f` returns false to stop.
    pub fn each_job_run_newest_first(&self, f: impl FnMut(JobRunRecord) -> bool) -> Result<(), StoreError> {
        self.each_in(JOB_RUNS, Order::NewestFirst, f)
    }

    /// Every task run in id order, one at a time; `f` returns false to stop.
    pub fn each_task_run(&self, f: impl FnMut(TaskRunRecord) -> bool) -> Result<(), StoreError> {
        self.each(TASK_RUNS, f)
    }

    pub fn job_run(&self, id: u64) -> Result<Option<JobRunRecord>, StoreError> {
        self.one(JOB_RUNS, id)
    }

    pub fn task_run(&self, id: u64) -> Result<Option<TaskRunRecord>, StoreError> {
        self.one(TASK_RUNS, id)
    }

    pub fn definition(&self, hash: u64) -> Result<Option<DefinitionRecord>, StoreError> {
        self.one(DEFINITIONS, hash)
    }

    /// The task runs of one job run, in id order.
    pub fn task_runs_of(&self, job_run: u64) -> Result<Vec<TaskRunRecord>, StoreError> {
        let index = self.txn.open_table(JOB_TASKS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in index.range((job_run, 0)..=(job_run, u64::MAX)).map_err(db_err)? {
            let (key, _) = entry.map_err(db_err)?;
            if let Some(r) = self.task_run(key.value().1)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The task runs of one task in one job run (its instances: iterations, items and
    /// compensations), ordered by iteration, then item, then kind. A schema 1 file (read before
    /// any writer migrated it) has no index: its task runs are filtered instead.
    pub fn instances_of(&self, job_run: u64, task: &str) -> Result<Vec<TaskRunRecord>, StoreError> {
        let Some(index) = self.optional_table(TASK_INSTANCES)? else {
            return Ok(self.task_runs_of(job_run)?.into_iter().filter(|r| r.task == task).collect());
        };
        let mut out = Vec::new();
        let (first, last) = ((job_run, task, 0, None, 0), (job_run, task, u32::MAX, Some(u32::MAX), u8::MAX));
        for entry in index.range(first..=last).map_err(db_err)? {
            if let Some(r) = self.task_run(entry.map_err(db_err)?.1.value())? {
                out.push(r);
            }
        }
        Ok(out)
    }

    pub fn attempts_of(&self, task_run: u64) -> Result<Vec<AttemptRecord>, StoreError> {
        let table = self.txn.open_table(ATTEMPTS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.range((task_run, 0)..=(task_run, u32::MAX)).map_err(db_err)? {
            let (_, v) = entry.map_err(db_err)?;
            out.push(codec::decode(v.value())?);
        }
        Ok(out)
    }

    pub fn attempts(&self) -> Result<Vec<AttemptRecord>, StoreError> {
        self.all(ATTEMPTS)
    }

    /// Every attempt, one at a time; `f` returns false to stop.
    pub fn each_attempt(&self, f: impl FnMut(AttemptRecord) -> bool) -> Result<(), StoreError> {
        self.each(ATTEMPTS, f)
    }

    /// Persisted schedule states by job name (empty for a file that never ran `serve`).
    pub fn schedules(&self) -> Result<std::collections::BTreeMap<String, ScheduleState>, StoreError> {
        let Some(table) = self.optional_table(SCHEDULES)? else { return Ok(Default::default()) };
        let mut out = std::collections::BTreeMap::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.insert(k.value().to_string(), codec::decode(v.value())?);
        }
        Ok(out)
    }

    /// The job run a submit with this idempotency key created, if one did.
    pub fn idempotency_key(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let Some(table) = self.optional_table(IDEMPOTENCY)? else { return Ok(None) };
        Ok(table.get(key).map_err(db_err)?.map(|v| v.value()))
    }

    /// The cached run stored under a scoped cache key, if any (its age is the caller's business).
    pub fn cache_entry(&self, key: &str) -> Result<Option<CacheEntry>, StoreError> {
        let Some(table) = self.optional_table(CACHE)? else { return Ok(None) };
        table.get(key).map_err(db_err)?.map(|v| codec::decode(v.value())).transpose()
    }

    /// The keys of cache entries whose time ran out before `now_ms`.
    pub fn expired_cache_keys(&self, now_ms: u64) -> Result<Vec<String>, StoreError> {
        let Some(table) = self.optional_table(CACHE)? else { return Ok(Vec::new()) };
        let mut keys = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (key, value) = row.map_err(db_err)?;
            let entry: CacheEntry = codec::decode(value.value())?;
            if entry.expires_at_ms < now_ms {
                keys.push(key.value().to_string());
            }
        }
        Ok(keys)
    }

    /// The budgets raised by retries in job run `job_run` (none: the file's hold).
    pub fn raised_budgets(&self, job_run: u64) -> Result<RaisedBudgets, StoreError> {
        let Some(table) = self.optional_table(RAISED_BUDGETS)? else { return Ok(RaisedBudgets::default()) };
        Ok(table.get(job_run).map_err(db_err)?.map(|v| codec::decode(v.value())).transpose()?.unwrap_or_default())
    }

    /// Queues paused by a person (`gaffer pause`), which stay paused across restarts.
    pub fn paused_queues(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let Some(table) = self.optional_table(PAUSED)? else { return Ok(Default::default()) };
        let mut out = std::collections::BTreeSet::new();
        for entry in table.iter().map_err(db_err)? {
            out.insert(entry.map_err(db_err)?.0.value().to_string());
        }
        Ok(out)
    }

    /// Decodes every record of every table; the count per table.
    pub fn decode_all(&self) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let mut counts = vec![
            ("definitions", self.decode_table::<u64, DefinitionRecord>(DEFINITIONS)?),
            ("job_runs", self.decode_table::<u64, JobRunRecord>(JOB_RUNS)?),
            ("task_runs", self.decode_table::<u64, TaskRunRecord>(TASK_RUNS)?),
            ("attempts", self.decode_table::<(u64, u32), AttemptRecord>(ATTEMPTS)?),
            ("schedules", self.decode_table::<&str, ScheduleState>(SCHEDULES)?),
            ("cache", self.decode_table::<&str, CacheEntry>(CACHE)?),
        ];
        let index = self.txn.open_table(JOB_TASKS).map_err(db_err)?;
        counts.push(("job_tasks", redb::ReadableTableMetadata::len(&index).map_err(db_err)?));
        if let Some(index) = self.optional_table(TASK_INSTANCES)? {
            counts.push(("task_instances", redb::ReadableTableMetadata::len(&index).map_err(db_err)?));
        }
        Ok(counts)
    }

    fn decode_table<K: redb::Key + 'static, T: codec::Record>(
        &self,
        def: TableDefinition<K, &[u8]>,
    ) -> Result<u64, StoreError> {
        let Some(table) = self.optional_table(def)? else { return Ok(0) };
        let mut n = 0;
        for entry in table.iter().map_err(db_err)? {
            let (_, v) = entry.map_err(db_err)?;
            codec::decode::<T>(v.value())?;
            n += 1;
        }
        Ok(n)
    }

    /// A table added after schema 1 (a file written by an older gaffer does not have it yet).
    fn optional_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
        match self.txn.open_table(def) {
            Ok(table) => Ok(Some(table)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(db_err(e)),
        }
    }

    fn all<K: redb::Key + 'static, T: codec::Record>(
        &self,
        def: TableDefinition<K, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.each(def, |record| {
            out.push(record);
            true
        })?;
        Ok(out)
    }

    fn each<K: redb::Key + 'static, T: codec::Record>(
        &self,
        def: TableDefinition<K, &[u8]>,
        f: impl FnMut(T) -> bool,
    ) -> Result<(), StoreError> {
        self.each_in(def, Order::OldestFirst, f)
    }

    fn each_in<K: redb::Key + 'static, T: codec::Record>(
        &self,
        def: TableDefinition<K, &[u8]>,
        order: Order,
        mut f: impl FnMut(T) -> bool,
    ) -> Result<(), StoreError> {
        let table = self.txn.open_table(def).map_err(db_err)?;
        let entries = table.iter().map_err(db_err)?;
        let entries: Box<dyn Iterator<Item = _>> = match order {
            Order::OldestFirst => Box::new(entries),
            Order::NewestFirst => Box::new(entries.rev()),
        };
        for entry in entries {
            let (_, v) = entry.map_err(db_err)?;
            if !f(codec::decode(v.value())?) {
                break;
            }
        }
        Ok(())
    }

    fn one<T: codec::Record>(&self, def: TableDefinition<u64, &[u8]>, id: u64) -> Result<Option<T>, StoreError> {
        let table = self.txn.open_table(def).map_err(db_err)?;
        match table.get(id).map_err(db_err)? {
            Some(v) => Ok(Some(codec::decode(v.value())?)),
            None => Ok(None),
        }
    }
}

/// The redb snapshot behind the seam: each method is `Reader`'s own.
impl Snapshot for Reader {
    fn job_runs(&self) -> Result<Vec<JobRunRecord>, StoreError> {
        Reader::job_runs(self)
    }

    fn task_runs(&self) -> Result<Vec<TaskRunRecord>, StoreError> {
        Reader::task_runs(self)
    }

    fn each_job_run(&self, f: &mut dyn FnMut(JobRunRecord) -> bool) -> Result<(), StoreError> {
        Reader::each_job_run(self, f)
    }

    fn each_job_run_newest_first(&self, f: &mut dyn FnMut(JobRunRecord) -> bool) -> Result<(), StoreError> {
        Reader::each_job_run_newest_first(self, f)
    }

    fn each_task_run(&self, f: &mut dyn FnMut(TaskRunRecord) -> bool) -> Result<(), StoreError> {
        Reader::each_task_run(self, f)
    }

    fn job_run(&self, id: u64) -> Result<Option<JobRunRecord>, StoreError> {
        Reader::job_run(self, id)
    }

    fn task_run(&self, id: u64) -> Result<Option<TaskRunRecord>, StoreError> {
        Reader::task_run(self, id)
    }

    fn definition(&self, hash: u64) -> Result<Option<DefinitionRecord>, StoreError> {
        Reader::definition(self, hash)
    }

    fn task_runs_of(&self, job_run: u64) -> Result<Vec<TaskRunRecord>, StoreError> {
        Reader::task_runs_of(self, job_run)
    }

    fn instances_of(&self, job_run: u64, task: &str) -> Result<Vec<TaskRunRecord>, StoreError> {
        Reader::instances_of(self, job_run, task)
    }

    fn attempts_of(&self, task_run: u64) -> Result<Vec<AttemptRecord>, StoreError> {
        Reader::attempts_of(self, task_run)
    }

    fn attempts(&self) -> Result<Vec<AttemptRecord>, StoreError> {
        Reader::attempts(self)
    }

    fn each_attempt(&self, f: &mut dyn FnMut(AttemptRecord) -> bool) -> Result<(), StoreError> {
        Reader::each_attempt(self, f)
    }

    fn schedules(&self) -> Result<std::collections::BTreeMap<String, ScheduleState>, StoreError> {
        Reader::schedules(self)
    }

    fn idempotency_key(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Reader::idempotency_key(self, key)
    }

    fn cache_entry(&self, key: &str) -> Result<Option<CacheEntry>, StoreError> {
        Reader::cache_entry(self, key)
    }

    fn expired_cache_keys(&self, now_ms: u64) -> Result<Vec<String>, StoreError> {
        Reader::expired_cache_keys(self, now_ms)
    }

    fn raised_budgets(&self, job_run: u64) -> Result<RaisedBudgets, StoreError> {
        Reader::raised_budgets(self, job_run)
    }

    fn paused_queues(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        Reader::paused_queues(self)
    }
}

#[cfg(test)]
mod tests;
