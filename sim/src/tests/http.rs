//! The HTTP server itself: the request record, load, chunked bodies, keep-alive, shutdown.

use super::client::*;
use crate::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn requests_are_recorded() {
    let sim = Sim::start(SimConfig::new(Cloud::Gcp, &["main"]));
    request(
        sim.metadata_addr(),
        "GET",
        "/computeMetadata/v1/instance/id?alt=text",
        &[("Metadata-Flavor", "Google"), ("X-Custom", "v")],
        b"",
    );
    request(
        sim.coder_addr(),
        "POST",
        GCP,
        &[],
        br#"{"json_web_token":"x"}"#,
    );
    let reqs = sim.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].target, Target::Metadata);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/computeMetadata/v1/instance/id");
    assert_eq!(reqs[0].query, "alt=text");
    assert_eq!(reqs[0].query_param("alt").as_deref(), Some("text"));
    assert_eq!(reqs[0].header("METADATA-FLAVOR"), Some("Google"));
    assert!(reqs[0]
        .headers
        .iter()
        .any(|(k, v)| k == "x-custom" && v == "v"));
    assert!(reqs[0].peer.ip().is_loopback());
    assert_eq!(reqs[1].target, Target::Coder);
    assert_eq!(reqs[1].json(), json!({"json_web_token": "x"}));
}

#[test]
fn hundreds_of_concurrent_exchanges() {
    let sim = std::sync::Arc::new(Sim::start(SimConfig::new(Cloud::Aws, &["main", "dev"])));
    let (document, signature) = aws_identity(&sim);
    let body = std::sync::Arc::new(json!({"signature": signature, "document": document}));
    let handles: Vec<_> = (0..300)
        .map(|i| {
            let sim = sim.clone();
            let body = body.clone();
            std::thread::spawn(move || {
                let mut b = (*body).clone();
                b["agent_name"] = json!(if i % 2 == 0 { "main" } else { "dev" });
                post_json(&sim, AWS, &b).status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    // One record per answer, each holding its agent's one token.
    let tokens = sim.tokens();
    assert_eq!(tokens.len(), 300);
    for (agent, token) in &tokens {
        assert_eq!(Some(token), sim.current_token(agent).as_ref(), "{agent}");
    }
    assert_eq!(tokens.iter().filter(|(a, _)| a == "main").count(), 150);
    let unique: std::collections::HashSet<_> = tokens.iter().map(|(_, t)| t).collect();
    assert_eq!(unique.len(), 2);
}

#[test]
fn chunked_and_expect_continue_requests() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    let (document, signature) = aws_identity(&sim);
    let body = json!({"signature": signature, "document": document}).to_string();
    let mut s = TcpStream::connect(sim.coder_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST {AWS} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut cont = [0u8; 25];
    s.read_exact(&mut cont).unwrap();
    assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    let (a, b) = body.split_at(body.len() / 2);
    for part in [a, b] {
        s.write_all(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes())
            .unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let r = parse_response(&out);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn drop_closes_hanging_connections() {
    let sim = Sim::start(
        SimConfig::new(Cloud::Aws, &["main"]).with_fault(Fault::coder(FaultKind::Hang, 1)),
    );
    let mut s = TcpStream::connect(sim.coder_addr()).unwrap();
    s.write_all(&raw_request("GET", "/", &[], b"")).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    drop(sim);
    assert!(t.elapsed() < Duration::from_secs(3));
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut out = Vec::new();
    let res = s.read_to_end(&mut out);
    assert!(res.is_ok() || res.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset);
    assert!(out.is_empty());
}

/// Read one answer with a Content-Length body from a kept-alive connection.
fn read_one(s: &mut TcpStream, pending: &mut Vec<u8>) -> Resp {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = parse_response(&pending[..end + 4]);
            let len: usize = head.header("content-length").unwrap().parse().unwrap();
            if pending.len() >= end + 4 + len {
                let rest = pending.split_off(end + 4 + len);
                let r = parse_response(pending);
                *pending = rest;
                return r;
            }
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a whole answer");
        pending.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn keep_alive_serves_request_after_request_on_one_connection() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.keep_alive = true;
    let sim = Sim::start(cfg);
    let mut s = TcpStream::connect(sim.metadata_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut pending = Vec::new();
    s.write_all(&raw_request(
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        b"",
    ))
    .unwrap();
    let r = read_one(&mut s, &mut pending);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), None, "kept alive");
    let token = r.text();
    // Two requests sent at once (pipelined): both answered, in order, on the same connection.
    let get = |p: &str| {
        raw_request(
            "GET",
            p,
            &[("X-aws-ec2-metadata-token", token.as_str())],
            b"",
        )
    };
    let mut two = get("/latest/dynamic/instance-identity/signature");
    two.extend(get("/latest/dynamic/instance-identity/document"));
    s.write_all(&two).unwrap();
    let sig = read_one(&mut s, &mut pending);
    let doc = read_one(&mut s, &mut pending);
    assert_eq!(sig.status, 200);
    assert_eq!(doc.status, 200);
    assert!(doc.json()["instanceId"].is_string(), "{}", doc.text());
    // Connection: close is honoured: answered, then closed.
    s.write_all(&raw_request(
        "GET",
        "/latest/meta-data/",
        &[("Connection", "close")],
        b"",
    ))
    .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    pending.extend(rest);
    let last = parse_response(&pending);
    assert_eq!(last.header("connection"), Some("close"));
    let peers: Vec<_> = sim.requests().iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 4);
    assert!(peers.iter().all(|p| *p == peers[0]), "{peers:?}");
}

#[test]
fn coder_goes_down_and_comes_back_on_the_same_port() {
    let sim = Sim::start(
        SimConfig::new(Cloud::Aws, &["main"]).with_fault(Fault::coder(FaultKind::Hang, 1)),
    );
    let addr = sim.coder_addr();
    // A connection Coder never answers, open when it goes down.
    let mut hanging = TcpStream::connect(addr).unwrap();
    hanging
        .write_all(&raw_request("GET", "/api/v2/buildinfo", &[], b""))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.requests_to(Target::Coder).is_empty() {
        assert!(Instant::now() < deadline, "the request never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!sim.coder_down());

    sim.set_coder_down(true).unwrap();
    assert!(sim.coder_down());
    let refused = TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // Its connections went with it.
    hanging
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut out = Vec::new();
    let res = hanging.read_to_end(&mut out);
    assert!(
        res.is_ok() || res.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
        "the connection stayed open"
    );
    assert!(out.is_empty());
    // The metadata service does not go down with it.
    assert!(!aws_identity(&sim).0.is_empty());
    sim.set_coder_down(true).unwrap();

    for _ in 0..2 {
        sim.set_coder_down(false).unwrap();
        assert!(!sim.coder_down());
        assert_eq!(sim.coder_addr(), addr);
        assert_eq!(
            request(addr, "GET", "/api/v2/buildinfo", &[], b"").status,
            200
        );
        assert_eq!(aws_exchange(&sim, Some("main")).status, 200);
        sim.set_coder_down(false).unwrap();
        sim.set_coder_down(true).unwrap();
        assert_eq!(
            TcpStream::connect(addr).unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
    }
    assert_eq!(sim.tokens().len(), 2);
}

#[test]
fn requests_carry_the_time_they_arrived() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    let get = || request(sim.coder_addr(), "GET", "/api/v2/buildinfo", &[], b"");
    let before = Instant::now();
    for _ in 0..3 {
        get();
    }
    std::thread::sleep(Duration::from_millis(1100));
    let middle = Instant::now();
    for _ in 0..2 {
        get();
    }
    let after = Instant::now();
    let reqs = sim.requests();
    assert_eq!(reqs.len(), 5);
    for r in &reqs {
        assert!(sim.started() <= r.received && r.received <= after);
        assert_eq!(r.since_start, r.received - sim.started());
    }
    assert!(reqs.windows(2).all(|w| w[0].received <= w[1].received));
    assert!(reqs[..3]
        .iter()
        .all(|r| before <= r.received && r.received < middle));
    assert!(reqs[3..].iter().all(|r| middle <= r.received));
    // Per-second rates, counted from the first request.
    let first = reqs[0].since_start;
    let mut per_second = std::collections::BTreeMap::new();
    for r in &reqs {
        *per_second
            .entry((r.since_start - first).as_secs())
            .or_insert(0) += 1;
    }
    assert_eq!(per_second.get(&0), Some(&3), "{per_second:?}");
    assert_eq!(per_second.values().sum::<i32>(), 5);
}
