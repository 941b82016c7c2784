//! The PostgreSQL store and queue primitives against a real server (`testing.rs` starts one;
//! without PostgreSQL installed these tests say so and pass).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use super::queue::{self, Claimed, Node, Outcome, Verdict, Waker, Woken};
use super::testing::TestDb;
use super::*;
use crate::model::TaskState;
use crate::model::lease::Refused;
use crate::store::Mutation;
use crate::store::records::{AttemptRecord, CacheEntry, DefinitionRecord, RaisedBudgets};
use crate::store::tests::job_run;

macro_rules! test_db_or_skip {
    () => {
        match TestDb::get() {
            Some(db) => db,
            None => return,
        }
    };
}

pub(super) async fn open(db: &TestDb) -> PgStore {
    PgStore::open(&db.url, PgOptions::default()).await.expect("open the pg store")
}

fn queued(id: u64, job_run: u64, queue: &str, priority: u8, queued_at_ms: u64) -> TaskRunRecord {
    let mut t = TaskRunRecord::pending(id, job_run, "report", &format!("t{id}"), 1);
    t.state = TaskState::Queued;
    t.queue = queue.to_string();
    t.priority = priority;
    t.queued_at_ms = Some(queued_at_ms);
    t.enqueue_seq = id;
    t
}

/// `n` queued task runs of one new job run in `queue`, committed; their ids.
pub(super) async fn enqueue(store: &PgStore, queue: &str, n: usize) -> Vec<u64> {
    let j = store.ids.next_job_run().await.expect("id");
    let mut batch = vec![Mutation::JobRun(job_run(j))];
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = store.ids.next_task_run().await.expect("id");
        ids.push(id);
        batch.push(Mutation::TaskRun(queued(id, j, queue, 50, 0)));
    }
    for chunk in batch.chunks(2000) {
        store.commit(chunk.to_vec()).await.expect("commit");
    }
    ids
}

pub(super) async fn node(store: &PgStore, name: &str, labels: &[&str], lease: Duration) -> Node {
    let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    queue::register_node(&mut store.connection().await.expect("conn"), name, &labels, lease).await.expect("register")
}

/// The outcome a node reports for a claimed task run: its attempt succeeded.
pub(super) fn succeeded(c: &Claimed) -> Outcome {
    let mut attempt = AttemptRecord::started(c.id, c.record.job_run, c.attempt, 2);
    attempt.exit_code = Some(0);
    attempt
}

/// What the task run's owner writes once it heard of that outcome: the task run succeeded.
pub(super) fn owner_wrote(c: &Claimed) -> Mutation {
    let mut task_run = c.record.clone();
    task_run.state = TaskState::Succeeded;
    task_run.attempt = c.attempt;
    Mutation::TaskRun(task_run)
}

pub(super) const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn migrations_apply_once_and_a_newer_schema_is_refused_before_anything_is_written() {
    let db = test_db_or_skip!();
    // A database some newer gaffer made: refused, and not one table added.
    db.psql("CREATE TABLE gaffer_schema (version integer PRIMARY KEY); INSERT INTO gaffer_schema VALUES (99)");
    let tables = || db.psql("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()");
    let before = tables();
    match PgStore::open(&db.url, PgOptions::default()).await {
        Err(PgError::Schema { found: 99 }) => {}
        Err(other) => panic!("expected a schema refusal, got {other}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
    assert_eq!(tables(), before, "the refused database was written to");
    assert_eq!(before.trim(), "1");

    db.psql("DROP TABLE gaffer_schema");
    let first = open(&db).await;
    drop(first);
    let second = open(&db).await;
    drop(second);
    let every: Vec<String> = (1..=SCHEMA_VERSION).map(|v| v.to_string()).collect();
    let applied = db.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM gaffer_schema");
    assert_eq!(applied.trim(), every.join(","), "each applied once");
    assert!(tables().trim().parse::<u32>().expect("count") > 10);
}

/// A database at schema 7 with rows in it (a node of the previous gaffer) takes migration 8 once
/// when this gaffer opens it: `task_runs` gets its room (fillfactor 50), its rows stay as they are.
#[tokio::test]
async fn schema_8_applies_to_a_schema_7_database_with_rows() {
    let db = test_db_or_skip!();
    let ids = {
        let store = open(&db).await;
        enqueue(&store, "default", 100).await
    };
    // What schema 7 left: its fillfactor, no version 8.
    db.psql("ALTER TABLE task_runs SET (fillfactor = 70); DELETE FROM gaffer_schema WHERE version = 8");
    let options = || db.psql("SELECT reloptions::text FROM pg_class WHERE oid = 'task_runs'::regclass");
    assert_eq!(options().trim(), "{fillfactor=70}");
    let store = open(&db).await;
    assert_eq!(options().trim(), "{fillfactor=50}");
    let applied = db.psql("SELECT count(*) FROM gaffer_schema WHERE version = 8");
    assert_eq!(applied.trim(), "1");
    assert_eq!(
        store.snapshot().await.expect("snapshot").task_run(ids[99]).await.expect("read").map(|t| t.id),
        Some(ids[99])
    );
    drop(store);
    open(&db).await;
    assert_eq!(db.psql("SELECT count(*) FROM gaffer_schema").trim(), SCHEMA_VERSION.to_string(), "each applied once");
}

#[tokio::test]
async fn every_record_round_trips_and_a_snapshot_keeps_its_view() {
    let db = test_db_or_skip!();
    let store = open(&db).await;
    let mut attempt = AttemptRecord::started(7, 1, 1, 5);
    attempt.add_warning("a warning".into());
    let cache = CacheEntry {
        task_run: 7,
        job_run: 1,
        succeeded_at_ms: 9,
        expires_at_ms: 100,
        outputs: Default::default(),
        exit_code: Some(0),
    };
    let raised = RaisedBudgets { job_run: Some(5), task_runs: [(7, 9)].into() };
    let definition = DefinitionRecord { path: "flow.toml".into(), source: "[job]".into() };
    let mut fanned = queued(8, 1, "default", 50, 0);
    (fanned.task, fanned.item_index) = ("t7".into(), Some(0));
    store
        .commit(vec![
            Mutation::Definition(u64::MAX - 3, definition.clone()),
            Mutation::JobRun(job_run(1)),
            Mutation::TaskRun(queued(7, 1, "default", 50, 0)),
            Mutation::TaskRun(fanned.clone()),
            Mutation::Attempt(attempt.clone()),
            Mutation::QueuePaused("slow".into(), true),
            Mutation::QueuePaused("gone".into(), true),
            Mutation::QueuePaused("gone".into(), false),
            Mutation::IdempotencyKey("k1".into(), 1),
            Mutation::Cached("report/t7/x".into(), cache.clone()),
            Mutation::RaisedBudgets(1, raised.clone()),
        ])
        .await
        .expect("commit");
    let before = store.snapshot().await.expect("snapshot");
    store.commit(vec![Mutation::JobRun(job_run(2))]).await.expect("commit");
    assert_eq!(before.job_runs().await.expect("read"), vec![job_run(1)], "the snapshot does not see later commits");
    let s = store.snapshot().await.expect("snapshot");
    assert_eq!(s.job_runs().await.expect("read"), vec![job_run(1), job_run(2)]);
    assert_eq!(s.job_run(2).await.expect("read"), Some(job_run(2)));
    assert_eq!(s.definition(u64::MAX - 3).await.expect("read"), Some(definition));
    assert_eq!(s.task_run(7).await.expect("read"), Some(queued(7, 1, "default", 50, 0)));
    assert_eq!(s.task_runs_of(1).await.expect("read").len(), 2);
    assert_eq!(s.instances_of(1, "t7").await.expect("read"), vec![queued(7, 1, "default", 50, 0), fanned]);
    assert_eq!(s.attempts_of(7).await.expect("read"), vec![attempt.clone()]);
    assert_eq!(s.paused_queues().await.expect("read"), BTreeSet::from(["slow".to_string()]));
    assert_eq!(s.idempotency_key("k1").await.expect("read"), Some(1));
    assert_eq!(s.cache_entry("report/t7/x").await.expect("read"), Some(cache));
    assert_eq!(s.expired_cache_keys(101).await.expect("read"), vec!["report/t7/x".to_string()]);
    assert!(s.expired_cache_keys(100).await.expect("read").is_empty());
    assert_eq!(s.raised_budgets(1).await.expect("read"), raised);
    assert_eq!(s.raised_budgets(2).await.expect("read"), RaisedBudgets::default());
    let mut newest_first = Vec::new();
    s.each_job_run_newest_first(|r| {
        newest_first.push(r.id);
        false
    })
    .await
    .expect("read");
    assert_eq!(newest_first, vec![2], "stops when told");
    let counts = s.decode_all().await.expect("decode");
    assert!(counts.contains(&("task_runs", 2)) && counts.contains(&("attempts", 1)), "{counts:?}");
    assert_eq!(s.schema().await.expect("schema"), Some(SCHEMA_VERSION));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_transactions() {
    let db = test_db_or_skip!();
    let store = open(&db).await;
    let commits = (1..=500).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.commit(vec![Mutation::TaskRun(queued(i, 1, "default", 50, 0))]).await })
    });
    for c in commits.collect::<Vec<_>>() {
        c.await.expect("join").expect("commit");
    }
    assert!(store.commit_count() < 500, "500 commits took {} transactions", store.commit_count());
    assert_eq!(store.snapshot().await.expect("snapshot").task_runs().await.expect("read").len(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_hand_out_the_same_id() {
    let db = test_db_or_skip!();
    let (a, b) = (open(&db).await, open(&db).await);
    let take = |store: PgStore| {
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..300 {
                ids.push(store.ids.next_task_run().await.expect("id"));
            }
            ids
        })
    };
    let (ta, tb) = (take(a), take(b));
    let mut all = ta.await.expect("join");
    all.extend(tb.await.expect("join"));
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 600, "an id was handed out twice");
}

/// Claims `k` at a time until the queue is empty; what it claimed.
async fn drain(store: PgStore, node: Node, queue: &'static str, k: usize) -> Vec<u64> {
    let mut c = store.connection().await.expect("conn");
    let mut mine = Vec::new();
    loop {
        let claimed = queue::claim(&mut c, &node, queue, k, None).await.expect("claim");
        if claimed.is_empty() {
            return mine;
        }
        mine.extend(claimed.iter().map(|c| c.id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_claimers_never_claim_the_same_task_run() {
    let db = test_db_or_skip!();
    let store = open(&db).await;
    let ids = enqueue(&store, "default", 2000).await;
    let (n1, n2) = (node(&store, "n1", &[], LONG).await, node(&store, "n2", &[], LONG).await);
    let first = tokio::spawn(drain(store.clone(), n1, "default", 7));
    let second = tokio::spawn(drain(store.clone(), n2, "default", 7));
    let (a, b) = (first.await.expect("join"), second.await.expect("join"));
    assert!(!a.is_empty() && !b.is_empty(), "both claimed: {} and {}", a.len(), b.len());
    let mut all: Vec<u64> = a.iter().chain(&b).copied().collect();
    all.sort_unstable();
    let claimed_once = all.len();
    all.dedup();
    assert_eq!(claimed_once, all.len(), "a task run was claimed twice");
    assert_eq!(all, ids, "every task run was claimed");
    let running = db.psql("SELECT count(*) FROM task_runs WHERE state = 'running' AND attempt = 1");
    assert_eq!(running.trim(), "2000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_wide_cap_holds_across_three_claimers() {
    const CAP: u32 = 5;
    let db = test_db_or_skip!();
    let store = open(&db).await;
    enqueue(&store, "capped", 300).await;
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (store, stop, most) = (store.clone(), stop.clone(), most.clone());
        tokio::spawn(async move {
            let c = store.connection().await.expect("conn");
            let count = "SELECT count(*) FROM task_runs WHERE queue = 'capped' AND state = 'running'";
            while !stop.load(Ordering::Relaxed) {
                let running: i64 = c.query_one(count, &[]).await.expect("count").get(0);
                most.fetch_max(running, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut claimers = Vec::new();
    for name in ["c1", "c2", "c3"] {
        let (store, node) = (store.clone(), node(&store, name, &[], LONG).await);
        claimers.push(tokio::spawn(async move {
            let mut c = store.connection().await.expect("conn");
            let mut done = 0;
            let mut idle_rounds = 0;
            while idle_rounds < 50 {
                let claimed = queue::claim(&mut c, &node, "capped", 4, Some(CAP)).await.expect("claim");
                if claimed.is_empty() {
                    idle_rounds += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                idle_rounds = 0;
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1..4))).await;
                let outcomes: Vec<Outcome> = claimed.iter().map(succeeded).collect();
                let verdicts = queue::complete(&c, &node, &outcomes).await.expect("complete");
                assert!(verdicts.iter().all(|v| *v == Verdict::Accepted), "{verdicts:?}");
                // The running count drops once the owner wrote what follows.
                store.commit(claimed.iter().map(owner_wrote).collect()).await.expect("commit");
                done += claimed.len();
            }
            done
        }));
    }
    let mut done = 0;
    for c in claimers {
        done += c.await.expect("join");
    }
    stop.store(true, Ordering::Relaxed);
    sampler.await.expect("join");
    assert_eq!(done, 300, "every task run ran once");
    let most = most.load(Ordering::Relaxed);
    assert!(most <= i64::from(CAP), "{most} ran at once in a queue capped at {CAP}");
    assert!(most >= 2, "the sampler saw at most {most} running: the claimers never overlapped");
}

#[tokio::test]
async fn a_late_outcome_from_an_expired_node_is_refused() {
    let db = test_db_or_skip!();
    let store = open(&db).await;
    let ids = enqueue(&store, "default", 3).await;
    let mut c = store.connection().await.expect("conn");
    let short = node(&store, "short", &[], Duration::from_millis(300)).await;
    let claimed = queue::claim(&mut c, &short, "default", 2, None).await.expect("claim");
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), ids[..2]);
    assert!(queue::renew(&c, &short).await.expect("renew"), "renewed while alive");

    // One batch, one verdict per row: a stale attempt number is refused beside an accepted one.
    let mut stale = succeeded(&claimed[1]);
    stale.n += 1;
    let verdicts = queue::complete(&c, &short, &[succeeded(&claimed[0]), stale]).await.expect("complete");
    assert_eq!(verdicts, [Verdict::Accepted, Verdict::Refused(Refused::StaleAttempt)]);
    let taken = db.psql(&format!("SELECT state, node IS NULL FROM task_runs WHERE id = {}", ids[0]));
    assert_eq!(taken.trim(), "running|t", "the attempt ended (node NULL); the task run is its owner's to write");

    // Taken: the attempt runs on no node any more.
    let again = queue::complete(&c, &short, &[succeeded(&claimed[0])]).await.expect("complete");
    assert_eq!(again, [Verdict::Refused(Refused::OtherNode)], "an outcome is taken once");

    tokio::time::sleep(Duration::from_millis(400)).await;
    let dead = queue::dead_nodes(&c).await.expect("dead nodes");
    assert!(dead.iter().any(|d| d.id == short.id && !d.stopped), "{dead:?}");
    let late = queue::complete(&c, &short, &[succeeded(&claimed[1])]).await.expect("complete");
    assert_eq!(late, [Verdict::Refused(Refused::LeaseExpired)], "a node whose lease ran out may not complete");
    let state = db.psql(&format!("SELECT state, node FROM task_runs WHERE id = {}", ids[1]));
    assert_eq!(state.trim(), format!("running|{}", short.id), "the refused outcome wrote nothing");
    assert_eq!(db.psql(&format!("SELECT count(*) FROM attempts WHERE task_run = {}", ids[1])).trim(), "0");
    assert!(!queue::renew(&c, &short).await.expect("renew"), "a lease that ran out is not renewed");
    assert!(queue::claim(&mut c, &short, "default", 5, None).await.expect("claim").is_empty(), "nor claims");

    // The name is free again: the node comes back as a new node, and the old fence still holds.
    let again = node(&store, "short", &[], LONG).await;
    assert_ne!(again.id, short.id);
    let late = queue::complete(&c, &again, &[succeeded(&claimed[1])]).await.expect("complete");
    assert_eq!(late, [Verdict::Refused(Refused::OtherNode)], "another node's attempt");
    assert!(queue::register_node(&mut c, "short", &[], LONG).await.is_err(), "two live nodes with one name");
}

#[tokio::test]
async fn claims_follow_priority_with_aging_then_enqueue_order_and_labels() {
    let db = test_db_or_skip!();
    let aging = Some(Duration::from_secs(1));
    let facts: QueueFacts = Arc::new(move |r: &TaskRunRecord| QueueColumns {
        sort_key: sort_key(crate::model::policy::priority_key(r.priority, r.queued_at_ms.unwrap_or(0), aging)),
        requires: if r.task.ends_with("gpu") { vec!["gpu".into()] } else { Vec::new() },
    });
    let store = PgStore::open(&db.url, PgOptions { queue_facts: facts, ..PgOptions::default() }).await.expect("open");
    let mut batch = vec![Mutation::JobRun(job_run(1))];
    // (id, priority, queued at): one second of waiting is worth one priority step.
    for (id, priority, at) in [(1, 50, 0), (2, 52, 5_000), (3, 50, 0), (4, 55, 1_000), (5, 90, 0)] {
        let mut t = queued(id, 1, "q", priority, at);
        if id == 5 {
            t.task = "train-gpu".into();
        }
        batch.push(Mutation::TaskRun(t));
    }
    store.commit(batch).await.expect("commit");
    let mut c = store.connection().await.expect("conn");
    let plain = node(&store, "plain", &[], LONG).await;
    let gpu = node(&store, "gpu", &["gpu", "eu"], LONG).await;
    let mut order = Vec::new();
    while let Some(one) = queue::claim(&mut c, &plain, "q", 1, None).await.expect("claim").pop() {
        order.push(one.id);
    }
    // keys: 1 → 50,000; 2 → 47,000; 3 → 50,000 (after 1); 4 → 54,000.
    assert_eq!(order, [4, 1, 3, 2], "by aged priority, then enqueue order; the gpu task is not for this node");
    let claimed = queue::claim(&mut c, &gpu, "q", 5, None).await.expect("claim");
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), [5]);
}

#[tokio::test]
async fn claim_and_complete_never_scan_the_task_runs_table() {
    let db = test_db_or_skip!();
    {
        let store = open(&db).await;
        // Trap 1 of pg-probe: statistics taken while the table was empty.
        db.psql("ANALYZE task_runs");
        enqueue(&store, "default", 10_000).await;
    }
    // Backends report their statistics when they exit: none of the set-up's is counted below.
    while db.psql(&format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}'", db.schema)).trim()
        != "0"
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = open(&db).await;
    let me = node(&store, "scanner", &[], LONG).await;
    let mut c = store.connection().await.expect("conn");
    let scans = || task_runs_scans(&db);
    let before = scans();
    for k in [1usize, 10, 64].into_iter().cycle().take(120) {
        let claimed = queue::claim(&mut c, &me, "default", k, None).await.expect("claim");
        assert_eq!(claimed.len(), k);
        let outcomes: Vec<Outcome> = claimed.iter().map(succeeded).collect();
        let verdicts = queue::complete(&c, &me, &outcomes).await.expect("complete");
        assert!(verdicts.iter().all(|v| *v == Verdict::Accepted));
    }
    c.execute("SELECT pg_stat_force_next_flush()", &[]).await.expect("flush");
    let after = scans();
    assert!(after.1 - before.1 >= 240, "the index scans of the loop were not counted: {before:?} → {after:?}");
    assert_eq!(after.0 - before.0, 0, "claim/complete scanned task_runs {} times", after.0 - before.0);
    let done = db.psql("SELECT count(*) FROM attempts");
    assert_eq!(done.trim(), (40 * (1 + 10 + 64)).to_string());
}

/// The owner's writes of task runs that exist (a start, an end) update them by primary key
/// (`writer::PUT_TASK_RUNS`: `UPDATE … WHERE id = ANY(…)`, then the insert of the others), also
/// with statistics taken while the table was empty (pg-probe's trap 1), in groups as a node
/// writes them (1–64 rows): no sequential scan of `task_runs`. (A group that is a large part
/// of the table — 500 of these 10,000 rows — is planned as one sequential scan and a hash join,
/// which is the cheaper plan there.) Counted from `pg_stat_user_tables` once the
/// writer's backends exited (a backend reports its statistics when it ends).
#[tokio::test]
async fn task_run_writes_update_by_primary_key_whatever_the_statistics() {
    let db = test_db_or_skip!();
    let gone = || async {
        let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}'", db.schema);
        while db.psql(&sql).trim() != "0" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let ids = {
        let store = open(&db).await;
        db.psql("ANALYZE task_runs");
        enqueue(&store, "default", 10_000).await
    };
    gone().await;
    let scans = || task_runs_scans(&db);
    let before = scans();
    {
        let store = open(&db).await;
        let j: u64 =
            db.psql(&format!("SELECT job_run FROM task_runs WHERE id = {}", ids[0])).trim().parse().expect("id");
        let mut rest = &ids[..];
        for k in [1usize, 10, 64].into_iter().cycle().take(120) {
            let (group, after) = rest.split_at(k.min(rest.len()));
            rest = after;
            let batch = group
                .iter()
                .map(|&id| {
                    let mut t = queued(id, j, "default", 50, 0);
                    t.state = TaskState::Succeeded;
                    t.attempt = 1;
                    Mutation::TaskRun(t)
                })
                .collect();
            store.commit(batch).await.expect("commit");
        }
    }
    gone().await;
    let after = scans();
    let written = 40 * (1 + 10 + 64);
    let succeeded = db.psql("SELECT count(*) FROM task_runs WHERE state = 'succeeded' AND attempt = 1");
    assert_eq!(succeeded.trim(), written.to_string());
    assert!(after.1 - before.1 >= 120, "the index scans of the loop were not counted: {before:?} → {after:?}");
    assert_eq!(after.0 - before.0, 0, "the owner's writes scanned task_runs {} times", after.0 - before.0);
}

#[tokio::test]
async fn queued_task_runs_wake_a_listener_once_per_commit() {
    let db = test_db_or_skip!();
    let store = open(&db).await;
    let mut waker = Waker::listen(&db.url).await.expect("listen");
    // Another test's queue names may be heard too (one channel per database): unique ones here.
    let (q1, q2) = (format!("wake-{}", db.schema), format!("other-{}", db.schema));
    let j = store.ids.next_job_run().await.expect("id");
    let mut batch = vec![Mutation::JobRun(job_run(j))];
    for i in 0..50 {
        let q = if i % 2 == 0 { &q1 } else { &q2 };
        batch.push(Mutation::TaskRun(queued(store.ids.next_task_run().await.expect("id"), j, q, 50, 0)));
    }
    store.commit(batch).await.expect("commit");
    let ours = |woken: Woken| match woken {
        Woken::Queues(qs) => qs.into_iter().filter(|q| q.ends_with(&db.schema)).collect::<BTreeSet<_>>(),
        Woken::Poll => BTreeSet::new(),
    };
    // Both notifications of the commit may arrive one after the other, among other tests'.
    let mut heard = BTreeSet::new();
    for _ in 0..20 {
        heard.extend(ours(waker.wait(Duration::from_millis(500)).await));
        if heard.len() == 2 {
            break;
        }
    }
    assert_eq!(heard, BTreeSet::from([q1.clone(), q2.clone()]));
    // A commit that queues nothing wakes nobody: the wait ends by its poll.
    store.commit(vec![Mutation::JobRun(job_run(j))]).await.expect("commit");
    assert!(ours(waker.wait(Duration::from_millis(300)).await).is_empty());

    // The listening connection is lost (the server restarted, a proxy cut it): the waker says
    // to look at every queue once it listens again, and wakes on the next commit as before.
    let killed = db.psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = '{}' AND query LIKE 'LISTEN%'",
        db.schema
    ));
    assert_eq!(killed.trim(), "1");
    // (Other tests' queues, heard on the same channel, may come first.)
    loop {
        match waker.wait(Duration::from_secs(10)).await {
            Woken::Poll => break,
            Woken::Queues(queues) => assert!(ours(Woken::Queues(queues)).is_empty(), "ours woke without a commit"),
        }
    }
    let again = store.ids.next_task_run().await.expect("id");
    store.commit(vec![Mutation::TaskRun(queued(again, j, &q1, 50, 0))]).await.expect("commit");
    let mut heard = BTreeSet::new();
    for _ in 0..20 {
        heard.extend(ours(waker.wait(Duration::from_millis(500)).await));
        if !heard.is_empty() {
            break;
        }
    }
    assert_eq!(heard, BTreeSet::from([q1]), "heard after the reconnection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_reported_together_share_transactions_and_each_hears_its_verdict() {
    let db = test_db_or_skip!();
    let store = open(&db).await;
    enqueue(&store, "default", 200).await;
    let me = node(&store, "batcher", &[], LONG).await;
    let mut c = store.connection().await.expect("conn");
    let claimed = queue::claim(&mut c, &me, "default", 200, None).await.expect("claim");
    assert_eq!(claimed.len(), 200);
    let completer = queue::Completer::start(store.pool().clone(), me.clone());
    let reports = claimed.iter().enumerate().map(|(i, claim)| {
        let mut outcome = succeeded(claim);
        if i % 50 == 0 {
            outcome.n += 1; // not the attempt this node holds
        }
        let completer = completer.clone();
        tokio::spawn(async move { completer.complete(outcome).await })
    });
    let mut verdicts = Vec::new();
    for report in reports.collect::<Vec<_>>() {
        verdicts.push(report.await.expect("join").expect("complete"));
    }
    let refused: Vec<usize> = (0..200).filter(|i| verdicts[*i] == Verdict::Refused(Refused::StaleAttempt)).collect();
    assert_eq!(refused, [0, 50, 100, 150], "each reporter hears its own verdict");
    assert!(completer.flush_count() < 200, "200 outcomes took {} transactions", completer.flush_count());
    assert_eq!(db.psql("SELECT count(*) FROM task_runs WHERE node IS NULL").trim(), "196", "attempts ended");
    assert_eq!(db.psql("SELECT count(*) FROM attempts").trim(), "196");
}

#[tokio::test]
async fn a_heartbeat_keeps_a_node_alive_and_says_when_its_lease_is_lost() {
    let db = test_db_or_skip!();
    let store = open(&db).await;
    let lease = Duration::from_millis(300);
    let me = node(&store, "beating", &[], lease).await;
    let mut heartbeat = queue::Heartbeat::start(store.pool().clone(), me.clone());
    tokio::time::sleep(lease * 3).await;
    let c = store.connection().await.expect("conn");
    assert!(queue::dead_nodes(&c).await.expect("dead").is_empty(), "renewed past three leases");
    assert!(!heartbeat.is_lost());
    // Paused past its lease (as SIGSTOP would): the next beat finds it gone and says so.
    db.psql(&format!("UPDATE nodes SET lease_until = now() - interval '1 second' WHERE id = {}", me.id));
    tokio::time::timeout(lease * 2, heartbeat.lost()).await.expect("the loss is reported within a beat");
    assert!(heartbeat.is_lost());
    assert_eq!(queue::dead_nodes(&c).await.expect("dead").iter().map(|d| d.id).collect::<Vec<_>>(), [me.id]);
}

/// Claim + complete throughput of a backlog drained by `W` claimers, `k` per transaction (the
/// figure pg-probe's `backlog` mode calls "drain"). A benchmark, not a test: run by
/// `scripts/bench.sh` (PG_BENCH=1) on a durable server:
/// `GAFFER_TEST_PG_DURABLE=1 cargo test --release --lib pg_claim_complete_throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench.sh"]
async fn pg_claim_complete_throughput() {
    let db = test_db_or_skip!();
    let workers: usize = std::env::var("PG_BENCH_W").ok().and_then(|w| w.parse().ok()).unwrap_or(4);
    for (k, n) in [(1usize, 5_000usize), (10, 20_000), (64, 50_000)] {
        let store =
            PgStore::open(&db.url, PgOptions { pool_size: workers + 2, ..PgOptions::default() }).await.expect("open");
        let queue: &'static str = Box::leak(format!("bench-{k}").into_boxed_str());
        let started = std::time::Instant::now();
        enqueue(&store, queue, n).await;
        let enqueue_secs = started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        let mut drains = Vec::new();
        for w in 0..workers {
            let (store, me) = (store.clone(), node(&store, &format!("bench-{k}-{w}"), &[], LONG).await);
            drains.push(tokio::spawn(async move {
                let mut c = store.connection().await.expect("conn");
                let mut done = 0;
                loop {
                    let claimed = queue::claim(&mut c, &me, queue, k, None).await.expect("claim");
                    if claimed.is_empty() {
                        return done;
                    }
                    let outcomes: Vec<Outcome> = claimed.iter().map(succeeded).collect();
                    queue::complete(&c, &me, &outcomes).await.expect("complete");
                    done += claimed.len();
                }
            }));
        }
        let mut done = 0;
        for d in drains {
            done += d.await.expect("join");
        }
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(done, n);
        println!(
            "PG_BENCH k={k} W={workers} N={n}: drain (claim+complete) {:.0} tasks/s ({secs:.2} s); enqueue {:.0} tasks/s",
            n as f64 / secs,
            n as f64 / enqueue_secs
        );
    }
}

/// Letters are read in the order they were sent, by the node they are for: the owner of their
/// job run when read (`to_node` NULL: once per owner epoch, deleted by the commit that applies
/// them), or the node named (once: deleted on read); long texts are cut.
#[tokio::test]
async fn mail_reaches_its_job_runs_owner_or_its_node_in_order_once() {
    use super::mail::{self, Letter, MAX_TEXT_BYTES, Mail, Mailer};
    let db = test_db_or_skip!();
    let store = open(&db).await;
    let (owner, runner) = (node(&store, "owner", &[], LONG).await, node(&store, "runner", &[], LONG).await);
    let j = store.ids.next_job_run().await.expect("id");
    store.commit(vec![Mutation::JobRun(job_run(j))]).await.expect("commit");
    db.psql(&format!("UPDATE job_runs SET owner_node = {} WHERE id = {j}", owner.id));
    let mailer = Mailer::start(store.pool().clone());
    let letter = |to_node, mail| Letter { job_run: j, to_node, task_run: 7, attempt: 1, mail };
    let long = "é".repeat(MAX_TEXT_BYTES);
    mailer.send(letter(None, Mail::Started { node: runner.id, process: Some((1, 1, 0)) }));
    mailer.send(letter(None, Mail::Progress { text: long.clone() }));
    mailer.send(letter(Some(runner.id), Mail::Kill { reason: crate::model::FailReason::Cancelled, grace_ms: 5 }));
    mailer.send(letter(None, Mail::Warning { text: "w".into() }));
    let c = store.connection().await.expect("conn");
    let mut for_owner = Vec::new();
    for _ in 0..100 {
        for_owner.extend(mail::drain(&c, owner.id).await.expect("drain"));
        if for_owner.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kinds: Vec<_> = for_owner.iter().map(|r| std::mem::discriminant(&r.letter.mail)).collect();
    let expected = [
        Mail::Started { node: 0, process: None },
        Mail::Progress { text: String::new() },
        Mail::Warning { text: String::new() },
    ];
    assert_eq!(kinds, expected.iter().map(std::mem::discriminant).collect::<Vec<_>>(), "{for_owner:?}");
    let Mail::Progress { text } = &for_owner[1].letter.mail else { unreachable!() };
    assert!(text.len() <= MAX_TEXT_BYTES && long.starts_with(text.as_str()) && !text.is_empty(), "cut at a char");
    let for_runner = mail::drain(&c, runner.id).await.expect("drain");
    assert_eq!(for_runner.len(), 1, "{for_runner:?}");
    assert!(matches!(for_runner[0].letter.mail, Mail::Kill { grace_ms: 5, .. }));
    assert!(mail::drain(&c, runner.id).await.expect("drain").is_empty(), "a node's letter: read once");
    assert!(mail::drain(&c, owner.id).await.expect("drain").is_empty(), "read once by this owner epoch");
    assert_eq!(db.psql("SELECT count(*) FROM node_mail").trim(), "3", "kept until applied");
    let applied = for_owner.iter().map(|r| r.id).collect();
    store.commit(vec![Mutation::MailRead(j, applied)]).await.expect("the owner applies them");
    assert_eq!(db.psql("SELECT count(*) FROM node_mail").trim(), "0");
}

/// `task_runs`' sequential and index scans so far (`pg_stat_user_tables`, read fresh).
pub(super) fn task_runs_scans(db: &TestDb) -> (i64, i64) {
    let row = db.psql(
        "SELECT pg_stat_clear_snapshot(); \
         SELECT seq_scan || ' ' || idx_scan FROM pg_stat_user_tables WHERE relid = 'task_runs'::regclass",
    );
    let mut counts = row.split_whitespace().map(|n| n.parse::<i64>().expect("count"));
    (counts.next().expect("seq_scan"), counts.next().expect("idx_scan"))
}
