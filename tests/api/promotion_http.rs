//! Promotions over HTTP.
