//! A raw-socket client for the unit tests: requests written byte by byte, answers parsed by
//! hand, and the steps of an AWS exchange.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use crate::Sim;

pub(super) struct Resp {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl Resp {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        crate::wire::find_header(&self.headers, name)
    }
    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub(super) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub(super) fn message(&self) -> String {
        self.json()["message"].as_str().unwrap_or("").to_string()
    }
}

pub(super) fn parse_response(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    Resp {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

pub(super) fn raw_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: sim\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut b = r.into_bytes();
    b.extend_from_slice(body);
    b
}

/// Send one request and read to EOF. Err on a read error or timeout.
pub(super) fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    read_timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(read_timeout))?;
    s.write_all(&raw_request(method, path, headers, body))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

pub(super) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let raw = try_request(addr, method, path, headers, body, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    parse_response(&raw)
}

pub(super) fn post_json(sim: &Sim, path: &str, body: &Value) -> Resp {
    request(
        sim.coder_addr(),
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

pub(super) fn aws_token(sim: &Sim) -> String {
    let r = request(
        sim.metadata_addr(),
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

pub(super) fn aws_identity(sim: &Sim) -> (String, String) {
    let t = aws_token(sim);
    let get = |p: &str| {
        let r = request(
            sim.metadata_addr(),
            "GET",
            p,
            &[("X-aws-ec2-metadata-token", &t)],
            b"",
        );
        assert_eq!(r.status, 200, "{p}: {}", r.text());
        r.text()
    };
    (
        get("/latest/dynamic/instance-identity/document"),
        get("/latest/dynamic/instance-identity/signature"),
    )
}

pub(super) const AWS: &str = "/api/v2/workspaceagents/aws-instance-identity";
pub(super) const GCP: &str = "/api/v2/workspaceagents/google-instance-identity";
pub(super) const AZURE: &str = "/api/v2/workspaceagents/azure-instance-identity";
pub(super) const ID: &str = "i-0abc123def4567890";

pub(super) fn aws_exchange(sim: &Sim, name: Option<&str>) -> Resp {
    let (document, signature) = aws_identity(sim);
    let mut body = json!({ "signature": signature, "document": document });
    if let Some(n) = name {
        body["agent_name"] = json!(n);
    }
    post_json(sim, AWS, &body)
}
