//! What every coupon engine shares: who makes each claim (`Claimants`), the auditor that
//! remembers every acknowledged claim and every refusal at the per-user limit (`ClaimAudit`),
//! and the read-back of `coupon_template` / `coupon_record` in MariaDB.
//!
//! Guarantees of the audit, whatever the engine: per template, `issued` equals the coupons
//! stored and the claims acknowledged (through `check::check`, which also catches more than
//! `total`); no user holds more than `PER_USER_LIMIT` coupons of a template; every
//! acknowledged (user, template) holds its coupon and every stored one was acknowledged; a
//! user refused at the limit holds a coupon of that template.

use super::ReadBack;
use crate::check::SkuObserved;
use crate::driver::{Attempt, Outcome};
use sqlx::mysql::MySqlPool;
use sqlx::{QueryBuilder, Row};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Coupons of one template one user may hold, in every engine.
pub const PER_USER_LIMIT: i64 = 1;
/// A repeat claim is made by the user of the claim this many tickets before: with hundreds of
/// clients, usually still in flight, so the per-user limit is tested under a race.
pub const REPEAT_LAG: u64 = 7;
/// `--repeat-claims` is kept in parts per million, so which claims repeat is exact.
pub const SHARE_PARTS: u64 = 1_000_000;
/// Rows per INSERT while creating templates.
pub const ROWS_PER_INSERT_MAX: usize = 1_000;
/// How long an issued coupon stays valid: far past the run.
pub const COUPON_VALID_FOR_MS: i64 = 30 * 24 * 3_600 * 1_000;
/// Mismatched claims listed by name before the rest are only counted.
pub const CLAIMS_LISTED_MAX: usize = 3;

/// Maps each claim (its driver ticket) to the user making it: a new user per claim, except a
/// `repeat_share` of the claims, spread evenly, made by the user of the claim `REPEAT_LAG`
/// tickets before. A user is named by the ticket of their first claim (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimants {
    repeat_parts: u64,
}

impl Claimants {
    /// Precondition: `0 <= repeat_share <= 0.5` (checked by the CLI).
    pub fn new(repeat_share: f64) -> Self {
        assert!((0.0..=0.5).contains(&repeat_share), "repeat share {repeat_share} outside 0..=0.5");
        Claimants { repeat_parts: (repeat_share * SHARE_PARTS as f64).round() as u64 }
    }

    /// Whether ticket `seq` repeats an earlier claimant: the `k`-th repeat falls on the
    /// ticket where `seq * share` passes `k`.
    pub fn is_repeat(&self, seq: u64) -> bool {
        seq >= REPEAT_LAG && (seq + 1) * self.repeat_parts / SHARE_PARTS > seq * self.repeat_parts / SHARE_PARTS
    }

    pub fn user_of(&self, seq: u64) -> u64 {
        let mut first = seq;
        while self.is_repeat(first) {
            first -= REPEAT_LAG;
        }
        assert!(first <= seq && !self.is_repeat(first));
        first
    }

    /// Repeat claims among the first `attempts` tickets.
    pub fn repeats(&self, attempts: u64) -> u64 {
        (0..attempts).filter(|&seq| self.is_repeat(seq)).count() as u64
    }
}

impl fmt::Display for Claimants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let percent = self.repeat_parts as f64 * 100.0 / SHARE_PARTS as f64;
        write!(f, "{percent}% of claims repeat the user {REPEAT_LAG} tickets before, limit {PER_USER_LIMIT} per user")
    }
}

/// How one claim ended, as the engine understood it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Claimed,
    SoldOut,
    LimitReached,
    Failed(String),
}

/// Every claim's user and answer, kept beside the driver's counts (a mutex push per claim,
/// small next to a claim).
#[derive(Debug)]
pub struct ClaimAudit {
    claimants: Claimants,
    /// One past the highest ticket seen: every ticket below was attempted.
    tickets_seen: AtomicU64,
    sold_out: AtomicU64,
    acked: Mutex<Vec<(u64, usize)>>,
    refused_at_limit: Mutex<Vec<(u64, usize)>>,
}

impl ClaimAudit {
    pub fn new(claimants: Claimants) -> Self {
        ClaimAudit {
            claimants,
            tickets_seen: AtomicU64::new(0),
            sold_out: AtomicU64::new(0),
            acked: Mutex::new(Vec::new()),
            refused_at_limit: Mutex::new(Vec::new()),
        }
    }

    /// The user (0-based) making this claim.
    pub fn claimant(&self, attempt: &Attempt) -> u64 {
        self.tickets_seen.fetch_max(attempt.seq + 1, Ordering::Relaxed);
        self.claimants.user_of(attempt.seq)
    }

    /// Every user who made a claim so far, once each.
    pub fn users(&self) -> Vec<u64> {
        let tickets = self.tickets_seen.load(Ordering::Relaxed);
        (0..tickets).filter(|&seq| !self.claimants.is_repeat(seq)).collect()
    }

    /// Remembers the answer and turns it into the driver's outcome: both refusals are
    /// "rejected" (nothing issued), told apart in the notes.
    pub fn record(&self, attempt: &Attempt, user: u64, answer: Answer) -> Outcome {
        let lock = |list: &Mutex<Vec<(u64, usize)>>| {
            // Pushing cannot leave the list half-written, so a poisoned lock is still sound.
            list.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((user, attempt.sku_index));
        };
        match answer {
            Answer::Claimed => {
                lock(&self.acked);
                Outcome::Ok { units: 1 }
            }
            Answer::SoldOut => {
                self.sold_out.fetch_add(1, Ordering::Relaxed);
                Outcome::Rejected
            }
            Answer::LimitReached => {
                lock(&self.refused_at_limit);
                Outcome::Rejected
            }
            Answer::Failed(message) => Outcome::Error(message),
        }
    }

    /// Compares what the engine stored with what it answered (see the module doc) and fills the
    /// per-template rows for `check::check`.
    pub fn read_back(&self, stored: &StoredClaims, template_count: usize) -> ReadBack {
        let mut read = ReadBack::default();
        let mut rows = vec![0i64; template_count];
        let mut over_limit = 0;
        for (&(_, template), &held) in &stored.held {
            match rows.get_mut(template) {
                Some(count) => *count += held,
                None => read.problems.push(format!("coupons of unknown template #{template}")),
            }
            over_limit += u64::from(held > PER_USER_LIMIT);
        }
        if over_limit > 0 {
            read.problems.push(format!("{over_limit} users hold more than {PER_USER_LIMIT} coupon of a template"));
        }
        for (index, issued) in stored.issued.iter().enumerate().take(template_count) {
            let Some(issued) = *issued else {
                read.problems.push(format!("template #{index}: no issued count stored"));
                read.observed.push(SkuObserved::default());
                continue;
            };
            if issued != rows[index] {
                read.problems.push(format!("template #{index}: issued {issued} but {} coupons stored", rows[index]));
            }
            read.observed.push(SkuObserved {
                taken_units: issued,
                order_rows: rows[index] as u64,
                order_units: rows[index],
            });
        }
        self.compare_claims(&mut read, stored);
        read
    }

    fn compare_claims(&self, read: &mut ReadBack, stored: &StoredClaims) {
        let take = |list: &Mutex<Vec<(u64, usize)>>| list.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (acked, refused) = (take(&self.acked), take(&self.refused_at_limit));
        let acked_once: HashSet<(u64, usize)> = acked.iter().copied().collect();
        if acked_once.len() != acked.len() {
            read.problems
                .push(format!("{} claims acknowledged twice to the same user", acked.len() - acked_once.len()));
        }
        let unheld = |pair: &&(u64, usize)| !stored.held.contains_key(*pair);
        mismatch(read, "acknowledged but not stored", acked_once.iter().filter(unheld));
        mismatch(read, "stored but never acknowledged", stored.held.keys().filter(|pair| !acked_once.contains(pair)));
        mismatch(read, "refused at the limit but holding no coupon", refused.iter().filter(unheld));
        let tickets = self.tickets_seen.load(Ordering::Relaxed);
        read.notes.push(format!(
            "{} claimed, {} refused sold out, {} refused at the per-user limit ({} repeat claims of {tickets})",
            acked.len(),
            self.sold_out.load(Ordering::Relaxed),
            refused.len(),
            self.claimants.repeats(tickets),
        ));
    }
}

fn mismatch<'a>(read: &mut ReadBack, what: &str, pairs: impl Iterator<Item = &'a (u64, usize)>) {
    let pairs: Vec<_> = pairs.collect();
    if pairs.is_empty() {
        return;
    }
    let named: Vec<String> =
        pairs.iter().take(CLAIMS_LISTED_MAX).map(|(user, t)| format!("user {user} template #{t}")).collect();
    read.problems.push(format!("{} claims {what} (e.g. {})", pairs.len(), named.join(", ")));
}

/// What an engine holds after the run: `issued` per template index (`None`: not found) and
/// the coupons each (user, template index) holds.
#[derive(Debug, Default)]
pub struct StoredClaims {
    pub issued: Vec<Option<i64>>,
    pub held: HashMap<(u64, usize), i64>,
}

/// The run's database with tianji's tables (its migrations, as tianji's store runs them; a
/// no-op when `tianji-actor` ran them already). Engines that write `coupon_record` use their
/// own template ids, so their rows never mix.
pub async fn coupon_tables(setup: &super::Setup<'_>, connections_max: u32) -> anyhow::Result<MySqlPool> {
    let database = setup.database.pool(connections_max).await?;
    tianji::persistence::mysql::MIGRATOR.run(&database).await?;
    Ok(database)
}

/// A `coupon_template` row per id, `total` coupons each, none issued, limit `PER_USER_LIMIT`.
pub async fn insert_templates(database: &MySqlPool, template_ids: &[i64], total: i64) -> anyhow::Result<()> {
    let now_ms = tianji::domain::ids::wall_clock_ms() as i64;
    for chunk in template_ids.chunks(ROWS_PER_INSERT_MAX) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO coupon_template (id, name, kind, discount_cents, min_spend_cents, total, issued, \
             per_user_limit, valid_until, created_at, updated_at) ",
        );
        insert.push_values(chunk, |mut row, &id| {
            row.push_bind(id).push_bind(format!("load template {id}")).push_bind("amount_off").push_bind(100i64);
            row.push_bind(0i64).push_bind(total).push_bind(0i64).push_bind(PER_USER_LIMIT);
            row.push_bind(now_ms + COUPON_VALID_FOR_MS).push_bind(now_ms).push_bind(now_ms);
        });
        insert.build().execute(database).await?;
    }
    Ok(())
}

/// The coupon row of `user`'s first coupon of a template, as tianji writes it.
pub fn insert_coupon<'q>(
    id: i64,
    user: u64,
    template_id: i64,
) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    let now_ms = tianji::domain::ids::wall_clock_ms() as i64;
    sqlx::query(
        "INSERT INTO coupon_record (id, user_id, template_id, seq, status, valid_until, created_at, updated_at) \
         VALUES (?, ?, ?, 1, 'unused', ?, ?, ?)",
    )
    .bind(id)
    .bind(sql_user_id(user))
    .bind(template_id)
    .bind(now_ms + COUPON_VALID_FOR_MS)
    .bind(now_ms)
    .bind(now_ms)
}

/// Users are stored 1-based (ids are positive).
pub fn sql_user_id(user: u64) -> i64 {
    user as i64 + 1
}

/// `issued` of each template from `coupon_template` (`None` where there is no row).
pub async fn sql_issued(database: &MySqlPool, template_ids: &[i64]) -> anyhow::Result<Vec<Option<i64>>> {
    let index_of = index_of(template_ids);
    let mut issued = vec![None; template_ids.len()];
    for row in sqlx::query("SELECT id, issued FROM coupon_template").fetch_all(database).await? {
        if let Some(&index) = index_of.get(&row.try_get::<i64, _>("id")?) {
            issued[index] = Some(row.try_get("issued")?);
        }
    }
    Ok(issued)
}

/// Coupons per (user, template index) from `coupon_record`, for the given templates only.
pub async fn sql_held(database: &MySqlPool, template_ids: &[i64]) -> anyhow::Result<HashMap<(u64, usize), i64>> {
    let index_of = index_of(template_ids);
    let rows =
        sqlx::query("SELECT user_id, template_id, COUNT(*) AS n FROM coupon_record GROUP BY user_id, template_id")
            .fetch_all(database)
            .await?;
    let mut held = HashMap::new();
    for row in rows {
        let Some(&index) = index_of.get(&row.try_get::<i64, _>("template_id")?) else { continue };
        let user = u64::try_from(row.try_get::<i64, _>("user_id")? - 1)?;
        held.insert((user, index), row.try_get::<i64, _>("n")?);
    }
    Ok(held)
}

fn index_of(template_ids: &[i64]) -> HashMap<i64, usize> {
    template_ids.iter().enumerate().map(|(index, &id)| (id, index)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(seq: u64, sku_index: usize) -> Attempt {
        Attempt { seq, sku_index, quantity: 1 }
    }

    #[test]
    fn a_tenth_of_the_claims_repeat_the_user_seven_tickets_before() {
        let claimants = Claimants::new(0.1);
        let repeats: Vec<u64> = (0..40).filter(|&seq| claimants.is_repeat(seq)).collect();
        assert_eq!(repeats, vec![9, 19, 29, 39]);
        assert_eq!((claimants.user_of(9), claimants.user_of(8), claimants.user_of(19)), (2, 8, 12));
        assert_eq!(claimants.repeats(50_000), 5_000);
        let none = Claimants::new(0.0);
        assert!((0..10_000).all(|seq| none.user_of(seq) == seq));
    }

    #[test]
    fn a_repeat_of_a_repeat_goes_back_to_the_first_claimant() {
        let claimants = Claimants::new(0.5);
        assert!(claimants.is_repeat(7) && !claimants.is_repeat(0));
        assert!(claimants.is_repeat(15) && !claimants.is_repeat(8));
        assert_eq!((claimants.user_of(15), claimants.user_of(21)), (8, 14));
        for seq in 0..1_000 {
            let user = claimants.user_of(seq);
            assert!(!claimants.is_repeat(user) && user <= seq && (seq - user) % REPEAT_LAG == 0);
        }
    }

    fn stored(issued: i64, held: &[((u64, usize), i64)]) -> StoredClaims {
        StoredClaims { issued: vec![Some(issued)], held: held.iter().copied().collect() }
    }

    #[test]
    fn a_consistent_store_passes_the_audit() {
        let audit = ClaimAudit::new(Claimants::new(0.1));
        assert_eq!(audit.record(&attempt(0, 0), 0, Answer::Claimed), Outcome::Ok { units: 1 });
        assert_eq!(audit.record(&attempt(7, 0), 0, Answer::LimitReached), Outcome::Rejected);
        assert_eq!(audit.record(&attempt(1, 0), 1, Answer::SoldOut), Outcome::Rejected);
        let read = audit.read_back(&stored(1, &[((0, 0), 1)]), 1);
        assert!(read.problems.is_empty(), "{:?}", read.problems);
        assert_eq!(read.observed, vec![SkuObserved { taken_units: 1, order_rows: 1, order_units: 1 }]);
    }

    #[test]
    fn every_kind_of_mismatch_is_reported() {
        let audit = ClaimAudit::new(Claimants::new(0.0));
        audit.record(&attempt(0, 0), 0, Answer::Claimed);
        audit.record(&attempt(1, 0), 1, Answer::LimitReached);
        let read = audit.read_back(&stored(3, &[((2, 0), 2)]), 1);
        assert_eq!(
            read.problems,
            vec![
                "1 users hold more than 1 coupon of a template",
                "template #0: issued 3 but 2 coupons stored",
                "1 claims acknowledged but not stored (e.g. user 0 template #0)",
                "1 claims stored but never acknowledged (e.g. user 2 template #0)",
                "1 claims refused at the limit but holding no coupon (e.g. user 1 template #0)",
            ]
        );
    }
}
