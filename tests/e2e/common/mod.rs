//! Throwaway PostgreSQL clusters for end-to-end tests: initdb'd and started by the test (as the
//! `postgres` OS user when the test runs as root), with pg_token_cleanup preloaded, stopped and
//! removed on drop. The extension must already be installed into the server `PG_BIN` names
//! (`cargo pgrx install` for Debian's PostgreSQL 15, the default; scripts/matrix.sh for the others).

pub mod tenants;

use postgres::{Client, NoTls};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The server's programs: `PG_BIN` when set (scripts/pg_env.sh owns the default, repeated here for
/// a bare `cargo test`).
pub fn pg_bin() -> PathBuf {
    PathBuf::from(std::env::var("PG_BIN").unwrap_or_else(|_| SYSTEM_BIN.into()))
}

/// A client program for the server under test (pg_dump, pg_restore, pg_basebackup): its own, or
/// Debian's PostgreSQL 15 one for an older server (they read older servers); None when neither fits
/// (the npm registry's builds carry only initdb, pg_ctl and postgres, and pg_dump and pg_basebackup
/// refuse servers newer than themselves). Tests that need one then say they skipped.
pub fn client_tool(program: &str) -> Option<PathBuf> {
    let own = pg_bin().join(program);
    let system = PathBuf::from(SYSTEM_BIN).join(program);
    if own.exists() {
        Some(own)
    } else if server_major() <= 15 && system.exists() {
        Some(system)
    } else {
        eprintln!(
            "{program} for PostgreSQL {} is not here: skipping",
            server_major()
        );
        None
    }
}

const SYSTEM_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The major version of the server in PG_BIN (`postgres --version`).
pub fn server_major() -> u32 {
    let output = pg_command("postgres")
        .arg("--version")
        .output()
        .expect("postgres --version");
    let text = String::from_utf8_lossy(&output.stdout);
    // "postgres (PostgreSQL) 14.23" or "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
    text.split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("unexpected postgres --version: {text}"))
}

/// True when every program in `programs` is there; prints which one is missing otherwise.
pub fn have_client_tools(programs: &[&str]) -> bool {
    programs.iter().all(|p| client_tool(p).is_some())
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    _sharing: Option<Sharing>,
}

/// Who uses the machine: tests run two at a time (libtest's threads, one per core), except one that
/// asked to run [`alone`] (the load test measures delays and memory, which a neighbour would skew).
struct Machine {
    clusters: usize,
    alone: bool,
}

static MACHINE: Mutex<Machine> = Mutex::new(Machine {
    clusters: 0,
    alone: false,
});
static MACHINE_FREED: Condvar = Condvar::new();

thread_local! {
    /// This test runs alone: its own clusters do not wait for it.
    static RUNS_ALONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn machine() -> std::sync::MutexGuard<'static, Machine> {
    MACHINE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A cluster's share of the machine, held while it lives.
struct Sharing;

impl Sharing {
    /// Waits while a test runs alone (unless it is this one).
    fn take() -> Option<Sharing> {
        if RUNS_ALONE.get() {
            return None;
        }
        let mut m = machine();
        while m.alone {
            m = MACHINE_FREED
                .wait(m)
                .unwrap_or_else(PoisonError::into_inner);
        }
        m.clusters += 1;
        Some(Sharing)
    }
}

impl Drop for Sharing {
    fn drop(&mut self) {
        machine().clusters -= 1;
        MACHINE_FREED.notify_all();
    }
}

/// Held by a test that must run with no other test's cluster beside it: waits until no other
/// cluster is up (at worst until the other tests are done), and keeps new ones from starting until
/// it is dropped.
pub struct Alone;

pub fn alone() -> Alone {
    let mut m = machine();
    while m.alone || m.clusters > 0 {
        m = MACHINE_FREED
            .wait(m)
            .unwrap_or_else(PoisonError::into_inner);
    }
    m.alone = true;
    RUNS_ALONE.set(true);
    Alone
}

impl Drop for Alone {
    fn drop(&mut self) {
        RUNS_ALONE.set(false);
        machine().alone = false;
        MACHINE_FREED.notify_all();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a program of the server under test as the `postgres` OS user when we are root (PostgreSQL
/// refuses root).
fn pg_command(program: &str) -> Command {
    as_postgres(&pg_bin().join(program))
}

/// Runs `path` as the `postgres` OS user when we are root. A program from a server installation that
/// is not the system's (PG_BIN set) gets that installation's libraries (its ../lib) first.
fn as_postgres(path: &std::path::Path) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "env"]);
        c
    } else {
        Command::new("env")
    };
    if std::env::var_os("PG_BIN").is_some() && path.starts_with(pg_bin()) {
        let lib = pg_bin().join("../lib");
        c.arg(format!("LD_LIBRARY_PATH={}", lib.display()));
    }
    c.arg(path);
    // A server as it runs in production: no Rust backtraces attached to errors.
    c.env_remove("PGDATA")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    c
}

/// A TCP port on localhost that nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn check(what: &str, output: std::io::Result<std::process::Output>) {
    let output = output.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Cluster {
    /// initdb + start a cluster with the library preloaded and `extra` settings appended.
    pub fn start(name: &str, extra: &[&str]) -> Cluster {
        Cluster::start_with(name, "pg_token_cleanup", extra)
    }

    /// initdb + start a cluster with `preload` as shared_preload_libraries.
    pub fn start_with(name: &str, preload: &str, extra: &[&str]) -> Cluster {
        let cluster = Cluster::new_dir(name);
        check(
            "initdb",
            pg_command("initdb")
                .args([
                    "-D",
                    cluster.data().to_str().unwrap(),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                ])
                .output(),
        );
        let mut conf = vec![
            format!("shared_preload_libraries = '{preload}'"),
            "fsync = off".into(),
            "pg_token_cleanup.database_probe_interval = '2s'".into(),
            "log_line_prefix = '%m [%p] '".into(),
        ];
        conf.extend(extra.iter().map(|s| s.to_string()));
        cluster.configure_and_start(&conf);
        cluster
    }

    /// A streaming replica of this cluster (pg_basebackup -R), started in hot standby.
    pub fn replica(&self, name: &str, extra: &[&str]) -> Cluster {
        let replica = Cluster::new_dir(name);
        let port = self.port.to_string();
        check(
            "pg_basebackup",
            as_postgres(&client_tool("pg_basebackup").expect("pg_basebackup"))
                .args([
                    "-D",
                    replica.data().to_str().unwrap(),
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                ])
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
                .output(),
        );
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        replica.configure_and_start(&extra);
        replica
    }

    /// pg_ctl promote, waiting for the end of recovery.
    pub fn promote(&self) {
        check(
            "pg_ctl promote",
            pg_command("pg_ctl")
                .args(["-D", self.data().to_str().unwrap(), "-w", "promote"])
                .output(),
        );
    }

    /// Runs a client program (pg_dump, pg_restore, …) against this cluster.
    pub fn run_bin(&self, program: &str, args: &[&str]) {
        let port = self.port.to_string();
        let path = client_tool(program).unwrap_or_else(|| panic!("no {program}"));
        let output = Command::new(path)
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args(args)
            .output();
        check(program, output);
    }

    /// A new, empty directory for a cluster, owned by the postgres OS user when we are root.
    fn new_dir(name: &str) -> Cluster {
        let base = std::env::temp_dir().join("pg_token_cleanup_e2e");
        // Unique in this process: tests of different suites may pick the same name.
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        let n = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let dir = base.join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            // Not recursive: other tests create and remove their own directories meanwhile.
            for d in [&base, &dir] {
                let path = d.to_str().unwrap();
                check(
                    "chown",
                    Command::new("chown")
                        .args(["postgres:postgres", path])
                        .output(),
                );
            }
        }
        Cluster {
            _sharing: Sharing::take(),
            dir,
            port: free_port(),
        }
    }

    /// Appends this cluster's port and socket directory, then `lines`, to postgresql.conf; starts it.
    fn configure_and_start(&self, lines: &[String]) {
        let mut conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n",
            self.port,
            self.dir.display()
        );
        for line in lines {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = self.data().join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();
        self.pg_ctl_start();
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pg_ctl_start(&self) {
        check(
            "pg_ctl start",
            pg_command("pg_ctl")
                .args([
                    "-D",
                    self.data().to_str().unwrap(),
                    "-l",
                    self.log_path().to_str().unwrap(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ])
                .output(),
        );
    }

    pub fn pg_ctl_stop(&self, mode: &str) {
        let _ = pg_command("pg_ctl")
            .args([
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                "stop",
            ])
            .output();
    }

    pub fn connect(&self, database: &str) -> Client {
        let conn = format!(
            "host=127.0.0.1 port={} user=postgres dbname={database}",
            self.port
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&conn, NoTls) {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("connecting to {database}: {e}"),
            }
        }
    }

    /// Connects to `database` as `role` (trust authentication).
    pub fn connect_as(&self, database: &str, role: &str) -> Client {
        let conn = format!(
            "host=127.0.0.1 port={} user={role} dbname={database}",
            self.port
        );
        Client::connect(&conn, NoTls).unwrap_or_else(|e| panic!("connecting as {role}: {e}"))
    }

    /// Creates `database` with the extension installed.
    pub fn database_with_extension(&self, database: &str) -> Client {
        self.connect("postgres")
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .unwrap();
        let mut client = self.connect(database);
        client
            .batch_execute("CREATE EXTENSION pg_token_cleanup")
            .unwrap();
        client
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.pg_ctl_stop("immediate");
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("cluster log kept at {}", self.log_path().display());
            eprintln!("{}", self.log());
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn count(client: &mut Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// A token table: `expired` rows matching `expires_at < now()` (ids 1..=expired) and `live` rows that
/// do not (the ids after them).
pub fn token_table(client: &mut Client, table: &str, expired: i64, live: i64) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, user_id bigint, revoked boolean NOT NULL DEFAULT false, \
                                   expires_at timestamptz NOT NULL);
             INSERT INTO {table} SELECT g, g % 1000, false, now() - interval '1 day' FROM generate_series(1, {expired}) g;
             INSERT INTO {table} SELECT g, g % 1000, false, now() + interval '1 day'
               FROM generate_series({expired} + 1, {expired} + {live}) g;"
        ))
        .unwrap();
}

/// A table of `expired` rows with `expires_at` in the past and `live` in the future (no other
/// columns), created and filled as whoever `client` is.
pub fn expiring_tokens(client: &mut Client, table: &str, expired: i64, live: i64) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, expires_at timestamptz NOT NULL);
             INSERT INTO {table} SELECT g, pg_catalog.now() - interval '1 day' FROM generate_series(1, {expired}) g;
             INSERT INTO {table} SELECT g, pg_catalog.now() + interval '1 day'
               FROM generate_series({expired} + 1, {expired} + {live}) g;"
        ))
        .unwrap();
}

/// Checksum of the live rows: what must survive every run untouched.
pub fn live_checksum(client: &mut Client, table: &str) -> String {
    client
        .query_one(
            &format!("SELECT count(*)::text || ':' || coalesce(sum(id), 0)::text || ':' || md5(string_agg(id::text || user_id::text || expires_at::text, ',' ORDER BY id)) FROM {table} WHERE expires_at >= now()"),
            &[],
        )
        .unwrap()
        .get(0)
}

/// Adds a rule (validated by the extension's trigger like any INSERT).
pub fn add_rule(
    client: &mut Client,
    name: &str,
    table: &str,
    condition: &str,
    schedule: &str,
    batch_size: Option<i32>,
) {
    client
        .execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size) VALUES ($1, $2, $3, $4, $5)",
            &[&name, &table, &condition, &schedule, &batch_size],
        )
        .unwrap_or_else(|e| panic!("adding rule {name}: {e}"));
}

/// Waits until `sql` (a count) returns `expected`.
pub fn wait_for_count(
    client: &mut Client,
    what: &str,
    sql: &str,
    expected: i64,
    timeout: Duration,
) {
    wait_for(what, timeout, || {
        (count(client, sql) == expected).then_some(())
    });
}

/// Where the rows of docs/reliability.md go when they are asked for: `RESULTS_DIR` (scripts/test.sh
/// sets it to target/reliability, which scripts/reliability_report.sh assembles). Unset: nowhere.
pub fn results_dir() -> Option<PathBuf> {
    std::env::var_os("RESULTS_DIR").map(PathBuf::from)
}

/// One row of docs/reliability.md: started with the case a test is about, given what was done and
/// what was measured once the test has them, and written when the test ends (only when asked for,
/// see [`results_dir`]) with the test's outcome as its result: a test that panics writes `FAIL`.
pub struct Figures {
    case: String,
    row: Option<(String, String, String)>,
}

impl Figures {
    pub fn start(case: &str) -> Figures {
        Figures {
            case: case.to_string(),
            row: None,
        }
    }

    /// What the test did and measured; `passing_shows` (may be empty) says what a pass means.
    pub fn record(&mut self, done: &str, measured: &str, passing_shows: &str) {
        self.row = Some((done.into(), measured.into(), passing_shows.into()));
    }
}

impl Drop for Figures {
    fn drop(&mut self) {
        let Some(dir) = results_dir() else {
            return;
        };
        let failed = std::thread::panicking();
        let (done, measured, result) = match self.row.take() {
            Some((done, measured, shows)) if !failed && shows.is_empty() => {
                (done, measured, "pass".to_string())
            }
            Some((done, measured, shows)) if !failed => (done, measured, format!("pass: {shows}")),
            Some((done, measured, _)) => (done, measured, "FAIL".to_string()),
            None if failed => (
                "–".to_string(),
                "not reached: the test failed before its figures".to_string(),
                "FAIL".to_string(),
            ),
            // A test that skipped (its server lacks a client tool) records nothing.
            None => return,
        };
        let clean = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let row = format!(
            "| {} | {} | {} | {} |\n",
            clean(&self.case),
            clean(&done),
            clean(&measured),
            clean(&result)
        );
        let file: String = self
            .case
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{file}.md")), row).unwrap();
    }
}

/// PID of this database's scheduler, waiting for one to be running.
pub fn scheduler_pid(client: &mut Client, database: &str) -> i32 {
    wait_for("a scheduler", Duration::from_secs(30), || {
        client
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup scheduler' AND datname = $1",
                &[&database],
            )
            .ok()
            .flatten()
            .map(|r| r.get::<_, i32>(0))
    })
}

/// Waits (up to 20 s) for a failed run of `rule` and returns its recorded error, as
/// "<error> (SQLSTATE <sqlstate>)" from the two columns.
pub fn failed_run_error(client: &mut Client, rule: &str) -> String {
    wait_for(
        &format!("a failed run of rule {rule}"),
        Duration::from_secs(20),
        || {
            client
            .query_opt(
                "SELECT error || ' (SQLSTATE ' || coalesce(sqlstate, 'none') || ')' FROM token_cleanup.runs \
                  WHERE rule_name = $1 AND status = 'failed' LIMIT 1",
                &[&rule],
            )
            .unwrap()
            .map(|r| r.get(0))
        },
    )
}

/// `ALTER SYSTEM SET setting = value` and a reload (each its own statement: ALTER SYSTEM cannot run
/// in a transaction block). Processes started after the postmaster has reloaded see it.
pub fn alter_system(client: &mut Client, setting: &str, value: &str) {
    client
        .batch_execute(&format!("ALTER SYSTEM SET {setting} = '{value}'"))
        .unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
}

/// The message of a statement's error ("no error" when it succeeded): what bad-input tests assert.
pub fn error_of(result: Result<impl Sized, postgres::Error>) -> String {
    match result {
        Ok(_) => "no error".into(),
        Err(e) => e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}
