//! Reserving and settling units of a SKU another node owns, and claiming a coupon of a
//! template another node owns: the serving node's side of the cross-node saga
//! (`http::internal` is the owner's side).
//!
//! Guarantees: a call goes only to the address the lease table names as the key's owner, with
//! a node credential, through the node's one bounded `Peers` client (a call past its bound is
//! `Overloaded` at once, never queued). A 200 means the owner committed the effect alone, fenced
//! by the key's range; a refusal comes back as the error it was on the owner. A call that timed
//! out or broke is `Unavailable` for a SKU (the owner's repair pass settles whatever it left
//! open, `actors::repair`) and `Uncertain` for a claim (the user's actor reloads its coupons
//! from the database); never retried from here.

use super::peers::{PeerError, PeerRequest, PeerResponse, Peers};
use super::wire::{self, ClaimRefused, Granted, IssueCall, Issued, Refused, ReserveCall, SettleCall};
use crate::actors::coupon::ClaimFailure;
use crate::actors::inventory::{Grant, Settlement, SkuError};
use crate::domain::coupon::Coupon;
use crate::domain::inventory::Quantity;
use crate::domain::{OrderId, SkuId, TemplateId, UserId};
use crate::metrics::{RemoteCall, RemoteMetrics, RemoteOutcome};
use bytes::Bytes;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// How long a node credential lives (or less, when tokens may not live that long): one is
/// minted per call, so it only has to outlive the call.
pub const NODE_TOKEN_TTL: Duration = Duration::from_secs(60);

/// Mints a node credential (a JWT with the `node` role, from the shared secret).
pub type MintNodeToken = Arc<dyn Fn() -> String + Send + Sync>;

/// The client of the internal endpoints of other nodes' SKUs and templates.
pub struct RemoteKeys {
    peers: Peers,
    mint: MintNodeToken,
    metrics: RemoteMetrics,
}

impl RemoteKeys {
    pub fn new(peers: Peers, mint: MintNodeToken, metrics: RemoteMetrics) -> RemoteKeys {
        RemoteKeys { peers, mint, metrics }
    }

    /// Holds `quantity` units of `sku_id` for `order_id` on the SKU's owner at `owner`.
    pub async fn reserve(
        &self,
        owner: &str,
        sku_id: SkuId,
        order_id: OrderId,
        quantity: Quantity,
        expires_at_ms: i64,
    ) -> Result<Grant, SkuError> {
        let call = ReserveCall { order_id: order_id.get(), quantity: quantity.units(), expires_at_ms };
        let path = wire::reserve_path(sku_id);
        let granted: Granted = self.sku_call(RemoteCall::Reserve, owner, path, &call, sku_id, order_id).await?;
        Ok(granted.into_grant(sku_id))
    }

    /// Settles the lease of `order_id` on `sku_id` on the SKU's owner at `owner`.
    pub async fn settle(
        &self,
        owner: &str,
        sku_id: SkuId,
        order_id: OrderId,
        settlement: Settlement,
    ) -> Result<(), SkuError> {
        let call = SettleCall::new(order_id, settlement);
        let path = wire::settle_path(sku_id);
        let _: IgnoredAny = self.sku_call(RemoteCall::Settle, owner, path, &call, sku_id, order_id).await?;
        Ok(())
    }

    /// Has the template's owner at `owner` issue `user_id`'s `seq`-th coupon of `template_id`.
    pub async fn issue(
        &self,
        owner: &str,
        template_id: TemplateId,
        user_id: UserId,
        seq: i64,
    ) -> Result<Coupon, ClaimFailure> {
        let call = IssueCall { user_id: user_id.get(), seq };
        let uncertain = |reason: String| ClaimFailure::Uncertain(format!("the template's owner: {reason}"));
        let (outcome, issued) = match self.send(owner, wire::issue_path(template_id), &call).await {
            Err(PeerError::Busy) => (RemoteOutcome::Overloaded, Err(ClaimFailure::Overloaded)),
            Err(other) => (RemoteOutcome::Failed, Err(uncertain(other.to_string()))),
            Ok(response) => decode(response, |refused: ClaimRefused| refused.into_failure(template_id), uncertain),
        };
        let coupon = issued.and_then(|issued: Issued| {
            issued.into_coupon(template_id, user_id).ok_or_else(|| uncertain("answered no coupon id".into()))
        });
        // What the owner answered, as the metric tells it: its overload and an outcome it did
        // not know are no refusals.
        let outcome = match (&coupon, outcome) {
            (Err(ClaimFailure::Uncertain(_) | ClaimFailure::Unavailable(_)), _) => RemoteOutcome::Failed,
            (Err(ClaimFailure::Overloaded), _) => RemoteOutcome::Overloaded,
            (Err(_), RemoteOutcome::Ok) => RemoteOutcome::Failed,
            (_, outcome) => outcome,
        };
        self.metrics.record(RemoteCall::Issue, outcome);
        coupon
    }

    async fn sku_call<T: DeserializeOwned>(
        &self,
        call: RemoteCall,
        owner: &str,
        path: String,
        body: &impl Serialize,
        sku_id: SkuId,
        order_id: OrderId,
    ) -> Result<T, SkuError> {
        let unavailable = |reason: String| SkuError::Unavailable(format!("the sku's owner: {reason}"));
        let (outcome, result) = match self.send(owner, path, body).await {
            Err(PeerError::Busy) => (RemoteOutcome::Overloaded, Err(SkuError::Overloaded)),
            Err(other) => (RemoteOutcome::Failed, Err(unavailable(other.to_string()))),
            Ok(response) => decode(response, |refused: Refused| refused.into_error(sku_id, order_id), unavailable),
        };
        let outcome = match &result {
            Err(SkuError::Unavailable(_)) => RemoteOutcome::Failed,
            Err(SkuError::Overloaded) => RemoteOutcome::Overloaded,
            _ => outcome,
        };
        self.metrics.record(call, outcome);
        result
    }

    /// POSTs `body` as JSON to `path` on `owner`, with a node credential.
    async fn send(&self, owner: &str, path: String, body: &impl Serialize) -> Result<PeerResponse, PeerError> {
        let body = serde_json::to_vec(body).expect("wire types serialize");
        let request = PeerRequest {
            method: reqwest::Method::POST,
            path_and_query: path,
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                ("authorization".into(), format!("Bearer {}", (self.mint)()).into_bytes()),
            ],
            body: Bytes::from(body),
        };
        self.peers.send(owner, request).await
    }
}

/// The owner's answer: its 200 body (`Ok`), or the refusal `R` it sent, as the error `refused`
/// makes of it (`Refused`); anything else is `unreadable`, with what was wrong (`Failed`).
fn decode<T: DeserializeOwned, R: DeserializeOwned, E>(
    response: PeerResponse,
    refused: impl FnOnce(R) -> E,
    unreadable: impl FnOnce(String) -> E,
) -> (RemoteOutcome, Result<T, E>) {
    if response.status == 200 {
        return match serde_json::from_slice(&response.body) {
            Ok(answer) => (RemoteOutcome::Ok, Ok(answer)),
            Err(error) => (RemoteOutcome::Failed, Err(unreadable(format!("answered unreadably: {error}")))),
        };
    }
    match serde_json::from_slice::<R>(&response.body) {
        Ok(refusal) => (RemoteOutcome::Refused, Err(refused(refusal))),
        Err(_) => {
            let text = String::from_utf8_lossy(&response.body[..response.body.len().min(200)]).into_owned();
            (RemoteOutcome::Failed, Err(unreadable(format!("answered {}: {text}", response.status))))
        }
    }
}
