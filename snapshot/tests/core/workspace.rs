//! Workspace semantics: copy-on-write, snapshot, fork, checkout, POSIX errors.

use helios_snapshot::{Error, Ino, Kind, Name, RenameMode, SetAttr, XattrMode};

use super::{contents, mem_repo, rocks_repo};

fn n(s: &str) -> Name {
    Name::try_from(s).expect("valid name")
}

#[test]
fn snapshot_fork_and_read_back() {
    let (_d, _b, repo) = mem_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    assert!(!ws.dirty());
    ws.mkdir_path("src").expect("mkdir");
    ws.write_file("src/main.rs", b"fn main() {}")
        .expect("write");
    ws.write_file("README", b"hello").expect("write");
    assert!(ws.dirty());
    let s1 = ws
        .snapshot(Some("first".into()), Default::default())
        .expect("snapshot");
    assert!(!ws.dirty());
    assert_eq!(ws.base(), Some(s1.id));
    assert_eq!(s1.metrics.changed_paths, 3);
    assert!(s1.metrics.new_objects >= 4);

    let fork = repo
        .create_workspace(Some(s1.id), false, Default::default())
        .expect("fork");
    assert_eq!(
        fork.read_file("src/main.rs").expect("read"),
        b"fn main() {}"
    );
    fork.write_file("README", b"changed in the fork")
        .expect("write");
    assert_eq!(
        ws.read_file("README").expect("read"),
        b"hello",
        "forks are isolated"
    );
    let s2 = fork.snapshot(None, Default::default()).expect("snapshot");
    assert_eq!(s2.parent, Some(s1.id));
    assert_eq!(s2.metrics.changed_paths, 1);
    // One changed small file: its chunk and the root node.
    assert_eq!(s2.metrics.new_objects, 2);
}

#[test]
fn checkout_switches_in_place_and_refuses_dirty() {
    let (_d, _b, repo) = mem_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    ws.mkdir_path("d").expect("mkdir");
    ws.write_file("d/keep", b"same").expect("write");
    ws.write_file("f", b"one").expect("write");
    let s1 = ws.snapshot(None, Default::default()).expect("snap");
    let keep_ino = ws.resolve("d/keep").expect("resolve");
    let d_ino = ws.resolve("d").expect("resolve");
    ws.write_file("f", b"two").expect("write");
    ws.write_file("g", b"new").expect("write");
    let s2 = ws.snapshot(None, Default::default()).expect("snap");

    ws.write_file("f", b"uncommitted").expect("write");
    assert!(matches!(ws.checkout(s1.id, false), Err(Error::Dirty(_))));
    assert_eq!(
        ws.read_file("f").expect("read"),
        b"uncommitted",
        "a refused checkout changes nothing"
    );
    ws.checkout(s1.id, true).expect("checkout with discard");
    assert_eq!(ws.read_file("f").expect("read"), b"one");
    assert!(matches!(ws.resolve("g"), Err(Error::NoEntry(_))));
    assert_eq!(
        ws.resolve("d").expect("resolve"),
        d_ino,
        "directories keep their inode"
    );
    assert_eq!(
        ws.resolve("d/keep").expect("resolve"),
        keep_ino,
        "unchanged files keep their inode"
    );
    assert!(!ws.dirty());
    ws.checkout(s2.id, false).expect("checkout clean");
    assert_eq!(ws.read_file("g").expect("read"), b"new");
    assert_eq!(ws.base(), Some(s2.id));
}

#[test]
fn equal_content_gives_equal_root_whatever_the_order() {
    let (_d, _b, repo) = mem_repo();
    let a = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    a.mkdir_path("x").expect("mkdir");
    a.write_file("x/1", b"one").expect("write");
    a.write_file("2", b"two").expect("write");
    let sa = a.snapshot(None, Default::default()).expect("snap");

    std::thread::sleep(std::time::Duration::from_millis(5));
    let b = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    b.write_file("2", b"draft").expect("write");
    b.write_file("tmp", b"scratch").expect("write");
    b.mkdir_path("y").expect("mkdir");
    b.write_file("y/1", b"one").expect("write");
    b.rename(Ino::ROOT, &n("y"), Ino::ROOT, &n("x"), RenameMode::Replace)
        .expect("rename");
    b.unlink(Ino::ROOT, &n("tmp")).expect("unlink");
    b.write_file("2", b"two").expect("write");
    let sb = b.snapshot(None, Default::default()).expect("snap");
    assert_eq!(sa.root, sb.root);
    assert_ne!(
        sa.tree, sb.tree,
        "mtimes differ, so the stored trees differ"
    );
    assert_eq!(repo.by_root(&sa.root).expect("by root"), vec![sa.id, sb.id]);
    assert!(repo.diff(sa.id, sb.id).expect("diff").is_empty());
}

#[test]
fn uncommitted_changes_survive_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (id, base) = {
        let repo = helios_snapshot::Repo::open(dir.path()).expect("open");
        let ws = repo
            .create_workspace(None, false, Default::default())
            .expect("create");
        ws.write_file("committed", b"c").expect("write");
        let s = ws.snapshot(None, Default::default()).expect("snap");
        ws.write_file("pending", b"not yet snapshotted")
            .expect("write");
        ws.unlink(Ino::ROOT, &n("committed")).expect("unlink");
        repo.close().expect("close");
        (ws.id(), s.id)
    };
    let repo = helios_snapshot::Repo::open(dir.path()).expect("reopen");
    let ws = repo.open_workspace(id).expect("open workspace");
    assert_eq!(ws.base(), Some(base));
    assert!(ws.dirty());
    assert_eq!(
        ws.read_file("pending").expect("read"),
        b"not yet snapshotted"
    );
    assert!(matches!(ws.resolve("committed"), Err(Error::NoEntry(_))));
    assert_eq!(repo.snapshot(base).expect("snapshot survives").id, base);
}

#[test]
fn posix_errors() {
    let (_d, _b, repo) = mem_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    let root = Ino::ROOT;
    ws.mkdir_path("d").expect("mkdir");
    ws.write_file("d/f", b"x").expect("write");
    ws.write_file("f", b"y").expect("write");
    let d = ws.resolve("d").expect("d");
    assert!(matches!(
        ws.mkdir(root, &n("d"), 0o755, 0, 0),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(ws.rmdir(root, &n("d")), Err(Error::NotEmpty(_))));
    assert!(matches!(
        ws.rmdir(root, &n("f")),
        Err(Error::NotADirectory(_))
    ));
    assert!(matches!(
        ws.unlink(root, &n("d")),
        Err(Error::IsADirectory(_))
    ));
    assert!(matches!(
        ws.unlink(root, &n("nope")),
        Err(Error::NoEntry(_))
    ));
    assert!(matches!(
        ws.rename(root, &n("d"), d, &n("sub"), RenameMode::Replace),
        Err(Error::Loop(_))
    ));
    assert!(matches!(
        ws.rename(root, &n("f"), root, &n("d"), RenameMode::Replace),
        Err(Error::IsADirectory(_))
    ));
    assert!(matches!(
        ws.rename(root, &n("d"), root, &n("f"), RenameMode::Replace),
        Err(Error::NotADirectory(_))
    ));
    assert!(matches!(
        ws.rename(root, &n("f"), d, &n("f"), RenameMode::NoReplace),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        ws.rename(root, &n("f"), root, &n("g"), RenameMode::Exchange),
        Err(Error::NoEntry(_))
    ));
    assert!(matches!(
        ws.link(d, root, &n("dd")),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        ws.write_file("d/f/x", b""),
        Err(Error::NotADirectory(_))
    ));
    assert!(matches!(
        ws.symlink(root, &n("l"), b"", 0, 0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(ws.getxattr(d, b"user.none"), Err(Error::NoAttr)));
    assert!(matches!(ws.readlink(d), Err(Error::NotASymlink(_))));
    assert!(matches!(
        Name::new(&[b'a'; 256]),
        Err(Error::NameTooLong(256))
    ));
    for bad in [&b"a/b"[..], b"..", b".", b"", b"a\0"] {
        assert!(Name::new(bad).is_err());
    }
    assert!(matches!(ws.getattr(Ino(999_999)), Err(Error::NoEntry(_))));
    // Nothing above changed the tree.
    assert_eq!(ws.walk().expect("walk").len(), 3);

    ws.rename(root, &n("f"), d, &n("f"), RenameMode::Exchange)
        .expect("exchange");
    assert_eq!(ws.read_file("f").expect("read"), b"x");
    assert_eq!(ws.read_file("d/f").expect("read"), b"y");
    ws.rename(root, &n("f"), d, &n("f"), RenameMode::Replace)
        .expect("replace");
    assert_eq!(ws.read_file("d/f").expect("read"), b"x");
    assert!(matches!(ws.resolve("f"), Err(Error::NoEntry(_))));
}

#[test]
fn hard_links_share_data_and_sparse_writes_leave_zeros() {
    let (_d, _b, repo) = mem_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    let f = ws.write_file("a", b"12345").expect("write");
    ws.link(f, Ino::ROOT, &n("b")).expect("link");
    ws.write(f, 0, b"X").expect("write");
    assert_eq!(ws.read_file("b").expect("read"), b"X2345");
    assert_eq!(ws.getattr(f).expect("stat").nlink, 2);
    ws.write(f, 10, b"end").expect("sparse write");
    assert_eq!(ws.read_file("a").expect("read"), b"X2345\0\0\0\0\0end");
    ws.setattr(
        f,
        SetAttr {
            size: Some(2),
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .expect("truncate");
    let st = ws.getattr(f).expect("stat");
    assert_eq!((st.size, st.mode), (2, 0o600));
    ws.unlink(Ino::ROOT, &n("a")).expect("unlink");
    assert_eq!(ws.read_file("b").expect("read"), b"X2");
    let s = ws.snapshot(None, Default::default()).expect("snap");
    let other = repo
        .create_workspace(Some(s.id), false, Default::default())
        .expect("fork");
    assert_eq!(other.read_file("b").expect("read"), b"X2");
}

#[test]
fn xattrs_symlinks_fifos_and_modes_are_snapshotted() {
    let (_d, _b, repo) = mem_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    let f = ws.write_file("f", b"data").expect("write");
    ws.setxattr(f, b"user.tag", b"v1", XattrMode::Create)
        .expect("setxattr");
    assert!(matches!(
        ws.setxattr(f, b"user.tag", b"v2", XattrMode::Create),
        Err(Error::AlreadyExists(_))
    ));
    ws.symlink(Ino::ROOT, &n("link"), b"f", 0, 0)
        .expect("symlink");
    ws.create(Ino::ROOT, &n("pipe"), Kind::Fifo, 0o600, 0, 0)
        .expect("fifo");
    ws.create(Ino::ROOT, &n("sock"), Kind::Socket, 0o600, 0, 0)
        .expect("socket");
    let null = helios_snapshot::Special::Char(0x0103);
    ws.mknod(Ino::ROOT, &n("null"), null, 0o666, 0, 0)
        .expect("char device");
    ws.setattr(
        f,
        SetAttr {
            mode: Some(0o4755),
            uid: Some(7),
            gid: Some(8),
            ..Default::default()
        },
    )
    .expect("chmod");
    let s = ws.snapshot(None, Default::default()).expect("snap");
    let other = repo
        .create_workspace(Some(s.id), false, Default::default())
        .expect("fork");
    let g = other.resolve("f").expect("f");
    assert_eq!(other.getxattr(g, b"user.tag").expect("getxattr"), b"v1");
    let st = other.getattr(g).expect("stat");
    assert_eq!((st.mode, st.uid, st.gid), (0o4755, 7, 8));
    assert_eq!(
        other
            .readlink(other.resolve("link").expect("link"))
            .expect("readlink"),
        b"f"
    );
    assert_eq!(
        other
            .getattr(other.resolve("pipe").expect("pipe"))
            .expect("stat")
            .kind,
        Kind::Fifo
    );
    let sock = other
        .getattr(other.resolve("sock").expect("sock"))
        .expect("stat");
    assert_eq!(sock.kind, Kind::Socket);
    let dev = other
        .getattr(other.resolve("null").expect("null"))
        .expect("stat");
    assert_eq!((dev.kind, dev.rdev), (Kind::CharDev, 0x0103));
    assert_eq!(contents(&ws), contents(&other));
}

#[test]
fn read_only_workspace_refuses_changes() {
    let (_d, repo) = rocks_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    ws.write_file("f", b"x").expect("write");
    let s = ws.snapshot(None, Default::default()).expect("snap");
    let ro = repo
        .create_workspace(Some(s.id), true, Default::default())
        .expect("create ro");
    assert_eq!(ro.read_file("f").expect("read"), b"x");
    assert!(matches!(ro.write_file("g", b"y"), Err(Error::ReadOnly)));
    let f = ro.resolve("f").expect("f");
    assert!(matches!(ro.write(f, 0, b"z"), Err(Error::ReadOnly)));
}

#[test]
fn large_file_edit_stores_only_changed_chunks() {
    let (_d, _b, repo) = mem_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..4_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let f = ws.write_file("big", &data).expect("write");
    let s1 = ws.snapshot(None, Default::default()).expect("snap");
    assert!(s1.metrics.new_bytes >= 3_900_000);
    ws.write(f, 2_000_000, b"edit").expect("write");
    let s2 = ws.snapshot(None, Default::default()).expect("snap");
    assert!(
        s2.metrics.new_bytes < 600_000,
        "an edit stored {} bytes",
        s2.metrics.new_bytes
    );
    let fork = repo
        .create_workspace(Some(s2.id), false, Default::default())
        .expect("fork");
    let back = fork.read_file("big").expect("read");
    assert_eq!(&back[2_000_000..2_000_004], b"edit");
    assert_eq!(back.len(), data.len());
}

/// Everything a snapshot keeps of each path: content, mode, owner, mtime, xattrs.
pub(super) type Full = Vec<(
    String,
    Option<Vec<u8>>,
    u32,
    u32,
    u32,
    i64,
    Vec<(Vec<u8>, Vec<u8>)>,
)>;

pub(super) fn full_state(ws: &helios_snapshot::Workspace) -> Full {
    contents(ws)
        .into_iter()
        .map(|(path, data)| {
            let ino = ws.resolve(&path).expect("resolve");
            let st = ws.getattr(ino).expect("stat");
            let mut xattrs: Vec<_> = ws
                .listxattr(ino)
                .expect("listxattr")
                .into_iter()
                .map(|k| {
                    let v = ws.getxattr(ino, &k).expect("getxattr");
                    (k, v)
                })
                .collect();
            xattrs.sort();
            (path, data, st.mode, st.uid, st.gid, st.mtime, xattrs)
        })
        .collect()
}

/// A commit re-encodes only the pages of a large directory that hold a changed entry
/// and takes the others from the last commit: every kind of change to one entry (its
/// content, mode, owner, mtime, xattrs; through a hard link from another directory; in
/// a subdirectory; the directory's own mode) must reach the snapshot, and a fork of it
/// must hold exactly the workspace's state.
#[test]
fn every_change_in_a_paged_directory_reaches_the_snapshot() {
    let (_d, _b, repo) = mem_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    ws.mkdir_path("big").expect("mkdir");
    ws.mkdir_path("big/sub").expect("mkdir");
    ws.mkdir_path("other").expect("mkdir");
    for i in 0..300 {
        ws.write_file(&format!("big/f{i:03}"), format!("file {i}").as_bytes())
            .expect("write");
    }
    ws.write_file("big/sub/x", b"x").expect("write");
    let big = ws.resolve("big").expect("big");
    let other = ws.resolve("other").expect("other");
    ws.link(ws.resolve("big/f010").expect("f010"), other, &n("l"))
        .expect("link");
    ws.snapshot(None, Default::default()).expect("snapshot");
    let f = |p: &str| ws.resolve(p).expect("resolve");
    // What changed, the paths it changes (mtimes and a directory's own attributes
    // aside, as `changed_paths` counts), and the change.
    type Change<'a> = (&'a str, u64, Box<dyn Fn() + 'a>);
    let changes: Vec<Change<'_>> = vec![
        (
            "write",
            1,
            Box::new(|| {
                ws.write(f("big/f100"), 0, b"changed").expect("write");
            }),
        ),
        (
            "chmod",
            1,
            Box::new(|| {
                let set = SetAttr {
                    mode: Some(0o600),
                    ..Default::default()
                };
                ws.setattr(f("big/f200"), set).expect("chmod");
            }),
        ),
        (
            "chown",
            1,
            Box::new(|| {
                let set = SetAttr {
                    uid: Some(7),
                    gid: Some(9),
                    ..Default::default()
                };
                ws.setattr(f("big/f201"), set).expect("chown");
            }),
        ),
        (
            "setxattr",
            1,
            Box::new(|| {
                ws.setxattr(f("big/f050"), b"user.k", b"v", XattrMode::Create)
                    .expect("setxattr");
            }),
        ),
        (
            "mtime",
            0,
            Box::new(|| {
                let set = SetAttr {
                    mtime: Some(helios_snapshot::SetTime::At(1_000_000_000)),
                    ..Default::default()
                };
                ws.setattr(f("big/f250"), set).expect("utimens");
            }),
        ),
        (
            "write through a link elsewhere",
            2,
            Box::new(|| {
                ws.write(f("other/l"), 0, b"via the link").expect("write");
            }),
        ),
        (
            "write below",
            1,
            Box::new(|| {
                ws.write(f("big/sub/x"), 0, b"deeper").expect("write");
            }),
        ),
        (
            "chmod of the directory",
            0,
            Box::new(|| {
                let set = SetAttr {
                    mode: Some(0o700),
                    ..Default::default()
                };
                ws.setattr(big, set).expect("chmod");
            }),
        ),
        (
            "removexattr",
            1,
            Box::new(|| {
                ws.removexattr(f("big/f050"), b"user.k")
                    .expect("removexattr");
            }),
        ),
        (
            "truncate",
            1,
            Box::new(|| {
                let set = SetAttr {
                    size: Some(2),
                    ..Default::default()
                };
                ws.setattr(f("big/f150"), set).expect("truncate");
            }),
        ),
        (
            "two at once, pages apart",
            2,
            Box::new(|| {
                ws.write(f("big/f000"), 0, b"first").expect("write");
                ws.write(f("big/f299"), 0, b"last").expect("write");
            }),
        ),
    ];
    for (what, paths, change) in &changes {
        change();
        let s = ws.snapshot(None, Default::default()).expect("snapshot");
        assert_eq!(s.metrics.changed_paths, *paths, "{what}: changed paths");
        let fork = repo
            .create_workspace(Some(s.id), true, Default::default())
            .expect("open the snapshot");
        assert_eq!(full_state(&fork), full_state(&ws), "{what}");
    }
    let fsck = repo.fsck().expect("fsck");
    assert!(fsck.ok(), "{:?}", fsck.errors);
}
