//! A JobRun actor whose job run another node owns now (issue #11 §3): a commit of it was fenced
//! out (`StoreError::Fenced`, the store's `model::lease::commit_accepted`), or this node's own
//! lease ran out (`model::lease::expired_duties`). It commits nothing more: its running attempts
//! are killed (their outcomes would be refused; the new owner records them interrupted and
//! retries them), and it stops without an end of its own — the job run goes on elsewhere.

use actix::prelude::*;

use super::super::supervisor::JobRunDropped;
use super::JobRun;
use crate::executor::KILL_GRACE;
use crate::model::FailReason;

impl JobRun {
    pub(super) fn fenced_out(&mut self, ctx: &mut Context<Self>) {
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
            let _ = begun.send(Err(format!("job run j{}: another node owns it now", self.record.id)));
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
        self.fenced_out(ctx);
    }
}
