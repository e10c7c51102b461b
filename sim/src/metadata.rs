//! The metadata service of the configured cloud. Other clouds' paths answer 404.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::config::Cloud;
use crate::crypto;
use crate::http::{Outcome, Request, Response};
use crate::state::{lock, unix_now, Shared};
use crate::wire;

pub(crate) fn handle(shared: &Shared, req: &Request) -> Outcome {
    match shared.cfg.cloud {
        Cloud::Aws => aws(shared, req),
        Cloud::Gcp => gcp(shared, req).into(),
        Cloud::Azure => azure(shared, req).into(),
    }
}

// ---------------------------------------------------------------- AWS

/// IMDS's error page.
fn aws_error(status: u16) -> Response {
    let reason = wire::reason(status);
    Response::new(
        status,
        "text/html",
        format!(
            "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\
<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\
\t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n\
 <head>\n  <title>{status} - {reason}</title>\n </head>\n\
 <body>\n  <h1>{status} - {reason}</h1>\n </body>\n</html>\n"
        ),
    )
}

fn aws_text(body: &str) -> Outcome {
    Response::new(200, "text/plain", body.to_string()).into()
}

const AWS_TOKEN_PATH: &str = "/latest/api/token";

fn aws(shared: &Shared, req: &Request) -> Outcome {
    let cfg = &shared.cfg;
    if req.header("x-forwarded-for").is_some() {
        return aws_error(403).into();
    }
    if req.path == AWS_TOKEN_PATH {
        if req.method != "PUT" {
            return aws_error(405).with_header("Allow", "OPTIONS, PUT").into();
        }
        if cfg.imds_put_hangs {
            return Outcome::Hang;
        }
        if cfg.imds_v1_only {
            return aws_error(405).into();
        }
        let ttl = req
            .header("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.trim().parse::<u32>().ok());
        let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
            return aws_error(400).into();
        };
        let token = crypto::imds_token();
        lock(&shared.imds_tokens).insert(token.clone());
        return Response::new(200, "text/plain", token)
            .with_header("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", ttl.to_string())
            .into();
    }
    if req.method != "GET" {
        return aws_error(405).into();
    }
    let known = matches!(
        req.path.as_str(),
        "/" | "/latest"
            | "/latest/"
            | "/latest/dynamic/instance-identity/document"
            | "/latest/dynamic/instance-identity/signature"
            | "/latest/meta-data/instance-id"
    );
    if !known {
        return aws_error(404).into();
    }
    let v1_allowed = cfg.imds_v1_only || cfg.imds_put_hangs;
    match req.header("x-aws-ec2-metadata-token") {
        Some(t) if lock(&shared.imds_tokens).contains(t) => {}
        None if v1_allowed => {}
        _ => return aws_error(401).into(),
    }
    match req.path.as_str() {
        "/" => aws_text("latest"),
        "/latest" | "/latest/" => aws_text("dynamic\nmeta-data\nuser-data"),
        "/latest/dynamic/instance-identity/document" => aws_text(&shared.aws_document),
        "/latest/dynamic/instance-identity/signature" => aws_text(&shared.aws_signature),
        _ => aws_text(&cfg.instance_id),
    }
}

// ---------------------------------------------------------------- GCP

const GCP_IDENTITY_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";

fn gcp(shared: &Shared, req: &Request) -> Response {
    gcp_inner(shared, req)
        .with_header("Metadata-Flavor", "Google")
        .with_header("Server", "Metadata Server for VM")
}

fn gcp_text(body: &str) -> Response {
    Response::new(200, "application/text", body.to_string())
}

fn gcp_error(status: u16, body: &str) -> Response {
    Response::new(status, "text/html; charset=UTF-8", body.to_string())
}

fn gcp_inner(shared: &Shared, req: &Request) -> Response {
    let cfg = &shared.cfg;
    if req.header("x-forwarded-for").is_some() {
        return gcp_error(
            403,
            "Request denied: X-Forwarded-For header is not allowed.\n",
        );
    }
    if req.method != "GET" {
        return gcp_error(405, "Method not allowed\n");
    }
    // The root answers without the header: it is how clients probe for GCE.
    if req.path == "/" {
        return gcp_text("computeMetadata/\n");
    }
    if req.header("metadata-flavor") != Some("Google") {
        return gcp_error(
            403,
            "Your client does not have permission to get URL from this server. Missing Metadata-Flavor:Google header.\n",
        );
    }
    match req.path.as_str() {
        GCP_IDENTITY_PATH => {
            let audience = req.query_param("audience").unwrap_or_default();
            if audience.is_empty() {
                return gcp_error(400, "non-empty audience parameter required\n");
            }
            let full = req.query_param("format").as_deref() == Some("full");
            gcp_text(&crypto::gcp_jwt(
                &shared.keys,
                &cfg.instance_id,
                &audience,
                full,
                unix_now(),
                cfg.gcp_jwt_lifetime.as_secs(),
            ))
        }
        "/computeMetadata/v1/instance/id" => gcp_text(&cfg.instance_id),
        "/computeMetadata/v1/instance/name" | "/computeMetadata/v1/instance/hostname" => {
            gcp_text(crypto::GCP_INSTANCE_NAME)
        }
        "/computeMetadata/v1/instance/zone" => gcp_text(&format!(
            "projects/{}/zones/{}",
            crypto::GCP_PROJECT_NUMBER,
            crypto::GCP_ZONE
        )),
        "/computeMetadata/v1/project/project-id" => gcp_text(crypto::GCP_PROJECT_ID),
        "/computeMetadata/v1/project/numeric-project-id" => {
            gcp_text(&crypto::GCP_PROJECT_NUMBER.to_string())
        }
        _ => gcp_error(404, "Not Found\n"),
    }
}

// ---------------------------------------------------------------- Azure

const AZURE_JSON: &str = "application/json; charset=utf-8";

fn azure_error(status: u16, error: &str) -> Response {
    Response::new(
        status,
        AZURE_JSON,
        serde_json::json!({ "error": error }).to_string(),
    )
}

fn azure(shared: &Shared, req: &Request) -> Response {
    let cfg = &shared.cfg;
    if cfg.azure_throttle {
        let now = Instant::now();
        let mut window = lock(&shared.azure_window);
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            window.pop_front();
        }
        if window.len() >= 5 {
            return azure_error(429, "Too many requests");
        }
        window.push_back(now);
    }
    if req.header("x-forwarded-for").is_some() {
        return azure_error(400, "Bad request. X-Forwarded-For header is not allowed");
    }
    if !req
        .header("metadata")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return azure_error(400, "Bad request. Required metadata header not specified");
    }
    if req.method != "GET" {
        return azure_error(405, "The requested method is not allowed");
    }
    let known = matches!(
        req.path.as_str(),
        "/metadata/attested/document" | "/metadata/instance"
    );
    if !known {
        return azure_error(404, "Not found");
    }
    if req
        .query_param("api-version")
        .unwrap_or_default()
        .is_empty()
    {
        return Response::new(
            400,
            AZURE_JSON,
            serde_json::json!({
                "error": "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds",
                "newest-versions": ["2023-07-01", "2021-12-13", "2021-11-15"],
            })
            .to_string(),
        );
    }
    if req.path == "/metadata/attested/document" {
        let nonce = req
            .query_param("nonce")
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| crypto::AZURE_DEFAULT_NONCE.to_string());
        let content = crypto::azure_content(&cfg.instance_id, &nonce);
        let p7 = crypto::pkcs7_sign(&shared.keys, content.as_bytes());
        let body = serde_json::json!({
            "encoding": "pkcs7",
            "signature": STANDARD.encode(p7),
        });
        return Response::new(200, AZURE_JSON, body.to_string());
    }
    let body = serde_json::json!({
        "compute": {
            "azEnvironment": "AzurePublicCloud",
            "location": "westeurope",
            "name": "sim-vm",
            "osType": "Linux",
            "resourceGroupName": "sim-rg",
            "subscriptionId": crypto::AZURE_SUBSCRIPTION,
            "vmId": cfg.instance_id,
            "vmSize": "Standard_D2s_v3",
        },
        "network": { "interface": [] },
    });
    Response::new(200, AZURE_JSON, body.to_string())
}
