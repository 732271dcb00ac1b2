//! JSON bodies as the OpenAPI document describes them. A body is read as `web::Json<Value>`
//! (so the size limit and the error answers of `JsonConfig` apply), and then:
//! - it must be a JSON object: serde would otherwise read a struct from an array
//!   (`[null, null]` as a PATCH), which no client means and the document does not allow;
//! - a whole number written as a float (`8460.0`) is read as the integer it is: JSON and JSON
//!   Schema do not tell them apart, and clients in languages with one number type send them.
//!
//! Then the handler's request type reads it, with its own `deny_unknown_fields`.

use super::errors::ApiError;
use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde_json::{Number, Value};
use std::ops::Deref;

/// A request body of type `T`, read as described in the module doc.
#[derive(Debug)]
pub struct JsonBody<T>(T);

impl<T> JsonBody<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for JsonBody<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let json = web::Json::<Value>::from_request(request, payload);
        Box::pin(async move {
            let value = json.await?.into_inner();
            Ok(JsonBody(parse(value)?))
        })
    }
}

/// Reads `T` from a JSON value: refused with 400 `malformed_request` unless it is an object
/// of the shape `T` reads, whole-number floats counting as integers.
pub fn parse<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_request("malformed_request", "the body must be a JSON object"));
    }
    serde_json::from_value(integers_as_integers(value))
        .map_err(|error| ApiError::bad_request("malformed_request", format!("invalid body: {error}")))
}

/// The largest magnitude below which every whole `f64` converts to `i64` exactly (2^63).
const I64_BOUND_F64: f64 = 9_223_372_036_854_775_808.0;

/// `value` with every float that is a whole number in `i64` range replaced by that integer.
fn integers_as_integers(value: Value) -> Value {
    match value {
        Value::Number(number) => Value::Number(whole(&number).map(Number::from).unwrap_or(number)),
        Value::Array(items) => Value::Array(items.into_iter().map(integers_as_integers).collect()),
        Value::Object(fields) => {
            Value::Object(fields.into_iter().map(|(name, field)| (name, integers_as_integers(field))).collect())
        }
        other => other,
    }
}

fn whole(number: &Number) -> Option<i64> {
    if number.is_i64() || number.is_u64() {
        return None;
    }
    let float = number.as_f64()?;
    // Below 2^63 in magnitude a whole float is exactly an i64 (-2^63 itself included).
    let in_range = (-I64_BOUND_F64..I64_BOUND_F64).contains(&float);
    (float.fract() == 0.0 && in_range).then_some(float as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Line {
        sku_id: i64,
        quantity: i64,
    }

    #[test]
    fn whole_floats_are_integers_and_fractions_are_refused() {
        let line: Line = parse(json!({"sku_id": 8460.0, "quantity": 2})).expect("whole floats read as integers");
        assert_eq!(line, Line { sku_id: 8460, quantity: 2 });
        for refused in [json!({"sku_id": 1.5, "quantity": 2}), json!({"sku_id": 1e300, "quantity": 2})] {
            let error = parse::<Line>(refused.clone()).unwrap_err();
            assert_eq!((error.status.as_u16(), error.code), (400, "malformed_request"), "{refused}");
        }
    }

    #[test]
    fn a_struct_is_not_read_from_an_array() {
        let error = parse::<Line>(json!([1, 2])).unwrap_err();
        assert_eq!((error.status.as_u16(), error.code), (400, "malformed_request"));
    }
}
