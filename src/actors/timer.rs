//! Payment deadlines of pending orders, in one compact timer instead of one live actor each.
//!
//! A `DelayQueue` holds `(order id, deadline)` for every order awaiting payment: a few dozen
//! bytes per order, so a million pending orders cost tens of megabytes while their sessions
//! are passivated. When a deadline passes the timer asks the order's session (activated from
//! the database if need be) to time the order out; at most `EXPIRATIONS_IN_FLIGHT_MAX` of those
//! run at once. A timeout that fails (the database is down or slow) is tried again with
//! backoff, up to `RETRY_BACKOFF_MAX` apart, until the order has left PendingPayment: an outage
//! delays closes, it never drops them. Deadlines are reloaded from the database at start, and
//! those that passed while the process was down fire right away.
//!
//! At shutdown the timer is stopped before the write pipeline drains (`DeadlineTimer::stop`):
//! it fires nothing more, and the answer comes once the timeouts it started have finished. A
//! deadline that would have fired later fires at the next start instead.

use super::order::LifecycleError;
use super::Core;
use crate::domain::clock::DynClock;
use crate::domain::OrderId;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::time::{delay_queue, DelayQueue};

/// Timeouts being applied at once; past it the timer waits before firing more.
pub const EXPIRATIONS_IN_FLIGHT_MAX: usize = 256;
/// Commands waiting for the timer task; senders wait (briefly) when it is full.
pub const COMMANDS_QUEUED_MAX: usize = 65_536;
/// The first retry of a failed timeout; each next one waits twice as long, up to the max.
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

enum Command {
    Schedule(OrderId, i64),
    /// A timeout failed for the `n`th time in a row: try again after the backoff.
    Retry(OrderId, u32),
    /// Many deadlines at once (recovery at start): one message instead of one per order.
    ScheduleMany(Vec<(OrderId, i64)>),
    Forget(OrderId),
    /// Fire nothing more; answer once the timeouts in flight have finished.
    Stop(oneshot::Sender<()>),
}

/// The handle actors and placement use to schedule and forget deadlines.
#[derive(Clone)]
pub struct DeadlineTimer {
    commands: mpsc::Sender<Command>,
}

impl DeadlineTimer {
    /// The timer's handle and the receiving end its task runs on (see `run`).
    pub fn channel() -> (DeadlineTimer, TimerTask) {
        let (commands, receiver) = mpsc::channel(COMMANDS_QUEUED_MAX);
        (DeadlineTimer { commands: commands.clone() }, TimerTask { receiver, retries: commands })
    }

    /// Times out `order_id` at `deadline_ms` (milliseconds since the Unix epoch).
    pub async fn schedule(&self, order_id: OrderId, deadline_ms: i64) {
        if self.commands.send(Command::Schedule(order_id, deadline_ms)).await.is_err() {
            tracing::error!(%order_id, "deadline timer stopped; the order closes at the next start");
        }
    }

    /// Times out every `(order, deadline)` of `deadlines`.
    pub async fn schedule_many(&self, deadlines: Vec<(OrderId, i64)>) {
        if self.commands.send(Command::ScheduleMany(deadlines)).await.is_err() {
            tracing::error!("deadline timer stopped; pending orders close at the next start");
        }
    }

    /// The order left PendingPayment: its deadline no longer matters. Never waits: when the
    /// queue is full the deadline stays armed and fires as a no-op (the order is not pending).
    /// A caller may hold a timeout permit, so waiting here could stall the timer.
    pub async fn forget(&self, order_id: OrderId) {
        let _ = self.commands.try_send(Command::Forget(order_id));
    }

    /// Stops the timer: no deadline fires from now on, and this returns once every timeout the
    /// timer started has finished (each is bounded by the database timeout). Commands that
    /// arrive later are ignored; their orders close at the next start.
    pub async fn stop(&self) {
        let (stopped, done) = oneshot::channel();
        if self.commands.send(Command::Stop(stopped)).await.is_ok() {
            let _ = done.await;
        }
    }
}

pub struct TimerTask {
    receiver: mpsc::Receiver<Command>,
    retries: mpsc::Sender<Command>,
}

impl TimerTask {
    /// Runs until every `DeadlineTimer` handle is gone or the core is dropped.
    pub async fn run(mut self, core: Weak<Core>, clock: DynClock) {
        let mut queue: DelayQueue<OrderId> = DelayQueue::new();
        let mut failures: HashMap<OrderId, u32> = HashMap::new();
        let mut keys: HashMap<OrderId, delay_queue::Key> = HashMap::new();
        let in_flight = Arc::new(Semaphore::new(EXPIRATIONS_IN_FLIGHT_MAX));
        loop {
            tokio::select! {
                command = self.receiver.recv() => match command {
                    Some(Command::Schedule(order_id, deadline_ms)) => {
                        arm(&mut queue, &mut keys, order_id, deadline_ms, clock.now_ms());
                    }
                    Some(Command::ScheduleMany(deadlines)) => {
                        let now_ms = clock.now_ms();
                        keys.reserve(deadlines.len());
                        for (order_id, deadline_ms) in deadlines {
                            arm(&mut queue, &mut keys, order_id, deadline_ms, now_ms);
                        }
                    }
                    Some(Command::Retry(order_id, failed)) => {
                        let backoff = RETRY_BACKOFF_MIN.saturating_mul(1 << failed.min(16)).min(RETRY_BACKOFF_MAX);
                        failures.insert(order_id, failed);
                        let now_ms = clock.now_ms();
                        arm(&mut queue, &mut keys, order_id, now_ms + backoff.as_millis() as i64, now_ms);
                    }
                    Some(Command::Forget(order_id)) => {
                        failures.remove(&order_id);
                        if let Some(key) = keys.remove(&order_id) {
                            queue.remove(&key);
                        }
                    }
                    Some(Command::Stop(stopped)) => {
                        let permits = EXPIRATIONS_IN_FLIGHT_MAX as u32;
                        let finished = in_flight.acquire_many(permits).await;
                        tracing::info!(armed = queue.len(), finished = finished.is_ok(), "deadline timer stopped");
                        let _ = stopped.send(());
                        return;
                    }
                    None => return,
                },
                Some(expired) = queue.next(), if !queue.is_empty() => {
                    let order_id = expired.into_inner();
                    keys.remove(&order_id);
                    let Some(core) = core.upgrade() else { return };
                    let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { return };
                    let failed = failures.remove(&order_id).unwrap_or(0);
                    let retries = self.retries.clone();
                    tokio::spawn(async move {
                        let outcome = core.time_out_order(order_id).await;
                        // Released before the retry is queued: the timer loop may be waiting
                        // for a permit, and the queue it drains may be full.
                        drop(permit);
                        match outcome {
                            // Closed now, or it left PendingPayment some other way: done.
                            Ok(_) | Err(LifecycleError::NotFound | LifecycleError::InvalidTransition(_)) => {}
                            // Another node of the cluster owns the order's keys: its timer
                            // closes it (a node that takes ranges arms every deadline again).
                            Err(LifecycleError::NotOwner(_)) => {}
                            Err(error) => {
                                tracing::warn!(%order_id, %error, failed = failed + 1, "timing out an order failed; retrying with backoff");
                                let _ = retries.send(Command::Retry(order_id, failed + 1)).await;
                            }
                        }
                    });
                }
            }
        }
    }
}

fn arm(
    queue: &mut DelayQueue<OrderId>,
    keys: &mut HashMap<OrderId, delay_queue::Key>,
    order_id: OrderId,
    deadline_ms: i64,
    now_ms: i64,
) {
    let delay = Duration::from_millis((deadline_ms - now_ms).max(0) as u64);
    let key = queue.insert(order_id, delay);
    if let Some(previous) = keys.insert(order_id, key) {
        queue.remove(&previous);
    }
}
