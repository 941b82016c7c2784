//! `for_each` and `compensate` through the core: item creation, concurrency, the node's
//! outcome, outputs in item order, the saga's order, and a resume rebuilding both.

use super::*;
use crate::model::fanout::ItemState;

/// `fan` over three literal items, at most two at once, then `sum` after it.
const FAN: &str = r#"
[jobs.j.tasks.fan]
run = "true"
for_each = ["a", "b", "c"]
for_each_concurrency = 2
retry = { max_attempts = 2, initial_interval = "1s", jitter = 0.0 }
[jobs.j.tasks.sum]
run = "true"
needs = ["fan"]
"#;

#[test]
fn items_start_within_the_cap_and_the_node_succeeds_when_all_did() {
    check(
        FAN,
        "begin
         claim fan[0]
         claim fan[1]
         ok fan[1] n=2
         claim fan[2]
         ok fan[2] n=3
         ok fan[0] n=1
         claim sum
         ok sum",
        "begin => job started, fan[0] queued, fan[1] queued, enqueue fan[0], enqueue fan[1]
         claim fan[0] => claimed fan[0]#1
         claim fan[1] => claimed fan[1]#1
         ok fan[1] n=2 => fan[1] succeeded, fan[2] queued, enqueue fan[2]
         claim fan[2] => claimed fan[2]#1
         ok fan[2] n=3 => fan[2] succeeded
         ok fan[0] n=1 => fan[0] succeeded, fan succeeded, sum queued, enqueue sum
         claim sum => claimed sum#1
         ok sum => sum succeeded, job succeeded, finish",
    );
}

#[test]
fn an_item_retries_on_its_own_and_holds_its_slot_meanwhile() {
    check(
        FAN,
        "begin
         claim fan[0]
         fail fan[0] 1
         claim fan[1]
         ok fan[1]
         timer fan[0]
         claim fan[0]
         ok fan[0]",
        "begin => job started, fan[0] queued, fan[1] queued, enqueue fan[0], enqueue fan[1]
         claim fan[0] => claimed fan[0]#1
         fail fan[0] 1 => fan[0] failed#1(exit_code), fan[0] retry in 1000ms, timer fan[0]@4000
         claim fan[1] => claimed fan[1]#1
         ok fan[1] => fan[1] succeeded, fan[2] queued, enqueue fan[2]
         timer fan[0] => fan[0] queued, enqueue fan[0]
         claim fan[0] => claimed fan[0]#2
         ok fan[0] => fan[0] succeeded",
    );
}

#[test]
fn a_dead_item_fails_the_node_once_every_item_ended_and_skips_its_dependents() {
    let job = FAN.replace("max_attempts = 2", "max_attempts = 1");
    check(
        &job,
        "begin
         claim fan[0]
         fail fan[0] 3
         claim fan[1]
         ok fan[1]
         claim fan[2]
         ok fan[2]",
        "begin => job started, fan[0] queued, fan[1] queued, enqueue fan[0], enqueue fan[1]
         claim fan[0] => claimed fan[0]#1
         fail fan[0] 3 => fan[0] failed#1(exit_code), fan[0] dead(exit_code), fan[2] queued, enqueue fan[2]
         claim fan[1] => claimed fan[1]#1
         ok fan[1] => fan[1] succeeded
         claim fan[2] => claimed fan[2]#1
         ok fan[2] => fan[2] succeeded, fan dead(exit_code), sum skipped, job failed (task fan (#1) dead: exit_code), finish",
    );
}

#[test]
fn an_empty_list_succeeds_at_once_and_a_bad_one_fails_for_good() {
    let empty = FAN.replace(r#"["a", "b", "c"]"#, r#""{{ [] }}""#);
    check(&empty, "begin", "begin => job started, fan succeeded, sum queued, enqueue sum");
    // The test's Env cannot render `job.name` (see `FixedEnv::render_for_each`).
    let bad = FAN.replace(r#"["a", "b", "c"]"#, r#""{{ job.name }}""#);
    check(
        &bad,
        "begin",
        "begin => job started, fan dead(template_error), sum skipped, job failed (task fan (#1) dead: template_error), finish",
    );
}

#[test]
fn items_are_made_in_one_step_with_their_index_and_json() {
    let mut s = new_run(&FAN.replace(r#"["a", "b", "c"]"#, r#"{ os = ["linux", "mac"], n = [1, 2] }"#));
    let fx = step(&mut s, Input::Begin, 1000, &mut FixedEnv { seq: 0 });
    let items: Vec<(Option<u32>, Option<&str>, TaskState)> =
        s.tasks[2..].iter().map(|t| (t.item_index, t.item.as_deref(), t.state)).collect();
    assert_eq!(
        items,
        [
            (Some(0), Some(r#"{"os":"linux","n":1}"#), TaskState::Queued),
            (Some(1), Some(r#"{"os":"linux","n":2}"#), TaskState::Queued),
            (Some(2), Some(r#"{"os":"mac","n":1}"#), TaskState::Pending),
            (Some(3), Some(r#"{"os":"mac","n":2}"#), TaskState::Pending),
        ]
    );
    assert_eq!(s.tasks[0].state, TaskState::Running, "the node runs while its items do");
    for i in 2..6 {
        assert!(fx.writes.contains(&Write::TaskRun(i)), "item {i} is written in the first commit");
    }
}

#[test]
fn ten_thousand_items_cost_no_more_per_event_than_one() {
    let list = format!("[{}]", (0..10_000).map(|n| n.to_string()).collect::<Vec<_>>().join(","));
    let mut s = new_run(&FAN.replace(r#"["a", "b", "c"]"#, &list).replace("for_each_concurrency = 2", ""));
    let mut env = FixedEnv { seq: 0 };
    let fx = step(&mut s, Input::Begin, 1000, &mut env);
    assert_eq!(fx.enqueue.len(), 10_000);
    for i in 2..s.tasks.len() {
        let id = s.tasks[i].id;
        step(&mut s, Input::Claim { task_run: id }, 2000, &mut env);
        let end = AttemptEnd { n: 1, exit_code: Some(0), ..Default::default() };
        step(&mut s, Input::AttemptEnded { task_run: id, end }, 3000, &mut env);
    }
    assert_eq!(s.tasks[0].state, TaskState::Succeeded);
    assert_eq!(s.tasks[1].state, TaskState::Queued);
}

/// create → deploy → announce; create and deploy undo themselves, announce fails.
const SAGA: &str = r#"
[jobs.j.tasks.create]
run = "true"
compensate = "echo undo create"
retry = { max_attempts = 1 }
[jobs.j.tasks.deploy]
run = "true"
needs = ["create"]
compensate = "echo undo deploy"
retry = { max_attempts = 2, initial_interval = "1s", jitter = 0.0 }
[jobs.j.tasks.announce]
run = "false"
needs = ["deploy"]
retry = { max_attempts = 1 }
"#;

#[test]
fn a_failed_run_undoes_its_steps_one_at_a_time_latest_first() {
    check(
        SAGA,
        "begin
         claim create
         ok create
         claim deploy
         ok deploy
         claim announce
         fail announce 1
         claim ~deploy
         fail ~deploy 1
         timer ~deploy
         claim ~deploy
         ok ~deploy
         claim ~create
         fail ~create 1",
        "begin => job started, create queued, enqueue create
         claim create => claimed create#1
         ok create => create succeeded, deploy queued, enqueue deploy
         claim deploy => claimed deploy#1
         ok deploy => deploy succeeded, announce queued, enqueue announce
         claim announce => claimed announce#1
         fail announce 1 => announce failed#1(exit_code), announce dead(exit_code), ~deploy queued, enqueue ~deploy
         claim ~deploy => claimed ~deploy#1
         fail ~deploy 1 => ~deploy failed#1(exit_code), ~deploy retry in 1000ms, timer ~deploy@10000
         timer ~deploy => ~deploy queued, enqueue ~deploy
         claim ~deploy => claimed ~deploy#2
         ok ~deploy => ~deploy succeeded, ~create queued, enqueue ~create
         claim ~create => claimed ~create#1
         fail ~create 1 => ~create failed#1(exit_code), ~create dead(exit_code), job failed (task announce (#3) dead: exit_code 1), finish",
    );
}

#[test]
fn a_compensation_names_what_it_undoes_and_a_resume_rebuilds_the_saga() {
    let mut s = new_run(SAGA);
    let mut driver = Driver::new();
    let mut run = |s: &mut RunState, line: &str| driver.line(s, line);
    for line in ["begin", "claim create", "ok create", "claim deploy", "ok deploy", "claim announce", "fail announce 1"]
    {
        run(&mut s, line);
    }
    let comp = s.tasks.last().expect("a compensation").clone();
    assert_eq!((comp.kind, comp.compensates, comp.task.as_str()), (Kind::Compensation, Some(2), "deploy"));
    // A restart: the state rebuilt from its task runs (as stored) goes on where it was.
    let mut resumed = restarted(&s);
    assert!(resumed.saga.is_none());
    run(&mut resumed, "claim ~deploy");
    let fx = run(&mut resumed, "ok ~deploy");
    assert_eq!(render(&resumed, &fx), "~deploy succeeded, ~create queued, enqueue ~create");
    run(&mut resumed, "claim ~create");
    let fx = run(&mut resumed, "ok ~create");
    assert_eq!(render(&resumed, &fx), "~create succeeded, job failed (task announce (#3) dead: exit_code 1), finish");
    assert_eq!(resumed.job_run.state, JobState::Failed);
}

#[test]
fn a_resume_rebuilds_a_fan_out_from_its_items() {
    let mut s = new_run(FAN);
    let mut env = FixedEnv { seq: 0 };
    step(&mut s, Input::Begin, 1000, &mut env);
    let mut resumed = restarted(&s);
    let node = &resumed.fanouts[&0];
    assert_eq!((node.fan.total(), node.fan.in_flight()), (3, 2));
    let first = resumed.tasks[node.runs[0]].id;
    step(&mut resumed, Input::Claim { task_run: first }, 2000, &mut env);
    let end = AttemptEnd { n: 1, exit_code: Some(0), ..Default::default() };
    let fx = step(&mut resumed, Input::AttemptEnded { task_run: first, end }, 3000, &mut env);
    assert_eq!(render(&resumed, &fx), "fan[0] succeeded, fan[2] queued, enqueue fan[2]");
}

#[test]
fn no_saga_when_nothing_has_compensate_or_the_run_was_cancelled() {
    check(
        SAGA,
        "begin
         claim create
         ok create
         cancel",
        "begin => job started, create queued, enqueue create
         claim create => claimed create#1
         ok create => create succeeded, deploy queued, enqueue deploy
         cancel => deploy cancelled, announce skipped, job cancelled, ok: job run j7 is being cancelled, finish",
    );
}

#[test]
fn a_retry_of_a_dead_item_or_of_its_node_reopens_the_node() {
    let job = FAN.replace("max_attempts = 2", "max_attempts = 1");
    check(
        &job,
        "begin
         claim fan[0]
         fail fan[0] 3
         claim fan[1]
         ok fan[1]
         claim fan[2]
         ok fan[2]
         retry fan
         claim fan[0]
         ok fan[0]",
        "begin => job started, fan[0] queued, fan[1] queued, enqueue fan[0], enqueue fan[1]
         claim fan[0] => claimed fan[0]#1
         fail fan[0] 3 => fan[0] failed#1(exit_code), fan[0] dead(exit_code), fan[2] queued, enqueue fan[2]
         claim fan[1] => claimed fan[1]#1
         ok fan[1] => fan[1] succeeded
         claim fan[2] => claimed fan[2]#1
         ok fan[2] => fan[2] succeeded, fan dead(exit_code), sum skipped, job failed (task fan (#1) dead: exit_code), finish
         retry fan => job started, fan[0] queued, enqueue fan[0], ok: task run 101 queued again (attempt 2 next)
         claim fan[0] => claimed fan[0]#2
         ok fan[0] => fan[0] succeeded, fan succeeded, sum queued, enqueue sum",
    );
}

#[test]
fn cancelling_the_run_cancels_the_items_and_then_the_node() {
    check(
        FAN,
        "begin
         claim fan[0]
         cancel
         end fan[0] cancelled",
        "begin => job started, fan[0] queued, fan[1] queued, enqueue fan[0], enqueue fan[1]
         claim fan[0] => claimed fan[0]#1
         cancel => sum cancelled, fan[1] cancelled, fan[2] skipped, kill fan[0](cancelled), ok: job run j7 is being cancelled
         end fan[0] cancelled => fan[0] cancelled, fan cancelled, job cancelled, finish",
    );
}

#[test]
fn a_fanned_out_task_fires_its_transitions_once_its_items_ended() {
    let job = r#"
[jobs.j.tasks.fan]
run = "true"
for_each = ["a", "b"]
next = [{ on = "success", do = ["done"] }]
[jobs.j.tasks.done]
run = "true"
"#;
    check(
        job,
        "begin
         claim fan[0]
         ok fan[0]
         claim fan[1]
         ok fan[1]
         claim done
         ok done",
        "begin => job started, fan[0] queued, fan[1] queued, enqueue fan[0], enqueue fan[1]
         claim fan[0] => claimed fan[0]#1
         ok fan[0] => fan[0] succeeded
         claim fan[1] => claimed fan[1]#1
         ok fan[1] => fan[1] succeeded, fan succeeded, fan#1 -success-> done#1, done queued, enqueue done
         claim done => claimed done#1
         ok done => done succeeded, job succeeded, finish",
    );
}

#[test]
fn each_succeeded_item_of_a_compensated_task_is_undone_latest_first() {
    let job = r#"
[jobs.j.tasks.fan]
run = "true"
for_each = ["a", "b"]
compensate = "echo undo"
[jobs.j.tasks.last]
run = "false"
needs = ["fan"]
retry = { max_attempts = 1 }
"#;
    check(
        job,
        "begin
         claim fan[1]
         ok fan[1]
         claim fan[0]
         ok fan[0]
         claim last
         fail last 1
         claim ~fan[0]
         ok ~fan[0]
         claim ~fan[1]
         ok ~fan[1]",
        "begin => job started, fan[0] queued, fan[1] queued, enqueue fan[0], enqueue fan[1]
         claim fan[1] => claimed fan[1]#1
         ok fan[1] => fan[1] succeeded
         claim fan[0] => claimed fan[0]#1
         ok fan[0] => fan[0] succeeded, fan succeeded, last queued, enqueue last
         claim last => claimed last#1
         fail last 1 => last failed#1(exit_code), last dead(exit_code), ~fan[0] queued, enqueue ~fan[0]
         claim ~fan[0] => claimed ~fan[0]#1
         ok ~fan[0] => ~fan[0] succeeded, ~fan[1] queued, enqueue ~fan[1]
         claim ~fan[1] => claimed ~fan[1]#1
         ok ~fan[1] => ~fan[1] succeeded, job failed (task last (#2) dead: exit_code 1), finish",
    );
}

/// `start` → `fan` (three items, two at once) → `check`, which sends `fan` round again while
/// its output says so.
const LOOP: &str = r#"
[jobs.j.tasks.start]
run = "true"
next = [{ on = "success", do = ["fan"] }]
[jobs.j.tasks.fan]
run = "true"
for_each = ["a", "b", "c"]
for_each_concurrency = 2
retry = { max_attempts = 1 }
next = [{ on = "success", do = ["check"] }]
[jobs.j.tasks.check]
run = "true"
next = [{ on = "success", when = "outputs.again == 'yes'", do = ["fan"] }]
"#;

#[test]
fn each_iteration_of_a_looping_fanned_out_task_fans_out_on_its_own() {
    let s = check(
        LOOP,
        "begin
         claim start
         ok start
         claim fan[0]
         ok fan[0]
         claim fan[1]
         ok fan[1]
         claim fan[2]
         ok fan[2]
         claim check
         ok check again=yes
         claim fan#2[0]
         ok fan#2[0]
         claim fan#2[1]
         ok fan#2[1]
         claim fan#2[2]
         ok fan#2[2]
         claim check
         ok check again=no",
        "begin => job started, start queued, enqueue start
         claim start => claimed start#1
         ok start => start succeeded, start#1 -success-> fan#1, fan[0] queued, fan[1] queued, enqueue fan[0], enqueue fan[1]
         claim fan[0] => claimed fan[0]#1
         ok fan[0] => fan[0] succeeded, fan[2] queued, enqueue fan[2]
         claim fan[1] => claimed fan[1]#1
         ok fan[1] => fan[1] succeeded
         claim fan[2] => claimed fan[2]#1
         ok fan[2] => fan[2] succeeded, fan succeeded, fan#1 -success-> check#1, check queued, enqueue check
         claim check => claimed check#1
         ok check again=yes => check succeeded, check#1 -success-> fan#2, fan#2[0] queued, fan#2[1] queued, enqueue fan#2[0], enqueue fan#2[1]
         claim fan#2[0] => claimed fan#2[0]#1
         ok fan#2[0] => fan#2[0] succeeded, fan#2[2] queued, enqueue fan#2[2]
         claim fan#2[1] => claimed fan#2[1]#1
         ok fan#2[1] => fan#2[1] succeeded
         claim fan#2[2] => claimed fan#2[2]#1
         ok fan#2[2] => fan#2[2] succeeded, fan succeeded, fan#2 -success-> check#2, check queued, enqueue check
         claim check => claimed check#1
         ok check again=no => check succeeded, job succeeded, finish",
    );
    let items = |iteration: u32| s.tasks.iter().filter(|t| t.item_index.is_some() && t.iteration == iteration).count();
    assert_eq!((items(1), items(2)), (3, 3), "each iteration has items of its own");
    assert_eq!(s.fanouts.len(), 2, "one fan-out per reaching");
}

/// `list` → `fan` over `list`'s output `xs` (one attempt per item) → `sum`.
const FROM_LIST: &str = r#"
[jobs.j.tasks.list]
run = "true"
[jobs.j.tasks.fan]
run = "true"
needs = ["list"]
for_each = "{{ tasks.list.outputs.xs }}"
retry = { max_attempts = 1 }
[jobs.j.tasks.sum]
run = "true"
needs = ["fan"]
"#;

#[test]
fn retry_from_upstream_fans_out_again_over_the_new_list_reusing_each_items_run() {
    let s = check(
        FROM_LIST,
        r#"begin
         claim list
         ok list xs=["a","b","c"]
         claim fan[0]
         ok fan[0]
         claim fan[1]
         fail fan[1] 1
         claim fan[2]
         ok fan[2]
         from list
         claim list
         ok list xs=["x","y"]
         claim fan[0]
         ok fan[0]
         claim fan[1]
         ok fan[1]"#,
        r#"begin => job started, list queued, enqueue list
         claim list => claimed list#1
         ok list xs=["a","b","c"] => list succeeded, fan[0] queued, fan[1] queued, fan[2] queued, enqueue fan[0], enqueue fan[1], enqueue fan[2]
         claim fan[0] => claimed fan[0]#1
         ok fan[0] => fan[0] succeeded
         claim fan[1] => claimed fan[1]#1
         fail fan[1] 1 => fan[1] failed#1(exit_code), fan[1] dead(exit_code)
         claim fan[2] => claimed fan[2]#1
         ok fan[2] => fan[2] succeeded, fan dead(exit_code), sum skipped, job failed (task fan (#2) dead: exit_code), finish
         from list => job started, list queued, enqueue list, ok: job run j7 runs again from `list`: list, fan, sum (attempt numbers go on)
         claim list => claimed list#2
         ok list xs=["x","y"] => list succeeded, fan[2] skipped, fan[0] queued, fan[1] queued, enqueue fan[0], enqueue fan[1]
         claim fan[0] => claimed fan[0]#2
         ok fan[0] => fan[0] succeeded
         claim fan[1] => claimed fan[1]#2
         ok fan[1] => fan[1] succeeded, fan succeeded, sum queued, enqueue sum"#,
    );
    let items: Vec<(Option<&str>, TaskState, Option<FailReason>)> =
        s.tasks[3..].iter().map(|t| (t.item.as_deref(), t.state, t.reason)).collect();
    assert_eq!(
        items,
        [
            (Some(r#""x""#), TaskState::Succeeded, None),
            (Some(r#""y""#), TaskState::Succeeded, None),
            (Some(r#""c""#), TaskState::Skipped, Some(FailReason::NotInList)),
        ],
        "items 0 and 1 run again over the new list in their own task runs; item 2 is history"
    );
    let resumed = restarted(&s);
    assert_eq!(resumed.fanouts[&1].fan.total(), 2, "a resume counts only the items of the list in force");
}

#[test]
fn retry_from_a_fanned_out_task_runs_every_item_and_its_dependents_again() {
    check(
        &FROM_LIST.replace("\n[jobs.j.tasks.sum]", "\nfor_each_concurrency = 1\n[jobs.j.tasks.sum]"),
        r#"begin
         claim list
         ok list xs=["a","b"]
         claim fan[0]
         ok fan[0]
         claim fan[1]
         ok fan[1]
         claim sum
         ok sum
         from fan
         claim fan[0]
         ok fan[0]
         claim fan[1]
         ok fan[1]
         claim sum
         ok sum"#,
        r#"begin => job started, list queued, enqueue list
         claim list => claimed list#1
         ok list xs=["a","b"] => list succeeded, fan[0] queued, enqueue fan[0]
         claim fan[0] => claimed fan[0]#1
         ok fan[0] => fan[0] succeeded, fan[1] queued, enqueue fan[1]
         claim fan[1] => claimed fan[1]#1
         ok fan[1] => fan[1] succeeded, fan succeeded, sum queued, enqueue sum
         claim sum => claimed sum#1
         ok sum => sum succeeded, job succeeded, finish
         from fan => job started, fan[0] queued, enqueue fan[0], ok: job run j7 runs again from `fan`: fan, sum (attempt numbers go on)
         claim fan[0] => claimed fan[0]#2
         ok fan[0] => fan[0] succeeded, fan[1] queued, enqueue fan[1]
         claim fan[1] => claimed fan[1]#2
         ok fan[1] => fan[1] succeeded, fan succeeded, sum queued, enqueue sum
         claim sum => claimed sum#2
         ok sum => sum succeeded, job succeeded, finish"#,
    );
}

#[test]
fn a_resume_in_the_second_round_rebuilds_each_rounds_fan_out_on_its_own() {
    let mut s = new_run(LOOP);
    let mut driver = Driver::new();
    let mut run = |s: &mut RunState, line: &str| driver.line(s, line);
    let first_round = ["claim fan[0]", "ok fan[0]", "claim fan[1]", "ok fan[1]", "claim fan[2]", "ok fan[2]"];
    for line in ["begin", "claim start", "ok start"].into_iter().chain(first_round) {
        run(&mut s, line);
    }
    for line in ["claim check", "ok check again=yes", "claim fan#2[0]"] {
        run(&mut s, line);
    }
    let mut resumed = restarted(&s);
    let mut fans: Vec<(u32, usize, usize)> = resumed
        .fanouts
        .iter()
        .map(|(&node, n)| (resumed.tasks[node].iteration, n.fan.total(), n.fan.count(ItemState::Succeeded)))
        .collect();
    fans.sort_unstable();
    assert_eq!(fans, [(1, 3, 3), (2, 3, 0)]);
    let fx = run(&mut resumed, "ok fan#2[0]");
    assert_eq!(render(&resumed, &fx), "fan#2[0] succeeded, fan#2[2] queued, enqueue fan#2[2]");
}

#[test]
fn a_retried_dead_item_waits_for_a_slot_while_its_fan_out_runs() {
    let job = FAN.replace("max_attempts = 2", "max_attempts = 1");
    check(
        &job,
        "begin
         claim fan[0]
         fail fan[0] 3
         retry fan[0]
         claim fan[1]
         ok fan[1]
         claim fan[2]
         ok fan[2]
         claim fan[0]
         ok fan[0]",
        "begin => job started, fan[0] queued, fan[1] queued, enqueue fan[0], enqueue fan[1]
         claim fan[0] => claimed fan[0]#1
         fail fan[0] 3 => fan[0] failed#1(exit_code), fan[0] dead(exit_code), fan[2] queued, enqueue fan[2]
         retry fan[0] => ok: task run 101 waits for a for_each_concurrency slot (attempt 2 next)
         claim fan[1] => claimed fan[1]#1
         ok fan[1] => fan[1] succeeded, fan[0] queued, enqueue fan[0]
         claim fan[2] => claimed fan[2]#1
         ok fan[2] => fan[2] succeeded
         claim fan[0] => claimed fan[0]#2
         ok fan[0] => fan[0] succeeded, fan succeeded, sum queued, enqueue sum",
    );
}

/// `retry jN` of a fan-out whose items died names the node and its items; the node's retry is
/// its items', and each item is reopened and said once (it was said twice: "queued again" by
/// the node's retry, then "reopened with its fan-out" for itself).
#[test]
fn a_whole_run_retry_of_a_dead_fan_out_says_each_item_once() {
    let job = FAN.replace("max_attempts = 2", "max_attempts = 1").replace("for_each_concurrency = 2\n", "");
    let mut s = new_run(&job);
    let mut driver = Driver::new();
    for line in ["begin", "claim fan[0]", "claim fan[1]", "claim fan[2]", "fail fan[0] 3", "fail fan[1] 3", "ok fan[2]"]
    {
        driver.line(&mut s, line);
    }
    assert_eq!(s.job_run.state, JobState::Failed);
    let fx = driver.line(&mut s, "retry-all");
    let (a, b) = (id_of(&s, "fan[0]"), id_of(&s, "fan[1]"));
    let answer = format!("task run {a} queued again (attempt 2 next)\ntask run {b} queued again (attempt 2 next)");
    assert_eq!(fx.reply, Some(Ok(answer)));
    let state = |name: &str| s.tasks[s.idx(id_of(&s, name)).expect("known")].state;
    assert_eq!(
        [state("fan[0]"), state("fan[1]"), state("fan[2]")],
        [TaskState::Queued, TaskState::Queued, TaskState::Succeeded]
    );
}
