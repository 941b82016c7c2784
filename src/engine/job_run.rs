//! JobRun actors: one per active job run, a thin shell around the pure core `model::run`.
//!
//! Each message becomes a `run::Input`; `run::step` decides and returns `Effects`; the actor
//! commits their writes (group commit, `persist_then`) and only then acts on them (enqueue,
//! timers) and reports them (events). Kills and unschedules go out at once. In-memory state runs
//! ahead of the disk; nothing outside this actor acts on a state that is not yet durable (the
//! Dispatcher's `Reserve` looks at a new run's entries before its commit, but the workers it
//! reserves get them only after).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::FutureExt;

use super::dispatcher::{AttemptFailed, Enqueue, ReadyEntry, Reserve, WorkerIdle};
use super::journal::{Publish, PublishAll};
use super::scheduler::{TaskTimer, Unschedule};
use super::supervisor::{Fatal, JobRunEnded};
use super::worker::{Assign, Kill, Launch, Owner, Worker};
use super::{AttemptFailure, BudgetScope, EngineEvent, EventData, Instance, JobEnd, JobStart, Shared};
use crate::config::template::{self, TemplateContext, UpstreamTask};
use crate::config::{JobDef, Workflow};
use crate::executor::{AttemptExit, AttemptSpec, Durable, KILL_GRACE, ProcessHandle};
use crate::model::cost::{CostDelta, Pricing};
use crate::model::run::{self, AttemptEnd, Effects, Input, Note, RunState, TaskNote, Write};
use crate::model::{FailReason, JobState, TaskState};
use crate::store::{AttemptRecord, JobRunRecord, Mutation, RaisedBudgets, TaskRunRecord};

mod blocked;
mod cluster;
pub(super) mod convert;
mod fenced;
pub use cluster::Mailed;
pub use cluster::{EndedUnmailed, RunnerDied};
mod rerun;
pub use fenced::Disown;
pub(crate) use rerun::workflow_for_run;
pub use rerun::{CheckDefinition, RetryFrom};

/// How long running attempts get to stop on a graceful stop before SIGKILL (SPEC §7).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub struct JobRun {
    shared: Arc<Shared>,
    /// The job run's record; its state, reason, cost and cancel flag are the core's
    /// (`run.job_run`), merged in when it is written.
    record: JobRunRecord,
    /// Every decision's state: the task runs, the graph, budgets, flags.
    run: RunState,
    /// The attempt each running task run is in, and who runs it.
    running: HashMap<u64, (AttemptRecord, Option<Runner>)>,
    /// Running attempts whose pid is known but not yet written: it rides on the job run's next
    /// commit, or is written alone after `PID_WRITE_DELAY` (see `ProcessStarted`).
    pids_unwritten: std::collections::HashSet<u64>,
    /// Running attempts claimed from the cluster's queue whose records (the task run's
    /// `running`, the attempt's start) are not yet written: the claim's commit stands for them
    /// until the attempt's end writes them, or `ClusterConfig::start_write_delay` passes (see
    /// `commit_claim`).
    claims_unwritten: std::collections::HashSet<u64>,
    /// Attempts found running in the store at start (crash recovery), by task run.
    interrupted: Vec<AttemptRecord>,
    /// Those of them that ran on another node, which died (adoption): no process of this
    /// machine is theirs.
    interrupted_elsewhere: std::collections::HashSet<u64>,
    /// Those of them claimed by a node that died before this job run's owner heard them start
    /// (`model::lease::DeadRunner::Unheard`): queued in the record, claimed here first.
    interrupted_unheard: std::collections::HashSet<u64>,
    /// Another node owns this job run now (a commit was fenced out, or this node's lease ran
    /// out): nothing more is committed, and the actor stops (`fenced.rs`).
    fenced: bool,
    /// How many attempts right before each of those, in its series, a crash interrupted too
    /// (read with them, off the thread: the core asks while it decides).
    crashes_before: HashMap<u64, u32>,
    /// The actor has told the supervisor it ended and is stopping.
    finished: bool,
    /// Commits made by `persist_then` whose callbacks have not run yet.
    inflight: usize,
    /// Graceful stops waiting for `running` to empty.
    idle_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    next_commit: u64,
    next_to_run: u64,
    committed: std::collections::BTreeMap<u64, (Vec<EngineEvent>, AfterCommit)>,
    /// Told once the new run's first commit (its records) is durable: a submit answers then.
    begun: Option<Begun>,
    /// In a cluster: letters handled since the last commit, deleted by the next one, which
    /// carries their effect (`store::pg::mail`: read at least once).
    mail_applied: Vec<i64>,
}

/// Who runs an attempt: a worker of this engine, or (in a cluster) another node, told by mail.
pub enum Runner {
    Local(Addr<Worker>),
    Remote(i64),
}

type AfterCommit = Box<dyn FnOnce(&mut JobRun, &mut Context<JobRun>)>;

/// Told once a new run's records are durable, or why they could not be made so.
pub type Begun = tokio::sync::oneshot::Sender<Result<(), super::EngineError>>;

/// What the core asks of the world, answered from the store, the templates and `fastrand`.
struct ActorEnv<'a> {
    shared: &'a Shared,
    record: &'a JobRunRecord,
    crashes_before: &'a HashMap<u64, u32>,
}

impl run::Env for ActorEnv<'_> {
    fn random(&mut self) -> f64 {
        fastrand::f64()
    }

    fn next_enqueue_seq(&mut self) -> u64 {
        self.shared.store.next_enqueue_seq()
    }

    /// Asked only of an attempt a crash interrupted, which the actor was started with.
    fn crashes_in_a_row(&mut self, t: &run::TaskRun) -> u32 {
        self.crashes_before.get(&t.id).copied().unwrap_or(0).saturating_add(1)
    }

    /// `job/task/rendered key`. A key that cannot be rendered (an output missing upstream)
    /// means no caching, said once.
    fn cache_key(&mut self, state: &RunState, i: usize) -> Option<String> {
        let policy = state.def(i).cache.as_ref()?;
        let context = template_context(self.shared, self.record, state, i);
        match render_template(&policy.key, &context, "cache.key") {
            Ok(key) => Some(format!("{}/{}/{key}", self.record.job, state.tasks[i].task)),
            Err(e) => {
                tracing::warn!(task_run = state.tasks[i].id, "no caching for this run: {e}");
                None
            }
        }
    }

    fn next_task_run_id(&mut self) -> u64 {
        self.shared.store.next_task_run()
    }

    fn render_for_each(&mut self, state: &RunState, i: usize, text: &str) -> Result<String, String> {
        render_template(text, &template_context(self.shared, self.record, state, i), "for_each")
    }

    /// `when` over the ending task run's own facts, params, and every task's latest outputs.
    fn when(&mut self, state: &RunState, i: usize, expression: &str) -> Result<bool, String> {
        let t = &state.tasks[i];
        let own = template::WhenFacts {
            outputs: t.outputs.clone(),
            exit_code: t.exit_code,
            attempt: t.attempt,
            item: t.item.clone(),
            item_index: t.item_index,
        };
        let mut context = template_context(self.shared, self.record, state, i);
        context.tasks = state.latest.iter().map(|&r| upstream(state, r)).collect();
        template::evaluate_when(expression, &context, &own)
    }
}

/// What task run `i`'s templates see: params, the outputs of what it (transitively) needs (a
/// fanned-out task's as the list of its items'), and its fan-out item.
fn template_context(shared: &Shared, record: &JobRunRecord, state: &RunState, i: usize) -> TemplateContext {
    let job = state.job();
    let t = &state.tasks[i];
    let item = t.item_index.zip(t.item.as_deref()).map(|(k, text)| (k, serde_json::from_str(text).unwrap_or_default()));
    let task_index = t.task_index;
    TemplateContext {
        item,
        model: None,
        job: record.job.clone(),
        job_run_id: record.id,
        params: crate::model::params::for_templates(job, &record.params, &shared.secrets.of(record.id)),
        // Validation allows templates to name only tasks upstream of this one, through `needs`
        // or transitions (SPEC §2.2). A task without templates needs none of them (a
        // 10,000-task chain must not walk its ancestry at every start).
        tasks: if !state.def(i).is_templated() {
            Default::default()
        } else {
            state
                .workflow_graph
                .upstream(task_index)
                .into_iter()
                .map(|u| upstream(state, seen_from(state, u, i)))
                .collect()
        },
    }
}

/// The task run of task `u` that task run `rendering` sees: `u`'s latest (the current
/// iteration), or for a task on a loop through itself, its iteration before `rendering`.
fn seen_from(state: &RunState, u: usize, rendering: usize) -> usize {
    let latest = state.latest[u];
    if latest != rendering {
        return latest;
    }
    state.tasks[..rendering].iter().rposition(|t| t.task_index == u && !t.is_extra()).unwrap_or(latest)
}

/// Task run `u` as templates see it under `tasks.<name>`: a fanned-out task's outputs are the
/// list of its items' outputs, in item order (SPEC §2.2).
fn upstream(state: &RunState, u: usize) -> (String, UpstreamTask) {
    let run = &state.tasks[u];
    let items = state.fanouts.get(&u).map(|node| {
        let outputs = node.runs.iter().enumerate().map(|(k, &r)| (k, state.tasks[r].outputs.clone()));
        crate::model::fanout::outputs_in_item_order(node.runs.len(), outputs)
    });
    (run.task.clone(), UpstreamTask { outputs: run.outputs.clone(), exit_code: run.exit_code, items })
}

impl JobRun {
    pub fn new(
        shared: Arc<Shared>,
        workflow: Arc<Workflow>,
        job_index: usize,
        record: JobRunRecord,
        tasks: Vec<TaskRunRecord>,
        interrupted: Vec<Interrupted>,
        raised: RaisedBudgets,
    ) -> JobRun {
        let (going_on, interrupted): (Vec<Interrupted>, Vec<Interrupted>) =
            interrupted.into_iter().partition(|i| i.goes_on.is_some());
        let running = going_on
            .into_iter()
            .map(|i| (i.attempt.task_run, (i.attempt, i.goes_on.flatten().map(Runner::Remote))))
            .collect();
        let crashes_before = interrupted.iter().map(|i| (i.attempt.task_run, i.crashes_before)).collect();
        let interrupted_elsewhere = interrupted.iter().filter(|i| i.elsewhere).map(|i| i.attempt.task_run).collect();
        let interrupted_unheard = interrupted.iter().filter(|i| i.unheard).map(|i| i.attempt.task_run).collect();
        let interrupted = interrupted.into_iter().map(|i| i.attempt).collect();
        let tasks = tasks.into_iter().map(run::TaskRun::from).collect();
        let run = RunState::new(workflow, job_index, (&record).into(), tasks, raised.into());
        JobRun {
            shared,
            record,
            run,
            running,
            pids_unwritten: Default::default(),
            claims_unwritten: Default::default(),
            interrupted,
            interrupted_elsewhere,
            interrupted_unheard,
            fenced: false,
            crashes_before,
            finished: false,
            inflight: 0,
            idle_waiters: Vec::new(),
            next_commit: 0,
            next_to_run: 0,
            committed: Default::default(),
            begun: None,
            mail_applied: Vec::new(),
        }
    }

    fn job(&self) -> &JobDef {
        self.run.job()
    }

    fn now(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    fn idx(&self, task_run: u64) -> Option<usize> {
        self.run.idx(task_run)
    }

    /// The record of task run `i` as it is now.
    fn task_record(&self, i: usize) -> TaskRunRecord {
        convert::task_run_record(&self.record, &self.run.tasks[i], &self.run.def(i).requires)
    }

    /// The job run's record as it is now.
    fn job_record(&self) -> JobRunRecord {
        convert::job_run_record(&self.record, &self.run.job_run)
    }

    /// One input through the core, its effects carried out; `mutations` and `events` (the
    /// actor's own: an attempt record, a cost event) are committed and published first.
    fn step(
        &mut self,
        ctx: &mut Context<Self>,
        input: Input,
        mutations: Vec<Mutation>,
        events: Vec<EngineEvent>,
    ) -> Effects {
        let mut fx = self.decide(input);
        self.carry_out(ctx, &mut fx, mutations, events);
        fx
    }

    /// One input through the core: the state changed, the effects to carry out.
    fn decide(&mut self, input: Input) -> Effects {
        let now = self.now();
        let mut env = ActorEnv { shared: &self.shared, record: &self.record, crashes_before: &self.crashes_before };
        run::step(&mut self.run, input, now, &mut env)
    }

    /// Kills and unschedules now; the writes committed; then the notes published, and the
    /// queue entries, timers, circuit failures and the end acted on.
    fn carry_out(
        &mut self,
        ctx: &mut Context<Self>,
        fx: &mut Effects,
        mutations: Vec<Mutation>,
        events: Vec<EngineEvent>,
    ) {
        self.carry_out_then(ctx, fx, mutations, events, None, false);
    }

    /// `carry_out`, and `then` once the writes are durable (before the end, if the run ended).
    /// With `share`, also their commit's outcome (see `persist_shared_then`); `None` when
    /// there was nothing to commit, or the run may commit no more.
    fn carry_out_then(
        &mut self,
        ctx: &mut Context<Self>,
        fx: &mut Effects,
        mut mutations: Vec<Mutation>,
        mut events: Vec<EngineEvent>,
        then: Option<AfterCommit>,
        share: bool,
    ) -> Option<SharedCommit> {
        for &(task_run, reason) in &fx.kills {
            let grace = if reason == FailReason::Interrupted { SHUTDOWN_GRACE } else { KILL_GRACE };
            match self.running.get(&task_run) {
                Some((_, Some(Runner::Local(worker)))) => worker.do_send(Kill { task_run, reason, grace }),
                Some((attempt, Some(Runner::Remote(node)))) => {
                    self.mail_kill(*node, task_run, attempt.n, reason, grace)
                }
                _ => {}
            }
        }
        for &task_run in &fx.unschedule {
            self.shared.scheduler.do_send(Unschedule { task_run });
        }
        for (task_run, key) in std::mem::take(&mut fx.cache_reads) {
            self.read_cache(ctx, task_run, key);
        }
        mutations.extend(self.mutations_of(&fx.writes));
        mutations.extend(self.unwritten_pids());
        let (unrenderable, queuing) = self.queued_specs(&fx.enqueue, &mut mutations);
        events.extend(fx.notes.iter().map(|n| self.event_of(n)));
        let (enqueue, timers) = (std::mem::take(&mut fx.enqueue), std::mem::take(&mut fx.timers));
        let (circuits, finish) = (std::mem::take(&mut fx.circuit_failures), fx.finish);
        let nothing_after = enqueue.is_empty() && timers.is_empty() && circuits.is_empty() && !finish;
        if mutations.is_empty() && events.is_empty() && nothing_after && then.is_none() {
            return None;
        }
        let after = move |act: &mut Self, ctx: &mut Context<Self>| {
            // Says the queued rows landed (also if this is never called: the commit failed).
            drop(queuing);
            act.enqueue(&enqueue, ctx);
            for (task_run, error) in unrenderable {
                act.fail_unrenderable(ctx, task_run, &error);
            }
            for (task_run, due_ms) in timers {
                act.shared.scheduler.do_send(TaskTimer { task_run, due_ms, owner: ctx.address() });
            }
            for (queue, ended_at_ms) in circuits {
                act.shared.dispatcher.do_send(AttemptFailed { queue, ended_at_ms });
            }
            if let Some(then) = then {
                then(act, ctx);
            }
            if finish {
                act.finish(ctx);
            }
        };
        if share {
            return self.persist_shared_then(ctx, mutations, events, after);
        }
        self.persist_then(ctx, mutations, events, after);
        None
    }

    /// Reads the cache entry under `key` on tokio's blocking pool (never a store read on the
    /// engine's thread) and steps the answer (`Input::CacheRead`); a failed read is a miss.
    fn read_cache(&mut self, ctx: &mut Context<Self>, task_run: u64, key: String) {
        let store = self.shared.store.clone();
        let read = tokio::task::spawn_blocking(move || store.snapshot().and_then(|r| r.cache_entry(&key)));
        ctx.spawn(read.into_actor(self).map(move |read, act, ctx| {
            let entry = match read {
                Ok(Ok(entry)) => entry.map(run::CacheHit::from),
                Ok(Err(e)) => {
                    tracing::warn!(task_run, "reading the cache: {e}");
                    None
                }
                Err(e) => {
                    tracing::warn!(task_run, "reading the cache: {e}");
                    None
                }
            };
            act.step(ctx, Input::CacheRead { task_run, entry }, Vec::new(), Vec::new());
        }));
    }

    /// The store mutations of the core's writes, each task run written once.
    fn mutations_of(&self, writes: &[Write]) -> Vec<Mutation> {
        let mut written = std::collections::HashSet::new();
        let mut job_run_written = false;
        let mut mutations = Vec::with_capacity(writes.len());
        for w in writes {
            match w {
                Write::TaskRun(i) if written.insert(*i) => mutations.push(Mutation::TaskRun(self.task_record(*i))),
                Write::TaskRun(_) => {}
                Write::JobRun if !job_run_written => {
                    job_run_written = true;
                    mutations.push(Mutation::JobRun(self.job_record()));
                }
                Write::JobRun => {}
                Write::RaisedBudgets => {
                    mutations.push(Mutation::RaisedBudgets(self.record.id, (&self.run.raised).into()))
                }
                Write::Cached(key, entry) => mutations.push(Mutation::Cached(key.clone(), entry.clone().into())),
                Write::Uncached(key) => mutations.push(Mutation::Uncached(key.clone())),
            }
        }
        mutations
    }

    fn task_event(&self, data: EventData, i: usize) -> EngineEvent {
        let t = &self.run.tasks[i];
        let mut e = EngineEvent::new(data, self.now());
        e.job = Some(self.record.job.clone());
        e.job_run = Some(self.record.id);
        e.task = Some(t.task.clone());
        e.task_run = Some(t.id);
        e.attempt = (t.attempt > 0).then_some(t.attempt);
        e.queue = Some(t.queue.clone());
        e.instance = Some(Instance {
            iteration: t.iteration,
            item_index: t.item_index,
            compensation: t.kind == run::Kind::Compensation,
            fanout: t.kind == run::Kind::FanOut,
        });
        e
    }

    fn job_event(&self, data: EventData) -> EngineEvent {
        let mut e = EngineEvent::new(data, self.now());
        e.job = Some(self.record.job.clone());
        e.job_run = Some(self.record.id);
        e
    }

    /// A budget event: of task run `task`, or of the job run.
    fn budget_event(&self, task: Option<usize>, data: impl Fn(BudgetScope) -> EventData) -> EngineEvent {
        match task {
            Some(i) => self.task_event(data(BudgetScope::Task), i),
            None => self.job_event(data(BudgetScope::Job)),
        }
    }

    /// The event that reports `note`.
    fn event_of(&self, note: &Note) -> EngineEvent {
        match note {
            Note::JobStarted { retry: false, .. } => {
                self.job_event(EventData::JobStarted(JobStart::New { params: self.record.params.clone() }))
            }
            Note::JobStarted { retry: true, from } => {
                self.job_event(EventData::JobStarted(JobStart::Retry { from: from.clone() }))
            }
            Note::JobEnded { state, reason, cost_usd_micros } => {
                let end = JobEnd { cost_usd_micros: *cost_usd_micros, reason: reason.clone() };
                self.job_event(match state {
                    JobState::Succeeded => EventData::JobSucceeded(end),
                    JobState::Cancelled => EventData::JobCancelled(end),
                    JobState::Failed | JobState::Running => EventData::JobFailed(end),
                })
            }
            Note::BudgetExceeded { task, limit_usd_micros, spent_usd_micros } => {
                self.budget_event(*task, |scope| EventData::BudgetExceeded {
                    scope,
                    limit_usd_micros: *limit_usd_micros,
                    spent_usd_micros: *spent_usd_micros,
                })
            }
            Note::BudgetRaised { task, limit_usd_micros } => {
                self.budget_event(*task, |scope| EventData::BudgetRaised { scope, limit_usd_micros: *limit_usd_micros })
            }
            Note::TransitionFired { from, on, to, task_run } => {
                let mut e = self.job_event(EventData::TransitionFired {
                    from_task_run: self.run.tasks[*from].id,
                    on: *on,
                    to: self.run.graph.names[*to].clone(),
                });
                e.task = Some(self.run.tasks[*from].task.clone());
                e.task_run = task_run.map(|r| self.run.tasks[r].id);
                e
            }
            Note::Task { task, what } => self.task_note_event(*task, what),
        }
    }

    fn task_note_event(&self, i: usize, what: &TaskNote) -> EngineEvent {
        let priority = self.run.tasks[i].priority;
        // `task.failed` names the attempt that failed, whatever the run's latest is now.
        let mut failed_attempt = None;
        let data = match what {
            TaskNote::Queued { series_start } => EventData::TaskQueued { priority, series_start: *series_start },
            TaskNote::Waiting { wait_for } => EventData::TaskWaiting { wait_for: wait_for.clone() },
            TaskNote::Skipped => EventData::TaskSkipped,
            TaskNote::Succeeded { duration_ms, cost_usd_micros, cached_from } => EventData::TaskSucceeded {
                duration_ms: *duration_ms,
                cost_usd_micros: *cost_usd_micros,
                cached_from: *cached_from,
            },
            TaskNote::Failed { attempt, reason, exit_code, signal, detail } => {
                failed_attempt = Some(*attempt);
                EventData::TaskFailed(AttemptFailure {
                    reason: reason.unwrap_or(FailReason::ExitCode),
                    exit_code: *exit_code,
                    signal: *signal,
                    detail: detail.clone(),
                })
            }
            TaskNote::RetryScheduled { delay_ms, next_attempt } => {
                EventData::TaskRetryScheduled { delay_ms: *delay_ms, next_attempt: *next_attempt }
            }
            // No failed attempt said why (a fan-out's `for_each` that cannot be rendered, an
            // item that failed): the run's detail does.
            TaskNote::DeadLettered { reason } => EventData::TaskDeadLettered {
                reason: *reason,
                detail: self.run.tasks[i].detail.clone().filter(|_| self.run.tasks[i].attempt == 0),
            },
            TaskNote::Handled => EventData::TaskHandled,
            TaskNote::WhenFailed { message } => EventData::TaskWarning { message: message.clone() },
            TaskNote::Cancelled { from_dead } => EventData::TaskCancelled { from_dead: *from_dead },
            TaskNote::ResourceExhausted { detail, delay_ms } => {
                EventData::ResourceExhausted { detail: detail.clone(), delay_ms: *delay_ms }
            }
            TaskNote::Progress { text } => EventData::TaskProgress { message: text.clone() },
        };
        let mut e = self.task_event(data, i);
        e.attempt = failed_attempt.or(e.attempt);
        e
    }

    /// Commits `mutations`; then publishes `events` and runs `after`. Callbacks run in the
    /// order the commits were asked for, whatever order their futures are polled in, so events
    /// always come out in the order the changes were made. A store that cannot commit is fatal:
    /// gaffer never acts on a state it could not make durable.
    fn persist_then(
        &mut self,
        ctx: &mut Context<Self>,
        mut mutations: Vec<Mutation>,
        events: Vec<EngineEvent>,
        after: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        if self.fenced {
            return;
        }
        if !self.mail_applied.is_empty() {
            mutations.push(Mutation::MailRead(self.record.id, std::mem::take(&mut self.mail_applied)));
        }
        let commit = self.shared.store.commit(mutations);
        self.await_commit(ctx, commit, events, after);
    }

    /// `persist_then`, also returning the commit's outcome for what acts on it off this
    /// thread (a reserved worker's spawn thread, woken by the store's answer itself). `None`:
    /// the run may commit no more (fenced).
    fn persist_shared_then(
        &mut self,
        ctx: &mut Context<Self>,
        mutations: Vec<Mutation>,
        events: Vec<EngineEvent>,
        after: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) -> Option<SharedCommit> {
        if self.fenced {
            return None;
        }
        let commit = self.shared.store.commit(mutations).shared();
        self.await_commit(ctx, Box::pin(commit.clone()), events, after);
        Some(commit)
    }

    /// Takes the outcome of the run's next commit: `events` published and `after` run once it
    /// and every commit before it are durable.
    fn await_commit(
        &mut self,
        ctx: &mut Context<Self>,
        commit: crate::store::Committing,
        events: Vec<EngineEvent>,
        after: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        let seq = self.next_commit;
        self.next_commit += 1;
        self.inflight += 1;
        ctx.spawn(commit.into_actor(self).map(move |result, act, ctx| match result {
            Ok(()) => {
                act.committed.insert(seq, (events, Box::new(after)));
                act.run_committed(ctx);
            }
            Err(e @ (crate::store::StoreError::FireTaken { .. } | crate::store::StoreError::RunLimit { .. })) => {
                // A scheduled run whose fire time another node took, or that would pass its
                // job's overlap policy counted over the cluster: it never existed.
                let refused = matches!(e, crate::store::StoreError::RunLimit { .. });
                act.shared.supervisor.do_send(super::cron::FireLost { job_run: act.record.id, refused });
                ctx.stop();
            }
            Err(crate::store::StoreError::Fenced { .. }) => act.fenced_out(ctx, fenced::Dropped::Fenced),
            Err(e) => {
                let message = format!("job run j{}: cannot commit to the store: {e}", act.record.id);
                if let Some(begun) = act.begun.take() {
                    let _ = begun.send(Err(super::EngineError::Fatal(message.clone())));
                }
                act.shared.supervisor.do_send(Fatal(message))
            }
        }));
    }

    fn run_committed(&mut self, ctx: &mut Context<Self>) {
        while let Some((events, after)) = self.committed.remove(&self.next_to_run) {
            self.next_to_run += 1;
            self.inflight -= 1;
            if !events.is_empty() {
                self.shared.journal.do_send(PublishAll(events));
            }
            after(self, ctx);
            if let Some(begun) = self.begun.take() {
                let _ = begun.send(Ok(()));
            }
        }
    }

    /// Hands the queued ones among `tasks` to the dispatcher, in one batch. In a cluster the
    /// committed `queued` rows (with their specs) are the enqueue: every node's Dispatcher
    /// claims from the database.
    fn enqueue(&self, tasks: &[usize], ctx: &mut Context<Self>) {
        if self.shared.cluster.is_some() {
            self.say_blocked_in_cluster(tasks, ctx);
            return self.arm_queue_timeouts(tasks, ctx);
        }
        let entries = self.ready_entries(tasks, ctx);
        if !entries.is_empty() {
            self.say_blocked(&entries);
            self.shared.dispatcher.do_send(Enqueue(entries));
        }
    }

    /// The dispatcher's entries of the queued ones among `tasks`.
    fn ready_entries(&self, tasks: &[usize], ctx: &mut Context<Self>) -> Vec<ReadyEntry> {
        tasks
            .iter()
            .filter(|&&i| self.run.tasks[i].state == TaskState::Queued)
            .map(|&i| {
                let t = &self.run.tasks[i];
                let queue_timeout_ms = self.run.def(i).queue_timeout.map(|d| d.as_millis() as u64);
                let queued_at_ms = t.queued_at_ms.unwrap_or_else(|| self.now());
                ReadyEntry::new(
                    t.id,
                    t.queue.clone(),
                    t.priority,
                    t.enqueue_seq,
                    queued_at_ms,
                    queue_timeout_ms,
                    ctx.address(),
                )
                .requiring(&self.run.def(i).requires)
            })
            .collect()
    }

    /// `task.blocked` for each entry this node lacks the labels of: it waits in its queue
    /// until a node that has them takes it (the Dispatcher never hands it out here).
    fn say_blocked(&self, entries: &[ReadyEntry]) {
        let labels = &self.shared.labels;
        for entry in entries.iter().filter(|e| !crate::model::routing::can_run(&e.requires, labels)) {
            let Some(i) = self.idx(entry.task_run) else { continue };
            let blocked = EventData::TaskBlocked { requires: entry.requires.clone(), node_labels: labels.to_vec() };
            let event = self.task_event(blocked, i);
            self.shared.journal.do_send(Publish(event));
        }
    }

    /// A revived run that a command left as it was (already ended, nothing to do) goes away again.
    fn release_if_idle(&mut self, ctx: &mut Context<Self>) {
        if self.run.job_run.state.is_terminal() && self.running.is_empty() && self.inflight == 0 {
            self.finish(ctx);
        }
    }

    fn finish(&mut self, ctx: &mut Context<Self>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.shared.supervisor.do_send(JobRunEnded { id: self.record.id, state: self.run.job_run.state });
        ctx.stop();
    }

    /// The attempt of task `i` is over (or never started): record it, and step the core with it.
    fn end_attempt(&mut self, ctx: &mut Context<Self>, mut attempt: AttemptRecord, failure: Option<FailReason>) {
        // A detail may quote a rendered template, so a secret param's value: never stored.
        let secrets = self.shared.secrets.of(self.record.id);
        attempt.detail = attempt.detail.map(|d| crate::model::params::redact(&d, &secrets));
        attempt.ended_at_ms = Some(self.now());
        attempt.reason = failure;
        self.ended_attempt(ctx, attempt, Default::default());
    }

    fn ended_attempt(
        &mut self,
        ctx: &mut Context<Self>,
        attempt: AttemptRecord,
        outputs: std::collections::BTreeMap<String, String>,
    ) {
        let end = AttemptEnd {
            n: attempt.n,
            started_at_ms: attempt.started_at_ms,
            exit_code: attempt.exit_code,
            signal: attempt.signal,
            failure: attempt.reason,
            detail: attempt.detail.clone(),
            outputs,
        };
        let input = Input::AttemptEnded { task_run: attempt.task_run, end };
        self.step(ctx, input, vec![Mutation::Attempt(attempt)], Vec::new());
    }

    /// The attempt's spec, as a function that renders its templates against params and
    /// upstream outputs and its model: the render may be slow (within its budget), so it runs off the actor.
    fn render_spec(
        &self,
        i: usize,
        attempt: u32,
        model: Option<String>,
    ) -> impl FnOnce() -> Result<AttemptSpec, String> + Send + 'static + use<> {
        let (workflow, job_index) = (self.run.workflow().clone(), self.run.job_index());
        let task_index = self.run.tasks[i].task_index;
        let ctx =
            TemplateContext { model: model.clone(), ..template_context(&self.shared, &self.record, &self.run, i) };
        let t = &self.run.tasks[i];
        let (job, task, job_run, task_run) = (self.record.job.clone(), t.task.clone(), self.record.id, t.id);
        let compensation = self.compensation_env(i);
        let (state_dir, log_cap_bytes) = (self.shared.state_dir.clone(), self.shared.log_cap_bytes);
        let output_limits = self.shared.output_limits;
        move || {
            let def = &workflow.jobs[job_index].tasks[task_index];
            let render = |text: &str, what: &str| render_template(text, &ctx, what);
            let command = match (&compensation, &def.command) {
                // A compensation runs the task's `compensate` by `sh -c`, never templated, like `run`.
                (Some(_), _) => crate::config::CommandSpec::Shell(def.compensate.clone().unwrap_or_default()),
                (None, crate::config::CommandSpec::Shell(text)) => crate::config::CommandSpec::Shell(text.clone()),
                (None, crate::config::CommandSpec::Argv(items)) => {
                    crate::config::CommandSpec::Argv(items.iter().map(|a| render(a, "args")).collect::<Result<_, _>>()?)
                }
            };
            // `env_file` values first: the executor applies them in order, so `env` wins.
            let literal = def.env_file.iter().map(|(k, v)| Ok((k.clone(), v.clone())));
            let mut env = literal
                .chain(def.env.iter().map(|(k, v)| Ok((k.clone(), render(v, &format!("env.{k}"))?))))
                .collect::<Result<Vec<_>, String>>()?;
            env.extend(model.map(|m| ("GAFFER_MODEL".to_string(), m)));
            let stdin = match compensation {
                Some(extra) => {
                    env.extend(extra);
                    None
                }
                None => def.stdin.as_deref().map(|s| render(s, "stdin")).transpose()?,
            };
            Ok(AttemptSpec {
                job,
                task,
                job_run,
                task_run,
                attempt,
                command,
                env,
                stdin,
                cwd: def.cwd.clone(),
                log_path: state_dir.join(AttemptRecord::log_path(job_run, task_run, attempt)),
                state_dir,
                log_cap_bytes,
                output_limits,
                cost_source: def.cost,
            })
        }
    }

    /// What a compensation sees besides the task's environment (SPEC §2.2): the id of the run
    /// it undoes and that run's outputs as `GAFFER_OUTPUT_<KEY>`. `None` for any other run.
    fn compensation_env(&self, i: usize) -> Option<Vec<(String, String)>> {
        let undone = self.run.tasks[i].compensates?;
        let outputs = self.idx(undone).map(|u| self.run.tasks[u].outputs.clone()).unwrap_or_default();
        let mut env = vec![("GAFFER_COMPENSATES".to_string(), undone.to_string())];
        env.extend(crate::model::saga::output_env(&outputs));
        Some(env)
    }

    /// A new run: `with` and `events` (a schedule's advance, an idempotency key) are committed
    /// and published with its records.
    /// The task runs it makes ready are first offered to the dispatcher (`Reserve`): those an
    /// idle worker takes are claimed at once and committed `running` in this same commit, so
    /// they wait for one commit before their start, not two.
    fn begin_new(&mut self, ctx: &mut Context<Self>, with: Vec<Mutation>, mut events: Vec<EngineEvent>) {
        for event in &mut events {
            event.job_run.get_or_insert(self.record.id);
        }
        let mut fx = self.decide(Input::Begin);
        let entries = self.ready_entries(&fx.enqueue, ctx);
        if entries.is_empty() {
            return self.carry_out(ctx, &mut fx, with, events);
        }
        // Nothing else is handled until the answer: this run's commits stay in order.
        let reserve = self.shared.dispatcher.send(Reserve(entries));
        ctx.wait(
            reserve
                .into_actor(self)
                .map(move |reserved, act, ctx| act.begin_reserved(ctx, fx, with, events, reserved.unwrap_or_default())),
        );
    }

    /// Carries out the first step of a new run with the workers reserved for it: each reserved
    /// task run is claimed now, its `running` and attempt committed with the run's records, and
    /// its worker handed the claim at once (`Launch`) with what says when that commit is
    /// durable: it starts the process then, and a kill sent meanwhile (a stop, a cancel) waits
    /// behind it, as behind a `Claim`. A claim that cannot be made here (a spec to render off
    /// the thread) goes to its worker as an ordinary `Assign` after the commit.
    fn begin_reserved(
        &mut self,
        ctx: &mut Context<Self>,
        mut fx: Effects,
        mut mutations: Vec<Mutation>,
        mut events: Vec<EngineEvent>,
        reserved: Vec<(ReadyEntry, Addr<Worker>)>,
    ) {
        // Reported as the step left them (queued), before the claims below move them on.
        events.extend(fx.notes.drain(..).map(|n| self.event_of(&n)));
        let mut launches: Vec<(Addr<Worker>, Claimed, String)> = Vec::new();
        let mut assigns: Vec<(Addr<Worker>, Assign)> = Vec::new();
        let mut failed = Vec::new();
        let mut claimed_here = std::collections::HashSet::new();
        let cluster = self.shared.cluster.is_some();
        for (entry, worker) in reserved {
            match self.claim_now(ctx, entry.task_run, worker.clone()) {
                Some((attempt, Ok(claimed))) => {
                    claimed_here.insert(entry.task_run);
                    mutations.push(Mutation::Attempt(attempt));
                    launches.push((worker, claimed, entry.queue));
                }
                Some((attempt, Err(e))) => {
                    claimed_here.insert(entry.task_run);
                    mutations.push(Mutation::Attempt(attempt));
                    failed.push((entry.task_run, e));
                    assigns.push((worker, Assign(entry)));
                }
                // In a cluster a task run not claimed here is queued in the store (with its
                // spec) like any other, for whichever node claims it.
                None if cluster => assigns.push((worker, Assign(entry))),
                None => {
                    claimed_here.insert(entry.task_run);
                    assigns.push((worker, Assign(entry)));
                }
            }
        }
        // A task run claimed here goes to its worker only: not to the dispatcher (the store's
        // queue) again.
        fx.enqueue.retain(|&i| !claimed_here.contains(&self.run.tasks[i].id));
        // In a cluster the worker is only given back, now (also if the commit then fails): its
        // task run is the store's queue's, or ended here.
        if cluster {
            for (worker, Assign(entry)) in std::mem::take(&mut assigns) {
                self.shared.dispatcher.do_send(WorkerIdle { worker, finished_queue: Some(entry.queue) });
            }
        }
        // The ordinary claim: it renders off the thread, or finds the run ended.
        let assign: AfterCommit = Box::new(move |_, _| {
            for (worker, assign) in assigns {
                worker.do_send(assign);
            }
        });
        let commit = self.carry_out_then(ctx, &mut fx, mutations, events, Some(assign), true);
        for (worker, claimed, queue) in launches {
            let durable: Durable = match &commit {
                Some(commit) => Box::pin(commit.clone().map(|outcome| outcome.is_ok())),
                None => Box::pin(std::future::ready(false)),
            };
            worker.do_send(Launch { claimed, durable, queue });
        }
        for (task_run, e) in failed {
            self.template_failed(ctx, task_run, &e);
        }
    }

    /// A run found unfinished in the store: timers and queues re-armed, interrupted attempts
    /// ended (their process groups killed if still alive), and the graph settled.
    fn resume(&mut self, ctx: &mut Context<Self>) {
        // Unheard claims first: each becomes the attempt it was (then `interrupted`), not a
        // queued task run to enqueue again.
        let unheard = std::mem::take(&mut self.interrupted_unheard);
        let (claims, interrupted) =
            std::mem::take(&mut self.interrupted).into_iter().partition(|a| unheard.contains(&a.task_run));
        self.interrupted = interrupted;
        for attempt in claims {
            self.record_unheard(ctx, attempt.task_run, attempt.n);
        }
        self.step(ctx, Input::Resume, Vec::new(), Vec::new());
        self.end_from_rows_unless_mailed(ctx);
        for mut attempt in std::mem::take(&mut self.interrupted) {
            if self.idx(attempt.task_run).is_none() {
                continue;
            }
            // Its recorded group, and what the record cannot name: a pid not yet committed,
            // grandchildren that left the group (they carry the attempt's environment).
            // Not when its node was another machine, which died: nothing here is its.
            if self.interrupted_elsewhere.contains(&attempt.task_run) {
                attempt.detail = Some("its node died while it ran".into());
                self.end_attempt(ctx, attempt, Some(FailReason::Interrupted));
                continue;
            }
            let process = attempt.pid.zip(attempt.pgid).map(|(pid, pgid)| ProcessHandle {
                pid,
                pgid,
                start_ticks: attempt.start_ticks,
            });
            self.shared.executor.kill_orphans(&self.shared.state_dir, attempt.task_run, attempt.n, process);
            attempt.detail = Some("gaffer stopped while it ran".into());
            self.end_attempt(ctx, attempt, Some(FailReason::Interrupted));
        }
        self.step(ctx, Input::Settle, Vec::new(), Vec::new());
    }
}

/// The detail of an attempt whose node died before its job run's owner heard it start.
pub(super) const UNHEARD: &str = "its node died before its start was heard";

/// How long an adopter waits for the `Ended` letter of an attempt that another node already
/// completed (its row says so) before it takes the outcome from the row.
const ENDED_LETTER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl JobRun {
    /// Adopted attempts that ended on their node (the fenced completion wrote their row) but
    /// whose `Ended` letter the old owner may have read and died before acting on: if no letter
    /// comes within [`ENDED_LETTER_GRACE`], the outcome is the row's (without its outputs,
    /// which only the letter carries).
    fn end_from_rows_unless_mailed(&mut self, ctx: &mut Context<Self>) {
        let awaited: Vec<(u64, u32)> = self
            .running
            .iter()
            .filter(|(_, (a, runner))| runner.is_none() && a.ended_at_ms.is_some())
            .map(|(&task_run, (a, _))| (task_run, a.n))
            .collect();
        if awaited.is_empty() {
            return;
        }
        ctx.run_later(ENDED_LETTER_GRACE, move |act, ctx| {
            for (task_run, n) in awaited {
                let still = matches!(act.running.get(&task_run), Some((a, None)) if a.n == n);
                let Some((attempt, _)) = still.then(|| act.running.remove(&task_run)).flatten() else { continue };
                tracing::warn!(
                    task_run,
                    "job run j{}: no `Ended` letter for attempt {n}; its row's outcome taken",
                    act.record.id
                );
                act.note_if_idle();
                act.ended_attempt(ctx, attempt, Default::default());
            }
        });
    }
}

fn render_template(text: &str, ctx: &TemplateContext, what: &str) -> Result<String, String> {
    if !template::is_templated(text) {
        return Ok(text.to_string());
    }
    template::render(text, ctx).map_err(|e| format!("{what}: {e}"))
}

/// An attempt found running in the store at start: a crash interrupted it.
pub struct Interrupted {
    pub attempt: AttemptRecord,
    /// How many attempts right before it in its task run's series a crash interrupted too.
    pub crashes_before: u32,
    /// It ran on another node, which died (an adopted job run): its processes are not here.
    pub elsewhere: bool,
    /// An adopted job run's attempt that was not interrupted: it still runs on that live node,
    /// or ended there (`None`) and its `Ended` letter is on its way to whoever owns the run.
    pub goes_on: Option<Option<i64>>,
    /// Claimed by a node that died before the owner heard it start (`model::lease::
    /// DeadRunner::Unheard`): the record says `queued` at the attempt before this one.
    pub unheard: bool,
}

impl Interrupted {
    /// `attempt` of task run `t`, with `earlier`: the task run's stored attempts.
    pub fn of(attempt: AttemptRecord, t: &TaskRunRecord, earlier: &[AttemptRecord]) -> Interrupted {
        let in_a_row = earlier
            .iter()
            .rev()
            .filter(|a| a.n < t.attempt && a.n >= t.series_start)
            .take_while(|a| a.reason == Some(FailReason::Interrupted))
            .count();
        let crashes_before = u32::try_from(in_a_row).unwrap_or(u32::MAX);
        Interrupted { attempt, crashes_before, elsewhere: false, goes_on: None, unheard: false }
    }

    /// Attempt `n` of task run `t` (queued at `n - 1` in its record), claimed by node that died
    /// before its owner heard it start: it counts as a crash like any attempt its node took down.
    pub fn unheard(t: &TaskRunRecord, n: u32, earlier: &[AttemptRecord], now_ms: u64) -> Interrupted {
        let claimed = TaskRunRecord { attempt: n, ..t.clone() };
        let attempt = AttemptRecord::started(t.id, t.job_run, n, now_ms);
        Interrupted { elsewhere: true, unheard: true, ..Interrupted::of(attempt, &claimed, earlier) }
    }
}

/// How a JobRun actor begins.
pub enum Begin {
    /// A new run; `with` is committed and published together with it (a schedule's advance
    /// and its `schedule.fired`, so a crash can neither lose nor double a fire time).
    New {
        with: Vec<Mutation>,
        events: Vec<EngineEvent>,
        /// Told once the run's records are durable.
        begun: Option<Begun>,
    },
    Resume,
}

impl Actor for JobRun {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(super::MAILBOX_CAPACITY);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Start(pub Begin);

impl Handler<Start> for JobRun {
    type Result = ();

    fn handle(&mut self, Start(begin): Start, ctx: &mut Self::Context) {
        match begin {
            Begin::New { with, events, begun } => {
                self.begun = begun;
                self.begin_new(ctx, with, events)
            }
            Begin::Resume => self.resume(ctx),
        }
    }
}

/// A commit whose outcome several wait for: the run's actor and its reserved workers.
type SharedCommit = futures_util::future::Shared<crate::store::Committing>;

/// What a worker needs to start an attempt it claimed.
pub struct Claimed {
    pub spec: AttemptSpec,
    pub timeout: Duration,
    pub heartbeat_timeout: Duration,
    pub pricing: Arc<Pricing>,
    pub owner: Owner,
}

/// A worker asks for `task_run`: answered after `running` + the attempt number are durable,
/// or `None` when it is no longer queued (cancelled, budget spent, stopping).
#[derive(Message)]
#[rtype(result = "Option<Claimed>")]
pub struct Claim {
    pub task_run: u64,
    pub worker: Addr<Worker>,
    /// The attempt number a cluster node claimed in the database: granted only if it is the
    /// next one here too.
    pub attempt: Option<u32>,
}

impl Handler<Claim> for JobRun {
    type Result = ResponseActFuture<Self, Option<Claimed>>;

    fn handle(&mut self, msg: Claim, ctx: &mut Self::Context) -> Self::Result {
        let nothing = || -> ResponseActFuture<Self, Option<Claimed>> { Box::pin(actix::fut::ready(None)) };
        let task_run = msg.task_run;
        let next = self.idx(task_run).map(|i| self.run.tasks[i].attempt + 1);
        if msg.attempt.is_some_and(|n| Some(n) != next) {
            tracing::error!(
                task_run,
                "claimed attempt {:?} in the store, but the next one here is {next:?}",
                msg.attempt
            );
            self.refuse_claim(ctx, task_run);
            return nothing();
        }
        let Some((i, attempt, render)) = self.grant(ctx, task_run, msg.worker) else {
            if msg.attempt.is_some() {
                self.refuse_claim(ctx, task_run);
            }
            return nothing();
        };
        // Claimed from the cluster's queue: the claim's commit made it `running` on this node
        // as this attempt; it stands for the owner's own `running`.
        let in_store = msg.attempt.is_some() && self.shared.cluster.is_some();
        if !self.run.def(i).is_templated() {
            // Nothing to render: the spec is ready now, and `running` is committed at once.
            return match render() {
                Ok(spec) => self.commit_claim(ctx, i, attempt, spec, in_store),
                Err(e) => {
                    self.template_failed(ctx, task_run, &e);
                    nothing()
                }
            };
        }
        // A template may take a while (within its budget): never on the actor's thread.
        let blocking = tokio::task::spawn_blocking(render);
        let rendered = async move { blocking.await.map_err(|e| format!("rendering stopped: {e}"))? };
        Box::pin(rendered.into_actor(self).then(move |rendered, act, ctx| match rendered {
            Ok(spec) => act.commit_claim(ctx, i, attempt, spec, in_store),
            Err(e) => {
                act.template_failed(ctx, task_run, &e);
                nothing()
            }
        }))
    }
}

impl JobRun {
    /// The core grants `worker` the claim of `task_run`: task run `i` is `running` in memory with
    /// a new attempt (to commit), and the function that renders the attempt's spec.
    fn grant(
        &mut self,
        ctx: &mut Context<Self>,
        task_run: u64,
        worker: Addr<Worker>,
    ) -> Option<(usize, AttemptRecord, impl FnOnce() -> Result<AttemptSpec, String> + Send + 'static + use<>)> {
        let granted = self.step(ctx, Input::Claim { task_run }, Vec::new(), Vec::new()).claimed?;
        let (i, n) = (granted.task, granted.attempt);
        let mut attempt = AttemptRecord::started(task_run, self.record.id, n, self.now());
        attempt.model = granted.model;
        let render = self.render_spec(i, n, attempt.model.clone());
        self.running.insert(task_run, (attempt.clone(), Some(Runner::Local(worker))));
        Some((i, attempt, render))
    }

    /// A claim made for a reserved worker while a new run begins, when its spec needs no
    /// rendering off the thread: the attempt to commit with the run's records, and what the
    /// worker starts (or why its spec failed). `None`: not claimed here.
    fn claim_now(
        &mut self,
        ctx: &mut Context<Self>,
        task_run: u64,
        worker: Addr<Worker>,
    ) -> Option<(AttemptRecord, Result<Claimed, String>)> {
        // A cluster node renders a queued task run's spec on this thread anyway (`queued_specs`).
        if self.run.def(self.idx(task_run)?).is_templated() && self.shared.cluster.is_none() {
            return None;
        }
        let (i, attempt, render) = self.grant(ctx, task_run, worker)?;
        Some((attempt, render().map(|spec| self.claimed(ctx, i, spec))))
    }

    /// What the worker of task run `i` needs to start it with `spec`.
    fn claimed(&self, ctx: &Context<Self>, i: usize, spec: AttemptSpec) -> Claimed {
        let def = self.run.def(i);
        Claimed {
            spec,
            timeout: def.timeout,
            heartbeat_timeout: def.heartbeat_timeout,
            pricing: self.shared.pricing.clone(),
            owner: Owner::Local(ctx.address()),
        }
    }

    /// `running` + the attempt number become durable; only then does the worker get the spec.
    /// `in_store`: they are already — a claim from the cluster's queue committed the task run
    /// `running` on this node as this attempt (`store::pg::queue::claim`) — so the worker gets
    /// the spec now and the owner's records (the task run, the attempt) follow in its next
    /// commit, often with the attempt's end. If this node dies or is paused past its lease
    /// before that commit, the row is `running` on a dead node while the owner's committed
    /// record says `queued`: whoever finds it records that attempt `interrupted`
    /// (`model::lease::DeadRunner::Unheard`), so its number is never given again.
    fn commit_claim(
        &mut self,
        ctx: &mut Context<Self>,
        i: usize,
        attempt: AttemptRecord,
        spec: AttemptSpec,
        in_store: bool,
    ) -> ResponseActFuture<Self, Option<Claimed>> {
        let claimed = self.claimed(ctx, i, spec);
        if self.fenced {
            return Box::pin(actix::fut::ready(None));
        }
        if in_store {
            // The claim's commit is the durable `running` (this node, attempt n): the owner's
            // records of it are written by the attempt's end (which supersedes them: it writes
            // the task run and the attempt), or alone after `start_write_delay` if it still runs
            // then — not with the run's other commits, or the first end of a wave would write
            // every other start. A crash in between leaves the row as a claim its owner never
            // heard: `model::lease::dead_runner`'s `Unheard`, recorded `interrupted` as attempt n.
            let (task_run, n) = (attempt.task_run, attempt.n);
            let delay = self.shared.cluster.as_ref().map_or(PID_WRITE_DELAY, |c| c.start_write_delay);
            self.claims_unwritten.insert(task_run);
            ctx.run_later(delay, move |act, ctx| act.write_unwritten(ctx, task_run, n, true));
            return Box::pin(actix::fut::ready(Some(claimed)));
        }
        let writes = vec![Mutation::TaskRun(self.task_record(i)), Mutation::Attempt(attempt)];
        let commit = self.shared.store.commit(writes);
        Box::pin(commit.into_actor(self).map(move |result, act, ctx| match result {
            Ok(()) => Some(claimed),
            Err(crate::store::StoreError::Fenced { .. }) => {
                act.fenced_out(ctx, fenced::Dropped::Fenced);
                None
            }
            Err(e) => {
                act.shared
                    .supervisor
                    .do_send(Fatal(format!("job run j{}: cannot commit to the store: {e}", act.record.id)));
                None
            }
        }))
    }

    /// A template that cannot be rendered fails the task run for good: it would fail the same
    /// way at every retry (an undefined upstream output, a render past its budget).
    fn template_failed(&mut self, ctx: &mut Context<Self>, task_run: u64, error: &str) {
        let Some((mut attempt, _)) = self.running.remove(&task_run) else { return };
        self.note_if_idle();
        attempt.detail = Some(crate::sanitize::sanitize(error));
        self.end_attempt(ctx, attempt, Some(FailReason::TemplateError));
    }
}

/// The process exists: record its pid (for crash recovery) and say `task.started`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ProcessStarted {
    pub task_run: u64,
    pub attempt: u32,
    pub process: Option<ProcessHandle>,
}

impl Handler<ProcessStarted> for JobRun {
    type Result = ();

    fn handle(&mut self, msg: ProcessStarted, ctx: &mut Self::Context) {
        let Some(i) = self.idx(msg.task_run) else { return };
        let pid = msg.process.as_ref().map(|p| p.pid);
        let event = self.task_event(EventData::TaskStarted { priority: self.run.tasks[i].priority, pid }, i);
        let Some((attempt, _)) = self.running.get_mut(&msg.task_run).filter(|(a, _)| a.n == msg.attempt) else {
            return;
        };
        if let Some(p) = msg.process {
            attempt.pid = Some(p.pid);
            attempt.pgid = Some(p.pgid);
            attempt.start_ticks = p.start_ticks;
            // The pid only helps crash recovery find the group (which also finds it by its
            // environment): `running` is already durable, so the pid needs no commit of its
            // own on the start path. It goes with the next one (most often the attempt's end).
            self.pids_unwritten.insert(msg.task_run);
            let (task_run, n) = (msg.task_run, msg.attempt);
            ctx.run_later(PID_WRITE_DELAY, move |act, ctx| act.write_unwritten(ctx, task_run, n, false));
        }
        self.shared.journal.do_send(Publish(event));
    }
}

/// How long a running attempt's pid may wait for another commit to ride on.
const PID_WRITE_DELAY: Duration = Duration::from_secs(1);

impl JobRun {
    /// The attempt records of running attempts whose pid is not written yet; they are now.
    /// Not those of claims whose start is not written either: their pid goes with it.
    fn unwritten_pids(&mut self) -> Vec<Mutation> {
        let (running, claims) = (&self.running, &self.claims_unwritten);
        self.pids_unwritten
            .drain()
            .filter(|task_run| !claims.contains(task_run))
            .filter_map(|task_run| running.get(&task_run).map(|(a, _)| Mutation::Attempt(a.clone())))
            .collect()
    }

    /// Attempt `n` of `task_run` still runs and its pid (`claim_due` false) or its claim's
    /// start (true: with its pid, if known) was not written with anything else: it is now. A
    /// pid waits for the claim's start if that is not written yet.
    fn write_unwritten(&mut self, ctx: &mut Context<Self>, task_run: u64, n: u32, claim_due: bool) {
        let Some((attempt, _)) = self.running.get(&task_run).filter(|(a, _)| a.n == n) else {
            // It ended (its end wrote its records); a later attempt's own timer writes that one's.
            if !self.running.contains_key(&task_run) {
                self.claims_unwritten.remove(&task_run);
            }
            return;
        };
        let attempt = attempt.clone();
        if self.fenced || (!claim_due && self.claims_unwritten.contains(&task_run)) {
            return;
        }
        if claim_due {
            if !self.claims_unwritten.remove(&task_run) {
                return;
            }
            self.pids_unwritten.remove(&task_run);
            let Some(i) = self.idx(task_run) else { return };
            let writes = vec![Mutation::TaskRun(self.task_record(i)), Mutation::Attempt(attempt)];
            // A commit refused (another node owns the run now) kills the attempt: `fenced_out`.
            self.persist_then(ctx, writes, Vec::new(), |_, _| {});
        } else if self.pids_unwritten.remove(&task_run) {
            drop(self.shared.store.commit(vec![Mutation::Attempt(attempt)]));
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct ProgressReported {
    pub task_run: u64,
    pub text: String,
}

impl Handler<ProgressReported> for JobRun {
    type Result = ();

    fn handle(&mut self, msg: ProgressReported, ctx: &mut Self::Context) {
        self.step(ctx, Input::Progress { task_run: msg.task_run, text: msg.text }, Vec::new(), Vec::new());
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct CostAdded {
    pub task_run: u64,
    pub attempt: u32,
    pub delta: CostDelta,
}

impl Handler<CostAdded> for JobRun {
    type Result = ();

    fn handle(&mut self, msg: CostAdded, ctx: &mut Self::Context) {
        let Some(i) = self.idx(msg.task_run) else { return };
        let d = &msg.delta;
        let mut event =
            self.task_event(EventData::TaskCost { usage: d.usage, model: d.model.clone(), unpriced: d.unpriced }, i);
        event.attempt = Some(msg.attempt);
        let mut events = vec![event];
        let mut mutations = Vec::new();
        if let Some((attempt, _)) = self.running.get_mut(&msg.task_run).filter(|(a, _)| a.n == msg.attempt) {
            attempt.add_cost(d.model.as_deref(), &d.usage);
            mutations.push(Mutation::Attempt(attempt.clone()));
        }
        if d.unpriced {
            events.extend(self.warn_attempt(i, msg.attempt, unpriced_warning(d), &mut mutations));
        }
        let input = Input::CostAdded {
            task_run: msg.task_run,
            usd_micros: d.usage.usd_micros,
            input_tokens: d.usage.input_tokens,
            output_tokens: d.usage.output_tokens,
        };
        self.step(ctx, input, mutations, events);
    }
}

/// Tokens that no price covers are counted as $0, and the attempt says so.
fn unpriced_warning(d: &CostDelta) -> String {
    let tokens = d.usage.tokens();
    match &d.model {
        Some(model) => format!(
            "model `{model}` has no price in the pricing table: its {tokens} tokens are counted as $0 \
             (add [pricing.\"{model}\"] to the workflow file, or refresh the table with `gaffer pricing import`)"
        ),
        None => format!(
            "{tokens} tokens were reported without a model or dollars, so they are counted as $0 \
             (report `usd=` or `model=` with them)"
        ),
    }
}

/// A warning about what a running attempt reported (`task.warning`): kept on its record and
/// shown by `show` and the TUI.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WarningReported {
    pub task_run: u64,
    pub attempt: u32,
    pub text: String,
}

impl Handler<WarningReported> for JobRun {
    type Result = ();

    fn handle(&mut self, msg: WarningReported, ctx: &mut Self::Context) {
        let Some(i) = self.idx(msg.task_run) else { return };
        let mut mutations = Vec::new();
        let events: Vec<EngineEvent> =
            self.warn_attempt(i, msg.attempt, msg.text, &mut mutations).into_iter().collect();
        if !events.is_empty() {
            self.persist_then(ctx, mutations, events, |_, _| {});
        }
    }
}

impl JobRun {
    /// Adds `text` to the running attempt `n` of task `i` (if it has room) and returns its
    /// `task.warning` event; the attempt's new record joins `mutations`.
    fn warn_attempt(&mut self, i: usize, n: u32, text: String, mutations: &mut Vec<Mutation>) -> Option<EngineEvent> {
        let (attempt, _) = self.running.get_mut(&self.run.tasks[i].id).filter(|(a, _)| a.n == n)?;
        if !attempt.add_warning(text.clone()) {
            return None;
        }
        mutations.retain(|m| !matches!(m, Mutation::Attempt(a) if a.task_run == attempt.task_run && a.n == n));
        mutations.push(Mutation::Attempt(attempt.clone()));
        let mut event = self.task_event(EventData::TaskWarning { message: text }, i);
        event.attempt = Some(n);
        Some(event)
    }

    /// Task `i`'s `expect` over an attempt's outputs: why they do not conform, if they do not.
    /// The schema file is read now (the file as it is, like the command a run starts).
    fn check_expect(&self, i: usize, outputs: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
        if self.run.tasks[i].kind == run::Kind::Compensation {
            return Ok(()); // `expect` is about the task's result, not about undoing it
        }
        let Some(expect) = &self.run.def(i).expect else { return Ok(()) };
        let schema = match &expect.json_schema {
            Some(path) => Some(crate::config::load_schema(path).map_err(|e| format!("cannot check the output: {e}"))?),
            None => None,
        };
        crate::model::expect::check(expect, outputs, schema.as_ref())
    }
}

/// How an attempt ended, as the worker saw it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttemptEnded {
    pub task_run: u64,
    pub attempt: u32,
    pub exit: Option<AttemptExit>,
    pub reason: Option<FailReason>,
    pub detail: Option<String>,
    pub outputs: std::collections::BTreeMap<String, String>,
}

impl Handler<AttemptEnded> for JobRun {
    type Result = ();

    fn handle(&mut self, msg: AttemptEnded, ctx: &mut Self::Context) {
        let Some(i) = self.idx(msg.task_run) else { return };
        if self.running.get(&msg.task_run).is_none_or(|(a, _)| a.n != msg.attempt) {
            return;
        }
        let Some((mut attempt, _)) = self.running.remove(&msg.task_run) else { return };
        self.note_if_idle();
        attempt.exit_code = msg.exit.and_then(|e| e.exit_code);
        attempt.signal = msg.exit.and_then(|e| e.signal);
        attempt.detail = msg.detail;
        let mut failure = msg.reason;
        if failure.is_none()
            && let Err(why) = self.check_expect(i, &msg.outputs)
        {
            failure = Some(FailReason::InvalidOutput);
            attempt.detail = Some(crate::sanitize::sanitize(&why));
        }
        let secrets = self.shared.secrets.of(self.record.id);
        attempt.detail = attempt.detail.map(|d| crate::model::params::redact(&d, &secrets));
        attempt.ended_at_ms = Some(self.now());
        attempt.reason = failure;
        self.ended_attempt(ctx, attempt, msg.outputs);
    }
}

/// The timer of a task run is due: its retry delay has passed, or its `wait_timeout` ran out.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TimerDue {
    pub task_run: u64,
    /// The time the timer was set for: a timer the task run no longer has is ignored.
    pub due_ms: u64,
}

impl Handler<TimerDue> for JobRun {
    type Result = ();

    fn handle(&mut self, msg: TimerDue, ctx: &mut Self::Context) {
        self.step(ctx, Input::TimerDue { task_run: msg.task_run, due_ms: msg.due_ms }, Vec::new(), Vec::new());
    }
}

/// Releases task runs waiting for the signal `name`: the one named, or (`task_run: None`)
/// every one of this job run that waits for it.
#[derive(Message)]
#[rtype(result = "Result<String, String>")]
pub struct Signal {
    pub task_run: Option<u64>,
    pub name: String,
}

impl Handler<Signal> for JobRun {
    type Result = Result<String, String>;

    fn handle(&mut self, msg: Signal, ctx: &mut Self::Context) -> Self::Result {
        let input = Input::Signal { task_run: msg.task_run, name: msg.name };
        self.command(ctx, input)
    }
}

impl JobRun {
    /// A person's command through the core; a revived run it left as it was goes away again.
    fn command(&mut self, ctx: &mut Context<Self>, input: Input) -> Result<String, String> {
        let result = self.step(ctx, input, Vec::new(), Vec::new()).reply.unwrap_or_else(|| Ok(String::new()));
        self.release_if_idle(ctx);
        result
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct QueueTimedOut {
    pub task_run: u64,
}

impl Handler<QueueTimedOut> for JobRun {
    type Result = ();

    fn handle(&mut self, msg: QueueTimedOut, ctx: &mut Self::Context) {
        self.step(ctx, Input::QueueTimedOut { task_run: msg.task_run }, Vec::new(), Vec::new());
    }
}

/// Cancel one task run of this job run, or (`task_run: None`) the whole job run.
#[derive(Message)]
#[rtype(result = "Result<String, String>")]
pub struct Cancel {
    pub task_run: Option<u64>,
}

impl Handler<Cancel> for JobRun {
    type Result = Result<String, String>;

    fn handle(&mut self, msg: Cancel, ctx: &mut Self::Context) -> Self::Result {
        self.command(ctx, Input::Cancel { task_run: msg.task_run })
    }
}

/// Retry a dead or cancelled task run (fresh series of attempts), or every one of them in this
/// job run (`task_run: None`), raising the budgets in the way to `budget_usd_micros` if given.
#[derive(Message)]
#[rtype(result = "Result<String, String>")]
pub struct Retry {
    pub task_run: Option<u64>,
    pub budget_usd_micros: Option<u64>,
}

impl Handler<Retry> for JobRun {
    type Result = Result<String, String>;

    /// What may be retried and which budgets refuse it is `model::retry::plan`'s to say; the
    /// raised budgets are committed with the reopened task runs, so none is half-applied.
    fn handle(&mut self, msg: Retry, ctx: &mut Self::Context) -> Self::Result {
        let (job, tasks) = self.spends();
        let plan = crate::model::retry::plan(&job, &tasks, msg.task_run, msg.budget_usd_micros);
        match plan {
            Ok(plan) => self.command(ctx, Input::Retry { plan }),
            Err(refusal) => {
                self.release_if_idle(ctx);
                Err(refusal.to_string())
            }
        }
    }
}

impl JobRun {
    /// The spending and limits in force of this job run and its task runs (`model::retry`'s data).
    fn spends(&self) -> (crate::model::retry::JobRunSpend, Vec<crate::model::retry::TaskRunSpend>) {
        let made = (0..self.run.tasks.len()).filter(|&i| self.run.tasks[i].is_made());
        let records: Vec<TaskRunRecord> = made.map(|i| self.task_record(i)).collect();
        let raised: RaisedBudgets = (&self.run.raised).into();
        super::manual_retry::spends(self.job(), &self.job_record(), &records, &raised)
    }
}

/// Graceful stop: interrupt running attempts; answer once none is left and all is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for JobRun {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) -> Self::Result {
        let parked = self.parked(&(0..self.run.tasks.len()).collect::<Vec<_>>());
        self.step(ctx, Input::Stop, parked, Vec::new());
        let idle = self.when_idle();
        let waited = async move {
            let _ = tokio::time::timeout(STOP_WAIT, idle).await;
        };
        // Then make sure every earlier commit landed.
        Box::pin(actix::fut::wrap_future::<_, Self>(waited).then(|_, act, _| {
            let flush = act.shared.store.commit(Vec::new());
            actix::fut::wrap_future::<_, Self>(async move {
                let _ = flush.await;
            })
        }))
    }
}

/// How long a graceful stop waits for a job run's attempts: their grace, the SIGKILL after it,
/// and the wait for their groups to be gone. Only a broken store (a start that could not be
/// committed stays `running` in memory) makes it run out.
const STOP_WAIT: Duration =
    Duration::from_secs(SHUTDOWN_GRACE.as_secs() + 2 * crate::executor::KILL_GRACE.as_secs() + 5);

impl JobRun {
    /// Resolves once no attempt of this job run runs.
    fn when_idle(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.running.is_empty() {
            let _ = tx.send(());
        } else {
            self.idle_waiters.push(tx);
        }
        rx
    }

    /// Tells those waiting for `when_idle` once the last attempt ended.
    fn note_if_idle(&mut self) {
        if self.running.is_empty() {
            for tx in self.idle_waiters.drain(..) {
                let _ = tx.send(());
            }
        }
    }
}
