//! Versioned migrations, embedded in the binary and applied at open in one transaction.

use super::PgError;

/// The migrations in order: version n is `MIGRATIONS[n - 1]`. Append, never edit one that shipped.
pub const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_cluster.sql"),
    include_str!("migrations/0003_cronlogs.sql"),
    include_str!("migrations/0004_adopt.sql"),
    include_str!("migrations/0005_mail_read.sql"),
    include_str!("migrations/0006_limits.sql"),
    include_str!("migrations/0007_lean_writes.sql"),
    include_str!("migrations/0008_task_runs_room.sql"),
];

/// The schema this gaffer writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Any fixed key: migrating nodes take turns (the lock ends with the transaction).
const MIGRATION_LOCK: i64 = 0x6761_6666_6572; // "gaffer"

/// Brings the database to [`SCHEMA_VERSION`]. A newer schema is refused before anything is
/// written; the migrations it lacks are applied in one transaction with their version rows,
/// while holding a lock so two nodes starting at once do not both apply them.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<i32, PgError> {
    refuse_newer(schema_version(client).await?)?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS gaffer_schema (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    // Read again under the lock: another node may have migrated meanwhile.
    let found: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM gaffer_schema", &[]).await?.get(0);
    refuse_newer(Some(found))?;
    for (version, sql) in (1..).zip(MIGRATIONS).skip(found as usize) {
        tracing::info!("postgres: applying gaffer schema migration {version}");
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO gaffer_schema (version) VALUES ($1)", &[&version]).await?;
    }
    tx.commit().await?;
    Ok(found.max(SCHEMA_VERSION))
}

/// A reader's check: the database must be at exactly [`SCHEMA_VERSION`]. A newer one is refused
/// as the writer refuses it; an older one (or none) is refused too, since applying migrations is
/// the business of a `gaffer serve` of this version, not of a command that only reads.
pub async fn check_current(client: &tokio_postgres::Client) -> Result<(), PgError> {
    let found = schema_version(client).await?;
    refuse_newer(found)?;
    match found.unwrap_or(0) {
        SCHEMA_VERSION => Ok(()),
        found => Err(PgError::Pending { found }),
    }
}

/// The schema the database records; none before the first migration.
pub async fn schema_version(client: &tokio_postgres::Client) -> Result<Option<i32>, PgError> {
    let exists: bool = client.query_one("SELECT to_regclass('gaffer_schema') IS NOT NULL", &[]).await?.get(0);
    if !exists {
        return Ok(None);
    }
    Ok(client.query_one("SELECT max(version) FROM gaffer_schema", &[]).await?.get(0))
}

fn refuse_newer(found: Option<i32>) -> Result<(), PgError> {
    match found {
        Some(found) if found > SCHEMA_VERSION => Err(PgError::Schema { found }),
        _ => Ok(()),
    }
}
