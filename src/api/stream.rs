//! Big answers streamed as they are read. A JSON array is written item by item, on a blocking
//! thread, into chunks that a bounded channel hands to the response body: neither the records,
//! nor their JSON values, nor the whole text is ever held at once, so the server's memory does
//! not grow with the size of an answer (issue 9: twenty `tasks --json` calls of 20,000 task
//! runs used to leave `serve` about 100 MB bigger for good).

use actix_web::{HttpResponse, web};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::ApiState;
use crate::report::QueryError;
use crate::store::Snapshot;

/// The size a chunk is sent at.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks written but not yet sent: a slow reader holds the producer back at this many.
const CHUNKS_IN_FLIGHT: usize = 4;

type Chunk = Result<web::Bytes, std::io::Error>;

/// Answers the JSON array that `produce` emits item by item (its callback returns false once
/// the client has gone). An error before the first item is answered with its status; one
/// after it cuts the body, so the client sees a broken answer rather than a short list.
pub async fn json_array<F>(state: &ApiState, produce: F) -> HttpResponse
where
    F: FnOnce(&dyn Snapshot, &mut dyn FnMut(Value) -> bool) -> Result<(), QueryError> + Send + 'static,
{
    let store = state.store.clone();
    let (head_tx, head_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    // Runs on its own; the answer comes through the channels.
    let _detached = web::block(move || {
        let mut out = ArrayWriter { head: Some(head_tx), tx, buf: Vec::with_capacity(CHUNK_BYTES), items: 0 };
        let result = store
            .snapshot()
            .map_err(QueryError::from)
            .and_then(|reader| produce(&*reader, &mut |item| out.push(&item)));
        out.finish(result);
    });
    match head_rx.await {
        Ok(Ok(())) => {
            let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
            HttpResponse::Ok().content_type("application/json").streaming(body)
        }
        Ok(Err(e)) => super::routes::query_error(e),
        Err(_) => HttpResponse::InternalServerError().json(serde_json::json!({"error": "the query stopped"})),
    }
}

struct ArrayWriter {
    /// Told once whether the answer is a 200 (at the first item, or at the end).
    head: Option<oneshot::Sender<Result<(), QueryError>>>,
    tx: mpsc::Sender<Chunk>,
    buf: Vec<u8>,
    items: usize,
}

impl ArrayWriter {
    /// Adds one item; false once the client has gone.
    fn push(&mut self, item: &Value) -> bool {
        if let Some(head) = self.head.take() {
            let _ = head.send(Ok(()));
        }
        self.buf.push(if self.items == 0 { b'[' } else { b',' });
        self.items += 1;
        // Numbers in plain decimals, as in every JSON gaffer writes (`crate::json`).
        self.buf.extend_from_slice(crate::json::text(item).as_bytes());
        self.buf.len() < CHUNK_BYTES || self.send()
    }

    fn send(&mut self) -> bool {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.tx.blocking_send(Ok(web::Bytes::from(chunk))).is_ok()
    }

    fn finish(mut self, result: Result<(), QueryError>) {
        match (self.head.take(), result) {
            (Some(head), Err(e)) => {
                let _ = head.send(Err(e));
            }
            (None, Err(e)) => {
                let _ = self.tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
            (head, Ok(())) => {
                if let Some(head) = head {
                    let _ = head.send(Ok(()));
                }
                self.buf.extend_from_slice(if self.items == 0 { b"[]" } else { b"]" });
                self.send();
            }
        }
    }
}
