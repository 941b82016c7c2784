//! The workflow file after parsing and validation: every default applied, every name checked.
//! The engine only ever sees these types, never raw TOML.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A whole workflow file.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    /// The file it was read from, as given on the command line.
    pub path: PathBuf,
    /// The folder `cwd` is relative to (the file's folder, absolute).
    pub base_dir: PathBuf,
    pub settings: Settings,
    /// Always contains `default`.
    pub queues: BTreeMap<String, QueueDef>,
    /// In file order.
    pub jobs: Vec<JobDef>,
    /// `[pricing."model"]` overrides of `assets/pricing.toml`.
    pub pricing: BTreeMap<String, Price>,
}

impl Workflow {
    /// Overrides `settings.workers` (`--workers N`); queues without their own `concurrency`
    /// follow it, as they would had the file said N.
    /// Notes on settings that are valid but likely not what was meant: a queue declared with
    /// more concurrency than `workers` allows for all queues together.
    pub fn notes(&self) -> Vec<String> {
        let workers = self.settings.workers;
        self.queues
            .iter()
            .filter(|(_, q)| !q.concurrency_is_workers && q.concurrency > workers)
            .map(|(name, q)| {
                format!(
                    "queue `{name}` allows {} at once, but `workers` = {workers} caps all queues together \
                     (default: the number of CPUs); set [settings] workers or --workers for more",
                    q.concurrency
                )
            })
            .collect()
    }

    pub fn set_workers(&mut self, workers: usize) {
        self.settings.workers = workers;
        for queue in self.queues.values_mut().filter(|q| q.concurrency_is_workers) {
            queue.concurrency = workers;
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Global cap on running attempts across all queues.
    pub workers: usize,
    /// Per-attempt log cap in bytes (gaffer extension, default 16 MiB).
    pub log_max_bytes: u64,
    /// `gaffer serve` removes the logs of job runs that ended longer ago (default 14 days);
    /// their records stay.
    pub retention: Duration,
    /// How much a task may report as outputs (`output_max_bytes`, `outputs_max_bytes`).
    pub outputs: OutputLimits,
    /// A cluster node's lease (`lease`, default 30 s, bounds in `model::lease`): a node silent
    /// this long is dead, and its job runs and attempts are taken over by the others.
    pub lease: Duration,
}

/// Caps on what one attempt reports as outputs: they are stored with the task run in
/// `state.redb` and held in memory while its job run is active, so a task printing 100
/// outputs of 1 MB must not grow the store and the process by 100 MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// One output, key and value together (`output_max_bytes`, default 64 KiB).
    pub one_max_bytes: usize,
    /// All outputs of one attempt together (`outputs_max_bytes`, default 1 MiB).
    pub all_max_bytes: usize,
}

impl OutputLimits {
    /// The most either setting may be: one output is also one fd-3 line, read whole.
    pub const CEILING_BYTES: usize = 64 * 1024 * 1024;
    pub const ONE_CEILING_BYTES: usize = 1024 * 1024;
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits { one_max_bytes: 64 * 1024, all_max_bytes: 1024 * 1024 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    pub name: String,
    pub concurrency: usize,
    /// No `concurrency` in the file: it follows `settings.workers` (and `--workers`).
    pub concurrency_is_workers: bool,
    pub rate_limit: Option<RateLimit>,
    /// A waiting task run gains +1 priority per `aging` (anti-starvation); `None` = no aging.
    pub aging: Option<Duration>,
    pub hooks: Hooks,
    /// Pause the queue by itself after a burst of failed attempts (`circuit`).
    pub circuit: Option<CircuitRule>,
}

/// `circuit = { failures = 5, within = "1m", open_for = "5m" }`: `failures` failed attempts
/// within `within` open the circuit (nothing new starts from the queue) for `open_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitRule {
    pub failures: u32,
    pub within: Duration,
    pub open_for: Duration,
}

/// At most `count` attempts started per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobDef {
    pub name: String,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    /// Declared params: a plain default (`topic = "rust"`) or a table
    /// (`token = { secret = true, env = "API_TOKEN" }`).
    pub params: BTreeMap<String, ParamDef>,
    pub budget_usd_micros: Option<u64>,
    /// Cancel running tasks as soon as one task fails the job run.
    pub fail_fast: bool,
    /// What `gaffer serve` does about missed and overlapping fire times.
    pub policy: SchedulePolicy,
    /// In file order; names are unique.
    pub tasks: Vec<TaskDef>,
    pub hooks: Hooks,
}

/// How a scheduled job treats fire times missed while gaffer was down, and fire times that
/// come while an earlier run of it is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulePolicy {
    pub catchup: Catchup,
    /// Only missed fire times this recent are caught up.
    pub catchup_window: Duration,
    pub overlap: Overlap,
    /// At most this many runs of the job at once (`None`: no cap).
    pub max_active_runs: Option<usize>,
}

impl Default for SchedulePolicy {
    /// Catch up the latest slot missed within the hour (a restart across a fire time neither
    /// loses nor doubles it); never start a run while the previous one still runs (paid work).
    fn default() -> Self {
        SchedulePolicy {
            catchup: Catchup::Latest,
            catchup_window: Duration::from_secs(3600),
            overlap: Overlap::Skip,
            max_active_runs: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catchup {
    /// Missed fire times are dropped.
    None,
    /// One run for all missed fire times (the latest).
    Latest,
    /// One run per missed fire time.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// The fire time is dropped while a run is active.
    Skip,
    /// The fire time waits until the active run ends (one waits at most).
    Queue,
    /// Active runs are cancelled, then the new one starts.
    CancelPrevious,
    /// Runs overlap (up to `max_active_runs`).
    Allow,
}

/// One declared job param and where its value may come from (`model::params` resolves it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamDef {
    /// Used when the run is given no value (never set for a secret: the file is stored).
    pub default: Option<String>,
    /// Never stored, journaled or shown: a run keeps it in memory only (`***` everywhere else).
    pub secret: bool,
    /// An environment variable of the gaffer process to read the value from when none is given.
    pub env: Option<String>,
}

impl ParamDef {
    /// A plain `name = "value"` param.
    pub fn plain(default: &str) -> ParamDef {
        ParamDef { default: Some(default.to_string()), secret: false, env: None }
    }
}

impl JobDef {
    pub fn task(&self, name: &str) -> Option<&TaskDef> {
        self.tasks.iter().find(|t| t.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandSpec {
    /// `run`: shell text for `sh -c`, never templated.
    Shell(String),
    /// `args`: argv, each item a template.
    Argv(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostSource {
    /// Only fd-3 `cost` lines.
    Protocol,
    /// Also the agent's JSON result on stdout (`claude -p --output-format json|stream-json`, …).
    /// Both JSON sources read every shape gaffer knows (README: "Agent results"); the name says
    /// which tool the task runs.
    ClaudeJson,
    /// Also the JSON result on stdout (an OpenAI chat completion or response, Codex's JSONL, …).
    OpenAiJson,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskDef {
    pub name: String,
    pub command: CommandSpec,
    /// Values are templates.
    pub env: BTreeMap<String, String>,
    /// Variables read from `env_file` when the file was loaded: literal values, never templated,
    /// overridden by `env`.
    pub env_file: BTreeMap<String, String>,
    /// The files `env_file` names, absolute, in order: a cluster node that runs another
    /// node's task reads them itself (their values are never stored).
    pub env_files: Vec<PathBuf>,
    /// A template.
    pub stdin: Option<String>,
    /// Absolute.
    pub cwd: PathBuf,
    pub needs: Vec<String>,
    pub queue: String,
    /// 0..=100, higher first.
    pub priority: u8,
    pub timeout: Duration,
    pub heartbeat_timeout: Duration,
    pub queue_timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub cost: CostSource,
    pub budget_usd_micros: Option<u64>,
    /// Node labels a node must have to run this task's runs (`requires`; empty: any node).
    pub requires: Vec<String>,
    /// Once its `needs` succeeded the task run waits (state `waiting`) for this signal
    /// (`gaffer signal RUN NAME`, the TUI's `a`) before it is queued.
    pub wait_for: Option<String>,
    /// A wait longer than this dead-letters the task run (`wait_timeout`); `None` waits forever.
    pub wait_timeout: Option<Duration>,
    pub cache: Option<CachePolicy>,
    /// What the result must look like for the attempt to succeed (`expect`).
    pub expect: Option<ExpectPolicy>,
    /// `next`: transitions evaluated when a task run ends for good, in file order (SPEC §2.2).
    pub next: Vec<Transition>,
    /// `join`: how many distinct transition sources must arrive before this task runs once.
    pub join: Option<Join>,
    /// At most this many task runs of this task in one job run (1..=10000, default 10).
    pub max_iterations: u32,
    /// `for_each`: one task run per item.
    pub for_each: Option<ForEach>,
    /// At most this many items of a fanned-out task run at once.
    pub for_each_concurrency: Option<u32>,
    /// `compensate`: shell text run to undo a succeeded task run when its job run fails (saga).
    /// Never templated, like `run`.
    pub compensate: Option<String>,
}

/// The default of `max_iterations`.
pub const DEFAULT_MAX_ITERATIONS: u32 = 10;
/// The largest `max_iterations`.
pub const MAX_ITERATIONS_CEILING: u32 = 10_000;

/// When a transition is considered: how the task run ended for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionOn {
    Success,
    Failure,
    Always,
}

impl TransitionOn {
    pub const ALL: [TransitionOn; 3] = [TransitionOn::Success, TransitionOn::Failure, TransitionOn::Always];

    /// The word in the workflow file (and in `transition.fired` events).
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionOn::Success => "success",
            TransitionOn::Failure => "failure",
            TransitionOn::Always => "always",
        }
    }

    pub fn parse(word: &str) -> Option<TransitionOn> {
        TransitionOn::ALL.into_iter().find(|on| on.as_str() == word)
    }
}

/// One entry of `next = [{ on, when, do }]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub on: TransitionOn,
    /// A bare Jinja expression (no `{{ }}`); `None` = always true.
    pub when: Option<String>,
    /// `do`: the tasks that get a new task run, in file order, deduplicated.
    pub targets: Vec<String>,
}

/// `join = "all"` or `join = N` on a transition target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    All,
    Count(u32),
}

/// What a task fans out over (`for_each`).
#[derive(Debug, Clone, PartialEq)]
pub enum ForEach {
    /// A template rendered when the task is reached: a JSON array, or else one item per
    /// non-empty line.
    Template(String),
    /// A literal TOML array, as JSON values.
    List(Vec<serde_json::Value>),
    /// `{ os = [...], py = [...] }`: one item per combination; axes in file order, none empty.
    Matrix(Vec<(String, Vec<serde_json::Value>)>),
}

/// `expect = { output = "verdict", matches = "^(approve|reject)$" }` or
/// `expect = { json_schema = "schemas/review.json" }`: both checks may be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectPolicy {
    /// The output checked; `None`: `result`, the agent's result.
    pub output: Option<String>,
    /// The JSON Schema file, absolute.
    pub json_schema: Option<PathBuf>,
    /// A regular expression (Rust `regex` syntax) the output must match.
    pub matches: Option<String>,
}

impl TaskDef {
    /// Every text of this task that is rendered as a template (`env` values, `args` items,
    /// `stdin`, the cache key, a `for_each` template).
    pub fn templates(&self) -> impl Iterator<Item = &str> {
        let args = match &self.command {
            CommandSpec::Argv(items) => items.as_slice(),
            CommandSpec::Shell(_) => &[],
        };
        let cache = self.cache.as_ref().map(|c| c.key.as_str());
        let for_each = match &self.for_each {
            Some(ForEach::Template(text)) => Some(text.as_str()),
            _ => None,
        };
        self.env
            .values()
            .map(String::as_str)
            .chain(args.iter().map(String::as_str))
            .chain(self.stdin.as_deref())
            .chain(cache)
            .chain(for_each)
    }

    /// True when some text of the task uses template syntax, so rendering needs upstream outputs.
    pub fn is_templated(&self) -> bool {
        self.templates().any(super::template::is_templated)
    }
}

/// Reuse a succeeded run of this task with the same rendered key, if younger than `ttl`.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    /// A template over params and upstream outputs.
    pub key: String,
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Counting the first try; 1..=100.
    pub max_attempts: u32,
    pub initial_interval: Duration,
    pub backoff: f64,
    pub max_interval: Duration,
    /// 0.0..=1.0; jitter only ever adds to the delay.
    pub jitter: f64,
    pub non_retryable_exit_codes: Vec<i32>,
    pub max_cost_usd_micros: Option<u64>,
    /// Model fallback (`models`): attempt n of a series gets the n-th, the last one repeats, as
    /// `{{ model }}` and `GAFFER_MODEL`. Empty: no model is set.
    pub models: Vec<String>,
    /// Quarantine the task run (`poison`) once gaffer itself dying interrupted this many of its
    /// attempts in a row (`poison_after_crashes`, default 2); 0: never.
    pub poison_after_crashes: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_interval: Duration::from_secs(1),
            backoff: 2.0,
            max_interval: Duration::from_secs(300),
            jitter: 0.2,
            non_retryable_exit_codes: Vec::new(),
            max_cost_usd_micros: None,
            models: Vec::new(),
            poison_after_crashes: 2,
        }
    }
}

/// `on_failure`, `on_dead_letter`, `on_budget` of a job or a queue (`gaffer` runs them with the
/// event as JSON on stdin; see `engine::hooks`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hooks {
    pub on_failure: Option<Hook>,
    pub on_dead_letter: Option<Hook>,
    pub on_budget: Option<Hook>,
}

impl Hooks {
    pub fn get(&self, key: HookKey) -> Option<&Hook> {
        match key {
            HookKey::OnFailure => self.on_failure.as_ref(),
            HookKey::OnDeadLetter => self.on_dead_letter.as_ref(),
            HookKey::OnBudget => self.on_budget.as_ref(),
        }
    }

    pub fn is_empty(&self) -> bool {
        HookKey::ALL.iter().all(|k| self.get(*k).is_none())
    }
}

/// One hook: shell text for `sh -c`, killed (its whole process group) past `timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub run: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookKey {
    OnFailure,
    OnDeadLetter,
    OnBudget,
}

impl HookKey {
    pub const ALL: [HookKey; 3] = [HookKey::OnFailure, HookKey::OnDeadLetter, HookKey::OnBudget];

    /// The key in the workflow file.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKey::OnFailure => "on_failure",
            HookKey::OnDeadLetter => "on_dead_letter",
            HookKey::OnBudget => "on_budget",
        }
    }
}

/// Where a hook is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookLevel {
    Job,
    Queue,
}

impl HookLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            HookLevel::Job => "job",
            HookLevel::Queue => "queue",
        }
    }
}

/// Dollars per million tokens, by kind of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    pub input_usd_micros_per_mtok: u64,
    pub output_usd_micros_per_mtok: u64,
    /// Input read from the provider's prompt cache (Anthropic: 0.1× input). `None`: the input price.
    pub cache_read_usd_micros_per_mtok: Option<u64>,
    /// Input written to the prompt cache (Anthropic: 1.25× input). `None`: the input price.
    pub cache_write_usd_micros_per_mtok: Option<u64>,
}

impl Price {
    pub fn cache_read(&self) -> u64 {
        self.cache_read_usd_micros_per_mtok.unwrap_or(self.input_usd_micros_per_mtok)
    }

    pub fn cache_write(&self) -> u64 {
        self.cache_write_usd_micros_per_mtok.unwrap_or(self.input_usd_micros_per_mtok)
    }
}
