//! The control API: HTTP/JSON over `state/gaffer.sock`, for the CLI of other terminals and for
//! scripts. The socket is 0600 in the 0700 state dir, and every connection's peer uid is
//! checked (`SO_PEERCRED`): only the user who runs gaffer may drive it.
//!
//! `cli/*.rs` commands mirror these endpoints (`cli/control.rs` ↔ `POST /v1/retry`).
//! Architecture Invariant: the API sees the engine only through `EngineHandle`.

pub mod client;
mod metrics;
mod openapi;
mod remote;
mod request;
mod routes;
mod stream;
pub mod token;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};

pub use openapi::TaskStateName;
pub use remote::RemoteEngine;
pub use request::{Request, RequestError, decode_request};

use crate::config::Workflow;
use crate::engine::EngineHandle;
use crate::state_dir::StateDir;

const SOCKET_FILE: &str = "gaffer.sock";

/// Where the socket lives in a state dir.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// What every handler gets.
pub struct ApiState {
    pub handle: EngineHandle,
    pub state_dir: PathBuf,
    /// Where the engine's store is: every read opens a snapshot of it.
    pub store: crate::store::StoreLocation,
    /// The bearer token TCP clients must send (`None`: no TCP listener).
    pub token: Option<String>,
    /// `GET /v1/openapi.json`, made at start for this workflow.
    pub openapi: String,
}

/// Who is on the other end of a connection, found once when it is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    /// The unix socket, with the peer's uid (`SO_PEERCRED`).
    Local(Option<u32>),
    /// TCP (`--listen`): must show the bearer token.
    Tcp,
}

/// Connections one listener serves at once. Past it, new ones wait in the kernel's backlog,
/// where they hold no descriptor of gaffer's: a flood of idle connections cannot use up the
/// open-file limit that spawning tasks needs (issue 9, item 3).
const MAX_CONNECTIONS: usize = 64;
/// A client must send its whole request head this soon after connecting (else 408, closed).
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle kept-alive connection is closed after this.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A closing connection gets this long to shut down before it is dropped.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The running servers; `stop` ends them and removes the socket.
pub struct Api {
    servers: Vec<ServerHandle>,
    path: PathBuf,
}

impl Api {
    /// Binds the socket (replacing a stale one: whoever calls this holds the instance lock),
    /// and the TCP address if one is given, and serves them on the current actix System. Each
    /// listener has its own server, so a flood of TCP connections cannot crowd out the socket.
    pub fn start(
        handle: EngineHandle,
        workflow: &Workflow,
        state_dir: &Path,
        tcp: Option<std::net::TcpListener>,
    ) -> std::io::Result<Api> {
        let path = socket_path(state_dir);
        let dir = StateDir::open(state_dir).map_err(std::io::Error::other)?;
        // Bound under a side name, made 0600, then renamed into place: a kill -9 between the
        // bind (mode from the umask) and the chmod never leaves a loose `gaffer.sock` behind.
        // A stale one (or anything planted under either name) is unlinked, never followed.
        let binding = format!("{SOCKET_FILE}.new");
        dir.remove_file(&binding)?;
        let listener = std::os::unix::net::UnixListener::bind(state_dir.join(&binding))?;
        std::fs::set_permissions(state_dir.join(&binding), std::fs::Permissions::from_mode(0o600))?;
        dir.rename(&binding, SOCKET_FILE)?;
        let token = if tcp.is_some() { Some(token::load_or_create(state_dir)?) } else { None };
        let openapi = openapi::document(workflow);
        let store = handle.location().clone();
        let state = web::Data::new(ApiState { handle, state_dir: state_dir.to_path_buf(), store, token, openapi });
        let server = || {
            let state = state.clone();
            // The factory runs on the worker's thread: a submit wakes it (see `crate::sched`).
            HttpServer::new(move || {
                crate::sched::prefer_short_waits();
                App::new().app_data(state.clone()).configure(routes::configure)
            })
            .workers(1)
            .max_connections(MAX_CONNECTIONS)
            .client_request_timeout(REQUEST_HEAD_TIMEOUT)
            .keep_alive(KEEP_ALIVE)
            .client_disconnect_timeout(DISCONNECT_TIMEOUT)
            .disable_signals()
            .shutdown_timeout(1)
            .on_connect(|connection, extensions| {
                let peer = match connection.downcast_ref::<tokio::net::UnixStream>() {
                    Some(unix) => Peer::Local(unix.peer_cred().ok().map(|cred| cred.uid())),
                    None => Peer::Tcp,
                };
                extensions.insert(peer);
            })
        };
        let mut servers = vec![server().listen_uds(listener)?.run()];
        if let Some(tcp) = tcp {
            servers.push(server().listen(tcp)?.run());
        }
        let handles = servers.iter().map(|s| s.handle()).collect();
        for server in servers {
            actix::spawn(server);
        }
        Ok(Api { servers: handles, path })
    }

    pub async fn stop(self) {
        futures_util::future::join_all(self.servers.iter().map(|s| s.stop(true))).await;
        let _ = std::fs::remove_file(&self.path);
    }
}
