//! `gaffer doctor`: checks a state dir the way gaffer trusts it — who owns it and who may read
//! it, every page and record of the store, the event journal's lines — and says what is wrong
//! and how to fix it. It changes nothing: redb's integrity check commits, so it runs over an
//! in-memory overlay of `state.redb` (`store::check`).

use std::io::Read;
use std::path::Path;

use super::Place;
use super::exit;
use crate::state_dir::{Access, Problem, StateDir};
use crate::store::{self, StoreError, StoreLocation};

/// Files of the journal and how their lines read.
#[derive(Debug, Default)]
struct JournalCheck {
    files: usize,
    events: u64,
    /// `file:line` of lines that are not whole JSON events.
    bad: Vec<String>,
}

/// Prints one line per check; exit 0 when nothing is wrong, 3 otherwise.
pub fn doctor(at: &Place) -> i32 {
    let state_dir = at.state_dir.as_path();
    outln!("state dir {}", state_dir.display());
    let (problems, dir) = match StateDir::inspect(state_dir) {
        Ok((dir, problems)) => (problems, dir),
        Err(e) => {
            outln!("FAIL  {e}");
            return exit::STATE_DIR;
        }
    };
    let mut fine = check_contents(&dir, problems);
    fine &= match &at.store {
        StoreLocation::StateDir(_) => check_store(state_dir),
        database => check_database(database),
    };
    fine &= check_journal(&dir);
    if fine {
        outln!("all good");
        exit::OK
    } else {
        exit::STATE_DIR
    }
}

/// The dir and its known entries (`problems`, what every command refuses), then everything
/// under it.
fn check_contents(dir: &StateDir, mut problems: Vec<Problem>) -> bool {
    let audit = match dir.audit() {
        Ok(audit) => audit,
        Err(e) => {
            outln!("FAIL  cannot look through the state dir: {e}");
            return false;
        }
    };
    let told: Vec<_> = problems.iter().map(|p| p.path.clone()).collect();
    problems.extend(audit.problems.into_iter().filter(|p| !told.contains(&p.path)));
    for p in &problems {
        outln!("FAIL  {}: {}\n      fix: {}", p.path.display(), p.what, p.fix);
    }
    if problems.is_empty() {
        outln!("ok    files: the dir and its {} entries are yours, private, and no symbolic link", audit.entries);
    }
    let loose: Vec<_> = audit.loose.into_iter().filter(|p| !told.contains(p)).collect();
    if let Some(first) = loose.first() {
        // Harmless while the dir itself is private (an older gaffer made its logs 0644).
        outln!(
            "note  {} entries inside are open to other users (e.g. {}); the private state dir keeps them out; to tighten anyway: chmod -R go-rwx {}",
            loose.len(),
            first.display(),
            dir.path().display()
        );
    }
    problems.is_empty()
}

fn check_store(state_dir: &Path) -> bool {
    match store::check(state_dir) {
        Ok(check) => {
            let counts: Vec<String> = check.records.iter().map(|(table, n)| format!("{n} {table}")).collect();
            let pages = if check.pages_verified {
                "every page verified"
            } else {
                "an instance runs, so a snapshot was read (stop it to verify every page)"
            };
            outln!(
                "ok    store: {pages}, schema {}; every record decodes: {}",
                store::SCHEMA_VERSION,
                counts.join(", ")
            );
            true
        }
        Err(StoreError::Missing(_)) => {
            outln!("ok    store: none yet (made at the first `gaffer run` or `serve`)");
            true
        }
        Err(e @ StoreError::InUse { .. }) => {
            outln!("note  store: not checked: {e}");
            true
        }
        Err(e) => {
            let file = state_dir.join(store::STORE_FILE);
            outln!("FAIL  store: {e}");
            outln!(
                "      to recover: stop gaffer; put back a copy of {} (a backup, a filesystem snapshot), chmod 600 it, and run `gaffer doctor` again",
                file.display()
            );
            outln!(
                "      to start afresh instead (ids start at 1 again): mv {} {}.damaged && mv {} {}.old",
                file.display(),
                file.display(),
                state_dir.join("logs").display(),
                state_dir.join("logs").display()
            );
            false
        }
    }
}

/// A database given with `--store`: reachable, at this gaffer's schema (a reader's check, so
/// nothing is migrated), and every record of the runs and attempts decodes.
fn check_database(store: &StoreLocation) -> bool {
    let read = || -> Result<[usize; 3], StoreError> {
        let snapshot = store.snapshot()?;
        Ok([snapshot.job_runs()?.len(), snapshot.task_runs()?.len(), snapshot.attempts()?.len()])
    };
    match read() {
        Ok([job_runs, task_runs, attempts]) => {
            outln!(
                "ok    store {store}: schema {}; every record decodes: {job_runs} job runs, {task_runs} task runs, {attempts} attempts",
                store::pg::SCHEMA_VERSION
            );
            true
        }
        Err(e) => {
            outln!("FAIL  store {store}: {e}");
            false
        }
    }
}

fn check_journal(dir: &StateDir) -> bool {
    match read_journal(dir) {
        Ok(check) if check.bad.is_empty() => {
            outln!("ok    event journal: {} file(s), {} events, every line whole", check.files, check.events);
            true
        }
        Ok(check) => {
            outln!(
                "FAIL  event journal: {} line(s) are not whole events: {}; gaffer cuts a partial last line at its next start; other lines were damaged on disk",
                check.bad.len(),
                check.bad.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            );
            false
        }
        Err(e) => {
            outln!("FAIL  event journal: {e}");
            false
        }
    }
}

fn read_journal(dir: &StateDir) -> std::io::Result<JournalCheck> {
    let mut check = JournalCheck::default();
    for name in dir.list("events")?.into_iter().filter(|n| n.ends_with(".jsonl")) {
        let rel = Path::new("events").join(&name);
        let mut bytes = Vec::new();
        dir.open_file(&rel, Access::Read)?.read_to_end(&mut bytes)?;
        check.files += 1;
        let whole = bytes.last().is_none_or(|b| *b == b'\n');
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        let last = lines.len().saturating_sub(1);
        for (i, line) in lines.iter().enumerate() {
            if i == last && line.is_empty() && whole {
                continue;
            }
            if serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| v.is_object()) {
                check.events += 1;
            } else {
                check.bad.push(format!("{name}:{}", i + 1));
            }
        }
    }
    Ok(check)
}
