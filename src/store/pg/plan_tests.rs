//! Which plans the writer's statements run on (`writer::planned_once`), with statistics taken
//! while the tables were empty (pg-probe RESULTS.md, trap 1): the generic ones read no table,
//! the others are still planned at every execution.

use super::testing::TestDb;
use super::tests::open;
use super::*;
use crate::model::TaskState;
use crate::store::Mutation;
use crate::store::records::AttemptRecord;
use crate::store::tests::job_run;

/// A new job run with one queued task run and its spec, then that task run running with its
/// first attempt: what a submit and a start commit.
fn submit_and_start(j: u64) -> [Vec<Mutation>; 2] {
    let mut t = TaskRunRecord::pending(j * 10, j, "report", "t", 1);
    t.state = TaskState::Queued;
    t.queue = "default".into();
    let submit = vec![Mutation::JobRun(job_run(j)), Mutation::TaskRun(t.clone()), Mutation::Spec(t.id, Some(vec![1]))];
    t.state = TaskState::Running;
    t.attempt = 1;
    let start = vec![Mutation::TaskRun(t.clone()), Mutation::Attempt(AttemptRecord::started(t.id, j, 1, 5))];
    [submit, start]
}

#[tokio::test]
async fn the_writers_generic_plans_read_no_table() {
    let Some(db) = TestDb::get() else { return };
    let store = open(&db).await;
    db.psql("ANALYZE job_runs; ANALYZE task_runs; ANALYZE attempts");
    // The writer's own `apply`, on a connection of this test's, whose prepared statements say
    // how each was planned.
    let c = store.connection().await.expect("conn");
    let facts = plain_queue_facts();
    for j in 1..=12u64 {
        for batch in submit_and_start(j) {
            let planned = writer::plan(&[batch.as_slice()], &facts, Some(7)).expect("plan");
            let prepared = planned.prepare(&c).await.expect("prepare");
            c.batch_execute("BEGIN").await.expect("begin");
            planned.check(&planned.execute(&c, &prepared).await.expect("apply")).expect("checked");
            c.batch_execute("COMMIT").await.expect("commit");
        }
    }
    let rows = c
        .query("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements WHERE NOT from_sql", &[])
        .await
        .expect("prepared statements");
    let mut generic = 0;
    for row in &rows {
        let (sql, generic_plans, custom_plans): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        // A statement without parameters has one plan whatever the mode (the SETs, this one).
        if !sql.contains("$1") {
            continue;
        }
        match writer::planned_once(&sql) {
            true => {
                generic += 1;
                assert!(
                    generic_plans >= 1 && custom_plans == 0,
                    "{generic_plans} generic, {custom_plans} custom: {sql}"
                );
            }
            false => assert!(
                custom_plans >= 1 && generic_plans == 0,
                "{generic_plans} generic, {custom_plans} custom: {sql}"
            ),
        }
    }
    assert_eq!(generic, 3, "job runs, new task runs with their spec, the wake-up:\n{rows:?}");
    let attempts = rows.iter().any(|r| r.get::<_, String>(0).starts_with("INSERT INTO attempts"));
    assert!(attempts, "the attempts' upsert, planned each time, ran: {rows:?}");
    // Their generic plans, as this statistics gives them: rows from `unnest`, written by
    // primary key; no table is read.
    for row in &rows {
        let sql: String = row.get(0);
        if !writer::planned_once(&sql) {
            continue;
        }
        let n = sql
            .split('$')
            .skip(1)
            .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        let args = (1..=n).map(|_| "NULL").collect::<Vec<_>>().join(", ");
        let plan = db
            .psql(&format!("SET plan_cache_mode = force_generic_plan; PREPARE p AS {sql}; EXPLAIN EXECUTE p({args})"));
        for read in ["Seq Scan", "Index Scan", "Index Only Scan", "Bitmap"] {
            assert!(!plan.contains(read), "{sql}:\n{plan}");
        }
    }
}

/// Trap 1 of pg-probe for the claim on its own sessions (`CLAIM_SESSION`, generic plans): the
/// plan is made at the first claim, while the statistics say the queue is empty, and kept as
/// 10,000 task runs arrive; every claim after still walks the indexes, never `task_runs` whole.
#[tokio::test]
async fn a_claim_planned_while_the_queue_was_empty_walks_its_index() {
    use super::queue::{self, Limits};
    use super::tests::{enqueue, node};
    let Some(db) = TestDb::get() else { return };
    let store = open(&db).await;
    db.psql("ANALYZE task_runs; ANALYZE nodes; ANALYZE paused_queues; ANALYZE queue_marks");
    let me = node(&store, "claimer", &[], super::tests::LONG).await;
    let mut c = store.claim_pool().get().await.expect("conn");
    let capped = Limits { cap: Some(10_000), ..Limits::default() };
    // Planned now, with the statistics of an empty queue.
    for limits in [Limits::default(), capped] {
        let claim = queue::claim_within(&mut c, &me, "default", 4, &limits).await.expect("claim");
        assert!(claim.claimed.is_empty());
    }
    enqueue(&store, "default", 10_000).await;
    c.execute("SELECT pg_stat_force_next_flush()", &[]).await.expect("flush");
    let scans = || super::tests::task_runs_scans(&db);
    let before = scans();
    for (k, limits) in [1usize, 10, 64].into_iter().zip([Limits::default(), capped, Limits::default()]).cycle().take(30)
    {
        let claim = queue::claim_within(&mut c, &me, "default", k, &limits).await.expect("claim");
        assert_eq!(claim.claimed.len(), k);
    }
    let prepared = c
        .query("SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE 'UPDATE task_runs SET state%'", &[])
        .await
        .expect("prepared");
    let (generic, custom): (i64, i64) = (prepared[0].get(0), prepared[0].get(1));
    assert!(generic >= 30 && custom == 0, "the claim ran on its generic plan: {generic} generic, {custom} custom");
    c.execute("SELECT pg_stat_force_next_flush()", &[]).await.expect("flush");
    let after = scans();
    assert!(after.1 - before.1 >= 30, "the claims' index scans were not counted: {before:?} → {after:?}");
    assert_eq!(after.0 - before.0, 0, "the claims scanned task_runs {} times", after.0 - before.0);
}
