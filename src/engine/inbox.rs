//! Commands dropped into `state/inbox/` by `gaffer retry` / `cancel` / `signal` while no instance
//! runs (a running one is reached through its socket): they wait for the next start, which
//! applies them through the same engine path as live commands. One JSON file per command,
//! written atomically (temp file + rename); applying one removes it and logs how it went.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Target;
use crate::model::rerun::DefinitionChoice;

/// What a command does to its target; the same for live commands and inbox files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Retry,
    Cancel,
    /// Releases the task runs waiting for this `wait_for` name.
    Signal(String),
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

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("inbox")
}

/// Writes a command for the next start.
pub fn put(state_dir: &Path, command: &InboxCommand) -> std::io::Result<()> {
    let dir = dir(state_dir);
    std::fs::create_dir_all(&dir)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let name = format!("{nanos}-{}", std::process::id());
    let tmp = dir.join(format!(".{name}.tmp"));
    let body = serde_json::to_vec(command).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    let file = dir.join(format!("{name}.json"));
    std::fs::rename(&tmp, &file)
}

/// Takes every pending command, oldest first. Unreadable files are answered with an error.
pub fn take(state_dir: &Path) -> Vec<(PathBuf, InboxCommand)> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let parsed = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice::<InboxCommand>(&b).ok());
        match parsed {
            Some(command) => out.push((file, command)),
            None => answer(&file, Err("unreadable command file".into())),
        }
    }
    out
}

/// Removes an applied (or unreadable) command; nobody waits for it, so the outcome is logged.
pub fn answer(file: &Path, result: Result<String, String>) {
    match result {
        Ok(message) => tracing::info!("inbox: {message}"),
        Err(message) => tracing::warn!("inbox command {}: {message}", file.display()),
    }
    let _ = std::fs::remove_file(file);
}
