//! Records as the JSON shapes of SPEC §4.1: one definition, used by the CLI and the control API,
//! so `--json` is the same whether a command read the state dir or asked the instance.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::engine::rfc3339_ms;
use crate::model::TaskState;
use crate::model::money::usd_json;
use crate::store::{self, AttemptRecord, JobRunRecord, Reader, StoreError, TaskRunRecord};

fn time_json(ms: Option<u64>) -> Value {
    ms.map_or(Value::Null, |ms| json!(rfc3339_ms(ms)))
}

/// SPEC §4.1 `tasks --json` item.
pub fn task_json(t: &TaskRunRecord) -> Value {
    json!({
        "id": t.id, "job": t.job, "job_run": t.job_run, "task": t.task, "state": t.state.as_str(),
        "attempt": t.attempt, "max_attempts": t.max_attempts, "queue": t.queue, "priority": t.priority,
        "cost_usd": usd_json(t.cost_usd_micros), "input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
        "outputs": t.outputs, "reason": t.reason.map(|r| r.as_str()), "detail": t.detail, "exit_code": t.exit_code,
        "progress": t.progress, "created_at": time_json(Some(t.created_at_ms)), "started_at": time_json(t.started_at_ms),
        "ended_at": time_json(t.ended_at_ms), "not_before": time_json(t.not_before_ms),
    })
}

/// SPEC §4.1 `jobs --json` item.
pub fn job_json(j: &JobRunRecord) -> Value {
    json!({
        "id": j.id, "job": j.job, "state": j.state.as_str(), "params": j.params, "cost_usd": usd_json(j.cost_usd_micros),
        "started_at": time_json(Some(j.created_at_ms)), "ended_at": time_json(j.ended_at_ms), "reason": j.reason,
    })
}

pub fn attempt_json(a: &AttemptRecord) -> Value {
    json!({
        "n": a.n, "started_at": time_json(Some(a.started_at_ms)), "ended_at": time_json(a.ended_at_ms),
        "exit_code": a.exit_code, "signal": a.signal, "reason": a.reason.map(|r| r.as_str()), "detail": a.detail,
        "cost_usd": usd_json(a.cost_usd_micros), "input_tokens": a.input_tokens, "output_tokens": a.output_tokens,
        "model": a.model, "pid": a.pid, "log": a.log,
    })
}

/// SPEC §4.1 `status --json`, the same whether asked of the state dir or of the instance.
pub fn status_value(state_dir: &Path) -> Result<Value, StoreError> {
    let pid = store::instance_pid(state_dir);
    let reader = store::open_reader(state_dir)?;
    let tasks = reader.task_runs()?;
    let concurrency = latest_queue_caps(&reader)?;
    let paused = reader.paused_queues()?;
    let mut totals: BTreeMap<&str, u64> = TaskState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let mut queues: BTreeMap<String, [u64; 4]> = concurrency.keys().map(|q| (q.clone(), [0; 4])).collect();
    let mut cost = 0u64;
    for t in &tasks {
        *totals.entry(t.state.as_str()).or_default() += 1;
        cost += t.cost_usd_micros;
        let counts = queues.entry(t.queue.clone()).or_default();
        match t.state {
            TaskState::Queued => counts[0] += 1,
            TaskState::Running => counts[1] += 1,
            TaskState::Retrying => counts[2] += 1,
            TaskState::Dead => counts[3] += 1,
            _ => {}
        }
    }
    let queues: Vec<Value> = queues
        .iter()
        .map(|(name, c)| {
            json!({"name": name, "concurrency": concurrency.get(name), "paused": paused.contains(name),
                   "queued": c[0], "running": c[1], "retrying": c[2], "dead": c[3]})
        })
        .collect();
    Ok(
        json!({"instance": {"running": pid.is_some(), "pid": pid}, "queues": queues, "totals": totals, "cost_usd": usd_json(cost)}),
    )
}

/// Queue caps from the definition of the newest job run (the store keeps definitions, not queues).
fn latest_queue_caps(reader: &Reader) -> Result<BTreeMap<String, usize>, StoreError> {
    let Some(latest) = reader.job_runs()?.into_iter().max_by_key(|j| j.id) else { return Ok(BTreeMap::new()) };
    let Some(def) = reader.definition(latest.definition)? else { return Ok(BTreeMap::new()) };
    Ok(crate::config::parse(Path::new(&def.path), &def.source)
        .map(|w| w.queues.into_iter().map(|(k, q)| (k, q.concurrency)).collect())
        .unwrap_or_default())
}

/// `show 42 --json`: the task run with its attempts.
pub fn task_detail(reader: &Reader, id: u64) -> Result<Option<Value>, StoreError> {
    let Some(t) = reader.task_run(id)? else { return Ok(None) };
    let mut value = task_json(&t);
    value["attempts"] = Value::Array(reader.attempts_of(id)?.iter().map(attempt_json).collect());
    Ok(Some(value))
}

/// `show j7 --json`: the job run with its task runs.
pub fn job_detail(reader: &Reader, id: u64) -> Result<Option<Value>, StoreError> {
    let Some(j) = reader.job_run(id)? else { return Ok(None) };
    let mut value = job_json(&j);
    value["tasks"] = Value::Array(reader.task_runs_of(id)?.iter().map(task_json).collect());
    Ok(Some(value))
}
