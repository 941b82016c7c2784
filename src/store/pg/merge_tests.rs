//! The group commit's multi-row statements (`merge.rs`) against a real server: a group writes
//! what its batches would write one by one — each row's last state, its spec, its node.

use super::testing::TestDb;
use super::tests::{LONG, node, open};
use crate::model::TaskState;
use crate::store::Mutation;
use crate::store::records::{AttemptRecord, TaskRunRecord};
use crate::store::tests::job_run;

fn task_run(id: u64, job_run: u64, state: TaskState, attempt: u32) -> TaskRunRecord {
    let mut t = TaskRunRecord::pending(id, job_run, "j", &format!("t{id}"), 1);
    t.state = state;
    t.attempt = attempt;
    t.enqueue_seq = id;
    t
}

/// The columns a group wrote for task run `id`: state, node set, spec, attempt, requires,
/// item_index, not_before set.
async fn row(
    c: &deadpool_postgres::Client,
    id: u64,
) -> (String, bool, Option<Vec<u8>>, i32, Vec<String>, Option<i32>, bool) {
    let r = c
        .query_one(
            "SELECT state, node IS NOT NULL, spec, attempt, requires, item_index, not_before IS NOT NULL \
             FROM task_runs WHERE id = $1",
            &[&(id as i64)],
        )
        .await
        .expect("the row");
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6))
}

#[tokio::test]
async fn a_group_writes_each_rows_last_state_with_its_spec_and_node() {
    let Some(db) = TestDb::get() else { return };
    let store = open(&db).await;
    let me = node(&store, "n1", &[], LONG).await;
    store.ownership.join(me.id as u64);
    let (j, a, b) = (1, 11, 12);
    let queued_a = task_run(a, j, TaskState::Queued, 0);
    let mut queued_b = task_run(b, j, TaskState::Queued, 0);
    queued_b.requires = vec!["gpu".into(), "eu, \"west\"".into()];
    queued_b.item_index = Some(3);
    queued_b.not_before_ms = Some(1_900_000_000_000);
    let mut ended = AttemptRecord::started(a, j, 1, 5);
    ended.exit_code = Some(0);
    // Handed over at once, so that they share groups (however the writer splits them, the
    // outcome is the same as one by one).
    let batches = [
        vec![
            Mutation::JobRun(job_run(j)),
            Mutation::TaskRun(queued_a),
            Mutation::Spec(a, Some(vec![1])),
            Mutation::TaskRun(queued_b),
            Mutation::Spec(b, None),
        ],
        vec![
            Mutation::TaskRun(task_run(a, j, TaskState::Running, 1)),
            Mutation::Attempt(AttemptRecord::started(a, j, 1, 4)),
        ],
        vec![
            Mutation::TaskRun(task_run(a, j, TaskState::Succeeded, 1)),
            Mutation::Attempt(ended),
            Mutation::Spec(b, Some(vec![2])),
        ],
    ];
    let answers: Vec<_> = batches.into_iter().map(|b| store.writer.hand_over(b)).collect();
    for answer in answers {
        answer.await.expect("committed");
    }
    let c = store.connection().await.expect("conn");
    let gpu_eu = vec!["gpu".to_string(), "eu, \"west\"".to_string()];
    assert_eq!(row(&c, a).await, ("succeeded".into(), false, Some(vec![1]), 1, vec![], None, false));
    assert_eq!(row(&c, b).await, ("queued".into(), false, Some(vec![2]), 0, gpu_eu, Some(3), true));
    let attempt = c.query_one("SELECT record FROM attempts WHERE task_run = $1 AND n = 1", &[&(a as i64)]).await;
    let attempt: AttemptRecord = crate::store::codec::decode(attempt.expect("attempt").get(0)).expect("decode");
    assert_eq!(attempt.exit_code, Some(0), "the attempt's last write");

    // The owner starts b itself: it runs on this node; a claim by another node is kept.
    store.commit(vec![Mutation::TaskRun(task_run(b, j, TaskState::Running, 1))]).await.expect("commit");
    assert!(row(&c, b).await.1, "running here: node set");
    c.execute("UPDATE task_runs SET node = 999 WHERE id = $1", &[&(b as i64)]).await.expect("claimed elsewhere");
    store.commit(vec![Mutation::TaskRun(task_run(b, j, TaskState::Running, 1))]).await.expect("commit");
    let node: Option<i64> =
        c.query_one("SELECT node FROM task_runs WHERE id = $1", &[&(b as i64)]).await.expect("row").get(0);
    assert_eq!(node, Some(999), "a claimer's node is kept");
}

/// A plain store (no node) never writes `node`.
#[tokio::test]
async fn a_plain_store_leaves_the_node_alone() {
    let Some(db) = TestDb::get() else { return };
    let store = open(&db).await;
    let (j, a) = (1, 21);
    let batch = vec![Mutation::JobRun(job_run(j)), Mutation::TaskRun(task_run(a, j, TaskState::Running, 1))];
    store.commit(batch).await.expect("commit");
    let c = store.connection().await.expect("conn");
    assert!(!row(&c, a).await.1, "no node written");
    c.execute("UPDATE task_runs SET node = 7 WHERE id = $1", &[&(a as i64)]).await.expect("claimed");
    store.commit(vec![Mutation::TaskRun(task_run(a, j, TaskState::Succeeded, 1))]).await.expect("commit");
    let node: Option<i64> =
        c.query_one("SELECT node FROM task_runs WHERE id = $1", &[&(a as i64)]).await.expect("row").get(0);
    assert_eq!(node, Some(7));
}
