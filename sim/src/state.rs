//! The state the connection tasks share: configuration, keys, faults, the
//! request record and the tokens issued.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::SimConfig;
use crate::fault::{Fault, FaultKind, Target};
use crate::{crypto, wire};

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
    /// When the simulator had read the whole request (for rates: exchanges per second).
    pub received: Instant,
    /// `received`, as time since the simulator started (`Sim::started`).
    pub since_start: Duration,
}

impl Recorded {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::find_header(&self.headers, name)
    }

    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        wire::query_param(&self.query, name)
    }
}

pub(crate) struct FaultState {
    pub(crate) fault: Fault,
    pub(crate) used: usize,
}

/// State shared by the simulator's connection tasks.
pub(crate) struct Shared {
    pub(crate) cfg: SimConfig,
    pub(crate) keys: crypto::Keys,
    pub(crate) aws_document: String,
    pub(crate) aws_signature: String,
    pub(crate) faults: Mutex<Vec<FaultState>>,
    pub(crate) requests: Mutex<Vec<Recorded>>,
    pub(crate) tokens: Mutex<Vec<(String, String)>>,
    pub(crate) imds_tokens: Mutex<HashSet<String>>,
    pub(crate) azure_window: Mutex<VecDeque<Instant>>,
    /// The latest workspace build's number (starts at `cfg.build`; a rebuild adds one).
    build: AtomicU64,
    /// When the simulator started (what [`Recorded::since_start`] counts from).
    pub(crate) started: Instant,
    request_log: Option<Mutex<File>>,
}

/// How many builds back an old token is still recognised as one (older ones are unknown).
const OLD_BUILDS_KNOWN: u64 = 256;

/// Seconds since the Unix epoch (what the GCP JWT and coderd's expiry check use).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Lock, ignoring poisoning (a panicking connection task must not take the simulator down).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(cfg: SimConfig, request_log: Option<File>) -> io::Result<Shared> {
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
            keys,
            aws_document,
            aws_signature,
            faults: Mutex::new(faults),
            requests: Mutex::new(Vec::new()),
            tokens: Mutex::new(Vec::new()),
            imds_tokens: Mutex::new(HashSet::new()),
            azure_window: Mutex::new(VecDeque::new()),
            build: AtomicU64::new(cfg.build),
            started: Instant::now(),
            cfg,
            request_log: request_log.map(Mutex::new),
        })
    }

    /// Record a request that has just been read, stamped with the time now (under the record's
    /// lock, so the record's order is the order of the times).
    pub(crate) fn record(&self, mut rec: Recorded) {
        let mut requests = lock(&self.requests);
        rec.received = Instant::now();
        rec.since_start = rec.received.saturating_duration_since(self.started);
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
                "elapsed_ms": rec.since_start.as_secs_f64() * 1000.0,
            });
            let mut f = lock(log);
            let _ = writeln!(f, "{line}");
            let _ = f.flush();
        }
        requests.push(rec);
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

    /// The latest build's number.
    pub(crate) fn build(&self) -> u64 {
        self.build.load(Ordering::SeqCst)
    }

    /// A rebuild: the workspace's agents are made again, with new tokens, under the same instance
    /// id and names. Returns the new build number.
    pub(crate) fn rebuild(&self) -> u64 {
        let build = self.build.fetch_add(1, Ordering::SeqCst) + 1;
        self.log_line(&serde_json::json!({ "rebuilt": { "build": build } }));
        build
    }

    /// `agent`'s token in `build` (whether or not the agent exists).
    pub(crate) fn token_in(&self, agent: &str, build: u64) -> String {
        crypto::agent_token(&self.cfg.token_seed, &self.cfg.instance_id, agent, build)
    }

    /// The latest build's token of `agent` (whether or not the agent exists).
    pub(crate) fn token_of(&self, agent: &str) -> String {
        self.token_in(agent, self.build())
    }

    /// Whose token this is, as (agent, build), newest build first; the latest build and the
    /// [`OLD_BUILDS_KNOWN`] before it are searched.
    pub(crate) fn token_owner(&self, token: &str) -> Option<(String, u64)> {
        let latest = self.build();
        let oldest = latest.saturating_sub(OLD_BUILDS_KNOWN).max(1);
        (oldest..=latest).rev().find_map(|build| {
            self.cfg
                .agents
                .iter()
                .find(|a| self.token_in(a, build) == token)
                .map(|a| (a.clone(), build))
        })
    }

    /// Append one line to the request log, if there is one.
    fn log_line(&self, line: &serde_json::Value) {
        if let Some(log) = &self.request_log {
            let mut f = lock(log);
            let _ = writeln!(f, "{line}");
            let _ = f.flush();
        }
    }

    /// A 200 answer of the exchange: `agent`'s token, recorded.
    pub(crate) fn issue_token(&self, agent: &str) -> String {
        let build = self.build();
        let token = self.token_in(agent, build);
        lock(&self.tokens).push((agent.to_string(), token.clone()));
        // The request log doubles as the record of issued (simulator-only) tokens, so
        // out-of-process tests can check what the client stored.
        self.log_line(&serde_json::json!({
            "issued": { "agent": agent, "token": token, "build": build }
        }));
        token
    }
}
