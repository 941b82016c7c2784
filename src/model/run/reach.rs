//! A task that needs a transition target follows that need's *latest* task run (SPEC §2.2
//! leaves it open; README "Workflow control" says it): the target may run several times — a
//! loop, several arrivals — so its dependents wait until nothing can reach it again (no task
//! run of it or of anything upstream of it is open), then see how its last run ended and, in
//! templates, that run's outputs.

use crate::model::TaskState;
use crate::model::graph::{self, Change};

use super::input::Env;
use super::step::Step;

/// How one need of a held task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// It may still run (again), or nothing reached it yet.
    Open,
    Succeeded,
    /// It ended failed, dead, cancelled or skipped: what needs it is skipped.
    Unsuccessful,
}

impl<E: Env> Step<'_, E> {
    /// Decides the pending tasks that need a transition target (`RunState::held`) whose needs
    /// have settled: skipped when one did not succeed, ready (queued or waiting) when all did.
    pub(super) fn decide_held(&mut self) {
        let mut open_tasks: Option<Vec<bool>> = None;
        for d in self.s.held.clone() {
            if self.s.states[d] != TaskState::Pending {
                continue;
            }
            let mut all_succeeded = true;
            let mut unsuccessful = false;
            for &n in self.s.graph.needs(d) {
                match self.need(n, &mut open_tasks) {
                    Need::Open => all_succeeded = false,
                    Need::Succeeded => {}
                    Need::Unsuccessful => unsuccessful = true,
                }
            }
            let to = if unsuccessful || (all_succeeded && graph::is_failing(&self.s.states) && self.s.graph.fail_fast) {
                TaskState::Skipped
            } else if all_succeeded {
                self.s.graph.ready_state(d)
            } else {
                continue;
            };
            self.s.set_state(d, to);
            let mut changes = vec![Change { task: d, to }];
            if to == TaskState::Skipped {
                changes.extend(self.follow_needs(d));
            }
            self.apply(changes);
            open_tasks = None; // what was just started is open now
        }
    }

    /// How need `n` stands: a transition target only once nothing can reach it again, by its
    /// latest task run; any other task by its one task run.
    fn need(&self, n: usize, open_tasks: &mut Option<Vec<bool>>) -> Need {
        let latest = &self.s.tasks[self.s.latest[n]];
        if !latest.is_made() || !latest.state.is_terminal() {
            return Need::Open;
        }
        if self.s.workflow_graph.is_transition_target(n) {
            let open = open_tasks.get_or_insert_with(|| self.open_tasks());
            if open[n] || self.s.workflow_graph.upstream(n).into_iter().any(|u| open[u]) {
                return Need::Open;
            }
        }
        match latest.state {
            TaskState::Succeeded => Need::Succeeded,
            _ => Need::Unsuccessful,
        }
    }

    /// Per task: whether one of its task runs is open (a fan-out's node stands for its items).
    fn open_tasks(&self) -> Vec<bool> {
        let mut open = vec![false; self.s.graph.len()];
        for (i, t) in self.s.tasks.iter().enumerate() {
            if self.s.is_node(i) && t.is_made() && !t.state.is_terminal() {
                open[t.task_index] = true;
            }
        }
        open
    }
}
