//! The attempt's log: stdout and stderr as-is, interleaved in arrival order, capped by keeping
//! the head on disk and only a rolling tail in memory, so a runaway task costs at most
//! `cap` bytes of disk and `cap / 2` bytes of memory.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::state_dir::{Access, open_under};

pub struct CappedLog {
    file: BufWriter<File>,
    half: u64,
    head_written: u64,
    head_ends_with_newline: bool,
    tail: VecDeque<u8>,
    omitted: u64,
}

impl CappedLog {
    /// Creates the file (0600; one that exists is replaced, a link is never followed) and its
    /// parent folders (0700) at `path`, which must be under `state_dir`.
    pub fn create(state_dir: &Path, path: &Path, cap_bytes: u64) -> io::Result<Self> {
        let file = open_under(state_dir, path, Access::Replace)?;
        Ok(Self {
            file: BufWriter::with_capacity(64 * 1024, file),
            half: cap_bytes / 2,
            head_written: 0,
            head_ends_with_newline: true,
            tail: VecDeque::new(),
            omitted: 0,
        })
    }

    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let room = usize::try_from(self.half - self.head_written).unwrap_or(usize::MAX);
        if room > 0 {
            let (head, rest) = bytes.split_at(room.min(bytes.len()));
            self.file.write_all(head)?;
            self.head_written += head.len() as u64;
            if let Some(&last) = head.last() {
                self.head_ends_with_newline = last == b'\n';
            }
            bytes = rest;
        }
        self.push_tail(bytes);
        Ok(())
    }

    /// Keeps the last `half` bytes seen past the head; everything pushed out is only counted.
    fn push_tail(&mut self, bytes: &[u8]) {
        let half = usize::try_from(self.half).unwrap_or(usize::MAX);
        if bytes.len() >= half {
            self.omitted += (self.tail.len() + bytes.len() - half) as u64;
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - half..]);
            return;
        }
        self.tail.extend(bytes);
        let excess = self.tail.len().saturating_sub(half);
        if excess > 0 {
            self.tail.drain(..excess);
            self.omitted += excess as u64;
        }
    }

    /// Makes what was written so far visible to readers of the file (the TUI tails it).
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    /// Writes the omission marker (if any) and the tail, then flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.omitted > 0 {
            let newline = if self.head_ends_with_newline { "" } else { "\n" };
            writeln!(self.file, "{newline}… [gaffer: {} bytes omitted] …", self.omitted)?;
        }
        let (a, b) = self.tail.as_slices();
        self.file.write_all(a)?;
        self.file.write_all(b)?;
        self.tail = VecDeque::new();
        self.omitted = 0;
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(cap: u64, chunks: &[&[u8]]) -> String {
        let dir = crate::state_dir::private_tempdir();
        let path = dir.path().join("sub/dir/a.log");
        let mut log = CappedLog::create(dir.path(), &path, cap).expect("create");
        for c in chunks {
            log.write(c).expect("write");
        }
        log.finish().expect("finish");
        std::fs::read_to_string(&path).expect("read")
    }

    #[test]
    fn under_cap_is_verbatim() {
        assert_eq!(log_with(100, &[b"a\n", b"b\n"]), "a\nb\n");
    }

    #[test]
    fn keeps_head_and_tail() {
        let text = log_with(10, &[b"0123456789", b"abcdefghij"]);
        assert_eq!(text, "01234\n… [gaffer: 10 bytes omitted] …\nfghij");
        let text = log_with(10, &[b"0123\n", b"x", b"y", b"z", b"w", b"v", b"u", b"t"]);
        assert_eq!(text, "0123\n… [gaffer: 2 bytes omitted] …\nzwvut");
    }
}
