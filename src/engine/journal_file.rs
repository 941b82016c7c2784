//! The event journal's files: `events/events.<UTC date>.jsonl`, one a day, the newest
//! [`RETENTION_DAYS`] kept (SPEC §5). Each event is one line. Lines are gathered ([`push`]) and
//! written together with one `write` ([`flush`]; the Journal flushes once its mailbox is empty,
//! and before answering `Flush`). A write that fails (a full disk) is undone by cutting the file
//! back to where its first line began, and a file opened again is cut back to its last complete
//! line (a crash mid-write), so the journal never holds a partial line and the next event never
//! lands on the end of a fragment.
//!
//! [`push`]: JournalFile::push
//! [`flush`]: JournalFile::flush

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::state_dir::{Access, StateDir};

/// Days of journal kept (SPEC §5).
pub const RETENTION_DAYS: usize = 14;
const FOLDER: &str = "events";
/// Lines gathered past this many bytes are written at once, whatever is still to come.
const GATHER_BYTES: usize = 256 * 1024;

pub struct JournalFile {
    dir: StateDir,
    current: Option<DayFile>,
    /// Set while writes fail: why, and how many events were not written.
    failing: Option<(String, u64)>,
    /// Lines gathered and not written yet, all of one day: that date, the bytes, how many lines.
    gathered: Gathered,
}

#[derive(Default)]
struct Gathered {
    date: String,
    bytes: Vec<u8>,
    lines: u64,
}

struct DayFile {
    date: String,
    file: File,
    len: u64,
}

impl JournalFile {
    /// Opens the state dir's journal folder (created 0700 if missing).
    pub fn open(state_dir: &Path) -> io::Result<JournalFile> {
        let dir = StateDir::open(state_dir).map_err(io::Error::other)?;
        dir.create_dir_all(FOLDER)?;
        Ok(JournalFile { dir, current: None, failing: None, gathered: Gathered::default() })
    }

    /// Gathers one line (without its `\n`) for the file of `date` (`YYYY-MM-DD`, UTC), written
    /// at the next [`flush`](Self::flush) — or now, when it is of another day than the lines
    /// gathered before it (those are written first) or they pass [`GATHER_BYTES`].
    pub fn push(&mut self, date: &str, line: &[u8]) {
        if self.gathered.lines > 0 && self.gathered.date != date {
            self.flush();
        }
        if self.gathered.lines == 0 && self.gathered.date != date {
            self.gathered.date.clear();
            self.gathered.date.push_str(date);
        }
        self.gathered.bytes.extend_from_slice(line);
        self.gathered.bytes.push(b'\n');
        self.gathered.lines += 1;
        if self.gathered.bytes.len() >= GATHER_BYTES {
            self.flush();
        }
    }

    /// Whether lines wait for a [`flush`](Self::flush).
    pub fn has_gathered(&self) -> bool {
        self.gathered.lines > 0
    }

    /// Writes the gathered lines with one `write`. A failure is said on gaffer's stderr once,
    /// and again with the count of lost events when writing works again.
    pub fn flush(&mut self) {
        if self.gathered.lines == 0 {
            return;
        }
        let mut gathered = std::mem::take(&mut self.gathered);
        let written = self.write_line(&gathered.date, &gathered.bytes);
        match written {
            Ok(()) => {
                if let Some((_, lost)) = self.failing.take() {
                    tracing::warn!("event journal: writing again; {lost} event(s) before these were not written");
                }
            }
            Err(e) => match &mut self.failing {
                Some((_, lost)) => *lost += gathered.lines,
                None => {
                    tracing::error!(
                        "event journal: cannot write {}: {e}; events are missing from the journal until it can write again",
                        self.dir.join(file_name(&gathered.date)).display()
                    );
                    self.failing = Some((e.to_string(), gathered.lines));
                }
            },
        }
        // The buffer and the date are kept for the next lines.
        gathered.bytes.clear();
        gathered.lines = 0;
        self.gathered = gathered;
    }

    /// Appends one line (with its `\n`) to the file of `date` now, after the lines gathered
    /// before it.
    #[cfg(test)]
    pub fn append(&mut self, date: &str, line: &[u8]) {
        self.push(date, line.strip_suffix(b"\n").unwrap_or(line));
        self.flush();
    }

    /// Writes `lines` (whole lines) to the file of `date` with one `write`, or cuts it back.
    fn write_line(&mut self, date: &str, line: &[u8]) -> io::Result<()> {
        if self.current.as_ref().is_none_or(|c| c.date != date) {
            self.current = None;
            self.current = Some(self.open_day(date)?);
            self.prune();
        }
        let Some(day) = self.current.as_mut() else { return Ok(()) };
        match day.file.write_all(line) {
            Ok(()) => {
                day.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Undo a short write: the next line starts where this one began.
                if day.file.set_len(day.len).is_err() {
                    // Cut at the next open instead.
                    self.current = None;
                }
                Err(e)
            }
        }
    }

    fn open_day(&self, date: &str) -> io::Result<DayFile> {
        let file = self.dir.open_file(file_name(date), Access::Append)?;
        let len = cut_to_last_line(&file)?;
        Ok(DayFile { date: date.to_string(), file, len })
    }

    /// Removes the oldest day files past the retention.
    fn prune(&self) {
        let Ok(names) = self.dir.list(FOLDER) else { return };
        let days: Vec<&String> = names.iter().filter(|n| n.starts_with("events.") && n.ends_with(".jsonl")).collect();
        for old in days.iter().take(days.len().saturating_sub(RETENTION_DAYS)) {
            if let Err(e) = self.dir.remove_file(Path::new(FOLDER).join(old)) {
                tracing::warn!("event journal: cannot remove an old file: {e}");
            }
        }
    }
}

impl Drop for JournalFile {
    fn drop(&mut self) {
        self.flush();
    }
}

fn file_name(date: &str) -> String {
    format!("{FOLDER}/events.{date}.jsonl")
}

/// Cuts `file` back to the end of its last complete line; returns its length.
fn cut_to_last_line(file: &File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let piece = &mut chunk[..(end - start) as usize];
        file.read_exact_at(piece, start)?;
        match piece.iter().rposition(|b| *b == b'\n') {
            Some(i) => {
                end = start + i as u64 + 1;
                break;
            }
            None => end = start,
        }
    }
    if end < len {
        tracing::warn!("event journal: removed an incomplete last line ({} bytes) an earlier write left", len - end);
        file.set_len(end)?;
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal() -> (tempfile::TempDir, JournalFile) {
        let tmp = crate::state_dir::private_tempdir();
        let journal = JournalFile::open(tmp.path()).expect("journal");
        (tmp, journal)
    }

    fn read(tmp: &tempfile::TempDir, date: &str) -> String {
        std::fs::read_to_string(tmp.path().join(file_name(date))).expect("journal file")
    }

    #[test]
    fn a_partial_last_line_is_cut_at_the_next_open() {
        let (tmp, mut journal) = journal();
        journal.append("2026-01-01", b"{\"a\":1}\n");
        drop(journal);
        let path = tmp.path().join(file_name("2026-01-01"));
        std::fs::OpenOptions::new().append(true).open(&path).and_then(|mut f| f.write_all(b"{\"b\":")).expect("frag");
        let mut journal = JournalFile::open(tmp.path()).expect("reopen");
        journal.append("2026-01-01", b"{\"c\":3}\n");
        assert_eq!(read(&tmp, "2026-01-01"), "{\"a\":1}\n{\"c\":3}\n");
    }

    #[test]
    fn a_file_without_any_newline_is_emptied() {
        let (tmp, mut journal) = journal();
        std::fs::write(tmp.path().join(file_name("2026-01-02")), "x".repeat(100_000)).expect("frag");
        journal.append("2026-01-02", b"{}\n");
        assert_eq!(read(&tmp, "2026-01-02"), "{}\n");
    }

    #[test]
    fn one_file_a_day_and_only_the_newest_are_kept() {
        let (tmp, mut journal) = journal();
        for day in 1..=(RETENTION_DAYS + 3) {
            journal.append(&format!("2026-02-{day:02}"), b"{}\n");
        }
        let names = journal.dir.list(FOLDER).expect("list");
        assert_eq!(names.len(), RETENTION_DAYS);
        assert_eq!(names.first().map(String::as_str), Some("events.2026-02-04.jsonl"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join(file_name("2026-02-17"))).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
