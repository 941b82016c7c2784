//! The task graph of a job run's detail with workflow control (SPEC §2.2): transitions, back
//! edges, joins, several task runs per task as one node that `Enter` expands, tasks not reached,
//! and `r` on a failed job run. On `fixture_control` (fixed clock).

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::Color;

use crate::config::TransitionOn;
use crate::engine::{EngineEvent, EventData, Target};
use crate::model::TaskState;

use super::fixture::{NOW_MS, fixture_control};
use super::keymap::{Code, Key};
use super::model::{Mode, Model, Subject};
use super::rows::ReachedBy;
use super::update::{Command, Msg, update};
use super::{render_to_string, view};

fn press(model: &mut Model, keys: &str) -> Vec<Command> {
    keys.chars().flat_map(|c| update(model, Msg::Key(Key::ch(c)))).collect()
}

fn key(model: &mut Model, code: Code) -> Vec<Command> {
    update(model, Msg::Key(Key::code(code)))
}

/// The fixture with job run `j`'s detail open.
fn detail_of(j: u64) -> Model {
    let mut m = fixture_control();
    press(&mut m, "2g");
    let at = m.index[m.focus.index()].iter().position(|&id| id == j).expect("job run listed");
    press(&mut m, &"j".repeat(at));
    key(&mut m, Code::Enter);
    assert_eq!(m.mode, Mode::Detail(Subject::Job(j)));
    m
}

/// The graph's lines of a screen, from its heading to the box's bottom, trimmed.
fn graph(screen: &str) -> Vec<String> {
    screen
        .lines()
        .skip_while(|l| !l.contains("task graph"))
        .skip(1)
        .map(|l| {
            let inside = l.strip_prefix('│').and_then(|l| l.trim_end().strip_suffix('│')).unwrap_or(l);
            inside.trim().to_string()
        })
        .take_while(|l| !l.is_empty())
        .collect()
}

/// Moves the cursor to the graph line that contains `text`.
fn cursor_to(m: &mut Model, text: &str) {
    press(m, "g");
    for _ in 0..64 {
        let screen = render_to_string(m, 120, 40);
        if graph(&screen).iter().any(|l| l.starts_with('▸') && l.contains(text)) {
            return;
        }
        press(m, "j");
    }
    panic!("no graph line with {text}");
}

#[test]
fn a_review_loop_is_one_node_per_task_with_its_back_edge_and_what_was_not_reached() {
    let m = detail_of(7);
    let screen = render_to_string(&m, 140, 30);
    let lines = graph(&screen);
    let names: Vec<String> = lines.iter().map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(
        names,
        ["▸ ● write succeeded", "└● review ×3 ▸", "├● revise ×2 ▸", "│ └↺ review loops", "└● ship not reached",],
        "{screen}"
    );
    assert!(lines[1].contains("2✓ 1⟳") && lines[1].contains("← write on success"), "{}", lines[1]);
    assert!(
        lines[2].contains("2✓") && lines[2].contains("on success if outputs.verdict != 'approved'"),
        "{}",
        lines[2]
    );
    assert!(lines[3].contains("loops back on success"), "{}", lines[3]);
    assert!(lines[4].contains("← review on success if outputs.verdict == 'approved'"), "{}", lines[4]);
    insta::assert_snapshot!("job_detail_review_loop", screen);
}

#[test]
fn a_task_not_reached_is_dimmed() {
    let m = detail_of(7);
    let mut terminal = Terminal::new(TestBackend::new(120, 30)).expect("test backend");
    terminal.draw(|f| view::view(&m, f)).expect("draw");
    let buffer = terminal.backend().buffer();
    let area = buffer.area;
    let find = |word: &str| {
        (0..area.height).find_map(|y| {
            let line: String = (0..area.width).map(|x| buffer[(x, y)].symbol().to_string()).collect();
            let at = line.find(word)?;
            Some((line[..at].chars().count() as u16, y))
        })
    };
    let (x, y) = find("ship").expect("ship drawn");
    assert_eq!(buffer[(x, y)].fg, Color::DarkGray, "not reached: dim");
    let (x, y) = find("write").expect("write drawn");
    assert_ne!(buffer[(x, y)].fg, Color::DarkGray, "a task with a run is not dim");
}

#[test]
fn enter_expands_a_fan_out_into_its_items_and_enter_or_esc_collapses_it() {
    let mut m = detail_of(8);
    let collapsed = render_to_string(&m, 120, 40);
    let fetch = graph(&collapsed).into_iter().find(|l| l.contains("fetch")).expect("fetch line");
    assert!(fetch.contains("fetch ×12 ▸") && fetch.contains("9✓ 2⟳ 1✗"), "{fetch}");
    insta::assert_snapshot!("job_detail_fan_out", collapsed);

    cursor_to(&mut m, "fetch ×12");
    key(&mut m, Code::Enter);
    let expanded = render_to_string(&m, 120, 40);
    let items: Vec<String> = graph(&expanded).into_iter().filter(|l| l.contains("fetch[")).collect();
    assert_eq!(items.len(), 12, "{expanded}");
    assert!(items[4].contains("fetch[4]") && items[4].contains("dead"), "{}", items[4]);
    assert!(graph(&expanded).iter().any(|l| l.contains("fetch ×12 ▾")), "{expanded}");
    insta::assert_snapshot!("job_detail_fan_out_expanded", expanded);

    // Enter on an item folds its task back, the cursor on the task's node.
    press(&mut m, "jjj");
    key(&mut m, Code::Enter);
    let again = render_to_string(&m, 120, 40);
    assert_eq!(graph(&again).iter().filter(|l| l.contains("fetch[")).count(), 0, "{again}");
    assert!(graph(&again).iter().any(|l| l.starts_with('▸') && l.contains("fetch ×12")), "{again}");

    // Esc folds it too, and only then leaves the detail.
    key(&mut m, Code::Enter);
    key(&mut m, Code::Esc);
    assert_eq!(m.mode, Mode::Detail(Subject::Job(8)));
    assert!(m.expanded.is_empty());
    key(&mut m, Code::Esc);
    assert_eq!(m.mode, Mode::Normal);
}

#[test]
fn a_saga_shows_its_compensations_as_undo_runs() {
    let mut m = detail_of(9);
    let screen = render_to_string(&m, 120, 30);
    let deploy = graph(&screen).into_iter().find(|l| l.contains("deploy")).expect("deploy line");
    assert!(deploy.contains("deploy ×1 ▸") && deploy.contains("1✓ undo 1✓"), "{deploy}");
    cursor_to(&mut m, "deploy ×1");
    key(&mut m, Code::Enter);
    let screen = render_to_string(&m, 120, 30);
    let lines = graph(&screen);
    assert!(lines.iter().any(|l| l.contains("deploy (undo)") && l.contains("#303")), "{screen}");
    assert!(lines.iter().any(|l| l.contains("deploy ") && l.contains("#301")), "{screen}");
    insta::assert_snapshot!("job_detail_saga_expanded", screen);
}

#[test]
fn r_on_a_failed_job_run_retries_what_failed_and_nothing_else() {
    let mut m = detail_of(9);
    assert_eq!(press(&mut m, "r"), vec![Command::Retry(Target::JobRun(9))]);
    assert_eq!(m.tasks[&302].rec.state, TaskState::Queued, "the dead announce, shown queued at once");
    for id in [300, 301, 303, 304] {
        assert_eq!(m.tasks[&id].rec.state, TaskState::Succeeded, "#{id} untouched");
    }
    assert_eq!(m.jobs[&9].rec.state, crate::model::JobState::Running);
    // A fan-out with one dead item: the item, not its task's other runs.
    let mut m = detail_of(8);
    assert_eq!(press(&mut m, "r"), vec![Command::Retry(Target::JobRun(8))]);
    assert_eq!(m.tasks[&205].rec.state, TaskState::Queued, "fetch[4]");
    assert_eq!(m.tasks[&211].rec.state, TaskState::Running, "fetch[10] goes on");
}

/// A failure a transition handled (`task.handled`) ends the run `failed`: counted, drawn, and
/// in the header (the counters once had no slot for it).
#[test]
fn a_handled_failure_is_counted_and_drawn_as_failed() {
    let mut m = detail_of(7);
    let mut e = EngineEvent::new(EventData::TaskHandled, NOW_MS);
    (e.job, e.job_run, e.task, e.task_run) = (Some("review".into()), Some(7), Some("review".into()), Some(105));
    update(&mut m, Msg::Engine(e));
    assert_eq!(m.tasks[&105].rec.state, TaskState::Failed);
    assert_eq!(m.count(TaskState::Failed), 1);
    let screen = render_to_string(&m, 120, 30);
    assert!(screen.lines().nth(1).is_some_and(|l| l.contains("1 failed")), "{screen}");
    let review = graph(&screen).into_iter().find(|l| l.contains("review ×3")).expect("review node");
    assert!(review.contains("2✓ 1✗"), "{review}");
}

/// SPEC §2.2's 10,000 items: one node collapsed; expanded, `G` brings the last item into sight.
#[test]
fn ten_thousand_items_are_one_node_and_the_cursor_keeps_the_last_in_sight() {
    let mut m = detail_of(8);
    let base = 1_000_000u64;
    let runs: Vec<super::rows::TaskRun> = (0..10_000u32)
        .map(|item| {
            let mut r = super::rows::TaskRun::pending(base + u64::from(item), 8, "crawl", "fetch", NOW_MS);
            (r.item_index, r.state) = (Some(12 + item), TaskState::Succeeded);
            r
        })
        .collect();
    m.insert_tasks(runs);
    let screen = render_to_string(&m, 120, 30);
    assert!(graph(&screen).iter().any(|l| l.contains("fetch ×10012") && l.contains("10009✓ 2⟳ 1✗")), "{screen}");
    cursor_to(&mut m, "fetch ×10012");
    key(&mut m, Code::Enter);
    press(&mut m, "G");
    // The graph's heading has scrolled away: look at the screen's lines.
    let screen = render_to_string(&m, 120, 30);
    assert!(screen.lines().any(|l| l.contains('▸') && l.contains("alert")), "{screen}");
    assert!(screen.lines().any(|l| l.contains("fetch[10011]")), "{screen}");
}

/// A job run of a workflow other than the one loaded: its task runs one a line, named by
/// instance; `j`/`k` scroll as in any detail.
#[test]
fn without_its_jobs_shape_a_job_run_lists_its_runs_and_scrolls() {
    let mut m = detail_of(8);
    m.shapes.remove("crawl");
    let screen = render_to_string(&m, 120, 30);
    let lines = graph(&screen);
    assert!(lines.iter().any(|l| l.contains("fetch[4]") && l.contains("dead")), "{screen}");
    assert_eq!(lines.len(), 13, "{screen}");
    press(&mut m, "j");
    assert_eq!(m.detail_scroll, 1);
}

/// A task run's detail says how it was reached, as `show jN` does: the task run it came from
/// and the `on` that matched (the wire's `reached_by`).
#[test]
fn a_task_runs_detail_says_which_transition_reached_it() {
    let mut m = fixture_control();
    m.mode = Mode::Detail(Subject::Task(105));
    let screen = render_to_string(&m, 100, 24);
    assert!(screen.contains("reached   ← #104 revise#2 (success)"), "{screen}");
    insta::assert_snapshot!("task_detail_reached_by", screen);
    m.mode = Mode::Detail(Subject::Task(100));
    assert!(!render_to_string(&m, 100, 24).contains("reached"), "an entry task was reached by nothing");
}

/// Live, `transition.fired` comes before the new run's own events: the detail still says
/// where it came from.
#[test]
fn a_transition_seen_live_reaches_the_run_it_started() {
    let mut m = fixture_control();
    let mut fired = EngineEvent::new(
        EventData::TransitionFired { from_task_run: 105, on: TransitionOn::Success, to: "ship".into() },
        NOW_MS,
    );
    (fired.job, fired.job_run, fired.task, fired.task_run) =
        (Some("review".into()), Some(7), Some("review".into()), Some(200));
    let mut queued = EngineEvent::new(EventData::TaskQueued { priority: 50, series_start: None }, NOW_MS);
    (queued.job, queued.job_run, queued.task, queued.task_run) =
        (Some("review".into()), Some(7), Some("ship".into()), Some(200));
    update(&mut m, Msg::Engine(fired));
    update(&mut m, Msg::Engine(queued));
    assert_eq!(m.tasks[&200].rec.reached_by, Some(ReachedBy { from_task_run: 105, on: TransitionOn::Success }));
    m.mode = Mode::Detail(Subject::Task(200));
    let screen = render_to_string(&m, 100, 24);
    assert!(screen.contains("reached   ← #105 review#3 (success)"), "{screen}");
}
