//! Attempts' logs in the database, so `logs` works from any node, also after the node that ran
//! the attempt is gone (issue #11 item 6).
//!
//! The node running an attempt ships its log file — capped by `executor::logfile` and only ever
//! appended to — into `log_chunks`: every [`FLUSH_EVERY`] while the attempt runs and once more
//! when it ended, in chunks of at most [`CHUNK_BYTES`], each row carrying the byte offset it
//! starts at. The file stays the node's own copy; the rows are what other nodes read.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use deadpool_postgres::Pool;

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
     SELECT $1, $2, $3, s, a, b FROM unnest($4::int[], $5::bigint[], $6::bytea[]) AS c(s, a, b) \
     ON CONFLICT DO NOTHING";
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

/// Ships `shipment` until its attempt ended (or its handle was dropped), then the rest.
pub async fn ship(pool: Pool, shipment: Shipment, shipper: LogShipper) {
    let LogShipper { mut ended, shipped } = shipper;
    let mut shipped_up_to = ShippedUpTo::default();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut ended => true,
        };
        if last {
            let rest = async {
                while ship_round(&pool, &shipment, &mut shipped_up_to).await {
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
        ship_round(&pool, &shipment, &mut shipped_up_to).await;
    }
    let _ = shipped.send(());
}

/// How much of the file is in the database: the next chunk's number and byte offset.
#[derive(Debug, Default, Clone, Copy)]
struct ShippedUpTo {
    seq: i32,
    offset: u64,
}

/// Ships what the file gained (one round's worth at most); true when more is left to ship, or
/// when the round failed (it is tried again from the same offset).
async fn ship_round(pool: &Pool, shipment: &Shipment, up_to: &mut ShippedUpTo) -> bool {
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
    let (mut seqs, mut offsets, mut chunks) = (Vec::new(), Vec::new(), Vec::new());
    let mut next = *up_to;
    for chunk in bytes.chunks(CHUNK_BYTES) {
        seqs.push(next.seq);
        offsets.push(to_db(next.offset));
        chunks.push(chunk.to_vec());
        next.seq += 1;
        next.offset += chunk.len() as u64;
    }
    match put_chunks(pool, shipment, &seqs, &offsets, &chunks).await {
        Ok(()) => {
            *up_to = next;
            more
        }
        Err(e) => {
            tracing::warn!("cannot ship the log of task run {}: {e}; trying again", shipment.task_run);
            true
        }
    }
}

async fn put_chunks(
    pool: &Pool,
    shipment: &Shipment,
    seqs: &[i32],
    offsets: &[i64],
    chunks: &[Vec<u8>],
) -> Result<(), PgError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(PUT_CHUNKS).await?;
    let (job_run, task_run, attempt) = (to_db(shipment.job_run), to_db(shipment.task_run), shipment.attempt as i32);
    client.execute(&statement, &[&job_run, &task_run, &attempt, &seqs, &offsets, &chunks]).await?;
    Ok(())
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
