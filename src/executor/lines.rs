//! Line reading with a hard bound: a task printing megabytes without a newline must not grow
//! gaffer's memory, so a long run is handed out in `max`-byte chunks.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Returns the next line including its `\n`, or up to `max` bytes of a longer line (no `\n`
/// at the end then), or the last bytes before EOF. `None` at EOF.
pub async fn next_chunk<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!out.is_empty()).then_some(out));
        }
        let window = &buf[..buf.len().min(max - out.len())];
        let (take, done) = match window.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (window.len(), out.len() + window.len() == max),
        };
        out.extend_from_slice(&window[..take]);
        reader.consume(take);
        if done {
            return Ok(Some(out));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(input: &[u8], max: usize) -> Vec<Vec<u8>> {
        let mut reader = tokio::io::BufReader::with_capacity(3, input);
        let mut chunks = Vec::new();
        while let Some(c) = next_chunk(&mut reader, max).await.expect("read") {
            chunks.push(c);
        }
        chunks
    }

    #[tokio::test]
    async fn splits_lines_and_long_runs() {
        let chunks = all(b"ab\ncdefghij\n\nxy", 4).await;
        let want: Vec<&[u8]> = vec![b"ab\n", b"cdef", b"ghij", b"\n", b"\n", b"xy"];
        assert_eq!(chunks, want);
    }
}
