//! The values of secret params, held in this process's memory only (never committed, never in
//! an event). Job runs read theirs when they render templates; the Supervisor fills the book
//! when a run is created, and again (from `--param` or the environment) before a stored run
//! goes on after a restart.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::JobDef;
use crate::model::params::{self, Sources, Values};

#[derive(Default)]
pub struct SecretBook {
    inner: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    /// Given to this process (`run`/`serve --param`), by param name.
    instance: Values,
    /// Per job run: what it was created with, or found again for it.
    runs: HashMap<u64, Values>,
}

impl SecretBook {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // A panic while holding this lock cannot leave the maps half-updated (single inserts).
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The secrets `run` and `serve` were given, for every run that needs them.
    pub fn set_instance(&self, values: Values) {
        self.book().instance = values;
    }

    /// Resolves a new run's params against what this process holds and its environment.
    pub fn resolve(&self, job: &JobDef, given: &Values) -> Result<params::Resolved, String> {
        let book = self.book();
        let env = |var: &str| std::env::var(var).ok();
        params::resolve(job, given, &Sources { instance: &book.instance, env: &env })
    }

    /// Remembers a run's secrets for as long as this process lives.
    pub fn keep(&self, job_run: u64, secrets: Values) {
        if !secrets.is_empty() {
            self.book().runs.insert(job_run, secrets);
        }
    }

    /// The secrets of `job_run` this process holds (none for a run that has no secret params).
    pub fn of(&self, job_run: u64) -> Values {
        self.book().runs.get(&job_run).cloned().unwrap_or_default()
    }

    /// Makes sure `job_run` (a run of `job`) has every secret it declares: held already, or
    /// found in `--param` or the environment; else says which are missing and how to give them.
    pub fn ensure(&self, job: &JobDef, job_run: u64) -> Result<(), String> {
        if !job.params.values().any(|p| p.secret) {
            return Ok(());
        }
        let mut book = self.book();
        let env = |var: &str| std::env::var(var).ok();
        let found =
            params::secrets_again(job, book.runs.get(&job_run), &Sources { instance: &book.instance, env: &env })?;
        book.runs.insert(job_run, found);
        Ok(())
    }

    /// The secrets `names` of job run `job_run` (a run of `job`) for a task this node runs:
    /// held for the run (this node created or resumed it), else given to this process or in
    /// the environment, as for a run it resumes; else says which are missing and how to give them.
    pub fn for_runner(&self, job: &JobDef, job_run: u64, names: &[String]) -> Result<Values, String> {
        let book = self.book();
        let env = |var: &str| std::env::var(var).ok();
        let sources = Sources { instance: &book.instance, env: &env };
        params::secrets_named(job, |name| names.iter().any(|n| n == name), book.runs.get(&job_run), &sources)
    }

    /// In a cluster: a secret given with one run's request must be one this node holds itself
    /// (see `params::given_secret_not_held`).
    pub fn check_given_in_cluster(&self, job: &JobDef, given: &Values) -> Result<(), String> {
        let book = self.book();
        let env = |var: &str| std::env::var(var).ok();
        match params::given_secret_not_held(job, given, &Sources { instance: &book.instance, env: &env }) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}
