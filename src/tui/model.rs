//! What the TUI knows: an in-memory copy of the engine's state, built once from an
//! [`EngineSnapshot`] and kept current by [`EngineEvent`]s. Views read it; only `update` writes it.
//!
//! Counters (per state, per queue, per job run) and cost aggregates are kept incrementally, so a
//! frame never walks all task runs. The per-view row indexes (filtered, sorted lists of ids) are
//! rebuilt lazily: an event only marks them dirty, and [`Model::prepare`] rebuilds the focused
//! view's index at most once per frame.

use std::collections::{BTreeMap, BTreeSet};

use super::rows::{JobRun, ReachedBy, TaskRun};
use crate::engine::{
    AttemptFailure, EngineEvent, EngineSnapshot, EventData, EventName, Instance, JobShape, JobStart, QueueSnapshot,
    WorkerSnapshot,
};
use crate::model::cost::{NO_MODEL, Usage};
use crate::model::schedule::Schedule;
use crate::model::{FailReason, JobState, TaskState};

use super::update::Command;

pub const MINUTE_MS: u64 = 60_000;
pub const DAY_MS: u64 = 86_400_000;
/// How many minutes of throughput history are kept for the queues' sparklines.
pub const HISTORY_MINUTES: u64 = 60;
/// How many minutes of cost history are kept: the cost sparkline shows one minute a column
/// across its whole box, so a day covers any terminal (a few bytes a minute that saw spend).
pub const COST_HISTORY_MINUTES: u64 = 24 * 60;
/// How many attempts of one task run are remembered for its detail pane.
const MAX_ATTEMPT_LINES: usize = 32;
/// How many `task.warning`s of one task run are remembered for its detail pane.
pub const MAX_WARNING_LINES: usize = 10;
/// Transitions seen for task runs not on screen yet (their `task.queued` follows at once).
const MAX_UNSEEN_TRANSITIONS: usize = 1_024;

/// The views: the seven of SPEC §4.2 and the schedules, in key order (`1`..`8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum View {
    Queues,
    Jobs,
    Tasks,
    Retries,
    DeadLetters,
    Cost,
    Workers,
    Schedules,
}

/// How many task states there are (the counters' length).
const STATES: usize = TaskState::ALL.len();

/// How many views there are.
pub const VIEWS: usize = 8;

impl View {
    pub const ALL: [View; VIEWS] = [
        View::Queues,
        View::Jobs,
        View::Tasks,
        View::Retries,
        View::DeadLetters,
        View::Cost,
        View::Workers,
        View::Schedules,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Queues => "Queues",
            View::Jobs => "Jobs",
            View::Tasks => "Tasks",
            View::Retries => "Retries",
            View::DeadLetters => "Dead letters",
            View::Cost => "Cost",
            View::Workers => "Workers",
            View::Schedules => "Schedules",
        }
    }

    /// The tab's title on a narrow terminal.
    pub fn short_title(self) -> &'static str {
        match self {
            View::Retries => "Retry",
            View::DeadLetters => "Dead",
            View::Workers => "Work",
            View::Schedules => "Sched",
            other => other.title(),
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn next(self) -> View {
        View::ALL[(self.index() + 1) % View::ALL.len()]
    }

    pub fn prev(self) -> View {
        View::ALL[(self.index() + View::ALL.len() - 1) % View::ALL.len()]
    }

    /// The columns `s` cycles through; the first is the default order.
    pub fn sort_columns(self) -> &'static [SortBy] {
        match self {
            View::Jobs => &[SortBy::Id, SortBy::Name, SortBy::State, SortBy::Duration, SortBy::Cost],
            View::Tasks => &[SortBy::Id, SortBy::Name, SortBy::State, SortBy::Queue, SortBy::Duration, SortBy::Cost],
            View::Retries => &[SortBy::Due, SortBy::Id, SortBy::Name],
            View::DeadLetters => &[SortBy::When, SortBy::Id, SortBy::Name, SortBy::Cost],
            _ => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Id,
    Name,
    State,
    Queue,
    Duration,
    Cost,
    Due,
    When,
}

impl SortBy {
    pub fn label(self) -> &'static str {
        match self {
            SortBy::Id => "id",
            SortBy::Name => "name",
            SortBy::State => "state",
            SortBy::Queue => "queue",
            SortBy::Duration => "duration",
            SortBy::Cost => "cost",
            SortBy::Due => "due",
            SortBy::When => "when",
        }
    }
}

/// What the detail pane (Enter) shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Queue(String),
    Job(u64),
    Task(u64),
    Worker(usize),
}

/// What the keyboard is talking to. One mode at a time, never a bag of booleans.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    /// Typing a filter for the focused view; rows narrow as it is typed.
    Filter(String),
    /// A question waiting for `y`/`n`; `y` runs `command`.
    Confirm {
        question: String,
        command: Command,
    },
    Help,
    Detail(Subject),
    /// Following one task run's log.
    Log(u64),
}

/// Selection and scroll of one view's table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pane {
    pub selected: usize,
    /// First visible row.
    pub offset: usize,
    /// Id of the selected row, so the selection stays on it when rows are re-sorted.
    pub selected_id: Option<u64>,
    pub sort: usize,
    pub reverse: bool,
    /// The applied filter (`/`).
    pub filter: String,
}

/// One attempt as the detail pane shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptLine {
    pub n: u32,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub outcome: String,
    pub exit_code: Option<i64>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub rec: TaskRun,
    pub attempts: Vec<AttemptLine>,
    pub model: Option<String>,
    /// `task.warning`s seen this session (attempt, message), the latest last.
    pub warnings: Vec<(u32, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub rec: JobRun,
    /// Task runs of this job run, in creation order.
    pub tasks: Vec<u64>,
    pub done: u32,
    pub running: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueRow {
    pub name: String,
    pub concurrency: usize,
    pub paused: bool,
    /// Its circuit is open: nothing starts from it until then.
    pub circuit_open_until_ms: Option<u64>,
    pub counts: [u32; STATES],
    /// Queued task runs no live node can run (`Model::blocked`).
    pub blocked: u32,
    /// Task runs ended per minute (throughput).
    pub done_per_minute: BTreeMap<u64, u32>,
    pub cost_per_day: BTreeMap<u64, u64>,
}

impl QueueRow {
    pub fn count(&self, state: TaskState) -> u32 {
        self.counts[state as usize]
    }
}

impl Model {
    /// Whether `rec` waits queued for labels no live node has (`model::routing`); never while
    /// no node runs.
    pub fn blocked(&self, rec: &TaskRun) -> bool {
        rec.state == TaskState::Queued && crate::model::routing::unroutable(&rec.requires, &self.routing())
    }

    /// Why `rec` cannot start, when it cannot ([`Model::blocked`]).
    pub fn blocked_reason(&self, rec: &TaskRun) -> Option<String> {
        let labels = self.routing().first().copied().unwrap_or_default();
        self.blocked(rec).then(|| crate::model::routing::blocked_reason(&rec.requires, labels))
    }

    /// Whose labels decide what no node can run: a cluster's live nodes, else the running
    /// node's (none in a read-only view), as `status` decides.
    fn routing(&self) -> Vec<&[String]> {
        match self.nodes.is_empty() {
            true => self.node_labels.iter().map(Vec::as_slice).collect(),
            false => self.nodes.iter().filter(|n| n.live).map(|n| n.labels.as_slice()).collect(),
        }
    }

    /// The cluster's nodes as read now; the blocked counts follow when the live nodes' labels
    /// changed (a node with the missing label joined, or the last one left).
    pub fn set_nodes(&mut self, nodes: Vec<crate::engine::NodeStatus>) {
        if nodes == self.nodes {
            return;
        }
        let before: Vec<Vec<String>> = self.routing().iter().map(|l| l.to_vec()).collect();
        self.nodes = nodes;
        if before != self.routing() {
            self.recount_blocked();
        }
        self.changed = true;
    }

    fn recount_blocked(&mut self) {
        let mut blocked: BTreeMap<String, u32> = BTreeMap::new();
        for row in self.tasks.values().filter(|r| !r.rec.fanout && self.blocked(&r.rec)) {
            *blocked.entry(row.rec.queue.clone()).or_default() += 1;
        }
        for (name, q) in &mut self.queues {
            q.blocked = blocked.get(name).copied().unwrap_or(0);
        }
        self.dirty[View::Queues.index()] = true;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    pub snap: WorkerSnapshot,
}

/// A scheduled job: its cron line and zone, and when it last fired.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub job: String,
    pub expression: String,
    pub timezone: Option<String>,
    /// `None` when the expression no longer parses (a stored definition from another version).
    pub schedule: Option<Schedule>,
    /// The fire time it last handled, and whether it skipped it (a run was active).
    pub last_ms: Option<u64>,
    pub last_skipped: bool,
}

/// Who the TUI talks to, which decides what `q` and the commands do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// In the process that runs the engine (`gaffer run`/`serve`): `q` stops it.
    Owner,
    /// Attached to a server (`gaffer tui`): `q` detaches and stops nothing, so it never asks.
    Attached,
    /// No instance runs (`gaffer tui` on a quiet state dir): the store as it was left; commands
    /// are refused.
    ReadOnly,
}

/// Cost aggregates, all in micro-dollars.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CostBook {
    pub total: u64,
    pub by_job: BTreeMap<String, u64>,
    /// Keyed `job.task`.
    pub by_task: BTreeMap<String, u64>,
    pub by_queue: BTreeMap<String, u64>,
    /// Spending by model, as `gaffer cost --by model` sums it: seeded from the snapshot's
    /// figures, then kept current by `task.cost` events.
    pub by_model: BTreeMap<String, u64>,
    pub per_minute: BTreeMap<u64, u64>,
    /// Every kind of token, all models together (its `usd_micros` is unused: see `total`).
    pub tokens: Usage,
}

/// The followed log (`l`) or the log tail of a task detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPane {
    pub task_run: u64,
    pub attempt: u32,
    /// An earlier attempt chosen with `[`; `None` follows the latest attempt.
    pub pinned: Option<u32>,
    pub text: String,
    pub read_at_ms: u64,
    /// Lines up from the bottom; 0 follows the end.
    pub scroll_up: usize,
}

/// A transient line under the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub text: String,
    pub error: bool,
    pub at_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub title: String,
    pub now_ms: u64,
    pub size: (u16, u16),
    pub focus: View,
    pub mode: Mode,
    pub panes: [Pane; VIEWS],
    pub detail_scroll: u16,
    /// The row of a job run's task graph the cursor is on (`job_graph::rows`).
    pub graph_cursor: usize,
    /// Tasks of a job run whose task runs are listed under their node: `(job run, task)`.
    pub expanded: BTreeSet<(u64, String)>,
    pub tasks: BTreeMap<u64, TaskRow>,
    pub jobs: BTreeMap<u64, JobRow>,
    pub queues: BTreeMap<String, QueueRow>,
    pub workers: Vec<WorkerRow>,
    /// The cluster's nodes by name, as last read (none without a cluster).
    pub nodes: Vec<crate::engine::NodeStatus>,
    /// The scheduled jobs, in name order.
    pub schedules: Vec<ScheduleRow>,
    pub shapes: BTreeMap<String, JobShape>,
    pub counts: [usize; STATES],
    /// The running node's labels (`EngineSnapshot::node_labels`).
    pub node_labels: Option<Vec<String>>,
    pub retrying: BTreeSet<u64>,
    pub dead: BTreeSet<u64>,
    pub cost: CostBook,
    pub log: Option<LogPane>,
    pub status: Option<Status>,
    /// Job runs this session was started for; the header says when all have ended.
    pub watched: Vec<u64>,
    pub session: Session,
    /// Task runs changed by a key before the engine confirmed it: their state before, to undo
    /// if the command fails.
    pub optimistic: BTreeMap<u64, TaskState>,
    /// Job runs a retry reopened before the engine confirmed it: their state and end before.
    pub optimistic_jobs: BTreeMap<u64, (JobState, Option<u64>)>,
    /// `transition.fired` of task runs not on screen yet: how each was reached, until it is.
    unseen_transitions: BTreeMap<u64, ReachedBy>,
    /// Per view: the ids of the rows, filtered and sorted (queues and workers by position).
    pub index: [Vec<u64>; VIEWS],
    dirty: [bool; VIEWS],
    /// Set whenever something visible changed; the loop draws only then.
    pub changed: bool,
}

impl Model {
    pub fn new(snapshot: EngineSnapshot, now_ms: u64, title: &str, watched: Vec<u64>) -> Model {
        let mut m = Model {
            title: title.to_string(),
            now_ms,
            size: (80, 24),
            focus: View::Jobs,
            mode: Mode::Normal,
            panes: Default::default(),
            detail_scroll: 0,
            graph_cursor: 0,
            expanded: BTreeSet::new(),
            tasks: BTreeMap::new(),
            jobs: BTreeMap::new(),
            queues: BTreeMap::new(),
            workers: Vec::new(),
            nodes: Vec::new(),
            schedules: schedule_rows(&snapshot.jobs, &snapshot.schedule_fires),
            shapes: snapshot.jobs.into_iter().map(|j| (j.name.clone(), j)).collect(),
            counts: [0; STATES],
            node_labels: snapshot.node_labels,
            retrying: BTreeSet::new(),
            dead: BTreeSet::new(),
            cost: CostBook::default(),
            log: None,
            status: None,
            watched,
            session: Session::Owner,
            optimistic: BTreeMap::new(),
            optimistic_jobs: BTreeMap::new(),
            unseen_transitions: BTreeMap::new(),
            index: Default::default(),
            dirty: [true; VIEWS],
            changed: true,
        };
        m.set_queues(snapshot.queues);
        m.set_workers(snapshot.workers);
        for row in &snapshot.by_model {
            *m.cost.by_model.entry(row.label().to_string()).or_default() += row.usage.usd_micros;
            m.cost.tokens.add(&Usage { usd_micros: 0, ..row.usage });
        }
        for rec in snapshot.job_runs.into_iter().map(JobRun::from) {
            m.jobs.insert(rec.id, JobRow { rec, tasks: Vec::new(), done: 0, running: 0 });
        }
        m.insert_tasks(snapshot.task_runs.into_iter().map(TaskRun::from).collect());
        for view in View::ALL {
            m.panes[view.index()].reverse = view == View::Jobs;
        }
        m.prepare();
        m
    }

    // ---- reading -------------------------------------------------------------------------

    pub fn count(&self, state: TaskState) -> usize {
        self.counts[state as usize]
    }

    pub fn pane(&self) -> &Pane {
        &self.panes[self.focus.index()]
    }

    pub fn pane_mut(&mut self) -> &mut Pane {
        &mut self.panes[self.focus.index()]
    }

    /// Rows of the focused view.
    pub fn len(&self) -> usize {
        self.len_of(self.focus)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len_of(&self, view: View) -> usize {
        match view {
            View::Cost => 0,
            _ => self.index[view.index()].len(),
        }
    }

    /// The id of the selected row of the focused view (a task run, job run, queue position or
    /// worker id).
    pub fn selected_id(&self) -> Option<u64> {
        let pane = self.pane();
        self.index[self.focus.index()].get(pane.selected).copied()
    }

    /// The task run keys act on: the one a detail pane shows (even if its row has since left
    /// the list), else the selected row's.
    pub fn selected_task(&self) -> Option<&TaskRow> {
        if let Mode::Detail(Subject::Task(id)) = self.mode {
            return self.tasks.get(&id);
        }
        match self.focus {
            View::Tasks | View::Retries | View::DeadLetters => self.tasks.get(&self.selected_id()?),
            View::Workers => {
                let worker = self.workers.iter().find(|w| Some(w.snap.id as u64) == self.selected_id())?;
                self.tasks.get(&worker.snap.current?.task_run)
            }
            _ => None,
        }
    }

    pub fn selected_job(&self) -> Option<&JobRow> {
        if let Mode::Detail(Subject::Job(id)) = self.mode {
            return self.jobs.get(&id);
        }
        match self.focus {
            View::Jobs => self.jobs.get(&self.selected_id()?),
            _ => None,
        }
    }

    pub fn selected_queue(&self) -> Option<&QueueRow> {
        match self.focus {
            View::Queues => self.queues.values().nth(self.selected_id()? as usize),
            _ => None,
        }
    }

    /// Every watched job run has ended (and there was at least one).
    pub fn all_watched_ended(&self) -> bool {
        !self.watched.is_empty()
            && self.watched.iter().all(|id| self.jobs.get(id).is_some_and(|j| j.rec.state.is_terminal()))
    }

    /// Task runs that could not start because the machine was out of resources and wait to
    /// try again: shown in the header while there are any.
    pub fn waiting_for_resources(&self) -> usize {
        self.retrying
            .iter()
            .filter(|id| self.tasks.get(id).is_some_and(|row| row.rec.reason == Some(FailReason::ResourceExhausted)))
            .count()
    }

    pub fn workers_busy(&self) -> usize {
        self.workers.iter().filter(|w| w.snap.current.is_some()).count()
    }

    /// The next fire time of a scheduled job: after the model's clock, and after the fire just
    /// seen (an event can be newer than the last tick).
    pub fn next_fire(&self, row: &ScheduleRow) -> Option<u64> {
        row.schedule.as_ref()?.next_after(self.now_ms.max(row.last_ms.unwrap_or(0)))
    }

    /// Micro-dollars per hour over the last ten minutes.
    pub fn burn_per_hour(&self) -> u64 {
        let now_min = self.now_ms / MINUTE_MS;
        let spent =
            self.cost.per_minute.range(now_min.saturating_sub(9)..=now_min).fold(0, |a, (_, v)| v.saturating_add(a));
        spent.saturating_mul(6)
    }

    /// Cost per minute for the last `n` minutes, oldest first.
    pub fn cost_series(&self, n: u64) -> Vec<u64> {
        let now_min = self.now_ms / MINUTE_MS;
        (0..n)
            .rev()
            .map(|back| self.cost.per_minute.get(&(now_min.saturating_sub(back))).copied().unwrap_or(0))
            .collect()
    }

    pub fn throughput_series(&self, queue: &QueueRow, n: u64) -> Vec<u64> {
        let now_min = self.now_ms / MINUTE_MS;
        (0..n)
            .rev()
            .map(|back| u64::from(queue.done_per_minute.get(&(now_min.saturating_sub(back))).copied().unwrap_or(0)))
            .collect()
    }

    pub fn queue_cost_today(&self, queue: &QueueRow) -> u64 {
        queue.cost_per_day.get(&(self.now_ms / DAY_MS)).copied().unwrap_or(0)
    }

    // ---- writing -------------------------------------------------------------------------

    pub fn set_queues(&mut self, queues: Vec<QueueSnapshot>) {
        for q in queues {
            let row = self.queues.entry(q.name.clone()).or_default();
            row.name = q.name;
            row.concurrency = q.concurrency;
            row.paused = q.paused;
            row.circuit_open_until_ms = q.circuit_open_until_ms;
        }
        self.touch(View::Queues);
    }

    pub fn set_workers(&mut self, workers: Vec<WorkerSnapshot>) {
        let rows: Vec<WorkerRow> = workers.into_iter().map(|snap| WorkerRow { snap }).collect();
        if rows != self.workers {
            self.workers = rows;
            self.touch(View::Workers);
        }
    }

    /// Adds or replaces task runs (the snapshot, or a job run loaded after `job.started`).
    pub fn insert_tasks(&mut self, records: Vec<TaskRun>) {
        for rec in records {
            self.insert_task(rec);
        }
    }

    fn insert_task(&mut self, mut rec: TaskRun) {
        let unseen = self.unseen_transitions.remove(&rec.id);
        rec.reached_by = rec.reached_by.or(unseen);
        if let Some(old) = self.tasks.remove(&rec.id) {
            self.tally(&old.rec, -1);
            // Events already applied are at least as new as a store read that raced them for
            // the dynamic fields; keep what they said about attempts and the model.
            rec.reached_by = rec.reached_by.or(old.rec.reached_by);
            let row = TaskRow { rec, attempts: old.attempts, model: old.model, warnings: old.warnings };
            self.tally(&row.rec, 1);
            self.tasks.insert(row.rec.id, row);
        } else {
            let minute = rec.ended_at_ms.or(rec.started_at_ms).unwrap_or(rec.created_at_ms) / MINUTE_MS;
            if rec.cost_usd_micros > 0 && !rec.fanout {
                // A fan-out's group sums its items' cost, counted with them. By model it is already in the snapshot's figures (the record does not say).
                let (job, task, queue) = (rec.job.clone(), rec.task.clone(), rec.queue.clone());
                self.add_cost(&job, &task, &queue, None, minute, rec.cost_usd_micros);
            }
            if rec.state.is_terminal()
                && rec.state != TaskState::Skipped
                && !rec.fanout
                && let Some(ended) = rec.ended_at_ms
            {
                *self.queue_mut(&rec.queue).done_per_minute.entry(ended / MINUTE_MS).or_default() += 1;
            }
            let attempts = last_attempt_of(&rec).into_iter().collect();
            self.tally(&rec, 1);
            self.tasks.insert(rec.id, TaskRow { rec, attempts, model: None, warnings: Vec::new() });
        }
        self.touch_tasks(true);
    }

    /// Adds (`sign` 1) or removes (-1) one task run's share of every counter.
    fn tally(&mut self, rec: &TaskRun, sign: i32) {
        if rec.fanout {
            // A fan-out's group is not a task run of its own: its items are counted, and are
            // the runs its job run's progress and graph show (the node draws the group).
            return;
        }
        let s = rec.state as usize;
        let add = |n: &mut u32| *n = n.saturating_add_signed(sign);
        self.counts[s] = self.counts[s].saturating_add_signed(sign as isize);
        add(&mut self.queue_mut(&rec.queue).counts[s]);
        if self.blocked(rec) {
            add(&mut self.queue_mut(&rec.queue).blocked);
        }
        let job = self.jobs.entry(rec.job_run).or_insert_with(|| JobRow {
            rec: placeholder_job(rec.job_run, &rec.job, rec.created_at_ms),
            tasks: Vec::new(),
            done: 0,
            running: 0,
        });
        if sign > 0 {
            if let Err(pos) = job.tasks.binary_search(&rec.id) {
                job.tasks.insert(pos, rec.id);
            }
        } else if let Ok(pos) = job.tasks.binary_search(&rec.id) {
            job.tasks.remove(pos);
        }
        if rec.state.is_terminal() {
            add(&mut job.done);
        }
        if rec.state == TaskState::Running {
            add(&mut job.running);
        }
        let set = match rec.state {
            TaskState::Retrying => Some(&mut self.retrying),
            TaskState::Dead => Some(&mut self.dead),
            _ => None,
        };
        if let Some(set) = set {
            if sign > 0 {
                set.insert(rec.id)
            } else {
                set.remove(&rec.id)
            };
        }
    }

    fn queue_mut(&mut self, name: &str) -> &mut QueueRow {
        if !self.queues.contains_key(name) {
            self.queues.insert(name.to_string(), QueueRow { name: name.to_string(), ..QueueRow::default() });
            self.dirty[View::Queues.index()] = true;
        }
        self.queues.get_mut(name).expect("inserted above")
    }

    /// Changes one task run's state, keeping every counter right.
    pub fn set_state(&mut self, id: u64, to: TaskState) {
        let Some(row) = self.tasks.get(&id) else { return };
        if row.rec.state == to {
            return;
        }
        let mut rec = row.rec.clone();
        self.tally(&rec, -1);
        rec.state = to;
        self.tally(&rec, 1);
        if let Some(row) = self.tasks.get_mut(&id) {
            row.rec.state = to;
        }
        self.touch_tasks(false);
    }

    /// Adds spending to every aggregate; to `by_model` only when `model` is given (the
    /// snapshot's per-model figures already hold what task run records carry).
    fn add_cost(&mut self, job: &str, task: &str, queue: &str, model: Option<&str>, minute: u64, micros: u64) {
        let add = |slot: &mut u64| *slot = slot.saturating_add(micros);
        let c = &mut self.cost;
        add(&mut c.total);
        add(c.by_job.entry(job.to_string()).or_default());
        add(c.by_task.entry(format!("{job}.{task}")).or_default());
        add(c.by_queue.entry(queue.to_string()).or_default());
        if let Some(model) = model {
            add(c.by_model.entry(model.to_string()).or_default());
        }
        add(c.per_minute.entry(minute).or_default());
        add(self.queue_mut(queue).cost_per_day.entry(minute * MINUTE_MS / DAY_MS).or_default());
    }

    fn touch(&mut self, view: View) {
        self.dirty[view.index()] = true;
        self.changed = true;
    }

    /// Task runs changed. The Tasks and Jobs rows depend on a change only when rows were
    /// added, or when a filter or a sort other than by id is on: an event stream alone does not
    /// make every frame walk 100k rows.
    fn touch_tasks(&mut self, inserted: bool) {
        for view in [View::Queues, View::Retries, View::DeadLetters] {
            self.dirty[view.index()] = true;
        }
        for view in [View::Jobs, View::Tasks] {
            let pane = &self.panes[view.index()];
            if inserted || (view == View::Tasks && (!pane.filter.is_empty() || pane.sort != 0)) {
                self.dirty[view.index()] = true;
            }
        }
        self.changed = true;
    }

    /// The clock moved (countdowns, ages); old history is dropped.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        let now_min = now_ms / MINUTE_MS;
        let cost_from = now_min.saturating_sub(COST_HISTORY_MINUTES);
        if self.cost.per_minute.first_key_value().is_some_and(|(m, _)| *m < cost_from) {
            self.cost.per_minute = self.cost.per_minute.split_off(&cost_from);
        }
        let keep_from = now_min.saturating_sub(HISTORY_MINUTES);
        for q in self.queues.values_mut() {
            if q.done_per_minute.first_key_value().is_some_and(|(m, _)| *m < keep_from) {
                q.done_per_minute = q.done_per_minute.split_off(&keep_from);
            }
        }
        if self.status.as_ref().is_some_and(|s| now_ms.saturating_sub(s.at_ms) > 8_000) {
            self.status = None;
        }
        self.dirty[View::Retries.index()] = true;
        self.changed = true;
    }

    pub fn say(&mut self, text: impl Into<String>, error: bool) {
        self.status = Some(Status { text: text.into(), error, at_ms: self.now_ms });
        self.changed = true;
    }

    /// Applies one engine event. Returns what the loop must fetch (a new job run's task runs).
    pub fn apply(&mut self, e: &EngineEvent) -> Vec<Command> {
        self.changed = true;
        if e.name().is_job() {
            return self.apply_job(e);
        }
        match &e.data {
            EventData::WorkerRestarted { worker, .. } => {
                if let Some(w) = self.workers.iter_mut().find(|w| w.snap.id as u64 == *worker) {
                    w.snap.restarts += 1;
                    w.snap.current = None;
                }
                self.touch(View::Workers);
            }
            EventData::ScheduleFired { scheduled_for_ms } => self.apply_fire(e, *scheduled_for_ms, false),
            EventData::ScheduleSkipped { scheduled_for_ms, .. } => self.apply_fire(e, *scheduled_for_ms, true),
            EventData::BudgetExceeded { limit_usd_micros, spent_usd_micros, .. } => {
                let who = match (e.task_run, e.job_run) {
                    (Some(t), _) => format!("task run {t}"),
                    (None, Some(j)) => format!("job run j{j}"),
                    _ => "gaffer".into(),
                };
                let usd = crate::headless::dollars;
                self.say(
                    format!("{who}: budget exceeded, spent {} of {}", usd(*spent_usd_micros), usd(*limit_usd_micros)),
                    true,
                );
            }
            EventData::TransitionFired { from_task_run, on, .. } => {
                // `task_run` is the run the transition started (none while a join waits).
                if let Some(id) = e.task_run {
                    self.apply_transition(id, ReachedBy { from_task_run: *from_task_run, on: *on });
                }
            }
            EventData::HookFailed(h) => {
                let what = format!("hook {} ({}) for {}", h.hook, h.level, h.for_event);
                self.say(format!("{what} failed: {}: {}", h.reason, h.detail), true);
            }
            _ if e.name().is_task() => self.apply_task(e),
            _ => {}
        }
        Vec::new()
    }

    /// Task run `id` was started by a transition. Its own events come next, so it is most
    /// often not on screen yet: kept until it is.
    fn apply_transition(&mut self, id: u64, by: ReachedBy) {
        match self.tasks.get_mut(&id) {
            Some(row) => row.rec.reached_by = Some(by),
            None => {
                self.unseen_transitions.insert(id, by);
                while self.unseen_transitions.len() > MAX_UNSEEN_TRANSITIONS {
                    self.unseen_transitions.pop_first();
                }
            }
        }
    }

    fn apply_fire(&mut self, e: &EngineEvent, scheduled_for_ms: u64, skipped: bool) {
        let Some(row) = self.schedules.iter_mut().find(|r| Some(&r.job) == e.job.as_ref()) else { return };
        row.last_ms = Some(scheduled_for_ms);
        row.last_skipped = skipped;
        self.touch(View::Schedules);
    }

    fn apply_job(&mut self, e: &EngineEvent) -> Vec<Command> {
        let Some(id) = e.job_run else { return Vec::new() };
        self.optimistic_jobs.remove(&id);
        let known = self.jobs.contains_key(&id);
        let job = e.job.clone().unwrap_or_default();
        let row = self.jobs.entry(id).or_insert_with(|| JobRow {
            rec: placeholder_job(id, &job, e.ts_ms),
            tasks: Vec::new(),
            done: 0,
            running: 0,
        });
        let (state, end) = match &e.data {
            EventData::JobStarted(_) => (JobState::Running, None),
            EventData::JobSucceeded(end) => (JobState::Succeeded, Some(end)),
            EventData::JobFailed(end) => (JobState::Failed, Some(end)),
            EventData::JobCancelled(end) => (JobState::Cancelled, Some(end)),
            _ => return Vec::new(),
        };
        row.rec.state = state;
        match end {
            Some(end) => {
                row.rec.ended_at_ms = Some(e.ts_ms);
                row.rec.reason = end.reason.clone();
                row.rec.cost_usd_micros = end.cost_usd_micros;
            }
            None => {
                row.rec.ended_at_ms = None;
                row.rec.reason = None;
            }
        }
        self.touch(View::Jobs);
        // A run reopened `--from` a task put succeeded task runs back to pending without an event each.
        match &e.data {
            EventData::JobStarted(JobStart::Retry { from: Some(_) }) => vec![Command::LoadJobRun(id)],
            EventData::JobStarted(_) if !known => vec![Command::LoadJobRun(id)],
            _ => Vec::new(),
        }
    }

    fn apply_task(&mut self, e: &EngineEvent) {
        let Some(id) = e.task_run else { return };
        if !self.tasks.contains_key(&id) {
            let (Some(job_run), Some(job), Some(task)) = (e.job_run, &e.job, &e.task) else { return };
            let mut rec = TaskRun::pending(id, job_run, job, task, e.ts_ms);
            rec.queue = e.queue.clone().unwrap_or_else(|| "default".into());
            // Task events carry which instance they are about (SPEC §6).
            let instance = e.instance.unwrap_or(Instance::FIRST);
            (rec.iteration, rec.item_index) = (instance.iteration, instance.item_index);
            rec.compensation = instance.compensation;
            rec.fanout = instance.fanout;
            rec.max_attempts = 0;
            self.insert_task(rec);
        }
        self.optimistic.remove(&id);
        let ts = e.ts_ms;
        let new_state = match e.name() {
            EventName::TaskQueued => Some(TaskState::Queued),
            EventName::TaskStarted => Some(TaskState::Running),
            EventName::TaskSucceeded => Some(TaskState::Succeeded),
            EventName::TaskRetryScheduled => Some(TaskState::Retrying),
            EventName::TaskDeadLettered => Some(TaskState::Dead),
            EventName::TaskCancelled => Some(TaskState::Cancelled),
            EventName::TaskSkipped => Some(TaskState::Skipped),
            EventName::TaskWaiting => Some(TaskState::Waiting),
            EventName::TaskHandled => Some(TaskState::Failed),
            _ => None,
        };
        match &e.data {
            EventData::TaskCost { usage, model, .. } => self.apply_cost(e, id, usage, model.as_deref()),
            EventData::TaskWarning { message } => self.apply_warning(e, id, message),
            EventData::TaskBlocked { requires, .. } => self.apply_requires(id, requires),
            _ => {}
        }
        let Some(row) = self.tasks.get_mut(&id) else { return };
        if let Some(a) = e.attempt {
            row.rec.attempt = row.rec.attempt.max(a);
        }
        let r = &mut row.rec;
        match &e.data {
            EventData::TaskQueued { priority, series_start } => {
                r.not_before_ms = None;
                r.ended_at_ms = None;
                r.priority = *priority;
                if let Some(n) = series_start {
                    r.series_start = *n;
                }
            }
            EventData::TaskStarted { .. } => {
                r.started_at_ms = Some(ts);
                r.ended_at_ms = None;
                r.progress = None;
                r.reason = None;
                r.exit_code = None;
                r.detail = None;
                let n = e.attempt.unwrap_or(r.attempt);
                row.attempts.retain(|a| a.n != n);
                row.attempts.push(AttemptLine {
                    n,
                    started_ms: Some(ts),
                    ended_ms: None,
                    outcome: "running".into(),
                    exit_code: None,
                    detail: None,
                });
                if row.attempts.len() > MAX_ATTEMPT_LINES {
                    row.attempts.remove(0);
                }
            }
            EventData::TaskProgress { message } => r.progress = Some(message.clone()),
            EventData::TaskSucceeded { cost_usd_micros, .. } => {
                r.ended_at_ms = Some(ts);
                r.reason = None;
                r.cost_usd_micros = r.cost_usd_micros.max(*cost_usd_micros);
                end_attempt(row, e, "succeeded", None);
            }
            EventData::TaskFailed(failure) => {
                r.reason = Some(failure.reason);
                r.exit_code = failure.exit_code;
                r.detail = failure.detail.clone();
                end_attempt(row, e, failure.reason.as_str(), Some(failure));
            }
            EventData::TaskRetryScheduled { delay_ms, .. } => r.not_before_ms = Some(ts + delay_ms),
            EventData::TaskDeadLettered { reason, .. } => {
                r.ended_at_ms = Some(ts);
                r.reason = Some(*reason);
            }
            EventData::TaskCancelled { .. } => {
                r.ended_at_ms = Some(ts);
                r.reason = Some(FailReason::Cancelled);
                end_attempt(row, e, "cancelled", None);
            }
            EventData::TaskSkipped | EventData::TaskHandled => r.ended_at_ms = Some(ts),
            _ => {}
        }
        let queue = row.rec.queue.clone();
        if let Some(to) = new_state {
            if matches!(to, TaskState::Succeeded | TaskState::Dead | TaskState::Cancelled | TaskState::Failed) {
                *self.queue_mut(&queue).done_per_minute.entry(ts / MINUTE_MS).or_default() += 1;
            }
            self.set_state(id, to);
        }
        self.touch_tasks(false);
    }

    /// `task.blocked` says what the task run requires (a row made from events did not know).
    fn apply_requires(&mut self, id: u64, requires: &[String]) {
        let Some(row) = self.tasks.get(&id) else { return };
        let mut rec = row.rec.clone();
        self.tally(&rec, -1);
        rec.requires = requires.to_vec();
        self.tally(&rec, 1);
        if let Some(row) = self.tasks.get_mut(&id) {
            row.rec.requires = rec.requires;
        }
    }

    fn apply_cost(&mut self, e: &EngineEvent, id: u64, usage: &Usage, model: Option<&str>) {
        let usage = *usage;
        let model = model.map(str::to_string);
        let Some(row) = self.tasks.get_mut(&id) else { return };
        let r = &mut row.rec;
        r.cost_usd_micros = r.cost_usd_micros.saturating_add(usage.usd_micros);
        r.input_tokens = r.input_tokens.saturating_add(usage.input_tokens);
        r.output_tokens = r.output_tokens.saturating_add(usage.output_tokens);
        if model.is_some() {
            row.model = model.clone();
        }
        let (job, task, queue, job_run) = (r.job.clone(), r.task.clone(), r.queue.clone(), r.job_run);
        self.cost.tokens.add(&Usage { usd_micros: 0, ..usage });
        if let Some(j) = self.jobs.get_mut(&job_run) {
            j.rec.cost_usd_micros = j.rec.cost_usd_micros.saturating_add(usage.usd_micros);
        }
        let model = model.as_deref().unwrap_or(NO_MODEL);
        self.add_cost(&job, &task, &queue, Some(model), e.ts_ms / MINUTE_MS, usage.usd_micros);
        self.touch(View::Cost);
    }

    /// A warning about what an attempt reported: kept for the detail pane and said below the table.
    fn apply_warning(&mut self, e: &EngineEvent, id: u64, text: &str) {
        let Some(row) = self.tasks.get_mut(&id) else { return };
        let text = text.to_string();
        row.warnings.push((e.attempt.unwrap_or(row.rec.attempt), text.clone()));
        if row.warnings.len() > MAX_WARNING_LINES {
            row.warnings.remove(0);
        }
        let who = format!("#{} {}.{}", id, row.rec.job, row.rec.label());
        self.say(format!("{who}: warning: {text}"), true);
    }

    // ---- indexes -------------------------------------------------------------------------

    /// Rebuilds the focused view's rows if something changed since the last build. Cheap when
    /// nothing did; called before each frame and after each key.
    pub fn prepare(&mut self) {
        let view = self.focus;
        if !self.dirty[view.index()] {
            return;
        }
        self.dirty[view.index()] = false;
        let rows = self.build_index(view);
        self.index[view.index()] = rows;
        self.reselect();
    }

    /// Keeps the selection on the same id after a rebuild, clamped to the rows.
    fn reselect(&mut self) {
        let v = self.focus.index();
        let rows = &self.index[v];
        let pane = &mut self.panes[v];
        if let Some(id) = pane.selected_id
            && rows.get(pane.selected) != Some(&id)
            && let Some(pos) = rows.iter().position(|r| *r == id)
        {
            pane.selected = pos;
        }
        pane.selected = pane.selected.min(rows.len().saturating_sub(1));
        pane.selected_id = rows.get(pane.selected).copied();
    }

    fn build_index(&self, view: View) -> Vec<u64> {
        let pane = &self.panes[view.index()];
        let filter = Filter::parse(&pane.filter);
        let sort = view.sort_columns().get(pane.sort).copied().unwrap_or(SortBy::Id);
        let mut rows: Vec<u64> = match view {
            View::Queues => (0..self.queues.len() as u64).collect(),
            View::Workers => self.workers.iter().map(|w| w.snap.id as u64).collect(),
            View::Schedules => (0..self.schedules.len() as u64).collect(),
            View::Cost => Vec::new(),
            View::Jobs => self.sorted_jobs(self.jobs.values().filter(|j| filter.matches_job(j)), sort),
            View::Tasks => self.sorted_tasks(self.tasks.values().filter(|t| filter.matches_task(t)), sort),
            View::Retries => self.sorted_tasks(self.rows_of(&self.retrying).filter(|t| filter.matches_task(t)), sort),
            View::DeadLetters => self.sorted_tasks(self.rows_of(&self.dead).filter(|t| filter.matches_task(t)), sort),
        };
        if pane.reverse {
            rows.reverse();
        }
        rows
    }

    fn rows_of<'a>(&'a self, set: &'a BTreeSet<u64>) -> impl Iterator<Item = &'a TaskRow> + 'a {
        set.iter().filter_map(|id| self.tasks.get(id))
    }

    /// Ids in `rows` order by `sort`, ties by id. Keys are computed once per row (one pass, no
    /// lookups while sorting): 100k rows sort in a few milliseconds.
    fn sorted_tasks<'a>(&'a self, rows: impl Iterator<Item = &'a TaskRow>, sort: SortBy) -> Vec<u64> {
        match sort {
            SortBy::Id => rows.map(|t| t.rec.id).collect(),
            SortBy::Name => by_key(rows.map(|t| ((t.rec.job.as_str(), t.rec.task.as_str()), t.rec.id))),
            SortBy::Queue => by_key(rows.map(|t| (t.rec.queue.as_str(), t.rec.id))),
            SortBy::State => by_key(rows.map(|t| (t.rec.state, t.rec.id))),
            SortBy::Duration => by_key(rows.map(|t| (self.task_duration(t), t.rec.id))),
            SortBy::Cost => by_key(rows.map(|t| (t.rec.cost_usd_micros, t.rec.id))),
            SortBy::Due => by_key(rows.map(|t| (t.rec.not_before_ms.unwrap_or(u64::MAX), t.rec.id))),
            SortBy::When => by_key(rows.map(|t| (t.rec.ended_at_ms.unwrap_or(u64::MAX), t.rec.id))),
        }
    }

    fn sorted_jobs<'a>(&'a self, rows: impl Iterator<Item = &'a JobRow>, sort: SortBy) -> Vec<u64> {
        match sort {
            SortBy::Name => by_key(rows.map(|j| (j.rec.job.as_str(), j.rec.id))),
            SortBy::State => by_key(rows.map(|j| (j.rec.state, j.rec.id))),
            SortBy::Duration => by_key(rows.map(|j| (self.elapsed(j.rec.created_at_ms, j.rec.ended_at_ms), j.rec.id))),
            SortBy::Cost => by_key(rows.map(|j| (j.rec.cost_usd_micros, j.rec.id))),
            _ => rows.map(|j| j.rec.id).collect(),
        }
    }

    pub fn elapsed(&self, from_ms: u64, to_ms: Option<u64>) -> u64 {
        to_ms.unwrap_or(self.now_ms).saturating_sub(from_ms)
    }

    /// How long the latest attempt ran, or has run so far while it runs; `None` before the first.
    /// Only a running task run's clock runs: between attempts (`retrying`, or queued again) the
    /// task run has not ended, so the end of its last attempt is read from the attempt lines.
    /// A task run read from the store between attempts has no such line (the record does not say
    /// when its attempt ended): `None` then, rather than a clock counting from the attempt's start.
    pub fn task_duration(&self, t: &TaskRow) -> Option<u64> {
        let r = &t.rec;
        let started = r.started_at_ms?;
        if r.state == TaskState::Running {
            return Some(self.elapsed(started, None));
        }
        if let Some(ended) = r.ended_at_ms {
            return Some(ended.saturating_sub(started));
        }
        let last = t.attempts.iter().max_by_key(|a| a.n)?;
        Some(last.ended_ms?.saturating_sub(last.started_ms.unwrap_or(started)))
    }

    /// Marks every view dirty (focus changes, filters, sorts).
    pub fn invalidate(&mut self) {
        self.dirty = [true; VIEWS];
        self.changed = true;
    }
}

/// The rows of the Schedules view: every job with a cron line, with its last fire time.
fn schedule_rows(jobs: &[JobShape], fires: &BTreeMap<String, u64>) -> Vec<ScheduleRow> {
    let mut rows: Vec<ScheduleRow> = jobs
        .iter()
        .filter_map(|j| {
            let expression = j.schedule.clone()?;
            Some(ScheduleRow {
                job: j.name.clone(),
                schedule: Schedule::new(&expression, j.timezone.as_deref()).ok(),
                expression,
                timezone: j.timezone.clone(),
                last_ms: fires.get(&j.name).copied(),
                last_skipped: false,
            })
        })
        .collect();
    rows.sort_by(|a, b| a.job.cmp(&b.job));
    rows
}

/// Sorts `(key, id)` pairs and keeps the ids.
fn by_key<K: Ord>(pairs: impl Iterator<Item = (K, u64)>) -> Vec<u64> {
    let mut pairs: Vec<(K, u64)> = pairs.collect();
    pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    pairs.into_iter().map(|(_, id)| id).collect()
}

/// `/` text: words match job, task, queue, id and reason; a state name (`dead`, `running` …)
/// matches that state.
pub struct Filter {
    states: Vec<&'static str>,
    words: Vec<String>,
}

impl Filter {
    pub fn parse(text: &str) -> Filter {
        let mut f = Filter { states: Vec::new(), words: Vec::new() };
        for word in text.split_whitespace() {
            let word = word.to_lowercase();
            match TaskState::parse(&word) {
                Some(s) => f.states.push(s.as_str()),
                None => match JobState::parse(&word) {
                    Some(s) => f.states.push(s.as_str()),
                    None => f.words.push(word),
                },
            }
        }
        f
    }

    fn text_ok(&self, fields: &[&str]) -> bool {
        self.words.iter().all(|w| fields.iter().any(|f| contains_ignore_case(f, w)))
    }

    pub fn matches_task(&self, t: &TaskRow) -> bool {
        let r = &t.rec;
        if !self.states.is_empty() && !self.states.contains(&r.state.as_str()) {
            return false;
        }
        if self.words.is_empty() {
            return true;
        }
        let id = r.id.to_string();
        let reason = r.reason.map_or("", FailReason::as_str);
        self.text_ok(&[&r.job, &r.task, &r.queue, &id, reason])
    }

    pub fn matches_job(&self, j: &JobRow) -> bool {
        let r = &j.rec;
        if !self.states.is_empty() && !self.states.contains(&r.state.as_str()) {
            return false;
        }
        let id = format!("j{}", r.id);
        self.words.is_empty() || self.text_ok(&[&r.job, &id, r.reason.as_deref().unwrap_or("")])
    }
}

fn contains_ignore_case(haystack: &str, lower_needle: &str) -> bool {
    if haystack.is_ascii() {
        let (h, n) = (haystack.as_bytes(), lower_needle.as_bytes());
        n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
    } else {
        haystack.to_lowercase().contains(lower_needle)
    }
}

/// A job run known only from an event so far (its record was never read).
fn placeholder_job(id: u64, job: &str, at_ms: u64) -> JobRun {
    JobRun::running(id, job, at_ms)
}

/// The latest attempt of a stored task run, as far as the record tells.
fn last_attempt_of(rec: &TaskRun) -> Option<AttemptLine> {
    if rec.attempt == 0 {
        return None;
    }
    let outcome = match rec.state {
        TaskState::Running => "running".to_string(),
        TaskState::Succeeded => "succeeded".to_string(),
        _ => rec.reason.map_or("failed", FailReason::as_str).to_string(),
    };
    Some(AttemptLine {
        n: rec.attempt,
        started_ms: rec.started_at_ms,
        ended_ms: rec.ended_at_ms,
        outcome,
        exit_code: rec.exit_code.map(i64::from),
        detail: rec.detail.clone(),
    })
}

/// Ends the line of the event's attempt with `outcome`, and what a failed attempt said.
fn end_attempt(row: &mut TaskRow, e: &EngineEvent, outcome: &str, failure: Option<&AttemptFailure>) {
    let n = e.attempt.unwrap_or(row.rec.attempt);
    let line = match row.attempts.iter_mut().find(|a| a.n == n) {
        Some(line) => line,
        None => {
            row.attempts.push(AttemptLine {
                n,
                started_ms: None,
                ended_ms: None,
                outcome: String::new(),
                exit_code: None,
                detail: None,
            });
            row.attempts.last_mut().expect("pushed above")
        }
    };
    line.ended_ms = Some(e.ts_ms);
    line.outcome = outcome.to_string();
    let Some(f) = failure else { return };
    if let Some(code) = f.exit_code {
        line.exit_code = Some(code.into());
    }
    if let Some(signal) = f.signal {
        line.outcome = format!("{outcome} (signal {signal})");
    }
    if let Some(detail) = &f.detail {
        line.detail = Some(detail.clone());
    }
}
