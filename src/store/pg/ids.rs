//! Ids handed out by the database in blocks: one `nextval` reserves [`ID_BLOCK`] ids for this
//! node (the sequences step by it), so most ids are handed out in memory and two nodes never
//! hand out the same one. Ids of a block never used are skipped, never reused.

use deadpool_postgres::Pool;
use tokio::sync::Mutex;

use super::PgError;

/// Ids per `nextval` (the sequences' `INCREMENT BY` in migration 1).
pub const ID_BLOCK: u64 = 64;

/// The node's current block of each sequence.
pub struct IdBlocks {
    pool: Pool,
    job_run: Mutex<Block>,
    task_run: Mutex<Block>,
    enqueue: Mutex<Block>,
}

/// `next..end` still free.
#[derive(Default)]
struct Block {
    next: u64,
    end: u64,
}

impl IdBlocks {
    pub fn new(pool: Pool) -> IdBlocks {
        IdBlocks { pool, job_run: Mutex::default(), task_run: Mutex::default(), enqueue: Mutex::default() }
    }

    pub async fn next_job_run(&self) -> Result<u64, PgError> {
        self.next(&self.job_run, JOB_RUN_IDS).await
    }

    pub async fn next_task_run(&self) -> Result<u64, PgError> {
        self.next(&self.task_run, TASK_RUN_IDS).await
    }

    pub async fn next_enqueue_seq(&self) -> Result<u64, PgError> {
        self.next(&self.enqueue, ENQUEUE_SEQS).await
    }

    async fn next(&self, block: &Mutex<Block>, sequence: &str) -> Result<u64, PgError> {
        let mut block = block.lock().await;
        if block.next == block.end {
            let first = reserve(&self.pool, sequence).await?;
            *block = Block { next: first, end: first + ID_BLOCK };
        }
        block.next += 1;
        Ok(block.next - 1)
    }
}

/// The sequences, by what they number.
pub const JOB_RUN_IDS: &str = "job_run_ids";
pub const TASK_RUN_IDS: &str = "task_run_ids";
pub const ENQUEUE_SEQS: &str = "enqueue_seqs";

/// Reserves the next block of `sequence`: `first..first + ID_BLOCK` are this node's.
pub async fn reserve(pool: &Pool, sequence: &str) -> Result<u64, PgError> {
    Ok(reserve_blocks(pool, sequence, 1).await?[0])
}

/// Reserves the next `blocks` blocks of `sequence` in one round trip: their first ids,
/// ascending (each `first..first + ID_BLOCK` is this node's).
pub async fn reserve_blocks(pool: &Pool, sequence: &str, blocks: usize) -> Result<Vec<u64>, PgError> {
    let client = pool.get().await?;
    let reserving = client.prepare_cached("SELECT nextval($1::text::regclass) FROM generate_series(1, $2)").await?;
    let count = i32::try_from(blocks.max(1)).unwrap_or(i32::MAX);
    let rows = client.query(&reserving, &[&sequence, &count]).await?;
    let mut firsts = rows
        .iter()
        .map(|r| u64::try_from(r.get::<_, i64>(0)).map_err(|_| PgError::Db(format!("{sequence} is negative"))))
        .collect::<Result<Vec<u64>, PgError>>()?;
    firsts.sort_unstable();
    Ok(firsts)
}

/// The most blocks a node keeps reserved ahead of the one it hands ids out of (1024 ids of
/// each sequence: what a node that stops leaves unused, never reused).
pub const MAX_BLOCKS_AHEAD: usize = 16;

/// How many blocks to keep reserved ahead once the ones ahead ran out before the next
/// reservation answered (a burst: a workflow of many jobs submitted at once, a wide fan-out):
/// twice as many, up to [`MAX_BLOCKS_AHEAD`], so a burst waits on the database a few times,
/// not once per [`ID_BLOCK`] ids.
pub fn blocks_ahead_after_running_dry(ahead: usize) -> usize {
    (ahead.max(1) * 2).min(MAX_BLOCKS_AHEAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_doubles_the_blocks_kept_ahead_up_to_the_most() {
        let grown: Vec<usize> =
            std::iter::successors(Some(1), |&n| Some(blocks_ahead_after_running_dry(n))).take(7).collect();
        assert_eq!(grown, [1, 2, 4, 8, 16, 16, 16]);
        assert_eq!(blocks_ahead_after_running_dry(0), 2);
    }
}
