//! hubgate: an authenticating reverse proxy for JupyterHub, a drop-in replacement for
//! configurable-http-proxy, built on pingora.
//!
//! `main.rs` parses the command line into a [`config::Config`]; [`server::Hubgate`] builds
//! and runs every service from it.

pub mod api;
pub mod auth;
pub mod canonical;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod server;
pub mod time;
pub mod tls;
pub mod web;
