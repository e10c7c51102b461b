//! The product's integration tests: one test binary (the product is linked
//! once), one module a subject. Every test runs the real `coder-agent-auth`
//! binary against the in-process simulator (or against what nobody here
//! wrote: Coder's own header code run by Go, a stand-in proxy) and checks what
//! a user sees: exit codes, stdout and stderr, files, and what went over the
//! wire. Run one subject with `cargo test --test integration -- exchange::`.
//!
//! `e2e` and `fleet` need root (network namespaces) and minutes; CI runs them
//! with the release binary (`cargo test --release --test integration -- e2e:: fleet::`).

mod common;

mod coder_compat;
mod diagnostics;
mod e2e;
mod exchange;
mod faults;
mod fleet;
mod hostile;
mod messages;
mod paths;
mod proxy;
mod requirements;
mod sink;
mod watch;
