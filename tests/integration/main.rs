#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Integration tests: the gate in-process (and as a real binary where signals matter) against
//! local upstreams on 127.0.0.1.

mod admin;
mod config;
mod forwarding;
mod support;
mod tls;
