//! Hooks (`on_failure`, `on_dead_letter`, `on_budget` on jobs and queues): a task of their own
//! reads the journal's events, asks `model::hooks` which hooks each one calls, and runs them
//! through `executor::run_hook`, a few at a time. Nothing waits for a hook: the engine has
//! published the event and moved on. A hook that fails or times out is a warning and a
//! `hook.failed` event, never a state change.
//!
//! Hooks come from the workflow file in use (as `run`/`serve` loaded it), by job and queue
//! name, whatever definition the job run that fired the event was started with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use actix::Addr;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::journal::{Journal, Publish};
use super::{EngineEvent, EventData, HookFailure, SharedClock};
use crate::config::{Hook, HookKey, HookLevel, Hooks, Workflow};
use crate::executor::{HookOutcome, HookSpec, run_hook};

/// Hooks running at once; more wait their turn.
const CONCURRENT_HOOKS: usize = 4;
/// Hooks running or waiting past which a new one is dropped (said with `hook.failed`): a burst
/// of thousands of dead letters must not pile up processes or memory.
const MAX_PENDING_HOOKS: usize = 256;

/// The hooks of the file in use, by job and queue name.
struct HookTable {
    jobs: HashMap<String, Hooks>,
    queues: HashMap<String, Hooks>,
    base_dir: PathBuf,
    state_dir: PathBuf,
    clock: SharedClock,
}

impl HookTable {
    fn of(workflow: &Workflow, state_dir: PathBuf, clock: SharedClock) -> Option<HookTable> {
        let jobs: HashMap<String, Hooks> =
            workflow.jobs.iter().filter(|j| !j.hooks.is_empty()).map(|j| (j.name.clone(), j.hooks.clone())).collect();
        let queues: HashMap<String, Hooks> = workflow
            .queues
            .values()
            .filter(|q| !q.hooks.is_empty())
            .map(|q| (q.name.clone(), q.hooks.clone()))
            .collect();
        let any = !jobs.is_empty() || !queues.is_empty();
        any.then(|| HookTable { jobs, queues, base_dir: workflow.base_dir.clone(), state_dir, clock })
    }

    /// The hooks `event` calls, with what each one is run with.
    fn calls(&self, event: &EngineEvent) -> Vec<HookCall> {
        let (scope, reason) = match &event.data {
            EventData::BudgetExceeded { scope, .. } => (Some(*scope), None),
            EventData::TaskFailed(failure) => (None, Some(failure.reason)),
            _ => (None, None),
        };
        let levels = crate::model::hooks::hooks_for(event.name(), scope, reason);
        levels
            .into_iter()
            .filter_map(|(level, key)| {
                let owner = match level {
                    HookLevel::Job => self.jobs.get(event.job.as_deref()?),
                    HookLevel::Queue => self.queues.get(event.queue.as_deref()?),
                }?;
                let hook = owner.get(key)?.clone();
                Some(HookCall { level, key, hook, event: event.clone() })
            })
            .collect()
    }

    fn spec(&self, call: &HookCall) -> HookSpec {
        let e = &call.event;
        let (key, level) = (call.key.as_str(), call.level.as_str());
        let subject = match (e.task_run, e.job_run) {
            (Some(task_run), _) => task_run.to_string(),
            (None, Some(job_run)) => format!("j{job_run}"),
            (None, None) => "gaffer".to_string(),
        };
        let folder = e.job_run.map_or_else(|| "hooks".to_string(), |id| format!("{id}/hooks"));
        let mut env = vec![
            ("GAFFER_HOOK".to_string(), key.to_string()),
            ("GAFFER_HOOK_LEVEL".to_string(), level.to_string()),
            ("GAFFER_EVENT".to_string(), e.name().to_string()),
        ];
        let ids = [("GAFFER_JOB_RUN_ID", e.job_run), ("GAFFER_TASK_RUN_ID", e.task_run)];
        env.extend(ids.iter().filter_map(|(k, v)| v.map(|v| (k.to_string(), v.to_string()))));
        let names = [("GAFFER_JOB", &e.job), ("GAFFER_TASK", &e.task), ("GAFFER_QUEUE", &e.queue)];
        env.extend(names.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone()))));
        let mut stdin = crate::json::text(&e.to_json()).into_bytes();
        stdin.push(b'\n');
        HookSpec {
            run: call.hook.run.clone(),
            stdin,
            cwd: self.base_dir.clone(),
            env,
            log_path: self.state_dir.join(log_path(&folder, &subject, level, key)),
            state_dir: self.state_dir.clone(),
            header: format!("{key} ({level} hook) for {} at {}", e.name(), super::rfc3339_ms(e.ts_ms)),
            timeout: call.hook.timeout,
        }
    }
}

/// Relative to the state dir; made of ids and gaffer's own words only (SPEC §5).
fn log_path(folder: &str, subject: &str, level: &str, key: &str) -> String {
    format!("logs/{folder}/{subject}.{level}.{key}.log")
}

struct HookCall {
    level: HookLevel,
    key: HookKey,
    hook: Hook,
    event: EngineEvent,
}

/// The way to the hook task: `drain` resolves once every hook of the events published so far
/// has ended, what `run`/`serve` wait for before they exit.
#[derive(Clone)]
pub(super) struct HookRunner {
    drains: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl HookRunner {
    /// Starts the hook task if the workflow declares any hook; `events` must come from the
    /// journal from its start, so no event is missed.
    pub(super) fn start(
        workflow: &Workflow,
        state_dir: PathBuf,
        clock: SharedClock,
        journal: Addr<Journal>,
        events: mpsc::UnboundedReceiver<EngineEvent>,
    ) -> Option<HookRunner> {
        let table = HookTable::of(workflow, state_dir, clock)?;
        let (drains, drain_requests) = mpsc::unbounded_channel();
        actix::spawn(serve(table, journal, events, drain_requests));
        Some(HookRunner { drains })
    }

    pub(super) async fn drain(&self) {
        let (tx, rx) = oneshot::channel();
        if self.drains.send(tx).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn serve(
    table: HookTable,
    journal: Addr<Journal>,
    mut events: mpsc::UnboundedReceiver<EngineEvent>,
    mut drains: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    let table = Arc::new(table);
    let slots = Arc::new(Semaphore::new(CONCURRENT_HOOKS));
    let mut pending: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        tokio::select! {
            // Events first: a drain asked after an event was published sees its hooks started.
            biased;
            Some(event) = events.recv() => {
                pending.retain(|h| !h.is_finished());
                for call in table.calls(&event) {
                    if pending.len() >= MAX_PENDING_HOOKS {
                        let detail = format!("{MAX_PENDING_HOOKS} hooks already running or waiting");
                        report_failure(&table, &journal, &call, Failure { reason: "overloaded", detail, code: None, log: String::new() });
                        continue;
                    }
                    pending.push(actix::spawn(invoke(table.clone(), call, slots.clone(), journal.clone())));
                }
            }
            Some(done) = drains.recv() => {
                for hook in pending.drain(..) {
                    let _ = hook.await;
                }
                let _ = done.send(());
            }
            else => break,
        }
    }
}

async fn invoke(table: Arc<HookTable>, call: HookCall, slots: Arc<Semaphore>, journal: Addr<Journal>) {
    let Ok(_slot) = slots.acquire_owned().await else { return };
    let spec = table.spec(&call);
    let log = spec.log_path.strip_prefix(&table.state_dir).unwrap_or(&spec.log_path).display().to_string();
    let outcome = run_hook(spec).await;
    let Some(reason) = outcome.reason() else { return };
    let (detail, exit_code) = match &outcome {
        HookOutcome::Failed { exit_code, signal } => {
            let how = exit_code
                .map_or_else(|| format!("killed by signal {}", signal.unwrap_or(0)), |c| format!("exit code {c}"));
            (how, *exit_code)
        }
        HookOutcome::TimedOut => {
            (format!("ran past its timeout of {}", humantime::format_duration(call.hook.timeout)), None)
        }
        HookOutcome::NotStarted(e) => (e.clone(), None),
        HookOutcome::Succeeded => return,
    };
    report_failure(&table, &journal, &call, Failure { reason, detail, code: exit_code, log });
}

/// Why a hook failed, as `hook.failed` says it.
struct Failure {
    reason: &'static str,
    detail: String,
    code: Option<i32>,
    /// Relative to the state dir; empty when it never ran.
    log: String,
}

/// A warning in gaffer's diagnostics and a `hook.failed` event; the job run is not touched.
fn report_failure(table: &HookTable, journal: &Addr<Journal>, call: &HookCall, failure: Failure) {
    let (key, level) = (call.key.as_str(), call.level.as_str());
    let Failure { reason, detail, code, log } = failure;
    tracing::warn!(hook = key, level, event = call.event.name().as_str(), log, "hook failed: {reason}: {detail}");
    let e = &call.event;
    let failure = HookFailure {
        hook: key.to_string(),
        level: level.to_string(),
        for_event: e.name(),
        reason: reason.to_string(),
        detail: crate::sanitize::sanitize(&detail),
        exit_code: code,
        log: (!log.is_empty()).then_some(log),
    };
    let mut failed = EngineEvent::new(EventData::HookFailed(failure), table.clock.now_ms());
    (failed.job, failed.job_run, failed.task, failed.task_run, failed.queue) =
        (e.job.clone(), e.job_run, e.task.clone(), e.task_run, e.queue.clone());
    journal.do_send(Publish(failed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_are_made_of_ids() {
        assert_eq!(log_path("7/hooks", "12", "queue", "on_dead_letter"), "logs/7/hooks/12.queue.on_dead_letter.log");
        assert_eq!(log_path("7/hooks", "j7", "job", "on_failure"), "logs/7/hooks/j7.job.on_failure.log");
    }
}
