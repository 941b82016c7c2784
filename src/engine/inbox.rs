//! Commands dropped into `state/inbox/` by `gaffer retry` / `cancel` / `signal` while no instance
//! runs (a running one is reached through its socket): they wait for the next start, which
//! applies them through the same engine path as live commands. One JSON file per command,
//! written atomically (temp file + rename); applying one removes it and logs how it went.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Target;
use crate::model::rerun::DefinitionChoice;
use crate::state_dir::{Access, StateDir};

/// What a command does to its target; the same for live commands and inbox files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Retry,
    Cancel,
    /// Releases the task runs waiting for this `wait_for` name.
    Signal(String),
}

impl Action {
    /// The command's name, as the CLI spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Cancel => "cancel",
            Action::Signal(_) => "signal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxCommand {
    pub action: Action,
    pub target: Target,
    /// A retry's `--from` and `--definition` (absent in files written before they existed).
    #[serde(default, skip_serializing_if = "RetryOptions::is_plain")]
    pub retry: RetryOptions,
}

/// What a retry may ask beyond the plain one: `gaffer retry j7 --from TASK`, `--definition`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryOptions {
    /// Re-run this task of the job run and everything downstream of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// What to do when the job run's definition differs from the file in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<DefinitionChoice>,
    /// `--budget USD`: raise the spent budgets in the retry's way to this (micro-dollars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd_micros: Option<u64>,
}

impl RetryOptions {
    pub fn is_plain(&self) -> bool {
        *self == RetryOptions::default()
    }

    /// The body of `POST /v1/retry`: `{"target": "j7", "from": …, "definition": …}`.
    pub fn request(&self, target: Target) -> serde_json::Value {
        let mut body = serde_json::json!({"target": target.id_text()});
        if let (Some(body), Ok(serde_json::Value::Object(options))) = (body.as_object_mut(), serde_json::to_value(self))
        {
            body.extend(options);
        }
        body
    }
}

const FOLDER: &str = "inbox";

/// Writes a command for the next start.
pub fn put(state_dir: &Path, command: &InboxCommand) -> std::io::Result<()> {
    let dir = StateDir::open(state_dir).map_err(std::io::Error::other)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let name = format!("{nanos}-{}", std::process::id());
    let tmp = Path::new(FOLDER).join(format!(".{name}.tmp"));
    let body = serde_json::to_vec(command).map_err(std::io::Error::other)?;
    let mut file = dir.open_file(&tmp, Access::CreateNew)?;
    file.write_all(&body)?;
    file.sync_all()?;
    dir.rename(&tmp, Path::new(FOLDER).join(format!("{name}.json")))
}

/// Takes every pending command, oldest first. Unreadable files are answered with an error.
pub fn take(state_dir: &Path) -> Vec<(PathBuf, InboxCommand)> {
    let mut out = Vec::new();
    for (file, parsed) in read_all(state_dir) {
        match parsed {
            Some(command) => out.push((file, command)),
            None => answer(&file, Err("unreadable command file".into())),
        }
    }
    out
}

/// The job runs a pending command cancels (whole runs only), without taking anything: a run
/// about to be cancelled resumes without its secrets.
pub fn cancelled_job_runs(state_dir: &Path) -> Vec<u64> {
    read_all(state_dir)
        .into_iter()
        .filter_map(|(_, c)| match c? {
            InboxCommand { action: Action::Cancel, target: Target::JobRun(id), .. } => Some(id),
            _ => None,
        })
        .collect()
}

/// Every command file, oldest first, parsed (`None`: unreadable).
fn read_all(state_dir: &Path) -> Vec<(PathBuf, Option<InboxCommand>)> {
    let Ok(dir) = StateDir::open(state_dir) else { return Vec::new() };
    let names = dir.list(FOLDER).unwrap_or_default(); // sorted: oldest first
    names
        .into_iter()
        .filter(|n| n.ends_with(".json"))
        .map(|name| {
            let rel = Path::new(FOLDER).join(name);
            let parsed = read(&dir, &rel).and_then(|b| serde_json::from_slice::<InboxCommand>(&b).ok());
            (dir.join(&rel), parsed)
        })
        .collect()
}

fn read(dir: &StateDir, rel: &Path) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    dir.open_file(rel, Access::Read).ok()?.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Removes an applied (or unreadable) command; nobody waits for it, so the outcome is logged.
pub fn answer(file: &Path, result: Result<String, String>) {
    match result {
        Ok(message) => tracing::info!("inbox: {message}"),
        Err(message) => tracing::warn!("inbox command {}: {message}", file.display()),
    }
    // `file` is `<state dir>/inbox/<name>`, as `take` made it.
    let (Some(name), Some(state_dir)) = (file.file_name(), file.parent().and_then(Path::parent)) else { return };
    if let Ok(dir) = StateDir::open(state_dir) {
        let _ = dir.remove_file(Path::new(FOLDER).join(name));
    }
}
