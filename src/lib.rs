//! coder-agent-auth: exchange a cloud VM's signed instance identity for a
//! Coder workspace-agent session token.
//!
//! Data path: `cli` → `Config` → `detect` → `cloud::<provider>` → `Identity` →
//! `coder` → token → `sink`; `retry` wraps both network steps, and every step
//! fails with one `outcome::Failure`. See ARCHITECTURE.md.
//!
//! The library is the binary's body. What is `pub` here is the contract with
//! the binary (`main.rs`), the man-page generator (xtask) and the fuzz targets;
//! everything else is private.

mod app;
mod bounded;
mod cli;
mod cloud;
mod coder;
mod config;
mod detect;
mod http;
mod inspect;
mod logging;
mod notify;
mod outcome;
mod process;
mod retry;
mod secret;
mod sink;
mod text;
mod tls;

pub use cli::Cli;
pub use logging::error_for_stderr;
pub use outcome::{Blame, Done, Failure, Finished, Rendered};

/// The binary's entry point: parse `args` (argv, program name first) and run.
/// A command-line error is the tool's usage error (exit 2; the usage JSON
/// object under `--json`); `Err` is clap's `--help` or `--version` text, to
/// be shown with [`clap::Error::exit`].
pub fn run_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<Finished, clap::Error> {
    let args: Vec<_> = args.into_iter().collect();
    match cli::parse::parse(&args) {
        Ok(cli) => Ok(run(cli)),
        Err(cli::parse::ParseError::Display(e)) => Err(e),
        Err(cli::parse::ParseError::Usage { message, json }) => {
            Ok(Finished::failed(Failure::Usage(message), json))
        }
    }
}

/// Parse-free entry point: validate the arguments, set up logging and the
/// runtime, and run to a [`Finished`] outcome. Never exits the process.
pub fn run(cli: Cli) -> Finished {
    logging::init(&cli.log_config());
    let json = cli.wants_json();
    let mode = match cli.into_mode() {
        Ok(mode) => mode,
        Err(usage) => return Finished::failed(Failure::Usage(usage), json),
    };
    tls::install_provider();
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(app::run(mode)),
        Err(e) => Finished::failed(
            Failure::Internal(anyhow::anyhow!("starting the async runtime: {e}")),
            json,
        ),
    }
}

/// The pure parsers of untrusted input (server answers, metadata documents),
/// exposed for the fuzz targets in `fuzz/`.
pub mod parsers {
    pub use crate::cloud::aws::{parse_document, DocumentSummary};
    pub use crate::cloud::azure::{extract_content, pkcs7_content};
    pub use crate::cloud::gcp::decode_claims;
    pub use crate::coder::{
        classify, parse_candidates, parse_names_from_message, Answer, ServerError,
    };
    pub use crate::outcome::Ambiguity;
    pub use crate::retry::Attempt;
    pub use crate::secret::Secret;
    pub use crate::text::Redactor;

    /// The `identity` command's summary (JSON, and its text rendering) of an
    /// identity given as `(cloud id, [(field, value)])`; `None` for an unknown cloud.
    pub fn identity_summary(
        cloud: &str,
        fields: &[(&'static str, &str)],
        raw: bool,
    ) -> Option<(serde_json::Value, String)> {
        let cloud = crate::cloud::Cloud::from_auth(cloud)?;
        let fields = fields
            .iter()
            .map(|(name, value)| crate::cloud::Field::secret(name, *value))
            .collect();
        let v = crate::inspect::identity_summary(&crate::cloud::Identity::new(cloud, fields), raw);
        let text = crate::inspect::render_text(&v);
        Some((v, text))
    }
}

#[cfg(test)]
mod tests {
    use super::parsers::identity_summary;

    #[test]
    fn the_fuzzed_identity_summary_is_the_identity_commands() {
        let doc = r#"{"instanceId":"i-0abc123","region":"eu-west-1","accountId":"1234"}"#;
        let fields = [("document", doc), ("signature", "c2lnbmF0dXJl")];
        let (v, text) = identity_summary("aws", &fields, false).expect("aws is registered");
        assert_eq!(v["cloud"], "aws");
        assert_eq!(v["document"]["instanceId"], "i-0abc123");
        assert_eq!(v["signature_bytes"], 12);
        assert!(v.get("raw").is_none());
        assert!(text.contains("i-0abc123"), "{text}");
        let (v, _) = identity_summary("aws-instance-identity", &fields, true).unwrap();
        assert_eq!(v["raw"]["signature"], "c2lnbmF0dXJl");
        assert!(identity_summary("openstack", &fields, false).is_none());
    }
}
