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

    let (invalid, verified) = match cloud {
        Cloud::Aws => (
            "Invalid AWS identity.",
            crypto::verify_aws(&shared.keys, &values[0], &values[1]),
        ),
        Cloud::Gcp => (
            "Invalid GCP identity.",
            crypto::verify_gcp(&shared.keys, &values[0], unix_now()),
        ),
        Cloud::Azure => (
            "Invalid Azure identity.",
            crypto::verify_azure(&shared.keys, &values[0]),
        ),
    };
    // The simulator's key stands for the configured cloud only: another cloud's endpoint
    // rejects whatever it gets, as a real Coder rejects a foreign signature.
    let verified = if cloud == shared.cfg.cloud {
        verified
    } else {
        Err(match cloud {
            Cloud::Aws => "crypto/rsa: verification error",
            Cloud::Gcp => "idtoken: could not verify token signature",
            Cloud::Azure => "verify pkcs7: x509: certificate signed by unknown authority",
        }
        .to_string())
    };
    match verified {
        Ok(instance_id) => auth_instance_id(shared, &instance_id, &agent_name),
        Err(detail) => message_detail(401, invalid, detail),
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
