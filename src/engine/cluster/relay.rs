//! Commands given on a node about a job run another node owns (`model::lease::command_route`):
//! relayed to the owner by mail (`Mail::Command`), answered the same way (`Mail::Answer`), so
//! `gaffer cancel`, `retry` and a TUI keypress work on any node while only the owner decides.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use super::ClusterNode;
use crate::engine::inbox::{Action, RetryOptions};
use crate::engine::{EngineError, Target};
use crate::model::lease::{CommandRoute, command_route};
use crate::store::pg::adopt::{route_of, running_of_job, take_over_ended};
use crate::store::pg::mail::{Letter, Mail, Relayed, RelayedAction};

type Answer = Result<String, String>;

/// The commands this node relayed and still waits to hear about.
#[derive(Default)]
pub struct Relays {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
}

impl Relays {
    fn register(&self) -> (u64, oneshot::Receiver<Answer>) {
        let request = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(request, tx);
        (request, rx)
    }

    fn forget(&self, request: u64) {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&request);
    }

    /// The owner's answer to `request` came (one nobody waits for any more is dropped).
    pub fn answered(&self, request: u64, answer: Answer) {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&request);
        if let Some(tx) = waiting {
            let _ = tx.send(answer);
        }
    }
}

/// A command as a letter carries it.
pub fn relayed(action: &Action, target: Target, retry: &RetryOptions) -> Relayed {
    let action = match action {
        Action::Cancel => RelayedAction::Cancel,
        Action::Signal(name) => RelayedAction::Signal(name.clone()),
        Action::Retry => RelayedAction::Retry {
            from: retry.from.clone(),
            definition: retry.definition,
            budget_usd_micros: retry.budget_usd_micros,
        },
    };
    let task_run = match target {
        Target::TaskRun(id) => Some(id),
        Target::JobRun(_) => None,
    };
    Relayed { action, task_run }
}

/// A relayed command of job run `job_run` as the owner carries it out.
pub fn unrelayed(job_run: u64, command: Relayed) -> (Action, Target, RetryOptions) {
    let target = command.task_run.map_or(Target::JobRun(job_run), Target::TaskRun);
    match command.action {
        RelayedAction::Cancel => (Action::Cancel, target, RetryOptions::default()),
        RelayedAction::Signal(name) => (Action::Signal(name), target, RetryOptions::default()),
        RelayedAction::Retry { from, definition, budget_usd_micros } => {
            (Action::Retry, target, RetryOptions { from, definition, budget_usd_micros })
        }
    }
}

/// Where a command about `target` is carried out, and its job run (`None`: no such job run, said
/// here). A `TakeOver` is made before this answers: the store owns the job run at a new epoch.
pub async fn route(node: &ClusterNode, target: Target) -> Result<(CommandRoute, Option<u64>), EngineError> {
    let (id, by_task_run) = match target {
        Target::TaskRun(id) => (id, true),
        Target::JobRun(id) => (id, false),
    };
    let me = node.current();
    let store = node.backend.store().clone();
    let routed = node.backend.spawn(async move {
        let c = store.pool().get().await?;
        let Some((job_run, running, owner)) = route_of(&c, id, by_task_run).await? else {
            return Ok((command_route(None, me.id as u64), None));
        };
        let route = command_route(Some((running, owner)), me.id as u64);
        if route != CommandRoute::TakeOver {
            return Ok((route, Some(job_run)));
        }
        match take_over_ended(&c, &me, job_run).await? {
            Some(epoch) => {
                store.ownership.adopted(job_run, epoch);
                Ok((route, Some(job_run)))
            }
            // It runs again: whoever took it over first decides.
            None => Ok((CommandRoute::ToOwner, Some(job_run))),
        }
    });
    let routed: Result<_, crate::store::pg::PgError> =
        routed.await.map_err(|e| EngineError::Stopped(format!("cluster: {e}")))?;
    routed.map_err(|e| EngineError::Store(e.into()))
}

/// How long a node waits for the owner's answer: an owner that died is replaced within a lease
/// and its adopter reads the command.
fn answer_within(node: &ClusterNode) -> Duration {
    node.current().lease * 2 + Duration::from_secs(5)
}

/// Sends `command` to the owner of `job_run` and waits for its answer.
pub async fn relay(node: &ClusterNode, job_run: u64, command: Relayed) -> Result<String, EngineError> {
    let (request, answer) = node.relays.register();
    let mail = Mail::Command { request, from: node.id(), command };
    node.mailer.send(Letter { job_run, to_node: None, task_run: 0, attempt: 0, mail });
    let limit = answer_within(node);
    match tokio::time::timeout(limit, answer).await {
        Ok(Ok(answer)) => answer.map_err(EngineError::Refused),
        Ok(Err(_)) | Err(_) => {
            node.relays.forget(request);
            Err(EngineError::Stopped(format!(
                "job run j{job_run} is owned by another node, which did not answer within {}s; \
                 it carries the command out when it reads it",
                limit.as_secs()
            )))
        }
    }
}

/// The running job runs of `job` on every node of the cluster.
pub async fn running_runs_of(node: &ClusterNode, job: &str) -> Result<Vec<u64>, EngineError> {
    let (store, job) = (node.backend.store().clone(), job.to_string());
    let read = node.backend.spawn(async move { running_of_job(&store.pool().get().await?, &job).await });
    let read: Result<_, crate::store::pg::PgError> =
        read.await.map_err(|e| EngineError::Stopped(format!("cluster: {e}")))?;
    read.map_err(|e| EngineError::Store(e.into()))
}
