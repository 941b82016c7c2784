//! `step`: one input in, the state changed in place, the effects out.

use std::collections::{HashMap, VecDeque};

use crate::config::{Join, TransitionOn};
use crate::executor::KILL_GRACE;
use crate::model::graph::{self, Change};
use crate::model::money::format_usd;
use crate::model::policy::{self, AfterAttempt, AttemptOutcome, RunSoFar};
use crate::model::retry::RetryPlan;
use crate::model::{FailReason, JobState, TaskState};

use super::input::{AttemptEnd, CacheHit, Claimed, Effects, Env, Input, Note, TaskNote, Write};
use super::state::{ReachedBy, RunState};

/// Decides what `input` does to the job run at `now_ms`. Never fails: an input about a task run
/// this job run does not have, or that no longer applies, changes nothing.
pub fn step(state: &mut RunState, input: Input, now_ms: u64, env: &mut impl Env) -> Effects {
    let mut s = Step { s: state, fx: Effects::default(), now: now_ms, env, settle: false };
    s.input(input);
    if s.settle {
        s.settle_outcome();
    }
    s.fx
}

pub(super) struct Step<'a, E: Env> {
    pub(super) s: &'a mut RunState,
    pub(super) fx: Effects,
    pub(super) now: u64,
    pub(super) env: &'a mut E,
    /// Something changed that may end the run: see whether it did once the step is done.
    pub(super) settle: bool,
}

impl<E: Env> Step<'_, E> {
    fn input(&mut self, input: Input) {
        match input {
            Input::Begin => self.begin(),
            Input::Resume => self.resume(),
            Input::Settle => {
                let changes = graph::reopen_pending(&self.s.graph, &mut self.s.states);
                self.s.sync(&changes);
                self.apply(changes);
            }
            Input::Claim { task_run } => self.claim(task_run),
            Input::Progress { task_run, text } => {
                let Some(i) = self.s.idx(task_run) else { return };
                self.s.tasks[i].progress = Some(text.clone());
                self.fx.writes.push(Write::TaskRun(i));
                self.task_note(i, TaskNote::Progress { text });
            }
            Input::CostAdded { task_run, usd_micros, input_tokens, output_tokens } => {
                let Some(i) = self.s.idx(task_run) else { return };
                let t = &mut self.s.tasks[i];
                t.cost_usd_micros = t.cost_usd_micros.saturating_add(usd_micros);
                t.input_tokens = t.input_tokens.saturating_add(input_tokens);
                t.output_tokens = t.output_tokens.saturating_add(output_tokens);
                let j = &mut self.s.job_run;
                j.cost_usd_micros = j.cost_usd_micros.saturating_add(usd_micros);
                self.fx.writes.extend([Write::TaskRun(i), Write::JobRun]);
                self.check_budgets(i);
            }
            Input::AttemptEnded { task_run, end } => {
                let Some(i) = self.s.idx(task_run) else { return };
                let t = &self.s.tasks[i];
                // Only the attempt in progress can end, once (a fan-out's group has none).
                if t.state == TaskState::Running && t.attempt == end.n && end.n > 0 {
                    self.attempt_ended(i, end);
                }
            }
            Input::TimerDue { task_run, due_ms } => self.timer_due(task_run, due_ms),
            Input::QueueTimedOut { task_run } => {
                let Some(i) = self.s.idx(task_run) else { return };
                if self.s.tasks[i].state == TaskState::Queued {
                    self.dead_letter_unstarted(i, FailReason::QueueTimeout);
                }
            }
            Input::Signal { task_run, name } => self.fx.reply = Some(self.signal(task_run, &name)),
            Input::Cancel { task_run } => self.fx.reply = Some(self.cancel(task_run)),
            Input::Retry { plan } => self.fx.reply = Some(self.retry(plan)),
            Input::RunFrom { from, tasks, plan } => self.fx.reply = Some(Ok(self.run_from(&from, &tasks, &plan))),
            Input::Stop => {
                self.s.stopping = true;
                self.kill_running(FailReason::Interrupted);
            }
            Input::CacheRead { task_run, entry } => self.cache_read(task_run, entry),
        }
    }

    pub(super) fn task_note(&mut self, task: usize, what: TaskNote) {
        self.fx.notes.push(Note::Task { task, what });
    }

    /// A new run: job.started, every record written, entry tasks queued.
    fn begin(&mut self) {
        let changes = graph::start(&self.s.graph, &mut self.s.states);
        self.s.sync(&changes);
        self.fx.writes.push(Write::JobRun);
        let made = (0..self.s.tasks.len()).filter(|&i| self.s.tasks[i].is_made());
        self.fx.writes.extend(made.map(Write::TaskRun));
        self.fx.notes.push(Note::JobStarted { retry: false, from: None });
        self.apply(changes);
    }

    /// Re-arms what a stored run had armed: timers, and its queued task runs.
    fn resume(&mut self) {
        self.recount_arrivals();
        self.resume_items();
        for t in &self.s.tasks {
            match (t.state, t.not_before_ms) {
                (TaskState::Retrying, due) | (TaskState::Waiting, due @ Some(_)) => {
                    self.fx.timers.push((t.id, due.unwrap_or(0)))
                }
                _ => continue,
            }
        }
        self.fx.enqueue.extend((0..self.s.tasks.len()).filter(|&i| self.s.tasks[i].state == TaskState::Queued));
    }

    /// Turns graph changes into writes, notes and queue entries. A task about to be queued
    /// whose cache key hits succeeds on the spot, and its edges are followed in the same step.
    pub(super) fn apply(&mut self, changes: Vec<Change>) {
        self.settle = true;
        let mut work: VecDeque<Change> = last_change_per_task(changes).into();
        while let Some(change) = work.pop_front() {
            let i = change.task;
            if !self.s.tasks[i].is_made() {
                if change.to == TaskState::Pending {
                    continue; // still nothing reached it
                }
                let id = self.env.next_task_run_id();
                self.s.make(i, id, self.now);
            }
            let starts_work = matches!(change.to, TaskState::Queued | TaskState::Waiting);
            if starts_work && (self.s.budget_spent || self.s.job_run.cancel_requested || self.s.iteration_limit) {
                self.s.set_state(i, TaskState::Skipped);
            } else if change.to == TaskState::Queued && self.s.is_node(i) && self.s.def(i).for_each.is_some() {
                // A fanned-out task is not queued itself: its items are (model/run/fanout.rs).
                self.fan_out(i);
                continue;
            } else if change.to == TaskState::Queued
                && self.s.is_node(i)
                && self.s.def(i).cache.is_some()
                && let Some(key) = self.env.cache_key(self.s, i)
            {
                // Its cache may hold a result: the store is asked (an effect), and the task run
                // is queued or reused when the answer comes (`cache_read`). Ready for its queue
                // meanwhile, so a record written before then is a queued one.
                let t = &mut self.s.tasks[i];
                t.queued_at_ms = Some(self.now);
                t.enqueue_seq = self.env.next_enqueue_seq();
                self.s.cache_asked.insert(t.id);
                self.fx.cache_reads.push((t.id, key));
                continue;
            }
            let t = &mut self.s.tasks[i];
            match t.state {
                TaskState::Queued => {
                    t.queued_at_ms = Some(self.now);
                    t.enqueue_seq = self.env.next_enqueue_seq();
                    self.queue(i);
                }
                TaskState::Waiting => {
                    let def = self.s.def(i);
                    let wait_for = def.wait_for.clone().unwrap_or_default();
                    let due = def.wait_timeout.map(|d| self.now + d.as_millis() as u64);
                    let t = &mut self.s.tasks[i];
                    t.not_before_ms = due;
                    if let Some(due_ms) = due {
                        self.fx.timers.push((t.id, due_ms));
                    }
                    self.task_note(i, TaskNote::Waiting { wait_for });
                }
                TaskState::Skipped => {
                    t.ended_at_ms = Some(self.now);
                    self.task_note(i, TaskNote::Skipped);
                    if !self.s.is_node(i) {
                        self.extra_ended(i);
                    }
                }
                _ => {}
            }
            self.fx.writes.push(Write::TaskRun(i));
        }
    }

    /// Task run `i`, ready, goes to its queue.
    fn queue(&mut self, i: usize) {
        self.fx.enqueue.push(i);
        let t = &self.s.tasks[i];
        let series_start = (t.series_start > 1).then_some(t.series_start);
        self.task_note(i, TaskNote::Queued { series_start });
    }

    /// The store answered what task run `task_run`'s cache holds: a success of the same task
    /// with the same key, still within its `ttl`, is reused on the spot (its edges followed in
    /// this step); anything else queues it. An answer nobody waits for any more (the task run
    /// was cancelled or skipped meanwhile, or the run restarted) changes nothing.
    fn cache_read(&mut self, task_run: u64, entry: Option<CacheHit>) {
        let Some(i) = self.s.idx(task_run) else { return };
        if !self.s.cache_asked.remove(&task_run) || self.s.tasks[i].state != TaskState::Queued {
            return;
        }
        self.settle = true;
        self.fx.writes.push(Write::TaskRun(i));
        if self.s.budget_spent || self.s.job_run.cancel_requested || self.s.iteration_limit {
            self.s.set_state(i, TaskState::Skipped);
            self.s.tasks[i].ended_at_ms = Some(self.now);
            self.task_note(i, TaskNote::Skipped);
            return;
        }
        let ttl = self.s.def(i).cache.as_ref().map_or(0, |c| c.ttl.as_millis() as u64);
        match entry.filter(|e| self.now.saturating_sub(e.succeeded_at_ms) <= ttl) {
            Some(hit) if !self.s.stopping => {
                self.succeed_from_cache(i, hit);
                let matched = self.matching_transitions(i, true);
                self.fire(i, matched);
                let follows = self.follow_needs(i);
                self.apply(follows);
            }
            // Stopping: left queued (and written so), a resume queues it.
            _ if self.s.stopping => {}
            _ => self.queue(i),
        }
    }

    /// Task `i` succeeds with the outputs of the run it reuses; cost 0, no attempt.
    fn succeed_from_cache(&mut self, i: usize, hit: CacheHit) {
        self.s.set_state(i, TaskState::Succeeded);
        let t = &mut self.s.tasks[i];
        t.outputs = hit.outputs;
        t.exit_code = hit.exit_code;
        t.reason = None;
        t.detail = Some(format!("cached: reused task run {} of job run j{}", hit.task_run, hit.job_run));
        t.started_at_ms.get_or_insert(self.now);
        t.ended_at_ms = Some(self.now);
        let what = TaskNote::Succeeded { duration_ms: 0, cost_usd_micros: 0, cached_from: Some(hit.task_run) };
        self.task_note(i, what);
        self.fx.writes.push(Write::TaskRun(i));
    }

    /// If every task run has ended, records how the job run ended.
    fn settle_outcome(&mut self) {
        if self.s.ended {
            return;
        }
        self.decide_held();
        self.give_up_on_unreached();
        let Some(mut state) = graph::outcome(&self.s.states, self.s.not_made, self.s.job_run.cancel_requested) else {
            return;
        };
        if state == JobState::Succeeded && (self.s.budget_spent || self.s.iteration_limit) {
            state = JobState::Failed;
        }
        if state == JobState::Failed && self.saga_goes_on() {
            return; // its compensations run first (model/run/saga.rs)
        }
        self.s.ended = true;
        self.fx.finish = true;
        self.fx.writes.push(Write::JobRun);
        let reason = (state == JobState::Failed).then(|| self.failure_reason());
        let j = &mut self.s.job_run;
        let before = (j.state, j.reason.clone());
        (j.state, j.reason) = (state, reason);
        if before == (j.state, j.reason.clone()) && before.0.is_terminal() {
            return; // a revived run (a dead letter purged) that ends as it had: nothing new to say
        }
        j.ended_at_ms = Some(self.now);
        let (reason, cost_usd_micros) = (j.reason.clone(), j.cost_usd_micros);
        self.fx.notes.push(Note::JobEnded { state, reason, cost_usd_micros });
    }

    fn failure_reason(&self) -> String {
        if self.s.budget_spent {
            return "budget".into();
        }
        if self.s.iteration_limit {
            return "iteration_limit".into();
        }
        let first = |s: TaskState| self.s.tasks.iter().find(|t| t.state == s);
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

    fn claim(&mut self, task_run: u64) {
        let Some(i) = self.s.idx(task_run) else { return };
        // A compensation undoes what was spent for: a spent budget does not stop it.
        let budget_stops = self.s.budget_spent && self.s.tasks[i].kind != super::Kind::Compensation;
        if self.s.tasks[i].state != TaskState::Queued || self.s.stopping || budget_stops {
            return;
        }
        self.s.set_state(i, TaskState::Running);
        let t = &mut self.s.tasks[i];
        t.attempt += 1;
        t.started_at_ms.get_or_insert(self.now);
        t.progress = None;
        let (attempt, in_series) = (t.attempt, t.attempts_in_series());
        // Model fallback: recorded on the attempt (its cost may name the exact model later).
        let model = policy::model_for_attempt(&self.s.def(i).retry.models, in_series).map(str::to_string);
        self.fx.claimed = Some(Claimed { task: i, attempt, model });
    }

    /// The attempt of task `i` is over: record it, apply the retry policy, follow the graph.
    fn attempt_ended(&mut self, i: usize, end: AttemptEnd) {
        let failure = end.failure;
        let queue = self.s.tasks[i].queue.clone();
        let has_circuit = self.s.workflow().queues.get(&queue).is_some_and(|q| q.circuit.is_some());
        if has_circuit && failure.is_some_and(crate::model::queue::trips_circuit) {
            self.fx.circuit_failures.push((queue, self.now));
        }
        let t = &mut self.s.tasks[i];
        t.outputs.extend(end.outputs.clone());
        t.exit_code = end.exit_code.or(t.exit_code);
        let failed = TaskNote::Failed {
            attempt: end.n,
            reason: failure,
            exit_code: end.exit_code,
            signal: end.signal,
            detail: end.detail.clone(),
        };
        if failure == Some(FailReason::Interrupted) && self.s.stopping {
            // A graceful stop is not the task's fault: back to its queue, the attempt not counted.
            t.series_start += 1;
            self.s.set_state(i, TaskState::Queued);
            self.fx.writes.push(Write::TaskRun(i));
            self.task_note(i, failed);
            return;
        }
        if failure == Some(FailReason::ResourceExhausted) && !self.s.job_run.cancel_requested && !self.s.budget_spent {
            self.wait_for_resources(i, end.detail, failed);
            return;
        }
        self.s.exhausted.remove(&t.id);
        let decision = self.decide(i, AttemptOutcome { failure, exit_code: end.exit_code });
        if failure.is_some() && decision != AfterAttempt::Cancelled {
            self.task_note(i, failed);
        }
        let t = &mut self.s.tasks[i];
        t.reason = failure;
        t.detail = end.detail;
        if !matches!(decision, AfterAttempt::Retry { .. }) {
            t.ended_at_ms = Some(self.now);
        }
        let to = match decision {
            AfterAttempt::Succeeded => {
                let duration_ms = self.now.saturating_sub(end.started_at_ms);
                let cost_usd_micros = t.cost_usd_micros;
                self.task_note(i, TaskNote::Succeeded { duration_ms, cost_usd_micros, cached_from: None });
                self.remember_in_cache(i);
                TaskState::Succeeded
            }
            AfterAttempt::Retry { delay } => {
                self.s.set_state(i, TaskState::Retrying);
                let delay_ms = delay.as_millis() as u64;
                let due_ms = self.now + delay_ms;
                let t = &mut self.s.tasks[i];
                t.not_before_ms = Some(due_ms);
                let next_attempt = t.attempt + 1;
                self.fx.timers.push((t.id, due_ms));
                self.task_note(i, TaskNote::RetryScheduled { delay_ms, next_attempt });
                self.fx.writes.push(Write::TaskRun(i));
                return;
            }
            AfterAttempt::Dead { reason } => {
                let crashes = self.s.def(i).retry.poison_after_crashes;
                let t = &mut self.s.tasks[i];
                t.reason = Some(reason);
                if reason == FailReason::Poison {
                    t.detail = Some(format!(
                        "gaffer died {crashes} times in a row while it ran: quarantined, not started again"
                    ));
                }
                return self.failed_for_good(i, reason);
            }
            AfterAttempt::Cancelled => {
                self.s.tasks[i].reason = Some(FailReason::Cancelled);
                self.task_note(i, TaskNote::Cancelled { from_dead: false });
                TaskState::Cancelled
            }
        };
        self.s.set_state(i, to);
        self.fx.writes.push(Write::TaskRun(i));
        let matched = if to == TaskState::Succeeded { self.matching_transitions(i, true) } else { Vec::new() };
        self.after_task_ended(i, matched);
    }

    /// Task run `i` failed for good: a failure that fires a transition is handled (`failed`),
    /// any other is a dead letter.
    pub(super) fn failed_for_good(&mut self, i: usize, reason: FailReason) {
        let matched = self.matching_transitions(i, false);
        let to = if matched.is_empty() {
            self.task_note(i, TaskNote::DeadLettered { reason });
            TaskState::Dead
        } else {
            self.task_note(i, TaskNote::Handled);
            TaskState::Failed
        };
        self.s.set_state(i, to);
        self.fx.writes.push(Write::TaskRun(i));
        self.after_task_ended(i, matched);
    }

    /// The transitions of task run `i`'s task whose `on` and `when` match how it ended, in
    /// file order: `(on, targets)`. A cancelled job run fires nothing.
    pub(super) fn matching_transitions(&mut self, i: usize, succeeded: bool) -> Vec<(TransitionOn, Vec<usize>)> {
        if self.s.job_run.cancel_requested {
            return Vec::new();
        }
        let edges = self.s.workflow_graph.transitions(self.s.tasks[i].task_index).to_vec();
        let mut matched = Vec::new();
        for edge in edges {
            let on = match edge.on {
                TransitionOn::Success => succeeded,
                TransitionOn::Failure => !succeeded,
                TransitionOn::Always => true,
            };
            if !on {
                continue;
            }
            if let Some(expression) = &edge.when {
                match self.env.when(self.s, i, expression) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        let message = format!("`when = \"{expression}\"` counts as false: {e}");
                        self.task_note(i, TaskNote::WhenFailed { message });
                        continue;
                    }
                }
            }
            matched.push((edge.on, edge.targets));
        }
        matched
    }

    /// A join's arrivals live only in memory: on a resume they are counted again from the
    /// ended runs of its sources whose transitions match (as they matched when they ended), so
    /// a join that had seen some of its sources before a restart still fires.
    fn recount_arrivals(&mut self) {
        let notes = self.fx.notes.len();
        for to in 0..self.s.graph.len() {
            if self.s.workflow_graph.join(to).is_none() || self.s.join_fired[to] {
                continue;
            }
            for r in 0..self.s.tasks.len() {
                let (source, state) = (self.s.tasks[r].task_index, self.s.tasks[r].state);
                let ended = matches!(state, TaskState::Succeeded | TaskState::Failed);
                if !ended || !self.s.is_node(r) || !self.s.workflow_graph.sources(to).contains(&source) {
                    continue;
                }
                let matched = self.matching_transitions(r, state == TaskState::Succeeded);
                if matched.iter().any(|(_, targets)| targets.contains(&to)) && !self.s.arrivals[to].contains(&source) {
                    self.s.arrivals[to].push(source);
                }
            }
        }
        self.fx.notes.truncate(notes); // a `when` that cannot be evaluated said so when it ended
    }

    /// Each matched transition of task run `i` arrives at its targets, in order.
    fn fire(&mut self, i: usize, matched: Vec<(TransitionOn, Vec<usize>)>) {
        for (on, targets) in matched {
            for to in targets {
                self.arrive(i, on, to);
            }
        }
    }

    /// A transition from task run `i` arrives at task `to`: a new task run of it starts,
    /// unless it has a `join` that still waits (or already fired: later arrivals are ignored).
    fn arrive(&mut self, i: usize, on: TransitionOn, to: usize) {
        if let Some(join) = self.s.workflow_graph.join(to) {
            // A join runs its target once: also when a person already cancelled or retried it.
            self.s.join_fired[to] |= self.s.tasks[to].state != TaskState::Pending;
            let source = self.s.tasks[i].task_index;
            if !self.s.join_fired[to] && !self.s.arrivals[to].contains(&source) {
                self.s.arrivals[to].push(source);
            }
            let needed = match join {
                Join::All => self.s.workflow_graph.sources(to).len(),
                Join::Count(n) => n as usize,
            };
            if self.s.join_fired[to] || self.s.arrivals[to].len() < needed {
                self.fx.notes.push(Note::TransitionFired { from: i, on, to, task_run: None });
                return;
            }
            self.s.join_fired[to] = true;
        }
        let run = self.new_task_run(to);
        self.fx.notes.push(Note::TransitionFired { from: i, on, to, task_run: run });
        if let Some(r) = run {
            self.s.tasks[r].reached_by = Some(ReachedBy { from_task_run: self.s.tasks[i].id, on });
            let ready = self.s.graph.ready_state(to);
            self.s.set_state(r, ready);
            self.apply(vec![Change { task: r, to: ready }]);
        }
    }

    /// The next task run of `task` (its first one if it was never reached), pending; none
    /// when nothing new may start, or past `max_iterations` (the run then fails).
    fn new_task_run(&mut self, task: usize) -> Option<usize> {
        let failing = self.s.graph.fail_fast && graph::is_failing(&self.s.states);
        if self.s.budget_spent || self.s.job_run.cancel_requested || self.s.iteration_limit || failing {
            return None;
        }
        if self.s.reached[task] == 0 && self.s.tasks[task].state != TaskState::Pending {
            self.s.reached[task] = 1; // its first task run was started another way (a person's retry)
        }
        let count = self.s.reached[task];
        if count >= self.s.workflow_graph.max_iterations(task) {
            self.s.iteration_limit = true;
            self.stop_new_work();
            return None;
        }
        self.s.reached[task] = count + 1;
        let r = if count == 0 {
            if !self.s.tasks[task].is_made() {
                let id = self.env.next_task_run_id();
                self.s.make(task, id, self.now);
            }
            self.s.latest[task] = task;
            task
        } else {
            let id = self.env.next_task_run_id();
            self.s.add_instance(task, id, self.now)
        };
        self.fx.writes.push(Write::TaskRun(r));
        Some(r)
    }

    /// Nothing left to do but tasks nobody will reach. A join that saw some of its sources
    /// arrive is recorded skipped with reason `join_unsatisfied`; a task nothing reached keeps
    /// no task run (SPEC §2.2); a pending task run of one (a store written before task runs
    /// were made when reached) is skipped as not reached.
    fn give_up_on_unreached(&mut self) {
        let only_pending_left =
            |s: &RunState| s.states.open() != 0 && s.states.open() == s.states.count(TaskState::Pending);
        if !only_pending_left(self.s) {
            return;
        }
        // First what waits for a transition or a join; a task that needs a transition target
        // (`held`) may be released by that: its need can no longer be reached again.
        self.give_up_pending(|s, i| !s.held.contains(&s.tasks[i].task_index));
        self.decide_held();
        if only_pending_left(self.s) {
            self.give_up_pending(|_, _| true);
        }
    }

    /// Skips the pending task runs `which` picks (see `give_up_on_unreached`).
    fn give_up_pending(&mut self, which: impl Fn(&RunState, usize) -> bool) {
        for i in 0..self.s.tasks.len() {
            if self.s.tasks[i].state != TaskState::Pending || !which(self.s, i) {
                continue;
            }
            let task = self.s.tasks[i].task_index;
            let join_waits = self.s.workflow_graph.join(task).is_some() && !self.s.arrivals[task].is_empty();
            if !self.s.tasks[i].is_made() {
                if !join_waits {
                    continue;
                }
                let id = self.env.next_task_run_id();
                self.s.make(i, id, self.now);
            }
            self.s.set_state(i, TaskState::Skipped);
            let t = &mut self.s.tasks[i];
            t.ended_at_ms = Some(self.now);
            if join_waits {
                t.reason = Some(FailReason::JoinUnsatisfied);
                t.detail = Some("its join can no longer be satisfied".into());
            } else {
                t.detail = Some("not reached".into());
            }
            self.task_note(i, TaskNote::Skipped);
            self.fx.writes.push(Write::TaskRun(i));
        }
    }

    /// Task run `i`'s `needs` edges, followed (only a task's first task run has them).
    pub(super) fn follow_needs(&mut self, i: usize) -> Vec<Change> {
        if i >= self.s.graph.len() {
            return Vec::new();
        }
        let changes = graph::after_end(&self.s.graph, &mut self.s.states, i);
        self.s.sync(&changes);
        changes
    }

    /// A succeeded task run with `cache` is remembered under its key.
    fn remember_in_cache(&mut self, i: usize) {
        if !self.s.is_node(i) {
            return; // items share the task's key; a compensation is no result
        }
        let Some(ttl) = self.s.def(i).cache.as_ref().map(|c| c.ttl.as_millis() as u64) else { return };
        let Some(key) = self.env.cache_key(self.s, i) else { return };
        let t = &self.s.tasks[i];
        let entry = CacheHit {
            task_run: t.id,
            job_run: self.s.job_run.id,
            succeeded_at_ms: self.now,
            expires_at_ms: self.now.saturating_add(ttl),
            outputs: t.outputs.clone(),
            exit_code: t.exit_code,
        };
        self.fx.writes.push(Write::Cached(key, entry));
    }

    /// The attempt could not start because the machine was out of descriptors, processes or
    /// memory: not the task's fault, so not counted. The task run waits (`retrying`, backing
    /// off while it keeps happening) and says why (`resource.exhausted`).
    fn wait_for_resources(&mut self, i: usize, detail: Option<String>, failed: TaskNote) {
        let id = self.s.tasks[i].id;
        let consecutive = self.s.exhausted.entry(id).or_default();
        *consecutive += 1;
        let delay_ms = policy::exhaustion_delay(*consecutive, self.env.random()).as_millis() as u64;
        let due_ms = self.now + delay_ms;
        self.s.set_state(i, TaskState::Retrying);
        let t = &mut self.s.tasks[i];
        t.series_start += 1;
        t.reason = Some(FailReason::ResourceExhausted);
        t.detail = detail.clone();
        t.not_before_ms = Some(due_ms);
        let next_attempt = t.attempt + 1;
        self.task_note(i, failed);
        self.task_note(i, TaskNote::RetryScheduled { delay_ms, next_attempt });
        self.task_note(i, TaskNote::ResourceExhausted { detail: detail.unwrap_or_default(), delay_ms });
        self.fx.writes.push(Write::TaskRun(i));
        self.fx.timers.push((id, due_ms));
    }

    /// The retry policy, overruled by a spent job budget and by a cancel of the whole run.
    fn decide(&mut self, i: usize, outcome: AttemptOutcome) -> AfterAttempt {
        let (budget_usd_micros, max_cost_usd_micros) = self.s.task_limits(i);
        let t = &self.s.tasks[i];
        let crashes_in_a_row =
            if outcome.failure == Some(FailReason::Interrupted) { self.env.crashes_in_a_row(t) } else { 0 };
        let run = RunSoFar {
            attempts_in_series: t.attempts_in_series(),
            cost_usd_micros: t.cost_usd_micros,
            budget_usd_micros,
            max_cost_usd_micros,
            crashes_in_a_row,
        };
        let decision = policy::after_attempt(&self.s.def(i).retry, outcome, run, self.env.random());
        match decision {
            AfterAttempt::Succeeded => decision,
            _ if self.s.job_run.cancel_requested => AfterAttempt::Cancelled,
            AfterAttempt::Cancelled => decision,
            _ if self.s.budget_spent => AfterAttempt::Dead { reason: FailReason::Budget },
            _ => decision,
        }
    }

    /// Task run `i` reached a terminal state: its matched transitions fire, its `needs` edges
    /// are followed; with `fail_fast`, an unhandled failure cancels what still runs. An extra
    /// run (fan-out item, compensation) moves its fan-out or saga on instead.
    pub(super) fn after_task_ended(&mut self, i: usize, matched: Vec<(TransitionOn, Vec<usize>)>) {
        if !self.s.is_node(i) {
            self.extra_ended(i);
            return;
        }
        self.fire(i, matched);
        let failing = graph::is_failing(&self.s.states) && self.s.states[i].is_unsuccessful_end();
        let changes = self.follow_needs(i);
        if failing && self.s.job().fail_fast {
            self.kill_running(FailReason::Cancelled);
        }
        self.apply(changes);
    }

    pub(super) fn kill_running(&mut self, reason: FailReason) {
        self.fx.kills.extend(self.s.running_ids().into_iter().map(|id| (id, reason)));
    }

    fn check_budgets(&mut self, i: usize) {
        let (task_budget, _) = self.s.task_limits(i);
        let t = &self.s.tasks[i];
        if policy::budget_reached(t.cost_usd_micros, task_budget) && t.state == TaskState::Running {
            let (limit_usd_micros, spent_usd_micros) = (task_budget.unwrap_or(0), t.cost_usd_micros);
            self.fx.kills.push((t.id, FailReason::Budget));
            self.fx.notes.push(Note::BudgetExceeded { task: Some(i), limit_usd_micros, spent_usd_micros });
        }
        let job_budget = self.s.job_budget();
        if !self.s.budget_spent && policy::budget_reached(self.s.job_run.cost_usd_micros, job_budget) {
            self.budget_spent(job_budget.unwrap_or(0));
        }
    }

    /// The job run's budget is spent: running attempts are stopped, nothing new starts.
    fn budget_spent(&mut self, limit_usd_micros: u64) {
        self.s.budget_spent = true;
        let spent_usd_micros = self.s.job_run.cost_usd_micros;
        self.fx.notes.push(Note::BudgetExceeded { task: None, limit_usd_micros, spent_usd_micros });
        self.kill_running(FailReason::Budget);
        self.stop_new_work();
    }

    /// Whatever has not started is skipped (its timers dropped); running attempts go on.
    fn stop_new_work(&mut self) {
        let mut changes = Vec::new();
        for i in 0..self.s.tasks.len() {
            // What nothing reached stays unreached: it gets no task run (SPEC §2.2).
            if self.s.tasks[i].is_made()
                && matches!(
                    self.s.states[i],
                    TaskState::Queued | TaskState::Pending | TaskState::Retrying | TaskState::Waiting
                )
            {
                self.s.set_state(i, TaskState::Skipped);
                self.fx.unschedule.push(self.s.tasks[i].id);
                changes.push(Change { task: i, to: TaskState::Skipped });
            }
        }
        self.fx.writes.push(Write::JobRun);
        self.apply(changes);
    }

    fn timer_due(&mut self, task_run: u64, due_ms: u64) {
        let Some(i) = self.s.idx(task_run) else { return };
        let t = &self.s.tasks[i];
        // A timer the task run no longer has (signalled, retried, re-armed) is ignored; a
        // `retrying` one without a time (a damaged record) is due at once.
        let stale =
            t.not_before_ms.unwrap_or(0) != due_ms || (t.state == TaskState::Waiting && t.not_before_ms.is_none());
        if self.s.stopping || stale {
            return;
        }
        match self.s.tasks[i].state {
            TaskState::Retrying => {
                self.s.tasks[i].not_before_ms = None;
                // With `fail_fast`, a failing run starts nothing new: not a retry either.
                let to = if self.s.graph.fail_fast && graph::is_failing(&self.s.states) {
                    TaskState::Skipped
                } else {
                    TaskState::Queued
                };
                self.s.set_state(i, to);
                let mut changes = vec![Change { task: i, to }];
                if to == TaskState::Skipped {
                    changes.extend(self.follow_needs(i));
                }
                self.apply(changes);
            }
            TaskState::Waiting => self.dead_letter_unstarted(i, FailReason::WaitTimeout),
            _ => {}
        }
    }

    /// A task run that never got to start is given up on: dead, with `reason`.
    fn dead_letter_unstarted(&mut self, i: usize, reason: FailReason) {
        let t = &mut self.s.tasks[i];
        t.reason = Some(reason);
        t.not_before_ms = None;
        t.ended_at_ms = Some(self.now);
        self.failed_for_good(i, reason);
    }

    fn not_part_of(&self, task_run: u64) -> String {
        format!("task run {task_run} is not part of job run j{}", self.s.job_run.id)
    }

    fn signal(&mut self, task_run: Option<u64>, name: &str) -> Result<String, String> {
        let waits_for_it = |s: &RunState, i: usize| {
            s.tasks[i].state == TaskState::Waiting && s.def(i).wait_for.as_deref() == Some(name)
        };
        let released: Vec<usize> = match task_run {
            Some(task_run) => {
                let i = self.s.idx(task_run).ok_or_else(|| self.not_part_of(task_run))?;
                if !waits_for_it(self.s, i) {
                    return Err(self.nothing_waits(name, Some(i)));
                }
                vec![i]
            }
            None => (0..self.s.tasks.len()).filter(|&i| waits_for_it(self.s, i)).collect(),
        };
        if released.is_empty() {
            return Err(self.nothing_waits(name, None));
        }
        let mut changes = Vec::new();
        for &i in &released {
            self.fx.unschedule.push(self.s.tasks[i].id);
            self.s.tasks[i].not_before_ms = None;
            self.s.set_state(i, TaskState::Queued);
            changes.push(Change { task: i, to: TaskState::Queued });
        }
        let names: Vec<String> =
            released.iter().map(|&i| format!("{} (#{})", self.s.tasks[i].task, self.s.tasks[i].id)).collect();
        self.apply(changes);
        Ok(format!("`{name}` released {} in job run j{}", names.join(", "), self.s.job_run.id))
    }

    /// Why a signal released nothing, with what does wait, so the user can fix the command.
    fn nothing_waits(&self, name: &str, task: Option<usize>) -> String {
        let tasks = &self.s.tasks;
        let waiting: Vec<String> = (0..tasks.len())
            .filter(|&i| tasks[i].state == TaskState::Waiting)
            .map(|i| {
                let wants = self.s.def(i).wait_for.as_deref().unwrap_or("?");
                format!("{} (#{}) waits for `{wants}`", tasks[i].task, tasks[i].id)
            })
            .collect();
        let subject = match task {
            Some(i) if tasks[i].state == TaskState::Waiting => {
                format!("task run {} does not wait for `{name}`", tasks[i].id)
            }
            Some(i) => format!("task run {} {}, not waiting", tasks[i].id, tasks[i].state.phrase()),
            None => format!("nothing in job run j{} waits for `{name}`", self.s.job_run.id),
        };
        if waiting.is_empty() { subject } else { format!("{subject}; {}", waiting.join(", ")) }
    }

    fn cancel(&mut self, task_run: Option<u64>) -> Result<String, String> {
        if let Some(task_run) = task_run {
            let i = self.s.idx(task_run).ok_or_else(|| self.not_part_of(task_run))?;
            return Ok(self.cancel_task(i));
        }
        let j = &self.s.job_run;
        if j.state.is_terminal() {
            return Err(format!("job run j{} has already {}", j.id, j.state.as_str()));
        }
        self.s.job_run.cancel_requested = true;
        let open: Vec<usize> = (0..self.s.tasks.len())
            .filter(|&i| self.s.tasks[i].is_made() && !self.s.tasks[i].state.is_terminal())
            .collect();
        for i in open {
            self.cancel_task(i);
        }
        Ok(format!("job run j{} is being cancelled", self.s.job_run.id))
    }

    pub(super) fn cancel_task(&mut self, i: usize) -> String {
        if self.s.fanouts.contains_key(&i) && self.s.tasks[i].state == TaskState::Running {
            return self.cancel_items(i);
        }
        let t = &mut self.s.tasks[i];
        let id = t.id;
        match t.state {
            TaskState::Running => {
                self.fx.kills.push((id, FailReason::Cancelled));
                format!("task run {id} is being stopped (SIGTERM, SIGKILL after {} s)", KILL_GRACE.as_secs())
            }
            TaskState::Queued | TaskState::Pending | TaskState::Retrying | TaskState::Waiting => {
                self.fx.unschedule.push(id);
                t.reason = Some(FailReason::Cancelled);
                t.ended_at_ms = Some(self.now);
                self.s.set_state(i, TaskState::Cancelled);
                self.fx.writes.push(Write::TaskRun(i));
                self.task_note(i, TaskNote::Cancelled { from_dead: false });
                self.after_task_ended(i, Vec::new());
                format!("task run {id} cancelled")
            }
            TaskState::Dead => {
                self.s.set_state(i, TaskState::Cancelled);
                self.fx.writes.push(Write::TaskRun(i));
                self.task_note(i, TaskNote::Cancelled { from_dead: true });
                self.after_task_ended(i, Vec::new());
                format!("task run {id} removed from the dead-letter queue (cancelled)")
            }
            other => format!("task run {id} {} already", other.phrase()),
        }
    }

    /// Records the plan's raised budgets; returns what the answer says of them.
    fn raise_budgets(&mut self, plan: &RetryPlan) -> Vec<String> {
        let mut said = Vec::new();
        if let Some(limit) = plan.raise_job_run {
            self.s.raised.job_run = Some(limit);
            self.fx.notes.push(Note::BudgetRaised { task: None, limit_usd_micros: limit });
            said.push(format!("job run j{}: budget raised to ${}", self.s.job_run.id, format_usd(limit)));
        }
        for &(id, limit) in &plan.raise_task_runs {
            self.s.raised.task_runs.insert(id, limit);
            if let Some(i) = self.s.idx(id) {
                self.fx.notes.push(Note::BudgetRaised { task: Some(i), limit_usd_micros: limit });
                said.push(format!("task run {id}: budget raised to ${}", format_usd(limit)));
            }
        }
        if !said.is_empty() {
            self.fx.writes.push(Write::RaisedBudgets);
        }
        said
    }

    /// The plan's task runs get a fresh series of attempts.
    fn retry(&mut self, plan: RetryPlan) -> Result<String, String> {
        let mut said = self.raise_budgets(&plan);
        let named: Vec<usize> = plan.task_runs.iter().filter_map(|&id| self.s.idx(id)).collect();
        for &i in &named {
            // A fanned-out node's retry is its failed items' (`retry_extra`): an item whose node
            // the plan names too is reopened, and said, once — by its node.
            if self.s.tasks[i].item_index.is_some() && self.node_of(i).is_some_and(|node| named.contains(&node)) {
                continue;
            }
            said.push(self.retry_task(i)?);
        }
        Ok(said.join("\n"))
    }

    /// Reopens task `i` for a fresh series.
    fn retry_task(&mut self, i: usize) -> Result<String, String> {
        if !self.s.is_node(i) || self.s.fanouts.contains_key(&i) {
            return self.retry_extra(i);
        }
        let t = &self.s.tasks[i];
        if !t.state.is_retryable() {
            let (id, phrase) = (t.id, t.state.phrase());
            return Err(format!("task run {id} {phrase}; only dead or cancelled task runs can be retried"));
        }
        let reopened = self.s.reopen();
        // A task run that never started was never released: it waits for its signal again.
        let task = self.s.tasks[i].task_index;
        let to = if self.s.tasks[i].attempt == 0 { self.s.graph.ready_state(task) } else { TaskState::Queued };
        self.s.set_state(i, to);
        let t = &mut self.s.tasks[i];
        t.series_start = t.attempt + 1;
        (t.reason, t.detail, t.ended_at_ms) = (None, None, None);
        let (id, next) = (t.id, t.attempt + 1);
        let mut changes = vec![Change { task: i, to }];
        changes.extend(graph::reopen(&self.s.graph, &mut self.s.states));
        self.s.sync(&changes);
        if reopened {
            self.fx.notes.push(Note::JobStarted { retry: true, from: None });
        }
        self.fx.writes.push(Write::JobRun);
        self.apply(changes);
        if to == TaskState::Waiting {
            return Ok(format!("task run {id} waits for its signal again"));
        }
        Ok(format!("task run {id} queued again (attempt {next} next)"))
    }

    /// `retry --from`: `rerun` starts again from scratch (attempt numbers go on).
    fn run_from(&mut self, from: &str, rerun: &[usize], plan: &RetryPlan) -> String {
        let mut said = self.raise_budgets(plan);
        // A re-run means run again: a cache entry would hand back the result being replaced.
        for &i in rerun.iter().filter(|&&i| self.s.tasks[i].is_made()) {
            if let Some(key) = self.env.cache_key(self.s, i) {
                self.fx.writes.push(Write::Uncached(key));
            }
        }
        self.s.reopen();
        let mut changes = Vec::new();
        for &i in rerun {
            // A transition reached `from` last time; no transition will now: it is ready at
            // once (the rest follow it through `needs`, or are reached again by its transitions).
            let task = self.s.tasks[i].task_index;
            let reached = self.s.tasks[i].task == from && self.s.workflow_graph.is_transition_target(task);
            let to = if reached { self.s.graph.ready_state(task) } else { TaskState::Pending };
            self.s.set_state(i, to);
            self.s.tasks[i].reset_for_rerun();
            changes.push(Change { task: i, to });
        }
        changes.extend(graph::reopen(&self.s.graph, &mut self.s.states));
        self.s.sync(&changes);
        self.fx.writes.push(Write::JobRun);
        self.fx.notes.push(Note::JobStarted { retry: true, from: Some(from.to_string()) });
        let names: Vec<&str> = rerun.iter().map(|&i| self.s.tasks[i].task.as_str()).collect();
        let id = self.s.job_run.id;
        said.push(format!("job run j{id} runs again from `{from}`: {} (attempt numbers go on)", names.join(", ")));
        self.apply(changes);
        said.join("\n")
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
