//! Retries and the limits around them, through the real binary: spent budgets refuse a retry
//! (live and offline) until a person raises them; rate limits and circuit breakers that
//! outlive a restart; model fallback, output validation and poison pills (issue 8).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Project, Server, named, wait_until};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn lines(p: &Project, file: &str) -> usize {
    std::fs::read_to_string(p.path().join(file)).map_or(0, |t| t.lines().count())
}

fn inbox_files(p: &Project) -> usize {
    std::fs::read_dir(p.state_dir().join("inbox")).map_or(0, |d| d.count())
}

/// Defect 2 of issue 8: `gaffer retry` in a job run whose budget is spent started a new attempt
/// and spent more. It is refused, offline and live, and nothing changes, until `--budget`
/// raises that run's budget (recorded, shown, in the journal).
#[test]
fn a_retry_past_a_spent_job_budget_is_refused_until_the_budget_is_raised() {
    let p = Project::new(
        r#"
[jobs.j]
budget_usd = 0.01
[jobs.j.tasks.spend]
retry = { max_attempts = 1 }
run = 'echo ran >> runs.log; echo "cost usd=0.02" >&3; [ "$GAFFER_ATTEMPT" -gt 1 ] || sleep 30'
"#,
    );
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 1);
    assert_eq!((p.task("spend")["state"].as_str(), p.task("spend")["reason"].as_str()), (Some("dead"), Some("budget")));

    for id in ["1", "j1"] {
        let out = p.run(&["retry", id]);
        assert!(!out.status.success(), "offline retry {id} must be refused");
        assert!(stderr(&out).contains("j1 has spent $0.02 of its $0.01 budget"), "{}", stderr(&out));
        assert!(stderr(&out).contains(&format!("gaffer retry {id} --budget USD")), "{}", stderr(&out));
    }
    assert_eq!(inbox_files(&p), 0, "a refused retry leaves nothing for the next start");

    let _server = Server::start(&p);
    let out = p.run(&["retry", "1"]);
    assert!(!out.status.success(), "live retry must be refused");
    assert!(stderr(&out).contains("j1 has spent $0.02 of its $0.01 budget"), "{}", stderr(&out));
    let out = p.run(&["retry", "1", "--budget", "0.02"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--budget $0.02 is not above the $0.02 job run j1 has spent"), "{}", stderr(&out));
    tui_r_shows_the_refusal(&p);
    assert_eq!(p.task("spend")["attempt"], 1, "nothing started");
    assert_eq!(lines(&p, "runs.log"), 1);
    assert!(p.json(&["show", "j1", "--json"])["budget_raised_usd"].is_null());

    let out = p.run(&["retry", "1", "--budget", "0.50"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("job run j1: budget raised to $0.50"));
    wait_until(Duration::from_secs(10), "the raised retry to succeed", || p.task("spend")["state"] == "succeeded");
    let job = p.json(&["show", "j1", "--json"]);
    assert_eq!(job["budget_raised_usd"], 0.5);
    assert_eq!(job["cost_usd"], 0.04);
    let shown = String::from_utf8_lossy(&p.run(&["show", "j1"]).stdout).into_owned();
    assert!(shown.contains("budget: $0.50, raised by `gaffer retry --budget`"), "{shown}");
    let raised = named(&p.journal(), "budget.raised").into_iter().cloned().collect::<Vec<Value>>();
    assert_eq!((raised.len(), raised[0]["scope"].as_str()), (1, Some("job")), "{raised:?}");
}

/// The same for a task run's own limits (`retry.max_cost_usd`, `budget_usd`), raised offline:
/// the raise waits in the inbox with the retry and is checked again when it is applied.
#[test]
fn a_task_runs_spent_max_cost_refuses_a_retry_until_raised_offline() {
    let p = Project::new(
        r#"
[jobs.j.tasks.spend]
retry = { max_attempts = 3, max_cost_usd = 0.01, initial_interval = "50ms" }
run = 'echo "cost usd=0.02" >&3; [ "$GAFFER_ATTEMPT" -gt 1 ]'
"#,
    );
    assert_eq!(p.run_json(&[]).0, 1);
    assert_eq!(p.task("spend")["attempt"], 1, "max_cost_usd stopped the retries");
    let out = p.run(&["retry", "1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("task run 1 has spent $0.02 of its $0.01 `retry.max_cost_usd`"), "{}", stderr(&out));
    assert_eq!(inbox_files(&p), 0);

    let out = p.run(&["retry", "1", "--budget", "0.10"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    let shown = p.json(&["show", "1", "--json"]);
    assert_eq!((shown["state"].as_str(), shown["attempt"].as_u64()), (Some("succeeded"), Some(2)));
    assert_eq!(shown["budget_raised_usd"], 0.1);
}

/// The TUI attached to the server: `r` on the dead letter sends the retry, and the engine's
/// refusal is what the status line says, with the task run back as it was.
fn tui_r_shows_the_refusal(p: &Project) {
    use gaffer::engine::Control;
    use gaffer::tui::keymap::Key;
    use gaffer::tui::{Model, Msg, update};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let remote = gaffer::api::RemoteEngine::connect(&p.state_dir()).await.expect("connect");
        let snapshot = remote.snapshot().await.expect("snapshot");
        let mut model = Model::new(snapshot, 0, "test", Vec::new());
        model.prepare();
        update(&mut model, Msg::Key(Key::ch('5')));
        let commands = update(&mut model, Msg::Key(Key::ch('r')));
        let [gaffer::tui::Command::Retry(target)] = commands.as_slice() else {
            panic!("r sends a retry: {commands:?}")
        };
        let result = remote.retry(*target).await.map_err(|e| e.to_string());
        update(&mut model, Msg::Done { command: commands[0].clone(), result });
        let status = model.status.as_ref().map(|s| (s.text.clone(), s.error));
        let (text, error) = status.expect("something is said");
        assert!(error && text.contains("j1 has spent $0.02 of its $0.01 budget"), "{text}");
        assert_eq!(model.tasks[&1].rec.state, gaffer::model::TaskState::Dead);
    });
}

/// Defect 5 of issue 8: an offline retry of a run with nothing to retry answered "recorded" and
/// exited 0. It is refused as the running instance refuses it, in the same words.
#[test]
fn an_offline_retry_with_nothing_to_retry_is_refused_as_the_instance_would() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'true'\n");
    assert_eq!(p.run_json(&[]).0, 0);
    let refusals = |p: &Project| -> Vec<String> {
        ["j1", "1"]
            .iter()
            .map(|id| {
                let out = p.run(&["retry", id]);
                assert!(!out.status.success(), "retry {id} must be refused: {}", stderr(&out));
                stderr(&out)
            })
            .collect()
    };
    let offline = refusals(&p);
    assert_eq!(inbox_files(&p), 0, "nothing is left for the next start");
    assert!(offline[0].contains("job run j1 has no dead or cancelled task runs to retry"), "{}", offline[0]);
    assert!(offline[1].contains("task run 1 has succeeded; only dead or cancelled"), "{}", offline[1]);
    let _server = Server::start(&p);
    assert_eq!(refusals(&p), offline, "one rule, one wording");
}

fn started_at_ms(attempt: &Value) -> u64 {
    let text = attempt["started_at"].as_str().expect("started_at");
    let t = humantime::parse_rfc3339(text).expect("rfc3339");
    t.duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

/// Every attempt start in the state dir, as milliseconds.
fn attempt_starts(p: &Project) -> Vec<u64> {
    let mut starts: Vec<u64> = p
        .tasks()
        .iter()
        .flat_map(|t| {
            p.json(&["show", &t["id"].to_string(), "--json"])["attempts"].as_array().cloned().unwrap_or_default()
        })
        .map(|a| started_at_ms(&a))
        .collect();
    starts.sort_unstable();
    starts
}

/// Defect 3 of issue 8: `rate_limit = "2/30s"` held within one process, but two `gaffer run`s
/// in a row started 4 attempts at once. The window is derived from the attempts' start times
/// in the store, so the second run waits for it.
#[test]
fn a_rate_limit_holds_across_two_runs_in_a_row() {
    let p = Project::new(
        r#"
[queues.api]
rate_limit = "2/2s"
[jobs.j.tasks.a]
queue = "api"
run = 'true'
[jobs.j.tasks.b]
queue = "api"
run = 'true'
"#,
    );
    assert_eq!(p.run_json(&[]).0, 0);
    assert_eq!(p.run_json(&[]).0, 0);
    let starts = attempt_starts(&p);
    assert_eq!(starts.len(), 4);
    for (i, &t) in starts.iter().enumerate() {
        let in_window = starts[i..].iter().filter(|&&s| s - t < 2_000).count();
        assert!(in_window <= 2, "{in_window} attempts started within 2 s of {t}: {starts:?}");
    }
}

/// A burst of failures opens a queue's circuit (`queue.circuit_opened`, `status`); a restart
/// derives it from the failed attempts in the store, holds the queue, and the circuit closes
/// by itself (`queue.circuit_closed`), after which the queue starts work again.
#[test]
fn a_circuit_opens_after_a_burst_survives_a_restart_and_closes_by_itself() {
    let p = Project::new(
        r#"
[queues.llm]
concurrency = 1
circuit = { failures = 2, within = "1m", open_for = "3s" }
[jobs.burst.tasks.a]
queue = "llm"
retry = { max_attempts = 2, initial_interval = "10ms" }
run = 'exit 1'
[jobs.after.tasks.c]
queue = "llm"
run = 'true'
"#,
    );
    assert_eq!(p.run_json(&["burst"]).0, 1);
    let opened = named(&p.journal(), "queue.circuit_opened").into_iter().cloned().collect::<Vec<Value>>();
    assert_eq!(opened.len(), 1, "{opened:?}");
    let until = opened[0]["until"].as_str().expect("until").to_string();
    let status = p.json(&["status", "--json"]);
    let llm = status["queues"].as_array().into_iter().flatten().find(|q| q["name"] == "llm").cloned();
    assert_eq!(llm.map(|q| q["circuit_open_until"].clone()), Some(Value::from(until.clone())), "{status}");

    assert_eq!(p.run_json(&["after"]).0, 0);
    let c = p.json(&["show", &p.task("c")["id"].to_string(), "--json"]);
    let until_ms = started_at_ms(&serde_json::json!({ "started_at": until }));
    assert!(started_at_ms(&c["attempts"][0]) >= until_ms, "c started before the circuit closed: {c}");
    assert_eq!(named(&p.journal(), "queue.circuit_closed").len(), 1);
}

/// Defect 5 of issue 8: `serve` said "N missed fire times caught up" counting slots its overlap
/// policy then skipped. It counts the catch-ups that started a run.
#[test]
fn serve_counts_only_the_caught_up_fire_times_that_ran() {
    let p = Project::new(
        "[jobs.tick]\nschedule = \"* * * * * *\"\ncatchup = \"all\"\noverlap = \"skip\"\n[jobs.tick.tasks.t]\nrun = \"true\"\n",
    );
    let serve = |log: &str| {
        let file = std::fs::File::create(p.path().join(log)).expect("log file");
        Server::spawn(
            p.gaffer(&["serve", "workflow.toml", "--headless"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(file),
        )
    };
    let said = |log: &str| std::fs::read_to_string(p.path().join(log)).unwrap_or_default();
    let first = serve("first.log");
    wait_until(Duration::from_secs(10), "a first fire", || !named(&p.journal(), "schedule.fired").is_empty());
    drop(first);
    let before: usize = p.journal().len();
    std::thread::sleep(Duration::from_millis(3_500));
    let restarted_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("now").as_millis();
    let second = serve("second.log");
    wait_until(Duration::from_secs(10), "the serving line", || said("second.log").contains("serving"));
    drop(second);
    let line = said("second.log").lines().find(|l| l.contains("serving")).map(str::to_string).unwrap_or_default();
    let count: usize = line
        .split(" missed fire time")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in `{line}`"));
    let missed = |name: &str| {
        p.journal()[before..]
            .iter()
            .filter(|e| e["event"] == name)
            .filter(|e| e["scheduled_for"].as_str().is_some_and(|t| super_ms(t) < restarted_ms))
            .count()
    };
    assert!(missed("schedule.skipped") >= 1, "the overlap policy skipped some caught-up slots: {line}");
    assert_eq!(count, missed("schedule.fired"), "{line}");
}

fn super_ms(rfc3339: &str) -> u128 {
    let t = humantime::parse_rfc3339(rfc3339).expect("time");
    t.duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis()
}

/// Defect 5 of issue 8: after a retry the TUI showed `try 4/2` where `tasks` said `2/2`. A TUI
/// that saw the first run, then follows the retried run's events, shows what `tasks` shows.
#[test]
fn the_tui_counts_attempts_of_a_retried_run_as_tasks_does() {
    use gaffer::engine::{EngineEvent, EngineSnapshot};
    use gaffer::tui::{Model, Msg, update};
    let p = Project::new(
        "[jobs.j.tasks.flaky]\nretry = { max_attempts = 2, initial_interval = \"10ms\" }\nrun = '[ \"$GAFFER_ATTEMPT\" -ge 4 ]'\n",
    );
    assert_eq!(p.run_json(&[]).0, 1);
    let reader = gaffer::store::open_reader(&p.state_dir()).expect("reader");
    let snapshot = EngineSnapshot {
        job_runs: reader.job_runs().expect("job runs").iter().map(gaffer::report::JobRunView::from).collect(),
        task_runs: reader.task_runs().expect("task runs").iter().map(gaffer::report::TaskRunView::from).collect(),
        ..EngineSnapshot::default()
    };
    drop(reader);
    let mut model = Model::new(snapshot, 0, "test", Vec::new());
    let seen = p.journal().len();
    assert!(p.run(&["retry", "1"]).status.success());
    assert_eq!(p.run_json(&[]).0, 0);
    for e in p.journal()[seen..].iter().filter_map(EngineEvent::from_json) {
        update(&mut model, Msg::Engine(e));
    }
    let t = p.task("flaky");
    assert_eq!(t["attempt"], 4);
    let cli =
        gaffer::headless::tries(t["attempts_in_series"].as_u64().unwrap_or(0), t["max_attempts"].as_u64().unwrap_or(0));
    assert_eq!(cli, "2/2");
    assert_eq!(gaffer::tui::view::attempts(&model.tasks[&1].rec), cli);
}

/// Model fallback: `retry.models` gives attempt n the n-th model (the last repeats) as
/// `{{ model }}` and `GAFFER_MODEL`, recorded on the attempt; a person's retry starts again from
/// the first. `{{ model }}` without `models` is a validation error.
#[test]
fn model_fallback_gives_each_attempt_its_model() {
    let p = Project::new(
        r#"
[jobs.j.tasks.agent]
retry = { max_attempts = 3, initial_interval = "10ms", models = ["claude-sonnet-4-5", "claude-haiku-4-5"] }
env = { ASKED = "{{ model }}" }
run = 'echo "$GAFFER_ATTEMPT $ASKED $GAFFER_MODEL" >> models.log; exit 1'
"#,
    );
    assert_eq!(p.run_json(&[]).0, 1);
    assert!(p.run(&["retry", "1"]).status.success());
    assert_eq!(p.run_json(&[]).0, 1);
    let log = std::fs::read_to_string(p.path().join("models.log")).expect("models.log");
    assert_eq!(
        log,
        "1 claude-sonnet-4-5 claude-sonnet-4-5\n2 claude-haiku-4-5 claude-haiku-4-5\n3 claude-haiku-4-5 claude-haiku-4-5\n\
         4 claude-sonnet-4-5 claude-sonnet-4-5\n5 claude-haiku-4-5 claude-haiku-4-5\n6 claude-haiku-4-5 claude-haiku-4-5\n"
    );
    let shown = p.json(&["show", "1", "--json"]);
    let models: Vec<&str> =
        shown["attempts"].as_array().into_iter().flatten().filter_map(|a| a["model"].as_str()).collect();
    assert_eq!(models[..3], ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-haiku-4-5"]);
    let human = String::from_utf8_lossy(&p.run(&["show", "1"]).stdout).into_owned();
    assert!(human.contains("model claude-haiku-4-5"), "{human}");

    let bad = Project::new("[jobs.j.tasks.t]\nenv = { M = \"{{ model }}\" }\nrun = 'true'\n");
    let out = bad.run(&["validate", "workflow.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("workflow.toml:2:"), "{}", stderr(&out));
    assert!(stderr(&out).contains("`model` has a value only with `retry.models`"), "{}", stderr(&out));
    let bad = Project::new("[jobs.j.tasks.t]\nretry = { models = [] }\nrun = 'true'\n");
    let out = bad.run(&["validate", "workflow.toml"]);
    assert!(stderr(&out).contains("workflow.toml:2:20: `models` needs from 1 to 100 model names"), "{}", stderr(&out));
}

/// Output validation: a result that does not match `expect` fails its attempt with reason
/// `invalid_output` and the reason, and the retry policy gives it another attempt.
#[test]
fn expect_fails_attempts_whose_result_does_not_conform() {
    let p = Project::new(
        r#"
[defaults]
retry = { max_attempts = 2, initial_interval = "10ms" }
[jobs.j.tasks.verdict]
expect = { output = "verdict", matches = "^(approve|reject)$" }
run = '[ "$GAFFER_ATTEMPT" = 1 ] && echo "output verdict=maybe" >&3 || echo "output verdict=approve" >&3'
[jobs.j.tasks.review]
expect = { output = "review", json_schema = "schemas/review.json" }
run = '''[ "$GAFFER_ATTEMPT" = 1 ] && echo 'output review={"verdict": 3}' >&3 || echo 'output review={"verdict": "reject"}' >&3'''
"#,
    );
    std::fs::create_dir(p.path().join("schemas")).expect("mkdir");
    let schema =
        r#"{"type": "object", "required": ["verdict"], "properties": {"verdict": {"enum": ["approve", "reject"]}}}"#;
    std::fs::write(p.path().join("schemas/review.json"), schema).expect("schema");
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    let failed: Vec<(String, String)> = named(&events, "task.failed")
        .iter()
        .map(|e| (e["task"].as_str().unwrap_or("").to_string(), e["detail"].as_str().unwrap_or("").to_string()))
        .collect();
    assert!(named(&events, "task.failed").iter().all(|e| e["reason"] == "invalid_output"), "{events:#?}");
    assert!(
        failed.contains(&("verdict".into(), "output `verdict` does not match `^(approve|reject)$`: `maybe`".into())),
        "{failed:?}"
    );
    assert!(
        failed.iter().any(|(t, d)| t == "review" && d.contains("does not conform to its schema: at /verdict:")),
        "{failed:?}"
    );
    for task in ["verdict", "review"] {
        let shown = p.json(&["show", &p.task(task)["id"].to_string(), "--json"]);
        assert_eq!(shown["attempts"][0]["reason"], "invalid_output");
        assert_eq!((shown["state"].as_str(), shown["attempt"].as_u64()), (Some("succeeded"), Some(2)));
    }
}

/// `expect` is checked by `validate` with `file:line:col`: a bad pattern, a schema file that
/// is missing or not a schema, a check of the agent result on a task that has none.
#[test]
fn expect_is_validated_with_its_position() {
    let p = Project::new(
        r#"[jobs.j.tasks.a]
expect = { output = "v", matches = "^(approve" }
run = 'true'
[jobs.j.tasks.b]
expect = { output = "v", json_schema = "missing.json" }
run = 'true'
[jobs.j.tasks.c]
expect = { output = "v", json_schema = "bad.json" }
run = 'true'
[jobs.j.tasks.d]
expect = { matches = "x" }
run = 'true'
[jobs.j.tasks.e]
expect = { output = "v" }
run = 'true'
"#,
    );
    std::fs::write(p.path().join("bad.json"), r#"{"type": 12}"#).expect("bad schema");
    let out = p.run(&["validate", "workflow.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let said = stderr(&out);
    for expected in [
        "workflow.toml:2:36: bad `matches` pattern `^(approve`: unclosed group",
        "workflow.toml:5:40: `json_schema`: cannot read ",
        "workflow.toml:8:40: `json_schema`: ",
        "is not a valid JSON Schema",
        "workflow.toml:11:10: `expect` checks the agent's result (output `result`), which task `d` does not have",
        "workflow.toml:14:10: `expect` needs `json_schema = \"FILE\"` or `matches = \"PATTERN\"`",
    ] {
        assert!(said.contains(expected), "expected `{expected}` in:\n{said}");
    }
}

fn pids(p: &Project) -> Vec<i32> {
    let text = std::fs::read_to_string(p.path().join("pids.log")).unwrap_or_default();
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Poison pills: a task run whose attempts gaffer itself dying interrupted twice in a row (kill
/// -9 while it ran) is quarantined as a dead letter with reason `poison` instead of being
/// started a third time; a person's retry gives it a fresh series.
#[test]
fn two_crashes_in_a_row_quarantine_the_task_run_as_poison() {
    let p = Project::new(
        r#"
[jobs.j.tasks.heavy]
retry = { max_attempts = 5, initial_interval = "10ms" }
run = 'test -e fixed && exit 0; echo $$ >> pids.log; sleep 300'
"#,
    );
    for crash in 1..=2 {
        let mut gaffer = p.spawn_run(&[]);
        wait_until(Duration::from_secs(10), "the attempt to start", || pids(&p).len() == crash);
        gaffer.kill().expect("kill -9");
        let _ = gaffer.wait();
    }
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1, "{events:#?}");
    assert_eq!(pids(&p).len(), 2, "not started a third time");
    assert!(pids(&p).iter().all(|&pid| !support::alive(pid)), "the orphaned attempts were killed");
    let heavy = p.task("heavy");
    assert_eq!((heavy["state"].as_str(), heavy["reason"].as_str()), (Some("dead"), Some("poison")), "{heavy}");
    assert!(heavy["detail"].as_str().is_some_and(|d| d.contains("quarantined")), "{heavy}");
    assert_eq!(named(&events, "task.dead_lettered")[0]["reason"], "poison");
    assert_eq!(p.json(&["dlq", "list", "--json"]).as_array().map(Vec::len), Some(1));

    std::fs::write(p.path().join("fixed"), "").expect("fix");
    assert!(p.run(&["retry", &heavy["id"].to_string()]).status.success());
    assert_eq!(p.run_json(&[]).0, 0);
    assert_eq!(p.task("heavy")["state"], "succeeded");
}

/// `retry j7 --from TASK` spends too: a spent job budget refuses it the same way, offline and
/// live, until `--budget` raises it.
#[test]
fn a_rerun_from_a_task_is_held_by_the_same_budgets() {
    let p = Project::new(
        r#"
[jobs.j]
budget_usd = 0.01
[jobs.j.tasks.a]
run = 'echo "cost usd=0.02" >&3'
[jobs.j.tasks.b]
needs = ["a"]
run = 'true'
"#,
    );
    assert_eq!(p.run_json(&[]).0, 1);
    assert_eq!(p.task("b")["state"], "skipped");
    let out = p.run(&["retry", "j1", "--from", "a"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("gaffer retry j1 --from a --budget USD"), "{}", stderr(&out));
    assert_eq!(inbox_files(&p), 0);
    let out = p.run(&["retry", "j1", "--from", "a", "--budget", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    assert_eq!(p.task("b")["state"], "succeeded");
    assert_eq!(p.json(&["show", "j1", "--json"])["budget_raised_usd"], 1.0);
}

/// `expect` without `output` checks the agent's result (`outputs.result`, from an agent cost
/// source's JSON result): here against a schema, the first answer prose, the second JSON.
#[test]
fn expect_checks_the_agent_result_by_default() {
    let p = Project::new(
        r#"
[jobs.j.tasks.agent]
cost = "claude-json"
retry = { max_attempts = 2, initial_interval = "10ms" }
expect = { json_schema = "review.json" }
run = '''[ "$GAFFER_ATTEMPT" = 1 ] && echo '{"type":"result","result":"I approve.","total_cost_usd":0.001}' || echo '{"type":"result","result":"{\"verdict\":\"approve\"}","total_cost_usd":0.001}' '''
"#,
    );
    std::fs::write(p.path().join("review.json"), r#"{"type": "object", "required": ["verdict"]}"#).expect("schema");
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    let failed = named(&events, "task.failed");
    assert_eq!(failed.len(), 1, "{events:#?}");
    assert_eq!(failed[0]["reason"], "invalid_output");
    assert!(failed[0]["detail"].as_str().is_some_and(|d| d.starts_with("output `result` is not JSON")), "{failed:?}");
    assert_eq!(p.task("agent")["outputs"]["result"], r#"{"verdict":"approve"}"#);
}
