//! Signalling whole process groups. Every function refuses pgid ≤ 1: `kill(0, …)` would hit
//! gaffer's own group and `kill(-1, …)` every process the user owns.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::types::ProcessHandle;

const POLL: Duration = Duration::from_millis(50);

fn group(pgid: i32) -> Option<Pid> {
    (pgid > 1).then(|| Pid::from_raw(pgid))
}

/// True while any process (zombies included) is still in the group.
fn group_exists(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None::<Signal>), Err(Errno::ESRCH))
}

/// SIGTERM the group, give it `grace` to be gone, then SIGKILL. Fine for a gone group.
pub async fn terminate_group(process: ProcessHandle, grace: Duration) {
    let Some(pgid) = group(process.pgid) else {
        tracing::warn!(pgid = process.pgid, "refusing to signal process group");
        return;
    };
    if killpg(pgid, Signal::SIGTERM) == Err(Errno::ESRCH) {
        return;
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        if !group_exists(pgid) {
            return;
        }
    }
    kill_group_now(process.pgid);
}

/// SIGKILL the whole group at once; a gone group is not an error.
pub fn kill_group_now(pgid: i32) {
    let Some(pgid) = group(pgid) else {
        tracing::warn!(pgid, "refusing to signal process group");
        return;
    };
    match killpg(pgid, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(%pgid, error = %e, "could not kill process group"),
    }
}

/// For crash recovery: the recorded pid is alive and is still the same process (same start
/// time), not a later process that reused the pid.
pub fn is_same_process_alive(process: &ProcessHandle) -> bool {
    process.start_ticks != 0 && start_ticks(process.pid) == Some(process.start_ticks)
}

/// Still running: the same process (see `is_same_process_alive`) and not a zombie that has
/// exited and waits to be reaped.
pub fn is_still_running(process: &ProcessHandle) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", process.pid)) else { return false };
    let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    !zombie && process.start_ticks != 0 && parse_start_ticks(&stat) == Some(process.start_ticks)
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from after the LAST `)`.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    // After the comm come fields 3 (state), 4, …; field 22 is the 20th of them.
    after_comm.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// For crash recovery: every live process that still carries the environment gaffer gave one
/// attempt (`GAFFER_STATE_DIR`, `GAFFER_TASK_RUN_ID`, `GAFFER_ATTEMPT`), grandchildren and
/// `setsid` escapees included, whatever process group they are in now. This finds an attempt
/// even when gaffer died before its pid was recorded. Only same-user processes are readable,
/// which is every process gaffer started.
pub fn attempt_processes(state_dir: &std::path::Path, task_run: u64, attempt: u32) -> Vec<u32> {
    let wanted = [
        format!("GAFFER_STATE_DIR={}", state_dir.display()),
        format!("GAFFER_TASK_RUN_ID={task_run}"),
        format!("GAFFER_ATTEMPT={attempt}"),
    ];
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let own = std::process::id();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
            let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
            wanted.iter().all(|w| vars.contains(&w.as_bytes()))
        })
        .collect()
}

/// SIGKILLs every process of an interrupted attempt found by `attempt_processes`, and the
/// process group each one leads.
pub fn kill_attempt_processes(state_dir: &std::path::Path, task_run: u64, attempt: u32) -> usize {
    let pids = attempt_processes(state_dir, task_run, attempt);
    for pid in &pids {
        let Ok(raw) = i32::try_from(*pid) else { continue };
        if nix::unistd::getpgid(Some(Pid::from_raw(raw))).is_ok_and(|g| g.as_raw() == raw) {
            kill_group_now(raw);
        }
        let _ = nix::sys::signal::kill(Pid::from_raw(raw), Signal::SIGKILL);
    }
    pids.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let stat = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(987_654));
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_reuse_is_detected() {
        let pid = std::process::id();
        let ticks = start_ticks(pid).expect("own stat");
        let me = ProcessHandle { pid, pgid: 0, start_ticks: ticks };
        assert!(is_same_process_alive(&me));
        assert!(!is_same_process_alive(&ProcessHandle { start_ticks: ticks + 1, ..me }));
        assert!(!is_same_process_alive(&ProcessHandle { start_ticks: 0, ..me }));
    }

    #[tokio::test]
    async fn refuses_dangerous_groups() {
        // Must return without signalling anyone (this test would die otherwise).
        kill_group_now(0);
        kill_group_now(1);
        kill_group_now(-5);
        terminate_group(ProcessHandle { pid: 0, pgid: 0, start_ticks: 0 }, Duration::ZERO).await;
    }
}
