//! Signalling whole process groups. Every function refuses pgid ≤ 1: `kill(0, …)` would hit
//! gaffer's own group and `kill(-1, …)` every process the user owns.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::types::ProcessHandle;
use crate::model::sweep::{self as rules, Marker};

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

/// The newest pid the kernel handed out in gaffer's pid namespace, `None` when unknown. A
/// process started by an attempt got a pid between the value before its spawn and now.
pub fn last_pid() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/ns_last_pid").ok()?.trim().parse().ok()
}

/// Which pids a search for an attempt's processes looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidates {
    /// Every process (crash recovery: nothing is known about when the attempt ran).
    All,
    /// The pids handed out after `after` up to `upto` (wrapping at most once), for an attempt
    /// known to have started after `after` was the newest pid.
    Since { after: u32, upto: u32 },
}

impl Candidates {
    /// Probing this many pids one by one costs about what listing /proc costs.
    const PROBE_AT_MOST: u32 = 64;

    pub(super) fn contains(self, pid: u32) -> bool {
        match self {
            Candidates::All => true,
            Candidates::Since { after, upto } if after <= upto => pid > after && pid <= upto,
            Candidates::Since { after, upto } => pid > after || pid <= upto,
        }
    }

    /// The pids to probe directly, when there are few enough.
    fn few(self) -> Option<std::ops::RangeInclusive<u32>> {
        match self {
            Candidates::Since { after, upto } if after <= upto && upto - after <= Self::PROBE_AT_MOST => {
                Some(after + 1..=upto)
            }
            _ => None,
        }
    }
}

/// Every pid in /proc (processes, not threads).
pub(super) fn listed_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).collect()
}

/// The pids to probe one by one for all of `windows` together, when there are few enough
/// (else /proc is listed).
pub(super) fn few_in_all(windows: &[Candidates]) -> Option<Vec<u32>> {
    let mut pids = Vec::new();
    for window in windows {
        pids.extend(window.few()?);
        if pids.len() > Candidates::PROBE_AT_MOST as usize {
            return None;
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Some(pids)
}

/// Every live process that carries the environment gaffer gave one attempt
/// (`GAFFER_STATE_DIR`, `GAFFER_TASK_RUN_ID`, `GAFFER_ATTEMPT`), grandchildren and `setsid`
/// escapees included, whatever process group they are in now. Only same-user processes are
/// readable, which is every process gaffer started. Used by crash recovery (all of them); the
/// end of an attempt goes through `sweeper`, which serves many attempts at once.
pub fn attempt_processes(state_dir: &std::path::Path, task_run: u64, attempt: u32, candidates: Candidates) -> Vec<u32> {
    let marker = Marker::new(state_dir, task_run, attempt);
    let own = std::process::id();
    let carries_it = |pid: &u32| {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
        !rules::matches(&environ, &[&marker]).carries.is_empty()
    };
    let pids = few_in_all(&[candidates]).unwrap_or_else(listed_pids);
    pids.into_iter().filter(|pid| *pid != own && candidates.contains(*pid)).filter(carries_it).collect()
}

/// SIGKILLs every process of an attempt found by `attempt_processes`, and the process group
/// each one leads. Returns the pids killed.
pub fn kill_attempt_processes(
    state_dir: &std::path::Path,
    task_run: u64,
    attempt: u32,
    candidates: Candidates,
) -> Vec<u32> {
    let pids = attempt_processes(state_dir, task_run, attempt, candidates);
    kill_processes(&pids);
    pids
}

/// SIGKILLs every live process (not this one) that carries an attempt's environment of
/// `state_dir` (`GAFFER_STATE_DIR` it, and a `GAFFER_TASK_RUN_ID`), whatever its attempt, and
/// the group each one leads; waits (bounded) until they are gone. Returns how many.
pub fn kill_state_dir_processes(state_dir: &std::path::Path) -> usize {
    use std::os::unix::ffi::OsStrExt;
    let dir = [b"GAFFER_STATE_DIR=", state_dir.as_os_str().as_bytes()].concat();
    let own = std::process::id();
    let carries_it = |pid: &u32| {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
        let mut vars = environ.split(|b| *b == 0);
        let (mut of_dir, mut of_attempt) = (false, false);
        for var in &mut vars {
            of_dir |= var == dir.as_slice();
            of_attempt |= var.starts_with(b"GAFFER_TASK_RUN_ID=");
        }
        of_dir && of_attempt
    };
    let pids: Vec<u32> =
        listed_pids().into_iter().filter(|pid| *pid != own && is_live(*pid)).filter(carries_it).collect();
    kill_processes(&pids);
    wait_gone(&pids, GONE_WITHIN);
    pids.len()
}

/// SIGKILLs each of `pids` and the process group each one leads.
pub(super) fn kill_processes(pids: &[u32]) {
    for pid in pids {
        let Ok(raw) = i32::try_from(*pid) else { continue };
        if nix::unistd::getpgid(Some(Pid::from_raw(raw))).is_ok_and(|g| g.as_raw() == raw) {
            kill_group_now(raw);
        }
        let _ = nix::sys::signal::kill(Pid::from_raw(raw), Signal::SIGKILL);
    }
}

/// How long a SIGKILLed process gets to be gone before gaffer stops waiting for it (one stuck in
/// uninterruptible sleep on a dead NFS mount can take longer; it is reported, not waited for).
pub const GONE_WITHIN: Duration = Duration::from_secs(5);

/// Live: it exists and has not exited (a zombie waiting to be reaped has).
fn is_live(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| matches!(rest.trim_start().as_bytes().first(), Some(b'Z' | b'X'))),
        Err(_) => false,
    }
}

/// Waits (blocking, bounded) until none of `pids` is live.
pub(super) fn wait_gone(pids: &[u32], within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while pids.iter().any(|&pid| is_live(pid)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The live members of process group `pgid` (zombies left out: an orphan waiting for a slow
/// init to reap it has exited). Lists /proc: only for a group that outlived its SIGKILL.
pub(super) fn live_members(pgid: i32) -> Vec<u32> {
    listed_pids()
        .into_iter()
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            let Some((_, rest)) = stat.rsplit_once(')') else { return false };
            let fields: Vec<&str> = rest.split_ascii_whitespace().take(3).collect();
            // After the comm: state, ppid, pgrp.
            matches!(fields.as_slice(), [state, _, pgrp] if !matches!(*state, "Z" | "X") && pgrp.parse() == Ok(pgid))
        })
        .collect()
}

/// After the group was SIGKILLed: waits until no live process is left in it, so that when an
/// attempt is reported ended (and when a graceful stop returns) nothing of it still runs.
/// Usually the group is already empty; a member the kernel has not finished killing yet (a
/// loaded machine) is waited for, within `within`. Returns the pids still live after that.
pub async fn wait_group_gone(pgid: i32, within: Duration) -> Vec<u32> {
    let Some(group) = group(pgid) else { return Vec::new() };
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(1);
    loop {
        if !group_exists(group) {
            return Vec::new();
        }
        // Only zombies left (reparented orphans a lazy init has not reaped) counts as gone.
        let live = tokio::task::spawn_blocking(move || live_members(pgid)).await.unwrap_or_default();
        if live.is_empty() || tokio::time::Instant::now() >= deadline {
            return live;
        }
        kill_group_now(pgid);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL);
    }
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
