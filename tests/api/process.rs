//! The real `tianji serve` binary as a child process, for the tests that end it the hard way
//! (SIGKILL: no shutdown hook, no flush) or the polite way (SIGTERM) and start it again on the
//! same database. A process is never left behind: dropping the handle kills it.

use crate::helpers::{JWT_SECRET, PAYMENT_SECRET};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A `tianji serve` child process, killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`, the port the process said it listens on.
    pub address: String,
}

impl ServerProcess {
    /// Starts `tianji serve` on a random port over `database_url`, with the test secrets, two
    /// HTTP workers, two actor threads, no Redis and no per-user rate limits, then `settings` on
    /// top (a setting given there wins). `name` names its data directory
    /// (`tianji-<name>-<test process id>` in the temp dir). Returns once the process printed the port it listens on.
    pub fn start(name: &str, database_url: &str, settings: &[(&str, &str)]) -> ServerProcess {
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
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the tianji binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let port: u16 = line
            .trim()
            .strip_prefix("tianji listening on port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("tianji did not start: {line:?}"));
        ServerProcess { child, address: format!("http://127.0.0.1:{port}") }
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

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
