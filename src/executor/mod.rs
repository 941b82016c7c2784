//! Runs attempts. The engine only sees [`Executor`], [`RunningAttempt`] and the event stream;
//! how a process is started, logged and killed stays in here.

pub mod agent_json;
mod emit;
mod group;
mod hook;
mod json_values;
mod lines;
mod local;
mod logfile;
mod outputs;
pub mod protocol;
pub mod resources;
mod sweeper;
pub mod types;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

pub use emit::emit;
pub use group::Candidates;
pub use hook::{HookOutcome, HookSpec, run_hook};
pub use types::*;

pub trait Executor: Send + Sync + 'static {
    /// Starts the attempt; returns once the process exists (or could not be started).
    /// Must be called inside a tokio runtime (a current-thread one is fine).
    fn spawn(&self, spec: AttemptSpec, events: UnboundedSender<AttemptEvent>) -> Result<RunningAttempt, SpawnError>;

    /// [`Executor::spawn`] for an attempt whose `running` commit may still be in flight:
    /// `durable()` blocks until that commit's outcome is known and says whether it is durable.
    /// Nothing starts when it is not (`None`; SPEC §7). This waits, then spawns; an executor
    /// with work that needs no commit (a log file, pipes) does that first, so that it overlaps
    /// the commit's fsyncs.
    fn spawn_once_durable(
        &self,
        spec: AttemptSpec,
        events: UnboundedSender<AttemptEvent>,
        durable: &mut dyn FnMut() -> bool,
    ) -> Option<Result<RunningAttempt, SpawnError>> {
        durable().then(|| self.spawn(spec, events))
    }

    /// Whether `spawn` blocks its thread (for the length of a process start) and so belongs on
    /// a spawn thread (see [`spawn_off_thread`]) rather than the engine's.
    fn blocks(&self) -> bool {
        true
    }

    /// Stops an attempt: SIGTERM to its process group, SIGKILL after `grace`. Resolves once the
    /// group is gone or was SIGKILLed; fine for a group already gone.
    fn terminate(&self, process: ProcessHandle, grace: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// SIGKILLs an attempt's process group at once (after a fatal fault nothing can be recorded,
    /// so there is no grace period to wait through).
    fn kill_now(&self, process: ProcessHandle);

    /// Whether the attempt's leader still runs: not exited, and not a later process that reused
    /// its pid.
    fn is_running(&self, process: &ProcessHandle) -> bool;

    /// Crash recovery: kills what is left of attempt `attempt` of `task_run`, which an earlier
    /// gaffer on this state dir recorded running — its group, if `process` is still that same
    /// process, and every process carrying the attempt's environment (a pid never recorded,
    /// `setsid` escapees). Blocks while it searches.
    fn kill_orphans(&self, state_dir: &Path, task_run: u64, attempt: u32, process: Option<ProcessHandle>);

    /// A cluster node starting on `state_dir`, which it holds locked and on which it has
    /// started nothing yet: kills every process carrying an attempt's environment of that
    /// state dir — left by an earlier process on it that was killed (kill -9), whose node's
    /// attempts are being run again elsewhere. Returns how many. Blocks while it searches.
    fn kill_left_behind(&self, _state_dir: &Path) -> usize {
        0
    }
}

/// How many attempts may be starting at once. A start blocks its thread until the child has
/// exec'd (`posix_spawn`'s vfork) after creating the log and the pipes: done on the engine's
/// one thread, 1,000 starts queued behind each other and took seconds. A few threads let them
/// overlap without one blocking-pool thread per waiting worker.
const SPAWN_THREADS: usize = 4;
static SPAWN_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(SPAWN_THREADS);

/// Resolves once the commit that made an attempt `running` is durable (`true`), or failed to
/// become so (`false`): SPEC §7, no process before that commit.
pub type Durable = Pin<Box<dyn Future<Output = bool> + Send>>;

/// [`Executor::spawn`] on one of at most [`SPAWN_THREADS`] threads of tokio's blocking pool
/// (which enter the runtime, as `spawn` needs), so that the calling thread goes on running
/// actors meanwhile. Executors that do not block are called right here.
///
/// With `durable`, the spawn waits for it on that thread and starts nothing (`None`) when it
/// says the commit failed. The store thread's answer then wakes the spawn thread itself: the
/// process starts without waiting for the engine's thread to wake, take the answer and hand
/// the spawn over (one thread wake-up fewer on the enqueue → start path), and the thread was
/// woken while the commit was being written, not after: it makes the log and the pipes
/// meanwhile ([`Executor::spawn_once_durable`]).
pub async fn spawn_off_thread(
    executor: Arc<dyn Executor>,
    spec: AttemptSpec,
    events: UnboundedSender<AttemptEvent>,
    durable: Option<Durable>,
) -> Option<Result<RunningAttempt, SpawnError>> {
    if !executor.blocks() {
        if let Some(durable) = durable
            && !durable.await
        {
            return None;
        }
        return Some(executor.spawn(spec, events));
    }
    // Never closed, so acquiring cannot fail.
    let _slot = SPAWN_SLOTS.acquire().await;
    tokio::task::spawn_blocking(move || {
        crate::sched::prefer_short_waits();
        // A blocking-pool thread is outside any task, so it may block on a future; the store's
        // answer needs no I/O driver of the runtime to arrive.
        match durable {
            Some(durable) => {
                let mut durable = Some(durable);
                let mut wait = || durable.take().is_some_and(|d| tokio::runtime::Handle::current().block_on(d));
                executor.spawn_once_durable(spec, events, &mut wait)
            }
            None => Some(executor.spawn(spec, events)),
        }
    })
    .await
    .unwrap_or_else(|e| Some(Err(SpawnError::Setup(std::io::Error::other(format!("the spawn thread failed: {e}"))))))
}

pub struct RunningAttempt {
    /// `None` for executors without a process (the no-op one).
    pub process: Option<ProcessHandle>,
    /// Resolves when the leader exited, the rest of its group is gone, and every output and
    /// fd-3 line was read and logged. The attempt keeps being supervised if this is dropped.
    pub done: Pin<Box<dyn Future<Output = AttemptExit> + Send>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start `{program}`: working directory {} does not exist or is not a directory", cwd.display())]
    CwdMissing { program: String, cwd: PathBuf },
    #[error("cannot start `{program}` in {}: {source}", cwd.display())]
    Start { program: String, cwd: PathBuf, source: std::io::Error },
    #[error("the command is empty (`args` needs at least the program)")]
    EmptyCommand,
    #[error("cannot create the attempt log {}: {source}", path.display())]
    Log { path: PathBuf, source: std::io::Error },
    #[error("cannot set up the attempt's pipes: {0}")]
    Setup(std::io::Error),
}

impl SpawnError {
    /// The machine was out of descriptors, processes or memory: the attempt could not start
    /// through no fault of the task, and may well start a little later.
    pub fn is_resource_exhaustion(&self) -> bool {
        match self {
            SpawnError::Start { source, .. } | SpawnError::Log { source, .. } | SpawnError::Setup(source) => {
                resources::is_exhaustion(source)
            }
            SpawnError::CwdMissing { .. } | SpawnError::EmptyCommand => false,
        }
    }
}

/// Runs attempts as local process groups.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalExecutor;

impl Executor for LocalExecutor {
    fn spawn(&self, spec: AttemptSpec, events: UnboundedSender<AttemptEvent>) -> Result<RunningAttempt, SpawnError> {
        local::spawn(spec, events)
    }

    fn spawn_once_durable(
        &self,
        spec: AttemptSpec,
        events: UnboundedSender<AttemptEvent>,
        durable: &mut dyn FnMut() -> bool,
    ) -> Option<Result<RunningAttempt, SpawnError>> {
        local::spawn_once_durable(spec, events, durable)
    }

    fn terminate(&self, process: ProcessHandle, grace: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(group::terminate_group(process, grace))
    }

    fn kill_now(&self, process: ProcessHandle) {
        group::kill_group_now(process.pgid);
    }

    fn is_running(&self, process: &ProcessHandle) -> bool {
        group::is_still_running(process)
    }

    fn kill_orphans(&self, state_dir: &Path, task_run: u64, attempt: u32, process: Option<ProcessHandle>) {
        if let Some(process) = process.filter(group::is_same_process_alive) {
            group::kill_group_now(process.pgid);
        }
        group::kill_attempt_processes(state_dir, task_run, attempt, Candidates::All);
    }

    fn kill_left_behind(&self, state_dir: &Path) -> usize {
        group::kill_state_dir_processes(state_dir)
    }
}

/// For benchmarks of the engine: no process, no log, no events, success at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopExecutor;

impl Executor for NoopExecutor {
    fn spawn(&self, _spec: AttemptSpec, _events: UnboundedSender<AttemptEvent>) -> Result<RunningAttempt, SpawnError> {
        let exit = AttemptExit { exit_code: Some(0), signal: None };
        Ok(RunningAttempt { process: None, done: Box::pin(std::future::ready(exit)) })
    }

    fn blocks(&self) -> bool {
        false
    }

    fn terminate(&self, _process: ProcessHandle, _grace: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::ready(()))
    }

    /// It starts no process, so it has none to kill.
    fn kill_now(&self, _process: ProcessHandle) {}

    fn is_running(&self, _process: &ProcessHandle) -> bool {
        false
    }

    fn kill_orphans(&self, _state_dir: &Path, _task_run: u64, _attempt: u32, _process: Option<ProcessHandle>) {}
}
