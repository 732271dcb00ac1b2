//! Scenario `coupons`: seckill coupon claims over HTTP. The run's templates (the "SKUs", their
//! totals the stock) are created through the admin API; each attempt is one
//! `POST /v1/coupons/receive` by the users in turn (ticket `seq` is user index `seq % users`).
//! A 201 is an acknowledged coupon, a 409 `sold_out` or `limit_reached` a refusal (told apart
//! in the ledger), anything else an error.
//!
//! The checks after the run, per template, through the API (`issued` within what was
//! acknowledged and what failed, never past `total`) and, with `--database-url`, in
//! `coupon_template` and `coupon_record`: `issued` equals the coupon rows and is at most
//! `total` (beyond it: over-issued, counted as oversold); no user holds more than the per-user
//! limit; every acknowledged coupon is stored for its user, and no more coupons are stored
//! unacknowledged than claims failed; a `sold_out` answer means the total was issued and a
//! `limit_reached` one that the user holds the limit (both only when no claim failed, since a
//! failed claim may have counted while in flight). The comparisons are pure (`audit_template`,
//! `audit_api`); the reads feed them.

use super::api::{Answer, Api, Claim, TemplateReply};
use super::verify::driver_url;
use crate::check::CheckResult;
use crate::driver::{Attempt, Outcome};
use futures::StreamExt;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long the run's coupons stay valid: far past the run.
pub const VALID_FOR: Duration = Duration::from_secs(30 * 24 * 3_600);
/// Users or coupons named in a problem before the rest are only counted.
pub const NAMED_MAX: usize = 3;
/// The largest per-user limit tianji accepts.
pub const PER_USER_LIMIT_MAX: i64 = 1_000;

/// One coupon the server acknowledged with 201.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub user_id: i64,
    pub template_index: usize,
    pub coupon_id: i64,
}

/// Every answer of the run that the checks need: the coupons acknowledged, the users refused
/// at the limit, the sold-out refusals per template.
pub struct ClaimLedger {
    claimed: Mutex<Vec<Claimed>>,
    refused_at_limit: Mutex<Vec<(i64, usize)>>,
    sold_out: Vec<AtomicU64>,
}

impl ClaimLedger {
    pub fn new(template_count: usize) -> Self {
        ClaimLedger {
            claimed: Mutex::new(Vec::new()),
            refused_at_limit: Mutex::new(Vec::new()),
            sold_out: (0..template_count).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn push<T>(list: &Mutex<Vec<T>>, value: T) {
        // Pushing cannot leave the list half-written, so a poisoned lock is still sound.
        list.lock().unwrap_or_else(|p| p.into_inner()).push(value);
    }

    pub fn record_claimed(&self, claimed: Claimed) {
        Self::push(&self.claimed, claimed);
    }

    pub fn record_limit_reached(&self, user_id: i64, template_index: usize) {
        Self::push(&self.refused_at_limit, (user_id, template_index));
    }

    pub fn record_sold_out(&self, template_index: usize) {
        self.sold_out[template_index].fetch_add(1, Ordering::Relaxed);
    }

    /// (claimed, refused sold out, refused at the limit) over every template.
    pub fn counts(&self) -> (u64, u64, u64) {
        let claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
        let limit = self.refused_at_limit.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
        (claimed, self.sold_out.iter().map(|n| n.load(Ordering::Relaxed)).sum(), limit)
    }

    /// The answers of each template, with the rules it was created with.
    pub fn per_template(&self, templates: &[TemplateReply]) -> Vec<TemplateClaims> {
        let mut claims: Vec<TemplateClaims> = templates
            .iter()
            .zip(&self.sold_out)
            .map(|(template, sold_out)| TemplateClaims {
                template_id: template.template_id,
                total: template.total,
                per_user_limit: template.per_user_limit,
                claimed: Vec::new(),
                sold_out: sold_out.load(Ordering::Relaxed),
                refused_at_limit: Vec::new(),
            })
            .collect();
        for claimed in self.claimed.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            claims[claimed.template_index].claimed.push((claimed.user_id, claimed.coupon_id));
        }
        for &(user_id, index) in self.refused_at_limit.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            claims[index].refused_at_limit.push(user_id);
        }
        claims
    }
}

pub struct CouponContext {
    pub api: Arc<Api>,
    pub templates: Vec<TemplateReply>,
    pub ledger: ClaimLedger,
}

impl CouponContext {
    pub fn template_ids(&self) -> Vec<i64> {
        self.templates.iter().map(|t| t.template_id).collect()
    }

    /// One claim of template `attempt.sku_index` by the user whose turn it is.
    pub async fn attempt(&self, attempt: Attempt) -> Outcome {
        let user = (attempt.seq % self.api.user_tokens.len() as u64) as usize;
        // Tokens are minted for user ids 1..=users: user index i is user id i + 1.
        let user_id = user as i64 + 1;
        let template_id = self.templates[attempt.sku_index].template_id;
        match self.api.receive(user, template_id).await {
            Claim::Claimed(coupon) if coupon.template_id == template_id && coupon.status == "unused" => {
                let claimed = Claimed { user_id, template_index: attempt.sku_index, coupon_id: coupon.coupon_id };
                self.ledger.record_claimed(claimed);
                Outcome::Ok { units: 1 }
            }
            Claim::Claimed(coupon) => Outcome::Error(format!(
                "claim of template {template_id} answered coupon {} of template {}, {}",
                coupon.coupon_id, coupon.template_id, coupon.status
            )),
            Claim::SoldOut => {
                self.ledger.record_sold_out(attempt.sku_index);
                Outcome::Rejected
            }
            Claim::LimitReached => {
                self.ledger.record_limit_reached(user_id, attempt.sku_index);
                Outcome::Rejected
            }
            Claim::Failed(message) => Outcome::Error(format!("receive: {message}")),
        }
    }
}

/// `count` templates of `total` coupons and `per_user_limit` each, through the admin API, in
/// index order.
pub async fn create_templates(
    api: &Api,
    count: usize,
    total: i64,
    per_user_limit: i64,
) -> anyhow::Result<Vec<TemplateReply>> {
    if !(1..=PER_USER_LIMIT_MAX).contains(&per_user_limit) {
        anyhow::bail!("--per-user-limit must be between 1 and {PER_USER_LIMIT_MAX}");
    }
    let valid_until = humantime::format_rfc3339_seconds(SystemTime::now() + VALID_FOR).to_string();
    let valid_until = valid_until.as_str();
    let answers: Vec<Answer<TemplateReply>> = futures::stream::iter(0..count)
        .map(|index| async move {
            api.create_template(&format!("load template {index}"), total, per_user_limit, valid_until).await
        })
        .buffered(super::SKU_CREATE_CONCURRENCY)
        .collect()
        .await;
    let mut templates = Vec::with_capacity(count);
    for answer in answers {
        match answer {
            Answer::Done(template) if (template.total, template.issued) == (total, 0) => templates.push(template),
            Answer::Done(template) => anyhow::bail!("created template {template:?}, asked for a total of {total}"),
            Answer::SoldOut => anyhow::bail!("creating a coupon template answered insufficient_stock"),
            Answer::Failed(message) => anyhow::bail!("creating a coupon template failed: {message}"),
        }
    }
    Ok(templates)
}

/// What the run answered for one template, and the rules it was created with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateClaims {
    pub template_id: i64,
    pub total: i64,
    pub per_user_limit: i64,
    /// (user id, coupon id) of every 201.
    pub claimed: Vec<(i64, i64)>,
    pub sold_out: u64,
    /// The user of every `limit_reached`.
    pub refused_at_limit: Vec<i64>,
}

/// One template as the database holds it: its row (`None`: no row) and every coupon of it,
/// coupon id -> user id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateStored {
    pub row: Option<TemplateReply>,
    pub coupons: HashMap<i64, i64>,
}

/// "a, b, c" of the first `NAMED_MAX` items, "and N more" after.
fn named<T: std::fmt::Display>(items: &[T]) -> String {
    let mut text: Vec<String> = items.iter().take(NAMED_MAX).map(ToString::to_string).collect();
    if items.len() > NAMED_MAX {
        text.push(format!("and {} more", items.len() - NAMED_MAX));
    }
    text.join(", ")
}

/// Counts per user id, the users over `limit` (sorted, with their counts).
fn over_limit(users: impl Iterator<Item = i64>, limit: i64) -> (HashMap<i64, i64>, Vec<String>) {
    let mut held: HashMap<i64, i64> = HashMap::new();
    users.for_each(|user| *held.entry(user).or_insert(0) += 1);
    let mut over: Vec<(i64, i64)> = held.iter().filter(|(_, &n)| n > limit).map(|(&u, &n)| (u, n)).collect();
    over.sort_unstable();
    (held, over.iter().map(|(user, n)| format!("user {user} holds {n}")).collect())
}

/// Adds `excess` over-issued coupons of a template to the oversold count, with a problem.
fn over_issued(result: &mut CheckResult, claims: &TemplateClaims, excess: i64, detail: String) {
    if excess > 0 {
        result.oversold += excess as u64;
        result.problem(format!(
            "template {}: OVER-ISSUED by {excess} coupons of a total of {} ({detail})",
            claims.template_id, claims.total
        ));
    }
}

/// Compares what the database holds for one template with what the run answered (see the
/// module doc). `errors` is the number of claims of the run that failed (any template).
pub fn audit_template(claims: &TemplateClaims, stored: &TemplateStored, errors: u64, result: &mut CheckResult) {
    let id = claims.template_id;
    let Some(row) = &stored.row else {
        result.problem(format!("template {id}: no coupon_template row"));
        return;
    };
    if (row.total, row.per_user_limit) != (claims.total, claims.per_user_limit) {
        result.problem(format!(
            "template {id}: stored total {} per-user limit {}, created with {} and {}",
            row.total, row.per_user_limit, claims.total, claims.per_user_limit
        ));
    }
    let rows = stored.coupons.len() as i64;
    let acked = claims.claimed.len() as i64;
    if row.issued != rows {
        result.problem(format!("template {id}: issued {} but {rows} coupon rows", row.issued));
    }
    let most = row.issued.max(rows).max(acked);
    over_issued(
        result,
        claims,
        most - claims.total,
        format!("issued {}, {rows} rows, {acked} acknowledged", row.issued),
    );
    let (held, over) = over_limit(stored.coupons.values().copied(), claims.per_user_limit);
    if !over.is_empty() {
        result.problem(format!(
            "template {id}: LIMIT BREACHED: {} users hold more than {} coupons ({})",
            over.len(),
            claims.per_user_limit,
            named(&over)
        ));
    }
    let (_, over) = over_limit(claims.claimed.iter().map(|&(user, _)| user), claims.per_user_limit);
    if !over.is_empty() {
        result.problem(format!(
            "template {id}: LIMIT BREACHED: {} users were acknowledged more than {} coupons ({})",
            over.len(),
            claims.per_user_limit,
            named(&over)
        ));
    }
    compare_coupons(claims, stored, errors, result);
    if errors > 0 {
        return;
    }
    if claims.sold_out > 0 && row.issued < claims.total {
        result.problem(format!(
            "template {id}: {} claims answered sold_out, but {} of {} issued",
            claims.sold_out, row.issued, claims.total
        ));
    }
    let mut short: Vec<i64> = claims
        .refused_at_limit
        .iter()
        .copied()
        .filter(|user| held.get(user).copied().unwrap_or(0) < claims.per_user_limit)
        .collect();
    short.sort_unstable();
    short.dedup();
    if !short.is_empty() {
        result.problem(format!(
            "template {id}: {} users answered limit_reached hold fewer than {} coupons (users {})",
            short.len(),
            claims.per_user_limit,
            named(&short)
        ));
    }
}

/// Every acknowledged coupon stored once, for its user; no more stored unacknowledged than
/// claims failed.
fn compare_coupons(claims: &TemplateClaims, stored: &TemplateStored, errors: u64, result: &mut CheckResult) {
    let id = claims.template_id;
    let mut acked = HashSet::with_capacity(claims.claimed.len());
    let (mut twice, mut missing, mut misowned) = (Vec::new(), Vec::new(), Vec::new());
    for &(user, coupon) in &claims.claimed {
        if !acked.insert(coupon) {
            twice.push(coupon);
        }
        match stored.coupons.get(&coupon) {
            None => missing.push(coupon),
            Some(&owner) if owner != user => misowned.push(format!("{coupon} of user {owner} acknowledged to {user}")),
            Some(_) => {}
        }
    }
    if !twice.is_empty() {
        result.problem(format!("template {id}: {} coupons acknowledged twice ({})", twice.len(), named(&twice)));
    }
    if !missing.is_empty() {
        result.problem(format!(
            "template {id}: {} acknowledged coupons not stored ({})",
            missing.len(),
            named(&missing)
        ));
    }
    if !misowned.is_empty() {
        result.problem(format!(
            "template {id}: {} coupons stored for another user ({})",
            misowned.len(),
            named(&misowned)
        ));
    }
    let unacked = stored.coupons.keys().filter(|coupon| !acked.contains(coupon)).count() as u64;
    if unacked > errors {
        result.problem(format!(
            "template {id}: {unacked} coupons stored but never acknowledged, and only {errors} claims failed"
        ));
    }
}

/// Compares the template as the API shows it after the run with what the run answered.
pub fn audit_api(claims: &TemplateClaims, read: &TemplateReply, errors: u64, result: &mut CheckResult) {
    let id = claims.template_id;
    if (read.template_id, read.total, read.per_user_limit) != (id, claims.total, claims.per_user_limit) {
        result.problem(format!(
            "template {id}: read back as {} with total {} per-user limit {}, created with {} and {}",
            read.template_id, read.total, read.per_user_limit, claims.total, claims.per_user_limit
        ));
    }
    let acked = claims.claimed.len() as i64;
    if read.issued < acked || read.issued > acked + errors as i64 {
        result.problem(format!("template {id}: issued {} but {acked} acknowledged and {errors} failed", read.issued));
    }
    let most = read.issued.max(acked);
    over_issued(result, claims, most - claims.total, format!("issued {}, {acked} acknowledged", read.issued));
    if errors == 0 && claims.sold_out > 0 && read.issued < claims.total {
        result.problem(format!(
            "template {id}: {} claims answered sold_out, but {} of {} issued",
            claims.sold_out, read.issued, claims.total
        ));
    }
}

/// Reads every template back through the API and audits it.
pub async fn check_api(api: &Api, claims: &[TemplateClaims], errors: u64) -> CheckResult {
    let mut result = CheckResult::default();
    let answers: Vec<Answer<TemplateReply>> = futures::stream::iter(claims)
        .map(|template| api.template(template.template_id))
        .buffered(super::verify::VERIFY_CONCURRENCY)
        .collect()
        .await;
    for (template, answer) in claims.iter().zip(answers) {
        let Answer::Done(read) = answer else {
            result.problem(format!("template {} cannot be read back", template.template_id));
            continue;
        };
        result.units_taken += read.issued;
        audit_api(template, &read, errors, &mut result);
    }
    result
}

/// Reads the templates' rows and coupons from the server's database and audits them.
pub async fn check_database(url: &str, claims: &[TemplateClaims], errors: u64) -> anyhow::Result<CheckResult> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(2)
        .connect(&driver_url(url))
        .await
        .map_err(|e| anyhow::anyhow!("connecting to --database-url to verify: {e}"))?;
    let ids: Vec<i64> = claims.iter().map(|c| c.template_id).collect();
    let stored = read_stored(&pool, &ids).await;
    pool.close().await;
    let mut result = CheckResult::default();
    for (template, stored) in claims.iter().zip(stored?) {
        result.units_taken += stored.row.as_ref().map_or(0, |row| row.issued);
        result.order_rows += stored.coupons.len() as u64;
        audit_template(template, &stored, errors, &mut result);
    }
    Ok(result)
}

/// Each template's row and coupons, in the order of `template_ids` (ids are snowflakes: the
/// run's templates lie in one id range, shared at most with templates made meanwhile).
async fn read_stored(pool: &AnyPool, template_ids: &[i64]) -> anyhow::Result<Vec<TemplateStored>> {
    let index_of: HashMap<i64, usize> = template_ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let (low, high) = (template_ids.iter().min().copied(), template_ids.iter().max().copied());
    let (low, high) = (low.unwrap_or(0), high.unwrap_or(0));
    let mut stored = vec![TemplateStored::default(); template_ids.len()];
    let rows = sqlx::query("SELECT id, total, issued, per_user_limit FROM coupon_template WHERE id >= ? AND id <= ?")
        .bind(low)
        .bind(high)
        .fetch_all(pool)
        .await?;
    for row in rows {
        let template_id: i64 = row.try_get("id")?;
        let Some(&index) = index_of.get(&template_id) else { continue };
        stored[index].row = Some(TemplateReply {
            template_id,
            total: row.try_get("total")?,
            issued: row.try_get("issued")?,
            per_user_limit: row.try_get("per_user_limit")?,
        });
    }
    let rows =
        sqlx::query("SELECT id, user_id, template_id FROM coupon_record WHERE template_id >= ? AND template_id <= ?")
            .bind(low)
            .bind(high)
            .fetch_all(pool)
            .await?;
    for row in rows {
        let Some(&index) = index_of.get(&row.try_get::<i64, _>("template_id")?) else { continue };
        stored[index].coupons.insert(row.try_get("id")?, row.try_get("user_id")?);
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(total: i64, limit: i64, claimed: &[(i64, i64)]) -> TemplateClaims {
        TemplateClaims {
            template_id: 9,
            total,
            per_user_limit: limit,
            claimed: claimed.to_vec(),
            sold_out: 0,
            refused_at_limit: Vec::new(),
        }
    }

    fn row(total: i64, issued: i64, limit: i64) -> TemplateReply {
        TemplateReply { template_id: 9, total, issued, per_user_limit: limit }
    }

    fn stored(total: i64, issued: i64, limit: i64, coupons: &[(i64, i64)]) -> TemplateStored {
        // Claimed pairs are (user, coupon); stored ones coupon -> user.
        TemplateStored {
            row: Some(row(total, issued, limit)),
            coupons: coupons.iter().map(|&(user, coupon)| (coupon, user)).collect(),
        }
    }

    fn audit(claims: &TemplateClaims, stored: &TemplateStored, errors: u64) -> CheckResult {
        let mut result = CheckResult::default();
        audit_template(claims, stored, errors, &mut result);
        result
    }

    #[test]
    fn a_store_holding_what_was_acknowledged_passes() {
        let coupons = [(1, 100), (1, 101), (2, 102)];
        let mut run = claims(3, 2, &coupons);
        run.sold_out = 4;
        run.refused_at_limit = vec![1, 1];
        let result = audit(&run, &stored(3, 3, 2, &coupons), 0);
        assert!(result.passed(), "{}", result.summary());
        let mut api = CheckResult::default();
        audit_api(&run, &row(3, 3, 2), 0, &mut api);
        assert!(api.passed(), "{}", api.summary());
    }

    #[test]
    fn issuing_past_the_total_is_oversold() {
        let coupons = [(1, 100), (2, 101), (3, 102)];
        let result = audit(&claims(2, 1, &coupons), &stored(2, 3, 1, &coupons), 0);
        assert_eq!(result.oversold, 1);
        assert!(!result.passed());
        assert_eq!(
            result.problems,
            vec!["template 9: OVER-ISSUED by 1 coupons of a total of 2 (issued 3, 3 rows, 3 acknowledged)"]
        );
        let mut api = CheckResult::default();
        audit_api(&claims(2, 1, &coupons), &row(2, 3, 1), 0, &mut api);
        assert_eq!(api.oversold, 1, "the API's issued past the total is over-issue too");
    }

    #[test]
    fn rows_beyond_the_issued_counter_are_over_issue_and_a_mismatch() {
        let coupons = [(1, 100), (2, 101), (3, 102)];
        let result = audit(&claims(2, 1, &coupons[..2]), &stored(2, 2, 1, &coupons), 0);
        assert_eq!(result.oversold, 1);
        assert_eq!(
            result.problems,
            vec![
                "template 9: issued 2 but 3 coupon rows",
                "template 9: OVER-ISSUED by 1 coupons of a total of 2 (issued 2, 3 rows, 2 acknowledged)",
                "template 9: 1 coupons stored but never acknowledged, and only 0 claims failed",
            ]
        );
    }

    #[test]
    fn a_user_over_the_limit_is_a_breach() {
        let coupons = [(1, 100), (1, 101), (2, 102)];
        let result = audit(&claims(10, 1, &coupons), &stored(10, 3, 1, &coupons), 0);
        assert!(!result.passed());
        assert_eq!(result.oversold, 0);
        assert_eq!(
            result.problems,
            vec![
                "template 9: LIMIT BREACHED: 1 users hold more than 1 coupons (user 1 holds 2)",
                "template 9: LIMIT BREACHED: 1 users were acknowledged more than 1 coupons (user 1 holds 2)",
            ]
        );
    }

    #[test]
    fn lost_misowned_and_repeated_coupons_are_reported() {
        let acknowledged = [(1, 100), (2, 101), (3, 101), (4, 103)];
        let held = [(1, 100), (5, 101)];
        let result = audit(&claims(10, 5, &acknowledged), &stored(10, 2, 5, &held), 0);
        assert_eq!(
            result.problems,
            vec![
                "template 9: 1 coupons acknowledged twice (101)",
                "template 9: 1 acknowledged coupons not stored (103)",
                "template 9: 2 coupons stored for another user (101 of user 5 acknowledged to 2, 101 of user 5 \
                 acknowledged to 3)",
            ]
        );
    }

    #[test]
    fn failed_claims_may_have_stored_a_coupon() {
        let held = [(1, 100), (2, 101)];
        let result = audit(&claims(10, 1, &held[..1]), &stored(10, 2, 1, &held), 1);
        assert!(result.passed(), "{}", result.summary());
        let result = audit(&claims(10, 1, &held[..1]), &stored(10, 2, 1, &held), 0);
        assert!(!result.passed());
        let mut api = CheckResult::default();
        audit_api(&claims(10, 1, &held[..1]), &row(10, 2, 1), 1, &mut api);
        assert!(api.passed(), "{}", api.summary());
        audit_api(&claims(10, 1, &held[..1]), &row(10, 0, 1), 1, &mut api);
        assert_eq!(api.problems, vec!["template 9: issued 0 but 1 acknowledged and 1 failed"]);
    }

    #[test]
    fn refusals_must_match_the_end_state_when_no_claim_failed() {
        let held = [(1, 100)];
        let mut run = claims(5, 1, &held);
        run.sold_out = 1;
        run.refused_at_limit = vec![2, 1];
        let result = audit(&run, &stored(5, 1, 1, &held), 0);
        assert_eq!(
            result.problems,
            vec![
                "template 9: 1 claims answered sold_out, but 1 of 5 issued",
                "template 9: 1 users answered limit_reached hold fewer than 1 coupons (users 2)",
            ]
        );
        assert!(audit(&run, &stored(5, 1, 1, &held), 1).passed(), "a failed claim may have been in flight");
    }

    #[test]
    fn a_template_without_its_row_or_with_other_rules_is_a_problem() {
        let missing = TemplateStored { row: None, coupons: HashMap::new() };
        assert_eq!(audit(&claims(5, 1, &[]), &missing, 0).problems, vec!["template 9: no coupon_template row"]);
        let result = audit(&claims(5, 1, &[]), &stored(6, 0, 1, &[]), 0);
        assert_eq!(result.problems, vec!["template 9: stored total 6 per-user limit 1, created with 5 and 1"]);
    }

    #[test]
    fn the_ledger_splits_the_answers_by_template() {
        let ledger = ClaimLedger::new(2);
        ledger.record_claimed(Claimed { user_id: 1, template_index: 1, coupon_id: 50 });
        ledger.record_claimed(Claimed { user_id: 2, template_index: 0, coupon_id: 51 });
        ledger.record_limit_reached(1, 1);
        ledger.record_sold_out(0);
        ledger.record_sold_out(0);
        assert_eq!(ledger.counts(), (2, 2, 1));
        let templates = [row(10, 0, 1), TemplateReply { template_id: 8, ..row(20, 0, 2) }];
        let split = ledger.per_template(&templates);
        assert_eq!((split[0].template_id, split[0].claimed.clone(), split[0].sold_out), (9, vec![(2, 51)], 2));
        assert_eq!((split[1].template_id, split[1].total, split[1].per_user_limit), (8, 20, 2));
        assert_eq!((split[1].claimed.clone(), split[1].refused_at_limit.clone()), (vec![(1, 50)], vec![1]));
    }

    #[test]
    fn long_lists_are_cut_after_a_few_names() {
        assert_eq!(named(&[1, 2]), "1, 2");
        assert_eq!(named(&[1, 2, 3, 4, 5]), "1, 2, 3, and 2 more");
    }
}
