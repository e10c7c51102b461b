//! Coder over HTTPS with the CA generated at start.

use super::client::*;
use crate::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;
use std::time::Duration;

fn pem_to_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).unwrap()
}

#[tokio::test]
async fn coder_over_tls_with_the_generated_ca() {
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.coder_tls = true;
    let sim = Sim::start(cfg);
    assert!(
        sim.coder_url().starts_with("https://localhost:"),
        "{}",
        sim.coder_url()
    );
    let ca = sim.ca_pem().expect("CA PEM");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pem_to_der(&ca))).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));

    let (document, signature) = tokio::task::spawn_blocking({
        let m = sim.metadata_addr();
        move || {
            let t = parse_response(
                &try_request(
                    m,
                    "PUT",
                    "/latest/api/token",
                    &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
                    b"",
                    Duration::from_secs(5),
                )
                .unwrap(),
            )
            .text();
            let get = |p: &str| {
                parse_response(
                    &try_request(
                        m,
                        "GET",
                        p,
                        &[("X-aws-ec2-metadata-token", &t)],
                        b"",
                        Duration::from_secs(5),
                    )
                    .unwrap(),
                )
                .text()
            };
            (
                get("/latest/dynamic/instance-identity/document"),
                get("/latest/dynamic/instance-identity/signature"),
            )
        }
    })
    .await
    .unwrap();

    for name in ["localhost", "127.0.0.1"] {
        let tcp = tokio::net::TcpStream::connect(sim.coder_addr())
            .await
            .unwrap();
        let server_name = ServerName::try_from(name.to_string()).unwrap();
        let mut tls = connector.connect(server_name, tcp).await.unwrap();
        let body = json!({"signature": signature, "document": document}).to_string();
        tls.write_all(&raw_request(
            "POST",
            AWS,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        ))
        .await
        .unwrap();
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await.unwrap();
        let r = parse_response(&out);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(sim.tokens().len(), 2);

    // A client that does not trust the CA fails the handshake.
    let empty = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(sim.coder_addr())
        .await
        .unwrap();
    let res = tokio_rustls::TlsConnector::from(std::sync::Arc::new(empty))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    assert!(res.is_err());
}
