//! The one client a cluster node talks to its peers with: keep-alive connections (a pool per
//! peer), a bound on calls in flight and a timeout on each.
//!
//! Guarantees: at most `PeerLimits::in_flight_max` calls are in flight at once; a call past
//! that bound is refused at once (`PeerError::Busy`, never queued); every call ends within
//! `PeerLimits::timeout` (`PeerError::Timeout`: the peer may or may not have acted on it);
//! a peer that cannot be reached is `PeerError::Unreachable`. Calls run on the runtime the
//! client was made on, so pooled connections outlive the HTTP worker that asked.

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// `TIANJI_PEER_TIMEOUT` when unset.
pub const PEER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// `TIANJI_PEER_IN_FLIGHT_MAX` when unset.
pub const PEER_IN_FLIGHT_MAX_DEFAULT: usize = 1_024;
/// Bounds of `TIANJI_PEER_TIMEOUT`: under 10 ms a loaded owner's answers are refused as lost;
/// over a minute a dead owner holds a caller that long.
pub const PEER_TIMEOUT_MIN: Duration = Duration::from_millis(10);
pub const PEER_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// Upper bound of `TIANJI_PEER_IN_FLIGHT_MAX`.
pub const PEER_IN_FLIGHT_MAX_MAX: usize = 65_536;
/// Idle connections kept per peer.
pub const PEER_IDLE_CONNECTIONS_MAX: usize = 256;

/// The bounds of peer calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    pub timeout: Duration,
    pub in_flight_max: usize,
}

impl PeerLimits {
    /// `TIANJI_PEER_TIMEOUT` and `TIANJI_PEER_IN_FLIGHT_MAX`, checked on every node, used by
    /// cluster nodes only.
    pub(crate) fn parse<'a>(
        get: impl Fn(&str) -> Option<&'a str> + Copy,
    ) -> Result<PeerLimits, crate::config::ConfigError> {
        Ok(PeerLimits {
            timeout: crate::config::parse_duration(
                get,
                "TIANJI_PEER_TIMEOUT",
                PEER_TIMEOUT_DEFAULT,
                PEER_TIMEOUT_MIN,
                PEER_TIMEOUT_MAX,
            )?,
            in_flight_max: crate::config::parse_number(
                get,
                "TIANJI_PEER_IN_FLIGHT_MAX",
                PEER_IN_FLIGHT_MAX_DEFAULT,
                1,
                PEER_IN_FLIGHT_MAX_MAX,
            )?,
        })
    }
}

impl PeerLimits {
    /// The bounds of calls made while serving a request another node may have forwarded (a
    /// reservation, settlement or claim on another node's key): half the timeout, so this
    /// node answers (a refusal, or that the outcome is unknown) before a forwarding node gives
    /// up on it and answers 503 for a request that may yet succeed.
    pub fn nested(self) -> PeerLimits {
        PeerLimits { timeout: self.timeout / 2, ..self }
    }
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits { timeout: PEER_TIMEOUT_DEFAULT, in_flight_max: PEER_IN_FLIGHT_MAX_DEFAULT }
    }
}

/// A call to a peer: `base` is its advertised URL, `path_and_query` starts with `/`.
#[derive(Debug, Clone)]
pub struct PeerRequest {
    pub method: reqwest::Method,
    pub path_and_query: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

/// A peer's answer, whatever its status.
#[derive(Debug, Clone)]
pub struct PeerResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// Too many calls in flight: refused before anything was sent.
    #[error("too many calls to other nodes in flight")]
    Busy,
    /// No answer in time: the peer may have acted on the call.
    #[error("no answer from {0} in time")]
    Timeout(String),
    /// The peer could not be reached, or the exchange broke.
    #[error("{0}")]
    Unreachable(String),
}

/// The client of this node's calls to other nodes.
#[derive(Clone)]
pub struct Peers {
    client: reqwest::Client,
    permits: Arc<Semaphore>,
    limits: PeerLimits,
    home: tokio::runtime::Handle,
}

impl Peers {
    /// A client whose calls run on the current runtime. Needs a running tokio runtime.
    pub fn new(limits: PeerLimits) -> Peers {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(PEER_IDLE_CONNECTIONS_MAX)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(limits.timeout)
            .timeout(limits.timeout)
            .build()
            .expect("a plain HTTP client builds");
        Peers {
            client,
            permits: Arc::new(Semaphore::new(limits.in_flight_max)),
            limits,
            home: tokio::runtime::Handle::current(),
        }
    }

    pub fn limits(&self) -> PeerLimits {
        self.limits
    }

    /// Sends `request` to the peer at `base` and reads its whole answer.
    pub async fn send(&self, base: &str, request: PeerRequest) -> Result<PeerResponse, PeerError> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().map_err(|_| PeerError::Busy)?;
        let url = format!("{base}{}", request.path_and_query);
        let client = self.client.clone();
        let timeout = self.limits.timeout;
        let call = async move {
            let _permit = permit;
            let mut builder = client.request(request.method, &url).body(request.body);
            for (name, value) in request.headers {
                builder = builder.header(name, value);
            }
            let exchange = async {
                let response = builder.send().await?;
                let status = response.status().as_u16();
                let headers = response
                    .headers()
                    .iter()
                    .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                    .collect();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>(PeerResponse { status, headers, body })
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(error)) if error.is_timeout() => Err(PeerError::Timeout(url)),
                Ok(Err(error)) => Err(PeerError::Unreachable(format!("{url}: {error}"))),
                Err(_) => Err(PeerError::Timeout(url)),
            }
        };
        match self.home.spawn(tracing::Instrument::in_current_span(call)).await {
            Ok(result) => result,
            Err(error) => Err(PeerError::Unreachable(format!("the peer call ended: {error}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_past_the_bound_is_refused_at_once_and_an_absent_peer_is_unreachable() {
        let peers = Peers::new(PeerLimits { timeout: Duration::from_millis(500), in_flight_max: 1 });
        let held = Arc::clone(&peers.permits).try_acquire_owned().unwrap();
        let request = PeerRequest {
            method: reqwest::Method::GET,
            path_and_query: "/healthz".into(),
            headers: vec![],
            body: Bytes::new(),
        };
        assert_eq!(peers.send("http://127.0.0.1:9", request.clone()).await.unwrap_err(), PeerError::Busy);
        drop(held);
        // Port 9 (discard) is closed on loopback: refused, not timed out.
        let error = peers.send("http://127.0.0.1:9", request).await.unwrap_err();
        assert!(matches!(error, PeerError::Unreachable(_)), "{error:?}");
    }
}
