//! Which hooks an event calls (`on_failure`, `on_dead_letter`, `on_budget` on jobs and queues).
//!
//! | event                                  | job hook         | queue hook (the task's queue) |
//! |----------------------------------------|------------------|-------------------------------|
//! | `job.failed`                           | `on_failure`     | —                             |
//! | `task.failed` (every failed attempt¹)  | —                | `on_failure`                  |
//! | `task.dead_lettered`                   | `on_dead_letter` | `on_dead_letter`              |
//! | `budget.exceeded`, scope `job`         | `on_budget`      | —                             |
//! | `budget.exceeded`, scope `task`        | `on_budget`      | `on_budget`                   |
//!
//! ¹ Not an attempt `interrupted` by gaffer itself stopping or dying: that is not the task's
//! failure (it is retried, and a dead letter that follows still calls `on_dead_letter`).

use crate::config::{HookKey, HookLevel};
use crate::model::FailReason;
use crate::model::event_name::{BudgetScope, EventName};

/// The hooks `event` calls, job level first. `scope` is a budget event's, `reason` a failed
/// attempt's.
pub fn hooks_for(
    event: EventName,
    scope: Option<BudgetScope>,
    reason: Option<FailReason>,
) -> Vec<(HookLevel, HookKey)> {
    use HookKey::*;
    use HookLevel::*;
    match (event, scope) {
        (EventName::JobFailed, _) => vec![(Job, OnFailure)],
        (EventName::TaskFailed, _) if reason == Some(FailReason::Interrupted) => Vec::new(),
        (EventName::TaskFailed, _) => vec![(Queue, OnFailure)],
        (EventName::TaskDeadLettered, _) => vec![(Job, OnDeadLetter), (Queue, OnDeadLetter)],
        (EventName::BudgetExceeded, Some(BudgetScope::Task)) => vec![(Job, OnBudget), (Queue, OnBudget)],
        (EventName::BudgetExceeded, _) => vec![(Job, OnBudget)],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HookKey::*;
    use HookLevel::*;

    #[test]
    fn events_to_hooks() {
        type Case<'a> = (EventName, Option<BudgetScope>, Option<FailReason>, &'a [(HookLevel, HookKey)]);
        let cases: &[Case] = &[
            (EventName::JobFailed, None, None, &[(Job, OnFailure)]),
            (EventName::TaskFailed, None, Some(FailReason::ExitCode), &[(Queue, OnFailure)]),
            (EventName::TaskFailed, None, Some(FailReason::Timeout), &[(Queue, OnFailure)]),
            (EventName::TaskFailed, None, Some(FailReason::Interrupted), &[]),
            (EventName::TaskDeadLettered, None, None, &[(Job, OnDeadLetter), (Queue, OnDeadLetter)]),
            (EventName::BudgetExceeded, Some(BudgetScope::Job), None, &[(Job, OnBudget)]),
            (EventName::BudgetExceeded, Some(BudgetScope::Task), None, &[(Job, OnBudget), (Queue, OnBudget)]),
            (EventName::JobSucceeded, None, None, &[]),
            (EventName::TaskRetryScheduled, None, None, &[]),
            (EventName::HookFailed, None, None, &[]),
        ];
        for (event, scope, reason, want) in cases {
            assert_eq!(hooks_for(*event, *scope, *reason), *want, "{event} {scope:?} {reason:?}");
        }
    }
}
