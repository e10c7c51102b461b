//! HTTPS for the simulated Coder server: a CA and a leaf certificate (for `localhost`,
//! `127.0.0.1` and `::1`), both generated at start.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::CertKind;

pub(crate) struct TlsMaterial {
    pub ca_pem: String,
    pub acceptor: TlsAcceptor,
}

pub(crate) fn make(kind: CertKind) -> Result<TlsMaterial, String> {
    let e = |what: &str, err: &dyn std::fmt::Display| format!("{what}: {err}");
    let ca_key = KeyPair::generate().map_err(|x| e("CA key", &x))?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|x| e("CA params", &x))?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "coder-agent-auth-sim test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|x| e("CA cert", &x))?;

    let leaf_key = KeyPair::generate().map_err(|x| e("leaf key", &x))?;
    let names = match kind {
        CertKind::WrongHost => vec!["wrong.example".to_string()],
        _ => vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ],
    };
    let mut leaf_params = CertificateParams::new(names).map_err(|x| e("leaf params", &x))?;
    if kind == CertKind::Expired {
        leaf_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        leaf_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca)
        .map_err(|x| e("leaf cert", &x))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|x| e("TLS versions", &x))?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .map_err(|x| e("TLS config", &x))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        ca_pem: ca.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}
