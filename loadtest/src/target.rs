//! Where load may go: loopback addresses only. Every URL the tool is given (the HTTP target,
//! MariaDB, Redis, a database to verify against) passes through `require_loopback` before
//! anything connects, so a typo can never aim load at another machine.

use std::net::IpAddr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("{what}: cannot parse {url:?} as a URL")]
    Unparsable { what: &'static str, url: String },
    #[error("{what}: {url:?} has no host")]
    NoHost { what: &'static str, url: String },
    #[error(
        "{what}: host {host:?} is not a loopback address; this tool only sends load to \
         127.0.0.0/8 or [::1] (write 127.0.0.1, not a host name)"
    )]
    NotLoopback { what: &'static str, host: String },
    #[error("{what}: scheme {scheme:?} is not one of {expected:?}")]
    Scheme { what: &'static str, scheme: String, expected: &'static [&'static str] },
}

/// Checks that `url` uses one of `schemes` and names a loopback IP address literally. Host
/// names (even `localhost`) are refused: what they resolve to is not ours to decide.
pub fn require_loopback(
    what: &'static str,
    url: &str,
    schemes: &'static [&'static str],
) -> Result<reqwest::Url, TargetError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| TargetError::Unparsable { what, url: url.to_owned() })?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(TargetError::Scheme { what, scheme: parsed.scheme().to_owned(), expected: schemes });
    }
    let host = parsed.host_str().ok_or_else(|| TargetError::NoHost { what, url: url.to_owned() })?;
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(parsed),
        _ => Err(TargetError::NotLoopback { what, host: host.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTTP: &[&str] = &["http"];

    #[test]
    fn loopback_literals_pass() {
        for url in ["http://127.0.0.1:18080", "http://127.1.2.3/", "http://[::1]:8080"] {
            assert!(require_loopback("--target", url, HTTP).is_ok(), "{url}");
        }
        let mysql = require_loopback("--mysql-url", "mysql://root@127.0.0.1:3306", &["mysql"]);
        assert!(mysql.is_ok());
    }

    #[test]
    fn everything_else_is_refused() {
        for url in [
            "http://10.0.0.1:8080",
            "http://192.168.1.1",
            "http://8.8.8.8",
            "http://localhost:8080",
            "http://example.com",
            "http://0.0.0.0:8080",
        ] {
            assert!(matches!(require_loopback("--target", url, HTTP), Err(TargetError::NotLoopback { .. })), "{url}");
        }
        assert!(matches!(require_loopback("--target", "https://127.0.0.1", HTTP), Err(TargetError::Scheme { .. })));
        assert!(matches!(require_loopback("--target", "not a url", HTTP), Err(TargetError::Unparsable { .. })));
    }
}
