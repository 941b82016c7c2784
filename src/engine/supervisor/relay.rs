//! The Supervisor's side of commands in a cluster (`engine::cluster::relay`): a command about a
//! job run no actor of this node runs is routed by `model::lease::command_route` — carried out
//! here, taken over (an ended job run), or relayed to the owner by mail and its answer awaited;
//! and a command relayed to this node as an owner is carried out and answered.

use std::sync::Arc;

use actix::prelude::*;

use super::{Command, Supervisor};
use crate::engine::cluster::ClusterNode;
use crate::engine::cluster::relay::{self, relayed, unrelayed};
use crate::engine::inbox::Action;
use crate::engine::{EngineError, Target};
use crate::model::lease::CommandRoute;
use crate::store::pg::mail::{self, Letter, Mail, Received};

/// A command to carry out on this node whatever the cluster says (its route was decided).
#[derive(Message)]
#[rtype(result = "Result<String, EngineError>")]
pub(super) struct CommandHere(pub Command);

impl Handler<CommandHere> for Supervisor {
    type Result = ResponseFuture<Result<String, EngineError>>;

    fn handle(&mut self, CommandHere(msg): CommandHere, ctx: &mut Self::Context) -> Self::Result {
        self.command_here(msg, ctx)
    }
}

impl Supervisor {
    /// An actor of this node runs the job run `target` names (a task run's is not known
    /// without a read: the route says).
    pub(super) fn runs_here(&self, target: Target) -> bool {
        matches!(target, Target::JobRun(id) if self.job_runs.contains_key(&id))
    }

    /// Routes `msg` by its job run's owner (`relay::route`), then carries it out where it goes.
    pub(super) fn command_in_cluster(
        &mut self,
        node: Arc<ClusterNode>,
        msg: Command,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<String, EngineError>> {
        let me = ctx.address();
        Box::pin(async move {
            match relay::route(&node, msg.target).await? {
                (CommandRoute::ToOwner, Some(job_run)) => {
                    let command = relayed(&msg.action, msg.target, &msg.retry);
                    relay::relay(&node, job_run, command).await
                }
                _ => me.send(CommandHere(msg)).await.map_err(|_| EngineError::Stopped("the engine stopped".into()))?,
            }
        })
    }

    /// A command another node relayed to this one as the owner of `letter`'s job run: carried
    /// out here, answered by mail, then the letter deleted (an owner that dies first leaves it
    /// to its adopter, which carries it out again: cancel and signal are idempotent, and a
    /// retry of what was just retried is refused).
    pub(super) fn relayed_command(&mut self, received: Received, ctx: &mut Context<Self>) {
        let Some(node) = self.cluster() else { return };
        let Received { id, letter } = received;
        let Mail::Command { request, from, command } = letter.mail else { return };
        let (action, target, retry) = unrelayed(letter.job_run, command);
        let answer = self.command_here(Command { action, target, retry }, ctx);
        let job_run = letter.job_run;
        ctx.spawn(answer.into_actor(self).map(move |result, _act, _ctx| {
            let result = result.map_err(|e| e.to_string());
            let mail = Mail::Answer { request, result };
            node.mailer.send(Letter { job_run, to_node: Some(from), task_run: 0, attempt: 0, mail });
            let pool = node.backend.store().pool().clone();
            drop(node.backend.spawn(async move {
                if let Err(e) = mail::delete(&pool, &[id]).await {
                    tracing::warn!("cluster: cannot delete a command letter it answered: {e}");
                }
            }));
        }));
    }

    /// `overlap = "cancel_previous"` in a cluster: once job run `started` of `job` is created
    /// (`created`: this node took the fire time; a node that lost it cancels nothing), every
    /// other running run of `job`, on any node, is cancelled — each through its owner, as
    /// `gaffer cancel` on this node would.
    pub(in crate::engine) fn cancel_previous_in_cluster(
        &self,
        job: &str,
        started: u64,
        created: tokio::sync::oneshot::Receiver<Result<(), EngineError>>,
    ) {
        let (Some(node), Some(shared)) = (self.cluster(), self.shared.clone()) else { return };
        let (me, job) = (shared.supervisor.clone(), job.to_string());
        actix::spawn(async move {
            if !matches!(created.await, Ok(Ok(()))) {
                return;
            }
            let running = match relay::running_runs_of(&node, &job).await {
                Ok(running) => running,
                Err(e) => return tracing::warn!("cluster: cannot find the runs of `{job}` to cancel: {e}"),
            };
            for id in running.into_iter().filter(|id| *id != started) {
                let cancel = Command { action: Action::Cancel, target: Target::JobRun(id), retry: Default::default() };
                match me.send(cancel).await {
                    Ok(Ok(_)) => tracing::info!("overlap = \"cancel_previous\": job run j{id} of `{job}` cancelled"),
                    Ok(Err(e)) => tracing::warn!("overlap = \"cancel_previous\": cannot cancel job run j{id}: {e}"),
                    Err(_) => return,
                }
            }
        });
    }
}
