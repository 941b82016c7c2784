//! The `gaffer` command line: clap definitions and one file per group of subcommands.
//! Commands that read state open the state dir read-only, so they work while an instance runs.

/// `println!` for command output: a reader that went away (`gaffer tasks | head -1`) ends
/// the command quietly with 141, as SIGPIPE would, instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::cli::output_failed(e);
        }
    }};
}

mod control;
mod doctor;
mod init;
mod pricing;
mod query;
mod run;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::engine::Action;
use crate::model::rerun::DefinitionChoice;
use crate::report::CostBy;
use crate::store::StoreLocation;

/// Exit codes (SPEC §8).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const STATE_DIR: i32 = 3;
    /// An internal fault restarting could not fix (the store cannot commit, an actor keeps dying).
    pub const INTERNAL: i32 = 70;
    pub const SIGINT: i32 = 130;
    pub const SIGTERM: i32 = 143;
    /// The reader of our output went away (`gaffer tasks | head`), as a SIGPIPE death reports it.
    pub const BROKEN_PIPE: i32 = 141;
}

#[derive(Debug, Parser)]
#[command(name = "gaffer", version, about = "A durable job orchestrator for shell and AI-agent tasks", long_about = None)]
pub struct Cli {
    /// Where state lives (default: $GAFFER_STATE_DIR, else ./.gaffer).
    #[arg(long, global = true, env = "GAFFER_STATE_DIR", default_value = ".gaffer")]
    pub state_dir: PathBuf,
    /// The store: a postgres://USER@HOST/DB URL (PostgreSQL, shared by several nodes); none for
    /// the state dir's own (default: $GAFFER_STORE). The state dir stays this node's either way.
    #[arg(long, global = true, env = "GAFFER_STORE", hide_env_values = true, value_name = "URL")]
    pub store: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run jobs of a workflow file to completion (resuming unfinished runs first).
    Run(run::RunArgs),
    /// Run as a service: fire cron schedules, resume unfinished runs, until SIGINT/SIGTERM.
    Serve(run::ServeArgs),
    /// Attach the terminal UI to the running instance (`q` detaches; the instance keeps running);
    /// with none running, show the state dir read-only.
    Tui,
    /// Check a workflow file; report every problem as FILE:LINE:COL.
    Validate { file: PathBuf },
    /// Write a commented starter workflow (never over an existing file).
    Init {
        #[arg(default_value = "gaffer.toml")]
        file: PathBuf,
    },
    /// Print the workflow file's JSON Schema (for taplo / VS Code: `#:schema ./gaffer.schema.json`).
    Schema,
    /// Preview the next fire times of every scheduled job, in its zone and in UTC.
    Schedules {
        file: PathBuf,
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// Start after this time (RFC 3339, e.g. 2026-03-28T12:00:00Z; default: now).
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Queues, counts per state and total cost.
    Status {
        /// JSON (SPEC §4.1) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Job runs, with their params (secrets as ***).
    Jobs {
        /// Only job runs in this state: running, succeeded, failed, cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Only runs of this job (its name in the workflow file).
        #[arg(long)]
        job: Option<String>,
        /// Only the newest N, newest first.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// JSON (SPEC §4.1) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Task runs.
    Tasks {
        /// Only task runs in this state: pending, queued, running, retrying, waiting, succeeded,
        /// failed, dead, cancelled, skipped.
        #[arg(long)]
        state: Option<String>,
        /// Only task runs of this job (its name in the workflow file, not a run id).
        #[arg(long)]
        job: Option<String>,
        /// Only task runs in this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only task runs of this job run (j7).
        #[arg(long)]
        run: Option<String>,
        /// Only task runs of this task; with --run, its iterations, items and compensations in order.
        #[arg(long)]
        task: Option<String>,
        /// JSON (SPEC §4.1) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One task run (42) or job run (j7) with its attempts.
    Show {
        /// A task run id (42) or a job run id (j7).
        id: String,
        /// JSON (SPEC §4.1) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The log of a task run's attempt (default: the latest), or of every task of a job run.
    Logs {
        /// A task run id (42), or a job run id (j7): each task run's latest attempt, under a header.
        id: String,
        /// Which attempt (1, 2, …; default: the latest).
        #[arg(long)]
        attempt: Option<u32>,
        /// Keep printing as the log grows, until the task run ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Start a run of JOB on the running instance (`gaffer serve`); prints its job run id.
    Submit {
        /// The job's name in the workflow file the instance serves.
        job: String,
        /// Set a job param: --param topic=go (repeatable; a secret one is held in memory only).
        #[arg(long = "param", value_name = "K=V")]
        params: Vec<String>,
        /// Priority for every task of this run (0..=100).
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        priority: Option<u8>,
        /// Idempotency key: a repeat with the same key gets the same job run back.
        #[arg(long)]
        key: Option<String>,
    },
    /// Pause a queue: nothing new starts from it (running work finishes). Survives restarts.
    Pause { queue: String },
    /// Resume a paused queue.
    Resume { queue: String },
    /// Retry dead or cancelled task runs (42) or every one in a job run (j7).
    Retry {
        /// Task run ids (42) and job run ids (j7).
        #[arg(required = true)]
        ids: Vec<String>,
        /// Re-run a finished job run (j7) from this task: it and everything downstream of it.
        #[arg(long, value_name = "TASK")]
        from: Option<String>,
        /// When the job run's definition differs from the workflow file in use: `current`
        /// switches the run to the file (recorded), `stored` runs it as it started.
        #[arg(long, value_name = "stored|current", value_parser = DefinitionChoice::parse)]
        definition: Option<DefinitionChoice>,
        /// Raise the spent budgets in the retry's way (the job run's, the task run's) to this
        /// many dollars for that run; without it such a retry is refused.
        #[arg(long, value_name = "USD", value_parser = parse_budget)]
        budget: Option<u64>,
    },
    /// Cancel task runs (42) or job runs (j7).
    Cancel {
        /// Task run ids (42) and job run ids (j7).
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Release task runs waiting for NAME (`wait_for`) in job run RUN_ID (j7), or one task run (42).
    Signal {
        /// The job run (j7), or one task run (42).
        run_id: String,
        /// The name the tasks wait for (their `wait_for`).
        name: String,
    },
    /// The dead-letter queue.
    Dlq {
        #[command(subcommand)]
        action: Option<DlqAction>,
    },
    /// Spending, grouped.
    Cost {
        #[arg(long, value_enum, default_value_t = CostBy::Job)]
        by: CostBy,
        /// Only what ran within this long ago (`24h`, `7d`).
        #[arg(long)]
        since: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check the state dir: who may use it, every page and record of the store, the event
    /// journal; say what is wrong and how to fix it (exit 3 if anything is).
    Doctor,
    /// The token prices in force: built-in, imported (`pricing import`), and FILE's `[pricing]`.
    #[command(args_conflicts_with_subcommands = true)]
    Pricing {
        #[command(subcommand)]
        action: Option<PricingAction>,
        /// A workflow file whose `[pricing."model"]` tables apply on top.
        file: Option<PathBuf>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write a control message to fd 3 from a task: heartbeat | progress TEXT | cost K=V... | output K=V.
    Emit {
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<String>,
    },
    /// Shell completions.
    Completions { shell: clap_complete::Shell },
    /// The man page, in roff.
    Man,
}

#[derive(Debug, Subcommand)]
pub enum PricingAction {
    /// Refresh the prices from LiteLLM's `model_prices_and_context_window.json` (kept in
    /// STATE_DIR/pricing.toml, overriding the built-in table).
    Import { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Dead task runs (the default).
    List {
        /// JSON (as `tasks --json`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Give dead task runs a fresh series of attempts.
    Retry {
        /// Dead task run ids (42).
        ids: Vec<String>,
        /// Every dead task run.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// As for `gaffer retry`: `current` or `stored`, when the file changed since the run started.
        #[arg(long, value_name = "stored|current", value_parser = DefinitionChoice::parse)]
        definition: Option<DefinitionChoice>,
    },
    /// Cancel dead task runs for good.
    Purge {
        /// Dead task run ids (42).
        ids: Vec<String>,
        /// Every dead task run.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// `--budget USD`: dollars, above zero, into micro-dollars.
fn parse_budget(text: &str) -> Result<u64, String> {
    match crate::model::money::parse_usd_micros(text)? {
        0 => Err("a budget must be above $0".into()),
        micros => Ok(micros),
    }
}

/// Parses the arguments, runs the command, returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return code;
        }
    };
    if !matches!(cli.command, Command::Run(_) | Command::Serve(_) | Command::Tui) {
        init_diagnostics(None);
    }
    let state_dir = cli.state_dir.clone();
    if let Err(e) = check_state_dir(&cli.command, &state_dir) {
        eprintln!("gaffer: {e}");
        return exit::STATE_DIR;
    }
    let at = match StoreLocation::choose(cli.store.as_deref(), &state_dir) {
        Ok(store) => Place { state_dir: state_dir.clone(), store },
        Err(e) => {
            eprintln!("gaffer: {e}");
            return exit::USAGE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => return run::run(args, &at),
        Command::Serve(args) => return run::serve(args, &at),
        Command::Tui => return run::attach(&at),
        Command::Doctor => return doctor::doctor(&at),
        Command::Validate { file } => return run::validate(&file),
        Command::Init { file } => init::init(&file),
        Command::Schema => init::schema(),
        Command::Schedules { file, count, from, json } => return run::schedules(&file, count, from.as_deref(), json),
        Command::Status { json } => query::status(&at, json),
        Command::Jobs { state, job, limit, json } => {
            query::jobs(&at, crate::report::JobFilter { state, job, limit }, json)
        }
        Command::Tasks { state, job, queue, run, task, json } => {
            query::tasks(&at, crate::report::TaskFilter { state, job, queue, run, task, ..Default::default() }, json)
        }
        Command::Show { id, json } => query::show(&at, &id, json),
        Command::Logs { id, attempt, follow } => query::logs(&at, &id, attempt, follow),
        Command::Submit { job, params, priority, key } => control::submit(&at, &job, &params, priority, key.as_deref()),
        Command::Pause { queue } => control::set_paused(&at, &queue, true),
        Command::Resume { queue } => control::set_paused(&at, &queue, false),
        Command::Retry { ids, from, definition, budget } => {
            let options = crate::engine::RetryOptions { from, definition, budget_usd_micros: budget };
            control::retry(&at, &ids, options)
        }
        Command::Cancel { ids } => control::send(&at, &Action::Cancel, &ids),
        Command::Signal { run_id, name } => control::signal(&at, &run_id, &name),
        Command::Dlq { action } => control::dlq(&at, action.unwrap_or(DlqAction::List { json: false })),
        Command::Cost { by, since, json } => query::cost(&at, by, since.as_deref(), json),
        Command::Pricing { action: Some(PricingAction::Import { file }), .. } => pricing::import(&state_dir, &file),
        Command::Pricing { action: None, file, json } => pricing::show(&state_dir, file.as_deref(), json),
        Command::Emit { words } => crate::executor::emit(&words).map_err(CliError::Usage),
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "gaffer", &mut text);
            write_out(&text)
        }
        Command::Man => {
            let mut text = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut text) {
                Ok(()) => write_out(&text),
                Err(e) => Err(CliError::Failed(e.to_string())),
            }
        }
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("gaffer: {e}");
            e.code()
        }
    }
}

/// Where a command works: this node's state dir (its control socket, inbox, logs, token) and
/// the store (`--store` / `GAFFER_STORE`; the state dir's own when none is given).
pub(crate) struct Place {
    pub state_dir: PathBuf,
    pub store: StoreLocation,
}

impl Place {
    /// How messages name where the state is: the state dir, or the database (no password).
    fn shown(&self) -> String {
        match &self.store {
            StoreLocation::StateDir(_) => self.state_dir.display().to_string(),
            database => database.to_string(),
        }
    }
}

/// A command that reads the state dir or talks to the socket in it refuses one that is not
/// safe (`state_dir`), before doing either: whoever could write in it could answer for gaffer.
/// `run` and `serve` check as they open the store; `doctor` reports instead of refusing.
fn check_state_dir(command: &Command, state_dir: &std::path::Path) -> Result<(), crate::state_dir::StateDirError> {
    use Command::*;
    if matches!(
        command,
        Run(_) | Serve(_) | Validate { .. } | Schedules { .. } | Doctor | Emit { .. } | Completions { .. } | Man
    ) {
        return Ok(());
    }
    match crate::state_dir::StateDir::open_checked(state_dir) {
        Ok(_) | Err(crate::state_dir::StateDirError::Missing(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes command output; see `outln!`.
fn write_out(bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut out = std::io::stdout();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        output_failed(e);
    }
    Ok(())
}

/// Command output could not be written: a closed pipe ends quietly (141, as SIGPIPE would);
/// anything else is said.
pub(crate) fn output_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(exit::BROKEN_PIPE);
    }
    eprintln!("gaffer: cannot write the output: {e}");
    std::process::exit(exit::FAILED)
}

/// gaffer's own diagnostics (not task output, not events), `warn` and up unless `RUST_LOG`
/// says otherwise: to stderr, or to a file while the TUI owns the terminal (nothing may print
/// over it).
pub(crate) fn init_diagnostics(to_file: Option<&std::path::Path>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let file =
        to_file.and_then(|path| crate::state_dir::open_in_state_dir(path, crate::state_dir::Access::Append).ok());
    let _ = match file {
        Some(file) => builder.with_ansi(false).with_writer(std::sync::Mutex::new(file)).try_init(),
        None => builder.with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).try_init(),
    };
}

/// A command that could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl CliError {
    fn code(&self) -> i32 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Failed(_) => exit::FAILED,
            CliError::Store(crate::store::StoreError::InUse { .. }) => exit::STATE_DIR,
            CliError::Store(_) => exit::STATE_DIR,
        }
    }
}
