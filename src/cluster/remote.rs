//! Reserving and settling units of a SKU another node owns: the serving node's side of the
//! cross-node saga (`http::internal` is the owner's side).
//!
//! Guarantees: a call goes only to the address the lease table names as the SKU's owner, with
//! a node credential, through the node's one bounded `Peers` client (a call past its bound is
//! `Overloaded` at once, never queued). A 200 means the owner committed the effect alone, fenced
//! by the SKU's range; a refusal comes back as the `SkuError` it was on the owner. A call that
//! timed out or broke is `Unavailable`: the owner may have acted on it, and whatever it left
//! open is settled by the owner's repair pass (`actors::repair`), never by a retry from here.

use super::peers::{PeerError, PeerRequest, PeerResponse, Peers};
use super::wire::{self, Granted, Refused, ReserveCall, SettleCall};
use crate::actors::inventory::{Grant, Settlement, SkuError};
use crate::domain::inventory::Quantity;
use crate::domain::{OrderId, SkuId};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// How long a node credential lives (or less, when tokens may not live that long): one is
/// minted per call, so it only has to outlive the call.
pub const NODE_TOKEN_TTL: Duration = Duration::from_secs(60);

/// Mints a node credential (a JWT with the `node` role, from the shared secret).
pub type MintNodeToken = Arc<dyn Fn() -> String + Send + Sync>;

/// The client of the SKU owners' internal endpoints.
pub struct RemoteSkus {
    peers: Peers,
    mint: MintNodeToken,
}

impl RemoteSkus {
    pub fn new(peers: Peers, mint: MintNodeToken) -> RemoteSkus {
        RemoteSkus { peers, mint }
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
        let granted: Granted = self.call(owner, wire::reserve_path(sku_id), &call, sku_id, order_id).await?;
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
        let _: serde::de::IgnoredAny = self.call(owner, wire::settle_path(sku_id), &call, sku_id, order_id).await?;
        Ok(())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        owner: &str,
        path: String,
        body: &impl Serialize,
        sku_id: SkuId,
        order_id: OrderId,
    ) -> Result<T, SkuError> {
        let body = serde_json::to_vec(body).map_err(|error| SkuError::Unavailable(error.to_string()))?;
        let request = PeerRequest {
            method: reqwest::Method::POST,
            path_and_query: path,
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                ("authorization".into(), format!("Bearer {}", (self.mint)()).into_bytes()),
            ],
            body: Bytes::from(body),
        };
        let response = self.peers.send(owner, request).await.map_err(|error| match error {
            PeerError::Busy => SkuError::Overloaded,
            other => SkuError::Unavailable(format!("the sku's owner: {other}")),
        })?;
        answer(response, sku_id, order_id)
    }
}

/// The owner's answer: its 200 body, or the refusal it sent.
fn answer<T: DeserializeOwned>(response: PeerResponse, sku_id: SkuId, order_id: OrderId) -> Result<T, SkuError> {
    if response.status == 200 {
        return serde_json::from_slice(&response.body)
            .map_err(|error| SkuError::Unavailable(format!("the sku's owner answered unreadably: {error}")));
    }
    match serde_json::from_slice::<Refused>(&response.body) {
        Ok(refused) => Err(refused.into_error(sku_id, order_id)),
        Err(_) => {
            let text = String::from_utf8_lossy(&response.body[..response.body.len().min(200)]).into_owned();
            Err(SkuError::Unavailable(format!("the sku's owner answered {}: {text}", response.status)))
        }
    }
}
