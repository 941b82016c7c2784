//! Epoch fencing of a node's commits (issue #11 §3, `model::lease::commit_accepted`): the job
//! runs this node owns and at which epoch, and which batches of a commit group are taken.
//!
//! A store with no node (redb, PostgreSQL as a plain store) fences nothing. Once a node is set
//! ([`Ownership::join`]), every batch that writes a job run's records — its `JobRun`, `TaskRun`,
//! `Attempt` or `RaisedBudgets` — is checked in the commit's transaction against `SELECT id,
//! owner_node, owner_epoch FROM job_runs WHERE id = ANY($ids) ORDER BY id FOR UPDATE`, read
//! before its writes (the rows stay locked until the commit, so an adoption waits for it) and
//! judged before its `COMMIT` (the writes are pipelined behind the read; a group with a fenced
//! batch is rolled back and written again without it, `writer::commit_group`):
//!
//! - a job run this node owns at epoch e is taken only while its row says `owner_node = me AND
//!   owner_epoch = e`;
//! - a job run this node does not know is taken only when the batch creates it (it carries the
//!   `JobRun` record and no row exists yet) and this node never gave it up: it is written with
//!   `owner_node = me, owner_epoch = 1` and owned from then on. A creation still queued when the
//!   node's lease ran out ([`Ownership::disown`]) is refused even after the node joined again
//!   under a new id: its actor is gone, so a row written then would be owned by a live node
//!   with nobody deciding for it, and no other node would ever adopt it;
//! - anything else is fenced out: nothing of that batch is written, its commit resolves to
//!   `StoreError::Fenced`, and the job run is forgotten here (another node owns it now).
//!
//! Group commit splits by batch: a batch is one caller's commit, taken or fenced whole (a batch
//! that touches a fenced job run and another is fenced whole: a commit is never half-applied);
//! the other batches of the group are written in the same transaction as if it were not there.
//! Batches of one group are judged in order, so a job run created by an earlier batch of the
//! group is owned by the later ones.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use crate::model::lease::{NodeId, Ownership as Owner, commit_accepted};
use crate::store::Mutation;

/// The node this store commits for, and the job runs it owns with their epochs. Shared by the
/// writer (which checks and learns creations) and the node's Supervisor (which adopts).
#[derive(Debug, Default)]
pub struct Ownership {
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone)]
struct State {
    node: Option<NodeId>,
    epochs: HashMap<u64, u64>,
    /// Job runs this node gave up when its lease ran out: never created by it from then on.
    disowned: HashSet<u64>,
}

/// A job run's row as the fence query read it: `(owner_node, owner_epoch)`.
pub type Row = (Option<NodeId>, u64);

/// The fence of one group: whom it commits for, and what was owned when it began.
#[derive(Debug, Clone)]
pub struct Judge {
    node: NodeId,
    epochs: HashMap<u64, u64>,
    disowned: HashSet<u64>,
}

/// What the fence decided for each batch of a group, and what the store learns once it commits.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Per batch: `None` taken, `Some(j)` fenced out because of job run `j`.
    pub fenced: Vec<Option<u64>>,
    /// Job runs created by taken batches: owned at epoch 1 once the group commits.
    pub created: BTreeSet<u64>,
}

impl Ownership {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on this store commits for `node` (a join, or a rejoin under a new id): nothing
    /// owned under an earlier id is owned any more.
    pub fn join(&self, node: NodeId) {
        let mut state = self.lock();
        state.node = Some(node);
        state.epochs.clear();
    }

    /// The lease ran out: these job runs' actors stop, and a creation of one of them that is
    /// still to be written is refused from now on (it may already be written: then its row
    /// names this node's old id, which is dead, and it is adopted like any other).
    pub fn disown(&self, job_runs: &[u64]) {
        let mut state = self.lock();
        for j in job_runs {
            state.epochs.remove(j);
            state.disowned.insert(*j);
        }
    }

    /// Back to a plain store: nothing owned, nothing fenced.
    pub fn leave(&self) {
        *self.lock() = State::default();
    }

    /// The node this store commits for, if any.
    pub fn node(&self) -> Option<NodeId> {
        self.lock().node
    }

    /// This node adopted `job_run` at `epoch` (the epoch the adoption's `RETURNING` gave).
    pub fn adopted(&self, job_run: u64, epoch: u64) {
        let mut state = self.lock();
        state.epochs.insert(job_run, epoch);
        state.disowned.remove(&job_run);
    }

    /// The job run is not this node's any more (it ended here, or it was fenced out).
    pub fn release(&self, job_run: u64) {
        self.lock().epochs.remove(&job_run);
    }

    /// The epoch this node owns `job_run` at, if it does.
    pub fn epoch(&self, job_run: u64) -> Option<u64> {
        self.lock().epochs.get(&job_run).copied()
    }

    /// Every job run this node owns.
    pub fn owned(&self) -> Vec<u64> {
        let mut owned: Vec<u64> = self.lock().epochs.keys().copied().collect();
        owned.sort_unstable();
        owned
    }

    /// The fence for a group about to commit: `None` when no node is set (nothing is fenced).
    pub fn judge(&self) -> Option<Judge> {
        let state = self.lock();
        state.node.map(|node| Judge { node, epochs: state.epochs.clone(), disowned: state.disowned.clone() })
    }

    /// A group committed: its creations are owned at epoch 1, its fenced job runs are not (if
    /// the node is still the one the group was judged for).
    pub fn learn(&self, judge: &Judge, verdicts: &Verdicts) {
        let mut state = self.lock();
        if state.node != Some(judge.node) {
            return;
        }
        let State { epochs, disowned, .. } = &mut *state;
        for &j in verdicts.created.iter().filter(|j| !disowned.contains(j)) {
            epochs.insert(j, 1);
        }
        for &j in verdicts.fenced.iter().flatten() {
            state.epochs.remove(&j);
        }
    }
}

/// The job runs whose records a batch writes.
pub fn job_runs_written(batch: &[Mutation]) -> BTreeSet<u64> {
    batch
        .iter()
        .filter_map(|m| match m {
            Mutation::JobRun(r) => Some(r.id),
            Mutation::TaskRun(r) => Some(r.job_run),
            Mutation::Attempt(a) => Some(a.job_run),
            Mutation::RaisedBudgets(j, _) | Mutation::MailRead(j, _) => Some(*j),
            _ => None,
        })
        .collect()
}

fn creates(batch: &[Mutation], job_run: u64) -> bool {
    batch.iter().any(|m| matches!(m, Mutation::JobRun(r) if r.id == job_run))
}

impl Judge {
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Decides every batch of a group in order, given the rows the fence query read (a job run
    /// without a row is absent from `rows`).
    pub fn decide(&self, batches: &[&[Mutation]], rows: &BTreeMap<u64, Row>) -> Verdicts {
        let mut owned = self.epochs.clone();
        let mut verdicts = Verdicts::default();
        for batch in batches {
            let touched = job_runs_written(batch);
            let fenced = touched.iter().copied().find(|&j| !self.taken(j, batch, rows, &owned));
            if fenced.is_none() {
                for j in touched {
                    if let std::collections::hash_map::Entry::Vacant(new) = owned.entry(j) {
                        new.insert(1);
                        verdicts.created.insert(j);
                    }
                }
            }
            verdicts.fenced.push(fenced);
        }
        verdicts
    }

    fn taken(&self, job_run: u64, batch: &[Mutation], rows: &BTreeMap<u64, Row>, owned: &HashMap<u64, u64>) -> bool {
        match (owned.get(&job_run), rows.get(&job_run)) {
            (Some(&epoch), Some(&(owner, at))) => commit_accepted(Owner { owner, epoch: at }, self.node, epoch),
            // Created earlier in this group: its row is written by this very transaction.
            (Some(_), None) => true,
            (None, None) => creates(batch, job_run) && !self.disowned.contains(&job_run),
            (None, Some(_)) => false,
        }
    }

    /// The job runs a group's fence query must read and lock.
    pub fn to_read(batches: &[&[Mutation]]) -> Vec<u64> {
        let all: BTreeSet<u64> = batches.iter().flat_map(|b| job_runs_written(b)).collect();
        all.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::{RaisedBudgets, TaskRunRecord};
    use crate::store::tests::job_run;

    fn task(job_run: u64) -> Mutation {
        Mutation::TaskRun(TaskRunRecord::pending(job_run * 10, job_run, "j", "t", 1))
    }

    fn judge(epochs: &[(u64, u64)]) -> Judge {
        Judge { node: 7, epochs: epochs.iter().copied().collect(), disowned: HashSet::new() }
    }

    #[test]
    fn a_batch_is_taken_only_at_the_owners_epoch_or_when_it_creates_its_job_run() {
        let rows: BTreeMap<u64, Row> = [(1, (Some(7), 2)), (2, (Some(8), 3)), (3, (Some(7), 1))].into();
        let owned = [
            vec![task(1)],                                                       // owned at 2, row at 2: taken
            vec![task(2)],                                                       // owned at 2, adopted by 8: fenced
            vec![task(3)],                                                       // unknown here, row exists: fenced
            vec![Mutation::JobRun(job_run(4)), task(4)],                         // a creation: taken, owned at 1
            vec![task(4)],                                                       // created by the batch before: taken
            vec![task(5)],                                                       // unknown, no row, no JobRun: fenced
            vec![Mutation::RaisedBudgets(1, RaisedBudgets::default()), task(2)], // fenced whole
            vec![Mutation::QueuePaused("q".into(), true)],                       // writes no job run: taken
        ];
        let batches: Vec<&[Mutation]> = owned.iter().map(Vec::as_slice).collect();
        let verdicts = judge(&[(1, 2), (2, 2)]).decide(&batches, &rows);
        assert_eq!(verdicts.fenced, [None, Some(2), Some(3), None, None, Some(5), Some(2), None]);
        assert_eq!(verdicts.created, [4].into());
    }

    #[test]
    fn the_store_learns_creations_forgets_fenced_runs_and_a_rejoin_forgets_everything() {
        let ownership = Ownership::default();
        assert!(ownership.judge().is_none(), "no node: nothing fenced");
        ownership.join(7);
        ownership.adopted(2, 5);
        let judge = ownership.judge().expect("a node");
        ownership.learn(&judge, &Verdicts { fenced: vec![Some(2), None], created: [4].into() });
        assert_eq!(ownership.owned(), [4]);
        assert_eq!(ownership.epoch(4), Some(1));
        ownership.join(9);
        assert_eq!(ownership.owned(), Vec::<u64>::new());
        ownership.learn(&judge, &Verdicts { fenced: vec![None], created: [6].into() });
        assert_eq!(ownership.owned(), Vec::<u64>::new(), "judged for the old id: ignored");
    }

    /// A submit whose creation was still queued when the lease ran out: after the rejoin the
    /// creation is refused (no actor would decide for it), until an adoption takes the run.
    #[test]
    fn a_creation_queued_when_the_lease_ran_out_is_refused_after_the_rejoin() {
        let ownership = Ownership::default();
        ownership.join(7);
        ownership.adopted(1, 3);
        ownership.disown(&[1, 2]);
        ownership.join(9);
        let creation = vec![Mutation::JobRun(job_run(2)), task(2)];
        let other = vec![Mutation::JobRun(job_run(5)), task(5)];
        let judge = ownership.judge().expect("a node");
        let verdicts = judge.decide(&[&creation, &other], &BTreeMap::new());
        assert_eq!(verdicts.fenced, [Some(2), None], "the disowned creation is fenced, a new one is taken");
        assert_eq!(verdicts.created, [5].into());
        ownership.learn(&ownership.judge().expect("a node"), &Verdicts { fenced: vec![None], created: [2].into() });
        assert_eq!(ownership.owned(), Vec::<u64>::new(), "a group judged before the disown learns no disowned run");
        ownership.adopted(2, 2);
        let rows: BTreeMap<u64, Row> = [(2, (Some(9), 2))].into();
        assert_eq!(
            ownership.judge().expect("a node").decide(&[&[task(2)][..]], &rows).fenced,
            [None],
            "adopted: its own again"
        );
    }
}
