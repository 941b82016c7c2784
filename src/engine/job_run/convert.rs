//! The store's records ↔ the core's plain state (`model::run`): the actor's side of the
//! boundary, so the core never sees a store type.

use crate::config::TransitionOn;
use crate::model::run::{CacheHit, JobRunFacts, Kind, Raised, ReachedBy, TaskRun};
use crate::store::records::{self, TaskRunKind};
use crate::store::{CacheEntry, JobRunRecord, RaisedBudgets, TaskRunRecord};

impl From<TaskRunRecord> for TaskRun {
    fn from(r: TaskRunRecord) -> TaskRun {
        TaskRun {
            id: r.id,
            task: r.task,
            task_index: r.task_index as usize,
            state: r.state,
            queue: r.queue,
            priority: r.priority,
            attempt: r.attempt,
            series_start: r.series_start,
            max_attempts: r.max_attempts,
            queued_at_ms: r.queued_at_ms,
            enqueue_seq: r.enqueue_seq,
            not_before_ms: r.not_before_ms,
            outputs: r.outputs,
            exit_code: r.exit_code,
            cost_usd_micros: r.cost_usd_micros,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            reason: r.reason,
            detail: r.detail,
            progress: r.progress,
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            ended_at_ms: r.ended_at_ms,
            iteration: r.iteration,
            item_index: r.item_index,
            item: r.item,
            kind: match r.kind {
                TaskRunKind::Task => Kind::Task,
                TaskRunKind::Compensation => Kind::Compensation,
                TaskRunKind::FanOut => Kind::FanOut,
            },
            compensates: r.compensates,
            // A word this gaffer does not know (never written so) reads as not recorded.
            reached_by: r
                .reached_by
                .and_then(|by| Some(ReachedBy { from_task_run: by.from_task_run, on: TransitionOn::parse(&by.on)? })),
        }
    }
}

/// The store's word for the core's `kind`.
pub fn kind_record(kind: Kind) -> TaskRunKind {
    match kind {
        Kind::Task => TaskRunKind::Task,
        Kind::Compensation => TaskRunKind::Compensation,
        Kind::FanOut => TaskRunKind::FanOut,
    }
}

/// The record of task run `t` of the job run `job_run`, whose task `requires` these node labels.
pub fn task_run_record(job_run: &JobRunRecord, t: &TaskRun, requires: &[String]) -> TaskRunRecord {
    TaskRunRecord {
        id: t.id,
        job_run: job_run.id,
        job: job_run.job.clone(),
        task: t.task.clone(),
        task_index: t.task_index as u32,
        state: t.state,
        queue: t.queue.clone(),
        priority: t.priority,
        attempt: t.attempt,
        series_start: t.series_start,
        max_attempts: t.max_attempts,
        queued_at_ms: t.queued_at_ms,
        enqueue_seq: t.enqueue_seq,
        not_before_ms: t.not_before_ms,
        outputs: t.outputs.clone(),
        exit_code: t.exit_code,
        cost_usd_micros: t.cost_usd_micros,
        input_tokens: t.input_tokens,
        output_tokens: t.output_tokens,
        reason: t.reason,
        detail: t.detail.clone(),
        progress: t.progress.clone(),
        created_at_ms: t.created_at_ms,
        started_at_ms: t.started_at_ms,
        ended_at_ms: t.ended_at_ms,
        iteration: t.iteration,
        item_index: t.item_index,
        item: t.item.clone(),
        kind: kind_record(t.kind),
        compensates: t.compensates,
        reached_by: t
            .reached_by
            .map(|by| records::ReachedBy { from_task_run: by.from_task_run, on: by.on.as_str().to_string() }),
        requires: requires.to_vec(),
    }
}

impl From<&JobRunRecord> for JobRunFacts {
    fn from(r: &JobRunRecord) -> JobRunFacts {
        JobRunFacts {
            id: r.id,
            job: r.job.clone(),
            state: r.state,
            reason: r.reason.clone(),
            cost_usd_micros: r.cost_usd_micros,
            ended_at_ms: r.ended_at_ms,
            cancel_requested: r.cancel_requested,
        }
    }
}

/// `record` with the core's facts of the job run written into it.
pub fn job_run_record(record: &JobRunRecord, facts: &JobRunFacts) -> JobRunRecord {
    JobRunRecord {
        state: facts.state,
        reason: facts.reason.clone(),
        cost_usd_micros: facts.cost_usd_micros,
        ended_at_ms: facts.ended_at_ms,
        cancel_requested: facts.cancel_requested,
        ..record.clone()
    }
}

impl From<RaisedBudgets> for Raised {
    fn from(r: RaisedBudgets) -> Raised {
        Raised { job_run: r.job_run, task_runs: r.task_runs }
    }
}

impl From<&Raised> for RaisedBudgets {
    fn from(r: &Raised) -> RaisedBudgets {
        RaisedBudgets { job_run: r.job_run, task_runs: r.task_runs.clone() }
    }
}

impl From<CacheEntry> for CacheHit {
    fn from(e: CacheEntry) -> CacheHit {
        CacheHit {
            task_run: e.task_run,
            job_run: e.job_run,
            succeeded_at_ms: e.succeeded_at_ms,
            expires_at_ms: e.expires_at_ms,
            outputs: e.outputs,
            exit_code: e.exit_code,
        }
    }
}

impl From<CacheHit> for CacheEntry {
    fn from(h: CacheHit) -> CacheEntry {
        CacheEntry {
            task_run: h.task_run,
            job_run: h.job_run,
            succeeded_at_ms: h.succeeded_at_ms,
            expires_at_ms: h.expires_at_ms,
            outputs: h.outputs,
            exit_code: h.exit_code,
        }
    }
}
