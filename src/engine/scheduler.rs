//! The Scheduler actor: wakes task runs whose retry delay has passed. Timers come from the
//! persisted `not_before` of each retrying task run, so a restart re-arms every one of them.
//! (Cron schedules join it with `gaffer serve`.)

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use actix::prelude::*;

use super::SharedClock;
use super::job_run::{JobRun, RetryDue};

pub struct Scheduler {
    clock: SharedClock,
    due: BTreeSet<(u64, u64)>,
    owners: HashMap<u64, (u64, Addr<JobRun>)>,
    alarm: Option<SpawnHandle>,
}

impl Scheduler {
    pub fn new(clock: SharedClock) -> Scheduler {
        Scheduler { clock, due: BTreeSet::new(), owners: HashMap::new(), alarm: None }
    }

    /// Fires what is due and sets one alarm for the next timer.
    fn rearm(&mut self, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        while let Some(&(due_ms, task_run)) = self.due.first() {
            if due_ms > now {
                break;
            }
            self.due.pop_first();
            if let Some((_, owner)) = self.owners.remove(&task_run) {
                owner.do_send(RetryDue { task_run });
            }
        }
        if let Some(handle) = self.alarm.take() {
            ctx.cancel_future(handle);
        }
        if let Some(&(due_ms, _)) = self.due.first() {
            let wait = Duration::from_millis(due_ms.saturating_sub(now).max(1));
            self.alarm = Some(ctx.run_later(wait, |act, ctx| act.rearm(ctx)));
        }
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(super::MAILBOX_CAPACITY);
    }
}

/// Wake `task_run` at `due_ms` by telling its job run.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Schedule {
    pub task_run: u64,
    pub due_ms: u64,
    pub owner: Addr<JobRun>,
}

impl Handler<Schedule> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Schedule, ctx: &mut Self::Context) {
        if let Some((old_due, _)) = self.owners.remove(&msg.task_run) {
            self.due.remove(&(old_due, msg.task_run));
        }
        self.due.insert((msg.due_ms, msg.task_run));
        self.owners.insert(msg.task_run, (msg.due_ms, msg.owner));
        self.rearm(ctx);
    }
}

/// Forget the timer of `task_run` (it was cancelled or retried by hand).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unschedule {
    pub task_run: u64,
}

impl Handler<Unschedule> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Unschedule, _ctx: &mut Self::Context) {
        if let Some((due, _)) = self.owners.remove(&msg.task_run) {
            self.due.remove(&(due, msg.task_run));
        }
    }
}
