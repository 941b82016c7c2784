//! A JobRun actor as the owner of its job run in a cluster (docs/cluster-design.md): it renders
//! each queued task run's next attempt into the row it commits, hears from the nodes that run
//! its attempts by mail, and sends them kills. Every decision is still `model::run`'s, stepped
//! with the same inputs as for a local worker.

use std::time::Duration;

use actix::prelude::*;

use super::{AttemptEnded, CostAdded, JobRun, ProgressReported, Runner, WarningReported};
use crate::config::template::TemplateContext;
use crate::engine::EventData;
use crate::engine::cluster::{QueuedSpec, SecretFields, env_files, secret_fields};
use crate::engine::dispatcher::QueuingNote;
use crate::executor::{AttemptExit, KILL_GRACE};
use crate::model::cost::CostDelta;
use crate::model::lease::{DeadRunner, Fence, dead_runner};
use crate::model::run::Input;
use crate::model::{FailReason, TaskState, policy};
use crate::store::pg::mail::{Letter, Mail, Received};
use crate::store::{AttemptRecord, Mutation, codec};

impl JobRun {
    /// In a cluster: the next attempt of each task run among `tasks` that is queued, rendered
    /// now and committed with its row (`Mutation::Spec`), so that any node can run it (without
    /// its secrets and `env_file` values, which the runner puts back). Those
    /// that cannot be rendered are returned: they fail as a template error once committed.
    /// The Dispatcher hears of their queues first, and again once the commit landed (the
    /// note, dropped after it): none of this node's new task runs may start at submit ahead of
    /// them (`model::start_at_submit`).
    pub(super) fn queued_specs(
        &self,
        tasks: &[usize],
        mutations: &mut Vec<Mutation>,
    ) -> (Vec<(u64, String)>, Option<QueuingNote>) {
        let mut unrenderable = Vec::new();
        if self.shared.cluster.is_none() {
            return (unrenderable, None);
        }
        let queued: Vec<usize> =
            tasks.iter().copied().filter(|&i| self.run.tasks[i].state == TaskState::Queued).collect();
        let mut queues: Vec<String> = queued.iter().map(|&i| self.run.tasks[i].queue.clone()).collect();
        queues.sort();
        queues.dedup();
        let note = (!queues.is_empty()).then(|| QueuingNote::send(self.shared.dispatcher.clone(), queues));
        for i in queued {
            let t = &self.run.tasks[i];
            // As `Input::Claim` will number and pick the model of the next attempt.
            let (n, in_series) = (t.attempt + 1, (t.attempt + 2).saturating_sub(t.series_start));
            let def = self.run.def(i);
            let model = policy::model_for_attempt(&def.retry.models, in_series).map(str::to_string);
            let rendered = (self.render_spec(i, n, model.clone()))().and_then(|spec| {
                let mut queued = QueuedSpec::of(&spec, def.timeout, def.heartbeat_timeout, model.clone());
                env_files::hold_back(&mut queued, def)?;
                queued.secret_fields = self.secret_fields(i, model, &mut queued)?;
                codec::encode(&queued).map_err(|e| e.to_string())
            });
            match rendered {
                Ok(bytes) => mutations.push(Mutation::Spec(t.id, Some(bytes))),
                Err(e) => {
                    mutations.push(Mutation::Spec(t.id, None));
                    unrenderable.push((t.id, e));
                }
            }
        }
        (unrenderable, note)
    }

    /// Secrets are never stored: the fields of task run `i`'s `spec` that read a secret param
    /// are taken out of it (`***`), to be rendered by the node that runs it
    /// (`cluster::secret_fields`).
    fn secret_fields(
        &self,
        i: usize,
        model: Option<String>,
        spec: &mut QueuedSpec,
    ) -> Result<Option<SecretFields>, String> {
        let def = self.run.def(i);
        let secret_names: Vec<&str> =
            self.run.job().params.iter().filter(|(_, p)| p.secret).map(|(name, _)| name.as_str()).collect();
        if secret_names.is_empty() || !def.is_templated() {
            return Ok(None);
        }
        let ctx = TemplateContext { model, ..super::template_context(&self.shared, &self.record, &self.run, i) };
        let compensation = self.run.tasks[i].compensates.is_some();
        secret_fields::hold_back(spec, def, compensation, &ctx, &secret_names)
    }

    /// In a cluster no Dispatcher here holds the queued task runs: the owner times out those
    /// of `tasks` with a `queue_timeout` itself (nothing happens if one started meanwhile; one
    /// claimed but not yet heard of is refused when its `Started` comes).
    pub(super) fn arm_queue_timeouts(&self, tasks: &[usize], ctx: &mut Context<Self>) {
        let now = self.now();
        for &i in tasks.iter().filter(|&&i| self.run.tasks[i].state == TaskState::Queued) {
            let Some(timeout) = self.run.def(i).queue_timeout else { continue };
            let t = &self.run.tasks[i];
            let waited = Duration::from_millis(now.saturating_sub(t.queued_at_ms.unwrap_or(now)));
            let task_run = t.id;
            ctx.run_later(timeout.saturating_sub(waited), move |act, ctx| {
                act.step(ctx, Input::QueueTimedOut { task_run }, Vec::new(), Vec::new());
            });
        }
    }

    /// A queued task run whose next attempt cannot be rendered: that attempt fails here, as a
    /// template error (what a local claim does with it).
    pub(super) fn fail_unrenderable(&mut self, ctx: &mut Context<Self>, task_run: u64, error: &str) {
        let Some(granted) = self.step(ctx, Input::Claim { task_run }, Vec::new(), Vec::new()).claimed else { return };
        let mut attempt = AttemptRecord::started(task_run, self.record.id, granted.attempt, self.now());
        attempt.model = granted.model;
        self.running.insert(task_run, (attempt, None));
        self.template_failed(ctx, task_run, error);
    }

    /// The running attempt of `task_run`, whose runner is gone, ends `interrupted` with `detail`
    /// and is retried by policy.
    fn interrupt_running(&mut self, ctx: &mut Context<Self>, task_run: u64, detail: &str) {
        let Some((mut attempt, _)) = self.running.remove(&task_run) else { return };
        self.note_if_idle();
        attempt.detail = Some(detail.into());
        self.end_attempt(ctx, attempt, Some(FailReason::Interrupted));
    }

    /// Tells node `node` to stop attempt `n` of `task_run`.
    pub(super) fn mail_kill(&self, node: i64, task_run: u64, n: u32, reason: FailReason, grace: Duration) {
        let Some(cluster) = &self.shared.cluster else { return };
        let kill = Mail::Kill { reason, grace_ms: grace.as_millis() as u64 };
        cluster.mailer.send(Letter { job_run: self.record.id, to_node: Some(node), task_run, attempt: n, mail: kill });
    }

    /// A claim of attempt `n` in the store that this owner does not grant (the task run was
    /// cancelled, its budget spent, the run is stopping): the row is written back as the task
    /// run is here, so it is not left `running` with nobody running it (its late outcome is
    /// then refused).
    pub(super) fn refuse_claim(&mut self, ctx: &mut Context<Self>, task_run: u64) {
        let Some(i) = self.idx(task_run) else { return };
        let mut writes = vec![Mutation::TaskRun(self.task_record(i))];
        // Stopping, a queued task run is parked: claimed again, it would be refused again.
        if self.run.stopping {
            writes.extend(self.parked(&[i]));
        }
        self.persist_then(ctx, writes, Vec::new(), |_, _| {});
    }

    /// Attempt `n` of `task_run` was claimed by a node that died before this owner heard it
    /// start (`model::lease::DeadRunner::Unheard`): the core claims it here, so that it is
    /// attempt `n`, committed as started on that node (the row keeps the claimer as its node,
    /// and so does the attempt's row), then recorded `interrupted` and retried by policy as
    /// `n + 1`. A claim the core does not grant (cancelled, budget spent, stopping) is written
    /// back as the task run is here.
    pub(super) fn record_unheard(&mut self, ctx: &mut Context<Self>, task_run: u64, n: u32) {
        let next = self.idx(task_run).map(|i| &self.run.tasks[i]).filter(|t| t.state == TaskState::Queued);
        let granted = match next.is_some_and(|t| t.attempt + 1 == n) {
            true => self.step(ctx, Input::Claim { task_run }, Vec::new(), Vec::new()).claimed,
            false => None,
        };
        let Some(granted) = granted.filter(|g| g.attempt == n) else { return self.refuse_claim(ctx, task_run) };
        let mut attempt = AttemptRecord::started(task_run, self.record.id, n, self.now());
        attempt.model = granted.model;
        self.running.insert(task_run, (attempt.clone(), None));
        let writes = vec![Mutation::TaskRun(self.task_record(granted.task)), Mutation::Attempt(attempt)];
        // Its end in a commit of its own after this one: in the same group, the row's last
        // write (queued, no node) would name this node as the attempt's.
        self.persist_then(ctx, writes, Vec::new(), move |act, ctx| {
            if matches!(act.running.get(&task_run), Some((a, None)) if a.n == n) {
                act.interrupt_running(ctx, task_run, super::UNHEARD);
            }
        });
    }

    /// A graceful stop in a cluster: the queued task runs among `tasks` lose their rendered
    /// spec, so no node runs them while this owner stops (a node that claims one gives it back,
    /// `queue::give_back`); the node that adopts the run renders them again when it resumes it.
    pub(super) fn parked(&self, tasks: &[usize]) -> Vec<Mutation> {
        if self.shared.cluster.is_none() {
            return Vec::new();
        }
        let queued =
            tasks.iter().filter(|&&i| self.run.tasks[i].is_made() && self.run.tasks[i].state == TaskState::Queued);
        queued.map(|&i| Mutation::Spec(self.run.tasks[i].id, None)).collect()
    }

    /// Node `node` started attempt `n` of `task_run`: the claim as the core sees it, then
    /// `running` committed, as for a local worker (its spec was rendered when it was queued).
    fn remote_started(
        &mut self,
        ctx: &mut Context<Self>,
        task_run: u64,
        n: u32,
        node: i64,
        process: Option<(u32, i32, u64)>,
    ) {
        let next = self.idx(task_run).map(|i| self.run.tasks[i].attempt + 1);
        let granted = match next == Some(n) {
            true => self.step(ctx, Input::Claim { task_run }, Vec::new(), Vec::new()).claimed,
            false => None,
        };
        let Some(granted) = granted else {
            let heard =
                matches!(self.running.get(&task_run), Some((a, Some(Runner::Remote(r)))) if a.n == n && *r == node);
            if heard {
                return; // the same letter again: that attempt runs there, as heard
            }
            self.mail_kill(node, task_run, n, FailReason::Cancelled, KILL_GRACE);
            // A late letter of an attempt this owner counted already (its runner was found dead
            // and the claim recorded `interrupted`, `model::lease::DeadRunner::Unheard`): the row
            // may be another node's claim of the next attempt by now, not to be written over.
            if next.is_some_and(|next| n < next) {
                return;
            }
            return self.refuse_claim(ctx, task_run);
        };
        let i = granted.task;
        let mut attempt = AttemptRecord::started(task_run, self.record.id, n, self.now());
        attempt.model = granted.model;
        if let Some((pid, pgid, start_ticks)) = process {
            (attempt.pid, attempt.pgid, attempt.start_ticks) = (Some(pid), Some(pgid), start_ticks);
        }
        self.running.insert(task_run, (attempt.clone(), Some(Runner::Remote(node))));
        let started = EventData::TaskStarted { priority: self.run.tasks[i].priority, pid: process.map(|p| p.0) };
        let event = self.task_event(started, i);
        let writes = vec![Mutation::TaskRun(self.task_record(i)), Mutation::Attempt(attempt)];
        self.persist_then(ctx, writes, vec![event], |_, _| {});
    }
}

/// A letter for this job run's owner from a node running one of its attempts.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Mailed(pub Received);

impl Handler<Mailed> for JobRun {
    type Result = ();

    /// The letter is handled, then deleted with the commit that carries its effect (its own
    /// commit when handling it wrote nothing): if this node dies before that commit, the
    /// letter is still there for the adopter.
    fn handle(&mut self, Mailed(Received { id, letter }): Mailed, ctx: &mut Self::Context) {
        self.mail_applied.push(id);
        self.handle_letter(letter, ctx);
        if !self.mail_applied.is_empty() {
            self.persist_then(ctx, Vec::new(), Vec::new(), |_, _| {});
        }
    }
}

impl JobRun {
    /// The same inputs as a local worker's messages.
    fn handle_letter(&mut self, letter: Letter, ctx: &mut Context<Self>) {
        let (task_run, attempt) = (letter.task_run, letter.attempt);
        let current = self.running.get(&task_run).is_some_and(|(a, _)| a.n == attempt);
        match letter.mail {
            Mail::Started { node, process } => self.remote_started(ctx, task_run, attempt, node, process),
            Mail::Cost { usage, model, unpriced } => {
                let delta = CostDelta { usage, model, unpriced };
                Handler::handle(self, CostAdded { task_run, attempt, delta }, ctx)
            }
            Mail::Progress { text } if current => Handler::handle(self, ProgressReported { task_run, text }, ctx),
            Mail::Warning { text } => Handler::handle(self, WarningReported { task_run, attempt, text }, ctx),
            Mail::Ended { exit_code, signal, reason, detail, outputs } => {
                let exit = (exit_code.is_some() || signal.is_some()).then_some(AttemptExit { exit_code, signal });
                Handler::handle(self, AttemptEnded { task_run, attempt, exit, reason, detail, outputs }, ctx)
            }
            // Kills go to workers, commands and answers to the Supervisor (`cluster::relay`).
            Mail::Progress { .. } | Mail::Kill { .. } | Mail::Command { .. } | Mail::Answer { .. } => {}
        }
    }
}

/// The node running attempt `attempt` of `task_run` died (its lease ran out) while this node
/// owns the job run: the attempt is recorded `interrupted` and retried by policy; whatever
/// that node reports later is refused by the fence.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunnerDied {
    pub task_run: u64,
    pub attempt: u32,
}

impl Handler<RunnerDied> for JobRun {
    type Result = ();

    /// What happens is `model::lease::dead_runner`'s: an attempt heard of ends `interrupted`;
    /// one claimed but never heard of (a node killed or paused while it starts it) is recorded
    /// as that attempt, `interrupted`, so its number is not given again; a row no claim explains
    /// is written back as the task run is here.
    fn handle(&mut self, msg: RunnerDied, ctx: &mut Self::Context) {
        let Some(i) = self.idx(msg.task_run) else { return };
        let (state, attempt) = (self.run.tasks[i].state, self.run.tasks[i].attempt);
        // The store found it running on a dead node (`orphaned_attempts_of`; which one does not
        // matter here).
        let fence = Fence { state: TaskState::Running, node: Some(0), attempt: msg.attempt };
        match dead_runner(fence, false, state, attempt) {
            DeadRunner::Interrupted(n) => {
                let remote = matches!(self.running.get(&msg.task_run), Some((a, Some(Runner::Remote(_)))) if a.n == n);
                if remote {
                    self.interrupt_running(ctx, msg.task_run, "its node died while it ran");
                }
            }
            DeadRunner::Unheard(n) => self.record_unheard(ctx, msg.task_run, n),
            // Not a running attempt here, nor a claim of the next one: as the owner has it.
            DeadRunner::WriteBack => self.refuse_claim(ctx, msg.task_run),
            DeadRunner::Nothing => {}
        }
    }
}

/// An attempt of this job run that its runner completed (its row is written) before the runner
/// died without its `Ended` letter reaching this owner: the outcome is the row's (without the
/// outputs, which only the letter carries), as an adopter takes it
/// (`end_from_rows_unless_mailed`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct EndedUnmailed(pub AttemptRecord);

impl Handler<EndedUnmailed> for JobRun {
    type Result = ();

    fn handle(&mut self, EndedUnmailed(row): EndedUnmailed, ctx: &mut Self::Context) {
        let task_run = row.task_run;
        let awaited = matches!(self.running.get(&task_run), Some((a, Some(Runner::Remote(_)))) if a.n == row.n);
        if !awaited || row.ended_at_ms.is_none() {
            return;
        }
        self.running.remove(&task_run);
        tracing::warn!(
            task_run,
            "job run j{}: its runner died before its `Ended` letter for attempt {}; its row's outcome taken",
            self.record.id,
            row.n
        );
        self.note_if_idle();
        self.ended_attempt(ctx, row, Default::default());
    }
}
