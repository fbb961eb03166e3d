//! synapse-gate: an identity-aware reverse proxy for Azure Synapse.
//!
//! A request's path through the crate follows the module order below; `pipeline` tells the
//! whole story in one place.

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod authn;
pub mod body;
pub mod cli;
pub mod common;
pub mod config;
pub mod demo;
pub mod error;
pub mod forward;
pub mod gate;
pub mod identity;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod pipeline;
pub mod policy;
pub mod reload;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod synapse;
pub mod telemetry;
pub mod tls;
