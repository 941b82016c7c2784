//! Runs one hook (`on_failure`, `on_dead_letter`, `on_budget`): `sh -c` in its own process
//! group, the event JSON on stdin, stdout and stderr appended to its log file, the whole group
//! killed when its leader exits or its timeout passes. Nothing here waits on the engine.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::group::kill_group_now;

/// How often a running hook is looked at (hooks are rare; a pidfd is not worth it here).
const POLL: Duration = Duration::from_millis(25);

/// One hook to run.
#[derive(Debug, Clone)]
pub struct HookSpec {
    /// Shell text for `sh -c`.
    pub run: String,
    /// Written to its stdin (the event as JSON, one line).
    pub stdin: Vec<u8>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// Appended to, so a hook that fires again keeps its earlier output.
    pub log_path: PathBuf,
    /// The state dir `log_path` is in: the log is opened through it (0600, never via a link).
    pub state_dir: PathBuf,
    /// Written before the hook's output.
    pub header: String,
    pub timeout: Duration,
}

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    Succeeded,
    Failed { exit_code: Option<i32>, signal: Option<i32> },
    TimedOut,
    NotStarted(String),
}

impl HookOutcome {
    /// `exit_code`, `timeout`, `spawn_error` (as attempts say it), or `None` for a success.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            HookOutcome::Succeeded => None,
            HookOutcome::Failed { .. } => Some("exit_code"),
            HookOutcome::TimedOut => Some("timeout"),
            HookOutcome::NotStarted(_) => Some("spawn_error"),
        }
    }
}

/// Runs the hook to its end (or its timeout). Must be called inside a tokio runtime.
pub async fn run_hook(spec: HookSpec) -> HookOutcome {
    let log = match open_log(&spec) {
        Ok(log) => log,
        Err(e) => return HookOutcome::NotStarted(format!("cannot open {}: {e}", spec.log_path.display())),
    };
    let started = Instant::now();
    let outcome = supervise(&spec, &log).await;
    let footer = match &outcome {
        HookOutcome::Succeeded => "exit 0".to_string(),
        HookOutcome::Failed { exit_code: Some(code), .. } => format!("exit {code}"),
        HookOutcome::Failed { signal, .. } => format!("killed by signal {}", signal.unwrap_or(0)),
        HookOutcome::TimedOut => {
            format!("timed out after {}; its process group was killed", humantime::format_duration(spec.timeout))
        }
        HookOutcome::NotStarted(e) => format!("not started: {e}"),
    };
    let _ = writeln!(&log, "--- {footer} ({} ms)", started.elapsed().as_millis());
    outcome
}

fn open_log(spec: &HookSpec) -> std::io::Result<std::fs::File> {
    let mut log = crate::state_dir::open_under(&spec.state_dir, &spec.log_path, crate::state_dir::Access::Append)?;
    writeln!(log, "--- {}", spec.header)?;
    Ok(log)
}

async fn supervise(spec: &HookSpec, log: &std::fs::File) -> HookOutcome {
    let (stdout, stderr) = match (log.try_clone(), log.try_clone()) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => return HookOutcome::NotStarted(e.to_string()),
    };
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&spec.run)
        .current_dir(&spec.cwd)
        // Crash recovery finds an attempt's processes by its environment; a hook is none of them.
        .env_remove("GAFFER_ATTEMPT")
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return HookOutcome::NotStarted(format!("cannot start `sh` in {}: {e}", spec.cwd.display())),
    };
    let pgid = child.id() as i32;
    if let Some(mut stdin) = child.stdin.take() {
        let bytes = spec.stdin.clone();
        // A hook that never reads its stdin must not hold up anything: the write has its own thread.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
    }
    let deadline = Instant::now() + spec.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => tokio::time::sleep(POLL).await,
            Err(e) => return HookOutcome::NotStarted(e.to_string()),
        }
    };
    // The leader is gone or out of time: nothing it started may outlive it.
    kill_group_now(pgid);
    let Some(status) = status else {
        let _ = child.wait();
        return HookOutcome::TimedOut;
    };
    use std::os::unix::process::ExitStatusExt;
    match status.code() {
        Some(0) => HookOutcome::Succeeded,
        code => HookOutcome::Failed { exit_code: code, signal: status.signal() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &std::path::Path, run: &str, timeout: Duration) -> HookSpec {
        HookSpec {
            run: run.to_string(),
            stdin: b"{\"event\":\"job.failed\"}\n".to_vec(),
            cwd: dir.to_path_buf(),
            env: vec![("GAFFER_HOOK".into(), "on_failure".into())],
            log_path: dir.join("logs/1/hooks/j1.job.on_failure.log"),
            state_dir: dir.to_path_buf(),
            header: "on_failure (job) for job.failed".into(),
            timeout,
        }
    }

    #[tokio::test]
    async fn a_hook_reads_the_event_and_logs_its_output() {
        let dir = crate::state_dir::private_tempdir();
        let s = spec(dir.path(), "cat; echo \"hook=$GAFFER_HOOK\"; echo oops >&2", Duration::from_secs(10));
        assert_eq!(run_hook(s.clone()).await, HookOutcome::Succeeded);
        assert_eq!(run_hook(s.clone()).await, HookOutcome::Succeeded);
        let log = std::fs::read_to_string(&s.log_path).expect("log");
        assert_eq!(log.matches("{\"event\":\"job.failed\"}\nhook=on_failure\noops\n--- exit 0").count(), 2, "{log}");
    }

    #[tokio::test]
    async fn a_failing_hook_says_how() {
        let dir = crate::state_dir::private_tempdir();
        let outcome = run_hook(spec(dir.path(), "exit 4", Duration::from_secs(10))).await;
        assert_eq!(outcome, HookOutcome::Failed { exit_code: Some(4), signal: None });
        assert_eq!(outcome.reason(), Some("exit_code"));
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_its_group() {
        let dir = crate::state_dir::private_tempdir();
        let run = "sleep 30 & echo $! > child.pid; wait";
        let started = Instant::now();
        let outcome = run_hook(spec(dir.path(), run, Duration::from_millis(300))).await;
        assert_eq!(outcome, HookOutcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(dir.path().join("child.pid")).expect("pid").trim().parse().expect("n");
        let gone = || std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "));
        let until = Instant::now() + Duration::from_secs(5);
        while !gone() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone(), "the hook's background child was killed with its group");
    }
}
