//! A node of a gaffer cluster (issue #11, docs/cluster-design.md, "The cluster engine"): an
//! engine whose store is PostgreSQL, registered in `nodes` with a lease it renews, whose
//! Dispatcher claims ready task runs of every node's job runs from the database.
//!
//! The node that creates a job run owns it and makes all of its decisions; any node's workers
//! may run its attempts. A worker that claimed an attempt of a job run owned elsewhere starts
//! the spec the owner rendered when it queued the task run, and talks to the owner by mail
//! (`store::pg::mail`).

use std::sync::Arc;
use std::time::Duration;

use crate::model::lease::{DEFAULT_LEASE_MS, check_lease_ms};
use crate::store::pg::PgBackend;
use crate::store::pg::queue::{self, Heartbeat, Node};

use super::EngineError;

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
}

impl ClusterConfig {
    /// A node of the default name and lease, without labels.
    pub fn new(backend: Arc<PgBackend>) -> ClusterConfig {
        ClusterConfig {
            backend,
            lease: Duration::from_millis(DEFAULT_LEASE_MS),
            node_name: default_node_name(),
            labels: Vec::new(),
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
    /// The node and heartbeat of the latest rejoin, if the node rejoined (`adopt`).
    rejoined: std::sync::Mutex<Option<(Node, Heartbeat)>>,
}

impl ClusterNode {
    /// Registers the node and starts its heartbeat. Blocks (a round trip to the database).
    pub fn join(config: &ClusterConfig) -> Result<ClusterNode, EngineError> {
        check_lease_ms(config.lease.as_millis() as u64).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let backend = config.backend.clone();
        let (node, heartbeat) = register(&backend, &config.node_name, &config.labels, config.lease)?;
        Ok(ClusterNode { backend, node, heartbeat, rejoined: Default::default() })
    }

    /// This node's row now: the first one, or the latest rejoin's.
    pub fn current(&self) -> Node {
        let rejoined = self.rejoined.lock().unwrap_or_else(|e| e.into_inner());
        rejoined.as_ref().map(|(node, _)| node.clone()).unwrap_or_else(|| self.node.clone())
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

    /// After the lease ran out (`model::lease::ExpiredDuties::rejoin`): the node joins again
    /// under a new id with a new lease; the old id stays dead, and nothing it owned is owned.
    /// Blocks (a round trip to the database).
    pub fn rejoin(&self) -> Result<Node, EngineError> {
        let old = self.current();
        let (node, heartbeat) = register(&self.backend, &old.name, &old.labels, old.lease)?;
        *self.rejoined.lock().unwrap_or_else(|e| e.into_inner()) = Some((node.clone(), heartbeat));
        Ok(node)
    }

    /// A graceful stop: the lease ends now, so the others know at once.
    pub async fn leave(&self) {
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

/// Registers a node, makes the store commit for it, and starts its heartbeat, whose own count
/// of the lease starts when the registration was sent.
fn register(
    backend: &Arc<PgBackend>,
    name: &str,
    labels: &[String],
    lease: Duration,
) -> Result<(Node, Heartbeat), EngineError> {
    let pool = backend.store().pool().clone();
    let (name, labels) = (name.to_string(), labels.to_vec());
    let sent = std::time::Instant::now();
    let node = backend.run(async move {
        let mut c = pool.get().await?;
        queue::register_node(&mut c, &name, &labels, lease).await
    })?;
    backend.set_owner_node(Some(node.id));
    let (pool, beating) = (backend.store().pool().clone(), node.clone());
    // Started on the store's runtime, where its renewals run.
    let heartbeat = backend.run(async move { Ok(Heartbeat::start_from(pool, beating, sent)) })?;
    tracing::info!("cluster: joined as node {} (id {})", node.name, node.id);
    Ok((node, heartbeat))
}

#[cfg(test)]
mod tests;
