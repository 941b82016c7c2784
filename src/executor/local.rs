//! Runs one attempt as a real process group: stdout/stderr into the capped log, fd 3 as the
//! control channel, the whole group killed when its leader exits.
//!
//! Processes are started with `posix_spawn` (glibc: `clone(CLONE_VM | CLONE_VFORK)`), not
//! `fork`: forking this multi-threaded process copied its page tables and made the engine take
//! copy-on-write faults afterwards, about 40 % of all CPU when running many short tasks. The
//! process is reaped through a pidfd, so no tokio `Child` (and no SIGCHLD handler) is involved.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{AccessFlags, Pid};
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::mpsc::{self, Receiver, Sender, UnboundedSender};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::agent_json::AgentJson;
use super::group::{self, kill_group_now, start_ticks};
use super::lines::ChunkReader;
use super::logfile::CappedLog;
use super::outputs::OutputBudget;
use super::protocol::{MAX_CONTROL_LINE, Parser};
use super::sweeper;
use super::types::{AttemptEvent, AttemptExit, AttemptSpec, ProcessHandle};
use super::{RunningAttempt, SpawnError, resources};
use crate::config::{CommandSpec, OutputLimits};
use crate::model::sweep::Marker;

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
/// Reset to their default action in the task. Ignored signals survive `exec`, and gaffer may
/// have inherited some ignored (`SIGINT`/`SIGQUIT` when started in the background by a
/// script); Rust ignores `SIGPIPE`, and std's `Command` resets it too. `SIGHUP` is left
/// alone so that `nohup gaffer …` keeps covering its tasks.
const DEFAULT_SIGNALS: [Signal; 5] =
    [Signal::SIGPIPE, Signal::SIGINT, Signal::SIGQUIT, Signal::SIGTERM, Signal::SIGCHLD];

/// What the pipe readers hand to the supervisor, in arrival order.
enum Msg {
    Output { stdout: bool, bytes: Vec<u8> },
    Control(Vec<u8>),
    ControlOverlong,
}

pub fn spawn(spec: AttemptSpec, events: UnboundedSender<AttemptEvent>) -> Result<RunningAttempt, SpawnError> {
    let prepared = Prepared::new(&spec)?;
    prepared.start(spec, events)
}

/// [`spawn`] of an attempt whose `running` commit may still be in flight: the log and the
/// pipes are made first, while the commit's fsyncs run, and the process is started only
/// once `durable()` says that commit is durable (SPEC §7); when it failed, nothing starts
/// and the empty log is removed.
pub fn spawn_once_durable(
    spec: AttemptSpec,
    events: UnboundedSender<AttemptEvent>,
    durable: &mut dyn FnMut() -> bool,
) -> Option<Result<RunningAttempt, SpawnError>> {
    let prepared = Prepared::new(&spec);
    if !durable() {
        if let Ok(prepared) = prepared {
            prepared.abandon(&spec);
        }
        return None;
    }
    Some(prepared.and_then(|prepared| prepared.start(spec, events)))
}

/// What a start needs that can be made before the process may start: the log, the C strings
/// of the command and environment, and the pipes.
struct Prepared {
    program: String,
    log: CappedLog,
    launch: Launch,
    parent: ParentEnds,
    child_ends: ChildEnds,
}

impl Prepared {
    fn new(spec: &AttemptSpec) -> Result<Self, SpawnError> {
        let program = program_name(&spec.command)?;
        if !spec.cwd.is_dir() {
            return Err(SpawnError::CwdMissing { program, cwd: spec.cwd.clone() });
        }
        // Each step that takes descriptors may use the reserve when they ran out; what is free
        // again afterwards refills it (after the start, in `start`).
        let made = Self::make(spec, program);
        if made.is_err() {
            resources::refill_reserve();
        }
        made
    }

    /// Everything of a preparation that can fail.
    fn make(spec: &AttemptSpec, program: String) -> Result<Self, SpawnError> {
        let log = resources::with_reserve(|| CappedLog::create(&spec.state_dir, &spec.log_path, spec.log_cap_bytes))
            .map_err(|source| SpawnError::Log { path: spec.log_path.clone(), source })?;
        let launch = Launch::new(spec, &program).map_err(|source| start_error(spec, &program, source))?;
        let (parent, child_ends) =
            resources::with_reserve(|| pipes(spec.stdin.is_some())).map_err(SpawnError::Setup)?;
        Ok(Self { program, log, launch, parent, child_ends })
    }

    /// Starts the process and its supervision.
    fn start(self, spec: AttemptSpec, events: UnboundedSender<AttemptEvent>) -> Result<RunningAttempt, SpawnError> {
        let Prepared { program, log, launch, parent, child_ends } = self;
        let leftovers = Leftovers::new(&spec);
        let spawned = resources::with_reserve(|| launch.spawn(&child_ends));
        // Our copies of the child's ends must go now, or the pipes never reach EOF.
        drop(child_ends);
        resources::refill_reserve();
        let pid = spawned.map_err(|source| start_error(&spec, &program, source))?;

        let child = Child::new(pid);
        let process = process_handle(pid);
        feed_stdin(parent.stdin, spec.stdin);
        let (tx, rx) = mpsc::channel(QUEUE);
        let readers = vec![
            tokio::spawn(read_control(parent.control, tx.clone())),
            tokio::spawn(read_output(parent.stdout, true, tx.clone())),
            tokio::spawn(read_output(parent.stderr, false, tx)),
        ];
        let attempt = Attempt::new(log, events, AgentJson::new(spec.cost_source), spec.output_limits);
        let task = tokio::spawn(supervise(child, process.pgid, rx, readers, attempt, leftovers));
        let done = async move { task.await.unwrap_or(AttemptExit { exit_code: None, signal: None }) };
        Ok(RunningAttempt { process: Some(process), done: Box::pin(done) })
    }

    /// The commit failed, so this attempt never starts: its pipes close, and its log (empty)
    /// goes, so that no log is left for an attempt that never ran.
    fn abandon(self, spec: &AttemptSpec) {
        drop(self);
        if let Some(rel) = spec.log_path.strip_prefix(&spec.state_dir).ok()
            && let Ok(dir) = crate::state_dir::StateDir::open(&spec.state_dir)
            && let Err(e) = dir.remove_file(rel)
        {
            tracing::debug!("cannot remove the log of an attempt that never started: {e}");
        }
        resources::refill_reserve();
    }
}

fn start_error(spec: &AttemptSpec, program: &str, source: io::Error) -> SpawnError {
    SpawnError::Start { program: program.to_string(), cwd: spec.cwd.clone(), source }
}

fn program_name(command: &CommandSpec) -> Result<String, SpawnError> {
    match command {
        CommandSpec::Shell(_) => Ok("sh".to_string()),
        CommandSpec::Argv(argv) => argv.first().cloned().ok_or(SpawnError::EmptyCommand),
    }
}

/// Everything `posix_spawn` needs, as C strings, prepared before any pipe exists.
struct Launch {
    executable: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
}

impl Launch {
    fn new(spec: &AttemptSpec, program: &str) -> io::Result<Self> {
        let argv: Vec<&str> = match &spec.command {
            CommandSpec::Shell(text) => vec!["sh", "-c", text],
            CommandSpec::Argv(argv) => argv.iter().map(String::as_str).collect(),
        };
        let env = environment(spec);
        let executable = executable(program, env.get(OsStr::new("PATH")).map(OsString::as_os_str), &spec.cwd)?;
        let argv = argv.into_iter().map(c_string).collect::<io::Result<_>>()?;
        let envp = env
            .into_iter()
            .map(|(key, value)| {
                let mut pair = key.into_vec();
                pair.push(b'=');
                pair.extend_from_slice(value.as_bytes());
                c_string(pair)
            })
            .collect::<io::Result<_>>()?;
        let cwd = c_string(spec.cwd.as_os_str().as_bytes())?;
        Ok(Self { executable, argv, envp, cwd })
    }

    /// Starts the process in its own group with the child's pipe ends at fds 0–3 and the
    /// signal state reset. Returns once it has exec'd, or with exec's error (`ENOENT`, …).
    fn spawn(&self, ends: &ChildEnds) -> io::Result<Pid> {
        let mut actions = sys::FileActions::new()?;
        match &ends.stdin {
            Some(stdin) => actions.dup2(stdin.as_raw_fd(), 0)?,
            None => actions.open_read(0, c"/dev/null")?,
        }
        // Every source fd is above CONTROL_FD (see `clear_of_targets`), so no dup2 here can
        // overwrite a later one's source, and none is a dup2 onto itself (which leaves
        // FD_CLOEXEC set in older glibc). The copies dup2 makes do not carry FD_CLOEXEC.
        actions.dup2(ends.stdout.as_raw_fd(), 1)?;
        actions.dup2(ends.stderr.as_raw_fd(), 2)?;
        actions.dup2(ends.control.as_raw_fd(), CONTROL_FD)?;
        actions.chdir(&self.cwd)?;
        let mut to_default = SigSet::empty();
        for signal in DEFAULT_SIGNALS {
            to_default.add(signal);
        }
        // Its own group, so the whole tree can be signalled and nothing reaches gaffer's group.
        let attr = sys::Attr::new_group(&SigSet::empty(), &to_default)?;
        sys::spawn(&self.executable, &actions, &attr, &self.argv, &self.envp)
    }
}

/// The parent's environment, then the spec's variables, then the `GAFFER_*` ones.
fn environment(spec: &AttemptSpec) -> BTreeMap<OsString, OsString> {
    // systemd's notify variables are gaffer's own: a task must not speak for it.
    let ours = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];
    let mut env: BTreeMap<OsString, OsString> =
        std::env::vars_os().filter(|(k, _)| !ours.iter().any(|o| k == o)).collect();
    env.extend(spec.env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))));
    let gaffer = [
        ("GAFFER_JOB", OsString::from(&spec.job)),
        ("GAFFER_JOB_RUN_ID", spec.job_run.to_string().into()),
        ("GAFFER_TASK", OsString::from(&spec.task)),
        ("GAFFER_TASK_RUN_ID", spec.task_run.to_string().into()),
        ("GAFFER_ATTEMPT", spec.attempt.to_string().into()),
        ("GAFFER_STATE_DIR", spec.state_dir.clone().into_os_string()),
        ("GAFFER_CONTROL_FD", CONTROL_FD.to_string().into()),
    ];
    env.extend(gaffer.into_iter().map(|(k, v)| (OsString::from(k), v)));
    env
}

/// Like `execvp`, a program name without a `/` is looked up along the task's `PATH` (glibc's
/// default when it has none), relative entries from its working directory. Done here rather
/// than by `posix_spawnp`, which would search gaffer's own `PATH` and do it in the child with
/// one failing `execve` per entry while the spawning thread waits; a `stat` here is cheaper.
/// Unlike `execvp`, a file without a `#!` line is not run through `sh` (`ENOEXEC`).
fn executable(program: &str, task_path: Option<&OsStr>, cwd: &Path) -> io::Result<CString> {
    if program.contains('/') {
        return c_string(program);
    }
    let mut denied = false;
    for dir in std::env::split_paths(task_path.unwrap_or(OsStr::new("/bin:/usr/bin"))) {
        // An empty entry means the working directory.
        let candidate = cwd.join(dir).join(program);
        if !candidate.is_file() {
            continue;
        }
        if nix::unistd::access(&candidate, AccessFlags::X_OK).is_ok() {
            return c_string(candidate.into_os_string().into_vec());
        }
        denied = true;
    }
    Err(io::Error::from_raw_os_error(if denied { libc::EACCES } else { libc::ENOENT }))
}

fn c_string(bytes: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, "an argument or environment variable contains a NUL byte")
    })
}

/// gaffer's ends: non-blocking, registered with tokio.
struct ParentEnds {
    stdin: Option<pipe::Sender>,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    control: pipe::Receiver,
}

/// The task's ends: blocking (a pipe's two ends are separate open file descriptions, so
/// O_NONBLOCK on gaffer's end does not reach them), O_CLOEXEC, every fd above `CONTROL_FD`.
struct ChildEnds {
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
    control: OwnedFd,
}

fn pipes(with_stdin: bool) -> io::Result<(ParentEnds, ChildEnds)> {
    let stdin = with_stdin.then(pipe_pair).transpose()?;
    let (stdout_read, stdout_write) = pipe_pair()?;
    let (stderr_read, stderr_write) = pipe_pair()?;
    let (control_read, control_write) = pipe_pair()?;
    let (stdin_write, stdin_read) = match stdin {
        Some((read, write)) => (Some(pipe::Sender::from_owned_fd_unchecked(nonblocking(write)?)?), Some(read)),
        None => (None, None),
    };
    let parent = ParentEnds {
        stdin: stdin_write,
        stdout: receiver(stdout_read)?,
        stderr: receiver(stderr_read)?,
        control: receiver(control_read)?,
    };
    let child = ChildEnds {
        stdin: stdin_read.map(clear_of_targets).transpose()?,
        stdout: clear_of_targets(stdout_write)?,
        stderr: clear_of_targets(stderr_write)?,
        control: clear_of_targets(control_write)?,
    };
    Ok((parent, child))
}

/// (read end, write end), both O_CLOEXEC: nothing of ours leaks into any task.
fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

fn nonblocking(fd: OwnedFd) -> io::Result<OwnedFd> {
    fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok(fd)
}

fn receiver(fd: OwnedFd) -> io::Result<pipe::Receiver> {
    pipe::Receiver::from_owned_fd_unchecked(nonblocking(fd)?)
}

/// Moves `fd` above the child's fds 0–3 (only needed when gaffer runs with some of 0–2 closed,
/// so that `pipe2` hands those out). Each copy takes the lowest free fd ≥ 3.
fn clear_of_targets(mut fd: OwnedFd) -> io::Result<OwnedFd> {
    while fd.as_raw_fd() <= CONTROL_FD {
        fd = fd.try_clone()?;
    }
    Ok(fd)
}

fn process_handle(pid: Pid) -> ProcessHandle {
    // posix_spawn returns a positive pid.
    let raw = pid.as_raw();
    let pid = raw.unsigned_abs();
    // Not reaped yet (only the supervisor waits), so /proc/<pid> is still there.
    ProcessHandle { pid, pgid: raw, start_ticks: start_ticks(pid).unwrap_or(0) }
}

/// Writes stdin in the background (it may exceed the pipe buffer), then closes it.
fn feed_stdin(pipe: Option<pipe::Sender>, stdin: Option<String>) {
    let (Some(mut pipe), Some(text)) = (pipe, stdin) else {
        return;
    };
    tokio::spawn(async move {
        // A task that exits without reading its stdin is not an error.
        let _ = pipe.write_all(text.as_bytes()).await;
    });
}

async fn read_output(pipe: pipe::Receiver, stdout: bool, tx: Sender<Msg>) {
    let mut reader = ChunkReader::new(pipe);
    loop {
        match reader.next_chunk(MAX_LOG_LINE).await {
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
async fn read_control(pipe: pipe::Receiver, tx: Sender<Msg>) {
    let mut reader = ChunkReader::new(pipe);
    let mut skipping = false;
    loop {
        let bytes = match reader.next_chunk(MAX_CONTROL_LINE).await {
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
    json: Option<AgentJson>,
    /// Outputs the task set itself on fd 3: an agent result's outputs of the same name do not
    /// replace them.
    own_outputs: std::collections::BTreeSet<String>,
    last_activity: Option<Instant>,
    outputs: OutputBudget,
}

impl Attempt {
    fn new(
        log: CappedLog,
        events: UnboundedSender<AttemptEvent>,
        json: Option<AgentJson>,
        output_limits: OutputLimits,
    ) -> Self {
        let own_outputs = Default::default();
        let outputs = OutputBudget::new(output_limits);
        Self { log, log_failed: false, events, parser: Parser::new(), json, own_outputs, last_activity: None, outputs }
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
        match &event {
            AttemptEvent::Warning(msg) => self.write_log(format!("[gaffer] warning: {msg}\n").as_bytes()),
            AttemptEvent::Output { key, .. } => {
                self.own_outputs.insert(key.clone());
            }
            _ => {}
        }
        self.send(event);
    }

    fn warn(&mut self, msg: String) {
        self.event(AttemptEvent::Warning(crate::sanitize::sanitize(&msg)));
    }

    /// The agent's result, before the exit is reported: costs, outputs, warnings, failure.
    fn agent_outcome(&mut self, outcome: super::agent_json::AgentOutcome) {
        for warning in outcome.warnings {
            self.warn(warning);
        }
        for cost in outcome.costs {
            self.send(AttemptEvent::Cost(cost));
        }
        for (key, value) in outcome.outputs {
            if !self.own_outputs.contains(&key) {
                self.send(AttemptEvent::Output { key, value });
            }
        }
        if let Some(error) = outcome.error {
            self.write_log(format!("[gaffer] the agent reported an error: {error}\n").as_bytes());
            self.send(AttemptEvent::AgentError(error));
        }
    }

    /// Every event leaves through here, so every output (fd 3, an agent's result) is held to
    /// the attempt's output caps.
    fn send(&mut self, event: AttemptEvent) {
        if let AttemptEvent::Output { key, value } = &event
            && let Err(why) = self.outputs.admit(key, value.len())
        {
            return self.warn(why);
        }
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

    /// The first failed write makes the attempt's log incomplete; a warning on the attempt says
    /// so (not written to the log, which cannot take it).
    fn note_log_error(&mut self, result: io::Result<()>) {
        if let Err(e) = result
            && !self.log_failed
        {
            self.log_failed = true;
            self.send(AttemptEvent::Warning(format!("the log is incomplete: writing it failed: {e}")));
        }
    }

    /// Everything that must happen before `done` resolves.
    fn finish(mut self) {
        if let Some(event) = self.parser.finish() {
            self.event(event);
        }
        if let Some(json) = self.json.take() {
            self.agent_outcome(json.finish());
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
    leftovers: Leftovers,
) -> AttemptExit {
    let mut clearing = Clearing::Pending(leftovers);
    let status = pump(&mut child, pgid, &mut rx, &mut attempt, &mut clearing).await;
    for reader in readers {
        reader.abort();
    }
    clearing.finish(pgid, &mut attempt).await;
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
async fn pump(
    child: &mut Child,
    pgid: i32,
    rx: &mut Receiver<Msg>,
    attempt: &mut Attempt,
    clearing: &mut Clearing,
) -> io::Result<ExitStatus> {
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
                // An escapee still holding the pipes is killed now, not after the drain timeout.
                clearing.start(pgid);
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

/// What may be left of an attempt once its leader exited and its group was SIGKILLed: group
/// members the kernel has not finished killing, and processes that left the group (`setsid`,
/// a double fork) but still carry the attempt's `GAFFER_*` environment. Both are gone before
/// the attempt is reported ended, so nothing of an ended attempt still runs — not after a
/// graceful stop either.
struct Leftovers {
    marker: Marker,
    /// The newest pid before the spawn: the attempt's processes have newer ones.
    pids_after: Option<u32>,
    started: Instant,
}

impl Leftovers {
    /// Past this age the pid counter may have wrapped (32768 pids on many machines), so the
    /// search looks at every process: a few milliseconds, against seconds of running.
    const PID_WINDOW_FOR: Duration = Duration::from_secs(5);

    fn new(spec: &AttemptSpec) -> Self {
        Leftovers {
            marker: Marker::new(&spec.state_dir, spec.task_run, spec.attempt),
            pids_after: group::last_pid(),
            started: Instant::now(),
        }
    }

    /// Waits for the group to be gone, then has the sweeper find and kill the escapees.
    async fn clear(self, pgid: i32) -> Cleared {
        let live = group::wait_group_gone(pgid, group::GONE_WITHIN).await;
        let candidates = match self.pids_after {
            Some(after) if self.started.elapsed() < Self::PID_WINDOW_FOR => {
                group::Candidates::Since { after, upto: after }
            }
            _ => group::Candidates::All,
        };
        Cleared { live, killed: sweeper::sweep(self.marker, candidates).await }
    }
}

/// What clearing up after an attempt found.
#[derive(Default)]
struct Cleared {
    /// Group members still live after SIGKILL and [`group::GONE_WITHIN`].
    live: Vec<u32>,
    /// Escapees killed by their environment.
    killed: usize,
}

/// Clearing up starts as soon as the leader exited and runs while the pipes drain.
enum Clearing {
    Pending(Leftovers),
    Started(JoinHandle<Cleared>),
    Done,
}

impl Clearing {
    fn start(&mut self, pgid: i32) {
        if !matches!(self, Clearing::Pending(_)) {
            return;
        }
        if let Clearing::Pending(leftovers) = std::mem::replace(self, Clearing::Done) {
            *self = Clearing::Started(tokio::spawn(leftovers.clear(pgid)));
        }
    }

    /// Waits for the clearing (starting it if the leader's exit came last) and says on the
    /// attempt what it had to do.
    async fn finish(mut self, pgid: i32, attempt: &mut Attempt) {
        self.start(pgid);
        let Clearing::Started(task) = self else { return };
        let cleared = task.await.unwrap_or_default();
        if !cleared.live.is_empty() {
            attempt.warn(format!(
                "process(es) {:?} of the task's group still ran {} s after SIGKILL; not waited for",
                cleared.live,
                group::GONE_WITHIN.as_secs()
            ));
        }
        if cleared.killed > 0 {
            attempt.warn(format!(
                "killed {} process(es) that had left the task's process group (setsid or a double fork) \
                 and still carried its GAFFER_* environment; remove GAFFER_TASK_RUN_ID from a daemon's \
                 environment to let it outlive the task",
                cleared.killed
            ));
        }
    }
}

fn exit_of(status: ExitStatus) -> AttemptExit {
    AttemptExit { exit_code: status.code(), signal: status.signal() }
}

/// The spawned leader, until it is reaped. Nothing else in gaffer waits for child processes
/// (no `waitpid(-1)`, SIGCHLD not ignored), so its pid stays ours, as a zombie at worst, until
/// `wait` reaps it.
struct Child {
    pid: Pid,
    waiter: Waiter,
}

enum Waiter {
    /// Readable once the process has exited (Linux ≥ 5.3).
    PidFd(AsyncFd<OwnedFd>),
    /// Without pidfds: a blocking `waitpid` on tokio's blocking pool, one thread per task.
    Blocking(JoinHandle<io::Result<ExitStatus>>),
    Reaped,
}

impl Child {
    fn new(pid: Pid) -> Self {
        let waiter = match sys::pidfd(pid) {
            Ok(fd) => {
                sweeper::register_leader(pid.as_raw() as u32);
                Waiter::PidFd(fd)
            }
            Err(e) => {
                tracing::debug!(error = %e, "no pidfd for the task; waiting for it on a blocking thread");
                Self::blocking(pid)
            }
        };
        Self { pid, waiter }
    }

    fn blocking(pid: Pid) -> Waiter {
        Waiter::Blocking(tokio::task::spawn_blocking(move || {
            loop {
                match sys::wait(pid, false) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(None) => {}
                    Ok(Some(status)) => return Ok(status),
                    Err(e) => return Err(e),
                }
            }
        }))
    }

    /// Reaps the process once it has exited. Cancel-safe (nothing is lost when the future is
    /// dropped before it completes); after it completed once, later calls fail.
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        let result = match &mut self.waiter {
            Waiter::PidFd(fd) => loop {
                let mut ready = fd.readable().await?;
                // It has exited: its pid must not vouch for anything once reaped.
                sweeper::unregister_leader(self.pid.as_raw() as u32);
                match sys::wait(self.pid, true) {
                    Ok(Some(status)) => break Ok(status),
                    Ok(None) => ready.clear_ready(),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            },
            Waiter::Blocking(handle) => handle.await.unwrap_or_else(|e| Err(io::Error::other(e))),
            Waiter::Reaped => return Err(io::Error::other("the process was already reaped")),
        };
        self.waiter = Waiter::Reaped;
        result
    }
}

impl Drop for Child {
    /// Only when the supervisor is dropped before the leader was reaped (the runtime shutting
    /// down): reap it if it has exited; if not, it stays a zombie after exiting, until gaffer
    /// exits.
    fn drop(&mut self) {
        if let Waiter::PidFd(_) = self.waiter {
            sweeper::unregister_leader(self.pid.as_raw() as u32);
            let _ = sys::wait(self.pid, true);
        }
    }
}

/// Sets FD_CLOEXEC on `fd`; true when it was not set before.
pub(super) fn set_close_on_exec(fd: RawFd) -> io::Result<bool> {
    sys::set_close_on_exec(fd)
}

/// The crate's FFI (besides `crate::sched`'s `sched_setattr`): `posix_spawn` with its attribute and file-action objects,
/// `pidfd_open` (and registering the pidfd with tokio), `waitpid`, and `fcntl` on a raw
/// inherited fd. Each call is a plain libc call on memory owned here. nix's spawn wrappers cannot be used: they have no
/// `posix_spawn_file_actions_addchdir_np` (glibc ≥ 2.29, so gaffer needs at least that glibc)
/// and do not expose their raw objects to add it.
#[allow(unsafe_code)]
mod sys {
    use std::ffi::{CStr, CString, c_char};
    use std::io;
    use std::mem::MaybeUninit;
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use nix::errno::Errno;
    use nix::sys::signal::SigSet;
    use nix::unistd::Pid;
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    /// The posix_spawn functions return an error number instead of setting errno.
    fn check(rc: libc::c_int) -> io::Result<()> {
        if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) }
    }

    pub struct FileActions(libc::posix_spawn_file_actions_t);

    impl FileActions {
        pub fn new() -> io::Result<Self> {
            let mut actions = MaybeUninit::uninit();
            // SAFETY: init writes the object through a valid pointer.
            check(unsafe { libc::posix_spawn_file_actions_init(actions.as_mut_ptr()) })?;
            // SAFETY: init succeeded, so the object is initialized. It holds no pointer to
            // itself, so it may be moved.
            Ok(Self(unsafe { actions.assume_init() }))
        }

        pub fn dup2(&mut self, fd: RawFd, target: RawFd) -> io::Result<()> {
            // SAFETY: `self.0` is initialized; the call only records the two numbers.
            check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, fd, target) })
        }

        pub fn open_read(&mut self, target: RawFd, path: &CStr) -> io::Result<()> {
            // SAFETY: `self.0` is initialized; glibc copies `path`, a valid C string.
            check(unsafe {
                libc::posix_spawn_file_actions_addopen(&mut self.0, target, path.as_ptr(), libc::O_RDONLY, 0)
            })
        }

        pub fn chdir(&mut self, dir: &CStr) -> io::Result<()> {
            // SAFETY: `self.0` is initialized; glibc copies `dir`, a valid C string.
            check(unsafe { libc::posix_spawn_file_actions_addchdir_np(&mut self.0, dir.as_ptr()) })
        }
    }

    impl Drop for FileActions {
        fn drop(&mut self) {
            // SAFETY: `self.0` was initialized by `new` and is destroyed only here.
            unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
        }
    }

    pub struct Attr(libc::posix_spawnattr_t);

    impl Attr {
        /// Process group = the child's own pid, this signal mask, these signals at SIG_DFL.
        pub fn new_group(mask: &SigSet, to_default: &SigSet) -> io::Result<Self> {
            let mut attr = MaybeUninit::uninit();
            // SAFETY: init writes the object through a valid pointer.
            check(unsafe { libc::posix_spawnattr_init(attr.as_mut_ptr()) })?;
            // SAFETY: init succeeded; the object holds no pointer to itself. From here on
            // `Drop` destroys it on every path.
            let mut attr = Self(unsafe { attr.assume_init() });
            let flags = libc::POSIX_SPAWN_SETPGROUP | libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
            let flags = libc::c_short::try_from(flags).map_err(io::Error::other)?;
            // SAFETY (the four calls): `attr.0` is initialized; the setters copy plain values
            // and the pointed-to sigsets, which are valid for the call.
            check(unsafe { libc::posix_spawnattr_setflags(&mut attr.0, flags) })?;
            check(unsafe { libc::posix_spawnattr_setpgroup(&mut attr.0, 0) })?;
            check(unsafe { libc::posix_spawnattr_setsigmask(&mut attr.0, mask.as_ref()) })?;
            check(unsafe { libc::posix_spawnattr_setsigdefault(&mut attr.0, to_default.as_ref()) })?;
            Ok(attr)
        }
    }

    impl Drop for Attr {
        fn drop(&mut self) {
            // SAFETY: `self.0` was initialized by `new_group` and is destroyed only here.
            unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
        }
    }

    /// glibc reports exec's own error (ENOENT, EACCES, …) as the result.
    pub fn spawn(
        program: &CStr,
        actions: &FileActions,
        attr: &Attr,
        argv: &[CString],
        envp: &[CString],
    ) -> io::Result<Pid> {
        let argv = null_terminated(argv);
        let envp = null_terminated(envp);
        let mut pid: libc::pid_t = 0;
        // SAFETY: every pointer is valid for the call: `program` and the strings behind `argv`
        // and `envp` (both NULL-terminated arrays) are borrowed for its duration, `actions` and
        // `attr` are initialized, `pid` is a local. posix_spawn does not write through the
        // `*mut` string pointers (the C signature just lacks the const).
        check(unsafe {
            libc::posix_spawn(&mut pid, program.as_ptr(), &actions.0, &attr.0, argv.as_ptr(), envp.as_ptr())
        })?;
        Ok(Pid::from_raw(pid))
    }

    fn null_terminated(strings: &[CString]) -> Vec<*mut c_char> {
        strings.iter().map(|s| s.as_ptr().cast_mut()).chain(std::iter::once(std::ptr::null_mut())).collect()
    }

    /// A pidfd for our own unreaped child (O_CLOEXEC; `ENOSYS` before Linux 5.3), registered
    /// with tokio's reactor: it becomes readable when the process has exited.
    pub fn pidfd(pid: Pid) -> io::Result<AsyncFd<OwnedFd>> {
        // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        let fd = RawFd::try_from(Errno::result(fd)?).map_err(io::Error::other)?;
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an `OwnedFd` is open, and its `as_raw_fd` returns the same fd, until the
        // `AsyncFd` that owns it drops it.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
    }

    /// FD_CLOEXEC on a descriptor gaffer did not open itself; true when it changed.
    pub fn set_close_on_exec(fd: RawFd) -> io::Result<bool> {
        // SAFETY (both calls): fcntl on an integer; a closed or invalid fd fails with EBADF,
        // and F_GETFD/F_SETFD touch only that descriptor's flag.
        let flags = Errno::result(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
        if flags & libc::FD_CLOEXEC != 0 {
            return Ok(false);
        }
        Errno::result(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
        Ok(true)
    }

    /// `waitpid` for one child: `None` while it runs (with `nohang`). Used instead of nix's,
    /// which fails to decode a death by a real-time signal after it has reaped the process.
    pub fn wait(pid: Pid, nohang: bool) -> io::Result<Option<ExitStatus>> {
        let mut status: libc::c_int = 0;
        let flags = if nohang { libc::WNOHANG } else { 0 };
        // SAFETY: `status` is a local the call writes to.
        let rc = unsafe { libc::waitpid(pid.as_raw(), &mut status, flags) };
        match Errno::result(rc)? {
            0 => Ok(None),
            _ => Ok(Some(ExitStatus::from_raw(status))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fallback for kernels without pidfds.
    #[tokio::test]
    #[allow(clippy::zombie_processes)] // reaped by the waiter under test, not by std
    async fn blocking_waiter_reaps() {
        let std_child = std::process::Command::new("sh").args(["-c", "exit 5"]).spawn().expect("spawn");
        let pid = Pid::from_raw(i32::try_from(std_child.id()).expect("pid"));
        let mut child = Child { pid, waiter: Child::blocking(pid) };
        let status = child.wait().await.expect("wait");
        assert_eq!(status.code(), Some(5));
        assert!(child.wait().await.is_err(), "reaped once");
    }

    #[test]
    fn fds_are_moved_above_the_control_fd() {
        let (read, write) = pipe_pair().expect("pipe");
        let moved = clear_of_targets(write).expect("move");
        assert!(moved.as_raw_fd() > CONTROL_FD);
        drop(read);
    }
}
