#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

//! The strict-mode guard's watcher as a supervised task, in process, inside a network namespace
//! of its own (nftables there is this test's alone): while the watcher is dead a removed table
//! stays removed, and the watcher the supervisor restarts installs it again and goes on from
//! the dead one's status.
//!
//! Needs root and `nft`; fails, never skips, without them.

mod common;

use std::path::Path;
use std::time::Duration;

use tokio::sync::Notify;
use wiremesh::agent::supervisor::TaskState;
use wiremesh::config::Config;
use wiremesh::strict::{self, GuardSpec, CHECK_EVERY};

const CONFIG: &str = "
nodeName: node-1
nodeIPs: [198.18.0.1]
podCIDRs: [10.244.1.0/24]
clusterPodCIDRs: [10.244.0.0/16]
strictMode: true
";

/// Whether the guard table is in the kernel, complete.
async fn table_complete(spec: &GuardSpec) -> bool {
    let spec = spec.clone();
    let listed = tokio::task::spawn_blocking(move || strict::list(&spec))
        .await
        .unwrap()
        .expect("nft list table");
    listed.is_some_and(|l| l.complete)
}

async fn remove_table() {
    tokio::task::spawn_blocking(strict::remove)
        .await
        .unwrap()
        .expect("nft delete table");
}

#[test]
fn a_restarted_guard_watcher_reinstalls_the_table_and_keeps_its_count() {
    common::in_netns("strict_guard", || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(watcher_under_the_supervisor());
    });
}

async fn watcher_under_the_supervisor() {
    let config = Config::parse(CONFIG, Path::new("strict_guard.yaml")).unwrap();
    let spec = GuardSpec::from_config(&config);
    let started = strict::start(&config).await.expect("install the guard");
    assert!(table_complete(&spec).await, "start installed the table");
    let watcher = started.watcher.expect("strictMode: true has a watcher");
    let mut status = started.status;
    // The gap must outlast two checks, so that a live watcher would surely have acted in it.
    let gap = CHECK_EVERY * 3;
    let mut supervisor = common::slow_supervisor(gap + Duration::from_secs(2));
    let health = supervisor.health();
    let kill = std::sync::Arc::new(Notify::new());
    supervisor.spawn(
        "strict-guard",
        common::dies_once(kill.clone(), move || watcher.run()),
    );
    let supervising = tokio::spawn(async move { supervisor.run().await });

    // The watcher works: a removed table is back within a few checks.
    remove_table().await;
    let wait = CHECK_EVERY * 4;
    tokio::time::timeout(wait, status.wait_for(|s| s.reinstalls == 1 && s.installed))
        .await
        .expect("the watcher re-installs the removed table")
        .unwrap();
    assert!(table_complete(&spec).await);

    // Killed, it does nothing: the control that the re-install below is the restarted one's.
    kill.notify_one();
    common::wait_task(&health, "strict-guard", TaskState::Restarting).await;
    remove_table().await;
    tokio::time::sleep(gap).await;
    assert!(
        !table_complete(&spec).await,
        "the table came back with the watcher dead: something else installs it"
    );
    assert_eq!(status.borrow().reinstalls, 1);

    // Restarted from its factory, it installs the table again and counts on from 1.
    common::wait_task(&health, "strict-guard", TaskState::Running).await;
    tokio::time::timeout(wait, status.wait_for(|s| s.reinstalls == 2 && s.installed))
        .await
        .expect("the restarted watcher re-installs the table")
        .unwrap();
    assert!(table_complete(&spec).await);
    assert_eq!(health.borrow()["strict-guard"].restarts, 1);
    supervising.abort();
}
