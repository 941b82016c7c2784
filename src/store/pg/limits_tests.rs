//! A queue's rate limit and circuit, and a job's active runs, hold across the cluster (issue
//! #11 §2): claims of several nodes at once are decided under the queue's lock from every
//! node's starts and failures; a run's creation counts every node's running runs of its job.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::queue::{self, Limits, Node, Outcome};
use super::testing::TestDb;
use super::tests::{LONG, enqueue, node, open, owner_wrote, succeeded};
use super::{PgError, PgStore};
use crate::config::{CircuitRule, RateLimit};
use crate::store::Mutation;
use crate::store::tests::job_run;

/// One claim as the claimer saw it: it was decided somewhere between `asked` and `answered`
/// (the database's clock is not the test's), and took `took` task runs.
#[derive(Debug, Clone, Copy)]
struct Seen {
    asked: Instant,
    answered: Instant,
    took: usize,
}

/// The most task runs claims that surely fell within one `window` took: claims asked at or
/// after one claim's ask and answered less than `window` after it. Sound whatever the delays
/// (it can only undercount), so more than the limit here is a real excess.
fn most_within(seen: &[Seen], window: Duration) -> usize {
    seen.iter()
        .map(|first| {
            let within = seen.iter().filter(|s| s.asked >= first.asked && s.answered < first.asked + window);
            within.map(|s| s.took).sum()
        })
        .max()
        .unwrap_or(0)
}

/// Two nodes (named after the queue) claim from `queue` at once for `run_for`, each up to 4 at a time, finishing what
/// they claim at once; every claim they made that took something.
async fn claim_from_two_nodes(store: &PgStore, queue: &'static str, limits: Limits, run_for: Duration) -> Vec<Seen> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut claimers = Vec::new();
    for n in 1..=2 {
        let node = node(store, &format!("{queue}-{n}"), &[], LONG).await;
        let (store, seen) = (store.clone(), seen.clone());
        claimers.push(tokio::spawn(async move { claim_until(store, node, queue, limits, run_for, seen).await }));
    }
    for c in claimers {
        c.await.expect("join");
    }
    Arc::try_unwrap(seen).expect("claimers ended").into_inner().expect("lock")
}

async fn claim_until(
    store: PgStore,
    node: Node,
    queue: &str,
    limits: Limits,
    run_for: Duration,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut c = store.connection().await.expect("conn");
    let until = Instant::now() + run_for;
    while Instant::now() < until {
        let asked = Instant::now();
        let claim = queue::claim_within(&mut c, &node, queue, 4, &limits).await.expect("claim");
        let answered = Instant::now();
        if claim.claimed.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        seen.lock().expect("lock").push(Seen { asked, answered, took: claim.claimed.len() });
        let outcomes: Vec<Outcome> = claim.claimed.iter().map(succeeded).collect();
        queue::complete(&c, &node, &outcomes).await.expect("complete");
        store.commit(claim.claimed.iter().map(owner_wrote).collect()).await.expect("commit");
    }
}

/// `3/1s` on a queue two nodes claim from as fast as they can: never more than 3 claimed in
/// any second, yet it lets work through (at about the limit); without the limit the same two
/// claimers take many more within a second, which the check sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_together_never_exceed_a_queues_rate_limit() {
    let Some(db) = TestDb::get() else { return };
    let store = open(&db).await;
    let limit = RateLimit { count: 3, window: Duration::from_secs(1) };
    enqueue(&store, "limited", 60).await;
    let limits = Limits { rate_limit: Some(limit), ..Limits::default() };
    let seen = claim_from_two_nodes(&store, "limited", limits, Duration::from_millis(2_600)).await;
    let took: usize = seen.iter().map(|s| s.took).sum();
    assert!(most_within(&seen, limit.window) <= 3, "more than 3 within a second: {seen:?}");
    // 2.6 s hold at most 3 windows' worth (9), and the limiter must not starve: at least 2 windows.
    assert!((6..=9).contains(&took), "{took} claimed in 2.6 s at 3/s");

    enqueue(&store, "unlimited", 60).await;
    let seen = claim_from_two_nodes(&store, "unlimited", Limits::default(), Duration::from_millis(300)).await;
    assert!(most_within(&seen, limit.window) > 3, "the check cannot see an excess: {seen:?}");
}

/// A circuit opened by one node's failures holds the queue on every node until it closes; the
/// failure that opened it is the only one that says so (once for the cluster).
#[tokio::test]
async fn a_circuit_opened_by_one_nodes_failures_holds_the_queue_on_every_node() {
    let Some(db) = TestDb::get() else { return };
    let store = open(&db).await;
    let rule = CircuitRule { failures: 2, within: Duration::from_secs(60), open_for: Duration::from_millis(1_500) };
    let limits = Limits { circuit: Some(rule), ..Limits::default() };
    enqueue(&store, "flaky", 4).await;
    let (n1, n2) = (node(&store, "n1", &[], LONG).await, node(&store, "n2", &[], LONG).await);
    let mut c = store.connection().await.expect("conn");
    assert_eq!(queue::record_failure(&mut c, "flaky", &limits).await.expect("record"), None, "one is no burst");
    let opened = queue::record_failure(&mut c, "flaky", &limits).await.expect("record").expect("the second opens it");
    assert!(opened > Duration::from_millis(1_000) && opened <= rule.open_for, "{opened:?}");
    assert_eq!(queue::record_failure(&mut c, "flaky", &limits).await.expect("record"), None, "open already");
    for node in [&n1, &n2] {
        let claim = queue::claim_within(&mut c, node, "flaky", 4, &limits).await.expect("claim");
        assert!(claim.claimed.is_empty(), "{} claimed from an open circuit", node.name);
        let open_for = claim.circuit_open_for.expect("it says the circuit is open");
        assert_eq!(claim.look_again_in, Some(open_for));
    }
    tokio::time::sleep(opened + Duration::from_millis(100)).await;
    let claim = queue::claim_within(&mut c, &n2, "flaky", 4, &limits).await.expect("claim");
    assert_eq!((claim.claimed.len(), claim.circuit_open_for), (4, None), "closed by itself");
}

/// The limits' reads use their indexes, never a scan, at a few thousand marks and job runs.
#[tokio::test]
async fn the_limits_read_their_marks_by_index() {
    let Some(db) = TestDb::get() else { return };
    let _store = open(&db).await;
    db.psql(
        "INSERT INTO queue_marks (queue, failure, at_ms) \
         SELECT 'q' || (i % 20), i % 7 = 0, (extract(epoch FROM now()) * 1000)::bigint - i FROM generate_series(1, 5000) i; \
         ANALYZE queue_marks; \
         INSERT INTO job_runs (id, job, state, record) \
         SELECT i, 'job' || (i % 20), CASE WHEN i % 50 = 0 THEN 'running' ELSE 'succeeded' END, '\\x00' \
         FROM generate_series(1, 5000) i; \
         ANALYZE job_runs",
    );
    let plans = [
        (queue::PRUNE_MARKS, "('q3', 60000)", "queue_marks_by_queue"),
        (queue::READ_MARKS, "('q3')", "queue_marks_by_queue"),
        (super::writer::ACTIVE_RUNS_BELOW, "('job3', 2, '{1,2}')", "job_runs_running_by_job"),
    ];
    for (sql, args, index) in plans {
        let plan =
            db.psql(&format!("SET plan_cache_mode = force_custom_plan; PREPARE p AS {sql}; EXPLAIN EXECUTE p{args}"));
        assert!(plan.contains(index) && !plan.contains("Seq Scan"), "{sql}:\n{plan}");
    }
}

/// Two nodes' stores each commit, at once, a new run of job `report` bounded to 2 active runs
/// (`Mutation::ActiveRunsBelow`): whatever the interleaving, 2 are taken in all, the others
/// are refused whole (`RunLimit`), and once one ends another is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_start_runs_of_a_job_past_its_limit() {
    let Some(db) = TestDb::get() else { return };
    let stores = [open(&db).await, open(&db).await];
    let start = |store: &PgStore, id: u64| {
        let batch = vec![Mutation::JobRun(job_run(id)), Mutation::ActiveRunsBelow("report".into(), 2)];
        let store = store.clone();
        tokio::spawn(async move { store.commit(batch).await })
    };
    let mut tries = Vec::new();
    for id in 1..=6 {
        tries.push(start(&stores[(id % 2) as usize], id));
    }
    let mut taken = Vec::new();
    for (id, t) in (1..=6).zip(tries) {
        match t.await.expect("join") {
            Ok(()) => taken.push(id),
            Err(PgError::RunLimit { job }) => assert_eq!(job, "report"),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(taken.len(), 2, "taken: {taken:?}");
    let running = db.psql("SELECT count(*) FROM job_runs WHERE job = 'report' AND state = 'running'");
    assert_eq!(running.trim(), "2", "nothing of a refused batch is written");
    let mut ended = job_run(taken[0]);
    ended.state = crate::model::JobState::Succeeded;
    stores[0].commit(vec![Mutation::JobRun(ended)]).await.expect("end one");
    start(&stores[1], 7).await.expect("join").expect("room again");
    // Another job's runs do not count.
    let mut other = job_run(8);
    other.job = "other".into();
    stores[0].commit(vec![Mutation::JobRun(other), Mutation::ActiveRunsBelow("other".into(), 1)]).await.expect("other");
}
