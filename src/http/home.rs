//! The home key of a request: the key whose owner serves it in a cluster (`forward` sends a
//! request there when this node does not own it). One table, by method and path, for every
//! route `routes` registers; a test checks that no route is left out.
//!
//! A user's own things (orders, payments, received coupons, learning) live with the caller's
//! user (the verified token's `sub`); a SKU's reads and writes with the SKU; a coupon
//! template's read with the template. An admin acting on an order by id, and the payment
//! callback, go to the order's user: that needs the order, read from the database, so this
//! table only names the order (`Home::OrderOf`, `Home::CallbackOrder`). Creates, admin lists,
//! health, metrics and the OpenAPI document have no home key: they are served where they
//! arrive. So is any request this table cannot place (no or a bad token, an id that does not
//! parse): its handler answers it (401, 404, ...) as on a single node.

use super::auth::Caller;
use crate::domain::slots::Key;
use crate::domain::{OrderId, SkuId, TemplateId};
use actix_web::http::Method;

/// Where a request is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home {
    /// Wherever it arrives.
    Here,
    /// By the owner of this key.
    Key(Key),
    /// By the owner of this order's user (an admin acting on an order by id).
    OrderOf(OrderId),
    /// By the owner of the user of the order the (payment callback) body names.
    CallbackOrder,
}

/// The home of a `method` request to `path` (without its query). `caller` verifies the
/// request's token; it is asked only for the routes whose home is the caller's user.
pub fn home(method: &Method, path: &str, caller: impl FnOnce() -> Option<Caller>) -> Home {
    let segments: Vec<&str> = match path.strip_prefix("/v1/") {
        Some(rest) => rest.split('/').collect(),
        None => return Home::Here,
    };
    let is = |expected: Method| *method == expected;
    match segments.as_slice() {
        ["skus", id] if is(Method::GET) => sku(id),
        ["admin", "skus", id] if is(Method::PATCH) => sku(id),
        ["admin", "skus", id, "restock"] if is(Method::POST) => sku(id),
        ["coupon-templates", id] if is(Method::GET) => template(id),
        ["orders"] if is(Method::GET) || is(Method::POST) => caller_home(caller),
        ["orders", _] if is(Method::GET) => match caller() {
            // An admin reads any order from the database, wherever it arrives.
            Some(caller) if caller.is_admin() => Home::Here,
            Some(caller) => Home::Key(Key::user(caller.user_id)),
            None => Home::Here,
        },
        ["orders", _, "cancel"] if is(Method::POST) => caller_home(caller),
        ["orders", id, "finish" | "refund"] if is(Method::POST) => match caller() {
            Some(caller) if caller.is_admin() => order(id),
            // Not an admin: refused (403) where it arrives.
            _ => Home::Here,
        },
        ["payments", "callback"] if is(Method::POST) => Home::CallbackOrder,
        ["coupons"] if is(Method::GET) => caller_home(caller),
        ["coupons", "receive"] if is(Method::POST) => caller_home(caller),
        ["learning", "lessons" | "progress"] if is(Method::GET) => caller_home(caller),
        ["learning", "heartbeats"] if is(Method::POST) => caller_home(caller),
        _ => Home::Here,
    }
}

fn caller_home(caller: impl FnOnce() -> Option<Caller>) -> Home {
    caller().map_or(Home::Here, |caller| Home::Key(Key::user(caller.user_id)))
}

fn sku(raw: &str) -> Home {
    raw.parse().ok().and_then(SkuId::parse).map_or(Home::Here, |id| Home::Key(Key::sku(id)))
}

fn template(raw: &str) -> Home {
    raw.parse().ok().and_then(TemplateId::parse).map_or(Home::Here, |id| Home::Key(Key::template(id)))
}

fn order(raw: &str) -> Home {
    raw.parse().ok().and_then(OrderId::parse).map_or(Home::Here, Home::OrderOf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserId;
    use crate::http::auth::Role;

    const USER: Caller = Caller { user_id: UserId::new(42), role: Role::User };
    const ADMIN: Caller = Caller { user_id: UserId::new(1), role: Role::Admin };

    fn user_key() -> Home {
        Home::Key(Key::user(UserId::new(42)))
    }

    fn admin_key() -> Home {
        Home::Key(Key::user(UserId::new(1)))
    }

    /// Every route registered, with its home for a user, for an admin and without a token.
    fn cases() -> Vec<(Method, &'static str, Home, Home, Home)> {
        let sku = Home::Key(Key::sku(SkuId::new(7)));
        let template = Home::Key(Key::template(TemplateId::new(9)));
        let order = Home::OrderOf(OrderId::new(11));
        use Home::{CallbackOrder, Here};
        vec![
            (Method::GET, "/healthz", Here, Here, Here),
            (Method::GET, "/readyz", Here, Here, Here),
            (Method::GET, "/metrics", Here, Here, Here),
            (Method::GET, "/openapi.json", Here, Here, Here),
            (Method::POST, "/v1/admin/skus", Here, Here, Here),
            (Method::POST, "/v1/admin/skus/7/restock", sku, sku, sku),
            (Method::GET, "/v1/skus/7", sku, sku, sku),
            (Method::PATCH, "/v1/admin/skus/7", sku, sku, sku),
            (Method::POST, "/v1/admin/coupon-templates", Here, Here, Here),
            (Method::GET, "/v1/coupon-templates/9", template, template, template),
            (Method::POST, "/v1/coupons/receive", user_key(), admin_key(), Here),
            (Method::GET, "/v1/coupons", user_key(), admin_key(), Here),
            (Method::POST, "/v1/orders", user_key(), admin_key(), Here),
            (Method::GET, "/v1/orders", user_key(), admin_key(), Here),
            (Method::GET, "/v1/orders/11", user_key(), Here, Here),
            (Method::POST, "/v1/orders/11/cancel", user_key(), admin_key(), Here),
            (Method::POST, "/v1/orders/11/finish", Here, order, Here),
            (Method::POST, "/v1/orders/11/refund", Here, order, Here),
            (Method::POST, "/v1/payments/callback", CallbackOrder, CallbackOrder, CallbackOrder),
            (Method::GET, "/v1/admin/payments", Here, Here, Here),
            (Method::GET, "/v1/admin/cluster", Here, Here, Here),
            (Method::GET, "/v1/learning/lessons", user_key(), admin_key(), Here),
            (Method::POST, "/v1/learning/heartbeats", user_key(), admin_key(), Here),
            (Method::GET, "/v1/learning/progress", user_key(), admin_key(), Here),
            (Method::GET, "/v1/admin/learning/stats", Here, Here, Here),
        ]
    }

    #[test]
    fn every_route_has_its_home_for_a_user_an_admin_and_no_token() {
        for (method, path, as_user, as_admin, anonymous) in cases() {
            assert_eq!(home(&method, path, || Some(USER)), as_user, "{method} {path} as a user");
            assert_eq!(home(&method, path, || Some(ADMIN)), as_admin, "{method} {path} as an admin");
            assert_eq!(home(&method, path, || None), anonymous, "{method} {path} without a valid token");
        }
    }

    #[test]
    fn the_table_covers_every_registered_route() {
        let placed: Vec<(Method, String)> = cases()
            .into_iter()
            .map(|(method, path, ..)| (method, path.replace("/7", "/{sku_id}").replace("/9", "/{template_id}")))
            .map(|(method, path)| (method, path.replace("/11", "/{order_id}")))
            .collect();
        for (pattern, methods) in crate::http::route_table() {
            for method in methods {
                assert!(
                    placed.iter().any(|(m, p)| *m == method && *p == pattern),
                    "{method} {pattern} has no line in the home table's test: where is it served?"
                );
            }
        }
    }

    #[test]
    fn ids_that_do_not_parse_and_other_methods_are_served_where_they_arrive() {
        for (method, path) in [
            (Method::GET, "/v1/skus/x"),
            (Method::GET, "/v1/skus/0"),
            (Method::GET, "/v1/skus/-3"),
            (Method::GET, "/v1/skus/7/"),
            (Method::DELETE, "/v1/skus/7"),
            (Method::GET, "/v1/coupon-templates/99999999999999999999"),
            (Method::POST, "/v1/orders/x/refund"),
            (Method::GET, "/v1/orders/"),
            (Method::PUT, "/v1/orders"),
            (Method::GET, "/v2/orders"),
            (Method::GET, "/nowhere"),
        ] {
            assert_eq!(home(&method, path, || Some(ADMIN)), Home::Here, "{method} {path}");
        }
    }
}
