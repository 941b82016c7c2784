//! Walks the TOML document into drafts (values with positions), runs the cross-checks, then
//! applies defaults to produce the [`Workflow`] the engine sees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{Document, TableLike};

use super::control::{self, ControlDraft};
use super::env_file::{self, EnvFiles};
use super::params;
use super::types::*;
use super::values::{Entry, Located, Pos, Reader, parse_rate_limit};
use super::{Diagnostic, Diagnostics};
use super::{checks, hooks};

pub(super) const TOP_KEYS: &[&str] = &["settings", "queues", "defaults", "jobs", "pricing"];
/// Logs of job runs that ended longer ago than this are removed by `gaffer serve`.
const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);
pub(super) const SETTINGS_KEYS: &[&str] =
    &["workers", "log_max_bytes", "retention", "output_max_bytes", "outputs_max_bytes", "lease"];
pub(super) const QUEUE_KEYS: &[&str] =
    &["concurrency", "rate_limit", "aging", "circuit", "on_failure", "on_dead_letter", "on_budget"];
pub(super) const CIRCUIT_KEYS: &[&str] = &["failures", "within", "open_for"];
pub(super) const JOB_KEYS: &[&str] = &[
    "schedule",
    "timezone",
    "params",
    "budget_usd",
    "fail_fast",
    "description",
    "tasks",
    "catchup",
    "catchup_window",
    "overlap",
    "max_active_runs",
    "on_failure",
    "on_dead_letter",
    "on_budget",
];
pub(super) const DEFAULTS_KEYS: &[&str] = &[
    "env",
    "env_file",
    "cwd",
    "queue",
    "priority",
    "timeout",
    "heartbeat_timeout",
    "queue_timeout",
    "retry",
    "cost",
    "budget_usd",
    "requires",
];
pub(super) const TASK_KEYS: &[&str] = &[
    "run",
    "args",
    "env",
    "env_file",
    "stdin",
    "cwd",
    "needs",
    "queue",
    "priority",
    "timeout",
    "heartbeat_timeout",
    "queue_timeout",
    "retry",
    "cost",
    "budget_usd",
    "requires",
    "wait_for",
    "wait_timeout",
    "cache",
    "expect",
    "description",
    "next",
    "join",
    "max_iterations",
    "for_each",
    "for_each_concurrency",
    "compensate",
];
pub(super) const WORKFLOW_CONTROL_KEYS: &[&str] =
    &["next", "join", "max_iterations", "for_each", "for_each_concurrency", "compensate"];
pub(super) const RETRY_KEYS: &[&str] = &[
    "max_attempts",
    "initial_interval",
    "backoff",
    "max_interval",
    "jitter",
    "non_retryable_exit_codes",
    "max_cost_usd",
    "models",
    "poison_after_crashes",
];
pub(super) const PRICING_KEYS: &[&str] =
    &["input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok"];
pub(super) const CACHE_KEYS: &[&str] = &["key", "ttl"];

/// Default per-attempt log cap: 16 MiB.
const DEFAULT_LOG_MAX_BYTES: u64 = 16 * 1024 * 1024;
const DEFAULT_PRIORITY: u8 = 50;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(600);

/// Keys a task shares with `[defaults]`; `None` means "not written here".
#[derive(Debug, Clone, Default)]
pub(super) struct TaskFields {
    pub env: BTreeMap<String, Located<String>>,
    pub env_file: Option<EnvFiles>,
    pub cwd: Option<PathBuf>,
    pub queue: Option<Located<String>>,
    pub priority: Option<u8>,
    pub timeout: Option<Duration>,
    pub heartbeat_timeout: Option<Duration>,
    pub queue_timeout: Option<Duration>,
    pub retry: RetryFields,
    pub cost: Option<CostSource>,
    pub budget_usd_micros: Option<u64>,
    /// Node labels a task run needs (`requires`); a task's list replaces the defaults' whole.
    pub requires: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct RetryFields {
    pub max_attempts: Option<u32>,
    pub initial_interval: Option<Duration>,
    pub backoff: Option<f64>,
    pub max_interval: Option<Duration>,
    pub jitter: Option<f64>,
    pub non_retryable_exit_codes: Option<Vec<i32>>,
    pub max_cost_usd_micros: Option<u64>,
    pub models: Option<Vec<String>>,
    pub poison_after_crashes: Option<u32>,
}

#[derive(Debug, Clone)]
pub(super) enum DraftCommand {
    Run(String),
    Args(Vec<Located<String>>),
}

#[derive(Debug, Clone)]
pub(super) struct TaskDraft {
    pub name: String,
    /// The task's key, where task-level problems are reported.
    pub at: Pos,
    pub command: Option<DraftCommand>,
    pub stdin: Option<Located<String>>,
    pub needs: Vec<Located<String>>,
    pub fields: TaskFields,
    /// `wait_for`: the signal name that releases the task (SPEC §2.2).
    pub wait_for: Option<String>,
    pub wait_timeout: Option<Duration>,
    /// `cache = { key = "{{ … }}", ttl = "24h" }`; the key is a template.
    pub cache: Option<(Located<String>, Duration)>,
    pub expect: Option<super::expect::ExpectDraft>,
    /// `next`, `join`, `for_each`, … (SPEC §2.2).
    pub control: ControlDraft,
}

#[derive(Debug, Clone)]
pub(super) struct JobDraft {
    pub name: String,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub params: BTreeMap<String, ParamDef>,
    pub budget_usd_micros: Option<u64>,
    pub fail_fast: bool,
    pub policy: SchedulePolicy,
    pub tasks: Vec<TaskDraft>,
    pub hooks: Hooks,
}

/// `check_files`: also read the files the workflow refers to (schema files).
pub(super) fn parse_workflow(path: &Path, text: &str, check_files: bool) -> Result<Workflow, Diagnostics> {
    let doc = match Document::parse(text) {
        Ok(doc) => doc,
        Err(err) => {
            let r = Reader::new(text);
            let at = r.span_pos(err.span(), Pos::START);
            let message = format!("invalid TOML: {}", err.message().trim());
            let diag = Diagnostic { line: at.line, col: at.col, message };
            return Err(Diagnostics::new(path.to_path_buf(), vec![diag]));
        }
    };
    let mut r = Reader::new(text);
    let workflow = read_workflow(&mut r, path, doc.as_table(), check_files);
    if r.diags.is_empty() { Ok(workflow) } else { Err(Diagnostics::new(path.to_path_buf(), r.diags)) }
}

/// The top-level sections, each optional.
#[derive(Default)]
struct Sections<'a> {
    settings: Option<Entry<'a>>,
    queues: Option<Entry<'a>>,
    defaults: Option<Entry<'a>>,
    jobs: Option<Entry<'a>>,
    pricing: Option<Entry<'a>>,
}

fn read_workflow(r: &mut Reader, path: &Path, root: &dyn TableLike, check_files: bool) -> Workflow {
    let mut sections = Sections::default();
    for e in r.entries(root, Pos::START) {
        match e.name {
            "settings" => sections.settings = Some(e),
            "queues" => sections.queues = Some(e),
            "defaults" => sections.defaults = Some(e),
            "jobs" => sections.jobs = Some(e),
            "pricing" => sections.pricing = Some(e),
            _ => r.unknown_key(&e, "the workflow file", TOP_KEYS),
        }
    }
    let settings = read_settings(r, sections.settings.as_ref());
    let queues = read_queues(r, sections.queues.as_ref(), settings.workers);
    let mut defaults = sections.defaults.as_ref().map(|e| read_defaults(r, e)).unwrap_or_default();
    let pricing = sections.pricing.as_ref().map(|e| read_pricing(r, e)).unwrap_or_default();
    let mut jobs = read_jobs(r, sections.jobs.as_ref());
    let base_dir = base_dir(path);
    env_file::load_all(r, &base_dir, &mut defaults, &mut jobs);

    check_queue_refs(r, &queues, &defaults, &jobs);
    for job in &jobs {
        checks::check_job(r, job, &defaults);
    }
    super::expect::check(r, &jobs, &defaults, &base_dir, check_files);
    Workflow {
        path: path.to_path_buf(),
        jobs: jobs.iter().map(|j| finish_job(j, &defaults, &base_dir)).collect(),
        base_dir,
        settings,
        queues,
        pricing,
    }
}

/// The file's folder, absolute, without touching the filesystem (so symlinks stay as written).
fn base_dir(path: &Path) -> PathBuf {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
}

fn read_settings(r: &mut Reader, entry: Option<&Entry>) -> Settings {
    let mut settings = Settings {
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        log_max_bytes: DEFAULT_LOG_MAX_BYTES,
        retention: DEFAULT_RETENTION,
        outputs: OutputLimits::default(),
        lease: std::time::Duration::from_millis(crate::model::lease::DEFAULT_LEASE_MS),
    };
    let Some(table) = entry.and_then(|e| r.table(e)) else {
        return settings;
    };
    for e in r.entries(table, Pos::START) {
        match e.name {
            "workers" => {
                if let Some(n) = r.int_in(&e, 1, i64::MAX, "of at least 1") {
                    settings.workers = usize::try_from(n).unwrap_or(usize::MAX);
                }
            }
            "log_max_bytes" => {
                if let Some(n) = r.int_in(&e, 1, i64::MAX, "of at least 1") {
                    settings.log_max_bytes = n.unsigned_abs();
                }
            }
            "retention" => settings.retention = r.duration(&e, true).unwrap_or(settings.retention),
            "lease" => {
                if let Some(d) = r.duration(&e, true) {
                    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                    match crate::model::lease::check_lease_ms(ms) {
                        Ok(_) => settings.lease = d,
                        Err(err) => r.error(e.at, format!("`lease`: {err}")),
                    }
                }
            }
            "output_max_bytes" => {
                let ceiling = OutputLimits::ONE_CEILING_BYTES;
                if let Some(n) = r.int_in(&e, 1, ceiling as i64, &format!("from 1 to {ceiling} (1 MiB)")) {
                    settings.outputs.one_max_bytes = n.unsigned_abs() as usize;
                }
            }
            "outputs_max_bytes" => {
                let ceiling = OutputLimits::CEILING_BYTES;
                if let Some(n) = r.int_in(&e, 1, ceiling as i64, &format!("from 1 to {ceiling} (64 MiB)")) {
                    settings.outputs.all_max_bytes = n.unsigned_abs() as usize;
                }
            }
            _ => r.unknown_key(&e, "[settings]", SETTINGS_KEYS),
        }
    }
    settings
}

fn read_queues(r: &mut Reader, entry: Option<&Entry>, workers: usize) -> BTreeMap<String, QueueDef> {
    let mut queues = BTreeMap::new();
    if let Some(table) = entry.and_then(|e| r.table(e)) {
        for e in r.entries(table, Pos::START) {
            r.check_name("queue", e.name, e.key_at);
            if let Some(q) = read_queue(r, &e, workers) {
                queues.insert(q.name.clone(), q);
            }
        }
    }
    // `default` always exists so tasks without a `queue` have somewhere to go.
    queues.entry("default".to_string()).or_insert_with(|| QueueDef {
        name: "default".to_string(),
        concurrency: workers,
        concurrency_is_workers: true,
        rate_limit: None,
        aging: None,
        circuit: None,
        hooks: Hooks::default(),
    });
    queues
}

fn read_queue(r: &mut Reader, entry: &Entry, workers: usize) -> Option<QueueDef> {
    let table = r.table(entry)?;
    let mut queue = QueueDef {
        name: entry.name.to_string(),
        concurrency: workers,
        concurrency_is_workers: true,
        rate_limit: None,
        aging: None,
        circuit: None,
        hooks: Hooks::default(),
    };
    for e in r.entries(table, entry.at) {
        match e.name {
            "concurrency" => {
                if let Some(n) = r.int_in(&e, 1, i64::MAX, "of at least 1") {
                    queue.concurrency = usize::try_from(n).unwrap_or(usize::MAX);
                    queue.concurrency_is_workers = false;
                }
            }
            "rate_limit" => {
                let Some(text) = r.string(&e) else { continue };
                match parse_rate_limit(&text) {
                    Ok(rl) => queue.rate_limit = Some(rl),
                    Err(err) => r.error(e.at, format!("bad rate limit `{text}`: {err}")),
                }
            }
            "aging" => queue.aging = r.duration(&e, true),
            "circuit" => queue.circuit = read_circuit(r, &e),
            _ if hooks::read(r, &e, &mut queue.hooks) => {}
            _ => r.unknown_key(&e, &format!("queue `{}`", entry.name), QUEUE_KEYS),
        }
    }
    Some(queue)
}

/// `circuit = { failures = 5, within = "1m", open_for = "5m" }`: all three are needed.
fn read_circuit(r: &mut Reader, entry: &Entry) -> Option<CircuitRule> {
    let table = r.table(entry)?;
    let (mut failures, mut within, mut open_for) = (None, None, None);
    for e in r.entries(table, entry.at) {
        match e.name {
            "failures" => failures = r.int_in(&e, 1, 10_000, "from 1 to 10000").and_then(|n| u32::try_from(n).ok()),
            "within" => within = r.duration(&e, true),
            "open_for" => open_for = r.duration(&e, true),
            _ => r.unknown_key(&e, "`circuit`", CIRCUIT_KEYS),
        }
    }
    for (key, missing) in
        [("failures", failures.is_none()), ("within", within.is_none()), ("open_for", open_for.is_none())]
    {
        if missing && !table.contains_key(key) {
            r.error(
                entry.at,
                format!(
                    "`circuit` needs `{key}` (e.g. circuit = {{ failures = 5, within = \"1m\", open_for = \"5m\" }})"
                ),
            );
        }
    }
    Some(CircuitRule { failures: failures?, within: within?, open_for: open_for? })
}

fn read_defaults(r: &mut Reader, entry: &Entry) -> TaskFields {
    let mut fields = TaskFields::default();
    let Some(table) = r.table(entry) else {
        return fields;
    };
    for e in r.entries(table, entry.at) {
        if matches!(e.name, "wait_for" | "wait_timeout" | "cache") {
            r.error(e.key_at, format!("`{}` belongs on the task that waits, not in [defaults]", e.name));
        } else if WORKFLOW_CONTROL_KEYS.contains(&e.name) {
            r.error(e.key_at, format!("`{}` belongs on a task, not in [defaults]", e.name));
        } else if !read_common_field(r, &e, &mut fields) {
            r.unknown_key(&e, "[defaults]", DEFAULTS_KEYS);
        }
    }
    fields
}

fn read_pricing(r: &mut Reader, entry: &Entry) -> BTreeMap<String, Price> {
    let mut pricing = BTreeMap::new();
    let Some(table) = r.table(entry) else {
        return pricing;
    };
    for model in r.entries(table, entry.at) {
        let Some(fields) = r.table(&model) else {
            continue;
        };
        let (mut input, mut output, mut cache_read, mut cache_write) = (None, None, None, None);
        for e in r.entries(fields, model.at) {
            match e.name {
                "input_per_mtok" => input = r.usd(&e),
                "output_per_mtok" => output = r.usd(&e),
                "cache_read_per_mtok" => cache_read = r.usd(&e),
                "cache_write_per_mtok" => cache_write = r.usd(&e),
                _ => r.unknown_key(&e, &format!("pricing `{}`", model.name), PRICING_KEYS),
            }
        }
        for (key, value) in [("input_per_mtok", input), ("output_per_mtok", output)] {
            if value.is_none() && !fields.contains_key(key) {
                r.error(model.key_at, format!("pricing `{}` is missing `{key}`", model.name));
            }
        }
        let price = Price {
            input_usd_micros_per_mtok: input.unwrap_or_default(),
            output_usd_micros_per_mtok: output.unwrap_or_default(),
            cache_read_usd_micros_per_mtok: cache_read,
            cache_write_usd_micros_per_mtok: cache_write,
        };
        pricing.insert(model.name.to_string(), price);
    }
    pricing
}

fn read_jobs(r: &mut Reader, entry: Option<&Entry>) -> Vec<JobDraft> {
    let jobs: Vec<JobDraft> = match entry.and_then(|e| r.table(e)) {
        Some(table) => r.entries(table, Pos::START).iter().filter_map(|e| read_job(r, e)).collect(),
        None => Vec::new(),
    };
    if jobs.is_empty() && entry.is_none_or(|e| e.item.as_table_like().is_none_or(|t| t.is_empty())) {
        r.error(Pos::START, "no jobs: add a [jobs.<name>.tasks.<task>] table");
    }
    jobs
}

fn read_job(r: &mut Reader, entry: &Entry) -> Option<JobDraft> {
    r.check_name("job", entry.name, entry.key_at);
    let table = r.table(entry)?;
    let mut job = JobDraft {
        name: entry.name.to_string(),
        schedule: None,
        timezone: None,
        params: BTreeMap::new(),
        budget_usd_micros: None,
        fail_fast: false,
        policy: SchedulePolicy::default(),
        tasks: Vec::new(),
        hooks: Hooks::default(),
    };
    for e in r.entries(table, entry.at) {
        match e.name {
            "schedule" => job.schedule = read_schedule(r, &e),
            "timezone" => job.timezone = read_timezone(r, &e),
            "params" => job.params = params::read_params(r, &e),
            "budget_usd" => job.budget_usd_micros = r.usd(&e),
            "fail_fast" => job.fail_fast = r.bool(&e).unwrap_or(false),
            "description" => {}
            "tasks" => job.tasks = read_tasks(r, &e),
            "catchup" => {
                let choices = [("none", Catchup::None), ("latest", Catchup::Latest), ("all", Catchup::All)];
                job.policy.catchup = read_choice(r, &e, &choices).unwrap_or(job.policy.catchup);
            }
            "catchup_window" => job.policy.catchup_window = r.duration(&e, true).unwrap_or(job.policy.catchup_window),
            "overlap" => {
                let choices = [
                    ("skip", Overlap::Skip),
                    ("queue", Overlap::Queue),
                    ("cancel_previous", Overlap::CancelPrevious),
                    ("allow", Overlap::Allow),
                ];
                job.policy.overlap = read_choice(r, &e, &choices).unwrap_or(job.policy.overlap);
            }
            "max_active_runs" => {
                job.policy.max_active_runs =
                    r.int_in(&e, 1, 1000, "from 1 to 1000").map(|n| usize::try_from(n).unwrap_or(1));
            }
            _ if hooks::read(r, &e, &mut job.hooks) => {}
            _ => r.unknown_key(&e, &format!("job `{}`", entry.name), JOB_KEYS),
        }
    }
    if job.tasks.is_empty() && table.get("tasks").is_none() {
        r.error(entry.key_at, format!("job `{0}` has no tasks: add a [jobs.{0}.tasks.<task>] table", entry.name));
    }
    Some(job)
}

/// One of a fixed set of words.
pub(super) fn read_choice<T: Copy>(r: &mut Reader, e: &Entry, choices: &[(&str, T)]) -> Option<T> {
    let text = r.string(e)?;
    match choices.iter().find(|(word, _)| *word == text) {
        Some((_, value)) => Some(*value),
        None => {
            let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
            r.error(e.at, format!("`{}` must be one of: {} (not `{text}`)", e.name, words.join(", ")));
            None
        }
    }
}

fn read_schedule(r: &mut Reader, e: &Entry) -> Option<String> {
    read_checked(r, e, |text| {
        crate::model::schedule::parse_cron(text).map_err(|err| format!("bad cron expression `{text}`: {err}"))
    })
}

fn read_timezone(r: &mut Reader, e: &Entry) -> Option<String> {
    read_checked(r, e, crate::model::schedule::parse_zone)
}

/// A string that `check` accepts; its message is the diagnostic otherwise.
fn read_checked<T>(r: &mut Reader, e: &Entry, check: impl Fn(&str) -> Result<T, String>) -> Option<String> {
    let text = r.string(e)?;
    match check(&text) {
        Ok(_) => Some(text),
        Err(message) => {
            r.error(e.at, message);
            None
        }
    }
}

fn read_tasks(r: &mut Reader, entry: &Entry) -> Vec<TaskDraft> {
    let Some(table) = r.table(entry) else {
        return Vec::new();
    };
    let tasks: Vec<TaskDraft> = r.entries(table, entry.at).iter().filter_map(|e| read_task(r, e)).collect();
    if table.is_empty() {
        r.error(entry.key_at, "`tasks` is empty: add a [jobs.<job>.tasks.<task>] table");
    }
    tasks
}

fn read_task(r: &mut Reader, entry: &Entry) -> Option<TaskDraft> {
    r.check_name("task", entry.name, entry.key_at);
    let table = r.table(entry)?;
    let mut task = TaskDraft {
        name: entry.name.to_string(),
        at: entry.key_at,
        command: None,
        stdin: None,
        needs: Vec::new(),
        fields: TaskFields::default(),
        wait_for: None,
        wait_timeout: None,
        cache: None,
        expect: None,
        control: ControlDraft::default(),
    };
    let (mut run, mut args) = (None, None);
    let mut wait_timeout_at = None;
    for e in r.entries(table, entry.at) {
        match e.name {
            "run" => run = Some((e.key_at, r.string(&e))),
            "args" => args = Some((e.key_at, read_args(r, &e))),
            "stdin" => task.stdin = r.located_string(&e),
            "needs" => task.needs = r.string_array(&e).unwrap_or_default(),
            "description" => {}
            "wait_for" => task.wait_for = read_signal_name(r, &e),
            "cache" => task.cache = read_cache(r, &e),
            "expect" => task.expect = super::expect::read(r, &e),
            "wait_timeout" => {
                wait_timeout_at = Some(e.key_at);
                task.wait_timeout = r.duration(&e, true);
            }
            _ if control::read(r, &e, &mut task.control) => {}
            _ => {
                if !read_common_field(r, &e, &mut task.fields) {
                    r.unknown_key(&e, &format!("task `{}`", entry.name), TASK_KEYS);
                }
            }
        }
    }
    if let (Some(at), None) = (wait_timeout_at, &task.wait_for) {
        r.error(at, format!("`wait_timeout` needs `wait_for` in task `{}`", entry.name));
    }
    let concurrency_at = task.control.keys.iter().find(|k| k.value == "for_each_concurrency").map(|k| k.at);
    if let (Some(at), false) = (concurrency_at, table.contains_key("for_each")) {
        r.error(at, format!("`for_each_concurrency` needs `for_each` in task `{}`", entry.name));
    }
    task.command = match (run, args) {
        (Some(_), Some((args_at, _))) => {
            r.error(args_at, format!("task `{}` has both `run` and `args`; use one", entry.name));
            None
        }
        (Some((_, run)), None) => run.map(DraftCommand::Run),
        (None, Some((_, args))) => args.map(DraftCommand::Args),
        (None, None) => {
            let msg = format!("task `{}` needs `run` (shell text) or `args` (argv)", entry.name);
            r.error(entry.key_at, msg);
            None
        }
    };
    Some(task)
}

fn read_args(r: &mut Reader, e: &Entry) -> Option<Vec<Located<String>>> {
    let args = r.string_array(e)?;
    if args.is_empty() {
        r.error(e.at, "`args` must not be empty: the first item is the program");
        return None;
    }
    Some(args)
}

/// `cache = { key = "…", ttl = "24h" }`: both are needed (an unbounded cache is a surprise).
fn read_cache(r: &mut Reader, entry: &Entry) -> Option<(Located<String>, Duration)> {
    let table = r.table(entry)?;
    let (mut key, mut ttl) = (None, None);
    for e in r.entries(table, entry.at) {
        match e.name {
            "key" => key = r.located_string(&e),
            "ttl" => ttl = r.duration(&e, true),
            _ => r.unknown_key(&e, "`cache`", CACHE_KEYS),
        }
    }
    let missing = match (&key, &ttl) {
        (None, _) => Some("`cache` needs a `key` (a template, e.g. key = \"{{ params.url }}\")"),
        (_, None) => Some("`cache` needs a `ttl` (how long a result may be reused, e.g. ttl = \"24h\")"),
        _ => None,
    };
    if let Some(message) = missing {
        r.error(entry.at, message);
    }
    Some((key?, ttl?))
}

/// A signal name is typed on the command line (`gaffer signal j7 NAME`): keep it plain.
fn read_signal_name(r: &mut Reader, e: &Entry) -> Option<String> {
    let name = r.string(e)?;
    if !r.check_name_length("signal", &name, e.at) {
        return None;
    }
    let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !plain {
        r.error(e.at, format!("signal name `{name}` may only contain letters, digits, `_`, `-` and `.`"));
        return None;
    }
    Some(name)
}

/// Reads a key that tasks and `[defaults]` share; `false` if `e` is not one of them.
fn read_common_field(r: &mut Reader, e: &Entry, fields: &mut TaskFields) -> bool {
    match e.name {
        "env" => fields.env.extend(r.string_table(e)),
        "env_file" => fields.env_file = env_file::read_paths(r, e),
        "cwd" => fields.cwd = r.string(e).map(PathBuf::from),
        "queue" => fields.queue = r.located_string(e),
        "priority" => {
            fields.priority = r.int_in(e, 0, 100, "from 0 to 100").and_then(|n| u8::try_from(n).ok());
        }
        "timeout" => fields.timeout = r.duration(e, true),
        "heartbeat_timeout" => fields.heartbeat_timeout = r.duration(e, true),
        "queue_timeout" => fields.queue_timeout = r.duration(e, true),
        "retry" => read_retry(r, e, &mut fields.retry),
        "cost" => fields.cost = read_cost(r, e),
        "budget_usd" => fields.budget_usd_micros = r.usd(e),
        "requires" => fields.requires = read_requires(r, e),
        _ => return false,
    }
    true
}

/// `requires = ["gpu", "eu"]`: node labels (`model::routing`'s syntax), each reported where it is.
fn read_requires(r: &mut Reader, e: &Entry) -> Option<Vec<String>> {
    use crate::model::routing::{MAX_LABELS, check_label};
    let labels = r.string_array(e)?;
    if labels.len() > MAX_LABELS {
        r.error(e.at, format!("`requires` names {} labels; at most {MAX_LABELS} are allowed", labels.len()));
        return None;
    }
    let mut ok = true;
    for label in &labels {
        if let Err(message) = check_label(&label.value) {
            r.error(label.at, format!("`requires`: {message}"));
            ok = false;
        }
    }
    ok.then(|| labels.into_iter().map(|l| l.value).collect())
}

fn read_cost(r: &mut Reader, e: &Entry) -> Option<CostSource> {
    let text = r.string(e)?;
    match text.as_str() {
        "protocol" => Some(CostSource::Protocol),
        "claude-json" => Some(CostSource::ClaudeJson),
        "openai-json" => Some(CostSource::OpenAiJson),
        _ => {
            let msg = format!("unknown cost source `{text}` (expected one of: protocol, claude-json, openai-json)");
            r.error(e.at, msg);
            None
        }
    }
}

fn read_retry(r: &mut Reader, entry: &Entry, retry: &mut RetryFields) {
    let Some(table) = r.table(entry) else { return };
    for e in r.entries(table, entry.at) {
        match e.name {
            "max_attempts" => {
                retry.max_attempts = r.int_in(&e, 1, 100, "from 1 to 100").and_then(|n| u32::try_from(n).ok());
            }
            "initial_interval" => retry.initial_interval = r.duration(&e, false),
            "backoff" => retry.backoff = r.float_in(&e, 1.0, f64::MAX, "of at least 1.0"),
            "max_interval" => retry.max_interval = r.duration(&e, false),
            "jitter" => retry.jitter = r.float_in(&e, 0.0, 1.0, "from 0.0 to 1.0"),
            "non_retryable_exit_codes" => {
                retry.non_retryable_exit_codes = r
                    .int_array(&e, 0, 255, "from 0 to 255")
                    .map(|codes| codes.into_iter().filter_map(|c| i32::try_from(c).ok()).collect());
            }
            "max_cost_usd" => retry.max_cost_usd_micros = r.usd(&e),
            "models" => retry.models = read_models(r, &e),
            "poison_after_crashes" => {
                retry.poison_after_crashes =
                    r.int_in(&e, 0, 100, "from 0 (never) to 100").and_then(|n| u32::try_from(n).ok());
            }
            _ => r.unknown_key(&e, "`retry`", RETRY_KEYS),
        }
    }
}

/// `models = ["claude-sonnet-4-5", "claude-haiku-4-5"]`: model names as an agent CLI takes them.
fn read_models(r: &mut Reader, e: &Entry) -> Option<Vec<String>> {
    const MAX_MODELS: usize = 100;
    let models = r.string_array(e)?;
    if models.is_empty() || models.len() > MAX_MODELS {
        r.error(e.at, format!("`models` needs from 1 to {MAX_MODELS} model names"));
        return None;
    }
    let plain = |m: &str| !m.is_empty() && m.len() <= 200 && m.chars().all(|c| c.is_ascii_graphic());
    let bad: Vec<&Located<String>> = models.iter().filter(|m| !plain(&m.value)).collect();
    for m in &bad {
        r.error(
            m.at,
            format!("model name `{}` must be 1 to 200 visible characters, no spaces", m.value.escape_debug()),
        );
    }
    bad.is_empty().then(|| models.into_iter().map(|m| m.value).collect())
}

fn check_queue_refs(r: &mut Reader, queues: &BTreeMap<String, QueueDef>, defaults: &TaskFields, jobs: &[JobDraft]) {
    let task_queues = jobs.iter().flat_map(|j| &j.tasks).filter_map(|t| t.fields.queue.as_ref());
    for queue in defaults.queue.iter().chain(task_queues) {
        if !queues.contains_key(&queue.value) {
            let declared: Vec<&str> = queues.keys().map(String::as_str).collect();
            let msg = format!("unknown queue `{}` (declared: {})", queue.value, declared.join(", "));
            r.error(queue.at, msg);
        }
    }
}

/// `env` merges key by key, task over defaults.
pub(super) fn merged_env<'a>(task: &'a TaskDraft, defaults: &'a TaskFields) -> BTreeMap<&'a str, &'a Located<String>> {
    let mut env: BTreeMap<&str, &Located<String>> = defaults.env.iter().map(|(k, v)| (k.as_str(), v)).collect();
    env.extend(task.fields.env.iter().map(|(k, v)| (k.as_str(), v)));
    env
}

fn finish_job(job: &JobDraft, defaults: &TaskFields, base_dir: &Path) -> JobDef {
    JobDef {
        name: job.name.clone(),
        schedule: job.schedule.clone(),
        timezone: job.timezone.clone(),
        params: job.params.clone(),
        budget_usd_micros: job.budget_usd_micros,
        fail_fast: job.fail_fast,
        policy: job.policy,
        tasks: job.tasks.iter().map(|t| finish_task(t, defaults, base_dir)).collect(),
        hooks: job.hooks.clone(),
    }
}

fn finish_task(task: &TaskDraft, defaults: &TaskFields, base_dir: &Path) -> TaskDef {
    let own = &task.fields;
    let command = match &task.command {
        Some(DraftCommand::Run(text)) => CommandSpec::Shell(text.clone()),
        Some(DraftCommand::Args(args)) => CommandSpec::Argv(args.iter().map(|a| a.value.clone()).collect()),
        // Only reachable when a diagnostic was recorded, so the workflow is discarded.
        None => CommandSpec::Argv(Vec::new()),
    };
    let mut seen = std::collections::HashSet::new();
    let needs: Vec<String> = task.needs.iter().filter(|n| seen.insert(&n.value)).map(|n| n.value.clone()).collect();
    let cwd = own.cwd.as_ref().or(defaults.cwd.as_ref()).map_or_else(
        || base_dir.to_path_buf(),
        |p| {
            let joined = base_dir.join(p);
            std::path::absolute(&joined).unwrap_or(joined)
        },
    );
    TaskDef {
        name: task.name.clone(),
        command,
        env: merged_env(task, defaults).into_iter().map(|(k, v)| (k.to_string(), v.value.clone())).collect(),
        env_file: own.env_file.as_ref().or(defaults.env_file.as_ref()).map(|f| f.vars.clone()).unwrap_or_default(),
        env_files: own.env_file.as_ref().or(defaults.env_file.as_ref()).map(|f| f.files.clone()).unwrap_or_default(),
        stdin: task.stdin.as_ref().map(|s| s.value.clone()),
        cwd,
        needs,
        queue: own
            .queue
            .as_ref()
            .or(defaults.queue.as_ref())
            .map_or_else(|| "default".to_string(), |q| q.value.clone()),
        priority: own.priority.or(defaults.priority).unwrap_or(DEFAULT_PRIORITY),
        timeout: own.timeout.or(defaults.timeout).unwrap_or(DEFAULT_TIMEOUT),
        heartbeat_timeout: own.heartbeat_timeout.or(defaults.heartbeat_timeout).unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT),
        queue_timeout: own.queue_timeout.or(defaults.queue_timeout),
        retry: merge_retry(&own.retry, &defaults.retry),
        cost: own.cost.or(defaults.cost).unwrap_or(CostSource::Protocol),
        budget_usd_micros: own.budget_usd_micros.or(defaults.budget_usd_micros),
        requires: own.requires.clone().or_else(|| defaults.requires.clone()).unwrap_or_default(),
        wait_for: task.wait_for.clone(),
        wait_timeout: task.wait_timeout,
        cache: task.cache.as_ref().map(|(key, ttl)| CachePolicy { key: key.value.clone(), ttl: *ttl }),
        expect: task.expect.as_ref().map(|e| e.finish(base_dir)),
        next: task.control.next.iter().map(control::TransitionDraft::finish).collect(),
        join: task.control.join.as_ref().map(|j| j.value),
        max_iterations: task.control.max_iterations.unwrap_or(DEFAULT_MAX_ITERATIONS),
        for_each: task.control.for_each.as_ref().map(|f| f.value.clone()),
        for_each_concurrency: task.control.for_each_concurrency,
        compensate: task.control.compensate.clone(),
    }
}

/// `retry` merges field by field: task, then defaults, then the built-in policy.
fn merge_retry(own: &RetryFields, defaults: &RetryFields) -> RetryPolicy {
    let base = RetryPolicy::default();
    RetryPolicy {
        max_attempts: own.max_attempts.or(defaults.max_attempts).unwrap_or(base.max_attempts),
        initial_interval: own.initial_interval.or(defaults.initial_interval).unwrap_or(base.initial_interval),
        backoff: own.backoff.or(defaults.backoff).unwrap_or(base.backoff),
        max_interval: own.max_interval.or(defaults.max_interval).unwrap_or(base.max_interval),
        jitter: own.jitter.or(defaults.jitter).unwrap_or(base.jitter),
        non_retryable_exit_codes: own
            .non_retryable_exit_codes
            .clone()
            .or_else(|| defaults.non_retryable_exit_codes.clone())
            .unwrap_or(base.non_retryable_exit_codes),
        max_cost_usd_micros: own.max_cost_usd_micros.or(defaults.max_cost_usd_micros),
        models: own.models.clone().or_else(|| defaults.models.clone()).unwrap_or_default(),
        poison_after_crashes: own
            .poison_after_crashes
            .or(defaults.poison_after_crashes)
            .unwrap_or(base.poison_after_crashes),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse as parse_text;
    use super::*;
    use proptest::prelude::*;

    const FULL: &str = r#"[settings]
workers = 4
log_max_bytes = 1048576

[queues.llm]
concurrency = 2
rate_limit = "30/min"
aging = "1m"

[defaults]
timeout = "30m"
heartbeat_timeout = "5m"
env = { LANG = "C", MODE = "default" }
retry = { max_attempts = 3, initial_interval = "2s", backoff = 2.0, max_interval = "10m", jitter = 0.2 }

[jobs.report]
schedule = "0 9 * * MON-FRI"
timezone = "Europe/Berlin"
params = { topic = "rust", limit = 10, ratio = 0.50, dry = false }
budget_usd = 2.00
fail_fast = false
description = "free text"

[jobs.report.tasks.fetch]
run = "./scripts/fetch.sh \"$TOPIC\""
env = { TOPIC = "{{ params.topic }}", MODE = "fetch" }
cwd = "scripts"

[jobs.report.tasks.analyze]
needs = ["fetch"]
queue = "llm"
priority = 80
run = "claude -p \"$PROMPT\" --output-format json"
env = { PROMPT = "Summarize: {{ tasks.fetch.outputs.summary }}" }
cost = "claude-json"
retry = { max_attempts = 4, non_retryable_exit_codes = [2], max_cost_usd = 1.50 }

[jobs.report.tasks.deliver]
needs = ["analyze"]
args = ["mail", "-s", "report {{ job.name }} #{{ job.run_id }}", "{{ tasks.fetch.outputs.to }}"]
stdin = "{{ tasks.analyze.outputs.text }}"
queue_timeout = "1h 30m"
timeout = "90s"

[pricing."claude-sonnet-4-5"]
input_per_mtok = 3.00
output_per_mtok = 15.00
cache_read_per_mtok = 0.30
"#;

    fn parse_ok(text: &str) -> Workflow {
        match parse_text(Path::new("/wf/gaffer.toml"), text) {
            Ok(wf) => wf,
            Err(d) => panic!("unexpected diagnostics:\n{d}"),
        }
    }

    /// Diagnostics as `LINE:COL: message` lines.
    fn errors(text: &str) -> Vec<String> {
        match parse_text(Path::new("wf.toml"), text) {
            Ok(_) => Vec::new(),
            Err(d) => d.items.iter().map(|i| format!("{}:{}: {}", i.line, i.col, i.message)).collect(),
        }
    }

    fn assert_error(text: &str, expected: &str) {
        let errs = errors(text);
        assert!(errs.iter().any(|e| e.contains(expected)), "expected `{expected}` in {errs:#?}");
    }

    #[test]
    fn full_file_applies_defaults() {
        let wf = parse_ok(FULL);
        assert_eq!(wf.base_dir, PathBuf::from("/wf"));
        assert_eq!(wf.settings.workers, 4);
        assert_eq!(wf.settings.log_max_bytes, 1_048_576);
        assert_eq!(wf.queues["default"].concurrency, 4);
        let llm = &wf.queues["llm"];
        assert_eq!(llm.concurrency, 2);
        assert_eq!(llm.rate_limit, Some(RateLimit { count: 30, window: Duration::from_secs(60) }));
        assert_eq!(llm.aging, Some(Duration::from_secs(60)));
        assert_eq!(
            wf.pricing["claude-sonnet-4-5"],
            Price {
                input_usd_micros_per_mtok: 3_000_000,
                output_usd_micros_per_mtok: 15_000_000,
                cache_read_usd_micros_per_mtok: Some(300_000),
                cache_write_usd_micros_per_mtok: None,
            }
        );

        let job = &wf.jobs[0];
        assert_eq!(job.name, "report");
        assert_eq!(job.schedule.as_deref(), Some("0 9 * * MON-FRI"));
        assert_eq!(job.timezone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(job.budget_usd_micros, Some(2_000_000));
        assert_eq!(job.params["limit"], ParamDef::plain("10"));
        assert_eq!(job.params["ratio"], ParamDef::plain("0.50"));
        assert_eq!(job.params["dry"], ParamDef::plain("false"));
        let names: Vec<&str> = job.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["fetch", "analyze", "deliver"]);

        let fetch = job.task("fetch").expect("test setup");
        assert_eq!(fetch.command, CommandSpec::Shell("./scripts/fetch.sh \"$TOPIC\"".into()));
        assert_eq!(fetch.cwd, PathBuf::from("/wf/scripts"));
        assert_eq!(fetch.env["MODE"], "fetch", "task env overrides defaults");
        assert_eq!(fetch.env["LANG"], "C", "defaults env merged in");
        assert_eq!(fetch.queue, "default");
        assert_eq!(fetch.priority, 50);
        assert_eq!(fetch.timeout, Duration::from_secs(30 * 60));
        assert_eq!(fetch.heartbeat_timeout, Duration::from_secs(5 * 60));
        assert_eq!(fetch.queue_timeout, None);
        assert_eq!(fetch.cost, CostSource::Protocol);
        assert_eq!(fetch.retry.initial_interval, Duration::from_secs(2));
        assert_eq!(fetch.retry.max_interval, Duration::from_secs(600));

        let analyze = job.task("analyze").expect("test setup");
        assert_eq!(analyze.cwd, PathBuf::from("/wf"));
        assert_eq!(analyze.queue, "llm");
        assert_eq!(analyze.priority, 80);
        assert_eq!(analyze.cost, CostSource::ClaudeJson);
        assert_eq!(analyze.needs, ["fetch"]);
        assert_eq!(
            analyze.retry,
            RetryPolicy {
                max_attempts: 4,
                initial_interval: Duration::from_secs(2),
                backoff: 2.0,
                max_interval: Duration::from_secs(600),
                jitter: 0.2,
                non_retryable_exit_codes: vec![2],
                max_cost_usd_micros: Some(1_500_000),
                models: Vec::new(),
                poison_after_crashes: 2,
            }
        );

        let deliver = job.task("deliver").expect("test setup");
        let CommandSpec::Argv(argv) = &deliver.command else { panic!("argv expected") };
        assert_eq!(argv[2], "report {{ job.name }} #{{ job.run_id }}", "stored unrendered");
        assert_eq!(deliver.stdin.as_deref(), Some("{{ tasks.analyze.outputs.text }}"));
        assert_eq!(deliver.queue_timeout, Some(Duration::from_secs(5400)));
        assert_eq!(deliver.timeout, Duration::from_secs(90));
    }

    #[test]
    fn circuits_models_and_poison_are_read_and_checked() {
        let wf = parse_ok(
            "[queues.llm]\ncircuit = { failures = 5, within = \"1m\", open_for = \"5m\" }\n\
             [jobs.j.tasks.t]\nrun = 'x'\nretry = { models = [\"a\", \"b\"], poison_after_crashes = 0 }\n",
        );
        let rule = CircuitRule { failures: 5, within: Duration::from_secs(60), open_for: Duration::from_secs(300) };
        assert_eq!(wf.queues["llm"].circuit, Some(rule));
        assert_eq!(wf.jobs[0].tasks[0].retry.models, ["a", "b"]);
        assert_eq!(wf.jobs[0].tasks[0].retry.poison_after_crashes, 0);
        assert_eq!(parse_ok("[jobs.j.tasks.t]\nrun = 'x'\n").jobs[0].tasks[0].retry.poison_after_crashes, 2);
        let bad = "[queues.llm]\ncircuit = { failures = 0, within = \"1m\", opn_for = \"5m\" }\n\
                   [jobs.j.tasks.t]\nrun = 'x'\nretry = { models = [\"has space\"], poison_after_crashes = -1 }\n";
        assert_error(bad, "2:24: `failures` must be an integer from 1 to 10000");
        assert_error(bad, "2:42: unknown key `opn_for` in `circuit`");
        assert_error(bad, "2:11: `circuit` needs `open_for`");
        assert_error(bad, "5:21: model name `has space` must be 1 to 200 visible characters, no spaces");
        assert_error(bad, "5:58: `poison_after_crashes` must be an integer from 0 (never) to 100");
    }

    #[test]
    fn minimal_file_gets_builtin_defaults() {
        let wf = parse_ok("[jobs.j.tasks.t]\nrun = \"echo {{ not templated }}\"\n");
        let t = &wf.jobs[0].tasks[0];
        assert_eq!(t.timeout, Duration::from_secs(3600));
        assert_eq!(t.heartbeat_timeout, Duration::from_secs(600));
        assert_eq!(t.retry, RetryPolicy::default());
        assert_eq!(t.priority, 50);
        assert_eq!(t.cwd, PathBuf::from("/wf"));
        assert_eq!(wf.settings.log_max_bytes, 16 * 1024 * 1024);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(wf.settings.workers, cpus);
        assert_eq!(wf.queues["default"].concurrency, cpus);
        assert!(!wf.jobs[0].fail_fast);
    }

    #[test]
    fn relative_path_gets_absolute_base_dir() {
        let wf = parse_text(Path::new("gaffer.toml"), "[jobs.j.tasks.t]\nrun = \"x\"\n").expect("test setup");
        assert!(wf.base_dir.is_absolute());
        assert_eq!(wf.path, PathBuf::from("gaffer.toml"));
        assert!(wf.jobs[0].tasks[0].cwd.is_absolute());
    }

    #[test]
    fn declared_default_queue_is_kept() {
        let wf =
            parse_ok("[settings]\nworkers = 8\n[queues.default]\nconcurrency = 3\n[jobs.j.tasks.t]\nrun = \"x\"\n");
        assert_eq!(wf.queues["default"].concurrency, 3);
    }

    #[test]
    fn many_problems_reported_at_once() {
        let text = r#"[settings]
workers = 0

[queues.llm]
concurrency = 2
burst = 5

[jobs.report]
schedule = "0 25 * * *"
timezone = "Mars/Olympus"

[jobs.report.tasks.fetch]
run = "x"
priority = 101
timeout = "5 minutes-ish"
queue = "gpu"
needs = ["fetch2"]
nees = ["a"]
"#;
        assert_eq!(
            errors(text),
            [
                "2:11: `workers` must be an integer of at least 1",
                "6:1: unknown key `burst` in queue `llm` (expected one of: concurrency, rate_limit, aging, circuit, on_failure, on_dead_letter, on_budget)",
                "9:12: bad cron expression `0 25 * * *`: Component error: Number out of bounds.",
                "10:12: unknown timezone `Mars/Olympus`",
                "14:12: `priority` must be an integer from 0 to 100",
                "15:11: bad duration `5 minutes-ish` for `timeout`: invalid character at 9",
                "16:9: unknown queue `gpu` (declared: default, llm)",
                "17:10: unknown task `fetch2` in `needs` of task `fetch` (job `report` has: fetch)",
                "18:1: unknown key `nees` in task `fetch` (expected one of: run, args, env, env_file, stdin, cwd, needs, queue, priority, timeout, heartbeat_timeout, queue_timeout, retry, cost, budget_usd, requires, wait_for, wait_timeout, cache, expect, description, next, join, max_iterations, for_each, for_each_concurrency, compensate); did you mean `needs`?",
            ]
        );
    }

    #[test]
    fn toml_syntax_error_has_position() {
        let errs = errors("[jobs.j.tasks.t]\nrun = \n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("2:7: invalid TOML:"), "{errs:?}");
    }

    #[test]
    fn no_jobs_at_all() {
        assert_eq!(errors("[settings]\nworkers = 2\n"), ["1:1: no jobs: add a [jobs.<name>.tasks.<task>] table"]);
        assert_eq!(errors(""), ["1:1: no jobs: add a [jobs.<name>.tasks.<task>] table"]);
    }

    #[test]
    fn job_without_tasks() {
        assert_error("[jobs.empty]\nschedule = \"@daily\"\n", "1:7: job `empty` has no tasks");
        assert_error("[jobs.empty.tasks]\n", "1:13: `tasks` is empty");
    }

    #[test]
    fn bad_names() {
        assert_error("[jobs.\"my job\".tasks.t]\nrun = \"x\"\n", "1:7: job name `my job` may only contain");
        assert_error("[jobs.j.tasks.\"a.b\"]\nrun = \"x\"\n", "1:15: task name `a.b` may only contain");
    }

    #[test]
    fn run_xor_args() {
        assert_error(
            "[jobs.j.tasks.t]\nrun = \"x\"\nargs = [\"y\"]\n",
            "3:1: task `t` has both `run` and `args`; use one",
        );
        assert_error("[jobs.j.tasks.t]\nenv = {}\n", "1:15: task `t` needs `run` (shell text) or `args` (argv)");
        assert_error("[jobs.j.tasks.t]\nargs = []\n", "2:8: `args` must not be empty");
        assert_error("[jobs.j.tasks.t]\nargs = [\"a\", 3]\n", "2:14: `args` must be an array of strings");
    }

    #[test]
    fn type_and_range_errors() {
        let t = |extra: &str| format!("[jobs.j.tasks.t]\nrun = \"x\"\n{extra}\n");
        assert_error(&t("priority = \"high\""), "3:12: `priority` must be an integer from 0 to 100");
        assert_error(&t("retry = { max_attempts = 0 }"), "3:26: `max_attempts` must be an integer from 1 to 100");
        assert_error(&t("retry = { backoff = 0.5 }"), "3:21: `backoff` must be a number of at least 1.0");
        assert_error(&t("retry = { jitter = 2 }"), "3:20: `jitter` must be a number from 0.0 to 1.0");
        assert_error(
            &t("retry = { non_retryable_exit_codes = [1, 256] }"),
            "3:42: `non_retryable_exit_codes` must be an array of integers from 0 to 255",
        );
        assert_error(&t("retry = { tries = 2 }"), "3:11: unknown key `tries` in `retry`");
        assert_error(&t("timeout = \"0s\""), "3:11: `timeout` must be longer than zero");
        assert_error(&t("heartbeat_timeout = \"0s\""), "3:21: `heartbeat_timeout` must be longer than zero");
        assert_error(&t("budget_usd = -1.5"), "3:14: bad amount for `budget_usd`");
        assert_error(&t("budget_usd = 1e3"), "3:14: bad amount for `budget_usd`");
        assert_error(&t("cost = \"gemini\""), "3:8: unknown cost source `gemini`");
        assert_error(&t("env = { A = 1 }"), "3:13: `env.A` must be a string");
        assert_error(&t("needs = \"a\""), "3:9: `needs` must be an array of strings");
        assert_error(&t("stdin = 5"), "3:9: `stdin` must be a string");
    }

    #[test]
    fn bad_queue_and_settings_values() {
        assert_error(
            "[queues.q]\nrate_limit = \"lots\"\n[jobs.j.tasks.t]\nrun = \"x\"\n",
            "2:14: bad rate limit `lots`",
        );
        assert_error(
            "[queues.q]\nconcurrency = 0\n[jobs.j.tasks.t]\nrun = \"x\"\n",
            "2:15: `concurrency` must be an integer of at least 1",
        );
        assert_error(
            "[settings]\nthreads = 2\n[jobs.j.tasks.t]\nrun = \"x\"\n",
            "2:1: unknown key `threads` in [settings]",
        );
        assert_error(
            "[defaults]\nqueue = \"nope\"\n[jobs.j.tasks.t]\nrun = \"x\"\n",
            "2:9: unknown queue `nope` (declared: default)",
        );
        assert_error(
            "[defaults]\nrun = \"x\"\n[jobs.j.tasks.t]\nrun = \"x\"\n",
            "2:1: unknown key `run` in [defaults]",
        );
        assert_error(
            "[pricing.m]\ninput_per_mtok = 1\n[jobs.j.tasks.t]\nrun = \"x\"\n",
            "1:10: pricing `m` is missing `output_per_mtok`",
        );
        assert_error("[jobs.j.tasks.t]\nrun = \"x\"\n[extra]\n", "3:2: unknown key `extra` in the workflow file");
    }

    #[test]
    fn cron_and_timezone() {
        for ok in ["@daily", "@hourly", "0 0 9 * * *", "*/5 * * * *"] {
            parse_ok(&format!("[jobs.j]\nschedule = \"{ok}\"\ntimezone = \"UTC\"\n[jobs.j.tasks.t]\nrun = \"x\"\n"));
        }
        assert_error(
            "[jobs.j]\nschedule = \"every day\"\n[jobs.j.tasks.t]\nrun = \"x\"\n",
            "2:12: bad cron expression `every day`:",
        );
        assert_error(
            "[jobs.j]\nschedule = \"0 0 9 * * * 2030\"\n[jobs.j.tasks.t]\nrun = \"x\"\n",
            "2:12: bad cron expression",
        );
        assert_error(
            "[jobs.j]\ntimezone = \"Berlin\"\n[jobs.j.tasks.t]\nrun = \"x\"\n",
            "2:12: unknown timezone `Berlin`",
        );
    }

    #[test]
    fn workflow_control_keys_belong_on_tasks() {
        for key in WORKFLOW_CONTROL_KEYS {
            let text = format!("[defaults]\n{key} = 1\n[jobs.j.tasks.t]\nrun = \"x\"\n");
            assert_eq!(errors(&text), [format!("2:1: `{key}` belongs on a task, not in [defaults]")]);
        }
    }

    #[test]
    fn a_queue_wider_than_workers_gets_a_note() {
        let wf = parse_ok("[settings]\nworkers = 2\n[queues.llm]\nconcurrency = 3\n[jobs.j.tasks.t]\nrun = \"x\"\n");
        assert_eq!(wf.notes().len(), 1);
        assert!(wf.notes()[0].starts_with("queue `llm` allows 3 at once, but `workers` = 2"), "{:?}", wf.notes());
        let fine = parse_ok("[settings]\nworkers = 3\n[queues.llm]\nconcurrency = 3\n[jobs.j.tasks.t]\nrun = \"x\"\n");
        assert!(fine.notes().is_empty());
    }

    #[test]
    fn wait_for_names_a_plain_signal() {
        let wf = parse_ok("[jobs.j.tasks.t]\nrun = \"x\"\nwait_for = \"approval\"\nwait_timeout = \"2h\"\n");
        let t = &wf.jobs[0].tasks[0];
        assert_eq!((t.wait_for.as_deref(), t.wait_timeout), (Some("approval"), Some(Duration::from_secs(7200))));
        assert_eq!(parse_ok("[jobs.j.tasks.t]\nrun = \"x\"\n").jobs[0].tasks[0].wait_for, None);
        assert_error("[jobs.j.tasks.t]\nrun = \"x\"\nwait_for = \"a b\"\n", "3:12: signal name `a b` may only contain");
        assert_error("[jobs.j.tasks.t]\nrun = \"x\"\nwait_timeout = \"1h\"\n", "3:1: `wait_timeout` needs `wait_for`");
        assert_error(
            "[jobs.j.tasks.t]\nrun = \"x\"\nwait_for = \"a\"\nwait_timeout = \"0s\"\n",
            "must be longer than zero",
        );
        assert_error(
            "[defaults]\nwait_for = \"a\"\n[jobs.j.tasks.t]\nrun = \"x\"\n",
            "2:1: `wait_for` belongs on the task",
        );
    }

    #[test]
    fn scheduling_policies() {
        let text = "[jobs.j]\ncatchup = \"all\"\ncatchup_window = \"2h\"\noverlap = \"queue\"\nmax_active_runs = 2\n[jobs.j.tasks.t]\nrun = \"x\"\n";
        let wf = parse_workflow(Path::new("w.toml"), text, false).expect("valid");
        let policy = wf.jobs[0].policy;
        assert_eq!(policy.catchup, Catchup::All);
        assert_eq!(policy.catchup_window, Duration::from_secs(7200));
        assert_eq!(policy.overlap, Overlap::Queue);
        assert_eq!(policy.max_active_runs, Some(2));
        let bad = "[jobs.j]\noverlap = \"sometimes\"\n[jobs.j.tasks.t]\nrun = \"x\"\n";
        assert_eq!(
            errors(bad),
            ["2:11: `overlap` must be one of: skip, queue, cancel_previous, allow (not `sometimes`)"]
        );
    }

    #[test]
    fn inline_and_dotted_tables_work() {
        let wf = parse_ok("[jobs.j]\ntasks.a.run = \"x\"\ntasks.b = { args = [\"y\"], needs = [\"a\"] }\n");
        assert_eq!(wf.jobs[0].tasks[1].needs, ["a"]);
    }

    /// Fuzzing by property: whatever the bytes, parsing never panics, and every problem it
    /// reports points inside the file (a line that exists, a column within it, or just past it).
    fn check_positions(text: &str) -> Result<(), TestCaseError> {
        if let Err(d) = parse_text(Path::new("wf.toml"), text) {
            prop_assert!(!d.items.is_empty(), "an error with no diagnostic");
            let lines: Vec<&str> = text.split('\n').collect();
            for item in &d.items {
                prop_assert!(
                    item.line >= 1 && item.line <= lines.len().max(1),
                    "line {} of {}: {}",
                    item.line,
                    lines.len(),
                    item.message
                );
                let width = lines.get(item.line - 1).map_or(0, |l| l.chars().count());
                prop_assert!(item.col >= 1 && item.col <= width + 1, "col {} of {width}: {}", item.col, item.message);
            }
        }
        Ok(())
    }

    /// Found by `scripts/fuzz.sh` (fuzz/artifacts/workflow_parse/): toml_edit 0.23 panicked
    /// ("all items have spans") on a dotted key with an empty first part after a stray `==`.
    #[test]
    fn fuzz_finds_stay_fixed() {
        for text in ["==\n.=", "==\n.=\n", "a==\n.b.=1"] {
            check_positions(text).expect("parses without panicking, positions inside the file");
            assert!(parse_text(Path::new("wf.toml"), text).is_err());
        }
    }

    #[test]
    fn requires_is_inherited_whole_and_checked_where_written() {
        let wf = parse_ok(
            "[defaults]\nrequires = [\"eu\"]\n[jobs.j.tasks.a]\nrun = 'x'\n\
             [jobs.j.tasks.b]\nrun = 'x'\nrequires = [\"gpu\", \"cuda_12.4\"]\n\
             [jobs.j.tasks.c]\nrun = 'x'\nrequires = []\n",
        );
        let requires: Vec<&[String]> = wf.jobs[0].tasks.iter().map(|t| t.requires.as_slice()).collect();
        assert_eq!(requires, [&["eu".to_string()][..], &["gpu".to_string(), "cuda_12.4".to_string()], &[]]);
        assert!(parse_ok("[jobs.j.tasks.t]\nrun = 'x'\n").jobs[0].tasks[0].requires.is_empty());
        let bad = "[defaults]\nrequires = \"gpu\"\n[jobs.j.tasks.t]\nrun = 'x'\nrequires = [\"gpu\", \"GPU\", \"\"]\n";
        assert_error(bad, "2:12: `requires` must be an array of strings");
        assert_error(bad, "5:20: `requires`: label `GPU` has 'G'");
        assert_error(bad, "5:27: `requires`: a label must not be empty");
        let many = format!("[jobs.j.tasks.t]\nrun = 'x'\nrequires = [{}]\n", vec!["\"a\""; 33].join(", "));
        assert_error(&many, "3:12: `requires` names 33 labels; at most 32 are allowed");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            check_positions(&text)?;
        }

        /// Realistic damage: a valid file with a slice cut out and something pasted in.
        #[test]
        fn damaged_workflows_never_panic(cut in 0usize..2000, len in 0usize..40, paste in "[\\[\\]=\"'{}., a-z0-9\\n]{0,12}") {
            let mut chars: Vec<char> = FULL.chars().collect();
            let at = cut.min(chars.len());
            let end = (at + len).min(chars.len());
            chars.splice(at..end, paste.chars());
            check_positions(&chars.into_iter().collect::<String>())?;
        }
    }
}
