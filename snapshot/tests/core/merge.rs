//! Merge of sibling snapshots, checked against a simple reference: a three-way merge of
//! flat path maps. Both sides are made from a common base by random edits (keep,
//! delete, rewrite, edit or append a line, chmod, a file becoming a directory and back);
//! the merge must give the reference's tree (same fingerprint as importing it) or the
//! reference's conflicting paths, and write nothing when it conflicts.

use proptest::prelude::*;

use helios_snapshot::{Edits, Error, Repo, Snapshot, SnapshotId};

use super::edits::{N, PATHS, T, children, edits_of, materialize, parent};
use super::mem_repo;

const WORDS: &[&str] = &["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];

fn text(words: &[u8]) -> Vec<u8> {
    words
        .iter()
        .flat_map(|w| format!("{}\n", WORDS[*w as usize % WORDS.len()]).into_bytes())
        .collect()
}

/// A base tree whose files are short texts.
fn base() -> impl Strategy<Value = T> {
    prop::collection::vec(
        (0u8..5, 0u8..2, prop::collection::vec(0u8..6, 3..8)),
        PATHS.len(),
    )
    .prop_map(|choices| {
        let mut t = T::new();
        for (p, (kind, m, words)) in PATHS.iter().zip(choices) {
            if parent(p).is_some_and(|q| !matches!(t.get(q), Some(N::Dir(_)))) {
                continue;
            }
            let node = match kind {
                0 => continue,
                1 | 2 => N::Dir([0o755, 0o700][m as usize]),
                3 => N::File([0o644, 0o600][m as usize], text(&words)),
                _ => N::Link(format!("t{m}").into_bytes()),
            };
            t.insert(p.to_string(), node);
        }
        t
    })
}

/// How one side changes one path of the base.
type Mutation = (u8, usize, Vec<u8>);

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(
        (0u8..14, 0usize..8, prop::collection::vec(0u8..6, 1..6)),
        PATHS.len(),
    )
}

/// The base changed by `muts`, one per path, parents before children.
fn side(t0: &T, muts: &[Mutation]) -> T {
    let mut t = T::new();
    for (p, (what, line, words)) in PATHS.iter().zip(muts) {
        if parent(p).is_some_and(|q| !matches!(t.get(q), Some(N::Dir(_)))) {
            continue;
        }
        let was = t0.get(*p);
        let node = match (*what, was) {
            (0..=6, Some(n)) => Some(n.clone()),
            (0..=6, None) => None,
            (7, _) => None,
            (8, Some(N::Dir(m))) => Some(N::Dir(m ^ 0o055)),
            (8, _) => Some(N::Dir(0o755)),
            (9, _) => Some(N::File(0o644, text(words))),
            (10 | 11, Some(N::File(m, data))) => {
                let mut lines: Vec<Vec<u8>> = data
                    .split_inclusive(|b| *b == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect();
                if *what == 10 && !lines.is_empty() {
                    let i = line % lines.len();
                    lines[i] = text(&words[..1]);
                } else {
                    lines.push(text(&words[..1]));
                }
                Some(N::File(*m, lines.concat()))
            }
            (12, Some(N::File(m, data))) => Some(N::File(m ^ 0o044, data.clone())),
            (12, Some(N::Link(t))) => Some(N::Link([t.as_slice(), b"x"].concat())),
            (_, Some(n)) => Some(n.clone()),
            (_, None) => None,
        };
        if let Some(n) = node {
            t.insert(p.to_string(), n);
        }
    }
    t
}

/// `p` and everything below it.
fn sub<'a>(t: &'a T, p: &str) -> Vec<(&'a String, &'a N)> {
    let below = format!("{p}/");
    t.iter()
        .filter(|(k, _)| *k == p || k.starts_with(&below))
        .collect()
}

fn pick3<X: PartialEq + Clone>(o: Option<&X>, a: &X, b: &X) -> Option<X> {
    if a == b || o == Some(b) {
        Some(a.clone())
    } else if o == Some(a) {
        Some(b.clone())
    } else {
        None
    }
}

/// The reference: the three-way rule, path by path, on flat maps.
struct Reference<'a> {
    o: &'a T,
    a: &'a T,
    b: &'a T,
    out: T,
    conflicts: Vec<String>,
}

impl Reference<'_> {
    fn entry(&mut self, p: &str) {
        let (o, a, b) = (self.o, self.a, self.b);
        let take = |out: &mut T, t: &T| {
            for (k, n) in sub(t, p) {
                out.insert(k.clone(), n.clone());
            }
        };
        if sub(a, p) == sub(b, p) || sub(o, p) == sub(b, p) {
            return take(&mut self.out, a);
        }
        if sub(o, p) == sub(a, p) {
            return take(&mut self.out, b);
        }
        match (o.get(p), a.get(p), b.get(p)) {
            (_, Some(N::Dir(_)), Some(N::Dir(_)))
            | (Some(N::Dir(_)), Some(N::Dir(_)), None)
            | (Some(N::Dir(_)), None, Some(N::Dir(_))) => self.dir(p),
            (no, Some(N::File(ma, da)), Some(N::File(mb, db))) => {
                let (mo, dd) = match no {
                    Some(N::File(m, d)) => (Some(m), Some(d)),
                    _ => (None, None),
                };
                let mode = pick3(mo, ma, mb);
                let data = pick3(dd, da, db).or_else(|| {
                    let empty = Vec::new();
                    let dd = dd.unwrap_or(&empty);
                    if [dd, da, db].iter().any(|d| d.contains(&0)) {
                        return None;
                    }
                    diffy::merge_bytes(dd, da, db).ok()
                });
                match (mode, data) {
                    (Some(m), Some(d)) => {
                        self.out.insert(p.to_string(), N::File(m, d));
                    }
                    _ => self.conflicts.push(p.to_string()),
                }
            }
            _ => self.conflicts.push(p.to_string()),
        }
    }

    fn dir(&mut self, p: &str) {
        let mode_of = |t: &T| match t.get(p) {
            Some(N::Dir(m)) => Some(*m),
            _ => None,
        };
        let mo = mode_of(self.o);
        let (ma, mb) = (mode_of(self.a), mode_of(self.b));
        // A side that deleted the directory kept the base's mode.
        let (sa, sb) = (ma.or(mo).unwrap_or(0), mb.or(mo).unwrap_or(0));
        let mode = pick3(mo.as_ref(), &sa, &sb);
        if mode.is_none() {
            self.conflicts.push(p.to_string());
        }
        let mut names: Vec<&str> = children(self.a, p);
        names.extend(children(self.b, p));
        names.sort();
        names.dedup();
        let before = self.out.len();
        for n in names {
            self.entry(n);
        }
        if self.out.len() == before && (ma.is_none() || mb.is_none()) {
            return;
        }
        self.out.insert(p.to_string(), N::Dir(mode.unwrap_or(sa)));
    }
}

fn reference(o: &T, a: &T, b: &T) -> Result<T, Vec<String>> {
    let mut r = Reference {
        o,
        a,
        b,
        out: T::new(),
        conflicts: Vec::new(),
    };
    let mut names: Vec<&str> = children(a, "");
    names.extend(children(b, ""));
    names.sort();
    names.dedup();
    for n in names {
        r.entry(n);
    }
    if r.conflicts.is_empty() {
        Ok(r.out)
    } else {
        r.conflicts.sort();
        Err(r.conflicts)
    }
}

/// `t` imported as a root snapshot.
fn import(repo: &Repo, t: &T) -> Snapshot {
    let scratch = tempfile::tempdir().expect("tempdir");
    materialize(scratch.path(), t);
    repo.import(scratch.path(), None).expect("import")
}

/// `t1` committed as a child of `s0`, whose tree is `t0`.
fn child(repo: &Repo, s0: SnapshotId, t0: &T, t1: &T) -> Snapshot {
    let data = tempfile::tempdir().expect("tempdir");
    let mut e = Edits::new();
    edits_of(t0, t1, "", false, data.path(), &mut e);
    repo.commit_edits(Some(s0), Some(s0), &e, None, Default::default(), None)
        .expect("commit edits")
}

fn check(t0: T, ta: T, tb: T) {
    let (_dir, _b, repo) = mem_repo();
    let s0 = import(&repo, &t0);
    let sa = child(&repo, s0.id, &t0, &ta);
    let sb = child(&repo, s0.id, &t0, &tb);
    assert_eq!(repo.merge_base(sa.id, sb.id).expect("base"), Some(s0.id));
    let count = repo.snapshots().expect("list").len();
    let want = reference(&t0, &ta, &tb);
    match (repo.merge(sa.id, sb.id, Default::default()), want) {
        (Ok(m), Ok(tm)) => {
            let imported = import(&repo, &tm);
            assert_eq!(m.root, imported.root, "merged tree: want {tm:?}");
            assert_eq!((m.parent, m.merged), (Some(sa.id), Some(sb.id)));
            assert_eq!(
                m.metrics.changed_paths,
                repo.diff(sa.id, m.id).expect("diff").len() as u64,
                "changed paths count the difference from the parent"
            );
        }
        (Err(Error::Conflict(mut got)), Err(want)) => {
            got.sort();
            assert_eq!(got, want, "conflicting paths");
            assert_eq!(
                repo.snapshots().expect("list").len(),
                count,
                "a conflicted merge writes no snapshot"
            );
        }
        (got, want) => panic!("merge gave {got:?}, the reference {want:?}"),
    }
    assert!(repo.fsck().expect("fsck").ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn merge_agrees_with_the_reference(
        t0 in base(),
        ma in mutations(),
        mb in mutations(),
    ) {
        let (ta, tb) = (side(&t0, &ma), side(&t0, &mb));
        check(t0, ta, tb);
    }
}

fn file(data: &str) -> N {
    N::File(0o644, data.as_bytes().to_vec())
}

fn tree(entries: &[(&str, N)]) -> T {
    entries
        .iter()
        .map(|(p, n)| (p.to_string(), n.clone()))
        .collect()
}

#[test]
fn disjoint_edits_merge_and_overlapping_ones_name_their_paths() {
    let (_dir, _b, repo) = mem_repo();
    let t0 = tree(&[
        ("a", N::Dir(0o755)),
        ("a/f", file("one\ntwo\nthree\nfour\nfive\n")),
        ("b", file("b\n")),
        ("c", file("c\n")),
    ]);
    let ta = tree(&[
        ("a", N::Dir(0o755)),
        ("a/f", file("ONE\ntwo\nthree\nfour\nfive\n")),
        ("b", file("b from a\n")),
        ("c", file("c\n")),
        ("new_a", file("x\n")),
    ]);
    let tb = tree(&[
        ("a", N::Dir(0o755)),
        ("a/f", file("one\ntwo\nthree\nfour\nFIVE\n")),
        ("b", file("b from b\n")),
        ("new_b", file("y\n")),
    ]);
    let s0 = import(&repo, &t0);
    let sa = child(&repo, s0.id, &t0, &ta);
    let sb = child(&repo, s0.id, &t0, &tb);
    match repo.merge(sa.id, sb.id, Default::default()) {
        Err(Error::Conflict(paths)) => assert_eq!(paths, vec!["b".to_string()]),
        other => panic!("want a conflict on b, got {other:?}"),
    }
    let message = repo
        .merge(sa.id, sb.id, Default::default())
        .expect_err("conflict")
        .to_string();
    assert!(
        message.contains("merge conflict in 1 path(s): b"),
        "{message}"
    );

    // Without the overlapping edit of b, everything merges: the line edits of a/f at
    // both ends, c deleted on one side, a file added on each.
    let tb2 = tree(&[
        ("a", N::Dir(0o755)),
        ("a/f", file("one\ntwo\nthree\nfour\nFIVE\n")),
        ("b", file("b\n")),
        ("new_b", file("y\n")),
    ]);
    let sb2 = child(&repo, s0.id, &t0, &tb2);
    let m = repo
        .merge(sa.id, sb2.id, Default::default())
        .expect("merge");
    let want = tree(&[
        ("a", N::Dir(0o755)),
        ("a/f", file("ONE\ntwo\nthree\nfour\nFIVE\n")),
        ("b", file("b from a\n")),
        ("new_a", file("x\n")),
        ("new_b", file("y\n")),
    ]);
    assert_eq!(m.root, import(&repo, &want).root);
    assert_eq!(m.metrics.changed_paths, 3, "a/f, c and new_b differ from a");
}

#[test]
fn merging_again_after_a_merge_uses_the_merge_as_the_base() {
    let (_dir, _b, repo) = mem_repo();
    let t0 = tree(&[("f", file("1\n2\n3\n4\n5\n6\n")), ("g", file("g\n"))]);
    let s0 = import(&repo, &t0);
    let t1 = tree(&[("f", file("1\n2\n3\n4\n5\n6\n")), ("g", file("g1\n"))]);
    let main1 = child(&repo, s0.id, &t0, &t1);
    let t2 = tree(&[("f", file("one\n2\n3\n4\n5\n6\n")), ("g", file("g\n"))]);
    let side1 = child(&repo, s0.id, &t0, &t2);
    let m1 = repo
        .merge(main1.id, side1.id, Default::default())
        .expect("merge 1");
    // The side goes on editing the same line; main does not touch f.
    let t3 = tree(&[("f", file("ONE\n2\n3\n4\n5\n6\n")), ("g", file("g\n"))]);
    let side2 = child(&repo, side1.id, &t2, &t3);
    assert_eq!(
        repo.merge_base(m1.id, side2.id).expect("base"),
        Some(side1.id),
        "the merged-in side is an ancestor of the merge"
    );
    let m2 = repo
        .merge(m1.id, side2.id, Default::default())
        .expect("merge 2");
    let want = tree(&[("f", file("ONE\n2\n3\n4\n5\n6\n")), ("g", file("g1\n"))]);
    assert_eq!(m2.root, import(&repo, &want).root);
}

#[test]
fn an_ancestor_merges_as_the_descendant_and_unrelated_snapshots_refuse() {
    let (_dir, _b, repo) = mem_repo();
    let t0 = tree(&[("f", file("a\n"))]);
    let t1 = tree(&[("f", file("b\n")), ("g", file("g\n"))]);
    let s0 = import(&repo, &t0);
    let s1 = child(&repo, s0.id, &t0, &t1);
    let m = repo.merge(s0.id, s1.id, Default::default()).expect("merge");
    assert_eq!((m.root, m.parent), (s1.root, Some(s0.id)));
    let m = repo.merge(s1.id, s0.id, Default::default()).expect("merge");
    assert_eq!((m.root, m.parent), (s1.root, Some(s1.id)));
    assert_eq!(m.metrics.changed_paths, 0);

    let other = import(&repo, &t1);
    let count = repo.snapshots().expect("list").len();
    match repo.merge(s1.id, other.id, Default::default()) {
        Err(Error::NoCommonAncestor(a, b)) => assert_eq!((a, b), (s1.id, other.id)),
        got => panic!("want no common ancestor, got {got:?}"),
    }
    match repo.merge(s1.id, SnapshotId(9999), Default::default()) {
        Err(Error::SnapshotNotFound(id)) => assert_eq!(id, SnapshotId(9999)),
        got => panic!("want not found, got {got:?}"),
    }
    assert_eq!(
        repo.snapshots().expect("list").len(),
        count,
        "nothing written"
    );
}

#[test]
fn binary_and_large_files_changed_on_both_sides_conflict() {
    let (_dir, _b, repo) = mem_repo();
    // Edits at both ends, which would merge line by line in a small text file.
    let lines = helios_snapshot::LINE_MERGE_MAX as usize / 2;
    let big = |first: &str, last: &str| {
        N::File(
            0o644,
            format!("{first}\n{}{last}\n", "l\n".repeat(lines)).into_bytes(),
        )
    };
    let t0 = tree(&[
        ("bin", N::File(0o644, b"\0a\nb\nc\nd\n".to_vec())),
        ("big", big("l", "l")),
    ]);
    let ta = tree(&[
        ("bin", N::File(0o644, b"\0A\nb\nc\nd\n".to_vec())),
        ("big", big("A", "l")),
    ]);
    let tb = tree(&[
        ("bin", N::File(0o644, b"\0a\nb\nc\nD\n".to_vec())),
        ("big", big("l", "B")),
    ]);
    let s0 = import(&repo, &t0);
    let sa = child(&repo, s0.id, &t0, &ta);
    let sb = child(&repo, s0.id, &t0, &tb);
    match repo.merge(sa.id, sb.id, Default::default()) {
        Err(Error::Conflict(paths)) => assert_eq!(paths, vec!["big", "bin"]),
        got => panic!("want conflicts, got {got:?}"),
    }
}

/// A merge whose write fails once (disk full, failed sync) writes no snapshot; the retry
/// stores the merged file again and survives a power cut and a cold reopen.
#[test]
fn a_merge_retried_after_a_failed_write_keeps_its_data() {
    use helios_snapshot::store::{Backend, Fault, FaultyBackend, MemBackend};
    use std::sync::Arc;
    for fault in [Fault::NoSpaceOnce, Fault::SyncFailsOnce] {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = MemBackend::new();
        let open = |b: Arc<dyn Backend>| Repo::open_with(dir.path(), b, 64 << 20).expect("open");
        let t0 = tree(&[("f", file("1\n2\n3\n4\n5\n"))]);
        let ta = tree(&[("f", file("one\n2\n3\n4\n5\n"))]);
        let tb = tree(&[("f", file("1\n2\n3\n4\nfive\n"))]);
        let (a, b) = {
            let repo = open(Arc::new(inner.clone()));
            let s0 = import(&repo, &t0);
            let a = child(&repo, s0.id, &t0, &ta).id;
            (a, child(&repo, s0.id, &t0, &tb).id)
        };
        let faulty = Arc::new(FaultyBackend::new(inner.clone(), 0, fault));
        let repo = open(faulty.clone());
        let count = repo.snapshots().expect("list").len();
        let err = repo
            .merge(a, b, Default::default())
            .expect_err("the write fails once");
        assert!(!matches!(err, Error::Conflict(_)), "{fault:?}: {err}");
        // A full disk wrote nothing. A failed sync left the batch written but not
        // durable (the store's rule for every commit; the retry's sync covers it), so
        // its snapshot is listed although the merge reported an error.
        let written = usize::from(fault == Fault::SyncFailsOnce);
        assert_eq!(
            repo.snapshots().expect("list").len(),
            count + written,
            "{fault:?}"
        );
        let m = repo.merge(a, b, Default::default()).expect("the retry");
        if fault == Fault::NoSpaceOnce {
            assert!(m.metrics.new_objects >= 2, "{fault:?}: {:?}", m.metrics);
        }
        drop(repo);
        inner.power_cut();
        let repo = open(Arc::new(inner.clone()));
        let want = tree(&[("f", file("one\n2\n3\n4\nfive\n"))]);
        assert_eq!(
            repo.snapshot(m.id).expect("merge").root,
            import(&repo, &want).root
        );
        let fsck = repo.fsck().expect("fsck");
        assert!(fsck.ok(), "{fault:?}: {:?}", fsck.errors);
    }
}

/// Extended attributes merge like modes: one side's new xattr and the other side's line
/// edit both land in the merged file; two different values of one xattr conflict.
#[test]
fn extended_attributes_merge_three_way() {
    use helios_snapshot::Edit;
    let (_dir, _b, repo) = mem_repo();
    let data = tempfile::tempdir().expect("tempdir");
    let t0 = tree(&[("f", file("1\n2\n3\n4\n5\n"))]);
    let s0 = import(&repo, &t0);
    let commit = |over: SnapshotId, name: &str, body: &str, xattr: Option<&[u8]>| {
        let src = data.path().join(name);
        std::fs::write(&src, body).expect("write");
        let mut attrs = super::edits::attrs(0o644);
        attrs.xattrs = xattr
            .map(|v| vec![(b"user.tag".to_vec(), v.to_vec())])
            .unwrap_or_default();
        let mut e = Edits::new();
        e.set("f", Edit::File { attrs, source: src }).expect("edit");
        repo.commit_edits(Some(over), Some(over), &e, None, Default::default(), None)
            .expect("commit")
    };
    let a = commit(s0.id, "a", "1\n2\n3\n4\n5\n", Some(b"x"));
    let b = commit(s0.id, "b", "1\n2\n3\n4\nfive\n", None);
    let m = repo.merge(a.id, b.id, Default::default()).expect("merge");
    match repo.entry_at(m.id, "f").expect("entry") {
        Some(helios_snapshot::tree::EntryKind::File { attrs, content }) => {
            assert_eq!(attrs.xattrs, vec![(b"user.tag".to_vec(), b"x".to_vec())]);
            let mut bytes = Vec::new();
            helios_snapshot::tree::write_content(repo.store(), &content, &mut bytes).expect("read");
            assert_eq!(bytes, b"1\n2\n3\n4\nfive\n");
        }
        other => panic!("want a file, got {other:?}"),
    }
    let c = commit(s0.id, "c", "1\n2\n3\n4\n5\n", Some(b"y"));
    match repo.merge(a.id, c.id, Default::default()) {
        Err(Error::Conflict(paths)) => assert_eq!(paths, vec!["f"]),
        got => panic!("want a conflict on f, got {got:?}"),
    }
}
