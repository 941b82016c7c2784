//! The store seam is real: an engine runs a job run on a second `Store` implementation, kept in
//! memory and written here only, and everything it learns comes through `Store`/`Snapshot`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{EngineConfig, SubmitRequest, SystemClock};
use crate::model::{JobState, TaskState};
use crate::store::{
    AttemptRecord, CacheEntry, Committing, DefinitionRecord, JobRunRecord, Mutation, RaisedBudgets, ScheduleState,
    Snapshot, Store, StoreError, TaskRunRecord,
};

#[derive(Clone, Default)]
struct Tables {
    definitions: BTreeMap<u64, DefinitionRecord>,
    job_runs: BTreeMap<u64, JobRunRecord>,
    task_runs: BTreeMap<u64, TaskRunRecord>,
    attempts: BTreeMap<(u64, u32), AttemptRecord>,
    schedules: BTreeMap<String, ScheduleState>,
    paused: BTreeSet<String>,
    keys: BTreeMap<String, u64>,
    cache: BTreeMap<String, CacheEntry>,
    raised: BTreeMap<u64, RaisedBudgets>,
}

impl Tables {
    fn apply(&mut self, m: Mutation) {
        match m {
            Mutation::Definition(hash, d) => drop(self.definitions.insert(hash, d)),
            Mutation::JobRun(r) => drop(self.job_runs.insert(r.id, r)),
            Mutation::TaskRun(r) => drop(self.task_runs.insert(r.id, r)),
            Mutation::Attempt(a) => drop(self.attempts.insert((a.task_run, a.n), a)),
            Mutation::Schedule(job, s) => drop(self.schedules.insert(job, s)),
            Mutation::QueuePaused(q, true) => drop(self.paused.insert(q)),
            Mutation::QueuePaused(q, false) => drop(self.paused.remove(&q)),
            Mutation::IdempotencyKey(key, id) => drop(self.keys.insert(key, id)),
            Mutation::Cached(key, entry) => drop(self.cache.insert(key, entry)),
            Mutation::Uncached(key) => drop(self.cache.remove(&key)),
            Mutation::RaisedBudgets(id, raised) => drop(self.raised.insert(id, raised)),
            Mutation::Spec(..) | Mutation::MailRead(..) => {}
        }
    }
}

/// Ids start far from 1, so a run numbered from 1 would show an id made outside the store.
const FIRST_ID: u64 = 41;

struct MemoryStore {
    tables: Mutex<Tables>,
    ids: [AtomicU64; 3],
    commits: AtomicU64,
    /// The engine's thread, once known: a snapshot taken on it is counted in `on_engine_thread`.
    engine_thread: Mutex<Option<std::thread::ThreadId>>,
    on_engine_thread: AtomicU64,
    snapshots: AtomicU64,
}

impl MemoryStore {
    fn new() -> MemoryStore {
        MemoryStore {
            tables: Mutex::default(),
            ids: [AtomicU64::new(FIRST_ID), AtomicU64::new(FIRST_ID), AtomicU64::new(FIRST_ID)],
            commits: AtomicU64::new(0),
            engine_thread: Mutex::default(),
            on_engine_thread: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
        }
    }

    fn next(&self, sequence: usize) -> u64 {
        self.ids[sequence].fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl Store for MemoryStore {
    fn commit(&self, batch: Vec<Mutation>) -> Committing {
        let result = self.commit_blocking(batch);
        Box::pin(std::future::ready(result))
    }

    fn commit_blocking(&self, batch: Vec<Mutation>) -> Result<(), StoreError> {
        let mut tables = self.tables.lock().map_err(|_| StoreError::Closed)?;
        batch.into_iter().for_each(|m| tables.apply(m));
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot>, StoreError> {
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        if *self.engine_thread.lock().map_err(|_| StoreError::Closed)? == Some(std::thread::current().id()) {
            self.on_engine_thread.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Box::new(self.tables.lock().map_err(|_| StoreError::Closed)?.clone()))
    }

    fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn next_job_run(&self) -> u64 {
        self.next(0)
    }

    fn next_task_run(&self) -> u64 {
        self.next(1)
    }

    fn next_enqueue_seq(&self) -> u64 {
        self.next(2)
    }
}

fn each<T: Clone>(rows: impl DoubleEndedIterator<Item = T>, f: &mut dyn FnMut(T) -> bool) -> Result<(), StoreError> {
    for row in rows {
        if !f(row) {
            break;
        }
    }
    Ok(())
}

impl Snapshot for Tables {
    fn job_runs(&self) -> Result<Vec<JobRunRecord>, StoreError> {
        Ok(self.job_runs.values().cloned().collect())
    }

    fn task_runs(&self) -> Result<Vec<TaskRunRecord>, StoreError> {
        Ok(self.task_runs.values().cloned().collect())
    }

    fn each_job_run(&self, f: &mut dyn FnMut(JobRunRecord) -> bool) -> Result<(), StoreError> {
        each(self.job_runs.values().cloned(), f)
    }

    fn each_job_run_newest_first(&self, f: &mut dyn FnMut(JobRunRecord) -> bool) -> Result<(), StoreError> {
        each(self.job_runs.values().rev().cloned(), f)
    }

    fn each_task_run(&self, f: &mut dyn FnMut(TaskRunRecord) -> bool) -> Result<(), StoreError> {
        each(self.task_runs.values().cloned(), f)
    }

    fn job_run(&self, id: u64) -> Result<Option<JobRunRecord>, StoreError> {
        Ok(self.job_runs.get(&id).cloned())
    }

    fn task_run(&self, id: u64) -> Result<Option<TaskRunRecord>, StoreError> {
        Ok(self.task_runs.get(&id).cloned())
    }

    fn definition(&self, hash: u64) -> Result<Option<DefinitionRecord>, StoreError> {
        Ok(self.definitions.get(&hash).cloned())
    }

    fn task_runs_of(&self, job_run: u64) -> Result<Vec<TaskRunRecord>, StoreError> {
        Ok(self.task_runs.values().filter(|t| t.job_run == job_run).cloned().collect())
    }

    fn instances_of(&self, job_run: u64, task: &str) -> Result<Vec<TaskRunRecord>, StoreError> {
        let mut runs: Vec<_> = self.task_runs_of(job_run)?.into_iter().filter(|t| t.task == task).collect();
        runs.sort_by_key(|t| (t.iteration, t.item_index, t.kind.index_key()));
        Ok(runs)
    }

    fn attempts_of(&self, task_run: u64) -> Result<Vec<AttemptRecord>, StoreError> {
        Ok(self.attempts.range((task_run, 0)..=(task_run, u32::MAX)).map(|(_, a)| a.clone()).collect())
    }

    fn attempts(&self) -> Result<Vec<AttemptRecord>, StoreError> {
        Ok(self.attempts.values().cloned().collect())
    }

    fn each_attempt(&self, f: &mut dyn FnMut(AttemptRecord) -> bool) -> Result<(), StoreError> {
        each(self.attempts.values().cloned(), f)
    }

    fn schedules(&self) -> Result<BTreeMap<String, ScheduleState>, StoreError> {
        Ok(self.schedules.clone())
    }

    fn idempotency_key(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.keys.get(key).copied())
    }

    fn cache_entry(&self, key: &str) -> Result<Option<CacheEntry>, StoreError> {
        Ok(self.cache.get(key).cloned())
    }

    fn expired_cache_keys(&self, now_ms: u64) -> Result<Vec<String>, StoreError> {
        Ok(self.cache.iter().filter(|(_, e)| e.expires_at_ms < now_ms).map(|(k, _)| k.clone()).collect())
    }

    fn raised_budgets(&self, job_run: u64) -> Result<RaisedBudgets, StoreError> {
        Ok(self.raised.get(&job_run).cloned().unwrap_or_default())
    }

    fn paused_queues(&self) -> Result<BTreeSet<String>, StoreError> {
        Ok(self.paused.clone())
    }
}

fn config(dir: &std::path::Path, text: &str, store: &Arc<MemoryStore>) -> EngineConfig {
    config_on(dir, text, crate::store::StoreHandle::new(store.clone()))
}

/// An engine's config for `text` (in `dir`, one worker) on `store`.
pub(crate) fn config_on(dir: &std::path::Path, text: &str, store: crate::store::StoreHandle) -> EngineConfig {
    let workflow = crate::config::parse(&dir.join("w.toml"), text).expect("valid workflow");
    EngineConfig {
        pricing: crate::model::cost::Pricing::new(crate::config::pricing::builtin(), &workflow.pricing),
        workflow: Arc::new(workflow),
        source: text.into(),
        state_dir: dir.to_path_buf(),
        store,
        location: crate::store::StoreLocation::state_dir(dir),
        executor: Arc::new(crate::executor::LocalExecutor),
        clock: Arc::new(SystemClock),
        workers: 1,
        labels: Vec::new(),
        cluster: None,
    }
}

/// Starts an engine, submits one run of `job`, waits for its end and stops: how it ended, and
/// its task runs as the engine showed them.
pub(crate) fn run_to_end(config: EngineConfig, job: &str) -> (Vec<(u64, JobState)>, Vec<super::TaskRunView>) {
    let system = actix::System::new();
    system.block_on(async move {
        let handle = super::start(config);
        handle.resume_all().await.expect("resume");
        let submitted = handle.submit_request(SubmitRequest { job: job.into(), ..Default::default() }).await;
        let id = submitted.expect("submit").job_run;
        let ended = handle.wait(vec![id]).await.expect("wait");
        let views = handle.task_runs_of(id).await.expect("task runs");
        handle.shutdown().await;
        (ended, views)
    })
}

/// A one-task run on the in-memory store, with real processes: it succeeds, its records are
/// in that store with the ids it handed out, and the engine's views read them from there.
#[test]
fn an_engine_runs_a_job_run_on_another_store() {
    let dir = crate::state_dir::private_tempdir();
    let text = "[jobs.j.tasks.hello]\nrun = \"echo hello\"\n";
    let store = Arc::new(MemoryStore::new());
    let (ended, views) = run_to_end(config(dir.path(), text, &store), "j");
    assert_eq!(ended, vec![(FIRST_ID + 1, JobState::Succeeded)], "{views:?}");
    assert_eq!(views.len(), 1, "{views:?}");
    let snapshot = store.snapshot().expect("snapshot");
    let job_run = snapshot.job_run(FIRST_ID + 1).expect("read").expect("the job run is in the memory store");
    assert_eq!(job_run.state, JobState::Succeeded);
    let task_run = snapshot.task_runs_of(job_run.id).expect("read").pop().expect("its task run");
    assert_eq!((task_run.id, task_run.state, task_run.attempt), (FIRST_ID + 1, TaskState::Succeeded, 1));
    let attempts = snapshot.attempts_of(task_run.id).expect("read");
    assert_eq!(attempts.iter().map(|a| (a.n, a.exit_code)).collect::<Vec<_>>(), [(1, Some(0))]);
    assert!(task_run.enqueue_seq > FIRST_ID, "the enqueue sequence comes from the store: {}", task_run.enqueue_seq);
    assert!(store.commit_count() >= 2, "the run was committed through the store");
}

/// The engine's actors share one thread: the Supervisor reads the store (resume, the inbox, an
/// idempotency key, a wait for an ended run, a command's target, `--only`'s plan, schedules)
/// on tokio's blocking pool, never on that thread.
#[test]
fn the_supervisor_reads_the_store_off_the_engine_thread() {
    let dir = crate::state_dir::private_tempdir();
    let text =
        "[jobs.j.tasks.hello]\nrun = \"true\"\n[jobs.c]\nschedule = \"0 0 1 1 *\"\n[jobs.c.tasks.t]\nrun = \"true\"\n";
    let store = Arc::new(MemoryStore::new());
    let config = config(dir.path(), text, &store);
    let system = actix::System::new();
    let watched = store.clone();
    system.block_on(async move {
        let handle = super::start(config);
        // From here on the engine runs on this thread (its start-up reads are before).
        *watched.engine_thread.lock().expect("lock") = Some(std::thread::current().id());
        handle.resume_all().await.expect("resume");
        let keyed = || SubmitRequest { job: "j".into(), key: Some("k".into()), ..Default::default() };
        let first = handle.submit_request(keyed()).await.expect("submit").job_run;
        handle.wait(vec![first]).await.expect("wait");
        let again = handle.submit_request(keyed()).await.expect("submit again");
        assert_eq!((again.job_run, again.existing), (first, true));
        assert_eq!(handle.wait(vec![first]).await.expect("wait again"), vec![(first, JobState::Succeeded)]);
        let _ = handle.retry(super::Target::JobRun(first)).await;
        let _ = handle.cancel(super::Target::TaskRun(first)).await;
        let only = handle.submit_only("j", BTreeMap::new(), "hello").await.expect("--only");
        handle.wait(vec![only]).await.expect("wait --only");
        handle.serve_schedules().await.expect("schedules");
        handle.shutdown().await;
    });
    let on_thread = store.on_engine_thread.load(Ordering::Relaxed);
    assert_eq!(on_thread, 0, "snapshots taken on the engine's thread");
    assert!(store.snapshots.load(Ordering::Relaxed) >= 8, "the reads happened");
}

/// A task with `cache` asks the store for its entry as an effect of the core: the JobRun actor
/// reads it on tokio's blocking pool, never on the engine's thread, and the second run reuses
/// the first one's success.
#[test]
fn a_cached_task_reads_the_cache_off_the_engine_thread() {
    let dir = crate::state_dir::private_tempdir();
    let text = "[jobs.j.tasks.get]\nrun = \"echo got >&3 || true\"\ncache = { key = \"k\", ttl = \"1h\" }\n\
                [jobs.j.tasks.use]\nrun = \"true\"\nneeds = [\"get\"]\n";
    let store = Arc::new(MemoryStore::new());
    let config = config(dir.path(), text, &store);
    let system = actix::System::new();
    let watched = store.clone();
    let views = system.block_on(async move {
        let handle = super::start(config);
        *watched.engine_thread.lock().expect("lock") = Some(std::thread::current().id());
        handle.resume_all().await.expect("resume");
        let mut views = Vec::new();
        for _ in 0..2 {
            let id = handle.submit_request(SubmitRequest { job: "j".into(), ..Default::default() }).await;
            let id = id.expect("submit").job_run;
            assert_eq!(handle.wait(vec![id]).await.expect("wait"), vec![(id, JobState::Succeeded)]);
            views.push(handle.task_runs_of(id).await.expect("task runs"));
        }
        handle.shutdown().await;
        views
    });
    let get = |run: usize| views[run].iter().find(|t| t.task == "get").cloned().expect("get");
    assert_eq!(get(0).attempt, 1, "the first run runs it");
    let reused = get(1);
    assert_eq!(reused.attempt, 0, "the second reuses it: {reused:?}");
    assert!(reused.detail.as_deref().is_some_and(|d| d.starts_with("cached: reused task run")), "{reused:?}");
    assert_eq!(store.on_engine_thread.load(Ordering::Relaxed), 0, "snapshots taken on the engine's thread");
}
