//! A TCP proxy between one test's app and MariaDB, switched by the test at runtime.
//!
//! The database is shared by every test and by the people working on the machine: it must never
//! be stopped, restarted or slowed down to make a fault. Instead the app under test reaches it
//! through this proxy, and the test decides what the wire does: `Pass` forwards, `Refuse` closes
//! every connection at once and every new one as it arrives (the server went away), `Stall`
//! keeps connections open but moves no byte in either direction (a partition, or a server that
//! hangs). Only the app's connections see the fault; the test's own pool talks to MariaDB
//! directly, so it can check the truth while the app cannot.
//!
//! Bounded: it serves one test. It runs on a thread and runtime of its own (so it keeps moving
//! whatever the test's runtime does), holds at most `CONNECTIONS_MAX` connections, and stops
//! with its handle, closing every connection it holds.

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Connections held at once; the app's pool needs far fewer. Beyond it, new ones are closed.
const CONNECTIONS_MAX: usize = 64;
/// Bytes moved per read.
const CHUNK_SIZE_BYTES: usize = 16 * 1024;

/// What the wire does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Refuse,
    Stall,
}

/// The running proxy; stops when dropped.
pub struct Proxy {
    port: u16,
    mode: Option<watch::Sender<Mode>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream` (`host:port`), in `Pass`.
    pub fn start(upstream: String) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("the proxy binds a port");
        let port = listener.local_addr().expect("local address").port();
        listener.set_nonblocking(true).expect("non-blocking listener");
        let (mode, watched) = watch::channel(Mode::Pass);
        let thread = std::thread::Builder::new()
            .name(format!("db-proxy-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                // Dropping the runtime at the end drops every connection task, closing its sockets.
                runtime.block_on(accept(listener, upstream, watched));
            })
            .expect("the proxy thread starts");
        Proxy { port, mode: Some(mode), thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Switches the mode; connections act on it as soon as their task wakes.
    pub fn set(&self, mode: Mode) {
        self.mode.as_ref().expect("set before drop").send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Closing the channel ends the accept loop, then the runtime and every connection.
        drop(self.mode.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(listener: std::net::TcpListener, upstream: String, mode: watch::Receiver<Mode>) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut stopped = mode.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else { continue };
                if *mode.borrow() == Mode::Refuse {
                    continue;
                }
                let (upstream, mode) = (upstream.clone(), mode.clone());
                tokio::spawn(async move {
                    serve(client, upstream, mode).await;
                    drop(slot);
                });
            }
            changed = stopped.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// One client connection: connects upstream once the mode allows, then moves bytes until
/// either side closes or the mode becomes `Refuse`.
async fn serve(client: TcpStream, upstream: String, mut mode: watch::Receiver<Mode>) {
    if !until_pass(&mut mode).await {
        return;
    }
    let Ok(server) = TcpStream::connect(&upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = pump(client_read, server_write, mode.clone()) => {}
        _ = pump(server_read, client_write, mode.clone()) => {}
        _ = until_refuse(&mut mode) => {}
    }
}

/// Moves bytes one way, reading only in `Pass` and holding what it read until `Pass` again.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buffer = vec![0_u8; CHUNK_SIZE_BYTES];
    loop {
        if !until_pass(&mut mode).await {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if !until_pass(&mut mode).await || to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// Waits while stalled: true once in `Pass`, false on `Refuse` or when the proxy stops.
async fn until_pass(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        match *mode.borrow_and_update() {
            Mode::Pass => return true,
            Mode::Refuse => return false,
            Mode::Stall => {}
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

/// Returns once the mode is `Refuse` or the proxy stops.
async fn until_refuse(mode: &mut watch::Receiver<Mode>) {
    while *mode.borrow_and_update() != Mode::Refuse {
        if mode.changed().await.is_err() {
            return;
        }
    }
}

/// `host:port` of a `mysql://user@host:port/...` URL.
pub fn upstream_of(url: &str) -> String {
    let url = reqwest::Url::parse(url).expect("a database URL");
    let host = url.host_str().expect("a database host");
    format!("{host}:{}", url.port().unwrap_or(3306))
}

/// The same URL, with the host and port of the proxy.
pub fn through(url: &str, port: u16) -> String {
    let mut url = reqwest::Url::parse(url).expect("a database URL");
    url.set_host(Some("127.0.0.1")).expect("a host can be set");
    url.set_port(Some(port)).expect("a port can be set");
    url.to_string()
}
