//! Repo-level operations: diff, prune, gc, fsck, import/export, stats, corruption.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use helios_snapshot::store::{Batch, Cf, Durability};
use helios_snapshot::{ChangeKind, Error, Hash, Ino, Name, RenameMode, SnapshotId};

use super::{contents, mem_repo, rocks_repo};

#[test]
fn diff_reports_added_modified_deleted_and_prunes_equal_subtrees() {
    let (_d, _b, repo) = mem_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    ws.mkdir_path("same").expect("mkdir");
    ws.write_file("same/x", b"x").expect("write");
    ws.mkdir_path("gone").expect("mkdir");
    ws.write_file("gone/y", b"y").expect("write");
    ws.write_file("mod", b"1").expect("write");
    let a = ws.snapshot(None, Default::default()).expect("snap");
    ws.write_file("mod", b"22").expect("write");
    let gone = ws.resolve("gone").expect("gone");
    ws.unlink(gone, &Name::try_from("y").expect("name"))
        .expect("unlink");
    ws.rmdir(Ino::ROOT, &Name::try_from("gone").expect("name"))
        .expect("rmdir");
    ws.write_file("new", b"333").expect("write");
    let b = ws.snapshot(None, Default::default()).expect("snap");
    let d: Vec<(String, ChangeKind, u64)> = repo
        .diff(a.id, b.id)
        .expect("diff")
        .into_iter()
        .map(|c| (c.path, c.kind, c.size))
        .collect();
    assert_eq!(
        d,
        vec![
            ("gone".into(), ChangeKind::Deleted, 0),
            ("gone/y".into(), ChangeKind::Deleted, 1),
            ("mod".into(), ChangeKind::Modified, 2),
            ("new".into(), ChangeKind::Added, 3),
        ]
    );
    assert!(matches!(
        repo.diff(a.id, SnapshotId(999)),
        Err(Error::SnapshotNotFound(_))
    ));
}

#[test]
fn prune_keeps_what_workspaces_stand_on_and_gc_reclaims_the_rest() {
    let (_d, repo) = rocks_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    ws.write_file("base", b"base").expect("write");
    let root = ws.snapshot(None, Default::default()).expect("snap");
    let mut losers = Vec::new();
    for i in 0..3 {
        let f = repo
            .create_workspace(Some(root.id), false, Default::default())
            .expect("fork");
        f.write_file(
            "only-here",
            format!("branch {i} {}", "x".repeat(10_000)).as_bytes(),
        )
        .expect("write");
        losers.push(f.snapshot(None, Default::default()).expect("snap").id);
        repo.delete_workspace(f.id()).expect("drop");
    }
    let before = repo.stats().expect("stats");
    assert!(matches!(
        repo.prune(root.id, false),
        Err(Error::InUse { .. })
    ));
    // ws stands on root: a recursive prune removes the branches and keeps root.
    let removed = repo.prune(root.id, true).expect("prune");
    assert_eq!(removed, losers);
    assert_eq!(repo.snapshot(root.id).expect("kept").id, root.id);
    let gc = repo.gc().expect("gc");
    assert!(gc.freed_objects >= 3, "{gc:?}");
    assert!(gc.freed_bytes > 0);
    let after = repo.stats().expect("stats");
    assert!(after.stored_bytes < before.stored_bytes);
    assert_eq!(after.snapshots, 1);
    let fsck = repo.fsck().expect("fsck");
    assert!(fsck.ok(), "{:?}", fsck.errors);
    assert_eq!(ws.read_file("base").expect("read"), b"base");
    assert!(matches!(
        repo.prune(SnapshotId(12345), true),
        Err(Error::SnapshotNotFound(_))
    ));
}

#[test]
fn gc_keeps_uncommitted_workspace_heads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = {
        let repo = helios_snapshot::Repo::open(dir.path()).expect("open");
        let ws = repo
            .create_workspace(None, false, Default::default())
            .expect("create");
        ws.write_file("pending", b"saved at close").expect("write");
        repo.close().expect("close");
        ws.id()
    };
    let repo = helios_snapshot::Repo::open(dir.path()).expect("reopen");
    repo.gc().expect("gc");
    let ws = repo.open_workspace(id).expect("open");
    assert_eq!(ws.read_file("pending").expect("read"), b"saved at close");
}

#[test]
fn fsck_and_reads_detect_corruption() {
    let (_d, backend, repo) = mem_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    ws.write_file("f", b"precious bytes").expect("write");
    let s = ws.snapshot(None, Default::default()).expect("snap");
    assert!(repo.fsck().expect("fsck").ok());
    // Flip a byte of the file's chunk behind the store's back.
    let h = Hash::of(b"precious bytes");
    let mut v = helios_snapshot::store::Backend::get(&backend, Cf::Objects, h.as_bytes())
        .expect("get")
        .expect("present");
    let last = v.len() - 1;
    v[last] ^= 0x20;
    let mut b = Batch::new();
    b.put(Cf::Objects, h.as_bytes().to_vec(), v);
    helios_snapshot::store::Backend::write(&backend, b, Durability::Sync).expect("write");
    let report = repo.fsck().expect("fsck");
    assert!(!report.ok());
    assert!(
        report.errors.iter().any(|e| e.contains(&h.to_string())),
        "{:?}",
        report.errors
    );
    // A fresh repo (cold cache) refuses to return wrong bytes.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let repo2 =
        helios_snapshot::Repo::open_with(dir2.path(), std::sync::Arc::new(backend), 1 << 20)
            .expect("open");
    let fork = repo2
        .create_workspace(Some(s.id), false, Default::default())
        .expect("fork");
    match fork.read_file("f") {
        Err(Error::Corrupt { hash, .. }) => assert_eq!(hash, h),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn import_export_round_trip_preserves_modes_symlinks_and_mtimes() {
    let src = tempfile::tempdir().expect("tempdir");
    let p = src.path();
    std::fs::create_dir_all(p.join("a/b")).expect("mkdir");
    std::fs::write(p.join("a/b/file.txt"), b"hello").expect("write");
    std::fs::write(p.join("script.sh"), b"#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(p.join("script.sh"), std::fs::Permissions::from_mode(0o751))
        .expect("chmod");
    std::os::unix::fs::symlink("a/b/file.txt", p.join("link")).expect("symlink");
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(p.join("big.bin"), &big).expect("write");
    let old = filetime(p.join("a/b/file.txt"));

    let (_d, repo) = rocks_repo();
    let s = repo.import(p, Some("imported".into())).expect("import");
    assert_eq!(s.label.as_deref(), Some("imported"));
    assert_eq!(s.metrics.changed_paths, 6);
    let ws = repo
        .create_workspace(Some(s.id), false, Default::default())
        .expect("fork");
    assert_eq!(ws.read_file("a/b/file.txt").expect("read"), b"hello");
    assert_eq!(ws.read_file("big.bin").expect("read"), big);

    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join("export");
    repo.export(s.id, &target).expect("export");
    assert_eq!(
        std::fs::read(target.join("a/b/file.txt")).expect("read"),
        b"hello"
    );
    assert_eq!(std::fs::read(target.join("big.bin")).expect("read"), big);
    assert_eq!(
        std::fs::metadata(target.join("script.sh"))
            .expect("stat")
            .mode()
            & 0o7777,
        0o751
    );
    assert_eq!(
        std::fs::read_link(target.join("link"))
            .expect("readlink")
            .to_str(),
        Some("a/b/file.txt")
    );
    assert_eq!(filetime(target.join("a/b/file.txt")), old);
    // Re-importing the export gives the same fingerprint.
    assert_eq!(repo.import(&target, None).expect("reimport").root, s.root);
    // A non-empty target is refused and left alone.
    assert!(matches!(
        repo.export(s.id, &target),
        Err(Error::PathNotAllowed { .. })
    ));
    assert!(matches!(
        repo.import(&p.join("missing"), None),
        Err(Error::Io { .. })
    ));
    assert!(matches!(
        repo.import(&p.join("script.sh"), None),
        Err(Error::NotADirectory(_))
    ));
}

fn filetime(p: std::path::PathBuf) -> (i64, i64) {
    let m = std::fs::symlink_metadata(p).expect("stat");
    (m.mtime(), m.mtime_nsec())
}

#[test]
fn annotations_merge_and_ancestry() {
    let (_d, _b, repo) = mem_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    let a = ws.snapshot(None, Default::default()).expect("snap");
    ws.write_file("f", b"1").expect("write");
    let b = ws.snapshot(None, Default::default()).expect("snap");
    let ann = serde_json::json!({"visits": 3, "value": 0.5})
        .as_object()
        .cloned();
    repo.update_snapshot(b.id, Some(Some("best".into())), ann)
        .expect("annotate");
    let ann = serde_json::json!({"visits": 4, "value": null})
        .as_object()
        .cloned();
    let s = repo.update_snapshot(b.id, None, ann).expect("annotate");
    assert_eq!(s.label.as_deref(), Some("best"));
    assert_eq!(
        serde_json::Value::Object(s.annotations),
        serde_json::json!({"visits": 4})
    );
    assert_eq!(repo.ancestry(b.id).expect("ancestry"), vec![b.id, a.id]);
    assert_eq!(repo.children(Some(a.id)).expect("children"), vec![b.id]);
    let _ = (contents, RenameMode::Replace);
}

/// Issue 8, item 5: a fresh state dir costs a few MiB on disk, not a preallocated
/// write-ahead log of ~71 MiB (RocksDB's default, which tmpfs pays in RAM).
#[test]
fn a_fresh_state_dir_costs_a_few_mib() {
    use std::os::unix::fs::MetadataExt;
    let (dir, repo) = super::rocks_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    ws.write_file("f", b"x").expect("write");
    ws.snapshot(None, Default::default()).expect("snapshot");
    let mut allocated = 0u64;
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read").flatten() {
            let m = e.metadata().expect("stat");
            if m.is_dir() {
                stack.push(e.path());
            } else {
                allocated += m.blocks() * 512;
            }
        }
    }
    assert!(
        allocated < 8 << 20,
        "a fresh state dir allocates {} KiB",
        allocated >> 10
    );
}
