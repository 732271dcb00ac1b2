//! The seckill coupon baseline: one Lua script per claim that checks the user's count in the
//! template's claims hash (HGET), checks the remaining stock, DECRs it and counts the user
//! (HINCRBY), atomically. All clients share one multiplexed connection, as in `redis_lua.rs`.
//!
//! `redis-claim` acknowledges when the script returns (Redis without AOF: not durable).
//! `redis-claim-durable` then INSERTs the `coupon_record` row into MariaDB (autocommit, tianji's
//! pool size) and acknowledges only after that commit; if the insert fails, the coupon is given
//! back in Redis and the claim counts as an error. Its templates exist only in Redis: `issued`
//! is the total less the remaining stock.
//!
//! Keys live under `tianji_load:<run>:<engine>:` and are deleted in `cleanup`.

use super::claims::{coupon_tables, insert_coupon, sql_held, Answer, ClaimAudit, StoredClaims, PER_USER_LIMIT};
use super::redis_lua::{index_chunks, leftover_keys};
use super::{Engine, ReadBack, Setup};
use crate::driver::{Attempt, Outcome};
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use sqlx::mysql::MySqlPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

/// Template ids of this engine's coupon rows in MariaDB: this plus the template index.
pub const TEMPLATE_ID_BASE: i64 = 2_000_000_000;

/// KEYS[1] the template's remaining stock, KEYS[2] its claims hash (user -> coupons held);
/// ARGV the user, the per-user limit. Returns 1 claimed, 0 sold out, -2 limit reached, -1 no
/// such template.
const CLAIM_SCRIPT: &str = r"
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if held >= tonumber(ARGV[2]) then return -2 end
local stock = tonumber(redis.call('GET', KEYS[1]))
if not stock then return -1 end
if stock <= 0 then return 0 end
redis.call('DECR', KEYS[1])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 1
";

pub struct RedisClaimEngine {
    name: &'static str,
    connection: MultiplexedConnection,
    script: redis::Script,
    prefix: String,
    template_count: usize,
    total: i64,
    audit: ClaimAudit,
    next_coupon_id: AtomicI64,
    /// Set for `redis-claim-durable`: where coupon rows are committed.
    durable: Option<MySqlPool>,
}

impl RedisClaimEngine {
    pub async fn start(setup: &Setup<'_>, durable: bool) -> anyhow::Result<Self> {
        let name = if durable { "redis-claim-durable" } else { "redis-claim" };
        let client = redis::Client::open(setup.redis_url)?;
        let connection = client.get_multiplexed_tokio_connection().await?;
        let database = match durable {
            true => Some(coupon_tables(setup, tianji::persistence::mysql::POOL_CONNECTIONS_MAX).await?),
            false => None,
        };
        let engine = RedisClaimEngine {
            name,
            connection,
            script: redis::Script::new(CLAIM_SCRIPT),
            prefix: format!("tianji_load:{}:{name}", setup.run_id),
            template_count: setup.workload.sku_count,
            total: setup.workload.stock_per_sku,
            audit: ClaimAudit::new(setup.claimants),
            next_coupon_id: AtomicI64::new(1),
            durable: database,
        };
        engine.load_stock().await?;
        Ok(engine)
    }

    fn stock_key(&self, index: usize) -> String {
        format!("{}:stock:{index}", self.prefix)
    }

    fn claims_key(&self, index: usize) -> String {
        format!("{}:claims:{index}", self.prefix)
    }

    async fn load_stock(&self) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        for chunk in index_chunks(self.template_count) {
            let pairs: Vec<(String, i64)> = chunk.map(|i| (self.stock_key(i), self.total)).collect();
            let () = connection.mset(&pairs).await?;
        }
        Ok(())
    }

    async fn claim(&self, attempt: &Attempt, user: u64) -> Answer {
        let mut connection = self.connection.clone();
        let answer: redis::RedisResult<i64> = self
            .script
            .key(self.stock_key(attempt.sku_index))
            .key(self.claims_key(attempt.sku_index))
            .arg(user)
            .arg(PER_USER_LIMIT)
            .invoke_async(&mut connection)
            .await;
        match (answer, &self.durable) {
            (Ok(1), None) => Answer::Claimed,
            (Ok(1), Some(database)) => self.commit_coupon(database, attempt, user).await,
            (Ok(0), _) => Answer::SoldOut,
            (Ok(-2), _) => Answer::LimitReached,
            (Ok(other), _) => Answer::Failed(format!("script answered {other}")),
            (Err(error), _) => Answer::Failed(format!("redis: {error}")),
        }
    }

    /// Commits the coupon row; on failure gives the coupon back so Redis and MariaDB agree.
    async fn commit_coupon(&self, database: &MySqlPool, attempt: &Attempt, user: u64) -> Answer {
        let id = self.next_coupon_id.fetch_add(1, Ordering::Relaxed);
        let template_id = TEMPLATE_ID_BASE + attempt.sku_index as i64;
        let Err(error) = insert_coupon(id, user, template_id).execute(database).await else {
            return Answer::Claimed;
        };
        let mut connection = self.connection.clone();
        let given_back: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .incr(self.stock_key(attempt.sku_index), 1)
            .hincr(self.claims_key(attempt.sku_index), user, -1)
            .query_async(&mut connection)
            .await;
        match given_back {
            Ok(()) => Answer::Failed(format!("coupon insert failed, coupon given back: {error}")),
            Err(lost) => Answer::Failed(format!("coupon insert failed ({error}) and so did giving it back ({lost})")),
        }
    }

    /// `issued` per template: the total less the remaining stock.
    async fn issued(&self) -> anyhow::Result<Vec<Option<i64>>> {
        let mut connection = self.connection.clone();
        let mut issued = Vec::with_capacity(self.template_count);
        for chunk in index_chunks(self.template_count) {
            let keys: Vec<String> = chunk.map(|i| self.stock_key(i)).collect();
            let remaining: Vec<Option<i64>> = redis::cmd("MGET").arg(&keys).query_async(&mut connection).await?;
            issued.extend(remaining.into_iter().map(|left| left.map(|left| self.total - left)));
        }
        Ok(issued)
    }

    /// Coupons per (user, template index) from the claims hashes (a given-back claim leaves 0).
    async fn redis_held(&self) -> anyhow::Result<HashMap<(u64, usize), i64>> {
        let mut connection = self.connection.clone();
        let mut held = HashMap::new();
        for index in 0..self.template_count {
            let claims: HashMap<u64, i64> = connection.hgetall(self.claims_key(index)).await?;
            held.extend(
                claims.into_iter().filter(|&(_, count)| count != 0).map(|(user, count)| ((user, index), count)),
            );
        }
        Ok(held)
    }
}

#[async_trait]
impl Engine for RedisClaimEngine {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn attempt(&self, attempt: Attempt) -> Outcome {
        let user = self.audit.claimant(&attempt);
        let answer = self.claim(&attempt, user).await;
        self.audit.record(&attempt, user, answer)
    }

    async fn read_back(&self) -> anyhow::Result<ReadBack> {
        let in_redis = self.redis_held().await?;
        let Some(database) = &self.durable else {
            let stored = StoredClaims { issued: self.issued().await?, held: in_redis };
            return Ok(self.audit.read_back(&stored, self.template_count));
        };
        let ids: Vec<i64> = (0..self.template_count).map(|i| TEMPLATE_ID_BASE + i as i64).collect();
        let stored = StoredClaims { issued: self.issued().await?, held: sql_held(database, &ids).await? };
        let mut read = self.audit.read_back(&stored, self.template_count);
        if in_redis != stored.held {
            let (redis_coupons, sql_coupons): (i64, i64) = (in_redis.values().sum(), stored.held.values().sum());
            read.problems.push(format!(
                "Redis and MariaDB disagree on who holds what: {redis_coupons} coupons in Redis, {sql_coupons} rows"
            ));
        }
        read.notes
            .push(format!("{} coupon rows committed to MariaDB, one commit each", stored.held.values().sum::<i64>()));
        Ok(read)
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        for chunk in index_chunks(self.template_count) {
            let keys: Vec<String> = chunk.flat_map(|i| [self.stock_key(i), self.claims_key(i)]).collect();
            let _: i64 = connection.del(&keys).await?;
        }
        let left = leftover_keys(&mut connection, &self.prefix).await?;
        if !left.is_empty() {
            let _: i64 = connection.del(&left).await?;
            anyhow::bail!("{}: {} Redis keys were left behind (now deleted)", self.name, left.len());
        }
        if let Some(database) = &self.durable {
            database.close().await;
        }
        Ok(())
    }
}
