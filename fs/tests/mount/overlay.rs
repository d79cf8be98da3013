//! The overlay engine: the same operation sequences through a fuse workspace and an
//! overlay workspace over the same snapshot give identical snapshot roots (through
//! snapshots and checkouts); a sandbox holding a slave bind of the mountpoint follows
//! checkouts; a remount finds the upperdir it left; the fallback is explicit.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use helios_fs::{Engine, EngineChoice, Engines, MountOptions, MountedWorkspace};
use helios_snapshot::{Repo, SnapshotId};
use proptest::prelude::*;

use super::tree;

/// A repo, its engines and mounted workspaces; dropping it unmounts them all.
struct Host {
    mounts: Vec<Box<dyn MountedWorkspace>>,
    engines: Engines,
    repo: Arc<Repo>,
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        Host::open(dir, &state)
    }

    /// A host over an existing state dir; mountpoints in a new dir under `parent`.
    fn new_at(parent: &Path, state: &Path) -> Host {
        let dir = tempfile::tempdir_in(parent).expect("tempdir");
        Host::open(dir, state)
    }

    fn open(dir: tempfile::TempDir, state: &Path) -> Host {
        let repo = Arc::new(Repo::open(state).expect("open repo"));
        let engines = Engines::new(repo.clone(), MountOptions::default());
        if let Some(why) = engines.overlay_unavailable() {
            panic!("the overlay engine must work here (root, overlayfs): {why}");
        }
        if let Some(why) = engines.lowers().native_unavailable() {
            panic!("native lowers must work here (Linux 6.18, overlayfs data-only layers): {why}");
        }
        Host {
            mounts: Vec::new(),
            engines,
            repo,
            dir,
        }
    }

    /// Mounts a new workspace over `from` with `engine`; returns its index.
    fn mount(&mut self, engine: Engine, from: Option<SnapshotId>) -> usize {
        let path = self.dir.path().join(format!("m{}", self.mounts.len()));
        fs::create_dir(&path).expect("mkdir mountpoint");
        let ws = self
            .repo
            .create_workspace(from, false, Default::default())
            .expect("workspace");
        let m = self
            .engines
            .mount(engine, ws.id(), &path)
            .expect("mount (needs root, /dev/fuse, overlayfs)");
        self.mounts.push(m);
        self.mounts.len() - 1
    }

    fn path(&self, i: usize) -> PathBuf {
        self.mounts[i].mountpoint().to_path_buf()
    }

    fn snapshot(&self, i: usize) -> helios_snapshot::Snapshot {
        self.mounts[i]
            .snapshot(None, Default::default())
            .expect("snapshot")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for m in self.mounts.drain(..).rev() {
            let _ = m.unmount();
        }
        self.engines.shutdown();
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write(usize, u16, Vec<u8>),
    Truncate(usize, u16),
    Mkdir(usize),
    Rmdir(usize),
    Unlink(usize),
    /// `rm -rf`, then often a new directory in its place (an opaque one over a lower).
    RmTree(usize),
    Move(usize, usize),
    Symlink(usize, usize),
    Link(usize, usize),
    Chmod(usize, u32),
    Chown(usize, u32),
    SetXattr(usize, u8),
    RemoveXattr(usize),
    /// Snapshot both, compare, go on.
    Snapshot,
}

const PATHS: &[&str] = &["a", "b", "a/x", "a/y", "b/x", "a/y/q", "c"];

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        4 => (p.clone(), 0u16..2000, prop::collection::vec(any::<u8>(), 1..64)).prop_map(|(a, o, d)| Op::Write(a, o, d)),
        1 => (p.clone(), 0u16..500).prop_map(|(a, s)| Op::Truncate(a, s)),
        2 => p.clone().prop_map(Op::Mkdir),
        1 => p.clone().prop_map(Op::Rmdir),
        2 => p.clone().prop_map(Op::Unlink),
        2 => p.clone().prop_map(Op::RmTree),
        2 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Move(a, b)),
        1 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Symlink(a, b)),
        1 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Link(a, b)),
        1 => (p.clone(), prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o4755])).prop_map(|(a, m)| Op::Chmod(a, m)),
        1 => (p.clone(), prop::sample::select(vec![0u32, 1000])).prop_map(|(a, u)| Op::Chown(a, u)),
        1 => (p.clone(), any::<u8>()).prop_map(|(a, v)| Op::SetXattr(a, v)),
        1 => p.clone().prop_map(Op::RemoveXattr),
        1 => Just(Op::Snapshot),
    ]
}

fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let p = |i: usize| root.join(PATHS[i]);
    let r = match op {
        Op::Write(i, off, data) => fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(p(*i))
            .and_then(|f| f.write_all_at(data, *off as u64)),
        Op::Truncate(i, size) => fs::OpenOptions::new()
            .write(true)
            .open(p(*i))
            .and_then(|f| f.set_len(*size as u64)),
        Op::Mkdir(i) => fs::create_dir(p(*i)),
        Op::Rmdir(i) => fs::remove_dir(p(*i)),
        Op::Unlink(i) => fs::remove_file(p(*i)),
        Op::RmTree(i) => match fs::symlink_metadata(p(*i)) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(p(*i)),
            _ => fs::remove_file(p(*i)),
        },
        Op::Move(a, b) => fs::rename(p(*a), p(*b)),
        Op::Symlink(a, b) => std::os::unix::fs::symlink(PATHS[*a], p(*b)),
        Op::Link(a, b) => fs::hard_link(p(*a), p(*b)),
        Op::Chmod(i, mode) => fs::set_permissions(p(*i), fs::Permissions::from_mode(*mode)),
        Op::Chown(i, uid) => std::os::unix::fs::lchown(p(*i), Some(*uid), Some(*uid)),
        Op::SetXattr(i, v) => xattr::set(p(*i), "user.k", &[*v]),
        Op::RemoveXattr(i) => xattr::remove(p(*i), "user.k"),
        Op::Snapshot => Ok(()),
    };
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// A move of one name of a file onto another name of the same file.
fn same_file_move(root: &Path, op: &Op) -> bool {
    let Op::Move(a, b) = op else { return false };
    let ino = |i: usize| {
        fs::symlink_metadata(root.join(PATHS[i]))
            .map(|m| m.ino())
            .ok()
    };
    a != b && ino(*a).is_some() && ino(*a) == ino(*b)
}

/// The base both workspaces start from: lower files and directories for the
/// operations to change, delete and move.
fn base(repo: &Repo) -> SnapshotId {
    let src = tempfile::tempdir().expect("tempdir");
    let s = src.path();
    fs::create_dir_all(s.join("a/y")).expect("mkdir");
    fs::write(s.join("a/x"), b"lower a/x").expect("write");
    fs::write(s.join("a/y/q"), b"lower a/y/q").expect("write");
    fs::write(s.join("b"), b"lower b").expect("write");
    xattr::set(s.join("b"), "user.k", b"lower").expect("xattr");
    repo.import(s, None).expect("import").id
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn both_engines_take_identical_snapshots(ops in prop::collection::vec(op(), 1..40)) {
        // Three workspaces: fuse, overlay over a FUSE view (over a delta after the
        // checkout), overlay over a native lower.
        let mut h = Host::new();
        let s0 = base(&h.repo);
        let f = h.mount(Engine::Fuse, Some(s0));
        let o = h.mount(Engine::Overlay, Some(s0));
        h.engines.warm(s0).expect("warm");
        let n = h.mount(Engine::Overlay, Some(s0));
        prop_assert_eq!(h.mounts[o].lower(), Some("view"));
        prop_assert_eq!(h.mounts[n].lower(), Some("native"));
        let (fp, op_, np) = (h.path(f), h.path(o), h.path(n));
        let mut snaps = Vec::new();
        for (i, step) in ops.iter().enumerate() {
            if same_file_move(&fp, step) {
                // Known difference: an overlay (index=off) answers ESTALE to a rename of
                // a hard link onto another name of the same file; POSIX says no-op.
                continue;
            }
            let rf = apply(&fp, step);
            let ro = apply(&op_, step);
            let rn = apply(&np, step);
            prop_assert_eq!(rf, ro, "step {} {:?}", i, step);
            prop_assert_eq!(rf, rn, "step {} {:?} (native lower)", i, step);
            if matches!(step, Op::Snapshot) {
                let (a, b, c) = (h.snapshot(f), h.snapshot(o), h.snapshot(n));
                prop_assert_eq!(a.root, b.root, "snapshot after step {} differs", i);
                prop_assert_eq!(a.root, c.root, "snapshot after step {} differs (native)", i);
                prop_assert!(!h.mounts[o].dirty(), "clean after a snapshot");
                prop_assert!(!h.mounts[n].dirty(), "clean after a snapshot");
                snaps.push((a.id, b.id, c.id));
            }
        }
        prop_assert_eq!(tree(&fp), tree(&op_));
        prop_assert_eq!(tree(&fp), tree(&np));
        let (a, b, c) = (h.snapshot(f), h.snapshot(o), h.snapshot(n));
        prop_assert_eq!(a.root, b.root, "final snapshot differs");
        prop_assert_eq!(a.root, c.root, "final snapshot differs (native)");
        // Back to an earlier snapshot in place (the third onto a native lower of it),
        // then more changes: still identical.
        if let Some((sf, so, sn)) = snaps.first().copied() {
            h.mounts[f].checkout(sf, true).expect("checkout fuse");
            h.mounts[o].checkout(so, true).expect("checkout overlay");
            // Onto a delta over the base's native lower (warmed above).
            prop_assert_eq!(h.mounts[o].lower(), Some("delta"));
            h.engines.warm(sn).expect("warm");
            h.mounts[n].checkout(sn, true).expect("checkout overlay (native)");
            prop_assert_eq!(h.mounts[n].lower(), Some("native"));
            prop_assert_eq!(tree(&fp), tree(&op_));
            prop_assert_eq!(tree(&fp), tree(&np));
            for step in ops.iter().rev().take(8).filter(|s| !same_file_move(&fp, s)) {
                let rf = apply(&fp, step);
                prop_assert_eq!(rf, apply(&op_, step));
                prop_assert_eq!(rf, apply(&np, step));
            }
            let (a, b, c) = (h.snapshot(f), h.snapshot(o), h.snapshot(n));
            prop_assert_eq!(a.root, b.root, "snapshot after a checkout differs");
            prop_assert_eq!(a.root, c.root, "snapshot after a checkout differs (native)");
        }
    }
}

/// Issue 7 item 2: successive snapshots of one overlay layer commit only what changed
/// since the last one, over it; also when entries the last snapshot saw vanish from the
/// upper (an upper-only file removed or moved away leaves no whiteout), a directory turns
/// opaque, or a directory is moved (a redirect). Each snapshot is checked against a fuse
/// workspace given the same operations; where only what changed is committed, its
/// count of changed paths (relative to the parent) is the fuse one's too. A whole
/// commit (over the lower layer) counts against the lower: those steps say `false`.
#[test]
fn successive_overlay_snapshots_match_fuse_ones() {
    let mut h = Host::new();
    let s0 = base(&h.repo);
    let f = h.mount(Engine::Fuse, Some(s0));
    let o = h.mount(Engine::Overlay, Some(s0));
    type Step = fn(&Path) -> std::io::Result<()>;
    let steps: &[(&str, bool, Step)] = &[
        ("new files and dirs", true, |m| {
            fs::create_dir_all(m.join("d/e"))?;
            fs::write(m.join("d/e/f"), b"f")?;
            fs::write(m.join("c"), b"c")?;
            fs::write(m.join("a/x"), b"changed lower file")
        }),
        ("one small change", true, |m| {
            fs::write(m.join("d/e/f"), b"f2")
        }),
        ("nothing", true, |_| Ok(())),
        ("upper-only entries vanish", false, |m| {
            fs::remove_file(m.join("c"))?;
            fs::remove_dir_all(m.join("d"))
        }),
        ("a move of an upper-only file", true, |m| {
            fs::write(m.join("g"), b"g")?;
            Ok(())
        }),
        ("the move", false, |m| {
            fs::rename(m.join("g"), m.join("a/g"))
        }),
        (
            "a lower directory removed, then made again (opaque)",
            false,
            |m| {
                fs::remove_dir_all(m.join("a/y"))?;
                fs::create_dir(m.join("a/y"))?;
                fs::write(m.join("a/y/new"), b"n")
            },
        ),
        ("a new file in the opaque directory", false, |m| {
            fs::write(m.join("a/y/new2"), b"n2")
        }),
        ("a lower directory moved (redirect)", false, |m| {
            fs::rename(m.join("a"), m.join("moved"))
        }),
        ("a new file in the moved directory", false, |m| {
            fs::write(m.join("moved/new3"), b"n3")
        }),
        ("a change below the moved one", true, |m| {
            fs::write(m.join("moved/x"), b"x3")
        }),
        ("attributes only", true, |m| {
            fs::set_permissions(m.join("moved/x"), fs::Permissions::from_mode(0o600))?;
            xattr::set(m.join("b"), "user.k", b"v2")
        }),
    ];
    for (what, exact, step) in steps {
        step(&h.path(f)).expect("fuse step");
        step(&h.path(o)).expect("overlay step");
        let (a, b) = (h.snapshot(f), h.snapshot(o));
        assert_eq!(a.root, b.root, "after {what:?}");
        if *exact {
            assert_eq!(
                a.metrics.changed_paths, b.metrics.changed_paths,
                "changed paths after {what:?}"
            );
        }
        assert!(!h.mounts[o].dirty(), "clean after {what:?}");
    }
    assert_eq!(tree(&h.path(f)), tree(&h.path(o)));
}

#[test]
fn overlay_snapshot_checkout_dirty_and_remount() {
    let mut h = Host::new();
    let s0 = base(&h.repo);
    let o = h.mount(Engine::Overlay, Some(s0));
    let m = h.path(o);
    assert!(!h.mounts[o].dirty(), "a fresh fork is clean");
    assert_eq!(
        fs::read(m.join("a/y/q")).expect("lower read"),
        b"lower a/y/q"
    );
    fs::write(m.join("new"), b"one").expect("write");
    assert!(h.mounts[o].dirty());
    let s1 = h.snapshot(o);
    assert!(!h.mounts[o].dirty());
    fs::write(m.join("new"), b"two").expect("write");
    let e = h.mounts[o].checkout(s0, false).expect_err("dirty");
    assert!(e.to_string().contains("uncommitted"), "{e}");
    h.mounts[o].checkout(s0, true).expect("checkout discard");
    assert!(!m.join("new").exists(), "checkout shows the old snapshot");
    h.mounts[o].checkout(s1.id, false).expect("checkout");
    assert_eq!(fs::read(m.join("new")).expect("read"), b"one");
    fs::write(m.join("later"), b"kept across a remount").expect("write");
    // Unmount and mount again, as a daemon restart does: the upperdir is the state.
    let id = h.repo.workspaces().expect("list")[0].id;
    let mounted = h.mounts.pop().expect("mounted");
    mounted.unmount().expect("unmount");
    let again = h
        .engines
        .mount(Engine::Overlay, id, &m)
        .expect("mount again");
    assert_eq!(
        fs::read(m.join("later")).expect("read"),
        b"kept across a remount"
    );
    assert!(again.dirty());
    let s2 = again.snapshot(None, Default::default()).expect("snapshot");
    assert_eq!(s2.parent, Some(s1.id));
    assert!(!again.dirty());
    h.mounts.push(again);
    // Pruning what a mounted lower layer shows is refused.
    let e = h.repo.prune(s1.id, false).expect_err("in use");
    assert!(e.to_string().contains("in use"), "{e}");
}

#[test]
fn a_sandbox_with_a_slave_bind_follows_checkouts() {
    let mut h = Host::new();
    let src = tempfile::tempdir().expect("tempdir");
    let mut snaps = Vec::new();
    for word in ["one", "two", "three"] {
        fs::write(src.path().join("f"), word).expect("write");
        snaps.push(h.repo.import(src.path(), None).expect("import").id);
    }
    let o = h.mount(Engine::Overlay, Some(snaps[0]));
    let m = h.path(o);
    let bind = h.dir.path().join("sandbox-view");
    fs::create_dir(&bind).expect("mkdir");
    let stop = h.dir.path().join("stop");
    let script = format!(
        "mount --rbind {m} {b} && mount --make-rslave {b} && echo ready && \
         while [ ! -e {s} ]; do cat {b}/f; echo; sleep 0.02; done",
        m = m.display(),
        b = bind.display(),
        s = stop.display()
    );
    let mut child = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "slave", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("unshare");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut wait_for = |want: &str| {
        for line in lines.by_ref() {
            if line.expect("line") == want {
                return;
            }
        }
        panic!("the sandbox never saw {want:?}");
    };
    wait_for("ready");
    wait_for("one");
    h.mounts[o].checkout(snaps[1], true).expect("checkout");
    assert_eq!(fs::read(m.join("f")).expect("read"), b"two");
    wait_for("two");
    h.mounts[o].checkout(snaps[2], true).expect("checkout");
    wait_for("three");
    h.mounts[o].checkout(snaps[0], true).expect("checkout");
    wait_for("one");
    fs::write(&stop, b"").expect("stop");
    drop(lines);
    let _ = child.wait();
}

#[test]
fn the_fallback_is_explicit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Arc::new(Repo::open(&dir.path().join("state")).expect("open repo"));
    let engines = Engines::without_overlay(repo, MountOptions::default());
    let why = engines.overlay_unavailable().expect("switched off");
    assert!(why.contains("switched off"), "{why}");
    let e = engines
        .resolve(EngineChoice::Exactly(Engine::Overlay))
        .expect_err("refused");
    assert!(e.to_string().contains("cannot work here"), "{e}");
    let (engine, reason) = engines.resolve(EngineChoice::Auto).expect("auto");
    assert_eq!(engine, Engine::Fuse);
    assert!(reason.contains("overlay unavailable"), "{reason}");
}

#[test]
fn an_empty_fork_remounts_over_the_empty_lower() {
    let mut h = Host::new();
    let o = h.mount(Engine::Overlay, None);
    let m = h.path(o);
    fs::write(m.join("f"), b"first").expect("write");
    let s1 = h.snapshot(o);
    fs::write(m.join("g"), b"second").expect("write");
    let id = h.repo.workspaces().expect("list")[0].id;
    h.mounts.pop().expect("mounted").unmount().expect("unmount");
    // The record now stands on s1 while its layer stands on the empty tree.
    let again = h
        .engines
        .mount(Engine::Overlay, id, &m)
        .expect("mount again");
    assert_eq!(fs::read(m.join("f")).expect("read"), b"first");
    assert_eq!(fs::read(m.join("g")).expect("read"), b"second");
    let s2 = again.snapshot(None, Default::default()).expect("snapshot");
    assert_eq!(s2.parent, Some(s1.id));
    let names: Vec<_> = h
        .repo
        .diff(s1.id, s2.id)
        .expect("diff")
        .into_iter()
        .map(|c| c.path)
        .collect();
    assert_eq!(names, ["g"]);
    h.mounts.push(again);
}

/// Every path with its type, permission bits, owner, mtime, size, content hash or
/// target, and extended attributes (what a snapshot keeps of it).
fn full_tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let m = fs::symlink_metadata(&p).expect("lstat");
            let ft = m.file_type();
            let what = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("-> {}", fs::read_link(&p).expect("readlink").display())
            } else if ft.is_file() {
                let data = fs::read(&p).expect("read");
                format!("{} {}", data.len(), blake3::hash(&data).to_hex())
            } else {
                format!("special {:o}", m.mode() & 0o170000)
            };
            let mut xattrs: Vec<String> = xattr::list(&p)
                .expect("listxattr")
                .map(|n| {
                    let v = xattr::get(&p, &n).ok().flatten().unwrap_or_default();
                    format!("{}={:?}", n.to_string_lossy(), v)
                })
                .collect();
            xattrs.sort();
            out.push(format!(
                "{}|{}|{:o}|{}:{}|{}|{:?}",
                p.strip_prefix(root).expect("prefix").display(),
                what,
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                if ft.is_symlink() {
                    0
                } else {
                    m.mtime_nsec() + m.mtime() * 1_000_000_000
                },
                xattrs
            ));
        }
    }
    out.sort();
    out
}

/// A tree with what a native lower must carry: empty, small and chunked files, modes
/// with set-id bits, owners, mtimes, xattrs (user, security.capability), symlinks and a
/// named pipe.
fn rich_base(repo: &Repo) -> SnapshotId {
    let src = tempfile::tempdir().expect("tempdir");
    let s = src.path();
    fs::create_dir_all(s.join("src/deep/er")).expect("mkdir");
    fs::create_dir_all(s.join("src/many")).expect("mkdir");
    for i in 0..1200 {
        fs::write(s.join(format!("src/many/m{i}")), format!("{i}")).expect("write");
    }
    fs::write(s.join("empty"), b"").expect("write");
    fs::write(s.join("src/small"), b"small file").expect("write");
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(s.join("src/deep/big"), &big).expect("write");
    fs::write(s.join("src/deep/er/tool"), b"#!/bin/sh\necho hi\n").expect("write");
    fs::set_permissions(
        s.join("src/deep/er/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .expect("chmod");
    std::os::unix::fs::chown(s.join("src/small"), Some(1000), Some(100)).expect("chown");
    xattr::set(s.join("src/small"), "user.note", b"kept").expect("xattr");
    // security.capability: cap_net_bind_service+ep, version 2.
    let cap = [0, 0, 0, 2, 0, 4, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    xattr::set(s.join("src/deep/er/tool"), "security.capability", &cap).expect("xattr");
    std::os::unix::fs::symlink("deep/big", s.join("src/link")).expect("symlink");
    nix::unistd::mkfifo(
        &s.join("src/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .expect("mkfifo");
    fs::set_permissions(s.join("src/deep"), fs::Permissions::from_mode(0o750)).expect("chmod");
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 123_456_789);
    fs::File::options()
        .write(true)
        .open(s.join("src/small"))
        .and_then(|f| f.set_modified(t))
        .expect("mtime");
    repo.import(s, None).expect("import").id
}

#[test]
fn hot_snapshots_get_a_native_lower_the_same_as_their_view() {
    let mut h = Host::new();
    let root = rich_base(&h.repo);
    h.engines.warm(root).expect("warm");
    // A snapshot too far from its native ancestor for a delta (each of 1,200 files
    // changed) is served by its view until it is hot.
    let f = h.mount(Engine::Fuse, Some(root));
    for i in 0..1200 {
        fs::write(h.path(f).join(format!("src/many/m{i}")), format!("v{i}")).expect("write");
    }
    let s0 = h.snapshot(f).id;
    let v = h.mount(Engine::Overlay, Some(s0));
    assert_eq!(
        h.mounts[v].lower(),
        Some("view"),
        "the first fork gets the view"
    );
    // A second fork while the view has served little: no build.
    let w = h.mount(Engine::Overlay, Some(s0));
    assert_eq!(h.mounts[w].lower(), Some("view"));
    assert!(
        !h.engines
            .lowers()
            .wait_native(s0, std::time::Duration::from_millis(200))
    );
    // The workspaces read much of the tree through the view; the next fork starts a
    // build in the background.
    for i in 0..1200 {
        let got = fs::read(h.path(v).join(format!("src/many/m{i}"))).expect("read");
        assert_eq!(got, format!("v{i}").as_bytes());
    }
    let w2 = h.mount(Engine::Overlay, Some(s0));
    assert_eq!(h.mounts[w2].lower(), Some("view"));
    assert!(
        h.engines
            .lowers()
            .wait_native(s0, std::time::Duration::from_secs(60)),
        "a native lower gets built for a snapshot forked twice"
    );
    let n = h.mount(Engine::Overlay, Some(s0));
    assert_eq!(h.mounts[n].lower(), Some("native"));
    let (vp, np) = (h.path(v), h.path(n));
    assert_eq!(full_tree(&vp), full_tree(&np), "native lower = view");
    // The same changes over both give the same snapshot; the shared cache file is
    // never written through.
    for m in [&vp, &np] {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.join("src/deep/big"))
            .expect("open");
        std::io::Write::write_all(&mut f, b"appended").expect("append");
        fs::set_permissions(m.join("src/small"), fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::rename(m.join("src/deep"), m.join("moved")).expect("rename dir");
        fs::remove_file(m.join("empty")).expect("unlink");
        fs::write(m.join("moved/er/new"), b"new").expect("write");
    }
    let no_times = |p: &Path| {
        full_tree(p)
            .into_iter()
            .map(|l| {
                let mut w: Vec<&str> = l.split('|').collect();
                w.remove(4); // the mtime: the two workspaces were changed one after the other
                w.join("|")
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(no_times(&vp), no_times(&np));
    let (a, b) = (h.snapshot(v), h.snapshot(n));
    assert_eq!(
        a.root, b.root,
        "the same snapshot over a view and a native lower"
    );
    let w_path = h.path(w);
    assert_eq!(
        fs::read(w_path.join("src/deep/big")).expect("read").len(),
        3_000_000
    );
    let again = h.mount(Engine::Overlay, Some(s0));
    assert_eq!(h.mounts[again].lower(), Some("native"));
    assert_eq!(full_tree(&w_path), full_tree(&h.path(again)));
}

/// The same changes through a fuse workspace and an overlay one.
fn change(m: &Path, round: u32) {
    let r = |p: &str| m.join(p);
    match round {
        0 => {
            fs::write(r("src/small"), b"changed small").expect("write");
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(r("src/deep/big"))
                .expect("open");
            std::io::Write::write_all(&mut f, b"appended").expect("append");
            fs::set_permissions(r("src/many/m7"), fs::Permissions::from_mode(0o600))
                .expect("chmod");
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_234_567_890);
            fs::File::options()
                .write(true)
                .open(r("src/many/m8"))
                .and_then(|f| f.set_modified(t))
                .expect("an mtime alone");
            fs::remove_file(r("empty")).expect("unlink");
            fs::remove_dir_all(r("src/deep/er")).expect("rm -rf");
            fs::rename(r("src/deep"), r("moved")).expect("rename a lower dir");
            fs::create_dir_all(r("new/dir")).expect("mkdir");
            fs::write(r("new/dir/f"), b"new").expect("write");
            xattr::set(r("src/many/m9"), "user.k", b"v").expect("xattr");
            std::os::unix::fs::symlink("../moved/big", r("src/link2")).expect("symlink");
        }
        1 => {
            fs::remove_dir_all(r("new")).expect("rm -rf a dir the delta added");
            fs::create_dir(r("src/deep")).expect("a dir where one was moved away");
            fs::write(r("src/deep/back"), b"back").expect("write");
            fs::write(r("empty"), b"no longer").expect("a file where one was deleted");
            fs::remove_file(r("src/many/m10")).expect("unlink");
            xattr::remove(r("src/small"), "user.note").expect("removexattr");
        }
        _ => {
            fs::write(r("src/many/m11"), vec![b'x'; 200_000]).expect("a large file");
            fs::remove_file(r("empty")).expect("unlink");
        }
    }
}

#[test]
fn descendants_of_a_native_lower_get_deltas_the_same_as_their_views() {
    let mut h = Host::new();
    let root = rich_base(&h.repo);
    let first = h.mount(Engine::Overlay, Some(root));
    assert_eq!(
        h.mounts[first].lower(),
        Some("view"),
        "an import's first fork: its view while its native lower is built"
    );
    assert!(
        h.engines
            .lowers()
            .wait_native(root, std::time::Duration::from_secs(60)),
        "an import gets a native lower at its first fork"
    );
    let w = h.mount(Engine::Overlay, Some(root));
    let f = h.mount(Engine::Fuse, Some(root));
    assert_eq!(h.mounts[w].lower(), Some("native"));
    let mut prev = None;
    for round in 0..3 {
        change(&h.path(w), round);
        change(&h.path(f), round);
        let (so, sf) = (h.snapshot(w), h.snapshot(f));
        assert_eq!(so.root, sf.root, "round {round}");
        // A fork of the new snapshot: a delta over the import's native lower, read as
        // the fuse engine reads the snapshot.
        let d = h.mount(Engine::Overlay, Some(so.id));
        let v = h.mount(Engine::Fuse, Some(so.id));
        assert_eq!(h.mounts[d].lower(), Some("delta"), "round {round}");
        assert_same(&full_tree(&h.path(d)), &full_tree(&h.path(v)));
        // The same changes over the delta give the same snapshot.
        for m in [h.path(d), h.path(v)] {
            fs::write(m.join("src/many/m11"), vec![b'y'; 100_000]).expect("a large file");
            fs::remove_file(m.join(format!("src/many/m{}", 20 + round))).expect("unlink");
            fs::create_dir(m.join(format!("src/many/d{round}"))).expect("mkdir");
        }
        assert_eq!(h.snapshot(d).root, h.snapshot(v).root, "round {round}");
        prev = Some((so.id, full_tree(&h.path(w))));
    }
    // A checkout in place back onto a delta.
    let (s, want) = prev.expect("snapshots");
    h.mounts[first].checkout(s, true).expect("checkout");
    assert_eq!(h.mounts[first].lower(), Some("delta"));
    assert_same(&full_tree(&h.path(first)), &want);
}

/// Equal listings, or a panic naming the lines that differ.
fn assert_same(got: &[String], want: &[String]) {
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|l| !b.contains(l)).cloned().collect()
    };
    assert!(
        got == want,
        "only in the first: {:?}\nonly in the second: {:?}",
        only(got, want),
        only(want, got)
    );
}

#[test]
fn a_restart_reuses_native_lowers_after_checking_their_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (s0, before) = {
        let mut h = Host::new_at(dir.path(), &state);
        let s0 = rich_base(&h.repo);
        h.engines.warm(s0).expect("warm");
        let n = h.mount(Engine::Overlay, Some(s0));
        assert_eq!(h.mounts[n].lower(), Some("native"));
        (s0, full_tree(&h.path(n)))
    };
    // Damage a cache file the native lower names (same length, other bytes): the next
    // daemon must not serve it.
    let hash = {
        let repo = Repo::open(&state).expect("open");
        let small = repo
            .entry_at(s0, "src/deep/big")
            .expect("entry")
            .expect("exists");
        let helios_snapshot::tree::EntryKind::File { content, .. } = small else {
            panic!("a file")
        };
        content.hash.to_string()
    };
    let cached = state.join("cache").join(&hash[..2]).join(&hash);
    fs::set_permissions(&cached, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::write(&cached, vec![b'!'; 3_000_000]).expect("damage");
    let mut h = Host::new_at(dir.path(), &state);
    let first = h.mount(Engine::Overlay, Some(s0));
    assert_eq!(
        h.mounts[first].lower(),
        Some("view"),
        "unchecked until checked"
    );
    assert!(
        h.engines
            .lowers()
            .wait_native(s0, std::time::Duration::from_secs(60))
    );
    let n = h.mount(Engine::Overlay, Some(s0));
    assert_eq!(
        h.mounts[n].lower(),
        Some("native"),
        "reused after the check"
    );
    assert_eq!(
        full_tree(&h.path(n)),
        before,
        "the damaged cache file was rebuilt"
    );
}

#[test]
fn native_lowers_can_be_switched_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Arc::new(Repo::open(&dir.path().join("state")).expect("open repo"));
    let engines = helios_fs::Engines::without_overlay(repo.clone(), MountOptions::default());
    let why = engines
        .lowers()
        .native_unavailable()
        .expect("off with the overlay engine");
    assert!(why.contains("overlay engine is off"), "{why}");
    // Warming still fills the file cache.
    let s0 = rich_base(&repo);
    let w = engines.warm(s0).expect("warm");
    assert!(!w.native);
    assert_eq!(w.files, 3 + 1200);
    let many: u64 = (0..1200).map(|i: u32| i.to_string().len() as u64).sum();
    assert_eq!(w.bytes, 3_000_000 + 10 + 18 + many);
}
