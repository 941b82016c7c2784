//! A task run claimed by a node that dies before its job run's owner heard it start.

use std::time::Duration;

use super::tests::node_config;
use crate::engine::SubmitRequest;
use crate::model::JobState;
use crate::store::pg::testing::TestDb;

/// A row claimed by a node that died before its owner heard it start (here a node whose lease
/// ran out, made by hand) is written back by the live owner and claimed again: before, only an
/// adopter did that, and a runner killed while it started up left the row `running` for good
/// (`postgres_restarted_under_load_…` in tests/cluster_nodes.rs hung on one).
#[test]
fn an_owner_takes_back_a_claim_its_dead_runner_never_started() {
    let Some(db) = TestDb::get() else { return };
    let dir = crate::state_dir::private_tempdir();
    let text = "[jobs.j.tasks.t]\nrun = \"true\"\n";
    let config = node_config(&db, dir.path(), text, "node-a", 1);
    let system = actix::System::new();
    system.block_on(async move {
        let handle = crate::engine::start(config);
        handle.resume_all().await.expect("resume");
        db.psql("INSERT INTO paused_queues (queue) VALUES ('default')");
        let submitted = handle.submit_request(SubmitRequest { job: "j".into(), ..Default::default() }).await;
        let id = submitted.expect("submit").job_run;
        db.psql(&format!(
            "INSERT INTO nodes (name, labels, lease_until) VALUES ('ghost', '{{}}', now() - interval '1 second'); \
             UPDATE task_runs SET state = 'running', attempt = attempt + 1, \
                 node = (SELECT id FROM nodes WHERE name = 'ghost') WHERE job_run = {id}; \
             DELETE FROM paused_queues"
        ));
        let ended = tokio::time::timeout(Duration::from_secs(20), handle.wait(vec![id])).await;
        let ended = ended.expect("the run ends: its row is claimed again").expect("wait");
        assert_eq!(ended, [(id, JobState::Succeeded)]);
        handle.shutdown().await;
    });
}
