//! Command line: `engines` and `http`, their presets, and how explicit flags override a
//! preset's values. Parsing ends in a validated `Workload`, closed loop unless `--rate` asks
//! for an open loop.

use crate::workload::{KeyDistribution, Workload, WorkloadError};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "tianji-loadtest",
    version,
    about = "Load generator for tianji: engines side by side in process, or a running server over HTTP. Loopback only."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// The same driver against each reservation engine, in process.
    Engines(EnginesArgs),
    /// End to end against a running `tianji serve`, beside a bare actix-web handler.
    Http(HttpArgs),
    /// Orders/s and CPU per order of a cluster of 1 node, then 3 (nodes started here, each
    /// run on a fresh MariaDB database; every order sent to the node owning its SKU and user).
    Scale(ScaleArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ScaleArgs {
    /// The `tianji` binary the nodes run (cargo build --release -p tianji).
    #[arg(long, default_value = "target/release/tianji")]
    pub tianji_bin: PathBuf,
    /// Node counts, one run each, in this order; the first is the baseline of the ratios.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub nodes: Vec<usize>,
    /// SKUs each node owns (created until it does: a SKU's id decides its owner).
    #[arg(long, default_value_t = 4)]
    pub skus_per_node: usize,
    /// Users each node owns; each order is for one of its SKU's node's users.
    #[arg(long, default_value_t = 2_000)]
    pub users_per_node: usize,
    /// Units of each SKU (ample: every order succeeds).
    #[arg(long, default_value_t = 1_000_000)]
    pub stock: i64,
    /// Concurrent clients in all, closed loop, whatever the node count.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long each run drives orders.
    #[arg(long, default_value = "15s")]
    pub duration: humantime::Duration,
    /// MariaDB server, without a database name: a fresh database per run, dropped after it.
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    pub mysql_url: String,
    /// MariaDB's process, whose CPU time is reported (default: the one listening on the
    /// database port, else the only process named mariadbd or mysqld).
    #[arg(long)]
    pub mysqld_pid: Option<u32>,
    /// Client runtime threads.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// One SKU with 10,000 units, 200,000 attempts, 256 concurrent.
    FlashSale,
    /// 100,000 SKUs (10,000 over HTTP) with 100 units each, zipf 1.1, 200,000 attempts.
    Catalog,
    /// Several SKUs, 1..=2 or 3 units per attempt; over HTTP: place, pay, cancel, read.
    Mixed,
    /// Seckill coupon claims: one template of 10,000 coupons, 50,000 claims of one coupon each,
    /// 256 concurrent, per-user limit 1; under `engines` a tenth of the claims made again by a
    /// user who claimed just before (`--repeat-claims`), over HTTP the `--users` in turn.
    Coupons,
    /// Learners sending progress heartbeats: 100,000 learners (`--learners`) each owning one
    /// course, first paced at one heartbeat per learner every 15 s (`--cadence`, open loop for
    /// the time limit: 20 s in process, 60 s over HTTP), then at the maximum rate (closed loop,
    /// 256 concurrent); `--phases` picks either.
    Heartbeats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Engines,
    Http,
}

/// A preset's values, before flags override them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PresetValues {
    pub sku_count: usize,
    pub stock_per_sku: i64,
    pub attempts: u64,
    pub concurrency: usize,
    pub max_quantity: u32,
    pub distribution: KeyDistribution,
    pub time_limit: Duration,
}

impl Preset {
    pub fn values(self, mode: Mode) -> PresetValues {
        let zipf = |exponent| KeyDistribution::Zipf { exponent };
        match (self, mode) {
            (Preset::FlashSale, _) => PresetValues {
                sku_count: 1,
                stock_per_sku: 10_000,
                attempts: 200_000,
                concurrency: 256,
                max_quantity: 1,
                distribution: KeyDistribution::Uniform,
                time_limit: Duration::from_secs(20),
            },
            // Over HTTP, SKUs are created one admin call each (about 1,000/s against SQLite),
            // so the HTTP catalog has 10,000 SKUs to stay under a minute.
            (Preset::Catalog, Mode::Http) => PresetValues {
                sku_count: 10_000,
                stock_per_sku: 100,
                attempts: 200_000,
                concurrency: 256,
                max_quantity: 1,
                distribution: zipf(1.1),
                time_limit: Duration::from_secs(15),
            },
            (Preset::Catalog, Mode::Engines) => PresetValues {
                sku_count: 100_000,
                stock_per_sku: 100,
                attempts: 200_000,
                concurrency: 256,
                max_quantity: 1,
                distribution: zipf(1.1),
                // Five engines and 100,000 SKUs set up (about 15 s for tianji's, one insert per
                // SKU) stay under a minute on 2 cores.
                time_limit: Duration::from_secs(7),
            },
            (Preset::Mixed, Mode::Engines) => PresetValues {
                sku_count: 1_000,
                stock_per_sku: 200,
                attempts: 200_000,
                concurrency: 256,
                max_quantity: 3,
                distribution: zipf(0.8),
                time_limit: Duration::from_secs(10),
            },
            (Preset::Mixed, Mode::Http) => PresetValues {
                sku_count: 100,
                stock_per_sku: 1_000,
                attempts: 20_000,
                concurrency: 64,
                max_quantity: 2,
                distribution: zipf(1.1),
                time_limit: Duration::from_secs(20),
            },
            // A "SKU" is a coupon template whose total is the stock; an attempt claims one
            // coupon. Five engines within about a minute and a half on 2 cores: the slowest
            // (one commit per claim) stop at the time limit.
            (Preset::Coupons, _) => PresetValues {
                sku_count: 1,
                stock_per_sku: 10_000,
                attempts: 50_000,
                concurrency: 256,
                max_quantity: 1,
                distribution: KeyDistribution::Uniform,
                time_limit: Duration::from_secs(15),
            },
            // One "SKU" (the course); an attempt is one heartbeat. The attempts bound the
            // closed-loop phase, which the time limit ends first; the paced phase plans
            // learners / cadence x time limit. Over HTTP at least one 60 s database flush falls
            // inside the paced phase.
            (Preset::Heartbeats, mode) => PresetValues {
                sku_count: 1,
                stock_per_sku: 1,
                attempts: 10_000_000,
                concurrency: 256,
                max_quantity: 1,
                distribution: KeyDistribution::Uniform,
                time_limit: Duration::from_secs(if mode == Mode::Http { 60 } else { 20 }),
            },
        }
    }

    /// Whether attempts claim coupons (else they reserve units of SKUs).
    pub fn claims_coupons(self) -> bool {
        self == Preset::Coupons
    }
}

/// What every run takes: a preset and the flags that override it, and where to write reports.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Starting values; every flag below overrides its part.
    #[arg(long, value_enum, default_value_t = Preset::FlashSale)]
    pub preset: Preset,
    /// Concurrent clients (closed loop: each waits for its answer before the next attempt);
    /// with --rate, the most attempts in flight (one due when they are all out is dropped).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Attempts in total (with --rate: at most this many of the planned ones).
    #[arg(long)]
    pub attempts: Option<u64>,
    /// Open loop: send this many attempts per second at planned instants, answered or not, and
    /// time each from its planned instant (no coordinated omission).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: how long attempts keep arriving at --rate (default: the time limit).
    #[arg(long, requires = "rate")]
    pub duration: Option<humantime::Duration>,
    /// Units of each SKU.
    #[arg(long)]
    pub stock: Option<i64>,
    /// Number of SKUs.
    #[arg(long)]
    pub skus: Option<usize>,
    /// Pick SKUs by a zipf distribution with this exponent (e.g. 1.1).
    #[arg(long, conflicts_with = "uniform")]
    pub zipf: Option<f64>,
    /// Pick SKUs uniformly.
    #[arg(long)]
    pub uniform: bool,
    /// Each attempt reserves 1..=this many units.
    #[arg(long)]
    pub max_quantity: Option<u32>,
    /// Longest an engine or scenario runs (e.g. 20s); it reports what it did by then.
    #[arg(long)]
    pub time_limit: Option<humantime::Duration>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report (inline SVG) to this file.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// MariaDB's process, whose CPU time is reported (default: the one listening on the
    /// database port, else the only process named mariadbd or mysqld).
    #[arg(long)]
    pub mysqld_pid: Option<u32>,
}

impl LoadArgs {
    pub fn workload(&self, mode: Mode) -> Result<Workload, WorkloadError> {
        let preset = self.preset.values(mode);
        let distribution = match (self.uniform, self.zipf) {
            (true, _) => KeyDistribution::Uniform,
            (false, Some(exponent)) => KeyDistribution::Zipf { exponent },
            (false, None) => preset.distribution,
        };
        let time_limit = self.time_limit.map_or(preset.time_limit, Into::into);
        let closed = Workload::parse(
            self.skus.unwrap_or(preset.sku_count),
            self.stock.unwrap_or(preset.stock_per_sku),
            self.attempts.unwrap_or(preset.attempts),
            self.concurrency.unwrap_or(preset.concurrency),
            self.max_quantity.unwrap_or(preset.max_quantity),
            distribution,
            time_limit,
        )?;
        match self.rate {
            None => Ok(closed),
            // A preset's attempt count sizes a closed run; an open one plans rate x duration,
            // capped only by an explicit --attempts.
            Some(rate_per_s) => {
                closed.open_loop(rate_per_s, self.duration.map_or(time_limit, Into::into), self.attempts)
            }
        }
    }
}

/// The engines; `tianji-*` run every preset, the others either reservations or coupon claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum EngineName {
    TianjiActor,
    TianjiMemory,
    RedisLua,
    RedisLuaDurable,
    MysqlRowLock,
    /// Coupons: one Lua script checks the user's count and the stock and records the claim.
    RedisClaim,
    /// Coupons: the script, then the coupon row committed to MariaDB before the answer.
    RedisClaimDurable,
    /// Coupons: a conditional UPDATE of `issued` and the coupon INSERT in one transaction.
    MysqlConditional,
    /// Heartbeats: one autocommitted `UPDATE learning_lesson` per heartbeat on MariaDB.
    NaiveUpdate,
    /// Heartbeats: one Redis `HSET` per heartbeat.
    RedisHset,
}

impl EngineName {
    /// Whether the engine can run attempts of this kind.
    pub fn runs(self, claims_coupons: bool) -> bool {
        match self {
            EngineName::TianjiActor | EngineName::TianjiMemory => true,
            EngineName::RedisLua | EngineName::RedisLuaDurable | EngineName::MysqlRowLock => !claims_coupons,
            EngineName::RedisClaim | EngineName::RedisClaimDurable | EngineName::MysqlConditional => claims_coupons,
            // Heartbeat engines run only the heartbeats preset, which selects its own engines.
            EngineName::NaiveUpdate | EngineName::RedisHset => false,
        }
    }

    pub fn spelled(self) -> String {
        self.to_possible_value().map_or_else(|| format!("{self:?}"), |value| value.get_name().to_owned())
    }
}

/// The most a `--repeat-claims` share may be: most claims come from distinct users.
pub const REPEAT_CLAIMS_SHARE_MAX: f64 = 0.5;

#[derive(Args, Debug, Clone)]
pub struct EnginesArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Engines to run, comma separated (default: all that run the preset, in this order).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub engines: Vec<EngineName>,
    /// Coupon claims: this share of the claims is made again by the user of a claim a few
    /// tickets before (same template when there is one), and must be refused at the per-user
    /// limit of 1 when that one succeeded. 0 to 0.5.
    #[arg(long, default_value_t = 0.1)]
    pub repeat_claims: f64,
    /// MariaDB server, without a database name: a fresh database is created and dropped.
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    pub mysql_url: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Redis's process, whose CPU time is reported (default: the one listening on the Redis
    /// port, else the only process named redis-server).
    #[arg(long)]
    pub redis_pid: Option<u32>,
    #[command(flatten)]
    pub heartbeats: HeartbeatArgs,
    /// Heartbeats: how often tianji-actor and tianji-memory flush progress to the database
    /// (default: the server's, 60 s); a final flush ends every phase and is counted in it.
    #[arg(long)]
    pub learning_flush: Option<humantime::Duration>,
}

impl EnginesArgs {
    /// The engines asked for (default: every one that runs the preset), in the documented
    /// order; naming one that cannot run the preset is an error.
    pub fn selected_engines(&self) -> anyhow::Result<Vec<EngineName>> {
        let coupons = self.load.preset.claims_coupons();
        if self.engines.is_empty() {
            return Ok(EngineName::value_variants().iter().copied().filter(|e| e.runs(coupons)).collect());
        }
        if let Some(misfit) = self.engines.iter().find(|e| !e.runs(coupons)) {
            let kind = if coupons { "claims coupons" } else { "reserves units" };
            anyhow::bail!("engine {} does not run preset {:?}, which {kind}", misfit.spelled(), self.load.preset);
        }
        let mut engines = self.engines.clone();
        engines.sort();
        engines.dedup();
        Ok(engines)
    }

    /// The `--repeat-claims` share, checked.
    pub fn repeat_claims_share(&self) -> anyhow::Result<f64> {
        let share = self.repeat_claims;
        if !(0.0..=REPEAT_CLAIMS_SHARE_MAX).contains(&share) {
            anyhow::bail!("--repeat-claims must be between 0 and {REPEAT_CLAIMS_SHARE_MAX}, got {share}");
        }
        Ok(share)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// One SKU, a new Idempotency-Key per attempt.
    FlashSale,
    /// Many SKUs picked by zipf.
    Catalog,
    /// Place, pay through the signed callback or cancel, read back.
    Mixed,
    /// Claim one coupon per attempt (`POST /v1/coupons/receive`): templates are the SKUs,
    /// their totals the stock, the users in turn.
    Coupons,
    /// Heartbeats of `--learners` learners, each owning the run's course (see preset
    /// heartbeats).
    Heartbeats,
}

#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// The running server, e.g. http://127.0.0.1:18080 (loopback addresses only).
    #[arg(long)]
    pub target: String,
    /// Scenario to run (default: the preset's).
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// The server's HS256 JWT secret (or --jwt-secret-file).
    #[arg(long, env = "TIANJI_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// File holding the JWT secret (e.g. the data dir's `jwt_secret`).
    #[arg(long, conflicts_with = "jwt_secret")]
    pub jwt_secret_file: Option<PathBuf>,
    /// The server's payment callback HMAC secret (scenario mixed; or --payment-secret-file).
    #[arg(long, env = "TIANJI_PAYMENT_SECRET", hide_env_values = true)]
    pub payment_secret: Option<String>,
    #[arg(long, conflicts_with = "payment_secret")]
    pub payment_secret_file: Option<PathBuf>,
    /// Distinct users tokens are minted for.
    #[arg(long, default_value_t = 10_000)]
    pub users: u32,
    /// Scenario coupons: coupons of a template one user may hold (1 to 1,000).
    #[arg(long, default_value_t = 1)]
    pub per_user_limit: i64,
    /// The server's database, to verify against after the run (mysql://, mariadb:// or
    /// sqlite:), e.g. mysql://root@127.0.0.1:3306/tianji or sqlite:///data/tianji.db?mode=ro.
    #[arg(long)]
    pub database_url: Option<String>,
    /// The server's process, whose CPU time is reported (default: the process listening on
    /// the --target port, when it can be found).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Share of placed orders sent again with the same Idempotency-Key (must return the same
    /// order).
    #[arg(long, default_value_t = 0.02)]
    pub replay_fraction: f64,
    /// Client runtime threads.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// Worker threads of the bare reference server.
    #[arg(long, default_value_t = 2)]
    pub bare_workers: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "10s")]
    pub request_timeout: humantime::Duration,
    /// Skip the bare reference endpoint.
    #[arg(long)]
    pub no_bare: bool,
    #[command(flatten)]
    pub heartbeats: HeartbeatArgs,
    /// Scenario heartbeats: how each learner comes to own the course: `api` places and pays
    /// one order per learner (needs the payment secret); `database` inserts the
    /// `learning_lesson` rows through --database-url (MariaDB) while no heartbeat has reached
    /// the server, faster for 100,000 learners.
    #[arg(long, value_enum, default_value_t = LearnerSeed::Api)]
    pub seed_learners: LearnerSeed,
}

impl HttpArgs {
    /// The scenario named, else the preset's.
    pub fn scenario(&self) -> Scenario {
        self.scenario.unwrap_or(match self.load.preset {
            Preset::FlashSale => Scenario::FlashSale,
            Preset::Catalog => Scenario::Catalog,
            Preset::Mixed => Scenario::Mixed,
            Preset::Coupons => Scenario::Coupons,
            Preset::Heartbeats => Scenario::Heartbeats,
        })
    }
}

/// Which part of a heartbeats run to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HeartbeatPhase {
    /// Open loop: every learner one heartbeat per `--cadence`, for the time limit.
    Paced,
    /// Closed loop at the maximum rate.
    Max,
}

/// How the learners of an HTTP heartbeats run come to own the course.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LearnerSeed {
    /// One order placed and paid (signed callback) per learner.
    Api,
    /// `learning_lesson` rows inserted directly into the server's MariaDB.
    Database,
}

/// The most learners a heartbeats run may simulate.
pub const LEARNERS_MAX: u64 = 10_000_000;

/// What the heartbeats preset (and scenario) takes beside the load flags.
#[derive(Args, Debug, Clone)]
pub struct HeartbeatArgs {
    /// Heartbeats: learners, each owning one course.
    #[arg(long, default_value_t = 100_000)]
    pub learners: u64,
    /// Heartbeats: how often each learner sends one in the paced phase.
    #[arg(long, default_value = "15s")]
    pub cadence: humantime::Duration,
    /// Heartbeats: the phases to run, in order (default: paced, then max).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub phases: Vec<HeartbeatPhase>,
    /// Heartbeats: before the phases, a warm-up row: every learner's first heartbeat, open loop
    /// at the paced rate (one full --cadence), so that the cold start (each learner's first
    /// heartbeat activates its user) is measured apart and the paced row is steady state.
    #[arg(long)]
    pub warmup: bool,
}

impl HeartbeatArgs {
    /// The learners, checked.
    pub fn learners(&self) -> anyhow::Result<u64> {
        if !(1..=LEARNERS_MAX).contains(&self.learners) {
            anyhow::bail!("--learners must be between 1 and {LEARNERS_MAX}, got {}", self.learners);
        }
        Ok(self.learners)
    }

    /// The phases asked for, else paced then max.
    pub fn phases(&self) -> Vec<HeartbeatPhase> {
        if self.phases.is_empty() {
            vec![HeartbeatPhase::Paced, HeartbeatPhase::Max]
        } else {
            self.phases.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Arrival;

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(args).expect("valid command line").command
    }

    #[test]
    fn presets_give_the_documented_workloads() {
        let Command::Engines(args) = parse(&["t", "engines"]) else { panic!("engines") };
        let flash = args.load.workload(Mode::Engines).expect("valid");
        assert_eq!(
            (flash.sku_count, flash.stock_per_sku, flash.attempts, flash.concurrency),
            (1, 10_000, 200_000, 256)
        );
        let Command::Engines(args) = parse(&["t", "engines", "--preset", "catalog"]) else { panic!("engines") };
        let catalog = args.load.workload(Mode::Engines).expect("valid");
        assert_eq!((catalog.sku_count, catalog.attempts), (100_000, 200_000));
        assert_eq!(catalog.distribution, KeyDistribution::Zipf { exponent: 1.1 });
    }

    #[test]
    fn flags_override_the_preset() {
        let cli = parse(&[
            "t",
            "engines",
            "--preset",
            "catalog",
            "--skus",
            "10",
            "--uniform",
            "--attempts",
            "5",
            "--time-limit",
            "3s",
            "--engines",
            "redis-lua,tianji-actor,redis-lua",
        ]);
        let Command::Engines(args) = cli else { panic!("engines") };
        let workload = args.load.workload(Mode::Engines).expect("valid");
        assert_eq!(workload.sku_count, 10);
        assert_eq!(workload.attempts, 5);
        assert_eq!(workload.distribution, KeyDistribution::Uniform);
        assert_eq!(workload.time_limit, Duration::from_secs(3));
        assert_eq!(args.selected_engines().expect("fit"), vec![EngineName::TianjiActor, EngineName::RedisLua]);
    }

    #[test]
    fn rate_makes_an_open_loop_over_the_duration() {
        let cli = parse(&["t", "engines", "--rate", "2000", "--duration", "5s", "--concurrency", "64"]);
        let Command::Engines(args) = cli else { panic!("engines") };
        let open = args.load.workload(Mode::Engines).expect("valid");
        assert_eq!(open.arrival, Arrival::Open { rate_per_s: 2_000.0 });
        assert_eq!((open.attempts, open.concurrency, open.time_limit), (10_000, 64, Duration::from_secs(5)));
        let cli = parse(&["t", "http", "--target", "http://127.0.0.1:1", "--rate", "100", "--attempts", "30"]);
        let Command::Http(args) = cli else { panic!("http") };
        let capped = args.load.workload(Mode::Http).expect("valid");
        assert_eq!(capped.attempts, 30, "an explicit --attempts caps the schedule");
        assert_eq!(capped.time_limit, Duration::from_secs(20), "the duration defaults to the time limit");
        let Command::Engines(args) = parse(&["t", "engines"]) else { panic!("engines") };
        assert_eq!(args.load.workload(Mode::Engines).expect("valid").arrival, Arrival::Closed);
        assert!(Cli::try_parse_from(["t", "engines", "--duration", "5s"]).is_err(), "--duration needs --rate");
    }

    #[test]
    fn engine_names_are_spelled_as_documented() {
        let names: Vec<String> = EngineName::value_variants()
            .iter()
            .map(|e| e.to_possible_value().expect("named").get_name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "tianji-actor",
                "tianji-memory",
                "redis-lua",
                "redis-lua-durable",
                "mysql-row-lock",
                "redis-claim",
                "redis-claim-durable",
                "mysql-conditional",
                "naive-update",
                "redis-hset"
            ]
        );
    }

    #[test]
    fn the_http_scenario_follows_the_preset_unless_named() {
        let cli = parse(&["t", "http", "--target", "http://127.0.0.1:1", "--preset", "catalog"]);
        let Command::Http(args) = cli else { panic!("http") };
        assert_eq!(args.scenario(), Scenario::Catalog);
        let cli = parse(&["t", "http", "--target", "http://127.0.0.1:1", "--scenario", "mixed"]);
        let Command::Http(args) = cli else { panic!("http") };
        assert_eq!(args.scenario(), Scenario::Mixed);
    }

    #[test]
    fn the_http_coupons_preset_claims_with_the_per_user_limit_asked() {
        let cli = parse(&["t", "http", "--target", "http://127.0.0.1:1", "--preset", "coupons"]);
        let Command::Http(args) = cli else { panic!("http") };
        assert_eq!((args.scenario(), args.per_user_limit), (Scenario::Coupons, 1));
        let coupons = args.load.workload(Mode::Http).expect("valid");
        assert_eq!(
            (coupons.sku_count, coupons.stock_per_sku, coupons.attempts, coupons.concurrency, coupons.max_quantity),
            (1, 10_000, 50_000, 256, 1)
        );
        let cli = parse(&[
            "t",
            "http",
            "--target",
            "http://127.0.0.1:1",
            "--preset",
            "coupons",
            "--stock",
            "500000",
            "--per-user-limit",
            "1000",
            "--rate",
            "3000",
        ]);
        let Command::Http(args) = cli else { panic!("http") };
        let open = args.load.workload(Mode::Http).expect("valid");
        assert_eq!((open.stock_per_sku, args.per_user_limit), (500_000, 1_000));
        assert_eq!(open.arrival, Arrival::Open { rate_per_s: 3_000.0 });
    }

    #[test]
    fn the_coupons_preset_claims_one_coupon_of_one_template_per_attempt() {
        let Command::Engines(args) = parse(&["t", "engines", "--preset", "coupons"]) else { panic!("engines") };
        let coupons = args.load.workload(Mode::Engines).expect("valid");
        assert_eq!(
            (coupons.sku_count, coupons.stock_per_sku, coupons.attempts, coupons.concurrency, coupons.max_quantity),
            (1, 10_000, 50_000, 256, 1)
        );
        assert_eq!((coupons.distribution, coupons.time_limit), (KeyDistribution::Uniform, Duration::from_secs(15)));
        assert_eq!(coupons.arrival, Arrival::Closed);
        assert_eq!(args.repeat_claims_share().expect("default"), 0.1);
        assert_eq!(
            args.selected_engines().expect("defaults fit"),
            [
                EngineName::TianjiActor,
                EngineName::TianjiMemory,
                EngineName::RedisClaim,
                EngineName::RedisClaimDurable,
                EngineName::MysqlConditional
            ]
        );
    }

    #[test]
    fn engines_must_fit_the_preset() {
        let Command::Engines(args) = parse(&["t", "engines", "--preset", "coupons", "--engines", "redis-lua"]) else {
            panic!("engines")
        };
        let refused = args.selected_engines().expect_err("redis-lua reserves units");
        assert_eq!(refused.to_string(), "engine redis-lua does not run preset Coupons, which claims coupons");
        let Command::Engines(args) = parse(&["t", "engines", "--engines", "mysql-conditional"]) else {
            panic!("engines")
        };
        assert!(args.selected_engines().is_err(), "flash-sale reserves units");
        let Command::Engines(args) = parse(&["t", "engines"]) else { panic!("engines") };
        assert_eq!(args.selected_engines().expect("defaults fit").len(), 5);
        assert!(args.selected_engines().expect("fit").iter().all(|e| e.runs(false)));
        let Command::Engines(args) = parse(&["t", "engines", "--preset", "coupons", "--repeat-claims", "0.6"]) else {
            panic!("engines")
        };
        assert!(args.repeat_claims_share().is_err(), "most claims come from distinct users");
    }
}
