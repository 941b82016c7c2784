//! A node of a gaffer cluster (issue #11, docs/cluster-design.md, "The cluster engine"): an
//! engine whose store is PostgreSQL, registered in `nodes` with a lease it renews, whose
//! Dispatcher claims ready task runs of every node's job runs from the database.
//!
//! The node that creates a job run owns it and makes all of its decisions; any node's workers
//! may run its attempts. A worker that claimed an attempt of a job run owned elsewhere starts
//! the spec the owner rendered when it queued the task run, and talks to the owner by mail
//! (`store::pg::mail`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use serde::{Deserialize, Serialize};

use super::EngineError;
use super::dispatcher::{ClaimNow, Dispatcher};
use super::journal::{Echo, Journal};
use super::supervisor::{Delivered, Supervisor};
use super::watchdog::WatchList;
use super::worker::Kill;
use crate::config::{CommandSpec, CostSource, OutputLimits};
use crate::executor::AttemptSpec;
use crate::model::lease::{DEFAULT_LEASE_MS, check_lease_ms};
use crate::store::codec;
use crate::store::pg::mail::{self, MAIL_CHANNEL, Mail, Mailer, Received};
use crate::store::pg::queue::{self, Completer, Heartbeat, Node, Waker, Woken};
use crate::store::pg::{PgBackend, PgError};
use crate::store::records::AttemptRecord;

/// How often a node looks for work and mail when no notification came (a lost one, a
/// listener reconnecting).
pub const POLL: Duration = Duration::from_millis(250);

/// How an engine runs as a cluster node (`EngineConfig::cluster`).
#[derive(Clone)]
pub struct ClusterConfig {
    pub backend: Arc<PgBackend>,
    /// How long the node's lease lasts without a renewal (renewed every third of it).
    pub lease: Duration,
    /// Unique among live nodes (`--node` / `GAFFER_NODE`, default `<hostname>-<pid>`).
    pub node_name: String,
    /// The node's labels as `nodes.labels` records them and claims match them (`requires <@
    /// labels`); give the same as `EngineConfig::labels`.
    pub labels: Vec<String>,
    /// How long the records of an attempt claimed here for a job run owned here (the task
    /// run's `running`, the attempt's start) wait for the attempt's end before they are written
    /// alone: the claim's commit stands for them meanwhile (`JobRun::commit_claim`).
    pub start_write_delay: Duration,
    /// How often the node claims when no `NOTIFY gaffer_queue` came ([`POLL`]).
    pub claim_poll: Duration,
    /// A new job run's task runs may start with its commit on this node where nothing of their
    /// queue can be ahead of them (`model::start_at_submit`); `false`: always queued, then
    /// claimed (the bench's `NOTIFY` path).
    pub start_at_submit: bool,
}

/// [`ClusterConfig::start_write_delay`] by default: as long as a running attempt's pid waits.
pub const START_WRITE_DELAY: Duration = Duration::from_secs(1);

impl ClusterConfig {
    /// A node of the default name and lease, without labels.
    pub fn new(backend: Arc<PgBackend>) -> ClusterConfig {
        ClusterConfig {
            backend,
            lease: Duration::from_millis(DEFAULT_LEASE_MS),
            node_name: default_node_name(),
            labels: Vec::new(),
            start_write_delay: START_WRITE_DELAY,
            claim_poll: POLL,
            start_at_submit: true,
        }
    }
}

/// `<hostname>-<pid>`: unique on a machine, readable in `status`.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    format!("{}-{}", if host.is_empty() { "gaffer" } else { host }, std::process::id())
}

/// This engine's node: its row in `nodes` (whose id fences its claims and completions) and the
/// heartbeat that renews its lease.
pub struct ClusterNode {
    pub backend: Arc<PgBackend>,
    /// The node as it first joined; after a rejoin (its lease ran out) [`ClusterNode::current`].
    pub node: Node,
    heartbeat: Heartbeat,
    /// The node and heartbeat of the latest rejoin, if the node rejoined (`supervisor/adopt.rs`).
    rejoined: Mutex<Option<(Node, Heartbeat)>>,
    /// The current id (the first, or the latest rejoin's), as the mail reader reads it.
    current_id: Arc<AtomicI64>,
    /// Outcomes of attempts of job runs owned elsewhere, fenced (`queue::complete`) as the
    /// current node: a rejoin starts a new one.
    completer: Mutex<Completer>,
    /// Letters to owners and to the nodes running this node's attempts.
    pub mailer: Mailer,
    /// The claim wake-ups and the mail reader, stopped when the node leaves.
    pumps: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Commands relayed to other nodes' job runs, waiting for their answers.
    pub relays: Arc<relay::Relays>,
    /// This node's state dir, where it notes the node it joined as ([`NODE_FILE`]).
    state_dir: PathBuf,
    /// [`ClusterConfig::start_write_delay`].
    pub start_write_delay: Duration,
    /// [`ClusterConfig::claim_poll`].
    claim_poll: Duration,
    /// [`ClusterConfig::start_at_submit`].
    pub start_at_submit: bool,
}

impl ClusterNode {
    /// Registers the node and starts its heartbeat. Blocks (a round trip to the database).
    /// `state_dir`: this node's, which it holds locked (see [`register`]).
    pub fn join(config: &ClusterConfig, state_dir: &Path) -> Result<ClusterNode, EngineError> {
        check_lease_ms(config.lease.as_millis() as u64).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let backend = config.backend.clone();
        let state_dir = state_dir.to_path_buf();
        let (node, heartbeat) = register(&backend, &config.node_name, &config.labels, config.lease, &state_dir)?;
        let (pool, beating) = (backend.store().pool().clone(), node.clone());
        // Started on the store's runtime, where their tasks run.
        let (completer, mailer) =
            backend.run(async move { Ok((Completer::start(pool.clone(), beating), Mailer::start(pool))) })?;
        let rejoined = Mutex::default();
        let current_id = Arc::new(AtomicI64::new(node.id));
        let completer = Mutex::new(completer);
        let (pumps, relays) = (Mutex::default(), Arc::default());
        let (start_write_delay, claim_poll, start_at_submit) =
            (config.start_write_delay, config.claim_poll, config.start_at_submit);
        Ok(ClusterNode {
            backend,
            node,
            heartbeat,
            rejoined,
            current_id,
            completer,
            mailer,
            pumps,
            relays,
            state_dir,
            start_write_delay,
            claim_poll,
            start_at_submit,
        })
    }

    /// This node's row now: the first one, or the latest rejoin's.
    pub fn current(&self) -> Node {
        let rejoined = self.rejoined.lock().unwrap_or_else(|e| e.into_inner());
        rejoined.as_ref().map(|(node, _)| node.clone()).unwrap_or_else(|| self.node.clone())
    }

    /// After the lease ran out (`model::lease::ExpiredDuties::rejoin`): the node joins again
    /// under a new id with a new lease; the old id stays dead, and nothing it owned is owned.
    /// Blocks (a round trip to the database).
    pub fn rejoin(&self) -> Result<Node, EngineError> {
        let old = self.current();
        let (node, heartbeat) = register(&self.backend, &old.name, &old.labels, old.lease, &self.state_dir)?;
        let (pool, completing) = (self.backend.store().pool().clone(), node.clone());
        let completer = self.backend.run(async move { Ok(Completer::start(pool, completing)) })?;
        *self.completer.lock().unwrap_or_else(|e| e.into_inner()) = completer;
        *self.rejoined.lock().unwrap_or_else(|e| e.into_inner()) = Some((node.clone(), heartbeat));
        self.current_id.store(node.id, Ordering::Relaxed);
        Ok(node)
    }

    /// Starts what feeds the engine: claim wake-ups (a `NOTIFY gaffer_queue` or the poll) to
    /// the Dispatcher, and this node's mail — kills to its workers, the rest to the Supervisor,
    /// which hands each letter to the JobRun actor of its job run.
    pub(super) fn start_pumps(
        &self,
        dispatcher: Addr<Dispatcher>,
        supervisor: Addr<Supervisor>,
        workers: WatchList,
        journal: Addr<Journal>,
    ) {
        let url = self.backend.url().to_string();
        let wakes = self.backend.spawn(wake_dispatcher(url.clone(), dispatcher, self.claim_poll));
        let pool = self.backend.store().pool().clone();
        let reader =
            MailReader { current_id: self.current_id.clone(), supervisor, workers, relays: self.relays.clone() };
        let mail = self.backend.spawn(read_mail(url, pool.clone(), reader));
        let events = self.backend.spawn(follow_events(pool, self.backend.event_log().clone(), journal));
        if let Ok(mut pumps) = self.pumps.lock() {
            pumps.extend([wakes, mail, events]);
        }
    }

    fn stop_pumps(&self) {
        if let Ok(mut pumps) = self.pumps.lock() {
            pumps.drain(..).for_each(|p| p.abort());
        }
    }

    /// The completer of the current node id (`queue::complete`).
    pub fn completer(&self) -> Completer {
        self.completer.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn id(&self) -> i64 {
        self.current().id
    }

    /// The lease ran out before a renewal reached the database, or by this node's own count
    /// (`model::lease::own_lease`): the node is dead to the others.
    pub fn lease_lost(&self) -> bool {
        let rejoined = self.rejoined.lock().unwrap_or_else(|e| e.into_inner());
        rejoined.as_ref().map_or(&self.heartbeat, |(_, beat)| beat).is_lost()
    }

    /// A graceful stop: the lease ends now, so the others know at once.
    pub async fn leave(&self) {
        self.stop_pumps();
        let (pool, node) = (self.backend.store().pool().clone(), self.current());
        let left = self.backend.spawn(async move {
            let c = pool.get().await?;
            queue::stop_node(&c, &node).await
        });
        match left.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cluster: node {} could not say it stopped: {e}", self.node.name),
            Err(e) => tracing::warn!("cluster: node {} could not say it stopped: {e}", self.node.name),
        }
    }
}

/// In a node's state dir: `<node id> <database>` of the node its process last joined as (the
/// database as a hash of the store's URL), so that the next process on that state dir — which
/// holds the state dir's lock, so the one that wrote it is gone — knows that node is dead.
const NODE_FILE: &str = "cluster-node";

/// The node a previous process on `state_dir` joined `url`'s database as, if it said so.
fn previous_node(state_dir: &Path, url: &str) -> Option<i64> {
    let mut text = String::new();
    let mut file =
        crate::state_dir::open_in_state_dir(&state_dir.join(NODE_FILE), crate::state_dir::Access::Read).ok()?;
    std::io::Read::read_to_string(&mut file, &mut text).ok()?;
    let (id, db) = text.trim().split_once(' ')?;
    (db == format!("{:016x}", url_hash(url))).then(|| id.parse().ok()).flatten()
}

fn url_hash(url: &str) -> u64 {
    url.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// Registers a node, makes the store commit for it, and starts its heartbeat, whose own count
/// of the lease starts when the registration was sent.
///
/// A node started again on the state dir of one that was killed (kill -9, the OOM killer;
/// systemd restarts it 2 s later under the same `--node` name) ends that node's lease first,
/// instead of being refused its name until the lease runs out: the state dir's lock, which
/// this process holds, says the process that joined as that node is gone. A name held by a
/// node that is not this state dir's previous one is waited for, up to a lease and a second
/// (a node restarted with a fresh state dir: its old lease runs out meanwhile); a holder that
/// still renews after that is refused as before.
fn register(
    backend: &Arc<PgBackend>,
    name: &str,
    labels: &[String],
    lease: Duration,
    state_dir: &Path,
) -> Result<(Node, Heartbeat), EngineError> {
    let pool = backend.store().pool().clone();
    let (name, labels) = (name.to_string(), labels.to_vec());
    let previous = previous_node(state_dir, backend.url());
    let sent = std::time::Instant::now();
    let node = backend.run(async move {
        let mut c = pool.get().await?;
        if let Some(id) = previous
            && queue::end_lease_of_gone(&c, id, &name).await?
        {
            tracing::warn!(
                "cluster: node {name} (id {id}), this state dir's previous process, is gone: its lease ended now, \
                 its job runs are adopted and its running attempts retried"
            );
        }
        let deadline = tokio::time::Instant::now() + lease + Duration::from_secs(1);
        let mut said = false;
        loop {
            match queue::register_node(&mut c, &name, &labels, lease).await {
                Err(PgError::NameHeld(why)) if tokio::time::Instant::now() < deadline => {
                    if !said {
                        tracing::warn!("cluster: {why}; waiting up to {lease:?} for its lease to run out");
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => break other,
            }
        }
    })?;
    let noted = format!("{} {:016x}\n", node.id, url_hash(backend.url()));
    // 0600 whatever the umask, and never through a link planted in the state dir.
    let written = crate::state_dir::open_in_state_dir(&state_dir.join(NODE_FILE), crate::state_dir::Access::Replace)
        .and_then(|mut file| std::io::Write::write_all(&mut file, noted.as_bytes()));
    if let Err(e) = written {
        tracing::warn!("cluster: cannot note the node it joined as in {}: {e}", state_dir.display());
    }
    backend.set_owner_node(Some(node.id));
    let (pool, beating) = (backend.store().pool().clone(), node.clone());
    // Started on the store's runtime, where its renewals run.
    let heartbeat = backend.run(async move { Ok(Heartbeat::start_from(pool, beating, sent)) })?;
    tracing::info!("cluster: joined as node {} (id {})", node.name, node.id);
    Ok((node, heartbeat))
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.stop_pumps();
    }
}

/// Wakes the Dispatcher to claim when task runs became ready (or every `poll`), until it is gone.
async fn wake_dispatcher(url: String, dispatcher: Addr<Dispatcher>, poll: Duration) {
    let mut waker = listen(&url, queue::QUEUE_CHANNEL).await;
    while dispatcher.connected() {
        let queues = match wait(&mut waker, poll).await {
            Woken::Queues(queues) => Some(queues.into_iter().collect()),
            Woken::Poll => None,
        };
        dispatcher.do_send(ClaimNow(queues));
    }
}

async fn listen(url: &str, channel: &'static str) -> Option<Waker> {
    match Waker::listen_on(url, channel).await {
        Ok(waker) => Some(waker),
        Err(e) => {
            tracing::warn!("cluster: cannot listen on {channel} ({e}); polling every {POLL:?}");
            None
        }
    }
}

async fn wait(waker: &mut Option<Waker>, poll: Duration) -> Woken {
    match waker {
        Some(waker) => waker.wait(poll).await,
        None => {
            tokio::time::sleep(poll).await;
            Woken::Poll
        }
    }
}

/// The other nodes' events, from the cluster's stream (`store::pg::events`) as they commit,
/// to this node's subscribers (its TUI, `--json`, SSE), so each shows the whole cluster; read
/// every [`POLL`] from the end of the stream at start, until the Journal is gone.
async fn follow_events(pool: deadpool_postgres::Pool, log: crate::store::pg::events::EventLog, journal: Addr<Journal>) {
    use crate::store::pg::events::last_seq;
    let mut after = None;
    while journal.connected() {
        let read = async {
            let c = pool.get().await?;
            let from = match after {
                Some(seq) => seq,
                None => last_seq(&c).await?,
            };
            // This node's own rows are left out by the database (it has their events).
            log.follow(&c, from, 1024).await
        };
        match read.await {
            Ok((last, events)) => {
                after = Some(last);
                for stored in events {
                    let value = serde_json::from_str(&stored.json).ok();
                    if let Some(event) = value.as_ref().and_then(crate::engine::EngineEvent::from_json) {
                        journal.do_send(Echo(event));
                    }
                }
            }
            Err(e) => tracing::debug!("cluster: cannot read the event stream ({e}); trying again"),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Where the mail a node reads goes.
struct MailReader {
    current_id: Arc<AtomicI64>,
    supervisor: Addr<Supervisor>,
    workers: WatchList,
    relays: Arc<relay::Relays>,
}

/// Reads this node's mail as it comes (or every [`POLL`]), until the Supervisor is gone.
async fn read_mail(url: String, pool: deadpool_postgres::Pool, reader: MailReader) {
    let MailReader { current_id, supervisor, workers, relays } = reader;
    let mut waker = listen(&url, MAIL_CHANNEL).await;
    let (mut outage, began) = (crate::model::outage::Outage::default(), std::time::Instant::now());
    while supervisor.connected() {
        wait(&mut waker, POLL).await;
        // After a rejoin, the new id's mail: the old id owns nothing any more.
        let me = current_id.load(Ordering::Relaxed);
        let letters = match pool.get().await {
            Ok(c) => mail::drain(&c, me).await,
            Err(e) => Err(e.into()),
        };
        let letters = match letters {
            Ok(letters) => letters,
            Err(e) => {
                if let Some(note) = outage.failed_note(began.elapsed().as_millis() as u64) {
                    tracing::warn!("cluster: cannot read mail ({e}); trying again{note}");
                }
                continue;
            }
        };
        if let Some(failures) = outage.recovered() {
            tracing::info!("cluster: reading mail again after {failures} failed tries");
        }
        let (to_me, to_owner): (Vec<Received>, Vec<Received>) =
            letters.into_iter().partition(|r| r.letter.to_node == Some(me));
        for Received { letter, .. } in to_me {
            match letter.mail {
                Mail::Kill { reason, grace_ms } => {
                    let addrs: Vec<_> = workers
                        .lock()
                        .map(|w| w.workers.values().map(|(_, a)| a.clone()).collect())
                        .unwrap_or_default();
                    let grace = Duration::from_millis(grace_ms);
                    for worker in addrs {
                        worker.do_send(Kill { task_run: letter.task_run, reason, grace });
                    }
                }
                Mail::Answer { request, result } => relays.answered(request, result),
                _ => {}
            }
        }
        if !to_owner.is_empty() {
            supervisor.do_send(Delivered(to_owner));
        }
    }
}

/// The queue columns of a task run under `workflow`: its priority with its queue's aging (the
/// order the in-memory Dispatcher keeps), and the labels it requires. What a cluster node's
/// store is opened with (`PgOptions::queue_facts`).
pub fn queue_facts(workflow: &crate::config::Workflow) -> crate::store::pg::QueueFacts {
    let aging: std::collections::BTreeMap<String, Option<Duration>> =
        workflow.queues.iter().map(|(name, q)| (name.clone(), q.aging)).collect();
    Arc::new(move |r: &crate::store::TaskRunRecord| {
        crate::store::pg::queue_columns(r, aging.get(&r.queue).copied().flatten())
    })
}

/// An attempt as its job run's owner rendered it when it queued the task run
/// (`task_runs.spec`): what another node needs to run it, with nothing of the owner's machine
/// (its state dir, where the log goes, are the runner's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedSpec {
    pub job: String,
    pub task: String,
    pub job_run: u64,
    pub task_run: u64,
    pub attempt: u32,
    /// `sh -c` text, or argv.
    pub shell: Option<String>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<String>,
    pub cwd: PathBuf,
    pub log_cap_bytes: u64,
    pub output_one_max_bytes: u64,
    pub output_all_max_bytes: u64,
    /// `CostSource` as 0 (protocol), 1 (claude JSON), 2 (OpenAI JSON).
    pub cost_source: u8,
    pub timeout_ms: u64,
    pub heartbeat_timeout_ms: u64,
    /// The model of this attempt (`retry.models`), recorded on the attempt.
    pub model: Option<String>,
    /// The fields that read a secret param, left for the runner to render (`***` above).
    pub secret_fields: Option<SecretFields>,
    /// The task's `env_file`s (absolute paths, in order): their values are not in `env`, the
    /// runner reads them itself and puts them in front of it (`cluster::env_files`).
    pub env_files: Vec<PathBuf>,
}

impl codec::Record for QueuedSpec {
    /// 2: `secret_fields`. 3: `env_files` (before it, `env` held their values).
    const VERSION: u8 = 3;

    fn upgrade(version: u8, body: &[u8]) -> Result<Self, crate::store::StoreError> {
        match version {
            // Layouts 1 and 2 are layout 3 without their last fields: postcard writes a `None`
            // and an empty list as one 0 each.
            1 => codec::body_of(&[body, &[0, 0]].concat()),
            2 => codec::body_of(&[body, &[0]].concat()),
            _ => Err(crate::store::StoreError::Codec(format!("queued spec version {version} is unknown"))),
        }
    }
}

impl QueuedSpec {
    pub fn of(spec: &AttemptSpec, timeout: Duration, heartbeat_timeout: Duration, model: Option<String>) -> QueuedSpec {
        let (shell, argv) = match &spec.command {
            CommandSpec::Shell(text) => (Some(text.clone()), Vec::new()),
            CommandSpec::Argv(items) => (None, items.clone()),
        };
        QueuedSpec {
            job: spec.job.clone(),
            task: spec.task.clone(),
            job_run: spec.job_run,
            task_run: spec.task_run,
            attempt: spec.attempt,
            shell,
            argv,
            env: spec.env.clone(),
            stdin: spec.stdin.clone(),
            cwd: spec.cwd.clone(),
            log_cap_bytes: spec.log_cap_bytes,
            output_one_max_bytes: spec.output_limits.one_max_bytes as u64,
            output_all_max_bytes: spec.output_limits.all_max_bytes as u64,
            cost_source: match spec.cost_source {
                CostSource::Protocol => 0,
                CostSource::ClaudeJson => 1,
                CostSource::OpenAiJson => 2,
            },
            timeout_ms: timeout.as_millis() as u64,
            heartbeat_timeout_ms: heartbeat_timeout.as_millis() as u64,
            model,
            secret_fields: None,
            env_files: Vec::new(),
        }
    }

    /// The spec to start on this node, whose state dir is `state_dir`.
    pub fn to_attempt_spec(&self, state_dir: &Path) -> AttemptSpec {
        let command = match &self.shell {
            Some(text) => CommandSpec::Shell(text.clone()),
            None => CommandSpec::Argv(self.argv.clone()),
        };
        let limit = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).min(OutputLimits::CEILING_BYTES);
        AttemptSpec {
            job: self.job.clone(),
            task: self.task.clone(),
            job_run: self.job_run,
            task_run: self.task_run,
            attempt: self.attempt,
            command,
            env: self.env.clone(),
            stdin: self.stdin.clone(),
            cwd: self.cwd.clone(),
            state_dir: state_dir.to_path_buf(),
            log_path: state_dir.join(AttemptRecord::log_path(self.job_run, self.task_run, self.attempt)),
            log_cap_bytes: self.log_cap_bytes,
            output_limits: OutputLimits {
                one_max_bytes: limit(self.output_one_max_bytes),
                all_max_bytes: limit(self.output_all_max_bytes),
            },
            cost_source: match self.cost_source {
                1 => CostSource::ClaudeJson,
                2 => CostSource::OpenAiJson,
                _ => CostSource::Protocol,
            },
        }
    }
}

pub mod env_files;
pub mod relay;
pub mod secret_fields;

pub use secret_fields::SecretFields;

#[cfg(test)]
mod tests;
