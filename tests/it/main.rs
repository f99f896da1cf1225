//! hubgate's integration tests, as one test binary (`cargo test --test it`): every module
//! below is one concern and drives the real `hubgate` binary (or `$HUBGATE_BIN`) against
//! real peers; `support` is the shared harness. One binary compiles the harness and links
//! the dependencies once, instead of once per test file.
//!
//! Run one concern with a filter on the module name, e.g.
//! `cargo test --test it redis_store::` or `cargo test --test it api::`.

mod support;

mod activity;
mod api;
mod api_tls;
mod auth;
mod auth_groups;
mod auth_keys;
mod auth_login;
mod auth_logout;
mod auth_revocation;
mod auth_step_up;
mod auth_token;
mod auth_websocket;
mod cli;
mod client_timeout;
mod direct_path;
mod error;
mod forwarding;
mod front_door;
mod metrics;
mod redis_store;
mod routing;
mod shutdown;
mod target_tls;
mod tls;
mod tls_reload;
mod upstream_pool;
mod websocket;
