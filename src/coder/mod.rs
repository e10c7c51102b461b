//! The Coder side: the request built from an identity and an optional agent
//! name ([`request`]), sent ([`client`], with [`headers`] and [`proxy`]), and
//! its answer classified ([`answer`]); the server's version ([`version`]).

pub mod answer;
pub mod client;
pub mod headers;
pub mod proxy;
pub mod request;
pub mod version;

pub use answer::{classify, parse_candidates, parse_names_from_message, Answer, ServerError};
pub use client::CoderClient;
pub use request::endpoint;
