//! The terminal UI (SPEC §4.2): live queues, jobs, tasks, retries, dead letters, cost and
//! workers over an `EngineHandle`, driven by single keys. Elm style: `update` is pure and returns
//! `Command`s that the loop executes through the handle.
//!
//! Architecture Invariant: the TUI depends only on `EngineHandle`, `EngineEvent` and the snapshot
//! types; only `tui::terminal` touches crossterm.
