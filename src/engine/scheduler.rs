//! The Scheduler actor: the engine's timers. It wakes task runs whose timer is due — a retry
//! delay that has passed, a `wait_timeout` that ran out — (timers come from the persisted
//! `not_before`, so a restart re-arms every one) and, under
//! `gaffer serve`, fires cron schedules (their next fire time is persisted by the Supervisor
//! in the same commit as the job run a fire starts).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use actix::prelude::*;

use super::SharedClock;
use super::job_run::{JobRun, TimerDue};
use crate::model::schedule::Schedule;

pub struct Scheduler {
    clock: SharedClock,
    due: BTreeSet<(u64, u64)>,
    owners: HashMap<u64, (u64, Addr<JobRun>)>,
    crons: BTreeMap<String, (Schedule, u64)>,
    fire_to: Option<Recipient<Fire>>,
    alarm: Option<SpawnHandle>,
    /// Task timers wait while held: at start, until the inbox's commands reached the resumed
    /// runs (a signal sent while gaffer was down beats a `wait_timeout` that expired meanwhile).
    held: bool,
}

impl Scheduler {
    pub fn new(clock: SharedClock) -> Scheduler {
        Scheduler {
            clock,
            due: BTreeSet::new(),
            owners: HashMap::new(),
            crons: BTreeMap::new(),
            fire_to: None,
            alarm: None,
            held: false,
        }
    }

    /// Fires what is due and sets one alarm for the next timer of either kind.
    fn rearm(&mut self, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        if !self.held {
            self.wake_task_runs(now);
        }
        self.fire_crons(now);
        if let Some(handle) = self.alarm.take() {
            ctx.cancel_future(handle);
        }
        let next_retry = self.due.first().map(|(due, _)| *due).filter(|_| !self.held);
        let next_cron = self.crons.values().map(|(_, due)| *due).min();
        if let Some(at) = next_retry.into_iter().chain(next_cron).min() {
            let wait = Duration::from_millis(at.saturating_sub(now).max(1));
            self.alarm = Some(ctx.run_later(wait, |act, ctx| act.rearm(ctx)));
        }
    }

    fn wake_task_runs(&mut self, now: u64) {
        while let Some(&(due_ms, task_run)) = self.due.first() {
            if due_ms > now {
                break;
            }
            self.due.pop_first();
            if let Some((_, owner)) = self.owners.remove(&task_run) {
                owner.do_send(TimerDue { task_run, due_ms });
            }
        }
    }

    /// A fire time that came late (a busy or suspended machine) fires once, and the next one
    /// is counted from now: no burst of stale fires.
    fn fire_crons(&mut self, now: u64) {
        let Some(fire_to) = &self.fire_to else { return };
        for (job, (schedule, due)) in self.crons.iter_mut() {
            if *due > now {
                continue;
            }
            let scheduled_for = *due;
            *due = schedule.next_after(now.max(scheduled_for)).unwrap_or(u64::MAX);
            fire_to.do_send(Fire { job: job.clone(), scheduled_for, next_due_ms: *due, held: false });
        }
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(super::MAILBOX_CAPACITY);
    }
}

/// A task run's timer (its retry delay, or its `wait_timeout`): wake `task_run` at `due_ms`
/// by telling its job run. A task run has at most one timer; a new one replaces the old.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TaskTimer {
    pub task_run: u64,
    pub due_ms: u64,
    pub owner: Addr<JobRun>,
}

impl Handler<TaskTimer> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: TaskTimer, ctx: &mut Self::Context) {
        if let Some((old_due, _)) = self.owners.remove(&msg.task_run) {
            self.due.remove(&(old_due, msg.task_run));
        }
        self.due.insert((msg.due_ms, msg.task_run));
        self.owners.insert(msg.task_run, (msg.due_ms, msg.owner));
        self.rearm(ctx);
    }
}

/// Holds (`true`) or releases (`false`) the task timers; see `Scheduler::held`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Hold(pub bool);

impl Handler<Hold> for Scheduler {
    type Result = ();

    fn handle(&mut self, Hold(held): Hold, ctx: &mut Self::Context) {
        self.held = held;
        self.rearm(ctx);
    }
}

/// Forget the timer of `task_run` (it was cancelled, retried by hand, or signalled).
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

/// A cron fire time has come for `job`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fire {
    pub job: String,
    pub scheduled_for: u64,
    /// The fire time after this one, already armed; persisted by whoever handles the fire.
    pub next_due_ms: u64,
    /// A fire time `overlap = "queue"` held, starting now: it was recorded (and taken, on a
    /// shared store) when it was held.
    pub held: bool,
}

/// Start firing these schedules (job, schedule, first due time), telling `fire_to`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ArmCrons {
    pub crons: Vec<(String, Schedule, u64)>,
    pub fire_to: Recipient<Fire>,
}

impl Handler<ArmCrons> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: ArmCrons, ctx: &mut Self::Context) {
        self.fire_to = Some(msg.fire_to);
        self.crons = msg.crons.into_iter().map(|(job, schedule, due)| (job, (schedule, due))).collect();
        self.rearm(ctx);
    }
}
