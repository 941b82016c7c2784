//! Group commit over PostgreSQL, as `store::writer` does over redb: one task takes every batch
//! that queued up while the previous transaction committed and applies them all in one
//! transaction, answering each caller after the commit. A group that fails is retried batch by
//! batch, so one bad batch does not fail the others that shared its transaction.
//!
//! With a node set, each batch is fenced by its job runs' owner and epoch before anything is
//! written (`fence.rs`): a fenced-out batch writes nothing and its caller hears
//! [`PgError::Fenced`], while the other batches of its group commit as if it were not there.
//!
//! Task runs that enter `queued` wake the nodes: one `pg_notify` per queue per transaction
//! (a NOTIFY per enqueue serializes commits and halves throughput, pg-probe RESULTS.md).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::{Pool, Transaction};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use super::fence::{Judge, Ownership, Row, Verdicts};
use super::{PgError, QueueFacts};
use crate::model::TaskState;
use crate::store::{Mutation, codec};

/// A transaction takes at most this many mutations (as redb's writer).
const MAX_BATCH_MUTATIONS: usize = 4096;

/// The channel a node listens on; the payload is the queue name.
pub const QUEUE_CHANNEL: &str = "gaffer_queue";

struct Request {
    batch: Vec<Mutation>,
    reply: oneshot::Sender<Result<(), PgError>>,
}

/// The way in to the group-commit task. Cheap to clone; the task ends when every clone is gone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Request>,
    commits: Arc<AtomicU64>,
    /// The cluster node this store writes for and the job runs it owns (`fence.rs`).
    ownership: Arc<Ownership>,
}

impl Writer {
    pub fn start(pool: Pool, facts: QueueFacts, ownership: Arc<Ownership>) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(commit_loop(pool, facts, ownership.clone(), rx, commits.clone()));
        Writer { tx, commits, ownership }
    }

    /// From now on this writer commits for cluster node `node`: a job run it creates is owned
    /// by `node` (`owner_node = node, owner_epoch = 1`) and its commits are fenced; a new id
    /// (a rejoin) owns nothing of the old one's. `None`: a plain store, nothing fenced.
    pub fn set_owner_node(&self, node: Option<i64>) {
        match node {
            Some(node) => self.ownership.join(from_db(node)),
            None => self.ownership.leave(),
        }
    }

    pub async fn commit(&self, batch: Vec<Mutation>) -> Result<(), PgError> {
        self.hand_over(batch).await
    }

    /// Queues `batch` now (batches commit in the order they were handed over), and returns the
    /// answer to await: resolved once the batch is committed. Runs on any thread, in no runtime.
    pub fn hand_over(&self, batch: Vec<Mutation>) -> impl Future<Output = Result<(), PgError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let sent = self.tx.send(Request { batch, reply }).map_err(|_| PgError::Closed);
        async move {
            sent?;
            answer.await.map_err(|_| PgError::Closed)?
        }
    }

    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

async fn commit_loop(
    pool: Pool,
    facts: QueueFacts,
    ownership: Arc<Ownership>,
    mut rx: mpsc::UnboundedReceiver<Request>,
    commits: Arc<AtomicU64>,
) {
    while let Some(group) = super::batch::next_group(&mut rx, MAX_BATCH_MUTATIONS, |r| r.batch.len()).await {
        let committed = commit_retrying(&pool, &facts, &ownership, &group).await;
        commits.fetch_add(1, Ordering::Relaxed);
        match committed {
            Ok(fenced) => answer(group, fenced),
            Err(e) if group.len() > 1 => {
                if !matches!(e, PgError::FireTaken { .. } | PgError::RunLimit { .. }) {
                    tracing::warn!("postgres: a group commit failed ({e}); committing its batches one by one");
                }
                for request in group {
                    let result = commit_retrying(&pool, &facts, &ownership, std::slice::from_ref(&request)).await;
                    commits.fetch_add(1, Ordering::Relaxed);
                    let _ = request.reply.send(result.and_then(|fenced| outcome(fenced[0])));
                }
            }
            Err(e) => {
                for request in group {
                    let _ = request.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// How long a commit is tried again while the database cannot be reached (a restart, a
/// failover), waiting longer each time up to [`RECONNECT_MAX_WAIT`]; past it, the error goes to
/// the committer as before. A commit is idempotent (puts by key, the same fence), so one whose
/// answer was lost may be made twice.
const RECONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(30);
const RECONNECT_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn commit_retrying(
    pool: &Pool,
    facts: &QueueFacts,
    ownership: &Ownership,
    group: &[Request],
) -> Result<Vec<Option<u64>>, PgError> {
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_millis(50);
    loop {
        match commit_group(pool, facts, ownership, group).await {
            Err(e) if unreachable(&e) && started.elapsed() < RECONNECT_FOR => {
                tracing::warn!("postgres: cannot commit ({e}); trying again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RECONNECT_MAX_WAIT);
            }
            other => return other,
        }
    }
}

/// The database is not there for now (restarting, shutting down, unreachable), rather than
/// refusing the commit: worth trying again on a new connection.
fn unreachable(e: &PgError) -> bool {
    const SIGNS: [&str; 10] = [
        "terminating connection",
        "shutting down",
        "starting up",
        "recovery mode",
        "error connecting",
        "connection closed",
        "Connection refused",
        "Connection reset",
        "Broken pipe",
        "No route to host",
    ];
    matches!(e, PgError::Db(m) if SIGNS.iter().any(|s| m.contains(s)))
}

fn outcome(fenced: Option<u64>) -> Result<(), PgError> {
    match fenced {
        None => Ok(()),
        Some(job_run) => Err(PgError::Fenced { job_run }),
    }
}

fn answer(group: Vec<Request>, fenced: Vec<Option<u64>>) {
    for (request, fenced) in group.into_iter().zip(fenced) {
        let _ = request.reply.send(outcome(fenced));
    }
}

/// Commits the batches of `group` that the fence takes, in one transaction; per batch, the job
/// run it was fenced out by (`None`: written).
async fn commit_group(
    pool: &Pool,
    facts: &QueueFacts,
    ownership: &Ownership,
    group: &[Request],
) -> Result<Vec<Option<u64>>, PgError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let judge = ownership.judge();
    let batches: Vec<&[Mutation]> = group.iter().map(|r| r.batch.as_slice()).collect();
    let verdicts = match &judge {
        None => Verdicts { fenced: vec![None; group.len()], ..Verdicts::default() },
        Some(judge) => judge.decide(&batches, &read_fence(&tx, &Judge::to_read(&batches)).await?),
    };
    let owner = judge.as_ref().map(Judge::node);
    let mut woken = BTreeSet::new();
    let taken: Vec<&[Mutation]> =
        batches.iter().zip(&verdicts.fenced).filter(|(_, fenced)| fenced.is_none()).map(|(b, _)| *b).collect();
    apply(&tx, &taken, facts, owner, &mut woken).await?;
    if !woken.is_empty() {
        let queues: Vec<String> = woken.into_iter().collect();
        tx.execute("SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q", &[&QUEUE_CHANNEL, &queues]).await?;
    }
    tx.commit().await?;
    if let Some(judge) = &judge {
        ownership.learn(judge, &verdicts);
    }
    Ok(verdicts.fenced)
}

/// `model::lease::commit_accepted`'s read: the owner and epoch of each job run the group
/// writes, locked until the commit (an adoption of one of them waits for it), by primary key.
const READ_FENCE: &str = "SELECT id, owner_node, owner_epoch FROM job_runs WHERE id = ANY($1) ORDER BY id FOR UPDATE";

async fn read_fence(tx: &Transaction<'_>, job_runs: &[u64]) -> Result<std::collections::BTreeMap<u64, Row>, PgError> {
    if job_runs.is_empty() {
        return Ok(Default::default());
    }
    let ids: Vec<i64> = job_runs.iter().copied().map(to_db).collect();
    let stmt = tx.prepare_cached(READ_FENCE).await?;
    let rows = tx.query(&stmt, &[&ids]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let owner: Option<i64> = r.get(1);
            let epoch: i64 = r.get(2);
            (from_db(r.get(0)), (owner.map(from_db), from_db(epoch)))
        })
        .collect())
}

type Param = Box<dyn ToSql + Sync + Send>;

/// Applies the batches of a group: every statement of every batch is sent at once (pipelined
/// on the connection, executed in order), then their answers are awaited. One round trip per
/// group, not per batch: a group of 64 one-task batches (a node's workers each starting or
/// ending an attempt) awaited batch by batch held its transaction open for 64 round trips,
/// which bounded a node to a few hundred tasks/s (BENCHMARKS.md, cluster rows). A job run
/// created with a node `owner` is written as that node's at epoch 1.
pub async fn apply(
    tx: &Transaction<'_>,
    batches: &[&[Mutation]],
    facts: &QueueFacts,
    owner: Option<u64>,
    woken: &mut BTreeSet<String>,
) -> Result<(), PgError> {
    lock_jobs_counted(tx, batches).await?;
    let mut statements: Vec<(&'static str, Vec<Param>)> = Vec::new();
    for (batch, m) in batches.iter().flat_map(|b| b.iter().map(move |m| (*b, m))) {
        statements.push(statement(m, facts, owner, batch)?);
        if let Mutation::TaskRun(r) = m
            && r.state == TaskState::Queued
        {
            woken.insert(r.queue.clone());
        }
    }
    let mut prepared = Vec::with_capacity(statements.len());
    for (sql, _) in &statements {
        prepared.push(tx.prepare_cached(sql).await?);
    }
    let params: Vec<Vec<&(dyn ToSql + Sync)>> =
        statements.iter().map(|(_, ps)| ps.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()).collect();
    let runs = prepared.iter().zip(&params).map(|(stmt, ps)| tx.execute(stmt, ps));
    let written = futures_util::future::try_join_all(runs).await?;
    // A fire time another node recorded first writes no row, nor a count at the job's limit
    // answers one: its batch is refused (the group is then committed batch by batch, and only
    // that one fails).
    for (m, rows) in batches.iter().flat_map(|b| b.iter()).zip(written) {
        match m {
            Mutation::Schedule(job, _) if rows == 0 => return Err(PgError::FireTaken { job: job.clone() }),
            Mutation::ActiveRunsBelow(job, _) if rows == 0 => return Err(PgError::RunLimit { job: job.clone() }),
            _ => {}
        }
    }
    Ok(())
}

/// Takes the lock of each job whose running runs the group counts (`ActiveRunsBelow`), before
/// the count's statement starts (each statement sees what committed before it began): two
/// transactions that would each start a run of the job take turns, and the second counts the
/// first's. Every job of the group in name order, so two groups never wait on each other's.
async fn lock_jobs_counted(tx: &Transaction<'_>, batches: &[&[Mutation]]) -> Result<(), PgError> {
    let jobs: BTreeSet<&str> = batches
        .iter()
        .flat_map(|b| b.iter())
        .filter_map(|m| match m {
            Mutation::ActiveRunsBelow(job, _) => Some(job.as_str()),
            _ => None,
        })
        .collect();
    for job in jobs {
        tx.execute("SELECT pg_advisory_xact_lock(hashtext('gaffer.job.' || $1))", &[&job]).await?;
    }
    Ok(())
}

const PUT_DEFINITION: &str = "INSERT INTO definitions (hash, record) VALUES ($1, $2) \
     ON CONFLICT (hash) DO UPDATE SET record = excluded.record";
/// The owner columns are written only by the insert that creates the row (an adoption changes
/// them, never a commit).
const PUT_JOB_RUN: &str = "INSERT INTO job_runs (id, job, state, record, owner_node, owner_epoch) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET job = excluded.job, state = excluded.state, record = excluded.record";
/// `node` is not written: only a claim sets it (and a completion keeps it, as the attempt's).
const PUT_TASK_RUN: &str = "INSERT INTO task_runs (id, job_run, task, iteration, item_index, kind, state, \
     queue, sort_key, enqueue_seq, not_before, requires, attempt, record) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, to_timestamp($11::bigint / 1000.0), $12, $13, $14) \
     ON CONFLICT (id) DO UPDATE SET state = excluded.state, queue = excluded.queue, \
     sort_key = excluded.sort_key, enqueue_seq = excluded.enqueue_seq, not_before = excluded.not_before, \
     requires = excluded.requires, attempt = excluded.attempt, record = excluded.record";
/// [`PUT_TASK_RUN`] by a node (`$15`): an attempt its owner starts itself runs on it, so `node`
/// is set when the task run becomes `running` here (a claim by another node set it already and
/// is kept) and cleared when it stops running — what `model::lease::orphaned_attempt` reads.
const PUT_TASK_RUN_BY_NODE: &str = "INSERT INTO task_runs (id, job_run, task, iteration, item_index, kind, state, \
     queue, sort_key, enqueue_seq, not_before, requires, attempt, record, node) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, to_timestamp($11::bigint / 1000.0), $12, $13, $14, \
     CASE WHEN $7 = 'running' THEN $15::bigint END) \
     ON CONFLICT (id) DO UPDATE SET state = excluded.state, queue = excluded.queue, \
     sort_key = excluded.sort_key, enqueue_seq = excluded.enqueue_seq, not_before = excluded.not_before, \
     requires = excluded.requires, attempt = excluded.attempt, record = excluded.record, \
     node = CASE WHEN excluded.state <> 'running' THEN NULL \
                 WHEN task_runs.state = 'running' THEN task_runs.node ELSE excluded.node END";
const PUT_ATTEMPT: &str = "INSERT INTO attempts (task_run, n, record) VALUES ($1, $2, $3) \
     ON CONFLICT (task_run, n) DO UPDATE SET record = excluded.record";
/// [`PUT_ATTEMPT`] by a node (`$4`): the row names the node that runs the attempt — the task
/// run's `node` while it runs as attempt `$2` (a claim's, or this node's own start that
/// [`PUT_TASK_RUN_BY_NODE`] wrote just before), else the node the row already names (the
/// runner's fenced completion wrote it, `queue::COMPLETE`, and cleared the task run's), else
/// this node.
const PUT_ATTEMPT_BY_NODE: &str = "INSERT INTO attempts (task_run, n, node, record) \
     VALUES ($1, $2, coalesce((SELECT node FROM task_runs WHERE id = $1 AND attempt = $2), $4::bigint), $3) \
     ON CONFLICT (task_run, n) DO UPDATE SET record = excluded.record, \
     node = coalesce((SELECT node FROM task_runs WHERE id = $1 AND attempt = $2), attempts.node, excluded.node)";
/// Taken only as `model::schedule::fire_accepted` says; otherwise no row is written.
const PUT_SCHEDULE: &str = "INSERT INTO schedules (job, record, last_fired_ms) VALUES ($1, $2, $3) \
     ON CONFLICT (job) DO UPDATE SET record = excluded.record, last_fired_ms = excluded.last_fired_ms \
     WHERE excluded.last_fired_ms IS NULL OR schedules.last_fired_ms IS NULL \
     OR schedules.last_fired_ms < excluded.last_fired_ms";
const PAUSE: &str = "INSERT INTO paused_queues (queue) VALUES ($1) ON CONFLICT DO NOTHING";
const RESUME: &str = "DELETE FROM paused_queues WHERE queue = $1";
const PUT_KEY: &str = "INSERT INTO idempotency (key, job_run) VALUES ($1, $2) \
     ON CONFLICT (key) DO UPDATE SET job_run = excluded.job_run";
const PUT_CACHE: &str = "INSERT INTO cache (key, expires_at_ms, record) VALUES ($1, $2, $3) \
     ON CONFLICT (key) DO UPDATE SET expires_at_ms = excluded.expires_at_ms, record = excluded.record";
const DELETE_CACHE: &str = "DELETE FROM cache WHERE key = $1";
const PUT_SPEC: &str = "UPDATE task_runs SET spec = $2 WHERE id = $1";
/// One row while fewer than `$2` runs of job `$1` are running, not counting `$3` (the batch's
/// own new job runs): the partial index `job_runs_running_by_job`.
pub(super) const ACTIVE_RUNS_BELOW: &str = "SELECT 1 WHERE (SELECT count(*) FROM job_runs \
     WHERE job = $1 AND state = 'running' AND NOT (id = ANY($3::bigint[]))) < $2";
const PUT_RAISED: &str = "INSERT INTO raised_budgets (job_run, record) VALUES ($1, $2) \
     ON CONFLICT (job_run) DO UPDATE SET record = excluded.record";

/// Ids and hashes are u64 in gaffer, bigint in PostgreSQL: stored bit for bit (`as`), read back
/// with [`from_db`]. Ids from the sequences never reach the sign bit; definition hashes may.
pub fn to_db(v: u64) -> i64 {
    v as i64
}

pub fn from_db(v: i64) -> u64 {
    v as u64
}

fn statement(
    m: &Mutation,
    facts: &QueueFacts,
    owner: Option<u64>,
    batch: &[Mutation],
) -> Result<(&'static str, Vec<Param>), PgError> {
    Ok(match m {
        Mutation::Definition(hash, d) => (PUT_DEFINITION, vec![Box::new(to_db(*hash)), Box::new(codec::encode(d)?)]),
        Mutation::JobRun(r) => (
            PUT_JOB_RUN,
            vec![
                Box::new(to_db(r.id)),
                Box::new(r.job.clone()),
                Box::new(r.state.as_str()),
                Box::new(codec::encode(r)?),
                Box::new(owner.map(to_db)),
                Box::new(if owner.is_some() { 1i64 } else { 0 }),
            ],
        ),
        Mutation::TaskRun(r) => {
            let columns = facts(r);
            let mut params: Vec<Param> = vec![
                Box::new(to_db(r.id)),
                Box::new(to_db(r.job_run)),
                Box::new(r.task.clone()),
                Box::new(r.iteration as i32),
                Box::new(r.item_index.map(|i| i as i32)),
                Box::new(i16::from(r.kind.index_key())),
                Box::new(r.state.as_str()),
                Box::new(r.queue.clone()),
                Box::new(columns.sort_key),
                Box::new(to_db(r.enqueue_seq)),
                Box::new(r.not_before_ms.map(to_db)),
                Box::new(columns.requires),
                Box::new(r.attempt as i32),
                Box::new(codec::encode(r)?),
            ];
            match owner {
                None => (PUT_TASK_RUN, params),
                Some(node) => {
                    params.push(Box::new(to_db(node)));
                    (PUT_TASK_RUN_BY_NODE, params)
                }
            }
        }
        Mutation::Attempt(a) => {
            let mut params: Vec<Param> =
                vec![Box::new(to_db(a.task_run)), Box::new(a.n as i32), Box::new(codec::encode(a)?)];
            match owner {
                None => (PUT_ATTEMPT, params),
                Some(node) => {
                    params.push(Box::new(to_db(node)));
                    (PUT_ATTEMPT_BY_NODE, params)
                }
            }
        }
        Mutation::Schedule(job, state) => (
            PUT_SCHEDULE,
            vec![Box::new(job.clone()), Box::new(codec::encode(state)?), Box::new(state.last_fired_ms.map(to_db))],
        ),
        Mutation::QueuePaused(queue, true) => (PAUSE, vec![Box::new(queue.clone())]),
        Mutation::QueuePaused(queue, false) => (RESUME, vec![Box::new(queue.clone())]),
        Mutation::IdempotencyKey(key, job_run) => (PUT_KEY, vec![Box::new(key.clone()), Box::new(to_db(*job_run))]),
        Mutation::Cached(key, entry) => (
            PUT_CACHE,
            vec![Box::new(key.clone()), Box::new(to_db(entry.expires_at_ms)), Box::new(codec::encode(entry)?)],
        ),
        Mutation::Uncached(key) => (DELETE_CACHE, vec![Box::new(key.clone())]),
        Mutation::RaisedBudgets(job_run, raised) => {
            (PUT_RAISED, vec![Box::new(to_db(*job_run)), Box::new(codec::encode(raised)?)])
        }
        Mutation::Spec(task_run, spec) => (PUT_SPEC, vec![Box::new(to_db(*task_run)), Box::new(spec.clone())]),
        Mutation::MailRead(_, ids) => (super::mail::DELETE_READ, vec![Box::new(ids.clone())]),
        Mutation::ActiveRunsBelow(job, limit) => {
            let created: Vec<i64> = batch
                .iter()
                .filter_map(|m| match m {
                    Mutation::JobRun(r) => Some(to_db(r.id)),
                    _ => None,
                })
                .collect();
            let limit = i64::try_from(*limit).unwrap_or(i64::MAX);
            (ACTIVE_RUNS_BELOW, vec![Box::new(job.clone()), Box::new(limit), Box::new(created)])
        }
    })
}
