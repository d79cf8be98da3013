//! The commit path's second source of changes: an edit list over a base tree (what an
//! overlay upperdir scan yields) must give the same snapshot as a workspace making the
//! same changes, and as importing the result from a real directory.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use helios_snapshot::tree::Attrs;
use helios_snapshot::{Edit, Edits, Kind, Name, Repo, SetAttr};
use proptest::prelude::*;

use super::{contents, mem_repo};

#[derive(Clone, Debug, PartialEq)]
pub(super) enum N {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(Vec<u8>),
}

pub(super) type T = BTreeMap<String, N>;

pub(super) const PATHS: &[&str] = &["a", "a/a", "a/a/a", "a/b", "b", "b/a", "b/c", "c"];

pub(super) fn parent(p: &str) -> Option<&str> {
    p.rfind('/').map(|i| &p[..i])
}

/// A consistent tree: a path exists only under an existing directory.
fn tree() -> impl Strategy<Value = T> {
    prop::collection::vec(
        (0u8..5, 0u8..2, prop::collection::vec(any::<u8>(), 0..6)),
        PATHS.len(),
    )
    .prop_map(|choices| {
        let mut t = T::new();
        for (p, (kind, m, data)) in PATHS.iter().zip(choices) {
            if parent(p).is_some_and(|q| !matches!(t.get(q), Some(N::Dir(_)))) {
                continue;
            }
            let node = match kind {
                0 => continue,
                1 | 2 => N::Dir([0o755, 0o700][m as usize]),
                3 => N::File([0o644, 0o600][m as usize], data),
                _ => N::Link(if data.is_empty() {
                    b"t".to_vec()
                } else {
                    vec![b'x'; data.len()]
                }),
            };
            t.insert(p.to_string(), node);
        }
        t
    })
}

fn ids() -> (u32, u32) {
    (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}

pub(super) fn attrs(mode: u32) -> Attrs {
    let (uid, gid) = ids();
    Attrs {
        mode,
        uid,
        gid,
        mtime: 0,
        xattrs: Vec::new(),
    }
}

/// Writes `t` into the empty directory `dir`.
pub(super) fn materialize(dir: &Path, t: &T) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for (p, n) in t {
        let path = dir.join(p);
        match n {
            N::Dir(_) => std::fs::create_dir(&path).expect("mkdir"),
            N::File(m, data) => {
                std::fs::write(&path, data).expect("write");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*m))
                    .expect("chmod");
            }
            N::Link(target) => {
                use std::os::unix::ffi::OsStrExt;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path)
                    .expect("symlink")
            }
        }
    }
    // Directory modes last: a 0700 directory is still writable by its owner, but keep
    // the order of a real tool.
    for (p, n) in t.iter().rev() {
        if let N::Dir(m) = n {
            std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(*m))
                .expect("chmod");
        }
    }
}

pub(super) fn children<'a>(t: &'a T, dir: &str) -> Vec<&'a str> {
    t.keys()
        .map(String::as_str)
        .filter(|p| parent(p).unwrap_or("") == dir && !p.is_empty())
        .collect()
}

/// The edits an overlay upperdir would hold for `t0 -> t1`.
pub(super) fn edits_of(t0: &T, t1: &T, dir: &str, opaque: bool, data: &Path, e: &mut Edits) {
    let mut names: Vec<&str> = children(t0, dir);
    names.extend(children(t1, dir));
    names.sort();
    names.dedup();
    for p in names {
        let before = if opaque { None } else { t0.get(p) };
        match (before, t1.get(p)) {
            (None, None) => {}
            (Some(_), None) => e.set(p, Edit::Delete).expect("edit"),
            (b, Some(N::File(m, bytes))) => {
                if b != t1.get(p) {
                    let src = data.join(p.replace('/', "_"));
                    std::fs::write(&src, bytes).expect("write");
                    e.set(
                        p,
                        Edit::File {
                            attrs: attrs(*m),
                            source: src,
                        },
                    )
                    .expect("edit");
                }
            }
            (b, Some(N::Link(target))) => {
                if b != t1.get(p) {
                    let kind = helios_snapshot::tree::EntryKind::Symlink {
                        attrs: attrs(0o777),
                        target: target.clone(),
                    };
                    e.set(p, Edit::Entry(kind)).expect("edit");
                }
            }
            (Some(N::Dir(m0)), Some(N::Dir(m1))) => {
                if m0 != m1 {
                    e.set(
                        p,
                        Edit::Dir {
                            attrs: attrs(*m1),
                            opaque: false,
                        },
                    )
                    .expect("edit");
                }
                edits_of(t0, t1, p, false, data, e);
            }
            (_, Some(N::Dir(m1))) => {
                e.set(
                    p,
                    Edit::Dir {
                        attrs: attrs(*m1),
                        opaque: true,
                    },
                )
                .expect("edit");
                edits_of(t0, t1, p, true, data, e);
            }
        }
    }
}

fn n(s: &str) -> Name {
    Name::try_from(s).expect("name")
}

/// Makes the workspace go from `t0` to `t1` through its file operations.
fn apply_ws(ws: &helios_snapshot::Workspace, t0: &T, t1: &T) {
    let (uid, gid) = ids();
    let split = |p: &str| -> (helios_snapshot::Ino, Name) {
        let (dir, name) = match p.rfind('/') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => ("", p),
        };
        (ws.resolve(dir).expect("parent"), n(name))
    };
    // Removals, deepest first.
    for (p, n0) in t0.iter().rev() {
        let keep = matches!(
            (n0, t1.get(p)),
            (N::Dir(_), Some(N::Dir(_))) | (N::File(..), Some(N::File(..)))
        );
        if !keep && ws.resolve(p).is_ok() {
            let (dir, name) = split(p);
            if matches!(n0, N::Dir(_)) {
                ws.rmdir(dir, &name).expect("rmdir");
            } else {
                ws.unlink(dir, &name).expect("unlink");
            }
        }
    }
    for (p, n1) in t1 {
        let (dir, name) = split(p);
        match (ws.resolve(p).ok(), n1) {
            (None, N::Dir(m)) => {
                ws.mkdir(dir, &name, *m, uid, gid).expect("mkdir");
            }
            (None, N::File(m, data)) => {
                let st = ws
                    .create(dir, &name, Kind::File, *m, uid, gid)
                    .expect("create");
                ws.write(st.ino, 0, data).expect("write");
            }
            (None, N::Link(target)) => {
                ws.symlink(dir, &name, target, uid, gid).expect("symlink");
            }
            (Some(ino), N::Dir(m)) | (Some(ino), N::File(m, _)) => {
                if let N::File(_, data) = n1
                    && ws.read_file(p).expect("read") != *data
                {
                    ws.setattr(
                        ino,
                        SetAttr {
                            size: Some(0),
                            ..Default::default()
                        },
                    )
                    .expect("truncate");
                    ws.write(ino, 0, data).expect("write");
                }
                ws.setattr(
                    ino,
                    SetAttr {
                        mode: Some(*m),
                        ..Default::default()
                    },
                )
                .expect("chmod");
            }
            (Some(_), N::Link(_)) => unreachable!("links are always replaced"),
        }
    }
}

fn check(t0: T, t1: T) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let (d0, d1, data) = (
        scratch.path().join("t0"),
        scratch.path().join("t1"),
        scratch.path().join("data"),
    );
    for d in [&d0, &d1, &data] {
        std::fs::create_dir(d).expect("mkdir");
    }
    materialize(&d0, &t0);
    materialize(&d1, &t1);
    let (_dir, _b, repo): (_, _, Repo) = mem_repo();
    let s0 = repo.import(&d0, None).expect("import t0");
    let want = repo.import(&d1, None).expect("import t1");

    let mut e = Edits::new();
    edits_of(&t0, &t1, "", false, &data, &mut e);
    let by_edits = repo
        .commit_edits(Some(s0.id), Some(s0.id), &e, None, Default::default(), None)
        .expect("commit edits");
    assert_eq!(by_edits.parent, Some(s0.id));

    let ws = repo
        .create_workspace(Some(s0.id), false, Default::default())
        .expect("fork");
    apply_ws(&ws, &t0, &t1);
    let by_ws = ws.snapshot(None, Default::default()).expect("snapshot");

    let show = |id| {
        let w = repo
            .create_workspace(Some(id), true, Default::default())
            .expect("open");
        contents(&w)
    };
    assert_eq!(show(by_edits.id), show(want.id), "edits: {e:?}");
    assert_eq!(by_edits.root, want.root, "edits give the imported root");
    assert_eq!(
        by_ws.root, want.root,
        "the workspace gives the imported root"
    );
    assert!(repo.fsck().expect("fsck").ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn edits_workspace_and_import_agree(t0 in tree(), t1 in tree()) {
        check(t0, t1);
    }
}

#[test]
fn edits_load_only_directories_on_edited_paths_and_move_a_workspace() {
    let (_dir, _b, repo) = mem_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    for d in 0..20 {
        ws.mkdir_path(&format!("d{d}")).expect("mkdir");
        for f in 0..20 {
            ws.write_file(&format!("d{d}/f{f}"), b"x").expect("write");
        }
    }
    let s0 = ws.snapshot(None, Default::default()).expect("snapshot");
    let before = repo.stats().expect("stats");
    let mut e = Edits::new();
    e.set("d3/f1", Edit::Delete).expect("edit");
    e.set(
        "d7",
        Edit::Dir {
            attrs: attrs(0o700),
            opaque: false,
        },
    )
    .expect("edit");
    let s1 = repo
        .commit_edits(
            Some(s0.id),
            Some(s0.id),
            &e,
            Some("edits".into()),
            Default::default(),
            Some(ws.id()),
        )
        .expect("commit");
    // d3, d7 and the root (a page index and the pages holding d3 and d7) re-encoded;
    // the other 18 directories are not re-encoded.
    assert!(s1.metrics.new_objects <= 5, "{:?}", s1.metrics);
    assert_eq!(s1.metrics.changed_paths, 2);
    let after = repo.stats().expect("stats");
    assert_eq!(after.objects, before.objects + s1.metrics.new_objects);
    assert_eq!(
        repo.workspace_record(ws.id()).expect("record").base,
        Some(s1.id)
    );
    // An edit below a file is refused, and nothing lands.
    let mut bad = Edits::new();
    bad.set("d1/f1/x", Edit::Delete).expect("edit");
    assert!(
        repo.commit_edits(
            Some(s1.id),
            Some(s1.id),
            &bad,
            None,
            Default::default(),
            None
        )
        .is_err()
    );
    assert_eq!(repo.stats().expect("stats").snapshots, after.snapshots);
    // A workspace that stands elsewhere does not move.
    assert!(
        repo.commit_edits(
            Some(s0.id),
            Some(s0.id),
            &e,
            None,
            Default::default(),
            Some(ws.id())
        )
        .is_err()
    );
}
