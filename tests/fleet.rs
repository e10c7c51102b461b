//! Fleets on one simulated coderd, on loopback. Bounded: every wait has a
//! deadline, every child is killed at the end (also on panic), and each test
//! stops by itself. The two tests take turns (one fleet loads the machine at a
//! time); their figures are printed, not asserted.
//!
//! - Booting: 500 concurrent one-shot exchanges; each must store its agent's
//!   token (p50/p99 printed).
//! - Resident: 500 `--watch` processes through a coderd restart that comes
//!   back as a rebuilt workspace, beside a model of Coder's own agent, which
//!   exchanges again on every reconnect. The exchange rates, the busiest
//!   minute against coderd's 512 requests per minute, and the time to heal go
//!   into a table; only correctness is asserted.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::common::*;

const FLEET: usize = 500;
const AGENTS: usize = 10;

/// One fleet at a time: each measures what it does to the machine.
static ONE_FLEET_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_fleet_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_FLEET_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

#[test]
fn five_hundred_concurrent_exchanges_each_store_their_agents_token() {
    let _turn = one_fleet_at_a_time();
    let names: Vec<String> = (0..AGENTS).map(|i| format!("agent{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let sim = start(Cloud::Aws, &refs);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut children = Vec::with_capacity(FLEET);
    for i in 0..FLEET {
        let mut c = command(&sim, &Cloud::Aws);
        c.args([
            "--agent-name",
            &names[i % AGENTS],
            "--timeout",
            "120s",
            "-q",
        ])
        .arg("--token-file")
        .arg(dir.path().join(format!("{i}.token")))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        children.push((i, Instant::now(), c.spawn().expect("spawn")));
    }
    let mut times = Vec::with_capacity(FLEET);
    let mut failures = Vec::new();
    for (i, t0, child) in children {
        let out = child.wait_with_output().unwrap();
        times.push(t0.elapsed());
        if !out.status.success() {
            failures.push((i, String::from_utf8_lossy(&out.stderr).into_owned()));
        }
    }
    let wall = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} of {FLEET} failed; first: {:?}",
        failures.len(),
        failures.first()
    );

    // As coderd does (coderd/workspaceresourceauth.go answers with the agent's stored
    // AuthToken), each agent has one token, handed out on every exchange for it: the sim answered
    // 200 once per exchange, FLEET / AGENTS times per agent, always with that agent's token, and
    // every file holds the token of its own agent.
    let issued = sim.tokens();
    assert_eq!(issued.len(), FLEET, "exactly one 200 answer per exchange");
    let token_of: HashMap<&str, String> = names
        .iter()
        .map(|n| {
            (
                n.as_str(),
                sim.current_token(n).expect("a registered agent"),
            )
        })
        .collect();
    let distinct: std::collections::HashSet<&String> = token_of.values().collect();
    assert_eq!(distinct.len(), AGENTS, "each agent has its own token");
    let mut answers: HashMap<&str, usize> = HashMap::new();
    for (agent, token) in &issued {
        assert_eq!(
            Some(token),
            token_of.get(agent.as_str()),
            "{agent} was answered with another token"
        );
        *answers.entry(agent.as_str()).or_default() += 1;
    }
    for n in &names {
        assert_eq!(
            answers.get(n.as_str()),
            Some(&(FLEET / AGENTS)),
            "answers for {n}"
        );
    }
    for i in 0..FLEET {
        let token = fs::read_to_string(dir.path().join(format!("{i}.token")))
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(
            token,
            token_of[names[i % AGENTS].as_str()],
            "exchange {i} did not store the token of its agent {}",
            names[i % AGENTS]
        );
    }

    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "fleet: {FLEET} concurrent exchanges, all correct; wall {:.0} ms; per exchange p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms(wall),
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(*times.last().unwrap())
    );
}

// ---------------------------------------------------------------------------------------------
// Resident: a fleet of watchers through a coderd restart into a rebuilt workspace, beside a
// model of Coder's own agent.

/// Watchers, each a real `coder-agent-auth --watch` process.
const WATCHERS: usize = 500;
/// Their interval, short so that a test sees several; the README scales the figures to others.
const INTERVAL: Duration = Duration::from_secs(20);
const INTERVAL_ARG: &str = "20s";
/// How long Coder is down (a coderd restart).
const OUTAGE: Duration = Duration::from_secs(20);
/// How long after Coder's return the rates are counted.
const AFTER: Duration = Duration::from_secs(60);

fn agent_names() -> Vec<String> {
    (0..AGENTS).map(|i| format!("agent{i}")).collect()
}

/// Each agent's current token, as the simulator issues it.
fn current(sim: &Sim, names: &[String]) -> HashMap<String, String> {
    names
        .iter()
        .map(|n| (n.clone(), sim.current_token(n).expect("a registered agent")))
        .collect()
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Poll `cond` every 100 ms until it holds; panic with `what` at `deadline`.
fn wait_until(deadline: Instant, what: &str, mut cond: impl FnMut() -> bool) {
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_token(p: &Path) -> String {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The 1-minute load average, for the table's header.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// 500 watchers and a model of 500 agents with their sockets, and two simulators, in one
/// process: raise the soft limit on open files to the hard one, in case it is a low default.
fn raise_open_files_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The watcher processes; whatever still runs when this is dropped (also on a panic) is
/// killed and reaped.
struct Watchers {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Watchers {
    /// Panic, with its log, if a watcher has exited.
    fn assert_running(&mut self) {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Some(status) = c.try_wait().expect("try_wait") {
                let log = fs::read_to_string(&self.logs[i]).unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!("watcher {i} exited ({status}); the end of its stderr:\n{tail}");
            }
        }
    }

    /// SIGTERM to every watcher; their exit codes, once all have exited (at most `within`;
    /// -1 for one still running then).
    fn terminate(&mut self, within: Duration) -> Vec<i32> {
        use std::os::unix::process::ExitStatusExt;
        for c in &self.children {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + within;
        let mut codes: Vec<Option<i32>> = vec![None; self.children.len()];
        while codes.iter().any(Option::is_none) && Instant::now() < deadline {
            for (i, c) in self.children.iter_mut().enumerate() {
                if codes[i].is_none() {
                    if let Ok(Some(s)) = c.try_wait() {
                        codes[i] = Some(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        codes.into_iter().map(|c| c.unwrap_or(-1)).collect()
    }

    /// How often the watchers said a check failed (while Coder was down).
    fn failed_checks(&self) -> usize {
        self.logs
            .iter()
            .map(|p| {
                fs::read_to_string(p)
                    .unwrap_or_default()
                    .matches("the check failed")
                    .count()
            })
            .sum()
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

// --- The model of Coder's own agent ----------------------------------------------------------

/// coder/retry v1.5.1's `Retrier` as `agent/agent.go`'s `runLoop` uses it:
/// `retry.New(100*time.Millisecond, 10*time.Second)`, rate φ, no jitter, never reset. `Wait`
/// sets `Delay = min(Delay·φ, Ceil)`, sleeps that long, then raises `Delay` to `Floor`: the
/// first wait is 0 (Delay starts at 0), the next 161.8 ms, then ×φ up to 10 s.
#[derive(Default)]
struct Retrier {
    delay: Duration,
}

impl Retrier {
    const FLOOR: Duration = Duration::from_millis(100);
    const CEIL: Duration = Duration::from_secs(10);
    const PHI: f64 = 1.618_033_988_749_895;

    /// The next wait.
    fn wait(&mut self) -> Duration {
        let d =
            Duration::from_nanos((self.delay.as_nanos() as f64 * Self::PHI) as u64).min(Self::CEIL);
        self.delay = d.max(Self::FLOOR);
        d
    }
}

/// What the test tells the modelled agents about their connection to Coder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Connected (once an agent has its token).
    Up,
    /// Coder went away: every agent's connection dropped.
    Down,
    /// The test is over (or failed): stop now.
    Stop,
}

/// What one modelled agent did.
#[derive(Default)]
struct AgentEnd {
    /// The token of its first exchange (boot).
    boot: Option<String>,
    /// When it got a token again after the disconnect, and which.
    healed: Option<(Instant, String)>,
}

/// A plain-http client as Coder's agent has one (30 s per request); no proxy, and no trust
/// store is loaded (TLS is never used here).
fn model_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .tls_backend_preconfigured(tls)
        .build()
        .expect("a reqwest client")
}

/// One exchange as Coder's SDK makes it for AWS (`agentsdk` AWS exchanger): a fresh IMDSv2
/// token (PUT, TTL 21600), the signature and the document (GET), then the POST.
async fn aws_exchange(
    c: &reqwest::Client,
    md: &str,
    coder: &str,
    agent: &str,
) -> Result<String, String> {
    let err = |e: reqwest::Error| e.to_string();
    let imds = c
        .put(format!("{md}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(err)?
        .text()
        .await
        .map_err(err)?;
    let mut identity = Vec::new();
    for part in ["signature", "document"] {
        let text = c
            .get(format!("{md}/latest/dynamic/instance-identity/{part}"))
            .header("X-aws-ec2-metadata-token", &imds)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(err)?
            .text()
            .await
            .map_err(err)?;
        identity.push(text);
    }
    let body = serde_json::json!({
        "signature": identity[0],
        "document": identity[1],
        "agent_name": agent,
    });
    let answer: serde_json::Value = c
        .post(format!(
            "{coder}/api/v2/workspaceagents/aws-instance-identity"
        ))
        .json(&body)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(err)?
        .json()
        .await
        .map_err(err)?;
    answer["session_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no session_token in {answer}"))
}

/// Counters the agents share with the test.
#[derive(Default)]
struct ModelCounts {
    connected: AtomicUsize,
    healed: AtomicUsize,
    /// When each exchange attempt started (those refused while Coder was down too).
    attempts: Mutex<Vec<Instant>>,
}

/// One modelled agent: `runLoop` (a retrier `Wait`, then `run()`, which exchanges first and
/// then stays connected) until it has connected once, lost the connection when Coder went
/// down, and connected again.
async fn model_agent(
    name: String,
    md: String,
    coder: String,
    mut link: watch::Receiver<Link>,
    counts: Arc<ModelCounts>,
    deadline: tokio::time::Instant,
) -> AgentEnd {
    let client = model_client();
    let mut retrier = Retrier::default();
    let mut end = AgentEnd::default();
    loop {
        let wait = retrier.wait();
        let attempt = async {
            tokio::time::sleep(wait).await;
            counts.attempts.lock().unwrap().push(Instant::now());
            aws_exchange(&client, &md, &coder, &name).await
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = link.wait_for(|l| *l == Link::Stop) => return end,
            () = tokio::time::sleep_until(deadline) => return end,
        };
        let Ok(token) = result else {
            continue; // every error is retried, forever
        };
        if end.boot.is_some() {
            end.healed = Some((Instant::now(), token));
            counts.healed.fetch_add(1, Ordering::SeqCst);
            return end;
        }
        end.boot = Some(token);
        counts.connected.fetch_add(1, Ordering::SeqCst);
        // Connected, until the connection drops.
        let next = tokio::select! {
            r = link.wait_for(|l| *l != Link::Up) => r.map(|l| *l).unwrap_or(Link::Stop),
            () = tokio::time::sleep_until(deadline) => Link::Stop,
        };
        if next == Link::Stop {
            return end;
        }
    }
}

/// The modelled agents, on a runtime of their own thread; dropped (also on a panic), they
/// are told to stop and the thread is joined.
struct Model {
    link: watch::Sender<Link>,
    counts: Arc<ModelCounts>,
    thread: Option<std::thread::JoinHandle<Vec<AgentEnd>>>,
}

impl Model {
    /// `n` agents, agent `i` named `names[i % names.len()]`, all booting now; each stops by
    /// itself at `within` from now at the latest.
    fn start(sim: &Sim, names: &[String], n: usize, within: Duration) -> Model {
        let (link, rx) = watch::channel(Link::Up);
        let counts = Arc::new(ModelCounts::default());
        let (md, coder) = (sim.metadata_url(), sim.coder_url());
        let names = names.to_vec();
        let shared = counts.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the model");
            rt.block_on(async move {
                let deadline = tokio::time::Instant::now() + within;
                let tasks: Vec<_> = (0..n)
                    .map(|i| {
                        tokio::spawn(model_agent(
                            names[i % names.len()].clone(),
                            md.clone(),
                            coder.clone(),
                            rx.clone(),
                            shared.clone(),
                            deadline,
                        ))
                    })
                    .collect();
                let mut ends = Vec::with_capacity(n);
                for t in tasks {
                    ends.push(t.await.unwrap_or_default());
                }
                ends
            })
        });
        Model {
            link,
            counts,
            thread: Some(thread),
        }
    }

    fn connected(&self) -> usize {
        self.counts.connected.load(Ordering::SeqCst)
    }

    fn healed(&self) -> usize {
        self.counts.healed.load(Ordering::SeqCst)
    }

    /// Coder went away: every agent's connection drops.
    fn disconnect(&self) {
        self.link.send_replace(Link::Down);
    }

    /// Stop every agent; what each did, and when each attempt started.
    fn finish(mut self) -> (Vec<AgentEnd>, Vec<Instant>) {
        self.link.send_replace(Link::Stop);
        let ends = self
            .thread
            .take()
            .expect("not finished yet")
            .join()
            .expect("the model's thread");
        let attempts = self.counts.attempts.lock().unwrap().clone();
        (ends, attempts)
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        self.link.send_replace(Link::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// --- Figures -----------------------------------------------------------------------------------

/// When each exchange (a POST to Coder) arrived.
fn exchange_times(sim: &Sim) -> Vec<Instant> {
    sim.requests_to(Target::Coder)
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.received)
        .collect()
}

/// Exchanges per second in [from, from + len): the busiest whole second and the mean.
fn rate(times: &[Instant], from: Instant, len: Duration) -> (usize, f64) {
    let secs = len.as_secs().max(1) as usize;
    let mut bins = vec![0usize; secs];
    for t in times {
        if let Some(d) = t.checked_duration_since(from) {
            if d < len {
                bins[(d.as_secs() as usize).min(secs - 1)] += 1;
            }
        }
    }
    let total: usize = bins.iter().sum();
    (
        bins.iter().copied().max().unwrap_or(0),
        total as f64 / len.as_secs_f64(),
    )
}

/// The most exchanges in any 60 s (a sliding window, as coderd's limiter counts) within
/// [from, to).
fn busiest_minute(times: &[Instant], from: Instant, to: Instant) -> usize {
    let mut ts: Vec<Instant> = times
        .iter()
        .copied()
        .filter(|t| *t >= from && *t < to)
        .collect();
    ts.sort();
    let (mut best, mut lo) = (0, 0);
    for hi in 0..ts.len() {
        while ts[hi].duration_since(ts[lo]) >= Duration::from_secs(60) {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Nearest-rank percentile of sorted durations.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1)]
}

fn heal_cell(mut d: Vec<Duration>) -> String {
    if d.is_empty() {
        return "none healed".into();
    }
    d.sort();
    format!(
        "{:.1} s / {:.1} s / {:.1} s",
        pct(&d, 0.50).as_secs_f64(),
        pct(&d, 0.99).as_secs_f64(),
        d.last().unwrap().as_secs_f64()
    )
}

#[test]
fn five_hundred_watchers_ride_out_a_coderd_restart_into_a_rebuilt_workspace() {
    let _turn = one_fleet_at_a_time();
    raise_open_files_limit();
    let load_before = loadavg();
    let names = agent_names();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let sim = start(Cloud::Aws, &refs);
    let model_sim = start(Cloud::Aws, &refs);
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..WATCHERS)
        .map(|i| dir.path().join(format!("{i}.token")))
        .collect();
    let agent_of = |i: usize| names[i % AGENTS].as_str();

    // The fleet boots: every watcher exchanges once, then stays.
    let mut fleet = Watchers {
        children: Vec::with_capacity(WATCHERS),
        logs: (0..WATCHERS)
            .map(|i| dir.path().join(format!("{i}.stderr")))
            .collect(),
    };
    for (i, file) in files.iter().enumerate() {
        let mut c = command(&sim, &Cloud::Aws);
        c.args([
            "--agent-name",
            agent_of(i),
            "--watch",
            INTERVAL_ARG,
            "--timeout",
            "120s",
        ])
        .arg("--token-file")
        .arg(file)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&fleet.logs[i]).unwrap());
        fleet.children.push(c.spawn().expect("spawn a watcher"));
    }
    let first = current(&sim, &names);
    let holding = |tokens: &HashMap<String, String>| {
        files
            .iter()
            .enumerate()
            .filter(|(i, f)| read_token(f) == tokens[agent_of(*i)])
            .count()
    };
    wait_until(
        Instant::now() + Duration::from_secs(120),
        "every watcher to hold its agent's token",
        || {
            fleet.assert_running();
            holding(&first) == WATCHERS
        },
    );
    let held = Instant::now();
    let held_mtimes: Vec<Option<SystemTime>> = files.iter().map(|f| mtime(f)).collect();

    // The model boots beside it (its boot is outside both measured windows).
    let model = Model::start(&model_sim, &names, WATCHERS, Duration::from_secs(240));
    let model_first = current(&model_sim, &names);
    wait_until(
        Instant::now() + Duration::from_secs(60),
        "every modelled agent to connect",
        || model.connected() == WATCHERS,
    );

    // Two intervals of holding: the second is the steady window.
    let steady_from = held + INTERVAL;
    sleep_until(held + 2 * INTERVAL);
    fleet.assert_running();

    // coderd restarts: down for OUTAGE, back as a rebuilt workspace (new tokens).
    let down = Instant::now();
    sim.set_coder_down(true).unwrap();
    model_sim.set_coder_down(true).unwrap();
    model.disconnect();
    sleep_until(down + OUTAGE);
    let touched: Vec<usize> = (0..WATCHERS)
        .filter(|&i| mtime(&files[i]) != held_mtimes[i])
        .collect();
    assert!(
        touched.is_empty(),
        "an unchanged token touches nothing, but {} token files changed before the rebuild (first: {})",
        touched.len(),
        touched[0]
    );
    sim.rebuild();
    model_sim.rebuild();
    sim.set_coder_down(false).unwrap();
    let (up, up_wall) = (Instant::now(), SystemTime::now());
    model_sim.set_coder_down(false).unwrap();
    let model_up = Instant::now();
    let second = current(&sim, &names);
    let model_second = current(&model_sim, &names);
    assert!(
        first.iter().all(|(a, t)| second[a] != *t),
        "a rebuild gives new tokens"
    );

    wait_until(
        up + Duration::from_secs(90),
        "every watcher to hold its agent's new token, and every modelled agent to heal",
        || {
            fleet.assert_running();
            holding(&second) == WATCHERS && model.healed() == WATCHERS
        },
    );
    sleep_until(up + AFTER);

    // Correctness: every watcher still runs and holds its agent's current token.
    fleet.assert_running();
    for (i, f) in files.iter().enumerate() {
        assert_eq!(
            read_token(f),
            second[agent_of(i)],
            "watcher {i} does not hold the current token of {}",
            agent_of(i)
        );
    }
    let ours_heal: Vec<Duration> = files
        .iter()
        .map(|f| {
            mtime(f)
                .and_then(|m| m.duration_since(up_wall).ok())
                .unwrap_or_default()
        })
        .collect();
    let failed_checks = fleet.failed_checks();
    let codes = fleet.terminate(Duration::from_secs(30));
    let bad: Vec<(usize, i32)> = codes
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, c)| *c != 143)
        .collect();
    assert!(
        bad.is_empty(),
        "SIGTERM ends every watcher with 143; {} did not (first: watcher {}, {})",
        bad.len(),
        bad[0].0,
        bad[0].1
    );

    // And every modelled agent healed, with its agent's new token.
    let (ends, model_attempts) = model.finish();
    let mut model_heal = Vec::with_capacity(WATCHERS);
    for (i, end) in ends.iter().enumerate() {
        let name = agent_of(i);
        assert_eq!(
            end.boot.as_ref(),
            Some(&model_first[name]),
            "modelled agent {i}'s first token"
        );
        let (at, token) = end
            .healed
            .as_ref()
            .unwrap_or_else(|| panic!("modelled agent {i} did not heal"));
        assert_eq!(*token, model_second[name], "modelled agent {i}'s new token");
        model_heal.push(at.saturating_duration_since(model_up));
    }
    let load_after = loadavg();

    // Figures.
    let ours = exchange_times(&sim);
    let theirs = exchange_times(&model_sim);
    let end = up + AFTER;
    let steady_len = down.duration_since(steady_from);
    let (o_sp, o_sm) = rate(&ours, steady_from, steady_len);
    let (m_sp, m_sm) = rate(&theirs, steady_from, steady_len);
    let (o_ap, o_am) = rate(&ours, up, AFTER);
    let (m_ap, m_am) = rate(&theirs, model_up, AFTER);
    let o_min = busiest_minute(&ours, steady_from, end);
    let m_min = busiest_minute(&theirs, steady_from, end);
    let m_refused = model_attempts
        .iter()
        .filter(|t| **t >= down && **t < model_up)
        .count();
    let per_min = |peak: usize| {
        format!(
            "{} ({:.1}× the limit)",
            peak * 60,
            (peak * 60) as f64 / 512.0
        )
    };
    let rows = [
        (
            format!(
                "steady window ({:.0} s, the second interval of holding): exchanges/s, peak (mean)",
                steady_len.as_secs_f64()
            ),
            format!("{o_sp} ({o_sm:.1})"),
            format!("{m_sp} ({m_sm:.1})"),
        ),
        (
            "steady: exchanges per agent per interval (mean × interval / agents)".into(),
            format!("{:.2}", o_sm * INTERVAL.as_secs_f64() / WATCHERS as f64),
            format!("{:.2}", m_sm * INTERVAL.as_secs_f64() / WATCHERS as f64),
        ),
        (
            "the minute after Coder's return: exchanges/s, peak (mean)".into(),
            format!("{o_ap} ({o_am:.1})"),
            format!("{m_ap} ({m_am:.1})"),
        ),
        (
            "busiest second as requests/min, against coderd's 512/min".into(),
            per_min(o_sp.max(o_ap)),
            per_min(m_sp.max(m_ap)),
        ),
        (
            "busiest 60 s (sliding), steady window to the end: requests, against 512".into(),
            format!("{o_min} ({:.1}×)", o_min as f64 / 512.0),
            format!("{m_min} ({:.1}×)", m_min as f64 / 512.0),
        ),
        (
            "attempts while Coder was down (refused: coderd never saw them)".into(),
            format!("{failed_checks} failed checks"),
            format!("{m_refused} exchanges"),
        ),
        (
            "time to heal from Coder's return, p50 / p99 / max".into(),
            heal_cell(ours_heal),
            heal_cell(model_heal),
        ),
    ];
    let mut table = format!(
        "\nfleet, resident: {WATCHERS} coder-agent-auth --watch {INTERVAL_ARG} processes vs {WATCHERS} \
         modelled Coder agents (exchange on every reconnect, coder/retry 100 ms ×φ to 10 s), \
         {AGENTS} agent names, one simulated coderd each; Coder down {:.0} s, back as a rebuilt \
         workspace; {} CPUs, 1-min load average {load_before} before, {load_after} after; every \
         watcher and every modelled agent ended with its agent's new token\n\n\
         | measure | coder-agent-auth --watch {INTERVAL_ARG} | Coder's agent (model) |\n\
         | --- | ---: | ---: |\n",
        OUTAGE.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    for (what, o, m) in rows {
        table.push_str(&format!("| {what} | {o} | {m} |\n"));
    }
    eprintln!("{table}");
}
