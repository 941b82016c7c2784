//! A cluster node starting a task run with the commit that creates it (issue 11, enqueue → start).
//!
//! On one machine a new job run's ready task runs are offered to the Dispatcher before their
//! commit (`dispatcher::Reserve`): those an idle worker takes are committed `running` with the
//! run, and start after one commit. A cluster node queues them instead — a `queued` row, a
//! `NOTIFY`, a claim with a commit of its own — because another node's work may be ahead of
//! them in the shared queue. Where nothing can be, the node may start them as on one machine:
//! [`starts_at_submit`] says where, [`NothingReady`] is what the node knows of each queue.
//!
//! "Nothing can be ahead" is known from this node's own last claim of the queue: it asked for
//! more than it got, and the queue was not paused. It is forgotten at anything that may have
//! queued a row since: any wake-up (another node's `NOTIFY`, the poll), a task run this node
//! queues; a claim that was under way meanwhile does not restore it, nor one made while a
//! commit of this node that queues rows there has not landed. What remains is the
//! time a `NOTIFY` takes to arrive (a row another node queued a moment ago may start just after
//! this one), and a retry whose backoff ran out since the last claim (found by the next poll,
//! 250 ms); a queue paused on another node is seen by the claim that follows the pause's wake-up.

use std::collections::{BTreeMap, BTreeSet};

/// What a node knows of one queue when a new job run's ready task run in it could start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueAtSubmit {
    /// A rule that holds across the cluster — a declared `concurrency`, a `rate_limit`, a
    /// `circuit` — is decided by the claim, under the queue's lock, from every node's facts.
    pub cluster_wide_rule: bool,
    /// Paused as this node knows, or held by a limit or a circuit now.
    pub paused_or_held: bool,
    /// [`NothingReady::holds`] for the queue.
    pub nothing_ready: bool,
    /// This node has the task's labels (`model::routing::can_run`).
    pub can_run: bool,
    /// A worker is idle, and neither the node's `workers` nor the queue's per-node cap is reached.
    pub slot_free: bool,
    /// A claim is under way: it may take every idle worker it counted when it began.
    pub claim_under_way: bool,
    /// The node starts new work at all: not stopping, not held at start, its lease live, and
    /// starting at submit not turned off (`ClusterConfig::start_at_submit`).
    pub node_starts: bool,
}

/// Whether the task run starts with the commit that creates it, `running` on this node,
/// rather than being queued for a claim.
pub fn starts_at_submit(q: QueueAtSubmit) -> bool {
    q.node_starts
        && !q.cluster_wide_rule
        && !q.paused_or_held
        && q.nothing_ready
        && q.can_run
        && q.slot_free
        && !q.claim_under_way
}

/// The queues whose last claim found nothing more ready for this node, as far as it knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NothingReady {
    queues: BTreeSet<String>,
    /// Commits of this node under way that queue task runs, by queue: until they land, a claim
    /// cannot see their rows, so one that finds nothing says nothing.
    committing: BTreeMap<String, usize>,
    /// Counts what made the node forget: a claim's answer counts only if nothing did since
    /// the claim began.
    generation: u64,
}

/// A claim under way, as [`NothingReady::claim_began`] returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimBegan(u64);

impl NothingReady {
    pub fn holds(&self, queue: &str) -> bool {
        self.queues.contains(queue)
    }

    /// A wake-up that names no queue (the poll): any queue may have rows ready now.
    pub fn woken(&mut self) {
        self.queues.clear();
        self.generation += 1;
    }

    /// `queue` may have rows ready now: a wake-up that names it (another node queued some, or
    /// paused or resumed it), or task runs of this node about to be queued there.
    pub fn forget(&mut self, queue: &str) {
        self.queues.remove(queue);
        self.generation += 1;
    }

    /// A commit of this node that queues task runs in `queue` is under way.
    pub fn queuing(&mut self, queue: &str) {
        *self.committing.entry(queue.to_string()).or_default() += 1;
        self.forget(queue);
    }

    /// That commit landed (or never will).
    pub fn queued(&mut self, queue: &str) {
        if let Some(n) = self.committing.get_mut(queue) {
            *n -= 1;
            if *n == 0 {
                self.committing.remove(queue);
            }
        }
        self.forget(queue);
    }

    pub fn claim_began(&self) -> ClaimBegan {
        ClaimBegan(self.generation)
    }

    /// A claim of `queue` began at `began` asked for `asked` and got `got`; `paused`: the queue
    /// was paused then (nothing was taken from it, whatever it holds).
    pub fn claimed(&mut self, began: ClaimBegan, queue: &str, asked: usize, got: usize, paused: bool) {
        if got >= asked || paused {
            self.queues.remove(queue);
        } else if began.0 == self.generation && !self.committing.contains_key(queue) {
            self.queues.insert(queue.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_queue_with_nothing_ahead_and_no_cluster_wide_rule_starts_at_submit() {
        let free = QueueAtSubmit {
            cluster_wide_rule: false,
            paused_or_held: false,
            nothing_ready: true,
            can_run: true,
            slot_free: true,
            claim_under_way: false,
            node_starts: true,
        };
        assert!(starts_at_submit(free));
        type Change = fn(&mut QueueAtSubmit);
        let cases: [(&str, Change); 7] = [
            ("a declared cap, a rate limit or a circuit", |q| q.cluster_wide_rule = true),
            ("paused or held", |q| q.paused_or_held = true),
            ("rows may be ready", |q| q.nothing_ready = false),
            ("labels missing", |q| q.can_run = false),
            ("no slot", |q| q.slot_free = false),
            ("a claim may take the idle workers", |q| q.claim_under_way = true),
            ("the node stops, is held at start, lost its lease, or does not start at submit", |q| {
                q.node_starts = false
            }),
        ];
        for (why, change) in cases {
            let mut q = free;
            change(&mut q);
            assert!(!starts_at_submit(q), "{why}");
        }
    }

    #[test]
    fn a_claim_that_drained_a_queue_says_nothing_is_ready_until_something_may_be() {
        let mut k = NothingReady::default();
        assert!(!k.holds("default"), "nothing is known before a claim");
        let began = k.claim_began();
        k.claimed(began, "default", 4, 1, false);
        assert!(k.holds("default"));
        k.forget("default");
        assert!(!k.holds("default"), "a wake-up named it");
        let began = k.claim_began();
        k.claimed(began, "default", 4, 0, false);
        assert!(k.holds("default"));
        k.woken();
        assert!(!k.holds("default"), "a NOTIFY or the poll");
    }

    #[test]
    fn a_claim_that_filled_its_ask_or_met_a_pause_says_nothing() {
        let mut k = NothingReady::default();
        let began = k.claim_began();
        k.claimed(began, "a", 4, 4, false);
        k.claimed(began, "b", 4, 0, true);
        assert!(!k.holds("a"), "more may be ready");
        assert!(!k.holds("b"), "paused: what it holds was not looked at");
        let began = k.claim_began();
        k.claimed(began, "b", 4, 0, false);
        k.claimed(began, "b", 4, 0, true);
        assert!(!k.holds("b"), "a pause seen later forgets it");
    }

    #[test]
    fn a_claim_under_way_while_something_was_queued_or_woke_the_node_counts_for_nothing() {
        for forget in [NothingReady::woken as fn(&mut NothingReady), |k| k.forget("other")] {
            let mut k = NothingReady::default();
            let began = k.claim_began();
            forget(&mut k);
            k.claimed(began, "default", 4, 0, false);
            assert!(!k.holds("default"), "its answer may predate the row");
        }
    }

    #[test]
    fn a_claim_that_found_nothing_while_a_commit_of_this_node_queues_rows_there_says_nothing() {
        let mut k = NothingReady::default();
        k.queuing("default");
        let began = k.claim_began();
        k.claimed(began, "default", 4, 0, false);
        assert!(!k.holds("default"), "the rows are not committed yet: the claim could not see them");
        k.queued("default");
        let began = k.claim_began();
        k.claimed(began, "default", 4, 0, false);
        assert!(k.holds("default"), "landed and claimed");
        k.queuing("default");
        k.queuing("default");
        k.queued("default");
        let began = k.claim_began();
        k.claimed(began, "default", 4, 0, false);
        assert!(!k.holds("default"), "one of two commits still under way");
    }
}
