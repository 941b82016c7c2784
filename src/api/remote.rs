//! An engine on the other end of the control socket, as a `Control`: what `gaffer tui` uses to
//! attach to a running `gaffer serve`. Requests are async (they run inside the TUI's loop);
//! events come from the SSE stream.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::client::parse_response;
use crate::engine::{
    Control, EngineError, EngineEvent, EngineSnapshot, QueueSnapshot, Reply, RetryOptions, Target, WorkerSnapshot,
};
use crate::store::TaskRunRecord;

pub struct RemoteEngine {
    socket: PathBuf,
}

fn gone(e: impl std::fmt::Display) -> EngineError {
    EngineError::Stopped(format!("the gaffer instance: {e}"))
}

impl RemoteEngine {
    /// Fails at once when no instance answers on the state dir's socket.
    pub async fn connect(state_dir: &Path) -> Result<RemoteEngine, EngineError> {
        let socket = super::socket_path(state_dir);
        UnixStream::connect(&socket)
            .await
            .map_err(|_| EngineError::Stopped(format!("no gaffer instance answers on {}", socket.display())))?;
        Ok(RemoteEngine { socket })
    }

    async fn call<T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<Value>) -> Result<T, EngineError> {
        let mut stream = UnixStream::connect(&self.socket).await.map_err(gone)?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.map_err(gone)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.map_err(gone)?;
        let (status, payload) = parse_response(&response).map_err(gone)?;
        if !(200..300).contains(&status) {
            let value: Value = serde_json::from_slice(&payload).unwrap_or_default();
            return Err(EngineError::Invalid(value["error"].as_str().unwrap_or("refused").to_string()));
        }
        serde_json::from_slice(&payload).map_err(gone)
    }

    async fn message(&self, path: &str, target: Target) -> Result<String, EngineError> {
        let answer: Value = self.call("POST", path, Some(json!({"target": target.id_text()}))).await?;
        Ok(answer["message"].as_str().unwrap_or("done").to_string())
    }

    async fn events(&self) -> Result<mpsc::UnboundedReceiver<EngineEvent>, EngineError> {
        let mut stream = UnixStream::connect(&self.socket).await.map_err(gone)?;
        stream.write_all(b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n").await.map_err(gone)?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(data) = line.strip_prefix("data: ") else { continue };
                let event = serde_json::from_str::<Value>(data).ok().and_then(|v| EngineEvent::from_json(&v));
                if let Some(event) = event
                    && tx.send(event).is_err()
                {
                    break;
                }
            }
        });
        Ok(rx)
    }
}

impl Control for RemoteEngine {
    fn snapshot(&self) -> Reply<'_, EngineSnapshot> {
        Box::pin(self.call("GET", "/v1/snapshot", None))
    }

    fn subscribe(&self) -> Reply<'_, mpsc::UnboundedReceiver<EngineEvent>> {
        Box::pin(self.events())
    }

    fn retry(&self, target: Target) -> Reply<'_, String> {
        Box::pin(self.message("/v1/retry", target))
    }

    fn retry_with(&self, target: Target, options: RetryOptions) -> Reply<'_, String> {
        Box::pin(async move {
            let answer: Value = self.call("POST", "/v1/retry", Some(options.request(target))).await?;
            Ok(answer["message"].as_str().unwrap_or("done").to_string())
        })
    }

    fn cancel(&self, target: Target) -> Reply<'_, String> {
        Box::pin(self.message("/v1/cancel", target))
    }

    fn signal<'a>(&'a self, target: Target, name: &'a str) -> Reply<'a, String> {
        Box::pin(async move {
            let body = json!({"target": target.id_text(), "name": name});
            let answer: Value = self.call("POST", "/v1/signal", Some(body)).await?;
            Ok(answer["message"].as_str().unwrap_or("done").to_string())
        })
    }

    fn set_paused<'a>(&'a self, queue: &'a str, paused: bool) -> Reply<'a, bool> {
        Box::pin(async move {
            let verb = if paused { "pause" } else { "resume" };
            match self.call::<Value>("POST", &format!("/v1/queues/{queue}/{verb}"), None).await {
                Ok(_) => Ok(true),
                Err(EngineError::Invalid(message)) if message.starts_with("no queue") => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn task_runs_of(&self, job_run: u64) -> Reply<'_, Vec<TaskRunRecord>> {
        Box::pin(async move { self.call("GET", &format!("/v1/job_runs/{job_run}/tasks"), None).await })
    }

    fn live(&self) -> Reply<'_, (Vec<WorkerSnapshot>, Vec<QueueSnapshot>)> {
        Box::pin(self.call("GET", "/v1/live", None))
    }
}
