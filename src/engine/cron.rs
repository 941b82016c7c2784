//! `gaffer serve`'s schedules, on the Supervisor: catch-up at start, overlap policies at each
//! fire time, and the persisted next fire time committed together with the run it starts.

use std::collections::BTreeMap;

use actix::prelude::*;

use super::job_run::{Begin, Cancel};
use super::journal::Publish;
use super::scheduler::{ArmCrons, Fire};
use super::supervisor::Supervisor;
use super::{EngineError, EngineEvent, EventData};
use crate::config::Overlap;
use crate::model::schedule::{self, FireDecision, Schedule, ScheduleState};
use crate::store::Mutation;

impl Supervisor {
    /// Parses every job's schedule, catches up what was missed while gaffer was down (per the
    /// job's `catchup`), and arms the Scheduler. Returns how many catch-up fires started a run
    /// (the overlap policy may skip some: those are `schedule.skipped`, not caught up).
    /// `stored`: the persisted schedule states, read off the thread.
    fn serve_schedules(
        &mut self,
        stored: BTreeMap<String, ScheduleState>,
        ctx: &mut Context<Self>,
    ) -> Result<usize, EngineError> {
        let shared = self.shared()?;
        let now = shared.clock.now_ms();
        let mut crons = Vec::new();
        let mut catch_ups = 0;
        let workflow = self.workflow.clone();
        for job in workflow.jobs.iter().filter(|j| j.schedule.is_some()) {
            let expression = job.schedule.clone().unwrap_or_default();
            let schedule = Schedule::new(&expression, job.timezone.as_deref()).map_err(EngineError::Invalid)?;
            let (missed, next_due) = schedule::catch_up(
                &schedule,
                stored.get(&job.name),
                &expression,
                job.timezone.as_deref(),
                &job.policy,
                now,
            );
            for scheduled_for in missed {
                // Fired here, in order, so each sees the runs the previous one started.
                let fire = Fire { job: job.name.clone(), scheduled_for, next_due_ms: next_due, held: false };
                match self.fire(fire, ctx) {
                    Ok(started) => catch_ups += usize::from(started),
                    Err(e) => tracing::error!("schedule of job `{}`: {e}", job.name),
                }
            }
            crons.push((job.name.clone(), schedule, next_due));
        }
        shared.scheduler.do_send(ArmCrons { crons, fire_to: ctx.address().recipient() });
        self.sweep_logs(ctx);
        ctx.run_interval(super::retention::EVERY, |act, ctx| act.sweep_logs(ctx));
        Ok(catch_ups)
    }

    /// Log retention, off the engine's thread.
    fn sweep_logs(&mut self, _ctx: &mut Context<Self>) {
        let Some(shared) = self.shared.clone() else { return };
        let retention = self.workflow.settings.retention;
        actix::spawn(async move {
            let now = shared.clock.now_ms();
            let (store, dir) = (shared.store.clone(), shared.state_dir.clone());
            let sweep = move || {
                let logs = super::retention::sweep(&store, &dir, now, retention)?;
                Ok::<_, crate::store::StoreError>((logs, super::retention::sweep_cache(&store, now)?))
            };
            match tokio::task::spawn_blocking(sweep).await {
                Ok(Ok((0, 0))) => {}
                Ok(Ok((logs, cached))) => {
                    tracing::info!("retention: removed the logs of {logs} job run(s), {cached} expired cache entries")
                }
                Ok(Err(e)) => tracing::warn!("retention: {e}"),
                Err(e) => tracing::warn!("retention: {e}"),
            }
        });
    }

    /// The armed next fire time of `job` (what a held fire time persists).
    pub(super) fn next_due_of(&self, job: &str) -> u64 {
        let Some(def) = self.workflow.jobs.iter().find(|j| j.name == job) else { return u64::MAX };
        let Some(shared) = &self.shared else { return u64::MAX };
        let Some(expression) = &def.schedule else { return u64::MAX };
        Schedule::new(expression, def.timezone.as_deref())
            .ok()
            .and_then(|s| s.next_after(shared.clock.now_ms()))
            .unwrap_or(u64::MAX)
    }

    /// Applies the overlap policy to one fire time; true when it started a run.
    fn fire(&mut self, msg: Fire, ctx: &mut Context<Self>) -> Result<bool, EngineError> {
        if self.is_stopping() {
            // Left unrecorded on purpose: the next start catches this fire time up.
            return Ok(false);
        }
        let shared = self.shared()?;
        let def = self
            .workflow
            .jobs
            .iter()
            .find(|j| j.name == msg.job)
            .cloned()
            .ok_or_else(|| EngineError::Invalid(format!("no job `{}`", msg.job)))?;
        let active: Vec<u64> = self.job_of.iter().filter(|(_, j)| **j == msg.job).map(|(id, _)| *id).collect();
        let cluster = self.is_cluster();
        let waiting = self.waiting_fires.contains_key(&msg.job);
        let decision = if cluster {
            schedule::on_fire_in_cluster(&def.policy, active.len(), waiting)
        } else {
            schedule::on_fire(&def.policy, active.len(), waiting)
        };
        match decision {
            FireDecision::Skip | FireDecision::Queue => {
                let hold = decision == FireDecision::Queue;
                self.skip_fire(&msg, if hold { "queued behind the active run" } else { "a run is active" }, hold, ctx)?;
                Ok(false)
            }
            FireDecision::CancelPreviousThenStart | FireDecision::Start => {
                // In a cluster every node's runs are cancelled, once this node took the fire time.
                if decision == FireDecision::CancelPreviousThenStart && !cluster {
                    for id in &active {
                        if let Some(run) = self.job_runs_addr(*id) {
                            run.do_send(Cancel { task_run: None });
                        }
                    }
                }
                let mut with = if msg.held { Vec::new() } else { vec![self.remember(&def, &msg)] };
                // In a cluster the runs this node counted are only its own: the store checks the
                // start against every node's in the transaction that creates the run.
                let bounded = (decision == FireDecision::Start && self.is_cluster())
                    .then(|| schedule::start_limit(&def.policy))
                    .flatten();
                if let Some(limit) = bounded {
                    with.push(Mutation::ActiveRunsBelow(msg.job.clone(), limit));
                }
                let event = fire_event(
                    &msg,
                    EventData::ScheduleFired { scheduled_for_ms: msg.scheduled_for },
                    shared.clock.now_ms(),
                );
                let (begun, created) = match decision == FireDecision::CancelPreviousThenStart && cluster {
                    true => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        (Some(tx), Some(rx))
                    }
                    false => (None, None),
                };
                let begin = Begin::New { with, events: vec![event], begun };
                let id = self.submit_scheduled(&msg.job, begin)?;
                if let Some(created) = created {
                    self.cancel_previous_in_cluster(&msg.job, id, created);
                }
                if bounded.is_some() && !msg.held && def.policy.overlap != Overlap::Queue {
                    self.bounded_fires.insert(id, msg);
                }
                Ok(true)
            }
        }
    }

    /// The schedule's state once `msg` is handled. On a shared store this write takes the fire
    /// time (`schedule::fire_accepted`): if another node took it first, the whole batch is
    /// refused and nothing of it is written (`FireLost`).
    fn remember(&self, def: &crate::config::JobDef, msg: &Fire) -> Mutation {
        let state = ScheduleState {
            expression: def.schedule.clone().unwrap_or_default(),
            timezone: def.timezone.clone(),
            next_due_ms: msg.next_due_ms,
            last_fired_ms: Some(msg.scheduled_for),
        };
        Mutation::Schedule(msg.job.clone(), state)
    }

    /// Records fire time `msg` as handled without a run (`hold`: `overlap = "queue"` keeps it
    /// until the active run ends) and says `schedule.skipped` once that is durable.
    fn skip_fire(&mut self, msg: &Fire, reason: &str, hold: bool, ctx: &mut Context<Self>) -> Result<(), EngineError> {
        let shared = self.shared()?;
        let def = self.workflow.jobs.iter().find(|j| j.name == msg.job).cloned();
        let def = def.ok_or_else(|| EngineError::Invalid(format!("no job `{}`", msg.job)))?;
        let data = EventData::ScheduleSkipped { scheduled_for_ms: msg.scheduled_for, reason: reason.into() };
        let skipped = fire_event(msg, data, shared.clock.now_ms());
        if hold {
            self.waiting_fires.insert(msg.job.clone(), msg.scheduled_for);
        }
        let (journal, job, scheduled_for) = (shared.journal.clone(), msg.job.clone(), msg.scheduled_for);
        // Told once the fire time is recorded as this node's. Another node may have taken
        // it (a shared store): then that node handles it, and this one holds nothing.
        let recorded = shared.store.commit(vec![self.remember(&def, msg)]).into_actor(self);
        ctx.spawn(recorded.map(move |result, act, _| match result {
            Ok(()) => journal.do_send(Publish(skipped)),
            Err(crate::store::StoreError::FireTaken { .. }) => {
                if act.waiting_fires.get(&job) == Some(&scheduled_for) {
                    act.waiting_fires.remove(&job);
                }
            }
            Err(e) => tracing::warn!("schedule of job `{job}`: cannot record a skipped fire time: {e}"),
        }));
        Ok(())
    }
}

/// An event of `msg`'s job.
fn fire_event(msg: &Fire, data: EventData, now_ms: u64) -> EngineEvent {
    let mut e = EngineEvent::new(data, now_ms);
    e.job = Some(msg.job.clone());
    e
}

/// Start firing the workflow's schedules (`gaffer serve`); answers how many missed fire times
/// started a run.
#[derive(Message)]
#[rtype(result = "Result<usize, EngineError>")]
pub struct ServeSchedules;

impl Handler<ServeSchedules> for Supervisor {
    type Result = ResponseFuture<Result<usize, EngineError>>;

    fn handle(&mut self, _: ServeSchedules, ctx: &mut Self::Context) -> Self::Result {
        self.read_then(ctx, |reader| Ok(reader.schedules()?), |act, stored, ctx| act.serve_schedules(stored, ctx))
    }
}

/// A scheduled run's first commit was refused because another node took its fire time first
/// (`StoreError::FireTaken`), or because enough runs of its job run on other nodes for its
/// overlap policy (`StoreError::RunLimit`, `refused`): the run never existed; its actor has
/// stopped. Refused, the fire time is skipped as if this node had counted those runs (except
/// under `overlap = "queue"`: the node whose run is active holds it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FireLost {
    pub job_run: u64,
    pub refused: bool,
}

impl Handler<FireLost> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: FireLost, ctx: &mut Self::Context) {
        self.job_runs.remove(&msg.job_run);
        let fire = self.bounded_fires.remove(&msg.job_run);
        let Some(job) = self.job_of.remove(&msg.job_run) else { return };
        if !msg.refused {
            return tracing::debug!("schedule of job `{job}`: another node fired it first");
        }
        tracing::debug!("schedule of job `{job}`: runs of it are active on other nodes");
        if let Some(fire) = fire
            && let Err(e) = self.skip_fire(&fire, "a run is active", false, ctx)
        {
            tracing::error!("schedule of job `{job}`: {e}");
        }
    }
}

impl Handler<Fire> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Fire, ctx: &mut Self::Context) {
        let job = msg.job.clone();
        if let Err(e) = self.fire(msg, ctx) {
            tracing::error!("schedule of job `{job}`: {e}");
        }
    }
}
