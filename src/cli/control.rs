//! Commands that change state: `retry`, `cancel`, `signal`, `dlq retry|purge`, `pause`,
//! `resume`, `submit`. A running instance takes them through its socket; with none running,
//! `retry`, `cancel` and `signal` wait in the inbox and take effect at the next start (SPEC §4).
//! With `--store` (a database other nodes share) and no node answering here, they are refused
//! instead: no node of that database reads this state dir's inbox.

use std::path::Path;
use std::time::Duration;

use super::query::{self, parse_target};
use super::{CliError, DlqAction, Place};
use crate::api::client::{self, ClientError};
use crate::engine::Target;
use crate::engine::inbox::{self, Action, InboxCommand, RetryOptions};
use crate::headless::dollars;
use crate::model::TaskState;
use crate::model::rerun::DefinitionChoice;
use crate::store;

pub fn send(at: &Place, action: &Action, ids: &[String]) -> Result<(), CliError> {
    let targets = ids.iter().map(|id| parse_target(id)).collect::<Result<Vec<_>, _>>()?;
    send_targets(at, action, &targets, &RetryOptions::default())
}

/// `gaffer retry IDS [--from TASK] [--definition stored|current]`.
pub fn retry(at: &Place, ids: &[String], retry: RetryOptions) -> Result<(), CliError> {
    let targets = ids.iter().map(|id| parse_target(id)).collect::<Result<Vec<_>, _>>()?;
    if let Some(task) = &retry.from {
        let [Target::JobRun(job_run)] = targets[..] else {
            return Err(CliError::Usage("--from re-runs part of one job run: give one job run id (j7)".into()));
        };
        check_from(at, job_run, task)?;
    }
    send_targets(at, &Action::Retry, &targets, &retry)
}

/// `--from` checked against the job run as stored, so a mistyped task name or a run that cannot
/// go again from there is refused now, not when an offline retry is applied at the next start.
/// (The running instance checks again, on the run as it is then.)
fn check_from(at: &Place, job_run: u64, task: &str) -> Result<(), CliError> {
    let reader = query::open(at)?;
    let Some(record) = reader.job_run(job_run)? else { return Ok(()) };
    let tasks = reader.task_runs_of(job_run)?;
    let Some(stored) = reader.definition(record.definition)? else { return Ok(()) };
    let Ok(workflow) = crate::config::parse(Path::new(&stored.path), &stored.source) else { return Ok(()) };
    let Some(job) = workflow.jobs.iter().find(|j| j.name == record.job) else { return Ok(()) };
    match crate::engine::manual_retry::rerun_set(job, &record, &tasks, task) {
        Ok(_) => Ok(()),
        Err(e) => Err(CliError::Failed(format!("job run j{job_run}: {e}; nothing was sent"))),
    }
}

/// `gaffer signal RUN NAME`: releases what waits for NAME in job run RUN (or in task run 42).
pub fn signal(at: &Place, id: &str, name: &str) -> Result<(), CliError> {
    let target = parse_target(id)?;
    let reader = query::open(at)?;
    let tasks = match target {
        Target::JobRun(id) => reader.task_runs_of(id)?,
        Target::TaskRun(id) => reader.task_run(id)?.into_iter().collect(),
    };
    // What waits for which name is in the workflow; the running instance (or the next start)
    // checks that. Here: a signal that can release nothing is refused at once.
    if !tasks.is_empty() && !tasks.iter().any(|t| t.state == TaskState::Waiting) {
        return Err(CliError::Failed(format!("nothing in {target} is waiting; nothing was sent")));
    }
    send_targets(at, &Action::Signal(name.to_string()), &[target], &RetryOptions::default())
}

fn send_targets(at: &Place, action: &Action, targets: &[Target], retry: &RetryOptions) -> Result<(), CliError> {
    let reader = query::open(at)?;
    for target in targets {
        let exists = match target {
            Target::TaskRun(id) => reader.task_run(*id)?.is_some(),
            Target::JobRun(id) => reader.job_run(*id)?.is_some(),
        };
        if !exists {
            return Err(CliError::Failed(format!("no {target} in {}; nothing was sent", at.shown())));
        }
    }
    let mut failed = false;
    for target in targets {
        match deliver(at, action, *target, retry)? {
            Ok(message) => outln!("{message}"),
            Err(message) => {
                // The instance's answer names the run already.
                eprintln!("gaffer: {message}");
                failed = true;
            }
        }
    }
    if failed { Err(CliError::Failed("some commands were refused".into())) } else { Ok(()) }
}

/// To the running instance through its socket; with none running, into the inbox for the
/// next start — once the same check the instance would make lets it through (a retry it would
/// refuse is refused now, and nothing is left for the next start).
fn deliver(
    at: &Place,
    action: &Action,
    target: Target,
    retry: &RetryOptions,
) -> Result<Result<String, String>, CliError> {
    let (path, body) = match action {
        Action::Retry => ("/v1/retry", retry.request(target)),
        Action::Cancel => ("/v1/cancel", serde_json::json!({"target": target.id_text()})),
        Action::Signal(name) => ("/v1/signal", serde_json::json!({"target": target.id_text(), "name": name})),
    };
    match client::call(&at.state_dir, "POST", path, Some(&body)) {
        Ok(answer) => Ok(Ok(answer["message"].as_str().unwrap_or("done").to_string())),
        Err(ClientError::Refused(message)) => Ok(Err(message)),
        Err(ClientError::NotRunning(_)) if at.store.is_postgres() => Err(needs_a_node(at, action.name())),
        Err(ClientError::NotRunning(_)) if store::instance_pid(&at.state_dir).is_none() => {
            let state_dir = &at.state_dir;
            if *action == Action::Retry
                && let Err(refusal) = crate::engine::manual_retry::check_offline(&*query::open(at)?, target, retry)
            {
                return Ok(Err(refusal.to_string()));
            }
            let command = InboxCommand { action: action.clone(), target, retry: offline(action, retry) };
            inbox::put(state_dir, &command)
                .map_err(|e| CliError::Failed(format!("cannot write to {}: {e}", state_dir.join("inbox").display())))?;
            let mut said =
                format!("{target}: recorded; it takes effect when gaffer next starts in {}", state_dir.display());
            if command.retry.definition == Some(DefinitionChoice::Stored) && retry.definition.is_none() {
                said.push_str(
                    " (no workflow file is known while gaffer is not running: the job run keeps the definition it \
                     started with; `--definition current` switches it to the file the next start loads)",
                );
            }
            Ok(Ok(said))
        }
        Err(e) => Err(CliError::Failed(e.to_string())),
    }
}

/// A command that needs an engine, given `--store` with no node answering on this state dir's
/// socket: it is not left in this state dir's inbox (the nodes of that store would never read
/// it), and the store is not changed behind their backs. A usage error: what to do instead.
fn needs_a_node(at: &Place, command: &str) -> CliError {
    CliError::Usage(format!(
        "`{command}` needs a running gaffer node, and none answers on {}: give the --state-dir of a node that \
         runs `gaffer serve FILE --store {}`, or start one here; nothing was changed",
        at.state_dir.display(),
        at.store
    ))
}

/// A retry recorded while no instance runs keeps the job run's stored definition unless told
/// otherwise: there is no file in use to compare it with.
fn offline(action: &Action, retry: &RetryOptions) -> RetryOptions {
    let mut retry = retry.clone();
    if *action == Action::Retry {
        retry.definition.get_or_insert(DefinitionChoice::Stored);
    }
    retry
}

/// `gaffer submit`: needs a running instance (`gaffer serve`).
pub fn submit(
    at: &Place,
    job: &str,
    params: &[String],
    priority: Option<u8>,
    key: Option<&str>,
) -> Result<(), CliError> {
    let params = super::run::parse_params(params).map_err(CliError::Usage)?;
    let body = serde_json::json!({"job": job, "params": params, "priority": priority, "key": key});
    let answer = client::call(&at.state_dir, "POST", "/v1/submit", Some(&body)).map_err(|e| match e {
        ClientError::NotRunning(_) if at.store.is_postgres() => needs_a_node(at, "submit"),
        ClientError::NotRunning(_) => CliError::Failed(format!(
            "no gaffer instance runs in {}: start one with `gaffer serve FILE`, or run the job now with `gaffer run FILE {job}`",
            at.state_dir.display()
        )),
        ClientError::Refused(message) => CliError::Usage(message),
        other => CliError::Failed(other.to_string()),
    })?;
    let id = answer["job_run"].as_u64().unwrap_or(0);
    if answer["existing"] == true {
        outln!("j{id} (already submitted with this key: that run, with the params it was given then)");
    } else {
        outln!("j{id}");
    }
    Ok(())
}

/// `gaffer pause` / `resume`: through the instance, or straight into the store when none runs.
pub fn set_paused(at: &Place, queue: &str, paused: bool) -> Result<(), CliError> {
    let verb = if paused { "pause" } else { "resume" };
    match client::call(&at.state_dir, "POST", &format!("/v1/queues/{}/{verb}", client::encode(queue)), None) {
        Ok(answer) => {
            outln!("{}", answer["message"].as_str().unwrap_or("done"));
            Ok(())
        }
        Err(ClientError::Refused(message)) => Err(CliError::Failed(message)),
        Err(ClientError::NotRunning(_)) if at.store.is_postgres() => Err(needs_a_node(at, verb)),
        Err(ClientError::NotRunning(_)) if store::instance_pid(&at.state_dir).is_none() => {
            let (store, closer, _lock) = store::open_writer(&at.state_dir)?;
            store.commit_blocking(vec![store::Mutation::QueuePaused(queue.to_string(), paused)])?;
            drop(store);
            closer.close(Duration::from_secs(5));
            outln!("queue {queue} {}d; it stays so at the next start", verb);
            Ok(())
        }
        Err(e) => Err(CliError::Failed(e.to_string())),
    }
}

pub fn dlq(at: &Place, action: DlqAction) -> Result<(), CliError> {
    match action {
        DlqAction::List { json } => list(at, json),
        DlqAction::Retry { ids, all, definition } => {
            let retry = RetryOptions { definition, ..RetryOptions::default() };
            act_on_dead(at, &Action::Retry, &ids, all, &retry)
        }
        DlqAction::Purge { ids, all } => act_on_dead(at, &Action::Cancel, &ids, all, &RetryOptions::default()),
    }
}

fn list(at: &Place, json: bool) -> Result<(), CliError> {
    let dead = query::dead_letters(at)?;
    if json {
        outln!("{}", crate::json::pretty(&dead));
        return Ok(());
    }
    let items = dead.as_array().map(Vec::as_slice).unwrap_or_default();
    if items.is_empty() {
        outln!("no dead letters");
        return Ok(());
    }
    query::print_task_table(&dead);
    let spent = items.iter().map(|t| crate::model::money::micros_of_json(&t["cost_usd"])).fold(0, u64::saturating_add);
    outln!(
        "{} dead letter(s), {} spent on them; `gaffer dlq retry ID` or `gaffer dlq retry --all`",
        items.len(),
        dollars(spent)
    );
    Ok(())
}

fn act_on_dead(at: &Place, action: &Action, ids: &[String], all: bool, retry: &RetryOptions) -> Result<(), CliError> {
    let dead: Vec<u64> =
        query::dead_letters(at)?.as_array().into_iter().flatten().filter_map(|t| t["id"].as_u64()).collect();
    let targets: Vec<Target> = if all {
        dead.iter().map(|id| Target::TaskRun(*id)).collect()
    } else {
        if ids.is_empty() {
            return Err(CliError::Usage("name the dead task runs (IDs) or use --all".into()));
        }
        let targets = ids.iter().map(|id| parse_target(id)).collect::<Result<Vec<_>, _>>()?;
        for target in &targets {
            if !matches!(target, Target::TaskRun(id) if dead.contains(id)) {
                return Err(CliError::Failed(format!("{target} is not in the dead-letter queue; nothing was sent")));
            }
        }
        targets
    };
    if targets.is_empty() {
        outln!("no dead letters");
        return Ok(());
    }
    send_targets(at, action, &targets, retry)
}
