//! The HTTP client that the CLI and `gaffer tui` talk to a running instance with: hyper's
//! HTTP/1.1 client (keep-alive, chunked and streamed answers) over the state dir's unix socket.
//! `Client` is async (the TUI's loop, SSE); `call` is the blocking form the CLI commands use.

use std::cell::RefCell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
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

/// How long the instance may take to begin its answer, and then to send each next piece.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (`tasks --json` of a million task runs is about 700 MB).
const MAX_ANSWER_BYTES: usize = 1 << 30;
/// An idle kept-alive connection is dropped before the server's keep-alive would close it.
const POOL_IDLE: Duration = Duration::from_secs(2);

/// Connects every request to the one socket it was made for, whatever the URI names (the URI
/// only carries the path; its host is `localhost`).
#[derive(Clone)]
struct SocketConnector {
    socket: Arc<Path>,
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<tokio::net::UnixStream>>> + Send>>;

impl tower_service::Service<hyper::Uri> for SocketConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Connecting {
        let socket = self.socket.clone();
        Box::pin(async move { tokio::net::UnixStream::connect(&*socket).await.map(TokioIo::new) })
    }
}

/// A client of one state dir's instance; connections are kept alive and reused.
pub struct Client {
    socket: PathBuf,
    http: HttpClient<SocketConnector, Full<Bytes>>,
}

impl Client {
    pub fn new(state_dir: &Path) -> Client {
        let socket = super::socket_path(state_dir);
        let connector = SocketConnector { socket: Arc::from(socket.as_path()) };
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Client { socket, http }
    }

    /// `METHOD path` with an optional JSON body: the answer's head, its body still to be read
    /// (a stream for `/v1/events`). An error status becomes `Refused` with the answer's message.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response<Incoming>, ClientError> {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://localhost{path}"))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.map(Value::to_string).unwrap_or_default())))
            .map_err(|e| ClientError::Io(format!("request `{path}`: {e}")))?;
        let response = tokio::time::timeout(IDLE_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| ClientError::Io(format!("no answer to `{path}` within {}s", IDLE_TIMEOUT.as_secs())))?
            .map_err(|e| match e.is_connect() {
                true => ClientError::NotRunning(self.socket.display().to_string()),
                false => ClientError::Io(e.to_string()),
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let answer: Value = serde_json::from_slice(&read_body(response.into_body()).await?).unwrap_or_default();
        let message = answer["error"].as_str().map_or_else(|| format!("refused: {status}"), str::to_string);
        Err(ClientError::Refused(message))
    }

    /// `METHOD path`, and the whole answer as JSON.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let body = read_body(self.send(method, path, body).await?.into_body()).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Io(format!("bad answer to `{path}`: {e}")))
    }
}

/// Reads a whole answer, each piece within `IDLE_TIMEOUT`, up to `MAX_ANSWER_BYTES`.
async fn read_body(mut body: Incoming) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    loop {
        let frame = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
            .await
            .map_err(|_| ClientError::Io(format!("the answer stalled for {}s", IDLE_TIMEOUT.as_secs())))?;
        let Some(frame) = frame else { return Ok(out) };
        let Ok(data) = frame.map_err(|e| ClientError::Io(e.to_string()))?.into_data() else { continue };
        if out.len() + data.len() > MAX_ANSWER_BYTES {
            return Err(ClientError::Io(format!("the answer is larger than {MAX_ANSWER_BYTES} bytes")));
        }
        out.extend_from_slice(&data);
    }
}

/// The CLI's side: a one-thread runtime and a client, kept for the whole command so that
/// repeated calls (`logs --follow`) reuse one connection.
struct Blocking {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

thread_local! {
    static BLOCKING: RefCell<Option<Blocking>> = const { RefCell::new(None) };
}

/// `METHOD path` with an optional JSON body, from blocking code: the answer's JSON, or the
/// error it carried.
pub fn call(state_dir: &Path, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| ClientError::Io(e.to_string()))?;
    let socket = super::socket_path(state_dir);
    BLOCKING.with_borrow_mut(|slot| {
        if slot.as_ref().is_some_and(|b| b.client.socket != socket) {
            *slot = None;
        }
        let blocking = match slot {
            Some(blocking) => blocking,
            None => slot.insert(Blocking::new(state_dir)?),
        };
        blocking.runtime.block_on(blocking.client.json(method, path, body))
    })
}

impl Blocking {
    fn new(state_dir: &Path) -> Result<Blocking, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Io(e.to_string()))?;
        Ok(Blocking { runtime, client: Client::new(state_dir) })
    }
}

/// Percent-encodes one path segment or query-string value.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
