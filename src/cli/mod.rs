//! The command line: clap's definitions ([`definitions`]), argv parsed into
//! them with the tool's own usage errors ([`parse`]), and their validation
//! into a [`crate::config::Config`] ([`validate`]). Usage errors stop here,
//! before any I/O.

pub mod definitions;
pub mod parse;
pub mod validate;

pub use definitions::Cli;
