//! Local simulation of one cloud's instance-metadata service and of a Coder server, for
//! `coder-agent-auth`'s demo and tests.
//!
//! The simulator shares no Rust types with the product: the two talk JSON over HTTP on loopback,
//! exactly as the product talks to a real metadata service and a real `coderd`. The Coder side
//! mirrors `coderd/workspaceresourceauth.go` (multi-agent version, v2.33+): the same status codes,
//! the same messages and the same agent-selection rules.
//!
//! Everything the simulator signs is signed with a simulator-only RSA key (`src/sim_key.pk8`)
//! that protects nothing.

//!
//! Modules import one another in one direction only (no file imports another that imports it,
//! directly or through others): `wire` imports nothing of the simulator; `crypto` and `fault`
//! import `wire`; `config` imports `fault`; `state` the four of them; `http` moves bytes and
//! applies faults; `metadata` and `coder` answer requests; `server` routes requests to them and
//! runs everything.

mod coder;
mod config;
mod crypto;
mod fault;
mod http;
mod metadata;
mod server;
mod state;
mod tls;
mod wire;

pub use config::{
    CertKind, Cloud, CoderBehaviour, SimConfig, CURRENT_CODER_VERSION, DEFAULT_TOKEN_SEED,
};
pub use fault::{Fault, FaultKind, Target, INSTANCE_ID_PLACEHOLDER};
pub use server::{serve_blocking, ServeEvent, Sim};
pub use state::Recorded;

#[cfg(test)]
mod tests;
