//! Read-only commands: `status`, `jobs`, `tasks`, `show`, `logs`, `cost`, `dlq list`.
//! They open a read-only snapshot, so they work while an instance is running.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::{CliError, CostBy};
use crate::engine::{Target, rfc3339_ms};
use crate::headless::dollars;
use crate::model::money::usd_json;
use crate::model::{JobState, TaskState};
use crate::report::{self, job_json, task_json};
use crate::sanitize::sanitize;
use crate::store::{self, AttemptRecord, JobRunRecord, Reader, TaskRunRecord};

fn print_json(value: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Failed(e.to_string()))?;
    println!("{text}");
    Ok(())
}

pub(super) fn parse_target(id: &str) -> Result<Target, CliError> {
    Target::parse(id).map_err(CliError::Usage)
}

pub(super) fn open(state_dir: &Path) -> Result<Reader, CliError> {
    Ok(store::open_reader(state_dir)?)
}

pub fn status(state_dir: &Path, as_json: bool) -> Result<(), CliError> {
    let value = report::status_value(state_dir)?;
    if as_json {
        return print_json(&value);
    }
    match value["instance"]["pid"].as_u64() {
        Some(pid) => println!("instance: running (pid {pid})"),
        None => println!("instance: not running"),
    }
    println!("{:<16} {:>11} {:>7} {:>8} {:>9} {:>5}", "QUEUE", "CONCURRENCY", "QUEUED", "RUNNING", "RETRYING", "DEAD");
    for q in value["queues"].as_array().into_iter().flatten() {
        let cap = q["concurrency"].as_u64().map_or("-".to_string(), |c| c.to_string());
        let name =
            format!("{}{}", q["name"].as_str().unwrap_or("?"), if q["paused"] == true { " (paused)" } else { "" });
        let n = |key: &str| q[key].as_u64().unwrap_or(0);
        println!(
            "{:<16} {:>11} {:>7} {:>8} {:>9} {:>5}",
            name,
            cap,
            n("queued"),
            n("running"),
            n("retrying"),
            n("dead")
        );
    }
    let counts: Vec<String> = value["totals"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    println!("task runs: {}", if counts.is_empty() { "none".into() } else { counts.join(", ") });
    println!("cost: ${}", value["cost_usd"]);
    Ok(())
}

pub fn jobs(state_dir: &Path, state: Option<&str>, as_json: bool) -> Result<(), CliError> {
    let wanted = state
        .map(|s| {
            JobState::parse(s).ok_or_else(|| {
                CliError::Usage(format!("unknown job run state `{s}` (one of: running, succeeded, failed, cancelled)"))
            })
        })
        .transpose()?;
    let runs: Vec<JobRunRecord> =
        open(state_dir)?.job_runs()?.into_iter().filter(|j| wanted.is_none_or(|w| j.state == w)).collect();
    if as_json {
        return print_json(&Value::Array(runs.iter().map(job_json).collect()));
    }
    println!("{:<6} {:<20} {:<10} {:>10} {:<24} REASON", "ID", "JOB", "STATE", "COST", "STARTED");
    for j in &runs {
        println!(
            "{:<6} {:<20} {:<10} {:>10} {:<24} {}",
            format!("j{}", j.id),
            j.job,
            j.state.as_str(),
            dollars(j.cost_usd_micros),
            rfc3339_ms(j.created_at_ms),
            j.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

pub struct TaskFilter {
    pub state: Option<String>,
    pub job: Option<String>,
    pub queue: Option<String>,
}

pub fn tasks(state_dir: &Path, filter: TaskFilter, as_json: bool) -> Result<(), CliError> {
    let wanted = filter.state.as_deref().map(|s| TaskState::parse(s).ok_or_else(|| CliError::Usage(format!("unknown task run state `{s}` (one of: pending, queued, running, retrying, succeeded, dead, cancelled, skipped, waiting)")))).transpose()?;
    let runs: Vec<TaskRunRecord> = open(state_dir)?
        .task_runs()?
        .into_iter()
        .filter(|t| {
            wanted.is_none_or(|w| t.state == w)
                && filter.job.as_ref().is_none_or(|j| &t.job == j)
                && filter.queue.as_ref().is_none_or(|q| &t.queue == q)
        })
        .collect();
    if as_json {
        return print_json(&Value::Array(runs.iter().map(task_json).collect()));
    }
    print_task_table(&runs);
    Ok(())
}

pub(super) fn print_task_table(runs: &[TaskRunRecord]) {
    println!(
        "{:<6} {:<6} {:<24} {:<10} {:>7} {:<10} {:>4} {:>10} REASON",
        "ID", "RUN", "TASK", "STATE", "ATTEMPT", "QUEUE", "PRIO", "COST"
    );
    for t in runs {
        let reason = t.reason.map(|r| r.as_str()).unwrap_or("");
        println!(
            "{:<6} {:<6} {:<24} {:<10} {:>7} {:<10} {:>4} {:>10} {}",
            t.id,
            format!("j{}", t.job_run),
            format!("{}.{}", t.job, t.task),
            t.state.as_str(),
            format!("{}/{}", t.attempts_in_series(), t.max_attempts),
            t.queue,
            t.priority,
            dollars(t.cost_usd_micros),
            reason
        );
    }
}

pub fn show(state_dir: &Path, id: &str, as_json: bool) -> Result<(), CliError> {
    let reader = open(state_dir)?;
    match parse_target(id)? {
        Target::TaskRun(id) => {
            let t = reader
                .task_run(id)?
                .ok_or_else(|| CliError::Failed(format!("no task run {id} in {}", state_dir.display())))?;
            if as_json {
                return print_json(&report::task_detail(&reader, id)?.unwrap_or_default());
            }
            let attempts = reader.attempts_of(id)?;
            print_task_detail(&t, &attempts);
        }
        Target::JobRun(id) => {
            let j = reader
                .job_run(id)?
                .ok_or_else(|| CliError::Failed(format!("no job run j{id} in {}", state_dir.display())))?;
            if as_json {
                return print_json(&report::job_detail(&reader, id)?.unwrap_or_default());
            }
            let tasks = reader.task_runs_of(id)?;
            println!(
                "job run j{} of `{}`: {}{}",
                j.id,
                j.job,
                j.state.as_str(),
                j.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
            );
            println!("params: {}", serde_json::to_string(&j.params).unwrap_or_default());
            println!("cost: {}", dollars(j.cost_usd_micros));
            print_task_table(&tasks);
        }
    }
    Ok(())
}

fn print_task_detail(t: &TaskRunRecord, attempts: &[AttemptRecord]) {
    println!("task run {} — {}.{} in job run j{}", t.id, t.job, t.task, t.job_run);
    println!("state: {}{}", t.state.as_str(), t.reason.map(|r| format!(" ({})", r.as_str())).unwrap_or_default());
    if let Some(detail) = &t.detail {
        println!("detail: {detail}");
    }
    println!("queue: {} (priority {})", t.queue, t.priority);
    println!("attempts: {} of {} in this series", t.attempts_in_series(), t.max_attempts);
    println!("cost: {} ({} input, {} output tokens)", dollars(t.cost_usd_micros), t.input_tokens, t.output_tokens);
    if let Some(p) = &t.progress {
        println!("progress: {p}");
    }
    for (k, v) in &t.outputs {
        println!("output {k} = {v}");
    }
    for a in attempts {
        let how = match (a.reason, a.exit_code, a.signal) {
            (None, _, _) if a.ended_at_ms.is_none() => "running".to_string(),
            (None, _, _) => "succeeded".to_string(),
            (Some(r), code, signal) => format!(
                "{}{}{}",
                r.as_str(),
                code.map(|c| format!(" (exit {c})")).unwrap_or_default(),
                signal.map(|s| format!(" (signal {s})")).unwrap_or_default()
            ),
        };
        println!(
            "  attempt {}: {how}, started {}, {} — {}",
            a.n,
            rfc3339_ms(a.started_at_ms),
            dollars(a.cost_usd_micros),
            a.log
        );
    }
}

pub fn logs(state_dir: &Path, id: &str, attempt: Option<u32>, follow: bool) -> Result<(), CliError> {
    let Target::TaskRun(id) = parse_target(id)? else {
        return Err(CliError::Usage("logs belong to task runs: give a task run id like 42".into()));
    };
    let reader = open(state_dir)?;
    let t =
        reader.task_run(id)?.ok_or_else(|| CliError::Failed(format!("no task run {id} in {}", state_dir.display())))?;
    let n = attempt.unwrap_or(t.attempt);
    if n == 0 {
        return Err(CliError::Failed(format!("task run {id} has not started an attempt yet")));
    }
    let path = state_dir.join(AttemptRecord::log_path(t.job_run, id, n));
    let mut offset = print_from(&path, 0)?;
    while follow && still_running(state_dir, id, n) {
        std::thread::sleep(Duration::from_millis(200));
        offset = print_from(&path, offset)?;
    }
    if follow {
        print_from(&path, offset)?;
    }
    Ok(())
}

fn still_running(state_dir: &Path, id: u64, n: u32) -> bool {
    let Ok(reader) = store::open_reader(state_dir) else { return false };
    reader.task_run(id).ok().flatten().is_some_and(|t| t.attempt == n && t.state == TaskState::Running)
}

/// Prints the log from `offset`, sanitized (a log is task output: it must not drive the terminal).
fn print_from(path: &Path, offset: u64) -> Result<u64, CliError> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(offset),
        Err(e) => return Err(CliError::Failed(format!("{}: {e}", path.display()))),
    };
    file.seek(SeekFrom::Start(offset)).map_err(|e| CliError::Failed(e.to_string()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| CliError::Failed(e.to_string()))?;
    let mut out = std::io::stdout();
    let _ = out.write_all(crate::sanitize::sanitize_bytes(&bytes).as_bytes());
    let _ = out.flush();
    Ok(offset + bytes.len() as u64)
}

pub fn cost(state_dir: &Path, by: CostBy, since: Option<&str>, as_json: bool) -> Result<(), CliError> {
    let since_ms = since
        .map(|s| humantime::parse_duration(s).map_err(|e| CliError::Usage(format!("--since `{s}`: {e}"))))
        .transpose()?
        .map(|d| crate::engine::Clock::now_ms(&crate::engine::SystemClock).saturating_sub(d.as_millis() as u64));
    let reader = open(state_dir)?;
    let tasks: BTreeMap<u64, TaskRunRecord> = reader.task_runs()?.into_iter().map(|t| (t.id, t)).collect();
    let mut rows: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for a in reader.attempts()?.iter().filter(|a| since_ms.is_none_or(|s| a.started_at_ms >= s)) {
        let Some(t) = tasks.get(&a.task_run) else { continue };
        let key = match by {
            CostBy::Job => t.job.clone(),
            CostBy::Task => format!("{}.{}", t.job, t.task),
            CostBy::Queue => t.queue.clone(),
            CostBy::Model => a.model.clone().unwrap_or_else(|| "(none)".into()),
            CostBy::Day => rfc3339_ms(a.started_at_ms).get(..10).unwrap_or("").to_string(),
        };
        let row = rows.entry(sanitize(&key)).or_default();
        row[0] += a.cost_usd_micros;
        row[1] += a.input_tokens;
        row[2] += a.output_tokens;
        row[3] += 1;
    }
    let total: u64 = rows.values().map(|r| r[0]).sum();
    if as_json {
        let rows: Vec<Value> = rows.iter().map(|(k, r)| json!({"key": k, "cost_usd": usd_json(r[0]), "input_tokens": r[1], "output_tokens": r[2], "attempts": r[3]})).collect();
        return print_json(
            &json!({"by": format!("{by:?}").to_lowercase(), "rows": rows, "total_usd": usd_json(total)}),
        );
    }
    println!(
        "{:<32} {:>12} {:>12} {:>12} {:>8}",
        format!("{by:?}").to_uppercase(),
        "COST",
        "IN TOKENS",
        "OUT TOKENS",
        "ATTEMPTS"
    );
    for (k, r) in &rows {
        println!("{:<32} {:>12} {:>12} {:>12} {:>8}", k, dollars(r[0]), r[1], r[2], r[3]);
    }
    println!("{:<32} {:>12}", "TOTAL", dollars(total));
    Ok(())
}

pub fn dead_letters(state_dir: &Path) -> Result<Vec<TaskRunRecord>, CliError> {
    Ok(open(state_dir)?.task_runs()?.into_iter().filter(|t| t.state == TaskState::Dead).collect())
}
