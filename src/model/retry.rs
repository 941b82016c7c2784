//! A person's retry (`gaffer retry`, `dlq retry`, the TUI's `r`): which task runs it reopens,
//! and the budgets that refuse it (SPEC §7: no new attempt starts once a budget is reached).
//! One rule for the running instance and for the offline path that leaves the command in the
//! inbox, so both answer the same.

use std::fmt;

use crate::model::TaskState;
use crate::model::money::format_usd;
use crate::model::policy::budget_reached;

/// A job run's spending and its budget in force (the file's `budget_usd`, or a raised one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRunSpend {
    pub id: u64,
    pub spent_usd_micros: u64,
    pub budget_usd_micros: Option<u64>,
}

/// A task run's state and spending with its limits in force (see [`task_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRunSpend {
    pub id: u64,
    pub state: TaskState,
    pub spent_usd_micros: u64,
    pub budget_usd_micros: Option<u64>,
    pub max_cost_usd_micros: Option<u64>,
}

/// What a retry does once allowed: the task runs it reopens, and the budgets it raises first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryPlan {
    pub task_runs: Vec<u64>,
    /// The job run's new budget.
    pub raise_job_run: Option<u64>,
    /// Task runs' new limits (each replaces that run's `budget_usd` and `retry.max_cost_usd`).
    pub raise_task_runs: Vec<(u64, u64)>,
}

/// Why a retry is refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotPartOf {
        task_run: u64,
        job_run: u64,
    },
    NotRetryable {
        task_run: u64,
        state: TaskState,
    },
    NothingToRetry {
        job_run: u64,
    },
    /// `retry`: the id the retry named (`42` or `j7`), for the command that raises the budget.
    JobBudget {
        job_run: u64,
        spent: u64,
        limit: u64,
        retry: String,
    },
    TaskLimit {
        task_run: u64,
        spent: u64,
        limit: u64,
        key: &'static str,
    },
    RaiseTooLow {
        what: String,
        raise: u64,
        spent: u64,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let usd = |m: &u64| format!("${}", format_usd(*m));
        match self {
            Refusal::NotPartOf { task_run, job_run } => {
                write!(f, "task run {task_run} is not part of job run j{job_run}")
            }
            Refusal::NotRetryable { task_run, state } => {
                write!(f, "task run {task_run} {}; only dead or cancelled task runs can be retried", state.phrase())
            }
            Refusal::NothingToRetry { job_run } => {
                write!(f, "job run j{job_run} has no dead or cancelled task runs to retry")
            }
            Refusal::JobBudget { job_run, spent, limit, retry } => write!(
                f,
                "job run j{job_run} has spent {} of its {} budget, so no new attempt starts; \
                 raise it with `gaffer retry {retry} --budget USD`",
                usd(spent),
                usd(limit)
            ),
            Refusal::TaskLimit { task_run, spent, limit, key } => write!(
                f,
                "task run {task_run} has spent {} of its {} `{key}`, so no new attempt starts; \
                 raise it with `gaffer retry {task_run} --budget USD`",
                usd(spent),
                usd(limit)
            ),
            Refusal::RaiseTooLow { what, raise, spent } => {
                write!(f, "--budget {} is not above the {} {what} has spent already", usd(raise), usd(spent))
            }
        }
    }
}

/// A task run's limits in force: a budget raised by a retry replaces both of the file's
/// (`budget_usd` and `retry.max_cost_usd` limit the same spending).
pub fn task_limits(budget: Option<u64>, max_cost: Option<u64>, raised: Option<u64>) -> (Option<u64>, Option<u64>) {
    match raised {
        Some(raised) => (Some(raised), None),
        None => (budget, max_cost),
    }
}

/// The task runs a retry of `target` (one task run, or `None`: every one of the job run)
/// reopens: dead and cancelled ones. `states`: the job run's task runs, `(id, state)`.
pub fn retryable(job_run: u64, states: &[(u64, TaskState)], target: Option<u64>) -> Result<Vec<u64>, Refusal> {
    match target {
        Some(id) => {
            let (_, state) =
                states.iter().find(|(t, _)| *t == id).ok_or(Refusal::NotPartOf { task_run: id, job_run })?;
            if state.is_retryable() { Ok(vec![id]) } else { Err(Refusal::NotRetryable { task_run: id, state: *state }) }
        }
        None => {
            let ids: Vec<u64> = states.iter().filter(|(_, s)| s.is_retryable()).map(|(id, _)| *id).collect();
            if ids.is_empty() { Err(Refusal::NothingToRetry { job_run }) } else { Ok(ids) }
        }
    }
}

/// The limit of task run `t` that is reached, if one is: `(limit, key)`.
fn task_limit_reached(t: &TaskRunSpend) -> Option<(u64, &'static str)> {
    [(t.budget_usd_micros, "budget_usd"), (t.max_cost_usd_micros, "retry.max_cost_usd")]
        .into_iter()
        .find(|(limit, _)| budget_reached(t.spent_usd_micros, *limit))
        .and_then(|(limit, key)| limit.map(|l| (l, key)))
}

/// Decides a retry of `target` (one task run, or `None`: the job run's dead and cancelled
/// ones): [`retryable`], then [`budgets`].
pub fn plan(
    job: &JobRunSpend,
    tasks: &[TaskRunSpend],
    target: Option<u64>,
    budget: Option<u64>,
) -> Result<RetryPlan, Refusal> {
    let states: Vec<(u64, TaskState)> = tasks.iter().map(|t| (t.id, t.state)).collect();
    let task_runs = retryable(job.id, &states, target)?;
    let retry = target.map_or_else(|| format!("j{}", job.id), |id| id.to_string());
    budgets(job, tasks, task_runs, target, budget, retry)
}

/// The budgets around reopening `task_runs` (a retry's, or `--from`'s re-run). Without
/// `budget`, a reached budget of the job run or of a task run to reopen refuses it. With
/// `budget` (`--budget USD`), every limit in the way is raised to it; when none is, the named
/// scope's is (the task run `named`, else the job run). A raise must be above what its scope
/// has spent, or nothing would start. `retry`: how the command names what it retries (`42`,
/// `j7`), for the refusal's advice.
pub fn budgets(
    job: &JobRunSpend,
    tasks: &[TaskRunSpend],
    task_runs: Vec<u64>,
    named: Option<u64>,
    budget: Option<u64>,
    retry: String,
) -> Result<RetryPlan, Refusal> {
    let job_blocked = budget_reached(job.spent_usd_micros, job.budget_usd_micros);
    let blocked_tasks: Vec<(&TaskRunSpend, u64, &'static str)> = tasks
        .iter()
        .filter(|t| task_runs.contains(&t.id))
        .filter_map(|t| task_limit_reached(t).map(|(limit, key)| (t, limit, key)))
        .collect();
    let Some(raise) = budget else {
        if job_blocked {
            let limit = job.budget_usd_micros.unwrap_or(0);
            return Err(Refusal::JobBudget { job_run: job.id, spent: job.spent_usd_micros, limit, retry });
        }
        if let Some((t, limit, key)) = blocked_tasks.first() {
            return Err(Refusal::TaskLimit { task_run: t.id, spent: t.spent_usd_micros, limit: *limit, key });
        }
        return Ok(RetryPlan { task_runs, ..RetryPlan::default() });
    };
    let mut plan = RetryPlan { task_runs, ..RetryPlan::default() };
    plan.raise_task_runs = blocked_tasks.iter().map(|(t, _, _)| (t.id, raise)).collect();
    let nothing_blocks = !job_blocked && plan.raise_task_runs.is_empty();
    match named {
        Some(id) if nothing_blocks => plan.raise_task_runs.push((id, raise)),
        _ if job_blocked || nothing_blocks => plan.raise_job_run = Some(raise),
        _ => {}
    }
    if plan.raise_job_run.is_some() && raise <= job.spent_usd_micros {
        return Err(Refusal::RaiseTooLow { what: format!("job run j{}", job.id), raise, spent: job.spent_usd_micros });
    }
    for (id, _) in &plan.raise_task_runs {
        let spent = tasks.iter().find(|t| t.id == *id).map_or(0, |t| t.spent_usd_micros);
        if raise <= spent {
            return Err(Refusal::RaiseTooLow { what: format!("task run {id}"), raise, spent });
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: JobRunSpend = JobRunSpend { id: 7, spent_usd_micros: 0, budget_usd_micros: None };

    fn task(id: u64, state: TaskState, spent: u64) -> TaskRunSpend {
        TaskRunSpend { id, state, spent_usd_micros: spent, budget_usd_micros: None, max_cost_usd_micros: None }
    }

    fn spent_job(spent: u64, budget: u64) -> JobRunSpend {
        JobRunSpend { spent_usd_micros: spent, budget_usd_micros: Some(budget), ..JOB }
    }

    #[test]
    fn only_dead_and_cancelled_runs_are_reopened() {
        let tasks = [task(1, TaskState::Dead, 0), task(2, TaskState::Succeeded, 0), task(3, TaskState::Cancelled, 0)];
        assert_eq!(plan(&JOB, &tasks, None, None).map(|p| p.task_runs), Ok(vec![1, 3]));
        assert_eq!(plan(&JOB, &tasks, Some(3), None).map(|p| p.task_runs), Ok(vec![3]));
        assert_eq!(
            plan(&JOB, &tasks, Some(2), None),
            Err(Refusal::NotRetryable { task_run: 2, state: TaskState::Succeeded })
        );
        assert_eq!(plan(&JOB, &tasks, Some(9), None), Err(Refusal::NotPartOf { task_run: 9, job_run: 7 }));
        let done = [task(2, TaskState::Succeeded, 0)];
        assert_eq!(plan(&JOB, &done, None, None), Err(Refusal::NothingToRetry { job_run: 7 }));
        assert_eq!(plan(&JOB, &done, None, Some(5)), Err(Refusal::NothingToRetry { job_run: 7 }));
    }

    #[test]
    fn a_spent_job_budget_refuses_until_raised() {
        let tasks = [task(1, TaskState::Dead, 20_000)];
        let job = spent_job(20_000, 10_000);
        let refused = plan(&job, &tasks, Some(1), None);
        assert_eq!(refused, Err(Refusal::JobBudget { job_run: 7, spent: 20_000, limit: 10_000, retry: "1".into() }));
        let said = refused.expect_err("refused").to_string();
        assert!(
            said.contains("j7 has spent $0.02 of its $0.01 budget") && said.contains("gaffer retry 1 --budget"),
            "{said}"
        );
        let raised = plan(&job, &tasks, Some(1), Some(500_000)).expect("raised");
        assert_eq!((raised.raise_job_run, raised.raise_task_runs), (Some(500_000), vec![]));
        assert_eq!(
            plan(&job, &tasks, Some(1), Some(20_000)),
            Err(Refusal::RaiseTooLow { what: "job run j7".into(), raise: 20_000, spent: 20_000 })
        );
        // Exactly at the budget is reached (SPEC §7 "reaches").
        assert!(plan(&spent_job(10_000, 10_000), &tasks, None, None).is_err());
        assert!(plan(&spent_job(9_999, 10_000), &tasks, None, None).is_ok());
    }

    #[test]
    fn task_limits_refuse_and_a_raise_replaces_both() {
        let mut t = task(1, TaskState::Dead, 50_000);
        t.max_cost_usd_micros = Some(50_000);
        let refused = plan(&JOB, &[t], None, None);
        assert_eq!(
            refused,
            Err(Refusal::TaskLimit { task_run: 1, spent: 50_000, limit: 50_000, key: "retry.max_cost_usd" })
        );
        let raised = plan(&JOB, &[t], None, Some(80_000)).expect("raised");
        assert_eq!((raised.raise_job_run, raised.raise_task_runs), (None, vec![(1, 80_000)]));
        assert_eq!(task_limits(Some(1), Some(2), Some(80_000)), (Some(80_000), None));
        assert_eq!(task_limits(Some(1), Some(2), None), (Some(1), Some(2)));
        t.budget_usd_micros = Some(40_000);
        assert!(matches!(plan(&JOB, &[t], None, None), Err(Refusal::TaskLimit { key: "budget_usd", .. })));
    }

    #[test]
    fn with_nothing_in_the_way_the_named_scope_is_raised() {
        let tasks = [task(1, TaskState::Dead, 0)];
        let p = plan(&JOB, &tasks, Some(1), Some(1)).expect("plan");
        assert_eq!((p.raise_job_run, p.raise_task_runs), (None, vec![(1, 1)]));
        let p = plan(&JOB, &tasks, None, Some(1)).expect("plan");
        assert_eq!((p.raise_job_run, p.raise_task_runs), (Some(1), vec![]));
    }

    #[test]
    fn both_limits_in_the_way_are_raised_together() {
        let mut t = task(1, TaskState::Cancelled, 30_000);
        t.budget_usd_micros = Some(30_000);
        let p = plan(&spent_job(30_000, 30_000), &[t], Some(1), Some(90_000)).expect("plan");
        assert_eq!((p.raise_job_run, p.raise_task_runs), (Some(90_000), vec![(1, 90_000)]));
    }
}
