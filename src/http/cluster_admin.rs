//! `GET /v1/admin/cluster`: the members and range leases of the cluster as this node last
//! read them (its renewal round, every `TIANJI_LEASE_TTL / 3`), and where a given key lives,
//! so an operator, a test or a client can find the owner of a key. On a single node
//! (`TIANJI_ADVERTISE_URL` unset) it says so: one node owns every key.

use super::auth::Admin;
use super::errors::{ApiError, ErrorBody};
use super::openapi::{Forbidden, Unauthorized};
use super::AppState;
use crate::cluster::{NodeRow, RangeRow};
use crate::domain::slots::{Key, KeyKind, RangeId};
use actix_web::{get, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ClusterQuery {
    /// With `id`: the kind of key to locate.
    #[param(pattern = "^(sku|user|template)$")]
    kind: Option<String>,
    /// With `kind`: the key's id.
    id: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyPlace {
    /// `sku`, `user` or `template`.
    kind: &'static str,
    id: i64,
    slot: u16,
    range_id: u16,
    /// Whether the node that answers owns the key now.
    owned_here: bool,
    /// The advertised URL of the key's owner, when another node holds it.
    owner_address: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ClusterBody {
    /// Whether this node runs in a cluster; `false`: it owns every key.
    clustered: bool,
    /// This node's id and advertised URL (cluster only).
    node_id: Option<String>,
    address: Option<String>,
    /// The database clock when the tables were read (ms since the Unix epoch).
    read_at_ms: i64,
    nodes: Vec<NodeRow>,
    ranges: Vec<RangeRow>,
    /// The ranges this node holds now (cluster only).
    held: Vec<u16>,
    /// Where `kind` and `id` live, when asked.
    key: Option<KeyPlace>,
}

fn parse_key(query: &ClusterQuery) -> Result<Option<Key>, ApiError> {
    match (query.kind.as_deref(), query.id) {
        (None, None) => Ok(None),
        (Some(kind), Some(id)) => {
            let kind = KeyKind::parse(kind)
                .ok_or_else(|| ApiError::unprocessable("invalid_kind", "kind must be sku, user or template"))?;
            Ok(Some(Key { kind, id }))
        }
        _ => Err(ApiError::unprocessable("invalid_query", "kind and id go together")),
    }
}

fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Sku => "sku",
        KeyKind::User => "user",
        KeyKind::Template => "template",
    }
}

#[utoipa::path(
    tag = "cluster",
    params(ClusterQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Members, range leases and, when asked, where a key lives", body = ClusterBody),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, description = "`invalid_query`, `invalid_kind`", body = ErrorBody),
    )
)]
#[get("/v1/admin/cluster")]
pub async fn cluster(
    state: web::Data<AppState>,
    _admin: Admin,
    query: web::Query<ClusterQuery>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_key(&query)?;
    let Some(ownership) = state.core.cluster() else {
        let key = key.map(|key| KeyPlace {
            kind: kind_name(key.kind),
            id: key.id,
            slot: key.slot().get(),
            range_id: key.range().get(),
            owned_here: true,
            owner_address: None,
        });
        let body = ClusterBody {
            clustered: false,
            node_id: None,
            address: None,
            read_at_ms: 0,
            nodes: vec![],
            ranges: vec![],
            held: vec![],
            key,
        };
        return Ok(HttpResponse::Ok().json(body));
    };
    let view = ownership.view();
    let held = RangeId::all().filter(|range| ownership.epoch(*range).is_some()).map(RangeId::get).collect();
    let key = key.map(|key| {
        let owned_here = ownership.check(key).is_ok();
        KeyPlace {
            kind: kind_name(key.kind),
            id: key.id,
            slot: key.slot().get(),
            range_id: key.range().get(),
            owned_here,
            owner_address: view.owner_address(key.range()).map(str::to_owned),
        }
    });
    Ok(HttpResponse::Ok().json(ClusterBody {
        clustered: true,
        node_id: Some(ownership.node_id().to_owned()),
        address: Some(ownership.address().to_owned()),
        read_at_ms: view.now_ms,
        nodes: view.nodes,
        ranges: view.ranges,
        held,
        key,
    }))
}
