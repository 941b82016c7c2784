//! JobRun actors: one per active job run, the owner of its task runs' state.
//!
//! An event-driven transition engine: when a task run ends, the rules of `model::graph` say
//! what follows, the changes are committed, and only then are they acted on (enqueue, timers,
//! kills) and reported (events). In-memory state runs ahead of the disk; nothing outside this
//! actor ever sees a state that is not yet durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::dispatcher::{AttemptFailed, Enqueue, ReadyEntry};
use super::journal::Publish;
use super::scheduler::{TaskTimer, Unschedule};
use super::supervisor::{Fatal, JobRunEnded};
use super::worker::{Kill, Worker};
use super::{EngineEvent, Shared};
use crate::config::template::{self, TemplateContext, UpstreamTask};
use crate::config::{JobDef, Workflow};
use crate::executor::{AttemptExit, AttemptSpec, KILL_GRACE, ProcessHandle};
use crate::model::cost::{CostDelta, Pricing};
use crate::model::graph::{self, Change, JobGraph, TaskStates};
use crate::model::money::usd_json;
use crate::model::policy::{self, AfterAttempt, AttemptOutcome, RunSoFar};
use crate::model::{FailReason, JobState, TaskState};
use crate::store::{AttemptRecord, CacheEntry, JobRunRecord, Mutation, RaisedBudgets, TaskRunRecord};

mod rerun;
pub(crate) use rerun::workflow_for_run;
pub use rerun::{CheckDefinition, RetryFrom};

/// How long running attempts get to stop on a graceful stop before SIGKILL (SPEC §7).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub struct JobRun {
    shared: Arc<Shared>,
    workflow: Arc<Workflow>,
    job_index: usize,
    graph: JobGraph,
    record: JobRunRecord,
    /// By task index (file order). A record's `state` mirrors `states`, written only through
    /// `set_state` and `sync`.
    tasks: Vec<TaskRunRecord>,
    /// The authority on task states, with O(1) counts for the per-event questions.
    states: TaskStates,
    index_of: HashMap<u64, usize>,
    /// The attempt each running task run is in, and the worker running it.
    running: HashMap<u64, (AttemptRecord, Option<Addr<Worker>>)>,
    /// Set once the job run's budget is spent: no new attempt starts.
    budget_spent: bool,
    /// Budgets a person raised with `gaffer retry --budget`; they replace the file's.
    raised: RaisedBudgets,
    stopping: bool,
    /// Attempts found running in the store at start (crash recovery), by task run.
    interrupted: Vec<AttemptRecord>,
    ended: bool,
    /// Commits made by `persist_then` whose callbacks have not run yet.
    inflight: usize,
    next_commit: u64,
    next_to_run: u64,
    committed: std::collections::BTreeMap<u64, (Vec<EngineEvent>, AfterCommit)>,
    /// More to run right after a commit's callback, by commit (see `after_last_commit`).
    also_after: HashMap<u64, Vec<AfterCommit>>,
    /// Told once the new run's first commit (its records) is durable: a submit answers then.
    begun: Option<Begun>,
}

type AfterCommit = Box<dyn FnOnce(&mut JobRun, &mut Context<JobRun>)>;

/// Told once a new run's records are durable, or why they could not be made so.
pub type Begun = tokio::sync::oneshot::Sender<Result<(), String>>;

impl JobRun {
    pub fn new(
        shared: Arc<Shared>,
        workflow: Arc<Workflow>,
        job_index: usize,
        record: JobRunRecord,
        tasks: Vec<TaskRunRecord>,
        interrupted: Vec<AttemptRecord>,
        raised: RaisedBudgets,
    ) -> JobRun {
        let graph = JobGraph::new(&workflow.jobs[job_index]);
        let mut ordered = tasks;
        ordered.sort_by_key(|t| t.task_index);
        let index_of = ordered.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
        let states = TaskStates::new(ordered.iter().map(|t| t.state).collect());
        let budget = raised.job_run.or(workflow.jobs[job_index].budget_usd_micros);
        let budget_spent = policy::budget_reached(record.cost_usd_micros, budget);
        JobRun {
            shared,
            workflow,
            job_index,
            graph,
            record,
            tasks: ordered,
            states,
            index_of,
            running: HashMap::new(),
            budget_spent,
            raised,
            stopping: false,
            interrupted,
            ended: false,
            inflight: 0,
            next_commit: 0,
            next_to_run: 0,
            committed: Default::default(),
            also_after: HashMap::new(),
            begun: None,
        }
    }

    fn job(&self) -> &JobDef {
        &self.workflow.jobs[self.job_index]
    }

    /// The job run's budget in force: raised by a retry, else the file's.
    fn job_budget(&self) -> Option<u64> {
        self.raised.job_run.or(self.job().budget_usd_micros)
    }

    /// Task `i`'s `(budget_usd, retry.max_cost_usd)` in force.
    fn task_limits(&self, i: usize) -> (Option<u64>, Option<u64>) {
        let def = &self.job().tasks[i];
        let raised = self.raised.task_runs.get(&self.tasks[i].id).copied();
        crate::model::retry::task_limits(def.budget_usd_micros, def.retry.max_cost_usd_micros, raised)
    }

    fn now(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    fn set_state(&mut self, i: usize, to: TaskState) {
        self.states.set(i, to);
        self.tasks[i].state = to;
    }

    /// Mirrors changes the graph made in `states` into the records.
    fn sync(&mut self, changes: &[Change]) {
        for c in changes {
            self.tasks[c.task].state = c.to;
        }
    }

    fn task_event(&self, name: &'static str, i: usize) -> EngineEvent {
        let t = &self.tasks[i];
        let mut e = EngineEvent::new(name, self.now());
        e.job = Some(self.record.job.clone());
        e.job_run = Some(self.record.id);
        e.task = Some(t.task.clone());
        e.task_run = Some(t.id);
        e.attempt = (t.attempt > 0).then_some(t.attempt);
        e.queue = Some(t.queue.clone());
        e
    }

    fn job_event(&self, name: &'static str) -> EngineEvent {
        let mut e = EngineEvent::new(name, self.now());
        e.job = Some(self.record.job.clone());
        e.job_run = Some(self.record.id);
        e
    }

    /// Commits `mutations`; then publishes `events` and runs `after`. Callbacks run in the
    /// order the commits were asked for, whatever order their futures are polled in, so events
    /// always come out in the order the changes were made. A store that cannot commit is fatal:
    /// gaffer never acts on a state it could not make durable.
    fn persist_then(
        &mut self,
        ctx: &mut Context<Self>,
        mutations: Vec<Mutation>,
        events: Vec<EngineEvent>,
        after: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        let commit = self.shared.store.commit(mutations);
        let seq = self.next_commit;
        self.next_commit += 1;
        self.inflight += 1;
        ctx.spawn(commit.into_actor(self).map(move |result, act, ctx| match result {
            Ok(()) => {
                act.committed.insert(seq, (events, Box::new(after)));
                act.run_committed(ctx);
            }
            Err(e) => {
                let message = format!("job run j{}: cannot commit to the store: {e}", act.record.id);
                if let Some(begun) = act.begun.take() {
                    let _ = begun.send(Err(message.clone()));
                }
                act.shared.supervisor.do_send(Fatal(message))
            }
        }));
    }

    /// Runs `f` right after the callback of the last commit asked for, in the same turn: it
    /// follows that commit even when the callback ends the actor.
    fn after_last_commit(&mut self, f: impl FnOnce(&mut Self, &mut Context<Self>) + 'static) {
        let seq = self.next_commit.saturating_sub(1);
        self.also_after.entry(seq).or_default().push(Box::new(f));
    }

    fn run_committed(&mut self, ctx: &mut Context<Self>) {
        while let Some((events, after)) = self.committed.remove(&self.next_to_run) {
            let seq = self.next_to_run;
            self.next_to_run += 1;
            self.inflight -= 1;
            for event in events {
                self.shared.journal.do_send(Publish(event));
            }
            after(self, ctx);
            for also in self.also_after.remove(&seq).unwrap_or_default() {
                also(self, ctx);
            }
            if let Some(begun) = self.begun.take() {
                let _ = begun.send(Ok(()));
            }
        }
    }

    /// Turns graph changes into records, events and queue entries; commits; then enqueues.
    fn apply_changes(
        &mut self,
        ctx: &mut Context<Self>,
        changes: Vec<Change>,
        mut mutations: Vec<Mutation>,
        mut events: Vec<EngineEvent>,
    ) {
        let now = self.now();
        let mut ready = Vec::new();
        let mut wait_timers = Vec::new();
        let mut work: std::collections::VecDeque<Change> = last_change_per_task(changes).into();
        while let Some(change) = work.pop_front() {
            let i = change.task;
            let starts_work = matches!(change.to, TaskState::Queued | TaskState::Waiting);
            if starts_work && (self.budget_spent || self.stopping_for_good()) {
                self.set_state(i, TaskState::Skipped);
            } else if change.to == TaskState::Queued
                && let Some(hit) = self.cache_hit(i)
            {
                // Reused instead of run: it succeeds now, and what follows it may start.
                events.push(self.succeed_from_cache(i, &hit));
                mutations.push(Mutation::TaskRun(self.tasks[i].clone()));
                let follows = graph::after_end(&self.graph, &mut self.states, i);
                self.sync(&follows);
                work.extend(follows);
                continue;
            }
            let wait_timeout = self.job().tasks[i].wait_timeout;
            let t = &mut self.tasks[i];
            match t.state {
                TaskState::Queued => {
                    t.queued_at_ms = Some(now);
                    t.enqueue_seq = self.shared.store.ids.next_enqueue_seq();
                    ready.push(i);
                    let mut queued = self.task_event("task.queued", i).with("priority", self.tasks[i].priority);
                    if self.tasks[i].series_start > 1 {
                        // A new series of attempts (a retry): views count `n of max` from it.
                        queued = queued.with("series_start", self.tasks[i].series_start);
                    }
                    events.push(queued);
                }
                TaskState::Waiting => {
                    t.not_before_ms = wait_timeout.map(|d| now + d.as_millis() as u64);
                    if let Some(due_ms) = t.not_before_ms {
                        wait_timers.push((t.id, due_ms));
                    }
                    let name = self.job().tasks[i].wait_for.clone().unwrap_or_default();
                    events.push(self.task_event("task.waiting", i).with("wait_for", name));
                }
                TaskState::Skipped => {
                    t.ended_at_ms = Some(now);
                    events.push(self.task_event("task.skipped", i));
                }
                _ => {}
            }
            mutations.push(Mutation::TaskRun(self.tasks[i].clone()));
        }
        let finished = self.settle_outcome(&mut mutations, &mut events);
        self.persist_then(ctx, mutations, events, move |act, ctx| {
            act.enqueue(&ready, ctx);
            for (task_run, due_ms) in wait_timers {
                act.shared.scheduler.do_send(TaskTimer { task_run, due_ms, owner: ctx.address() });
            }
            if finished {
                act.finish(ctx);
            }
        });
    }

    /// The scoped cache key of task `i` (`job/task/rendered key`), if it has `cache`. A key
    /// that cannot be rendered (an output missing upstream) means no caching, said once.
    fn cache_key(&self, i: usize) -> Option<String> {
        let policy = self.job().tasks[i].cache.as_ref()?;
        match render_template(&policy.key, &self.template_context(i), "cache.key") {
            Ok(key) => Some(format!("{}/{}/{key}", self.record.job, self.tasks[i].task)),
            Err(e) => {
                tracing::warn!(task_run = self.tasks[i].id, "no caching for this run: {e}");
                None
            }
        }
    }

    /// A stored success of the same task with the same key, still within its `ttl`.
    fn cache_hit(&self, i: usize) -> Option<CacheEntry> {
        let ttl = self.job().tasks[i].cache.as_ref()?.ttl;
        let key = self.cache_key(i)?;
        let entry = self.shared.store.reader().and_then(|r| r.cache_entry(&key)).unwrap_or_else(|e| {
            tracing::warn!("reading the cache: {e}");
            None
        })?;
        (self.now().saturating_sub(entry.succeeded_at_ms) <= ttl.as_millis() as u64).then_some(entry)
    }

    /// Task `i` succeeds with the outputs of the run it reuses; cost 0, no attempt.
    fn succeed_from_cache(&mut self, i: usize, hit: &CacheEntry) -> EngineEvent {
        let now = self.now();
        self.set_state(i, TaskState::Succeeded);
        let t = &mut self.tasks[i];
        t.outputs = hit.outputs.clone();
        t.exit_code = hit.exit_code;
        t.reason = None;
        t.detail = Some(format!("cached: reused task run {} of job run j{}", hit.task_run, hit.job_run));
        t.started_at_ms.get_or_insert(now);
        t.ended_at_ms = Some(now);
        self.task_event("task.succeeded", i)
            .with("duration_ms", 0)
            .with("cost_usd", usd_json(0))
            .with("cached", true)
            .with("from_task_run", hit.task_run)
    }

    fn stopping_for_good(&self) -> bool {
        self.record.cancel_requested
    }

    /// Hands the queued ones among `tasks` to the dispatcher, in one batch.
    fn enqueue(&self, tasks: &[usize], ctx: &mut Context<Self>) {
        let entries: Vec<ReadyEntry> = tasks
            .iter()
            .filter(|&&i| self.tasks[i].state == TaskState::Queued)
            .map(|&i| {
                let t = &self.tasks[i];
                let queue_timeout_ms = self.job().tasks[i].queue_timeout.map(|d| d.as_millis() as u64);
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
            })
            .collect();
        if !entries.is_empty() {
            self.shared.dispatcher.do_send(Enqueue(entries));
        }
    }

    /// If every task run has ended, records how the job run ended. True when it did.
    fn settle_outcome(&mut self, mutations: &mut Vec<Mutation>, events: &mut Vec<EngineEvent>) -> bool {
        if self.ended {
            return false;
        }
        let Some(state) = graph::outcome(&self.states, self.record.cancel_requested) else { return false };
        let before = (self.record.state, self.record.reason.clone());
        self.record.state = state;
        self.record.reason = (state == JobState::Failed).then(|| self.failure_reason());
        if before == (self.record.state, self.record.reason.clone()) && before.0.is_terminal() {
            // A revived run (a dead letter purged) that ends as it had: nothing new to say.
            mutations.push(Mutation::JobRun(self.record.clone()));
            return true;
        }
        self.record.ended_at_ms = Some(self.now());
        mutations.push(Mutation::JobRun(self.record.clone()));
        let name = match state {
            JobState::Succeeded => "job.succeeded",
            JobState::Failed => "job.failed",
            JobState::Cancelled => "job.cancelled",
            JobState::Running => return false,
        };
        let mut event = self.job_event(name).with("cost_usd", usd_json(self.record.cost_usd_micros));
        if let Some(reason) = &self.record.reason {
            event = event.with("reason", reason.clone());
        }
        events.push(event);
        true
    }

    fn failure_reason(&self) -> String {
        if self.budget_spent {
            return "budget".into();
        }
        let first = |s: TaskState| self.tasks.iter().find(|t| t.state == s);
        match (first(TaskState::Dead), first(TaskState::Cancelled)) {
            (Some(t), _) => {
                let reason = t.reason.map_or("failed", |r| r.as_str());
                let code = t
                    .exit_code
                    .filter(|_| t.reason == Some(FailReason::ExitCode))
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default();
                format!("task {} (#{}) dead: {reason}{code}", t.task, t.id)
            }
            (None, Some(t)) => format!("task {} (#{}) cancelled", t.task, t.id),
            _ => "tasks skipped".into(),
        }
    }

    /// A revived run that a command left as it was (already ended, nothing to do) goes away again.
    fn release_if_idle(&mut self, ctx: &mut Context<Self>) {
        if self.record.state.is_terminal() && self.running.is_empty() && self.inflight == 0 {
            self.finish(ctx);
        }
    }

    fn finish(&mut self, ctx: &mut Context<Self>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.shared.supervisor.do_send(JobRunEnded { id: self.record.id, state: self.record.state });
        ctx.stop();
    }

    /// The attempt of task `i` is over (or never started): record it, apply the retry policy,
    /// follow the graph; once that is durable, a failure is counted for its queue's circuit.
    fn end_attempt(&mut self, ctx: &mut Context<Self>, i: usize, attempt: AttemptRecord, outcome: AttemptOutcome) {
        let queue = self.tasks[i].queue.clone();
        let ended_at_ms = self.now();
        self.record_attempt_end(ctx, i, attempt, outcome, ended_at_ms);
        let has_circuit = self.workflow.queues.get(&queue).is_some_and(|q| q.circuit.is_some());
        if has_circuit && outcome.failure.is_some_and(crate::model::queue::trips_circuit) {
            self.after_last_commit(move |act, _| act.shared.dispatcher.do_send(AttemptFailed { queue, ended_at_ms }));
        }
    }

    fn record_attempt_end(
        &mut self,
        ctx: &mut Context<Self>,
        i: usize,
        mut attempt: AttemptRecord,
        outcome: AttemptOutcome,
        now: u64,
    ) {
        // A detail may quote a rendered template, so a secret param's value: never stored.
        let secrets = self.shared.secrets.of(self.record.id);
        attempt.detail = attempt.detail.map(|d| crate::model::params::redact(&d, &secrets));
        attempt.ended_at_ms = Some(now);
        attempt.reason = outcome.failure;
        let mut mutations = vec![Mutation::Attempt(attempt.clone())];
        let mut events = Vec::new();
        let t = &mut self.tasks[i];
        t.exit_code = attempt.exit_code.or(t.exit_code);
        if outcome.failure == Some(FailReason::Interrupted) && self.stopping {
            // A graceful stop is not the task's fault: back to its queue, the attempt not counted.
            t.series_start += 1;
            self.set_state(i, TaskState::Queued);
            mutations.push(Mutation::TaskRun(self.tasks[i].clone()));
            events.push(self.failed_event(i, &attempt));
            self.persist_then(ctx, mutations, events, |_, _| {});
            return;
        }
        let decision = self.decide(i, outcome);
        if outcome.failure.is_some() && decision != AfterAttempt::Cancelled {
            events.push(self.failed_event(i, &attempt));
        }
        let t = &mut self.tasks[i];
        t.reason = outcome.failure;
        t.detail = attempt.detail.clone();
        if !matches!(decision, AfterAttempt::Retry { .. }) {
            t.ended_at_ms = Some(now);
        }
        let to = match decision {
            AfterAttempt::Succeeded => {
                let duration = now.saturating_sub(attempt.started_at_ms);
                let cost = usd_json(self.tasks[i].cost_usd_micros);
                events.push(self.task_event("task.succeeded", i).with("duration_ms", duration).with("cost_usd", cost));
                if let Some(key) = self.cache_key(i) {
                    let ttl = self.job().tasks[i].cache.as_ref().map_or(0, |c| c.ttl.as_millis() as u64);
                    let t = &self.tasks[i];
                    let entry = CacheEntry {
                        task_run: t.id,
                        job_run: t.job_run,
                        succeeded_at_ms: now,
                        expires_at_ms: now.saturating_add(ttl),
                        outputs: t.outputs.clone(),
                        exit_code: t.exit_code,
                    };
                    mutations.push(Mutation::Cached(key, entry));
                }
                TaskState::Succeeded
            }
            AfterAttempt::Retry { delay } => {
                self.set_state(i, TaskState::Retrying);
                let due_ms = now + delay.as_millis() as u64;
                self.tasks[i].not_before_ms = Some(due_ms);
                let next = self.tasks[i].attempt + 1;
                let delay_ms = delay.as_millis() as u64;
                events.push(
                    self.task_event("task.retry_scheduled", i).with("delay_ms", delay_ms).with("next_attempt", next),
                );
                mutations.push(Mutation::TaskRun(self.tasks[i].clone()));
                let task_run = self.tasks[i].id;
                self.persist_then(ctx, mutations, events, move |act, ctx| {
                    act.shared.scheduler.do_send(TaskTimer { task_run, due_ms, owner: ctx.address() })
                });
                return;
            }
            AfterAttempt::Dead { reason } => {
                self.tasks[i].reason = Some(reason);
                if reason == FailReason::Poison {
                    self.tasks[i].detail = Some(format!(
                        "gaffer died {} times in a row while it ran: quarantined, not started again",
                        self.job().tasks[i].retry.poison_after_crashes
                    ));
                }
                events.push(self.task_event("task.dead_lettered", i).with("reason", reason.as_str()));
                TaskState::Dead
            }
            AfterAttempt::Cancelled => {
                self.tasks[i].reason = Some(FailReason::Cancelled);
                events.push(self.task_event("task.cancelled", i));
                TaskState::Cancelled
            }
        };
        self.set_state(i, to);
        mutations.push(Mutation::TaskRun(self.tasks[i].clone()));
        self.after_task_ended(ctx, i, mutations, events);
    }

    /// The retry policy, overruled by a spent job budget and by a cancel of the whole run.
    fn decide(&self, i: usize, outcome: AttemptOutcome) -> AfterAttempt {
        let t = &self.tasks[i];
        let def = &self.job().tasks[i];
        let (budget_usd_micros, max_cost_usd_micros) = self.task_limits(i);
        let crashes_in_a_row =
            if outcome.failure == Some(FailReason::Interrupted) { self.crashes_in_a_row(i) } else { 0 };
        let run = RunSoFar {
            attempts_in_series: t.attempts_in_series(),
            cost_usd_micros: t.cost_usd_micros,
            budget_usd_micros,
            max_cost_usd_micros,
            crashes_in_a_row,
        };
        let decision = policy::after_attempt(&def.retry, outcome, run, fastrand::f64());
        match decision {
            AfterAttempt::Succeeded => decision,
            _ if self.record.cancel_requested => AfterAttempt::Cancelled,
            AfterAttempt::Cancelled => decision,
            _ if self.budget_spent => AfterAttempt::Dead { reason: FailReason::Budget },
            _ => decision,
        }
    }

    /// The attempt of task `i` ending now was interrupted by a crash (a graceful stop never
    /// gets here): with the ones before it in its series that were too, how many in a row. Read
    /// from the store, on this rare path only.
    fn crashes_in_a_row(&self, i: usize) -> u32 {
        let t = &self.tasks[i];
        let earlier = self.shared.store.reader().and_then(|r| r.attempts_of(t.id)).unwrap_or_else(|e| {
            tracing::warn!(task_run = t.id, "reading its attempts: {e}");
            Vec::new()
        });
        let in_a_row = earlier
            .iter()
            .rev()
            .filter(|a| a.n < t.attempt && a.n >= t.series_start)
            .take_while(|a| a.reason == Some(FailReason::Interrupted))
            .count();
        u32::try_from(in_a_row).unwrap_or(u32::MAX).saturating_add(1)
    }

    /// Task `i` reached a terminal state: follow its edges; a newly failing job run with
    /// `fail_fast` cancels what still runs.
    fn after_task_ended(
        &mut self,
        ctx: &mut Context<Self>,
        i: usize,
        mutations: Vec<Mutation>,
        events: Vec<EngineEvent>,
    ) {
        let failing = graph::is_failing(&self.states) && self.states[i].is_unsuccessful_end();
        let changes = graph::after_end(&self.graph, &mut self.states, i);
        self.sync(&changes);
        if failing && self.job().fail_fast {
            self.kill_running(FailReason::Cancelled);
        }
        self.apply_changes(ctx, changes, mutations, events);
    }

    fn failed_event(&self, i: usize, attempt: &AttemptRecord) -> EngineEvent {
        let mut e =
            self.task_event("task.failed", i).with("reason", attempt.reason.map_or("exit_code", |r| r.as_str()));
        e.attempt = Some(attempt.n);
        if let Some(code) = attempt.exit_code {
            e = e.with("exit_code", code);
        }
        if let Some(signal) = attempt.signal {
            e = e.with("signal", signal);
        }
        if let Some(detail) = &attempt.detail {
            e = e.with("detail", detail.clone());
        }
        e
    }

    fn kill_running(&self, reason: FailReason) {
        for (task_run, (_, worker)) in &self.running {
            if let Some(worker) = worker {
                worker.do_send(Kill { task_run: *task_run, reason, grace: KILL_GRACE });
            }
        }
    }

    /// What task `i`'s templates see: params and the outputs of what it (transitively) needs.
    fn template_context(&self, i: usize) -> TemplateContext {
        TemplateContext {
            model: None,
            job: self.record.job.clone(),
            job_run_id: self.record.id,
            params: crate::model::params::for_templates(
                self.job(),
                &self.record.params,
                &self.shared.secrets.of(self.record.id),
            ),
            // Validation allows templates to name only tasks this one (transitively) needs.
            tasks: self
                .graph
                .ancestors(i)
                .into_iter()
                .map(|u| &self.tasks[u])
                .map(|u| (u.task.clone(), UpstreamTask { outputs: u.outputs.clone(), exit_code: u.exit_code }))
                .collect(),
        }
    }

    /// Renders the attempt's templates against params, upstream outputs and its model.
    fn render_spec(&self, i: usize, attempt: u32, model: Option<&str>) -> Result<AttemptSpec, String> {
        let def = &self.job().tasks[i];
        let t = &self.tasks[i];
        let ctx = TemplateContext { model: model.map(str::to_string), ..self.template_context(i) };
        let render = |text: &str, what: &str| render_template(text, &ctx, what);
        let command = match &def.command {
            crate::config::CommandSpec::Shell(text) => crate::config::CommandSpec::Shell(text.clone()),
            crate::config::CommandSpec::Argv(items) => {
                crate::config::CommandSpec::Argv(items.iter().map(|a| render(a, "args")).collect::<Result<_, _>>()?)
            }
        };
        // `env_file` values first: the executor applies them in order, so `env` wins.
        let literal = def.env_file.iter().map(|(k, v)| Ok((k.clone(), v.clone())));
        let mut env = literal
            .chain(def.env.iter().map(|(k, v)| Ok((k.clone(), render(v, &format!("env.{k}"))?))))
            .collect::<Result<Vec<_>, String>>()?;
        env.extend(model.map(|m| ("GAFFER_MODEL".to_string(), m.to_string())));
        let stdin = def.stdin.as_deref().map(|s| render(s, "stdin")).transpose()?;
        Ok(AttemptSpec {
            job: self.record.job.clone(),
            task: t.task.clone(),
            job_run: self.record.id,
            task_run: t.id,
            attempt,
            command,
            env,
            stdin,
            cwd: def.cwd.clone(),
            state_dir: self.shared.state_dir.clone(),
            log_path: self.shared.state_dir.join(AttemptRecord::log_path(self.record.id, t.id, attempt)),
            log_cap_bytes: self.shared.log_cap_bytes,
            cost_source: def.cost,
        })
    }

    fn new_attempt(&self, i: usize, n: u32) -> AttemptRecord {
        AttemptRecord::started(self.tasks[i].id, self.record.id, n, self.now())
    }

    /// A new run: job.started, entry tasks queued.
    fn begin_new(&mut self, ctx: &mut Context<Self>, with: Vec<Mutation>, mut events: Vec<EngineEvent>) {
        let changes = graph::start(&self.graph, &mut self.states);
        self.sync(&changes);
        let mut mutations = with;
        mutations.push(Mutation::JobRun(self.record.clone()));
        mutations.extend(self.tasks.iter().map(|t| Mutation::TaskRun(t.clone())));
        for event in &mut events {
            event.job_run.get_or_insert(self.record.id);
        }
        let params = serde_json::to_value(&self.record.params).unwrap_or_default();
        events.push(self.job_event("job.started").with("params", params));
        self.apply_changes(ctx, changes, mutations, events);
    }

    /// A run found unfinished in the store: interrupted attempts are ended (their process
    /// groups killed if still alive), queues and timers re-armed, and the graph settled.
    fn resume(&mut self, ctx: &mut Context<Self>) {
        for t in &self.tasks {
            match (t.state, t.not_before_ms) {
                (TaskState::Retrying, due) | (TaskState::Waiting, due @ Some(_)) => self
                    .shared
                    .scheduler
                    .do_send(TaskTimer { task_run: t.id, due_ms: due.unwrap_or(0), owner: ctx.address() }),
                _ => continue,
            }
        }
        let all: Vec<usize> = (0..self.tasks.len()).collect();
        self.enqueue(&all, ctx);
        for attempt in std::mem::take(&mut self.interrupted) {
            let Some(&i) = self.index_of.get(&attempt.task_run) else { continue };
            if let (Some(pid), Some(pgid)) = (attempt.pid, attempt.pgid) {
                let process = ProcessHandle { pid, pgid, start_ticks: attempt.start_ticks };
                if crate::executor::is_same_process_alive(&process) {
                    crate::executor::kill_group_now(pgid);
                }
            }
            // Also what the record cannot name: a pid not yet committed, grandchildren that left
            // the group. They carry the attempt's environment.
            crate::executor::kill_attempt_processes(&self.shared.state_dir, attempt.task_run, attempt.n);
            let mut attempt = attempt;
            attempt.detail = Some("gaffer stopped while it ran".into());
            self.end_attempt(
                ctx,
                i,
                attempt,
                AttemptOutcome { failure: Some(FailReason::Interrupted), exit_code: None },
            );
        }
        let changes = graph::reopen_pending(&self.graph, &mut self.states);
        self.sync(&changes);
        self.apply_changes(ctx, changes, Vec::new(), Vec::new());
    }

    fn idx(&self, task_run: u64) -> Option<usize> {
        self.index_of.get(&task_run).copied()
    }

    fn cancel_task(&mut self, ctx: &mut Context<Self>, i: usize) -> String {
        let t = &self.tasks[i];
        match t.state {
            TaskState::Running => {
                if let Some((_, Some(worker))) = self.running.get(&t.id) {
                    worker.do_send(Kill { task_run: t.id, reason: FailReason::Cancelled, grace: KILL_GRACE });
                }
                format!("task run {} is being stopped (SIGTERM, SIGKILL after {} s)", t.id, KILL_GRACE.as_secs())
            }
            TaskState::Queued | TaskState::Pending | TaskState::Retrying | TaskState::Waiting => {
                let id = t.id;
                self.shared.scheduler.do_send(Unschedule { task_run: id });
                let now = self.now();
                self.set_state(i, TaskState::Cancelled);
                let t = &mut self.tasks[i];
                t.reason = Some(FailReason::Cancelled);
                t.ended_at_ms = Some(now);
                let mutations = vec![Mutation::TaskRun(t.clone())];
                let events = vec![self.task_event("task.cancelled", i)];
                self.after_task_ended(ctx, i, mutations, events);
                format!("task run {id} cancelled")
            }
            TaskState::Dead => {
                let id = t.id;
                self.set_state(i, TaskState::Cancelled);
                let mutations = vec![Mutation::TaskRun(self.tasks[i].clone())];
                let events = vec![self.task_event("task.cancelled", i).with("from", "dead")];
                self.after_task_ended(ctx, i, mutations, events);
                format!("task run {id} removed from the dead-letter queue (cancelled)")
            }
            other => format!("task run {} {} already", t.id, other.phrase()),
        }
    }

    /// Reopens task `i` for a fresh series; `with` and `events` are committed and published with it.
    fn retry_task(
        &mut self,
        ctx: &mut Context<Self>,
        i: usize,
        with: Vec<Mutation>,
        mut events: Vec<EngineEvent>,
    ) -> Result<String, String> {
        let t = &self.tasks[i];
        if !t.state.is_retryable() {
            return Err(format!(
                "task run {} {}; only dead or cancelled task runs can be retried",
                t.id,
                t.state.phrase()
            ));
        }
        let reopened = self.reopen_record();
        // A task run that never started was never released: it waits for its signal again.
        let to = if self.tasks[i].attempt == 0 { self.graph.ready_state(i) } else { TaskState::Queued };
        self.set_state(i, to);
        let t = &mut self.tasks[i];
        t.series_start = t.attempt + 1;
        t.reason = None;
        t.detail = None;
        t.ended_at_ms = None;
        let id = t.id;
        let mut changes = vec![Change { task: i, to }];
        changes.extend(graph::reopen(&self.graph, &mut self.states));
        self.sync(&changes);
        if reopened {
            events.push(self.job_event("job.started").with("retry", true));
        }
        let mut mutations = with;
        mutations.push(Mutation::JobRun(self.record.clone()));
        self.apply_changes(ctx, changes, mutations, events);
        if to == TaskState::Waiting {
            return Ok(format!("task run {id} waits for its signal again"));
        }
        Ok(format!("task run {id} queued again (attempt {} next)", self.tasks[i].attempt + 1))
    }

    /// A retry takes the job run back to `running`; true if it had ended.
    fn reopen_record(&mut self) -> bool {
        let reopened = self.record.state.is_terminal();
        self.ended = false;
        self.budget_spent = false;
        self.record.state = JobState::Running;
        self.record.cancel_requested = false;
        self.record.ended_at_ms = None;
        self.record.reason = None;
        reopened
    }

    fn on_budget_spent(&mut self, ctx: &mut Context<Self>, limit: u64) {
        self.budget_spent = true;
        let event = self
            .job_event("budget.exceeded")
            .with("scope", "job")
            .with("limit_usd", usd_json(limit))
            .with("spent_usd", usd_json(self.record.cost_usd_micros));
        self.shared.journal.do_send(Publish(event));
        self.kill_running(FailReason::Budget);
        let mut changes = Vec::new();
        for i in 0..self.tasks.len() {
            if matches!(
                self.states[i],
                TaskState::Queued | TaskState::Pending | TaskState::Retrying | TaskState::Waiting
            ) {
                self.set_state(i, TaskState::Skipped);
                self.shared.scheduler.do_send(Unschedule { task_run: self.tasks[i].id });
                changes.push(Change { task: i, to: TaskState::Skipped });
            }
        }
        self.apply_changes(ctx, changes, vec![Mutation::JobRun(self.record.clone())], Vec::new());
    }
}

/// A task may change twice in one step (a reopened run: skipped → pending → queued); it is
/// acted on and reported once, in its final state, at the place of its last change.
fn last_change_per_task(changes: Vec<Change>) -> Vec<Change> {
    if changes.len() < 2 {
        return changes; // the common case on every task's end: nothing to collapse
    }
    let last: HashMap<usize, usize> = changes.iter().enumerate().map(|(at, c)| (c.task, at)).collect();
    changes.into_iter().enumerate().filter(|(at, c)| last[&c.task] == *at).map(|(_, c)| c).collect()
}

fn render_template(text: &str, ctx: &TemplateContext, what: &str) -> Result<String, String> {
    if !text.contains("{{") && !text.contains("{%") {
        return Ok(text.to_string());
    }
    template::render(text, ctx).map_err(|e| format!("{what}: {e}"))
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

/// What a worker needs to start an attempt it claimed.
pub struct Claimed {
    pub spec: AttemptSpec,
    pub timeout: Duration,
    pub heartbeat_timeout: Duration,
    pub pricing: Arc<Pricing>,
    pub owner: Addr<JobRun>,
}

/// A worker asks for `task_run`: answered after `running` + the attempt number are durable,
/// or `None` when it is no longer queued (cancelled, budget spent, stopping).
#[derive(Message)]
#[rtype(result = "Option<Claimed>")]
pub struct Claim {
    pub task_run: u64,
    pub worker: Addr<Worker>,
}

impl Handler<Claim> for JobRun {
    type Result = ResponseActFuture<Self, Option<Claimed>>;

    fn handle(&mut self, msg: Claim, ctx: &mut Self::Context) -> Self::Result {
        let nothing = || -> ResponseActFuture<Self, Option<Claimed>> { Box::pin(actix::fut::ready(None)) };
        let Some(i) = self.idx(msg.task_run) else { return nothing() };
        if self.tasks[i].state != TaskState::Queued || self.stopping || self.budget_spent {
            return nothing();
        }
        let n = self.tasks[i].attempt + 1;
        let now = self.now();
        self.set_state(i, TaskState::Running);
        let t = &mut self.tasks[i];
        t.attempt = n;
        t.started_at_ms.get_or_insert(now);
        t.progress = None;
        let mut attempt = self.new_attempt(i, n);
        // Model fallback: recorded on the attempt (its cost may name the exact model later).
        let models = &self.job().tasks[i].retry.models;
        attempt.model = policy::model_for_attempt(models, self.tasks[i].attempts_in_series()).map(str::to_string);
        let spec = match self.render_spec(i, n, attempt.model.as_deref()) {
            Ok(spec) => spec,
            Err(e) => {
                attempt.detail = Some(crate::sanitize::sanitize(&e));
                self.end_attempt(
                    ctx,
                    i,
                    attempt,
                    AttemptOutcome { failure: Some(FailReason::SpawnError), exit_code: None },
                );
                return nothing();
            }
        };
        let def = &self.job().tasks[i];
        let claimed = Claimed {
            spec,
            timeout: def.timeout,
            heartbeat_timeout: def.heartbeat_timeout,
            pricing: self.shared.pricing.clone(),
            owner: ctx.address(),
        };
        self.running.insert(msg.task_run, (attempt.clone(), Some(msg.worker)));
        let commit =
            self.shared.store.commit(vec![Mutation::TaskRun(self.tasks[i].clone()), Mutation::Attempt(attempt)]);
        Box::pin(commit.into_actor(self).map(move |result, act, _ctx| match result {
            Ok(()) => Some(claimed),
            Err(e) => {
                act.shared
                    .supervisor
                    .do_send(Fatal(format!("job run j{}: cannot commit to the store: {e}", act.record.id)));
                None
            }
        }))
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
        let mut event = self.task_event("task.started", i).with("priority", self.tasks[i].priority);
        let Some((attempt, _)) = self.running.get_mut(&msg.task_run).filter(|(a, _)| a.n == msg.attempt) else {
            return;
        };
        if let Some(p) = msg.process {
            attempt.pid = Some(p.pid);
            attempt.pgid = Some(p.pgid);
            attempt.start_ticks = p.start_ticks;
            event = event.with("pid", p.pid);
            // The pid only helps crash recovery find the group (which also finds it by its
            // environment): `running` is already durable, so nothing waits for this commit.
            drop(self.shared.store.commit(vec![Mutation::Attempt(attempt.clone())]));
        }
        let _ = ctx;
        self.shared.journal.do_send(Publish(event));
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
        let Some(i) = self.idx(msg.task_run) else { return };
        self.tasks[i].progress = Some(msg.text.clone());
        let event = self.task_event("task.progress", i).with("message", msg.text);
        self.persist_then(ctx, vec![Mutation::TaskRun(self.tasks[i].clone())], vec![event], |_, _| {});
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
        let t = &mut self.tasks[i];
        t.cost_usd_micros = t.cost_usd_micros.saturating_add(d.usage.usd_micros);
        t.input_tokens = t.input_tokens.saturating_add(d.usage.input_tokens);
        t.output_tokens = t.output_tokens.saturating_add(d.usage.output_tokens);
        self.record.cost_usd_micros = self.record.cost_usd_micros.saturating_add(d.usage.usd_micros);
        let mut mutations = vec![Mutation::TaskRun(self.tasks[i].clone()), Mutation::JobRun(self.record.clone())];
        let mut event = self
            .task_event("task.cost", i)
            .with("usd", usd_json(d.usage.usd_micros))
            .with("input_tokens", d.usage.input_tokens)
            .with("output_tokens", d.usage.output_tokens)
            .with("cache_read_tokens", d.usage.cache_read_tokens)
            .with("cache_write_tokens", d.usage.cache_write_tokens);
        event.attempt = Some(msg.attempt);
        if let Some(model) = &d.model {
            event = event.with("model", model.clone());
        }
        if d.unpriced {
            event = event.with("unpriced", true);
        }
        let mut events = vec![event];
        if let Some((attempt, _)) = self.running.get_mut(&msg.task_run).filter(|(a, _)| a.n == msg.attempt) {
            attempt.add_cost(d.model.as_deref(), &d.usage);
            mutations.push(Mutation::Attempt(attempt.clone()));
        }
        if d.unpriced {
            events.extend(self.warn_attempt(i, msg.attempt, unpriced_warning(d), &mut mutations));
        }
        self.persist_then(ctx, mutations, events, |_, _| {});
        self.check_budgets(ctx, i);
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
        let (attempt, _) = self.running.get_mut(&self.tasks[i].id).filter(|(a, _)| a.n == n)?;
        if !attempt.add_warning(text.clone()) {
            return None;
        }
        mutations.retain(|m| !matches!(m, Mutation::Attempt(a) if a.task_run == attempt.task_run && a.n == n));
        mutations.push(Mutation::Attempt(attempt.clone()));
        let mut event = self.task_event("task.warning", i).with("message", text);
        event.attempt = Some(n);
        Some(event)
    }
}

impl JobRun {
    /// Task `i`'s `expect` over an attempt's outputs: why they do not conform, if they do not.
    /// The schema file is read now (the file as it is, like the command a run starts).
    fn check_expect(&self, i: usize, outputs: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
        let Some(expect) = &self.job().tasks[i].expect else { return Ok(()) };
        let schema = match &expect.json_schema {
            Some(path) => Some(crate::config::load_schema(path).map_err(|e| format!("cannot check the output: {e}"))?),
            None => None,
        };
        crate::model::expect::check(expect, outputs, schema.as_ref())
    }

    fn check_budgets(&mut self, ctx: &mut Context<Self>, i: usize) {
        let (task_budget, _) = self.task_limits(i);
        let t = &self.tasks[i];
        if policy::budget_reached(t.cost_usd_micros, task_budget) && t.state == TaskState::Running {
            let limit = task_budget.unwrap_or(0);
            let event = self
                .task_event("budget.exceeded", i)
                .with("scope", "task")
                .with("limit_usd", usd_json(limit))
                .with("spent_usd", usd_json(t.cost_usd_micros));
            self.shared.journal.do_send(Publish(event));
            if let Some((_, Some(worker))) = self.running.get(&t.id) {
                worker.do_send(Kill { task_run: t.id, reason: FailReason::Budget, grace: KILL_GRACE });
            }
        }
        let job_budget = self.job_budget();
        if !self.budget_spent && policy::budget_reached(self.record.cost_usd_micros, job_budget) {
            self.on_budget_spent(ctx, job_budget.unwrap_or(0));
        }
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
        self.tasks[i].outputs.extend(msg.outputs);
        let outcome = AttemptOutcome { failure, exit_code: attempt.exit_code };
        self.end_attempt(ctx, i, attempt, outcome);
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
        let Some(i) = self.idx(msg.task_run) else { return };
        if self.stopping || self.tasks[i].not_before_ms.unwrap_or(0) != msg.due_ms {
            return;
        }
        match self.tasks[i].state {
            TaskState::Retrying => {
                self.set_state(i, TaskState::Queued);
                self.tasks[i].not_before_ms = None;
                self.apply_changes(ctx, vec![Change { task: i, to: TaskState::Queued }], Vec::new(), Vec::new());
            }
            TaskState::Waiting => self.dead_letter_unstarted(ctx, i, FailReason::WaitTimeout),
            _ => {}
        }
    }
}

impl JobRun {
    /// A task run that never got to start is given up on: dead, with `reason`.
    fn dead_letter_unstarted(&mut self, ctx: &mut Context<Self>, i: usize, reason: FailReason) {
        let now = self.now();
        self.set_state(i, TaskState::Dead);
        let t = &mut self.tasks[i];
        t.reason = Some(reason);
        t.not_before_ms = None;
        t.ended_at_ms = Some(now);
        let events = vec![self.task_event("task.dead_lettered", i).with("reason", reason.as_str())];
        let mutations = vec![Mutation::TaskRun(self.tasks[i].clone())];
        self.after_task_ended(ctx, i, mutations, events);
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
        let result = self.signal(msg, ctx);
        self.release_if_idle(ctx);
        result
    }
}

impl JobRun {
    fn signal(&mut self, msg: Signal, ctx: &mut Context<Self>) -> Result<String, String> {
        let waits_for_it = |act: &Self, i: usize| {
            act.tasks[i].state == TaskState::Waiting && act.job().tasks[i].wait_for.as_deref() == Some(&msg.name)
        };
        let released: Vec<usize> = match msg.task_run {
            Some(task_run) => {
                let i = self
                    .idx(task_run)
                    .ok_or_else(|| format!("task run {task_run} is not part of job run j{}", self.record.id))?;
                if !waits_for_it(self, i) {
                    return Err(self.nothing_waits(&msg.name, Some(i)));
                }
                vec![i]
            }
            None => (0..self.tasks.len()).filter(|&i| waits_for_it(self, i)).collect(),
        };
        if released.is_empty() {
            return Err(self.nothing_waits(&msg.name, None));
        }
        let mut changes = Vec::new();
        for &i in &released {
            self.shared.scheduler.do_send(Unschedule { task_run: self.tasks[i].id });
            self.tasks[i].not_before_ms = None;
            self.set_state(i, TaskState::Queued);
            changes.push(Change { task: i, to: TaskState::Queued });
        }
        let names: Vec<String> =
            released.iter().map(|&i| format!("{} (#{})", self.tasks[i].task, self.tasks[i].id)).collect();
        self.apply_changes(ctx, changes, Vec::new(), Vec::new());
        Ok(format!("`{}` released {} in job run j{}", msg.name, names.join(", "), self.record.id))
    }

    /// Why a signal released nothing, with what does wait, so the user can fix the command.
    fn nothing_waits(&self, name: &str, task: Option<usize>) -> String {
        let waiting: Vec<String> = (0..self.tasks.len())
            .filter(|&i| self.tasks[i].state == TaskState::Waiting)
            .map(|i| {
                let wants = self.job().tasks[i].wait_for.as_deref().unwrap_or("?");
                format!("{} (#{}) waits for `{wants}`", self.tasks[i].task, self.tasks[i].id)
            })
            .collect();
        let subject = match task {
            Some(i) if self.tasks[i].state == TaskState::Waiting => {
                format!("task run {} does not wait for `{name}`", self.tasks[i].id)
            }
            Some(i) => format!("task run {} {}, not waiting", self.tasks[i].id, self.tasks[i].state.phrase()),
            None => format!("nothing in job run j{} waits for `{name}`", self.record.id),
        };
        if waiting.is_empty() { subject } else { format!("{subject}; {}", waiting.join(", ")) }
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
        let Some(i) = self.idx(msg.task_run) else { return };
        if self.tasks[i].state != TaskState::Queued {
            return;
        }
        self.dead_letter_unstarted(ctx, i, FailReason::QueueTimeout);
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
        let result = self.cancel(msg, ctx);
        self.release_if_idle(ctx);
        result
    }
}

impl JobRun {
    fn cancel(&mut self, msg: Cancel, ctx: &mut Context<Self>) -> Result<String, String> {
        if let Some(task_run) = msg.task_run {
            let i = self
                .idx(task_run)
                .ok_or_else(|| format!("task run {task_run} is not part of job run j{}", self.record.id))?;
            return Ok(self.cancel_task(ctx, i));
        }
        if self.record.state.is_terminal() {
            return Err(format!("job run j{} has already {}", self.record.id, self.record.state.as_str()));
        }
        self.record.cancel_requested = true;
        let open: Vec<usize> = (0..self.tasks.len()).filter(|&i| !self.tasks[i].state.is_terminal()).collect();
        for i in open {
            self.cancel_task(ctx, i);
        }
        Ok(format!("job run j{} is being cancelled", self.record.id))
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

    fn handle(&mut self, msg: Retry, ctx: &mut Self::Context) -> Self::Result {
        let result = self.retry(msg, ctx);
        self.release_if_idle(ctx);
        result
    }
}

impl JobRun {
    /// What may be retried and which budgets refuse it is `model::retry::plan`'s to say; the
    /// raised budgets are committed with the first reopened task run, so none is half-applied.
    fn retry(&mut self, msg: Retry, ctx: &mut Context<Self>) -> Result<String, String> {
        let (job, tasks) = super::manual_retry::spends(self.job(), &self.record, &self.tasks, &self.raised);
        let plan = crate::model::retry::plan(&job, &tasks, msg.task_run, msg.budget_usd_micros)
            .map_err(|refusal| refusal.to_string())?;
        let (mut with, mut events) = self.raise_budgets(&plan);
        let mut said: Vec<String> = events.iter().map(super::manual_retry::raised_line).collect();
        for id in plan.task_runs {
            let Some(i) = self.idx(id) else { continue };
            said.push(self.retry_task(ctx, i, std::mem::take(&mut with), std::mem::take(&mut events))?);
        }
        Ok(said.join("\n"))
    }

    /// Records the plan's raised budgets in memory; returns their mutation and events.
    fn raise_budgets(&mut self, plan: &crate::model::retry::RetryPlan) -> (Vec<Mutation>, Vec<EngineEvent>) {
        let mut events = Vec::new();
        if let Some(limit) = plan.raise_job_run {
            self.raised.job_run = Some(limit);
            events.push(self.job_event("budget.raised").with("scope", "job").with("limit_usd", usd_json(limit)));
        }
        for &(id, limit) in &plan.raise_task_runs {
            self.raised.task_runs.insert(id, limit);
            if let Some(i) = self.idx(id) {
                events
                    .push(self.task_event("budget.raised", i).with("scope", "task").with("limit_usd", usd_json(limit)));
            }
        }
        if events.is_empty() {
            return (Vec::new(), events);
        }
        (vec![Mutation::RaisedBudgets(self.record.id, self.raised.clone())], events)
    }
}

/// Graceful stop: interrupt running attempts; answer once none is left and all is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for JobRun {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Stop, _ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        for (task_run, (_, worker)) in &self.running {
            if let Some(worker) = worker {
                worker.do_send(Kill { task_run: *task_run, reason: FailReason::Interrupted, grace: SHUTDOWN_GRACE });
            }
        }
        Box::pin(actix::fut::wrap_future::<_, Self>(async {}).then(|_, act, _| wait_until_idle(act)))
    }
}

/// Polls until no attempt of this job run is running, then makes sure all earlier commits landed.
fn wait_until_idle(act: &mut JobRun) -> ResponseActFuture<JobRun, ()> {
    if act.running.is_empty() {
        let flush = act.shared.store.commit(Vec::new());
        return Box::pin(actix::fut::wrap_future::<_, JobRun>(async move {
            let _ = flush.await;
        }));
    }
    Box::pin(
        actix::fut::wrap_future::<_, JobRun>(tokio::time::sleep(Duration::from_millis(20)))
            .then(|_, act, _| wait_until_idle(act)),
    )
}
