//! One hot SKU, in process: how fast the inventory actor takes reservations until sold out
//! (group commit to MariaDB, then the in-memory store), and how fast it refuses once sold out.
//!
//!     cargo run --release --example hot_sku -- --mysql-url mysql://root@127.0.0.1:3306
//!
//! A fresh database is created for the run and dropped after it. Every phase checks its end
//! state: successes equal the units, nothing oversold, one reservation row per success.

use clap::Parser;
use sqlx::migrate::MigrateDatabase;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tianji::actors::inventory::SkuError;
use tianji::actors::{ActorLimits, Core};
use tianji::domain::ids::wall_clock_ms;
use tianji::domain::inventory::{InventoryError, Quantity};
use tianji::domain::{Cents, OrderId, SkuId};
use tianji::persistence::redis::Snapshots;
use tianji::persistence::{DynStore, NewSku};

#[derive(Parser)]
struct Args {
    /// MariaDB server (without a database name); a fresh database is made on it.
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    mysql_url: String,
    /// Units of the hot SKU.
    #[arg(long, default_value_t = 100_000)]
    units: i64,
    /// Concurrent buyers.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Attempts against the sold-out SKU.
    #[arg(long, default_value_t = 2_000_000)]
    rejections: u64,
    /// Largest group commit.
    #[arg(long, default_value_t = 1_024)]
    batch_size_max: usize,
}

struct Phase {
    name: &'static str,
    ok: i64,
    refused: u64,
    elapsed: Duration,
}

impl Phase {
    fn print(&self) {
        let per_second = (self.ok as f64 + self.refused as f64) / self.elapsed.as_secs_f64();
        println!(
            "{:<34} {:>10} ok {:>10} refused {:>8.2} s {:>12.0} /s",
            self.name,
            self.ok,
            self.refused,
            self.elapsed.as_secs_f64(),
            per_second
        );
    }
}

async fn start(store: DynStore, units: i64, batch_size_max: usize) -> (Arc<Core>, SkuId) {
    let limits = ActorLimits { batch_size_max, ..ActorLimits::default() };
    let core = Core::start(store, Arc::new(Snapshots::in_process()), limits, 1, Duration::from_secs(900), 1);
    let sku_id = SkuId::new(core.ids.next_id());
    let sku = NewSku { sku_id, name: "hot".into(), price_cents: Cents::new(100), total: units, created_at_ms: 0 };
    core.store.create_sku(&sku).await.expect("create sku");
    (core, sku_id)
}

/// Buyers reserve one unit each, with a new order id, until the SKU says it is sold out.
async fn sell_out(name: &'static str, core: &Arc<Core>, sku_id: SkuId, concurrency: usize) -> Phase {
    let sold = Arc::new(AtomicI64::new(0));
    let expires_at_ms = wall_clock_ms() as i64 + 3_600_000;
    let one = Quantity::parse(1, 1).unwrap();
    let started = Instant::now();
    let buyers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (core, sold) = (Arc::clone(core), Arc::clone(&sold));
            tokio::spawn(async move {
                loop {
                    let order_id = OrderId::new(core.ids.next_id());
                    match core.reserve(sku_id, order_id, one, expires_at_ms).await {
                        Ok(_) => {
                            sold.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(SkuError::Inventory(InventoryError::InsufficientStock { .. })) => break,
                        Err(SkuError::Overloaded) => tokio::task::yield_now().await,
                        Err(other) => panic!("{name}: {other}"),
                    }
                }
            })
        })
        .collect();
    for buyer in buyers {
        buyer.await.expect("buyer");
    }
    Phase { name, ok: sold.load(Ordering::Relaxed), refused: 0, elapsed: started.elapsed() }
}

async fn refuse(name: &'static str, core: &Arc<Core>, sku_id: SkuId, concurrency: usize, attempts: u64) -> Phase {
    let refused = Arc::new(AtomicU64::new(0));
    let one = Quantity::parse(1, 1).unwrap();
    let per_buyer = attempts / concurrency as u64;
    let started = Instant::now();
    let buyers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (core, refused) = (Arc::clone(core), Arc::clone(&refused));
            tokio::spawn(async move {
                for _ in 0..per_buyer {
                    match core.reserve(sku_id, OrderId::new(core.ids.next_id()), one, 0).await {
                        Err(SkuError::Inventory(InventoryError::InsufficientStock { .. })) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(SkuError::Overloaded) => tokio::task::yield_now().await,
                        other => panic!("{name}: a sold-out SKU answered {other:?}"),
                    }
                }
            })
        })
        .collect();
    for buyer in buyers {
        buyer.await.expect("buyer");
    }
    Phase { name, ok: 0, refused: refused.load(Ordering::Relaxed), elapsed: started.elapsed() }
}

async fn verify(name: &str, core: &Core, sku_id: SkuId, units: i64, phase: &Phase) -> i64 {
    let state = core.store.load_sku(sku_id).await.expect("load").expect("sku");
    let c = state.counters;
    assert_eq!(phase.ok, units, "{name}: successes must equal the units");
    assert_eq!((c.total, c.available, c.reserved, c.sold), (units, 0, units, 0), "{name}: stored counters");
    assert_eq!(state.reservations.len() as i64, units, "{name}: one reservation row per success");
    state.version
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    actix::System::new().block_on(async move {
        println!(
            "one hot SKU, {} units, {} concurrent buyers, batches of at most {}",
            args.units, args.concurrency, args.batch_size_max
        );
        sqlx::any::install_default_drivers();
        let database = format!("{}/tianji_bench_{}", args.mysql_url, hex::encode(rand::random::<[u8; 4]>()));
        sqlx::Any::create_database(&database).await?;
        let outcome = async {
            let store = tianji::persistence::connect(&database, true).await?;
            let (core, sku_id) = start(store, args.units, args.batch_size_max).await;
            let durable = sell_out("reserve, group commit to MariaDB", &core, sku_id, args.concurrency).await;
            durable.print();
            let commits = verify("mariadb", &core, sku_id, args.units, &durable).await;
            println!("{:<34} {commits} commits, {:.0} reservations per commit", "", args.units as f64 / commits as f64);
            anyhow::Ok(())
        }
        .await;
        sqlx::Any::drop_database(&database).await?;
        outcome?;

        let store = tianji::persistence::connect("memory:", false).await?;
        let (core, sku_id) = start(store, args.units, args.batch_size_max).await;
        let memory = sell_out("reserve, in-memory store", &core, sku_id, args.concurrency).await;
        memory.print();
        verify("memory", &core, sku_id, args.units, &memory).await;
        let rejections = refuse("refuse, sold out", &core, sku_id, args.concurrency, args.rejections).await;
        rejections.print();
        Ok(())
    })
}
