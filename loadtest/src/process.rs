//! Finding the processes whose CPU time a run reports: the one given by pid, else the one
//! listening on a known loopback port (its socket's inode in /proc/net/tcp{,6}, then the
//! process holding that inode among /proc/*/fd), else the only process with a known name
//! (/proc/*/comm). Linux only; when nothing fits, the caller reports without that process and
//! says why.
//!
//! The parsers are pure and tested; the rest only reads /proc.

use crate::cpu::{Probe, Source};
use std::path::Path;

/// Names MariaDB's server goes by (/proc/PID/comm).
pub const MYSQLD_NAMES: &[&str] = &["mariadbd", "mysqld"];
/// Names Redis's server goes by.
pub const REDIS_NAMES: &[&str] = &["redis-server"];

/// The TCP state /proc/net/tcp writes for a listening socket.
const TCP_LISTEN: &str = "0A";
/// Processes looked at when searching /proc for a socket's owner or a name: a bound on the
/// scan, far above what a test machine runs.
pub const PROCESSES_SCANNED_MAX: usize = 100_000;

/// A process found for a role, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub pid: u32,
    /// e.g. "--server-pid", "listening on port 18080", "the only process named mariadbd".
    pub how: String,
}

/// The inodes of the sockets listening on `port` in the text of /proc/net/tcp or tcp6.
pub fn listening_inodes(proc_net_tcp: &str, port: u16) -> Vec<u64> {
    proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *state == TCP_LISTEN).then(|| inode.parse().ok()).flatten()
        })
        .filter(|&inode| inode != 0)
        .collect()
}

/// The inode of a socket from an fd's link text, "socket:[12345]".
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The port of a URL like mysql://user@127.0.0.1:3306/db, or its scheme's default.
pub fn url_port(url: &str) -> Option<u16> {
    let parsed = reqwest::Url::parse(url).ok()?;
    parsed.port().or(match parsed.scheme() {
        "mysql" | "mariadb" => Some(3306),
        "redis" => Some(6379),
        "http" => Some(80),
        _ => None,
    })
}

fn process_ids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).take(PROCESSES_SCANNED_MAX).collect()
}

/// The process (other than this one) holding a socket that listens on `port`; `None` when there
/// is none or it cannot be seen (another user's fds are unreadable without privileges).
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let own = std::process::id();
    process_ids().into_iter().filter(|&pid| pid != own).find(|&pid| holds_socket(pid, &inodes))
}

fn holds_socket(pid: u32, inodes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| socket_inode(link.to_str()?))
        .any(|inode| inodes.contains(&inode))
}

/// The processes (other than this one) whose name (/proc/PID/comm) is one of `names`.
pub fn pids_named(names: &[&str]) -> Vec<u32> {
    let own = std::process::id();
    process_ids()
        .into_iter()
        .filter(|&pid| pid != own)
        .filter(|pid| {
            std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
                .is_ok_and(|comm| names.contains(&comm.trim_end()))
        })
        .collect()
}

/// The process for a role: `given` if set, else the one listening on `port`, else the only one
/// named one of `names`. `Err` says why none was picked.
pub fn find(given: Option<(u32, &str)>, port: Option<u16>, names: &[&str]) -> Result<Found, String> {
    if let Some((pid, flag)) = given {
        if !Path::new(&format!("/proc/{pid}/stat")).exists() {
            return Err(format!("{flag} {pid}: no such process"));
        }
        return Ok(Found { pid, how: flag.to_owned() });
    }
    if let Some(pid) = port.and_then(pid_listening_on) {
        return Ok(Found { pid, how: format!("listening on port {}", port.unwrap_or_default()) });
    }
    match pids_named(names).as_slice() {
        [] if names.is_empty() => Err(match port {
            Some(port) => format!("no process seen listening on port {port}"),
            None => "no port to look for".to_owned(),
        }),
        [] => Err(format!("no process named {}", names.join(" or "))),
        [pid] => Ok(Found { pid: *pid, how: format!("the only process named {}", names.join(" or ")) }),
        pids => Err(format!("{} processes named {}: {pids:?}", pids.len(), names.join(" or "))),
    }
}

/// A CPU probe for `role` if its process was found, with a note saying which process it is or
/// why it is not measured (naming `flag`, which picks the process by hand).
pub fn probe(role: &str, flag: &str, found: Result<Found, String>, notes: &mut Vec<String>) -> Option<Probe> {
    match found {
        Ok(Found { pid, how }) => {
            let label = format!("{role} pid {pid}");
            notes.push(format!("cpu: {label} ({how})"));
            Some(Probe::new(label, Source::Process(pid)))
        }
        Err(why) => {
            notes.push(format!("cpu: {role} not measured: {why}; give {flag}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   107        0 8505 1 00000000d1734a29 100 0 0 10 0
   1: 0100007F:46A0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9001 1 0000000000000000 100 0 0 10 0
   2: 0100007F:46A0 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 9002 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:C350 0100007F:46A0 01 00000000:00000000 00:00000000 00000000     0        0 9003 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:18EB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3622 1 00000000893cfe92 100 0 0 10 0
";

    #[test]
    fn only_listening_sockets_on_the_port_are_found() {
        assert_eq!(listening_inodes(TCP, 3306), vec![8505]);
        // Port 18080 (0x46A0) listens once; the established connections on it do not count.
        assert_eq!(listening_inodes(TCP, 18080), vec![9001]);
        assert!(listening_inodes(TCP, 50000).is_empty(), "a client port is not listening");
        assert_eq!(listening_inodes(TCP6, 6379), vec![3622]);
        assert!(listening_inodes("garbage\nmore garbage", 80).is_empty());
    }

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(socket_inode("socket:[8505]"), Some(8505));
        assert_eq!(socket_inode("pipe:[8505]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn url_ports_default_by_scheme() {
        assert_eq!(url_port("mysql://root@127.0.0.1:3307/db"), Some(3307));
        assert_eq!(url_port("mariadb://root@127.0.0.1/db"), Some(3306));
        assert_eq!(url_port("redis://127.0.0.1"), Some(6379));
        assert_eq!(url_port("http://127.0.0.1:18080"), Some(18080));
        assert_eq!(url_port("sqlite:///tmp/x.db"), None);
    }

    #[test]
    fn a_given_pid_must_exist() {
        let own = std::process::id();
        assert_eq!(find(Some((own, "--server-pid")), None, &[]), Ok(Found { pid: own, how: "--server-pid".into() }));
        assert!(find(Some((u32::MAX, "--server-pid")), None, &[]).is_err());
        assert!(find(None, None, &["no-such-process-name"]).is_err());
    }
}
