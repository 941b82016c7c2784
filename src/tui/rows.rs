//! The screen's own types: task runs and job runs as the TUI keeps them, built from the wire's
//! views (`EngineSnapshot`, a loaded job run) and kept current by events. The TUI never sees the
//! store's records, so the store can change without touching the screen.

use std::collections::BTreeMap;

use crate::config::TransitionOn;
use crate::model::{FailReason, JobState, TaskState};
use crate::report::{JobRunView, TaskRunView};

/// One task run on screen.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRun {
    pub id: u64,
    pub job_run: u64,
    pub job: String,
    pub task: String,
    pub state: TaskState,
    pub queue: String,
    pub priority: u8,
    /// Number of the latest attempt started; 0 before the first.
    pub attempt: u32,
    /// Attempt number that opened the current series (a retry by hand opens a new one).
    pub series_start: u32,
    pub max_attempts: u32,
    pub not_before_ms: Option<u64>,
    pub outputs: BTreeMap<String, String>,
    pub exit_code: Option<i32>,
    pub cost_usd_micros: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub reason: Option<FailReason>,
    pub detail: Option<String>,
    pub progress: Option<String>,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    pub iteration: u32,
    pub item_index: Option<u32>,
    /// A compensation (saga) rather than the task's own run.
    pub compensation: bool,
    /// For a compensation: the task run it undoes.
    pub compensates: Option<u64>,
    /// A fanned-out task's own run (kind `fanout`): the group of its items, not counted as a
    /// task run of its own.
    pub fanout: bool,
    /// For a task run a transition started: where it came from.
    pub reached_by: Option<ReachedBy>,
    /// Node labels a node must have to start it (`requires`).
    pub requires: Vec<String>,
}

/// How a transition reached a task run (SPEC §2.2): the task run it came from and the `on`
/// that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReachedBy {
    pub from_task_run: u64,
    pub on: TransitionOn,
}

impl TaskRun {
    /// A task run known from an event only: pending, no attempt yet, with a new task run's
    /// defaults (the wire's `TaskRunView::pending`).
    pub fn pending(id: u64, job_run: u64, job: &str, task: &str, at_ms: u64) -> TaskRun {
        TaskRun::from(TaskRunView::pending(id, job_run, job, task, at_ms))
    }

    /// Attempts used in the current series, what `max_attempts` is compared with.
    pub fn attempts_in_series(&self) -> u32 {
        if self.attempt < self.series_start { 0 } else { self.attempt - self.series_start + 1 }
    }

    /// Its task as people read it: `review#2`, `fetch[3]` (`model::fanout::label`).
    pub fn label(&self) -> String {
        crate::model::fanout::label(&self.task, self.iteration, self.item_index, self.compensation)
    }
}

impl From<TaskRunView> for TaskRun {
    fn from(v: TaskRunView) -> TaskRun {
        // The wire says how many attempts the series used; the screen counts from its start.
        let series_start = (v.attempt + 1).saturating_sub(v.attempts_in_series);
        let compensation = v.is_compensation();
        let fanout = v.kind == crate::store::TaskRunKind::FanOut;
        TaskRun {
            id: v.id,
            job_run: v.job_run,
            job: v.job,
            task: v.task,
            state: v.state,
            queue: v.queue,
            priority: v.priority,
            attempt: v.attempt,
            series_start,
            max_attempts: v.max_attempts,
            not_before_ms: v.not_before_ms,
            outputs: v.outputs,
            exit_code: v.exit_code,
            cost_usd_micros: v.cost_usd_micros,
            input_tokens: v.input_tokens,
            output_tokens: v.output_tokens,
            reason: v.reason,
            detail: v.detail,
            progress: v.progress,
            created_at_ms: v.created_at_ms,
            started_at_ms: v.started_at_ms,
            ended_at_ms: v.ended_at_ms,
            iteration: v.iteration,
            item_index: v.item_index,
            compensation,
            compensates: v.compensates,
            fanout,
            reached_by: v
                .reached_by
                .and_then(|by| Some(ReachedBy { from_task_run: by.from_task_run, on: TransitionOn::parse(&by.on)? })),
            requires: v.requires,
        }
    }
}

/// One job run on screen.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRun {
    pub id: u64,
    pub job: String,
    pub params: BTreeMap<String, String>,
    pub state: JobState,
    pub reason: Option<String>,
    pub cost_usd_micros: u64,
    pub created_at_ms: u64,
    pub ended_at_ms: Option<u64>,
}

impl JobRun {
    /// A job run known from an event only, running since `at_ms`.
    pub fn running(id: u64, job: &str, at_ms: u64) -> JobRun {
        JobRun {
            id,
            job: job.to_string(),
            params: BTreeMap::new(),
            state: JobState::Running,
            reason: None,
            cost_usd_micros: 0,
            created_at_ms: at_ms,
            ended_at_ms: None,
        }
    }
}

impl From<JobRunView> for JobRun {
    fn from(v: JobRunView) -> JobRun {
        JobRun {
            id: v.id,
            job: v.job,
            params: v.params,
            state: v.state,
            reason: v.reason,
            cost_usd_micros: v.cost_usd_micros,
            created_at_ms: v.created_at_ms,
            ended_at_ms: v.ended_at_ms,
        }
    }
}
