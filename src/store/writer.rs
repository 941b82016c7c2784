//! The group-commit thread: the only place that writes `state.redb`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use redb::Database;
use tokio::sync::oneshot;

use super::{Committing, Mutation, Reader, Snapshot, Store, StoreError, apply, db_err};

/// A commit takes at most this many mutations; a larger backlog is split so no caller waits on
/// an unbounded transaction.
const MAX_BATCH_MUTATIONS: usize = 4096;

/// Durable id sequences (SPEC §1): handed out in memory, persisted by the commit that first
/// writes a record with the id. An id handed out but never committed may be handed out again
/// after a crash; an id that reached the disk never is.
#[derive(Debug, Default)]
pub struct Ids {
    job_run: AtomicU64,
    task_run: AtomicU64,
    enqueue: AtomicU64,
}

impl Ids {
    pub fn new(job_run: u64, task_run: u64, enqueue: u64) -> Ids {
        Ids { job_run: AtomicU64::new(job_run), task_run: AtomicU64::new(task_run), enqueue: AtomicU64::new(enqueue) }
    }

    pub fn next_job_run(&self) -> u64 {
        self.job_run.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn next_task_run(&self) -> u64 {
        self.task_run.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn next_enqueue_seq(&self) -> u64 {
        self.enqueue.fetch_add(1, Ordering::Relaxed) + 1
    }
}

struct Request {
    batch: Vec<Mutation>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The redb store of the running instance (`open_writer`), behind [`super::StoreHandle`] for
/// the engine. Cheap to clone.
#[derive(Clone)]
pub struct RedbStore {
    /// Declared (so dropped) before `tx`: the handle dropped last closes the database before
    /// the store thread sees its channel close and `StoreCloser::close` returns. The other
    /// order let the process exit while another thread was still closing the file, leaving it
    /// marked for repair.
    db: Arc<Database>,
    tx: mpsc::Sender<Request>,
    pub ids: Arc<Ids>,
    commits: Arc<AtomicU64>,
}

impl RedbStore {
    pub(super) fn start(db: Database, ids: Ids) -> Result<(RedbStore, StoreCloser), StoreError> {
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Request>();
        let commits = Arc::new(AtomicU64::new(0));
        let thread_db = Arc::downgrade(&db);
        let thread_commits = commits.clone();
        let thread = std::thread::Builder::new()
            .name("gaffer-store".into())
            .spawn(move || commit_loop(&thread_db, &rx, &thread_commits))
            .map_err(|e| StoreError::Db(format!("cannot start the store thread: {e}")))?;
        Ok((RedbStore { tx, db, ids: Arc::new(ids), commits }, StoreCloser { thread }))
    }

    /// Resolves once `batch` is durable (or failed to become so, with the reason).
    pub fn commit(&self, batch: Vec<Mutation>) -> impl Future<Output = Result<(), StoreError>> + use<> {
        let (reply, answer) = oneshot::channel();
        let sent = self.tx.send(Request { batch, reply });
        async move {
            sent.map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// For callers outside any runtime (start-up, the CLI).
    pub fn commit_blocking(&self, batch: Vec<Mutation>) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Request { batch, reply }).map_err(|_| StoreError::Closed)?;
        answer.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// A snapshot of everything committed so far.
    pub fn reader(&self) -> Result<Reader, StoreError> {
        Reader::new(&*self.db)
    }

    /// Durable transactions made so far (for benchmarks: mutations per fsync).
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

impl Store for RedbStore {
    fn commit(&self, batch: Vec<Mutation>) -> Committing {
        Box::pin(RedbStore::commit(self, batch))
    }

    fn commit_blocking(&self, batch: Vec<Mutation>) -> Result<(), StoreError> {
        RedbStore::commit_blocking(self, batch)
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot>, StoreError> {
        Ok(Box::new(self.reader()?))
    }

    fn commit_count(&self) -> u64 {
        RedbStore::commit_count(self)
    }

    fn next_job_run(&self) -> u64 {
        self.ids.next_job_run()
    }

    fn next_task_run(&self) -> u64 {
        self.ids.next_task_run()
    }

    fn next_enqueue_seq(&self) -> u64 {
        self.ids.next_enqueue_seq()
    }
}

/// Ends when every handle is gone; then the database closes cleanly (the last `Arc` drops it).
pub struct StoreCloser {
    thread: std::thread::JoinHandle<()>,
}

impl StoreCloser {
    /// Waits (bounded) for the store thread to end after every handle was dropped, so the file
    /// is closed cleanly and the next reader needs no repair. A handle still alive somewhere is
    /// not waited for forever: the file is crash-safe either way.
    pub fn close(self, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        }
    }
}

/// Waits for work, takes everything that queued up meanwhile, commits it once, answers all.
/// Holds the database weakly, so dropping the last handle closes it.
fn commit_loop(db: &std::sync::Weak<Database>, rx: &mpsc::Receiver<Request>, commits: &AtomicU64) {
    // Woken twice on every task's start path (its run's commit, then `running`).
    crate::sched::prefer_short_waits();
    // After an I/O error redb refuses every later commit with "Previous I/O error occurred":
    // the first error is the one worth telling, whoever asks later (a caller may have dropped
    // the answer to the commit that hit it).
    let mut last_cause: Option<StoreError> = None;
    let mut explain = |e: StoreError| -> StoreError {
        let after_a_failure = e.to_string().contains("Previous I/O error");
        match &last_cause {
            Some(cause) if after_a_failure => cause.clone(),
            // The latest real error is the cause of what follows (an earlier one may have been
            // one bad request that did not break the file).
            _ if !after_a_failure => {
                tracing::error!("the store cannot commit: {e}");
                last_cause = Some(e.clone());
                e
            }
            _ => e,
        }
    };
    while let Ok(first) = rx.recv() {
        let Some(db) = db.upgrade() else { return };
        let db = &*db;
        let mut group = vec![first];
        let mut size = group[0].batch.len();
        while size < MAX_BATCH_MUTATIONS {
            match rx.try_recv() {
                Ok(next) => {
                    size += next.batch.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let committed = commit_group(db, &group);
        // Counted before anyone hears of it, so a caller that was answered sees it counted.
        commits.fetch_add(1, Ordering::Relaxed);
        match committed {
            Ok(()) => answer(group, Ok(())),
            // One bad request must not fail the others that shared its transaction.
            Err(e) if group.len() > 1 => {
                explain(e);
                for request in group {
                    let result = commit_group(db, std::slice::from_ref(&request)).map_err(&mut explain);
                    let _ = request.reply.send(result);
                }
            }
            Err(e) => answer(group, Err(explain(e))),
        }
    }
}

fn commit_group(db: &Database, group: &[Request]) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(db_err)?;
    apply(&txn, group.iter().map(|r| r.batch.as_slice()))?;
    txn.commit().map_err(db_err)
}

fn answer(group: Vec<Request>, result: Result<(), StoreError>) {
    for request in group {
        let _ = request.reply.send(result.clone());
    }
}
