//! Runs one attempt as a real process group: stdout/stderr into the capped log, fd 3 as the
//! control channel, the whole group killed when its leader exits.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::{AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc::{self, Receiver, Sender, UnboundedSender};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::group::{kill_group_now, start_ticks};
use super::json_cost::JsonCostTracker;
use super::lines::next_chunk;
use super::logfile::CappedLog;
use super::protocol::{MAX_CONTROL_LINE, Parser};
use super::types::{AttemptEvent, AttemptExit, AttemptSpec, ProcessHandle};
use super::{RunningAttempt, SpawnError};
use crate::config::CommandSpec;

/// The child's end of the control pipe.
const CONTROL_FD: RawFd = 3;
/// stdout/stderr are logged in pieces of at most this many bytes.
const MAX_LOG_LINE: usize = 64 * 1024;
/// Reader → supervisor queue length: readers wait when the log writer falls behind, which
/// bounds memory (≤ this many lines in flight) and slows a flooding task via its full pipe.
const QUEUE: usize = 64;
/// `Activity` only feeds the inactivity watchdog; one per interval is enough, and a task
/// printing a million lines must not queue a million events.
const ACTIVITY_EVERY: Duration = Duration::from_millis(250);
/// After the leader exited and its group was SIGKILLed, how long the pipes may stay open.
/// Only a process that left the group (setsid, setpgid) can still hold them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the pipe readers hand to the supervisor, in arrival order.
enum Msg {
    Output { stdout: bool, bytes: Vec<u8> },
    Control(Vec<u8>),
    ControlOverlong,
}

pub fn spawn(spec: AttemptSpec, events: UnboundedSender<AttemptEvent>) -> Result<RunningAttempt, SpawnError> {
    let program = program_name(&spec.command)?;
    if !spec.cwd.is_dir() {
        return Err(SpawnError::CwdMissing { program, cwd: spec.cwd });
    }
    let log = CappedLog::create(&spec.log_path, spec.log_cap_bytes)
        .map_err(|source| SpawnError::Log { path: spec.log_path.clone(), source })?;
    let (control_read, control_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Setup(io::Error::from(e)))?;
    let control = ChildStdout::from_std(std::process::ChildStdout::from(control_read)).map_err(SpawnError::Setup)?;

    let mut cmd = build_command(&spec, &program);
    install_control_fd(&mut cmd, control_write.as_raw_fd());
    let spawned = cmd.spawn();
    // Our copy of the write end must go now, or fd 3 never reaches EOF.
    drop(control_write);
    let mut child = spawned.map_err(|source| SpawnError::Start { program, cwd: spec.cwd.clone(), source })?;

    let process = process_handle(&child)?;
    feed_stdin(&mut child, spec.stdin);
    let (tx, rx) = mpsc::channel(QUEUE);
    let readers = start_readers(&mut child, control, &tx);
    drop(tx);
    let attempt = Attempt::new(log, events, JsonCostTracker::new(spec.cost_source));
    let task = tokio::spawn(supervise(child, process.pgid, rx, readers, attempt));
    let done = async move { task.await.unwrap_or(AttemptExit { exit_code: None, signal: None }) };
    Ok(RunningAttempt { process: Some(process), done: Box::pin(done) })
}

fn program_name(command: &CommandSpec) -> Result<String, SpawnError> {
    match command {
        CommandSpec::Shell(_) => Ok("sh".to_string()),
        CommandSpec::Argv(argv) => argv.first().cloned().ok_or(SpawnError::EmptyCommand),
    }
}

fn build_command(spec: &AttemptSpec, program: &str) -> Command {
    let mut cmd = match &spec.command {
        CommandSpec::Shell(text) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(text);
            c
        }
        CommandSpec::Argv(argv) => {
            let mut c = Command::new(program);
            c.args(argv.iter().skip(1));
            c
        }
    };
    cmd.current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("GAFFER_JOB", &spec.job)
        .env("GAFFER_JOB_RUN_ID", spec.job_run.to_string())
        .env("GAFFER_TASK", &spec.task)
        .env("GAFFER_TASK_RUN_ID", spec.task_run.to_string())
        .env("GAFFER_ATTEMPT", spec.attempt.to_string())
        .env("GAFFER_STATE_DIR", &spec.state_dir)
        .env("GAFFER_CONTROL_FD", CONTROL_FD.to_string())
        .stdin(if spec.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so the whole tree can be signalled and nothing reaches gaffer's group.
        .process_group(0);
    cmd
}

/// Puts the control pipe's write end at fd 3 in the child.
#[allow(unsafe_code)]
fn install_control_fd(cmd: &mut Command, write_fd: RawFd) {
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It calls only dup2 and fcntl (both async-signal-safe), allocates
    // nothing, takes no locks, and `io::Error::last_os_error` just reads errno. `write_fd`
    // stays open until after `spawn` returns (the caller holds the OwnedFd).
    unsafe {
        cmd.pre_exec(move || {
            let rc = if write_fd == CONTROL_FD {
                // dup2 onto itself is a no-op that would leave O_CLOEXEC set: clear it directly.
                libc::fcntl(CONTROL_FD, libc::F_SETFD, 0)
            } else {
                // The copy made by dup2 does not carry O_CLOEXEC, so it survives exec.
                libc::dup2(write_fd, CONTROL_FD)
            };
            if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
        });
    }
}

fn process_handle(child: &Child) -> Result<ProcessHandle, SpawnError> {
    let pid = child.id().ok_or_else(|| SpawnError::Setup(io::Error::other("child exited before its pid was read")))?;
    let pgid = i32::try_from(pid).map_err(|_| SpawnError::Setup(io::Error::other("pid out of range")))?;
    // Not reaped yet (only the supervisor waits), so /proc/<pid> is still there.
    Ok(ProcessHandle { pid, pgid, start_ticks: start_ticks(pid).unwrap_or(0) })
}

/// Writes stdin in the background (it may exceed the pipe buffer), then closes it.
fn feed_stdin(child: &mut Child, stdin: Option<String>) {
    let (Some(mut pipe), Some(text)) = (child.stdin.take(), stdin) else {
        return;
    };
    tokio::spawn(async move {
        // A task that exits without reading its stdin is not an error.
        let _ = pipe.write_all(text.as_bytes()).await;
    });
}

fn start_readers(child: &mut Child, control: ChildStdout, tx: &Sender<Msg>) -> Vec<JoinHandle<()>> {
    let mut readers = vec![tokio::spawn(read_control(control, tx.clone()))];
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(read_output(out, true, tx.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(read_output(err, false, tx.clone())));
    }
    readers
}

async fn read_output<R: AsyncRead + Unpin>(pipe: R, stdout: bool, tx: Sender<Msg>) {
    let mut reader = BufReader::with_capacity(MAX_LOG_LINE, pipe);
    loop {
        match next_chunk(&mut reader, MAX_LOG_LINE).await {
            Ok(Some(bytes)) => {
                if tx.send(Msg::Output { stdout, bytes }).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => return tracing::warn!(error = %e, stdout, "reading task output failed"),
        }
    }
}

/// A control line longer than `MAX_CONTROL_LINE` is reported once and skipped to its newline.
async fn read_control<R: AsyncRead + Unpin>(pipe: R, tx: Sender<Msg>) {
    let mut reader = BufReader::new(pipe);
    let mut skipping = false;
    loop {
        let bytes = match next_chunk(&mut reader, MAX_CONTROL_LINE).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return,
            Err(e) => return tracing::warn!(error = %e, "reading control fd failed"),
        };
        let complete = bytes.ends_with(b"\n") || bytes.len() < MAX_CONTROL_LINE;
        let msg = match (skipping, complete) {
            (true, _) => None,
            (false, true) => Some(Msg::Control(bytes)),
            (false, false) => Some(Msg::ControlOverlong),
        };
        skipping = !complete;
        if let Some(msg) = msg
            && tx.send(msg).await.is_err()
        {
            return;
        }
    }
}

/// Owns the log and everything that turns pipe data into events.
struct Attempt {
    log: CappedLog,
    log_failed: bool,
    events: UnboundedSender<AttemptEvent>,
    parser: Parser,
    json: Option<JsonCostTracker>,
    last_activity: Option<Instant>,
}

impl Attempt {
    fn new(log: CappedLog, events: UnboundedSender<AttemptEvent>, json: Option<JsonCostTracker>) -> Self {
        Self { log, log_failed: false, events, parser: Parser::new(), json, last_activity: None }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Output { stdout, bytes } => {
                self.write_log(&bytes);
                if let (true, Some(json)) = (stdout, self.json.as_mut()) {
                    json.push(&bytes);
                }
                self.activity();
            }
            Msg::Control(line) => {
                if let Some(event) = self.parser.line(&line) {
                    self.event(event);
                }
            }
            Msg::ControlOverlong => {
                self.warn(format!("control message longer than {MAX_CONTROL_LINE} bytes ignored"));
            }
        }
    }

    fn activity(&mut self) {
        let now = Instant::now();
        if self.last_activity.is_none_or(|t| now.duration_since(t) >= ACTIVITY_EVERY) {
            self.last_activity = Some(now);
            self.send(AttemptEvent::Activity);
        }
    }

    /// Warnings also go to the log, where someone reading it will look for them.
    fn event(&mut self, event: AttemptEvent) {
        if let AttemptEvent::Warning(msg) = &event {
            self.write_log(format!("[gaffer] warning: {msg}\n").as_bytes());
        }
        self.send(event);
    }

    fn warn(&mut self, msg: String) {
        self.event(AttemptEvent::Warning(crate::sanitize::sanitize(&msg)));
    }

    fn send(&self, event: AttemptEvent) {
        // The receiver may be gone (engine shutting down); the attempt still runs to the end.
        let _ = self.events.send(event);
    }

    fn write_log(&mut self, bytes: &[u8]) {
        let result = self.log.write(bytes);
        self.note_log_error(result);
    }

    fn flush_log(&mut self) {
        let result = self.log.flush();
        self.note_log_error(result);
    }

    fn note_log_error(&mut self, result: io::Result<()>) {
        if let Err(e) = result
            && !self.log_failed
        {
            self.log_failed = true;
            tracing::warn!(error = %e, "writing attempt log failed");
        }
    }

    /// Everything that must happen before `done` resolves.
    fn finish(mut self) {
        if let Some(event) = self.parser.finish() {
            self.event(event);
        }
        if let Some(json) = self.json.take() {
            match json.finish() {
                Ok(cost) => self.send(AttemptEvent::Cost(cost)),
                Err(msg) => self.warn(msg),
            }
        }
        let result = self.log.finish();
        self.note_log_error(result);
    }
}

async fn supervise(
    mut child: Child,
    pgid: i32,
    mut rx: Receiver<Msg>,
    readers: Vec<JoinHandle<()>>,
    mut attempt: Attempt,
) -> AttemptExit {
    let status = pump(&mut child, pgid, &mut rx, &mut attempt).await;
    for reader in readers {
        reader.abort();
    }
    let exit = match status {
        Ok(status) => exit_of(status),
        Err(e) => {
            attempt.warn(format!("waiting for the process failed: {e}"));
            AttemptExit { exit_code: None, signal: None }
        }
    };
    attempt.finish();
    exit
}

/// Logs pipe data until every pipe is closed, while watching for the leader's exit; when the
/// leader is gone its group is killed so stray children cannot hold the pipes open.
async fn pump(child: &mut Child, pgid: i32, rx: &mut Receiver<Msg>, attempt: &mut Attempt) -> io::Result<ExitStatus> {
    let mut status = None;
    let mut drain_deadline = None;
    loop {
        let drain_timeout = async {
            match drain_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            msg = rx.recv() => match msg {
                Some(msg) => {
                    attempt.handle(msg);
                    if rx.is_empty() {
                        attempt.flush_log();
                    }
                }
                None => break,
            },
            exited = child.wait(), if status.is_none() => {
                kill_group_now(pgid);
                status = Some(exited);
                drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
            }
            () = drain_timeout => {
                attempt.warn("a process that left the task's process group still holds its output open; stopped reading".to_string());
                break;
            }
        }
    }
    match status {
        Some(status) => status,
        None => {
            // The task closed its pipes but is still running.
            let status = child.wait().await;
            kill_group_now(pgid);
            status
        }
    }
}

fn exit_of(status: ExitStatus) -> AttemptExit {
    AttemptExit { exit_code: status.code(), signal: status.signal() }
}
