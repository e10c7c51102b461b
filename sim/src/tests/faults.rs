//! Faults: coderd's canned answers and the transport faults, applied in order and counted.

use super::client::*;
use crate::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn faults_apply_in_order_and_count() {
    let cfg = SimConfig::new(Cloud::Aws, &["main"])
        .with_fault(Fault::coder_not_registered(2))
        .with_fault(Fault::coder_not_latest_build(1))
        .with_fault(
            Fault::metadata(
                FaultKind::Status {
                    status: 500,
                    content_type: "text/plain".into(),
                    body: "boom".into(),
                },
                1,
            )
            .on_path("signature"),
        );
    let sim = Sim::start(cfg);
    // The first identity fetch meets the metadata fault on /signature only.
    let t = aws_token(&sim);
    let h = [("X-aws-ec2-metadata-token", t.as_str())];
    let m = sim.metadata_addr();
    assert_eq!(
        request(
            m,
            "GET",
            "/latest/dynamic/instance-identity/document",
            &h,
            b""
        )
        .status,
        200
    );
    let r = request(
        m,
        "GET",
        "/latest/dynamic/instance-identity/signature",
        &h,
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (500, "boom"));
    assert_eq!(
        request(
            m,
            "GET",
            "/latest/dynamic/instance-identity/signature",
            &h,
            b""
        )
        .status,
        200
    );

    let r = aws_exchange(&sim, None);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"message": format!("Instance with id \"{ID}\" not found.")})
    );
    assert_eq!(aws_exchange(&sim, None).status, 404);
    let r = aws_exchange(&sim, None);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.message(),
        format!("Resource found for id \"{ID}\", but isn't registered on the latest history.")
    );
    assert_eq!(aws_exchange(&sim, None).status, 200);
    assert_eq!(sim.fault_counts(), vec![2, 1, 1]);

    sim.add_fault(Fault::coder_500(1));
    sim.add_fault(Fault::coder_html(502, 1));
    let r = aws_exchange(&sim, None);
    assert_eq!(r.status, 500);
    assert!(r.json()["detail"].is_string());
    let r = aws_exchange(&sim, None);
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert!(r.text().contains("502 Bad Gateway"));
    assert_eq!(aws_exchange(&sim, None).status, 200);
    assert_eq!(sim.fault_counts(), vec![2, 1, 1, 1, 1]);
}

#[test]
fn transport_faults() {
    let slow = Duration::from_millis(300);
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    let c = sim.coder_addr();
    let get = |sim: &Sim| {
        try_request(
            sim.coder_addr(),
            "GET",
            "/x",
            &[],
            b"",
            Duration::from_secs(5),
        )
    };

    sim.add_fault(Fault::coder(FaultKind::Delay(slow), 1));
    let t = Instant::now();
    let r = parse_response(&get(&sim).unwrap());
    assert!(t.elapsed() >= slow);
    assert_eq!(r.status, 404);

    sim.add_fault(Fault::coder(FaultKind::Hang, 1));
    let res = try_request(c, "GET", "/x", &[], b"", slow);
    assert!(res.is_err(), "{res:?}");

    sim.add_fault(Fault::coder(FaultKind::Reset, 1));
    match get(&sim) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(b) => assert!(b.is_empty(), "{}", String::from_utf8_lossy(&b)),
    }

    sim.add_fault(Fault::coder(FaultKind::Oversize(100_000), 1));
    let r = parse_response(&get(&sim).unwrap());
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 100_000);
    assert_eq!(r.header("content-length"), Some("100000"));

    sim.add_fault(Fault::coder(FaultKind::Truncate, 1));
    let r = parse_response(&get(&sim).unwrap());
    let declared: usize = r.header("content-length").unwrap().parse().unwrap();
    assert!(declared > 0);
    assert_eq!(r.body.len(), declared / 2);

    sim.add_fault(Fault::coder(FaultKind::Trickle { bytes_per_sec: 400 }, 1));
    let t = Instant::now();
    let r = parse_response(&get(&sim).unwrap());
    assert_eq!(r.status, 404);
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );

    // Faults spent: normal answers again.
    assert_eq!(parse_response(&get(&sim).unwrap()).status, 404);
    assert_eq!(sim.fault_counts(), vec![1; 6]);
    // Every request was recorded, faulted or not.
    assert_eq!(sim.requests_to(Target::Coder).len(), 7);
}
