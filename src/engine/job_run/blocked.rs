//! `task.blocked` in a cluster: a queued task run that no live node has the labels for says so
//! once, when it is queued, as a single node says it of one it lacks the labels for
//! (`JobRun::say_blocked`). Which nodes are live is the database's to say, so the owner reads
//! them off its actor thread, and only when it cannot run the task run itself (the common case
//! reads nothing).

use actix::prelude::*;

use super::JobRun;
use crate::engine::EventData;
use crate::engine::journal::Publish;
use crate::model::TaskState;
use crate::model::routing::{can_run, unroutable};

impl JobRun {
    /// `task.blocked` for each queued task run among `tasks` that no live node can run.
    pub(super) fn say_blocked_in_cluster(&self, tasks: &[usize], ctx: &mut Context<Self>) {
        let labels = self.shared.labels.clone();
        let lacking: Vec<u64> = tasks
            .iter()
            .filter(|&&i| self.run.tasks[i].state == TaskState::Queued && !can_run(&self.run.def(i).requires, &labels))
            .map(|&i| self.run.tasks[i].id)
            .collect();
        if lacking.is_empty() {
            return;
        }
        let store = self.shared.store.clone();
        let nodes = async move { tokio::task::spawn_blocking(move || store.nodes()).await };
        ctx.spawn(nodes.into_actor(self).map(move |read, act, _| {
            let live: Vec<Vec<String>> = match read {
                Ok(Ok(Some(nodes))) => nodes.into_iter().filter(|n| n.live).map(|n| n.labels).collect(),
                Ok(Ok(None)) => return,
                Ok(Err(e)) => return tracing::warn!("job run j{}: cannot read the nodes: {e}", act.record.id),
                Err(e) => return tracing::warn!("job run j{}: cannot read the nodes: {e}", act.record.id),
            };
            let live: Vec<&[String]> = live.iter().map(Vec::as_slice).collect();
            for i in lacking.iter().filter_map(|&id| act.idx(id)) {
                let requires = &act.run.def(i).requires;
                if act.run.tasks[i].state != TaskState::Queued || !unroutable(requires, &live) {
                    continue;
                }
                let blocked = EventData::TaskBlocked { requires: requires.clone(), node_labels: labels.to_vec() };
                act.shared.journal.do_send(Publish(act.task_event(blocked, i)));
            }
        }));
    }
}
