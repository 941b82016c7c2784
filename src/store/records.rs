//! What is stored, one record per row. Every value on disk starts with a version byte so a later
//! gaffer can read an older file (see `codec`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::codec::{Record, body_of};
use crate::model::cost::{ModelUsage, Usage, add_to_model};
use crate::model::schedule::ScheduleState;
use crate::model::{FailReason, JobState, TaskState};

/// Warnings kept on one attempt's record; later ones are only in its log.
pub const MAX_ATTEMPT_WARNINGS: usize = 10;

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
    /// Its job is its definition cut down to the tasks it has task runs for: an `--only` run,
    /// and every run stored in layout 1 (which made a task run of each of its tasks at once).
    /// Otherwise its job is the whole definition, and a task with no task run was not reached.
    pub sliced: bool,
}

/// A job run as layout 1 stored it (before task runs were made only when reached).
#[derive(Deserialize)]
struct JobRunRecordV1 {
    id: u64,
    job: String,
    definition: u64,
    params: BTreeMap<String, String>,
    state: JobState,
    reason: Option<String>,
    cost_usd_micros: u64,
    created_at_ms: u64,
    ended_at_ms: Option<u64>,
    cancel_requested: bool,
}

impl From<JobRunRecordV1> for JobRunRecord {
    fn from(r: JobRunRecordV1) -> JobRunRecord {
        JobRunRecord {
            id: r.id,
            job: r.job,
            definition: r.definition,
            params: r.params,
            state: r.state,
            reason: r.reason,
            cost_usd_micros: r.cost_usd_micros,
            created_at_ms: r.created_at_ms,
            ended_at_ms: r.ended_at_ms,
            cancel_requested: r.cancel_requested,
            sliced: true,
        }
    }
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
    /// 1 for the first task run of its task in the job run, 2 for the next … (SPEC §2.2: cycles
    /// and repeated transitions give one task several runs).
    pub iteration: u32,
    /// Fan-out (`for_each`): which item this run is, 0-based, and the item as JSON text.
    pub item_index: Option<u32>,
    pub item: Option<String>,
    /// A task's own run, or the compensation that undoes a succeeded one (saga).
    pub kind: TaskRunKind,
    /// For a compensation: the task run it undoes.
    pub compensates: Option<u64>,
    /// For a task run a transition (SPEC §2.2 `next`) started: the task run it came from and
    /// the `on` that matched; none for one started by `needs`, a fan-out or a person.
    pub reached_by: Option<ReachedBy>,
    /// Node labels a node must have to start it (the task's `requires`); empty: any node.
    /// Keep it the last field: layout 2 is layout 3 without it (see `upgrade`).
    pub requires: Vec<String>,
}

/// How a transition reached a task run: from which task run, on `success`, `failure` or
/// `always` (the workflow file's word).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachedBy {
    pub from_task_run: u64,
    pub on: String,
}

/// What a task run is for (SPEC §2.2 `compensate`, `for_each`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskRunKind {
    #[default]
    Task,
    Compensation,
    /// A fanned-out task's own run: the group of its items (`running` while they run, ended
    /// by their outcome), never attempted itself. Not a task run of its own in the totals.
    FanOut,
}

impl TaskRunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskRunKind::Task => "task",
            TaskRunKind::Compensation => "compensation",
            TaskRunKind::FanOut => "fanout",
        }
    }

    pub const ALL: [TaskRunKind; 3] = [TaskRunKind::Task, TaskRunKind::Compensation, TaskRunKind::FanOut];

    pub fn parse(name: &str) -> Option<TaskRunKind> {
        TaskRunKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Its place in the `task_instances` index key (stored: never renumber).
    pub fn index_key(self) -> u8 {
        match self {
            TaskRunKind::Task => 0,
            TaskRunKind::Compensation => 1,
            TaskRunKind::FanOut => 2,
        }
    }
}

impl TaskRunRecord {
    /// False for a fan-out's group (kind `fanout`): wherever task runs are counted (totals,
    /// queues, cost, metrics) its items are, not it.
    pub fn is_counted(&self) -> bool {
        self.kind != TaskRunKind::FanOut
    }

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
            iteration: 1,
            item_index: None,
            item: None,
            kind: TaskRunKind::Task,
            compensates: None,
            reached_by: None,
            requires: Vec::new(),
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
    /// Tokens billed at the full input price.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The model of the latest cost report that named one.
    pub model: Option<String>,
    /// Relative to the state dir.
    pub log: String,
    /// Input read from a prompt cache (layout 2).
    pub cache_read_tokens: u64,
    /// Input written to a prompt cache (layout 2).
    pub cache_write_tokens: u64,
    /// The same spending split by model, one row per model in order of first use; the totals
    /// above are their sum (layout 2).
    pub by_model: Vec<ModelUsage>,
    /// What went wrong reading what the task reported (a malformed fd-3 line, an agent result
    /// without usage, tokens of a model with no price), at most `MAX_ATTEMPT_WARNINGS` (layout 2).
    pub warnings: Vec<String>,
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
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            by_model: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// What this attempt spent, all models together.
    pub fn usage(&self) -> Usage {
        Usage {
            usd_micros: self.cost_usd_micros,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens,
        }
    }

    /// Adds one cost report's share: to the totals (saturating) and to its model's row.
    pub fn add_cost(&mut self, model: Option<&str>, usage: &Usage) {
        let mut total = self.usage();
        total.add(usage);
        self.cost_usd_micros = total.usd_micros;
        self.input_tokens = total.input_tokens;
        self.output_tokens = total.output_tokens;
        self.cache_read_tokens = total.cache_read_tokens;
        self.cache_write_tokens = total.cache_write_tokens;
        if model.is_some() {
            self.model = model.map(str::to_string);
        }
        add_to_model(&mut self.by_model, model, usage);
    }

    /// Keeps `warning` if there is room; says whether it was kept.
    pub fn add_warning(&mut self, warning: String) -> bool {
        let room = self.warnings.len() < MAX_ATTEMPT_WARNINGS;
        if room {
            self.warnings.push(warning);
        }
        room
    }

    pub fn log_path(job_run: u64, task_run: u64, n: u32) -> String {
        format!("logs/{job_run}/{task_run}.{n}.log")
    }
}

/// Budgets a person raised with `gaffer retry ID --budget USD` in one job run: they replace the
/// file's for this run only (the job run's `budget_usd`; a task run's `budget_usd` and
/// `retry.max_cost_usd`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaisedBudgets {
    pub job_run: Option<u64>,
    /// Task run id → its new limit.
    pub task_runs: BTreeMap<u64, u64>,
}

impl Record for AttemptRecord {
    /// 2: cache tokens, spending by model and warnings.
    const VERSION: u8 = 2;

    fn upgrade(version: u8, body: &[u8]) -> Result<Self, StoreError> {
        match version {
            1 => Ok(body_of::<AttemptRecordV1>(body)?.into()),
            _ => Err(StoreError::Codec(format!("attempt layout {version} is not one this gaffer knows"))),
        }
    }
}

/// An attempt as layout 1 stored it (before cache tokens and spending by model).
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
    /// Layout 1 counted cache tokens as input and knew one model per attempt.
    fn from(v: AttemptRecordV1) -> AttemptRecord {
        let mut a = AttemptRecord::started(v.task_run, v.job_run, v.n, v.started_at_ms);
        (a.pid, a.pgid, a.start_ticks, a.ended_at_ms) = (v.pid, v.pgid, v.start_ticks, v.ended_at_ms);
        (a.exit_code, a.signal, a.reason, a.detail, a.log) = (v.exit_code, v.signal, v.reason, v.detail, v.log);
        let usage = Usage {
            usd_micros: v.cost_usd_micros,
            input_tokens: v.input_tokens,
            output_tokens: v.output_tokens,
            ..Usage::default()
        };
        if usage != Usage::default() || v.model.is_some() {
            a.add_cost(v.model.as_deref(), &usage);
        }
        a
    }
}

impl Record for JobRunRecord {
    /// 2: `sliced` (task runs are made when reached, SPEC §2.2).
    const VERSION: u8 = 2;

    fn upgrade(version: u8, body: &[u8]) -> Result<Self, StoreError> {
        match version {
            1 => Ok(body_of::<JobRunRecordV1>(body)?.into()),
            _ => Err(StoreError::Codec(format!("job run layout {version} is not one this gaffer knows"))),
        }
    }
}
impl Record for TaskRunRecord {
    /// 2: instances — iteration, fan-out item, kind, how a transition reached it (SPEC §2.2).
    /// 3: `requires`, appended.
    const VERSION: u8 = 3;

    fn upgrade(version: u8, body: &[u8]) -> Result<Self, StoreError> {
        match version {
            1 => Ok(body_of::<TaskRunRecordV1>(body)?.into()),
            // Postcard writes fields in order with no names: a layout 2 body followed by an
            // empty list (its length, one 0 byte) is the layout 3 body of a task run that
            // requires nothing, which is what every task run before `requires` was.
            2 => Ok(body_of::<TaskRunRecord>(&[body, &[0]].concat())?),
            _ => Err(StoreError::Codec(format!("task run layout {version} is not one this gaffer knows"))),
        }
    }
}

/// A task run as layout 1 stored it: one run per task in a job run.
#[derive(Deserialize)]
struct TaskRunRecordV1 {
    id: u64,
    job_run: u64,
    job: String,
    task: String,
    task_index: u32,
    state: TaskState,
    queue: String,
    priority: u8,
    attempt: u32,
    series_start: u32,
    max_attempts: u32,
    queued_at_ms: Option<u64>,
    enqueue_seq: u64,
    not_before_ms: Option<u64>,
    outputs: BTreeMap<String, String>,
    exit_code: Option<i32>,
    cost_usd_micros: u64,
    input_tokens: u64,
    output_tokens: u64,
    reason: Option<FailReason>,
    detail: Option<String>,
    progress: Option<String>,
    created_at_ms: u64,
    started_at_ms: Option<u64>,
    ended_at_ms: Option<u64>,
}

impl From<TaskRunRecordV1> for TaskRunRecord {
    /// Layout 1 had one run per task: its first iteration, no item, the task's own kind, not
    /// reached by a transition.
    fn from(v: TaskRunRecordV1) -> TaskRunRecord {
        TaskRunRecord {
            task_index: v.task_index,
            state: v.state,
            queue: v.queue,
            priority: v.priority,
            attempt: v.attempt,
            series_start: v.series_start,
            max_attempts: v.max_attempts,
            queued_at_ms: v.queued_at_ms,
            enqueue_seq: v.enqueue_seq,
            not_before_ms: v.not_before_ms,
            outputs: v.outputs,
            exit_code: v.exit_code,
            cost_usd_micros: v.cost_usd_micros,
            input_tokens: v.input_tokens,
            output_tokens: v.output_tokens,
            reason: v.reason,
            detail: v.detail,
            progress: v.progress,
            started_at_ms: v.started_at_ms,
            ended_at_ms: v.ended_at_ms,
            ..TaskRunRecord::pending(v.id, v.job_run, &v.job, &v.task, v.created_at_ms)
        }
    }
}
impl Record for DefinitionRecord {}
impl Record for CacheEntry {}
impl Record for ScheduleState {}
impl Record for RaisedBudgets {}

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
