//! Commands dropped into `state/inbox/` by CLI processes: how `gaffer retry` and `gaffer cancel`
//! reach a running instance before the control socket exists, and how they wait for the next
//! start when none runs. One JSON file per command, written atomically (temp file + rename);
//! the instance answers in `<name>.answer` and removes the command.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Retry,
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxCommand {
    pub action: Action,
    pub target: Target,
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("inbox")
}

/// Writes a command; returns the path its answer will appear at.
pub fn put(state_dir: &Path, command: &InboxCommand) -> std::io::Result<PathBuf> {
    let dir = dir(state_dir);
    std::fs::create_dir_all(&dir)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let name = format!("{nanos}-{}", std::process::id());
    let tmp = dir.join(format!(".{name}.tmp"));
    let body = serde_json::to_vec(command).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    let file = dir.join(format!("{name}.json"));
    std::fs::rename(&tmp, &file)?;
    Ok(dir.join(format!("{name}.answer")))
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

/// Records the answer next to the command and removes the command.
pub fn answer(file: &Path, result: Result<String, String>) {
    let text = match result {
        Ok(message) => format!("ok {message}"),
        Err(message) => format!("error {message}"),
    };
    let _ = std::fs::write(file.with_extension("answer"), text);
    let _ = std::fs::remove_file(file);
}

/// Waits up to `timeout` for the answer to a command.
pub fn wait_answer(answer_path: &Path, timeout: Duration) -> Option<Result<String, String>> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(answer_path) {
            let _ = std::fs::remove_file(answer_path);
            return Some(match text.split_once(' ') {
                Some(("ok", rest)) => Ok(rest.to_string()),
                Some((_, rest)) => Err(rest.to_string()),
                None => Err(text),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
