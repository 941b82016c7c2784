//! What the core knows of one job run: its task runs (the core's own type, not the store's
//! record) and the job run's own facts. Plain data; `step` changes it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::{JobDef, Workflow};
use crate::model::graph::{Change, JobGraph, TaskStates};
use crate::model::workflow_graph::WorkflowGraph;
use crate::model::{FailReason, JobState, TaskState};

/// What a task run is for (SPEC §2.2 `compensate`, `for_each`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    #[default]
    Task,
    Compensation,
    /// A fanned-out task's own run, its node: the group of its items, never attempted.
    FanOut,
}

impl Kind {
    /// The kind of a task's own run (not an item, not a compensation): a fanned-out task's
    /// is its items' group.
    pub fn own_run_of(def: &crate::config::TaskDef) -> Kind {
        if def.for_each.is_some() { Kind::FanOut } else { Kind::Task }
    }
}

/// One task run as the core sees it. Its `state` mirrors `RunState::states`: change it only
/// through `RunState::set_state`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRun {
    pub id: u64,
    /// The task's name and its index in the job's file order (the graph's index).
    pub task: String,
    pub task_index: usize,
    pub state: TaskState,
    pub queue: String,
    pub priority: u8,
    /// Number of the latest attempt started; 0 before the first.
    pub attempt: u32,
    /// Attempt number that opened the current series (a person's retry opens a new one).
    pub series_start: u32,
    pub max_attempts: u32,
    pub queued_at_ms: Option<u64>,
    pub enqueue_seq: u64,
    /// The one timer: a retry's delay (`retrying`) or a `wait_timeout` (`waiting`).
    pub not_before_ms: Option<u64>,
    pub outputs: BTreeMap<String, String>,
    pub exit_code: Option<i32>,
    pub cost_usd_micros: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub reason: Option<FailReason>,
    pub detail: Option<String>,
    pub progress: Option<String>,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    pub iteration: u32,
    pub item_index: Option<u32>,
    pub item: Option<String>,
    pub kind: Kind,
    pub compensates: Option<u64>,
    /// Set when a transition started this task run (`step::arrive`).
    pub reached_by: Option<ReachedBy>,
}

/// The id of a task's stand-in while nothing reached it (ids start at 1).
const NOT_MADE: u64 = 0;

/// The task run a transition came from and the `on` that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReachedBy {
    pub from_task_run: u64,
    pub on: crate::config::TransitionOn,
}

impl TaskRun {
    /// Task run `id` of task `task_index` (defined by `def`) as it is made: pending, no attempt.
    pub fn new(id: u64, task_index: usize, def: &crate::config::TaskDef, iteration: u32, now_ms: u64) -> TaskRun {
        TaskRun {
            id,
            task: def.name.clone(),
            task_index,
            state: TaskState::Pending,
            queue: def.queue.clone(),
            priority: def.priority,
            attempt: 0,
            series_start: 1,
            max_attempts: def.retry.max_attempts,
            queued_at_ms: None,
            enqueue_seq: 0,
            not_before_ms: None,
            outputs: Default::default(),
            exit_code: None,
            cost_usd_micros: 0,
            input_tokens: 0,
            output_tokens: 0,
            reason: None,
            detail: None,
            progress: None,
            created_at_ms: now_ms,
            started_at_ms: None,
            ended_at_ms: None,
            iteration,
            item_index: None,
            item: None,
            kind: Kind::own_run_of(def),
            compensates: None,
            reached_by: None,
        }
    }

    /// False for the stand-in the core keeps at a task's index while nothing reached the task:
    /// it has no id, is never written nor reported (SPEC §2.2: a task never reached gets no
    /// task run), and becomes a task run when a transition or its needs reach it (`RunState::make`).
    pub fn is_made(&self) -> bool {
        self.id != NOT_MADE
    }

    /// A task run beyond the one per task the graph knows: a fan-out item or a compensation.
    pub fn is_extra(&self) -> bool {
        self.item_index.is_some() || self.kind == Kind::Compensation
    }

    /// Made to run again from scratch (`retry --from`): a new series of attempts (attempt
    /// numbers go on), nothing of the last run's result kept. The caller sets the state.
    pub fn reset_for_rerun(&mut self) {
        self.series_start = self.attempt + 1;
        self.outputs.clear();
        (self.exit_code, self.reason, self.detail, self.progress) = (None, None, None, None);
        (self.ended_at_ms, self.not_before_ms, self.queued_at_ms) = (None, None, None);
    }

    /// Attempts used in the current series.
    pub fn attempts_in_series(&self) -> u32 {
        (self.attempt + 1).saturating_sub(self.series_start)
    }
}

/// The job run's own facts the core decides on (the rest — definition, params — stays with
/// the actor's record).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRunFacts {
    pub id: u64,
    pub job: String,
    pub state: JobState,
    pub reason: Option<String>,
    pub cost_usd_micros: u64,
    pub ended_at_ms: Option<u64>,
    pub cancel_requested: bool,
}

/// Budgets a person raised with `gaffer retry --budget`; they replace the file's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Raised {
    pub job_run: Option<u64>,
    /// Task run id → its new limit.
    pub task_runs: BTreeMap<u64, u64>,
}

/// One job run: its definition, task runs and flags. The whole state `step` works on.
#[derive(Debug, Clone)]
pub struct RunState {
    workflow: Arc<Workflow>,
    job_index: usize,
    /// The `needs` engine, over the first task run of each task.
    pub graph: JobGraph,
    /// Transitions, joins and iteration caps.
    pub workflow_graph: WorkflowGraph,
    pub job_run: JobRunFacts,
    /// Every task run: the first one of each task at its task's index (file order), later ones
    /// (another iteration, SPEC §2.2) after them in the order they were made, and the extra runs
    /// (`TaskRun::is_extra`: fan-out items, compensations) among those. A fanned-out task's own
    /// run is its node: `running` while its items run, never attempted.
    pub tasks: Vec<TaskRun>,
    /// The authority on task run states (same indexes), with O(1) counts for the per-event questions.
    pub states: TaskStates,
    /// Per task: how many of its task runs were reached (0 for a transition target not reached
    /// yet), the latest one's index, the distinct source tasks a `join` has seen arrive, and
    /// whether it fired.
    pub reached: Vec<u32>,
    pub latest: Vec<usize>,
    pub arrivals: Vec<Vec<usize>>,
    pub join_fired: Vec<bool>,
    /// A task was due one more task run than its `max_iterations`: nothing new starts and the
    /// run fails with reason `iteration_limit`.
    pub iteration_limit: bool,
    index_of: HashMap<u64, usize>,
    /// Set once the job run's budget is spent: no new attempt starts.
    pub budget_spent: bool,
    pub raised: Raised,
    /// A graceful stop is under way: nothing new starts, interrupted attempts go back to their queue.
    pub stopping: bool,
    /// How many tasks nothing reached yet (stand-ins at their index, `TaskRun::is_made`).
    pub not_made: usize,
    /// Tasks that need a transition target, which the core decides (`run/reach.rs`).
    pub held: Vec<usize>,
    /// The priority the job run was submitted with, when it overrides the tasks' own.
    submitted_priority: Option<u8>,
    /// The job run's end was recorded; the actor goes away once it is durable.
    pub ended: bool,
    /// Task runs whose last starts found the machine out of a resource, and how many times in
    /// a row: their next try backs off further.
    pub exhausted: HashMap<u64, u32>,
    /// Task runs ready to queue whose `cache` entry the core asked for (`Effects::cache_reads`)
    /// and has not heard of yet (`Input::CacheRead`). Not stored: a resume queues them.
    pub cache_asked: std::collections::HashSet<u64>,
    /// Fanned-out tasks whose items exist, by task index.
    pub fanouts: HashMap<usize, super::fanout::Node>,
    /// The failed run's saga, once it began (rebuilt from the stored compensations on a resume).
    pub saga: Option<crate::model::saga::Saga>,
}

impl RunState {
    pub fn new(
        workflow: Arc<Workflow>,
        job_index: usize,
        job_run: JobRunFacts,
        tasks: Vec<TaskRun>,
        raised: Raised,
    ) -> RunState {
        let job = &workflow.jobs[job_index];
        let submitted_priority = submitted_priority(job, &tasks);
        let tasks = place_runs(job, tasks, submitted_priority);
        let graph = JobGraph::new(&workflow.jobs[job_index]);
        let workflow_graph = WorkflowGraph::of(&workflow.jobs[job_index]);
        let budget = raised.job_run.or(workflow.jobs[job_index].budget_usd_micros);
        let budget_spent = crate::model::policy::budget_reached(job_run.cost_usd_micros, budget);
        let mut state = RunState {
            workflow,
            job_index,
            graph,
            workflow_graph,
            job_run,
            tasks,
            states: TaskStates::new(Vec::new()),
            reached: Vec::new(),
            latest: Vec::new(),
            arrivals: Vec::new(),
            join_fired: Vec::new(),
            iteration_limit: false,
            index_of: HashMap::new(),
            budget_spent,
            raised,
            stopping: false,
            not_made: 0,
            held: Vec::new(),
            submitted_priority,
            ended: false,
            exhausted: HashMap::new(),
            cache_asked: Default::default(),
            fanouts: HashMap::new(),
            saga: None,
        };
        state.reindex();
        state
    }

    /// Rebuilds the graph, states and id index after the definition or the tasks' order changed.
    pub fn redefine(&mut self, workflow: Arc<Workflow>, job_index: usize) {
        self.workflow = workflow;
        self.job_index = job_index;
        self.graph = JobGraph::new(self.job());
        self.workflow_graph = WorkflowGraph::of(self.job());
        let tasks = std::mem::take(&mut self.tasks).into_iter().filter(TaskRun::is_made).collect();
        self.tasks = place_runs(self.job(), tasks, self.submitted_priority);
        self.reindex();
    }

    /// Rebuilds the indexes from the task runs. A task with no task run was not reached, nor was
    /// a transition target whose first task run is still pending (a store written before task
    /// runs were made when reached); a join fired once its target's first task run was.
    fn reindex(&mut self) {
        self.states = TaskStates::new(self.tasks.iter().map(|t| t.state).collect());
        self.index_of = self.tasks.iter().enumerate().filter(|(_, t)| t.is_made()).map(|(i, t)| (t.id, i)).collect();
        self.not_made = self.tasks.iter().filter(|t| !t.is_made()).count();
        let n = self.graph.len();
        self.held = (0..n).filter(|&t| self.workflow_graph.needs_a_target(t)).collect();
        self.latest = (0..n).collect();
        self.reached = (0..n)
            .map(|t| {
                let unreached = !self.tasks[t].is_made()
                    || (self.workflow_graph.is_transition_target(t) && self.tasks[t].state == TaskState::Pending);
                u32::from(!unreached)
            })
            .collect();
        for (i, t) in self.tasks.iter().enumerate().skip(n).filter(|(_, t)| !t.is_extra()) {
            self.latest[t.task_index] = i;
            self.reached[t.task_index] = self.reached[t.task_index].max(t.iteration);
        }
        self.join_fired = (0..n).map(|t| self.reached[t] > 0).collect();
        self.arrivals = vec![Vec::new(); n];
        self.fanouts = super::fanout::nodes_of(&self.tasks);
    }

    /// Adds an extra task run (a fan-out item, a compensation); returns its index.
    pub fn push_run(&mut self, t: TaskRun) -> usize {
        let i = self.tasks.len();
        self.states.push(t.state);
        self.index_of.insert(t.id, i);
        self.tasks.push(t);
        i
    }

    /// Task `task`'s stand-in becomes its first task run, with id `id`, made at `now_ms`.
    pub fn make(&mut self, task: usize, id: u64, now_ms: u64) {
        debug_assert!(!self.tasks[task].is_made());
        let t = &mut self.tasks[task];
        (t.id, t.created_at_ms) = (id, now_ms);
        self.index_of.insert(id, task);
        self.not_made -= 1;
    }

    /// Each task as `retry --from` judges it (`model::rerun::plan_from`), in task order: by its
    /// latest task run, as its dependents see it; one nothing reached reads as skipped (not
    /// open, not succeeded).
    pub fn states_for_rerun(&self) -> Vec<TaskState> {
        let state =
            |i: usize| if self.tasks[i].is_made() { self.tasks[self.latest[i]].state } else { TaskState::Skipped };
        (0..self.graph.len()).map(state).collect()
    }

    /// True for the task runs of the workflow's graph (a task's first run, later iterations),
    /// false for the extra ones (fan-out items, compensations).
    pub fn is_node(&self, i: usize) -> bool {
        !self.tasks[i].is_extra()
    }

    /// The definition of task run `i`'s task.
    pub fn def(&self, i: usize) -> &crate::config::TaskDef {
        &self.job().tasks[self.tasks[i].task_index]
    }

    /// A new task run of task `task`, pending, the next iteration; returns its index.
    pub fn add_instance(&mut self, task: usize, id: u64, now_ms: u64) -> usize {
        let def = &self.job().tasks[task];
        // The priority the job run was submitted with holds for every task run of it.
        let run =
            TaskRun { priority: self.tasks[task].priority, ..TaskRun::new(id, task, def, self.reached[task], now_ms) };
        let i = self.tasks.len();
        self.index_of.insert(id, i);
        self.states.push(TaskState::Pending);
        self.tasks.push(run);
        self.latest[task] = i;
        i
    }

    pub fn workflow(&self) -> &Arc<Workflow> {
        &self.workflow
    }

    pub fn job(&self) -> &JobDef {
        &self.workflow.jobs[self.job_index]
    }

    pub fn job_index(&self) -> usize {
        self.job_index
    }

    /// The index of task run `id`, if it belongs to this job run.
    pub fn idx(&self, id: u64) -> Option<usize> {
        self.index_of.get(&id).copied()
    }

    pub fn set_state(&mut self, i: usize, to: TaskState) {
        self.states.set(i, to);
        self.tasks[i].state = to;
    }

    /// Mirrors changes the graph made in `states` into the task runs.
    pub fn sync(&mut self, changes: &[Change]) {
        for c in changes {
            self.tasks[c.task].state = c.to;
        }
    }

    /// The job run's budget in force: raised by a retry, else the file's.
    pub fn job_budget(&self) -> Option<u64> {
        self.raised.job_run.or(self.job().budget_usd_micros)
    }

    /// Task run `i`'s `(budget_usd, retry.max_cost_usd)` in force.
    pub fn task_limits(&self, i: usize) -> (Option<u64>, Option<u64>) {
        let def = self.def(i);
        let raised = self.raised.task_runs.get(&self.tasks[i].id).copied();
        crate::model::retry::task_limits(def.budget_usd_micros, def.retry.max_cost_usd_micros, raised)
    }

    /// Task runs in state `running`, by id.
    pub fn running_ids(&self) -> Vec<u64> {
        // A fan-out's own run is `running` while its items run; it has no attempt to stop.
        let attempted = |(i, t): &(usize, &TaskRun)| t.state == TaskState::Running && !self.fanouts.contains_key(i);
        self.tasks.iter().enumerate().filter(attempted).map(|(_, t)| t.id).collect()
    }

    /// A retry takes the job run back to `running`; true if it had ended.
    pub fn reopen(&mut self) -> bool {
        let reopened = self.job_run.state.is_terminal();
        self.ended = false;
        self.budget_spent = false;
        self.iteration_limit = false;
        let j = &mut self.job_run;
        j.state = JobState::Running;
        j.cancel_requested = false;
        j.ended_at_ms = None;
        j.reason = None;
        reopened
    }
}

/// The first task run of each task at its task's index, in file order (a stand-in where the
/// task has none: nothing reached it); then the later ones by task and iteration (each task's
/// first task run has iteration 1), fan-out items and compensations among them (by id).
/// Each run's `task_index` is set to its task's index in `job`, which for an `--only` run is the
/// job cut down to the run's tasks (its records hold the index in the whole job).
fn place_runs(job: &JobDef, mut tasks: Vec<TaskRun>, priority: Option<u8>) -> Vec<TaskRun> {
    let index: HashMap<&str, usize> = job.tasks.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
    for t in &mut tasks {
        t.task_index = index.get(t.task.as_str()).copied().unwrap_or(t.task_index);
    }
    tasks.sort_by_key(|t| (t.iteration > 1 || t.is_extra(), t.task_index, t.iteration, t.id));
    let firsts = tasks.iter().take_while(|t| t.iteration <= 1 && !t.is_extra()).count();
    let later = tasks.split_off(firsts);
    let mut firsts = tasks.into_iter().peekable();
    let mut placed = Vec::with_capacity(job.tasks.len() + later.len());
    for (i, def) in job.tasks.iter().enumerate() {
        match firsts.next_if(|t| t.task_index == i) {
            Some(t) => placed.push(t),
            None => {
                let stand_in = TaskRun::new(NOT_MADE, i, def, 1, 0);
                placed.push(TaskRun { priority: priority.unwrap_or(def.priority), ..stand_in });
            }
        }
    }
    placed.extend(firsts); // none in a store this gaffer wrote; kept rather than lost
    placed.extend(later);
    placed
}

/// The priority a job run was submitted with, if it overrode its tasks' own: the first task
/// run whose priority is not its task's. (Not stored apart: every task run carries it.)
fn submitted_priority(job: &JobDef, tasks: &[TaskRun]) -> Option<u8> {
    let overridden = |t: &&TaskRun| job.tasks.get(t.task_index).is_some_and(|d| d.priority != t.priority);
    tasks.iter().find(overridden).map(|t| t.priority)
}
