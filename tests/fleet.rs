//! A fleet booting: 500 concurrent exchanges against one simulator on
//! loopback. Every exchange must store its agent's token; nothing may be
//! lost. Prints p50/p99 (figures, not assertions). Bounded: each run has a
//! 120 s deadline and the test stops by itself.

use std::collections::HashMap;
use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

const FLEET: usize = 500;
const AGENTS: usize = 10;

#[test]
fn five_hundred_concurrent_exchanges_each_store_their_agents_token() {
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
