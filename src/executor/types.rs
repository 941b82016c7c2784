//! What an executor is asked to run and what it reports back. Nothing outside `executor/` knows
//! how a process is started; a remote executor later speaks these same types.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{CommandSpec, CostSource};

/// One attempt, fully rendered: templates are already expanded.
#[derive(Debug, Clone)]
pub struct AttemptSpec {
    pub job: String,
    pub task: String,
    pub job_run: u64,
    pub task_run: u64,
    pub attempt: u32,
    pub command: CommandSpec,
    /// Added on top of the parent's environment, before the `GAFFER_*` variables.
    pub env: Vec<(String, String)>,
    pub stdin: Option<String>,
    pub cwd: PathBuf,
    pub state_dir: PathBuf,
    /// `logs/<job_run>/<task_run>.<attempt>.log`, parent folder created by the executor.
    pub log_path: PathBuf,
    /// Head and tail are kept past this many bytes, with a marker between.
    pub log_cap_bytes: u64,
    pub cost_source: CostSource,
}

/// Token and dollar usage reported by a task. Every field is optional on the wire; token
/// counts are at most `model::cost::MAX_TOKENS` each (larger ones are refused with a warning).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CostReport {
    pub usd_micros: Option<u64>,
    /// Input billed at the full input price (not read from or written to a prompt cache).
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub model: Option<String>,
}

#[cfg(test)]
impl CostReport {
    /// For tables of cases: `tokens` are [input, output, cache read, cache write], 0 for
    /// "not reported".
    pub fn of(model: Option<&str>, usd: Option<u64>, tokens: [u64; 4]) -> CostReport {
        let some = |n: u64| (n > 0).then_some(n);
        CostReport {
            usd_micros: usd,
            input_tokens: some(tokens[0]),
            output_tokens: some(tokens[1]),
            cache_read_tokens: some(tokens[2]),
            cache_write_tokens: some(tokens[3]),
            model: model.map(str::to_string),
        }
    }
}

/// Streamed while the attempt runs, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptEvent {
    /// A stdout/stderr line was seen (already written to the log); resets the inactivity watchdog.
    Activity,
    /// `heartbeat` on fd 3.
    Heartbeat,
    /// `progress TEXT` on fd 3 (sanitized).
    Progress(String),
    /// `cost …` on fd 3, or the agent's JSON result for `claude-json` / `openai-json` (one per
    /// model it names).
    Cost(CostReport),
    /// `output key=value` or a `key<<EOF` block on fd 3 (value sanitized).
    Output { key: String, value: String },
    /// A malformed fd-3 line, or an agent result gaffer could not read (no usage found…);
    /// also written to the attempt's log as a warning.
    Warning(String),
    /// The agent's result says it failed (`is_error: true`, an API error) even if the process
    /// exits 0: the attempt fails with reason `agent_error` and this detail.
    AgentError(String),
}

/// How the process group's leader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptExit {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

impl AttemptExit {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Identifies a live process group, enough to kill it later, even from another gaffer process
/// after a crash (`start_ticks` guards against pid reuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessHandle {
    pub pid: u32,
    pub pgid: i32,
    /// `starttime` from `/proc/<pid>/stat` (clock ticks since boot), 0 if unknown.
    pub start_ticks: u64,
}

/// How long a group gets between SIGTERM and SIGKILL (SPEC §7).
pub const KILL_GRACE: Duration = Duration::from_secs(5);
