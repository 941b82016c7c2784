//! The Dispatcher actor: one ready list per queue, ordered by effective priority (priority plus
//! aging, ties by enqueue order), handed to idle workers without ever exceeding
//! `settings.workers`, a queue's `concurrency` or its `rate_limit`, and never from a paused queue
//! or one whose circuit is open. Rate limits and circuits are rules of `model::queue` over
//! attempt start and failure times, seeded at start from the store ([`queue_history`]), so they
//! hold across restarts. A task run whose `requires` this node's labels do not satisfy
//! (`model::routing`) is never handed out: it waits aside in its queue's `blocked`, visibly
//! (`status`, `show`, the TUI), until a node that has the labels takes it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::cluster::ClusterNode;
use super::job_run::{JobRun, QueueTimedOut};
use super::journal::{Journal, Publish};
use super::worker::{Assign, AssignClaimed, Worker};
use super::{EngineEvent, EventData, SharedClock};
use crate::config::QueueDef;
use crate::model::outage::Outage;
use crate::model::policy::priority_key;
use crate::model::queue::{self, circuit_open_until, rate_limit_opens_at};
use crate::model::routing::can_run;
use crate::model::start_at_submit::{ClaimBegan, NothingReady, QueueAtSubmit, starts_at_submit};
use crate::store::pg::queue::Limits;
use crate::store::{self, StoreError, TaskRunRecord};

/// How often entries waiting in a blocked queue are checked against their `queue_timeout`.
const QUEUE_TIMEOUT_SWEEP: Duration = Duration::from_secs(1);

/// A task run ready to start.
pub struct ReadyEntry {
    pub task_run: u64,
    pub queue: String,
    pub priority: u8,
    pub enqueue_seq: u64,
    pub queued_at_ms: u64,
    pub queue_timeout_ms: Option<u64>,
    pub owner: Addr<JobRun>,
    /// Node labels it needs (`requires`).
    pub requires: Vec<String>,
    key: i128,
}

impl ReadyEntry {
    pub fn new(
        task_run: u64,
        queue: String,
        priority: u8,
        enqueue_seq: u64,
        queued_at_ms: u64,
        queue_timeout_ms: Option<u64>,
        owner: Addr<JobRun>,
    ) -> ReadyEntry {
        ReadyEntry {
            task_run,
            queue,
            priority,
            enqueue_seq,
            queued_at_ms,
            queue_timeout_ms,
            owner,
            requires: Vec::new(),
            key: 0,
        }
    }

    /// The entry of a task run that needs these node labels.
    pub fn requiring(self, requires: &[String]) -> ReadyEntry {
        ReadyEntry { requires: requires.to_vec(), ..self }
    }

    fn timed_out(&self, now_ms: u64) -> bool {
        self.queue_timeout_ms.is_some_and(|t| now_ms.saturating_sub(self.queued_at_ms) >= t)
    }
}

impl PartialEq for ReadyEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for ReadyEntry {}
impl PartialOrd for ReadyEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ReadyEntry {
    /// The heap's top is the highest key, then the lowest enqueue sequence.
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key).then_with(|| other.enqueue_seq.cmp(&self.enqueue_seq))
    }
}

struct QueueState {
    def: QueueDef,
    ready: BinaryHeap<ReadyEntry>,
    /// Entries this node can never start (it lacks labels they require), by task run. They
    /// leave by their `queue_timeout`, or when their job run's actor is gone.
    blocked: BTreeMap<u64, ReadyEntry>,
    running: usize,
    paused: bool,
    /// Attempt start times within the rate-limit window, oldest first.
    starts: VecDeque<u64>,
    /// End times of failed attempts that count for the circuit, oldest first.
    failures: VecDeque<u64>,
    /// Until when the circuit is open, as last said (`queue.circuit_opened`).
    circuit_until: Option<u64>,
    /// Cluster mode: the last claim found the queue's rate limit or circuit (counted over every
    /// node) lets nothing start before then; it is not asked again until then.
    held_until: Option<u64>,
    /// Cluster mode: the circuit is open until then, as the last claim found it (another node
    /// may have opened it: that node said so).
    cluster_circuit_until: Option<u64>,
}

impl QueueState {
    /// Forgets what no longer matters to the queue's limits.
    fn prune(&mut self, now_ms: u64) {
        let keep_ms = queue::lookback(self.def.rate_limit, self.def.circuit).as_millis() as u64;
        for times in [&mut self.starts, &mut self.failures] {
            while times.front().is_some_and(|&t| now_ms.saturating_sub(t) > keep_ms) {
                times.pop_front();
            }
        }
    }

    /// When the rate limit lets the next attempt start (`None` = now).
    fn rate_limited_until(&mut self, now_ms: u64) -> Option<u64> {
        let limit = self.def.rate_limit?;
        self.prune(now_ms);
        rate_limit_opens_at(self.starts.make_contiguous(), limit, now_ms)
    }

    /// Until when the circuit is open now (`None`: closed).
    fn circuit_open_until(&mut self, now_ms: u64) -> Option<u64> {
        let rule = self.def.circuit?;
        self.prune(now_ms);
        circuit_open_until(rule, self.failures.make_contiguous(), now_ms)
    }
}

/// What the store says about the queues' recent attempts: start times, and end times of the
/// failures that count for a circuit, by queue, oldest first.
#[derive(Debug, Default)]
pub struct QueueHistory {
    pub starts: BTreeMap<String, Vec<u64>>,
    pub failures: BTreeMap<String, Vec<u64>>,
}

/// With no instance running: the circuits open at `now_ms`, by queue, from the failed attempts
/// in the store, by the rule the next start applies (`status`, the read-only TUI).
pub fn open_circuits(
    reader: &dyn store::Snapshot,
    queues: &BTreeMap<String, QueueDef>,
    now_ms: u64,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let history = queue_history(reader, queues, now_ms)?;
    Ok(queues
        .iter()
        .filter_map(|(name, q)| {
            let failures = history.failures.get(name).map(Vec::as_slice).unwrap_or_default();
            Some((name.clone(), circuit_open_until(q.circuit?, failures, now_ms)?))
        })
        .collect())
}

/// Task runs that may have had an attempt since `since_ms`. Such an attempt ended after it, or
/// has not ended: so has its job run. Old job runs are skipped whole (a restart over a store
/// full of them); when most are recent, one pass over every task run is cheaper than lookups.
fn recent_task_runs(reader: &dyn store::Snapshot, since_ms: u64) -> Result<Vec<TaskRunRecord>, StoreError> {
    let jobs = reader.job_runs()?;
    let recent: std::collections::HashSet<u64> =
        jobs.iter().filter(|j| j.ended_at_ms.is_none_or(|e| e >= since_ms)).map(|j| j.id).collect();
    if recent.len() * 4 < jobs.len() {
        let per_job: Result<Vec<Vec<TaskRunRecord>>, StoreError> =
            recent.iter().map(|&id| reader.task_runs_of(id)).collect();
        return Ok(per_job?.into_iter().flatten().collect());
    }
    Ok(reader.task_runs()?.into_iter().filter(|t| recent.contains(&t.job_run)).collect())
}

/// Reads the attempts that still matter to a queue's rate limit or circuit (started or failed
/// within its lookback). Queues without either cost nothing to read.
pub fn queue_history(
    reader: &dyn store::Snapshot,
    queues: &BTreeMap<String, QueueDef>,
    now_ms: u64,
) -> Result<QueueHistory, StoreError> {
    let since: BTreeMap<&str, u64> = queues
        .iter()
        .filter(|(_, q)| q.rate_limit.is_some() || q.circuit.is_some())
        .map(|(name, q)| {
            (name.as_str(), now_ms.saturating_sub(queue::lookback(q.rate_limit, q.circuit).as_millis() as u64))
        })
        .collect();
    let mut history = QueueHistory::default();
    let Some(&earliest) = since.values().min() else { return Ok(history) };
    for t in recent_task_runs(reader, earliest)? {
        let Some(&since) = since.get(t.queue.as_str()) else { continue };
        if t.ended_at_ms.is_some_and(|e| e < since) && t.state.is_terminal() {
            continue;
        }
        for a in reader.attempts_of(t.id)? {
            if a.started_at_ms >= since {
                history.starts.entry(t.queue.clone()).or_default().push(a.started_at_ms);
            }
            if let (Some(reason), Some(ended)) = (a.reason, a.ended_at_ms)
                && ended >= since
                && queue::trips_circuit(reason)
            {
                history.failures.entry(t.queue.clone()).or_default().push(ended);
            }
        }
    }
    for times in history.starts.values_mut().chain(history.failures.values_mut()) {
        times.sort_unstable();
    }
    Ok(history)
}

/// Live numbers of one queue, for `status` and the views.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot {
    pub name: String,
    pub concurrency: usize,
    pub paused: bool,
    pub ready: usize,
    pub running: usize,
    /// Open circuit: nothing starts from the queue until then (`circuit`).
    #[serde(default)]
    pub circuit_open_until_ms: Option<u64>,
}

pub struct Dispatcher {
    clock: SharedClock,
    journal: Addr<Journal>,
    queues: BTreeMap<String, QueueState>,
    workers_total: usize,
    running_total: usize,
    /// This node's labels (`--label`): what it may start (`model::routing::can_run`).
    labels: Vec<String>,
    idle: Vec<Addr<Worker>>,
    stopping: bool,
    /// Nothing is handed out while held: at start, until every resumed run has had the
    /// commands left in the inbox (a cancel must land before its task could start again).
    held: bool,
    wake: Option<SpawnHandle>,
    /// Round-robin start point so no queue always goes first.
    next_queue: usize,
    /// The keys of `queues`, fixed at start, for the round robin.
    names: Vec<String>,
    /// While a `Reserve` is answered: its task runs, and those handed out with their worker.
    reserving: Option<Reserving>,
    /// In a cluster: ready task runs are claimed from the database (`claim`), not handed out
    /// from the heaps, which stay empty.
    cluster: Option<Arc<ClusterNode>>,
    /// A claim is being made; `claim_again`: something woke the Dispatcher meanwhile.
    claiming: bool,
    claim_again: bool,
    /// Failed claims while the database is away, said once per outage.
    claim_outage: Outage,
    /// In a cluster: the queues whose last claim found nothing more ready here, where a new
    /// job run's task runs may start with its commit (`Reserve`, `model::start_at_submit`).
    nothing_ready: NothingReady,
}

/// What a claim found in one queue, besides the rows it took (`got` of the `asked`).
struct QueueAnswer {
    queue: String,
    asked: usize,
    got: usize,
    claim: crate::store::pg::queue::Claim,
}

/// The task runs a `Reserve` asks about, and those an idle worker was found for.
struct Reserving {
    asked: std::collections::HashSet<u64>,
    taken: Vec<(ReadyEntry, Addr<Worker>)>,
}

impl Dispatcher {
    pub fn new(
        clock: SharedClock,
        journal: Addr<Journal>,
        queues: &BTreeMap<String, QueueDef>,
        workers_total: usize,
        paused: &std::collections::BTreeSet<String>,
        mut history: QueueHistory,
        labels: Vec<String>,
    ) -> Dispatcher {
        let names = queues.keys().cloned().collect();
        let now = clock.now_ms();
        let queues = queues
            .iter()
            .map(|(name, def)| {
                let mut state = QueueState {
                    def: def.clone(),
                    ready: BinaryHeap::new(),
                    blocked: BTreeMap::new(),
                    running: 0,
                    paused: paused.contains(name),
                    starts: history.starts.remove(name).unwrap_or_default().into(),
                    failures: history.failures.remove(name).unwrap_or_default().into(),
                    circuit_until: None,
                    held_until: None,
                    cluster_circuit_until: None,
                };
                // Open since before this start: it said so then; it says when it closes.
                state.circuit_until = state.circuit_open_until(now);
                (name.clone(), state)
            })
            .collect();
        Dispatcher {
            clock,
            journal,
            queues,
            workers_total,
            running_total: 0,
            labels,
            idle: Vec::new(),
            stopping: false,
            held: false,
            wake: None,
            next_queue: 0,
            names,
            reserving: None,
            cluster: None,
            claiming: false,
            claim_again: false,
            nothing_ready: NothingReady::default(),
            claim_outage: Outage::default(),
        }
    }

    /// Puts `entries` in their queues' ready lists (or aside, when this node cannot run them).
    fn add(&mut self, entries: Vec<ReadyEntry>) {
        for mut entry in entries {
            let Some(queue) = self.queues.get_mut(&entry.queue) else {
                tracing::error!(task_run = entry.task_run, "unknown queue `{}`", entry.queue);
                continue;
            };
            entry.key = priority_key(entry.priority, entry.queued_at_ms, queue.def.aging);
            if can_run(&entry.requires, &self.labels) {
                queue.ready.push(entry);
            } else {
                queue.blocked.insert(entry.task_run, entry);
            }
        }
    }

    /// A cluster node's Dispatcher: it claims from the database (see `claim`).
    pub fn in_cluster(self, cluster: Option<Arc<ClusterNode>>) -> Dispatcher {
        Dispatcher { cluster, ..self }
    }

    /// Hands out as much work as the caps allow right now.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if self.stopping || self.held {
            return;
        }
        if self.cluster.is_some() {
            return self.claim(ctx);
        }
        let now = self.clock.now_ms();
        let mut earliest_wake = self.close_circuits(now);
        while !self.idle.is_empty() && self.running_total < self.workers_total {
            match self.pick(now, &mut earliest_wake) {
                Some(entry) => self.assign(entry, now),
                None => break,
            }
        }
        self.set_wake(ctx, earliest_wake, now);
    }

    /// Says which circuits closed by themselves; returns when the next open one closes.
    fn close_circuits(&mut self, now: u64) -> Option<u64> {
        let mut next = None;
        let cluster = self.cluster.is_some();
        for (name, queue) in &mut self.queues {
            let Some(until) = queue.circuit_until else { continue };
            queue.circuit_until = match cluster {
                // Opened by this node's recorded failure, until then (`record_failure`).
                true => Some(until).filter(|&u| u > now),
                false => queue.circuit_open_until(now),
            };
            match queue.circuit_until {
                Some(until) => next = Some(next.map_or(until, |n: u64| n.min(until))),
                None => {
                    let mut e = EngineEvent::new(EventData::QueueCircuitClosed, now);
                    e.queue = Some(name.clone());
                    self.journal.do_send(Publish(e));
                }
            }
        }
        next
    }

    /// The best entry of the next queue that may start one now, round robin over queues.
    fn pick(&mut self, now: u64, earliest_wake: &mut Option<u64>) -> Option<ReadyEntry> {
        for offset in 0..self.names.len() {
            let index = (self.next_queue + offset) % self.names.len();
            let Some(queue) = self.queues.get_mut(&self.names[index]) else { continue };
            if queue.paused || queue.circuit_until.is_some() || queue.running >= queue.def.concurrency {
                continue;
            }
            if queue.ready.is_empty() {
                continue;
            }
            if let Some(until) = queue.rate_limited_until(now) {
                *earliest_wake = Some(earliest_wake.map_or(until, |w| w.min(until)));
                continue;
            }
            while let Some(entry) = queue.ready.pop() {
                if entry.timed_out(now) {
                    entry.owner.do_send(QueueTimedOut { task_run: entry.task_run });
                    continue;
                }
                self.next_queue = index + 1;
                return Some(entry);
            }
        }
        None
    }

    fn assign(&mut self, entry: ReadyEntry, now: u64) {
        let Some(worker) = self.idle.pop() else { return };
        if let Some(queue) = self.queues.get_mut(&entry.queue) {
            queue.running += 1;
            if queue.def.rate_limit.is_some() {
                queue.starts.push_back(now);
            }
        }
        self.running_total += 1;
        match &mut self.reserving {
            Some(r) if r.asked.contains(&entry.task_run) => r.taken.push((entry, worker)),
            _ => worker.do_send(Assign(entry)),
        }
    }

    /// Cluster mode: claims as many ready task runs as workers are idle (`queue::claim`, one
    /// claiming connection), queues in turn; a declared queue's `concurrency` holds across
    /// nodes (the claim counts every node's running task runs), an undeclared one's is this
    /// node's `workers`; paused queues (on any node) are skipped, and a rate limit and a circuit
    /// hold over every node's starts and failures (`queue::claim_within`). Claimed rows go to
    /// idle workers.
    fn claim(&mut self, ctx: &mut Context<Self>) {
        if self.claiming {
            self.claim_again = true;
            return;
        }
        let now = self.clock.now_ms();
        // Circuits this node opened close by time, whether or not a worker is free.
        self.close_circuits(now);
        let wake = self.cluster_wake(now);
        self.set_wake(ctx, wake, now);
        let free = self.idle.len().min(self.workers_total.saturating_sub(self.running_total));
        let Some(node) = self.cluster.clone().filter(|_| free > 0) else { return };
        // A node whose lease ran out starts nothing (`model::lease::expired_duties`) until it
        // joined again, under the id it claims with then.
        if node.lease_lost() {
            return;
        }
        let mut asks = Vec::new();
        for offset in 0..self.names.len() {
            let name = &self.names[(self.next_queue + offset) % self.names.len()];
            let Some(queue) = self.queues.get_mut(name) else { continue };
            if queue.paused || queue.circuit_until.is_some() || queue.held_until.is_some_and(|t| t > now) {
                continue;
            }
            let (k, cap) = match queue.def.concurrency_is_workers {
                true => (queue.def.concurrency.saturating_sub(queue.running).min(free), None),
                false => (free, Some(u32::try_from(queue.def.concurrency).unwrap_or(u32::MAX))),
            };
            let limits = Limits { cap, rate_limit: queue.def.rate_limit, circuit: queue.def.circuit };
            if k > 0 {
                asks.push((name.clone(), k, limits));
            }
        }
        self.next_queue = self.next_queue.wrapping_add(1);
        if asks.is_empty() {
            return;
        }
        self.claiming = true;
        let began = self.nothing_ready.claim_began();
        let pool = node.backend.store().claim_pool().clone();
        let me = node.current();
        let claims = node.backend.spawn(async move {
            let mut c = pool.get().await?;
            let (mut left, mut got, mut answers) = (free, Vec::new(), Vec::new());
            for (queue, k, limits) in asks {
                if left == 0 {
                    break;
                }
                let asked = k.min(left);
                let mut claim = crate::store::pg::queue::claim_within(&mut c, &me, &queue, asked, &limits).await?;
                let rows = std::mem::take(&mut claim.claimed);
                left -= rows.len().min(left);
                answers.push(QueueAnswer { queue: queue.clone(), asked, got: rows.len(), claim });
                got.extend(rows.into_iter().map(|c| (queue.clone(), c)));
            }
            Ok::<_, crate::store::pg::PgError>((got, answers))
        });
        ctx.spawn(claims.into_actor(self).map(move |result, act, ctx| {
            act.claiming = false;
            let (claimed, answers) = match result {
                Ok(Ok(answer)) => {
                    if let Some(failures) = act.claim_outage.recovered() {
                        tracing::info!("cluster: claiming again after {failures} failed tries");
                    }
                    answer
                }
                Ok(Err(e)) => {
                    if let Some(note) = act.claim_outage.failed_note(act.clock.now_ms()) {
                        tracing::warn!("cluster: cannot claim ({e}); trying again at the next wake-up{note}");
                    }
                    Default::default()
                }
                Err(e) => {
                    tracing::warn!("cluster: the claim stopped ({e})");
                    Default::default()
                }
            };
            act.heard(answers, began, now);
            let wake = act.cluster_wake(act.clock.now_ms());
            act.set_wake(ctx, wake, now);
            // Claimed some: there may be more. Woken meanwhile: look again.
            let again = !claimed.is_empty() | std::mem::take(&mut act.claim_again);
            for (queue, claimed) in claimed {
                act.assign_claimed(queue, claimed);
            }
            if again {
                act.dispatch(ctx);
            }
        }));
    }

    /// A claimed task run goes to an idle worker (there is one: a claim takes at most as many
    /// as there were, and only claims take them in cluster mode).
    fn assign_claimed(&mut self, queue: String, claimed: crate::store::pg::queue::Claimed) {
        let Some(worker) = self.idle.pop() else {
            tracing::error!(task_run = claimed.id, "claimed with no idle worker to run it; giving it back");
            if let Some(node) = &self.cluster {
                super::worker::give_back(node, &claimed);
            }
            return;
        };
        if let Some(state) = self.queues.get_mut(&queue) {
            state.running += 1;
        }
        self.running_total += 1;
        worker.do_send(AssignClaimed { claimed, queue });
    }

    /// Cluster mode, `Reserve`: a new job run's ready task runs that may start with its commit
    /// (`model::start_at_submit`: nothing of their queue can be ahead of them, no rule of it is
    /// cluster-wide, a slot is free here) get a worker, their slot taken as by a claim; the
    /// others will be queued, and their queues are no longer known to hold nothing ready.
    fn reserve_in_cluster(&mut self, mut entries: Vec<ReadyEntry>) -> Vec<(ReadyEntry, Addr<Worker>)> {
        let now = self.clock.now_ms();
        let node_starts =
            !self.stopping && !self.held && self.cluster.as_ref().is_some_and(|n| n.start_at_submit && !n.lease_lost());
        for entry in &mut entries {
            let aging = self.queues.get(&entry.queue).and_then(|q| q.def.aging);
            entry.key = priority_key(entry.priority, entry.queued_at_ms, aging);
        }
        // Best first, as a claim would take them.
        entries.sort_by(|a, b| b.cmp(a));
        let mut taken = Vec::new();
        for entry in entries {
            let Some(queue) = self.queues.get_mut(&entry.queue) else { continue };
            let facts = QueueAtSubmit {
                cluster_wide_rule: !queue.def.concurrency_is_workers
                    || queue.def.rate_limit.is_some()
                    || queue.def.circuit.is_some(),
                paused_or_held: queue.paused
                    || queue.circuit_until.is_some()
                    || queue.held_until.is_some_and(|t| t > now),
                nothing_ready: self.nothing_ready.holds(&entry.queue),
                can_run: can_run(&entry.requires, &self.labels),
                slot_free: !self.idle.is_empty()
                    && self.running_total < self.workers_total
                    && queue.running < queue.def.concurrency,
                claim_under_way: self.claiming,
                node_starts,
            };
            match starts_at_submit(facts).then(|| self.idle.pop()).flatten() {
                Some(worker) => {
                    queue.running += 1;
                    self.running_total += 1;
                    taken.push((entry, worker));
                }
                None => self.nothing_ready.forget(&entry.queue),
            }
        }
        taken
    }

    /// Cluster mode, what a claim found in each queue it asked: queues whose rate limit or
    /// circuit (every node's starts and failures) let nothing more start are not asked again
    /// until the claim said; those it found empty may start new task runs at submit.
    fn heard(&mut self, answers: Vec<QueueAnswer>, began: ClaimBegan, now: u64) {
        let at = |d: Duration| now.saturating_add(d.as_millis() as u64);
        for QueueAnswer { queue: name, asked, got, claim } in answers {
            self.nothing_ready.claimed(began, &name, asked, got, claim.paused);
            let Some(queue) = self.queues.get_mut(&name) else { continue };
            queue.held_until = claim.look_again_in.map(at);
            queue.cluster_circuit_until = claim.circuit_open_for.map(at);
        }
    }

    /// Cluster mode: when to look again for what a limit holds now (a hold ends, a circuit this
    /// node opened closes); the LISTEN wake-ups and the poll cover the rest.
    fn cluster_wake(&self, now: u64) -> Option<u64> {
        let queues = self.queues.values();
        queues.flat_map(|q| [q.held_until, q.circuit_until]).flatten().filter(|&t| t > now).min()
    }

    fn set_wake(&mut self, ctx: &mut Context<Self>, at_ms: Option<u64>, now: u64) {
        if let Some(handle) = self.wake.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = at_ms {
            let wait = Duration::from_millis(at.saturating_sub(now).max(1));
            self.wake = Some(ctx.run_later(wait, |act, ctx| act.dispatch(ctx)));
        }
    }

    /// Entries that timed out while their queue was blocked leave it now, not when it unblocks.
    /// Entries this node cannot run leave likewise, and once their job run is gone.
    fn sweep_queue_timeouts(&mut self) {
        let now = self.clock.now_ms();
        for queue in self.queues.values_mut() {
            queue.blocked.retain(|_, entry| {
                if entry.timed_out(now) {
                    entry.owner.do_send(QueueTimedOut { task_run: entry.task_run });
                    return false;
                }
                entry.owner.connected()
            });
            if !queue.ready.iter().any(|e| e.timed_out(now)) {
                continue;
            }
            let (gone, kept): (Vec<ReadyEntry>, Vec<ReadyEntry>) =
                std::mem::take(&mut queue.ready).into_vec().into_iter().partition(|e| e.timed_out(now));
            queue.ready = kept.into();
            for entry in gone {
                entry.owner.do_send(QueueTimedOut { task_run: entry.task_run });
            }
        }
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(super::MAILBOX_CAPACITY);
        ctx.run_interval(QUEUE_TIMEOUT_SWEEP, |act, _| act.sweep_queue_timeouts());
    }
}

/// Ready task runs, all at once: a batch is ordered among itself before anything starts.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue(pub Vec<ReadyEntry>);

impl Handler<Enqueue> for Dispatcher {
    type Result = ();

    fn handle(&mut self, Enqueue(entries): Enqueue, ctx: &mut Self::Context) {
        self.add(entries);
        self.dispatch(ctx);
    }
}

/// A new job run's ready task runs, asked about *before* its records are committed: those an
/// idle worker may start now, by the same rules as any dispatch (priority, caps, rate limits,
/// circuits, pauses, labels), come back with that worker, its slot taken as by an `Assign`.
/// The job run commits them `running` together with its records, so a task that finds a worker
/// free at submit waits for one commit before its start, not two. The others are not kept:
/// the job run enqueues them once its records are durable, as ever.
#[derive(Message)]
#[rtype(result = "Vec<(ReadyEntry, Addr<Worker>)>")]
pub struct Reserve(pub Vec<ReadyEntry>);

impl Handler<Reserve> for Dispatcher {
    type Result = MessageResult<Reserve>;

    fn handle(&mut self, Reserve(entries): Reserve, ctx: &mut Self::Context) -> Self::Result {
        if self.cluster.is_some() {
            return MessageResult(self.reserve_in_cluster(entries));
        }
        if self.stopping || self.held || self.idle.is_empty() || self.running_total >= self.workers_total {
            return MessageResult(Vec::new());
        }
        let asked: std::collections::HashSet<u64> = entries.iter().map(|e| e.task_run).collect();
        self.add(entries);
        self.reserving = Some(Reserving { asked, taken: Vec::new() });
        self.dispatch(ctx);
        let Some(Reserving { asked, taken }) = self.reserving.take() else { return MessageResult(Vec::new()) };
        if taken.len() < asked.len() {
            for queue in self.queues.values_mut() {
                queue.ready.retain(|e| !asked.contains(&e.task_run));
                queue.blocked.retain(|id, _| !asked.contains(id));
            }
        }
        MessageResult(taken)
    }
}

/// Cluster mode: task runs may have become ready in these queues (a notification), or in any
/// (`None`: the poll, a listener reconnected).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClaimNow(pub Option<Vec<String>>);

impl Handler<ClaimNow> for Dispatcher {
    type Result = ();

    fn handle(&mut self, ClaimNow(queues): ClaimNow, ctx: &mut Self::Context) {
        match queues {
            Some(queues) => queues.iter().for_each(|q| self.nothing_ready.forget(q)),
            None => self.nothing_ready.woken(),
        }
        self.dispatch(ctx);
    }
}

/// Cluster mode: a job run of this node is about to commit task runs `queued` in these queues
/// (`landed: false`, sent before its commit, so no later `Reserve` starts a newer task run
/// ahead of them), or that commit landed or never will (`landed: true`; see [`QueuingNote`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Queuing {
    pub queues: Vec<String>,
    pub landed: bool,
}

impl Handler<Queuing> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: Queuing, _ctx: &mut Self::Context) {
        for queue in &msg.queues {
            match msg.landed {
                false => self.nothing_ready.queuing(queue),
                true => self.nothing_ready.queued(queue),
            }
        }
    }
}

/// A commit that queues task runs in `queues`, said to the Dispatcher now (`Queuing`); dropped
/// — after the commit, or with it when it never lands — it says so (`landed`), so the count of
/// commits under way never stays up.
pub struct QueuingNote {
    dispatcher: Addr<Dispatcher>,
    queues: Vec<String>,
}

impl QueuingNote {
    pub fn send(dispatcher: Addr<Dispatcher>, queues: Vec<String>) -> QueuingNote {
        dispatcher.do_send(Queuing { queues: queues.clone(), landed: false });
        QueuingNote { dispatcher, queues }
    }
}

impl Drop for QueuingNote {
    fn drop(&mut self) {
        self.dispatcher.do_send(Queuing { queues: std::mem::take(&mut self.queues), landed: true });
    }
}

/// A failed attempt of `queue` ended (one that counts for its circuit), after its outcome was
/// committed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttemptFailed {
    pub queue: String,
    pub ended_at_ms: u64,
}

impl Handler<AttemptFailed> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: AttemptFailed, ctx: &mut Self::Context) {
        if self.cluster.is_some() {
            return self.record_failure(msg.queue, ctx);
        }
        let now = self.clock.now_ms();
        let Some(queue) = self.queues.get_mut(&msg.queue) else { return };
        if queue.def.circuit.is_none() {
            return;
        }
        let at = queue.failures.partition_point(|&t| t <= msg.ended_at_ms);
        queue.failures.insert(at, msg.ended_at_ms);
        let was_open = queue.circuit_until.is_some();
        queue.circuit_until = queue.circuit_open_until(now);
        if let (false, Some(until)) = (was_open, queue.circuit_until) {
            self.say_circuit_opened(&msg.queue, until, now);
        }
        self.dispatch(ctx);
    }
}

impl Dispatcher {
    fn say_circuit_opened(&self, name: &str, until: u64, now: u64) {
        let Some(rule) = self.queues.get(name).and_then(|q| q.def.circuit) else { return };
        let opened = EventData::QueueCircuitOpened {
            failures: rule.failures,
            within_ms: rule.within.as_millis() as u64,
            until_ms: until,
        };
        let mut e = EngineEvent::new(opened, now);
        e.queue = Some(name.to_string());
        self.journal.do_send(Publish(e));
    }

    /// Cluster mode: the failure goes to the database (`queue::record_failure`), where every
    /// node's claims count it. The node whose failure opened the circuit says so, and later
    /// that it closed; the others just find the queue held when they claim.
    fn record_failure(&mut self, name: String, ctx: &mut Context<Self>) {
        let Some(queue) = self.queues.get(&name) else { return };
        let limits = Limits { cap: None, rate_limit: queue.def.rate_limit, circuit: queue.def.circuit };
        let Some(node) = self.cluster.clone().filter(|_| limits.circuit.is_some()) else { return };
        let pool = node.backend.store().pool().clone();
        let queue = name.clone();
        let recorded = node.backend.spawn(async move {
            let mut c = pool.get().await?;
            crate::store::pg::queue::record_failure(&mut c, &queue, &limits).await
        });
        ctx.spawn(recorded.into_actor(self).map(move |result, act, ctx| {
            let now = act.clock.now_ms();
            match result {
                Ok(Ok(Some(open_for))) => {
                    let until = now.saturating_add(open_for.as_millis() as u64);
                    if let Some(queue) = act.queues.get_mut(&name) {
                        queue.circuit_until = Some(until);
                    }
                    act.say_circuit_opened(&name, until, now);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!("cluster: cannot record a failure of queue `{name}` ({e})"),
                Err(e) => tracing::warn!("cluster: recording a failure of queue `{name}` stopped ({e})"),
            }
            act.dispatch(ctx);
        }));
    }
}

/// A worker is free: after an attempt in `finished_queue`, or at its (re)start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerIdle {
    pub worker: Addr<Worker>,
    pub finished_queue: Option<String>,
}

impl Handler<WorkerIdle> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: WorkerIdle, ctx: &mut Self::Context) {
        if let Some(name) = &msg.finished_queue {
            if let Some(queue) = self.queues.get_mut(name) {
                queue.running = queue.running.saturating_sub(1);
            }
            self.running_total = self.running_total.saturating_sub(1);
        }
        self.idle.push(msg.worker);
        self.dispatch(ctx);
    }
}

#[derive(Message)]
#[rtype(result = "bool")]
pub struct SetPaused {
    pub queue: String,
    pub paused: bool,
}

impl Handler<SetPaused> for Dispatcher {
    type Result = bool;

    fn handle(&mut self, msg: SetPaused, ctx: &mut Self::Context) -> bool {
        let Some(queue) = self.queues.get_mut(&msg.queue) else { return false };
        queue.paused = msg.paused;
        self.dispatch(ctx);
        true
    }
}

/// Graceful stop: nothing new starts from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDispatching;

impl Handler<StopDispatching> for Dispatcher {
    type Result = ();

    fn handle(&mut self, _: StopDispatching, _ctx: &mut Self::Context) {
        self.stopping = true;
    }
}

/// Holds (`true`) or releases (`false`) all dispatching; see `Dispatcher::held`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Hold(pub bool);

impl Handler<Hold> for Dispatcher {
    type Result = ();

    fn handle(&mut self, Hold(held): Hold, ctx: &mut Self::Context) {
        self.held = held;
        self.dispatch(ctx);
    }
}

#[derive(Message)]
#[rtype(result = "Vec<QueueSnapshot>")]
pub struct Snapshot;

impl Handler<Snapshot> for Dispatcher {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        let now = self.clock.now_ms();
        MessageResult(
            self.queues
                .iter()
                .map(|(name, q)| QueueSnapshot {
                    name: name.clone(),
                    concurrency: q.def.concurrency,
                    paused: q.paused,
                    ready: q.ready.len(),
                    running: q.running,
                    circuit_open_until_ms: q.circuit_until.or(q.cluster_circuit_until.filter(|&u| u > now)),
                })
                .collect(),
        )
    }
}
