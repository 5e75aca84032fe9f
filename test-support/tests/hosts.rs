//! The multi-host harness itself: three namespaces on a bridge, a 3-node JetStream cluster
//! across them, a cut link seen by the other nodes, and nothing left after the drop.

use shaddock_test_support::nats::NatsCluster;
use shaddock_test_support::netns::Hosts;
use std::process::Command;
use std::time::{Duration, Instant};

/// How many other nodes a node has routes to (its `/routez`; route pooling makes several
/// connections per peer, so peers are counted by name).
fn routes(cluster: &NatsCluster, i: usize) -> Option<u64> {
    let body = cluster.monitor(&cluster.nodes()[i], "/routez").ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut peers: Vec<&str> = v["routes"]
        .as_array()?
        .iter()
        .filter_map(|r| r["remote_name"].as_str())
        .collect();
    peers.sort_unstable();
    peers.dedup();
    Some(peers.len() as u64)
}

/// Polls `f` every 100 ms until it holds or `secs` pass.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("not within {secs} s: {what}");
}

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn three_hosts_a_nats_cluster_a_cut_link_and_a_clean_teardown() {
    let hosts = Hosts::create(3).expect("make 3 hosts (needs root and iproute2)");
    let names: Vec<String> = hosts.hosts().iter().map(|h| h.netns.clone()).collect();
    let addrs: Vec<_> = hosts.hosts().iter().map(|h| h.addr).collect();
    assert_eq!(addrs.len(), 3);
    assert!(addrs[0] != addrs[1] && addrs[1] != addrs[2]);
    for name in &names {
        assert!(netns_list().contains(name.as_str()), "{name} exists");
    }

    let cluster = NatsCluster::start(&hosts, &[0, 1, 2]).expect("3-node JetStream cluster");
    // Every node routes to both others: the hosts reach each other over the bridge.
    for i in 0..3 {
        eventually(15, &format!("node {i} has 2 routes"), || {
            routes(&cluster, i) == Some(2)
        });
    }
    let jsz = cluster.monitor(&cluster.nodes()[0], "/jsz").unwrap();
    let jsz: serde_json::Value = serde_json::from_str(&jsz).unwrap();
    assert_eq!(jsz["meta_cluster"]["cluster_size"], 3, "{jsz}");

    // Cutting host 2's link: its node is unreachable and the others lose their route to it;
    // its process keeps running.
    hosts.cut_link(2).unwrap();
    eventually(20, "nodes 0 and 1 drop their route to host 2", || {
        routes(&cluster, 0) == Some(1) && routes(&cluster, 1) == Some(1)
    });
    assert!(cluster.monitor(&cluster.nodes()[2], "/varz").is_err());
    assert!(
        std::path::Path::new(&format!("/proc/{}", cluster.nodes()[2].pid)).exists(),
        "a cut link does not kill the host's processes"
    );
    hosts.restore_link(2).unwrap();
    eventually(20, "host 2's routes come back", || {
        routes(&cluster, 0) == Some(2) && routes(&cluster, 2) == Some(2)
    });

    // Killing host 1: every process inside it dies.
    let pid1 = cluster.nodes()[1].pid;
    assert!(hosts.kill_host(1) >= 1);
    assert!(!std::path::Path::new(&format!("/proc/{pid1}")).exists());

    let pid0 = cluster.nodes()[0].pid;
    drop(cluster);
    drop(hosts);
    let left = netns_list();
    for name in &names {
        assert!(!left.contains(name.as_str()), "{name} deleted: {left}");
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{pid0}")).exists(),
        "the teardown killed the nodes"
    );
}
