//! What the simulator plays: the cloud, the instance, its agents, the Coder
//! version, and the TLS certificate.

use std::time::Duration;

use crate::fault::Fault;

/// The cloud whose metadata service the simulator plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cloud {
    Aws,
    Gcp,
    Azure,
}

impl Cloud {
    /// `aws`, `gcp` or `azure`.
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Gcp => "gcp",
            Cloud::Azure => "azure",
        }
    }

    /// The instance id a [`SimConfig::new`] uses for this cloud.
    pub fn default_instance_id(self) -> &'static str {
        match self {
            Cloud::Aws => "i-0abc123def4567890",
            Cloud::Gcp => "7418215541223456789",
            Cloud::Azure => "13f56399-bd52-4150-9748-7190aae1ff21",
        }
    }

    /// The Coder endpoint that takes this cloud's identity.
    pub fn coder_path(self) -> &'static str {
        match self {
            Cloud::Aws => "/api/v2/workspaceagents/aws-instance-identity",
            Cloud::Gcp => "/api/v2/workspaceagents/google-instance-identity",
            Cloud::Azure => "/api/v2/workspaceagents/azure-instance-identity",
        }
    }
}

impl std::str::FromStr for Cloud {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "aws" => Ok(Cloud::Aws),
            "gcp" | "google" => Ok(Cloud::Gcp),
            "azure" => Ok(Cloud::Azure),
            _ => Err(format!("unknown cloud {s:?} (expected aws, gcp or azure)")),
        }
    }
}

impl std::fmt::Display for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which certificate the HTTPS Coder server presents (with `coder_tls`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CertKind {
    /// Valid now, for `localhost`, `127.0.0.1` and `::1`.
    #[default]
    Valid,
    /// Valid for the right names, but expired (2020–2021).
    Expired,
    /// Valid now, but only for `wrong.example`.
    WrongHost,
}

/// The version a simulator plays unless told otherwise (a current release).
pub const CURRENT_CODER_VERSION: &str = "v2.36.4+sim0000";

/// How a coderd version answers `POST /api/v2/workspaceagents/*-instance-identity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoderBehaviour {
    /// Before v2.33.0 (coder/coder#24325): `agent_name` is ignored; the instance's newest agent
    /// (the last in [`SimConfig::agents`]) gets its token; never a 409.
    IgnoresNames,
    /// v2.33.0 to v2.33.3: the agents of earlier builds are candidates too, so a 409 repeats
    /// names (fixed in v2.33.4 by coder/coder#25443).
    RepeatsNames,
    /// v2.33.4 and later.
    Current,
}

/// What the simulator plays.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub cloud: Cloud,
    /// The instance id the metadata service reports and the Coder server knows.
    pub instance_id: String,
    /// The agents registered on this instance. Empty: the instance is unknown to Coder (404).
    pub agents: Vec<String>,
    pub faults: Vec<Fault>,
    /// Every agent is a candidate twice, as with the v2.33.0–v2.33.3 bug (stale agents of earlier
    /// builds): with no name the 409 lists each name twice ("dev, dev, main, main"); even a
    /// single agent yields a 409 ("main, main"). Implied by a `coder_version` in that range.
    pub legacy_duplicate_names: bool,
    /// The coderd version played: `GET /api/v2/buildinfo` and every Coder answer's
    /// `X-Coder-Build-Version` say it, and before v2.33.0 `agent_name` is ignored (see
    /// [`CoderBehaviour`]).
    pub coder_version: String,
    /// The 409 body also carries `"agent_names": [...]` (sorted, unique).
    pub structured_409: bool,
    /// Serve Coder over HTTPS with a CA generated at start (see [`Sim::ca_pem`]).
    pub coder_tls: bool,
    /// The certificate presented with `coder_tls`.
    pub coder_cert: CertKind,
    /// AWS: the token PUT answers 405; GETs without a token work (IMDSv1).
    pub imds_v1_only: bool,
    /// AWS: the token PUT never answers (hop limit 1 in a container); GETs without a token work.
    pub imds_put_hangs: bool,
    /// Azure: more than 5 requests in any one-second window get 429, as the real IMDS does.
    pub azure_throttle: bool,
    /// Serve the way Python's `http.server` and many emulators built on it do: HTTP/1.1
    /// keep-alive (a connection serves request after request until the client closes it), each
    /// answer written in two segments (the header block, then the body), and TCP_NODELAY off.
    /// Off (the default): one request per connection, written in one segment, then closed.
    /// Faults still apply; a faulted answer closes its connection.
    pub keep_alive: bool,
    /// The file the Coder server serves at `/bin/coder-linux-amd64`, as coderd serves its CLI
    /// (`None`: 404, as for any unknown route).
    pub coder_cli: Option<Vec<u8>>,
    /// GCP: how long an identity JWT is valid (`exp` minus `iat`; Google's: one hour). Past it,
    /// coderd answers 401 "Invalid GCP identity." (idtoken: token expired). Whole seconds.
    pub gcp_jwt_lifetime: Duration,
    /// The number of the workspace build the simulator starts at (1: the workspace was just
    /// created). Each agent's session token belongs to one build.
    pub build: u64,
    /// What the agents' session tokens are derived from, with the instance id, the agent's name
    /// and the build number. The fixed default makes every simulator agree on the tokens: two
    /// `serve` processes, or one restarted.
    pub token_seed: String,
}

/// The [`SimConfig::token_seed`] of [`SimConfig::new`].
pub const DEFAULT_TOKEN_SEED: &str = "coder-agent-auth-sim";

impl SimConfig {
    pub fn new(cloud: Cloud, agents: &[&str]) -> SimConfig {
        SimConfig {
            cloud,
            instance_id: cloud.default_instance_id().to_string(),
            agents: agents.iter().map(|a| a.to_string()).collect(),
            faults: Vec::new(),
            legacy_duplicate_names: false,
            coder_version: CURRENT_CODER_VERSION.to_string(),
            structured_409: false,
            coder_tls: false,
            coder_cert: CertKind::Valid,
            imds_v1_only: false,
            imds_put_hangs: false,
            azure_throttle: true,
            keep_alive: false,
            coder_cli: None,
            gcp_jwt_lifetime: Duration::from_secs(3600),
            build: 1,
            token_seed: DEFAULT_TOKEN_SEED.to_string(),
        }
    }

    /// The configured `coder_version` as (major, minor, patch); `None` for a development build
    /// (`v0.0.0-devel`) or anything unreadable, which count as the newest.
    fn version(&self) -> Option<(u64, u64, u64)> {
        let v = self.coder_version.trim().trim_start_matches('v');
        let core = v.split(['-', '+']).next().unwrap_or("");
        let nums: Vec<u64> = core.split('.').filter_map(|p| p.parse().ok()).collect();
        match nums.as_slice() {
            [0, 0, 0] => None,
            [a, b, c] => Some((*a, *b, *c)),
            _ => None,
        }
    }

    /// How the configured `coder_version` answers the exchange.
    pub fn coder_behaviour(&self) -> CoderBehaviour {
        match self.version() {
            Some(v) if v < (2, 33, 0) => CoderBehaviour::IgnoresNames,
            Some(v) if v < (2, 33, 4) => CoderBehaviour::RepeatsNames,
            _ => CoderBehaviour::Current,
        }
    }

    /// Does the agent middleware accept only the latest build's agents? From v2.10.0 on
    /// (coder/coder#12443, "Ensure agent token is from latest build in middleware"), an earlier
    /// build's token is refused like an unknown one (401); before, the middleware took any
    /// build's token and the agent's connection (`/me/rpc`) answered 403.
    pub fn agent_auth_latest_build_only(&self) -> bool {
        !matches!(self.version(), Some(v) if v < (2, 10, 0))
    }

    /// Builder: add a fault.
    pub fn with_fault(mut self, fault: Fault) -> SimConfig {
        self.faults.push(fault);
        self
    }
}
