//! Adoption (issue #11 §3, `model::lease::adoption` and `orphaned_attempt`): a live node takes
//! over the unfinished job runs of dead or absent owners, bumping their epoch so the old owner's
//! late commits are fenced out (`fence.rs`), and finds which of their attempts ran on a dead
//! node (the adopter records those `interrupted`) and which still run on a live one (their
//! outcome reaches the new owner).

use deadpool_postgres::Client;

use super::PgError;
use super::queue::Node;
use super::writer::{from_db, to_db};
use crate::model::TaskState;
use crate::model::lease::{Fence, NodeId, orphaned_attempt};

/// A job run this node adopted, and the epoch that fences its commits from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    pub job_run: u64,
    pub epoch: u64,
}

/// `model::lease::adoption` over every unfinished job run whose owner is absent or dead, at
/// most `limit` of them: the outer update re-checks the rule on each row (by primary key), and
/// rows another transaction holds (a commit of their owner, another adopter) are skipped, to be
/// looked at next time. Nothing is adopted once `me`'s own lease ran out.
const ADOPT: &str = "UPDATE job_runs SET owner_node = $1, owner_epoch = owner_epoch + 1 \
     WHERE id = ANY(ARRAY( \
         SELECT id FROM job_runs WHERE state = 'running' \
           AND (owner_node IS NULL OR NOT EXISTS ( \
               SELECT 1 FROM nodes WHERE id = job_runs.owner_node AND lease_until > now())) \
         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)) \
       AND (owner_node IS NULL OR NOT EXISTS ( \
           SELECT 1 FROM nodes WHERE id = job_runs.owner_node AND lease_until > now())) \
       AND EXISTS (SELECT 1 FROM nodes WHERE id = $1 AND lease_until > now() AND NOT stopped) \
     RETURNING id, owner_epoch";

/// Adopts up to `limit` unfinished job runs of dead or absent owners for `me`, in id order.
pub async fn adopt_orphaned_job_runs(c: &Client, me: &Node, limit: usize) -> Result<Vec<Adopted>, PgError> {
    let stmt = c.prepare_cached(ADOPT).await?;
    let rows = c.query(&stmt, &[&me.id, &(limit as i64)]).await?;
    let mut adopted: Vec<Adopted> = rows
        .iter()
        .map(|r| {
            let epoch: i64 = r.get(1);
            Adopted { job_run: from_db(r.get(0)), epoch: from_db(epoch) }
        })
        .collect();
    adopted.sort_by_key(|a| a.job_run);
    Ok(adopted)
}

/// An attempt the store holds running in an adopted job run, and what the adopter does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningAttempt {
    pub task_run: u64,
    pub attempt: u32,
    /// The node running it (`None`: its outcome was taken, the owner has yet to decide).
    pub node: Option<NodeId>,
    /// Its node is dead: record it `interrupted` ([`orphaned_attempt`]).
    pub orphaned: bool,
}

/// The task runs of `job_run` the store holds running, each with its node and whether that node
/// is live. By the `(job_run, …)` index; the state is compared through `coalesce` so that no plan
/// walks the partial `running` index instead (pg-probe RESULTS.md, trap 3).
const RUNNING: &str = "SELECT t.id, t.node, t.attempt, \
         EXISTS (SELECT 1 FROM nodes n WHERE n.id = t.node AND n.lease_until > now()) \
     FROM task_runs t WHERE t.job_run = $1 AND coalesce(t.state, '') = 'running' AND t.attempt > 0 \
     ORDER BY t.id";

/// What runs in `job_run` and where: read by its adopter before it resumes the job run.
pub async fn running_attempts(c: &Client, job_run: u64) -> Result<Vec<RunningAttempt>, PgError> {
    let stmt = c.prepare_cached(RUNNING).await?;
    let rows = c.query(&stmt, &[&to_db(job_run)]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let node: Option<i64> = r.get(1);
            let attempt: i32 = r.get(2);
            let live: bool = r.get(3);
            let fence = Fence { state: TaskState::Running, node: node.map(from_db), attempt: attempt as u32 };
            RunningAttempt {
                task_run: from_db(r.get(0)),
                attempt: attempt as u32,
                node: fence.node,
                orphaned: orphaned_attempt(fence, live).is_some(),
            }
        })
        .collect())
}

/// Attempts of the job runs `me` owns that run on another node whose lease ran out: the
/// owner records them `interrupted` ([`orphaned_attempt`]), as an adopter does for the runs it
/// takes. From the owner's open job runs (their index), then each one's task runs by theirs.
const ORPHANED_OF_MINE: &str = "SELECT t.job_run, t.id, t.attempt FROM job_runs j \
     JOIN task_runs t ON t.job_run = j.id \
     WHERE j.owner_node = $1 AND j.state = 'running' AND coalesce(t.state, '') = 'running' \
       AND t.node IS NOT NULL AND t.node <> $1 \
       AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = t.node AND n.lease_until > now()) \
     ORDER BY t.id";

/// `(job run, task run, attempt)` of each attempt of `me`'s job runs whose node died.
pub async fn orphaned_attempts_of(c: &Client, me: &Node) -> Result<Vec<(u64, u64, u32)>, PgError> {
    let stmt = c.prepare_cached(ORPHANED_OF_MINE).await?;
    let rows = c.query(&stmt, &[&me.id]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let attempt: i32 = r.get(2);
            (from_db(r.get(0)), from_db(r.get(1)), attempt as u32)
        })
        .collect())
}

/// Attempts of the job runs `me` owns that another node completed (the fenced completion wrote
/// their row, `task_runs.node` is cleared) and that node died since: its `Ended` letter, if it
/// was ever sent, had a lease to arrive; the owner takes the row's outcome. `attempts.node` is
/// the node that completed it.
const ENDED_UNMAILED_OF_MINE: &str = "SELECT t.job_run, a.record FROM job_runs j \
     JOIN task_runs t ON t.job_run = j.id \
     JOIN attempts a ON a.task_run = t.id AND a.n = t.attempt \
     WHERE j.owner_node = $1 AND j.state = 'running' AND coalesce(t.state, '') = 'running' \
       AND t.node IS NULL AND a.node IS NOT NULL AND a.node <> $1 \
       AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = a.node AND n.lease_until > now()) \
     ORDER BY t.id";

/// `(job run, the attempt's row)` of each attempt of `me`'s job runs that a node since dead
/// completed without the owner hearing its `Ended` letter.
pub async fn ended_unmailed_of(c: &Client, me: &Node) -> Result<Vec<(u64, crate::store::AttemptRecord)>, PgError> {
    let stmt = c.prepare_cached(ENDED_UNMAILED_OF_MINE).await?;
    let rows = c.query(&stmt, &[&me.id]).await?;
    rows.iter().map(|r| Ok((from_db(r.get(0)), crate::store::codec::decode(r.get(1))?))).collect()
}

/// A job run as a command routes by it (`model::lease::command_route`): its id, whether it
/// runs, and its owner. From a task run's id (`by_task_run`) or the job run's.
const ROUTE_OF_JOB_RUN: &str = "SELECT id, state = 'running', owner_node FROM job_runs WHERE id = $1";
const ROUTE_OF_TASK_RUN: &str = "SELECT j.id, j.state = 'running', j.owner_node \
     FROM task_runs t JOIN job_runs j ON j.id = t.job_run WHERE t.id = $1";

/// `(job run, running, owner)` of the job run `id` names (a task run's when `by_task_run`).
pub async fn route_of(c: &Client, id: u64, by_task_run: bool) -> Result<Option<(u64, bool, Option<NodeId>)>, PgError> {
    let stmt = c.prepare_cached(if by_task_run { ROUTE_OF_TASK_RUN } else { ROUTE_OF_JOB_RUN }).await?;
    let row = c.query_opt(&stmt, &[&to_db(id)]).await?;
    Ok(row.map(|r| {
        let owner: Option<i64> = r.get(2);
        (from_db(r.get(0)), r.get(1), owner.map(from_db))
    }))
}

/// The running job runs of `job`, on every node (`overlap = "cancel_previous"`): the partial
/// index `job_runs_running_by_job`.
const RUNNING_OF_JOB: &str = "SELECT id FROM job_runs WHERE job = $1 AND state = 'running' ORDER BY id";

pub async fn running_of_job(c: &Client, job: &str) -> Result<Vec<u64>, PgError> {
    let stmt = c.prepare_cached(RUNNING_OF_JOB).await?;
    Ok(c.query(&stmt, &[&job]).await?.iter().map(|r| from_db(r.get(0))).collect())
}

/// `CommandRoute::TakeOver`: `me` owns the ended job run from now on, at a new epoch (so a node
/// that took it over before is fenced out); `None` if it runs again (another node took it over
/// and retried it first) or `me`'s lease ran out.
const TAKE_OVER: &str = "UPDATE job_runs SET owner_node = $1, owner_epoch = owner_epoch + 1 \
     WHERE id = $2 AND state <> 'running' \
       AND EXISTS (SELECT 1 FROM nodes WHERE id = $1 AND lease_until > now() AND NOT stopped) \
     RETURNING owner_epoch";

/// Takes over ended job run `job_run` for `me`: the epoch it owns it at, if it did.
pub async fn take_over_ended(c: &Client, me: &Node, job_run: u64) -> Result<Option<u64>, PgError> {
    let stmt = c.prepare_cached(TAKE_OVER).await?;
    let row = c.query_opt(&stmt, &[&me.id, &to_db(job_run)]).await?;
    Ok(row.map(|r| from_db(r.get::<_, i64>(0))))
}
