//! What each node of a cluster holds for itself, seen through `gaffer serve` nodes on one
//! private PostgreSQL (`gaffer::store::pg::testing`; skipped, and saying so, without
//! PostgreSQL installed): its secret params (SPEC: secrets live in memory only — the task on
//! any node gets the secret, no row of any table holds it, a node without it says so), the
//! values of its `env_file`s (read on the node that runs the task, never stored), its
//! own runs of a schedule (`overlap = "cancel_previous"` cancels every node's), and its own
//! path to the workflow file (a `retry` on another node does not see a changed definition).

mod support;

use std::process::Stdio;
use std::time::Duration;

use gaffer::store::pg::testing::TestDb;
use serde_json::Value;
use support::{Project, Server, wait_for_socket, wait_until};

const SECRET: &str = "s3cr3t-t0ken-4711";

/// Job `deploy`: `n` tasks that append `NODE TASK_RUN <env> <arg> <stdin>` to `{marks}`, each
/// field read from the secret param (stdin upper-cased, so a template that changes it counts).
fn secret_job(n: usize) -> String {
    let marks = "{marks}";
    let mut text = "[jobs.deploy]\n\
         params = { token = { secret = true, env = \"DEPLOY_TOKEN\" }, region = \"eu-west-9z\" }\n"
        .to_string();
    for i in 1..=n {
        text.push_str(&format!(
            "[jobs.deploy.tasks.t{i}]\n\
             args = [\"sh\", \"-c\", 'sleep 0.3; echo \"$NODE_TAG $GAFFER_TASK_RUN_ID $API_TOKEN $1 $(cat)\" >> {marks}', \"sh\", \"arg:{{{{ params.token }}}}\"]\n\
             env = {{ API_TOKEN = \"{{{{ params.token }}}}\", REGION = \"{{{{ params.region }}}}\" }}\n\
             stdin = \"in:{{{{ params.token | upper }}}}\"\n"
        ));
    }
    text
}

struct Nodes {
    db: TestDb,
    url: String,
    shared: tempfile::TempDir,
    projects: Vec<Project>,
    servers: Vec<Server>,
}

impl Nodes {
    /// One `serve` of `jobs` (`{marks}` in it: a file every node shares) per `(name, secret)`,
    /// given the secret (if any) in `$DEPLOY_TOKEN`, each in a folder of its own.
    fn start(jobs: &str, nodes: &[(&str, Option<&str>)], workers: usize) -> Option<Nodes> {
        Nodes::start_with(jobs, nodes, workers, &[])
    }

    /// As [`Nodes::start`], with `files` (name, text) written beside each node's workflow file.
    fn start_with(jobs: &str, nodes: &[(&str, Option<&str>)], workers: usize, files: &[(&str, &str)]) -> Option<Nodes> {
        let db = TestDb::get()?;
        let url = db.postgres_url();
        let shared = tempfile::tempdir().expect("tempdir");
        let marks = shared.path().join("marks").display().to_string();
        let text = format!("[settings]\nworkers = {workers}\nlease = \"3s\"\n\n{}", jobs.replace("{marks}", &marks));
        let mut cluster = Nodes { db, url, shared, projects: Vec::new(), servers: Vec::new() };
        // One at a time: the first migrates the database.
        for (name, secret) in nodes {
            let project = Project::new(&text);
            for (name, text) in files {
                std::fs::write(project.path().join(name), text).expect("write a file beside the workflow");
            }
            let log = std::fs::File::create(project.path().join("serve.log")).expect("serve.log");
            // The file by its absolute path: each node's is another (as on separate machines).
            let file = project.path().join("workflow.toml").display().to_string();
            let mut serve = project.gaffer(&["serve", &file, "--headless", "--store", &cluster.url, "--node", name]);
            serve.env("NODE_TAG", name).env_remove("DEPLOY_TOKEN");
            if let Some(secret) = secret {
                serve.env("DEPLOY_TOKEN", secret);
            }
            let server = Server::spawn(serve.stdin(Stdio::null()).stdout(log.try_clone().expect("log")).stderr(log));
            wait_for_socket(&project.state_dir().join("gaffer.sock"));
            cluster.projects.push(project);
            cluster.servers.push(server);
        }
        Some(cluster)
    }

    /// `gaffer ARGS --store URL` through node `i`'s socket.
    fn command(&self, i: usize, args: &[&str]) -> std::process::Output {
        let project = &self.projects[i];
        let mut cmd = project.gaffer(args);
        cmd.args(["--store", &self.url]).env_remove("DEPLOY_TOKEN").stdin(Stdio::null());
        cmd.output().expect("gaffer")
    }

    /// `gaffer submit JOB` through node 0: the job run's id.
    fn submitted(&self, job: &str) -> u64 {
        let out = self.command(0, &["submit", job]);
        assert!(out.status.success(), "submit: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().trim_start_matches('j').parse().unwrap_or_else(|_| panic!("a job run id: {text}"))
    }

    fn json(&self, args: &[&str]) -> Value {
        support::store_json(&self.projects[0], args, &self.url, &self.shared.path().join("reader"))
    }

    fn wait_ended(&self, id: u64) -> String {
        let mut state = String::new();
        wait_until(Duration::from_secs(60), &format!("job run j{id} ends"), || {
            let jobs = self.json(&["jobs"]);
            let job = jobs.as_array().and_then(|j| j.iter().find(|j| j["id"] == id).cloned());
            state = job.and_then(|j| j["state"].as_str().map(str::to_string)).unwrap_or_default();
            !state.is_empty() && state != "running"
        });
        state
    }

    /// `show` of every task run of job run `id`, as one JSON text.
    fn shown(&self, id: u64) -> String {
        let tasks = self.json(&["tasks", "--run", &format!("j{id}")]);
        let shown: Vec<Value> = tasks
            .as_array()
            .expect("tasks")
            .iter()
            .map(|t| self.json(&["show", &t["id"].as_u64().expect("id").to_string()]))
            .collect();
        serde_json::to_string(&shown).expect("json")
    }

    fn marks(&self) -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(self.shared.path().join("marks")).unwrap_or_default();
        text.lines().map(|l| l.split_whitespace().map(str::to_string).collect()).collect()
    }

    /// Every row of every table of the database that holds `value`, as text or as the hex of
    /// a `bytea` (how a row reads as text).
    fn rows_holding(&self, value: &str) -> Vec<String> {
        let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
        let tables = self.db.psql(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1",
        );
        let tables: Vec<&str> = tables.lines().map(str::trim).filter(|t| !t.is_empty()).collect();
        for expected in ["task_runs", "attempts", "events", "node_mail", "log_chunks", "job_runs"] {
            assert!(tables.contains(&expected), "no table {expected} among {tables:?}");
        }
        tables
            .iter()
            .flat_map(|table| {
                let rows = self.db.psql(&format!(
                    "SELECT t::text FROM {table} t WHERE position('{value}' IN t::text) > 0 \
                     OR position('{hex}' IN t::text) > 0"
                ));
                rows.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{table}: {l}")).collect::<Vec<_>>()
            })
            .collect()
    }

    fn logs(&self) -> String {
        self.projects.iter().map(|p| std::fs::read_to_string(p.path().join("serve.log")).unwrap_or_default()).collect()
    }
}

impl Drop for Nodes {
    /// The nodes stop before their database goes (fields drop in order: `db` first).
    fn drop(&mut self) {
        self.servers.clear();
    }
}

#[test]
fn a_secret_reaches_tasks_on_every_node_and_no_table_holds_it() {
    let nodes = [("a", Some(SECRET)), ("b", Some(SECRET)), ("c", Some(SECRET))];
    let Some(cluster) = Nodes::start(&secret_job(9), &nodes, 1) else { return };
    let id = cluster.submitted("deploy");
    assert_eq!(cluster.wait_ended(id), "succeeded", "{}", cluster.logs());

    let marks = cluster.marks();
    assert_eq!(marks.len(), 9, "{marks:?}");
    let expected = [SECRET.to_string(), format!("arg:{SECRET}"), format!("in:{}", SECRET.to_uppercase())];
    for mark in &marks {
        assert_eq!(mark[2..], expected, "each field of each task got the secret: {mark:?}");
    }
    let elsewhere = marks.iter().filter(|m| m[0] != "a").count();
    assert!(elsewhere > 0, "b and c ran some of a's tasks (rendered there): {marks:?}");

    for value in [SECRET.to_string(), SECRET.to_uppercase(), "t0ken-4711".to_string()] {
        let found = cluster.rows_holding(&value);
        assert!(found.is_empty(), "{value} is stored: {found:#?}");
    }
    // The scan does see what the spec carries (a non-secret param, rendered in `task_runs.spec`).
    let region = cluster.rows_holding("eu-west-9z");
    assert!(region.iter().any(|r| r.starts_with("task_runs")), "{region:#?}");
}

#[test]
fn a_node_without_the_secret_fails_the_attempt_saying_so_and_one_run_cannot_bring_its_own() {
    // `a` and `b` have one worker each, only `a` the secret: b claims some of the tasks.
    let Some(cluster) = Nodes::start(&secret_job(4), &[("a", Some(SECRET)), ("b", None)], 1) else { return };

    let refused = cluster.command(0, &["submit", "deploy", "--param", "token=another-value"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a per-run secret in a cluster is refused");
    assert!(said.contains("`token`") && said.contains("DEPLOY_TOKEN") && !said.contains("another-value"), "{said}");

    let id = cluster.submitted("deploy");
    // Failed, or succeeded where a retry ran on `a`: what matters is what b did.
    cluster.wait_ended(id);
    let marks = cluster.marks();
    assert!(marks.iter().all(|m| m[0] == "a" && m[2] == SECRET), "b ran nothing, a every field: {marks:?}");
    let text = cluster.shown(id);
    let why = format!("node b cannot run job run j{id}'s task");
    assert!(text.contains(&why), "an attempt says why b did not run it: {text}");
    assert!(text.contains("`token` (pass --param token=…, or set $DEPLOY_TOKEN)"), "{text}");
    assert!(cluster.rows_holding(SECRET).is_empty(), "{:#?}", cluster.rows_holding(SECRET));
    let b_said = std::fs::read_to_string(cluster.projects[1].path().join("serve.log")).unwrap_or_default();
    assert!(
        b_said.contains("warning: this node holds no value for secret param `token`"),
        "b said so when it started: {b_said}"
    );
}

const API_KEY: &str = "sk-envfile-8812-live";
const SHADOWED: &str = "shadowed-by-env-77";

/// Job `keys`: `n` tasks that append `NODE TASK_RUN $API_KEY $SHADOWED $TOKEN` to `{marks}`,
/// `API_KEY` from the `.env` beside the workflow file, `SHADOWED` there and in `env` (which
/// wins), `TOKEN` from a secret param.
fn env_file_job(n: usize) -> String {
    let mut text = "[jobs.keys]\nparams = { token = { secret = true, env = \"DEPLOY_TOKEN\" } }\n".to_string();
    for i in 1..=n {
        text.push_str(&format!(
            "[jobs.keys.tasks.t{i}]\n\
             env_file = \".env\"\n\
             args = [\"sh\", \"-c\", 'sleep 0.3; echo \"$NODE_TAG $GAFFER_TASK_RUN_ID $API_KEY $SHADOWED $TOKEN\" >> {{marks}}']\n\
             env = {{ TOKEN = \"{{{{ params.token }}}}\", SHADOWED = \"from-env\" }}\n"
        ));
    }
    text
}

fn dot_env() -> String {
    format!("API_KEY={API_KEY}\nSHADOWED={SHADOWED}\n")
}

#[test]
fn env_file_values_reach_tasks_on_every_node_and_no_table_holds_them() {
    let nodes = [("a", Some(SECRET)), ("b", Some(SECRET)), ("c", Some(SECRET))];
    let Some(cluster) = Nodes::start_with(&env_file_job(9), &nodes, 1, &[(".env", &dot_env())]) else { return };
    let id = cluster.submitted("keys");
    assert_eq!(cluster.wait_ended(id), "succeeded", "{}", cluster.logs());

    let marks = cluster.marks();
    assert_eq!(marks.len(), 9, "{marks:?}");
    for mark in &marks {
        assert_eq!(mark[2..], [API_KEY, "from-env", SECRET], "file, env over file, secret: {mark:?}");
    }
    let elsewhere = marks.iter().filter(|m| m[0] != "a").count();
    assert!(elsewhere > 0, "b and c ran some of a's tasks (the values read there): {marks:?}");

    // Every table, whole (events, attempts, job_runs' params, task_runs' specs, mail, logs …).
    for value in [API_KEY, "8812-live", SHADOWED, SECRET] {
        let found = cluster.rows_holding(value);
        assert!(found.is_empty(), "{value} is stored: {found:#?}");
    }
    // The spec names the file instead (a's, by its path: the same path on every node).
    let file = cluster.projects[0].path().join(".env").display().to_string();
    let named = cluster.rows_holding(&file);
    assert!(named.iter().any(|r| r.starts_with("task_runs")), "{named:#?}");
}

#[test]
fn a_node_that_cannot_read_the_env_file_fails_the_attempt_naming_it() {
    // Each node loaded its own `.env` (beside its own workflow file); a's is gone since, so
    // b, which reads the file of a's runs at a's path, cannot: a's own attempts use what a
    // read when it loaded its workflow, as on one node.
    let nodes = [("a", Some(SECRET)), ("b", Some(SECRET))];
    let Some(cluster) = Nodes::start_with(&env_file_job(4), &nodes, 1, &[(".env", &dot_env())]) else { return };
    let file = cluster.projects[0].path().join(".env");
    std::fs::remove_file(&file).expect("rm a's .env");
    let id = cluster.submitted("keys");
    cluster.wait_ended(id);

    let marks = cluster.marks();
    assert!(marks.iter().all(|m| m[0] == "a" && m[2] == API_KEY), "b ran nothing, a with the values: {marks:?}");
    let text = cluster.shown(id);
    let file = file.display().to_string();
    let why = format!("node b cannot run job run j{id}'s task `t");
    assert!(text.contains(&why), "an attempt says why b did not run it: {text}");
    assert!(text.contains(&format!("env_file {file}: cannot read {file}: No such file")), "{text}");
    assert!(cluster.rows_holding(API_KEY).is_empty(), "{:#?}", cluster.rows_holding(API_KEY));
}

#[test]
fn cancel_previous_cancels_the_runs_other_nodes_own() {
    let jobs = "[jobs.tick]\nschedule = \"*/2 * * * * *\"\noverlap = \"cancel_previous\"\n\
                [jobs.tick.tasks.t]\nrun = \"sleep 8\"\n";
    let Some(cluster) = Nodes::start(jobs, &[("a", None), ("b", None)], 1) else { return };
    let owners = "SELECT count(DISTINCT owner_node) FROM job_runs WHERE job = 'tick'";
    wait_until(Duration::from_secs(60), "runs of `tick` fired by both nodes", || cluster.db.psql(owners).trim() == "2");
    // Each node cancels its own at each fire time; without the relay the other node's run
    // would go on (two running, and runs that end `succeeded` after their 8 s).
    let running = "SELECT count(*) FROM job_runs WHERE job = 'tick' AND state = 'running'";
    wait_until(Duration::from_secs(10), "one running run of `tick`", || cluster.db.psql(running).trim() == "1");
    let ended = cluster.db.psql("SELECT DISTINCT state FROM job_runs WHERE job = 'tick' AND state <> 'running'");
    assert_eq!(ended.trim(), "cancelled", "{}", cluster.logs());
    // Every fire time started a run: a node that had none of its own did not skip it.
    // Schema 7 keeps an append's events in one row (`lines`), older rows one in `json`.
    let events_named = |name: &str| {
        cluster.db.psql(&format!(
            "SELECT count(*) FROM events WHERE json LIKE '%\"{name}\"%' \
             OR array_to_string(lines, E'\\n') LIKE '%\"{name}\"%'"
        ))
    };
    assert_ne!(events_named("job.started").trim(), "0", "the stream holds the runs' events");
    assert_eq!(events_named("schedule.skipped").trim(), "0", "{}", cluster.logs());
}

#[test]
fn a_retry_on_a_node_whose_workflow_file_is_elsewhere_sees_no_change() {
    let jobs = "[jobs.once]\n[jobs.once.tasks.t]\nrun = \"exit 3\"\nretry = { max_attempts = 1 }\n";
    let Some(cluster) = Nodes::start(jobs, &[("a", None), ("b", None)], 1) else { return };
    assert_ne!(cluster.projects[0].path(), cluster.projects[1].path());
    let id = cluster.submitted("once");
    assert_eq!(cluster.wait_ended(id), "failed");
    let retried = cluster.command(1, &["retry", &format!("j{id}")]);
    let (out, err) = (String::from_utf8_lossy(&retried.stdout), String::from_utf8_lossy(&retried.stderr));
    assert!(retried.status.success(), "retry through b: {out}{err}");
    assert!(!format!("{out}{err}").contains("changed"), "{out}{err}");
    wait_until(Duration::from_secs(20), "the retry ran the task again", || {
        cluster.db.psql("SELECT count(*) FROM attempts").trim() == "2"
    });
    assert_eq!(cluster.wait_ended(id), "failed", "it ran again (and failed again)");
}

#[test]
fn gaffer_run_on_postgres_takes_a_secret_by_param() {
    let Some(db) = TestDb::get() else { return };
    let shared = tempfile::tempdir().expect("tempdir");
    let marks = shared.path().join("marks");
    let text = format!("[settings]\nworkers = 2\n\n{}", secret_job(2).replace("{marks}", &marks.display().to_string()));
    let project = Project::new(&text);
    let param = format!("token={SECRET}");
    let out = project
        .gaffer(&["run", "workflow.toml", "deploy", "--headless", "--store", &db.postgres_url(), "--param", &param])
        .env_remove("DEPLOY_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("gaffer run");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "a secret given to `run` is the node's own: {said}");
    let text = std::fs::read_to_string(&marks).unwrap_or_default();
    assert_eq!(text.lines().filter(|l| l.contains(&format!("arg:{SECRET}"))).count(), 2, "{text}");
}
