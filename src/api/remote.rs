//! An engine on the other end of the control socket, as a `Control`: what `gaffer tui` uses to
//! attach to a running `gaffer serve`. Requests are async (they run inside the TUI's loop);
//! events come from the SSE stream.

use std::path::Path;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::Method;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::client::{Client, ClientError, encode};
use crate::engine::{
    Control, EngineError, EngineEvent, EngineSnapshot, NodeStatus, QueueSnapshot, Reply, RetryOptions, Target,
    WorkerSnapshot,
};
use crate::report::TaskRunView;

pub struct RemoteEngine {
    client: Client,
}

/// A refusal is the instance's answer (`Invalid`); anything else means it is gone.
fn engine_error(e: ClientError) -> EngineError {
    match e {
        ClientError::Refused(message) => EngineError::Invalid(message),
        other => EngineError::Stopped(format!("the gaffer instance: {other}")),
    }
}

impl RemoteEngine {
    /// Fails at once when no instance answers on the state dir's socket.
    pub async fn connect(state_dir: &Path) -> Result<RemoteEngine, EngineError> {
        let remote = RemoteEngine { client: Client::new(state_dir) };
        remote.client.json::<Value>(Method::GET, "/v1/live", None).await.map_err(|e| match e {
            ClientError::NotRunning(socket) => EngineError::Stopped(format!("no gaffer instance answers on {socket}")),
            other => engine_error(other),
        })?;
        Ok(remote)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, EngineError> {
        self.client.json(method, path, body.as_ref()).await.map_err(engine_error)
    }

    async fn message(&self, path: &str, body: Value) -> Result<String, EngineError> {
        let answer: Value = self.call(Method::POST, path, Some(body)).await?;
        Ok(answer["message"].as_str().unwrap_or("done").to_string())
    }

    /// The instance's server-sent events, for as long as it runs.
    async fn events(&self) -> Result<mpsc::UnboundedReceiver<EngineEvent>, EngineError> {
        let response = self.client.send(Method::GET, "/v1/events", None).await.map_err(engine_error)?;
        let mut stream = response.into_body().into_data_stream().eventsource();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(sse)) = stream.next().await {
                let event = serde_json::from_str::<Value>(&sse.data).ok().and_then(|v| EngineEvent::from_json(&v));
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
        Box::pin(self.call(Method::GET, "/v1/snapshot", None))
    }

    fn subscribe(&self) -> Reply<'_, mpsc::UnboundedReceiver<EngineEvent>> {
        Box::pin(self.events())
    }

    fn retry(&self, target: Target) -> Reply<'_, String> {
        Box::pin(self.message("/v1/retry", json!({"target": target.id_text()})))
    }

    fn retry_with(&self, target: Target, options: RetryOptions) -> Reply<'_, String> {
        Box::pin(self.message("/v1/retry", options.request(target)))
    }

    fn cancel(&self, target: Target) -> Reply<'_, String> {
        Box::pin(self.message("/v1/cancel", json!({"target": target.id_text()})))
    }

    fn signal<'a>(&'a self, target: Target, name: &'a str) -> Reply<'a, String> {
        Box::pin(self.message("/v1/signal", json!({"target": target.id_text(), "name": name})))
    }

    fn set_paused<'a>(&'a self, queue: &'a str, paused: bool) -> Reply<'a, bool> {
        Box::pin(async move {
            let verb = if paused { "pause" } else { "resume" };
            match self.call::<Value>(Method::POST, &format!("/v1/queues/{}/{verb}", encode(queue)), None).await {
                Ok(_) => Ok(true),
                Err(EngineError::Invalid(message)) if message.starts_with("no queue") => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn task_runs_of(&self, job_run: u64) -> Reply<'_, Vec<TaskRunView>> {
        Box::pin(async move { self.call(Method::GET, &format!("/v1/job_runs/{job_run}/tasks"), None).await })
    }

    fn live(&self) -> Reply<'_, (Vec<WorkerSnapshot>, Vec<QueueSnapshot>)> {
        Box::pin(self.call(Method::GET, "/v1/live", None))
    }

    fn nodes(&self) -> Reply<'_, Vec<NodeStatus>> {
        Box::pin(self.call(Method::GET, "/v1/nodes", None))
    }
}
