//! Worker actors: one per worker slot, one attempt at a time. A worker claims its task run from
//! the job run (which commits `running` + the attempt number before answering), or is handed
//! one its job run claimed for it in its first commit (`Launch`, reserved at submit), starts it
//! through the `Executor`, streams what the task reports back to the job run, and reports the
//! exit. After the watchdog kills its attempt the worker stops and its supervisor restarts it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::mpsc;

use super::cluster::{ClusterNode, QueuedSpec};
use super::dispatcher::{Dispatcher, ReadyEntry, WorkerIdle};
use super::job_run::{
    AttemptEnded, Claim, Claimed, CostAdded, JobRun, ProcessStarted, ProgressReported, WarningReported,
};
use super::journal::{Journal, Publish};
use super::supervisor::{LocalOwner, RestartLedger, Supervisor};
use super::watchdog::{WatchList, overdue_reason};
use super::{EngineEvent, EventData, SharedClock};
use crate::executor::{
    AttemptEvent, AttemptExit, AttemptSpec, Durable, Executor, KILL_GRACE, ProcessHandle, spawn_off_thread,
};
use crate::model::FailReason;
use crate::model::cost::{CostDelta, Pricing};
use crate::model::lease::Refused;
use crate::store::pg::PgError;
use crate::store::pg::mail::{Letter, Mail};
use crate::store::pg::queue::{self, Verdict};
use crate::store::{AttemptRecord, MAX_ATTEMPT_WARNINGS, codec};

/// What the watchdog and the killers see of a worker's current attempt. Shared across threads;
/// the hot path (a line of output) only touches one atomic.
pub struct Activity {
    last_ms: AtomicU64,
    /// The worker takes no message while it waits for a commit before a start (`claim_from`,
    /// `launch` with `durable`): it is waiting for the store, not wedged, and the watchdog does
    /// not ping it meanwhile — a database away for a minute must not stop the node.
    awaiting_store: std::sync::atomic::AtomicBool,
    inner: Mutex<ActivityState>,
    /// What kills the attempt's processes.
    executor: Arc<dyn Executor>,
}

#[derive(Default)]
struct ActivityState {
    active: bool,
    task_run: u64,
    attempt: u32,
    started_ms: u64,
    timeout_ms: u64,
    heartbeat_timeout_ms: u64,
    process: Option<ProcessHandle>,
    kill_reason: Option<Killed>,
    /// The grace period of a kill asked for before the process existed.
    kill_grace: Duration,
}

/// A kill gaffer asked for, and whether it found the attempt's process still running (a kill
/// that comes after the process exited by itself did not end the attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Killed {
    reason: FailReason,
    found_running: bool,
}

impl Activity {
    pub fn new(executor: Arc<dyn Executor>) -> Activity {
        Activity {
            last_ms: AtomicU64::default(),
            awaiting_store: Default::default(),
            inner: Mutex::default(),
            executor,
        }
    }

    fn await_store(&self, waiting: bool) {
        self.awaiting_store.store(waiting, Ordering::Relaxed);
    }

    /// The worker waits for a commit (see `awaiting_store`).
    pub fn awaits_store(&self) -> bool {
        self.awaiting_store.load(Ordering::Relaxed)
    }

    fn begin(&self, task_run: u64, attempt: u32, now_ms: u64, timeout: Duration, heartbeat_timeout: Duration) {
        self.last_ms.store(now_ms, Ordering::Relaxed);
        if let Ok(mut s) = self.inner.lock() {
            *s = ActivityState {
                active: true,
                task_run,
                attempt,
                started_ms: now_ms,
                timeout_ms: timeout.as_millis() as u64,
                heartbeat_timeout_ms: heartbeat_timeout.as_millis() as u64,
                process: None,
                kill_reason: None,
                kill_grace: Duration::ZERO,
            };
        }
    }

    /// The attempt's process exists. A kill asked for while it was being started (the spawn
    /// runs off the worker's thread) reaches it now.
    fn set_process(&self, process: Option<ProcessHandle>) {
        let Ok(mut s) = self.inner.lock() else { return };
        s.process = process;
        if let (Some(process), Some(killed)) = (process, s.kill_reason.as_mut()) {
            killed.found_running = true;
            tokio::spawn(self.executor.terminate(process, s.kill_grace));
        }
    }

    fn touch(&self, now_ms: u64) {
        self.last_ms.store(now_ms, Ordering::Relaxed);
    }

    fn end(&self) -> Option<Killed> {
        let mut s = self.inner.lock().ok()?;
        s.active = false;
        s.process = None;
        s.kill_reason.take()
    }

    /// What the worker is doing, for the views: `None` when idle.
    pub fn current(&self) -> Option<CurrentAttempt> {
        let s = self.inner.lock().ok()?;
        s.active.then(|| CurrentAttempt {
            task_run: s.task_run,
            attempt: s.attempt,
            started_ms: s.started_ms,
            last_activity_ms: self.last_ms.load(Ordering::Relaxed),
            pid: s.process.map(|p| p.pid),
        })
    }

    /// Why the watchdog should kill the attempt now, if it should.
    pub fn overdue(&self, now_ms: u64) -> Option<FailReason> {
        let s = self.inner.lock().ok()?;
        if !s.active || s.kill_reason.is_some() {
            return None;
        }
        overdue_reason(now_ms, s.started_ms, self.last_ms.load(Ordering::Relaxed), s.timeout_ms, s.heartbeat_timeout_ms)
    }

    /// Kills the attempt's whole process group (SIGTERM, then SIGKILL after the grace period).
    /// The first reason given is the one recorded.
    pub fn kill(&self, reason: FailReason) {
        self.kill_with_grace(reason, KILL_GRACE);
    }

    /// SIGKILLs the attempt's process group at once, if it has one (see `kill_all_now`).
    pub fn kill_now(&self) {
        let Ok(s) = self.inner.lock() else { return };
        if let Some(process) = s.process.filter(|_| s.active) {
            self.executor.kill_now(process);
        }
    }

    pub fn kill_with_grace(&self, reason: FailReason, grace: Duration) {
        let Ok(mut s) = self.inner.lock() else { return };
        if !s.active {
            return;
        }
        let found_running = s.process.is_some_and(|p| self.executor.is_running(&p));
        s.kill_reason.get_or_insert(Killed { reason, found_running });
        match s.process {
            Some(process) => drop(tokio::spawn(self.executor.terminate(process, grace))),
            // Still starting: `set_process` kills it.
            None => s.kill_grace = grace,
        }
    }
}

/// A worker's attempt as the views see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CurrentAttempt {
    pub task_run: u64,
    pub attempt: u32,
    pub started_ms: u64,
    pub last_activity_ms: u64,
    pub pid: Option<u32>,
}

/// Who decides for the job run of the attempt a worker runs, and how the worker tells it what
/// happens: a JobRun actor of this engine by message, or in a cluster the node that owns the
/// job run, by mail (`store::pg::mail`) with the outcome through the fenced completion.
pub enum Owner {
    Local(Addr<JobRun>),
    Remote(Box<RemoteOwner>),
}

/// An attempt of a job run another node owns, as this node runs it.
pub struct RemoteOwner {
    node: Arc<ClusterNode>,
    /// What the completion writes: kept up to date with what the attempt reports.
    record: AttemptRecord,
    journal: Addr<Journal>,
    /// `Started` was mailed: an attempt that never started (a spawn error) mails it before it
    /// ends, so that its owner records it.
    started: bool,
}

impl RemoteOwner {
    fn mail_started(&mut self, process: Option<ProcessHandle>) {
        if let Some(p) = process {
            (self.record.pid, self.record.pgid, self.record.start_ticks) = (Some(p.pid), Some(p.pgid), p.start_ticks);
        }
        self.started = true;
        let mail = Mail::Started { node: self.node.id(), process: process.map(|p| (p.pid, p.pgid, p.start_ticks)) };
        self.node.mailer.send(Owner::letter(self, mail));
    }
}

impl Owner {
    fn letter(remote: &RemoteOwner, mail: Mail) -> Letter {
        let a = &remote.record;
        Letter { job_run: a.job_run, to_node: None, task_run: a.task_run, attempt: a.n, mail }
    }

    fn started(&mut self, task_run: u64, attempt: u32, process: Option<ProcessHandle>) {
        match self {
            Owner::Local(owner) => owner.do_send(ProcessStarted { task_run, attempt, process }),
            Owner::Remote(remote) => remote.mail_started(process),
        }
    }

    fn progress(&mut self, task_run: u64, text: String) {
        match self {
            Owner::Local(owner) => owner.do_send(ProgressReported { task_run, text }),
            Owner::Remote(remote) => remote.node.mailer.send(Owner::letter(remote, Mail::Progress { text })),
        }
    }

    fn cost(&mut self, task_run: u64, attempt: u32, delta: CostDelta) {
        match self {
            Owner::Local(owner) => owner.do_send(CostAdded { task_run, attempt, delta }),
            Owner::Remote(remote) => {
                remote.record.add_cost(delta.model.as_deref(), &delta.usage);
                let mail = Mail::Cost { usage: delta.usage, model: delta.model, unpriced: delta.unpriced };
                remote.node.mailer.send(Owner::letter(remote, mail));
            }
        }
    }

    fn warning(&mut self, task_run: u64, attempt: u32, text: String) {
        match self {
            Owner::Local(owner) => owner.do_send(WarningReported { task_run, attempt, text }),
            Owner::Remote(remote) => {
                remote.record.add_warning(text.clone());
                remote.node.mailer.send(Owner::letter(remote, Mail::Warning { text }));
            }
        }
    }

    /// The attempt is over. Remotely: its record goes in through the fenced completion, and
    /// only an outcome taken is mailed (`Ended`); a refused one is said here, never applied.
    fn ended(self, ended: AttemptEnded, now_ms: u64) {
        let mut remote = match self {
            Owner::Local(owner) => return owner.do_send(ended),
            Owner::Remote(remote) => remote,
        };
        if !remote.started {
            remote.mail_started(None);
        }
        let RemoteOwner { node, mut record, journal, .. } = *remote;
        record.ended_at_ms = Some(now_ms);
        record.exit_code = ended.exit.and_then(|e| e.exit_code);
        record.signal = ended.exit.and_then(|e| e.signal);
        record.reason = ended.reason;
        record.detail = ended.detail.clone();
        let mail = Mail::Ended {
            exit_code: record.exit_code,
            signal: record.signal,
            reason: ended.reason,
            detail: ended.detail,
            outputs: ended.outputs,
        };
        let letter =
            Letter { job_run: record.job_run, to_node: None, task_run: record.task_run, attempt: record.n, mail };
        actix::spawn(async move {
            let (task_run, n) = (record.task_run, record.n);
            match complete_retrying(&node, record).await {
                Ok(Verdict::Accepted) => node.mailer.send(letter),
                Ok(Verdict::Refused(why)) => {
                    let message = format!(
                        "the outcome of attempt {n} was refused by the store ({why:?}): another node decides now"
                    );
                    tracing::warn!(task_run, "{message}");
                    let mut event = EngineEvent::new(EventData::TaskWarning { message }, now_ms);
                    (event.task_run, event.attempt, event.job_run) = (Some(task_run), Some(n), Some(letter.job_run));
                    journal.do_send(Publish(event));
                }
                Err(e) => tracing::error!(task_run, "cannot record the outcome of attempt {n}: {e}"),
            }
        });
    }
}

/// The fenced completion of `record`, tried again while the database is away (a restart) and
/// this node is the one that ran it: an outcome dropped here would leave its task run
/// `running` with nobody running it. A try whose answer was lost may have been taken: the next
/// then finds the attempt ended with no node (`OtherNode` for this very attempt, which no other
/// node can hold) and counts as taken.
async fn complete_retrying(node: &ClusterNode, record: AttemptRecord) -> Result<Verdict, PgError> {
    let me = node.id();
    let mut pause = Duration::from_millis(50);
    let mut tried = false;
    loop {
        match node.completer().complete(record.clone()).await {
            Ok(Verdict::Refused(Refused::OtherNode)) if tried => return Ok(Verdict::Accepted),
            Err(e) if !node.lease_lost() && node.id() == me => {
                tracing::warn!(
                    task_run = record.task_run,
                    "cannot record the outcome of attempt {} yet ({e}); trying again in {pause:?}",
                    record.n
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                tried = true;
            }
            other => return other,
        }
    }
}

/// The attempt a worker is running.
struct Current {
    task_run: u64,
    attempt: u32,
    queue: String,
    owner: Owner,
    pricing: Arc<Pricing>,
    outputs: BTreeMap<String, String>,
    warnings: usize,
    /// The agent's result said it failed.
    agent_error: Option<String>,
}

pub struct Worker {
    pub id: usize,
    clock: SharedClock,
    executor: Arc<dyn Executor>,
    dispatcher: Addr<Dispatcher>,
    journal: Addr<Journal>,
    watch: WatchList,
    ledger: RestartLedger,
    activity: Arc<Activity>,
    current: Option<Current>,
    /// In a cluster: what running attempts of other nodes' job runs takes.
    cluster: Option<ClusterLink>,
    /// The queue slot to give back at the next start (set when stopping for a restart).
    release_on_start: Option<String>,
    restarts: u32,
    restart_reason: Option<String>,
}

impl Worker {
    pub fn new(
        id: usize,
        clock: SharedClock,
        executor: Arc<dyn Executor>,
        dispatcher: Addr<Dispatcher>,
        journal: Addr<Journal>,
        watch: WatchList,
        ledger: RestartLedger,
    ) -> Worker {
        Worker {
            cluster: None,
            id,
            clock,
            executor: executor.clone(),
            dispatcher,
            journal,
            watch,
            ledger,
            activity: Arc::new(Activity::new(executor)),
            current: None,
            release_on_start: None,
            restarts: 0,
            restart_reason: None,
        }
    }

    /// A cluster node's worker: it also runs attempts of job runs other nodes own.
    pub fn in_cluster(self, cluster: Option<ClusterLink>) -> Worker {
        Worker { cluster, ..self }
    }

    fn free(&mut self, finished_queue: Option<String>, ctx: &mut Context<Self>) {
        self.dispatcher.do_send(WorkerIdle { worker: ctx.address(), finished_queue });
    }

    /// Starts `claimed`'s attempt; with `durable`, once its claim's commit is durable (a claim
    /// whose commit failed starts nothing and frees the worker).
    /// `claimed` is this worker's attempt now (before its process starts, or fails to): its
    /// spec, to start.
    fn begin(&mut self, claimed: Claimed, queue: String) -> AttemptSpec {
        let (task_run, attempt) = (claimed.spec.task_run, claimed.spec.attempt);
        self.current = Some(Current {
            task_run,
            attempt,
            queue,
            owner: claimed.owner,
            pricing: claimed.pricing,
            outputs: BTreeMap::new(),
            warnings: 0,
            agent_error: None,
        });
        self.activity.begin(task_run, attempt, self.clock.now_ms(), claimed.timeout, claimed.heartbeat_timeout);
        claimed.spec
    }

    fn launch(&mut self, claimed: Claimed, queue: String, durable: Option<Durable>, ctx: &mut Context<Self>) {
        let task_run = claimed.spec.task_run;
        let attempt = claimed.spec.attempt;
        let spec = self.begin(claimed, queue);
        let (tx, rx) = mpsc::unbounded_channel();
        // Off this thread, which runs every worker and job run; the worker takes no message
        // until the process exists (or could not be started).
        self.activity.await_store(durable.is_some());
        let spawning = spawn_off_thread(self.executor.clone(), spec, tx, durable);
        ctx.wait(spawning.into_actor(self).map(move |spawned, act, ctx| {
            act.activity.await_store(false);
            match spawned {
                None => {
                    act.activity.end();
                    let queue = act.current.take().map(|c| c.queue);
                    act.free(queue, ctx);
                }
                Some(Ok(running)) => {
                    act.activity.set_process(running.process);
                    if let Some(current) = act.current.as_mut() {
                        current.owner.started(task_run, attempt, running.process);
                    }
                    act.follow(rx, running.done, ctx);
                }
                Some(Err(e)) => {
                    let reason =
                        if e.is_resource_exhaustion() { FailReason::ResourceExhausted } else { FailReason::SpawnError };
                    act.finish(None, Some((reason, e.to_string())), ctx)
                }
            }
        }));
    }

    /// Streams the attempt's events into this actor, in order, then its exit.
    fn follow(
        &self,
        mut rx: mpsc::UnboundedReceiver<AttemptEvent>,
        done: std::pin::Pin<Box<dyn Future<Output = AttemptExit> + Send>>,
        ctx: &mut Context<Self>,
    ) {
        let addr = ctx.address();
        let activity = self.activity.clone();
        let clock = self.clock.clone();
        actix::spawn(async move {
            let mut done = done;
            let mut exit = None;
            loop {
                tokio::select! {
                    // Any sign of life counts for the inactivity watchdog: a line of output, a
                    // heartbeat, and also progress, cost and outputs on fd 3.
                    event = rx.recv() => match event {
                        Some(AttemptEvent::Activity | AttemptEvent::Heartbeat) => activity.touch(clock.now_ms()),
                        Some(other) => {
                            activity.touch(clock.now_ms());
                            let _ = addr.send(Signal(other)).await;
                        }
                        None => break,
                    },
                    finished = &mut done, if exit.is_none() => exit = Some(finished),
                }
            }
            let exit = match exit {
                Some(exit) => exit,
                None => done.await,
            };
            let _ = addr.send(Finished(exit)).await;
        });
    }

    /// Reports the attempt's end to its job run and frees the slot (or restarts the worker
    /// first, when the watchdog had to kill the attempt).
    fn finish(
        &mut self,
        exit: Option<AttemptExit>,
        spawn_error: Option<(FailReason, String)>,
        ctx: &mut Context<Self>,
    ) {
        let killed = self.activity.end();
        let Some(current) = self.current.take() else { return };
        let (reason, detail) = why_it_ended(spawn_error, killed, exit, current.agent_error);
        let ended = AttemptEnded {
            task_run: current.task_run,
            attempt: current.attempt,
            exit,
            reason,
            detail,
            outputs: current.outputs,
        };
        current.owner.ended(ended, self.clock.now_ms());
        if matches!(reason, Some(FailReason::Timeout | FailReason::HeartbeatTimeout)) {
            self.release_on_start = Some(current.queue);
            self.restart_reason = reason.map(|r| r.as_str().to_string());
            ctx.stop();
        } else {
            self.free(Some(current.queue), ctx);
        }
    }

    fn on_signal(&mut self, event: AttemptEvent) {
        let Some(current) = self.current.as_mut() else { return };
        match event {
            AttemptEvent::Progress(text) => current.owner.progress(current.task_run, text),
            AttemptEvent::Cost(report) => {
                let delta = current.pricing.price(&report);
                current.owner.cost(current.task_run, current.attempt, delta);
            }
            AttemptEvent::Output { key, value } => {
                current.outputs.insert(key, value);
            }
            AttemptEvent::Warning(text) => {
                current.warnings += 1;
                // Already in the attempt's log; the first ones are also kept on its record and
                // shown (`show`, the TUI), the rest only counted there.
                tracing::debug!(task_run = current.task_run, attempt = current.attempt, "{text}");
                if current.warnings <= MAX_ATTEMPT_WARNINGS {
                    let (task_run, attempt) = (current.task_run, current.attempt);
                    current.owner.warning(task_run, attempt, text);
                }
            }
            AttemptEvent::AgentError(detail) => current.agent_error = Some(detail),
            AttemptEvent::Activity | AttemptEvent::Heartbeat => {}
        }
    }
}

/// Why an attempt ended (`None`: it succeeded), from how it went: a spawn error, a kill gaffer
/// asked for, the exit status, and what the agent's result said.
fn why_it_ended(
    spawn_error: Option<(FailReason, String)>,
    killed: Option<Killed>,
    exit: Option<AttemptExit>,
    agent_error: Option<String>,
) -> (Option<FailReason>, Option<String>) {
    let (reason, detail) = how_the_process_ended(spawn_error, killed, exit);
    match (reason, agent_error) {
        // Exit 0, but the agent's own result says it failed: not a success.
        (None, Some(detail)) => (Some(FailReason::AgentError), Some(detail)),
        (reason, _) => (reason, detail),
    }
}

fn how_the_process_ended(
    spawn_error: Option<(FailReason, String)>,
    killed: Option<Killed>,
    exit: Option<AttemptExit>,
) -> (Option<FailReason>, Option<String>) {
    match (spawn_error, killed, exit) {
        (Some((reason, detail)), _, _) => (Some(reason), Some(detail)),
        // A kill that found the process already gone did not end the attempt: an agent's JSON
        // result (and the cost that crosses a budget) is read after it exited 0. Its work is
        // done and paid for, so it succeeded. A process that exits 0 *because* of the SIGTERM
        // (a trap) was found running, and keeps the kill's reason.
        (None, Some(Killed { found_running: false, .. }), Some(exit)) if exit.success() => (None, None),
        (None, Some(killed), _) => (Some(killed.reason), None),
        (None, None, Some(exit)) if !exit.success() => (Some(FailReason::ExitCode), None),
        _ => (None, None),
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(super::MAILBOX_CAPACITY);
        if let Ok(mut watch) = self.watch.lock() {
            watch.workers.insert(self.id, (self.activity.clone(), ctx.address()));
        }
        let release = self.release_on_start.take();
        self.free(release, ctx);
    }
}

impl actix::Supervised for Worker {
    /// actix reuses this struct: reset it, count the restart, say so.
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.restarts += 1;
        self.current = None;
        self.activity = Arc::new(Activity::new(self.executor.clone()));
        let reason = self.restart_reason.take().unwrap_or_else(|| "stopped".into());
        self.ledger.record(self.id, &reason);
        if let Ok(mut watch) = self.watch.lock() {
            *watch.restarts.entry(self.id).or_default() += 1;
        }
        let restarted = EventData::WorkerRestarted { worker: self.id as u64, reason, restarts: self.restarts };
        let event = EngineEvent::new(restarted, self.clock.now_ms());
        self.journal.do_send(Publish(event));
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Assign(pub ReadyEntry);

impl Handler<Assign> for Worker {
    type Result = ();

    fn handle(&mut self, Assign(entry): Assign, ctx: &mut Self::Context) {
        let queue = entry.queue.clone();
        self.claim_from(entry.owner, entry.task_run, None, queue, ctx);
    }
}

impl Worker {
    /// Asks the local JobRun `owner` for attempt `attempt` (any: `None`) of `task_run`, and
    /// starts it if granted.
    fn claim_from(
        &mut self,
        owner: Addr<JobRun>,
        task_run: u64,
        attempt: Option<u32>,
        queue: String,
        ctx: &mut Context<Self>,
    ) {
        // The owner answers once the claim's commit is durable.
        self.activity.await_store(true);
        let claim = owner.send(Claim { task_run, attempt, worker: ctx.address() });
        ctx.wait(claim.into_actor(self).map(move |answer, act, ctx| {
            act.activity.await_store(false);
            match answer {
                Ok(Some(claimed)) => act.launch(claimed, queue, None, ctx),
                _ => act.free(Some(queue), ctx),
            }
        }));
    }

    /// A task run this node claimed from the cluster's queue whose job run another node owns:
    /// its spec, as the owner rendered it, starts here at once.
    fn launch_for_remote_owner(&mut self, claimed: queue::Claimed, queue: String, ctx: &mut Context<Self>) {
        let Some(link) = self.cluster.clone() else { return self.free(Some(queue), ctx) };
        let spec = claimed.spec.as_deref().map(codec::decode::<QueuedSpec>);
        let mut spec = match spec {
            Some(Ok(spec)) if spec.task_run == claimed.id && spec.attempt == claimed.attempt => spec,
            // Its owner could not render it, and fails it itself (or the row is not ours to run).
            other => {
                tracing::debug!(task_run = claimed.id, "claimed without a spec to run: {other:?}");
                give_back(&link.node, &claimed);
                return self.free(Some(queue), ctx);
            }
        };
        let secrets = render_secret_fields(&link, &mut spec).and_then(|()| read_env_files(&link, &mut spec));
        let mut record =
            AttemptRecord::started(claimed.id, claimed.record.job_run, claimed.attempt, self.clock.now_ms());
        record.model = spec.model.clone();
        let remote = RemoteOwner { node: link.node.clone(), record, journal: self.journal.clone(), started: false };
        let started = Claimed {
            spec: spec.to_attempt_spec(&link.state_dir),
            timeout: Duration::from_millis(spec.timeout_ms),
            heartbeat_timeout: Duration::from_millis(spec.heartbeat_timeout_ms),
            pricing: link.pricing.clone(),
            owner: Owner::Remote(Box::new(remote)),
        };
        match secrets {
            Ok(()) => self.launch(started, queue, None, ctx),
            Err(why) => {
                tracing::warn!(task_run = claimed.id, "cluster: {why}");
                // Never run with a secret left out: the attempt fails here, saying why.
                self.begin(started, queue);
                self.finish(None, Some((FailReason::SpawnError, why)), ctx);
            }
        }
    }
}

/// Renders the fields of `spec` that read a secret param (its owner left them out of the
/// database) from the secrets this node holds; refuses, naming the node, the job run and the
/// params, when it does not hold them.
fn render_secret_fields(link: &ClusterLink, spec: &mut QueuedSpec) -> Result<(), String> {
    let Some(held_back) = spec.secret_fields.take() else { return Ok(()) };
    let node = link.node.current().name.clone();
    let (job_run, task) = (spec.job_run, spec.task.clone());
    let cannot = |why: String| format!("node {node} cannot run job run j{job_run}'s task `{task}`: {why}");
    let Some(job) = link.workflow.jobs.iter().find(|j| j.name == spec.job) else {
        return Err(cannot(format!("its workflow has no job `{}`", spec.job)));
    };
    let secrets = link.secrets.for_runner(job, spec.job_run, &held_back.names).map_err(|why| {
        cannot(format!("{why}, to `gaffer serve` on this node (every node that may run it needs them)"))
    })?;
    held_back.render_into(spec, &secrets).map_err(cannot)
}

/// Puts the `env_file` values of `spec` (never stored) back from this node's files
/// (`cluster::env_files`); refuses, naming the node, the job run and the file, when it cannot.
fn read_env_files(link: &ClusterLink, spec: &mut QueuedSpec) -> Result<(), String> {
    super::cluster::env_files::read_into(spec, &link.workflow).map_err(|why| {
        format!("node {} cannot run job run j{}'s task `{}`: {why}", link.node.current().name, spec.job_run, spec.task)
    })
}

/// How long a row given back (`queue::give_back`) waits before it may be claimed again: its
/// owner renders it meanwhile, or stops and leaves it to the node that adopts the run.
const GIVEN_BACK_FOR: Duration = Duration::from_secs(1);

/// A claimed row this node cannot run goes back to the queue, not left `running` with nobody
/// running it.
pub(super) fn give_back(node: &ClusterNode, claimed: &queue::Claimed) {
    let (pool, me, task_run, attempt) = (node.backend.store().pool().clone(), node.id(), claimed.id, claimed.attempt);
    drop(node.backend.spawn(async move {
        let given = match pool.get().await {
            Ok(c) => queue::give_back(&c, me, task_run, attempt, GIVEN_BACK_FOR).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = given {
            tracing::warn!(
                task_run,
                "cluster: cannot give back a claim it cannot run ({e}); its owner or adopter will"
            );
        }
    }));
}

/// What a worker of a cluster node needs besides its engine's actors.
#[derive(Clone)]
pub struct ClusterLink {
    pub node: Arc<ClusterNode>,
    pub supervisor: Addr<Supervisor>,
    pub state_dir: std::path::PathBuf,
    pub pricing: Arc<Pricing>,
    /// The secrets this node was given: it renders a claimed spec's secret fields from them.
    pub secrets: Arc<super::secrets::SecretBook>,
    pub workflow: Arc<crate::config::Workflow>,
}

/// A task run this node claimed from the cluster's queue (attempt `claimed.attempt`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AssignClaimed {
    pub claimed: queue::Claimed,
    pub queue: String,
}

impl Handler<AssignClaimed> for Worker {
    type Result = ();

    /// Its job run's owner is a JobRun of this engine (claimed as today, the attempt number must
    /// be the one claimed), or another node.
    fn handle(&mut self, AssignClaimed { claimed, queue }: AssignClaimed, ctx: &mut Self::Context) {
        let Some(link) = self.cluster.clone() else { return self.free(Some(queue), ctx) };
        let lookup = link.supervisor.send(LocalOwner(claimed.record.job_run));
        ctx.wait(lookup.into_actor(self).map(move |owner, act, ctx| match owner {
            Ok(Some(owner)) => act.claim_from(owner, claimed.id, Some(claimed.attempt), queue, ctx),
            _ => act.launch_for_remote_owner(claimed, queue, ctx),
        }));
    }
}

/// A task run its job run claimed for this worker while it begins (reserved at submit:
/// `dispatcher::Reserve`), sent with the commit that makes it `running`: its process starts
/// once `durable` says that commit is durable, and the worker takes no other message until
/// then (a kill meanwhile reaches the attempt, as after `Assign`). A commit that fails starts
/// nothing and frees the worker. `queue`: the slot it holds.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Launch {
    pub claimed: Claimed,
    pub durable: Durable,
    pub queue: String,
}

impl Handler<Launch> for Worker {
    type Result = ();

    fn handle(&mut self, msg: Launch, ctx: &mut Self::Context) {
        self.launch(msg.claimed, msg.queue, Some(msg.durable), ctx);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Signal(AttemptEvent);

impl Handler<Signal> for Worker {
    type Result = ();

    fn handle(&mut self, Signal(event): Signal, _ctx: &mut Self::Context) {
        self.on_signal(event);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Finished(AttemptExit);

impl Handler<Finished> for Worker {
    type Result = ();

    fn handle(&mut self, Finished(exit): Finished, ctx: &mut Self::Context) {
        self.finish(Some(exit), None, ctx);
    }
}

/// Kill the running attempt of `task_run` (cancel, budget, graceful stop).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kill {
    pub task_run: u64,
    pub reason: FailReason,
    pub grace: Duration,
}

impl Handler<Kill> for Worker {
    type Result = ();

    fn handle(&mut self, msg: Kill, _ctx: &mut Self::Context) {
        if self.current.as_ref().is_some_and(|c| c.task_run == msg.task_run) {
            self.activity.kill_with_grace(msg.reason, msg.grace);
        }
    }
}

/// Liveness: answered by any worker that still processes its mailbox.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

impl Handler<Ping> for Worker {
    type Result = ();

    fn handle(&mut self, _: Ping, _ctx: &mut Self::Context) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT_0: AttemptExit = AttemptExit { exit_code: Some(0), signal: None };
    const TERMINATED: AttemptExit = AttemptExit { exit_code: None, signal: Some(15) };

    fn why_it_ended(
        spawn_error: Option<(FailReason, String)>,
        killed: Option<Killed>,
        exit: Option<AttemptExit>,
    ) -> (Option<FailReason>, Option<String>) {
        super::why_it_ended(spawn_error, killed, exit, None)
    }

    #[test]
    fn an_agent_that_says_it_failed_fails_its_attempt_even_after_exit_0() {
        let said = || Some("error_during_execution".to_string());
        assert_eq!(super::why_it_ended(None, None, Some(EXIT_0), said()), (Some(FailReason::AgentError), said()));
        let exit_3 = AttemptExit { exit_code: Some(3), signal: None };
        assert_eq!(super::why_it_ended(None, None, Some(exit_3), said()).0, Some(FailReason::ExitCode));
        assert_eq!(
            super::why_it_ended(None, killed(FailReason::Timeout, true), Some(TERMINATED), said()).0,
            Some(FailReason::Timeout)
        );
    }

    #[test]
    fn an_attempt_ends_for_the_first_reason_that_applies() {
        assert_eq!(why_it_ended(None, None, Some(EXIT_0)), (None, None));
        let exit_3 = AttemptExit { exit_code: Some(3), signal: None };
        assert_eq!(why_it_ended(None, None, Some(exit_3)).0, Some(FailReason::ExitCode));
        assert_eq!(
            why_it_ended(None, killed(FailReason::Timeout, true), Some(TERMINATED)).0,
            Some(FailReason::Timeout)
        );
        let spawn = Some((FailReason::SpawnError, "no such program".to_string()));
        assert_eq!(why_it_ended(spawn, None, None).0, Some(FailReason::SpawnError));
    }

    fn killed(reason: FailReason, found_running: bool) -> Option<Killed> {
        Some(Killed { reason, found_running })
    }

    #[test]
    fn a_kill_that_came_after_a_clean_exit_did_not_end_the_attempt() {
        assert_eq!(why_it_ended(None, killed(FailReason::Budget, false), Some(EXIT_0)), (None, None));
        assert_eq!(why_it_ended(None, killed(FailReason::Cancelled, false), Some(EXIT_0)), (None, None));
        let after_exit_3 = AttemptExit { exit_code: Some(3), signal: None };
        assert_eq!(
            why_it_ended(None, killed(FailReason::Budget, false), Some(after_exit_3)).0,
            Some(FailReason::Budget)
        );
    }

    #[test]
    fn a_kill_that_found_the_process_running_keeps_its_reason_even_after_exit_0() {
        assert_eq!(why_it_ended(None, killed(FailReason::Budget, true), Some(TERMINATED)).0, Some(FailReason::Budget));
        // A task that traps SIGTERM and exits 0 was stopped, not finished.
        assert_eq!(why_it_ended(None, killed(FailReason::Budget, true), Some(EXIT_0)).0, Some(FailReason::Budget));
        assert_eq!(why_it_ended(None, killed(FailReason::Timeout, true), Some(EXIT_0)).0, Some(FailReason::Timeout));
    }
}

#[cfg(test)]
mod kill_while_starting {
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    use super::*;

    /// The spawn runs off the worker's thread: a kill asked for before the process exists
    /// (graceful stop's fallback, the watchdog) must still reach it once it does.
    #[tokio::test]
    async fn a_kill_asked_for_while_the_process_starts_reaches_it() {
        let activity = Activity::new(Arc::new(crate::executor::LocalExecutor));
        activity.begin(1, 1, 0, Duration::from_secs(60), Duration::ZERO);
        activity.kill_with_grace(FailReason::Interrupted, Duration::ZERO);

        let mut child = std::process::Command::new("sleep").arg("30").process_group(0).spawn().expect("spawn sleep");
        let pid = child.id();
        activity.set_process(Some(ProcessHandle { pid, pgid: pid as i32, start_ticks: 0 }));

        let status = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the process was not killed");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert_eq!(activity.end(), Some(Killed { reason: FailReason::Interrupted, found_running: true }));
    }
}
