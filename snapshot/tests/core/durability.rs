//! Issue 8: nothing acknowledged is lost. A failed commit and its retry, hard links
//! through checkout, snapshot and restart, the journal that makes fsync durable across a
//! crash, and extended attributes through import and export.

use std::sync::Arc;

use helios_snapshot::store::{Backend, Fault, FaultyBackend, MemBackend};
use helios_snapshot::{Kind, Name, Repo, SnapshotId, Workspace, XattrMode};

use super::contents;

fn n(s: &str) -> Name {
    Name::try_from(s).expect("valid name")
}

fn open(dir: &std::path::Path, backend: Arc<dyn Backend>) -> Repo {
    Repo::open_with(dir, backend, 64 << 20).expect("open repo")
}

/// Reads everything a snapshot holds through a fresh read-only workspace.
fn snapshot_contents(repo: &Repo, id: SnapshotId) -> Vec<(String, Option<Vec<u8>>)> {
    let ws = repo
        .create_workspace(Some(id), true, Default::default())
        .expect("open snapshot");
    let out = contents(&ws);
    repo.delete_workspace(ws.id()).expect("drop reader");
    out
}

/// The disk-full retry of issue 8, for both one-time faults: the failed commit leaves
/// nothing behind to deduplicate against, the retry stores everything, and a cold reopen
/// after a power cut reads it all back.
#[test]
fn a_snapshot_retried_after_a_failed_write_keeps_its_data() {
    for fault in [Fault::NoSpaceOnce, Fault::SyncFailsOnce] {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = MemBackend::new();
        // Count the writes of the set-up to fail the snapshot's own commit.
        let probe = Arc::new(FaultyBackend::new(inner.clone(), u64::MAX, fault));
        let (repo, ws) = {
            let repo = open(dir.path(), probe.clone());
            let ws = repo
                .create_workspace(None, false, Default::default())
                .expect("create");
            (repo, ws)
        };
        ws.mkdir_path("d").expect("mkdir");
        ws.write_file("d/small", b"small file").expect("write");
        // Large enough to be chunked: chunks, a chunk list and two directories.
        let big: Vec<u8> = (0..700_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        ws.write_file("A", &big).expect("write");
        let s1 = ws.snapshot(None, Default::default()).expect("snapshot");
        ws.write_file("d/small", b"changed").expect("write");
        let big2: Vec<u8> = big.iter().map(|b| b ^ 0x5a).collect();
        ws.write_file("A", &big2).expect("write");
        drop(ws);
        drop(repo);

        // The same state through a backend that fails the next commit once.
        let faulty = Arc::new(FaultyBackend::new(inner.clone(), 0, fault));
        let repo = open(dir.path(), faulty.clone());
        let ws = repo
            .open_workspace(helios_snapshot::WorkspaceId(1))
            .expect("reopen workspace");
        // The workspace came back at s1 (no sync, no save): write the change again.
        ws.write_file("d/small", b"changed").expect("write");
        ws.write_file("A", &big2).expect("write");
        let want = contents(&ws);
        let err = ws
            .snapshot(None, Default::default())
            .expect_err("the write fails once");
        assert_eq!(
            faulty.injected.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{fault:?}: {err}"
        );
        assert!(
            ws.dirty(),
            "{fault:?}: a failed snapshot leaves the changes pending"
        );
        let s2 = ws
            .snapshot(None, Default::default())
            .expect("the retry succeeds");
        if fault == Fault::NoSpaceOnce {
            // Nothing of the failed batch was written: the retry stores it all. (After a
            // failed sync the batch is there, unsynced, and the retry's sync covers it.)
            assert!(
                s2.metrics.new_objects >= 3,
                "{fault:?}: the retry stored the data again: {:?}",
                s2.metrics
            );
        }
        assert!(
            s2.metrics.changed_paths >= 2,
            "{fault:?}: the retry counts against the old base: {:?}",
            s2.metrics
        );
        assert_eq!(contents(&ws), want);
        drop(ws);
        drop(repo);

        // Power cut, then a cold reopen: both snapshots whole, fsck clean.
        inner.power_cut();
        let repo = open(dir.path(), Arc::new(inner.clone()));
        assert_eq!(snapshot_contents(&repo, s2.id), want, "{fault:?}");
        let first = snapshot_contents(&repo, s1.id);
        assert_eq!(first.len(), want.len(), "{fault:?}");
        let fsck = repo.fsck().expect("fsck");
        assert!(fsck.ok(), "{fault:?}: {:?}", fsck.errors);
    }
}

/// Issue 8: `ln D/b D/c`, then a checkout made D unreadable (the reused inode of `b` was
/// freed as the orphan `c`).
#[test]
fn hard_links_survive_checkout_snapshot_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = MemBackend::new();
    let repo = open(dir.path(), Arc::new(backend.clone()));
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    ws.mkdir_path("D").expect("mkdir");
    ws.write_file("D/b", b"hi").expect("write");
    let s1 = ws.snapshot(None, Default::default()).expect("snapshot");
    let d = ws.resolve("D").expect("D");
    let b = ws.resolve("D/b").expect("b");
    ws.link(b, d, &n("c")).expect("link");
    ws.checkout(s1.id, true).expect("checkout");
    let names: Vec<String> = ws
        .readdir(ws.resolve("D").expect("D"))
        .expect("D is readable after the checkout")
        .into_iter()
        .map(|e| e.name.to_string())
        .collect();
    assert_eq!(names, ["b"]);
    assert_eq!(ws.read_file("D/b").expect("read"), b"hi");
    assert_eq!(
        ws.getattr(ws.resolve("D/b").expect("b"))
            .expect("stat")
            .nlink,
        1
    );

    // Links across a snapshot, a checkout back and forth, and two snapshots of the same
    // identical files (both old names pointed at one reused inode).
    let b = ws.resolve("D/b").expect("b");
    let d = ws.resolve("D").expect("D");
    ws.link(b, d, &n("c")).expect("link");
    let e = ws.mkdir_path("E").expect("mkdir");
    ws.link(b, e, &n("x")).expect("link across directories");
    let s2 = ws.snapshot(None, Default::default()).expect("snapshot");
    let want = contents(&ws);
    ws.checkout(s1.id, true).expect("checkout s1");
    assert_eq!(contents(&ws), snapshot_contents(&repo, s1.id));
    ws.checkout(s2.id, true).expect("checkout s2");
    assert_eq!(contents(&ws), want);
    for p in ["D/b", "D/c", "E/x"] {
        assert_eq!(ws.read_file(p).expect(p), b"hi", "{p}");
    }
    let fsck = repo.fsck().expect("fsck");
    assert!(fsck.ok(), "{:?}", fsck.errors);

    // A link made after the snapshot, then a clean restart.
    let b = ws.resolve("D/b").expect("b");
    ws.link(b, ws.resolve("E").expect("E"), &n("y"))
        .expect("link");
    let want = contents(&ws);
    let id = ws.id();
    repo.close().expect("close");
    drop(ws);
    drop(repo);
    let repo = open(dir.path(), Arc::new(backend));
    let ws = repo.open_workspace(id).expect("reopen");
    assert_eq!(contents(&ws), want);
    ws.checkout(s1.id, true).expect("checkout after restart");
    assert_eq!(ws.read_file("D/b").expect("read"), b"hi");
}

/// What a workspace synced survives a crash (the repo dropped without `close`, as a
/// SIGKILL leaves it): names, data, attributes, hard links, renames and unlinks.
#[test]
fn a_sync_makes_uncommitted_changes_survive_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = MemBackend::new();
    let repo = open(dir.path(), Arc::new(backend.clone()));
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    ws.mkdir_path("src").expect("mkdir");
    ws.write_file("src/a", b"committed a").expect("write");
    ws.write_file("gone", b"removed later").expect("write");
    ws.snapshot(None, Default::default()).expect("snapshot");

    ws.write_file("src/a", b"synced a").expect("write");
    ws.mkdir_path("src/deep").expect("mkdir");
    ws.write_file("src/deep/new", b"new file").expect("write");
    let a = ws.resolve("src/a").expect("a");
    ws.link(a, ws.resolve("src/deep").expect("deep"), &n("link"))
        .expect("link");
    ws.setxattr(a, b"user.k", b"v", XattrMode::Set)
        .expect("xattr");
    let (root, gone) = (ws.resolve("").expect("root"), n("gone"));
    ws.unlink(root, &gone).expect("unlink");
    ws.rename(root, &n("src"), root, &n("renamed"), Default::default())
        .expect("rename");
    ws.sync().expect("sync");
    let synced = contents(&ws);
    // An atomic save (write a temporary, rename it over) after the sync, without one.
    ws.write_file("tmp", b"replacement").expect("write");
    ws.rename(
        root,
        &n("tmp"),
        ws.resolve("renamed").expect("dir"),
        &n("a"),
        Default::default(),
    )
    .expect("rename over");
    let id = ws.id();
    drop(ws);
    drop(repo); // crash: no save

    let repo = open(dir.path(), Arc::new(backend.clone()));
    let ws = repo.open_workspace(id).expect("reopen");
    assert!(ws.dirty());
    let got = contents(&ws);
    // The names are those of the sync; the data of `renamed/a` may be the synced content
    // or what replaced it, never anything else.
    let names = |c: &[(String, Option<Vec<u8>>)]| -> Vec<String> {
        c.iter().map(|(p, _)| p.clone()).collect()
    };
    assert_eq!(names(&got), names(&synced));
    for (path, data) in &got {
        let want = synced.iter().find(|(p, _)| p == path).map(|(_, d)| d);
        if path == "renamed/a" || path == "renamed/deep/link" {
            assert!(
                data.as_deref() == Some(b"synced a") || data.as_deref() == Some(b"replacement"),
                "{path}: {data:?}"
            );
        } else {
            assert_eq!(Some(data), want, "{path}");
        }
    }
    let a = ws.resolve("renamed/deep/link").expect("link");
    assert_eq!(ws.getxattr(a, b"user.k").expect("xattr"), b"v");
    // The hard link is one file with two names again.
    assert_eq!(ws.getattr(a).expect("stat").nlink, 2);
    // It commits like any change, and the journal is empty after that.
    let s = ws.snapshot(None, Default::default()).expect("snapshot");
    assert_eq!(snapshot_contents(&repo, s.id), got);
    let fsck = repo.fsck().expect("fsck");
    assert!(fsck.ok(), "{:?}", fsck.errors);
    drop(ws);
    drop(repo);
    let repo = open(dir.path(), Arc::new(backend));
    let ws = repo.open_workspace(id).expect("reopen");
    assert!(!ws.dirty(), "the snapshot cleared the journal");
    assert_eq!(contents(&ws), got);
}

/// Without a sync a crash may lose uncommitted work, but never more than that, and a
/// later sync replaces what an earlier one recorded.
#[test]
fn without_a_sync_a_crash_comes_back_at_the_last_sync_or_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = MemBackend::new();
    let repo = open(dir.path(), Arc::new(backend.clone()));
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    ws.write_file("kept", b"snapshotted").expect("write");
    let s = ws.snapshot(None, Default::default()).expect("snapshot");
    ws.write_file("one", b"1").expect("write");
    ws.sync().expect("sync");
    ws.mkdir_path("two").expect("mkdir");
    ws.sync().expect("sync again");
    let synced = contents(&ws);
    ws.write_file("three", b"not synced").expect("write");
    let id = ws.id();
    drop(ws);
    drop(repo);
    let repo = open(dir.path(), Arc::new(backend.clone()));
    let ws = repo.open_workspace(id).expect("reopen");
    assert_eq!(contents(&ws), synced);
    // A checkout with discard empties the journal: a crash then comes back at it.
    ws.checkout(s.id, true).expect("checkout");
    drop(ws);
    drop(repo);
    let repo = open(dir.path(), Arc::new(backend));
    let ws = repo.open_workspace(id).expect("reopen");
    assert_eq!(contents(&ws), snapshot_contents(&repo, s.id));
    assert_eq!(
        ws.walk().expect("walk"),
        vec![("kept".to_string(), Kind::File)]
    );
}

/// A failed sync reports the error and loses nothing: the next one writes it all.
#[test]
fn a_failed_sync_is_retried_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = MemBackend::new();
    let faulty = Arc::new(FaultyBackend::new(
        inner.clone(),
        u64::MAX,
        Fault::NoSpaceOnce,
    ));
    let repo = open(dir.path(), faulty.clone());
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    ws.mkdir_path("d").expect("mkdir");
    ws.write_file("d/f", b"data").expect("write");
    drop(ws);
    drop(repo);
    let faulty = Arc::new(FaultyBackend::new(inner.clone(), 0, Fault::NoSpaceOnce));
    let repo = open(dir.path(), faulty);
    let ws = repo
        .open_workspace(helios_snapshot::WorkspaceId(1))
        .expect("reopen");
    ws.mkdir_path("d").expect("mkdir");
    ws.write_file("d/f", b"data").expect("write");
    ws.sync().expect_err("the disk is full once");
    ws.sync().expect("the retry writes everything");
    let want = contents(&ws);
    drop(ws);
    drop(repo);
    inner.power_cut();
    let repo = open(dir.path(), Arc::new(inner));
    let ws = repo
        .open_workspace(helios_snapshot::WorkspaceId(1))
        .expect("reopen");
    assert_eq!(contents(&ws), want);
}

fn user_xattrs_supported(dir: &std::path::Path) -> bool {
    let p = dir.join(".probe");
    std::fs::write(&p, b"").expect("probe");
    let ok = xattr::set(&p, "user.probe", b"1").is_ok();
    let _ = std::fs::remove_file(&p);
    ok
}

/// Issue 8: import and export dropped extended attributes. As root this covers
/// `trusted.*`, `security.capability` and a POSIX ACL too.
#[test]
fn import_and_export_keep_extended_attributes() {
    let src = tempfile::tempdir().expect("tempdir");
    assert!(
        user_xattrs_supported(src.path()),
        "the test directory's filesystem must support user xattrs"
    );
    let root = nix::unistd::geteuid().is_root();
    let f = src.path().join("tool");
    std::fs::write(&f, b"#!/bin/sh\n").expect("write");
    std::fs::create_dir(src.path().join("dir")).expect("mkdir");
    xattr::set(&f, "user.origin", b"image layer 3").expect("user xattr");
    xattr::set(src.path().join("dir"), "user.dir", b"d").expect("user xattr on a dir");
    // vfs_cap_data revision 2: cap_net_bind_service (10), effective.
    let mut cap = Vec::new();
    for v in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        cap.extend_from_slice(&v.to_le_bytes());
    }
    // An extended access ACL: user::rw-, user:1000:r--, group::r--, mask::r--, other::r--.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 4, 1000),
        (0x04, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    let mut want: Vec<(&str, Vec<u8>)> = vec![("user.origin", b"image layer 3".to_vec())];
    if root {
        xattr::set(&f, "trusted.overlay.x", b"t").expect("trusted xattr as root");
        xattr::set(&f, "security.capability", &cap).expect("file capability as root");
        xattr::set(&f, "system.posix_acl_access", &acl).expect("ACL");
        want.push(("trusted.overlay.x", b"t".to_vec()));
        want.push(("security.capability", cap.clone()));
        want.push(("system.posix_acl_access", acl.clone()));
    }
    want.sort();

    let dir = tempfile::tempdir().expect("tempdir");
    let repo = open(dir.path(), Arc::new(MemBackend::new()));
    let s = repo.import(src.path(), None).expect("import");
    let ws: Arc<Workspace> = repo
        .create_workspace(Some(s.id), false, Default::default())
        .expect("workspace");
    let ino = ws.resolve("tool").expect("tool");
    for (k, v) in &want {
        assert_eq!(
            &ws.getxattr(ino, k.as_bytes()).expect(k),
            v,
            "{k} in the workspace"
        );
    }
    let dino = ws.resolve("dir").expect("dir");
    assert_eq!(ws.getxattr(dino, b"user.dir").expect("dir xattr"), b"d");

    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join("export");
    repo.export(s.id, &target).expect("export");
    let t = target.join("tool");
    let mut got: Vec<(String, Vec<u8>)> = xattr::list(&t)
        .expect("list")
        .map(|k| {
            let v = xattr::get(&t, &k).expect("get").expect("present");
            (k.to_string_lossy().into_owned(), v)
        })
        .collect();
    got.sort();
    let want: Vec<(String, Vec<u8>)> = want.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(got, want, "xattrs of the exported file");
    assert_eq!(
        xattr::get(target.join("dir"), "user.dir").expect("get"),
        Some(b"d".to_vec())
    );
    // A workspace change to an xattr goes through a snapshot and its export too.
    ws.setxattr(ino, b"user.origin", b"edited", XattrMode::Replace)
        .expect("setxattr");
    let s2 = ws.snapshot(None, Default::default()).expect("snapshot");
    let target2 = out.path().join("export2");
    repo.export(s2.id, &target2).expect("export");
    assert_eq!(
        xattr::get(target2.join("tool"), "user.origin").expect("get"),
        Some(b"edited".to_vec())
    );
}

fn cache_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir.join("cache"))
        .expect("cache")
        .flatten()
    {
        for f in std::fs::read_dir(shard.path()).expect("shard").flatten() {
            out.push(f.path());
        }
    }
    out
}

/// Issue 8, item 4: a materialized file damaged on disk is checked before it is handed
/// out again and rebuilt from the store: an engine never serves wrong bytes.
#[test]
fn a_damaged_cache_file_is_rebuilt_not_served() {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = MemBackend::new();
    let repo = open(dir.path(), Arc::new(backend.clone()));
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    ws.write_file("big", &data).expect("write");
    let s = ws.snapshot(None, Default::default()).expect("snapshot");
    let reader = repo
        .create_workspace(Some(s.id), true, Default::default())
        .expect("reader");
    let ino = reader.resolve("big").expect("big");
    drop(reader.backing_file(ino, false, false).expect("materialize"));
    let files = cache_files(dir.path());
    assert_eq!(files.len(), 1);
    // Same length, one byte changed.
    let mut bad = std::fs::read(&files[0]).expect("read");
    bad[123_456] ^= 0xff;
    std::fs::set_permissions(&files[0], std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(&files[0], &bad).expect("damage");
    drop((reader, ws, repo));
    // A new process: nothing verified yet.
    let repo = open(dir.path(), Arc::new(backend));
    let reader = repo
        .create_workspace(Some(s.id), true, Default::default())
        .expect("reader");
    let ino = reader.resolve("big").expect("big");
    let (f, _) = reader.backing_file(ino, false, false).expect("materialize");
    let mut got = Vec::new();
    (&*f).read_to_end(&mut got).expect("read");
    assert!(got == data, "the damaged cache file was served");
}

/// Issue 8, item 4: a damaged object is named by fsck with every snapshot and workspace
/// that reaches it; reading it is an error (EIO through a mount), never wrong bytes, and
/// everything else keeps working.
#[test]
fn a_damaged_object_is_named_and_never_read_as_data() {
    use helios_snapshot::store::{Batch, Cf, Durability};
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = MemBackend::new();
    let repo = open(dir.path(), Arc::new(backend.clone()));
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    ws.write_file("victim", b"these bytes will rot")
        .expect("write");
    ws.write_file("fine", b"these stay").expect("write");
    let s1 = ws.snapshot(None, Default::default()).expect("snapshot");
    let fork = repo
        .create_workspace(Some(s1.id), false, Default::default())
        .expect("fork");
    fork.write_file("more", b"x").expect("write");
    let s2 = fork.snapshot(None, Default::default()).expect("snapshot");
    let (ws_id, fork_id) = (ws.id(), fork.id());
    drop((ws, fork, repo));
    // Flip a byte of the stored chunk (raw codec: tag 0, then the bytes).
    let h = helios_snapshot::Hash::of(b"these bytes will rot");
    let mut v = backend
        .get(Cf::Objects, h.as_bytes())
        .expect("get")
        .expect("stored");
    let last = v.len() - 1;
    v[last] ^= 1;
    let mut b = Batch::new();
    b.put(Cf::Objects, h.as_bytes().to_vec(), v);
    backend.write(b, Durability::Sync).expect("damage");

    let repo = open(dir.path(), Arc::new(backend));
    let report = repo.fsck().expect("fsck runs");
    assert!(!report.ok());
    let all = report.errors.join("\n");
    for want in [
        h.to_string(),
        format!("snapshot {}", s1.id),
        format!("snapshot {}", s2.id),
        format!("workspace {ws_id}"),
        format!("workspace {fork_id}"),
        "/victim".to_string(),
    ] {
        assert!(all.contains(&want), "fsck should name {want}:\n{all}");
    }
    let ws = repo.open_workspace(ws_id).expect("reopen");
    let err = ws.read_file("victim").expect_err("damaged");
    assert!(
        matches!(err, helios_snapshot::Error::Corrupt { hash, .. } if hash == h),
        "{err}"
    );
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(ws.read_file("fine").expect("the rest works"), b"these stay");
}

/// Issue 9, item 2: a buffered snapshot is visible at once, survives a crash of the
/// process (nothing to simulate: the log is written), is lost whole at a power cut
/// before a sync (the workspace back on the snapshot before it, consistent), and the
/// next synced write makes it durable.
#[test]
fn buffered_snapshots_are_whole_or_absent_and_a_sync_makes_them_durable() {
    use helios_snapshot::{Durability, SnapshotRequest};
    let buffered = || SnapshotRequest {
        durability: Durability::Buffered,
        ..Default::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = MemBackend::new();
    let repo = open(dir.path(), Arc::new(inner.clone()));
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    ws.write_file("a", b"synced").expect("write");
    let s1 = ws
        .snapshot(None, Default::default())
        .expect("synced snapshot");
    ws.write_file("a", b"buffered").expect("write");
    let s2 = ws.snapshot_with(buffered()).expect("buffered snapshot");
    assert!(
        inner.unsynced_ops() > 0,
        "a buffered snapshot waits for a sync"
    );
    assert_eq!(repo.snapshot(s2.id).expect("visible").parent, Some(s1.id));
    let wid = ws.id();
    // A power cut: no clean close (which syncs), the process simply stops.
    std::mem::forget(ws);
    std::mem::forget(repo);
    inner.power_cut();
    let repo = open(dir.path(), Arc::new(inner.clone()));
    assert!(
        repo.snapshot(s2.id).is_err(),
        "lost at a power cut before a sync"
    );
    assert_eq!(
        repo.workspace_record(wid).expect("record").base,
        Some(s1.id)
    );
    assert!(repo.fsck().expect("fsck").errors.is_empty());
    // Again, and a synced snapshot after it makes both durable.
    let ws = repo.open_workspace(wid).expect("reopen");
    ws.write_file("b", b"two").expect("write");
    let s3 = ws.snapshot_with(buffered()).expect("buffered");
    ws.write_file("c", b"three").expect("write");
    let s4 = ws.snapshot(None, Default::default()).expect("synced");
    assert_eq!(inner.unsynced_ops(), 0);
    std::mem::forget(ws);
    std::mem::forget(repo);
    inner.power_cut();
    let inner_for_annotation = inner.clone();
    let repo = open(dir.path(), Arc::new(inner));
    assert_eq!(repo.snapshot(s4.id).expect("durable").parent, Some(s3.id));
    // A buffered annotation: visible at once, gone at a power cut before a sync.
    let mut ann = serde_json::Map::new();
    ann.insert("visits".into(), 7.into());
    let a = repo
        .update_snapshot_with(s4.id, None, Some(ann), Durability::Buffered)
        .expect("annotate");
    assert_eq!(a.annotations["visits"], 7);
    assert_eq!(repo.snapshot(s4.id).expect("read").annotations["visits"], 7);
    let inner2 = inner_for_annotation.clone();
    std::mem::forget(repo);
    inner2.power_cut();
    let repo = open(dir.path(), Arc::new(inner2));
    assert!(
        repo.snapshot(s4.id)
            .expect("durable")
            .annotations
            .get("visits")
            .is_none()
    );
    assert_eq!(
        snapshot_contents(&repo, s3.id),
        [
            ("a".into(), Some(b"synced".to_vec())),
            ("b".into(), Some(b"two".to_vec()))
        ]
    );
    assert!(repo.fsck().expect("fsck").errors.is_empty());
}

/// A commit re-encodes only the changed pages of a large directory; when its write
/// fails, what changed since the base is forgotten (the directory is encoded whole next
/// time), so a retry after a further change in another page holds both changes.
#[test]
fn a_failed_commit_of_a_paged_directory_retried_after_another_change() {
    use helios_snapshot::SetAttr;
    for fault in [Fault::NoSpaceOnce, Fault::SyncFailsOnce] {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = MemBackend::new();
        {
            let probe = Arc::new(FaultyBackend::new(inner.clone(), u64::MAX, fault));
            let repo = open(dir.path(), probe);
            let ws = repo
                .create_workspace(None, false, Default::default())
                .expect("create");
            ws.mkdir_path("big").expect("mkdir");
            for i in 0..300 {
                ws.write_file(&format!("big/f{i:03}"), format!("file {i}").as_bytes())
                    .expect("write");
            }
            ws.snapshot(None, Default::default()).expect("snapshot");
        }
        let faulty = Arc::new(FaultyBackend::new(inner.clone(), 0, fault));
        let repo = open(dir.path(), faulty.clone());
        let ws = repo
            .open_workspace(helios_snapshot::WorkspaceId(1))
            .expect("reopen workspace");
        ws.write(ws.resolve("big/f010").expect("f010"), 0, b"first")
            .expect("write");
        ws.snapshot(None, Default::default())
            .expect_err("the write fails once");
        let set = SetAttr {
            mode: Some(0o600),
            ..Default::default()
        };
        ws.setattr(ws.resolve("big/f290").expect("f290"), set)
            .expect("chmod");
        let s = ws.snapshot(None, Default::default()).expect("retry");
        assert_eq!(s.metrics.changed_paths, 2, "{fault:?}");
        let fork = repo
            .create_workspace(Some(s.id), true, Default::default())
            .expect("open the snapshot");
        assert_eq!(
            super::workspace::full_state(&fork),
            super::workspace::full_state(&ws),
            "{fault:?}"
        );
    }
}

/// A backend whose next synced write, once armed, waits for the test to let it go (and
/// then succeeds or fails with ENOSPC): the window in which a snapshot's batch is being
/// written.
struct GateBackend {
    inner: MemBackend,
    armed: std::sync::atomic::AtomicBool,
    fail: std::sync::atomic::AtomicBool,
    entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Backend for GateBackend {
    fn get(
        &self,
        cf: helios_snapshot::store::Cf,
        key: &[u8],
    ) -> helios_snapshot::Result<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }

    fn write(
        &self,
        batch: helios_snapshot::store::Batch,
        durability: helios_snapshot::Durability,
    ) -> helios_snapshot::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if durability == helios_snapshot::Durability::Sync && self.armed.swap(false, SeqCst) {
            self.entered.lock().expect("lock").send(()).expect("signal");
            self.go.lock().expect("lock").recv().expect("go");
            if self.fail.load(SeqCst) {
                return Err(helios_snapshot::Error::io(
                    "gated write",
                    std::io::Error::from_raw_os_error(libc::ENOSPC),
                ));
            }
        }
        self.inner.write(batch, durability)
    }

    fn scan(
        &self,
        cf: helios_snapshot::store::Cf,
        prefix: &[u8],
        f: &mut helios_snapshot::store::backend::ScanFn<'_>,
    ) -> helios_snapshot::Result<()> {
        self.inner.scan(cf, prefix, f)
    }

    fn flush(&self) -> helios_snapshot::Result<()> {
        self.inner.flush()
    }
}

/// Issue 9 item 1: a snapshot does not hold the workspace lock across its synced write.
/// While the write is held open, the workspace serves lookups, reads and writes; the
/// snapshot holds exactly what was there when it was built; what changed meanwhile stays
/// uncommitted, reaches the next snapshot, and survives a crash after a sync. If the
/// write fails, the changes made meanwhile survive too and the retry holds everything.
#[test]
fn a_snapshot_lets_the_workspace_work_while_its_write_syncs() {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::Duration;
    for fail in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = MemBackend::new();
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let gate = Arc::new(GateBackend {
            inner: inner.clone(),
            armed: false.into(),
            fail: fail.into(),
            entered: std::sync::Mutex::new(entered_tx),
            go: std::sync::Mutex::new(go_rx),
        });
        let repo = Arc::new(open(dir.path(), gate.clone()));
        let ws = repo
            .create_workspace(None, false, Default::default())
            .expect("create");
        ws.mkdir_path("d").expect("mkdir");
        ws.write_file("d/a", b"before").expect("write");
        let s0 = ws.snapshot(None, Default::default()).expect("snapshot");
        ws.write_file("d/a", b"in the snapshot").expect("write");
        let built = contents(&ws);

        gate.armed.store(true, SeqCst);
        let snapper = {
            let ws = ws.clone();
            std::thread::spawn(move || ws.snapshot(None, Default::default()))
        };
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the snapshot reached its write");
        // The write is held open: the workspace must still work.
        let worker = {
            let ws = ws.clone();
            std::thread::spawn(move || {
                ws.write_file("d/meanwhile", b"written during the sync")?;
                ws.write_file("d/a", b"changed during the sync")?;
                let d = ws.resolve("d")?;
                ws.lookup(d, &n("meanwhile"))?;
                ws.read_file("d/meanwhile")
            })
        };
        let start = std::time::Instant::now();
        while !worker.is_finished() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let finished = worker.is_finished();
        go.send(()).expect("release the write");
        assert!(
            finished,
            "the workspace stalled while the snapshot's write was open"
        );
        assert_eq!(
            worker.join().expect("worker").expect("ops during the sync"),
            b"written during the sync"
        );
        let after = contents(&ws);
        let snap = snapper.join().expect("snapper");
        let s1 = if fail {
            assert!(snap.is_err(), "the gated write failed");
            assert_eq!(ws.base(), Some(s0.id));
            ws.snapshot(None, Default::default()).expect("retry")
        } else {
            let s1 = snap.expect("snapshot");
            assert_eq!(snapshot_contents(&repo, s1.id), built);
            assert!(
                ws.dirty(),
                "the changes made during the sync are uncommitted"
            );
            s1
        };
        assert_eq!(contents(&ws), after);
        // What changed during the sync survives a crash after a sync...
        if !fail {
            ws.sync().expect("sync");
            let id = ws.id();
            drop(ws);
            drop(repo); // crash
            let repo = open(dir.path(), Arc::new(inner.clone()));
            let ws = repo.open_workspace(id).expect("recover");
            assert_eq!(contents(&ws), after);
            // ... and reaches the next snapshot.
            let s2 = ws.snapshot(None, Default::default()).expect("snapshot");
            assert_eq!(s2.parent, Some(s1.id));
            assert_eq!(snapshot_contents(&repo, s2.id), after);
        } else {
            assert_eq!(snapshot_contents(&repo, s1.id), after);
        }
    }
}
