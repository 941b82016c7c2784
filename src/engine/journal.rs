//! The Journal actor: every event goes to `events/events.<date>.jsonl` (never dropped: the
//! appender is not lossy) and to every live subscriber (headless output, later the TUI and SSE).

use std::io::Write;
use std::path::Path;

use actix::prelude::*;
use tokio::sync::mpsc;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::{Builder, Rotation};

use super::EngineEvent;

/// Days of journal kept (SPEC §5).
const RETENTION_DAYS: usize = 14;
/// Lines queued for the writer thread before `Publish` waits for it. The queue is allocated
/// whole at start: tracing-appender's default (128 000 lines) was 4 MB of gaffer's idle RSS.
const QUEUED_LINES: usize = 4096;

pub struct Journal {
    file: Option<NonBlocking>,
    /// Flushes the file when the journal goes away; kept here so it lives as long as the writer.
    _guard: Option<WorkerGuard>,
    subscribers: Vec<mpsc::UnboundedSender<EngineEvent>>,
}

impl Journal {
    pub fn new(state_dir: &Path) -> Journal {
        if let Err(e) = std::fs::create_dir_all(state_dir.join("events")) {
            tracing::error!("cannot create {}: {e}", state_dir.join("events").display());
        }
        let appender = Builder::new()
            .rotation(Rotation::DAILY)
            .filename_prefix("events")
            .filename_suffix("jsonl")
            .max_log_files(RETENTION_DAYS)
            .build(state_dir.join("events"));
        match appender {
            Ok(appender) => {
                let (file, guard) =
                    NonBlockingBuilder::default().lossy(false).buffered_lines_limit(QUEUED_LINES).finish(appender);
                Journal { file: Some(file), _guard: Some(guard), subscribers: Vec::new() }
            }
            Err(e) => {
                tracing::error!("event journal disabled: cannot open {}: {e}", state_dir.join("events").display());
                Journal { file: None, _guard: None, subscribers: Vec::new() }
            }
        }
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
        if let Some(file) = &mut self.file {
            let mut line = event.to_json().to_string();
            line.push('\n');
            if let Err(e) = file.write_all(line.as_bytes()) {
                tracing::error!("event journal write failed: {e}");
            }
        }
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
