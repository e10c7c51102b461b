//! Local simulation of one cloud's instance-metadata service and of a Coder server, for
//! `coder-agent-auth`'s demo and tests.
//!
//! The simulator shares no Rust types with the product: the two talk JSON over HTTP on loopback,
//! exactly as the product talks to a real metadata service and a real `coderd`. The Coder side
//! mirrors `coderd/workspaceresourceauth.go` (multi-agent version, v2.33+): the same status codes,
//! the same messages and the same agent-selection rules.
//!
//! Everything the simulator signs is signed with a simulator-only RSA key (`src/sim_key.pk8`)
//! that protects nothing.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;

mod coder;
mod crypto;
mod http;
mod metadata;
mod tls;

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

    fn coder_json(status: u16, body: &str, times: usize) -> Fault {
        Fault::coder(
            FaultKind::Status {
                status,
                content_type: coder::JSON_CONTENT_TYPE.to_string(),
                body: body.to_string(),
            },
            times,
        )
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

    /// An HTML error page from a reverse proxy in front of Coder (nginx style).
    pub fn coder_html(status: u16, times: usize) -> Fault {
        let reason = http::reason(status);
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
    /// single agent yields a 409 ("main, main").
    pub legacy_duplicate_names: bool,
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
    /// The file the Coder server serves at `/bin/coder-linux-amd64`, as coderd serves its CLI
    /// (`None`: 404, as for any unknown route).
    pub coder_cli: Option<Vec<u8>>,
}

impl SimConfig {
    pub fn new(cloud: Cloud, agents: &[&str]) -> SimConfig {
        SimConfig {
            cloud,
            instance_id: cloud.default_instance_id().to_string(),
            agents: agents.iter().map(|a| a.to_string()).collect(),
            faults: Vec::new(),
            legacy_duplicate_names: false,
            structured_409: false,
            coder_tls: false,
            coder_cert: CertKind::Valid,
            imds_v1_only: false,
            imds_put_hangs: false,
            azure_throttle: true,
            coder_cli: None,
        }
    }

    /// Builder: add a fault.
    pub fn with_fault(mut self, fault: Fault) -> SimConfig {
        self.faults.push(fault);
        self
    }
}

/// One request as the simulator received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub target: Target,
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query (without `?`), empty when there is none.
    pub query: String,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Recorded {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        http::find_header(&self.headers, name)
    }

    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        http::query_param(&self.query, name)
    }
}

struct FaultState {
    fault: Fault,
    used: usize,
}

/// State shared by the simulator's connection tasks.
pub(crate) struct Shared {
    pub(crate) cfg: SimConfig,
    pub(crate) keys: crypto::Keys,
    pub(crate) aws_document: String,
    pub(crate) aws_signature: String,
    faults: Mutex<Vec<FaultState>>,
    requests: Mutex<Vec<Recorded>>,
    tokens: Mutex<Vec<(String, String)>>,
    pub(crate) imds_tokens: Mutex<HashSet<String>>,
    pub(crate) azure_window: Mutex<VecDeque<Instant>>,
    request_log: Option<Mutex<File>>,
}

/// Lock, ignoring poisoning (a panicking connection task must not take the simulator down).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn new(cfg: SimConfig, request_log: Option<File>) -> io::Result<Shared> {
        let keys = crypto::Keys::load().map_err(io::Error::other)?;
        let aws_document = crypto::aws_document(&cfg.instance_id);
        let aws_signature = crypto::aws_signature(&keys, &aws_document);
        let faults = cfg
            .faults
            .iter()
            .map(|f| FaultState {
                fault: f.clone(),
                used: 0,
            })
            .collect();
        Ok(Shared {
            cfg,
            keys,
            aws_document,
            aws_signature,
            faults: Mutex::new(faults),
            requests: Mutex::new(Vec::new()),
            tokens: Mutex::new(Vec::new()),
            imds_tokens: Mutex::new(HashSet::new()),
            azure_window: Mutex::new(VecDeque::new()),
            request_log: request_log.map(Mutex::new),
        })
    }

    pub(crate) fn record(&self, rec: Recorded) {
        if let Some(log) = &self.request_log {
            let mut headers = serde_json::Map::new();
            for (k, v) in &rec.headers {
                match headers.get_mut(k) {
                    Some(serde_json::Value::String(prev)) => {
                        prev.push_str(", ");
                        prev.push_str(v);
                    }
                    _ => {
                        headers.insert(k.clone(), serde_json::Value::String(v.clone()));
                    }
                }
            }
            let line = serde_json::json!({
                "target": rec.target.name(),
                "method": rec.method,
                "path": rec.path,
                "query": rec.query,
                "headers": headers,
                "body": String::from_utf8_lossy(&rec.body),
                "peer": rec.peer.to_string(),
            });
            let mut f = lock(log);
            let _ = writeln!(f, "{line}");
            let _ = f.flush();
        }
        lock(&self.requests).push(rec);
    }

    /// The fault for this request, if one still applies (its counter is advanced).
    pub(crate) fn take_fault(&self, target: Target, path_and_query: &str) -> Option<FaultKind> {
        let mut faults = lock(&self.faults);
        for st in faults.iter_mut() {
            if st.fault.target != target || st.used >= st.fault.times {
                continue;
            }
            if let Some(part) = &st.fault.path_contains {
                if !path_and_query.contains(part.as_str()) {
                    continue;
                }
            }
            st.used += 1;
            return Some(st.fault.kind.clone());
        }
        None
    }

    pub(crate) fn issue_token(&self, agent: &str) -> String {
        let token = crypto::uuid_v4();
        lock(&self.tokens).push((agent.to_string(), token.clone()));
        if let Some(log) = &self.request_log {
            // The request log doubles as the record of issued (simulator-only) tokens,
            // so out-of-process tests can check what the client stored.
            let line = serde_json::json!({ "issued": { "agent": agent, "token": token } });
            let mut f = lock(log);
            let _ = writeln!(f, "{line}");
            let _ = f.flush();
        }
        token
    }
}

/// A running simulator: both servers listen on their own background thread and runtime.
/// Dropping it shuts everything down (open and hanging connections are closed).
pub struct Sim {
    shared: Arc<Shared>,
    metadata_addr: SocketAddr,
    coder_addr: SocketAddr,
    ca_pem: Option<String>,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    // A deep backlog: fleet tests open hundreds of connections at once.
    sock.listen(2048)
}

impl Sim {
    /// Start on 127.0.0.1 with ephemeral ports. Returns once both servers listen.
    /// Panics when it cannot (see [`Sim::try_start`]).
    pub fn start(cfg: SimConfig) -> Sim {
        Sim::try_start(cfg).expect("start coder-agent-auth-sim")
    }

    /// [`Sim::start`] that reports failure instead of panicking.
    pub fn try_start(cfg: SimConfig) -> io::Result<Sim> {
        let lo: SocketAddr = ([127, 0, 0, 1], 0).into();
        Sim::start_on(cfg, lo, lo)
    }

    /// Start on the given addresses (port 0: an ephemeral port).
    pub fn start_on(
        cfg: SimConfig,
        metadata_addr: SocketAddr,
        coder_addr: SocketAddr,
    ) -> io::Result<Sim> {
        Sim::start_inner(cfg, metadata_addr, coder_addr, None)
    }

    fn start_inner(
        cfg: SimConfig,
        metadata_addr: SocketAddr,
        coder_addr: SocketAddr,
        request_log: Option<File>,
    ) -> io::Result<Sim> {
        let tls = if cfg.coder_tls {
            Some(tls::make(cfg.coder_cert).map_err(io::Error::other)?)
        } else {
            None
        };
        let ca_pem = tls.as_ref().map(|t| t.ca_pem.clone());
        let acceptor = tls.map(|t| t.acceptor);
        let shared = Arc::new(Shared::new(cfg, request_log)?);
        let (ready_tx, ready_rx) =
            std::sync::mpsc::channel::<io::Result<(SocketAddr, SocketAddr)>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("coder-agent-auth-sim".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("coder-agent-auth-sim-worker")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listeners = async {
                        let m = bind(metadata_addr).await?;
                        let c = bind(coder_addr).await?;
                        Ok::<_, io::Error>((m, c))
                    }
                    .await;
                    let (m, c) = match listeners {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let addrs = (m.local_addr(), c.local_addr());
                    match addrs {
                        (Ok(ma), Ok(ca)) => {
                            let _ = ready_tx.send(Ok((ma, ca)));
                        }
                        (Err(e), _) | (_, Err(e)) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                    tokio::spawn(http::accept_loop(
                        m,
                        Target::Metadata,
                        thread_shared.clone(),
                        None,
                    ));
                    tokio::spawn(http::accept_loop(
                        c,
                        Target::Coder,
                        thread_shared.clone(),
                        acceptor,
                    ));
                    let _ = stop_rx.await;
                });
                rt.shutdown_timeout(Duration::from_secs(2));
            })?;
        let (metadata_addr, coder_addr) = match ready_rx.recv() {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other("simulator thread died while starting"));
            }
        };
        Ok(Sim {
            shared,
            metadata_addr,
            coder_addr,
            ca_pem,
            shutdown: Mutex::new(Some(stop_tx)),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT` (the metadata service).
    pub fn metadata_url(&self) -> String {
        format!("http://{}", self.metadata_host_port())
    }

    /// `127.0.0.1:PORT` (for `GCE_METADATA_HOST`).
    pub fn metadata_host_port(&self) -> String {
        self.metadata_addr.to_string()
    }

    pub fn metadata_addr(&self) -> SocketAddr {
        self.metadata_addr
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` when `coder_tls`.
    pub fn coder_url(&self) -> String {
        if self.ca_pem.is_some() {
            let host = if self.coder_addr.ip().is_loopback() {
                "localhost".to_string()
            } else {
                self.coder_addr.ip().to_string()
            };
            format!("https://{host}:{}", self.coder_addr.port())
        } else {
            format!("http://{}", self.coder_addr)
        }
    }

    pub fn coder_addr(&self) -> SocketAddr {
        self.coder_addr
    }

    /// The CA certificate (PEM) that signed the Coder server's certificate, when `coder_tls`.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// The configured instance id.
    pub fn instance_id(&self) -> &str {
        &self.shared.cfg.instance_id
    }

    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }

    /// Every request received so far, in order (both servers).
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// The requests one server received, in order.
    pub fn requests_to(&self, target: Target) -> Vec<Recorded> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.target == target)
            .cloned()
            .collect()
    }

    /// Session tokens issued so far, in order, as (agent name, token).
    pub fn tokens(&self) -> Vec<(String, String)> {
        lock(&self.shared.tokens).clone()
    }

    /// Add a fault while running. It applies to requests that arrive from now on.
    pub fn add_fault(&self, fault: Fault) {
        lock(&self.shared.faults).push(FaultState { fault, used: 0 });
    }

    /// How many times each fault has been applied: the configured faults in order, then the
    /// ones added with [`Sim::add_fault`].
    pub fn fault_counts(&self) -> Vec<usize> {
        lock(&self.shared.faults).iter().map(|f| f.used).collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(tx) = lock(&self.shutdown).take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serve until SIGTERM or SIGINT (used by the `serve` command of the binary).
///
/// `request_log`: append one JSON line per request. `on_ready` runs once both servers listen
/// and the signal handlers are installed.
pub fn serve_blocking(
    cfg: SimConfig,
    metadata_addr: SocketAddr,
    coder_addr: SocketAddr,
    request_log: Option<&Path>,
    on_ready: impl FnOnce(&Sim) -> io::Result<()>,
) -> io::Result<()> {
    let log = match request_log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        None => None,
    };
    let sim = Sim::start_inner(cfg, metadata_addr, coder_addr, log)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            on_ready(&sim)?;
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            on_ready(&sim)?;
            tokio::signal::ctrl_c().await?;
        }
        Ok::<_, io::Error>(())
    })?;
    drop(sim);
    Ok(())
}

#[cfg(test)]
mod tests;
