//! The control API: HTTP/JSON over `state/gaffer.sock`, for the CLI of other terminals and for
//! scripts. The socket is 0600 in the 0700 state dir, and every connection's peer uid is
//! checked (`SO_PEERCRED`): only the user who runs gaffer may drive it.
//!
//! `cli/*.rs` commands mirror these endpoints (`cli/control.rs` ↔ `POST /v1/retry`).
//! Architecture Invariant: the API sees the engine only through `EngineHandle`.

pub mod client;
mod metrics;
mod remote;
mod routes;
pub mod token;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};

pub use remote::RemoteEngine;

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
    /// The bearer token TCP clients must send (`None`: no TCP listener).
    pub token: Option<String>,
}

/// Who is on the other end of a connection, found once when it is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    /// The unix socket, with the peer's uid (`SO_PEERCRED`).
    Local(Option<u32>),
    /// TCP (`--listen`): must show the bearer token.
    Tcp,
}

/// The running server; `stop` ends it and removes the socket.
pub struct Api {
    server: ServerHandle,
    path: PathBuf,
}

impl Api {
    /// Binds the socket (replacing a stale one: whoever calls this holds the instance lock),
    /// and the TCP address if one is given, and serves them on the current actix System.
    pub fn start(handle: EngineHandle, state_dir: &Path, tcp: Option<std::net::TcpListener>) -> std::io::Result<Api> {
        let path = socket_path(state_dir);
        let dir = StateDir::open(state_dir).map_err(std::io::Error::other)?;
        // A stale socket (or anything planted under its name: unlinked, never followed).
        dir.remove_file(SOCKET_FILE)?;
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let token = if tcp.is_some() { Some(token::load_or_create(state_dir)?) } else { None };
        let state = web::Data::new(ApiState { handle, state_dir: state_dir.to_path_buf(), token });
        let mut server = HttpServer::new(move || App::new().app_data(state.clone()).configure(routes::configure))
            .workers(1)
            .disable_signals()
            .shutdown_timeout(1)
            .on_connect(|connection, extensions| {
                let peer = match connection.downcast_ref::<tokio::net::UnixStream>() {
                    Some(unix) => Peer::Local(unix.peer_cred().ok().map(|cred| cred.uid())),
                    None => Peer::Tcp,
                };
                extensions.insert(peer);
            })
            .listen_uds(listener)?;
        if let Some(tcp) = tcp {
            server = server.listen(tcp)?;
        }
        let server = server.run();
        let handle = server.handle();
        actix::spawn(server);
        Ok(Api { server: handle, path })
    }

    pub async fn stop(self) {
        self.server.stop(true).await;
        let _ = std::fs::remove_file(&self.path);
    }
}
