//! `gaffer run` and `gaffer validate`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use super::Place;
use super::exit;
use crate::api::Api;
use crate::config::{self, Workflow};
use crate::engine::{self, EngineConfig, EngineEvent, EngineHandle, SystemClock};
use crate::executor::{Executor, LocalExecutor, NoopExecutor};
use crate::headless::{self, Format};
use crate::model::JobState;
use crate::model::cost::Pricing;
use crate::model::schedule::Schedule;
use crate::notify::Notifier;
use crate::store::{self, StoreError, StoreLocation};

/// What `run` and `serve` share: how to show progress, the worker cap and the node's labels.
#[derive(Debug, Args)]
pub struct DisplayArgs {
    /// No terminal UI, progress lines only.
    #[arg(long)]
    pub headless: bool,
    /// Print the event stream as JSON lines on stdout (implies --headless).
    #[arg(long)]
    pub json: bool,
    /// Cap on running attempts (overrides settings.workers).
    #[arg(long)]
    pub workers: Option<usize>,
    /// A capability of this node (repeatable: --label gpu --label eu): it runs only the task
    /// runs whose `requires` it has every label of; tasks without `requires` run anywhere.
    #[arg(long = "label", value_name = "LABEL", env = "GAFFER_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// This node's name in a cluster (`--store postgres://…`), unique among live nodes
    /// (default: <hostname>-<pid>).
    #[arg(long = "node", value_name = "NAME", env = "GAFFER_NODE")]
    pub node: Option<String>,
}

impl DisplayArgs {
    fn format(&self) -> Format {
        if self.json { Format::Json } else { Format::Human }
    }

    fn screen(&self, file: &Path) -> Option<Screen> {
        Screen::choose(self.headless || self.json, file)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workflow file.
    pub file: PathBuf,
    /// Jobs to run (default: every job without a `schedule`).
    pub jobs: Vec<String>,
    /// Set a job param: --param topic=go (repeatable; a secret one is held in memory only).
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    /// Run only this task of JOB, in a new job run; its needs are not run again: their outputs
    /// come from their latest succeeded runs (refused if one never succeeded).
    #[arg(long, value_name = "TASK")]
    pub only: Option<String>,
    #[command(flatten)]
    pub display: DisplayArgs,
    /// Run every task as a no-op that succeeds at once (measures the engine alone).
    #[arg(long, hide = true)]
    pub noop_executor: bool,
}

pub fn validate(file: &Path) -> i32 {
    match load(file) {
        Ok((workflow, _)) => {
            let tasks: usize = workflow.jobs.iter().map(|j| j.tasks.len()).sum();
            outln!(
                "{}: ok ({} jobs, {tasks} tasks, {} queues)",
                file.display(),
                workflow.jobs.len(),
                workflow.queues.len()
            );
            for note in workflow.notes() {
                eprintln!("gaffer: note: {note}");
            }
            for warning in config::advice::warnings(&workflow) {
                eprintln!("gaffer: warning: {}: {warning}", file.display());
            }
            exit::OK
        }
        Err(code) => code,
    }
}

pub fn schedules(file: &Path, count: usize, from: Option<&str>, as_json: bool) -> i32 {
    let (workflow, _) = match load(file) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let from_ms = match from.map(humantime::parse_rfc3339_weak) {
        None => crate::engine::Clock::now_ms(&SystemClock),
        Some(Ok(t)) => t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        Some(Err(e)) => {
            eprintln!("gaffer: --from `{}`: {e} (use RFC 3339, e.g. 2026-03-28T12:00:00Z)", from.unwrap_or(""));
            return exit::USAGE;
        }
    };
    let mut rows = Vec::new();
    for job in &workflow.jobs {
        let Some(expression) = &job.schedule else { continue };
        match Schedule::new(expression, job.timezone.as_deref()) {
            Ok(schedule) => rows.push((job, expression, schedule.upcoming(from_ms, count), schedule)),
            Err(e) => {
                eprintln!("gaffer: job `{}`: {e}", job.name);
                return exit::USAGE;
            }
        }
    }
    if as_json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|(job, expression, next, schedule)| {
                let next: Vec<String> = next.iter().map(|ms| engine::rfc3339_ms(*ms)).collect();
                serde_json::json!({"job": job.name, "schedule": expression, "timezone": schedule.zone_name(), "next": next})
            })
            .collect();
        outln!("{}", crate::json::pretty(&items));
        return exit::OK;
    }
    if rows.is_empty() {
        outln!("no job in {} has a schedule", file.display());
    }
    for (job, expression, next, schedule) in rows {
        outln!("{}  `{expression}`  ({})", job.name, schedule.zone_name());
        for ms in next {
            outln!("  {:<32} {}", schedule.local_time(ms), engine::rfc3339_ms(ms));
        }
    }
    exit::OK
}

/// Reads and validates the file; prints every problem and returns the exit code on failure.
fn load(file: &Path) -> Result<(Workflow, String), i32> {
    let source = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("gaffer: cannot read workflow file {}: {e}", file.display());
            return Err(exit::USAGE);
        }
    };
    match config::parse_file(file, &source) {
        Ok(workflow) => Ok((workflow, source)),
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            if !diagnostics.to_string().ends_with('\n') {
                eprintln!();
            }
            eprintln!("gaffer: {} problem(s) in {}; nothing was run", diagnostics.items.len(), file.display());
            Err(exit::USAGE)
        }
    }
}

pub(super) fn parse_params(raw: &[String]) -> Result<BTreeMap<String, String>, String> {
    raw.iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("--param `{p}` is not K=V")),
        })
        .collect()
}

/// The jobs this command starts: the named ones, or every unscheduled one.
fn chosen_jobs(workflow: &Workflow, named: &[String]) -> Result<Vec<String>, String> {
    if named.is_empty() {
        return Ok(workflow.jobs.iter().filter(|j| j.schedule.is_none()).map(|j| j.name.clone()).collect());
    }
    for name in named {
        if !workflow.jobs.iter().any(|j| &j.name == name) {
            let known: Vec<&str> = workflow.jobs.iter().map(|j| j.name.as_str()).collect();
            return Err(format!("unknown job `{name}` in {} (it has: {})", workflow.path.display(), known.join(", ")));
        }
    }
    Ok(named.to_vec())
}

/// A job to trigger and the params it gets.
type Trigger = (String, BTreeMap<String, String>);

/// Whether some job of the workflow declares `key` a secret param.
fn is_secret(workflow: &Workflow, key: &str) -> bool {
    workflow.jobs.iter().any(|j| j.params.get(key).is_some_and(|p| p.secret))
}

/// The `--param` values that are secret params somewhere in the workflow: this process keeps
/// them (in memory) for every run that needs them, resumed runs and retries included.
fn secrets_given(workflow: &Workflow, params: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    params.iter().filter(|(k, _)| is_secret(workflow, k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The jobs with an unfinished run in the store (none when there is no store yet).
fn unfinished_jobs(store: &StoreLocation) -> std::collections::BTreeSet<String> {
    let runs = store.snapshot().and_then(|r| r.job_runs()).unwrap_or_default();
    runs.into_iter().filter(|r| !r.state.is_terminal()).map(|r| r.job).collect()
}

/// Refuses a run of `job` that would lack a param value, before anything is opened.
fn check_resolves(
    workflow: &Workflow,
    job: &str,
    given: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> Result<(), String> {
    let Some(def) = workflow.jobs.iter().find(|j| j.name == job) else { return Ok(()) };
    let env = |var: &str| std::env::var(var).ok();
    crate::model::params::resolve(def, given, &crate::model::params::Sources { instance: secrets, env: &env })
        .map(|_| ())
}

/// Each `--param` goes to the chosen jobs that declare it; one that none of them declares is an
/// error. Checked before the store is opened, so a refused command leaves nothing behind.
fn params_per_job(
    workflow: &Workflow,
    jobs: Vec<String>,
    params: &BTreeMap<String, String>,
) -> Result<Vec<Trigger>, String> {
    let declared = |job: &str| workflow.jobs.iter().find(|j| j.name == job).map(|j| &j.params);
    for key in params.keys() {
        // A secret may also be for a run this command resumes.
        if !jobs.iter().any(|job| declared(job).is_some_and(|d| d.contains_key(key))) && !is_secret(workflow, key) {
            let what: Vec<String> = jobs
                .iter()
                .map(|job| match declared(job).map(|d| d.keys().cloned().collect::<Vec<_>>().join(", ")) {
                    Some(keys) if !keys.is_empty() => format!("`{job}` declares {keys}"),
                    _ => format!("`{job}` declares no params"),
                })
                .collect();
            return Err(format!("unknown param `{key}`: no job run here declares it ({})", what.join("; ")));
        }
    }
    Ok(jobs
        .into_iter()
        .map(|job| {
            let own = params.iter().filter(|(k, _)| declared(&job).is_some_and(|d| d.contains_key(*k)));
            let own = own.map(|(k, v)| (k.clone(), v.clone())).collect();
            (job, own)
        })
        .collect())
}

pub fn run(args: RunArgs, at: &Place) -> i32 {
    let format = args.display.format();
    let screen = args.display.screen(&args.file);
    let only = args.only.clone();
    let choose = |workflow: &Workflow| -> Result<_, String> {
        let params = parse_params(&args.params)?;
        if let Some(task) = &args.only {
            check_only(workflow, &args.jobs, task, &at.store)?;
        }
        let secrets = secrets_given(workflow, &params);
        let triggers = params_per_job(workflow, chosen_jobs(workflow, &args.jobs)?, &params)?;
        let labels = node_labels(&args.display.labels)?;
        for (job, _) in &triggers {
            check_routable(workflow, job, args.only.as_deref(), &labels)?;
        }
        // A job with an unfinished run is resumed, not started: its params are stored (the
        // engine asks for its secrets then).
        let resuming = unfinished_jobs(&at.store);
        for (job, given) in triggers.iter().filter(|(job, _)| !resuming.contains(job)) {
            check_resolves(workflow, job, given, &secrets)?;
        }
        Ok((triggers, secrets))
    };
    let options = SessionOptions {
        file: &args.file,
        at,
        workers: args.display.workers,
        labels: &args.display.labels,
        node: args.display.node.as_deref(),
        noop: args.noop_executor,
    };
    session(options, screen.is_some(), choose, |config, jobs| drive(config, jobs, only, format, screen))
}

/// `run` is one node: a task of a job it starts that requires a label this node lacks could
/// never start, so it is refused before anything is written (`serve` waits instead: another
/// node, or a restart with the label, may come).
fn check_routable(workflow: &Workflow, job: &str, only: Option<&str>, labels: &[String]) -> Result<(), String> {
    let Some(def) = workflow.jobs.iter().find(|j| j.name == job) else { return Ok(()) };
    let tasks = def.tasks.iter().filter(|t| only.is_none_or(|o| o == t.name));
    match tasks.into_iter().find(|t| !crate::model::routing::can_run(&t.requires, labels)) {
        None => Ok(()),
        Some(t) => Err(format!(
            "job `{job}`, task `{}`: {}; `gaffer run` is this one node, so it could never start \
             (give it the label, or let `gaffer serve` on a node that has it run the job)",
            t.name,
            crate::model::routing::blocked_reason(&t.requires, labels)
        )),
    }
}

/// `--only TASK`: one job named, TASK one of its tasks, and a succeeded run of everything it
/// needs already in the store — checked before the store is opened for writing, so a
/// refused command writes nothing.
fn check_only(workflow: &Workflow, jobs: &[String], task: &str, store: &StoreLocation) -> Result<(), String> {
    let [job] = jobs else {
        return Err(format!(
            "--only {task} runs one task of one job: name the job (`gaffer run FILE JOB --only {task}`)"
        ));
    };
    let Some(def) = workflow.jobs.iter().find(|j| &j.name == job) else { return Ok(()) }; // said by chosen_jobs
    let reader = match store.snapshot() {
        Ok(reader) => Some(reader),
        Err(StoreError::Missing(_)) => None,
        Err(e) => return Err(format!("cannot read {store}: {e}")),
    };
    match reader {
        Some(reader) => engine::plan_only(&*reader, def, task).map(|_| ()),
        // Nothing has run here: only a task without needs can run alone.
        None => {
            let graph = crate::model::graph::JobGraph::new(def);
            crate::model::rerun::only_plan(&graph, task, &[]).map(|_| ()).map_err(|e| format!("job `{job}`: {e}"))
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The workflow file.
    pub file: PathBuf,
    #[command(flatten)]
    pub display: DisplayArgs,
    /// Also serve the API over TCP (bearer token in STATE_DIR/token), e.g. 127.0.0.1:7700.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// Allow --listen on a non-loopback address (the token is then all that guards it).
    #[arg(long, requires = "listen")]
    pub listen_anywhere: bool,
    /// A secret param's value for the runs this instance resumes, retries, fires on schedule or
    /// is submitted without it: --param token=… (repeatable; held in memory only).
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    /// Run every task as a no-op that succeeds at once (the cluster benchmark's other nodes).
    #[arg(long, hide = true)]
    pub noop_executor: bool,
}

/// `gaffer serve`: resume, fire schedules, take commands, until SIGINT/SIGTERM.
pub fn serve(args: ServeArgs, at: &Place) -> i32 {
    let format = args.display.format();
    let screen = args.display.screen(&args.file);
    let options = SessionOptions {
        file: &args.file,
        at,
        workers: args.display.workers,
        labels: &args.display.labels,
        node: args.display.node.as_deref(),
        noop: args.noop_executor,
    };
    let check = |workflow: &Workflow| -> Result<_, String> {
        let secrets = serve_secrets(workflow, &args.params)?;
        let Some(addr) = args.listen else { return Ok((None, secrets)) };
        if !addr.ip().is_loopback() && !args.listen_anywhere {
            return Err(format!("--listen {addr} is not a loopback address; add --listen-anywhere if you mean it"));
        }
        let tcp = std::net::TcpListener::bind(addr).map_err(|e| format!("--listen {addr}: {e}"))?;
        Ok((Some(tcp), secrets))
    };
    session(options, screen.is_some(), check, |config, (tcp, secrets)| {
        serve_forever(config, format, screen, tcp, secrets)
    })
}

/// `serve --param`: secrets only (a scheduled run takes the declared defaults; `submit --param`
/// overrides per run). Every scheduled job must then have all its values.
fn serve_secrets(workflow: &Workflow, raw: &[String]) -> Result<BTreeMap<String, String>, String> {
    let params = parse_params(raw)?;
    if let Some(key) = params.keys().find(|k| !is_secret(workflow, k)) {
        return Err(format!(
            "serve --param gives secret params only, and no job declares `{key}` secret \
             (a scheduled run takes the declared defaults; `gaffer submit --param` sets one run's)"
        ));
    }
    for job in workflow.jobs.iter().filter(|j| j.schedule.is_some()) {
        check_resolves(workflow, &job.name, &BTreeMap::new(), &params)
            .map_err(|e| format!("{e}: its schedule fires it with no params of its own"))?;
    }
    Ok(params)
}

/// A node name (`--node`): what `nodes.name` and `status` show, so short and printable.
fn check_node_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    match name {
        "" => Err("a node name cannot be empty".into()),
        _ if name.len() > 64 => Err(format!("`{name}` is longer than 64 bytes")),
        _ if name.chars().any(|c| c.is_control() || c.is_whitespace()) => {
            Err(format!("{name:?}: a node name has no spaces or control characters"))
        }
        _ => Ok(name.to_string()),
    }
}

/// `--label`s (or `GAFFER_LABELS=gpu,eu`) checked as `requires` is, each once, in the order given.
fn node_labels(given: &[String]) -> Result<Vec<String>, String> {
    // `GAFFER_LABELS=` (set, but empty) means no labels, as an unset variable does.
    if given == [""] && std::env::var_os("GAFFER_LABELS").is_some_and(|v| v.is_empty()) {
        return Ok(Vec::new());
    }
    let mut labels: Vec<String> = Vec::new();
    for label in given.iter().map(|l| l.trim()) {
        crate::model::routing::check_label(label).map_err(|e| format!("--label: {e}"))?;
        if !labels.iter().any(|l| l == label) {
            labels.push(label.to_string());
        }
    }
    crate::model::routing::check_labels(&labels).map_err(|e| format!("--label: {e}"))?;
    Ok(labels)
}

struct SessionOptions<'a> {
    file: &'a Path,
    at: &'a Place,
    workers: Option<usize>,
    labels: &'a [String],
    /// `--node`: the name of this node in a cluster.
    node: Option<&'a str>,
    noop: bool,
}

/// What `run` and `serve` share: load and check the file, open the store as its one writer,
/// run `body` inside an actix System, and close the store cleanly.
fn session<T, Fut>(
    options: SessionOptions,
    tui: bool,
    check: impl FnOnce(&Workflow) -> Result<T, String>,
    body: impl FnOnce(EngineConfig, T) -> Fut,
) -> i32
where
    Fut: std::future::Future<Output = i32>,
{
    let (mut workflow, source) = match load(options.file) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let labels = match node_labels(options.labels) {
        Ok(labels) => labels,
        Err(e) => {
            eprintln!("gaffer: {e}");
            return exit::USAGE;
        }
    };
    let checked = match check(&workflow) {
        Ok(checked) => checked,
        Err(e) => {
            eprintln!("gaffer: {e}");
            return exit::USAGE;
        }
    };
    let node_name = match options.node.map(check_node_name).transpose() {
        Ok(name) => name,
        Err(e) => {
            eprintln!("gaffer: --node: {e}");
            return exit::USAGE;
        }
    };
    let state_dir = options.at.state_dir.as_path();
    // On PostgreSQL the queue columns (priority with aging, `requires`) come from this workflow.
    let facts = crate::engine::cluster::queue_facts(&workflow);
    let opened = match store::open_store(&options.at.store, state_dir, facts) {
        Ok(opened) => opened,
        Err(
            e @ (StoreError::InUse { .. }
            | StoreError::StateDir(_)
            | StoreError::Damaged { .. }
            | StoreError::Gone { .. }),
        ) => {
            eprintln!("gaffer: {e}");
            return exit::STATE_DIR;
        }
        Err(e) if options.at.store.is_postgres() => {
            eprintln!("gaffer: cannot open the store {}: {e}", options.at.store);
            return exit::STATE_DIR;
        }
        Err(e) => {
            eprintln!("gaffer: cannot open state dir {}: {e}", state_dir.display());
            return exit::STATE_DIR;
        }
    };
    // Read from the state dir once it was checked (the imported price table lives there).
    let pricing = match config::pricing::imported(state_dir) {
        Ok(imported) => Pricing::layered(&[&config::pricing::builtin(), &imported, &workflow.pricing]),
        Err(e) => {
            eprintln!("gaffer: {e}");
            return exit::USAGE;
        }
    };
    let log_file = tui.then(|| state_dir.join("gaffer.log"));
    super::init_diagnostics(log_file.as_deref());
    if let Some(workers) = options.workers {
        workflow.set_workers(workers.max(1));
    }
    let workers = workflow.settings.workers;
    let process_note = crate::executor::resources::prepare(workers);
    if !tui {
        for note in workflow.notes().into_iter().chain(process_note) {
            eprintln!("gaffer: note: {note}");
        }
        for warning in config::advice::warnings(&workflow) {
            eprintln!("gaffer: warning: {warning}");
        }
    }
    let executor: Arc<dyn Executor> = if options.noop { Arc::new(NoopExecutor) } else { Arc::new(LocalExecutor) };

    // The one place `run` and `serve` build the engine's config from the store's location: on
    // PostgreSQL every engine is a node of the cluster that shares the database.
    let cluster = opened.postgres.clone().map(|backend| crate::engine::cluster::ClusterConfig {
        lease: workflow.settings.lease,
        node_name: node_name.unwrap_or_else(crate::engine::cluster::default_node_name),
        labels: labels.clone(),
        ..crate::engine::cluster::ClusterConfig::new(backend)
    });
    let config = EngineConfig {
        workflow: Arc::new(workflow),
        source,
        state_dir: absolute(state_dir),
        store: opened.store.clone(),
        location: options.at.store.clone(),
        executor,
        clock: Arc::new(SystemClock),
        workers,
        pricing,
        labels,
        cluster,
    };
    let system = actix::System::new();
    let code = system.block_on(body(config, checked));
    drop(system);
    opened.close(std::time::Duration::from_secs(5));
    if let Some(log) = log_file {
        remove_if_empty(&log);
    }
    code
}

/// A cluster node renders the secret fields of the tasks it runs from its own secrets: one it
/// has no value for is said at start (a task that reads it fails on this node).
fn warn_of_secrets_not_held(config: &EngineConfig, secrets: &BTreeMap<String, String>, tui: bool) {
    if config.cluster.is_none() {
        return;
    }
    let env = |var: &str| std::env::var(var).ok();
    let sources = crate::model::params::Sources { instance: secrets, env: &env };
    for missing in crate::model::params::secrets_not_held(&config.workflow.jobs, &sources) {
        let note = format!("this node holds no value for {missing}: its tasks that read it fail on this node");
        if tui { tracing::warn!("{note}") } else { eprintln!("gaffer: warning: {note}") }
    }
}

async fn serve_forever(
    config: EngineConfig,
    format: Format,
    screen: Option<Screen>,
    tcp: Option<std::net::TcpListener>,
    secrets: BTreeMap<String, String>,
) -> i32 {
    warn_of_secrets_not_held(&config, &secrets, screen.is_some());
    with_engine(config, format, tcp, |handle| async move {
        let Some(signals) = Signals::listen() else { return Ok(exit::INTERNAL) };
        handle.provide_secrets(secrets);
        let events = handle.subscribe().await?;
        let resumed = handle.resume_all().await?;
        let caught_up = handle.serve_schedules().await?;
        let pid = std::process::id();
        let labels = handle.labels();
        let pid = if labels.is_empty() { pid.to_string() } else { format!("{pid}, labels {}", labels.join(", ")) };
        let status = format!("serving (pid {pid}): {} unfinished run(s) resumed, {caught_up} missed fire time(s) caught up; SIGINT or SIGTERM stops", resumed.len());
        say(format, &status);
        let watchdog = notify_systemd(&handle, &status);
        let code = match follow(&handle, None, events, format, screen, signals).await {
            exit::SIGTERM => exit::OK,
            code => code,
        };
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        Ok(code)
    })
    .await
}

/// Under systemd (`Type=notify`): says READY=1, and with `WatchdogSec=` pings for as long as
/// the engine answers a round trip through its actors.
fn notify_systemd(handle: &EngineHandle, status: &str) -> Option<tokio::task::JoinHandle<()>> {
    let notifier = Notifier::from_env()?;
    notifier.send(&format!("READY=1\nSTATUS={status}"));
    let every = Notifier::watchdog_interval()?;
    let handle = handle.clone();
    Some(actix::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            if handle.healthy(every).await {
                notifier.send("WATCHDOG=1");
            } else {
                tracing::error!("the engine did not answer within {every:?}: no watchdog ping for systemd");
            }
        }
    }))
}

/// Starts the engine and its control socket, runs `body`, then stops both and the System.
async fn with_engine<Fut>(
    config: EngineConfig,
    format: Format,
    tcp: Option<std::net::TcpListener>,
    body: impl FnOnce(EngineHandle) -> Fut,
) -> i32
where
    Fut: std::future::Future<Output = Result<i32, engine::EngineError>>,
{
    let state_dir = config.state_dir.clone();
    let workflow = config.workflow.clone();
    let handle = match engine::try_start(config) {
        Ok(handle) => handle,
        // A cluster node refused its name, a database out of reach: said, not a panic.
        Err(e) => {
            eprintln!("gaffer: cannot start: {e}");
            actix::System::current().stop();
            return if matches!(e, engine::EngineError::Invalid(_)) { exit::USAGE } else { exit::INTERNAL };
        }
    };
    let api = match Api::start(handle.clone(), &workflow, &state_dir, tcp) {
        Ok(api) => Some(api),
        Err(e) => {
            say(format, &format!("no control socket ({e}): other terminals can only read the state dir"));
            None
        }
    };
    let code = match body(handle.clone()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gaffer: {e}");
            if matches!(e, engine::EngineError::Invalid(_)) { exit::USAGE } else { exit::INTERNAL }
        }
    };
    if code == exit::INTERNAL {
        // Nothing can be recorded now: the tasks die with gaffer, the next start records them.
        handle.kill_all_now();
    } else {
        // Whatever still runs (a job run submitted through the socket while `run` waited for
        // its own, a retried old run) is stopped as on SIGTERM: no task outlives gaffer.
        let busy = handle.busy_workers();
        if busy > 0 {
            say(format, &format!("stopping: interrupting {busy} running task(s); they resume at the next start"));
        }
        handle.shutdown().await;
    }
    handle.drain_hooks().await;
    if let Some(api) = api {
        api.stop().await;
    }
    actix::System::current().stop();
    code
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Starts the engine, resumes, triggers, prints events until every run ended or a signal came.
async fn drive(
    config: EngineConfig,
    (jobs, secrets): (Vec<Trigger>, BTreeMap<String, String>),
    only: Option<String>,
    format: Format,
    screen: Option<Screen>,
) -> i32 {
    with_engine(config, format, None, |handle| async move {
        let Some(signals) = Signals::listen() else { return Ok(exit::INTERNAL) };
        handle.provide_secrets(secrets);
        let (ids, events) = start_runs(&handle, jobs, only.as_deref(), format).await?;
        Ok(follow(&handle, Some(ids), events, format, screen, signals).await)
    })
    .await
}

type Events = tokio::sync::mpsc::UnboundedReceiver<EngineEvent>;

/// SIGINT and SIGTERM, listened to from before anything is resumed or submitted: a task may
/// start as soon as its run is committed, and a signal from then on must stop gracefully, not
/// kill gaffer by the default action and leave the task behind.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> Option<Signals> {
        let (Ok(int), Ok(term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            eprintln!("gaffer: cannot install signal handlers");
            return None;
        };
        Some(Signals { int, term })
    }
}

async fn start_runs(
    handle: &EngineHandle,
    jobs: Vec<Trigger>,
    only: Option<&str>,
    format: Format,
) -> Result<(Vec<u64>, Events), engine::EngineError> {
    let events = handle.subscribe().await?;
    let resumed = handle.resume_all().await?;
    let mut ids: Vec<u64> = resumed.iter().map(|(id, _)| *id).collect();
    let others: Vec<String> = resumed
        .iter()
        .filter(|(_, job)| !jobs.iter().any(|(j, _)| j == job))
        .map(|(id, job)| format!("j{id} ({job})"))
        .collect();
    if !others.is_empty() {
        say(format, &format!("resuming unfinished job run(s) {}, as they were started", others.join(", ")));
    }
    // The new runs are submitted together, so their first commits share a transaction.
    let mut new_runs = Vec::new();
    for (job, params) in jobs {
        if let Some(task) = only {
            // An explicit one-task run starts even beside an unfinished run of its job.
            let id = handle.submit_only(&job, params, task).await?;
            say(format, &format!("j{id}: only task `{task}` of job `{job}` runs; see `gaffer show j{id}`"));
            ids.push(id);
            continue;
        }
        if let Some((id, _)) = resumed.iter().find(|(_, j)| *j == job) {
            let how = "as it was started (its definition and params)";
            say(
                format,
                &format!("job `{job}` has an unfinished run j{id}: resuming it {how} instead of starting a new one"),
            );
            continue;
        }
        new_runs.push((job, params));
    }
    if !new_runs.is_empty() {
        ids.extend(handle.submit_many(new_runs).await?);
    }
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        say(format, "nothing to run: every job has a schedule (use `gaffer run FILE JOB` to run one now)");
    }
    Ok((ids, events))
}

/// Notes for people go to stderr so `--json` stdout stays pure events.
fn say(format: Format, text: &str) {
    if format == Format::Human {
        eprintln!("gaffer: {text}");
    }
}

/// The terminal UI, when `run`/`serve` has a terminal and was not told `--headless`.
#[derive(Debug, Clone)]
pub struct Screen {
    title: String,
}

impl Screen {
    fn choose(headless: bool, file: &Path) -> Option<Screen> {
        use std::io::IsTerminal;
        let terminal = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
        (!headless && terminal).then(|| Screen { title: file.display().to_string() })
    }
}

/// `gaffer tui`: the TUI on a running instance, over its socket. `q` detaches; the instance
/// keeps running whatever happens to this process.
pub fn attach(at: &Place) -> i32 {
    let log = at.state_dir.join("gaffer-tui.log");
    super::init_diagnostics(Some(&log));
    let code = attach_with_log(at);
    remove_if_empty(&log);
    code
}

/// A diagnostics file that nothing was written to is not worth leaving behind.
fn remove_if_empty(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(path);
    }
}

fn attach_with_log(at: &Place) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gaffer: {e}");
            return exit::INTERNAL;
        }
    };
    let state_dir = absolute(&at.state_dir);
    runtime.block_on(tokio::task::LocalSet::new().run_until(async move {
        let (control, session, title) = match connect(&state_dir, &at.store).await {
            Ok(connected) => connected,
            Err(code) => return code,
        };
        let events = match control.subscribe().await {
            Ok(events) => events,
            Err(e) => {
                eprintln!("gaffer: {e}");
                return exit::FAILED;
            }
        };
        let options = crate::tui::TuiOptions { title, state_dir, watched_job_runs: Vec::new(), session };
        match crate::tui::run(control, events, options).await {
            Ok(_) => exit::OK,
            Err(e) => {
                eprintln!("gaffer: {e}");
                exit::INTERNAL
            }
        }
    }))
}

type Connected = (std::rc::Rc<dyn crate::engine::Control>, crate::tui::Session, String);

/// The running instance over its socket; with none running, the store read-only.
async fn connect(state_dir: &Path, store: &StoreLocation) -> Result<Connected, i32> {
    let shown = state_dir.display();
    let unreachable = match crate::api::RemoteEngine::connect(state_dir).await {
        Ok(remote) => {
            return Ok((std::rc::Rc::new(remote), crate::tui::Session::Attached, format!("attached to {shown}")));
        }
        Err(e) => e,
    };
    if let Some(pid) = store::instance_pid(state_dir) {
        eprintln!("gaffer: {unreachable}, yet instance {pid} holds {shown}: is it starting or stopping?");
        return Err(exit::FAILED);
    }
    let title = if store.is_postgres() { store.to_string() } else { shown.to_string() };
    match crate::engine::OfflineEngine::open(store) {
        Ok(offline) => Ok((std::rc::Rc::new(offline), crate::tui::Session::ReadOnly, title)),
        Err(StoreError::Missing(_)) => {
            eprintln!("gaffer: nothing has run in {shown} yet: start with `gaffer run FILE` or `gaffer serve FILE`");
            Err(exit::FAILED)
        }
        Err(e) => {
            eprintln!("gaffer: cannot read {title}: {e}");
            Err(exit::STATE_DIR)
        }
    }
}

/// Shows the engine in the TUI until `q` (or a signal). Quitting with work still running
/// stops gracefully (it resumes at the next start).
async fn follow_tui(
    handle: &EngineHandle,
    ids: Option<Vec<u64>>,
    events: Events,
    screen: Screen,
    signals: Signals,
) -> i32 {
    let Signals { int: mut sigint, term: mut sigterm } = signals;
    let state_dir = handle.state_dir().to_path_buf();
    let options = crate::tui::TuiOptions {
        title: screen.title,
        state_dir,
        watched_job_runs: ids.clone().unwrap_or_default(),
        session: crate::tui::Session::Owner,
    };
    let shown = crate::tui::run(std::rc::Rc::new(handle.clone()), events, options);
    let signalled = tokio::select! {
        result = shown => match result {
            Ok(_) => None,
            Err(e) => {
                eprintln!("gaffer: terminal: {e}");
                Some(exit::INTERNAL)
            }
        },
        _ = sigint.recv() => Some(exit::SIGINT),
        _ = sigterm.recv() => Some(exit::SIGTERM),
    };
    let ended = match &ids {
        Some(ids) => tokio::time::timeout(Duration::from_millis(300), handle.wait(ids.clone())).await.ok(),
        None => None,
    };
    match (ended, signalled) {
        (Some(Ok(ended)), None) => summary_code(&ended),
        (_, code) => {
            eprintln!("gaffer: stopping: interrupting running tasks; they resume at the next start");
            handle.shutdown().await;
            code.unwrap_or(if ids.is_some() { exit::SIGINT } else { exit::OK })
        }
    }
}

/// Prints events until the job runs in `ids` ended (`None`: until a signal), then stops; or
/// hands over to the TUI.
async fn follow(
    handle: &EngineHandle,
    ids: Option<Vec<u64>>,
    mut events: Events,
    format: Format,
    screen: Option<Screen>,
    signals: Signals,
) -> i32 {
    if let Some(screen) = screen {
        return follow_tui(handle, ids, events, screen, signals).await;
    }
    let mut stdout = std::io::stdout();
    let Signals { int: mut sigint, term: mut sigterm } = signals;
    // `run` waits for these; one of their task runs this node cannot run would keep it forever.
    let watched = ids.clone().unwrap_or_default();
    let mut blocked = None;
    let wait = async {
        match ids {
            Some(ids) => handle.wait(ids).await,
            None => Err(handle.fatal().await),
        }
    };
    tokio::pin!(wait);
    // The events waiting are printed together, with one `write`.
    let mut out = Vec::new();
    let outcome = loop {
        tokio::select! {
            Some(event) = events.recv() => {
                let mut next = Some(event);
                while let Some(event) = next.take() {
                    let _ = headless::print(&mut out, format, &event);
                    if event.name() == engine::EventName::TaskBlocked && event.job_run.is_some_and(|j| watched.contains(&j)) {
                        blocked = Some(event);
                        break;
                    }
                    next = events.try_recv().ok();
                }
                let _ = stdout.write_all(&out);
                out.clear();
                if blocked.is_some() {
                    break Err(exit::FAILED);
                }
            }
            result = &mut wait => break Ok(result),
            _ = sigint.recv() => break Err(exit::SIGINT),
            _ = sigterm.recv() => break Err(exit::SIGTERM),
        }
    };
    let code = match &outcome {
        Ok(Ok(ended)) => summary_code(ended),
        Ok(Err(e)) => {
            eprintln!("gaffer: {e}");
            exit::INTERNAL
        }
        Err(signal_code) => {
            let signal_code = *signal_code;
            if let Some(notifier) = Notifier::from_env() {
                notifier.send("STOPPING=1");
            }
            if let Some(e) = &blocked {
                // Said whatever the format: it is why the command fails.
                eprintln!(
                    "gaffer: task run {} (job run j{}, task {}) cannot start on this node (see the `task.blocked` \
                     event); `gaffer run` is one node, so it stops here: the job run stays queued and resumes at \
                     the next start, on a node with the labels (`gaffer run --label …` or `gaffer serve --label …`)",
                    e.task_run.unwrap_or(0),
                    e.job_run.unwrap_or(0),
                    e.task.as_deref().unwrap_or("?")
                );
            }
            say(
                format,
                &format!(
                    "stopping: interrupting running tasks (SIGKILL after {} s); they resume at the next start",
                    engine::SHUTDOWN_GRACE.as_secs()
                ),
            );
            handle.shutdown().await;
            signal_code
        }
    };
    // Hooks of the last events (a `job.failed`) may still run: their `hook.failed` is printed too.
    handle.drain_hooks().await;
    handle.flush_events().await;
    while let Ok(event) = events.try_recv() {
        let _ = headless::print(&mut out, format, &event);
    }
    let _ = stdout.write_all(&out);
    let _ = stdout.flush();
    if let (Ok(Ok(ended)), Format::Human) = (&outcome, format) {
        let failed = ended.iter().filter(|(_, s)| *s != JobState::Succeeded).count();
        eprintln!("gaffer: {} job run(s) ended: {} succeeded, {failed} did not", ended.len(), ended.len() - failed);
    }
    code
}

fn summary_code(ended: &[(u64, JobState)]) -> i32 {
    if ended.iter().all(|(_, s)| *s == JobState::Succeeded) { exit::OK } else { exit::FAILED }
}
