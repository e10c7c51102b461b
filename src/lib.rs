//! coder-agent-auth: exchange a cloud VM's signed instance identity for a
//! Coder workspace-agent session token.
//!
//! Data path: `cli` → `Config` → `cloud::{aws,gcp,azure}` → `Identity` →
//! `coder` → token → `sink`; `retry` wraps both network steps.

pub mod app;
pub mod cli;
pub mod cloud;
pub mod coder;
pub mod detect;
pub mod error;
pub mod files;
pub mod inspect;
pub mod logging;
pub mod retry;
pub mod secret;
pub mod sink;
pub mod tls;
