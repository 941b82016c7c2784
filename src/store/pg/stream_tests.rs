//! What every node sees of the others through PostgreSQL (issue #11 item 6): the event stream in
//! commit order per job run, attempts' logs shipped while they run and read where the file is
//! not, and the nodes with their heartbeat age.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::testing::TestDb;
use super::{PgBackend, PgOptions, PgStore};
use crate::engine::seam_tests::config_on;
use crate::engine::{EngineConfig, EngineHandle, SubmitRequest};
use crate::model::JobState;
use crate::store::{Store, StoreHandle, StoreLocation};

/// Polls `check` every 50 ms for at most 10 s.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts an engine on `config` in an actix system of its own, runs `body` with it, stops it.
fn with_engine<T: Send + 'static, F>(config: EngineConfig, body: impl FnOnce(EngineHandle) -> F + Send + 'static) -> T
where
    F: Future<Output = (EngineHandle, T)>,
{
    actix::System::new().block_on(async move {
        let handle = crate::engine::start(config);
        handle.resume_all().await.expect("resume");
        let (handle, answer) = body(handle).await;
        handle.shutdown().await;
        answer
    })
}

fn pg(db: &TestDb) -> Arc<PgBackend> {
    Arc::new(PgBackend::open(&db.url, PgOptions::default()).expect("open the pg store"))
}

/// Two nodes each run a job run at the same time: the stream holds every event of both, each
/// job run's in the order its node published them (its commit order), with increasing `seq`,
/// and a reader pages through it from any `seq`.
#[test]
fn the_event_stream_holds_both_nodes_events_in_commit_order_per_job_run() {
    let Some(db) = TestDb::get() else { return };
    let text = "[jobs.j.tasks.a]\nrun = \"echo a\"\n[jobs.j.tasks.b]\nneeds = [\"a\"]\nrun = \"echo b\"\n";
    // Both nodes have resumed (found nothing) before either submits: without ownership (the
    // cluster engine's), a node starting later would resume the other's run as its own.
    let started = Arc::new(std::sync::Barrier::new(2));
    let node = |backend: Arc<PgBackend>| {
        let started = started.clone();
        std::thread::spawn(move || {
            let dir = crate::state_dir::private_tempdir();
            let config = config_on(dir.path(), text, StoreHandle::new(backend));
            let (id, mut events) = with_engine(config, |handle| async move {
                tokio::task::spawn_blocking(move || started.wait()).await.expect("both started");
                let events = handle.subscribe().await.expect("subscribe");
                let id = handle.submit_request(SubmitRequest { job: "j".into(), ..Default::default() }).await;
                let id = id.expect("submit").job_run;
                assert_eq!(handle.wait(vec![id]).await.expect("wait"), [(id, JobState::Succeeded)]);
                (handle, (id, events))
            });
            // After the stop: every event this node published, up to its last.
            let mut published = Vec::new();
            while let Ok(e) = events.try_recv() {
                published.push(crate::json::text(&e.to_json()));
            }
            (id, published)
        })
    };
    let backends = [pg(&db), pg(&db)];
    let (a, b) = (node(backends[0].clone()), node(backends[1].clone()));
    let published: BTreeMap<u64, Vec<String>> =
        [a.join().expect("node a"), b.join().expect("node b")].into_iter().collect();
    let total: usize = published.values().map(Vec::len).sum();
    let reader = StoreLocation::Postgres(db.url.clone());
    let stream = eventually("every event in the stream", || {
        let events = reader.snapshot().expect("snapshot").events_after(0, 10_000).expect("read").expect("kept");
        (events.len() >= total).then_some(events)
    });
    let extra: Vec<&String> =
        stream.iter().map(|e| &e.json).filter(|j| !published.values().flatten().any(|p| p == *j)).collect();
    assert_eq!(stream.len(), total, "each event once; not published: {extra:?}");
    assert!(stream.windows(2).all(|w| w[0].seq < w[1].seq), "in seq order");
    for (id, lines) in &published {
        let of_run: Vec<&String> = stream.iter().filter(|e| e.job_run == Some(*id)).map(|e| &e.json).collect();
        assert_eq!(of_run, lines.iter().collect::<Vec<_>>(), "job run j{id}'s events, in its order");
        assert!(lines.iter().any(|l| l.contains("\"job.succeeded\"")), "{lines:?}");
    }
    let middle = stream[total / 2].seq;
    let page = reader.snapshot().expect("snapshot").events_after(middle, 3).expect("read").expect("kept");
    assert_eq!(page, stream[total / 2 + 1..total / 2 + 4].to_vec(), "a page after a seq");
    // Retention: the events from before a time go, the later ones stay.
    let cutoff = stream[total / 2].at_ms;
    backends[0].forget_past_retention(&[], cutoff).expect("retention");
    let kept = reader.snapshot().expect("snapshot").events_after(0, 10_000).expect("read").expect("kept");
    let later: Vec<_> = stream.iter().filter(|e| e.at_ms >= cutoff).cloned().collect();
    assert_eq!(kept, later, "events past retention removed");
    drop(backends);
}

/// An attempt's log is in the database while it still runs, and all of it after it ended, in
/// 64 KiB chunks; `logs` (`report::log_chunk`) reads it there from a state dir that never had
/// the file, from any offset.
#[test]
fn a_log_is_shipped_while_its_attempt_runs_and_read_where_the_file_is_not() {
    let Some(db) = TestDb::get() else { return };
    let dir = crate::state_dir::private_tempdir();
    let go = dir.path().join("go");
    let text = format!(
        "[jobs.j.tasks.t]\nrun = \"echo first line; while ! test -e '{go}'; do sleep 0.05; done; \
         head -c 150000 /dev/zero | tr '\\\\0' x; echo; echo last line\"\n",
        go = go.display()
    );
    let backend = pg(&db);
    let config = config_on(dir.path(), &text, StoreHandle::new(backend.clone()));
    let elsewhere = crate::state_dir::private_tempdir();
    let reader = StoreLocation::Postgres(db.url.clone());
    let (url, other_dir) = (db.url.clone(), elsewhere.path().to_path_buf());
    let log_of = move |task_run: u64, offset: u64| log_chunk(&url, &other_dir, task_run, offset);
    let log_here = log_of.clone();
    let (job_run, task_run, local) = with_engine(config, move |handle| async move {
        let id = handle.submit("j", BTreeMap::new()).await.expect("submit");
        let task_run = loop {
            let runs = handle.task_runs_of(id).await.expect("task runs");
            if let Some(t) = runs.first().filter(|t| t.attempt == 1) {
                break t.id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let live = tokio::task::spawn_blocking(move || {
            eventually("the first line shipped while the attempt runs", || {
                let chunk = log_here(task_run, 0);
                (chunk["text"] == "first line\n").then_some(chunk)
            })
        })
        .await
        .expect("poll");
        assert_eq!(live["running"], true, "{live}");
        std::fs::write(&go, "").expect("go");
        handle.wait(vec![id]).await.expect("wait");
        let snapshot = handle.task_runs_of(id).await.expect("task runs");
        let job_run = snapshot[0].job_run;
        let rel = crate::store::AttemptRecord::log_path(job_run, task_run, 1);
        (handle, (job_run, task_run, std::fs::read(dir.path().join(rel)).expect("the local log")))
    });
    let expected = format!("first line\n{}\nlast line\n", "x".repeat(150_000));
    assert_eq!(String::from_utf8_lossy(&local), expected, "the local file");
    let snapshot = reader.snapshot().expect("snapshot");
    let shipped = snapshot.log_bytes(task_run, 1, 0, 1 << 20).expect("read").expect("kept");
    assert_eq!(shipped, local, "the database holds the whole log");
    let part = snapshot.log_bytes(task_run, 1, 70_000, 100).expect("read").expect("kept");
    assert_eq!(part, local[70_000..70_100], "a range across chunk boundaries");
    let rows = db.psql(&format!("SELECT count(*), max(length(bytes)) FROM log_chunks WHERE task_run = {task_run}"));
    let rows: Vec<u64> = rows.split(['|', ' ', '\n']).filter_map(|n| n.trim().parse().ok()).collect();
    assert!(rows[0] >= 3 && rows[1] <= 64 * 1024, "chunks of at most 64 KiB: {rows:?}");
    let (mut read, mut offset) = (String::new(), 0);
    loop {
        let chunk = log_of(task_run, offset);
        read.push_str(chunk["text"].as_str().expect("text"));
        let next = chunk["offset"].as_u64().expect("offset");
        if next == offset {
            break;
        }
        offset = next;
    }
    assert_eq!(read, expected, "`logs` from a node without the file");
    backend.forget_past_retention(&[job_run + 1], 0).expect("retention of another job run");
    assert!(!log_of(task_run, 0)["text"].as_str().expect("text").is_empty(), "kept");
    backend.forget_past_retention(&[job_run], 0).expect("retention");
    assert_eq!(log_of(task_run, 0)["text"], "", "removed past retention");
}

/// `logs`' read of one piece of a log, as a reader with `state_dir` (which lacks the file) makes it.
fn log_chunk(url: &str, state_dir: &std::path::Path, task_run: u64, offset: u64) -> serde_json::Value {
    let snapshot = StoreLocation::Postgres(url.to_string()).snapshot().expect("snapshot");
    crate::report::log_chunk(state_dir, &*snapshot, task_run, None, offset).expect("log chunk")
}

/// `status` on PostgreSQL lists the nodes: name, labels, heartbeat age and whether their lease
/// is live, at the database's clock.
#[tokio::test]
async fn the_nodes_are_listed_with_heartbeat_age_and_liveness() {
    let Some(db) = TestDb::get() else { return };
    let store = PgStore::open(&db.url, PgOptions::default()).await.expect("open");
    let mut c = store.connection().await.expect("conn");
    let labels = vec!["gpu".to_string(), "eu".to_string()];
    super::queue::register_node(&mut c, "b-node", &labels, Duration::from_secs(30)).await.expect("register");
    super::queue::register_node(&mut c, "a-node", &[], Duration::from_millis(1)).await.expect("register");
    c.batch_execute("UPDATE nodes SET heartbeat_at = now() - interval '42 seconds' WHERE name = 'a-node'")
        .await
        .expect("age it");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let nodes = store.snapshot().await.expect("snapshot").nodes().await.expect("nodes");
    let seen: Vec<_> = nodes.iter().map(|n| (n.name.as_str(), n.labels.clone(), n.live)).collect();
    assert_eq!(seen, [("a-node", vec![], false), ("b-node", labels, true)]);
    assert!((42_000..60_000).contains(&nodes[0].heartbeat_age_ms), "{nodes:?}");
    assert!(nodes[1].heartbeat_age_ms < 10_000, "{nodes:?}");
    let url = db.url.clone();
    let listed = tokio::task::spawn_blocking(move || {
        let snapshot = StoreLocation::Postgres(url).snapshot().expect("snapshot");
        crate::report::nodes_json(&snapshot.nodes().expect("read").expect("a cluster's nodes"))
    })
    .await
    .expect("read");
    assert_eq!(listed[1]["name"], "b-node");
    assert_eq!(listed[1]["labels"], serde_json::json!(["gpu", "eu"]));
    assert_eq!((listed[0]["live"].clone(), listed[1]["live"].clone()), (false.into(), true.into()), "{listed}");
}

/// The stream in rows of many events (migration 7): a row of schema 6 still reads as one event;
/// pages of any size cut through rows; a follower gets only the other nodes' events, its own
/// rows' lines never sent; retention removes the events past it from a row holding later ones,
/// which keep their places.
#[tokio::test]
async fn events_in_rows_read_page_and_expire_one_by_one() {
    use super::events::{EventLog, events_after, forget_before, last_seq};
    use crate::store::StoredEvent;
    let Some(db) = TestDb::get() else { return };
    let store = PgStore::open(&db.url, PgOptions::default()).await.expect("open");
    // A row as schema 6 wrote it: one event, its place from the sequence.
    db.psql("INSERT INTO events (job_run, at_ms, json) VALUES (1, 100, '{\"old\":1}')");
    let (a, b) = (EventLog::start(store.pool().clone()), EventLog::start(store.pool().clone()));
    let event = |n: u64| StoredEvent { seq: 0, job_run: Some(n % 3), at_ms: 1_000 + n, json: format!("{{\"n\":{n}}}") };
    for n in 0..10 {
        a.record(event(n));
    }
    a.drained(Duration::from_secs(10)).await;
    for n in 10..15 {
        b.record(event(n));
    }
    b.drained(Duration::from_secs(10)).await;
    let c = store.connection().await.expect("conn");
    let all = events_after(&c, 0, 1_000).await.expect("read");
    let lines: Vec<&str> = all.iter().map(|e| e.json.as_str()).collect();
    let expected: Vec<String> =
        std::iter::once("{\"old\":1}".to_string()).chain((0..15).map(|n| format!("{{\"n\":{n}}}"))).collect();
    assert_eq!(lines, expected, "every event once, in order");
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "increasing places: {all:?}");
    assert_eq!(all[3].job_run, Some(2));
    assert_eq!(all[3].at_ms, 1_002);
    assert_eq!(last_seq(&c).await.expect("last"), all[15].seq);
    let rows: usize = db.psql("SELECT count(*) FROM events").trim().parse().expect("count");
    assert!(rows < 16, "events share rows: {rows} rows for 16 events");
    // Pages through rows, from any place.
    for size in [1, 2, 3, 7] {
        let (mut read, mut after) = (Vec::new(), 0);
        loop {
            let page = events_after(&c, after, size).await.expect("page");
            // Full while enough events remain, also when the page ends inside a row.
            assert_eq!(page.len(), size.min(all.len() - read.len()), "a page of {size} after {after}");
            let Some(last) = page.last() else { break };
            after = last.seq;
            read.extend(page);
        }
        assert_eq!(read, all, "pages of {size}");
    }
    // Each follower: the other's events only.
    let (last, from_b) = a.follow(&c, all[0].seq, 1_000).await.expect("follow");
    assert_eq!(last, all[15].seq);
    assert_eq!(from_b, all[11..].to_vec(), "a sees b's events only");
    let (_, from_a) = b.follow(&c, 0, 1_000).await.expect("follow");
    assert_eq!(from_a, all[..11].to_vec(), "b sees a's (and the old row)");
    // Retention at 1_004: the old row goes, and events 0–3 from a's rows; the rest keep their places.
    forget_before(store.pool(), 1_004).await.expect("retention");
    let kept = events_after(&c, 0, 1_000).await.expect("read");
    assert_eq!(kept, all[5..].to_vec(), "past retention removed, one by one");
    forget_before(store.pool(), 2_000).await.expect("retention");
    assert!(events_after(&c, 0, 1_000).await.expect("read").is_empty());
}
