//! Commands that change state: `retry`, `cancel`, `dlq retry|purge`. They go through the
//! engine's inbox: a running instance answers within a moment; with none running, the command
//! waits there and takes effect at the next start (SPEC §4).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::query::{self, parse_target};
use super::{CliError, DlqAction};
use crate::engine::Target;
use crate::engine::inbox::{self, Action, InboxCommand};
use crate::headless::dollars;
use crate::store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Retry,
    Cancel,
}

/// How long to wait for a running instance to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

pub fn send(state_dir: &Path, verb: Verb, ids: &[String]) -> Result<(), CliError> {
    let targets = ids.iter().map(|id| parse_target(id)).collect::<Result<Vec<_>, _>>()?;
    send_targets(state_dir, verb, &targets)
}

fn send_targets(state_dir: &Path, verb: Verb, targets: &[Target]) -> Result<(), CliError> {
    let reader = query::open(state_dir)?;
    for target in targets {
        let exists = match target {
            Target::TaskRun(id) => reader.task_run(*id)?.is_some(),
            Target::JobRun(id) => reader.job_run(*id)?.is_some(),
        };
        if !exists {
            return Err(CliError::Failed(format!("no {target} in {}; nothing was sent", state_dir.display())));
        }
    }
    let action = if verb == Verb::Retry { Action::Retry } else { Action::Cancel };
    let mut failed = false;
    for target in targets {
        let answer_at = inbox::put(state_dir, &InboxCommand { action, target: *target })
            .map_err(|e| CliError::Failed(format!("cannot write to {}: {e}", state_dir.join("inbox").display())))?;
        match store::instance_pid(state_dir) {
            None => println!("{target}: recorded; it takes effect when gaffer next starts in {}", state_dir.display()),
            Some(pid) => match inbox::wait_answer(&answer_at, ANSWER_TIMEOUT) {
                Some(Ok(message)) => println!("{message}"),
                Some(Err(message)) => {
                    eprintln!("gaffer: {target}: {message}");
                    failed = true;
                }
                None => println!("{target}: sent to the running instance (pid {pid}); no answer yet"),
            },
        }
    }
    if failed { Err(CliError::Failed("some commands were refused".into())) } else { Ok(()) }
}

pub fn dlq(state_dir: &Path, action: DlqAction) -> Result<(), CliError> {
    match action {
        DlqAction::List { json } => list(state_dir, json),
        DlqAction::Retry { ids, all } => act_on_dead(state_dir, Verb::Retry, &ids, all),
        DlqAction::Purge { ids, all } => act_on_dead(state_dir, Verb::Cancel, &ids, all),
    }
}

fn list(state_dir: &Path, json: bool) -> Result<(), CliError> {
    let dead = query::dead_letters(state_dir)?;
    if json {
        let items: Vec<Value> = dead.iter().map(query::task_json).collect();
        println!("{}", serde_json::to_string_pretty(&items).unwrap_or_default());
        return Ok(());
    }
    if dead.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    query::print_task_table(&dead);
    let spent: u64 = dead.iter().map(|t| t.cost_usd_micros).sum();
    println!(
        "{} dead letter(s), {} spent on them; `gaffer dlq retry ID` or `gaffer dlq retry --all`",
        dead.len(),
        dollars(spent)
    );
    Ok(())
}

fn act_on_dead(state_dir: &Path, verb: Verb, ids: &[String], all: bool) -> Result<(), CliError> {
    let dead = query::dead_letters(state_dir)?;
    let targets: Vec<Target> = if all {
        dead.iter().map(|t| Target::TaskRun(t.id)).collect()
    } else {
        if ids.is_empty() {
            return Err(CliError::Usage("name the dead task runs (IDs) or use --all".into()));
        }
        let targets = ids.iter().map(|id| parse_target(id)).collect::<Result<Vec<_>, _>>()?;
        for target in &targets {
            if !matches!(target, Target::TaskRun(id) if dead.iter().any(|t| t.id == *id)) {
                return Err(CliError::Failed(format!("{target} is not in the dead-letter queue; nothing was sent")));
            }
        }
        targets
    };
    if targets.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    send_targets(state_dir, verb, &targets)
}
