//! Session tokens as coderd hands them out: one per agent and workspace build, the same on every
//! exchange and in every simulator with the same seed.

use super::client::*;
use crate::*;

fn token(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["session_token"].as_str().unwrap().to_string()
}

#[test]
fn an_agent_gets_the_same_token_on_every_exchange() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main", "dev"]));
    let main = token(&aws_exchange(&sim, Some("main")));
    let dev = token(&aws_exchange(&sim, Some("dev")));
    assert_ne!(main, dev, "each agent has its own token");
    for _ in 0..3 {
        assert_eq!(token(&aws_exchange(&sim, Some("main"))), main);
        assert_eq!(token(&aws_exchange(&sim, Some("dev"))), dev);
    }
    // Shaped like coderd's: a UUID v4.
    for t in [&main, &dev] {
        let groups: Vec<usize> = t.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{t}");
        assert!(t.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{t}");
        assert_eq!(&t[14..15], "4", "{t}");
        assert!("89ab".contains(&t[19..20]), "{t}");
    }
    // One record per 200 answer, in order.
    let recorded = sim.tokens();
    assert_eq!(recorded.len(), 8);
    assert_eq!(recorded[0], ("main".to_string(), main.clone()));
    assert_eq!(recorded[1], ("dev".to_string(), dev.clone()));
    assert_eq!(sim.current_token("main"), Some(main));
    assert_eq!(sim.current_token("dev"), Some(dev));
    assert_eq!(sim.current_token("nobody"), None);
}

#[test]
fn tokens_survive_a_restart_and_differ_by_build_instance_and_seed() {
    let cfg = SimConfig::new(Cloud::Aws, &["main"]);
    let first = token(&aws_exchange(&Sim::start(cfg.clone()), Some("main")));
    // Another simulator process with the same settings (a restart, or the other `serve`).
    let again = token(&aws_exchange(&Sim::start(cfg.clone()), Some("main")));
    assert_eq!(first, again);

    let mut build2 = cfg.clone();
    build2.build = 2;
    let mut other_instance = cfg.clone();
    other_instance.instance_id = "i-0fedcba9876543210".into();
    let mut other_seed = cfg.clone();
    other_seed.token_seed = "another seed".into();
    let others: Vec<String> = [build2, other_instance, other_seed]
        .into_iter()
        .map(|c| token(&aws_exchange(&Sim::start(c), Some("main"))))
        .collect();
    let mut all = vec![first];
    all.extend(others);
    let distinct: std::collections::HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), 4, "{all:?}");
}

#[test]
fn every_cloud_hands_out_the_agents_token() {
    // The token is the agent's, whichever identity proved the instance.
    let mut cfg = SimConfig::new(Cloud::Gcp, &["main"]);
    cfg.instance_id = ID.to_string();
    let gcp = Sim::start(cfg);
    let aws = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    assert_eq!(gcp.current_token("main"), aws.current_token("main"));
}

#[test]
fn a_rebuild_makes_new_tokens_for_the_same_names() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main", "dev"]));
    assert_eq!(sim.build(), 1);
    let before = sim.current_tokens();
    let main1 = token(&aws_exchange(&sim, Some("main")));
    assert_eq!(main1, before[0].1);

    assert_eq!(sim.rebuild(), 2);
    assert_eq!(sim.build(), 2);
    let after = sim.current_tokens();
    assert_eq!(
        after.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        ["main", "dev"]
    );
    for ((agent, old), (_, new)) in before.iter().zip(&after) {
        assert_ne!(old, new, "{agent} kept its token across the rebuild");
    }
    let main2 = token(&aws_exchange(&sim, Some("main")));
    assert_eq!(main2, after[0].1);
    assert_eq!(token(&aws_exchange(&sim, Some("main"))), main2);
    assert_eq!(
        sim.tokens(),
        vec![
            ("main".to_string(), main1),
            ("main".to_string(), main2.clone()),
            ("main".to_string(), main2)
        ]
    );

    // A simulator started at build 2 agrees (a `serve --build 2` after a restart).
    let mut cfg = SimConfig::new(Cloud::Aws, &["main", "dev"]);
    cfg.build = 2;
    assert_eq!(Sim::start(cfg).current_tokens(), after);
}
