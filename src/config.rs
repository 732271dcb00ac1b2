//! Settings: one struct, read from an optional `tianji.toml` and from `TIANJI_*` environment
//! variables (which win), validated once at start. A bad value stops the start with a message
//! that names the setting. Secrets are wrapped so they never print.

use crate::actors::relay::RelaySettings;
use crate::actors::ActorLimits;
use crate::domain::ids::WORKER_ID_MAX;
use crate::http::auth::TokenRules;
use crate::http::clients::ClientLimits;
use crate::http::limits::{Rate, RateLimitSettings};
use crate::telemetry::{parse_otlp_endpoint, LogFormat, TelemetrySettings};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Shortest accepted secret, in bytes.
pub const SECRET_LEN_MIN: usize = 32;

/// Requests in flight before new ones are refused: ~8x what a node holds at its measured peak
/// (~7,000 orders/s x ~70 ms p99 = ~500); a queue deeper than this only adds latency.
pub const IN_FLIGHT_MAX_DEFAULT: usize = 4_096;

/// How long a graceful stop waits for connections and requests by default: Kubernetes' default
/// `terminationGracePeriodSeconds` (30 s) minus room for the writes that follow.
pub const SHUTDOWN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(25);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid setting {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("cannot read settings file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

pub(crate) fn invalid(name: &str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid { name: name.to_owned(), reason: reason.to_string() }
}

/// Every setting, by its environment variable; the file uses the same names in lower case
/// without the prefix (`pay_timeout = "15m"`).
pub const SETTINGS: &[&str] = &[
    "TIANJI_BIND",
    "TIANJI_DATA_DIR",
    "TIANJI_DATABASE_URL",
    "TIANJI_REDIS_URL",
    "TIANJI_JWT_SECRET",
    "TIANJI_PAYMENT_SECRET",
    "TIANJI_PAY_TIMEOUT",
    "TIANJI_WORKER_ID",
    "TIANJI_HTTP_WORKERS",
    "TIANJI_ACTOR_THREADS",
    "TIANJI_MAILBOX_CAPACITY",
    "TIANJI_BATCH_SIZE_MAX",
    "TIANJI_BATCH_DELAY",
    "TIANJI_IDLE_TIMEOUT",
    "TIANJI_RESERVATION_GRACE",
    "TIANJI_DATABASE_TIMEOUT",
    "TIANJI_USER_KEYS_MAX",
    "TIANJI_USER_KEYS_TOTAL_MAX",
    "TIANJI_LEARNING_FLUSH",
    "TIANJI_LEARNING_REDIS_FLUSH",
    "TIANJI_RATE_ORDERS",
    "TIANJI_RATE_COUPONS",
    "TIANJI_RATE_HEARTBEATS",
    "TIANJI_RATE_READS",
    "TIANJI_RATE_KEYS_MAX",
    "TIANJI_IN_FLIGHT_MAX",
    "TIANJI_JWT_ISSUER",
    "TIANJI_JWT_AUDIENCE",
    "TIANJI_JWT_LIFETIME_MAX",
    "TIANJI_BODY_READ_TIMEOUT",
    "TIANJI_HEADER_READ_TIMEOUT",
    "TIANJI_KEEP_ALIVE",
    "TIANJI_CONNECTIONS_MAX",
    "TIANJI_LOG_FORMAT",
    "TIANJI_OTLP_ENDPOINT",
    "TIANJI_EVENTS_STREAM",
    "TIANJI_EVENTS_STREAM_LEN_MAX",
    "TIANJI_EVENTS_BATCH_SIZE_MAX",
    "TIANJI_EVENTS_INTERVAL",
    "TIANJI_EVENTS_RETENTION",
    "TIANJI_SHUTDOWN_TIMEOUT",
    "TIANJI_ADVERTISE_URL",
    "TIANJI_LEASE_TTL",
    "TIANJI_PEER_TIMEOUT",
    "TIANJI_PEER_IN_FLIGHT_MAX",
];

#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    pub data_dir: PathBuf,
    /// `mysql://...` or `sqlite://...`; the embedded SQLite file in the data dir by default.
    pub database_url: String,
    pub redis_url: Option<String>,
    /// `None` until given or generated (see `ensure_secrets`).
    pub jwt_secret: Option<SecretString>,
    pub payment_secret: Option<SecretString>,
    pub pay_timeout: Duration,
    pub worker_id: u16,
    pub http_workers: usize,
    pub actor_threads: usize,
    pub limits: ActorLimits,
    /// What a bearer token must satisfy beyond its signature.
    pub tokens: TokenRules,
    /// Timeouts and the connection limit that keep slow and greedy clients from starving others.
    pub clients: ClientLimits,
    /// Per-user token buckets on the order, coupon and heartbeat routes.
    pub rate_limits: RateLimitSettings,
    /// Requests served at once before new ones are refused with 503.
    pub in_flight_max: usize,
    /// How logs are written and where spans are exported.
    pub telemetry: TelemetrySettings,
    /// The relay of order events to the Redis Stream (runs only with `redis_url`).
    pub events: RelaySettings,
    /// How long SIGTERM waits for open connections and requests in flight before it cuts them.
    pub shutdown_timeout: Duration,
    /// Set (`TIANJI_ADVERTISE_URL`, MySQL only): this node joins the cluster of every node on
    /// the database. Unset: one node owns every key.
    pub cluster: Option<crate::cluster::ClusterSettings>,
}

impl Settings {
    /// Reads `file` (if given and present) and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let file = match file {
            Some(path) => Some(path.to_owned()),
            None => Some(PathBuf::from("tianji.toml")).filter(|p| p.exists()),
        };
        let mut raw = match file {
            Some(path) => read_file(&path)?,
            None => BTreeMap::new(),
        };
        for name in SETTINGS {
            if let Ok(value) = std::env::var(name) {
                raw.insert((*name).to_owned(), value);
            }
        }
        Settings::from_values(&raw)
    }

    /// Builds settings from raw values keyed by environment variable name.
    pub fn from_values(raw: &BTreeMap<String, String>) -> Result<Settings, ConfigError> {
        if let Some(unknown) = raw.keys().find(|k| !SETTINGS.contains(&k.as_str())) {
            return Err(invalid(unknown, "unknown setting"));
        }
        let get = |name: &str| raw.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let data_dir = PathBuf::from(get("TIANJI_DATA_DIR").unwrap_or("./data"));
        let database_url = match get("TIANJI_DATABASE_URL") {
            Some(url) if is_mysql(url) || url.starts_with("sqlite:") => url.to_owned(),
            Some(_) => return Err(invalid("TIANJI_DATABASE_URL", "expected a mysql:// or sqlite:// URL")),
            None => crate::persistence::sqlite::url_in(&data_dir),
        };
        let redis_url = match get("TIANJI_REDIS_URL") {
            Some(url) => {
                redis::Client::open(url).map_err(|e| invalid("TIANJI_REDIS_URL", e))?;
                Some(url.to_owned())
            }
            None => None,
        };
        let secret = |name: &str| -> Result<Option<SecretString>, ConfigError> {
            match get(name) {
                Some(value) if value.len() < SECRET_LEN_MIN => {
                    Err(invalid(name, format!("must be at least {SECRET_LEN_MIN} bytes")))
                }
                Some(value) => Ok(Some(SecretString::from(value.to_owned()))),
                None if is_mysql(&database_url) => {
                    Err(invalid(name, "is required when TIANJI_DATABASE_URL is a MySQL URL"))
                }
                None => Ok(None),
            }
        };
        let defaults = ActorLimits::default();
        let limits = ActorLimits {
            mailbox_capacity: parse_number(get, "TIANJI_MAILBOX_CAPACITY", defaults.mailbox_capacity, 16, 1 << 20)?,
            batch_size_max: parse_number(get, "TIANJI_BATCH_SIZE_MAX", defaults.batch_size_max, 1, 10_000)?,
            batch_delay: parse_duration(
                get,
                "TIANJI_BATCH_DELAY",
                defaults.batch_delay,
                Duration::ZERO,
                Duration::from_secs(1),
            )?,
            idle_timeout: parse_duration(
                get,
                "TIANJI_IDLE_TIMEOUT",
                defaults.idle_timeout,
                Duration::from_secs(1),
                Duration::from_secs(86_400),
            )?,
            session_idle_timeout: defaults.session_idle_timeout,
            learning_flush: parse_duration(
                get,
                "TIANJI_LEARNING_FLUSH",
                defaults.learning_flush,
                Duration::from_millis(100),
                Duration::from_secs(3_600),
            )?,
            learning_redis_flush: parse_duration(
                get,
                "TIANJI_LEARNING_REDIS_FLUSH",
                defaults.learning_redis_flush,
                Duration::from_millis(10),
                Duration::from_secs(3_600),
            )?,
            reservation_grace: parse_duration(
                get,
                "TIANJI_RESERVATION_GRACE",
                defaults.reservation_grace,
                Duration::from_secs(1),
                Duration::from_secs(86_400),
            )?,
            database_timeout: parse_duration(
                get,
                "TIANJI_DATABASE_TIMEOUT",
                defaults.database_timeout,
                Duration::from_millis(50),
                Duration::from_secs(600),
            )?,
            user_keys_max: parse_number(get, "TIANJI_USER_KEYS_MAX", defaults.user_keys_max, 1, 100_000)?,
            user_keys_total_max: parse_number(
                get,
                "TIANJI_USER_KEYS_TOTAL_MAX",
                defaults.user_keys_total_max,
                1,
                1 << 30,
            )?,
        };
        let rate_defaults = RateLimitSettings::default();
        let rate_limits = RateLimitSettings {
            orders: parse_rate(get, "TIANJI_RATE_ORDERS", rate_defaults.orders)?,
            coupons: parse_rate(get, "TIANJI_RATE_COUPONS", rate_defaults.coupons)?,
            heartbeats: parse_rate(get, "TIANJI_RATE_HEARTBEATS", rate_defaults.heartbeats)?,
            reads: parse_rate(get, "TIANJI_RATE_READS", rate_defaults.reads)?,
            keys_max: parse_number(get, "TIANJI_RATE_KEYS_MAX", rate_defaults.keys_max, 1_024, 1 << 26)?,
        };
        let tokens = token_rules(get)?;
        let clients = client_limits(get)?;
        let cluster = crate::cluster::ClusterSettings::parse(get, is_mysql(&database_url))?;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Ok(Settings {
            bind: get("TIANJI_BIND").unwrap_or("127.0.0.1:8080").parse().map_err(|e| invalid("TIANJI_BIND", e))?,
            jwt_secret: secret("TIANJI_JWT_SECRET")?,
            payment_secret: secret("TIANJI_PAYMENT_SECRET")?,
            pay_timeout: parse_duration(
                get,
                "TIANJI_PAY_TIMEOUT",
                Duration::from_secs(15 * 60),
                Duration::from_secs(1),
                Duration::from_secs(7 * 86_400),
            )?,
            worker_id: parse_number(get, "TIANJI_WORKER_ID", 0, 0, usize::from(WORKER_ID_MAX))? as u16,
            http_workers: parse_number(get, "TIANJI_HTTP_WORKERS", cores, 1, 256)?,
            actor_threads: parse_number(get, "TIANJI_ACTOR_THREADS", cores, 1, 256)?,
            data_dir,
            database_url,
            redis_url,
            limits,
            tokens,
            clients,
            rate_limits,
            in_flight_max: parse_number(get, "TIANJI_IN_FLIGHT_MAX", IN_FLIGHT_MAX_DEFAULT, 1, 1 << 20)?,
            telemetry: telemetry_settings(get)?,
            events: relay_settings(get)?,
            cluster,
            shutdown_timeout: parse_duration(
                get,
                "TIANJI_SHUTDOWN_TIMEOUT",
                SHUTDOWN_TIMEOUT_DEFAULT,
                Duration::from_secs(1),
                Duration::from_secs(3_600),
            )?,
        })
    }

    pub fn is_mysql(&self) -> bool {
        is_mysql(&self.database_url)
    }

    /// Fills missing secrets from the data dir, generating them there on first use. Only the
    /// embedded default gets here without secrets: with MySQL they are required at load.
    pub fn ensure_secrets(&mut self) -> anyhow::Result<()> {
        if self.jwt_secret.is_some() && self.payment_secret.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.data_dir)?;
        if self.jwt_secret.is_none() {
            self.jwt_secret = Some(stored_secret(&self.data_dir.join("jwt_secret"))?);
        }
        if self.payment_secret.is_none() {
            self.payment_secret = Some(stored_secret(&self.data_dir.join("payment_secret"))?);
        }
        Ok(())
    }

    pub fn jwt_secret(&self) -> &str {
        self.jwt_secret.as_ref().expect("ensure_secrets ran before the secret is used").expose_secret()
    }

    pub fn payment_secret(&self) -> &str {
        self.payment_secret.as_ref().expect("ensure_secrets ran before the secret is used").expose_secret()
    }
}

fn token_rules<'a>(get: impl Fn(&str) -> Option<&'a str> + Copy) -> Result<TokenRules, ConfigError> {
    let defaults = TokenRules::default();
    Ok(TokenRules {
        issuer: get("TIANJI_JWT_ISSUER").map(str::to_owned),
        audience: get("TIANJI_JWT_AUDIENCE").map(str::to_owned),
        lifetime_max: parse_duration(
            get,
            "TIANJI_JWT_LIFETIME_MAX",
            defaults.lifetime_max,
            Duration::from_secs(60),
            Duration::from_secs(366 * 86_400),
        )?,
    })
}

/// The longest accepted stream key, in bytes.
const STREAM_KEY_LEN_MAX: usize = 256;
/// The shortest accepted event retention: long enough for consumers that fell behind to be
/// served from the table again.
const EVENTS_RETENTION_MIN: Duration = Duration::from_secs(3_600);
/// The longest accepted event retention (a year): the table is not an archive.
const EVENTS_RETENTION_MAX: Duration = Duration::from_secs(366 * 86_400);

fn relay_settings<'a>(get: impl Fn(&str) -> Option<&'a str> + Copy) -> Result<RelaySettings, ConfigError> {
    let defaults = RelaySettings::default();
    let stream_key = get("TIANJI_EVENTS_STREAM").unwrap_or(&defaults.stream_key);
    if stream_key.len() > STREAM_KEY_LEN_MAX || !stream_key.bytes().all(|b| b.is_ascii_graphic()) {
        let reason = format!("must be 1 to {STREAM_KEY_LEN_MAX} printable ASCII characters without spaces");
        return Err(invalid("TIANJI_EVENTS_STREAM", reason));
    }
    Ok(RelaySettings {
        stream_key: stream_key.to_owned(),
        stream_entries_max: parse_number(
            get,
            "TIANJI_EVENTS_STREAM_LEN_MAX",
            defaults.stream_entries_max,
            1_000,
            1 << 32,
        )?,
        batch_size_max: parse_number(
            get,
            "TIANJI_EVENTS_BATCH_SIZE_MAX",
            defaults.batch_size_max,
            1,
            crate::persistence::redis::events::EVENTS_PER_ROUND_TRIP_MAX,
        )?,
        idle_poll_interval: parse_duration(
            get,
            "TIANJI_EVENTS_INTERVAL",
            defaults.idle_poll_interval,
            Duration::from_millis(10),
            Duration::from_secs(3_600),
        )?,
        retention: parse_duration(
            get,
            "TIANJI_EVENTS_RETENTION",
            defaults.retention,
            EVENTS_RETENTION_MIN,
            EVENTS_RETENTION_MAX,
        )?,
    })
}

/// `TIANJI_LOG_FORMAT` and `TIANJI_OTLP_ENDPOINT`; the endpoint only in a build that can export.
fn telemetry_settings<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<TelemetrySettings, ConfigError> {
    let log_format = match get("TIANJI_LOG_FORMAT") {
        Some(raw) => LogFormat::parse(raw).map_err(|reason| invalid("TIANJI_LOG_FORMAT", reason))?,
        None => LogFormat::default(),
    };
    let otlp_endpoint = match get("TIANJI_OTLP_ENDPOINT") {
        Some(_) if !cfg!(feature = "otlp") => {
            let reason = "this tianji was built without the `otlp` feature; build it with `--features otlp`";
            return Err(invalid("TIANJI_OTLP_ENDPOINT", reason));
        }
        Some(raw) => Some(parse_otlp_endpoint(raw).map_err(|reason| invalid("TIANJI_OTLP_ENDPOINT", reason))?),
        None => None,
    };
    Ok(TelemetrySettings { log_format, otlp_endpoint })
}

fn client_limits<'a>(get: impl Fn(&str) -> Option<&'a str> + Copy) -> Result<ClientLimits, ConfigError> {
    let defaults = ClientLimits::default();
    let timeout = |name: &str, default: Duration| {
        parse_duration(get, name, default, Duration::from_millis(100), Duration::from_secs(600))
    };
    Ok(ClientLimits {
        body_read_timeout: timeout("TIANJI_BODY_READ_TIMEOUT", defaults.body_read_timeout)?,
        header_read_timeout: timeout("TIANJI_HEADER_READ_TIMEOUT", defaults.header_read_timeout)?,
        keep_alive: parse_duration(
            get,
            "TIANJI_KEEP_ALIVE",
            defaults.keep_alive,
            Duration::ZERO,
            Duration::from_secs(600),
        )?,
        connections_max: parse_number(get, "TIANJI_CONNECTIONS_MAX", defaults.connections_max, 1, 1_000_000)?,
    })
}

fn is_mysql(url: &str) -> bool {
    url.starts_with("mysql://") || url.starts_with("mariadb://")
}

fn read_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let file_error = |reason: String| ConfigError::File { path: path.to_owned(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| file_error(e.to_string()))?;
    table
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                other => return Err(file_error(format!("{key}: expected a string or an integer, got {other}"))),
            };
            Ok((format!("TIANJI_{}", key.to_uppercase()), value))
        })
        .collect()
}

pub(crate) fn parse_number<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
    name: &str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    let Some(raw) = get(name) else {
        return Ok(default);
    };
    let value: usize = raw.parse().map_err(|_| invalid(name, format!("expected a whole number, got {raw:?}")))?;
    if !(min..=max).contains(&value) {
        return Err(invalid(name, format!("must be between {min} and {max}, got {value}")));
    }
    Ok(value)
}

/// `off`, or a rate such as `5/s,10` (see `Rate::parse`).
fn parse_rate<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
    name: &str,
    default: Option<Rate>,
) -> Result<Option<Rate>, ConfigError> {
    match get(name) {
        Some(raw) => Rate::parse(raw).map_err(|reason| invalid(name, reason)),
        None => Ok(default),
    }
}

pub(crate) fn parse_duration<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
    name: &str,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let Some(raw) = get(name) else {
        return Ok(default);
    };
    let value = humantime::parse_duration(raw).map_err(|e| invalid(name, format!("{e} (e.g. 15m, 2s, 5ms)")))?;
    if value < min || value > max {
        return Err(invalid(name, format!("must be between {:?} and {:?}, got {raw}", min, max)));
    }
    Ok(value)
}

/// Reads a secret file, or creates it with 32 random bytes (hex) readable by the owner only.
fn stored_secret(path: &Path) -> anyhow::Result<SecretString> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim().to_owned();
        anyhow::ensure!(existing.len() >= SECRET_LEN_MIN, "secret file {} is too short", path.display());
        return Ok(SecretString::from(existing));
    }
    let bytes: [u8; 32] = rand::random();
    let secret = hex::encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options.open(path)?.write_all(secret.as_bytes())?;
    Ok(SecretString::from(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn error_names(pairs: &[(&str, &str)]) -> String {
        match Settings::from_values(&values(pairs)) {
            Err(ConfigError::Invalid { name, .. }) => name,
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn defaults_use_embedded_sqlite() {
        let settings = Settings::from_values(&BTreeMap::new()).unwrap();
        assert!(settings.database_url.starts_with("sqlite://"));
        assert_eq!(settings.pay_timeout, Duration::from_secs(900));
        assert_eq!(settings.bind.to_string(), "127.0.0.1:8080");
        assert!(settings.jwt_secret.is_none());
    }

    #[test]
    fn bad_values_name_their_setting() {
        assert_eq!(error_names(&[("TIANJI_PAY_TIMEOUT", "soon")]), "TIANJI_PAY_TIMEOUT");
        assert_eq!(error_names(&[("TIANJI_WORKER_ID", "1024")]), "TIANJI_WORKER_ID");
        assert_eq!(error_names(&[("TIANJI_BIND", "here")]), "TIANJI_BIND");
        assert_eq!(error_names(&[("TIANJI_DATABASE_URL", "postgres://x")]), "TIANJI_DATABASE_URL");
        assert_eq!(error_names(&[("TIANJI_JWT_SECRET", "short")]), "TIANJI_JWT_SECRET");
        assert_eq!(error_names(&[("TIANJI_BATCH_SIZE_MAX", "0")]), "TIANJI_BATCH_SIZE_MAX");
        assert_eq!(error_names(&[("TIANJI_COLOUR", "blue")]), "TIANJI_COLOUR");
    }

    #[test]
    fn every_tunable_is_read() {
        let pairs = [
            ("TIANJI_DATABASE_TIMEOUT", "3s"),
            ("TIANJI_USER_KEYS_MAX", "8"),
            ("TIANJI_USER_KEYS_TOTAL_MAX", "1000"),
            ("TIANJI_LEARNING_FLUSH", "5s"),
            ("TIANJI_LEARNING_REDIS_FLUSH", "250ms"),
        ];
        let limits = Settings::from_values(&values(&pairs)).expect("valid settings").limits;
        assert_eq!(limits.database_timeout, Duration::from_secs(3));
        assert_eq!((limits.user_keys_max, limits.user_keys_total_max), (8, 1000));
        assert_eq!(limits.learning_flush, Duration::from_secs(5));
        assert_eq!(limits.learning_redis_flush, Duration::from_millis(250));
        assert_eq!(error_names(&[("TIANJI_LEARNING_FLUSH", "0s")]), "TIANJI_LEARNING_FLUSH");
        assert_eq!(error_names(&[("TIANJI_LEARNING_REDIS_FLUSH", "1ms")]), "TIANJI_LEARNING_REDIS_FLUSH");
    }

    #[test]
    fn shutdown_timeout_has_a_default_and_bounds() {
        let defaults = Settings::from_values(&BTreeMap::new()).unwrap();
        assert_eq!(defaults.shutdown_timeout, SHUTDOWN_TIMEOUT_DEFAULT);
        let settings = Settings::from_values(&values(&[("TIANJI_SHUTDOWN_TIMEOUT", "90s")])).unwrap();
        assert_eq!(settings.shutdown_timeout, Duration::from_secs(90));
        for bad in ["0s", "500ms", "2h", "later"] {
            assert_eq!(error_names(&[("TIANJI_SHUTDOWN_TIMEOUT", bad)]), "TIANJI_SHUTDOWN_TIMEOUT", "{bad}");
        }
    }

    #[test]
    fn rate_limits_have_defaults_and_can_be_turned_off() {
        let defaults = Settings::from_values(&BTreeMap::new()).unwrap();
        assert_eq!(defaults.rate_limits, RateLimitSettings::default());
        assert_eq!(defaults.in_flight_max, IN_FLIGHT_MAX_DEFAULT);
        let pairs = [
            ("TIANJI_RATE_ORDERS", "off"),
            ("TIANJI_RATE_COUPONS", "2/s,4"),
            ("TIANJI_RATE_HEARTBEATS", "0"),
            ("TIANJI_RATE_KEYS_MAX", "2048"),
            ("TIANJI_IN_FLIGHT_MAX", "64"),
        ];
        let settings = Settings::from_values(&values(&pairs)).expect("valid settings");
        assert_eq!(settings.rate_limits.orders, None);
        assert_eq!(settings.rate_limits.coupons, Rate::per_second(2, 4));
        assert_eq!(settings.rate_limits.heartbeats, None);
        assert_eq!((settings.rate_limits.keys_max, settings.in_flight_max), (2048, 64));
        assert_eq!(error_names(&[("TIANJI_RATE_ORDERS", "fast")]), "TIANJI_RATE_ORDERS");
        assert_eq!(error_names(&[("TIANJI_RATE_HEARTBEATS", "1/s,0")]), "TIANJI_RATE_HEARTBEATS");
        assert_eq!(error_names(&[("TIANJI_RATE_KEYS_MAX", "10")]), "TIANJI_RATE_KEYS_MAX");
        assert_eq!(error_names(&[("TIANJI_IN_FLIGHT_MAX", "0")]), "TIANJI_IN_FLIGHT_MAX");
    }

    #[test]
    fn event_relay_settings_are_read_and_checked() {
        let defaults = Settings::from_values(&BTreeMap::new()).unwrap().events;
        assert_eq!(defaults, RelaySettings::default());
        let pairs = [
            ("TIANJI_EVENTS_STREAM", "test:events"),
            ("TIANJI_EVENTS_STREAM_LEN_MAX", "5000"),
            ("TIANJI_EVENTS_BATCH_SIZE_MAX", "64"),
            ("TIANJI_EVENTS_INTERVAL", "250ms"),
            ("TIANJI_EVENTS_RETENTION", "2d"),
        ];
        let events = Settings::from_values(&values(&pairs)).expect("valid settings").events;
        assert_eq!(events.stream_key, "test:events");
        assert_eq!((events.stream_entries_max, events.batch_size_max), (5000, 64));
        assert_eq!(events.idle_poll_interval, Duration::from_millis(250));
        assert_eq!(events.retention, Duration::from_secs(2 * 86_400));
        assert_eq!(error_names(&[("TIANJI_EVENTS_STREAM", "two words")]), "TIANJI_EVENTS_STREAM");
        assert_eq!(error_names(&[("TIANJI_EVENTS_STREAM_LEN_MAX", "10")]), "TIANJI_EVENTS_STREAM_LEN_MAX");
        assert_eq!(error_names(&[("TIANJI_EVENTS_BATCH_SIZE_MAX", "0")]), "TIANJI_EVENTS_BATCH_SIZE_MAX");
        assert_eq!(error_names(&[("TIANJI_EVENTS_INTERVAL", "1ms")]), "TIANJI_EVENTS_INTERVAL");
        assert_eq!(error_names(&[("TIANJI_EVENTS_RETENTION", "1m")]), "TIANJI_EVENTS_RETENTION");
        assert_eq!(error_names(&[("TIANJI_EVENTS_RETENTION", "seven days")]), "TIANJI_EVENTS_RETENTION");
        assert_eq!(error_names(&[("TIANJI_EVENTS_RETENTION", "400d")]), "TIANJI_EVENTS_RETENTION");
    }

    #[test]
    fn log_format_and_otlp_endpoint_are_read() {
        let defaults = Settings::from_values(&BTreeMap::new()).unwrap().telemetry;
        assert_eq!(defaults, TelemetrySettings { log_format: LogFormat::Text, otlp_endpoint: None });
        let json = Settings::from_values(&values(&[("TIANJI_LOG_FORMAT", "json")])).unwrap();
        assert_eq!(json.telemetry.log_format, LogFormat::Json);
        assert_eq!(error_names(&[("TIANJI_LOG_FORMAT", "yaml")]), "TIANJI_LOG_FORMAT");
        let endpoint = [("TIANJI_OTLP_ENDPOINT", "http://127.0.0.1:4318")];
        if cfg!(feature = "otlp") {
            let settings = Settings::from_values(&values(&endpoint)).unwrap();
            assert_eq!(settings.telemetry.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318"));
            assert_eq!(error_names(&[("TIANJI_OTLP_ENDPOINT", "collector:4318")]), "TIANJI_OTLP_ENDPOINT");
        } else {
            let error = Settings::from_values(&values(&endpoint)).unwrap_err().to_string();
            assert!(error.contains("TIANJI_OTLP_ENDPOINT") && error.contains("`otlp` feature"), "{error}");
        }
    }

    #[test]
    fn mysql_requires_secrets() {
        let url = ("TIANJI_DATABASE_URL", "mysql://root@127.0.0.1/tianji");
        assert_eq!(error_names(&[url]), "TIANJI_JWT_SECRET");
        let jwt = ("TIANJI_JWT_SECRET", "j".repeat(32));
        let pairs = [url, (jwt.0, jwt.1.as_str())];
        assert_eq!(error_names(&pairs), "TIANJI_PAYMENT_SECRET");
    }

    #[test]
    fn embedded_secrets_are_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let raw = values(&[("TIANJI_DATA_DIR", dir.path().to_str().unwrap())]);
        let mut first = Settings::from_values(&raw).unwrap();
        first.ensure_secrets().unwrap();
        let mut second = Settings::from_values(&raw).unwrap();
        second.ensure_secrets().unwrap();
        assert_eq!(first.jwt_secret(), second.jwt_secret());
        assert_ne!(first.jwt_secret(), first.payment_secret());
        assert!(format!("{first:?}").find(first.jwt_secret()).is_none(), "secrets never print");
    }
}
