//! Fixed models for snapshots, tests and the render bench: a fixed clock, a few jobs with task
//! runs in every state, costs, a retry, a dead letter and two workers.

use std::collections::BTreeMap;

use crate::config::TransitionOn;
use crate::engine::{
    AttemptFailure, CurrentAttempt, EngineEvent, EngineSnapshot, EventData, JobShape, QueueSnapshot, TaskShape,
    TransitionShape, WorkerSnapshot,
};
use crate::model::cost::Usage;
use crate::model::{FailReason, JobState, TaskState};
use crate::report::{JobRunView, TaskRunView};

use super::model::Model;
use super::rows::{JobRun, ReachedBy, TaskRun};

/// 2026-11-18T11:06:40Z: every fixture is drawn at this instant.
pub const NOW_MS: u64 = 1_795_000_000_000;
const S: u64 = 1_000;

fn shape(name: &str, budget: Option<u64>, tasks: &[(&str, &[&str], &str, Option<u64>)]) -> JobShape {
    JobShape {
        name: name.into(),
        budget_usd_micros: budget,
        schedule: None,
        timezone: None,
        tasks: tasks
            .iter()
            .map(|(t, needs, queue, budget)| TaskShape {
                name: (*t).into(),
                needs: needs.iter().map(|n| (*n).to_string()).collect(),
                queue: (*queue).into(),
                budget_usd_micros: *budget,
                wait_for: None,
                next: Vec::new(),
                join: None,
                fanned_out: false,
                compensated: false,
            })
            .collect(),
    }
}

/// `nightly` runs on a schedule in Berlin; `report` is started by hand.
fn shapes() -> Vec<JobShape> {
    let mut shapes = vec![
        shape(
            "report",
            Some(1_000_000),
            &[
                ("fetch", &[], "io", None),
                ("parse", &["fetch"], "default", None),
                ("summarize", &["parse"], "llm", Some(250_000)),
                ("publish", &["summarize"], "default", None),
            ],
        ),
        shape("nightly", None, &[("backup", &[], "default", None), ("vacuum", &["backup"], "default", None)]),
    ];
    shapes[1].schedule = Some("0 2 * * *".into());
    shapes[1].timezone = Some("Europe/Berlin".into());
    shapes
}

/// `nightly` last fired at 02:00 Berlin time today (01:00Z).
fn schedule_fires() -> BTreeMap<String, u64> {
    BTreeMap::from([("nightly".to_string(), NOW_MS - (10 * 3600 + 6 * 60 + 40) * S)])
}

fn job(id: u64, name: &str, state: JobState, created: u64, ended: Option<u64>, cost: u64) -> JobRunView {
    JobRunView {
        id,
        job: name.into(),
        params: BTreeMap::new(),
        state,
        reason: None,
        cost_usd_micros: cost,
        created_at_ms: created,
        ended_at_ms: ended,
    }
}

/// A task run in `state`; started/ended times are set to suit the state.
#[allow(clippy::too_many_arguments)]
fn task(id: u64, job_run: u64, job: &str, name: &str, queue: &str, state: TaskState, at: u64) -> TaskRunView {
    let mut r = TaskRunView::pending(id, job_run, job, name, at);
    r.queue = queue.into();
    r.state = state;
    if !matches!(state, TaskState::Pending | TaskState::Skipped | TaskState::Queued) {
        (r.attempt, r.attempts_in_series) = (1, 1);
        r.started_at_ms = Some(at + S);
    }
    if state.is_terminal() && state != TaskState::Pending {
        r.ended_at_ms = Some(at + 20 * S);
    }
    r
}

/// The fixture of the snapshots: every view has something to show.
pub fn fixture() -> Model {
    let ago = |s: u64| NOW_MS - s * S;
    let mut jr = vec![
        job(1, "report", JobState::Succeeded, ago(3_600), Some(ago(3_420)), 0),
        job(2, "report", JobState::Running, ago(300), None, 0),
        job(3, "nightly", JobState::Failed, ago(1_800), Some(ago(1_700)), 0),
        job(4, "nightly", JobState::Running, ago(120), None, 0),
        job(5, "report", JobState::Running, ago(60), None, 0),
        job(6, "report", JobState::Cancelled, ago(900), Some(ago(880)), 0),
    ];
    jr[2].reason = Some("task backup (#9) dead: exit_code".into());
    jr[0].params.insert("day".into(), "2026-11-17".into());
    use TaskState::*;
    let mut tr = vec![
        task(1, 1, "report", "fetch", "io", Succeeded, ago(3_600)),
        task(2, 1, "report", "parse", "default", Succeeded, ago(3_560)),
        task(3, 1, "report", "summarize", "llm", Succeeded, ago(3_520)),
        task(4, 1, "report", "publish", "default", Succeeded, ago(3_480)),
        task(5, 2, "report", "fetch", "io", Succeeded, ago(300)),
        task(6, 2, "report", "parse", "default", Running, ago(200)),
        task(7, 2, "report", "summarize", "llm", Running, ago(90)),
        task(8, 2, "report", "publish", "default", Pending, ago(300)),
        task(9, 3, "nightly", "backup", "default", Dead, ago(1_800)),
        task(10, 3, "nightly", "vacuum", "default", Skipped, ago(1_800)),
        task(11, 4, "nightly", "backup", "default", Retrying, ago(120)),
        task(12, 4, "nightly", "vacuum", "default", Pending, ago(120)),
        task(13, 5, "report", "fetch", "io", Queued, ago(60)),
        task(14, 5, "report", "parse", "default", Pending, ago(60)),
        task(15, 6, "report", "fetch", "io", Cancelled, ago(900)),
        task(16, 6, "report", "parse", "default", Skipped, ago(900)),
    ];
    let t = |tr: &mut Vec<TaskRunView>, id: u64| tr.iter().position(|t| t.id == id);
    if let Some(i) = t(&mut tr, 9) {
        let r = &mut tr[i];
        (r.attempt, r.max_attempts, r.exit_code, r.reason) = (3, 3, Some(2), Some(FailReason::ExitCode));
        r.detail = Some("pg_dump: connection refused".into());
        r.cost_usd_micros = 0;
    }
    if let Some(i) = t(&mut tr, 11) {
        let r = &mut tr[i];
        (r.attempt, r.exit_code, r.reason) = (1, Some(1), Some(FailReason::ExitCode));
        r.detail = Some("rsync: host unreachable".into());
        r.not_before_ms = Some(NOW_MS + 42 * S);
        r.ended_at_ms = None;
    }
    if let Some(i) = t(&mut tr, 15) {
        tr[i].reason = Some(FailReason::Cancelled);
    }
    for r in tr.iter_mut().filter(|r| r.job_run == 1) {
        r.outputs.insert("rows".into(), "1204".into());
    }
    let workers = vec![
        WorkerSnapshot {
            id: 0,
            current: Some(CurrentAttempt {
                task_run: 6,
                attempt: 1,
                started_ms: ago(199),
                last_activity_ms: ago(2),
                pid: Some(4242),
            }),
            restarts: 0,
        },
        WorkerSnapshot {
            id: 1,
            current: Some(CurrentAttempt {
                task_run: 7,
                attempt: 1,
                started_ms: ago(89),
                last_activity_ms: ago(75),
                pid: Some(4250),
            }),
            restarts: 1,
        },
    ];
    let queues = vec![
        QueueSnapshot {
            name: "default".into(),
            concurrency: 4,
            paused: false,
            ready: 0,
            running: 1,
            circuit_open_until_ms: None,
        },
        QueueSnapshot {
            name: "io".into(),
            concurrency: 2,
            paused: true,
            ready: 1,
            running: 0,
            circuit_open_until_ms: None,
        },
        QueueSnapshot {
            name: "llm".into(),
            concurrency: 1,
            paused: false,
            ready: 0,
            running: 1,
            circuit_open_until_ms: Some(NOW_MS + 150 * S),
        },
    ];
    // Every fixture run is in its first series of attempts.
    for t in &mut tr {
        t.attempts_in_series = t.attempt;
    }
    let snapshot = EngineSnapshot {
        job_runs: jr,
        task_runs: tr,
        queues,
        workers,
        jobs: shapes(),
        schedule_fires: schedule_fires(),
        by_model: Vec::new(),
        node_labels: Some(Vec::new()),
    };
    let mut model = Model::new(snapshot, NOW_MS, "examples/report.toml", vec![2, 4, 5]);
    for e in fixture_events(ago) {
        model.apply(&e);
    }
    model.prepare();
    model.changed = false;
    model
}

fn event(data: EventData, at: u64, job_run: u64, job: &str, task_run: u64, task: &str, queue: &str) -> EngineEvent {
    let mut e = EngineEvent::new(data, at);
    e.job = Some(job.into());
    e.job_run = Some(job_run);
    e.task = Some(task.into());
    e.task_run = Some(task_run);
    e.attempt = Some(1);
    e.queue = Some(queue.into());
    e
}

/// Costs with models, progress, a failure: the same events the engine would send.
fn fixture_events(ago: impl Fn(u64) -> u64) -> Vec<EngineEvent> {
    let cost = |at, jr, job: &str, tr, task: &str, q: &str, usd_micros: u64, model: &str| {
        let usage = Usage { usd_micros, input_tokens: 1200, output_tokens: 340, ..Usage::default() };
        event(EventData::TaskCost { usage, model: Some(model.into()), unpriced: false }, at, jr, job, tr, task, q)
    };
    let progress = |message: &str| EventData::TaskProgress { message: message.into() };
    vec![
        cost(ago(3_500), 1, "report", 3, "summarize", "llm", 183_400, "claude-sonnet-4-5"),
        cost(ago(3_470), 1, "report", 4, "publish", "default", 2_100, "claude-haiku-4-5"),
        cost(ago(240), 2, "report", 6, "parse", "default", 12_300, "claude-haiku-4-5"),
        cost(ago(50), 2, "report", 7, "summarize", "llm", 152_000, "claude-sonnet-4-5"),
        cost(ago(20), 2, "report", 7, "summarize", "llm", 41_000, "claude-sonnet-4-5"),
        event(progress("3/12 parsing page 3"), ago(5), 2, "report", 6, "parse", "default"),
        event(progress("drafting section 2"), ago(3), 2, "report", 7, "summarize", "llm"),
        // Task run 11's first attempt, seen live: it ran 19 s and waits 142 s for its retry.
        event(EventData::TaskStarted { priority: 50, pid: None }, ago(119), 4, "nightly", 11, "backup", "default"),
        event(
            EventData::TaskFailed(AttemptFailure {
                reason: FailReason::ExitCode,
                exit_code: Some(1),
                signal: None,
                detail: Some("rsync: host unreachable".into()),
            }),
            ago(100),
            4,
            "nightly",
            11,
            "backup",
            "default",
        ),
        event(
            EventData::TaskRetryScheduled { delay_ms: 142_000, next_attempt: 2 },
            ago(100),
            4,
            "nightly",
            11,
            "backup",
            "default",
        ),
    ]
}

/// `n` task runs over `n / 8` job runs of `report`-like jobs, in a deterministic mix of states:
/// the render bench's model.
pub fn fixture_with(n: u64) -> Model {
    const STATES: [TaskState; 16] = [
        TaskState::Succeeded,
        TaskState::Succeeded,
        TaskState::Succeeded,
        TaskState::Succeeded,
        TaskState::Succeeded,
        TaskState::Succeeded,
        TaskState::Running,
        TaskState::Queued,
        TaskState::Pending,
        TaskState::Pending,
        TaskState::Retrying,
        TaskState::Dead,
        TaskState::Cancelled,
        TaskState::Skipped,
        TaskState::Succeeded,
        TaskState::Queued,
    ];
    let names = ["fetch", "parse", "summarize", "publish", "fetch", "parse", "summarize", "publish"];
    let queues = ["io", "default", "llm", "default"];
    let jobs = n.div_ceil(8).max(1);
    let start = NOW_MS - 3_600 * S;
    let job_runs: Vec<JobRunView> = (1..=jobs)
        .map(|j| {
            let state = if j % 5 == 0 {
                JobState::Failed
            } else if j % 3 == 0 {
                JobState::Succeeded
            } else {
                JobState::Running
            };
            let created = start + j * 3_600 * S / jobs;
            job(j, "report", state, created, state.is_terminal().then_some(created + 30 * S), 0)
        })
        .collect();
    let task_runs: Vec<TaskRunView> = (1..=n)
        .map(|id| {
            let job_run = (id - 1) / 8 + 1;
            let i = ((id - 1) % 8) as usize;
            let state = STATES[(id as usize * 7) % STATES.len()];
            let created = start + job_run * 3_600 * S / jobs;
            let mut r = task(id, job_run, "report", names[i], queues[i % 4], state, created);
            r.cost_usd_micros = (id * 37) % 5_000;
            if state == TaskState::Retrying {
                r.not_before_ms = Some(NOW_MS + (id % 90) * S);
                r.reason = Some(FailReason::ExitCode);
                r.exit_code = Some(1);
            }
            if state == TaskState::Dead {
                r.reason = Some(FailReason::Timeout);
            }
            r
        })
        .collect();
    let workers = (0..8)
        .map(|id| WorkerSnapshot {
            id,
            current: Some(CurrentAttempt {
                task_run: 7 + id as u64 * 16,
                attempt: 1,
                started_ms: NOW_MS - 30 * S,
                last_activity_ms: NOW_MS - S,
                pid: Some(1000 + id as u32),
            }),
            restarts: 0,
        })
        .collect();
    let queues = ["default", "io", "llm"]
        .iter()
        .map(|q| QueueSnapshot {
            name: (*q).into(),
            concurrency: 4,
            paused: false,
            ready: 0,
            running: 0,
            circuit_open_until_ms: None,
        })
        .collect();
    let snapshot = EngineSnapshot {
        job_runs,
        task_runs,
        queues,
        workers,
        jobs: shapes(),
        schedule_fires: schedule_fires(),
        by_model: Vec::new(),
        node_labels: Some(Vec::new()),
    };
    Model::new(snapshot, NOW_MS, "bench", Vec::new())
}

/// A transition of a fixture shape: `(on, when, targets)`.
type Next<'a> = (&'a str, Option<&'a str>, &'a [&'a str]);

fn transitions(next: &[Next]) -> Vec<TransitionShape> {
    next.iter()
        .map(|(on, when, targets)| TransitionShape {
            on: (*on).into(),
            when: when.map(str::to_string),
            targets: targets.iter().map(|t| (*t).to_string()).collect(),
        })
        .collect()
}

/// [`fixture`] plus three job runs of workflow control (SPEC §2.2), with several task runs per
/// task: j7 a review loop in its third round, j8 a fan-out of 12 items in mixed states, j9 a
/// failed saga whose compensations ran.
pub fn fixture_control() -> Model {
    let mut model = fixture();
    let mut review = shape(
        "review",
        None,
        &[
            ("write", &[], "llm", None),
            ("review", &[], "llm", None),
            ("revise", &[], "llm", None),
            ("ship", &[], "default", None),
        ],
    );
    review.tasks[0].next = transitions(&[("success", None, &["review"])]);
    review.tasks[1].next = transitions(&[
        ("success", Some("outputs.verdict == 'approved'"), &["ship"]),
        ("success", Some("outputs.verdict != 'approved'"), &["revise"]),
    ]);
    review.tasks[2].next = transitions(&[("success", None, &["review"])]);
    let mut crawl = shape(
        "crawl",
        None,
        &[
            ("list", &[], "io", None),
            ("fetch", &["list"], "io", None),
            ("summarize", &["fetch"], "llm", None),
            ("alert", &[], "default", None),
        ],
    );
    crawl.tasks[0].next = transitions(&[("failure", None, &["alert"])]);
    crawl.tasks[1].next = transitions(&[("failure", None, &["alert"])]);
    crawl.tasks[1].fanned_out = true;
    crawl.tasks[3].join = Some("1".into());
    let mut release = shape(
        "release",
        None,
        &[
            ("create", &[], "default", None),
            ("deploy", &["create"], "default", None),
            ("announce", &["deploy"], "default", None),
        ],
    );
    release.tasks[0].compensated = true;
    release.tasks[1].compensated = true;
    for s in [review, crawl, release] {
        model.shapes.insert(s.name.clone(), s);
    }

    let ago = |s: u64| NOW_MS - s * S;
    use TaskState::*;
    let instance = |r: &mut TaskRun, iteration: u32, item: Option<u32>| (r.iteration, r.item_index) = (iteration, item);
    let mut runs = Vec::new();
    // j7: write, then review and revise twice; the third review runs.
    let steps = [("write", 1, Succeeded), ("review", 1, Succeeded), ("revise", 1, Succeeded), ("review", 2, Succeeded)];
    let more = [("revise", 2, Succeeded), ("review", 3, Running)];
    for (k, (name, iteration, state)) in steps.into_iter().chain(more).enumerate() {
        let mut r = TaskRun::from(task(100 + k as u64, 7, "review", name, "llm", state, ago(600 - 60 * k as u64)));
        instance(&mut r, iteration, None);
        r.cost_usd_micros = 10_000;
        // Each run after `write` was started by the `success` transition of the one before.
        let from_task_run = (k > 0).then(|| 99 + k as u64);
        r.reached_by = from_task_run.map(|from_task_run| ReachedBy { from_task_run, on: TransitionOn::Success });
        runs.push(r);
    }
    // j8: list, then fetch over 12 items: 9 succeeded, one running, one queued, one dead.
    runs.push(TaskRun::from(task(200, 8, "crawl", "list", "io", Succeeded, ago(300))));
    for item in 0..12u32 {
        let state = match item {
            4 => Dead,
            10 => Running,
            11 => Queued,
            _ => Succeeded,
        };
        let mut r = TaskRun::from(task(201 + u64::from(item), 8, "crawl", "fetch", "io", state, ago(280)));
        instance(&mut r, 1, Some(item));
        if state == Dead {
            (r.attempt, r.reason, r.exit_code) = (3, Some(FailReason::ExitCode), Some(22));
        }
        runs.push(r);
    }
    // fetch's own run: the group of its items (kind `fanout`), never attempted, not counted.
    let mut group = TaskRun::from(task(199, 8, "crawl", "fetch", "io", Running, ago(280)));
    (group.attempt, group.series_start, group.fanout) = (0, 1, true);
    runs.push(group);
    // j9: create and deploy succeeded, announce died; both were undone, deploy first.
    let saga = [("create", Succeeded, false), ("deploy", Succeeded, false), ("announce", Dead, false)];
    let undone = [("deploy", Succeeded, true), ("create", Succeeded, true)];
    for (k, (name, state, compensation)) in saga.into_iter().chain(undone).enumerate() {
        let mut r = TaskRun::from(task(300 + k as u64, 9, "release", name, "default", state, ago(900 - 60 * k as u64)));
        if compensation {
            r.compensation = true;
            r.compensates = Some(if name == "deploy" { 301 } else { 300 });
        }
        if state == Dead {
            (r.reason, r.exit_code) = (Some(FailReason::ExitCode), Some(1));
        }
        runs.push(r);
    }
    model.insert_tasks(runs);
    for (id, name, state, created) in [
        (7, "review", JobState::Running, ago(600)),
        (8, "crawl", JobState::Running, ago(300)),
        (9, "release", JobState::Failed, ago(900)),
    ] {
        let ended = state.is_terminal().then_some(ago(600));
        model.jobs.get_mut(&id).expect("inserted with its task runs").rec =
            JobRun::from(job(id, name, state, created, ended, 0));
    }
    model.jobs.get_mut(&9).expect("j9").rec.reason = Some("task announce (#302) dead: exit_code".into());
    model.invalidate();
    model.prepare();
    model.changed = false;
    model
}
