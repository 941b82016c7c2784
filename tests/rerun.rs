//! Running part of a job again, through the real binary: `run FILE JOB --only TASK`,
//! `retry j7 --from TASK`, retries after the workflow file was edited (`--definition`), and
//! the hooks that tell someone when things go wrong.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Project, Server, alive, named, wait_until};

/// fetch → analyze → deliver, and `other` alone. Every task counts its runs in a file; fetch
/// says which of its runs it was, analyze passes that on with its own attempt number.
const PIPELINE: &str = r#"
[jobs.j.tasks.fetch]
run = 'echo x >> fetch.count; echo "output run=$(wc -l < fetch.count | tr -d " ")" >&3'
[jobs.j.tasks.analyze]
needs = ["fetch"]
run = 'echo x >> analyze.count; echo "output got=$FROM/$GAFFER_ATTEMPT" >&3'
env = { FROM = "{{ tasks.fetch.outputs.run }}" }
[jobs.j.tasks.deliver]
needs = ["analyze"]
run = 'echo "$GOT" >> deliver.count'
env = { GOT = "{{ tasks.analyze.outputs.got }}" }
[jobs.j.tasks.other]
run = 'echo x >> other.count'
"#;

fn count(p: &Project, name: &str) -> usize {
    std::fs::read_to_string(p.path().join(name)).map_or(0, |text| text.lines().count())
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The task runs of one job run, by task name.
fn runs_of(p: &Project, job_run: u64) -> Vec<Value> {
    let shown = p.json(&["show", &format!("j{job_run}"), "--json"]);
    shown["tasks"].as_array().cloned().unwrap_or_default()
}

fn run_of<'a>(runs: &'a [Value], task: &str) -> Option<&'a Value> {
    runs.iter().find(|t| t["task"] == task)
}

fn job_runs(p: &Project) -> Vec<Value> {
    p.json(&["jobs", "--json"]).as_array().cloned().unwrap_or_default()
}

#[test]
fn only_runs_one_task_with_its_needs_outputs_from_their_last_success() {
    let p = Project::new(PIPELINE);

    // Nothing has run: analyze's need has no succeeded run to lend its outputs.
    let out = p.run(&["run", "workflow.toml", "j", "--only", "analyze", "--headless"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("task `analyze` needs `fetch`, which has no succeeded run"), "{}", stderr(&out));
    assert!(!p.state_dir().exists(), "a refused --only writes nothing");
    let out = p.run(&["run", "workflow.toml", "j", "--only", "nope", "--headless"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no task `nope` (the tasks are: fetch, analyze, deliver, other)"),
        "{}",
        stderr(&out)
    );
    let out = p.run(&["run", "workflow.toml", "--only", "fetch", "--headless"]);
    assert_eq!(out.status.code(), Some(2), "--only needs its job named");

    // A task without needs runs alone at once.
    let (code, _) = p.run_json(&["j", "--only", "fetch"]);
    assert_eq!(code, 0);
    assert_eq!((count(&p, "fetch.count"), count(&p, "other.count")), (1, 0));

    let (code, _) = p.run_json(&["j"]);
    assert_eq!(code, 0);
    assert_eq!(count(&p, "fetch.count"), 2);
    let full = runs_of(&p, 2);
    let fetched = run_of(&full, "fetch").expect("fetch ran")["id"].clone();

    // Now analyze alone: fetch is not run again, its latest outputs are taken.
    let (code, events) = p.run_json(&["j", "--only", "analyze"]);
    assert_eq!(code, 0, "{events:#?}");
    assert_eq!((count(&p, "fetch.count"), count(&p, "analyze.count"), count(&p, "deliver.count")), (2, 2, 1));
    assert_eq!(count(&p, "other.count"), 1, "the other tasks are not part of the run");
    let only = runs_of(&p, 3);
    assert_eq!(only.len(), 2, "analyze and its borrowed need, nothing else: {only:#?}");
    let analyze = run_of(&only, "analyze").expect("analyze");
    assert_eq!(analyze["state"], "succeeded");
    assert_eq!(analyze["outputs"]["got"], "2/1", "fetch's outputs from its latest succeeded run");
    let fetch = run_of(&only, "fetch").expect("borrowed fetch");
    assert_eq!((fetch["state"].clone(), fetch["attempt"].clone()), ("succeeded".into(), 0.into()));
    assert!(fetch["detail"].as_str().is_some_and(|d| d.contains(&format!("task run {fetched}"))), "{fetch:#}");
    assert_eq!(named(&events, "task.started").len(), 1, "one task ran");
    assert_eq!(job_runs(&p).iter().find(|j| j["id"] == 3).map(|j| j["state"].clone()), Some("succeeded".into()));

    // The run's outcome is its one task's.
    std::fs::write(p.path().join("workflow.toml"), PIPELINE.replace("echo \"$GOT\"", "exit 4; echo")).expect("edit");
    let (code, _) = p.run_json(&["j", "--only", "deliver"]);
    assert_eq!(code, 1);
    let failed = job_runs(&p).into_iter().find(|j| j["id"] == 4).expect("j4");
    assert_eq!(failed["state"], "failed");
    assert_eq!(runs_of(&p, 4).len(), 3, "deliver with analyze and fetch borrowed");
}

#[test]
fn retry_from_reruns_a_task_and_everything_downstream() {
    let p = Project::new(PIPELINE);
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 0);
    let before = runs_of(&p, 1);

    // Refused with the reason, nothing sent.
    let out = p.run(&["retry", "j1", "--from", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no task `nope` (the tasks are: fetch, analyze, deliver, other)"),
        "{}",
        stderr(&out)
    );
    let task_run = run_of(&before, "analyze").expect("analyze")["id"].to_string();
    let out = p.run(&["retry", &task_run, "--from", "analyze"]);
    assert_eq!(out.status.code(), Some(2), "--from takes a job run");
    assert!(
        !p.state_dir().join("inbox").exists()
            || std::fs::read_dir(p.state_dir().join("inbox")).expect("inbox").next().is_none()
    );

    // Offline: recorded, applied at the next start.
    let out = p.run(&["retry", "j1", "--from", "analyze"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("next starts"), "{}", stdout(&out));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    assert!(named(&events, "job.started").iter().any(|e| e["from"] == "analyze"), "{events:#?}");
    assert_eq!(job_runs(&p).len(), 1, "the job run went again, no new one");
    assert_eq!((count(&p, "fetch.count"), count(&p, "other.count")), (1, 1), "upstream and unrelated tasks kept");
    assert_eq!((count(&p, "analyze.count"), count(&p, "deliver.count")), (2, 2));
    let after = runs_of(&p, 1);
    let analyze = run_of(&after, "analyze").expect("analyze");
    assert_eq!(analyze["attempt"], 2, "attempt numbers go on");
    assert_eq!(analyze["outputs"]["got"], "1/2", "fresh outputs from the new attempt");
    assert_eq!(run_of(&after, "fetch").expect("fetch")["attempt"], 1);
    let delivered = std::fs::read_to_string(p.path().join("deliver.count")).expect("deliver");
    assert_eq!(delivered, "1/1\n1/2\n", "deliver saw the new output");

    // Live, through the socket of a running instance.
    let _server = Server::start(&p);
    let out = p.run(&["retry", "j1", "--from", "deliver"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("runs again from `deliver`"), "{}", stdout(&out));
    wait_until(Duration::from_secs(10), "deliver to run a third time", || {
        count(&p, "deliver.count") == 3 && job_runs(&p)[0]["state"] == "succeeded"
    });
    assert_eq!(count(&p, "analyze.count"), 2);
    let out = p.run(&["retry", "j1", "--from", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("the tasks are: fetch, analyze, deliver, other"), "{}", stderr(&out));
}

const V1: &str = r#"
[jobs.j.tasks.t]
retry = { max_attempts = 1 }
run = 'echo v1 >> ran; exit 1'
"#;

#[test]
fn a_retry_after_editing_the_file_says_so_and_switches_only_when_asked() {
    let p = Project::new(V1);
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 1);
    let id = p.task("t")["id"].to_string();
    std::fs::write(p.path().join("workflow.toml"), V1.replace("echo v1 >> ran; exit 1", "echo v2 >> ran"))
        .expect("edit");
    let ran = || std::fs::read_to_string(p.path().join("ran")).unwrap_or_default();

    // Offline no file is known: the run keeps what it started with, and the command says so.
    let out = p.run(&["retry", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("keeps the definition it started with"), "{}", stdout(&out));
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 1, "the stored command ran again and failed again");
    assert_eq!(ran(), "v1\nv1\n");

    // Live the file in use is known: the retry is refused and says why.
    let _server = Server::start(&p);
    let out = p.run(&["retry", &id]);
    assert_eq!(out.status.code(), Some(1));
    let said = stderr(&out);
    assert!(said.contains("job run j1") && said.contains("has changed since (task `t` changed)"), "{said}");
    assert!(said.contains("--definition current"), "{said}");
    assert_eq!(p.task("t")["state"], "dead", "nothing ran");

    let out = p.run(&["dlq", "retry", &id, "--definition", "current"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("job run j1 now uses workflow.toml as it is now"), "{}", stdout(&out));
    wait_until(Duration::from_secs(10), "the edited task to succeed", || p.task("t")["state"] == "succeeded");
    assert_eq!(ran(), "v1\nv1\nv2\n");
    assert_eq!(p.task("t")["attempt"], 3);
    wait_until(Duration::from_secs(5), "job.redefined in the journal", || {
        !named(&p.journal(), "job.redefined").is_empty()
    });
    let redefined = named(&p.journal(), "job.redefined").into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(redefined.len(), 1, "the switch is recorded");
    assert_eq!(redefined[0]["job_run"], 1);
    assert_eq!(redefined[0]["changes"][0], "task `t` changed");

    // Switched: the run's definition is the file's now, so nothing differs any more.
    let out = p.run(&["retry", "j1", "--from", "t"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(Duration::from_secs(10), "the third v2", || ran().ends_with("v2\nv2\n"));
}

#[test]
fn hooks_get_the_event_on_stdin_and_their_failures_are_only_warnings() {
    let p = Project::new(
        r#"
[queues.q]
on_dead_letter = 'cat > "$GAFFER_HOOK_LEVEL.dead.json"'
on_failure = 'echo "queue hook says no"; exit 3'
[jobs.j]
budget_usd = 0.10
on_failure = 'cat > job.failed.json'
on_budget = 'cat > budget.json'
on_dead_letter = { run = 'echo $$ > slow.pid; sleep 60', timeout = "1s" }
[jobs.j.tasks.spend]
queue = "q"
retry = { max_attempts = 1 }
run = 'echo "cost usd=0.25" >&3; sleep 0.2; exit 1'
"#,
    );
    let started = std::time::Instant::now();
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1, "the task failed; hooks change nothing about that");
    assert!(started.elapsed() < Duration::from_secs(20));
    let read = |name: &str| -> Value {
        let text = std::fs::read_to_string(p.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"))
    };
    assert_eq!(read("job.failed.json")["event"], "job.failed");
    assert_eq!(read("job.failed.json")["job_run"], 1);
    let dead = read("queue.dead.json");
    assert_eq!((dead["event"].as_str(), dead["queue"].as_str()), (Some("task.dead_lettered"), Some("q")));
    assert_eq!(read("budget.json")["event"], "budget.exceeded");

    let journal = p.journal();
    let failed: Vec<&Value> = named(&journal, "hook.failed");
    let of = |hook: &str, level: &str| failed.iter().find(|e| e["hook"] == hook && e["level"] == level).copied();
    let queue_hook = of("on_failure", "queue").unwrap_or_else(|| panic!("queue on_failure failed: {journal:#?}"));
    assert_eq!((queue_hook["reason"].as_str(), queue_hook["exit_code"].as_i64()), (Some("exit_code"), Some(3)));
    assert_eq!(queue_hook["for_event"], "task.failed");
    let slow = of("on_dead_letter", "job").expect("the slow hook timed out");
    assert_eq!(slow["reason"], "timeout");
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert_eq!(named(&events, "hook.failed").len(), 2, "said on --json too");

    // Their output is kept under the state dir, in files named by ids.
    let log = p.state_dir().join(queue_hook["log"].as_str().expect("log path"));
    let text = std::fs::read_to_string(&log).expect("hook log");
    assert!(text.contains("queue hook says no") && text.contains("--- exit 3"), "{text}");
    let names: Vec<String> = std::fs::read_dir(p.state_dir().join("logs/1/hooks"))
        .expect("hook logs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("spend") && !n.contains(".q.")), "{names:?}");
    assert!(names.contains(&"j1.job.on_failure.log".to_string()), "{names:?}");

    // The hook past its timeout was killed, its process group with it.
    let pid: i32 = std::fs::read_to_string(p.path().join("slow.pid")).expect("pid").trim().parse().expect("pid");
    wait_until(Duration::from_secs(5), "the slow hook to be gone", || !alive(pid));
}

#[test]
fn a_bad_hook_is_reported_with_its_place() {
    let p = Project::new(
        "[jobs.j]\non_failure = 3\non_budget = { run = \"x\", timout = \"1s\" }\n[jobs.j.tasks.t]\nrun = \"true\"\n",
    );
    let out = p.run(&["validate", "workflow.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let said = stderr(&out);
    assert!(said.contains("workflow.toml:2:14: `on_failure` must be shell text"), "{said}");
    assert!(said.contains("workflow.toml:3:26: unknown key `timout` in `on_budget`"), "{said}");
}
