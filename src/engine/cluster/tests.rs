//! Cluster nodes on one real PostgreSQL (`store::pg::testing`), each an engine in this process
//! with real processes: who runs what, and that the owner decides.

use std::sync::Arc;
use std::time::Duration;

use super::ClusterConfig;
use crate::engine::seam_tests::config_on;
use crate::engine::{EngineConfig, SubmitRequest};
use crate::model::JobState;
use crate::store::StoreHandle;
use crate::store::pg::testing::TestDb;
use crate::store::pg::{PgBackend, PgOptions};

/// An engine config of node `name` on the test database.
fn node_config(db: &TestDb, dir: &std::path::Path, text: &str, name: &str, workers: usize) -> EngineConfig {
    let backend = Arc::new(PgBackend::open(&db.url, PgOptions::default()).expect("open the pg store"));
    let mut config = config_on(dir, text, StoreHandle::new(backend.clone()));
    config.workers = workers;
    config.cluster = Some(ClusterConfig {
        lease: Duration::from_secs(6),
        node_name: name.to_string(),
        ..ClusterConfig::new(backend)
    });
    config
}

/// A node registers at start with its labels, owns the job runs it creates (epoch 1), and says
/// it stopped when it stops.
#[test]
fn a_node_registers_owns_what_it_creates_and_leaves() {
    let Some(db) = TestDb::get() else { return };
    let dir = crate::state_dir::private_tempdir();
    let text = "[jobs.j.tasks.hello]\nrun = \"true\"\n";
    let mut config = node_config(&db, dir.path(), text, "node-a", 1);
    config.cluster.as_mut().expect("cluster").labels = vec!["gpu".into()];
    let system = actix::System::new();
    let id = system.block_on(async move {
        let handle = crate::engine::start(config);
        handle.resume_all().await.expect("resume");
        let node = db.psql("SELECT name, labels, stopped, lease_until > now() FROM nodes");
        assert_eq!(node.split_whitespace().collect::<Vec<_>>(), ["node-a|{gpu}|f|t"], "{node}");
        let submitted = handle.submit_request(SubmitRequest { job: "j".into(), ..Default::default() }).await;
        let id = submitted.expect("submit").job_run;
        let ended = handle.wait(vec![id]).await.expect("wait");
        assert_eq!(ended, [(id, JobState::Succeeded)]);
        handle.shutdown().await;
        (id, db)
    });
    let (id, db) = id;
    let owner = db.psql(&format!(
        "SELECT n.name, j.owner_epoch FROM job_runs j JOIN nodes n ON n.id = j.owner_node WHERE j.id = {id}"
    ));
    assert_eq!(owner.trim(), "node-a|1", "{owner}");
    let node = db.psql("SELECT stopped, lease_until <= now() FROM nodes");
    assert_eq!(node.trim(), "t|t", "{node}");
}
