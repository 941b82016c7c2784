//! Mail between a job run's owner and the nodes that run its attempts (docs/cluster-design.md,
//! "Mail"): rows of `node_mail`, each a [`Mail`] in postcard (the store's codec), bounded.
//!
//! A node running an attempt of a job run owned elsewhere writes `Started`, `Cost`, `Progress`,
//! `Warning` and, once its outcome was taken by the fenced completion, `Ended` — addressed to
//! whoever owns the job run when the mail is read (`to_node` NULL), so an adoption needs no
//! redirect. The owner writes `Kill` to the node running an attempt. Letters are written in the
//! order they were sent, in batches (one transaction and one `NOTIFY gaffer_mail` per batch),
//! and read in id order.
//!
//! A letter to an owner is read at least once: reading marks it with the owner's epoch, and the
//! owner deletes it in the commit that applies it (`Mutation::MailRead`), so an owner killed
//! between reading and committing leaves it to its adopter, whose new epoch has not read it.
//! A letter to a node (`Kill`) is read once (read = deleted): a node that dies is not running
//! what it was told to kill. Letters of ended job runs are deleted by their owner's next read.

use std::collections::BTreeMap;

use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::PgError;
use super::writer::{from_db, to_db};
use crate::model::FailReason;
use crate::model::cost::Usage;
use crate::store::codec;

/// The channel a node listens on for mail (the payload says nothing).
pub const MAIL_CHANNEL: &str = "gaffer_mail";

/// A text field of a letter is cut past this many bytes.
pub const MAX_TEXT_BYTES: usize = 4096;

/// A letter's body, at most (an `Ended` with its outputs, whose limits the executor applied:
/// `outputs_max_bytes` is at most 64 MiB); a bigger one is refused when read.
pub const MAX_BODY_BYTES: usize = 65 * 1024 * 1024;

/// Letters per transaction, at most.
const MAX_LETTERS: usize = 256;

/// What one letter says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mail {
    /// The attempt's process exists on node `node` (the owner records it running).
    Started {
        node: i64,
        process: Option<(u32, i32, u64)>,
    },
    /// Spending the attempt reported, priced by the node that runs it.
    Cost {
        usage: Usage,
        model: Option<String>,
        unpriced: bool,
    },
    Progress {
        text: String,
    },
    Warning {
        text: String,
    },
    /// The attempt ended and its outcome was taken (its attempt row is written).
    Ended {
        exit_code: Option<i32>,
        signal: Option<i32>,
        reason: Option<FailReason>,
        detail: Option<String>,
        outputs: BTreeMap<String, String>,
    },
    /// To the node running the attempt: stop it (cancel, budget, stop).
    Kill {
        reason: FailReason,
        grace_ms: u64,
    },
    /// To the job run's owner: a command given on node `from` (`engine::cluster::relay`), to be
    /// answered by an [`Mail::Answer`] to that node. `task_run`/`attempt` of its letter are 0.
    Command {
        request: u64,
        from: i64,
        command: Relayed,
    },
    /// To the node that relayed command `request`: what the owner answered (`Err`: refused).
    Answer {
        request: u64,
        result: Result<String, String>,
    },
}

/// A command relayed to a job run's owner: what it does, to the job run or one of its task runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relayed {
    pub action: RelayedAction,
    /// `None`: the whole job run.
    pub task_run: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayedAction {
    Cancel,
    Signal(String),
    Retry {
        from: Option<String>,
        definition: Option<crate::model::rerun::DefinitionChoice>,
        budget_usd_micros: Option<u64>,
    },
}

impl codec::Record for Mail {}

impl Mail {
    fn kind(&self) -> &'static str {
        match self {
            Mail::Started { .. } => "started",
            Mail::Cost { .. } => "cost",
            Mail::Progress { .. } => "progress",
            Mail::Warning { .. } => "warning",
            Mail::Ended { .. } => "ended",
            Mail::Kill { .. } => "kill",
            Mail::Command { .. } => "command",
            Mail::Answer { .. } => "answer",
        }
    }

    /// Its text fields cut to [`MAX_TEXT_BYTES`].
    fn bounded(self) -> Mail {
        let cut = |t: String| cut_text(t, MAX_TEXT_BYTES);
        match self {
            Mail::Progress { text } => Mail::Progress { text: cut(text) },
            Mail::Warning { text } => Mail::Warning { text: cut(text) },
            Mail::Ended { exit_code, signal, reason, detail, outputs } => {
                Mail::Ended { exit_code, signal, reason, detail: detail.map(cut), outputs }
            }
            Mail::Answer { request, result } => Mail::Answer { request, result: result.map(cut).map_err(cut) },
            other => other,
        }
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut_text(mut text: String, max: usize) -> String {
    if text.len() > max {
        let end = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(end);
    }
    text
}

/// One row of `node_mail`: about attempt `attempt` of `task_run` of `job_run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub job_run: u64,
    /// `None`: to the job run's owner, whoever it is when read.
    pub to_node: Option<i64>,
    pub task_run: u64,
    pub attempt: u32,
    pub mail: Mail,
}

/// A node's outgoing mail: letters sent in order, written in batches. Cheap to clone; ends
/// when every clone is gone. Must be started on a tokio runtime.
#[derive(Clone)]
pub struct Mailer {
    tx: mpsc::UnboundedSender<Letter>,
}

impl Mailer {
    pub fn start(pool: Pool) -> Mailer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Letter>();
        tokio::spawn(async move {
            while let Some(group) = super::batch::next_group(&mut rx, MAX_LETTERS, |_| 1).await {
                let mut pause = std::time::Duration::from_millis(50);
                // Mail is not dropped while the database is away (a restart): it is retried.
                while let Err(e) = post(&pool, &group).await {
                    tracing::warn!("postgres: cannot post {} letters ({e}); trying again", group.len());
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
            }
        });
        Mailer { tx }
    }

    /// Sends `letter` (written soon, after every letter sent before it).
    pub fn send(&self, letter: Letter) {
        if self.tx.send(Letter { mail: letter.mail.bounded(), ..letter }).is_err() {
            tracing::warn!("postgres: mail is closed; a letter was not sent");
        }
    }
}

const POST: &str = "WITH posted AS ( \
     INSERT INTO node_mail (job_run, to_node, task_run, attempt, kind, body) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::int[], $5::text[], $6::bytea[]) \
     RETURNING id \
 ) SELECT pg_notify($7, '') WHERE EXISTS (SELECT 1 FROM posted)";

/// Writes `letters` in one statement (in their order: `unnest` keeps it, ids follow it) and
/// wakes the readers once.
async fn post(pool: &Pool, letters: &[Letter]) -> Result<(), PgError> {
    let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for l in letters {
        columns.0.push(to_db(l.job_run));
        columns.1.push(l.to_node);
        columns.2.push(to_db(l.task_run));
        columns.3.push(l.attempt as i32);
        columns.4.push(l.mail.kind());
        columns.5.push(codec::encode(&l.mail)?);
    }
    let c = pool.get().await?;
    let stmt = c.prepare_cached(POST).await?;
    let (a, b, t, n, k, body) = &columns;
    c.query(&stmt, &[a, b, t, n, k, body, &MAIL_CHANNEL]).await?;
    Ok(())
}

/// Letters for node `$1`: those to it are taken (deleted); those to the owner of a job run it
/// owns and this owner epoch has not read yet are marked read by it; those of its ended job runs
/// (late ones nobody will act on) are deleted. From the few letters, each job run by its key.
const DRAIN: &str = "WITH to_owner AS ( \
     UPDATE node_mail m SET read_epoch = j.owner_epoch FROM job_runs j \
     WHERE m.to_node IS NULL AND j.id = m.job_run AND j.owner_node = $1 AND j.state = 'running' \
       AND m.read_epoch IS DISTINCT FROM j.owner_epoch \
     RETURNING m.id, m.job_run, m.to_node, m.task_run, m.attempt, m.body \
 ), to_node AS ( \
     DELETE FROM node_mail WHERE to_node = $1 \
     RETURNING id, job_run, to_node, task_run, attempt, body \
 ), too_late AS ( \
     DELETE FROM node_mail m USING job_runs j \
     WHERE m.to_node IS NULL AND j.id = m.job_run AND j.owner_node = $1 AND j.state <> 'running' \
 ) SELECT * FROM to_owner UNION ALL SELECT * FROM to_node ORDER BY id";

/// A letter as read, with its row's id: an owner deletes it with the commit that applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub id: i64,
    pub letter: Letter,
}

/// Reads every letter for node `me` not read yet ([`DRAIN`]), in the order they were written.
/// A letter that cannot be read is dropped, said.
pub async fn drain(c: &deadpool_postgres::Client, me: i64) -> Result<Vec<Received>, PgError> {
    let stmt = c.prepare_cached(DRAIN).await?;
    let rows = c.query(&stmt, &[&me]).await?;
    let mut letters = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for r in rows {
        let id: i64 = r.get(0);
        let body: Vec<u8> = r.get(5);
        let mail = match body.len() <= MAX_BODY_BYTES {
            true => codec::decode::<Mail>(&body).map_err(|e| e.to_string()),
            false => Err(format!("{} bytes, more than a letter may be", body.len())),
        };
        let attempt: i32 = r.get(4);
        let (job_run, task_run) = (from_db(r.get(1)), from_db(r.get(3)));
        match mail {
            Ok(mail) => letters.push(Received {
                id,
                letter: Letter { job_run, to_node: r.get(2), task_run, attempt: attempt as u32, mail },
            }),
            Err(e) => {
                tracing::warn!("postgres: dropped a letter about task run {task_run} that cannot be read: {e}");
                unreadable.push(id);
            }
        }
    }
    if !unreadable.is_empty() {
        c.execute(DELETE_READ, &[&unreadable]).await?;
    }
    Ok(letters)
}

/// Deletes letters by id: those an owner applied (in the commit that applied them).
pub const DELETE_READ: &str = "DELETE FROM node_mail WHERE id = ANY($1)";

/// Deletes letters an owner handled outside a job run's commit (a relayed command, once
/// answered).
pub async fn delete(pool: &Pool, ids: &[i64]) -> Result<(), PgError> {
    pool.get().await?.execute(DELETE_READ, &[&ids]).await?;
    Ok(())
}
