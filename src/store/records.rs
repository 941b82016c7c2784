//! What is stored, one record per row. Every value on disk starts with a version byte so a later
//! gaffer can read an older file (see `codec`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::codec::{Stored, body_of};
use super::{ScheduleState, StoreError};
use crate::model::{FailReason, JobState, TaskState};

impl Stored for JobRunRecord {}
impl Stored for TaskRunRecord {}
impl Stored for DefinitionRecord {}
impl Stored for CacheEntry {}
impl Stored for ScheduleState {}

/// One execution of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRunRecord {
    pub id: u64,
    pub job: String,
    /// Key of the workflow source in `definitions`: a run keeps the definition it started with.
    pub definition: u64,
    pub params: BTreeMap<String, String>,
    pub state: JobState,
    pub reason: Option<String>,
    pub cost_usd_micros: u64,
    pub created_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub cancel_requested: bool,
}

/// One task inside one job run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRunRecord {
    pub id: u64,
    pub job_run: u64,
    pub job: String,
    pub task: String,
    /// Index of the task in its job's file order (the graph's index).
    pub task_index: u32,
    pub state: TaskState,
    pub queue: String,
    pub priority: u8,
    /// Number of the latest attempt started; 0 before the first.
    pub attempt: u32,
    /// Attempt number that opened the current series (a dead-letter retry opens a new one).
    pub series_start: u32,
    pub max_attempts: u32,
    /// When `queued`: when it entered the queue; the queue order and `queue_timeout` use it.
    pub queued_at_ms: Option<u64>,
    /// Ties between equal priorities go to the lower sequence.
    pub enqueue_seq: u64,
    /// The task run's one timer. When `retrying`: the retry may not start before this. When
    /// `waiting` with a `wait_timeout`: it is dead-lettered at this time unless signalled.
    pub not_before_ms: Option<u64>,
    pub outputs: BTreeMap<String, String>,
    pub exit_code: Option<i32>,
    pub cost_usd_micros: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub reason: Option<FailReason>,
    /// Human detail for the reason (exit code, the spawn error, who cancelled).
    pub detail: Option<String>,
    pub progress: Option<String>,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
}

impl TaskRunRecord {
    /// A task run as created with its job run: pending, no attempt yet, in the default queue at
    /// priority 50 with 3 attempts (set the task's own with struct update syntax).
    pub fn pending(id: u64, job_run: u64, job: &str, task: &str, now_ms: u64) -> TaskRunRecord {
        TaskRunRecord {
            id,
            job_run,
            job: job.to_string(),
            task: task.to_string(),
            task_index: 0,
            state: TaskState::Pending,
            queue: "default".to_string(),
            priority: 50,
            attempt: 0,
            series_start: 1,
            max_attempts: 3,
            queued_at_ms: None,
            enqueue_seq: 0,
            not_before_ms: None,
            outputs: BTreeMap::new(),
            exit_code: None,
            cost_usd_micros: 0,
            input_tokens: 0,
            output_tokens: 0,
            reason: None,
            detail: None,
            progress: None,
            created_at_ms: now_ms,
            started_at_ms: None,
            ended_at_ms: None,
        }
    }

    /// Attempts used in the current series, what `max_attempts` is compared with.
    pub fn attempts_in_series(&self) -> u32 {
        if self.attempt < self.series_start { 0 } else { self.attempt - self.series_start + 1 }
    }
}

/// One try of a task run: one process group, one log file, one outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub task_run: u64,
    pub job_run: u64,
    pub n: u32,
    pub pid: Option<u32>,
    pub pgid: Option<i32>,
    /// `/proc/<pid>/stat` start time, so crash recovery never kills a recycled pid.
    pub start_ticks: u64,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<FailReason>,
    pub detail: Option<String>,
    pub cost_usd_micros: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub model: Option<String>,
    /// Relative to the state dir.
    pub log: String,
    /// Why the log is incomplete (a write failed, e.g. the disk was full); added in version 2.
    pub log_error: Option<String>,
}

impl Stored for AttemptRecord {
    const VERSION: u8 = 2;

    fn decode_older(version: u8, body: &[u8]) -> Result<Self, StoreError> {
        match version {
            1 => Ok(body_of::<AttemptRecordV1>(body)?.into()),
            v => Err(StoreError::Codec(format!("no decoder for attempt version {v}"))),
        }
    }
}

/// [`AttemptRecord`] as version 1 wrote it (before `log_error`).
#[derive(Deserialize)]
struct AttemptRecordV1 {
    task_run: u64,
    job_run: u64,
    n: u32,
    pid: Option<u32>,
    pgid: Option<i32>,
    start_ticks: u64,
    started_at_ms: u64,
    ended_at_ms: Option<u64>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    reason: Option<FailReason>,
    detail: Option<String>,
    cost_usd_micros: u64,
    input_tokens: u64,
    output_tokens: u64,
    model: Option<String>,
    log: String,
}

impl From<AttemptRecordV1> for AttemptRecord {
    fn from(a: AttemptRecordV1) -> AttemptRecord {
        AttemptRecord {
            task_run: a.task_run,
            job_run: a.job_run,
            n: a.n,
            pid: a.pid,
            pgid: a.pgid,
            start_ticks: a.start_ticks,
            started_at_ms: a.started_at_ms,
            ended_at_ms: a.ended_at_ms,
            exit_code: a.exit_code,
            signal: a.signal,
            reason: a.reason,
            detail: a.detail,
            cost_usd_micros: a.cost_usd_micros,
            input_tokens: a.input_tokens,
            output_tokens: a.output_tokens,
            model: a.model,
            log: a.log,
            log_error: None,
        }
    }
}

impl AttemptRecord {
    /// Attempt `n` of a task run, started now, outcome unknown.
    pub fn started(task_run: u64, job_run: u64, n: u32, started_at_ms: u64) -> AttemptRecord {
        AttemptRecord {
            task_run,
            job_run,
            n,
            pid: None,
            pgid: None,
            start_ticks: 0,
            started_at_ms,
            ended_at_ms: None,
            exit_code: None,
            signal: None,
            reason: None,
            detail: None,
            cost_usd_micros: 0,
            input_tokens: 0,
            output_tokens: 0,
            model: None,
            log: AttemptRecord::log_path(job_run, task_run, n),
            log_error: None,
        }
    }

    pub fn log_path(job_run: u64, task_run: u64, n: u32) -> String {
        format!("logs/{job_run}/{task_run}.{n}.log")
    }
}

/// The workflow file a job run was started from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefinitionRecord {
    pub path: String,
    pub source: String,
}

/// A succeeded task run whose outputs a later run may reuse (`cache`, SPEC §2.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub task_run: u64,
    pub job_run: u64,
    pub succeeded_at_ms: u64,
    /// `succeeded_at_ms` + the `ttl` it was stored with: past it, retention removes the entry.
    pub expires_at_ms: u64,
    pub outputs: BTreeMap<String, String>,
    pub exit_code: Option<i32>,
}
