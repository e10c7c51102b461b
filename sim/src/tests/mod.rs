//! Unit tests: talk to the running simulator over raw sockets, as a client would. One file per
//! subject; `client` holds the raw-socket client they share.

mod agent;
mod aws;
mod azure;
mod client;
mod coder;
mod faults;
mod gcp;
mod http;
mod tls;
mod tokens;
