//! `gaffer tui` on a state dir no instance runs on: a read-only `Control` over store readers.
//! Nothing changes the store while no instance runs, so one snapshot stays true; commands are
//! answered with [`READ_ONLY`].

use std::collections::BTreeMap;
use std::path::Path;

use tokio::sync::mpsc;

use super::{
    Control, EngineError, EngineEvent, EngineSnapshot, JobShape, NodeStatus, QueueSnapshot, Reply, RetryOptions,
    Target, WorkerSnapshot,
};
use crate::config::Workflow;
use crate::model::cost::ModelUsage;
use crate::report::{JobRunView, TaskRunView};
use crate::store::{AttemptRecord, Snapshot, StoreError, StoreLocation};

/// What every command gets while no instance runs.
pub const READ_ONLY: &str = "read-only: no instance running";

pub struct OfflineEngine {
    store: StoreLocation,
    /// Held so the event stream stays open (and silent) for as long as the view lives.
    _events: mpsc::UnboundedSender<EngineEvent>,
    events: std::cell::RefCell<Option<mpsc::UnboundedReceiver<EngineEvent>>>,
}

impl OfflineEngine {
    /// Fails when there is no store to read (nothing ever ran here).
    pub fn open(store: &StoreLocation) -> Result<OfflineEngine, StoreError> {
        store.snapshot()?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(OfflineEngine { store: store.clone(), _events: tx, events: std::cell::RefCell::new(Some(rx)) })
    }

    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Snapshot) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let store = self.store.clone();
        let answer = tokio::task::spawn_blocking(move || read(&*store.snapshot()?));
        Ok(answer.await.map_err(|e| EngineError::Stopped(e.to_string()))??)
    }
}

fn refused<'a, T: 'a>() -> Reply<'a, T> {
    Box::pin(async { Err(EngineError::Invalid(READ_ONLY.to_string())) })
}

impl Control for OfflineEngine {
    fn snapshot(&self) -> Reply<'_, EngineSnapshot> {
        Box::pin(self.read(snapshot))
    }

    fn subscribe(&self) -> Reply<'_, mpsc::UnboundedReceiver<EngineEvent>> {
        let events = self.events.borrow_mut().take();
        Box::pin(async move { events.ok_or_else(|| EngineError::Invalid("subscribed already".into())) })
    }

    fn retry(&self, _target: Target) -> Reply<'_, String> {
        refused()
    }

    fn retry_with(&self, _target: Target, _options: RetryOptions) -> Reply<'_, String> {
        refused()
    }

    fn cancel(&self, _target: Target) -> Reply<'_, String> {
        refused()
    }

    fn signal<'a>(&'a self, _target: Target, _name: &'a str) -> Reply<'a, String> {
        refused()
    }

    fn set_paused<'a>(&'a self, _queue: &'a str, _paused: bool) -> Reply<'a, bool> {
        refused()
    }

    fn task_runs_of(&self, job_run: u64) -> Reply<'_, Vec<TaskRunView>> {
        Box::pin(self.read(move |reader| Ok(reader.task_runs_of(job_run)?.iter().map(TaskRunView::from).collect())))
    }

    fn live(&self) -> Reply<'_, (Vec<WorkerSnapshot>, Vec<QueueSnapshot>)> {
        Box::pin(self.read(|reader| Ok((Vec::new(), queues(reader, latest_workflow(reader)?.as_ref())?))))
    }

    /// A cluster's nodes, read from the database like the rest (none on redb).
    fn nodes(&self) -> Reply<'_, Vec<NodeStatus>> {
        Box::pin(
            self.read(|reader| Ok(reader.nodes()?.unwrap_or_default().into_iter().map(NodeStatus::from).collect())),
        )
    }
}

/// The store as it was left: the newest run's workflow gives the jobs' shapes and the queues.
fn snapshot(reader: &dyn Snapshot) -> Result<EngineSnapshot, StoreError> {
    let workflow = latest_workflow(reader)?;
    Ok(EngineSnapshot {
        job_runs: reader.job_runs()?.iter().map(JobRunView::from).collect(),
        task_runs: reader.task_runs()?.iter().map(TaskRunView::from).collect(),
        queues: queues(reader, workflow.as_ref())?,
        workers: Vec::new(),
        jobs: workflow.as_ref().map(JobShape::of).unwrap_or_default(),
        schedule_fires: schedule_fires(reader)?,
        by_model: by_model(&reader.attempts()?),
        // No node runs while this engine reads.
        node_labels: None,
    })
}

/// Everything the attempts spent, by model, as `gaffer cost --by model` sums it: what a view
/// files spending under (task run records do not say which models they paid for).
pub(super) fn by_model(attempts: &[AttemptRecord]) -> Vec<ModelUsage> {
    let sums = crate::model::cost::sum_by_model(attempts.iter().flat_map(|a| &a.by_model));
    sums.into_iter().map(|(model, usage)| ModelUsage { model: Some(model), usage }).collect()
}

/// The declared queues (none running, nothing ready: no instance), with their pause switches
/// and the circuits the next start would find open.
fn queues(reader: &dyn Snapshot, workflow: Option<&Workflow>) -> Result<Vec<QueueSnapshot>, StoreError> {
    use super::Clock;
    let paused = reader.paused_queues()?;
    let circuits = match workflow {
        Some(w) => super::open_circuits(reader, &w.queues, super::SystemClock.now_ms())?,
        None => BTreeMap::new(),
    };
    let declared = workflow.into_iter().flat_map(|w| w.queues.values());
    Ok(declared
        .map(|q| QueueSnapshot {
            name: q.name.clone(),
            concurrency: q.concurrency,
            paused: paused.contains(&q.name),
            ready: 0,
            running: 0,
            circuit_open_until_ms: circuits.get(&q.name).copied(),
        })
        .collect())
}

/// When each scheduled job last fired (or skipped a fire time).
pub(super) fn schedule_fires(reader: &dyn Snapshot) -> Result<BTreeMap<String, u64>, StoreError> {
    Ok(reader.schedules()?.into_iter().filter_map(|(job, s)| Some((job, s.last_fired_ms?))).collect())
}

/// The workflow the newest job run was started with (the store keeps definitions, not queues
/// or jobs); `None` before any run, or if it no longer validates.
pub fn latest_workflow(reader: &dyn Snapshot) -> Result<Option<Workflow>, StoreError> {
    let Some(latest) = reader.job_runs()?.into_iter().max_by_key(|j| j.id) else { return Ok(None) };
    let Some(def) = reader.definition(latest.definition)? else { return Ok(None) };
    Ok(crate::config::parse(Path::new(&def.path), &def.source).ok())
}
