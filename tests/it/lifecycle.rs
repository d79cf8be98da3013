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
    // The fuse engine's journal: with no background sync, what was neither snapshotted
    // nor fsynced is lost (an overlay workspace keeps it: its upperdir is a kernel
    // filesystem's, see overlay.rs).
    let mut d = Daemon::start_args(&["--journal-interval", "0"]);
    let mp = d.path("ws");
    d.json(&["mount", mp.to_str().expect("utf8"), "--engine", "fuse"]);
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

/// A small tmpfs mounted for one test, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_the_store_recovers() {
    let outer = tempfile::tempdir().expect("tempdir");
    let disk = outer.path().join("disk");
    fs::create_dir(&disk).expect("mkdir");
    nix::mount::mount(
        Some("tmpfs"),
        &disk,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=48m"),
    )
    .expect("mount a small tmpfs (needs root)");
    let _guard = SmallDisk(disk.clone());
    let mut d = Daemon::start_with_state(disk.join("state"));
    let mp = d.path("ws");
    d.json(&["mount", mp.to_str().expect("utf8")]);
    fs::write(mp.join("keep"), "kept").expect("write");
    let s1 = d.json(&["snapshot", mp.to_str().expect("utf8")]);
    // Fill the disk from inside the workspace: the writer gets ENOSPC, nothing breaks.
    let err = fs::write(mp.join("big"), vec![7u8; 64 << 20]).expect_err("the disk is full");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let (st, v) = d.http("POST", "/v1/workspaces/w1/snapshot", Some("{}"));
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (507, Some("no_space")),
        "{v}"
    );
    // Free the space: the same daemon snapshots again, and nothing was lost.
    fs::remove_file(mp.join("big")).expect("rm");
    fs::write(mp.join("after"), "after").expect("write");
    let s2 = d.json(&["snapshot", mp.to_str().expect("utf8")]);
    assert_eq!(s2["parent"], s1["id"]);
    assert!(d.ok(&["fsck"]).starts_with("ok"));
    assert_eq!(fs::read_to_string(mp.join("keep")).expect("read"), "kept");
    d.stop();
}
