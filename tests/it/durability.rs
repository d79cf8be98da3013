//! Issue 8 through a real daemon and real mounts: a snapshot retried after a full disk
//! keeps its data, fsync inside a workspace survives kill -9, the background journal sync
//! bounds what a crash loses, and a hard link does not break a checkout.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Daemon, is_mounted};

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).expect("mkdir");
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .expect("mount a tmpfs (needs root)");
        Tmpfs(at.to_path_buf())
    }

    fn free(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.0).expect("statvfs");
        st.blocks_available() * st.fragment_size()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Incompressible bytes, the same for the same seed.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The sequence of issue 8: a snapshot refused for space, space freed, the retry
/// acknowledged with no data ("new_objects": 0), and after a restart fsck found the
/// object missing, export failed and the file read EIO.
#[test]
fn a_snapshot_retried_after_a_full_disk_keeps_its_data() {
    let outer = tempfile::tempdir().expect("tempdir");
    let disk = Tmpfs::mount(&outer.path().join("disk"), "256m");
    let mut d = Daemon::start_with_state(disk.0.join("state"));
    let mp = d.path("ws");
    let w = d.json(&["mount", mp.to_str().expect("utf8")]);
    let s1 = d.json(&["snapshot", mp.to_str().expect("utf8")]);
    let data = noise(30_000_000, 7);
    fs::write(mp.join("A"), &data).expect("write A");
    // Leave about 40 MiB: less than the snapshot needs with the store's reserve.
    let filler = disk.0.join("filler");
    let fill = disk.free().saturating_sub(40 << 20);
    fs::write(&filler, vec![0u8; fill as usize]).expect("fill the disk");
    let path = format!("/v1/workspaces/{}/snapshot", w["id"].as_str().expect("id"));
    let (st, v) = d.http("POST", &path, Some("{}"));
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (507, Some("no_space")),
        "{v}"
    );
    fs::remove_file(&filler).expect("free the space");
    let s2 = d.json(&["snapshot", mp.to_str().expect("utf8")]);
    assert_eq!(s2["parent"], s1["id"]);
    assert!(
        s2["metrics"]["new_objects"].as_u64() >= Some(100),
        "the retry stored A's chunks: {s2}"
    );
    assert!(
        s2["metrics"]["new_bytes"].as_u64() >= Some(30_000_000),
        "{s2}"
    );
    assert!(d.stop().success(), "{}", d.log());
    d.spawn();
    let fsck = d.ok(&["fsck"]);
    assert!(fsck.starts_with("ok"), "{fsck}");
    let out = d.path("export");
    d.ok(&[
        "export",
        s2["id"].as_str().expect("id"),
        out.to_str().expect("utf8"),
    ]);
    assert!(
        fs::read(out.join("A")).expect("exported A") == data,
        "export of A differs"
    );
    assert!(
        fs::read(mp.join("A")).expect("read A") == data,
        "A differs in the mount"
    );
    d.stop();
}

/// SQLite commits in WAL and rollback-journal mode, then kill -9 of the daemon: after a
/// restart the database passes its integrity check and holds every committed row. The
/// background journal sync is off, so only the programs' own fsyncs count.
#[test]
fn fsync_in_a_workspace_survives_kill_9() {
    let mut d = Daemon::start_args(&["--journal-interval", "0"]);
    let mp = d.path("ws");
    d.json(&["mount", mp.to_str().expect("utf8"), "--engine", "fuse"]);
    fs::write(mp.join("committed-before"), "snapshotted").expect("write");
    d.json(&["snapshot", mp.to_str().expect("utf8")]);
    fs::create_dir(mp.join("db")).expect("mkdir");
    // Rollback journal: the sqlite3 shell commits and exits.
    sh(&format!(
        "sqlite3 {} 'PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; \
         CREATE TABLE t(x); INSERT INTO t VALUES (1),(2),(3);'",
        mp.join("db/journal.db").display()
    ));
    // WAL: the commit lives in the -wal file while the connection stays open.
    let mut py = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA synchronous=FULL')\n\
             c.execute('CREATE TABLE t(x)')\n\
             c.execute('BEGIN')\n\
             for i in range(100): c.execute('INSERT INTO t VALUES (?)', (i,))\n\
             c.execute('COMMIT')\n\
             print('committed', flush=True)\n\
             time.sleep(120)\n",
        )
        .arg(mp.join("db/wal.db"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(py.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "committed");
    // A plain file made durable the careful way: write, fsync, rename, fsync the dir.
    sh(&format!(
        "cd {} && python3 -c \"import os\n\
         f = open('tmp', 'w'); f.write('durable'); f.flush(); os.fsync(f.fileno()); f.close()\n\
         os.rename('tmp', 'renamed')\n\
         fd = os.open('.', os.O_RDONLY); os.fsync(fd)\"",
        mp.display()
    ));
    assert!(
        mp.join("db/wal.db-wal").exists(),
        "the commit is in the WAL"
    );
    d.kill9();
    let _ = py.kill();
    let _ = py.wait();
    d.spawn();
    assert!(is_mounted(&mp), "{}", d.log());
    let q = |db: &str| {
        sh(&format!(
            "sqlite3 {} 'PRAGMA integrity_check; SELECT count(*) FROM t;'",
            mp.join(db).display()
        ))
    };
    assert_eq!(q("db/journal.db"), "ok\n3\n", "{}", d.log());
    assert_eq!(q("db/wal.db"), "ok\n100\n", "{}", d.log());
    assert_eq!(
        fs::read_to_string(mp.join("renamed")).expect("renamed"),
        "durable"
    );
    assert!(!mp.join("tmp").exists());
    assert_eq!(
        fs::read_to_string(mp.join("committed-before")).expect("read"),
        "snapshotted"
    );
    let ls = d.json(&["ls"]);
    assert_eq!(ls[0]["dirty"], true, "{ls}");
    // The recovered state commits like any other, and fsck is clean.
    d.json(&["snapshot", mp.to_str().expect("utf8")]);
    assert!(d.ok(&["fsck"]).starts_with("ok"));
    d.stop();
}

/// Changes nobody fsynced are synced in the background: a crash loses at most the
/// last interval of them.
#[test]
fn the_background_sync_bounds_what_a_crash_loses() {
    let mut d = Daemon::start_args(&["--journal-interval", "0.2"]);
    let mp = d.path("ws");
    d.json(&["mount", mp.to_str().expect("utf8"), "--engine", "fuse"]);
    fs::create_dir(mp.join("dir")).expect("mkdir");
    fs::write(mp.join("dir/never-fsynced"), "written").expect("write");
    std::thread::sleep(Duration::from_millis(1500));
    d.kill9();
    d.spawn();
    assert_eq!(
        fs::read_to_string(mp.join("dir/never-fsynced")).expect("read"),
        "written",
        "{}",
        d.log()
    );
    d.stop();
}

/// Issue 8: `ln D/b D/c`, then `checkout --discard` made `ls D` fail with ENOENT, even
/// after dropping the kernel's caches. Links also go through a snapshot and a restart.
#[test]
fn a_hard_link_then_a_checkout_keeps_the_directory_readable() {
    for engine in ["fuse", "overlay"] {
        hard_link_then_checkout(engine);
    }
}

fn hard_link_then_checkout(engine: &str) {
    let mut d = Daemon::start();
    let mp = d.path("ws");
    let m = mp.to_str().expect("utf8");
    d.json(&["mount", m, "--engine", engine]);
    fs::create_dir(mp.join("D")).expect("mkdir");
    fs::write(mp.join("D/b"), "hi\n").expect("write");
    let s1 = d.json(&["snapshot", m]);
    let s1 = s1["id"].as_str().expect("id");
    fs::hard_link(mp.join("D/b"), mp.join("D/c")).expect("ln");
    d.ok(&["checkout", m, s1, "--discard"]);
    let ls = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap_or_else(|e| panic!("ls {}: {e}", p.display()))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ls(&mp.join("D")), ["b"]);
    sh("sync; echo 3 > /proc/sys/vm/drop_caches");
    assert_eq!(ls(&mp.join("D")), ["b"]);
    assert_eq!(fs::read_to_string(mp.join("D/b")).expect("read"), "hi\n");

    // A link through a snapshot, back and forth, and a restart.
    fs::hard_link(mp.join("D/b"), mp.join("D/c")).expect("ln");
    let s2 = d.json(&["snapshot", m]);
    let s2 = s2["id"].as_str().expect("id");
    d.ok(&["checkout", m, s1]);
    assert_eq!(ls(&mp.join("D")), ["b"]);
    d.ok(&["checkout", m, s2]);
    assert_eq!(ls(&mp.join("D")), ["b", "c"]);
    fs::hard_link(mp.join("D/b"), mp.join("D/e")).expect("ln");
    assert!(d.stop().success(), "{}", d.log());
    d.spawn();
    assert_eq!(ls(&mp.join("D")), ["b", "c", "e"]);
    d.ok(&["checkout", m, s1, "--discard"]);
    assert_eq!(ls(&mp.join("D")), ["b"]);
    assert!(d.ok(&["fsck"]).starts_with("ok"));
    d.stop();
}

/// Issue 9, item 2: snapshots asked for with `--buffered` (no log sync) survive a kill -9
/// of the daemon right after they are acknowledged, on both engines.
#[test]
fn buffered_snapshots_survive_kill_9() {
    let mut d = Daemon::start();
    let mut taken = Vec::new();
    for engine in ["fuse", "overlay"] {
        let mp = d.path(&format!("ws-{engine}"));
        fs::create_dir(&mp).expect("mkdir");
        let mps = mp.to_str().expect("utf8");
        d.ok(&["mount", mps, "--engine", engine]);
        for i in 0..5 {
            fs::write(mp.join(format!("f{i}")), format!("{engine} {i}")).expect("write");
            let s = d.json(&["snapshot", mps, "--buffered"]);
            taken.push((s["id"].as_str().expect("id").to_string(), engine, i));
        }
    }
    let (code, body) = d.http(
        "POST",
        "/v1/workspaces/w1/snapshot",
        Some(r#"{"durability": "eventually"}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("sync or buffered"),
        "{body}"
    );
    d.kill9();
    d.spawn();
    for (id, engine, i) in &taken {
        let out = d.path(&format!("export-{id}"));
        d.ok(&["export", id, out.to_str().expect("utf8")]);
        for j in 0..=*i {
            assert_eq!(
                fs::read_to_string(out.join(format!("f{j}"))).expect("exported file"),
                format!("{engine} {j}"),
                "{id}"
            );
        }
    }
    assert!(d.ok(&["fsck"]).starts_with("ok"), "fsck");
    let ws = d.json(&["ls"]);
    assert_eq!(ws[0]["base"].as_str(), Some(taken[4].0.as_str()), "{ws}");
    assert_eq!(ws[1]["base"].as_str(), Some(taken[9].0.as_str()), "{ws}");
}
