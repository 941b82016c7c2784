//! A private PostgreSQL for tests: Debian's `postgresql` package, one server shared by every
//! test process of a run (nextest runs each test in its own process), each test in a schema of
//! its own.
//!
//! The server lives under `$TMPDIR/gaffer-pgtest-<uid>/`: its data dir (made once by `initdb`,
//! kept for the next run), a port file, and two lock files. `start.lock` (exclusive) is held
//! while a process starts or stops the server; `users.lock` is held shared by every test using
//! it. The last test to leave (the one that then gets `users.lock` exclusively) stops the
//! server, also when the test failed (the guard's `Drop` runs on panic). A run killed before
//! that leaves a server and schemas behind: the next run reuses that server (and stops it at
//! its end) and drops the schemas whose process is gone.
//!
//! Root cannot run the server (PostgreSQL refuses it): then `initdb` and `pg_ctl` run as user
//! `postgres` through `runuser`, and the data dir is theirs. The server listens on 127.0.0.1
//! only, on a free port picked at start, with no unix socket; durability is off
//! (`fsync=off`): these tests need a real server, not a durable one. With
//! `GAFFER_TEST_PG_DURABLE` set, a second server (its own dir, `-durable`) keeps PostgreSQL's
//! defaults, for benchmarks.
//!
//! Without PostgreSQL, `TestDb::get` prints why the test is skipped and returns `None`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::fcntl::{Flock, FlockArg};

/// Set (to anything): a server of its own with PostgreSQL's durable defaults (fsync on), for
/// benchmarks whose figures are compared with pg-probe's.
pub const DURABLE: &str = "GAFFER_TEST_PG_DURABLE";

/// One test's database: a schema of its own on the shared server, dropped at the end.
pub struct TestDb {
    /// A libpq-style connection string whose `search_path` is the test's schema.
    pub url: String,
    pub schema: String,
    server: Server,
    users: Option<Flock<File>>,
    /// A server of this test's own ([`TestDb::own_server`]): stopped and removed when dropped.
    own: bool,
}

#[derive(Clone)]
struct Server {
    bin: PathBuf,
    base: PathBuf,
    port: u16,
}

impl TestDb {
    /// A fresh schema on the shared test server, starting the server if needed; `None` (with
    /// the reason printed) when PostgreSQL is not installed.
    pub fn get() -> Option<TestDb> {
        let Some(bin) = postgres_bin() else {
            eprintln!("skipped: PostgreSQL is not installed (apt-get install postgresql; .ci/run does)");
            return None;
        };
        let durable = std::env::var_os(DURABLE).is_some();
        let kind = if durable { "-durable" } else { "" };
        let base = std::env::temp_dir().join(format!("gaffer-pgtest-{}{kind}", nix::unistd::getuid()));
        std::fs::create_dir_all(&base).expect("pg test dir");
        // The server runs as `postgres` when we are root: it must be able to walk to its data dir.
        set_mode(&base, 0o755);
        let start = lock(&base.join("start.lock"), FlockArg::LockExclusive).expect("start.lock");
        let users = lock(&base.join("users.lock"), FlockArg::LockShared).expect("users.lock");
        let server = Server::running(&bin, &base).unwrap_or_else(|| Server::start(&bin, &base, durable));
        server.drop_schemas_of_dead_processes();
        drop(start);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let schema = format!("t_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        server.psql(&format!("CREATE SCHEMA {schema}"));
        let url = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres application_name={schema} \
             options='-c search_path={schema}'",
            server.port
        );
        Some(TestDb { url, schema, server, users: Some(users), own: false })
    }

    /// A database on a server of this test's own (its own data dir and port), which the test
    /// may restart ([`TestDb::restart_server`]) without disturbing the tests sharing the
    /// common one; stopped and removed when dropped. `None` as [`TestDb::get`].
    pub fn own_server() -> Option<TestDb> {
        let Some(bin) = postgres_bin() else {
            eprintln!("skipped: PostgreSQL is not installed (apt-get install postgresql; .ci/run does)");
            return None;
        };
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let uid = nix::unistd::getuid();
        let base = std::env::temp_dir().join(format!("gaffer-pgtest-{uid}-own-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&base).expect("pg test dir");
        set_mode(&base, 0o755);
        let server = Server::start(&bin, &base, false);
        let schema = format!("t_{}_own{n}", std::process::id());
        server.psql(&format!("CREATE SCHEMA {schema}"));
        let url = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres application_name={schema} \
             options='-c search_path={schema}'",
            server.port
        );
        Some(TestDb { url, schema, server, users: None, own: true })
    }

    /// Stops this test's own server (fast: sessions ended, as a crash or an upgrade would)
    /// and starts it again on the same port. Panics on the shared server.
    pub fn restart_server(&self) {
        self.stop_server();
        self.start_server();
    }

    /// The first half of [`TestDb::restart_server`]: an outage lasts until [`TestDb::start_server`].
    pub fn stop_server(&self) {
        assert!(self.own, "only a test's own server is stopped");
        self.server.stop();
    }

    pub fn start_server(&self) {
        assert!(self.own, "only a test's own server is started again");
        self.server.launch(false);
        std::fs::write(self.server.base.join("port"), self.server.port.to_string()).expect("port file");
    }

    /// The same database as a `postgres://` URL, the form `--store` takes.
    pub fn postgres_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?application_name={schema}&options=-c%20search_path%3D{schema}",
            self.server.port,
            schema = self.schema
        )
    }

    /// Runs SQL through `psql` (outside the code under test), returning its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.server.psql(&format!("SET search_path = {}; {sql}", self.schema))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.own {
            self.server.stop();
            let _ = std::fs::remove_dir_all(&self.server.base);
            return;
        }
        // The test's own connections may still hold locks (a snapshot's open transaction, a
        // rollback its runtime will never send, the runtime being blocked right here): they
        // are ended first, or the drop would wait for them forever.
        let schema = &self.schema;
        self.server.try_psql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{schema}'; \
             DROP SCHEMA IF EXISTS {schema} CASCADE"
        ));
        let Ok(start) = lock(&self.server.base.join("start.lock"), FlockArg::LockExclusive) else { return };
        drop(self.users.take());
        // Nobody else holds users.lock: this was the last test using the server.
        if lock(&self.server.base.join("users.lock"), FlockArg::LockExclusiveNonblock).is_ok() {
            self.server.stop();
        }
        drop(start);
    }
}

impl Server {
    /// A server this or an earlier (killed) run left answering, if any.
    fn running(bin: &Path, base: &Path) -> Option<Server> {
        let port: u16 = std::fs::read_to_string(base.join("port")).ok()?.trim().parse().ok()?;
        let server = Server { bin: bin.to_path_buf(), base: base.to_path_buf(), port };
        let mut ready = Command::new(bin.join("pg_isready"));
        ready.args(["-q", "-h", "127.0.0.1", "-p"]).arg(port.to_string());
        run(&mut ready).status.success().then_some(server)
    }

    fn start(bin: &Path, base: &Path, durable: bool) -> Server {
        let data = base.join("data");
        let version = bin.parent().and_then(|p| p.file_name()).map(|v| v.to_string_lossy().into_owned());
        let made_by = std::fs::read_to_string(data.join("PG_VERSION")).ok().map(|v| v.trim().to_string());
        if made_by.is_none() || made_by != version {
            let _ = std::fs::remove_dir_all(&data);
            std::fs::create_dir_all(&data).expect("data dir");
            set_mode(&data, 0o700);
            as_server_owner(&data);
            let mut initdb = server_command(&bin.join("initdb"));
            initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]);
            check(&mut initdb, "initdb");
        }
        let server = Server { bin: bin.to_path_buf(), base: base.to_path_buf(), port: free_port() };
        server.launch(durable);
        std::fs::write(base.join("port"), server.port.to_string()).expect("port file");
        server
    }

    /// `pg_ctl start` on the server's data dir and port, waiting until it answers.
    fn launch(&self, durable: bool) {
        let (data, port) = (self.base.join("data"), self.port);
        let mut options =
            format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=200");
        if !durable {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let mut start = server_command(&self.bin.join("pg_ctl"));
        start.arg("-D").arg(&data).arg("-l").arg(data.join("server.log")).args(["-w", "-t", "60", "-o", &options]);
        start.arg("start");
        check(&mut start, "pg_ctl start");
    }

    fn stop(&self) {
        let mut stop = server_command(&self.bin.join("pg_ctl"));
        stop.arg("-D").arg(self.base.join("data")).args(["-m", "fast", "-w", "stop"]);
        let out = run(&mut stop);
        if !out.status.success() {
            eprintln!("pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
        }
        let _ = std::fs::remove_file(self.base.join("port"));
    }

    /// Schemas `t_<pid>_<n>` whose process is gone (a killed test run) are dropped.
    fn drop_schemas_of_dead_processes(&self) {
        let schemas = self.psql("SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%\\_%'");
        for schema in schemas.lines() {
            let pid = schema.split('_').nth(1).and_then(|p| p.parse::<i32>().ok());
            let alive = pid.is_some_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok());
            if !alive {
                self.try_psql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        }
    }

    fn psql(&self, sql: &str) -> String {
        let out = self.try_psql(sql);
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn try_psql(&self, sql: &str) -> Output {
        let mut psql = Command::new(self.bin.join("psql"));
        psql.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-p"]);
        psql.arg(self.port.to_string()).args(["-d", "postgres", "-c", sql]);
        run(&mut psql)
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` with a server in it (Debian's layout).
fn postgres_bin() -> Option<PathBuf> {
    postgres_bin_in(Path::new("/usr/lib/postgresql"))
}

fn postgres_bin_in(root: &Path) -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("pg_ctl").exists() && bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A server-side command: as `postgres` when we are root (the server refuses root).
fn server_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn as_server_owner(path: &Path) {
    if is_root() {
        let user =
            nix::unistd::User::from_name("postgres").ok().flatten().expect("user postgres (made by the package)");
        nix::unistd::chown(path, Some(user.uid), Some(user.gid)).expect("chown data dir");
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    // Another user's dir (a shared TMPDIR) is left as it is; the start then says what is wrong.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

fn lock(path: &Path, how: FlockArg) -> Result<Flock<File>, nix::Error> {
    let file = File::options().create(true).truncate(false).write(true).open(path).expect("lock file");
    Flock::lock(file, how).map_err(|(_, e)| e)
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("port").port()
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

fn check(command: &mut Command, what: &str) {
    let out = run(command);
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_installed_server_is_used_and_none_means_skip() {
        let root = tempfile::tempdir().expect("tempdir");
        assert_eq!(postgres_bin_in(root.path()), None, "nothing installed: the tests are skipped");
        for (version, complete) in [("13", true), ("15", true), ("16", false), ("notes", true)] {
            let bin = root.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).expect("mkdir");
            std::fs::write(bin.join("pg_ctl"), "").expect("pg_ctl");
            if complete {
                std::fs::write(bin.join("initdb"), "").expect("initdb");
            }
        }
        assert_eq!(postgres_bin_in(root.path()), Some(root.path().join("15/bin")), "16 has no initdb");
    }

    #[test]
    fn schemas_a_killed_run_left_are_dropped_by_the_next() {
        let Some(first) = TestDb::get() else { return };
        // A pid above any pid_max: the process that made this schema is gone.
        first.server.psql("CREATE SCHEMA t_999999999_0");
        let second = TestDb::get().expect("the server is installed");
        let left = second.server.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 't_999999999_0'");
        assert_eq!(left.trim(), "0");
        let ours =
            format!("SELECT count(*) FROM pg_namespace WHERE nspname IN ('{}', '{}')", first.schema, second.schema);
        assert_eq!(second.server.psql(&ours).trim(), "2", "live tests' schemas are kept");
    }
}
