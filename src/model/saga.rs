//! Sagas (`compensate`, SPEC §2.2): when a job run fails, which of its task runs are undone,
//! in what order, what a compensation sees of the run it undoes, and how far the saga got.
//!
//! Compensations run one at a time in reverse completion order, as Temporal's saga pattern
//! does. A compensation that fails for good is a dead letter like any other, and the saga goes
//! on with the next one (Temporal's saga also keeps compensating): stopping would leave every
//! earlier step un-undone because one later undo failed, while the dead letter already waits
//! for a person. Each succeeded run is compensated at most once by the saga itself; a person
//! may retry a dead compensation, and the saga waits while that one is in flight.

use std::collections::{BTreeMap, HashMap};

use crate::model::TaskState;

/// A task run of the failed job run, as far as the saga cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndedRun {
    pub task_run: u64,
    pub state: TaskState,
    /// A compensation itself (kind `compensation`): never undone in turn.
    pub is_compensation: bool,
    /// Its task has `compensate`.
    pub has_compensate: bool,
    /// It succeeded by reusing another run's result (a `cache` hit): the side effect it would
    /// undo belongs to that other job run, so it is not compensated.
    pub reused: bool,
    pub ended_at_ms: u64,
    /// The order its end was committed in (any increasing sequence): breaks ties of
    /// `ended_at_ms`, which has only millisecond resolution.
    pub completion_seq: u64,
}

/// The task runs to compensate, first to undo first: the succeeded, non-reused runs of kind
/// task whose task has `compensate`, in reverse completion order (`ended_at_ms`, then
/// `completion_seq`, then the task run id, all descending).
pub fn compensation_order(runs: &[EndedRun]) -> Vec<u64> {
    let mut undoable: Vec<&EndedRun> = runs
        .iter()
        .filter(|r| r.state == TaskState::Succeeded && r.has_compensate && !r.is_compensation && !r.reused)
        .collect();
    undoable.sort_unstable_by_key(|r| std::cmp::Reverse((r.ended_at_ms, r.completion_seq, r.task_run)));
    undoable.into_iter().map(|r| r.task_run).collect()
}

/// The environment name of output `key`: `GAFFER_OUTPUT_` + the key upper-cased, every other
/// character than `A-Z`, `0-9`, `_` becoming one `_` (`summary.md` → `GAFFER_OUTPUT_SUMMARY_MD`).
pub fn output_env_name(key: &str) -> String {
    let cleaned: String =
        key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("GAFFER_OUTPUT_{cleaned}")
}

/// The undone run's outputs as a compensation's environment, sorted by name.
///
/// When several keys map to one name (`a-b`, `a_b`, `A_B`), one wins: a key that needed only
/// upper-casing over one whose characters were replaced (`a_b` over `a-b`), then the first in
/// byte order (`A_B` over `a_b`). The others are [`output_env_shadowed`], for a warning.
pub fn output_env(outputs: &BTreeMap<String, String>) -> Vec<(String, String)> {
    winners(outputs).into_iter().map(|(name, key)| (name, outputs[key].clone())).collect()
}

/// The output keys that lost their environment name to another key (see [`output_env`]).
pub fn output_env_shadowed(outputs: &BTreeMap<String, String>) -> Vec<String> {
    let winners = winners(outputs);
    outputs.keys().filter(|key| winners[&output_env_name(key)] != key.as_str()).cloned().collect()
}

/// Environment name → the key that gets it.
fn winners(outputs: &BTreeMap<String, String>) -> BTreeMap<String, &str> {
    let replaced = |key: &str| !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let mut winners: BTreeMap<String, &str> = BTreeMap::new();
    // Keys come in byte order, so a later key wins only by needing no replacement.
    for key in outputs.keys() {
        let name = output_env_name(key);
        match winners.get(&name) {
            Some(held) if !replaced(held) || replaced(key) => {}
            _ => {
                winners.insert(name, key);
            }
        }
    }
    winners
}

/// Where the compensation of one undone run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompensationState {
    /// Pending, queued, running, retrying or waiting.
    InFlight,
    Succeeded,
    /// Ended without succeeding: a dead letter, or cancelled by a person.
    Failed,
}

impl From<TaskState> for CompensationState {
    fn from(state: TaskState) -> CompensationState {
        match state {
            TaskState::Succeeded => CompensationState::Succeeded,
            TaskState::Dead | TaskState::Cancelled | TaskState::Skipped | TaskState::Failed => {
                CompensationState::Failed
            }
            TaskState::Pending | TaskState::Queued | TaskState::Running | TaskState::Retrying | TaskState::Waiting => {
                CompensationState::InFlight
            }
        }
    }
}

/// What the saga does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaStep {
    /// Start the compensation of this task run.
    Compensate(u64),
    /// A compensation is in flight: one at a time.
    Wait,
    /// Every run was compensated (or its compensation ended for good) and none is in flight.
    Done,
}

/// One failed job run's saga: its order and the compensations it has. Built from
/// [`compensation_order`], fed each compensation's state (also when rebuilding after a
/// restart, from the compensation task runs' `compensates`); each event is O(1) amortized.
#[derive(Debug, Clone)]
pub struct Saga {
    order: Vec<u64>,
    position: HashMap<u64, usize>,
    states: Vec<Option<CompensationState>>,
    /// Every run before it has a compensation.
    next: usize,
    in_flight: usize,
}

impl Saga {
    pub fn new(order: Vec<u64>) -> Saga {
        let position = order.iter().enumerate().map(|(i, run)| (*run, i)).collect();
        let states = vec![None; order.len()];
        Saga { order, position, states, next: 0, in_flight: 0 }
    }

    pub fn next_step(&self) -> SagaStep {
        if self.in_flight > 0 {
            SagaStep::Wait
        } else if let Some(run) = self.order.get(self.next) {
            SagaStep::Compensate(*run)
        } else {
            SagaStep::Done
        }
    }

    /// The compensation of `undone` is now in `state`. Refused for a run this saga does not
    /// undo (the caller's bookkeeping is wrong; nothing is changed).
    pub fn record(&mut self, undone: u64, state: CompensationState) -> Result<(), String> {
        let Some(&at) = self.position.get(&undone) else {
            return Err(format!("task run {undone} is not one this saga compensates"));
        };
        let old = self.states[at].replace(state);
        if old == Some(CompensationState::InFlight) {
            self.in_flight -= 1;
        }
        if state == CompensationState::InFlight {
            self.in_flight += 1;
        }
        while self.states.get(self.next).is_some_and(Option::is_some) {
            self.next += 1;
        }
        Ok(())
    }

    /// The undone runs whose compensation failed for good, in saga order.
    pub fn failed(&self) -> Vec<u64> {
        let failed = |(run, state): (&u64, &Option<CompensationState>)| {
            (*state == Some(CompensationState::Failed)).then_some(*run)
        };
        self.order.iter().zip(&self.states).filter_map(failed).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;
    use proptest::prelude::*;

    fn run(task_run: u64, ended_at_ms: u64, completion_seq: u64) -> EndedRun {
        EndedRun {
            task_run,
            state: Succeeded,
            is_compensation: false,
            has_compensate: true,
            reused: false,
            ended_at_ms,
            completion_seq,
        }
    }

    /// One case of [`compensation_order`].
    fn check(runs: &[EndedRun], want: &[u64]) {
        assert_eq!(compensation_order(runs), want, "{runs:?}");
    }

    #[test]
    fn order_table() {
        check(&[], &[]);
        check(&[run(1, 100, 1), run(2, 200, 2), run(3, 300, 3)], &[3, 2, 1]);
        // Completion, not id, order: run 1 ended last.
        check(&[run(1, 300, 3), run(2, 100, 1), run(3, 200, 2)], &[1, 3, 2]);
        // Same millisecond: the commit sequence decides, then the id.
        check(&[run(1, 100, 7), run(2, 100, 5), run(3, 100, 6)], &[1, 3, 2]);
        check(&[run(4, 100, 5), run(9, 100, 5)], &[9, 4]);
        let not = |mut r: EndedRun, f: fn(&mut EndedRun)| {
            f(&mut r);
            r
        };
        check(
            &[
                run(1, 100, 1),
                not(run(2, 200, 2), |r| r.has_compensate = false),
                not(run(3, 300, 3), |r| r.state = Dead),
                not(run(4, 400, 4), |r| r.state = Failed),
                not(run(5, 500, 5), |r| r.state = Cancelled),
                not(run(6, 600, 6), |r| r.is_compensation = true),
                not(run(7, 700, 7), |r| r.reused = true),
                not(run(8, 800, 8), |r| r.state = Skipped),
                run(9, 900, 9),
            ],
            &[9, 1],
        );
    }

    #[test]
    fn output_env_table() {
        let outputs = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Pairs, Pairs, &[&str])] = &[
            (&[], &[], &[]),
            (
                &[("summary", "s"), ("file.md", "f"), ("Mixed-Case 2", "m")],
                &[("GAFFER_OUTPUT_FILE_MD", "f"), ("GAFFER_OUTPUT_MIXED_CASE_2", "m"), ("GAFFER_OUTPUT_SUMMARY", "s")],
                &[],
            ),
            (&[("naïve", "n")], &[("GAFFER_OUTPUT_NA_VE", "n")], &[]),
            // One name, three keys: the one needing no replacement, then byte order.
            (&[("a-b", "dash"), ("a_b", "under")], &[("GAFFER_OUTPUT_A_B", "under")], &["a-b"]),
            (&[("a-b", "dash"), ("a.b", "dot")], &[("GAFFER_OUTPUT_A_B", "dash")], &["a.b"]),
            (
                &[("A_B", "upper"), ("a-b", "dash"), ("a_b", "under")],
                &[("GAFFER_OUTPUT_A_B", "upper")],
                &["a-b", "a_b"],
            ),
        ];
        for (given, env, shadowed) in cases {
            let given = outputs(given);
            let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            assert_eq!(output_env(&given), env, "{given:?}");
            assert_eq!(output_env_shadowed(&given), *shadowed, "{given:?}");
        }
    }

    #[test]
    fn the_saga_goes_on_past_a_dead_compensation() {
        use CompensationState::*;
        let mut saga = Saga::new(vec![3, 2, 1]);
        assert_eq!(saga.next_step(), SagaStep::Compensate(3));
        saga.record(3, InFlight).expect("known");
        assert_eq!(saga.next_step(), SagaStep::Wait);
        saga.record(3, Failed).expect("known");
        assert_eq!(saga.next_step(), SagaStep::Compensate(2), "a dead compensation does not stop the saga");
        saga.record(2, InFlight).expect("known");
        saga.record(2, Succeeded).expect("known");
        // A person retries the dead one: the saga waits for it, one at a time.
        saga.record(3, InFlight).expect("known");
        assert_eq!(saga.next_step(), SagaStep::Wait);
        saga.record(3, Failed).expect("known");
        assert_eq!(saga.next_step(), SagaStep::Compensate(1));
        saga.record(1, InFlight).expect("known");
        saga.record(1, Succeeded).expect("known");
        assert_eq!((saga.next_step(), saga.failed()), (SagaStep::Done, vec![3]));
        assert!(saga.record(7, InFlight).is_err_and(|e| e.contains("task run 7 is not one this saga compensates")));
        assert_eq!(Saga::new(vec![]).next_step(), SagaStep::Done);
    }

    #[test]
    fn a_rebuilt_saga_starts_nothing_twice() {
        use CompensationState::*;
        let mut saga = Saga::new(vec![5, 4, 3, 2]);
        for (run, state) in [(4, TaskState::Dead), (5, TaskState::Succeeded), (3, TaskState::Retrying)] {
            saga.record(run, state.into()).expect("known");
        }
        assert_eq!(saga.next_step(), SagaStep::Wait);
        saga.record(3, CompensationState::from(TaskState::Succeeded)).expect("known");
        assert_eq!(saga.next_step(), SagaStep::Compensate(2));
        assert_eq!(saga.failed(), vec![4]);
        assert_eq!(CompensationState::from(Cancelled), Failed);
    }

    fn ended_runs() -> impl Strategy<Value = Vec<EndedRun>> {
        let state = prop_oneof![Just(Succeeded), Just(Dead), Just(Failed), Just(Cancelled), Just(Skipped)];
        let one = (state, any::<bool>(), any::<bool>(), any::<bool>(), 0u64..20, 0u64..1000);
        proptest::collection::vec(one, 0..40).prop_map(|runs| {
            runs.into_iter()
                .enumerate()
                .map(|(i, (state, is_compensation, has_compensate, reused, ended_at_ms, seq))| EndedRun {
                    task_run: i as u64 + 1,
                    state,
                    is_compensation,
                    has_compensate,
                    reused,
                    ended_at_ms,
                    completion_seq: seq,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn order_is_the_compensable_runs_in_reverse_completion_order(runs in ended_runs()) {
            let order = compensation_order(&runs);
            let by_id: HashMap<u64, &EndedRun> = runs.iter().map(|r| (r.task_run, r)).collect();
            let mut want: Vec<u64> = runs.iter()
                .filter(|r| r.state == Succeeded && r.has_compensate && !r.is_compensation && !r.reused)
                .map(|r| r.task_run)
                .collect();
            let mut got = order.clone();
            want.sort_unstable();
            got.sort_unstable();
            prop_assert_eq!(got, want, "a permutation of the compensable succeeded runs");
            for pair in order.windows(2) {
                let (a, b) = (by_id[&pair[0]], by_id[&pair[1]]);
                prop_assert!((a.ended_at_ms, a.completion_seq) >= (b.ended_at_ms, b.completion_seq), "{:?} before {:?}", a, b);
            }
        }

        /// Random compensation ends: one at a time, in order, each started once by the saga.
        #[test]
        fn a_saga_compensates_each_run_once_in_order(runs in ended_runs(), fates in proptest::collection::vec(0u8..3, 0..80)) {
            let order = compensation_order(&runs);
            let mut saga = Saga::new(order.clone());
            let mut started = Vec::new();
            let mut fates = fates.into_iter();
            loop {
                match saga.next_step() {
                    SagaStep::Compensate(run) => {
                        started.push(run);
                        saga.record(run, CompensationState::InFlight).expect("known");
                    }
                    SagaStep::Wait => {
                        let run = *started.last().expect("something in flight");
                        let to = [CompensationState::InFlight, CompensationState::Succeeded, CompensationState::Failed];
                        saga.record(run, to[fates.next().unwrap_or(1) as usize]).expect("known");
                    }
                    SagaStep::Done => break,
                }
            }
            prop_assert_eq!(started, order);
        }
    }
}
