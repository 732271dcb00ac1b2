//! tianji's coupon claims, in process: templates are created with `Core::create_template` and
//! every attempt is `Core::receive_coupon`: serialized by the user's actor and the template's
//! actor, acknowledged only after the write pipeline committed the coupon row and the
//! template's `issued` in one transaction. `tianji-actor` commits to MariaDB, `tianji-memory`
//! runs the same actors on the in-memory store. The core is started as for reservations
//! (`tianji::start_core`).
//!
//! An overloaded actor or pipeline is counted as an error and not retried, as for placements.

use super::claims::{sql_held, sql_issued, sql_user_id, Answer, ClaimAudit, StoredClaims, PER_USER_LIMIT};
use super::tianji::{durable_store, memory_store, start_core, SKU_CREATE_CONCURRENCY};
use super::{Engine, ReadBack, Setup};
use crate::driver::{Attempt, Outcome};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use sqlx::mysql::MySqlPool;
use std::collections::HashMap;
use std::sync::Arc;
use tianji::actors::coupon::ClaimFailure;
use tianji::actors::{Core, COUPONS_READ_MAX};
use tianji::domain::coupon::{ClaimError, TemplateDraft, TemplateInput};
use tianji::domain::ids::wall_clock_ms;
use tianji::domain::{TemplateId, UserId};
use tianji::persistence::DynStore;

/// What each coupon takes off, in cents (the claim does not depend on it).
pub const DISCOUNT_CENTS: i64 = 100;
/// How long issued coupons stay valid: far past the run.
pub const VALID_FOR_MS: i64 = super::claims::COUPON_VALID_FOR_MS;
/// Users whose coupons the in-memory read-back lists at once.
pub const USERS_READ_CONCURRENCY: usize = 16;

pub struct TianjiClaimEngine {
    name: &'static str,
    core: Arc<Core>,
    store: DynStore,
    templates: Vec<TemplateId>,
    audit: ClaimAudit,
    /// The run's database, for reading back what the durable engine committed.
    database: Option<MySqlPool>,
}

impl TianjiClaimEngine {
    pub async fn durable(setup: &Setup<'_>) -> anyhow::Result<Self> {
        let (store, database) = durable_store(setup).await?;
        Self::start("tianji-actor", store, Some(database), setup).await
    }

    pub async fn in_memory(setup: &Setup<'_>) -> anyhow::Result<Self> {
        Self::start("tianji-memory", memory_store().await?, None, setup).await
    }

    async fn start(
        name: &'static str,
        store: DynStore,
        database: Option<MySqlPool>,
        setup: &Setup<'_>,
    ) -> anyhow::Result<Self> {
        let core = start_core(&store);
        let templates = create_templates(&core, setup.workload.sku_count, setup.workload.stock_per_sku).await?;
        Ok(TianjiClaimEngine { name, core, store, templates, audit: ClaimAudit::new(setup.claimants), database })
    }

    /// Coupons per (user, template index) from the memory store: the coupons of every user who
    /// claimed (the store has no listing by template).
    async fn memory_held(&self) -> anyhow::Result<HashMap<(u64, usize), i64>> {
        let index_of: HashMap<TemplateId, usize> = self.templates.iter().enumerate().map(|(i, &t)| (t, i)).collect();
        let store = &self.store;
        let listed: Vec<(u64, Vec<_>)> = futures::stream::iter(self.audit.users())
            .map(|user| async move {
                let coupons = store.list_coupons(UserId::new(sql_user_id(user)), None, COUPONS_READ_MAX).await?;
                anyhow::Ok((user, coupons))
            })
            .buffer_unordered(USERS_READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut held = HashMap::new();
        for (user, coupons) in listed {
            for coupon in coupons {
                let index = index_of.get(&coupon.template_id).copied().unwrap_or(usize::MAX);
                *held.entry((user, index)).or_insert(0) += 1;
            }
        }
        Ok(held)
    }
}

async fn create_templates(core: &Arc<Core>, count: usize, total: i64) -> anyhow::Result<Vec<TemplateId>> {
    let valid_until_ms = wall_clock_ms() as i64 + VALID_FOR_MS;
    futures::stream::iter(0..count)
        .map(|index| async move {
            let name = format!("load template {index}");
            let draft = TemplateDraft::parse(&TemplateInput {
                name: &name,
                kind: "amount_off",
                discount_cents: Some(DISCOUNT_CENTS),
                percent_off: None,
                max_discount_cents: None,
                min_spend_cents: 0,
                total,
                per_user_limit: PER_USER_LIMIT,
                claim_starts_at_ms: None,
                claim_ends_at_ms: None,
                valid_until_ms,
            })?;
            let created = core.create_template(draft).await?;
            assert_eq!((created.issued, created.draft.total), (0, total));
            anyhow::Ok(created.id)
        })
        // `buffered` keeps the order: template index i is `templates[i]`.
        .buffered(SKU_CREATE_CONCURRENCY)
        .try_collect()
        .await
}

fn answer(claimed: Result<tianji::domain::coupon::Coupon, ClaimFailure>, user: UserId, template: TemplateId) -> Answer {
    match claimed {
        Ok(coupon) if coupon.user_id == user && coupon.template_id == template => Answer::Claimed,
        Ok(coupon) => Answer::Failed(format!("claimed coupon {} of another user or template", coupon.id)),
        Err(ClaimFailure::Refused(ClaimError::SoldOut)) => Answer::SoldOut,
        Err(ClaimFailure::Refused(ClaimError::LimitReached)) => Answer::LimitReached,
        Err(ClaimFailure::Overloaded) => Answer::Failed("overloaded (mailbox or pipeline full)".into()),
        Err(other) => Answer::Failed(other.to_string()),
    }
}

#[async_trait]
impl Engine for TianjiClaimEngine {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn attempt(&self, attempt: Attempt) -> Outcome {
        let user = self.audit.claimant(&attempt);
        let (user_id, template) = (UserId::new(sql_user_id(user)), self.templates[attempt.sku_index]);
        let claimed = self.core.receive_coupon(user_id, template).await;
        self.audit.record(&attempt, user, answer(claimed, user_id, template))
    }

    async fn read_back(&self) -> anyhow::Result<ReadBack> {
        let ids: Vec<i64> = self.templates.iter().map(|t| t.get()).collect();
        let stored = match &self.database {
            Some(database) => {
                StoredClaims { issued: sql_issued(database, &ids).await?, held: sql_held(database, &ids).await? }
            }
            None => {
                let states = self.store.load_templates(&self.templates).await?;
                StoredClaims {
                    issued: states.into_iter().map(|state| state.map(|s| s.issued)).collect(),
                    held: self.memory_held().await?,
                }
            }
        };
        Ok(self.audit.read_back(&stored, self.templates.len()))
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        self.core.stop();
        if let Some(database) = &self.database {
            database.close().await;
        }
        Ok(())
    }
}
