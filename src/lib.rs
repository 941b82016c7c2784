//! gaffer: a durable, supervised job orchestrator for shell and AI-agent tasks.
//!
//! # Layout
//!
//! - [`config`]: the workflow file: serde-free parsing with `file:line:col` diagnostics,
//!   defaults, templates.
//! - [`model`]: the rules as pure functions: states, retry delays, priority with aging,
//!   budgets, the job-run transition engine.
//! - [`store`]: durable state in redb with group commit; records and their codec.
//! - [`state_dir`]: the checks that make the state dir trusted, and the only way to open
//!   files under it (relative to its descriptor, never through a symbolic link).
//! - [`engine`]: the actix actor tree (supervisor, journal, scheduler, dispatcher, job runs,
//!   workers, watchdog) behind `EngineHandle` and `EngineEvent`.
//! - [`executor`]: runs one attempt as a process group with fd 3 as the control channel.
//! - [`api`]: the control socket (HTTP/JSON over a unix socket) and its client.
//! - [`cli`]: the `gaffer` command line; [`headless`]: human and JSON progress lines.
//! - [`report`]: the read side (queries and the JSON shapes of SPEC §4.1), CLI and API alike.
//! - [`notify`]: systemd's notify protocol (READY, STOPPING, watchdog pings) for `serve`.
//! - [`sanitize`]: makes untrusted text inert where it enters gaffer.
//! - [`json`]: JSON text as gaffer prints it (numbers never with an exponent).
//! - [`sched`]: a short scheduler slice for the threads on the enqueue → start path.

pub mod api;
pub mod cli;
pub mod config;
pub mod engine;
pub mod executor;
pub mod headless;
pub mod json;
pub mod model;
pub mod notify;
pub mod report;
pub mod sanitize;
pub mod sched;
pub mod state_dir;
pub mod store;
pub mod tui;
