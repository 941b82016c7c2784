//! Reads of one consistent snapshot: a REPEATABLE READ, READ ONLY transaction held open on one
//! pooled connection for as long as the snapshot lives (as a redb read transaction). The same
//! reads, by the same names, as `store::Reader`.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::{StreamExt, pin_mut};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::PgError;
use super::writer::{from_db, to_db};
use crate::store::codec::{self, Record};
use crate::store::records::{AttemptRecord, CacheEntry, DefinitionRecord, JobRunRecord, RaisedBudgets, TaskRunRecord};
use crate::store::{NodeView, RunningOnNode, ScheduleState, StoredEvent};

pub struct PgSnapshot {
    /// `None` only while being dropped.
    client: Option<deadpool_postgres::Client>,
}

impl PgSnapshot {
    pub(super) async fn begin(client: deadpool_postgres::Client) -> Result<PgSnapshot, PgError> {
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        // The snapshot is taken by the first statement, not by BEGIN: take it now.
        client.batch_execute("SELECT 1").await?;
        Ok(PgSnapshot { client: Some(client) })
    }

    fn client(&self) -> &deadpool_postgres::Client {
        self.client.as_ref().expect("a snapshot's connection lives as long as it does")
    }

    pub async fn schema(&self) -> Result<Option<i32>, PgError> {
        super::migrate::schema_version(self.client()).await
    }

    pub async fn job_runs(&self) -> Result<Vec<JobRunRecord>, PgError> {
        self.all("SELECT record FROM job_runs ORDER BY id", &[]).await
    }

    pub async fn task_runs(&self) -> Result<Vec<TaskRunRecord>, PgError> {
        self.all("SELECT record FROM task_runs ORDER BY id", &[]).await
    }

    /// Every job run in id order, one at a time (streamed, never all in memory); `f` returns
    /// false to stop.
    pub async fn each_job_run(&self, f: impl FnMut(JobRunRecord) -> bool) -> Result<(), PgError> {
        self.each("SELECT record FROM job_runs ORDER BY id", &[], f).await
    }

    pub async fn each_job_run_newest_first(&self, f: impl FnMut(JobRunRecord) -> bool) -> Result<(), PgError> {
        self.each("SELECT record FROM job_runs ORDER BY id DESC", &[], f).await
    }

    pub async fn each_task_run(&self, f: impl FnMut(TaskRunRecord) -> bool) -> Result<(), PgError> {
        self.each("SELECT record FROM task_runs ORDER BY id", &[], f).await
    }

    pub async fn job_run(&self, id: u64) -> Result<Option<JobRunRecord>, PgError> {
        self.one("SELECT record FROM job_runs WHERE id = $1", &[&to_db(id)]).await
    }

    pub async fn task_run(&self, id: u64) -> Result<Option<TaskRunRecord>, PgError> {
        self.one("SELECT record FROM task_runs WHERE id = $1", &[&to_db(id)]).await
    }

    pub async fn definition(&self, hash: u64) -> Result<Option<DefinitionRecord>, PgError> {
        self.one("SELECT record FROM definitions WHERE hash = $1", &[&to_db(hash)]).await
    }

    /// The task runs of one job run, in id order.
    pub async fn task_runs_of(&self, job_run: u64) -> Result<Vec<TaskRunRecord>, PgError> {
        self.all("SELECT record FROM task_runs WHERE job_run = $1 ORDER BY id", &[&to_db(job_run)]).await
    }

    /// The instances of one task in one job run, by iteration, then item (none first), then kind.
    pub async fn instances_of(&self, job_run: u64, task: &str) -> Result<Vec<TaskRunRecord>, PgError> {
        let sql = "SELECT record FROM task_runs WHERE job_run = $1 AND task = $2 \
                   ORDER BY iteration, item_index NULLS FIRST, kind";
        self.all(sql, &[&to_db(job_run), &task]).await
    }

    pub async fn attempts_of(&self, task_run: u64) -> Result<Vec<AttemptRecord>, PgError> {
        self.all("SELECT record FROM attempts WHERE task_run = $1 ORDER BY n", &[&to_db(task_run)]).await
    }

    pub async fn attempts(&self) -> Result<Vec<AttemptRecord>, PgError> {
        self.all("SELECT record FROM attempts ORDER BY task_run, n", &[]).await
    }

    pub async fn each_attempt(&self, f: impl FnMut(AttemptRecord) -> bool) -> Result<(), PgError> {
        self.each("SELECT record FROM attempts ORDER BY task_run, n", &[], f).await
    }

    pub async fn schedules(&self) -> Result<BTreeMap<String, ScheduleState>, PgError> {
        let rows = self.client().query("SELECT job, record FROM schedules ORDER BY job", &[]).await?;
        rows.iter().map(|row| Ok((row.get(0), decode(row.get(1))?))).collect()
    }

    pub async fn idempotency_key(&self, key: &str) -> Result<Option<u64>, PgError> {
        let row = self.client().query_opt("SELECT job_run FROM idempotency WHERE key = $1", &[&key]).await?;
        Ok(row.map(|r| from_db(r.get(0))))
    }

    pub async fn cache_entry(&self, key: &str) -> Result<Option<CacheEntry>, PgError> {
        self.one("SELECT record FROM cache WHERE key = $1", &[&key]).await
    }

    pub async fn expired_cache_keys(&self, now_ms: u64) -> Result<Vec<String>, PgError> {
        let rows = self
            .client()
            .query("SELECT key FROM cache WHERE expires_at_ms < $1 ORDER BY key", &[&to_db(now_ms)])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn raised_budgets(&self, job_run: u64) -> Result<RaisedBudgets, PgError> {
        let raised = self.one("SELECT record FROM raised_budgets WHERE job_run = $1", &[&to_db(job_run)]).await?;
        Ok(raised.unwrap_or_default())
    }

    pub async fn paused_queues(&self) -> Result<BTreeSet<String>, PgError> {
        let rows = self.client().query("SELECT queue FROM paused_queues", &[]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Up to `max` bytes of an attempt's shipped log from byte `offset` (`logs.rs`).
    pub async fn log_bytes(&self, task_run: u64, attempt: u32, offset: u64, max: u64) -> Result<Vec<u8>, PgError> {
        super::logs::log_bytes(self.client(), task_run, attempt, offset, max).await
    }

    /// Up to `limit` events of the cluster's stream after `seq` (`events.rs`).
    pub async fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<StoredEvent>, PgError> {
        super::events::events_after(self.client(), seq, limit).await
    }

    /// The nodes by name, their heartbeat age and liveness at the database's clock (the
    /// snapshot's start): live while the lease has not passed and the node has not stopped
    /// (`model::lease`).
    pub async fn nodes(&self) -> Result<Vec<NodeView>, PgError> {
        let mut running: std::collections::HashMap<i64, Vec<RunningOnNode>> = Default::default();
        let attempts = self
            .client()
            .query(
                "SELECT node, id, attempt, job_run, task FROM task_runs \
                 WHERE state = 'running' AND node IS NOT NULL ORDER BY id",
                &[],
            )
            .await?;
        for r in &attempts {
            let attempt: i32 = r.get(2);
            let on = RunningOnNode {
                task_run: from_db(r.get(1)),
                attempt: attempt as u32,
                job_run: from_db(r.get(3)),
                task: r.get(4),
            };
            running.entry(r.get(0)).or_default().push(on);
        }
        let rows = self
            .client()
            .query(
                "SELECT id, name, labels, \
                 greatest(0, (extract(epoch FROM now() - heartbeat_at) * 1000)::bigint), \
                 lease_until > now() AND NOT stopped \
                 FROM nodes ORDER BY name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| NodeView {
                id: from_db(r.get(0)),
                name: r.get(1),
                labels: r.get(2),
                heartbeat_age_ms: from_db(r.get(3)),
                live: r.get(4),
                running: running.remove(&r.get::<_, i64>(0)).unwrap_or_default(),
            })
            .collect())
    }

    /// Decodes every record of every table; the count per table.
    pub async fn decode_all(&self) -> Result<Vec<(&'static str, u64)>, PgError> {
        let mut counts = Vec::new();
        counts.push(("definitions", self.count::<DefinitionRecord>("SELECT record FROM definitions").await?));
        counts.push(("job_runs", self.count::<JobRunRecord>("SELECT record FROM job_runs").await?));
        counts.push(("task_runs", self.count::<TaskRunRecord>("SELECT record FROM task_runs").await?));
        counts.push(("attempts", self.count::<AttemptRecord>("SELECT record FROM attempts").await?));
        counts.push(("schedules", self.count::<ScheduleState>("SELECT record FROM schedules").await?));
        counts.push(("cache", self.count::<CacheEntry>("SELECT record FROM cache").await?));
        Ok(counts)
    }

    async fn count<T: Record>(&self, sql: &str) -> Result<u64, PgError> {
        let mut n = 0;
        self.each(sql, &[], |_: T| {
            n += 1;
            true
        })
        .await?;
        Ok(n)
    }

    async fn all<T: Record>(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<T>, PgError> {
        let rows = self.client().query(sql, params).await?;
        rows.iter().map(|row| decode(row.get(0))).collect()
    }

    async fn one<T: Record>(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<T>, PgError> {
        let row: Option<Row> = self.client().query_opt(sql, params).await?;
        row.map(|r| decode(r.get(0))).transpose()
    }

    async fn each<T: Record>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        mut f: impl FnMut(T) -> bool,
    ) -> Result<(), PgError> {
        let rows = self.client().query_raw(sql, params.iter().copied()).await?;
        pin_mut!(rows);
        while let Some(row) = rows.next().await {
            if !f(decode(row?.get(0))?) {
                break;
            }
        }
        Ok(())
    }
}

fn decode<T: Record>(bytes: &[u8]) -> Result<T, PgError> {
    Ok(codec::decode(bytes)?)
}

impl Drop for PgSnapshot {
    /// Ends the transaction before the connection goes back to the pool; outside a runtime the
    /// connection is closed instead (which ends it too).
    fn drop(&mut self) {
        let Some(client) = self.client.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        drop(deadpool_postgres::Object::take(client));
                    }
                });
            }
            Err(_) => drop(deadpool_postgres::Object::take(client)),
        }
    }
}
