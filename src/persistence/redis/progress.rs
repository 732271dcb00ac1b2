//! Learning progress in Redis: the short-tick copy of the write-behind, read back at start.
//!
//! One hash per user, `learning:progress:{user_id}`, one field per course, the value the
//! merged progress encoded as `section:position:status:updated_at_ms` (`3:120:learning:
//! 1718000000000`). Redis is a copy, never the source of truth: the database joins whatever
//! it is given into rows that exist (`Progress::join`), so a value older than the database,
//! written twice, or for a course the user no longer owns changes nothing.
//!
//! Guarantees:
//! - A write is one pipeline (one round trip) of at most `USERS_PER_ROUND_TRIP_MAX` users,
//!   each an `HSET` of all the user's pending courses and an `EXPIRE` of `PROGRESS_TTL_S`, so
//!   Redis holds a user's progress for a day after the last heartbeat and no longer.
//! - Every round trip is bounded by `REDIS_TIMEOUT`; a failure drops the connection (the next
//!   write connects again) and is returned, never retried here: the caller keeps what was not
//!   written.
//! - Reading back (`scan_page`) never trusts Redis: a key, field or value that does not parse
//!   strictly (`decode`), or whose progress is out of bounds, is logged and skipped.

use super::REDIS_TIMEOUT;
use crate::domain::learning::{LessonStatus, Progress};
use crate::domain::{SkuId, UserId};
use crate::persistence::ProgressWrite;
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::sync::Mutex;

/// The prefix of every user's progress hash.
pub const PROGRESS_KEY_PREFIX: &str = "learning:progress:";
/// How long a user's hash outlives the user's last write: a day, far past the longest database
/// flush (`TIANJI_LEARNING_FLUSH` is at most an hour), so Redis memory is bounded by the users
/// of the last day.
pub const PROGRESS_TTL_S: i64 = 86_400;
/// The most users one write pipeline (one round trip) carries.
pub const USERS_PER_ROUND_TRIP_MAX: usize = 500;
/// The `COUNT` hint of each `SCAN` at start: about this many keys per page.
pub const KEYS_PER_SCAN: usize = 1_000;

/// A user's pending progress, one entry per course.
pub type UserProgress = (UserId, Vec<(SkuId, Progress)>);

/// The hash of a user's progress.
pub fn progress_key(user_id: UserId) -> String {
    format!("{PROGRESS_KEY_PREFIX}{user_id}")
}

/// `section:position:status:updated_at_ms`, numbers in decimal, the status by its stored name.
pub fn encode(progress: &Progress) -> String {
    assert!(progress.is_valid(), "progress out of bounds: {progress:?}");
    let Progress { latest_section_id, position_sec, status, updated_at_ms } = progress;
    format!("{latest_section_id}:{position_sec}:{}:{updated_at_ms}", status.name())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("expected section:position:status:updated_at_ms, got {0:?}")]
    Malformed(String),
    #[error("progress out of bounds: {0:?}")]
    OutOfBounds(Progress),
}

/// Reads back exactly what `encode` writes: four fields, canonical decimal numbers (no sign on
/// a positive number, no leading zero), a known status name, and progress within bounds.
pub fn decode(value: &str) -> Result<Progress, DecodeError> {
    let malformed = || DecodeError::Malformed(value.chars().take(64).collect());
    let fields: Vec<&str> = value.split(':').collect();
    let [section, position, status, updated_at] = fields[..] else { return Err(malformed()) };
    let progress = Progress {
        latest_section_id: canonical_number(section).ok_or_else(malformed)?,
        position_sec: canonical_number(position).ok_or_else(malformed)?,
        status: LessonStatus::parse(status).ok_or_else(malformed)?,
        updated_at_ms: canonical_number(updated_at).ok_or_else(malformed)?,
    };
    if !progress.is_valid() {
        return Err(DecodeError::OutOfBounds(progress));
    }
    debug_assert_eq!(encode(&progress), value, "decode reads only what encode writes");
    Ok(progress)
}

/// A decimal `i64` written the one way `i64::to_string` writes it.
fn canonical_number(text: &str) -> Option<i64> {
    let number: i64 = text.parse().ok()?;
    (number.to_string() == text).then_some(number)
}

/// A positive id written canonically (a key suffix or a field name).
fn canonical_id(bytes: &[u8]) -> Option<i64> {
    let number = canonical_number(std::str::from_utf8(bytes).ok()?)?;
    (number > 0).then_some(number)
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {REDIS_TIMEOUT:?}")]
    Timeout,
}

/// What one page of the scan at start found.
#[derive(Debug, Default)]
pub struct ScanPage {
    /// Where the next page starts; 0 when the scan is complete.
    pub next_cursor: u64,
    pub writes: Vec<ProgressWrite>,
    /// Keys, fields or values that did not parse (logged).
    pub skipped: usize,
    /// Round trips this page took.
    pub round_trips: u64,
}

/// The node's connection to Redis for learning progress. Connects lazily: Redis need not be
/// up at start.
pub struct ProgressMirror {
    client: redis::Client,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl ProgressMirror {
    /// A mirror to the Redis at `url` (not connected yet).
    pub fn open(url: &str) -> Result<ProgressMirror, MirrorError> {
        Ok(ProgressMirror { client: redis::Client::open(url)?, connection: Mutex::new(None) })
    }

    /// Writes `users` in one pipeline: per user an `HSET` of every course given and an
    /// `EXPIRE`. On failure the connection is dropped and nothing is known of what was written.
    pub async fn write(&self, users: &[UserProgress]) -> Result<(), MirrorError> {
        assert!(users.len() <= USERS_PER_ROUND_TRIP_MAX, "pipeline of {} users", users.len());
        let mut pipeline = redis::pipe();
        for (user_id, courses) in users {
            assert!(!courses.is_empty(), "user {user_id} written with no course");
            let key = progress_key(*user_id);
            let fields: Vec<(i64, String)> =
                courses.iter().map(|(course_id, progress)| (course_id.get(), encode(progress))).collect();
            pipeline.hset_multiple(&key, &fields).ignore();
            pipeline.expire(&key, PROGRESS_TTL_S).ignore();
        }
        self.run(|mut redis| async move { pipeline.query_async::<()>(&mut redis).await }).await
    }

    /// One page of the progress Redis holds, from `cursor` (0 to begin): one `SCAN` for keys
    /// (hashes only) and one pipeline of `HGETALL`, two round trips.
    pub async fn scan_page(&self, cursor: u64) -> Result<ScanPage, MirrorError> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor).arg("MATCH").arg(format!("{PROGRESS_KEY_PREFIX}*"));
        scan.arg("COUNT").arg(KEYS_PER_SCAN).arg("TYPE").arg("hash");
        let (next_cursor, keys): (u64, Vec<Vec<u8>>) =
            self.run(|mut redis| async move { scan.query_async(&mut redis).await }).await?;
        let mut page = ScanPage { next_cursor, round_trips: 1, ..ScanPage::default() };
        if keys.is_empty() {
            return Ok(page);
        }
        let mut pipeline = redis::pipe();
        for key in &keys {
            pipeline.hgetall(key);
        }
        let hashes: Vec<HashMap<Vec<u8>, Vec<u8>>> =
            self.run(|mut redis| async move { pipeline.query_async(&mut redis).await }).await?;
        page.round_trips += 1;
        for (key, hash) in keys.iter().zip(hashes) {
            read_hash(key, hash, &mut page);
        }
        Ok(page)
    }

    /// Runs one round trip on the node's connection (connecting first if there is none),
    /// bounded by `REDIS_TIMEOUT`; a failure drops the connection.
    async fn run<T, F, Fut>(&self, round_trip: F) -> Result<T, MirrorError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = tokio::time::timeout(REDIS_TIMEOUT, async {
            let redis = match self.held() {
                Some(redis) => redis,
                None => {
                    let redis = self.client.get_multiplexed_async_connection().await?;
                    *self.slot() = Some(redis.clone());
                    redis
                }
            };
            round_trip(redis).await
        })
        .await;
        let result = match result {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => Err(MirrorError::Redis(error)),
            Err(_) => Err(MirrorError::Timeout),
        };
        *self.slot() = None;
        result
    }

    fn held(&self) -> Option<MultiplexedConnection> {
        self.slot().clone()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        // The slot holds a plain value; a panic elsewhere cannot leave it half-updated.
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Adds the progress one user's hash holds to `page`, skipping (and logging) what does not parse.
fn read_hash(key: &[u8], hash: HashMap<Vec<u8>, Vec<u8>>, page: &mut ScanPage) {
    let user_id = key.strip_prefix(PROGRESS_KEY_PREFIX.as_bytes()).and_then(canonical_id).map(UserId::new);
    let Some(user_id) = user_id else {
        page.skipped += 1;
        tracing::warn!(key = %String::from_utf8_lossy(key), "learning progress key skipped: not a user id");
        return;
    };
    for (field, value) in hash {
        let course_id = canonical_id(&field).map(SkuId::new);
        let progress = std::str::from_utf8(&value)
            .map_err(|_| DecodeError::Malformed(String::from_utf8_lossy(&value).into_owned()))
            .and_then(decode);
        match (course_id, progress) {
            (Some(course_id), Ok(progress)) => page.writes.push(ProgressWrite { user_id, course_id, progress }),
            (course_id, progress) => {
                page.skipped += 1;
                let field = String::from_utf8_lossy(&field);
                tracing::warn!(%user_id, %field, ?course_id, error = ?progress.err(), "learning progress entry skipped: corrupt");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::learning::{POSITION_SEC_MAX, SECTION_ID_MAX};
    use proptest::prelude::*;
    use LessonStatus::*;

    fn progress(latest_section_id: i64, position_sec: i64, status: LessonStatus, updated_at_ms: i64) -> Progress {
        Progress { latest_section_id, position_sec, status, updated_at_ms }
    }

    #[test]
    fn encode_table() {
        let table = [
            (progress(3, 120, Learning, 1_718_000_000_000), "3:120:learning:1718000000000"),
            (Progress::opened(5), "0:0:not_started:5"),
            (progress(SECTION_ID_MAX, POSITION_SEC_MAX, Finished, -1), "1000000:86400:finished:-1"),
            (progress(1, 0, Learning, i64::MIN), "1:0:learning:-9223372036854775808"),
        ];
        for (progress, encoded) in table {
            assert_eq!(encode(&progress), encoded);
            assert_eq!(decode(encoded), Ok(progress), "{encoded}");
        }
    }

    #[test]
    fn decode_refuses_anything_encode_does_not_write() {
        let malformed = [
            "",
            "3:120:learning",
            "3:120:learning:1:2",
            "3:120:Learning:1",
            "3:120:started:1",
            "3:120::1",
            "+3:120:learning:1",
            "03:120:learning:1",
            "3: 120:learning:1",
            "3:120:learning:1 ",
            "3:-0:learning:1",
            "3:1.5:learning:1",
            "3:120:learning:9223372036854775808",
            "x:120:learning:1",
            "3;120;learning;1",
        ];
        for value in malformed {
            assert!(matches!(decode(value), Err(DecodeError::Malformed(_))), "{value:?} decoded");
        }
        let out_of_bounds = [
            ("-1:0:learning:1", progress(-1, 0, Learning, 1)),
            ("1:86401:learning:1", progress(1, POSITION_SEC_MAX + 1, Learning, 1)),
            ("1000001:0:finished:1", progress(SECTION_ID_MAX + 1, 0, Finished, 1)),
        ];
        for (value, read) in out_of_bounds {
            assert_eq!(decode(value), Err(DecodeError::OutOfBounds(read)), "{value:?}");
        }
    }

    #[test]
    fn a_hash_is_read_back_skipping_what_is_corrupt() {
        let value = |p: Progress| encode(&p).into_bytes();
        let hash: HashMap<Vec<u8>, Vec<u8>> = [
            (b"10".to_vec(), value(progress(2, 30, Learning, 7))),
            (b"11".to_vec(), b"2:30:learning".to_vec()),
            (b"0".to_vec(), value(progress(2, 30, Learning, 7))),
            (b"012".to_vec(), value(progress(2, 30, Learning, 7))),
            (b"13".to_vec(), vec![0xff, 0xfe]),
        ]
        .into_iter()
        .collect();
        let mut page = ScanPage::default();
        read_hash(b"learning:progress:42", hash, &mut page);
        let expected = ProgressWrite {
            user_id: UserId::new(42),
            course_id: SkuId::new(10),
            progress: progress(2, 30, Learning, 7),
        };
        assert_eq!(page.writes, vec![expected]);
        assert_eq!(page.skipped, 4);

        for key in ["learning:progress:0", "learning:progress:-4", "learning:progress:x", "learning:progress:"] {
            let mut page = ScanPage::default();
            let hash = [(b"10".to_vec(), value(progress(2, 30, Learning, 7)))].into_iter().collect();
            read_hash(key.as_bytes(), hash, &mut page);
            assert!(page.writes.is_empty(), "{key}");
            assert_eq!(page.skipped, 1, "{key}");
        }
    }

    #[test]
    fn keys_are_per_user() {
        assert_eq!(progress_key(UserId::new(42)), "learning:progress:42");
    }

    fn progress_strategy() -> impl Strategy<Value = Progress> {
        let status = prop::sample::select(LessonStatus::ALL.to_vec());
        (0..=SECTION_ID_MAX, 0..=POSITION_SEC_MAX, status, any::<i64>()).prop_map(|(s, p, st, t)| progress(s, p, st, t))
    }

    proptest! {
        #[test]
        fn decode_reads_back_what_encode_writes(progress in progress_strategy()) {
            prop_assert_eq!(decode(&encode(&progress)), Ok(progress));
        }

        #[test]
        fn decode_never_panics(value in "[-+0-9a-z_:]{0,40}") {
            if let Ok(progress) = decode(&value) {
                prop_assert!(progress.is_valid());
                prop_assert_eq!(encode(&progress), value);
            }
        }
    }
}
