//! A JobRun's side of running part of a job again: `retry j7 --from TASK`, and the definition
//! check every retry makes (`--definition stored|current`). The decisions are
//! `model::rerun`'s; this carries them out and commits them.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use super::JobRun;
use crate::config::Workflow;
use crate::engine::EventData;
use crate::model::rerun::{self, DefinitionChoice};
use crate::model::run::Input;
use crate::store::Mutation;

/// The workflow a job run sees: `workflow`, with its job cut down to the tasks the run has task
/// runs for when the run is `sliced` (an `--only` run, or one stored before task runs were made
/// when reached). Either way each of its task runs must be of a task of the job.
pub(crate) fn workflow_for_run(
    workflow: Arc<Workflow>,
    job_index: usize,
    run_tasks: &[&str],
    sliced: bool,
) -> Result<Arc<Workflow>, String> {
    let job = &workflow.jobs[job_index];
    let names: std::collections::HashSet<&str> = job.tasks.iter().map(|t| t.name.as_str()).collect();
    if let Some(stray) = run_tasks.iter().find(|t| !names.contains(*t)) {
        return Err(format!("it has a task run of `{stray}`, which its job `{}` does not have", job.name));
    }
    if !sliced || run_tasks.len() == job.tasks.len() {
        return Ok(workflow);
    }
    let mut sliced = (*workflow).clone();
    sliced.jobs[job_index] = rerun::slice_job(job, run_tasks);
    Ok(Arc::new(sliced))
}

/// Before a retry: compares the job run's definition with the file in use (`current`, whose
/// definition key is `key`); refuses when they differ and no choice was made, or switches the
/// run to `current` (recorded) when asked. Answers a note for the user, if there is one.
#[derive(Message)]
#[rtype(result = "Result<Option<String>, String>")]
pub struct CheckDefinition {
    pub current: Arc<Workflow>,
    pub key: u64,
    pub choice: Option<DefinitionChoice>,
}

impl Handler<CheckDefinition> for JobRun {
    type Result = Result<Option<String>, String>;

    fn handle(&mut self, msg: CheckDefinition, ctx: &mut Self::Context) -> Self::Result {
        let result = self.check_definition(ctx, msg);
        if result.is_err() {
            self.release_if_idle(ctx);
        }
        result
    }
}

impl JobRun {
    fn check_definition(&mut self, ctx: &mut Context<Self>, msg: CheckDefinition) -> Result<Option<String>, String> {
        if self.record.definition == msg.key {
            return Ok(None);
        }
        let now = msg.current.jobs.iter().find(|j| j.name == self.record.job);
        let changes = rerun::definition_changes(self.job(), &self.run.workflow().base_dir, now, &msg.current.base_dir);
        if changes.is_empty() {
            return Ok(None);
        }
        let (id, file) = (self.record.id, msg.current.path.display().to_string());
        let what = changes.join("; ");
        match msg.choice {
            None => Err(format!(
                "job run j{id} was started from an earlier version of {file}, which has changed since ({what}); \
                 a retry would run what it started with. Add `--definition current` to switch j{id} to {file} \
                 as it is now (recorded), or `--definition stored` to run it as it started"
            )),
            Some(DefinitionChoice::Stored) => Ok(Some(format!(
                "job run j{id} keeps the definition it started with ({file} has changed since: {what})"
            ))),
            Some(DefinitionChoice::Current) => {
                self.switch_definition(ctx, &msg.current, msg.key, &changes)?;
                Ok(Some(format!("job run j{id} now uses {file} as it is now ({what})")))
            }
        }
    }

    /// Re-points the run at `current`: its tasks in the new file order, their records and the
    /// job run's definition key committed, `job.redefined` said.
    fn switch_definition(
        &mut self,
        ctx: &mut Context<Self>,
        current: &Arc<Workflow>,
        key: u64,
        changes: &[String],
    ) -> Result<(), String> {
        let id = self.record.id;
        let refuse = |e: String| format!("job run j{id} cannot switch to the current definition: {e}");
        let job_index = current
            .jobs
            .iter()
            .position(|j| j.name == self.record.job)
            .ok_or_else(|| refuse(format!("job `{}` is no longer in the file", self.record.job)))?;
        let full = &current.jobs[job_index];
        let made = self.run.tasks.iter().filter(|t| t.is_made());
        let names: Vec<String> = made.map(|t| t.task.clone()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        rerun::can_switch(&names, full).map_err(refuse)?;
        let order: HashMap<&str, usize> = full.tasks.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
        for t in self.run.tasks.iter_mut().filter(|t| t.is_made()) {
            let def = &full.tasks[order[t.task.as_str()]];
            t.task_index = order[t.task.as_str()];
            if t.state.is_terminal() {
                // What a retry puts back in a queue follows the file now; what is queued or
                // running stays where it is.
                (t.queue, t.max_attempts) = (def.queue.clone(), def.retry.max_attempts);
            }
        }
        let workflow = workflow_for_run(current.clone(), job_index, &names, self.record.sliced).map_err(refuse)?;
        self.run.redefine(workflow, job_index);
        let from = std::mem::replace(&mut self.record.definition, key);
        let mut mutations = vec![Mutation::JobRun(self.job_record())];
        let made = (0..self.run.tasks.len()).filter(|&i| self.run.tasks[i].is_made());
        mutations.extend(made.map(|i| Mutation::TaskRun(self.task_record(i))));
        let event = self.job_event(EventData::JobRedefined {
            from_definition: from,
            to_definition: key,
            changes: changes.to_vec(),
        });
        self.persist_then(ctx, mutations, vec![event], |_, _| {});
        Ok(())
    }
}

/// `retry j7 --from TASK`: the task and everything downstream of it get a fresh series of
/// attempts (attempt numbers go on); what is upstream keeps its outputs.
#[derive(Message)]
#[rtype(result = "Result<String, String>")]
pub struct RetryFrom {
    pub task: String,
    /// `--budget`: raise the spent budgets in the way to this.
    pub budget_usd_micros: Option<u64>,
}

impl Handler<RetryFrom> for JobRun {
    type Result = Result<String, String>;

    fn handle(&mut self, msg: RetryFrom, ctx: &mut Self::Context) -> Self::Result {
        let result = self.retry_from(ctx, &msg.task, msg.budget_usd_micros);
        self.release_if_idle(ctx);
        result
    }
}

impl JobRun {
    fn retry_from(&mut self, ctx: &mut Context<Self>, from: &str, budget: Option<u64>) -> Result<String, String> {
        let id = self.record.id;
        // `--from` re-runs the first task run of each task; later ones (iterations) must be over.
        let firsts = self.run.graph.len();
        if let Some(t) = self.run.tasks[firsts..].iter().find(|t| !t.state.is_terminal()) {
            return Err(format!("job run j{id}: task `{}` (#{}) {}", t.task, t.id, t.state.phrase()));
        }
        let reached = |i: usize| self.run.tasks[i].is_made();
        let rerun = rerun::plan_from(&self.run.graph, &self.run.states_for_rerun(), from)
            .map_err(|e| format!("job run j{id}: {e}"))?;
        // A re-run spends too: the same budgets as a retry's hold it (`model::retry`).
        let (job, spends) = self.spends();
        let ids: Vec<u64> = rerun.iter().filter(|&&i| reached(i)).map(|&i| self.run.tasks[i].id).collect();
        let plan = crate::model::retry::budgets(&job, &spends, ids, None, budget, format!("j{id} --from {from}"))
            .map_err(|refusal| refusal.to_string())?;
        let input = Input::RunFrom { from: from.to_string(), tasks: rerun, plan };
        self.step(ctx, input, Vec::new(), Vec::new()).reply.unwrap_or_else(|| Ok(String::new()))
    }
}
