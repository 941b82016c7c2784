//! A queue's rate limit and circuit hold across the cluster (issue #11 §2): claims of several
//! nodes at once are decided under the queue's lock from every node's starts and failures.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::PgStore;
use super::queue::{self, Limits, Node, Outcome};
use super::testing::TestDb;
use super::tests::{LONG, enqueue, node, open, owner_wrote, succeeded};
use crate::config::{CircuitRule, RateLimit};

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

/// The limits' reads use `queue_marks`' index, never a scan, at a few thousand marks.
#[tokio::test]
async fn the_limits_read_their_marks_by_index() {
    let Some(db) = TestDb::get() else { return };
    let _store = open(&db).await;
    db.psql(
        "INSERT INTO queue_marks (queue, failure, at_ms) \
         SELECT 'q' || (i % 20), i % 7 = 0, (extract(epoch FROM now()) * 1000)::bigint - i FROM generate_series(1, 5000) i; \
         ANALYZE queue_marks",
    );
    for (sql, args) in [(queue::PRUNE_MARKS, "('q3', 60000)"), (queue::READ_MARKS, "('q3')")] {
        let plan =
            db.psql(&format!("SET plan_cache_mode = force_custom_plan; PREPARE p AS {sql}; EXPLAIN EXECUTE p{args}"));
        assert!(plan.contains("queue_marks_by_queue") && !plan.contains("Seq Scan"), "{sql}:\n{plan}");
    }
}
