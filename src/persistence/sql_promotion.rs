//! The SQL of promotions (sales, purchase limits, coupon templates and coupons), shared by
//! MariaDB and SQLite like `sql.rs`, whose helpers it uses: what a batch reads about them
//! inside its transaction, how the accepted changes are written, and the reads that start
//! user and template actors.

use super::plan::{Facts, Plan, TemplateRow, Wanted};
use super::sql::{expect_rows, insert_rows, push_list, push_pairs, statements, SqlStore, ROWS_PER_STATEMENT_MAX};
use super::{Change, CouponIssue, NewTemplate, StoreError, TemplateState, UserState};
use crate::domain::coupon::{Coupon, CouponKind, CouponRules, CouponStatus, TemplateDraft};
use crate::domain::sale::Sale;
use crate::domain::{Cents, CouponId, OrderId, SkuId, TemplateId, UserId};
use sqlx::any::{Any, AnyRow};
use sqlx::{AnyConnection, QueryBuilder, Row};
use std::collections::HashMap;

pub(super) const COUPON_COLUMNS: &str = "id, user_id, template_id, status, order_id, valid_until";

pub(super) fn coupon_from_row(row: &AnyRow) -> Result<Coupon, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Coupon {
        id: CouponId::new(row.try_get("id")?),
        template_id: TemplateId::new(row.try_get("template_id")?),
        user_id: UserId::new(row.try_get("user_id")?),
        status: CouponStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("coupon status {status}")))?,
        order_id: row.try_get::<Option<i64>, _>("order_id")?.map(OrderId::new),
        valid_until_ms: row.try_get("valid_until")?,
    })
}

/// The sale columns of an `inventory` row.
pub(super) fn sale_from_row(row: &AnyRow) -> Result<Sale, StoreError> {
    Ok(Sale {
        price_cents: row.try_get::<Option<i64>, _>("sale_price_cents")?.map(Cents::new),
        starts_at_ms: row.try_get("sale_starts_at")?,
        ends_at_ms: row.try_get("sale_ends_at")?,
        per_user_limit: row.try_get("per_user_limit")?,
    })
}

const TEMPLATE_COLUMNS: &str = "id, name, kind, discount_cents, percent_off, max_discount_cents, min_spend_cents, \
     total, issued, per_user_limit, claim_starts_at, claim_ends_at, valid_until";

fn template_from_row(row: &AnyRow) -> Result<TemplateState, StoreError> {
    let kind_name: String = row.try_get("kind")?;
    let kind = match kind_name.as_str() {
        "amount_off" => CouponKind::AmountOff {
            discount_cents: Cents::new(
                row.try_get::<Option<i64>, _>("discount_cents")?
                    .ok_or_else(|| StoreError::Corrupt("amount_off template without discount_cents".into()))?,
            ),
        },
        "percent_off" => CouponKind::PercentOff {
            percent_off: row
                .try_get::<Option<i64>, _>("percent_off")?
                .ok_or_else(|| StoreError::Corrupt("percent_off template without percent_off".into()))?,
            max_discount_cents: row.try_get::<Option<i64>, _>("max_discount_cents")?.map(Cents::new),
        },
        other => return Err(StoreError::Corrupt(format!("coupon kind {other}"))),
    };
    let draft = TemplateDraft {
        name: row.try_get("name")?,
        rules: CouponRules {
            kind,
            min_spend_cents: Cents::new(row.try_get("min_spend_cents")?),
            valid_until_ms: row.try_get("valid_until")?,
        },
        total: row.try_get("total")?,
        per_user_limit: row.try_get("per_user_limit")?,
        claim_starts_at_ms: row.try_get("claim_starts_at")?,
        claim_ends_at_ms: row.try_get("claim_ends_at")?,
    };
    let issued: i64 = row.try_get("issued")?;
    if !(0..=draft.total).contains(&issued) {
        return Err(StoreError::Corrupt(format!("template issued {issued} of {}", draft.total)));
    }
    Ok(TemplateState { id: TemplateId::new(row.try_get("id")?), draft, issued })
}

impl SqlStore {
    /// Locks and reads the promotion rows `wanted` names, inside the batch's transaction.
    pub(super) async fn read_promotion_facts(
        &self,
        tx: &mut AnyConnection,
        wanted: &Wanted,
        facts: &mut Facts,
    ) -> Result<(), StoreError> {
        let lock = self.dialect.lock_rows();
        let purchases: Vec<(i64, i64)> = wanted.purchases.iter().map(|(u, s)| (u.get(), s.get())).collect();
        for chunk in statements(&purchases, ROWS_PER_STATEMENT_MAX) {
            let mut select = QueryBuilder::<Any>::new("SELECT user_id, sku_id, units FROM user_sku_purchase WHERE ");
            push_pairs(&mut select, ("user_id", "sku_id"), chunk);
            select.push(lock);
            for row in select.build().fetch_all(&mut *tx).await? {
                let key = (UserId::new(row.try_get("user_id")?), SkuId::new(row.try_get("sku_id")?));
                facts.purchases.insert(key, row.try_get("units")?);
            }
        }
        for chunk in statements(&wanted.templates, ROWS_PER_STATEMENT_MAX) {
            let mut select =
                QueryBuilder::<Any>::new("SELECT id, total, issued, per_user_limit FROM coupon_template WHERE id IN ");
            push_list(&mut select, chunk.iter().map(|id| id.get()));
            select.push(lock);
            for row in select.build().fetch_all(&mut *tx).await? {
                let template = TemplateRow {
                    total: row.try_get("total")?,
                    issued: row.try_get("issued")?,
                    per_user_limit: row.try_get("per_user_limit")?,
                };
                facts.templates.insert(TemplateId::new(row.try_get("id")?), template);
            }
        }
        let claims: Vec<(i64, i64)> = wanted.claims.iter().map(|(u, t)| (u.get(), t.get())).collect();
        for chunk in statements(&claims, ROWS_PER_STATEMENT_MAX) {
            // Not locked: the template rows are, and the unique (user, template, seq) key
            // settles any claim that raced past them.
            let mut select =
                QueryBuilder::<Any>::new("SELECT user_id, template_id, MAX(seq) AS seq FROM coupon_record WHERE ");
            push_pairs(&mut select, ("user_id", "template_id"), chunk);
            select.push(" GROUP BY user_id, template_id");
            for row in select.build().fetch_all(&mut *tx).await? {
                let key = (UserId::new(row.try_get("user_id")?), TemplateId::new(row.try_get("template_id")?));
                facts.claims.insert(key, row.try_get("seq")?);
            }
        }
        for chunk in statements(&wanted.coupons, ROWS_PER_STATEMENT_MAX) {
            let mut select =
                QueryBuilder::<Any>::new(format!("SELECT {COUPON_COLUMNS} FROM coupon_record WHERE id IN "));
            push_list(&mut select, chunk.iter().map(|id| id.get()));
            select.push(lock);
            for row in select.build().fetch_all(&mut *tx).await? {
                let coupon = coupon_from_row(&row)?;
                facts.coupons.insert(coupon.id, coupon);
            }
        }
        Ok(())
    }
}

/// Writes what the accepted changes of `plan` do to promotion rows.
pub(super) async fn write_promotion(
    tx: &mut AnyConnection,
    accepted: &[&Change],
    plan: &Plan,
    now_ms: i64,
) -> Result<(), StoreError> {
    for sale in accepted.iter().filter_map(|c| c.sale.as_ref()) {
        let result = sqlx::query(
            "UPDATE inventory SET sale_price_cents = ?, sale_starts_at = ?, sale_ends_at = ?, per_user_limit = ?, \
             updated_at = ? WHERE sku_id = ? AND epoch = ?",
        )
        .bind(sale.sale.price_cents.map(Cents::get))
        .bind(sale.sale.starts_at_ms)
        .bind(sale.sale.ends_at_ms)
        .bind(sale.sale.per_user_limit)
        .bind(now_ms)
        .bind(sale.sku_id.get())
        .bind(sale.epoch)
        .execute(&mut *tx)
        .await?;
        expect_rows(result.rows_affected(), 1, "sale")?;
    }

    let (new_rows, old_rows): (Vec<_>, Vec<_>) = plan.purchases.iter().partition(|(_, (existed, _))| !existed);
    insert_rows(tx, "INSERT INTO user_sku_purchase (user_id, sku_id, units, updated_at)", &new_rows, |row, entry| {
        let ((user_id, sku_id), (_, units)) = entry;
        row.push_bind(user_id.get()).push_bind(sku_id.get()).push_bind(*units).push_bind(now_ms);
    })
    .await?;
    for chunk in statements(&old_rows, ROWS_PER_STATEMENT_MAX / 2) {
        let mut update = QueryBuilder::<Any>::new("UPDATE user_sku_purchase SET units = CASE");
        for ((user_id, sku_id), (_, units)) in chunk {
            update.push(" WHEN user_id = ").push_bind(user_id.get());
            update.push(" AND sku_id = ").push_bind(sku_id.get()).push(" THEN ").push_bind(*units);
        }
        update.push(" END, updated_at = ").push_bind(now_ms).push(" WHERE ");
        let pairs: Vec<(i64, i64)> = chunk.iter().map(|((u, s), _)| (u.get(), s.get())).collect();
        push_pairs(&mut update, ("user_id", "sku_id"), &pairs);
        let result = update.build().execute(&mut *tx).await?;
        expect_rows(result.rows_affected(), chunk.len(), "purchase counts")?;
    }

    let issues: Vec<&CouponIssue> = accepted.iter().filter_map(|c| c.issue.as_ref()).collect();
    insert_rows(
        tx,
        "INSERT INTO coupon_record (id, user_id, template_id, seq, status, order_id, valid_until, used_at, \
         created_at, updated_at)",
        &issues,
        |row, issue| {
            let coupon = issue.coupon;
            assert_eq!(coupon.status, CouponStatus::Unused, "a coupon is issued unused");
            row.push_bind(coupon.id.get())
                .push_bind(coupon.user_id.get())
                .push_bind(coupon.template_id.get())
                .push_bind(issue.seq)
                .push_bind(coupon.status.as_str())
                .push_bind(None::<i64>)
                .push_bind(coupon.valid_until_ms)
                .push_bind(None::<i64>)
                .push_bind(now_ms)
                .push_bind(now_ms);
        },
    )
    .await?;
    let templates: Vec<(&TemplateId, &i64)> = plan.templates.iter().collect();
    for chunk in statements(&templates, ROWS_PER_STATEMENT_MAX) {
        let mut update = QueryBuilder::<Any>::new("UPDATE coupon_template SET issued = CASE id");
        for (template_id, issued) in chunk {
            update.push(" WHEN ").push_bind(template_id.get()).push(" THEN ").push_bind(**issued);
        }
        update.push(" END, updated_at = ").push_bind(now_ms).push(" WHERE id IN ");
        push_list(&mut update, chunk.iter().map(|(id, _)| id.get()));
        let result = update.build().execute(&mut *tx).await?;
        expect_rows(result.rows_affected(), chunk.len(), "template issued counts")?;
    }

    let coupons: Vec<&Coupon> = plan.coupons.values().collect();
    for chunk in statements(&coupons, ROWS_PER_STATEMENT_MAX / 4) {
        let mut update = QueryBuilder::<Any>::new("UPDATE coupon_record SET status = CASE id");
        for coupon in chunk {
            update.push(" WHEN ").push_bind(coupon.id.get()).push(" THEN ").push_bind(coupon.status.as_str());
        }
        update.push(" END, order_id = CASE id");
        for coupon in chunk {
            update.push(" WHEN ").push_bind(coupon.id.get()).push(" THEN ").push_bind(coupon.order_id.map(|o| o.get()));
        }
        update.push(" END, used_at = CASE id");
        for coupon in chunk {
            let used_at = (coupon.status == CouponStatus::Used).then_some(now_ms);
            update.push(" WHEN ").push_bind(coupon.id.get()).push(" THEN ").push_bind(used_at);
        }
        update.push(" END, updated_at = ").push_bind(now_ms).push(" WHERE id IN ");
        push_list(&mut update, chunk.iter().map(|coupon| coupon.id.get()));
        let result = update.build().execute(&mut *tx).await?;
        expect_rows(result.rows_affected(), chunk.len(), "coupon moves")?;
    }
    Ok(())
}

/// The promotion side of `Store` for the SQL stores.
impl SqlStore {
    /// Fills each user's purchases, open coupons and claim counts.
    pub(super) async fn load_user_promotions(
        &self,
        user_ids: &[UserId],
        states: &mut HashMap<i64, UserState>,
    ) -> Result<(), StoreError> {
        for chunk in statements(user_ids, ROWS_PER_STATEMENT_MAX) {
            let ids = || chunk.iter().map(|id| id.get());
            let mut select =
                QueryBuilder::<Any>::new("SELECT user_id, sku_id, units FROM user_sku_purchase WHERE user_id IN ");
            push_list(&mut select, ids());
            for row in select.build().fetch_all(&self.pool).await? {
                let state = states.entry(row.try_get("user_id")?).or_default();
                state.purchases.push((SkuId::new(row.try_get("sku_id")?), row.try_get("units")?));
            }
            let mut select =
                QueryBuilder::<Any>::new(format!("SELECT {COUPON_COLUMNS} FROM coupon_record WHERE status IN "));
            push_list(&mut select, [CouponStatus::Unused.as_str(), CouponStatus::Locked.as_str()]);
            select.push(" AND user_id IN ");
            push_list(&mut select, ids());
            select.push(" ORDER BY id");
            for row in select.build().fetch_all(&self.pool).await? {
                let coupon = coupon_from_row(&row)?;
                states.entry(coupon.user_id.get()).or_default().coupons.push(coupon);
            }
            let mut select = QueryBuilder::<Any>::new(
                "SELECT user_id, template_id, MAX(seq) AS seq FROM coupon_record WHERE user_id IN ",
            );
            push_list(&mut select, ids());
            select.push(" GROUP BY user_id, template_id");
            for row in select.build().fetch_all(&self.pool).await? {
                let state = states.entry(row.try_get("user_id")?).or_default();
                state.claims.push((TemplateId::new(row.try_get("template_id")?), row.try_get("seq")?));
            }
        }
        Ok(())
    }

    pub(super) async fn insert_template(&self, template: &NewTemplate) -> Result<(), StoreError> {
        let draft = &template.draft;
        let (discount_cents, percent_off, max_discount_cents) = match draft.rules.kind {
            CouponKind::AmountOff { discount_cents } => (Some(discount_cents.get()), None, None),
            CouponKind::PercentOff { percent_off, max_discount_cents } => {
                (None, Some(percent_off), max_discount_cents.map(Cents::get))
            }
        };
        sqlx::query(&format!(
            "INSERT INTO coupon_template ({TEMPLATE_COLUMNS}, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(template.id.get())
        .bind(draft.name.clone())
        .bind(draft.rules.kind.name())
        .bind(discount_cents)
        .bind(percent_off)
        .bind(max_discount_cents)
        .bind(draft.rules.min_spend_cents.get())
        .bind(draft.total)
        .bind(draft.per_user_limit)
        .bind(draft.claim_starts_at_ms)
        .bind(draft.claim_ends_at_ms)
        .bind(draft.rules.valid_until_ms)
        .bind(template.created_at_ms)
        .bind(template.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn select_templates(
        &self,
        template_ids: &[TemplateId],
    ) -> Result<Vec<Option<TemplateState>>, StoreError> {
        let mut found: HashMap<TemplateId, TemplateState> = HashMap::new();
        for chunk in statements(template_ids, ROWS_PER_STATEMENT_MAX) {
            let mut select =
                QueryBuilder::<Any>::new(format!("SELECT {TEMPLATE_COLUMNS} FROM coupon_template WHERE id IN "));
            push_list(&mut select, chunk.iter().map(|id| id.get()));
            for row in select.build().fetch_all(&self.pool).await? {
                let template = template_from_row(&row)?;
                found.insert(template.id, template);
            }
        }
        Ok(template_ids.iter().map(|id| found.remove(id)).collect())
    }

    pub(super) async fn select_coupon(&self, coupon_id: CouponId) -> Result<Option<Coupon>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COUPON_COLUMNS} FROM coupon_record WHERE id = ?"))
            .bind(coupon_id.get())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(coupon_from_row).transpose()
    }

    pub(super) async fn select_coupons(
        &self,
        user_id: UserId,
        status: Option<CouponStatus>,
        limit: u32,
    ) -> Result<Vec<Coupon>, StoreError> {
        let mut select =
            QueryBuilder::<Any>::new(format!("SELECT {COUPON_COLUMNS} FROM coupon_record WHERE user_id = "));
        select.push_bind(user_id.get());
        if let Some(status) = status {
            select.push(" AND status = ").push_bind(status.as_str());
        }
        select.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
        select.build().fetch_all(&self.pool).await?.iter().map(coupon_from_row).collect()
    }
}
