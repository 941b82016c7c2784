//! The engine: an actix actor tree that runs job runs durably.
//!
//! ```text
//! Supervisor ── registry of JobRun actors, commands, restart intensity, graceful stop
//! ├─ Journal      events → events/*.jsonl + subscribers
//! ├─ Scheduler    retry timers from persisted not_before
//! ├─ Dispatcher   ready lists per queue: priority + aging, caps, rate limits, pause
//! ├─ JobRun × n   the transition engine of one job run; owns its task runs' state
//! ├─ Worker × w   one attempt at a time through an Executor (actix Supervisor restarts them)
//! └─ Watchdog     own thread: kills silent or overrunning attempts, pings workers
//! ```
//!
//! Architecture Invariant: only `engine` knows actix. Views (headless output, later the TUI and
//! the control API) see only [`EngineHandle`] and [`EngineEvent`].

pub mod cluster;
mod cron;
mod dispatcher;
mod event;
mod hooks;
pub mod inbox;
mod job_run;
mod journal;
mod journal_file;
mod log_shipping;
pub mod manual_retry;
mod offline;
mod retention;
mod scheduler;
#[cfg(test)]
pub(crate) mod seam_tests;
mod secrets;
mod supervisor;
mod watchdog;
mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use dispatcher::{QueueSnapshot, open_circuits, queue_history};
pub use event::{
    AttemptFailure, BudgetScope, EngineEvent, EventData, EventName, HookFailure, Instance, JobEnd, JobStart,
    parse_rfc3339_ms, rfc3339_ms,
};
pub use inbox::{Action, RetryOptions};
pub use job_run::SHUTDOWN_GRACE;
use journal::Journal;
pub use offline::{OfflineEngine, READ_ONLY, latest_workflow};
use supervisor::Supervisor;
pub use supervisor::plan_only;
pub use worker::CurrentAttempt;

use crate::config::{Join, Transition, TransitionOn, Workflow};
use crate::executor::Executor;
use crate::model::JobState;
use crate::model::cost::{ModelUsage, Pricing};
use crate::model::workflow_graph::{TaskNode, WorkflowGraph};
use crate::report::{JobRunView, TaskRunView};
use crate::store::{StoreError, StoreHandle, StoreLocation};

/// Mailboxes are bounded (a `send` waits when one is full) but large: bursts of thousands of
/// task runs must not stall. `do_send` ignores the bound; it is used only for fire-and-forget
/// notifications whose volume is bounded by the work itself.
pub(crate) const MAILBOX_CAPACITY: usize = 1 << 20;

/// Wall-clock time in milliseconds since the epoch; injected so tests can fix it.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// What users name in `retry`, `cancel`, `show`: a task run (`42`) or a job run (`j7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    TaskRun(u64),
    JobRun(u64),
}

impl Target {
    /// `42` is task run 42, `j7` is job run 7.
    pub fn parse(text: &str) -> Result<Target, String> {
        let bad = || format!("`{text}` is not an id: use a task run id like 42, or a job run id like j7");
        match text.strip_prefix('j') {
            Some(rest) => rest.parse().map(Target::JobRun).map_err(|_| bad()),
            None => text.parse().map(Target::TaskRun).map_err(|_| bad()),
        }
    }

    /// The inverse of [`Target::parse`]: `42` or `j7`.
    pub fn id_text(self) -> String {
        match self {
            Target::TaskRun(id) => id.to_string(),
            Target::JobRun(id) => format!("j{id}"),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Invalid(String),
    /// A well-formed command that does not apply to the run as it is now (nothing to retry,
    /// already ended, nothing waits for that signal): the API answers 409.
    #[error("{0}")]
    Refused(String),
    #[error("no {0} in the store")]
    UnknownId(Target),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Stopped(String),
    #[error("fatal: {0}")]
    Fatal(String),
}

/// Everything the actors share. Lives on the engine's arbiter.
pub struct Shared {
    pub clock: SharedClock,
    pub store: StoreHandle,
    pub state_dir: PathBuf,
    pub source: String,
    pub log_cap_bytes: u64,
    pub output_limits: crate::config::OutputLimits,
    pub pricing: Arc<Pricing>,
    /// Secret param values: memory only.
    pub secrets: Arc<secrets::SecretBook>,
    /// This node's labels (`--label`).
    pub labels: Arc<Vec<String>>,
    /// What starts, stops and finds this node's attempts' processes.
    pub executor: Arc<dyn Executor>,
    /// This engine's cluster node, in cluster mode.
    pub cluster: Option<Arc<cluster::ClusterNode>>,
    /// The workers and what they run (a node whose lease ran out kills it all).
    workers: watchdog::WatchList,
    dispatcher: Addr<dispatcher::Dispatcher>,
    scheduler: Addr<scheduler::Scheduler>,
    journal: Addr<Journal>,
    supervisor: Addr<Supervisor>,
}

/// How to start an engine.
pub struct EngineConfig {
    pub workflow: Arc<Workflow>,
    /// The workflow file's text, stored so resumed runs keep their definition.
    pub source: String,
    pub state_dir: PathBuf,
    pub store: StoreHandle,
    /// Where `store` is, for the readers beside the engine (the API, `/metrics`).
    pub location: StoreLocation,
    pub executor: Arc<dyn Executor>,
    pub clock: SharedClock,
    pub workers: usize,
    pub pricing: Pricing,
    /// This node's labels (`--label`): it starts only task runs whose `requires` they cover.
    pub labels: Vec<String>,
    /// A node of a cluster on PostgreSQL (`cluster.rs`); `None`: one machine, the in-memory
    /// Dispatcher (redb, and PostgreSQL used as a plain store).
    pub cluster: Option<cluster::ClusterConfig>,
}

/// A submit from outside (`gaffer submit`, the API).
#[derive(Debug, Clone, Default)]
pub struct SubmitRequest {
    pub job: String,
    pub params: BTreeMap<String, String>,
    /// Overrides the priority of every task of this run.
    pub priority: Option<u8>,
    /// A repeat with the same key gets the same job run back instead of a new one.
    pub key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    pub job_run: u64,
    /// The key had been used: this is the job run it made then.
    pub existing: bool,
}

/// Everything a view needs to draw its first frame; events keep it current afterwards.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineSnapshot {
    /// The wire's types, not the store's: the snapshot crosses the API to `gaffer tui`.
    pub job_runs: Vec<JobRunView>,
    pub task_runs: Vec<TaskRunView>,
    pub queues: Vec<QueueSnapshot>,
    pub workers: Vec<WorkerSnapshot>,
    /// The jobs of the workflow this engine was started with: their graphs and budgets.
    pub jobs: Vec<JobShape>,
    /// When each scheduled job last fired (or skipped a fire time), from the store.
    #[serde(default)]
    pub schedule_fires: BTreeMap<String, u64>,
    /// Everything spent so far by model, summed as `gaffer cost --by model` sums it (task run
    /// records do not say which models they paid for). Absent from an older server's answer.
    #[serde(default)]
    pub by_model: Vec<ModelUsage>,
    /// The running node's labels (`--label`); `None` when no node runs (read-only views) or
    /// from an older server.
    #[serde(default)]
    pub node_labels: Option<Vec<String>>,
}

/// A job as the views draw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobShape {
    pub name: String,
    pub budget_usd_micros: Option<u64>,
    pub tasks: Vec<TaskShape>,
    /// Its cron expression, if it has one, and the zone it is read in (`None`: the machine's).
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskShape {
    pub name: String,
    pub needs: Vec<String>,
    pub queue: String,
    pub budget_usd_micros: Option<u64>,
    /// The signal the task waits for once ready (`wait_for`), what the TUI's approve sends.
    #[serde(default)]
    pub wait_for: Option<String>,
    /// Its transitions (`next`, SPEC §2.2), in file order. Absent from an older server's answer.
    #[serde(default)]
    pub next: Vec<TransitionShape>,
    /// `join`: "all" or the count of sources, for the graph's join mark.
    #[serde(default)]
    pub join: Option<String>,
    /// `for_each`: one task run per item.
    #[serde(default)]
    pub fanned_out: bool,
    /// `compensate`: its succeeded runs are undone when the job run fails.
    #[serde(default)]
    pub compensated: bool,
}

/// One transition as the views draw it: `on` is "success", "failure" or "always".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionShape {
    pub on: String,
    #[serde(default)]
    pub when: Option<String>,
    pub targets: Vec<String>,
}

impl JobShape {
    pub fn of(workflow: &Workflow) -> Vec<JobShape> {
        workflow
            .jobs
            .iter()
            .map(|j| JobShape {
                name: j.name.clone(),
                budget_usd_micros: j.budget_usd_micros,
                schedule: j.schedule.clone(),
                timezone: j.timezone.clone(),
                tasks: j
                    .tasks
                    .iter()
                    .map(|t| TaskShape {
                        name: t.name.clone(),
                        needs: t.needs.clone(),
                        queue: t.queue.clone(),
                        budget_usd_micros: t.budget_usd_micros,
                        wait_for: t.wait_for.clone(),
                        next: t
                            .next
                            .iter()
                            .map(|n| TransitionShape {
                                on: n.on.as_str().to_string(),
                                when: n.when.clone(),
                                targets: n.targets.clone(),
                            })
                            .collect(),
                        join: t.join.map(|j| match j {
                            Join::All => "all".to_string(),
                            Join::Count(n) => n.to_string(),
                        }),
                        fanned_out: t.for_each.is_some(),
                        compensated: t.compensate.is_some(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// The job's one workflow graph, as the views see it (transitions with an `on` this build
    /// does not know are left out).
    pub fn graph(&self) -> WorkflowGraph {
        let transition = |n: &TransitionShape| {
            let on = TransitionOn::ALL.into_iter().find(|on| on.as_str() == n.on)?;
            Some(Transition { on, when: n.when.clone(), targets: n.targets.clone() })
        };
        let nodes = self.tasks.iter().map(|t| TaskNode {
            name: t.name.clone(),
            needs: t.needs.clone(),
            next: t.next.iter().filter_map(transition).collect(),
            gated: t.wait_for.is_some(),
            join: t
                .join
                .as_deref()
                .and_then(|j| if j == "all" { Some(Join::All) } else { j.parse().ok().map(Join::Count) }),
            fanned_out: t.fanned_out,
            has_compensation: t.compensated,
            ..TaskNode::default()
        });
        WorkflowGraph::new(nodes.collect())
    }
}

/// One worker slot: what it runs and how often it was restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    pub id: usize,
    pub current: Option<CurrentAttempt>,
    pub restarts: u32,
}

/// A node of the cluster as the views show it (the Workers view): heartbeat age and liveness
/// at the store's clock when read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub labels: Vec<String>,
    pub heartbeat_age_ms: u64,
    pub live: bool,
    /// The attempts running on it, whichever node owns their job runs.
    #[serde(default)]
    pub running: Vec<crate::store::RunningOnNode>,
}

impl From<crate::store::NodeView> for NodeStatus {
    fn from(n: crate::store::NodeView) -> NodeStatus {
        let (name, labels, heartbeat_age_ms, live, running) = (n.name, n.labels, n.heartbeat_age_ms, n.live, n.running);
        NodeStatus { name, labels, heartbeat_age_ms, live, running }
    }
}

/// A reply from an engine, local or remote.
pub type Reply<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, EngineError>> + 'a>>;

/// What a view may ask of an engine: `EngineHandle` in-process, `api::RemoteEngine` over the
/// control socket (`gaffer tui` attached to a server). The TUI is written against this alone.
pub trait Control {
    fn snapshot(&self) -> Reply<'_, EngineSnapshot>;
    fn subscribe(&self) -> Reply<'_, mpsc::UnboundedReceiver<EngineEvent>>;
    fn retry(&self, target: Target) -> Reply<'_, String>;
    /// A retry with `--from` / `--definition`.
    fn retry_with(&self, target: Target, options: RetryOptions) -> Reply<'_, String>;
    fn cancel(&self, target: Target) -> Reply<'_, String>;
    fn signal<'a>(&'a self, target: Target, name: &'a str) -> Reply<'a, String>;
    fn set_paused<'a>(&'a self, queue: &'a str, paused: bool) -> Reply<'a, bool>;
    fn task_runs_of(&self, job_run: u64) -> Reply<'_, Vec<TaskRunView>>;
    /// What has no events of its own: the worker slots and the queues (paused, running).
    fn live(&self) -> Reply<'_, (Vec<WorkerSnapshot>, Vec<QueueSnapshot>)>;
    /// The cluster's nodes, read now; none without a cluster (and, for now, over the API).
    fn nodes(&self) -> Reply<'_, Vec<NodeStatus>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

impl Control for EngineHandle {
    fn snapshot(&self) -> Reply<'_, EngineSnapshot> {
        Box::pin(EngineHandle::snapshot(self))
    }

    fn subscribe(&self) -> Reply<'_, mpsc::UnboundedReceiver<EngineEvent>> {
        Box::pin(EngineHandle::subscribe(self))
    }

    fn retry(&self, target: Target) -> Reply<'_, String> {
        Box::pin(EngineHandle::retry(self, target))
    }

    fn retry_with(&self, target: Target, options: RetryOptions) -> Reply<'_, String> {
        Box::pin(EngineHandle::retry_with(self, target, options))
    }

    fn cancel(&self, target: Target) -> Reply<'_, String> {
        Box::pin(EngineHandle::cancel(self, target))
    }

    fn signal<'a>(&'a self, target: Target, name: &'a str) -> Reply<'a, String> {
        Box::pin(EngineHandle::signal(self, target, name))
    }

    fn set_paused<'a>(&'a self, queue: &'a str, paused: bool) -> Reply<'a, bool> {
        Box::pin(EngineHandle::set_paused(self, queue, paused))
    }

    fn task_runs_of(&self, job_run: u64) -> Reply<'_, Vec<TaskRunView>> {
        Box::pin(EngineHandle::task_runs_of(self, job_run))
    }

    fn live(&self) -> Reply<'_, (Vec<WorkerSnapshot>, Vec<QueueSnapshot>)> {
        Box::pin(async move { Ok((EngineHandle::workers(self), EngineHandle::queues(self).await?)) })
    }

    fn nodes(&self) -> Reply<'_, Vec<NodeStatus>> {
        let store = self.store.clone();
        Box::pin(async move {
            let nodes = tokio::task::spawn_blocking(move || store.nodes()).await;
            let nodes = nodes.map_err(|e| EngineError::Stopped(e.to_string()))??;
            Ok(nodes.unwrap_or_default().into_iter().map(NodeStatus::from).collect())
        })
    }
}

/// The one door into a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    supervisor: Addr<Supervisor>,
    journal: Addr<Journal>,
    dispatcher: Addr<dispatcher::Dispatcher>,
    scheduler: Addr<scheduler::Scheduler>,
    store: StoreHandle,
    watch: watchdog::WatchList,
    jobs: Arc<Vec<JobShape>>,
    state_dir: Arc<std::path::PathBuf>,
    location: Arc<StoreLocation>,
    secrets: Arc<secrets::SecretBook>,
    /// `None` when the workflow declares no hooks.
    hooks: Option<hooks::HookRunner>,
    labels: Arc<Vec<String>>,
    /// This engine's cluster node, in cluster mode.
    cluster: Option<Arc<cluster::ClusterNode>>,
    /// Keeps the watchdog's thread alive as long as a handle exists.
    _watchdog: Arc<ArbiterGuard>,
}

struct ArbiterGuard(Arbiter);

impl Drop for ArbiterGuard {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Starts the actor tree. Must run inside an actix `System`. Panics if a cluster node cannot
/// join (see [`try_start`]).
pub fn start(config: EngineConfig) -> EngineHandle {
    try_start(config).unwrap_or_else(|e| panic!("cannot start the engine: {e}"))
}

/// Starts the actor tree; in cluster mode, first registers the node (refused when a live node
/// has its name, or the database cannot be reached). Must run inside an actix `System`.
pub fn try_start(config: EngineConfig) -> Result<EngineHandle, EngineError> {
    let cluster =
        config.cluster.as_ref().map(|c| cluster::ClusterNode::join(c, &config.state_dir)).transpose()?.map(Arc::new);
    if cluster.is_some() {
        // An earlier process on this state dir that was killed left its tasks running: its
        // node is dead (its lease ended or ran out), so they are run again elsewhere.
        let killed = config.executor.kill_left_behind(&config.state_dir);
        if killed > 0 {
            tracing::warn!(
                "cluster: killed {killed} task process(es) an earlier process on this state dir left running"
            );
        }
    }
    let config = EngineConfig { executor: log_shipping::wrap(config.executor, &config.store), ..config };
    // Every actor runs on this thread: it is woken at each step of a task's start.
    crate::sched::prefer_short_waits();
    let definition = definition_hash(&config.workflow.path.display().to_string(), &config.source);
    let ledger = supervisor::RestartLedger::default();
    let mut journal = Journal::new(&config.state_dir);
    journal.record_in(config.store.clone());
    let hook_events = journal.subscribe_now();
    let journal = journal.start();
    let hooks = hooks::HookRunner::start(
        &config.workflow,
        config.state_dir.clone(),
        config.clock.clone(),
        journal.clone(),
        hook_events,
    );
    let scheduler = scheduler::Scheduler::new(config.clock.clone()).start();
    let workers_total = config.workers.max(1);
    let reader = config.store.snapshot();
    let paused = reader.as_ref().ok().and_then(|r| r.paused_queues().ok()).unwrap_or_default();
    let history = reader
        .and_then(|r| dispatcher::queue_history(&*r, &config.workflow.queues, config.clock.now_ms()))
        .unwrap_or_else(|e| {
            tracing::warn!("rate limits and circuits start without their history: {e}");
            Default::default()
        });
    let dispatcher = dispatcher::Dispatcher::new(
        config.clock.clone(),
        journal.clone(),
        &config.workflow.queues,
        workers_total,
        &paused,
        history,
        config.labels.clone(),
    )
    .in_cluster(cluster.clone())
    .start();
    let supervisor = Supervisor::new(config.workflow.clone(), definition, ledger.clone()).start();
    let store = config.store.clone();
    let state_dir = config.state_dir.clone();
    let secrets = Arc::new(secrets::SecretBook::default());
    let labels = Arc::new(config.labels);
    let watch = watchdog::WatchList::default();
    let shared = Arc::new(Shared {
        labels: labels.clone(),
        clock: config.clock.clone(),
        store: config.store,
        state_dir: config.state_dir,
        source: config.source,
        log_cap_bytes: config.workflow.settings.log_max_bytes,
        output_limits: config.workflow.settings.outputs,
        pricing: Arc::new(config.pricing),
        secrets: secrets.clone(),
        executor: config.executor.clone(),
        cluster: cluster.clone(),
        workers: watch.clone(),
        dispatcher: dispatcher.clone(),
        scheduler: scheduler.clone(),
        journal: journal.clone(),
        supervisor: supervisor.clone(),
    });
    supervisor.do_send(supervisor::Attach(shared.clone()));
    let link = cluster.clone().map(|node| worker::ClusterLink {
        node,
        supervisor: supervisor.clone(),
        state_dir: state_dir.clone(),
        pricing: shared.pricing.clone(),
        secrets: secrets.clone(),
        workflow: config.workflow.clone(),
    });
    for id in 0..workers_total {
        let (clock, executor, dispatcher, journal, watch, ledger, link) = (
            config.clock.clone(),
            config.executor.clone(),
            dispatcher.clone(),
            journal.clone(),
            watch.clone(),
            ledger.clone(),
            link.clone(),
        );
        actix::Supervisor::start(move |_| {
            worker::Worker::new(id, clock, executor, dispatcher, journal, watch, ledger).in_cluster(link)
        });
    }
    if let Some(node) = &cluster {
        node.start_pumps(dispatcher.clone(), supervisor.clone(), watch.clone(), journal.clone());
    }
    let arbiter = Arbiter::new();
    let clock = config.clock.clone();
    let watched = watch.clone();
    watchdog::Watchdog::start_in_arbiter(&arbiter.handle(), move |_| watchdog::Watchdog::new(clock, watched));
    let jobs = Arc::new(JobShape::of(&config.workflow));
    let state_dir = Arc::new(state_dir);
    let location = Arc::new(config.location);
    Ok(EngineHandle {
        supervisor,
        journal,
        dispatcher,
        scheduler,
        store,
        watch,
        jobs,
        state_dir,
        location,
        secrets,
        hooks,
        labels,
        cluster,
        _watchdog: Arc::new(ArbiterGuard(arbiter)),
    })
}

/// FNV-1a over the path and the text: a stable key for a workflow definition.
fn definition_hash(path: &str, source: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in path.bytes().chain([0]).chain(source.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn mailbox<T>(r: Result<T, MailboxError>) -> Result<T, EngineError> {
    r.map_err(|_| EngineError::Stopped("the engine has stopped".into()))
}

impl EngineHandle {
    /// A live stream of every event from now on.
    pub async fn subscribe(&self) -> Result<mpsc::UnboundedReceiver<EngineEvent>, EngineError> {
        mailbox(self.journal.send(journal::Subscribe).await)
    }

    /// Secret param values given to this process (`run`/`serve --param`): what resumed runs,
    /// retries, scheduled fires and submits without their own use. Held in memory only.
    pub fn provide_secrets(&self, values: BTreeMap<String, String>) {
        self.secrets.set_instance(values);
    }

    /// Starts actors for every unfinished job run in the store, then applies the commands
    /// `gaffer retry` / `cancel` / `signal` left in the inbox while no instance ran; returns the
    /// job runs resumed or touched, so `run` waits for those too. Nothing is dispatched until
    /// the inbox is applied: a task cancelled while gaffer was down never starts again.
    pub async fn resume_all(&self) -> Result<Vec<(u64, String)>, EngineError> {
        self.hold(true).await?;
        let resumed = async {
            let mut runs = mailbox(self.supervisor.send(supervisor::ResumeAll).await)??;
            runs.extend(mailbox(self.supervisor.send(supervisor::ApplyInbox).await)??);
            Ok(runs)
        }
        .await;
        self.hold(false).await?;
        resumed
    }

    /// Holds (or releases) dispatching and task timers together.
    async fn hold(&self, held: bool) -> Result<(), EngineError> {
        mailbox(self.dispatcher.send(dispatcher::Hold(held)).await)?;
        mailbox(self.scheduler.send(scheduler::Hold(held)).await)
    }

    /// Resolves once every event published so far has reached the journal and subscribers,
    /// the dispatcher's too (a circuit opened by the last failure of a run).
    pub async fn flush_events(&self) {
        let _ = self.dispatcher.send(dispatcher::Snapshot).await;
        let _ = self.journal.send(journal::Flush).await;
    }

    /// Resolves once the hooks of every event published so far have ended (each is bounded by
    /// its timeout): `run` and `serve` wait for this before they exit.
    pub async fn drain_hooks(&self) {
        if let Some(hooks) = &self.hooks {
            self.flush_events().await;
            hooks.drain().await;
        }
    }

    /// Starts firing the workflow's cron schedules (`gaffer serve`), after catching up what
    /// was missed while nothing ran; returns how many catch-up fires started a run.
    pub async fn serve_schedules(&self) -> Result<usize, EngineError> {
        mailbox(self.supervisor.send(cron::ServeSchedules).await)?
    }

    /// Starts a new run of `job`; returns its job run id.
    pub async fn submit(&self, job: &str, params: BTreeMap<String, String>) -> Result<u64, EngineError> {
        let request = SubmitRequest { job: job.to_string(), params, ..SubmitRequest::default() };
        Ok(self.submit_request(request).await?.job_run)
    }

    /// New runs of `jobs`, in this order (their ids follow it), started together: returns
    /// their ids once every one is durable (see `supervisor::SubmitMany`).
    pub async fn submit_many(&self, jobs: Vec<(String, BTreeMap<String, String>)>) -> Result<Vec<u64>, EngineError> {
        let requests = jobs.into_iter().map(|(job, params)| SubmitRequest { job, params, ..SubmitRequest::default() });
        mailbox(self.supervisor.send(supervisor::SubmitMany(requests.collect())).await)?
    }

    /// A submit with a priority override and an idempotency key.
    pub async fn submit_request(&self, request: SubmitRequest) -> Result<Submitted, EngineError> {
        mailbox(self.supervisor.send(supervisor::Submit(request)).await)?
    }

    pub async fn retry(&self, target: Target) -> Result<String, EngineError> {
        self.retry_with(target, RetryOptions::default()).await
    }

    /// A retry with `--from` / `--definition` (see `RetryOptions`).
    pub async fn retry_with(&self, target: Target, retry: RetryOptions) -> Result<String, EngineError> {
        mailbox(self.supervisor.send(supervisor::Command { action: Action::Retry, target, retry }).await)?
    }

    /// `gaffer run FILE JOB --only TASK`: a new run of `job` with `task` alone, its needs'
    /// outputs borrowed from their latest succeeded runs; refused if one never succeeded.
    pub async fn submit_only(
        &self,
        job: &str,
        params: BTreeMap<String, String>,
        task: &str,
    ) -> Result<u64, EngineError> {
        let request = supervisor::SubmitOnly { job: job.to_string(), params, task: task.to_string() };
        mailbox(self.supervisor.send(request).await)?
    }

    pub async fn cancel(&self, target: Target) -> Result<String, EngineError> {
        self.command(Action::Cancel, target).await
    }

    /// Releases what waits for `name` (`wait_for`): every such task run of a job run (`j7`),
    /// or the one task run named.
    pub async fn signal(&self, target: Target, name: &str) -> Result<String, EngineError> {
        self.command(Action::Signal(name.to_string()), target).await
    }

    async fn command(&self, action: Action, target: Target) -> Result<String, EngineError> {
        let retry = RetryOptions::default();
        mailbox(self.supervisor.send(supervisor::Command { action, target, retry }).await)?
    }

    /// Pauses (or resumes) a queue, durably: a pause outlives a restart. False if there is no
    /// such queue.
    pub async fn set_paused(&self, queue: &str, paused: bool) -> Result<bool, EngineError> {
        let known = self.queues().await?.iter().any(|q| q.name == queue);
        if !known {
            return Ok(false);
        }
        self.store.commit(vec![crate::store::Mutation::QueuePaused(queue.to_string(), paused)]).await?;
        mailbox(self.dispatcher.send(dispatcher::SetPaused { queue: queue.to_string(), paused }).await)
    }

    pub async fn queues(&self) -> Result<Vec<QueueSnapshot>, EngineError> {
        mailbox(self.dispatcher.send(dispatcher::Snapshot).await)
    }

    /// Resolves once every listed job run has ended, with how each ended.
    pub async fn wait(&self, ids: Vec<u64>) -> Result<Vec<(u64, JobState)>, EngineError> {
        mailbox(self.supervisor.send(supervisor::WaitFor(Some(ids))).await)?
    }

    /// A round trip through the Supervisor and the Dispatcher, bounded by `within`: true when
    /// both answered and nothing fatal happened (what the systemd watchdog ping rests on).
    pub async fn healthy(&self, within: std::time::Duration) -> bool {
        let round_trip = async { self.wait(Vec::new()).await.is_ok() && self.queues().await.is_ok() };
        tokio::time::timeout(within, round_trip).await.unwrap_or(false)
    }

    /// Resolves only when the engine hits a fault it cannot recover from (a store that cannot
    /// commit, an actor that keeps dying): what a service waits on besides its signals.
    pub async fn fatal(&self) -> EngineError {
        match mailbox(self.supervisor.send(supervisor::WaitFor(None)).await) {
            Ok(Err(e)) | Err(e) => e,
            Ok(Ok(_)) => EngineError::Stopped("the engine stopped".into()),
        }
    }

    /// Job runs, task runs (from the store, read off the engine's thread), queues and workers.
    pub async fn snapshot(&self) -> Result<EngineSnapshot, EngineError> {
        let store = self.store.clone();
        let records = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let reader = store.snapshot()?;
            let attempts = reader.attempts()?;
            let by_model = offline::by_model(&attempts);
            let job_runs = reader.job_runs()?.iter().map(JobRunView::from).collect();
            let task_runs = reader.task_runs()?.iter().map(TaskRunView::from).collect();
            Ok((job_runs, task_runs, offline::schedule_fires(&*reader)?, by_model))
        });
        let (job_runs, task_runs, schedule_fires, by_model) =
            records.await.map_err(|e| EngineError::Stopped(e.to_string()))??;
        let jobs = self.jobs.as_ref().clone();
        let (queues, workers) = (self.queues().await?, self.workers());
        let node_labels = Some(self.labels.to_vec());
        Ok(EngineSnapshot { job_runs, task_runs, queues, workers, jobs, schedule_fires, by_model, node_labels })
    }

    /// The task runs of one job run (a view learning of a new run from `job.started`).
    pub async fn task_runs_of(&self, job_run: u64) -> Result<Vec<TaskRunView>, EngineError> {
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>(store.snapshot()?.task_runs_of(job_run)?.iter().map(TaskRunView::from).collect())
        });
        Ok(read.await.map_err(|e| EngineError::Stopped(e.to_string()))??)
    }

    /// The state dir this engine writes.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// Where this engine's store is: what the API's reads open snapshots from.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// This node's labels (`--label`), in the order given.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Each worker slot and what it runs, read without asking the actors.
    pub fn workers(&self) -> Vec<WorkerSnapshot> {
        let Ok(watch) = self.watch.lock() else { return Vec::new() };
        let mut out: Vec<WorkerSnapshot> = watch
            .workers
            .iter()
            .map(|(id, (activity, _))| WorkerSnapshot {
                id: *id,
                current: activity.current(),
                restarts: watch.restarts.get(id).copied().unwrap_or(0),
            })
            .collect();
        out.sort_by_key(|w| w.id);
        out
    }

    /// Graceful stop: resolves when running attempts are interrupted and recorded, and no
    /// worker runs anything any more (an attempt ends only once its processes are gone, see
    /// `executor`), so nothing gaffer started outlives it.
    pub async fn shutdown(&self) {
        let _ = self.supervisor.send(supervisor::Shutdown).await;
        // Each job run's Stop waited for its own attempts; this also covers one no registered
        // job run knew of, so that gaffer never exits with a task still running.
        if !self.workers_idle_within(job_run::SHUTDOWN_GRACE).await {
            self.kill_running(crate::model::FailReason::Interrupted);
            self.workers_idle_within(crate::executor::KILL_GRACE * 2).await;
        }
        if let Some(node) = &self.cluster {
            node.leave().await;
        }
    }

    /// How many workers run an attempt now.
    pub fn busy_workers(&self) -> usize {
        self.workers().iter().filter(|w| w.current.is_some()).count()
    }

    async fn workers_idle_within(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.busy_workers() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// After a fatal fault (the store cannot commit): nothing can be recorded any more, so no
    /// graceful stop; every running attempt's process group is SIGKILLed at once, and the next
    /// start records them `interrupted` (and finds any escapee by its environment).
    pub fn kill_all_now(&self) {
        let Ok(watch) = self.watch.lock() else { return };
        for (activity, _) in watch.workers.values() {
            activity.kill_now();
        }
    }

    fn kill_running(&self, reason: crate::model::FailReason) {
        kill_all(&self.watch, reason);
    }
}

impl Shared {
    /// Kills every attempt this node's workers run (`model::lease::expired_duties`: attempts of
    /// job runs owned elsewhere too, whose outcomes the store would refuse now).
    pub(crate) fn kill_all_attempts(&self) {
        kill_all(&self.workers, crate::model::FailReason::Interrupted);
    }
}

/// Kills every attempt the workers of `watch` run, at once.
fn kill_all(watch: &watchdog::WatchList, reason: crate::model::FailReason) {
    let Ok(watch) = watch.lock() else { return };
    for (activity, _) in watch.workers.values() {
        activity.kill_with_grace(reason, std::time::Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse("42"), Ok(Target::TaskRun(42)));
        assert_eq!(Target::parse("j7"), Ok(Target::JobRun(7)));
        assert!(Target::parse("x").is_err());
        assert!(Target::parse("j").is_err());
        for t in [Target::TaskRun(42), Target::JobRun(7)] {
            assert_eq!(Target::parse(&t.id_text()), Ok(t));
        }
    }

    /// The views build the same workflow graph from a job's shape (even from JSON) as the
    /// engine does from the file.
    #[test]
    fn a_job_shape_gives_the_workflow_graph_of_its_job() {
        let text = "[jobs.j.tasks.a]\nrun = 'x'\nnext = [{ on = 'failure', when = 'attempt > 1', do = ['b'] }, { on = 'always', do = ['c'] }]\n\
                    [jobs.j.tasks.b]\nrun = 'x'\nnext = [{ on = 'success', do = ['c'] }]\n[jobs.j.tasks.c]\nrun = 'x'\njoin = 'all'\n\
                    [jobs.j.tasks.d]\nrun = 'x'\nneeds = ['c']\nwait_for = 'go'\n";
        let workflow = crate::config::parse(std::path::Path::new("w.toml"), text).expect("valid");
        let shapes = JobShape::of(&workflow);
        let wire: Vec<JobShape> = serde_json::from_str(&serde_json::to_string(&shapes).expect("json")).expect("json");
        let (from_shape, from_job) = (wire[0].graph(), WorkflowGraph::of(&workflow.jobs[0]));
        assert_eq!(from_shape.names(), from_job.names());
        for t in 0..from_job.len() {
            assert_eq!(from_shape.transitions(t), from_job.transitions(t), "transitions of {t}");
            assert_eq!(from_shape.sources(t), from_job.sources(t));
            assert_eq!(from_shape.needs(t), from_job.needs(t));
            assert_eq!(from_shape.is_gated(t), from_job.is_gated(t));
        }
        assert_eq!(from_shape.entry_tasks(), [0]);
    }
}
