//! Ships every attempt's log into a store shared by several nodes (`Store::ship_log`), so
//! `logs` works from any node: an [`Executor`] around the real one that starts shipping once
//! the attempt's log exists and whose `done` resolves after the last of it is stored. With redb
//! the store ships nothing and the attempt is the inner executor's, untouched.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::executor::{AttemptEvent, AttemptSpec, Executor, ProcessHandle, RunningAttempt, SpawnError};
use crate::store::{AttemptLog, StoreHandle};

pub struct ShippingExecutor {
    inner: Arc<dyn Executor>,
    store: StoreHandle,
}

/// `inner`, shipping the logs of the attempts it starts into `store`.
pub fn wrap(inner: Arc<dyn Executor>, store: &StoreHandle) -> Arc<dyn Executor> {
    Arc::new(ShippingExecutor { inner, store: store.clone() })
}

impl Executor for ShippingExecutor {
    fn spawn(&self, spec: AttemptSpec, events: UnboundedSender<AttemptEvent>) -> Result<RunningAttempt, SpawnError> {
        let log = ShippedLog::of(&spec);
        Ok(self.ship(log, self.inner.spawn(spec, events)?))
    }

    fn spawn_once_durable(
        &self,
        spec: AttemptSpec,
        events: UnboundedSender<AttemptEvent>,
        durable: &mut dyn FnMut() -> bool,
    ) -> Option<Result<RunningAttempt, SpawnError>> {
        let log = ShippedLog::of(&spec);
        let started = self.inner.spawn_once_durable(spec, events, durable)?;
        Some(started.map(|running| self.ship(log, running)))
    }

    fn blocks(&self) -> bool {
        self.inner.blocks()
    }

    fn terminate(&self, process: ProcessHandle, grace: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        self.inner.terminate(process, grace)
    }

    fn kill_now(&self, process: ProcessHandle) {
        self.inner.kill_now(process)
    }

    fn is_running(&self, process: &ProcessHandle) -> bool {
        self.inner.is_running(process)
    }

    fn kill_orphans(&self, state_dir: &Path, task_run: u64, attempt: u32, process: Option<ProcessHandle>) {
        self.inner.kill_orphans(state_dir, task_run, attempt, process)
    }

    fn kill_left_behind(&self, state_dir: &Path) -> usize {
        self.inner.kill_left_behind(state_dir)
    }
}

/// What shipping needs to know of an attempt's log, taken before the spec goes to the executor.
struct ShippedLog {
    job_run: u64,
    task_run: u64,
    attempt: u32,
    state_dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl ShippedLog {
    fn of(spec: &AttemptSpec) -> Self {
        ShippedLog {
            job_run: spec.job_run,
            task_run: spec.task_run,
            attempt: spec.attempt,
            state_dir: spec.state_dir.clone(),
            path: spec.log_path.clone(),
        }
    }
}

impl ShippingExecutor {
    /// `running`, whose `done` resolves once the last of its log is shipped.
    fn ship(&self, log: ShippedLog, running: RunningAttempt) -> RunningAttempt {
        if running.process.is_none() {
            return running; // no process, no log (the no-op executor of benchmarks)
        }
        let ShippedLog { job_run, task_run, attempt, state_dir, path } = &log;
        let log = AttemptLog { job_run: *job_run, task_run: *task_run, attempt: *attempt, state_dir, path };
        let Some(shipping) = self.store.ship_log(log) else { return running };
        let done = running.done;
        let done = async move {
            let exit = done.await;
            shipping.finish().await;
            exit
        };
        RunningAttempt { process: running.process, done: Box::pin(done) }
    }
}
