//! Leases and fencing of a gaffer cluster (issue #11 §3 and §7, CLUSTER-DESIGN.md): which node
//! is alive, which node decides for a job run, and whose word about an attempt the store takes.
//!
//! Three facts live in the store and are judged at the **store's clock** (`now()` of PostgreSQL,
//! `store_now_ms` here), never a node's:
//!
//! - a node's lease, `nodes.lease_until`: the node is live while `lease_until > now()`. It is
//!   renewed every lease/3 and **never revived**: once it passed, that node id is dead for good
//!   (it may rejoin only under a new id), so a reaper that saw it dead can act on that knowledge
//!   later without asking again;
//! - a job run's owner and epoch, `job_runs.owner_node/owner_epoch`: the node whose commits for
//!   that job run are taken; adopting bumps the epoch, so the old owner's late commits are refused;
//! - a task run's fence, `task_runs.state/node/attempt`: the attempt that runs now and where.
//!
//! Every function here says, in its doc, the exact SQL predicate the PostgreSQL backend
//! (`store::pg`) must use for the same decision, so the two can be compared line by line.
//!
//! `check.rs` (tests only) explores every interleaving of a small cluster — claims, starts,
//! renewals, delayed messages (a partition), paused nodes (SIGSTOP), crashes, adoptions, reaps,
//! outcomes — through these very functions, and asserts that no task run ever has two attempts
//! the store accepts. The default bounds (2 machines, 1 task run, 3 ticks of a 3-tick lease,
//! 62k states) take seconds; bigger ones: `GAFFER_LEASE_CHECK=big cargo nextest run -E
//! 'test(lease_rules_hold)'`, or `GAFFER_LEASE_CHECK=machines=3,time=4,joins=2,crashes=1,resend=1`
//! (keys in `check.rs`, `bounds_from_env`; states grow about fivefold per tick).

use crate::config::RetryPolicy;
use crate::model::policy::{AfterAttempt, AttemptOutcome, RunSoFar, after_attempt};
use crate::model::{FailReason, TaskState};

#[cfg(test)]
mod check;

/// A node's id: `nodes.id`. A node that rejoins after its lease expired gets a new one.
pub type NodeId = u64;

/// The lease a node holds unless configured otherwise.
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// Below this, one slow commit or a short stall (lease/3 = 1 s) costs a node its work.
pub const MIN_LEASE_MS: u64 = 3_000;
/// Above this, a dead node's task runs wait too long (ten minutes) before they run elsewhere.
pub const MAX_LEASE_MS: u64 = 600_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("lease of {0} ms is out of bounds: it must be between {MIN_LEASE_MS} and {MAX_LEASE_MS} ms")]
    OutOfBounds(u64),
}

/// A configured lease length, checked against its bounds.
pub fn check_lease_ms(lease_ms: u64) -> Result<u64, LeaseError> {
    if (MIN_LEASE_MS..=MAX_LEASE_MS).contains(&lease_ms) {
        Ok(lease_ms)
    } else {
        Err(LeaseError::OutOfBounds(lease_ms))
    }
}

/// How often a node renews: three chances per lease, so one lost or slow heartbeat costs nothing.
pub fn renew_every_ms(lease_ms: u64) -> u64 {
    lease_ms / 3
}

/// The lease a join or a renewal writes. SQL: `lease_until = now() + $lease`.
pub fn lease_until_ms(store_now_ms: u64, lease_ms: u64) -> u64 {
    store_now_ms.saturating_add(lease_ms)
}

/// Whether a node is live at the store's clock. SQL: `nodes.lease_until > now()`; "node $n is
/// live" below always means `EXISTS (SELECT 1 FROM nodes WHERE id = $n AND lease_until > now())`.
pub fn is_live(lease_until_ms: u64, store_now_ms: u64) -> bool {
    store_now_ms < lease_until_ms
}

/// A renewal: the new `lease_until`, or `None` when the lease already passed — then the node is
/// dead for good and must do [`ExpiredDuties`] (a dead lease is never revived, or a reaper's
/// earlier "it is dead" would stop being true under its feet). SQL:
/// `UPDATE nodes SET heartbeat_at = now(), lease_until = now() + $lease
///  WHERE id = $me AND lease_until > now() RETURNING lease_until` — no row: expired.
pub fn renewal(lease_until_ms_now: u64, store_now_ms: u64, lease_ms: u64) -> Option<u64> {
    is_live(lease_until_ms_now, store_now_ms).then(|| lease_until_ms(store_now_ms, lease_ms))
}

/// What a node believes of its own lease after the store acknowledged a renewal it sent at
/// `sent_at_local_ms` (its own monotonic clock). The store computed `lease_until` from a `now()`
/// no earlier than the send, so `sent + lease` never outlives the store's lease (assuming the two
/// clocks run at the same rate; a pause of the node does not matter, the clock runs on). Counting
/// from the acknowledgement instead would overestimate by the round trip.
pub fn believed_until_ms(sent_at_local_ms: u64, lease_ms: u64) -> u64 {
    sent_at_local_ms.saturating_add(lease_ms)
}

/// What a node does about its own lease at `local_now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnLease {
    /// Live; nothing to send yet.
    Live,
    /// Live, and a renewal is due (none in flight, lease/3 since the last one was sent).
    RenewDue,
    /// Its lease may have passed at the store: do [`ExpiredDuties`] now.
    Expired,
}

/// The node's own view of its lease; `last_sent_ms` is when it sent its last renewal (or joined).
pub fn own_lease(
    believed_until_ms: u64,
    last_sent_ms: u64,
    renew_in_flight: bool,
    local_now_ms: u64,
    lease_ms: u64,
) -> OwnLease {
    if local_now_ms >= believed_until_ms {
        OwnLease::Expired
    } else if !renew_in_flight && local_now_ms >= last_sent_ms.saturating_add(renew_every_ms(lease_ms)) {
        OwnLease::RenewDue
    } else {
        OwnLease::Live
    }
}

/// What a node that finds its lease expired must do, before anything else: the store already
/// refuses its outcomes and commits, and another node may be running its task runs again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExpiredDuties {
    /// Stop claiming and starting attempts.
    pub stop_starting: bool,
    /// Kill the process groups of these attempts `(task run, attempt)`: their outcomes would be
    /// refused, and the task runs are (or will be) retried elsewhere.
    pub kill: Vec<(u64, u32)>,
    /// Stop the JobRun actors of these job runs without committing: their next owner decides.
    pub drop_job_runs: Vec<u64>,
    /// Then join again under a new node id (`INSERT INTO nodes …`); the old id stays dead.
    pub rejoin: bool,
}

/// The duties of an expired node running `attempts` and owning `job_runs`.
pub fn expired_duties(attempts: &[(u64, u32)], job_runs: &[u64]) -> ExpiredDuties {
    ExpiredDuties { stop_starting: true, kill: attempts.to_vec(), drop_job_runs: job_runs.to_vec(), rejoin: true }
}

/// Who decides for a job run: `job_runs.owner_node` and `owner_epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ownership {
    pub owner: Option<NodeId>,
    pub epoch: u64,
}

/// Adoption of a job run by `me`: allowed when it has no owner or its owner is dead, and `me`
/// is live; the epoch goes up by one. SQL:
/// `UPDATE job_runs SET owner_node = $me, owner_epoch = owner_epoch + 1
///  WHERE id = $jr AND (owner_node IS NULL OR NOT EXISTS (SELECT 1 FROM nodes
///    WHERE id = job_runs.owner_node AND lease_until > now()))
///  AND EXISTS (SELECT 1 FROM nodes WHERE id = $me AND lease_until > now())
///  RETURNING owner_epoch` — the returned epoch fences every later commit.
pub fn adoption(current: Ownership, me: NodeId, me_live: bool, owner_live: bool) -> Option<Ownership> {
    let adoptable = current.owner.is_none() || !owner_live;
    (adoptable && me_live).then_some(Ownership { owner: Some(me), epoch: current.epoch + 1 })
}

/// Whether a commit `by` a node holding `epoch` is taken for the job run: only the current
/// owner's, at the current epoch (the owner's lease is not asked: until someone adopts, it
/// is still the one decider). SQL, in the commit's transaction, before its writes:
/// `SELECT 1 FROM job_runs WHERE id = $jr AND owner_node = $me AND owner_epoch = $epoch FOR UPDATE`
/// — no row: `StoreError::Fenced`, nothing of the batch is written, the JobRun actor stops.
pub fn commit_accepted(current: Ownership, by: NodeId, epoch: u64) -> bool {
    current.owner == Some(by) && current.epoch == epoch
}

/// What the store knows of a task run's current attempt: `task_runs.state`, `node` (the node
/// running the current attempt; NULL when none runs — queued, or ended and waiting for its
/// owner's decision) and `attempt` (attempts started so far, interrupted ones included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fence {
    pub state: TaskState,
    pub node: Option<NodeId>,
    pub attempt: u32,
}

/// Whether a node with `labels` can run a task run that `requires` these: every one of them.
/// SQL: `requires <@ $labels`.
pub fn requires_met(requires: &[String], labels: &[String]) -> bool {
    requires.iter().all(|r| labels.contains(r))
}

/// A claim of the task run by `me`: allowed when it is queued, `me` has its labels and is live;
/// it becomes running on `me` with the next attempt. SQL (the claim of CLUSTER-DESIGN.md):
/// `UPDATE task_runs SET state = 'running', node = $me, attempt = attempt + 1
///  WHERE id = ANY(…SELECT … WHERE state = 'queued' AND requires <@ $labels … FOR UPDATE SKIP LOCKED)
///  AND EXISTS (SELECT 1 FROM nodes WHERE id = $me AND lease_until > now())`.
pub fn claim(fence: Fence, requires: &[String], labels: &[String], me: NodeId, me_live: bool) -> Option<Fence> {
    let allowed = fence.state == TaskState::Queued && requires_met(requires, labels) && me_live;
    allowed.then_some(Fence { state: TaskState::Running, node: Some(me), attempt: fence.attempt + 1 })
}

/// Why the store refused an attempt's outcome (reported back per row, never dropped silently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The task run is not running (its attempt was already recorded, or it was reaped).
    NotRunning,
    /// The current attempt runs on another node, or on none.
    OtherNode,
    /// Not the current attempt: a later one was claimed.
    StaleAttempt,
    /// The reporting node's lease passed: the node is dead, a reaper may already act on that.
    LeaseExpired,
}

/// Whether the outcome of attempt `attempt` reported by `by` is taken: the task run runs, its
/// current attempt is this one, on this node, and the node is live at the store's clock.
/// Taking it records the attempt and sets `node = NULL` (ended; the owner decides what next).
/// SQL (the complete batch, per row):
/// `UPDATE task_runs SET node = NULL, record = $rec
///  WHERE id = $t AND state = 'running' AND node = $me AND attempt = $n
///  AND EXISTS (SELECT 1 FROM nodes WHERE id = $me AND lease_until > now())`
/// plus the attempt row `(task_run, n)` in the same transaction; 0 rows: refused (ask why with
/// a read, for the report).
pub fn outcome_accepted(fence: Fence, by: NodeId, attempt: u32, by_live: bool) -> Result<(), Refused> {
    if fence.state != TaskState::Running {
        Err(Refused::NotRunning)
    } else if fence.attempt != attempt {
        Err(Refused::StaleAttempt)
    } else if fence.node != Some(by) {
        Err(Refused::OtherNode)
    } else if !by_live {
        Err(Refused::LeaseExpired)
    } else {
        Ok(())
    }
}

/// An attempt found running on a dead node, for its job run's owner to reap: `(node, attempt)`.
/// The owner records it `interrupted` and decides by [`after_interrupted`], in one commit fenced
/// by its epoch ([`commit_accepted`]). Found by
/// `SELECT id, node, attempt FROM task_runs WHERE job_run = $jr AND state = 'running'
///  AND node IS NOT NULL AND NOT EXISTS (SELECT 1 FROM nodes WHERE id = task_runs.node
///  AND lease_until > now())`. Since a dead lease is never revived and a dead node's outcomes are
/// refused, the attempt is still this one when the commit lands, whatever happened between.
pub fn orphaned_attempt(fence: Fence, node_live: bool) -> Option<(NodeId, u32)> {
    match fence.node {
        Some(node) if fence.state == TaskState::Running && !node_live => Some((node, fence.attempt)),
        _ => None,
    }
}

/// What the owner of a job run (or the node that adopts it) does about a task run whose row the
/// store holds `running` at attempt `fence.attempt` on a node that is dead, given its own record
/// of that task run (`record_state`, `record_attempt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadRunner {
    /// Nothing: the row is not an orphan (its node is live, or none runs it).
    Nothing,
    /// The owner heard attempt `n` start: it is recorded `interrupted` and retried by policy.
    Interrupted(u32),
    /// The node claimed attempt `n` and died before the owner heard it start (the owner's
    /// record is still `queued` at `n - 1`; the claimer may have been the owner itself, paused
    /// or killed before its `running` commit): attempt `n` is recorded all the same, started
    /// and `interrupted`, and retried by policy as attempt `n + 1`. It may have run: its number
    /// is never given again, and its late outcome is refused ([`outcome_accepted`]: the task run
    /// is no longer running as attempt `n` on that node).
    Unheard(u32),
    /// The owner's record and the row disagree in a way no claim explains (the owner's own
    /// decision not yet committed, or never seen): the row is written back as the record says,
    /// so it does not stay `running` with nobody running it.
    WriteBack,
}

/// [`DeadRunner`] for the row `fence`, whose node is live or not (`node_live`), and the owner's
/// record of the task run. SQL (finding the rows): [`orphaned_attempt`]'s.
pub fn dead_runner(fence: Fence, node_live: bool, record_state: TaskState, record_attempt: u32) -> DeadRunner {
    let Some((_, n)) = orphaned_attempt(fence, node_live) else { return DeadRunner::Nothing };
    match record_state {
        TaskState::Running if record_attempt == n => DeadRunner::Interrupted(n),
        TaskState::Queued if record_attempt.checked_add(1) == Some(n) => DeadRunner::Unheard(n),
        _ => DeadRunner::WriteBack,
    }
}

/// What follows an attempt interrupted by its node dying: it counts as an attempt of the series
/// (and as a crash in a row, so a task run that kills its nodes is quarantined as `poison`),
/// then the retry policy decides, as for any failed attempt.
pub fn after_interrupted(policy: &RetryPolicy, run: RunSoFar, u: f64) -> AfterAttempt {
    let outcome = AttemptOutcome { failure: Some(FailReason::Interrupted), exit_code: None };
    after_attempt(policy, outcome, run, u)
}

/// Where a command given on a node (cancel, retry, signal: the CLI, the API, a TUI keypress)
/// about a job run is carried out in a cluster. Its decisions are its owner's alone, so a node
/// never starts an actor for a job run another node owns: it relays the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandRoute {
    /// This node owns it (or no such job run: said here).
    Here,
    /// It runs, owned by another node (or by a dead one, whose adopter will read it): the
    /// command goes to its owner by mail, and the answer comes back the same way.
    ToOwner,
    /// It ended, so nobody decides for it: this node takes it over (epoch + 1, fencing any
    /// other node that would revive it too) and carries the command out here.
    TakeOver,
}

/// [`CommandRoute`] for a job run as the store has it: `None` when there is no such job run,
/// else whether it runs and its owner.
pub fn command_route(stored: Option<(bool, Option<NodeId>)>, me: NodeId) -> CommandRoute {
    match stored {
        None => CommandRoute::Here,
        Some((false, _)) => CommandRoute::TakeOver,
        Some((true, Some(owner))) if owner == me => CommandRoute::Here,
        Some((true, _)) => CommandRoute::ToOwner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_goes_to_whoever_decides_for_the_job_run() {
        use CommandRoute::*;
        let me = 4;
        let table = [
            (None, Here),                       // unknown: said here
            (Some((true, Some(4))), Here),      // mine and running
            (Some((true, Some(9))), ToOwner),   // another node's
            (Some((true, None)), ToOwner),      // nobody's yet: its adopter answers
            (Some((false, Some(9))), TakeOver), // ended on another node
            (Some((false, Some(4))), TakeOver), // ended here: a new epoch all the same
            (Some((false, None)), TakeOver),
        ];
        for (stored, route) in table {
            assert_eq!(command_route(stored, me), route, "{stored:?}");
        }
    }

    fn fence(state: TaskState, node: Option<NodeId>, attempt: u32) -> Fence {
        Fence { state, node, attempt }
    }

    #[test]
    fn lease_bounds_and_renewal_period() {
        assert_eq!(check_lease_ms(DEFAULT_LEASE_MS), Ok(30_000));
        assert_eq!(renew_every_ms(DEFAULT_LEASE_MS), 10_000);
        for ok in [MIN_LEASE_MS, MAX_LEASE_MS] {
            assert_eq!(check_lease_ms(ok), Ok(ok));
        }
        for bad in [0, MIN_LEASE_MS - 1, MAX_LEASE_MS + 1] {
            let err = check_lease_ms(bad).expect_err("out of bounds");
            assert!(err.to_string().contains(&bad.to_string()), "{err}");
        }
    }

    #[test]
    fn a_lease_is_live_strictly_before_its_end_and_never_revived() {
        assert!(is_live(1_000, 999));
        assert!(!is_live(1_000, 1_000));
        assert_eq!(renewal(1_000, 999, 3_000), Some(3_999));
        assert_eq!(renewal(1_000, 1_000, 3_000), None);
        assert_eq!(lease_until_ms(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn own_lease_table() {
        // (believed_until, last_sent, in_flight, now) with a 3 s lease (renew every 1 s).
        let cases = [
            (3_000, 0, false, 500, OwnLease::Live),
            (3_000, 0, false, 1_000, OwnLease::RenewDue),
            (3_000, 0, true, 2_000, OwnLease::Live),
            (3_000, 0, true, 3_000, OwnLease::Expired),
            (3_000, 2_500, false, 3_000, OwnLease::Expired),
        ];
        for (until, sent, in_flight, now, want) in cases {
            assert_eq!(own_lease(until, sent, in_flight, now, 3_000), want, "{until} {sent} {in_flight} {now}");
        }
        assert_eq!(believed_until_ms(7, 3_000), 3_007);
    }

    #[test]
    fn adoption_table() {
        let held = Ownership { owner: Some(1), epoch: 4 };
        let next = Some(Ownership { owner: Some(2), epoch: 5 });
        assert_eq!(adoption(held, 2, true, false), next, "dead owner");
        assert_eq!(adoption(held, 2, true, true), None, "live owner");
        assert_eq!(adoption(held, 2, false, false), None, "dead adopter");
        assert_eq!(adoption(Ownership { owner: None, epoch: 4 }, 2, true, true), next, "no owner");
        assert!(commit_accepted(held, 1, 4));
        assert!(!commit_accepted(held, 1, 3), "older epoch");
        assert!(!commit_accepted(held, 2, 4), "other node");
        assert!(!commit_accepted(Ownership::default(), 1, 0), "nobody owns");
    }

    #[test]
    fn claim_table() {
        let queued = fence(TaskState::Queued, None, 2);
        let gpu = ["gpu".to_string()];
        let gpu_eu = ["gpu".to_string(), "eu".to_string()];
        assert_eq!(claim(queued, &[], &[], 7, true), Some(fence(TaskState::Running, Some(7), 3)));
        assert_eq!(claim(queued, &gpu, &gpu_eu, 7, true).map(|f| f.attempt), Some(3));
        assert_eq!(claim(queued, &gpu_eu, &gpu, 7, true), None, "missing label");
        assert_eq!(claim(queued, &[], &[], 7, false), None, "dead claimer");
        for state in TaskState::ALL.into_iter().filter(|s| *s != TaskState::Queued) {
            assert_eq!(claim(fence(state, None, 2), &[], &[], 7, true), None, "{state:?}");
        }
    }

    #[test]
    fn outcome_table() {
        let running = fence(TaskState::Running, Some(7), 3);
        assert_eq!(outcome_accepted(running, 7, 3, true), Ok(()));
        assert_eq!(outcome_accepted(running, 7, 3, false), Err(Refused::LeaseExpired));
        assert_eq!(outcome_accepted(running, 7, 2, true), Err(Refused::StaleAttempt));
        assert_eq!(outcome_accepted(running, 8, 3, true), Err(Refused::OtherNode));
        assert_eq!(outcome_accepted(fence(TaskState::Running, None, 3), 7, 3, true), Err(Refused::OtherNode));
        assert_eq!(outcome_accepted(fence(TaskState::Queued, None, 3), 7, 3, true), Err(Refused::NotRunning));
    }

    #[test]
    fn orphans_are_running_attempts_of_dead_nodes() {
        let running = fence(TaskState::Running, Some(7), 3);
        assert_eq!(orphaned_attempt(running, false), Some((7, 3)));
        assert_eq!(orphaned_attempt(running, true), None);
        assert_eq!(orphaned_attempt(fence(TaskState::Running, None, 3), false), None, "ended, awaiting decision");
        assert_eq!(orphaned_attempt(fence(TaskState::Queued, Some(7), 3), false), None);
    }

    #[test]
    fn a_dead_runners_attempt_counts_whether_or_not_its_owner_heard_it_start() {
        use DeadRunner::*;
        use TaskState::*;
        let on_dead = |attempt| fence(Running, Some(7), attempt);
        // (row, runner live, record state, record attempt) → what the owner does.
        let table = [
            (on_dead(3), false, Running, 3, Interrupted(3)), // heard: the usual orphan
            (on_dead(3), false, Queued, 2, Unheard(3)),      // claimed, never heard: counts as 3
            (on_dead(1), false, Queued, 0, Unheard(1)),      // the very first attempt
            (on_dead(3), true, Queued, 2, Nothing),          // a live runner: its `Started` is on its way
            (on_dead(3), true, Running, 3, Nothing),         // runs on a live node
            (fence(Running, None, 3), false, Running, 3, Nothing), // ended, awaiting the owner
            (fence(Queued, Some(7), 3), false, Queued, 3, Nothing), // not running
            (on_dead(3), false, Retrying, 4, WriteBack),     // the owner decided past it, uncommitted
            (on_dead(3), false, Queued, 3, WriteBack),       // likewise (its claim would be 4)
            (on_dead(3), false, Queued, 1, WriteBack),       // two attempts apart: no claim does that
            (on_dead(3), false, Cancelled, 2, WriteBack),    // cancelled before the claim was heard
            (on_dead(3), false, Running, 2, WriteBack),
        ];
        for (row, live, state, attempt, want) in table {
            assert_eq!(dead_runner(row, live, state, attempt), want, "{row:?} live={live} {state:?} {attempt}");
        }
    }

    /// An unheard attempt `n` recorded, then retried as `n + 1`: the dead claimer's outcome of
    /// `n`, reported late, is refused whether the retry is queued or claimed by another node.
    #[test]
    fn an_unheard_attempts_late_outcome_is_refused() {
        assert_eq!(
            dead_runner(fence(TaskState::Running, Some(7), 3), false, TaskState::Queued, 2),
            DeadRunner::Unheard(3)
        );
        // The owner committed attempt 3 interrupted and queued the retry: the row is queued at 3.
        let retried = fence(TaskState::Queued, None, 3);
        assert_eq!(outcome_accepted(retried, 7, 3, true), Err(Refused::NotRunning));
        // Another node claimed it: attempt 4 there.
        let claimed = claim(retried, &[], &[], 8, true).expect("claimable");
        assert_eq!(claimed.attempt, 4, "the number 3 is not given again");
        assert_eq!(outcome_accepted(claimed, 7, 3, true), Err(Refused::StaleAttempt));
        assert_eq!(outcome_accepted(claimed, 7, 3, false), Err(Refused::StaleAttempt));
    }

    #[test]
    fn an_interrupted_attempt_counts_and_retries_by_policy() {
        let policy = RetryPolicy { max_attempts: 2, poison_after_crashes: 3, ..RetryPolicy::default() };
        let run = |attempts_in_series, crashes_in_a_row| RunSoFar {
            attempts_in_series,
            cost_usd_micros: 0,
            budget_usd_micros: None,
            max_cost_usd_micros: None,
            crashes_in_a_row,
        };
        assert!(matches!(after_interrupted(&policy, run(1, 1), 0.0), AfterAttempt::Retry { .. }));
        let last = after_interrupted(&policy, run(2, 2), 0.0);
        assert_eq!(last, AfterAttempt::Dead { reason: FailReason::Interrupted });
        let poison = after_interrupted(&RetryPolicy::default(), run(2, 2), 0.0);
        assert_eq!(poison, AfterAttempt::Dead { reason: FailReason::Poison });
    }

    #[test]
    fn an_expired_node_stops_kills_and_drops_everything() {
        let duties = expired_duties(&[(10, 2)], &[4, 5]);
        assert!(duties.stop_starting && duties.rejoin);
        assert_eq!(duties.kill, vec![(10, 2)]);
        assert_eq!(duties.drop_job_runs, vec![4, 5]);
    }
}
