//! The Supervisor of a cluster node (issue #11 §3 and §7, `model::lease`): every lease/3 it
//! adopts the unfinished job runs of dead or absent owners and resumes them through the resume
//! path — an attempt that ran on a dead node is recorded `interrupted` and retried by policy,
//! one running on a live node stays running (its outcome comes to the owner) — and when its own
//! lease ran out it does `model::lease::expired_duties`: its JobRun actors stop without
//! committing, killing their attempts, and the node rejoins under a new id.

use std::sync::Arc;

use actix::prelude::*;

use super::Supervisor;
use super::reads::{Reading, StoredRun, stored_run};
use crate::engine::EngineError;
use crate::engine::cluster::ClusterNode;
use crate::engine::job_run::Disown;
use crate::engine::job_run::{EndedUnmailed, Interrupted, RunnerDied};
use crate::model::TaskState;
use crate::model::lease::{DeadRunner, Fence, dead_runner, expired_duties, renew_every_ms};
use crate::store::pg::adopt::{
    RunningAttempt, adopt_orphaned_job_runs, ended_unmailed_of, orphaned_attempts_of, running_attempts,
};

/// Job runs adopted per round at most (the rest wait for the next round, lease/3 later).
const ADOPT_PER_ROUND: usize = 256;

impl Supervisor {
    pub(super) fn cluster(&self) -> Option<Arc<ClusterNode>> {
        self.shared.as_ref().and_then(|s| s.cluster.clone())
    }

    pub(in crate::engine) fn is_cluster(&self) -> bool {
        self.cluster().is_some()
    }

    /// Cluster mode's resume: the first adoption round (this node's own job runs from before a
    /// restart are a dead node's too), then one every lease/3.
    pub(super) fn resume_cluster(&mut self, ctx: &mut Context<Self>) -> Reading<Vec<(u64, String)>> {
        if !self.cluster_ticking
            && let Some(node) = self.cluster()
        {
            self.cluster_ticking = true;
            let every = std::time::Duration::from_millis(renew_every_ms(node.current().lease.as_millis() as u64));
            ctx.run_interval(every, |act, ctx| act.cluster_tick(ctx));
        }
        self.adopt_round(ctx)
    }

    fn cluster_tick(&mut self, ctx: &mut Context<Self>) {
        let Some(node) = self.cluster() else { return };
        if self.stopping {
            // A graceful stop waits for this node's job runs' attempts: one whose runner died
            // never reports, so it is recorded `interrupted` here as at any other time.
            if !self.rejoining && !node.lease_lost() {
                self.reap_dead_runners(ctx, &node);
            }
            return;
        }
        if self.rejoining {
            return;
        }
        if node.lease_lost() {
            self.lease_lost(ctx, node);
            return;
        }
        drop(self.adopt_round(ctx));
        self.reap_dead_runners(ctx, &node);
    }

    /// Attempts of the job runs this node owns whose runner died: each JobRun records its own
    /// `interrupted` (an adopter does the same for the runs it takes over), or, when the runner
    /// completed it before it died and its `Ended` letter never came, the outcome of its row.
    fn reap_dead_runners(&mut self, ctx: &mut Context<Self>, node: &ClusterNode) {
        let (pool, me) = (node.backend.store().pool().clone(), node.current());
        let found = node.backend.spawn(async move {
            let c = pool.get().await?;
            Ok::<_, crate::store::pg::PgError>((
                orphaned_attempts_of(&c, &me).await?,
                ended_unmailed_of(&c, &me).await?,
            ))
        });
        ctx.spawn(found.into_actor(self).map(|found, act, _ctx| match found {
            Ok(Ok((died, ended))) => {
                for (job_run, task_run, attempt) in died {
                    if let Some(actor) = act.job_runs.get(&job_run) {
                        actor.do_send(RunnerDied { task_run, attempt });
                    }
                }
                for (job_run, row) in ended {
                    if let Some(actor) = act.job_runs.get(&job_run) {
                        actor.do_send(EndedUnmailed(row));
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!("cluster: cannot look for attempts on dead nodes: {e}"),
            Err(e) => tracing::warn!("cluster: cannot look for attempts on dead nodes: {e}"),
        }));
    }

    /// Adopts what dead or absent owners left, then resumes each adopted job run here. The
    /// adoption is made before the snapshot the runs are read from, so the old owner's last
    /// commits are in it (its later ones are fenced out).
    fn adopt_round(&mut self, ctx: &mut Context<Self>) -> Reading<Vec<(u64, String)>> {
        let Some(node) = self.cluster() else { return Box::pin(async { Ok(Vec::new()) }) };
        let Ok(shared) = self.shared() else { return Box::pin(async { Ok(Vec::new()) }) };
        let in_use = self.definition;
        let read = move |_before: &dyn crate::store::Snapshot| {
            let runs = adopt(&node)?;
            if runs.is_empty() {
                return Ok(Vec::new());
            }
            let snapshot = shared.store.snapshot()?;
            let now = shared.clock.now_ms();
            let (mut stored, mut reset) = (Vec::new(), Vec::new());
            for (job_run, running) in runs {
                let Some(record) = snapshot.job_run(job_run)? else { continue };
                let mut run = stored_run(&*snapshot, record, in_use)?;
                reset.extend(dead_runners(&*snapshot, &mut run, &running, now)?);
                stored.push(adopted_run(run, &running));
            }
            drop(snapshot);
            if !reset.is_empty() {
                shared.store.commit_blocking(reset)?;
            }
            Ok(stored)
        };
        self.read_then(ctx, read, |act, runs, _ctx| Ok(act.resume_adopted(runs)))
    }

    /// Starts an actor for each adopted run; one this node cannot go on with (a secret param it
    /// was not given) is left, said in the log.
    fn resume_adopted(&mut self, runs: Vec<StoredRun>) -> Vec<(u64, String)> {
        let mut resumed = Vec::new();
        for run in runs {
            let id = run.record.id;
            match self.resume_all(vec![run], &[]) {
                Ok(started) => resumed.extend(started),
                Err(e) => tracing::error!("cluster: adopted job run j{id} cannot go on here: {e}"),
            }
        }
        if !resumed.is_empty() {
            tracing::info!("cluster: adopted and resumed {} job run(s)", resumed.len());
        }
        self.hand_over_early_mail();
        resumed
    }

    /// Letters read before their job run's actor started go to it now, in the order read.
    fn hand_over_early_mail(&mut self) {
        let letters = std::mem::take(&mut self.early_mail);
        for letter in letters {
            match self.job_runs.get(&letter.letter.job_run) {
                Some(actor) => actor.do_send(crate::engine::job_run::Mailed(letter)),
                None => self.early_mail.push_back(letter),
            }
        }
    }

    /// `model::lease::expired_duties`: nothing new starts here, every JobRun actor stops without
    /// committing (killing its attempts through their workers and the Executor), and the node
    /// joins again under a new id; then it adopts like any other node.
    fn lease_lost(&mut self, ctx: &mut Context<Self>, node: Arc<ClusterNode>) {
        let owned: Vec<u64> = self.job_runs.keys().copied().collect();
        let duties = expired_duties(&[], &owned);
        tracing::error!(
            "cluster: node {} lost its lease; dropping {} job run(s) and joining again",
            node.current().name,
            duties.drop_job_runs.len()
        );
        // Every attempt of this node, whoever owns its job run: their outcomes would be refused.
        if let Ok(shared) = self.shared() {
            shared.kill_all_attempts();
        }
        // Before the rejoin: a creation of one of them still queued in the writer must not be
        // written under the new id with no actor here to decide for it (`fence.rs`).
        node.backend.store().ownership.disown(&duties.drop_job_runs);
        for id in &duties.drop_job_runs {
            if let Some(actor) = self.job_runs.remove(id) {
                actor.do_send(Disown);
            }
            self.job_of.remove(id);
        }
        if !duties.rejoin {
            return;
        }
        self.rejoining = true;
        let rejoin = tokio::task::spawn_blocking(move || node.rejoin());
        ctx.wait(rejoin.into_actor(self).map(|joined, act, ctx| {
            act.rejoining = false;
            match joined {
                Ok(Ok(node)) => {
                    tracing::info!("cluster: joined again as node id {}", node.id);
                    drop(act.adopt_round(ctx));
                }
                Ok(Err(e)) => tracing::error!("cluster: cannot join again ({e}); trying at the next tick"),
                Err(e) => tracing::error!("cluster: cannot join again ({e}); trying at the next tick"),
            }
        }));
    }
}

/// Adopts for `node` (the store then owns each at its new epoch) and says, per adopted job run,
/// its task runs' running attempts and where they run. Blocks.
fn adopt(node: &ClusterNode) -> Result<Vec<(u64, Vec<RunningAttempt>)>, EngineError> {
    let me = node.current();
    let backend = node.backend.clone();
    let pool = backend.store().pool().clone();
    let adopted = backend.run(async move {
        let c = pool.get().await?;
        let mut found = Vec::new();
        for adopted in adopt_orphaned_job_runs(&c, &me, ADOPT_PER_ROUND).await? {
            let running = running_attempts(&c, adopted.job_run).await?;
            found.push((adopted, running));
        }
        Ok(found)
    })?;
    let ownership = &backend.store().ownership;
    Ok(adopted
        .into_iter()
        .map(|(a, running)| {
            ownership.adopted(a.job_run, a.epoch);
            (a.job_run, running)
        })
        .collect())
}

/// `model::lease::dead_runner` over the adopted run's rows on dead nodes. A row a dead node
/// claimed before the owner heard it start (`running` on that node, the owner's record `queued`
/// one attempt before) joins the run's interrupted attempts as that attempt (the resumed JobRun
/// claims it, then records it `interrupted`, and the policy retries it as the next one), so an
/// attempt number is never given twice. A row no claim explains is written back as the owner's
/// record says (returned), so it does not stay `running` with nobody running it.
fn dead_runners(
    snapshot: &dyn crate::store::Snapshot,
    run: &mut StoredRun,
    running: &[RunningAttempt],
    now_ms: u64,
) -> Result<Vec<crate::store::Mutation>, EngineError> {
    let mut write_back = Vec::new();
    for r in running.iter().filter(|r| r.orphaned) {
        let Some(t) = run.tasks.iter().find(|t| t.id == r.task_run) else { continue };
        let fence = Fence { state: TaskState::Running, node: r.node, attempt: r.attempt };
        match dead_runner(fence, false, t.state, t.attempt) {
            DeadRunner::Unheard(n) => {
                let earlier = snapshot.attempts_of(t.id)?;
                run.interrupted.push(Interrupted::unheard(t, n, &earlier, now_ms));
            }
            DeadRunner::WriteBack => write_back.push(crate::store::Mutation::TaskRun(t.clone())),
            // Heard of: `stored_run` found it among the interrupted attempts already.
            DeadRunner::Interrupted(_) | DeadRunner::Nothing => {}
        }
    }
    Ok(write_back)
}

/// The adopted run as the resume path takes it: only attempts that ran on a dead node are
/// interrupted (and their processes are not on this machine); one that runs on a live node
/// stays running, or ended there and its `Ended` letter is still to be read: the new owner
/// awaits it as the old one did.
fn adopted_run(mut run: StoredRun, running: &[RunningAttempt]) -> StoredRun {
    for i in run.interrupted.iter_mut().filter(|i| !i.unheard) {
        i.elsewhere = true;
        let found = running.iter().find(|r| r.task_run == i.attempt.task_run);
        if let Some(r) = found.filter(|r| !r.orphaned) {
            i.goes_on = Some(r.node.map(|n| n as i64));
        }
    }
    run
}

#[cfg(test)]
mod tests;
