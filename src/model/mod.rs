//! The rules of gaffer as plain functions over plain data: states, retry delays, effective
//! priority, budgets, what a person's retry may do, and the job-run transition engine. Nothing here knows about actors, redb,
//! processes or the clock; callers pass time and randomness in, so every rule is testable alone.
//!
//! Architecture Invariant: `model` depends on nothing else in the crate but the plain data types of `config` and `executor`, and
//! `crate::json` (how JSON text is written: an item's JSON in `fanout`).

pub mod cost;
pub mod event_name;
pub mod expect;
pub mod fanout;
pub mod graph;
pub mod hooks;
pub mod lease;
pub mod money;
pub mod outage;
pub mod params;
pub mod policy;
pub mod queue;
pub mod rerun;
pub mod retry;
pub mod routing;
pub mod run;
pub mod saga;
pub mod schedule;
pub mod start_at_submit;
pub mod state;
pub mod sweep;
pub mod workflow_graph;

pub use state::{FailReason, JobState, TaskState};
