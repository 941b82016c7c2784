//! The read side of the CLI and the control API: records as the JSON shapes of SPEC §4.1, and
//! the queries behind `status`, `jobs`, `tasks`, `show`, `logs`, `cost` and `dlq list`. One
//! definition for both, so a command prints the same whether it asked the running instance or
//! read the state dir itself.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::config::QueueDef;
use crate::engine::{QueueSnapshot, Target, rfc3339_ms};
use crate::model::cost::{Usage, sum_by_model};
use crate::model::money::usd_json;
use crate::model::{JobState, TaskState};
use crate::sanitize::sanitize;
use crate::store::{AttemptRecord, JobRunRecord, Snapshot, StoreError, StoreLocation, TaskRunRecord};

mod wire;
pub use wire::{JobRunView, TaskRunView, label_in};

/// Where attempt `n` of a task run logs, relative to the state dir (SPEC §5).
pub fn attempt_log_path(job_run: u64, task_run: u64, n: u32) -> String {
    AttemptRecord::log_path(job_run, task_run, n)
}

/// Why a query has no answer: the API turns these into 404 / 400 / 409 / 500.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// Asked too early (a log before any attempt): 409.
    #[error("{0}")]
    NotYet(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn time_json(ms: Option<u64>) -> Value {
    ms.map_or(Value::Null, |ms| json!(rfc3339_ms(ms)))
}

/// SPEC §4.1 `tasks --json` item (the wire's `TaskRunView`).
pub fn task_json(t: &TaskRunRecord) -> Value {
    wire::to_value(&TaskRunView::from(t))
}

/// SPEC §4.1 `jobs --json` item (the wire's `JobRunView`).
pub fn job_json(j: &JobRunRecord) -> Value {
    wire::to_value(&JobRunView::from(j))
}

pub fn attempt_json(a: &AttemptRecord) -> Value {
    let models: Vec<Value> = a.by_model.iter().map(|m| usage_json(json!({"model": m.model}), &m.usage)).collect();
    let head = json!({
        "n": a.n, "started_at": time_json(Some(a.started_at_ms)), "ended_at": time_json(a.ended_at_ms),
        "exit_code": a.exit_code, "signal": a.signal, "reason": a.reason.map(|r| r.as_str()), "detail": a.detail,
    });
    let mut value = usage_json(head, &a.usage());
    for (key, v) in [
        ("model", json!(a.model)),
        ("models", json!(models)),
        ("warnings", json!(a.warnings)),
        ("pid", json!(a.pid)),
        ("log", json!(a.log)),
    ] {
        value[key] = v;
    }
    value
}

/// `value` with the figures of `usage`: `cost_usd` and the token counts by kind.
fn usage_json(mut value: Value, usage: &Usage) -> Value {
    for (key, v) in [
        ("cost_usd", usd_json(usage.usd_micros)),
        ("input_tokens", json!(usage.input_tokens)),
        ("output_tokens", json!(usage.output_tokens)),
        ("cache_read_tokens", json!(usage.cache_read_tokens)),
        ("cache_write_tokens", json!(usage.cache_write_tokens)),
    ] {
        value[key] = v;
    }
    value
}

/// SPEC §4.1 `status --json`, the same whether asked of the state dir or of the instance.
/// `pid`: the running instance's (the instance knows its own, even if someone deleted
/// `instance.lock`); `live`: its queues, so a queue with no task runs yet is listed too;
/// `labels`: the running node's (`--label`), which say what no node can run (`model::routing`).
pub fn status_value(
    store: &StoreLocation,
    pid: Option<u32>,
    live: Option<&[QueueSnapshot]>,
    labels: Option<&[String]>,
) -> Result<Value, StoreError> {
    let reader = store.snapshot()?;
    let defs = latest_queues(&*reader)?;
    let mut concurrency: BTreeMap<String, usize> = defs.iter().map(|(k, q)| (k.clone(), q.concurrency)).collect();
    let mut paused = reader.paused_queues()?;
    let mut circuits = match live {
        Some(_) => BTreeMap::new(),
        None => {
            use crate::engine::Clock;
            crate::engine::open_circuits(&*reader, &defs, crate::engine::SystemClock.now_ms())?
        }
    };
    for q in live.unwrap_or_default() {
        concurrency.insert(q.name.clone(), q.concurrency);
        if q.paused {
            paused.insert(q.name.clone());
        }
        circuits.extend(q.circuit_open_until_ms.map(|until| (q.name.clone(), until)));
    }
    let mut totals: BTreeMap<&str, u64> = TaskState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let mut queues: BTreeMap<String, [u64; 4]> = concurrency.keys().map(|q| (q.clone(), [0; 4])).collect();
    let mut cost = 0u64;
    let mut exhausted = ResourceWait::default();
    let cluster = reader.nodes()?;
    let routing = routing_labels(cluster.as_deref(), labels);
    let mut unroutable = Unroutable::new(&routing);
    reader.each_task_run(&mut |t| {
        if !t.is_counted() {
            return true; // a fan-out's group: its items are the task runs (and hold its cost)
        }
        exhausted.count(&t);
        unroutable.count(&t);
        *totals.entry(t.state.as_str()).or_default() += 1;
        cost = cost.saturating_add(t.cost_usd_micros);
        let counts = queues.entry(t.queue).or_default();
        match t.state {
            TaskState::Queued => counts[0] += 1,
            TaskState::Running => counts[1] += 1,
            TaskState::Retrying => counts[2] += 1,
            TaskState::Dead => counts[3] += 1,
            _ => {}
        }
        true
    })?;
    let queues: Vec<Value> = queues
        .iter()
        .map(|(name, c)| {
            json!({"name": name, "concurrency": concurrency.get(name), "paused": paused.contains(name),
                   "queued": c[0], "running": c[1], "retrying": c[2], "dead": c[3],
                   "unroutable": unroutable.per_queue.get(name).copied().unwrap_or(0),
                   "circuit_open_until": time_json(circuits.get(name).copied())})
        })
        .collect();
    let mut status = json!({"instance": {"running": pid.is_some(), "pid": pid}, "queues": queues, "totals": totals,
              "cost_usd": usd_json(cost), "waiting_for_resources": exhausted.to_json(),
              "node": labels.map(|l| json!({"labels": l})), "unroutable": unroutable.listed});
    if let Some(nodes) = &cluster {
        status["nodes"] = nodes_json(nodes);
    }
    Ok(status)
}

/// Whose labels decide what no node can run: a cluster's live nodes (a store shared by nodes),
/// else the running instance's (none while no instance runs).
fn routing_labels(cluster: Option<&[crate::store::NodeView]>, instance: Option<&[String]>) -> Vec<Vec<String>> {
    match cluster {
        Some(nodes) => nodes.iter().filter(|n| n.live).map(|n| n.labels.clone()).collect(),
        None => instance.map(|labels| vec![labels.to_vec()]).unwrap_or_default(),
    }
}

/// The cluster's nodes (a store shared by several nodes only): name, labels, heartbeat age and
/// whether the lease is live, at the store's clock.
pub fn nodes_json(nodes: &[crate::store::NodeView]) -> Value {
    let rows = nodes
        .iter()
        .map(|n| json!({"name": n.name, "labels": n.labels, "heartbeat_age_ms": n.heartbeat_age_ms, "live": n.live}));
    Value::Array(rows.collect())
}

/// Queued task runs no live node can run (`model::routing::unroutable`): counted per queue,
/// the first [`Unroutable::LISTED`] of them listed with the reason. Nothing is unroutable while
/// no node runs (then nothing starts at all).
struct Unroutable<'a> {
    nodes: Vec<&'a [String]>,
    per_queue: BTreeMap<String, u64>,
    listed: Vec<Value>,
}

impl<'a> Unroutable<'a> {
    const LISTED: usize = 20;

    /// `nodes`: each live node's labels.
    fn new(nodes: &'a [Vec<String>]) -> Self {
        Unroutable { nodes: nodes.iter().map(Vec::as_slice).collect(), per_queue: BTreeMap::new(), listed: Vec::new() }
    }

    fn count(&mut self, t: &crate::store::TaskRunRecord) {
        if t.state != TaskState::Queued || !crate::model::routing::unroutable(&t.requires, &self.nodes) {
            return;
        }
        *self.per_queue.entry(t.queue.clone()).or_default() += 1;
        if self.listed.len() < Self::LISTED {
            let labels = self.nodes.first().copied().unwrap_or_default();
            self.listed.push(json!({"task_run": t.id, "job_run": t.job_run, "job": t.job, "task": t.task,
                "requires": t.requires, "reason": crate::model::routing::blocked_reason(&t.requires, labels)}));
        }
    }
}

/// Task runs whose start found the machine out of descriptors, processes or memory, and wait
/// to try again (`retrying` with reason `resource_exhausted`), with the newest reason given.
#[derive(Default)]
struct ResourceWait {
    task_runs: u64,
    detail: Option<(u64, String)>,
}

impl ResourceWait {
    fn count(&mut self, t: &crate::store::TaskRunRecord) {
        if t.state != TaskState::Retrying || t.reason != Some(crate::model::FailReason::ResourceExhausted) {
            return;
        }
        self.task_runs += 1;
        if self.detail.as_ref().is_none_or(|(id, _)| t.id > *id) {
            self.detail = Some((t.id, t.detail.clone().unwrap_or_default()));
        }
    }

    fn to_json(&self) -> Value {
        json!({"task_runs": self.task_runs, "detail": self.detail.as_ref().map(|(_, d)| d)})
    }
}

/// Queues from the definition of the newest job run (the store keeps definitions, not queues).
fn latest_queues(reader: &dyn Snapshot) -> Result<BTreeMap<String, QueueDef>, StoreError> {
    Ok(crate::engine::latest_workflow(reader)?.map(|w| w.queues).unwrap_or_default())
}

/// [`task_json`], and for a queued task run the node with `labels` cannot start (no other node
/// runs yet), why: `blocked`.
fn task_json_on(t: &TaskRunRecord, labels: Option<&[String]>) -> Value {
    let mut value = task_json(t);
    let nodes: Vec<&[String]> = labels.into_iter().collect();
    if t.state == TaskState::Queued && crate::model::routing::unroutable(&t.requires, &nodes) {
        value["blocked"] = crate::model::routing::blocked_reason(&t.requires, nodes[0]).into();
    }
    value
}

/// `show 42 --json`: the task run with its attempts; `show j7 --json`: the job run with its
/// task runs. `labels`: the running node's; a queued task run it cannot start says why
/// (`blocked`).
pub fn show(reader: &dyn Snapshot, target: Target, labels: Option<&[String]>) -> Result<Value, QueryError> {
    let with_blocked = |t: &TaskRunRecord| task_json_on(t, labels);
    match target {
        Target::TaskRun(id) => {
            let t = reader.task_run(id)?.ok_or_else(|| not_found(target))?;
            let mut value = with_blocked(&t);
            value["attempts"] = Value::Array(reader.attempts_of(id)?.iter().map(attempt_json).collect());
            let raised = reader.raised_budgets(t.job_run)?.task_runs.get(&id).copied();
            value["budget_raised_usd"] = raised.map_or(Value::Null, usd_json);
            Ok(value)
        }
        Target::JobRun(id) => {
            let j = reader.job_run(id)?.ok_or_else(|| not_found(target))?;
            let mut value = job_json(&j);
            let runs = reader.task_runs_of(id)?;
            value["not_reached"] = json!(not_reached(reader, &j, &runs)?);
            value["tasks"] = Value::Array(runs.iter().map(with_blocked).collect());
            value["budget_raised_usd"] = reader.raised_budgets(id)?.job_run.map_or(Value::Null, usd_json);
            Ok(value)
        }
    }
}

/// The tasks of job run `j`'s job with no task run in it: nothing reached them (SPEC §2.2), in
/// file order. None for an `--only` run (its job is what it has task runs for), nor when its
/// stored definition cannot be read back.
fn not_reached(reader: &dyn Snapshot, j: &JobRunRecord, runs: &[TaskRunRecord]) -> Result<Vec<String>, StoreError> {
    let Some(stored) = reader.definition(j.definition)?.filter(|_| !j.sliced) else { return Ok(Vec::new()) };
    let Ok(workflow) = crate::config::parse(Path::new(&stored.path), &stored.source) else { return Ok(Vec::new()) };
    let Some(job) = workflow.jobs.iter().find(|job| job.name == j.job) else { return Ok(Vec::new()) };
    let have: std::collections::HashSet<&str> = runs.iter().map(|t| t.task.as_str()).collect();
    Ok(job.tasks.iter().filter(|t| !have.contains(t.name.as_str())).map(|t| t.name.clone()).collect())
}

fn not_found(target: Target) -> QueryError {
    QueryError::NotFound(format!("no {target} in the store"))
}

/// Which job runs `jobs` lists.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct JobFilter {
    pub state: Option<String>,
    /// The job's name in the workflow file.
    pub job: Option<String>,
    /// Only the newest this many, newest first.
    pub limit: Option<usize>,
}

/// `jobs --json`: oldest first; with a `limit`, the newest that many, newest first.
pub fn jobs(reader: &dyn Snapshot, filter: &JobFilter) -> Result<Value, QueryError> {
    collected(|emit| for_each_job(reader, filter, emit))
}

/// The items a `for_each_*` query emits, as one array (the API streams them instead).
fn collected(query: impl FnOnce(&mut dyn FnMut(Value) -> bool) -> Result<(), QueryError>) -> Result<Value, QueryError> {
    let mut out = Vec::new();
    query(&mut |item| {
        out.push(item);
        true
    })?;
    Ok(Value::Array(out))
}

/// The items of `jobs --json` one at a time, for an answer streamed as it is read; `f` returns
/// false to stop.
pub fn for_each_job(
    reader: &dyn Snapshot,
    filter: &JobFilter,
    mut f: impl FnMut(Value) -> bool,
) -> Result<(), QueryError> {
    let wanted =
        wanted_state(filter.state.as_deref(), "job run", JobState::parse, &JobState::ALL.map(JobState::as_str))?;
    let mut left = filter.limit.unwrap_or(usize::MAX);
    let mut visit = |j: JobRunRecord| {
        let selected = wanted.is_none_or(|w| j.state == w) && filter.job.as_ref().is_none_or(|name| &j.job == name);
        if !selected {
            return true;
        }
        left -= 1;
        f(job_json(&j)) && left > 0
    };
    match filter.limit {
        Some(0) => Ok(()),
        Some(_) => Ok(reader.each_job_run_newest_first(&mut visit)?),
        None => Ok(reader.each_job_run(&mut visit)?),
    }
}

/// Which task runs `tasks` lists (also the query string of `GET /v1/tasks`).
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskFilter {
    /// Only the task runs in this state (`dead`: the dead letters).
    #[param(value_type = Option<crate::api::TaskStateName>, nullable = false)]
    pub state: Option<String>,
    /// Only the task runs of this job.
    #[param(nullable = false)]
    pub job: Option<String>,
    /// Only the task runs of this queue.
    #[param(nullable = false)]
    pub queue: Option<String>,
    /// Only the task runs of this job run (`j7` or `7`).
    #[param(nullable = false)]
    pub run: Option<String>,
    /// Only the task runs of this task (its name in the workflow file): with `run`, its
    /// instances in that job run (iterations, items, compensations) in order.
    #[param(nullable = false)]
    pub task: Option<String>,
    /// The running node's labels (set by the instance answering, never by a client): a queued
    /// task run it cannot start says why (`blocked`).
    #[serde(skip)]
    #[param(ignore)]
    pub node_labels: Option<Vec<String>>,
}

/// A job run id as people type it: `j7`, or `7` where only a job run can be meant (`--run`).
pub fn parse_job_run_id(text: &str) -> Option<u64> {
    match Target::parse(text).ok()? {
        Target::JobRun(id) | Target::TaskRun(id) => Some(id).filter(|&id| id > 0),
    }
}

/// `tasks --json` (and `dlq list --json`: state `dead`).
pub fn tasks(reader: &dyn Snapshot, filter: &TaskFilter) -> Result<Value, QueryError> {
    collected(|emit| for_each_task(reader, filter, emit))
}

/// The items of `tasks --json` one at a time; `f` returns false to stop.
pub fn for_each_task(
    reader: &dyn Snapshot,
    filter: &TaskFilter,
    mut f: impl FnMut(Value) -> bool,
) -> Result<(), QueryError> {
    let states = TaskState::ALL.map(TaskState::as_str);
    let wanted = wanted_state(filter.state.as_deref(), "task run", TaskState::parse, &states)?;
    let labels = filter.node_labels.as_deref();
    let selected = |t: &TaskRunRecord| {
        wanted.is_none_or(|w| t.state == w)
            && filter.job.as_ref().is_none_or(|j| &t.job == j)
            && filter.queue.as_ref().is_none_or(|q| &t.queue == q)
            && filter.task.as_ref().is_none_or(|name| &t.task == name)
    };
    let Some(run) = filter.run.as_deref() else {
        return Ok(reader.each_task_run(&mut |t| !selected(&t) || f(task_json_on(&t, labels)))?);
    };
    let run =
        parse_job_run_id(run).ok_or_else(|| QueryError::Invalid(format!("`{run}` is not a job run id (like j7)")))?;
    // One job run's (or one task's) runs are read through their indexes, not by a scan.
    let runs = match filter.task.as_deref() {
        Some(task) => reader.instances_of(run, task)?,
        None => reader.task_runs_of(run)?,
    };
    for t in runs.iter().filter(|t| selected(t)) {
        if !f(task_json_on(t, labels)) {
            break;
        }
    }
    Ok(())
}

/// A `--state` filter: none, or one of `names` (an unknown one is refused, naming them all).
fn wanted_state<S>(
    state: Option<&str>,
    what: &str,
    parse: fn(&str) -> Option<S>,
    names: &[&str],
) -> Result<Option<S>, QueryError> {
    let unknown = |s: &str| QueryError::Invalid(format!("unknown {what} state `{s}` (one of: {})", names.join(", ")));
    state.map(|s| parse(s).ok_or_else(|| unknown(s))).transpose()
}

/// How `cost` groups spending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CostBy {
    Job,
    Task,
    Queue,
    Model,
    Day,
}

impl CostBy {
    pub fn as_str(self) -> &'static str {
        match self {
            CostBy::Job => "job",
            CostBy::Task => "task",
            CostBy::Queue => "queue",
            CostBy::Model => "model",
            CostBy::Day => "day",
        }
    }
}

/// `cost --json`: spending per group, from the attempts started at or after `since_ms`. By
/// model, an attempt counts in the row of each model it paid for (`attempts`: how many did).
pub fn cost(reader: &dyn Snapshot, by: CostBy, since_ms: Option<u64>) -> Result<Value, QueryError> {
    let tasks: BTreeMap<u64, TaskRunRecord> = reader.task_runs()?.into_iter().map(|t| (t.id, t)).collect();
    let mut rows: BTreeMap<String, (Usage, u64)> = BTreeMap::new();
    let mut total = Usage::default();
    for a in reader.attempts()?.iter().filter(|a| since_ms.is_none_or(|s| a.started_at_ms >= s)) {
        let Some(t) = tasks.get(&a.task_run) else { continue };
        total.add(&a.usage());
        let shares: Vec<(String, Usage)> = match by {
            CostBy::Job => vec![(t.job.clone(), a.usage())],
            CostBy::Task => vec![(format!("{}.{}", t.job, t.task), a.usage())],
            CostBy::Queue => vec![(t.queue.clone(), a.usage())],
            CostBy::Model => sum_by_model(&a.by_model).into_iter().collect(),
            CostBy::Day => vec![(rfc3339_ms(a.started_at_ms).get(..10).unwrap_or("").to_string(), a.usage())],
        };
        for (key, usage) in shares {
            let row = rows.entry(sanitize(&key)).or_default();
            row.0.add(&usage);
            row.1 += 1;
        }
    }
    let rows: Vec<Value> =
        rows.iter().map(|(k, (usage, n))| usage_json(json!({"key": k, "attempts": n}), usage)).collect();
    Ok(json!({"by": by.as_str(), "rows": rows, "total_usd": usd_json(total.usd_micros)}))
}

/// The most a `logs` answer carries; a follower asks again from the offset it got.
const LOG_CHUNK_BYTES: u64 = 1 << 20;

/// A piece of an attempt's log from byte `offset` (sanitized: a log is task output and must not
/// drive a terminal), the offset to ask from next, and whether the attempt still runs.
pub fn log_chunk(
    state_dir: &Path,
    reader: &dyn Snapshot,
    task_run: u64,
    attempt: Option<u32>,
    offset: u64,
) -> Result<Value, QueryError> {
    let t = reader.task_run(task_run)?.ok_or_else(|| not_found(Target::TaskRun(task_run)))?;
    let n = attempt.unwrap_or(t.attempt);
    if n == 0 {
        return Err(QueryError::NotYet(format!("task run {task_run} has not started an attempt yet")));
    }
    if n > t.attempt {
        return Err(QueryError::NotFound(format!("task run {task_run} has no attempt {n} (latest: {})", t.attempt)));
    }
    let rel = AttemptRecord::log_path(t.job_run, task_run, n);
    let bytes = match read_from(state_dir, Path::new(&rel), offset) {
        // Not on this machine: the copy its node shipped into a shared store, if any.
        Ok(None) => reader.log_bytes(task_run, n, offset, LOG_CHUNK_BYTES)?.map(cut_at_line_end).unwrap_or_default(),
        Ok(Some(bytes)) => bytes,
        Err(e) => return Err(QueryError::Invalid(e.to_string())),
    };
    let running = t.attempt == n && t.state == TaskState::Running;
    Ok(json!({
        "task_run": task_run, "attempt": n, "offset": offset + bytes.len() as u64, "running": running,
        "text": crate::sanitize::sanitize_bytes(&bytes),
    }))
}

/// Up to `LOG_CHUNK_BYTES` from `offset`, ending at a line end when one is in reach (so a
/// multi-byte character is never split between two answers); `None` if there is no file here
/// (or no state dir: a reader of a shared store on a machine where nothing ran).
fn read_from(state_dir: &Path, rel: &Path, offset: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    let dir = match crate::state_dir::StateDir::open(state_dir) {
        Ok(dir) => dir,
        Err(crate::state_dir::StateDirError::Missing(_)) => return Ok(None),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let mut file = match dir.open_file(rel, crate::state_dir::Access::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.take(LOG_CHUNK_BYTES).read_to_end(&mut bytes)?;
    Ok(Some(cut_at_line_end(bytes)))
}

/// A piece of a log read up to `LOG_CHUNK_BYTES`, cut after its last line end (or, for one line
/// longer than that, at a character boundary), so the next piece starts a line.
fn cut_at_line_end(mut bytes: Vec<u8>) -> Vec<u8> {
    if let Some(end) = bytes.iter().rposition(|b| *b == b'\n') {
        bytes.truncate(end + 1);
    } else if bytes.len() as u64 == LOG_CHUNK_BYTES {
        // One line longer than a chunk: cut it at a character boundary instead.
        let valid = std::str::from_utf8(&bytes).map_or_else(|e| e.valid_up_to(), str::len);
        bytes.truncate(valid.max(1));
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: &[&str], live: bool) -> crate::store::NodeView {
        let labels = labels.iter().map(|l| l.to_string()).collect();
        crate::store::NodeView { id: 1, name: name.into(), labels, heartbeat_age_ms: 0, live }
    }

    #[test]
    fn a_clusters_live_nodes_decide_what_is_unroutable_else_the_instance() {
        let gpu = vec!["gpu".to_string()];
        assert_eq!(routing_labels(None, Some(&gpu)), vec![vec!["gpu".to_string()]]);
        assert!(routing_labels(None, None).is_empty(), "no instance: nothing is unroutable");
        let cluster = [node("a", &["gpu"], false), node("b", &["eu"], true), node("c", &[], true)];
        assert_eq!(routing_labels(Some(&cluster), Some(&gpu)), [vec!["eu".to_string()], vec![]], "live ones only");
        let routing = routing_labels(Some(&cluster), None);
        let nodes: Vec<&[String]> = routing.iter().map(Vec::as_slice).collect();
        assert!(crate::model::routing::unroutable(&gpu, &nodes), "only a dead node has gpu");
    }
}
