//! The Redis Stream order events are published to (`tianji:events` by default).
//!
//! Each event is one stream entry with the fields `event_id`, `kind`, `order_id` (decimal
//! numbers and the kind's stored name) and `body` (the event's JSON). Entry ids are Redis's
//! own (`*`): an event published twice is two entries with identical fields, and consumers
//! deduplicate on `event_id`.
//!
//! Guarantees:
//! - A batch is one pipeline (one round trip) of at most `EVENTS_PER_ROUND_TRIP_MAX` `XADD`s,
//!   bounded by `REDIS_TIMEOUT`. `Ok` means Redis appended every entry of the batch; on any
//!   failure the connection is dropped (the next batch connects again) and nothing is known
//!   of what was appended, so the caller publishes the whole batch again.
//! - The stream is bounded: every `XADD` trims it to about `entries_max` entries (`MAXLEN ~`,
//!   which Redis applies a whole node at a time, so it may hold slightly more).

use super::REDIS_TIMEOUT;
use crate::persistence::outbox::StoredEvent;
use redis::aio::MultiplexedConnection;

/// The most events one pipeline (one round trip) carries.
pub const EVENTS_PER_ROUND_TRIP_MAX: usize = 10_000;

/// Why a batch was not appended; either way nothing is known of what Redis appended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {REDIS_TIMEOUT:?}")]
    Timeout,
}

/// The node's connection to the event stream. Connects lazily: Redis need not be up at start.
pub struct EventStream {
    client: redis::Client,
    connection: Option<MultiplexedConnection>,
    key: String,
    entries_max: usize,
}

impl EventStream {
    /// The stream `key` in the Redis at `url`, trimmed to about `entries_max` entries (not
    /// connected yet).
    pub fn open(url: &str, key: &str, entries_max: usize) -> Result<EventStream, StreamError> {
        assert!(!key.is_empty() && entries_max > 0);
        Ok(EventStream { client: redis::Client::open(url)?, connection: None, key: key.to_owned(), entries_max })
    }

    /// The stream's key, as events are published to it (for logs and for readers).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Appends `events` in one pipeline, in the order given (see the module doc).
    pub async fn append(&mut self, events: &[StoredEvent]) -> Result<(), StreamError> {
        assert!(events.len() <= EVENTS_PER_ROUND_TRIP_MAX, "pipeline of {} events", events.len());
        if events.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for event in events {
            pipeline
                .cmd("XADD")
                .arg(&self.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.entries_max)
                .arg("*")
                .arg("event_id")
                .arg(event.id)
                .arg("kind")
                .arg(event.kind.as_str())
                .arg("order_id")
                .arg(event.order_id.get())
                .arg("body")
                .arg(&event.body)
                .ignore();
        }
        let result = tokio::time::timeout(REDIS_TIMEOUT, async {
            let connection = match &mut self.connection {
                Some(connection) => connection,
                None => self.connection.insert(self.client.get_multiplexed_async_connection().await?),
            };
            pipeline.query_async::<()>(connection).await
        })
        .await;
        let outcome = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(StreamError::Redis(error)),
            Err(_) => Err(StreamError::Timeout),
        };
        if outcome.is_err() {
            self.connection = None;
        }
        outcome
    }
}
