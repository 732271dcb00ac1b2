//! Virtual actors: one live actor per key, activated on first use and forgotten when it stops.
//!
//! Activation is single-flight: concurrent first requests for a key wait on one activation, so
//! two actors never own the same key in one process. Every caller of a key shares the same
//! `Addr`, which makes actix's bounded mailbox refuse (`Full`) instead of growing by one
//! message per sender.
//!
//! Each registry counts its kind's activations, passivations (actors that stopped) and the
//! messages its actors' full mailboxes refused (`Registry::ask`), on handles made once.

use super::traced::Traced;
use super::{Refusal, Reply};
use crate::metrics::{ActorKind, ActorMetrics, Metrics};
use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};
use dashmap::DashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// A shared handle on a live actor.
pub struct ActorRef<A: Actor> {
    cell: Arc<OnceCell<Addr<A>>>,
}

impl<A: Actor> Clone for ActorRef<A> {
    fn clone(&self) -> Self {
        ActorRef { cell: Arc::clone(&self.cell) }
    }
}

impl<A: Actor> ActorRef<A> {
    pub fn addr(&self) -> &Addr<A> {
        self.cell.get().expect("an ActorRef is only handed out once its actor started")
    }
}

pub struct Registry<K, A: Actor> {
    actors: DashMap<K, Arc<OnceCell<Addr<A>>>>,
    metrics: ActorMetrics,
}

impl<K: Eq + Hash + Copy, A: Actor> Registry<K, A> {
    /// An empty registry of actors of `kind`, counting into `metrics`.
    pub fn new(kind: ActorKind, metrics: &Metrics) -> Self {
        Registry { actors: DashMap::new(), metrics: ActorMetrics::new(metrics, kind) }
    }

    /// `super::ask` to an actor of this registry's kind, counting a full mailbox's refusal.
    pub async fn ask<M, T, E>(&self, addr: &Addr<A>, build: impl FnOnce(Reply<T, E>) -> M) -> Result<T, E>
    where
        A: Handler<Traced<M>>,
        A::Context: ToEnvelope<A, Traced<M>>,
        M: Message<Result = ()> + Send + 'static,
        E: From<Refusal>,
    {
        super::ask_counted(addr, &self.metrics.mailbox_rejections, build).await
    }

    /// The live actor of `key`, activating it with `activate` if there is none.
    pub async fn get_or_activate<F, Fut, E>(&self, key: K, activate: F) -> Result<ActorRef<A>, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Addr<A>, E>>,
    {
        let activate = || async {
            let addr = activate().await?;
            self.metrics.activations.increment(1);
            Ok(addr)
        };
        // Two rounds at most: the second only if the actor found stopped during the first.
        for _ in 0..2 {
            let cell = Arc::clone(self.actors.entry(key).or_default().value());
            match cell.get_or_try_init(&activate).await {
                Ok(addr) if addr.connected() => return Ok(ActorRef { cell: Arc::clone(&cell) }),
                Ok(_) => {
                    self.actors.remove_if(&key, |_, held| Arc::ptr_eq(held, &cell));
                }
                Err(error) => {
                    // Do not keep entries for keys that could not be activated (unknown ids).
                    self.actors.remove_if(&key, |_, held| Arc::ptr_eq(held, &cell) && held.get().is_none());
                    return Err(error);
                }
            }
        }
        let cell = Arc::clone(self.actors.entry(key).or_default().value());
        cell.get_or_try_init(activate).await?;
        Ok(ActorRef { cell })
    }

    /// The live actor of `key`, if one is running.
    pub fn get(&self, key: K) -> Option<ActorRef<A>> {
        let cell = Arc::clone(self.actors.get(&key)?.value());
        cell.get().filter(|addr| addr.connected())?;
        Some(ActorRef { cell })
    }

    /// Whether an actor of `key` is being activated right now (its state is being read).
    pub fn is_activating(&self, key: K) -> bool {
        self.actors.get(&key).is_some_and(|cell| cell.get().is_none())
    }

    /// Called by an actor as it stops: drops its entry, unless a newer actor took the key.
    pub fn forget(&self, key: K, addr: &Addr<A>) {
        self.metrics.passivations.increment(1);
        self.actors.remove_if(&key, |_, held| held.get().is_none_or(|a| a == addr));
    }

    /// Drops the entries of the keys `doomed` picks: no new message reaches their actors,
    /// which stop when idle. Returns how many were dropped.
    pub fn evict(&self, mut doomed: impl FnMut(&K) -> bool) -> usize {
        let mut evicted = 0;
        self.actors.retain(|key, _| {
            let drop = doomed(key);
            evicted += usize::from(drop);
            !drop
        });
        evicted
    }

    pub fn len(&self) -> usize {
        self.actors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actors.is_empty()
    }
}
