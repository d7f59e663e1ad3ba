//! A lab whose owner died without cleaning up (SIGKILL, power cut) leaves namespaces, processes
//! and a directory behind; the next lab that draws the same prefix removes them first.
//! (Its own binary: the prefix counter is per process, so no other test may claim first.)

mod common;

use std::process::Command;
use std::time::Duration;

use wiremesh_lab::{run, BgProcess, Lab, LAB_ROOT};

#[test]
fn stale_lab_with_dead_owner_is_reclaimed() {
    common::require_prerequisites();
    let prefix = format!("wml{}0", std::process::id() % 10_000);
    let dir = std::path::Path::new(LAB_ROOT).join(&prefix);
    std::fs::create_dir_all(&dir).expect("stale dir");
    let mut gone = Command::new("true").spawn().expect("spawn true");
    let dead_pid = gone.id();
    gone.wait().expect("reap true");
    std::fs::write(dir.join("owner.pid"), dead_pid.to_string()).expect("owner file");
    let stale_ns = format!("{prefix}-n9");
    run(
        Command::new("ip").args(["netns", "add", &stale_ns]),
        Duration::from_secs(5),
    )
    .expect("stale netns");
    let mut leftover = BgProcess::spawn(
        "leftover sleep",
        Command::new("ip").args(["netns", "exec", &stale_ns, "sleep", "30"]),
        &std::env::temp_dir().join(format!("{prefix}-leftover.log")),
    )
    .expect("leftover process");

    let lab = Lab::new(1, 1).expect("lab");
    assert_eq!(lab.prefix(), prefix, "the stale prefix was not reused");
    let listing = run(
        Command::new("ip").args(["netns", "list"]),
        Duration::from_secs(5),
    )
    .expect("ip netns list");
    assert!(
        !listing.contains(&stale_ns),
        "stale namespace survived:\n{listing}"
    );
    leftover
        .wait_timeout(Duration::from_secs(5))
        .expect("the stale lab's process was killed");
    let _ = std::fs::remove_file(leftover.log_path());
}
