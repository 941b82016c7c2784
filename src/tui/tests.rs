//! `update` asserts and view snapshots on a fixed fixture (fixed clock).

use crate::engine::{AttemptFailure, EngineEvent, EventData, Instance, JobEnd, JobStart, Target};
use crate::model::FailReason;
use crate::model::TaskState;

use super::fixture::{NOW_MS, fixture, fixture_with};
use super::keymap::{Code, Key};
use super::model::{Mode, Model, Subject, View};
use super::update::{Command, Msg, update};
use super::{render_all_views_once, render_to_string};

/// Types `keys` one char at a time; returns every command.
fn press(model: &mut Model, keys: &str) -> Vec<Command> {
    keys.chars().flat_map(|c| update(model, Msg::Key(Key::ch(c)))).collect()
}

fn key(model: &mut Model, code: Code) -> Vec<Command> {
    update(model, Msg::Key(Key::code(code)))
}

fn rows(model: &Model) -> Vec<u64> {
    model.index[model.focus.index()].clone()
}

fn state(model: &Model, id: u64) -> TaskState {
    model.tasks[&id].rec.state
}

#[test]
fn digits_tab_and_shift_tab_switch_views() {
    let mut m = fixture();
    for (i, view) in View::ALL.into_iter().enumerate() {
        press(&mut m, &(i + 1).to_string());
        assert_eq!(m.focus, view);
    }
    key(&mut m, Code::Tab);
    assert_eq!(m.focus, View::Queues, "Tab wraps around");
    key(&mut m, Code::BackTab);
    assert_eq!(m.focus, View::Schedules);
    key(&mut m, Code::BackTab);
    assert_eq!(m.focus, View::Workers);
}

#[test]
fn r_on_a_dead_letter_retries_it_and_shows_it_queued_at_once() {
    let mut m = fixture();
    press(&mut m, "5");
    assert_eq!(rows(&m), vec![9]);
    assert_eq!(press(&mut m, "r"), vec![Command::Retry(Target::TaskRun(9))]);
    assert_eq!(state(&m, 9), TaskState::Queued, "optimistic");
    assert!(rows(&m).is_empty(), "no longer a dead letter");
    assert_eq!(m.count(TaskState::Dead), 0);
}

#[test]
fn shift_r_reruns_the_selected_tasks_job_run_from_it() {
    let mut m = fixture();
    press(&mut m, "5");
    let (job_run, task) = (m.tasks[&9].rec.job_run, m.tasks[&9].rec.task.clone());
    assert_eq!(press(&mut m, "R"), vec![Command::RetryFrom { job_run, task }]);
    assert_eq!(state(&m, 9), TaskState::Dead, "nothing optimistic: the engine may refuse (run not finished)");
    press(&mut m, "2");
    assert!(press(&mut m, "R").is_empty(), "a job run row names no task");
}

#[test]
fn a_failed_command_undoes_the_optimistic_change() {
    let mut m = fixture();
    press(&mut m, "5r");
    let done = Msg::Done { command: Command::Retry(Target::TaskRun(9)), result: Err("nope".into()) };
    update(&mut m, done);
    assert_eq!(state(&m, 9), TaskState::Dead);
    assert_eq!(m.status.as_ref().map(|s| (s.text.as_str(), s.error)), Some(("nope", true)));
}

#[test]
fn the_confirming_event_settles_the_optimistic_state() {
    let mut m = fixture();
    press(&mut m, "5r");
    let mut e = EngineEvent::new(EventData::TaskQueued { priority: 50, series_start: None }, NOW_MS);
    (e.job, e.job_run, e.task, e.task_run, e.queue) =
        (Some("nightly".into()), Some(3), Some("backup".into()), Some(9), Some("default".into()));
    update(&mut m, Msg::Engine(e));
    assert!(m.optimistic.is_empty());
    assert_eq!(state(&m, 9), TaskState::Queued);
}

#[test]
fn c_on_a_dead_letter_cancels_it_for_good_without_asking() {
    let mut m = fixture();
    assert_eq!(press(&mut m, "5c"), vec![Command::Cancel(Target::TaskRun(9))]);
    assert_eq!(state(&m, 9), TaskState::Cancelled);
}

#[test]
fn c_on_a_running_task_asks_first() {
    let mut m = fixture();
    press(&mut m, "3");
    let running = rows(&m).iter().position(|id| *id == 6).expect("task run 6 listed");
    m.panes[View::Tasks.index()].selected = running;
    assert!(press(&mut m, "c").is_empty());
    assert!(
        matches!(&m.mode, Mode::Confirm { question, .. } if question.contains("task run 6 is running")),
        "{:?}",
        m.mode
    );
    assert!(press(&mut m, "n").is_empty());
    assert_eq!(m.mode, Mode::Normal);
    press(&mut m, "c");
    assert_eq!(press(&mut m, "y"), vec![Command::Cancel(Target::TaskRun(6))]);
    assert_eq!(state(&m, 6), TaskState::Running, "a running attempt is stopped by the engine, not by us");
}

#[test]
fn r_and_c_in_jobs_target_the_job_run() {
    let mut m = fixture();
    press(&mut m, "2");
    // Jobs are listed newest first.
    assert_eq!(rows(&m), vec![6, 5, 4, 3, 2, 1]);
    press(&mut m, "jjj");
    assert_eq!(press(&mut m, "r"), vec![Command::Retry(Target::JobRun(3))]);
    assert_eq!(state(&m, 9), TaskState::Queued);
    press(&mut m, "g");
    assert_eq!(press(&mut m, "c"), vec![Command::Cancel(Target::JobRun(6))], "nothing runs: no question");
    press(&mut m, "jjjj");
    assert!(press(&mut m, "c").is_empty(), "j2 runs tasks: asks");
    assert!(matches!(m.mode, Mode::Confirm { .. }));
}

#[test]
fn slash_filter_narrows_rows_as_it_is_typed() {
    let mut m = fixture();
    press(&mut m, "3");
    assert_eq!(rows(&m).len(), 16);
    press(&mut m, "/backup");
    assert_eq!(m.mode, Mode::Filter("backup".into()));
    assert_eq!(rows(&m), vec![9, 11]);
    press(&mut m, " dead");
    assert_eq!(rows(&m), vec![9], "a state name filters by state");
    key(&mut m, Code::Backspace);
    key(&mut m, Code::Backspace);
    key(&mut m, Code::Backspace);
    key(&mut m, Code::Backspace);
    key(&mut m, Code::Backspace);
    assert_eq!(rows(&m), vec![9, 11]);
    key(&mut m, Code::Enter);
    assert_eq!(m.mode, Mode::Normal);
    assert_eq!(rows(&m), vec![9, 11], "Enter keeps the filter");
    key(&mut m, Code::Esc);
    assert_eq!(rows(&m).len(), 16, "Esc clears it");
    press(&mut m, "/running");
    assert_eq!(rows(&m), vec![6, 7]);
    key(&mut m, Code::Esc);
    assert_eq!(rows(&m).len(), 16);
}

#[test]
fn q_asks_when_work_is_running_and_quits_at_once_otherwise() {
    let mut m = fixture();
    assert!(press(&mut m, "q").is_empty());
    assert!(
        matches!(&m.mode, Mode::Confirm { question, command: Command::Quit } if question == "2 tasks running: stop gaffer? y/n")
    );
    assert_eq!(press(&mut m, "y"), vec![Command::Quit]);
    let mut idle = fixture();
    for id in [6, 7] {
        idle.set_state(id, TaskState::Succeeded);
    }
    assert_eq!(press(&mut idle, "q"), vec![Command::Quit]);
    assert_eq!(update(&mut idle, Msg::Key(Key::ctrl('c'))), vec![Command::Quit]);
}

#[test]
fn question_mark_toggles_help() {
    let mut m = fixture();
    press(&mut m, "?");
    assert_eq!(m.mode, Mode::Help);
    press(&mut m, "r");
    assert_eq!(m.mode, Mode::Help, "keys do nothing under the help");
    press(&mut m, "?");
    assert_eq!(m.mode, Mode::Normal);
}

#[test]
fn p_pauses_and_resumes_the_selected_queue() {
    let mut m = fixture();
    press(&mut m, "1");
    assert_eq!(press(&mut m, "p"), vec![Command::Pause("default".into())]);
    assert!(m.queues["default"].paused);
    press(&mut m, "j");
    assert_eq!(press(&mut m, "p"), vec![Command::Resume("io".into())]);
    assert!(!m.queues["io"].paused);
    press(&mut m, "3");
    assert!(press(&mut m, "p").is_empty(), "p only applies to queues");
}

#[test]
fn j_k_g_move_and_clamp() {
    let mut m = fixture();
    press(&mut m, "3");
    press(&mut m, "k");
    assert_eq!(m.pane().selected, 0);
    press(&mut m, "jjj");
    assert_eq!(m.pane().selected, 3);
    press(&mut m, "G");
    assert_eq!(m.pane().selected, 15);
    press(&mut m, "j");
    assert_eq!(m.pane().selected, 15);
    press(&mut m, "g");
    assert_eq!(m.selected_id(), Some(1));
}

#[test]
fn enter_opens_details_and_reads_the_log_tail_esc_goes_back() {
    let mut m = fixture();
    press(&mut m, "3jjjjj");
    let commands = key(&mut m, Code::Enter);
    assert_eq!(m.mode, Mode::Detail(Subject::Task(6)));
    assert_eq!(commands, vec![Command::ReadLog { task_run: 6, job_run: 2, attempt: 1 }]);
    key(&mut m, Code::Esc);
    assert_eq!(m.mode, Mode::Normal);
    press(&mut m, "2");
    key(&mut m, Code::Enter);
    assert_eq!(m.mode, Mode::Detail(Subject::Job(6)));
}

#[test]
fn l_follows_the_log_and_rereads_it_each_second_while_the_task_runs() {
    let mut m = fixture();
    press(&mut m, "7");
    assert_eq!(press(&mut m, "l"), vec![Command::ReadLog { task_run: 6, job_run: 2, attempt: 1 }]);
    assert_eq!(m.mode, Mode::Log(6));
    let text = Ok("line 1\nline 2\n".to_string());
    update(&mut m, Msg::LogLoaded { task_run: 6, attempt: 1, text });
    let tick = update(&mut m, Msg::Tick(NOW_MS + 1_000));
    assert!(tick.contains(&Command::ReadLog { task_run: 6, job_run: 2, attempt: 1 }), "{tick:?}");
    press(&mut m, "l");
    assert_eq!(m.mode, Mode::Normal);
    let tick = update(&mut m, Msg::Tick(NOW_MS + 2_000));
    assert_eq!(tick, vec![Command::Refresh], "no log read once it is closed");
}

#[test]
fn s_cycles_the_sort_column_and_capital_s_reverses() {
    let mut m = fixture();
    press(&mut m, "3s");
    assert_eq!(rows(&m)[..2], [9, 11], "by name: nightly.backup first");
    press(&mut m, "ssss");
    // by cost, cheapest first; the two summarize runs cost the most.
    assert_eq!(rows(&m).last(), Some(&7));
    press(&mut m, "S");
    assert_eq!(rows(&m).first(), Some(&7));
}

#[test]
fn a_new_job_run_is_loaded_and_its_events_keep_it_current() {
    let mut m = fixture();
    let mut started = EngineEvent::new(EventData::JobStarted(JobStart::New { params: Default::default() }), NOW_MS);
    (started.job, started.job_run) = (Some("nightly".into()), Some(7));
    assert_eq!(update(&mut m, Msg::Engine(started.clone())), vec![Command::LoadJobRun(7)]);
    let mut a = crate::tui::rows::TaskRun::pending(30, 7, "nightly", "backup", NOW_MS);
    a.state = TaskState::Queued;
    let b = crate::tui::rows::TaskRun::pending(31, 7, "nightly", "vacuum", NOW_MS);
    update(&mut m, Msg::JobRunLoaded(vec![a, b]));
    assert_eq!(m.jobs[&7].tasks, vec![30, 31]);
    let failure = AttemptFailure { reason: FailReason::ExitCode, exit_code: Some(4), signal: None, detail: None };
    let mut e = EngineEvent::new(EventData::TaskFailed(failure), NOW_MS + 500);
    (e.job, e.job_run, e.task, e.task_run, e.attempt) =
        (Some("nightly".into()), Some(7), Some("backup".into()), Some(30), Some(1));
    update(&mut m, Msg::Engine(e.clone()));
    let mut retry = e.clone();
    retry.data = EventData::TaskRetryScheduled { delay_ms: 5_000, next_attempt: 2 };
    update(&mut m, Msg::Engine(retry));
    assert_eq!(state(&m, 30), TaskState::Retrying);
    assert_eq!(m.tasks[&30].rec.not_before_ms, Some(NOW_MS + 5_500));
    assert_eq!(m.tasks[&30].rec.exit_code, Some(4));
    assert!(m.retrying.contains(&30));
    assert_eq!(update(&mut m, Msg::Engine(started)), Vec::<Command>::new(), "known: not loaded twice");
}

#[test]
fn costs_are_aggregated_by_job_task_queue_and_model() {
    let m = fixture();
    assert_eq!(m.cost.total, 183_400 + 2_100 + 12_300 + 152_000 + 41_000);
    assert_eq!(m.cost.by_model["claude-sonnet-4-5"], 183_400 + 152_000 + 41_000);
    assert_eq!(m.cost.by_queue["llm"], 183_400 + 152_000 + 41_000);
    assert_eq!(m.cost.by_task["report.summarize"], 183_400 + 152_000 + 41_000);
    assert_eq!(m.jobs[&2].rec.cost_usd_micros, 12_300 + 152_000 + 41_000);
    assert_eq!(m.burn_per_hour(), (12_300 + 152_000 + 41_000) * 6);
}

/// Attached to a server that already spent money: the snapshot's per-model figures fill the
/// "by model" table (they used to land under `unknown`), and events add to them.
#[test]
fn spending_before_attaching_is_filed_under_its_models() {
    use crate::engine::EngineSnapshot;
    use crate::model::cost::{ModelUsage, Usage};
    let mut rec = crate::report::TaskRunView::pending(1, 1, "j", "t", NOW_MS);
    rec.cost_usd_micros = 30_000;
    let usage = |usd, input| Usage { usd_micros: usd, input_tokens: input, cache_read_tokens: 5, ..Usage::default() };
    let by_model = vec![
        ModelUsage { model: Some("sonnet".into()), usage: usage(20_000, 100) },
        ModelUsage { model: Some("(none)".into()), usage: usage(10_000, 0) },
    ];
    let snapshot = EngineSnapshot { task_runs: vec![rec], by_model, ..EngineSnapshot::default() };
    let mut m = Model::new(snapshot, NOW_MS, "t", Vec::new());
    assert_eq!(m.cost.total, 30_000);
    assert_eq!(m.cost.by_model.get("sonnet"), Some(&20_000));
    assert_eq!(m.cost.by_model.get("(none)"), Some(&10_000));
    assert!(!m.cost.by_model.contains_key("unknown"));
    assert_eq!((m.cost.tokens.input_tokens, m.cost.tokens.cache_read_tokens), (100, 10));
    let usage = Usage { usd_micros: 1, cache_write_tokens: 7, ..Usage::default() };
    let mut e = EngineEvent::new(EventData::TaskCost { usage, model: None, unpriced: false }, NOW_MS);
    (e.job, e.job_run, e.task, e.task_run) = (Some("j".into()), Some(1), Some("t".into()), Some(1));
    m.apply(&e);
    assert_eq!(m.cost.by_model.get("(none)"), Some(&10_001), "a cost without a model is listed as `cost` lists it");
    assert_eq!(m.cost.tokens.cache_write_tokens, 7);
}

#[test]
fn a_warning_is_said_and_kept_for_the_detail_pane() {
    let mut m = fixture();
    let warning = EventData::TaskWarning { message: "cost = \"claude-json\": no agent result".into() };
    let mut e = EngineEvent::new(warning, NOW_MS);
    (e.job, e.job_run, e.task, e.task_run, e.attempt) =
        (Some("report".into()), Some(2), Some("parse".into()), Some(6), Some(1));
    m.apply(&e);
    assert_eq!(m.tasks[&6].warnings, vec![(1, "cost = \"claude-json\": no agent result".to_string())]);
    let status = m.status.clone().expect("said");
    assert!(status.error && status.text.contains("#6 report.parse: warning: cost"), "{}", status.text);
    press(&mut m, "3");
    m.prepare();
    let row = m.index[m.focus.index()].iter().position(|id| *id == 6).expect("row of task run 6");
    for _ in 0..row {
        press(&mut m, "j");
    }
    key(&mut m, Code::Enter);
    let screen = render_to_string(&m, 100, 30);
    assert!(screen.contains("warnings") && screen.contains("no agent result"), "{screen}");
}

#[test]
fn header_says_when_all_watched_runs_ended() {
    let mut m = fixture();
    assert!(!m.all_watched_ended());
    for id in [2, 4, 5] {
        let mut e = EngineEvent::new(EventData::JobSucceeded(JobEnd { cost_usd_micros: 0, reason: None }), NOW_MS);
        (e.job, e.job_run) = (Some("report".into()), Some(id));
        update(&mut m, Msg::Engine(e));
    }
    assert!(m.all_watched_ended());
    assert!(render_to_string(&m, 100, 30).contains("all runs ended — q to quit"));
}

#[test]
fn header_says_when_task_runs_wait_for_resources() {
    let mut m = fixture();
    assert!(!render_to_string(&m, 140, 30).contains("waiting for resources"));
    let failure = AttemptFailure {
        reason: FailReason::ResourceExhausted,
        exit_code: None,
        signal: None,
        detail: Some("cannot set up the attempt's pipes: Too many open files".into()),
    };
    let retry = EventData::TaskRetryScheduled { delay_ms: 500, next_attempt: 4 };
    for data in [EventData::TaskFailed(failure), retry] {
        let mut e = EngineEvent::new(data, NOW_MS);
        (e.job, e.job_run, e.task, e.task_run, e.attempt) =
            (Some("nightly".into()), Some(4), Some("backup".into()), Some(11), Some(3));
        update(&mut m, Msg::Engine(e));
    }
    assert_eq!(m.waiting_for_resources(), 1);
    assert!(render_to_string(&m, 140, 30).contains("⚠ 1 waiting for resources"));
}

#[test]
fn the_log_tail_is_cut_at_a_line_start_and_sanitized() {
    let dir = crate::state_dir::private_tempdir();
    let path = dir.path().join("1.1.log");
    let mut text = "x".repeat(100);
    text.push_str("\nfirst whole line\nevil \x1b[2J line\n");
    std::fs::write(&path, text).expect("write");
    let tail = super::read_tail(dir.path(), std::path::Path::new("1.1.log"), 50).expect("read");
    assert_eq!(tail, "first whole line\nevil ^[[2J line\n");
    assert!(super::read_tail(dir.path(), std::path::Path::new("none.log"), 50).is_err());
}

#[test]
fn a_hundred_thousand_task_runs_render_every_view() {
    let m = fixture_with(100_000);
    assert_eq!(m.tasks.len(), 100_000);
    let timings = render_all_views_once(&m, 120, 40);
    assert_eq!(timings.len(), View::ALL.len());
}

// ---- snapshots ---------------------------------------------------------------------------

fn snapshot_of(keys: &str) -> String {
    let mut m = fixture();
    press(&mut m, keys);
    render_to_string(&m, 100, 30)
}

#[test]
fn snapshot_queues() {
    insta::assert_snapshot!("queues", snapshot_of("1"));
}

#[test]
fn snapshot_jobs() {
    insta::assert_snapshot!("jobs", snapshot_of("2"));
}

#[test]
fn snapshot_tasks() {
    insta::assert_snapshot!("tasks", snapshot_of("3"));
}

#[test]
fn snapshot_retries() {
    insta::assert_snapshot!("retries", snapshot_of("4"));
}

#[test]
fn snapshot_dead_letters() {
    insta::assert_snapshot!("dead_letters", snapshot_of("5"));
}

#[test]
fn snapshot_cost() {
    insta::assert_snapshot!("cost", snapshot_of("6"));
}

#[test]
fn snapshot_workers() {
    insta::assert_snapshot!("workers", snapshot_of("7"));
}

#[test]
fn snapshot_schedules() {
    insta::assert_snapshot!("schedules", snapshot_of("8"));
}

/// A fire seen as an event moves the last fire time; the next one follows the clock.
#[test]
fn a_schedule_fire_event_updates_the_schedules_view() {
    let mut m = fixture();
    let row = |m: &Model| m.schedules.iter().find(|r| r.job == "nightly").cloned().expect("nightly row");
    let next = m.next_fire(&row(&m)).expect("a next fire time");
    assert_eq!(crate::engine::rfc3339_ms(next), "2026-11-19T01:00:00.000Z", "02:00 in Berlin is 01:00Z in winter");
    let skipped = EventData::ScheduleSkipped { scheduled_for_ms: next, reason: "a run is active".into() };
    let mut e = EngineEvent::new(skipped, next + 5);
    e.job = Some("nightly".into());
    update(&mut m, Msg::Engine(e));
    update(&mut m, Msg::Tick(next + 10));
    assert_eq!((row(&m).last_ms, row(&m).last_skipped), (Some(next), true));
    assert_eq!(m.next_fire(&row(&m)), Some(next + 24 * 3_600_000));
    assert!(m.schedules.iter().all(|r| r.job != "report"), "a job without a schedule has no row");
}

/// With no instance running, the keys that would change something say so and change nothing;
/// `q` leaves at once even though the store shows running task runs.
#[test]
fn read_only_refuses_commands_and_quits_without_asking() {
    let mut m = fixture();
    m.session = super::Session::ReadOnly;
    for (view, keys) in [("5", "r"), ("5", "c"), ("1", "p"), ("3", "a"), ("2", "r"), ("2", "R")] {
        press(&mut m, view);
        assert!(press(&mut m, keys).is_empty(), "{keys} in view {view}");
        assert_eq!(m.status.as_ref().map(|s| (s.text.as_str(), s.error)), Some((crate::engine::READ_ONLY, true)));
    }
    assert_eq!(state(&m, 9), TaskState::Dead, "nothing optimistic");
    assert!(!m.queues["default"].paused);
    assert!(m.count(TaskState::Running) > 0);
    assert_eq!(press(&mut m, "q"), vec![Command::Quit]);
    let screen = render_to_string(&m, 100, 30);
    assert!(screen.lines().next().is_some_and(|l| l.contains("read-only: no instance running")), "{screen}");
}

#[test]
fn snapshot_help() {
    insta::assert_snapshot!("help", snapshot_of("?"));
}

#[test]
fn snapshot_job_detail() {
    let mut m = fixture();
    press(&mut m, "2jjjj");
    key(&mut m, Code::Enter);
    insta::assert_snapshot!("job_detail", render_to_string(&m, 100, 30));
}

#[test]
fn snapshot_task_detail_with_log_tail() {
    let mut m = fixture();
    press(&mut m, "4");
    key(&mut m, Code::Enter);
    let log = "rsync: connecting to backup.internal\nrsync: host unreachable (113)\n".to_string();
    update(&mut m, Msg::LogLoaded { task_run: 11, attempt: 1, text: Ok(log) });
    insta::assert_snapshot!("task_detail", render_to_string(&m, 100, 30));
}

#[test]
fn snapshot_confirm_and_filter_at_80x24() {
    let mut m = fixture();
    press(&mut m, "3/report");
    insta::assert_snapshot!("tasks_filter_80x24", render_to_string(&m, 80, 24));
    key(&mut m, Code::Enter);
    press(&mut m, "q");
    insta::assert_snapshot!("quit_confirm_80x24", render_to_string(&m, 80, 24));
}

/// `cargo test --release --lib tui::tests::render_bench -- --ignored --nocapture`: each view
/// drawn with 100k task runs must take well under 10 ms; so must a rebuild of the Tasks rows.
#[test]
#[ignore = "timing; run in release"]
fn render_bench() {
    use std::time::Instant;
    let built = Instant::now();
    let mut m = fixture_with(100_000);
    println!("fixture_with(100_000): {:?}", built.elapsed());
    for (name, took) in render_all_views_once(&m, 200, 60) {
        println!("draw {name:<13} {took:?}");
        if !cfg!(debug_assertions) {
            assert!(took.as_millis() < 10, "{name} took {took:?}");
        }
    }
    press(&mut m, "3");
    let mut e = EngineEvent::new(EventData::TaskProgress { message: "step 2/3".into() }, NOW_MS);
    (e.job, e.job_run, e.task, e.task_run) = (Some("report".into()), Some(1), Some("fetch".into()), Some(7));
    let started = Instant::now();
    for _ in 0..1_000 {
        m.apply(&e);
    }
    println!("apply one event: {:?}", started.elapsed() / 1_000);
    let started = Instant::now();
    m.prepare();
    println!("rebuild Tasks rows (100k, by id): {:?}", started.elapsed());
    press(&mut m, "sssss");
    m.invalidate();
    let started = Instant::now();
    m.prepare();
    println!("rebuild Tasks rows (100k, by cost): {:?}", started.elapsed());
    press(&mut m, "/dead");
    m.invalidate();
    let started = Instant::now();
    m.prepare();
    println!("rebuild Tasks rows (100k, filter dead): {:?}, {} rows", started.elapsed(), m.len());
}

#[test]
fn a_approves_the_selected_waiting_task_with_its_signal() {
    let mut m = fixture();
    let job = m.tasks[&9].rec.job.clone();
    let task = m.tasks[&9].rec.task.clone();
    m.set_state(9, TaskState::Waiting);
    let shape = m.shapes.get_mut(&job).and_then(|j| j.tasks.iter_mut().find(|t| t.name == task)).expect("shape");
    shape.wait_for = Some("approval".into());
    press(&mut m, "3");
    let at = rows(&m).iter().position(|&id| id == 9).expect("task 9 listed");
    press(&mut m, &"j".repeat(at));
    assert_eq!(press(&mut m, "a"), vec![Command::Signal { task_run: 9, name: "approval".into() }]);
    let top = if rows(&m)[0] == 9 { "gj" } else { "g" };
    press(&mut m, top);
    assert!(press(&mut m, "a").is_empty(), "a on a task that does not wait sends nothing");
    let said = m.status.as_ref().map(|s| s.text.as_str()).unwrap_or_default();
    assert!(said.ends_with("only a waiting task run can be approved"), "{said}");
}

// ---- screenshot review: sparkline width, graph tree, bars, retry clock, approve footer ------

/// The last line of the screen: the keys of the footer.
fn footer_of(m: &Model) -> String {
    render_to_string(m, 120, 30).lines().last().unwrap_or_default().to_string()
}

/// The row of the Tasks table that shows task run `id`.
fn task_row(m: &Model, id: u64) -> String {
    let screen = render_to_string(m, 100, 30);
    screen.lines().find(|l| l.starts_with(&format!("│{id} "))).unwrap_or_default().to_string()
}

#[test]
fn the_cost_sparkline_fills_a_wide_box_up_to_the_current_minute() {
    let mut m = fixture();
    press(&mut m, "6");
    let screen = render_to_string(&m, 150, 40);
    let lines: Vec<&str> = screen.lines().collect();
    // 150 columns less the 34 of the totals, less the box's two borders: one minute a column.
    assert!(lines[3].contains("cost per minute, last 114m"), "{}", lines[3]);
    let bottom: Vec<char> = lines[5].chars().collect();
    assert_eq!(bottom.last(), Some(&'│'), "{}", lines[5]);
    assert_ne!(bottom[bottom.len() - 2], ' ', "the current minute is next to the right border: {}", lines[5]);
}

#[test]
fn cost_history_is_kept_longer_than_an_hour_for_wide_sparklines() {
    let mut m = fixture();
    update(&mut m, Msg::Tick(NOW_MS + 30 * 60_000));
    // All of the fixture's spend is within the last 89 minutes: a 114-minute box shows all of it.
    assert_eq!(m.cost_series(114).iter().sum::<u64>(), m.cost.total);
}

#[test]
fn the_task_graph_draws_siblings_as_a_tree() {
    use crate::engine::{JobShape, TaskShape};
    let mut m = fixture();
    let shape = |name: &str, needs: &[&str]| TaskShape {
        name: name.into(),
        needs: needs.iter().map(|n| (*n).to_string()).collect(),
        queue: "llm".into(),
        budget_usd_micros: None,
        wait_for: None,
        next: Vec::new(),
        join: None,
        fanned_out: false,
        compensated: false,
    };
    let tasks = vec![
        shape("plan", &[]),
        shape("security", &["plan"]),
        shape("style", &["plan"]),
        shape("tests", &["plan"]),
        shape("triage", &["security"]),
        shape("summary", &["security", "style", "tests"]),
        shape("lint", &[]),
    ];
    let runs = (tasks.iter().enumerate())
        .map(|(i, t)| crate::tui::rows::TaskRun::pending(40 + i as u64, 7, "review", &t.name, NOW_MS))
        .collect();
    m.shapes.insert(
        "review".into(),
        JobShape { name: "review".into(), budget_usd_micros: None, tasks, schedule: None, timezone: None },
    );
    update(&mut m, Msg::JobRunLoaded(runs));
    press(&mut m, "2g");
    key(&mut m, Code::Enter);
    assert_eq!(m.mode, Mode::Detail(Subject::Job(7)));
    let screen = render_to_string(&m, 100, 30);
    let graph: Vec<String> = (screen.lines().skip_while(|l| !l.contains("task graph")).skip(1))
        .filter_map(|l| {
            let (tree, rest) = l.split_at(l.find('●')? + '●'.len_utf8());
            Some(format!("{} {}", tree.trim_start_matches('│'), rest.split_whitespace().next()?))
        })
        .collect();
    assert_eq!(
        graph,
        [" ▸ ● plan", "   ├● security", "   │ └● triage", "   ├● style", "   └● tests", "     └● summary", "   ● lint"],
        "{screen}"
    );
    insta::assert_snapshot!("job_detail_tree", screen);
}

/// A full-height glyph on two adjacent rows draws one tall block: bars must leave a gap.
#[test]
fn progress_bars_on_adjacent_rows_stay_apart() {
    let jobs = snapshot_of("2");
    let j1 = jobs.lines().find(|l| l.starts_with("│j1 ")).unwrap_or_default();
    assert!(j1.contains("━━━━━━━━ 4/4"), "{j1}");
    assert!(!jobs.contains('█'), "{jobs}");
    let queues = snapshot_of("1");
    assert!(!queues.contains('█'), "{queues}");
    let cost = snapshot_of("6");
    let budgets: Vec<&str> = cost.lines().filter(|l| l.contains(" of $")).collect();
    assert_eq!(budgets.len(), 4, "{cost}");
    assert!(budgets.iter().all(|l| !l.contains('█')), "{cost}");
    assert!(budgets[1].contains(" ━━━━━━━━──"), "{}", budgets[1]);
}

#[test]
fn a_retrying_task_run_stops_counting_at_the_end_of_its_last_attempt() {
    let mut m = fixture();
    press(&mut m, "3");
    let before = task_row(&m, 11);
    assert!(before.contains("retrying") && before.contains(" 19.0s "), "{before}");
    update(&mut m, Msg::Tick(NOW_MS + 30_000));
    assert_eq!(task_row(&m, 11), before, "no clock runs between attempts");
    press(&mut m, "4");
    key(&mut m, Code::Enter);
    let detail = render_to_string(&m, 100, 30);
    assert!(detail.contains(" duration  19.0s"), "{detail}");
    assert!(detail.contains("exit code 1  19.0s"), "the attempt line too: {detail}");
}

#[test]
fn a_retrying_task_run_read_without_its_attempt_end_shows_no_running_clock() {
    let mut m = fixture();
    // As a snapshot holds it: the task run has not ended, and the end of its attempt is not in it.
    let mut rec = crate::tui::rows::TaskRun::pending(40, 7, "nightly", "backup", NOW_MS - 300_000);
    (rec.state, rec.attempt, rec.started_at_ms) = (TaskState::Retrying, 1, Some(NOW_MS - 290_000));
    (rec.not_before_ms, rec.exit_code) = (Some(NOW_MS + 10_000), Some(1));
    rec.reason = Some(crate::model::FailReason::ExitCode);
    update(&mut m, Msg::JobRunLoaded(vec![rec]));
    press(&mut m, "3");
    let before = task_row(&m, 40);
    assert!(before.contains("retrying") && before.contains(" ? "), "{before}");
    update(&mut m, Msg::Tick(NOW_MS + 5_000));
    assert_eq!(task_row(&m, 40), before);
}

#[test]
fn the_footer_offers_a_approve_only_on_a_waiting_task() {
    let mut m = fixture();
    let shape = m.shapes.get_mut("nightly").and_then(|j| j.tasks.iter_mut().find(|t| t.name == "backup"));
    shape.expect("shape").wait_for = Some("approval".into());
    m.set_state(9, TaskState::Waiting);
    press(&mut m, "3");
    assert!(!footer_of(&m).contains("a approve"), "task run 1 does not wait: {}", footer_of(&m));
    let at = rows(&m).iter().position(|&id| id == 9).expect("task 9 listed");
    press(&mut m, &"j".repeat(at));
    assert!(footer_of(&m).contains(" a approve "), "{}", footer_of(&m));
    key(&mut m, Code::Enter);
    assert!(footer_of(&m).contains(" a approve "), "in its detail too: {}", footer_of(&m));
    key(&mut m, Code::Esc);
    press(&mut m, "2");
    assert!(!footer_of(&m).contains("a approve"), "Jobs rows are job runs: {}", footer_of(&m));
}

#[test]
fn r_on_something_with_nothing_to_retry_changes_nothing_and_says_why() {
    let mut m = fixture();
    let done: Vec<u64> =
        m.jobs.values().filter(|j| j.rec.state == crate::model::JobState::Succeeded).map(|j| j.rec.id).collect();
    let Some(&j) = done.first() else { panic!("the fixture has a succeeded job run") };
    press(&mut m, "2");
    let at = rows(&m).iter().position(|&id| id == j).expect("listed");
    press(&mut m, &"j".repeat(at));
    assert!(press(&mut m, "r").is_empty(), "nothing is sent");
    assert_eq!(m.jobs[&j].rec.state, crate::model::JobState::Succeeded, "and nothing shows as running");
    let said = m.status.as_ref().map(|s| s.text.clone()).unwrap_or_default();
    assert_eq!(said, format!("job run j{j} has no dead or cancelled task runs to retry"));
}

#[test]
fn a_refused_job_retry_puts_the_job_run_back_as_it_was() {
    let mut m = fixture();
    press(&mut m, "2");
    let failed: Vec<u64> = rows(&m)
        .into_iter()
        .filter(|id| m.jobs[id].tasks.iter().any(|t| m.tasks[t].rec.state.is_retryable()))
        .collect();
    let Some(&j) = failed.first() else { panic!("the fixture has a job run with a dead letter") };
    let before = (m.jobs[&j].rec.state, m.jobs[&j].rec.ended_at_ms);
    let at = rows(&m).iter().position(|&id| id == j).expect("listed");
    press(&mut m, &"j".repeat(at));
    assert_eq!(press(&mut m, "r"), vec![Command::Retry(Target::JobRun(j))]);
    update(&mut m, Msg::Done { command: Command::Retry(Target::JobRun(j)), result: Err("refused".into()) });
    assert_eq!((m.jobs[&j].rec.state, m.jobs[&j].rec.ended_at_ms), before);
}

#[test]
fn keys_in_a_detail_pane_act_on_the_task_it_shows_even_after_its_row_left_the_list() {
    let mut m = fixture();
    press(&mut m, "5");
    assert_eq!(rows(&m), vec![9]);
    key(&mut m, Code::Enter);
    assert_eq!(m.mode, Mode::Detail(Subject::Task(9)));
    // The dead letter leaves the list (retried elsewhere, say) while its pane stays open.
    m.set_state(9, TaskState::Running);
    m.prepare();
    assert_eq!(press(&mut m, "c"), Vec::<Command>::new(), "running: asks first");
    assert_eq!(press(&mut m, "y"), vec![Command::Cancel(Target::TaskRun(9))], "the task the pane shows");
}

#[test]
fn brackets_in_the_log_view_show_earlier_attempts_which_are_not_reread() {
    let mut m = fixture();
    m.tasks.get_mut(&6).expect("task 6").rec.attempt = 3;
    press(&mut m, "7");
    assert_eq!(press(&mut m, "l"), vec![Command::ReadLog { task_run: 6, job_run: 2, attempt: 3 }]);
    update(&mut m, Msg::LogLoaded { task_run: 6, attempt: 3, text: Ok("third\n".into()) });
    assert_eq!(press(&mut m, "["), vec![Command::ReadLog { task_run: 6, job_run: 2, attempt: 2 }]);
    update(&mut m, Msg::LogLoaded { task_run: 6, attempt: 2, text: Ok("second\n".into()) });
    let reads = press(&mut m, "[[");
    assert_eq!(reads.last(), Some(&Command::ReadLog { task_run: 6, job_run: 2, attempt: 1 }), "stops at 1: {reads:?}");
    update(&mut m, Msg::LogLoaded { task_run: 6, attempt: 1, text: Ok("first\n".into()) });
    let tick = update(&mut m, Msg::Tick(NOW_MS + 1_000));
    assert_eq!(tick, vec![Command::Refresh], "an earlier attempt's log is complete: not read again");
    press(&mut m, "]]");
    assert_eq!(m.log.as_ref().and_then(|l| l.pinned), None, "back on the latest, which is followed again");
    let tick = update(&mut m, Msg::Tick(NOW_MS + 2_000));
    assert!(tick.contains(&Command::ReadLog { task_run: 6, job_run: 2, attempt: 3 }), "{tick:?}");
}

/// One task with several runs in a job run (SPEC §2.2): each row names its iteration or item,
/// as the events say, with the labels `tasks` and the headless lines use.
#[test]
fn task_runs_of_one_task_are_labelled_by_iteration_and_item() {
    let mut m = fixture();
    let queued = || EngineEvent::new(EventData::TaskQueued { priority: 50, series_start: None }, NOW_MS);
    let mut second = queued();
    second.instance = Some(Instance { iteration: 2, ..Instance::FIRST });
    (second.job, second.job_run, second.task, second.task_run) =
        (Some("report".into()), Some(5), Some("parse".into()), Some(40));
    let mut item = queued();
    item.instance = Some(Instance { item_index: Some(3), ..Instance::FIRST });
    (item.job, item.job_run, item.task, item.task_run) =
        (Some("report".into()), Some(5), Some("fetch".into()), Some(41));
    update(&mut m, Msg::Engine(second));
    update(&mut m, Msg::Engine(item));
    press(&mut m, "3");
    assert!(task_row(&m, 40).contains(" parse#2 "), "{}", task_row(&m, 40));
    assert!(task_row(&m, 41).contains(" fetch[3] "), "{}", task_row(&m, 41));
    assert!(task_row(&m, 14).contains(" parse "), "a first run keeps its plain name: {}", task_row(&m, 14));
}

#[test]
fn in_a_cluster_the_live_nodes_labels_decide_what_no_node_can_run() {
    use crate::engine::{EngineSnapshot, NodeStatus};
    let mut queued = crate::report::TaskRunView::pending(1, 1, "train", "fit", NOW_MS);
    (queued.state, queued.requires) = (TaskState::Queued, vec!["gpu".into()]);
    let snapshot =
        EngineSnapshot { task_runs: vec![queued], node_labels: Some(Vec::new()), ..EngineSnapshot::default() };
    let mut m = Model::new(snapshot, NOW_MS, "t", Vec::new());
    assert_eq!(m.queues["default"].blocked, 1, "this node has no gpu, and knows no other");
    let node = |name: &str, labels: &[&str], live| NodeStatus {
        name: name.into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        heartbeat_age_ms: 1_000,
        live,
        running: Vec::new(),
    };
    update(&mut m, Msg::Nodes(vec![node("a", &[], true), node("box", &["gpu"], true)]));
    assert_eq!(m.queues["default"].blocked, 0, "another live node has gpu: it waits its turn there");
    assert_eq!(m.blocked_reason(&m.tasks[&1].rec), None);
    update(&mut m, Msg::Nodes(vec![node("a", &[], true), node("box", &["gpu"], false)]));
    assert_eq!(m.queues["default"].blocked, 1, "the gpu node's lease ran out");
    assert_eq!(
        m.blocked_reason(&m.tasks[&1].rec).as_deref(),
        Some("requires [gpu]: no node has it — start one with --label gpu")
    );
    press(&mut m, "1");
    let screen = render_to_string(&m, 120, 20);
    assert!(screen.contains("1 blocked"), "{screen}");
    // Only the live nodes' labels count, whichever node this view is attached to.
    update(&mut m, Msg::Nodes(vec![node("a", &["gpu"], false), node("box", &["gpu"], true)]));
    assert_eq!(m.queues["default"].blocked, 0);
}

#[test]
fn task_runs_no_node_can_run_are_counted_per_queue_and_said_in_the_detail() {
    use crate::engine::EngineSnapshot;
    let mut queued = crate::report::TaskRunView::pending(1, 1, "train", "fit", NOW_MS);
    (queued.state, queued.requires) = (TaskState::Queued, vec!["gpu".into()]);
    let unchanged = queued.clone();
    let mut anywhere = crate::report::TaskRunView::pending(2, 1, "train", "prep", NOW_MS);
    anywhere.state = TaskState::Queued;
    let snapshot = EngineSnapshot {
        task_runs: vec![queued, anywhere],
        node_labels: Some(vec!["eu".into()]),
        ..EngineSnapshot::default()
    };
    let mut m = Model::new(snapshot, NOW_MS, "t", Vec::new());
    assert_eq!(m.queues["default"].blocked, 1);
    // A task run known from events only learns what it requires from `task.blocked`.
    let event = |name, id: u64| {
        let mut e = EngineEvent::new(name, NOW_MS);
        (e.job, e.job_run, e.task, e.task_run, e.queue) =
            (Some("train".into()), Some(1), Some("eval".into()), Some(id), Some("default".into()));
        e
    };
    m.apply(&event(EventData::TaskQueued { priority: 50, series_start: None }, 3));
    assert_eq!(m.queues["default"].blocked, 1);
    let labels = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    m.apply(&event(EventData::TaskBlocked { requires: labels(&["gpu", "eu"]), node_labels: labels(&["eu"]) }, 3));
    assert_eq!(m.queues["default"].blocked, 2);
    assert_eq!(
        m.blocked_reason(&m.tasks[&3].rec).as_deref(),
        Some("requires [gpu, eu]: no node has it — start one with --label gpu")
    );
    m.apply(&event(EventData::TaskCancelled { from_dead: false }, 3));
    assert_eq!(m.queues["default"].blocked, 1, "only queued ones count");
    press(&mut m, "1");
    let screen = render_to_string(&m, 120, 20);
    assert!(screen.contains("1 blocked") && screen.contains("labels eu"), "{screen}");
    // With no node running (a read-only view), nothing is called blocked.
    let offline = EngineSnapshot { task_runs: vec![unchanged], ..EngineSnapshot::default() };
    assert_eq!(Model::new(offline, NOW_MS, "t", Vec::new()).queues["default"].blocked, 0);
}
