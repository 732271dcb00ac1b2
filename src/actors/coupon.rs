//! The coupon template actor: one per template, the only one that hands out its coupons.
//!
//! It holds the template's rules and how many coupons are issued or on their way through the
//! write pipeline, and answers a claim at once: outside the claim window, sold out, or past
//! the user's limit, nothing is handed out; otherwise it mints the coupon and counts it in
//! flight. The claim commits it through this node's pipeline and settles it here: for a user
//! this node serves, fenced by the user's range too; in a cluster, for a user another node
//! serves (which counts the user's `seq` and calls in, `Core::claim_alone`), fenced by the
//! template's range alone. The database's `issued <= total` check inside the commit and its
//! check that `seq` is the user's next one within the limit (backed by the unique
//! `(user_id, template_id, seq)` key) are the last line of defence: a stale view of this actor
//! or of the user's can only refuse a claim, never over-issue.

use super::{schedule_idle_checks, Core, Refusal, Reply};
use crate::domain::coupon::{ClaimError, Coupon, CouponRules, CouponStatus};
use crate::domain::slots::{Key, RangeId};
use crate::domain::{CouponId, TemplateId, UserId};
use crate::persistence::group_commit::SubmitError;
use crate::persistence::{Change, Conflict, CouponIssue, StoreError, TemplateState};
use actix::prelude::*;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The most templates of other nodes whose rules a node keeps (beyond it, they are read per
/// order with such a coupon).
pub const RULES_KEPT_MAX: usize = 10_000;

/// Why a claim (or a template read) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimFailure {
    #[error("coupon template {0} does not exist")]
    NotFound(TemplateId),
    #[error(transparent)]
    Refused(#[from] ClaimError),
    #[error("overloaded; retry shortly")]
    Overloaded,
    /// Definitely not claimed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Perhaps claimed: the commit's outcome is unknown (the user's coupon list tells).
    #[error("unavailable, the outcome is unknown: {0}")]
    Uncertain(String),
    /// Definitely not claimed: the user's count of coupons of the template was behind the
    /// database (a coupon issued after it was read); the user's actor reloads it, a retry claims.
    #[error("unavailable: the user's coupons changed meanwhile; retry")]
    Behind,
    /// Another node of the cluster owns the key (`cluster`).
    #[error(transparent)]
    NotOwner(#[from] crate::cluster::NotOwner),
}

impl From<Refusal> for ClaimFailure {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Full => ClaimFailure::Overloaded,
            Refusal::Stopped => ClaimFailure::Unavailable("actor stopped".into()),
            Refusal::NoAnswer => ClaimFailure::Uncertain("actor stopped before answering".into()),
        }
    }
}

impl From<StoreError> for ClaimFailure {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotOwner(not_owner) => ClaimFailure::NotOwner(not_owner),
            other => ClaimFailure::Unavailable(other.to_string()),
        }
    }
}

/// Hand out the user's `seq`-th coupon of the template (the user's actor counts `seq`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Issue {
    pub user_id: UserId,
    pub seq: i64,
    pub reply: Reply<CouponIssue, ClaimFailure>,
}

/// What became of a coupon handed out by `Issue`.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum IssueSettled {
    Committed,
    /// Not written: it no longer counts. `stale`: the database found the template sold out,
    /// so this actor's count is behind; it stops and the next claim reloads it.
    Refused {
        stale: bool,
    },
    /// Perhaps written: this actor's count may be wrong, so it stops and the next claim
    /// reloads the count from the database.
    Unknown,
}

/// The template as committed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GetTemplate {
    pub reply: Reply<TemplateState, ClaimFailure>,
}

pub struct TemplateActor {
    /// `issued` is what is committed.
    template: TemplateState,
    /// Coupons handed out and not yet settled.
    in_flight: i64,
    /// The issued count may be behind the database: stop once nothing is in flight.
    stale: bool,
    last_active: Instant,
    core: Arc<Core>,
}

impl TemplateActor {
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.last_active.elapsed() >= self.core.limits.idle_timeout && self.in_flight == 0 {
            ctx.stop();
        }
    }
}

super::traced::handles_traced!(TemplateActor);

impl Actor for TemplateActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        schedule_idle_checks(ctx, self.core.limits.idle_timeout, Self::tick);
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.core.templates.forget(self.template.id, &ctx.address());
    }
}

impl Handler<Issue> for TemplateActor {
    type Result = ();

    fn handle(&mut self, msg: Issue, _ctx: &mut Self::Context) {
        self.last_active = Instant::now();
        let Issue { user_id, seq, reply } = msg;
        let draft = &self.template.draft;
        let checked = draft
            .check_claim(self.template.issued + self.in_flight, self.core.clock.now_ms())
            .and_then(|()| draft.check_user_claim(seq - 1));
        let answer = checked.map_err(ClaimFailure::from).map(|()| {
            // From here on the coupon is handed out and must be settled.
            self.in_flight += 1;
            let coupon = Coupon {
                id: CouponId::new(self.core.next_id()),
                template_id: self.template.id,
                user_id,
                status: CouponStatus::Unused,
                order_id: None,
                valid_until_ms: draft.rules.valid_until_ms,
            };
            CouponIssue { coupon, seq, user_served_elsewhere: false }
        });
        assert!(
            self.template.issued + self.in_flight <= self.template.draft.total,
            "never more in hand than the total"
        );
        if let Err(Ok(_unclaimed)) = reply.send(answer) {
            self.in_flight -= 1;
        }
    }
}

impl Handler<IssueSettled> for TemplateActor {
    type Result = ();

    fn handle(&mut self, settled: IssueSettled, ctx: &mut Self::Context) {
        assert!(self.in_flight > 0, "only handed-out coupons settle");
        self.in_flight -= 1;
        match settled {
            IssueSettled::Committed => {
                self.template.issued += 1;
                assert!(self.template.issued <= self.template.draft.total);
            }
            IssueSettled::Refused { stale: false } => {}
            IssueSettled::Refused { stale: true } | IssueSettled::Unknown => {
                tracing::warn!(template_id = %self.template.id, ?settled, "reloading the template's issued count");
                self.stale = true;
            }
        }
        // A stale count is read again by the next activation, once every coupon handed out has
        // settled here (their notices would be lost with the actor). Meanwhile the commit's
        // check on `issued` refuses whatever the stale count allows too much.
        if self.stale && self.in_flight == 0 {
            ctx.stop();
        }
    }
}

impl Handler<GetTemplate> for TemplateActor {
    type Result = ();

    fn handle(&mut self, msg: GetTemplate, _ctx: &mut Self::Context) {
        let _ = msg.reply.send(Ok(self.template.clone()));
    }
}

/// The template side of `Core`.
impl Core {
    /// The live actor of a template, activated from the store (batched with the other
    /// activations of the moment) if need be.
    pub(crate) async fn template(
        self: &Arc<Self>,
        template_id: TemplateId,
    ) -> Result<super::registry::ActorRef<TemplateActor>, ClaimFailure> {
        if let Some(actor) = self.templates.get(template_id) {
            return Ok(actor);
        }
        self.owns(crate::domain::slots::Key::template(template_id))?;
        self.templates
            .get_or_activate(template_id, || async {
                let loaded = self.template_loader.submit(template_id).await;
                let template = loaded.map_err(|e| ClaimFailure::Unavailable(e.to_string()))?;
                let template = template.ok_or(ClaimFailure::NotFound(template_id))?;
                let actor = TemplateActor {
                    template,
                    in_flight: 0,
                    stale: false,
                    last_active: Instant::now(),
                    core: Arc::clone(self),
                };
                let arbiter = self.arbiters.for_key(template_id.get());
                Ok(super::start_on(&arbiter, self.limits.mailbox_capacity, actor))
            })
            .await
    }

    /// The rules of a template (templates never change once created): its actor's when this
    /// node owns the template, else read from the store once and kept.
    pub(crate) async fn template_rules(self: &Arc<Self>, template_id: TemplateId) -> Result<CouponRules, ClaimFailure> {
        if self.elsewhere(Key::template(template_id)).is_none() {
            return Ok(self.template_state(template_id).await?.draft.rules);
        }
        if let Some(rules) = self.rules_elsewhere.get(&template_id) {
            return Ok(*rules);
        }
        let loaded = self.template_loader.submit(template_id).await;
        let template = loaded.map_err(|e| ClaimFailure::Unavailable(e.to_string()))?;
        let rules = template.ok_or(ClaimFailure::NotFound(template_id))?.draft.rules;
        if self.rules_elsewhere.len() < RULES_KEPT_MAX {
            self.rules_elsewhere.insert(template_id, rules);
        }
        Ok(rules)
    }

    /// A template with its committed issued count.
    pub async fn template_state(self: &Arc<Self>, template_id: TemplateId) -> Result<TemplateState, ClaimFailure> {
        let actor = self.template(template_id).await?;
        self.templates.ask(actor.addr(), |reply| GetTemplate { reply }).await
    }

    /// A user's claim of their `seq`-th coupon of `template_id` (`held_ranges`: the user's, as
    /// its actor was activated under): issued here when this node owns the template, else by
    /// the template's owner.
    pub(crate) async fn claim(
        self: &Arc<Self>,
        user_id: UserId,
        held_ranges: &[(RangeId, i64)],
        template_id: TemplateId,
        seq: i64,
    ) -> Result<Coupon, ClaimFailure> {
        if let Some(elsewhere) = self.elsewhere(Key::template(template_id)) {
            let (owner, remote) = elsewhere?;
            return remote.issue(&owner, template_id, user_id, seq).await;
        }
        self.issue_committed(user_id, template_id, seq, held_ranges.to_vec(), false).await
    }

    /// The template owner's side of a claim from a user another node serves: issued and
    /// committed alone, fenced by the template's range, before the answer.
    pub async fn claim_alone(
        self: &Arc<Self>,
        template_id: TemplateId,
        user_id: UserId,
        seq: i64,
    ) -> Result<Coupon, ClaimFailure> {
        let core = Arc::clone(self);
        // Spawned: a caller that goes away does not leave a coupon handed out and unsettled.
        let task = self.home.spawn(
            async move { core.issue_committed(user_id, template_id, seq, Vec::new(), true).await }.in_current_span(),
        );
        task.await.map_err(|_| ClaimFailure::Uncertain("claim task failed".into()))?
    }

    /// The claim's pipeline part: the template actor hands out the user's `seq`-th coupon,
    /// the pipeline commits it, the template actor learns how it ended.
    async fn issue_committed(
        self: &Arc<Self>,
        user_id: UserId,
        template_id: TemplateId,
        seq: i64,
        held_ranges: Vec<(RangeId, i64)>,
        user_served_elsewhere: bool,
    ) -> Result<Coupon, ClaimFailure> {
        let (issue, template) = self.issue(template_id, user_id, seq).await?;
        let issue = CouponIssue { user_served_elsewhere, ..issue };
        let change = Change { issue: Some(issue), held_ranges, ..Change::default() };
        let (settled, result) = match self.journal.submit(change).await {
            Ok(Ok(())) => (IssueSettled::Committed, Ok(issue.coupon)),
            Ok(Err(Conflict::SoldOut(_))) => (IssueSettled::Refused { stale: true }, Err(ClaimError::SoldOut.into())),
            Ok(Err(Conflict::ClaimLimit(_))) => {
                (IssueSettled::Refused { stale: false }, Err(ClaimError::LimitReached.into()))
            }
            // Not issued; the user's actor reloads its count (`ClaimFailure::Behind`).
            Ok(Err(Conflict::ClaimBehind(_))) => (IssueSettled::Refused { stale: false }, Err(ClaimFailure::Behind)),
            Ok(Err(Conflict::NotOwner(range))) => {
                (IssueSettled::Refused { stale: false }, Err(ClaimFailure::NotOwner(self.not_owner(range))))
            }
            Ok(Err(conflict)) => {
                (IssueSettled::Refused { stale: false }, Err(ClaimFailure::Unavailable(conflict.to_string())))
            }
            Err(SubmitError::Overloaded) => (IssueSettled::Refused { stale: false }, Err(ClaimFailure::Overloaded)),
            Err(error) if error.never_queued() => {
                (IssueSettled::Refused { stale: false }, Err(ClaimFailure::Unavailable(error.to_string())))
            }
            Err(error) => (IssueSettled::Unknown, Err(ClaimFailure::Uncertain(error.to_string()))),
        };
        // A notice: the template actor must learn of every coupon it handed out.
        template.addr().do_send(settled);
        if result.is_ok() {
            tracing::info!(%user_id, %template_id, seq, coupon_id = %issue.coupon.id, user_served_elsewhere, "coupon issued");
        }
        result
    }

    /// Asks the template's actor for a coupon.
    pub(crate) async fn issue(
        self: &Arc<Self>,
        template_id: TemplateId,
        user_id: UserId,
        seq: i64,
    ) -> Result<(CouponIssue, super::registry::ActorRef<TemplateActor>), ClaimFailure> {
        let actor = self.template(template_id).await?;
        let issue = self.templates.ask(actor.addr(), |reply| Issue { user_id, seq, reply }).await?;
        Ok((issue, actor))
    }
}
