//! The store in PostgreSQL, shared by several gaffer nodes (issue #11, CLUSTER-DESIGN.md).
//!
//! Records are the bytes redb stores (`store::codec`), one row each; the columns beside them are
//! only what queries need (queue, state, sort key, node, attempt…). Schema in versioned
//! migrations (`migrations/*.sql`, embedded), applied at open in one transaction; a database of a
//! newer schema is refused before anything is written.
//!
//! - [`PgStore::commit`]: group commit, as redb's writer thread: every batch that arrives while
//!   the previous transaction commits goes into the next one (`writer.rs`).
//! - [`PgStore::snapshot`]: a REPEATABLE READ transaction, the reads of `store::Reader`
//!   (`snapshot.rs`).
//! - [`PgBackend`]: the same store behind the synchronous `store::Store`/`Snapshot` seam, on a
//!   runtime thread of its own, with ids reserved one block ahead (`seam.rs`).
//! - `queue.rs`: what a cluster needs beyond a store — nodes and their leases, claiming ready
//!   task runs (priority, labels, cluster-wide caps), fenced completion, wake-ups.
//!
//! Every session runs with `plan_cache_mode = force_custom_plan`: a generic plan cached while
//! the queue looked empty walks the whole table for every claim (pg-probe RESULTS.md, trap 1).
//! Only the writer's statements that read no table (`writer::planned_once`: rows from
//! `unnest`, written by primary key) run on a generic plan, switched by `SET LOCAL` in the
//! commit's pipeline (`plan_tests.rs`).

pub mod adopt;
#[cfg(test)]
mod adopt_tests;
mod batch;
#[cfg(test)]
mod cron_tests;
#[cfg(test)]
mod engine_tests;
pub mod events;
pub mod fence;
mod ids;
#[cfg(test)]
mod limits_tests;
mod logs;
pub mod mail;
mod merge;
#[cfg(test)]
mod merge_tests;
mod migrate;
#[cfg(test)]
mod plan_tests;
pub mod queue;
mod seam;
mod snapshot;
#[cfg(test)]
mod stream_tests;
/// The private PostgreSQL the tests start, for the integration tests too (`tests/`).
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::records::TaskRunRecord;
pub use ids::{ID_BLOCK, IdBlocks};
pub use migrate::{MIGRATIONS, SCHEMA_VERSION};
pub use seam::PgBackend;
pub use snapshot::PgSnapshot;
pub use writer::Writer;

/// What went wrong talking to PostgreSQL.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PgError {
    #[error("postgres: {0}")]
    Db(String),
    /// A live node has the name a node registers under (`queue::register_node`).
    #[error("postgres: {0}")]
    NameHeld(String),
    #[error("postgres: the connection string is not valid: {0}")]
    Config(String),
    #[error(
        "postgres: the database has gaffer schema {found}, this gaffer understands up to {SCHEMA_VERSION}: nothing was changed; use the gaffer that wrote it, or a newer one"
    )]
    Schema { found: i32 },
    #[error(
        "postgres: the database is at gaffer schema {found}, this gaffer expects {SCHEMA_VERSION}: start a `gaffer serve --store …` of this version to migrate it (a command that only reads never does)"
    )]
    Pending { found: i32 },
    #[error("postgres: {0}")]
    Codec(String),
    #[error("the store has stopped")]
    Closed,
    /// Another node recorded this fire time of `job`'s schedule first (the batch was not written).
    #[error("postgres: the schedule of job `{job}` was fired by another node")]
    FireTaken { job: String },
    /// Enough runs of `job` run already for its overlap policy (the batch was not written).
    #[error("postgres: job `{job}` has as many active runs as its overlap policy allows")]
    RunLimit { job: String },
    /// A commit for a job run this node does not own (any more) at its epoch: nothing of the
    /// batch was written (`fence.rs`).
    #[error("job run j{job_run}: another node owns it now; this node's commit for it was not written")]
    Fenced { job_run: u64 },
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> PgError {
        // The server's own message (with its detail) says more than "db error".
        match e.as_db_error() {
            Some(db) => PgError::Db(match db.detail() {
                Some(detail) => format!("{} ({detail})", db.message()),
                None => db.message().to_string(),
            }),
            // "error connecting to server" alone does not say why: the cause follows.
            None => PgError::Db(match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }),
        }
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> PgError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => PgError::Db(other.to_string()),
        }
    }
}

impl From<super::StoreError> for PgError {
    fn from(e: super::StoreError) -> PgError {
        PgError::Codec(e.to_string())
    }
}

/// The columns of a task run that only the workflow knows (the store knows records): its
/// queue order under aging and the labels it requires of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueColumns {
    pub sort_key: i64,
    pub requires: Vec<String>,
}

/// Computes [`QueueColumns`] for a task run about to be written.
pub type QueueFacts = Arc<dyn Fn(&TaskRunRecord) -> QueueColumns + Send + Sync>;

/// Without a workflow's facts: its priority is its order (no aging); it requires what its
/// record says.
pub fn plain_queue_facts() -> QueueFacts {
    Arc::new(|r: &TaskRunRecord| queue_columns(r, None))
}

/// A task run's queue columns, its queue aging by `aging` (`model::policy::priority_key`): the
/// one formula of `engine::cluster::queue_facts` and [`plain_queue_facts`].
pub fn queue_columns(r: &TaskRunRecord, aging: Option<Duration>) -> QueueColumns {
    let key = crate::model::policy::priority_key(r.priority, r.queued_at_ms.unwrap_or(0), aging);
    QueueColumns { sort_key: sort_key(key), requires: r.requires.clone() }
}

/// `model::policy::priority_key` as a column: clamped into a bigint (only an aging of
/// millions of years overflows it).
pub fn sort_key(priority_key: i128) -> i64 {
    priority_key.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// How to open a [`PgStore`].
#[derive(Clone)]
pub struct PgOptions {
    /// Connections in the pool (the writer, the claimer and snapshots share them).
    pub pool_size: usize,
    pub queue_facts: QueueFacts,
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions { pool_size: 8, queue_facts: plain_queue_facts() }
    }
}

/// The PostgreSQL store of one node. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The Dispatcher's claims, on sessions of their own ([`CLAIM_SESSION`]).
    claims: Pool,
    writer: Writer,
    pub ids: Arc<IdBlocks>,
    /// The node this store commits for and the job runs it owns (none: nothing is fenced).
    pub ownership: Arc<fence::Ownership>,
}

impl PgStore {
    /// Connects, applies the migrations this database lacks (or refuses a newer schema before
    /// writing anything), and starts the group-commit task. Must be called in a tokio runtime.
    pub async fn open(url: &str, options: PgOptions) -> Result<PgStore, PgError> {
        let pool = connect(url, options.pool_size)?;
        let mut client = pool.get().await?;
        migrate::migrate(&mut client).await?;
        drop(client);
        let ownership = Arc::new(fence::Ownership::default());
        let writer = Writer::start(pool.clone(), options.queue_facts.clone(), ownership.clone());
        let claims = connect_as(url, 2, CLAIM_SESSION)?;
        Ok(PgStore { ids: Arc::new(IdBlocks::new(pool.clone())), pool, claims, writer, ownership })
    }

    /// Resolves once `batch` is committed (or failed, with the reason), in one transaction with
    /// whatever other batches arrived meanwhile.
    pub async fn commit(&self, batch: Vec<super::Mutation>) -> Result<(), PgError> {
        self.writer.commit(batch).await
    }

    /// A consistent snapshot of everything committed so far.
    pub async fn snapshot(&self) -> Result<PgSnapshot, PgError> {
        PgSnapshot::begin(self.pool.get().await?).await
    }

    /// The pool, for the queue's long-lived helpers (`queue::Completer`, `queue::Heartbeat`).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The pool of the node's claims (`queue::claim_within`): sessions whose plans are made
    /// once and never walk a table ([`CLAIM_SESSION`]).
    pub fn claim_pool(&self) -> &Pool {
        &self.claims
    }

    /// A connection of the pool (queue primitives take one).
    pub async fn connection(&self) -> Result<deadpool_postgres::Client, PgError> {
        Ok(self.pool.get().await?)
    }

    /// Transactions the writer committed so far (for tests and benchmarks: batches per commit).
    pub fn commit_count(&self) -> u64 {
        self.writer.commit_count()
    }
}

/// A pool over `url` (a libpq connection string or a `postgres://` URL); every session plans
/// each statement for its parameters (`force_custom_plan`).
pub fn connect(url: &str, size: usize) -> Result<Pool, PgError> {
    connect_as(url, size, "")
}

/// The session settings of the claiming connections, after [`config`]'s: a claim's statements
/// (`queue::claim_within`) are planned once per session (a custom plan of the claim was ~0.1–0.3
/// ms of planning on the enqueue → start path, against ~0.05 ms of execution), and their plans
/// walk the indexes whatever the statistics said when they were made: with sequential scans
/// and sorts priced out, the generic plan of the claim made while `task_runs` looked empty is
/// the walk of `task_runs_ready` in order, not a scan and a sort (pg-probe RESULTS.md, trap 1;
/// `plan_tests::a_claim_planned_while_the_queue_was_empty_walks_its_index`). Every table a
/// claim reads has the index it needs (`task_runs_ready`, `task_runs_running`, the primary keys,
/// `queue_marks_by_queue`).
pub const CLAIM_SESSION: &str = "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off -c enable_sort=off";

/// [`connect`] with `session` settings after [`config`]'s (a later `-c` wins).
pub fn connect_as(url: &str, size: usize, session: &str) -> Result<Pool, PgError> {
    let mut config = config(url)?;
    if !session.is_empty() {
        let options = format!("{} {session}", config.get_options().unwrap_or_default());
        config.options(options.trim());
    }
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(size.max(2))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| PgError::Config(e.to_string()))
}

/// How long the server lets a gaffer session sit in an open transaction waiting for the node
/// (`idle_in_transaction_session_timeout`). A node paused (SIGSTOP) or cut off in the middle of a
/// commit would otherwise hold its job runs' row locks for as long as its connection looks
/// alive, and adopters skip locked rows (`SKIP LOCKED`): its job runs would never be adopted.
/// Under the shortest lease, so the locks are gone before anyone may adopt; gaffer's own
/// transactions wait on the node for milliseconds. A session ended so is a lost connection to
/// the node: the transaction rolls back and the writer tries the batch again.
pub const IDLE_IN_TRANSACTION_MS: u64 = crate::model::lease::MIN_LEASE_MS * 2 / 3;

/// The session settings of every gaffer connection added to `url`'s.
pub fn config(url: &str) -> Result<tokio_postgres::Config, PgError> {
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|e: tokio_postgres::Error| PgError::Config(e.to_string()))?;
    let options = format!(
        "{} -c plan_cache_mode=force_custom_plan -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}",
        config.get_options().unwrap_or_default()
    );
    config.options(options.trim());
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    Ok(config)
}
