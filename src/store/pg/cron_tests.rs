//! Schedules fire once across the cluster (issue #11 item 5): the fire time is taken in the
//! transaction that creates its run, so nodes sharing the database never both start it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::testing::TestDb;
use super::{PgBackend, PgOptions, PgStore};
use crate::engine::EventData;
use crate::engine::seam_tests::config_on;
use crate::model::schedule::ScheduleState;
use crate::store::tests::job_run;
use crate::store::{Mutation, StoreHandle};

fn fired_at(last_fired_ms: u64) -> ScheduleState {
    ScheduleState {
        expression: "* * * * * *".into(),
        timezone: None,
        next_due_ms: last_fired_ms + 1_000,
        last_fired_ms: Some(last_fired_ms),
    }
}

#[tokio::test]
async fn a_fire_time_recorded_by_one_node_refuses_the_whole_batch_of_another() {
    let Some(db) = TestDb::get() else { return };
    let store = PgStore::open(&db.url, PgOptions::default()).await.expect("open");
    let fire =
        |job_run_id, at| vec![Mutation::JobRun(job_run(job_run_id)), Mutation::Schedule("c".into(), fired_at(at))];
    store.commit(fire(1, 5_000)).await.expect("the first fire of 5 s is taken");
    let lost = store.commit(fire(2, 5_000)).await.expect_err("5 s again");
    assert!(matches!(&lost, super::PgError::FireTaken { job } if job == "c"), "{lost:?}");
    let older = store.commit(fire(3, 4_000)).await.expect_err("an earlier fire time after a later one");
    assert!(matches!(older, super::PgError::FireTaken { .. }));
    store.commit(fire(4, 6_000)).await.expect("the next fire time");
    let out =
        db.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM job_runs; SELECT last_fired_ms FROM schedules");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["1,4", "6000"], "nothing of a lost fire is written");
    let snapshot = store.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.schedules().await.expect("read")["c"], fired_at(6_000));
}

/// Two engines ("nodes") on one database serve one schedule firing every second for a few
/// seconds: each fire time starts exactly one job run, whichever node took it.
#[test]
fn two_engines_on_one_database_start_one_run_per_fire_time() {
    let Some(db) = TestDb::get() else { return };
    let text = "[jobs.c]\nschedule = \"* * * * * *\"\noverlap = \"allow\"\n[jobs.c.tasks.t]\nrun = \"true\"\n";
    // Both resume (nothing) before either fires: without ownership (the cluster engine's), a
    // node starting later would resume the other's runs too.
    let started = Arc::new(std::sync::Barrier::new(2));
    let node = |url: String| {
        let started = started.clone();
        std::thread::spawn(move || {
            let dir = crate::state_dir::private_tempdir();
            let backend = Arc::new(PgBackend::open(&url, PgOptions::default()).expect("open the pg store"));
            let config = config_on(dir.path(), text, StoreHandle::new(backend));
            actix::System::new().block_on(async move {
                let handle = crate::engine::start(config);
                handle.resume_all().await.expect("resume");
                tokio::task::spawn_blocking(move || started.wait()).await.expect("both started");
                let mut events = handle.subscribe().await.expect("subscribe");
                handle.serve_schedules().await.expect("serve schedules");
                tokio::time::sleep(Duration::from_millis(3_500)).await;
                handle.shutdown().await;
                let mut fired = Vec::new();
                while let Ok(event) = events.try_recv() {
                    if let EventData::ScheduleFired { scheduled_for_ms } = event.data {
                        fired.push(scheduled_for_ms);
                    }
                }
                fired
            })
        })
    };
    let (a, b) = (node(db.url.clone()), node(db.url.clone()));
    let (a, b) = (a.join().expect("node a"), b.join().expect("node b"));
    let both: BTreeSet<u64> = a.iter().chain(&b).copied().collect();
    assert_eq!(both.len(), a.len() + b.len(), "a fire time started on both nodes: {a:?} {b:?}");
    assert!(both.len() >= 2, "the schedule fired: {a:?} {b:?}");
    let (first, last) = (*both.first().expect("one"), *both.last().expect("one"));
    assert_eq!(both.len() as u64, (last - first) / 1_000 + 1, "every fire time once, none missed: {both:?}");
    let runs = db.psql("SELECT count(*) FROM job_runs WHERE job = 'c'");
    assert_eq!(runs.trim(), both.len().to_string(), "one job run per fire time ({a:?} {b:?})");
}
