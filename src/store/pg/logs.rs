//! Attempts' logs in the database, so `logs` works from any node, also after the node that ran
//! the attempt is gone (issue #11 item 6).
//!
//! The node running an attempt ships its log file — capped by `executor::logfile` and only ever
//! appended to — into `log_chunks`: every [`FLUSH_EVERY`] while the attempt runs and once more
//! when it ended, in chunks of at most [`CHUNK_BYTES`], each row carrying the byte offset it
//! starts at. The file stays the node's own copy; the rows are what other nodes read.
//!
//! Every attempt's shipper hands its chunks to the node's one [`ChunkWriter`], which inserts
//! all that arrived while its previous insert ran in one statement (group commit, as the
//! store's writer): many short attempts ending at once cost one round trip, not one each.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::PgError;
use super::writer::to_db;
use crate::store::LogShipper;

/// The most one row holds.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// How often a running attempt's new output is shipped.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// The most read from the file per round (the rest goes at the next): what shipping holds in memory.
const ROUND_BYTES: u64 = 16 * CHUNK_BYTES as u64;
/// How long the end of an attempt waits for its last chunks when the database does not answer.
const FINISH_WITHIN: Duration = Duration::from_secs(5);

const PUT_CHUNKS: &str = "INSERT INTO log_chunks (job_run, task_run, attempt, seq, at, bytes) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::int[], $5::bigint[], $6::bytea[]) \
     ON CONFLICT DO NOTHING";
/// Chunks in one insert, at most (16 MiB).
const MAX_INSERT_CHUNKS: usize = 256;
/// Job runs per retention statement.
const FORGET_BATCH: usize = 1_024;

/// One attempt's log on its way into the database.
pub struct Shipment {
    pub job_run: u64,
    pub task_run: u64,
    pub attempt: u32,
    pub state_dir: PathBuf,
    pub path: PathBuf,
}

/// One chunk of one attempt's log, as a row.
struct Chunk {
    job_run: i64,
    task_run: i64,
    attempt: i32,
    seq: i32,
    at: i64,
    bytes: Vec<u8>,
}

struct Put {
    chunks: Vec<Chunk>,
    reply: oneshot::Sender<Result<(), PgError>>,
}

/// The node's way into `log_chunks`. Cheap to clone; its task ends with the last clone.
#[derive(Clone)]
pub struct ChunkWriter {
    tx: mpsc::UnboundedSender<Put>,
}

impl ChunkWriter {
    /// Starts the inserting task on the current runtime.
    pub fn start(pool: Pool) -> ChunkWriter {
        let (tx, mut rx) = mpsc::unbounded_channel::<Put>();
        tokio::spawn(async move {
            while let Some(group) = super::batch::next_group(&mut rx, MAX_INSERT_CHUNKS, |p| p.chunks.len()).await {
                let result = put_all(&pool, &group).await;
                for put in group {
                    let _ = put.reply.send(result.clone());
                }
            }
        });
        ChunkWriter { tx }
    }

    async fn put(&self, chunks: Vec<Chunk>) -> Result<(), PgError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Put { chunks, reply }).map_err(|_| PgError::Closed)?;
        answer.await.map_err(|_| PgError::Closed)?
    }
}

async fn put_all(pool: &Pool, group: &[Put]) -> Result<(), PgError> {
    let chunks = || group.iter().flat_map(|p| &p.chunks);
    let job_runs: Vec<i64> = chunks().map(|c| c.job_run).collect();
    let task_runs: Vec<i64> = chunks().map(|c| c.task_run).collect();
    let attempts: Vec<i32> = chunks().map(|c| c.attempt).collect();
    let seqs: Vec<i32> = chunks().map(|c| c.seq).collect();
    let offsets: Vec<i64> = chunks().map(|c| c.at).collect();
    let bytes: Vec<&[u8]> = chunks().map(|c| c.bytes.as_slice()).collect();
    let client = pool.get().await?;
    let statement = client.prepare_cached(PUT_CHUNKS).await?;
    client.execute(&statement, &[&job_runs, &task_runs, &attempts, &seqs, &offsets, &bytes]).await?;
    Ok(())
}

/// Ships `shipment` until its attempt ended (or its handle was dropped), then the rest.
pub async fn ship(writer: ChunkWriter, shipment: Shipment, shipper: LogShipper) {
    let LogShipper { mut ended, shipped } = shipper;
    let mut shipped_up_to = ShippedUpTo::default();
    let mut outage = Quiet::default();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut ended => true,
        };
        if last {
            let rest = async {
                while ship_round(&writer, &shipment, &mut shipped_up_to, &mut outage).await {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            if tokio::time::timeout(FINISH_WITHIN, rest).await.is_err() {
                tracing::warn!(
                    "the end of the log of task run {} attempt {} could not be stored: the node keeps it ({})",
                    shipment.task_run,
                    shipment.attempt,
                    shipment.path.display()
                );
            }
            break;
        }
        ship_round(&writer, &shipment, &mut shipped_up_to, &mut outage).await;
    }
    let _ = shipped.send(());
}

/// How much of the file is in the database: the next chunk's number and byte offset.
#[derive(Debug, Default, Clone, Copy)]
struct ShippedUpTo {
    seq: i32,
    offset: u64,
}

/// A shipment's failed rounds, said once per outage (`model::outage`), not every 50 ms.
struct Quiet {
    outage: crate::model::outage::Outage,
    began: std::time::Instant,
}

impl Default for Quiet {
    fn default() -> Self {
        Quiet { outage: Default::default(), began: std::time::Instant::now() }
    }
}

/// Ships what the file gained (one round's worth at most); true when more is left to ship, or
/// when the round failed (it is tried again from the same offset).
async fn ship_round(writer: &ChunkWriter, shipment: &Shipment, up_to: &mut ShippedUpTo, quiet: &mut Quiet) -> bool {
    let (state_dir, path, offset) = (shipment.state_dir.clone(), shipment.path.clone(), up_to.offset);
    let read = tokio::task::spawn_blocking(move || read_new(&state_dir, &path, offset)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Ok(Err(e)) => {
            tracing::warn!("cannot ship the log {}: {e}", shipment.path.display());
            return false;
        }
        Err(_) => return false,
    };
    if bytes.is_empty() {
        return false;
    }
    let more = bytes.len() as u64 == ROUND_BYTES;
    let mut chunks = Vec::new();
    let mut next = *up_to;
    for piece in bytes.chunks(CHUNK_BYTES) {
        chunks.push(Chunk {
            job_run: to_db(shipment.job_run),
            task_run: to_db(shipment.task_run),
            attempt: shipment.attempt as i32,
            seq: next.seq,
            at: to_db(next.offset),
            bytes: piece.to_vec(),
        });
        next.seq += 1;
        next.offset += piece.len() as u64;
    }
    match writer.put(chunks).await {
        Ok(()) => {
            *up_to = next;
            quiet.outage.recovered();
            more
        }
        Err(e) => {
            if let Some(note) = quiet.outage.failed_note(quiet.began.elapsed().as_millis() as u64) {
                tracing::warn!("cannot ship the log of task run {}: {e}; trying again{note}", shipment.task_run);
            }
            true
        }
    }
}

/// Removes the shipped logs of `job_runs` (retention).
pub async fn forget(pool: &Pool, job_runs: &[u64]) -> Result<(), PgError> {
    let client = pool.get().await?;
    for ids in job_runs.chunks(FORGET_BATCH) {
        let ids: Vec<i64> = ids.iter().copied().map(to_db).collect();
        client.execute("DELETE FROM log_chunks WHERE job_run = ANY($1)", &[&ids]).await?;
    }
    Ok(())
}

/// Up to [`ROUND_BYTES`] of the log from `offset` (through `state_dir`, which checks the path).
fn read_new(state_dir: &Path, path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut file = crate::state_dir::open_under(state_dir, path, crate::state_dir::Access::Read)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.take(ROUND_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Up to `max` bytes of an attempt's shipped log from byte `offset`: read in `snapshot`'s
/// transaction through the chunks that overlap the range.
pub async fn log_bytes(
    client: &deadpool_postgres::Client,
    task_run: u64,
    attempt: u32,
    offset: u64,
    max: u64,
) -> Result<Vec<u8>, PgError> {
    let rows = client
        .query(
            "SELECT at, bytes FROM log_chunks WHERE task_run = $1 AND attempt = $2 \
             AND at + length(bytes) > $3 AND at < $3 + $4 ORDER BY seq",
            &[&to_db(task_run), &(attempt as i32), &to_db(offset), &to_db(max)],
        )
        .await?;
    let mut bytes = Vec::new();
    for row in rows {
        let (at, chunk): (i64, Vec<u8>) = (row.get(0), row.get(1));
        let skip = offset.saturating_sub(at as u64) as usize;
        bytes.extend_from_slice(chunk.get(skip..).unwrap_or_default());
    }
    bytes.truncate(usize::try_from(max).unwrap_or(usize::MAX));
    Ok(bytes)
}
