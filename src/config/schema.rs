//! The JSON Schema of the workflow file (`gaffer schema`), for editors: taplo and VS Code's Even
//! Better TOML complete keys, show these doc comments on hover and flag unknown keys.
//!
//! The parser (`parse.rs`) walks the TOML by hand to report every problem with its position,
//! so these types exist only to describe the file; nothing is ever built from them. Tests keep
//! the two in step: every key the parser accepts is here and nothing else, and every example
//! workflow validates against the schema.

// The types are only ever described, never constructed or read.
#![allow(dead_code)]

use std::collections::BTreeMap;

use schemars::JsonSchema;

/// The schema as JSON (draft-07, which taplo and VS Code understand).
pub fn json() -> serde_json::Value {
    let schema = schemars::generate::SchemaSettings::draft07().into_generator().into_root_schema_for::<WorkflowFile>();
    let mut value = schema.to_value();
    drop_nulls(&mut value);
    value
}

/// TOML has no null: an optional key is simply left out, so `Option`'s "or null" would only
/// mislead an editor's completion.
fn drop_nulls(value: &mut serde_json::Value) {
    use serde_json::Value;
    let is_null = |v: &Value| v.get("type").is_some_and(|t| t == "null");
    match value {
        Value::Object(object) => {
            if let Some(Value::Array(types)) = object.get_mut("type") {
                types.retain(|t| t != "null");
                if let [only] = types.as_slice() {
                    let only = only.clone();
                    object.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(any_of)) = object.get_mut("anyOf") {
                any_of.retain(|v| !is_null(v));
            }
            object.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// A gaffer workflow file: queues, defaults and jobs (a job is a graph of tasks).
#[derive(JsonSchema)]
#[schemars(title = "gaffer workflow file", deny_unknown_fields)]
struct WorkflowFile {
    settings: Option<Settings>,
    /// Named queues of ready task runs; `default` always exists.
    queues: Option<BTreeMap<String, Queue>>,
    /// Applies to every task unless the task says otherwise.
    defaults: Option<Defaults>,
    /// The jobs, by name (letters, digits, `_`, `-`).
    jobs: BTreeMap<String, Job>,
    /// Prices per million tokens by model, over the built-in table.
    pricing: Option<BTreeMap<String, Price>>,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Settings {
    /// Cap on attempts running at once across all queues (default: the number of CPUs).
    #[schemars(range(min = 1))]
    workers: Option<u64>,
    /// Per-attempt log cap in bytes (default 16 MiB; head and tail are kept).
    #[schemars(range(min = 1))]
    log_max_bytes: Option<u64>,
    /// `gaffer serve` removes the logs of job runs that ended longer ago (default "14d").
    retention: Option<Duration>,
    /// Largest output (key and value) an attempt may report, in bytes (default 64 KiB); a
    /// bigger one is dropped with a warning.
    #[schemars(range(min = 1, max = 1_048_576))]
    output_max_bytes: Option<u64>,
    /// All outputs of one attempt together, in bytes (default 1 MiB).
    #[schemars(range(min = 1, max = 67_108_864))]
    outputs_max_bytes: Option<u64>,
    /// A cluster node's lease on PostgreSQL (default "30s", from "3s" to "10m"): a node silent
    /// this long is dead, and the other nodes take over its job runs and attempts.
    lease: Option<Duration>,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Queue {
    /// Task runs of this queue running at once (default: `workers`).
    #[schemars(range(min = 1))]
    concurrency: Option<u64>,
    /// Attempts started per window: "30/min", "10/5s".
    rate_limit: Option<String>,
    /// A waiting task run gains +1 priority per this long (anti-starvation), e.g. "1m".
    aging: Option<Duration>,
    /// Hold the queue by itself after a burst of failed attempts, and reopen it after a while.
    circuit: Option<Circuit>,
    #[schemars(flatten)]
    hooks: Hooks,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Circuit {
    /// This many failed attempts of the queue, 1..=10000 ...
    #[schemars(range(min = 1, max = 10000))]
    failures: u32,
    /// ... within this long (e.g. "1m") open the circuit ...
    within: Duration,
    /// ... for this long (e.g. "5m"): nothing new starts from the queue meanwhile.
    open_for: Duration,
}

// Hooks of a job or a queue (a plain comment: a doc comment would describe both).
#[derive(JsonSchema)]
struct Hooks {
    /// Shell run when a task run fails for good here, with the event as JSON on stdin.
    on_failure: Option<Hook>,
    /// Shell run when a task run is dead-lettered here, with the event as JSON on stdin.
    on_dead_letter: Option<Hook>,
    /// Shell run when a budget is crossed here, with the event as JSON on stdin.
    on_budget: Option<Hook>,
}

/// Shell text, or a table to change how long it may take (default 30 s).
#[derive(JsonSchema)]
#[schemars(untagged)]
enum Hook {
    Shell(String),
    Table(HookTable),
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct HookTable {
    /// Shell text, run by `sh -c`.
    run: String,
    /// At most "1h" (default "30s").
    timeout: Option<Duration>,
}

/// A humantime duration: "90s", "5m", "1h 30m".
#[derive(JsonSchema)]
#[schemars(transparent)]
struct Duration(String);

/// Dollars, as a decimal number (2.00) or text ("2.00").
#[derive(JsonSchema)]
#[schemars(untagged)]
enum Usd {
    Number(f64),
    Text(String),
}

// Keys a task shares with `[defaults]` (a plain comment: a doc comment would become the
// description of both).
#[derive(JsonSchema)]
struct Common {
    /// Extra environment; values are templates (`{{ params.topic }}`).
    env: Option<BTreeMap<String, String>>,
    /// A dotenv file (or several, later ones winning), relative to the workflow file; `env`
    /// wins over it. Its values are not templated.
    env_file: Option<OneOrMany>,
    /// Working directory, relative to the workflow file's folder (default: that folder).
    cwd: Option<String>,
    /// The queue the task runs in (default "default").
    queue: Option<String>,
    /// 0..=100, higher first (default 50).
    #[schemars(range(min = 0, max = 100))]
    priority: Option<u8>,
    /// Start-to-close limit per attempt (default "1h").
    timeout: Option<Duration>,
    /// No output and no heartbeat for this long = stuck (default "10m").
    heartbeat_timeout: Option<Duration>,
    /// Dead-letter a task run that waited this long in its queue.
    queue_timeout: Option<Duration>,
    retry: Option<Retry>,
    /// Where cost comes from (default "protocol": fd-3 `cost` lines only).
    cost: Option<CostSource>,
    /// Per task run, all attempts together.
    budget_usd: Option<Usd>,
    /// Node labels a node must have to run the task (`gaffer serve --label gpu`); none: any node.
    #[schemars(length(max = 32))]
    requires: Option<Vec<Label>>,
}

/// A node label: lowercase letters, digits, `_`, `.`, `-`; 1 to 64 of them.
#[derive(JsonSchema)]
struct Label(#[schemars(regex(pattern = r"^[a-z0-9_.-]{1,64}$"))] String);

/// What every task gets unless it says otherwise.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Defaults {
    #[schemars(flatten)]
    common: Common,
}

/// A path or a list of paths.
#[derive(JsonSchema)]
#[schemars(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(JsonSchema)]
enum CostSource {
    #[schemars(rename = "protocol")]
    Protocol,
    #[schemars(rename = "claude-json")]
    ClaudeJson,
    #[schemars(rename = "openai-json")]
    OpenAiJson,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Retry {
    /// Counting the first try, 1..=100 (default 3).
    #[schemars(range(min = 1, max = 100))]
    max_attempts: Option<u32>,
    /// Delay before the second attempt (default "1s").
    initial_interval: Option<Duration>,
    /// Each delay is this many times the last (default 2.0).
    #[schemars(range(min = 1.0))]
    backoff: Option<f64>,
    /// The longest delay (default "5m").
    max_interval: Option<Duration>,
    /// Up to this fraction is added at random to each delay, 0.0..=1.0 (default 0.2).
    #[schemars(range(min = 0.0, max = 1.0))]
    jitter: Option<f64>,
    /// Exit codes that fail for good at once.
    non_retryable_exit_codes: Option<Vec<u8>>,
    /// Stop retrying once the task run has cost this much.
    max_cost_usd: Option<Usd>,
    /// Model fallback: attempt n gets the n-th model (the last repeats) as `GAFFER_MODEL` and
    /// `{{ model }}`.
    models: Option<Vec<String>>,
    /// Quarantine the task run (`poison`) after this many crashes of gaffer in a row while it
    /// ran, 0..=100 (default 2; 0: never).
    #[schemars(range(min = 0, max = 100))]
    poison_after_crashes: Option<u32>,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Job {
    /// Cron: 5 fields, or 6 with seconds first; `@daily` etc. Only `gaffer serve` fires it.
    schedule: Option<String>,
    /// IANA zone of the schedule, e.g. "Europe/Berlin" (default: the machine's).
    timezone: Option<String>,
    /// Params by name: a default value, or a table (`{ secret = true, env = "API_TOKEN" }`).
    /// Override with `--param name=value`.
    params: Option<BTreeMap<String, Param>>,
    /// Per job run.
    budget_usd: Option<Usd>,
    /// The first unhandled failure cancels the running task runs and starts nothing new.
    fail_fast: Option<bool>,
    /// Free text.
    description: Option<String>,
    /// The job's tasks, by name (letters, digits, `_`, `-`).
    tasks: BTreeMap<String, Task>,
    /// Missed fire times on start: "none", "latest" (default) or "all".
    catchup: Option<Catchup>,
    /// Only missed fire times this recent are caught up (default "1h").
    catchup_window: Option<Duration>,
    /// A fire time while a run is active: "skip" (default), "queue", "cancel_previous", "allow".
    overlap: Option<Overlap>,
    /// At most this many runs of the job at once, 1..=1000.
    #[schemars(range(min = 1, max = 1000))]
    max_active_runs: Option<u32>,
    #[schemars(flatten)]
    hooks: Hooks,
}

#[derive(JsonSchema)]
#[schemars(rename_all = "snake_case")]
enum Catchup {
    None,
    Latest,
    All,
}

#[derive(JsonSchema)]
#[schemars(rename_all = "snake_case")]
enum Overlap {
    Skip,
    Queue,
    CancelPrevious,
    Allow,
}

/// A param's default value, or a table describing it.
#[derive(JsonSchema)]
#[schemars(untagged)]
enum Param {
    Value(Scalar),
    Table(ParamTable),
}

#[derive(JsonSchema)]
#[schemars(untagged)]
enum Scalar {
    Text(String),
    Integer(i64),
    Number(f64),
    Bool(bool),
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct ParamTable {
    /// Used when no value is given (not allowed on a secret: the file is kept in the state dir).
    default: Option<Scalar>,
    /// Never stored, journaled or shown (`***`); a run resumed after a restart needs it again.
    secret: Option<bool>,
    /// An environment variable of the gaffer process to read the value from.
    env: Option<String>,
}

/// A node of a job: one command plus its policies.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Task {
    /// Shell text run by `sh -c` in a new process group. Never templated: use `$VAR`.
    run: Option<String>,
    /// Instead of `run`: argv without a shell; each item is a template.
    args: Option<Vec<String>>,
    /// Text fed to stdin; a template.
    stdin: Option<String>,
    /// Tasks that must succeed first.
    needs: Option<Vec<String>>,
    /// Once ready, wait in state `waiting` for this signal (`gaffer signal RUN NAME`).
    wait_for: Option<String>,
    /// Dead-letter a wait longer than this.
    wait_timeout: Option<Duration>,
    /// Reuse a succeeded run with the same rendered key within `ttl`.
    cache: Option<Cache>,
    /// What the result must look like: an attempt whose output does not conform fails with
    /// reason `invalid_output`.
    expect: Option<Expect>,
    /// Free text.
    description: Option<String>,
    /// Transitions when a task run ends for good, every matching one firing in file order:
    /// `[{ on = "success", when = "outputs.verdict == 'ok'", do = ["ship"] }]`.
    next: Option<Vec<TransitionEntry>>,
    /// On a transition target: run once when "all" or N of its distinct source tasks arrived.
    join: Option<JoinValue>,
    /// At most this many task runs of this task per job run, 1..=10000 (default 10).
    #[schemars(range(min = 1, max = 10000))]
    max_iterations: Option<u32>,
    /// Fan out: a template rendering a JSON array (or lines), a literal array, or a matrix
    /// table of arrays; one task run per item, `{{ item }}` and `{{ item_index }}`.
    for_each: Option<ForEachValue>,
    /// At most this many items of this task run at once.
    #[schemars(range(min = 1))]
    for_each_concurrency: Option<u32>,
    /// Shell text that undoes a succeeded run when the job run fails (saga, reverse order).
    compensate: Option<String>,
    #[schemars(flatten)]
    common: Common,
}

/// One transition of `next`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct TransitionEntry {
    /// How the task run ended for good: "success", "failure" or "always".
    on: TransitionOnValue,
    /// A bare Jinja expression (no `{{ }}`) over `outputs`, `exit_code`, `attempt`, `params`,
    /// `tasks`; absent = true.
    when: Option<String>,
    /// The tasks that get a new task run.
    #[schemars(length(min = 1))]
    r#do: Vec<String>,
}

#[derive(JsonSchema)]
#[schemars(rename_all = "snake_case")]
enum TransitionOnValue {
    Success,
    Failure,
    Always,
}

#[derive(JsonSchema)]
#[schemars(untagged)]
enum JoinValue {
    All(JoinAll),
    Count(JoinCount),
}

/// How many distinct sources must arrive, at least 1.
#[derive(JsonSchema)]
#[schemars(transparent)]
struct JoinCount(#[schemars(range(min = 1))] u32);

#[derive(JsonSchema)]
#[schemars(rename_all = "snake_case")]
enum JoinAll {
    All,
}

#[derive(JsonSchema)]
#[schemars(untagged)]
enum ForEachValue {
    Template(String),
    List(Vec<serde_json::Value>),
    Matrix(BTreeMap<String, Vec<serde_json::Value>>),
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Expect {
    /// The output to check (default `result`, an agent's result).
    output: Option<String>,
    /// A JSON Schema file, relative to the workflow file, the output (as JSON) must conform to.
    json_schema: Option<String>,
    /// A regular expression the output must match, e.g. "^(approve|reject)$".
    matches: Option<String>,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Cache {
    /// A template, e.g. "{{ params.url }}" (secret params are not allowed: keys are stored).
    key: String,
    /// How long a result may be reused, e.g. "24h".
    ttl: Duration,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Price {
    /// Dollars per million input tokens (billed at the full input price).
    input_per_mtok: Usd,
    /// Dollars per million output tokens.
    output_per_mtok: Usd,
    /// Dollars per million input tokens read from the prompt cache (default: the input price;
    /// Anthropic bills 0.1× input).
    cache_read_per_mtok: Option<Usd>,
    /// Dollars per million input tokens written to the prompt cache (default: the input price;
    /// Anthropic bills 1.25× input).
    cache_write_per_mtok: Option<Usd>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use serde_json::Value;

    use super::super::hooks::HOOK_TABLE_KEYS;
    use super::super::params::PARAM_KEYS;
    use super::super::parse::*;

    /// The properties of the object schema `name` (`$defs`/`definitions`, or the root).
    fn properties(schema: &Value, name: &str) -> BTreeSet<String> {
        let object = if name == "root" { schema } else { &schema["definitions"][name] };
        let props = object["properties"].as_object().unwrap_or_else(|| panic!("`{name}` has no properties: {object}"));
        props.keys().cloned().collect()
    }

    fn keys(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|k| k.to_string()).collect()
    }

    /// The parser's key lists against the schema's properties, both ways: a key added to one
    /// and not the other fails here, naming it.
    #[test]
    fn the_schema_knows_every_key_the_parser_accepts_and_no_other() {
        let schema = super::json();
        let table = [
            ("root", TOP_KEYS),
            ("Settings", SETTINGS_KEYS),
            ("Queue", QUEUE_KEYS),
            ("Defaults", DEFAULTS_KEYS),
            ("Job", JOB_KEYS),
            ("Task", TASK_KEYS),
            ("Retry", RETRY_KEYS),
            ("Price", PRICING_KEYS),
            ("Cache", CACHE_KEYS),
            ("ParamTable", PARAM_KEYS),
            ("HookTable", HOOK_TABLE_KEYS),
        ];
        for (name, parser) in table {
            let (schema_keys, parser_keys) = (properties(&schema, name), keys(parser));
            let missing: Vec<&String> = parser_keys.difference(&schema_keys).collect();
            let extra: Vec<&String> = schema_keys.difference(&parser_keys).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "`{name}`: the parser accepts {missing:?} that the schema lacks; the schema has {extra:?} that the parser refuses (src/config/schema.rs)"
            );
        }
        for (name, object) in schema["definitions"].as_object().into_iter().flatten() {
            if object.get("properties").is_some() {
                assert_eq!(
                    object["additionalProperties"], false,
                    "`{name}` must refuse unknown keys, as the parser does"
                );
            }
        }
    }

    fn toml_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("folder")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        files
    }

    /// Every example, every valid fixture and `gaffer init`'s starter validate against it.
    #[test]
    fn every_valid_workflow_validates_against_the_schema() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let validator = jsonschema::validator_for(&super::json()).expect("the schema compiles");
        let mut files = toml_files(&root.join("examples"));
        files.extend(toml_files(&root.join("tests/fixtures/valid")));
        files.push(root.join("assets/starter.toml"));
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read");
            let value: Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let errors: Vec<String> =
                validator.iter_errors(&value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
            assert!(errors.is_empty(), "{} does not validate:\n{}", file.display(), errors.join("\n"));
        }
    }

    /// And the schema is no rubber stamp: a typo, a wrong type and a bad choice are refused.
    #[test]
    fn the_schema_refuses_what_the_parser_refuses() {
        let validator = jsonschema::validator_for(&super::json()).expect("the schema compiles");
        for bad in [
            "[jobs.j.tasks.t]\nrun = \"x\"\nnees = [\"a\"]\n",
            "[jobs.j.tasks.t]\nrun = \"x\"\npriority = 101\n",
            "[jobs.j.tasks.t]\nrun = \"x\"\ncost = \"gemini\"\n",
            "[jobs.j]\noverlap = \"sometimes\"\n[jobs.j.tasks.t]\nrun = \"x\"\n",
            "[jobs.j]\nparams = { token = { secrte = true } }\n[jobs.j.tasks.t]\nrun = \"x\"\n",
            "[settings]\nthreads = 2\n[jobs.j.tasks.t]\nrun = \"x\"\n",
            "[jobs.j.tasks.t]\nrun = \"x\"\nnext = [{ on = \"sometimes\", do = [\"t\"] }]\n",
            "[jobs.j.tasks.t]\nrun = \"x\"\nmax_iterations = 0\n",
            "[jobs.j.tasks.t]\nrun = \"x\"\nrequires = [\"GPU\"]\n",
            "[defaults]\nrequires = [\"\"]\n[jobs.j.tasks.t]\nrun = \"x\"\n",
        ] {
            let value: Value = toml::from_str(bad).expect("toml");
            assert!(!validator.is_valid(&value), "accepted:\n{bad}");
            assert!(crate::config::parse(Path::new("w.toml"), bad).is_err(), "the parser accepts:\n{bad}");
        }
    }
}
