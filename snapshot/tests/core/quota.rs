//! Issue 8 item 6: per-workspace quotas. A change past a limit fails with EDQUOT and
//! changes nothing; freeing room makes it work again; usage is counted as a fresh walk
//! counts it, through hard links, truncation, checkout, restart and journal recovery.

use std::sync::Arc;

use helios_snapshot::store::{Backend, MemBackend};
use helios_snapshot::{Error, Kind, Name, Quota, Repo, SetAttr, Usage};

use super::{contents, walked};

fn n(s: &str) -> Name {
    Name::try_from(s).expect("valid name")
}

fn open(dir: &std::path::Path, backend: Arc<dyn Backend>) -> Repo {
    Repo::open_with(dir, backend, 64 << 20).expect("open repo")
}

fn over_quota<T: std::fmt::Debug>(r: helios_snapshot::Result<T>) -> bool {
    match r {
        Err(e @ Error::QuotaExceeded { .. }) => e.errno() == libc::EDQUOT,
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
}

/// A base of 3 names and 300 bytes, snapshotted.
fn base(repo: &Repo) -> helios_snapshot::SnapshotId {
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    ws.mkdir_path("d").expect("mkdir");
    ws.write_file("d/a", &[1u8; 100]).expect("write");
    ws.write_file("b", &[2u8; 200]).expect("write");
    let s = ws.snapshot(None, Default::default()).expect("snapshot");
    repo.delete_workspace(ws.id()).expect("drop");
    s.id
}

#[test]
fn a_quota_refuses_what_would_pass_it_and_freeing_room_makes_it_work_again() {
    let (_dir, repo) = super::rocks_repo();
    let s = base(&repo);
    let quota = Quota {
        bytes: Some(1000),
        inodes: Some(6),
    };
    let ws = repo
        .create_workspace_with(Some(s), false, Default::default(), Some(quota))
        .expect("fork with quota");
    assert_eq!(ws.quota(), Some(quota));
    let u = ws.usage().expect("usage");
    assert_eq!(
        u,
        Usage {
            bytes: 300,
            inodes: 3
        }
    );
    assert_eq!(u, walked(&ws));

    // Bytes: a write that would pass the limit fails whole and changes nothing.
    ws.write_file("c", &[3u8; 700])
        .expect("write up to the limit");
    assert_eq!(ws.usage().expect("usage").bytes, 1000);
    let c = ws.resolve("c").expect("c");
    assert!(over_quota(ws.write(c, 700, b"x")));
    assert!(over_quota(ws.setattr(
        c,
        SetAttr {
            size: Some(701),
            ..Default::default()
        }
    )));
    assert_eq!(ws.read_file("c").expect("read"), vec![3u8; 700]);
    // Rewriting inside the file's size is no growth.
    ws.write(c, 0, b"yyy").expect("overwrite");
    // A hard link counts the file's bytes again (as `du --count-links`).
    let root = ws.resolve("").expect("root");
    assert!(over_quota(ws.link(c, root, &n("c2"))));
    // Shrinking frees room; then the link fits.
    ws.setattr(
        c,
        SetAttr {
            size: Some(100),
            ..Default::default()
        },
    )
    .expect("truncate");
    assert_eq!(ws.usage().expect("usage").bytes, 400);
    ws.link(c, root, &n("c2")).expect("link now fits");
    assert_eq!(
        ws.usage().expect("usage"),
        Usage {
            bytes: 500,
            inodes: 5
        }
    );
    // Growing a linked file counts once per name.
    ws.write(c, 100, &[4u8; 100]).expect("grow");
    assert_eq!(ws.usage().expect("usage").bytes, 700);
    assert_eq!(ws.usage().expect("usage"), walked(&ws));

    // Names: the sixth fits, the seventh does not, whatever its kind.
    ws.mkdir_path("e").expect("sixth name");
    let e = ws.resolve("e").expect("e");
    assert!(over_quota(ws.mkdir(root, &n("f"), 0o755, 0, 0)));
    assert!(over_quota(ws.create(e, &n("g"), Kind::File, 0o644, 0, 0)));
    assert!(over_quota(ws.symlink(e, &n("h"), b"target", 0, 0)));
    assert!(
        ws.resolve("e/g").is_err(),
        "a refused create leaves no name"
    );
    // A rename replacing a name frees it; unlink frees one.
    ws.rename(root, &n("c2"), root, &n("b"), Default::default())
        .expect("rename over b");
    assert_eq!(ws.usage().expect("usage"), walked(&ws));
    ws.create(e, &n("g"), Kind::File, 0o644, 0, 0)
        .expect("room after the rename");
    ws.unlink(e, &n("g")).expect("unlink");
    ws.rmdir(root, &n("e")).expect("rmdir");
    assert_eq!(ws.usage().expect("usage"), walked(&ws));

    // Snapshots are not growth; a limit below the usage leaves only shrinking.
    let s2 = ws.snapshot(None, Default::default()).expect("snapshot");
    let used = ws.usage().expect("usage");
    ws.set_quota(Some(Quota {
        bytes: Some(10),
        inodes: None,
    }))
    .expect("lower the limit");
    assert!(over_quota(ws.write_file("new", b"x")));
    ws.unlink(root, &n("b")).expect("shrinking is allowed");
    // Removing the quota removes every limit.
    assert_eq!(ws.set_quota(None).expect("remove"), None);
    assert_eq!(ws.quota(), None);
    ws.write_file("big", &[5u8; 5000]).expect("unlimited");
    // Back to s2 with a quota: the usage is s2's.
    ws.set_quota(Some(quota)).expect("set again");
    ws.checkout(s2.id, true).expect("checkout");
    assert_eq!(ws.usage().expect("usage"), used);
    assert_eq!(used, walked(&ws));
}

#[test]
fn the_quota_and_its_usage_survive_restart_and_journal_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = MemBackend::new();
    let repo = open(dir.path(), Arc::new(backend.clone()));
    let s = base(&repo);
    let quota = Quota {
        bytes: Some(4096),
        inodes: Some(50),
    };
    let ws = repo
        .create_workspace_with(Some(s), false, Default::default(), Some(quota))
        .expect("fork with quota");
    ws.write_file("d/new", &[7u8; 1000]).expect("write");
    let d = ws.resolve("d").expect("d");
    ws.link(ws.resolve("d/new").expect("new"), d, &n("again"))
        .expect("link");
    ws.sync().expect("sync");
    let synced = ws.usage().expect("usage");
    assert_eq!(synced, walked(&ws));
    let id = ws.id();
    drop(ws);
    drop(repo); // crash: no save, the journal holds the synced state

    let repo = open(dir.path(), Arc::new(backend.clone()));
    let ws = repo.open_workspace(id).expect("recover");
    assert_eq!(ws.quota(), Some(quota));
    assert_eq!(ws.usage().expect("usage"), synced);
    assert_eq!(synced, walked(&ws));
    // Still enforced after recovery: 4096 - 2300 bytes are left.
    assert!(over_quota(ws.write_file("d/huge", &[0u8; 1797])));
    ws.write_file("d/fits", &[0u8; 1796]).expect("fits");
    let before = contents(&ws);
    let usage = ws.usage().expect("usage");
    repo.close().expect("clean stop");
    drop(ws);
    drop(repo);

    let repo = open(dir.path(), Arc::new(backend));
    let ws = repo.open_workspace(id).expect("reopen");
    assert_eq!(ws.quota(), Some(quota));
    assert_eq!(ws.usage().expect("usage"), usage);
    assert_eq!(contents(&ws), before);
    assert!(over_quota(ws.write_file("one_more", b"x")));
}

#[test]
fn a_read_only_workspace_takes_no_quota_and_no_quota_keeps_no_usage() {
    let (_dir, repo) = super::rocks_repo();
    let s = base(&repo);
    let ro = repo
        .create_workspace(Some(s), true, Default::default())
        .expect("read-only");
    assert!(matches!(
        ro.set_quota(Some(Quota {
            bytes: Some(1),
            inodes: None
        })),
        Err(Error::ReadOnly)
    ));
    let ws = repo
        .create_workspace(Some(s), false, Default::default())
        .expect("plain");
    assert_eq!(ws.usage(), None);
    assert!(!ws.has_quota());
    // An unlimited quota is no quota.
    assert_eq!(ws.set_quota(Some(Quota::default())).expect("set"), None);
    assert_eq!(ws.quota(), None);
}
