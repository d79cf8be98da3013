//! Differences between two snapshots, pruned by equal subtree fingerprints:
//! O(differences × depth), not O(tree).

use serde::Serialize;

use crate::error::Result;
use crate::ids::SnapshotId;
use crate::repo::Repo;
use crate::store::Store;
use crate::tree::{DirNode, EntryKind, Merged, merge_entries};

/// What happened to a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// In `b`, not in `a`.
    Added,
    /// In both, with different content or attributes (mtimes aside).
    Modified,
    /// In `a`, not in `b`.
    Deleted,
}

/// One changed path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `/`-separated, relative to the root; directories end without a slash.
    pub path: String,
    /// What happened.
    pub kind: ChangeKind,
    /// Size in `b` (in `a` for deletions); 0 for directories.
    pub size: u64,
}

impl Repo {
    /// The paths that differ between snapshots `a` and `b`, in path order.
    pub fn diff(&self, a: SnapshotId, b: SnapshotId) -> Result<Vec<Change>> {
        let (sa, sb) = (self.snapshot(a)?, self.snapshot(b)?);
        let mut out = Vec::new();
        if sa.root != sb.root {
            let na = DirNode::load(self.store(), &sa.tree)?;
            let nb = DirNode::load(self.store(), &sb.tree)?;
            if na.attrs.mode != nb.attrs.mode
                || na.attrs.uid != nb.attrs.uid
                || na.attrs.gid != nb.attrs.gid
                || na.attrs.xattrs != nb.attrs.xattrs
            {
                out.push(Change {
                    path: String::new(),
                    kind: ChangeKind::Modified,
                    size: 0,
                });
            }
            diff_dirs(self.store(), "", &na, &nb, &mut out)?;
        }
        Ok(out)
    }
}

fn size_of(k: &EntryKind) -> u64 {
    match k {
        EntryKind::File { content, .. } => content.size,
        EntryKind::Symlink { target, .. } => target.len() as u64,
        _ => 0,
    }
}

fn diff_dirs(
    store: &Store,
    prefix: &str,
    a: &DirNode,
    b: &DirNode,
    out: &mut Vec<Change>,
) -> Result<()> {
    for step in merge_entries(&a.entries, &b.entries) {
        match step {
            Merged::Left(name, k) => {
                all(
                    store,
                    &format!("{prefix}{name}"),
                    k,
                    ChangeKind::Deleted,
                    out,
                )?;
            }
            Merged::Right(name, k) => {
                all(store, &format!("{prefix}{name}"), k, ChangeKind::Added, out)?;
            }
            Merged::Both(name, ka, kb) => {
                both(store, &format!("{prefix}{name}"), ka, kb, out)?;
            }
        }
    }
    Ok(())
}

/// The changes at `path` from entry `a` to entry `b` (`None`: absent).
pub(crate) fn entries(
    store: &Store,
    path: &str,
    a: Option<&EntryKind>,
    b: Option<&EntryKind>,
    out: &mut Vec<Change>,
) -> Result<()> {
    match (a, b) {
        (None, None) => Ok(()),
        (Some(k), None) => all(store, path, k, ChangeKind::Deleted, out),
        (None, Some(k)) => all(store, path, k, ChangeKind::Added, out),
        (Some(ka), Some(kb)) => both(store, path, ka, kb, out),
    }
}

/// The changes at `path`, present in both.
fn both(
    store: &Store,
    path: &str,
    ka: &EntryKind,
    kb: &EntryKind,
    out: &mut Vec<Change>,
) -> Result<()> {
    let path = path.to_string();
    match (ka, kb) {
        (
            EntryKind::Dir {
                node: ha, fp: fa, ..
            },
            EntryKind::Dir {
                node: hb, fp: fb, ..
            },
        ) => {
            if fa != fb {
                let da = DirNode::load(store, ha)?;
                let db = DirNode::load(store, hb)?;
                let mut attrs_a = da.attrs.clone();
                attrs_a.mtime = db.attrs.mtime;
                if attrs_a != db.attrs {
                    out.push(Change {
                        path: path.clone(),
                        kind: ChangeKind::Modified,
                        size: 0,
                    });
                }
                diff_dirs(store, &format!("{path}/"), &da, &db, out)?;
            }
        }
        (EntryKind::Dir { .. }, _) | (_, EntryKind::Dir { .. }) => {
            all(store, &path, ka, ChangeKind::Deleted, out)?;
            all(store, &path, kb, ChangeKind::Added, out)?;
        }
        _ => {
            if !same_ignoring_mtime(ka, kb) {
                out.push(Change {
                    path,
                    kind: ChangeKind::Modified,
                    size: size_of(kb),
                });
            }
        }
    }
    Ok(())
}

fn same_ignoring_mtime(a: &EntryKind, b: &EntryKind) -> bool {
    let strip = |k: &EntryKind| {
        let mut k = k.clone();
        if let EntryKind::File { attrs, .. }
        | EntryKind::Symlink { attrs, .. }
        | EntryKind::Special { attrs, .. } = &mut k
        {
            attrs.mtime = 0;
        }
        k
    };
    strip(a) == strip(b)
}

/// Reports `path` and, for a directory, everything below it.
fn all(
    store: &Store,
    path: &str,
    k: &EntryKind,
    kind: ChangeKind,
    out: &mut Vec<Change>,
) -> Result<()> {
    out.push(Change {
        path: path.to_string(),
        kind,
        size: size_of(k),
    });
    if let EntryKind::Dir { node, .. } = k {
        let d = DirNode::load(store, node)?;
        for (name, child) in &d.entries {
            all(store, &format!("{path}/{name}"), child, kind, out)?;
        }
    }
    Ok(())
}
