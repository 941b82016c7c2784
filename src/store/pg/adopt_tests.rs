//! Ownership, epoch fencing and adoption against a real PostgreSQL (issue #11 §3): two stores
//! on one database are two nodes.

use std::time::Duration;

use super::adopt::{Adopted, RunningAttempt, adopt_orphaned_job_runs, running_attempts};
use super::queue::{self, Node, Outcome, Verdict};
use super::testing::TestDb;
use super::*;
use crate::model::TaskState;
use crate::model::lease::Refused;
use crate::store::records::AttemptRecord;
use crate::store::tests::job_run;
use crate::store::{Mutation, StoreError};

const LONG: Duration = Duration::from_secs(600);

async fn node_store(db: &TestDb, name: &str) -> (PgStore, Node) {
    let store = PgStore::open(&db.url, PgOptions::default()).await.expect("open the pg store");
    let mut c = store.connection().await.expect("conn");
    let node = queue::register_node(&mut c, name, &[], LONG).await.expect("register");
    store.ownership.join(node.id as u64);
    (store, node)
}

fn running(id: u64, job_run: u64) -> TaskRunRecord {
    let mut t = TaskRunRecord::pending(id, job_run, "report", "sleep", 1);
    t.state = TaskState::Running;
    t.attempt = 1;
    t
}

fn fenced(result: Result<(), PgError>) -> Option<u64> {
    match result {
        Err(PgError::Fenced { job_run }) => Some(job_run),
        Ok(()) => None,
        Err(e) => panic!("not a fence: {e}"),
    }
}

fn one_line(db: &TestDb, sql: &str) -> String {
    db.psql(sql).trim().to_string()
}

#[tokio::test]
async fn the_old_owners_commits_are_fenced_after_adoption_and_the_rest_of_its_group_commits() {
    let Some(db) = TestDb::get() else { return };
    let (a, node_a) = node_store(&db, "a").await;
    let (b, node_b) = node_store(&db, "b").await;

    // A creates j: it owns it at epoch 1, and the task run it starts runs on A.
    let j = a.ids.next_job_run().await.expect("id");
    let (t, t2) = (a.ids.next_task_run().await.expect("id"), a.ids.next_task_run().await.expect("id"));
    let created = vec![
        Mutation::JobRun(job_run(j)),
        Mutation::TaskRun(running(t, j)),
        Mutation::TaskRun(running(t2, j)),
        Mutation::Attempt(AttemptRecord::started(t, j, 1, 5)),
    ];
    a.commit(created).await.expect("a creation is taken");
    assert_eq!(one_line(&db, &format!("SELECT owner_node, owner_epoch FROM job_runs WHERE id = {j}")), {
        format!("{}|1", node_a.id)
    });
    assert_eq!(one_line(&db, &format!("SELECT node FROM task_runs WHERE id = {t}")), node_a.id.to_string());
    assert_eq!(a.ownership.epoch(j), Some(1));
    // t2 was claimed by B (a live node): its attempt runs there.
    db.psql(&format!("UPDATE task_runs SET node = {} WHERE id = {t2}", node_b.id));
    a.commit(vec![Mutation::TaskRun(running(t2, j))]).await.expect("the owner's commit");
    assert_eq!(one_line(&db, &format!("SELECT node FROM task_runs WHERE id = {t2}")), node_b.id.to_string());

    // B does not own j: its commit for it is fenced, nothing written; nor may it adopt j yet.
    let mut queued = running(t, j);
    queued.state = TaskState::Queued;
    assert_eq!(fenced(b.commit(vec![Mutation::TaskRun(queued.clone())]).await), Some(j));
    assert_eq!(one_line(&db, &format!("SELECT state FROM task_runs WHERE id = {t}")), "running");
    let mut c = b.connection().await.expect("conn");
    assert_eq!(adopt_orphaned_job_runs(&c, &node_b, 10).await.expect("adopt"), [], "A is live");

    // A's lease runs out: B adopts j at epoch 2; A's attempt is orphaned, the one on B is not.
    db.psql(&format!("UPDATE nodes SET lease_until = now() - interval '1s' WHERE id = {}", node_a.id));
    let adopted = adopt_orphaned_job_runs(&c, &node_b, 10).await.expect("adopt");
    assert_eq!(adopted, [Adopted { job_run: j, epoch: 2 }]);
    b.ownership.adopted(j, 2);
    assert_eq!(adopt_orphaned_job_runs(&c, &node_b, 10).await.expect("adopt"), [], "adopted once");
    let b_id = node_b.id as u64;
    assert_eq!(
        running_attempts(&c, j).await.expect("running"),
        [
            RunningAttempt { task_run: t, attempt: 1, node: Some(node_a.id as u64), orphaned: true },
            RunningAttempt { task_run: t2, attempt: 1, node: Some(b_id), orphaned: false },
        ]
    );

    // A's late outcome is refused: its lease passed.
    let outcome: Outcome = AttemptRecord::started(t, j, 1, 5);
    let verdict = queue::complete(&c, &node_a, &[outcome]).await.expect("complete");
    assert_eq!(verdict, [Verdict::Refused(Refused::LeaseExpired)]);

    // A commits two batches at once: the one for j is fenced out, the creation of j2 beside it
    // in the same group is taken (and A, dead or not, owns j2 until someone adopts it).
    let j2 = a.ids.next_job_run().await.expect("id");
    let before = a.commit_count();
    let (late, other) =
        tokio::join!(a.commit(vec![Mutation::TaskRun(queued.clone())]), a.commit(vec![Mutation::JobRun(job_run(j2))]));
    assert_eq!(fenced(late), Some(j));
    assert_eq!(fenced(other), None);
    assert_eq!(a.commit_count(), before + 1, "both batches shared one transaction");
    assert_eq!(one_line(&db, &format!("SELECT state FROM task_runs WHERE id = {t}")), "running");
    assert_eq!(one_line(&db, &format!("SELECT owner_node, owner_epoch FROM job_runs WHERE id = {j2}")), {
        format!("{}|1", node_a.id)
    });
    assert_eq!((a.ownership.epoch(j), a.ownership.epoch(j2)), (None, Some(1)), "A forgot j");

    // The new owner records the interrupted attempt and queues the retry at its epoch.
    let mut interrupted = AttemptRecord::started(t, j, 1, 5);
    interrupted.reason = Some(crate::model::FailReason::Interrupted);
    b.commit(vec![Mutation::Attempt(interrupted), Mutation::TaskRun(queued)]).await.expect("the new owner's commit");
    let row = one_line(&db, &format!("SELECT state, coalesce(node, 0) FROM task_runs WHERE id = {t}"));
    assert_eq!(row, "queued|0", "no node runs it any more");
    c = b.connection().await.expect("conn");
    assert!(running_attempts(&c, j).await.expect("running").iter().all(|r| r.task_run != t));

    // Through the seam, a fenced commit is `StoreError::Fenced`.
    assert!(matches!(StoreError::from(PgError::Fenced { job_run: j }), StoreError::Fenced { job_run } if job_run == j));
}

#[tokio::test]
async fn a_store_without_a_node_fences_nothing_and_owns_nothing() {
    let Some(db) = TestDb::get() else { return };
    let plain = PgStore::open(&db.url, PgOptions::default()).await.expect("open");
    let j = plain.ids.next_job_run().await.expect("id");
    let t = plain.ids.next_task_run().await.expect("id");
    plain.commit(vec![Mutation::JobRun(job_run(j)), Mutation::TaskRun(running(t, j))]).await.expect("commit");
    db.psql(&format!("UPDATE job_runs SET owner_node = 42, owner_epoch = 9 WHERE id = {j}"));
    plain.commit(vec![Mutation::TaskRun(running(t, j))]).await.expect("not fenced");
    let row = one_line(&db, &format!("SELECT owner_node, owner_epoch FROM job_runs WHERE id = {j}"));
    assert_eq!(row, "42|9", "a commit never changes the owner");
    assert_eq!(one_line(&db, &format!("SELECT coalesce(node, 0) FROM task_runs WHERE id = {t}")), "0");
    assert!(plain.ownership.owned().is_empty());
}

/// The kill -9 flake of `tests/cluster_nodes.rs`: an owner read `Ended` letters and died before
/// the commit applying them. The letters are not lost: its adopter (a new epoch) reads them
/// again; a letter applied by the commit of an owner is gone; a fenced commit deletes nothing.
#[tokio::test]
async fn letters_an_owner_read_but_never_applied_are_read_again_by_its_adopter() {
    use super::mail::{self, Letter, Mail, Mailer};
    let Some(db) = TestDb::get() else { return };
    let (a, node_a) = node_store(&db, "a").await;
    let (b, node_b) = node_store(&db, "b").await;
    let j = a.ids.next_job_run().await.expect("id");
    a.commit(vec![Mutation::JobRun(job_run(j))]).await.expect("a creation is taken");

    let mailer = Mailer::start(b.pool().clone());
    let ended = |task_run| Letter {
        job_run: j,
        to_node: None,
        task_run,
        attempt: 1,
        mail: Mail::Ended { exit_code: Some(0), signal: None, reason: None, detail: None, outputs: Default::default() },
    };
    for t in [3, 4, 5] {
        mailer.send(ended(t));
    }
    let c = a.connection().await.expect("conn");
    let mut read = Vec::new();
    for _ in 0..100 {
        read.extend(mail::drain(&c, node_a.id).await.expect("drain"));
        if read.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(read.iter().map(|r| r.letter.task_run).collect::<Vec<_>>(), [3, 4, 5]);
    // A applies the first letter (its commit deletes it), then dies before applying the others.
    a.commit(vec![Mutation::MailRead(j, vec![read[0].id])]).await.expect("the owner's commit");
    assert!(mail::drain(&c, node_a.id).await.expect("drain").is_empty(), "A read them already");
    db.psql(&format!("UPDATE nodes SET lease_until = now() - interval '1s' WHERE id = {}", node_a.id));
    let cb = b.connection().await.expect("conn");
    let adopted = adopt_orphaned_job_runs(&cb, &node_b, 10).await.expect("adopt");
    assert_eq!(adopted, [Adopted { job_run: j, epoch: 2 }]);
    b.ownership.adopted(j, 2);

    // A's late commit applying them is fenced: nothing deleted. B reads the two A never applied.
    let late = a.commit(vec![Mutation::MailRead(j, vec![read[1].id, read[2].id])]).await;
    assert_eq!(fenced(late), Some(j));
    let again = mail::drain(&cb, node_b.id).await.expect("drain");
    assert_eq!(again.iter().map(|r| r.letter.task_run).collect::<Vec<_>>(), [4, 5], "{again:?}");
    assert!(mail::drain(&cb, node_b.id).await.expect("drain").is_empty(), "once per epoch");
    b.commit(vec![Mutation::MailRead(j, again.iter().map(|r| r.id).collect())]).await.expect("B applies them");
    assert_eq!(one_line(&db, "SELECT count(*) FROM node_mail"), "0");
}

/// Letters that come after their job run ended (a late `Progress`) are deleted by the owner's
/// next read, not kept for ever.
#[tokio::test]
async fn letters_of_an_ended_job_run_are_deleted_by_its_owners_next_read() {
    use super::mail::{self, Letter, Mail, Mailer};
    let Some(db) = TestDb::get() else { return };
    let (a, node_a) = node_store(&db, "a").await;
    let j = a.ids.next_job_run().await.expect("id");
    let mut record = job_run(j);
    a.commit(vec![Mutation::JobRun(record.clone())]).await.expect("created");
    record.state = crate::model::JobState::Succeeded;
    a.commit(vec![Mutation::JobRun(record)]).await.expect("ended");
    let mailer = Mailer::start(a.pool().clone());
    mailer.send(Letter {
        job_run: j,
        to_node: None,
        task_run: 3,
        attempt: 1,
        mail: Mail::Progress { text: "late".into() },
    });
    for _ in 0..100 {
        if one_line(&db, "SELECT count(*) FROM node_mail") == "1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = a.connection().await.expect("conn");
    assert!(mail::drain(&c, node_a.id).await.expect("drain").is_empty());
    assert_eq!(one_line(&db, "SELECT count(*) FROM node_mail"), "0");
}

/// A node paused (SIGSTOP) in the middle of a commit holds its job run's row lock, and adoption
/// skips locked rows: the server ends such a session (`IDLE_IN_TRANSACTION_MS`), so the job run
/// is adopted once the paused node's lease ran out (a `cluster_nodes` flake: adopted only when
/// the paused node was let go on).
#[tokio::test]
async fn a_node_paused_inside_a_transaction_does_not_keep_its_job_runs_from_adoption() {
    let Some(db) = TestDb::get() else { return };
    let (a, node_a) = node_store(&db, "a").await;
    let (b, node_b) = node_store(&db, "b").await;
    let j = a.ids.next_job_run().await.expect("id");
    a.commit(vec![Mutation::JobRun(job_run(j))]).await.expect("a creation is taken");
    // A's commit of j stops half-way: the row is locked, the transaction open, A silent.
    let mut paused = a.connection().await.expect("conn");
    let tx = paused.transaction().await.expect("begin");
    tx.query("SELECT id FROM job_runs WHERE id = $1 FOR UPDATE", &[&(j as i64)]).await.expect("lock");
    db.psql(&format!("UPDATE nodes SET lease_until = now() - interval '1s' WHERE id = {}", node_a.id));
    let c = b.connection().await.expect("conn");
    let limit = Duration::from_millis(super::IDLE_IN_TRANSACTION_MS) + Duration::from_secs(5);
    let started = std::time::Instant::now();
    let adopted = loop {
        let adopted = adopt_orphaned_job_runs(&c, &node_b, 10).await.expect("adopt");
        if !adopted.is_empty() || started.elapsed() > limit {
            break adopted;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(adopted, [Adopted { job_run: j, epoch: 2 }], "still locked after {:?}", started.elapsed());
    assert!(tx.commit().await.is_err(), "the paused session was ended");
}
