//! The names of the events gaffer emits (SPEC §6): a closed set the engine, the TUI, the
//! headless lines and the hook rules match on. The dotted string lives only at the JSON boundary.

/// Every event gaffer emits (SPEC §6 and the extra events README documents), a closed set:
/// producers name a variant, consumers match on it, and only the JSON boundary (`to_json`,
/// `from_json`) sees the dotted name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventName {
    JobStarted,
    JobSucceeded,
    JobFailed,
    JobCancelled,
    JobRedefined,
    TaskQueued,
    TaskStarted,
    TaskSucceeded,
    TaskFailed,
    TaskRetryScheduled,
    TaskDeadLettered,
    TaskCancelled,
    TaskSkipped,
    TaskWaiting,
    TaskBlocked,
    TaskCost,
    TaskProgress,
    TaskWarning,
    TaskHandled,
    TransitionFired,
    ResourceExhausted,
    WorkerRestarted,
    ScheduleFired,
    ScheduleSkipped,
    BudgetExceeded,
    BudgetRaised,
    QueueCircuitOpened,
    QueueCircuitClosed,
    HookFailed,
}

impl EventName {
    pub const ALL: [EventName; 29] = [
        EventName::JobStarted,
        EventName::JobSucceeded,
        EventName::JobFailed,
        EventName::JobCancelled,
        EventName::JobRedefined,
        EventName::TaskQueued,
        EventName::TaskStarted,
        EventName::TaskSucceeded,
        EventName::TaskFailed,
        EventName::TaskRetryScheduled,
        EventName::TaskDeadLettered,
        EventName::TaskCancelled,
        EventName::TaskSkipped,
        EventName::TaskWaiting,
        EventName::TaskBlocked,
        EventName::TaskCost,
        EventName::TaskProgress,
        EventName::TaskWarning,
        EventName::TaskHandled,
        EventName::TransitionFired,
        EventName::ResourceExhausted,
        EventName::WorkerRestarted,
        EventName::ScheduleFired,
        EventName::ScheduleSkipped,
        EventName::BudgetExceeded,
        EventName::BudgetRaised,
        EventName::QueueCircuitOpened,
        EventName::QueueCircuitClosed,
        EventName::HookFailed,
    ];

    /// The dotted name of the JSON `event` field (`task.succeeded`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventName::JobStarted => "job.started",
            EventName::JobSucceeded => "job.succeeded",
            EventName::JobFailed => "job.failed",
            EventName::JobCancelled => "job.cancelled",
            EventName::JobRedefined => "job.redefined",
            EventName::TaskQueued => "task.queued",
            EventName::TaskStarted => "task.started",
            EventName::TaskSucceeded => "task.succeeded",
            EventName::TaskFailed => "task.failed",
            EventName::TaskRetryScheduled => "task.retry_scheduled",
            EventName::TaskDeadLettered => "task.dead_lettered",
            EventName::TaskCancelled => "task.cancelled",
            EventName::TaskSkipped => "task.skipped",
            EventName::TaskWaiting => "task.waiting",
            EventName::TaskBlocked => "task.blocked",
            EventName::TaskCost => "task.cost",
            EventName::TaskProgress => "task.progress",
            EventName::TaskWarning => "task.warning",
            EventName::TaskHandled => "task.handled",
            EventName::TransitionFired => "transition.fired",
            EventName::ResourceExhausted => "resource.exhausted",
            EventName::WorkerRestarted => "worker.restarted",
            EventName::ScheduleFired => "schedule.fired",
            EventName::ScheduleSkipped => "schedule.skipped",
            EventName::BudgetExceeded => "budget.exceeded",
            EventName::BudgetRaised => "budget.raised",
            EventName::QueueCircuitOpened => "queue.circuit_opened",
            EventName::QueueCircuitClosed => "queue.circuit_closed",
            EventName::HookFailed => "hook.failed",
        }
    }

    /// The variant a dotted name stands for; `None` for a name gaffer does not emit.
    pub fn parse(name: &str) -> Option<EventName> {
        EventName::ALL.into_iter().find(|n| n.as_str() == name)
    }

    /// `job.*`: the event is about a job run as a whole.
    pub fn is_job(self) -> bool {
        self.as_str().starts_with("job.")
    }

    /// `task.*`: the event is about one task run.
    pub fn is_task(self) -> bool {
        self.as_str().starts_with("task.")
    }
}

impl std::fmt::Display for EventName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose budget a `budget.exceeded` / `budget.raised` event is about (its `scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetScope {
    Job,
    Task,
}

impl BudgetScope {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetScope::Job => "job",
            BudgetScope::Task => "task",
        }
    }

    pub fn parse(word: &str) -> Option<BudgetScope> {
        [BudgetScope::Job, BudgetScope::Task].into_iter().find(|s| s.as_str() == word)
    }
}
