//! Starting and stopping a cluster node: join the membership table (the worker id the
//! snowflake generator then uses), fence the store by this node's leases, give the core its
//! client of other nodes' SKUs (one bounded `Peers`), take a first share of ranges before
//! serving, run the renewal loop and the lease repair pass, and leave on a graceful stop.

use super::node::{ClusterNode, OnLost, OnTaken};
use super::peers::Peers;
use super::remote::{MintNodeToken, RemoteKeys};
use super::{ClusterSettings, Ownership};
use crate::actors::repair::run_repairs;
use crate::actors::Core;
use crate::metrics::RemoteMetrics;
use crate::persistence::sql_cluster::ClusterStore;
use crate::persistence::{mysql, within, DynStore};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// A node that joined the membership table, before its core runs.
pub struct Member {
    store: DynStore,
    worker_id: u16,
    node: Arc<ClusterNode>,
    core: Arc<OnceLock<Weak<Core>>>,
    /// Set once recovery at start is done: until then a take repairs nothing (recovery
    /// settles every lease of the ranges held then; two repairs of one lease at once would
    /// leave a SKU actor's memory apart from the database).
    recovered: Arc<AtomicBool>,
}

/// Connects to MariaDB (migrating), joins the cluster and builds the fenced store.
pub async fn join(database_url: &str, timeout: Duration, settings: &ClusterSettings) -> anyhow::Result<Member> {
    let sql = mysql::connect_cluster(database_url, timeout).await?;
    let cluster_store = ClusterStore::new(sql.pool());
    let node_id = uuid::Uuid::new_v4().simple().to_string();
    let ttl_ms = settings.lease_ttl.as_millis() as i64;
    let worker_id = within(timeout, cluster_store.join(&node_id, &settings.advertise_url, ttl_ms)).await?;
    tracing::info!(node_id, worker_id, address = settings.advertise_url, "joined the cluster");
    let ownership = Arc::new(Ownership::new(node_id, settings.advertise_url.clone(), settings.lease_ttl));
    let core: Arc<OnceLock<Weak<Core>>> = Arc::new(OnceLock::new());
    let on_lost: OnLost = {
        let core = Arc::clone(&core);
        Arc::new(move |ranges| {
            if let Some(core) = core.get().and_then(Weak::upgrade) {
                core.evict_ranges(ranges);
            }
        })
    };
    let recovered = Arc::new(AtomicBool::new(false));
    let on_taken: OnTaken = {
        let (core, recovered) = (Arc::clone(&core), Arc::clone(&recovered));
        Arc::new(move || {
            if !recovered.load(Ordering::Acquire) {
                return;
            }
            let Some(core) = core.get().and_then(Weak::upgrade) else { return };
            tokio::spawn(async move {
                match core.rearm_deadlines().await {
                    Ok(armed) => tracing::debug!(armed, "payment deadlines armed after a take"),
                    Err(error) => tracing::warn!(%error, "payment deadlines not armed after a take"),
                }
                // The leases of the SKUs taken that a settlement never reached.
                if let Err(error) = core.repair_leases(None).await {
                    tracing::warn!(%error, "lease repair after a take failed; the periodic pass retries");
                }
            });
        })
    };
    let node = Arc::new(ClusterNode::new(
        cluster_store,
        Arc::clone(&ownership),
        worker_id,
        settings.clone(),
        timeout,
        on_lost,
        on_taken,
    ));
    let store: DynStore = Arc::new(sql.fenced_by(ownership));
    Ok(Member { store, worker_id, node, core, recovered })
}

impl Member {
    /// The store every commit of this node goes through, fenced by its leases.
    pub fn store(&self) -> DynStore {
        Arc::clone(&self.store)
    }

    /// The worker id the membership table handed out.
    pub fn worker_id(&self) -> u16 {
        self.worker_id
    }

    /// Hands the leases and the client of other nodes' SKUs (calling with credentials from
    /// `mint`) to `core`, takes a first share of ranges and starts the loop. The lease repair
    /// pass starts once recovery is done (`Clustered::recovered`).
    pub async fn start(self, core: &Arc<Core>, mint: MintNodeToken, peers: Peers) -> anyhow::Result<Clustered> {
        let remote = Arc::new(RemoteKeys::new(peers, mint, RemoteMetrics::new(core.metrics())));
        core.join_cluster(Arc::clone(self.node.ownership()), remote);
        let _ = self.core.set(Arc::downgrade(core));
        self.node.settle().await?;
        let (stop, stopped) = watch::channel(false);
        let (expel, expelled) = watch::channel(false);
        let node = Arc::clone(&self.node);
        let running = stopped.clone();
        let task = tokio::spawn(async move {
            if node.run(running).await {
                let _ = expel.send(true);
            }
        });
        Ok(Clustered { node: self.node, stop, stopped, task, repairs: None, expelled, recovered: self.recovered })
    }
}

/// A running cluster node's loop.
pub struct Clustered {
    node: Arc<ClusterNode>,
    stop: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    repairs: Option<tokio::task::JoinHandle<()>>,
    expelled: watch::Receiver<bool>,
    recovered: Arc<AtomicBool>,
}

impl Clustered {
    /// Recovery at start is done: from now on takes repair the leases of the ranges they
    /// bring, and the repair pass runs every lease TTL (its first pass at once, for the ranges
    /// taken while recovery ran).
    pub fn recovered(&mut self, core: &Arc<Core>) {
        self.recovered.store(true, Ordering::Release);
        let every = self.node.ownership().lease_ttl();
        self.repairs = Some(tokio::spawn(run_repairs(Arc::downgrade(core), every, self.stopped.clone())));
    }

    /// Completes when the node learns it was expelled (presumed dead, its member row taken
    /// over): it holds nothing any more and must stop, so whatever runs it starts a fresh
    /// node. Never completes otherwise.
    pub async fn expelled(&self) {
        let mut expelled = self.expelled.clone();
        if expelled.wait_for(|expelled| *expelled).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Stops the loop and leaves: every lease released now, the heartbeat ended.
    pub async fn leave(self) {
        let _ = self.stop.send(true);
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "the cluster loop ended abnormally");
        }
        if let Some(repairs) = self.repairs {
            if let Err(error) = repairs.await {
                tracing::warn!(%error, "the lease repair loop ended abnormally");
            }
        }
        self.node.leave().await;
    }
}
