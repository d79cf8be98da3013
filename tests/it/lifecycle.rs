//! Restart, kill -9 and stale mounts: snapshots survive, workspaces come back.

use std::fs;

use super::{Daemon, is_mounted};

#[test]
fn clean_restart_keeps_uncommitted_changes() {
    let mut d = Daemon::start();
    let mp = d.path("ws");
    let w = d.json(&["mount", mp.to_str().expect("utf8")]);
    fs::write(mp.join("committed"), "c").expect("write");
    let s = d.json(&["snapshot", w["id"].as_str().expect("id")]);
    fs::write(mp.join("pending"), "not snapshotted").expect("write");
    let status = d.stop();
    assert!(
        status.success(),
        "graceful stop exits 0: {status:?}\n{}",
        d.log()
    );
    assert!(!is_mounted(&mp), "stop unmounts");
    assert!(!d.socket.exists(), "stop removes the socket");
    d.spawn();
    assert!(is_mounted(&mp), "restart mounts again:\n{}", d.log());
    assert_eq!(
        fs::read_to_string(mp.join("pending")).expect("read"),
        "not snapshotted"
    );
    assert_eq!(fs::read_to_string(mp.join("committed")).expect("read"), "c");
    let ws = d.json(&["ls"]);
    assert_eq!(ws[0]["base"], s["id"]);
    assert_eq!(ws[0]["dirty"], true);
}

#[test]
fn kill_9_comes_back_at_the_last_snapshot() {
    let mut d = Daemon::start();
    let mp = d.path("ws");
    d.json(&["mount", mp.to_str().expect("utf8")]);
    fs::write(mp.join("f"), "snapshotted").expect("write");
    let s = d.json(&["snapshot", mp.to_str().expect("utf8"), "--label", "safe"]);
    fs::write(mp.join("f"), "lost in the crash").expect("write");
    d.kill9();
    // The FUSE mount is now dead: ENOTCONN, not a hang.
    let err = fs::read_to_string(mp.join("f")).expect_err("dead mount");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    d.spawn();
    assert_eq!(
        fs::read_to_string(mp.join("f")).expect("read"),
        "snapshotted",
        "{}",
        d.log()
    );
    let got = d.json(&["log"]);
    assert_eq!(got[0]["id"], s["id"]);
    assert_eq!(got[0]["label"], "safe");
    assert!(d.ok(&["fsck"]).starts_with("ok"));
}

#[test]
fn two_daemons_never_share_a_state_dir() {
    let d = Daemon::start();
    let out = std::process::Command::new(super::BIN)
        .args(["serve", "--state-dir"])
        .arg(&d.state)
        .arg("--socket")
        .arg(d.path("other.sock"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another helios daemon"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
