//! `compensate` on the core (SPEC §2.2): when the job run would end `failed`, its succeeded task
//! runs whose task has `compensate` are undone one at a time, latest completion first, each by a
//! task run of kind `compensation` (`compensates` = the undone run) queued in the task's queue
//! with the task's retry policy. The job run ends (still `failed`) once the saga is done. The
//! order and the bookkeeping are `model::saga`'s; the saga is built from the task runs when first
//! needed, so a resume rebuilds it from the stored compensations.

use crate::model::TaskState;
use crate::model::saga::{self, CompensationState, EndedRun, Saga, SagaStep};

use super::input::{Env, Write};
use super::state::{Kind, RunState, TaskRun};
use super::step::Step;

/// The saga of `state`'s task runs as they are: the order from the undoable runs, and the
/// compensations that already exist recorded in it.
pub fn saga_of(state: &RunState) -> Saga {
    let runs: Vec<EndedRun> = (0..state.tasks.len())
        .filter(|i| !state.fanouts.contains_key(i))
        .map(|i| {
            let t = &state.tasks[i];
            EndedRun {
                task_run: t.id,
                state: t.state,
                is_compensation: t.kind == Kind::Compensation,
                has_compensate: state.def(i).compensate.is_some(),
                reused: t.detail.as_deref().is_some_and(|d| d.starts_with("cached: ")),
                ended_at_ms: t.ended_at_ms.unwrap_or(0),
                completion_seq: 0,
            }
        })
        .collect();
    let mut saga = Saga::new(saga::compensation_order(&runs));
    for t in state.tasks.iter().filter(|t| t.kind == Kind::Compensation) {
        if let Some(undone) = t.compensates {
            let _ = saga.record(undone, t.state.into());
        }
    }
    saga
}

impl<E: Env> Step<'_, E> {
    /// The job run would end `failed`: true while its saga still has work (a compensation was
    /// just queued, or one is in flight).
    pub(super) fn saga_goes_on(&mut self) -> bool {
        if self.s.job_run.cancel_requested || !self.s.job().tasks.iter().any(|t| t.compensate.is_some()) {
            return false;
        }
        if self.s.saga.is_none() {
            self.s.saga = Some(saga_of(self.s));
        }
        let step = self.s.saga.as_ref().map_or(SagaStep::Done, Saga::next_step);
        match step {
            SagaStep::Done => false,
            SagaStep::Wait => true,
            SagaStep::Compensate(undone) => {
                self.compensate(undone);
                true
            }
        }
    }

    /// A compensation of task run `undone`, queued now.
    fn compensate(&mut self, undone: u64) {
        let Some(u) = self.s.idx(undone) else { return };
        let mut run = TaskRun::extra_of(&self.s.tasks[u], self.s.def(u), self.env.next_task_run_id(), self.now);
        run.kind = Kind::Compensation;
        run.compensates = Some(undone);
        run.state = TaskState::Queued;
        let r = self.s.push_run(run);
        if let Some(saga) = self.s.saga.as_mut() {
            let _ = saga.record(undone, CompensationState::InFlight);
        }
        self.fx.writes.push(Write::TaskRun(r));
        self.queue_extra(r);
    }

    /// Compensation `r` ended for good: the saga moves on when the step settles.
    pub(super) fn compensation_ended(&mut self, r: usize) {
        let t = &self.s.tasks[r];
        let (undone, state) = (t.compensates, t.state);
        if let (Some(saga), Some(undone)) = (self.s.saga.as_mut(), undone) {
            let _ = saga.record(undone, state.into());
        }
        self.settle = true;
    }
}
