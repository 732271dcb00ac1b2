//! Idempotent placement: one order per `(user, Idempotency-Key)`, also under concurrent
//! retries.
//!
//! Three layers, cheapest first. Concurrent requests with the same key in this process queue
//! behind one leader and take its result. A leader first looks the key up in the database, so
//! a retry of an order placed earlier (or on another node) returns that order. Last, the
//! database's unique key `(user_id, idempotency_key)` decides any race that slips past both;
//! the loser gives its reservations back and answers with the winner. The same key with a
//! different body is `idempotency_key_reused`.

use crate::actors::order::{replay, PlaceError, Placed};
use crate::actors::Core;
use crate::domain::{IdempotencyKey, PlaceOrder, UserId};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use std::sync::Arc;
use tokio::sync::watch;

type Outcome = Option<Result<Placed, PlaceError>>;

/// Placements in flight in this process, by user and key.
#[derive(Default)]
pub struct IdempotencyGate {
    in_flight: DashMap<(UserId, String), watch::Receiver<Outcome>>,
}

/// Removes the leader's entry when it finishes or is dropped (a cancelled request), waking the
/// followers either way.
struct Lead<'a> {
    gate: &'a IdempotencyGate,
    slot: (UserId, String),
    outcome: watch::Sender<Outcome>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.gate.in_flight.remove(&self.slot);
    }
}

enum Turn<'a> {
    Lead(Lead<'a>),
    Follow(watch::Receiver<Outcome>),
}

impl IdempotencyGate {
    fn take_turn(&self, slot: (UserId, String)) -> Turn<'_> {
        match self.in_flight.entry(slot.clone()) {
            Entry::Occupied(entry) => Turn::Follow(entry.get().clone()),
            Entry::Vacant(entry) => {
                let (outcome, receiver) = watch::channel(None);
                entry.insert(receiver);
                Turn::Lead(Lead { gate: self, slot, outcome })
            }
        }
    }

    /// Places `request` at most once per `(user_id, key)`.
    pub async fn place_once(
        &self,
        core: &Arc<Core>,
        user_id: UserId,
        key: IdempotencyKey,
        request: PlaceOrder,
    ) -> Result<Placed, PlaceError> {
        let fingerprint = request.fingerprint();
        let lead = loop {
            match self.take_turn((user_id, key.as_str().to_owned())) {
                Turn::Lead(lead) => break lead,
                Turn::Follow(mut receiver) => {
                    // The sender goes away with the leader; either way, look again.
                    let _ = receiver.wait_for(|outcome| outcome.is_some()).await;
                    let finished = receiver.borrow().clone();
                    if let Some(Ok(placed)) = finished {
                        return replay(placed.order().clone(), &fingerprint);
                    }
                    // The leader failed (or was cancelled): its failure is not this request's;
                    // take a turn and try for ourselves.
                }
            }
        };
        let result = match core.store.find_order_by_key(user_id, key.as_str()).await {
            Ok(Some(existing)) => replay(existing, &fingerprint),
            Ok(None) => core.place_order(user_id, key, request).await,
            Err(error) => Err(error.into()),
        };
        let _ = lead.outcome.send(Some(result.clone()));
        result
    }
}
