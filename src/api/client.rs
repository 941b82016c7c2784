//! A small blocking HTTP/1.1 client over the unix socket, for the CLI. One request per
//! connection (`Connection: close`), JSON in and out.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no gaffer instance answers on {0}")]
    NotRunning(String),
    #[error("{0}")]
    Refused(String),
    #[error("talking to the instance: {0}")]
    Io(String),
}

/// `METHOD path` with an optional JSON body; the answer's JSON, or the error it carried.
pub fn call(state_dir: &Path, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
    let socket = super::socket_path(state_dir);
    let mut stream = UnixStream::connect(&socket).map_err(|_| ClientError::NotRunning(socket.display().to_string()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| ClientError::Io(e.to_string()))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(|e| ClientError::Io(e.to_string()))?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| ClientError::Io(e.to_string()))?;
    let (status, payload) = parse_response(&response)?;
    let value: Value = serde_json::from_slice(&payload).map_err(|e| ClientError::Io(format!("bad answer: {e}")))?;
    if (200..300).contains(&status) {
        Ok(value)
    } else {
        Err(ClientError::Refused(value["error"].as_str().unwrap_or("refused").to_string()))
    }
}

/// Status code and body (de-chunked if needed).
pub(super) fn parse_response(bytes: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
    let split =
        bytes.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| ClientError::Io("truncated answer".into()))?;
    let head = String::from_utf8_lossy(&bytes[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Io("no status line".into()))?;
    let body = &bytes[split + 4..];
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    Ok((status, if chunked { dechunk(body) } else { body.to_vec() }))
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&body[..line_end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&body[start..(start + size).min(body.len())]);
        body = &body[(start + size + 2).min(body.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).expect("parse"), (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).expect("parse"), (404, b"{\"a\":1}".to_vec()));
    }
}
