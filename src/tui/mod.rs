//! The terminal UI (SPEC §4.2): live queues, jobs, tasks, retries, dead letters, cost and
//! workers over an engine (`engine::Control`: in-process, or a server over its socket), driven
//! by single keys. Elm style: `update` is pure and returns
//! `Command`s that the loop executes through the handle.
//!
//! - [`model`]: what the TUI knows, fed by a snapshot and then by events only (never the store
//!   per frame); counters kept incrementally, row indexes rebuilt lazily.
//! - [`update`]: `Msg` → model changes + `Command`s. Pure.
//! - [`view`]: `Model` → a frame, one file per pane, tables virtualised.
//! - [`keymap`]: the key table; the footer and `?` help are generated from it.
//! - [`terminal`]: raw mode, alternate screen, panic hook, key stream.
//!
//! Architecture Invariant: the TUI depends only on `engine::Control`, `EngineEvent` and the snapshot
//! types; only `tui::terminal` touches crossterm. The loop never awaits the engine inline:
//! commands run as futures polled next to the key and event streams, so a slow answer never
//! freezes the screen, and the TUI never blocks an actor.

mod fixture;
pub mod job_graph;
pub mod keymap;
pub mod model;
pub mod rows;
pub mod terminal;
pub mod update;
pub mod view;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_graph;

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use futures_util::stream::FuturesUnordered;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::MissedTickBehavior;

use crate::engine::{Clock, Control, EngineEvent, SystemClock};

#[doc(hidden)]
pub use fixture::{fixture, fixture_control, fixture_with};
pub use model::{Mode, Model, Session, View};
pub use update::{Command, Msg, update};

/// The most of a log file the TUI reads (its tail).
pub const LOG_TAIL_BYTES: u64 = 64 * 1024;
/// At most this many engine events are applied between two looks at the keyboard.
const EVENT_BATCH: usize = 10_000;
const FRAME: Duration = Duration::from_millis(33);
/// Past this many task runs, row indexes are rebuilt for events at most every `REBUILD_EVERY`.
const BIG_MODEL: usize = 20_000;
const REBUILD_EVERY: Duration = Duration::from_millis(250);

/// How `gaffer run` (or `gaffer tui`) opens the TUI.
#[derive(Debug, Clone)]
pub struct TuiOptions {
    /// Shown in the header (the workflow file, say).
    pub title: String,
    /// Where the logs are (`logs/<job_run>/<task_run>.<attempt>.log`).
    pub state_dir: PathBuf,
    /// The job runs this session started or resumed; the header says when all have ended.
    pub watched_job_runs: Vec<u64>,
    /// In-process, attached to a server, or read-only on a quiet state dir.
    pub session: Session,
}

/// Why the TUI returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TuiExit {
    /// `q` (confirmed when work was running): the caller stops gracefully.
    Quit,
}

type Pending = FuturesUnordered<LocalBoxFuture<'static, Vec<Msg>>>;

/// Runs the TUI until the person quits. Owns the terminal meanwhile and restores it on every
/// way out (return, error, panic).
pub async fn run(
    handle: Rc<dyn Control>,
    mut events: UnboundedReceiver<EngineEvent>,
    options: TuiOptions,
) -> io::Result<TuiExit> {
    // Events already waiting were published, so committed, before the snapshot is read: the
    // snapshot has them. Dropping them keeps their costs from being counted twice.
    while events.try_recv().is_ok() {}
    let snapshot = handle.snapshot().await.map_err(io::Error::other)?;
    let mut model = Model::new(snapshot, SystemClock.now_ms(), &options.title, options.watched_job_runs.clone());
    model.session = options.session;
    let mut screen = terminal::Screen::enter()?;
    let (w, h) = terminal::size()?;
    update(&mut model, Msg::Resize(w, h));
    let mut keys = terminal::Keys::new();
    let mut pending: Pending = FuturesUnordered::new();
    let mut frame = tokio::time::interval(FRAME);
    frame.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last_rebuild = Instant::now();
    loop {
        let mut draw_now = false;
        let commands = tokio::select! {
            input = keys.next() => match input {
                terminal::Input::Key(key) => {
                    draw_now = true;
                    update(&mut model, Msg::Key(key))
                }
                terminal::Input::Resize(w, h) => update(&mut model, Msg::Resize(w, h)),
                terminal::Input::Closed => return Ok(TuiExit::Quit),
            },
            Some(event) = events.recv() => {
                let mut commands = update(&mut model, Msg::Engine(event));
                for _ in 0..EVENT_BATCH {
                    let Ok(event) = events.try_recv() else { break };
                    commands.extend(update(&mut model, Msg::Engine(event)));
                }
                commands
            }
            Some(msgs) = pending.next(), if !pending.is_empty() => {
                msgs.into_iter().flat_map(|msg| update(&mut model, msg)).collect()
            }
            _ = frame.tick() => {
                draw_now = model.changed;
                Vec::new()
            }
            _ = second.tick() => update(&mut model, Msg::Tick(SystemClock.now_ms())),
        };
        for command in commands {
            if command == Command::Quit {
                return Ok(TuiExit::Quit);
            }
            pending.push(execute(&handle, &options.state_dir, command));
        }
        if draw_now {
            // Keys rebuild rows at once (in `update`); events, on a big model, at most 4 times
            // a second: a stale order for 250 ms is fine, a frame per event walking 100k is not.
            if model.tasks.len() < BIG_MODEL || last_rebuild.elapsed() >= REBUILD_EVERY {
                model.prepare();
                last_rebuild = Instant::now();
            }
            screen.terminal.draw(|f| view::view(&model, f))?;
            model.changed = false;
        }
    }
}

/// Runs one command off the loop; its answer comes back as messages.
fn execute(handle: &Rc<dyn Control>, state_dir: &Path, command: Command) -> LocalBoxFuture<'static, Vec<Msg>> {
    let handle = handle.clone();
    match command {
        Command::Retry(target) => Box::pin(async move {
            let result = handle.retry(target).await.map_err(|e| e.to_string());
            vec![Msg::Done { command: Command::Retry(target), result }]
        }),
        Command::RetryFrom { job_run, task } => Box::pin(async move {
            let options = crate::engine::RetryOptions { from: Some(task.clone()), ..Default::default() };
            let result =
                handle.retry_with(crate::engine::Target::JobRun(job_run), options).await.map_err(|e| e.to_string());
            vec![Msg::Done { command: Command::RetryFrom { job_run, task }, result }]
        }),
        Command::Cancel(target) => Box::pin(async move {
            let result = handle.cancel(target).await.map_err(|e| e.to_string());
            vec![Msg::Done { command: Command::Cancel(target), result }]
        }),
        Command::Signal { task_run, name } => Box::pin(async move {
            let result =
                handle.signal(crate::engine::Target::TaskRun(task_run), &name).await.map_err(|e| e.to_string());
            vec![Msg::Done { command: Command::Signal { task_run, name }, result }]
        }),
        Command::Pause(ref queue) | Command::Resume(ref queue) => {
            let paused = matches!(command, Command::Pause(_));
            let queue = queue.clone();
            Box::pin(async move {
                let result = match handle.set_paused(&queue, paused).await {
                    Ok(true) => Ok(String::new()),
                    Ok(false) => Err(format!("no queue named {queue}")),
                    Err(e) => Err(e.to_string()),
                };
                vec![Msg::Done { command, result }]
            })
        }
        Command::LoadJobRun(id) => Box::pin(async move {
            match handle.task_runs_of(id).await {
                Ok(views) => vec![Msg::JobRunLoaded(views.into_iter().map(rows::TaskRun::from).collect())],
                Err(e) => vec![Msg::Done { command, result: Err(format!("job run j{id}: {e}")) }],
            }
        }),
        Command::ReadLog { task_run, job_run, attempt } => {
            let state_dir = state_dir.to_path_buf();
            let rel = PathBuf::from(crate::report::attempt_log_path(job_run, task_run, attempt));
            Box::pin(async move {
                let read = tokio::task::spawn_blocking(move || read_tail(&state_dir, &rel, LOG_TAIL_BYTES)).await;
                let text = read.map_err(|e| e.to_string()).and_then(|r| r);
                vec![Msg::LogLoaded { task_run, attempt, text }]
            })
        }
        Command::Refresh => Box::pin(async move {
            let mut msgs = match handle.live().await {
                Ok((workers, queues)) => vec![Msg::Workers(workers), Msg::Queues(queues)],
                Err(_) => Vec::new(),
            };
            msgs.extend(handle.nodes().await.ok().map(Msg::Nodes));
            msgs
        }),
        Command::Quit => Box::pin(async { Vec::new() }),
    }
}

/// The last `max_bytes` of a log file from a line start, made inert (`crate::sanitize`).
pub fn read_tail(state_dir: &Path, rel: &Path, max_bytes: u64) -> Result<String, String> {
    let path = state_dir.join(rel);
    let shown = path.display();
    let dir = crate::state_dir::StateDir::open(state_dir).map_err(|e| e.to_string())?;
    let mut file = dir.open_file(rel, crate::state_dir::Access::Read).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| format!("{shown}: {e}"))?.len();
    let start = len.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start)).map_err(|e| format!("{shown}: {e}"))?;
    let mut bytes = Vec::with_capacity((len - start) as usize);
    file.take(max_bytes).read_to_end(&mut bytes).map_err(|e| format!("{shown}: {e}"))?;
    let from = if start > 0 { bytes.iter().position(|b| *b == b'\n').map_or(0, |p| p + 1) } else { 0 };
    Ok(crate::sanitize::sanitize_bytes(&bytes[from..]))
}

/// Draws `model` once on a `TestBackend` and returns the screen as text (snapshots, benches).
#[doc(hidden)]
pub fn render_to_string(model: &Model, width: u16, height: u16) -> String {
    let mut terminal = match Terminal::new(TestBackend::new(width, height)) {
        Ok(t) => t,
        Err(never) => match never {},
    };
    let _ = terminal.draw(|f| view::view(model, f));
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        let mut line = String::new();
        for x in 0..buffer.area.width {
            line.push_str(buffer[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Times one draw of each view of `model` on a `TestBackend` (the index rebuild a focus change
/// needs is done first and not counted: it happens once per change, not per frame).
#[doc(hidden)]
pub fn render_all_views_once(model: &Model, width: u16, height: u16) -> Vec<(&'static str, Duration)> {
    let mut model = model.clone();
    model.size = (width, height);
    let mut terminal = match Terminal::new(TestBackend::new(width, height)) {
        Ok(t) => t,
        Err(never) => match never {},
    };
    View::ALL
        .into_iter()
        .map(|v| {
            model.focus = v;
            model.mode = Mode::Normal;
            model.invalidate();
            model.prepare();
            let started = Instant::now();
            let _ = terminal.draw(|f| view::view(&model, f));
            (v.title(), started.elapsed())
        })
        .collect()
}
