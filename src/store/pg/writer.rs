//! Group commit over PostgreSQL, as `store::writer` does over redb: one task takes every batch
//! that queued up while the previous transaction committed and applies them all in one
//! transaction, answering each caller after the commit. A group that fails is retried batch by
//! batch, so one bad batch does not fail the others that shared its transaction.
//!
//! With a node set, each batch is fenced by its job runs' owner and epoch before anything is
//! written (`fence.rs`): a fenced-out batch writes nothing and its caller hears
//! [`PgError::Fenced`], while the other batches of its group commit as if it were not there.
//!
//! Task runs that enter `queued`, and a queue paused or resumed, wake the nodes: one
//! `pg_notify` per queue per transaction (a NOTIFY per enqueue serializes commits and halves
//! throughput, pg-probe RESULTS.md).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Statement;
use tokio_postgres::types::ToSql;

use super::fence::{Judge, Ownership, Row, Verdicts};
use super::{PgError, QueueFacts, merge};
use crate::model::TaskState;
use crate::store::records::TaskRunRecord;
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
            Err(e) if (unreachable(&e) || deadlocked(&e)) && started.elapsed() < RECONNECT_FOR => {
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

/// PostgreSQL broke a deadlock by aborting this transaction: nothing of it was written, and it
/// is tried again. The owner's updates of task runs (`PUT_TASK_RUNS`) lock rows in the order
/// of its plan's scan (key order for an index scan, page order for a bitmap scan), as a
/// runner's fenced completion does (`queue::COMPLETE`): two that share rows may meet in
/// opposite orders.
fn deadlocked(e: &PgError) -> bool {
    matches!(e, PgError::Db(m) if m.contains("deadlock detected"))
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
/// run it was fenced out by (`None`: written). Two round trips: `BEGIN`, the fence read and
/// every statement of the group pipelined, then `COMMIT` once the fence took every batch. A
/// fenced batch (rare: its job run was adopted) rolls that transaction back, and the group goes
/// again without it — the same as reading the fence first, as the rows it read were locked
/// before any write of the group.
async fn commit_group(
    pool: &Pool,
    facts: &QueueFacts,
    ownership: &Ownership,
    group: &[Request],
) -> Result<Vec<Option<u64>>, PgError> {
    let judge = ownership.judge();
    let owner = judge.as_ref().map(Judge::node);
    let all: Vec<&[Mutation]> = group.iter().map(|r| r.batch.as_slice()).collect();
    let mut fenced: Vec<Option<u64>> = vec![None; all.len()];
    let open = Open(Some(pool.get().await?));
    let client = open.client();
    let fence = match &judge {
        Some(_) => Some(client.prepare_cached(READ_FENCE).await?),
        None => None,
    };
    // The job runs the committed batches created.
    let created = loop {
        let taken: Vec<usize> = (0..all.len()).filter(|&i| fenced[i].is_none()).collect();
        let batches: Vec<&[Mutation]> = taken.iter().map(|&i| all[i]).collect();
        let planned = plan(&batches, facts, owner)?;
        let prepared = planned.prepare(client).await?;
        let ids: Vec<i64> = match judge {
            Some(_) => Judge::to_read(&batches).into_iter().map(to_db).collect(),
            None => Vec::new(),
        };
        let read = async {
            match (&fence, ids.is_empty()) {
                (Some(fence), false) => client.query(fence, &[&ids]).await,
                _ => Ok(Vec::new()),
            }
        };
        let (_, rows, written) =
            futures_util::future::try_join3(client.batch_execute("BEGIN"), read, planned.execute(client, &prepared))
                .await?;
        let verdicts = match &judge {
            None => Verdicts { fenced: vec![None; batches.len()], ..Verdicts::default() },
            Some(judge) => judge.decide(&batches, &fence_rows(&rows)),
        };
        if verdicts.fenced.iter().any(Option::is_some) {
            client.batch_execute("ROLLBACK").await?;
            for (&i, by) in taken.iter().zip(&verdicts.fenced) {
                fenced[i] = *by;
            }
            match fenced.iter().all(Option::is_some) {
                true => break Default::default(),
                false => continue,
            }
        }
        if let Err(e) = planned.check(&written) {
            client.batch_execute("ROLLBACK").await?;
            open.release();
            return Err(e);
        }
        client.batch_execute("COMMIT").await?;
        break verdicts.created;
    };
    open.release();
    if let Some(judge) = &judge {
        ownership.learn(judge, &Verdicts { fenced: fenced.clone(), created });
    }
    Ok(fenced)
}

/// A pooled connection inside a transaction begun by hand (`BEGIN` pipelined with the group's
/// statements rather than a round trip of its own). Dropped before its `COMMIT` or `ROLLBACK`
/// was answered — an error, a commit future dropped — the connection is taken out of the pool
/// and closed (the server rolls the transaction back): none goes back to the pool inside one.
struct Open(Option<deadpool_postgres::Object>);

impl Open {
    fn client(&self) -> &deadpool_postgres::Object {
        self.0.as_ref().expect("an open transaction has its connection until released")
    }

    /// Its transaction ended: the connection goes back to the pool.
    fn release(mut self) {
        self.0.take();
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(connection) = self.0.take() {
            drop(deadpool_postgres::Object::take(connection));
        }
    }
}

/// `model::lease::commit_accepted`'s read: the owner and epoch of each job run the group
/// writes, locked until the commit (an adoption of one of them waits for it), by primary key.
const READ_FENCE: &str = "SELECT id, owner_node, owner_epoch FROM job_runs WHERE id = ANY($1) ORDER BY id FOR UPDATE";

fn fence_rows(rows: &[tokio_postgres::Row]) -> std::collections::BTreeMap<u64, Row> {
    rows.iter()
        .map(|r| {
            let owner: Option<i64> = r.get(1);
            let epoch: i64 = r.get(2);
            (from_db(r.get(0)), (owner.map(from_db), from_db(epoch)))
        })
        .collect()
}

type Param = Box<dyn ToSql + Sync + Send>;

/// The statements of a group's batches: one multi-row statement per table (`merge.rs`: a task
/// run's last write in the group, its spec on the same upsert), then the rest one statement
/// each, then the wake-up of the queues it made ready (`pg_notify`, sent at the commit); every
/// statement is sent at once (pipelined on the connection, executed in order), then their
/// answers are awaited. The statements of [`PLANNED_ONCE`] run on their generic plan
/// (`plan_cache_mode` switched by `SET LOCAL` in the same pipeline), the others planned for
/// their parameters as the session says (`pg::connect`). One round trip per group, and a handful of statements
/// whatever its size: a group of 64 one-task batches was ~6 single-row statements per task
/// (BENCHMARKS.md, cluster rows). A group that counts running job runs (`ActiveRunsBelow`) is
/// applied mutation by mutation, in order. A job run created with a node `owner` is written as
/// that node's at epoch 1.
pub(super) fn plan<'a>(
    batches: &[&'a [Mutation]],
    facts: &QueueFacts,
    owner: Option<u64>,
) -> Result<Planned<'a>, PgError> {
    let mut woken = BTreeSet::new();
    let all = || batches.iter().flat_map(|b| b.iter());
    // Nodes are woken for a queue that has task runs ready, and for one paused or resumed: a
    // node that found it empty may start its own new task runs in it at submit until a claim
    // says otherwise (`model::start_at_submit`), and a resumed queue's rows are claimable now.
    for m in all() {
        match m {
            Mutation::TaskRun(r) if r.state == TaskState::Queued => woken.insert(r.queue.clone()),
            Mutation::QueuePaused(queue, _) => woken.insert(queue.clone()),
            _ => false,
        };
    }
    let mut statements: Vec<(&'static str, Vec<Param>)> = jobs_counted(batches)
        .into_iter()
        .map(|job| (LOCK_JOB_COUNTED, vec![Box::new(job.to_string()) as Param]))
        .collect();
    // A group that counts running job runs is merged batch by batch, in order: each count
    // sees the batches before it, not those after.
    let units: Vec<(&[Mutation], Vec<&Mutation>)> = match merge::mergeable(all()) {
        true => vec![(&[][..], all().collect())],
        false => batches.iter().map(|b| (*b, b.iter().collect())).collect(),
    };
    // The mutations written one statement each, by the index of their statement.
    let mut rest: Vec<(&Mutation, usize)> = Vec::new();
    for (batch, mutations) in units {
        let merged = merge::merge(mutations);
        statements.extend(merged_statements(&merged, facts, owner)?);
        for m in merged.rest {
            rest.push((m, statements.len()));
            statements.push(statement(m, batch)?);
        }
    }
    if !woken.is_empty() {
        let queues: Vec<String> = woken.into_iter().collect();
        statements.push((NOTIFY, vec![Box::new(QUEUE_CHANNEL), Box::new(queues)]));
    }
    let (statements, at) = plan_modes(statements);
    let rest = rest.into_iter().map(|(m, i)| (m, at[i])).collect();
    Ok(Planned { statements, rest })
}

/// A group's statements, in order, before any is sent.
pub(super) struct Planned<'a> {
    statements: Vec<(&'static str, Vec<Param>)>,
    /// The mutations whose statement's count of rows decides whether their batch may commit
    /// (a fire time, a run limit), with the index of that statement.
    rest: Vec<(&'a Mutation, usize)>,
}

impl Planned<'_> {
    /// Each statement prepared on `client` (once per connection: a round trip the first time).
    pub(super) async fn prepare(&self, client: &deadpool_postgres::ClientWrapper) -> Result<Vec<Statement>, PgError> {
        let mut prepared = Vec::with_capacity(self.statements.len());
        for (sql, _) in &self.statements {
            prepared.push(client.prepare_cached(sql).await?);
        }
        Ok(prepared)
    }

    /// Sends every statement at once (pipelined on the connection, executed in order) and
    /// awaits their answers: the rows each wrote.
    pub(super) async fn execute(
        &self,
        client: &tokio_postgres::Client,
        prepared: &[Statement],
    ) -> Result<Vec<u64>, tokio_postgres::Error> {
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = self
            .statements
            .iter()
            .map(|(_, ps)| ps.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect())
            .collect();
        let runs = prepared.iter().zip(&params).map(|(stmt, ps)| client.execute(stmt, ps));
        futures_util::future::try_join_all(runs).await
    }

    /// A fire time another node recorded first writes no row, nor a count at the job's limit
    /// answers one: its batch is refused (the group is then committed batch by batch, and only
    /// that one fails).
    pub(super) fn check(&self, written: &[u64]) -> Result<(), PgError> {
        for &(m, at) in &self.rest {
            match m {
                Mutation::Schedule(job, _) if written[at] == 0 => return Err(PgError::FireTaken { job: job.clone() }),
                Mutation::ActiveRunsBelow(job, _) if written[at] == 0 => {
                    return Err(PgError::RunLimit { job: job.clone() });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

const NOTIFY: &str = "SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q";

/// The writer's statements whose plan cannot go wrong whatever the statistics say, so they are
/// planned once per session (a generic plan) rather than at every execution (~0.04–0.1 ms of
/// planning each, on the enqueue → start path): each reads no table — rows from `unnest` of
/// its arrays, the conflict arbiter is the table's primary key whatever the plan. Statements
/// that read a table (the fence, `PUT_ATTEMPTS`' lookup of the task run, `PUT_SPECS`' join,
/// the counts, the deletes) keep a plan made for their parameters: a generic plan made while
/// a table looked empty would walk it whole for as long as it is cached (pg-probe RESULTS.md,
/// trap 1). `plan_tests::the_writers_generic_plans_read_no_table`.
pub(super) fn planned_once(sql: &str) -> bool {
    // Not `PUT_TASK_RUNS`: it updates rows it finds in `task_runs` by primary key first, a read
    // a generic plan made on an empty table's statistics may turn into a scan (plan_tests).
    sql == PUT_JOB_RUNS || sql == *PUT_TASK_RUNS_WITH_SPEC || sql == NOTIFY
}

pub(super) const PLANNED_ONCE: &str = "SET LOCAL plan_cache_mode = force_generic_plan";
const PLANNED_EACH_TIME: &str = "SET LOCAL plan_cache_mode = force_custom_plan";

/// `statements` with a `SET LOCAL plan_cache_mode` before each run of [`planned_once`] ones and
/// after it (the transaction goes on as the session says), and where each statement went.
fn plan_modes(statements: Vec<(&'static str, Vec<Param>)>) -> (Vec<(&'static str, Vec<Param>)>, Vec<usize>) {
    let mut out = Vec::with_capacity(statements.len() + 2);
    let mut at = Vec::with_capacity(statements.len());
    let mut generic = false;
    for (sql, params) in statements {
        if planned_once(sql) != generic {
            generic = !generic;
            out.push((if generic { PLANNED_ONCE } else { PLANNED_EACH_TIME }, Vec::new()));
        }
        at.push(out.len());
        out.push((sql, params));
    }
    if generic {
        out.push((PLANNED_EACH_TIME, Vec::new()));
    }
    (out, at)
}

/// The multi-row statements of a merged group, empty tables left out.
fn merged_statements(
    merged: &merge::Merged<'_>,
    facts: &QueueFacts,
    owner: Option<u64>,
) -> Result<Vec<(&'static str, Vec<Param>)>, PgError> {
    let mut statements: Vec<(&'static str, Vec<Param>)> = Vec::new();
    if !merged.job_runs.is_empty() {
        let rs = &merged.job_runs;
        let records: Vec<Vec<u8>> = rs.iter().map(|r| codec::encode(*r)).collect::<Result<_, _>>()?;
        statements.push((
            PUT_JOB_RUNS,
            vec![
                Box::new(rs.iter().map(|r| to_db(r.id)).collect::<Vec<_>>()),
                Box::new(rs.iter().map(|r| r.job.clone()).collect::<Vec<_>>()),
                Box::new(rs.iter().map(|r| r.state.as_str()).collect::<Vec<_>>()),
                Box::new(records),
                Box::new(owner.map(to_db)),
                Box::new(if owner.is_some() { 1i64 } else { 0 }),
            ],
        ));
    }
    let plain: Vec<_> = merged.task_runs.iter().map(|r| (*r, None)).collect();
    for (rows, with_spec) in [(&plain, false), (&merged.task_runs_with_spec, true)] {
        if rows.is_empty() {
            continue;
        }
        let sql: &'static str = if with_spec { &PUT_TASK_RUNS_WITH_SPEC } else { &PUT_TASK_RUNS };
        statements.push((sql, task_run_params(rows, with_spec, facts, owner)?));
    }
    if !merged.attempts.is_empty() {
        let a = &merged.attempts;
        let records: Vec<Vec<u8>> = a.iter().map(|a| codec::encode(*a)).collect::<Result<_, _>>()?;
        statements.push((
            PUT_ATTEMPTS,
            vec![
                Box::new(a.iter().map(|a| to_db(a.task_run)).collect::<Vec<_>>()),
                Box::new(a.iter().map(|a| a.n as i32).collect::<Vec<_>>()),
                Box::new(records),
                Box::new(owner.map(to_db)),
            ],
        ));
    }
    if !merged.specs.is_empty() {
        let ids: Vec<i64> = merged.specs.iter().map(|(id, _)| to_db(*id)).collect();
        let specs: Vec<Option<Vec<u8>>> = merged.specs.iter().map(|(_, s)| s.map(<[u8]>::to_vec)).collect();
        statements.push((PUT_SPECS, vec![Box::new(ids), Box::new(specs)]));
    }
    if !merged.mail_read.is_empty() {
        statements.push((super::mail::DELETE_READ, vec![Box::new(merged.mail_read.clone())]));
    }
    Ok(statements)
}

/// The arrays of [`PUT_TASK_RUNS`] (and the specs of [`PUT_TASK_RUNS_WITH_SPEC`]).
fn task_run_params(
    rows: &[(&TaskRunRecord, Option<&[u8]>)],
    with_spec: bool,
    facts: &QueueFacts,
    owner: Option<u64>,
) -> Result<Vec<Param>, PgError> {
    let columns: Vec<_> = rows.iter().map(|(r, _)| facts(r)).collect();
    let records: Vec<Vec<u8>> = rows.iter().map(|(r, _)| codec::encode(*r)).collect::<Result<_, _>>()?;
    let requires: Vec<String> = columns
        .iter()
        .map(|c| serde_json::to_string(&c.requires).map_err(|e| PgError::Db(format!("requires: {e}"))))
        .collect::<Result<_, _>>()?;
    let mut params: Vec<Param> = vec![
        Box::new(rows.iter().map(|(r, _)| to_db(r.id)).collect::<Vec<_>>()),
        Box::new(rows.iter().map(|(r, _)| to_db(r.job_run)).collect::<Vec<_>>()),
        Box::new(rows.iter().map(|(r, _)| r.task.clone()).collect::<Vec<_>>()),
        Box::new(rows.iter().map(|(r, _)| r.iteration as i32).collect::<Vec<_>>()),
        Box::new(rows.iter().map(|(r, _)| r.item_index.map(|i| i as i32)).collect::<Vec<_>>()),
        Box::new(rows.iter().map(|(r, _)| i16::from(r.kind.index_key())).collect::<Vec<_>>()),
        Box::new(rows.iter().map(|(r, _)| r.state.as_str()).collect::<Vec<_>>()),
        Box::new(rows.iter().map(|(r, _)| r.queue.clone()).collect::<Vec<_>>()),
        Box::new(columns.iter().map(|c| c.sort_key).collect::<Vec<_>>()),
        Box::new(rows.iter().map(|(r, _)| to_db(r.enqueue_seq)).collect::<Vec<_>>()),
        Box::new(rows.iter().map(|(r, _)| r.not_before_ms.map(to_db)).collect::<Vec<_>>()),
        Box::new(requires),
        Box::new(rows.iter().map(|(r, _)| r.attempt as i32).collect::<Vec<_>>()),
        Box::new(records),
        Box::new(owner.map(to_db)),
    ];
    if with_spec {
        params.push(Box::new(rows.iter().map(|(_, s)| s.map(<[u8]>::to_vec)).collect::<Vec<_>>()));
    }
    Ok(params)
}

/// The jobs whose running runs the group counts (`ActiveRunsBelow`): the group takes each one's
/// lock (`LOCK_JOB_COUNTED`) before the count's statement starts (each statement sees what
/// committed before it began): two transactions that would each start a run of the job take
/// turns, and the second counts the first's. Every job of the group in name order, so two
/// groups never wait on each other's.
fn jobs_counted<'a>(batches: &[&'a [Mutation]]) -> BTreeSet<&'a str> {
    batches
        .iter()
        .flat_map(|b| b.iter())
        .filter_map(|m| match m {
            Mutation::ActiveRunsBelow(job, _) => Some(job.as_str()),
            _ => None,
        })
        .collect()
}

const LOCK_JOB_COUNTED: &str = "SELECT pg_advisory_xact_lock(hashtext('gaffer.job.' || $1))";

const PUT_DEFINITION: &str = "INSERT INTO definitions (hash, record) VALUES ($1, $2) \
     ON CONFLICT (hash) DO UPDATE SET record = excluded.record";
/// Job runs: the arrays `$1`–`$4`, the owner `$5`, `$6` as one. The owner columns are written
/// only by the insert that creates the row (an adoption changes them, never a commit).
const PUT_JOB_RUNS: &str = "INSERT INTO job_runs (id, job, state, record, owner_node, owner_epoch) \
     SELECT id, job, state, record, $5::bigint, $6::bigint \
     FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[]) AS r(id, job, state, record) \
     ON CONFLICT (id) DO UPDATE SET job = excluded.job, state = excluded.state, record = excluded.record";
/// Task runs: the arrays `$1`–`$14` (each row's `requires` a JSON array), `$15` the node. A
/// node's owner runs the attempts it starts itself, so `node` is set when the task run becomes
/// `running` here (a claim by another node set it already and is kept) and cleared when it
/// stops running — what `model::lease::orphaned_attempt` reads. A plain store (`$15` NULL)
/// never writes `node`: only a claim sets it (and a completion keeps it, as the attempt's).
///
/// Rows that exist are updated by primary key (`id = ANY($1)`, the plan an index scan of
/// `task_runs_pkey` whatever the table's size: `pg::tests::
/// task_run_writes_update_by_primary_key_whatever_the_statistics`), the others inserted: an
/// `ON CONFLICT DO UPDATE` locks the existing row before it updates it, one `Heap/LOCK` WAL
/// record per row, and most rows written without a spec exist (a start, an end). The insert
/// keeps its `ON CONFLICT` for a row another transaction inserted after this one's snapshot.
static PUT_TASK_RUNS: std::sync::LazyLock<String> = std::sync::LazyLock::new(update_then_insert_task_runs);
/// The same, also writing each row's spec (`$16`): the group writes it with the row. Most of
/// these rows are new (queued with their first spec): one upsert.
static PUT_TASK_RUNS_WITH_SPEC: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| put_task_runs(true));

/// The rows of `$1`–`$14` (`$16`) as [`PUT_TASK_RUNS`] writes them.
fn task_run_rows(with_spec: bool) -> String {
    let (col, arg) = match with_spec {
        true => (", spec", ", $16::bytea[]"),
        false => ("", ""),
    };
    format!(
        "SELECT id, job_run, task, iteration, item_index, kind, state, queue, sort_key, enqueue_seq, \
         to_timestamp(not_before / 1000.0) AS not_before, \
         CASE WHEN requires = '[]' THEN '{{}}'::text[] ELSE ARRAY(SELECT json_array_elements_text(requires::json)) END \
         AS requires, attempt, record, CASE WHEN state = 'running' THEN $15::bigint END AS node{col} \
         FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::int4[], $5::int4[], $6::int2[], $7::text[], \
         $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::text[], $13::int4[], $14::bytea[]{arg}) \
         AS r(id, job_run, task, iteration, item_index, kind, state, queue, sort_key, enqueue_seq, not_before, \
         requires, attempt, record{col})"
    )
}

/// What an existing row takes of a written one (`excluded` or a row of [`task_run_rows`]):
/// everything but its identity (job run, task, iteration, item, kind).
fn task_run_set(new: &str, old: &str) -> String {
    format!(
        "state = {new}.state, queue = {new}.queue, sort_key = {new}.sort_key, enqueue_seq = {new}.enqueue_seq, \
         not_before = {new}.not_before, requires = {new}.requires, attempt = {new}.attempt, record = {new}.record, \
         node = CASE WHEN $15::bigint IS NULL THEN {old}.node WHEN {new}.state <> 'running' THEN NULL \
                     WHEN {old}.state = 'running' THEN {old}.node ELSE {new}.node END"
    )
}

const TASK_RUN_COLUMNS: &str = "id, job_run, task, iteration, item_index, kind, state, queue, sort_key, \
     enqueue_seq, not_before, requires, attempt, record, node";

fn put_task_runs(with_spec: bool) -> String {
    let (col, set) = match with_spec {
        true => (", spec", ", spec = excluded.spec"),
        false => ("", ""),
    };
    format!(
        "INSERT INTO task_runs ({TASK_RUN_COLUMNS}{col}) {rows} ON CONFLICT (id) DO UPDATE SET {update}{set}",
        rows = task_run_rows(with_spec),
        update = task_run_set("excluded", "task_runs"),
    )
}

fn update_then_insert_task_runs() -> String {
    format!(
        "WITH r AS ({rows}), \
         u AS (UPDATE task_runs t SET {update} FROM r WHERE t.id = ANY($1::bigint[]) AND t.id = r.id RETURNING t.id) \
         INSERT INTO task_runs ({TASK_RUN_COLUMNS}) SELECT {TASK_RUN_COLUMNS} FROM r WHERE r.id NOT IN (SELECT id FROM u) \
         ON CONFLICT (id) DO UPDATE SET {upsert}",
        rows = task_run_rows(false),
        update = task_run_set("r", "t"),
        upsert = task_run_set("excluded", "task_runs"),
    )
}
/// Attempts: the arrays `$1`–`$3`, `$4` the node. With a node, each row names the node that
/// runs the attempt — the task run's `node` while it runs as that attempt (a claim's, or this
/// node's own start that [`PUT_TASK_RUNS`] wrote just before, in the same group), else the
/// node the row already names (the runner's fenced completion wrote it, `queue::COMPLETE`, and
/// cleared the task run's), else this node. A plain store (`$4` NULL) never writes `node`.
const PUT_ATTEMPTS: &str = "INSERT INTO attempts AS a (task_run, n, node, record) \
     SELECT r.task_run, r.n, \
       CASE WHEN $4::bigint IS NOT NULL THEN coalesce((SELECT t.node FROM task_runs t \
         WHERE t.id = r.task_run AND t.attempt = r.n), $4::bigint) END, r.record \
     FROM unnest($1::bigint[], $2::int4[], $3::bytea[]) AS r(task_run, n, record) \
     ON CONFLICT (task_run, n) DO UPDATE SET record = excluded.record, \
     node = CASE WHEN $4::bigint IS NULL THEN a.node ELSE coalesce((SELECT t.node FROM task_runs t \
       WHERE t.id = excluded.task_run AND t.attempt = excluded.n), a.node, excluded.node) END";
const PUT_SPECS: &str = "UPDATE task_runs t SET spec = s.spec \
     FROM unnest($1::bigint[], $2::bytea[]) AS s(id, spec) WHERE t.id = s.id";
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

/// The statement of a mutation the group does not merge (`merge::Merged::rest`).
fn statement(m: &Mutation, batch: &[Mutation]) -> Result<(&'static str, Vec<Param>), PgError> {
    Ok(match m {
        Mutation::Definition(hash, d) => (PUT_DEFINITION, vec![Box::new(to_db(*hash)), Box::new(codec::encode(d)?)]),
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
        // `merge::merge` takes these into its tables: never here.
        Mutation::JobRun(_)
        | Mutation::TaskRun(_)
        | Mutation::Attempt(_)
        | Mutation::Spec(..)
        | Mutation::MailRead(..) => {
            return Err(PgError::Db("a merged mutation has no statement of its own".into()));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pg::testing::TestDb;
    use crate::store::pg::{PgOptions, PgStore};

    /// A transaction begun by hand and dropped before its end (an error, a dropped commit)
    /// takes its connection out of the pool, so no later commit ever runs inside it; one that
    /// ended goes back.
    #[tokio::test]
    async fn a_connection_dropped_inside_a_transaction_never_goes_back_to_the_pool() {
        let Some(db) = TestDb::get() else { return };
        let store = PgStore::open(&db.url, PgOptions::default()).await.expect("open the pg store");
        let pool = store.pool().clone();
        let open = Open(Some(pool.get().await.expect("connection")));
        open.client().batch_execute("BEGIN; CREATE TEMP TABLE half_done (x int)").await.expect("begin");
        let size = pool.status().size;
        drop(open);
        assert_eq!(pool.status().size, size - 1, "closed, not pooled");
        let ended = Open(Some(pool.get().await.expect("connection")));
        ended.client().batch_execute("BEGIN; ROLLBACK").await.expect("a whole transaction");
        let size = pool.status().size;
        ended.release();
        assert_eq!(pool.status().size, size, "pooled again");
    }
}
