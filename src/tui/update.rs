//! `update`: the only place the model changes. Pure: no I/O, no clock; what must happen outside
//! (talk to the engine, read a file) comes back as [`Command`]s for the loop to run.

use super::rows::TaskRun;
use crate::engine::{EngineEvent, NodeStatus, QueueSnapshot, Target, WorkerSnapshot};
use crate::model::{JobState, TaskState};

use super::job_graph::{self, Row};
use super::keymap::{self, Action, Code, Key};
use super::model::{LogPane, Mode, Model, Session, Subject, View};

/// Everything that can happen to the TUI.
#[derive(Debug, Clone)]
pub enum Msg {
    Key(Key),
    Engine(EngineEvent),
    /// The clock, about once a second: countdowns, ages, log follow.
    Tick(u64),
    Resize(u16, u16),
    /// The task runs of a job run first seen in `job.started`.
    JobRunLoaded(Vec<TaskRun>),
    LogLoaded {
        task_run: u64,
        attempt: u32,
        text: Result<String, String>,
    },
    Workers(Vec<WorkerSnapshot>),
    Queues(Vec<QueueSnapshot>),
    /// The cluster's nodes, read at the refresh (none without a cluster).
    Nodes(Vec<NodeStatus>),
    /// How a command sent to the engine went (its answer, or the error).
    Done {
        command: Command,
        result: Result<String, String>,
    },
}

/// What the loop does for `update`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Retry(Target),
    /// `retry j7 --from TASK`: the task and what follows it run again.
    RetryFrom {
        job_run: u64,
        task: String,
    },
    Cancel(Target),
    /// Release a waiting task run: send it the signal it waits for.
    Signal {
        task_run: u64,
        name: String,
    },
    Pause(String),
    Resume(String),
    LoadJobRun(u64),
    ReadLog {
        task_run: u64,
        job_run: u64,
        attempt: u32,
    },
    /// Worker slots and queue switches, re-read each second (they have no events of their own).
    Refresh,
    Quit,
}

pub fn update(model: &mut Model, msg: Msg) -> Vec<Command> {
    match msg {
        Msg::Key(key) => {
            let commands = on_key(model, key);
            model.prepare();
            model.changed = true;
            commands
        }
        Msg::Engine(event) => model.apply(&event),
        Msg::Tick(now_ms) => on_tick(model, now_ms),
        Msg::Resize(w, h) => {
            model.size = (w, h);
            model.changed = true;
            Vec::new()
        }
        Msg::JobRunLoaded(records) => {
            model.insert_tasks(records);
            Vec::new()
        }
        Msg::LogLoaded { task_run, attempt, text } => {
            on_log(model, task_run, attempt, text);
            Vec::new()
        }
        Msg::Workers(workers) => {
            model.set_workers(workers);
            Vec::new()
        }
        Msg::Queues(queues) => {
            model.set_queues(queues);
            Vec::new()
        }
        Msg::Nodes(nodes) => {
            model.set_nodes(nodes);
            Vec::new()
        }
        Msg::Done { command, result } => {
            on_done(model, command, result);
            Vec::new()
        }
    }
}

fn on_tick(model: &mut Model, now_ms: u64) -> Vec<Command> {
    model.tick(now_ms);
    let mut commands = vec![Command::Refresh];
    // An earlier attempt's log is complete: only the latest one is read again.
    let following = match (&model.mode, &model.log) {
        (Mode::Log(id), Some(log)) if log.pinned.is_none() => model.tasks.get(id).map(|t| (t, log.read_at_ms)),
        _ => None,
    };
    if let Some((t, read_at)) = following {
        let ended_since_read = t.rec.ended_at_ms.is_some_and(|e| e >= read_at);
        if !t.rec.state.is_terminal() || ended_since_read {
            commands.push(read_log(t));
        }
    }
    commands
}

fn read_log(t: &super::model::TaskRow) -> Command {
    Command::ReadLog { task_run: t.rec.id, job_run: t.rec.job_run, attempt: t.rec.attempt.max(1) }
}

fn on_log(model: &mut Model, task_run: u64, attempt: u32, text: Result<String, String>) {
    // A read of the latest attempt that lands after `[` chose an earlier one is stale.
    if model.log.as_ref().is_some_and(|l| l.task_run == task_run && l.pinned.is_some_and(|p| p != attempt)) {
        return;
    }
    let text = text.unwrap_or_else(|e| format!("(no log: {e})"));
    let now = model.now_ms;
    match &mut model.log {
        Some(log) if log.task_run == task_run => {
            log.attempt = attempt;
            log.text = text;
            log.read_at_ms = now;
        }
        _ => model.log = Some(LogPane { task_run, attempt, pinned: None, text, read_at_ms: now, scroll_up: 0 }),
    }
    model.changed = true;
}

fn on_done(model: &mut Model, command: Command, result: Result<String, String>) {
    match result {
        Ok(text) if !text.is_empty() => model.say(text.lines().next().unwrap_or_default().to_string(), false),
        Ok(_) => {}
        Err(error) => {
            if let Command::Retry(target) | Command::Cancel(target) = &command {
                undo_optimistic(model, *target);
            }
            if let Command::Pause(q) | Command::Resume(q) = &command
                && let Some(row) = model.queues.get_mut(q)
            {
                row.paused = !row.paused;
            }
            model.say(error, true);
        }
    }
}

fn undo_optimistic(model: &mut Model, target: Target) {
    let ids: Vec<u64> = match target {
        Target::TaskRun(id) => vec![id],
        Target::JobRun(j) => model.jobs.get(&j).map(|j| j.tasks.clone()).unwrap_or_default(),
    };
    for id in ids {
        if let Some(before) = model.optimistic.remove(&id) {
            model.set_state(id, before);
        }
    }
    if let Target::JobRun(j) = target
        && let Some((state, ended_at_ms)) = model.optimistic_jobs.remove(&j)
        && let Some(job) = model.jobs.get_mut(&j)
    {
        (job.rec.state, job.rec.ended_at_ms) = (state, ended_at_ms);
    }
}

fn on_key(model: &mut Model, key: Key) -> Vec<Command> {
    match model.mode.clone() {
        Mode::Help => {
            if matches!(key.code, Code::Esc | Code::Enter | Code::Char('?') | Code::Char('q')) {
                model.mode = Mode::Normal;
            }
            Vec::new()
        }
        Mode::Confirm { command, .. } => match key.code {
            Code::Char('y') | Code::Char('Y') => {
                model.mode = Mode::Normal;
                optimistic(model, &command);
                vec![command]
            }
            Code::Char('n') | Code::Char('N') | Code::Esc | Code::Char('q') => {
                model.mode = Mode::Normal;
                Vec::new()
            }
            _ => Vec::new(),
        },
        Mode::Filter(text) => on_filter_key(model, text, key),
        Mode::Log(_) => on_log_key(model, key),
        Mode::Normal | Mode::Detail(_) => match keymap::lookup(key, model.focus) {
            Some(action) => act(model, action),
            None => Vec::new(),
        },
    }
}

fn on_filter_key(model: &mut Model, mut text: String, key: Key) -> Vec<Command> {
    match key.code {
        Code::Enter => {
            model.mode = Mode::Normal;
            return Vec::new();
        }
        Code::Esc => {
            text.clear();
            model.mode = Mode::Normal;
        }
        Code::Backspace => {
            text.pop();
            model.mode = Mode::Filter(text.clone());
        }
        Code::Char(c) if !key.ctrl && text.chars().count() < 64 => {
            text.push(c);
            model.mode = Mode::Filter(text.clone());
        }
        _ => return Vec::new(),
    }
    let pane = model.pane_mut();
    pane.filter = text;
    pane.selected = 0;
    pane.offset = 0;
    pane.selected_id = None;
    model.invalidate();
    Vec::new()
}

fn on_log_key(model: &mut Model, key: Key) -> Vec<Command> {
    let page = model.page();
    let Some(log) = model.log.as_mut() else {
        model.mode = Mode::Normal;
        return Vec::new();
    };
    match key.code {
        Code::Esc | Code::Char('q') | Code::Char('l') => model.mode = Mode::Normal,
        Code::Char('k') | Code::Up => log.scroll_up += 1,
        Code::Char('j') | Code::Down => log.scroll_up = log.scroll_up.saturating_sub(1),
        Code::PageUp => log.scroll_up += page,
        Code::PageDown => log.scroll_up = log.scroll_up.saturating_sub(page),
        Code::Char('g') | Code::Home => log.scroll_up = log.text.lines().count(),
        Code::Char('G') | Code::End => log.scroll_up = 0,
        Code::Char('[') => return other_attempt(model, -1),
        Code::Char(']') => return other_attempt(model, 1),
        _ => {}
    }
    Vec::new()
}

/// `[` / `]` in the log view: the attempt before or after the one shown (a retry's first
/// failure is usually the one worth reading). Past the latest it follows the latest again.
fn other_attempt(model: &mut Model, step: i64) -> Vec<Command> {
    let Some(log) = model.log.as_mut() else { return Vec::new() };
    let Some(t) = model.tasks.get(&log.task_run) else { return Vec::new() };
    let latest = t.rec.attempt.max(1);
    let wanted = (i64::from(log.attempt) + step).clamp(1, i64::from(latest)) as u32;
    log.pinned = (wanted < latest).then_some(wanted);
    // Counted from here on, so two quick presses step twice before the first read lands.
    log.attempt = wanted;
    log.scroll_up = 0;
    vec![Command::ReadLog { task_run: t.rec.id, job_run: t.rec.job_run, attempt: wanted }]
}

fn act(model: &mut Model, action: Action) -> Vec<Command> {
    let in_detail = matches!(model.mode, Mode::Detail(_));
    if model.session == Session::ReadOnly && action.changes_state() {
        model.say(crate::engine::READ_ONLY, true);
        return Vec::new();
    }
    if let Mode::Detail(Subject::Job(job_run)) = model.mode
        && let Some(commands) = on_job_graph(model, job_run, action)
    {
        return commands;
    }
    match action {
        Action::GoTo(view) => focus(model, view),
        Action::NextView => focus(model, model.focus.next()),
        Action::PrevView => focus(model, model.focus.prev()),
        Action::Down if in_detail => model.detail_scroll = model.detail_scroll.saturating_add(1),
        Action::Up if in_detail => model.detail_scroll = model.detail_scroll.saturating_sub(1),
        Action::Top if in_detail => model.detail_scroll = 0,
        Action::Down => move_by(model, 1),
        Action::Up => move_by(model, -1),
        Action::PageDown => move_by(model, model.page() as i64),
        Action::PageUp => move_by(model, -(model.page() as i64)),
        Action::Top => move_by(model, i64::MIN / 2),
        Action::Bottom => move_by(model, i64::MAX / 2),
        Action::Details => return details(model),
        Action::Back => back(model),
        Action::Filter => model.mode = Mode::Filter(model.pane().filter.clone()),
        Action::Sort => {
            let n = model.focus.sort_columns().len().max(1);
            let pane = model.pane_mut();
            pane.sort = (pane.sort + 1) % n;
            model.invalidate();
        }
        Action::Reverse => {
            let pane = model.pane_mut();
            pane.reverse = !pane.reverse;
            model.invalidate();
        }
        Action::Help => model.mode = Mode::Help,
        Action::Retry => return retry(model),
        Action::RetryFrom => return retry_from(model),
        Action::Cancel => return cancel(model),
        Action::Pause => return pause(model),
        Action::Approve => return approve(model),
        Action::Log => return follow_log(model),
        Action::Quit => return quit(model),
    }
    Vec::new()
}

/// Keys on a job run's task graph: the cursor moves over its rows, `Enter` expands the task
/// under it into its task runs or collapses it, `Esc` collapses it. `None`: the key does what it
/// does elsewhere (`Esc` on a collapsed task goes back, `r` retries the job run …).
fn on_job_graph(model: &mut Model, job_run: u64, action: Action) -> Option<Vec<Command>> {
    let (graph, rows) = model.jobs.get(&job_run).and_then(|j| job_graph::of_job(model, j))?;
    let last = rows.len().saturating_sub(1);
    let cursor = model.graph_cursor.min(last);
    let page = model.page();
    let row = rows.get(cursor)?;
    let key = (job_run, graph.name(row.task()).to_string());
    // The task's own row, where the cursor lands when its instances fold away.
    let task_row = rows[..=cursor].iter().rposition(|r| matches!(r, Row::Task { task, .. } if *task == row.task()));
    let expanded = matches!(row, Row::Instance { .. } | Row::Task { expanded: true, .. });
    match action {
        Action::Down => model.graph_cursor = (cursor + 1).min(last),
        Action::Up => model.graph_cursor = cursor.saturating_sub(1),
        Action::PageDown => model.graph_cursor = (cursor + page).min(last),
        Action::PageUp => model.graph_cursor = cursor.saturating_sub(page),
        Action::Top => model.graph_cursor = 0,
        Action::Bottom => model.graph_cursor = last,
        Action::Details | Action::Back if expanded => {
            model.expanded.remove(&key);
            model.graph_cursor = task_row.unwrap_or(cursor);
        }
        Action::Details => {
            if matches!(row, Row::Task { grouped: true, .. }) {
                model.expanded.insert(key);
            }
        }
        _ => return None,
    }
    Some(Vec::new())
}

fn focus(model: &mut Model, view: View) {
    model.focus = view;
    model.mode = Mode::Normal;
    model.detail_scroll = 0;
}

fn back(model: &mut Model) {
    if matches!(model.mode, Mode::Detail(_)) {
        model.mode = Mode::Normal;
        return;
    }
    if !model.pane().filter.is_empty() {
        model.pane_mut().filter.clear();
        model.invalidate();
    }
}

fn move_by(model: &mut Model, delta: i64) {
    let len = model.len();
    let page = model.page();
    let pane = model.pane_mut();
    let last = len.saturating_sub(1) as i64;
    pane.selected = (pane.selected as i64).saturating_add(delta).clamp(0, last.max(0)) as usize;
    pane.offset = visible_offset(pane.selected, pane.offset, page);
    model.pane_mut().selected_id = None;
    let id = model.index[model.focus.index()].get(model.pane().selected).copied();
    model.pane_mut().selected_id = id;
}

/// The first visible row that keeps `selected` in a window of `height` rows.
pub fn visible_offset(selected: usize, offset: usize, height: usize) -> usize {
    let height = height.max(1);
    if selected < offset {
        selected
    } else if selected >= offset + height {
        selected + 1 - height
    } else {
        offset
    }
}

fn details(model: &mut Model) -> Vec<Command> {
    let subject = match model.focus {
        View::Queues => model.selected_queue().map(|q| Subject::Queue(q.name.clone())),
        View::Jobs => model.selected_job().map(|j| Subject::Job(j.rec.id)),
        View::Tasks | View::Retries | View::DeadLetters => model.selected_id().map(Subject::Task),
        View::Workers => model.selected_id().map(|id| Subject::Worker(id as usize)),
        View::Cost | View::Schedules => None,
    };
    let Some(subject) = subject else { return Vec::new() };
    model.detail_scroll = 0;
    model.graph_cursor = 0;
    let command = match &subject {
        Subject::Task(id) => model.tasks.get(id).filter(|t| t.rec.attempt > 0).map(read_log),
        _ => None,
    };
    if let (Subject::Task(id), Some(log)) = (&subject, &model.log)
        && log.task_run != *id
    {
        model.log = None;
    }
    model.mode = Mode::Detail(subject);
    command.into_iter().collect()
}

/// The job run of the Jobs view, or the task run of the others.
fn target(model: &Model) -> Option<Target> {
    if let Mode::Detail(Subject::Job(id)) = model.mode {
        return Some(Target::JobRun(id));
    }
    match model.focus {
        View::Jobs => model.selected_job().map(|j| Target::JobRun(j.rec.id)),
        _ => model.selected_task().map(|t| Target::TaskRun(t.rec.id)),
    }
}

fn retry(model: &mut Model) -> Vec<Command> {
    let Some(target) = target(model) else {
        model.say("nothing selected to retry", true);
        return Vec::new();
    };
    // Said here rather than after a refusal: nothing changes on screen that would need undoing.
    // The engine's rule, on what the TUI knows (states); the budgets are the engine's to check.
    let (job_run, task_run) = match target {
        Target::TaskRun(id) => (model.tasks.get(&id).map_or(0, |t| t.rec.job_run), Some(id)),
        Target::JobRun(j) => (j, None),
    };
    let states: Vec<(u64, TaskState)> = model
        .jobs
        .get(&job_run)
        .map(|job| job.tasks.iter().filter_map(|id| model.tasks.get(id).map(|t| (*id, t.rec.state))).collect())
        .unwrap_or_default();
    // A run the TUI has not loaded is left to the engine.
    let checked =
        if states.is_empty() { Ok(Vec::new()) } else { crate::model::retry::retryable(job_run, &states, task_run) };
    if let Err(refusal) = checked {
        model.say(refusal.to_string(), true);
        return Vec::new();
    }
    let command = Command::Retry(target);
    optimistic(model, &command);
    vec![command]
}

/// `R`: the selected task's job run goes again from that task (the engine says if it cannot).
fn retry_from(model: &mut Model) -> Vec<Command> {
    match model.selected_task() {
        Some(t) => vec![Command::RetryFrom { job_run: t.rec.job_run, task: t.rec.task.clone() }],
        None => {
            model.say("select a task run to re-run its job run from", true);
            Vec::new()
        }
    }
}

/// `a`: the selected task run waits (`wait_for`): send it its signal.
fn approve(model: &mut Model) -> Vec<Command> {
    let Some(task) = model.selected_task() else {
        model.say("select a waiting task run to approve", true);
        return Vec::new();
    };
    let (id, state) = (task.rec.id, task.rec.state);
    let wanted = model
        .shapes
        .get(&task.rec.job)
        .and_then(|job| job.tasks.iter().find(|t| t.name == task.rec.task))
        .and_then(|t| t.wait_for.clone());
    match (state, wanted) {
        (TaskState::Waiting, Some(name)) => vec![Command::Signal { task_run: id, name }],
        (TaskState::Waiting, None) => {
            model.say(format!("task run {id} waits, but its workflow is not the one loaded here"), true);
            Vec::new()
        }
        (other, _) => {
            model.say(format!("task run {id} {}; only a waiting task run can be approved", other.phrase()), true);
            Vec::new()
        }
    }
}

fn cancel(model: &mut Model) -> Vec<Command> {
    let Some(target) = target(model) else {
        model.say("nothing selected to cancel", true);
        return Vec::new();
    };
    let running = match target {
        Target::TaskRun(id) => model.tasks.get(&id).is_some_and(|t| t.rec.state == TaskState::Running),
        Target::JobRun(id) => model.jobs.get(&id).is_some_and(|j| j.running > 0),
    };
    let command = Command::Cancel(target);
    if running {
        let what = match target {
            Target::TaskRun(id) => format!("task run {id} is running"),
            Target::JobRun(id) => format!("job run j{id} has running tasks"),
        };
        model.mode = Mode::Confirm { question: format!("{what}: cancel it? y/n"), command };
        return Vec::new();
    }
    optimistic(model, &command);
    vec![command]
}

/// Shows what a command will do before the engine confirms it: the confirming event arrives
/// within a frame or two, a failure undoes it (`Msg::Done` with an error).
fn optimistic(model: &mut Model, command: &Command) {
    let (target, retry) = match command {
        Command::Retry(t) => (*t, true),
        Command::Cancel(t) => (*t, false),
        _ => return,
    };
    let ids: Vec<u64> = match target {
        Target::TaskRun(id) => vec![id],
        Target::JobRun(j) => model.jobs.get(&j).map(|j| j.tasks.clone()).unwrap_or_default(),
    };
    for id in ids {
        let Some(state) = model.tasks.get(&id).map(|t| t.rec.state) else { continue };
        let to = match (retry, state) {
            (true, TaskState::Dead | TaskState::Cancelled) => TaskState::Queued,
            (false, TaskState::Queued | TaskState::Pending | TaskState::Retrying | TaskState::Dead) => {
                TaskState::Cancelled
            }
            (false, TaskState::Waiting) => TaskState::Cancelled,
            _ => continue,
        };
        model.optimistic.entry(id).or_insert(state);
        model.set_state(id, to);
    }
    if let (true, Target::JobRun(j)) = (retry, target)
        && let Some(job) = model.jobs.get_mut(&j)
    {
        model.optimistic_jobs.entry(j).or_insert((job.rec.state, job.rec.ended_at_ms));
        job.rec.state = JobState::Running;
        job.rec.ended_at_ms = None;
    }
    let verb = if retry { "retry" } else { "cancel" };
    let what = match target {
        Target::TaskRun(id) => format!("task run {id}"),
        Target::JobRun(id) => format!("job run j{id}"),
    };
    model.say(format!("{verb} {what}…"), false);
}

fn pause(model: &mut Model) -> Vec<Command> {
    let Some(q) = model.selected_queue().map(|q| q.name.clone()) else { return Vec::new() };
    let Some(row) = model.queues.get_mut(&q) else { return Vec::new() };
    row.paused = !row.paused;
    let (command, verb) =
        if row.paused { (Command::Pause(q.clone()), "paused") } else { (Command::Resume(q.clone()), "resumed") };
    model.say(format!("queue {q} {verb}"), false);
    vec![command]
}

fn follow_log(model: &mut Model) -> Vec<Command> {
    let task = match &model.mode {
        Mode::Detail(Subject::Task(id)) => model.tasks.get(id),
        _ => model.selected_task(),
    };
    let Some(t) = task else {
        model.say("select a task run to follow its log", true);
        return Vec::new();
    };
    if t.rec.attempt == 0 {
        let text = format!("task run {} has not started yet: no log", t.rec.id);
        model.say(text, true);
        return Vec::new();
    }
    let command = read_log(t);
    let id = t.rec.id;
    if model.log.as_ref().is_some_and(|l| l.task_run != id) {
        model.log = None;
    }
    model.mode = Mode::Log(id);
    vec![command]
}

fn quit(model: &mut Model) -> Vec<Command> {
    let running = model.count(TaskState::Running);
    if running == 0 || model.session != Session::Owner {
        return vec![Command::Quit];
    }
    let plural = if running == 1 { "task" } else { "tasks" };
    model.mode =
        Mode::Confirm { question: format!("{running} {plural} running: stop gaffer? y/n"), command: Command::Quit };
    Vec::new()
}

impl Model {
    /// Rows in one page of a table (the terminal less header, tabs, borders, table header and
    /// footer).
    pub fn page(&self) -> usize {
        usize::from(self.size.1.saturating_sub(8)).max(1)
    }
}
