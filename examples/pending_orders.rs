//! A million orders awaiting payment: what they cost in memory once their sessions are
//! passivated (deadline timer plus the SKU actors' leases), how long a restart over them takes
//! (recovery arms every deadline, SKU actors reload every lease), and how many payment
//! callbacks per second the order sessions apply.
//!
//!     cargo run --release --example pending_orders -- --orders 1000000
//!
//! Runs on a fresh MariaDB database that it drops at the end.

use clap::Parser;
use sqlx::migrate::MigrateDatabase;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tianji::actors::{ActorLimits, Core};
use tianji::domain::{Cents, IdempotencyKey, OrderId, PlaceOrder, SkuId, UserId};
use tianji::persistence::redis::Snapshots;
use tianji::persistence::{DynStore, NewSku};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    mysql_url: String,
    #[arg(long, default_value_t = 1_000_000)]
    orders: u64,
    #[arg(long, default_value_t = 10)]
    skus: u64,
    #[arg(long, default_value_t = 512)]
    concurrency: u64,
    /// How many of the pending orders get a payment callback in the last phase.
    #[arg(long, default_value_t = 50_000)]
    payments: u64,
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn core(url: &str) -> anyhow::Result<(Arc<Core>, DynStore)> {
    let limits = ActorLimits { session_idle_timeout: Duration::from_secs(1), ..ActorLimits::default() };
    let store = tianji::persistence::connect(url, true, limits.database_timeout).await?;
    let core =
        Core::start(Arc::clone(&store), Arc::new(Snapshots::in_process()), limits, 2, Duration::from_secs(3_600), 2);
    Ok((core, store))
}

/// Runs `count` jobs with `concurrency` in flight; returns how long they took.
async fn drive<F, Fut>(count: u64, concurrency: u64, job: F) -> Duration
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let job = Arc::new(job);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, job) = (Arc::clone(&next), Arc::clone(&job));
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return;
                    }
                    job(n).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    started.elapsed()
}

async fn run(args: Args, url: &str) -> anyhow::Result<()> {
    let baseline = rss_bytes();
    let (first, store) = core(url).await?;
    let skus: Vec<SkuId> = (0..args.skus).map(|_| SkuId::new(first.next_id())).collect();
    let per_sku = (args.orders / args.skus + 1) as i64;
    for sku_id in &skus {
        let sku = NewSku {
            sku_id: *sku_id,
            name: "seat".into(),
            price_cents: Cents::new(990),
            total: per_sku,
            sale: Default::default(),
            created_at_ms: 0,
        };
        store.create_sku(&sku).await?;
    }
    let placer = Arc::clone(&first);
    let skus_for_jobs = skus.clone();
    let took = drive(args.orders, args.concurrency, move |n| {
        let (core, skus) = (Arc::clone(&placer), skus_for_jobs.clone());
        async move {
            let sku_id = skus[(n % skus.len() as u64) as usize];
            let request = PlaceOrder::parse(&[(sku_id.get(), 1)]).expect("valid");
            let key = IdempotencyKey::parse(&format!("k{n}")).expect("valid");
            core.place_order(UserId::new(1 + (n % 100_000) as i64), key, request).await.expect("placed");
        }
    })
    .await;
    println!(
        "placed {} orders in {:.1} s ({:.0} orders/s, durable)",
        args.orders,
        took.as_secs_f64(),
        args.orders as f64 / took.as_secs_f64()
    );
    // Placement starts no order session: what stays is the timer, the SKU actors' leases and
    // the user actors' recent keys.
    let held = rss_bytes().saturating_sub(baseline);
    println!(
        "resident with {} pending orders: {:.0} MiB over baseline ({:.0} bytes per pending order)",
        args.orders,
        mib(held),
        held as f64 / args.orders as f64
    );

    // A restart: a new core on the same database, as a new process would build it.
    let before_restart = rss_bytes();
    let started = Instant::now();
    let (second, second_store) = core(url).await?;
    let recovery = second.recover().await?;
    let (repaired, armed) = (recovery.leases_repaired, recovery.deadlines_armed);
    let recovered = started.elapsed();
    for sku_id in &skus {
        second.sku_snapshot(*sku_id).await?;
    }
    let activated = started.elapsed();
    println!(
        "restart: recovery armed {armed} deadlines (repaired {repaired} leases) in {:.2} s; all SKU actors serving with their leases after {:.2} s; {:.0} MiB more resident",
        recovered.as_secs_f64(),
        activated.as_secs_f64(),
        mib(rss_bytes().saturating_sub(before_restart))
    );

    // Payment callbacks through the order sessions (activated from the database each).
    let pending = second_store.pending_deadlines().await?;
    let to_pay: Vec<OrderId> = pending.iter().take(args.payments as usize).map(|(id, _, _)| *id).collect();
    let payer = Arc::clone(&second);
    let paid = Arc::new(AtomicU64::new(0));
    let paid_count = Arc::clone(&paid);
    let count = to_pay.len() as u64;
    let to_pay = Arc::new(to_pay);
    let took = drive(count, args.concurrency, move |n| {
        let (core, to_pay, paid) = (Arc::clone(&payer), Arc::clone(&to_pay), Arc::clone(&paid_count));
        async move {
            let order_id = to_pay[n as usize];
            let result = core.pay_order(order_id, format!("trade-{order_id}"), Cents::new(990), "bench".into()).await;
            if result.is_ok() {
                paid.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .await;
    let paid = paid.load(Ordering::Relaxed);
    assert_eq!(paid, count, "every payment must apply");
    println!(
        "paid {paid} orders in {:.1} s ({:.0} payment callbacks/s, in process)",
        took.as_secs_f64(),
        paid as f64 / took.as_secs_f64()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    actix::System::new().block_on(async move {
        sqlx::any::install_default_drivers();
        let url = format!("{}/tianji_pending_{}", args.mysql_url, hex::encode(rand::random::<[u8; 4]>()));
        sqlx::Any::create_database(&url).await?;
        let outcome = run(args, &url).await;
        sqlx::Any::drop_database(&url).await?;
        outcome
    })
}
