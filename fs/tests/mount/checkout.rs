//! Snapshot, more writes, checkout, all while mounted: the mount switches in place.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::{Command, Stdio};

use helios_fs::Engine;

use super::{EngineFixture, Fixture};

// A process inside the mount following a checkout is the FUSE engine's alone: an overlay
// checkout replaces the mount, and a working directory keeps the old one.
both_engines!(
    snapshot_write_checkout_round_trip,
    checkout_refuses_uncommitted_writes_through_open_handles,
    snapshots_while_writers_run_stay_consistent,
    a_directory_gone_after_two_checkouts_is_gone,
);

fn snapshot_write_checkout_round_trip(engine: Engine) {
    let fx = EngineFixture::new(engine);
    fs::create_dir(fx.p("src")).expect("mkdir");
    fs::write(fx.p("src/main.py"), b"print(1)\n").expect("write");
    fs::write(fx.p("keep"), b"unchanged").expect("write");
    let s1 = fx
        .mount()
        .snapshot(Some("one".into()), Default::default())
        .expect("snapshot");
    let keep_ino = fs::metadata(fx.p("keep")).expect("stat").ino();
    let src_ino = fs::metadata(fx.p("src")).expect("stat").ino();

    fs::write(fx.p("src/main.py"), b"print(2)\n").expect("write");
    fs::write(fx.p("src/new.py"), b"new").expect("write");
    fs::remove_file(fx.p("keep")).expect("unlink");
    let s2 = fx
        .mount()
        .snapshot(Some("two".into()), Default::default())
        .expect("snapshot");
    assert_eq!(s2.parent, Some(s1.id));
    assert_eq!(s2.metrics.changed_paths, 3);

    // A file opened before the checkout keeps what it opened.
    let mut old = File::open(fx.p("src/main.py")).expect("open");
    fx.mount().checkout(s1.id, false).expect("checkout");
    assert_eq!(fs::read(fx.p("src/main.py")).expect("read"), b"print(1)\n");
    assert_eq!(fs::read(fx.p("keep")).expect("read"), b"unchanged");
    assert!(fs::metadata(fx.p("src/new.py")).is_err());
    let mut s = String::new();
    old.read_to_string(&mut s).expect("read old handle");
    assert_eq!(s, "print(2)\n");
    assert_eq!(
        fs::metadata(fx.p("src")).expect("stat").ino(),
        src_ino,
        "directories keep their inode"
    );
    assert_ne!(fs::metadata(fx.p("keep")).expect("stat").ino(), 0);
    let _ = keep_ino;
    let names: Vec<_> = fs::read_dir(fx.p("src"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec!["main.py"]);

    fx.mount().checkout(s2.id, false).expect("checkout back");
    assert_eq!(fs::read(fx.p("src/new.py")).expect("read"), b"new");
    assert!(fs::metadata(fx.p("keep")).is_err());
}

fn checkout_refuses_uncommitted_writes_through_open_handles(engine: Engine) {
    let fx = EngineFixture::new(engine);
    fs::write(fx.p("f"), b"v1").expect("write");
    let s1 = fx
        .mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    let f = OpenOptions::new()
        .write(true)
        .open(fx.p("f"))
        .expect("open");
    let s_clean = fx
        .mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    f.write_all_at(b"v2", 0).expect("write");
    let err = fx.mount().checkout(s1.id, false).expect_err("dirty");
    assert!(err.to_string().contains("uncommitted"), "{err}");
    // The write through the still-open handle is in the next snapshot.
    let s2 = fx
        .mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    assert_ne!(s2.root, s_clean.root);
    let view = fx
        .repo
        .create_workspace(Some(s2.id), true, Default::default())
        .expect("view");
    assert_eq!(view.read_file("f").expect("read"), b"v2");
    // Open for writing but unwritten since the snapshot: not a change, checkout goes on,
    // and the handle keeps the file it opened.
    fx.mount()
        .checkout(s1.id, false)
        .expect("checkout with an idle writer");
    assert_eq!(fs::read(fx.p("f")).expect("read"), b"v1");
    f.write_all_at(b"v3", 0).expect("write to the old file");
    assert_eq!(fs::read(fx.p("f")).expect("read"), b"v1");
    drop(f);
    fx.mount().checkout(s2.id, false).expect("checkout");
    fx.mount().checkout(s1.id, true).expect("discard");
    assert_eq!(fs::read(fx.p("f")).expect("read"), b"v1");
}

fn a_directory_gone_after_two_checkouts_is_gone(engine: Engine) {
    // Found by the crash cycles. A checkout keeps the kernel's entry of a directory that
    // stays a directory; a second checkout, before anything loaded the root again, to a
    // tree without it must still drop that entry (the kernel answered a path walk
    // through the directory from its cache, and a create in it failed with ENOENT).
    let fx = EngineFixture::new(engine);
    fs::write(fx.p("a"), b"a").expect("write");
    let s0 = fx
        .mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    fs::create_dir_all(fx.p("d/e")).expect("mkdir");
    fs::write(fx.p("d/e/x"), b"x").expect("write");
    let s1 = fx
        .mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    fs::write(fx.p("d/e/x"), b"x2").expect("write");
    fx.mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    // The kernel may drop an unused entry at any time; an open directory pins it.
    let pin = File::open(fx.p("d")).expect("open d");
    fx.mount().checkout(s1.id, true).expect("checkout s1");
    fx.mount().checkout(s0.id, true).expect("checkout s0");
    assert!(!fx.p("d").exists(), "d is not in s0");
    drop(pin);
    assert!(!fx.p("d/e").exists(), "nor d/e");
    fs::create_dir_all(fx.p("d/e")).expect("mkdir again");
    fs::write(fx.p("d/e/y"), b"y").expect("create in the new directory");
    assert_eq!(fs::read(fx.p("d/e/y")).expect("read"), b"y");
    // And back: the path is a directory again, with s1's content.
    fx.mount().checkout(s0.id, true).expect("checkout s0 again");
    fx.mount().checkout(s1.id, true).expect("checkout s1 again");
    assert_eq!(fs::read(fx.p("d/e/x")).expect("read"), b"x");
    assert!(!fx.p("d/e/y").exists());
}

#[test]
fn mounts_on_directories_that_stay_directories_survive_a_checkout() {
    // A container whose root filesystem is a workspace has /proc, /dev, /sys mounted on
    // its directories: a checkout must not detach them (invalidating a dentry detaches
    // the mounts on it), unless the path is no longer a directory.
    let fx = Fixture::new();
    for d in ["proc", "deep/er", "gone"] {
        fs::create_dir_all(fx.p(d)).expect("mkdir");
    }
    fs::write(fx.p("deep/er/f"), b"1").expect("write");
    let s1 = fx
        .mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    fs::write(fx.p("deep/er/f"), b"2").expect("write");
    fs::remove_dir(fx.p("gone")).expect("rmdir");
    fs::write(fx.p("gone"), b"a file now").expect("write");
    let s2 = fx
        .mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    fx.mount().checkout(s1.id, false).expect("checkout");
    let tmpfs = |d: &str| {
        nix::mount::mount(
            Some("t"),
            &fx.p(d),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount a tmpfs on a workspace directory");
        fs::write(fx.p(d).join("on-tmpfs"), b"x").expect("write");
    };
    for d in ["proc", "deep/er", "gone"] {
        tmpfs(d);
    }
    fx.mount().checkout(s2.id, false).expect("checkout");
    let mounted = |d: &str| fx.p(d).join("on-tmpfs").exists();
    assert!(mounted("proc"), "a mount on /proc survives the checkout");
    assert!(mounted("deep/er"), "a mount deeper down survives too");
    assert!(!mounted("gone"), "the path is a file now: its mount went");
    assert_eq!(fs::read(fx.p("gone")).expect("read"), b"a file now");
    for d in ["deep/er", "proc"] {
        nix::mount::umount2(&fx.p(d), nix::mount::MntFlags::MNT_DETACH).expect("unmount");
    }
    assert_eq!(fs::read(fx.p("deep/er/f")).expect("read"), b"2");
}

#[test]
fn a_process_inside_the_mount_sees_the_new_tree() {
    let fx = Fixture::new();
    fs::create_dir(fx.p("work")).expect("mkdir");
    fs::write(fx.p("work/state"), b"before").expect("write");
    let s1 = fx
        .mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    fs::write(fx.p("work/state"), b"after").expect("write");
    let s2 = fx
        .mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    fx.mount().checkout(s1.id, false).expect("checkout");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("cat state; echo; read go; cat state")
        .current_dir(fx.p("work"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("first line");
    assert_eq!(first.trim(), "before");
    fx.mount()
        .checkout(s2.id, false)
        .expect("checkout under a running process");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("signal");
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("rest");
    assert!(child.wait().expect("wait").success());
    assert_eq!(rest.trim(), "after");
}

fn snapshots_while_writers_run_stay_consistent(engine: Engine) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let fx = EngineFixture::new(engine);
    for t in 0..3 {
        fs::create_dir(fx.p(&format!("t{t}"))).expect("mkdir");
    }
    let stop = AtomicBool::new(false);
    let mut snaps = Vec::new();
    let mut failed = None;
    std::thread::scope(|s| {
        for t in 0..3 {
            let dir = fx.p(&format!("t{t}"));
            let stop = &stop;
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let f = dir.join(format!("f{}", i % 20));
                    fs::write(&f, format!("{t}:{i}").repeat(1 + (i % 50) as usize)).expect("write");
                    if i.is_multiple_of(7) {
                        let _ = fs::rename(&f, dir.join(format!("r{}", i % 5)));
                    }
                    if i.is_multiple_of(11) {
                        let mut h = OpenOptions::new()
                            .append(true)
                            .open(dir.join("log"))
                            .or_else(|_| File::create(dir.join("log")))
                            .expect("log");
                        h.write_all(b"line\n").expect("append");
                    }
                    i += 1;
                }
            });
        }
        for _ in 0..15 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            match fx.mount().snapshot(None, Default::default()) {
                Ok(s) => snaps.push(s),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Before any assertion: a panic here would wait for the writers forever.
        stop.store(true, Ordering::Relaxed);
    });
    if let Some(e) = failed {
        panic!("snapshot under load: {e}");
    }
    // Quiet now: the last snapshot is exactly the live tree.
    let last = fx
        .mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    let out = tempfile::tempdir().expect("tempdir");
    fx.repo
        .export(last.id, &out.path().join("e"))
        .expect("export");
    assert_eq!(super::tree(&out.path().join("e")), super::tree(&fx.path));
    // Every snapshot taken under load is whole.
    for s in &snaps {
        let dir = out.path().join(s.id.to_string());
        fx.repo.export(s.id, &dir).expect("export");
    }
    let fsck = fx.repo.fsck().expect("fsck");
    assert!(fsck.ok(), "{:?}", fsck.errors);
}
