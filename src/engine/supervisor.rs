//! The Supervisor actor: the root of the tree. It starts the other actors, owns the registry
//! of live job runs, turns commands into messages, counts restarts (and gives up cleanly when
//! an actor keeps dying), and runs the graceful stop.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::dispatcher::{Dispatcher, StopDispatching};
use super::inbox;
use super::job_run::{Begin, Cancel, JobRun, Signal, Start, Stop};
use super::scheduler::Fire;
use super::{EngineError, Shared, SubmitRequest, Submitted, Target};
use crate::config::Workflow;
use crate::model::JobState;
use crate::store::{AttemptRecord, DefinitionRecord, JobRunRecord, Mutation, Snapshot, TaskRunRecord};

mod adopt;
mod reads;
mod relay;
mod rerun;
use reads::{Reading, StoredRun, read_target};
pub use rerun::{SubmitOnly, plan_only};

/// Restart intensity: more restarts of one worker than this within the window is a fault that
/// restarting will not fix.
const MAX_RESTARTS: usize = 10;
const RESTART_WINDOW: Duration = Duration::from_secs(10);

/// Counts restarts per actor; past the intensity it reports a fatal fault.
#[derive(Clone, Default)]
pub struct RestartLedger {
    inner: Arc<Mutex<LedgerInner>>,
}

#[derive(Default)]
struct LedgerInner {
    restarts: HashMap<usize, VecDeque<Instant>>,
    on_fatal: Option<Recipient<Fatal>>,
}

impl RestartLedger {
    fn set_fatal(&self, recipient: Recipient<Fatal>) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.on_fatal = Some(recipient);
        }
    }

    pub fn record(&self, worker: usize, reason: &str) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let now = Instant::now();
        let times = inner.restarts.entry(worker).or_default();
        times.push_back(now);
        while times.front().is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW) {
            times.pop_front();
        }
        if times.len() > MAX_RESTARTS {
            let message = format!(
                "worker {worker} restarted {} times in {} s (last: {reason}); giving up",
                times.len(),
                RESTART_WINDOW.as_secs()
            );
            if let Some(fatal) = &inner.on_fatal {
                fatal.do_send(Fatal(message));
            }
        }
    }
}

/// Told how the awaited job runs ended.
type Waiter = oneshot::Sender<Result<Vec<(u64, JobState)>, EngineError>>;

pub struct Supervisor {
    pub(super) shared: Option<Arc<Shared>>,
    pub(super) workflow: Arc<Workflow>,
    pub(super) definition: u64,
    pub(super) ledger: RestartLedger,
    pub(super) job_runs: HashMap<u64, Addr<JobRun>>,
    /// The job of each live job run, for overlap policies.
    pub(super) job_of: HashMap<u64, String>,
    /// Fire times held by `overlap = "queue"` until the job's active run ends.
    pub(super) waiting_fires: HashMap<String, u64>,
    /// Cluster mode: fire times whose run the store may still refuse (other nodes' runs of the
    /// job, `Mutation::ActiveRunsBelow`), by job run, to skip if it does; kept while the run is.
    pub(super) bounded_fires: HashMap<u64, super::scheduler::Fire>,
    /// Idempotency keys of submits whose records are not durable yet (the store has the rest).
    keys: HashMap<String, u64>,
    /// How job runs ended, kept only while a waiter still waits for them: a run that ended
    /// before anyone asked is found in the store (`WaitFor`), so nothing here grows with the
    /// number of runs a long-running `serve` has finished.
    ended: BTreeMap<u64, JobState>,
    /// Who waits for which job runs to end (`None`: only for a fatal fault).
    waiters: Vec<(Option<Vec<u64>>, Waiter)>,
    fatal: Option<String>,
    stopping: bool,
    /// Cluster mode: the adoption tick runs (`adopt.rs`).
    cluster_ticking: bool,
    /// A rejoin after a lost lease is under way: the ticks a paused node fires in a burst when
    /// it resumes must not each start one.
    rejoining: bool,
    /// Letters read for a job run this node owns but runs no actor for yet: an adoption
    /// commits the ownership before the actor starts, and the mail reader may drain the run's
    /// letters in between. Handed over when it starts (`adopt.rs`); oldest dropped past a bound.
    early_mail: std::collections::VecDeque<crate::store::pg::mail::Received>,
}

impl Supervisor {
    pub fn new(workflow: Arc<Workflow>, definition: u64, ledger: RestartLedger) -> Supervisor {
        Supervisor {
            shared: None,
            workflow,
            definition,
            ledger,
            job_runs: HashMap::new(),
            job_of: HashMap::new(),
            waiting_fires: HashMap::new(),
            bounded_fires: HashMap::new(),
            keys: HashMap::new(),
            ended: BTreeMap::new(),
            waiters: Vec::new(),
            fatal: None,
            stopping: false,
            cluster_ticking: false,
            rejoining: false,
            early_mail: Default::default(),
        }
    }

    /// A scheduled fire: the job's declared params, and `begin` carries the schedule's advance.
    pub(super) fn submit_scheduled(&mut self, job: &str, begin: Begin) -> Result<u64, EngineError> {
        self.submit(job, BTreeMap::new(), None, begin)
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping
    }

    pub(super) fn job_runs_addr(&self, id: u64) -> Option<Addr<JobRun>> {
        self.job_runs.get(&id).cloned()
    }

    pub(super) fn shared(&self) -> Result<Arc<Shared>, EngineError> {
        self.shared.clone().ok_or_else(|| EngineError::Stopped("the engine is not started".into()))
    }

    fn answer_waiters(&mut self) {
        let fatal = self.fatal.clone();
        let ended = &self.ended;
        let mut still = Vec::new();
        for (ids, tx) in self.waiters.drain(..) {
            if let Some(message) = &fatal {
                let _ = tx.send(Err(EngineError::Fatal(message.clone())));
            } else if let Some(ids) = ids.as_ref().filter(|ids| ids.iter().all(|id| ended.contains_key(id))) {
                let _ = tx.send(Ok(ids.iter().map(|id| (*id, ended[id])).collect()));
            } else {
                still.push((ids, tx));
            }
        }
        self.waiters = still;
        let waited: std::collections::BTreeSet<u64> =
            self.waiters.iter().filter_map(|(ids, _)| ids.as_ref()).flatten().copied().collect();
        self.ended.retain(|id, _| waited.contains(id));
    }

    /// The runs among `ids` with neither an actor nor a known end: the store says how those
    /// ended (before this waiter came); a run that is neither live nor ended is waited for.
    fn gone(&self, ids: &[u64]) -> Vec<u64> {
        ids.iter().copied().filter(|id| !self.job_runs.contains_key(id) && !self.ended.contains_key(id)).collect()
    }

    /// Creates a job run of `job` with the task runs it makes at once pending, and starts its
    /// actor. An idempotency-key mutation in `begin` gets the new id filled in.
    fn submit(
        &mut self,
        job: &str,
        params: BTreeMap<String, String>,
        priority: Option<u8>,
        begin: Begin,
    ) -> Result<u64, EngineError> {
        let shared = self.shared()?;
        if self.stopping {
            return Err(EngineError::Stopped("gaffer is stopping".into()));
        }
        if priority.is_some_and(|p| p > 100) {
            return Err(EngineError::Invalid("priority must be from 0 to 100".into()));
        }
        let job_index = self.job_index(job)?;
        let def = &self.workflow.jobs[job_index];
        let now = shared.clock.now_ms();
        let record = self.new_job_run(&shared, def, params, now)?;
        let id = record.id;
        // A task nothing reaches gets no task run (SPEC §2.2): those behind a transition get
        // theirs when one reaches them (`model::run`).
        let made = crate::model::workflow_graph::WorkflowGraph::of(def).made_at_start();
        let tasks = def
            .tasks
            .iter()
            .enumerate()
            .filter(|(i, _)| made[*i])
            .map(|(i, t)| new_task_run(shared.store.next_task_run(), &record, i, t, now))
            .map(|t| TaskRunRecord { priority: priority.unwrap_or(t.priority), ..t })
            .collect();
        let begin = match begin {
            Begin::New { with, events, begun } => {
                Begin::New { with: with.into_iter().map(|m| with_job_run(m, id)).collect(), events, begun }
            }
            other => other,
        };
        let actor =
            JobRun::new(shared, self.workflow.clone(), job_index, record, tasks, Vec::new(), Default::default())
                .start();
        actor.do_send(Start(begin));
        self.job_runs.insert(id, actor);
        self.job_of.insert(id, job.to_string());
        Ok(id)
    }

    /// A new job run of `def`, running, with the definition in use and `given` params.
    fn new_job_run(
        &self,
        shared: &Shared,
        def: &crate::config::JobDef,
        given: BTreeMap<String, String>,
        now: u64,
    ) -> Result<JobRunRecord, EngineError> {
        // Secrets stay in this process's memory; the record holds `***` for them.
        if shared.cluster.is_some() {
            shared.secrets.check_given_in_cluster(def, &given).map_err(EngineError::Invalid)?;
        }
        let params = shared.secrets.resolve(def, &given).map_err(EngineError::Invalid)?;
        let id = shared.store.next_job_run();
        shared.secrets.keep(id, params.secrets);
        Ok(JobRunRecord {
            id,
            job: def.name.clone(),
            definition: self.definition,
            params: params.stored,
            state: JobState::Running,
            reason: None,
            cost_usd_micros: 0,
            created_at_ms: now,
            ended_at_ms: None,
            cancel_requested: false,
            sliced: false,
        })
    }

    fn job_index(&self, job: &str) -> Result<usize, EngineError> {
        self.workflow.jobs.iter().position(|j| j.name == job).ok_or_else(|| {
            let known: Vec<&str> = self.workflow.jobs.iter().map(|j| j.name.as_str()).collect();
            EngineError::Invalid(format!("unknown job `{job}` (the workflow has: {})", known.join(", ")))
        })
    }

    /// Starts an actor for every unfinished job run in the store (`runs`, read off the thread);
    /// refuses (starting none) when one of them needs a secret this process was not given.
    fn resume_all(&mut self, runs: Vec<StoredRun>, cancelled: &[u64]) -> Result<Vec<(u64, String)>, EngineError> {
        let shared = self.shared()?;
        let runs: Vec<StoredRun> = runs.into_iter().filter(|r| !self.job_runs.contains_key(&r.record.id)).collect();
        let refusals: Vec<String> = runs
            .iter()
            .filter(|r| !cancelled.contains(&r.record.id))
            .filter_map(|r| {
                self.ensure_secrets(r).err().map(|why| format!("{why}; or cancel it: gaffer cancel j{}", r.record.id))
            })
            .collect();
        if !refusals.is_empty() {
            return Err(EngineError::Invalid(refusals.join("\n")));
        }
        let mut resumed = Vec::new();
        for run in runs {
            let (id, job) = (run.record.id, run.record.job.clone());
            let actor = self.revive(&shared, run)?;
            actor.do_send(Start(Begin::Resume));
            self.job_runs.insert(id, actor);
            self.job_of.insert(id, job.clone());
            resumed.push((id, job));
        }
        Ok(resumed)
    }

    /// Rebuilds a job run's actor from what the store holds of it, with the definition it was
    /// started with.
    fn revive(&self, shared: &Arc<Shared>, run: StoredRun) -> Result<Addr<JobRun>, EngineError> {
        let workflow = self.definition_of(&run)?;
        let StoredRun { record, tasks, raised, interrupted, .. } = run;
        let job_index = workflow.jobs.iter().position(|j| j.name == record.job).ok_or_else(|| {
            EngineError::Invalid(format!(
                "job run j{}: job `{}` is missing from its stored definition",
                record.id, record.job
            ))
        })?;
        let workflow = rerun::run_workflow(workflow, job_index, &record, &tasks)?;
        Ok(JobRun::new(shared.clone(), workflow, job_index, record, tasks, interrupted, raised).start())
    }

    fn definition_of(&self, run: &StoredRun) -> Result<Arc<Workflow>, EngineError> {
        match &run.stored_workflow {
            None => Ok(self.workflow.clone()),
            Some(stored) => stored.clone(),
        }
    }

    /// Makes sure this process holds the secrets job run `run` needs to go on (they are
    /// never stored): from `--param` or the environment, else says what to give.
    fn ensure_secrets(&self, run: &StoredRun) -> Result<(), String> {
        let record = &run.record;
        let workflow = self.definition_of(run).map_err(|e| e.to_string())?;
        let Some(job) = workflow.jobs.iter().find(|j| j.name == record.job) else { return Ok(()) };
        let shared = self.shared().map_err(|e| e.to_string())?;
        shared.secrets.ensure(job, record.id).map_err(|why| format!("job run j{} (`{}`): {why}", record.id, record.job))
    }

    /// The live actor of job run `id`, or one revived from `stored` (read off the thread) for a
    /// run that has none.
    fn actor_for(&mut self, id: u64, stored: Option<StoredRun>) -> Result<Addr<JobRun>, EngineError> {
        if let Some(addr) = self.job_runs.get(&id) {
            return Ok(addr.clone());
        }
        let shared = self.shared()?;
        let run = stored.ok_or(EngineError::UnknownId(Target::JobRun(id)))?;
        let unfinished = !run.record.state.is_terminal();
        let job = run.record.job.clone();
        let actor = self.revive(&shared, run)?;
        if unfinished {
            // A command that came before `ResumeAll` (the socket opens first): this run is
            // resumed here, and `ResumeAll` skips it, so it must not be left un-started.
            actor.do_send(Start(Begin::Resume));
            self.job_of.insert(id, job);
        }
        self.ended.remove(&id);
        self.job_runs.insert(id, actor.clone());
        Ok(actor)
    }

    fn secrets_to_go_on(&self, job_run: u64, stored: Option<&StoredRun>) -> Result<(), EngineError> {
        let run = stored.ok_or(EngineError::UnknownId(Target::JobRun(job_run)))?;
        self.ensure_secrets(run).map_err(|why| {
            EngineError::Invalid(format!(
                "{why} — give it to `gaffer run` or `gaffer serve` (the process that runs it)"
            ))
        })
    }

    /// The job run `target` names, the task run inside it (if any) and what the store holds of
    /// that job run (nothing yet while its first commit is not durable): read off the thread,
    /// then `then` on the actor with them.
    fn with_target<R: 'static>(
        &self,
        ctx: &mut Context<Self>,
        target: Target,
        then: impl FnOnce(&mut Self, u64, Option<u64>, Option<StoredRun>) -> Result<R, EngineError> + 'static,
    ) -> Reading<R> {
        let in_use = self.definition;
        self.read_then(
            ctx,
            move |reader| read_target(reader, target, in_use),
            move |act, found, _ctx| {
                let (job_run, task_run, stored) = found;
                then(act, job_run, task_run, stored)
            },
        )
    }
}

/// The workflow a job run was started with, parsed from the store.
pub(super) fn stored_workflow(reader: &dyn Snapshot, record: &JobRunRecord) -> Result<Workflow, EngineError> {
    let stored: DefinitionRecord = reader.definition(record.definition)?.ok_or_else(|| {
        EngineError::Invalid(format!("job run j{}: its workflow definition is missing from the store", record.id))
    })?;
    crate::config::parse(&PathBuf::from(&stored.path), &stored.source).map_err(|d| {
        EngineError::Invalid(format!("job run j{}: its stored workflow no longer validates:\n{d}", record.id))
    })
}

/// An idempotency key made before the job run had its id.
fn with_job_run(mutation: Mutation, id: u64) -> Mutation {
    match mutation {
        Mutation::IdempotencyKey(key, _) => Mutation::IdempotencyKey(key, id),
        other => other,
    }
}

/// A running task run with no attempt record (a crash between the two commits cannot happen,
/// they share one; this only guards against a damaged store).
pub(super) fn lost_attempt(t: &TaskRunRecord) -> AttemptRecord {
    AttemptRecord::started(t.id, t.job_run, t.attempt, t.started_at_ms.unwrap_or(0))
}

fn new_task_run(
    id: u64,
    job_run: &JobRunRecord,
    index: usize,
    def: &crate::config::TaskDef,
    now: u64,
) -> TaskRunRecord {
    TaskRunRecord {
        task_index: index as u32,
        queue: def.queue.clone(),
        priority: def.priority,
        max_attempts: def.retry.max_attempts,
        kind: super::job_run::convert::kind_record(crate::model::run::Kind::own_run_of(def)),
        requires: def.requires.clone(),
        ..TaskRunRecord::pending(id, job_run.id, &job_run.job, &def.name, now)
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(super::MAILBOX_CAPACITY);
        self.ledger.set_fatal(ctx.address().recipient());
    }
}

/// Runs every pending inbox command now; answers with the job runs they touched.
#[derive(Message)]
#[rtype(result = "Result<Vec<(u64, String)>, EngineError>")]
pub struct ApplyInbox;

impl Handler<ApplyInbox> for Supervisor {
    type Result = ResponseFuture<Result<Vec<(u64, String)>, EngineError>>;

    fn handle(&mut self, _: ApplyInbox, ctx: &mut Self::Context) -> Self::Result {
        let Some(state_dir) = self.shared.as_ref().map(|s| s.state_dir.clone()) else {
            return Box::pin(async { Ok(Vec::new()) });
        };
        let taken = self.read_then(
            ctx,
            move |reader| {
                let commands = inbox::take(&state_dir).into_iter().map(|(file, command)| {
                    // Runs a retry or a signal set going again are waited for; a cancel ends things.
                    let job_run = (command.action != inbox::Action::Cancel)
                        .then(|| reads::locate(reader, command.target).ok())
                        .flatten()
                        .and_then(|(id, _)| reader.job_run(id).ok().flatten().map(|r| (id, r.job)));
                    (file, command, job_run)
                });
                Ok(commands.collect::<Vec<_>>())
            },
            |_act, commands, ctx| {
                let mut work = Vec::new();
                for (file, command, job_run) in commands {
                    // No workflow file was known when it was written: unless it said otherwise,
                    // the run keeps the definition it started with (said when it was recorded).
                    let mut retry = command.retry;
                    retry.definition.get_or_insert(crate::model::rerun::DefinitionChoice::Stored);
                    let command = Command { action: command.action, target: command.target, retry };
                    work.push((file, job_run, ctx.address().send(command)));
                }
                Ok(work)
            },
        );
        Box::pin(async move {
            let work = taken.await?;
            let mut touched = Vec::new();
            for (file, job_run, answer) in work {
                let result = match answer.await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(_) => Err("gaffer is stopping".to_string()),
                };
                if result.is_ok() {
                    touched.extend(job_run);
                }
                inbox::answer(&file, result);
            }
            Ok(touched)
        })
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach(pub Arc<Shared>);

/// The JobRun actor of `job_run` if this engine runs it (in a cluster: this node owns it).
#[derive(Message)]
#[rtype(result = "Option<Addr<JobRun>>")]
pub struct LocalOwner(pub u64);

impl Handler<LocalOwner> for Supervisor {
    type Result = Option<Addr<JobRun>>;

    fn handle(&mut self, LocalOwner(job_run): LocalOwner, _ctx: &mut Self::Context) -> Self::Result {
        self.job_runs.get(&job_run).cloned()
    }
}

/// Letters for the owner of job runs this node owns (`store::pg::mail`), in the order written:
/// each goes to its job run's actor. One for a job run no actor runs here any more is dropped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Delivered(pub Vec<crate::store::pg::mail::Received>);

/// Letters kept for job runs whose actor has not started (`Supervisor::early_mail`).
const EARLY_MAIL_MAX: usize = 4096;

impl Handler<Delivered> for Supervisor {
    type Result = ();

    fn handle(&mut self, Delivered(letters): Delivered, ctx: &mut Self::Context) {
        for letter in letters {
            if matches!(letter.letter.mail, crate::store::pg::mail::Mail::Command { .. }) {
                self.relayed_command(letter, ctx);
                continue;
            }
            match self.job_runs.get(&letter.letter.job_run) {
                Some(actor) => actor.do_send(crate::engine::job_run::Mailed(letter)),
                None => {
                    if self.early_mail.len() >= EARLY_MAIL_MAX {
                        let dropped = self.early_mail.pop_front().map(|l| l.letter.job_run);
                        tracing::debug!(job_run = dropped, "mail for a job run not running here: dropped");
                    }
                    self.early_mail.push_back(letter);
                }
            }
        }
    }
}

impl Handler<Attach> for Supervisor {
    type Result = ();

    /// The definition in use is committed first of all, before the API can take a submit:
    /// the store commits in order, so every job run written after this refers to a stored
    /// definition.
    fn handle(&mut self, Attach(shared): Attach, _ctx: &mut Self::Context) {
        let definition =
            DefinitionRecord { path: self.workflow.path.display().to_string(), source: shared.source.clone() };
        drop(shared.store.commit(vec![Mutation::Definition(self.definition, definition)]));
        self.shared = Some(shared);
    }
}

#[derive(Message)]
#[rtype(result = "Result<Vec<(u64, String)>, EngineError>")]
pub struct ResumeAll;

impl Handler<ResumeAll> for Supervisor {
    type Result = ResponseFuture<Result<Vec<(u64, String)>, EngineError>>;

    fn handle(&mut self, _: ResumeAll, ctx: &mut Self::Context) -> Self::Result {
        let shared = match self.shared() {
            Ok(shared) => shared,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        // Awaited before the answer: `serve` says it is serving only once the definition
        // `Attach` committed is durable (commits are in order; a disk that fills after that
        // line fails a submit, not the start-up).
        let stored = shared.store.commit(Vec::new());
        if self.is_cluster() {
            // A node resumes only what it adopts: the others' job runs are theirs.
            let adopted = self.resume_cluster(ctx);
            return Box::pin(async move {
                stored.await.map_err(|e| EngineError::Fatal(e.to_string()))?;
                adopted.await
            });
        }
        let (in_use, state_dir) = (self.definition, shared.state_dir.clone());
        let read = move |reader: &dyn Snapshot| {
            let mut runs = Vec::new();
            for record in reader.job_runs()?.into_iter().filter(|r| !r.state.is_terminal()) {
                runs.push(reads::stored_run(reader, record, in_use)?);
            }
            Ok((runs, inbox::cancelled_job_runs(&state_dir)))
        };
        let resumed = self.read_then(ctx, read, |act, (runs, cancelled), _ctx| act.resume_all(runs, &cancelled));
        Box::pin(async move {
            stored.await.map_err(|e| EngineError::Fatal(e.to_string()))?;
            resumed.await
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<Submitted, EngineError>")]
pub struct Submit(pub SubmitRequest);

impl Handler<Submit> for Supervisor {
    type Result = ResponseActFuture<Self, Result<Submitted, EngineError>>;

    /// Submits are handled one at a time here, so two with the same key cannot both create;
    /// the answer comes once the new run's records are durable, so an id handed out is kept.
    /// From then on the store answers for its key, and `keys` forgets it.
    fn handle(&mut self, Submit(request): Submit, ctx: &mut Self::Context) -> Self::Result {
        let key = request.key.clone();
        let created: Reading<_> = match key.clone() {
            // A key no submit of this instance holds: the store says whether it made a run.
            Some(key) if !self.keys.contains_key(&key) => self.read_then(
                ctx,
                move |reader| Ok(reader.idempotency_key(&key)?),
                |act, stored, _ctx| act.create(request, stored),
            ),
            _ => Box::pin(std::future::ready(self.create(request, None))),
        };
        let stored = async move {
            let (submitted, begun) = created.await?;
            stored(begun).await?;
            Ok(submitted)
        };
        Box::pin(stored.into_actor(self).map(move |result: Result<Submitted, EngineError>, act, _ctx| {
            if let (Ok(Submitted { existing: false, .. }), Some(key)) = (&result, key) {
                act.keys.remove(&key);
            }
            result
        }))
    }
}

/// `gaffer run`'s new job runs, one of each job named, created in this order (their ids follow
/// it) in one turn of the actor, and answered once all of them are durable: each commit joins
/// the others' rather than waiting for the one before it (one submit at a time paced a
/// workflow of many jobs by a commit each: BENCHMARKS.md, "Starting a workflow's jobs").
/// The first one refused ends the list: those before it run, and the refusal is the answer.
#[derive(Message)]
#[rtype(result = "Result<Vec<u64>, EngineError>")]
pub struct SubmitMany(pub Vec<SubmitRequest>);

impl Handler<SubmitMany> for Supervisor {
    type Result = ResponseFuture<Result<Vec<u64>, EngineError>>;

    fn handle(&mut self, SubmitMany(requests): SubmitMany, _ctx: &mut Self::Context) -> Self::Result {
        let mut created = Vec::with_capacity(requests.len());
        let mut refused = None;
        for request in requests {
            match self.create(request, None) {
                Ok((submitted, begun)) => created.push((submitted.job_run, begun)),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        Box::pin(async move {
            let mut ids = Vec::with_capacity(created.len());
            for (id, begun) in created {
                stored(begun).await?;
                ids.push(id);
            }
            refused.map_or(Ok(ids), Err)
        })
    }
}

type Begun = Option<oneshot::Receiver<Result<(), EngineError>>>;

/// Waits until a new job run's first commit is durable (`None`: nothing new was made).
async fn stored(begun: Begun) -> Result<(), EngineError> {
    let Some(begun) = begun else { return Ok(()) };
    begun.await.map_err(|_| EngineError::Stopped("the job run stopped before it was stored".into()))?
}

impl Supervisor {
    /// `stored`: the job run the store has for the request's key, if it has one.
    fn create(&mut self, request: SubmitRequest, stored: Option<u64>) -> Result<(Submitted, Begun), EngineError> {
        if let Some(key) = &request.key
            && let Some(job_run) = self.keys.get(key).copied().or(stored)
        {
            return Ok((Submitted { job_run, existing: true }, None));
        }
        let with = request.key.iter().map(|key| Mutation::IdempotencyKey(key.clone(), 0)).collect();
        let (tx, rx) = oneshot::channel();
        let begin = Begin::New { with, events: Vec::new(), begun: Some(tx) };
        let job_run = self.submit(&request.job, request.params, request.priority, begin)?;
        if let Some(key) = request.key {
            self.keys.insert(key, job_run);
        }
        Ok((Submitted { job_run, existing: false }, Some(rx)))
    }
}

#[derive(Message)]
#[rtype(result = "Result<String, EngineError>")]
pub struct Command {
    pub action: inbox::Action,
    pub target: Target,
    /// `--from`, `--definition` of a retry (ignored by the other actions).
    pub retry: inbox::RetryOptions,
}

impl Handler<Command> for Supervisor {
    type Result = ResponseFuture<Result<String, EngineError>>;

    /// Carried out here, or in a cluster where its job run's owner is (`relay.rs`).
    fn handle(&mut self, msg: Command, ctx: &mut Self::Context) -> Self::Result {
        match self.cluster() {
            Some(node) if !self.runs_here(msg.target) => self.command_in_cluster(node, msg, ctx),
            _ => self.command_here(msg, ctx),
        }
    }
}

impl Supervisor {
    /// A command carried out by this node's actor of the job run (started for it if need be).
    fn command_here(&mut self, msg: Command, ctx: &mut Context<Self>) -> ResponseFuture<Result<String, EngineError>> {
        if msg.action == inbox::Action::Retry {
            return self.retry_with(ctx, msg.target, msg.retry);
        }
        let signal = matches!(msg.action, inbox::Action::Signal(_));
        let located = self.with_target(ctx, msg.target, move |act, job_run, task_run, stored| {
            if signal {
                // A released task starts work again: it renders templates.
                act.secrets_to_go_on(job_run, stored.as_ref())?;
            }
            Ok((act.actor_for(job_run, stored)?, task_run))
        });
        let store = self.shared.as_ref().map(|s| s.store.clone());
        Box::pin(async move {
            let (actor, task_run) = located.await?;
            let answer = match msg.action {
                inbox::Action::Retry => unreachable!("retries go through `retry_with`"),
                inbox::Action::Cancel => actor.send(Cancel { task_run }).await,
                inbox::Action::Signal(name) => actor.send(Signal { task_run, name }).await,
            };
            let message = answer
                .map_err(|_| EngineError::Stopped("the job run stopped".into()))?
                .map_err(EngineError::Refused)?;
            // The job run asked for its commits before it answered, and the store commits in
            // order: once this empty one is durable, so is the change. A `gaffer tasks` right
            // after a `gaffer retry` sees it.
            if let Some(store) = store {
                store.commit(Vec::new()).await?;
            }
            Ok(message)
        })
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct JobRunEnded {
    pub id: u64,
    pub state: JobState,
}

impl Handler<JobRunEnded> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: JobRunEnded, ctx: &mut Self::Context) {
        self.job_runs.remove(&msg.id);
        self.bounded_fires.remove(&msg.id);
        self.ended.insert(msg.id, msg.state);
        // Nobody decides for an ended job run: a command about it takes it over (`relay.rs`).
        if let Some(node) = self.cluster() {
            node.backend.store().ownership.release(msg.id);
        }
        if let Some(job) = self.job_of.remove(&msg.id)
            && let Some(scheduled_for) = self.waiting_fires.remove(&job)
        {
            // `overlap = "queue"`: the held fire time starts now that the run it waited for ended.
            let next_due_ms = self.next_due_of(&job);
            ctx.address().do_send(Fire { job, scheduled_for, next_due_ms, held: true });
        }
        self.answer_waiters();
    }
}

/// A JobRun actor stopped without an end of its own: another node owns its job run now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JobRunDropped {
    pub id: u64,
    pub actor: Addr<JobRun>,
}

impl Handler<JobRunDropped> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: JobRunDropped, _ctx: &mut Self::Context) {
        // Only that actor: the job run may have been adopted again since, by a new actor.
        if self.job_runs.get(&msg.id) == Some(&msg.actor) {
            self.job_runs.remove(&msg.id);
            self.job_of.remove(&msg.id);
            self.bounded_fires.remove(&msg.id);
        }
    }
}

/// Resolves once every job run in `ids` has ended (`None`: never, only with a fatal fault).
#[derive(Message)]
#[rtype(result = "Result<Vec<(u64, JobState)>, EngineError>")]
pub struct WaitFor(pub Option<Vec<u64>>);

impl Handler<WaitFor> for Supervisor {
    type Result = ResponseFuture<Result<Vec<(u64, JobState)>, EngineError>>;

    fn handle(&mut self, WaitFor(ids): WaitFor, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let gone = ids.as_deref().map(|ids| self.gone(ids)).unwrap_or_default();
        let answered = async move { rx.await.map_err(|_| EngineError::Stopped("the engine stopped".into()))? };
        if gone.is_empty() {
            self.waiters.push((ids, tx));
            self.answer_waiters();
            return Box::pin(answered);
        }
        let recalled = self.read_then(
            ctx,
            move |reader| {
                let mut ended = Vec::new();
                for id in gone {
                    ended.extend(reader.job_run(id)?.filter(|r| r.state.is_terminal()).map(|r| (id, r.state)));
                }
                Ok(ended)
            },
            move |act, ended, _ctx| {
                act.ended.extend(ended);
                act.waiters.push((ids, tx));
                act.answer_waiters();
                Ok(())
            },
        );
        Box::pin(async move {
            recalled.await?;
            answered.await
        })
    }
}

/// A fault that restarting cannot fix: the store cannot commit, an actor keeps dying.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fatal(pub String);

impl Handler<Fatal> for Supervisor {
    type Result = ();

    fn handle(&mut self, Fatal(message): Fatal, _ctx: &mut Self::Context) {
        tracing::error!("{message}");
        if self.fatal.is_none() {
            self.fatal = Some(message);
        }
        self.answer_waiters();
    }
}

/// Graceful stop (SPEC §7): nothing new starts, running attempts are interrupted, and the
/// answer comes once everything is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        let dispatcher: Option<Addr<Dispatcher>> = self.shared.as_ref().map(|s| s.dispatcher.clone());
        let runs: Vec<Addr<JobRun>> = self.job_runs.values().cloned().collect();
        Box::pin(async move {
            if let Some(d) = dispatcher {
                let _ = d.send(StopDispatching).await;
            }
            for run in runs {
                let _ = run.send(Stop).await;
            }
        })
    }
}

/// What the Supervisor holds per job run, for the tests of what it keeps: live actors, their
/// jobs, ended runs, idempotency keys, waiters.
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "[usize; 5]")]
pub struct Retained;

#[cfg(test)]
impl Handler<Retained> for Supervisor {
    type Result = MessageResult<Retained>;

    fn handle(&mut self, _: Retained, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult([self.job_runs.len(), self.job_of.len(), self.ended.len(), self.keys.len(), self.waiters.len()])
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::TaskRun(id) => write!(f, "task run {id}"),
            Target::JobRun(id) => write!(f, "job run j{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects the fatal messages it is sent.
    struct Sink(Arc<Mutex<Vec<String>>>);

    impl Actor for Sink {
        type Context = Context<Self>;
    }

    impl Handler<Fatal> for Sink {
        type Result = ();

        fn handle(&mut self, Fatal(message): Fatal, _ctx: &mut Self::Context) {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(message);
            }
        }
    }

    #[actix::test]
    async fn a_worker_that_keeps_dying_escalates_once_past_the_intensity() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(seen.clone()).start();
        let ledger = RestartLedger::default();
        ledger.set_fatal(sink.clone().recipient());
        for _ in 0..MAX_RESTARTS {
            ledger.record(3, "heartbeat_timeout");
        }
        ledger.record(4, "timeout");
        sink.send(Fatal("flush".into())).await.expect("sink alive");
        assert_eq!(seen.lock().expect("lock").len(), 1, "within the intensity nothing escalates");
        ledger.record(3, "heartbeat_timeout");
        sink.send(Fatal("flush".into())).await.expect("sink alive");
        let seen = seen.lock().expect("lock");
        assert!(seen.iter().any(|m| m.contains("worker 3 restarted 11 times")), "{seen:?}");
    }

    /// A long-running `serve` must not grow with the runs it has finished: once a job run has
    /// ended and nobody waits for it, the Supervisor holds nothing of it; the store answers.
    #[test]
    fn finished_job_runs_leave_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "[settings]\nworkers = 2\n[jobs.j.tasks.a]\nrun = \"true\"\n[jobs.j.tasks.b]\nrun = \"true\"\nneeds = [\"a\"]\n";
        let workflow = crate::config::parse(&dir.path().join("w.toml"), text).expect("valid workflow");
        let state_dir = dir.path().join("state");
        let (store, closer, _lock) = crate::store::open_writer(&state_dir).expect("state dir");
        let pricing = crate::model::cost::Pricing::new(crate::config::pricing::builtin(), &workflow.pricing);
        let config = super::super::EngineConfig {
            workflow: Arc::new(workflow),
            source: text.into(),
            location: crate::store::StoreLocation::state_dir(&state_dir),
            state_dir,
            store: store.into(),
            executor: Arc::new(crate::executor::NoopExecutor),
            clock: Arc::new(super::super::SystemClock),
            workers: 2,
            pricing,
            labels: Vec::new(),
            cluster: None,
        };
        let system = actix::System::new();
        system.block_on(async move {
            let handle = super::super::start(config);
            let submit = |key: &str| SubmitRequest { job: "j".into(), key: Some(key.into()), ..Default::default() };
            let mut ids = Vec::new();
            for n in 0..20 {
                ids.push(handle.submit_request(submit(&format!("k{n}"))).await.expect("submit").job_run);
            }
            let ended = handle.wait(ids.clone()).await.expect("wait");
            assert!(ended.iter().all(|(_, s)| *s == JobState::Succeeded), "{ended:?}");
            let held = handle.supervisor.send(Retained).await.expect("supervisor");
            assert_eq!(held, [0; 5], "job runs, jobs, ended, keys, waiters still held");
            // What was forgotten is still known: a run that ended before anyone waited for
            // it, and the key that made it.
            assert_eq!(handle.wait(vec![ids[3]]).await.expect("wait"), vec![(ids[3], JobState::Succeeded)]);
            let again = handle.submit_request(submit("k3")).await.expect("submit");
            assert_eq!(again, Submitted { job_run: ids[3], existing: true });
            handle.shutdown().await;
        });
        drop(system);
        closer.close(Duration::from_secs(5));
    }
}
