//! The Journal actor: every event goes to `events/events.<date>.jsonl` (whole lines, see
//! `journal_file`) and to every live subscriber (headless output, the TUI and SSE).

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
}

impl Journal {
    pub fn new(state_dir: &Path) -> Journal {
        let file = JournalFile::open(state_dir).inspect_err(|e| tracing::error!("event journal disabled: {e}")).ok();
        Journal { file, subscribers: Vec::new(), store: None }
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
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub EngineEvent);

impl Handler<Publish> for Journal {
    type Result = ();

    fn handle(&mut self, Publish(event): Publish, _ctx: &mut Self::Context) {
        // Live subscribers first: a `write` to the journal file may wait on the filesystem's
        // own journal, and `task.started` is on the enqueue → start path they measure.
        self.subscribers.retain(|s| s.send(event.clone()).is_ok());
        if self.file.is_some() || self.store.is_some() {
            let mut line = event.to_json_text();
            if let Some(store) = &self.store {
                store.record_event(event.job_run, event.ts_ms, &line);
            }
            if let Some(file) = &mut self.file {
                line.push('\n');
                file.append(&chrono::Utc::now().format("%Y-%m-%d").to_string(), line.as_bytes());
            }
        }
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

    fn handle(&mut self, _: Flush, _ctx: &mut Self::Context) {}
}
