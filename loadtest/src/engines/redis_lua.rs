//! The classic flash-sale baseline: one Lua script per attempt that reads the stock, compares
//! and DECRBYs atomically, and records the order in a Redis hash (where the classic pattern
//! hands it to a queue). All clients share one multiplexed connection, as the pattern is
//! usually deployed.
//!
//! `redis-lua` acknowledges when the script returns (Redis without AOF: not durable).
//! `redis-lua-durable` then INSERTs the order row into MariaDB (autocommit, the same pool size
//! as tianji's store) and acknowledges only after that commit; if the insert fails, the units
//! are given back in Redis and the attempt counts as an error.
//!
//! Keys live under `tianji_load:<run>:<engine>:` and are deleted in `cleanup`.

use super::{Engine, ReadBack, Setup};
use crate::check::SkuObserved;
use crate::driver::{Attempt, Outcome};
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use sqlx::mysql::MySqlPool;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

/// Keys written or read per Redis command during setup, read-back and cleanup.
pub const KEYS_PER_COMMAND_MAX: usize = 1_000;

/// KEYS[1] the SKU's stock counter, KEYS[2] the orders hash; ARGV quantity, order id, SKU index.
/// Returns 1 reserved, 0 not enough stock, -1 no such SKU.
const RESERVE_SCRIPT: &str = r"
local stock = tonumber(redis.call('GET', KEYS[1]))
if not stock then return -1 end
local quantity = tonumber(ARGV[1])
if stock < quantity then return 0 end
redis.call('DECRBY', KEYS[1], quantity)
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3] .. ':' .. ARGV[1])
return 1
";

pub struct RedisLuaEngine {
    name: &'static str,
    connection: MultiplexedConnection,
    script: redis::Script,
    prefix: String,
    sku_count: usize,
    stock: i64,
    next_order_id: AtomicI64,
    /// Set for `redis-lua-durable`: where order rows are committed.
    durable: Option<MySqlPool>,
}

impl RedisLuaEngine {
    pub async fn start(setup: &Setup<'_>, durable: bool) -> anyhow::Result<Self> {
        let name = if durable { "redis-lua-durable" } else { "redis-lua" };
        let client = redis::Client::open(setup.redis_url)?;
        let connection = client.get_multiplexed_tokio_connection().await?;
        let database = if durable { Some(create_order_table(setup).await?) } else { None };
        let engine = RedisLuaEngine {
            name,
            connection,
            script: redis::Script::new(RESERVE_SCRIPT),
            prefix: format!("tianji_load:{}:{name}", setup.run_id),
            sku_count: setup.workload.sku_count,
            stock: setup.workload.stock_per_sku,
            next_order_id: AtomicI64::new(1),
            durable: database,
        };
        engine.load_stock().await?;
        Ok(engine)
    }

    fn stock_key(&self, index: usize) -> String {
        format!("{}:stock:{index}", self.prefix)
    }

    fn orders_key(&self) -> String {
        format!("{}:orders", self.prefix)
    }

    async fn load_stock(&self) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        for chunk in index_chunks(self.sku_count) {
            let pairs: Vec<(String, i64)> = chunk.map(|i| (self.stock_key(i), self.stock)).collect();
            let () = connection.mset(&pairs).await?;
        }
        Ok(())
    }

    /// Commits the order row; on failure gives the units back so Redis and MariaDB agree.
    async fn commit_order(&self, database: &MySqlPool, attempt: Attempt, order_id: i64) -> Outcome {
        let inserted = sqlx::query("INSERT INTO lua_order (order_id, sku_id, quantity) VALUES (?, ?, ?)")
            .bind(order_id)
            .bind(attempt.sku_index as i64)
            .bind(i64::from(attempt.quantity))
            .execute(database)
            .await;
        let Err(error) = inserted else {
            return Outcome::Ok { units: attempt.quantity };
        };
        let mut connection = self.connection.clone();
        let compensated: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .incr(self.stock_key(attempt.sku_index), attempt.quantity)
            .hdel(self.orders_key(), order_id)
            .query_async(&mut connection)
            .await;
        match compensated {
            Ok(()) => Outcome::Error(format!("order insert failed, units returned: {error}")),
            Err(lost) => {
                Outcome::Error(format!("order insert failed ({error}) and so did giving the units back ({lost})"))
            }
        }
    }

    async fn remaining_stock(&self) -> anyhow::Result<Vec<Option<i64>>> {
        let mut connection = self.connection.clone();
        let mut remaining = Vec::with_capacity(self.sku_count);
        for chunk in index_chunks(self.sku_count) {
            let keys: Vec<String> = chunk.map(|i| self.stock_key(i)).collect();
            let values: Vec<Option<i64>> = redis::cmd("MGET").arg(&keys).query_async(&mut connection).await?;
            remaining.extend(values);
        }
        Ok(remaining)
    }

    /// Orders per SKU index from the Redis hash: (rows, units).
    async fn redis_orders(&self) -> anyhow::Result<HashMap<usize, (u64, i64)>> {
        let mut connection = self.connection.clone();
        let orders: HashMap<String, String> = connection.hgetall(self.orders_key()).await?;
        let mut per_sku: HashMap<usize, (u64, i64)> = HashMap::new();
        for value in orders.values() {
            let (index, quantity) = value
                .split_once(':')
                .and_then(|(i, q)| Some((i.parse::<usize>().ok()?, q.parse::<i64>().ok()?)))
                .ok_or_else(|| anyhow::anyhow!("malformed order entry {value:?}"))?;
            let entry = per_sku.entry(index).or_default();
            entry.0 += 1;
            entry.1 += quantity;
        }
        Ok(per_sku)
    }
}

pub(super) fn index_chunks(count: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..count).step_by(KEYS_PER_COMMAND_MAX).map(move |start| start..(start + KEYS_PER_COMMAND_MAX).min(count))
}

async fn create_order_table(setup: &Setup<'_>) -> anyhow::Result<MySqlPool> {
    let database = setup.database.pool(tianji::persistence::mysql::POOL_CONNECTIONS_MAX).await?;
    sqlx::query(
        "CREATE TABLE lua_order (order_id BIGINT NOT NULL PRIMARY KEY, sku_id BIGINT NOT NULL, \
         quantity BIGINT NOT NULL, KEY lua_order_sku (sku_id)) ENGINE = InnoDB",
    )
    .execute(&database)
    .await?;
    Ok(database)
}

async fn sql_orders(database: &MySqlPool) -> anyhow::Result<HashMap<usize, (u64, i64)>> {
    let rows = sqlx::query(
        "SELECT sku_id, COUNT(*) AS n, CAST(SUM(quantity) AS SIGNED) AS units FROM lua_order GROUP BY sku_id",
    )
    .fetch_all(database)
    .await?;
    let mut per_sku = HashMap::new();
    for row in rows {
        let index = usize::try_from(row.try_get::<i64, _>("sku_id")?)?;
        per_sku.insert(index, (row.try_get::<i64, _>("n")? as u64, row.try_get("units")?));
    }
    Ok(per_sku)
}

#[async_trait]
impl Engine for RedisLuaEngine {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn attempt(&self, attempt: Attempt) -> Outcome {
        let order_id = self.next_order_id.fetch_add(1, Ordering::Relaxed);
        let mut connection = self.connection.clone();
        let answer: redis::RedisResult<i64> = self
            .script
            .key(self.stock_key(attempt.sku_index))
            .key(self.orders_key())
            .arg(attempt.quantity)
            .arg(order_id)
            .arg(attempt.sku_index)
            .invoke_async(&mut connection)
            .await;
        match (answer, &self.durable) {
            (Ok(1), None) => Outcome::Ok { units: attempt.quantity },
            (Ok(1), Some(database)) => self.commit_order(database, attempt, order_id).await,
            (Ok(0), _) => Outcome::Rejected,
            (Ok(other), _) => Outcome::Error(format!("script answered {other}")),
            (Err(error), _) => Outcome::Error(format!("redis: {error}")),
        }
    }

    async fn read_back(&self) -> anyhow::Result<ReadBack> {
        let mut read = ReadBack::default();
        let in_redis = self.redis_orders().await?;
        let orders = match &self.durable {
            None => in_redis,
            Some(database) => {
                let in_sql = sql_orders(database).await?;
                let (redis_rows, sql_rows) = (sum_rows(&in_redis), sum_rows(&in_sql));
                if redis_rows != sql_rows {
                    read.problems.push(format!("{redis_rows} orders in Redis but {sql_rows} order rows in MariaDB"));
                }
                read.notes.push(format!("{sql_rows} order rows committed to MariaDB, one commit each"));
                in_sql
            }
        };
        for (index, remaining) in self.remaining_stock().await?.into_iter().enumerate() {
            let Some(remaining) = remaining else {
                read.problems.push(format!("sku #{index}: stock key missing"));
                read.observed.push(SkuObserved::default());
                continue;
            };
            let (order_rows, order_units) = orders.get(&index).copied().unwrap_or_default();
            read.observed.push(SkuObserved { taken_units: self.stock - remaining, order_rows, order_units });
        }
        if orders.keys().any(|&index| index >= self.sku_count) {
            read.problems.push("orders of an unknown SKU".into());
        }
        Ok(read)
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        for chunk in index_chunks(self.sku_count) {
            let keys: Vec<String> = chunk.map(|i| self.stock_key(i)).collect();
            let _: i64 = connection.del(&keys).await?;
        }
        let _: i64 = connection.del(self.orders_key()).await?;
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

fn sum_rows(per_sku: &HashMap<usize, (u64, i64)>) -> u64 {
    per_sku.values().map(|(rows, _)| rows).sum()
}

/// Every key still under `prefix` (SCAN, so Redis is never blocked by a KEYS).
pub(super) async fn leftover_keys(connection: &mut MultiplexedConnection, prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(KEYS_PER_COMMAND_MAX)
            .query_async(connection)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_index_once() {
        let chunks: Vec<_> = index_chunks(2_500).collect();
        assert_eq!(chunks, vec![0..1_000, 1_000..2_000, 2_000..2_500]);
        assert_eq!(index_chunks(1).collect::<Vec<_>>(), vec![0..1]);
    }
}
