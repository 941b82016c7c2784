//! The Supervisor's side of running part of a job again: `gaffer run FILE JOB --only TASK`
//! creates a job run of one task (its needs' outputs borrowed from earlier runs), and every
//! retry goes through the definition check before it reaches the job run (`--definition`,
//! `--from`). The decisions are `model::rerun`'s.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::super::inbox::RetryOptions;
use super::super::job_run::{Begin, CheckDefinition, JobRun, Retry, RetryFrom, Start, workflow_for_run};
use super::super::{EngineError, Target};
use super::{Supervisor, new_task_run};
use crate::config::JobDef;
use crate::model::TaskState;
use crate::model::graph::JobGraph;
use crate::model::rerun::{self, Borrowed, OnlyPlan, PastRun};
use crate::store::{JobRunRecord, Snapshot, TaskRunRecord};

/// Which earlier task runs an `--only` run of `task` borrows its needs' outputs from, read from
/// `reader`; refused (nothing created) when a need never succeeded. The CLI asks this before it
/// opens the state dir for writing, the engine again when it creates the run.
pub fn plan_only(reader: &dyn Snapshot, job: &JobDef, task: &str) -> Result<(OnlyPlan, Vec<TaskRunRecord>), String> {
    let history: Vec<TaskRunRecord> =
        reader.task_runs().map_err(|e| e.to_string())?.into_iter().filter(|t| t.job == job.name).collect();
    let past: Vec<PastRun> =
        history.iter().map(|t| PastRun { task: &t.task, task_run: t.id, job_run: t.job_run, state: t.state }).collect();
    let plan = rerun::only_plan(&JobGraph::new(job), task, &past).map_err(|e| format!("job `{}`: {e}", job.name))?;
    Ok((plan, history))
}

/// `gaffer run FILE JOB --only TASK`: a new job run of JOB with TASK alone; answered with its id
/// once its records are durable.
#[derive(Message)]
#[rtype(result = "Result<u64, EngineError>")]
pub struct SubmitOnly {
    pub job: String,
    pub params: BTreeMap<String, String>,
    pub task: String,
}

impl Handler<SubmitOnly> for Supervisor {
    type Result = ResponseFuture<Result<u64, EngineError>>;

    fn handle(&mut self, msg: SubmitOnly, ctx: &mut Self::Context) -> Self::Result {
        let (workflow, job) = (self.workflow.clone(), msg.job.clone());
        let task = msg.task.clone();
        let created = self.read_then(
            ctx,
            move |reader| {
                // An unknown job is said by `create_only`.
                let Some(def) = workflow.jobs.iter().find(|j| j.name == job) else { return Ok(None) };
                plan_only(reader, def, &task).map(Some).map_err(EngineError::Invalid)
            },
            |act, plan, _ctx| act.create_only(msg, plan),
        );
        Box::pin(async move {
            let (id, begun) = created.await?;
            super::stored(Some(begun)).await?;
            Ok(id)
        })
    }
}

impl Supervisor {
    /// `planned`: `plan_only`'s answer, read off the thread (`None` for an unknown job).
    fn create_only(
        &mut self,
        msg: SubmitOnly,
        planned: Option<(OnlyPlan, Vec<TaskRunRecord>)>,
    ) -> Result<(u64, oneshot::Receiver<Result<(), EngineError>>), EngineError> {
        let shared = self.shared()?;
        if self.is_stopping() {
            return Err(EngineError::Stopped("gaffer is stopping".into()));
        }
        let job_index = self.job_index(&msg.job)?;
        let def = &self.workflow.jobs[job_index];
        let (plan, history) = planned.ok_or_else(|| EngineError::Invalid(format!("unknown job `{}`", msg.job)))?;
        let now = shared.clock.now_ms();
        let record = JobRunRecord { sliced: true, ..self.new_job_run(&shared, def, msg.params, now)? };
        let by_id: HashMap<u64, &TaskRunRecord> = history.iter().map(|h| (h.id, h)).collect();
        let borrowed: HashMap<usize, Borrowed> = plan.borrowed.iter().copied().collect();
        let mut tasks = Vec::new();
        for i in plan.tasks() {
            let mut t = new_task_run(shared.store.next_task_run(), &record, i, &def.tasks[i], now);
            if let Some(from) = borrowed.get(&i) {
                let source = by_id.get(&from.task_run);
                t.state = TaskState::Succeeded;
                t.outputs = source.map(|s| s.outputs.clone()).unwrap_or_default();
                t.exit_code = source.and_then(|s| s.exit_code);
                t.detail = Some(format!("not run: outputs of task run {} (job run j{})", from.task_run, from.job_run));
                (t.started_at_ms, t.ended_at_ms) = (Some(now), Some(now));
            }
            tasks.push(t);
        }
        let names: Vec<&str> = tasks.iter().map(|t| t.task.as_str()).collect();
        let workflow =
            workflow_for_run(self.workflow.clone(), job_index, &names, true).map_err(EngineError::Invalid)?;
        let (tx, rx) = oneshot::channel();
        let id = record.id;
        let actor = JobRun::new(shared, workflow, job_index, record, tasks, Vec::new(), Default::default()).start();
        actor.do_send(Start(Begin::New { with: Vec::new(), events: Vec::new(), begun: Some(tx) }));
        self.job_runs.insert(id, actor);
        self.job_of.insert(id, msg.job);
        Ok((id, rx))
    }

    /// A retry of `target`: the definition check first (it may switch the run to the file in
    /// use), then a plain retry or `--from`. Answered once the change is durable.
    pub(super) fn retry_with(
        &mut self,
        ctx: &mut Context<Self>,
        target: Target,
        options: RetryOptions,
    ) -> ResponseFuture<Result<String, EngineError>> {
        let current = (self.workflow.clone(), self.definition);
        if let (Some(_), Target::TaskRun(id)) = (&options.from, target) {
            let refused = format!("--from re-runs part of a job run: give the job run (j7), not task run {id}");
            return Box::pin(async move { Err(EngineError::Invalid(refused)) });
        }
        let located = self.with_target(ctx, target, |act, job_run, task_run, stored| {
            // A retry is work done again: it renders templates, so it needs the run's secrets.
            act.secrets_to_go_on(job_run, stored.as_ref())?;
            Ok((act.actor_for(job_run, stored)?, task_run))
        });
        let store = self.shared.as_ref().map(|s| s.store.clone());
        Box::pin(async move {
            let (actor, task_run) = located.await?;
            let stopped = |_| EngineError::Stopped("the job run stopped".into());
            let check = CheckDefinition { current: current.0, key: current.1, choice: options.definition };
            // Refusals from the run as it is now (the API answers them 409).
            let note = actor.send(check).await.map_err(stopped)?.map_err(EngineError::Refused)?;
            let budget_usd_micros = options.budget_usd_micros;
            let answer = match options.from {
                Some(task) => actor.send(RetryFrom { task, budget_usd_micros }).await,
                None => actor.send(Retry { task_run, budget_usd_micros }).await,
            };
            // A switch made before a refused retry stays (it was asked for): say both.
            let with_note = |text: String| note.as_ref().map_or(text.clone(), |note| format!("{note}\n{text}"));
            let message = answer.map_err(stopped)?.map_err(|e| EngineError::Refused(with_note(e)))?;
            // As for every command: durable before it is answered (see `Command`).
            if let Some(store) = store {
                store.commit(Vec::new()).await?;
            }
            Ok(with_note(message))
        })
    }
}

/// The workflow a revived job run needs: its stored one, cut down to its task runs' tasks if
/// it is sliced (`JobRunRecord::sliced`).
pub(super) fn run_workflow(
    workflow: Arc<crate::config::Workflow>,
    job_index: usize,
    record: &JobRunRecord,
    tasks: &[TaskRunRecord],
) -> Result<Arc<crate::config::Workflow>, EngineError> {
    let names: Vec<&str> = tasks.iter().map(|t| t.task.as_str()).collect();
    workflow_for_run(workflow, job_index, &names, record.sliced)
        .map_err(|e| EngineError::Invalid(format!("job run j{}: {e}", record.id)))
}
