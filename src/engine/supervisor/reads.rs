//! The Supervisor's reads of the store. Each is made on tokio's blocking pool — a snapshot may
//! block (a file, a server) and the engine's actors share one thread — and its result handed
//! back to the actor before it handles another message, so a read and what the actor does
//! with it are one step, as a read in place was.

use std::future::Future;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::super::job_run::Interrupted;
use super::super::{EngineError, Target};
use super::{Supervisor, lost_attempt, stored_workflow};
use crate::config::Workflow;
use crate::model::TaskState;
use crate::store::{JobRunRecord, RaisedBudgets, Snapshot, TaskRunRecord};

/// What the actor did with a read, once it has.
pub(in crate::engine) type Reading<R> = std::pin::Pin<Box<dyn Future<Output = Result<R, EngineError>>>>;

/// What the Supervisor needs of a job run to check it or give it an actor: everything
/// `revive` rebuilds it from.
pub(super) struct StoredRun {
    pub record: JobRunRecord,
    /// The definition it started with, parsed: `None` when it is the one in use.
    pub stored_workflow: Option<Result<Arc<Workflow>, EngineError>>,
    pub tasks: Vec<TaskRunRecord>,
    pub raised: RaisedBudgets,
    /// The attempts of its task runs found running: a crash interrupted them.
    pub interrupted: Vec<Interrupted>,
}

/// What the store holds of job run `record`. `in_use` is the definition key of the workflow
/// this instance runs (a run of it needs no parse).
pub(super) fn stored_run(reader: &dyn Snapshot, record: JobRunRecord, in_use: u64) -> Result<StoredRun, EngineError> {
    let stored_workflow = (record.definition != in_use).then(|| stored_workflow(reader, &record).map(Arc::new));
    let tasks = reader.task_runs_of(record.id)?;
    let raised = reader.raised_budgets(record.id)?;
    let mut interrupted = Vec::new();
    // A fanned-out task's own run is `running` while its items run, without an attempt of
    // its own: nothing of it was interrupted (its items were, if they ran).
    for t in tasks.iter().filter(|t| t.state == TaskState::Running && t.attempt > 0) {
        let attempts = reader.attempts_of(t.id)?;
        let attempt = attempts.iter().find(|a| a.n == t.attempt).cloned().unwrap_or_else(|| lost_attempt(t));
        interrupted.push(Interrupted::of(attempt, t, &attempts));
    }
    Ok(StoredRun { record, stored_workflow, tasks, raised, interrupted })
}

/// Which job run a target belongs to, and the task run inside it, if any.
pub(super) fn locate(reader: &dyn Snapshot, target: Target) -> Result<(u64, Option<u64>), EngineError> {
    match target {
        Target::JobRun(id) => Ok((id, None)),
        Target::TaskRun(id) => {
            let t = reader.task_run(id)?.ok_or(EngineError::UnknownId(target))?;
            Ok((t.job_run, Some(id)))
        }
    }
}

/// The job run a target belongs to, the task run inside it, and that job run as stored (none
/// yet: a run whose first commit is not durable has only its actor).
pub(super) fn read_target(
    reader: &dyn Snapshot,
    target: Target,
    in_use: u64,
) -> Result<(u64, Option<u64>, Option<StoredRun>), EngineError> {
    let (job_run, task_run) = locate(reader, target)?;
    let stored = reader.job_run(job_run)?.map(|record| stored_run(reader, record, in_use)).transpose()?;
    Ok((job_run, task_run, stored))
}

impl Supervisor {
    /// Runs `read` on a snapshot on tokio's blocking pool, then `then` on the actor with what it
    /// read; the Supervisor handles no other message in between (`ctx.wait`). The returned
    /// future resolves with `then`'s answer.
    pub(in crate::engine) fn read_then<T, R>(
        &self,
        ctx: &mut Context<Self>,
        read: impl FnOnce(&dyn Snapshot) -> Result<T, EngineError> + Send + 'static,
        then: impl FnOnce(&mut Self, T, &mut Context<Self>) -> Result<R, EngineError> + 'static,
    ) -> Reading<R>
    where
        T: Send + 'static,
        R: 'static,
    {
        let (tx, rx) = oneshot::channel();
        let store = self.shared().map(|s| s.store.clone());
        let reading = async move {
            let store = store?;
            let read = tokio::task::spawn_blocking(move || read(&*store.snapshot()?));
            read.await.map_err(|e| EngineError::Stopped(format!("a store read failed: {e}")))?
        };
        ctx.wait(reading.into_actor(self).map(move |read, act, ctx| {
            let _ = tx.send(read.and_then(|data| then(act, data, ctx)));
        }));
        Box::pin(async move { rx.await.map_err(|_| EngineError::Stopped("the engine stopped".into()))? })
    }
}
