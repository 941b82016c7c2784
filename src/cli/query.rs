//! Read-only commands: `status`, `jobs`, `tasks`, `show`, `logs`, `cost`, `dlq list`.
//!
//! Each asks the running instance through its socket when one answers, and otherwise reads the
//! state dir itself (a read-only snapshot). Both sides build the answer with `report`, and the
//! human output is printed from that JSON, so a command prints the same either way.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use super::{CliError, Place};
use crate::api::client::{self, ClientError};
use crate::engine::Target;
use crate::headless::dollars;
use crate::model::money::micros_of_json;
use crate::report::{self, CostBy, JobFilter, QueryError, TaskFilter};
use crate::store::{self, Snapshot};

fn print_json(value: &Value) -> Result<(), CliError> {
    let text = crate::json::pretty(value);
    outln!("{text}");
    Ok(())
}

pub(super) fn parse_target(id: &str) -> Result<Target, CliError> {
    Target::parse(id).map_err(CliError::Usage)
}

/// A snapshot of the store the command reads (`--store`, else the state dir's).
pub(super) fn open(at: &Place) -> Result<Box<dyn Snapshot>, CliError> {
    Ok(at.store.snapshot()?)
}

/// `GET path` from the running instance, or `local` on the store when none answers.
fn fetch(
    at: &Place,
    path: &str,
    local: impl FnOnce(&dyn Snapshot) -> Result<Value, QueryError>,
) -> Result<Value, CliError> {
    match client::call(&at.state_dir, "GET", path, None) {
        Ok(value) => {
            tracing::debug!(path, "answered by the running instance");
            Ok(value)
        }
        Err(ClientError::NotRunning(_)) => {
            let from = if at.store.is_postgres() { "the database" } else { "the state dir" };
            tracing::debug!(path, "no instance runs: read from {from}");
            local(&*open(at)?).map_err(|e| match e {
                QueryError::Store(e) => CliError::Store(e),
                other => CliError::Failed(other.to_string()),
            })
        }
        Err(ClientError::Refused(message)) => Err(CliError::Failed(message)),
        Err(e) => Err(CliError::Failed(e.to_string())),
    }
}

fn query_string(pairs: &[(&str, Option<&str>)]) -> String {
    let set: Vec<String> =
        pairs.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", client::encode(v)))).collect::<Vec<_>>();
    if set.is_empty() { String::new() } else { format!("?{}", set.join("&")) }
}

/// `job.task` of a task run in JSON, its task labelled by iteration and item (`review#2`,
/// `fetch[3]`, `deploy (undo)`: `model::fanout::label`). An older instance's answer has none of
/// them: `job.task`.
fn task_name(t: &Value) -> String {
    let none = serde_json::Map::new();
    format!("{}.{}", text(t, "job"), crate::report::label_in(text(t, "task"), t.as_object().unwrap_or(&none)))
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// `status`'s table of the cluster's nodes (nothing without a cluster): name, labels,
/// heartbeat age, live or dead.
fn node_lines(nodes: &Value) -> Vec<String> {
    let Some(nodes) = nodes.as_array() else { return Vec::new() };
    let mut lines = vec![format!("{:<24} {:<20} {:>10} {}", "NODE", "LABELS", "HEARTBEAT", "STATE")];
    for n in nodes {
        let labels: Vec<&str> = n["labels"].as_array().into_iter().flatten().filter_map(|l| l.as_str()).collect();
        let labels = if labels.is_empty() { "-".to_string() } else { labels.join(",") };
        let age = format!("{}s ago", num(n, "heartbeat_age_ms") / 1000);
        let state = if n["live"] == true { "live" } else { "dead" };
        lines.push(format!("{:<24} {:<20} {:>10} {state}", text(n, "name"), labels, age));
    }
    lines
}

pub fn status(at: &Place, as_json: bool) -> Result<(), CliError> {
    let value = match client::call(&at.state_dir, "GET", "/v1/status", None) {
        Ok(value) => value,
        Err(ClientError::NotRunning(_)) => {
            report::status_value(&at.store, store::instance_pid(&at.state_dir), None, None)?
        }
        // An instance short of descriptors cannot open the store to answer; this process can,
        // and status matters most just then.
        Err(e) => {
            eprintln!("gaffer: the instance could not answer ({e}); read from the state dir instead");
            report::status_value(&at.store, store::instance_pid(&at.state_dir), None, None)?
        }
    };
    if as_json {
        return print_json(&value);
    }
    match value["instance"]["pid"].as_u64() {
        Some(pid) => outln!("instance: running (pid {pid})"),
        None if at.store.is_postgres() => outln!("instance: none on this state dir; read from {}", at.store),
        None => outln!("instance: not running"),
    }
    outln!("{:<16} {:>11} {:>7} {:>8} {:>9} {:>5}", "QUEUE", "CONCURRENCY", "QUEUED", "RUNNING", "RETRYING", "DEAD");
    for q in value["queues"].as_array().into_iter().flatten() {
        let cap = q["concurrency"].as_u64().map_or("-".to_string(), |c| c.to_string());
        let name = format!("{}{}", text(q, "name"), if q["paused"] == true { " (paused)" } else { "" });

        outln!(
            "{:<16} {:>11} {:>7} {:>8} {:>9} {:>5}",
            name,
            cap,
            num(q, "queued"),
            num(q, "running"),
            num(q, "retrying"),
            num(q, "dead")
        );
    }
    for q in value["queues"].as_array().into_iter().flatten() {
        if let Some(until) = q["circuit_open_until"].as_str() {
            outln!(
                "queue {}: circuit open after a burst of failures, nothing starts from it until {until}",
                text(q, "name")
            );
        }
    }
    for line in node_lines(&value["nodes"]) {
        outln!("{line}");
    }
    if let Some(labels) = value["node"]["labels"].as_array() {
        let labels: Vec<&str> = labels.iter().filter_map(|l| l.as_str()).collect();
        outln!("node labels: {}", if labels.is_empty() { "none".to_string() } else { labels.join(", ") });
    }
    for q in value["queues"].as_array().into_iter().flatten().filter(|q| num(q, "unroutable") > 0) {
        outln!("queue {}: {} queued task run(s) no node can run", text(q, "name"), num(q, "unroutable"));
    }
    for t in value["unroutable"].as_array().into_iter().flatten() {
        outln!(
            "task run {} (job run j{}, task {}) {}",
            num(t, "task_run"),
            num(t, "job_run"),
            text(t, "task"),
            text(t, "reason")
        );
    }
    let counts: Vec<String> = value["totals"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    outln!("task runs: {}", if counts.is_empty() { "none".into() } else { counts.join(", ") });
    let waiting = &value["waiting_for_resources"];
    if let Some(n) = waiting["task_runs"].as_u64().filter(|n| *n > 0) {
        outln!(
            "waiting for resources: {n} task run(s) could not start ({}); they try again by themselves",
            waiting["detail"].as_str().unwrap_or("out of resources")
        );
    }
    outln!("cost: {}", dollars(micros_of_json(&value["cost_usd"])));
    Ok(())
}

pub fn jobs(at: &Place, filter: JobFilter, as_json: bool) -> Result<(), CliError> {
    let limit = filter.limit.map(|n| n.to_string());
    let path = format!(
        "/v1/jobs{}",
        query_string(&[
            ("state", filter.state.as_deref()),
            ("job", filter.job.as_deref()),
            ("limit", limit.as_deref())
        ])
    );
    let runs = fetch(at, &path, |reader| report::jobs(reader, &filter)).map_err(usage_if_unknown_state)?;
    if as_json {
        return print_json(&runs);
    }
    outln!("{:<6} {:<20} {:<10} {:>10} {:<24} {:<24} REASON", "ID", "JOB", "STATE", "COST", "STARTED", "PARAMS");
    for j in runs.as_array().into_iter().flatten() {
        outln!(
            "{:<6} {:<20} {:<10} {:>10} {:<24} {:<24} {}",
            format!("j{}", num(j, "id")),
            text(j, "job"),
            text(j, "state"),
            dollars(micros_of_json(&j["cost_usd"])),
            text(j, "started_at"),
            params_text(&j["params"]),
            text(j, "reason")
        );
    }
    Ok(())
}

/// `k=v k2=v2` (secrets are stored as `***`, so they print so).
fn params_text(params: &Value) -> String {
    let pairs = params.as_object().into_iter().flatten();
    let text: Vec<String> = pairs.map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
    crate::sanitize::sanitize(&text.join(" "))
}

/// An unknown `--state` is a usage error (exit 2), whoever noticed it.
fn usage_if_unknown_state(e: CliError) -> CliError {
    match e {
        CliError::Failed(message) if message.starts_with("unknown ") => CliError::Usage(message),
        other => other,
    }
}

pub fn tasks(at: &Place, filter: TaskFilter, as_json: bool) -> Result<(), CliError> {
    if let Some(run) = filter.run.as_deref().filter(|run| report::parse_job_run_id(run).is_none()) {
        return Err(CliError::Usage(format!("`{run}` is not a job run id (like j7)")));
    }
    let path = format!(
        "/v1/tasks{}",
        query_string(&[
            ("state", filter.state.as_deref()),
            ("job", filter.job.as_deref()),
            ("queue", filter.queue.as_deref()),
            ("run", filter.run.as_deref()),
            ("task", filter.task.as_deref())
        ])
    );
    let runs = fetch(at, &path, |reader| report::tasks(reader, &filter)).map_err(usage_if_unknown_state)?;
    let looks_like_a_run_id = |job: &str| matches!(Target::parse(job), Ok(Target::JobRun(_)));
    if runs.as_array().is_some_and(Vec::is_empty)
        && let Some(job) = filter.job.as_deref().filter(|j| looks_like_a_run_id(j))
    {
        eprintln!("gaffer: --job takes a job's name; `{job}` looks like a job run id: try `gaffer tasks --run {job}`");
    }
    if as_json {
        return print_json(&runs);
    }
    print_task_table(&runs);
    Ok(())
}

/// The dead letters, as `tasks --state dead` answers them, less a fan-out's group (kind
/// `fanout`): its dead items are the dead letters (retrying them reopens it).
pub(super) fn dead_letters(at: &Place) -> Result<Value, CliError> {
    let filter = TaskFilter { state: Some("dead".into()), ..TaskFilter::default() };
    let dead = fetch(at, "/v1/tasks?state=dead", |reader| report::tasks(reader, &filter))?;
    let letters = dead.as_array().into_iter().flatten().filter(|t| t["kind"] != "fanout").cloned();
    Ok(Value::Array(letters.collect()))
}

/// `1/3`; a fan-out's group (kind `fanout`) is never attempted itself: its items are.
fn attempts_column(t: &Value) -> String {
    if t["kind"] == "fanout" {
        return "items".into();
    }
    crate::headless::tries(num(t, "attempts_in_series"), num(t, "max_attempts"))
}

/// `["gpu", "eu"]` as `gpu, eu`.
fn labels_of(list: &Value) -> String {
    list.as_array().into_iter().flatten().filter_map(|l| l.as_str()).collect::<Vec<_>>().join(", ")
}

pub(super) fn print_task_table(runs: &Value) {
    outln!(
        "{:<6} {:<6} {:<24} {:<10} {:>7} {:<10} {:>4} {:>10} REASON",
        "ID",
        "RUN",
        "TASK",
        "STATE",
        "ATTEMPT",
        "QUEUE",
        "PRIO",
        "COST"
    );
    for t in runs.as_array().into_iter().flatten() {
        outln!(
            "{:<6} {:<6} {:<24} {:<10} {:>7} {:<10} {:>4} {:>10} {}",
            num(t, "id"),
            format!("j{}", num(t, "job_run")),
            task_name(t),
            text(t, "state"),
            attempts_column(t),
            text(t, "queue"),
            num(t, "priority"),
            dollars(micros_of_json(&t["cost_usd"])),
            match t["blocked"].as_str() {
                Some(_) => format!("blocked: no node has {}", labels_of(&t["requires"])),
                None => text(t, "reason").to_string(),
            }
        );
    }
}

pub fn show(at: &Place, id: &str, as_json: bool) -> Result<(), CliError> {
    let target = parse_target(id)?;
    let value = fetch(at, &format!("/v1/show/{}", target.id_text()), |reader| report::show(reader, target, None))?;
    if as_json {
        return print_json(&value);
    }
    match target {
        Target::TaskRun(_) => {
            let from = reached_from(at, &value["reached_by"]);
            print_task_detail(&value, from.as_ref());
        }
        Target::JobRun(id) => {
            let reason = value["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default();
            outln!("job run j{id} of `{}`: {}{reason}", text(&value, "job"), text(&value, "state"));
            outln!("params: {}", value["params"]);
            outln!("cost: {}", dollars(micros_of_json(&value["cost_usd"])));
            print_raised_budget(&value);
            let runs = in_run_order(&value["tasks"]);
            print_task_table(&Value::Array(runs.clone()));
            print_transitions(&runs);
            let not_reached: Vec<&str> =
                value["not_reached"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if !not_reached.is_empty() {
                outln!("not reached: {}", not_reached.join(", "));
            }
        }
    }
    Ok(())
}

/// A job run's task runs in the order they ran: the started ones by start time, then the
/// others by the time they were made, ties by id. A task's first run is made with its job run,
/// so only the start time puts a loop's `write, review, revise, review#2` in order.
fn in_run_order(runs: &Value) -> Vec<Value> {
    let mut runs = runs.as_array().cloned().unwrap_or_default();
    let key = |t: &Value| {
        let started = t["started_at"].as_str().map(str::to_owned);
        (started.is_none(), started.unwrap_or_else(|| text(t, "created_at").to_owned()), num(t, "id"))
    };
    runs.sort_by_cached_key(key);
    runs
}

/// The transitions taken, one line per task run a transition started:
/// `review#2  ← revise (success)`.
fn print_transitions(runs: &[Value]) {
    let none = serde_json::Map::new();
    let label = |t: &Value| crate::report::label_in(text(t, "task"), t.as_object().unwrap_or(&none));
    let reached: Vec<&Value> = runs.iter().filter(|t| t["reached_by"].is_object()).collect();
    if reached.is_empty() {
        return;
    }
    outln!("transitions:");
    for t in reached {
        let from_id = num(&t["reached_by"], "from_task_run");
        let from = runs.iter().find(|r| num(r, "id") == from_id).map(label).unwrap_or_else(|| from_id.to_string());
        outln!("  {:<24} ← {from} ({})", label(t), text(&t["reached_by"], "on"));
    }
}

/// The task run a transition came from (`reached_by`), if there is one and it can be read.
fn reached_from(at: &Place, reached_by: &Value) -> Option<Value> {
    let target = Target::TaskRun(reached_by["from_task_run"].as_u64()?);
    fetch(at, &format!("/v1/show/{}", target.id_text()), |reader| report::show(reader, target, None)).ok()
}

/// `show ID` of a task run; `from` is the task run a transition started it from.
fn print_task_detail(t: &Value, from: Option<&Value>) {
    outln!("task run {} — {} in job run j{}", num(t, "id"), task_name(t), num(t, "job_run"));
    let reason = t["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default();
    outln!("state: {}{reason}", text(t, "state"));
    if t["reached_by"].is_object() {
        // As the TUI's detail says it: `← #12 revise (success)`.
        let label = from
            .and_then(|f| Some(format!(" {}", crate::report::label_in(text(f, "task"), f.as_object()?))))
            .unwrap_or_default();
        outln!("reached: ← #{}{label} ({})", num(&t["reached_by"], "from_task_run"), text(&t["reached_by"], "on"));
    }
    if let Some(detail) = t["detail"].as_str() {
        outln!("detail: {detail}");
    }
    if let Some(blocked) = t["blocked"].as_str() {
        outln!("blocked: {blocked}");
    }
    outln!("queue: {} (priority {})", text(t, "queue"), num(t, "priority"));
    if t["requires"].is_array() {
        outln!("requires: {}", labels_of(&t["requires"]));
    }
    if t["kind"] == "fanout" {
        let (run, task) = (num(t, "job_run"), text(t, "task"));
        outln!("a fan-out: the group of its items, never attempted itself (`gaffer tasks --run j{run} --task {task}`)");
    } else {
        outln!("attempts: {} of {} in this series", num(t, "attempts_in_series"), num(t, "max_attempts"));
    }
    outln!(
        "cost: {} ({} input, {} output tokens)",
        dollars(micros_of_json(&t["cost_usd"])),
        num(t, "input_tokens"),
        num(t, "output_tokens")
    );
    print_raised_budget(t);
    if let Some(p) = t["progress"].as_str() {
        outln!("progress: {p}");
    }
    for (k, v) in t["outputs"].as_object().into_iter().flatten() {
        outln!("output {k} = {}", v.as_str().unwrap_or_default());
    }
    for a in t["attempts"].as_array().into_iter().flatten() {
        let how = match a["reason"].as_str() {
            None if a["ended_at"].is_null() => "running".to_string(),
            None => "succeeded".to_string(),
            Some("exit_code") => format!("failed, exit code {}", a["exit_code"]),
            Some(r) => format!(
                "{r}{}{}",
                a["exit_code"].as_i64().map(|c| format!(" (exit {c})")).unwrap_or_default(),
                a["signal"].as_i64().map(|s| format!(" (signal {s})")).unwrap_or_default()
            ),
        };
        let model = a["model"].as_str().map(|m| format!(", model {m}")).unwrap_or_default();
        outln!(
            "  attempt {}: {how}, started {}, {}{model}{} — {}",
            num(a, "n"),
            text(a, "started_at"),
            dollars(micros_of_json(&a["cost_usd"])),
            attempt_usage(a),
            text(a, "log")
        );
        for w in a["warnings"].as_array().into_iter().flatten() {
            outln!("    warning: {}", w.as_str().unwrap_or_default());
        }
    }
}

/// `budget: $0.50, raised by a retry` when `gaffer retry --budget` raised it for this run.
fn print_raised_budget(value: &Value) {
    if !value["budget_raised_usd"].is_null() {
        outln!("budget: {}, raised by `gaffer retry --budget`", dollars(micros_of_json(&value["budget_raised_usd"])));
    }
}

/// ` (sonnet: 9 in, 774 out, 36391 cache read, 12871 cache write; haiku: 407 out)`: the
/// attempt's tokens by model, or nothing when it reported none.
fn attempt_usage(a: &Value) -> String {
    let parts: Vec<String> = a["models"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let counts = tokens_phrase(m);
            let model = m["model"].as_str().unwrap_or(crate::model::cost::NO_MODEL);
            (!counts.is_empty()).then(|| format!("{model}: {counts}"))
        })
        .collect();
    if parts.is_empty() { String::new() } else { format!(" ({})", parts.join("; ")) }
}

/// `9 in, 774 out, 36391 cache read`: the nonzero token counts of a JSON row.
fn tokens_phrase(row: &Value) -> String {
    let kinds = [
        ("input_tokens", "in"),
        ("output_tokens", "out"),
        ("cache_read_tokens", "cache read"),
        ("cache_write_tokens", "cache write"),
    ];
    let parts: Vec<String> =
        kinds.iter().filter(|(k, _)| num(row, k) > 0).map(|(k, name)| format!("{} {name}", num(row, k))).collect();
    parts.join(", ")
}

/// How often `logs --follow` asks for more.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

pub fn logs(at: &Place, id: &str, attempt: Option<u32>, follow: bool) -> Result<(), CliError> {
    let id = match Target::parse(id) {
        Ok(Target::TaskRun(id)) => id,
        Ok(Target::JobRun(id)) if !follow && attempt.is_none() => return job_run_logs(at, id),
        Ok(Target::JobRun(_)) => {
            return Err(CliError::Usage(format!(
                "`{id}`: --follow and --attempt take a task run id (42); `gaffer logs {id}` alone prints every task's last attempt"
            )));
        }
        Err(_) => {
            return Err(CliError::Usage(format!(
                "`{id}` is not an id: use a task run id like 42, or a job run id like j7"
            )));
        }
    };
    if follow && attempt.is_none() && !wait_for_first_attempt(at, id)? {
        eprintln!("gaffer: task run {id} ended without running: no log");
        return Ok(());
    }
    print_log(at, id, attempt, follow).map(|_| ())
}

/// `logs j7`: each task run's latest attempt, in task run order, under a header naming it.
fn job_run_logs(at: &Place, job_run: u64) -> Result<(), CliError> {
    let target = Target::JobRun(job_run);
    let run = fetch(at, &format!("/v1/show/{}", target.id_text()), |reader| report::show(reader, target, None))?;
    for t in run["tasks"].as_array().into_iter().flatten() {
        let (id, attempt, state) = (num(t, "id"), num(t, "attempt"), text(t, "state"));
        let name = task_name(t);
        if attempt == 0 {
            outln!("==> task run {id} {name}: {state}, no attempt <==");
            continue;
        }
        outln!("==> task run {id} {name}: attempt {attempt}, {state} <==");
        if !print_log(at, id, Some(attempt as u32), false)? {
            outln!();
        }
    }
    Ok(())
}

/// Prints an attempt's log (default: the latest) from the start; `follow` keeps reading while
/// the attempt runs. True when what it printed ends a line (or it printed nothing).
fn print_log(at: &Place, id: u64, attempt: Option<u32>, follow: bool) -> Result<bool, CliError> {
    let mut offset = 0;
    let mut attempt = attempt;
    let mut line_ended = true;
    loop {
        let path = format!(
            "/v1/logs/{id}{}",
            query_string(&[
                ("attempt", attempt.map(|n| n.to_string()).as_deref()),
                ("offset", Some(&offset.to_string()))
            ])
        );
        let chunk = fetch(at, &path, |reader| report::log_chunk(&at.state_dir, reader, id, attempt, offset))?;
        // Keep following the attempt we started with, even when a retry begins meanwhile.
        attempt = attempt.or(chunk["attempt"].as_u64().map(|n| n as u32));
        let piece = text(&chunk, "text");
        let mut out = std::io::stdout();
        if let Err(e) = out.write_all(piece.as_bytes()).and_then(|()| out.flush()) {
            super::output_failed(e);
        }
        offset = num(&chunk, "offset");
        if let Some(last) = piece.chars().last() {
            line_ended = last == '\n';
        }
        if piece.is_empty() {
            // Read to the end: done, unless following an attempt that still runs.
            if !follow || chunk["running"] != true {
                return Ok(line_ended);
            }
            std::thread::sleep(FOLLOW_EVERY);
        }
    }
}

/// `logs --follow` of a task run still waiting to start: wait for its first attempt rather
/// than refuse. False if it ended without one (skipped, cancelled, reused from the cache).
fn wait_for_first_attempt(at: &Place, id: u64) -> Result<bool, CliError> {
    let target = Target::TaskRun(id);
    let mut said = false;
    loop {
        let t = fetch(at, &format!("/v1/show/{id}"), |reader| report::show(reader, target, None))?;
        let state = text(&t, "state");
        let ended = crate::model::TaskState::parse(state).is_some_and(|s| s.is_terminal());
        if num(&t, "attempt") > 0 || ended {
            return Ok(num(&t, "attempt") > 0);
        }
        if !said {
            eprintln!("gaffer: task run {id} is {state}; waiting for it to start (Ctrl-C stops waiting)");
            said = true;
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

pub fn cost(at: &Place, by: CostBy, since: Option<&str>, as_json: bool) -> Result<(), CliError> {
    let since_ms = since
        .map(|s| {
            humantime::parse_duration(s)
                .map_err(|_| CliError::Usage(format!("--since `{s}` is not a duration: use e.g. 30m, 24h or 7d")))
        })
        .transpose()?
        .map(|d| crate::engine::Clock::now_ms(&crate::engine::SystemClock).saturating_sub(d.as_millis() as u64));
    let path = format!(
        "/v1/cost{}",
        query_string(&[("by", Some(by.as_str())), ("since_ms", since_ms.map(|ms| ms.to_string()).as_deref())])
    );
    let value = fetch(at, &path, |reader| report::cost(reader, by, since_ms))?;
    if as_json {
        return print_json(&value);
    }
    outln!(
        "{:<32} {:>12} {:>12} {:>12} {:>12} {:>12} {:>8}",
        by.as_str().to_uppercase(),
        "COST",
        "IN TOKENS",
        "OUT TOKENS",
        "CACHE READ",
        "CACHE WRITE",
        "ATTEMPTS"
    );
    for r in value["rows"].as_array().into_iter().flatten() {
        outln!(
            "{:<32} {:>12} {:>12} {:>12} {:>12} {:>12} {:>8}",
            text(r, "key"),
            dollars(micros_of_json(&r["cost_usd"])),
            num(r, "input_tokens"),
            num(r, "output_tokens"),
            num(r, "cache_read_tokens"),
            num(r, "cache_write_tokens"),
            num(r, "attempts")
        );
    }
    outln!("{:<32} {:>12}", "TOTAL", dollars(micros_of_json(&value["total_usd"])));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_encoded_and_skip_unset_keys() {
        assert_eq!(query_string(&[("state", None)]), "");
        assert_eq!(query_string(&[("job", Some("a b&c")), ("q", None), ("n", Some("1"))]), "?job=a%20b%26c&n=1");
    }

    #[test]
    fn status_lists_the_clusters_nodes_with_heartbeat_age_and_liveness() {
        assert!(node_lines(&Value::Null).is_empty(), "no cluster, no table");
        let nodes = serde_json::json!([
            {"name": "a", "labels": ["gpu", "eu"], "heartbeat_age_ms": 2_400, "live": true},
            {"name": "b", "labels": [], "heartbeat_age_ms": 45_000, "live": false},
        ]);
        let lines = node_lines(&nodes);
        let words: Vec<Vec<&str>> = lines.iter().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            words,
            [
                vec!["NODE", "LABELS", "HEARTBEAT", "STATE"],
                vec!["a", "gpu,eu", "2s", "ago", "live"],
                vec!["b", "-", "45s", "ago", "dead"]
            ]
        );
    }
}
