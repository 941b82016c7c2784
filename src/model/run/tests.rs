//! The core without a runtime: scripts of inputs through one `check()` helper, and a property
//! that random orders of inputs keep the invariants.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::config::TransitionOn;
use crate::model::{FailReason, JobState, TaskState};

/// a (2 attempts) → b; c alone; d waits for `go` (at most 5 s).
const JOB: &str = r#"
[jobs.j.tasks.a]
run = "true"
retry = { max_attempts = 2, initial_interval = "1s", jitter = 0.0 }
[jobs.j.tasks.b]
run = "true"
needs = ["a"]
retry = { max_attempts = 1 }
[jobs.j.tasks.c]
run = "true"
retry = { max_attempts = 1 }
"#;

const GATED: &str = r#"
[jobs.j.tasks.d]
run = "true"
wait_for = "go"
wait_timeout = "5s"
"#;

/// A job with a budget of $1.
const BUDGET: &str = r#"
[jobs.j]
budget_usd = 1.00
[jobs.j.tasks.a]
run = "true"
[jobs.j.tasks.b]
run = "true"
"#;

struct FixedEnv {
    seq: u64,
}

impl Env for FixedEnv {
    fn random(&mut self) -> f64 {
        0.0
    }
    fn next_enqueue_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
    fn crashes_in_a_row(&mut self, _: &TaskRun) -> u32 {
        1
    }
    /// A task with `cache` has its name as its key.
    fn cache_key(&mut self, state: &RunState, i: usize) -> Option<String> {
        state.def(i).cache.as_ref().map(|_| state.tasks[i].task.clone())
    }
    fn next_task_run_id(&mut self) -> u64 {
        self.seq += 1;
        100 + self.seq
    }
    /// Understands `outputs.KEY == 'VALUE'` and `outputs.KEY != 'VALUE'`; else an error.
    fn when(&mut self, state: &RunState, run: usize, expression: &str) -> Result<bool, String> {
        let (equal, (key, value)) = match (expression.split_once(" == "), expression.split_once(" != ")) {
            (Some(kv), _) => (true, kv),
            (None, Some(kv)) => (false, kv),
            _ => return Err(format!("cannot read `{expression}`")),
        };
        let key = key.strip_prefix("outputs.").ok_or("only outputs")?;
        let got = state.tasks[run].outputs.get(key).map(String::as_str);
        Ok((got == Some(value.trim_matches('\''))) == equal)
    }
    fn render_for_each(&mut self, state: &RunState, _: usize, template: &str) -> Result<String, String> {
        // The test's "rendered" text is what is between `{{ ` and ` }}`, or the output it names
        // (`tasks.T.outputs.K`, T's latest run); `job.name` cannot render.
        let inner = template.strip_prefix("{{ ").and_then(|t| t.strip_suffix(" }}"));
        let output = |path: &str| {
            let (task, key) = path.strip_prefix("tasks.")?.split_once(".outputs.")?;
            let t = state.graph.names.iter().position(|n| n == task)?;
            state.tasks[state.latest[t]].outputs.get(key).cloned()
        };
        let rendered = inner.filter(|t| *t != "job.name").map(|t| output(t).unwrap_or_else(|| t.to_string()));
        rendered.ok_or_else(|| "for_each: cannot render".into())
    }
}

/// A new job run of the only job in `toml`, with the task runs a job run makes at once (as the
/// Supervisor does): ids 1, 2, … in file order.
fn new_run(toml: &str) -> RunState {
    let workflow = Arc::new(crate::config::parse(Path::new("w.toml"), toml).expect("valid workflow"));
    let job = &workflow.jobs[0];
    let made = crate::model::workflow_graph::WorkflowGraph::of(job).made_at_start();
    let made_at_start = job.tasks.iter().enumerate().filter(|(i, _)| made[*i]);
    let tasks = made_at_start.enumerate().map(|(n, (i, def))| TaskRun::new(n as u64 + 1, i, def, 1, 0)).collect();
    let facts = JobRunFacts {
        id: 7,
        job: job.name.clone(),
        state: JobState::Running,
        reason: None,
        cost_usd_micros: 0,
        ended_at_ms: None,
        cancel_requested: false,
    };
    RunState::new(workflow, 0, facts, tasks, Raised::default())
}

fn id_of(s: &RunState, name: &str) -> u64 {
    s.tasks.iter().rev().find(|t| run_name(t) == name).map(|t| t.id).expect("a task of the job")
}

/// How scripts name a task run: its task (the latest iteration wins), a fan-out item with its
/// iteration past the first and index (`fan[2]`, `fan#2[0]`), a compensation with `~` before
/// (`~deploy`).
fn run_name(t: &TaskRun) -> String {
    let iteration = if t.item_index.is_some() { t.iteration } else { 1 };
    let label = crate::model::fanout::label(&t.task, iteration, t.item_index, false);
    if t.kind == Kind::Compensation { format!("~{label}") } else { label }
}

/// One script line as an input: `begin`, `claim a`, `ok a`, `fail a 2` (exit code),
/// `cached a none|MS` (the answer to reading a's cache: nothing, or a success at MS),
/// `end a reason`, `timer a`, `qtimeout a` (its `queue_timeout`), `cancel [a]`, `retry a`, `retry-all` (`retry jN`), `from a` (`retry --from`), `signal go`,
/// `cost a 600000`, `stop`.
fn input_of(s: &RunState, line: &str) -> Input {
    let words: Vec<&str> = line.split_whitespace().collect();
    let task = |k: usize| id_of(s, words[k]);
    let end = |failure: Option<FailReason>, exit_code: Option<i32>| {
        let t = &s.tasks[s.idx(task(1)).expect("known")];
        let end = AttemptEnd { n: t.attempt, exit_code, failure, ..Default::default() };
        Input::AttemptEnded { task_run: t.id, end }
    };
    match words[..] {
        ["begin"] => Input::Begin,
        ["claim", _] => Input::Claim { task_run: task(1) },
        ["ok", _] => end(None, Some(0)),
        ["ok", _, output] => {
            let Input::AttemptEnded { task_run, mut end } = end(None, Some(0)) else { unreachable!() };
            let (k, v) = output.split_once('=').expect("key=value");
            end.outputs.insert(k.to_string(), v.to_string());
            Input::AttemptEnded { task_run, end }
        }
        ["fail", _, code] => end(Some(FailReason::ExitCode), code.parse().ok()),
        ["end", _, reason] => end(FailReason::parse(reason), None),
        ["timer", _] => {
            let t = &s.tasks[s.idx(task(1)).expect("known")];
            Input::TimerDue { task_run: t.id, due_ms: t.not_before_ms.unwrap_or(0) }
        }
        ["qtimeout", _] => Input::QueueTimedOut { task_run: task(1) },
        ["cancel"] => Input::Cancel { task_run: None },
        ["cancel", _] => Input::Cancel { task_run: Some(task(1)) },
        ["retry", _] => {
            Input::Retry { plan: crate::model::retry::RetryPlan { task_runs: vec![task(1)], ..Default::default() } }
        }
        // `retry jN`: the whole run's dead and cancelled task runs, as `model::retry::plan` names them.
        ["retry-all"] => {
            let states: Vec<(u64, TaskState)> = s.tasks.iter().map(|t| (t.id, t.state)).collect();
            let task_runs = crate::model::retry::retryable(s.job_run.id, &states, None).expect("something to retry");
            Input::Retry { plan: crate::model::retry::RetryPlan { task_runs, ..Default::default() } }
        }
        ["from", task] => {
            let tasks = crate::model::rerun::plan_from(&s.graph, &s.states_for_rerun(), task)
                .expect("it may run again from there");
            Input::RunFrom { from: task.to_string(), tasks, plan: Default::default() }
        }
        ["signal", name] => Input::Signal { task_run: None, name: name.to_string() },
        ["cost", _, usd] => Input::CostAdded {
            task_run: task(1),
            usd_micros: usd.parse().expect("micros"),
            input_tokens: 0,
            output_tokens: 0,
        },
        ["stop"] => Input::Stop,
        // The store's answer about a's cache entry: none, or a success at `at` ms (lines are
        // 1000 ms apart, the first at 1000).
        ["cached", _, "none"] => Input::CacheRead { task_run: task(1), entry: None },
        ["cached", _, at] => {
            let entry = CacheHit {
                task_run: 90,
                job_run: 6,
                succeeded_at_ms: at.parse().expect("ms"),
                expires_at_ms: u64::MAX,
                outputs: [("answer".to_string(), "42".to_string())].into(),
                exit_code: Some(0),
            };
            Input::CacheRead { task_run: task(1), entry: Some(entry) }
        }
        _ => panic!("unknown script line `{line}`"),
    }
}

/// The effects, compact: what was said, queued, armed, killed, answered.
fn render(s: &RunState, fx: &Effects) -> String {
    let name = |i: usize| run_name(&s.tasks[i]);
    let by_id = |id: u64| name(s.idx(id).expect("known"));
    let mut out: Vec<String> = fx
        .notes
        .iter()
        .map(|n| match n {
            Note::Task { task, what } => {
                let what = match what {
                    TaskNote::Queued { .. } => "queued".to_string(),
                    TaskNote::Waiting { .. } => "waiting".into(),
                    TaskNote::Skipped => "skipped".into(),
                    TaskNote::Succeeded { .. } => "succeeded".into(),
                    TaskNote::Failed { attempt, reason, .. } => {
                        format!("failed#{attempt}({})", reason.map_or("?", |r| r.as_str()))
                    }
                    TaskNote::RetryScheduled { delay_ms, .. } => format!("retry in {delay_ms}ms"),
                    TaskNote::DeadLettered { reason } => format!("dead({})", reason.as_str()),
                    TaskNote::Cancelled { .. } => "cancelled".into(),
                    TaskNote::ResourceExhausted { .. } => "exhausted".into(),
                    TaskNote::Progress { .. } => "progress".into(),
                    TaskNote::Handled => "handled".into(),
                    TaskNote::WhenFailed { .. } => "when failed".into(),
                };
                format!("{} {what}", name(*task))
            }
            Note::JobStarted { .. } => "job started".into(),
            Note::JobEnded { state, reason, .. } => match reason {
                Some(r) => format!("job {} ({r})", state.as_str()),
                None => format!("job {}", state.as_str()),
            },
            Note::BudgetExceeded { task, .. } => {
                format!("budget exceeded{}", task.map(|i| format!(" {}", name(i))).unwrap_or_default())
            }
            Note::BudgetRaised { .. } => "budget raised".into(),
            Note::TransitionFired { from, on, to, task_run } => format!(
                "{}#{} -{}-> {}{}",
                name(*from),
                s.tasks[*from].iteration,
                on.as_str(),
                s.graph.names[*to],
                task_run.map(|r| format!("#{}", s.tasks[r].iteration)).unwrap_or_default()
            ),
        })
        .collect();
    out.extend(fx.cache_reads.iter().map(|(id, key)| format!("read cache {key} for {}", by_id(*id))));
    out.extend(fx.enqueue.iter().map(|&i| format!("enqueue {}", name(i))));
    out.extend(fx.timers.iter().map(|&(id, due)| format!("timer {}@{due}", by_id(id))));
    out.extend(fx.kills.iter().map(|&(id, r)| format!("kill {}({})", by_id(id), r.as_str())));
    if let Some(c) = &fx.claimed {
        out.push(format!("claimed {}#{}", name(c.task), c.attempt));
    }
    if let Some(reply) = &fx.reply {
        out.push(match reply {
            Ok(r) => format!("ok: {r}"),
            Err(e) => format!("refused: {e}"),
        });
    }
    if fx.finish {
        out.push("finish".into());
    }
    out.join(", ")
}

/// Feeds script lines one at a time, 1000 ms apart, to a run or to its restarted self.
struct Driver {
    env: FixedEnv,
    now: u64,
}

impl Driver {
    fn new() -> Driver {
        Driver { env: FixedEnv { seq: 0 }, now: 0 }
    }

    fn line(&mut self, s: &mut RunState, line: &str) -> Effects {
        self.now += 1000;
        let input = input_of(s, line);
        step(s, input, self.now, &mut self.env)
    }
}

/// `s` rebuilt from its task runs as they are stored: what a restart resumes.
fn restarted(s: &RunState) -> RunState {
    RunState::new(s.workflow().clone(), 0, s.job_run.clone(), s.tasks.clone(), Raised::default())
}

/// Runs `script` (one input a line, time 1000 ms apart) on a new run of `toml` and compares
/// each line's effects with `expect` (`line => effects`, one a line); returns the state after.
fn check(toml: &str, script: &str, expect: &str) -> RunState {
    let mut s = new_run(toml);
    let mut env = FixedEnv { seq: 0 };
    let mut got = Vec::new();
    for (n, line) in script.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
        let input = input_of(&s, line);
        let fx = step(&mut s, input, 1000 * (n as u64 + 1), &mut env);
        got.push(format!("{line} => {}", render(&s, &fx)).trim_end().to_string());
    }
    let expect: Vec<&str> = expect.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(got, expect, "\ngot:\n{}\n", got.join("\n"));
    s
}

#[test]
fn a_run_goes_through_its_graph_and_succeeds() {
    check(
        JOB,
        "begin
         claim a
         ok a
         claim b
         claim c
         ok c
         ok b",
        "begin => job started, a queued, c queued, enqueue a, enqueue c
         claim a => claimed a#1
         ok a => a succeeded, b queued, enqueue b
         claim b => claimed b#1
         claim c => claimed c#1
         ok c => c succeeded
         ok b => b succeeded, job succeeded, finish",
    );
}

#[test]
fn a_failure_retries_after_its_delay_then_dead_letters() {
    check(
        JOB,
        "begin
         claim a
         fail a 3
         claim a
         timer a
         claim a
         fail a 3",
        "begin => job started, a queued, c queued, enqueue a, enqueue c
         claim a => claimed a#1
         fail a 3 => a failed#1(exit_code), a retry in 1000ms, timer a@4000
         claim a =>
         timer a => a queued, enqueue a
         claim a => claimed a#2
         fail a 3 => a failed#2(exit_code), a dead(exit_code), b skipped",
    );
}

#[test]
fn a_dead_task_skips_its_dependents_and_an_independent_branch_goes_on() {
    check(
        JOB,
        "begin
         claim a
         fail a 1
         timer a
         claim a
         fail a 1
         claim c
         ok c",
        "begin => job started, a queued, c queued, enqueue a, enqueue c
         claim a => claimed a#1
         fail a 1 => a failed#1(exit_code), a retry in 1000ms, timer a@4000
         timer a => a queued, enqueue a
         claim a => claimed a#2
         fail a 1 => a failed#2(exit_code), a dead(exit_code), b skipped
         claim c => claimed c#1
         ok c => c succeeded, job failed (task a (#1) dead: exit_code 1), finish",
    );
}

#[test]
fn with_fail_fast_the_first_unhandled_failure_cancels_what_runs_and_starts_nothing() {
    let fail_fast = format!("[jobs.j]\nfail_fast = true\n[jobs.j.tasks.e]\nrun = \"true\"\n{JOB}");
    check(
        &fail_fast,
        "begin
         claim e
         claim a
         fail a 1
         timer a
         claim a
         fail a 1
         claim c
         end e cancelled",
        "begin => job started, e queued, a queued, c queued, enqueue e, enqueue a, enqueue c
         claim e => claimed e#1
         claim a => claimed a#1
         fail a 1 => a failed#1(exit_code), a retry in 1000ms, timer a@5000
         timer a => a queued, enqueue a
         claim a => claimed a#2
         fail a 1 => a failed#2(exit_code), a dead(exit_code), b skipped, c skipped, kill e(cancelled)
         claim c =>
         end e cancelled => e cancelled, job failed (task a (#2) dead: exit_code 1), finish",
    );
}

#[test]
fn with_fail_fast_a_retry_due_after_the_failure_does_not_start() {
    let fail_fast =
        format!("[jobs.j]\nfail_fast = true\n[jobs.j.tasks.e]\nrun = \"true\"\nretry = {{ max_attempts = 1 }}\n{JOB}");
    check(
        &fail_fast,
        "begin
         claim a
         fail a 1
         claim e
         fail e 1
         timer a",
        "begin => job started, e queued, a queued, c queued, enqueue e, enqueue a, enqueue c
         claim a => claimed a#1
         fail a 1 => a failed#1(exit_code), a retry in 1000ms, timer a@4000
         claim e => claimed e#1
         fail e 1 => e failed#1(exit_code), e dead(exit_code), c skipped
         timer a => a skipped, b skipped, job failed (task e (#1) dead: exit_code 1), finish",
    );
}

#[test]
fn cancelling_the_run_kills_what_runs_and_ends_it_cancelled() {
    check(
        JOB,
        "begin
         claim a
         cancel
         end a cancelled
         cancel",
        "begin => job started, a queued, c queued, enqueue a, enqueue c
         claim a => claimed a#1
         cancel => b cancelled, c cancelled, kill a(cancelled), ok: job run j7 is being cancelled
         end a cancelled => a cancelled, job cancelled, finish
         cancel => refused: job run j7 has already cancelled",
    );
}

#[test]
fn a_graceful_stop_puts_an_interrupted_attempt_back_uncounted() {
    check(
        JOB,
        "begin
         claim a
         stop
         end a interrupted
         claim c",
        "begin => job started, a queued, c queued, enqueue a, enqueue c
         claim a => claimed a#1
         stop => kill a(interrupted)
         end a interrupted => a failed#1(interrupted)
         claim c =>",
    );
}

#[test]
fn a_dead_letter_retry_reopens_the_run_and_what_was_skipped() {
    check(
        JOB,
        "begin
         claim c
         ok c
         claim a
         timer a
         fail a 1
         timer a
         claim a
         fail a 1
         retry a
         claim a
         ok a",
        "begin => job started, a queued, c queued, enqueue a, enqueue c
         claim c => claimed c#1
         ok c => c succeeded
         claim a => claimed a#1
         timer a =>
         fail a 1 => a failed#1(exit_code), a retry in 1000ms, timer a@7000
         timer a => a queued, enqueue a
         claim a => claimed a#2
         fail a 1 => a failed#2(exit_code), a dead(exit_code), b skipped, job failed (task a (#1) dead: exit_code 1), finish
         retry a => job started, a queued, enqueue a, ok: task run 1 queued again (attempt 3 next)
         claim a => claimed a#3
         ok a => a succeeded, b queued, enqueue b",
    );
}

#[test]
fn a_signal_releases_a_waiting_task_and_its_timeout_dead_letters() {
    check(
        GATED,
        "begin
         signal nope
         signal go
         claim d",
        "begin => job started, d waiting, timer d@6000
         signal nope => refused: nothing in job run j7 waits for `nope`; d (#1) waits for `go`
         signal go => d queued, enqueue d, ok: `go` released d (#1) in job run j7
         claim d => claimed d#1",
    );
    check(
        GATED,
        "begin
         timer d",
        "begin => job started, d waiting, timer d@6000
         timer d => d dead(wait_timeout), job failed (task d (#1) dead: wait_timeout), finish",
    );
}

#[test]
fn a_spent_job_budget_stops_work_and_fails_the_run() {
    check(
        BUDGET,
        "begin
         claim a
         cost a 1000000
         claim b
         end a budget",
        "begin => job started, a queued, b queued, enqueue a, enqueue b
         claim a => claimed a#1
         cost a 1000000 => budget exceeded, b skipped, kill a(budget)
         claim b =>
         end a budget => a failed#1(budget), a dead(budget), job failed (budget), finish",
    );
}

/// Whatever order inputs come in, the invariants of SPEC §7 hold.
fn random_input(s: &RunState, pick: (u8, usize)) -> Input {
    let t = &s.tasks[pick.1 % s.tasks.len()];
    let end = |failure| Input::AttemptEnded {
        task_run: t.id,
        end: AttemptEnd { n: t.attempt, failure, ..Default::default() },
    };
    match pick.0 % 12 {
        0 | 1 => Input::Claim { task_run: t.id },
        2 => end(None),
        3 => Input::AttemptEnded {
            task_run: t.id,
            end: AttemptEnd {
                n: t.attempt,
                outputs: [("again".to_string(), "yes".to_string())].into(),
                ..Default::default()
            },
        },
        4 => end(Some(FailReason::ExitCode)),
        5 => end(Some(FailReason::Interrupted)),
        6 => Input::TimerDue { task_run: t.id, due_ms: t.not_before_ms.unwrap_or(0) },
        7 => Input::Cancel { task_run: Some(t.id) },
        8 => Input::Retry { plan: crate::model::retry::RetryPlan { task_runs: vec![t.id], ..Default::default() } },
        9 => Input::Signal { task_run: None, name: "go".into() },
        10 => Input::QueueTimedOut { task_run: t.id },
        _ => end(Some(FailReason::Cancelled)),
    }
}

const MIXED: &str = r#"
[jobs.j.tasks.a]
run = "true"
retry = { max_attempts = 2, initial_interval = "1s" }
[jobs.j.tasks.b]
run = "true"
needs = ["a"]
[jobs.j.tasks.c]
run = "true"
wait_for = "go"
[jobs.j.tasks.d]
run = "true"
needs = ["b", "c"]
"#;

/// a → b (join all of a and c), b loops on itself at most 3 times, c alone.
const TRANSITIONS: &str = r#"
[jobs.j.tasks.a]
run = "true"
retry = { max_attempts = 2, initial_interval = "1s" }
next = [{ on = "always", do = ["b"] }]
[jobs.j.tasks.c]
run = "true"
next = [{ on = "success", do = ["b"] }, { on = "failure", do = ["d"] }]
[jobs.j.tasks.b]
run = "true"
join = "all"
next = [{ on = "success", do = ["d"] }]
[jobs.j.tasks.d]
run = "true"
max_iterations = 3
next = [{ on = "success", when = "outputs.again == 'yes'", do = ["d"] }]
[jobs.j.tasks.e]
run = "true"
needs = ["d"]
"#;

/// `a` → `fan` (three items, two at once) → `check`, which sends `fan` round again while its
/// output says so (three rounds at most).
const FAN_LOOP: &str = r#"
[jobs.j.tasks.a]
run = "true"
next = [{ on = "success", do = ["fan"] }]
[jobs.j.tasks.fan]
run = "true"
for_each = ["x", "y", "z"]
for_each_concurrency = 2
max_iterations = 3
retry = { max_attempts = 2, initial_interval = "1s" }
next = [{ on = "success", do = ["check"] }]
[jobs.j.tasks.check]
run = "true"
max_iterations = 3
next = [{ on = "success", when = "outputs.again == 'yes'", do = ["fan"] }]
"#;

/// [`random_input`], or (`with_from`) once the run is over a `retry --from` a random task (as
/// the engine allows it: every task run ended, the plan accepted).
fn random_input_or_from(s: &RunState, pick: (u8, usize), with_from: bool) -> Input {
    let from = &s.graph.names[pick.1 % s.graph.len()];
    let over = s.tasks.iter().all(|t| !t.is_made() || t.state.is_terminal());
    match crate::model::rerun::plan_from(&s.graph, &s.states_for_rerun(), from) {
        Ok(tasks) if with_from && over && pick.0 % 13 == 12 => {
            Input::RunFrom { from: from.clone(), tasks, plan: Default::default() }
        }
        _ => random_input(s, pick),
    }
}

/// Random inputs against `toml`: the invariants of SPEC §7 and §2.2 hold after every step.
fn keeps_invariants(toml: &str, picks: Vec<(u8, usize)>, with_from: bool) -> Result<(), TestCaseError> {
    let mut s = new_run(toml);
    let mut env = FixedEnv { seq: 0 };
    let fx = step(&mut s, Input::Begin, 0, &mut env);
    let mut ended = usize::from(fx.finish);
    // Terminal reports since the task run was last reopened, by task run.
    let mut terminal_said = vec![0u32; s.tasks.len()];
    for (n, pick) in picks.into_iter().enumerate() {
        let before: Vec<(TaskState, u32)> = s.tasks.iter().map(|t| (t.state, t.attempt)).collect();
        let reached_before: Vec<Option<ReachedBy>> = s.tasks.iter().map(|t| t.reached_by).collect();
        let input = random_input_or_from(&s, pick, with_from);
        let is_retry = matches!(input, Input::Retry { .. } | Input::RunFrom { .. });
        let fx = step(&mut s, input, 1000 * (n as u64 + 1), &mut env);
        for w in &fx.writes {
            if let Write::TaskRun(i) = w {
                prop_assert!(s.tasks[*i].is_made(), "a task nothing reached is never written");
            }
        }
        for note in &fx.notes {
            if let Note::Task { task, .. } = note {
                prop_assert!(s.tasks[*task].is_made(), "a task nothing reached is never reported");
            }
        }
        // A task that needs a looping task starts once nothing can reach that task again.
        for &held in &s.held {
            let was = before.get(held).map(|b| b.0);
            if was == Some(TaskState::Pending) && s.tasks[held].state == TaskState::Queued {
                let open =
                    |(i, t): (usize, &TaskRun)| i != held && s.is_node(i) && t.is_made() && !t.state.is_terminal();
                prop_assert!(
                    !s.tasks.iter().enumerate().any(open),
                    "{} started while its need may run again",
                    s.tasks[held].task
                );
            }
        }
        terminal_said.resize(s.tasks.len(), 0);
        if is_retry && matches!(fx.reply, Some(Ok(_))) {
            terminal_said.iter_mut().for_each(|n| *n = 0); // a retry reopens what was skipped
        }
        for (i, t) in s.tasks.iter().enumerate() {
            prop_assert_eq!(t.state, s.states[i], "the record mirrors the states");
            let Some(&(was, attempt)) = before.get(i) else { continue };
            // Attempts are gap-free, and only a queued task run starts one.
            prop_assert!(t.attempt == attempt || (t.attempt == attempt + 1 && was == TaskState::Queued));
            if was.is_terminal() && !t.state.is_terminal() {
                terminal_said[i] = 0; // a retry reopened it
            }
        }
        for note in &fx.notes {
            if let Note::Task { task, what } = note {
                let terminal = matches!(
                    what,
                    TaskNote::Succeeded { .. }
                        | TaskNote::DeadLettered { .. }
                        | TaskNote::Handled
                        | TaskNote::Cancelled { from_dead: false }
                        | TaskNote::Skipped
                );
                if terminal {
                    terminal_said[*task] += 1;
                    prop_assert!(terminal_said[*task] <= 1, "{} ended twice", s.tasks[*task].task);
                }
            }
        }
        for task in 0..s.graph.len() {
            let runs = s.tasks.iter().filter(|t| t.task_index == task && !t.is_extra()).count() as u32;
            prop_assert!(runs <= s.workflow_graph.max_iterations(task).max(1), "iterations within max_iterations");
            if s.workflow_graph.join(task).is_some() {
                prop_assert_eq!(runs, 1, "a join target has one task run: its join fires once");
            }
        }
        for (i, t) in s.tasks.iter().enumerate() {
            // When a transition reaches it (later a `retry --from` may reopen the source).
            let reached_now = t.reached_by.is_some() && reached_before.get(i).is_none_or(|by| *by != t.reached_by);
            if let Some(by) = t.reached_by.filter(|_| reached_now) {
                let from = s.idx(by.from_task_run).map(|f| s.tasks[f].state);
                prop_assert!(from.is_some_and(TaskState::is_terminal), "reached from a task run that ended");
            }
        }
        for (&node, fan) in &s.fanouts {
            // Each reaching of a fanned-out task is a fan-out of its own: its items, its cap.
            let items: Vec<&TaskRun> = fan.runs.iter().map(|&r| &s.tasks[r]).collect();
            let own = items.iter().enumerate().all(|(k, t)| {
                t.item_index == Some(k as u32)
                    && t.iteration == s.tasks[node].iteration
                    && t.task_index == s.tasks[node].task_index
            });
            prop_assert!(own, "a fan-out's items are its own, in item order");
            let holding = items.iter().filter(|t| crate::model::fanout::ItemState::from(t.state).in_flight()).count();
            prop_assert!(holding <= 2, "for_each_concurrency holds per fan-out");
            if s.tasks[node].state.is_terminal() {
                prop_assert!(items.iter().all(|t| t.state.is_terminal()), "a fan-out ends after its items");
            }
        }
        for &(id, _) in &fx.kills {
            prop_assert_eq!(s.tasks[s.idx(id).expect("known")].state, TaskState::Running, "only what runs is killed");
        }
        if fx.notes.iter().any(|n| matches!(n, Note::JobStarted { .. })) {
            ended = 0; // reopened (and perhaps over again) in this very step
        }
        if fx.finish {
            ended += 1;
            let open = |t: &&TaskRun| t.is_made() && !t.state.is_terminal();
            prop_assert!(!s.tasks.iter().any(|t| open(&t)), "a run ends when nothing is open");
            prop_assert!(s.job_run.state.is_terminal());
        }
        let reopened = matches!(s.job_run.state, JobState::Running);
        prop_assert!(ended <= 1 || reopened || fx.finish, "the end is recorded once per opening");
        if reopened {
            ended = 0;
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn random_orders_of_inputs_keep_the_invariants(picks in proptest::collection::vec((any::<u8>(), any::<usize>()), 1..80)) {
        keeps_invariants(MIXED, picks, false)?;
    }

    #[test]
    fn random_orders_of_inputs_through_a_looping_fan_out_keep_the_invariants(picks in proptest::collection::vec((any::<u8>(), any::<usize>()), 1..160)) {
        keeps_invariants(FAN_LOOP, picks, true)?;
    }

    #[test]
    fn random_orders_of_inputs_through_transitions_keep_the_invariants(picks in proptest::collection::vec((any::<u8>(), any::<usize>()), 1..120)) {
        keeps_invariants(TRANSITIONS, picks, true)?;
    }
}

/// write → review; review loops until its verdict is `approved` (at most 2 runs), then ships;
/// a failed review is handled by `notify`.
const LOOP: &str = r#"
[jobs.j.tasks.write]
run = "true"
next = [{ on = "success", do = ["review"] }]
[jobs.j.tasks.review]
run = "true"
max_iterations = 2
retry = { max_attempts = 1 }
next = [
  { on = "success", when = "outputs.verdict == 'approved'", do = ["ship"] },
  { on = "success", when = "outputs.verdict != 'approved'", do = ["review"] },
  { on = "failure", do = ["notify"] },
]
[jobs.j.tasks.ship]
run = "true"
[jobs.j.tasks.notify]
run = "true"
"#;

#[test]
fn a_loop_runs_again_until_an_output_ends_it() {
    check(
        LOOP,
        "begin
         claim write
         ok write
         claim review
         ok review verdict=no
         claim review
         ok review verdict=approved
         claim ship
         ok ship",
        "begin => job started, write queued, enqueue write
         claim write => claimed write#1
         ok write => write succeeded, write#1 -success-> review#1, review queued, enqueue review
         claim review => claimed review#1
         ok review verdict=no => review succeeded, review#1 -success-> review#2, review queued, enqueue review
         claim review => claimed review#1
         ok review verdict=approved => review succeeded, review#2 -success-> ship#1, ship queued, enqueue ship
         claim ship => claimed ship#1
         ok ship => ship succeeded, job succeeded, finish",
    );
}

/// Each task run a transition started remembers the task run it came from and the `on`.
#[test]
fn a_task_run_a_transition_started_records_how_it_was_reached() {
    let s = check(
        LOOP,
        "begin
         claim write
         ok write
         claim review
         ok review verdict=no",
        "begin => job started, write queued, enqueue write
         claim write => claimed write#1
         ok write => write succeeded, write#1 -success-> review#1, review queued, enqueue review
         claim review => claimed review#1
         ok review verdict=no => review succeeded, review#1 -success-> review#2, review queued, enqueue review",
    );
    // `ship` and `notify` were not reached: no task run of them.
    let reached: Vec<(String, u32, Option<ReachedBy>)> =
        s.tasks.iter().filter(|t| t.is_made()).map(|t| (t.task.clone(), t.iteration, t.reached_by)).collect();
    let by = |from: &str| Some(ReachedBy { from_task_run: id_of(&s, from), on: TransitionOn::Success });
    let first_review = s.tasks.iter().find(|t| t.task == "review" && t.iteration == 1).map(|t| t.id);
    let from_first_review =
        Some(ReachedBy { from_task_run: first_review.expect("review#1"), on: TransitionOn::Success });
    assert_eq!(
        reached,
        [("write".into(), 1, None), ("review".into(), 1, by("write")), ("review".into(), 2, from_first_review),]
    );
}

#[test]
fn one_run_too_many_fails_the_job_run_with_iteration_limit() {
    check(
        LOOP,
        "begin
         claim write
         ok write
         claim review
         ok review verdict=no
         claim review
         ok review verdict=no",
        "begin => job started, write queued, enqueue write
         claim write => claimed write#1
         ok write => write succeeded, write#1 -success-> review#1, review queued, enqueue review
         claim review => claimed review#1
         ok review verdict=no => review succeeded, review#1 -success-> review#2, review queued, enqueue review
         claim review => claimed review#1
         ok review verdict=no => review succeeded, review#2 -success-> review, job failed (iteration_limit), finish",
    );
}

#[test]
fn a_failure_a_transition_handles_ends_failed_and_the_run_succeeds() {
    check(
        LOOP,
        "begin
         claim write
         ok write
         claim review
         fail review 2
         claim notify
         ok notify",
        "begin => job started, write queued, enqueue write
         claim write => claimed write#1
         ok write => write succeeded, write#1 -success-> review#1, review queued, enqueue review
         claim review => claimed review#1
         fail review 2 => review failed#1(exit_code), review handled, review#1 -failure-> notify#1, notify queued, enqueue notify
         claim notify => claimed notify#1
         ok notify => notify succeeded, job succeeded, finish",
    );
}

/// a, b and c all lead to `sum`, which runs once two of them arrived.
const JOIN: &str = r#"
[jobs.j.tasks.a]
run = "true"
retry = { max_attempts = 1 }
next = [{ on = "success", do = ["sum"] }]
[jobs.j.tasks.b]
run = "true"
retry = { max_attempts = 1 }
next = [{ on = "success", do = ["sum"] }]
[jobs.j.tasks.c]
run = "true"
next = [{ on = "success", do = ["sum"] }]
[jobs.j.tasks.sum]
run = "true"
join = 2
"#;

#[test]
fn a_join_of_n_fires_once_when_n_sources_arrived() {
    check(
        JOIN,
        "begin
         claim a
         claim b
         claim c
         fail a 1
         ok b
         ok c
         claim sum
         ok sum",
        "begin => job started, a queued, b queued, c queued, enqueue a, enqueue b, enqueue c
         claim a => claimed a#1
         claim b => claimed b#1
         claim c => claimed c#1
         fail a 1 => a failed#1(exit_code), a dead(exit_code)
         ok b => b succeeded, b#1 -success-> sum
         ok c => c succeeded, c#1 -success-> sum#1, sum queued, enqueue sum
         claim sum => claimed sum#1
         ok sum => sum succeeded, job failed (task a (#1) dead: exit_code 1), finish",
    );
}

#[test]
fn a_join_that_can_no_longer_be_satisfied_is_skipped() {
    let s = check(
        &JOIN.replace("join = 2", "join = \"all\""),
        "begin
         claim a
         fail a 1
         claim b
         ok b
         claim c
         ok c",
        "begin => job started, a queued, b queued, c queued, enqueue a, enqueue b, enqueue c
         claim a => claimed a#1
         fail a 1 => a failed#1(exit_code), a dead(exit_code)
         claim b => claimed b#1
         ok b => b succeeded, b#1 -success-> sum
         claim c => claimed c#1
         ok c => c succeeded, c#1 -success-> sum, sum skipped, job failed (task a (#1) dead: exit_code 1), finish",
    );
    assert_eq!(s.tasks[3].reason, Some(FailReason::JoinUnsatisfied));
}

#[path = "fanout_tests.rs"]
mod fanout_tests;

/// A join's arrivals were kept only in memory: a restart after `b` arrived (and before `c`
/// did) forgot `b`, so `sum` never had its two sources, was skipped `join_unsatisfied`, and the
/// run "succeeded" without it (found by the kill -9 campaign in tests/faults.rs).
#[test]
fn a_resume_remembers_which_sources_of_a_join_arrived() {
    let mut s = new_run(JOIN);
    let mut env = FixedEnv { seq: 0 };
    for (n, line) in ["begin", "claim a", "claim b", "claim c", "fail a 1", "ok b"].into_iter().enumerate() {
        let input = input_of(&s, line);
        step(&mut s, input, 1000 * (n as u64 + 1), &mut env);
    }
    // A restart: the state rebuilt from its task runs as stored, `c` still running.
    let mut resumed = restarted(&s);
    let fx = step(&mut resumed, Input::Resume, 10_000, &mut env);
    assert_eq!(render(&resumed, &fx), "", "nothing fires again, nothing is said again");
    let input = input_of(&resumed, "ok c");
    let fx = step(&mut resumed, input, 11_000, &mut env);
    assert_eq!(render(&resumed, &fx), "c succeeded, c#1 -success-> sum#1, sum queued, enqueue sum");
}

/// write → review, which loops through `revise` until its verdict is `approved`; `publish`
/// needs `review`: it follows review's latest task run, once nothing can reach review again.
const NEEDS_A_LOOP: &str = r#"
[jobs.j.tasks.write]
run = "true"
retry = { max_attempts = 1 }
next = [{ on = "success", do = ["review"] }]
[jobs.j.tasks.review]
run = "true"
max_iterations = 3
retry = { max_attempts = 1 }
next = [{ on = "success", when = "outputs.verdict != 'approved'", do = ["revise"] }]
[jobs.j.tasks.revise]
run = "true"
next = [{ on = "success", do = ["review"] }]
[jobs.j.tasks.publish]
run = "true"
needs = ["review"]
"#;

#[test]
fn a_task_never_reached_gets_no_task_run() {
    let s = new_run(NEEDS_A_LOOP);
    let made: Vec<&str> = s.tasks.iter().filter(|t| t.is_made()).map(|t| t.task.as_str()).collect();
    assert_eq!(made, ["write"], "only the entry task has a task run when the job run is made");
    let s = check(
        NEEDS_A_LOOP,
        "begin
         claim write
         fail write 1",
        "begin => job started, write queued, enqueue write
         claim write => claimed write#1
         fail write 1 => write failed#1(exit_code), write dead(exit_code), job failed (task write (#1) dead: exit_code 1), finish",
    );
    assert_eq!(s.tasks.iter().filter(|t| t.is_made()).count(), 1, "review, revise and publish were not reached");
}

/// Through [`NEEDS_A_LOOP`] to review's second round, queued: the script and its effects.
const TO_ROUND_TWO: (&str, &str) = (
    "begin
     claim write
     ok write
     claim review
     ok review verdict=no
     claim revise
     ok revise
     claim review",
    "begin => job started, write queued, enqueue write
     claim write => claimed write#1
     ok write => write succeeded, write#1 -success-> review#1, review queued, enqueue review
     claim review => claimed review#1
     ok review verdict=no => review succeeded, review#1 -success-> revise#1, revise queued, enqueue revise
     claim revise => claimed revise#1
     ok revise => revise succeeded, revise#1 -success-> review#2, review queued, enqueue review
     claim review => claimed review#1",
);

#[test]
fn a_task_that_needs_a_loop_runs_once_after_its_last_iteration() {
    let s = check(
        NEEDS_A_LOOP,
        &format!("{}\nok review verdict=approved\nclaim publish\nok publish", TO_ROUND_TWO.0),
        &format!(
            "{}\n{}\n{}\n{}",
            TO_ROUND_TWO.1,
            "ok review verdict=approved => review succeeded, publish queued, enqueue publish",
            "claim publish => claimed publish#1",
            "ok publish => publish succeeded, job succeeded, finish"
        ),
    );
    let publish = s.tasks.iter().filter(|t| t.task == "publish").count();
    assert_eq!(publish, 1, "publish runs once");
    let review = &s.tasks[s.latest[1]];
    assert_eq!((review.iteration, review.outputs["verdict"].as_str()), (2, "approved"), "it followed review#2");
}

#[test]
fn a_task_that_needs_a_loop_is_skipped_when_its_last_iteration_fails() {
    let ended = "fail review 3 => review failed#1(exit_code), review dead(exit_code), publish skipped, \
                 job failed (task review (#106) dead: exit_code 3), finish";
    check(NEEDS_A_LOOP, &format!("{}\nfail review 3", TO_ROUND_TWO.0), &format!("{}\n{ended}", TO_ROUND_TWO.1));
}

/// `c` is reached from `a` and from `b` (no join: twice); `d` needs `c`.
const NEEDS_TWO_ARRIVALS: &str = r#"
[jobs.j.tasks.a]
run = "true"
next = [{ on = "success", do = ["c"] }]
[jobs.j.tasks.b]
run = "true"
next = [{ on = "success", do = ["c"] }]
[jobs.j.tasks.c]
run = "true"
[jobs.j.tasks.d]
run = "true"
needs = ["c"]
"#;

#[test]
fn a_task_that_needs_a_task_reached_twice_waits_for_both_runs() {
    check(
        NEEDS_TWO_ARRIVALS,
        "begin
         claim a
         ok a
         claim c
         ok c
         claim b
         ok b
         claim c
         ok c",
        "begin => job started, a queued, b queued, enqueue a, enqueue b
         claim a => claimed a#1
         ok a => a succeeded, a#1 -success-> c#1, c queued, enqueue c
         claim c => claimed c#1
         ok c => c succeeded
         claim b => claimed b#1
         ok b => b succeeded, b#1 -success-> c#2, c queued, enqueue c
         claim c => claimed c#1
         ok c => c succeeded, d queued, enqueue d",
    );
}

/// A restart while `review` loops: the state rebuilt from the stored task runs (no task run
/// of `publish`) goes on as before, and `publish` follows the last iteration.
#[test]
fn a_resume_mid_loop_keeps_unreached_tasks_unmade() {
    let mut s = new_run(NEEDS_A_LOOP);
    let mut env = FixedEnv { seq: 0 };
    let script = ["begin", "claim write", "ok write", "claim review", "ok review verdict=no"];
    for (n, line) in script.into_iter().enumerate() {
        let input = input_of(&s, line);
        step(&mut s, input, 1000 * (n as u64 + 1), &mut env);
    }
    let stored: Vec<TaskRun> = s.tasks.iter().filter(|t| t.is_made()).cloned().collect();
    assert_eq!(stored.len(), 3, "write, review#1, revise#1");
    let mut resumed = RunState::new(s.workflow().clone(), 0, s.job_run.clone(), stored, Raised::default());
    let fx = step(&mut resumed, Input::Resume, 10_000, &mut env);
    assert_eq!(render(&resumed, &fx), "enqueue revise");
    let fx = step(&mut resumed, Input::Settle, 10_001, &mut env);
    assert_eq!(render(&resumed, &fx), "", "publish is not started by a resume");
    for line in ["claim revise", "ok revise", "claim review", "ok review verdict=approved"] {
        let input = input_of(&resumed, line);
        let fx = step(&mut resumed, input, 11_000, &mut env);
        if line.ends_with("approved") {
            assert_eq!(render(&resumed, &fx), "review succeeded, publish queued, enqueue publish");
        }
    }
}

/// A task a transition reached is ready at once when `retry --from` names it: no transition
/// will reach it again (it was left pending, then skipped as not reached).
#[test]
fn retry_from_a_task_a_transition_reached_runs_it_again() {
    check(
        &TRANSITIONS.replace("join = \"all\"", "join = \"all\"\nretry = { max_attempts = 1 }"),
        "begin
         claim a
         ok a
         claim c
         ok c
         claim b
         fail b 1
         from b
         claim b
         ok b
         claim d
         ok d
         claim e
         ok e",
        "begin => job started, a queued, c queued, enqueue a, enqueue c
         claim a => claimed a#1
         ok a => a succeeded, a#1 -always-> b
         claim c => claimed c#1
         ok c => c succeeded, c#1 -success-> b#1, b queued, enqueue b
         claim b => claimed b#1
         fail b 1 => b failed#1(exit_code), b dead(exit_code), job failed (task b (#103) dead: exit_code 1), finish
         from b => job started, b queued, enqueue b, ok: job run j7 runs again from `b`: b (attempt numbers go on)
         claim b => claimed b#2
         ok b => b succeeded, b#1 -success-> d#1, d queued, enqueue d
         claim d => claimed d#1
         ok d => d succeeded, e queued, enqueue e
         claim e => claimed e#1
         ok e => e succeeded, job succeeded, finish",
    );
}

/// `e` needs `d`, which `b` could still reach — until `b`'s join can no longer be satisfied:
/// giving up on `b` releases `e` (found by the fan-out helper's proptest: `e` was skipped as
/// not reached beside `b`, and the job run ended without it).
#[test]
fn giving_up_on_a_join_releases_what_needs_the_task_it_would_have_reached() {
    check(
        TRANSITIONS,
        "begin
         qtimeout c
         qtimeout a
         cancel d
         retry d
         claim d
         ok d
         claim e
         ok e",
        "begin => job started, a queued, c queued, enqueue a, enqueue c
         qtimeout c => c handled, c#1 -failure-> d#1, d queued, enqueue d
         qtimeout a => a handled, a#1 -always-> b
         cancel d => d cancelled, e skipped, b skipped, job failed (task d (#103) cancelled), ok: task run 103 cancelled, finish
         retry d => job started, d queued, enqueue d, ok: task run 103 queued again (attempt 1 next)
         claim d => claimed d#1
         ok d => d succeeded, b skipped, e queued, enqueue e
         claim e => claimed e#1
         ok e => e succeeded, job succeeded, finish",
    );
}

/// a ⟶ b with `cache` (ttl 2 s) ⟶ c.
const CACHED: &str = r#"
[jobs.j.tasks.a]
run = "true"
[jobs.j.tasks.b]
run = "true"
needs = ["a"]
cache = { key = "k", ttl = "2s" }
[jobs.j.tasks.c]
run = "true"
needs = ["b"]
"#;

#[test]
fn a_cached_task_is_read_from_the_store_as_an_effect_then_reused_or_queued() {
    // Reused: the answer is a fresh success; b succeeds without an attempt and c follows at once.
    let s = check(
        CACHED,
        "begin
         claim a
         ok a
         cached b 2500",
        "begin => job started, a queued, enqueue a
         claim a => claimed a#1
         ok a => a succeeded, read cache b for b
         cached b 2500 => b succeeded, c queued, enqueue c",
    );
    let b = &s.tasks[1];
    assert_eq!(
        (b.state, b.attempt, b.outputs.get("answer").map(String::as_str)),
        (TaskState::Succeeded, 0, Some("42"))
    );
    assert_eq!(b.detail.as_deref(), Some("cached: reused task run 90 of job run j6"));
    // Nothing there, or too old (4000 − 1000 > 2 s): b is queued as any task.
    for answer in ["cached b none", "cached b 1000"] {
        check(
            CACHED,
            &format!("begin\nclaim a\nok a\n{answer}\nclaim b\nok b"),
            &format!(
                "begin => job started, a queued, enqueue a
                 claim a => claimed a#1
                 ok a => a succeeded, read cache b for b
                 {answer} => b queued, enqueue b
                 claim b => claimed b#1
                 ok b => b succeeded, c queued, enqueue c"
            ),
        );
    }
}

#[test]
fn a_cache_answer_nobody_waits_for_changes_nothing() {
    // Cancelled while the store was asked: the answer, even a hit, is ignored.
    check(
        CACHED,
        "begin
         claim a
         ok a
         cancel
         cached b 3500
         cached b 3500",
        "begin => job started, a queued, enqueue a
         claim a => claimed a#1
         ok a => a succeeded, read cache b for b
         cancel => b cancelled, c skipped, job cancelled, ok: job run j7 is being cancelled, finish
         cached b 3500 =>
         cached b 3500 =>",
    );
    // Asked once, answered once: a second answer is not a second success.
    let mut s = new_run(CACHED);
    let mut d = Driver::new();
    for line in ["begin", "claim a", "ok a", "cached b 3500"] {
        d.line(&mut s, line);
    }
    let again = Input::CacheRead { task_run: s.tasks[1].id, entry: None };
    assert_eq!(step(&mut s, again, 6000, &mut d.env), Effects::default());
    // A stop before the answer: b stays queued (written so), and a resume queues it.
    let mut s = new_run(CACHED);
    let mut d = Driver::new();
    for line in ["begin", "claim a", "ok a", "stop"] {
        d.line(&mut s, line);
    }
    let fx = d.line(&mut s, "cached b 4000");
    assert_eq!((fx.enqueue.as_slice(), s.tasks[1].state), (&[][..], TaskState::Queued));
    assert!(fx.writes.contains(&Write::TaskRun(1)), "{fx:?}");
    let mut resumed = restarted(&s);
    let fx = step(&mut resumed, Input::Resume, 7000, &mut d.env);
    assert_eq!(fx.enqueue, [1], "queued at the next start, the cache not asked again");
}
