//! The lab's multi-cluster side, without any agent: one etcd per cluster on its own ports and
//! data, records under each cluster's name in its own store, one cluster's etcd stopped and
//! started while the other's serves on, per-cluster dir stores, a `clusterMesh` changed and
//! linked while no agent runs kept for the next start, and teardown stopping every etcd.

mod common;

use nix::sys::signal::kill;
use nix::unistd::Pid;
use wiremesh_lab::{Lab, LabOptions};

#[test]
fn each_cluster_has_its_own_etcd_through_an_outage_and_teardown_stops_every_one() {
    common::require_prerequisites();
    let mut lab = common::lab_with(2, 0, LabOptions::etcd(common::LEASE_TTL).clusters(2));
    assert_eq!((lab.clusters(), lab.nodes()), (2, 4));
    assert_eq!(lab.cluster_nodes(2), 3..=4);
    assert_eq!(lab.cluster_of(3), 2);
    let pids: Vec<u32> = lab
        .cluster_ids()
        .map(|c| {
            lab.cluster_etcd(c)
                .pid()
                .unwrap_or_else(|| panic!("cluster {c}'s etcd is not running after the build"))
        })
        .collect();
    assert_ne!(pids[0], pids[1], "the clusters share one etcd process");
    assert_eq!(lab.cluster_etcd(2).endpoint(), "http://198.18.0.254:2479");

    let record = b"{\"nodeName\": \"node-9\"}";
    lab.cluster_store(2)
        .write_record_bytes("node-9", record)
        .expect("write into c2's store");
    let key = lab.cluster_etcd(2).node_key("node-9");
    assert_eq!(key, "/wiremesh/v1/c2/nodes/node-9");
    assert_eq!(
        lab.cluster_etcd(2)
            .get(&key)
            .expect("get from c2")
            .as_deref(),
        Some(&record[..])
    );
    assert_eq!(
        lab.store().read_record_bytes("node-9").expect("read c1"),
        None,
        "a record written into c2's store shows in c1's"
    );

    lab.cluster_etcd(2).stop().expect("c2's etcd stops");
    assert!(!lab.cluster_etcd(2).running());
    assert!(lab.cluster_etcd(1).running(), "c1's etcd stopped with c2's");
    lab.etcd()
        .ctl(&["endpoint", "health"])
        .expect("c1's etcd answers during c2's outage");
    lab.cluster_etcd(2).start().expect("c2's etcd starts again");
    assert_eq!(
        lab.cluster_store(2)
            .read_record_bytes("node-9")
            .expect("read c2 after the outage")
            .as_deref(),
        Some(&record[..]),
        "c2's etcd lost its data across a restart"
    );

    lab.teardown().expect("teardown");
    for (c, pid) in (1..).zip(pids) {
        let alive = kill(Pid::from_raw(i32::try_from(pid).expect("a PID")), None).is_ok();
        assert!(!alive, "cluster {c}'s etcd (pid {pid}) survived teardown");
        assert!(!lab.cluster_etcd(c).running());
    }
    assert!(
        !lab.dir().exists(),
        "{} survived teardown",
        lab.dir().display()
    );
}

#[test]
fn dir_stores_per_cluster_and_links_kept_for_the_next_start() {
    common::require_prerequisites();
    let options = LabOptions::default().dual_stack().clusters(3).unlinked(3);
    let lab: Lab = common::lab_with(1, 0, options);
    let dirs: Vec<_> = lab
        .cluster_ids()
        .map(|c| lab.cluster_store(c).dir())
        .collect();
    for dir in &dirs {
        assert!(dir.is_dir(), "{} was not created", dir.display());
    }
    assert_eq!(dirs[1], lab.dir().join("store-c2"));
    assert_eq!(lab.expected_peers(1), ["c2/node-2"]);
    assert!(lab.expected_peers(3).is_empty(), "c3 starts unlinked");

    // No agent runs: the links are recorded for the next start, and set_cluster_mesh says
    // that it could not reload.
    lab.link_clusters(1, 3).expect("link c1 and c3");
    assert_eq!(lab.expected_peers(1), ["c2/node-2", "c3/node-3"]);
    assert_eq!(lab.expected_peers(3), ["c1/node-1"]);
    let yaml = lab.node(3).agent().config_yaml();
    assert!(
        yaml.contains("name: c1") && yaml.contains(&dirs[0].display().to_string()),
        "node-3's next config does not list c1 and its store:\n{yaml}"
    );
    let err = lab
        .node(2)
        .agent()
        .set_cluster_mesh(Vec::new())
        .expect_err("a reload with no agent running must fail");
    assert!(err.to_string().contains("no wiremesh agent"), "{err}");
    assert!(lab.cluster_mesh_of(2).is_empty());
    lab.unlink_clusters(1, 3).expect("unlink c1 and c3");
    assert!(lab.expected_peers(3).is_empty());
    assert!(
        lab.link_clusters(1, 4).is_err(),
        "linking a cluster the lab does not have"
    );
}
