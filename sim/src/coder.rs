//! The Coder server: `coderd/workspaceresourceauth.go` (multi-agent version) and the
//! `httpapi.Read` / `httpapi.Write` helpers it uses.

use serde::Serialize;

use crate::config::{Cloud, CoderBehaviour};
use crate::crypto;
use crate::http::{Outcome, Request, Response};
use crate::state::{unix_now, Shared};
use crate::wire::{go_json, go_quote, JSON_CONTENT_TYPE};

/// `codersdk.Response` (plus the `agent_names` a future server may send with a 409).
#[derive(Serialize, Default)]
struct CoderResponse {
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    validations: Option<Vec<ValidationError>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_names: Option<Vec<String>>,
}

#[derive(Serialize)]
struct ValidationError {
    field: String,
    detail: String,
}

fn write<T: Serialize>(status: u16, v: &T) -> Outcome {
    Response::new(status, JSON_CONTENT_TYPE, go_json(v)).into()
}

fn message(status: u16, msg: impl Into<String>) -> Outcome {
    write(
        status,
        &CoderResponse {
            message: msg.into(),
            ..Default::default()
        },
    )
}

fn message_detail(status: u16, msg: &str, detail: impl Into<String>) -> Outcome {
    write(
        status,
        &CoderResponse {
            message: msg.to_string(),
            detail: Some(detail.into()),
            ..Default::default()
        },
    )
}

fn cloud_of_path(path: &str) -> Option<Cloud> {
    [Cloud::Aws, Cloud::Gcp, Cloud::Azure]
        .into_iter()
        .find(|c| c.coder_path() == path)
}

/// Where coderd serves its CLI for Linux on x86-64 (`site/bin`).
pub(crate) const CLI_PATH: &str = "/bin/coder-linux-amd64";

/// `GET /api/v2/buildinfo` (codersdk.BuildInfoResponse, coderd/coderd.go): no authentication.
fn buildinfo(shared: &Shared) -> Outcome {
    let v = &shared.cfg.coder_version;
    write(
        200,
        &serde_json::json!({
            "external_url": "https://github.com/coder/coder",
            "version": v,
            "dashboard_url": "http://coder.sim",
            "workspace_proxy": false,
            "agent_api_version": "1.0",
            "provisioner_api_version": "1.4",
            "upgrade_message": "",
            "deployment_id": "00000000-0000-4000-8000-000000000000",
            "telemetry": false,
            "webpush_public_key": "",
        }),
    )
}

pub(crate) fn handle(shared: &Shared, req: &Request) -> Outcome {
    if req.path == "/api/v2/buildinfo" {
        return if req.method == "GET" {
            buildinfo(shared)
        } else {
            message(405, "Method not allowed.")
        };
    }
    if req.path == CLI_PATH {
        if let Some(cli) = &shared.cfg.coder_cli {
            if req.method != "GET" {
                return message(405, "Method not allowed.");
            }
            return Response::new(200, "application/octet-stream", cli.clone()).into();
        }
    }
    if req.path == AGENT_GITSSHKEY_PATH || req.path == AGENT_RPC_PATH {
        return agent_api(shared, req);
    }
    let Some(cloud) = cloud_of_path(&req.path) else {
        return message(404, "Route not found.");
    };
    if req.method != "POST" {
        return message(405, "Method not allowed.");
    }

    // httpapi.Read: decode, then validate the `required` fields.
    let (go_type, required): (&str, &[&str]) = match cloud {
        Cloud::Aws => (
            "agentsdk.AWSInstanceIdentityToken",
            &["signature", "document"],
        ),
        Cloud::Gcp => ("agentsdk.GoogleInstanceIdentityToken", &["json_web_token"]),
        Cloud::Azure => (
            "agentsdk.AzureInstanceIdentityToken",
            &["signature", "encoding"],
        ),
    };
    let obj = match crypto::go_unmarshal_object(&req.body, go_type, true) {
        Ok(o) => o.unwrap_or_default(),
        Err(e) => return message_detail(400, "Request body must be valid JSON.", e),
    };
    let mut values = Vec::new();
    for field in required.iter().copied().chain(["agent_name"]) {
        match crypto::go_string_field(&obj, field, go_type) {
            Ok(v) => values.push(v),
            Err(e) => return message_detail(400, "Request body must be valid JSON.", e),
        }
    }
    let validations: Vec<ValidationError> = required
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_empty())
        .map(|(f, _)| ValidationError {
            field: f.to_string(),
            detail: "Validation failed for tag \"required\" with value: \"\"".to_string(),
        })
        .collect();
    if !validations.is_empty() {
        return write(
            400,
            &CoderResponse {
                message: "Validation failed.".into(),
                validations: Some(validations),
                ..Default::default()
            },
        );
    }
    let agent_name = values.last().cloned().unwrap_or_default();

    // The simulator's key stands for the configured cloud only: another cloud's endpoint
    // rejects whatever it gets, as a real Coder rejects a foreign signature (for GCP, after the
    // checks that come before the signature's: Google's certificates lack the simulator's key).
    let own = cloud == shared.cfg.cloud;
    let (invalid, verified) = match cloud {
        Cloud::Aws if !own => (
            "Invalid AWS identity.",
            Err("crypto/rsa: verification error".to_string()),
        ),
        Cloud::Azure if !own => (
            "Invalid Azure identity.",
            Err("verify pkcs7: x509: certificate signed by unknown authority".to_string()),
        ),
        Cloud::Aws => (
            "Invalid AWS identity.",
            crypto::verify_aws(&shared.keys, &values[0], &values[1]).map(Ok),
        ),
        Cloud::Gcp => (
            "Invalid GCP identity.",
            crypto::verify_gcp(own.then_some(&shared.keys), &values[0], unix_now())
                .map(|claims| gcp_instance_id(&claims)),
        ),
        Cloud::Azure => (
            "Invalid Azure identity.",
            crypto::verify_azure(&shared.keys, &values[0]).map(Ok),
        ),
    };
    match verified {
        Ok(Ok(instance_id)) => auth_instance_id(shared, &instance_id, &agent_name),
        // coderd/workspaceresourceauth.go, postWorkspaceAuthGoogleInstanceIdentity, when
        // mapstructure.Decode(payload.Claims, &claims) fails:
        //   httpapi.Write(ctx, rw, http.StatusBadRequest, codersdk.Response{
        //       Message: "Error decoding JWT claims.",
        //       Detail:  err.Error(),
        //   })
        Ok(Err(detail)) => message_detail(400, "Error decoding JWT claims.", detail),
        Err(detail) => message_detail(401, invalid, detail),
    }
}

/// coderd's `mapstructure.Decode(payload.Claims, &claims)` for
/// `google.compute_engine.instance_id`: a missing claim is the empty string (so the lookup
/// answers 404 `Instance with id "" not found.`); a claim of another type is mapstructure's
/// error.
fn gcp_instance_id(claims: &serde_json::Map<String, serde_json::Value>) -> Result<String, String> {
    let mut value = None;
    let mut name = String::new();
    let mut node = Some(claims);
    for (i, key) in ["google", "compute_engine", "instance_id"]
        .iter()
        .enumerate()
    {
        let Some(map) = node else { break };
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(key);
        // mapstructure matches map keys case-insensitively when no exact match exists.
        let found = map.get(*key).or_else(|| {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        });
        match found {
            None | Some(serde_json::Value::Null) => return Ok(String::new()),
            Some(serde_json::Value::Object(m)) if i < 2 => node = Some(m),
            Some(v) if i == 2 => value = Some(v),
            Some(v) => {
                return Err(format!(
                    "1 error(s) decoding:\n\n* '{name}' expected a map, got '{}'",
                    go_kind(v)
                ))
            }
        }
    }
    match value {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!(
            "1 error(s) decoding:\n\n* '{name}' expected type 'string', got unconvertible type '{}', value: '{v}'",
            go_type(v)
        )),
        None => Ok(String::new()),
    }
}

/// The `reflect.Kind` of a decoded JSON value, as mapstructure names it.
fn go_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "float64",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "slice",
        serde_json::Value::Object(_) => "map",
        serde_json::Value::Null => "invalid",
    }
}

/// The Go type of a decoded JSON value (`%s` of its `reflect.Type`).
fn go_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "float64",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "[]interface {}",
        serde_json::Value::Object(_) => "map[string]interface {}",
        serde_json::Value::Null => "<nil>",
    }
}

/// `handleAuthInstanceID`.
fn auth_instance_id(shared: &Shared, instance_id: &str, agent_name: &str) -> Outcome {
    let cfg = &shared.cfg;
    let behaviour = cfg.coder_behaviour();
    // Before v2.33.0 the body has no agent_name field: whatever was sent is ignored.
    let agent_name = if behaviour == CoderBehaviour::IgnoresNames {
        ""
    } else {
        agent_name.trim()
    };
    // The agents of the latest build that carry this instance id. With the v2.33.0–2.33.3 bug,
    // the stale agents of an earlier build are candidates too.
    let mut candidates: Vec<&str> = if instance_id == cfg.instance_id {
        cfg.agents.iter().map(|a| a.as_str()).collect()
    } else {
        Vec::new()
    };
    if behaviour == CoderBehaviour::IgnoresNames {
        // GetWorkspaceAgentByInstanceID: ORDER BY created_at DESC, the first row.
        if let Some(newest) = candidates.last().copied() {
            candidates = vec![newest];
        }
    }
    if cfg.legacy_duplicate_names || behaviour == CoderBehaviour::RepeatsNames {
        candidates = candidates.iter().flat_map(|a| [*a, *a]).collect();
    }
    if candidates.is_empty() {
        return message(
            404,
            format!("Instance with id {} not found.", go_quote(instance_id)),
        );
    }
    let selected = if !agent_name.is_empty() {
        match candidates.iter().find(|a| **a == agent_name) {
            Some(a) => *a,
            None => {
                return message(
                    404,
                    format!(
                        "No agent found with instance ID {} and name {}.",
                        go_quote(instance_id),
                        go_quote(agent_name)
                    ),
                )
            }
        }
    } else if candidates.len() != 1 {
        let mut names: Vec<String> = candidates.iter().map(|a| a.to_string()).collect();
        names.sort();
        let msg = format!(
            "Multiple agents found with instance ID {}. Set CODER_AGENT_NAME to one of: {}",
            go_quote(instance_id),
            names.join(", ")
        );
        let agent_names = cfg.structured_409.then(|| {
            let mut unique = names.clone();
            unique.dedup();
            unique
        });
        return write(
            409,
            &CoderResponse {
                message: msg,
                agent_names,
                ..Default::default()
            },
        );
    } else {
        candidates[0]
    };
    #[derive(Serialize)]
    struct AuthenticateResponse {
        session_token: String,
    }
    // coderd/workspaceresourceauth.go, handleAuthInstanceID: the agent row's stored token, the
    // same on every exchange until a new build makes new agents:
    //   httpapi.Write(ctx, rw, http.StatusOK, agentsdk.AuthenticateResponse{
    //       SessionToken: agent.AuthToken.String(),
    //   })
    write(
        200,
        &AuthenticateResponse {
            session_token: shared.issue_token(selected),
        },
    )
}

// ---------------------------------------------------------------- the agent's own API

/// `GET /api/v2/workspaceagents/me/gitsshkey` (coderd/gitsshkey.go, `agentGitSSHKey`): the
/// workspace owner's Git SSH key, for the agent's token. A plain GET that answers 200 with JSON.
pub(crate) const AGENT_GITSSHKEY_PATH: &str = "/api/v2/workspaceagents/me/gitsshkey";

/// `GET /api/v2/workspaceagents/me/rpc` (coderd/workspaceagentsrpc.go, `workspaceAgentRPC`):
/// where `coder agent` connects (a WebSocket carrying the agent API).
pub(crate) const AGENT_RPC_PATH: &str = "/api/v2/workspaceagents/me/rpc";

/// `codersdk.SessionTokenCookie`, also the query parameter's name.
const SESSION_TOKEN_COOKIE: &str = "coder_session_token";

/// `httpmw.APITokenFromRequest` (coderd/httpmw/apikey.go): the cookie, then the query
/// parameter, then the `Coder-Session-Token` header.
fn api_token(req: &Request) -> String {
    let cookie = req
        .headers
        .iter()
        .filter(|(k, _)| k == "cookie")
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_TOKEN_COOKIE)
        .map(|(_, v)| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty());
    cookie
        .or_else(|| {
            req.query_param(SESSION_TOKEN_COOKIE)
                .filter(|v| !v.is_empty())
        })
        .or_else(|| req.header("coder-session-token").map(str::to_string))
        .unwrap_or_default()
}

/// `uuid.Parse` (github.com/google/uuid): the canonical form, `{...}`, `urn:uuid:...` or 32 bare
/// hex digits, in either case. Returns the canonical lower-case form.
fn parse_uuid(s: &str) -> Option<String> {
    let body = match s.len() {
        36 => s,
        38 if s.starts_with('{') && s.ends_with('}') => &s[1..37],
        45 => match (s.get(..9), s.get(9..)) {
            (Some(urn), Some(rest)) if urn.eq_ignore_ascii_case("urn:uuid:") => rest,
            _ => return None,
        },
        32 => {
            return s.bytes().all(|b| b.is_ascii_hexdigit()).then(|| {
                let l = s.to_ascii_lowercase();
                format!(
                    "{}-{}-{}-{}-{}",
                    &l[..8],
                    &l[8..12],
                    &l[12..16],
                    &l[16..20],
                    &l[20..]
                )
            })
        }
        _ => return None,
    };
    let ok = body.bytes().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => b == b'-',
        _ => b.is_ascii_hexdigit(),
    });
    ok.then(|| body.to_ascii_lowercase())
}

/// The agent middleware: `httpmw.ExtractWorkspaceAgentAndLatestBuild`
/// (coderd/httpmw/workspaceagent.go), or before v2.10.0 `httpmw.ExtractWorkspaceAgent`, which
/// took any build's agent. The agent's (name, build), or coderd's 401.
fn authenticate_agent(shared: &Shared, req: &Request) -> Result<(String, u64), Outcome> {
    let token = api_token(req);
    if token.is_empty() {
        // coderd/httpmw/workspaceagent.go:
        //   Message: fmt.Sprintf("Cookie %q must be provided.", codersdk.SessionTokenCookie),
        return Err(message(
            401,
            format!(
                "Cookie {} must be provided.",
                go_quote(SESSION_TOKEN_COOKIE)
            ),
        ));
    }
    let Some(token) = parse_uuid(&token) else {
        // coderd/httpmw/workspaceagent.go:
        //   Message: "Workspace agent token invalid.",
        //   Detail:  fmt.Sprintf("An agent token must be a valid UUIDv4. (len %d)", len(tokenValue)),
        return Err(message_detail(
            401,
            "Workspace agent token invalid.",
            format!(
                "An agent token must be a valid UUIDv4. (len {})",
                token.len()
            ),
        ));
    };
    // v2.10.0 on: GetWorkspaceAgentAndLatestBuildByAuthToken matches the latest build's agents
    // only ("-- Filter out builds that are not the latest."), so an earlier build's token is
    // sql.ErrNoRows like an unknown one. Before: GetWorkspaceAgentByAuthToken, any build.
    let owner = shared.token_owner(&token).filter(|(_, build)| {
        !shared.cfg.agent_auth_latest_build_only() || *build == shared.build()
    });
    owner.ok_or_else(|| {
        // coderd/httpmw/workspaceagent.go, on sql.ErrNoRows:
        //   Message: "Workspace agent not authorized.",
        //   Detail:  "The agent cannot authenticate until the workspace provision job has been
        //             completed. If the job is no longer running, this agent is invalid.",
        message_detail(
            401,
            "Workspace agent not authorized.",
            "The agent cannot authenticate until the workspace provision job has been completed. If the job is no longer running, this agent is invalid.",
        )
    })
}

/// The routes under `/api/v2/workspaceagents/me` that the simulator plays, behind the agent
/// middleware (it runs before the method is checked, as chi runs a sub-router's middleware).
fn agent_api(shared: &Shared, req: &Request) -> Outcome {
    let (_agent, build) = match authenticate_agent(shared, req) {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    if req.method != "GET" {
        return message(405, "Method not allowed.");
    }
    if req.path == AGENT_GITSSHKEY_PATH {
        /// `agentsdk.GitSSHKey`, its fields in Go's order.
        #[derive(Serialize)]
        struct GitSshKey {
            public_key: String,
            private_key: String,
        }
        let (public_key, private_key) = crypto::git_ssh_key(&shared.cfg.token_seed);
        return write(
            200,
            &GitSshKey {
                public_key,
                private_key,
            },
        );
    }
    // AGENT_RPC_PATH. Before v2.10.0 the handler checked the build itself
    // (coderd/workspaceagentsrpc.go, ensureLatestBuild):
    //   if build.ID != latestBuild.ID { return xerrors.New("build is outdated") }
    //   ...
    //   httpapi.Write(ctx, rw, http.StatusForbidden, codersdk.Response{
    //       Message: "Agent trying to connect from non-latest build.",
    //       Detail:  err.Error(),
    //   })
    if build != shared.build() {
        return message_detail(
            403,
            "Agent trying to connect from non-latest build.",
            "build is outdated",
        );
    }
    websocket_refusal(req)
}

/// What `websocket.Accept` (github.com/coder/websocket, accept.go) does with a request that is
/// not a WebSocket handshake: `http.Error(w, err.Error(), errCode)`; coderd then writes its own
/// 400 ("Failed to accept websocket.") into the same response, which Go appends to the body
/// (the status line is already out). A real handshake the simulator does not take: it does not
/// speak the agent API.
fn websocket_refusal(req: &Request) -> Outcome {
    let tokens = |name: &str| -> Vec<String> {
        req.headers
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect()
    };
    let refused = |status: u16, err: String, header: Option<(&str, &str)>| -> Outcome {
        let mut body = format!("{err}\n").into_bytes();
        body.extend(go_json(&CoderResponse {
            message: "Failed to accept websocket.".into(),
            detail: Some(format!("failed to accept WebSocket connection: {err}")),
            ..Default::default()
        }));
        let mut resp = Response::new(status, "text/plain; charset=utf-8", body)
            .with_header("X-Content-Type-Options", "nosniff");
        if let Some((name, value)) = header {
            resp = resp.with_header(name, value);
        }
        resp.into()
    };
    let upgrade = Some(("Upgrade", "websocket"));
    // verifyClientRequest, in its order.
    if !tokens("connection").iter().any(|t| t == "upgrade") {
        let got = req.header("connection").unwrap_or("");
        return refused(
            426,
            format!(
                "WebSocket protocol violation: Connection header {} does not contain Upgrade",
                go_quote(got)
            ),
            upgrade,
        );
    }
    if !tokens("upgrade").iter().any(|t| t == "websocket") {
        let got = req.header("upgrade").unwrap_or("");
        return refused(
            426,
            format!(
                "WebSocket protocol violation: Upgrade header {} does not contain websocket",
                go_quote(got)
            ),
            upgrade,
        );
    }
    let version = req.header("sec-websocket-version").unwrap_or("");
    if version != "13" {
        return refused(
            400,
            format!(
                "unsupported WebSocket protocol version (only 13 is supported): {}",
                go_quote(version)
            ),
            Some(("Sec-WebSocket-Version", "13")),
        );
    }
    if req.header("sec-websocket-key").unwrap_or("").is_empty() {
        return refused(
            400,
            "WebSocket protocol violation: missing Sec-WebSocket-Key".into(),
            None,
        );
    }
    // Not coderd's: the simulator stops here.
    message_detail(
        501,
        "coder-agent-auth-sim does not speak the agent API.",
        "The token was accepted; the simulator answers no WebSocket.",
    )
}
