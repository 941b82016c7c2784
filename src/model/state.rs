//! Task-run and job-run states (SPEC §7) and why an attempt failed (SPEC §6).

use serde::{Deserialize, Serialize};

/// `pending → queued → running → succeeded | retrying → queued … | dead | cancelled | skipped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting for its `needs`.
    Pending,
    /// In its queue's ready list.
    Queued,
    /// An attempt is running.
    Running,
    /// Waiting for its retry timer (`not_before`).
    Retrying,
    Succeeded,
    /// Will not be retried by itself; waits for a person.
    Dead,
    Cancelled,
    /// A dependency did not succeed, or the job run failed before it started.
    Skipped,
    /// Its needs succeeded; held for its `wait_for` signal (SPEC §2.2).
    Waiting,
    /// Failed for good, but a transition handled the failure (SPEC §2.2): terminal, not a dead
    /// letter, and it does not fail the job run. Last, so older stored states keep their tags.
    Failed,
}

impl TaskState {
    pub const ALL: [TaskState; 10] = [
        TaskState::Pending,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Retrying,
        TaskState::Succeeded,
        TaskState::Dead,
        TaskState::Cancelled,
        TaskState::Skipped,
        TaskState::Waiting,
        TaskState::Failed,
    ];

    /// "is running", "has succeeded", "was cancelled": the state in a sentence about a task run.
    pub fn phrase(self) -> String {
        match self {
            TaskState::Succeeded => "has succeeded".into(),
            TaskState::Cancelled | TaskState::Skipped => format!("was {}", self.as_str()),
            _ => format!("is {}", self.as_str()),
        }
    }

    /// Dead and cancelled task runs can be retried by hand (a fresh series of attempts).
    pub fn is_retryable(self) -> bool {
        matches!(self, TaskState::Dead | TaskState::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Retrying => "retrying",
            TaskState::Succeeded => "succeeded",
            TaskState::Dead => "dead",
            TaskState::Cancelled => "cancelled",
            TaskState::Skipped => "skipped",
            TaskState::Waiting => "waiting",
            TaskState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Nothing more happens to it unless a person retries it. `dead` counts: it waits for a person.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Dead | TaskState::Cancelled | TaskState::Skipped | TaskState::Failed
        )
    }

    /// A state that blocks its dependents for good (they are skipped).
    pub fn is_unsuccessful_end(self) -> bool {
        matches!(self, TaskState::Dead | TaskState::Cancelled | TaskState::Skipped | TaskState::Failed)
    }
}

/// `running → succeeded | failed | cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 4] = [JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        self != JobState::Running
    }
}

/// Why an attempt, or a task run, did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailReason {
    ExitCode,
    Timeout,
    HeartbeatTimeout,
    SpawnError,
    Interrupted,
    Budget,
    Cancelled,
    QueueTimeout,
    /// Waited for its `wait_for` signal longer than `wait_timeout`.
    WaitTimeout,
    /// The agent's JSON result said it failed (`is_error: true`, an API error), whatever the
    /// exit code.
    AgentError,
    /// Its result did not conform to the task's `expect` (a JSON Schema, a pattern).
    InvalidOutput,
    /// Its attempts were interrupted by gaffer itself dying, twice in a row: quarantined so it
    /// cannot take gaffer down again.
    Poison,
    /// A template (`env`, `args`, `stdin`) could not be rendered: an undefined reference, a
    /// syntax error, or a render past its budget. Permanent: never retried by itself.
    TemplateError,
    /// The machine was out of a resource when the attempt was to start (open files,
    /// processes, memory). Transient: the attempt is not counted and is tried again later.
    ResourceExhausted,
    /// A `join` whose sources can no longer all (or N of them) arrive: recorded `skipped`.
    JoinUnsatisfied,
    /// A fan-out item that `retry --from` left out: the re-rendered `for_each` list is shorter
    /// now. Recorded `skipped`, kept as history, no longer one of its node's items.
    NotInList,
}

impl FailReason {
    pub const ALL: [FailReason; 16] = [
        FailReason::ExitCode,
        FailReason::Timeout,
        FailReason::HeartbeatTimeout,
        FailReason::SpawnError,
        FailReason::Interrupted,
        FailReason::Budget,
        FailReason::Cancelled,
        FailReason::QueueTimeout,
        FailReason::WaitTimeout,
        FailReason::AgentError,
        FailReason::InvalidOutput,
        FailReason::Poison,
        FailReason::TemplateError,
        FailReason::ResourceExhausted,
        FailReason::JoinUnsatisfied,
        FailReason::NotInList,
    ];

    pub fn parse(text: &str) -> Option<FailReason> {
        FailReason::ALL.into_iter().find(|r| r.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::ExitCode => "exit_code",
            FailReason::Timeout => "timeout",
            FailReason::HeartbeatTimeout => "heartbeat_timeout",
            FailReason::SpawnError => "spawn_error",
            FailReason::Interrupted => "interrupted",
            FailReason::Budget => "budget",
            FailReason::Cancelled => "cancelled",
            FailReason::QueueTimeout => "queue_timeout",
            FailReason::WaitTimeout => "wait_timeout",
            FailReason::InvalidOutput => "invalid_output",
            FailReason::Poison => "poison",
            FailReason::AgentError => "agent_error",
            FailReason::TemplateError => "template_error",
            FailReason::ResourceExhausted => "resource_exhausted",
            FailReason::JoinUnsatisfied => "join_unsatisfied",
            FailReason::NotInList => "not_in_list",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        for r in FailReason::ALL {
            assert_eq!(FailReason::parse(r.as_str()), Some(r));
        }
    }
}
