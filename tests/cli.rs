//! The real binary on real workflow files, as a user runs it.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::{Project, Server, alive, named, signal, wait_until};

const RETRY_FAST: &str = r#"retry = { max_attempts = 3, initial_interval = "100ms", backoff = 1.0, jitter = 0.0 }"#;

#[test]
fn retries_then_succeeds() {
    let p = Project::new(&format!(
        r#"
[defaults]
{RETRY_FAST}
[jobs.j.tasks.flaky]
run = 'test "$GAFFER_ATTEMPT" -ge 2 || exit 7'
"#
    ));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    let failed = named(&events, "task.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["exit_code"], 7);
    assert_eq!(failed[0]["reason"], "exit_code");
    assert_eq!(named(&events, "task.retry_scheduled")[0]["next_attempt"], 2);
    assert_eq!(named(&events, "task.succeeded")[0]["attempt"], 2);
    assert_eq!(p.task("flaky")["state"], "succeeded");
}

#[test]
fn dead_letter_skips_dependents_until_retried() {
    let p = Project::new(&format!(
        r#"
[defaults]
{RETRY_FAST}
[jobs.j.tasks.fails]
retry = {{ max_attempts = 2 }}
run = 'test -e fixed || exit 1'
[jobs.j.tasks.after]
needs = ["fails"]
run = "true"
[jobs.j.tasks.independent]
run = "true"
"#
    ));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1);
    assert_eq!(named(&events, "task.dead_lettered").len(), 1);
    assert_eq!(named(&events, "job.failed")[0]["reason"].as_str().map(|r| r.contains("fails")), Some(true));
    assert_eq!(p.task("fails")["state"], "dead");
    assert_eq!(p.task("fails")["attempt"], 2);
    assert_eq!(p.task("after")["state"], "skipped");
    let dlq = p.json(&["dlq", "list", "--json"]);
    assert_eq!(dlq.as_array().map(Vec::len), Some(1));

    // Fix the cause, retry while no instance runs: it takes effect at the next start.
    std::fs::write(p.path().join("fixed"), "").expect("fix");
    let id = p.task("fails")["id"].to_string();
    let out = p.run(&["retry", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("next starts"));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    let fails = p.task("fails");
    assert_eq!(fails["state"], "succeeded");
    assert_eq!(fails["attempt"], 3, "attempt numbers keep counting up");
    assert_eq!(p.task("after")["state"], "succeeded");
    assert_eq!(p.json(&["jobs", "--json"])[0]["state"], "succeeded");
}

#[test]
fn outputs_flow_through_env_and_stdin() {
    let p = Project::new(
        r#"
[jobs.j]
params = { who = "world" }
[jobs.j.tasks.make]
run = '''echo "output greeting=hello $WHO" >&3; printf 'output poem<<EOF\nline one\nline two\nEOF\n' >&3'''
env = { WHO = "{{ params.who }}" }
[jobs.j.tasks.use]
needs = ["make"]
run = 'echo "output seen=$GREETING|$(cat)" >&3'
env = { GREETING = "{{ tasks.make.outputs.greeting }}" }
stdin = "{{ tasks.make.outputs.poem }}"
"#,
    );
    let (code, _) = p.run_json(&["--param", "who=gaffer"]);
    assert_eq!(code, 0);
    assert_eq!(p.task("make")["outputs"]["poem"], "line one\nline two");
    assert_eq!(p.task("use")["outputs"]["seen"], "hello gaffer|line one");
}

#[test]
fn watchdog_kills_a_silent_task_and_its_grandchildren() {
    let p = Project::new(
        r#"
[jobs.j.tasks.silent]
heartbeat_timeout = "1s"
retry = { max_attempts = 1 }
run = 'sleep 300 & echo $! > grandchild.pid; echo started; sleep 300'
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1);
    assert_eq!(named(&events, "task.failed")[0]["reason"], "heartbeat_timeout");
    assert_eq!(named(&events, "task.dead_lettered")[0]["reason"], "heartbeat_timeout");
    assert!(!named(&events, "worker.restarted").is_empty(), "the worker that ran it is restarted");
    let pid: i32 =
        std::fs::read_to_string(p.path().join("grandchild.pid")).expect("pid file").trim().parse().expect("pid");
    wait_until(Duration::from_secs(2), "the grandchild to be gone", || !alive(pid));
}

#[test]
fn timeout_kills_and_retries() {
    let p = Project::new(
        r#"
[jobs.j.tasks.slow]
timeout = "1s"
retry = { max_attempts = 2, initial_interval = "100ms" }
run = 'test "$GAFFER_ATTEMPT" -ge 2 || exec sleep 300'
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0);
    assert_eq!(named(&events, "task.failed")[0]["reason"], "timeout");
    assert_eq!(named(&events, "task.failed")[0]["signal"], 15);
}

#[test]
fn kill_9_mid_run_then_restart_finishes_everything() {
    let mut workflow = String::from(
        "[settings]\nworkers = 4\n[defaults]\nretry = { max_attempts = 5, initial_interval = \"100ms\" }\n",
    );
    for i in 0..16 {
        workflow.push_str(&format!("[jobs.j.tasks.t{i}]\nrun = 'echo $GAFFER_TASK_RUN_ID >> starts.log; sleep 0.4; echo $GAFFER_TASK_RUN_ID >> done.log'\n"));
    }
    let p = Project::new(&workflow);
    let mut child = p.spawn_run(&[]);
    let done = p.path().join("done.log");
    wait_until(Duration::from_secs(20), "a few tasks to finish", || {
        std::fs::read_to_string(&done).is_ok_and(|t| t.lines().count() >= 5)
    });
    child.kill().expect("kill -9");
    let _ = child.wait();

    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "the restart finishes the run: {events:#?}");
    let tasks = p.tasks();
    assert_eq!(tasks.len(), 16, "no task run lost, none added");
    assert!(tasks.iter().all(|t| t["state"] == "succeeded"), "{tasks:#?}");
    assert_eq!(
        p.json(&["jobs", "--json"]).as_array().map(Vec::len),
        Some(1),
        "the unfinished run was resumed, not started again"
    );
    let interrupted = named(&events, "task.failed").iter().filter(|e| e["reason"] == "interrupted").count();
    assert!(interrupted <= 4, "at most the tasks in flight were interrupted: {interrupted}");
    let completions = std::fs::read_to_string(&done).expect("done.log");
    let mut count: HashMap<&str, usize> = HashMap::new();
    for line in completions.lines() {
        *count.entry(line).or_default() += 1;
    }
    assert_eq!(count.len(), 16, "every task completed");
    let duplicates: usize = count.values().map(|n| n - 1).sum();
    assert!(duplicates <= 4, "duplicates ({duplicates}) are at most the tasks in flight");
}

#[test]
fn one_slot_queue_starts_by_priority() {
    let p = Project::new(
        r#"
[settings]
workers = 1
[jobs.j.tasks.low]
priority = 10
run = "true"
[jobs.j.tasks.high]
priority = 90
run = "true"
[jobs.j.tasks.mid]
priority = 50
run = "true"
[jobs.j.tasks.mid2]
priority = 50
run = "true"
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0);
    let order: Vec<&str> = named(&events, "task.started").iter().filter_map(|e| e["task"].as_str()).collect();
    assert_eq!(order, ["high", "mid", "mid2", "low"], "priority first, ties by enqueue order");
}

#[test]
fn concurrency_never_exceeds_the_cap() {
    let mut workflow = String::from("[settings]\nworkers = 4\n[queues.narrow]\nconcurrency = 2\n");
    for i in 0..10 {
        workflow.push_str(&format!(
            "[jobs.j.tasks.t{i}]\nqueue = \"narrow\"\nrun = 'echo + >> trace; sleep 0.15; echo - >> trace'\n"
        ));
    }
    let p = Project::new(&workflow);
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 0);
    let trace = std::fs::read_to_string(p.path().join("trace")).expect("trace");
    let (mut now, mut peak) = (0i32, 0i32);
    for line in trace.lines() {
        now += if line == "+" { 1 } else { -1 };
        peak = peak.max(now);
    }
    assert_eq!(peak, 2, "the cap is reached and never exceeded");
}

#[test]
fn cost_is_recorded_to_the_micro_dollar() {
    let p = Project::new(
        r#"
[pricing."house-model"]
input_per_mtok = 2.00
output_per_mtok = 8.00
[jobs.j.tasks.spend]
run = '''echo "cost usd=0.000123" >&3; echo "cost usd=0.000123 model=x" >&3; echo "cost input_tokens=1000 output_tokens=500 model=house-model" >&3; echo "cost usd=-5" >&3; echo "cost usd=NaN" >&3'''
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0);
    assert_eq!(named(&events, "task.cost").len(), 3, "garbage cost lines are ignored");
    let spend = p.task("spend");
    assert_eq!(spend["cost_usd"].to_string(), "0.006246", "0.000123 × 2 + 1000 × $2/M + 500 × $8/M");
    assert_eq!(spend["input_tokens"], 1000);
    let cost = p.json(&["cost", "--by", "model", "--json"]);
    assert_eq!(cost["total_usd"].to_string(), "0.006246");
    let log = std::fs::read_to_string(p.state_dir().join("logs/1/1.1.log")).expect("log");
    assert!(log.contains("warning"), "malformed lines are logged as warnings: {log}");
}

#[test]
fn job_budget_stops_spending() {
    let p = Project::new(
        r#"
[jobs.j]
budget_usd = 0.01
[jobs.j.tasks.expensive]
run = 'echo "cost usd=0.02" >&3; sleep 30'
[jobs.j.tasks.later]
needs = ["expensive"]
run = "true"
"#,
    );
    let started = std::time::Instant::now();
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1);
    assert!(started.elapsed() < Duration::from_secs(10), "the running attempt was cancelled");
    assert_eq!(named(&events, "budget.exceeded")[0]["scope"], "job");
    assert_eq!(named(&events, "job.failed")[0]["reason"], "budget");
    assert_eq!(p.task("later")["state"], "skipped");
}

/// An agent's JSON result carries its cost and is read once the process has exited 0: the
/// work is done and paid for. Crossing the budget with it keeps the result (the job run still
/// fails, nothing new starts) instead of dead-lettering work that a retry would pay for again.
#[test]
fn the_attempt_that_crosses_the_budget_as_it_finishes_keeps_its_result() {
    let p = Project::new(
        r#"
[jobs.j]
budget_usd = 0.10
[jobs.j.tasks.agent]
cost = "claude-json"
run = 'echo "output answer=42" >&3; echo "{\"type\":\"result\",\"result\":\"42\",\"total_cost_usd\":0.12}"'
[jobs.j.tasks.later]
needs = ["agent"]
run = 'true'
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1, "the job run still fails: its budget is spent");
    let agent = p.task("agent");
    assert_eq!(
        (agent["state"].as_str(), agent["outputs"]["answer"].as_str()),
        (Some("succeeded"), Some("42")),
        "{agent}"
    );
    assert_eq!(named(&events, "job.failed")[0]["reason"], "budget");
    assert_eq!(p.task("later")["state"], "skipped", "nothing new starts past the budget");
}

#[test]
fn cancel_a_running_task_from_another_terminal() {
    let p = Project::new("[jobs.j.tasks.long]\nrun = 'echo $$ > leader.pid; sleep 300'\n");
    let child = p.spawn_run(&[]);
    let pid_file = p.path().join("leader.pid");
    wait_until(Duration::from_secs(10), "the task to start", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|t| t.ends_with('\n'))
    });
    let leader: i32 = std::fs::read_to_string(&pid_file).expect("pid").trim().parse().expect("pid");
    let out = p.run(&["cancel", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = child.wait_with_output().expect("run ends");
    assert_eq!(out.status.code(), Some(1));
    assert!(!alive(leader));
    assert_eq!(p.task("long")["state"], "cancelled");
}

#[test]
fn sigint_stops_gracefully_and_a_restart_resumes() {
    let p = Project::new("[jobs.j.tasks.long]\nrun = 'test -e go || { touch started; sleep 300; }'\n");
    let child = p.spawn_run(&[]);
    wait_until(Duration::from_secs(10), "the task to start", || p.path().join("started").exists());
    signal(child.id(), "INT");
    let out = child.wait_with_output().expect("run ends");
    assert_eq!(out.status.code(), Some(130));
    let long = p.task("long");
    assert_eq!(long["state"], "queued", "interrupted work waits for the next start");
    let shown = p.json(&["show", "1", "--json"]);
    assert_eq!(shown["attempts"][0]["reason"], "interrupted");
    std::fs::write(p.path().join("go"), "").expect("go");
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    assert_eq!(p.task("long")["state"], "succeeded");
    assert_eq!(p.json(&["jobs", "--json"]).as_array().map(Vec::len), Some(1));
}

#[test]
fn a_second_instance_is_refused() {
    let p = Project::new("[jobs.j.tasks.long]\nrun = 'touch started; sleep 300'\n");
    let mut child = p.spawn_run(&[]);
    wait_until(Duration::from_secs(10), "the first instance to start its task", || p.path().join("started").exists());
    let out = p.run(&["run", "workflow.toml"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another gaffer instance") && stderr.contains(&child.id().to_string()),
        "{stderr}"
    );
    let status = p.json(&["status", "--json"]);
    assert_eq!(status["instance"]["running"], true, "read-only commands work while it runs");
    assert_eq!(status["totals"]["running"], 1);
    // A graceful stop, so the task's `sleep 300` goes with it (a SIGKILL would orphan it).
    signal(child.id(), "TERM");
    child.wait().ok();
}

#[test]
fn invalid_files_report_every_problem_and_change_nothing() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut seen = 0;
    for entry in std::fs::read_dir(&fixtures).expect("fixtures") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("fixture");
        let expected =
            text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).expect("first line names the expectation");
        let p = Project::new(&text);
        for command in [&["validate", "workflow.toml"][..], &["run", "workflow.toml"][..]] {
            let out = p.run(command);
            assert_eq!(out.status.code(), Some(2), "{} {command:?}", path.display());
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(&format!("workflow.toml:{expected}")),
                "{}: expected `{expected}` in:\n{stderr}",
                path.display()
            );
        }
        assert!(!p.state_dir().exists(), "{}: nothing written", path.display());
        seen += 1;
    }
    assert!(seen >= 10);
}

#[test]
fn unknown_ids_and_bad_params_get_clear_errors() {
    let p = Project::new("[jobs.j]\nparams = { a = \"1\" }\n[jobs.j.tasks.t]\nrun = 'true'\n");
    let out = p.run(&["run", "workflow.toml", "--param", "b=2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown param `b`"));
    assert_eq!(p.run_json(&[]).0, 0);
    let out = p.run(&["retry", "999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no task run 999"));
    let out = p.run(&["show", "abc"]);
    assert_eq!(out.status.code(), Some(2));
    let out = p.run(&["run", "workflow.toml", "nosuchjob"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown job `nosuchjob`"));
}

#[test]
fn task_escape_sequences_never_reach_the_terminal() {
    let p = Project::new(
        "[jobs.j.tasks.evil]\nrun = '''printf 'progress \\033]0;pwned\\007\\n' >&3; printf '\\033[2Jboom\\n'; printf 'output x=\\033[31mred\\n' >&3'''\n",
    );
    assert_eq!(p.run_json(&[]).0, 0);
    let out = p.run(&["logs", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\u{1b}') && text.contains("^[[2Jboom"), "{text:?}");
    assert_eq!(p.task("evil")["outputs"]["x"], "^[[31mred");
}

#[test]
fn kill_9_then_restart_kills_the_orphaned_process_group() {
    let p = Project::new(
        r#"
[defaults]
retry = { max_attempts = 3, initial_interval = "50ms" }
[jobs.j.tasks.orphan]
run = 'test "$GAFFER_ATTEMPT" -ge 2 && exit 0; sleep 300 & echo $! > child.pid; setsid sleep 300 & echo $! > escapee.pid; echo $$ > leader.pid; wait'
"#,
    );
    let mut child = p.spawn_run(&[]);
    let pid_file = p.path().join("leader.pid");
    wait_until(Duration::from_secs(10), "the task to start", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|t| t.ends_with('\n'))
    });
    child.kill().expect("kill -9");
    let _ = child.wait();
    let leader: i32 = std::fs::read_to_string(&pid_file).expect("pid").trim().parse().expect("pid");
    let grandchild: i32 =
        std::fs::read_to_string(p.path().join("child.pid")).expect("pid").trim().parse().expect("pid");
    assert!(alive(leader) && alive(grandchild), "a kill -9 of gaffer leaves its tasks running");

    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    assert!(!alive(leader) && !alive(grandchild), "the restart killed the old process group");
    let escapee: i32 = std::fs::read_to_string(p.path().join("escapee.pid")).expect("pid").trim().parse().expect("pid");
    assert!(!alive(escapee), "and the process that left the group with setsid");
    let failed = named(&events, "task.failed");
    assert_eq!(failed[0]["reason"], "interrupted");
    assert_eq!(failed[0]["attempt"], 1, "the interrupted attempt counts");
    assert_eq!(p.task("orphan")["attempt"], 2);
}

#[test]
fn queue_timeout_dead_letters_work_that_waited_too_long() {
    let p = Project::new(
        r#"
[settings]
workers = 1
[jobs.j.tasks.hog]
priority = 90
run = "sleep 1.5"
[jobs.j.tasks.impatient]
queue_timeout = "500ms"
run = "true"
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1);
    let dead = named(&events, "task.dead_lettered");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["task"], "impatient");
    assert_eq!(dead[0]["reason"], "queue_timeout");
}

#[test]
fn rate_limit_spaces_out_starts() {
    let p = Project::new(
        r#"
[queues.api]
concurrency = 4
rate_limit = "2/1s"
[jobs.j.tasks.a]
queue = "api"
run = "true"
[jobs.j.tasks.b]
queue = "api"
run = "true"
[jobs.j.tasks.c]
queue = "api"
run = "true"
"#,
    );
    let started = std::time::Instant::now();
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0);
    assert_eq!(named(&events, "task.started").len(), 3);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the third start waited for the window: {:?}",
        started.elapsed()
    );
}

#[test]
fn fail_fast_cancels_running_siblings() {
    let p = Project::new(
        r#"
[jobs.j]
fail_fast = true
[jobs.j.tasks.breaks]
retry = { max_attempts = 1 }
run = "sleep 0.3; exit 1"
[jobs.j.tasks.long]
run = "sleep 300"
"#,
    );
    let started = std::time::Instant::now();
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(p.task("long")["state"], "cancelled");
    assert_eq!(p.task("breaks")["state"], "dead");
}

#[test]
fn task_budget_kills_the_attempt_and_claude_json_cost_is_read() {
    let p = Project::new(
        r#"
[jobs.j.tasks.agent]
cost = "claude-json"
run = '''echo '{"type":"result","total_cost_usd":0.0421,"usage":{"input_tokens":1000,"output_tokens":200}}' '''
[jobs.j.tasks.runaway]
budget_usd = 0.05
run = 'echo "cost usd=0.06" >&3; sleep 300'
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1);
    assert_eq!(p.task("agent")["cost_usd"].to_string(), "0.0421");
    assert_eq!(p.task("agent")["input_tokens"], 1000);
    let runaway = p.task("runaway");
    assert_eq!(runaway["state"], "dead");
    assert_eq!(runaway["reason"], "budget");
    assert_eq!(runaway["attempt"], 1, "no new attempt once the budget is spent");
    assert_eq!(named(&events, "budget.exceeded")[0]["scope"], "task");
}

#[test]
fn completions_and_man_page() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'true'\n");
    let out = p.run(&["completions", "bash"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("gaffer"));
    let out = p.run(&["man"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(".TH gaffer"));
}

/// A state dir written by schema version 1 (the quickstart, run once) must keep loading: a
/// schema change adds a migration and keeps this test green.
#[test]
fn a_state_dir_from_schema_v1_still_loads() {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'true'\n");
    std::fs::DirBuilder::new().mode(0o700).create(p.state_dir()).expect("state dir");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v1/state.redb");
    let store = p.state_dir().join("state.redb");
    std::fs::copy(fixture, &store).expect("copy fixture");
    // As an older gaffer left it, readable by others: refused until made private (see hostile_fs.rs).
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let refused = p.run(&["tasks"]);
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("chmod 600"), "{refused:?}");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let tasks = p.tasks();
    assert_eq!(tasks.len(), 4);
    let analyze = tasks.iter().find(|t| t["task"] == "analyze").expect("analyze");
    assert_eq!(analyze["cost_usd"].to_string(), "0.0087");
    assert_eq!(analyze["outputs"]["answer"], "Rust: fast, safe, productive.");
    assert_eq!(p.json(&["show", "2", "--json"])["attempts"].as_array().map(Vec::len), Some(2));
    // And a writer opens it, continuing the id sequences.
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 0);
    assert_eq!(p.json(&["jobs", "--json"])[1]["id"], 2);
}

#[test]
fn schedules_preview_fire_times_across_dst() {
    let p = Project::new(
        r#"
[jobs.nightly]
schedule = "30 2 * * *"
timezone = "Europe/Berlin"
[jobs.nightly.tasks.t]
run = "true"
[jobs.adhoc.tasks.t]
run = "true"
"#,
    );
    let out = p.run(&["schedules", "workflow.toml", "--from", "2026-03-28T12:00:00Z", "--count", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let items: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(items.as_array().map(Vec::len), Some(1), "unscheduled jobs are not listed");
    assert_eq!(items[0]["job"], "nightly");
    assert_eq!(items[0]["timezone"], "Europe/Berlin");
    // 02:30 does not exist on 2026-03-29 in Berlin: the run comes right after the gap, once.
    assert_eq!(items[0]["next"], serde_json::json!(["2026-03-29T01:00:00.000Z", "2026-03-30T00:30:00.000Z"]));
}

/// Starts `gaffer serve`, lets it run for `secs`, stops it with `sig`, returns its exit code.
fn serve_for(p: &Project, secs: f64, sig: &str) -> i32 {
    let mut server = Server::spawn(
        p.gaffer(&["serve", "workflow.toml", "--json"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    std::thread::sleep(Duration::from_secs_f64(secs));
    signal(server.child.id(), sig);
    server.child.wait().expect("serve ends").code().unwrap_or(-1)
}

fn fired_slots(p: &Project) -> Vec<String> {
    p.journal()
        .iter()
        .filter(|e| e["event"] == "schedule.fired")
        .filter_map(|e| e["scheduled_for"].as_str().map(String::from))
        .collect()
}

#[test]
fn serve_fires_every_second_and_stops_on_sigterm() {
    let p = Project::new(
        "[jobs.tick]\nschedule = \"* * * * * *\"\n[jobs.tick.tasks.t]\nrun = \"true\"\n[jobs.adhoc.tasks.t]\nrun = \"true\"\n",
    );
    assert_eq!(serve_for(&p, 3.4, "TERM"), 0, "SIGTERM is a normal stop for a service");
    let slots = fired_slots(&p);
    assert!((3..=4).contains(&slots.len()), "fired {} times in 3.4 s: {slots:?}", slots.len());
    let jobs = p.json(&["jobs", "--json"]);
    assert!(
        // Only `tick` ran (the last run may have been interrupted by the stop on a busy machine).
        jobs.as_array().is_some_and(|j| j.iter().all(|r| r["job"] == "tick")),
        "nothing triggered at start: {jobs}"
    );
}

#[test]
fn serve_restart_neither_loses_nor_doubles_a_slot() {
    // `overlap = "allow"`: a run the stop interrupted is resumed at the restart, and must not
    // make a caught-up fire time be skipped (that is the overlap policy, tested separately).
    let p = Project::new(
        "[jobs.tick]\nschedule = \"* * * * * *\"\ncatchup = \"all\"\noverlap = \"allow\"\n[jobs.tick.tasks.t]\nrun = \"true\"\n",
    );
    assert_eq!(serve_for(&p, 2.3, "INT"), 130);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(serve_for(&p, 2.3, "TERM"), 0);
    let slots = fired_slots(&p);
    assert!(named(&p.journal(), "schedule.skipped").is_empty());
    let unique: std::collections::BTreeSet<&String> = slots.iter().collect();
    assert_eq!(unique.len(), slots.len(), "no slot fired twice: {slots:?}");
    let seconds: Vec<i64> = unique.iter().map(|s| chrono_secs(s)).collect();
    assert!(seconds.windows(2).all(|w| w[1] - w[0] == 1), "no slot lost across the restart: {slots:?}");
}

fn chrono_secs(rfc3339: &str) -> i64 {
    let t = humantime::parse_rfc3339(rfc3339).expect("time");
    t.duration_since(std::time::UNIX_EPOCH).expect("after epoch").as_secs() as i64
}

#[test]
fn serve_overlap_skip_never_runs_two_at_once() {
    let p = Project::new(
        "[jobs.slow]\nschedule = \"* * * * * *\"\noverlap = \"skip\"\n[jobs.slow.tasks.t]\nrun = \"sleep 1.5\"\n",
    );
    serve_for(&p, 3.5, "TERM");
    let journal = p.journal();
    assert!(!named(&journal, "schedule.skipped").is_empty(), "slots during a run are skipped");
    let mut active = 0i32;
    for e in &journal {
        match e["event"].as_str() {
            Some("job.started") => active += 1,
            Some("job.succeeded" | "job.failed" | "job.cancelled") => active -= 1,
            _ => {}
        }
        assert!(active <= 1, "two runs of a skip-overlap job at once");
    }
}

#[test]
fn submit_to_a_server_with_params_and_an_idempotency_key() {
    let p = Project::new(
        "[jobs.greet]\nparams = { who = \"world\" }\n[jobs.greet.tasks.say]\nrun = 'echo \"output said=hello $WHO\" >&3'\nenv = { WHO = \"{{ params.who }}\" }\n",
    );
    let _server = Server::start(&p);
    let out = p.run(&["submit", "greet", "--param", "who=gaffer", "--key", "order-42"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(first, "j1");
    let again = p.run(&["submit", "greet", "--param", "who=gaffer", "--key", "order-42"]);
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("j1 "), "the same key gives the same run back");
    wait_until(Duration::from_secs(10), "the run to finish", || p.json(&["jobs", "--json"])[0]["state"] == "succeeded");
    assert_eq!(p.task("say")["outputs"]["said"], "hello gaffer");
    assert_eq!(p.json(&["jobs", "--json"]).as_array().map(Vec::len), Some(1));
    let bad = p.run(&["submit", "greet", "--param", "nope=1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown param `nope`"));
}

#[test]
fn submit_without_a_server_says_how_to_start_one() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'true'\n");
    let out = p.run(&["submit", "j"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gaffer serve"));
}

#[test]
fn pause_holds_a_queue_across_a_restart_and_resume_releases_it() {
    let p = Project::new("[queues.slow]\nconcurrency = 1\n[jobs.j.tasks.t]\nqueue = \"slow\"\nrun = 'true'\n");
    let server = Server::start(&p);
    let out = p.run(&["pause", "slow"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(p.run(&["submit", "j"]).status.success());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.task("t")["state"], "queued", "nothing starts from a paused queue");
    drop(server);
    let status = p.json(&["status", "--json"]);
    assert_eq!(
        status["queues"].as_array().and_then(|q| q.iter().find(|q| q["name"] == "slow")).map(|q| q["paused"].clone()),
        Some(serde_json::json!(true))
    );
    let _server = Server::start(&p);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.task("t")["state"], "queued", "still paused after a restart");
    assert!(p.run(&["resume", "slow"]).status.success());
    wait_until(Duration::from_secs(10), "the task to run", || p.task("t")["state"] == "succeeded");
}

#[test]
fn socket_is_private_and_refuses_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'true'\n");
    let _server = Server::start(&p);
    let socket = p.state_dir().join("gaffer.sock");
    assert_eq!(std::fs::metadata(&socket).expect("socket").permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(p.state_dir()).expect("dir").permissions().mode() & 0o777, 0o700);
    let setpriv = std::process::Command::new("setpriv").arg("--version").output();
    if setpriv.is_err() || !nix::unistd::Uid::current().is_root() {
        eprintln!("skipped the other-uid half: needs root and setpriv");
        return;
    }
    // Open the door on purpose, to see the peer-uid check itself refuse the other user.
    std::fs::set_permissions(p.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(p.state_dir(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let as_nobody = |program: &str| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", program]);
        cmd
    };
    // gaffer itself does not even talk to a state dir that is not the user's own...
    let out = as_nobody(env!("CARGO_BIN_EXE_gaffer"))
        .arg("--state-dir")
        .arg(p.state_dir())
        .args(["pause", "default"])
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not by you"), "{}", String::from_utf8_lossy(&out.stderr));
    // ...and a raw client of the socket is refused by the instance.
    let Ok(out) = as_nobody("curl")
        .args(["-s", "--unix-socket"])
        .arg(&socket)
        .args(["-X", "POST", "http://localhost/v1/queues/default/pause"])
        .output()
    else {
        eprintln!("skipped the raw-socket half: needs curl");
        return;
    };
    assert!(String::from_utf8_lossy(&out.stdout).contains("another user"), "{out:?}");
}

#[test]
fn events_stream_over_the_socket() {
    use std::io::{BufRead, BufReader, Write};
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'true'\n");
    let _server = Server::start(&p);
    let mut stream = std::os::unix::net::UnixStream::connect(p.state_dir().join("gaffer.sock")).expect("connect");
    stream.write_all(b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    std::thread::sleep(Duration::from_millis(200));
    assert!(p.run(&["submit", "j"]).status.success());
    let mut seen = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line.expect("line");
        if let Some(data) = line.strip_prefix("data: ") {
            let event: serde_json::Value = serde_json::from_str(data).expect("json event");
            seen.push(event["event"].as_str().unwrap_or("").to_string());
            if event["event"] == "job.succeeded" {
                break;
            }
        }
    }
    assert!(seen.contains(&"task.started".to_string()) && seen.contains(&"job.succeeded".to_string()), "{seen:?}");
}

#[test]
fn tcp_listen_needs_the_token_and_a_loopback_host_and_serves_metrics() {
    use std::io::{Read, Write};
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'echo \"cost usd=0.25 input_tokens=10 model=m\" >&3'\n");
    assert_eq!(p.run_json(&[]).0, 0);
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = Server::spawn(
        p.gaffer(&["serve", "workflow.toml", "--headless", "--listen", &addr]).stderr(std::process::Stdio::null()),
    );
    let token_file = p.state_dir().join("token");
    wait_until(Duration::from_secs(10), "the token file", || {
        std::fs::read_to_string(&token_file).is_ok_and(|t| t.len() > 60)
    });
    let token = std::fs::read_to_string(&token_file).expect("token").trim().to_string();
    let get_from = |host: &str, auth: Option<&str>, origin: &str| -> String {
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
        let auth = auth.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: {host}\r\n{auth}{origin}Connection: close\r\n\r\n")
            .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer
    };
    let get = |host: &str, auth: Option<&str>| get_from(host, auth, "");
    wait_until(Duration::from_secs(10), "the listener", || std::net::TcpStream::connect(&addr).is_ok());
    assert!(get(&addr, None).starts_with("HTTP/1.1 401"));
    assert!(get(&addr, Some("wrong")).starts_with("HTTP/1.1 401"));
    assert!(get("evil.example", Some(&token)).starts_with("HTTP/1.1 403"), "DNS rebinding refused");
    let from_page = |origin: &str| get_from(&addr, Some(&token), &format!("Origin: {origin}\r\n"));
    assert!(from_page("http://evil.example").starts_with("HTTP/1.1 403"), "a foreign web page is refused");
    assert!(from_page(&format!("http://localhost:{port}")).starts_with("HTTP/1.1 200"));
    let metrics = get(&format!("localhost:{port}"), Some(&token));
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("gaffer_task_runs{queue=\"default\",state=\"succeeded\"} 1"), "{metrics}");
    assert!(metrics.contains("gaffer_cost_usd_total{model=\"m\"} 0.25"), "{metrics}");
    signal(server.child.id(), "TERM");
    let _ = server.child.wait();
    let out = p.run(&["serve", "workflow.toml", "--listen", "0.0.0.0:1"]);
    assert_eq!(out.status.code(), Some(2), "non-loopback needs --listen-anywhere");
}

#[test]
fn serve_removes_logs_past_retention_and_keeps_records() {
    let p = Project::new("[settings]\nretention = \"1s\"\n[jobs.j.tasks.t]\nrun = 'echo hello'\n");
    assert_eq!(p.run_json(&[]).0, 0);
    let logs = p.state_dir().join("logs/1");
    assert!(logs.is_dir());
    std::thread::sleep(Duration::from_millis(1200));
    let _server = Server::start(&p);
    wait_until(Duration::from_secs(5), "the old logs to go", || !logs.exists());
    assert_eq!(p.task("t")["state"], "succeeded", "records stay");
}

#[test]
fn a_remote_engine_sees_and_drives_a_server() {
    use gaffer::engine::{Control, Target};
    let p = Project::new("[defaults]\nretry = { max_attempts = 1 }\n[jobs.j.tasks.t]\nrun = 'test -e fixed'\n");
    let _server = Server::start(&p);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let remote = gaffer::api::RemoteEngine::connect(&p.state_dir()).await.expect("connect");
        let mut events = remote.subscribe().await.expect("events");
        assert!(p.run(&["submit", "j"]).status.success());
        let mut names = Vec::new();
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            names.push(e.name().as_str());
            if e.name().as_str() == "job.failed" {
                break;
            }
        }
        assert!(names.contains(&"task.dead_lettered"), "{names:?}");
        let snapshot = remote.snapshot().await.expect("snapshot");
        assert_eq!(snapshot.task_runs.len(), 1);
        assert_eq!(snapshot.jobs[0].name, "j");
        assert!(!snapshot.workers.is_empty());
        std::fs::write(p.path().join("fixed"), "").expect("fix");
        remote.retry(Target::TaskRun(1)).await.expect("retry");
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            if e.name().as_str() == "job.succeeded" {
                break;
            }
        }
        assert_eq!(remote.task_runs_of(1).await.expect("tasks")[0].state, gaffer::model::TaskState::Succeeded);
        assert!(remote.set_paused("default", true).await.expect("pause"));
        assert!(!remote.set_paused("nope", true).await.expect("no such queue"));
    });
}

#[test]
fn serve_sigterm_stops_within_the_grace_period_and_a_restart_resumes() {
    let p = Project::new(
        "[jobs.long.tasks.t]\nrun = 'echo $GAFFER_ATTEMPT >> attempts; test -e done || { touch started; sleep 300; }'\n",
    );
    let mut server = Server::start(&p);
    assert!(p.run(&["submit", "long"]).status.success());
    wait_until(Duration::from_secs(10), "the task to start", || p.path().join("started").exists());
    let stopping = std::time::Instant::now();
    signal(server.child.id(), "TERM");
    let status = server.child.wait().expect("serve ends");
    assert_eq!(status.code(), Some(0));
    assert!(stopping.elapsed() < Duration::from_secs(12), "within the 10 s grace: {:?}", stopping.elapsed());
    assert_eq!(p.task("t")["state"], "queued", "interrupted work waits for the next start");
    std::fs::write(p.path().join("done"), "").expect("done");
    let _again = Server::start(&p);
    wait_until(Duration::from_secs(10), "the resumed task to finish", || p.task("t")["state"] == "succeeded");
    assert_eq!(p.json(&["jobs", "--json"]).as_array().map(Vec::len), Some(1), "resumed, not submitted again");
}

#[test]
fn cancel_a_job_run_on_a_server_kills_its_process_groups() {
    let p = Project::new(
        "[jobs.pair.tasks.a]\nrun = 'sleep 300 & echo $! > a.pid; wait'\n[jobs.pair.tasks.b]\nrun = 'echo $$ > b.pid; sleep 300'\n",
    );
    let _server = Server::start(&p);
    assert!(p.run(&["submit", "pair"]).status.success());
    let (a, b) = (p.path().join("a.pid"), p.path().join("b.pid"));
    let written = |f: &std::path::Path| std::fs::read_to_string(f).is_ok_and(|t| t.ends_with('\n'));
    wait_until(Duration::from_secs(10), "both tasks to start", || written(&a) && written(&b));
    let pids: Vec<i32> =
        [a, b].iter().map(|f| std::fs::read_to_string(f).expect("pid").trim().parse().expect("pid")).collect();
    let out = p.run(&["cancel", "j1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(Duration::from_secs(10), "the job run to be cancelled", || {
        p.json(&["jobs", "--json"])[0]["state"] == "cancelled"
    });
    wait_until(Duration::from_secs(3), "their processes to be gone", || pids.iter().all(|pid| !alive(*pid)));
}

#[test]
fn read_endpoints_answer_like_the_cli() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'echo \"output k=v\" >&3'\n");
    let _server = Server::start(&p);
    assert!(p.run(&["submit", "j"]).status.success());
    wait_until(Duration::from_secs(10), "the run", || p.json(&["jobs", "--json"])[0]["state"] == "succeeded");
    // An HTTP client, not hand-written parsing: big answers come chunked.
    let get = |path: &str| gaffer::api::client::call(&p.state_dir(), "GET", path, None);
    assert_eq!(get("/v1/tasks").expect("tasks"), p.json(&["tasks", "--json"]), "same shape through the socket");
    assert_eq!(get("/v1/jobs?state=succeeded").expect("jobs"), p.json(&["jobs", "--json"]));
    assert_eq!(get("/v1/show/1").expect("show"), p.json(&["show", "1", "--json"]));
    assert_eq!(get("/v1/show/j1").expect("show")["tasks"][0]["outputs"]["k"], "v");
    let missing = get("/v1/show/99");
    assert!(missing.as_ref().is_err_and(|e| e.to_string().contains("no task run 99")), "{missing:?}");
}

#[test]
fn status_columns_line_up_under_their_headers() {
    let p = Project::new("[queues.io]\nconcurrency = 12\n[jobs.j.tasks.t]\nqueue = \"io\"\nrun = 'true'\n");
    assert_eq!(p.run_json(&[]).0, 0);
    let out = String::from_utf8_lossy(&p.run(&["status"]).stdout).into_owned();
    let header = out.lines().find(|l| l.starts_with("QUEUE")).expect("header");
    let row = out.lines().find(|l| l.starts_with("io ")).expect("io row");
    for column in ["CONCURRENCY", "QUEUED", "RUNNING", "RETRYING", "DEAD"] {
        let end = header.find(column).expect("column") + column.len();
        let cell = row[..end].rsplit(' ').next().unwrap_or("");
        assert!(!cell.is_empty() && row.as_bytes().get(end).is_none_or(|b| *b == b' '), "{column} misaligned:\n{out}");
    }
}

/// Every read command, once with no instance (the state dir read directly) and once through a
/// server's socket: the same output, byte for byte.
#[test]
fn read_commands_print_the_same_through_the_socket_as_from_the_state_dir() {
    let p = Project::new(&format!(
        "[jobs.j.tasks.ok]\nrun = 'echo hello; echo \"cost usd=0.25 model=m1\" >&3; echo \"output k=v\" >&3'\n\
         [jobs.j.tasks.bad]\nrun = 'echo broken >&2; exit 4'\n{RETRY_FAST}\n"
    ));
    assert_eq!(p.run_json(&[]).0, 1);
    let ok = p.task("ok")["id"].to_string();
    let bad = p.task("bad")["id"].to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["jobs"],
        vec!["jobs", "--json"],
        vec!["tasks"],
        vec!["tasks", "--json", "--state", "dead"],
        vec!["show", &ok],
        vec!["show", &bad, "--json"],
        vec!["show", "j1"],
        vec!["logs", &ok],
        vec!["logs", &bad, "--attempt", "2"],
        vec!["cost", "--by", "model"],
        vec!["cost", "--json", "--by", "task"],
        vec!["dlq"],
        vec!["dlq", "list", "--json"],
    ];
    let outputs = |p: &Project| -> Vec<(String, String)> {
        commands
            .iter()
            .map(|args| {
                let out = p.gaffer(args).env("RUST_LOG", "gaffer=debug").output().expect("gaffer");
                assert!(out.status.success(), "gaffer {args:?}: {}", String::from_utf8_lossy(&out.stderr));
                (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
            })
            .collect()
    };
    let offline = outputs(&p);
    let _server = Server::start(&p);
    let online = outputs(&p);
    for ((args, (a, a_log)), (b, b_log)) in commands.iter().zip(&offline).zip(&online) {
        assert_eq!(a, b, "gaffer {args:?} differs");
        assert!(a_log.contains("read from the state dir"), "gaffer {args:?} offline: {a_log}");
        assert!(b_log.contains("answered by the running instance"), "gaffer {args:?} online: {b_log}");
    }
    assert!(online[7].0.contains("hello"));
    assert!(online[9].0.contains("m1") && online[9].0.contains("$0.25"));
    let unknown = p.run(&["show", "99"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no task run 99"));
    let bad_state = p.run(&["tasks", "--state", "nope"]);
    assert_eq!(bad_state.status.code(), Some(2), "a usage error through the socket too");
}

#[test]
fn logs_follow_through_the_socket_until_the_attempt_ends() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'echo one; touch started; sleep 1; echo two'\n");
    let _server = Server::start(&p);
    assert!(p.run(&["submit", "j"]).status.success());
    wait_until(Duration::from_secs(10), "the task to start", || p.path().join("started").exists());
    let out = p.run(&["logs", "1", "--follow"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    assert_eq!(p.task("t")["state"], "succeeded", "follow returns once the attempt has ended");
}

/// Under systemd `Type=notify` + `WatchdogSec=`: READY once serving, pings while healthy,
/// STOPPING on SIGTERM. A real datagram socket stands where systemd's would.
#[test]
fn serve_speaks_the_systemd_notify_protocol() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'true'\n");
    let socket_path = p.path().join("notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind");
    systemd.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut server = Server::spawn(
        p.gaffer(&["serve", "workflow.toml", "--headless"])
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "200000")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let next = || {
        let mut buf = [0u8; 512];
        let n = systemd.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1\nSTATUS=serving"), "{ready}");
    assert!(p.state_dir().join("gaffer.sock").exists(), "ready means the control socket answers");
    assert_eq!((next(), next()), ("WATCHDOG=1".to_string(), "WATCHDOG=1".to_string()), "pings every 100 ms");
    signal(server.child.id(), "TERM");
    let mut said = next();
    while said == "WATCHDOG=1" {
        said = next();
    }
    assert_eq!(said, "STOPPING=1");
    assert_eq!(server.child.wait().expect("serve ends").code(), Some(0));
}

#[test]
fn a_param_goes_to_the_jobs_that_declare_it_and_a_refused_run_leaves_nothing() {
    let p = Project::new(
        "[jobs.a]\nparams = { n = \"1\" }\n[jobs.a.tasks.x]\nrun = 'echo \"a-$N\" >> side.log'\nenv = { N = \"{{ params.n }}\" }\n\
         [jobs.b.tasks.y]\nrun = 'echo b >> side.log'\n",
    );
    let refused = p.run(&["run", "workflow.toml", "--headless", "--param", "m=5"]);
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("unknown param `m`") && said.contains("`b` declares no params"), "{said}");
    assert!(!p.state_dir().join("state.redb").exists(), "a refused command leaves nothing behind");
    let (code, _) = p.run_json(&["--param", "n=5"]);
    assert_eq!(code, 0, "n goes to `a`; `b` declares nothing and runs without it");
    let mut side = std::fs::read_to_string(p.path().join("side.log"))
        .expect("side.log")
        .lines()
        .map(String::from)
        .collect::<Vec<_>>();
    side.sort();
    assert_eq!(side, ["a-5", "b"]);
}

/// A cancel left in the inbox while nothing ran lands before anything is dispatched: the
/// cancelled task never starts again.
#[test]
fn an_offline_cancel_lands_before_the_task_could_start_again() {
    let p = Project::new(
        "[jobs.side.tasks.charge]\nrun = 'echo CHARGED >> side.log; touch started; sleep 30'\n[jobs.other.tasks.o]\nrun = 'true'\n",
    );
    let mut server = Server::start(&p);
    assert!(p.run(&["submit", "side"]).status.success());
    wait_until(Duration::from_secs(10), "the task to start", || p.path().join("started").exists());
    signal(server.child.id(), "TERM");
    assert!(server.child.wait().expect("serve ends").success());
    assert!(p.run(&["cancel", "j1"]).status.success());
    let (_, events) = p.run_json(&["other"]);
    assert!(
        named(&events, "task.started").iter().all(|e| e["task"] != "charge"),
        "the cancelled task started again: {events:#?}"
    );
    assert_eq!(std::fs::read_to_string(p.path().join("side.log")).expect("side.log"), "CHARGED\n");
    assert_eq!(p.task("charge")["state"], "cancelled");
}

#[test]
fn a_reader_that_goes_away_ends_a_command_quietly() {
    use std::io::Read;
    let mut text = String::new();
    // Enough rows that the output outgrows a pipe's 64 KiB buffer even in the human table.
    for i in 0..1000 {
        text.push_str(&format!("[jobs.j.tasks.t{i}]\nrun = 'true'\n"));
    }
    let p = Project::new(&text);
    assert_eq!(p.run_json(&["--noop-executor"]).0, 0);
    for args in [&["tasks", "--json"][..], &["tasks"][..]] {
        let mut child = p
            .gaffer(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("gaffer");
        let mut first = [0u8; 16];
        child.stdout.take().expect("stdout").read_exact(&mut first).expect("some output");
        // The pipe's read end is closed here, like `| head -c 16`.
        let out = child.wait_with_output().expect("exit");
        assert_eq!(out.status.code(), Some(141), "gaffer {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty(), "no panic, no message: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn status_of_a_server_lists_every_declared_queue_even_before_any_task() {
    let p = Project::new("[queues.llm]\nconcurrency = 3\n[jobs.j.tasks.t]\nqueue = \"llm\"\nrun = 'true'\n");
    let _server = Server::start(&p);
    assert!(p.run(&["pause", "llm"]).status.success());
    let status = p.json(&["status", "--json"]);
    let llm = status["queues"].as_array().and_then(|q| q.iter().find(|q| q["name"] == "llm").cloned());
    let llm = llm.unwrap_or_else(|| panic!("llm is missing: {status}"));
    assert_eq!(
        (llm["concurrency"].as_u64(), llm["paused"].as_bool(), llm["queued"].as_u64()),
        (Some(3), Some(true), Some(0))
    );
}

#[test]
fn logs_follow_of_a_queued_task_waits_for_it_to_start() {
    let p = Project::new(
        "[jobs.j.tasks.first]\nrun = 'sleep 1'\n[jobs.j.tasks.then]\nneeds = [\"first\"]\nrun = 'echo late'\n",
    );
    let _server = Server::start(&p);
    assert!(p.run(&["submit", "j"]).status.success());
    let then = p.task("then")["id"].to_string();
    let out = p.run(&["logs", &then, "--follow"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "late\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting for it to start"));
}

#[test]
fn a_task_that_exits_0_on_sigterm_after_crossing_its_budget_was_stopped_not_finished() {
    let p = Project::new(
        r#"
[jobs.j]
budget_usd = 0.10
[jobs.j.tasks.t]
cache = { key = "same", ttl = "1h" }
run = 'trap "exit 0" TERM; echo "cost usd=0.12" >&3; sleep 5 & wait'
"#,
    );
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 1);
    let t = p.task("t");
    assert_eq!((t["state"].as_str(), t["reason"].as_str()), (Some("dead"), Some("budget")), "{t}");
    let (_, again) = p.run_json(&[]);
    assert!(named(&again, "task.succeeded").iter().all(|e| e["cached"] != true), "a stopped attempt is never cached");
}

#[test]
fn logs_follow_of_a_task_that_ended_without_running_says_so() {
    let p = Project::new(
        "[jobs.j.tasks.first]\nrun = 'exit 1'\nretry = { max_attempts = 1 }\n[jobs.j.tasks.then]\nneeds = [\"first\"]\nrun = 'true'\n",
    );
    assert_eq!(p.run_json(&[]).0, 1);
    let then = p.task("then")["id"].to_string();
    let out = p.run(&["logs", &then, "--follow"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ended without running"));
}

/// A retry reopens a failed `fail_fast` run: a task that was skipped only because the run was
/// failing goes pending and then queued again in one step, and is reported (and run) once.
/// (One worker: b runs first, then a dies while c waits in the queue.)
#[test]
fn a_reopened_task_is_queued_once() {
    let p = Project::new(
        "[settings]\nworkers = 1\n[jobs.j]\nfail_fast = true\n\
         [jobs.j.tasks.a]\npriority = 70\nrun = 'test -e fixed'\nretry = { max_attempts = 1 }\n\
         [jobs.j.tasks.b]\npriority = 90\nrun = 'true'\n[jobs.j.tasks.c]\nneeds = [\"b\"]\nrun = 'echo c >> c.log'\n",
    );
    assert_eq!(p.run_json(&[]).0, 1);
    assert_eq!(p.task("b")["state"], "succeeded");
    assert_eq!(p.task("c")["state"], "skipped", "b succeeded, but the run was failing by then");
    std::fs::write(p.path().join("fixed"), "").expect("fix");
    assert!(p.run(&["retry", "j1"]).status.success());
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0);
    let queued_c = named(&events, "task.queued").iter().filter(|e| e["task"] == "c").count();
    assert_eq!(queued_c, 1, "{events:#?}");
    assert_eq!(std::fs::read_to_string(p.path().join("c.log")).expect("c.log"), "c\n");
}
