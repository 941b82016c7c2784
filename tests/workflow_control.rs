//! Workflow control (SPEC §2.2) on the real binary: `wait_for` and `gaffer signal`, `cache`.

mod support;

use std::time::Duration;

use support::{Project, Server, named, signal, wait_until};

const APPROVAL: &str = r#"
[jobs.publish.tasks.draft]
run = 'echo drafted'
[jobs.publish.tasks.ship]
needs = ["draft"]
wait_for = "approval"
run = 'echo shipped > shipped'
"#;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn signal_releases_a_waiting_task_on_a_server() {
    let p = Project::new(APPROVAL);
    let _server = Server::start(&p);
    assert!(p.run(&["submit", "publish"]).status.success());
    wait_until(Duration::from_secs(10), "ship to wait", || p.task("ship")["state"] == "waiting");
    assert_eq!(p.task("draft")["state"], "succeeded");
    assert!(!p.path().join("shipped").exists(), "nothing runs before the signal");
    let waiting = p.journal().into_iter().find(|e| e["event"] == "task.waiting").expect("task.waiting");
    assert_eq!(waiting["wait_for"], "approval");
    assert_eq!(waiting["task"], "ship");

    let wrong = p.run(&["signal", "j1", "aproval"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(stderr(&wrong).contains("nothing in job run j1 waits for `aproval`"), "{}", stderr(&wrong));
    assert!(stderr(&wrong).contains("waits for `approval`"), "names what does wait: {}", stderr(&wrong));
    assert_eq!(p.task("ship")["state"], "waiting", "a wrong name releases nothing");

    let out = p.run(&["signal", "j1", "approval"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("released ship"));
    wait_until(Duration::from_secs(10), "the run to finish", || p.json(&["jobs", "--json"])[0]["state"] == "succeeded");
    assert!(p.path().join("shipped").exists());
    let again = p.run(&["signal", "j1", "approval"]);
    assert_eq!(again.status.code(), Some(1), "nothing waits any more");
}

#[test]
fn wait_timeout_dead_letters_and_a_retry_waits_again() {
    let p =
        Project::new(&APPROVAL.replace("wait_for = \"approval\"", "wait_for = \"approval\"\nwait_timeout = \"2s\""));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1, "the run fails when the wait times out");
    let dead = named(&events, "task.dead_lettered");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "wait_timeout");
    let ship = p.task("ship");
    assert_eq!((ship["state"].as_str(), ship["reason"].as_str()), (Some("dead"), Some("wait_timeout")));

    let _server = Server::start(&p);
    let id = ship["id"].to_string();
    let retried = p.run(&["retry", &id]);
    assert!(String::from_utf8_lossy(&retried.stdout).contains("waits for its signal again"), "{}", stderr(&retried));
    assert_eq!(p.task("ship")["state"], "waiting", "never approved, so it waits again instead of running");
    let out = p.run(&["signal", &id, "approval"]);
    assert!(out.status.success(), "a task run id works too: {}", stderr(&out));
    wait_until(Duration::from_secs(10), "the run to finish", || p.json(&["jobs", "--json"])[0]["state"] == "succeeded");
}

#[test]
fn a_signal_sent_while_nothing_runs_applies_at_the_next_start() {
    let p = Project::new(APPROVAL);
    let mut server = Server::start(&p);
    assert!(p.run(&["submit", "publish"]).status.success());
    wait_until(Duration::from_secs(10), "ship to wait", || p.task("ship")["state"] == "waiting");
    signal(server.child.id(), "TERM");
    assert!(server.child.wait().expect("serve ends").success());

    let out = p.run(&["signal", "j1", "approval"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("takes effect when gaffer next starts"));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "the resumed run is released and finishes");
    assert!(p.path().join("shipped").exists());
    assert!(named(&events, "job.started").is_empty(), "resumed j1, no second run");
    assert_eq!(p.json(&["jobs", "--json"]).as_array().map(Vec::len), Some(1));
}

#[test]
fn signal_refuses_runs_where_nothing_waits() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'true'\n");
    assert_eq!(p.run_json(&[]).0, 0);
    let out = p.run(&["signal", "j1", "approval"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nothing in job run j1 is waiting"), "{}", stderr(&out));
    let unknown = p.run(&["signal", "j9", "approval"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("no job run j9"), "{}", stderr(&unknown));
}

const CACHED: &str = r#"
[jobs.fetch]
params = { url = "a" }
[jobs.fetch.tasks.get]
run = 'echo "$URL" >> runs.log; echo "output body=got-$URL" >&3'
env = { URL = "{{ params.url }}" }
cache = { key = "{{ params.url }}", ttl = "1h" }
[jobs.fetch.tasks.use]
needs = ["get"]
run = 'echo "$BODY" >> used.log'
env = { BODY = "{{ tasks.get.outputs.body }}" }
"#;

fn lines(p: &Project, file: &str) -> Vec<String> {
    std::fs::read_to_string(p.path().join(file)).unwrap_or_default().lines().map(String::from).collect()
}

#[test]
fn a_cached_task_is_reused_within_its_ttl_and_its_outputs_flow_on() {
    let p = Project::new(CACHED);
    assert_eq!(p.run_json(&[]).0, 0);
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0);
    assert_eq!(lines(&p, "runs.log"), ["a"], "the second run reused the first one's result");
    assert_eq!(lines(&p, "used.log"), ["got-a", "got-a"], "and its outputs reached the dependent");
    let cached: Vec<_> = named(&events, "task.succeeded").into_iter().filter(|e| e["cached"] == true).collect();
    assert_eq!(cached.len(), 1);
    assert_eq!((cached[0]["task"].as_str(), cached[0]["cost_usd"].as_f64()), (Some("get"), Some(0.0)));
    assert!(named(&events, "task.started").iter().all(|e| e["task"] != "get"), "no process for a cached task");
    let reused = p.tasks().into_iter().rfind(|t| t["task"] == "get").expect("get");
    assert_eq!(reused["attempt"], 0);
    assert!(reused["detail"].as_str().is_some_and(|d| d.starts_with("cached: reused task run")), "{reused}");

    assert_eq!(p.run_json(&["--param", "url=b"]).0, 0);
    assert_eq!(lines(&p, "runs.log"), ["a", "b"], "another key runs again");
}

#[test]
fn a_cache_entry_past_its_ttl_is_not_reused() {
    let p = Project::new(&CACHED.replace("ttl = \"1h\"", "ttl = \"300ms\""));
    assert_eq!(p.run_json(&[]).0, 0);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(p.run_json(&[]).0, 0);
    assert_eq!(lines(&p, "runs.log"), ["a", "a"]);
}

#[test]
fn cache_needs_a_key_and_a_ttl() {
    let p = Project::new(
        "[jobs.j.tasks.t]\nrun = 'true'\ncache = { ttl = \"1h\" }\n[jobs.j.tasks.u]\nrun = 'true'\ncache = { key = \"{{ tasks.t.outputs.x }}\", ttl = \"1h\" }\n",
    );
    let out = p.run(&["validate", "workflow.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("workflow.toml:3:9: `cache` needs a `key`"), "{text}");
    assert!(
        text.contains("workflow.toml:6:17: template refers to task `t`, which `u` does not depend on"),
        "a key may only use what the task needs: {text}"
    );
}

/// A signal sent while gaffer was down is applied before the timers of the resumed runs fire:
/// it beats a `wait_timeout` that expired meanwhile.
#[test]
fn an_offline_signal_beats_a_wait_timeout_that_expired_while_gaffer_was_down() {
    let p =
        Project::new(&APPROVAL.replace("wait_for = \"approval\"", "wait_for = \"approval\"\nwait_timeout = \"1s\""));
    let mut server = Server::start(&p);
    assert!(p.run(&["submit", "publish"]).status.success());
    wait_until(Duration::from_secs(10), "ship to wait", || p.task("ship")["state"] == "waiting");
    signal(server.child.id(), "TERM");
    assert!(server.child.wait().expect("serve ends").success());
    assert!(p.run(&["signal", "j1", "approval"]).status.success());
    std::thread::sleep(Duration::from_millis(1200));
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 0, "released, not dead-lettered: {}", p.task("ship"));
    assert!(p.path().join("shipped").exists());
}

#[test]
fn serve_removes_cache_entries_past_their_ttl() {
    let p = Project::new(&CACHED.replace("ttl = \"1h\"", "ttl = \"200ms\""));
    assert_eq!(p.run_json(&[]).0, 0);
    let entries =
        || gaffer::store::open_reader(&p.state_dir()).expect("reader").expired_cache_keys(u64::MAX).expect("keys");
    assert_eq!(entries(), ["fetch/get/a"], "stored under job/task/key");
    std::thread::sleep(Duration::from_millis(300));
    let server = Server::start(&p);
    wait_until(Duration::from_secs(10), "the retention sweep", || {
        gaffer::store::open_reader(&p.state_dir())
            .is_ok_and(|r| r.expired_cache_keys(u64::MAX).is_ok_and(|k| k.is_empty()))
    });
    drop(server);
}

/// One worker, so `bad` (higher priority) runs and dies before the independent branch starts.
const SIBLINGS: &str = r#"
[settings]
workers = 1
[jobs.j.tasks.bad]
priority = 90
retry = { max_attempts = 1 }
run = 'exit 3'
[jobs.j.tasks.after_bad]
needs = ["bad"]
run = 'touch after-bad'
[jobs.j.tasks.branch]
priority = 10
run = 'touch branch'
[jobs.j.tasks.branch_next]
needs = ["branch"]
run = 'touch branch-next'
"#;

#[test]
fn an_independent_branch_still_runs_after_a_sibling_dies() {
    let p = Project::new(SIBLINGS);
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1, "the job run fails: bad is dead");
    assert_eq!(p.task("bad")["state"], "dead");
    assert_eq!(p.task("after_bad")["state"], "skipped", "what needs the dead task is skipped");
    assert!(!p.path().join("after-bad").exists());
    for (task, file) in [("branch", "branch"), ("branch_next", "branch-next")] {
        assert_eq!(p.task(task)["state"], "succeeded", "{task} is independent of bad");
        assert!(p.path().join(file).exists(), "{task} ran");
    }
    let failed = named(&events, "job.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["reason"], "task bad (#1) dead: exit_code 3");
    let order: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    let dead_at = order.iter().position(|e| *e == "task.dead_lettered").expect("bad dead-lettered");
    let started: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["event"] == "task.started" && e["task"] != "bad")
        .map(|(at, _)| at)
        .collect();
    assert!(started.iter().all(|&at| at > dead_at), "the branch started after bad had died: {order:?}");
}

#[test]
fn with_fail_fast_nothing_new_starts_after_a_sibling_dies() {
    let p = Project::new(&SIBLINGS.replace("[jobs.j.tasks.bad]", "[jobs.j]\nfail_fast = true\n[jobs.j.tasks.bad]"));
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 1);
    assert_eq!(p.task("bad")["state"], "dead");
    for task in ["after_bad", "branch", "branch_next"] {
        assert_eq!(p.task(task)["state"], "skipped", "{task} never starts once bad is dead");
    }
    for file in ["after-bad", "branch", "branch-next"] {
        assert!(!p.path().join(file).exists(), "{file} was not made");
    }
}

/// The task runs of each task, in the order they were made: `(task, iteration, state)`.
fn task_runs(p: &Project) -> Vec<(String, u64, String)> {
    let mut runs: Vec<(u64, String, String)> = p
        .tasks()
        .iter()
        .map(|t| {
            (
                t["id"].as_u64().unwrap_or(0),
                t["task"].as_str().unwrap_or("").into(),
                t["state"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    runs.sort();
    let mut seen: std::collections::HashMap<String, u64> = Default::default();
    runs.into_iter()
        .map(|(_, task, state)| {
            let n = seen.entry(task.clone()).or_default();
            *n += 1;
            (task, *n, state)
        })
        .collect()
}

/// How many task runs of `task` ended in `state`.
fn count(p: &Project, task: &str, state: &str) -> usize {
    task_runs(p).iter().filter(|(t, _, s)| t == task && s == state).count()
}

/// `(from task, on, to, whether a task run started)` of every `transition.fired`, in order.
fn fired(events: &[serde_json::Value]) -> Vec<(String, String, String, bool)> {
    named(events, "transition.fired")
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (s("task"), s("on"), s("to"), e["task_run"].is_u64())
        })
        .collect()
}

// Cases modelled on StackStorm Orquesta's conducting tests (sequential, split, join, decision,
// error handling, cycles), through the real binary.

#[test]
fn transitions_run_tasks_in_sequence() {
    let p = Project::new(
        r#"
[jobs.seq.tasks.one]
run = 'echo one >> order'
next = [{ on = "success", do = ["two"] }]
[jobs.seq.tasks.two]
run = 'echo two >> order'
next = [{ on = "success", do = ["three"] }]
[jobs.seq.tasks.three]
run = 'echo three >> order'
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(p.path().join("order")).expect("order"), "one\ntwo\nthree\n");
    let want =
        [("one", "two"), ("two", "three")].map(|(f, t)| (f.to_string(), "success".to_string(), t.to_string(), true));
    assert_eq!(fired(&events), want);
    let e = &named(&events, "transition.fired")[0];
    assert!(e["from_task_run"].is_u64() && e["task_run"].is_u64(), "{e}");
    assert!(named(&events, "task.started").iter().all(|e| e["iteration"] == 1), "task events carry iteration");
}

#[test]
fn a_split_runs_every_target_and_a_join_all_waits_for_both_branches() {
    let p = Project::new(
        r#"
[jobs.split.tasks.start]
run = 'true'
next = [{ on = "success", do = ["left", "right"] }]
[jobs.split.tasks.left]
run = 'touch left'
next = [{ on = "success", do = ["merge"] }]
[jobs.split.tasks.right]
run = 'sleep 0.2; touch right'
next = [{ on = "success", do = ["merge"] }]
[jobs.split.tasks.merge]
join = "all"
run = 'test -e left && test -e right && echo merged >> merged'
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    assert_eq!(
        std::fs::read_to_string(p.path().join("merged")).expect("merged"),
        "merged\n",
        "merge ran once, after both"
    );
    assert_eq!(count(&p, "merge", "succeeded"), 1);
    let to_merge: Vec<bool> = fired(&events).into_iter().filter(|f| f.2 == "merge").map(|f| f.3).collect();
    assert_eq!(to_merge, [false, true], "the first arrival waits, the second starts merge");
}

#[test]
fn a_join_of_n_fires_with_a_failed_branch_and_ignores_later_arrivals() {
    let p = Project::new(
        r#"
[jobs.j.tasks.start]
run = 'true'
next = [{ on = "success", do = ["a", "b", "c"] }]
[jobs.j.tasks.a]
run = 'true'
next = [{ on = "success", do = ["two"] }]
[jobs.j.tasks.b]
retry = { max_attempts = 1 }
run = 'exit 1'
next = [{ on = "success", do = ["two"] }]
[jobs.j.tasks.c]
run = 'sleep 0.3'
next = [{ on = "success", do = ["two"] }]
[jobs.j.tasks.two]
join = 2
run = 'echo ran >> two'
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1, "b is dead: an unhandled failure fails the run");
    assert_eq!(p.task("b")["state"], "dead");
    assert_eq!(std::fs::read_to_string(p.path().join("two")).expect("two"), "ran\n", "two ran once");
    assert_eq!(count(&p, "two", "succeeded"), 1);
    assert_eq!(fired(&events).iter().filter(|f| f.2 == "two").count(), 2, "a and c arrived; b fired nothing");
}

#[test]
fn a_join_that_cannot_be_satisfied_is_skipped_with_join_unsatisfied() {
    let p = Project::new(
        r#"
[jobs.j.tasks.a]
run = 'true'
next = [{ on = "success", do = ["both"] }]
[jobs.j.tasks.b]
retry = { max_attempts = 1 }
run = 'exit 1'
next = [{ on = "success", do = ["both"] }]
[jobs.j.tasks.both]
join = "all"
run = 'touch both'
"#,
    );
    assert_eq!(p.run_json(&[]).0, 1);
    let both = p.task("both");
    assert_eq!(
        (both["state"].as_str(), both["reason"].as_str()),
        (Some("skipped"), Some("join_unsatisfied")),
        "{both}"
    );
    assert!(!p.path().join("both").exists());
}

#[test]
fn when_decides_which_branch_runs() {
    let p = Project::new(
        r#"
[jobs.j]
params = { size = "big" }
[jobs.j.tasks.measure]
args = ["sh", "-c", "echo output size={{ params.size }} >&3; exit 4"]
retry = { max_attempts = 1 }
next = [
  { on = "failure", when = "exit_code == 4 and outputs.size == 'big'", do = ["big"] },
  { on = "failure", when = "outputs.size == 'small'", do = ["small"] },
  { on = "failure", when = "attempt == 1 and params.size == 'big'", do = ["also"] },
]
[jobs.j.tasks.big]
run = 'touch big'
[jobs.j.tasks.small]
run = 'touch small'
[jobs.j.tasks.also]
run = 'touch also'
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "the failure is handled: {events:#?}");
    assert!(p.path().join("big").exists() && p.path().join("also").exists(), "every matching transition fires");
    assert!(!p.path().join("small").exists(), "a transition whose when is false does not");
    assert!(p.tasks().iter().all(|t| t["task"] != "small"), "not reached: no task run (SPEC §2.2)");
    assert_eq!(p.task("measure")["state"], "failed");
}

#[test]
fn an_exit_code_handled_by_a_failure_transition_ends_failed_and_the_run_succeeds() {
    let p = Project::new(
        r#"
[jobs.j.tasks.deploy]
retry = { max_attempts = 2, initial_interval = "100ms" }
run = 'exit 3'
next = [{ on = "failure", do = ["rollback"] }]
[jobs.j.tasks.rollback]
run = 'touch rolled-back'
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "a handled failure does not fail the run");
    assert_eq!(p.task("deploy")["state"], "failed");
    assert!(p.path().join("rolled-back").exists());
    let names: Vec<&str> = events
        .iter()
        .filter(|e| e["task"] == "deploy")
        .filter_map(|e| e["event"].as_str())
        .filter(|n| *n != "task.queued" && *n != "task.started")
        .collect();
    assert_eq!(
        names,
        ["task.failed", "task.retry_scheduled", "task.failed", "task.handled", "transition.fired"],
        "retries first, then the failure is handled"
    );
    assert!(named(&events, "task.dead_lettered").is_empty());
    let dlq = p.run(&["dlq"]);
    assert!(String::from_utf8_lossy(&dlq.stdout).contains("no dead letters"), "not a dead letter");
    // Headless, the handled end has its own line, as a dead letter's does (it had none).
    let out = p.run(&["run", "workflow.toml", "--headless", "--state-dir", "human"]);
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(human.contains("j.deploy") && human.contains("failed, handled by a transition"), "{human}");
}

const REVIEW_LOOP: &str = r#"
[jobs.j.tasks.write]
run = 'echo draft'
next = [{ on = "success", do = ["review"] }]
[jobs.j.tasks.review]
max_iterations = 5
run = 'n=$(cat rounds 2>/dev/null || echo 0); n=$((n+1)); echo $n > rounds; if [ $n -ge APPROVE_AT ]; then echo output verdict=approved >&3; else echo output verdict=changes >&3; fi'
next = [
  { on = "success", when = "outputs.verdict == 'approved'", do = ["ship"] },
  { on = "success", when = "outputs.verdict != 'approved'", do = ["review"] },
]
[jobs.j.tasks.ship]
run = 'touch shipped'
"#;

#[test]
fn a_loop_ends_when_an_output_says_so() {
    let p = Project::new(&REVIEW_LOOP.replace("APPROVE_AT", "3"));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    assert_eq!(count(&p, "review", "succeeded"), 3, "three rounds of review");
    assert!(p.path().join("shipped").exists());
    let iterations: Vec<u64> = named(&events, "task.started")
        .iter()
        .filter(|e| e["task"] == "review")
        .filter_map(|e| e["iteration"].as_u64())
        .collect();
    assert_eq!(iterations, [1, 2, 3]);
}

#[test]
fn a_loop_past_max_iterations_fails_the_run_with_iteration_limit() {
    let p = Project::new(&REVIEW_LOOP.replace("APPROVE_AT", "99"));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1);
    assert_eq!(count(&p, "review", "succeeded"), 5, "max_iterations runs, then no more");
    let failed = named(&events, "job.failed");
    assert_eq!(failed[0]["reason"], "iteration_limit");
    assert!(!p.path().join("shipped").exists());
}

/// kill -9 while the second review of a loop runs: the restart resumes the same job run, the
/// interrupted review is retried as the same iteration, and the loop goes on to its end.
#[test]
fn a_loop_killed_mid_iteration_resumes_where_it_was() {
    let text = REVIEW_LOOP.replace("APPROVE_AT", "3").replace(
        "run = 'n=$(cat rounds",
        // The second round's first attempt sleeps until the kill; the restart kills it (its
        // group outlives gaffer's kill -9) before it could count a round.
        "retry = { max_attempts = 3, initial_interval = \"100ms\" }\nrun = 'if [ \"$(cat rounds)\" = 1 ] && [ $GAFFER_ATTEMPT = 1 ]; then sleep 30; fi; n=$(cat rounds",
    );
    let p = Project::new(&text);
    let mut child = p.spawn_run(&[]);
    let rounds = p.path().join("rounds");
    wait_until(Duration::from_secs(20), "the first review to finish", || {
        std::fs::read_to_string(&rounds).is_ok_and(|t| t.trim() == "1")
    });
    // By iteration: "a review running" alone also holds in the moment the first one has
    // counted its round but its success is not committed yet — a kill then retries it, which
    // counts a round more (what at-least-once means, and what CI once hit).
    wait_until(Duration::from_secs(20), "the second review to start", || {
        let tasks = p.tasks();
        let review = |iteration: u64, state: &str| {
            tasks.iter().any(|t| t["task"] == "review" && t["iteration"] == iteration && t["state"] == state)
        };
        review(1, "succeeded")
            && review(2, "running")
            && std::fs::read_to_string(&rounds).is_ok_and(|t| t.trim() == "1")
    });
    child.kill().expect("kill -9");
    let _ = child.wait();

    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "the restart finishes the loop: {events:#?}");
    assert_eq!(p.json(&["jobs", "--json"]).as_array().map(Vec::len), Some(1), "resumed, not started again");
    assert_eq!(count(&p, "review", "succeeded"), 3, "{:?}", task_runs(&p));
    assert_eq!(count(&p, "ship", "succeeded"), 1);
    let iterations: Vec<u64> = named(&events, "task.succeeded")
        .iter()
        .filter(|e| e["task"] == "review")
        .filter_map(|e| e["iteration"].as_u64())
        .collect();
    assert_eq!(iterations, [2, 3], "after the restart: the second review, then the third");
}

/// `show jN` lists a loop's task runs in the order they ran and the transition that reached
/// each; `tasks --json` carries it as `reached_by`.
#[test]
fn show_lists_a_loop_in_run_order_with_the_transitions_taken() {
    let p = Project::new(
        r#"
[jobs.j.tasks.write]
run = 'echo draft'
next = [{ on = "success", do = ["review"] }]
[jobs.j.tasks.review]
max_iterations = 3
run = 'n=$(cat rounds 2>/dev/null || echo 0); n=$((n+1)); echo $n > rounds; if [ $n -ge 2 ]; then echo output verdict=approved >&3; else echo output verdict=changes >&3; fi'
next = [
  { on = "success", when = "outputs.verdict == 'approved'", do = ["ship"] },
  { on = "success", when = "outputs.verdict != 'approved'", do = ["revise"] },
]
[jobs.j.tasks.revise]
run = 'echo revised'
next = [{ on = "always", do = ["review"] }]
[jobs.j.tasks.ship]
run = 'touch shipped'
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");

    let tasks = p.tasks();
    let id_of = |task: &str, iteration: u64| {
        tasks
            .iter()
            .find(|t| t["task"] == task && t["iteration"] == iteration)
            .and_then(|t| t["id"].as_u64())
            .unwrap_or_else(|| panic!("no {task}#{iteration}"))
    };
    let reached_by = |task: &str, iteration: u64| {
        tasks.iter().find(|t| t["task"] == task && t["iteration"] == iteration).map(|t| t["reached_by"].clone())
    };
    assert_eq!(reached_by("write", 1), Some(serde_json::Value::Null), "started by the job run, not a transition");
    let want = |from: u64, on: &str| Some(serde_json::json!({"from_task_run": from, "on": on}));
    assert_eq!(reached_by("review", 1), want(id_of("write", 1), "success"));
    assert_eq!(reached_by("revise", 1), want(id_of("review", 1), "success"));
    assert_eq!(reached_by("review", 2), want(id_of("revise", 1), "always"));
    assert_eq!(reached_by("ship", 1), want(id_of("review", 2), "success"));

    let out = p.run(&["show", "j1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> =
        stdout.lines().filter_map(|l| l.split_whitespace().nth(2)).filter(|name| name.starts_with("j.")).collect();
    assert_eq!(rows, ["j.write", "j.review", "j.revise", "j.review#2", "j.ship"], "in run order:\n{stdout}");
    let arrows: Vec<String> = stdout
        .lines()
        .skip_while(|l| *l != "transitions:")
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        arrows,
        [
            "review ← write (success)",
            "revise ← review (success)",
            "review#2 ← revise (always)",
            "ship ← review#2 (success)"
        ],
        "{stdout}"
    );
}
