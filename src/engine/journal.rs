//! The Journal actor: every event goes to every live subscriber (headless output, the TUI and
//! SSE) at once, and to `events/events.<date>.jsonl` (whole lines, see `journal_file`): the
//! lines of the events published while the Journal was busy are written together, with one
//! `write`, once its mailbox is empty (and before it answers `Flush`).

use std::path::Path;

use actix::prelude::*;
use tokio::sync::mpsc;

use super::EngineEvent;
use super::journal_file::JournalFile;
use crate::store::StoreHandle;

pub struct Journal {
    file: Option<JournalFile>,
    subscribers: Vec<mpsc::UnboundedSender<EngineEvent>>,
    /// The store, which appends every event to a cluster's stream (nothing for redb).
    store: Option<StoreHandle>,
    /// A `WriteOut` is on its way: the gathered lines are written once the mailbox is empty.
    write_out_asked: bool,
    /// Today (UTC), as days since the epoch and as `YYYY-MM-DD`: the file an event goes to.
    today: (u64, String),
}

impl Journal {
    pub fn new(state_dir: &Path) -> Journal {
        let file = JournalFile::open(state_dir).inspect_err(|e| tracing::error!("event journal disabled: {e}")).ok();
        Journal { file, subscribers: Vec::new(), store: None, write_out_asked: false, today: (u64::MAX, String::new()) }
    }

    /// Every event published from now on also goes to `store`'s event stream
    /// (`Store::record_event`), in the order published.
    pub fn record_in(&mut self, store: StoreHandle) {
        self.store = Some(store);
    }
}

impl Journal {
    /// A subscriber that sees every event from the first one (made before the actor starts).
    pub fn subscribe_now(&mut self) -> mpsc::UnboundedReceiver<EngineEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.push(tx);
        rx
    }
}

impl Actor for Journal {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(super::MAILBOX_CAPACITY);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.write_out();
    }
}

impl Journal {
    /// One event: to the subscribers, to the store's stream, and gathered for the file.
    fn publish(&mut self, event: EngineEvent) {
        // Live subscribers first: they wait on no file write, and `task.started` is on the
        // enqueue → start path they measure.
        self.subscribers.retain(|s| s.send(event.clone()).is_ok());
        if self.file.is_some() || self.store.is_some() {
            let line = event.to_json_text();
            if let Some(store) = &self.store {
                store.record_event(event.job_run, event.ts_ms, &line);
            }
            if self.file.is_some() {
                let day = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() / 86_400);
                if day != self.today.0 {
                    self.today = (day, date_of(day));
                }
                if let Some(file) = &mut self.file {
                    file.push(&self.today.1, line.as_bytes());
                }
            }
        }
    }

    /// The gathered lines are written once the mailbox is empty: actix handles every message
    /// in the mailbox before the context's own items (`notify`).
    fn write_out_soon(&mut self, ctx: &mut Context<Self>) {
        if !self.write_out_asked && self.file.as_ref().is_some_and(JournalFile::has_gathered) {
            self.write_out_asked = true;
            ctx.notify(WriteOut);
        }
    }

    fn write_out(&mut self) {
        self.write_out_asked = false;
        if let Some(file) = &mut self.file {
            file.flush();
        }
    }
}

/// `YYYY-MM-DD` of the UTC day `day` days after the epoch.
fn date_of(day: u64) -> String {
    let secs = i64::try_from(day.saturating_mul(86_400)).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default().format("%Y-%m-%d").to_string()
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub EngineEvent);

impl Handler<Publish> for Journal {
    type Result = ();

    fn handle(&mut self, Publish(event): Publish, ctx: &mut Self::Context) {
        self.publish(event);
        self.write_out_soon(ctx);
    }
}

/// Several events, in order (a commit's).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PublishAll(pub Vec<EngineEvent>);

impl Handler<PublishAll> for Journal {
    type Result = ();

    fn handle(&mut self, PublishAll(events): PublishAll, ctx: &mut Self::Context) {
        for event in events {
            self.publish(event);
        }
        self.write_out_soon(ctx);
    }
}

/// Writes the gathered lines (sent by the Journal to itself).
#[derive(Message)]
#[rtype(result = "()")]
struct WriteOut;

impl Handler<WriteOut> for Journal {
    type Result = ();

    fn handle(&mut self, _: WriteOut, _ctx: &mut Self::Context) {
        self.write_out();
    }
}

/// Another cluster node's event (`cluster::follow_events`): to the subscribers only — it is in
/// that node's journal and in the cluster's stream already.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Echo(pub EngineEvent);

impl Handler<Echo> for Journal {
    type Result = ();

    fn handle(&mut self, Echo(event): Echo, _ctx: &mut Self::Context) {
        self.subscribers.retain(|s| s.send(event.clone()).is_ok());
    }
}

#[derive(Message)]
#[rtype(result = "mpsc::UnboundedReceiver<EngineEvent>")]
pub struct Subscribe;

impl Handler<Subscribe> for Journal {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, _: Subscribe, _ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.push(tx);
        MessageResult(rx)
    }
}

/// Answered once every event published before it has been written and fanned out.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for Journal {
    type Result = ();

    fn handle(&mut self, _: Flush, _ctx: &mut Self::Context) {
        if let Some(file) = &mut self.file {
            file.flush();
        }
    }
}
