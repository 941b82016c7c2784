//! Log retention (`settings.retention`, SPEC §5): `gaffer serve` removes the log folders of job
//! runs that ended longer ago than the retention. Records stay; `gaffer logs` then says the log
//! is gone. The event journal keeps its own 14 files (one per day). Cache entries past their
//! `ttl` go in the same sweep, and so do a cluster's logs and events in PostgreSQL.

use std::path::Path;
use std::time::Duration;

use crate::state_dir::StateDir;
use crate::store::{Mutation, StoreError, StoreHandle};

/// How often the sweep runs.
pub const EVERY: Duration = Duration::from_secs(3600);

/// Removes `logs/<job_run>/` of every job run that ended before `now_ms - retention`;
/// returns how many folders went.
pub fn sweep(store: &StoreHandle, state_dir: &Path, now_ms: u64, retention: Duration) -> Result<usize, StoreError> {
    let cutoff = now_ms.saturating_sub(retention.as_millis() as u64);
    let dir = StateDir::open(state_dir)?;
    let mut removed = 0;
    let mut ended_before = Vec::new();
    for run in store.snapshot()?.job_runs()? {
        let Some(ended) = run.ended_at_ms.filter(|ended| *ended < cutoff) else { continue };
        ended_before.push(run.id);
        let logs = Path::new("logs").join(run.id.to_string());
        // Never through a link: removing a planted one removes the link, not what it names.
        if dir.exists(&logs).unwrap_or(false) && dir.remove_dir_all(&logs).is_ok() {
            tracing::debug!(job_run = run.id, ended, "removed logs past retention");
            removed += 1;
        }
    }
    // A cluster's copies: the shipped logs and the event stream (nothing for redb).
    store.forget_past_retention(&ended_before, cutoff)?;
    Ok(removed)
}

/// Removes the cache entries whose `ttl` ran out; returns how many.
pub fn sweep_cache(store: &StoreHandle, now_ms: u64) -> Result<usize, StoreError> {
    let expired = store.snapshot()?.expired_cache_keys(now_ms)?;
    let n = expired.len();
    if n > 0 {
        store.commit_blocking(expired.into_iter().map(Mutation::Uncached).collect())?;
    }
    Ok(n)
}
