//! Starting and stopping the simulator: both servers on one background
//! thread and runtime, or in the foreground until a signal (`serve`).

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::config::SimConfig;
use crate::fault::{Fault, Target};
use crate::http::{Outcome, Request};
use crate::state::{lock, FaultState, Recorded, Shared};
use crate::{coder, http, metadata, tls};

/// A running simulator: both servers listen on their own background thread and runtime.
/// Dropping it shuts everything down (open and hanging connections are closed).
pub struct Sim {
    shared: Arc<Shared>,
    metadata_addr: SocketAddr,
    coder_addr: SocketAddr,
    ca_pem: Option<String>,
    /// The background runtime, for the Coder server's listener when it comes back up.
    rt: Handle,
    coder: Mutex<CoderListener>,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The Coder server's listening side, which closes and opens again on the same port
/// ([`Sim::set_coder_down`]).
struct CoderListener {
    acceptor: Option<TlsAcceptor>,
    /// `None` while Coder is down.
    running: Option<Running>,
}

/// A running accept loop: `stop` ends it; `done` says its sockets are closed.
struct Running {
    stop: oneshot::Sender<()>,
    done: std::sync::mpsc::Receiver<()>,
}

/// The router: which server answers a request.
fn route(shared: &Shared, target: Target, req: &Request) -> Outcome {
    match target {
        Target::Metadata => metadata::handle(shared, req),
        // coderd's root middleware puts its version on every answer.
        Target::Coder => match coder::handle(shared, req) {
            Outcome::Respond(r) => r
                .with_header("X-Coder-Build-Version", shared.cfg.coder_version.clone())
                .into(),
            other => other,
        },
    }
}

/// Listen on `addr` (within a runtime context: enter the runtime's handle first).
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
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

/// Serve Coder on `listener` until stopped.
fn spawn_coder(
    rt: &Handle,
    listener: TcpListener,
    shared: Arc<Shared>,
    acceptor: Option<TlsAcceptor>,
) -> Running {
    let (stop, stop_rx) = oneshot::channel::<()>();
    let (done_tx, done) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let stopped = async {
            let _ = stop_rx.await;
        };
        http::accept_loop(listener, Target::Coder, shared, acceptor, route, stopped).await;
        let _ = done_tx.send(());
    });
    Running { stop, done }
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
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("coder-agent-auth-sim-worker")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let listeners = {
            let _in_runtime = handle.enter();
            bind(metadata_addr).and_then(|m| Ok((bind(coder_addr)?, m)))
        };
        let addrs = listeners.and_then(|(c, m)| Ok((m.local_addr()?, c.local_addr()?, m, c)));
        let (metadata_addr, coder_addr, m, c) = match addrs {
            Ok(a) => a,
            Err(e) => {
                // Not a blocking shutdown: the caller may be inside an async context.
                rt.shutdown_background();
                return Err(e);
            }
        };
        handle.spawn(http::accept_loop(
            m,
            Target::Metadata,
            shared.clone(),
            None,
            route,
            std::future::pending(),
        ));
        let running = spawn_coder(&handle, c, shared.clone(), acceptor.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("coder-agent-auth-sim".into())
            .spawn(move || {
                rt.block_on(async move {
                    let _ = stop_rx.await;
                });
                rt.shutdown_timeout(Duration::from_secs(2));
            })?;
        Ok(Sim {
            shared,
            metadata_addr,
            coder_addr,
            ca_pem,
            rt: handle,
            coder: Mutex::new(CoderListener {
                acceptor,
                running: Some(running),
            }),
            shutdown: Mutex::new(Some(stop_tx)),
            thread: Some(thread),
        })
    }

    /// Take the Coder server down (`true`), as a restarting coderd is: its listening socket
    /// closes, so connections are refused (ECONNREFUSED), and the connections it had are closed.
    /// `false` brings it back on the same address. Returns once the change is made; a no-op
    /// when it is already so. Fails when the port cannot be listened on again.
    pub fn set_coder_down(&self, down: bool) -> io::Result<()> {
        let mut coder = lock(&self.coder);
        match (down, coder.running.take()) {
            (true, Some(running)) => {
                let _ = running.stop.send(());
                running
                    .done
                    .recv_timeout(Duration::from_secs(10))
                    .map_err(|_| io::Error::other("the Coder server did not stop"))?;
            }
            (false, None) => {
                // Bound by a runtime worker, so in the network namespace the simulator started
                // in, whichever thread asks.
                let (tx, rx) = std::sync::mpsc::channel();
                let addr = self.coder_addr;
                self.rt.spawn(async move {
                    let _ = tx.send(bind(addr));
                });
                let listener = rx
                    .recv_timeout(Duration::from_secs(10))
                    .map_err(|_| io::Error::other("the simulator's runtime did not answer"))??;
                coder.running = Some(spawn_coder(
                    &self.rt,
                    listener,
                    self.shared.clone(),
                    coder.acceptor.clone(),
                ));
            }
            (_, running) => coder.running = running,
        }
        Ok(())
    }

    /// Is the Coder server down ([`Sim::set_coder_down`])?
    pub fn coder_down(&self) -> bool {
        lock(&self.coder).running.is_none()
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

    /// When the simulator started: what [`Recorded::since_start`] counts from.
    pub fn started(&self) -> Instant {
        self.shared.started
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

    /// The session tokens handed out so far, as (agent name, token): one entry per 200 answer of
    /// the exchange, in order. An agent gets the same token on every exchange until a rebuild,
    /// as from coderd, so its entries repeat.
    pub fn tokens(&self) -> Vec<(String, String)> {
        lock(&self.shared.tokens).clone()
    }

    /// Rebuild the workspace (`coder update`, or a start that does not recreate the instance):
    /// new agents with new tokens under the same instance id and names, and the build number one
    /// higher, which it returns. Exchanges from now on get the new tokens; the old ones are
    /// refused on the agent's routes.
    pub fn rebuild(&self) -> u64 {
        self.shared.rebuild()
    }

    /// The latest workspace build's number.
    pub fn build(&self) -> u64 {
        self.shared.build()
    }

    /// Each registered agent's current token, as (agent name, token), in [`SimConfig::agents`]'
    /// order.
    pub fn current_tokens(&self) -> Vec<(String, String)> {
        self.shared
            .cfg
            .agents
            .iter()
            .map(|a| (a.clone(), self.shared.token_of(a)))
            .collect()
    }

    /// The token an exchange for `agent` gets now (the current build's), or `None` when no agent
    /// of that name is registered.
    pub fn current_token(&self, agent: &str) -> Option<String> {
        self.shared
            .cfg
            .agents
            .iter()
            .any(|a| a == agent)
            .then(|| self.shared.token_of(agent))
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

/// What a signal did to a running [`serve_blocking`] (handed to its `on_event`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServeEvent {
    /// SIGHUP: the workspace was rebuilt ([`Sim::rebuild`]); the new build number.
    Rebuilt(u64),
    /// SIGUSR1 while Coder was up: it is down now ([`Sim::set_coder_down`]).
    CoderDown,
    /// SIGUSR1 while Coder was down: it listens again, on the same address.
    CoderUp,
    /// SIGUSR1, but Coder could not listen again (it stays down); why.
    CoderUpFailed(String),
}

/// Serve until SIGTERM or SIGINT (used by the `serve` command of the binary). SIGHUP rebuilds
/// the workspace; SIGUSR1 takes Coder down, and the next SIGUSR1 brings it back.
///
/// `request_log`: append one JSON line per request. `on_ready` runs once both servers listen
/// and the signal handlers are installed; `on_event` after each signal that changed something.
pub fn serve_blocking(
    cfg: SimConfig,
    metadata_addr: SocketAddr,
    coder_addr: SocketAddr,
    request_log: Option<&Path>,
    on_ready: impl FnOnce(&Sim) -> io::Result<()>,
    mut on_event: impl FnMut(&Sim, ServeEvent),
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
            let mut hup = signal(SignalKind::hangup())?;
            let mut usr1 = signal(SignalKind::user_defined1())?;
            on_ready(&sim)?;
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => on_event(&sim, ServeEvent::Rebuilt(sim.rebuild())),
                    _ = usr1.recv() => {
                        let down = !sim.coder_down();
                        let event = match sim.set_coder_down(down) {
                            Ok(()) if down => ServeEvent::CoderDown,
                            Ok(()) => ServeEvent::CoderUp,
                            Err(e) => ServeEvent::CoderUpFailed(e.to_string()),
                        };
                        on_event(&sim, event);
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = &mut on_event;
            on_ready(&sim)?;
            tokio::signal::ctrl_c().await?;
        }
        Ok::<_, io::Error>(())
    })?;
    drop(sim);
    Ok(())
}
