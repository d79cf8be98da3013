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
    // The FUSE mount is now dead: ENOTCONN, not a hang. Requests caught in the teardown
    // of a FUSE-over-io_uring ring fail with ECONNABORTED or ECANCELED first.
    let dead = [libc::ENOTCONN, libc::ECONNABORTED, libc::ECANCELED];
    let start = std::time::Instant::now();
    loop {
        let err = fs::read_to_string(mp.join("f")).expect_err("dead mount");
        let errno = err.raw_os_error().unwrap_or(0);
        assert!(dead.contains(&errno), "{err}");
        if errno == libc::ENOTCONN {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "still {err} after 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
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

#[test]
fn read_only_mounts_of_a_snapshot() {
    let d = Daemon::start();
    let src = d.path("src");
    fs::create_dir_all(&src).expect("mkdir");
    let mut snaps = Vec::new();
    for word in ["one", "two"] {
        fs::write(src.join("f"), word).expect("write");
        let s = d.json(&["import", src.to_str().expect("utf8")]);
        snaps.push(s["id"].as_str().expect("id").to_string());
    }
    let mp = d.path("ro");
    fs::create_dir(&mp).expect("mkdir");
    let mps = mp.to_str().expect("utf8");
    let ws = d.json(&["mount", mps, "--from", &snaps[0], "--read-only"]);
    assert_eq!(ws["read_only"], true, "{ws}");
    assert_eq!(ws["engine"], "fuse", "read-only mounts are fuse ones: {ws}");
    assert_eq!(fs::read_to_string(mp.join("f")).expect("read"), "one");
    // Writes get EROFS, whatever they are.
    let erofs = |r: std::io::Result<()>| {
        assert_eq!(r.expect_err("read-only").raw_os_error(), Some(libc::EROFS));
    };
    erofs(fs::write(mp.join("f"), "changed"));
    erofs(fs::write(mp.join("new"), "x"));
    erofs(fs::create_dir(mp.join("d")));
    erofs(fs::remove_file(mp.join("f")));
    // A snapshot is refused with a clear error; a checkout switches the mount.
    let id = ws["id"].as_str().expect("id");
    let (code, body) = d.http("POST", &format!("/v1/workspaces/{id}/snapshot"), None);
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "read_only", "{body}");
    d.ok(&["checkout", mps, &snaps[1]]);
    assert_eq!(fs::read_to_string(mp.join("f")).expect("read"), "two");
    // The overlay engine does not serve read-only workspaces: said, nothing mounted.
    let other = d.path("ro2");
    fs::create_dir(&other).expect("mkdir");
    let body = format!(
        "{{\"mountpoint\": {:?}, \"from\": \"{}\", \"engine\": \"overlay\", \"read_only\": true}}",
        other.to_str().expect("utf8"),
        snaps[0]
    );
    let (code, out) = d.http("POST", "/v1/workspaces", Some(&body));
    assert_eq!(code, 400, "{out}");
    assert!(out.to_string().contains("fuse"), "{out}");
    assert!(!is_mounted(&other));
    d.ok(&["unmount", mps]);
}

/// Issue 8, item 6: a quota set through `helios mount` and `helios quota` (the API's
/// `quota` field and `PUT /v1/workspaces/{id}/quota`): writes past it get EDQUOT, the
/// workspace resource shows limit and usage, the overlay engine refuses one clearly, and
/// malformed limits are refused.
#[test]
fn quotas_through_the_cli_and_the_api() {
    let mut d = Daemon::start();
    let mp = d.path("q");
    fs::create_dir(&mp).expect("mkdir");
    let mps = mp.to_str().expect("utf8");
    let ws = d.json(&["mount", mps, "--quota-bytes", "64K", "--quota-inodes", "4"]);
    assert_eq!(ws["engine"], "fuse", "{ws}");
    assert!(
        ws["engine_reason"]
            .as_str()
            .expect("reason")
            .contains("quota"),
        "{ws}"
    );
    assert_eq!(ws["quota"]["bytes"], 65536, "{ws}");
    assert_eq!(ws["quota"]["inodes"], 4, "{ws}");
    assert_eq!(ws["usage"]["bytes"], 0, "{ws}");
    let id = ws["id"].as_str().expect("id").to_string();

    fs::write(mp.join("a"), vec![1u8; 60 << 10]).expect("within the quota");
    let e = fs::write(mp.join("b"), vec![2u8; 8 << 10]).expect_err("past the quota");
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    let (code, got) = d.http("GET", &format!("/v1/workspaces/{id}"), None);
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["usage"]["bytes"], 60 << 10, "{got}");
    assert_eq!(got["usage"]["inodes"], 2, "{got}");
    assert!(d.ok(&["ls"]).contains("quota"), "the list shows it");

    // Raised: the write fits; the quota survives a restart of the daemon.
    let ws = d.json(&["quota", mps, "--bytes", "1M"]);
    assert_eq!(ws["quota"]["bytes"], 1 << 20, "{ws}");
    assert!(ws["quota"].get("inodes").is_none(), "{ws}");
    fs::write(mp.join("b"), vec![2u8; 8 << 10]).expect("fits now");
    d.stop();
    d.spawn();
    let (_, got) = d.http("GET", &format!("/v1/workspaces/{id}"), None);
    assert_eq!(got["quota"]["bytes"], 1 << 20, "{got}");
    assert_eq!(got["usage"]["bytes"], 68 << 10, "{got}");
    let e = fs::write(mp.join("c"), vec![3u8; 1 << 20]).expect_err("past the quota");
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");

    // Bad limits and the overlay engine are refused with a clear error.
    let (code, out) = d.http(
        "PUT",
        &format!("/v1/workspaces/{id}/quota"),
        Some(r#"{"bytes": "lots"}"#),
    );
    assert_eq!(code, 400, "{out}");
    let (code, out) = d.http(
        "PUT",
        &format!("/v1/workspaces/{id}/quota"),
        Some(r#"{"files": 3}"#),
    );
    assert_eq!(code, 400, "{out}");
    let other = d.path("q2");
    fs::create_dir(&other).expect("mkdir");
    let body = format!(
        "{{\"mountpoint\": {:?}, \"engine\": \"overlay\", \"quota\": {{\"bytes\": 1000}}}}",
        other.to_str().expect("utf8")
    );
    let (code, out) = d.http("POST", "/v1/workspaces", Some(&body));
    assert_eq!(code, 400, "{out}");
    assert!(out.to_string().contains("fuse"), "{out}");
    assert!(!is_mounted(&other));
    let bad = d.cli(&[
        "mount",
        other.to_str().expect("utf8"),
        "--quota-bytes",
        "12X",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unit"),
        "{bad:?}"
    );

    // Removed: no limit, no usage shown.
    let ws = d.json(&["quota", mps]);
    assert!(ws.get("quota").is_none(), "{ws}");
    fs::write(mp.join("c"), vec![3u8; 1 << 20]).expect("unlimited");
    d.ok(&["unmount", mps]);
}
