//! `gaffer serve`'s schedules, on the Supervisor: catch-up at start, overlap policies at each
//! fire time, and the persisted next fire time committed together with the run it starts.

use std::collections::BTreeMap;

use actix::prelude::*;

use super::job_run::{Begin, Cancel};
use super::journal::Publish;
use super::scheduler::{ArmCrons, Fire};
use super::supervisor::Supervisor;
use super::{EngineError, EngineEvent, EventData};
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
        let state = ScheduleState {
            expression: def.schedule.clone().unwrap_or_default(),
            timezone: def.timezone.clone(),
            next_due_ms: msg.next_due_ms,
            last_fired_ms: Some(msg.scheduled_for),
        };
        let active: Vec<u64> = self.job_of.iter().filter(|(_, j)| **j == msg.job).map(|(id, _)| *id).collect();
        let decision = schedule::on_fire(&def.policy, active.len(), self.waiting_fires.contains_key(&msg.job));
        let event = |data: EventData| {
            let mut e = EngineEvent::new(data, shared.clock.now_ms());
            e.job = Some(msg.job.clone());
            e
        };
        // On a shared store this write takes the fire time (`schedule::fire_accepted`): if another
        // node took it first, the whole fire is refused and nothing of it is written (`FireLost`).
        let remember = Mutation::Schedule(msg.job.clone(), state);
        match decision {
            FireDecision::Skip | FireDecision::Queue => {
                let reason =
                    if decision == FireDecision::Queue { "queued behind the active run" } else { "a run is active" };
                let skipped =
                    event(EventData::ScheduleSkipped { scheduled_for_ms: msg.scheduled_for, reason: reason.into() });
                if decision == FireDecision::Queue {
                    self.waiting_fires.insert(msg.job.clone(), msg.scheduled_for);
                }
                let (journal, job, scheduled_for) = (shared.journal.clone(), msg.job.clone(), msg.scheduled_for);
                // Told once the fire time is recorded as this node's. Another node may have taken
                // it (a shared store): then that node handles it, and this one holds nothing.
                let recorded = shared.store.commit(vec![remember]).into_actor(self);
                ctx.spawn(recorded.map(move |result, act, _| match result {
                    Ok(()) => journal.do_send(Publish(skipped)),
                    Err(crate::store::StoreError::FireTaken { .. }) => {
                        if act.waiting_fires.get(&job) == Some(&scheduled_for) {
                            act.waiting_fires.remove(&job);
                        }
                    }
                    Err(e) => tracing::warn!("schedule of job `{job}`: cannot record a skipped fire time: {e}"),
                }));
                Ok(false)
            }
            FireDecision::CancelPreviousThenStart | FireDecision::Start => {
                if decision == FireDecision::CancelPreviousThenStart {
                    for id in &active {
                        if let Some(run) = self.job_runs_addr(*id) {
                            run.do_send(Cancel { task_run: None });
                        }
                    }
                }
                let begin = Begin::New {
                    with: if msg.held { Vec::new() } else { vec![remember] },
                    events: vec![event(EventData::ScheduleFired { scheduled_for_ms: msg.scheduled_for })],
                    begun: None,
                };
                self.submit_scheduled(&msg.job, begin)?;
                Ok(true)
            }
        }
    }
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
/// (`StoreError::FireTaken`): the run never existed; its actor has stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FireLost {
    pub job_run: u64,
}

impl Handler<FireLost> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: FireLost, _ctx: &mut Self::Context) {
        self.job_runs.remove(&msg.job_run);
        if let Some(job) = self.job_of.remove(&msg.job_run) {
            tracing::debug!("schedule of job `{job}`: another node fired it first");
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
