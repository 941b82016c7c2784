//! A person's retry, checked the same way whether the running instance takes it (a `JobRun`
//! actor) or `gaffer retry` leaves it in the inbox while none runs: both build the plain data
//! of `model::retry` from the records and the job's definition here, and ask its `plan`.

use std::collections::HashMap;

use super::inbox::RetryOptions;
use super::{EngineError, Target};
use crate::config::JobDef;
use crate::model::TaskState;
use crate::model::graph::JobGraph;
use crate::model::retry::{self, JobRunSpend, TaskRunSpend};
use crate::store::records::TaskRunKind;
use crate::store::{JobRunRecord, RaisedBudgets, Snapshot, TaskRunRecord};

/// The spending and the limits in force of a job run and its task runs.
pub fn spends(
    def: &JobDef,
    record: &JobRunRecord,
    tasks: &[TaskRunRecord],
    raised: &RaisedBudgets,
) -> (JobRunSpend, Vec<TaskRunSpend>) {
    let job = JobRunSpend {
        id: record.id,
        spent_usd_micros: record.cost_usd_micros,
        budget_usd_micros: raised.job_run.or(def.budget_usd_micros),
    };
    // By name: an `--only` run's records hold their index in its cut-down job.
    let by_name: HashMap<&str, &crate::config::TaskDef> = def.tasks.iter().map(|d| (d.name.as_str(), d)).collect();
    let tasks = tasks
        .iter()
        .map(|t| {
            let task_def = by_name.get(t.task.as_str()).copied();
            let (budget, max_cost) = retry::task_limits(
                task_def.and_then(|d| d.budget_usd_micros),
                task_def.and_then(|d| d.retry.max_cost_usd_micros),
                raised.task_runs.get(&t.id).copied(),
            );
            TaskRunSpend {
                id: t.id,
                state: t.state,
                spent_usd_micros: t.cost_usd_micros,
                budget_usd_micros: budget,
                max_cost_usd_micros: max_cost,
            }
        })
        .collect();
    (job, tasks)
}

/// The task runs `retry j7 --from TASK` runs again, by id, picked from the records as the job
/// run would pick them (`model::rerun::plan_from`, each task by its latest task run, a task
/// nothing reached as skipped); else why it cannot go again from there.
pub fn rerun_set(def: &JobDef, record: &JobRunRecord, tasks: &[TaskRunRecord], from: &str) -> Result<Vec<u64>, String> {
    // A task's own runs: fan-out items and compensations are not. `--from` re-runs the first.
    let own = |t: &&TaskRunRecord| t.item_index.is_none() && t.kind != TaskRunKind::Compensation;
    let mut first: HashMap<&str, &TaskRunRecord> = HashMap::new();
    let mut latest: HashMap<&str, &TaskRunRecord> = HashMap::new();
    for t in tasks.iter().filter(own) {
        let name = t.task.as_str();
        let f = first.entry(name).or_insert(t);
        if t.iteration < f.iteration {
            *f = t;
        }
        let l = latest.entry(name).or_insert(t);
        if t.iteration > l.iteration {
            *l = t;
        }
    }
    let job = if record.sliced {
        let names: Vec<&str> = first.keys().copied().collect();
        crate::model::rerun::slice_job(def, &names)
    } else {
        def.clone()
    };
    let state = |d: &crate::config::TaskDef| latest.get(d.name.as_str()).map_or(TaskState::Skipped, |t| t.state);
    let states: Vec<TaskState> = job.tasks.iter().map(state).collect();
    let picked = crate::model::rerun::plan_from(&JobGraph::new(&job), &states, from).map_err(|e| e.to_string())?;
    // A fanned-out task among them fans out again over its list as rendered then
    // (`model/run/fanout.rs`): its items are not picked here.
    Ok(picked.into_iter().filter_map(|i| first.get(job.tasks[i].name.as_str()).map(|t| t.id)).collect())
}

/// The check a running instance would make, on the state dir while none runs: `Ok` if the
/// retry would be taken, else the refusal as the instance would word it.
pub fn check_offline(reader: &dyn Snapshot, target: Target, options: &RetryOptions) -> Result<(), EngineError> {
    let (job_run, task_run) = match target {
        Target::JobRun(id) => (id, None),
        Target::TaskRun(id) => (reader.task_run(id)?.ok_or(EngineError::UnknownId(target))?.job_run, Some(id)),
    };
    let record = reader.job_run(job_run)?.ok_or(EngineError::UnknownId(Target::JobRun(job_run)))?;
    let workflow = super::supervisor::stored_workflow(reader, &record)?;
    let def = workflow.jobs.iter().find(|j| j.name == record.job).ok_or_else(|| {
        EngineError::Invalid(format!("job run j{job_run}: job `{}` is missing from its definition", record.job))
    })?;
    let tasks = reader.task_runs_of(job_run)?;
    let (job, spent) = spends(def, &record, &tasks, &reader.raised_budgets(job_run)?);
    let budget = options.budget_usd_micros;
    let planned = match &options.from {
        None => retry::plan(&job, &spent, task_run, budget),
        Some(from) => {
            let ids = rerun_set(def, &record, &tasks, from)
                .map_err(|e| EngineError::Invalid(format!("job run j{job_run}: {e}")))?;
            retry::budgets(&job, &spent, ids, None, budget, format!("j{job_run} --from {from}"))
        }
    };
    planned.map(|_| ()).map_err(|refusal| EngineError::Invalid(refusal.to_string()))
}
