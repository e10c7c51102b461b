//! rustls set-up: ring as the crypto provider, and a do-nothing TLS config for
//! clients that only ever speak plain http (so no trust store is loaded).

use std::sync::Arc;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Install ring as the process-wide provider (reqwest needs one to exist).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS config that trusts nothing, for clients that never use https. It costs
/// nothing to build, unlike the platform verifier, which reads the OS trust store.
pub fn unused_tls_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}
