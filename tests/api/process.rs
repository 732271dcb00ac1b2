//! The real `tianji serve` binary as a child process, for the tests that end it the hard way
//! (SIGKILL: no shutdown hook, no flush) or the polite way (SIGTERM) and start it again on the
//! same database. A process is never left behind: dropping the handle kills it.

use crate::helpers::{JWT_SECRET, PAYMENT_SECRET};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A `tianji serve` child process, killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`, the port the process said it listens on.
    pub address: String,
    /// Every line the process wrote to stderr so far, when started with `start_logged`.
    stderr: Option<Arc<Mutex<Vec<String>>>>,
}

impl ServerProcess {
    /// Starts `tianji serve` on a random port over `database_url`, with the test secrets, two
    /// HTTP workers, two actor threads, no Redis and no per-user rate limits, then `settings` on
    /// top (a setting given there wins). `name` names its data directory
    /// (`tianji-<name>-<test process id>` in the temp dir). Returns once the process printed the port it listens on.
    pub fn start(name: &str, database_url: &str, settings: &[(&str, &str)]) -> ServerProcess {
        Self::spawn(name, database_url, settings, false)
    }

    /// `start`, keeping what the process writes to stderr (its logs) for `log_lines` instead of
    /// passing it through.
    pub fn start_logged(name: &str, database_url: &str, settings: &[(&str, &str)]) -> ServerProcess {
        Self::spawn(name, database_url, settings, true)
    }

    /// The lines the process logged so far (only with `start_logged`).
    pub fn log_lines(&self) -> Vec<String> {
        let lines = self.stderr.as_ref().expect("started with start_logged");
        lines.lock().unwrap().clone()
    }

    fn spawn(name: &str, database_url: &str, settings: &[(&str, &str)], logged: bool) -> ServerProcess {
        let data_dir = std::env::temp_dir().join(format!("tianji-{name}-{}", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_tianji"))
            .arg("serve")
            .env("TIANJI_BIND", "127.0.0.1:0")
            .env("TIANJI_DATABASE_URL", database_url)
            .env("TIANJI_DATA_DIR", data_dir)
            .env("TIANJI_JWT_SECRET", JWT_SECRET)
            .env("TIANJI_PAYMENT_SECRET", PAYMENT_SECRET)
            .env("TIANJI_HTTP_WORKERS", "2")
            .env("TIANJI_ACTOR_THREADS", "2")
            .env("TIANJI_RATE_ORDERS", "off")
            .env("TIANJI_RATE_COUPONS", "off")
            .env("TIANJI_RATE_HEARTBEATS", "off")
            .env("TIANJI_RATE_READS", "off")
            .env_remove("TIANJI_REDIS_URL")
            .env("RUST_LOG", "error")
            .envs(settings.iter().copied())
            .stdout(Stdio::piped())
            .stderr(if logged { Stdio::piped() } else { Stdio::inherit() })
            .spawn()
            .expect("the tianji binary starts");
        let stderr = child.stderr.take().map(|pipe| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let collected = Arc::clone(&lines);
            // Ends when the process closes its stderr (it exits).
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    collected.lock().unwrap().push(line);
                }
            });
            lines
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let port: u16 = line
            .trim()
            .strip_prefix("tianji listening on port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("tianji did not start: {line:?}"));
        ServerProcess { child, address: format!("http://127.0.0.1:{port}"), stderr }
    }

    /// SIGKILL: no shutdown hook, no flush, nothing the process gets to finish.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then waits for the process to end on its own; it must end successfully.
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "SIGTERM to {pid}");
        let status = self.child.wait().expect("reap");
        assert!(status.success(), "tianji stopped on SIGTERM with {status}");
    }
}

impl ServerProcess {
    /// The process id, for signals a test sends itself (SIGSTOP, SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns at once: the process drains while the test goes on.
    pub fn send_terminate(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "SIGTERM to {pid}");
    }

    /// Waits (without blocking the runtime) until the process has exited, at most `bound`; its
    /// exit status. Panics past the bound (dropping the handle then kills the process).
    pub async fn exited_within(mut self, bound: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "tianji still runs {bound:?} after it was told to stop");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// How a process started with `start_logged` ended: its exit status and every line it logged.
pub struct Exited {
    pub status: std::process::ExitStatus,
    pub lines: Vec<String>,
}

impl ServerProcess {
    /// `exited_within`, then every line the process logged (only with `start_logged`): read
    /// once its stderr has closed, so the last lines are in.
    pub async fn log_lines_when_exited(self, bound: std::time::Duration) -> Exited {
        let lines = std::sync::Arc::clone(self.stderr.as_ref().expect("started with start_logged"));
        let status = self.exited_within(bound).await;
        // The reader thread holds the other reference until it has read the end of stderr.
        let deadline = std::time::Instant::now() + bound;
        while Arc::strong_count(&lines) > 1 {
            assert!(std::time::Instant::now() < deadline, "stderr still open {bound:?} after the exit");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let lines = lines.lock().unwrap().clone();
        Exited { status, lines }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
