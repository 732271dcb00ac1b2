//! `scale`: the same closed-loop order load against a cluster of 1 node, then of 3 (any list
//! of node counts), each run on a fresh MariaDB database with `tianji serve` processes this
//! tool starts itself (cluster nodes: `TIANJI_ADVERTISE_URL` on a loopback port). Each node
//! gets SKUs of its own (created until it owns `--skus-per-node`: a SKU's id decides its owner)
//! and users of its own (ids whose key falls in its ranges), and every order goes to the node
//! that owns both its SKU and its user, so no order needs another node. Reports orders/s and
//! the CPU time per order of each node (its own orders), of MariaDB, of this client and of
//! the whole machine, read from /proc before and after the driven phase, then checks the end
//! state against the database and runs tianji's reconcile.
//!
//! Several nodes on a machine with fewer cores than nodes share those cores: the throughput
//! cannot grow, and the CPU per order says what running more nodes costs.

use crate::check::{self, CheckResult, SkuObserved};
use crate::cli::ScaleArgs;
use crate::cpu::{CpuMeter, CpuReading, Probe, Source};
use crate::database::{with_fresh_database, FreshDatabase};
use crate::driver::{drive, Attempt, Outcome};
use crate::http::api::mint_token;
use crate::process::{self, url_port, MYSQLD_NAMES};
use crate::report::{ratios, Report, Summary};
use crate::target::require_loopback;
use crate::workload::{KeyDistribution, Workload};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tianji::domain::slots::{Key, RANGE_COUNT};
use tianji::domain::{SkuId, UserId};

/// The most nodes one run starts.
pub const NODES_MAX: usize = 8;
/// The most SKUs per node.
pub const SKUS_PER_NODE_MAX: usize = 256;
/// The most users per node.
pub const USERS_PER_NODE_MAX: usize = 100_000;
/// How long the nodes may take to start and split the ranges between them.
pub const SPLIT_BOUND: Duration = Duration::from_secs(60);
/// How often the nodes' admin views are read while waiting for the split.
pub const SPLIT_POLL: Duration = Duration::from_millis(100);
/// SKUs created per SKU wanted before giving up (a SKU lands on a given node 1 time in n).
pub const SKU_CREATES_PER_WANTED_MAX: usize = 50;
/// User ids looked at per user wanted (a user lands on a given node 1 time in n).
pub const USER_IDS_SCANNED_PER_WANTED_MAX: usize = 64;
/// How long a node may take to exit after it is told to stop.
pub const STOP_BOUND: Duration = Duration::from_secs(10);
/// Attempts of a run: the duration ends it first.
pub const ATTEMPTS_PER_RUN_MAX: u64 = 100_000_000;

pub fn main(args: &ScaleArgs) -> anyhow::Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.clamp(1, 64))
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

fn check_args(args: &ScaleArgs) -> anyhow::Result<()> {
    require_loopback("--mysql-url", &args.mysql_url, &["mysql", "mariadb"])?;
    if args.nodes.is_empty() || args.nodes.iter().any(|n| !(1..=NODES_MAX).contains(n)) {
        anyhow::bail!("--nodes: each count must be between 1 and {NODES_MAX}");
    }
    if !(1..=SKUS_PER_NODE_MAX).contains(&args.skus_per_node) {
        anyhow::bail!("--skus-per-node must be between 1 and {SKUS_PER_NODE_MAX}");
    }
    if !(1..=USERS_PER_NODE_MAX).contains(&args.users_per_node) {
        anyhow::bail!("--users-per-node must be between 1 and {USERS_PER_NODE_MAX}");
    }
    if !args.tianji_bin.is_file() {
        anyhow::bail!(
            "--tianji-bin {}: no such file (build it: cargo build --release -p tianji)",
            args.tianji_bin.display()
        );
    }
    Ok(())
}

async fn run(args: &ScaleArgs) -> anyhow::Result<Report> {
    check_args(args)?;
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let secrets = Secrets::generate();
    let run_notes = vec![format!(
        "machine: {} cores; nodes started from {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        args.tianji_bin.display()
    )];
    let mut rows = Vec::new();
    for &nodes in &args.nodes {
        let row = with_fresh_database(&args.mysql_url, |database| run_nodes(args, nodes, &secrets, database)).await?;
        eprintln!("{}", row_line(&row));
        rows.push(row);
    }
    let baseline = rows[0].name.clone();
    Ok(Report {
        command: "scale".to_owned(),
        workload: format!(
            "{} clients, closed loop, {} per run; {} SKUs and {} users per node, {} units each; one unit per order",
            args.concurrency,
            humantime::format_duration(args.duration.into()),
            args.skus_per_node,
            args.users_per_node,
            args.stock
        ),
        ratios: ratios(&rows, &baseline),
        results: rows,
        started_at,
        notes: run_notes,
    })
}

fn row_line(row: &Summary) -> String {
    format!("{}: {:.0} orders/s, {} errors", row.name, row.throughput_per_s, row.errors)
}

/// The secrets the nodes of every run share with this client.
struct Secrets {
    jwt: String,
    payment: String,
}

impl Secrets {
    fn generate() -> Secrets {
        Secrets { jwt: hex::encode(rand::random::<[u8; 32]>()), payment: hex::encode(rand::random::<[u8; 32]>()) }
    }
}

fn mysqld_probe(args: &ScaleArgs, notes: &mut Vec<String>) -> Option<Probe> {
    let found =
        process::find(args.mysqld_pid.map(|pid| (pid, "--mysqld-pid")), url_port(&args.mysql_url), MYSQLD_NAMES);
    process::probe("mariadbd", "--mysqld-pid", found, notes)
}

/// A `tianji serve` child process, killed when dropped, with its data directory removed.
struct NodeProcess {
    child: Child,
    address: String,
    data_dir: PathBuf,
}

impl NodeProcess {
    /// Starts a cluster node on a free loopback port; returns once it says it listens.
    async fn start(bin: &Path, database_url: &str, secrets: &Secrets) -> anyhow::Result<NodeProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address = format!("http://127.0.0.1:{port}");
        let data_dir = std::env::temp_dir().join(format!("tianji-scale-{}", hex::encode(rand::random::<[u8; 6]>())));
        std::fs::create_dir_all(&data_dir)?;
        let mut child = Command::new(bin)
            .arg("serve")
            .env("TIANJI_BIND", format!("127.0.0.1:{port}"))
            .env("TIANJI_ADVERTISE_URL", &address)
            .env("TIANJI_DATABASE_URL", database_url)
            .env("TIANJI_DATA_DIR", &data_dir)
            .env("TIANJI_JWT_SECRET", &secrets.jwt)
            .env("TIANJI_PAYMENT_SECRET", &secrets.payment)
            .env("TIANJI_RATE_ORDERS", "off")
            .env("TIANJI_RATE_COUPONS", "off")
            .env("TIANJI_RATE_HEARTBEATS", "off")
            .env("TIANJI_RATE_READS", "off")
            .env_remove("TIANJI_REDIS_URL")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "error".to_owned()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let node = NodeProcess { child, address, data_dir };
        // The first line comes once the node joined, took its first ranges and listens.
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        let expected = format!("tianji listening on port {port}");
        if line.trim() != expected {
            anyhow::bail!("tianji did not start: it said {line:?}");
        }
        Ok(node)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits (bounded) for the exit: the node releases its ranges and drains.
    async fn stop(mut self) {
        // SAFETY: kill(2) with a pid this process spawned and has not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_BOUND;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("node {} did not stop within {STOP_BOUND:?}: killed", self.address);
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The HTTP side of a run: one keep-alive client, the admin's `Authorization` value, the
/// nodes' addresses.
struct Nodes {
    http: reqwest::Client,
    admin: String,
    addresses: Vec<String>,
}

impl Nodes {
    /// The ranges each node holds now.
    async fn held(&self) -> anyhow::Result<Vec<BTreeSet<u16>>> {
        let mut held = Vec::new();
        for address in &self.addresses {
            let view: Value = self
                .http
                .get(format!("{address}/v1/admin/cluster"))
                .header("Authorization", &self.admin)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let ranges = view["held"].as_array().ok_or_else(|| anyhow::anyhow!("{address}: no held ranges"))?;
            held.push(ranges.iter().filter_map(Value::as_u64).map(|range| range as u16).collect());
        }
        Ok(held)
    }

    /// Waits until the ranges are split: each held once, every node at its share.
    async fn split(&self) -> anyhow::Result<Vec<Option<usize>>> {
        let deadline = Instant::now() + SPLIT_BOUND;
        loop {
            let held = self.held().await?;
            if let Some(owners) = fair_split(&held) {
                return Ok(owners);
            }
            if Instant::now() > deadline {
                anyhow::bail!("the nodes did not split the ranges within {SPLIT_BOUND:?}: {held:?}");
            }
            tokio::time::sleep(SPLIT_POLL).await;
        }
    }

    async fn create_sku(&self, stock: i64) -> anyhow::Result<i64> {
        let created: Value = self
            .http
            .post(format!("{}/v1/admin/skus", self.addresses[0]))
            .header("Authorization", &self.admin)
            .json(&json!({"name": "scale", "price_cents": 100, "stock": stock}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        created["sku_id"].as_i64().ok_or_else(|| anyhow::anyhow!("no sku_id in {created}"))
    }
}

/// The owner of each range when every range is held by exactly one node and every node holds
/// its share (`floor(64 / n)` or one more, as `cluster::balance` settles); `None` otherwise.
pub fn fair_split(held: &[BTreeSet<u16>]) -> Option<Vec<Option<usize>>> {
    let floor = usize::from(RANGE_COUNT) / held.len().max(1);
    if held.is_empty() || held.iter().any(|ranges| !(floor..=floor + 1).contains(&ranges.len())) {
        return None;
    }
    let mut owners = vec![None; usize::from(RANGE_COUNT)];
    for (node, ranges) in held.iter().enumerate() {
        for range in ranges {
            let slot = owners.get_mut(usize::from(*range))?;
            if slot.replace(node).is_some() {
                return None;
            }
        }
    }
    owners.iter().all(Option::is_some).then_some(owners)
}

/// `wanted` user ids per node, the smallest ids whose key falls in a range the node owns; `None`
/// when a node owns too few ranges to find them among the ids scanned.
pub fn users_by_node(owners: &[Option<usize>], nodes: usize, wanted: usize) -> Option<Vec<Vec<i64>>> {
    let mut users = vec![Vec::with_capacity(wanted); nodes];
    let scanned_max = wanted * nodes * USER_IDS_SCANNED_PER_WANTED_MAX;
    for id in 1..=scanned_max as i64 {
        let range = Key::user(UserId::new(id)).range();
        if let Some(node) = owners[range.index()] {
            if users[node].len() < wanted {
                users[node].push(id);
            }
        }
        if users.iter().all(|u| u.len() == wanted) {
            return Some(users);
        }
    }
    None
}

/// What every attempt of a run needs: where each SKU lives, the users of each node and their
/// tokens, and the orders each node acknowledged.
struct Plan {
    http: reqwest::Client,
    addresses: Vec<String>,
    /// (sku id, owning node), by SKU index.
    skus: Vec<(i64, usize)>,
    /// (user id, `Authorization` value) of each node's users.
    users: Vec<Vec<(i64, String)>>,
    acknowledged_by_node: Vec<AtomicU64>,
}

impl Plan {
    /// Places one order for `attempt` on the node owning its SKU, for one of that node's users.
    async fn place(&self, attempt: Attempt) -> Outcome {
        let (sku_id, node) = self.skus[attempt.sku_index];
        let users = &self.users[node];
        let (_, token) = &users[attempt.seq as usize % users.len()];
        let sent = self
            .http
            .post(format!("{}/v1/orders", self.addresses[node]))
            .header("Authorization", token)
            .header("Idempotency-Key", format!("scale-{}", attempt.seq))
            .json(&json!({"items": [{"sku_id": sku_id, "quantity": attempt.quantity}]}))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return Outcome::Error(format!("transport: {error}")),
        };
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match (status, body["code"].as_str()) {
            (201, _) => {
                self.acknowledged_by_node[node].fetch_add(1, Ordering::Relaxed);
                Outcome::Ok { units: attempt.quantity }
            }
            (409, Some("insufficient_stock")) => Outcome::Rejected,
            (status, code) => Outcome::Error(format!("{status} {}", code.unwrap_or("-"))),
        }
    }
}

/// One run: `nodes` nodes on `database`, their SKUs and users, the load, the CPU time and the
/// end-state check.
async fn run_nodes(
    args: &ScaleArgs,
    nodes: usize,
    secrets: &Secrets,
    database: Arc<FreshDatabase>,
) -> anyhow::Result<Summary> {
    let name = format!("{nodes} node{}", if nodes == 1 { "" } else { "s" });
    let mut processes = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        processes.push(NodeProcess::start(&args.tianji_bin, &database.url, secrets).await?);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .build()?;
    let cluster = Nodes {
        http: http.clone(),
        admin: mint_token(&secrets.jwt, 1, "admin")?,
        addresses: processes.iter().map(|node| node.address.clone()).collect(),
    };
    let owners = cluster.split().await?;
    let skus = create_skus(&cluster, &owners, nodes, args).await?;
    let users = users_by_node(&owners, nodes, args.users_per_node)
        .ok_or_else(|| anyhow::anyhow!("too few user ids fall on some node"))?;
    let users = users
        .into_iter()
        .map(|ids| ids.into_iter().map(|id| Ok((id, mint_token(&secrets.jwt, id as u64, "user")?))).collect())
        .collect::<anyhow::Result<Vec<Vec<_>>>>()?;
    let plan = Arc::new(Plan {
        http,
        addresses: cluster.addresses.clone(),
        skus: skus.clone(),
        users,
        acknowledged_by_node: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
    });
    let workload = Workload::parse(
        skus.len(),
        args.stock,
        ATTEMPTS_PER_RUN_MAX,
        args.concurrency,
        1,
        KeyDistribution::Uniform,
        args.duration.into(),
    )?;

    let mut notes = Vec::new();
    let mut probes: Vec<Probe> = processes
        .iter()
        .enumerate()
        .map(|(n, node)| Probe::new(format!("node {n} pid {}", node.pid()), Source::Process(node.pid())))
        .collect();
    probes.extend(mysqld_probe(args, &mut notes));
    probes.push(Probe::new("tianji-loadtest (client)", Source::ThisProcess));
    probes.push(Probe::new("machine", Source::Machine));
    eprintln!("scale {name}: {} SKUs, driving {} clients for {:?}", skus.len(), args.concurrency, workload.time_limit);
    let meter = CpuMeter::start(probes);
    let driven = {
        let plan = Arc::clone(&plan);
        drive(&name, &workload, move |attempt| {
            let plan = Arc::clone(&plan);
            async move { plan.place(attempt).await }
        })
        .await?
    };
    let readings = meter.stop();
    for process in processes {
        process.stop().await;
    }

    let mut result = check_database(&database, &skus, args.stock, &driven.acked_units, &driven.acked_orders).await?;
    check::reconcile(&database.url, &mut result).await?;
    notes.extend(per_node_notes(&readings, &plan.acknowledged_by_node));
    Ok(Summary::new(&driven, &result, notes).with_cpu(&readings))
}

/// Creates SKUs through node 0 until every node owns `--skus-per-node` of them; returns them
/// with their owners, node by node.
async fn create_skus(
    cluster: &Nodes,
    owners: &[Option<usize>],
    nodes: usize,
    args: &ScaleArgs,
) -> anyhow::Result<Vec<(i64, usize)>> {
    let wanted = args.skus_per_node;
    let mut by_node: Vec<Vec<i64>> = vec![Vec::new(); nodes];
    let creates_max = wanted * nodes * SKU_CREATES_PER_WANTED_MAX;
    for _ in 0..creates_max {
        if by_node.iter().all(|skus| skus.len() == wanted) {
            break;
        }
        let sku_id = cluster.create_sku(args.stock).await?;
        let node = owners[Key::sku(SkuId::new(sku_id)).range().index()].expect("a fair split owns every range");
        if by_node[node].len() < wanted {
            by_node[node].push(sku_id);
        }
    }
    if by_node.iter().any(|skus| skus.len() < wanted) {
        anyhow::bail!("{creates_max} SKUs created and some node owns fewer than {wanted}");
    }
    Ok(by_node.into_iter().enumerate().flat_map(|(node, skus)| skus.into_iter().map(move |s| (s, node))).collect())
}

/// Each SKU as stored: units taken and the order rows holding it; compared with what was
/// acknowledged.
async fn check_database(
    database: &FreshDatabase,
    skus: &[(i64, usize)],
    stock: i64,
    acked_units: &[u64],
    acked_orders: &[u64],
) -> anyhow::Result<CheckResult> {
    let pool = database.pool(2).await?;
    let mut observed = Vec::with_capacity(skus.len());
    for (sku_id, _) in skus {
        let (total, available): (i64, i64) = sqlx::query_as("SELECT total, available FROM inventory WHERE sku_id = ?")
            .bind(sku_id)
            .fetch_one(&pool)
            .await?;
        let (order_rows, order_units): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(quantity), 0) AS SIGNED) FROM trade_order_item WHERE sku_id = ?",
        )
        .bind(sku_id)
        .fetch_one(&pool)
        .await?;
        observed.push(SkuObserved { taken_units: total - available, order_rows: order_rows as u64, order_units });
    }
    pool.close().await;
    Ok(check::check(stock, acked_units, acked_orders, &observed))
}

/// One note per node: the orders it acknowledged and its own CPU time per order.
fn per_node_notes(readings: &[CpuReading], acknowledged: &[AtomicU64]) -> Vec<String> {
    acknowledged
        .iter()
        .enumerate()
        .map(|(node, orders)| {
            let orders = orders.load(Ordering::Relaxed);
            let prefix = format!("node {node} pid ");
            let cpu_s = readings.iter().find(|r| r.label.starts_with(&prefix)).and_then(|r| r.cpu_s);
            match cpu_s {
                Some(cpu_s) if orders > 0 => format!(
                    "node {node}: {orders} orders, {:.2} cpu s, {:.0} us cpu per order it served",
                    cpu_s,
                    cpu_s * 1e6 / orders as f64
                ),
                _ => format!("node {node}: {orders} orders, cpu not measured"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(range: std::ops::Range<u16>) -> BTreeSet<u16> {
        range.collect()
    }

    #[test]
    fn a_split_is_fair_only_when_every_range_has_one_owner_and_every_node_its_share() {
        let owners = fair_split(&[ranges(0..22), ranges(22..43), ranges(43..64)]).expect("fair");
        assert_eq!((owners[0], owners[21], owners[22], owners[63]), (Some(0), Some(0), Some(1), Some(2)));
        assert!(fair_split(&[ranges(0..64)]).is_some(), "one node holds all");
        assert!(fair_split(&[ranges(0..30), ranges(30..64)]).is_none(), "30 and 34 of 64: not settled");
        assert!(fair_split(&[ranges(0..32), ranges(31..63)]).is_none(), "range 31 twice, 63 never");
        assert!(fair_split(&[]).is_none());
    }

    #[test]
    fn users_are_picked_on_the_node_that_owns_their_range() {
        let owners: Vec<Option<usize>> = (0..64).map(|range| Some(usize::from(range >= 32))).collect();
        let users = users_by_node(&owners, 2, 100).expect("enough ids");
        for (node, ids) in users.iter().enumerate() {
            assert_eq!(ids.len(), 100);
            for id in ids {
                assert_eq!(owners[Key::user(UserId::new(*id)).range().index()], Some(node));
            }
        }
        let none_on_node_1: Vec<Option<usize>> = vec![Some(0); 64];
        assert!(users_by_node(&none_on_node_1, 2, 1).is_none(), "node 1 owns no range");
    }
}
