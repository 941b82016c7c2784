//! What a long-running gaffer needs from the process it runs in: enough file descriptors, none
//! of the launching shell's leaking into tasks, and a few held back so that a task can still
//! start when something else (a flood of API connections) took all the others.

use std::fs::File;
use std::io;
use std::sync::Mutex;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors one running attempt holds: its log, the read ends of stdout, stderr and fd 3,
/// and the pidfd it is reaped through (stdin's pipe, when there is one, closes once written).
pub const FDS_PER_ATTEMPT: u64 = 5;
/// Descriptors starting one attempt needs at its peak: the above plus the child's pipe ends
/// (closed again once it runs) and stdin's pair.
const FDS_PER_SPAWN: usize = 10;
/// Held back for spawning: enough to start one attempt when every other descriptor is taken.
const RESERVE: usize = FDS_PER_SPAWN + 6;

static RESERVED: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Readies this process to run up to `workers` attempts: inherited descriptors kept from
/// tasks, the open-files limit raised, the spawn reserve filled. Returns a note for the user
/// when the limit still leaves too little room.
pub fn prepare(workers: usize) -> Option<String> {
    keep_inherited_fds_from_tasks();
    let note = match raise_open_files_limit() {
        Ok(limit) if attempts_within(limit.now) < workers as u64 => Some(format!(
            "the open-file limit ({}) leaves room for about {} running attempts, fewer than workers = {workers}; \
             the others wait for descriptors (raise the hard limit: `ulimit -Hn`, or LimitNOFILE= under systemd)",
            limit.now,
            attempts_within(limit.now)
        )),
        Ok(_) => None,
        Err(e) => Some(format!("cannot raise the open-file limit: {e}")),
    };
    refill_reserve();
    note
}

/// The open-files limit before and after gaffer raised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesLimit {
    pub before: u64,
    pub now: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as Go and systemd services do: every
/// running attempt holds [`FDS_PER_ATTEMPT`] descriptors and every API connection one, and the
/// usual soft limit of 1024 ran out under load (task runs dead-lettered with "Too many open
/// files"). Tasks inherit the raised limit: `posix_spawn` cannot set limits in the child, and
/// doing it through a wrapper would cost an `exec` per attempt (see README, "Limits").
pub fn raise_open_files_limit() -> io::Result<OpenFilesLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(OpenFilesLimit { before: soft, now: hard.max(soft) })
}

/// How many attempts can run at once within `limit` open files, after gaffer's own needs
/// (store, journal, sockets, runtime threads) and the spawn reserve.
pub fn attempts_within(limit: u64) -> u64 {
    const OWN: u64 = 64;
    limit.saturating_sub(OWN + RESERVE as u64) / FDS_PER_ATTEMPT
}

/// Marks every descriptor above stderr close-on-exec. gaffer opens all of its own that way;
/// this is for those it inherited (an `exec 5>file` in the launching shell, a leaked socket),
/// which would otherwise reach every task. Call before any thread starts. Returns how many were
/// marked.
pub fn keep_inherited_fds_from_tasks() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    let fds: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|fd| *fd > 2).collect();
    // One of them is the listing's own descriptor, gone by now: that one just fails.
    fds.into_iter().filter(|&fd| super::local::set_close_on_exec(fd).unwrap_or(false)).count()
}

/// Fills the reserve of descriptors held back for spawning, as far as there are free ones.
pub fn refill_reserve() {
    let Ok(mut reserved) = RESERVED.lock() else { return };
    while reserved.len() < RESERVE {
        match File::open("/dev/null") {
            Ok(file) => reserved.push(file),
            Err(_) => break,
        }
    }
}

/// Closes the reserve so a spawn that ran out of descriptors can use them; false when there
/// was nothing to release.
fn release_reserve() -> bool {
    let Ok(mut reserved) = RESERVED.lock() else { return false };
    let had = !reserved.is_empty();
    reserved.clear();
    had
}

/// Runs `step`; when it fails for lack of descriptors, releases the reserve and runs it once
/// more.
pub fn with_reserve<T>(mut step: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    match step() {
        Err(e) if is_out_of_descriptors(&e) && release_reserve() => step(),
        other => other,
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(os_error(e), Some(libc::EMFILE | libc::ENFILE))
}

/// The machine (or gaffer's share of it) ran out of something an attempt needs to start:
/// descriptors, processes, memory. Not the task's fault, and gone again once other attempts
/// end: such a start is retried later and not counted as an attempt.
pub fn is_exhaustion(e: &io::Error) -> bool {
    matches!(os_error(e), Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM))
}

/// The OS error number of `e`, or of the first error behind it that has one (an error that names
/// its path wraps the original, e.g. `state_dir::OsErrorAt`).
fn os_error(e: &io::Error) -> Option<i32> {
    if let Some(errno) = e.raw_os_error() {
        return Some(errno);
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|inner| inner as _);
    while let Some(error) = cause {
        if let Some(errno) = error.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error) {
            return Some(errno);
        }
        cause = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_is_seen_behind_an_error_that_names_its_path() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_exhaustion(&emfile) && is_out_of_descriptors(&emfile));
        let named = crate::state_dir::StateDirError::Io {
            path: "/s/.gaffer".into(),
            reason: emfile.to_string(),
            errno: Some(libc::EMFILE),
        };
        let wrapped = named.into_io();
        assert!(wrapped.to_string().starts_with("/s/.gaffer: Too many open files"), "{wrapped}");
        assert!(is_exhaustion(&wrapped));
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::EAGAIN)));
        assert!(!is_exhaustion(&io::Error::from_raw_os_error(libc::ENOENT)));
        assert!(!is_exhaustion(&io::Error::other("too many open files, said in words")));
    }
}
