//! The job-run core: every decision of a job run as a plain state machine.
//!
//! `step(state, input, now_ms, env) -> Effects`: one `Input` (an attempt ended, a claim, a
//! timer, a command …) changes the `RunState` in place and returns what follows from it —
//! the writes to commit, the notes to publish once they are durable, the task runs to enqueue,
//! timers to set or drop, attempts to kill, and whether the run is over. No clock, no I/O, no
//! randomness of its own: time comes in as `now_ms`, and what only the world knows (jitter,
//! the enqueue sequence, the cache, earlier attempts) through `Env`. The `JobRun` actor builds
//! the input from its message, steps, commits the writes (group commit) and carries out the rest.

mod fanout;
mod input;
mod reach;
mod saga;
mod state;
mod step;
#[cfg(test)]
mod tests;

pub use input::{AttemptEnd, CacheHit, Claimed, Effects, Env, Input, Note, TaskNote, Write};
pub use state::{JobRunFacts, Kind, Raised, ReachedBy, RunState, TaskRun};
pub use step::step;
