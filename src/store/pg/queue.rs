//! What a cluster of nodes needs of the queue beyond a store (CLUSTER-DESIGN.md): nodes and
//! their leases, claiming ready task runs, fenced completion, wake-ups.
//!
//! The statements follow pg-probe's RESULTS.md: a claim is `id = ANY(ARRAY(subquery))` (the
//! outer update is always a primary-key lookup), completion is by primary key fenced by node and
//! attempt, never by `state` (a generic plan would walk the partial `running` index), and every
//! session plans for its parameters (`force_custom_plan`, set by `pg::connect`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{AsyncMessage, Client};

use super::PgError;
pub use super::writer::QUEUE_CHANNEL;
use super::writer::{from_db, to_db};
use crate::config::{CircuitRule, RateLimit};
use crate::model::TaskState;
use crate::model::lease::{Fence, OwnLease, Refused, believed_until_ms, outcome_accepted, own_lease};
use crate::model::queue::{failure_opens_circuit, lookback, room};
use crate::store::codec;
use crate::store::records::{AttemptRecord, TaskRunRecord};

/// This node's row in `nodes`: its id fences everything it claims and completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: i64,
    pub name: String,
    pub labels: Vec<String>,
    pub lease: Duration,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Registers a node named `name` with a fresh id and a lease of `lease` from now. A row of the
/// same name whose lease ran out (or that stopped) is replaced; one still alive is refused: two
/// live nodes must not share a name.
pub async fn register_node(
    c: &mut deadpool_postgres::Client,
    name: &str,
    labels: &[String],
    lease: Duration,
) -> Result<Node, PgError> {
    let tx = c.transaction().await?;
    let alive = tx
        .query_opt(
            "SELECT lease_until FROM nodes WHERE name = $1 AND lease_until > now() AND NOT stopped FOR UPDATE",
            &[&name],
        )
        .await?;
    if alive.is_some() {
        return Err(PgError::NameHeld(format!(
            "a node named {name} is running (its lease has not run out): give this one another name"
        )));
    }
    tx.execute("DELETE FROM nodes WHERE name = $1", &[&name]).await?;
    let row = tx
        .query_one(
            "INSERT INTO nodes (name, labels, lease_until) \
             VALUES ($1, $2, now() + $3 * interval '1 millisecond') RETURNING id",
            &[&name, &labels, &millis(lease)],
        )
        .await?;
    tx.commit().await?;
    Ok(Node { id: row.get(0), name: name.to_string(), labels: labels.to_vec(), lease })
}

/// The lease of node `id` named `name` ends now, if it still runs: what a node started again on
/// the state dir of that node's process, which is gone (the state dir's lock is the new one's),
/// does before it registers, so that it need not wait for that lease to run out (kill -9 and a
/// restart by systemd). True when it did end one. Its job runs and attempts are then a dead
/// node's: adopted, and recorded `interrupted`, as after any lease that ran out.
pub async fn end_lease_of_gone(c: &Client, id: i64, name: &str) -> Result<bool, PgError> {
    let ended = c
        .execute(
            "UPDATE nodes SET lease_until = now() WHERE id = $1 AND name = $2 AND lease_until > now() AND NOT stopped",
            &[&id, &name],
        )
        .await?;
    Ok(ended == 1)
}

/// Renews the node's lease; false when it had already run out (or the node was stopped): then
/// the node is dead to the others and must not renew, claim or complete any more.
pub async fn renew(c: &Client, node: &Node) -> Result<bool, PgError> {
    let renewed = c
        .execute(
            "UPDATE nodes SET heartbeat_at = now(), lease_until = now() + $2 * interval '1 millisecond' \
             WHERE id = $1 AND lease_until > now() AND NOT stopped",
            &[&node.id, &millis(node.lease)],
        )
        .await?;
    Ok(renewed == 1)
}

/// A graceful stop: the lease ends now.
pub async fn stop_node(c: &Client, node: &Node) -> Result<(), PgError> {
    c.execute("UPDATE nodes SET stopped = true, lease_until = now() WHERE id = $1", &[&node.id]).await?;
    Ok(())
}

/// A node whose lease ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadNode {
    pub id: i64,
    pub name: String,
    /// Stopped gracefully (it left nothing running), rather than gone silent.
    pub stopped: bool,
}

/// Nodes whose lease ran out: their job runs may be adopted and their running attempts are
/// recorded `interrupted` by whoever adopts them.
pub async fn dead_nodes(c: &Client) -> Result<Vec<DeadNode>, PgError> {
    let rows = c.query("SELECT id, name, stopped FROM nodes WHERE lease_until <= now() ORDER BY id", &[]).await?;
    Ok(rows.iter().map(|r| DeadNode { id: r.get(0), name: r.get(1), stopped: r.get(2) }).collect())
}

/// A task run this node claimed: it is `running` on this node with attempt `attempt`. Its
/// record is as it was queued (the owner of its job run writes the running one).
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: u64,
    pub attempt: u32,
    pub record: TaskRunRecord,
    /// The attempt as its owner rendered it when it queued the task run (`task_runs.spec`).
    pub spec: Option<Vec<u8>>,
}

const CLAIM: &str = "UPDATE task_runs SET state = 'running', node = $1, attempt = attempt + 1 \
     WHERE id = ANY(ARRAY( \
         SELECT id FROM task_runs \
         WHERE state = 'queued' AND queue = $2 AND (not_before IS NULL OR not_before <= now()) \
           AND requires <@ $3::text[] \
         ORDER BY sort_key DESC, enqueue_seq LIMIT $4 FOR UPDATE SKIP LOCKED)) \
       AND EXISTS (SELECT 1 FROM nodes WHERE id = $1 AND lease_until > now() AND NOT stopped) \
       AND NOT EXISTS (SELECT 1 FROM paused_queues WHERE queue = $2) \
     RETURNING id, attempt, record, spec";

const IS_PAUSED: &str = "SELECT EXISTS (SELECT 1 FROM paused_queues WHERE queue = $1)";

/// Claims up to `k` ready task runs of `queue` (its best first: highest `sort_key`, then lowest
/// enqueue sequence) whose `requires` the node's labels cover, as one transaction; nothing from
/// a paused queue (`paused_queues`, whichever node paused it). With a
/// `cluster_cap` (a declared queue's concurrency) the claim takes the queue's advisory lock,
/// counts the task runs running on every node and claims at most what is left. Nothing is
/// claimed once the node's lease ran out.
pub async fn claim(
    c: &mut deadpool_postgres::Client,
    node: &Node,
    queue: &str,
    k: usize,
    cluster_cap: Option<u32>,
) -> Result<Vec<Claimed>, PgError> {
    let limits = Limits { cap: cluster_cap, ..Limits::default() };
    Ok(claim_within(c, node, queue, k, &limits).await?.claimed)
}

/// What holds a queue across the cluster: a declared `concurrency`, a `rate_limit`, a `circuit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub cap: Option<u32>,
    pub rate_limit: Option<RateLimit>,
    pub circuit: Option<CircuitRule>,
}

/// What a claim took, and when nothing more may start from its queue for now.
#[derive(Debug, Default)]
pub struct Claim {
    pub claimed: Vec<Claimed>,
    /// The rate limit or the circuit lets nothing more start until this much later (measured
    /// from the claim, at the database's clock).
    pub look_again_in: Option<Duration>,
    /// The circuit is open for this much longer.
    pub circuit_open_for: Option<Duration>,
    /// The queue is paused (on any node): nothing was taken, whatever it holds. Read with a
    /// claim that has no limits to decide (pipelined with it, no round trip more).
    pub paused: bool,
}

/// [`claim`] of a queue with `limits`. A cap, a rate limit or a circuit is decided under the
/// queue's advisory lock, in the claim's transaction, from every node's facts: running task
/// runs (the cap), claims in the rate limit's window and failures that count for the circuit
/// (`queue_marks`, `model::queue::room`); the claimed task runs are written there as starts
/// in the same transaction. So nodes claiming at once never together pass a limit.
pub async fn claim_within(
    c: &mut deadpool_postgres::Client,
    node: &Node,
    queue: &str,
    k: usize,
    limits: &Limits,
) -> Result<Claim, PgError> {
    let k = k as i64;
    if *limits == Limits::default() {
        // One statement, one commit: the common case costs one round trip. Whether the queue
        // is paused rides in the same round trip (a node that drained an unpaused queue may
        // start its own new task runs in it at submit: `model::start_at_submit`).
        let stmt = c.prepare_cached(CLAIM).await?;
        let is_paused = c.prepare_cached(IS_PAUSED).await?;
        let (rows, paused) = futures_util::future::try_join(
            c.query(&stmt, &[&node.id, &queue, &node.labels, &k]),
            c.query_one(&is_paused, &[&queue]),
        )
        .await?;
        return Ok(Claim { claimed: claimed(&rows)?, paused: paused.get(0), ..Claim::default() });
    }
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('gaffer.queue.' || $1))", &[&queue]).await?;
    let mut k = k;
    if let Some(cap) = limits.cap {
        let count = tx.prepare_cached(COUNT_RUNNING).await?;
        let running: i64 = tx.query_one(&count, &[&queue]).await?.get(0);
        k = k.min(i64::from(cap) - running);
    }
    let mut answer = Claim::default();
    let mut now_ms = None;
    if limits.rate_limit.is_some() || limits.circuit.is_some() {
        let marks = read_marks(&tx, queue, lookback(limits.rate_limit, limits.circuit)).await?;
        let now = from_db(marks.now_ms);
        let room = room(limits.rate_limit, limits.circuit, &marks.starts, &marks.failures, now);
        let after = |at: u64| Duration::from_millis(at.saturating_sub(now));
        answer.look_again_in = room.look_again_at.map(after);
        answer.circuit_open_for = room.circuit_until.map(after);
        k = k.min(i64::try_from(room.may_start).unwrap_or(i64::MAX));
        now_ms = Some(marks.now_ms);
    }
    if k <= 0 {
        return Ok(answer);
    }
    let stmt = tx.prepare_cached(CLAIM).await?;
    let rows = tx.query(&stmt, &[&node.id, &queue, &node.labels, &k]).await?;
    if let (Some(now_ms), Some(_), false) = (now_ms, limits.rate_limit, rows.is_empty()) {
        let stmt = tx.prepare_cached(MARK_STARTS).await?;
        tx.execute(&stmt, &[&queue, &now_ms, &(rows.len() as i64)]).await?;
    }
    tx.commit().await?;
    answer.claimed = claimed(&rows)?;
    Ok(answer)
}

fn claimed(rows: &[tokio_postgres::Row]) -> Result<Vec<Claimed>, PgError> {
    rows.iter()
        .map(|r| {
            let attempt: i32 = r.get(1);
            Ok(Claimed {
                id: from_db(r.get(0)),
                attempt: attempt as u32,
                record: codec::decode(r.get(2))?,
                spec: r.get(3),
            })
        })
        .collect()
}

/// Gives back a claimed row this node cannot run — its spec is missing (the owner fails that
/// attempt itself, or parked it while it stops) or is for another attempt (the owner queued it
/// again without rendering it anew, as a graceful stop does) — so it is not left `running` with
/// nobody running it: queued again at the attempt count before the claim, not claimable for
/// `pause` (the owner, or the node that adopts the run, renders it meanwhile). Nothing happens
/// if the row is no longer this node's claim.
const GIVE_BACK: &str = "UPDATE task_runs SET state = 'queued', node = NULL, attempt = attempt - 1, \
         not_before = now() + make_interval(secs => $4::double precision) \
     WHERE id = $2 AND node = $1 AND attempt = $3 AND coalesce(state, '') = 'running'";

pub async fn give_back(c: &Client, node: i64, task_run: u64, attempt: u32, pause: Duration) -> Result<bool, PgError> {
    let n = c.execute(GIVE_BACK, &[&node, &to_db(task_run), &(attempt as i32), &pause.as_secs_f64()]).await?;
    Ok(n == 1)
}

/// A queue's facts for its limits, at the database's clock.
struct Marks {
    now_ms: i64,
    starts: Vec<u64>,
    failures: Vec<u64>,
}

/// Drops the marks of `$1` older than `$2` ms before the database's clock (`now()`, one clock
/// for every node's marks); then reads that clock and the starts and failures left, oldest
/// first. Index range scans of `queue_marks_by_queue` only.
pub(super) const PRUNE_MARKS: &str = "DELETE FROM queue_marks WHERE queue = $1 AND failure = ANY('{f,t}')      AND at_ms < (extract(epoch FROM now()) * 1000)::bigint - $2";
pub(super) const READ_MARKS: &str = "SELECT (extract(epoch FROM now()) * 1000)::bigint,      ARRAY(SELECT at_ms FROM queue_marks WHERE queue = $1 AND NOT failure ORDER BY at_ms),      ARRAY(SELECT at_ms FROM queue_marks WHERE queue = $1 AND failure ORDER BY at_ms)";
/// `$3` starts of queue `$1` at `$2`.
const MARK_STARTS: &str =
    "INSERT INTO queue_marks (queue, failure, at_ms) SELECT $1, false, $2 FROM generate_series(1, $3::bigint)";

/// Under the queue's lock: what still matters to its limits (older marks are deleted first).
async fn read_marks(tx: &Transaction<'_>, queue: &str, lookback: Duration) -> Result<Marks, PgError> {
    let keep_ms = i64::try_from(lookback.as_millis()).unwrap_or(i64::MAX);
    let prune = tx.prepare_cached(PRUNE_MARKS).await?;
    tx.execute(&prune, &[&queue, &keep_ms]).await?;
    let read = tx.prepare_cached(READ_MARKS).await?;
    let row = tx.query_one(&read, &[&queue]).await?;
    let times = |i: usize| row.get::<_, Vec<i64>>(i).into_iter().map(from_db).collect();
    Ok(Marks { now_ms: row.get(0), starts: times(1), failures: times(2) })
}

/// Records a failed attempt of `queue` that counts for its circuit (`model::queue::trips_circuit`),
/// at the database's clock, under the queue's lock; answers for how long it opened the circuit
/// when this failure is the one that opened it (`model::queue::failure_opens_circuit`), so one
/// node in the cluster says `queue.circuit_opened` for it.
pub async fn record_failure(
    c: &mut deadpool_postgres::Client,
    queue: &str,
    limits: &Limits,
) -> Result<Option<Duration>, PgError> {
    let Some(rule) = limits.circuit else { return Ok(None) };
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('gaffer.queue.' || $1))", &[&queue]).await?;
    let marks = read_marks(&tx, queue, lookback(limits.rate_limit, limits.circuit)).await?;
    let opened = failure_opens_circuit(rule, &marks.failures, from_db(marks.now_ms));
    tx.execute("INSERT INTO queue_marks (queue, failure, at_ms) VALUES ($1, true, $2)", &[&queue, &marks.now_ms])
        .await?;
    tx.commit().await?;
    Ok(opened.map(|until| Duration::from_millis(until.saturating_sub(from_db(marks.now_ms)))))
}

/// Uses the partial `running` index; only ever inside the capped claim (RESULTS.md trap 3).
const COUNT_RUNNING: &str = "SELECT count(*) FROM task_runs WHERE queue = $1 AND state = 'running'";

/// An attempt that ended, as the node that ran it reports it: its record. The task run's own
/// record is not the reporter's to write: its job run's owner writes it when it hears of the
/// end (`store::pg::mail`, `Ended`).
pub type Outcome = AttemptRecord;

/// What became of one reported outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Nothing of it was written, for this reason (`model::lease::outcome_accepted`'s).
    Refused(Refused),
}

/// `model::lease::outcome_accepted` in SQL: the task run runs, as this node's attempt `n`, and the
/// node is live; taking it ends the attempt (`node = NULL`) and writes the attempt's row. The
/// task run's state and record stay as they are: its owner writes them (it alone decides what
/// follows). By primary key only: `id = ANY($2)` with each row's attempt picked by its place in
/// the array (a join with `unnest(...)` lets the planner hash-join over a sequential scan once
/// the table is small against the batch: seen at 10k rows, batches of 64), and the state is
/// tested as `coalesce(state, '')` so that no plan can walk the partial `running` index instead
/// (RESULTS.md trap 3).
const COMPLETE: &str = "WITH done AS ( \
     UPDATE task_runs SET node = NULL \
     WHERE id = ANY($2::bigint[]) AND node = $1 AND attempt = ($3::int[])[array_position($2::bigint[], id)] \
       AND coalesce(state, '') = 'running' \
       AND EXISTS (SELECT 1 FROM nodes WHERE id = $1 AND lease_until > now() AND NOT stopped) \
     RETURNING id \
 ), kept AS ( \
     INSERT INTO attempts (task_run, n, node, record) \
     SELECT a.task_run, a.n, $1, a.record FROM unnest($2::bigint[], $3::int[], $4::bytea[]) AS a(task_run, n, record) \
     WHERE a.task_run IN (SELECT id FROM done) \
     ON CONFLICT (task_run, n) DO UPDATE SET node = excluded.node, record = excluded.record \
 ) \
 SELECT id FROM done";

/// Writes a batch of ended attempts in one transaction. Each is fenced: its task run must still
/// be this node's attempt `n`, and the node's lease valid; those that are not are refused and
/// reported so (one verdict per outcome, in order), never silently dropped.
pub async fn complete(
    c: &deadpool_postgres::Client,
    node: &Node,
    outcomes: &[Outcome],
) -> Result<Vec<Verdict>, PgError> {
    let (mut ids, mut attempts, mut records) = (Vec::new(), Vec::new(), Vec::new());
    for a in outcomes {
        ids.push(to_db(a.task_run));
        attempts.push(a.n as i32);
        records.push(codec::encode(a)?);
    }
    // One statement (so one commit): the fenced update and the accepted attempts' records.
    let stmt = c.prepare_cached(COMPLETE).await?;
    let rows = c.query(&stmt, &[&node.id, &ids, &attempts, &records]).await?;
    let accepted: BTreeSet<u64> = rows.iter().map(|r| from_db(r.get(0))).collect();
    let refused: Vec<i64> = ids.iter().copied().filter(|id| !accepted.contains(&from_db(*id))).collect();
    let reasons = if refused.is_empty() { Default::default() } else { refusals(c, node, &refused).await? };
    Ok(outcomes
        .iter()
        .map(|a| match accepted.contains(&a.task_run) {
            true => Verdict::Accepted,
            false => Verdict::Refused(refusal(reasons.get(&a.task_run).copied(), node, a.n, reasons.live)),
        })
        .collect())
}

/// What the refused task runs look like now, and whether the node is live, read after the fact
/// (for the report only: the refusal itself was the update's).
#[derive(Default)]
struct Refusals {
    fences: std::collections::BTreeMap<u64, Fence>,
    live: bool,
}

impl Refusals {
    fn get(&self, id: &u64) -> Option<&Fence> {
        self.fences.get(id)
    }
}

async fn refusals(c: &deadpool_postgres::Client, node: &Node, ids: &[i64]) -> Result<Refusals, PgError> {
    let rows = c.query("SELECT id, state, node, attempt FROM task_runs WHERE id = ANY($1)", &[&ids]).await?;
    let mut fences = std::collections::BTreeMap::new();
    for r in rows {
        let state: String = r.get(1);
        let on: Option<i64> = r.get(2);
        let attempt: i32 = r.get(3);
        let state = TaskState::parse(&state).unwrap_or(TaskState::Pending);
        fences.insert(from_db(r.get(0)), Fence { state, node: on.map(from_db), attempt: attempt as u32 });
    }
    let live = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM nodes WHERE id = $1 AND lease_until > now() AND NOT stopped)",
            &[&node.id],
        )
        .await?
        .get(0);
    Ok(Refusals { fences, live })
}

/// The model's reason; a task run gone, or one that changed since (the rule now says yes), was
/// no longer running as this attempt when the update looked.
fn refusal(fence: Option<Fence>, node: &Node, attempt: u32, live: bool) -> Refused {
    match fence.map(|f| outcome_accepted(f, from_db(node.id), attempt, live)) {
        Some(Err(reason)) => reason,
        Some(Ok(())) | None => Refused::NotRunning,
    }
}

/// Outcomes per completion transaction, at most.
const MAX_OUTCOMES: usize = 256;

type Reported = (Outcome, oneshot::Sender<Result<Verdict, PgError>>);

/// A node's completions, flushed in batches: every outcome reported while the previous batch
/// was being committed goes into the next one ([`complete`]), and each reporter hears its own
/// verdict. Cheap to clone; ends when every clone is gone.
#[derive(Clone)]
pub struct Completer {
    tx: mpsc::UnboundedSender<Reported>,
    flushes: Arc<AtomicU64>,
}

impl Completer {
    pub fn start(pool: Pool, node: Node) -> Completer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Reported>();
        let flushes = Arc::new(AtomicU64::new(0));
        let counted = flushes.clone();
        tokio::spawn(async move {
            while let Some(group) = super::batch::next_group(&mut rx, MAX_OUTCOMES, |_| 1).await {
                let (outcomes, replies): (Vec<Outcome>, Vec<_>) = group.into_iter().unzip();
                let verdicts = match pool.get().await {
                    Ok(c) => complete(&c, &node, &outcomes).await,
                    Err(e) => Err(e.into()),
                };
                counted.fetch_add(1, Ordering::Relaxed);
                for (i, reply) in replies.into_iter().enumerate() {
                    let _ = reply.send(verdicts.as_ref().map(|v| v[i]).map_err(Clone::clone));
                }
            }
        });
        Completer { tx, flushes }
    }

    /// Resolves once the outcome is committed (or refused, or failed with the reason).
    pub async fn complete(&self, outcome: Outcome) -> Result<Verdict, PgError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((outcome, reply)).map_err(|_| PgError::Closed)?;
        answer.await.map_err(|_| PgError::Closed)?
    }

    /// Completion transactions so far.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

/// Renews a node's lease every third of it, until the lease is lost (it ran out before a renewal
/// reached the database: the node is dead to the others) or the heartbeat is dropped. A renewal
/// that fails (the database restarting) is retried at the next beat: the lease decides.
///
/// The node also keeps its own count (`model::lease::own_lease`): its lease runs until `lease`
/// after it *sent* the last renewal the database took (or its registration), so a node cut off
/// from the database, or paused, knows its lease passed without being told.
pub struct Heartbeat {
    lost: watch::Receiver<bool>,
    own: Arc<OwnCount>,
    task: tokio::task::JoinHandle<()>,
}

/// A node's own count of its lease, on its monotonic clock.
struct OwnCount {
    base: std::time::Instant,
    lease_ms: u64,
    /// `model::lease::believed_until_ms`, in ms since `base`.
    believed_until_ms: AtomicU64,
    last_sent_ms: AtomicU64,
}

impl OwnCount {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn expired(&self) -> bool {
        let until = self.believed_until_ms.load(Ordering::Relaxed);
        let sent = self.last_sent_ms.load(Ordering::Relaxed);
        own_lease(until, sent, false, self.now_ms(), self.lease_ms) == OwnLease::Expired
    }
}

impl Heartbeat {
    /// Starts renewing `node`'s lease, counted from now.
    pub fn start(pool: Pool, node: Node) -> Heartbeat {
        Heartbeat::start_from(pool, node, std::time::Instant::now())
    }

    /// Starts renewing `node`'s lease, which its registration sent at `joined`.
    pub fn start_from(pool: Pool, node: Node, joined: std::time::Instant) -> Heartbeat {
        let (tx, lost) = watch::channel(false);
        let lease_ms = node.lease.as_millis() as u64;
        let own = Arc::new(OwnCount {
            base: joined,
            lease_ms,
            believed_until_ms: AtomicU64::new(believed_until_ms(0, lease_ms)),
            last_sent_ms: AtomicU64::new(0),
        });
        let counting = own.clone();
        let task = tokio::spawn(async move {
            let mut beat = tokio::time::interval(node.lease / 3);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                beat.tick().await;
                let sent = counting.now_ms();
                let renewed = match pool.get().await {
                    Ok(c) => renew(&c, &node).await,
                    Err(e) => Err(e.into()),
                };
                match renewed {
                    Ok(true) => {
                        counting.last_sent_ms.store(sent, Ordering::Relaxed);
                        counting.believed_until_ms.store(believed_until_ms(sent, lease_ms), Ordering::Relaxed);
                    }
                    Ok(false) => {
                        tracing::error!("postgres: node {} lost its lease", node.name);
                        let _ = tx.send(true);
                        return;
                    }
                    Err(e) => tracing::warn!("postgres: node {} cannot renew its lease: {e}", node.name),
                }
            }
        });
        Heartbeat { lost, own, task }
    }

    /// The lease is lost: the database said so, or this node's own count ran out.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.own.expired()
    }

    /// Resolves once the database said the lease is lost.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wake-ups of one node: one connection that `LISTEN`s on [`QUEUE_CHANNEL`] (reconnecting with
/// backoff when it is lost), and a fallback poll for whatever a lost connection missed.
pub struct Waker {
    rx: mpsc::UnboundedReceiver<Wake>,
    task: tokio::task::JoinHandle<()>,
}

enum Wake {
    Queue(String),
    /// The connection was (re)made: anything may have been missed.
    Reconnected,
}

/// Why [`Waker::wait`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Woken {
    /// These queues got ready task runs (every notification that arrived, coalesced).
    Queues(BTreeSet<String>),
    /// Nothing was heard within the poll interval, or the listening connection was remade:
    /// look at every queue.
    Poll,
}

impl Waker {
    /// Starts listening for ready task runs; returns once the first `LISTEN` is in place.
    pub async fn listen(url: &str) -> Result<Waker, PgError> {
        Waker::listen_on(url, QUEUE_CHANNEL).await
    }

    /// Starts listening on `channel` (each notification's payload is what `wait` reports).
    pub async fn listen_on(url: &str, channel: &'static str) -> Result<Waker, PgError> {
        let config = super::config(url)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let first = listen_once(&config, channel).await?;
        let task = tokio::spawn(async move {
            let mut connection = Some(first);
            let mut backoff = Duration::from_millis(100);
            loop {
                if let Some(connection) = connection.take() {
                    forward(connection, &tx).await;
                    backoff = Duration::from_millis(100);
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                match listen_once(&config, channel).await {
                    Ok(c) => {
                        let _ = tx.send(Wake::Reconnected);
                        connection = Some(c);
                    }
                    Err(e) => tracing::warn!("postgres: cannot listen for wake-ups ({e}); retrying"),
                }
            }
        });
        Ok(Waker { rx, task })
    }

    /// Waits for a notification or until `poll` passed; takes every notification already there.
    pub async fn wait(&mut self, poll: Duration) -> Woken {
        let first = match tokio::time::timeout(poll, self.rx.recv()).await {
            Ok(Some(wake)) => wake,
            Ok(None) | Err(_) => return Woken::Poll,
        };
        let mut queues = BTreeSet::new();
        let mut poll_all = false;
        let mut take = |wake| match wake {
            Wake::Queue(q) => {
                queues.insert(q);
            }
            Wake::Reconnected => poll_all = true,
        };
        take(first);
        while let Ok(wake) = self.rx.try_recv() {
            take(wake);
        }
        if poll_all { Woken::Poll } else { Woken::Queues(queues) }
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listening connection: its client (kept alive) and the messages it receives.
struct Listening {
    _client: Client,
    messages: mpsc::UnboundedReceiver<AsyncMessage>,
    driver: tokio::task::JoinHandle<()>,
}

async fn listen_once(config: &tokio_postgres::Config, channel: &str) -> Result<Listening, PgError> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let (tx, messages) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if tx.send(message).is_err() {
                return;
            }
        }
    });
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    Ok(Listening { _client: client, messages, driver })
}

/// Forwards notifications until the connection ends.
async fn forward(mut listening: Listening, wake: &mpsc::UnboundedSender<Wake>) {
    while let Some(message) = listening.messages.recv().await {
        if let AsyncMessage::Notification(n) = message
            && wake.send(Wake::Queue(n.payload().to_string())).is_err()
        {
            break;
        }
    }
    listening.driver.abort();
}
