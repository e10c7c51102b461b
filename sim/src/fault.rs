//! Faults: the first N matching requests to one of the two servers ([`Target`]) get something
//! other than the normal answer. The Coder faults speak coderd's own messages.

use std::time::Duration;

use crate::wire;

/// Which of the two simulated servers a request reached (or a fault applies to).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Metadata,
    Coder,
}

impl Target {
    /// `metadata` or `coder`.
    pub fn name(self) -> &'static str {
        match self {
            Target::Metadata => "metadata",
            Target::Coder => "coder",
        }
    }
}

/// What a fault does to a request it matches. Faults apply before normal handling.
#[derive(Clone, Debug)]
pub enum FaultKind {
    /// Answer this instead. The text `{instance_id}` in `body` is replaced by the simulator's
    /// instance id (JSON-escaped), which is how the `Fault::coder_*` constructors name it.
    Status {
        status: u16,
        content_type: String,
        body: String,
    },
    /// Answer this, with these extra headers (`{instance_id}` replaced as for `Status`).
    Canned {
        status: u16,
        headers: Vec<(String, String)>,
        content_type: String,
        body: String,
    },
    /// A hostile server or proxy: answer `status` with the request body repeated in the message
    /// (JSON, or an HTML page when `html`).
    Echo { status: u16, html: bool },
    /// Wait, then answer normally.
    Delay(Duration),
    /// Read the request and never answer; the socket stays open until the simulator is dropped.
    Hang,
    /// Read the request, then close the socket abruptly (RST, through `SO_LINGER` 0).
    Reset,
    /// Send the normal response (status line, headers and body) very slowly.
    Trickle { bytes_per_sec: u32 },
    /// Answer 200 with a body of this many bytes (`a` repeated), with a correct Content-Length.
    Oversize(usize),
    /// Send the headers with the real Content-Length, then half the body, then close.
    Truncate,
    /// Answer a redirect (`status` 301/302/307/308) to `location`.
    Redirect { status: u16, location: String },
}

/// A fault: the first `times` requests to `target` whose request target (path and query)
/// contains `path_contains` get `kind` instead of the normal answer.
#[derive(Clone, Debug)]
pub struct Fault {
    pub target: Target,
    pub path_contains: Option<String>,
    pub times: usize,
    pub kind: FaultKind,
}

/// Replaced by the simulator's instance id in [`FaultKind::Status`] bodies.
pub const INSTANCE_ID_PLACEHOLDER: &str = "{instance_id}";

impl Fault {
    pub fn new(target: Target, kind: FaultKind, times: usize) -> Fault {
        Fault {
            target,
            path_contains: None,
            times,
            kind,
        }
    }

    /// A fault on the Coder server.
    pub fn coder(kind: FaultKind, times: usize) -> Fault {
        Fault::new(Target::Coder, kind, times)
    }

    /// A fault on the metadata service.
    pub fn metadata(kind: FaultKind, times: usize) -> Fault {
        Fault::new(Target::Metadata, kind, times)
    }

    /// Restrict the fault to requests whose path (with query) contains `part`.
    pub fn on_path(mut self, part: impl Into<String>) -> Fault {
        self.path_contains = Some(part.into());
        self
    }

    /// An answer of coderd's instance-identity handler (so only on those paths; a version read
    /// is not affected).
    fn coder_json(status: u16, body: &str, times: usize) -> Fault {
        Fault::coder(
            FaultKind::Status {
                status,
                content_type: wire::JSON_CONTENT_TYPE.to_string(),
                body: body.to_string(),
            },
            times,
        )
        .on_path("-instance-identity")
    }

    /// coderd's 404 while the workspace build has not recorded the instance yet (transient).
    pub fn coder_not_registered(times: usize) -> Fault {
        Fault::coder_json(
            404,
            "{\"message\":\"Instance with id \\\"{instance_id}\\\" not found.\"}\n",
            times,
        )
    }

    /// coderd's 400 while a rebuild is in progress (transient).
    pub fn coder_not_latest_build(times: usize) -> Fault {
        Fault::coder_json(
            400,
            "{\"message\":\"Resource found for id \\\"{instance_id}\\\", but isn't registered on the latest history.\"}\n",
            times,
        )
    }

    /// coderd's 500 when its database is in trouble (transient).
    pub fn coder_500(times: usize) -> Fault {
        Fault::coder_json(
            500,
            "{\"message\":\"Internal error fetching provisioner job agent.\",\"detail\":\"pq: the database system is starting up\"}\n",
            times,
        )
    }

    /// coderd's API rate limiter (coderd/httpmw/ratelimit.go with go-chi/httprate): 429, the
    /// window length in `Retry-After`.
    pub fn coder_rate_limited(times: usize) -> Fault {
        Fault::coder(
            FaultKind::Canned {
                status: 429,
                headers: vec![
                    ("Retry-After".into(), "60".into()),
                    ("X-Ratelimit-Limit".into(), "512".into()),
                    ("X-Ratelimit-Remaining".into(), "0".into()),
                ],
                content_type: wire::JSON_CONTENT_TYPE.to_string(),
                body: "{\"message\":\"You've been rate limited for sending more than 512 requests in 1m0s.\"}\n"
                    .into(),
            },
            times,
        )
    }

    /// A 401 whose detail says coderd could not fetch Azure's issuing certificate
    /// (coderd/azureidentity/azureidentity.go): the server's trouble, not the VM's.
    pub fn coder_azure_cert_fetch_failed(times: usize) -> Fault {
        Fault::coder_json(
            401,
            "{\"message\":\"Invalid Azure identity.\",\"detail\":\"certificate fetch unsuccessful\"}\n",
            times,
        )
    }

    /// A 401 whose detail is google.golang.org/api/idtoken failing to fetch Google's keys.
    pub fn coder_google_keys_unreachable(times: usize) -> Fault {
        Fault::coder_json(
            401,
            "{\"message\":\"Invalid GCP identity.\",\"detail\":\"Get \\\"https://www.googleapis.com/oauth2/v3/certs\\\": dial tcp: lookup www.googleapis.com: i/o timeout\"}\n",
            times,
        )
    }

    /// coderd up to v2.32 while a provisioner job that is not a workspace build owns the
    /// resource (coderd/workspaceresourceauth.go: `%q jobs cannot be authenticated.`).
    pub fn coder_job_not_a_build(times: usize) -> Fault {
        Fault::coder_json(
            400,
            "{\"message\":\"\\\"template_version_import\\\" jobs cannot be authenticated.\"}\n",
            times,
        )
    }

    /// An HTML error page from a reverse proxy in front of Coder (nginx style).
    pub fn coder_html(status: u16, times: usize) -> Fault {
        let reason = wire::reason(status);
        Fault::coder(
            FaultKind::Status {
                status,
                content_type: "text/html".to_string(),
                body: format!(
                    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
                ),
            },
            times,
        )
    }
}
