//! Model-based test: random operation sequences applied to workspaces and to a plain
//! `BTreeMap` model; every state, every snapshot, every diff and every fingerprint
//! equality must agree.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use helios_snapshot::{ChangeKind, Ino, Kind, Name, RenameMode, Repo, SnapshotId, Workspace};
use proptest::prelude::*;

use super::{contents, mem_repo};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(u64),
    Symlink(Vec<u8>),
}

/// The model: paths to nodes, file ids to bytes (hard links share an id).
#[derive(Clone, Debug, Default)]
struct Model {
    paths: BTreeMap<String, Node>,
    files: HashMap<u64, Vec<u8>>,
    next: u64,
}

/// A model state without link identity: what a snapshot holds.
type Frozen = BTreeMap<String, Option<Vec<u8>>>;

impl Model {
    fn parent_ok(&self, p: &str) -> bool {
        match p.rfind('/') {
            None => true,
            Some(i) => self.paths.get(&p[..i]) == Some(&Node::Dir),
        }
    }
    fn freeze(&self) -> Frozen {
        self.paths
            .iter()
            .map(|(p, n)| {
                let v = match n {
                    Node::Dir => None,
                    Node::File(id) => Some(self.files[id].clone()),
                    Node::Symlink(t) => {
                        let mut v = b"-> ".to_vec();
                        v.extend(t);
                        Some(v)
                    }
                };
                (p.clone(), v)
            })
            .collect()
    }
    fn thaw(f: &Frozen) -> Model {
        let mut m = Model::default();
        for (p, v) in f {
            let node = match v {
                None => Node::Dir,
                Some(v) if v.starts_with(b"-> ") => Node::Symlink(v[3..].to_vec()),
                Some(v) => {
                    m.next += 1;
                    m.files.insert(m.next, v.clone());
                    Node::File(m.next)
                }
            };
            m.paths.insert(p.clone(), node);
        }
        m
    }
    fn children(&self, p: &str) -> Vec<String> {
        let prefix = format!("{p}/");
        self.paths
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write(usize, u16, Vec<u8>),
    Truncate(usize, u16),
    Mkdir(usize),
    Rmdir(usize),
    Unlink(usize),
    Symlink(usize, u8),
    Link(usize, usize),
    Rename(usize, usize, u8),
    Snapshot,
    Checkout(usize),
    Fork(usize),
    Switch(usize),
    Diff(usize, usize),
    /// In directory PATHS[i] (or the root), write `count` files `n000..` (content from
    /// `seed`): large directories, so directory paging is exercised.
    Bulk(Option<usize>, u8, u8),
    /// Remove every `stride`-th bulk file of a directory.
    BulkUnlink(Option<usize>, u8),
    /// `fsync` in the current workspace: its state survives a crash from now on.
    Sync,
    /// The process dies (kill -9) and the repo is reopened.
    Crash,
}

const PATHS: &[&str] = &[
    "a", "b", "c", "a/a", "a/b", "b/a", "b/c", "a/a/a", "a/a/b", "c/b",
];

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        4 => (p.clone(), 0u16..300, prop::collection::vec(any::<u8>(), 0..40)).prop_map(|(a, o, d)| Op::Write(a, o, d)),
        1 => (p.clone(), 0u16..100).prop_map(|(a, s)| Op::Truncate(a, s)),
        3 => p.clone().prop_map(Op::Mkdir),
        1 => p.clone().prop_map(Op::Rmdir),
        1 => p.clone().prop_map(Op::Unlink),
        1 => (p.clone(), any::<u8>()).prop_map(|(a, t)| Op::Symlink(a, t)),
        1 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Link(a, b)),
        2 => (p.clone(), p.clone(), 0u8..3).prop_map(|(a, b, m)| Op::Rename(a, b, m)),
        2 => Just(Op::Snapshot),
        1 => any::<usize>().prop_map(Op::Checkout),
        1 => any::<usize>().prop_map(Op::Fork),
        1 => any::<usize>().prop_map(Op::Switch),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::Diff(a, b)),
        1 => (prop::option::of(p.clone()), 1u8..200, any::<u8>()).prop_map(|(d, c, s)| Op::Bulk(d, c, s)),
        1 => (prop::option::of(p.clone()), 2u8..5).prop_map(|(d, k)| Op::BulkUnlink(d, k)),
        2 => Just(Op::Sync),
        1 => Just(Op::Crash),
    ]
}

fn split(p: &str) -> (&str, Name) {
    match p.rfind('/') {
        Some(i) => (&p[..i], Name::try_from(&p[i + 1..]).expect("name")),
        None => ("", Name::try_from(p).expect("name")),
    }
}

/// Applies `op` to the model; returns whether it should succeed.
fn apply_model(m: &mut Model, op: &Op) -> bool {
    match op {
        Op::Write(i, off, data) => {
            let p = PATHS[*i];
            let id = match m.paths.get(p) {
                Some(Node::File(id)) => *id,
                Some(_) => return false,
                None if m.parent_ok(p) => {
                    m.next += 1;
                    m.files.insert(m.next, Vec::new());
                    m.paths.insert(p.into(), Node::File(m.next));
                    m.next
                }
                None => return false,
            };
            let f = m.files.get_mut(&id).expect("file");
            if !data.is_empty() {
                let end = *off as usize + data.len();
                if f.len() < end {
                    f.resize(end, 0);
                }
                f[*off as usize..end].copy_from_slice(data);
            }
            true
        }
        Op::Truncate(i, size) => match m.paths.get(PATHS[*i]) {
            Some(Node::File(id)) => {
                m.files.get_mut(id).expect("file").resize(*size as usize, 0);
                true
            }
            _ => false,
        },
        Op::Mkdir(i) => {
            let p = PATHS[*i];
            if m.paths.contains_key(p) || !m.parent_ok(p) {
                return false;
            }
            m.paths.insert(p.into(), Node::Dir);
            true
        }
        Op::Rmdir(i) => {
            let p = PATHS[*i];
            if m.paths.get(p) != Some(&Node::Dir) || !m.children(p).is_empty() {
                return false;
            }
            m.paths.remove(p);
            true
        }
        Op::Unlink(i) => {
            let p = PATHS[*i];
            match m.paths.get(p) {
                Some(Node::Dir) | None => false,
                Some(_) => {
                    m.paths.remove(p);
                    true
                }
            }
        }
        Op::Symlink(i, t) => {
            let p = PATHS[*i];
            if m.paths.contains_key(p) || !m.parent_ok(p) {
                return false;
            }
            m.paths
                .insert(p.into(), Node::Symlink(format!("t{t}").into_bytes()));
            true
        }
        Op::Link(i, j) => {
            let (src, dst) = (PATHS[*i], PATHS[*j]);
            match m.paths.get(src).cloned() {
                Some(Node::Dir) | None => false,
                Some(node) => {
                    if m.paths.contains_key(dst) || !m.parent_ok(dst) {
                        return false;
                    }
                    m.paths.insert(dst.into(), node);
                    true
                }
            }
        }
        Op::Rename(i, j, mode) => rename_model(m, PATHS[*i], PATHS[*j], *mode),
        Op::Bulk(d, count, seed) => {
            let dir = d.map_or("", |i| PATHS[i]);
            if !dir.is_empty() && m.paths.get(dir) != Some(&Node::Dir) {
                return false;
            }
            for k in 0..*count as usize {
                let p = bulk_path(dir, k);
                match m.paths.get(&p) {
                    Some(Node::File(id)) => {
                        *m.files.get_mut(id).expect("file") = bulk_data(*seed, k);
                    }
                    Some(_) => return false,
                    None => {
                        m.next += 1;
                        m.files.insert(m.next, bulk_data(*seed, k));
                        m.paths.insert(p, Node::File(m.next));
                    }
                }
            }
            true
        }
        Op::BulkUnlink(d, stride) => {
            let dir = d.map_or("", |i| PATHS[i]);
            if !dir.is_empty() && m.paths.get(dir) != Some(&Node::Dir) {
                return false;
            }
            for k in (0..256).step_by(*stride as usize) {
                if let Some(Node::File(_)) = m.paths.get(&bulk_path(dir, k)) {
                    m.paths.remove(&bulk_path(dir, k));
                }
            }
            true
        }
        _ => unreachable!(),
    }
}

fn bulk_path(dir: &str, k: usize) -> String {
    if dir.is_empty() {
        format!("n{k:03}")
    } else {
        format!("{dir}/n{k:03}")
    }
}

fn bulk_data(seed: u8, k: usize) -> Vec<u8> {
    // Only a few distinct contents, so that equal states recur across seeds.
    format!("{}:{k}", seed % 3).into_bytes()
}

fn rename_model(m: &mut Model, src: &str, dst: &str, mode: u8) -> bool {
    let Some(sn) = m.paths.get(src).cloned() else {
        return false;
    };
    if !m.parent_ok(dst) {
        return false;
    }
    let src_dir = sn == Node::Dir;
    if src_dir && dst.starts_with(&format!("{src}/")) {
        return false;
    }
    let dn = m.paths.get(dst).cloned();
    match (mode, dn) {
        (2, None) => return false,
        (2, Some(dn)) => {
            if dn == Node::Dir && src.starts_with(&format!("{dst}/")) {
                return false;
            }
            if src == dst {
                return true;
            }
            let move_tree = |m: &Model, from: &str, to: &str| -> Vec<(String, Node)> {
                let mut v = vec![(to.to_string(), m.paths[from].clone())];
                for c in m.children(from) {
                    v.push((format!("{to}{}", &c[from.len()..]), m.paths[&c].clone()));
                }
                v
            };
            let a = move_tree(m, src, dst);
            let b = move_tree(m, dst, src);
            for p in [src, dst] {
                m.paths.remove(p);
                for c in m.children(p) {
                    m.paths.remove(&c);
                }
            }
            m.paths.extend(a);
            m.paths.extend(b);
            return true;
        }
        (1, Some(_)) => return false,
        (_, Some(dn)) => {
            if src == dst || (sn == dn && !src_dir) {
                return true;
            }
            match (src_dir, dn == Node::Dir) {
                (true, false) | (false, true) => return false,
                (true, true) if !m.children(dst).is_empty() => return false,
                _ => {}
            }
            m.paths.remove(dst);
        }
        (_, None) => {}
    }
    let mut moved = vec![(dst.to_string(), sn)];
    for c in m.children(src) {
        moved.push((format!("{dst}{}", &c[src.len()..]), m.paths[&c].clone()));
        m.paths.remove(&c);
    }
    m.paths.remove(src);
    m.paths.extend(moved);
    true
}

fn apply_ws(ws: &Workspace, op: &Op) -> bool {
    let res: helios_snapshot::Result<()> = (|| {
        match op {
            Op::Write(i, off, data) => {
                let p = PATHS[*i];
                let ino = match ws.resolve(p) {
                    Ok(ino) => ino,
                    Err(helios_snapshot::Error::NoEntry(_)) => {
                        let (dir, name) = split(p);
                        let parent = ws.resolve(dir)?;
                        ws.create(parent, &name, Kind::File, 0o644, 0, 0)?.ino
                    }
                    Err(e) => return Err(e),
                };
                if ws.getattr(ino)?.kind != Kind::File {
                    return Err(helios_snapshot::Error::InvalidArgument("not a file".into()));
                }
                if !data.is_empty() {
                    ws.write(ino, *off as u64, data)?;
                }
            }
            Op::Truncate(i, size) => {
                let ino = ws.resolve(PATHS[*i])?;
                if ws.getattr(ino)?.kind != Kind::File {
                    return Err(helios_snapshot::Error::InvalidArgument("not a file".into()));
                }
                ws.setattr(
                    ino,
                    helios_snapshot::SetAttr {
                        size: Some(*size as u64),
                        ..Default::default()
                    },
                )?;
            }
            Op::Mkdir(i) => {
                let (dir, name) = split(PATHS[*i]);
                ws.mkdir(ws.resolve(dir)?, &name, 0o755, 0, 0)?;
            }
            Op::Rmdir(i) => {
                let (dir, name) = split(PATHS[*i]);
                ws.rmdir(ws.resolve(dir)?, &name)?;
            }
            Op::Unlink(i) => {
                let (dir, name) = split(PATHS[*i]);
                ws.unlink(ws.resolve(dir)?, &name)?;
            }
            Op::Symlink(i, t) => {
                let (dir, name) = split(PATHS[*i]);
                ws.symlink(ws.resolve(dir)?, &name, format!("t{t}").as_bytes(), 0, 0)?;
            }
            Op::Link(i, j) => {
                let src = ws.resolve(PATHS[*i])?;
                let (dir, name) = split(PATHS[*j]);
                ws.link(src, ws.resolve(dir)?, &name)?;
            }
            Op::Rename(i, j, mode) => {
                let (sd, sn) = split(PATHS[*i]);
                let (dd, dn) = split(PATHS[*j]);
                let mode = [
                    RenameMode::Replace,
                    RenameMode::NoReplace,
                    RenameMode::Exchange,
                ][*mode as usize];
                ws.rename(ws.resolve(sd)?, &sn, ws.resolve(dd)?, &dn, mode)?;
            }
            Op::Bulk(d, count, seed) => {
                let dir = d.map_or("", |i| PATHS[i]);
                let parent = ws.resolve(dir)?;
                if ws.getattr(parent)?.kind != Kind::Dir {
                    return Err(helios_snapshot::Error::NotADirectory(dir.into()));
                }
                for k in 0..*count as usize {
                    let p = bulk_path(dir, k);
                    if let Ok(ino) = ws.resolve(&p)
                        && ws.getattr(ino)?.kind != Kind::File
                    {
                        return Err(helios_snapshot::Error::InvalidArgument("not a file".into()));
                    }
                    ws.write_file(&p, &bulk_data(*seed, k))?;
                }
            }
            Op::BulkUnlink(d, stride) => {
                let dir = d.map_or("", |i| PATHS[i]);
                let parent = ws.resolve(dir)?;
                if ws.getattr(parent)?.kind != Kind::Dir {
                    return Err(helios_snapshot::Error::NotADirectory(dir.into()));
                }
                for k in (0..256).step_by(*stride as usize) {
                    if let Ok(ino) = ws.resolve(&bulk_path(dir, k))
                        && ws.getattr(ino)?.kind == Kind::File
                    {
                        let (_, name) = split(&bulk_path(dir, k));
                        ws.unlink(parent, &name)?;
                    }
                }
            }
            _ => unreachable!(),
        }
        Ok(())
    })();
    res.is_ok()
}

fn frozen_of(ws: &Workspace) -> Frozen {
    contents(ws).into_iter().collect()
}

fn model_diff(a: &Frozen, b: &Frozen) -> BTreeSet<(String, ChangeKind)> {
    let mut out = BTreeSet::new();
    for (p, va) in a {
        match b.get(p) {
            None => {
                out.insert((p.clone(), ChangeKind::Deleted));
            }
            Some(vb) if va.is_none() != vb.is_none() => {
                out.insert((p.clone(), ChangeKind::Deleted));
                out.insert((p.clone(), ChangeKind::Added));
            }
            Some(vb) if va != vb => {
                out.insert((p.clone(), ChangeKind::Modified));
            }
            _ => {}
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            out.insert((p.clone(), ChangeKind::Added));
        }
    }
    out
}

/// What a crash must bring a workspace back to: the state of its last sync (or commit,
/// checkout, creation), where a file's content may also be any its file had since (an
/// own copy keeps its newest bytes, whatever its names became).
#[derive(Default)]
struct Durable {
    synced: Frozen,
    /// Path -> model file id, at the sync.
    ids: HashMap<String, u64>,
    /// Model file id -> every content it had since the sync.
    since: HashMap<u64, BTreeSet<Vec<u8>>>,
}

impl Durable {
    fn at(m: &Model) -> Durable {
        let ids = m
            .paths
            .iter()
            .filter_map(|(p, n)| match n {
                Node::File(id) => Some((p.clone(), *id)),
                _ => None,
            })
            .collect();
        Durable {
            synced: m.freeze(),
            ids,
            since: HashMap::new(),
        }
    }

    fn saw(&mut self, m: &Model) {
        for (id, data) in &m.files {
            self.since.entry(*id).or_default().insert(data.clone());
        }
    }

    /// Checks a recovered state against what was durable.
    fn check(&self, got: &Frozen, step: usize) {
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            self.synced.keys().collect::<Vec<_>>(),
            "step {step}: names after the crash are those of the last sync"
        );
        for (p, v) in got {
            let want = &self.synced[p];
            let later = v.as_ref().is_some_and(|v| {
                self.ids
                    .get(p)
                    .and_then(|id| self.since.get(id))
                    .is_some_and(|s| s.contains(v))
            });
            assert!(
                v == want || later,
                "step {step}: {p} came back as {v:?}, synced as {want:?}"
            );
        }
    }
}

/// The model of a workspace as it is, hard links (one inode, several names) included.
fn model_of(ws: &Workspace) -> Model {
    let mut m = Model::default();
    let mut ids: HashMap<Ino, u64> = HashMap::new();
    for (p, v) in contents(ws) {
        let node = match v {
            None => Node::Dir,
            Some(v) if v.starts_with(b"-> ") => Node::Symlink(v[3..].to_vec()),
            Some(v) => {
                let ino = ws.resolve(&p).expect("resolve");
                let id = *ids.entry(ino).or_insert_with(|| {
                    m.next += 1;
                    m.next
                });
                m.files.insert(id, v);
                Node::File(id)
            }
        };
        m.paths.insert(p, node);
    }
    m
}

fn run(ops: Vec<Op>) {
    let (dir, backend, repo) = mem_repo();
    let mut repo: Arc<Repo> = Arc::new(repo);
    // Every workspace keeps a quota it never reaches, so its usage is checked as well.
    let quota = Some(helios_snapshot::Quota {
        bytes: Some(1 << 50),
        inodes: Some(1 << 40),
    });
    let mut spaces = vec![(
        repo.create_workspace_with(None, false, Default::default(), quota)
            .expect("create"),
        Model::default(),
    )];
    let mut durable = vec![Durable::default()];
    let mut cur = 0;
    let mut snaps: Vec<(SnapshotId, helios_snapshot::Hash, Frozen)> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let (ws, model) = &mut spaces[cur];
        match op {
            Op::Snapshot => {
                let s = ws.snapshot(None, Default::default()).expect("snapshot");
                snaps.push((s.id, s.root, model.freeze()));
                durable[cur] = Durable::at(model);
            }
            Op::Checkout(k) if !snaps.is_empty() => {
                let (id, _, frozen) = &snaps[k % snaps.len()];
                ws.checkout(*id, true).expect("checkout");
                *model = Model::thaw(frozen);
                durable[cur] = Durable::at(model);
            }
            Op::Fork(k) if !snaps.is_empty() => {
                let (id, _, frozen) = &snaps[k % snaps.len()];
                let ws = repo
                    .create_workspace_with(Some(*id), false, Default::default(), quota)
                    .expect("fork");
                let m = Model::thaw(frozen);
                durable.push(Durable::at(&m));
                spaces.push((ws, m));
                cur = spaces.len() - 1;
            }
            Op::Sync => {
                ws.sync().expect("sync");
                durable[cur] = Durable::at(model);
            }
            Op::Crash => {
                let ids: Vec<_> = spaces.iter().map(|(w, _)| w.id()).collect();
                spaces.clear();
                drop(repo);
                repo = Arc::new(
                    Repo::open_with(
                        dir.path(),
                        Arc::new(backend.clone()) as Arc<dyn helios_snapshot::store::Backend>,
                        64 << 20,
                    )
                    .expect("reopen after the crash"),
                );
                for (k, id) in ids.into_iter().enumerate() {
                    let ws = repo.open_workspace(id).expect("reopen workspace");
                    durable[k].check(&frozen_of(&ws), step);
                    let m = model_of(&ws);
                    durable[k] = Durable::at(&m);
                    spaces.push((ws, m));
                }
            }
            Op::Switch(k) => cur = k % spaces.len(),
            Op::Diff(i, j) if !snaps.is_empty() => {
                let (a, b) = (&snaps[i % snaps.len()], &snaps[j % snaps.len()]);
                let got: BTreeSet<_> = repo
                    .diff(a.0, b.0)
                    .expect("diff")
                    .into_iter()
                    .map(|c| (c.path, c.kind))
                    .collect();
                assert_eq!(
                    got,
                    model_diff(&a.2, &b.2),
                    "step {step}: diff {} {}",
                    a.0,
                    b.0
                );
            }
            Op::Checkout(_) | Op::Fork(_) | Op::Diff(..) => {}
            op => {
                let want = apply_model(model, op);
                let got = apply_ws(ws, op);
                assert_eq!(
                    got, want,
                    "step {step}: {op:?} succeeded={got}, model says {want}"
                );
                durable[cur].saw(model);
            }
        }
        let (ws, model) = &spaces[cur];
        assert_eq!(frozen_of(ws), model.freeze(), "step {step}: after {op:?}");
        assert_eq!(
            ws.usage(),
            Some(super::walked(ws)),
            "step {step}: usage after {op:?}"
        );
    }
    // Every snapshot holds what the model froze, and equal content <=> equal root.
    for (id, root, frozen) in &snaps {
        let ws = repo
            .create_workspace(Some(*id), true, Default::default())
            .expect("open snapshot");
        assert_eq!(&frozen_of(&ws), frozen, "snapshot {id}");
        for (id2, root2, frozen2) in &snaps {
            assert_eq!(
                root == root2,
                frozen == frozen2,
                "fingerprints of {id} and {id2}"
            );
        }
    }
    let fsck = repo.fsck().expect("fsck");
    assert!(fsck.ok(), "{:?}", fsck.errors);
    let _ = Ino::ROOT;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn workspace_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
