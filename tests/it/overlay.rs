//! The overlay engine through the daemon: fork, write, snapshot, checkout, kill -9 and
//! restart, delete; and the forced fallback.

use std::fs;

use super::{Daemon, is_mounted};

#[test]
fn overlay_workspaces_live_through_the_daemon_and_a_kill_9() {
    let mut d = Daemon::start();
    let src = d.path("src");
    fs::create_dir_all(src.join("dir")).expect("mkdir");
    fs::write(src.join("dir/lower"), "from the snapshot").expect("write");
    let s0 = d.json(&["import", src.to_str().expect("utf8")]);
    let s0 = s0["id"].as_str().expect("id").to_string();
    let mp = d.path("ws");
    fs::create_dir(&mp).expect("mkdir");
    let mps = mp.to_str().expect("utf8");
    let w = d.json(&["mount", mps, "--from", &s0, "--engine", "overlay"]);
    assert_eq!(w["engine"], "overlay", "{w}");
    assert_eq!(w["dirty"], false, "{w}");
    assert_eq!(
        fs::read_to_string(mp.join("dir/lower")).expect("read"),
        "from the snapshot"
    );
    fs::write(mp.join("dir/lower"), "changed").expect("write");
    fs::write(mp.join("new"), "new").expect("write");
    let s1 = d.json(&["snapshot", mps, "--label", "one"]);
    assert_eq!(s1["parent"], s0.as_str(), "{s1}");
    let diff = d.ok(&["diff", &s0, s1["id"].as_str().expect("id")]);
    assert!(
        diff.contains("M dir/lower") && diff.contains("A new"),
        "{diff}"
    );
    // Written after the snapshot and fsynced: the upperdir is on disk.
    let f = fs::File::create(mp.join("synced")).expect("create");
    std::io::Write::write_all(&mut &f, b"durable").expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    d.kill9();
    d.spawn();
    assert!(is_mounted(&mp), "restart mounts again:\n{}", d.log());
    assert_eq!(
        fs::read_to_string(mp.join("synced")).expect("read"),
        "durable"
    );
    assert_eq!(
        fs::read_to_string(mp.join("dir/lower")).expect("read"),
        "changed"
    );
    let ws = d.json(&["ls"]);
    assert_eq!(ws[0]["engine"], "overlay");
    assert_eq!(ws[0]["base"], s1["id"]);
    assert_eq!(ws[0]["dirty"], true);
    let out = d.cli(&["checkout", mps, &s0]);
    assert!(!out.status.success(), "dirty: refused");
    d.ok(&["checkout", mps, &s0, "--discard"]);
    assert_eq!(
        fs::read_to_string(mp.join("dir/lower")).expect("read"),
        "from the snapshot"
    );
    assert!(!mp.join("synced").exists());
    assert!(d.ok(&["fsck"]).starts_with("ok"), "fsck");
    d.ok(&["unmount", mps]);
    assert!(!is_mounted(&mp), "unmount removes every layer");
    assert_eq!(d.json(&["ls"]).as_array().map(Vec::len), Some(0));
}

#[test]
fn the_fallback_can_be_forced_and_says_why() {
    let mut d = Daemon::start();
    d.stop();
    d.serve_env.push(("HELIOS_NO_OVERLAY".into(), "1".into()));
    d.spawn();
    let mp = d.path("ws");
    fs::create_dir(&mp).expect("mkdir");
    let mps = mp.to_str().expect("utf8");
    let out = d.cli(&["mount", mps, "--engine", "overlay"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HELIOS_NO_OVERLAY"), "{err}");
    assert!(!is_mounted(&mp), "nothing half-mounted");
    let w = d.json(&["mount", mps]);
    assert_eq!(w["engine"], "fuse");
    assert!(
        w["engine_reason"]
            .as_str()
            .is_some_and(|r| r.contains("HELIOS_NO_OVERLAY")),
        "{w}"
    );
}

#[test]
fn a_fork_over_a_delta_survives_kill_9_and_forks_again_over_one() {
    let mut d = Daemon::start();
    let src = d.path("src");
    fs::create_dir_all(src.join("pkg")).expect("mkdir");
    for i in 0..40 {
        fs::write(src.join(format!("pkg/m{i}.py")), format!("x = {i}\n")).expect("write");
    }
    let s0 = d.json(&["import", src.to_str().expect("utf8")]);
    let s0 = s0["id"].as_str().expect("id").to_string();
    assert_eq!(d.json(&["warm", &s0])["native"], true);
    // A search step: fork the root, change a file, snapshot; fork the new node.
    let a = d.path("a");
    fs::create_dir(&a).expect("mkdir");
    let a_s = a.to_str().expect("utf8");
    d.ok(&["mount", a_s, "--from", &s0]);
    fs::write(a.join("pkg/m3.py"), "x = 'step 1'\n").expect("write");
    fs::remove_file(a.join("pkg/m4.py")).expect("rm");
    let s1 = d.json(&["snapshot", a_s])["id"]
        .as_str()
        .expect("id")
        .to_string();
    let b = d.path("b");
    fs::create_dir(&b).expect("mkdir");
    let b_s = b.to_str().expect("utf8");
    let ws = d.json(&["mount", b_s, "--from", &s1]);
    assert_eq!(ws["lower"], "delta", "{ws}");
    assert_eq!(
        fs::read_to_string(b.join("pkg/m3.py")).expect("read"),
        "x = 'step 1'\n"
    );
    assert!(
        !b.join("pkg/m4.py").exists(),
        "the delta's whiteout hides it"
    );
    // Work over the delta, fsynced, then the daemon is killed.
    {
        use std::io::Write;
        let mut f = fs::File::create(b.join("pkg/new.py")).expect("create");
        f.write_all(b"y = 1\n").expect("write");
        f.sync_all().expect("fsync");
    }
    d.kill9();
    d.spawn();
    assert!(is_mounted(&b), "restart mounts again:\n{}", d.log());
    assert_eq!(
        fs::read_to_string(b.join("pkg/new.py")).expect("read"),
        "y = 1\n"
    );
    assert_eq!(
        fs::read_to_string(b.join("pkg/m3.py")).expect("read"),
        "x = 'step 1'\n"
    );
    assert!(!b.join("pkg/m4.py").exists());
    let s2 = d.json(&["snapshot", b_s])["id"]
        .as_str()
        .expect("id")
        .to_string();
    let out = d.path("out");
    d.ok(&["export", &s2, out.to_str().expect("utf8")]);
    assert_eq!(
        fs::read_to_string(out.join("pkg/new.py")).expect("read"),
        "y = 1\n"
    );
    assert!(!out.join("pkg/m4.py").exists());
    assert_eq!(fs::read_dir(out.join("pkg")).expect("ls").count(), 40);
    // Once the restarted daemon has checked the root's native lower again, new forks
    // stand on deltas again.
    let w = d.json(&["warm", &s0]);
    assert_eq!(w["native"], true, "{w}");
    let c = d.path("c");
    fs::create_dir(&c).expect("mkdir");
    let ws = d.json(&["mount", c.to_str().expect("utf8"), "--from", &s2]);
    assert_eq!(ws["lower"], "delta", "{ws}");
    assert_eq!(
        fs::read_to_string(c.join("pkg/new.py")).expect("read"),
        "y = 1\n"
    );
    assert!(d.ok(&["fsck"]).starts_with("ok"), "fsck");
}

#[test]
fn warm_builds_a_native_lower_that_forks_and_restarts_use() {
    let mut d = Daemon::start();
    let src = d.path("src");
    fs::create_dir_all(src.join("pkg/lib")).expect("mkdir");
    for i in 0..50 {
        fs::write(src.join(format!("pkg/lib/m{i}.py")), format!("x = {i}\n")).expect("write");
    }
    let s0 = d.json(&["import", src.to_str().expect("utf8")]);
    let s0 = s0["id"].as_str().expect("id").to_string();
    let w = d.json(&["warm", &s0]);
    assert_eq!(w["native"], true, "{w}");
    assert_eq!(w["files"], 50, "{w}");
    // Warm again: nothing to do.
    assert_eq!(d.json(&["warm", &s0])["latency_us"], 0);
    let mp = d.path("ws");
    fs::create_dir(&mp).expect("mkdir");
    let mps = mp.to_str().expect("utf8");
    let ws = d.json(&["mount", mps, "--from", &s0]);
    assert_eq!(ws["engine"], "overlay", "{ws}");
    assert_eq!(ws["lower"], "native", "{ws}");
    assert_eq!(
        fs::read_to_string(mp.join("pkg/lib/m7.py")).expect("read"),
        "x = 7\n"
    );
    fs::write(mp.join("pkg/lib/m7.py"), "x = 'changed'\n").expect("write");
    let s1 = d.json(&["snapshot", mps]);
    let diff = d.ok(&["diff", &s0, s1["id"].as_str().expect("id")]);
    assert!(diff.trim().starts_with("M pkg/lib/m7.py"), "{diff}");
    assert_eq!(diff.trim().lines().count(), 1, "{diff}");
    d.kill9();
    d.spawn();
    assert!(is_mounted(&mp), "restart mounts again:\n{}", d.log());
    assert_eq!(
        fs::read_to_string(mp.join("pkg/lib/m7.py")).expect("read"),
        "x = 'changed'\n"
    );
    d.ok(&["checkout", mps, &s0]);
    assert_eq!(
        fs::read_to_string(mp.join("pkg/lib/m7.py")).expect("read"),
        "x = 7\n"
    );
    // Bad input: a clear error, nothing built.
    let (code, body) = d.http("POST", "/v1/snapshots/s999/warm", None);
    assert_eq!(code, 404, "{body}");
    let (code, body) = d.http("POST", "/v1/snapshots/nope/warm", None);
    assert_eq!(code, 400, "{body}");
    assert!(d.ok(&["fsck"]).starts_with("ok"), "fsck");
    d.ok(&["unmount", mps]);
}

#[test]
fn a_layer_half_made_by_a_killed_checkout_is_never_mounted() {
    // A kill -9 inside a checkout once left a half-made newest layer that the restart
    // mounted (ENOENT: the workspace came back unmounted). Layers are built under
    // `.building-` and renamed when complete; here the leftover of such a kill is planted
    // by hand, newer than any real layer and over the record's own lower.
    let mut d = Daemon::start();
    let mp = d.path("ws");
    let mps = mp.to_str().expect("utf8");
    let w = d.json(&["mount", mps, "--engine", "overlay"]);
    fs::write(mp.join("f"), "one").expect("write");
    let s1 = d.json(&["snapshot", mps]);
    let s1 = s1["id"].as_str().expect("id").to_string();
    fs::write(mp.join("f"), "two").expect("write");
    d.ok(&["checkout", mps, &s1, "--discard"]);
    d.kill9();
    let layers = d
        .state
        .join("workspaces")
        .join(w["id"].as_str().expect("id"))
        .join("overlay");
    let half = layers.join(format!(".building-99.{s1}"));
    fs::create_dir_all(half.join("upper")).expect("plant a half-made layer");
    fs::write(half.join("upper/f"), "never acknowledged").expect("write");
    d.spawn();
    assert!(is_mounted(&mp), "restart mounts again:\n{}", d.log());
    assert_eq!(fs::read_to_string(mp.join("f")).expect("read"), "one");
    let start = std::time::Instant::now();
    while half.exists() && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!half.exists(), "the leftover is removed");
    d.ok(&["checkout", mps, &s1, "--discard"]);
    assert_eq!(fs::read_to_string(mp.join("f")).expect("read"), "one");
}
