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
    let client = pool.get().await?;
    let first: i64 = client.query_one("SELECT nextval($1::text::regclass)", &[&sequence]).await?.get(0);
    u64::try_from(first).map_err(|_| PgError::Db(format!("{sequence} is negative")))
}
