//! The database-only coupon baseline, on tianji's own tables: one transaction per claim with
//! `UPDATE coupon_template SET issued = issued + 1 WHERE id = ? AND issued < total` and, if a
//! row changed, the `coupon_record` INSERT, then COMMIT. The unique key `(user_id,
//! template_id, seq)` with `seq` 1 refuses a user's second claim (counted as limit reached,
//! the transaction rolled back). Every claim on a template waits for the row lock of the one
//! before it, so a hot template runs at one commit at a time. Same pool size as tianji's store.

use super::claims::{
    coupon_tables, insert_coupon, insert_templates, sql_held, sql_issued, Answer, ClaimAudit, StoredClaims,
};
use super::{Engine, ReadBack, Setup};
use crate::driver::{Attempt, Outcome};
use async_trait::async_trait;
use sqlx::mysql::MySqlPool;
use std::sync::atomic::{AtomicI64, Ordering};

/// This engine's template ids: this plus the template index (apart from every other engine's).
pub const TEMPLATE_ID_BASE: i64 = 3_000_000_000;
/// This engine's first coupon id (apart from `redis-claim-durable`'s, below tianji's snowflakes).
pub const COUPON_ID_FIRST: i64 = 1_000_000_000_000;

pub struct ConditionalEngine {
    database: MySqlPool,
    template_ids: Vec<i64>,
    audit: ClaimAudit,
    next_coupon_id: AtomicI64,
}

impl ConditionalEngine {
    pub async fn start(setup: &Setup<'_>) -> anyhow::Result<Self> {
        let database = coupon_tables(setup, tianji::persistence::mysql::POOL_CONNECTIONS_MAX).await?;
        let template_ids: Vec<i64> = (0..setup.workload.sku_count).map(|i| TEMPLATE_ID_BASE + i as i64).collect();
        insert_templates(&database, &template_ids, setup.workload.stock_per_sku).await?;
        Ok(ConditionalEngine {
            database,
            template_ids,
            audit: ClaimAudit::new(setup.claimants),
            next_coupon_id: AtomicI64::new(COUPON_ID_FIRST),
        })
    }

    async fn claim(&self, template_id: i64, user: u64) -> Result<Answer, sqlx::Error> {
        let mut transaction = self.database.begin().await?;
        let updated = sqlx::query("UPDATE coupon_template SET issued = issued + 1 WHERE id = ? AND issued < total")
            .bind(template_id)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        if updated == 0 {
            transaction.rollback().await?;
            return Ok(Answer::SoldOut);
        }
        let id = self.next_coupon_id.fetch_add(1, Ordering::Relaxed);
        match insert_coupon(id, user, template_id).execute(&mut *transaction).await {
            Ok(_) => {}
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                transaction.rollback().await?;
                return Ok(Answer::LimitReached);
            }
            Err(error) => return Err(error),
        }
        transaction.commit().await?;
        Ok(Answer::Claimed)
    }
}

#[async_trait]
impl Engine for ConditionalEngine {
    fn name(&self) -> &'static str {
        "mysql-conditional"
    }

    async fn attempt(&self, attempt: Attempt) -> Outcome {
        let user = self.audit.claimant(&attempt);
        let answer = match self.claim(self.template_ids[attempt.sku_index], user).await {
            Ok(answer) => answer,
            Err(error) => Answer::Failed(format!("mariadb: {error}")),
        };
        self.audit.record(&attempt, user, answer)
    }

    async fn read_back(&self) -> anyhow::Result<ReadBack> {
        let stored = StoredClaims {
            issued: sql_issued(&self.database, &self.template_ids).await?,
            held: sql_held(&self.database, &self.template_ids).await?,
        };
        Ok(self.audit.read_back(&stored, self.template_ids.len()))
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        self.database.close().await;
        Ok(())
    }
}
