//! `coder-agent-auth-sim`: serve a simulated cloud metadata service and Coder server, or run the
//! demo against the real `coder-agent-auth` binary.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use coder_agent_auth_sim::{serve_blocking, Cloud, Fault, FaultKind, ServeEvent, Sim, SimConfig};

mod demo;

#[derive(Parser)]
#[command(
    name = "coder-agent-auth-sim",
    version,
    about = "Simulated cloud metadata service and Coder server for coder-agent-auth (loopback only, test keys)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one cloud's metadata service and a Coder server until SIGTERM or SIGINT, and print
    /// the `export` lines that point coder-agent-auth at them (--json: one JSON line).
    ///
    /// While it runs, signals change what it plays; each change is said on stderr, and
    /// --ready-file is written again.
    ///
    /// SIGHUP (kill -HUP PID) rebuilds the workspace: new agents with new tokens under the same
    /// instance id and names, the build number one higher; the old tokens are refused from then
    /// on.
    ///
    /// SIGUSR1 (kill -USR1 PID) takes Coder down, as a restarting coderd: its port refuses
    /// connections and its open connections close. The next SIGUSR1 brings it back on the same
    /// port.
    Serve(Box<ServeArgs>),
    /// Run coder-agent-auth against a simulated AWS with the agents `main` and `dev`.
    Demo(DemoArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// The cloud to simulate: aws, gcp or azure.
    #[arg(long)]
    cloud: Cloud,
    /// Agent names registered on the instance, comma-separated. Empty: the instance is unknown.
    #[arg(long, value_delimiter = ',', default_value = "main")]
    agents: Vec<String>,
    /// Address of the metadata service (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    metadata_addr: SocketAddr,
    /// Address of the Coder server (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    coder_addr: SocketAddr,
    /// Instance id (default: one per cloud).
    #[arg(long)]
    instance_id: Option<String>,
    /// Once listening, write {"metadata_url":..,"coder_url":..,"build":..,"tokens":{..},..} here
    /// (atomically), and again after each change a signal makes.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Once listening, print that JSON object as one line on stdout instead of the
    /// ready-to-paste `export` lines.
    #[arg(long)]
    json: bool,
    /// Append one JSON line per request received.
    #[arg(long)]
    request_log: Option<PathBuf>,
    /// Serve Coder over HTTPS with a generated CA (its PEM is in the ready JSON as ca_pem).
    #[arg(long)]
    coder_tls: bool,
    /// AWS: the IMDSv2 token PUT answers 405; token-less GETs work.
    #[arg(long)]
    imds_v1_only: bool,
    /// AWS: the IMDSv2 token PUT never answers; token-less GETs work.
    #[arg(long)]
    imds_put_hangs: bool,
    /// List every agent twice in the 409, as Coder v2.33.0 to v2.33.3 can.
    #[arg(long)]
    legacy_duplicate_names: bool,
    /// The coderd version to play (buildinfo, X-Coder-Build-Version): before v2.33.0 agent_name
    /// is ignored and the newest agent (the last of --agents) answers; v2.33.0 to v2.33.3 repeat
    /// names in the 409.
    #[arg(long, default_value = coder_agent_auth_sim::CURRENT_CODER_VERSION)]
    coder_version: String,
    /// Add "agent_names" to the 409 body.
    #[arg(long)]
    structured_409: bool,
    /// Azure: do not answer 429 beyond 5 requests a second.
    #[arg(long)]
    no_azure_throttle: bool,
    /// Serve this file at /bin/coder-linux-amd64 on the Coder server, as coderd serves its CLI.
    #[arg(long, value_name = "FILE")]
    coder_cli: Option<PathBuf>,
    /// The first N exchange requests get coderd's 404 "Instance with id ... not found." (the
    /// workspace build has not registered the instance yet).
    #[arg(long, value_name = "N", default_value_t = 0)]
    coder_not_registered: usize,
    /// Delay the first --metadata-delay-times metadata requests by this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    metadata_delay_ms: u64,
    /// How many metadata requests --metadata-delay-ms applies to.
    #[arg(long, value_name = "N", default_value_t = 0)]
    metadata_delay_times: usize,
    /// GCP: the identity JWT's lifetime (exp - iat); Google's is 3600. Past it, the exchange gets
    /// coderd's 401 "Invalid GCP identity." (idtoken: token expired: ...).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    gcp_jwt_lifetime: u64,
    /// The workspace build to start at. Agents' tokens belong to a build; a simulator restarted
    /// with the same build hands out the same tokens.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    build: u64,
}

#[derive(Args)]
struct DemoArgs {
    /// The coder-agent-auth binary (default: next to this executable).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Keep the temporary directory with the token files (removed by default).
    #[arg(long)]
    keep: bool,
}

fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// The variables coder-agent-auth reads to choose a metadata endpoint (src/cloud/*.rs,
/// src/cli.rs): the generic override, which wins over the rest, and each cloud's conventions.
/// The `export` lines unset those they do not set, so that another simulator's lines pasted
/// before do not win.
const ENDPOINT_VARS: &[&str] = &[
    "CODER_AGENT_METADATA_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_EC2_METADATA_DISABLED",
    "GCE_METADATA_HOST",
];

/// The command to run coder-agent-auth as pasted: the binary next to this executable (where
/// `cargo build` puts both) by its absolute path, else the bare name, for one on PATH.
fn product_command() -> String {
    match demo::default_bin()
        .filter(|b| b.is_file())
        .and_then(|b| std::path::absolute(b).ok())
    {
        Some(b) => demo::shell_quote(&b.display().to_string()),
        None => "coder-agent-auth".to_string(),
    }
}

/// What `serve` prints for people: comments (with the command to run afterwards), then the
/// lines to paste into another shell, which point coder-agent-auth at this simulator the way a
/// user would (each cloud's own endpoint variable; Azure has none, so the generic one) after
/// unsetting the endpoint variables that would otherwise win.
fn exports(sim: &Sim, ca_file: Option<&Path>) -> String {
    let cfg = sim.config();
    let (metadata_var, metadata_value, method) = match cfg.cloud {
        Cloud::Aws => (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            sim.metadata_url(),
            "aws-instance-identity",
        ),
        Cloud::Gcp => (
            "GCE_METADATA_HOST",
            sim.metadata_host_port(),
            "google-instance-identity",
        ),
        Cloud::Azure => (
            "CODER_AGENT_METADATA_ENDPOINT",
            sim.metadata_url(),
            "azure-instance-identity",
        ),
    };
    let agents = if cfg.agents.is_empty() {
        "none (the instance is unknown to Coder)".to_string()
    } else {
        cfg.agents.join(", ")
    };
    let example = match cfg.agents.as_slice() {
        [] => String::new(),
        [_] => " --token-file /tmp/agent.token".to_string(),
        [first, ..] => format!(
            " --agent-name {} --token-file /tmp/{}.token",
            demo::shell_quote(first),
            demo::shell_quote(first)
        ),
    };
    let mut vars = vec![
        (metadata_var, metadata_value),
        ("CODER_AGENT_URL", sim.coder_url()),
        ("CODER_AGENT_AUTH", method.to_string()),
    ];
    if let Some(ca) = ca_file {
        vars.push(("CODER_AGENT_CA_CERT", ca.display().to_string()));
    }
    // And a CA file of an earlier simulator's lines, gone with it.
    let unset: Vec<&str> = ENDPOINT_VARS
        .iter()
        .chain(["CODER_AGENT_CA_CERT"].iter())
        .copied()
        .filter(|v| !vars.iter().any(|(k, _)| k == v))
        .collect();
    let mut out = format!(
        "# coder-agent-auth-sim: a simulated {} instance ({}) with the agents: {agents} (workspace build {})\n\
         #   metadata service: {}\n\
         #   Coder ({}): {}\n\
         # Paste these lines into another shell, then run:\n\
         #   {}{example}\n\
         # (kill -HUP {pid} rebuilds the workspace, kill -USR1 {pid} takes Coder down and back up;\n\
         # Ctrl-C stops the simulator; --json prints one JSON line instead)\n",
        cfg.cloud.name(),
        sim.instance_id(),
        sim.build(),
        sim.metadata_url(),
        cfg.coder_version,
        sim.coder_url(),
        product_command(),
        pid = std::process::id(),
    );
    out.push_str(&format!("unset {}\n", unset.join(" ")));
    for (k, v) in vars {
        out.push_str(&format!("export {k}={}\n", demo::shell_quote(&v)));
    }
    out
}

/// The ready JSON (`--json`, `--ready-file`): where the servers are and what they play, with the
/// current build and each agent's current token.
fn ready_json(sim: &Sim) -> serde_json::Value {
    let tokens: serde_json::Map<String, serde_json::Value> = sim
        .current_tokens()
        .into_iter()
        .map(|(agent, token)| (agent, token.into()))
        .collect();
    serde_json::json!({
        "metadata_url": sim.metadata_url(),
        "metadata_host_port": sim.metadata_host_port(),
        "coder_url": sim.coder_url(),
        "ca_pem": sim.ca_pem(),
        "cloud": sim.config().cloud.name(),
        "instance_id": sim.instance_id(),
        "agents": sim.config().agents,
        "coder_version": sim.config().coder_version,
        "build": sim.build(),
        "tokens": tokens,
        "coder_down": sim.coder_down(),
        "pid": std::process::id(),
    })
}

fn serve(a: ServeArgs) -> ExitCode {
    let agents: Vec<&str> = a
        .agents
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    let mut cfg = SimConfig::new(a.cloud, &agents);
    if let Some(id) = a.instance_id {
        cfg.instance_id = id;
    }
    cfg.coder_tls = a.coder_tls;
    cfg.imds_v1_only = a.imds_v1_only;
    cfg.imds_put_hangs = a.imds_put_hangs;
    cfg.legacy_duplicate_names = a.legacy_duplicate_names;
    cfg.coder_version = a.coder_version;
    cfg.structured_409 = a.structured_409;
    cfg.azure_throttle = !a.no_azure_throttle;
    cfg.build = a.build;
    cfg.gcp_jwt_lifetime = std::time::Duration::from_secs(a.gcp_jwt_lifetime);
    if let Some(path) = &a.coder_cli {
        match std::fs::read(path) {
            Ok(bytes) => cfg.coder_cli = Some(bytes),
            Err(e) => {
                eprintln!(
                    "coder-agent-auth-sim: cannot read --coder-cli {}: {e}\nfix: pass a readable file",
                    path.display()
                );
                return ExitCode::from(2);
            }
        }
    }
    if a.coder_not_registered > 0 {
        cfg.faults.push(
            Fault::coder_not_registered(a.coder_not_registered).on_path(a.cloud.coder_path()),
        );
    }
    if a.metadata_delay_ms > 0 && a.metadata_delay_times > 0 {
        cfg.faults.push(Fault::metadata(
            FaultKind::Delay(std::time::Duration::from_millis(a.metadata_delay_ms)),
            a.metadata_delay_times,
        ));
    }
    let ready_file = a.ready_file;
    let json = a.json;
    // Text mode with --coder-tls: the CA goes to a file the exports name, in a new private
    // directory removed on exit.
    let ca_dir = std::env::temp_dir().join(format!("coder-agent-auth-sim-{}", std::process::id()));
    let ca_file = ca_dir.join("ca.pem");
    let mut wrote_ca = false;
    let on_ready = |sim: &Sim| -> std::io::Result<()> {
        let line = ready_json(sim).to_string();
        if let Some(p) = &ready_file {
            write_atomically(p, &format!("{line}\n"))?;
        }
        let text = if json {
            format!("{line}\n")
        } else {
            let ca = match sim.ca_pem() {
                Some(pem) => {
                    std::fs::DirBuilder::new().mode(0o700).create(&ca_dir)?;
                    wrote_ca = true;
                    write_atomically(&ca_file, &pem)?;
                    Some(ca_file.as_path())
                }
                None => None,
            };
            exports(sim, ca)
        };
        // Written at once, so that a reader polling a redirected stdout sees every line together.
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    };
    let on_event = |sim: &Sim, event: ServeEvent| {
        match event {
            ServeEvent::Rebuilt(build) => eprintln!(
                "coder-agent-auth-sim: SIGHUP: the workspace was rebuilt: now build {build} (new agents, new tokens; the tokens of build {} are refused)",
                build - 1
            ),
            ServeEvent::CoderDown => eprintln!(
                "coder-agent-auth-sim: SIGUSR1: Coder is down: {} refuses connections (SIGUSR1 again brings it back)",
                sim.coder_addr()
            ),
            ServeEvent::CoderUp => eprintln!(
                "coder-agent-auth-sim: SIGUSR1: Coder is up again at {}",
                sim.coder_url()
            ),
            ServeEvent::CoderUpFailed(why) => eprintln!(
                "coder-agent-auth-sim: SIGUSR1: Coder stays down: cannot listen on {} again: {why}",
                sim.coder_addr()
            ),
        }
        if let Some(p) = &ready_file {
            if let Err(e) = write_atomically(p, &format!("{}\n", ready_json(sim))) {
                eprintln!("coder-agent-auth-sim: cannot rewrite {}: {e}", p.display());
            }
        }
    };
    let served = serve_blocking(
        cfg,
        a.metadata_addr,
        a.coder_addr,
        a.request_log.as_deref(),
        on_ready,
        on_event,
    );
    if wrote_ca {
        let _ = std::fs::remove_dir_all(&ca_dir);
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coder-agent-auth-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => serve(*a),
        Command::Demo(a) => demo::run(a.bin, a.keep),
    }
}
