//! The simulator's own integration tests, one binary: the `serve` and `demo`
//! commands as a user runs them.

mod demo;
mod serve;
