//! What a new user reaches for (issue 8): `env_file`, secret params, `gaffer init`, `gaffer
//! schema`, `jobs --job --limit`, `logs j7` and `gaffer tui` with no instance running — through
//! the real binary.

mod support;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{Project, Server, named, wait_until};

/// Not a word that appears anywhere else: if these bytes show up, they came from the param.
const SECRET: &str = "tok-7f3a9c1e-SECRET-d41d8";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `gaffer ARGS` whose tasks can check the secret they get against `$EXPECTED` (gaffer's own
/// environment, so the workflow file never holds the value); no stdin.
fn gaffer_expecting(p: &Project, args: &[&str]) -> std::process::Command {
    let mut cmd = p.gaffer(args);
    cmd.env("EXPECTED", SECRET).stdin(Stdio::null());
    cmd
}

/// `gaffer serve workflow.toml --headless EXTRA` (see `gaffer_expecting`), once its socket exists.
fn serve_expecting(p: &Project, extra: &[&str]) -> Server {
    let mut args = vec!["serve", "workflow.toml", "--headless"];
    args.extend_from_slice(extra);
    let server = Server::spawn(gaffer_expecting(p, &args).stdout(Stdio::null()).stderr(Stdio::null()));
    wait_until(Duration::from_secs(10), "the control socket", || p.state_dir().join("gaffer.sock").exists());
    server
}

/// Every regular file under `dir` (state.redb, logs, the journal…) whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").map(|e| e.expect("entry")) {
            let (path, kind) = (entry.path(), entry.file_type().expect("file type"));
            if kind.is_dir() {
                todo.push(path);
            } else if kind.is_file() {
                seen += 1;
                let bytes = std::fs::read(&path).expect("read file");
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    assert!(seen >= 3, "the state dir should hold a store, logs and a journal ({seen} files)");
    found
}

/// A deploy job whose task checks it got the secret (the expected value comes from gaffer's own
/// environment, so the workflow file never holds it) and passes it through env, args and stdin.
const DEPLOY: &str = r#"
[jobs.deploy]
params = { token = { secret = true, env = "DEPLOY_TOKEN" }, region = "eu" }

[jobs.deploy.tasks.push]
args = ["sh", "-c", 'test "$1" = "$EXPECTED" && test "$TOKEN" = "$EXPECTED" && read -r line && test "$line" = "$EXPECTED" && echo "pushed to $REGION"', "push", "{{ params.token }}"]
env = { TOKEN = "{{ params.token }}", REGION = "{{ params.region }}" }
stdin = "{{ params.token }}\n"
retry = { max_attempts = 1 }

[jobs.deploy.tasks.broken]
needs = ["push"]
args = ["echo", "{% include params.token %}"]
retry = { max_attempts = 1 }
"#;

#[test]
fn a_secret_param_reaches_the_task_and_nothing_gaffer_writes_or_shows() {
    let p = Project::new(DEPLOY);
    let token = format!("token={SECRET}");
    let out = gaffer_expecting(&p, &["run", "workflow.toml", "--json", "--param", &token]).output().expect("run");
    assert_eq!(out.status.code(), Some(1), "`broken` fails: {}", stderr(&out));
    let events = support::events(&out.stdout, &out.stderr);
    assert_eq!(named(&events, "task.succeeded").len(), 1, "push got the secret through args, env and stdin");
    assert_eq!(p.task("push")["state"], "succeeded");
    let broken = p.task("broken");
    assert_eq!(broken["state"], "dead", "a template error quoting the value fails the task");
    let detail = broken["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("non-existing template \"***\""), "the value is redacted from the error: {detail}");
    let started = named(&events, "job.started");
    assert_eq!(started[0]["params"], serde_json::json!({"region": "eu", "token": "***"}));

    let mut shown = stdout(&out) + &stderr(&out);
    for args in [
        &["show", "j1"][..],
        &["show", "j1", "--json"],
        &["show", "2", "--json"],
        &["jobs"],
        &["jobs", "--json"],
        &["tasks", "--json"],
        &["logs", "j1"],
        &["status", "--json"],
    ] {
        let out = p.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        shown += &(stdout(&out) + &stderr(&out));
    }
    assert!(shown.contains("token=***") && shown.contains("\"token\": \"***\""), "shown masked:\n{shown}");
    assert!(shown.contains("pushed to eu"), "the task's own output is there");
    assert!(!shown.contains(SECRET), "a command printed the secret:\n{shown}");
    assert_eq!(
        files_holding(&p.state_dir(), SECRET),
        Vec::<String>::new(),
        "the secret was written under the state dir"
    );
}

#[test]
fn a_secret_submitted_to_a_server_stays_in_its_memory() {
    let p = Project::new(DEPLOY);
    let _server = serve_expecting(&p, &[]);
    let missing = p.run(&["submit", "deploy"]);
    assert_eq!(missing.status.code(), Some(2), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("needs secret param `token` (pass --param token=…, or set $DEPLOY_TOKEN)"));
    let out = p.run(&["submit", "deploy", "--param", &format!("token={SECRET}")]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(Duration::from_secs(10), "the run to end", || p.json(&["jobs", "--json"])[0]["state"] == "failed");
    assert_eq!(p.task("push")["state"], "succeeded");
    let shown = stdout(&p.run(&["show", "j1"])) + &stdout(&p.run(&["jobs", "--json"]));
    assert!(shown.contains("***") && !shown.contains(SECRET), "{shown}");
    assert_eq!(files_holding(&p.state_dir(), SECRET), Vec::<String>::new());
}

/// A run interrupted by a kill -9 cannot go on without its secret: the restart refuses, names
/// the `--param` (and the variable) to give, and changes nothing; given it, the run finishes.
#[test]
fn a_run_with_a_secret_resumes_only_when_given_it_again() {
    let p = Project::new(
        r#"
[jobs.deploy]
params = { token = { secret = true, env = "DEPLOY_TOKEN" } }

[jobs.deploy.tasks.push]
run = 'test "$TOKEN" = "$EXPECTED" || exit 9; test -e started || { touch started; sleep 60; }'
env = { TOKEN = "{{ params.token }}" }
retry = { max_attempts = 3, initial_interval = "100ms" }
"#,
    );
    let token = format!("token={SECRET}");
    let mut first = gaffer_expecting(&p, &["run", "workflow.toml", "--json", "--param", &token])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    wait_until(Duration::from_secs(10), "the task to start", || p.path().join("started").exists());
    first.kill().expect("kill -9");
    let _ = first.wait();

    let refused = gaffer_expecting(&p, &["run", "workflow.toml", "--headless"]).output().expect("run");
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let said = stderr(&refused);
    assert!(
        said.contains("job run j1 (`deploy`)")
            && said.contains("`token` (pass --param token=…, or set $DEPLOY_TOKEN)")
            && said.contains("gaffer cancel j1"),
        "{said}"
    );
    let push = p.task("push");
    assert_eq!((push["state"].as_str(), push["attempt"].as_u64()), (Some("running"), Some(1)), "nothing changed");

    let resumed =
        gaffer_expecting(&p, &["run", "workflow.toml", "--json"]).env("DEPLOY_TOKEN", SECRET).output().expect("run");
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    let push = p.task("push");
    assert_eq!((push["state"].as_str(), push["attempt"].as_u64()), (Some("succeeded"), Some(2)));
    assert_eq!(p.json(&["jobs", "--json"]).as_array().map(Vec::len), Some(1), "resumed, not started again");
    assert_eq!(files_holding(&p.state_dir(), SECRET), Vec::<String>::new());
}

/// A retry is work done again: a server that was not given the secret refuses it, saying how
/// to give it; one started with `serve --param` retries with the value.
#[test]
fn a_retry_in_another_process_needs_the_secret_again() {
    let p = Project::new(
        r#"
[jobs.deploy]
params = { token = { secret = true } }

[jobs.deploy.tasks.push]
run = 'test "$TOKEN" = "$EXPECTED" || exit 9; test -e fixed || exit 3'
env = { TOKEN = "{{ params.token }}" }
retry = { max_attempts = 1 }
"#,
    );
    let token = format!("token={SECRET}");
    let out = gaffer_expecting(&p, &["run", "workflow.toml", "--headless", "--param", &token]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(p.task("push")["exit_code"], 3, "it had the secret; it failed for its own reason");
    std::fs::write(p.path().join("fixed"), "").expect("fix");

    let server = serve_expecting(&p, &[]);
    let refused = p.run(&["retry", "1"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("needs them again: `token` (pass --param token=…)"), "{}", stderr(&refused));
    assert_eq!(p.task("push")["state"], "dead");
    drop(server);
    wait_until(Duration::from_secs(10), "the socket to go", || !p.state_dir().join("gaffer.sock").exists());

    let _server = serve_expecting(&p, &["--param", &token]);
    let out = p.run(&["retry", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(Duration::from_secs(10), "the retry to succeed", || p.task("push")["state"] == "succeeded");
}

#[test]
fn serve_refuses_params_it_cannot_use_and_schedules_it_cannot_fire() {
    let p = Project::new(
        "[jobs.nightly]\nschedule = \"@daily\"\nparams = { token = { secret = true, env = \"NIGHTLY_TOKEN\" }, topic = \"x\" }\n\
         [jobs.nightly.tasks.t]\nrun = 'true'\nenv = { T = \"{{ params.token }}\" }\n",
    );
    let out = p.run(&["serve", "workflow.toml", "--headless"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("job `nightly` needs secret param `token` (pass --param token=…, or set $NIGHTLY_TOKEN): its schedule fires it"),
        "{}",
        stderr(&out)
    );
    let out = p.run(&["serve", "workflow.toml", "--headless", "--param", "topic=y"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("serve --param gives secret params only"), "{}", stderr(&out));
    assert!(!p.state_dir().exists(), "a refused serve leaves nothing behind");
}

#[test]
fn a_secret_cannot_have_a_default_in_the_file() {
    let p = Project::new(
        "[jobs.j]\nparams = { token = { secret = true, default = \"abc\" } }\n[jobs.j.tasks.t]\nrun = 'true'\n",
    );
    let out = p.run(&["validate", "workflow.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("workflow.toml:2:47: secret param `token` cannot have a `default`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn env_file_values_reach_the_task_and_env_wins_over_them() {
    let p = Project::new(
        "[defaults]\nenv_file = \"config/.env\"\n[jobs.j.tasks.t]\nrun = 'echo \"$A $B $C\" > seen'\nenv = { B = \"from-env\" }\n",
    );
    std::fs::create_dir(p.path().join("config")).expect("mkdir");
    std::fs::write(p.path().join("config/.env"), "# settings\nA=from-file\nB=from-file\nC='{{ not a template }}'\n")
        .expect("write");
    let out = p.run(&["run", "workflow.toml", "--headless"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = std::fs::read_to_string(p.path().join("seen")).expect("seen");
    assert_eq!(seen, "from-file from-env {{ not a template }}\n");

    std::fs::remove_file(p.path().join("config/.env")).expect("rm");
    let out = p.run(&["validate", "workflow.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("workflow.toml:2:12: env_file `config/.env`: cannot read "), "{}", stderr(&out));
}

#[test]
fn init_writes_a_starter_that_validates_runs_and_is_never_overwritten() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'true'\n");
    let out = p.run(&["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("wrote gaffer.toml"));
    let out = p.run(&["validate", "gaffer.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&["run", "gaffer.toml", "--headless", "--param", "name=gaffer"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let logs = stdout(&p.run(&["logs", "j1"]));
    assert!(logs.contains("hello, gaffer") && logs.contains("HELLO, GAFFER"), "{logs}");

    let before = std::fs::read(p.path().join("workflow.toml")).expect("read");
    let out = p.run(&["init", "workflow.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("workflow.toml already exists; nothing was written"), "{}", stderr(&out));
    assert_eq!(std::fs::read(p.path().join("workflow.toml")).expect("read"), before);
}

#[test]
fn schema_prints_a_json_schema_of_the_workflow_file() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'true'\n");
    let out = p.run(&["schema"]);
    assert!(out.status.success());
    let schema: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let task = &schema["definitions"]["Task"]["properties"];
    for key in ["run", "args", "env", "env_file", "needs", "retry", "cache", "wait_for"] {
        assert!(task.get(key).is_some(), "Task lacks `{key}`");
    }
    assert_eq!(schema["definitions"]["Task"]["additionalProperties"], false);
}

#[test]
fn jobs_by_name_newest_first_with_params_and_a_limit() {
    let p = Project::new(
        "[jobs.a]\nparams = { n = \"0\" }\n[jobs.a.tasks.t]\nrun = 'true'\nenv = { N = \"{{ params.n }}\" }\n\
         [jobs.b.tasks.t]\nrun = 'true'\n",
    );
    for n in 1..=3 {
        let out = p.run(&["run", "workflow.toml", "--headless", "--param", &format!("n={n}")]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let runs = p.json(&["jobs", "--job", "a", "--limit", "2", "--json"]);
    let ids: Vec<u64> = runs.as_array().expect("array").iter().map(|j| j["id"].as_u64().expect("id")).collect();
    assert_eq!(ids, [5, 3], "the newest two runs of `a` (b has the even ids), newest first");
    assert_eq!(runs[0]["params"]["n"], "3");
    let table = stdout(&p.run(&["jobs", "--job", "a", "--limit", "1"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].contains("PARAMS") && lines[1].starts_with("j5") && lines[1].contains("n=3"), "{table}");
    assert_eq!(p.json(&["jobs", "--json"]).as_array().map(Vec::len), Some(6), "no filter: every run");
}

#[test]
fn logs_of_a_job_run_print_every_task_under_a_header() {
    let p = Project::new(
        "[jobs.j.tasks.first]\nrun = 'echo one; printf no-newline'\n[jobs.j.tasks.second]\nneeds = [\"first\"]\nrun = 'echo two'\n\
         [jobs.j.tasks.never]\nneeds = [\"first\"]\nrun = 'exit 1'\nretry = { max_attempts = 1 }\n[jobs.j.tasks.after]\nneeds = [\"never\"]\nrun = 'true'\n",
    );
    p.run(&["run", "workflow.toml", "--headless"]);
    let out = p.run(&["logs", "j1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "==> task run 1 j.first: attempt 1, succeeded <==\none\nno-newline\n\
         ==> task run 2 j.second: attempt 1, succeeded <==\ntwo\n\
         ==> task run 3 j.never: attempt 1, dead <==\n\
         ==> task run 4 j.after: skipped, no attempt <==\n"
    );
    let out = p.run(&["logs", "j1", "--follow"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--follow and --attempt take a task run id"), "{}", stderr(&out));
}

/// A child killed and reaped when dropped, so a failing assertion leaves nothing running
/// (`script` gone, its pseudo-terminal hangs up on the TUI inside).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gaffer tui` with no instance: the store read-only, in a real pseudo-terminal (`script`).
#[test]
fn tui_with_no_instance_running_opens_the_state_dir_read_only() {
    use std::io::{Read, Write};
    let p = Project::new(
        "[jobs.nightly]\nschedule = \"0 2 * * *\"\ntimezone = \"Europe/Berlin\"\n[jobs.nightly.tasks.t]\nrun = 'exit 4'\nretry = { max_attempts = 1 }\n",
    );
    let nothing = p.run(&["tui"]);
    assert_eq!(nothing.status.code(), Some(1));
    assert!(stderr(&nothing).contains("nothing has run in"), "{}", stderr(&nothing));
    p.run(&["run", "workflow.toml", "nightly", "--headless"]);

    let bin = env!("CARGO_BIN_EXE_gaffer");
    let mut child = Reaped(
        std::process::Command::new("script")
            .args(["-q", "-e", "-c", &format!("stty cols 100 rows 30; {bin} tui"), "/dev/null"])
            .current_dir(p.path())
            .env("GAFFER_STATE_DIR", p.state_dir())
            .env("TERM", "xterm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("script (util-linux)"),
    );
    // The bytes go through a terminal emulator, so the test reads the screen a person sees.
    let size = |n: u16| std::num::NonZeroU16::new(n).expect("not zero");
    let terminal = std::sync::Arc::new(std::sync::Mutex::new(vt100::Parser::new(size(30), size(100), 0)));
    let mut out = child.0.stdout.take().expect("stdout");
    let fed = terminal.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            fed.lock().expect("lock").process(&buf[..n]);
        }
    });
    let screen = || terminal.lock().expect("lock").screen().contents();
    let shows = |text: &str| screen().contains(text);
    let mut keys = child.0.stdin.take().expect("stdin");
    wait_until(Duration::from_secs(10), "the read-only header", || shows("read-only: no instance running"));
    keys.write_all(b"5").expect("key");
    wait_until(Duration::from_secs(10), "the dead letter", || shows("Dead letters (1)"));
    keys.write_all(b"r").expect("key");
    wait_until(Duration::from_secs(10), "the refusal on the status line", || {
        screen().lines().rev().nth(1).is_some_and(|l| l.contains("read-only: no instance running"))
    });
    assert!(shows("Dead letters (1)"), "nothing changed:\n{}", screen());
    keys.write_all(b"8").expect("key");
    wait_until(Duration::from_secs(10), "the schedules view", || shows("0 2 * * *") && shows("Europe/Berlin"));
    assert!(shows("not yet"), "it never fired:\n{}", screen());
    keys.write_all(b"q").expect("key");
    let status = child.0.wait().expect("tui ends");
    reader.join().expect("reader");
    assert!(status.success(), "q leaves the read-only TUI at once");
    assert_eq!(p.task("t")["state"], "dead", "nothing was retried");
}
