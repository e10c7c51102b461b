//! The agent's own routes (`/api/v2/workspaceagents/me/...`) behind coderd's agent middleware:
//! which tokens they take, and what they answer to the others.

use serde_json::{json, Value};

use super::client::*;
use crate::*;

const GITSSHKEY: &str = "/api/v2/workspaceagents/me/gitsshkey";
const RPC: &str = "/api/v2/workspaceagents/me/rpc";

fn get(sim: &Sim, path: &str, token: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = token
        .map(|t| vec![("Coder-Session-Token", t)])
        .unwrap_or_default();
    request(sim.coder_addr(), "GET", path, &headers, b"")
}

/// coderd's answer to a token it does not hold for the latest build.
const NOT_AUTHORIZED: &str = "{\"message\":\"Workspace agent not authorized.\",\"detail\":\"The agent cannot authenticate until the workspace provision job has been completed. If the job is no longer running, this agent is invalid.\"}\n";

#[test]
fn the_current_token_gets_the_git_ssh_key() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main", "dev"]));
    for agent in ["main", "dev"] {
        let t = sim.current_token(agent).unwrap();
        let r = get(&sim, GITSSHKEY, Some(&t));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        // agentsdk.GitSSHKey's two fields, in Go's order.
        assert!(
            r.text().starts_with("{\"public_key\":\"ssh-ed25519 "),
            "{}",
            r.text()
        );
        let v = r.json();
        assert_eq!(v.as_object().unwrap().len(), 2);
        let public = v["public_key"].as_str().unwrap();
        assert!(
            public.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"),
            "{public}"
        );
        assert!(public.ends_with('\n'));
        let private = v["private_key"].as_str().unwrap();
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA"));
        assert!(private.ends_with("-----END OPENSSH PRIVATE KEY-----\n"));
    }
    // The token also comes as the cookie or the query parameter, and in any of uuid.Parse's forms.
    let t = sim.current_token("main").unwrap();
    let cookie = format!("other=1; coder_session_token={t}");
    let r = request(
        sim.coder_addr(),
        "GET",
        GITSSHKEY,
        &[("Cookie", &cookie)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&sim, &format!("{GITSSHKEY}?coder_session_token={t}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    for form in [
        t.to_uppercase(),
        format!("{{{t}}}"),
        format!("urn:uuid:{t}"),
        t.replace('-', ""),
    ] {
        assert_eq!(get(&sim, GITSSHKEY, Some(&form)).status, 200, "{form}");
    }
    // Another method, with a good token: after the middleware, 405.
    let r = request(
        sim.coder_addr(),
        "POST",
        GITSSHKEY,
        &[("Coder-Session-Token", &t)],
        b"{}",
    );
    assert_eq!(r.status, 405);
    // Recorded like every request.
    let recorded = sim.requests_to(Target::Coder);
    assert!(recorded.iter().all(|r| r.path == GITSSHKEY));
    assert_eq!(
        recorded[0].header("coder-session-token"),
        sim.current_token("main").as_deref()
    );
}

#[test]
fn missing_malformed_and_unknown_tokens_get_coderds_401() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    for path in [GITSSHKEY, RPC] {
        let r = get(&sim, path, None);
        assert_eq!(r.status, 401);
        assert_eq!(
            r.text(),
            "{\"message\":\"Cookie \\\"coder_session_token\\\" must be provided.\"}\n"
        );
        let r = get(&sim, path, Some("not-a-uuid"));
        assert_eq!(r.status, 401);
        assert_eq!(
            r.json(),
            json!({"message": "Workspace agent token invalid.", "detail": "An agent token must be a valid UUIDv4. (len 10)"})
        );
        // Non-ASCII of a form's length is not a UUID either (and does not trip the parser).
        for odd in [
            "urn:uuid\u{e9}5a7c0d1e-2b3f-4a5b-8c9d-0e1f2a3b4c5",
            "{\u{e9}a7c0d1e-2b3f-4a5b-8c9d-0e1f2a3b4c5}",
        ] {
            let r = get(&sim, path, Some(odd));
            assert_eq!(r.message(), "Workspace agent token invalid.", "{odd}");
        }
        let r = get(&sim, path, Some("8b7a2e3c-1f0d-4c5e-9a8b-7c6d5e4f3a2b"));
        assert_eq!(r.status, 401);
        assert_eq!(r.text(), NOT_AUTHORIZED);
        // The middleware runs before the method is looked at.
        let r = request(sim.coder_addr(), "DELETE", path, &[], b"");
        assert_eq!(r.status, 401);
    }
    // The exchange's endpoints need no token: unchanged.
    assert_eq!(aws_exchange(&sim, Some("main")).status, 200);
}

#[test]
fn after_a_rebuild_the_old_token_is_refused_as_coderd_does() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    let old = sim.current_token("main").unwrap();
    assert_eq!(get(&sim, GITSSHKEY, Some(&old)).status, 200);
    sim.rebuild();
    let new = sim.current_token("main").unwrap();
    assert_ne!(old, new);
    // Since v2.10.0 the middleware takes the latest build's agents only: the old token is as
    // unknown as any other.
    for path in [GITSSHKEY, RPC] {
        let r = get(&sim, path, Some(&old));
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.text(), NOT_AUTHORIZED);
    }
    assert_eq!(get(&sim, GITSSHKEY, Some(&new)).status, 200);
    // The exchange now hands out the new token.
    let r = aws_exchange(&sim, Some("main"));
    assert_eq!(r.json()["session_token"], json!(new));
}

#[test]
fn before_v2_10_the_old_token_met_the_403_on_the_agents_connection() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.coder_version = "v2.9.4".into();
    let sim = Sim::start(cfg);
    let old = sim.current_token("main").unwrap();
    sim.rebuild();
    let new = sim.current_token("main").unwrap();
    // The middleware took any build's agent: routes that did not check the build answered.
    assert_eq!(get(&sim, GITSSHKEY, Some(&old)).status, 200);
    // The agent's connection did check it.
    let r = get(&sim, RPC, Some(&old));
    assert_eq!(r.status, 403);
    assert_eq!(
        r.text(),
        "{\"message\":\"Agent trying to connect from non-latest build.\",\"detail\":\"build is outdated\"}\n"
    );
    // The new token gets as far as the WebSocket handshake, which a plain GET is not.
    let r = get(&sim, RPC, Some(&new));
    assert_eq!(r.status, 426, "{}", r.text());
    assert_eq!(r.header("upgrade"), Some("websocket"));
    let text = r.text();
    let (first, rest) = text.split_once('\n').unwrap();
    assert_eq!(
        first,
        "WebSocket protocol violation: Connection header \"\" does not contain Upgrade"
    );
    let appended: Value = serde_json::from_str(rest).unwrap();
    assert_eq!(appended["message"], "Failed to accept websocket.");
    assert_eq!(
        appended["detail"],
        format!("failed to accept WebSocket connection: {first}")
    );
    // Unknown tokens: the same 401 in every version.
    assert_eq!(
        get(&sim, RPC, Some("8b7a2e3c-1f0d-4c5e-9a8b-7c6d5e4f3a2b")).text(),
        NOT_AUTHORIZED
    );
}

#[test]
fn a_real_handshake_is_checked_then_declined() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    let t = sim.current_token("main").unwrap();
    let mut h = vec![
        ("Coder-Session-Token", t.as_str()),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
    ];
    let r = request(sim.coder_addr(), "GET", RPC, &h, b"");
    assert_eq!(r.status, 400);
    assert!(r
        .text()
        .starts_with("unsupported WebSocket protocol version (only 13 is supported): \"\"\n"));
    h.push(("Sec-WebSocket-Version", "13"));
    h.push(("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="));
    let r = request(sim.coder_addr(), "GET", RPC, &h, b"");
    assert_eq!(r.status, 501);
    assert!(r.message().contains("does not speak the agent API"));
}
