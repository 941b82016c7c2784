//! What can happen to a job run (`Input`), what the core asks of its caller while it decides
//! (`Env`), and what it decides (`Effects`).

use std::collections::BTreeMap;

use crate::config::TransitionOn;
use crate::model::retry::RetryPlan;
use crate::model::{FailReason, JobState};

use super::state::{RunState, TaskRun};

/// Everything that can happen to a job run: a closed set, one `step` each.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A new run: entry tasks become ready, every record is written with `job.started`.
    Begin,
    /// A run found unfinished in the store: re-arm its timers and queue what is queued. Its
    /// interrupted attempts follow as `AttemptEnded`, then `Settle`.
    Resume,
    /// Settle every pending task whose needs already ended (after a resume).
    Settle,
    /// A worker asks to start `task_run`: granted (`Effects::claimed`) if it is still queued.
    Claim {
        task_run: u64,
    },
    Progress {
        task_run: u64,
        text: String,
    },
    /// Spending reported by a running attempt; budgets it crosses stop work.
    CostAdded {
        task_run: u64,
        usd_micros: u64,
        input_tokens: u64,
        output_tokens: u64,
    },
    /// An attempt is over (or never started: a template that cannot render).
    AttemptEnded {
        task_run: u64,
        end: AttemptEnd,
    },
    /// A task run's timer is due (a retry delay, a `wait_timeout`); `due_ms` as it was set.
    TimerDue {
        task_run: u64,
        due_ms: u64,
    },
    QueueTimedOut {
        task_run: u64,
    },
    /// Release what waits for signal `name`: the one task run named, or all that wait for it.
    Signal {
        task_run: Option<u64>,
        name: String,
    },
    /// Cancel one task run, or the whole job run.
    Cancel {
        task_run: Option<u64>,
    },
    /// A person's retry, as `model::retry::plan` allowed it.
    Retry {
        plan: RetryPlan,
    },
    /// `retry --from`: `tasks` (by index) run again from scratch, after the plan's raises.
    RunFrom {
        from: String,
        tasks: Vec<usize>,
        plan: RetryPlan,
    },
    /// Graceful stop: running attempts are interrupted, nothing new starts.
    Stop,
    /// The answer to a `cache_reads` effect: the entry stored under the task run's cache key,
    /// if any (read off the actor's thread).
    CacheRead {
        task_run: u64,
        entry: Option<CacheHit>,
    },
}

/// How an attempt ended, as the worker saw it (the actor checked `expect` already).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttemptEnd {
    pub n: u32,
    pub started_at_ms: u64,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// `None` = success.
    pub failure: Option<FailReason>,
    pub detail: Option<String>,
    pub outputs: BTreeMap<String, String>,
}

/// A stored success of the same task with the same cache key.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheHit {
    pub task_run: u64,
    pub job_run: u64,
    pub succeeded_at_ms: u64,
    pub expires_at_ms: u64,
    pub outputs: BTreeMap<String, String>,
    pub exit_code: Option<i32>,
}

/// What the core asks of the world while it decides: randomness, ids, what the store and the
/// templates know. The actor implements it; tests use a fixed one.
pub trait Env {
    /// Uniform in `[0, 1)`: retry jitter.
    fn random(&mut self) -> f64;
    /// The durable sequence that orders equal priorities in a queue.
    fn next_enqueue_seq(&mut self) -> u64;
    /// How many attempts in a row of `task_run`'s series, the one ending now included, gaffer
    /// dying interrupted.
    fn crashes_in_a_row(&mut self, task_run: &TaskRun) -> u32;
    /// The scoped cache key of task `task`, if it has `cache` and its key renders. (Its entry
    /// is not asked of the `Env`: reading the store is an effect, `Effects::cache_reads`.)
    fn cache_key(&mut self, state: &RunState, task: usize) -> Option<String>;
    /// A new task run id (a durable sequence).
    fn next_task_run_id(&mut self) -> u64;
    /// Whether the `when` expression of a transition holds for task run `run`, which just
    /// ended; why it cannot be evaluated, if it cannot.
    fn when(&mut self, state: &RunState, run: usize, expression: &str) -> Result<bool, String>;
    /// Task `task`'s `for_each` template rendered against its upstream outputs and params.
    fn render_for_each(&mut self, state: &RunState, task: usize, template: &str) -> Result<String, String>;
}

/// What one step decided, in the order the actor carries it out: kills and unschedules at
/// once; `writes` committed in one transaction; then `notes` published, `enqueue`, `timers`,
/// `circuit_failures` and `finish`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    pub writes: Vec<Write>,
    pub notes: Vec<Note>,
    /// Task indexes to hand to the dispatcher (those still queued once committed).
    pub enqueue: Vec<usize>,
    /// `(task_run, due_ms)`: a timer to set.
    pub timers: Vec<(u64, u64)>,
    pub unschedule: Vec<u64>,
    /// `(task_run, why)`: stop its running attempt.
    pub kills: Vec<(u64, FailReason)>,
    /// `(queue, ended_at_ms)`: a failure to count for the queue's circuit breaker.
    pub circuit_failures: Vec<(String, u64)>,
    /// The job run ended: the actor goes away once this is durable.
    pub finish: bool,
    /// The answer to a command (`Signal`, `Cancel`, `Retry`, `RunFrom`).
    pub reply: Option<Result<String, String>>,
    /// `Claim` granted: commit the task run with its new attempt, then hand it out.
    pub claimed: Option<Claimed>,
    /// `(task_run, cache key)`: a task run ready to queue whose `cache` may hold a result to
    /// reuse; read the entry under the key and answer with `Input::CacheRead`. The task run is
    /// queued (or succeeds from the cache) only then.
    pub cache_reads: Vec<(u64, String)>,
}

/// A claim granted: attempt `attempt` of task `task` may start, with `model` (fallback).
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub task: usize,
    pub attempt: u32,
    pub model: Option<String>,
}

/// A durable change; the actor turns each into a store mutation of the state after the step.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    TaskRun(usize),
    JobRun,
    RaisedBudgets,
    Cached(String, CacheHit),
    Uncached(String),
}

/// What to report once the step is durable; the actor turns each into an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    JobStarted {
        retry: bool,
        from: Option<String>,
    },
    JobEnded {
        state: JobState,
        reason: Option<String>,
        cost_usd_micros: u64,
    },
    BudgetExceeded {
        task: Option<usize>,
        limit_usd_micros: u64,
        spent_usd_micros: u64,
    },
    BudgetRaised {
        task: Option<usize>,
        limit_usd_micros: u64,
    },
    /// A transition of task run `from` fired towards task `to`; `task_run` is the new task
    /// run's index (none while a join waits, or when nothing new may start).
    TransitionFired {
        from: usize,
        on: TransitionOn,
        to: usize,
        task_run: Option<usize>,
    },
    Task {
        task: usize,
        what: TaskNote,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum TaskNote {
    /// `series_start` when a new series begins (a retry): views count `n of max` from it.
    Queued {
        series_start: Option<u32>,
    },
    Waiting {
        wait_for: String,
    },
    Skipped,
    Succeeded {
        duration_ms: u64,
        cost_usd_micros: u64,
        cached_from: Option<u64>,
    },
    Failed {
        attempt: u32,
        reason: Option<FailReason>,
        exit_code: Option<i32>,
        signal: Option<i32>,
        detail: Option<String>,
    },
    RetryScheduled {
        delay_ms: u64,
        next_attempt: u32,
    },
    DeadLettered {
        reason: FailReason,
    },
    /// A failure a transition handles: the task run ends `failed`, not dead.
    Handled,
    /// A `when` that could not be evaluated counts as false; the task run says why.
    WhenFailed {
        message: String,
    },
    Cancelled {
        from_dead: bool,
    },
    ResourceExhausted {
        detail: String,
        delay_ms: u64,
    },
    Progress {
        text: String,
    },
}
