//! Group commit for writes that need no actor state: callers submit items, one task collects
//! them into batches (up to `size_max` items, waiting at most `delay` for more), writes each
//! batch with one call of its flush function, and only then answers every caller of the batch.
//!
//! While one batch is being written the next one fills in the queue, so the rate of durable
//! writes is bounded by rows per commit, not by commits. The queue is bounded: a full queue is
//! refused at once (`SubmitError::Overloaded`), never waited on without limit. Only a caller
//! that must get its item in (a shutdown's last writes) waits for room, up to a deadline it
//! gives (`submit_before`): it holds its item itself meanwhile, so the queue never holds more
//! than `queue_max` items.
//!
//! Each batch is written in a `group_commit` span that follows from the span of every item's
//! submitter and, when recorded (debug), lists the request ids among them, so a line logged
//! while a batch is written names the requests it answers.
//!
//! A measured batcher (`spawn_measured`) counts those refusals and sets its queue-depth gauge
//! each time it closes a batch (once per batch, not per item).

use super::StoreError;
use metrics::{Counter, Gauge};
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout_at, Instant};
use tracing::field::Empty;
use tracing::{Instrument, Level, Span};

/// The bounds of one batcher.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// The most items written in one transaction.
    pub size_max: usize,
    /// How long a batch waits for more items after its first one.
    pub delay: Duration,
    /// The most items waiting for a batch; past it submissions are refused.
    pub queue_max: usize,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error("the write queue is full")]
    Overloaded,
    #[error("the writer has stopped")]
    Closed,
    #[error("the writer stopped before answering; the outcome is unknown")]
    Lost,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SubmitError {
    /// Whether the item certainly never reached a batch (so it was not written).
    pub fn never_queued(&self) -> bool {
        matches!(self, SubmitError::Overloaded | SubmitError::Closed)
    }
}

struct Job<T, R> {
    item: T,
    reply: oneshot::Sender<Result<R, StoreError>>,
    /// The submitter's span (for a request's change, inside its request span); `Span::none()`
    /// when the batch span's level (DEBUG) is not enabled.
    span: Span,
}

/// The submitting side of a group-commit writer.
pub struct Batcher<T, R> {
    queue: mpsc::Sender<Job<T, R>>,
    /// Submissions refused by a full queue.
    rejections: Counter,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Batcher { queue: self.queue.clone(), rejections: self.rejections.clone() }
    }
}

/// What a measured batcher reports.
#[derive(Debug, Clone)]
pub struct QueueMetrics {
    /// Items waiting for the next batch, set as each batch closes.
    pub depth: Gauge,
    /// Submissions refused because the queue was full.
    pub rejections: Counter,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the writer task on the current runtime. `flush` writes one batch in one
    /// transaction and returns one result per item, in order.
    pub fn spawn<F, Fut>(name: &'static str, limits: BatchLimits, flush: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, StoreError>> + Send + 'static,
    {
        Self::spawn_measured(name, limits, QueueMetrics { depth: Gauge::noop(), rejections: Counter::noop() }, flush)
    }

    /// `spawn`, reporting the queue on `metrics`.
    pub fn spawn_measured<F, Fut>(name: &'static str, limits: BatchLimits, metrics: QueueMetrics, flush: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, StoreError>> + Send + 'static,
    {
        assert!(limits.size_max > 0 && limits.queue_max > 0);
        let (queue, receiver) = mpsc::channel(limits.queue_max);
        tokio::spawn(run(name, limits, receiver, metrics.depth, flush));
        Batcher { queue, rejections: metrics.rejections }
    }

    /// Whether the writer task still takes items (it stops only if it panicked).
    pub fn is_running(&self) -> bool {
        !self.queue.is_closed()
    }

    /// Adds `item` to the next batch and waits until that batch is committed.
    pub async fn submit(&self, item: T) -> Result<R, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.queue.try_send(Job { item, reply, span: submitter_span() }).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => {
                self.rejections.increment(1);
                SubmitError::Overloaded
            }
            mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
        })?;
        answer.await.map_err(|_| SubmitError::Lost)?.map_err(SubmitError::Store)
    }

    /// `submit`, but a full queue is waited on until `deadline` (FIFO among the waiters)
    /// instead of refused at once; past it, `Overloaded`. Then it waits for the batch's commit
    /// like `submit` (a flush is bounded by its own function, e.g. the database timeout).
    pub async fn submit_before(&self, item: T, deadline: Instant) -> Result<R, SubmitError> {
        let permit = match timeout_at(deadline, self.queue.reserve()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(SubmitError::Closed),
            Err(_elapsed) => {
                self.rejections.increment(1);
                return Err(SubmitError::Overloaded);
            }
        };
        let (reply, answer) = oneshot::channel();
        permit.send(Job { item, reply, span: submitter_span() });
        answer.await.map_err(|_| SubmitError::Lost)?.map_err(SubmitError::Store)
    }
}

async fn run<T, R, F, Fut>(
    name: &'static str,
    limits: BatchLimits,
    mut receiver: mpsc::Receiver<Job<T, R>>,
    depth: Gauge,
    flush: F,
) where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, StoreError>>,
{
    while let Some(first) = receiver.recv().await {
        let mut jobs = vec![first];
        let deadline = Instant::now() + limits.delay;
        while jobs.len() < limits.size_max {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => match timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(job)) => jobs.push(job),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        let batch_size = jobs.len();
        // What is left queued behind this batch; 0 once the writer catches up.
        depth.set(receiver.len() as f64);
        let span = batch_span(name, &jobs);
        let (items, replies): (Vec<T>, Vec<_>) = jobs.into_iter().map(|job| (job.item, job.reply)).unzip();
        match flush(items).instrument(span.clone()).await {
            Ok(results) => {
                assert_eq!(results.len(), batch_size, "{name}: flush must answer every item");
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(error) => {
                tracing::warn!(parent: &span, batcher = name, batch_size, %error, "group commit failed; nothing acknowledged");
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// The span to keep with a submitted item: the current one when this module's spans are
/// recorded at DEBUG (the batch span's level; it is the only reader), else `Span::none()`, so
/// under the default filter a submit clones no span and moves no reference count. The check is
/// the callsite's cached interest plus the filter's level test.
fn submitter_span() -> Span {
    if tracing::span_enabled!(Level::DEBUG) {
        Span::current()
    } else {
        Span::none()
    }
}

/// The span a batch is written in (at debug): it follows from every submitter's span and names
/// the requests among them (`request_ids`, see `telemetry::request_ids`), so a batch's lines
/// lead to the requests it answers. Nothing is looked up when the span is not recorded.
fn batch_span<T, R>(name: &'static str, jobs: &[Job<T, R>]) -> Span {
    let span = tracing::debug_span!("group_commit", batcher = name, batch_size = jobs.len(), request_ids = Empty);
    if span.is_disabled() {
        return span;
    }
    for job in jobs {
        span.follows_from(&job.span);
    }
    let request_ids = crate::telemetry::request_ids(jobs.iter().map(|job| &job.span));
    if !request_ids.is_empty() {
        span.record("request_ids", request_ids.as_str());
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_submitters_span_is_kept_only_when_the_batch_span_is_recorded() {
        use tracing_subscriber::{filter::LevelFilter, layer::SubscriberExt};
        for (level, kept) in [(LevelFilter::INFO, false), (LevelFilter::DEBUG, true)] {
            tracing::subscriber::with_default(tracing_subscriber::registry().with(level), || {
                let request = tracing::info_span!("request");
                let _entered = request.enter();
                let span = submitter_span();
                assert_eq!(span.id().is_some(), kept, "at {level}");
                if kept {
                    assert_eq!(span.id(), request.id(), "the submitter's own span");
                }
            });
        }
    }

    #[tokio::test]
    async fn batches_concurrent_submissions_and_answers_each() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&flushes);
        let limits = BatchLimits { size_max: 64, delay: Duration::from_millis(20), queue_max: 1_000 };
        let batcher = Batcher::spawn("test", limits, move |items: Vec<u32>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok(items.into_iter().map(|i| i * 2).collect()) }
        });
        let answers = futures::future::join_all((0..200u32).map(|i| {
            let batcher = batcher.clone();
            async move { batcher.submit(i).await.unwrap() }
        }))
        .await;
        assert_eq!(answers, (0..200u32).map(|i| i * 2).collect::<Vec<_>>());
        let flushes = flushes.load(Ordering::SeqCst);
        assert!((4..200).contains(&flushes), "200 items in batches of at most 64 took {flushes} flushes");
    }

    #[tokio::test]
    async fn a_failed_flush_fails_every_caller_of_the_batch() {
        let limits = BatchLimits { size_max: 8, delay: Duration::from_millis(5), queue_max: 16 };
        let batcher = Batcher::spawn("failing", limits, |_items: Vec<u32>| async {
            Err::<Vec<u32>, _>(StoreError::Unavailable("down".into()))
        });
        let results = futures::future::join_all((0..8u32).map(|i| batcher.submit(i))).await;
        assert!(results.iter().all(|r| matches!(r, Err(SubmitError::Store(StoreError::Unavailable(_))))));
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_not_waited_on() {
        let (batcher, release, earlier) = full_queue().await;
        assert!(matches!(batcher.submit(3).await, Err(SubmitError::Overloaded)));
        release.send(true).unwrap();
        for (expected, job) in (1..).zip(earlier) {
            assert_eq!(job.await.unwrap().unwrap(), expected);
        }
    }

    /// A submission running in its own task.
    type Submitted = tokio::task::JoinHandle<Result<u32, SubmitError>>;

    /// A batcher whose writer holds item 1 inside its flush (until `release`) with item 2
    /// queued in the one queue slot: the queue is full.
    async fn full_queue() -> (Batcher<u32, u32>, tokio::sync::watch::Sender<bool>, Vec<Submitted>) {
        let limits = BatchLimits { size_max: 1, delay: Duration::ZERO, queue_max: 1 };
        let (entered_tx, entered) = tokio::sync::watch::channel(false);
        let (release, gate) = tokio::sync::watch::channel(false);
        let batcher = Batcher::spawn("slow", limits, move |items: Vec<u32>| {
            let mut gate = gate.clone();
            let _ = entered_tx.send(true);
            async move {
                gate.wait_for(|open| *open).await.expect("gate sender alive");
                Ok(items)
            }
        });
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(1).await }
        });
        entered.clone().wait_for(|in_flush| *in_flush).await.unwrap();
        let second = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(2).await }
        });
        // Item 2 takes the slot once its task runs; a refused third submission shows it has.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(batcher.queue.try_reserve(), Err(mpsc::error::TrySendError::Full(()))) {
            assert!(Instant::now() < deadline, "item 2 never reached the queue");
            tokio::task::yield_now().await;
        }
        (batcher, release, vec![first, second])
    }

    #[tokio::test]
    async fn a_waiting_submission_gets_in_once_the_full_queue_has_room() {
        let (batcher, release, earlier) = full_queue().await;
        assert!(matches!(batcher.submit(3).await, Err(SubmitError::Overloaded)), "submit never waits");
        let waiting = batcher.submit_before(3, Instant::now() + Duration::from_secs(30));
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending(), "a full queue is waited on");
        assert_eq!(batcher.queue.capacity(), 0, "the waiting item is not in the queue");
        release.send(true).unwrap();
        assert_eq!(waiting.await.unwrap(), 3);
        for (expected, job) in (1..).zip(earlier) {
            assert_eq!(job.await.unwrap().unwrap(), expected);
        }
    }

    #[tokio::test]
    async fn a_waiting_submission_is_refused_at_its_deadline() {
        let (batcher, release, _earlier) = full_queue().await;
        let started = Instant::now();
        let bound = Duration::from_millis(50);
        assert!(matches!(batcher.submit_before(3, started + bound).await, Err(SubmitError::Overloaded)));
        assert!(started.elapsed() >= bound, "refused only at the deadline: {:?}", started.elapsed());
        release.send(true).unwrap();
    }
}
