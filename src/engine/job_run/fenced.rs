//! A JobRun actor whose job run another node owns now (issue #11 §3): a commit of it was fenced
//! out (`StoreError::Fenced`, the store's `model::lease::commit_accepted`), or this node's own
//! lease ran out (`model::lease::expired_duties`). It commits nothing more: its running attempts
//! are killed (their outcomes would be refused; the new owner records them interrupted and
//! retries them), and it stops without an end of its own — the job run goes on elsewhere.

use actix::prelude::*;

use super::super::supervisor::JobRunDropped;
use super::JobRun;
use crate::engine::EngineError;
use crate::executor::KILL_GRACE;
use crate::model::FailReason;

/// Why a JobRun actor stops without committing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dropped {
    /// A commit of it was fenced out: another node's epoch is on its row.
    Fenced,
    /// This node's lease ran out (`Disown`): it may own nothing until it joins again.
    LeaseLost,
}

impl JobRun {
    pub(super) fn fenced_out(&mut self, ctx: &mut Context<Self>, why: Dropped) {
        if self.fenced {
            return;
        }
        self.fenced = true;
        tracing::warn!("job run j{}: another node owns it now; stopping here without committing", self.record.id);
        // This node's own attempts only: one running on another node goes on, and its outcome
        // reaches the new owner (mail is read by whoever owns the job run).
        for (&task_run, (_, runner)) in &self.running {
            if let Some(super::Runner::Local(worker)) = runner {
                worker.do_send(super::Kill { task_run, reason: FailReason::Interrupted, grace: KILL_GRACE });
            }
        }
        if let Some(begun) = self.begun.take() {
            let id = self.record.id;
            let error = match why {
                Dropped::Fenced => EngineError::Fatal(format!("job run j{id}: another node owns it now")),
                // The store refuses its creation from now on (`Ownership::disown`) unless it was
                // already written, and then its owner's death has it adopted like any other run.
                Dropped::LeaseLost => EngineError::Stopped(format!(
                    "job run j{id}: this node lost its lease on the store before the run was confirmed stored; \
                     `gaffer show j{id}` says whether it was (a stored run goes on, on another node or here once \
                     this node joins again); if it was not, submit it again"
                )),
            };
            let _ = begun.send(Err(error));
        }
        self.finished = true;
        self.shared.supervisor.do_send(JobRunDropped { id: self.record.id, actor: ctx.address() });
        ctx.stop();
    }
}

/// This node no longer owns the job run (its lease ran out): stop as if fenced out.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disown;

impl Handler<Disown> for JobRun {
    type Result = ();

    fn handle(&mut self, _: Disown, ctx: &mut Self::Context) {
        self.fenced_out(ctx, Dropped::LeaseLost);
    }
}
